//! The master's agent registry: the source of truth for agents, keys and groups.
//!
//! Ids are allocated as Wazuh does (`001`, one above the highest ever issued, never reused), keys
//! come from the OS's CSPRNG, and every change is logged with a monotonic sequence number in the
//! same transaction, so workers can ask for "everything after N". `client.keys` and the node's key
//! index follow each committed change ([`super::derived`]); agent counts by status and node are
//! kept in memory ([`super::counts`]).
//!
//! `Registry` is an [`AgentTable`] (shared with the replica) plus what only the master does, each
//! concern in its own file: [`super::enroll`] (enrollment, deletion, expiry), [`super::claims`]
//! (statuses and which node's word counts), [`super::groups`], [`super::changes`] (the change log
//! workers follow), [`super::snapshot`] (dumps for the Raft log, recovery from a replica),
//! [`super::rows`] (full rows and pages for the API). This file holds the struct, its opening and
//! its transactions.

use super::counts::{StatusCounts, StatusSummary};
use super::policy::ReplacePolicy;
use super::schema::{self, open_db, DEFAULT_GROUP};
use super::store::{Store, StoreError};
use super::table::AgentTable;
use rusqlite::params;
use std::path::Path;

/// Which node's word counts for which agent (the rules are in [`super::claims`]); in memory, a
/// master that starts again learns it anew.
#[derive(Debug)]
pub struct Claims {
    /// The nodes that hold agents' sessions now: the master and its connected workers (see
    /// [`Registry::set_live`]). An agent active on one of them is that node's to report.
    pub(super) live: std::collections::HashSet<String>,
    /// Contested claims, logged once per interval with how many were not (see
    /// [`Registry::contest_line`]): the last one seen, and the throttle.
    pub(super) last_contest: Option<(u32, String, String)>,
    pub(super) contests: crate::throttle::Throttle,
    /// Reconnect orders (see [`Registry::release_claims`]) still in force.
    pub(super) releases: Vec<Release>,
    /// Moves those orders caused, logged once per interval: the last one (agent, from, to), how
    /// many since the last line, and the throttle.
    pub(super) last_move: Option<(u32, String, String)>,
    pub(super) moves: u64,
    pub(super) move_lines: crate::throttle::Throttle,
}

impl Default for Claims {
    fn default() -> Self {
        Self {
            live: Default::default(),
            last_contest: None,
            contests: crate::throttle::Throttle::new(std::time::Duration::from_secs(10)),
            releases: Vec::new(),
            last_move: None,
            moves: 0,
            move_lines: crate::throttle::Throttle::new(std::time::Duration::from_secs(10)),
        }
    }
}

/// A reconnect order: the agents it names (all when `None`) that `holder` has (any node when
/// `None`) may be claimed by another node until `until_ms`.
#[derive(Debug, Clone)]
pub(super) struct Release {
    pub(super) ids: Option<std::collections::HashSet<u32>>,
    pub(super) holder: Option<String>,
    pub(super) until_ms: u64,
}

/// How long after a reconnect order the agents it names may move without contest.
pub(crate) const RELEASE_MS: u64 = 2 * CLAIM_LAPSE_MS;

/// An agent active on a live node stays that node's, against other nodes' reports, until that
/// node reports it gone, leaves the cluster, or has not reported a keep-alive of it for this long
/// (the agent moved without its old session noticing).
pub(crate) const CLAIM_LAPSE_MS: u64 = 30_000;

/// The master's registry.
pub struct Registry {
    /// The connection, position, hash, generation (random, made with the registry) and what
    /// follows each commit; shared with the replica's code.
    pub(super) table: AgentTable,
    pub(super) counts: StatusCounts,
    pub replace: ReplacePolicy,
    /// Which node's word counts for which agent's status ([`super::claims`]).
    pub(super) claims: Claims,
    /// Groups deleted by the open transaction: their directories go once it commits (and where
    /// the current command's savepoint began in this list).
    pub(super) removals: Vec<String>,
    pub(super) removals_mark: usize,
    /// The status counts as of the last commit, for readers off the store thread
    /// ([`super::reader::RegistryReader`]).
    summary: tokio::sync::watch::Sender<StatusSummary>,
}

pub(super) fn now_ms() -> u64 {
    crate::clock::now_ms()
}

impl Registry {
    /// Opens (or creates) `<data_dir>/var/db/registry.db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = open_db(&data_dir.join("var/db/registry.db"))?;
        conn.execute_batch(schema::MASTER_TABLES)?;
        schema::add_missing_columns(&conn, "agents", &schema::MASTER_ADDED_COLUMNS)?;
        let now = now_ms() as i64;
        conn.execute("INSERT OR IGNORE INTO groups (name, created_at) VALUES (?1, ?2)", params![DEFAULT_GROUP, now])?;
        conn.execute_batch(schema::MASTER_INDEXES)?;
        conn.execute_batch(super::user_store::USER_TABLES)?;
        conn.execute_batch(super::user_store::SEEDED_TABLE)?;
        conn.execute_batch(schema::DELETED_GROUPS_TABLE)?;
        // A registry's identity, made with it (or at the first start of a release that has it):
        // a worker following another registry is never rewritten to this one's content.
        if schema::stored_generation(&conn)? == 0 {
            let generation = (crate::backoff::random_u64() & (i64::MAX as u64)).max(1);
            schema::store_generation(&conn, generation)?;
        }
        let mut reg = Registry {
            table: AgentTable::open(conn, data_dir, "agent registry")?,
            counts: StatusCounts::default(),
            replace: ReplacePolicy::default(),
            claims: Claims::default(),
            removals: Vec::new(),
            removals_mark: 0,
            summary: tokio::sync::watch::Sender::new(StatusSummary::default()),
        };
        reg.load_counts()?;
        reg.publish_summary();
        reg.ensure_group_dir(DEFAULT_GROUP)?;
        reg.remove_deleted_group_dirs()?;
        Ok(reg)
    }

    pub(super) fn load_counts(&mut self) -> Result<(), StoreError> {
        self.counts.clear();
        let mut stmt =
            self.table.conn.prepare_cached("SELECT id, status, node_name, group_config_status FROM agents")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id: u32 = r.get(0)?;
            let status: String = r.get(1)?;
            let node: String = r.get(2)?;
            let config: Option<String> = r.get(3)?;
            self.counts.set(id, &status, &node, config.as_deref());
        }
        Ok(())
    }

    /// Agents by status, configuration status and node, from memory.
    pub fn status_summary(&self) -> StatusSummary {
        self.counts.summary()
    }

    /// The status counts as of each commit (for [`super::reader::RegistryReader`]).
    pub fn summary_watch(&self) -> tokio::sync::watch::Receiver<StatusSummary> {
        self.summary.subscribe()
    }

    /// Publishes the counts, if they changed.
    fn publish_summary(&self) {
        let now = self.counts.summary();
        self.summary.send_if_modified(|seen| {
            let moved = *seen != now;
            if moved {
                *seen = now;
            }
            moved
        });
    }

    /// Agents with `status` reporting to `node` (either `None`: any), from memory.
    pub fn count(&self, status: Option<&str>, node: Option<&str>) -> u64 {
        self.counts.count(status, node)
    }

    /// Commits, then brings client.keys and the key index up to date with what changed. A failed
    /// write of client.keys does not undo the commit (the file is written whole after the next
    /// change, and at every start); it is logged.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.table.commit()?;
        for group in std::mem::take(&mut self.removals) {
            if let Err(e) = self.remove_group_dir(&group) {
                log::warn!("agent registry in {}: group {group} deleted, its directory not yet: {e} (removed at the next start)", self.table.data_dir.display());
            }
        }
        self.removals_mark = 0;
        Ok(())
    }

    pub(crate) fn rollback(&mut self) {
        self.table.rollback();
        self.removals.clear();
        self.removals_mark = 0;
    }
}

impl Store for Registry {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.table.begin()
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        Registry::commit(self)
    }
    fn rollback(&mut self) {
        Registry::rollback(self)
    }
    fn reload(&mut self) -> Result<(), StoreError> {
        self.table.reload_position()?;
        self.load_counts()
    }
    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.table.savepoint()?;
        self.removals_mark = self.removals.len();
        Ok(())
    }
    fn release(&mut self, keep: bool) {
        self.table.release(keep);
        if !keep {
            self.removals.truncate(self.removals_mark);
        }
    }
    fn committed(&mut self) {
        self.publish_summary();
    }
}

impl std::ops::Deref for Registry {
    type Target = AgentTable;
    fn deref(&self) -> &AgentTable {
        &self.table
    }
}

impl std::ops::DerefMut for Registry {
    fn deref_mut(&mut self) -> &mut AgentTable {
        &mut self.table
    }
}
