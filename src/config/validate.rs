//! Validation, one section at a time: each turns its part of the file into checked settings, with
//! defaults, and its errors name the field.

use super::raw::*;
use super::*;

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub(super) fn validate(raw: RawConfig, file: Option<&Path>, host_name: Option<&str>) -> Result<Config, ConfigError> {
    let RawConfig { node, cluster, enrollment, agents, analysis, manager, api, log } = raw;
    let mut warnings = Vec::new();
    let node = node_section(node, host_name)?;
    let cluster = cluster_section(cluster, &node, file, &mut warnings)?;
    Ok(Config {
        enrollment: enrollment_section(enrollment, file)?,
        agents: agents_section(agents)?,
        analysis: analysis_section(analysis, &node.data_dir)?,
        manager: manager_section(manager, &node.data_dir)?,
        api: api_section(api, file, &node.data_dir)?,
        log: log_section(log)?,
        warnings,
        node,
        cluster,
    })
}

/// A worker's event loop yields to the rest of the host by default: its agents' traffic can wait a
/// little under contention, the master, the API and enrollment should not.
const DEFAULT_WORKER_NICE: i32 = 5;

fn node_section(node: RawNode, host_name: Option<&str>) -> Result<NodeConfig, ConfigError> {
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

    let stall_timeout =
        duration_field("node.stall_timeout", node.stall_timeout, "15s", Duration::ZERO, Duration::from_secs(600))?;
    if !stall_timeout.is_zero() && stall_timeout < Duration::from_secs(2) {
        return Err(invalid("node.stall_timeout", "0s (off) or at least 2s"));
    }
    let event_loop_nice = match node.event_loop_nice {
        None if role == Role::Worker => DEFAULT_WORKER_NICE,
        None => 0,
        Some(n @ 0..=19) => n as i32,
        Some(n) => return Err(invalid("node.event_loop_nice", format!("{n} is not in 0-19 (0: the process's own)"))),
    };
    Ok(NodeConfig { name, role, data_dir, max_open_files, stall_timeout, event_loop_nice })
}

fn cluster_section(
    cluster: RawCluster,
    node: &NodeConfig,
    file: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<ClusterConfig, ConfigError> {
    let (name, role) = (&node.name, node.role);
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
                (read_key_file(&path, warnings)?, path.display().to_string())
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
    let intervals = intervals_section(cluster.intervals)?;
    let rebalance = rebalance_section(cluster.rebalance)?;
    let request_timeout = duration_field(
        "cluster.request_timeout",
        cluster.request_timeout,
        "10s",
        Duration::from_millis(10),
        Duration::from_secs(300),
    )?;
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

    Ok(ClusterConfig {
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
        intervals,
        rebalance,
    })
}

/// `cluster.rebalance`: how the master evens out the agents across workers.
fn rebalance_section(
    r: super::raw::RawRebalance,
) -> Result<wazuh_cluster_actors::master::RebalanceSettings, ConfigError> {
    use wazuh_cluster_actors::master::{RebalanceMode, RebalanceSettings};
    let mode = match non_empty(r.mode).as_deref() {
        None | Some("on") => RebalanceMode::On,
        Some("off") => RebalanceMode::Off,
        Some("dry-run") => RebalanceMode::DryRun,
        Some(other) => return Err(invalid("cluster.rebalance.mode", format!("{other:?}: on, off or dry-run"))),
    };
    let share = r.share.unwrap_or(0.2);
    if !(0.05..=5.0).contains(&share) {
        return Err(invalid("cluster.rebalance.share", format!("{share} is out of range: 0.05..=5")));
    }
    Ok(RebalanceSettings {
        mode,
        share,
        every: duration_field(
            "cluster.rebalance.every",
            r.every,
            "5s",
            Duration::from_millis(500),
            Duration::from_secs(3600),
        )?,
        max_per_second: match r.max_per_second {
            Some(0) => return Err(invalid("cluster.rebalance.max_per_second", "must be at least 1")),
            Some(n) => n.min(10_000),
            None => 50,
        },
        away: duration_field("cluster.rebalance.away", r.away, "60s", Duration::ZERO, Duration::from_secs(600))?,
        steer: r.steer.unwrap_or(true),
    })
}

/// `cluster.intervals`: how often each periodic task runs, and the redial back-off.
fn intervals_section(i: RawIntervals) -> Result<Intervals, ConfigError> {
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
    if reconnect_max < reconnect_min {
        return Err(invalid("cluster.intervals.reconnect_max", "must not be smaller than reconnect_min"));
    }
    Ok(Intervals {
        keepalive,
        reconnect_min,
        reconnect_max,
        agent_info,
        integrity,
        local_integrity,
        local_agent_groups,
    })
}

fn enrollment_section(enrollment: RawEnrollment, file: Option<&Path>) -> Result<EnrollmentConfig, ConfigError> {
    let ms = Duration::from_millis;
    Ok(EnrollmentConfig {
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
    })
}

fn agents_section(agents: RawAgents) -> Result<AgentsConfig, ConfigError> {
    let archive_max_size = match non_empty(agents.archive_max_size) {
        Some(text) => parse_size(&text).map_err(|e| invalid("agents.archive_max_size", e))?,
        None => 100 << 20,
    };
    if archive_max_size < 4096 {
        return Err(invalid("agents.archive_max_size", format!("{archive_max_size} bytes is below 4KiB")));
    }
    Ok(AgentsConfig {
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
        drain_timeout: duration_field(
            "agents.drain_timeout",
            agents.drain_timeout,
            "30s",
            Duration::ZERO,
            Duration::from_secs(3600),
        )?,
        drain_rate: match agents.drain_rate {
            Some(0) => return Err(invalid("agents.drain_rate", "must be at least 1 agent per second")),
            Some(n) => n,
            None => 200,
        },
    })
}

fn analysis_section(analysis: RawAnalysis, data_dir: &Path) -> Result<AnalysisConfig, ConfigError> {
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
    Ok(AnalysisConfig {
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
    })
}

fn manager_section(manager: RawManager, data_dir: &Path) -> Result<ManagerConfig, ConfigError> {
    // `true` (or "true"/"on" from the environment): Wazuh's own path; `false` or "": off.
    let switch = |field: &str, value: Option<RawSwitch>, wazuh: &str| -> Result<Option<PathBuf>, ConfigError> {
        let path = match value {
            None | Some(RawSwitch::On(false)) => return Ok(None),
            Some(RawSwitch::On(true)) => wazuh.to_string(),
            Some(RawSwitch::Path(text)) => match text.trim() {
                "" | "false" | "off" => return Ok(None),
                "true" | "on" => wazuh.to_string(),
                path => path.to_string(),
            },
        };
        let path = PathBuf::from(path);
        let path = if path.is_relative() { data_dir.join(path) } else { path };
        // A Unix socket's path must fit sockaddr_un (108 bytes with its terminator).
        if path.as_os_str().len() > 107 {
            return Err(invalid(field, format!("{} is longer than a socket path may be (107 bytes)", path.display())));
        }
        Ok(Some(path))
    };
    let queue = manager.queue.unwrap_or(1024);
    if !(16..=1 << 20).contains(&queue) {
        return Err(invalid("manager.queue", "between 16 and 1048576"));
    }
    Ok(ManagerConfig {
        active_response: switch("manager.active_response", manager.active_response, ManagerConfig::WAZUH_AR_QUEUE)?,
        requests: switch("manager.requests", manager.requests, ManagerConfig::WAZUH_REQUESTS)?,
        wazuh_db: switch("manager.wazuh_db", manager.wazuh_db, ManagerConfig::WAZUH_DB)?,
        wazuh_db_interval: duration_field(
            "manager.wazuh_db_interval",
            manager.wazuh_db_interval,
            "10s",
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?,
        queue,
        request_timeout: duration_field(
            "manager.request_timeout",
            manager.request_timeout,
            "30s",
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?,
    })
}

fn api_section(api: RawApi, file: Option<&Path>, data_dir: &Path) -> Result<ApiConfig, ConfigError> {
    let ms = Duration::from_millis;
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
    let users = api_users(api.users.unwrap_or_default())?;
    Ok(ApiConfig {
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
    })
}

/// `api.users`: each with a valid name (listed once), an Argon2 PHC hash of a bounded cost, a role.
fn api_users(raw: Vec<RawUser>) -> Result<Vec<crate::auth::ApiUser>, ConfigError> {
    let mut users = Vec::new();
    for (i, u) in raw.into_iter().enumerate() {
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
    Ok(users)
}

fn log_section(log: RawLog) -> Result<LogConfig, ConfigError> {
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

    Ok(LogConfig { format, level })
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
