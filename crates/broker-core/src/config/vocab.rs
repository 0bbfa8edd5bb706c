//! The vocabulary: the wire kinds and methods, and the one declaration of every field (`fields!`), which
//! generates the parser dispatch and the overlay of layers.

use super::*;

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

macro_rules! fields {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $parser:ident ),* $(,)?) => {
        /// The settings vocabulary shared by provider files, environments, `[defaults]` and profiles.
        /// Every field is optional at each layer; [`Fields::overlay`] applies a higher layer. Each set field is
        /// boxed: a table sets a handful of some thirty fields, and a 10,000-profile config then weighs a few
        /// hundred bytes a profile instead of kilobytes.
        #[derive(Debug, Clone, Default)]
        pub(crate) struct Fields {
            $( $(#[$doc])* pub $name: Option<Box<Located<$ty>>>, )*
        }

        impl Fields {
            /// Names of every field, for suggestions.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Takes `key` if it is a field; `Ok(false)` when it is not one.
            pub(super) fn take(&mut self, cx: &Ctx, key: &Spanned<std::borrow::Cow<'_, str>>, v: &Val) -> Result<bool> {
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
