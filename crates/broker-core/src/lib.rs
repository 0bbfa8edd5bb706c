//! `broker-core`: OAuth2 client-credentials tokens for any API, cached and shared. The embeddable core of the
//! `broker` command: everything but the command line, the daemon and the output formats.
//!
//! # Embedding it
//!
//! A [`Broker`] hands out [`AccessToken`]s per *profile*: from memory while fresh, else from the disk cache that
//! `broker` processes share, else from the provider, with one upstream call per credential set however many
//! callers ask at once. What a profile is comes from TOML ([`Config`]: the built-in ION and CHILI providers, the
//! user's provider files and config file, exactly as the CLI reads them) or from your own [`Provider`].
//!
//! - **One-shot** (a script-like program): load the user's config, ask once, use the token.
//!   `examples/one_shot.rs`. [`Broker::cached`] serves a fresh cached token without an HTTP client or a runtime.
//! - **A long-lived service**: keep one `Arc<Broker>` and call [`Broker::token`] before each request, or put the
//!   `middleware::TokenMiddleware` (feature `middleware`) on a `reqwest-middleware` client: it adds the profile's
//!   header and refreshes once on a 401. `examples/ion_graphql.rs`, and the example below.
//! - **Your own token source**: implement [`Provider`] (a cache key and a fetch) and register it with
//!   [`BrokerBuilder::profile`]; it gets the same caching, single flight, retries and cool-downs.
//!   `examples/custom_provider.rs`.
//!
//! The crate never prints, never parses argv, and reads the environment only through [`secret::SecretSource`] and
//! [`paths`]. Errors carry a class ([`ErrorKind`], which the CLI maps to its exit code), a message that never holds
//! a secret, and where relevant a [`Diagnostic`] (file, line, column) and the underlying error as `source()`. Time
//! is injected ([`clock::Clock`]), so tests move a [`clock::ManualClock`] instead of sleeping. What the crate
//! promises is stated in the repository's `docs/reference.md`; its map is `docs/ARCHITECTURE.md`.
//!
//! # Example
//!
//! An ION-style profile calling its GraphQL endpoint; here a local test server stands in for both ION's
//! Keycloak and its API (with your own config, use `Config::load(&LoadOptions::user_default())`):
//!
#![cfg_attr(feature = "middleware", doc = "```")]
#![cfg_attr(not(feature = "middleware"), doc = "```text")]
//! use std::sync::Arc;
//! use broker_core::{middleware::TokenMiddleware, Broker, Config};
//! use wiremock::{matchers, Mock, MockServer, ResponseTemplate};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let server = MockServer::start().await;
//! Mock::given(matchers::path("/realms/api-keys/protocol/openid-connect/token"))
//!     .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "t0k3n", "expires_in": 300})))
//!     .mount(&server)
//!     .await;
//! // ION takes the raw token: `Authorization: <token>`.
//! Mock::given(matchers::path("/graphql"))
//!     .and(matchers::header("authorization", "t0k3n"))
//!     .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"data":{"runs":{"edges":[]}}}"#))
//!     .mount(&server)
//!     .await;
//!
//! let config = Config::parse(&format!(
//!     "[profiles.ion-prod]\nprovider = \"ion\"\nauth_server = \"{0}\"\napi = \"{0}\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n",
//!     server.uri()
//! ))?;
//! let broker = Arc::new(Broker::builder().config(&config, &Default::default()).build());
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(TokenMiddleware::new(broker, "ion-prod"))
//!     .build();
//! let body = client.post(format!("{}/graphql", server.uri())).body(r#"{"query":"{ runs(first: 10) { edges { node { id title } } } }"}"#).send().await?.text().await?;
//! assert_eq!(body, r#"{"data":{"runs":{"edges":[]}}}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]
pub mod backoff;
pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod seal;
pub mod secret;
pub mod token;

pub use error::{Diagnostic, Error, ErrorKind, Result};

/// The built-in provider definitions (`providers/*.toml` of the repository), as `(name, TOML text)`.
pub const BUILTIN_PROVIDERS: &[(&str, &str)] = &[
    ("ion", include_str!("../providers/ion.toml")),
    ("chili", include_str!("../providers/chili.toml")),
];
mod broker;
pub mod cache;
pub mod caller;
pub mod credential;
mod credfile;
pub mod dpop;
mod http;
mod kinds;
#[cfg(feature = "middleware")]
pub mod middleware;
pub mod paths;
mod provider;
#[cfg(feature = "shared-cache")]
mod redis_conn;
#[cfg(feature = "shared-cache")]
pub mod shared;

pub use broker::{Broker, BrokerBuilder, CacheState, Observer, Policy, Status, TokenRequest};
pub use config::{Config, LoadOptions, Overrides, Settings};
pub use http::{api_client, provider_text};
pub use kinds::HttpProvider;
pub use provider::{FetchContext, Fetched, ProfileTokens, Provider};
pub use token::AccessToken;
