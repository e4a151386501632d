//! The master's shared jobs: computed once, read by every worker connection.
//!
//! - `LocalIntegrity`: the manifest of the sync roots (path, size, mtime, MD5) and its digest,
//!   recomputed every `local_integrity` interval on a blocking thread.
//! - `LocalAgentGroups`: follows the agent registry (every commit, plus a periodic re-read every
//!   `local_agent_groups` interval) and pushes its sequence number and hash to every subscribed
//!   `AgentGroupsSend`, which then sends its worker the changes after the worker's position. It also
//!   removes agents whose key delivery through a worker was never confirmed.

use super::{job_plumbing, schedule, JobCore, JobHealth};
use crate::manifest::{self, Manifest};
use crate::registry::Registry;
use crate::settings::ChannelSettings;
use crate::store_thread::StoreHandle;
use actix::prelude::*;
use actix::WeakRecipient;
use log::{info, warn};
use std::sync::Arc;

/// What the master lends each worker connection.
#[derive(Clone)]
pub struct MasterServices {
    pub local_integrity: Addr<LocalIntegrity>,
    pub local_agent_groups: Addr<LocalAgentGroups>,
    pub registry: StoreHandle<Registry>,
    healths: Vec<JobHealth>,
}

/// Agents enrolled through a worker whose delivery was never confirmed are removed after this.
pub const PENDING_EXPIRY_MS: u64 = 10 * 60 * 1000;

impl MasterServices {
    /// Starts both shared jobs under supervisors.
    pub fn start(settings: Arc<ChannelSettings>, registry: StoreHandle<Registry>) -> Self {
        let integrity_health = JobHealth::new("LocalIntegrity");
        let groups_health = JobHealth::new("LocalAgentGroups");
        let s = settings.clone();
        let h = integrity_health.clone();
        let local_integrity = Supervisor::start(move |_| LocalIntegrity {
            core: JobCore::new("LocalIntegrity", s, "all workers", h),
            current: None,
            subscribers: Vec::new(),
            watcher: None,
            rescan_queued: false,
            rescan_again: false,
            pending: Some(Default::default()),
        });
        let h = groups_health.clone();
        let reg = registry.clone();
        let local_agent_groups = Supervisor::start(move |_| LocalAgentGroups {
            core: JobCore::new("LocalAgentGroups", settings, "all workers", h),
            registry: reg,
            seq: 0,
            hash: None,
            subscribers: Vec::new(),
        });
        MasterServices { local_integrity, local_agent_groups, registry, healths: vec![integrity_health, groups_health] }
    }

    pub fn healths(&self) -> &[JobHealth] {
        &self.healths
    }
}

/// The manifest workers compare against, shared without copying.
#[derive(Debug, Clone)]
pub struct IntegritySummary {
    pub digest: String,
    pub files: u64,
    pub computed_at_ms: u64,
    pub manifest: Arc<Manifest>,
    /// File parts already read for a worker, served again to the others.
    pub parts: Arc<crate::files::PartCache>,
}

#[derive(Message)]
#[rtype(result = "Option<IntegritySummary>")]
pub struct GetIntegrity;

/// Announced to every subscribed master-end `Integrity` job when the master's files change, with
/// the change itself when it is small.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct FilesChanged {
    pub digest: String,
    pub delta: Option<Arc<manifest::Delta>>,
}

/// Largest change sent to workers as a delta; bigger ones make them compare whole manifests.
const MAX_DELTA: usize = 2000;
/// More pending paths than this: rescan everything instead.
const MAX_PENDING_PATHS: usize = 20_000;

/// Subscribes a master-end `Integrity` job to [`FilesChanged`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeFiles(pub Recipient<FilesChanged>);

/// A filesystem event under the sync roots (from the watcher thread), with the paths it names.
#[derive(Message)]
#[rtype(result = "()")]
struct FsEvent(Vec<std::path::PathBuf>);

/// Debounce for filesystem events: one rescan for a burst of writes.
const FS_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(20);

pub struct LocalIntegrity {
    core: JobCore,
    current: Option<IntegritySummary>,
    subscribers: Vec<WeakRecipient<FilesChanged>>,
    watcher: Option<notify::RecommendedWatcher>,
    rescan_queued: bool,
    rescan_again: bool,
    /// Paths named by file events since the last update (`None`: too many, rescan everything).
    pending: Option<std::collections::BTreeSet<std::path::PathBuf>>,
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
        let previous = self.current.as_ref().map(|c| c.manifest.clone());
        let scan = actix_rt::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let (m, stats) = match (&previous, paths) {
                (Some(prev), Some(paths)) => manifest::update(&dir, prev, &paths),
                _ => manifest::scan(&dir, previous.as_deref()),
            };
            let delta = previous.as_ref().map(|p| manifest::Delta::between(p, &m)).filter(|d| d.len() <= MAX_DELTA);
            // Here too, not on the event loop: a digest reads every entry.
            let digest = m.digest();
            (m, digest, stats, started.elapsed(), delta)
        });
        ctx.spawn(scan.into_actor(self).map(|result, act, ctx| match result {
            Ok((manifest, digest, stats, took, delta)) => {
                for e in stats.errors.iter().take(20) {
                    warn!(node = act.core.node(); "local integrity: {e}");
                }
                let changed = act.current.as_ref().map(|c| &c.digest) != Some(&digest);
                if changed {
                    info!(node = act.core.node(); "local integrity: {} files ({} hashed, {} unchanged) in {} ms, digest {digest}",
                        stats.files, stats.hashed, stats.reused, took.as_millis());
                    log::debug!(node = act.core.node(); "complete roots: {:?}; errors: {:?}", manifest.complete_roots, stats.errors.iter().take(3).collect::<Vec<_>>());
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
                act.current = Some(IntegritySummary {
                    digest: digest.clone(),
                    files: manifest.files.len() as u64,
                    computed_at_ms: crate::now_ms(),
                    manifest: Arc::new(manifest),
                    parts,
                });
                act.core.set_details(vec![
                    ("files".into(), stats.files.to_string()),
                    ("hashed".into(), stats.hashed.to_string()),
                    ("scan_ms".into(), took.as_millis().to_string()),
                    ("errors".into(), stats.errors.len().to_string()),
                ]);
                act.core.succeeded();
                if changed {
                    let msg = FilesChanged { digest, delta: delta.map(Arc::new) };
                    act.subscribers.retain(|w| match w.upgrade() {
                        Some(r) => {
                            r.do_send(msg.clone());
                            true
                        }
                        None => false,
                    });
                }
                if std::mem::take(&mut act.rescan_again) {
                    act.flush_events(ctx);
                }
            }
            Err(e) => act.core.failed(ctx, format!("the scan thread failed: {e}")),
        }));
    }

    /// Watches `<data_dir>/etc` for changes; events trigger a (debounced) rescan. Without a
    /// watcher the periodic rescan still finds every change.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        use notify::Watcher;
        let etc = self.core.settings.data_dir.join("etc");
        if let Err(e) = std::fs::create_dir_all(&etc) {
            warn!(node = self.core.node(); "cannot create {}: {e}; relying on periodic rescans", etc.display());
            return;
        }
        let me = ctx.address();
        let handler = move |event: notify::Result<notify::Event>| match event {
            // Reads (our own scans open every file) change nothing.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
            Ok(event) => me.do_send(FsEvent(event.paths)),
            // A lost event (queue overflow): rescan everything.
            Err(_) => me.do_send(FsEvent(Vec::new())),
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
}

impl Actor for LocalIntegrity {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped_for_good() {
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
        if self.core.is_stopped_for_good() {
            self.watcher = None;
        }
    }
}

impl LocalIntegrity {
    /// Runs the update for the paths gathered so far.
    fn flush_events(&mut self, ctx: &mut Context<Self>) {
        match self.pending.replace(Default::default()) {
            Some(paths) if self.current.is_some() => self.update(ctx, Some(paths.into_iter().collect())),
            _ => self.run(ctx),
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

impl Handler<SubscribeFiles> for LocalIntegrity {
    type Result = ();

    fn handle(&mut self, SubscribeFiles(r): SubscribeFiles, _: &mut Context<Self>) {
        self.subscribers.push(r.downgrade());
    }
}

/// The state of the agent-groups table, pushed to subscribers when it changes.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct GroupsChanged {
    pub seq: u64,
    pub global_hash: String,
}

/// Subscribes an `AgentGroupsSend` job; it gets the current state at once, then every change.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<GroupsChanged>);

pub struct LocalAgentGroups {
    core: JobCore,
    registry: StoreHandle<Registry>,
    seq: u64,
    hash: Option<String>,
    /// Weak, so that a closed connection's job is not kept alive by this list.
    subscribers: Vec<WeakRecipient<GroupsChanged>>,
}

job_plumbing!(LocalAgentGroups);

impl LocalAgentGroups {
    fn state(&self) -> Option<GroupsChanged> {
        self.hash.clone().map(|global_hash| GroupsChanged { seq: self.seq, global_hash })
    }

    fn publish(&mut self, seq: u64, hash: String) {
        if self.hash.as_ref() == Some(&hash) && self.seq == seq {
            return;
        }
        self.seq = seq;
        self.hash = Some(hash);
        if let Some(state) = self.state() {
            self.subscribers.retain(|weak| match weak.upgrade() {
                Some(r) => {
                    r.do_send(state.clone());
                    true
                }
                None => false,
            });
        }
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
        let registry = self.registry.clone();
        let fut = async move {
            let expired = registry.run(|r| r.expire_pending(PENDING_EXPIRY_MS)).await?;
            let (seq, hash) = registry.run(|r| Ok((r.seq(), r.hash()))).await?;
            Ok::<_, String>((seq, hash, expired))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok((seq, hash, expired)) => {
                for id in expired {
                    warn!(node = act.core.node(); "agent {} removed: its key was never confirmed delivered", crate::registry::fmt_id(id));
                }
                act.publish(seq, hash);
                act.core.succeeded();
            }
            Err(e) => act.core.failed(ctx, format!("registry: {e}")),
        }));
    }

    /// Follows every commit of the registry, so changes reach the workers at once.
    fn follow(&mut self, ctx: &mut Context<Self>) {
        let mut watch = self.registry.watch();
        let registry = self.registry.clone();
        let me = ctx.address();
        ctx.spawn(
            async move {
                while watch.changed().await.is_ok() {
                    if let Ok((seq, hash)) = registry.run(|r| Ok((r.seq(), r.hash()))).await {
                        if me.try_send(Changed(seq, hash)).is_err() && !me.connected() {
                            return;
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Changed(u64, String);

impl Handler<Changed> for LocalAgentGroups {
    type Result = ();

    fn handle(&mut self, Changed(seq, hash): Changed, _: &mut Context<Self>) {
        self.publish(seq, hash);
    }
}

impl Actor for LocalAgentGroups {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped_for_good() {
            return;
        }
        self.follow(ctx);
        let every = self.core.settings.jobs.local_agent_groups;
        schedule(&mut self.core, ctx, every, Self::run);
    }
}

impl Handler<Subscribe> for LocalAgentGroups {
    type Result = ();

    fn handle(&mut self, Subscribe(recipient): Subscribe, _: &mut Context<Self>) {
        if let Some(state) = self.state() {
            recipient.do_send(state);
        }
        self.subscribers.push(recipient.downgrade());
    }
}
