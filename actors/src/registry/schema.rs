//! The SQLite side of the registry and the replicas: opening a database, the tables, reading agent
//! rows, ids as Wazuh writes them, and the order-independent table hash both sides keep.

use super::store::StoreError;
use md5::{Digest, Md5};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use wazuh_cluster_protocol::message::AgentEntry;

pub const DEFAULT_GROUP: &str = "default";
/// Changes kept for delta replication; a worker further behind gets a snapshot.
pub(crate) const CHANGELOG_KEEP: u64 = 100_000;
/// How long the outcome of a forwarded enrollment is kept under its idempotency token: far longer
/// than a worker retries one (an agent waits seconds for its key). An agent keeps its token with
/// it for good; this bounds the rows of refusals and of agents since removed.
pub(crate) const TOKENS_KEPT_MS: u64 = 24 * 3_600 * 1_000;

/// The master's tables.
pub(crate) const MASTER_TABLES: &str = "CREATE TABLE IF NOT EXISTS agents (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        ip TEXT NOT NULL,
        key TEXT NOT NULL,
        groups TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        node_name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'never_connected',
        last_keepalive INTEGER,
        disconnected_at INTEGER,
        version TEXT,
        os_name TEXT,
        os_platform TEXT,
        os_version TEXT,
        labels TEXT,
        merged_sum TEXT,
        config_sum TEXT,
        token TEXT UNIQUE,
        pending INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS changes (
        seq INTEGER PRIMARY KEY,
        op TEXT NOT NULL,
        id INTEGER NOT NULL,
        name TEXT, ip TEXT, key TEXT, groups TEXT
    );
    CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, id INTEGER, error TEXT, at INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS raft (k TEXT PRIMARY KEY, v TEXT NOT NULL);
    INSERT OR IGNORE INTO meta (k, v) VALUES ('last_id', 0), ('seq', 0);";

/// Groups deleted (their directories go after the commit, or at the next start after a crash).
pub(crate) const DELETED_GROUPS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS deleted_groups (name TEXT PRIMARY KEY, at INTEGER NOT NULL);";

/// Columns added to the master's `agents` table after its first release.
pub(crate) const MASTER_ADDED_COLUMNS: [(&str, &str); 3] =
    [("info", "TEXT"), ("group_config_status", "TEXT"), ("peer_ip", "TEXT")];

/// Indexes for the lookups that run per enrollment or per pass (a duplicate address; agents whose
/// key delivery is unconfirmed), so that their cost does not grow with the registry.
pub(crate) const MASTER_INDEXES: &str = "CREATE INDEX IF NOT EXISTS agents_ip ON agents (ip);
    CREATE INDEX IF NOT EXISTS agents_pending ON agents (registered_at) WHERE pending = 1;
    CREATE INDEX IF NOT EXISTS tokens_at ON tokens (at);";

/// A worker's tables.
pub(crate) const REPLICA_TABLES: &str = "CREATE TABLE IF NOT EXISTS agents (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ip TEXT NOT NULL, key TEXT NOT NULL, groups TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS outbox (token TEXT PRIMARY KEY, delivered INTEGER NOT NULL, at INTEGER NOT NULL);
     INSERT OR IGNORE INTO meta (k, v) VALUES ('seq', 0);";

/// Formats an id as Wazuh shows it.
pub fn fmt_id(id: u32) -> String {
    format!("{id:03}")
}

/// Parses `001`, `1`, `1234`.
pub fn parse_id(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn entry_digest(e: &AgentEntry) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(format!("{} {} {} {} {}\n", e.id, e.name, e.ip, e.key, e.groups.join(",")).as_bytes());
    h.finalize().into()
}

/// The order-independent hash of a set of agents (XOR of the MD5 of every agent's
/// `id name ip key groups` line), updated in O(1) per change. Equal hashes mean equal tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableHash([u8; 16]);

impl TableHash {
    pub(crate) fn toggle(&mut self, e: &AgentEntry) {
        for (a, b) in self.0.iter_mut().zip(entry_digest(e)) {
            *a ^= b;
        }
    }
    pub(crate) fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Prepared statements each store keeps.
const STATEMENTS_CACHED: usize = 64;

/// Opens (or creates) a database: WAL (readers never block the writer), FULL sync (a commit is on
/// disk before anyone hears of it), foreign keys on.
pub(crate) fn open_db(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    }
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each command runs under a savepoint, whose sub-journal (the pages as they were before the
    // command) is only needed until the transaction ends: in memory, not in a temporary file
    // (at 100,000 agents connecting, its writes were 9 % of the master's CPU in a profile).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement the stores prepare (the master's registry has over 30): rusqlite
    // keeps 16 by default, and an enrollment with its confirmation uses about 15, so some were
    // parsed again each time.
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
    Ok(conn)
}

/// Adds `columns` to `table` where they are missing.
pub(crate) fn add_missing_columns(conn: &Connection, table: &str, columns: &[(&str, &str)]) -> Result<(), StoreError> {
    for (col, ty) in columns {
        let has: bool = conn
            .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?
            .exists(params![col])?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {ty}"))?;
        }
    }
    Ok(())
}

pub(crate) fn groups_text(groups: &[String]) -> String {
    groups.join(",")
}

pub(crate) fn groups_vec(text: &str) -> Vec<String> {
    groups_of(text).map(String::from).collect()
}

/// The groups in a stored, comma-separated `groups` column, in their order.
pub(crate) fn groups_of(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').filter(|g| !g.is_empty())
}

pub(crate) fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentEntry> {
    Ok(AgentEntry {
        id: r.get(0)?,
        name: r.get(1)?,
        ip: r.get(2)?,
        key: r.get(3)?,
        groups: groups_vec(&r.get::<_, String>(4)?),
    })
}

/// Every agent's identity (`agents` table of either store), in id order.
pub(crate) fn all_entries(conn: &Connection) -> Result<Vec<AgentEntry>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id, name, ip, key, groups FROM agents ORDER BY id")?;
    let rows = stmt.query_map([], row_entry)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(crate) fn one_entry(conn: &Connection, id: u32) -> Result<Option<AgentEntry>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id, name, ip, key, groups FROM agents WHERE id = ?1")?
        .query_row(params![id], row_entry)
        .optional()?)
}

/// The registry generation stored in `meta` (0: none yet).
pub(crate) fn stored_generation(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn
        .query_row("SELECT v FROM meta WHERE k = 'generation'", [], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, |v| v as u64))
}

/// Stores `generation` in `meta`.
pub(crate) fn store_generation(conn: &Connection, generation: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (k, v) VALUES ('generation', ?1)",
        params![(generation & (i64::MAX as u64)) as i64],
    )?;
    Ok(())
}

/// The stored sequence number.
pub(crate) fn stored_seq(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT v FROM meta WHERE k = 'seq'", [], |r| r.get::<_, i64>(0))? as u64)
}

/// The stored sequence number and the hash of the table, read afresh.
pub fn position(conn: &Connection) -> Result<(u64, TableHash), StoreError> {
    let seq = stored_seq(conn)?;
    let mut hash = TableHash::default();
    for e in all_entries(conn)? {
        hash.toggle(&e);
    }
    Ok((seq, hash))
}

/// Starts a command's savepoint (a statement prepared once: one runs for every command).
pub(crate) fn savepoint(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached("SAVEPOINT cmd")?.execute([])?;
    Ok(())
}

pub fn release(conn: &Connection, keep: bool) {
    if !keep {
        let _ = conn.prepare_cached("ROLLBACK TO cmd").and_then(|mut s| s.execute([]));
    }
    let _ = conn.prepare_cached("RELEASE cmd").and_then(|mut s| s.execute([]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_wazuh_writes_them() {
        assert_eq!((fmt_id(1), fmt_id(1000)), ("001".to_string(), "1000".to_string()));
        assert_eq!(parse_id("001"), Some(1));
        assert_eq!(parse_id("1234"), Some(1234));
        for bad in ["", "-1", "1a", "0x1", "1234567890"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_table_hash_ignores_order_and_undoes_itself() {
        let e = |id: u32| AgentEntry {
            id,
            name: format!("a{id}"),
            ip: "any".into(),
            key: "k".into(),
            groups: vec!["default".into()],
        };
        let (mut a, mut b) = (TableHash::default(), TableHash::default());
        a.toggle(&e(1));
        a.toggle(&e(2));
        b.toggle(&e(2));
        b.toggle(&e(1));
        assert_eq!(a, b);
        a.toggle(&e(2));
        a.toggle(&e(1));
        assert_eq!(a, TableHash::default());
    }
}
