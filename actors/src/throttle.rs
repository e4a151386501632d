//! One log line per interval for something that can happen thousands of times a second (a flood
//! of refused connections, a queue that stays full): the first occurrence is said at once, the
//! next one an interval later with how many were not said in between. The node's one rate limiter
//! for log lines (jobs' failures, refusals, floods).

use std::time::Duration;
// tokio's clock (the system clock, unless a test paused it), usable from any thread.
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    /// `Some(n)` when a line may be written now, `n` occurrences having gone unsaid since the
    /// last one; `None` (and counted) otherwise.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Whether the last line is older than the interval (a throttle that may be forgotten).
    pub fn idle(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= self.every)
    }

    /// Moves the last line `by` into the past (tests).
    #[cfg(test)]
    pub(crate) fn age(&mut self, by: Duration) {
        self.last = self.last.and_then(|t| t.checked_sub(by));
    }
}

/// " (N similar suppressed)" for a line said after `n` were not; "" when none were.
pub fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_said_then_one_per_interval_with_the_count_between() {
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        assert!(!t.idle());
        t.age(Duration::from_secs(10));
        assert!(t.idle());
        assert_eq!(t.allow(), Some(2));
        assert_eq!(t.allow(), None);
    }

    #[actix_rt::test]
    async fn a_burst_is_held_back_and_reported_on_the_clock_tests_can_pause() {
        tokio::time::pause();
        let mut l = Throttle::new(Duration::from_secs(1));
        assert_eq!(l.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow(), None);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.allow(), Some(5));
    }
}
