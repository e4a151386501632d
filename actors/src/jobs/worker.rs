//! A worker's end of its connection: `KeepAlive`, `AgentInfo`, `AgentGroupsSend`, `Integrity`.

use super::{call, job_plumbing, schedule, Controls, Inbound, InjectFault, JobCore, JobHealth};
use crate::connection::{ConnectionActor, JobSet, Outgoing, WorkerSide};
use crate::manifest;
use crate::registry::Replica;
use crate::settings::ChannelSettings;
use crate::store_thread::StoreHandle;
use crate::worker::WorkerServices;
use actix::prelude::*;
use log::{debug, info, warn};
use std::sync::Arc;
use wazuh_cluster_protocol::message::{
    AgentGroupsAck, AgentInfoBatch, ErrorCode, IntegrityCheck, KeepAlive as KeepAliveMsg, MessageName,
};
use wazuh_cluster_protocol::{Envelope, Kind, MasterToWorker, WorkerToMaster};

type Conn = Addr<ConnectionActor<WorkerSide>>;

/// The job actors of the worker's connection.
pub struct WorkerJobs {
    /// The only job that receives messages the master starts; the others start their own rounds.
    agent_groups: Addr<AgentGroupsSend>,
    controls: Controls,
}

impl WorkerJobs {
    pub fn spawn(conn: Conn, settings: &Arc<ChannelSettings>, services: &WorkerServices, peer: &str) -> Self {
        let core = |name: &'static str| {
            let health = JobHealth::new(name);
            (JobCore::new(name, settings.clone(), peer, health.clone()), health)
        };
        let (c1, h1) = core("KeepAlive");
        let (c2, h2) = core("AgentInfo");
        let (c3, h3) = core("AgentGroupsSend");
        let (c4, h4) = core("Integrity");
        let (conn1, siblings) = (conn.clone(), vec![h1.clone(), h2.clone(), h3.clone(), h4.clone()]);
        let keepalive = Supervisor::start(move |_| KeepAlive { core: c1, conn: conn1, siblings });
        let conn2 = conn.clone();
        let agent_info = Supervisor::start(move |_| AgentInfo { core: c2, conn: conn2 });
        let conn3 = conn.clone();
        let replica = services.replica.clone();
        let agent_groups = Supervisor::start(move |_| AgentGroupsSend { core: c3, conn: conn3, replica });
        let integrity = Supervisor::start(move |_| Integrity { core: c4, conn, in_sync: None });
        let mut controls = Controls::default();
        controls.add("KeepAlive", &keepalive, h1);
        controls.add("AgentInfo", &agent_info, h2);
        controls.add("AgentGroupsSend", &agent_groups, h3);
        controls.add("Integrity", &integrity, h4);
        WorkerJobs { agent_groups, controls }
    }
}

impl JobSet<WorkerSide> for WorkerJobs {
    fn route(&self, envelope: Envelope<MasterToWorker>) {
        match envelope.body {
            MasterToWorker::AgentGroups(_) => self.agent_groups.do_send(Inbound(envelope)),
            MasterToWorker::Error(ref err) => {
                warn!("master sent an unsolicited error ({:?}): {}", err.code, err.message);
            }
            // Responses are matched by the connection; a stray one is not worth a job.
            _ => {}
        }
    }

    fn healths(&self) -> Vec<JobHealth> {
        self.controls.healths()
    }

    fn inject(&self, job: &str, fault: InjectFault) -> bool {
        self.controls.inject(job, fault)
    }

    fn stop(&self) {
        self.controls.stop();
    }
}

/// Runs one request/response round of a periodic job: `begin`, call, check the answer, record.
fn round<A>(
    act: &mut A,
    core: fn(&mut A) -> &mut JobCore,
    ctx: &mut Context<A>,
    conn: Conn,
    body: WorkerToMaster,
    on_answer: fn(&mut A, MasterToWorker) -> Result<(), String>,
) where
    A: Actor<Context = Context<A>>,
{
    if core(act).is_busy() {
        return;
    }
    if let Err(e) = core(act).begin() {
        return core(act).failed(ctx, e);
    }
    ctx.spawn(call(conn, body).into_actor(act).map(move |result, act, ctx| {
        match result.and_then(|answer| on_answer(act, answer)) {
            Ok(()) => core(act).succeeded(),
            Err(e) => core(act).failed(ctx, e),
        }
    }));
}

fn unexpected(answer: MasterToWorker) -> Result<(), String> {
    match answer {
        MasterToWorker::Error(err) => Err(format!("the master answered an error ({:?}): {}", err.code, err.message)),
        other => Err(format!("unexpected answer {}", other.name())),
    }
}

/// Sends a keep-alive every interval, carrying the health of this connection's jobs.
pub struct KeepAlive {
    core: JobCore,
    conn: Conn,
    siblings: Vec<JobHealth>,
}

job_plumbing!(KeepAlive);

impl KeepAlive {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let jobs = self.siblings.iter().map(JobHealth::snapshot).collect();
        let body = WorkerToMaster::KeepAlive(KeepAliveMsg { sent_at_ms: crate::now_ms(), jobs });
        round(
            self,
            |a| &mut a.core,
            ctx,
            self.conn.clone(),
            body,
            |_, answer| match answer {
                MasterToWorker::KeepAliveAck(_) => Ok(()),
                other => unexpected(other),
            },
        );
    }
}

impl Actor for KeepAlive {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.core.is_stopped_for_good() {
            let every = self.core.settings.keepalive_interval;
            schedule(&mut self.core, ctx, every, Self::tick);
        }
    }
}

/// Sends the statuses of the agents reporting to this worker. (Agent connections come later; until
/// then each round is an empty batch and its acknowledgement.)
pub struct AgentInfo {
    core: JobCore,
    conn: Conn,
}

job_plumbing!(AgentInfo);

impl AgentInfo {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let body = WorkerToMaster::AgentInfo(AgentInfoBatch::default());
        round(
            self,
            |a| &mut a.core,
            ctx,
            self.conn.clone(),
            body,
            |_, answer| match answer {
                MasterToWorker::AgentInfoAck(_) => Ok(()),
                other => unexpected(other),
            },
        );
    }
}

impl Actor for AgentInfo {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.core.is_stopped_for_good() {
            let every = self.core.settings.jobs.agent_info;
            schedule(&mut self.core, ctx, every, Self::tick);
        }
    }
}

/// Keeps the worker's agent replica (keys and groups) in step with the master: tells the master its
/// position on connect, applies each update the master pushes in one transaction, and acknowledges
/// the new position and hash (on a gap it acknowledges its old one and the master sends a snapshot).
pub struct AgentGroupsSend {
    core: JobCore,
    conn: Conn,
    replica: StoreHandle<Replica>,
}

job_plumbing!(AgentGroupsSend);

impl Actor for AgentGroupsSend {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped_for_good() {
            return;
        }
        self.core.started();
        let (replica, conn) = (self.replica.clone(), self.conn.clone());
        let fut = async move {
            let (seq, global_hash) = replica.run(|r| Ok((r.seq(), r.hash()))).await?;
            conn.do_send(Outgoing(Envelope::notify(WorkerToMaster::AgentGroupsAck(AgentGroupsAck {
                seq,
                global_hash,
            }))));
            Ok::<_, String>(())
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            if let Err(e) = result {
                act.core.failed(ctx, format!("cannot read the replica: {e}"));
            }
        }));
    }
}

impl Handler<Inbound<MasterToWorker>> for AgentGroupsSend {
    type Result = ();

    fn handle(&mut self, Inbound(envelope): Inbound<MasterToWorker>, ctx: &mut Context<Self>) {
        let (Kind::Request(id), MasterToWorker::AgentGroups(update)) = (envelope.kind, envelope.body) else {
            return;
        };
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let (replica, conn) = (self.replica.clone(), self.conn.clone());
        let fut = async move {
            replica
                .run(move |r| {
                    r.apply(update.from_seq, update.to_seq, update.snapshot, &update.changes)?;
                    Ok((r.seq(), r.hash(), update.changes.len()))
                })
                .await
                .map(|(seq, global_hash, n)| {
                    conn.do_send(Outgoing(Envelope::response(
                        id,
                        WorkerToMaster::AgentGroupsAck(AgentGroupsAck { seq, global_hash }),
                    )));
                    n
                })
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok(n) => {
                if n > 0 {
                    debug!(node = act.core.node(); "applied {n} agent changes from {}", act.core.peer);
                }
                act.core.succeeded()
            }
            Err(e) => act.core.failed(ctx, format!("cannot apply the master's agent changes: {e}")),
        }));
    }
}

/// Compares this worker's files with the master's manifest every interval.
pub struct Integrity {
    core: JobCore,
    conn: Conn,
    in_sync: Option<bool>,
}

job_plumbing!(Integrity);

impl Integrity {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_busy() {
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let dir = self.core.settings.data_dir.clone();
        let conn = self.conn.clone();
        let fut = async move {
            let (manifest, _errors) =
                actix_rt::task::spawn_blocking(move || manifest::scan(&dir)).await.map_err(|e| e.to_string())?;
            let check = IntegrityCheck { manifest_digest: manifest.digest(), files: manifest.files.len() as u64 };
            call(conn, WorkerToMaster::IntegrityCheck(check)).await
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok(MasterToWorker::IntegrityStatus(status)) => {
                if act.in_sync != Some(status.in_sync) {
                    if status.in_sync {
                        info!(node = act.core.node(); "files in sync with master {} ({} files)", act.core.peer, status.files);
                    } else {
                        info!(node = act.core.node(); "files differ from master {} (its digest {}, {} files)", act.core.peer, status.master_digest, status.files);
                    }
                    act.in_sync = Some(status.in_sync);
                }
                act.core.succeeded();
            }
            // The master has not scanned yet: nothing to compare, try next round.
            Ok(MasterToWorker::Error(err)) if err.code == ErrorCode::Unavailable => act.core.succeeded(),
            Ok(other) => {
                let e = unexpected(other).err().unwrap_or_default();
                act.core.failed(ctx, e)
            }
            Err(e) => act.core.failed(ctx, e),
        }));
    }
}

impl Actor for Integrity {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.core.is_stopped_for_good() {
            let every = self.core.settings.jobs.integrity;
            schedule(&mut self.core, ctx, every, Self::tick);
        }
    }
}
