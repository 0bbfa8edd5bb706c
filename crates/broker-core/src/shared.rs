//! The fleet's shared cache (docs/reference.md §9): cache entries in a Redis every host uses, sealed with
//! XChaCha20-Poly1305 under the fleet key, and a lock per key so the fleet makes one upstream fetch per identity.
//!
//! Redis is a help, never a dependency: every command has [`ANSWER_WITHIN`] to answer; a failure marks it down for
//! [`DOWN_FOR`] (logged once), during which it is not asked at all, and the caller goes on as if there were no shared
//! cache.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::seal::Cipher as XChaCha20Poly1305;
use base64::Engine as _;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::cache::{decode_entry, encode_entry, CacheKey, Entry};
use crate::config::SharedCacheDef;
use crate::error::{Error, Result};

/// How long Redis has to answer one command before it counts as down, unless `[shared_cache] timeout` says otherwise.
pub const ANSWER_WITHIN: Duration = crate::config::DEFAULT_SHARED_CACHE_TIMEOUT;
/// How long a Redis that failed is left alone before it is tried again (the daemon pings it in the background).
pub const DOWN_FOR: Duration = Duration::from_secs(1);
/// How often a host waiting for another host's fetch looks for its result.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(20);

/// Counters for the daemon's metrics.
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Lookups that found a usable entry.
    pub hits: AtomicU64,
    /// Lookups that found none.
    pub misses: AtomicU64,
    /// Commands that failed or did not answer in time.
    pub errors: AtomicU64,
    /// Fetches that waited for another host's.
    pub lock_waits: AtomicU64,
    /// Whether the last command succeeded.
    pub up: AtomicBool,
}

/// A Redis shared by a fleet, with the fleet key.
pub struct SharedCache {
    client: redis::Client,
    /// The connection (read with bounds: `redis_conn`), made on first use and dropped when a command fails. An
    /// async mutex: a thousand callers of a cold daemon wait for one connection instead of making one each.
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// Where the fleet key comes from, read on first use (a warm local hit never reads it).
    key_source: Option<(crate::secret::SecretSource, String)>,
    /// The cipher and the key's fingerprint; `None` when the key could not be read (then the fleet is not used).
    cipher: std::sync::OnceLock<Option<(XChaCha20Poly1305, String)>>,
    prefix: String,
    /// How long one command may take ([`ANSWER_WITHIN`] by default).
    answer_within: Duration,
    shown_url: String,
    /// This process's lock value, so only the holder deletes a lock.
    owner: String,
    /// When Redis may be asked again after a failure.
    down_until: Mutex<Option<Instant>>,
    /// A value that did not open has been warned about.
    warned_unopened: AtomicBool,
    stats: SharedStats,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("url", &self.shown_url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The fleet key's fingerprint, shown by `broker check`: `sha256:` and the first 8 bytes of its hash, in hex.
pub fn key_fingerprint(key: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(&Sha256::digest(key)[..8]))
}

/// The 32-byte fleet key from its base64 text.
pub fn decode_key(text: &str) -> std::result::Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| {
            "the fleet key is not base64 (make one with `head -c 32 /dev/urandom | base64`)"
                .to_owned()
        })?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("the fleet key is {} bytes; it must be 32", b.len()))
}

/// The fleet key from `source` (written at `position`): an error names the source and what is wrong, never the key.
fn read_key(source: &crate::secret::SecretSource, position: &str) -> Result<[u8; 32]> {
    let context = format!("[shared_cache] key (set at {position})");
    let text = source.resolve().map_err(|e| e.context(&context))?;
    decode_key(text.expose_secret())
        .map_err(|e| Error::config(format!("{context}: {}: {e}", source.describe())))
}

fn cipher(key: &[u8; 32]) -> (XChaCha20Poly1305, String) {
    (crate::seal::cipher(key), key_fingerprint(key))
}

impl SharedCache {
    /// A shared cache for `[shared_cache]`. Nothing is read or connected until the first use: the key then, and
    /// Redis on the first command.
    pub fn from_config(def: &SharedCacheDef) -> Result<Self> {
        let mut s = Self::connect(&def.url, &def.prefix)?;
        s.shown_url = def.shown_url();
        s.answer_within = def.timeout;
        s.key_source = Some((def.key.clone(), def.position.clone()));
        Ok(s)
    }

    /// A shared cache at `url` with the fleet `key`.
    pub fn new(url: &str, key: &[u8; 32], prefix: &str) -> Result<Self> {
        let s = Self::connect(url, prefix)?;
        let _ = s.cipher.set(Some(cipher(key)));
        Ok(s)
    }

    fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::config(format!("[shared_cache] url: {e}")))?;
        let mut owner = [0u8; 16];
        getrandom::getrandom(&mut owner).map_err(|e| Error::internal(e.to_string()))?;
        Ok(SharedCache {
            client,
            conn: tokio::sync::Mutex::new(None),
            key_source: None,
            cipher: std::sync::OnceLock::new(),
            prefix: prefix.to_owned(),
            answer_within: ANSWER_WITHIN,
            shown_url: crate::config::shown_redis_url(url),
            owner: hex::encode(owner),
            down_until: Mutex::new(None),
            warned_unopened: AtomicBool::new(false),
            stats: SharedStats::default(),
        })
    }

    /// Reads the fleet key from its source: an error names the source and what is wrong (`broker check` shows it).
    pub fn read_key(def: &SharedCacheDef) -> Result<[u8; 32]> {
        read_key(&def.key, &def.position)
    }

    /// The cipher, reading the key on first use; `None` (with a warning, once) when it cannot be read.
    fn cipher(&self) -> Option<&XChaCha20Poly1305> {
        self.cipher
            .get_or_init(|| {
                let (source, position) = self.key_source.as_ref()?;
                match read_key(source, position) {
                    Ok(key) => Some(cipher(&key)),
                    Err(e) => {
                        tracing::warn!("{e}; working without the shared cache");
                        None
                    }
                }
            })
            .as_ref()
            .map(|(c, _)| c)
    }

    /// The fleet key's fingerprint, once the key has been read.
    pub fn fingerprint(&self) -> Option<&str> {
        self.cipher
            .get()
            .and_then(Option::as_ref)
            .map(|(_, f)| f.as_str())
    }

    /// The counters.
    pub fn stats(&self) -> &SharedStats {
        &self.stats
    }

    fn token_key(&self, key: &CacheKey) -> String {
        format!("{}:token:{}", self.prefix, key.hex())
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}:lock:{}", self.prefix, key.hex())
    }

    /// Seals `plain` with a fresh random nonce, `name` (the Redis key) as associated data: `nonce || ciphertext`.
    fn seal(&self, name: &str, plain: &[u8]) -> Option<Vec<u8>> {
        crate::seal::seal(self.cipher()?, name.as_bytes(), plain)
    }

    /// Opens what [`SharedCache::seal`] made under this key and name; `None` for anything else.
    fn open(&self, name: &str, value: &[u8]) -> Option<Vec<u8>> {
        crate::seal::open(self.cipher()?, name.as_bytes(), value)
    }

    /// Runs one command, unless Redis is marked down: `None` when it is, or when the command fails or is late
    /// (which marks it down).
    async fn run<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.cipher().is_none()
            || self
                .down_until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        self.attempt(what, f).await
    }

    /// Runs one command whether or not Redis is marked down, and records the outcome.
    async fn attempt<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let within = self.answer_within;
        let outcome = tokio::time::timeout(within, async {
            let conn = {
                let mut open = self.conn.lock().await;
                match &*open {
                    Some(c) => c.clone(),
                    None => {
                        let c = crate::redis_conn::connect(&self.client, within).await?;
                        *open = Some(c.clone());
                        c
                    }
                }
            };
            f(conn).await
        })
        .await;
        match outcome {
            Ok(Ok(v)) => {
                if !self.stats.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("shared cache {} is reachable", self.shown_url);
                }
                *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Some(v)
            }
            failed => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                // A connection that failed (or read something out of bounds) is not used again.
                *self.conn.lock().await = None;
                *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + DOWN_FOR);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {}ms", within.as_millis()),
                };
                // Logged when it goes down (once, not per request); `up` starts false, so the first failure says it.
                if self.stats.up.swap(false, Ordering::Relaxed)
                    || self.stats.errors.load(Ordering::Relaxed) == 1
                {
                    tracing::warn!(
                        "shared cache {} is unavailable ({what}: {why}); working without it until it answers again",
                        self.shown_url
                    );
                } else {
                    tracing::debug!("shared cache {what}: {why}");
                }
                None
            }
        }
    }

    /// Asks Redis even when it is marked down (the daemon's background check). Returns whether it answered.
    pub async fn ping(&self) -> bool {
        self.attempt("PING", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .is_some()
    }

    /// The entry of `key`, if there is one that opens under the fleet key. A value that does not open (another
    /// key, or tampered with) is ignored. `count`: whether the lookup counts as a hit or a miss (a poll does not).
    pub async fn read(&self, key: &CacheKey, count: bool) -> Option<Entry> {
        let name = self.token_key(key);
        let value = self
            .run("GET", |mut c| {
                let name = name.clone();
                async move {
                    redis::cmd("GET")
                        .arg(&name)
                        .query_async::<Option<Vec<u8>>>(&mut c)
                        .await
                }
            })
            .await
            .flatten();
        let entry = value.and_then(|v| match self.open(&name, &v) {
            Some(plain) => decode_entry(&plain).ok(),
            None => {
                // Once per process (a key rotation makes every read of the other group's values fail), then debug.
                let msg = format!(
                    "shared cache: the entry {name} does not open under this fleet key ({}): another key wrote it, or it \
                     was tampered with; ignoring it (docs/fleet.md, key rotation)",
                    self.fingerprint().unwrap_or("unread")
                );
                if self.warned_unopened.swap(true, Ordering::Relaxed) {
                    tracing::debug!("{msg}");
                } else {
                    tracing::warn!("{msg}");
                }
                None
            }
        });
        if count {
            let counter = if entry.is_some() {
                &self.stats.hits
            } else {
                &self.stats.misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        entry
    }

    /// Stores `entry` for `ttl` (the life left of what it holds). Returns whether Redis took it.
    pub async fn write(&self, key: &CacheKey, entry: &Entry, ttl: Duration) -> bool {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return false;
        }
        let name = self.token_key(key);
        let Some(sealed) = self.seal(&name, &encode_entry(entry, "")) else {
            return false;
        };
        self.run("SET", |mut c| async move {
            redis::cmd("SET")
                .arg(&name)
                .arg(sealed)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// Takes the fleet lock of `key` for `ttl`: `Some(true)` taken, `Some(false)` another host holds it, `None`
    /// Redis is down (go on alone).
    pub async fn lock(&self, key: &CacheKey, ttl: Duration) -> Option<bool> {
        let name = self.lock_key(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let owner = self.owner.clone();
        self.run("SET NX", |mut c| async move {
            redis::cmd("SET")
                .arg(&name)
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
        .map(|ok| ok.is_some())
    }

    /// Releases the fleet lock of `key` if this process still holds it (compare and delete, in one script).
    pub async fn unlock(&self, key: &CacheKey) {
        const RELEASE: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let name = self.lock_key(key);
        let owner = self.owner.clone();
        self.run("unlock", |mut c| async move {
            redis::Script::new(RELEASE)
                .key(&name)
                .arg(owner)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// Counts a fetch that waited for another host's.
    pub(crate) fn waited(&self) {
        self.stats.lock_waits.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_name() {
        let a = SharedCache::new("redis://127.0.0.1:1/", &[7; 32], "broker").unwrap();
        let b = SharedCache::new("redis://127.0.0.1:1/", &[8; 32], "broker").unwrap();
        let sealed = a.seal("broker:token:x", b"plain").unwrap();
        assert_eq!(
            a.open("broker:token:x", &sealed).as_deref(),
            Some(&b"plain"[..])
        );
        assert!(
            a.open("broker:token:y", &sealed).is_none(),
            "moved to another key"
        );
        assert!(
            b.open("broker:token:x", &sealed).is_none(),
            "another fleet key"
        );
        assert!(!sealed.windows(5).any(|w| w == b"plain"));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(decode_key("not base64!").is_err());
        assert!(decode_key(&base64::engine::general_purpose::STANDARD.encode([1u8; 16])).is_err());
        assert!(decode_key(&base64::engine::general_purpose::STANDARD.encode([1u8; 32])).is_ok());
    }
}
