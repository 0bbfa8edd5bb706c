//! The refresh path of a slot (docs/reference.md §2-§3): the re-checks of memory and disk, the local single flight
//! and the cross-process lock, and what a fetched token leaves behind. The fleet's share is in `fleet.rs`, the fetch
//! with its retries and what a failure leaves behind (a cool-down, a remembered outage) in `fetch.rs`.

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
pub(super) fn save_token(
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
}
