//! Starting, running and stopping one node inside an actix system.
//!
//! Start-up does everything that can fail before any actor exists: the data dir, the TLS
//! configuration, every listening socket (cluster, enrollment, agents, API), the registry or
//! replica. A bad port or a bad file therefore ends the process with one error line and nothing
//! to unwind. Then the actors start. A store thread that dies later is fatal: the node stops and
//! exits non-zero with a clear line, so that its service manager restarts it.

use super::handle::NodeHandle;
use super::leader_files::LeaderFiles;
use crate::config::Config;
use actix::prelude::*;
use actix_web::dev::ServerHandle;
use anyhow::Context as _;
use log::{info, warn};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use wazuh_cluster_actors::admission::{load_or_create_identity, Admission, AdmissionMode, IDENTITY_FILE};
use wazuh_cluster_actors::agents::analysis::AnalysisQueue;
use wazuh_cluster_actors::agents::archive::Archive;
use wazuh_cluster_actors::agents::counters::AgentCounters;
use wazuh_cluster_actors::agents::hub::{AgentHub, KeySource};
use wazuh_cluster_actors::agents::messages::SharedChanged;
use wazuh_cluster_actors::agents::{session, AgentSettings, KeyIndex, ManagerCounters, Shared};
use wazuh_cluster_actors::budget::{Budget, Pool};
use wazuh_cluster_actors::client_cert::ClientCa;
use wazuh_cluster_actors::consensus::writes::Writes;
use wazuh_cluster_actors::enrollment::{self, ClientAuth, Enroller, EnrollmentPolicy, EnrollmentSettings};
use wazuh_cluster_actors::jobs::worker::WorkerServices;
use wazuh_cluster_actors::master::{self, MasterListener};
use wazuh_cluster_actors::registry::users::{SeedUser, UserDirectory};
use wazuh_cluster_actors::registry::{Registry, ReplacePolicy, Replica, StoreHandle};
use wazuh_cluster_actors::ruleset::{in_ruleset, RulesetChanged, RulesetReloader};
use wazuh_cluster_actors::settings::{Budgets, JobIntervals};
use wazuh_cluster_actors::supervise::{Kill, Lifeline};
use wazuh_cluster_actors::worker::WorkerLink;
use wazuh_cluster_actors::ChannelSettings;
use wazuh_cluster_protocol::identity::{JoinToken, NodeIdentity};
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::{Psk, Role};

/// The channel settings of `config`, with `psk` already derived from its key and the node's
/// identity loaded.
pub fn channel_settings(
    config: &Config,
    psk: Psk,
    identity: Arc<NodeIdentity>,
    admin: Option<wazuh_cluster_actors::settings::AdminCheck>,
) -> anyhow::Result<ChannelSettings> {
    let c = &config.cluster;
    let i = &c.intervals;
    let admission = c.admission.parse::<AdmissionMode>().map_err(anyhow::Error::msg).context("cluster.admission")?;
    let join_token = c.join_token.as_deref().map(JoinToken::parse).transpose().context("cluster.join_token")?;
    Ok(ChannelSettings {
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
        budgets: Budgets::for_frame(c.max_frame),
        admin,
        identity,
        join_token,
        admission,
        max_handshakes: 256,
        enrollment: Default::default(),
        api_calls: Default::default(),
        agent_relays: Default::default(),
        rebalance: c.rebalance,
    })
}

/// Where a node keeps its own API secret when `api.secret` is not set.
pub const API_SECRET_FILE: &str = "var/api.secret";

/// The API's guard: credentials, users, the token signer (`api.secret`, or a per-node secret made
/// at first start, whose tokens only this node accepts).
fn api_access(config: &Config) -> anyhow::Result<crate::api::Access> {
    let secret = match &config.api.secret {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let path = config.node.data_dir.join(API_SECRET_FILE);
            match std::fs::read(&path) {
                Ok(bytes) if bytes.len() >= 32 => bytes,
                _ => {
                    let mut raw = [0u8; 32];
                    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
                    wazuh_cluster_actors::secret::write_private(&path, &raw)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    raw.to_vec()
                }
            }
        }
    };
    Ok(crate::api::Access {
        token: config.api.token.clone(),
        tokens: crate::auth::Tokens::new(&secret, config.api.token_lifetime),
        users: UserDirectory::new(),
        allowed_hosts: config.api.allowed_hosts.clone(),
        metrics_public: config.api.metrics_public,
        signin: Arc::new(crate::auth::SignInGate::new(0, config.api.max_login_attempts, config.api.block_time)),
    })
}

/// Stretches the configured key (Argon2id; tens of milliseconds).
pub fn derive_psk(config: &Config) -> anyhow::Result<Psk> {
    let key = config.cluster.key.as_ref().context("no cluster key configured")?;
    key.derive_psk().context("cannot derive the cluster key")
}

/// Binds `addr` for `what`, naming the setting in the error.
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .with_context(|| format!("cannot listen on {what} {addr}"))?;
    socket.set_reuseaddr(true).with_context(|| format!("cannot listen on {what} {addr}"))?;
    socket.bind(addr).with_context(|| format!("cannot listen on {what} {addr}"))?;
    // A deep accept queue: thousands of agents reconnect at once after a restart (and a flood
    // comes in bursts); with the usual 128, connections that arrive while the node is busy with
    // the last burst are dropped and their clients wait a second to try again (measured: 300
    // connections in a row took 2 s, now milliseconds). The kernel caps it at net.core.somaxconn.
    let listener = socket.listen(LISTEN_BACKLOG).with_context(|| format!("cannot listen on {what} {addr}"))?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    Ok((listener, bound))
}

/// The accept queue asked for on 1514, 1515 and 1516.
const LISTEN_BACKLOG: u32 = 4096;

/// A started node: its actors, its enrollment listener and its API server.
pub struct RunningNode {
    pub handle: NodeHandle,
    pub api_addr: SocketAddr,
    pub enrollment_addr: SocketAddr,
    pub agents_addr: SocketAddr,
    pub(super) api: ServerHandle,
    pub(super) tasks: Vec<actix_rt::task::JoinHandle<()>>,
    /// The acceptor of agent connections (stopped first when the node drains).
    pub(super) agents_accept: actix_rt::task::JoinHandle<()>,
    /// Worker: how its agents are drained on a graceful stop (`[agents] drain_timeout`, `drain_rate`).
    pub(super) drain: wazuh_cluster_actors::agents::messages::Drain,
    pub(super) analysis: Option<Arc<AnalysisQueue>>,
    pub(super) agent_counters: Option<Arc<AgentCounters>>,
    /// Cut when an actor the node cannot run without dies (see `supervise::Lifeline`).
    pub lifeline: Lifeline,
}

/// What start-up makes before anything listens: the node's identity, its open-file budget, the
/// API's guard, the TLS configurations and the channel settings.
struct Prepared {
    name: String,
    budget: Budget,
    access: crate::api::Access,
    settings: Arc<ChannelSettings>,
    policy: Arc<EnrollmentPolicy>,
    enrollment_tls: Arc<rustls::ServerConfig>,
    api_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Every socket the node listens on, bound.
struct Sockets {
    enrollment: (TcpListener, SocketAddr),
    agents: (TcpListener, SocketAddr),
    api: (std::net::TcpListener, SocketAddr),
    /// The master's 1516.
    cluster: Option<(TcpListener, SocketAddr)>,
}

/// The store, opened and wired to the agents' keys and the API's users: the registry (with the
/// node records) on a master, the replica on a worker.
enum Store {
    Master(Box<Registry>, Box<Admission>),
    Worker(Box<Replica>),
}

/// What the node's actors have been started as.
struct Started {
    handle: NodeHandle,
    enroller: Enroller,
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
}

/// Starts the node's actors, enrollment listener and API. Must run inside an actix system.
///
/// In phases: everything that can fail comes first, before any actor exists (prepare, bind, open
/// the store, the agents' shared state); then the actors (a master's or a worker's); then the
/// listeners are served.
pub async fn start(config: &Config, psk: Psk) -> anyhow::Result<RunningNode> {
    let prepared = prepare(config, psk)?;
    let sockets = bind_all(config).await?;
    let keys = Arc::new(KeyIndex::default());
    let store = open_store(config, &prepared, &keys)?;
    let (shared, analysis, agent_counters) = agents_shared(config, &prepared.name, keys)?;
    let lifeline = Lifeline::default();
    let seeds = seed_users(config);
    let Sockets { enrollment, agents, api, cluster } = sockets;
    let started = match (store, cluster) {
        (Store::Master(registry, admission), Some(cluster)) => {
            start_master(config, &prepared, *registry, *admission, cluster, &shared, seeds, &lifeline).await?
        }
        (Store::Worker(replica), None) => start_worker(config, &prepared, *replica, &shared, &lifeline)?,
        _ => anyhow::bail!("node.role and the cluster settings disagree"),
    };
    let Started { handle, enroller, mut tasks } = started;
    let Prepared { budget, access, policy, enrollment_tls, api_tls, settings, .. } = prepared;
    let reads = settings.api_calls.clone();

    // Then the listeners are served.
    let (enroll_listener, enrollment_addr) = enrollment;
    let enroll_settings = Arc::new(EnrollmentSettings {
        node_name: handle.name().to_string(),
        password: config.enrollment.password.clone(),
        timeout: config.enrollment.timeout,
        max_per_address: config.enrollment.max_per_address,
        tls: enrollment_tls,
        policy,
        unsaid: Default::default(),
    });
    let enrollments = (budget.enrollment as usize, config.enrollment.max_per_address);
    tasks.push(enrollment::serve(enroll_listener, enroll_settings, enroller, enrollments));
    info!(node = handle.name(); "enrollment listening on {enrollment_addr} (TLS)");
    if let Some(counters) = &agent_counters {
        tasks.push(actix_rt::spawn(keep_counters(counters.clone(), handle.name().to_string())));
    }
    let (agent_tcp, agents_addr) = agents;
    let places = config.agents.max_connections.map_or(budget.agents, |n| n.min(budget.agents));
    let agent_pool = Pool::new(places as usize, config.agents.max_pending_per_address);
    let agents_accept = actix_rt::spawn(session::serve(agent_tcp, AgentHub::link(handle.hub()), shared, agent_pool));
    info!(node = handle.name(); "agent connections listening on {agents_addr}");
    let (api_listener, api_addr) = api;
    let info = crate::api::NodeInfo {
        cluster: config.cluster.name.clone(),
        data_dir: config.node.data_dir.display().to_string(),
    };
    let limits = crate::api::ApiLimits {
        max_connections: budget.api as usize,
        per_address: config.api.max_connections_per_address,
        handshake_timeout: config.api.handshake_timeout,
        header_timeout: config.api.header_timeout,
    };
    let api = match crate::api::start(api_listener, handle.clone(), access, limits, api_tls, info, &reads) {
        Ok(api) => api,
        Err(e) => {
            // The actors exist now: stop them and let them run their stop before returning.
            kill_actors(&handle);
            for t in &tasks {
                t.abort();
            }
            tokio::task::yield_now().await;
            return Err(e).with_context(|| format!("cannot serve the API on {api_addr}"));
        }
    };
    info!(node = handle.name(); "API listening on {}://{api_addr}", if config.api.tls { "https" } else { "http" });
    // The Wazuh daemons around the node (`[manager]`), once everything they reach runs.
    match crate::manager::start(&config.manager, &handle) {
        Ok(started) => tasks.extend(started),
        Err(e) => {
            kill_actors(&handle);
            for t in &tasks {
                t.abort();
            }
            tokio::task::yield_now().await;
            return Err(e).context("cannot start the manager integrations ([manager])");
        }
    }
    // A test build may be told to block its event loop, or make one of its actors panic (see
    // `actors::testing`).
    wazuh_cluster_actors::testing::stall_on_cue(handle.name());
    wazuh_cluster_actors::testing::panic_on_cue(wazuh_cluster_actors::testing::Vitals {
        node: handle.name().to_string(),
        listener: match &handle {
            NodeHandle::Master { listener, .. } => Some(listener.clone()),
            NodeHandle::Worker { .. } => None,
        },
        link: match &handle {
            NodeHandle::Worker { link, .. } => Some(link.clone()),
            NodeHandle::Master { .. } => None,
        },
        hub: handle.hub().clone(),
        ruleset: handle.ruleset().map(|(reloader, _)| reloader.clone()),
    });
    let drain = wazuh_cluster_actors::agents::messages::Drain {
        rate: config.agents.drain_rate,
        deadline: config.agents.drain_timeout,
    };
    Ok(RunningNode {
        handle,
        api_addr,
        enrollment_addr,
        agents_addr,
        api,
        tasks,
        agents_accept,
        drain,
        analysis,
        agent_counters,
        lifeline,
    })
}

/// The data dir, the node's identity, the open-file budget, the API's guard, TLS and the channel
/// settings.
fn prepare(config: &Config, psk: Psk) -> anyhow::Result<Prepared> {
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create node.data_dir {}", data_dir.display()))?;
    let name = config.node.name.clone();
    let (identity, made) = load_or_create_identity(data_dir)?;
    if made {
        info!(node = name.as_str(); "made this node's identity key {} (identity {})", data_dir.join(IDENTITY_FILE).display(), identity.public_key().fingerprint());
    }
    // The open-file limit, split between what must keep working and what strangers can reach.
    let limit = wazuh_cluster_actors::budget::set_open_files(config.node.max_open_files)
        .context("cannot read or set the open-file limit (RLIMIT_NOFILE)")?;
    let budget = Budget::plan(limit, config.node.role, config.api.max_connections as u64)?;
    info!(node = name.as_str(); "{}", budget.describe());
    let access = api_access(config)?;
    // Changes a worker forwards are checked with the same rules as this node's own API.
    let admin = (config.api.token.is_some() || !config.api.users.is_empty()).then(|| access.admin_check());
    // The cluster's enrollment policy (the master's: a worker passes the agent's password and
    // certificate on for the master to check; its own ca_file, if any, holds too).
    let ca = match &config.enrollment.ca_file {
        Some(path) => Some(Arc::new(ClientCa::load(path).context("enrollment.ca_file")?)),
        None => None,
    };
    let forwards = config.node.role == Role::Worker || config.cluster.raft_id.is_some();
    let client_auth = match (&ca, forwards) {
        (Some(ca), _) => ClientAuth::Require(ca.clone()),
        (None, true) => ClientAuth::Collect,
        (None, false) => ClientAuth::None,
    };
    let policy = Arc::new(match config.node.role {
        Role::Master => {
            EnrollmentPolicy::new(config.enrollment.password.clone(), ca.clone(), config.enrollment.max_per_second)
        }
        Role::Worker => EnrollmentPolicy::default(),
    });
    let enrollment_tls = enrollment::tls_config(data_dir, &name, client_auth).context("enrollment TLS")?;
    let mut settings = channel_settings(config, psk, Arc::new(identity), admin)?;
    settings.max_handshakes = budget.handshakes.max(1) as usize;
    settings.enrollment = policy.clone();
    let api_tls = match config.api.tls {
        true => Some(
            enrollment::server_tls(&config.api.cert_file, &config.api.key_file, &name, "API", ClientAuth::None)
                .context("API TLS (api.cert_file, api.key_file)")?,
        ),
        false => None,
    };
    Ok(Prepared { name, budget, access, settings: Arc::new(settings), policy, enrollment_tls, api_tls })
}

/// Binds every socket the node listens on: a port taken is an error before any actor exists.
async fn bind_all(config: &Config) -> anyhow::Result<Sockets> {
    let enrollment = bind(config.enrollment.bind, "enrollment.bind").await?;
    let agents = bind(config.agents.bind, "agents.bind").await?;
    let api = std::net::TcpListener::bind(config.api.bind)
        .with_context(|| format!("cannot listen on api.bind {}", config.api.bind))?;
    let api_addr = api.local_addr().context("cannot read the bound address")?;
    let cluster = match config.node.role {
        Role::Master => Some(bind(config.cluster.bind, "cluster.bind").await?),
        Role::Worker => None,
    };
    Ok(Sockets { enrollment, agents, api: (api, api_addr), cluster })
}

/// Opens the registry (and the node records) or the replica, and ties it to the agents' keys and
/// the API's users from its first commit on.
fn open_store(config: &Config, prepared: &Prepared, keys: &Arc<KeyIndex>) -> anyhow::Result<Store> {
    let (data_dir, name) = (&config.node.data_dir, prepared.name.as_str());
    let users = prepared.access.users.clone();
    match config.node.role {
        Role::Master => {
            let mut registry = Registry::open(data_dir)
                .with_context(|| format!("cannot open the agent registry in {}", data_dir.display()))?;
            let admission = Admission::open(data_dir, prepared.settings.admission)
                .with_context(|| format!("cannot open the node records in {}", data_dir.display()))?
                .with_standing_token(prepared.settings.join_token.clone());
            let after = config.enrollment.force_after.as_millis() as u64;
            registry.replace = ReplacePolicy {
                enabled: config.enrollment.force,
                disconnected_for_ms: after,
                registered_for_ms: after,
            };
            registry.set_key_sink(keys.clone()).context("cannot read the agent registry")?;
            registry.set_user_directory(users).context("cannot read the API users")?;
            Ok(Store::Master(Box::new(registry), Box::new(admission)))
        }
        Role::Worker => {
            let (mut replica, aside) = Replica::open_or_set_aside(data_dir)
                .with_context(|| format!("cannot open the agent replica in {}", data_dir.display()))?;
            if let Some(aside) = aside {
                log::error!(node = name; "the agent replica was corrupt: set aside as {} (kept for inspection); starting an empty one, which the master fills again", aside.display());
            }
            replica.set_key_sink(keys.clone()).context("cannot read the agent replica")?;
            replica.set_user_directory(users).context("cannot read the API users")?;
            if !config.api.users.is_empty() {
                warn!(node = name; "api.users is ignored on a worker: the API's users are the master's (set them in its configuration or through the API)");
            }
            Ok(Store::Worker(Box::new(replica)))
        }
    }
}

/// The agent connections' shared state: settings, keys, the event archive, the per-agent
/// counters (with `agents.enforce_counters`) and the hand-off to analysisd (when configured).
#[allow(clippy::type_complexity)]
fn agents_shared(
    config: &Config,
    name: &str,
    keys: Arc<KeyIndex>,
) -> anyhow::Result<(Arc<Shared>, Option<Arc<AnalysisQueue>>, Option<Arc<AgentCounters>>)> {
    let data_dir = &config.node.data_dir;
    let agent_settings = AgentSettings {
        disconnection_time: config.agents.disconnection_time,
        enforce_counters: config.agents.enforce_counters,
        stall_timeout: config.agents.stall_timeout,
        auth_timeout: config.agents.auth_timeout,
        max_pending_per_address: config.agents.max_pending_per_address,
        archive_max_bytes: config.agents.archive_max_size as u64,
        archive_keep: config.agents.archive_keep,
        status_flush: JobIntervals::status_tick(config.cluster.intervals.agent_info),
        ..AgentSettings::new(name, data_dir.clone())
    };
    let archive = Archive::start(name, data_dir, agent_settings.archive_max_bytes, agent_settings.archive_keep)
        .with_context(|| format!("cannot open the event archive in {}", data_dir.display()))?;
    // With enforced counters, each agent's last pair is the node's (across connections, restarts).
    let agent_counters = config.agents.enforce_counters.then(|| Arc::new(AgentCounters::new(data_dir)));
    if let Some(counters) = &agent_counters {
        keys.follow_counters(counters.clone());
    }
    let analysis = match &config.analysis.queue {
        Some(queue) => Some(
            AnalysisQueue::start(name, queue, config.analysis.buffer)
                .context("cannot start the analysisd hand-off thread")?,
        ),
        None => None,
    };
    let shared = Arc::new(Shared {
        settings: agent_settings,
        keys,
        source: Default::default(),
        counters: ManagerCounters::new(),
        archive,
        archive_events: config.agents.archive,
        analysis: analysis.clone(),
        agent_counters: agent_counters.clone(),
        stats: Default::default(),
    });
    Ok((shared, analysis, agent_counters))
}

/// The API users of the configuration (a master applies them; a worker ignores them).
fn seed_users(config: &Config) -> Vec<SeedUser> {
    (config.api.users.iter())
        .map(|u| SeedUser { name: u.name.clone(), password_hash: u.password_hash.clone(), role: u.role })
        .collect()
}

/// The ruleset reloader, when `analysis.control` names analysisd's control socket.
fn start_reloader(config: &Config, name: &str) -> Option<super::handle::Ruleset> {
    config.analysis.control.as_ref().map(|control| {
        let health = RulesetReloader::job_health();
        let reloader =
            RulesetReloader::new(name, control.clone(), config.analysis.reload_debounce, health.clone()).launch();
        info!(node = name; "ruleset changes make analysisd at {} reload them", control.display());
        (reloader, health)
    })
}

/// A master's actors: the registry thread, Raft (with `cluster.masters`) and the leader's file
/// link, the listener on 1516, the agent hub, the configured users.
#[allow(clippy::too_many_arguments)]
async fn start_master(
    config: &Config,
    prepared: &Prepared,
    registry: Registry,
    admission: Admission,
    (listener, cluster_addr): (TcpListener, SocketAddr),
    shared: &Arc<Shared>,
    seeds: Vec<SeedUser>,
    lifeline: &Lifeline,
) -> anyhow::Result<Started> {
    let (name, settings, data_dir) = (prepared.name.clone(), prepared.settings.clone(), &config.node.data_dir);
    let started_ms = wazuh_cluster_actors::clock::now_ms();
    let mut tasks = Vec::new();
    let ruleset = start_reloader(config, &name);
    if config.cluster.raft_id.is_some() {
        registry.relax_sync_for_log().context("cannot set up the registry for a replicated log")?;
    }
    let reader = wazuh_cluster_actors::registry::reader::RegistryReader::open(data_dir, registry.summary_watch())
        .context("cannot open the agent registry for reading")?;
    let registry = StoreHandle::spawn(&format!("{name}-registry"), registry, |s| s.seq())
        .context("cannot start the registry thread")?;
    info!(node = name.as_str(); "starting master of cluster {:?} (cipher {}, admission {})", config.cluster.name, config.cluster.cipher, admission.mode);
    let writes = match config.cluster.raft_id {
        None => Writes::local(registry.clone()),
        Some(id) => {
            let masters = &config.cluster.masters;
            info!(node = name.as_str(); "master-eligible node {id} of {}: the Raft leader among {} acts as the master", masters.len(), masters.join(", "));
            let raft = wazuh_cluster_actors::consensus::start_member(
                id,
                masters,
                settings.clone(),
                registry.clone(),
                data_dir,
                wazuh_cluster_actors::consensus::Timing::DEFAULT,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            Writes::replicated(registry.clone(), raft)
        }
    };
    let (file_link, leader_link) = tokio::sync::watch::channel(None);
    if let Some(raft) = writes.raft().cloned() {
        let follow = LeaderFiles {
            link: file_link,
            settings: Arc::new(ChannelSettings { role: Role::Worker, ..(*settings).clone() }),
            // The others (dialling itself would only be refused).
            masters: (config.cluster.masters.iter().enumerate())
                .filter(|(i, _)| Some(*i as u64 + 1) != config.cluster.raft_id)
                .map(|(_, m)| m.clone())
                .collect(),
            ruleset: ruleset.clone(),
            seeds: seeds.clone(),
            writes: writes.clone(),
            lifeline: lifeline.clone(),
        };
        tasks.push(actix_rt::spawn(follow.run(raft)));
    }
    let settle = wazuh_cluster_actors::jobs::master::set::settle_timeout(&settings);
    let listener = MasterListener::start(listener, settings, writes.clone(), admission, lifeline.clone())
        .context("cannot start the master")?;
    let positions = listener.send(master::GetPositions).await.context("the master stopped at once")?;
    // The configured users: applied now by a lone master; by whichever master-eligible node leads
    // (see LeaderFiles).
    if writes.raft().is_none() && !seeds.is_empty() {
        let applied = writes.seed_users(seeds).await.context("cannot apply api.users")?;
        if !applied.is_empty() {
            info!(node = name.as_str(); "API users from the configuration applied: {}", applied.join(", "));
        }
    }
    let _ = shared.source.set(KeySource::Master(registry.clone()));
    let agents = AgentHub::new(shared.clone(), KeySource::Master(registry.clone())).launch(lifeline.clone());
    // File changes on the master make the hub push new merged.mg files to its agents.
    let changes = listener.send(master::SubscribeFiles).await.context("the master stopped at once")?;
    let reloader = ruleset.as_ref().map(|(addr, _)| addr.clone());
    tasks.push(actix_rt::spawn(forward_file_changes(changes, agents.clone(), reloader)));
    let enroller = match writes.raft() {
        Some(_) => Enroller::MasterEligible(writes.clone(), leader_link),
        None => Enroller::Master(writes.clone()),
    };
    let handle = NodeHandle::Master {
        name,
        listener,
        cluster_addr,
        started_ms,
        registry,
        reader: Arc::new(reader),
        writes,
        agents,
        ruleset,
        data_dir: data_dir.clone(),
        positions,
        settle,
        users: prepared.access.users.clone(),
        manager: Default::default(),
    };
    crate::manager::install_relays(&prepared.settings.agent_relays, handle.clone());
    Ok(Started { handle, enroller, tasks })
}

/// A worker's actors: the replica thread, the agent hub and the link to the master.
fn start_worker(
    config: &Config,
    prepared: &Prepared,
    replica: Replica,
    shared: &Arc<Shared>,
    lifeline: &Lifeline,
) -> anyhow::Result<Started> {
    let name = prepared.name.clone();
    let master = config.cluster.master.clone().context("cluster.master is required for a worker")?;
    let started_ms = wazuh_cluster_actors::clock::now_ms();
    let ruleset = start_reloader(config, &name);
    let replica = StoreHandle::spawn(&format!("{name}-replica"), replica, |s| s.seq())
        .context("cannot start the replica thread")?;
    info!(node = name.as_str(); "starting worker of cluster {:?} (cipher {})", config.cluster.name, config.cluster.cipher);
    let _ = shared.source.set(KeySource::Worker(replica.clone()));
    let agents = AgentHub::new(shared.clone(), KeySource::Worker(replica.clone())).launch(lifeline.clone());
    let services = WorkerServices {
        replica: replica.clone(),
        agents: Some(agents.clone()),
        ruleset: ruleset.clone(),
        tree: Arc::new(tokio::sync::watch::Sender::new(String::new())),
        files_only: false,
    };
    let link = WorkerLink::new(prepared.settings.clone(), master.clone(), services)
        .following(config.cluster.masters.clone())
        .launch(lifeline.clone());
    let handle = NodeHandle::Worker {
        name,
        link: link.clone(),
        master,
        started_ms,
        replica,
        agents,
        ruleset,
        data_dir: config.node.data_dir.clone(),
        users: prepared.access.users.clone(),
        manager: Default::default(),
    };
    Ok(Started { handle, enroller: Enroller::Worker(link), tasks: Vec::new() })
}

/// Carries the master's file changes to its agent hub (merged.mg pushes) and, when they touch the
/// ruleset, to its ruleset reloader.
async fn forward_file_changes(
    mut changes: tokio::sync::broadcast::Receiver<wazuh_cluster_actors::jobs::local::FilesChanged>,
    hub: Addr<AgentHub>,
    ruleset: Option<Addr<RulesetReloader>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let paths = match changes.recv().await {
            Ok(change) => change.delta.as_ref().map(|d| d.paths()),
            // Missed some: any group may have changed.
            Err(RecvError::Lagged(_)) => None,
            Err(RecvError::Closed) => return,
        };
        let touches_ruleset = paths.as_ref().is_none_or(|p| p.iter().any(|p| in_ruleset(p)));
        if let (true, Some(reloader)) = (touches_ruleset, &ruleset) {
            reloader.do_send(RulesetChanged);
        }
        if hub.send(SharedChanged(paths)).await.is_err() {
            return;
        }
    }
}

/// Writes the agents' changed message counters every few seconds (off the actors' thread).
pub(super) async fn keep_counters(counters: Arc<AgentCounters>, node: String) {
    let mut said = wazuh_cluster_actors::throttle::Throttle::new(std::time::Duration::from_secs(60));
    loop {
        tokio::time::sleep(wazuh_cluster_actors::agents::counters::FLUSH_EVERY).await;
        let c = counters.clone();
        if let Ok(Err(e)) = actix_rt::task::spawn_blocking(move || c.flush()).await {
            if let Some(n) = said.allow() {
                warn!(node = node.as_str(); "cannot write the agents' message counters under {}: {e}{}", wazuh_cluster_actors::agents::counters::RIDS_DIR, wazuh_cluster_actors::throttle::suppressed(n));
            }
        }
    }
}

pub(super) fn kill_actors(handle: &NodeHandle) {
    match handle {
        NodeHandle::Master { listener, .. } => listener.do_send(Kill),
        NodeHandle::Worker { link, .. } => link.do_send(Kill),
    }
}
