//! The agent table as both stores keep it: the SQLite connection, the change position (`seq`) and
//! the table hash, the registry generation, the transaction helpers, and what follows each commit
//! (`client.keys`, the node's key index, the API's users: [`super::derived`]). The master's
//! [`super::Registry`] and a worker's [`super::Replica`] are each an `AgentTable` plus what only
//! they do; both reach it through `Deref`.

use super::derived::{Derived, KeySink};
use super::schema::{self, all_entries, one_entry, TableHash};
use super::store::StoreError;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wazuh_cluster_protocol::message::{AgentEntry, ApiUser};

pub struct AgentTable {
    pub(super) conn: Connection,
    pub(super) data_dir: PathBuf,
    pub(super) hash: TableHash,
    pub(super) seq: u64,
    /// The registry's identity (a replica: the one it follows, 0 for none yet).
    pub(super) generation: u64,
    pub(super) derived: Derived,
    /// The API's users as every part of the node reads them, refreshed after each commit that
    /// changed them.
    users: Option<Arc<super::user_store::UserDirectory>>,
    /// "agent registry" or "agent replica", for log lines.
    what: &'static str,
}

impl AgentTable {
    /// The table in `conn` (its tables made), with `client.keys` written whole for it.
    pub(super) fn open(conn: Connection, data_dir: &Path, what: &'static str) -> Result<Self, StoreError> {
        let seq: i64 = conn.query_row("SELECT v FROM meta WHERE k = 'seq'", [], |r| r.get(0))?;
        let entries = all_entries(&conn)?;
        let mut hash = TableHash::default();
        for e in &entries {
            hash.toggle(e);
        }
        let derived = Derived::open(data_dir, &entries)?;
        let generation = schema::stored_generation(&conn)?;
        Ok(Self {
            conn,
            data_dir: data_dir.to_path_buf(),
            hash,
            seq: seq as u64,
            generation,
            derived,
            users: None,
            what,
        })
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The node's data directory (its sync roots are under it).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The position: the sequence number of the last change applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The registry's identity (a replica: the one it follows, 0 for none yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The table hash (equal hashes: equal tables).
    pub fn hash(&self) -> String {
        self.hash.hex()
    }

    /// Every agent's identity, in id order.
    pub fn entries(&self) -> Result<Vec<AgentEntry>, StoreError> {
        all_entries(&self.conn)
    }

    /// Agent `id` for the key index, and whether the open transaction has left the table as it
    /// was committed (a key read amid uncommitted changes is not cached).
    pub(crate) fn key_entry(&self, id: u32) -> Result<(Option<AgentEntry>, bool), StoreError> {
        Ok((one_entry(&self.conn, id)?, !self.derived.dirty()))
    }

    /// Sends every committed change of the table to `sink` (after the whole table now).
    pub fn set_key_sink(&mut self, sink: Arc<dyn KeySink>) -> Result<(), StoreError> {
        let entries = self.entries()?;
        self.derived.set_sink(sink, &entries);
        Ok(())
    }

    /// Writes client.keys whole again if someone else changed it since this node wrote it (every
    /// write checks too; this catches a change while nothing is written). Between transactions
    /// only. Returns what was found and done, if anything.
    pub(crate) fn repair_client_keys(&mut self) -> Result<Option<String>, StoreError> {
        let conn = &self.conn;
        let repaired = self.derived.repair(&self.data_dir, || all_entries(conn))?;
        if let Some(why) = &repaired {
            log::warn!("{} in {}: {why}", self.what, self.data_dir.display());
        }
        Ok(repaired)
    }

    /// Keeps `directory` equal to the users table from now on (filled now).
    pub fn set_user_directory(&mut self, directory: Arc<super::user_store::UserDirectory>) -> Result<(), StoreError> {
        directory.replace(self.users()?);
        self.users = Some(directory);
        Ok(())
    }

    /// Every API user.
    pub fn users(&self) -> Result<Vec<ApiUser>, StoreError> {
        super::user_store::read_users(&self.conn)
    }

    /// Statements run for every transaction are prepared once (parsing them again was a visible
    /// share of a replica's thread while thousands of agents enroll).
    pub(super) fn begin(&self) -> Result<(), StoreError> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(())
    }

    /// Commits, then brings client.keys, the key index and the users up to date with what changed.
    /// A failed write of client.keys does not undo the commit (the file is written whole after the
    /// next change, and at every start); it is logged.
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        let users_changed = self.derived.take_users_changed();
        let (conn, what, dir) = (&self.conn, self.what, self.data_dir.display());
        match self.derived.committed(&self.data_dir, || all_entries(conn)) {
            Ok(None) => {}
            Ok(Some(repaired)) => log::warn!("{what} in {dir}: {repaired}"),
            Err(e) => log::warn!("{what} in {dir}: cannot update client.keys: {e}"),
        }
        if let (true, Some(directory)) = (users_changed, &self.users) {
            match super::user_store::read_users(&self.conn) {
                Ok(users) => directory.replace(users),
                Err(e) => log::warn!("{what} in {dir}: cannot read the API users: {e}"),
            }
        }
        Ok(())
    }

    pub(super) fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.derived.rollback();
    }

    pub(super) fn savepoint(&mut self) -> Result<(), StoreError> {
        schema::savepoint(&self.conn)?;
        self.derived.savepoint();
        Ok(())
    }

    pub(super) fn release(&mut self, keep: bool) {
        schema::release(&self.conn, keep);
        self.derived.release(keep);
    }

    /// Reads the position and hash again (another connection changed the table).
    pub(super) fn reload_position(&mut self) -> Result<(), StoreError> {
        (self.seq, self.hash) = schema::position(&self.conn)?;
        Ok(())
    }
}
