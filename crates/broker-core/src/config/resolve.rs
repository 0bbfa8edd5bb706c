//! Resolving a profile: the layers overlaid in order, then checked and settled into [`Settings`].

use super::*;

impl Config {
    /// Resolves a profile: precedence, environment, defaults, validation.
    pub fn resolve(&self, name: &str, overrides: &Overrides) -> Result<Settings> {
        let (def, provider_name, environment, mut f) = self.layered(name)?;
        if let Some(v) = overrides.min_ttl {
            f.min_ttl = Located::from_command_line(v);
        }
        if let Some(v) = &overrides.scope {
            f.scope = Located::from_command_line(v.clone());
        }
        if let Some(v) = &overrides.audience {
            f.audience = Located::from_command_line(v.clone());
        }
        settle(name, def, provider_name, environment, f)
    }

    /// A profile's fields with the layers of the files overlaid (provider, environment, `[defaults]`, profile),
    /// with its provider's name and canonical environment.
    #[allow(clippy::type_complexity)]
    fn layered(&self, name: &str) -> Result<(&ProfileDef, Option<String>, Option<String>, Fields)> {
        let def = self
            .profiles
            .get(name)
            .ok_or_else(|| self.unknown_profile(name))?;
        let mut f = Fields::default();
        let mut provider_name = None;
        let mut environment = None;
        if let Some(p) = &def.provider {
            let provider = self.providers.get(&p.value).ok_or_else(|| {
                let names: Vec<&str> = self.providers.keys().map(String::as_str).collect();
                let hint = closest(&p.value, names.iter().copied()).map_or_else(
                    || format!("known providers: {}", names.join(", ")),
                    |c| format!("did you mean `{c}`?"),
                );
                p.origin
                    .error(format!("unknown provider `{}`", p.value), Some(hint))
            })?;
            f.overlay(&provider.fields);
            let env_name = def
                .environment
                .as_ref()
                .or(provider.default_environment.as_ref());
            if let Some(env_name) = env_name {
                let (canonical, env) = provider.environment(&env_name.value).ok_or_else(|| {
                    let names: Vec<&str> = provider
                        .environments
                        .iter()
                        .flat_map(|(n, e)| {
                            std::iter::once(n.as_str()).chain(e.aliases.iter().map(String::as_str))
                        })
                        .collect();
                    let hint = closest(&env_name.value, names.iter().copied()).map_or_else(
                        || format!("environments of `{}`: {}", provider.name, names.join(", ")),
                        |c| format!("did you mean `{c}`?"),
                    );
                    env_name.origin.error(
                        format!(
                            "provider `{}` has no environment `{}`",
                            provider.name, env_name.value
                        ),
                        Some(hint),
                    )
                })?;
                f.overlay(&env.fields);
                environment = Some(canonical.to_owned());
            } else if !provider.environments.is_empty() {
                return Err(def.origin.error(
                    format!("provider `{}` has environments but no default_environment: set `environment`", provider.name),
                    None,
                ));
            }
            provider_name = Some(provider.name.clone());
        } else if let Some(e) = &def.environment {
            return Err(e.origin.error("`environment` needs a `provider`", None));
        }
        f.overlay(&self.defaults);
        f.overlay(&def.fields);
        Ok((def, provider_name, environment, f))
    }

    /// Every `{ profile = ... }` subject or actor token names a profile, and no profile's token depends on itself
    /// (docs/reference.md §8): checked when the files are loaded, so a cycle never reaches a fetch.
    pub(super) fn check_exchanges(&self) -> Result<()> {
        let names_profile = |f: &Fields| {
            [&f.subject_token, &f.actor_token]
                .into_iter()
                .flatten()
                .any(|t| matches!(t.value, TokenSource::Profile(_)))
        };
        let anywhere = names_profile(&self.defaults)
            || self.profiles.values().any(|p| names_profile(&p.fields))
            || self.providers.values().any(|p| {
                names_profile(&p.fields)
                    || p.environments.values().any(|e| names_profile(&e.fields))
            });
        if !anywhere {
            return Ok(());
        }
        // Edges: profile -> (profile whose token it exchanges, where that is written).
        let mut edges: BTreeMap<&str, Vec<(String, Origin)>> = BTreeMap::new();
        for name in self.profiles.keys() {
            let Ok((_, _, _, f)) = self.layered(name) else {
                continue; // reported when the profile is resolved
            };
            if val(&f.grant) != Some(Grant::TokenExchange) {
                continue;
            }
            for t in [&f.subject_token, &f.actor_token].into_iter().flatten() {
                if let TokenSource::Profile(other) = &t.value {
                    if !self.profiles.contains_key(other) {
                        let names: Vec<&str> = self.profile_names().collect();
                        let hint = closest(other, names.iter().copied())
                            .map(|c| format!("did you mean `{c}`?"));
                        return Err(t.origin.error(
                            format!("profile `{name}` exchanges the token of profile `{other}`, which does not exist"),
                            hint,
                        ));
                    }
                    edges
                        .entry(name)
                        .or_default()
                        .push((other.clone(), t.origin.clone()));
                }
            }
        }
        // Depth-first from each profile; a profile met again on the current path closes a cycle.
        fn visit<'a>(
            at: &'a str,
            edges: &'a BTreeMap<&str, Vec<(String, Origin)>>,
            path: &mut Vec<&'a str>,
            done: &mut std::collections::BTreeSet<&'a str>,
        ) -> Result<()> {
            if done.contains(at) {
                return Ok(());
            }
            path.push(at);
            for (next, origin) in edges.get(at).into_iter().flatten() {
                if let Some(i) = path.iter().position(|p| p == next) {
                    let mut cycle: Vec<&str> = path[i..].to_vec();
                    cycle.push(next);
                    return Err(origin.error(
                        format!("token exchange cycle: {}", cycle.join(" -> ")),
                        Some("a profile cannot exchange a token that depends on its own".into()),
                    ));
                }
                visit(next, edges, path, done)?;
            }
            path.pop();
            done.insert(at);
            Ok(())
        }
        let mut done = std::collections::BTreeSet::new();
        for name in edges.keys() {
            visit(name, &edges, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }
}

/// Whether `url` may carry the client secret or a token (docs/reference.md §1, §3): https, or http to this machine,
/// or http anywhere with `allow_http`. The one rule for configured, discovered and remembered endpoints, and for
/// the `api` the proxy sends tokens to.
pub fn secure_enough(url: &Url, allow_http: bool) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => allow_http || is_loopback(url),
        _ => false,
    }
}

/// Whether `url` names this machine (`localhost`, 127.0.0.0/8, `::1`).
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

pub(super) fn val<T: Clone>(x: &Option<Box<Located<T>>>) -> Option<T> {
    x.as_ref().map(|l| l.value.clone())
}

/// The value of a field, moved out of layers that are no longer needed (no clone: a daemon settles 10,000 profiles).
pub(super) fn take<T>(x: &mut Option<Box<Located<T>>>) -> Option<T> {
    x.take().map(|l| l.value)
}

/// The fields a kind needs to find its token endpoint are there.
fn check_endpoint(kind: Kind, f: &Fields, missing: &dyn Fn(&str, &str) -> Error) -> Result<()> {
    match kind {
        Kind::Keycloak if f.token_url.is_none() => {
            let hint = "keycloak needs `auth_server` and `realm` (or `token_url`)";
            if f.auth_server.is_none() {
                return Err(missing("auth_server", hint));
            }
            if f.realm.is_none() {
                return Err(missing("realm", hint));
            }
            Ok(())
        }
        Kind::Auth0 if f.token_url.is_none() => {
            Err(missing("token_url", "auth0 needs `token_url`"))
        }
        Kind::OAuth2 if f.token_url.is_none() && f.issuer.is_none() => {
            Err(missing("token_url", "oauth2 needs `token_url` or `issuer`"))
        }
        _ => Ok(()),
    }
}

/// No configured URL sends the secret in clear to another machine unless `allow_http` says so; returns it.
fn check_urls(f: &Fields) -> Result<bool> {
    let allow_http = val(&f.allow_http).unwrap_or(false);
    for url in [&f.token_url, &f.issuer, &f.auth_server]
        .into_iter()
        .flatten()
    {
        if !secure_enough(&url.value, allow_http) {
            return Err(url.origin.error(
                "plain http:// to a non-loopback host would send the client secret unencrypted",
                Some("use https://, or set `allow_http = true` if you really mean it".into()),
            ));
        }
    }
    Ok(allow_http)
}

/// `urn:ietf:params:oauth:token-type:access_token`, the default `subject_token_type` (docs/reference.md §8).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The fields `auth` and `grant` need are there, and agree with each other (docs/reference.md §8).
fn check_credentials(
    auth: AuthMethod,
    grant: Grant,
    f: &Fields,
    missing: &dyn Fn(&str, &str) -> Error,
) -> Result<()> {
    let method = auth.as_str();
    if auth.uses_secret() && f.client_secret.is_none() {
        return Err(missing(
            "client_secret",
            &format!("`auth = \"{method}\"` signs or sends the client secret: add `client_secret = {{ env = \"MY_CLIENT_SECRET\" }}`, or choose another `auth`"),
        ));
    }
    if auth == AuthMethod::PrivateKeyJwt && f.private_key.is_none() {
        return Err(missing(
            "private_key",
            "`auth = \"private_key_jwt\"` signs with a private key: add `private_key = { file = \"~/.config/broker/key.pem\" }`",
        ));
    }
    if auth.uses_tls() {
        for field in ["client_cert", "client_key"] {
            let set = if field == "client_cert" {
                &f.client_cert
            } else {
                &f.client_key
            };
            if set.is_none() {
                return Err(missing(
                    field,
                    &format!(
                        "`auth = \"{method}\"` needs `client_cert` and `client_key` (PEM files)"
                    ),
                ));
            }
        }
        if let Some(u) = f.token_url.as_ref().filter(|u| u.value.scheme() != "https") {
            return Err(u.origin.error(
                format!("`auth = \"{method}\"` authenticates with TLS: the token endpoint must be https://"),
                None,
            ));
        }
    }
    if let Some(alg) = &f.signing_alg {
        let fits = match auth {
            AuthMethod::ClientSecretJwt => alg.value.is_hmac(),
            AuthMethod::PrivateKeyJwt => !alg.value.is_hmac(),
            _ => true,
        };
        if !fits {
            return Err(alg.origin.error(
                format!(
                    "`signing_alg = \"{}\"` does not fit `auth = \"{method}\"`",
                    alg.value.as_str()
                ),
                Some(if auth == AuthMethod::ClientSecretJwt {
                    "client_secret_jwt signs with the secret: HS256, HS384 or HS512".into()
                } else {
                    "private_key_jwt signs with the key: RS256, PS256, ES256, ES384, EdDSA, ..."
                        .into()
                }),
            ));
        }
    }
    if let Some(a) = f
        .assertion_audience
        .as_ref()
        .filter(|a| a.value == AssertionAudience::Issuer)
    {
        let keycloak =
            val(&f.kind) == Some(Kind::Keycloak) && f.auth_server.is_some() && f.realm.is_some();
        if f.issuer.is_none() && !keycloak {
            return Err(a.origin.error(
                "`assertion_audience = \"issuer\"` needs `issuer` (or a Keycloak `auth_server` and `realm`)",
                None,
            ));
        }
    }
    if grant == Grant::TokenExchange && f.subject_token.is_none() {
        return Err(missing(
            "subject_token",
            "`grant = \"token_exchange\"` exchanges a token: add `subject_token = { file = \"...\" }` or `subject_token = { profile = \"other\" }`",
        ));
    }
    Ok(())
}

pub(super) fn settle(
    name: &str,
    def: &ProfileDef,
    provider: Option<String>,
    environment: Option<String>,
    f: Fields,
) -> Result<Settings> {
    let missing = |field: &str, hint: &str| {
        def.origin.error(
            format!("profile `{name}` has no `{field}`"),
            Some(hint.to_owned()),
        )
    };
    let kind = val(&f.kind).ok_or_else(|| {
        missing(
            "kind",
            "set `provider = \"...\"` or `kind = \"keycloak\" | \"auth0\" | \"oauth2\"`",
        )
    })?;
    check_endpoint(kind, &f, &missing)?;
    let allow_http = check_urls(&f)?;
    if f.client_id.is_none() {
        return Err(missing(
            "client_id",
            "add `client_id = { env = \"MY_CLIENT_ID\" }` to the profile",
        ));
    }
    let auth = val(&f.auth).unwrap_or(AuthMethod::ClientSecretPost);
    let grant = val(&f.grant).unwrap_or(Grant::ClientCredentials);
    check_credentials(auth, grant, &f, &missing)?;
    let positions = [
        ("client_id", &f.client_id),
        ("client_secret", &f.client_secret),
        ("private_key", &f.private_key),
        ("client_cert", &f.client_cert),
        ("client_key", &f.client_key),
    ]
    .into_iter()
    .map(|(n, l)| (n, l.as_ref().map(|l| l.origin.clone())))
    .chain([
        (
            "subject_token",
            f.subject_token.as_ref().map(|l| l.origin.clone()),
        ),
        (
            "actor_token",
            f.actor_token.as_ref().map(|l| l.origin.clone()),
        ),
        ("dpop", f.dpop.as_ref().map(|l| l.origin.clone())),
    ])
    .filter_map(|(n, at)| Some((n, at?)))
    .collect();
    let missing = |field: &'static str| missing(field, "");
    let mut s = Settings::from_fields(
        name.to_owned(),
        provider,
        environment,
        positions,
        f,
        &missing,
    )?;
    // What a method or grant does not use is not kept (nor read at a fetch, nor part of the cache key).
    s.allow_http = allow_http;
    s.client_secret = s.client_secret.take().filter(|_| auth.uses_secret());
    s.private_key = s
        .private_key
        .take()
        .filter(|_| auth == AuthMethod::PrivateKeyJwt);
    s.client_cert = s.client_cert.take().filter(|_| auth.uses_tls());
    s.client_key = s.client_key.take().filter(|_| auth.uses_tls());
    let exchange = grant == Grant::TokenExchange;
    s.subject_token = s.subject_token.take().filter(|_| exchange);
    s.actor_token = s.actor_token.take().filter(|_| exchange);
    Ok(s)
}
