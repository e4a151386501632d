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

use super::figures::Figures;
use super::framing::{read_frame, write_frame, FrameError, MAX_MESSAGE};
use crate::node::handle::NodeHandle;
use log::{info, warn};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixStream;
use wazuh_cluster_actors::registry::query::{AgentQuery, SortField, SortKey};
use wazuh_cluster_actors::throttle::{suppressed, Throttle};
use wazuh_cluster_protocol::agent::keepalive::KeepAlive;

/// Changes in one pass up to which each is written as remoted writes it.
pub const ONE_BY_ONE: usize = 64;
/// Largest batched query (wazuh-db takes `OS_MAXSTR` less its command).
pub const BATCH_BYTES: usize = 60 * 1024;
/// Agents read from the node's store at a time.
const PAGE: u64 = 2000;
/// How long wazuh-db has to answer one query.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// An agent as this node knows it now.
#[derive(Debug, Clone)]
pub struct AgentNow {
    pub id: u32,
    pub name: String,
    pub register_ip: String,
    pub key: String,
    pub groups: Vec<String>,
    pub date_add_s: u64,
    /// `None`: this node knows no status for it (a worker, for agents connected elsewhere).
    pub state: Option<State>,
}

#[derive(Debug, Clone, Default)]
pub struct State {
    /// `active`, `pending`, `disconnected`, `never_connected`.
    pub status: String,
    pub keepalive_s: Option<u64>,
    pub version: Option<String>,
    pub info: Option<KeepAlive>,
    pub group_config_status: Option<String>,
    pub node_name: String,
    pub agent_ip: Option<String>,
}

/// What was last written for an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Written {
    groups: u64,
    details: u64,
    status: String,
    keepalive_s: Option<u64>,
}

fn digest<T: Hash>(value: T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl State {
    fn details(&self) -> u64 {
        let info = self.info.as_ref().map(|i| {
            (&i.os_uname, &i.os_name, &i.os_version, &i.os_arch, &i.version, &i.config_sum, &i.merged_sum, &i.labels)
        });
        digest((&self.version, info, &self.group_config_status, &self.node_name, &self.agent_ip))
    }

    /// remoted's label text: one `"key":value` line each, system (`#`) and hidden (`!`) marks first.
    fn label_text(&self) -> String {
        let Some(info) = &self.info else { return String::new() };
        let lines: Vec<String> = info
            .labels
            .iter()
            .map(|(k, v)| match k.strip_prefix(['#', '!']) {
                Some(rest) => format!("{}\"{rest}\":{v}", &k[..1]),
                None => format!("\"{k}\":{v}"),
            })
            .collect();
        lines.join("\n")
    }

    /// The fields of `update-agent-data` (remoted/manager.c, `wdb_update_agent_data`).
    fn agent_data(&self, id: u32) -> Value {
        let info = self.info.as_ref();
        let os = |f: fn(&KeepAlive) -> &String| info.map(|i| f(i).clone());
        let os_major_minor = info.map(|i| {
            let mut parts = i.os_version.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
            (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string())
        });
        json!({
            "id": id,
            "version": self.version,
            "config_sum": info.and_then(|i| i.config_sum.clone()),
            "merged_sum": info.and_then(|i| i.merged_sum.clone()),
            "manager_host": self.node_name,
            "node_name": self.node_name,
            "agent_ip": self.agent_ip,
            "labels": self.label_text(),
            "connection_status": self.status,
            "sync_status": "synced",
            "group_config_status": self.group_config_status.clone().unwrap_or_else(|| "not synced".into()),
            "os_name": os(|i| &i.os_name),
            "os_version": os(|i| &i.os_version),
            "os_major": os_major_minor.as_ref().map(|m| m.0.clone()),
            "os_minor": os_major_minor.as_ref().map(|m| m.1.clone()),
            "os_codename": os(|i| &i.os_codename),
            "os_platform": os(|i| &i.os_platform),
            "os_build": Value::Null,
            "os_uname": os(|i| &i.os_uname),
            "os_arch": os(|i| &i.os_arch),
        })
    }
}

/// One change of an agent's row, as remoted would write it.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// A keep-alive with new details (`update-agent-data`).
    Data(u32),
    /// `update-keepalive` with this connection status (a startup: `pending`; an unchanged keep-alive).
    KeepAlive(u32, &'static str),
    /// `update-connection-status` to `disconnected`.
    Disconnected(u32),
}

/// The queries for one pass's changes: each as remoted writes it, or batched at scale.
fn change_queries(changes: &[Change], now: &HashMap<u32, &AgentNow>, now_s: u64) -> Vec<String> {
    if changes.len() <= ONE_BY_ONE {
        return changes
            .iter()
            .filter_map(|c| {
                Some(match c {
                    Change::Data(id) => {
                        format!("global update-agent-data {}", now.get(id)?.state.as_ref()?.agent_data(*id))
                    }
                    Change::KeepAlive(id, status) => format!(
                        "global update-keepalive {}",
                        json!({"id": id, "connection_status": status, "sync_status": "synced"})
                    ),
                    Change::Disconnected(id) => format!(
                        "global update-connection-status {}",
                        json!({"id": id, "connection_status": "disconnected", "sync_status": "synced", "status_code": 0})
                    ),
                })
            })
            .collect();
    }
    // At scale: clusterd's batched write (every column of the row, so each item is whole).
    let rows: Vec<String> = changes
        .iter()
        .filter_map(|c| {
            let id = match c {
                Change::Data(id) | Change::KeepAlive(id, _) | Change::Disconnected(id) => *id,
            };
            let agent = now.get(&id)?;
            Some(full_row(agent, matches!(c, Change::Disconnected(_)), now_s).to_string())
        })
        .collect();
    batches("global sync-agent-info-set ", rows)
}

/// An agent's whole row for `sync-agent-info-set` (the columns of wazuh-db's
/// `global_db_agent_fields`); `gone`: it just disconnected.
fn full_row(agent: &AgentNow, gone: bool, now_s: u64) -> Value {
    let state = agent.state.clone().unwrap_or_default();
    let mut row = state.agent_data(agent.id);
    let labels: Vec<Value> = state
        .info
        .as_ref()
        .map(|i| i.labels.iter().map(|(k, v)| json!({"id": agent.id, "key": k, "value": v})).collect())
        .unwrap_or_default();
    if let Value::Object(map) = &mut row {
        map.remove("agent_ip");
        map.remove("sync_status");
        map.insert("name".into(), json!(agent.name));
        map.insert("ip".into(), json!(state.agent_ip.clone().unwrap_or_else(|| agent.register_ip.clone())));
        map.insert("labels".into(), Value::Array(labels));
        map.insert("last_keepalive".into(), json!(state.keepalive_s));
        map.insert(
            "connection_status".into(),
            json!(if gone || state.status.is_empty() { "disconnected" } else { state.status.as_str() }),
        );
        map.insert("disconnection_time".into(), json!(if gone { now_s } else { 0 }));
        map.insert("status_code".into(), json!(0));
    }
    row
}

/// `prefix` followed by JSON arrays of `items`, each query under [`BATCH_BYTES`].
fn batches(prefix: &str, items: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for item in items {
        if !current.is_empty() && prefix.len() + current.len() + item.len() + 2 > BATCH_BYTES {
            out.push(format!("{prefix}[{current}]"));
            current.clear();
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&item);
    }
    if !current.is_empty() {
        out.push(format!("{prefix}[{current}]"));
    }
    out
}

/// `global set-agent-groups` for these agents' groups (the master's own groups: `override`).
fn group_queries(agents: &[&AgentNow]) -> Vec<String> {
    let items: Vec<String> = agents.iter().map(|a| json!({"id": a.id, "groups": a.groups}).to_string()).collect();
    let mut out = Vec::new();
    // The envelope around the data array: `{"mode":"override","sync_status":"synced","data":[...]}`.
    for batch in batches("", items) {
        out.push(format!(
            "global set-agent-groups {{\"mode\":\"override\",\"sync_status\":\"synced\",\"data\":{batch}}}"
        ));
    }
    out
}

/// authd's `global insert-agent` for a new agent.
fn insert_query(agent: &AgentNow) -> String {
    let data = json!({
        "id": agent.id,
        "name": agent.name,
        "ip": agent.register_ip,
        "register_ip": agent.register_ip,
        "internal_key": agent.key,
        "group": agent.groups.join(","),
        "date_add": agent.date_add_s,
    });
    format!("global insert-agent {data}")
}

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

    /// One pass: reads the node's agents and writes what changed; the agents looked at.
    async fn write_changes(&mut self, tally: &mut Tally) -> Result<u64, PassError> {
        let agents = self.node.agents_now().await.map_err(PassError::Store)?;
        let now: HashMap<u32, &AgentNow> = agents.iter().map(|a| (a.id, a)).collect();
        let now_s = wazuh_cluster_actors::clock::now_ms() / 1000;
        // New agents first (authd's insert), then their groups and every group change.
        let mut regroup = Vec::new();
        for agent in &agents {
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
        for agent in &agents {
            let written = self.written.entry(agent.id).or_default();
            let change = match &agent.state {
                Some(state) if state.status == "never_connected" => None,
                Some(state) if state.status == "disconnected" => {
                    (written.status != "disconnected").then_some(Change::Disconnected(agent.id))
                }
                Some(state) => {
                    let details = state.details();
                    if state.status == "active" && state.info.is_some() && written.details != details {
                        written.details = details;
                        Some(Change::Data(agent.id))
                    } else if written.status != state.status || written.keepalive_s != state.keepalive_s {
                        Some(Change::KeepAlive(agent.id, if state.status == "pending" { "pending" } else { "active" }))
                    } else {
                        None
                    }
                }
                // Known here no more (a worker: the agent left it).
                None => {
                    matches!(written.status.as_str(), "active" | "pending").then_some(Change::Disconnected(agent.id))
                }
            };
            if let Some(change) = change {
                if let Some(state) = &agent.state {
                    written.status = state.status.clone();
                    written.keepalive_s = state.keepalive_s;
                } else {
                    written.status = "disconnected".into();
                }
                changes.push(change);
            }
        }
        for query in change_queries(&changes, &now, now_s) {
            self.query(&query, tally).await?;
        }
        tally.rows += changes.len() as u64;
        // Agents gone: deleted, once the node confirms each is no longer registered.
        let gone: Vec<u32> = self.exists.iter().copied().filter(|id| *id > 0 && !now.contains_key(id)).collect();
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
        Ok(agents.len() as u64)
    }
}

impl NodeHandle {
    /// Every agent as this node knows it, for wazuh-db (read a page at a time).
    pub async fn agents_now(&self) -> Result<Vec<AgentNow>, String> {
        let mut out = Vec::new();
        let mut offset = 0;
        let live: HashMap<u32, wazuh_cluster_protocol::message::AgentInfoUpdate> = match self {
            NodeHandle::Worker { agents, .. } => agents
                .send(wazuh_cluster_actors::agents::messages::LiveStates)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|u| (u.id, u))
                .collect(),
            NodeHandle::Master { .. } => HashMap::new(),
        };
        loop {
            let q = AgentQuery {
                sort: vec![SortKey { field: SortField::Id, descending: false }],
                offset,
                limit: PAGE,
                ..AgentQuery::default()
            };
            let page: Vec<AgentNow> = match self {
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
                            date_add_s: wazuh_cluster_actors::clock::now_ms() / 1000,
                        })
                        .collect()
                }
            };
            let n = page.len() as u64;
            out.extend(page);
            if n < PAGE {
                return Ok(out);
            }
            offset += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: u32, status: &str) -> AgentNow {
        AgentNow {
            id,
            name: format!("agent-{id}"),
            register_ip: "any".into(),
            key: "k".repeat(64),
            groups: vec!["default".into()],
            date_add_s: 1_700_000_000,
            state: Some(State { status: status.into(), node_name: "w1".into(), ..State::default() }),
        }
    }

    #[test]
    fn a_few_changes_are_written_as_remoted_writes_them() {
        let (a, b, c) = (agent(1, "active"), agent(2, "pending"), agent(3, "disconnected"));
        let now: HashMap<u32, &AgentNow> = [(1, &a), (2, &b), (3, &c)].into_iter().collect();
        let q = change_queries(
            &[Change::KeepAlive(1, "active"), Change::KeepAlive(2, "pending"), Change::Disconnected(3)],
            &now,
            0,
        );
        assert_eq!(q[0], r#"global update-keepalive {"connection_status":"active","id":1,"sync_status":"synced"}"#);
        assert!(q[1].starts_with("global update-keepalive ") && q[1].contains(r#""connection_status":"pending""#));
        assert!(q[2].starts_with("global update-connection-status ") && q[2].contains(r#""status_code":0"#));
        let q = change_queries(&[Change::Data(1)], &now, 0);
        let data: Value = serde_json::from_str(q[0].strip_prefix("global update-agent-data ").unwrap()).unwrap();
        for field in [
            "id",
            "version",
            "config_sum",
            "merged_sum",
            "manager_host",
            "node_name",
            "agent_ip",
            "labels",
            "connection_status",
            "sync_status",
            "group_config_status",
            "os_name",
            "os_version",
            "os_major",
            "os_minor",
            "os_codename",
            "os_platform",
            "os_build",
            "os_uname",
            "os_arch",
        ] {
            assert!(data.get(field).is_some(), "update-agent-data carries {field}");
        }
    }

    #[test]
    fn many_changes_are_batched_under_wazuh_dbs_query_limit() {
        let agents: Vec<AgentNow> = (1..=5000).map(|id| agent(id, "active")).collect();
        let now: HashMap<u32, &AgentNow> = agents.iter().map(|a| (a.id, a)).collect();
        let changes: Vec<Change> = agents.iter().map(|a| Change::KeepAlive(a.id, "active")).collect();
        let q = change_queries(&changes, &now, 0);
        assert!(q.len() > 1 && q.len() < 200, "{} queries for 5,000 agents", q.len());
        let mut seen = 0;
        for query in &q {
            assert!(query.len() <= BATCH_BYTES, "{} bytes", query.len());
            let rows: Vec<Value> =
                serde_json::from_str(query.strip_prefix("global sync-agent-info-set ").unwrap()).unwrap();
            for row in &rows {
                assert!(
                    row.get("last_keepalive").is_some() && row.get("name").is_some() && row.get("labels").is_some()
                );
            }
            seen += rows.len();
        }
        assert_eq!(seen, 5000);
        let groups = group_queries(&agents.iter().collect::<Vec<_>>());
        assert!(groups.iter().all(|g| g.len() <= BATCH_BYTES + 64));
        let first: Value = serde_json::from_str(groups[0].strip_prefix("global set-agent-groups ").unwrap()).unwrap();
        assert_eq!(first["mode"], "override");
        assert_eq!(first["data"][0], json!({"id": 1, "groups": ["default"]}));
    }

    #[test]
    fn labels_are_written_as_remoted_writes_them() {
        let mut state = State::default();
        let labels = vec![("#_agent_ip".into(), "10.0.0.1".into()), ("env".into(), "prod".into())];
        state.info = Some(KeepAlive { labels, ..KeepAlive::default() });
        assert_eq!(state.label_text(), "#\"_agent_ip\":10.0.0.1\n\"env\":prod");
    }
}
