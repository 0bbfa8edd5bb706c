//! The config model: provider definitions and profiles, loaded from TOML with positions kept, merged
//! by the precedence of docs/reference.md §1, and resolved into concrete [`Settings`].
//!
//! Files are walked by hand over `toml::de::DeTable` (which keeps spans) rather than through serde derive,
//! so every error names file, line and column, and unknown keys get the closest valid name.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue};
use toml::Spanned;
use url::Url;

use crate::error::{Error, Result};
use crate::secret::SecretSource;

/// A loaded text file, kept to point at positions in it.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as shown to the user (built-ins show as `<built-in>/name.toml`).
    pub name: String,
    /// The file's contents.
    pub text: String,
}

impl SourceFile {
    /// 1-based line and column of byte offset `at`.
    fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// An error pointing at `span` in this file, drawn with the source line and a caret. The line is shown with the
    /// values of `client_secret`, `client_id` and `private_key` literals replaced by `[redacted]`.
    pub fn error(
        &self,
        span: Range<usize>,
        message: impl fmt::Display,
        hint: Option<String>,
    ) -> Error {
        let (line, col) = self.line_col(span.start);
        let text = self.text.lines().nth(line - 1).unwrap_or("");
        let width = self.text[span.start.min(self.text.len())..span.end.min(self.text.len())]
            .lines()
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        let (text, caret_col, width) = redact_line(text, col - 1, width);
        let gutter = line.to_string().len();
        let mut msg = format!(
            "{}:{line}:{col}: {message}\n{:gutter$} |\n{line} | {text}\n{:gutter$} | {}{}",
            self.name,
            "",
            "",
            " ".repeat(caret_col),
            "^".repeat(width)
        );
        if let Some(h) = hint {
            msg.push_str(&format!("\n{:gutter$} = hint: {h}", ""));
        }
        Error::config(msg)
    }
}

/// Keys whose literal values never appear in an error's source excerpt.
const SECRET_KEYS: [&str; 3] = ["client_secret", "client_id", "private_key"];

/// `line` with the string value of every [`SECRET_KEYS`] literal replaced by `[redacted]` (to the end of the line
/// when its closing quote is missing), and the caret (0-based column and width, in characters) moved to match.
fn redact_line(line: &str, mut col: usize, mut width: usize) -> (String, usize, usize) {
    const MARK: &str = "[redacted]";
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut shift: isize = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().collect();
        let Some(key) = SECRET_KEYS.iter().find(|k| rest.starts_with(*k)) else {
            out.push(chars[i]);
            i += 1;
            continue;
        };
        // key, optional closing quote of a quoted key, spaces, `=`, spaces, an opening quote.
        let mut j = i + key.len();
        let skip = |j: &mut usize, what: &dyn Fn(char) -> bool| {
            while *j < chars.len() && what(chars[*j]) {
                *j += 1;
            }
        };
        skip(&mut j, &|c| c == '"' || c == '\'' || c == ' ' || c == '\t');
        let value_start = if chars.get(j) == Some(&'=') {
            j += 1;
            skip(&mut j, &|c| c == ' ' || c == '\t');
            matches!(chars.get(j), Some('"' | '\'')).then_some(j)
        } else {
            None
        };
        let Some(open) = value_start else {
            out.extend(&chars[i..j]);
            i = j;
            continue;
        };
        let quote = chars[open];
        let mut close = open + 1;
        while close < chars.len() && chars[close] != quote {
            close += if quote == '"' && chars[close] == '\\' {
                2
            } else {
                1
            };
        }
        let close = close.min(chars.len());
        out.extend(&chars[i..=open]);
        out.push_str(MARK);
        let (from, to) = (open + 1, close);
        let delta = MARK.len() as isize - (to - from) as isize;
        let at = (col as isize - shift) as usize; // the caret, in original columns
        if at >= from && at < to.max(from + 1) {
            col = (from as isize + shift) as usize;
            width = MARK.len();
        } else if at >= to {
            col = (col as isize + delta) as usize;
        } else if at + width > from {
            width = from - at + MARK.len();
        }
        shift += delta;
        if close < chars.len() {
            out.push(quote);
        }
        i = close + 1;
    }
    (out, col, width)
}

/// Where a value was written: a file and a span, or the command line.
#[derive(Debug, Clone)]
pub struct Origin {
    file: Option<Arc<SourceFile>>,
    span: Range<usize>,
}

impl Origin {
    /// A value given on the command line or by an embedder.
    pub fn command_line() -> Self {
        Origin {
            file: None,
            span: 0..0,
        }
    }

    /// An error about the value written here.
    pub fn error(&self, message: impl fmt::Display, hint: Option<String>) -> Error {
        match &self.file {
            Some(f) => f.error(self.span.clone(), message, hint),
            None => {
                let mut m = format!("command line: {message}");
                if let Some(h) = hint {
                    m.push_str(&format!(" (hint: {h})"));
                }
                Error::config(m)
            }
        }
    }

    /// `file:line:col`, or `command line`.
    pub fn position(&self) -> String {
        match &self.file {
            Some(f) => {
                let (l, c) = f.line_col(self.span.start);
                format!("{}:{l}:{c}", f.name)
            }
            None => "command line".into(),
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub origin: Origin,
}

impl<T> Located<T> {
    /// A field value given on the command line, as a [`Fields`] entry.
    fn from_command_line(value: T) -> Option<Box<Self>> {
        Some(Box::new(Located {
            value,
            origin: Origin::command_line(),
        }))
    }
}

/// The wire kind of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Keycloak realm: `{auth_server}[/auth]/realms/{realm}/protocol/openid-connect/token`, form body.
    Keycloak,
    /// Auth0 style: `token_url` + `audience`, JSON body.
    Auth0,
    /// Any RFC 6749 client-credentials server, with optional discovery.
    OAuth2,
}

impl Kind {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Keycloak => "keycloak",
            Kind::Auth0 => "auth0",
            Kind::OAuth2 => "oauth2",
        }
    }
}

/// How client credentials are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// In the body (default).
    ClientSecretPost,
    /// In an `Authorization: Basic` header, each part form-encoded first (RFC 6749 §2.3.1).
    ClientSecretBasic,
}

impl AuthMethod {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
        }
    }
}

/// How the request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`.
    Json,
}

impl BodyFormat {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Form => "form",
            BodyFormat::Json => "json",
        }
    }
}

/// Where tokens of a profile are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// In memory and on disk, shared between processes (default).
    Disk,
    /// In this process's memory only.
    Memory,
    /// Not at all: every request goes upstream.
    None,
}

impl CacheMode {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Disk => "disk",
            CacheMode::Memory => "memory",
            CacheMode::None => "none",
        }
    }
}

type Val<'a> = Spanned<DeValue<'a>>;

struct Ctx<'a> {
    file: &'a Arc<SourceFile>,
    /// Set when the file holds a literal secret, so its permissions are worth a look.
    literal_secret: std::cell::Cell<bool>,
}

impl Ctx<'_> {
    fn origin(&self, span: Range<usize>) -> Origin {
        Origin {
            file: Some(self.file.clone()),
            span,
        }
    }
    fn err(&self, span: Range<usize>, message: impl fmt::Display, hint: Option<String>) -> Error {
        self.file.error(span, message, hint)
    }
    fn wrong_type(&self, key: &str, v: &Val<'_>, want: &str) -> Error {
        self.err(
            v.span(),
            format!("`{key}` must be {want}, found {}", v.get_ref().type_str()),
            None,
        )
    }
    fn string<'v>(&self, key: &str, v: &'v Val<'_>) -> Result<&'v str> {
        v.get_ref()
            .as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }
    fn table<'v, 'i>(&self, key: &str, v: &'v Val<'i>) -> Result<&'v DeTable<'i>> {
        v.get_ref()
            .as_table()
            .ok_or_else(|| self.wrong_type(key, v, "a table"))
    }
    fn unknown_key(
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
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn p_str(cx: &Ctx, key: &str, v: &Val) -> Result<String> {
    Ok(cx.string(key, v)?.to_owned())
}

/// A token file the daemon rewrites atomically on every refresh, for programs that only read files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// Where (a leading `~/` is the home directory).
    pub path: PathBuf,
    /// `token`, `header` or `json`, as `broker token --format`.
    pub format: String,
    /// File mode; default 0600.
    pub mode: u32,
    /// The file's owner, a user name or a numeric uid (a daemon running as root writes for another user).
    pub owner: Option<String>,
    /// The file's group, a group name or a numeric gid.
    pub group: Option<String>,
}

fn p_sink(cx: &Ctx, key: &str, v: &Val) -> Result<Sink> {
    let t = cx.table(key, v)?;
    let mut sink = Sink {
        path: PathBuf::new(),
        format: "token".into(),
        mode: 0o600,
        owner: None,
        group: None,
    };
    for (k, val) in t.iter() {
        match k.get_ref().as_ref() {
            "path" => sink.path = p_path(cx, "path", val)?,
            "format" => {
                sink.format = p_choice(
                    cx,
                    "format",
                    val,
                    &[("token", "token"), ("header", "header"), ("json", "json")],
                )?
                .to_owned()
            }
            "mode" => {
                let s = cx.string("mode", val)?;
                sink.mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777 && m & 0o022 == 0)
                    .ok_or_else(|| cx.err(val.span(), "`mode` must be an octal file mode no one else can write, like \"0600\" or \"0640\"", None))?;
            }
            which @ ("owner" | "group") => {
                let id = match val.get_ref() {
                    DeValue::Integer(i) => i.as_str().to_owned(),
                    DeValue::String(s) if !s.is_empty() => s.to_string(),
                    _ => return Err(cx.wrong_type(which, val, "a name or a number")),
                };
                if which == "owner" {
                    sink.owner = Some(id);
                } else {
                    sink.group = Some(id);
                }
            }
            _ => {
                return Err(cx.unknown_key(
                    k,
                    &["path", "format", "mode", "owner", "group"],
                    "a sink",
                ))
            }
        }
    }
    if sink.path.as_os_str().is_empty() {
        return Err(cx.err(v.span(), "a sink needs a `path`", None));
    }
    Ok(sink)
}

fn p_str_list(cx: &Ctx, key: &str, v: &Val) -> Result<Vec<String>> {
    let arr = v
        .get_ref()
        .as_array()
        .ok_or_else(|| cx.wrong_type(key, v, "an array of strings"))?;
    arr.iter().map(|a| p_str(cx, key, a)).collect()
}

fn p_bool(cx: &Ctx, key: &str, v: &Val) -> Result<bool> {
    v.get_ref()
        .as_bool()
        .ok_or_else(|| cx.wrong_type(key, v, "true or false"))
}

fn p_url(cx: &Ctx, key: &str, v: &Val) -> Result<Url> {
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

fn p_path(cx: &Ctx, key: &str, v: &Val) -> Result<PathBuf> {
    Ok(PathBuf::from(cx.string(key, v)?))
}

fn p_duration(cx: &Ctx, key: &str, v: &Val) -> Result<Duration> {
    let s = v.get_ref().as_str().ok_or_else(|| {
        cx.wrong_type(
            key,
            v,
            "a duration string such as \"90s\", \"5m\" or \"1h30m\"",
        )
    })?;
    crate::duration::parse(s).map_err(|e| cx.err(v.span(), format!("`{key}`: {e}"), None))
}

fn p_header(cx: &Ctx, key: &str, v: &Val) -> Result<String> {
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

fn p_choice<T: Copy>(cx: &Ctx, key: &str, v: &Val, choices: &[(&str, T)]) -> Result<T> {
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

fn p_kind(cx: &Ctx, key: &str, v: &Val) -> Result<Kind> {
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

fn p_auth(cx: &Ctx, key: &str, v: &Val) -> Result<AuthMethod> {
    p_choice(
        cx,
        key,
        v,
        &[
            ("client_secret_post", AuthMethod::ClientSecretPost),
            ("client_secret_basic", AuthMethod::ClientSecretBasic),
        ],
    )
}

fn p_body(cx: &Ctx, key: &str, v: &Val) -> Result<BodyFormat> {
    p_choice(
        cx,
        key,
        v,
        &[("form", BodyFormat::Form), ("json", BodyFormat::Json)],
    )
}

fn p_cache(cx: &Ctx, key: &str, v: &Val) -> Result<CacheMode> {
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

fn p_params(cx: &Ctx, key: &str, v: &Val) -> Result<BTreeMap<String, String>> {
    let t = cx.table(key, v)?;
    let mut out = BTreeMap::new();
    for (k, val) in t.iter() {
        out.insert(k.get_ref().to_string(), p_str(cx, k.get_ref(), val)?);
    }
    Ok(out)
}

fn p_secret(cx: &Ctx, key: &str, v: &Val) -> Result<SecretSource> {
    match v.get_ref() {
        DeValue::String(s) => {
            if key == "client_secret" {
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
                    Some("{ env = \"NAME\" }, { file = \"PATH\" } or { command = [\"prog\", \"arg\"] }".into()),
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
                _ => Err(cx.unknown_key(k, &["env", "file", "command"], "a secret source")),
            }
        }
        _ => Err(cx.wrong_type(key, v, "a string or a secret source table")),
    }
}

macro_rules! fields {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $parser:ident ),* $(,)?) => {
        /// The settings vocabulary shared by provider files, environments, `[defaults]` and profiles.
        /// Every field is optional at each layer; [`Fields::overlay`] applies a higher layer. Each set field is
        /// boxed: a table sets a handful of some thirty fields, and a 10,000-profile config then weighs a few
        /// hundred bytes a profile instead of kilobytes.
        #[derive(Debug, Clone, Default)]
        pub struct Fields {
            $( $(#[$doc])* pub $name: Option<Box<Located<$ty>>>, )*
        }

        impl Fields {
            /// Names of every field, for suggestions.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Takes `key` if it is a field; `Ok(false)` when it is not one.
            fn take(&mut self, cx: &Ctx, key: &Spanned<std::borrow::Cow<'_, str>>, v: &Val) -> Result<bool> {
                match key.get_ref().as_ref() {
                    $( stringify!($name) => {
                        self.$name = Some(Box::new(Located { value: $parser(cx, stringify!($name), v)?, origin: cx.origin(v.span()) }));
                        Ok(true)
                    } )*
                    _ => Ok(false),
                }
            }

            /// Sets every field that `upper` sets.
            pub fn overlay(&mut self, upper: &Fields) {
                $( if upper.$name.is_some() { self.$name = upper.$name.clone(); } )*
            }
        }
    };
}

fields! {
    /// Wire kind.
    kind: Kind => p_kind,
    /// Keycloak server base URL.
    auth_server: Url => p_url,
    /// Keycloak realm.
    realm: String => p_str,
    /// Keycloak under `/auth`.
    legacy_path: bool => p_bool,
    /// Explicit token endpoint.
    token_url: Url => p_url,
    /// Issuer for discovery.
    issuer: Url => p_url,
    /// The API endpoint.
    api: Url => p_url,
    /// The web app.
    app: Url => p_url,
    /// Client id.
    client_id: SecretSource => p_secret,
    /// Client secret.
    client_secret: SecretSource => p_secret,
    /// Client authentication method.
    auth: AuthMethod => p_auth,
    /// Request body encoding.
    body: BodyFormat => p_body,
    /// `audience` parameter.
    audience: String => p_str,
    /// `scope` parameter.
    scope: String => p_str,
    /// `resource` parameter.
    resource: String => p_str,
    /// Extra string parameters.
    params: BTreeMap<String, String> => p_params,
    /// Header line template containing `{token}`.
    header: String => p_header,
    /// Environment variable `broker exec` sets.
    token_env: String => p_str,
    /// Minimum remaining life of a served token.
    min_ttl: Duration => p_duration,
    /// Lifetime assumed when the response says none.
    default_ttl: Duration => p_duration,
    /// Longest lifetime cached.
    max_ttl: Duration => p_duration,
    /// Cache mode.
    cache: CacheMode => p_cache,
    /// Request timeout.
    timeout: Duration => p_duration,
    /// Connect timeout.
    connect_timeout: Duration => p_duration,
    /// Total retry budget.
    retry: Duration => p_duration,
    /// Pause after a rejection.
    cooldown: Duration => p_duration,
    /// Longest cool-down, whatever a provider's `Retry-After` asks.
    max_cooldown: Duration => p_duration,
    /// Extra PEM roots.
    ca_file: PathBuf => p_path,
    /// Permit `http://` for a non-loopback token URL.
    allow_http: bool => p_bool,
    /// Hosts `broker git-credential` answers for (default: the `api` host).
    git_hosts: Vec<String> => p_str_list,
    /// A token file the daemon keeps fresh.
    sink: Sink => p_sink,
}

/// One environment of a provider.
#[derive(Debug, Clone)]
pub struct EnvironmentDef {
    /// Other names that select it (`sandbox` for `staging`).
    pub aliases: Vec<String>,
    /// Its settings.
    pub fields: Fields,
}

/// A provider definition: a built-in `providers/*.toml` or a user's file.
#[derive(Debug, Clone)]
pub struct ProviderDef {
    /// The name (the file's stem).
    pub name: String,
    /// One line for `broker providers`.
    pub description: Option<String>,
    /// Where it was read from.
    pub source: String,
    /// Top-level settings.
    pub fields: Fields,
    /// The environment used when a profile names none.
    pub default_environment: Option<Located<String>>,
    /// Environments by name.
    pub environments: BTreeMap<String, EnvironmentDef>,
}

impl ProviderDef {
    /// The environment `name` or one of its aliases, as `(canonical name, definition)`.
    pub fn environment(&self, name: &str) -> Option<(&str, &EnvironmentDef)> {
        self.environments
            .iter()
            .find(|(n, e)| *n == name || e.aliases.iter().any(|a| a == name))
            .map(|(n, e)| (n.as_str(), e))
    }
}

/// A `[profiles.<name>]` table.
#[derive(Debug, Clone)]
pub struct ProfileDef {
    /// The profile's name.
    pub name: String,
    /// Where the table starts.
    pub origin: Origin,
    /// `provider = "..."`.
    pub provider: Option<Located<String>>,
    /// `environment = "..."`.
    pub environment: Option<Located<String>>,
    /// The profile's own settings.
    pub fields: Fields,
}

/// Values from the command line, the top layer of precedence.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--min-ttl`.
    pub min_ttl: Option<Duration>,
    /// `--scope`.
    pub scope: Option<String>,
    /// `--audience`.
    pub audience: Option<String>,
}

/// Where the config comes from.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Built-in provider definitions as `(name, TOML text)`.
    pub builtin_providers: Vec<(String, String)>,
    /// The user's provider directory (`$XDG_CONFIG_HOME/broker/providers`); skipped when absent.
    pub providers_dir: Option<PathBuf>,
    /// The config file.
    pub config_file: Option<PathBuf>,
    /// Whether a missing config file is an error (it is when the user named it).
    pub config_file_required: bool,
}

/// Everything loaded: providers, defaults and profiles.
#[derive(Debug, Clone, Default)]
pub struct Config {
    providers: BTreeMap<String, ProviderDef>,
    defaults: Fields,
    profiles: BTreeMap<String, ProfileDef>,
    files: Vec<String>,
    fingerprint: String,
}

/// A profile's settings after precedence and defaults: what a provider is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Profile name.
    pub profile: String,
    /// Provider definition name, if the profile uses one.
    pub provider: Option<String>,
    /// Canonical environment name, if any.
    pub environment: Option<String>,
    /// Wire kind.
    pub kind: Kind,
    /// Keycloak server base.
    pub auth_server: Option<Url>,
    /// Keycloak realm.
    pub realm: Option<String>,
    /// Keycloak `/auth` layout.
    pub legacy_path: bool,
    /// Explicit token endpoint.
    pub token_url: Option<Url>,
    /// Issuer for discovery.
    pub issuer: Option<Url>,
    /// API endpoint.
    pub api: Option<Url>,
    /// Web app.
    pub app: Option<Url>,
    /// Client id source.
    pub client_id: SecretSource,
    /// Client secret source.
    pub client_secret: SecretSource,
    /// Where `client_id` and `client_secret` were set (`file:line:col`), for errors of their sources.
    pub secret_positions: [String; 2],
    /// Client authentication.
    pub auth: AuthMethod,
    /// Body encoding.
    pub body: BodyFormat,
    /// `audience`.
    pub audience: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `resource`.
    pub resource: Option<String>,
    /// Extra parameters.
    pub params: BTreeMap<String, String>,
    /// Header template.
    pub header: String,
    /// `broker exec` variable.
    pub token_env: Option<String>,
    /// Default 60 s.
    pub min_ttl: Duration,
    /// Default 300 s.
    pub default_ttl: Duration,
    /// Default 24 h.
    pub max_ttl: Duration,
    /// Default disk.
    pub cache: CacheMode,
    /// Default 15 s.
    pub timeout: Duration,
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Default 30 s.
    pub retry: Duration,
    /// Default 30 s: after a rejection the provider is not asked again for this long.
    pub cooldown: Duration,
    /// Default 1 h: the longest cool-down, whatever a provider's `Retry-After` asks.
    pub max_cooldown: Duration,
    /// Extra PEM roots.
    pub ca_file: Option<PathBuf>,
    /// Permit plain HTTP to a non-loopback host.
    pub allow_http: bool,
    /// Hosts `broker git-credential` answers for; empty means the `api` host.
    pub git_hosts: Vec<String>,
    /// A token file the daemon keeps fresh.
    pub sink: Option<Sink>,
}

/// Default `min_ttl`.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(60);
/// Default `default_ttl`.
pub const DEFAULT_DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default `max_ttl`.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default retry budget.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(30);
/// Default cool-down after a rejection.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Default `max_cooldown`.
pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(3600);
/// Default header template.
pub const DEFAULT_HEADER: &str = "Authorization: Bearer {token}";

fn parse_toml<'a>(file: &'a Arc<SourceFile>) -> Result<Spanned<DeTable<'a>>> {
    DeTable::parse(&file.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        file.error(span, format!("TOML syntax error: {msg}"), None)
    })
}

fn parse_provider(name: &str, file: &Arc<SourceFile>) -> Result<(ProviderDef, bool)> {
    let doc = parse_toml(file)?;
    let cx = Ctx {
        file,
        literal_secret: Default::default(),
    };
    let mut def = ProviderDef {
        name: name.to_owned(),
        description: None,
        source: file.name.clone(),
        fields: Fields::default(),
        default_environment: None,
        environments: BTreeMap::new(),
    };
    let top_keys: Vec<&str> = Fields::NAMES
        .iter()
        .copied()
        .chain(["description", "default_environment", "environments"])
        .collect();
    for (k, v) in doc.get_ref().iter() {
        match k.get_ref().as_ref() {
            "description" => def.description = Some(p_str(&cx, "description", v)?),
            "default_environment" => {
                def.default_environment = Some(Located {
                    value: p_str(&cx, "default_environment", v)?,
                    origin: cx.origin(v.span()),
                })
            }
            "environments" => {
                for (env_name, env) in cx.table("environments", v)?.iter() {
                    let mut e = EnvironmentDef {
                        aliases: Vec::new(),
                        fields: Fields::default(),
                    };
                    for (ek, ev) in cx.table(env_name.get_ref(), env)?.iter() {
                        if ek.get_ref() == "aliases" {
                            let arr = ev.get_ref().as_array().ok_or_else(|| {
                                cx.wrong_type("aliases", ev, "an array of strings")
                            })?;
                            e.aliases = arr
                                .iter()
                                .map(|a| p_str(&cx, "aliases", a))
                                .collect::<Result<_>>()?;
                        } else if !e.fields.take(&cx, ek, ev)? {
                            let valid: Vec<&str> =
                                Fields::NAMES.iter().copied().chain(["aliases"]).collect();
                            return Err(cx.unknown_key(
                                ek,
                                &valid,
                                &format!("environment `{}`", env_name.get_ref()),
                            ));
                        }
                    }
                    def.environments.insert(env_name.get_ref().to_string(), e);
                }
            }
            _ => {
                if !def.fields.take(&cx, k, v)? {
                    return Err(cx.unknown_key(k, &top_keys, &format!("provider `{name}`")));
                }
            }
        }
    }
    if let Some(d) = &def.default_environment {
        if def.environment(&d.value).is_none() {
            let names: Vec<&str> = def.environments.keys().map(String::as_str).collect();
            return Err(d.origin.error(
                format!(
                    "default_environment `{}` is not one of this provider's environments",
                    d.value
                ),
                Some(format!("environments: {}", names.join(", "))),
            ));
        }
    }
    Ok((def, cx.literal_secret.get()))
}

fn parse_config_file(
    file: &Arc<SourceFile>,
    defaults: &mut Fields,
    profiles: &mut BTreeMap<String, ProfileDef>,
) -> Result<bool> {
    let doc = parse_toml(file)?;
    let cx = Ctx {
        file,
        literal_secret: Default::default(),
    };
    for (k, v) in doc.get_ref().iter() {
        match k.get_ref().as_ref() {
            "defaults" => {
                for (dk, dv) in cx.table("defaults", v)?.iter() {
                    if !defaults.take(&cx, dk, dv)? {
                        return Err(cx.unknown_key(dk, Fields::NAMES, "[defaults]"));
                    }
                }
            }
            "profiles" => {
                for (name, table) in cx.table("profiles", v)?.iter() {
                    let mut p = ProfileDef {
                        name: name.get_ref().to_string(),
                        origin: cx.origin(name.span()),
                        provider: None,
                        environment: None,
                        fields: Fields::default(),
                    };
                    for (pk, pv) in cx.table(name.get_ref(), table)?.iter() {
                        match pk.get_ref().as_ref() {
                            "provider" => {
                                p.provider = Some(Located {
                                    value: p_str(&cx, "provider", pv)?,
                                    origin: cx.origin(pv.span()),
                                })
                            }
                            "environment" => {
                                p.environment = Some(Located {
                                    value: p_str(&cx, "environment", pv)?,
                                    origin: cx.origin(pv.span()),
                                })
                            }
                            _ => {
                                if !p.fields.take(&cx, pk, pv)? {
                                    let valid: Vec<&str> = Fields::NAMES
                                        .iter()
                                        .copied()
                                        .chain(["provider", "environment"])
                                        .collect();
                                    return Err(cx.unknown_key(
                                        pk,
                                        &valid,
                                        &format!("profile `{}`", name.get_ref()),
                                    ));
                                }
                            }
                        }
                    }
                    profiles.insert(p.name.clone(), p);
                }
            }
            _ => return Err(cx.unknown_key(k, &["defaults", "profiles"], "the config file")),
        }
    }
    Ok(cx.literal_secret.get())
}

/// Warns when a file holding a literal secret can be read by group or others.
fn warn_if_exposed(file: &SourceFile) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(&file.name) else {
        return;
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "{} holds a literal client_secret and is readable by group or others: run `chmod 600 {}`, or use \
             an env, file or command secret source",
            file.name,
            file.name
        );
    }
}

/// Reads a config or provider file the user trusts (docs/security.md, "trust in files"): one that another user
/// (other than root) owns, or that others may write, could plant a `{ command }` that then runs as this user, so it
/// is refused, naming the command that fixes it. A group-writable file gets a warning.
fn read_file(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let me = rustix::process::geteuid().as_raw();
    let shown = path.display();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Error::config(format!(
            "{shown} belongs to uid {}, not to you (uid {me}): refusing to load it, since its owner could make \
             broker run commands as you; if you trust it, take it over: `chown {me} {shown}`",
            meta.uid()
        )));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(Error::config(format!(
            "{shown} is writable by others: refusing to load it, since anyone could make broker run commands as \
             you; fix it with `chmod o-w {shown}`"
        )));
    }
    if meta.mode() & 0o020 != 0 {
        tracing::warn!(
            "{shown} is writable by its group: its members could make broker run commands as you; `chmod g-w \
             {shown}` unless that is intended"
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::config(format!("cannot read {shown}: {e}")))?;
    Ok(text)
}

impl LoadOptions {
    /// What the CLI loads: the built-in providers, `$XDG_CONFIG_HOME/broker/providers/`, and the config file
    /// named by `BROKER_CONFIG` (required to exist when set) or else `$XDG_CONFIG_HOME/broker/config.toml`.
    pub fn user_default() -> Self {
        LoadOptions {
            builtin_providers: crate::BUILTIN_PROVIDERS
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
            providers_dir: crate::paths::config_dir().map(|d| d.join("providers")),
            config_file: crate::paths::config_file(),
            config_file_required: crate::paths::config_file_is_explicit(),
        }
    }
}

impl Config {
    /// Loads built-in providers, the user's providers and the config file (docs/reference.md §1).
    pub fn load(opts: &LoadOptions) -> Result<Config> {
        let mut files = Vec::new();
        for (name, text) in &opts.builtin_providers {
            files.push((
                name.clone(),
                Arc::new(SourceFile {
                    name: format!("<built-in>/{name}.toml"),
                    text: text.clone(),
                }),
                true,
            ));
        }
        if let Some(dir) = &opts.providers_dir {
            if dir.is_dir() {
                let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| Error::config(format!("cannot read {}: {e}", dir.display())))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                paths.sort();
                for path in paths {
                    let name = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let text = read_file(&path)?;
                    files.push((
                        name,
                        Arc::new(SourceFile {
                            name: path.display().to_string(),
                            text,
                        }),
                        true,
                    ));
                }
            }
        }
        if let Some(path) = &opts.config_file {
            if path.exists() || opts.config_file_required {
                let text = read_file(path)?;
                files.push((
                    String::new(),
                    Arc::new(SourceFile {
                        name: path.display().to_string(),
                        text,
                    }),
                    false,
                ));
            }
        }
        Self::from_sources(files)
    }

    /// A config of the built-in providers and `text` as the config file (named `<inline>` in errors): for
    /// embedders that build their config in code, and for tests.
    pub fn parse(text: &str) -> Result<Config> {
        let mut files: Vec<(String, Arc<SourceFile>, bool)> = crate::BUILTIN_PROVIDERS
            .iter()
            .map(|(n, t)| {
                (
                    (*n).to_owned(),
                    Arc::new(SourceFile {
                        name: format!("<built-in>/{n}.toml"),
                        text: (*t).to_owned(),
                    }),
                    true,
                )
            })
            .collect();
        files.push((
            String::new(),
            Arc::new(SourceFile {
                name: "<inline>".into(),
                text: text.to_owned(),
            }),
            false,
        ));
        Self::from_sources(files)
    }

    /// Parses provider files (`true`) and config files (`false`) in precedence order.
    fn from_sources(files: Vec<(String, Arc<SourceFile>, bool)>) -> Result<Config> {
        let mut config = Config::default();
        let mut hasher = Sha256::new();
        for (name, file, is_provider) in &files {
            hasher.update(file.name.as_bytes());
            hasher.update([0]);
            hasher.update(file.text.as_bytes());
            hasher.update([0]);
            let literal = if *is_provider {
                // A user file with a built-in's name replaces it whole.
                let (def, literal) = parse_provider(name, file)?;
                config.providers.insert(name.clone(), def);
                literal
            } else {
                parse_config_file(file, &mut config.defaults, &mut config.profiles)?
            };
            if literal {
                warn_if_exposed(file);
            }
            config.files.push(file.name.clone());
        }
        config.fingerprint = hex::encode(&hasher.finalize()[..16]);
        Ok(config)
    }

    /// Names of all profiles.
    pub fn profile_names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// A profile definition.
    pub fn profile(&self, name: &str) -> Option<&ProfileDef> {
        self.profiles.get(name)
    }

    /// All provider definitions.
    pub fn providers(&self) -> impl Iterator<Item = &ProviderDef> {
        self.providers.values()
    }

    /// The files that were read, in order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// A hash of the loaded files' names and contents.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Adds a profile (for embedders that build config in code).
    pub fn insert_profile(&mut self, def: ProfileDef) {
        self.profiles.insert(def.name.clone(), def);
    }

    fn unknown_profile(&self, name: &str) -> Error {
        let names: Vec<&str> = self.profile_names().collect();
        let mut msg = format!("unknown profile `{name}`");
        if let Some(c) = closest(name, names.iter().copied()) {
            msg.push_str(&format!("; did you mean `{c}`?"));
        }
        if names.is_empty() {
            msg.push_str(&format!(
                "; no profiles are configured (files read: {})",
                if self.files.is_empty() {
                    "none".to_owned()
                } else {
                    self.files.join(", ")
                }
            ));
        } else {
            msg.push_str(&format!("; known profiles: {}", names.join(", ")));
        }
        Error::config(msg)
    }

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

/// Whether `url` names this machine (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn val<T: Clone>(x: &Option<Box<Located<T>>>) -> Option<T> {
    x.as_ref().map(|l| l.value.clone())
}

fn settle(
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
    match kind {
        Kind::Keycloak if f.token_url.is_none() => {
            if f.auth_server.is_none() {
                return Err(missing(
                    "auth_server",
                    "keycloak needs `auth_server` and `realm` (or `token_url`)",
                ));
            }
            if f.realm.is_none() {
                return Err(missing(
                    "realm",
                    "keycloak needs `auth_server` and `realm` (or `token_url`)",
                ));
            }
        }
        Kind::Auth0 if f.token_url.is_none() => {
            return Err(missing("token_url", "auth0 needs `token_url`"))
        }
        Kind::OAuth2 if f.token_url.is_none() && f.issuer.is_none() => {
            return Err(missing("token_url", "oauth2 needs `token_url` or `issuer`"))
        }
        _ => {}
    }
    let allow_http = val(&f.allow_http).unwrap_or(false);
    for url in [&f.token_url, &f.issuer, &f.auth_server]
        .into_iter()
        .flatten()
    {
        if url.value.scheme() == "http" && !allow_http && !is_loopback(&url.value) {
            return Err(url.origin.error(
                "plain http:// to a non-loopback host would send the client secret unencrypted",
                Some("use https://, or set `allow_http = true` if you really mean it".into()),
            ));
        }
    }
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
            ("client_secret", self.client_secret.describe()),
            ("auth", self.auth.as_str().into()),
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
            (
                "git_hosts",
                if self.git_hosts.is_empty() {
                    "-".into()
                } else {
                    self.git_hosts.join(", ")
                },
            ),
        ]
    }
}

/// A `header` template (validated to hold `{token}`) with the token filled in: the one place the rule lives.
pub fn fill_header(template: &str, token: &str) -> String {
    template.replace("{token}", token)
}

/// `{server}[/auth]/realms/{realm}/protocol/openid-connect/token`.
pub fn keycloak_token_url(server: &Url, realm: &str, legacy: bool) -> String {
    let base = server.as_str().trim_end_matches('/');
    let realm: String = url::form_urlencoded::byte_serialize(realm.as_bytes()).collect();
    format!(
        "{base}{}/realms/{realm}/protocol/openid-connect/token",
        if legacy { "/auth" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(provider: &str, config: &str) -> Result<Config> {
        let dir = tempfile::tempdir().map_err(|e| Error::internal(e.to_string()))?;
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).map_err(|e| Error::internal(e.to_string()))?;
        Config::load(&LoadOptions {
            builtin_providers: vec![("p".into(), provider.into())],
            providers_dir: None,
            config_file: Some(path),
            config_file_required: true,
        })
    }

    const PROVIDER: &str = r#"
kind = "keycloak"
realm = "api-keys"
default_environment = "production"
header = "Authorization: {token}"
[environments.production]
auth_server = "https://auth.example.com"
[environments.staging]
aliases = ["sandbox"]
auth_server = "https://staging-auth.example.com"
min_ttl = "2m"
"#;

    fn err(provider: &str, config: &str) -> String {
        load(provider, config)
            .and_then(|c| c.resolve("x", &Overrides::default()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn precedence_is_provider_env_defaults_profile_cli() {
        let c = load(
            PROVIDER,
            r#"
[defaults]
min_ttl = "3m"
max_ttl = "1h"
[profiles.x]
provider = "p"
environment = "sandbox"
client_id = "id"
client_secret = "s"
max_ttl = "2h"
"#,
        );
        let s = c.and_then(|c| {
            c.resolve(
                "x",
                &Overrides {
                    scope: Some("a b".into()),
                    ..Default::default()
                },
            )
        });
        let s = s.map_err(|e| e.to_string());
        let s = match s {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.environment.as_deref(), Some("staging"));
        assert_eq!(
            s.auth_server.as_ref().map(Url::as_str),
            Some("https://staging-auth.example.com/")
        );
        assert_eq!(s.min_ttl, Duration::from_secs(180));
        assert_eq!(s.max_ttl, Duration::from_secs(7200));
        assert_eq!(s.scope.as_deref(), Some("a b"));
        assert_eq!(s.header, "Authorization: {token}");
        assert_eq!(
            s.configured_endpoint(),
            "https://staging-auth.example.com/realms/api-keys/protocol/openid-connect/token"
        );
    }

    #[test]
    fn unknown_key_names_file_line_column_and_closest() {
        let e = err(
            PROVIDER,
            "[profiles.x]\nprovider = \"p\"\nclinet_id = \"a\"\n",
        );
        assert!(
            e.contains("config.toml:3:1: unknown key `clinet_id`"),
            "{e}"
        );
        assert!(e.contains("did you mean `client_id`?"), "{e}");
    }

    #[test]
    fn unknown_environment_suggests() {
        let e = err(PROVIDER, "[profiles.x]\nprovider = \"p\"\nenvironment = \"stagin\"\nclient_id = \"a\"\nclient_secret = \"b\"\n");
        assert!(e.contains("config.toml:3:15:"), "{e}");
        assert!(e.contains("did you mean `staging`?"), "{e}");
    }

    #[test]
    fn wrong_type_and_syntax_errors_have_positions() {
        let e = err(PROVIDER, "[profiles.x]\nmin_ttl = 5\n");
        assert!(
            e.contains("config.toml:2:11: `min_ttl` must be a duration"),
            "{e}"
        );
        let e = err(PROVIDER, "[profiles.x\n");
        assert!(
            e.contains("config.toml:1:") && e.contains("TOML syntax error"),
            "{e}"
        );
    }

    #[test]
    fn plain_http_to_remote_hosts_is_refused() {
        let e = err("", "[profiles.x]\nkind = \"oauth2\"\ntoken_url = \"http://example.com/token\"\nclient_id = \"a\"\nclient_secret = \"b\"\n");
        assert!(
            e.contains("config.toml:3:13:") && e.contains("allow_http"),
            "{e}"
        );
        let ok = load("", "[profiles.x]\nkind = \"oauth2\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"a\"\nclient_secret = \"b\"\n")
            .and_then(|c| c.resolve("x", &Overrides::default()));
        assert!(ok.is_ok());
    }

    /// docs/providers.md's field table names exactly the fields the code accepts (docs/reference.md §1).
    #[test]
    fn the_field_reference_lists_every_field_and_no_other() {
        let doc = include_str!("../../../docs/providers.md");
        let table = doc
            .split("## Fields")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap_or("");
        let mut documented: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .flat_map(|cell| cell.split(", "))
            .filter_map(|name| name.strip_prefix('`')?.strip_suffix('`'))
            .collect();
        documented.sort_unstable();
        let mut accepted: Vec<&str> = Fields::NAMES
            .iter()
            .copied()
            .chain(["provider", "environment"]) // profile tables
            .chain(["description", "default_environment", "environments"]) // provider files
            .collect();
        accepted.sort_unstable();
        assert_eq!(
            documented, accepted,
            "docs/providers.md's field table is stale"
        );
    }

    #[test]
    fn excerpts_never_show_a_literal_secret() {
        let check = |line: &str, col: usize, width: usize, want: (&str, usize, usize)| {
            let (l, c, w) = redact_line(line, col, width);
            assert_eq!((l.as_str(), c, w), want, "{line}");
        };
        check(
            r#"client_secret = "hunter2", bogus = 1"#,
            27,
            5,
            (r#"client_secret = "[redacted]", bogus = 1"#, 30, 5),
        );
        check(
            r#"client_id = 'abc"#,
            12,
            4,
            (r#"client_id = '[redacted]"#, 12, 11),
        );
        check(
            r#""private_key"="a\"b" x"#,
            0,
            1,
            (r#""private_key"="[redacted]" x"#, 0, 1),
        );
        check(
            "client_secret = { env = \"X\" }",
            0,
            1,
            ("client_secret = { env = \"X\" }", 0, 1),
        );
        let err =
            Config::parse("[profiles.p]\nkind = \"oauth2\"\nclient_secret = \"hunter2\nx = 1\n")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let e = load(PROVIDER, "[profiles.ion-prod]\nprovider = \"p\"\n")
            .and_then(|c| c.resolve("ion-prd", &Overrides::default()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("did you mean `ion-prod`?") && e.contains("known profiles: ion-prod"),
            "{e}"
        );
    }
}
