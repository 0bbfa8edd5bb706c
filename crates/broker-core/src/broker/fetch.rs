//! The fetch of a refresh (docs/reference.md §4): one call of the provider, the retry round with [`Backoff::RETRY`]
//! within the `retry` budget, and what a failure leaves behind: a cool-down after a rejection, or the next attempt
//! after an outage ([`Backoff::OUTAGE`]), kept in memory and in the cache entry.

use super::*;

/// The error of a cool-down in force, the profile named by [`Error::for_profile`] like every provider error.
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
    Error::new(c.kind, format!("{}; {why}", c.message))
        .with_retry_at(Some(c.until))
        .for_profile(&p.name)
}

impl Broker {
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
                (Backoff::OUTAGE.next_attempt(now, streak), streak)
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
                None => (Backoff::RETRY.delay(attempt).min(left), !left.is_zero()),
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

    pub(super) async fn fetch(
        &self,
        p: &Profile,
        cx: &FetchContext<'_>,
        previous: Option<&AccessToken>,
    ) -> Result<(Arc<AccessToken>, Option<String>)> {
        let started = std::time::Instant::now();
        let fetched = p
            .provider
            .fetch(cx)
            .await
            .map_err(|e| e.for_profile(&p.name));
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
