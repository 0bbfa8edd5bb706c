//! The broker: profiles, one in-memory slot per cache key, the disk cache; the refresh logic of docs/reference.md
//! §2–§4 is in `refresh.rs`, `fleet.rs` and `fetch.rs`; the builder in `builder.rs`.

use std::collections::HashMap;

/// Profile names come from config, not from the network: a fast non-DoS-resistant hash is fine.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tracing::Instrument;

mod builder;
mod fetch;
mod fleet;
mod refresh;
mod slot;

pub use builder::BrokerBuilder;
use fetch::*;
#[cfg(feature = "shared-cache")]
use fleet::*;
use refresh::*;
use slot::Slot;

use crate::backoff::Backoff;
use crate::cache::{CacheKey, Cooldown, DiskCache, Entry};
use crate::clock::{add_saturating, Clock, SystemClock};
use crate::config::{CacheMode, Config, Overrides, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::kinds::HttpProvider;
use crate::provider::{FetchContext, Provider};
use crate::token::{into_token, AccessToken, LifetimeNote, LifetimePolicy, SAME_TOKEN_PAUSE_FLOOR};

/// Shards of the slot map: enough for a daemon's worker threads not to contend.
const SLOT_SHARDS: usize = 64;

/// Told about every upstream request, for metrics. Defaults to nothing.
pub trait Observer: Send + Sync + 'static {
    /// A token request to `profile`'s provider finished after `took`: `Ok(())` or the failure's class.
    fn upstream(&self, profile: &str, outcome: std::result::Result<(), ErrorKind>, took: Duration);

    /// Attempt `attempt` of a fetch for `profile` failed with `error` (an outage); the next one is in `next_in`.
    /// Defaults to nothing.
    fn retrying(&self, profile: &str, attempt: u32, error: &Error, next_in: Duration) {
        let _ = (profile, attempt, error, next_in);
    }
}

/// How a profile's tokens are kept.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Minimum remaining life of a token served from cache. Defaults to 60 seconds.
    pub min_ttl: Duration,
    /// Lifetime rules for new tokens. Defaults to 300 s assumed, 24 h at most.
    pub lifetime: LifetimePolicy,
    /// Where tokens are cached. Defaults to disk.
    pub cache: CacheMode,
    /// How long to wait for another process's fetch (the cross-process lock). Defaults to 50 seconds.
    pub lock_wait: Duration,
    /// Total time spent retrying `unavailable` answers when no valid token is cached. Defaults to 30 seconds.
    pub retry: Duration,
    /// After a `rejected` answer the provider is not asked again for this long. Defaults to 30 seconds.
    pub cooldown: Duration,
    /// No cool-down lasts longer than this, whatever the provider asks. Defaults to 1 hour.
    pub max_cooldown: Duration,
    /// The header line a token goes in, with `{token}`. Defaults to `Authorization: Bearer {token}`.
    pub header: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_ttl: crate::config::DEFAULT_MIN_TTL,
            lifetime: LifetimePolicy {
                default_ttl: crate::config::DEFAULT_DEFAULT_TTL,
                max_ttl: crate::config::DEFAULT_MAX_TTL,
            },
            cache: CacheMode::Disk,
            lock_wait: crate::config::DEFAULT_RETRY
                + crate::config::DEFAULT_TIMEOUT
                + crate::config::DEFAULT_CONNECT_TIMEOUT,
            retry: crate::config::DEFAULT_RETRY,
            cooldown: crate::config::DEFAULT_COOLDOWN,
            max_cooldown: crate::config::DEFAULT_MAX_COOLDOWN,
            header: crate::config::DEFAULT_HEADER.to_owned(),
        }
    }
}

impl Policy {
    /// The policy a profile's settings describe.
    pub fn from_settings(s: &Settings) -> Self {
        Policy {
            min_ttl: s.min_ttl,
            lifetime: LifetimePolicy {
                default_ttl: s.default_ttl,
                max_ttl: s.max_ttl,
            },
            cache: s.cache,
            lock_wait: s
                .retry
                .saturating_add(s.timeout)
                .saturating_add(s.connect_timeout),
            retry: s.retry,
            cooldown: s.cooldown,
            max_cooldown: s.max_cooldown,
            header: s.header.clone(),
        }
    }
}

/// Options of one token request.
///
/// ```
/// use std::time::Duration;
/// use broker_core::TokenRequest;
///
/// // A token that will live at least ten more minutes: a cached one with less left is replaced.
/// let req = TokenRequest { min_ttl: Some(Duration::from_secs(600)), ..Default::default() };
/// # let _ = req;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenRequest {
    /// Overrides the profile's `min_ttl` for this request.
    pub min_ttl: Option<Duration>,
    /// Ask the provider even if a fresh token is cached.
    pub force_refresh: bool,
    /// Ask the provider even if a fresh token is cached, but not during a cool-down, and not when another process or
    /// host has cached a newer token than this one holds: for refreshing ahead of expiry in the background.
    pub refresh_ahead: bool,
}

impl TokenRequest {
    fn skips_cache(&self) -> bool {
        self.force_refresh || self.refresh_ahead
    }
}

/// The cache state of a profile, for `broker list`.
#[derive(Debug, Clone)]
pub enum CacheState {
    /// No token cached.
    None,
    /// A token valid until the given time.
    Valid(SystemTime),
    /// A token that expired at the given time.
    Expired(SystemTime),
}

/// What the broker knows of a profile without asking its provider (see [`Broker::status`]).
#[derive(Debug, Clone)]
pub struct Status {
    /// The cached token's state.
    pub cache: CacheState,
    /// A cool-down (after a rejection or a 429 that named a time) or a remembered outage, in force: the provider
    /// is not asked before its `until`.
    pub cooldown: Option<Cooldown>,
}

struct Profile {
    name: String,
    provider: Arc<dyn Provider>,
    policy: Policy,
    /// The key and its slot, computed on first use (it may read an env var or a file).
    keyed: OnceLock<(CacheKey, Arc<Slot>)>,
    /// Clock skew is warned about once per profile (docs/reference.md §2); later fetches say it at debug level.
    skew_warned: std::sync::atomic::AtomicBool,
}

/// Hands out tokens: from memory, from disk, or from the provider, one upstream call per key at a time.
///
/// Build one with [`Broker::builder`] from a [`Config`] (the built-in HTTP kinds) or your own [`Provider`]s, keep it
/// (behind an `Arc`) for as long as the program runs, and ask it with [`Broker::token`], or [`Broker::cached`] where
/// no runtime is at hand:
///
/// ```
/// use broker_core::{Broker, Config, TokenRequest};
///
/// let config = Config::parse(
///     "[profiles.chili]\nprovider = \"chili\"\nclient_id = { env = \"CHILI_ID\" }\nclient_secret = { env = \"CHILI_SECRET\" }\n",
/// )?;
/// let broker = Broker::builder().config(&config, &Default::default()).build();
/// assert_eq!(broker.profile_names(), ["chili"]);
/// // Nothing cached yet (and no cache on disk here): `cached` says so without asking the provider.
/// # std::env::set_var("CHILI_ID", "id");
/// # std::env::set_var("CHILI_SECRET", "secret");
/// assert!(broker.cached("chili", &TokenRequest::default())?.is_none());
/// # Ok::<(), broker_core::Error>(())
/// ```
pub struct Broker {
    observer: Option<Arc<dyn Observer>>,
    clock: Arc<dyn Clock>,
    disk: Option<DiskCache>,
    #[cfg(feature = "shared-cache")]
    shared: Option<Arc<crate::shared::SharedCache>>,
    profiles: Map<String, std::result::Result<Arc<Profile>, Error>>,
    slots: DashMap<CacheKey, Arc<Slot>>,
}

impl Broker {
    /// Names of the registered profiles, sorted.
    pub fn profile_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    fn profile(&self, name: &str) -> Result<&Arc<Profile>> {
        match self.profiles.get(name) {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(e.clone()),
            None => Err(crate::error::unknown_profile(
                name,
                &self.profile_names(),
                &[],
            )),
        }
    }

    fn keyed<'p>(&self, p: &'p Profile) -> Result<&'p (CacheKey, Arc<Slot>)> {
        if let Some(k) = p.keyed.get() {
            return Ok(k);
        }
        let key = p.provider.cache_key()?;
        let slot = self.slots.entry(key).or_default().clone();
        Ok(p.keyed.get_or_init(|| (key, slot)))
    }

    /// [`Broker::keyed`] from async code: the key may read a file, the environment or whatever a
    /// custom provider reads, so it runs on the blocking pool within [`crate::secret::COMMAND_TIMEOUT`] (a file on a
    /// hung mount never stalls the runtime thread that serves other profiles).
    async fn keyed_off_thread<'p>(&self, p: &'p Profile) -> Result<&'p (CacheKey, Arc<Slot>)> {
        if let Some(k) = p.keyed.get() {
            return Ok(k);
        }
        let provider = Arc::clone(&p.provider);
        let what = format!("what identifies the credentials of profile `{}`", p.name);
        let key = crate::secret::off_thread(&what, move || provider.cache_key()).await?;
        let slot = self.slots.entry(key).or_default().clone();
        Ok(p.keyed.get_or_init(|| (key, slot)))
    }

    fn disk_for(&self, p: &Profile) -> Option<&DiskCache> {
        (p.policy.cache == CacheMode::Disk)
            .then_some(self.disk.as_ref())
            .flatten()
    }

    /// The disk entry of `key`, if `p` caches on disk.
    fn read_disk(&self, p: &Profile, key: &CacheKey) -> Result<Option<Entry>> {
        match self.disk_for(p) {
            Some(d) => d.read(key),
            None => Ok(None),
        }
    }

    /// A fresh token from memory or disk, without asking the provider, building an HTTP client or
    /// needing a runtime. `None` when the provider must be asked.
    pub fn cached(&self, profile: &str, req: &TokenRequest) -> Result<Option<Arc<AccessToken>>> {
        let p = self.profile(profile)?;
        if req.skips_cache() || p.policy.cache == CacheMode::None {
            return Ok(None);
        }
        let (key, slot) = self.keyed(p)?;
        let now = self.clock.now_upper_bound();
        if let Some(t) = slot.fresh(now, req.min_ttl, p.policy.min_ttl) {
            return Ok(Some(t));
        }
        if let Some(token) = self.read_disk(p, key)?.and_then(|e| e.token) {
            if token.is_fresh_for(now, req.min_ttl, p.policy.min_ttl) {
                let t = Arc::new(token);
                slot.install(Arc::clone(&t));
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// A token for `profile`: cached while fresh, else fetched once for all concurrent callers.
    pub async fn token(&self, profile: &str, req: &TokenRequest) -> Result<Arc<AccessToken>> {
        let p = self.profile(profile)?;
        // A profile's key is computed on its first use, in the refresh (off the runtime thread).
        if let (false, true, Some((_, slot))) = (
            req.skips_cache(),
            p.policy.cache != CacheMode::None,
            p.keyed.get(),
        ) {
            if let Some(t) = slot.fresh(self.clock.now_upper_bound(), req.min_ttl, p.policy.min_ttl)
            {
                return Ok(t);
            }
        }
        let span = tracing::debug_span!("refresh", profile = %p.name);
        // Boxed: the refresh state machine is large, and keeping it out of this future keeps a warm call (which
        // never gets here) from creating and moving hundreds of bytes.
        Box::pin(self.refresh(p, req).instrument(span)).await
    }

    /// What the caches hold for `profile`, without asking the provider.
    pub fn cache_state(&self, profile: &str) -> Result<CacheState> {
        self.status(profile).map(|s| s.cache)
    }

    /// What the broker knows of `profile` without asking its provider: the cached token's state, and a cool-down
    /// or remembered outage in force (from memory or the cache entry, whichever ends later).
    pub fn status(&self, profile: &str) -> Result<Status> {
        let p = self.profile(profile)?;
        let (key, slot) = self.keyed(p)?;
        let disk = self.read_disk(p, key)?.unwrap_or_default();
        let known = merge(
            Entry {
                token: slot.get().map(|t| (*t).clone()),
                endpoint: None,
                cooldown: slot.cooldown(),
            },
            disk,
        );
        let now = self.clock.now();
        Ok(Status {
            cache: match known.token.map(|t| t.expires_at()) {
                None => CacheState::None,
                Some(at) if now < at => CacheState::Valid(at),
                Some(at) => CacheState::Expired(at),
            },
            cooldown: known.cooldown.filter(|c| now < c.until),
        })
    }

    /// Forgets `profile`'s cached token in memory and on disk. Returns whether a disk entry was removed.
    pub fn clear(&self, profile: &str) -> Result<bool> {
        let p = self.profile(profile)?;
        let (key, slot) = self.keyed(p)?;
        *slot.current.write().unwrap_or_else(|e| e.into_inner()) = None;
        match &self.disk {
            Some(d) => d.remove(key),
            None => Ok(false),
        }
    }

    /// The header line for `token` under `profile`'s template, split into name and value.
    pub fn header(
        &self,
        profile: &str,
        token: &AccessToken,
    ) -> Result<(String, secrecy::SecretString)> {
        use secrecy::ExposeSecret;
        let p = self.profile(profile)?;
        let line = crate::config::fill_header_typed(
            &p.policy.header,
            token.secret().expose_secret(),
            token.token_type(),
        );
        let (name, value) = line.split_once(':').ok_or_else(|| {
            Error::config(format!(
                "profile `{profile}`: header template is not `Name: value`"
            ))
        })?;
        Ok((
            name.trim().to_owned(),
            secrecy::SecretString::from(value.trim().to_owned()),
        ))
    }

    /// The DPoP key `profile`'s tokens are bound to, if it uses DPoP (loaded, or generated, on first use).
    pub fn dpop_key(&self, profile: &str) -> Result<Option<Arc<crate::dpop::DpopKey>>> {
        self.profile(profile)?.provider.dpop_key()
    }

    /// The `DPoP` proof to send with `token` in a `method` request to `url` (RFC 9449 §7), with the resource
    /// server's `nonce` when it gave one; `None` when the token is a bearer token (no DPoP, or `dpop = "optional"`
    /// and the server bound nothing).
    pub fn proof(
        &self,
        profile: &str,
        token: &AccessToken,
        method: &str,
        url: &str,
        nonce: Option<&str>,
    ) -> Result<Option<secrecy::SecretString>> {
        use secrecy::ExposeSecret;
        if !token.token_type().eq_ignore_ascii_case("dpop") {
            return Ok(None);
        }
        let key = self.dpop_key(profile)?.ok_or_else(|| {
            Error::config(format!(
                "profile `{profile}`: the token is DPoP-bound, but the profile has no DPoP key"
            ))
        })?;
        key.proof(&crate::dpop::ProofFor {
            method,
            url,
            token: Some(token.secret().expose_secret()),
            nonce,
            now: self.clock.now(),
        })
        .map(Some)
    }

    /// The disk cache, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// The fleet's shared cache, if any.
    #[cfg(feature = "shared-cache")]
    pub fn shared_cache(&self) -> Option<&Arc<crate::shared::SharedCache>> {
        self.shared.as_ref()
    }
}

#[async_trait::async_trait]
impl crate::provider::ProfileTokens for Broker {
    async fn token_of(&self, profile: &str) -> Result<Arc<AccessToken>> {
        self.token(profile, &TokenRequest::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warm `token()` must not create or move the refresh state machine (docs/ARCHITECTURE.md, broker/).
    #[test]
    fn a_token_call_does_not_carry_the_refresh_state_machine() {
        let broker = Broker::builder().build();
        let req = TokenRequest::default();
        let call = broker.token("p", &req);
        assert!(
            std::mem::size_of_val(&call) <= 64,
            "{} bytes",
            std::mem::size_of_val(&call)
        );
    }

    /// A provider that fails with `message`.
    struct Failing(&'static str);

    #[async_trait::async_trait]
    impl Provider for Failing {
        fn describe(&self) -> String {
            "failing".into()
        }
        fn cache_key(&self) -> Result<CacheKey> {
            Ok(CacheKey::from_parts([self.0.as_bytes()]))
        }
        async fn fetch(&self, _: &FetchContext<'_>) -> Result<crate::provider::Fetched> {
            Err(Error::rejected(self.0))
        }
    }

    /// Every provider's error names the profile once, by one rule, and so does the cool-down it leaves.
    #[test]
    fn provider_errors_name_the_profile_once_by_one_rule() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (message, want) in [
            ("nope", "profile `p`: nope"),
            (
                "profile `p` (provider x): nope",
                "profile `p` (provider x): nope",
            ),
        ] {
            let broker = Broker::builder()
                .profile("p", Arc::new(Failing(message)), Policy::default())
                .build();
            for round in ["the fetch", "the cool-down"] {
                let e = rt
                    .block_on(broker.token("p", &TokenRequest::default()))
                    .err()
                    .map(|e| e.message().to_owned())
                    .unwrap_or_default();
                assert!(e.starts_with(want), "{round}: {e}");
                assert_eq!(e.matches("profile `p`").count(), 1, "{round}: {e}");
            }
        }
    }
}
