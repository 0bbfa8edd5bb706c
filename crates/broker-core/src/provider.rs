//! The `Provider` trait: one wire protocol for getting a token. Built-in kinds live in [`crate::kinds`];
//! embedders implement it for anything else.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::cache::CacheKey;
use crate::clock::Clock;
use crate::error::Result;
use crate::token::TokenResponse;

/// What a fetch is given.
pub struct FetchContext<'a> {
    /// The broker's clock: note the time the request is sent with it.
    pub clock: &'a dyn Clock,
    /// The endpoint a previous fetch of this key used (after discovery or a layout fallback), if cached.
    pub endpoint_hint: Option<&'a str>,
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
/// Usable as `Arc<dyn Provider>`; register one with [`crate::BrokerBuilder::profile`].
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Names the provider in messages: profile, provider, endpoint. Never a secret.
    fn describe(&self) -> String;

    /// The key under which this provider's tokens are cached: it must change whenever the token a fetch
    /// would return could differ (endpoint, client, secret, request parameters).
    fn cache_key(&self) -> Result<CacheKey>;

    /// Asks upstream for a new token.
    async fn fetch(&self, cx: &FetchContext<'_>) -> Result<Fetched>;
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
}
