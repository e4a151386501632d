//! The master's end of a worker connection: `KeepAlive`, `AgentInfo`, `AgentGroupsSend`, `Integrity`.

use super::local::{
    FilesChanged, GetIntegrity, GroupsChanged, LocalAgentGroups, LocalIntegrity, MasterServices, Subscribe,
    SubscribeFiles,
};
use super::{call, job_plumbing, Controls, Inbound, InjectFault, JobCore, JobHealth};
use crate::connection::{ConnectionActor, JobSet, MasterSide, Outgoing};
use crate::registry::{NewAgent, Registry};
use crate::settings::ChannelSettings;
use crate::store_thread::StoreHandle;
use actix::prelude::*;
use log::warn;
use std::sync::Arc;
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::{
    AdminResult, AgentGroupsUpdate, AgentInfoAck, EnrollResult, ErrorCode, ErrorReply, IntegrityChanged,
    IntegrityStatus, KeepAliveAck, MessageName, RequestId, SyncPlan,
};
use wazuh_cluster_protocol::{Envelope, Kind, MasterToWorker, WorkerToMaster};

type Conn = Addr<ConnectionActor<MasterSide>>;

fn reply(conn: &Conn, id: RequestId, body: MasterToWorker) {
    conn.do_send(Outgoing(Envelope::response(id, body)));
}

/// Answers a message that this job cannot serve; requests get an error reply, the rest is logged.
fn refuse(core: &JobCore, conn: &Conn, envelope: Envelope<WorkerToMaster>) {
    let what = format!("{} is not valid as {:?}", envelope.body.name(), envelope.kind);
    warn!(node = core.node(); "worker {}: {what}", core.peer);
    if let Kind::Request(id) = envelope.kind {
        reply(conn, id, MasterToWorker::Error(ErrorReply { code: ErrorCode::Invalid, message: what }));
    }
}

/// The job actors of one worker connection, master end.
pub struct MasterJobs {
    keepalive: Addr<KeepAlive>,
    agent_info: Addr<AgentInfo>,
    agent_groups: Addr<AgentGroupsSend>,
    integrity: Addr<Integrity>,
    registration: Addr<Registration>,
    controls: Controls,
}

impl MasterJobs {
    pub fn spawn(conn: Conn, settings: &Arc<ChannelSettings>, services: &MasterServices, peer: &str) -> Self {
        let core = |name: &'static str| {
            let health = JobHealth::new(name);
            (JobCore::new(name, settings.clone(), peer, health.clone()), health)
        };
        let (c1, h1) = core("KeepAlive");
        let (c2, h2) = core("AgentInfo");
        let (c3, h3) = core("AgentGroupsSend");
        let (c4, h4) = core("Integrity");
        let conn1 = conn.clone();
        let keepalive = Supervisor::start(move |_| KeepAlive { core: c1, conn: conn1 });
        let conn2 = conn.clone();
        let registry2 = services.registry.clone();
        let agent_info = Supervisor::start(move |_| AgentInfo {
            core: c2,
            conn: conn2,
            registry: registry2,
            stored: 0,
            unknown: 0,
            stale: 0,
        });
        let conn3 = conn.clone();
        let groups = services.local_agent_groups.clone();
        let registry = services.registry.clone();
        let agent_groups = Supervisor::start(move |_| AgentGroupsSend {
            core: c3,
            conn: conn3,
            local: groups,
            registry,
            acked_seq: None,
            latest: None,
            dirty: false,
            force_snapshot: false,
        });
        let (c5, h5) = core("Registration");
        let (conn5, registry) = (conn.clone(), services.registry.clone());
        let registration = Supervisor::start(move |_| Registration { core: c5, conn: conn5, registry });
        let local = services.local_integrity.clone();
        let conn4 = conn.clone();
        let integrity = Supervisor::start(move |_| Integrity {
            core: c4,
            conn: conn4,
            local,
            bytes_sent: 0,
            files_sent: 0,
            refused: 0,
        });
        let mut controls = Controls::default();
        controls.add("KeepAlive", &keepalive, h1);
        controls.add("AgentInfo", &agent_info, h2);
        controls.add("AgentGroupsSend", &agent_groups, h3);
        controls.add("Integrity", &integrity, h4);
        controls.add("Registration", &registration, h5);
        MasterJobs { keepalive, agent_info, agent_groups, integrity, registration, controls }
    }
}

impl JobSet<MasterSide> for MasterJobs {
    fn route(&self, envelope: Envelope<WorkerToMaster>) {
        match envelope.body {
            WorkerToMaster::KeepAlive(_) => self.keepalive.do_send(Inbound(envelope)),
            WorkerToMaster::AgentInfo(_) => self.agent_info.do_send(Inbound(envelope)),
            WorkerToMaster::AgentGroupsAck(_) => self.agent_groups.do_send(Inbound(envelope)),
            WorkerToMaster::IntegrityCheck(_) | WorkerToMaster::SyncManifest(_) | WorkerToMaster::FetchFiles(_) => {
                self.integrity.do_send(Inbound(envelope))
            }
            WorkerToMaster::Enroll(_) | WorkerToMaster::EnrollResolve(_) | WorkerToMaster::Admin(_) => {
                self.registration.do_send(Inbound(envelope))
            }
            // Handled by the connection itself.
            WorkerToMaster::Goodbye(_) => {}
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

/// Answers the worker's keep-alives.
pub struct KeepAlive {
    core: JobCore,
    conn: Conn,
}

job_plumbing!(KeepAlive);

impl Actor for KeepAlive {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.core.started();
    }
}

impl Handler<Inbound<WorkerToMaster>> for KeepAlive {
    type Result = ();

    fn handle(&mut self, Inbound(envelope): Inbound<WorkerToMaster>, ctx: &mut Context<Self>) {
        match (envelope.kind, &envelope.body) {
            (Kind::Request(id), WorkerToMaster::KeepAlive(ka)) => {
                if let Err(e) = self.core.begin() {
                    return self.core.failed(ctx, e);
                }
                let ack = KeepAliveAck { echo_sent_at_ms: ka.sent_at_ms, master_time_ms: crate::now_ms() };
                reply(&self.conn, id, MasterToWorker::KeepAliveAck(ack));
                self.core.succeeded();
            }
            _ => refuse(&self.core, &self.conn, envelope),
        }
    }
}

/// Receives the statuses of the agents reporting to the worker.
pub struct AgentInfo {
    core: JobCore,
    conn: Conn,
    registry: StoreHandle<Registry>,
    /// Totals for health.
    stored: u64,
    unknown: u64,
    stale: u64,
}

job_plumbing!(AgentInfo);

impl Actor for AgentInfo {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.core.started();
    }
}

impl Handler<Inbound<WorkerToMaster>> for AgentInfo {
    type Result = ();

    fn handle(&mut self, Inbound(envelope): Inbound<WorkerToMaster>, ctx: &mut Context<Self>) {
        match (envelope.kind, &envelope.body) {
            (Kind::Request(id), WorkerToMaster::AgentInfo(_)) => {
                if let Err(e) = self.core.begin() {
                    return self.core.failed(ctx, e);
                }
                let WorkerToMaster::AgentInfo(batch) = envelope.body else { return };
                let (registry, conn, peer) = (self.registry.clone(), self.conn.clone(), self.core.peer.clone());
                let fut = async move {
                    // Stored only for agents that exist; the acknowledgement tells the worker it can
                    // forget these changes.
                    let n = batch.updates.len();
                    let counts = if n == 0 {
                        (0, 0, 0)
                    } else {
                        registry.run(move |r| r.store_statuses(&peer, &batch.updates)).await?
                    };
                    let (stored, unknown, _) = counts;
                    reply(&conn, id, MasterToWorker::AgentInfoAck(AgentInfoAck { stored, unknown }));
                    Ok::<_, String>(counts)
                };
                ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
                    Ok((stored, unknown, stale)) => {
                        act.stored += stored as u64;
                        act.unknown += unknown as u64;
                        act.stale += stale as u64;
                        if unknown > 0 {
                            warn!(node = act.core.node(); "worker {}: {unknown} status updates for agents that do not exist (deleted?) were not stored", act.core.peer);
                        }
                        act.core.set_details(vec![
                            ("stored".into(), act.stored.to_string()),
                            ("unknown".into(), act.unknown.to_string()),
                            ("stale".into(), act.stale.to_string()),
                        ]);
                        act.core.succeeded();
                    }
                    Err(e) => act.core.failed(ctx, format!("cannot store agent statuses: {e}")),
                }));
            }
            _ => refuse(&self.core, &self.conn, envelope),
        }
    }
}

/// Replicates the agent table (keys and groups) to the worker: waits for the worker's position
/// (sent on connect), then sends the changes after it (or a snapshot when the log no longer holds
/// them, when the position is in the future, or when the worker's hash disagrees), and again after
/// every change `LocalAgentGroups` announces.
pub struct AgentGroupsSend {
    core: JobCore,
    conn: Conn,
    local: Addr<LocalAgentGroups>,
    registry: StoreHandle<Registry>,
    /// The worker's confirmed position; `None` until it tells us.
    acked_seq: Option<u64>,
    latest: Option<GroupsChanged>,
    /// A change arrived while a push was in flight.
    dirty: bool,
    /// The next push must be a snapshot.
    force_snapshot: bool,
}

job_plumbing!(AgentGroupsSend);

impl AgentGroupsSend {
    fn push(&mut self, ctx: &mut Context<Self>) {
        let Some(acked) = self.acked_seq else { return };
        if self.core.is_busy() {
            self.dirty = true;
            return;
        }
        if !self.force_snapshot && self.latest.as_ref().is_some_and(|l| l.seq == acked) {
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        self.dirty = false;
        let force = std::mem::take(&mut self.force_snapshot);
        let (registry, conn) = (self.registry.clone(), self.conn.clone());
        let (node, peer) = (self.core.node().to_string(), self.core.peer.clone());
        let fut = async move {
            let (snapshot, changes, seq, hash) = registry
                .run(move |r| {
                    let (snapshot, changes) = r.changes_since(if force { u64::MAX } else { acked })?;
                    Ok((snapshot, changes, r.seq(), r.hash()))
                })
                .await?;
            if acked > seq {
                warn!(node = node.as_str(); "worker {peer} claims agent table position {acked} beyond the master's {seq}; sending a snapshot");
            }
            let update =
                AgentGroupsUpdate { from_seq: acked, to_seq: seq, snapshot, changes, global_hash: hash.clone() };
            let answer = call(conn, MasterToWorker::AgentGroups(update)).await?;
            Ok::<_, String>((answer, seq, hash, snapshot))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| match result {
            Ok((WorkerToMaster::AgentGroupsAck(ack), seq, hash, snapshot)) => {
                if ack.seq == seq && ack.global_hash == hash {
                    act.acked_seq = Some(seq);
                } else {
                    warn!(node = act.core.node(); "worker {} disagrees on the agent table after seq {seq} (it has seq {} hash {}, the master {}){}; sending a snapshot",
                        act.core.peer, ack.seq, ack.global_hash, hash, if snapshot { " even after a snapshot" } else { "" });
                    act.acked_seq = Some(ack.seq);
                    act.force_snapshot = true;
                    act.dirty = true;
                }
                act.core.succeeded();
                if act.dirty {
                    act.push(ctx);
                }
            }
            Ok((other, ..)) => act.core.failed(ctx, format!("unexpected answer {}", other.name())),
            Err(e) => act.core.failed(ctx, e),
        }));
    }
}

impl Actor for AgentGroupsSend {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped_for_good() {
            return;
        }
        self.core.started();
        let delay = self.core.start_delay();
        ctx.run_later(delay, |act, ctx| {
            act.local.do_send(Subscribe(ctx.address().recipient()));
            // After a restart, resend what the worker may have missed.
            act.push(ctx);
        });
    }
}

impl Handler<GroupsChanged> for AgentGroupsSend {
    type Result = ();

    fn handle(&mut self, msg: GroupsChanged, ctx: &mut Context<Self>) {
        self.latest = Some(msg);
        self.push(ctx);
    }
}

impl Handler<Inbound<WorkerToMaster>> for AgentGroupsSend {
    type Result = ();

    fn handle(&mut self, Inbound(envelope): Inbound<WorkerToMaster>, ctx: &mut Context<Self>) {
        match (envelope.kind, envelope.body) {
            // The worker's position, sent when it connects: "everything after N".
            (Kind::Notify, WorkerToMaster::AgentGroupsAck(position)) => {
                // A position beyond the master's is answered with a snapshot (see `changes_since`).
                self.acked_seq = Some(position.seq);
                self.push(ctx);
            }
            (kind, body) => refuse(&self.core, &self.conn, Envelope { kind, body }),
        }
    }
}

/// Serves what a worker forwards to the master: enrollments, their outcomes, and agent/group changes
/// made through the worker's API.
pub struct Registration {
    core: JobCore,
    conn: Conn,
    registry: StoreHandle<Registry>,
}

job_plumbing!(Registration);

impl Actor for Registration {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.core.started();
    }
}

impl Handler<Inbound<WorkerToMaster>> for Registration {
    type Result = ();

    fn handle(&mut self, Inbound(envelope): Inbound<WorkerToMaster>, ctx: &mut Context<Self>) {
        let (id, body) = match envelope.kind {
            Kind::Request(id) => (id, envelope.body),
            kind => return refuse(&self.core, &self.conn, Envelope { kind, body: envelope.body }),
        };
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let (registry, conn, node) = (self.registry.clone(), self.conn.clone(), self.core.peer.clone());
        // Each request runs on its own: enrollments from one worker are handled concurrently, and
        // the store thread commits them in groups.
        let fut = async move {
            match body {
                WorkerToMaster::Enroll(f) => {
                    let token = f.token.clone();
                    let name = f.name.clone();
                    let agent = NewAgent::from_forward(f, node, true);
                    let outcome = match registry.run(move |r| r.enroll(&agent)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(EnrollError::Internal(name)),
                    };
                    reply(&conn, id, MasterToWorker::EnrollResult(EnrollResult { token, outcome }));
                    Ok(())
                }
                WorkerToMaster::EnrollResolve(r) => {
                    let token = r.token.clone();
                    registry.run(move |reg| reg.resolve(&token, r.delivered)).await?;
                    reply(&conn, id, MasterToWorker::EnrollResolved(r));
                    Ok(())
                }
                WorkerToMaster::Admin(request) => {
                    let outcome = registry.run(move |r| r.admin(&request)).await?;
                    reply(&conn, id, MasterToWorker::AdminResult(AdminResult { outcome }));
                    Ok(())
                }
                other => Err(format!("{} is not a registration request", other.name())),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|result: Result<(), String>, act, ctx| match result {
            Ok(()) => act.core.succeeded(),
            Err(e) => act.core.failed(ctx, e),
        }));
    }
}

/// Serves the worker's file synchronization from `LocalIntegrity`'s manifest: answers digest checks,
/// computes what the worker must fetch and delete, serves file contents (only files of the manifest,
/// only through confined paths), and tells the worker at once when the master's files change.
pub struct Integrity {
    core: JobCore,
    conn: Conn,
    local: Addr<LocalIntegrity>,
    bytes_sent: u64,
    files_sent: u64,
    refused: u64,
}

job_plumbing!(Integrity);

impl Actor for Integrity {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.core.started();
        if !self.core.is_stopped_for_good() {
            self.local.do_send(SubscribeFiles(ctx.address().recipient()));
        }
    }
}

impl Handler<FilesChanged> for Integrity {
    type Result = ();

    fn handle(&mut self, msg: FilesChanged, _: &mut Context<Self>) {
        let (delta, changed, removed) = match msg.delta {
            Some(d) => (true, d.changed.clone(), d.removed.clone()),
            None => (false, Vec::new(), Vec::new()),
        };
        let body =
            MasterToWorker::IntegrityChanged(IntegrityChanged { master_digest: msg.digest, delta, changed, removed });
        self.conn.do_send(Outgoing(Envelope::notify(body)));
    }
}

fn unavailable(conn: &Conn, id: RequestId) {
    let message = "the master's manifest is not computed yet".to_string();
    reply(conn, id, MasterToWorker::Error(ErrorReply { code: ErrorCode::Unavailable, message }));
}

impl Handler<Inbound<WorkerToMaster>> for Integrity {
    type Result = ();

    fn handle(&mut self, Inbound(envelope): Inbound<WorkerToMaster>, ctx: &mut Context<Self>) {
        let Kind::Request(id) = envelope.kind else {
            return refuse(&self.core, &self.conn, envelope);
        };
        let body = envelope.body;
        if !matches!(
            body,
            WorkerToMaster::IntegrityCheck(_) | WorkerToMaster::SyncManifest(_) | WorkerToMaster::FetchFiles(_)
        ) {
            return refuse(&self.core, &self.conn, Envelope { kind: Kind::Request(id), body });
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let (local, conn, data_dir) = (self.local.clone(), self.conn.clone(), self.core.settings.data_dir.clone());
        let max_frame = self.core.settings.max_frame;
        let fut = async move {
            let Some(summary) =
                local.send(GetIntegrity).await.map_err(|e| format!("LocalIntegrity did not answer: {e}"))?
            else {
                unavailable(&conn, id);
                return Ok((0, 0, 0));
            };
            match body {
                WorkerToMaster::IntegrityCheck(check) => {
                    let in_sync = summary.digest == check.manifest_digest;
                    let status = IntegrityStatus { master_digest: summary.digest, files: summary.files, in_sync };
                    reply(&conn, id, MasterToWorker::IntegrityStatus(status));
                    Ok((0, 0, 0))
                }
                WorkerToMaster::SyncManifest(theirs) => {
                    let (fetch, delete, _, _) = crate::files::plan(&summary.manifest, &theirs.files);
                    reply(
                        &conn,
                        id,
                        MasterToWorker::SyncPlan(SyncPlan { master_digest: summary.digest, fetch, delete }),
                    );
                    Ok((0, 0, 0))
                }
                WorkerToMaster::FetchFiles(req) => {
                    // Answers stay well inside one frame.
                    let budget = (req.max_bytes as usize).clamp(1, max_frame / 2);
                    let (manifest, parts) = (summary.manifest.clone(), summary.parts.clone());
                    let batch = actix_rt::task::spawn_blocking(move || {
                        crate::files::read_batch(&data_dir, &manifest, req.items, budget, Some(&parts))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    let bytes: u64 = batch.parts.iter().map(|p| p.raw_len).sum();
                    let (files, refused) = (batch.parts.len() as u64, batch.refused.len() as u64);
                    reply(&conn, id, MasterToWorker::FileBatch(batch));
                    Ok((bytes, files, refused))
                }
                _ => Ok((0, 0, 0)),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|result: Result<(u64, u64, u64), String>, act, ctx| match result {
            Ok((bytes, files, refused)) => {
                act.bytes_sent += bytes;
                act.files_sent += files;
                act.refused += refused;
                if refused > 0 {
                    warn!(node = act.core.node(); "worker {} asked for {refused} files that were not served (gone, changed or refused)", act.core.peer);
                }
                act.core.set_details(vec![
                    ("bytes_sent".into(), act.bytes_sent.to_string()),
                    ("file_parts_sent".into(), act.files_sent.to_string()),
                    ("refused".into(), act.refused.to_string()),
                ]);
                act.core.succeeded();
            }
            Err(e) => act.core.failed(ctx, e),
        }));
    }
}
