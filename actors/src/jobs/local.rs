//! The master's shared jobs: computed once, read by every worker connection.
//!
//! - `LocalIntegrity`: the manifest of the sync roots (path, size, mtime, MD5) and its digest,
//!   kept current by a file watcher (debounced; only the named paths are looked at again) and a
//!   full incremental rescan every `local_integrity` interval, all on blocking threads. Each change
//!   is published on a broadcast channel ([`MasterServices::files`]); every connection's Integrity
//!   server and the agent hub hold one receiver each, taken once when they are made.
//! - `LocalAgentGroups`: follows the agent registry (every commit, plus a periodic re-read every
//!   `local_agent_groups` interval) and publishes its sequence number and hash in a watch channel
//!   ([`MasterServices::groups`]) that every connection's AgentGroupsSend reads. It also removes
//!   agents whose key delivery through a worker was never confirmed.
//!
//! Neither keeps a list of subscribers: a receiver is taken once per connection and dropped with
//! it, so restarts of either side can never duplicate a subscription. A receiver that falls more
//! than [`FILES_BACKLOG`] changes behind is told it lagged and makes its worker compare everything.

use super::runtime::{job_plumbing, schedule, Controls, JobCore, MAILBOX};
use crate::manifest::{self, Manifest};
use crate::registry::{Registry, StoreHandle};
use crate::settings::ChannelSettings;
use crate::supervise::{liveness, AllStopped, JobHealth};
use actix::prelude::*;
use log::{info, warn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use wazuh_cluster_protocol::message::JobKind;

/// Changes of the master's files a slow receiver may fall behind by before it is told it lagged.
pub(crate) const FILES_BACKLOG: usize = 64;

/// The state of the agent-groups table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsState {
    pub seq: u64,
    pub global_hash: String,
}

/// What the master lends each worker connection.
#[derive(Clone)]
pub struct MasterServices {
    pub local_integrity: Addr<LocalIntegrity>,
    pub local_agent_groups: Addr<LocalAgentGroups>,
    pub registry: StoreHandle<Registry>,
    /// Where changes of the registry go (the registry itself, or the Raft log).
    pub writes: crate::consensus::writes::Writes,
    files: broadcast::Sender<FilesChanged>,
    groups: Arc<watch::Sender<Option<GroupsState>>>,
    healths: Vec<JobHealth>,
    controls: Arc<Controls>,
    positions: Arc<crate::jobs::master::positions::WorkerPositions>,
    /// Every worker's agent statuses on their way into the registry.
    pub statuses: Arc<crate::jobs::master::statuses::StatusInbox>,
}

/// Agents enrolled through a worker whose delivery was never confirmed are removed after this.
pub(crate) const PENDING_EXPIRY_MS: u64 = 10 * 60 * 1000;

impl MasterServices {
    /// Starts both shared jobs, supervised. The second value resolves once both have stopped.
    pub fn start(settings: Arc<ChannelSettings>, writes: crate::consensus::writes::Writes) -> (Self, AllStopped) {
        let registry = writes.registry().clone();
        let writes_registry = registry.clone();
        let (files, _) = broadcast::channel(FILES_BACKLOG);
        let groups = Arc::new(watch::channel(None).0);
        let (alive, all_stopped) = liveness();
        let integrity_core = JobCore::new("LocalIntegrity", JobKind::Periodic, &settings, "all workers");
        let groups_core = JobCore::new("LocalAgentGroups", JobKind::Periodic, &settings, "all workers");
        let healths = vec![integrity_core.health().clone(), groups_core.health().clone()];
        let publisher = files.clone();
        let local_integrity = crate::supervise::start(MAILBOX, Some(alive.clone()), move |_| LocalIntegrity {
            core: integrity_core,
            current: None,
            publisher,
            publications: 0,
            watcher: None,
            overflow: Arc::new(AtomicBool::new(false)),
            rescan_queued: false,
            rescan_again: false,
            pending: Some(Default::default()),
            disk: None,
            held: Default::default(),
        });
        let (reg, sender, w) = (registry.clone(), groups.clone(), writes.clone());
        let local_agent_groups = crate::supervise::start(MAILBOX, Some(alive), move |_| LocalAgentGroups {
            core: groups_core,
            registry: reg,
            writes: w.clone(),
            position: None,
            state: sender,
            expired: 0,
        });
        let mut controls = Controls::default();
        controls.add("LocalIntegrity", &local_integrity, healths[0].clone());
        controls.add("LocalAgentGroups", &local_agent_groups, healths[1].clone());
        let services = MasterServices {
            local_integrity,
            local_agent_groups,
            registry,
            writes,
            files,
            groups,
            healths,
            controls: Arc::new(controls),
            positions: Default::default(),
            statuses: crate::jobs::master::statuses::StatusInbox::start(writes_registry, settings.node_name.clone()),
        };
        (services, all_stopped)
    }

    pub(crate) fn healths(&self) -> &[JobHealth] {
        &self.healths
    }

    /// The shared jobs by name, for fault injection and stopping.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// A new receiver of the master's file changes (take one per consumer, once).
    pub fn files(&self) -> broadcast::Receiver<FilesChanged> {
        self.files.subscribe()
    }

    /// A new receiver of the agent-groups table's state (take one per consumer, once).
    pub fn groups(&self) -> watch::Receiver<Option<GroupsState>> {
        self.groups.subscribe()
    }

    /// Where each connected worker's replica stands.
    pub fn positions(&self) -> Arc<crate::jobs::master::positions::WorkerPositions> {
        self.positions.clone()
    }

    /// Stops both shared jobs for good.
    pub fn stop(&self) {
        self.controls.stop();
    }
}

/// The manifest workers compare against, shared without copying.
#[derive(Debug, Clone)]
pub(crate) struct IntegritySummary {
    pub digest: String,
    pub files: u64,
    pub manifest: Arc<Manifest>,
    /// File parts already read for a worker, served again to the others.
    pub parts: Arc<crate::files::PartCache>,
}

#[derive(Message)]
#[rtype(result = "Option<IntegritySummary>")]
pub(crate) struct GetIntegrity;

/// Published when the master's files change, with the change itself when it is small.
#[derive(Debug, Clone)]
pub struct FilesChanged {
    pub digest: String,
    pub delta: Option<Arc<manifest::Delta>>,
}

/// Largest change sent to workers as a delta; bigger ones make them compare whole manifests.
const MAX_DELTA: usize = 2000;
/// More pending paths than this: rescan everything instead.
const MAX_PENDING_PATHS: usize = 20_000;

/// A filesystem event under the sync roots (from the watcher thread), with the paths it names.
#[derive(Message)]
#[rtype(result = "()")]
struct FsEvent(Vec<std::path::PathBuf>);

/// Debounce for filesystem events: one rescan for a burst of writes.
const FS_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(20);

pub struct LocalIntegrity {
    core: JobCore,
    current: Option<IntegritySummary>,
    publisher: broadcast::Sender<FilesChanged>,
    publications: u64,
    watcher: Option<notify::RecommendedWatcher>,
    /// Set by the watcher thread when this actor's mailbox was full: events were lost, so the
    /// next pass rescans everything.
    overflow: Arc<AtomicBool>,
    rescan_queued: bool,
    rescan_again: bool,
    /// Paths named by file events since the last update (`None`: too many, rescan everything).
    pending: Option<std::collections::BTreeSet<std::path::PathBuf>>,
    /// Every file of the roots as the disk holds it (what the next incremental scan starts from);
    /// `current` serves it without the files held back.
    disk: Option<Arc<Manifest>>,
    /// Ruleset files whose contents were refused, kept out of sync until they are fixed.
    held: std::collections::BTreeMap<String, manifest::Held>,
}

job_plumbing!(LocalIntegrity);

impl LocalIntegrity {
    /// A full rescan (periodic, and whenever events were too many to follow one by one).
    fn run(&mut self, ctx: &mut Context<Self>) {
        self.pending = Some(Default::default());
        self.update(ctx, None);
    }

    /// Updates the manifest for the paths events named (or rescans everything with `None`).
    fn update(&mut self, ctx: &mut Context<Self>, paths: Option<Vec<std::path::PathBuf>>) {
        if self.core.is_busy() {
            // Keep the paths for the pass that follows the running one.
            match (paths, &mut self.pending) {
                (Some(paths), Some(pending)) => pending.extend(paths),
                _ => self.pending = None,
            }
            self.rescan_again = true;
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let dir = self.core.settings.data_dir.clone();
        let previous = self.disk.clone();
        let served = self.current.as_ref().map(|c| c.manifest.clone());
        let held = self.held.clone();
        let scan = actix_rt::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let (disk, stats) = match (&previous, paths) {
                (Some(prev), Some(paths)) => manifest::update(&dir, prev, &paths),
                _ => manifest::scan(&dir, previous.as_deref()),
            };
            // Ruleset files are checked (only those whose contents changed) before they are served.
            let (m, held) = manifest::hold_back(&dir, &disk, served.as_deref(), &held);
            let delta = served.as_ref().map(|p| manifest::Delta::between(p, &m)).filter(|d| d.len() <= MAX_DELTA);
            // Here too, not on the event loop: a digest reads every entry.
            let digest = m.digest();
            ((Arc::new(disk), m, held), digest, stats, started.elapsed(), delta)
        });
        ctx.spawn(scan.into_actor(self).map(|result, act, ctx| match result {
            Ok(((disk, manifest, held), digest, stats, took, delta)) => {
                for e in stats.errors.iter().take(20) {
                    warn!(node = act.core.node(); "local integrity: {e}");
                }
                act.disk = Some(disk);
                act.judged(held);
                let changed = act.current.as_ref().map(|c| &c.digest) != Some(&digest);
                if changed {
                    info!(node = act.core.node(); "local integrity: {} files ({} hashed, {} unchanged) in {} ms, digest {digest}",
                        stats.files, stats.hashed, stats.reused, took.as_millis());
                }
                // Parts read for one worker are kept for the others while the manifest holds,
                // for a few seconds (each scan drops the older ones).
                let parts = match &act.current {
                    Some(c) if !changed => {
                        c.parts.expire(crate::files::PartCache::MAX_AGE);
                        c.parts.clone()
                    }
                    _ => Arc::new(crate::files::PartCache::default()),
                };
                let manifest_files = manifest.files.len() as u64;
                act.current = Some(IntegritySummary {
                    digest: digest.clone(),
                    files: manifest_files,
                    manifest: Arc::new(manifest),
                    parts,
                });
                if changed {
                    act.publications += 1;
                    // Nobody listening is fine: a worker that connects later compares digests.
                    let _ = act.publisher.send(FilesChanged { digest, delta: delta.map(Arc::new) });
                }
                act.core.health().set_figures(vec![
                    ("files".into(), manifest_files),
                    ("held_back".into(), act.held.len() as u64),
                    ("hashed".into(), stats.hashed as u64),
                    ("scan_ms".into(), took.as_millis() as u64),
                    ("errors".into(), stats.errors.len() as u64),
                    ("subscribers".into(), act.publisher.receiver_count() as u64),
                    ("publications".into(), act.publications),
                ]);
                act.core.succeeded();
                if std::mem::take(&mut act.rescan_again) {
                    act.flush_events(ctx);
                }
            }
            Err(e) => act.core.failed(ctx, format!("the scan thread failed: {e}")),
        }));
    }

    /// Takes in the files held back by the last pass: each newly refused one (or refused for a new
    /// reason) is logged once and shown in the job's health, each released one logged once.
    fn judged(&mut self, held: std::collections::BTreeMap<String, manifest::Held>) {
        for (path, h) in &held {
            if self.held.get(path).map(|old| &old.why) != Some(&h.why) {
                let line = format!("{path} is kept out of file sync (workers keep the copy they have): {}", h.why);
                warn!(node = self.core.node(); "local integrity: {line}");
                self.core.health().failed_once(&line, false);
            }
        }
        for path in self.held.keys().filter(|p| !held.contains_key(*p)) {
            info!(node = self.core.node(); "local integrity: {path} is no longer held back (fixed or removed)");
        }
        self.held = held;
    }

    /// Watches `<data_dir>/etc` for changes; events trigger a (debounced) update. Without a
    /// watcher the periodic rescan still finds every change.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        use notify::Watcher;
        let etc = self.core.settings.data_dir.join("etc");
        if let Err(e) = std::fs::create_dir_all(&etc) {
            warn!(node = self.core.node(); "cannot create {}: {e}; relying on periodic rescans", etc.display());
            return;
        }
        let me = ctx.address();
        let overflow = self.overflow.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let paths = match event {
                // Reads (our own scans open every file) change nothing.
                Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => return,
                Ok(event) => event.paths,
                // A lost event (queue overflow): rescan everything.
                Err(_) => Vec::new(),
            };
            if me.try_send(FsEvent(paths)).is_err() {
                // The mailbox is full (or the job is gone): the events queued there will run a
                // pass, and this flag makes it a full rescan.
                overflow.store(true, Ordering::Relaxed);
            }
        };
        match notify::recommended_watcher(handler)
            .and_then(|mut w| w.watch(&etc, notify::RecursiveMode::Recursive).map(|_| w))
        {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                warn!(node = self.core.node(); "cannot watch {} ({e}); relying on periodic rescans", etc.display())
            }
        }
    }

    /// Runs the update for the paths gathered so far.
    fn flush_events(&mut self, ctx: &mut Context<Self>) {
        if self.overflow.swap(false, Ordering::Relaxed) {
            self.pending = None;
        }
        match self.pending.replace(Default::default()) {
            Some(paths) if self.current.is_some() => self.update(ctx, Some(paths.into_iter().collect())),
            _ => self.run(ctx),
        }
    }
}

impl Actor for LocalIntegrity {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped() {
            self.watcher = None;
            return;
        }
        if self.watcher.is_none() {
            self.watch(ctx);
        }
        let every = self.core.settings.jobs.local_integrity;
        schedule(&mut self.core, ctx, every, Self::run);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if self.core.is_stopped() {
            self.watcher = None;
        }
    }
}

impl Handler<FsEvent> for LocalIntegrity {
    type Result = ();

    fn handle(&mut self, FsEvent(paths): FsEvent, ctx: &mut Context<Self>) {
        match &mut self.pending {
            Some(pending) if !paths.is_empty() && pending.len() + paths.len() <= MAX_PENDING_PATHS => {
                pending.extend(paths);
            }
            _ => self.pending = None,
        }
        if self.rescan_queued {
            return;
        }
        self.rescan_queued = true;
        ctx.run_later(FS_DEBOUNCE, |act, ctx| {
            act.rescan_queued = false;
            act.flush_events(ctx);
        });
    }
}

impl Handler<GetIntegrity> for LocalIntegrity {
    type Result = Option<IntegritySummary>;

    fn handle(&mut self, _: GetIntegrity, _: &mut Context<Self>) -> Option<IntegritySummary> {
        self.current.clone()
    }
}

pub struct LocalAgentGroups {
    core: JobCore,
    registry: StoreHandle<Registry>,
    writes: crate::consensus::writes::Writes,
    /// The registry's change sequence, followed with one receiver (a fresh one would report every
    /// change since the registry opened as new).
    position: Option<watch::Receiver<u64>>,
    state: Arc<watch::Sender<Option<GroupsState>>>,
    expired: u64,
}

job_plumbing!(LocalAgentGroups);

impl LocalAgentGroups {
    fn publish(&mut self, seq: u64, global_hash: String) {
        let next = GroupsState { seq, global_hash };
        self.state.send_if_modified(|current| {
            let moved = current.as_ref() != Some(&next);
            if moved {
                *current = Some(next);
            }
            moved
        });
        self.core.health().set_figures(vec![
            ("seq".into(), seq),
            ("subscribers".into(), self.state.receiver_count() as u64),
            ("expired".into(), self.expired),
        ]);
    }

    /// The periodic pass: re-reads the table's position and hash, and removes agents whose key
    /// delivery was never confirmed.
    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_busy() {
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let (registry, writes) = (self.registry.clone(), self.writes.clone());
        let fut = async move {
            let expired = writes.expire_pending(PENDING_EXPIRY_MS).await?;
            // client.keys edited by someone else while nothing was written: put right now.
            let (seq, hash) = registry
                .run(|r| {
                    r.repair_client_keys()?;
                    Ok((r.seq(), r.hash()))
                })
                .await?;
            Ok::<_, crate::registry::StoreError>((seq, hash, expired))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok((seq, hash, expired)) => {
                for id in &expired {
                    warn!(node = act.core.node(); "agent {} removed: its key was never confirmed delivered", crate::registry::fmt_id(*id));
                }
                act.expired += expired.len() as u64;
                act.publish(seq, hash);
                act.core.succeeded();
            }
            Err(e) => act.core.failed(ctx, format!("registry: {e}")),
        }));
    }

    /// Follows every commit of the registry that moved its sequence, so changes reach the workers
    /// at once.
    fn follow(&mut self, ctx: &mut Context<Self>) {
        let mut position = match self.position.take() {
            Some(p) => p,
            None => {
                // (Re)started: from now on; the periodic pass publishes where the table is.
                let mut p = self.registry.watch();
                p.borrow_and_update();
                p
            }
        };
        let registry = self.registry.clone();
        ctx.spawn(
            async move {
                // `None`: the registry's thread has ended; nothing more will change.
                if position.changed().await.is_err() {
                    return (position, None);
                }
                let read = registry.run(|r| Ok((r.seq(), r.hash()))).await.ok();
                (position, Some(read))
            }
            .into_actor(self)
            .map(|(position, state), act, ctx| {
                act.position = Some(position);
                let Some(read) = state else { return };
                // A failed read is caught up by the periodic pass.
                if let Some((seq, hash)) = read {
                    act.publish(seq, hash);
                }
                act.follow(ctx);
            }),
        );
    }
}

impl Actor for LocalAgentGroups {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped() {
            return;
        }
        self.follow(ctx);
        let every = self.core.settings.jobs.local_agent_groups;
        schedule(&mut self.core, ctx, every, Self::run);
    }
}
