//! Where the token endpoint is: `token_url`, the Keycloak path (and the other layout when it answers 404), an
//! endpoint remembered in the cache entry, or discovery (RFC 8414, OIDC Discovery).
//! *Invariant: a remembered endpoint is used only when `judge_hint` finds the configured origin; a discovered one
//! only from a document naming the configured issuer, on the issuer's origin (an mTLS alias: its host).*

use super::*;

impl HttpProvider {
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

    pub(super) fn learn(&self, endpoint: &str) {
        *self.learned.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint.to_owned());
    }

    pub(super) async fn endpoint(&self, cx: &FetchContext<'_>) -> Result<String> {
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

    /// The other Keycloak layout (with or without `/auth`), when the endpoint is the derived one.
    pub(super) fn other_layout(&self, endpoint: &str) -> Option<(String, bool)> {
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

/// The verdict on an endpoint remembered in a cache entry ([`HttpProvider::judge_hint`]).
enum Hint {
    Use,
    Rediscover,
    Refuse,
}
