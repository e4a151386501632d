//! One thread owns a SQLite store; async callers send it closures. Commands that arrive together
//! run in one transaction (group commit): one fsync for a burst of enrollments, and every caller
//! hears back only after its change is durable. Each command runs under a savepoint, so one failure
//! does not undo its neighbours.

use crate::registry::{Store, StoreError};
use std::sync::mpsc;
use tokio::sync::{oneshot, watch};

type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
/// Runs the command (`Some`) or only reports that it could not run (`None`).
type Job<S> = Box<dyn FnOnce(Option<&mut S>) -> Finish + Send>;

/// Most commands in one transaction.
const MAX_BATCH: usize = 1024;

/// A cheap, clonable handle to the store thread.
pub struct StoreHandle<S> {
    tx: mpsc::Sender<Job<S>>,
    position: watch::Receiver<u64>,
}

impl<S> Clone for StoreHandle<S> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), position: self.position.clone() }
    }
}

impl<S: Store> StoreHandle<S> {
    /// Starts the thread. `position` reads the store's change sequence after each commit; watchers
    /// see it move.
    pub fn spawn(name: &str, mut store: S, position: fn(&S) -> u64) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let (pos_tx, pos_rx) = watch::channel(position(&store));
        std::thread::Builder::new().name(name.into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                if let Err(e) = store.begin() {
                    // Nothing runs; every caller hears why.
                    let msg = format!("cannot start a transaction: {e}");
                    for job in batch {
                        job(None)(Err(msg.clone()));
                    }
                    continue;
                }
                let finishes: Vec<Finish> = batch.into_iter().map(|job| job(Some(&mut store))).collect();
                let outcome = match store.commit() {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        store.rollback();
                        let _ = store.reload();
                        Err(format!("commit failed: {e}"))
                    }
                };
                for finish in finishes {
                    finish(outcome.clone());
                }
                // Only a commit that moved the sequence wakes the watchers: a read-only command
                // must not, or a watcher that reads the store on every wake-up would spin forever.
                let now = position(&store);
                pos_tx.send_if_modified(|seen| {
                    let moved = *seen != now;
                    *seen = now;
                    moved
                });
            }
        })?;
        Ok(StoreHandle { tx, position: pos_rx })
    }

    /// Runs `f` on the store thread inside a transaction; resolves once it is committed.
    pub async fn run<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job<S> = Box::new(move |store: Option<&mut S>| {
            let result = match store {
                None => Err(StoreError::Invalid("the command did not run".into())),
                Some(store) => match store.savepoint() {
                    Ok(()) => {
                        let r = f(store);
                        store.release(r.is_ok());
                        if r.is_err() {
                            let _ = store.reload();
                        }
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            Box::new(move |commit: Result<(), String>| {
                let out = match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) => Err(e),
                    (Err(e), _) => Err(e.to_string()),
                };
                let _ = tx.send(out);
            })
        });
        self.tx.send(job).map_err(|_| "the store thread has stopped".to_string())?;
        rx.await.map_err(|_| "the store thread has stopped".to_string())?
    }

    /// Resolves each time a commit moves the change sequence.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use std::time::Duration;

    #[actix_rt::test]
    async fn only_commits_that_move_the_sequence_wake_the_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let handle = StoreHandle::spawn("test-registry", registry, Registry::seq).unwrap();
        let mut watch = handle.watch();
        watch.borrow_and_update();

        // Reads commit an empty transaction: nobody is woken (a watcher that reads on every
        // wake-up would otherwise wake itself forever).
        for _ in 0..3 {
            handle.run(|r| Ok(r.seq())).await.unwrap();
        }
        let woken = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(woken.is_err(), "a read-only command woke the watchers");

        // A change does.
        let before = *watch.borrow();
        let agent = crate::registry::NewAgent {
            name: "web-1".into(),
            groups: vec![],
            ip: "any".into(),
            key_hash: None,
            version: None,
            node_name: "master".into(),
            token: None,
        };
        handle.run(move |r| r.enroll(&agent)).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed()).await.unwrap().unwrap();
        assert!(*watch.borrow_and_update() > before);
    }
}
