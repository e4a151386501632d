//! What follows the agent table, per change: `client.keys` and the node's key index (the agent
//! connections' keys). A store records the changes of the transaction in progress here; once it
//! commits they are applied, in O(change), before any caller hears of the commit. A change undone
//! (a command's savepoint rolled back, a transaction that failed) is forgotten with it.

use super::client_keys::ClientKeys;
use super::store::StoreError;
use std::path::Path;
use std::sync::Arc;
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

/// Something that keeps a copy of the agent table's identities (the agent hub's key index). Called
/// on the store's thread, after the commit and before its callers are answered.
pub trait KeySink: Send + Sync {
    /// The table is now exactly `entries`.
    fn reset(&self, entries: &[AgentEntry]);
    /// These committed changes, in order.
    fn apply(&self, changes: &[AgentChange]);
}

/// The changes of the open transaction and where they go once it commits.
pub(crate) struct Derived {
    keys: ClientKeys,
    sink: Option<Arc<dyn KeySink>>,
    pending: Vec<AgentChange>,
    /// The transaction replaced the whole table (a snapshot): everything is rebuilt.
    reset: bool,
    /// Where the current command's savepoint began.
    mark: (usize, bool),
    /// A write of client.keys failed: the next commit writes it whole.
    keys_stale: bool,
    /// A reset could not be carried out (the table could not be read): the next commit does it.
    resync: bool,
    /// The open transaction touched the API's users (or replaced everything).
    users_changed: bool,
}

impl Derived {
    /// Writes `client.keys` whole for `entries`.
    pub fn open(data_dir: &Path, entries: &[AgentEntry]) -> Result<Self, StoreError> {
        Ok(Self {
            keys: ClientKeys::create(data_dir, entries)?,
            sink: None,
            pending: Vec::new(),
            reset: false,
            mark: (0, false),
            keys_stale: false,
            resync: false,
            users_changed: false,
        })
    }

    /// Sends every committed change to `sink` from now on, starting with the whole table.
    pub(crate) fn set_sink(&mut self, sink: Arc<dyn KeySink>, entries: &[AgentEntry]) {
        sink.reset(entries);
        self.sink = Some(sink);
    }

    pub fn record(&mut self, change: AgentChange) {
        self.users_changed |= change.is_user();
        if !self.reset {
            self.pending.push(change);
        }
    }

    /// The whole table is replaced in this transaction.
    pub(crate) fn record_reset(&mut self) {
        self.reset = true;
        self.users_changed = true;
        self.pending.clear();
    }

    /// Whether the transaction touched the API's users (a commit or rollback ends the question; a
    /// change undone under a savepoint may still count: the users are read again for nothing).
    pub(crate) fn take_users_changed(&mut self) -> bool {
        std::mem::take(&mut self.users_changed)
    }

    pub(crate) fn savepoint(&mut self) {
        self.mark = (self.pending.len(), self.reset);
    }

    /// The command under the savepoint is kept or undone.
    pub fn release(&mut self, keep: bool) {
        if !keep {
            self.pending.truncate(self.mark.0);
            self.reset = self.mark.1;
        }
    }

    pub(crate) fn rollback(&mut self) {
        self.pending.clear();
        self.reset = false;
        self.users_changed = false;
    }

    /// Whether the open transaction changed the table.
    pub(crate) fn dirty(&self) -> bool {
        self.reset || !self.pending.is_empty()
    }

    /// The transaction committed: brings the sink and client.keys up to date. `entries` reads the
    /// whole table, needed only after a reset (or to write client.keys whole again after a failed
    /// write, or when someone else changed the file). An error is about client.keys only: the
    /// commit stands, the sink has the changes, and the next commit writes the file whole. `Ok`
    /// carries why the file was written whole again when someone else had changed it.
    pub fn committed(
        &mut self,
        data_dir: &Path,
        entries: impl FnOnce() -> Result<Vec<AgentEntry>, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        let changes = std::mem::take(&mut self.pending);
        let reset = std::mem::replace(&mut self.reset, false) || self.resync;
        if !reset && changes.is_empty() && !self.keys_stale {
            return Ok(None);
        }
        if !reset {
            if let Some(s) = &self.sink {
                s.apply(&changes);
            }
        }
        // Each write first checks that the file is still what this node wrote: lines written at
        // offsets of a file someone truncated or replaced would be lost or land in a hole.
        let mut repaired = None;
        if !reset && !self.keys_stale {
            match self.keys.check() {
                Ok(()) => {
                    let written = self.keys.apply(&changes);
                    self.keys_stale = written.is_err();
                    return written.map(|()| None);
                }
                Err(why) => {
                    repaired =
                        Some(format!("{} {why}: written again whole from the registry", self.keys.path().display()))
                }
            }
        }
        let all = match entries() {
            Ok(all) => all,
            Err(e) => {
                self.resync |= reset;
                self.keys_stale = true;
                return Err(e);
            }
        };
        self.resync = false;
        if reset {
            if let Some(s) = &self.sink {
                s.reset(&all);
            }
        }
        let written = ClientKeys::create(data_dir, &all).map(|k| self.keys = k);
        self.keys_stale = written.is_err();
        written.map(|()| repaired)
    }

    /// Between transactions: writes client.keys whole again if someone else changed it, and says
    /// why it did.
    pub(crate) fn repair(
        &mut self,
        data_dir: &Path,
        entries: impl FnOnce() -> Result<Vec<AgentEntry>, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        match self.keys.check() {
            Ok(()) if !self.keys_stale => Ok(None),
            Ok(()) => self.committed(data_dir, entries),
            Err(why) => {
                self.keys_stale = true;
                self.committed(data_dir, entries)?;
                Ok(Some(format!("{} {why}: written again whole from the registry", self.keys.path().display())))
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn client_keys(&self) -> &ClientKeys {
        &self.keys
    }
}
