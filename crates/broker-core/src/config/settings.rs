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

    /// The resolved settings as `(field, value)` rows for display, every declared field in declaration order
    /// (`fields!`), after the provider, environment and token endpoint; secrets show their source only.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let assertion = matches!(
            self.auth,
            AuthMethod::PrivateKeyJwt | AuthMethod::ClientSecretJwt
        );
        let mut rows = vec![
            ("provider", self.provider.shown()),
            ("environment", self.environment.shown()),
            ("token endpoint", self.configured_endpoint()),
        ];
        rows.extend(self.field_rows().into_iter().map(|(field, shown)| {
            match field {
                // The values the defaults resolve to.
                "body" => (field, self.body().as_str().to_owned()),
                "signing_alg" if assertion && self.signing_alg.is_none() => {
                    (field, "from the key".to_owned())
                }
                _ => (field, shown),
            }
        }));
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

/// The header template for a token of `token_type`: a DPoP-bound token goes in `Authorization: DPoP {token}`
/// (RFC 9449 §7.1) whatever scheme an `Authorization` template names; any other template is kept.
pub fn header_template<'a>(template: &'a str, token_type: &str) -> std::borrow::Cow<'a, str> {
    match template.split_once(':') {
        Some((name, _))
            if token_type.eq_ignore_ascii_case("dpop")
                && name.trim().eq_ignore_ascii_case("authorization") =>
        {
            format!("{}: DPoP {{token}}", name.trim()).into()
        }
        _ => template.into(),
    }
}

/// [`fill_header`] with the template [`header_template`] gives for `token_type`.
pub fn fill_header_typed(template: &str, token: &str, token_type: &str) -> String {
    fill_header(&header_template(template, token_type), token)
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
