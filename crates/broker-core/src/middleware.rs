//! A [`reqwest_middleware`] middleware (feature `middleware`): every request gets the profile's header with a
//! fresh token (and, for a DPoP-bound token, a proof for that request: RFC 9449 §7); a 401 from the API forces one
//! refresh and one retry, or, when a DPoP API asks for a nonce (`use_dpop_nonce`), one retry with it.

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
    /// The DPoP nonces APIs gave, by origin.
    nonces: crate::dpop::Nonces,
}

impl TokenMiddleware {
    /// A middleware serving `profile` from `broker`.
    pub fn new(broker: Arc<Broker>, profile: impl Into<String>) -> Self {
        TokenMiddleware {
            broker,
            profile: profile.into(),
            nonces: Default::default(),
        }
    }

    async fn authorize(
        &self,
        req: reqwest::Request,
        force_refresh: bool,
    ) -> Result<(reqwest::Request, Arc<AccessToken>), Error> {
        let req_opts = TokenRequest {
            force_refresh,
            ..TokenRequest::default()
        };
        let token = self.broker.token(&self.profile, &req_opts).await?;
        Ok((self.apply(req, &token)?, token))
    }

    /// `req` with `token`'s header, and its DPoP proof when the token is bound.
    fn apply(
        &self,
        mut req: reqwest::Request,
        token: &AccessToken,
    ) -> Result<reqwest::Request, Error> {
        let (name, value) = self.broker.header(&self.profile, token)?;
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
        self.sign(&mut req, token)?;
        Ok(req)
    }

    /// Adds the DPoP proof of `req` for a DPoP-bound `token`, with the API's last nonce.
    fn sign(&self, req: &mut reqwest::Request, token: &AccessToken) -> Result<(), Error> {
        let url = req.url().as_str();
        let nonce = self.nonces.get(url);
        let proof = self.broker.proof(
            &self.profile,
            token,
            req.method().as_str(),
            url,
            nonce.as_deref(),
        )?;
        if let Some(p) = proof {
            let mut value = HeaderValue::try_from(p.expose_secret())
                .map_err(|_| Error::internal("a DPoP proof that is not a header value"))?;
            value.set_sensitive(true);
            req.headers_mut().insert("dpop", value);
        }
        Ok(())
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
        let url = req.url().to_string();
        let (req, token) = self
            .authorize(req, false)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let resp = next.clone().run(req, extensions).await?;
        if self
            .nonces
            .take_from(&url, resp.status().as_u16(), resp.headers())
        {
            if let Some(again) = retry {
                tracing::debug!(
                    "profile `{}`: the API asked for a DPoP nonce; retrying once with it",
                    self.profile
                );
                let again = self
                    .apply(again, &token)
                    .map_err(reqwest_middleware::Error::middleware)?;
                return next.run(again, extensions).await;
            }
            return Ok(resp);
        }
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
