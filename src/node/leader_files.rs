//! High availability: a master-eligible node that does not lead follows the leader's files.

use actix::prelude::*;
use anyhow::Context as _;
use log::{error, info, warn};
use std::sync::Arc;
use wazuh_cluster_actors::consensus::writes::Writes;
use wazuh_cluster_actors::jobs::worker::WorkerServices;
use wazuh_cluster_actors::registry::users::SeedUser;
use wazuh_cluster_actors::registry::{Replica, StoreHandle};
use wazuh_cluster_actors::supervise::Lifeline;
use wazuh_cluster_actors::worker::{self, WorkerLink};
use wazuh_cluster_actors::ChannelSettings;

/// High availability: a master-eligible node that does not lead syncs the leader's files as a
/// worker does (a [`WorkerLink`] following the leader, files only: its registry comes through the
/// Raft log), so that whichever node leads next serves the same rules, decoders, lists and group
/// files; while it leads, it has no such link. Enrollments on its own 1515 go over the same link.
pub(super) struct LeaderFiles {
    /// The node's channel settings with the worker role (the leader admits it by the identity
    /// it pinned for the node's name on their Raft connections).
    pub(super) settings: Arc<ChannelSettings>,
    pub(super) masters: Vec<String>,
    pub(super) ruleset: Option<super::handle::Ruleset>,
    /// The link while there is one (enrollments on this node's 1515 are forwarded over it).
    pub(super) link: tokio::sync::watch::Sender<Option<Addr<WorkerLink>>>,
    /// This node's configured API users, applied whenever it starts leading.
    pub(super) seeds: Vec<SeedUser>,
    pub(super) writes: Writes,
    /// The node's lifeline, for the links it starts.
    pub(super) lifeline: Lifeline,
}

impl LeaderFiles {
    pub(super) async fn run(self, raft: wazuh_cluster_actors::consensus::network::Raft) {
        let node = self.settings.node_name.clone();
        let mut metrics = raft.metrics();
        let mut link: Option<Addr<WorkerLink>> = None;
        let mut said: Option<(u64, Option<u64>, bool)> = None;
        loop {
            let (leads, leader, term, leader_id) = {
                let m = metrics.borrow();
                let leader = m
                    .current_leader
                    .filter(|l| *l != m.id)
                    .and_then(|l| wazuh_cluster_actors::consensus::member_addr(&m, l));
                (m.state.is_leader(), leader, m.current_term, m.current_leader)
            };
            // Who leads, said once per change (openraft's own logs are off: see logging.rs).
            let accepts = leads && wazuh_cluster_actors::consensus::writes::leadership(&raft).is_ok();
            // Terms that pass without a leader (a node cut off from the others keeps starting
            // elections) are one change, not one each.
            let now = (if leader_id.is_some() { term } else { 0 }, leader_id, accepts);
            if said != Some(now) {
                match (leads, &leader) {
                    (true, _) if accepts => {
                        info!(node = node.as_str(); "this node leads the masters (term {term})");
                        if !self.seeds.is_empty() {
                            let (writes, seeds, node) = (self.writes.clone(), self.seeds.clone(), node.clone());
                            actix_rt::spawn(async move {
                                match writes.seed_users(seeds).await {
                                    Ok(applied) if !applied.is_empty() => {
                                        info!(node = node.as_str(); "API users from the configuration applied: {}", applied.join(", "))
                                    }
                                    Ok(_) => {}
                                    Err(e) => warn!(node = node.as_str(); "cannot apply api.users: {e}"),
                                }
                            });
                        }
                    }
                    (true, _) if said.is_some_and(|(t, l, a)| t == term && l == leader_id && a) => {
                        warn!(node = node.as_str(); "no majority of the masters acknowledged this leader for {} ms: it accepts no change until one does", wazuh_cluster_actors::consensus::writes::LEASE_MS)
                    }
                    (true, _) => {}
                    (false, Some(addr)) => {
                        info!(node = node.as_str(); "the masters' leader is at {addr} (term {term})")
                    }
                    (false, None) => {
                        info!(node = node.as_str(); "no leader among the masters (term {term}): an election is under way")
                    }
                }
                said = Some(now);
            }
            match (&link, leads, leader) {
                (None, false, Some(leader)) => match self.services() {
                    Ok(services) => {
                        info!(node = node.as_str(); "following the files of the leader at {leader}");
                        let follow = WorkerLink::new(self.settings.clone(), leader, services);
                        link = Some(follow.following(self.masters.clone()).launch(self.lifeline.clone()));
                    }
                    Err(e) => {
                        error!(node = node.as_str(); "cannot follow the leader's files: {e:#}");
                        return;
                    }
                },
                (Some(l), true, _) => {
                    info!(node = node.as_str(); "this node leads: its files are the ones the others follow");
                    let _ = l.send(worker::Shutdown { reason: "this node leads the masters now".into() }).await;
                    link = None;
                }
                _ => {}
            }
            self.link.send_if_modified(|now| {
                let changed = *now != link;
                now.clone_from(&link);
                changed
            });
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// What the file link needs of a worker: an agent replica it never fills (kept apart, under
    /// var/leader-files) and the node's ruleset reloader.
    fn services(&self) -> anyhow::Result<WorkerServices> {
        let dir = self.settings.data_dir.join("var/leader-files");
        let replica = Replica::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
        let name = format!("{}-files-replica", self.settings.node_name);
        Ok(WorkerServices {
            replica: StoreHandle::spawn(&name, replica, |s| s.seq()).context("cannot start a thread")?,
            agents: None,
            ruleset: self.ruleset.clone(),
            tree: Arc::new(tokio::sync::watch::Sender::new(String::new())),
            files_only: true,
        })
    }
}
