//! Master high availability on openraft: several master-eligible nodes keep one registry through a
//! replicated log, and the Raft leader acts as the master.
//!
//! - [`log_store`]: the Raft log, the vote and the committed position in SQLite
//!   (`var/db/raft.db`, synchronous writes: a vote or an entry is on disk before it counts).
//! - [`state_machine`]: the registry as the state machine: each committed entry is a registry
//!   [`Command`](crate::registry::command::Command), applied on the registry's own thread in the
//!   same transaction as the applied position; snapshots are the registry's tables.
//!
//! What is replicated: agents (ids, names, IPs, keys, groups), groups, the change log workers follow
//! and enrollment idempotency tokens. What is not: agent statuses (workers resend them to whichever
//! node leads), files (the leader's sync roots; other master-eligible nodes sync them as workers do).

// openraft's traits fix the error type (`StorageError`, over 200 bytes); helpers that build it
// cannot box it.
#![allow(clippy::result_large_err)]

pub(crate) mod codec;
pub(crate) mod log_store;
pub mod network;
pub(crate) mod state_machine;
pub mod writes;

use crate::registry::command::{Command, Outcome};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The Raft types of a registry: entries carry registry commands, answers are their outcomes.
    pub RegistryRaft:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<RegistryRaft>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// openraft's storage error for this type config.
pub(crate) type StorageError = openraft::StorageError<u64>;

/// Raft's timers, in milliseconds, and how much log it keeps.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: u64,
    pub election_min: u64,
    pub election_max: u64,
    /// How many entries make a new snapshot.
    pub snapshot_every: u64,
    /// Entries kept after a snapshot (a follower behind by fewer gets entries, not a snapshot).
    pub logs_kept: u64,
}

impl Timing {
    /// A leader heard from every 250 ms; a follower that hears nothing for 1 to 2 s (random, so
    /// that one candidate usually wins) starts an election: a new leader within about 2.5 s. A
    /// snapshot every 10,000 entries, 1,000 kept after it.
    pub const DEFAULT: Timing =
        Timing { heartbeat: 250, election_min: 1_000, election_max: 2_000, snapshot_every: 10_000, logs_kept: 1_000 };
}

/// The address of member `id` in the membership `metrics` report.
pub fn member_addr(metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>, id: u64) -> Option<String> {
    metrics.membership_config.nodes().find(|(m, _)| **m == id).map(|(_, n)| n.addr.clone())
}

/// The registry generation every member of a replicated group uses: a digest of the cluster's
/// name and its master-eligible nodes (the same on every member, never 0).
pub(crate) fn group_generation(cluster_name: &str, masters: &[String]) -> u64 {
    use md5::Digest;
    let digest = md5::Md5::digest(format!("wazuh-multi-node raft group {cluster_name} {}", masters.join(",")));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first) & (i64::MAX as u64)).max(1)
}

/// Why a Raft member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::StoreError),
    #[error(
        "the registry in {} already holds agents of a single master; a replicated group starts from empty registries",
        .0.display()
    )]
    NotEmpty(std::path::PathBuf),
    #[error("cannot open the raft log: {0}")]
    Log(crate::registry::StoreError),
    #[error("cannot start raft: {0}")]
    Raft(String),
}

/// Starts this master-eligible node's Raft member `id` (1-based place in `masters`, the addresses
/// of all of them, the same list on every node), over `registry` and the log in `data_dir`, and
/// proposes the membership if no member has yet (every member may: the same proposal wins once).
pub async fn start_member(
    id: u64,
    masters: &[String],
    settings: std::sync::Arc<crate::settings::ChannelSettings>,
    registry: crate::registry::StoreHandle<crate::registry::Registry>,
    data_dir: &std::path::Path,
    timing: Timing,
) -> Result<network::Raft, StartError> {
    let config = openraft::Config {
        cluster_name: settings.cluster_name.clone(),
        heartbeat_interval: timing.heartbeat,
        election_timeout_min: timing.election_min,
        election_timeout_max: timing.election_max,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
        max_in_snapshot_log_to_keep: timing.logs_kept,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Settings(e.to_string()))?;
    let generation = group_generation(&settings.cluster_name, masters);
    let adopted = registry.run(move |r| r.adopt_generation(generation)).await?;
    if !adopted {
        return Err(StartError::NotEmpty(data_dir.to_path_buf()));
    }
    let log = log_store::LogStore::open(data_dir).map_err(StartError::Log)?;
    let sm = state_machine::StateMachine::new(registry, data_dir);
    let net = network::PeerNetwork::new(settings, actix_rt::Arbiter::current());
    let raft = network::Raft::new(id, std::sync::Arc::new(config), net, log, sm)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if !raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
        let members: std::collections::BTreeMap<u64, openraft::BasicNode> = masters
            .iter()
            .enumerate()
            .map(|(i, addr)| (i as u64 + 1, openraft::BasicNode { addr: addr.clone() }))
            .collect();
        if let Err(e) = raft.initialize(members).await {
            // Another member's proposal got here first: the same membership, nothing to do.
            log::debug!("raft membership already proposed: {e}");
        }
    }
    Ok(raft)
}
