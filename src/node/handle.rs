//! [`NodeHandle`]: what the API and the CLI use to observe and change a running node, through
//! its actors' addresses. Answers are the plain values of [`crate::views`].

use crate::views::{actor_views, iso, AgentView, NodeHealthView, NodeView};
use actix::prelude::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use wazuh_cluster_actors::agents::hub::AgentHub;
use wazuh_cluster_actors::agents::messages::GetHubView;
use wazuh_cluster_actors::master::{self, ListWorkers, LocalJobs, MasterListener};
use wazuh_cluster_actors::registry::counts::StatusSummary;
use wazuh_cluster_actors::registry::query::AgentQuery;
use wazuh_cluster_actors::registry::{fmt_id, AgentRow, Registry, Replica, StoreError, StoreHandle};
use wazuh_cluster_actors::worker::{self, ForwardError, GetLink, WorkerLink};
use wazuh_cluster_protocol::message::AgentEntry;
use wazuh_cluster_protocol::message::{AdminError, AdminRequest};
use wazuh_cluster_protocol::Role;

/// The software version every node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the API and the CLI need to observe a node: its actors' addresses.
#[derive(Clone)]
pub enum NodeHandle {
    Master {
        name: String,
        listener: Addr<MasterListener>,
        cluster_addr: SocketAddr,
        started_ms: u64,
        registry: StoreHandle<Registry>,
        /// The API's reads of the registry, off its store thread (never queued behind its writes).
        reader: std::sync::Arc<wazuh_cluster_actors::registry::reader::RegistryReader>,
        /// Where changes go (the registry, or the Raft log of the master-eligible nodes).
        writes: wazuh_cluster_actors::consensus::writes::Writes,
        agents: Addr<AgentHub>,
        ruleset: Option<Ruleset>,
        data_dir: std::path::PathBuf,
        /// Where the workers' replicas stand (a user change is answered once every worker has it).
        positions: std::sync::Arc<wazuh_cluster_actors::jobs::master::positions::WorkerPositions>,
        /// How long a user change waits for the workers at most.
        settle: std::time::Duration,
        users: std::sync::Arc<wazuh_cluster_actors::registry::users::UserDirectory>,
        /// What the manager integrations (`[manager]`) did.
        manager: std::sync::Arc<crate::manager::figures::Figures>,
    },
    Worker {
        name: String,
        link: Addr<WorkerLink>,
        master: String,
        started_ms: u64,
        replica: StoreHandle<Replica>,
        agents: Addr<AgentHub>,
        ruleset: Option<Ruleset>,
        data_dir: std::path::PathBuf,
        users: std::sync::Arc<wazuh_cluster_actors::registry::users::UserDirectory>,
        manager: std::sync::Arc<crate::manager::figures::Figures>,
    },
}

/// The node's ruleset reloader and its health (with `analysis.control`).
pub type Ruleset = (Addr<wazuh_cluster_actors::ruleset::RulesetReloader>, wazuh_cluster_actors::supervise::JobHealth);

/// Why a change to agents or groups was not made. The API maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The master refused it (no such agent or group, an invalid request).
    #[error(transparent)]
    Refused(#[from] AdminError),
    /// This master's registry failed.
    #[error("the agent registry is unavailable: {0}")]
    Registry(StoreError),
    /// This worker could not get it to the master, or the master could not serve it.
    #[error("the master is unreachable: {0}")]
    Master(ForwardError),
    #[error("the node is stopping")]
    Stopping,
}

impl NodeHandle {
    /// The API's users as this node honours them now.
    pub fn users(&self) -> &std::sync::Arc<wazuh_cluster_actors::registry::users::UserDirectory> {
        match self {
            NodeHandle::Master { users, .. } | NodeHandle::Worker { users, .. } => users,
        }
    }

    /// High availability: this master-eligible node's view of the Raft group (its state, the term,
    /// the leader, each member and, on the leader, how far each has replicated). `None` on a
    /// worker or a single master.
    pub fn raft_status(&self) -> Option<serde_json::Value> {
        let NodeHandle::Master { writes, .. } = self else { return None };
        let m = writes.raft()?.metrics().borrow().clone();
        let matched = |id: &u64| m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
        let members: Vec<serde_json::Value> = m
            .membership_config
            .nodes()
            .map(|(id, n)| {
                let state = if Some(*id) == m.current_leader {
                    "leader"
                } else if *id == m.id {
                    "follower (this node)"
                } else {
                    "follower"
                };
                serde_json::json!({ "id": id, "address": n.addr, "state": state, "matched_index": matched(id) })
            })
            .collect();
        let leader = m.current_leader.and_then(|l| Some((l, wazuh_cluster_actors::consensus::member_addr(&m, l)?)));
        Some(serde_json::json!({
            "id": m.id,
            "state": format!("{:?}", m.state),
            "term": m.current_term,
            "leader": leader.map(|(id, addr)| serde_json::json!({ "id": id, "address": addr })),
            "last_applied": m.last_applied.map(|l| l.index),
            // A leader takes changes only while a majority acknowledged it within its lease.
            "accepts_changes": self.leads(),
            "millis_since_majority": m.millis_since_quorum_ack,
            "members": members,
        }))
    }

    /// Whether this node takes changes as the master: a single master always; a master-eligible
    /// node while it leads with a majority behind it (its lease).
    pub fn leads(&self) -> bool {
        match self {
            NodeHandle::Master { writes, .. } => {
                writes.raft().is_none_or(|r| wazuh_cluster_actors::consensus::writes::leadership(r).is_ok())
            }
            NodeHandle::Worker { .. } => false,
        }
    }

    /// Where this master's registry stands: the last change applied and the digest of its table
    /// (equal on every member of a replicated group that applied the same changes). `None` on a
    /// worker, or if the registry cannot be read.
    pub async fn registry_position(&self) -> Option<(u64, String)> {
        let NodeHandle::Master { registry, .. } = self else { return None };
        registry.run(|r| Ok((r.seq(), r.hash()))).await.ok()
    }

    /// The node's data directory (its sync roots are under it).
    pub fn data_dir(&self) -> std::path::PathBuf {
        match self {
            NodeHandle::Master { data_dir, .. } | NodeHandle::Worker { data_dir, .. } => data_dir.clone(),
        }
    }

    /// The ruleset reloader, if this node has one.
    pub fn ruleset(&self) -> Option<&Ruleset> {
        match self {
            NodeHandle::Master { ruleset, .. } | NodeHandle::Worker { ruleset, .. } => ruleset.as_ref(),
        }
    }

    fn ruleset_report(&self) -> Option<wazuh_cluster_protocol::message::JobReport> {
        self.ruleset().map(|(_, health)| health.snapshot())
    }

    pub fn name(&self) -> &str {
        match self {
            NodeHandle::Master { name, .. } | NodeHandle::Worker { name, .. } => name,
        }
    }

    /// This node's agent hub (its agent connections).
    pub fn hub(&self) -> &Addr<AgentHub> {
        match self {
            NodeHandle::Master { agents, .. } | NodeHandle::Worker { agents, .. } => agents,
        }
    }

    /// The agent hub's figures as they change (published every `FIGURES_EVERY` while watched);
    /// `None` once the hub stopped.
    pub async fn hub_figures(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<wazuh_cluster_actors::agents::messages::HubView>> {
        self.hub().send(wazuh_cluster_actors::agents::messages::WatchFigures).await.ok()
    }

    /// Wakes at each change of a job's health in this process (then read [`NodeHandle::healthcheck`]
    /// again). A master's view of its workers' jobs changes when their keep-alives bring them, which
    /// this does not see by itself.
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        wazuh_cluster_actors::supervise::health_changes()
    }

    pub async fn nodes(&self) -> Vec<NodeView> {
        match self {
            NodeHandle::Master { name, listener, cluster_addr, started_ms, writes, data_dir, .. } => {
                // High availability: the other master-eligible nodes follow the leader's files
                // over a worker connection; they are listed as the masters they are.
                let replicated = writes.raft().is_some();
                let kind = |peer: &str| {
                    let master = replicated && wazuh_cluster_actors::admission::is_pinned_peer(data_dir, peer);
                    if master { "master" } else { "worker" }.to_string()
                };
                let mut out = vec![NodeView {
                    name: name.clone(),
                    kind: "master".into(),
                    version: VERSION.into(),
                    address: cluster_addr.to_string(),
                    connected_since: Some(iso(*started_ms)),
                    last_keepalive: None,
                }];
                for w in listener.send(ListWorkers).await.unwrap_or_default() {
                    out.push(NodeView {
                        kind: kind(&w.peer.node_name),
                        name: w.peer.node_name,
                        version: w.peer.software,
                        address: w.peer_addr.to_string(),
                        connected_since: Some(iso(w.connected_since_ms)),
                        last_keepalive: w.last_keepalive_ms.map(iso),
                    });
                }
                out
            }
            NodeHandle::Worker { name, link, master, started_ms, .. } => {
                let info = link.send(GetLink).await.ok().flatten();
                let mut out = vec![NodeView {
                    name: name.clone(),
                    kind: "worker".into(),
                    version: VERSION.into(),
                    address: info.as_ref().map(|_| "connected".to_string()).unwrap_or_else(|| "disconnected".into()),
                    connected_since: Some(iso(*started_ms)),
                    last_keepalive: info.as_ref().and_then(|i| i.last_keepalive_ms).map(iso),
                }];
                if let Some(i) = info {
                    out.push(NodeView {
                        name: i.peer.node_name,
                        kind: "master".into(),
                        version: i.peer.software,
                        address: master.clone(),
                        connected_since: Some(iso(i.connected_since_ms)),
                        last_keepalive: None,
                    });
                }
                out
            }
        }
    }

    pub async fn healthcheck(&self) -> Vec<NodeHealthView> {
        match self {
            NodeHandle::Master { name, listener, .. } => {
                let mut local = listener.send(LocalJobs).await.unwrap_or_default();
                local.extend(self.ruleset_report());
                let mut out = vec![NodeHealthView {
                    name: name.clone(),
                    kind: "master".into(),
                    connected: listener.connected(),
                    last_keepalive: None,
                    actors: actor_views(&local, Role::Master),
                    agent_connections: self.hub().send(GetHubView).await.ok(),
                }];
                for w in listener.send(ListWorkers).await.unwrap_or_default() {
                    let mut actors = actor_views(&w.jobs, Role::Master);
                    actors.extend(actor_views(&w.peer_jobs, Role::Worker));
                    out.push(NodeHealthView {
                        name: w.peer.node_name,
                        kind: "worker".into(),
                        connected: true,
                        last_keepalive: w.last_keepalive_ms.map(iso),
                        actors,
                        agent_connections: None,
                    });
                }
                out
            }
            NodeHandle::Worker { name, link, .. } => {
                let info = link.send(GetLink).await.ok().flatten();
                vec![NodeHealthView {
                    name: name.clone(),
                    kind: "worker".into(),
                    connected: info.is_some(),
                    last_keepalive: info.as_ref().and_then(|i| i.last_keepalive_ms).map(iso),
                    actors: {
                        // The reloader is reported with the connection's jobs while connected.
                        let mut jobs = info.map(|i| i.jobs).unwrap_or_default();
                        if !jobs.iter().any(|j| j.name == "RulesetReload") {
                            jobs.extend(self.ruleset_report());
                        }
                        actor_views(&jobs, Role::Worker)
                    },
                    agent_connections: self.hub().send(GetHubView).await.ok(),
                }]
            }
        }
    }

    /// Master: the figures of the inbox the workers' agent statuses go through (`None` on a worker,
    /// or if the master stopped).
    pub async fn status_inbox(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<wazuh_cluster_actors::jobs::master::statuses::Figures>> {
        let NodeHandle::Master { listener, .. } = self else { return None };
        listener.send(master::GetStatusInbox).await.ok().map(|inbox| inbox.figures())
    }

    /// One page of agents as this node knows them (the registry on the master, the replica on a
    /// worker) and how many match in all.
    /// Keys are never part of a list: see [`NodeHandle::agent`].
    pub async fn agents_page(&self, q: AgentQuery) -> Result<(u64, Vec<AgentView>), StoreError> {
        match self {
            NodeHandle::Master { reader, .. } => {
                let (total, rows) = reader.page(q).await?;
                Ok((total, rows.into_iter().map(|r| row_view(r, false)).collect()))
            }
            NodeHandle::Worker { replica, .. } => {
                let (total, entries) = replica.run(move |r| r.page(&q)).await?;
                Ok((total, entries.into_iter().map(|e| entry_view(e, false)).collect()))
            }
        }
    }

    /// Master: one page of agents as the API writes it, the objects separated by commas, and how
    /// many match in all; written from the rows as SQLite holds them ([`super::page`]). `None` on a
    /// worker (its page is [`Self::agents_page`]'s).
    pub async fn agents_page_json(&self, q: AgentQuery) -> Option<Result<(u64, Vec<u8>), StoreError>> {
        let NodeHandle::Master { reader, .. } = self else { return None };
        let out = Vec::with_capacity(q.limit.min(1_000) as usize * 800);
        Some(reader.page_with(q, out, super::page::render).await)
    }

    /// Worker: has the master's API answer a read (`None`: the master is too old to, or this is
    /// the master).
    pub async fn forward_call(
        &self,
        read: wazuh_cluster_protocol::message::ApiCall,
    ) -> Result<Option<wazuh_cluster_protocol::message::ApiAnswer>, ChangeError> {
        let NodeHandle::Worker { link, .. } = self else { return Ok(None) };
        link.send(worker::ForwardCall(read)).await.map_err(|_| ChangeError::Stopping)?.map_err(ChangeError::Master)
    }

    /// Master: registers an agent through the API (as `POST /agents` does in Wazuh): the registry's
    /// own enrollment, with the name and address given. The new agent, or why not.
    /// `fixed`: the id or key an insertion (`POST /agents/insert`) gives.
    pub async fn register_agent(
        &self,
        name: String,
        ip: String,
        fixed: wazuh_cluster_actors::registry::Fixed,
    ) -> Result<Result<AgentEntry, wazuh_cluster_protocol::agent::enrollment::EnrollError>, ChangeError> {
        let NodeHandle::Master { name: node, writes, .. } = self else {
            return Err(ChangeError::Refused(AdminError::Invalid(
                "agents are registered through the master's API".into(),
            )));
        };
        let agent = wazuh_cluster_actors::registry::NewAgent {
            name,
            groups: Vec::new(),
            ip,
            key_hash: None,
            version: None,
            node_name: node.clone(),
            token: None,
        };
        writes.insert(agent, fixed).await.map_err(ChangeError::Registry)
    }

    /// Master: asks agent `id`, connected to `node`, a request (as remoted's request socket does)
    /// through the node that holds it; the agent's answer (`ok ...`, `err ...`), or why there is none.
    pub async fn ask_agent(&self, id: u32, node: &str, payload: String) -> Result<String, String> {
        let NodeHandle::Master { name, listener, agents, settle, .. } = self else {
            return Err("requests to agents go through the master".into());
        };
        // Within the cluster channel's own timeout for the worker's answer.
        let timeout = *settle;
        if node == name {
            let ask = wazuh_cluster_actors::agents::messages::AskAgent { id, payload, timeout };
            return match agents.send(ask).await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err("the agent hub stopped".into()),
            };
        }
        let request = wazuh_protocol_request(id, payload, timeout);
        listener
            .send(master::AskWorkerAgent { node: node.to_string(), request })
            .await
            .map_err(|_| "the master listener stopped".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Master: has worker `node`'s API answer `call` (a read of its own); `Err`: the node is not
    /// connected, or did not answer.
    pub async fn call_worker_api(
        &self,
        node: &str,
        call: wazuh_cluster_protocol::message::ApiCall,
    ) -> Result<wazuh_cluster_protocol::message::ApiAnswer, String> {
        let NodeHandle::Master { listener, .. } = self else { return Err("only the master asks other nodes".into()) };
        listener
            .send(master::CallWorkerApi { node: node.to_string(), call })
            .await
            .map_err(|_| "the master listener stopped".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Master: a reconnect order for the agents `ids` (all when empty) held by `node` (any when
    /// `None`): the moves it causes are taken as such, not as contested claims.
    pub async fn release_claims(&self, node: Option<String>, ids: Vec<u32>) {
        let NodeHandle::Master { registry, .. } = self else { return };
        let now = wazuh_cluster_actors::clock::now_ms();
        let _ = registry
            .run(move |r| {
                r.release_claims(node.as_deref(), &ids, now);
                Ok(())
            })
            .await;
    }

    /// Master: sends each agent its message on its connection, through the node that holds it
    /// (`node_name`): this node's own agents directly, a worker's through the worker. The agents
    /// whose connection took it; for the others, why not (Wazuh's error code and message).
    pub async fn command_agents(&self, items: Vec<(u32, String, String)>) -> Vec<(u32, Result<(), (u16, String)>)> {
        let NodeHandle::Master { name, listener, agents, .. } = self else {
            return items
                .into_iter()
                .map(|(id, _, _)| (id, Err((3023, "commands go through the master".into()))))
                .collect();
        };
        let mut by_node: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
        for (id, node, message) in items {
            by_node.entry(node).or_default().push((id, message));
        }
        let not_active = || (1707, "Cannot send request, agent is not active".to_string());
        let mut out = Vec::new();
        for (node, messages) in by_node {
            let ids: Vec<u32> = messages.iter().map(|(id, _)| *id).collect();
            let sent = if node == *name {
                let bytes = messages.into_iter().map(|(id, m)| (id, m.into_bytes())).collect();
                agents
                    .send(wazuh_cluster_actors::agents::messages::SendToAgents(bytes))
                    .await
                    .map_err(|_| "the agent hub stopped".to_string())
            } else {
                match listener
                    .send(master::CommandAgents { node: node.clone(), messages, away: None, refuse: Vec::new() })
                    .await
                {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err("the master listener stopped".to_string()),
                }
            };
            match sent {
                Ok(sent) => out.extend(
                    ids.into_iter().map(|id| (id, if sent.contains(&id) { Ok(()) } else { Err(not_active()) })),
                ),
                Err(why) => out.extend(
                    ids.into_iter()
                        .map(|id| (id, Err((3023, format!("Worker node is not connected to master: {why}"))))),
                ),
            }
        }
        out
    }

    /// Agent `id` as this node knows it; with its key only when `with_key` (an explicit call).
    pub async fn agent(&self, id: u32, with_key: bool) -> Result<Option<AgentView>, StoreError> {
        match self {
            NodeHandle::Master { registry, .. } => {
                let rows = registry.run(move |r| r.rows(Some(id))).await?;
                Ok(rows.into_iter().next().map(|r| row_view(r, with_key)))
            }
            NodeHandle::Worker { replica, .. } => {
                let entry = replica.run(move |r| r.entry(id)).await?;
                Ok(entry.map(|e| entry_view(e, with_key)))
            }
        }
    }

    /// Master: has every node's analysisd reload the ruleset, each worker once its files reached the
    /// master's digest. The outcome per node (name, reloaded, analysisd's words or why not).
    pub async fn reload_ruleset_everywhere(&self) -> Result<Vec<(String, bool, String)>, ChangeError> {
        let NodeHandle::Master { name, listener, ruleset, .. } = self else {
            return Err(ChangeError::Refused(AdminError::Invalid(
                "cluster-wide reloads go through the master's API".into(),
            )));
        };
        let workers = listener.send(master::ReloadWorkers).await.map_err(|_| ChangeError::Stopping)?;
        let own = match ruleset {
            Some((reloader, _)) => match reloader.send(wazuh_cluster_actors::ruleset::ReloadNow).await {
                Ok(wazuh_cluster_actors::ruleset::ReloadOutcome::Reloaded(words)) => {
                    (true, if words.is_empty() { "reloaded".to_string() } else { words })
                }
                Ok(wazuh_cluster_actors::ruleset::ReloadOutcome::Failed(why)) => (false, why),
                Err(_) => (false, "the ruleset reloader stopped".to_string()),
            },
            None => (false, "this node has no analysis.control configured".to_string()),
        };
        let mut out = vec![(name.clone(), own.0, own.1)];
        out.extend(workers.into_iter().map(|(n, r)| (n, r.reloaded, r.message)));
        Ok(out)
    }

    /// Master: issues a join token for `uses` workers, valid `ttl`.
    pub async fn issue_join_token(
        &self,
        ttl: std::time::Duration,
        uses: u32,
    ) -> Result<wazuh_cluster_actors::admission::Issued, ChangeError> {
        let NodeHandle::Master { listener, .. } = self else {
            return Err(ChangeError::Refused(AdminError::Invalid("join tokens are issued by the master's API".into())));
        };
        listener
            .send(wazuh_cluster_actors::master::IssueJoinToken { ttl, uses })
            .await
            .map_err(|_| ChangeError::Stopping)?
            .map_err(|e| ChangeError::Refused(AdminError::Unavailable(format!("cannot issue: {e}"))))
    }

    /// Master: revokes worker `name`'s identity (its connection closes; it cannot join again).
    /// The revoked identity's fingerprint; `NoSuchAgent`-like `None` when no such worker.
    pub async fn revoke_worker(&self, name: String) -> Result<Option<String>, ChangeError> {
        let NodeHandle::Master { listener, .. } = self else {
            return Err(ChangeError::Refused(AdminError::Invalid(
                "workers are revoked through the master's API".into(),
            )));
        };
        listener
            .send(wazuh_cluster_actors::master::RevokeWorker { name })
            .await
            .map_err(|_| ChangeError::Stopping)?
            .map_err(|e| ChangeError::Refused(AdminError::Unavailable(format!("cannot revoke: {e}"))))
    }

    /// Master: the distribution of agents over the workers as its rebalancer sees it (`None`: a
    /// worker, or a master that cannot say).
    pub async fn balance(&self) -> Option<master::BalanceView> {
        let NodeHandle::Master { listener, .. } = self else { return None };
        listener.send(master::GetBalance).await.ok()
    }

    /// Agents by connection status, configuration status and node. The master counts its whole
    /// registry (from memory); a worker counts the agents connected to it (its hub) against the
    /// agents of its replica.
    pub async fn agent_summary(&self) -> Result<StatusSummary, StoreError> {
        match self {
            NodeHandle::Master { reader, .. } => Ok(reader.summary()),
            NodeHandle::Worker { name, replica, agents, .. } => {
                let total = replica.run(|r| r.count()).await?;
                let hub = agents.send(GetHubView).await.unwrap_or_default();
                let (active, pending, disconnected) = (hub.active as u64, hub.pending as u64, hub.disconnected as u64);
                let mine: BTreeMap<String, u64> = [
                    ("active".to_string(), active),
                    ("pending".to_string(), pending),
                    ("disconnected".to_string(), disconnected),
                ]
                .into();
                let mut connection = mine.clone();
                connection.insert("never_connected".into(), total.saturating_sub(active + pending + disconnected));
                connection.insert("total".into(), total);
                Ok(StatusSummary {
                    connection,
                    configuration: [("total".to_string(), total)].into(),
                    nodes: [(name.clone(), mine)].into(),
                })
            }
        }
    }

    /// Applies a change to agents or groups: on the master directly, on a worker through the master,
    /// with `credential` (the caller's API token), which the master checks itself.
    pub async fn admin(&self, request: AdminRequest, credential: String) -> Result<(), ChangeError> {
        match self {
            NodeHandle::Master { writes, positions, settle, name, .. } => {
                let user = request.is_user();
                let what = format!("{request:?}");
                writes.admin(request).await.map_err(ChangeError::Registry)??;
                // A user change is answered once every worker honours it (see WorkerPositions).
                if user {
                    let late = positions.wait_for_registry(writes.registry(), *settle).await;
                    if !late.is_empty() {
                        log::warn!(node = name.as_str(); "{what}: workers {} have not confirmed it yet", late.join(", "));
                    }
                }
            }
            NodeHandle::Worker { link, .. } => {
                // A file the master would refuse is refused here, without crossing the cluster.
                wazuh_cluster_actors::registry::admin::check_contents(&request)?;
                let result =
                    link.send(worker::ForwardAdmin { request, credential }).await.map_err(|_| ChangeError::Stopping)?;
                result.map_err(ChangeError::Master)?.outcome?;
            }
        }
        Ok(())
    }

    /// Groups with their agent counts: the registry's on the master; on a worker, the groups its
    /// replica's agents belong to and the group directories it holds.
    pub async fn groups(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            NodeHandle::Master { registry, .. } => registry.run(|r| r.groups()).await,
            NodeHandle::Worker { replica, .. } => {
                let entries = replica.run(|r| r.entries()).await?;
                let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
                for e in entries {
                    for g in e.groups {
                        *counts.entry(g).or_default() += 1;
                    }
                }
                Ok(counts.into_iter().collect())
            }
        }
    }

    /// Whether the node serves, and why not.
    pub async fn serving(&self) -> (bool, String) {
        let store = match self {
            NodeHandle::Master { registry, .. } => {
                registry.unusable().map(|why| format!("the agent registry is unusable: {why}"))
            }
            NodeHandle::Worker { replica, .. } => {
                replica.unusable().map(|why| format!("the agent replica is unusable: {why}"))
            }
        };
        if let Some(why) = store {
            return (false, why);
        }
        match self {
            NodeHandle::Master { listener, cluster_addr, .. } => {
                if listener.connected() {
                    (true, format!("master listening on {cluster_addr}"))
                } else {
                    (false, "master stopped".into())
                }
            }
            NodeHandle::Worker { link, master, .. } => match link.send(GetLink).await {
                Ok(Some(info)) => (true, format!("connected to master {} ({master})", info.peer.node_name)),
                _ => (false, format!("not connected to master {master}")),
            },
        }
    }
}

/// A registry row as the API shows it.
fn wazuh_protocol_request(
    id: u32,
    payload: String,
    timeout: std::time::Duration,
) -> wazuh_cluster_protocol::message::AgentRequest {
    wazuh_cluster_protocol::message::AgentRequest { id, payload, timeout_ms: timeout.as_millis() as u64 }
}

pub(crate) fn row_view(r: AgentRow, with_keys: bool) -> AgentView {
    let info = r.info.as_ref();
    // Where it reports from: its own word, else its connection's, else where it registered.
    let ip = info.and_then(|i| i.agent_ip.clone()).or(r.peer_ip.clone()).unwrap_or_else(|| r.entry.ip.clone());
    AgentView {
        id: fmt_id(r.entry.id),
        name: r.entry.name,
        ip,
        register_ip: r.entry.ip,
        status: Some(r.status),
        status_code: Some(0),
        version: r.version,
        manager: Some(r.node_name.clone()),
        node_name: Some(r.node_name),
        os: info.map(|i| {
            crate::views::AgentOs::new(
                &i.os_name,
                &i.os_platform,
                &i.os_version,
                &i.os_codename,
                &i.os_arch,
                &i.os_uname,
            )
        }),
        labels: info.map(|i| i.labels.iter().cloned().collect()),
        merged_sum: info.and_then(|i| i.merged_sum.clone()),
        config_sum: info.and_then(|i| i.config_sum.clone()),
        group_config_status: r.group_config_status,
        group: r.entry.groups,
        date_add: Some(iso(r.registered_at_ms)),
        last_keep_alive: r.last_keepalive_ms.map(iso),
        key: with_keys.then_some(r.entry.key),
    }
}

/// A replica entry as the API shows it (a worker knows no statuses).
fn entry_view(e: AgentEntry, with_keys: bool) -> AgentView {
    AgentView {
        id: fmt_id(e.id),
        name: e.name,
        ip: e.ip.clone(),
        register_ip: e.ip,
        group: e.groups,
        key: with_keys.then_some(e.key),
        ..AgentView::default()
    }
}
