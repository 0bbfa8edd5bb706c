//! Resolving a profile: the layers overlaid in order, then checked and settled into [`Settings`].

use super::*;

impl Config {
    /// Resolves a profile: precedence, environment, defaults, validation.
    pub fn resolve(&self, name: &str, overrides: &Overrides) -> Result<Settings> {
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
}

/// Whether `url` may carry the client secret (docs/reference.md §1, §3): https, or http to this machine, or http
/// anywhere with `allow_http`. The one rule for configured, discovered and remembered endpoints.
pub(crate) fn secure_enough(url: &Url, allow_http: bool) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => allow_http || is_loopback(url),
        _ => false,
    }
}

/// Whether `url` names this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(url: &Url) -> bool {
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
    let secret_positions = [&f.client_id, &f.client_secret]
        .map(|l| l.as_ref().map_or_else(String::new, |l| l.origin.position()));
    let client_id = val(&f.client_id).ok_or_else(|| {
        missing(
            "client_id",
            "add `client_id = { env = \"MY_CLIENT_ID\" }` to the profile",
        )
    })?;
    let client_secret = val(&f.client_secret).ok_or_else(|| {
        missing(
            "client_secret",
            "add `client_secret = { env = \"MY_CLIENT_SECRET\" }` to the profile",
        )
    })?;
    Ok(Settings {
        profile: name.to_owned(),
        provider,
        environment,
        kind,
        auth_server: val(&f.auth_server),
        realm: val(&f.realm),
        legacy_path: val(&f.legacy_path).unwrap_or(false),
        token_url: val(&f.token_url),
        issuer: val(&f.issuer),
        api: val(&f.api),
        app: val(&f.app),
        client_id,
        client_secret,
        secret_positions,
        auth: val(&f.auth).unwrap_or(AuthMethod::ClientSecretPost),
        body: val(&f.body).unwrap_or(if kind == Kind::Auth0 {
            BodyFormat::Json
        } else {
            BodyFormat::Form
        }),
        audience: val(&f.audience),
        scope: val(&f.scope),
        resource: val(&f.resource),
        params: val(&f.params).unwrap_or_default(),
        header: val(&f.header).unwrap_or_else(|| DEFAULT_HEADER.to_owned()),
        token_env: val(&f.token_env),
        min_ttl: val(&f.min_ttl).unwrap_or(DEFAULT_MIN_TTL),
        default_ttl: val(&f.default_ttl).unwrap_or(DEFAULT_DEFAULT_TTL),
        max_ttl: val(&f.max_ttl).unwrap_or(DEFAULT_MAX_TTL),
        cache: val(&f.cache).unwrap_or(CacheMode::Disk),
        timeout: val(&f.timeout).unwrap_or(DEFAULT_TIMEOUT),
        connect_timeout: val(&f.connect_timeout).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        retry: val(&f.retry).unwrap_or(DEFAULT_RETRY),
        cooldown: val(&f.cooldown).unwrap_or(DEFAULT_COOLDOWN),
        max_cooldown: val(&f.max_cooldown).unwrap_or(DEFAULT_MAX_COOLDOWN),
        ca_file: val(&f.ca_file),
        allow_http,
        git_hosts: val(&f.git_hosts).unwrap_or_default(),
        sink: val(&f.sink),
    })
}
