//! The job actors: one set per worker connection on each end, plus the master's two shared ones.
//!
//! | job | master end ([`master`]) | worker end ([`worker`]) |
//! |---|---|---|
//! | `KeepAlive` | server: answers keep-alives | periodic: one every keep-alive interval, with its siblings' health |
//! | `AgentInfo` | server: stores agent statuses | periodic: sends its agents' statuses |
//! | `AgentGroupsSend` | pusher: agent-table changes from `LocalAgentGroups` | server: applies them, acks |
//! | `Integrity` | server: digests, plans, file contents; announces changes | periodic: sync rounds |
//! | `Registration` | server: forwarded enrollments and changes | (the worker's link forwards them) |
//!
//! `LocalAgentGroups` and `LocalIntegrity` ([`local`]) run once per master, shared by all
//! connections. [`runtime`] holds what every job shares: the two failure policies, fault
//! injection, stopping.

pub mod local;
pub mod master;
pub mod runtime;
pub mod worker;
