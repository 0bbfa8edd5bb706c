//! Time, injected: the cache asks a [`Clock`] so tests can move time without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// What [`Clock::sleep`] returns.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of wall-clock time. Expiry is wall-clock time because cache entries outlive the process.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// A time never earlier than the current time, possibly later by a clock tick, and cheaper to read.
    /// The warm path compares expiry against it, so a token is never served past its expiry.
    /// Defaults to [`Clock::now`].
    fn now_upper_bound(&self) -> SystemTime {
        self.now()
    }

    /// Waits `d` on this clock: every wait of the broker (retry backoff) goes through here. Defaults to tokio's
    /// timer.
    fn sleep(&self, d: Duration) -> Sleep<'_> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// How far [`SystemClock::now_upper_bound`] leads the coarse clock.
pub const COARSE_SLACK: Duration = Duration::from_secs(1);

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// `CLOCK_REALTIME_COARSE` plus [`COARSE_SLACK`]: a few ns instead of ~40 ns for a full `clock_gettime`
    /// on some VMs. The coarse clock trails the real one by a tick or two (4-8 ms measured here); the slack
    /// covers that a hundred times over. The cost: the warm path treats a token as due for refresh up to a
    /// second early, and the refresh path, which re-checks with [`Clock::now`], then serves it without a fetch.
    fn now_upper_bound(&self) -> SystemTime {
        use rustix::time::{clock_gettime, ClockId};
        let t = clock_gettime(ClockId::RealtimeCoarse);
        let since_epoch = Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        );
        SystemTime::UNIX_EPOCH + since_epoch + COARSE_SLACK
    }
}

/// A clock that only moves when told to: for tests of expiry, margins and retries.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use broker_core::clock::{Clock, ManualClock};
///
/// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let clock = ManualClock::new(start);
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now(), start + Duration::from_secs(90));
/// ```
/// Sleeping on it moves it
/// forward to the wake-up time at once (like tokio's paused clock with auto-advance), so a retry schedule of
/// thirty seconds runs in microseconds and its times are exact.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep(&self, d: Duration) -> Sleep<'_> {
        Box::pin(async move {
            {
                let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
                *now = add_saturating(*now, d);
            }
            // Let other tasks see the new time before this one goes on, as a real sleep would.
            tokio::task::yield_now().await;
        })
    }
}

/// The time `secs` seconds after the Unix epoch; `None` when not representable.
pub fn from_unix(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

/// A century: what "later than anything" saturates to.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `t + d`, saturating instead of panicking: every time addition with an outside value (a `Retry-After`, a
/// configured duration) goes through here.
pub fn add_saturating(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .or_else(|| t.checked_add(FOREVER))
        .unwrap_or(t)
}

/// `Instant::now() + d`, saturating like [`add_saturating`].
pub fn instant_after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(FOREVER))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upper_bound_is_never_behind_the_real_clock() {
        for _ in 0..100_000 {
            let real = SystemClock.now();
            let upper = SystemClock.now_upper_bound();
            assert!(upper >= real, "{upper:?} < {real:?}");
        }
    }
}
