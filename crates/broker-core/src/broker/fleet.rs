//! The fleet's share of a refresh (docs/reference.md §9): a token or cool-down another host left, the fleet lock
//! and the wait for its holder, and what this host shares after a fetch.

use super::*;

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

impl Broker {
    /// The fleet's share before a fetch: a token another host left that serves this request (kept on disk and in
    /// memory here), else the fleet lock; while another host holds it, its result is awaited (a bounded poll, up to
    /// the fetch's own time limits). A shared cool-down is merged into `known`, where the caller obeys it.
    #[cfg(feature = "shared-cache")]
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ask_fleet(
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
            let read = self
                .adopt_shared(p, shared, key, slot, disk, req, asked_at, known, !waited)
                .await;
            match read {
                Some(Some(t)) => return FromFleet::Served(t),
                // An entry that does not serve: a shared cool-down in force is obeyed.
                Some(None) => {
                    let now = self.clock.now();
                    if !req.force_refresh && known.cooldown.as_ref().is_some_and(|c| now < c.until)
                    {
                        return FromFleet::Alone;
                    }
                }
                None => {}
            }
            match shared.lock(key, p.policy.lock_wait).await {
                Some(true) => {
                    // Read once more under the lock: the host before us may have shared its token and released
                    // the lock between our read and our lock.
                    let again = self
                        .adopt_shared(p, shared, key, slot, disk, req, asked_at, known, false)
                        .await;
                    let now = self.clock.now();
                    let cooling = !req.force_refresh
                        && known.cooldown.as_ref().is_some_and(|c| now < c.until);
                    return match again.flatten() {
                        Some(t) => {
                            shared.unlock(key).await;
                            FromFleet::Served(t)
                        }
                        None if cooling => {
                            shared.unlock(key).await;
                            FromFleet::Alone
                        }
                        None => FromFleet::Locked,
                    };
                }
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

    /// Reads the fleet's entry of `key` (merged into `known`) and takes its token if it serves this request (kept on
    /// disk and in memory here): `None` when there is no entry, `Some(None)` when it does not serve. `count`: whether
    /// the read counts as a hit or a miss.
    #[cfg(feature = "shared-cache")]
    #[allow(clippy::too_many_arguments)]
    async fn adopt_shared(
        &self,
        p: &Profile,
        shared: &crate::shared::SharedCache,
        key: &CacheKey,
        slot: &Slot,
        disk: Option<&DiskCache>,
        req: &TokenRequest,
        asked_at: SystemTime,
        known: &mut Entry,
        count: bool,
    ) -> Option<Option<Arc<AccessToken>>> {
        let e = shared.read(key, count).await?;
        let token = e.token.clone();
        let endpoint = e.endpoint.clone();
        *known = merge(std::mem::take(known), e);
        let now = self.clock.now();
        let served = self.adopt(token, slot, now, req, p.policy.min_ttl, asked_at);
        if let Some(t) = &served {
            save_token(p, key, disk, t, endpoint);
        }
        Some(served)
    }

    /// Puts what this host learned (a token, or a cool-down with the token still held) into the fleet's cache, for as
    /// long as it holds.
    #[cfg(feature = "shared-cache")]
    pub(super) async fn share(&self, key: &CacheKey, entry: Entry) {
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
}
