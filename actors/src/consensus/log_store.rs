//! The Raft log in SQLite: `var/db/raft.db`, one row per entry (MessagePack, see [`super::codec`]),
//! and the vote, the committed position and the last purged position beside it. A log written in
//! JSON by a build before protocol 2.3 is rewritten in MessagePack when the store opens, in one
//! transaction (a crash midway leaves it as it was; the next start does it again). Every write is synchronous (`synchronous =
//! FULL`): Raft counts a vote or an appended entry only once it would survive a crash.

use super::codec::{self, Encoding};
use super::{RegistryRaft, StorageError};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageIOError, Vote};
use rusqlite::{params, Connection, OptionalExtension};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Where a master-eligible node keeps its Raft log, under its data dir.
pub(crate) const RAFT_DB: &str = "var/db/raft.db";

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v BLOB NOT NULL);
";

/// The log store. Its SQLite connection lives on a thread of its own and serves requests in
/// order: a write waits for the disk there, never on the runtime that runs Raft and the node's
/// sockets (a node is single-threaded; an fsync on it would stall every connection). Clones share
/// the thread.
///
/// The committed position is kept in memory and written with the next batch of entries (in
/// their transaction, so with their fsync), not synced on its own at every commit: openraft
/// waits for `save_committed`, and a stored position that trails is safe (it only says how far
/// to re-apply at start, and the registry records what it applied).
#[derive(Clone)]
pub(crate) struct LogStore {
    jobs: tokio::sync::mpsc::Sender<Job>,
    committed: Arc<Mutex<Committed>>,
}

/// The committed position: the latest saved, and whether it is written yet.
#[derive(Default)]
struct Committed {
    latest: Option<LogId<u64>>,
    unwritten: bool,
}

/// Requests waiting for the log's thread, at most; when full, a caller waits for room (openraft
/// then waits too, which slows proposals instead of growing memory).
const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn gone() -> StorageError {
    write_err(std::io::Error::other("the raft log thread has stopped"))
}

/// `range` as SQLite bounds `[start, end)`.
fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let start = match range.start_bound() {
        Bound::Included(&s) => clamp(s),
        Bound::Excluded(&s) => clamp(s).saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => clamp(e).saturating_add(1),
        Bound::Excluded(&e) => clamp(e),
        Bound::Unbounded => i64::MAX,
    };
    (start, end)
}

/// A stored value's bytes: a BLOB (MessagePack), or TEXT (JSON, written by an earlier build).
fn stored_bytes(r: &rusqlite::Row<'_>) -> rusqlite::Result<Vec<u8>> {
    match r.get_ref(0)? {
        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => Ok(t.to_vec()),
        other => Err(rusqlite::Error::InvalidColumnType(0, "a raft value".into(), other.data_type())),
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    codec::decode(bytes).map(|(v, _)| v).map_err(read_err)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    codec::encode(v, Encoding::MessagePack).map_err(write_err)
}

fn get<T: serde::de::DeserializeOwned>(conn: &Connection, k: &str) -> Result<Option<T>, StorageError> {
    let bytes: Option<Vec<u8>> =
        conn.query_row("SELECT v FROM state WHERE k = ?1", params![k], stored_bytes).optional().map_err(read_err)?;
    bytes.map(|b| decode(&b)).transpose()
}

fn put<T: serde::Serialize>(conn: &Connection, k: &str, v: &T) -> Result<(), StorageError> {
    let bytes = encode(v)?;
    conn.execute("INSERT OR REPLACE INTO state (k, v) VALUES (?1, ?2)", params![k, bytes]).map_err(write_err)?;
    Ok(())
}

/// Rewrites in MessagePack what an earlier build wrote in JSON (TEXT values), in one transaction;
/// returns how many log entries it rewrote.
fn migrate_json(conn: &mut Connection) -> Result<usize, crate::registry::StoreError> {
    let invalid = |what: &str, e: codec::CodecError| crate::registry::StoreError::Invalid(format!("{what}: {e}"));
    let tx = conn.transaction()?;
    let old: Vec<(i64, String)> = tx
        .prepare("SELECT idx, entry FROM log WHERE typeof(entry) = 'text' ORDER BY idx")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (idx, text) in &old {
        let (entry, _): (Entry<RegistryRaft>, _) =
            codec::decode(text.as_bytes()).map_err(|e| invalid(&format!("raft log entry {idx}"), e))?;
        let bytes = codec::encode(&entry, Encoding::MessagePack).map_err(|e| invalid("raft log entry", e))?;
        tx.execute("UPDATE log SET entry = ?1 WHERE idx = ?2", params![bytes, idx])?;
    }
    let state: Vec<(String, String)> = tx
        .prepare("SELECT k, v FROM state WHERE typeof(v) = 'text'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (k, text) in &state {
        let bytes = rewrite_state(k, text.as_bytes()).map_err(|e| invalid(&format!("raft state {k}"), e))?;
        tx.execute("UPDATE state SET v = ?1 WHERE k = ?2", params![bytes, k])?;
    }
    tx.commit()?;
    Ok(old.len())
}

/// A state value written in JSON by an earlier build, read as the type its key holds and written
/// again in MessagePack.
fn rewrite_state(k: &str, json: &[u8]) -> Result<Vec<u8>, codec::CodecError> {
    let mp = Encoding::MessagePack;
    match k {
        "vote" => codec::encode(&serde_json::from_slice::<Vote<u64>>(json)?, mp),
        "committed" => codec::encode(&serde_json::from_slice::<Option<LogId<u64>>>(json)?, mp),
        _ => codec::encode(&serde_json::from_slice::<LogId<u64>>(json)?, mp),
    }
}

impl LogStore {
    /// Opens (or creates) `<data_dir>/var/db/raft.db` and starts its thread.
    pub fn open(data_dir: &Path) -> Result<Self, crate::registry::StoreError> {
        let mut conn = crate::registry::schema::open_db(&data_dir.join(RAFT_DB))?;
        conn.execute_batch("PRAGMA synchronous = FULL;")?;
        conn.execute_batch(TABLES)?;
        let rewritten = migrate_json(&mut conn)?;
        if rewritten > 0 {
            log::info!("raft log: {rewritten} entries written by an earlier build in JSON rewritten in MessagePack");
        }
        let (jobs, mut rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map_err(crate::registry::StoreError::io(&data_dir.join(RAFT_DB)))?;
        Ok(Self { jobs, committed: Default::default() })
    }

    /// Runs `f` on the log's thread, after every request sent before it.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl RaftLogReader<RegistryRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<RegistryRaft>>, StorageError> {
        let (start, end) = bounds(&range);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
                .map_err(read_err)?;
            let rows = stmt.query_map(params![start, end], stored_bytes).map_err(read_err)?;
            let mut out = Vec::new();
            for bytes in rows {
                out.push(decode(&bytes.map_err(read_err)?)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<RegistryRaft> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<RegistryRaft>, StorageError> {
        self.with(|conn| {
            let last_purged_log_id: Option<LogId<u64>> = get(conn, "last_purged")?;
            let last: Option<Vec<u8>> = conn
                .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], stored_bytes)
                .optional()
                .map_err(read_err)?;
            let last_log_id = match last {
                Some(bytes) => Some(*decode::<Entry<RegistryRaft>>(&bytes)?.get_log_id()),
                None => last_purged_log_id,
            };
            Ok(LogState { last_purged_log_id, last_log_id })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let vote = *vote;
        self.with(move |conn| put(conn, "vote", &vote).map_err(|e| StorageIOError::write_vote(&e).into())).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.with(|conn| get(conn, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError> {
        let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        *c = Committed { latest: committed, unwritten: true };
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError> {
        {
            let c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            if c.unwritten {
                return Ok(c.latest);
            }
        }
        self.with(|conn| Ok(get::<Option<LogId<u64>>>(conn, "committed")?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<RegistryRaft>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<RegistryRaft>> + Send,
        I::IntoIter: Send,
    {
        let rows = entries
            .into_iter()
            .map(|e| Ok((i64::try_from(e.get_log_id().index).map_err(write_err)?, encode(&e)?)))
            .collect::<Result<Vec<(i64, Vec<u8>)>, StorageError>>()?;
        let committed = {
            let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut c.unwritten).then_some(c.latest)
        };
        let result = self
            .with(move |conn| {
                let tx = conn.transaction().map_err(write_err)?;
                {
                    let mut stmt = tx
                        .prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")
                        .map_err(write_err)?;
                    for (idx, bytes) in &rows {
                        stmt.execute(params![idx, bytes]).map_err(write_err)?;
                    }
                }
                if let Some(committed) = committed {
                    put(&tx, "committed", &committed)?;
                }
                tx.commit().map_err(write_err)
            })
            .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let idx = i64::try_from(log_id.index).map_err(write_err)?;
        self.with(move |conn| {
            conn.execute("DELETE FROM log WHERE idx >= ?1", params![idx]).map_err(write_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let idx = i64::try_from(log_id.index).map_err(write_err)?;
        self.with(move |conn| {
            let tx = conn.transaction().map_err(write_err)?;
            put(&tx, "last_purged", &log_id)?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", params![idx]).map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn blank(term: u64, index: u64) -> Entry<RegistryRaft> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_vote_the_entries_the_purged_and_a_trailing_committed_position_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.save_vote(&Vote::new(3, 2)).await.unwrap();
            let mut reader = log.get_log_reader().await;
            log.blocking_append((1..=5).map(|i| blank(3, i))).await.unwrap();
            assert_eq!(reader.try_get_log_entries(2..4).await.unwrap().len(), 2);
            log.purge(LogId::new(CommittedLeaderId::new(3, 1), 2)).await.unwrap();
            // The committed position is written with the next entries...
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(3, 1), 4))).await.unwrap();
            assert_eq!(log.read_committed().await.unwrap().map(|l| l.index), Some(4));
            log.blocking_append([blank(3, 6)]).await.unwrap();
            // ... so one saved after the last entries may be lost: it trails, never leads.
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(3, 1), 6))).await.unwrap();
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
        assert_eq!(log.read_committed().await.unwrap().map(|l| l.index), Some(4));
        let left: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(left, vec![3, 4, 5, 6]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_an_earlier_build_wrote_in_json_is_read_and_rewritten_in_messagepack() {
        use crate::registry::command::Command;
        let dir = tempfile::tempdir().unwrap();
        let leader = CommittedLeaderId::new(4, 1);
        let members = openraft::Membership::new(vec![[1u64, 2, 3].into()], None);
        let entries = [
            blank(4, 1),
            Entry { log_id: LogId::new(leader, 2), payload: EntryPayload::Membership(members.clone()) },
            Entry { log_id: LogId::new(leader, 3), payload: EntryPayload::Normal(Command::Expire { ids: vec![7, 9] }) },
        ];
        {
            // As the previous build wrote them: JSON text in both tables.
            let conn = crate::registry::schema::open_db(&dir.path().join(RAFT_DB)).unwrap();
            conn.execute_batch(
                "CREATE TABLE log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL);
                 CREATE TABLE state (k TEXT PRIMARY KEY, v TEXT NOT NULL);",
            )
            .unwrap();
            for e in &entries {
                let text = serde_json::to_string(e).unwrap();
                conn.execute("INSERT INTO log (idx, entry) VALUES (?1, ?2)", params![e.log_id.index as i64, text])
                    .unwrap();
            }
            let state = [
                ("vote", serde_json::to_string(&Vote::new(4, 1)).unwrap()),
                ("committed", serde_json::to_string(&Some(LogId::new(leader, 3))).unwrap()),
            ];
            for (k, v) in state {
                conn.execute("INSERT INTO state (k, v) VALUES (?1, ?2)", params![k, v]).unwrap();
            }
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        assert_eq!(log.read_committed().await.unwrap().map(|l| l.index), Some(3));
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(read.len(), 3);
        assert!(matches!(&read[1].payload, EntryPayload::Membership(m) if *m == members));
        assert!(matches!(&read[2].payload, EntryPayload::Normal(Command::Expire { ids }) if *ids == [7, 9]));
        log.blocking_append([blank(4, 4)]).await.unwrap();
        drop(log);
        // Every value is MessagePack now.
        let conn = crate::registry::schema::open_db(&dir.path().join(RAFT_DB)).unwrap();
        let text: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM log WHERE typeof(entry) != 'blob') +
                        (SELECT count(*) FROM state WHERE typeof(v) != 'blob')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(text, 0);
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(4));
    }

    #[test]
    fn a_log_entry_that_is_neither_json_nor_messagepack_is_a_clear_error_at_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = crate::registry::schema::open_db(&dir.path().join(RAFT_DB)).unwrap();
            conn.execute_batch(TABLES).unwrap();
            conn.execute("INSERT INTO log (idx, entry) VALUES (1, '{not json')", []).unwrap();
        }
        let err = LogStore::open(dir.path()).err().expect("refused").to_string();
        assert!(err.contains("raft log entry 1"), "{err}");
    }
}
