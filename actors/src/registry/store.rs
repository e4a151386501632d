//! One thread owns a SQLite store; async callers send it commands and await their outcome.
//!
//! Commands that arrive together run in one transaction (group commit): one fsync for a burst of
//! enrollments, and every caller hears back only after its change is durable. Each command runs
//! under a savepoint, so one failure (or one panic, caught here) does not undo its neighbours.
//!
//! Two lanes: [`StoreHandle::run`] for commands a caller waits on (an enrollment, a change), and
//! [`StoreHandle::run_bulk`] for large background writes (a slice of agent statuses). A bulk command
//! runs in a transaction of its own, never in one with waiting callers' commands, and the two take
//! turns while both have work: a command waits behind one bulk command at most, and bulk work is
//! never starved.
//!
//! Bounds: the command queue holds [`QUEUE`] commands; a caller finding it full waits for room (the
//! store's pace becomes its callers' pace) instead of the queue growing. A transaction takes at most
//! [`MAX_BATCH`] commands; at most [`MAX_DEFERRED`] bulk commands are set aside for their turn (beyond
//! that the queue is left as it is until they ran). If the thread itself dies (a panic outside a command), every later call
//! fails with [`StoreError::Stopped`] and [`StoreHandle::stopped`] resolves with the reason, which
//! the node treats as fatal.

use tokio::sync::{mpsc, oneshot, watch};

/// Why a store command failed. The variants say what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed the statement.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A file the store keeps beside the database (client.keys, group directories) failed.
    #[error("i/o error on {path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// The command is not valid for the data as it is (a bad name, a limit reached...).
    #[error("{0}")]
    Invalid(String),
    #[error("no agent with id {0:03}")]
    NoSuchAgent(u32),
    #[error("no group named {0:?}")]
    NoSuchGroup(String),
    /// The command ran, but the transaction holding it could not be committed.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The transaction could not even start; the command did not run.
    #[error("cannot start a transaction: {0}")]
    NotRun(String),
    /// The command panicked; its savepoint was rolled back and the store goes on.
    #[error("the command panicked: {0}")]
    Panicked(String),
    /// The store thread has ended: nothing more will run.
    #[error("the store thread has stopped")]
    Stopped,
    /// A replicated registry: this node does not lead the master-eligible nodes (the leader's
    /// address, when known); a change must go there.
    #[error("this node is not the leader of the master-eligible nodes{}", .0.as_deref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader(Option<String>),
    /// A replicated registry could not commit the change (no majority, the node stopping...).
    #[error("the change was not committed: {0}")]
    NotCommitted(String),
}

impl StoreError {
    /// I/O on `path` failed.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.display().to_string();
        move |error| StoreError::Io { path, error }
    }
}

/// A store driven by a [`StoreHandle`]'s thread: commands run inside one transaction per batch.
pub trait Store: Send + 'static {
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits and brings derived files (`client.keys`) up to date.
    fn commit(&mut self) -> Result<(), StoreError>;
    fn rollback(&mut self);
    /// Re-reads in-memory state (position, hash) from the database after a rollback.
    fn reload(&mut self) -> Result<(), StoreError>;
    fn savepoint(&mut self) -> Result<(), StoreError>;
    fn release(&mut self, keep: bool);
    /// After each transaction that committed: publish what readers off this thread see.
    fn committed(&mut self) {}
}

/// Why a whole transaction failed (its text goes to every caller in it).
#[derive(Debug, Clone)]
struct TxFailure(String);

type Finish = Box<dyn FnOnce(Result<(), TxFailure>) + Send>;
/// Runs the command (`Ok`) or only reports that it could not run (`Err`, with why).
type Job<S> = Box<dyn FnOnce(Result<&mut S, TxFailure>) -> Finish + Send>;

/// Most commands waiting for the thread; callers wait for room beyond this.
pub(crate) const QUEUE: usize = 4096;
/// Most commands in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// Most bulk commands taken off the queue to wait for their turn.
pub(crate) const MAX_DEFERRED: usize = 16;

/// Which lane a command came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// A caller waits on it: it runs with the other waiting commands, in the next transaction.
    Waited,
    /// A large background write: a transaction of its own, in turns with the waited lane.
    Bulk,
}

/// A cheap, clonable handle to the store thread.
pub struct StoreHandle<S> {
    tx: mpsc::Sender<(Lane, Job<S>)>,
    position: watch::Receiver<u64>,
    exit: watch::Receiver<Option<String>>,
    commands: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Why the last transaction that had to write could not (a full disk...); cleared by the next
    /// commit that moves the position.
    failing: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl<S> Clone for StoreHandle<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            position: self.position.clone(),
            exit: self.exit.clone(),
            commands: self.commands.clone(),
            failing: self.failing.clone(),
        }
    }
}

impl<S: Store> StoreHandle<S> {
    /// Starts the thread. `position` reads the store's change sequence after each commit; watchers
    /// see it move.
    pub fn spawn(name: &str, mut store: S, position: fn(&S) -> u64) -> std::io::Result<Self> {
        let (tx, mut rx): (mpsc::Sender<(Lane, Job<S>)>, _) = mpsc::channel(QUEUE);
        let (pos_tx, pos_rx) = watch::channel(position(&store));
        let (exit_tx, exit_rx) = watch::channel(None);
        let commands = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = commands.clone();
        let failing = std::sync::Arc::new(std::sync::Mutex::new(None));
        let failures = failing.clone();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve(&mut store, &mut rx, &pos_tx, position, &counted, &failures);
            }));
            let reason = match served {
                Ok(()) => "every handle to it was dropped".to_string(),
                Err(panic) => format!("it panicked: {}", crate::supervise::panic_message(&*panic)),
            };
            let _ = exit_tx.send(Some(reason));
        })?;
        Ok(StoreHandle { tx, position: pos_rx, exit: exit_rx, commands, failing })
    }

    /// Why the store cannot be used as it should: its thread ended, or its last transaction that
    /// had to write failed (and none has succeeded since). `None` while it works.
    pub fn unusable(&self) -> Option<String> {
        if let Some(reason) = self.exit.borrow().clone() {
            return Some(format!("its thread ended: {reason}"));
        }
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Commands run so far (a figure for health, and for tests that an idle node stays idle).
    pub fn commands_run(&self) -> u64 {
        self.commands.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` on the store thread inside a transaction; resolves once it is committed.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_in(Lane::Waited, f).await
    }

    /// [`StoreHandle::run`] for a large background write: in a transaction of its own, taking turns
    /// with the commands callers wait on, so that they never wait behind more than one of these.
    pub async fn run_bulk<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_in(Lane::Bulk, f).await
    }

    async fn run_in<T, F>(&self, lane: Lane, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job<S> = Box::new(move |store: Result<&mut S, TxFailure>| {
            let result = match store {
                Err(why) => Err(StoreError::NotRun(why.0)),
                Ok(store) => match store.savepoint() {
                    Ok(()) => {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *store)))
                            .unwrap_or_else(|panic| {
                                Err(StoreError::Panicked(crate::supervise::panic_message(&*panic)))
                            });
                        store.release(r.is_ok());
                        if r.is_err() {
                            let _ = store.reload();
                        }
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            Box::new(move |commit: Result<(), TxFailure>| {
                let out = match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) => Err(StoreError::CommitFailed(e.0)),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(out);
            })
        });
        self.tx.send((lane, job)).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// A receiver of the change sequence, moved by each commit that changed it. Keep it and call
    /// `changed()` on it again and again: a new one reports as new every change since the store
    /// opened (mark what it holds seen with `borrow_and_update` first).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// Resolves when the store thread has ended, with why.
    pub async fn stopped(&self) -> String {
        let mut exit = self.exit.clone();
        loop {
            if let Some(reason) = exit.borrow_and_update().clone() {
                return reason;
            }
            if exit.changed().await.is_err() {
                return "the store thread is gone".into();
            }
        }
    }
}

/// The thread's next transaction: the waited commands queued now (up to [`MAX_BATCH`]), or one bulk
/// command; `None` once every handle is dropped and nothing is left.
struct Lanes<S> {
    waited: Vec<Job<S>>,
    deferred: std::collections::VecDeque<Job<S>>,
    /// The last transaction was of waited commands: a bulk command that waits goes next.
    bulk_turn: bool,
    closed: bool,
}

impl<S> Lanes<S> {
    fn next(&mut self, rx: &mut mpsc::Receiver<(Lane, Job<S>)>) -> Option<Vec<Job<S>>> {
        if self.waited.is_empty() && self.deferred.is_empty() && !self.closed {
            match rx.blocking_recv() {
                Some(item) => self.take(item),
                None => self.closed = true,
            }
        }
        while self.waited.len() < MAX_BATCH && self.deferred.len() < MAX_DEFERRED {
            match rx.try_recv() {
                Ok(item) => self.take(item),
                Err(_) => break,
            }
        }
        let bulk_first = self.bulk_turn || self.waited.is_empty();
        if bulk_first {
            if let Some(job) = self.deferred.pop_front() {
                self.bulk_turn = false;
                return Some(vec![job]);
            }
        }
        if self.waited.is_empty() {
            return None;
        }
        self.bulk_turn = !self.deferred.is_empty();
        Some(std::mem::take(&mut self.waited))
    }

    fn take(&mut self, (lane, job): (Lane, Job<S>)) {
        match lane {
            Lane::Waited => self.waited.push(job),
            Lane::Bulk => self.deferred.push_back(job),
        }
    }
}

/// The thread's loop: a batch of commands per transaction, until every handle is dropped.
fn serve<S: Store>(
    store: &mut S,
    rx: &mut mpsc::Receiver<(Lane, Job<S>)>,
    pos_tx: &watch::Sender<u64>,
    position: fn(&S) -> u64,
    commands: &std::sync::atomic::AtomicU64,
    failing: &std::sync::Mutex<Option<String>>,
) {
    let set_failing = |why: Option<String>| *failing.lock().unwrap_or_else(|p| p.into_inner()) = why;
    // A failed begin is over with the next transaction that commits; a failed commit, with the
    // next one that writes (a read-only one commits even on a full disk).
    let mut begin_failed = false;
    let mut lanes = Lanes { waited: Vec::new(), deferred: Default::default(), bulk_turn: false, closed: false };
    while let Some(batch) = lanes.next(rx) {
        if let Err(e) = store.begin() {
            // Nothing runs; every caller hears why.
            let why = TxFailure(e.to_string());
            set_failing(Some(format!("cannot begin a transaction: {e}")));
            begin_failed = true;
            for job in batch {
                job(Err(why.clone()))(Err(why.clone()));
            }
            continue;
        }
        commands.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let finishes: Vec<Finish> = batch.into_iter().map(|job| job(Ok(&mut *store))).collect();
        let outcome = match store.commit() {
            Ok(()) => {
                if std::mem::take(&mut begin_failed) {
                    set_failing(None);
                }
                store.committed();
                Ok(())
            }
            Err(e) => {
                store.rollback();
                let _ = store.reload();
                set_failing(Some(format!("cannot commit: {e}")));
                begin_failed = false;
                Err(TxFailure(e.to_string()))
            }
        };
        for finish in finishes {
            finish(outcome.clone());
        }
        // Only a commit that moved the sequence wakes the watchers: a read-only command must not,
        // or a watcher that reads the store on every wake-up would spin forever.
        let now = position(store);
        let moved = pos_tx.send_if_modified(|seen| {
            let moved = *seen != now;
            *seen = now;
            moved
        });
        if moved {
            set_failing(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::master::Registry;
    use crate::registry::testing::agent;
    use std::time::Duration;

    #[actix_rt::test]
    async fn only_commits_that_move_the_sequence_wake_the_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let handle = StoreHandle::spawn("test-registry", registry, |s| s.seq()).unwrap();
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
        let a = agent("web-1", None);
        handle.run(move |r| r.enroll(&a)).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed()).await.unwrap().unwrap();
        assert!(*watch.borrow_and_update() > before);
    }

    #[actix_rt::test]
    async fn a_panicking_command_fails_alone_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let handle = StoreHandle::spawn("test-registry", Registry::open(dir.path()).unwrap(), |s| s.seq()).unwrap();
        let a = agent("kept", None);
        let (first, panicked) = tokio::join!(
            handle.run(move |r| r.enroll(&a)),
            handle.run(|r| -> Result<(), StoreError> {
                let b = agent("undone", None);
                r.enroll(&b)?.ok();
                panic!("injected panic in a store command")
            })
        );
        assert!(first.unwrap().is_ok());
        match panicked {
            Err(StoreError::Panicked(m)) => assert!(m.contains("injected panic"), "{m}"),
            other => panic!("expected a panic to be reported, got {other:?}"),
        }
        let names: Vec<String> = handle.run(|r| r.entries()).await.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["kept"], "the panicking command's savepoint was rolled back");
    }

    /// A store that writes down its transactions and what ran in each; a doomed one panics in its
    /// commit.
    #[derive(Default)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>, bool);

    impl Recorder {
        fn note(&self, what: &str) {
            self.0.lock().unwrap().push(what.to_string());
        }
    }

    impl Store for Recorder {
        fn begin(&mut self) -> Result<(), StoreError> {
            self.note("begin");
            Ok(())
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            assert!(!self.1, "the disk caught fire");
            self.note("commit");
            Ok(())
        }
        fn rollback(&mut self) {}
        fn reload(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn savepoint(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn release(&mut self, _: bool) {}
    }

    /// Bulk commands queued before waited ones still let them go first, each bulk command is a
    /// transaction of its own, and the lanes take turns: a waited command waits behind one bulk
    /// command at most.
    #[actix_rt::test]
    async fn waited_commands_never_share_a_transaction_with_bulk_ones_and_take_turns() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handle = StoreHandle::spawn("lanes", Recorder(log.clone(), false), |_| 0).unwrap();
        let (release, hold) = crate::registry::testing::hold(&handle, |r: &mut Recorder| r.note("hold")).await;
        let queued = handle.commands.load(std::sync::atomic::Ordering::Relaxed);
        let mut calls = Vec::new();
        for (lane, name) in
            [(Lane::Bulk, "b1"), (Lane::Bulk, "b2"), (Lane::Waited, "w1"), (Lane::Waited, "w2"), (Lane::Bulk, "b3")]
        {
            let h = handle.clone();
            calls.push(tokio::spawn(async move {
                h.run_in(lane, move |r: &mut Recorder| {
                    r.note(name);
                    Ok(())
                })
                .await
            }));
            // Queued in this order (each send is in the channel before the next is made).
            tokio::task::yield_now().await;
        }
        while handle.tx.capacity() > QUEUE - 5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(handle.commands.load(std::sync::atomic::Ordering::Relaxed), queued);
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let log = log.lock().unwrap().join(" ");
        assert_eq!(
            log, "begin hold commit begin w1 w2 commit begin b1 commit begin b2 commit begin b3 commit",
            "the transactions and their commands, in order"
        );
    }

    /// A store whose commit panics: the thread dies, and says so.
    #[actix_rt::test]
    async fn a_dead_store_thread_reports_its_death_and_refuses_further_work() {
        let handle = StoreHandle::spawn("doomed", Recorder(Default::default(), true), |_| 0).unwrap();
        assert!(matches!(handle.run(|_| Ok(())).await, Err(StoreError::Stopped)));
        let reason = tokio::time::timeout(Duration::from_secs(5), handle.stopped()).await.unwrap();
        assert!(reason.contains("panicked") && reason.contains("the disk caught fire"), "{reason}");
        assert!(matches!(handle.run(|_| Ok(())).await, Err(StoreError::Stopped)));
    }
}
