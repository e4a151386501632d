//! Supervision: job health, restarts with back-off, and panics caught at the job's boundary.
//!
//! actix's own `Supervisor` restarts an actor that stopped itself, not one that panicked: a panic
//! unwinds out of the actor's task, its mailbox closes, and every message sent to it is lost while
//! its health still says "running". [`start`] runs the actor the same way, but polls it inside
//! `catch_unwind`: a panic in a handler, in `started`, or in a future the actor spawned is caught,
//! logged (naming node, job and peer), counted in the job's [`JobHealth`] as a failure and a panic,
//! and the actor is restarted in place (same address, same mailbox) after its back-off, exactly as
//! if it had failed a run. Futures that must fail alone instead of taking their job down (one
//! request of a server) go through [`CatchUnwind`].
//!
//! This is the chosen policy for jobs: panics are caught and counted, the process goes on. (The
//! other choice, aborting the process so that systemd restarts it, would drop every agent
//! connection and every in-flight enrollment of the node for a bug in one job.)
//!
//! The node's long-lived actors that cannot be rebuilt in place (the master's listener, a worker's
//! link, the agent hub) run under [`start_watched`] with [`OnPanic::Fatal`]: their panic is logged
//! once and cuts the node's [`Lifeline`], and the node stops and exits non-zero for its service
//! manager to start it again. A connection runs under it with [`OnPanic::End`]: it closes, and its
//! worker dials again. ARCHITECTURE.md has the table.

use crate::backoff::Backoff;
use actix::dev::ContextFut;
use actix::prelude::*;
use log::error;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use wazuh_cluster_protocol::message::{JobKind, JobReport, JobState};

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

struct Health {
    report: JobReport,
    consecutive_failures: u32,
    /// The delay the next (re)start waits out.
    next_delay: Duration,
}

/// Every change of a job's health in this process (every node of it) bumps this counter; nothing is
/// computed or sent while nobody watches it.
fn change_counter() -> &'static tokio::sync::watch::Sender<u64> {
    static CHANGES: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> = std::sync::OnceLock::new();
    CHANGES.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

fn announce_change() {
    let changes = change_counter();
    if changes.receiver_count() > 0 {
        changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A receiver that sees each change of any job's health in this process (a state, a run, a
/// failure, a restart, a figure): whoever waits for a health report to say something waits on
/// this, then reads the report again.
pub fn health_changes() -> tokio::sync::watch::Receiver<u64> {
    change_counter().subscribe()
}

/// The observable state of one job, shared by the actor, its supervisor and whoever reports on it.
#[derive(Clone)]
pub struct JobHealth {
    inner: Arc<Mutex<Health>>,
    backoff: Backoff,
}

impl std::fmt::Debug for JobHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JobHealth").field(&self.snapshot()).finish()
    }
}

impl JobHealth {
    pub fn new(name: &str, kind: JobKind, backoff: Backoff) -> Self {
        let report = JobReport { name: name.into(), kind, state: JobState::Starting, ..JobReport::default() };
        Self {
            inner: Arc::new(Mutex::new(Health { report, consecutive_failures: 0, next_delay: Duration::ZERO })),
            backoff,
        }
    }

    /// Changes the health, and says so on [`health_changes`].
    fn mutate<T>(&self, f: impl FnOnce(&mut Health) -> T) -> T {
        let out = self.with(f);
        announce_change();
        out
    }

    fn with<T>(&self, f: impl FnOnce(&mut Health) -> T) -> T {
        match self.inner.lock() {
            Ok(mut h) => f(&mut h),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn name(&self) -> String {
        self.with(|h| h.report.name.clone())
    }

    pub fn snapshot(&self) -> JobReport {
        self.with(|h| h.report.clone())
    }

    pub fn state(&self) -> JobState {
        self.with(|h| h.report.state)
    }

    pub(crate) fn set_state(&self, state: JobState) {
        self.mutate(|h| h.report.state = state);
    }

    /// A run (or request, or push) succeeded; `took` is how long it took.
    pub(crate) fn succeeded(&self, took: Option<Duration>) {
        self.mutate(|h| {
            h.consecutive_failures = 0;
            h.next_delay = Duration::ZERO;
            let r = &mut h.report;
            r.runs += 1;
            r.last_run_ms = Some(crate::clock::now_ms());
            if took.is_some() {
                r.last_duration_ms = took.map(|d| d.as_millis() as u64);
            }
            if r.state != JobState::Stopped {
                r.state = JobState::Running;
            }
        });
    }

    /// A failure that does not stop the job (a server's request): counted, nothing more.
    pub(crate) fn failed_once(&self, error: &str, panicked: bool) {
        self.mutate(|h| {
            h.report.failures += 1;
            h.report.panics += u64::from(panicked);
            h.report.last_error = Some(error.to_string());
            h.report.last_run_ms = Some(crate::clock::now_ms());
        });
    }

    /// A failure that makes the job wait before it works again: counted, and the back-off grows.
    /// Returns the delay to wait out.
    pub fn failed(&self, error: &str, panicked: bool) -> Duration {
        let backoff = self.backoff;
        self.mutate(|h| {
            let delay = backoff.delay(h.consecutive_failures);
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            h.next_delay = delay;
            let r = &mut h.report;
            r.failures += 1;
            r.panics += u64::from(panicked);
            r.last_error = Some(error.to_string());
            if r.state != JobState::Stopped {
                r.state = JobState::BackingOff;
            }
            delay
        })
    }

    /// The job restarted in place (after a failure).
    pub fn restarted(&self) {
        self.mutate(|h| h.report.restarts += 1);
    }

    /// How long the job waits before its next start: zero unless it failed last time.
    pub(crate) fn start_delay(&self) -> Duration {
        self.with(|h| h.next_delay)
    }

    #[cfg(test)]
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.with(|h| h.consecutive_failures)
    }

    /// Replaces the job's own figures.
    pub(crate) fn set_figures(&self, figures: Vec<(String, u64)>) {
        self.mutate(|h| h.report.figures = figures);
    }

    /// Sets one figure, keeping the others.
    pub(crate) fn set_figure(&self, name: &str, value: u64) {
        self.mutate(|h| match h.report.figures.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => h.report.figures.push((name.to_string(), value)),
        });
    }
}

/// An actor [`start`] can supervise: it says who it is, for the log line of a caught panic.
pub trait Guarded: Supervised + Actor<Context = Context<Self>> {
    fn health(&self) -> &JobHealth;
    /// `(node, peer)` for log lines.
    fn names(&self) -> (&str, &str);
}

/// Held by every supervised actor of a set; [`AllStopped::wait`] resolves once all are gone.
#[derive(Clone)]
pub struct Alive(#[allow(dead_code)] tokio::sync::mpsc::Sender<()>);

/// Waits for the actors holding the matching [`Alive`] tokens.
pub struct AllStopped(tokio::sync::mpsc::Receiver<()>);

/// A token for the actors of one set, and the way to wait for all of them to end.
pub(crate) fn liveness() -> (Alive, AllStopped) {
    // Nothing is ever sent: the channel only tells when the last token is dropped.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (Alive(tx), AllStopped(rx))
}

impl AllStopped {
    pub async fn wait(mut self) {
        while self.0.recv().await.is_some() {}
    }
}

/// Starts `A` with a mailbox of `mailbox` messages, restarting it in place when it stops itself
/// (after a failed run) or panics (caught here). It ends for good once its health says
/// [`JobState::Stopped`] or every address to it is gone; then `alive` is dropped.
pub fn start<A, F>(mailbox: usize, alive: Option<Alive>, f: F) -> Addr<A>
where
    A: Guarded,
    F: FnOnce(&mut Context<A>) -> A,
{
    let mut ctx = Context::new();
    ctx.set_mailbox_capacity(mailbox);
    let act = f(&mut ctx);
    let addr = ctx.address();
    let health = act.health().clone();
    let (node, peer) = act.names();
    let who = (node.to_string(), peer.to_string());
    let fut = ctx.into_future(act);
    actix_rt::spawn(Guard { fut, health, who, pause: None, restarted_blind: false, _alive: alive });
    addr
}

struct Guard<A: Guarded> {
    fut: ContextFut<A, Context<A>>,
    health: JobHealth,
    who: (String, String),
    /// After panics in a row with no pause between them (a job that panics as soon as it starts),
    /// the restart waits out the back-off here instead of looping.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The job was restarted after a panic and has not yet waited for anything since: a panic now
    /// means it cannot even start, so the next restart waits out the back-off.
    restarted_blind: bool,
    _alive: Option<Alive>,
}

impl<A: Guarded> Future for Guard<A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        loop {
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx)));
            match polled {
                Ok(Poll::Pending) => {
                    this.restarted_blind = false;
                    return Poll::Pending;
                }
                Ok(Poll::Ready(())) => {}
                Err(payload) => {
                    let message = panic_message(&*payload);
                    let delay = this.health.failed(&format!("panicked: {message}"), true);
                    error!(node = this.who.0.as_str(); "job {} for {} panicked: {message}; restarting it in {} ms",
                        this.health.name(), this.who.1, delay.as_millis());
                    if std::mem::replace(&mut this.restarted_blind, true) {
                        // A panic again before the job ever waited: pause before the next start.
                        if this.health.state() == JobState::Stopped || !this.fut.restart() {
                            return Poll::Ready(());
                        }
                        let mut pause = Box::pin(tokio::time::sleep(delay));
                        if pause.as_mut().poll(cx).is_pending() {
                            this.pause = Some(pause);
                            return Poll::Pending;
                        }
                        continue;
                    }
                }
            }
            // Stopped (after a failure) or panicked: restart in place, unless it was stopped for
            // good or nobody can reach it any more.
            if this.health.state() == JobState::Stopped || !this.fut.restart() {
                return Poll::Ready(());
            }
        }
    }
}

/// The node's lifeline: cut (once, with the reason) when an actor it cannot run without dies.
/// `wazuh-cluster run` waits on it beside the signals and stops the node, exiting non-zero, so
/// that its service manager (systemd, Kubernetes, compose) starts it again.
#[derive(Clone)]
pub struct Lifeline(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for Lifeline {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(None).0))
    }
}

impl std::fmt::Debug for Lifeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lifeline").field(&*self.0.borrow()).finish()
    }
}

impl Lifeline {
    /// Cuts it with `why` (the first reason stays).
    pub fn cut(&self, why: String) {
        self.0.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(why);
            }
            first
        });
    }

    /// Why it was cut, if it was.
    pub fn why(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves once it is cut, with why.
    pub async fn cut_off(&self) -> String {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What a panic of an actor started by [`start_watched`] means.
#[derive(Clone, Debug)]
pub(crate) enum OnPanic {
    /// The node cannot go on without it: the lifeline is cut.
    Fatal(Lifeline),
    /// Only the actor ends (a connection: its peer dials again); its `Drop` cleans up.
    End,
}

/// Starts an actor that is not restarted in place (its state cannot be rebuilt where it stands):
/// it runs as `start` would run it, but a panic is caught at its boundary, logged once as an
/// ERROR naming the node and `what`, and then either ends the actor alone or cuts the node's
/// lifeline (see [`OnPanic`]). Without this, a panic would close the actor's mailbox silently and
/// leave the node reporting itself up.
pub(crate) fn start_watched<A>(ctx: Context<A>, act: A, what: String, node: String, on_panic: OnPanic) -> Addr<A>
where
    A: Actor<Context = Context<A>>,
{
    let addr = ctx.address();
    let fut = ctx.into_future(act);
    actix_rt::spawn(Watch { fut: Some(fut), what, node, on_panic });
    addr
}

struct Watch<A: Actor<Context = Context<A>>> {
    fut: Option<ContextFut<A, Context<A>>>,
    what: String,
    node: String,
    on_panic: OnPanic,
}

impl<A: Actor<Context = Context<A>>> Future for Watch<A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else { return Poll::Ready(()) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(fut).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(()),
            Err(payload) => {
                let message = panic_message(&*payload);
                // The actor goes (its Drop runs) before anyone hears of it.
                this.fut = None;
                match &this.on_panic {
                    OnPanic::Fatal(lifeline) => {
                        error!(node = this.node.as_str(); "{} panicked: {message}; the node cannot go on without it and stops", this.what);
                        lifeline.cut(format!("{} panicked: {message}", this.what));
                    }
                    OnPanic::End => {
                        error!(node = this.node.as_str(); "{} panicked: {message}; it is closed", this.what);
                    }
                }
                Poll::Ready(())
            }
        }
    }
}

/// Test hooks, compiled only with the `testing` feature (never in a production build).
#[cfg(feature = "testing")]
pub mod testing {
    /// Makes the actor that receives it panic with this message (tests of what a panic does).
    #[derive(actix::Message, Debug, Clone)]
    #[rtype(result = "()")]
    pub struct Panic(pub String);
}

/// Stops an owner (the master's listener, a worker's link) at once: its sockets are dropped without
/// goodbyes, as a crash would drop them (start-up that failed once actors existed; crash tests).
#[derive(actix::Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Kill;

/// A future that panicked; holds the panic's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("panicked: {0}")]
pub(crate) struct Panicked(pub String);

/// A future whose panic becomes an `Err` with the panic's message, instead of unwinding into the
/// actor (or task) that polls it.
pub(crate) struct CatchUnwind<T> {
    inner: Option<Pin<Box<dyn Future<Output = T>>>>,
}

impl<T> CatchUnwind<T> {
    pub fn new(fut: impl Future<Output = T> + 'static) -> Self {
        Self { inner: Some(Box::pin(fut)) }
    }
}

impl<T> Future for CatchUnwind<T> {
    type Output = Result<T, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Result<T, Panicked>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(Panicked("polled after it panicked".into())));
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => {
                self.inner = None;
                Poll::Ready(Err(Panicked(panic_message(&*payload))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that panics on `Boom` and counts its starts.
    struct Fragile {
        health: JobHealth,
        starts: Arc<Mutex<u32>>,
    }

    impl Actor for Fragile {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            *self.starts.lock().unwrap() += 1;
        }
    }

    impl Supervised for Fragile {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.health.restarted();
        }
    }

    impl Guarded for Fragile {
        fn health(&self) -> &JobHealth {
            &self.health
        }
        fn names(&self) -> (&str, &str) {
            ("node", "peer")
        }
    }

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Boom(bool);

    impl Handler<Boom> for Fragile {
        type Result = u32;
        fn handle(&mut self, Boom(panic): Boom, _: &mut Context<Self>) -> u32 {
            if panic {
                panic!("injected panic");
            }
            7
        }
    }

    #[actix_rt::test]
    async fn a_panic_is_counted_and_the_actor_serves_again_at_the_same_address() {
        let health = JobHealth::new("Fragile", JobKind::Periodic, Backoff::new(Duration::ZERO, Duration::ZERO));
        let starts = Arc::new(Mutex::new(0));
        let (h, s) = (health.clone(), starts.clone());
        let (alive, all_stopped) = liveness();
        let addr = start(16, Some(alive), move |_| Fragile { health: h, starts: s });
        assert_eq!(addr.send(Boom(false)).await.unwrap(), 7);
        // The panicking message gets no answer; the actor is back for the next one.
        assert!(addr.send(Boom(true)).await.is_err());
        assert_eq!(addr.send(Boom(false)).await.unwrap(), 7);
        let report = health.snapshot();
        assert_eq!((report.failures, report.panics, report.restarts), (1, 1, 1));
        assert!(report.last_error.unwrap().contains("injected panic"));
        assert_eq!(*starts.lock().unwrap(), 2, "restarted in place: started ran again");
        // Stopped for good: it ends, and whoever waits for the set hears it.
        health.set_state(JobState::Stopped);
        assert!(addr.send(Boom(true)).await.is_err());
        tokio::time::timeout(Duration::from_secs(5), all_stopped.wait()).await.unwrap();
    }

    /// A job that panics as soon as it starts.
    struct Doomed {
        health: JobHealth,
        starts: Arc<Mutex<u32>>,
    }

    impl Actor for Doomed {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            *self.starts.lock().unwrap() += 1;
            panic!("broken from the start");
        }
    }

    impl Supervised for Doomed {}

    impl Guarded for Doomed {
        fn health(&self) -> &JobHealth {
            &self.health
        }
        fn names(&self) -> (&str, &str) {
            ("node", "peer")
        }
    }

    #[actix_rt::test]
    async fn a_job_that_panics_whenever_it_starts_waits_out_its_back_off_instead_of_looping() {
        tokio::time::pause();
        let health =
            JobHealth::new("Doomed", JobKind::Periodic, Backoff::new(Duration::from_secs(1), Duration::from_secs(8)));
        let starts = Arc::new(Mutex::new(0));
        let (h, s) = (health.clone(), starts.clone());
        let _addr = start(16, None, move |_| Doomed { health: h, starts: s });
        tokio::task::yield_now().await;
        let early = *starts.lock().unwrap();
        assert!(early <= 2, "{early} starts before any time passed");
        // Two starts at once, then one after each back-off (at least 1, 2, 4, 4, 4... s): at most
        // starts at 0, 0, 1, 3, 7, 11, 15 and 19 s within 20 s. A loop would make thousands.
        for _ in 0..200 {
            tokio::time::advance(Duration::from_millis(100)).await;
            tokio::task::yield_now().await;
        }
        let later = *starts.lock().unwrap();
        assert!(later > early && later <= 8, "{later} starts in 20 s");
        assert_eq!(health.snapshot().panics as u32, later);
    }

    #[actix_rt::test]
    async fn a_panicking_future_is_an_error_not_an_unwind() {
        let ok = CatchUnwind::new(async { 1 }).await;
        assert_eq!(ok, Ok(1));
        let caught = CatchUnwind::new(async {
            tokio::task::yield_now().await;
            panic!("in a future")
        })
        .await;
        assert_eq!(caught, Err::<(), _>(Panicked("in a future".to_string())));
    }

    #[test]
    fn failures_grow_the_delay_and_a_success_resets_it() {
        let h =
            JobHealth::new("J", JobKind::Periodic, Backoff::new(Duration::from_millis(100), Duration::from_secs(1)));
        assert_eq!(h.start_delay(), Duration::ZERO);
        let d1 = h.failed("x", false);
        let d2 = h.failed("x", false);
        assert!(
            d1 <= Duration::from_millis(100) && d2 <= Duration::from_millis(200) && d2 >= Duration::from_millis(100)
        );
        assert_eq!((h.consecutive_failures(), h.state()), (2, JobState::BackingOff));
        h.succeeded(Some(Duration::from_millis(3)));
        assert_eq!((h.consecutive_failures(), h.start_delay(), h.state()), (0, Duration::ZERO, JobState::Running));
        let r = h.snapshot();
        assert_eq!((r.runs, r.failures, r.last_duration_ms), (1, 2, Some(3)));
    }

    #[test]
    fn every_change_of_health_is_announced_and_a_read_is_not() {
        let h =
            JobHealth::new("Seen", JobKind::Periodic, Backoff::new(Duration::from_millis(100), Duration::from_secs(1)));
        let mut changes = health_changes();
        changes.borrow_and_update();
        let _ = (h.snapshot(), h.state(), h.name());
        // Other tests of this process may change their jobs meanwhile: only a change is asserted.
        h.succeeded(Some(Duration::from_millis(3)));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        h.set_figure("files", 7);
        assert!(changes.has_changed().unwrap());
    }
}
