//! Starting, observing and stopping one node inside an actix system.

use crate::config::Config;
use actix::prelude::*;
use actix_web::dev::ServerHandle;
use anyhow::Context as _;
use log::info;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use wazuh_cluster_actors::agents::archive::Archive;
use wazuh_cluster_actors::agents::hub::{AgentHub, ForceReconnect, KeySource};
use wazuh_cluster_actors::agents::{session, AgentSettings, ManagerCounters, Shared};
use wazuh_cluster_actors::enrollment::{self, Enroller, EnrollmentSettings};
use wazuh_cluster_actors::master::{self, ListWorkers, LocalJobs, MasterListener};
use wazuh_cluster_actors::registry::{Registry, ReplacePolicy, Replica};
use wazuh_cluster_actors::settings::JobIntervals;
use wazuh_cluster_actors::store_thread::StoreHandle;
use wazuh_cluster_actors::worker::{self, GetLink, WorkerLink, WorkerServices};
use wazuh_cluster_actors::ChannelSettings;
use wazuh_cluster_protocol::message::{AdminRequest, JobReport};
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::{Psk, Role};

/// The software version every node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The channel settings of `config`, with `psk` already derived from its key.
pub fn channel_settings(config: &Config, psk: Psk) -> ChannelSettings {
    let c = &config.cluster;
    let i = &c.intervals;
    ChannelSettings {
        node_name: config.node.name.clone(),
        role: config.node.role,
        data_dir: config.node.data_dir.clone(),
        cluster_name: c.name.clone(),
        psk,
        suite: c.cipher,
        max_frame: c.max_frame,
        handshake_timeout: c.handshake_timeout,
        request_timeout: c.request_timeout,
        keepalive_interval: i.keepalive,
        reconnect_min: i.reconnect_min,
        reconnect_max: i.reconnect_max,
        jobs: JobIntervals {
            agent_info: i.agent_info,
            integrity: i.integrity,
            local_integrity: i.local_integrity,
            local_agent_groups: i.local_agent_groups,
            ..JobIntervals::default()
        },
        versions: VersionRange::ours(),
    }
}

/// Stretches the configured key (Argon2id; tens of milliseconds).
pub fn derive_psk(config: &Config) -> anyhow::Result<Psk> {
    let key = config.cluster.key.as_ref().context("no cluster key configured")?;
    key.derive_psk().context("cannot derive the cluster key")
}

/// What the API and the CLI need to observe a node: its actors' addresses.
#[derive(Clone)]
pub enum NodeHandle {
    Master {
        name: String,
        listener: Addr<MasterListener>,
        cluster_addr: SocketAddr,
        started_ms: u64,
        registry: StoreHandle<Registry>,
        agents: Addr<AgentHub>,
    },
    Worker {
        name: String,
        link: Addr<WorkerLink>,
        master: String,
        started_ms: u64,
        replica: StoreHandle<Replica>,
        agents: Addr<AgentHub>,
    },
}

/// One row of `GET /cluster/nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
    pub address: String,
    pub connected_since: Option<String>,
    pub last_keepalive: Option<String>,
}

/// One actor in `GET /cluster/healthcheck`.
#[derive(Debug, Clone, Serialize)]
pub struct ActorView {
    pub name: String,
    /// Which end of the connection runs it: `master` or `worker`.
    pub end: String,
    pub state: String,
    pub runs: u64,
    pub failures: u64,
    pub restarts: u64,
    pub last_run: Option<String>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Job-specific figures (Integrity: missing, changed, extra, bytes, last sync...).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One node in `GET /cluster/healthcheck`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeHealthView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub connected: bool,
    pub last_keepalive: Option<String>,
    pub actors: Vec<ActorView>,
}

/// One row of `GET /agents`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub ip: String,
    pub status: Option<String>,
    pub version: Option<String>,
    pub node_name: Option<String>,
    pub os: Option<serde_json::Value>,
    /// Labels from the last keep-alive (`#` system, `!` hidden).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_sum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_sum: Option<String>,
    /// `synced` or `not synced`: whether the agent has its groups' current merged.mg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_config_status: Option<String>,
    /// The address the agent connects from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    pub group: Vec<String>,
    pub registered_at: Option<String>,
    pub last_keepalive: Option<String>,
    /// Only with `?keys=true` on the master.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Epoch milliseconds as RFC 3339 UTC.
pub fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).map(|t| t.to_string()).unwrap_or_default()
}

fn actor_views(reports: &[JobReport], end: Role) -> Vec<ActorView> {
    reports
        .iter()
        .map(|r| ActorView {
            name: r.name.clone(),
            end: end.name().into(),
            state: r.state.clone(),
            runs: r.runs,
            failures: r.failures,
            restarts: r.restarts,
            last_run: r.last_run_ms.map(iso),
            last_duration_ms: r.last_duration_ms,
            last_error: r.last_error.clone(),
            details: r
                .details
                .iter()
                .map(|(k, v)| {
                    // Times are epoch milliseconds on the wire; show them as dates.
                    let value = match (
                        k.ends_with("_ms") && !k.contains("duration") && !k.contains("scan"),
                        v.parse::<u64>(),
                    ) {
                        (true, Ok(ms)) if ms > 1_000_000_000_000 => serde_json::Value::String(iso(ms)),
                        (_, Ok(n)) => serde_json::Value::from(n),
                        _ => serde_json::Value::String(v.clone()),
                    };
                    (
                        k.trim_end_matches("_ms").to_string()
                            + if k.ends_with("_ms") && (k.contains("duration") || k.contains("scan")) {
                                "_ms"
                            } else {
                                ""
                            },
                        value,
                    )
                })
                .collect(),
        })
        .collect()
}

impl NodeHandle {
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

    pub async fn nodes(&self) -> Vec<NodeView> {
        match self {
            NodeHandle::Master { name, listener, cluster_addr, started_ms, .. } => {
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
                        name: w.peer.node_name,
                        kind: "worker".into(),
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
                let local = listener.send(LocalJobs).await.unwrap_or_default();
                let mut out = vec![NodeHealthView {
                    name: name.clone(),
                    kind: "master".into(),
                    connected: listener.connected(),
                    last_keepalive: None,
                    actors: actor_views(&local, Role::Master),
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
                    actors: info.map(|i| actor_views(&i.jobs, Role::Worker)).unwrap_or_default(),
                }]
            }
        }
    }

    /// Agents as this node knows them: the registry on the master, the replica on a worker.
    pub async fn agents(&self, with_keys: bool) -> Result<Vec<AgentView>, String> {
        self.agents_only(with_keys, None).await
    }

    /// [`NodeHandle::agents`], only agent `only` when given.
    pub async fn agents_only(&self, with_keys: bool, only: Option<u32>) -> Result<Vec<AgentView>, String> {
        match self {
            NodeHandle::Master { registry, .. } => {
                let rows = registry.run(move |r| r.rows(only)).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| AgentView {
                        id: wazuh_cluster_actors::registry::fmt_id(r.entry.id),
                        name: r.entry.name,
                        ip: r.entry.ip,
                        status: Some(r.status),
                        version: r.version,
                        node_name: Some(r.node_name),
                        os: r.info.as_ref().map(|i| {
                            serde_json::json!({
                                "name": i.os_name, "platform": i.os_platform, "version": i.os_version,
                                "codename": i.os_codename, "arch": i.os_arch, "uname": i.os_uname,
                                "hostname": i.hostname,
                            })
                        }),
                        labels: r.info.as_ref().map(|i| i.labels.iter().cloned().collect()),
                        merged_sum: r.info.as_ref().and_then(|i| i.merged_sum.clone()),
                        config_sum: r.info.as_ref().and_then(|i| i.config_sum.clone()),
                        group_config_status: r.group_config_status,
                        peer_ip: r.peer_ip,
                        group: r.entry.groups,
                        registered_at: Some(iso(r.registered_at_ms)),
                        last_keepalive: r.last_keepalive_ms.map(iso),
                        key: with_keys.then_some(r.entry.key),
                    })
                    .collect())
            }
            NodeHandle::Worker { replica, .. } => {
                let entries = replica.run(|r| r.entries()).await?;
                Ok(entries
                    .into_iter()
                    .filter(|e| only.is_none_or(|id| e.id == id))
                    .map(|e| AgentView {
                        id: wazuh_cluster_actors::registry::fmt_id(e.id),
                        name: e.name,
                        ip: e.ip,
                        group: e.groups,
                        key: with_keys.then_some(e.key),
                        ..AgentView::default()
                    })
                    .collect())
            }
        }
    }

    /// Asks agents (all when `ids` is empty) connected to `node` (any when `None`) to reconnect.
    /// Returns the nodes asked (with how many agents, for this node).
    pub async fn force_reconnect(&self, node: Option<String>, ids: Vec<u32>) -> Vec<String> {
        let mut asked = Vec::new();
        let me = self.name().to_string();
        if node.as_ref().is_none_or(|n| *n == me) {
            let n = self.hub().send(ForceReconnect(ids.clone())).await.unwrap_or(0);
            asked.push(format!("{me}: {n} agents"));
        }
        if let NodeHandle::Master { listener, .. } = self {
            if node.as_ref() != Some(&me) {
                let workers = listener.send(master::ForceReconnectWorkers { node, ids }).await.unwrap_or_default();
                asked.extend(workers);
            }
        }
        asked
    }

    /// Applies a change to agents or groups: on the master directly, on a worker through the master.
    pub async fn admin(&self, request: AdminRequest) -> Result<(), (u16, String)> {
        match self {
            NodeHandle::Master { registry, .. } => match registry.run(move |r| r.admin(&request)).await {
                Ok(outcome) => outcome,
                Err(e) => Err((503, format!("the agent registry is unavailable: {e}"))),
            },
            NodeHandle::Worker { link, .. } => match link.send(worker::ForwardAdmin(request)).await {
                Ok(Ok(result)) => result.outcome,
                Ok(Err(e)) => Err((503, format!("the master is unreachable: {e}"))),
                Err(_) => Err((503, "the worker is stopping".into())),
            },
        }
    }

    /// Groups with their agent counts: the registry's on the master; on a worker, the groups its
    /// replica's agents belong to and the group directories it holds.
    pub async fn groups(&self) -> Result<Vec<(String, u64)>, String> {
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

/// A started node: its actors, its enrollment listener and its API server.
pub struct RunningNode {
    pub handle: NodeHandle,
    pub api_addr: SocketAddr,
    pub enrollment_addr: SocketAddr,
    pub agents_addr: SocketAddr,
    api: ServerHandle,
    enrollment: actix_rt::task::JoinHandle<()>,
    agent_listener: actix_rt::task::JoinHandle<()>,
}

/// Starts the node's actors, enrollment listener and API. Must run inside an actix system.
pub async fn start(config: &Config, psk: Psk) -> anyhow::Result<RunningNode> {
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create node.data_dir {}", data_dir.display()))?;
    let settings = Arc::new(channel_settings(config, psk));
    let name = config.node.name.clone();
    let started_ms = now_ms();
    let tls =
        enrollment::tls_config(data_dir, &name, config.enrollment.ca_file.as_deref()).context("enrollment TLS")?;
    let enroll_listener = TcpListener::bind(config.enrollment.bind)
        .await
        .with_context(|| format!("cannot listen on enrollment.bind {}", config.enrollment.bind))?;
    let enrollment_addr = enroll_listener.local_addr().context("cannot read the bound address")?;
    let agent_tcp = TcpListener::bind(config.agents.bind)
        .await
        .with_context(|| format!("cannot listen on agents.bind {}", config.agents.bind))?;
    let agents_addr = agent_tcp.local_addr().context("cannot read the bound address")?;
    let agent_settings = AgentSettings {
        disconnection_time: config.agents.disconnection_time,
        enforce_counters: config.agents.enforce_counters,
        stall_timeout: config.agents.stall_timeout,
        archive_max_bytes: config.agents.archive_max_size as u64,
        archive_keep: config.agents.archive_keep,
        status_flush: JobIntervals::status_tick(config.cluster.intervals.agent_info),
        ..AgentSettings::new(&name, data_dir.clone())
    };
    let archive = Archive::start(data_dir, agent_settings.archive_max_bytes, agent_settings.archive_keep)
        .with_context(|| format!("cannot open the event archive in {}", data_dir.display()))?;
    let shared = Arc::new(Shared {
        settings: agent_settings,
        keys: Default::default(),
        counters: ManagerCounters::new(),
        archive,
        stats: Default::default(),
    });
    let (handle, enroller) = match config.node.role {
        Role::Master => {
            let mut registry = Registry::open(data_dir)
                .with_context(|| format!("cannot open the agent registry in {}", data_dir.display()))?;
            let after = config.enrollment.force_after.as_millis() as u64;
            registry.replace = ReplacePolicy {
                enabled: config.enrollment.force,
                disconnected_for_ms: after,
                registered_for_ms: after,
            };
            let registry = StoreHandle::spawn(&format!("{name}-registry"), registry, Registry::seq)
                .context("cannot start the registry thread")?;
            let bind = config.cluster.bind;
            let listener =
                TcpListener::bind(bind).await.with_context(|| format!("cannot listen on cluster.bind {bind}"))?;
            let cluster_addr = listener.local_addr().context("cannot read the bound address")?;
            info!(node = name.as_str(); "starting master of cluster {:?} (cipher {})", config.cluster.name, config.cluster.cipher);
            let listener =
                MasterListener::start(listener, settings, registry.clone()).context("cannot start the master")?;
            let agents = AgentHub::new(shared.clone(), KeySource::Master(registry.clone())).start();
            listener.do_send(master::SubscribeFiles(agents.clone().recipient()));
            (
                NodeHandle::Master { name, listener, cluster_addr, started_ms, registry: registry.clone(), agents },
                Enroller::Master(registry),
            )
        }
        Role::Worker => {
            let master = config.cluster.master.clone().context("cluster.master is required for a worker")?;
            let replica = Replica::open(data_dir)
                .with_context(|| format!("cannot open the agent replica in {}", data_dir.display()))?;
            let replica = StoreHandle::spawn(&format!("{name}-replica"), replica, Replica::seq)
                .context("cannot start the replica thread")?;
            info!(node = name.as_str(); "starting worker of cluster {:?} (cipher {})", config.cluster.name, config.cluster.cipher);
            let agents = AgentHub::new(shared.clone(), KeySource::Worker(replica.clone())).start();
            let services = WorkerServices { replica: replica.clone(), agents: Some(agents.clone()) };
            let link = WorkerLink::new(settings, master.clone(), services).start();
            (
                NodeHandle::Worker { name, link: link.clone(), master, started_ms, replica, agents },
                Enroller::Worker(link),
            )
        }
    };
    let enroll_settings = Arc::new(EnrollmentSettings {
        node_name: handle.name().to_string(),
        password: config.enrollment.password.clone(),
        timeout: config.enrollment.timeout,
        tls,
    });
    let enrollment = enrollment::serve(enroll_listener, enroll_settings, enroller);
    info!(node = handle.name(); "enrollment listening on {enrollment_addr} (TLS)");
    let agent_listener = actix_rt::spawn(session::serve(agent_tcp, handle.hub().clone(), shared));
    info!(node = handle.name(); "agent connections listening on {agents_addr}");
    let (api_addr, api) = match crate::api::start(config.api.bind, handle.clone(), config.api.token.clone()) {
        Ok(ok) => ok,
        Err(e) => {
            handle_kill(&handle);
            enrollment.abort();
            agent_listener.abort();
            return Err(e).with_context(|| format!("cannot listen on api.bind {}", config.api.bind));
        }
    };
    info!(node = handle.name(); "API listening on http://{api_addr}");
    Ok(RunningNode { handle, api_addr, enrollment_addr, agents_addr, api, enrollment, agent_listener })
}

fn handle_kill(handle: &NodeHandle) {
    match handle {
        NodeHandle::Master { listener, .. } => listener.do_send(master::Kill),
        NodeHandle::Worker { link, .. } => link.do_send(worker::Kill),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl RunningNode {
    /// Graceful stop: stop accepting (API and cluster), say goodbye to peers, stop jobs, and give
    /// the goodbyes time to leave.
    pub async fn shutdown(&self, reason: &str) {
        self.begin_shutdown(reason);
        // Goodbyes are flushed by the connections within a few hundred milliseconds.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    /// Starts the graceful stop without waiting for it (to stop several nodes at once).
    pub fn begin_shutdown(&self, reason: &str) {
        self.enrollment.abort();
        self.agent_listener.abort();
        // The API stops accepting at once; its in-flight requests finish within a second.
        let api = self.api.stop(true);
        actix_rt::spawn(api);
        match &self.handle {
            NodeHandle::Master { listener, .. } => listener.do_send(master::Shutdown { reason: reason.into() }),
            NodeHandle::Worker { link, .. } => link.do_send(worker::Shutdown { reason: reason.into() }),
        }
    }

    /// Abrupt stop, as a crash: sockets dropped without goodbyes (tests).
    pub async fn kill(&self) {
        self.enrollment.abort();
        self.agent_listener.abort();
        handle_kill(&self.handle);
        self.api.stop(false).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = actix_rt::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = actix_rt::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_rt::signal::ctrl_c().await;
        "interrupt"
    }
}

/// `wazuh-cluster run`: one node until SIGINT/SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    let psk = derive_psk(&config)?;
    let name = config.node.name.clone();
    actix_rt::System::new().block_on(async move {
        let node = start(&config, psk).await?;
        let signal = wait_for_signal().await;
        info!(node = name.as_str(); "{signal} received, shutting down");
        node.shutdown(&format!("node {name} is shutting down")).await;
        info!(node = name.as_str(); "stopped");
        Ok(())
    })
}
