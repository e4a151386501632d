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

pub mod log_store;
pub mod network;
pub mod state_machine;
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
pub type StorageError = openraft::StorageError<u64>;
