//! The built-in wire kinds — `keycloak`, `auth0`, `oauth2` — as one [`HttpProvider`] driven by [`Settings`].
//! They differ only in how the endpoint is found and the body encoded, which the settings already say.
//!
//! By concern: this file holds the provider (what it keeps of the settings, its cache key, a fetch and the answer
//! it classifies); `client.rs` the HTTP clients (pooled, and the mutual-TLS one); `endpoint.rs` where the token
//! endpoint is (configured, remembered, discovered, the other Keycloak layout); `credentials.rs` what a fetch
//! authenticates with and how a rejection names it; `request.rs` the request body (grant, client authentication,
//! encoding).
//!
//! *Invariant: a URL carries the secret only if `config::secure_enough` allows it, never through a proxy when
//! plain http; every error leaving `fetch` has had every credential sent redacted.*

mod client;
mod credentials;
mod dpop;
mod endpoint;
mod request;

use client::ClientKey;
pub(crate) use client::ClientPool;
pub(crate) use credentials::basic_credentials;
use credentials::{Assertion, Creds};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::cache::CacheKey;
use crate::config::{
    keycloak_token_url, AssertionAudience, AuthMethod, BodyFormat, Grant, Kind, Settings,
    SigningAlg, TokenEndpoint,
};
use crate::credential::{SigningKey, ASSERTION_TYPE};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{build_client, classify, send};
use crate::provider::{FetchContext, Fetched, Provider};
use crate::secret::{SecretSource, Shape, TokenSource};

/// A token endpoint spoken to over HTTP, configured by [`Settings`]. It keeps only what a request needs (a
/// daemon holds one per profile, so the rest of the settings are not copied here).
pub struct HttpProvider {
    /// `profile `x` (provider p, environment e)`, for errors and logs.
    label: String,
    kind: Kind,
    endpoint: TokenEndpoint,
    client_id: SecretSource,
    client_secret: Option<SecretSource>,
    /// Where each secret-source field was set, for errors of their sources.
    positions: Vec<(&'static str, crate::config::Origin)>,
    auth: AuthMethod,
    /// What signs client assertions, besides the client secret (docs/reference.md §8).
    assertion: Assertion,
    client_cert: Option<SecretSource>,
    client_key: Option<SecretSource>,
    subject_token: Option<TokenSource>,
    actor_token: Option<TokenSource>,
    body: BodyFormat,
    /// Request parameters other than credentials, sorted.
    params: Vec<(String, String)>,
    /// Plain `http://` to a host other than this machine is allowed (`allow_http`).
    allow_http: bool,
    /// `strict = true`: refuse a short `client_secret_jwt` key instead of warning.
    strict: bool,
    /// The short-key warning has been given (once per provider, at first use).
    warned_short_key: AtomicBool,
    /// The pool key of the https client; the plain-http one differs only in its last part.
    pool_key: ClientKey,
    client: OnceLock<reqwest::Client>,
    plain_client: OnceLock<reqwest::Client>,
    /// The mutual-TLS client, built with the client certificate on the first fetch that needs it.
    tls_client: OnceLock<reqwest::Client>,
    pool: Arc<ClientPool>,
    /// The endpoint learned in this process (discovery, or the other Keycloak layout).
    learned: Mutex<Option<String>>,
    /// The DPoP key tokens are bound to, when `dpop` is on.
    dpop: Option<dpop::Binding>,
}

impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProvider")
            .field("describe", &self.describe())
            .finish()
    }
}

impl HttpProvider {
    /// A provider for resolved `settings`. No client is built until the first fetch.
    pub fn new(s: Settings) -> Self {
        let body = s.body();
        let endpoint = s.token_endpoint();
        let audience = match s.assertion_audience {
            AssertionAudience::TokenEndpoint => None,
            AssertionAudience::Issuer => s.assertion_issuer(),
        };
        let mut label = format!("profile `{}`", s.profile);
        if let Some(p) = &s.provider {
            label.push_str(&format!(" (provider {p}"));
            if let Some(e) = &s.environment {
                label.push_str(&format!(", environment {e}"));
            }
            label.push(')');
        }
        let mut params: Vec<(String, String)> =
            vec![("grant_type".into(), s.grant.grant_type().into())];
        let exchange = s.grant == Grant::TokenExchange;
        let actor_type = s.actor_token.as_ref().map(|_| {
            s.actor_token_type
                .clone()
                .unwrap_or_else(|| crate::config::ACCESS_TOKEN_TYPE.into())
        });
        for (k, v) in [
            ("audience", s.audience),
            ("scope", s.scope),
            ("resource", s.resource),
            (
                "subject_token_type",
                Some(s.subject_token_type).filter(|_| exchange),
            ),
            ("actor_token_type", actor_type),
            ("requested_token_type", s.requested_token_type),
        ] {
            if let Some(v) = v {
                params.push((k.into(), v));
            }
        }
        params.extend(s.params);
        params.sort();
        let dpop = s
            .dpop
            .enabled()
            .then(|| dpop::Binding::new(&s.profile, s.dpop.clone(), s.client_secret.as_ref()));
        let assertion = Assertion {
            private_key: s.private_key,
            key_id: s.key_id,
            signing_alg: s.signing_alg,
            audience,
        };
        HttpProvider {
            endpoint,
            label,
            kind: s.kind,
            client_id: s.client_id,
            client_secret: s.client_secret,
            positions: s.positions,
            auth: s.auth,
            assertion,
            client_cert: s.client_cert,
            client_key: s.client_key,
            subject_token: s.subject_token,
            actor_token: s.actor_token,
            body,
            params,
            allow_http: s.allow_http,
            strict: s.strict,
            warned_short_key: AtomicBool::new(false),
            pool_key: (s.timeout, s.connect_timeout, s.ca_file, false),
            client: OnceLock::new(),
            plain_client: OnceLock::new(),
            tls_client: OnceLock::new(),
            pool: Arc::default(),
            learned: Mutex::new(None),
            dpop,
        }
    }

    /// Shares `pool` with other providers: profiles with the same timeouts and `ca_file` then share one
    /// client, its connections and its TLS configuration (built on first use, never on a cache hit).
    pub(crate) fn with_pool(mut self, pool: Arc<ClientPool>) -> Self {
        self.pool = pool;
        self
    }

    /// Keeps a generated DPoP key in `dir` (the disk cache's `dpop/`), so it outlives the process as the cached
    /// tokens bound to it do. Without it a generated key lives in memory.
    pub(crate) fn keep_dpop_key_in(&self, dir: PathBuf) {
        if let Some(b) = &self.dpop {
            let _ = b.dir.set(dir);
        }
    }

    /// Uses the caller's `reqwest::Client` instead of building one (it should not follow redirects, and should
    /// not send plain `http://` requests through a proxy).
    pub fn with_client(self, client: reqwest::Client) -> Self {
        let _ = self.client.set(client.clone());
        let _ = self.plain_client.set(client);
        self
    }

    /// Whether `url` may carry the secret ([`crate::config::secure_enough`] with this profile's `allow_http`).
    fn secure_enough(&self, url: &url::Url) -> bool {
        crate::config::secure_enough(url, self.allow_http)
    }

    /// Context for an error of a secret source: the profile, the field and where it was set.
    fn source_context(&self, field: &str) -> String {
        match self.position(field) {
            None => format!("{}: {field}", self.label),
            Some(at) => format!("{}: {field} (set at {at})", self.label),
        }
    }

    fn position(&self, field: &str) -> Option<String> {
        crate::config::position_of(&self.positions, field)
    }
}

#[async_trait]
impl Provider for HttpProvider {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn cache_key(&self) -> Result<CacheKey> {
        let material =
            |field: &'static str, source: &Option<SecretSource>, shape: Shape| match source {
                Some(s) => s
                    .key_material_of(shape)
                    .map_err(|e| e.context(self.source_context(field))),
                None => Ok(Vec::new()),
            };
        let id = material("client_id", &Some(self.client_id.clone()), Shape::Line)?;
        let secret = material("client_secret", &self.client_secret, Shape::Line)?;
        let params: Vec<u8> = self
            .params
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes(), b"\0"].concat())
            .collect();
        let endpoint = self.endpoint.configured();
        let mut parts = vec![
            b"broker-http-v1".to_vec(),
            endpoint.into_bytes(),
            self.kind.as_str().as_bytes().to_vec(),
            self.auth.as_str().as_bytes().to_vec(),
            self.body.as_str().as_bytes().to_vec(),
            id,
            params,
            secret,
        ];
        // What else decides the token (docs/reference.md §8), only when set, so the keys of secret-based profiles
        // stay as they were: a new key, certificate or subject token means a new entry.
        let a = &self.assertion;
        let extra = [
            (
                "private_key",
                material("private_key", &a.private_key, Shape::Whole)?,
            ),
            ("key_id", a.key_id.clone().unwrap_or_default().into_bytes()),
            (
                "signing_alg",
                a.signing_alg
                    .map(SigningAlg::as_str)
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec(),
            ),
            (
                "assertion_audience",
                a.audience.clone().unwrap_or_default().into_bytes(),
            ),
            (
                "client_cert",
                material("client_cert", &self.client_cert, Shape::Public)?,
            ),
            (
                "client_key",
                material("client_key", &self.client_key, Shape::Whole)?,
            ),
        ];
        for (name, value) in extra.into_iter().filter(|(_, v)| !v.is_empty()) {
            parts.push([name.as_bytes(), b"\0", &value].concat());
        }
        for (name, token) in [
            ("subject_token", &self.subject_token),
            ("actor_token", &self.actor_token),
        ] {
            if let Some(t) = token {
                let m = t
                    .key_material()
                    .map_err(|e| e.context(self.source_context(name)))?;
                parts.push([name.as_bytes(), b"\0", &m].concat());
            }
        }
        // A token is bound to one key: another key (rotated, regenerated) is another entry.
        if let Some(key) = self.dpop_key()? {
            parts.push([b"dpop\0", key.thumbprint().as_bytes()].concat());
        }
        Ok(CacheKey::from_parts(parts.iter().map(Vec::as_slice)))
    }

    fn dpop_key(&self) -> Result<Option<Arc<crate::dpop::DpopKey>>> {
        match &self.dpop {
            Some(b) => b.key(self).map(Some),
            None => Ok(None),
        }
    }

    async fn fetch(&self, cx: &FetchContext<'_>) -> Result<Fetched> {
        let creds = self.credentials(cx).await?;
        self.fetch_with(cx, &creds)
            .await
            .map_err(|e| self.explain(e).redacted(&creds.forms()))
    }
}

impl HttpProvider {
    async fn fetch_with(&self, cx: &FetchContext<'_>, creds: &Creds) -> Result<Fetched> {
        let label = &self.label;
        let endpoint = self.endpoint(cx).await.map_err(|e| e.context(label))?;
        let (requested_at, answer) = self
            .post_with_nonce(&endpoint, creds, cx)
            .await
            .map_err(|e| e.context(format!("{label}: POST {endpoint}")))?;
        let (endpoint, requested_at, answer) = match (answer.status, self.other_layout(&endpoint)) {
            (404, Some((other, legacy))) => {
                let (requested_at, second) = self
                    .post_with_nonce(&other, creds, cx)
                    .await
                    .map_err(|e| e.context(format!("{label}: POST {other}")))?;
                if second.status != 404 {
                    tracing::warn!(
                        "{label}: {endpoint} answered 404 but {other} works; using it from now on. \
                         Add `legacy_path = {legacy}` to the profile to skip the extra request"
                    );
                    self.learn(&other);
                    (other, requested_at, second)
                } else {
                    (endpoint, requested_at, answer)
                }
            }
            _ => (endpoint, requested_at, answer),
        };
        let response = classify(&answer, cx.clock.now()).map_err(|e| {
            let e = e.context(format!("{label}: POST {endpoint}"));
            if e.kind() == ErrorKind::Config && answer.status == 404 {
                let retry_at = e.retry_at();
                Error::config(format!(
                    "{}; check `auth_server`, `realm` or `token_url`",
                    e.message()
                ))
                .with_retry_at(retry_at)
            } else {
                e
            }
        })?;
        self.check_binding(&response)
            .map_err(|e| e.context(format!("{label}: POST {endpoint}")))?;
        if response.token_type.is_none() {
            tracing::debug!("{label}: no token_type in the response; assuming bearer");
        }
        Ok(Fetched {
            response,
            requested_at,
            endpoint: Some(endpoint),
        })
    }
}
