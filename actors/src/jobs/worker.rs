//! A worker's end of its connection: `KeepAlive`, `AgentInfo`, `AgentGroupsSend`, `Integrity`.

use super::{call, job_plumbing, schedule, Controls, Inbound, InjectFault, JobCore, JobHealth};
use crate::agents::hub::{self, AgentHub, Delivered, ResendAll, SharedChanged, TakeUpdates};
use crate::connection::{ConnectionActor, JobSet, Outgoing, WorkerSide};
use crate::files::{self, Staging};
use crate::manifest::{self, Manifest};
use crate::registry::Replica;
use crate::settings::ChannelSettings;
use crate::store_thread::StoreHandle;
use crate::worker::WorkerServices;
use actix::prelude::*;
use log::{debug, info, warn};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wazuh_cluster_protocol::message::{
    AgentGroupsAck, AgentInfoBatch, ErrorCode, FetchFiles, FetchItem, IntegrityChanged, IntegrityCheck,
    KeepAlive as KeepAliveMsg, MessageName, SyncManifest,
};
use wazuh_cluster_protocol::sync::{self, FileMeta};
use wazuh_cluster_protocol::{Envelope, Kind, MasterToWorker, WorkerToMaster};

type Conn = Addr<ConnectionActor<WorkerSide>>;

/// The job actors of the worker's connection.
pub struct WorkerJobs {
    /// The jobs that receive messages the master starts; the others start their own rounds.
    agent_groups: Addr<AgentGroupsSend>,
    integrity: Addr<Integrity>,
    hub: Option<Addr<AgentHub>>,
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
        let hub = services.agents.clone();
        let agent_info = Supervisor::start(move |_| AgentInfo { core: c2, conn: conn2, hub, last_sent: None });
        let conn3 = conn.clone();
        let replica = services.replica.clone();
        let agent_groups = Supervisor::start(move |_| AgentGroupsSend { core: c3, conn: conn3, replica });
        let hub = services.agents.clone();
        let integrity = Supervisor::start(move |_| Integrity {
            core: c4,
            conn,
            hub,
            manifest: None,
            in_sync: None,
            again: false,
            totals: SyncTotals::default(),
        });
        let mut controls = Controls::default();
        controls.add("KeepAlive", &keepalive, h1);
        controls.add("AgentInfo", &agent_info, h2);
        controls.add("AgentGroupsSend", &agent_groups, h3);
        controls.add("Integrity", &integrity, h4);
        WorkerJobs { agent_groups, integrity, hub: services.agents.clone(), controls }
    }
}

impl JobSet<WorkerSide> for WorkerJobs {
    fn route(&self, envelope: Envelope<MasterToWorker>) {
        match envelope.body {
            MasterToWorker::AgentGroups(_) => self.agent_groups.do_send(Inbound(envelope)),
            MasterToWorker::IntegrityChanged(_) => self.integrity.do_send(Inbound(envelope)),
            MasterToWorker::ForceReconnect(ref f) => {
                if let Some(hub) = &self.hub {
                    hub.do_send(hub::ForceReconnect(f.ids.clone()));
                }
            }
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
    hub: Option<Addr<AgentHub>>,
    last_sent: Option<std::time::Instant>,
}

job_plumbing!(AgentInfo);

/// Most updates in one batch.
const MAX_AGENT_UPDATES: usize = 5000;

impl AgentInfo {
    /// Sends the changes the master has not acknowledged (at least an empty batch every interval, so
    /// the round is also a liveness check); an acknowledgement marks them delivered.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_busy() {
            return;
        }
        let every = self.core.settings.jobs.agent_info;
        let due = self.last_sent.is_none_or(|t| t.elapsed() >= every);
        let (hub, conn) = (self.hub.clone(), self.conn.clone());
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let fut = async move {
            let updates = match &hub {
                Some(h) => h.send(TakeUpdates { max: MAX_AGENT_UPDATES }).await.map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            if updates.is_empty() && !due {
                return Ok(None);
            }
            let versions: Vec<(u32, u64)> = updates.iter().map(|(u, v)| (u.id, *v)).collect();
            let batch = AgentInfoBatch { updates: updates.into_iter().map(|(u, _)| u).collect() };
            match call(conn, WorkerToMaster::AgentInfo(batch)).await? {
                MasterToWorker::AgentInfoAck(ack) => {
                    // Delivered: stored, or refused for good (the agent no longer exists, or a newer
                    // report from another node won); either way not worth sending again.
                    if let Some(h) = &hub {
                        h.do_send(Delivered(versions.clone()));
                    }
                    Ok(Some((versions.len(), ack)))
                }
                other => unexpected(other).map(|_| None),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|result: Result<_, String>, act, ctx| match result {
            Ok(sent) => {
                if let Some((n, ack)) = sent {
                    act.last_sent = Some(std::time::Instant::now());
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
        if !self.core.is_stopped_for_good() {
            if let Some(hub) = &self.hub {
                // A new connection: the master may have missed anything, send it all again.
                hub.do_send(ResendAll);
            }
            // Checked often, so a change goes out well within the interval.
            let every = crate::settings::JobIntervals::status_tick(self.core.settings.jobs.agent_info);
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

/// Keeps this worker's sync roots identical to the master's. Each round (every `integrity` interval,
/// and at once when the master announces a change): scan the local files (incrementally), compare
/// digests; when they differ, send the whole manifest, fetch the missing and changed files in
/// batches into the staging area (resuming partial files), check each (size, MD5), then rename them
/// into place and delete the extras, all through confined paths. The master is the source of truth:
/// a file changed, added or removed here comes back to the master's version at the next round.
pub struct Integrity {
    core: JobCore,
    conn: Conn,
    /// Told which files changed, for merged.mg pushes.
    hub: Option<Addr<AgentHub>>,
    manifest: Option<Arc<Manifest>>,
    in_sync: Option<bool>,
    /// A change was announced while a round was running: run again after it.
    again: bool,
    totals: SyncTotals,
}

#[derive(Debug, Default, Clone)]
struct SyncTotals {
    last_check_ms: u64,
    last_sync_start_ms: u64,
    last_sync_end_ms: u64,
    last_sync_ms: u64,
    missing: usize,
    changed: usize,
    extra: usize,
    bytes: u64,
    errors: usize,
}

job_plumbing!(Integrity);

/// What one round did.
#[derive(Debug, Default)]
struct RoundReport {
    in_sync: bool,
    synced: bool,
    missing: usize,
    changed: usize,
    extra: usize,
    written: usize,
    deleted: usize,
    bytes: u64,
    errors: Vec<String>,
    notes: Vec<String>,
    /// Paths written or deleted.
    touched: Vec<String>,
    started_ms: u64,
    took_ms: u64,
    /// Milliseconds spent in each phase, for the debug log.
    phases: Vec<(&'static str, u64)>,
}

/// Fetches `fetch` in batches (resuming partial files), checks and stages them, makes them durable,
/// then renames them into place and deletes `delete`; records it all in `report` and `manifest`.
async fn fetch_and_apply(
    conn: &Conn,
    data_dir: &Path,
    fetch: Vec<FileMeta>,
    delete: Vec<String>,
    max_frame: usize,
    manifest: &mut Manifest,
    report: &mut RoundReport,
) -> Result<(), String> {
    // Roots this worker holds nothing under are staged as trees and moved in whole.
    let fresh: Vec<&'static str> = sync::SYNC_ROOTS
        .into_iter()
        .filter(|root| {
            fetch.iter().any(|m| sync::root_of(&m.path) == Some(*root))
                && !manifest.files.keys().any(|p| sync::root_of(p) == Some(*root))
        })
        .collect();
    let staging =
        Arc::new(Staging::open_with_fresh(data_dir, &fresh).map_err(|e| format!("cannot open the staging area: {e}"))?);
    // Up to `DEPTH` answers in flight, each up to an eighth of a frame (half a frame in all): the
    // master reads the next batches while this worker writes the previous one, and small answers
    // keep both sides busy (measured: 2 x a quarter left this worker waiting ~1 s of a 3 s sync).
    const DEPTH: usize = 4;
    let budget = (max_frame / 8) as u64;
    let mut queue: std::collections::VecDeque<FileMeta> = fetch.into_iter().collect();
    let mut staged = Vec::new();
    let mut waited_ms = 0u64;
    type Asked = std::collections::HashMap<String, FileMeta>;
    let mut inflight: std::collections::VecDeque<(actix_rt::task::JoinHandle<Result<MasterToWorker, String>>, Asked)> =
        Default::default();
    let mut writing: Option<actix_rt::task::JoinHandle<Written>> = None;
    loop {
        while inflight.len() < DEPTH && !queue.is_empty() {
            // Ask for as many files as fit one answer; resume each from what is already staged.
            let mut items = Vec::new();
            let mut asked = 0u64;
            let mut metas = Asked::new();
            while let Some(meta) = queue.pop_front() {
                let have = staging.have(&meta);
                asked += meta.size - have + 64;
                items.push(FetchItem { path: meta.path.clone(), offset: have });
                metas.insert(meta.path.clone(), meta);
                if asked >= budget {
                    break;
                }
            }
            let request = call(conn.clone(), WorkerToMaster::FetchFiles(FetchFiles { items, max_bytes: budget }));
            inflight.push_back((actix_rt::spawn(request), metas));
        }
        let Some((answer, mut metas)) = inflight.pop_front() else {
            // Parts of large files come back to the queue when their batch is written.
            match writing.take() {
                Some(job) => {
                    absorb(job, report, &mut staged, &mut queue).await?;
                    continue;
                }
                None => break,
            }
        };
        let asked_at = std::time::Instant::now();
        let batch = match answer.await.map_err(|e| e.to_string())?? {
            MasterToWorker::FileBatch(batch) => batch,
            other => return unexpected(other),
        };
        waited_ms += asked_at.elapsed().as_millis() as u64;
        for (path, why) in batch.refused {
            metas.remove(&path);
            report.errors.push(format!("{path}: not served by the master: {why}"));
        }
        if let Some(job) = writing.take() {
            absorb(job, report, &mut staged, &mut queue).await?;
        }
        let stage = staging.clone();
        let parts = batch.parts;
        writing = Some(actix_rt::task::spawn_blocking(move || {
            let (mut done, mut pending, mut errors, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
            let mut work = Vec::with_capacity(parts.len());
            for part in parts {
                match metas.remove(&part.path) {
                    Some(meta) => work.push((meta, part)),
                    None => errors.push(format!("{}: a part nobody asked for", part.path)),
                }
            }
            // Files are independent: write them on every core (the disk's latency, not the CPU, is
            // what a batch of small files waits on).
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
            let per = work.len().div_ceil(threads).max(1);
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = work
                    .chunks(per)
                    .map(|chunk| {
                        let stage = &stage;
                        s.spawn(move || {
                            chunk
                                .iter()
                                .map(|(meta, part)| (meta.clone(), part.raw_len, stage.write(meta, part)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
            });
            for (meta, raw_len, result) in results {
                bytes += raw_len;
                match result {
                    Ok(Some(file)) => done.push(file),
                    Ok(None) => pending.push(meta),
                    Err(e) => errors.push(format!("{}: {e}", meta.path)),
                }
            }
            // Asked for but not in this answer (the budget ran out): ask again.
            pending.extend(metas.into_values());
            (done, pending, errors, bytes)
        }));
    }
    report.phases.push(("waiting for the master", waited_ms));
    let dir = data_dir.to_path_buf();
    let applied = actix_rt::task::spawn_blocking(move || {
        // Staged files become durable before any of them replaces a live one.
        let t = std::time::Instant::now();
        let synced = staging.sync(&staged);
        let sync_ms = t.elapsed().as_millis() as u64;
        let t = std::time::Instant::now();
        synced.map(|()| (staging.apply(&dir, staged, &delete), sync_ms, t.elapsed().as_millis() as u64))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot make the staged files durable: {e}"))?;
    let (applied, sync_ms, apply_ms) = applied;
    report.phases.push(("syncfs", sync_ms));
    report.phases.push(("renames", apply_ms));
    report.written += applied.written.len();
    report.deleted += applied.deleted.len();
    report.errors.extend(applied.refused.into_iter().map(|(p, e)| format!("{p}: refused: {e}")));
    report.notes.extend(applied.notes);
    report.touched.extend(applied.written.iter().map(|m| m.path.clone()));
    report.touched.extend(applied.deleted.iter().cloned());
    manifest::record_applied(data_dir, manifest, &applied.written, &applied.deleted);
    Ok(())
}

/// What a staging job did: files staged whole, files with parts still to fetch, errors, bytes.
type Written = (Vec<files::Staged>, Vec<FileMeta>, Vec<String>, u64);

/// Waits for a staging job and takes in its outcome: staged files to apply, files to ask for again.
async fn absorb(
    job: actix_rt::task::JoinHandle<Written>,
    report: &mut RoundReport,
    staged: &mut Vec<files::Staged>,
    queue: &mut std::collections::VecDeque<FileMeta>,
) -> Result<(), String> {
    let (done, pending, errors, bytes) = job.await.map_err(|e| e.to_string())?;
    report.bytes += bytes;
    report.errors.extend(errors);
    staged.extend(done);
    queue.extend(pending);
    Ok(())
}

/// A full round: scan the local files, compare digests, and when they differ compare manifests and
/// fetch/delete what differs. Returns the manifest the worker has afterwards.
async fn sync_round(
    conn: Conn,
    data_dir: PathBuf,
    previous: Option<Arc<Manifest>>,
    max_frame: usize,
) -> Result<(Arc<Manifest>, RoundReport), String> {
    let started = std::time::Instant::now();
    let mut report = RoundReport { started_ms: crate::now_ms(), ..RoundReport::default() };
    let dir = data_dir.clone();
    let (mut local, digest) = actix_rt::task::spawn_blocking(move || {
        let (m, _) = manifest::scan(&dir, previous.as_deref());
        let digest = m.digest();
        (m, digest)
    })
    .await
    .map_err(|e| e.to_string())?;
    report.phases.push(("scan", started.elapsed().as_millis() as u64));
    let check = IntegrityCheck { manifest_digest: digest, files: local.files.len() as u64 };
    match call(conn.clone(), WorkerToMaster::IntegrityCheck(check)).await? {
        MasterToWorker::IntegrityStatus(status) if status.in_sync => {
            report.in_sync = true;
            return Ok((Arc::new(local), report));
        }
        MasterToWorker::IntegrityStatus(_) => {}
        MasterToWorker::Error(err) if err.code == ErrorCode::Unavailable => return Ok((Arc::new(local), report)),
        other => return unexpected(other).map(|_| (Arc::new(local), report)),
    }
    report.synced = true;
    let plan = match call(conn.clone(), WorkerToMaster::SyncManifest(SyncManifest { files: local.metas() })).await? {
        MasterToWorker::SyncPlan(plan) => plan,
        other => return unexpected(other).map(|_| (Arc::new(local), report)),
    };
    report.phases.push(("plan", started.elapsed().as_millis() as u64));
    report.changed = plan.fetch.iter().filter(|m| local.files.contains_key(&m.path)).count();
    report.missing = plan.fetch.len() - report.changed;
    report.extra = plan.delete.len();
    fetch_and_apply(&conn, &data_dir, plan.fetch, plan.delete, max_frame, &mut local, &mut report).await?;
    let (local, digest) = digested(local).await?;
    report.in_sync = report.errors.is_empty() && digest == plan.master_digest;
    report.took_ms = started.elapsed().as_millis() as u64;
    report.phases.push(("applied", report.took_ms));
    Ok((Arc::new(local), report))
}

/// A delta round: the master announced exactly what changed; fetch and delete just that. Returns
/// `None` when the result does not match the master's digest (a full round must follow).
async fn delta_round(
    conn: Conn,
    data_dir: PathBuf,
    current: Arc<Manifest>,
    change: IntegrityChanged,
    max_frame: usize,
) -> Result<(Arc<Manifest>, RoundReport), String> {
    let started = std::time::Instant::now();
    let mut report = RoundReport { started_ms: crate::now_ms(), synced: true, ..RoundReport::default() };
    // Copying and digesting 50,000 entries takes milliseconds: not on the event loop.
    let mut local = actix_rt::task::spawn_blocking(move || (*current).clone()).await.map_err(|e| e.to_string())?;
    let fetch: Vec<FileMeta> = change
        .changed
        .into_iter()
        .filter(|m| local.files.get(&m.path).is_none_or(|e| e.md5 != m.md5 || e.size != m.size))
        .collect();
    let delete: Vec<String> = change.removed.into_iter().filter(|p| local.files.contains_key(p)).collect();
    report.changed = fetch.iter().filter(|m| local.files.contains_key(&m.path)).count();
    report.missing = fetch.len() - report.changed;
    report.extra = delete.len();
    fetch_and_apply(&conn, &data_dir, fetch, delete, max_frame, &mut local, &mut report).await?;
    let (local, digest) = digested(local).await?;
    report.in_sync = report.errors.is_empty() && digest == change.master_digest;
    report.took_ms = started.elapsed().as_millis() as u64;
    Ok((Arc::new(local), report))
}

/// `m` with its digest, computed on a blocking thread.
async fn digested(m: Manifest) -> Result<(Manifest, String), String> {
    actix_rt::task::spawn_blocking(move || {
        let digest = m.digest();
        (m, digest)
    })
    .await
    .map_err(|e| e.to_string())
}

impl Integrity {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_busy() {
            self.again = true;
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let fut = sync_round(
            self.conn.clone(),
            self.core.settings.data_dir.clone(),
            self.manifest.clone(),
            self.core.settings.max_frame,
        );
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok((manifest, report)) => {
                act.manifest = Some(manifest);
                act.record(&report);
                act.core.succeeded();
                if std::mem::take(&mut act.again) {
                    act.tick(ctx);
                }
            }
            Err(e) => act.core.failed(ctx, e),
        }));
    }

    fn record(&mut self, r: &RoundReport) {
        let node = self.core.node().to_string();
        let t = &mut self.totals;
        t.last_check_ms = crate::now_ms();
        if r.synced {
            t.last_sync_start_ms = r.started_ms;
            t.last_sync_end_ms = r.started_ms + r.took_ms;
            t.last_sync_ms = r.took_ms;
            t.missing = r.missing;
            t.changed = r.changed;
            t.extra = r.extra;
            t.bytes += r.bytes;
            t.errors += r.errors.len();
            for e in r.errors.iter().take(20) {
                warn!(node = node.as_str(); "file sync with {}: {e}", self.core.peer);
            }
            if !r.touched.is_empty() {
                if let Some(hub) = &self.hub {
                    hub.do_send(SharedChanged(Some(r.touched.clone())));
                }
            }
            for note in &r.notes {
                info!(node = node.as_str(); "file sync with {}: {note}", self.core.peer);
            }
            info!(node = node.as_str(); "file sync with master {}: {} missing, {} changed, {} extra; {} written, {} deleted, {} bytes in {} ms",
                self.core.peer, r.missing, r.changed, r.extra, r.written, r.deleted, r.bytes, r.took_ms);
            log::debug!(node = node.as_str(); "file sync phases (ms): {:?}", r.phases);
        }
        if self.in_sync != Some(r.in_sync) && r.in_sync {
            info!(node = node.as_str(); "files in sync with master {}", self.core.peer);
        }
        self.in_sync = Some(r.in_sync);
        let t = self.totals.clone();
        let iso = |ms: u64| if ms == 0 { "-".to_string() } else { ms.to_string() };
        self.core.set_details(vec![
            ("last_check_ms".into(), iso(t.last_check_ms)),
            ("last_sync_start_ms".into(), iso(t.last_sync_start_ms)),
            ("last_sync_end_ms".into(), iso(t.last_sync_end_ms)),
            ("last_sync_duration_ms".into(), t.last_sync_ms.to_string()),
            ("missing".into(), t.missing.to_string()),
            ("changed".into(), t.changed.to_string()),
            ("extra".into(), t.extra.to_string()),
            ("bytes_received".into(), t.bytes.to_string()),
            ("errors".into(), t.errors.to_string()),
            ("in_sync".into(), self.in_sync.unwrap_or(false).to_string()),
        ]);
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

impl Handler<Inbound<MasterToWorker>> for Integrity {
    type Result = ();

    /// The master's files changed: apply the announced change at once (or run a full round).
    fn handle(&mut self, Inbound(envelope): Inbound<MasterToWorker>, ctx: &mut Context<Self>) {
        let MasterToWorker::IntegrityChanged(change) = envelope.body else { return };
        let Some(current) = self.manifest.clone().filter(|_| change.delta && self.in_sync == Some(true)) else {
            return self.tick(ctx);
        };
        if self.core.is_busy() {
            self.again = true;
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let fut = delta_round(
            self.conn.clone(),
            self.core.settings.data_dir.clone(),
            current,
            change,
            self.core.settings.max_frame,
        );
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok((manifest, report)) => {
                let in_sync = report.in_sync;
                act.manifest = Some(manifest);
                act.record(&report);
                act.core.succeeded();
                if !in_sync || std::mem::take(&mut act.again) {
                    // The delta did not bring us to the master's digest (or more changed): compare all.
                    act.tick(ctx);
                }
            }
            Err(e) => act.core.failed(ctx, e),
        }));
    }
}
