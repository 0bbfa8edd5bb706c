//! Value parsers: each field's TOML value checked and converted, with errors at the value's position.

use super::*;

pub(super) type Val<'a> = Spanned<DeValue<'a>>;

pub(super) struct Ctx<'a> {
    pub(super) file: &'a Arc<SourceFile>,
    /// Set when the file holds a literal secret, so its permissions are worth a look.
    pub(super) literal_secret: std::cell::Cell<bool>,
}

impl Ctx<'_> {
    pub(super) fn origin(&self, span: Range<usize>) -> Origin {
        Origin {
            file: Some(self.file.clone()),
            span,
        }
    }
    pub(super) fn err(
        &self,
        span: Range<usize>,
        message: impl fmt::Display,
        hint: Option<String>,
    ) -> Error {
        self.file.error(span, message, hint)
    }
    pub(super) fn wrong_type(&self, key: &str, v: &Val<'_>, want: &str) -> Error {
        self.err(
            v.span(),
            format!("`{key}` must be {want}, found {}", v.get_ref().type_str()),
            None,
        )
    }
    pub(super) fn string<'v>(&self, key: &str, v: &'v Val<'_>) -> Result<&'v str> {
        v.get_ref()
            .as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }
    pub(super) fn table<'v, 'i>(&self, key: &str, v: &'v Val<'i>) -> Result<&'v DeTable<'i>> {
        v.get_ref()
            .as_table()
            .ok_or_else(|| self.wrong_type(key, v, "a table"))
    }
    pub(super) fn unknown_key(
        &self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        valid: &[&str],
        what: &str,
    ) -> Error {
        let hint = closest(key.get_ref(), valid.iter().copied())
            .map(|c| format!("did you mean `{c}`?"))
            .or_else(|| Some(format!("valid keys here: {}", valid.join(", "))));
        self.err(
            key.span(),
            format!("unknown key `{}` in {what}", key.get_ref()),
            hint,
        )
    }
}

/// The closest of `candidates` to `word`, if any is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) fn p_str(cx: &Ctx, key: &str, v: &Val) -> Result<String> {
    Ok(cx.string(key, v)?.to_owned())
}

pub(super) fn p_str_list(cx: &Ctx, key: &str, v: &Val) -> Result<Vec<String>> {
    let arr = v
        .get_ref()
        .as_array()
        .ok_or_else(|| cx.wrong_type(key, v, "an array of strings"))?;
    arr.iter().map(|a| p_str(cx, key, a)).collect()
}

pub(super) fn p_bool(cx: &Ctx, key: &str, v: &Val) -> Result<bool> {
    v.get_ref()
        .as_bool()
        .ok_or_else(|| cx.wrong_type(key, v, "true or false"))
}

pub(super) fn p_url(cx: &Ctx, key: &str, v: &Val) -> Result<Url> {
    let s = cx.string(key, v)?;
    let url = Url::parse(s).map_err(|e| {
        let hint = (!s.contains("://")).then(|| format!("write a full URL, e.g. `https://{s}`"));
        cx.err(v.span(), format!("`{key}` is not a valid URL: {e}"), hint)
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(cx.err(v.span(), format!("`{key}` must be an http(s) URL"), None));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(cx.err(v.span(), format!("`{key}` has no host"), None));
    }
    Ok(url)
}

pub(super) fn p_path(cx: &Ctx, key: &str, v: &Val) -> Result<PathBuf> {
    Ok(PathBuf::from(cx.string(key, v)?))
}

pub(super) fn p_duration(cx: &Ctx, key: &str, v: &Val) -> Result<Duration> {
    let s = v.get_ref().as_str().ok_or_else(|| {
        cx.wrong_type(
            key,
            v,
            "a duration string such as \"90s\", \"5m\" or \"1h30m\"",
        )
    })?;
    crate::duration::parse(s).map_err(|e| cx.err(v.span(), format!("`{key}`: {e}"), None))
}

pub(super) fn p_header(cx: &Ctx, key: &str, v: &Val) -> Result<String> {
    let s = cx.string(key, v)?;
    if !s.contains("{token}") {
        return Err(cx.err(
            v.span(),
            format!("`{key}` must contain `{{token}}`"),
            Some("for example \"Authorization: Bearer {token}\"".into()),
        ));
    }
    let name = s.split(':').next().unwrap_or("");
    if !s.contains(':') || name.trim().is_empty() || name.contains(char::is_whitespace) {
        return Err(cx.err(
            v.span(),
            format!("`{key}` must be a header line `Name: value`"),
            Some("for example \"Authorization: Bearer {token}\"".into()),
        ));
    }
    Ok(s.to_owned())
}

pub(super) fn p_choice<T: Copy>(cx: &Ctx, key: &str, v: &Val, choices: &[(&str, T)]) -> Result<T> {
    let s = cx.string(key, v)?;
    choices
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            let hint = closest(s, names.iter().copied()).map_or_else(
                || format!("one of: {}", names.join(", ")),
                |c| format!("did you mean `{c}`?"),
            );
            cx.err(v.span(), format!("unknown {key} `{s}`"), Some(hint))
        })
}

pub(super) fn p_kind(cx: &Ctx, key: &str, v: &Val) -> Result<Kind> {
    p_choice(
        cx,
        key,
        v,
        &[
            ("keycloak", Kind::Keycloak),
            ("auth0", Kind::Auth0),
            ("oauth2", Kind::OAuth2),
        ],
    )
}

pub(super) fn p_auth(cx: &Ctx, key: &str, v: &Val) -> Result<AuthMethod> {
    p_choice(cx, key, v, &AuthMethod::ALL)
}

pub(super) fn p_grant(cx: &Ctx, key: &str, v: &Val) -> Result<Grant> {
    p_choice(
        cx,
        key,
        v,
        &[
            ("client_credentials", Grant::ClientCredentials),
            ("token_exchange", Grant::TokenExchange),
        ],
    )
}

pub(super) fn p_signing_alg(cx: &Ctx, key: &str, v: &Val) -> Result<SigningAlg> {
    p_choice(cx, key, v, &SigningAlg::ALL)
}

pub(super) fn p_assertion_audience(cx: &Ctx, key: &str, v: &Val) -> Result<AssertionAudience> {
    p_choice(
        cx,
        key,
        v,
        &[
            ("token_endpoint", AssertionAudience::TokenEndpoint),
            ("issuer", AssertionAudience::Issuer),
        ],
    )
}

/// A subject or actor token: `{ profile = "other" }`, or any secret source.
pub(super) fn p_token_source(cx: &Ctx, key: &str, v: &Val) -> Result<TokenSource> {
    if let Some(t) = v.get_ref().as_table() {
        if let Some((_, val)) = t.iter().next().filter(|(k, _)| k.get_ref() == "profile") {
            if t.len() > 1 {
                return Err(cx.err(
                    v.span(),
                    format!("`{key}` must name exactly one source"),
                    None,
                ));
            }
            return Ok(TokenSource::Profile(p_str(cx, "profile", val)?));
        }
    }
    p_secret(cx, key, v).map(TokenSource::Secret)
}

pub(super) fn p_body(cx: &Ctx, key: &str, v: &Val) -> Result<BodyFormat> {
    p_choice(
        cx,
        key,
        v,
        &[("form", BodyFormat::Form), ("json", BodyFormat::Json)],
    )
}

pub(super) fn p_cache(cx: &Ctx, key: &str, v: &Val) -> Result<CacheMode> {
    p_choice(
        cx,
        key,
        v,
        &[
            ("disk", CacheMode::Disk),
            ("memory", CacheMode::Memory),
            ("none", CacheMode::None),
        ],
    )
}

pub(super) fn p_params(cx: &Ctx, key: &str, v: &Val) -> Result<BTreeMap<String, String>> {
    let t = cx.table(key, v)?;
    let mut out = BTreeMap::new();
    for (k, val) in t.iter() {
        out.insert(k.get_ref().to_string(), p_str(cx, k.get_ref(), val)?);
    }
    Ok(out)
}

pub(super) fn p_secret(cx: &Ctx, key: &str, v: &Val) -> Result<SecretSource> {
    match v.get_ref() {
        DeValue::String(s) => {
            if SECRET_KEYS.contains(&key) && !matches!(key, "client_id" | "url") {
                cx.literal_secret.set(true);
            }
            Ok(SecretSource::Literal(SecretString::from(s.to_string())))
        }
        DeValue::Table(t) => {
            let mut entries = t.iter();
            let (Some((k, val)), None) = (entries.next(), entries.next()) else {
                return Err(cx.err(
                    v.span(),
                    format!("`{key}` must name exactly one source"),
                    Some("{ env = \"NAME\" }, { file = \"PATH\" }, { command = [\"prog\", \"arg\"] } or { keyring = \"service/account\" }".into()),
                ));
            };
            match k.get_ref().as_ref() {
                "env" => Ok(SecretSource::Env(p_str(cx, "env", val)?)),
                "file" => Ok(SecretSource::File(PathBuf::from(cx.string("file", val)?))),
                "command" => {
                    let arr = val
                        .get_ref()
                        .as_array()
                        .ok_or_else(|| cx.wrong_type("command", val, "an array of strings"))?;
                    let argv = arr
                        .iter()
                        .map(|a| p_str(cx, "command", a))
                        .collect::<Result<Vec<_>>>()?;
                    if argv.is_empty() {
                        return Err(cx.err(val.span(), "`command` is empty", None));
                    }
                    Ok(SecretSource::Command(argv))
                }
                "keyring" => {
                    let name = cx.string("keyring", val)?;
                    match name.split_once('/') {
                        Some((service, account)) if !service.is_empty() && !account.is_empty() => {
                            Ok(SecretSource::Keyring {
                                service: service.to_owned(),
                                account: account.to_owned(),
                            })
                        }
                        _ => Err(cx.err(
                            val.span(),
                            "`keyring` must be \"service/account\"",
                            Some("for example { keyring = \"broker/ion-prod\" }".into()),
                        )),
                    }
                }
                _ => Err(cx.unknown_key(
                    k,
                    &["env", "file", "command", "keyring"],
                    "a secret source",
                )),
            }
        }
        _ => Err(cx.wrong_type(key, v, "a string or a secret source table")),
    }
}

/// `allow = { uids = [1000, "deploy"], gids = ["docker"], exe = ["/usr/bin/kubectl"], units = ["backup.service"] }`:
/// names are resolved now, and a user or group that does not exist is an error at its position.
pub(super) fn p_allow(cx: &Ctx, key: &str, v: &Val) -> Result<crate::caller::Allow> {
    let t = cx.table(key, v)?;
    let mut allow = crate::caller::Allow::default();
    fn items<'v, 'i>(
        cx: &Ctx,
        name: &str,
        val: &'v Val<'i>,
    ) -> Result<Vec<(Range<usize>, &'v DeValue<'i>)>> {
        let arr = val
            .get_ref()
            .as_array()
            .ok_or_else(|| cx.wrong_type(name, val, "an array"))?;
        Ok(arr.iter().map(|a| (a.span(), a.get_ref())).collect())
    }
    let id = |name: &str, span: Range<usize>, item: &DeValue, user: bool| -> Result<u32> {
        let what = if user { "user" } else { "group" };
        let found = match item {
            DeValue::Integer(i) => i.as_str().parse::<u32>().ok().filter(|n| {
                if user {
                    uzers::get_user_by_uid(*n).is_some()
                } else {
                    uzers::get_group_by_gid(*n).is_some()
                }
            }),
            DeValue::String(s) if user => uzers::get_user_by_name(s.as_ref()).map(|u| u.uid()),
            DeValue::String(s) => uzers::get_group_by_name(s.as_ref()).map(|g| g.gid()),
            _ => {
                return Err(cx.err(
                    span,
                    format!("`{name}` holds {what} names or numbers"),
                    None,
                ))
            }
        };
        found.ok_or_else(|| cx.err(span, format!("no such {what} on this machine"), None))
    };
    for (k, val) in t.iter() {
        match k.get_ref().as_ref() {
            "uids" => {
                for (span, item) in items(cx, "uids", val)? {
                    allow.uids.push(id("uids", span, item, true)?);
                }
            }
            "gids" => {
                for (span, item) in items(cx, "gids", val)? {
                    allow.gids.push(id("gids", span, item, false)?);
                }
            }
            "exe" => {
                for (span, item) in items(cx, "exe", val)? {
                    match item {
                        DeValue::String(s) if Path::new(s.as_ref()).is_absolute() => {
                            // `/proc/<pid>/exe` names the resolved file: resolve a link like `/usr/bin/python3`.
                            let p = PathBuf::from(s.as_ref());
                            allow.exe.push(std::fs::canonicalize(&p).unwrap_or(p));
                        }
                        _ => return Err(cx.err(span, "`exe` holds absolute paths", None)),
                    }
                }
            }
            "units" => {
                for (span, item) in items(cx, "units", val)? {
                    match item {
                        DeValue::String(s) if !s.is_empty() && !s.contains('/') => {
                            allow.units.push(s.to_string())
                        }
                        _ => {
                            return Err(cx.err(
                                span,
                                "`units` holds systemd unit names, like \"backup.service\"",
                                None,
                            ))
                        }
                    }
                }
            }
            _ => return Err(cx.unknown_key(k, &["uids", "gids", "exe", "units"], "`allow`")),
        }
    }
    Ok(allow)
}
