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
//!
//! [analysis]                 # the hand-off to wazuh-analysisd; off unless queue is set
//! queue = ""                 # its event socket; relative to data_dir ("queue/sockets/queue" in a Wazuh install)
//! control = ""               # its control socket, for ruleset reloads ("queue/sockets/analysis", Wazuh 4.13+)
//! buffer = "16MiB"           # events held while analysisd is away or slow; past it they are dropped (counted)
//! reload_debounce = "1s"     # ruleset changes closer together than this make one reload
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

use serde::{Deserialize, Serialize};
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

// ---- the file as written: every key optional, unknown keys refused ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    node: RawNode,
    cluster: RawCluster,
    enrollment: RawEnrollment,
    agents: RawAgents,
    analysis: RawAnalysis,
    api: RawApi,
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    bind: Option<String>,
    token: Option<String>,
    secret: Option<String>,
    token_lifetime: Option<String>,
    users: Option<Vec<RawUser>>,
    allowed_hosts: Option<String>,
    metrics_public: Option<bool>,
    tls: Option<bool>,
    cert_file: Option<String>,
    key_file: Option<String>,
    max_connections: Option<usize>,
    max_login_attempts: Option<u32>,
    block_time: Option<String>,
    max_connections_per_address: Option<u32>,
    handshake_timeout: Option<String>,
    header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNode {
    name: Option<String>,
    role: Option<String>,
    data_dir: Option<String>,
    max_open_files: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCluster {
    name: Option<String>,
    key: Option<String>,
    key_file: Option<String>,
    bind: Option<String>,
    master: Option<String>,
    masters: Option<StrOrList>,
    cipher: Option<String>,
    max_frame: Option<String>,
    handshake_timeout: Option<String>,
    request_timeout: Option<String>,
    admission: Option<String>,
    join_token: Option<String>,
    intervals: RawIntervals,
}

/// A list given as a TOML array, or as one comma-separated string (environment, `--set`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StrOrList {
    One(String),
    Many(Vec<String>),
}

impl StrOrList {
    fn items(self) -> Vec<String> {
        let all = match self {
            StrOrList::One(s) => s.split(',').map(String::from).collect(),
            StrOrList::Many(v) => v,
        };
        all.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIntervals {
    keepalive: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
    agent_info: Option<String>,
    integrity: Option<String>,
    local_integrity: Option<String>,
    local_agent_groups: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEnrollment {
    bind: Option<String>,
    password: Option<String>,
    timeout: Option<String>,
    force: Option<bool>,
    force_after: Option<String>,
    ca_file: Option<String>,
    max_per_address: Option<u32>,
    max_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAgents {
    bind: Option<String>,
    disconnection_time: Option<String>,
    enforce_counters: Option<bool>,
    stall_timeout: Option<String>,
    auth_timeout: Option<String>,
    max_pending_per_address: Option<u32>,
    max_connections: Option<u64>,
    archive_max_size: Option<String>,
    archive_keep: Option<usize>,
    archive: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUser {
    name: Option<String>,
    password_hash: Option<String>,
    role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAnalysis {
    queue: Option<String>,
    control: Option<String>,
    buffer: Option<String>,
    reload_debounce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
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

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn validate(raw: RawConfig, file: Option<&Path>, host_name: Option<&str>) -> Result<Config, ConfigError> {
    let RawConfig { node, cluster, enrollment, agents, analysis, api, log } = raw;
    let mut warnings = Vec::new();

    let name = non_empty(node.name)
        .or_else(|| host_name.map(node_name_from_host).filter(|n| !n.is_empty()))
        .ok_or_else(|| invalid("node.name", "is required ([A-Za-z0-9_-]+; no host name to use instead)"))?;
    check_node_name(&name).map_err(|reason| invalid("node.name", format!("{name:?}: {reason}")))?;
    let role = match non_empty(node.role).as_deref() {
        Some("master") => Role::Master,
        Some("worker") => Role::Worker,
        Some(other) => {
            return Err(invalid("node.role", format!("{other:?} is not allowed: use \"master\" or \"worker\"")))
        }
        None => return Err(invalid("node.role", "is required: \"master\" or \"worker\"")),
    };
    let data_dir = PathBuf::from(non_empty(node.data_dir).unwrap_or_else(|| "/var/lib/wazuh-multi-node".into()));
    let max_open_files = match node.max_open_files {
        Some(0) | None => None,
        Some(n) if n < 512 => return Err(invalid("node.max_open_files", format!("{n} is below 512"))),
        Some(n) => Some(n),
    };

    let cluster_name = non_empty(cluster.name).unwrap_or_else(|| "wazuh".into());
    if cluster_name.len() > MAX_NAME_LEN || cluster_name.chars().any(|c| c.is_control()) {
        return Err(invalid("cluster.name", format!("at most {MAX_NAME_LEN} printable characters")));
    }
    let (key, key_source) =
        match (non_empty(cluster.key), non_empty(cluster.key_file)) {
            (Some(_), Some(_)) => {
                return Err(invalid("cluster.key", "set either cluster.key or cluster.key_file, not both"))
            }
            (Some(text), None) => {
                (ClusterKey::new(&text).map_err(|e| invalid("cluster.key", e.to_string()))?, "inline".to_string())
            }
            (None, Some(path)) => {
                let path = resolve(file, &path);
                (read_key_file(&path, &mut warnings)?, path.display().to_string())
            }
            (None, None) => return Err(invalid(
                "cluster.key",
                "a cluster key is required: set cluster.key or cluster.key_file (make one with `wazuh-cluster keygen`)",
            )),
        };
    let bind = parse_addr("cluster.bind", cluster.bind, "0.0.0.0:1516")?;
    let mut master = non_empty(cluster.master);
    if let Some(m) = &master {
        check_host_port("cluster.master", m)?;
    }
    let masters = cluster.masters.map(StrOrList::items).unwrap_or_default();
    for m in &masters {
        check_host_port("cluster.masters", m)?;
    }
    if masters.iter().enumerate().any(|(i, m)| masters[..i].contains(m)) {
        return Err(invalid("cluster.masters", "an address is listed twice"));
    }
    if !matches!(masters.len(), 0 | 1 | 3 | 5) {
        return Err(invalid(
            "cluster.masters",
            format!(
                "{} master-eligible nodes: use 1, 3 or 5 (an even number survives no more failures than one fewer)",
                masters.len()
            ),
        ));
    }
    let raft_id = match role {
        Role::Master if masters.len() > 1 => {
            // This node is the entry whose host is its name, or the entry equal to its bind address.
            let me = masters.iter().position(|m| {
                m.rsplit_once(':').is_some_and(|(host, _)| host == name) || m.parse::<SocketAddr>().ok() == Some(bind)
            });
            match me {
                Some(i) => Some(i as u64 + 1),
                None => {
                    return Err(invalid(
                        "cluster.masters",
                        format!("none of the entries is this node: one must be {name}:<port> (node.name) or equal cluster.bind ({bind})"),
                    ))
                }
            }
        }
        _ => None,
    };
    if role == Role::Worker && master.is_none() {
        // A worker of an HA cluster dials the master-eligible nodes; the first to start with.
        master = masters.first().cloned();
    }
    if role == Role::Worker && master.is_none() {
        return Err(invalid("cluster.master", "a worker needs the master's host:port (or cluster.masters)"));
    }
    let cipher = match non_empty(cluster.cipher) {
        Some(c) => c.parse::<CipherSuite>().map_err(|e| invalid("cluster.cipher", e.to_string()))?,
        None => CipherSuite::default(),
    };
    let max_frame = match non_empty(cluster.max_frame) {
        Some(text) => parse_size(&text).map_err(|e| invalid("cluster.max_frame", e))?,
        None => MAX_MAX_FRAME,
    };
    if !(MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&max_frame) {
        return Err(invalid("cluster.max_frame", format!("{max_frame} bytes is out of range: 64KiB..=16MiB")));
    }
    let handshake_timeout = duration_field(
        "cluster.handshake_timeout",
        cluster.handshake_timeout,
        "10s",
        Duration::from_millis(50),
        Duration::from_secs(300),
    )?;
    let i = cluster.intervals;
    let keepalive = duration_field(
        "cluster.intervals.keepalive",
        i.keepalive,
        "5s",
        Duration::from_millis(10),
        Duration::from_secs(600),
    )?;
    let reconnect_min = duration_field(
        "cluster.intervals.reconnect_min",
        i.reconnect_min,
        "250ms",
        Duration::from_millis(1),
        Duration::from_secs(60),
    )?;
    // 2 s: a worker is back within 2 s of its master listening again, however long the outage was.
    let reconnect_max = duration_field(
        "cluster.intervals.reconnect_max",
        i.reconnect_max,
        "2s",
        Duration::from_millis(1),
        Duration::from_secs(10),
    )?;
    let ms = Duration::from_millis;
    let hour = Duration::from_secs(3600);
    let agent_info = duration_field("cluster.intervals.agent_info", i.agent_info, "1s", ms(10), hour)?;
    let integrity = duration_field("cluster.intervals.integrity", i.integrity, "10s", ms(10), hour)?;
    let local_integrity = duration_field("cluster.intervals.local_integrity", i.local_integrity, "60s", ms(10), hour)?;
    let local_agent_groups =
        duration_field("cluster.intervals.local_agent_groups", i.local_agent_groups, "5s", ms(10), hour)?;
    let request_timeout =
        duration_field("cluster.request_timeout", cluster.request_timeout, "10s", ms(10), Duration::from_secs(300))?;
    if reconnect_max < reconnect_min {
        return Err(invalid("cluster.intervals.reconnect_max", "must not be smaller than reconnect_min"));
    }
    let admission = non_empty(cluster.admission).unwrap_or_else(|| "token".into());
    if let Err(e) = admission.parse::<wazuh_cluster_actors::admission::AdmissionMode>() {
        return Err(invalid("cluster.admission", e.to_string()));
    }
    let join_token = non_empty(cluster.join_token);
    if let Some(t) = &join_token {
        if let Err(e) = wazuh_cluster_protocol::identity::JoinToken::parse(t) {
            return Err(invalid("cluster.join_token", e.to_string()));
        }
    }

    let enrollment = EnrollmentConfig {
        bind: parse_addr("enrollment.bind", enrollment.bind, "0.0.0.0:1515")?,
        password: non_empty(enrollment.password),
        timeout: duration_field("enrollment.timeout", enrollment.timeout, "10s", ms(10), Duration::from_secs(300))?,
        force: enrollment.force.unwrap_or(true),
        force_after: duration_field(
            "enrollment.force_after",
            enrollment.force_after,
            "1h",
            Duration::ZERO,
            Duration::from_secs(365 * 86400),
        )?,
        ca_file: non_empty(enrollment.ca_file).map(|p| resolve(file, &p)),
        max_per_address: match enrollment.max_per_address {
            Some(0) => return Err(invalid("enrollment.max_per_address", "must be at least 1")),
            Some(n) => n,
            None => 1024,
        },
        max_per_second: enrollment.max_per_second.unwrap_or(0),
    };
    let archive_max_size = match non_empty(agents.archive_max_size) {
        Some(text) => parse_size(&text).map_err(|e| invalid("agents.archive_max_size", e))?,
        None => 100 << 20,
    };
    if archive_max_size < 4096 {
        return Err(invalid("agents.archive_max_size", format!("{archive_max_size} bytes is below 4KiB")));
    }
    let agents = AgentsConfig {
        bind: parse_addr("agents.bind", agents.bind, "0.0.0.0:1514")?,
        disconnection_time: duration_field(
            "agents.disconnection_time",
            agents.disconnection_time,
            "15m",
            Duration::from_secs(1),
            Duration::from_secs(7 * 24 * 3600),
        )?,
        enforce_counters: agents.enforce_counters.unwrap_or(false),
        stall_timeout: duration_field(
            "agents.stall_timeout",
            agents.stall_timeout,
            "30s",
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?,
        auth_timeout: duration_field(
            "agents.auth_timeout",
            agents.auth_timeout,
            "30s",
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?,
        max_pending_per_address: match agents.max_pending_per_address {
            Some(0) => return Err(invalid("agents.max_pending_per_address", "must be at least 1")),
            Some(n) => n,
            None => 4096,
        },
        max_connections: match agents.max_connections {
            Some(0) | None => None,
            Some(n) => Some(n),
        },
        archive_max_size,
        archive_keep: agents.archive_keep.unwrap_or(5).min(100),
        archive: agents.archive.unwrap_or(true),
    };
    let under_data_dir = |p: String| {
        let p = PathBuf::from(p);
        if p.is_relative() {
            data_dir.join(p)
        } else {
            p
        }
    };
    let buffer = match non_empty(analysis.buffer) {
        Some(text) => parse_size(&text).map_err(|e| invalid("analysis.buffer", e))?,
        None => 16 << 20,
    };
    if !(64 << 10..=4 << 30).contains(&buffer) {
        return Err(invalid("analysis.buffer", "between 64KiB and 4GiB"));
    }
    let analysis = AnalysisConfig {
        queue: non_empty(analysis.queue).map(under_data_dir),
        control: non_empty(analysis.control).map(under_data_dir),
        buffer,
        reload_debounce: duration_field(
            "analysis.reload_debounce",
            analysis.reload_debounce,
            "1s",
            Duration::from_millis(10),
            Duration::from_secs(600),
        )?,
    };
    let api_token = non_empty(api.token);
    if api_token.as_ref().is_some_and(|t| t.len() < 16 || t.chars().any(|c| !c.is_ascii_graphic())) {
        return Err(invalid("api.token", "at least 16 printable characters without spaces"));
    }
    let allowed_hosts: Vec<String> = non_empty(api.allowed_hosts)
        .map(|t| t.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect())
        .unwrap_or_default();
    if let Some(bad) =
        allowed_hosts.iter().find(|h| !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
    {
        return Err(invalid("api.allowed_hosts", format!("{bad:?} is not a host name (comma-separated names)")));
    }
    let max_connections = api.max_connections.unwrap_or(256);
    if !(1..=25_000).contains(&max_connections) {
        return Err(invalid("api.max_connections", "between 1 and 25000"));
    }
    let secret = non_empty(api.secret);
    if secret.as_ref().is_some_and(|t| t.len() < 32) {
        return Err(invalid("api.secret", "at least 32 characters (the same on every node)"));
    }
    let mut users = Vec::new();
    for (i, u) in api.users.unwrap_or_default().into_iter().enumerate() {
        let field = format!("api.users[{i}]");
        let name = non_empty(u.name).ok_or_else(|| invalid(&field, "a user needs a name"))?;
        if name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(invalid(&field, format!("{name:?}: at most 64 of A-Z a-z 0-9 . _ -")));
        }
        if users.iter().any(|x: &crate::auth::ApiUser| x.name == name) {
            return Err(invalid(&field, format!("user {name:?} is listed twice")));
        }
        let password_hash = non_empty(u.password_hash).unwrap_or_default();
        if !crate::auth::valid_hash(&password_hash) {
            return Err(invalid(
                &field,
                "password_hash must be an Argon2 PHC string (make one with `wazuh-cluster hash-password`)",
            ));
        }
        crate::auth::check_hash_cost(&password_hash).map_err(|why| invalid(&field, format!("password_hash: {why}")))?;
        let role_text = non_empty(u.role).unwrap_or_else(|| "readonly".into());
        let role = crate::auth::ApiRole::parse(&role_text)
            .ok_or_else(|| invalid(&field, format!("role {role_text:?}: administrator or readonly")))?;
        users.push(crate::auth::ApiUser { name, password_hash, role });
    }
    let api = ApiConfig {
        bind: parse_addr("api.bind", api.bind, "127.0.0.1:55000")?,
        token: api_token,
        allowed_hosts,
        metrics_public: api.metrics_public.unwrap_or(false),
        tls: api.tls.unwrap_or(true),
        cert_file: non_empty(api.cert_file).map(|p| resolve(file, &p)).unwrap_or_else(|| data_dir.join("var/api.crt")),
        key_file: non_empty(api.key_file).map(|p| resolve(file, &p)).unwrap_or_else(|| data_dir.join("var/api.key")),
        max_connections,
        secret,
        token_lifetime: duration_field(
            "api.token_lifetime",
            api.token_lifetime,
            "900s",
            Duration::from_secs(30),
            Duration::from_secs(86_400),
        )?,
        users,
        max_login_attempts: match api.max_login_attempts {
            Some(0) => return Err(invalid("api.max_login_attempts", "must be at least 1")),
            Some(n) => n,
            None => 50,
        },
        block_time: duration_field(
            "api.block_time",
            api.block_time,
            "300s",
            Duration::ZERO,
            Duration::from_secs(86_400),
        )?,
        max_connections_per_address: match api.max_connections_per_address {
            Some(0) => return Err(invalid("api.max_connections_per_address", "must be at least 1")),
            Some(n) => n,
            None => 32,
        },
        handshake_timeout: duration_field(
            "api.handshake_timeout",
            api.handshake_timeout,
            "3s",
            ms(100),
            Duration::from_secs(60),
        )?,
        header_timeout: duration_field(
            "api.header_timeout",
            api.header_timeout,
            "5s",
            ms(100),
            Duration::from_secs(60),
        )?,
    };
    let format = match non_empty(log.format).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(invalid("log.format", format!("{other:?} is not allowed: use \"text\" or \"json\"")))
        }
    };
    let level = non_empty(log.level).unwrap_or_else(|| "info".into());
    if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
        return Err(invalid("log.level", format!("{level:?} is not allowed: error, warn, info, debug, trace or off")));
    }

    Ok(Config {
        warnings,
        node: NodeConfig { name, role, data_dir, max_open_files },
        cluster: ClusterConfig {
            name: cluster_name,
            key: Some(key),
            key_source,
            bind,
            master,
            masters,
            raft_id,
            cipher,
            max_frame,
            handshake_timeout,
            request_timeout,
            admission,
            join_token,
            intervals: Intervals {
                keepalive,
                reconnect_min,
                reconnect_max,
                agent_info,
                integrity,
                local_integrity,
                local_agent_groups,
            },
        },
        enrollment,
        agents,
        analysis,
        api,
        log: LogConfig { format, level },
    })
}

/// A relative key file path is relative to the config file's directory.
fn resolve(config_file: Option<&Path>, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    match config_file.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}

fn read_key_file(path: &Path, warnings: &mut Vec<String>) -> Result<ClusterKey, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("cluster.key_file", format!("cannot read {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warnings.push(format!("key file {} is readable by group or others; chmod 600 it", path.display()));
            }
        }
    }
    ClusterKey::new(&text).map_err(|e| invalid("cluster.key_file", format!("{}: {e}", path.display())))
}

fn parse_addr(field: &str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = non_empty(value).unwrap_or_else(|| default.to_string());
    text.parse().map_err(|_| invalid(field, format!("{text:?} is not an IP:port address (for example {default})")))
}

fn check_host_port(field: &str, text: &str) -> Result<(), ConfigError> {
    let bad = || invalid(field, format!("{text:?} is not host:port (for example 10.0.0.1:1516)"));
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok(())
}

fn duration_field(
    field: &str,
    value: Option<String>,
    default: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let text = non_empty(value).unwrap_or_else(|| default.to_string());
    let d = parse_duration(&text).map_err(|e| invalid(field, e))?;
    if d < min || d > max {
        return Err(invalid(
            field,
            format!("{text} is out of range: {}..={}", format_duration(min), format_duration(max)),
        ));
    }
    Ok(d)
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn load(toml: &str, env: &[(&str, &str)], sets: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(&Sources {
            file: Some(path),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            overrides: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            host_name: None,
        })
    }

    fn master() -> String {
        format!("[node]\nname = \"master-1\"\nrole = \"master\"\n[cluster]\nkey = \"{KEY}\"\n")
    }

    fn field_of(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Load(m) => panic!("expected a validation error, got load error {m}"),
        }
    }

    #[test]
    fn minimal_master_gets_the_documented_defaults() {
        let c = load(&master(), &[], &[]).unwrap();
        assert_eq!(c.node.role, Role::Master);
        assert_eq!(c.cluster.name, "wazuh");
        assert_eq!(c.cluster.bind, "0.0.0.0:1516".parse().unwrap());
        assert_eq!(c.enrollment.bind, "0.0.0.0:1515".parse().unwrap());
        assert_eq!(c.agents.bind, "0.0.0.0:1514".parse().unwrap());
        assert_eq!(c.api.bind, "127.0.0.1:55000".parse().unwrap());
        assert!(c.api.tls, "HTTPS unless configured otherwise");
        assert_eq!(c.cluster.cipher, CipherSuite::ChaCha20Poly1305);
        assert_eq!(c.cluster.max_frame, 16 * 1024 * 1024);
        assert_eq!(c.cluster.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.cluster.intervals.keepalive, Duration::from_secs(5));
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let env = [
            ("WMN_CLUSTER__BIND", "127.0.0.1:2000"),
            ("WMN_CLUSTER__INTERVALS__KEEPALIVE", "250ms"),
            ("WMN_CLUSTER__CIPHER", "aes-256-gcm"),
            ("WMN_API_TOKEN", "not-config"),
            ("OTHER__THING", "ignored"),
        ];
        let c = load(&master(), &env, &[]).unwrap();
        assert_eq!(c.cluster.bind, "127.0.0.1:2000".parse().unwrap());
        assert_eq!(c.cluster.intervals.keepalive, Duration::from_millis(250));
        assert_eq!(c.cluster.cipher, CipherSuite::Aes256Gcm);
        let c = load(&master(), &env, &[("cluster.bind", "127.0.0.1:3000")]).unwrap();
        assert_eq!(c.cluster.bind, "127.0.0.1:3000".parse().unwrap());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load(&format!("{}\n[cluster.intervals]\nkeepalive_typo = \"5s\"\n", master()), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("keepalive_typo"), "{err}");
        let err = load(&format!("{}\n[nodes]\nx = 1\n", master()), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
        let err = load(&master(), &[("WMN_CLUSTER__PROT", "1")], &[]).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn a_node_runs_from_environment_variables_alone_named_after_its_host() {
        let token = wazuh_cluster_protocol::identity::JoinToken::generate().unwrap().reveal();
        let env: Vec<(String, String)> = [
            ("WMN_NODE__ROLE", "worker"),
            ("WMN_CLUSTER__KEY", KEY),
            ("WMN_CLUSTER__MASTER", "master:1516"),
            ("WMN_CLUSTER__JOIN_TOKEN", token.as_str()),
            ("HOSTNAME", "ignored"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let sources =
            |host: Option<&str>| Sources { env: env.clone(), host_name: host.map(String::from), ..Default::default() };
        let c = Config::load(&sources(Some("3f2a9c1b7d4e"))).unwrap();
        assert_eq!(c.node.name, "3f2a9c1b7d4e");
        assert_eq!(c.node.role, Role::Worker);
        assert_eq!(c.cluster.master.as_deref(), Some("master:1516"));
        assert!(c.cluster.join_token.is_some());
        // A domain name's dots become dashes; a name set anywhere wins over the host's.
        assert_eq!(Config::load(&sources(Some("node-7.example.com"))).unwrap().node.name, "node-7-example-com");
        let mut named = sources(Some("host"));
        named.env.push(("WMN_NODE__NAME".into(), "worker-9".into()));
        assert_eq!(Config::load(&named).unwrap().node.name, "worker-9");
        assert_eq!(field_of(Config::load(&sources(None)).unwrap_err()), "node.name");
        assert_eq!(node_name_from_host(&"x".repeat(300)).len(), MAX_NAME_LEN);
    }

    #[test]
    fn a_key_from_the_environment_or_a_flag_replaces_the_files_key_file() {
        let file = master().replace(&format!("key = \"{KEY}\""), "key_file = \"/nonexistent/cluster.key\"");
        // The file alone: its key_file, which does not exist.
        assert_eq!(field_of(load(&file, &[], &[]).unwrap_err()), "cluster.key_file");
        let c = load(&file, &[("WMN_CLUSTER__KEY", KEY)], &[]).unwrap();
        assert!(c.cluster.key.is_some());
        let c = load(&file, &[], &[("cluster.key", KEY)]).unwrap();
        assert!(c.cluster.key.is_some());
        // Both ways in one source is still an error.
        let both = load(&file, &[("WMN_CLUSTER__KEY", KEY), ("WMN_CLUSTER__KEY_FILE", "/k")], &[]).unwrap_err();
        assert_eq!(field_of(both), "cluster.key");
    }

    #[test]
    fn master_eligible_nodes_find_themselves_in_cluster_masters_given_as_a_list_or_a_string() {
        let list = "masters = [\"master-a:1516\", \"master-1:1516\", \"10.0.0.3:1516\"]\n";
        let c = load(&format!("{}{list}", master()), &[], &[]).unwrap();
        assert_eq!(c.cluster.masters.len(), 3);
        assert_eq!(c.cluster.raft_id, Some(2), "node.name master-1 is the second entry");
        // The same from the environment, as one comma-separated value; found by its bind address.
        let env = [
            ("WMN_CLUSTER__MASTERS", "10.0.0.1:1516, 10.0.0.2:1516,10.0.0.3:1516"),
            ("WMN_CLUSTER__BIND", "10.0.0.3:1516"),
        ];
        assert_eq!(load(&master(), &env, &[]).unwrap().cluster.raft_id, Some(3));
        // A worker dials the first when it has no cluster.master.
        let worker = master().replace("role = \"master\"", "role = \"worker\"");
        let w = load(&worker, &[("WMN_CLUSTER__MASTERS", "a:1516,b:1516,c:1516")], &[]).unwrap();
        assert_eq!((w.cluster.master.as_deref(), w.cluster.raft_id), (Some("a:1516"), None));
        // One master: as before, no Raft.
        assert_eq!(load(&master(), &[("WMN_CLUSTER__MASTERS", "master-1:1516")], &[]).unwrap().cluster.raft_id, None);
        for bad in ["a:1516,b:1516", "a:1516,a:1516,b:1516", "a:1516,b:1516,c:1516", "a:1516,b,c:1516"] {
            let err = load(&master(), &[("WMN_CLUSTER__MASTERS", bad)], &[]).unwrap_err();
            assert_eq!(field_of(err), "cluster.masters", "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(String, &str)> = vec![
            (master().replace("master-1", "bad name"), "node.name"),
            (master().replace("role = \"master\"", "role = \"boss\""), "node.role"),
            (master().replace(KEY, "short"), "cluster.key"),
            (format!("{}bind = \"nowhere\"\n", master()), "cluster.bind"),
            (format!("{}cipher = \"rot13\"\n", master()), "cluster.cipher"),
            (format!("{}max_frame = \"1GiB\"\n", master()), "cluster.max_frame"),
            (format!("{}max_frame = \"32MiB\"\n", master()), "cluster.max_frame"),
            (format!("{}handshake_timeout = \"10 parsecs\"\n", master()), "cluster.handshake_timeout"),
            (format!("{}key_file = \"k\"\n", master()), "cluster.key"),
            (master().replace("role = \"master\"", "role = \"worker\""), "cluster.master"),
            (format!("{}master = \"no-port\"\n", master()), "cluster.master"),
            (format!("{}[log]\nformat = \"xml\"\n", master()), "log.format"),
            (format!("{}[api]\nbind = \"localhost\"\n", master()), "api.bind"),
        ];
        for (toml, field) in cases {
            assert_eq!(field_of(load(&toml, &[], &[]).unwrap_err()), field, "{toml}");
        }
    }

    #[test]
    fn key_file_is_read_relative_to_the_config_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.key"), format!("{KEY}\n")).unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "[node]\nname = \"m\"\nrole = \"master\"\n[cluster]\nkey_file = \"cluster.key\"\n")
            .unwrap();
        let c = Config::load(&Sources { file: Some(path), ..Default::default() }).unwrap();
        assert_eq!(c.cluster.key, Some(ClusterKey::new(KEY).unwrap()));
        let shown = c.to_masked_toml();
        assert!(!shown.contains(KEY), "{shown}");
        assert!(shown.contains("cluster.key"));
        let inline = load(&master(), &[], &[]).unwrap().to_masked_toml();
        assert!(!inline.contains(KEY), "{inline}");
        assert!(inline.contains("key = \"********\""), "{inline}");
    }

    #[test]
    fn missing_file_and_bad_toml_are_load_errors() {
        let err =
            Config::load(&Sources { file: Some("does/not/exist.toml".into()), ..Default::default() }).unwrap_err();
        assert!(matches!(err, ConfigError::Load(_)));
        assert!(matches!(load("[node\nname=", &[], &[]), Err(ConfigError::Load(_))));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert!(parse_size("99999999999999999999MiB").is_err());
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(parse_override("cluster.bind=1.2.3.4:5").unwrap(), ("cluster.bind".into(), "1.2.3.4:5".into()));
        assert!(parse_override("novalue").is_err());
    }
}
