//! The master's shared jobs: computed once, read by every worker connection.
//!
//! - `LocalIntegrity`: the manifest of the sync roots (path, size, mtime, MD5) and its digest,
//!   recomputed every `local_integrity` interval on a blocking thread.
//! - `LocalAgentGroups`: the agent -> groups table, re-read every `local_agent_groups` interval;
//!   each change gets a new sequence number and is pushed to every subscribed `AgentGroupsSend`.
//!   (The table itself arrives with the agent registry; until then it is empty.)

use super::{job_plumbing, schedule, JobCore, JobHealth};
use crate::manifest;
use crate::settings::ChannelSettings;
use actix::prelude::*;
use actix::WeakRecipient;
use log::{info, warn};
use md5::{Digest, Md5};
use std::sync::Arc;

/// What the master lends each worker connection.
#[derive(Clone)]
pub struct MasterServices {
    pub local_integrity: Addr<LocalIntegrity>,
    pub local_agent_groups: Addr<LocalAgentGroups>,
    healths: Vec<JobHealth>,
}

impl MasterServices {
    /// Starts both shared jobs under supervisors.
    pub fn start(settings: Arc<ChannelSettings>) -> Self {
        let integrity_health = JobHealth::new("LocalIntegrity");
        let groups_health = JobHealth::new("LocalAgentGroups");
        let s = settings.clone();
        let h = integrity_health.clone();
        let local_integrity = Supervisor::start(move |_| LocalIntegrity {
            core: JobCore::new("LocalIntegrity", s, "all workers", h),
            current: None,
        });
        let h = groups_health.clone();
        let local_agent_groups = Supervisor::start(move |_| LocalAgentGroups {
            core: JobCore::new("LocalAgentGroups", settings, "all workers", h),
            seq: 0,
            hash: None,
            subscribers: Vec::new(),
        });
        MasterServices { local_integrity, local_agent_groups, healths: vec![integrity_health, groups_health] }
    }

    pub fn healths(&self) -> &[JobHealth] {
        &self.healths
    }
}

/// The manifest summary workers compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegritySummary {
    pub digest: String,
    pub files: u64,
    pub computed_at_ms: u64,
}

#[derive(Message)]
#[rtype(result = "Option<IntegritySummary>")]
pub struct GetIntegrity;

pub struct LocalIntegrity {
    core: JobCore,
    current: Option<IntegritySummary>,
}

job_plumbing!(LocalIntegrity);

impl LocalIntegrity {
    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_busy() {
            return;
        }
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        let dir = self.core.settings.data_dir.clone();
        let scan = actix_rt::task::spawn_blocking(move || manifest::scan(&dir));
        ctx.spawn(scan.into_actor(self).map(|result, act, ctx| match result {
            Ok((manifest, errors)) => {
                for e in errors.iter().take(20) {
                    warn!(node = act.core.node(); "local integrity: {e}");
                }
                let summary = IntegritySummary {
                    digest: manifest.digest(),
                    files: manifest.files.len() as u64,
                    computed_at_ms: crate::now_ms(),
                };
                if act.current.as_ref().map(|c| &c.digest) != Some(&summary.digest) {
                    info!(node = act.core.node(); "local integrity: {} files, digest {}", summary.files, summary.digest);
                }
                act.current = Some(summary);
                act.core.succeeded();
            }
            Err(e) => act.core.failed(ctx, format!("the scan thread failed: {e}")),
        }));
    }
}

impl Actor for LocalIntegrity {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped_for_good() {
            return;
        }
        let every = self.core.settings.jobs.local_integrity;
        schedule(&mut self.core, ctx, every, Self::run);
    }
}

impl Handler<GetIntegrity> for LocalIntegrity {
    type Result = Option<IntegritySummary>;

    fn handle(&mut self, _: GetIntegrity, _: &mut Context<Self>) -> Option<IntegritySummary> {
        self.current.clone()
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
    seq: u64,
    hash: Option<String>,
    /// Weak, so that a closed connection's job is not kept alive by this list.
    subscribers: Vec<WeakRecipient<GroupsChanged>>,
}

job_plumbing!(LocalAgentGroups);

/// Hash of the whole table: MD5 over `id:group,group\n` lines in id order.
pub fn groups_hash(rows: &[(String, Vec<String>)]) -> String {
    let mut h = Md5::new();
    for (id, groups) in rows {
        h.update(id.as_bytes());
        h.update(b":");
        h.update(groups.join(",").as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalAgentGroups {
    fn state(&self) -> Option<GroupsChanged> {
        self.hash.clone().map(|global_hash| GroupsChanged { seq: self.seq, global_hash })
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.core.begin() {
            return self.core.failed(ctx, e);
        }
        // The registry that fills this table comes with enrollment; today it is empty.
        let rows: Vec<(String, Vec<String>)> = Vec::new();
        let hash = groups_hash(&rows);
        if self.hash.as_ref() != Some(&hash) {
            self.seq += 1;
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
        self.core.succeeded();
    }
}

impl Actor for LocalAgentGroups {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.core.is_stopped_for_good() {
            return;
        }
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
