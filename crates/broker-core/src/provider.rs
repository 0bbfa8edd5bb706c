//! The `Provider` trait: one wire protocol for getting a token. Built-in kinds live in [`crate::kinds`];
//! embedders implement it for anything else.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::cache::CacheKey;
use crate::clock::Clock;
use crate::error::Result;
use crate::token::{AccessToken, TokenResponse};

/// What a fetch is given.
pub struct FetchContext<'a> {
    /// The broker's clock: note the time the request is sent with it.
    pub clock: &'a dyn Clock,
    /// The endpoint a previous fetch of this key used (after discovery or a layout fallback), if cached.
    pub endpoint_hint: Option<&'a str>,
    /// Other profiles' tokens, from the same broker and cache (a token exchange's `{ profile = ... }` subject).
    pub tokens: &'a dyn ProfileTokens,
}

/// Hands a provider another profile's current token: the broker does, refreshing it when needed.
#[async_trait]
pub trait ProfileTokens: Send + Sync {
    /// `profile`'s token, cached while fresh.
    async fn token_of(&self, profile: &str) -> Result<Arc<AccessToken>>;
}

/// A token endpoint's successful answer.
#[derive(Debug)]
pub struct Fetched {
    /// The parsed response.
    pub response: TokenResponse,
    /// When the request was sent: `expires_in` counts from here.
    pub requested_at: SystemTime,
    /// The endpoint used, cached with the token so discovery is not repeated.
    pub endpoint: Option<String>,
}

/// A source of access tokens.
///
/// Usable as `Arc<dyn Provider>`; register one with [`crate::BrokerBuilder::profile`]. The broker does the rest:
/// caching (by [`Provider::cache_key`]), one fetch for all concurrent callers, retries of `unavailable` failures,
/// cool-downs after rejections. `examples/custom_provider.rs` is a whole program.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use broker_core::{cache::CacheKey, token::TokenResponse, Broker, FetchContext, Fetched, Policy, Provider, TokenRequest};
/// use secrecy::{ExposeSecret, SecretString};
///
/// struct Fixed;
///
/// #[async_trait]
/// impl Provider for Fixed {
///     fn describe(&self) -> String { "a fixed token".into() }
///     fn cache_key(&self) -> broker_core::Result<CacheKey> { Ok(CacheKey::from_parts([b"fixed".as_slice()])) }
///     async fn fetch(&self, cx: &FetchContext<'_>) -> broker_core::Result<Fetched> {
///         Ok(Fetched {
///             response: TokenResponse { access_token: SecretString::from("t0k3n".to_owned()), token_type: None, expires_in: Some(300.0) },
///             requested_at: cx.clock.now(),
///             endpoint: None,
///         })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// let broker = Broker::builder().profile("fixed", Arc::new(Fixed), Policy::default()).build();
/// let token = broker.token("fixed", &TokenRequest::default()).await?;
/// assert_eq!(token.secret().expose_secret(), "t0k3n");
/// # Ok::<(), broker_core::Error>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Names the provider in messages: profile, provider, endpoint. Never a secret.
    fn describe(&self) -> String;

    /// The key under which this provider's tokens are cached: it must change whenever the token a fetch
    /// would return could differ (endpoint, client, secret, request parameters).
    fn cache_key(&self) -> Result<CacheKey>;

    /// Asks upstream for a new token.
    async fn fetch(&self, cx: &FetchContext<'_>) -> Result<Fetched>;

    /// The DPoP key this provider's tokens are bound to (RFC 9449), which signs a proof for every request a token
    /// is sent with. Defaults to none: bearer tokens.
    fn dpop_key(&self) -> Result<Option<Arc<crate::dpop::DpopKey>>> {
        Ok(None)
    }
}

#[async_trait]
impl<P: Provider + ?Sized> Provider for Arc<P> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn cache_key(&self) -> Result<CacheKey> {
        (**self).cache_key()
    }
    async fn fetch(&self, cx: &FetchContext<'_>) -> Result<Fetched> {
        (**self).fetch(cx).await
    }
    fn dpop_key(&self) -> Result<Option<Arc<crate::dpop::DpopKey>>> {
        (**self).dpop_key()
    }
}
