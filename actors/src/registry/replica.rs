//! A worker's replica of the agent table: the master's changes (or a snapshot) applied in order,
//! its position (the master's sequence number it has reached), the same table hash as the master,
//! `client.keys` rewritten after each applied change, and the outbox of enrollment outcomes the
//! master has not acknowledged yet.

use super::client_keys;
use super::schema::{self, all_entries, groups_text, one_entry, open_db, TableHash};
use super::store::{Store, StoreError};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

/// A worker's replica of the agent table.
pub struct Replica {
    conn: Connection,
    data_dir: PathBuf,
    hash: TableHash,
    seq: u64,
    dirty: bool,
}

impl Replica {
    /// Opens (or creates) `<data_dir>/var/db/replica.db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = open_db(&data_dir.join("var/db/replica.db"))?;
        conn.execute_batch(schema::REPLICA_TABLES)?;
        let seq: i64 = conn.query_row("SELECT v FROM meta WHERE k = 'seq'", [], |r| r.get(0))?;
        let mut rep = Replica {
            conn,
            data_dir: data_dir.to_path_buf(),
            hash: TableHash::default(),
            seq: seq as u64,
            dirty: false,
        };
        for e in rep.entries()? {
            rep.hash.toggle(&e);
        }
        rep.write_keys()?;
        Ok(rep)
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn hash(&self) -> String {
        self.hash.hex()
    }

    pub fn entries(&self) -> Result<Vec<AgentEntry>, StoreError> {
        all_entries(&self.conn)
    }

    pub fn write_keys(&self) -> Result<(), StoreError> {
        client_keys::write(&self.data_dir, &self.entries()?)
    }

    fn get(&self, id: u32) -> Result<Option<AgentEntry>, StoreError> {
        one_entry(&self.conn, id)
    }

    /// Applies an update (inside the caller's transaction) and returns whether it applied. A delta
    /// that does not start at our position is refused: the caller acknowledges its old position and
    /// the master sends a snapshot.
    pub fn apply(&mut self, from: u64, to: u64, snapshot: bool, changes: &[AgentChange]) -> Result<bool, StoreError> {
        if !snapshot && from != self.seq {
            return Ok(false);
        }
        if snapshot {
            self.conn.execute("DELETE FROM agents", [])?;
            self.hash = TableHash::default();
        }
        for c in changes {
            match c {
                AgentChange::Added(e) => {
                    if let Some(old) = self.get(e.id)? {
                        self.hash.toggle(&old);
                    }
                    self.conn.execute(
                        "INSERT OR REPLACE INTO agents (id, name, ip, key, groups) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![e.id, e.name, e.ip, e.key, groups_text(&e.groups)],
                    )?;
                    self.hash.toggle(e);
                }
                AgentChange::Removed { id } => {
                    if let Some(old) = self.get(*id)? {
                        self.conn.execute("DELETE FROM agents WHERE id = ?1", params![id])?;
                        self.hash.toggle(&old);
                    }
                }
                AgentChange::GroupsChanged { id, groups } => {
                    if let Some(old) = self.get(*id)? {
                        self.conn
                            .execute("UPDATE agents SET groups = ?1 WHERE id = ?2", params![groups_text(groups), id])?;
                        self.hash.toggle(&old);
                        self.hash.toggle(&AgentEntry { groups: groups.clone(), ..old });
                    }
                }
            }
        }
        self.conn.execute("UPDATE meta SET v = ?1 WHERE k = 'seq'", params![to as i64])?;
        self.seq = to;
        self.dirty = true;
        Ok(true)
    }

    /// Records that the master must hear the fate of `token`.
    pub fn outbox_put(&self, token: &str, delivered: bool) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO outbox (token, delivered, at) VALUES (?1, ?2, ?3)",
            params![token, delivered as i64, crate::clock::now_ms() as i64],
        )?;
        Ok(())
    }

    pub fn outbox(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT token, delivered FROM outbox ORDER BY at")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn outbox_done(&self, token: &str) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM outbox WHERE token = ?1", params![token])?;
        Ok(())
    }
}

impl Store for Replica {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        if self.dirty {
            self.write_keys()?;
            self.dirty = false;
        }
        Ok(())
    }
    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }
    fn reload(&mut self) -> Result<(), StoreError> {
        (self.seq, self.hash) = schema::position(&self.conn)?;
        Ok(())
    }
    fn savepoint(&mut self) -> Result<(), StoreError> {
        schema::savepoint(&self.conn)
    }
    fn release(&mut self, keep: bool) {
        schema::release(&self.conn, keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::master::Registry;
    use crate::registry::testing::{agent, enroll};

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
}
