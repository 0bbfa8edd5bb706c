//! Time, injected: the cache asks a [`Clock`] so tests can move time without sleeping.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

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
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// `CLOCK_REALTIME_COARSE` plus its resolution: a few ns instead of a full `clock_gettime`, and
    /// never behind the real time.
    fn now_upper_bound(&self) -> SystemTime {
        use rustix::time::{clock_getres, clock_gettime, ClockId};
        static TICK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
        let tick = *TICK.get_or_init(|| {
            let r = clock_getres(ClockId::RealtimeCoarse);
            Duration::new(
                u64::try_from(r.tv_sec).unwrap_or(0),
                u32::try_from(r.tv_nsec).unwrap_or(0),
            )
        });
        let t = clock_gettime(ClockId::RealtimeCoarse);
        let since_epoch = Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        );
        SystemTime::UNIX_EPOCH + since_epoch + tick
    }
}

/// A clock that only moves when told to: for tests of expiry and margins.
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
}

/// Seconds since the Unix epoch, fractional.
pub fn to_unix(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The time `secs` seconds after the Unix epoch; `None` when not representable.
pub fn from_unix(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upper_bound_is_never_behind_the_real_clock() {
        for _ in 0..1000 {
            let real = SystemClock.now();
            assert!(SystemClock.now_upper_bound() >= real);
        }
    }
}
