//! The broker: profiles, one in-memory slot per cache key, the disk cache, and the refresh logic of
//! docs/reference.md §2–§3.

use std::collections::HashMap;

/// Profile names come from config, not from the network: a fast non-DoS-resistant hash is fine.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tracing::Instrument;

use crate::cache::{CacheKey, Cooldown, DiskCache, Entry};
use crate::clock::{add_saturating, Clock, SystemClock};
use crate::config::{CacheMode, Config, Overrides, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::kinds::HttpProvider;
use crate::provider::{FetchContext, Provider};
use crate::token::{into_token, AccessToken, LifetimeNote, LifetimePolicy, SAME_TOKEN_PAUSE_FLOOR};

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
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenRequest {
    /// Overrides the profile's `min_ttl` for this request.
    pub min_ttl: Option<Duration>,
    /// Ask the provider even if a fresh token is cached.
    pub force_refresh: bool,
    /// Ask the provider even if a fresh token is cached, but not during a cool-down: for refreshing ahead of
    /// expiry in the background.
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

/// One cache key's in-memory slot: the current token, and the refresh state machine that makes one fetch serve
/// all callers. Its states: idle (nobody holds `fetch`), fetching (someone does; others queue on it), then the
/// outcome, published before `fetch` is released: a token (`current`, `generation`) or a failure (`failure`),
/// with `fetches` counting ended fetches so a waiter knows whether the one it queued behind has ended. An outage
/// or rejection also leaves `cooldown`: the time before which nobody asks again.
#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<AccessToken>>>,
    fetch: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    fetches: AtomicU64,
    failure: std::sync::Mutex<Option<Error>>,
    cooldown: std::sync::Mutex<Option<Cooldown>>,
}

impl Slot {
    fn get(&self) -> Option<Arc<AccessToken>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn fresh(
        &self,
        now: SystemTime,
        per_call: Option<Duration>,
        min_ttl: Duration,
    ) -> Option<Arc<AccessToken>> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        match &*cur {
            Some(t) if t.is_fresh_for(now, per_call, min_ttl) => Some(Arc::clone(t)),
            _ => None,
        }
    }
    /// The failure of the last fetch, if it failed.
    fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Publishes a fetch's outcome to those queued behind it (call before releasing `fetch`).
    fn publish(&self, failure: Option<&Error>) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = failure.cloned();
        self.fetches.fetch_add(1, Ordering::AcqRel);
    }
    fn cooldown(&self) -> Option<Cooldown> {
        self.cooldown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn install(&self, t: Arc<AccessToken>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
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

/// Combines what memory and disk know: the later-expiring token, the later cool-down, disk's endpoint.
fn merge(memory: Entry, disk: Entry) -> Entry {
    let token = match (memory.token, disk.token) {
        (Some(m), Some(d)) => Some(if m.expires_at() >= d.expires_at() {
            m
        } else {
            d
        }),
        (m, d) => m.or(d),
    };
    let cooldown = match (memory.cooldown, disk.cooldown) {
        (Some(m), Some(d)) => Some(if m.until >= d.until { m } else { d }),
        (m, d) => m.or(d),
    };
    Entry {
        token,
        endpoint: disk.endpoint.or(memory.endpoint),
        cooldown,
    }
}

/// The error of a cool-down in force. The stored message names the profile already when its provider's did (the
/// built-in ones do); otherwise the profile is put in front.
fn cooling_down(p: &Profile, c: &Cooldown, now: SystemTime) -> Error {
    let at = humantime::format_rfc3339_seconds(c.until);
    let left = crate::duration::format(c.until.duration_since(now).unwrap_or_default());
    let why = if c.kind == ErrorKind::Unavailable && c.streak > 0 {
        format!(
            "the provider is down; next attempt after {at} (in {left}; --force-refresh tries now)"
        )
    } else {
        format!("not asking the provider again before {at} (cool-down, {left} left; --force-refresh overrides)")
    };
    let e = Error::new(c.kind, format!("{}; {why}", c.message)).with_retry_at(Some(c.until));
    let profile = format!("profile `{}`", p.name);
    if c.message.contains(&profile) {
        e
    } else {
        e.context(profile)
    }
}

/// How long to wait before the next attempt after `streak` failed fetches in a row: 2 s, doubling, at most 60 s.
fn outage_pause(streak: u32) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << streak.saturating_sub(1).min(5))
        .min(Duration::from_secs(60))
}

/// After a failure: the still-valid token with a warning, else the error.
fn serve_previous(
    previous: Option<Arc<AccessToken>>,
    e: Error,
    now: SystemTime,
) -> Result<Arc<AccessToken>> {
    match previous {
        Some(old) => {
            tracing::warn!(
                "{e}; serving the cached token, still valid for {}",
                crate::duration::format(old.remaining(now))
            );
            Ok(old)
        }
        None => Err(e),
    }
}

/// Full-jitter exponential backoff: uniform in `[0, min(8 s, 250 ms * 2^attempt)]`.
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(5))
        .min(Duration::from_secs(8));
    cap.mul_f64(fastrand::f64())
}

/// Builds a [`Broker`].
pub struct BrokerBuilder {
    pool: Arc<crate::kinds::ClientPool>,
    observer: Option<Arc<dyn Observer>>,
    clock: Arc<dyn Clock>,
    http: Option<reqwest::Client>,
    disk: Option<PathBuf>,
    profiles: Map<String, std::result::Result<Arc<Profile>, Error>>,
}

impl BrokerBuilder {
    /// Uses `clock` instead of the system clock. Defaults to [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Reports every upstream request to `observer`.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Caches on disk in `dir` for profiles whose policy says disk. Defaults to no disk cache
    /// (disk profiles then cache in memory only).
    pub fn disk_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.disk = Some(dir.into());
        self
    }

    /// Registers a profile served by `provider`.
    pub fn profile(
        mut self,
        name: impl Into<String>,
        provider: Arc<dyn Provider>,
        policy: Policy,
    ) -> Self {
        let name = name.into();
        let p = Profile {
            name: name.clone(),
            provider,
            policy,
            keyed: OnceLock::new(),
            skew_warned: std::sync::atomic::AtomicBool::new(false),
        };
        self.profiles.insert(name, Ok(Arc::new(p)));
        self
    }

    /// Registers every profile of `config` with the built-in HTTP provider. A profile whose settings do not
    /// resolve is kept as its error, returned when it is asked for, so one broken profile spoils no other.
    pub fn config(mut self, config: &Config, overrides: &Overrides) -> Self {
        for name in config.profile_names() {
            match config.resolve(name, overrides) {
                Ok(s) => self = self.settings(s),
                Err(e) => {
                    self.profiles.insert(name.to_owned(), Err(e));
                }
            }
        }
        self
    }

    /// Uses the caller's `reqwest::Client` for the built-in HTTP profiles registered after this call, instead of
    /// one built from each profile's timeouts and `ca_file`. It should not follow redirects
    /// (`redirect::Policy::none()`): a redirected token request would carry the secret elsewhere.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Registers one resolved profile with the built-in HTTP provider.
    pub fn settings(self, s: Settings) -> Self {
        let policy = Policy::from_settings(&s);
        let name = s.profile.clone();
        let provider = match &self.http {
            Some(c) => HttpProvider::new(s).with_client(c.clone()),
            None => HttpProvider::new(s).with_pool(self.pool.clone()),
        };
        self.profile(name, Arc::new(provider), policy)
    }

    /// The broker.
    pub fn build(self) -> Broker {
        Broker {
            observer: self.observer,
            clock: self.clock,
            disk: self.disk.map(DiskCache::new),
            profiles: self.profiles,
            slots: DashMap::new(),
        }
    }
}

/// Hands out tokens: from memory, from disk, or from the provider, one upstream call per key at a time.
pub struct Broker {
    observer: Option<Arc<dyn Observer>>,
    clock: Arc<dyn Clock>,
    disk: Option<DiskCache>,
    profiles: Map<String, std::result::Result<Arc<Profile>, Error>>,
    slots: DashMap<CacheKey, Arc<Slot>>,
}

impl Broker {
    /// A builder with the system clock and no profiles.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            pool: Arc::default(),
            observer: None,
            clock: Arc::new(SystemClock),
            http: None,
            disk: None,
            profiles: Map::default(),
        }
    }

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
        if !req.skips_cache() && p.policy.cache != CacheMode::None {
            let (_, slot) = self.keyed(p)?;
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

    async fn refresh(&self, p: &Profile, req: &TokenRequest) -> Result<Arc<AccessToken>> {
        if p.policy.cache == CacheMode::None {
            let cx = FetchContext {
                clock: &*self.clock,
                endpoint_hint: None,
            };
            return self.fetch_with_retry(p, &cx, None, 0).await.map(|(t, _)| t);
        }
        let (key, slot) = self.keyed(p)?;
        let asked_at = self.clock.now();
        let generation = slot.generation.load(Ordering::Acquire);
        let fetches = slot.fetches.load(Ordering::Acquire);
        let _in_process = slot.fetch.lock().await;
        let now = self.clock.now();
        // A fetch ended while we waited for the slot: its outcome is ours. A failure is shared as it is, so nobody
        // starts a second retry round behind it (docs/reference.md, outages).
        if slot.fetches.load(Ordering::Acquire) != fetches {
            if let Some(e) = slot.failure() {
                let previous = slot.get().filter(|t| t.is_valid(now));
                return serve_previous(previous, e, now);
            }
            // It succeeded: the token it fetched is the one we waited for, even if shorter than asked for.
            if let Some(t) = slot
                .get()
                .filter(|t| t.is_valid(now) && t.obtained_at() >= asked_at)
            {
                return Ok(t);
            }
        }
        if req.skips_cache() {
            // Someone refreshed while we waited for the slot: that token is as new as ours would be.
            if slot.generation.load(Ordering::Acquire) != generation {
                if let Some(t) = slot.get().filter(|t| t.is_valid(now)) {
                    return Ok(t);
                }
            }
        } else if let Some(t) = slot.fresh(now, req.min_ttl, p.policy.min_ttl) {
            return Ok(t);
        }
        let disk = self.disk_for(p);
        let mut known = Entry {
            token: slot.get().map(|t| (*t).clone()),
            endpoint: None,
            cooldown: slot.cooldown(),
        };
        let _cross_process = match disk {
            Some(d) => {
                if !req.skips_cache() {
                    if let Some(t) = self.adopt(
                        d.read(key)?.and_then(|e| e.token),
                        slot,
                        now,
                        req,
                        p.policy.min_ttl,
                        asked_at,
                    ) {
                        return Ok(t);
                    }
                }
                let lock = d.lock(key, p.policy.lock_wait).await?;
                let now = self.clock.now();
                if let Some(e) = d.read(key)? {
                    if let Some(t) =
                        self.adopt(e.token.clone(), slot, now, req, p.policy.min_ttl, asked_at)
                    {
                        return Ok(t);
                    }
                    known = merge(known, e);
                }
                Some(lock)
            }
            None => None,
        };
        let now = self.clock.now();
        let previous = known
            .token
            .clone()
            .filter(|t| t.is_valid(now))
            .map(Arc::new);
        if let Some(c) = known
            .cooldown
            .as_ref()
            .filter(|c| now < c.until && !req.force_refresh)
        {
            return serve_previous(previous, cooling_down(p, c, now), now);
        }
        // A provider known to be down (the last fetch failed as unavailable) gets one attempt, not a retry round.
        let streak = known
            .cooldown
            .as_ref()
            .filter(|c| c.kind == ErrorKind::Unavailable)
            .map_or(0, |c| c.streak);
        let cx = FetchContext {
            clock: &*self.clock,
            endpoint_hint: known.endpoint.as_deref(),
        };
        let fetched = self
            .fetch_with_retry(p, &cx, previous.as_deref(), streak)
            .await;
        let outcome = match fetched {
            Ok((t, endpoint)) => {
                *slot.cooldown.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if let Some(d) = disk {
                    let entry = Entry {
                        token: Some((*t).clone()),
                        endpoint,
                        cooldown: None,
                    };
                    if let Err(e) = d.write(key, &entry, &p.name) {
                        tracing::warn!(
                            "profile `{}`: token not saved to the disk cache: {e}",
                            p.name
                        );
                    }
                }
                slot.install(Arc::clone(&t));
                if req
                    .min_ttl
                    .is_some_and(|m| t.remaining(self.clock.now()) <= m)
                {
                    tracing::warn!(
                        "profile `{}`: the provider's new token has only {} left, less than the {} asked for",
                        p.name,
                        crate::duration::format(t.remaining(self.clock.now())),
                        crate::duration::format(req.min_ttl.unwrap_or_default())
                    );
                }
                Ok(t)
            }
            Err(e) => {
                let e = self.remember_failure(p, key, slot, disk, known, streak, e);
                serve_previous(previous, e, self.clock.now())
            }
        };
        slot.publish(outcome.as_ref().err());
        outcome
    }

    /// After a failed fetch: a rejection starts a cool-down of `cooldown`; an outage remembers when to try next
    /// (the time the provider named, else a backoff that grows with each failure in a row), so that callers without
    /// a valid token are answered at once until then. Both are kept in memory and in the cache entry, so other
    /// processes obey them too, and both are capped by `max_cooldown`. The entry keeps whatever token it held: a
    /// failure never removes a still-valid token. Returns the error, with the next attempt's time.
    #[allow(clippy::too_many_arguments)]
    fn remember_failure(
        &self,
        p: &Profile,
        key: &CacheKey,
        slot: &Slot,
        disk: Option<&DiskCache>,
        known: Entry,
        streak: u32,
        e: Error,
    ) -> Error {
        let now = self.clock.now();
        let cap = add_saturating(now, p.policy.max_cooldown);
        let (until, streak) = match e.kind() {
            ErrorKind::Rejected => (add_saturating(now, p.policy.cooldown), 0),
            // The provider named a time (429, 503 with Retry-After): a cool-down until then.
            ErrorKind::Unavailable if e.retry_at().is_some_and(|at| at > now) => {
                (e.retry_at().unwrap_or(now), 0)
            }
            // An outage: the next attempt after a pause that grows with each failure in a row.
            ErrorKind::Unavailable => {
                let streak = streak.saturating_add(1);
                (add_saturating(now, outage_pause(streak)), streak)
            }
            _ => return e,
        };
        let c = Cooldown {
            until: until.min(cap),
            kind: e.kind(),
            message: e.message().to_owned(),
            streak,
        };
        let e = e.with_retry_at(Some(c.until));
        *slot.cooldown.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        if let Some(d) = disk {
            let entry = Entry {
                cooldown: Some(c),
                ..known
            };
            if let Err(w) = d.write(key, &entry, &p.name) {
                tracing::warn!(
                    "profile `{}`: failure not saved to the disk cache: {w}",
                    p.name
                );
            }
        }
        e
    }

    /// Fetches, retrying `unavailable` answers with exponential backoff and full jitter within the retry
    /// budget, honouring a time the provider named. One attempt only when there is a still-valid token to fall back
    /// on (the caller is better served by it now than by a fresh one later), or when the provider is known to be
    /// down (`streak` failures in a row). All waiting is on the broker's clock. A final failure says how many
    /// attempts were made over how long.
    async fn fetch_with_retry(
        &self,
        p: &Profile,
        cx: &FetchContext<'_>,
        previous: Option<&AccessToken>,
        streak: u32,
    ) -> Result<(Arc<AccessToken>, Option<String>)> {
        let budget = if previous.is_some() || streak > 0 {
            Duration::ZERO
        } else {
            p.policy.retry
        };
        let started = self.clock.now();
        let mut attempt: u32 = 0;
        loop {
            let e = match self.fetch(p, cx, previous).await {
                Err(e) if e.kind() == ErrorKind::Unavailable => e,
                other => return other,
            };
            attempt += 1;
            let elapsed = self.clock.now().duration_since(started).unwrap_or_default();
            let wait = match e.retry_at() {
                Some(at) => at.duration_since(self.clock.now()).unwrap_or_default(),
                None => backoff(attempt - 1),
            };
            if elapsed.saturating_add(wait) > budget {
                let mut msg = e.message().to_owned();
                if e.retry_at().is_some() && !budget.is_zero() {
                    msg.push_str(&format!(
                        "; that is beyond the retry budget of {}",
                        crate::duration::format(budget)
                    ));
                }
                let s = if attempt == 1 { "" } else { "s" };
                msg.push_str(&format!(
                    " (gave up after {attempt} attempt{s} over {})",
                    crate::duration::format(elapsed)
                ));
                return Err(Error::unavailable(msg).with_retry_at(e.retry_at()));
            }
            tracing::debug!("{e}; retrying in {}ms", wait.as_millis());
            if let Some(o) = &self.observer {
                o.retrying(&p.name, attempt, &e, wait);
            }
            self.clock.sleep(wait).await;
        }
    }

    /// Uses a cached token if it serves this request: fresh, or (for a forced refresh) fetched after we asked.
    fn adopt(
        &self,
        token: Option<AccessToken>,
        slot: &Slot,
        now: SystemTime,
        req: &TokenRequest,
        min_ttl: Duration,
        asked_at: SystemTime,
    ) -> Option<Arc<AccessToken>> {
        let t = token?;
        let usable = if req.skips_cache() {
            t.obtained_at() >= asked_at && t.is_valid(now)
        } else {
            t.is_fresh_for(now, req.min_ttl, min_ttl)
        };
        usable.then(|| {
            let t = Arc::new(t);
            slot.install(Arc::clone(&t));
            t
        })
    }

    async fn fetch(
        &self,
        p: &Profile,
        cx: &FetchContext<'_>,
        previous: Option<&AccessToken>,
    ) -> Result<(Arc<AccessToken>, Option<String>)> {
        let started = std::time::Instant::now();
        let fetched = p.provider.fetch(cx).await;
        if let Some(o) = &self.observer {
            o.upstream(
                &p.name,
                fetched.as_ref().map(|_| ()).map_err(Error::kind),
                started.elapsed(),
            );
        }
        let fetched = fetched?;
        let (mut token, notes) =
            into_token(fetched.response, fetched.requested_at, p.policy.lifetime);
        for n in notes {
            match n {
                LifetimeNote::DefaultTtl => tracing::warn!(
                    "profile `{}`: the response has neither expires_in nor a JWT exp; assuming default_ttl {}",
                    p.name,
                    crate::duration::format(p.policy.lifetime.default_ttl)
                ),
                LifetimeNote::ClockSkew { by } => {
                    let by = crate::duration::format(by);
                    if p.skew_warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!("profile `{}`: clock skew of {by} again", p.name);
                    } else {
                        tracing::warn!(
                            "profile `{}`: the token's exp is {by} earlier than expires_in says: this machine's \
                             clock or the provider's is off; using expires_in",
                            p.name
                        );
                    }
                }
                LifetimeNote::CutToMaxTtl => tracing::debug!("profile `{}`: lifetime cut to max_ttl", p.name),
            }
        }
        if let Some(old) = previous.filter(|old| old.same_secret(&token)) {
            // The provider handed back its cached token: it is the same token, so it keeps its original
            // lifetime (and margin), and the provider is not asked again before the pause is over.
            token = AccessToken::new(
                token.secret().clone(),
                token.token_type(),
                old.obtained_at(),
                token.expires_at(),
            );
            let pause = (token.margin(p.policy.min_ttl) / 2).max(SAME_TOKEN_PAUSE_FLOOR);
            tracing::debug!(
                "profile `{}`: provider returned the same token; pausing refreshes for {pause:?}",
                p.name
            );
            token = token.with_refresh_not_before(Some(add_saturating(self.clock.now(), pause)));
        }
        Ok((Arc::new(token), fetched.endpoint))
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
        let line = crate::config::fill_header(&p.policy.header, token.secret().expose_secret());
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

    /// The disk cache, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }
}
