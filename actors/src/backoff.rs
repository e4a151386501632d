//! Exponential back-off with jitter, and the randomness it draws on.
//!
//! Used for a worker's redials and for jobs that restart after a failure. Randomness comes from the
//! operating system's generator (`getrandom`); it only spreads retries apart (so that 25 workers do
//! not redial in lockstep), so a failing generator degrades to no jitter rather than an error.

use std::time::Duration;

/// A random number from the operating system's generator (0 if it is unavailable).
pub fn random_u64() -> u64 {
    getrandom::u64().unwrap_or(0)
}

/// Retry delays that start at `min`, double with each consecutive failure, and stop growing at
/// `max`; each is drawn from the upper half of its step, `[base/2, base]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min) }
    }

    /// The delay before retry number `failures` (0-based), jittered from the OS generator.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, random_u64())
    }

    /// [`Backoff::delay`] with the random draw given (deterministic, for tests).
    pub(crate) fn delay_with(&self, failures: u32, random: u64) -> Duration {
        let base = self.base(failures);
        let half = base / 2;
        let spread = (base - half).as_micros() as u64;
        let jitter = if spread == 0 { 0 } else { random % (spread + 1) };
        half + Duration::from_micros(jitter)
    }

    /// The top of the range for retry number `failures`: `min(min * 2^failures, max)`.
    pub fn base(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The most retries that can start within `window` after a first failure: what a log or a
    /// health counter may show at most for a job failing without pause (every delay is at least
    /// half its step, so the steps up to `max` are counted at half length).
    pub fn most_retries_within(&self, window: Duration) -> u32 {
        let mut elapsed = Duration::ZERO;
        let mut n = 0u32;
        loop {
            elapsed += self.base(n) / 2;
            if elapsed > window {
                return n + 1;
            }
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_small_doubles_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        for r in [0, 1, 12345, u64::MAX] {
            let first = b.delay_with(0, r);
            assert!(first <= b.min && first >= b.min / 2, "{first:?}");
            let third = b.delay_with(2, r);
            assert!(third <= Duration::from_secs(1) && third >= Duration::from_millis(500));
            for n in [10, 31, 32, 1000, u32::MAX] {
                let late = b.delay_with(n, r);
                assert!(late <= b.max && late >= b.max / 2, "{n}: {late:?}");
            }
        }
        assert_ne!(b.delay_with(3, 1), b.delay_with(3, 999_999));
    }

    #[test]
    fn the_os_generator_spreads_delays() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let draws: std::collections::HashSet<Duration> = (0..20).map(|_| b.delay(4)).collect();
        assert!(draws.len() > 1, "20 draws gave one value: {draws:?}");
    }

    #[test]
    fn retries_within_a_window_are_bounded_by_the_steps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Half-steps 50, 100, 200, 400, 800, 1600 (3150 ms), then 2500 each: 7 fit in 5 s.
        assert_eq!(b.most_retries_within(Duration::from_secs(5)), 7);
        assert_eq!(b.most_retries_within(Duration::ZERO), 1);
        let n = b.most_retries_within(Duration::from_secs(60));
        assert!((26..=30).contains(&n), "{n}");
    }
}
