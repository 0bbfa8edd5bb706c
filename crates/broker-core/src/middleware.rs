//! A [`reqwest_middleware`] middleware (feature `middleware`): every request gets the profile's header with a
//! fresh token; a 401 from the API forces one refresh and one retry.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest_middleware::{Middleware, Next};
use secrecy::ExposeSecret;

use crate::{AccessToken, Broker, Error, TokenRequest};

/// Adds `profile`'s token to every request.
pub struct TokenMiddleware {
    broker: Arc<Broker>,
    profile: String,
}

impl TokenMiddleware {
    /// A middleware serving `profile` from `broker`.
    pub fn new(broker: Arc<Broker>, profile: impl Into<String>) -> Self {
        TokenMiddleware {
            broker,
            profile: profile.into(),
        }
    }

    async fn authorize(
        &self,
        mut req: reqwest::Request,
        force_refresh: bool,
    ) -> Result<(reqwest::Request, Arc<AccessToken>), Error> {
        let req_opts = TokenRequest {
            force_refresh,
            ..TokenRequest::default()
        };
        let token = self.broker.token(&self.profile, &req_opts).await?;
        let (name, value) = self.broker.header(&self.profile, &token)?;
        let name = HeaderName::try_from(name)
            .map_err(|e| Error::config(format!("profile `{}`: header name: {e}", self.profile)))?;
        let mut value = HeaderValue::try_from(value.expose_secret()).map_err(|_| {
            Error::bad_response(format!(
                "profile `{}`: the token is not a valid header value",
                self.profile
            ))
        })?;
        value.set_sensitive(true);
        req.headers_mut().insert(name, value);
        Ok((req, token))
    }
}

#[async_trait]
impl Middleware for TokenMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let retry = req.try_clone();
        let (req, _) = self
            .authorize(req, false)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let resp = next.clone().run(req, extensions).await?;
        match retry {
            Some(retry) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                tracing::debug!(
                    "profile `{}`: the API answered 401; refreshing the token and retrying once",
                    self.profile
                );
                let (retry, _) = self
                    .authorize(retry, true)
                    .await
                    .map_err(reqwest_middleware::Error::middleware)?;
                next.run(retry, extensions).await
            }
            _ => Ok(resp),
        }
    }
}
