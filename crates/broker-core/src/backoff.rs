//! The one backoff of the broker: how long to wait after `n` failures in a row. Three schedules use it: the retry
//! round inside one fetch ([`Backoff::RETRY`]), the next attempt remembered after an outage ([`Backoff::OUTAGE`],
//! kept in the cache entry), and the daemon's background refresh, which waits for that remembered attempt and falls
//! back on [`Backoff::OUTAGE`] only for failures the core does not remember (a broken config, say).
//!
//! *Invariant: a delay is pure arithmetic on its inputs (doubling from `first`, at most `max`, then the jitter), so
//! time is whatever clock the caller waits on: the broker's `Clock` (a `ManualClock` in tests) or the daemon's
//! schedule. No delay overflows, whatever `failures` is.*

use std::time::{Duration, SystemTime};

/// Exponential backoff: `first`, doubling with each failure, at most `max`, with or without full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub first: Duration,
    /// The longest wait (before jitter).
    pub max: Duration,
    /// Full jitter: the wait is uniform in `[0, the doubled delay]`, so many clients that failed together do not
    /// come back together.
    pub jitter: bool,
}

impl Backoff {
    /// Retries within one fetch's `retry` budget: full jitter over 250 ms doubling to 8 s.
    pub const RETRY: Backoff = Backoff {
        first: Duration::from_millis(250),
        max: Duration::from_secs(8),
        jitter: true,
    };

    /// The next attempt after an outage (docs/reference.md §4): 2 s doubling to 60 s, no jitter (the time is
    /// remembered and shared, so every process and host waits for the same one).
    pub const OUTAGE: Backoff = Backoff {
        first: Duration::from_secs(2),
        max: Duration::from_secs(60),
        jitter: false,
    };

    /// The wait after `failures` failures in a row (the first failure is 1; 0 waits nothing).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doubled = self
            .first
            .saturating_mul(1u32 << (failures - 1).min(31))
            .min(self.max);
        if self.jitter {
            doubled.mul_f64(fastrand::f64())
        } else {
            doubled
        }
    }

    /// When the next attempt is due after `failures` failures, the last one at `now`.
    pub fn next_attempt(&self, now: SystemTime, failures: u32) -> SystemTime {
        crate::clock::add_saturating(now, self.delay(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedules_double_from_their_first_wait_to_their_cap() {
        let secs = |b: Backoff, n| b.delay(n).as_secs_f64();
        assert_eq!(
            (1..=7)
                .map(|n| secs(Backoff::OUTAGE, n))
                .collect::<Vec<_>>(),
            [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
        );
        assert_eq!(Backoff::OUTAGE.delay(0), Duration::ZERO);
        assert_eq!(Backoff::OUTAGE.delay(u32::MAX), Duration::from_secs(60));
        for n in 1..=12 {
            let cap = Duration::from_millis(250)
                .saturating_mul(1 << (n - 1).min(5))
                .min(Duration::from_secs(8));
            for _ in 0..50 {
                assert!(Backoff::RETRY.delay(n) <= cap, "attempt {n}");
            }
        }
    }

    #[test]
    fn the_next_attempt_is_on_the_callers_clock_and_never_overflows() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            Backoff::OUTAGE.next_attempt(now, 2),
            now + Duration::from_secs(4)
        );
        let far = Backoff {
            first: Duration::MAX,
            max: Duration::MAX,
            jitter: false,
        };
        assert!(far.next_attempt(now, 40) >= now);
    }
}
