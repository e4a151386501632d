//! Node configuration: one TOML file per node, then `WMN_` environment variables, then `--set`
//! flags, in that order of precedence (last wins). Unknown keys are errors, and every validation
//! error names the field and what it accepts.
//!
//! ```toml
//! [node]
//! name = "master-1"          # [A-Za-z0-9_-]+; default: the host name (dots become dashes)
//! role = "master"            # master | worker
//! data_dir = "/var/lib/wazuh-multi-node"
//! max_open_files = 0         # the open-file limit the node sets itself (0: the hard limit); it is
//!                            # split between files, the cluster, the API, enrollment and agents
//!                            # (check-config shows how)
//! stall_timeout = "15s"      # the node's event loop stuck this long ends the process (exit 1), for
//!                            # its supervisor to restart it (0s: off); under systemd it also pings
//!                            # the unit's WatchdogSec
//! event_loop_nice = 5        # 0-19, added to the process's nice value for the event loop's thread
//!                            # alone (agent connections, the cluster channel, the jobs): under CPU
//!                            # contention it waits for the API, enrollment and the registry's
//!                            # threads, and for a master on the same host. Default: 5 on a worker,
//!                            # 0 on a master (every worker's traffic goes through its event loop)
//!
//! [cluster]
//! name = "wazuh"
//! key_file = "/etc/wazuh-multi-node/cluster.key"   # or: key = "..." (a key given by a later source,
//!                            # e.g. WMN_CLUSTER__KEY, replaces the file's key_file)
//! bind = "0.0.0.0:1516"      # master: where workers connect
//! master = "10.0.0.1:1516"   # worker: the master's host:port
//! masters = []               # HA: 3 or 5 master-eligible nodes, "host:port" each, the same list
//!                            # in the same order on every node (a node is the entry whose host is
//!                            # its node.name, or that equals its cluster.bind); the Raft leader
//!                            # acts as the master
//! cipher = "chacha20-poly1305"   # or "aes-256-gcm"
//! max_frame = "16MiB"
//! handshake_timeout = "10s"
//!
//! request_timeout = "10s"
//! admission = "token"        # master: new workers need a join token ("open": the cluster key alone)
//! join_token = ""            # worker: from `wazuh-cluster join-token` on the master (first join only);
//!                            # master: a standing token that admits any number of new workers
//!                            # (containers; `wazuh-cluster secrets` makes one) until removed
//!
//! [cluster.intervals]
//! keepalive = "5s"           # the master drops a worker silent for 3 of these
//! reconnect_min = "250ms"    # worker redial back-off: first retry...
//! reconnect_max = "2s"       # ...and cap (at most 10s)
//! agent_info = "1s"
//! integrity = "10s"
//! local_integrity = "60s"
//! local_agent_groups = "5s"
//!
//! [cluster.rebalance]        # master: agents moved between workers to even them out
//! mode = "on"                # "on", "off" or "dry-run" (logs what it would move)
//! share = 0.2                # a worker more than this share above the mean, two checks running...
//! every = "5s"               # ...checked this often, is brought down to the mean...
//! max_per_second = 50        # ...this many agents a second at most, in all...
//! away = "60s"               # ...each refused by the worker it left this long (server lists)
//! steer = true               # agents moved to fill a worker far below the mean are refused by the
//!                            # others too, so they go on to it (with long server lists, each
//!                            # refusing server costs an agent max_retries x retry_interval)
//!
//! [enrollment]
//! bind = "0.0.0.0:1515"
//! password = ""              # empty: no password
//! timeout = "10s"            # TLS + request line must arrive within this
//! max_per_address = 1024     # enrollments in progress from one address, at most
//! force = true               # a new enrollment may replace an agent of the same name or IP...
//! force_after = "1h"         # ...disconnected (or never connected) and registered this long
//! ca_file = ""               # set: agents need a client certificate signed by this CA
//!                            # (the master's password and CA apply through every node: a worker
//!                            # passes the agent's on to the master, which checks them)
//! max_per_second = 0         # master: enrollments per second for the whole cluster (0: no limit)
//!
//! [agents]
//! bind = "0.0.0.0:1514"
//! disconnection_time = "15m" # an agent silent this long is `disconnected` (Wazuh: 900 s)
//! enforce_counters = false   # refuse replayed messages (Wazuh's default: record only)
//! stall_timeout = "30s"      # a frame started and not finished within this closes the connection
//! auth_timeout = "30s"       # a connection that speaks for no agent within this is closed
//! max_pending_per_address = 4096  # connections of one address not yet speaking for an agent, at most
//!                                 # (many agents behind one NAT address reconnect at once)
//! max_connections = 0        # agent connections at once (0: the open-file limit's share); when
//!                            # full, the oldest one that speaks for no agent yet is closed first
//! archive_max_size = "100MiB"  # events archive (var/archives/events.jsonl) rotates above this...
//! archive_keep = 5           # ...keeping this many old files
//! archive = true             # false: no events archive (with [analysis], analysisd has them)
//! drain_timeout = "30s"      # worker, on SIGTERM: asks its agents to reconnect elsewhere and waits
//!                            # for them to go, this long at most (0s: no drain), then stops
//! drain_rate = 200           # ...asking at most this many agents per second
//!
//! [analysis]                 # the hand-off to wazuh-analysisd; off unless queue is set
//! queue = ""                 # its event socket; relative to data_dir ("queue/sockets/queue" in a Wazuh install)
//! control = ""               # its control socket, for ruleset reloads ("queue/sockets/analysis", Wazuh 4.13+)
//! buffer = "16MiB"           # events held while analysisd is away or slow; past it they are dropped (counted)
//! reload_debounce = "1s"     # ruleset changes closer together than this make one reload
//!
//! [manager]                  # inside a Wazuh install: the work remoted and authd did for the daemons
//!                            # around them; each is off unless set: true (Wazuh's path) or a path
//! active_response = false    # read analysisd's active-response queue ("queue/alerts/ar") and send
//!                            # each request to its agents, wherever they are connected
//! requests = false           # serve remoted's request socket ("queue/sockets/remote") for any agent
//! wazuh_db = false           # keep wazuh-db's agent table ("queue/db/wdb") in step with the cluster
//! wazuh_db_interval = "10s"  # ...bringing keep-alives and statuses up to date this often
//! queue = 1024               # active responses waiting to be sent; past it they are dropped (counted)
//! request_timeout = "30s"    # how long a request's client waits for the agent's answer
//!
//! [api]
//! bind = "127.0.0.1:55000"
//! tls = true                 # HTTPS; false: plain HTTP
//! cert_file = ""             # default var/api.crt and var/api.key, self-signed at the first start
//! key_file = ""
//! token = ""                 # a static administrator credential (Authorization: Bearer ...)
//! secret = ""                # signs the users' tokens; the same on every node (>= 32 characters)
//! token_lifetime = "900s"
//! # [[api.users]]            # POST /security/user/authenticate with HTTP Basic -> a token
//! # name = "wazuh"
//! # password_hash = "$argon2id$..."   # wazuh-cluster hash-password
//! # role = "administrator"   # or readonly
//! allowed_hosts = ""         # host names accepted in `Host:` besides IP literals and localhost
//! metrics_public = false     # true: /metrics without credentials
//! max_connections = 256      # connections served at once
//! max_connections_per_address = 32  # connections of one address at once; more are closed at once
//! handshake_timeout = "3s"   # a client must finish TLS within this...
//! header_timeout = "5s"      # ...and send its first request head within this
//! max_login_attempts = 50    # failed sign-ins from one address that block it (Wazuh's access settings)...
//! block_time = "300s"        # ...within this time of its first failure, until that time has passed
//!
//! [log]
//! format = "text"            # text | json
//! level = "info"             # RUST_LOG, when set, wins
//! ```

use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wazuh_cluster_protocol::handshake::{check_node_name, MAX_NAME_LEN};
use wazuh_cluster_protocol::{CipherSuite, ClusterKey, Role};

/// Prefix of environment overrides; levels are separated by `__`: `WMN_CLUSTER__KEY`.
pub const ENV_PREFIX: &str = "WMN_";
const ENV_SEPARATOR: &str = "__";

/// Smallest and largest allowed `cluster.max_frame`.
pub const MIN_MAX_FRAME: usize = 64 * 1024;
pub const MAX_MAX_FRAME: usize = 16 * 1024 * 1024;

/// A configuration error; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Load(String),
    #[error("invalid configuration: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.to_string(), message: message.into() }
}

// ---- the validated configuration ----

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Things worth telling the operator once logging is up (for example a loose key file mode).
    #[serde(skip)]
    pub warnings: Vec<String>,
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub enrollment: EnrollmentConfig,
    pub agents: AgentsConfig,
    pub analysis: AnalysisConfig,
    pub manager: ManagerConfig,
    pub api: ApiConfig,
    pub log: LogConfig,
}

/// The hand-off to wazuh-analysisd (off unless `queue` is set).
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisConfig {
    /// analysisd's event queue (a Unix datagram socket); relative paths are under `node.data_dir`.
    pub queue: Option<PathBuf>,
    /// analysisd's control socket (Unix stream), for `reload-ruleset` after a sync round.
    pub control: Option<PathBuf>,
    /// Bytes of events held while analysisd is away or slow; past this, events are dropped.
    pub buffer: usize,
    /// Changes to the ruleset closer together than this make one reload.
    #[serde(serialize_with = "ser_duration")]
    pub reload_debounce: Duration,
}

/// The Wazuh daemons around the node, in a Wazuh install (each off unless set).
#[derive(Debug, Clone, Serialize)]
pub struct ManagerConfig {
    /// analysisd's active-response queue (Unix datagram), which the node binds and reads.
    pub active_response: Option<PathBuf>,
    /// remoted's request socket (Unix stream), which the node serves.
    pub requests: Option<PathBuf>,
    /// wazuh-db's socket (Unix stream), whose agent table the node keeps in step.
    pub wazuh_db: Option<PathBuf>,
    /// How often wazuh-db's agent rows are brought up to date.
    #[serde(serialize_with = "ser_duration")]
    pub wazuh_db_interval: Duration,
    /// Active responses waiting to be sent; past this they are dropped (counted).
    pub queue: usize,
    /// How long a request socket client waits for the agent's answer.
    #[serde(serialize_with = "ser_duration")]
    pub request_timeout: Duration,
}

impl ManagerConfig {
    pub const WAZUH_AR_QUEUE: &'static str = "queue/alerts/ar";
    pub const WAZUH_REQUESTS: &'static str = "queue/sockets/remote";
    pub const WAZUH_DB: &'static str = "queue/db/wdb";

    /// The integrations turned on, by name, with their paths.
    pub fn enabled(&self) -> Vec<(&'static str, &Path)> {
        [("active_response", &self.active_response), ("requests", &self.requests), ("wazuh_db", &self.wazuh_db)]
            .into_iter()
            .filter_map(|(name, path)| path.as_deref().map(|p| (name, p)))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiConfig {
    pub bind: SocketAddr,
    /// Required (as `Authorization: Bearer <token>`) by every endpoint that changes something.
    #[serde(serialize_with = "ser_secret")]
    pub token: Option<String>,
    /// Host names (besides IP literals and `localhost`) accepted in a request's `Host` header;
    /// anything else is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// `/metrics` without credentials (for a scraper on a trusted network).
    pub metrics_public: bool,
    /// HTTPS (the default); `false` serves plain HTTP.
    pub tls: bool,
    /// The API's certificate and key (PEM); by default `var/api.crt` and `var/api.key`, made
    /// self-signed at the first start.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Signs the tokens `POST /security/user/authenticate` issues; the same on every node so that
    /// each accepts the others' tokens. `None`: a per-node secret in `var/api.secret`.
    #[serde(serialize_with = "ser_secret")]
    pub secret: Option<String>,
    #[serde(serialize_with = "ser_duration")]
    pub token_lifetime: Duration,
    pub users: Vec<crate::auth::ApiUser>,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Failed sign-ins from one address within `block_time` of its first failure that block it
    /// (Wazuh's `access.max_login_attempts` and `access.block_time`).
    pub max_login_attempts: u32,
    #[serde(serialize_with = "ser_duration")]
    pub block_time: Duration,
    /// Connections of one address at once; more are closed at once.
    pub max_connections_per_address: u32,
    /// Time a client has to finish TLS...
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    /// ...and to send its first request head.
    #[serde(serialize_with = "ser_duration")]
    pub header_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    pub data_dir: PathBuf,
    /// The open-file limit the node sets itself (at most the hard limit); `None`: the hard limit.
    /// The node splits it between files, the cluster, the API, enrollment and agents.
    pub max_open_files: Option<u64>,
    /// The event loop making no progress this long ends the process, for its supervisor to
    /// restart it (zero: off).
    #[serde(serialize_with = "ser_duration")]
    pub stall_timeout: Duration,
    /// Added to the process's nice value for the event loop's thread alone (agent connections, the
    /// cluster channel, the jobs), so that under CPU contention it yields to the threads that answer
    /// the API, take enrollments and write the registry, and to the master on a shared host.
    pub event_loop_nice: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(skip)]
    pub key: Option<ClusterKey>,
    /// Where the key came from, for display: "inline" or the key file's path.
    pub key_source: String,
    pub bind: SocketAddr,
    pub master: Option<String>,
    /// The master-eligible nodes (3 or 5 for high availability), `host:port` each, in the same
    /// order on every node; empty: one master, as before.
    pub masters: Vec<String>,
    /// A master-eligible node's Raft id: its 1-based place in `masters`.
    pub raft_id: Option<u64>,
    pub cipher: CipherSuite,
    pub max_frame: usize,
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub request_timeout: Duration,
    /// Master: how workers it does not know yet get in: "token" (a join token issued by the
    /// master) or "open" (the cluster key alone; labs).
    pub admission: String,
    /// Worker: the join token for its first connection (`wazuh-cluster join-token` on the master).
    #[serde(serialize_with = "ser_secret")]
    pub join_token: Option<String>,
    pub intervals: Intervals,
    #[serde(serialize_with = "ser_rebalance")]
    pub rebalance: wazuh_cluster_actors::master::RebalanceSettings,
}

fn ser_rebalance<S: serde::Serializer>(
    r: &wazuh_cluster_actors::master::RebalanceSettings,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(6))?;
    m.serialize_entry("mode", &r.mode)?;
    m.serialize_entry("share", &r.share)?;
    m.serialize_entry("every", &format_duration(r.every))?;
    m.serialize_entry("max_per_second", &r.max_per_second)?;
    m.serialize_entry("away", &format_duration(r.away))?;
    m.serialize_entry("steer", &r.steer)?;
    m.end()
}

#[derive(Debug, Clone, Serialize)]
pub struct Intervals {
    #[serde(serialize_with = "ser_duration")]
    pub keepalive: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub reconnect_min: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub reconnect_max: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub agent_info: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub integrity: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub local_integrity: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub local_agent_groups: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentConfig {
    pub bind: SocketAddr,
    #[serde(serialize_with = "ser_secret")]
    pub password: Option<String>,
    /// A client must finish TLS and send its request line within this time.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Whether a new enrollment may replace an agent with the same name or IP (Wazuh's `force`).
    pub force: bool,
    /// ...if that agent has been disconnected (or never connected) and registered this long.
    #[serde(serialize_with = "ser_duration")]
    pub force_after: Duration,
    /// When set, agents must present a client certificate signed by this CA (PEM).
    pub ca_file: Option<PathBuf>,
    /// Enrollments in progress from one address, at most; more connections are closed at once.
    pub max_per_address: u32,
    /// Master: enrollments per second for the whole cluster, at most (0: no limit).
    pub max_per_second: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct BindConfig {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentsConfig {
    pub bind: SocketAddr,
    #[serde(serialize_with = "ser_duration")]
    pub disconnection_time: Duration,
    pub enforce_counters: bool,
    #[serde(serialize_with = "ser_duration")]
    pub stall_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub auth_timeout: Duration,
    pub max_pending_per_address: u32,
    /// Agent connections at once, at most (below the share the open-file limit gives them, to
    /// bound memory); `None`: that share.
    pub max_connections: Option<u64>,
    pub archive_max_size: usize,
    pub archive_keep: usize,
    /// Write events to `var/archives/events.jsonl`.
    pub archive: bool,
    /// Worker, on a graceful stop: how long its agents get to reconnect elsewhere (zero: no drain).
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    /// Agents asked to reconnect per second during a drain.
    pub drain_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_secret<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_str(""),
    }
}

/// Where the configuration comes from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// Environment variables (all of them; only `WMN_*` with a `__` are used).
    pub env: Vec<(String, String)>,
    /// `--set section.key=value` overrides, applied last.
    pub overrides: Vec<(String, String)>,
    /// The machine's (or container's) host name: `node.name` when none is set.
    pub host_name: Option<String>,
}

impl Sources {
    pub fn from_process(file: Option<PathBuf>, overrides: Vec<(String, String)>) -> Self {
        Self { file, env: std::env::vars().collect(), overrides, host_name: host_name() }
    }
}

/// This host's name, from the kernel (containers and pods have their own).
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A host name as a node name: characters other than `A-Za-z0-9_-` (the dots of a domain name)
/// become `-`, cut at the longest name allowed.
pub fn node_name_from_host(host: &str) -> String {
    host.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
        .take(MAX_NAME_LEN)
        .collect()
}

/// Parses `section.key=value`.
pub fn parse_override(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_ascii_lowercase(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE (for example cluster.bind=127.0.0.1:1516), got {text:?}")),
    }
}

impl Config {
    /// Loads and validates: file, then environment, then overrides.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = &sources.file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!("{}: no such file", file.display())));
            }
            builder = builder.add_source(config::File::from(file.as_path()).format(config::FileFormat::Toml));
        }
        // Only `WMN_SECTION__KEY` variables are configuration; `WMN_API_TOKEN` and the like are
        // for the CLI and must not be read as unknown top-level keys.
        let env: HashMap<String, String> = sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k[ENV_PREFIX.len()..].contains(ENV_SEPARATOR))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .source(Some(env.clone())),
        );
        // The cluster key is one setting given two ways: a later source that gives it one way
        // replaces what an earlier one gave the other way (a file's key_file, WMN_CLUSTER__KEY).
        let later_gives = |name: &str| {
            let var = format!("{ENV_PREFIX}CLUSTER{ENV_SEPARATOR}{}", name.to_ascii_uppercase());
            env.contains_key(&var) || sources.overrides.iter().any(|(k, _)| k == &format!("cluster.{name}"))
        };
        for (given, other) in [("key", "key_file"), ("key_file", "key")] {
            if later_gives(given) && !later_gives(other) {
                builder = builder
                    .set_override(format!("cluster.{other}"), "")
                    .map_err(|e| ConfigError::Load(e.to_string()))?;
            }
        }
        for (key, value) in &sources.overrides {
            builder =
                builder.set_override(key.as_str(), value.as_str()).map_err(|e| ConfigError::Load(e.to_string()))?;
        }
        let merged = builder.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        let raw: RawConfig = merged.try_deserialize().map_err(|e| ConfigError::Load(e.to_string()))?;
        validate(raw, sources.file.as_deref(), sources.host_name.as_deref())
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut text = toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        if self.cluster.key.is_some() && self.cluster.key_source == "inline" {
            text = text.replacen("[cluster]\n", "[cluster]\nkey = \"********\"\n", 1);
        }
        text
    }
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration (for example 250ms, 5s, 2m)"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        other => return Err(format!("unknown unit {other:?} in {text:?}: use ms, s, m, h or d")),
    };
    Ok(d)
}

pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// `"16MiB"`, `"512KiB"`, `"65536"` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{text:?} is not a size (for example 16MiB, 512KiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use B, KiB or MiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large"))
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

mod raw;
mod validate;
use raw::RawConfig;
use validate::validate;

#[cfg(test)]
mod tests;
