//! The vocabulary: the wire kinds and methods, and the one declaration of every field (`fields!`), which
//! generates the layer struct, its parser dispatch and overlay, the resolved `Settings`, their defaults and the
//! rows `broker check` shows. *Invariant: adding a field is one line here (and its row in docs/providers.md, which
//! `tests.rs` checks).*

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
    /// A JWT assertion signed (HS256) with the client secret (RFC 7523 §2.2).
    ClientSecretJwt,
    /// A JWT assertion signed with the client's private key (RFC 7523).
    PrivateKeyJwt,
    /// A client certificate from a CA the server trusts, over mutual TLS (RFC 8705 §2.1).
    TlsClientAuth,
    /// A self-signed client certificate registered with the server, over mutual TLS (RFC 8705 §2.2).
    SelfSignedTlsClientAuth,
    /// No client authentication: only `client_id` is sent (public clients).
    None,
}

impl AuthMethod {
    /// Every method, with its TOML name.
    pub(crate) const ALL: [(&'static str, AuthMethod); 7] = [
        ("client_secret_post", AuthMethod::ClientSecretPost),
        ("client_secret_basic", AuthMethod::ClientSecretBasic),
        ("client_secret_jwt", AuthMethod::ClientSecretJwt),
        ("private_key_jwt", AuthMethod::PrivateKeyJwt),
        ("tls_client_auth", AuthMethod::TlsClientAuth),
        (
            "self_signed_tls_client_auth",
            AuthMethod::SelfSignedTlsClientAuth,
        ),
        ("none", AuthMethod::None),
    ];

    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("", |(n, _)| n)
    }

    /// Whether the method needs `client_secret`.
    pub fn uses_secret(self) -> bool {
        matches!(
            self,
            AuthMethod::ClientSecretPost
                | AuthMethod::ClientSecretBasic
                | AuthMethod::ClientSecretJwt
        )
    }

    /// Whether the method authenticates with a client certificate (`client_cert`, `client_key`).
    pub fn uses_tls(self) -> bool {
        matches!(
            self,
            AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth
        )
    }
}

/// The grant a profile asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `client_credentials` (default).
    ClientCredentials,
    /// RFC 8693 token exchange: `subject_token` for a new token.
    TokenExchange,
}

impl Grant {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::TokenExchange => "token_exchange",
        }
    }

    /// The `grant_type` sent.
    pub fn grant_type(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }
}

/// The JWS algorithm of a client assertion (`signing_alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum SigningAlg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl SigningAlg {
    /// Every algorithm, with its JWS name.
    pub(crate) const ALL: [(&'static str, SigningAlg); 12] = [
        ("HS256", SigningAlg::HS256),
        ("HS384", SigningAlg::HS384),
        ("HS512", SigningAlg::HS512),
        ("RS256", SigningAlg::RS256),
        ("RS384", SigningAlg::RS384),
        ("RS512", SigningAlg::RS512),
        ("PS256", SigningAlg::PS256),
        ("PS384", SigningAlg::PS384),
        ("PS512", SigningAlg::PS512),
        ("ES256", SigningAlg::ES256),
        ("ES384", SigningAlg::ES384),
        ("EdDSA", SigningAlg::EdDSA),
    ];

    /// The JWS name (`RS256`).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("", |(n, _)| n)
    }

    /// Whether it is an HMAC algorithm (for `client_secret_jwt`).
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            SigningAlg::HS256 | SigningAlg::HS384 | SigningAlg::HS512
        )
    }
}

/// The `aud` of a client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The token endpoint URL the assertion is sent to (default).
    TokenEndpoint,
    /// The issuer identifier.
    Issuer,
}

impl AssertionAudience {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAudience::TokenEndpoint => "token_endpoint",
            AssertionAudience::Issuer => "issuer",
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

/// The type a field has in [`Settings`]: `Option<T>` unless it has a default or is required.
macro_rules! settled_ty {
    ([] $ty:ty) => { Option<$ty> };
    ([= $default:expr] $ty:ty) => { $ty };
    ([required] $ty:ty) => { $ty };
}

/// A field's value in [`Settings`], taken from the layered `Fields`.
macro_rules! settled_value {
    ([] $f:ident $name:ident $missing:ident) => {
        super::resolve::take(&mut $f.$name)
    };
    ([= $default:expr] $f:ident $name:ident $missing:ident) => {
        super::resolve::take(&mut $f.$name).unwrap_or_else(|| $default)
    };
    ([required] $f:ident $name:ident $missing:ident) => {
        super::resolve::take(&mut $f.$name).ok_or_else(|| $missing(stringify!($name)))?
    };
}

/// The one declaration of every field (docs/providers.md has a row for each, which `tests.rs` checks): its type,
/// its parser, and in brackets how it settles: `[]` optional, `[= default]`, or `[required]`. It generates the
/// layer type [`Fields`] (parsing and overlay), [`Settings`] (the resolved values) and its `broker check` rows.
macro_rules! fields {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $parser:ident [$($settle:tt)*] ),* $(,)?) => {
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

        /// A profile's settings after precedence and defaults: what a provider is built from.
        #[derive(Debug, Clone)]
        pub struct Settings {
            /// Profile name.
            pub(crate) profile: String,
            /// Provider definition name, if the profile uses one.
            pub(crate) provider: Option<String>,
            /// Canonical environment name, if any.
            pub(crate) environment: Option<String>,
            /// Where each secret-source field was set, for errors of their sources.
            pub(crate) positions: Vec<(&'static str, Origin)>,
            $( $(#[$doc])* pub(crate) $name: settled_ty!([$($settle)*] $ty), )*
        }

        impl Settings {
            /// Settles every field of `f` (its default, or an error from `missing` for a required one).
            pub(super) fn from_fields(
                profile: String,
                provider: Option<String>,
                environment: Option<String>,
                positions: Vec<(&'static str, Origin)>,
                mut f: Fields,
                missing: &dyn Fn(&'static str) -> Error,
            ) -> Result<Settings> {
                Ok(Settings {
                    profile,
                    provider,
                    environment,
                    positions,
                    $( $name: settled_value!([$($settle)*] f $name missing), )*
                })
            }

            /// Every field as a `(name, value)` row, in declaration order: secrets show their source only.
            pub(super) fn field_rows(&self) -> Vec<(&'static str, String)> {
                vec![$( (stringify!($name), Shown::shown(&self.$name)), )*]
            }
        }
    };
}

fields! {
    /// Wire kind.
    kind: Kind => p_kind [required],
    /// Keycloak server base URL.
    auth_server: Url => p_url [],
    /// Keycloak realm.
    realm: String => p_str [],
    /// Keycloak under `/auth`.
    legacy_path: bool => p_bool [= false],
    /// Explicit token endpoint.
    token_url: Url => p_url [],
    /// Issuer for discovery.
    issuer: Url => p_url [],
    /// The API endpoint.
    api: Url => p_url [],
    /// The web app.
    app: Url => p_url [],
    /// Client id.
    client_id: SecretSource => p_secret [required],
    /// Client secret (kept only for the methods that use one).
    client_secret: SecretSource => p_secret [],
    /// Client authentication method.
    auth: AuthMethod => p_auth [= AuthMethod::ClientSecretPost],
    /// The grant asked for.
    grant: Grant => p_grant [= Grant::ClientCredentials],
    /// PEM private key for `private_key_jwt` (a `{ file }` is read whole).
    private_key: SecretSource => p_secret [],
    /// The `kid` of the assertion's header.
    key_id: String => p_str [],
    /// The assertion's JWS algorithm.
    signing_alg: SigningAlg => p_signing_alg [],
    /// The assertion's `aud`.
    assertion_audience: AssertionAudience => p_assertion_audience [= AssertionAudience::TokenEndpoint],
    /// PEM client certificate for mutual TLS.
    client_cert: SecretSource => p_secret [],
    /// PEM private key of `client_cert`.
    client_key: SecretSource => p_secret [],
    /// The token exchanged (`grant = "token_exchange"`): a secret source or `{ profile = "other" }`.
    subject_token: TokenSource => p_token_source [],
    /// `subject_token_type`.
    subject_token_type: String => p_str [= super::ACCESS_TOKEN_TYPE.to_owned()],
    /// An optional actor token: a secret source or `{ profile = "other" }`.
    actor_token: TokenSource => p_token_source [],
    /// `actor_token_type`.
    actor_token_type: String => p_str [],
    /// `requested_token_type`.
    requested_token_type: String => p_str [],
    /// Request body encoding (default: JSON for `auth0`, else a form; [`Settings::body`]).
    body: BodyFormat => p_body [],
    /// `audience` parameter.
    audience: String => p_str [],
    /// `scope` parameter.
    scope: String => p_str [],
    /// `resource` parameter.
    resource: String => p_str [],
    /// Extra string parameters.
    params: BTreeMap<String, String> => p_params [= BTreeMap::new()],
    /// Header line template containing `{token}`.
    header: String => p_header [= DEFAULT_HEADER.to_owned()],
    /// Environment variable `broker exec` sets.
    token_env: String => p_str [],
    /// Minimum remaining life of a served token.
    min_ttl: Duration => p_duration [= DEFAULT_MIN_TTL],
    /// Lifetime assumed when the response says none.
    default_ttl: Duration => p_duration [= DEFAULT_DEFAULT_TTL],
    /// Longest lifetime cached.
    max_ttl: Duration => p_duration [= DEFAULT_MAX_TTL],
    /// Cache mode.
    cache: CacheMode => p_cache [= CacheMode::Disk],
    /// Request timeout.
    timeout: Duration => p_duration [= DEFAULT_TIMEOUT],
    /// Connect timeout.
    connect_timeout: Duration => p_duration [= DEFAULT_CONNECT_TIMEOUT],
    /// Total retry budget.
    retry: Duration => p_duration [= DEFAULT_RETRY],
    /// Pause after a rejection.
    cooldown: Duration => p_duration [= DEFAULT_COOLDOWN],
    /// Longest cool-down, whatever a provider's `Retry-After` asks.
    max_cooldown: Duration => p_duration [= DEFAULT_MAX_COOLDOWN],
    /// Extra PEM roots.
    ca_file: PathBuf => p_path [],
    /// Permit `http://` for a non-loopback token URL.
    allow_http: bool => p_bool [= false],
    /// Refuse what is otherwise a warning about the credentials (a short `client_secret_jwt` key).
    strict: bool => p_bool [= false],
    /// Hosts `broker git-credential` answers for (default: the `api` host).
    git_hosts: Vec<String> => p_str_list [= Vec::new()],
    /// Registries `docker-credential-broker` answers for (host, or host:port).
    registries: Vec<String> => p_str_list [= Vec::new()],
    /// The user name given with the token where a protocol wants one (docker credential helper, `netrc` and
    /// `docker` sinks).
    username: String => p_str [= DEFAULT_USERNAME.to_owned()],
    /// A token file the daemon keeps fresh.
    sink: Sink => p_sink [],
    /// Who may ask the daemon or the proxy for this profile's token.
    allow: crate::caller::Allow => p_allow [],
    /// Sender-constrained tokens (RFC 9449): `true`, `"optional"`, or `{ key, alg, optional }`.
    dpop: Dpop => p_dpop [= Dpop::default()],
}

/// The default `username`: what Google's registries document for an OAuth access token; most registries and git
/// hosts that take a token as a password accept any name.
pub const DEFAULT_USERNAME: &str = "oauth2accesstoken";

/// How a settled value is shown in `broker check`: sources for secrets, never values; `-` when unset.
pub(super) trait Shown {
    fn shown(&self) -> String;
}

impl<T: Shown> Shown for Option<T> {
    fn shown(&self) -> String {
        self.as_ref().map_or_else(|| "-".into(), Shown::shown)
    }
}

macro_rules! shown_by {
    ($($ty:ty => $f:expr),* $(,)?) => {
        $( impl Shown for $ty {
            fn shown(&self) -> String {
                #[allow(clippy::redundant_closure_call)]
                ($f)(self)
            }
        } )*
    };
}

shown_by! {
    Kind => |v: &Kind| v.as_str().to_owned(),
    AuthMethod => |v: &AuthMethod| v.as_str().to_owned(),
    Grant => |v: &Grant| v.as_str().to_owned(),
    SigningAlg => |v: &SigningAlg| v.as_str().to_owned(),
    AssertionAudience => |v: &AssertionAudience| v.as_str().to_owned(),
    BodyFormat => |v: &BodyFormat| v.as_str().to_owned(),
    CacheMode => |v: &CacheMode| v.as_str().to_owned(),
    Url => |v: &Url| v.to_string(),
    String => |v: &String| v.clone(),
    bool => |v: &bool| v.to_string(),
    Duration => |v: &Duration| crate::duration::format(*v),
    PathBuf => |v: &PathBuf| v.display().to_string(),
    SecretSource => SecretSource::describe,
    TokenSource => TokenSource::describe,
    BTreeMap<String, String> => |v: &BTreeMap<String, String>| if v.is_empty() { "-".to_owned() } else { format!("{v:?}") },
    Vec<String> => |v: &Vec<String>| if v.is_empty() { "-".to_owned() } else { v.join(", ") },
    crate::caller::Allow => crate::caller::Allow::describe,
    Dpop => |v: &Dpop| match (v.mode, &v.key) {
        (DpopMode::Off, _) => "off".to_owned(),
        (m, k) => format!(
            "{} (key: {})",
            if m == DpopMode::Required { "required" } else { "optional" },
            match k {
                DpopKeySource::Generated => "generated".to_owned(),
                DpopKeySource::Source(s) => s.describe(),
            }
        ),
    },
    Sink => |v: &Sink| format!("{} ({}, mode {:o})", v.path.display(), v.format, v.mode),
}
