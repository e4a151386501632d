//! Time, in the two forms the node uses.
//!
//! - The wall clock, as milliseconds since the Unix epoch: what nodes exchange (keep-alives,
//!   agents' last contact) and what the API shows. [`now_ms`] is the only place that reads it.
//! - The monotonic clock of the actors: `actix::clock::Instant` (tokio's), so that tests running
//!   under paused tokio time move intervals, back-offs and silence checks forward at will. Code
//!   that measures durations inside actors uses it, never `std::time::Instant`.

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wall_clock_is_after_2020() {
        assert!(super::now_ms() > 1_577_836_800_000);
    }
}
