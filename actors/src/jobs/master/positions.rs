//! Where each connected worker's replica stands, for changes that are answered only once every
//! worker has them.

use crate::registry::{Registry, StoreHandle};

/// Where each connected worker's replica stands: the last position of the agent table (and the
/// API's users) it acknowledged. A change that must be on every node before it is answered (a
/// user deleted, demoted, or its tokens revoked) waits on it.
#[derive(Debug, Default)]
pub struct WorkerPositions(tokio::sync::watch::Sender<std::collections::BTreeMap<String, u64>>);

impl WorkerPositions {
    pub(crate) fn set(&self, worker: &str, seq: u64) {
        self.0.send_modify(|m| {
            m.insert(worker.to_string(), seq);
        });
    }

    pub(crate) fn forget(&self, worker: &str) {
        self.0.send_if_modified(|m| m.remove(worker).is_some());
    }

    /// Waits until every connected worker holds the registry as it is now (see [`Self::wait_for`]):
    /// what a change of the API's users does before it is answered, so that when the caller hears
    /// of it, every node honours it. Returns the workers that did not within `timeout`.
    pub async fn wait_for_registry(
        &self,
        registry: &StoreHandle<Registry>,
        timeout: std::time::Duration,
    ) -> Vec<String> {
        match registry.run(|r| Ok(r.seq())).await {
            Ok(seq) => self.wait_for(seq, timeout).await,
            Err(_) => self.0.borrow().keys().cloned().collect(),
        }
    }

    /// Waits until every connected worker acknowledged position `seq` (workers that leave meanwhile
    /// no longer count), at most `timeout`. Returns the workers that had not by then.
    pub async fn wait_for(&self, seq: u64, timeout: std::time::Duration) -> Vec<String> {
        let mut rx = self.0.subscribe();
        let reached = |m: &std::collections::BTreeMap<String, u64>| m.values().all(|s| *s >= seq);
        if tokio::time::timeout(timeout, rx.wait_for(reached)).await.is_ok() {
            return Vec::new();
        }
        let now = rx.borrow();
        now.iter().filter(|(_, s)| **s < seq).map(|(w, _)| w.clone()).collect()
    }
}
