//! Protocol versions and their negotiation.
//!
//! Each node announces the range of protocol versions it speaks; the pair settles on the highest
//! version both speak. A node supports its own minor version and at least the previous one, so a cluster can
//! be upgraded one node at a time (Wazuh demands an exact match and so forbids rolling upgrades).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The version this build speaks natively.
///
/// 2.0: workers answer failed requests with an error reply, agent and group changes fail with a
/// typed [`crate::message::AdminError`], and job reports carry a typed state and numeric figures.
/// 2.1: the master may ask a worker to reload analysisd's ruleset
/// ([`crate::message::MasterToWorker::ReloadRuleset`]); it never asks a 2.0 worker.
/// 2.2: the API's users travel with the agent table
/// ([`crate::message::AgentChange::UserSet`]) and workers forward user changes
/// ([`crate::message::AdminRequest::CreateUser`] and the like) and the enrollment password and
/// client certificate (the master checks them); none of it goes to or from a 2.1 peer.
/// 2.3: Raft RPC bodies between master-eligible nodes are MessagePack (JSON to and
/// from a 2.2 or 2.1 peer).
/// 2.4: a worker's API forwards reads of agents and groups, and commands to agents,
/// to the master ([`crate::message::WorkerToMaster::ApiCall`]), so that every node answers them
/// alike; the master has a worker send agents their commands
/// ([`crate::message::MasterToWorker::AgentCommand`]). A worker of an older master answers reads
/// itself; an older worker is never asked to send commands.
/// 2.5 (this build): a worker relays to the master what the Wazuh daemons beside it ask of agents
/// other nodes hold (active responses, requests; [`crate::message::WorkerToMaster::AgentRelay`]);
/// with an older master it reaches only its own agents. 1.x nodes (unreleased development builds) are refused with a version
/// message.
pub const CURRENT: ProtocolVersion = ProtocolVersion::new(2, 5);
/// The oldest version this build still speaks.
pub const MIN_SUPPORTED: ProtocolVersion = ProtocolVersion::new(2, 1);
/// The first version whose peers exchange the API's users and enrollment policy.
pub const USERS: ProtocolVersion = ProtocolVersion::new(2, 2);
/// The first version whose master-eligible peers encode Raft RPC bodies in MessagePack.
pub const RAFT_MESSAGEPACK: ProtocolVersion = ProtocolVersion::new(2, 3);
/// The first version whose master serves the API calls its workers forward, and whose workers send
/// agents the master's commands.
pub const API_CALLS: ProtocolVersion = ProtocolVersion::new(2, 4);
/// The first version whose master relays what a worker's Wazuh daemons ask of other nodes' agents.
pub const AGENT_RELAY: ProtocolVersion = ProtocolVersion::new(2, 5);

/// An inclusive range of versions a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: ProtocolVersion,
    pub max: ProtocolVersion,
}

impl VersionRange {
    pub const fn ours() -> Self {
        Self { min: MIN_SUPPORTED, max: CURRENT }
    }

    /// The highest version in both ranges, if they overlap.
    pub fn negotiate(&self, other: &VersionRange) -> Option<ProtocolVersion> {
        let low = self.min.max(other.min);
        let high = self.max.min(other.max);
        (low <= high && self.min <= self.max && other.min <= other.max).then_some(high)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: (u16, u16), b: (u16, u16)) -> VersionRange {
        VersionRange { min: ProtocolVersion::new(a.0, a.1), max: ProtocolVersion::new(b.0, b.1) }
    }

    #[test]
    fn one_minor_apart_still_joins_at_the_older_version() {
        let old = r((1, 0), (1, 0));
        let new = r((1, 0), (1, 1));
        assert_eq!(old.negotiate(&new), Some(ProtocolVersion::new(1, 0)));
        assert_eq!(new.negotiate(&old), Some(ProtocolVersion::new(1, 0)));
        let newer = r((1, 1), (1, 2));
        assert_eq!(new.negotiate(&newer), Some(ProtocolVersion::new(1, 1)));
    }

    #[test]
    fn disjoint_or_inverted_ranges_do_not_negotiate() {
        assert_eq!(r((1, 0), (1, 0)).negotiate(&r((2, 0), (2, 1))), None);
        assert_eq!(r((1, 0), (1, 3)).negotiate(&r((1, 5), (1, 2))), None);
    }

    #[test]
    fn our_range_is_sane() {
        let ours = VersionRange::ours();
        assert_eq!(ours.negotiate(&ours), Some(CURRENT));
    }
}
