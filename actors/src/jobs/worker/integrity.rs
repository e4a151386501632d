//! Integrity, worker end: keeps this worker's sync roots identical to the master's.
//!
//! A periodic job. Each round (every `integrity` interval, and at once when the master announces a
//! change) scans the local files (incrementally) and compares digests; when they differ it sends
//! the whole manifest, fetches the missing and changed files in pipelined batches into the staging
//! area (resuming partial files), checks each (size, MD5), makes them durable, then renames them
//! into place and deletes the extras, all through confined paths. The master is the source of
//! truth: a file changed, added or removed here comes back to the master's version at the next
//! round. Which round runs when, and how fetches are batched, is decided by [`super::sync_round`];
//! this module only carries it out.

use super::sync_round::{self, Differences, FetchQueue, Schedule, Start, DEPTH};
use crate::agents::hub::AgentHub;
use crate::agents::messages::SharedChanged;
use crate::connection::{CallError, ConnHandle, WorkerSide};
use crate::files::{self, FileError, Staging};
use crate::jobs::runtime::{job_plumbing, schedule, JobCore, Notice};
use crate::manifest::{self, Manifest};
use actix::prelude::*;
use log::{info, warn};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wazuh_cluster_protocol::message::{ErrorCode, FetchFiles, IntegrityChanged, IntegrityCheck, SyncManifest};
use wazuh_cluster_protocol::sync::FileMeta;
use wazuh_cluster_protocol::{MasterToWorker, WorkerToMaster};

/// Why a round failed (the job then restarts after its back-off).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("cannot open the staging area: {0}")]
    Staging(std::io::Error),
    #[error("cannot make the staged files durable: {0}")]
    Durable(std::io::Error),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

fn joined(e: actix_rt::task::JoinError) -> SyncError {
    SyncError::Join(e.to_string())
}

pub struct Integrity {
    pub(super) core: JobCore,
    pub(super) conn: ConnHandle<WorkerSide>,
    /// Told which files changed, for merged.mg pushes.
    pub(super) hub: Option<Addr<AgentHub>>,
    /// Told when the ruleset changed and the tree is in sync again (analysisd reloads).
    pub(super) ruleset: Option<Addr<crate::ruleset::RulesetReloader>>,
    /// Ruleset files changed in a round that did not end in sync: reload once it does.
    pub(super) ruleset_pending: bool,
    /// The digest of this worker's files the last time a round ended in sync with the master.
    pub(super) tree: Arc<tokio::sync::watch::Sender<String>>,
    pub(super) manifest: Option<Arc<Manifest>>,
    pub(super) schedule: Schedule,
    pub(super) totals: SyncTotals,
}

#[derive(Debug, Default, Clone)]
pub(super) struct SyncTotals {
    last_check_ms: u64,
    last_sync_start_ms: u64,
    last_sync_end_ms: u64,
    last_sync_ms: u64,
    diff: Differences,
    bytes: u64,
    errors: u64,
    superseded: u64,
    rounds: u64,
    announcements: u64,
}

job_plumbing!(Integrity, custom_restart);

impl Supervised for Integrity {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The round that failed (or panicked) is gone: start over with a full round.
        self.schedule.aborted();
        self.core.restarting();
    }
}

/// What one round did.
#[derive(Debug, Default)]
struct RoundReport {
    in_sync: bool,
    /// This worker's manifest digest at the end of the round.
    digest: String,
    synced: bool,
    diff: Differences,
    written: usize,
    deleted: usize,
    bytes: u64,
    errors: Vec<String>,
    /// Files changed again on the master since they were announced (fetched with that change).
    superseded: usize,
    notes: Vec<String>,
    /// Paths written or deleted.
    touched: Vec<String>,
    started_ms: u64,
    took_ms: u64,
    /// Milliseconds spent in each phase, for the debug log.
    phases: Vec<(&'static str, u64)>,
}

/// What a staging job did: files staged whole, files with parts still to fetch, errors, bytes,
/// and how many files the master served in a newer version than the one asked for.
type Written = (Vec<files::Staged>, Vec<FileMeta>, Vec<String>, u64, usize);

/// Writes the parts of one answer into the staging area, on every core (the disk's latency, not
/// the CPU, is what a batch of small files waits on).
fn stage_answer(
    stage: &Staging,
    mut asked: sync_round::Asked,
    parts: Vec<wazuh_cluster_protocol::message::FilePart>,
) -> Written {
    let (mut done, mut pending, mut errors, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
    let mut superseded = 0;
    let mut work = Vec::with_capacity(parts.len());
    for part in parts {
        match asked.remove(&part.path) {
            // The master changed the file since it announced it: the newer change comes next.
            Some(meta) if meta.md5 != part.md5 || meta.size != part.size => superseded += 1,
            Some(meta) => work.push((meta, part)),
            None => errors.push(format!("{}: a part nobody asked for", part.path)),
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    let per = work.len().div_ceil(threads).max(1);
    let results: Vec<(FileMeta, u64, Result<Option<files::Staged>, FileError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(per)
            .map(|chunk| {
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
    pending.extend(asked.into_values());
    (done, pending, errors, bytes, superseded)
}

/// Waits for a staging job and takes in its outcome: staged files to apply, files to ask for again.
async fn absorb(
    job: actix_rt::task::JoinHandle<Written>,
    report: &mut RoundReport,
    staged: &mut Vec<files::Staged>,
    queue: &mut FetchQueue,
) -> Result<(), SyncError> {
    let (done, pending, errors, bytes, superseded) = job.await.map_err(joined)?;
    report.bytes += bytes;
    report.superseded += superseded;
    report.errors.extend(errors);
    staged.extend(done);
    queue.requeue(pending);
    Ok(())
}

/// Fetches `fetch` in batches (resuming partial files), checks and stages them, makes them durable,
/// then renames them into place and deletes `delete`; records it all in `report` and `manifest`.
async fn fetch_and_apply(
    conn: &ConnHandle<WorkerSide>,
    data_dir: &Path,
    fetch: Vec<FileMeta>,
    delete: Vec<String>,
    max_frame: usize,
    manifest: &mut Manifest,
    report: &mut RoundReport,
) -> Result<(), SyncError> {
    let fresh = sync_round::fresh_roots(&fetch, manifest);
    let staging = Arc::new(Staging::open_with_fresh(data_dir, &fresh).map_err(SyncError::Staging)?);
    let budget = sync_round::answer_budget(max_frame);
    let mut queue = FetchQueue::new(fetch);
    let mut staged = Vec::new();
    let mut waited_ms = 0u64;
    type Answer = actix_rt::task::JoinHandle<Result<MasterToWorker, CallError>>;
    let mut inflight: std::collections::VecDeque<(Answer, sync_round::Asked)> = Default::default();
    let mut writing: Option<actix_rt::task::JoinHandle<Written>> = None;
    loop {
        while inflight.len() < DEPTH {
            let Some((items, asked)) = queue.next_request(budget, |m| staging.have(m)) else { break };
            let (conn, body) = (conn.clone(), WorkerToMaster::FetchFiles(FetchFiles { items, max_bytes: budget }));
            inflight.push_back((actix_rt::spawn(async move { conn.call(body).await }), asked));
        }
        let Some((answer, mut asked)) = inflight.pop_front() else {
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
        let batch = match answer.await.map_err(joined)?? {
            MasterToWorker::FileBatch(batch) => batch,
            other => return Err(CallError::unexpected("file_batch", &other).into()),
        };
        waited_ms += asked_at.elapsed().as_millis() as u64;
        for (path, why) in batch.refused {
            asked.remove(&path);
            report.errors.push(format!("{path}: not served by the master: {why}"));
        }
        // Changed again on the master since it was announced: the newer change comes next.
        for path in batch.superseded {
            asked.remove(&path);
            report.superseded += 1;
        }
        if let Some(job) = writing.take() {
            absorb(job, report, &mut staged, &mut queue).await?;
        }
        let stage = staging.clone();
        let parts = batch.parts;
        writing = Some(actix_rt::task::spawn_blocking(move || stage_answer(&stage, asked, parts)));
    }
    report.phases.push(("waiting for the master", waited_ms));
    let dir = data_dir.to_path_buf();
    let (applied, sync_ms, apply_ms) = actix_rt::task::spawn_blocking(move || {
        // Staged files become durable before any of them replaces a live one.
        let t = std::time::Instant::now();
        staging.sync(&staged)?;
        let sync_ms = t.elapsed().as_millis() as u64;
        let t = std::time::Instant::now();
        Ok::<_, std::io::Error>((staging.apply(&dir, staged, &delete), sync_ms, t.elapsed().as_millis() as u64))
    })
    .await
    .map_err(joined)?
    .map_err(SyncError::Durable)?;
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

/// `m` with its digest, computed on a blocking thread.
async fn digested(m: Manifest) -> Result<(Manifest, String), SyncError> {
    actix_rt::task::spawn_blocking(move || {
        let digest = m.digest();
        (m, digest)
    })
    .await
    .map_err(joined)
}

/// A full round: scan the local files, compare digests, and when they differ compare manifests and
/// fetch/delete what differs. Returns the manifest the worker has afterwards.
async fn full_round(
    conn: ConnHandle<WorkerSide>,
    data_dir: PathBuf,
    previous: Option<Arc<Manifest>>,
    max_frame: usize,
) -> Result<(Arc<Manifest>, RoundReport), SyncError> {
    let started = std::time::Instant::now();
    let mut report = RoundReport { started_ms: crate::clock::now_ms(), ..RoundReport::default() };
    let dir = data_dir.clone();
    let (mut local, digest) = actix_rt::task::spawn_blocking(move || {
        let (m, _) = manifest::scan(&dir, previous.as_deref());
        let digest = m.digest();
        (m, digest)
    })
    .await
    .map_err(joined)?;
    report.phases.push(("scan", started.elapsed().as_millis() as u64));
    report.digest = digest.clone();
    let check = IntegrityCheck { manifest_digest: digest, files: local.files.len() as u64 };
    match conn.call(WorkerToMaster::IntegrityCheck(check)).await {
        Ok(MasterToWorker::IntegrityStatus(status)) if status.in_sync => {
            report.in_sync = true;
            return Ok((Arc::new(local), report));
        }
        Ok(MasterToWorker::IntegrityStatus(_)) => {}
        // The master has no manifest yet: not a failure, the next round will tell.
        Err(CallError::Refused(e)) if e.code == ErrorCode::Unavailable => return Ok((Arc::new(local), report)),
        Ok(other) => return Err(CallError::unexpected("integrity_status", &other).into()),
        Err(e) => return Err(e.into()),
    }
    report.synced = true;
    let plan = match conn.call(WorkerToMaster::SyncManifest(SyncManifest { files: local.metas() })).await? {
        MasterToWorker::SyncPlan(plan) => plan,
        other => return Err(CallError::unexpected("sync_plan", &other).into()),
    };
    report.phases.push(("plan", started.elapsed().as_millis() as u64));
    report.diff = sync_round::differences(&plan.fetch, &plan.delete, &local);
    fetch_and_apply(&conn, &data_dir, plan.fetch, plan.delete, max_frame, &mut local, &mut report).await?;
    let (local, digest) = digested(local).await?;
    report.in_sync = sync_round::ended_in_sync(report.errors.len(), &digest, &plan.master_digest);
    report.digest = digest;
    report.took_ms = started.elapsed().as_millis() as u64;
    report.phases.push(("applied", report.took_ms));
    Ok((Arc::new(local), report))
}

/// A delta round: the master announced exactly what changed; fetch and delete just that.
async fn delta_round(
    conn: ConnHandle<WorkerSide>,
    data_dir: PathBuf,
    current: Arc<Manifest>,
    change: IntegrityChanged,
    max_frame: usize,
) -> Result<(Arc<Manifest>, RoundReport), SyncError> {
    let started = std::time::Instant::now();
    let mut report = RoundReport { started_ms: crate::clock::now_ms(), synced: true, ..RoundReport::default() };
    // Copying and digesting 50,000 entries takes milliseconds: not on the event loop.
    let mut local = actix_rt::task::spawn_blocking(move || (*current).clone()).await.map_err(joined)?;
    let (fetch, delete) = sync_round::delta_plan(&change, &local);
    report.diff = sync_round::differences(&fetch, &delete, &local);
    fetch_and_apply(&conn, &data_dir, fetch, delete, max_frame, &mut local, &mut report).await?;
    let (local, digest) = digested(local).await?;
    report.in_sync = sync_round::ended_in_sync(report.errors.len(), &digest, &change.master_digest);
    report.digest = digest;
    report.took_ms = started.elapsed().as_millis() as u64;
    Ok((Arc::new(local), report))
}

impl Integrity {
    /// The interval elapsed.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let start = self.schedule.tick();
        self.start(start, ctx);
    }

    /// Carries out what the schedule decided.
    fn start(&mut self, start: Start, ctx: &mut Context<Self>) {
        let round = match start {
            Start::Wait => return,
            Start::Full => None,
            Start::Delta(change) => Some(change),
        };
        if let Err(e) = self.core.begin() {
            self.schedule.aborted();
            return self.core.failed(ctx, e);
        }
        let (conn, data_dir, max_frame) =
            (self.conn.clone(), self.core.settings.data_dir.clone(), self.core.settings.max_frame);
        let fut = match (round, self.manifest.clone()) {
            (Some(change), Some(current)) => Box::pin(delta_round(conn, data_dir, current, change, max_frame))
                as crate::connection::LocalFuture<Result<_, SyncError>>,
            _ => Box::pin(full_round(conn, data_dir, self.manifest.clone(), max_frame)),
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok((manifest, report)) => {
                act.manifest = Some(manifest);
                act.record(&report);
                act.core.succeeded();
                let next = act.schedule.finished(report.in_sync);
                act.start(next, ctx);
            }
            Err(e) => {
                act.schedule.aborted();
                act.core.failed(ctx, e);
            }
        }));
    }

    fn record(&mut self, r: &RoundReport) {
        let node = self.core.node().to_string();
        let was_in_sync = self.schedule.in_sync();
        let t = &mut self.totals;
        t.last_check_ms = crate::clock::now_ms();
        t.rounds += 1;
        if r.synced {
            t.last_sync_start_ms = r.started_ms;
            t.last_sync_end_ms = r.started_ms + r.took_ms;
            t.last_sync_ms = r.took_ms;
            t.diff = r.diff;
            t.bytes += r.bytes;
            t.errors += r.errors.len() as u64;
            t.superseded += r.superseded as u64;
            for e in r.errors.iter().take(20) {
                warn!(node = node.as_str(); "file sync with {}: {e}", self.core.peer);
            }
            if r.errors.len() > 20 {
                warn!(node = node.as_str(); "file sync with {}: {} more errors", self.core.peer, r.errors.len() - 20);
            }
            if !r.touched.is_empty() {
                if let Some(hub) = &self.hub {
                    hub.do_send(SharedChanged(Some(r.touched.clone())));
                }
            }
            if r.touched.iter().any(|p| crate::ruleset::in_ruleset(p)) {
                self.ruleset_pending = true;
            }
            for note in &r.notes {
                info!(node = node.as_str(); "file sync with {}: {note}", self.core.peer);
            }
            let superseded = if r.superseded > 0 {
                format!("; {} changed again on the master meanwhile (fetched with that change)", r.superseded)
            } else {
                String::new()
            };
            info!(node = node.as_str(); "file sync with master {}: {} missing, {} changed, {} extra; {} written, {} deleted, {} bytes in {} ms{superseded}",
                self.core.peer, r.diff.missing, r.diff.changed, r.diff.extra, r.written, r.deleted, r.bytes, r.took_ms);
            log::debug!(node = node.as_str(); "file sync phases (ms): {:?}", r.phases);
        }
        if r.in_sync {
            self.tree.send_replace(r.digest.clone());
        }
        // A reload only on a complete tree: after a round that left it as the master's.
        if r.in_sync && self.ruleset_pending {
            self.ruleset_pending = false;
            if let Some(ruleset) = &self.ruleset {
                ruleset.do_send(crate::ruleset::RulesetChanged);
            }
        }
        if r.in_sync && was_in_sync != Some(true) {
            info!(node = node.as_str(); "files in sync with master {}", self.core.peer);
        }
        let t = &self.totals;
        self.core.health().set_figures(vec![
            ("last_check_at_ms".into(), t.last_check_ms),
            ("last_sync_start_at_ms".into(), t.last_sync_start_ms),
            ("last_sync_end_at_ms".into(), t.last_sync_end_ms),
            ("last_sync_duration_ms".into(), t.last_sync_ms),
            ("missing".into(), t.diff.missing as u64),
            ("changed".into(), t.diff.changed as u64),
            ("extra".into(), t.diff.extra as u64),
            ("bytes_received".into(), t.bytes),
            ("errors".into(), t.errors),
            ("superseded".into(), t.superseded),
            ("rounds".into(), t.rounds),
            ("announcements".into(), t.announcements),
            ("in_sync".into(), u64::from(r.in_sync)),
        ]);
    }
}

impl Actor for Integrity {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.core.settings.jobs.integrity;
        schedule(&mut self.core, ctx, every, Self::tick);
    }
}

impl Handler<Notice<IntegrityChanged>> for Integrity {
    type Result = ();

    /// The master's files changed: apply the announced change at once (or compare everything).
    fn handle(&mut self, notice: Notice<IntegrityChanged>, ctx: &mut Context<Self>) {
        self.totals.announcements += 1;
        self.core.health().set_figure("announcements", self.totals.announcements);
        if self.core.is_stopped() || self.core.backing_off() {
            // The round that ends the back-off compares everything anyway.
            return;
        }
        let start = self.schedule.announced(notice.body);
        self.start(start, ctx);
    }
}
