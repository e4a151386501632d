//! A worker's periodic reports to the master: KeepAlive (its jobs' health, every keep-alive
//! interval) and AgentInfo (the statuses of its agents, a fifth of `agent_info` apart).

use crate::agents::hub::AgentHub;
use crate::agents::messages::{Delivered, ResendAll, TakeUpdates};
use crate::connection::{CallError, ConnHandle, WorkerSide};
use crate::jobs::runtime::{job_plumbing, schedule, JobCore};
use crate::supervise::JobHealth;
use actix::clock::Instant;
use actix::prelude::*;
use log::debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wazuh_cluster_protocol::message::{AgentInfoBatch, KeepAlive as KeepAliveMsg};
use wazuh_cluster_protocol::{MasterToWorker, WorkerToMaster};

/// Why a report failed.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the agent hub did not answer: {0}")]
    Hub(#[from] MailboxError),
}

/// Sends a keep-alive every interval, carrying the health of this connection's jobs.
pub struct KeepAlive {
    pub(super) core: JobCore,
    pub(super) conn: ConnHandle<WorkerSide>,
    pub(super) siblings: Vec<JobHealth>,
    /// When the last acknowledgement arrived (epoch ms; 0: none yet).
    pub(super) last_ack_ms: Arc<AtomicU64>,
}

job_plumbing!(KeepAlive);

impl KeepAlive {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_busy() {
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let jobs = self.siblings.iter().map(JobHealth::snapshot).collect();
        let body = WorkerToMaster::KeepAlive(KeepAliveMsg { sent_at_ms: crate::clock::now_ms(), jobs });
        let (conn, last_ack) = (self.conn.clone(), self.last_ack_ms.clone());
        let fut = async move {
            match conn.call(body).await? {
                MasterToWorker::KeepAliveAck(_) => {
                    last_ack.store(crate::clock::now_ms(), Ordering::Relaxed);
                    Ok(())
                }
                other => Err(CallError::unexpected("keep_alive_ack", &other)),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok(()) => act.core.succeeded(),
            Err(e) => act.core.failed(ctx, e),
        }));
    }
}

impl Actor for KeepAlive {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.core.settings.keepalive_interval;
        schedule(&mut self.core, ctx, every, Self::tick);
    }
}

/// Most updates in one batch. An agent's first report carries its details (about a kilobyte
/// decoded): with 1,000 a batch, what a master holds of 50 workers' batches at once in a connection
/// burst stays near 50 MB (5,000 made it 250).
const MAX_AGENT_UPDATES: usize = 1000;

/// Sends the statuses of the agents reporting to this worker: what the hub holds unacknowledged
/// (at least an empty batch every `agent_info`, so the round is also a liveness check); on the
/// acknowledgement the hub forgets what was delivered. A new connection resends everything.
pub struct AgentInfo {
    pub(super) core: JobCore,
    pub(super) conn: ConnHandle<WorkerSide>,
    pub(super) hub: Option<Addr<AgentHub>>,
    pub(super) last_sent: Option<Instant>,
    pub(super) sent: u64,
}

job_plumbing!(AgentInfo);

impl AgentInfo {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_busy() {
            return;
        }
        let every = self.core.settings.jobs.agent_info;
        let due = self.last_sent.is_none_or(|t| t.elapsed() >= every);
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let (hub, conn) = (self.hub.clone(), self.conn.clone());
        let fut = async move {
            let updates = match &hub {
                Some(h) => h.send(TakeUpdates { max: MAX_AGENT_UPDATES }).await?,
                None => Vec::new(),
            };
            if updates.is_empty() && !due {
                return Ok(None);
            }
            let versions: Vec<(u32, u64)> = updates.iter().map(|(u, v)| (u.id, *v)).collect();
            let batch = AgentInfoBatch { updates: updates.into_iter().map(|(u, _)| u).collect() };
            match conn.call(WorkerToMaster::AgentInfo(batch)).await? {
                MasterToWorker::AgentInfoAck(ack) => {
                    // Delivered: stored, or refused for good (the agent no longer exists, or a newer
                    // report from another node won); either way not worth sending again.
                    let n = versions.len();
                    if let Some(h) = &hub {
                        h.send(Delivered(versions)).await?;
                    }
                    Ok(Some((n, ack)))
                }
                other => Err(ReportError::Call(CallError::unexpected("agent_info_ack", &other))),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|result: Result<_, ReportError>, act, ctx| match result {
            Ok(sent) => {
                if let Some((n, ack)) = sent {
                    act.last_sent = Some(Instant::now());
                    act.sent += n as u64;
                    act.core.health().set_figure("updates_sent", act.sent);
                    if ack.unknown > 0 {
                        debug!(node = act.core.node(); "master {}: {} of {n} status updates were for agents it does not know", act.core.peer, ack.unknown);
                    }
                }
                act.core.succeeded()
            }
            Err(e) => act.core.failed(ctx, e),
        }));
    }
}

impl Actor for AgentInfo {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped() {
            return;
        }
        if let Some(hub) = &self.hub {
            // A (re)start on this connection: the master may have missed anything, send it all.
            hub.do_send(ResendAll);
        }
        // Checked often, so a change goes out well within the interval.
        let every = crate::settings::JobIntervals::status_tick(self.core.settings.jobs.agent_info);
        schedule(&mut self.core, ctx, every, Self::tick);
    }
}
