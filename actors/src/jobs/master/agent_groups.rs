//! AgentGroupsSend, master end: replicates the agent table (keys and groups) to one worker.
//!
//! A pusher: it waits for the worker's position (sent on connect), then pushes the changes after
//! it whenever `LocalAgentGroups` publishes a newer state, one push at a time; the decisions are
//! [`Delivery`]'s. A delta longer than [`MAX_CHANGES_PER_PUSH`] goes in parts, each acknowledged
//! before the next. A failed push is counted and retried after an exponential back-off from the same
//! position; the job itself never restarts for it.

use super::delivery::{Command, Delivery, Event};
use crate::connection::{CallError, ConnHandle, MasterSide};
use crate::jobs::local::GroupsState;
use crate::jobs::runtime::{FaultKind, Faults, JobFault, Notice, StopJob};
use crate::registry::{Registry, StoreError, StoreHandle};
use crate::supervise::{Guarded, JobHealth};
use actix::clock::Instant;
use actix::prelude::*;
use log::{debug, error, warn};
use wazuh_cluster_protocol::message::{AgentGroupsAck, AgentGroupsUpdate, JobState};
use wazuh_cluster_protocol::{MasterToWorker, WorkerToMaster};

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("cannot read the registry: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("injected fault")]
    Injected,
    /// The worker's replica must not be touched: it follows another registry, or it is ahead of
    /// this one (this registry lost changes). Not retried: an operator decides.
    #[error("{0}")]
    Refused(String),
}

/// The agent-groups table moved (from the connection's watcher task).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct GroupsMoved(pub Option<GroupsState>);

pub struct AgentGroupsSend {
    health: JobHealth,
    conn: ConnHandle<MasterSide>,
    registry: StoreHandle<Registry>,
    latest: Option<GroupsState>,
    delivery: Delivery,
    faults: Faults,
    restarted: bool,
    stopped: bool,
    snapshots: u64,
    /// The generation of the registry the worker's replica follows (0: none or unknown).
    worker_generation: u64,
    /// Pushes refused for good on this connection (see [`PushError::Refused`]).
    refused: bool,
    positions: std::sync::Arc<super::positions::WorkerPositions>,
}

/// Changes in one push at most: a longer delta goes in several, each acknowledged before the next,
/// so that neither end holds or applies more than this at once (a burst of enrollments, a worker
/// back after a long absence) and no push outlasts the request timeout.
pub(crate) const MAX_CHANGES_PER_PUSH: usize = 2_000;

impl AgentGroupsSend {
    pub fn new(
        health: JobHealth,
        conn: ConnHandle<MasterSide>,
        registry: StoreHandle<Registry>,
        positions: std::sync::Arc<super::positions::WorkerPositions>,
    ) -> Self {
        Self {
            health,
            conn,
            registry,
            latest: None,
            delivery: Delivery::default(),
            faults: Faults::default(),
            restarted: false,
            stopped: false,
            snapshots: 0,
            worker_generation: 0,
            refused: false,
            positions,
        }
    }

    fn event(&mut self, event: Event, ctx: &mut Context<Self>) {
        if self.stopped || self.refused {
            return;
        }
        let latest = self.latest.as_ref().map(|g| g.seq);
        let command = self.delivery.on(event, latest);
        self.execute(command, ctx);
    }

    fn execute(&mut self, command: Command, ctx: &mut Context<Self>) {
        match command {
            Command::Idle => {}
            Command::BackOff { .. } => {
                let delay = self.health.start_delay();
                ctx.run_later(delay, |act, ctx| act.event(Event::RetryDue, ctx));
            }
            Command::Push { from, snapshot } => self.push(from, snapshot, ctx),
        }
    }

    fn push(&mut self, from: u64, force_snapshot: bool, ctx: &mut Context<Self>) {
        let fault = self.faults.take();
        if fault == Some(FaultKind::Panic) {
            panic!("injected panic");
        }
        let (registry, conn) = (self.registry.clone(), self.conn.clone());
        let worker_generation = self.worker_generation;
        let started = Instant::now();
        let fut = async move {
            if fault == Some(FaultKind::Fail) {
                return Err(PushError::Injected);
            }
            let after = if force_snapshot { u64::MAX } else { from };
            let read = registry
                .run(move |r| {
                    // A replica that holds agents of another registry, or more of this one than
                    // it has, is never rewritten: that would wipe what may be the only copy.
                    let generation = r.generation();
                    if worker_generation != 0 && worker_generation != generation && from > 0 {
                        return Ok(Err(format!(
                            "its replica follows another agent registry (generation {worker_generation}, this \
                             master's {generation}) and holds agents up to position {from}"
                        )));
                    }
                    if from > r.seq() {
                        return Ok(Err(format!(
                            "its replica holds agents up to position {from}, beyond this master's {} (this \
                             registry lost changes)",
                            r.seq()
                        )));
                    }
                    let (snapshot, changes, to) = r.changes_since_limited(after, MAX_CHANGES_PER_PUSH)?;
                    // The table's hash is known at the current position only: a part of a longer
                    // delta carries none, and its acknowledgement is checked on the position alone.
                    let hash = if to == r.seq() { Some(r.hash()) } else { None };
                    Ok(Ok((snapshot, changes, to, hash, generation)))
                })
                .await?;
            let (snapshot, mut changes, seq, hash, generation) = read.map_err(PushError::Refused)?;
            // A worker of protocol 2.1 knows nothing of the API's users (it keeps its own).
            if conn.version() < wazuh_cluster_protocol::version::USERS {
                changes.retain(|c| !c.is_user());
            }
            let update = AgentGroupsUpdate {
                from_seq: from,
                to_seq: seq,
                snapshot,
                changes,
                global_hash: hash.clone().unwrap_or_default(),
                generation,
            };
            match conn.call(MasterToWorker::AgentGroups(update)).await? {
                WorkerToMaster::AgentGroupsAck(ack) => Ok((ack, seq, hash, snapshot)),
                other => Err(CallError::unexpected("agent_groups_ack", &other).into()),
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| match result {
            Ok((ack, seq, hash, snapshot)) => act.acked(ack, seq, hash, snapshot, started, ctx),
            Err(PushError::Refused(why)) => {
                act.refused = true;
                act.health.set_figure("refused", 1);
                error!(node = act.conn.node(); "not sending the agent table to worker {}: {why}. Its replica is left as it is. If this master lost its registry, rebuild it from that replica (wazuh-cluster recover); to make the worker follow this master anyway, stop it and remove its var/db/replica.db", act.conn.peer());
            }
            Err(e) => {
                let delay = act.health.failed(&e.to_string(), false);
                warn!(node = act.conn.node(); "job AgentGroupsSend for {}: push failed: {e}; retrying in {} ms",
                    act.conn.peer(), delay.as_millis());
                act.event(Event::Failed, ctx);
            }
        }));
    }

    fn acked(
        &mut self,
        ack: AgentGroupsAck,
        seq: u64,
        hash: Option<String>,
        snapshot: bool,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        let agrees = ack.seq == seq && hash.as_ref().is_none_or(|h| *h == ack.global_hash);
        if !agrees {
            warn!(node = self.conn.node(); "worker {} disagrees on the agent table after seq {seq} (it has seq {} hash {}, the master {}){}; sending a snapshot",
                self.conn.peer(), ack.seq, ack.global_hash, hash.as_deref().unwrap_or("(not compared)"), if snapshot { " even after a snapshot" } else { "" });
        }
        self.snapshots += u64::from(snapshot);
        if agrees {
            self.positions.set(self.conn.peer(), seq);
        }
        self.health.succeeded(Some(started.elapsed()));
        self.health.set_figures(vec![("acked_seq".into(), ack.seq), ("snapshots".into(), self.snapshots)]);
        debug!(node = self.conn.node(); "worker {} at agent table position {}", self.conn.peer(), ack.seq);
        self.event(Event::Acked { seq: if agrees { seq } else { ack.seq }, agrees }, ctx);
    }
}

impl Actor for AgentGroupsSend {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Gone (or restarting): no change waits on it; it counts again at its next acknowledgement.
        self.positions.forget(self.conn.peer());
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        if std::mem::take(&mut self.restarted) {
            // A panic cut a push short: back off, then push again from the acknowledged position.
            self.event(Event::Interrupted, ctx);
        } else {
            self.health.set_state(JobState::Running);
        }
    }
}

impl Supervised for AgentGroupsSend {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarted = true;
        self.health.restarted();
    }
}

impl Guarded for AgentGroupsSend {
    fn health(&self) -> &JobHealth {
        &self.health
    }
    fn names(&self) -> (&str, &str) {
        (self.conn.node(), self.conn.peer())
    }
}

impl Handler<GroupsMoved> for AgentGroupsSend {
    type Result = ();

    fn handle(&mut self, GroupsMoved(state): GroupsMoved, ctx: &mut Context<Self>) {
        self.latest = state;
        self.event(Event::Changed, ctx);
    }
}

impl Handler<Notice<AgentGroupsAck>> for AgentGroupsSend {
    type Result = ();

    /// The worker's position, sent when it connects: "everything after N".
    fn handle(&mut self, notice: Notice<AgentGroupsAck>, ctx: &mut Context<Self>) {
        debug!(node = self.conn.node(); "worker {} holds the agent table up to {} (generation {})", self.conn.peer(), notice.body.seq, notice.body.generation);
        self.worker_generation = notice.body.generation;
        self.event(Event::Position(notice.body.seq), ctx);
    }
}

impl Handler<JobFault> for AgentGroupsSend {
    type Result = ();
    fn handle(&mut self, msg: JobFault, _: &mut Context<Self>) {
        self.faults.add(msg);
    }
}

impl Handler<StopJob> for AgentGroupsSend {
    type Result = ();
    fn handle(&mut self, _: StopJob, ctx: &mut Context<Self>) {
        self.stopped = true;
        self.health.set_state(JobState::Stopped);
        ctx.stop();
    }
}
