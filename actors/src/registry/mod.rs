//! The agent registry: the master's source of truth, and each worker's replica, both in SQLite
//! (file-backed, WAL), each owned by one thread.
//!
//! - [`schema`]: opening a database, the tables, row readers, ids, the table hash.
//! - [`master`]: the master's [`Registry`]: enrollment, deletion, groups, statuses, the change log.
//! - [`policy`]: when a new enrollment may replace an agent holding its name (pure decisions).
//! - [`admin`]: agent and group changes from an API, with typed refusals.
//! - [`command`]: changes as commands whose application is deterministic (for a replicated log).
//! - [`replica`]: a worker's [`Replica`], following the master's change log.
//! - [`client_keys`]: `etc/client.keys`, Wazuh-compatible, kept up to date per change.
//! - [`derived`]: what follows each committed change (client.keys, the node's key index).
//! - [`query`]: pages of agents (filters, sort, offset, limit) for the API.
//! - [`counts`]: agent counts by status and node, kept in memory for summaries and metrics.
//! - [`store`]: the thread that owns one store and runs commands in group commits.
//! - [`table`]: the agent table both stores keep (connection, position, hash, transactions, what
//!   follows each commit), which [`Registry`] and [`Replica`] each extend.
//! - [`user_store`]: the API's users in SQLite and in memory (tables, checks, the directory).
//! - [`users`]: changes of the API's users on the master (sent to replicas with the agent changes).
//!
//! A global hash (XOR of the MD5 of every agent's `id name ip key groups` line) is kept
//! incrementally on both sides; equal hashes mean equal tables.

pub mod admin;
pub mod changes;
pub mod claims;
pub(crate) mod client_keys;
pub mod command;
pub mod counts;
pub mod derived;
pub mod enroll;
pub mod groups;
pub mod master;
pub mod policy;
pub mod query;
pub mod reader;
pub mod replica;
pub mod rows;
pub mod schema;
pub mod snapshot;
pub mod store;
pub mod table;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod user_store;
pub mod users;

pub use derived::KeySink;
pub use enroll::{Fixed, NewAgent};
pub use master::Registry;
pub use policy::ReplacePolicy;
pub use replica::Replica;
pub use rows::{AgentRow, RowRef};
pub use schema::{fmt_id, parse_id, DEFAULT_GROUP};
pub use store::{Store, StoreError, StoreHandle};
