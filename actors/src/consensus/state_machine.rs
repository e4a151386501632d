//! The registry as openraft's state machine. Entries are applied on the registry's own thread
//! (its [`StoreHandle`]), a batch in one transaction with the applied position and membership, so
//! that after a crash the registry and the position it records never disagree. A snapshot is the
//! registry's tables ([`Registry::dump`]); it is kept in `var/db/raft-snapshot.json` until the next.

use super::{RegistryRaft, StorageError};
use crate::registry::command::Outcome;
use crate::registry::master::Registry;
use crate::registry::snapshot::TableDump;
use crate::registry::store::StoreHandle;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the last snapshot is kept, under the data dir.
pub(crate) const SNAPSHOT_FILE: &str = "var/db/raft-snapshot.json";

type Meta = SnapshotMeta<u64, BasicNode>;
type Membership = StoredMembership<u64, BasicNode>;

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The state machine; clones share the registry and the current snapshot.
#[derive(Clone)]
pub(crate) struct StateMachine {
    registry: StoreHandle<Registry>,
    snapshot_file: PathBuf,
    current: Arc<Mutex<Option<Arc<StoredSnapshot>>>>,
}

fn sm_read(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn sm_write(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snapshot_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";

/// The applied position and membership the registry records.
fn recorded(r: &Registry) -> Result<(Option<LogId<u64>>, Membership), crate::registry::StoreError> {
    fn read<T: serde::de::DeserializeOwned>(r: &Registry, k: &str) -> Result<Option<T>, crate::registry::StoreError> {
        r.raft_value(k)?
            .map(|t| {
                serde_json::from_str(&t).map_err(|e| crate::registry::StoreError::Invalid(format!("raft {k}: {e}")))
            })
            .transpose()
    }
    let applied = read::<Option<LogId<u64>>>(r, APPLIED)?.flatten();
    Ok((applied, read(r, MEMBERSHIP)?.unwrap_or_default()))
}

fn record(
    r: &mut Registry,
    applied: &Option<LogId<u64>>,
    membership: Option<&Membership>,
) -> Result<(), crate::registry::StoreError> {
    let invalid = |e: serde_json::Error| crate::registry::StoreError::Invalid(e.to_string());
    r.set_raft_value(APPLIED, &serde_json::to_string(applied).map_err(invalid)?)?;
    if let Some(m) = membership {
        r.set_raft_value(MEMBERSHIP, &serde_json::to_string(m).map_err(invalid)?)?;
    }
    Ok(())
}

impl StateMachine {
    /// The state machine over `registry` (running on its thread), with its snapshot file under
    /// `data_dir`.
    pub fn new(registry: StoreHandle<Registry>, data_dir: &Path) -> Self {
        let snapshot_file = data_dir.join(SNAPSHOT_FILE);
        let current = std::fs::read(&snapshot_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StoredSnapshot>(&bytes).ok())
            .map(Arc::new);
        Self { registry, snapshot_file, current: Arc::new(Mutex::new(current)) }
    }

    fn keep(&self, snapshot: StoredSnapshot) -> Result<Arc<StoredSnapshot>, StorageError> {
        let bytes = serde_json::to_vec(&snapshot).map_err(snapshot_err)?;
        let tmp = self.snapshot_file.with_extension("json.tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.snapshot_file))
            .map_err(snapshot_err)?;
        let kept = Arc::new(snapshot);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept.clone());
        Ok(kept)
    }

    /// Replaces the registry with snapshot `data` taken at `meta`, in one transaction.
    async fn restore(&self, meta: &Meta, data: &[u8]) -> Result<(), StorageError> {
        let dump: Vec<TableDump> = serde_json::from_slice(data).map_err(snapshot_err)?;
        let (applied, membership) = (meta.last_log_id, meta.last_membership.clone());
        self.registry
            .run(move |r| {
                r.restore(&dump)?;
                record(r, &applied, Some(&membership))
            })
            .await
            .map_err(sm_write)
    }

    fn as_snapshot(s: &StoredSnapshot) -> Snapshot<RegistryRaft> {
        Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }
    }
}

impl RaftSnapshotBuilder<RegistryRaft> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<RegistryRaft>, StorageError> {
        let (dump, applied, membership) = self
            .registry
            .run(|r| {
                let (applied, membership) = recorded(r)?;
                Ok((r.dump()?, applied, membership))
            })
            .await
            .map_err(sm_read)?;
        let data = serde_json::to_vec(&dump).map_err(snapshot_err)?;
        let snapshot_id = match &applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, crate::backoff::random_u64()),
            None => format!("empty-{}", crate::backoff::random_u64()),
        };
        let meta = Meta { last_log_id: applied, last_membership: membership, snapshot_id };
        let kept = self.keep(StoredSnapshot { meta, data })?;
        Ok(Self::as_snapshot(&kept))
    }
}

impl RaftStateMachine<RegistryRaft> for StateMachine {
    type SnapshotBuilder = Self;

    /// Where the registry stands. It commits without waiting for the disk (the log is the durable
    /// record, see [`Registry::relax_sync_for_log`]), so after a power loss it may stand before the
    /// kept snapshot, and the log may no longer hold the entries in between (it is purged up to
    /// snapshots): the registry then starts again from the snapshot.
    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), StorageError> {
        let (applied, membership) = self.registry.run(|r| recorded(r)).await.map_err(sm_read)?;
        let kept = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match kept {
            Some(s) if s.meta.last_log_id > applied => {
                log::warn!(
                    "the registry stands at {applied:?}, before the kept snapshot at {:?} (its last commits were lost): restored from the snapshot",
                    s.meta.last_log_id
                );
                self.restore(&s.meta, &s.data).await?;
                Ok((s.meta.last_log_id, s.meta.last_membership.clone()))
            }
            _ => Ok((applied, membership)),
        }
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<RegistryRaft>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<RegistryRaft>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.registry
            .run(move |r| {
                let mut out = Vec::with_capacity(entries.len());
                let mut membership = None;
                let mut last = None;
                for entry in &entries {
                    out.push(match &entry.payload {
                        EntryPayload::Blank => Outcome::Nothing,
                        EntryPayload::Normal(command) => r.apply(command)?,
                        EntryPayload::Membership(m) => {
                            membership = Some(Membership::new(Some(entry.log_id), m.clone()));
                            Outcome::Nothing
                        }
                    });
                    last = Some(entry.log_id);
                }
                record(r, &last, membership.as_ref())?;
                Ok(out)
            })
            .await
            .map_err(sm_write)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.restore(meta, &data).await?;
        self.keep(StoredSnapshot { meta: meta.clone(), data })?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<RegistryRaft>>, StorageError> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(current.as_deref().map(Self::as_snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::log_store::LogStore;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<RegistryRaft, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(sm_write)?;
            let registry = Registry::open(dir.path()).map_err(sm_write)?;
            let handle = StoreHandle::spawn("test-raft-registry", registry, |s| s.seq()).map_err(sm_write)?;
            let log = LogStore::open(dir.path()).map_err(sm_write)?;
            let sm = StateMachine::new(handle, dir.path());
            Ok((dir, log, sm))
        }
    }

    fn node(dir: &Path) -> StateMachine {
        let registry = Registry::open(dir).unwrap();
        StateMachine::new(StoreHandle::spawn("test-raft-registry", registry, |s| s.seq()).unwrap(), dir)
    }

    fn normal(index: u64, command: crate::registry::command::Command) -> Entry<RegistryRaft> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_carries_the_whole_registry_to_another_node_and_applied_state_survives_a_restart() {
        use crate::registry::command::Command;
        use crate::registry::testing::agent;
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = node(a_dir.path());
        let mut entries = Vec::new();
        for (i, name) in ["web-1", "web-2", "db-1"].iter().enumerate() {
            let prepared = a.registry.run({
                let n = agent(name, Some(&format!("tok-{i}")));
                move |r| Ok(r.prepare_enrollment(&n, 1_000 + i as u64)?.map_err(|e| e.to_string()))
            });
            let prepared = prepared.await.unwrap().unwrap();
            entries.push(normal(i as u64 + 1, Command::Enroll(prepared)));
        }
        let outcomes = a.apply(entries).await.unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Enrolled(Ok(_)))), "{outcomes:?}");
        let snapshot = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));

        let mut b = node(b_dir.path());
        b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        let view = |sm: &StateMachine| {
            let h = sm.registry.clone();
            async move { h.run(|r| Ok((r.entries()?, r.hash(), r.seq(), r.generation()))).await.unwrap() }
        };
        let (a_view, b_view) = (view(&a).await, view(&b).await);
        assert_eq!(a_view, b_view);
        assert_eq!(b_view.0.len(), 3);
        // client.keys follows the restored table, byte for byte.
        let keys = |d: &Path| std::fs::read_to_string(d.join("etc/client.keys")).unwrap();
        assert_eq!(keys(a_dir.path()), keys(b_dir.path()));
        assert_eq!(b.applied_state().await.unwrap().0.map(|l| l.index), Some(3));
        assert!(b.get_current_snapshot().await.unwrap().is_some());
        // A token already used is answered from the restored table on the new node.
        drop((a, b));
        let mut b = node(b_dir.path());
        assert_eq!(b.applied_state().await.unwrap().0.map(|l| l.index), Some(3), "recorded with the registry");
        let again = b.registry.run(|r| r.enroll(&agent("web-1", Some("tok-0")))).await.unwrap().unwrap();
        assert_eq!(again, a_view.0[0]);
        let kept = b.get_current_snapshot().await.unwrap().expect("the snapshot file is read at start");
        assert_eq!(kept.meta.last_log_id, snapshot.meta.last_log_id);
        // A snapshot naming a table or a column the registry does not have is refused whole.
        let bad = serde_json::to_vec(&vec![TableDump { table: "sqlite_master".into(), columns: vec![], rows: vec![] }])
            .unwrap();
        assert!(b.install_snapshot(&kept.meta, Box::new(Cursor::new(bad))).await.is_err());
        assert_eq!(view(&b).await, b_view);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_that_lost_its_last_commits_starts_again_from_the_kept_snapshot() {
        use crate::registry::command::Command;
        use crate::registry::testing::agent;
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = node(a_dir.path());
        let mut entries = Vec::new();
        for (i, name) in ["web-1", "web-2"].iter().enumerate() {
            let n = agent(name, None);
            let p = a.registry.run(move |r| Ok(r.prepare_enrollment(&n, 1_000)?.map_err(|e| e.to_string())));
            entries.push(normal(i as u64 + 1, Command::Enroll(p.await.unwrap().unwrap())));
        }
        a.apply(entries).await.unwrap();
        let snapshot = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        // The same node after a power loss took the registry's commits but not the snapshot
        // file (written with fsync): an empty registry beside it.
        std::fs::create_dir_all(b_dir.path().join("var/db")).unwrap();
        std::fs::copy(a_dir.path().join(SNAPSHOT_FILE), b_dir.path().join(SNAPSHOT_FILE)).unwrap();
        let mut b = node(b_dir.path());
        let (applied, membership) = b.applied_state().await.unwrap();
        assert_eq!(applied, snapshot.meta.last_log_id);
        assert_eq!(membership, snapshot.meta.last_membership);
        let names = b.registry.run(|r| r.entries()).await.unwrap().into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names, ["web-1", "web-2"]);
        // A registry at or past its snapshot is left as it is.
        assert_eq!(a.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
    }

    #[test]
    fn the_sqlite_log_and_the_registry_state_machine_pass_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
