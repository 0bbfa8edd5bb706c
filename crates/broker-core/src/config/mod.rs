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

use crate::error::{Diagnostic, Error, Result};
use crate::secret::{SecretSource, TokenSource};

mod dpop;
mod load;
mod resolve;
mod settings;
mod shared;
mod sink;
mod source;
mod tables;
#[cfg(test)]
mod tests;
mod values;
mod vocab;

pub use dpop::*;
#[allow(unused_imports)]
use load::*;
pub(crate) use resolve::is_loopback;
pub use resolve::{secure_enough, ACCESS_TOKEN_TYPE};
pub use settings::*;
pub use shared::*;
pub use sink::*;
pub(crate) use source::Origin;
use source::*;
use tables::*;
pub(crate) use values::*;
pub use vocab::*;

/// One environment of a provider.
#[derive(Debug, Clone)]
pub(crate) struct EnvironmentDef {
    /// Other names that select it (`sandbox` for `staging`).
    pub aliases: Vec<String>,
    /// Its settings.
    pub fields: Fields,
}

/// A provider definition: a built-in `providers/*.toml` or a user's file.
#[derive(Debug, Clone)]
pub struct ProviderDef {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) source: String,
    pub(crate) fields: Fields,
    pub(crate) default_environment: Option<Located<String>>,
    pub(crate) environments: BTreeMap<String, EnvironmentDef>,
}

impl ProviderDef {
    /// The name (the file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// One line for `broker providers`.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// Where it was read from (`<built-in>/name.toml` for a built-in).
    pub fn source(&self) -> &str {
        &self.source
    }
    /// The wire kind its top level sets, if it sets one.
    pub fn kind(&self) -> Option<Kind> {
        self.fields.kind.as_ref().map(|k| k.value)
    }
    /// The environment used when a profile names none.
    pub fn default_environment(&self) -> Option<&str> {
        self.default_environment.as_ref().map(|d| d.value.as_str())
    }
    /// The environments' names, each with its aliases.
    pub fn environments(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.environments
            .iter()
            .map(|(n, e)| (n.as_str(), e.aliases.as_slice()))
    }
}

impl ProviderDef {
    /// The environment `name` or one of its aliases, as `(canonical name, definition)`.
    pub(crate) fn environment(&self, name: &str) -> Option<(&str, &EnvironmentDef)> {
        self.environments
            .iter()
            .find(|(n, e)| *n == name || e.aliases.iter().any(|a| a == name))
            .map(|(n, e)| (n.as_str(), e))
    }
}

/// A `[profiles.<name>]` table.
#[derive(Debug, Clone)]
pub(crate) struct ProfileDef {
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
    tables: Tables,
    files: Vec<String>,
    fingerprint: String,
}

/// Where `field` was set in `positions` (`file:line:col`), if in a file.
pub(crate) fn position_of(positions: &[(&'static str, Origin)], field: &str) -> Option<String> {
    positions
        .iter()
        .find(|(f, o)| *f == field && o.file.is_some())
        .map(|(_, o)| o.position())
}

impl Settings {
    /// Profile name.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// Provider definition name, if the profile uses one.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// Canonical environment name, if any.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    /// Wire kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// API endpoint.
    pub fn api(&self) -> Option<&Url> {
        self.api.as_ref()
    }

    /// Web app.
    pub fn app(&self) -> Option<&Url> {
        self.app.as_ref()
    }

    /// Client id source.
    pub fn client_id(&self) -> &SecretSource {
        &self.client_id
    }

    /// Client secret source, if the profile has one.
    pub fn client_secret(&self) -> Option<&SecretSource> {
        self.client_secret.as_ref()
    }

    /// The assertion's algorithm, when set (else it comes from the key, or HS256).
    pub fn signing_alg(&self) -> Option<SigningAlg> {
        self.signing_alg
    }

    /// `strict = true`: what is otherwise a warning about the credentials is refused.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The grant asked for.
    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// Every secret source of the profile by field name (`client_id`, `client_secret`, `private_key`,
    /// `client_cert`, `client_key`, and the token-exchange sources that are not profiles), with the shape of its
    /// value.
    pub fn secret_sources(&self) -> Vec<(&'static str, &SecretSource, crate::secret::Shape)> {
        use crate::secret::Shape::{Line, Public, Whole};
        let mut out = vec![("client_id", &self.client_id, Line)];
        for (field, source, shape) in [
            ("client_secret", &self.client_secret, Line),
            ("private_key", &self.private_key, Whole),
            ("client_cert", &self.client_cert, Public),
            ("client_key", &self.client_key, Whole),
        ] {
            if let Some(s) = source {
                out.push((field, s, shape));
            }
        }
        for (field, source) in [
            ("subject_token", &self.subject_token),
            ("actor_token", &self.actor_token),
        ] {
            if let Some(TokenSource::Secret(s)) = source {
                out.push((field, s, Line));
            }
        }
        if let (true, DpopKeySource::Source(s)) = (self.dpop.enabled(), &self.dpop.key) {
            out.push(("dpop", s, Whole));
        }
        out
    }

    /// The profiles whose tokens this one exchanges (`{ profile = ... }` subject and actor tokens).
    pub fn profile_tokens(&self) -> impl Iterator<Item = &str> {
        [&self.subject_token, &self.actor_token]
            .into_iter()
            .filter_map(|t| match t {
                Some(TokenSource::Profile(p)) => Some(p.as_str()),
                _ => None,
            })
    }

    /// `allow`: who may ask the daemon or the proxy for this profile's token (docs/reference.md §11).
    pub fn allow(&self) -> Option<&crate::caller::Allow> {
        self.allow.as_ref()
    }

    /// `dpop`: whether tokens are bound to a key, and which (docs/reference.md §10).
    pub fn dpop(&self) -> &Dpop {
        &self.dpop
    }

    /// Where `field` was set (`file:line:col`), if it was set in a file.
    pub fn position(&self, field: &str) -> Option<String> {
        position_of(&self.positions, field)
    }

    /// Header template.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// `broker exec` variable.
    pub fn token_env(&self) -> Option<&str> {
        self.token_env.as_deref()
    }

    /// Default 60 s.
    pub fn min_ttl(&self) -> Duration {
        self.min_ttl
    }

    /// Default disk.
    pub fn cache(&self) -> CacheMode {
        self.cache
    }

    /// Hosts `broker git-credential` answers for; empty means the `api` host.
    pub fn git_hosts(&self) -> &[String] {
        &self.git_hosts
    }

    /// Registries `docker-credential-broker` answers for (host, or host:port).
    pub fn registries(&self) -> &[String] {
        &self.registries
    }

    /// The user name given with the token where a protocol wants one; default `oauth2accesstoken`.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// A token file the daemon keeps fresh.
    pub fn sink(&self) -> Option<&Sink> {
        self.sink.as_ref()
    }

    /// Client authentication.
    pub fn auth(&self) -> AuthMethod {
        self.auth
    }

    /// Body encoding: `body`, else JSON for `auth0` (as Auth0 documents) and a form for the others.
    pub fn body(&self) -> BodyFormat {
        self.body.unwrap_or(if self.kind == Kind::Auth0 {
            BodyFormat::Json
        } else {
            BodyFormat::Form
        })
    }

    /// Default 30 s.
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// Default 15 s.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Default 30 s: after a rejection the provider is not asked again for this long.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Default 1 h: the longest cool-down, whatever a provider's `Retry-After` asks.
    pub fn max_cooldown(&self) -> Duration {
        self.max_cooldown
    }

    /// Default 300 s.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// Default 24 h.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Default 5 s.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// `allow_http`: plain http to another host is permitted (default false).
    pub fn allow_http(&self) -> bool {
        self.allow_http
    }

    /// Extra PEM roots for the token endpoint and the api.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// These settings with `cache` set to `mode` (`broker token --no-cache` uses `CacheMode::None`).
    pub fn with_cache(mut self, mode: CacheMode) -> Self {
        self.cache = mode;
        self
    }
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
/// Default `[shared_cache] timeout`: how long Redis has to answer before a host works without it.
pub const DEFAULT_SHARED_CACHE_TIMEOUT: Duration = Duration::from_millis(50);
/// Default header template.
pub const DEFAULT_HEADER: &str = "Authorization: Bearer {token}";
