//! The refresh path of a slot (docs/reference.md §2-§4): the re-checks of memory and disk, the cross-process lock,
//! the fetch with its retries, and what a failure leaves behind (a cool-down, a remembered outage).

use super::*;

/// Combines what memory and disk know: the later-expiring token, the later cool-down, disk's endpoint.
pub(super) fn merge(memory: Entry, disk: Entry) -> Entry {
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
pub(super) fn cooling_down(p: &Profile, c: &Cooldown, now: SystemTime) -> Error {
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
pub(super) fn outage_pause(streak: u32) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << streak.saturating_sub(1).min(5))
        .min(Duration::from_secs(60))
}

/// After a failure: the still-valid token with a warning, else the error.
pub(super) fn serve_previous(
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

/// Writes `t` (and the endpoint it came from) as the entry of `key`, if `p` caches on disk; a failure is a warning.
fn save_token(
    p: &Profile,
    key: &CacheKey,
    disk: Option<&DiskCache>,
    t: &AccessToken,
    endpoint: Option<String>,
) {
    let Some(d) = disk else {
        return;
    };
    let entry = Entry {
        token: Some(t.clone()),
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

/// Full-jitter exponential backoff, uniform in `[0, min(8 s, 250 ms * 2^attempt)]` (the caller cuts it to what is
/// left of the retry budget).
pub(super) fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(5))
        .min(Duration::from_secs(8));
    cap.mul_f64(fastrand::f64())
}

/// What the fleet's shared cache gave a refresh (docs/reference.md §9).
#[cfg(feature = "shared-cache")]
pub(super) enum FromFleet {
    /// A token another host fetched, which serves this request.
    Served(Arc<AccessToken>),
    /// This host holds the fleet lock: it fetches, shares, and releases.
    Locked,
    /// No lock to hold (Redis down, a cool-down in force, or the wait ran out): go on as if there were no fleet.
    Alone,
}

/// What the disk gave a refresh: a token that serves it, or the key's lock and the entry read under it.
pub(super) enum FromDisk {
    Served(Arc<AccessToken>),
    Locked(crate::cache::KeyLock, Option<Entry>),
}

impl Broker {
    pub(super) async fn refresh(
        &self,
        p: &Profile,
        req: &TokenRequest,
    ) -> Result<Arc<AccessToken>> {
        if p.policy.cache == CacheMode::None {
            let cx = FetchContext {
                clock: &*self.clock,
                endpoint_hint: None,
                tokens: self,
            };
            return self.fetch_with_retry(p, &cx, None, 0).await.map(|(t, _)| t);
        }
        let (key, slot) = self.keyed_off_thread(p).await?;
        let asked_at = self.clock.now();
        let seen = (
            slot.generation.load(Ordering::Acquire),
            slot.fetches.load(Ordering::Acquire),
        );
        let _in_process = slot.fetch.lock().await;
        if let Some(outcome) = self.joined(p, slot, req, asked_at, seen) {
            return outcome;
        }
        let disk = self.disk_for(p);
        let mut known = Entry {
            token: slot.get().map(|t| (*t).clone()),
            endpoint: None,
            cooldown: slot.cooldown(),
        };
        let _cross_process = match disk {
            Some(d) => match self.lock_disk(p, d, key, slot, req, asked_at).await {
                Ok(FromDisk::Served(t)) => return Ok(t),
                Ok(FromDisk::Locked(lock, entry)) => {
                    if let Some(e) = entry {
                        known = merge(known, e);
                    }
                    Some(lock)
                }
                // Another process held the lock past the fetch's time limits (or the cache failed): published like a
                // fetch's failure, so the callers queued behind do not each wait that long again, and a still-valid
                // token is served as after any failed refresh.
                Err(e) => {
                    slot.publish(Some(&e));
                    let now = self.clock.now();
                    return serve_previous(slot.get().filter(|t| t.is_valid(now)), e, now);
                }
            },
            None => None,
        };
        #[cfg(feature = "shared-cache")]
        let mut fleet_lock = false;
        #[cfg(feature = "shared-cache")]
        if let Some(shared) = &self.shared {
            match self
                .ask_fleet(p, shared, key, slot, disk, req, asked_at, &mut known)
                .await
            {
                FromFleet::Served(t) => return Ok(t),
                FromFleet::Locked => fleet_lock = true,
                FromFleet::Alone => {}
            }
        }
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
            tokens: self,
        };
        let outcome = match self
            .fetch_with_retry(p, &cx, previous.as_deref(), streak)
            .await
        {
            Ok((t, endpoint)) => {
                let t = self.keep(p, key, slot, disk, req, t, endpoint.clone());
                #[cfg(feature = "shared-cache")]
                self.share(
                    key,
                    Entry {
                        token: Some((*t).clone()),
                        endpoint,
                        cooldown: None,
                    },
                )
                .await;
                Ok(t)
            }
            Err(e) => {
                #[cfg(feature = "shared-cache")]
                let token = known.token.clone();
                let e = self.remember_failure(p, key, slot, disk, known, streak, e);
                #[cfg(feature = "shared-cache")]
                self.share(
                    key,
                    Entry {
                        token,
                        endpoint: None,
                        cooldown: slot.cooldown(),
                    },
                )
                .await;
                serve_previous(previous, e, self.clock.now())
            }
        };
        #[cfg(feature = "shared-cache")]
        if let (true, Some(shared)) = (fleet_lock, &self.shared) {
            shared.unlock(key).await;
        }
        slot.publish(outcome.as_ref().err());
        outcome
    }

    /// What a caller that queued on the slot gets without a fetch of its own, if anything: the outcome of the fetch
    /// that ended while it waited (a failure is shared as it is, so nobody starts a second retry round behind it;
    /// docs/reference.md §4), or a token someone else installed meanwhile that serves it. `seen` is the slot's
    /// generation and fetch count when the caller queued.
    fn joined(
        &self,
        p: &Profile,
        slot: &Slot,
        req: &TokenRequest,
        asked_at: SystemTime,
        (generation, fetches): (u64, u64),
    ) -> Option<Result<Arc<AccessToken>>> {
        let now = self.clock.now();
        if slot.fetches.load(Ordering::Acquire) != fetches {
            if let Some(e) = slot.failure() {
                let previous = slot.get().filter(|t| t.is_valid(now));
                return Some(serve_previous(previous, e, now));
            }
            // It succeeded: the token it fetched is the one we waited for, even if shorter than asked for.
            if let Some(t) = slot
                .get()
                .filter(|t| t.is_valid(now) && t.obtained_at() >= asked_at)
            {
                return Some(Ok(t));
            }
        }
        if req.skips_cache() {
            // Someone refreshed while we waited for the slot: that token is as new as ours would be.
            if slot.generation.load(Ordering::Acquire) != generation {
                return slot.get().filter(|t| t.is_valid(now)).map(Ok);
            }
            return None;
        }
        slot.fresh(now, req.min_ttl, p.policy.min_ttl).map(Ok)
    }

    /// The disk's share before a fetch: a token another process left that serves this request, else the key's
    /// cross-process lock, after which the entry is looked at again (another process may have just fetched).
    async fn lock_disk(
        &self,
        p: &Profile,
        d: &DiskCache,
        key: &CacheKey,
        slot: &Slot,
        req: &TokenRequest,
        asked_at: SystemTime,
    ) -> Result<FromDisk> {
        let adopt = |token, now| self.adopt(token, slot, now, req, p.policy.min_ttl, asked_at);
        if !req.skips_cache() {
            if let Some(t) = adopt(d.read(key)?.and_then(|e| e.token), self.clock.now()) {
                return Ok(FromDisk::Served(t));
            }
        }
        let lock = d.lock(key, p.policy.lock_wait).await?;
        let entry = d.read(key)?;
        match adopt(
            entry.as_ref().and_then(|e| e.token.clone()),
            self.clock.now(),
        ) {
            Some(t) => Ok(FromDisk::Served(t)),
            None => Ok(FromDisk::Locked(lock, entry)),
        }
    }

    /// The fleet's share before a fetch: a token another host left that serves this request (kept on disk and in
    /// memory here), else the fleet lock; while another host holds it, its result is awaited (a bounded poll, up to
    /// the fetch's own time limits). A shared cool-down is merged into `known`, where the caller obeys it.
    #[cfg(feature = "shared-cache")]
    #[allow(clippy::too_many_arguments)]
    async fn ask_fleet(
        &self,
        p: &Profile,
        shared: &crate::shared::SharedCache,
        key: &CacheKey,
        slot: &Slot,
        disk: Option<&DiskCache>,
        req: &TokenRequest,
        asked_at: SystemTime,
        known: &mut Entry,
    ) -> FromFleet {
        let deadline = add_saturating(self.clock.now(), p.policy.lock_wait);
        let mut waited = false;
        loop {
            if let Some(e) = shared.read(key, !waited).await {
                let token = e.token.clone();
                let endpoint = e.endpoint.clone();
                *known = merge(std::mem::take(known), e);
                if let Some(t) = self.adopt(
                    token,
                    slot,
                    self.clock.now(),
                    req,
                    p.policy.min_ttl,
                    asked_at,
                ) {
                    save_token(p, key, disk, &t, endpoint);
                    return FromFleet::Served(t);
                }
                let now = self.clock.now();
                if !req.force_refresh && known.cooldown.as_ref().is_some_and(|c| now < c.until) {
                    return FromFleet::Alone;
                }
            }
            match shared.lock(key, p.policy.lock_wait).await {
                Some(true) => return FromFleet::Locked,
                None => return FromFleet::Alone,
                Some(false) => {}
            }
            // Another host is fetching. A caller with a still-valid token gets it now rather than wait on that
            // fetch (docs/reference.md §4); a background refresh waits for the new one.
            let now = self.clock.now();
            if !req.skips_cache() {
                if let Some(t) = known.token.clone().filter(|t| t.is_valid(now)) {
                    return FromFleet::Served(Arc::new(t));
                }
            }
            if !waited {
                shared.waited();
                waited = true;
            }
            if self.clock.now() >= deadline {
                tracing::warn!(
                    "profile `{}`: another host's fetch did not finish within {}; fetching here",
                    p.name,
                    crate::duration::format(p.policy.lock_wait)
                );
                return FromFleet::Alone;
            }
            self.clock.sleep(crate::shared::POLL_EVERY).await;
        }
    }

    /// Puts what this host learned (a token, or a cool-down with the token still held) into the fleet's cache, for as
    /// long as it holds.
    #[cfg(feature = "shared-cache")]
    async fn share(&self, key: &CacheKey, entry: Entry) {
        let Some(shared) = &self.shared else {
            return;
        };
        let now = self.clock.now();
        let left = |t: SystemTime| t.duration_since(now).unwrap_or_default();
        let ttl = entry
            .token
            .as_ref()
            .map(|t| left(t.expires_at()))
            .max(entry.cooldown.as_ref().map(|c| left(c.until)))
            .unwrap_or_default();
        shared.write(key, &entry, ttl).await;
    }

    /// Keeps a fetched token: clears any cool-down, writes the entry, installs it in the slot, and warns when it is
    /// shorter than a per-call `min_ttl` asked.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        p: &Profile,
        key: &CacheKey,
        slot: &Slot,
        disk: Option<&DiskCache>,
        req: &TokenRequest,
        t: Arc<AccessToken>,
        endpoint: Option<String>,
    ) -> Arc<AccessToken> {
        *slot.cooldown.lock().unwrap_or_else(|e| e.into_inner()) = None;
        save_token(p, key, disk, &t, endpoint);
        slot.install(Arc::clone(&t));
        let left = t.remaining(self.clock.now());
        if let Some(asked) = req.min_ttl.filter(|m| left <= *m) {
            tracing::warn!(
                "profile `{}`: the provider's new token has only {} left, less than the {} asked for",
                p.name,
                crate::duration::format(left),
                crate::duration::format(asked)
            );
        }
        t
    }

    /// After a failed fetch: a rejection starts a cool-down of `cooldown`; an outage remembers when to try next
    /// (the time the provider named, else a backoff that grows with each failure in a row), so that callers without
    /// a valid token are answered at once until then. Both are kept in memory and in the cache entry, so other
    /// processes obey them too, and both are capped by `max_cooldown`. The entry keeps whatever token it held: a
    /// failure never removes a still-valid token. Returns the error, with the next attempt's time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn remember_failure(
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
    pub(super) async fn fetch_with_retry(
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
            // Our own backoff is cut to what is left of the budget, so a round uses all of it and ends with an
            // attempt; a wait the provider named that does not fit ends the round now.
            let left = budget.saturating_sub(elapsed);
            let (wait, fits) = match e.retry_at() {
                Some(at) => {
                    let named = at.duration_since(self.clock.now()).unwrap_or_default();
                    (named, named <= left)
                }
                None => (backoff(attempt - 1).min(left), !left.is_zero()),
            };
            if !fits {
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

    /// Uses a cached token if it serves this request: fresh; for a forced refresh, fetched after we asked; for a
    /// refresh ahead, also one newer than the token held here (another process or host refreshed first).
    pub(super) fn adopt(
        &self,
        token: Option<AccessToken>,
        slot: &Slot,
        now: SystemTime,
        req: &TokenRequest,
        min_ttl: Duration,
        asked_at: SystemTime,
    ) -> Option<Arc<AccessToken>> {
        let t = token?;
        let usable = if req.force_refresh {
            t.obtained_at() >= asked_at && t.is_valid(now)
        } else if req.refresh_ahead {
            // Another process or host refreshed first: a token newer than the one held here is what this refresh
            // would have fetched.
            let newer = slot
                .get()
                .is_none_or(|held| t.obtained_at() > held.obtained_at());
            (t.obtained_at() >= asked_at || newer) && t.is_valid(now)
        } else {
            t.is_fresh_for(now, req.min_ttl, min_ttl)
        };
        usable.then(|| {
            let t = Arc::new(t);
            slot.install(Arc::clone(&t));
            t
        })
    }

    pub(super) async fn fetch(
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
}
