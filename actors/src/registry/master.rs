//! The master's agent registry: the source of truth for agents, keys and groups.
//!
//! Ids are allocated as Wazuh does (`001`, one above the highest ever issued, never reused), keys
//! come from the OS's CSPRNG, and every change is logged with a monotonic sequence number in the
//! same transaction, so workers can ask for "everything after N". `client.keys` and the node's key
//! index follow each committed change ([`super::derived`]); agent counts by status and node are
//! kept in memory ([`super::counts`]).

use super::counts::{StatusCounts, StatusSummary};
use super::policy::{Incumbent, ReplacePolicy, Verdict};
use super::query::{AgentQuery, SortField};
use super::schema::{
    self, fmt_id, groups_text, groups_vec, one_entry, open_db, row_entry, CHANGELOG_KEEP, DEFAULT_GROUP, TOKENS_KEPT_MS,
};
use super::store::{Store, StoreError};
use super::table::AgentTable;
use rusqlite::{params, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::agent::enrollment::{EnrollError, MAX_GROUPS};
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry, AgentInfoUpdate};

/// A full agent row, for the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentRow {
    pub entry: AgentEntry,
    pub registered_at_ms: u64,
    pub node_name: String,
    pub status: String,
    pub last_keepalive_ms: Option<u64>,
    pub version: Option<String>,
    pub os_name: Option<String>,
    pub os_platform: Option<String>,
    pub os_version: Option<String>,
    /// Enrolled through a worker whose delivery of the key is not confirmed yet.
    pub pending: bool,
    /// What its last keep-alive said.
    pub info: Option<wazuh_cluster_protocol::agent::keepalive::KeepAlive>,
    pub group_config_status: Option<String>,
    pub peer_ip: Option<String>,
}

/// An enrollment as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewAgent {
    pub name: String,
    pub groups: Vec<String>,
    pub ip: String,
    pub key_hash: Option<String>,
    pub version: Option<String>,
    /// Node that received the enrollment.
    pub node_name: String,
    /// Idempotency token of a forwarded enrollment (`None`: received by the master itself).
    pub token: Option<String>,
}

impl NewAgent {
    /// The enrollment `f`, received by `node_name`; `forwarded` keeps its token for idempotency.
    pub fn from_forward(f: wazuh_cluster_protocol::message::EnrollForward, node_name: String, forwarded: bool) -> Self {
        NewAgent {
            name: f.name,
            groups: f.groups,
            ip: f.ip,
            key_hash: f.key_hash,
            version: f.version,
            node_name,
            token: forwarded.then_some(f.token),
        }
    }
}

/// What [`Registry::recover_from_replica`] rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub agents: usize,
    pub groups: usize,
    /// The API's users taken over.
    pub users: usize,
    /// The position and generation taken over from the replica: workers at this position need
    /// nothing, workers behind it get the table again, none is wiped.
    pub seq: u64,
    pub generation: u64,
}

/// Why a registry could not be rebuilt from a replica.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("the master's registry in {0} still holds {1} agents: move it aside first (the master must be stopped)")]
    RegistryInUse(String, u64),
    #[error("cannot read the replica {0}: {1}")]
    Replica(String, rusqlite::Error),
    #[error("the replica holds agent {id:03} with a field the registry refuses: {why}")]
    BadAgent { id: u32, why: EnrollError },
    #[error("the replica holds API user {name:?}, which the registry refuses: {why}")]
    BadUser { name: String, why: super::user_store::UserFieldError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot remove the empty registry {0}: {1}")]
    Io(String, std::io::Error),
}

/// The master's registry.
pub struct Registry {
    /// The connection, position, hash, generation (random, made with the registry) and what
    /// follows each commit; shared with the replica's code.
    table: AgentTable,
    counts: StatusCounts,
    pub replace: ReplacePolicy,
    /// The nodes that hold agents' sessions now: the master and its connected workers (see
    /// [`Registry::set_live`]). An agent active on one of them is that node's to report.
    live: std::collections::HashSet<String>,
    /// Contested claims, logged once per interval with how many were not (see
    /// [`Registry::contest_line`]): the last one seen, and the throttle.
    last_contest: Option<(u32, String, String)>,
    contests: crate::throttle::Throttle,
    /// Reconnect orders (see [`Registry::release_claims`]) still in force.
    releases: Vec<Release>,
    /// Moves those orders caused, logged once per interval: the last one (agent, from, to), how
    /// many since the last line, and the throttle.
    last_move: Option<(u32, String, String)>,
    moves: u64,
    move_lines: crate::throttle::Throttle,
    /// Groups deleted by the open transaction: their directories go once it commits (and where
    /// the current command's savepoint began in this list).
    removals: Vec<String>,
    removals_mark: usize,
}

/// A reconnect order: the agents it names (all when `None`) that `holder` has (any node when
/// `None`) may be claimed by another node until `until_ms`.
#[derive(Debug, Clone)]
struct Release {
    ids: Option<std::collections::HashSet<u32>>,
    holder: Option<String>,
    until_ms: u64,
}

/// How long after a reconnect order the agents it names may move without contest.
pub const RELEASE_MS: u64 = 2 * CLAIM_LAPSE_MS;

/// An agent active on a live node stays that node's, against other nodes' reports, until that
/// node reports it gone, leaves the cluster, or has not reported a keep-alive of it for this long
/// (the agent moved without its old session noticing).
pub const CLAIM_LAPSE_MS: u64 = 30_000;

/// A status update as the master stores it, whoever sent it: a keep-alive time no later than the
/// master's own clock (a report from the future would otherwise win over every later one), an
/// address that is an address, a version and a configuration status of the expected shape; a
/// field that is not is dropped (the stored value stays).
fn checked_update(u: &AgentInfoUpdate, now: u64) -> std::borrow::Cow<'_, AgentInfoUpdate> {
    let printable = |t: &str, max: usize| t.len() <= max && !t.chars().any(char::is_control);
    let time_ok = u.last_keepalive_ms.is_none_or(|t| t <= now);
    let version_ok = u.version.as_deref().is_none_or(|v| printable(v, 64));
    let status_ok = u.group_config_status.as_deref().is_none_or(|s| s == "synced" || s == "not synced");
    let ip_ok = u.peer_ip.as_deref().is_none_or(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    if time_ok && version_ok && status_ok && ip_ok {
        // The usual case, on the status path: nothing to copy.
        return std::borrow::Cow::Borrowed(u);
    }
    std::borrow::Cow::Owned(AgentInfoUpdate {
        id: u.id,
        status: u.status.clone(),
        last_keepalive_ms: u.last_keepalive_ms.map(|t| t.min(now)),
        version: u.version.clone().filter(|_| version_ok),
        info: u.info.clone(),
        group_config_status: u.group_config_status.clone().filter(|_| status_ok),
        peer_ip: u.peer_ip.clone().filter(|_| ip_ok),
    })
}

fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// The enrollment endpoint's rules on the fields of `a`.
fn validate_new(a: &NewAgent) -> Result<(), EnrollError> {
    wazuh_cluster_protocol::agent::enrollment::validate_fields(
        &a.name,
        &a.groups,
        &a.ip,
        a.key_hash.as_deref(),
        a.version.as_deref(),
    )
}

/// An enrollment with what one node decided for it (see [`Registry::prepare_enrollment`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreparedEnrollment {
    pub agent: NewAgent,
    /// The agent's key, 64 hex characters.
    pub key: String,
    /// When it was registered.
    pub at_ms: u64,
    /// Agents holding its name or IP that it may replace.
    pub replace: Vec<u32>,
}

fn random_key() -> Result<String, EnrollError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| EnrollError::Internal(format!("random source failed: {e}")))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
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
            live: Default::default(),
            last_contest: None,
            contests: crate::throttle::Throttle::new(std::time::Duration::from_secs(10)),
            releases: Vec::new(),
            last_move: None,
            moves: 0,
            move_lines: crate::throttle::Throttle::new(std::time::Duration::from_secs(10)),
            removals: Vec::new(),
            removals_mark: 0,
        };
        reg.load_counts()?;
        reg.ensure_group_dir(DEFAULT_GROUP)?;
        reg.remove_deleted_group_dirs()?;
        Ok(reg)
    }

    fn load_counts(&mut self) -> Result<(), StoreError> {
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

    /// Agents with `status` reporting to `node` (either `None`: any), from memory.
    pub fn count(&self, status: Option<&str>, node: Option<&str>) -> u64 {
        self.counts.count(status, node)
    }

    /// Rebuilds the master's registry in `data_dir` from a worker's replica database (the master
    /// lost its own): every agent with its id, name, address, key and groups, the groups (those of
    /// the agents and the worker's `etc/shared` directories), the next id, and the replica's
    /// position and generation, so that the workers follow it as before.
    /// Refused while `data_dir` holds a registry with agents; an empty one (a master restarted
    /// after the loss) is replaced. The master must be stopped.
    pub fn recover_from_replica(data_dir: &Path, replica_db: &Path) -> Result<Recovered, RecoverError> {
        let db = data_dir.join("var/db/registry.db");
        if db.exists() {
            let held = {
                let existing = Registry::open(data_dir)?;
                existing.count(None, None)
            };
            if held > 0 {
                return Err(RecoverError::RegistryInUse(data_dir.display().to_string(), held));
            }
            for suffix in ["", "-wal", "-shm"] {
                let path = PathBuf::from(format!("{}{suffix}", db.display()));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(RecoverError::Io(path.display().to_string(), e)),
                }
            }
        }
        let name = replica_db.display().to_string();
        let replica = rusqlite::Connection::open_with_flags(replica_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| RecoverError::Replica(name.clone(), e))?;
        let read = || -> rusqlite::Result<(Vec<AgentEntry>, i64, Option<i64>)> {
            let entries = replica
                .prepare("SELECT id, name, ip, key, groups FROM agents ORDER BY id")?
                .query_map([], schema::row_entry)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let seq = replica.query_row("SELECT v FROM meta WHERE k = 'seq'", [], |r| r.get(0))?;
            let generation =
                replica.query_row("SELECT v FROM meta WHERE k = 'generation'", [], |r| r.get(0)).optional()?;
            Ok((entries, seq, generation))
        };
        let (entries, seq, generation) = read().map_err(|e| RecoverError::Replica(name, e))?;
        // The API's users, as the master last sent them (a replica of an earlier build has none:
        // the master's api.users seed it again at its start).
        let users = super::user_store::read_users(&replica).unwrap_or_default();
        for u in &users {
            super::user_store::check_name(&u.name)
                .and_then(|_| super::user_store::check_hash(&u.password_hash))
                .map_err(|why| RecoverError::BadUser { name: u.name.clone(), why })?;
        }
        for e in &entries {
            wazuh_cluster_protocol::agent::enrollment::validate_fields(&e.name, &e.groups, &e.ip, None, None)
                .map_err(|why| RecoverError::BadAgent { id: e.id, why })?;
        }
        // Groups: those of the agents, and every group directory the worker holds (file sync gave
        // it the master's etc/shared), so that groups without agents come back too.
        let mut groups: Vec<String> = entries.iter().flat_map(|e| e.groups.iter().cloned()).collect();
        let shared = replica_db.parent().and_then(Path::parent).and_then(Path::parent).map(|d| d.join("etc/shared"));
        if let Some(Ok(dirs)) = shared.map(std::fs::read_dir) {
            for dir in dirs.flatten() {
                let name = dir.file_name().to_string_lossy().into_owned();
                if dir.file_type().is_ok_and(|t| t.is_dir())
                    && wazuh_cluster_protocol::agent::enrollment::valid_group_name(&name)
                {
                    groups.push(name);
                }
            }
        }
        groups.sort();
        groups.dedup();
        {
            let reg = Registry::open(data_dir)?;
            reg.table.begin()?;
            let write = || -> Result<(), StoreError> {
                let now = now_ms() as i64;
                for g in &groups {
                    reg.table
                        .conn
                        .execute("INSERT OR IGNORE INTO groups (name, created_at) VALUES (?1, ?2)", params![g, now])?;
                    reg.ensure_group_dir(g)?;
                }
                for e in &entries {
                    reg.table.conn.execute(
                        "INSERT INTO agents (id, name, ip, key, groups, registered_at, node_name)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, '')",
                        params![e.id, e.name, e.ip, e.key, groups_text(&e.groups), now],
                    )?;
                }
                for u in &users {
                    super::user_store::apply_user_change(&reg.table.conn, &AgentChange::UserSet(u.clone()))?;
                }
                let last_user = users.iter().map(|u| u.id).max().unwrap_or(0);
                reg.table.conn.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('last_user_id', 0)", [])?;
                reg.table
                    .conn
                    .execute("UPDATE meta SET v = MAX(v, ?1) WHERE k = 'last_user_id'", params![last_user])?;
                let last_id = entries.iter().map(|e| e.id).max().unwrap_or(0);
                reg.table
                    .conn
                    .execute("UPDATE meta SET v = MAX(v, ?1) WHERE k = 'last_id'", params![last_id as i64])?;
                reg.table.conn.execute("UPDATE meta SET v = ?1 WHERE k = 'seq'", params![seq])?;
                if let Some(g) = generation.filter(|g| *g != 0) {
                    schema::store_generation(&reg.table.conn, g as u64)?;
                }
                reg.table.conn.execute_batch("COMMIT")?;
                Ok(())
            };
            if let Err(e) = write() {
                let _ = reg.table.conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        // Opened again: client.keys, the hash and the counts are made from what was written.
        let reg = Registry::open(data_dir)?;
        Ok(Recovered {
            agents: entries.len(),
            groups: groups.len(),
            users: users.len(),
            seq: reg.seq(),
            generation: reg.generation(),
        })
    }

    /// Makes the group's directory, with an empty `agent.conf` as Wazuh does, if it has none.
    /// Removes `etc/shared/<group>` whole (a symlink there is removed, never followed): first
    /// renamed aside, so that file sync never sees half of it.
    fn remove_group_dir(&self, group: &str) -> Result<(), StoreError> {
        let dir = self.table.data_dir.join("etc/shared").join(group);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |error| StoreError::Io { path, error }
        };
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&dir)(e)),
            Ok(m) if !m.is_dir() => return std::fs::remove_file(&dir).map_err(io(&dir)),
            Ok(_) => {}
        }
        let trash = self.table.data_dir.join("var/sync/trash");
        std::fs::create_dir_all(&trash).map_err(io(&trash))?;
        let aside = trash.join(format!("{group}.{}", crate::backoff::random_u64()));
        std::fs::rename(&dir, &aside).map_err(io(&dir))?;
        std::fs::remove_dir_all(&aside).map_err(io(&aside))
    }

    /// Directories of deleted groups that a crash left behind (the deletion committed, the
    /// directory not removed yet) go: a group's files never outlive it.
    fn remove_deleted_group_dirs(&mut self) -> Result<(), StoreError> {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM deleted_groups WHERE name NOT IN (SELECT name FROM groups)")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in names {
            if wazuh_cluster_protocol::agent::enrollment::valid_group_name(&name) {
                self.remove_group_dir(&name)?;
            }
        }
        Ok(())
    }

    fn ensure_group_dir(&self, group: &str) -> Result<(), StoreError> {
        let dir = self.table.data_dir.join("etc/shared").join(group);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |error| StoreError::Io { path, error }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let conf = dir.join("agent.conf");
        if std::fs::symlink_metadata(&conf).is_err() {
            // Whole or not at all: file sync (which skips `.tmp` names) never sees half of it.
            let tmp = dir.join("agent.conf.tmp");
            std::fs::write(&tmp, "<agent_config>\n\n  <!-- Shared agent configuration here -->\n\n</agent_config>\n")
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &conf).map_err(io(&conf))?;
        }
        Ok(())
    }

    pub(crate) fn log_change(&mut self, change: &AgentChange) -> Result<(), StoreError> {
        self.table.seq += 1;
        let (op, id, name, ip, key, groups) = match change {
            // A user: its role in `ip`, its hash in `key`, its generation in `groups`.
            AgentChange::UserSet(u) => (
                "user",
                u.id,
                Some(u.name.clone()),
                Some(u.role.as_str().to_string()),
                Some(u.password_hash.clone()),
                Some(u.generation.to_string()),
            ),
            AgentChange::UserRemoved { name } => ("user_removed", 0, Some(name.clone()), None, None, None),
            AgentChange::Added(e) => (
                "added",
                e.id,
                Some(e.name.clone()),
                Some(e.ip.clone()),
                Some(e.key.clone()),
                Some(groups_text(&e.groups)),
            ),
            AgentChange::Removed { id } => ("removed", *id, None, None, None, None),
            AgentChange::GroupsChanged { id, groups } => ("groups", *id, None, None, None, Some(groups_text(groups))),
        };
        self.table
            .conn
            .prepare_cached(
                "INSERT INTO changes (seq, op, id, name, ip, key, groups) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![self.table.seq as i64, op, id, name, ip, key, groups])?;
        self.table
            .conn
            .prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'seq'")?
            .execute(params![self.table.seq as i64])?;
        if self.table.seq > CHANGELOG_KEEP && self.table.seq % 1000 == 0 {
            self.table
                .conn
                .prepare_cached("DELETE FROM changes WHERE seq <= ?1")?
                .execute(params![(self.table.seq - CHANGELOG_KEEP) as i64])?;
        }
        self.table.derived.record(change.clone());
        Ok(())
    }

    fn entry(&self, id: u32) -> Result<Option<AgentEntry>, StoreError> {
        one_entry(&self.table.conn, id)
    }

    fn remove_row(&mut self, id: u32) -> Result<bool, StoreError> {
        let Some(e) = self.entry(id)? else { return Ok(false) };
        self.table.conn.prepare_cached("DELETE FROM agents WHERE id = ?1")?.execute(params![id])?;
        self.table.hash.toggle(&e);
        self.counts.remove(id);
        self.log_change(&AgentChange::Removed { id })?;
        Ok(true)
    }

    /// May the agent `id` be replaced by a new enrollment (see [`ReplacePolicy`])?
    fn replaceable(&self, id: u32, key_hash: Option<&str>) -> Result<bool, StoreError> {
        let (name, key, registered, status, disconnected_at, last_keepalive): (
            String,
            String,
            i64,
            String,
            Option<i64>,
            Option<i64>,
        ) = self
            .conn
            .prepare_cached(
                "SELECT name, key, registered_at, status, disconnected_at, last_keepalive FROM agents WHERE id = ?1",
            )?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        let incumbent = Incumbent {
            id,
            name: &name,
            key: &key,
            registered_at_ms: ms(registered),
            status: &status,
            disconnected_at_ms: disconnected_at.map(ms),
            last_keepalive_ms: last_keepalive.map(ms),
        };
        Ok(self.replace.decide(&incumbent, key_hash, now_ms()) == Verdict::Replace)
    }

    /// Enrolls one agent inside the caller's transaction. Idempotent per token. The request is
    /// checked again here with the enrollment endpoint's rules, whoever sent it (a worker's forward
    /// is not trusted): nothing that could break a `client.keys` line is ever stored. The same as
    /// [`Registry::prepare_enrollment`] then [`Registry::apply_enrollment`].
    pub fn enroll(&mut self, a: &NewAgent) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        match self.prepare_enrollment(a, now_ms())? {
            Ok(prepared) => self.apply_enrollment(&prepared),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The agent an earlier enrollment with `a`'s idempotency token made, if one did (an agent keeps
    /// its token for good). A refusal leaves nothing: a retry of a refused request is tried afresh,
    /// which is harmless (the worker acts on the one answer it gets), and refused requests, which a
    /// stranger can repeat without end, cost the registry no row.
    fn prior_outcome(&self, a: &NewAgent) -> Result<Option<Result<AgentEntry, EnrollError>>, StoreError> {
        let Some(token) = &a.token else { return Ok(None) };
        let made = self
            .conn
            .prepare_cached("SELECT id, name, ip, key, groups FROM agents WHERE token = ?1")?
            .query_row(params![token], row_entry)
            .optional()?;
        Ok(made.map(Ok))
    }

    /// Everything about enrolling `a` that is not a function of the table alone, decided now by
    /// this node: the key (random), the time, and which agents holding its name or IP may be
    /// replaced (that depends on their statuses, which only this node's view has). Applying the
    /// result ([`Registry::apply_enrollment`]) is then the same on every registry with the same
    /// table: what a replicated log needs.
    pub fn prepare_enrollment(
        &self,
        a: &NewAgent,
        now_ms: u64,
    ) -> Result<Result<PreparedEnrollment, EnrollError>, StoreError> {
        if let Err(e) = validate_new(a) {
            return Ok(Err(e));
        }
        let key = match random_key() {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        let mut replace = Vec::new();
        let by_name: Option<u32> = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE name = ?1")?
            .query_row(params![a.name], |r| r.get(0))
            .optional()?;
        let by_ip: Option<u32> = match a.ip.as_str() {
            "any" => None,
            ip => self
                .conn
                .prepare_cached("SELECT id FROM agents WHERE ip = ?1")?
                .query_row(params![ip], |r| r.get(0))
                .optional()?,
        };
        for old in by_name.into_iter().chain(by_ip) {
            if !replace.contains(&old) && self.replaceable(old, a.key_hash.as_deref())? {
                replace.push(old);
            }
        }
        Ok(Ok(PreparedEnrollment { agent: a.clone(), key, at_ms: now_ms, replace }))
    }

    /// Applies an enrollment prepared by [`Registry::prepare_enrollment`] (here or on another
    /// node), inside the caller's transaction: a function of the table and `p` alone.
    pub fn apply_enrollment(&mut self, p: &PreparedEnrollment) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        if let Err(e) = validate_new(&p.agent) {
            return Ok(Err(e));
        }
        if let Some(prior) = self.prior_outcome(&p.agent)? {
            return Ok(prior);
        }
        let outcome = self.enroll_new(p)?;
        // Outcomes recorded by earlier builds (refusals included) go after their day, by the
        // enrollment's own time (carried in it: the same rows on every member).
        self.table
            .conn
            .prepare_cached("DELETE FROM tokens WHERE at < ?1")?
            .execute(params![p.at_ms.saturating_sub(TOKENS_KEPT_MS) as i64])?;
        Ok(outcome)
    }

    fn enroll_new(&mut self, p: &PreparedEnrollment) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        let a = &p.agent;
        let groups = if a.groups.is_empty() { vec![DEFAULT_GROUP.to_string()] } else { a.groups.clone() };
        for g in &groups {
            let exists: bool = self
                .conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM groups WHERE name = ?1)")?
                .query_row(params![g], |r| r.get(0))?;
            if !exists {
                return Ok(Err(EnrollError::NoSuchGroup(g.clone())));
            }
        }
        if groups.len() > MAX_GROUPS {
            return Ok(Err(EnrollError::TooManyGroups));
        }
        let by_name: Option<u32> = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE name = ?1")?
            .query_row(params![a.name], |r| r.get(0))
            .optional()?;
        if let Some(old) = by_name {
            if !p.replace.contains(&old) {
                return Ok(Err(EnrollError::DuplicateName(a.name.clone())));
            }
            self.remove_row(old)?;
        }
        if a.ip != "any" {
            let by_ip: Option<u32> = self
                .conn
                .prepare_cached("SELECT id FROM agents WHERE ip = ?1")?
                .query_row(params![a.ip], |r| r.get(0))
                .optional()?;
            if let Some(old) = by_ip {
                if !p.replace.contains(&old) {
                    return Ok(Err(EnrollError::DuplicateIp(a.ip.clone())));
                }
                self.remove_row(old)?;
            }
        }
        let last: i64 =
            self.table.conn.prepare_cached("SELECT v FROM meta WHERE k = 'last_id'")?.query_row([], |r| r.get(0))?;
        let id = u32::try_from(last + 1).map_err(|_| StoreError::Invalid("agent ids exhausted".into()))?;
        let entry = AgentEntry { id, name: a.name.clone(), ip: a.ip.clone(), key: p.key.clone(), groups };
        self.table
            .conn
            .prepare_cached(
                "INSERT INTO agents (id, name, ip, key, groups, registered_at, node_name, version, token, pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                id,
                entry.name,
                entry.ip,
                entry.key,
                groups_text(&entry.groups),
                p.at_ms as i64,
                a.node_name,
                a.version,
                a.token,
                a.token.is_some() as i64
            ])?;
        self.table.conn.prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'last_id'")?.execute(params![id as i64])?;
        self.table.hash.toggle(&entry);
        self.counts.set(id, "never_connected", &a.node_name, None);
        self.log_change(&AgentChange::Added(entry.clone()))?;
        Ok(Ok(entry))
    }

    /// The worker delivered the key (keep the agent) or could not (remove it). Idempotent.
    pub fn resolve(&mut self, token: &str, delivered: bool) -> Result<(), StoreError> {
        let id: Option<u32> = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE token = ?1")?
            .query_row(params![token], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(()) };
        if delivered {
            self.table.conn.prepare_cached("UPDATE agents SET pending = 0 WHERE id = ?1")?.execute(params![id])?;
        } else {
            self.remove_row(id)?;
        }
        Ok(())
    }

    /// Removes agents whose delivery was never confirmed within `older_than_ms`.
    pub fn expire_pending(&mut self, older_than_ms: u64) -> Result<Vec<u32>, StoreError> {
        let ids = self.pending_older_than(now_ms().saturating_sub(older_than_ms))?;
        self.apply_expiry(&ids)
    }

    /// Agents enrolled through a worker before `cutoff_ms` whose delivery is still unconfirmed.
    pub fn pending_older_than(&self, cutoff_ms: u64) -> Result<Vec<u32>, StoreError> {
        let mut stmt = self.table.conn.prepare("SELECT id FROM agents WHERE pending = 1 AND registered_at < ?1")?;
        let rows = stmt.query_map(params![cutoff_ms as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes those of `ids` that are still pending (one node chose them with its clock; a
    /// delivery confirmed since keeps the agent): the ones removed.
    pub fn apply_expiry(&mut self, ids: &[u32]) -> Result<Vec<u32>, StoreError> {
        let mut removed = Vec::new();
        for &id in ids {
            let pending: Option<bool> = self
                .conn
                .prepare_cached("SELECT pending FROM agents WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            if pending == Some(true) && self.remove_row(id)? {
                removed.push(id);
            }
        }
        Ok(removed)
    }

    pub fn delete(&mut self, id: u32) -> Result<(), StoreError> {
        if self.remove_row(id)? {
            Ok(())
        } else {
            Err(StoreError::NoSuchAgent(id))
        }
    }

    /// The changes after position `after` (all of them), or the whole table as `Added` entries when
    /// the changelog no longer reaches back that far (or `after` is beyond the table): (snapshot?,
    /// changes).
    pub fn changes_since(&self, after: u64) -> Result<(bool, Vec<AgentChange>), StoreError> {
        let (snapshot, changes, _) = self.changes_since_limited(after, usize::MAX)?;
        Ok((snapshot, changes))
    }

    /// Like [`Registry::changes_since`], at most `limit` changes of a delta (a snapshot is always
    /// whole): (snapshot?, changes, the position they lead to).
    pub fn changes_since_limited(&self, after: u64, limit: usize) -> Result<(bool, Vec<AgentChange>, u64), StoreError> {
        let oldest: Option<i64> =
            self.table.conn.prepare_cached("SELECT MIN(seq) FROM changes")?.query_row([], |r| r.get(0))?;
        let delta_ok =
            after <= self.table.seq && (after == self.table.seq || oldest.is_some_and(|o| o as u64 <= after + 1));
        if !delta_ok {
            let mut all: Vec<AgentChange> = self.entries()?.into_iter().map(AgentChange::Added).collect();
            all.extend(self.users()?.into_iter().map(AgentChange::UserSet));
            return Ok((true, all, self.table.seq));
        }
        let mut stmt = self.table.conn.prepare_cached(
            "SELECT seq, op, id, name, ip, key, groups FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after as i64, limit], |r| {
            let seq: i64 = r.get(0)?;
            let op: String = r.get(1)?;
            let id: u32 = r.get(2)?;
            let groups = r.get::<_, Option<String>>(6)?.map(|g| groups_vec(&g)).unwrap_or_default();
            let change = match op.as_str() {
                "added" => AgentChange::Added(AgentEntry {
                    id,
                    name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    ip: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    key: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    groups,
                }),
                "removed" => AgentChange::Removed { id },
                "user" => AgentChange::UserSet(wazuh_cluster_protocol::message::ApiUser {
                    id,
                    name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    password_hash: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    role: r
                        .get::<_, Option<String>>(4)?
                        .and_then(|role| wazuh_cluster_protocol::message::ApiRole::parse(&role))
                        .unwrap_or(wazuh_cluster_protocol::message::ApiRole::Readonly),
                    generation: r.get::<_, Option<String>>(6)?.and_then(|g| g.parse().ok()).unwrap_or(0),
                }),
                "user_removed" => AgentChange::UserRemoved { name: r.get::<_, Option<String>>(3)?.unwrap_or_default() },
                _ => AgentChange::GroupsChanged { id, groups },
            };
            Ok((seq as u64, change))
        })?;
        let mut changes = Vec::new();
        let mut to = after;
        for row in rows {
            let (seq, change) = row?;
            to = seq;
            changes.push(change);
        }
        // Fewer than asked: the delta reaches the current position.
        if (changes.len() as i64) < limit {
            to = self.table.seq;
        }
        Ok((false, changes, to))
    }

    /// Marks `node` as holding agent sessions now (the master itself, a connected worker) or not
    /// (a worker that left): what decides competing claims in [`Registry::store_statuses`].
    pub fn set_live(&mut self, node: &str, live: bool) {
        if live {
            self.live.insert(node.to_string());
        } else {
            self.live.remove(node);
        }
    }

    /// A log line about the reports refused as contested since the last line, at most once per
    /// 10 s (the caller logs it, naming its node).
    pub fn contest_line(&mut self) -> Option<String> {
        self.last_contest.as_ref()?;
        let n = self.contests.allow()?;
        let (id, claimant, holder) = self.last_contest.take()?;
        let others = if n > 0 { format!(" ({n} similar not logged)") } else { String::new() };
        Some(format!(
            "worker {claimant} reports agent {} which is active on {holder}: refused, the first live claim holds{others}; if this repeats, one of them is not telling the truth",
            fmt_id(id)
        ))
    }

    /// An operator asked the agents `ids` (all when empty) connected to `holder` (any node when
    /// `None`) to reconnect: for [`RELEASE_MS`] from `now`, another node's claim of one of them is
    /// the move this causes, taken (and logged as such), not a contest.
    pub fn release_claims(&mut self, holder: Option<&str>, ids: &[u32], now: u64) {
        self.releases.retain(|r| r.until_ms > now);
        let ids = (!ids.is_empty()).then(|| ids.iter().copied().collect());
        self.releases.push(Release { ids, holder: holder.map(str::to_string), until_ms: now + RELEASE_MS });
    }

    fn released(&self, id: u32, holder: &str, now: u64) -> bool {
        self.releases.iter().any(|r| {
            r.until_ms > now
                && r.ids.as_ref().is_none_or(|ids| ids.contains(&id))
                && r.holder.as_deref().is_none_or(|h| h == holder)
        })
    }

    /// A log line about the moves reconnect orders caused since the last line, at most once per
    /// 10 s (the caller logs it, naming its node).
    pub fn move_line(&mut self) -> Option<String> {
        self.last_move.as_ref()?;
        self.move_lines.allow()?;
        let (id, from, to) = self.last_move.take()?;
        let n = std::mem::take(&mut self.moves);
        let others = if n > 1 { format!(" ({} more agents moved since the last line)", n - 1) } else { String::new() };
        Some(format!("agent {} moved from {from} to {to} after a reconnect order{others}", fmt_id(id)))
    }

    /// Whether `node`'s report on agent `id` contests the claim of another live node that has it
    /// active and reported it within [`CLAIM_LAPSE_MS`]: the master's order is that the first
    /// claim holds, unless a reconnect order released the agent (then the claim is its move).
    fn contested(&mut self, node: &str, id: u32, now: u64, claim: bool) -> Result<Option<String>, StoreError> {
        let Some(holder) = self.counts.active_on(id) else { return Ok(None) };
        if holder == node || !self.live.contains(holder) {
            return Ok(None);
        }
        let holder = holder.to_string();
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT last_keepalive FROM agents WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?
            .flatten();
        let fresh = last.is_some_and(|t| now.saturating_sub(t.max(0) as u64) < CLAIM_LAPSE_MS);
        if fresh && claim && self.released(id, &holder, now) {
            self.last_move = Some((id, holder, node.to_string()));
            self.moves += 1;
            return Ok(None);
        }
        Ok(fresh.then_some(holder))
    }

    /// Stores status updates reported by `node` (a worker, or the master for its own agents), only
    /// for agents that exist, and never over a newer report from another node (an agent that moved),
    /// nor over the live claim of another node (see [`Registry::contested`]; counted as stale and
    /// logged, naming both nodes).
    /// A status Wazuh does not have (or `never_connected`, which only the registry sets) is refused
    /// and counted as unknown. Returns (stored, unknown, stale).
    pub fn store_statuses(&mut self, node: &str, updates: &[AgentInfoUpdate]) -> Result<(u32, u32, u32), StoreError> {
        let (mut stored, mut unknown, mut stale) = (0, 0, 0);
        let now = now_ms();
        for u in updates {
            let checked = checked_update(u, now);
            let u = &*checked;
            if super::counts::status_code(&u.status).is_none_or(|c| c == 0) {
                unknown += 1;
                continue;
            }
            let claim = u.status == "active";
            if let Some(holder) = self.contested(node, u.id, now, claim)? {
                stale += 1;
                // Only a claim is a contest: another node's word that the agent left it (its old
                // session ending after a move) is merely stale.
                if claim {
                    self.last_contest = Some((u.id, node.to_string(), holder));
                }
                continue;
            }
            let changed = if u.version.is_none()
                && u.info.is_none()
                && u.group_config_status.is_none()
                && u.peer_ip.is_none()
            {
                // A keep-alive that changed nothing but the time: the light statement.
                self.table.conn
                    .prepare_cached(
                        "UPDATE agents SET status = ?2, last_keepalive = COALESCE(?3, last_keepalive), node_name = ?4,
                            disconnected_at = CASE WHEN ?2 = 'disconnected' THEN ?5 ELSE NULL END
                         WHERE id = ?1 AND (node_name = ?4 OR last_keepalive IS NULL OR ?3 IS NULL AND status != 'active'
                                            OR last_keepalive <= ?3)",
                    )?
                    .execute(params![u.id, u.status, u.last_keepalive_ms.map(|v| v as i64), node, now_ms() as i64])?
            } else {
                self.store_status_details(node, u)?
            };
            if changed > 0 {
                stored += 1;
                self.counts.update(u.id, &u.status, node, u.group_config_status.as_deref());
            } else if one_entry(&self.table.conn, u.id)?.is_some() {
                stale += 1;
            } else {
                unknown += 1;
            }
        }
        Ok((stored, unknown, stale))
    }

    /// One status update with its details (version, keep-alive fields...): the full statement.
    fn store_status_details(&mut self, node: &str, u: &AgentInfoUpdate) -> Result<usize, StoreError> {
        let info = u.info.as_ref().and_then(|i| serde_json::to_string(i).ok());
        let i = u.info.as_ref();
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE agents SET status = ?2, last_keepalive = COALESCE(?3, last_keepalive), node_name = ?4,
                    version = COALESCE(?5, version), os_name = COALESCE(?6, os_name),
                    os_platform = COALESCE(?7, os_platform), os_version = COALESCE(?8, os_version),
                    info = COALESCE(?9, info), merged_sum = COALESCE(?10, merged_sum),
                    config_sum = COALESCE(?11, config_sum),
                    group_config_status = COALESCE(?12, group_config_status), peer_ip = COALESCE(?13, peer_ip),
                    disconnected_at = CASE WHEN ?2 = 'disconnected' THEN ?14 ELSE NULL END
             WHERE id = ?1 AND (node_name = ?4 OR last_keepalive IS NULL OR ?3 IS NULL AND status != 'active'
                                OR last_keepalive <= ?3)",
            )?
            .execute(params![
                u.id,
                u.status,
                u.last_keepalive_ms.map(|v| v as i64),
                node,
                u.version,
                i.map(|i| i.os_name.clone()),
                i.map(|i| i.os_platform.clone()),
                i.map(|i| i.os_version.clone()),
                info,
                i.and_then(|i| i.merged_sum.clone()),
                i.and_then(|i| i.config_sum.clone()),
                u.group_config_status,
                u.peer_ip,
                now_ms() as i64,
            ])?;
        Ok(changed)
    }

    /// Full rows for the API, in id order (only agent `only` when given).
    pub fn rows(&self, only: Option<u32>) -> Result<Vec<AgentRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM agents WHERE ?1 IS NULL OR id = ?1 ORDER BY id"))?;
        let rows = stmt.query_map(params![only], agent_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One page of agents and how many match in all. The total comes from the in-memory counts
    /// unless a group is asked for.
    pub fn page(&self, q: &AgentQuery) -> Result<(u64, Vec<AgentRow>), StoreError> {
        let (filter, mut args) = q.where_clause();
        let total = if q.counted_in_memory() {
            self.counts.count(q.status.as_deref(), q.node.as_deref())
        } else {
            let sql = format!("SELECT COUNT(*) FROM agents {filter}");
            self.table
                .conn
                .prepare_cached(&sql)?
                .query_row(rusqlite::params_from_iter(&args), |r| r.get::<_, i64>(0))? as u64
        };
        let all = [
            SortField::Name,
            SortField::Ip,
            SortField::Status,
            SortField::NodeName,
            SortField::Version,
            SortField::RegisteredAt,
            SortField::LastKeepAlive,
        ];
        let sql =
            format!("SELECT {ROW_COLUMNS} FROM agents {filter} {} {}", q.order_clause(&all), q.page_clause(&mut args));
        let mut stmt = self.table.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(&args), agent_row)?;
        Ok((total, rows.collect::<Result<_, _>>()?))
    }

    /// Group names with their agent counts.
    pub fn groups(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for e in self.entries()? {
            for g in e.groups {
                *counts.entry(g).or_default() += 1;
            }
        }
        let mut stmt = self.table.conn.prepare_cached("SELECT name FROM groups ORDER BY name")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(names
            .into_iter()
            .map(|n| {
                let c = counts.get(&n).copied().unwrap_or(0);
                (n, c)
            })
            .collect())
    }

    pub fn create_group(&mut self, name: &str) -> Result<bool, StoreError> {
        self.create_group_at(name, now_ms())
    }

    /// [`Registry::create_group`] with the time it was created.
    pub fn create_group_at(&mut self, name: &str, at_ms: u64) -> Result<bool, StoreError> {
        if !wazuh_cluster_protocol::agent::enrollment::valid_group_name(name) {
            return Err(StoreError::Invalid(format!(
                "invalid group name {name:?}: use [A-Za-z0-9_.-], not starting with a dot, not \"all\""
            )));
        }
        let n = self
            .conn
            .execute("INSERT OR IGNORE INTO groups (name, created_at) VALUES (?1, ?2)", params![name, at_ms as i64])?;
        if n > 0 {
            // A group deleted before starts afresh: whatever its old directory held is gone.
            let was_deleted = self.table.conn.execute("DELETE FROM deleted_groups WHERE name = ?1", params![name])? > 0;
            if was_deleted || self.removals.iter().any(|r| r == name) {
                self.removals.retain(|r| r != name);
                self.removals_mark = self.removals_mark.min(self.removals.len());
                self.remove_group_dir(name)?;
            }
        }
        self.ensure_group_dir(name)?;
        Ok(n > 0)
    }

    fn set_groups(&mut self, id: u32, groups: Vec<String>) -> Result<(), StoreError> {
        let Some(old) = self.entry(id)? else { return Err(StoreError::NoSuchAgent(id)) };
        if old.groups == groups {
            return Ok(());
        }
        self.table
            .conn
            .prepare_cached("UPDATE agents SET groups = ?1 WHERE id = ?2")?
            .execute(params![groups_text(&groups), id])?;
        self.table.hash.toggle(&old);
        let new = AgentEntry { groups: groups.clone(), ..old };
        self.table.hash.toggle(&new);
        self.log_change(&AgentChange::GroupsChanged { id, groups })
    }

    /// Deletes a group; its agents lose it (and fall back to `default` if it was their only one).
    pub fn delete_group(&mut self, name: &str) -> Result<(), StoreError> {
        if name == DEFAULT_GROUP {
            return Err(StoreError::Invalid("the default group cannot be deleted".into()));
        }
        if self.table.conn.prepare_cached("DELETE FROM groups WHERE name = ?1")?.execute(params![name])? == 0 {
            return Err(StoreError::NoSuchGroup(name.into()));
        }
        // Its directory goes once this commits (a crash before that: at the next start).
        self.table
            .conn
            .prepare_cached("INSERT OR REPLACE INTO deleted_groups (name, at) VALUES (?1, ?2)")?
            .execute(params![name, now_ms() as i64])?;
        self.removals.push(name.to_string());
        for e in self.entries()? {
            if e.groups.iter().any(|g| g == name) {
                let mut groups: Vec<String> = e.groups.into_iter().filter(|g| g != name).collect();
                if groups.is_empty() {
                    groups.push(DEFAULT_GROUP.into());
                }
                self.set_groups(e.id, groups)?;
            }
        }
        Ok(())
    }

    pub fn assign(&mut self, id: u32, group: &str) -> Result<(), StoreError> {
        let exists: bool = self
            .conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM groups WHERE name = ?1)")?
            .query_row(params![group], |r| r.get(0))?;
        if !exists {
            return Err(StoreError::NoSuchGroup(group.into()));
        }
        let Some(e) = self.entry(id)? else { return Err(StoreError::NoSuchAgent(id)) };
        if e.groups.iter().any(|g| g == group) {
            return Ok(());
        }
        if e.groups.len() >= MAX_GROUPS {
            return Err(StoreError::Invalid(format!("agent {} already has {MAX_GROUPS} groups", fmt_id(id))));
        }
        let mut groups = e.groups;
        groups.push(group.into());
        self.set_groups(id, groups)
    }

    pub fn unassign(&mut self, id: u32, group: &str) -> Result<(), StoreError> {
        let Some(e) = self.entry(id)? else { return Err(StoreError::NoSuchAgent(id)) };
        let mut groups: Vec<String> = e.groups.into_iter().filter(|g| g != group).collect();
        if groups.is_empty() {
            groups.push(DEFAULT_GROUP.into());
        }
        self.set_groups(id, groups)
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

    pub fn rollback(&mut self) {
        self.table.rollback();
        self.removals.clear();
        self.removals_mark = 0;
    }
}

/// The columns [`agent_row`] reads, in its order.
const ROW_COLUMNS: &str =
    "id, name, ip, key, groups, registered_at, node_name, status, last_keepalive, version, os_name,
    os_platform, os_version, pending, info, group_config_status, peer_ip";

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        entry: AgentEntry {
            id: r.get(0)?,
            name: r.get(1)?,
            ip: r.get(2)?,
            key: r.get(3)?,
            groups: groups_vec(&r.get::<_, String>(4)?),
        },
        registered_at_ms: r.get::<_, i64>(5)? as u64,
        node_name: r.get(6)?,
        status: r.get(7)?,
        last_keepalive_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        version: r.get(9)?,
        os_name: r.get(10)?,
        os_platform: r.get(11)?,
        os_version: r.get(12)?,
        pending: r.get::<_, i64>(13)? != 0,
        info: r.get::<_, Option<String>>(14)?.and_then(|t| serde_json::from_str(&t).ok()),
        group_config_status: r.get(15)?,
        peer_ip: r.get(16)?,
    })
}

/// The tables a registry snapshot carries: everything but the replicated log's own state.
const SNAPSHOT_TABLES: [&str; 8] =
    ["agents", "groups", "meta", "changes", "tokens", "api_users", "api_users_seeded", "deleted_groups"];

/// A whole registry as rows, for a replicated log's snapshot: per table, its columns and rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TableDump {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

fn to_json(v: rusqlite::types::ValueRef<'_>) -> serde_json::Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => f.into(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => serde_json::json!({ "blob": b }),
    }
}

fn from_json(v: &serde_json::Value) -> Result<rusqlite::types::Value, StoreError> {
    use rusqlite::types::Value;
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(*b as i64),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Object(o) => match o.get("blob") {
            Some(b) => Value::Blob(serde_json::from_value(b.clone()).map_err(|e| StoreError::Invalid(e.to_string()))?),
            None => return Err(StoreError::Invalid("a snapshot cell is an object other than a blob".into())),
        },
        serde_json::Value::Array(_) => return Err(StoreError::Invalid("a snapshot cell is an array".into())),
    })
}

impl Registry {
    /// Every row of the registry's tables (inside the caller's transaction: one consistent view).
    pub fn dump(&self) -> Result<Vec<TableDump>, StoreError> {
        let mut out = Vec::new();
        for table in SNAPSHOT_TABLES {
            let mut stmt = self.table.conn.prepare(&format!("SELECT * FROM {table}"))?;
            let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
            let n = columns.len();
            let mut rows = Vec::new();
            let mut cursor = stmt.query([])?;
            while let Some(r) = cursor.next()? {
                rows.push((0..n).map(|i| r.get_ref(i).map(to_json)).collect::<Result<Vec<_>, _>>()?);
            }
            out.push(TableDump { table: table.to_string(), columns, rows });
        }
        Ok(out)
    }

    /// Replaces the registry's tables with `dump` (inside the caller's transaction), then its
    /// position, hash, counts and client.keys follow. Only the known tables and their own columns
    /// are written: a dump naming anything else is refused whole.
    pub fn restore(&mut self, dump: &[TableDump]) -> Result<(), StoreError> {
        for d in dump {
            if !SNAPSHOT_TABLES.contains(&d.table.as_str()) {
                return Err(StoreError::Invalid(format!("a snapshot names an unknown table {:?}", d.table)));
            }
            let known: Vec<String> = self
                .conn
                .prepare(&format!("SELECT * FROM {} LIMIT 0", d.table))?
                .column_names()
                .iter()
                .map(|c| c.to_string())
                .collect();
            if let Some(c) = d.columns.iter().find(|c| !known.contains(c)) {
                return Err(StoreError::Invalid(format!("a snapshot names an unknown column {}.{c}", d.table)));
            }
        }
        for table in SNAPSHOT_TABLES {
            self.table.conn.execute(&format!("DELETE FROM {table}"), [])?;
        }
        for d in dump {
            let marks = vec!["?"; d.columns.len()].join(", ");
            let sql = format!("INSERT INTO {} ({}) VALUES ({marks})", d.table, d.columns.join(", "));
            let mut stmt = self.table.conn.prepare(&sql)?;
            for row in &d.rows {
                if row.len() != d.columns.len() {
                    return Err(StoreError::Invalid(format!("a snapshot row of {} has the wrong width", d.table)));
                }
                let values = row.iter().map(from_json).collect::<Result<Vec<_>, _>>()?;
                stmt.execute(rusqlite::params_from_iter(values))?;
            }
        }
        (self.table.seq, self.table.hash) = schema::position(&self.table.conn)?;
        self.table.generation = schema::stored_generation(&self.table.conn)?;
        self.load_counts()?;
        self.table.derived.record_reset();
        Ok(())
    }

    /// Master-eligible nodes: the Raft log is the durable record of every change (written with
    /// `synchronous = FULL`), and the registry can be rebuilt from it from its recorded applied
    /// position, so its own commits need not wait for the disk (`synchronous = NORMAL`: a power
    /// loss may lose its last commits, never corrupt it; the log re-applies them).
    pub fn relax_sync_for_log(&self) -> Result<(), StoreError> {
        self.table.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// Master-eligible nodes: takes `generation` (the same on every member) if this registry has
    /// never held a change, so that a worker's replica follows every member alike. A registry with
    /// history keeps its own (and says so: it cannot join a replicated group as it is).
    pub fn adopt_generation(&mut self, generation: u64) -> Result<bool, StoreError> {
        if self.table.generation == generation {
            return Ok(true);
        }
        if self.table.seq != 0 {
            return Ok(false);
        }
        schema::store_generation(&self.table.conn, generation)?;
        self.table.generation = generation;
        Ok(true)
    }

    /// A value of the replicated log's state kept with the registry (applied position, membership),
    /// so that it commits with the changes it describes.
    pub fn raft_value(&self, k: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT v FROM raft WHERE k = ?1")?
            .query_row(params![k], |r| r.get(0))
            .optional()?)
    }

    pub fn set_raft_value(&mut self, k: &str, v: &str) -> Result<(), StoreError> {
        self.table.conn.prepare_cached("INSERT OR REPLACE INTO raft (k, v) VALUES (?1, ?2)")?.execute(params![k, v])?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{agent, enroll};

    fn status(id: u32, status: &str, ka: Option<u64>) -> AgentInfoUpdate {
        AgentInfoUpdate {
            id,
            status: status.into(),
            last_keepalive_ms: ka,
            version: Some("Wazuh v4.14.7".into()),
            info: None,
            group_config_status: None,
            peer_ip: None,
        }
    }

    #[test]
    fn statuses_are_stored_only_for_existing_agents_and_never_over_a_newer_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("s1", None)).unwrap();
        // A deleted (or never existing) agent is counted, not inserted.
        assert_eq!(reg.store_statuses("worker-1", &[status(999, "active", Some(10))]).unwrap(), (0, 1, 0));
        assert_eq!(reg.rows(None).unwrap().len(), 1);
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(100))]).unwrap(), (1, 0, 0));
        // The agent moved to worker-2 (newer keep-alive); worker-1's late "disconnected" loses.
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(200))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "disconnected", Some(100))]).unwrap(), (0, 0, 1));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!((row.status.as_str(), row.node_name.as_str()), ("active", "worker-2"));
        assert_eq!(row.last_keepalive_ms, Some(200));
    }

    /// A report from the future cannot take an agent for good: its time is the master's clock at
    /// most, so the real node's next report wins; fields of the wrong shape are not stored.
    #[test]
    fn a_worker_cannot_claim_an_agent_from_the_future_or_store_forged_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("victim", None)).unwrap();
        let t0 = now_ms();
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(t0))]).unwrap(), (1, 0, 0));
        let forged = AgentInfoUpdate {
            version: Some("Wazuh v9\u{1b}[2J".into()),
            peer_ip: Some("999.1.1.1; rm -rf /".into()),
            group_config_status: Some("owned".into()),
            ..status(a.id, "active", Some(9_000_000_000_000_000_000))
        };
        assert_eq!(reg.store_statuses("evil3", &[forged]).unwrap(), (1, 0, 0));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!(row.node_name, "evil3");
        assert!(row.last_keepalive_ms.is_some_and(|t| t <= now_ms()), "a time from the future was stored");
        assert_eq!(row.version.as_deref(), Some("Wazuh v4.14.7"), "a forged version was stored");
        assert_eq!(row.peer_ip, None);
        assert_eq!(row.group_config_status, None);
        // The real worker's next keep-alive takes it back.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!((row.status.as_str(), row.node_name.as_str()), ("active", "worker-1"));
    }

    /// Competing claims of one agent are decided by the master's order: the live node that has
    /// it active keeps it until it reports it gone, leaves, or stops reporting it.
    #[test]
    fn a_live_claim_holds_against_other_workers_until_released_or_lapsed() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("held", None)).unwrap();
        reg.set_live("worker-1", true);
        reg.set_live("evil", true);
        let node_of = |reg: &Registry| {
            let row = reg.rows(Some(a.id)).unwrap().remove(0);
            (row.status, row.node_name)
        };
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        // Another live worker cannot report it, active or not.
        for s in ["active", "disconnected"] {
            assert_eq!(reg.store_statuses("evil", &[status(a.id, s, Some(now_ms()))]).unwrap(), (0, 0, 1), "{s}");
        }
        assert_eq!(node_of(&reg), ("active".to_string(), "worker-1".to_string()));
        // Released by its holder: the agent reconnecting elsewhere is that node's.
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "disconnected", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("evil", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        // The holder leaves (or is revoked): the claim goes with it.
        reg.set_live("evil", false);
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(node_of(&reg), ("active".to_string(), "worker-1".to_string()));
        // A claim that stopped being renewed lapses.
        reg.set_live("worker-2", true);
        let old = now_ms() - CLAIM_LAPSE_MS - 1000;
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(old))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(node_of(&reg), ("active".to_string(), "worker-2".to_string()));
    }

    #[test]
    fn a_reconnect_order_makes_the_moves_it_causes_moves_not_contests() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("moving", None)).unwrap();
        let b = enroll(&mut reg, &agent("staying", None)).unwrap();
        for n in ["worker-1", "worker-2"] {
            reg.set_live(n, true);
        }
        for id in [a.id, b.id] {
            assert_eq!(reg.store_statuses("worker-1", &[status(id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        }
        // Without an order, worker-2's claim is a contest, logged as one.
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        assert!(reg.contest_line().is_some_and(|l| l.contains("not telling the truth")));
        assert_eq!(reg.move_line(), None);
        // The operator reconnects agent `a` (only): its move to worker-2 is taken and logged as a move.
        reg.release_claims(None, &[a.id], now_ms());
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.contest_line(), None);
        let line = reg.move_line().expect("a move line");
        assert!(
            line.contains(&format!("agent {} moved from worker-1 to worker-2 after a reconnect order", fmt_id(a.id))),
            "{line}"
        );
        // The old session's word that it left is merely stale: neither stored nor a contest.
        assert_eq!(
            reg.store_statuses("worker-1", &[status(a.id, "disconnected", Some(now_ms() - 5))]).unwrap(),
            (0, 0, 1)
        );
        assert_eq!(reg.contest_line(), None);
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!((row.status.as_str(), row.node_name.as_str()), ("active", "worker-2"));
        // The order named `a` only; and an order for worker-1's agents does not release worker-2's.
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        reg.release_claims(Some("worker-2"), &[], now_ms());
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        // An order lapses.
        reg.release_claims(None, &[], now_ms() - RELEASE_MS - 1);
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        reg.release_claims(Some("worker-1"), &[], now_ms());
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
    }

    #[test]
    fn a_keepalive_without_details_keeps_them_and_counts_follow_every_update() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("s1", None)).unwrap();
        let b = enroll(&mut reg, &agent("s2", None)).unwrap();
        assert_eq!(reg.count(Some("never_connected"), None), 2);
        let full = AgentInfoUpdate {
            group_config_status: Some("synced".into()),
            peer_ip: Some("10.1.1.1".into()),
            ..status(a.id, "active", Some(100))
        };
        reg.store_statuses("worker-1", &[full]).unwrap();
        let light = AgentInfoUpdate { version: None, ..status(a.id, "active", Some(300)) };
        assert_eq!(reg.store_statuses("worker-1", &[light]).unwrap(), (1, 0, 0));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!(row.last_keepalive_ms, Some(300));
        assert_eq!(row.version.as_deref(), Some("Wazuh v4.14.7"), "details kept");
        assert_eq!((row.group_config_status.as_deref(), row.peer_ip.as_deref()), (Some("synced"), Some("10.1.1.1")));
        // Statuses Wazuh does not have are refused, and counted as unknown.
        assert_eq!(reg.store_statuses("worker-1", &[status(b.id, "bogus", Some(1))]).unwrap(), (0, 1, 0));
        assert_eq!(reg.store_statuses("worker-1", &[status(b.id, "never_connected", Some(1))]).unwrap(), (0, 1, 0));
        let summary = reg.status_summary();
        assert_eq!((summary.connection["active"], summary.connection["never_connected"]), (1, 1));
        assert_eq!(summary.configuration["synced"], 1);
        assert_eq!(summary.nodes["worker-1"]["active"], 1);
        // A light update keeps the configuration status in the counts too.
        reg.store_statuses("worker-2", &[AgentInfoUpdate { version: None, ..status(a.id, "active", Some(400)) }])
            .unwrap();
        assert_eq!(reg.status_summary().configuration["synced"], 1);
        assert_eq!(reg.count(Some("active"), Some("worker-2")), 1);
        reg.delete(a.id).unwrap();
        assert_eq!(reg.status_summary().connection["total"], 1);
    }

    #[test]
    fn pages_hold_every_agent_exactly_once_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..230 {
            ids.push(enroll(&mut reg, &agent(&format!("p{:03}", (i * 7919) % 1000), None)).unwrap().id);
        }
        for id in ids.iter().step_by(3) {
            reg.store_statuses("worker-1", &[status(*id, "active", Some(*id as u64 % 17))]).unwrap();
        }
        for sort in ["", "-id", "+name", "-name", "lastKeepAlive", "-status,+name", "node_name"] {
            let mut seen = Vec::new();
            let mut offset = 0;
            loop {
                let q = AgentQuery {
                    sort: super::super::query::parse_sort(sort).unwrap(),
                    offset,
                    limit: 17,
                    ..AgentQuery::default()
                };
                let (total, page) = reg.page(&q).unwrap();
                assert_eq!(total, 230, "sort {sort}");
                if page.is_empty() {
                    break;
                }
                offset += page.len() as u64;
                seen.extend(page.into_iter().map(|r| r.entry.id));
            }
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 230, "sort {sort}: every agent exactly once");
            assert_eq!(seen.len(), 230, "sort {sort}: no agent twice");
        }
        let q = AgentQuery { status: Some("active".into()), limit: 1000, ..AgentQuery::default() };
        let (total, page) = reg.page(&q).unwrap();
        assert_eq!((total, page.len()), (77, 77));
        let q = AgentQuery { group: Some("default".into()), limit: 5, ..AgentQuery::default() };
        assert_eq!(reg.page(&q).unwrap().0, 230);
        let q = AgentQuery { group: Some("defaul".into()), ..AgentQuery::default() };
        assert_eq!(reg.page(&q).unwrap().0, 0, "a group is matched whole");
    }

    #[test]
    fn ids_are_wazuh_style_monotonic_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("a1", None)).unwrap();
        let b = enroll(&mut reg, &agent("a2", None)).unwrap();
        assert_eq!((fmt_id(a.id), fmt_id(b.id)), ("001".into(), "002".into()));
        assert_eq!(a.key.len(), 64);
        assert!(a.key.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a.groups, ["default"]);
        reg.begin().unwrap();
        reg.delete(b.id).unwrap();
        reg.commit().unwrap();
        let c = enroll(&mut reg, &agent("a3", None)).unwrap();
        assert_eq!(c.id, 3, "ids are never reused");
        drop(reg);
        let mut reg = Registry::open(dir.path()).unwrap();
        assert_eq!(enroll(&mut reg, &agent("a4", None)).unwrap().id, 4, "survives a restart");
        let keys = std::fs::read_to_string(dir.path().join("etc/client.keys")).unwrap();
        assert_eq!(keys.lines().count(), 3);
        assert!(keys.starts_with(&format!("001 a1 any {}\n", a.key)));
        assert_eq!(fmt_id(1000), "1000");
    }

    #[test]
    fn duplicates_groups_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        enroll(&mut reg, &agent("web-01", None)).unwrap();
        assert_eq!(enroll(&mut reg, &agent("web-01", None)), Err(EnrollError::DuplicateName("web-01".into())));
        let mut fixed = agent("db", None);
        fixed.ip = "10.0.0.7".into();
        enroll(&mut reg, &fixed).unwrap();
        let mut other = agent("db2", None);
        other.ip = "10.0.0.7".into();
        assert_eq!(enroll(&mut reg, &other), Err(EnrollError::DuplicateIp("10.0.0.7".into())));
        let mut grouped = agent("g1", None);
        grouped.groups = vec!["nosuchgroup".into()];
        assert_eq!(enroll(&mut reg, &grouped), Err(EnrollError::NoSuchGroup("nosuchgroup".into())));
        // A retried forwarded request returns the first answer and creates nothing.
        let first = enroll(&mut reg, &agent("tok", Some("t-1"))).unwrap();
        let again = enroll(&mut reg, &agent("tok", Some("t-1"))).unwrap();
        assert_eq!(first, again);
        assert_eq!(reg.entries().unwrap().len(), 3);
        // Undelivered: removed.
        reg.begin().unwrap();
        reg.resolve("t-1", false).unwrap();
        reg.commit().unwrap();
        assert_eq!(reg.entries().unwrap().len(), 2);
    }

    #[test]
    fn refusals_leave_no_row_and_an_agent_answers_for_its_token_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let at = 1_000_000_000_000u64;
        let apply = |reg: &mut Registry, a: &NewAgent, now: u64| {
            reg.begin().unwrap();
            let out = match reg.prepare_enrollment(a, now).unwrap() {
                Ok(p) => reg.apply_enrollment(&p).unwrap(),
                Err(e) => Err(e),
            };
            reg.commit().unwrap();
            out
        };
        // A row an earlier build recorded for a refusal.
        reg.table
            .conn
            .execute("INSERT INTO tokens (token, id, error, at) VALUES ('old', NULL, 'x', ?1)", [at as i64])
            .unwrap();
        let made = apply(&mut reg, &agent("web", Some("t-made")), at).unwrap();
        let rows = |reg: &Registry| -> i64 {
            reg.table.conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0)).unwrap()
        };
        // Refused requests, however many: no row.
        for i in 0..50 {
            let mut lost = agent(&format!("lost-{i}"), Some(&format!("t-refused-{i}")));
            lost.groups = vec!["nosuchgroup".into()];
            assert!(apply(&mut reg, &lost, at).is_err());
        }
        assert_eq!(rows(&reg), 1, "only the earlier build's row");
        // A retried refusal is tried afresh (the group exists now).
        reg.begin().unwrap();
        reg.create_group("nosuchgroup").unwrap();
        reg.commit().unwrap();
        let mut lost = agent("lost-0", Some("t-refused-0"));
        lost.groups = vec!["nosuchgroup".into()];
        assert!(apply(&mut reg, &lost, at + 1_000).is_ok());
        // A day later the earlier build's row goes; the agent still answers for its own token.
        apply(&mut reg, &agent("db", Some("t-later")), at + TOKENS_KEPT_MS + 1).unwrap();
        assert_eq!(rows(&reg), 0);
        assert_eq!(apply(&mut reg, &agent("web", Some("t-made")), at + TOKENS_KEPT_MS + 2), Ok(made));
    }

    #[test]
    fn an_old_never_connected_agent_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let old = enroll(&mut reg, &agent("web", None)).unwrap();
        reg.replace = ReplacePolicy { enabled: true, disconnected_for_ms: 0, registered_for_ms: 0 };
        let new = enroll(&mut reg, &agent("web", None)).unwrap();
        assert!(new.id > old.id);
        assert_eq!(reg.entries().unwrap().len(), 1);
        // With the key it holds, it is the same agent: not replaced.
        let mut same = agent("web", None);
        same.key_hash = Some(crate::registry::policy::key_hash(new.id, "web", &new.key));
        assert_eq!(enroll(&mut reg, &same), Err(EnrollError::DuplicateName("web".into())));
    }
}
