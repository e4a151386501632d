//! wazuh-db's agent table (`queue/db/wdb`, Unix stream, framed as Wazuh's local sockets), kept in
//! step with the cluster's: what Wazuh's authd, remoted and (on the master) clusterd write there,
//! so that Wazuh's own API, dashboard and analysisd see every agent as it is.
//!
//! Every `manager.wazuh_db_interval` one pass compares the agents as this node knows them (the
//! master: every agent of the cluster, with its status; a worker: the agent table, with the status
//! of the agents connected to it) with what it last wrote, and writes the difference with the
//! queries of Wazuh's `wdb_global_helpers.c`:
//!
//! - a new agent: `global insert-agent {...}` (authd), then its groups with
//!   `global set-agent-groups {"mode":"override",...}` (batched);
//! - a few changes: each as remoted writes it (`update-agent-data` for a keep-alive with new
//!   details, `update-keepalive` for a startup (`pending`) or an unchanged keep-alive,
//!   `update-connection-status` for a disconnection);
//! - more than [`ONE_BY_ONE`] changes: `global sync-agent-info-set [...]` (clusterd's write of a
//!   worker's agents on the master), up to [`BATCH_BYTES`] a query, so that 50,000 agents cost
//!   hundreds of round trips per interval, not 50,000;
//! - an agent gone: `global delete-agent <id>`.
//!
//! Nothing queues between passes: a pass that cannot reach wazuh-db is counted and the next one
//! writes the state as it is then. A new connection (wazuh-db restarted) reads which agents
//! wazuh-db has (`global get-all-agents last_id`) and writes everything once.

mod queries;

use super::figures::Figures;
use super::framing::{read_frame, write_frame, FrameError, MAX_MESSAGE};
use crate::node::handle::NodeHandle;
use log::{info, warn};
use queries::{change_of, change_queries, digest, group_queries, insert_query, Written};
pub use queries::{AgentNow, State, BATCH_BYTES, ONE_BY_ONE};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixStream;
use wazuh_cluster_actors::registry::query::{AgentQuery, SortField, SortKey};
use wazuh_cluster_actors::throttle::{suppressed, Throttle};
use wazuh_cluster_protocol::message::AgentInfoUpdate;

/// Agents read from the node's store at a time.
const PAGE: u64 = 2000;
/// How long wazuh-db has to answer one query.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the pass loop.
pub fn start(
    path: PathBuf,
    every: Duration,
    node: NodeHandle,
    figures: Arc<Figures>,
) -> actix_rt::task::JoinHandle<()> {
    figures.wazuh_db.on.set(1);
    info!(node = node.name(); "keeping wazuh-db's agent table at {} in step every {} s", path.display(), every.as_secs());
    let mut sync = Sync {
        path,
        node,
        figures,
        conn: None,
        exists: HashSet::new(),
        written: HashMap::new(),
        down: Throttle::new(Duration::from_secs(60)),
        errors: Throttle::new(Duration::from_secs(60)),
    };
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sync.pass().await;
        }
    })
}

struct Sync {
    path: PathBuf,
    node: NodeHandle,
    figures: Arc<Figures>,
    conn: Option<UnixStream>,
    /// The agents wazuh-db has (as read at connection, and written since).
    exists: HashSet<u32>,
    written: HashMap<u32, Written>,
    down: Throttle,
    errors: Throttle,
}

#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("no answer within {} s", ANSWER_TIMEOUT.as_secs())]
    Timeout,
    #[error("an answer that is not text")]
    NotText,
    #[error("the node's agent table could not be read: {0}")]
    Store(String),
}

/// Pass figures.
#[derive(Default)]
struct Tally {
    queries: u64,
    bytes: u64,
    rows: u64,
}

impl Sync {
    async fn pass(&mut self) {
        let figures = self.figures.clone();
        let f = &figures.wazuh_db;
        f.passes.add(1);
        let started = std::time::Instant::now();
        if self.conn.is_none() {
            if let Err(e) = self.connect().await {
                f.missed_passes.add(1);
                f.connected.set(0);
                self.conn = None;
                if let Some(n) = self.down.allow() {
                    warn!(node = self.node.name(); "wazuh-db at {} is not reachable ({e}); its agent table waits for the next pass{}", self.path.display(), suppressed(n));
                }
                return;
            }
        }
        let mut tally = Tally::default();
        match self.write_changes(&mut tally).await {
            Ok(agents) => {
                f.last_agents.set(agents);
                f.last_rows.set(tally.rows);
                f.last_queries.set(tally.queries);
                f.last_bytes.set(tally.bytes);
                f.last_ms.set(started.elapsed().as_millis() as u64);
            }
            Err(e) => {
                f.missed_passes.add(1);
                if !matches!(e, PassError::Store(_)) {
                    f.connected.set(0);
                    self.conn = None;
                }
                if let Some(n) = self.down.allow() {
                    warn!(node = self.node.name(); "wazuh-db at {}: {e}; the next pass writes what is left{}", self.path.display(), suppressed(n));
                }
            }
        }
    }

    /// Connects and reads which agents wazuh-db has; everything is written again after.
    async fn connect(&mut self) -> Result<(), PassError> {
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, UnixStream::connect(&self.path))
            .await
            .map_err(|_| PassError::Timeout)?
            .map_err(FrameError::Io)?;
        self.conn = Some(stream);
        self.exists.clear();
        self.written.clear();
        let mut last = 0u64;
        let mut tally = Tally::default();
        loop {
            let answer = self.query(&format!("global get-all-agents last_id {last}"), &mut tally).await?;
            let (status, payload) = answer.split_once(' ').unwrap_or((answer.as_str(), ""));
            let ids: Vec<u64> = serde_json::from_str::<Vec<Value>>(payload)
                .unwrap_or_default()
                .iter()
                .filter_map(|item| item.get("id").and_then(Value::as_u64))
                .collect();
            self.exists.extend(ids.iter().filter_map(|id| u32::try_from(*id).ok()));
            match ids.iter().max() {
                Some(max) if status == "due" && *max > last => last = *max,
                _ => break,
            }
        }
        let f = &self.figures.wazuh_db;
        f.connections.add(1);
        f.connected.set(1);
        info!(node = self.node.name(); "connected to wazuh-db at {}: it has {} agents; writing the cluster's", self.path.display(), self.exists.iter().filter(|id| **id > 0).count());
        Ok(())
    }

    /// Sends one query and reads its answer (`ok ...`, `err ...`, `due ...`).
    async fn query(&mut self, query: &str, tally: &mut Tally) -> Result<String, PassError> {
        let conn = self.conn.as_mut().ok_or(PassError::Timeout)?;
        let exchange = async {
            write_frame(conn, query.as_bytes()).await.map_err(FrameError::Io)?;
            read_frame(conn, MAX_MESSAGE + 1024).await
        };
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, exchange).await.map_err(|_| PassError::Timeout)??;
        let answer = String::from_utf8(answer).map_err(|_| PassError::NotText)?;
        tally.queries += 1;
        tally.bytes += query.len() as u64 + 4;
        let f = &self.figures.wazuh_db;
        f.queries.add(1);
        if answer.starts_with("err") {
            f.errors.add(1);
            if let Some(n) = self.errors.allow() {
                let head: String = query.chars().take(60).collect();
                warn!(node = self.node.name(); "wazuh-db refused {head:?}...: {answer}{}", suppressed(n));
            }
        }
        Ok(answer)
    }

    /// One pass: reads the node's agents a page at a time (memory: one page) and writes what
    /// changed; the agents looked at.
    async fn write_changes(&mut self, tally: &mut Tally) -> Result<u64, PassError> {
        let live = self.node.live_states().await.map_err(PassError::Store)?;
        let mut seen = HashSet::new();
        let mut offset = 0;
        loop {
            let page = self.node.wdb_page(offset, &live).await.map_err(PassError::Store)?;
            seen.extend(page.iter().map(|a| a.id));
            self.write_page(&page, tally).await?;
            if (page.len() as u64) < PAGE {
                break;
            }
            offset += page.len() as u64;
        }
        // Agents gone: deleted, once the node confirms each is no longer registered.
        let gone: Vec<u32> = self.exists.iter().copied().filter(|id| *id > 0 && !seen.contains(id)).collect();
        for id in gone {
            if matches!(self.node.agent(id, false).await, Ok(None)) {
                self.query(&format!("global delete-agent {id}"), tally).await?;
                self.exists.remove(&id);
                self.written.remove(&id);
                self.figures.wazuh_db.deleted.add(1);
                tally.rows += 1;
            }
        }
        self.figures.wazuh_db.rows_written.add(tally.rows);
        Ok(seen.len() as u64)
    }

    /// Writes what changed for one page of agents.
    async fn write_page(&mut self, agents: &[AgentNow], tally: &mut Tally) -> Result<(), PassError> {
        let now: HashMap<u32, &AgentNow> = agents.iter().map(|a| (a.id, a)).collect();
        let now_s = wazuh_cluster_actors::clock::now_ms() / 1000;
        // New agents first (authd's insert), then their groups and every group change.
        let mut regroup = Vec::new();
        for agent in agents {
            if !self.exists.contains(&agent.id) {
                let answer = self.query(&insert_query(agent), tally).await?;
                // An agent wazuh-db has already (inserted by someone else) is taken as there.
                if answer.starts_with("ok") || answer.contains("UNIQUE") {
                    self.exists.insert(agent.id);
                    self.figures.wazuh_db.inserted.add(1);
                    tally.rows += 1;
                }
            }
            let groups = digest(&agent.groups);
            let written = self.written.entry(agent.id).or_default();
            if written.groups != groups && self.exists.contains(&agent.id) {
                written.groups = groups;
                regroup.push(agent);
            }
        }
        for query in group_queries(&regroup) {
            self.query(&query, tally).await?;
        }
        tally.rows += regroup.len() as u64;
        // Statuses and details.
        let mut changes = Vec::new();
        for agent in agents {
            let written = self.written.entry(agent.id).or_default();
            if let Some(change) = change_of(agent, written) {
                changes.push(change);
            }
        }
        for query in change_queries(&changes, &now, now_s) {
            self.query(&query, tally).await?;
        }
        tally.rows += changes.len() as u64;
        Ok(())
    }
}

impl NodeHandle {
    /// A worker: the state of every agent connected to it (the master's registry has them all).
    async fn live_states(&self) -> Result<HashMap<u32, AgentInfoUpdate>, String> {
        match self {
            NodeHandle::Worker { agents, .. } => Ok(agents
                .send(wazuh_cluster_actors::agents::messages::LiveStates)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|u| (u.id, u))
                .collect()),
            NodeHandle::Master { .. } => Ok(HashMap::new()),
        }
    }

    /// One page of agents (by id, from `offset`) as this node knows them, for wazuh-db; a worker
    /// adds the state of those in `live`.
    async fn wdb_page(&self, offset: u64, live: &HashMap<u32, AgentInfoUpdate>) -> Result<Vec<AgentNow>, String> {
        let q = AgentQuery {
            sort: vec![SortKey { field: SortField::Id, descending: false }],
            offset,
            limit: PAGE,
            ..AgentQuery::default()
        };
        Ok(match self {
            NodeHandle::Master { registry, .. } => {
                let (_, rows) = registry.run(move |r| r.page(&q)).await.map_err(|e| e.to_string())?;
                rows.into_iter()
                    .map(|r| AgentNow {
                        id: r.entry.id,
                        name: r.entry.name,
                        register_ip: r.entry.ip,
                        key: r.entry.key,
                        groups: r.entry.groups,
                        date_add_s: r.registered_at_ms / 1000,
                        state: Some(State {
                            status: r.status,
                            keepalive_s: r.last_keepalive_ms.map(|ms| ms / 1000),
                            version: r.version,
                            agent_ip: r.info.as_ref().and_then(|i| i.agent_ip.clone()).or(r.peer_ip),
                            info: r.info,
                            group_config_status: r.group_config_status,
                            node_name: r.node_name,
                        }),
                    })
                    .collect()
            }
            NodeHandle::Worker { replica, name, .. } => {
                let (_, entries) = replica.run(move |r| r.page(&q)).await.map_err(|e| e.to_string())?;
                let now_s = wazuh_cluster_actors::clock::now_ms() / 1000;
                entries
                    .into_iter()
                    .map(|e| AgentNow {
                        state: live.get(&e.id).map(|u| State {
                            status: u.status.clone(),
                            keepalive_s: u.last_keepalive_ms.map(|ms| ms / 1000),
                            version: u.version.clone(),
                            agent_ip: u.info.as_ref().and_then(|i| i.agent_ip.clone()).or(u.peer_ip.clone()),
                            info: u.info.clone(),
                            group_config_status: u.group_config_status.clone(),
                            node_name: name.clone(),
                        }),
                        id: e.id,
                        name: e.name,
                        register_ip: e.ip,
                        key: e.key,
                        groups: e.groups,
                        // A worker's replica keeps no registration time.
                        date_add_s: now_s,
                    })
                    .collect()
            }
        })
    }
}
