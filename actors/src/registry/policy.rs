//! The enrollment replacement policy, as pure decisions: when may a new enrollment take the name
//! (or address) of an agent that already holds it? (Wazuh's `force` options.) No database, no
//! clock: the registry reads the incumbent and the time and asks [`ReplacePolicy::decide`].

use sha1::Digest as _;

/// When a duplicate name (or IP) may be taken over by a new enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacePolicy {
    /// Replacement allowed at all (Wazuh's `force` option, on by default).
    pub enabled: bool,
    /// The old agent must have been disconnected (or never connected) for at least this long...
    pub disconnected_for_ms: u64,
    /// ...and registered at least this long ago.
    pub registered_for_ms: u64,
}

impl Default for ReplacePolicy {
    fn default() -> Self {
        Self { enabled: true, disconnected_for_ms: 3_600_000, registered_for_ms: 3_600_000 }
    }
}

/// The agent that holds the name or address today, as the registry stores it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incumbent<'a> {
    pub id: u32,
    pub name: &'a str,
    pub key: &'a str,
    pub registered_at_ms: u64,
    /// `never_connected`, `pending`, `active` or `disconnected`.
    pub status: &'a str,
    pub disconnected_at_ms: Option<u64>,
    pub last_keepalive_ms: Option<u64>,
}

/// What to do with the incumbent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Remove it; the new enrollment takes its place.
    Replace,
    /// Keep it; the new enrollment is refused as a duplicate.
    Keep(KeepReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepReason {
    /// Replacement is switched off.
    Disabled,
    /// Registered too recently.
    TooRecent,
    /// Connected now, or disconnected too recently.
    RecentlySeen,
    /// The request proves it holds the incumbent's key: it is the same agent, not a new one.
    SameKey,
}

/// What an agent sends to prove it holds a key: SHA-1 of `ID NAME KEY` run together, in hex.
pub fn key_hash(id: u32, name: &str, key: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("{id:03}{name}{key}").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl ReplacePolicy {
    /// Decides on `old` for an enrollment carrying `key_hash`, at `now_ms` (wall clock).
    pub(crate) fn decide(&self, old: &Incumbent<'_>, key_hash: Option<&str>, now_ms: u64) -> Verdict {
        if !self.enabled {
            return Verdict::Keep(KeepReason::Disabled);
        }
        // An agent re-enrolling with the key it already holds is not a new agent.
        if key_hash.is_some_and(|h| h.eq_ignore_ascii_case(&self::key_hash(old.id, old.name, old.key))) {
            return Verdict::Keep(KeepReason::SameKey);
        }
        // A clock that went backwards makes everything look recent: keep.
        if now_ms.saturating_sub(old.registered_at_ms) < self.registered_for_ms {
            return Verdict::Keep(KeepReason::TooRecent);
        }
        let gone_long_enough = match old.status {
            "never_connected" => true,
            "disconnected" => {
                let since = old.disconnected_at_ms.or(old.last_keepalive_ms).unwrap_or(0);
                now_ms.saturating_sub(since) >= self.disconnected_for_ms
            }
            _ => false,
        };
        if gone_long_enough {
            Verdict::Replace
        } else {
            Verdict::Keep(KeepReason::RecentlySeen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;
    const NOW: u64 = 1_800_000_000_000;

    fn old(status: &'static str) -> Incumbent<'static> {
        Incumbent {
            id: 7,
            name: "web",
            key: "k",
            registered_at_ms: NOW - 2 * HOUR,
            status,
            disconnected_at_ms: None,
            last_keepalive_ms: None,
        }
    }

    #[test]
    fn an_old_never_connected_agent_is_replaced_by_default() {
        assert_eq!(ReplacePolicy::default().decide(&old("never_connected"), None, NOW), Verdict::Replace);
    }

    #[test]
    fn nothing_is_replaced_when_the_policy_is_off() {
        let off = ReplacePolicy { enabled: false, ..ReplacePolicy::default() };
        assert_eq!(off.decide(&old("never_connected"), None, NOW), Verdict::Keep(KeepReason::Disabled));
    }

    #[test]
    fn a_recent_registration_is_kept() {
        let fresh = Incumbent { registered_at_ms: NOW - HOUR + 1, ..old("never_connected") };
        assert_eq!(ReplacePolicy::default().decide(&fresh, None, NOW), Verdict::Keep(KeepReason::TooRecent));
        // A clock set backwards since: still kept, never replaced by accident.
        let future = Incumbent { registered_at_ms: NOW + HOUR, ..old("never_connected") };
        assert_eq!(ReplacePolicy::default().decide(&future, None, NOW), Verdict::Keep(KeepReason::TooRecent));
    }

    #[test]
    fn connected_agents_are_kept_and_disconnected_ones_after_the_grace() {
        let p = ReplacePolicy::default();
        for status in ["active", "pending"] {
            assert_eq!(p.decide(&old(status), None, NOW), Verdict::Keep(KeepReason::RecentlySeen), "{status}");
        }
        let recent = Incumbent { disconnected_at_ms: Some(NOW - HOUR / 2), ..old("disconnected") };
        assert_eq!(p.decide(&recent, None, NOW), Verdict::Keep(KeepReason::RecentlySeen));
        let long_ago = Incumbent { disconnected_at_ms: Some(NOW - HOUR), ..old("disconnected") };
        assert_eq!(p.decide(&long_ago, None, NOW), Verdict::Replace);
        // Without a disconnection time, the last keep-alive counts.
        let by_keepalive = Incumbent { last_keepalive_ms: Some(NOW - 10), ..old("disconnected") };
        assert_eq!(p.decide(&by_keepalive, None, NOW), Verdict::Keep(KeepReason::RecentlySeen));
    }

    #[test]
    fn the_holder_of_the_key_is_the_same_agent_whatever_its_case() {
        let p = ReplacePolicy { enabled: true, disconnected_for_ms: 0, registered_for_ms: 0 };
        let h = key_hash(7, "web", "k");
        assert_eq!(h.len(), 40);
        assert_eq!(p.decide(&old("never_connected"), Some(&h), NOW), Verdict::Keep(KeepReason::SameKey));
        assert_eq!(p.decide(&old("never_connected"), Some(&h.to_uppercase()), NOW), Verdict::Keep(KeepReason::SameKey));
        assert_eq!(p.decide(&old("never_connected"), Some("00"), NOW), Verdict::Replace);
    }
}
