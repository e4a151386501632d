//! Reads of the master's registry that never queue behind its writes: the API's pages of agents
//! and its status summary, answered while the store thread applies a burst of status reports or
//! enrollments.
//!
//! - The summary (`GET /agents/summary/status`, the totals of unfiltered pages) is the one the store
//!   thread publishes after each commit ([`super::Registry::summary_watch`]): reading it costs a
//!   clone.
//! - Pages are read on connections of their own, opened read-only on the same file. The registry is
//!   in WAL mode: a reader sees the last commit and neither waits for the writer nor makes it wait.
//!   [`READERS`] connections, each used by one blocking task at a time; more callers wait for one.

use super::counts::StatusSummary;
use super::query::AgentQuery;
use super::rows::{page_on, page_on_with, AgentRow, RowRef};
use super::store::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Semaphore};

/// Read connections kept open (each serves one page at a time).
pub const READERS: usize = 2;

/// The registry's reads off its store thread.
pub struct RegistryReader {
    conns: Vec<Arc<Mutex<Connection>>>,
    permits: Arc<Semaphore>,
    summary: watch::Receiver<StatusSummary>,
}

impl RegistryReader {
    /// Opens [`READERS`] read-only connections to `<data_dir>/var/db/registry.db` (which
    /// [`super::Registry::open`] made), with the summary the registry publishes.
    pub fn open(data_dir: &Path, summary: watch::Receiver<StatusSummary>) -> Result<Self, StoreError> {
        let path = data_dir.join("var/db/registry.db");
        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "query_only", "ON")?;
            conns.push(Arc::new(Mutex::new(conn)));
        }
        Ok(Self { conns, permits: Arc::new(Semaphore::new(READERS)), summary })
    }

    /// The status counts as of the last commit.
    pub fn summary(&self) -> StatusSummary {
        self.summary.borrow().clone()
    }

    /// One page of agents and how many match in all, as [`super::Registry::page`] reads it.
    pub async fn page(&self, q: AgentQuery) -> Result<(u64, Vec<AgentRow>), StoreError> {
        self.read(q, page_on).await
    }

    /// [`Self::page`] without a copy of each row: `each` sees every row of the page as SQLite
    /// holds it (on a blocking thread) with `state`, which comes back with how many match in all.
    pub async fn page_with<S, F>(&self, q: AgentQuery, mut state: S, mut each: F) -> Result<(u64, S), StoreError>
    where
        S: Send + 'static,
        F: FnMut(&RowRef<'_>, &mut S) + Send + 'static,
    {
        self.read(q, move |conn, q, counted| {
            let total = page_on_with(conn, q, counted, &mut |row| each(row, &mut state))?;
            Ok((total, state))
        })
        .await
    }

    /// Runs `job` on a free read connection, on a blocking thread, with the count of the agents
    /// `q` selects when the published summary has it.
    async fn read<T, J>(&self, q: AgentQuery, job: J) -> Result<T, StoreError>
    where
        T: Send + 'static,
        J: FnOnce(&Connection, &AgentQuery, Option<u64>) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.permits.clone().acquire_owned().await.map_err(|_| StoreError::Stopped)?;
        // With a permit, one connection is free.
        let conn = self.conns.iter().find(|c| !c.is_poisoned() && c.try_lock().is_ok()).cloned();
        let conn = conn.ok_or(StoreError::Stopped)?;
        let counted =
            q.counted_in_memory().then(|| self.summary.borrow().count(q.status.as_deref(), q.node.as_deref()));
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| StoreError::Stopped)?;
            job(&conn, &q, counted)
        })
        .await
        .map_err(|e| StoreError::Panicked(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{agent, enroll};
    use crate::registry::{Registry, StoreHandle};

    #[tokio::test]
    async fn pages_and_the_summary_answer_while_the_store_thread_is_held_by_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(dir.path()).unwrap();
        for i in 0..30 {
            enroll(&mut registry, &agent(&format!("agent-{i}"), None)).unwrap();
        }
        crate::registry::Store::committed(&mut registry);
        let reader = RegistryReader::open(dir.path(), registry.summary_watch()).unwrap();
        let store = StoreHandle::spawn("reader-test", registry, |r| r.seq()).unwrap();

        // A write holds the store thread until the test lets it go.
        let (release, write) = crate::registry::testing::hold(&store, |_| {}).await;
        let q = AgentQuery { limit: 10, ..AgentQuery::default() };
        let (total, rows) = reader.page(q).await.unwrap();
        assert_eq!((total, rows.len()), (30, 10));
        let named = AgentQuery { name: Some("agent-7".into()), ..AgentQuery::default() };
        assert_eq!(reader.page(named).await.unwrap().0, 1, "a count read in SQL");
        assert_eq!(reader.summary().count(None, None), 30);
        // The same page without a copy of each row: the same agents, fields and order.
        let sorted = AgentQuery { limit: 7, offset: 3, ..AgentQuery::default() };
        let (_, owned) = reader.page(sorted.clone()).await.unwrap();
        let (total, seen) = reader
            .page_with(sorted, Vec::new(), |row, seen| {
                seen.push((
                    row.id,
                    row.name.to_string(),
                    row.ip.to_string(),
                    row.groups().map(str::to_string).collect::<Vec<_>>(),
                    row.status.to_string(),
                    row.registered_at_ms,
                ))
            })
            .await
            .unwrap();
        let expected: Vec<_> = owned
            .iter()
            .map(|r| {
                (
                    r.entry.id,
                    r.entry.name.clone(),
                    r.entry.ip.clone(),
                    r.entry.groups.clone(),
                    r.status.clone(),
                    r.registered_at_ms,
                )
            })
            .collect();
        assert_eq!((total, seen.len()), (30, 7));
        assert_eq!(seen, expected);
        assert!(!write.is_finished(), "the reads were answered while the write held the store thread");
        release.send(()).unwrap();
        write.await.unwrap().unwrap();
    }
}
