//! A worker's replica of the agent table: the master's changes (or a snapshot) applied in order,
//! its position (the master's sequence number it has reached), the same table hash as the master,
//! `client.keys` and the node's key index following each applied change ([`super::derived`]), and
//! the outbox of enrollment outcomes the
//! master has not acknowledged yet.

use super::query::{AgentQuery, SortField};
use super::schema::{self, groups_text, one_entry, open_db, TableHash};
use super::store::{Store, StoreError};
use super::table::AgentTable;
use rusqlite::params;
use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

/// `<data_dir>/var/db/replica.db`.
fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("var/db/replica.db")
}

/// A worker's replica of the agent table.
///
/// Its commits do not wait for the disk (`synchronous = NORMAL`): everything in it but the outbox
/// is the master's, and its position is committed with the changes, so a power loss can take its
/// last commits (never corrupt it) and the master sends them again from the position that stayed.
/// At 100,000 agents enrolling through 50 workers every enrollment is a commit in each of the 50
/// replicas: with an `fsync` each, 1,460 a second on this machine's disk and a quarter of the
/// replicas' CPU. The outbox is the worker's own word: a commit that records an enrollment's
/// outcome is on disk before it returns ([`Replica::outbox_put`]).
pub struct Replica {
    /// The connection, position, hash, the generation of the registry it follows (0: none yet),
    /// and what follows each commit; shared with the registry's code.
    table: AgentTable,
    /// The open transaction wrote what must be on disk when its commit returns.
    durable: bool,
    /// Commits made durable that way (for tests).
    durable_commits: u64,
}

impl Replica {
    /// Opens (or creates) `<data_dir>/var/db/replica.db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = open_db(&db_path(data_dir))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(schema::REPLICA_TABLES)?;
        conn.execute_batch(super::user_store::USER_TABLES)?;
        Ok(Replica { table: AgentTable::open(conn, data_dir, "agent replica")?, durable: false, durable_commits: 0 })
    }

    /// The write-ahead log's file, where a commit is before a checkpoint copies it.
    fn wal_path(&self) -> PathBuf {
        let mut wal = db_path(&self.table.data_dir).into_os_string();
        wal.push("-wal");
        PathBuf::from(wal)
    }

    /// Commits made durable for the outbox since the replica was opened.
    #[cfg(test)]
    pub(crate) fn durable_commits(&self) -> u64 {
        self.durable_commits
    }

    /// [`Replica::open`], setting a database SQLite finds corrupt (or not a database at all) aside
    /// as `replica.db.corrupt-<ms>` (with its -wal and -shm), kept for inspection, and starting an
    /// empty replica, which the master fills again. Returns the replica and the name the corrupt
    /// one was set aside under, if it was. Other errors (permissions, a full disk) are returned.
    pub fn open_or_set_aside(data_dir: &Path) -> Result<(Self, Option<PathBuf>), StoreError> {
        match Self::open(data_dir) {
            Ok(r) => Ok((r, None)),
            Err(StoreError::Db(e)) if is_corruption(&e) => {
                let db = db_path(data_dir);
                let aside = PathBuf::from(format!("{}.corrupt-{}", db.display(), crate::clock::now_ms()));
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", db.display()));
                    let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                    match std::fs::rename(&from, &to) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => return Err(StoreError::Io { path: from.display().to_string(), error }),
                    }
                }
                Ok((Self::open(data_dir)?, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }

    /// One page of the replica's agents and how many match in all. The replica knows agents'
    /// identities and groups, not their statuses: a status or node filter matches nothing.
    pub fn page(&self, q: &AgentQuery) -> Result<(u64, Vec<AgentEntry>), StoreError> {
        if q.status.is_some() || q.node.is_some() {
            return Ok((0, Vec::new()));
        }
        let (filter, mut args) = q.where_clause();
        let total = self
            .conn
            .prepare_cached(&format!("SELECT COUNT(*) FROM agents {filter}"))?
            .query_row(rusqlite::params_from_iter(&args), |r| r.get::<_, i64>(0))? as u64;
        let sql = format!(
            "SELECT id, name, ip, key, groups FROM agents {filter} {} {}",
            q.order_clause(&[SortField::Name, SortField::Ip]),
            q.page_clause(&mut args)
        );
        let mut stmt = self.table.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(&args), schema::row_entry)?;
        Ok((total, rows.collect::<Result<_, _>>()?))
    }

    /// Agent `id`, if the replica has it.
    pub fn entry(&self, id: u32) -> Result<Option<AgentEntry>, StoreError> {
        self.get(id)
    }

    /// Agents in the replica.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self.table.conn.prepare_cached("SELECT COUNT(*) FROM agents")?.query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    fn get(&self, id: u32) -> Result<Option<AgentEntry>, StoreError> {
        one_entry(&self.table.conn, id)
    }

    /// Applies an update (inside the caller's transaction) and returns whether it applied. A delta
    /// that does not start at our position is refused: the caller acknowledges its old position and
    /// the master sends a snapshot.
    pub fn apply(&mut self, from: u64, to: u64, snapshot: bool, changes: &[AgentChange]) -> Result<bool, StoreError> {
        if !snapshot && from != self.table.seq {
            return Ok(false);
        }
        self.apply_inner(to, snapshot, changes)
    }

    /// [`Replica::apply`] for an update of registry `generation` (0: unknown): refused without a
    /// change when this replica follows another registry and holds agents. Adopts `generation`
    /// otherwise.
    pub(crate) fn apply_from(
        &mut self,
        generation: u64,
        from: u64,
        to: u64,
        snapshot: bool,
        changes: &[AgentChange],
    ) -> Result<bool, StoreError> {
        if self.foreign(generation) {
            return Ok(false);
        }
        if !snapshot && from != self.table.seq {
            return Ok(false);
        }
        if generation != 0 && generation != self.table.generation {
            schema::store_generation(&self.table.conn, generation)?;
            self.table.generation = generation;
        }
        self.apply_inner(to, snapshot, changes)
    }

    /// Whether an update of registry `generation` comes from another registry than the one this
    /// replica follows, while the replica holds agents of its own (never overwritten then).
    pub(crate) fn foreign(&self, generation: u64) -> bool {
        generation != 0 && self.table.generation != 0 && generation != self.table.generation && self.table.seq > 0
    }

    fn apply_inner(&mut self, to: u64, snapshot: bool, changes: &[AgentChange]) -> Result<bool, StoreError> {
        if snapshot {
            self.table.conn.execute("DELETE FROM agents", [])?;
            self.table.conn.execute("DELETE FROM api_users", [])?;
            self.table.hash = TableHash::default();
            self.table.derived.record_reset();
        }
        for c in changes {
            match c {
                AgentChange::Added(e) => {
                    if let Some(old) = self.get(e.id)? {
                        self.table.hash.toggle(&old);
                    }
                    self.table
                        .conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO agents (id, name, ip, key, groups) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![e.id, e.name, e.ip, e.key, groups_text(&e.groups)])?;
                    self.table.hash.toggle(e);
                    self.table.derived.record(c.clone());
                }
                AgentChange::Removed { id } => {
                    if let Some(old) = self.get(*id)? {
                        self.table.conn.prepare_cached("DELETE FROM agents WHERE id = ?1")?.execute(params![id])?;
                        self.table.hash.toggle(&old);
                        self.table.derived.record(c.clone());
                    }
                }
                AgentChange::GroupsChanged { id, groups } => {
                    if let Some(old) = self.get(*id)? {
                        self.table
                            .conn
                            .prepare_cached("UPDATE agents SET groups = ?1 WHERE id = ?2")?
                            .execute(params![groups_text(groups), id])?;
                        self.table.hash.toggle(&old);
                        self.table.hash.toggle(&AgentEntry { groups: groups.clone(), ..old });
                        self.table.derived.record(c.clone());
                    }
                }
                // The API's users: no part of the agent table's hash.
                AgentChange::UserSet(_) | AgentChange::UserRemoved { .. } => {
                    super::user_store::apply_user_change(&self.table.conn, c)?;
                    self.table.derived.record(c.clone());
                }
            }
        }
        self.table.conn.prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'seq'")?.execute(params![to as i64])?;
        self.table.seq = to;
        Ok(true)
    }

    /// Records that the master must hear the fate of `token`; the transaction's commit is on disk
    /// before it returns.
    pub(crate) fn outbox_put(&mut self, token: &str, delivered: bool) -> Result<(), StoreError> {
        self.durable = true;
        self.table
            .conn
            .prepare_cached("INSERT OR REPLACE INTO outbox (token, delivered, at) VALUES (?1, ?2, ?3)")?
            .execute(params![token, delivered as i64, crate::clock::now_ms() as i64])?;
        Ok(())
    }

    pub(crate) fn outbox(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let mut stmt = self.table.conn.prepare_cached("SELECT token, delivered FROM outbox ORDER BY at")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn outbox_done(&self, token: &str) -> Result<(), StoreError> {
        self.table.conn.prepare_cached("DELETE FROM outbox WHERE token = ?1")?.execute(params![token])?;
        Ok(())
    }
}

impl Store for Replica {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.table.begin()
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        let durable = std::mem::take(&mut self.durable);
        self.table.commit()?;
        if durable {
            // What `synchronous = FULL` does at each commit: the log, with this commit in it, on
            // disk (any descriptor of the file flushes its pages).
            let wal = self.wal_path();
            std::fs::File::open(&wal).and_then(|f| f.sync_data()).map_err(StoreError::io(&wal))?;
            self.durable_commits += 1;
        }
        Ok(())
    }
    fn rollback(&mut self) {
        self.durable = false;
        self.table.rollback();
    }
    fn reload(&mut self) -> Result<(), StoreError> {
        self.table.reload_position()?;
        self.table.generation = schema::stored_generation(&self.table.conn)?;
        Ok(())
    }
    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.table.savepoint()
    }
    fn release(&mut self, keep: bool) {
        self.table.release(keep);
    }
}

impl std::ops::Deref for Replica {
    type Target = AgentTable;
    fn deref(&self) -> &AgentTable {
        &self.table
    }
}

impl std::ops::DerefMut for Replica {
    fn deref_mut(&mut self) -> &mut AgentTable {
        &mut self.table
    }
}

/// Whether SQLite says the file is damaged or not a database.
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::master::Registry;
    use crate::registry::testing::{agent, enroll};

    /// The master's changes are committed without waiting for the disk; a commit that records an
    /// enrollment's outcome (the worker's own word) waits for it, and a rolled-back one does not.
    #[test]
    fn only_the_outbox_waits_for_the_disk() {
        let m = tempfile::tempdir().unwrap();
        let w = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(m.path()).unwrap();
        let mut rep = Replica::open(w.path()).unwrap();
        let sync: i64 = rep.table.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!(sync, 1, "NORMAL");
        enroll(&mut reg, &agent("durable", None)).unwrap();
        let (_, changes) = reg.changes_since(0).unwrap();
        rep.begin().unwrap();
        assert!(rep.apply(0, reg.seq(), false, &changes).unwrap());
        rep.commit().unwrap();
        assert_eq!(rep.durable_commits(), 0);
        rep.begin().unwrap();
        rep.outbox_put("t1", true).unwrap();
        rep.commit().unwrap();
        assert_eq!(rep.durable_commits(), 1);
        rep.begin().unwrap();
        rep.outbox_put("t2", false).unwrap();
        rep.rollback();
        rep.begin().unwrap();
        rep.outbox_done("t1").unwrap();
        rep.commit().unwrap();
        assert_eq!(rep.durable_commits(), 1, "a rolled-back outbox entry, or a cleared one, waits for nothing");
        drop(rep);
        let rep = Replica::open(w.path()).unwrap();
        assert_eq!(rep.outbox().unwrap(), Vec::<(String, bool)>::new());
        assert_eq!(rep.entries().unwrap(), reg.entries().unwrap());
    }

    #[test]
    fn replicas_follow_by_delta_and_snapshot_and_hashes_agree() {
        let m = tempfile::tempdir().unwrap();
        let w = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(m.path()).unwrap();
        let mut rep = Replica::open(w.path()).unwrap();
        for i in 0..5 {
            enroll(&mut reg, &agent(&format!("a{i}"), None)).unwrap();
        }
        reg.begin().unwrap();
        reg.create_group("linux").unwrap();
        reg.assign(2, "linux").unwrap();
        reg.delete(3).unwrap();
        reg.commit().unwrap();
        let (snap, changes) = reg.changes_since(rep.seq()).unwrap();
        assert!(!snap);
        rep.begin().unwrap();
        assert!(rep.apply(0, reg.seq(), false, &changes).unwrap());
        rep.commit().unwrap();
        assert_eq!(rep.hash(), reg.hash());
        assert_eq!(rep.entries().unwrap(), reg.entries().unwrap());
        assert_eq!(
            std::fs::read(w.path().join("etc/client.keys")).unwrap(),
            std::fs::read(m.path().join("etc/client.keys")).unwrap()
        );
        // A gap is refused; a position in the future gets a snapshot.
        assert!(!rep.apply(rep.seq() + 5, rep.seq() + 6, false, &[]).unwrap());
        let (snap, all) = reg.changes_since(reg.seq() + 10).unwrap();
        assert!(snap);
        let mut fresh = Replica::open(tempfile::tempdir().unwrap().path()).unwrap();
        fresh.begin().unwrap();
        assert!(fresh.apply(0, reg.seq(), true, &all).unwrap());
        fresh.commit().unwrap();
        assert_eq!(fresh.hash(), reg.hash());
        assert_eq!(reg.groups().unwrap(), [("default".to_string(), 4), ("linux".to_string(), 1)]);
    }

    #[test]
    fn a_long_delta_in_parts_reaches_the_same_table() {
        let m = tempfile::tempdir().unwrap();
        let w = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(m.path()).unwrap();
        let mut rep = Replica::open(w.path()).unwrap();
        for i in 0..10 {
            enroll(&mut reg, &agent(&format!("p{i}"), None)).unwrap();
        }
        reg.begin().unwrap();
        reg.delete(4).unwrap();
        reg.commit().unwrap();
        let mut parts = Vec::new();
        while rep.seq() < reg.seq() {
            let (snap, changes, to) = reg.changes_since_limited(rep.seq(), 4).unwrap();
            assert!(!snap);
            assert!(changes.len() <= 4 && to > rep.seq());
            parts.push((rep.seq(), to, changes.len()));
            rep.begin().unwrap();
            assert!(rep.apply(rep.seq(), to, false, &changes).unwrap());
            rep.commit().unwrap();
        }
        assert_eq!(parts, [(0, 4, 4), (4, 8, 4), (8, 11, 3)]);
        assert_eq!(rep.hash(), reg.hash());
        assert_eq!(rep.entries().unwrap(), reg.entries().unwrap());
        assert_eq!(
            std::fs::read(w.path().join("etc/client.keys")).unwrap(),
            std::fs::read(m.path().join("etc/client.keys")).unwrap()
        );
        // Nothing after the current position: an empty delta at that position.
        assert_eq!(reg.changes_since_limited(reg.seq(), 4).unwrap(), (false, vec![], reg.seq()));
    }

    #[test]
    fn a_replica_that_holds_agents_never_takes_another_registrys_table() {
        let w = tempfile::tempdir().unwrap();
        let mut rep = Replica::open(w.path()).unwrap();
        let one = AgentEntry { id: 1, name: "a".into(), ip: "any".into(), key: "k".repeat(64), groups: vec![] };
        rep.begin().unwrap();
        assert!(rep.apply_from(11, 0, 1, false, &[AgentChange::Added(one.clone())]).unwrap());
        rep.commit().unwrap();
        assert_eq!((rep.generation(), rep.seq()), (11, 1), "a fresh replica adopts the generation");
        // Another registry's snapshot (an empty table): refused, nothing changes.
        assert!(rep.foreign(22));
        rep.begin().unwrap();
        assert!(!rep.apply_from(22, 0, 0, true, &[]).unwrap());
        rep.commit().unwrap();
        assert_eq!(rep.entries().unwrap(), vec![one.clone()]);
        assert_eq!((rep.generation(), rep.seq()), (11, 1));
        // The same registry goes on; the generation survives a reopen.
        drop(rep);
        let rep = Replica::open(w.path()).unwrap();
        assert_eq!(rep.generation(), 11);
        assert!(!rep.foreign(11) && !rep.foreign(0));
    }

    #[test]
    fn a_corrupt_replica_is_set_aside_and_an_empty_one_started() {
        let w = tempfile::tempdir().unwrap();
        let db = w.path().join("var/db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("replica.db"), b"this is not an SQLite database, just garbage bytes. ".repeat(200))
            .unwrap();
        let (rep, aside) = Replica::open_or_set_aside(w.path()).unwrap();
        let aside = aside.expect("set aside");
        assert!(aside.exists(), "the corrupt file is kept for inspection");
        assert!(aside.file_name().unwrap().to_string_lossy().starts_with("replica.db.corrupt-"));
        assert_eq!((rep.seq(), rep.generation(), rep.count().unwrap()), (0, 0, 0));
        // A sound replica is opened as it is.
        drop(rep);
        let (_, aside) = Replica::open_or_set_aside(w.path()).unwrap();
        assert!(aside.is_none());
    }
}
