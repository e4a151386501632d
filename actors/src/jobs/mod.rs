//! The job actors: one set per worker connection on each end, plus the master's two shared ones.
//!
//! | job | master end (`master`) | worker end (`worker`) |
//! |---|---|---|
//! | `KeepAlive` | answers keep-alives | sends one every keep-alive interval, with its siblings' health |
//! | `AgentInfo` | stores agent statuses (acks) | sends its agents' statuses |
//! | `AgentGroupsSend` | pushes agent-group changes from `LocalAgentGroups` | applies them, acks |
//! | `Integrity` | answers with `LocalIntegrity`'s manifest digest | checks its files against it |
//!
//! `LocalAgentGroups` and `LocalIntegrity` ([`local`]) run once per master, shared by all connections.
//!
//! Every job runs under an actix `Supervisor`. A run that fails (an error, a timed-out request, an
//! injected fault) is logged, counted, and stops the actor; the supervisor restarts it in place (same
//! address, same mailbox, so the connection never notices) after an exponential back-off, while the
//! connection and the sibling jobs go on. Counters live in a shared [`JobHealth`] that health reports
//! read without asking the actor.

pub mod local;
pub mod master;
pub mod worker;

use crate::settings::ChannelSettings;
use actix::prelude::*;
use log::{debug, warn};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wazuh_cluster_protocol::message::JobReport;
use wazuh_cluster_protocol::Envelope;

/// The observable state of one job, shared between the actor and whoever reports on it.
#[derive(Debug, Clone)]
pub struct JobHealth(Arc<Mutex<JobReport>>);

impl JobHealth {
    pub fn new(name: &str) -> Self {
        JobHealth(Arc::new(Mutex::new(JobReport {
            name: name.into(),
            state: "starting".into(),
            ..JobReport::default()
        })))
    }

    pub fn snapshot(&self) -> JobReport {
        match self.0.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut JobReport)) {
        match self.0.lock() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// A message from the peer, routed by the connection to the job that owns its type.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound<T>(pub Envelope<T>);

/// Chaos and test hook: the job's next `failures` runs fail as if their work had failed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct InjectFault {
    pub failures: u32,
}

/// Ends a job for good (its connection is closing).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopJob;

/// The jobs of one set by name: fault injection, stopping, health.
#[derive(Default)]
pub struct Controls {
    entries: Vec<(&'static str, Recipient<InjectFault>, Recipient<StopJob>, JobHealth)>,
}

impl Controls {
    pub fn add<A>(&mut self, name: &'static str, addr: &Addr<A>, health: JobHealth)
    where
        A: Actor<Context = Context<A>> + Handler<InjectFault> + Handler<StopJob>,
    {
        self.entries.push((name, addr.clone().recipient(), addr.clone().recipient(), health));
    }

    pub fn healths(&self) -> Vec<JobHealth> {
        self.entries.iter().map(|(_, _, _, h)| h.clone()).collect()
    }

    /// Sends `fault` to the job named `job`; false if there is none.
    pub fn inject(&self, job: &str, fault: InjectFault) -> bool {
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

/// Bookkeeping every job shares: health counters, restart back-off, injected faults.
pub struct JobCore {
    pub name: &'static str,
    pub settings: Arc<ChannelSettings>,
    pub peer: String,
    health: JobHealth,
    faults: u32,
    consecutive_failures: u32,
    busy: bool,
    run_started: Option<Instant>,
    stopped_for_good: bool,
}

impl JobCore {
    pub fn new(name: &'static str, settings: Arc<ChannelSettings>, peer: &str, health: JobHealth) -> Self {
        Self {
            name,
            settings,
            peer: peer.into(),
            health,
            faults: 0,
            consecutive_failures: 0,
            busy: false,
            run_started: None,
            stopped_for_good: false,
        }
    }

    pub fn node(&self) -> &str {
        &self.settings.node_name
    }

    /// Delay before the actor (re)starts its work: none at first, then exponential in the number of
    /// consecutive failures, capped.
    pub fn start_delay(&self) -> Duration {
        if self.consecutive_failures == 0 {
            return Duration::ZERO;
        }
        let jobs = &self.settings.jobs;
        crate::worker::backoff(self.consecutive_failures - 1, jobs.restart_min, jobs.restart_max, crate::random_u64())
    }

    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// Marks the start of a run. An injected fault makes it fail at once.
    pub fn begin(&mut self) -> Result<(), String> {
        if self.faults > 0 {
            self.faults -= 1;
            return Err("injected fault".into());
        }
        self.busy = true;
        self.run_started = Some(Instant::now());
        Ok(())
    }

    /// Records a successful run.
    pub fn succeeded(&mut self) {
        let duration = self.run_started.take().map(|s| s.elapsed().as_millis() as u64);
        self.busy = false;
        self.consecutive_failures = 0;
        self.health.update(|r| {
            r.state = "running".into();
            r.runs += 1;
            r.last_run_ms = Some(crate::now_ms());
            r.last_duration_ms = duration;
        });
    }

    /// Records a failed run and stops the actor; its supervisor restarts it after a back-off.
    pub fn failed<A>(&mut self, ctx: &mut Context<A>, error: String)
    where
        A: Actor<Context = Context<A>>,
    {
        warn!(node = self.settings.node_name.as_str(); "job {} for {} failed: {error}; restarting it", self.name, self.peer);
        self.busy = false;
        self.run_started = None;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.health.update(|r| {
            r.state = "restarting".into();
            r.failures += 1;
            r.last_error = Some(error);
        });
        ctx.stop();
    }

    /// Replaces the job's specific figures in its health report.
    pub fn set_details(&mut self, details: Vec<(String, String)>) {
        self.health.update(|r| r.details = details);
    }

    /// Call from `Supervised::restarting`.
    pub fn restarting(&mut self) {
        self.busy = false;
        self.health.update(|r| r.restarts += 1);
        debug!(node = self.settings.node_name.as_str(); "job {} for {} restarting", self.name, self.peer);
    }

    pub fn inject(&mut self, fault: InjectFault) {
        self.faults = self.faults.saturating_add(fault.failures);
    }

    /// Call from `StopJob`: stop and never restart.
    pub fn stop_for_good<A>(&mut self, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        self.stopped_for_good = true;
        self.health.update(|r| r.state = "stopped".into());
        ctx.stop();
    }

    pub fn is_stopped_for_good(&self) -> bool {
        self.stopped_for_good
    }

    /// Call from `started`: marks the job running unless it is waiting out a back-off.
    pub fn started(&mut self) {
        if self.consecutive_failures == 0 {
            self.health.update(|r| r.state = "running".into());
        }
    }
}

/// Implements the `Supervised`, `InjectFault` and `StopJob` plumbing every job shares.
macro_rules! job_plumbing {
    ($job:ty) => {
        impl actix::Supervised for $job {
            fn restarting(&mut self, _ctx: &mut actix::Context<Self>) {
                self.core.restarting();
            }
        }

        impl actix::Handler<$crate::jobs::InjectFault> for $job {
            type Result = ();
            fn handle(&mut self, msg: $crate::jobs::InjectFault, _ctx: &mut actix::Context<Self>) {
                self.core.inject(msg);
            }
        }

        impl actix::Handler<$crate::jobs::StopJob> for $job {
            type Result = ();
            fn handle(&mut self, _: $crate::jobs::StopJob, ctx: &mut actix::Context<Self>) {
                self.core.stop_for_good(ctx);
            }
        }
    };
}
pub(crate) use job_plumbing;

/// Runs `f` every `every`, starting after the core's restart delay (zero on the first start).
pub fn schedule<A>(core: &mut JobCore, ctx: &mut Context<A>, every: Duration, f: fn(&mut A, &mut Context<A>))
where
    A: Actor<Context = Context<A>>,
{
    core.started();
    let delay = core.start_delay();
    ctx.run_later(delay, move |act, ctx| {
        f(act, ctx);
        ctx.run_interval(every, f);
    });
}

/// Sends a request over `conn` and waits for the response; every failure is a plain message.
pub async fn call<S: crate::connection::Side>(
    conn: Addr<crate::connection::ConnectionActor<S>>,
    body: S::Out,
) -> Result<S::In, String> {
    match conn.send(crate::connection::Call::new(body)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the connection is gone".into()),
    }
}
