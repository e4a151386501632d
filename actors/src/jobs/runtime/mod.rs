//! What every job shares: the two kinds of jobs, how each fails, and the hooks tests use.
//!
//! - **Periodic jobs** (a worker's KeepAlive, AgentInfo and Integrity; the master's LocalIntegrity
//!   and LocalAgentGroups) run on their own schedule through a [`JobCore`]. A run that fails is
//!   logged (node, job, peer, error, delay), counted, and stops the actor; its supervisor
//!   ([`crate::supervise::start`]) restarts it in place, and it waits out an exponential back-off
//!   before it works again. A panic is caught and handled the same way.
//! - **Request servers** (the master's end of every connection; a worker's AgentGroupsSend) answer
//!   the peer's requests through a [`Server`]: each request runs as its own future beside the
//!   others; one that fails (or panics) is answered with a typed error reply, counted, and logged
//!   (at most one line a second per job); the job goes on serving, nothing in flight is lost.
//!
//! Both stop for good on [`StopJob`] (their connection is closing).

use crate::connection::{CallError, ConnHandle, InboundPermit, LocalFuture, Side, Undeliverable};
use crate::registry::StoreError;
use crate::settings::ChannelSettings;
use crate::supervise::{panic_message, Alive, CatchUnwind, Guarded, JobHealth};
use crate::throttle::Throttle;
use actix::clock::Instant;
use actix::dev::ToEnvelope;
use actix::prelude::*;
use log::{debug, warn};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;
use wazuh_cluster_protocol::message::{ErrorCode, ErrorReply, JobKind, JobState, RequestId};

mod server;
pub use server::*;

/// Messages a job's mailbox holds at most; senders that find it full wait (the connection's
/// reader stops reading meanwhile).
pub(crate) const MAILBOX: usize = 64;

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The run or request fails as if its work had failed.
    Fail,
    /// The run or request panics.
    Panic,
}

/// Chaos and test hook: the job's next `count` runs (or requests) fail or panic.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct JobFault {
    pub kind: FaultKind,
    pub count: u32,
}

/// Test hook, with the `testing` feature only: makes a job fail or panic its next `count` runs (or
/// requests). On a master, a job of the connection with `worker`, or with `worker: None` one of
/// its shared jobs; on a worker, a job of its connection (`worker` is not read). Answers whether
/// there was such a job.
#[cfg(feature = "testing")]
#[derive(Message, Debug, Clone)]
#[rtype(result = "bool")]
pub struct InjectFault {
    pub worker: Option<String>,
    pub job: String,
    pub kind: FaultKind,
    pub count: u32,
}

/// Faults injected and not yet used.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    fail: u32,
    panic: u32,
}

impl Faults {
    pub fn add(&mut self, f: JobFault) {
        match f.kind {
            FaultKind::Fail => self.fail = self.fail.saturating_add(f.count),
            FaultKind::Panic => self.panic = self.panic.saturating_add(f.count),
        }
    }

    /// The fault the next run must suffer, if any (panics first).
    pub fn take(&mut self) -> Option<FaultKind> {
        if self.panic > 0 {
            self.panic -= 1;
            Some(FaultKind::Panic)
        } else if self.fail > 0 {
            self.fail -= 1;
            Some(FaultKind::Fail)
        } else {
            None
        }
    }
}

/// A run failed because a fault was injected.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("injected fault")]
pub(crate) struct Injected;

/// Ends a job for good (its connection is closing).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopJob;

/// A request of the peer's, for the job that serves its type.
pub struct Request<R> {
    pub id: RequestId,
    pub body: R,
    pub permit: InboundPermit,
}

impl<R: 'static> Message for Request<R> {
    type Result = ();
}

/// A notification of the peer's, for the job that handles its type.
pub(crate) struct Notice<R> {
    pub body: R,
    /// Held, never read: the notice's share of the inbound budget goes back when it is dropped.
    pub _permit: InboundPermit,
}

impl<R: 'static> Message for Notice<R> {
    type Result = ();
}

/// Hands `msg` to `addr`: queued at once while its mailbox has room (the reader goes on reading),
/// else the reader waits for room (and reads nothing meanwhile).
pub(crate) fn deliver<A, M>(addr: &Addr<A>, msg: M) -> LocalFuture<Result<(), Undeliverable>>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = ()> + Send + 'static,
{
    match addr.try_send(msg) {
        Ok(()) => Box::pin(std::future::ready(Ok(()))),
        Err(SendError::Full(msg)) => {
            let request = addr.send(msg);
            Box::pin(async move { request.await.map_err(|_| Undeliverable::Stopped) })
        }
        Err(SendError::Closed(_)) => Box::pin(std::future::ready(Err(Undeliverable::Stopped))),
    }
}

/// Bookkeeping of a periodic job: health, back-off, injected faults, whether a run is going on.
pub(crate) struct JobCore {
    pub name: &'static str,
    pub settings: Arc<ChannelSettings>,
    pub peer: String,
    health: JobHealth,
    faults: Faults,
    run_started: Option<Instant>,
    /// While waiting out a back-off: when work may start again.
    resume_at: Option<Instant>,
    stopped: bool,
}

impl JobCore {
    /// A core for job `name` (of kind `kind`) working for `peer` ("all workers" for shared jobs).
    pub fn new(name: &'static str, kind: JobKind, settings: &Arc<ChannelSettings>, peer: &str) -> Self {
        Self {
            name,
            settings: settings.clone(),
            peer: peer.into(),
            health: JobHealth::new(name, kind, settings.jobs.restart_backoff()),
            faults: Faults::default(),
            run_started: None,
            resume_at: None,
            stopped: false,
        }
    }

    /// Waiting out a back-off after a failure: nothing may start before it ends.
    pub(crate) fn backing_off(&self) -> bool {
        self.resume_at.is_some_and(|t| Instant::now() < t)
    }

    pub fn health(&self) -> &JobHealth {
        &self.health
    }

    pub fn node(&self) -> &str {
        &self.settings.node_name
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.run_started.is_some()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Marks the start of a run. An injected failure makes it fail at once; an injected panic
    /// panics here, in the actor, where its supervisor catches it.
    pub(crate) fn begin(&mut self) -> Result<(), Injected> {
        match self.faults.take() {
            Some(FaultKind::Panic) => panic!("injected panic"),
            Some(FaultKind::Fail) => Err(Injected),
            None => {
                self.run_started = Some(Instant::now());
                Ok(())
            }
        }
    }

    /// Records a successful run.
    pub(crate) fn succeeded(&mut self) {
        let took = self.run_started.take().map(|s| s.elapsed());
        self.health.succeeded(took);
    }

    /// Records a failed run and stops the actor; its supervisor restarts it, and it waits out its
    /// back-off before working again. One warning line per failure.
    pub fn failed<A>(&mut self, ctx: &mut Context<A>, error: impl Display)
    where
        A: Actor<Context = Context<A>>,
    {
        self.run_started = None;
        let delay = self.health.failed(&error.to_string(), false);
        warn!(node = self.settings.node_name.as_str(); "job {} for {} failed: {error}; restarting it in {} ms",
            self.name, self.peer, delay.as_millis());
        ctx.stop();
    }

    /// Call from `Supervised::restarting`.
    pub fn restarting(&mut self) {
        self.run_started = None;
        self.health.restarted();
        debug!(node = self.settings.node_name.as_str(); "job {} for {} restarting", self.name, self.peer);
    }

    pub(crate) fn inject(&mut self, fault: JobFault) {
        self.faults.add(fault);
    }

    /// Call from `StopJob`: stop and never restart.
    pub(crate) fn stop_for_good<A>(&mut self, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        self.stopped = true;
        self.health.set_state(JobState::Stopped);
        ctx.stop();
    }

    /// Call from `started`: `false` if the job was stopped for good. Marks it running unless it is
    /// waiting out a back-off.
    pub fn started(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        if self.health.start_delay().is_zero() {
            self.health.set_state(JobState::Running);
        }
        true
    }

    /// The delay to wait out before working (zero unless the last run failed).
    pub(crate) fn start_delay(&self) -> Duration {
        self.health.start_delay()
    }
}

/// Implements the `Supervised`, `Guarded`, `JobFault` and `StopJob` plumbing of a periodic job
/// whose [`JobCore`] is its `core` field.
macro_rules! job_plumbing {
    ($job:ty) => {
        impl actix::Supervised for $job {
            fn restarting(&mut self, _ctx: &mut actix::Context<Self>) {
                self.core.restarting();
            }
        }

        $crate::jobs::runtime::job_plumbing!($job, custom_restart);
    };
    // The job implements `Supervised` itself (and calls `self.core.restarting()` from it).
    ($job:ty, custom_restart) => {
        impl $crate::supervise::Guarded for $job {
            fn health(&self) -> &$crate::supervise::JobHealth {
                self.core.health()
            }
            fn names(&self) -> (&str, &str) {
                (self.core.node(), &self.core.peer)
            }
        }

        impl actix::Handler<$crate::jobs::runtime::JobFault> for $job {
            type Result = ();
            fn handle(&mut self, msg: $crate::jobs::runtime::JobFault, _ctx: &mut actix::Context<Self>) {
                self.core.inject(msg);
            }
        }

        impl actix::Handler<$crate::jobs::runtime::StopJob> for $job {
            type Result = ();
            fn handle(&mut self, _: $crate::jobs::runtime::StopJob, ctx: &mut actix::Context<Self>) {
                self.core.stop_for_good(ctx);
            }
        }
    };
}
pub(crate) use job_plumbing;

/// Runs `f` every `every`, after the core's back-off delay (zero on a first start).
pub(crate) fn schedule<A>(core: &mut JobCore, ctx: &mut Context<A>, every: Duration, f: fn(&mut A, &mut Context<A>))
where
    A: Actor<Context = Context<A>>,
{
    if !core.started() {
        return;
    }
    let delay = core.start_delay();
    core.resume_at = Some(Instant::now() + delay);
    ctx.run_later(delay, move |act, ctx| {
        f(act, ctx);
        ctx.run_interval(every, f);
    });
}

/// What health reports show of a connection's job set.
#[derive(Debug, Clone, Default)]
pub struct JobSetView {
    /// This end's jobs.
    pub jobs: Vec<wazuh_cluster_protocol::message::JobReport>,
    /// The peer's jobs, as it last reported them (workers report theirs in keep-alives).
    pub peer_jobs: Vec<wazuh_cluster_protocol::message::JobReport>,
    /// When the last keep-alive (worker -> master) or its acknowledgement (master -> worker) came.
    pub last_keepalive_ms: Option<u64>,
}

/// The jobs of one set by name: fault injection, stopping, health.
#[derive(Default)]
pub struct Controls {
    entries: Vec<(&'static str, Recipient<JobFault>, Recipient<StopJob>, JobHealth)>,
}

impl Controls {
    pub fn add<A>(&mut self, name: &'static str, addr: &Addr<A>, health: JobHealth)
    where
        A: Actor<Context = Context<A>> + Handler<JobFault> + Handler<StopJob>,
    {
        self.entries.push((name, addr.clone().recipient(), addr.clone().recipient(), health));
    }

    pub(crate) fn healths(&self) -> Vec<JobHealth> {
        self.entries.iter().map(|(_, _, _, h)| h.clone()).collect()
    }

    #[cfg(feature = "testing")]
    /// Sends `fault` to the job named `job`; false if there is none.
    pub(crate) fn inject(&self, job: &str, fault: JobFault) -> bool {
        match self.entries.iter().find(|(name, ..)| *name == job) {
            Some((_, inject, ..)) => {
                inject.do_send(fault);
                true
            }
            None => false,
        }
    }

    pub fn stop(&self) {
        for (_, _, stop, _) in &self.entries {
            stop.do_send(StopJob);
        }
    }
}

/// What both sides' job sets share: their jobs by name, the helper tasks they run beside them,
/// and the way to stop them all and wait for it.
pub(crate) struct SetControl {
    controls: Controls,
    tasks: std::cell::RefCell<Vec<actix_rt::task::JoinHandle<()>>>,
    all_stopped: std::cell::RefCell<Option<crate::supervise::AllStopped>>,
}

impl SetControl {
    pub fn new(
        controls: Controls,
        tasks: Vec<actix_rt::task::JoinHandle<()>>,
        all_stopped: crate::supervise::AllStopped,
    ) -> Self {
        Self {
            controls,
            tasks: std::cell::RefCell::new(tasks),
            all_stopped: std::cell::RefCell::new(Some(all_stopped)),
        }
    }

    /// Every job's health report.
    pub fn reports(&self) -> Vec<wazuh_cluster_protocol::message::JobReport> {
        self.controls.healths().iter().map(JobHealth::snapshot).collect()
    }

    #[cfg(feature = "testing")]
    /// Sends `fault` to the job named `job`; false if there is none.
    pub(crate) fn inject(&self, job: &str, fault: JobFault) -> bool {
        self.controls.inject(job, fault)
    }

    /// Stops every job for good and the helper tasks; resolves once every job has stopped.
    pub fn stop(&self) -> LocalFuture<()> {
        self.controls.stop();
        for task in self.tasks.borrow_mut().drain(..) {
            task.abort();
        }
        let all_stopped = self.all_stopped.borrow_mut().take();
        Box::pin(async move {
            if let Some(all) = all_stopped {
                all.wait().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::JobIntervals;
    use std::sync::Mutex;

    /// A periodic job that records when each of its runs happened and whether it failed.
    struct Ticker {
        core: JobCore,
        runs: Arc<Mutex<Vec<(Duration, bool)>>>,
        t0: Instant,
    }

    job_plumbing!(Ticker);

    impl Ticker {
        fn tick(&mut self, ctx: &mut Context<Self>) {
            let at = self.t0.elapsed();
            if self.core.begin().is_err() {
                self.runs.lock().unwrap().push((at, false));
                return self.core.failed(ctx, Injected);
            }
            self.runs.lock().unwrap().push((at, true));
            self.core.succeeded();
        }
    }

    impl Actor for Ticker {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            schedule(&mut self.core, ctx, Duration::from_secs(10), Self::tick);
        }
    }

    fn settings() -> Arc<ChannelSettings> {
        let mut s = crate::settings::test_settings("node");
        s.jobs = JobIntervals {
            restart_min: Duration::from_secs(1),
            restart_max: Duration::from_secs(8),
            ..JobIntervals::default()
        };
        Arc::new(s)
    }

    /// Runs the clock forward in small steps, so that every timer due on the way fires.
    async fn advance(total: Duration) {
        let step = Duration::from_millis(10);
        let mut done = Duration::ZERO;
        while done < total {
            tokio::time::advance(step).await;
            tokio::task::yield_now().await;
            done += step;
        }
    }

    #[actix_rt::test]
    async fn a_periodic_job_runs_on_its_interval_and_a_failing_one_waits_out_its_back_off() {
        tokio::time::pause();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let r = runs.clone();
        let s = settings();
        let addr = crate::supervise::start(MAILBOX, None, move |_| Ticker {
            core: JobCore::new("Ticker", JobKind::Periodic, &s, "peer"),
            runs: r,
            t0: Instant::now(),
        });
        // Runs at once, then every 10 s.
        advance(Duration::from_secs(25)).await;
        let at: Vec<u64> = runs.lock().unwrap().iter().map(|(d, _)| d.as_secs()).collect();
        assert_eq!(at, [0, 10, 20]);

        // Four failures in a row from the run at 30 s: after each, the restarted job waits out
        // a longer delay (steps of 1, 2, 4, 8 s, each delay in the upper half of its step).
        addr.send(JobFault { kind: FaultKind::Fail, count: 4 }).await.unwrap();
        runs.lock().unwrap().clear();
        advance(Duration::from_secs(30)).await;
        let runs = runs.lock().unwrap().clone();
        let outcomes: Vec<bool> = runs.iter().map(|(_, ok)| *ok).collect();
        assert_eq!(&outcomes[..5], [false, false, false, false, true], "{runs:?}");
        let gaps: Vec<Duration> = runs.windows(2).take(4).map(|w| w[1].0 - w[0].0).collect();
        for (i, (gap, step)) in gaps.iter().zip([1u64, 2, 4, 8]).enumerate() {
            let (low, high) = (Duration::from_millis(step * 500), Duration::from_millis(step * 1000 + 20));
            assert!(*gap >= low && *gap <= high, "restart {} came after {gap:?}, not within {low:?}..{high:?}", i + 1);
        }
        let report = addr.send(GetReport).await.unwrap();
        assert_eq!((report.failures, report.restarts), (4, 4));
    }

    #[derive(Message)]
    #[rtype(result = "wazuh_cluster_protocol::message::JobReport")]
    struct GetReport;

    impl Handler<GetReport> for Ticker {
        type Result = MessageResult<GetReport>;
        fn handle(&mut self, _: GetReport, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.core.health().snapshot())
        }
    }
}
