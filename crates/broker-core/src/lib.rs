//! `broker-core`: OAuth2 client-credentials tokens for any API, cached and shared.
//!
//! The crate never prints and never parses argv. See `docs/ARCHITECTURE.md` for the map.
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

pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod secret;
pub mod token;

pub use error::{Diagnostic, Error, ErrorKind, Result};

/// The built-in provider definitions (`providers/*.toml` of the repository), as `(name, TOML text)`.
pub const BUILTIN_PROVIDERS: &[(&str, &str)] = &[
    ("ion", include_str!("../providers/ion.toml")),
    ("chili", include_str!("../providers/chili.toml")),
];
pub mod broker;
pub mod cache;
pub mod http;
pub mod kinds;
#[cfg(feature = "middleware")]
pub mod middleware;
pub mod paths;
pub mod provider;

pub use broker::{Broker, BrokerBuilder, CacheState, Observer, Policy, Status, TokenRequest};
pub use config::{Config, LoadOptions, Overrides, Settings};
pub use kinds::HttpProvider;
pub use provider::{FetchContext, Fetched, Provider};
pub use token::AccessToken;
