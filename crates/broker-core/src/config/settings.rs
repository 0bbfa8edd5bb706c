//! What resolved settings derive: the token endpoint, the header line, the rows `broker check` shows.

use super::*;

/// Where a profile's token endpoint comes from, decided once from its settings.
#[derive(Debug, Clone)]
pub enum TokenEndpoint {
    /// `token_url`, as written.
    Url(String),
    /// A Keycloak realm, `{server}[/auth]/realms/{realm}/protocol/openid-connect/token`; the other layout is
    /// tried once when this one answers 404.
    Keycloak {
        /// `auth_server`.
        server: Url,
        /// `realm`.
        realm: String,
        /// Under `/auth`.
        legacy: bool,
    },
    /// OIDC discovery, then RFC 8414, from `issuer`.
    Discover(Url),
    /// Nothing that names one (only settings built by hand get here: a loaded config is validated).
    Missing,
}

impl TokenEndpoint {
    /// The endpoint as configured, before discovery or the `/auth` fallback: part of the cache key.
    pub fn configured(&self) -> String {
        match self {
            TokenEndpoint::Url(u) => u.clone(),
            TokenEndpoint::Keycloak {
                server,
                realm,
                legacy,
            } => keycloak_token_url(server, realm, *legacy),
            TokenEndpoint::Discover(issuer) => format!("discovery:{issuer}"),
            TokenEndpoint::Missing => String::new(),
        }
    }
}

impl Settings {
    /// Where the token endpoint comes from: `token_url` first, then a Keycloak realm, then `issuer`.
    pub fn token_endpoint(&self) -> TokenEndpoint {
        if let Some(u) = &self.token_url {
            return TokenEndpoint::Url(u.to_string());
        }
        match (self.kind, &self.auth_server, &self.realm, &self.issuer) {
            (Kind::Keycloak, Some(server), Some(realm), _) => TokenEndpoint::Keycloak {
                server: server.clone(),
                realm: realm.clone(),
                legacy: self.legacy_path,
            },
            (_, _, _, Some(issuer)) => TokenEndpoint::Discover(issuer.clone()),
            _ => TokenEndpoint::Missing,
        }
    }

    /// The token endpoint as configured, before discovery or the `/auth` fallback.
    pub fn configured_endpoint(&self) -> String {
        self.token_endpoint().configured()
    }

    /// The header line with `token` filled in.
    pub fn header_line(&self, token: &str) -> String {
        fill_header(&self.header, token)
    }

    /// The resolved settings as `(field, value)` rows for display; secrets show their source only.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let url = |o: &Option<Url>| o.as_ref().map_or_else(|| "-".into(), Url::to_string);
        let d = crate::duration::format;
        vec![
            ("provider", opt(&self.provider)),
            ("environment", opt(&self.environment)),
            ("kind", self.kind.as_str().into()),
            ("token endpoint", self.configured_endpoint()),
            ("api", url(&self.api)),
            ("app", url(&self.app)),
            ("client_id", self.client_id.describe()),
            (
                "client_secret",
                self.client_secret
                    .as_ref()
                    .map_or_else(|| "-".into(), SecretSource::describe),
            ),
            ("auth", self.auth.as_str().into()),
            ("grant", self.grant.as_str().into()),
            ("body", self.body.as_str().into()),
            ("audience", opt(&self.audience)),
            ("scope", opt(&self.scope)),
            ("resource", opt(&self.resource)),
            ("params", format!("{:?}", self.params)),
            ("header", self.header.clone()),
            ("token_env", opt(&self.token_env)),
            ("min_ttl", d(self.min_ttl)),
            ("default_ttl", d(self.default_ttl)),
            ("max_ttl", d(self.max_ttl)),
            ("cache", self.cache.as_str().into()),
            ("timeout", d(self.timeout)),
            ("connect_timeout", d(self.connect_timeout)),
            ("retry", d(self.retry)),
            ("cooldown", d(self.cooldown)),
            ("max_cooldown", d(self.max_cooldown)),
            (
                "ca_file",
                self.ca_file
                    .as_ref()
                    .map_or_else(|| "-".into(), |p| p.display().to_string()),
            ),
            ("allow_http", self.allow_http.to_string()),
            ("strict", self.strict.to_string()),
            (
                "git_hosts",
                if self.git_hosts.is_empty() {
                    "-".into()
                } else {
                    self.git_hosts.join(", ")
                },
            ),
        ]
        .into_iter()
        .chain(self.describe_credentials())
        .collect()
    }

    /// The rows of the authentication and exchange fields that are set: sources, never material.
    fn describe_credentials(&self) -> Vec<(&'static str, String)> {
        let mut rows = Vec::new();
        for (field, source) in [
            ("private_key", &self.private_key),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            if let Some(s) = source {
                rows.push((field, s.describe()));
            }
        }
        if self.auth == AuthMethod::PrivateKeyJwt || self.auth == AuthMethod::ClientSecretJwt {
            rows.push((
                "signing_alg",
                self.signing_alg
                    .map_or_else(|| "from the key".into(), |a| a.as_str().into()),
            ));
            rows.push(("key_id", self.key_id.clone().unwrap_or_else(|| "-".into())));
            rows.push((
                "assertion_audience",
                self.assertion_audience.as_str().into(),
            ));
        }
        if self.grant == Grant::TokenExchange {
            let token = |t: &Option<TokenSource>| {
                t.as_ref().map_or_else(|| "-".into(), TokenSource::describe)
            };
            rows.push(("subject_token", token(&self.subject_token)));
            rows.push(("subject_token_type", self.subject_token_type.clone()));
            if self.actor_token.is_some() {
                rows.push(("actor_token", token(&self.actor_token)));
                rows.push((
                    "actor_token_type",
                    self.actor_token_type
                        .clone()
                        .unwrap_or_else(|| ACCESS_TOKEN_TYPE.into()),
                ));
            }
            if let Some(r) = &self.requested_token_type {
                rows.push(("requested_token_type", r.clone()));
            }
        }
        rows
    }

    /// The issuer identifier an `assertion_audience = "issuer"` assertion names: `issuer`, else the Keycloak
    /// realm's (`{auth_server}[/auth]/realms/{realm}`).
    pub(crate) fn assertion_issuer(&self) -> Option<String> {
        if let Some(i) = &self.issuer {
            return Some(i.to_string());
        }
        match (&self.auth_server, &self.realm) {
            (Some(server), Some(realm)) if self.kind == Kind::Keycloak => Some(
                keycloak_token_url(server, realm, self.legacy_path)
                    .trim_end_matches("/protocol/openid-connect/token")
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// A `header` template (validated to hold `{token}`) with the token filled in: the one place the rule lives.
pub fn fill_header(template: &str, token: &str) -> String {
    template.replace("{token}", token)
}

/// `{server}[/auth]/realms/{realm}/protocol/openid-connect/token`.
pub(crate) fn keycloak_token_url(server: &Url, realm: &str, legacy: bool) -> String {
    let base = server.as_str().trim_end_matches('/');
    let realm: String = url::form_urlencoded::byte_serialize(realm.as_bytes()).collect();
    format!(
        "{base}{}/realms/{realm}/protocol/openid-connect/token",
        if legacy { "/auth" } else { "" }
    )
}
