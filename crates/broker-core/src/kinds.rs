//! The built-in wire kinds — `keycloak`, `auth0`, `oauth2` — as one [`HttpProvider`] driven by [`Settings`].
//! They differ only in how the endpoint is found and the body encoded, which the settings already say.

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

/// Everything outside `A-Z a-z 0-9 - . _ ~` is `%XX`-encoded, a space as `%20` (RFC 6749 §2.3.1, and what
/// both strict servers and Keycloak accept).
const BASIC_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `Authorization: Basic` value for a client id and secret, each encoded before joining.
pub(crate) fn basic_credentials(id: &str, secret: &str) -> String {
    let joined = format!(
        "{}:{}",
        utf8_percent_encode(id, BASIC_SET),
        utf8_percent_encode(secret, BASIC_SET)
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(joined)
    )
}

/// What makes two token clients different: timeout, connect timeout, `ca_file`, and whether it is the client for
/// plain `http://` URLs (which never uses a proxy).
type ClientKey = (Duration, Duration, Option<PathBuf>, bool);

/// HTTP clients shared by providers, one per [`ClientKey`].
#[derive(Default)]
pub(crate) struct ClientPool {
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
}

impl ClientPool {
    fn get(&self, key: &ClientKey) -> Result<reqwest::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(key) {
            return Ok(c.clone());
        }
        let (timeout, connect_timeout, ca_file, plain_http) = key;
        let c = build_client(
            *timeout,
            *connect_timeout,
            ca_file.as_deref(),
            *plain_http,
            None,
        )?;
        clients.insert(key.clone(), c.clone());
        Ok(c)
    }
}

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
            body: s.body,
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
        }
    }

    /// Shares `pool` with other providers: profiles with the same timeouts and `ca_file` then share one
    /// client, its connections and its TLS configuration (built on first use, never on a cache hit).
    pub(crate) fn with_pool(mut self, pool: Arc<ClientPool>) -> Self {
        self.pool = pool;
        self
    }

    /// Uses the caller's `reqwest::Client` instead of building one (it should not follow redirects, and should
    /// not send plain `http://` requests through a proxy).
    pub fn with_client(self, client: reqwest::Client) -> Self {
        let _ = self.client.set(client.clone());
        let _ = self.plain_client.set(client);
        self
    }

    /// The client for `url`: plain `http://` goes through a client that ignores proxy settings, so the secret
    /// is never handed to a proxy in clear.
    fn client_for(&self, url: &str) -> Result<&reqwest::Client> {
        let plain = url.starts_with("http://");
        let cell = if plain {
            &self.plain_client
        } else {
            &self.client
        };
        if let Some(c) = cell.get() {
            return Ok(c);
        }
        let mut key = self.pool_key.clone();
        key.3 = plain;
        let c = self.pool.get(&key)?;
        Ok(cell.get_or_init(|| c))
    }

    /// Whether `url` may carry the secret ([`crate::config::secure_enough`] with this profile's `allow_http`).
    fn secure_enough(&self, url: &url::Url) -> bool {
        crate::config::secure_enough(url, self.allow_http)
    }

    /// What to do with an endpoint remembered in a cache entry (docs/security.md, "remembered endpoints"): use it
    /// when it passes the URL checks of a configured one and has the configured origin (the Keycloak server's, or
    /// the issuer's); discover again when discovery could have named it (another origin, but secure); else refuse.
    fn judge_hint(&self, hint: &str) -> Hint {
        let Some(url) = url::Url::parse(hint).ok().filter(|u| self.secure_enough(u)) else {
            return Hint::Refuse;
        };
        match &self.endpoint {
            TokenEndpoint::Keycloak { server, .. } if url.origin() == server.origin() => Hint::Use,
            TokenEndpoint::Discover(issuer) if url.origin() == issuer.origin() => Hint::Use,
            TokenEndpoint::Discover(_) => Hint::Rediscover,
            _ => Hint::Refuse,
        }
    }

    fn learned(&self) -> Option<String> {
        self.learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn learn(&self, endpoint: &str) {
        *self.learned.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint.to_owned());
    }

    async fn endpoint(&self, cx: &FetchContext<'_>) -> Result<String> {
        if let Some(e) = self.learned() {
            return Ok(e);
        }
        // `token_url` wins; then what an earlier process learned (kept in the cache entry), if this configuration
        // leads there.
        if let TokenEndpoint::Url(u) = &self.endpoint {
            return Ok(u.clone());
        }
        let hint = cx.endpoint_hint.filter(|h| match self.judge_hint(h) {
            Hint::Use => true,
            Hint::Rediscover => {
                tracing::debug!("{}: discovering the token endpoint again", self.label);
                false
            }
            Hint::Refuse => {
                tracing::warn!(
                    "{}: ignoring the token endpoint remembered in the cache ({}): the configuration does not lead \
                     there",
                    self.label,
                    crate::http::provider_text(h)
                );
                false
            }
        });
        match (&self.endpoint, hint) {
            (TokenEndpoint::Url(u), _) => Ok(u.clone()),
            (_, Some(hint)) => Ok(hint.to_owned()),
            (TokenEndpoint::Keycloak { .. }, None) => Ok(self.endpoint.configured()),
            (TokenEndpoint::Discover(issuer), None) => {
                let e = self.discover(issuer).await?;
                self.learn(&e);
                Ok(e)
            }
            (TokenEndpoint::Missing, None) => Err(Error::config(format!(
                "{}: no token endpoint configured",
                self.label
            ))),
        }
    }

    /// OIDC discovery first, then the RFC 8414 location.
    async fn discover(&self, issuer: &url::Url) -> Result<String> {
        let base = issuer.as_str().trim_end_matches('/');
        let path = issuer.path().trim_end_matches('/');
        let origin = issuer.origin().ascii_serialization();
        let candidates = [
            format!("{base}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
        ];
        let mut last = None;
        for url in candidates {
            let answer = send(self.client_for(&url)?.get(&url))
                .await
                .map_err(|e| e.context(format!("discovery {url}")))?;
            if answer.status == 200 {
                let doc: Value = serde_json::from_slice(&answer.body).map_err(|_| {
                    Error::bad_response(format!("discovery {url}: the body is not JSON"))
                })?;
                // RFC 8414 §3.3, OIDC Discovery §4.3: the document must name the issuer it was asked for, else
                // its endpoints are another server's (a trailing slash, which URL parsing may add, aside).
                let named_issuer = doc.get("issuer").and_then(Value::as_str);
                if named_issuer.map(|i| i.trim_end_matches('/')) != Some(base) {
                    return Err(Error::config(format!(
                        "discovery {url}: the document names issuer {}, not the configured issuer {base}: refusing \
                         its endpoints (RFC 8414 §3.3)",
                        named_issuer.map_or_else(|| "(none)".into(), crate::http::provider_text)
                    )));
                }
                // A client that authenticates with TLS uses the mutual-TLS alias when the server names one (RFC 8705 §5).
                let alias = doc
                    .get("mtls_endpoint_aliases")
                    .and_then(|a| a.get("token_endpoint"))
                    .and_then(Value::as_str)
                    .filter(|_| self.auth.uses_tls());
                let named = alias.or_else(|| doc.get("token_endpoint").and_then(Value::as_str));
                return match named.map(|t| (t, url::Url::parse(t))) {
                    // Credentials go only to the issuer's origin (a mutual-TLS alias: its host, since a server
                    // certificate names a host, not a port), unless the profile names the endpoint itself.
                    Some((t, Ok(u)))
                        if self.secure_enough(&u)
                            && !(u.origin() == issuer.origin()
                                || alias.is_some() && u.host() == issuer.host()) =>
                    {
                        Err(Error::config(format!(
                            "discovery {url}: the token endpoint {} is not on the issuer's origin {origin}: refusing \
                             to send credentials there; if it is right, name it with `token_url`",
                            crate::http::provider_text(t)
                        )))
                    }
                    Some((t, Ok(u))) if self.secure_enough(&u) => Ok(t.to_owned()),
                    Some((t, Ok(_))) => Err(Error::bad_response(format!(
                        "discovery {url}: `token_endpoint` {} is not https (plain http is allowed only to this \
                         machine, or with `allow_http = true`)",
                        crate::http::provider_text(t)
                    ))),
                    _ => Err(Error::bad_response(format!(
                        "discovery {url}: no valid `token_endpoint`"
                    ))),
                };
            }
            last = Some(format!("{url}: HTTP {}", answer.status));
        }
        Err(Error::config(format!(
            "discovery for issuer {issuer} failed ({})",
            last.unwrap_or_default()
        )))
    }

    async fn post(
        &self,
        endpoint: &str,
        creds: &Creds,
        now: std::time::SystemTime,
    ) -> Result<crate::http::Answer> {
        let mut fields = self.params.clone();
        let client = if self.auth.uses_tls() {
            self.tls_client(endpoint, creds)?
        } else {
            self.client_for(endpoint)?
        };
        let mut req = client.post(endpoint).header("accept", "application/json");
        let id = creds.id.expose_secret();
        let secret = || creds.secret.as_ref().map_or("", |s| s.expose_secret());
        match self.auth {
            AuthMethod::ClientSecretPost => {
                fields.push(("client_id".into(), id.to_owned()));
                fields.push(("client_secret".into(), secret().to_owned()));
            }
            AuthMethod::ClientSecretBasic => {
                req = req.header("authorization", basic_credentials(id, secret()));
            }
            AuthMethod::ClientSecretJwt | AuthMethod::PrivateKeyJwt => {
                let signer = creds
                    .signer
                    .as_ref()
                    .ok_or_else(|| Error::internal("no assertion key"))?;
                let aud = self.assertion.audience.as_deref().unwrap_or(endpoint);
                let assertion = signer
                    .sign(id, aud, now, self.assertion.key_id.as_deref())
                    .map_err(|e| {
                        Error::internal(format!("cannot sign the client assertion: {e}"))
                    })?;
                fields.push(("client_id".into(), id.to_owned()));
                fields.push(("client_assertion_type".into(), ASSERTION_TYPE.into()));
                creds.sent(&assertion);
                fields.push(("client_assertion".into(), assertion));
            }
            AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth | AuthMethod::None => {
                fields.push(("client_id".into(), id.to_owned()));
            }
        }
        for (name, token) in [
            ("subject_token", &creds.subject),
            ("actor_token", &creds.actor),
        ] {
            if let Some(t) = token {
                fields.push((name.into(), t.expose_secret().to_owned()));
            }
        }
        let body = match self.body {
            BodyFormat::Form => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&fields)
                    .finish()
                    .into_bytes()
            }
            BodyFormat::Json => {
                req = req.header("content-type", "application/json");
                let map: serde_json::Map<String, Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                serde_json::to_vec(&map).map_err(|e| Error::internal(e.to_string()))?
            }
        };
        send(req.body(body)).await
    }

    /// The mutual-TLS client, built on first use with the client certificate (never pooled: it is this profile's).
    fn tls_client(&self, endpoint: &str, creds: &Creds) -> Result<&reqwest::Client> {
        if !endpoint.starts_with("https://") {
            return Err(Error::config(format!(
                "`auth = \"{}\"` authenticates with TLS, but the token endpoint {endpoint} is not https://",
                self.auth.as_str()
            )));
        }
        if let Some(c) = self.tls_client.get() {
            return Ok(c);
        }
        let (Some(cert), Some(key)) = (&creds.cert, &creds.key) else {
            return Err(Error::internal("no client certificate"));
        };
        let identity = crate::credential::identity(cert.expose_secret(), key.expose_secret())
            .map_err(|e| Error::config(format!("{}: {e}", self.source_context("client_cert"))))?;
        let (timeout, connect_timeout, ca_file, _) = &self.pool_key;
        let c = build_client(
            *timeout,
            *connect_timeout,
            ca_file.as_deref(),
            false,
            Some(identity),
        )
        .map_err(|e| {
            // rustls refusing the pair is about the key (a ca_file error names itself).
            if e.kind() == ErrorKind::Config && e.message().starts_with("the client certificate") {
                // The caller names the profile and the request.
                e.context(self.position("client_key").map_or_else(
                    || "client_key".to_owned(),
                    |at| format!("client_key (set at {at})"),
                ))
            } else {
                e
            }
        })?;
        Ok(self.tls_client.get_or_init(|| c))
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

    /// The sources of what authenticates this client, by field: what a rejection tells the user to check.
    fn credential_sources(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("client_id", self.client_id.describe())];
        let sources = [
            (
                "client_secret",
                self.client_secret.as_ref().map(SecretSource::describe),
            ),
            (
                "private_key",
                self.assertion
                    .private_key
                    .as_ref()
                    .map(SecretSource::describe),
            ),
            (
                "client_cert",
                self.client_cert.as_ref().map(SecretSource::describe),
            ),
            (
                "subject_token",
                self.subject_token.as_ref().map(TokenSource::describe),
            ),
            (
                "actor_token",
                self.actor_token.as_ref().map(TokenSource::describe),
            ),
        ];
        out.extend(sources.into_iter().filter_map(|(f, d)| Some((f, d?))));
        out
    }

    /// A rejection says where the credentials came from (never their values), so the user knows what to check:
    /// `client_secret from env CHILI_CLIENT_SECRET (config.toml:4:17)`.
    fn explain(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Rejected {
            return e;
        }
        let parts: Vec<String> = self
            .credential_sources()
            .into_iter()
            .map(|(field, source)| match self.position(field) {
                None => format!("{field} from {source}"),
                Some(at) => format!("{field} from {source} ({at})"),
            })
            .collect();
        let msg = format!(
            "{}; check the credentials ({}): {}",
            e.message(),
            self.auth.as_str(),
            parts.join(", ")
        );
        Error::rejected(msg).with_retry_at(e.retry_at())
    }

    /// Reads every credential the request needs, and checks the material (a key that does not parse or does not fit
    /// `signing_alg` is a config error naming its source).
    async fn credentials(&self, cx: &FetchContext<'_>) -> Result<Creds> {
        let id = self
            .client_id
            .resolve_async()
            .await
            .map_err(|e| e.context(self.source_context("client_id")))?;
        let secret = self
            .read("client_secret", self.client_secret.as_ref(), Shape::Line)
            .await?;
        let material_error = |field: &str, source: &SecretSource, e: String| {
            Error::config(format!(
                "{} ({}): {e}",
                self.source_context(field),
                source.describe()
            ))
        };
        let signer = match self.auth {
            AuthMethod::ClientSecretJwt => {
                let secret = secret.as_ref().map_or("", |s| s.expose_secret());
                if let Some(short) =
                    crate::credential::short_hmac_key(secret.len(), self.assertion.signing_alg)
                {
                    let at = self.source_context("client_secret");
                    if self.strict {
                        return Err(Error::config(format!(
                            "{at}: {short}; refused because `strict = true`"
                        )));
                    }
                    if !self.warned_short_key.swap(true, Ordering::Relaxed) {
                        tracing::warn!("{at}: {short}");
                    }
                }
                Some(
                    SigningKey::hmac(secret.as_bytes(), self.assertion.signing_alg)
                        .map_err(Error::config)?,
                )
            }
            AuthMethod::PrivateKeyJwt => {
                let source = self
                    .assertion
                    .private_key
                    .as_ref()
                    .ok_or_else(|| Error::internal("no private_key"))?;
                let pem = self
                    .read("private_key", Some(source), Shape::Whole)
                    .await?
                    .ok_or_else(|| Error::internal("no private_key"))?;
                Some(
                    SigningKey::from_pem(
                        pem.expose_secret().as_bytes(),
                        self.assertion.signing_alg,
                    )
                    .map_err(|e| material_error("private_key", source, format!("holds {e}")))?,
                )
            }
            _ => None,
        };
        let (cert, key) = if self.auth.uses_tls() && self.tls_client.get().is_none() {
            let cert = self
                .read("client_cert", self.client_cert.as_ref(), Shape::Public)
                .await?;
            if let (Some(pem), Some(source)) = (&cert, &self.client_cert) {
                let parsed =
                    crate::credential::ClientCert::from_pem(pem.expose_secret().as_bytes())
                        .map_err(|e| material_error("client_cert", source, format!("is {e}")))?;
                parsed
                    .left_at(cx.clock.now())
                    .map_err(|e| material_error("client_cert", source, format!("is {e}")))?;
            }
            let key = self
                .read("client_key", self.client_key.as_ref(), Shape::Whole)
                .await?;
            (cert, key)
        } else {
            (None, None)
        };
        let subject = self
            .exchange_token("subject_token", &self.subject_token, cx)
            .await?;
        let actor = self
            .exchange_token("actor_token", &self.actor_token, cx)
            .await?;
        Ok(Creds {
            id,
            secret,
            signer,
            cert,
            key,
            subject,
            actor,
            assertions: Mutex::default(),
        })
    }

    /// The value of `field` from `source` if it has one, an error naming the field and where it was set.
    async fn read(
        &self,
        field: &str,
        source: Option<&SecretSource>,
        shape: Shape,
    ) -> Result<Option<SecretString>> {
        match source {
            Some(s) => s
                .read_async(shape)
                .await
                .map(Some)
                .map_err(|e| e.context(self.source_context(field))),
            None => Ok(None),
        }
    }

    /// A subject or actor token: read from its source, or another profile's current token.
    async fn exchange_token(
        &self,
        field: &str,
        source: &Option<TokenSource>,
        cx: &FetchContext<'_>,
    ) -> Result<Option<SecretString>> {
        match source {
            None => Ok(None),
            Some(TokenSource::Secret(s)) => self.read(field, Some(s), Shape::Line).await,
            Some(TokenSource::Profile(p)) => {
                let t = cx.tokens.token_of(p).await.map_err(|e| {
                    e.context(format!("{}: {field} from profile `{p}`", self.label))
                })?;
                Ok(Some(t.secret().clone()))
            }
        }
    }

    /// The other Keycloak layout (with or without `/auth`), when the endpoint is the derived one.
    fn other_layout(&self, endpoint: &str) -> Option<(String, bool)> {
        let TokenEndpoint::Keycloak { server, realm, .. } = &self.endpoint else {
            return None;
        };
        let legacy = keycloak_token_url(server, realm, true);
        let modern = keycloak_token_url(server, realm, false);
        if endpoint == legacy {
            Some((modern, false))
        } else if endpoint == modern {
            Some((legacy, true))
        } else {
            None
        }
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
        Ok(CacheKey::from_parts(parts.iter().map(Vec::as_slice)))
    }

    async fn fetch(&self, cx: &FetchContext<'_>) -> Result<Fetched> {
        let creds = self.credentials(cx).await?;
        self.fetch_with(cx, &creds)
            .await
            .map_err(|e| self.explain(e).redacted(&creds.forms()))
    }
}

/// What one fetch authenticates with, read from the sources: never logged, dropped after the request.
struct Creds {
    id: SecretString,
    secret: Option<SecretString>,
    signer: Option<SigningKey>,
    /// Mutual TLS material (PEM), read only while the TLS client is still to be built.
    cert: Option<SecretString>,
    key: Option<SecretString>,
    subject: Option<SecretString>,
    actor: Option<SecretString>,
    /// The client assertions sent (one per request), kept only to redact them from provider text.
    assertions: Mutex<Vec<SecretString>>,
}

impl Creds {
    fn sent(&self, assertion: &str) {
        self.assertions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SecretString::from(assertion.to_owned()));
    }

    /// Every wire form of every secret value, for redaction from provider text.
    fn forms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in [&self.secret, &self.subject, &self.actor]
            .into_iter()
            .flatten()
        {
            out.extend(secret_forms(&self.id, s));
        }
        let assertions = self.assertions.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(assertions.iter().map(|a| a.expose_secret().to_owned()));
        out
    }
}

/// The assertion settings of `client_secret_jwt` and `private_key_jwt`.
struct Assertion {
    private_key: Option<SecretSource>,
    key_id: Option<String>,
    signing_alg: Option<SigningAlg>,
    /// `aud` when it is not the token endpoint posted to (`assertion_audience = "issuer"`).
    audience: Option<String>,
}

/// The verdict on an endpoint remembered in a cache entry ([`HttpProvider::judge_hint`]).
enum Hint {
    Use,
    Rediscover,
    Refuse,
}

/// The forms a client secret can take on the wire, for redaction from provider text (docs/security.md): raw,
/// percent-encoded, form-encoded, JSON-escaped, and the whole `Basic` credentials.
fn secret_forms(id: &SecretString, secret: &SecretString) -> Vec<String> {
    let raw = secret.expose_secret();
    let basic = basic_credentials(id.expose_secret(), raw);
    vec![
        raw.to_owned(),
        utf8_percent_encode(raw, BASIC_SET).to_string(),
        url::form_urlencoded::byte_serialize(raw.as_bytes()).collect(),
        serde_json::to_string(raw)
            .map(|j| j.trim_matches('"').to_owned())
            .unwrap_or_default(),
        basic.trim_start_matches("Basic ").to_owned(),
    ]
}

impl HttpProvider {
    async fn fetch_with(&self, cx: &FetchContext<'_>, creds: &Creds) -> Result<Fetched> {
        let label = &self.label;
        let endpoint = self.endpoint(cx).await.map_err(|e| e.context(label))?;
        let requested_at = cx.clock.now();
        let answer = self
            .post(&endpoint, creds, requested_at)
            .await
            .map_err(|e| e.context(format!("{label}: POST {endpoint}")))?;
        let (endpoint, requested_at, answer) = match (answer.status, self.other_layout(&endpoint)) {
            (404, Some((other, legacy))) => {
                let requested_at = cx.clock.now();
                let second = self
                    .post(&other, creds, requested_at)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_encode_each_part_before_joining() {
        // RFC 6749 Appendix B: space as %20, `:` `+` `%` `/` `=` `&` escaped.
        let v = basic_credentials("id:1", "a b+c%d/e=f&g~h");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.trim_start_matches("Basic "))
            .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "id%3A1:a%20b%2Bc%25d%2Fe%3Df%26g~h"
        );
    }
}
