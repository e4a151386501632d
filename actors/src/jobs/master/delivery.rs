//! The delivery state of AgentGroupsSend (master end), as pure decisions: no actix, no sockets, no
//! registry. The job feeds it events (the worker's position, the table moving, a push's outcome)
//! and carries out the command it answers with.
//!
//! The worker tells its position when it connects; from then on the master pushes "everything
//! after the acknowledged position" whenever the table is ahead of it, one push at a time. An
//! acknowledgement whose hash disagrees makes the next push a snapshot. A failed push (an error
//! answer, a timeout, a store error) is retried after an exponential back-off from the same
//! position: nothing is skipped, nothing is sent twice at once.

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The worker says it holds everything up to `seq` (sent when it connects).
    Position(u64),
    /// The master's table moved (its position is passed to [`Delivery::on`] as `latest`).
    Changed,
    /// The push in flight was acknowledged: the worker is at `seq`, and its hash agrees with the
    /// master's at that position (or not).
    Acked { seq: u64, agrees: bool },
    /// The push in flight failed.
    Failed,
    /// The back-off after a failure is over.
    RetryDue,
    /// The job restarted (after a panic): whatever push was in flight is lost; back off, then
    /// push again from the acknowledged position.
    Interrupted,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Send the changes after `from` (the whole table when `snapshot`), then report
    /// [`Event::Acked`] or [`Event::Failed`].
    Push { from: u64, snapshot: bool },
    /// Wait out the back-off for `failures` failures in a row, then report [`Event::RetryDue`].
    BackOff { failures: u32 },
    /// Nothing to do until the next event.
    Idle,
}

/// The delivery state of one worker connection.
#[derive(Debug, Default, Clone)]
pub(crate) struct Delivery {
    /// The worker's confirmed position; `None` until it tells.
    acked: Option<u64>,
    in_flight: bool,
    force_snapshot: bool,
    failures: u32,
    backing_off: bool,
}

impl Delivery {
    #[cfg(test)]
    /// The worker's confirmed position, if known.
    pub fn acked(&self) -> Option<u64> {
        self.acked
    }

    #[cfg(test)]
    /// Failed pushes in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes in `event`; `latest` is the master's table position as last published (`None`
    /// before the first publication: then a push reads it).
    pub fn on(&mut self, event: Event, latest: Option<u64>) -> Command {
        match event {
            Event::Position(seq) => self.acked = Some(seq),
            Event::Changed => {}
            Event::Acked { seq, agrees } => {
                self.in_flight = false;
                self.failures = 0;
                self.acked = Some(seq);
                if !agrees {
                    self.force_snapshot = true;
                }
            }
            Event::Failed => {
                self.in_flight = false;
                self.failures = self.failures.saturating_add(1);
                self.backing_off = true;
                return Command::BackOff { failures: self.failures };
            }
            Event::RetryDue => self.backing_off = false,
            Event::Interrupted => {
                let lost = self.in_flight;
                self.in_flight = false;
                if lost {
                    self.failures = self.failures.saturating_add(1);
                }
                self.backing_off = true;
                return Command::BackOff { failures: self.failures.max(1) };
            }
        }
        self.next(latest)
    }

    fn next(&mut self, latest: Option<u64>) -> Command {
        if self.in_flight || self.backing_off {
            return Command::Idle;
        }
        let Some(acked) = self.acked else { return Command::Idle };
        if !self.force_snapshot && latest == Some(acked) {
            return Command::Idle;
        }
        self.in_flight = true;
        Command::Push { from: acked, snapshot: std::mem::take(&mut self.force_snapshot) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Command::*;

    #[test]
    fn nothing_is_pushed_before_the_worker_tells_its_position() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Changed, Some(5)), Idle);
        assert_eq!(d.on(Event::Position(3), Some(5)), Push { from: 3, snapshot: false });
    }

    #[test]
    fn a_worker_already_up_to_date_gets_nothing() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(5), Some(5)), Idle);
        assert_eq!(d.on(Event::Changed, Some(5)), Idle);
    }

    #[test]
    fn before_the_first_publication_a_push_reads_the_table() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(0), None), Push { from: 0, snapshot: false });
    }

    #[test]
    fn one_push_at_a_time_and_what_changed_meanwhile_follows() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(1), Some(2)), Push { from: 1, snapshot: false });
        // The table moves twice while the push is in flight: no second push yet.
        assert_eq!(d.on(Event::Changed, Some(3)), Idle);
        assert_eq!(d.on(Event::Changed, Some(4)), Idle);
        // The push brought the worker to 2 (what the table held when it was read): push the rest.
        assert_eq!(d.on(Event::Acked { seq: 2, agrees: true }, Some(4)), Push { from: 2, snapshot: false });
        assert_eq!(d.on(Event::Acked { seq: 4, agrees: true }, Some(4)), Idle);
        assert_eq!(d.acked(), Some(4));
    }

    #[test]
    fn a_disagreeing_hash_makes_the_next_push_a_snapshot_even_when_positions_match() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(1), Some(2)), Push { from: 1, snapshot: false });
        assert_eq!(d.on(Event::Acked { seq: 2, agrees: false }, Some(2)), Push { from: 2, snapshot: true });
        assert_eq!(d.on(Event::Acked { seq: 2, agrees: true }, Some(2)), Idle);
    }

    #[test]
    fn a_position_beyond_the_master_is_pushed_to_and_the_registry_answers_with_a_snapshot() {
        // (The registry turns "changes after 900" at position 10 into a snapshot.)
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(900), Some(10)), Push { from: 900, snapshot: false });
    }

    #[test]
    fn failures_back_off_and_retry_from_the_same_position() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(1), Some(3)), Push { from: 1, snapshot: false });
        assert_eq!(d.on(Event::Failed, Some(3)), BackOff { failures: 1 });
        // Changes during the back-off do not cut it short.
        assert_eq!(d.on(Event::Changed, Some(4)), Idle);
        assert_eq!(d.on(Event::RetryDue, Some(4)), Push { from: 1, snapshot: false });
        assert_eq!(d.on(Event::Failed, Some(4)), BackOff { failures: 2 });
        assert_eq!(d.on(Event::RetryDue, Some(4)), Push { from: 1, snapshot: false });
        assert_eq!(d.on(Event::Acked { seq: 4, agrees: true }, Some(4)), Idle);
        assert_eq!(d.failures(), 0, "a success resets the count");
    }

    #[test]
    fn a_restart_mid_push_backs_off_then_pushes_again() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(1), Some(3)), Push { from: 1, snapshot: false });
        assert_eq!(d.on(Event::Interrupted, Some(3)), BackOff { failures: 1 });
        assert_eq!(d.on(Event::Changed, Some(3)), Idle);
        assert_eq!(d.on(Event::RetryDue, Some(3)), Push { from: 1, snapshot: false });
    }

    #[test]
    fn a_new_connection_position_replaces_the_old_one() {
        let mut d = Delivery::default();
        assert_eq!(d.on(Event::Position(5), Some(5)), Idle);
        // The worker lost its replica and reconnected at 0.
        assert_eq!(d.on(Event::Position(0), Some(5)), Push { from: 0, snapshot: false });
    }
}
