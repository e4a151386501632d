//! The file as written: every key optional, unknown keys refused.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) node: RawNode,
    pub(super) cluster: RawCluster,
    pub(super) enrollment: RawEnrollment,
    pub(super) agents: RawAgents,
    pub(super) analysis: RawAnalysis,
    pub(super) manager: RawManager,
    pub(super) api: RawApi,
    pub(super) log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApi {
    pub(super) bind: Option<String>,
    pub(super) token: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) token_lifetime: Option<String>,
    pub(super) users: Option<Vec<RawUser>>,
    pub(super) allowed_hosts: Option<String>,
    pub(super) metrics_public: Option<bool>,
    pub(super) tls: Option<bool>,
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_login_attempts: Option<u32>,
    pub(super) block_time: Option<String>,
    pub(super) max_connections_per_address: Option<u32>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNode {
    pub(super) name: Option<String>,
    pub(super) role: Option<String>,
    pub(super) data_dir: Option<String>,
    pub(super) max_open_files: Option<u64>,
    pub(super) stall_timeout: Option<String>,
    pub(super) event_loop_nice: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCluster {
    pub(super) name: Option<String>,
    pub(super) key: Option<String>,
    pub(super) key_file: Option<String>,
    pub(super) bind: Option<String>,
    pub(super) master: Option<String>,
    pub(super) masters: Option<StrOrList>,
    pub(super) cipher: Option<String>,
    pub(super) max_frame: Option<String>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) admission: Option<String>,
    pub(super) join_token: Option<String>,
    pub(super) intervals: RawIntervals,
    pub(super) rebalance: RawRebalance,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRebalance {
    pub(super) mode: Option<String>,
    pub(super) share: Option<f64>,
    pub(super) every: Option<String>,
    pub(super) max_per_second: Option<u32>,
    pub(super) away: Option<String>,
    pub(super) steer: Option<bool>,
}

/// A list given as a TOML array, or as one comma-separated string (environment, `--set`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StrOrList {
    One(String),
    Many(Vec<String>),
}

impl StrOrList {
    pub(super) fn items(self) -> Vec<String> {
        let all = match self {
            StrOrList::One(s) => s.split(',').map(String::from).collect(),
            StrOrList::Many(v) => v,
        };
        all.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIntervals {
    pub(super) keepalive: Option<String>,
    pub(super) reconnect_min: Option<String>,
    pub(super) reconnect_max: Option<String>,
    pub(super) agent_info: Option<String>,
    pub(super) integrity: Option<String>,
    pub(super) local_integrity: Option<String>,
    pub(super) local_agent_groups: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEnrollment {
    pub(super) bind: Option<String>,
    pub(super) password: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) force: Option<bool>,
    pub(super) force_after: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) max_per_address: Option<u32>,
    pub(super) max_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAgents {
    pub(super) bind: Option<String>,
    pub(super) disconnection_time: Option<String>,
    pub(super) enforce_counters: Option<bool>,
    pub(super) stall_timeout: Option<String>,
    pub(super) auth_timeout: Option<String>,
    pub(super) max_pending_per_address: Option<u32>,
    pub(super) max_connections: Option<u64>,
    pub(super) archive_max_size: Option<String>,
    pub(super) archive_keep: Option<usize>,
    pub(super) archive: Option<bool>,
    pub(super) drain_timeout: Option<String>,
    pub(super) drain_rate: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUser {
    pub(super) name: Option<String>,
    pub(super) password_hash: Option<String>,
    pub(super) role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAnalysis {
    pub(super) queue: Option<String>,
    pub(super) control: Option<String>,
    pub(super) buffer: Option<String>,
    pub(super) reload_debounce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawManager {
    pub(super) active_response: Option<RawSwitch>,
    pub(super) requests: Option<RawSwitch>,
    pub(super) wazuh_db: Option<RawSwitch>,
    pub(super) wazuh_db_interval: Option<String>,
    pub(super) queue: Option<usize>,
    pub(super) request_timeout: Option<String>,
}

/// An integration: `true` (Wazuh's own path), `false`, or a path.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSwitch {
    On(bool),
    Path(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}
