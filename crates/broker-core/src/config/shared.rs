//! The `[shared_cache]` table (docs/reference.md §9), and how its URL is shown: never with its password; the
//! `[proxy]` table, which starts `broker proxy`'s listeners inside `broker daemon`; the `[audit]` table; and
//! `cache_encryption`.

use super::*;

/// The `[shared_cache]` table: a Redis every host of a fleet shares (docs/reference.md §9).
#[derive(Debug, Clone)]
pub struct SharedCacheDef {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://` URL.
    pub url: String,
    /// The fleet key: 32 random bytes, base64, from a secret source.
    pub key: SecretSource,
    /// Key prefix in Redis; default `broker`.
    pub prefix: String,
    /// How long Redis has to answer a command before the broker works without it; default 50 ms.
    pub timeout: Duration,
    /// Where the table is (`file:line:col`), for errors of the key source.
    pub position: String,
}

impl SharedCacheDef {
    /// The URL with any password (userinfo, or a `pass`/`password` query parameter) replaced by `***`, for
    /// display: `broker check`, logs, errors.
    pub fn shown_url(&self) -> String {
        shown_redis_url(&self.url)
    }

    /// A warning when the URL sends a password in clear text (`redis://`, not `rediss://`) to another machine.
    pub fn cleartext_password(&self) -> Option<String> {
        let u = url::Url::parse(&self.url).ok()?;
        let has_password = u.password().is_some_and(|p| !p.is_empty())
            || u.query_pairs().any(|(k, _)| k == "pass" || k == "password");
        (u.scheme() == "redis" && has_password && !is_loopback(&u)).then(|| {
            format!(
                "[shared_cache] url {} sends its password to {} without TLS: anyone on the network path can read it; \
                 use rediss://",
                self.shown_url(),
                u.host_str().unwrap_or("?")
            )
        })
    }
}

/// The `[proxy]` table: `broker daemon` also serves the proxy (docs/integrations.md, "The proxy"), from its own
/// cache and refresher.
#[derive(Debug, Clone)]
pub struct ProxyDef {
    /// A loopback TCP address to listen on.
    pub listen: Option<std::net::SocketAddr>,
    /// A Unix socket to listen on (default, when `listen` is not given: `proxy.sock` in the runtime directory).
    pub socket: Option<PathBuf>,
    /// Request bodies up to this many bytes are kept for a second attempt after a 401; default 1 MiB.
    pub retry_body_limit: usize,
    /// How long the upstream may take to connect and stay silent; default 60 s.
    pub upstream_timeout: Duration,
}

/// The config file's tables and keys beside `[defaults]` and `[profiles]`.
#[derive(Debug, Clone, Default)]
pub(super) struct Tables {
    pub(super) shared_cache: Option<SharedCacheDef>,
    pub(super) proxy: Option<ProxyDef>,
    pub(super) audit: Option<AuditDef>,
    pub(super) cache_encryption: Option<CacheEncryption>,
}

/// The `[audit]` table (docs/reference.md §11): what the daemon and the proxy record of each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDef {
    /// On (default), off, or required (a request whose line cannot be written is refused).
    pub mode: AuditMode,
    /// Where lines go: a file in the state directory (default), or a syslog socket.
    pub sink: AuditSink,
    /// A file is rotated when it would grow past this many bytes; default 10 MiB.
    pub max_size: u64,
    /// Rotated files kept besides the current one; default 5.
    pub keep: usize,
}

impl Default for AuditDef {
    fn default() -> Self {
        AuditDef {
            mode: AuditMode::On,
            sink: AuditSink::File,
            max_size: 10 << 20,
            keep: 5,
        }
    }
}

/// Whether requests are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// Not recorded.
    Off,
    /// Recorded; when the log cannot be written, the daemon says so once and goes on serving.
    On,
    /// Recorded; when the log cannot take a request's line, the request is refused.
    Required,
}

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// `audit.log` in the state directory, 0600.
    File,
    /// A syslog datagram socket (journald reads `/dev/log`).
    Syslog(PathBuf),
}

/// `cache_encryption` (docs/reference.md §11): whether disk cache entries are sealed under a key in the keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEncryption {
    /// Sealed under a key kept in the kernel or OS keyring (default).
    Keyring,
    /// Plain JSON, for hosts with no keyring.
    Off,
}

/// A Redis URL with its password replaced by `***`; a URL that does not parse is shown as `(unparsable URL)`,
/// since it may hold one anywhere.
pub fn shown_redis_url(raw: &str) -> String {
    let Ok(mut u) = url::Url::parse(raw) else {
        return "(unparsable URL)".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| k == "pass" || k == "password") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pass" || k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}
