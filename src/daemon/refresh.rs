//! Background refresh: every profile the daemon has handed out (or that has a sink) is refreshed when its margin is
//! reached, less up to 10 % of the lifetime at random, so callers never wait on the provider. A failed refresh is
//! tried again at the next attempt the core remembers (a cool-down, an outage's backoff), never past the old
//! token's expiry, while the cached token keeps being served; a failure the core does not remember (a broken config)
//! waits `Backoff::OUTAGE`. A profile nobody asked for in `refresh_idle_after` is dropped.
//!
//! One scheduler task and one timer serve every profile: the schedule is a set ordered by due time, and a profile
//! costs one small [`Plan`] between refreshes rather than a sleeping task of its own. A refresh that falls due runs
//! in a short-lived task, so a slow provider delays only its own profiles.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use broker_core::backoff::Backoff;
use broker_core::{Error, TokenRequest};
use tokio::sync::Notify;

use super::{Daemon, Served};

/// The longest the scheduler sleeps before looking at the wall clock again.
const RECHECK: Duration = Duration::from_secs(60);

/// What the next run of a profile does.
#[derive(Clone, Copy)]
enum Stage {
    /// Get the current token (fetching it if there is none), write the sink, schedule the refresh.
    Current,
    /// The margin of the token obtained at `obtained` (expiring at `expires`) is reached: refresh it ahead.
    Ahead {
        obtained: SystemTime,
        expires: SystemTime,
    },
}

/// One profile's place in the schedule.
struct Plan {
    last_used: Instant,
    stage: Stage,
    /// Failed runs in a row.
    failures: u32,
    /// `obtained_at` of the token last written to the sink.
    written: Option<SystemTime>,
    /// When the next run is due; `None` while it runs.
    due: Option<SystemTime>,
}

#[derive(Default)]
struct Schedule {
    plans: HashMap<Arc<str>, Plan>,
    /// `(due, profile)` of every plan waiting for its time.
    queue: BTreeSet<(SystemTime, Arc<str>)>,
}

/// The schedule and the scheduler's wake-up call.
#[derive(Default)]
pub struct Refresher {
    schedule: Mutex<Schedule>,
    wake: Notify,
}

impl Refresher {
    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `profile` is in use, scheduling it at once if it was not scheduled.
    pub fn keep_fresh(&self, profile: &str) {
        let mut s = self.lock();
        if let Some(plan) = s.plans.get_mut(profile) {
            plan.last_used = Instant::now();
            return;
        }
        let name: Arc<str> = Arc::from(profile);
        let now = SystemTime::now();
        s.queue.insert((now, name.clone()));
        s.plans.insert(
            name,
            Plan {
                last_used: Instant::now(),
                stage: Stage::Current,
                failures: 0,
                written: None,
                due: Some(now),
            },
        );
        drop(s);
        self.wake.notify_one();
    }

    /// Where `profile` stands: not refreshed in the background (`None`), refreshing now (`Some(None)`), or due
    /// at a time.
    pub fn state(&self, profile: &str) -> Option<Option<SystemTime>> {
        self.lock().plans.get(profile).map(|p| p.due)
    }

    /// Takes the first plan that is due, or says how long until one is (`None`: nothing scheduled).
    fn next_due(&self) -> Result<Arc<str>, Option<Duration>> {
        let mut s = self.lock();
        let Some((due, _)) = s.queue.first() else {
            return Err(None);
        };
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            if !wait.is_zero() {
                return Err(Some(wait));
            }
        }
        let Some((_, name)) = s.queue.pop_first() else {
            return Err(None);
        };
        if let Some(plan) = s.plans.get_mut(&name) {
            plan.due = None;
        }
        Ok(name)
    }

    /// Puts `profile` back in the schedule after a run, or drops it.
    fn reschedule(&self, profile: Arc<str>, next: Option<Next>) {
        let mut s = self.lock();
        match next {
            None => {
                s.plans.remove(&profile);
            }
            Some(next) => {
                let Some(plan) = s.plans.get_mut(&profile) else {
                    return;
                };
                plan.stage = next.stage;
                plan.failures = next.failures;
                plan.written = next.written;
                plan.due = Some(next.due);
                s.queue.insert((next.due, profile));
                drop(s);
                self.wake.notify_one();
            }
        }
    }
}

/// Runs the schedule until the daemon stops: sleeps until the first plan is due (or a new one arrives) and starts
/// each due run in its own task.
pub async fn run(daemon: Arc<Daemon>) {
    loop {
        match daemon.refresher.next_due() {
            Ok(profile) => {
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    let next = step(&daemon, &profile).await;
                    daemon.refresher.reschedule(profile, next);
                });
            }
            Err(Some(wait)) => {
                // Due times are wall-clock times and tokio's timer runs on the monotonic clock, which stands still
                // while the machine is suspended: looking again at least every minute catches up after a resume.
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(RECHECK)) => {}
                    _ = daemon.refresher.wake.notified() => {}
                }
            }
            Err(None) => daemon.refresher.wake.notified().await,
        }
    }
}

/// Where a run leaves a plan.
struct Next {
    stage: Stage,
    failures: u32,
    written: Option<SystemTime>,
    due: SystemTime,
}

/// One run of `profile`'s plan; `None` drops it (idle, or gone from the config).
async fn step(daemon: &Daemon, profile: &str) -> Option<Next> {
    let (last_used, stage, failures, written) = {
        let s = daemon.refresher.lock();
        let plan = s.plans.get(profile)?;
        (plan.last_used, plan.stage, plan.failures, plan.written)
    };
    let loaded = daemon.loaded();
    let settings = loaded.settings.get(profile)?;
    if settings.sink.is_none() && last_used.elapsed() > daemon.idle_after {
        tracing::debug!("profile `{profile}`: idle; background refresh stopped");
        return None;
    }
    let plan = Next {
        stage,
        failures,
        written,
        due: SystemTime::now(),
    };
    Some(match stage {
        Stage::Current => current(daemon, &loaded, settings, profile, plan).await,
        Stage::Ahead { obtained, expires } => {
            match ahead(daemon, &loaded, profile, plan, obtained, expires).await {
                Ok(next) => next,
                // Refreshed: write the sink and schedule the next refresh at once.
                Err(written) => {
                    let plan = Next {
                        stage: Stage::Current,
                        failures: 0,
                        written,
                        due: SystemTime::now(),
                    };
                    current(daemon, &loaded, settings, profile, plan).await
                }
            }
        }
    })
}

/// [`Stage::Current`]: get the current token (fetching it if there is none), write the sink if it is new, and
/// schedule the refresh ahead of its expiry; on failure, try again at the next attempt ([`retry_at`]).
async fn current(
    daemon: &Daemon,
    loaded: &super::Loaded,
    settings: &Served,
    profile: &str,
    mut plan: Next,
) -> Next {
    let current = match loaded.broker.token(profile, &TokenRequest::default()).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("background refresh of `{profile}`: {e}");
            daemon.metrics.refresh_failed(profile);
            plan.failures = plan.failures.saturating_add(1);
            plan.due = retry_at(loaded, profile, Some(&e), plan.failures);
            return plan;
        }
    };
    if plan.written != Some(current.obtained_at()) {
        if let Some(target) = &settings.sink {
            match super::sink::write(target, &settings.shown, &current, settings.min_ttl) {
                Ok(()) => {
                    plan.written = Some(current.obtained_at());
                    if !target.sink.on_change.is_empty() {
                        let (profile, argv) = (profile.to_owned(), target.sink.on_change.clone());
                        tokio::spawn(async move { super::sink::on_change(&profile, &argv).await });
                    }
                }
                Err(e) => tracing::warn!("profile `{profile}`: {e}"),
            }
        }
    }
    let jitter = current.lifetime().mul_f64(0.1 * fastrand::f64());
    Next {
        stage: Stage::Ahead {
            obtained: current.obtained_at(),
            expires: current.expires_at(),
        },
        due: current.expires_at() - current.margin(settings.min_ttl) - jitter,
        ..plan
    }
}

/// [`Stage::Ahead`]: refresh the token obtained at `obtained` ahead of its expiry. `Err` (with the plan's
/// `written`) when it was refreshed, so the caller goes on to [`Stage::Current`]; else the next plan.
async fn ahead(
    daemon: &Daemon,
    loaded: &super::Loaded,
    profile: &str,
    plan: Next,
    obtained: SystemTime,
    expires: SystemTime,
) -> Result<Next, Option<SystemTime>> {
    let ahead = TokenRequest {
        refresh_ahead: true,
        ..Default::default()
    };
    match loaded.broker.token(profile, &ahead).await {
        Ok(t) if t.obtained_at() > obtained => Err(plan.written),
        Ok(t)
            if t.refresh_not_before()
                .is_some_and(|at| at > SystemTime::now()) =>
        {
            // The provider handed back the token it already gave (Auth0 caches its tokens): not a failure. Ask
            // again when the core's pause is over, or when the token expires if sooner.
            let due = t.refresh_not_before().map_or(expires, |at| at.min(expires));
            Ok(Next {
                failures: 0,
                due,
                ..plan
            })
        }
        outcome => {
            // The broker served the old token (or none): the refresh failed.
            if let Err(e) = &outcome {
                tracing::warn!("background refresh of `{profile}`: {e}");
            }
            daemon.metrics.refresh_failed(profile);
            let now = SystemTime::now();
            let left = expires
                .duration_since(now)
                .unwrap_or_default()
                .max(Duration::from_millis(100));
            let failures = plan.failures.saturating_add(1);
            let due = retry_at(loaded, profile, outcome.as_ref().err(), failures).min(now + left);
            Ok(Next {
                stage: Stage::Current,
                failures,
                due,
                written: plan.written,
            })
        }
    }
}

/// When to run a failed refresh again: the next attempt the core remembers for `profile` (in the error, or its
/// status when the old token was served), so the daemon obeys the same cool-down and outage backoff as every other
/// caller; else, for a failure the core does not remember, [`Backoff::OUTAGE`] after `failures` in a row.
fn retry_at(
    loaded: &super::Loaded,
    profile: &str,
    error: Option<&Error>,
    failures: u32,
) -> SystemTime {
    let now = SystemTime::now();
    let remembered = error.and_then(Error::retry_at).or_else(|| {
        let status = loaded.broker.status(profile).ok()?;
        status.cooldown.map(|c| c.until)
    });
    match remembered {
        Some(at) if at > now => at,
        _ => Backoff::OUTAGE.next_attempt(now, failures),
    }
}
