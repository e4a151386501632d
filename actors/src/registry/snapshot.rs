//! The registry as a whole: dumped and restored for the Raft log's snapshots, rebuilt from a
//! worker's replica when the master lost its own, and the Raft log's own key-values.

use super::master::{now_ms, Registry};
use super::schema::{self, groups_text};
use super::store::StoreError;
use rusqlite::{params, OptionalExtension};
use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

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

/// The tables a registry snapshot carries: everything but the replicated log's own state.
const SNAPSHOT_TABLES: [&str; 8] =
    ["agents", "groups", "meta", "changes", "tokens", "api_users", "api_users_seeded", "deleted_groups"];

/// A whole registry as rows, for a replicated log's snapshot: per table, its columns and rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TableDump {
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

    /// Every row of the registry's tables (inside the caller's transaction: one consistent view).
    pub(crate) fn dump(&self) -> Result<Vec<TableDump>, StoreError> {
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
    pub(crate) fn restore(&mut self, dump: &[TableDump]) -> Result<(), StoreError> {
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
    pub(crate) fn adopt_generation(&mut self, generation: u64) -> Result<bool, StoreError> {
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
    pub(crate) fn raft_value(&self, k: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT v FROM raft WHERE k = ?1")?
            .query_row(params![k], |r| r.get(0))
            .optional()?)
    }

    pub(crate) fn set_raft_value(&mut self, k: &str, v: &str) -> Result<(), StoreError> {
        self.table.conn.prepare_cached("INSERT OR REPLACE INTO raft (k, v) VALUES (?1, ?2)")?.execute(params![k, v])?;
        Ok(())
    }
}
