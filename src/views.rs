//! What operators see of a node, as plain values: the rows of `/cluster/nodes`,
//! `/cluster/actors` and `/agents`. The node handle builds them; the API serializes them; the
//! metrics render them. Nothing here talks to an actor.

use serde::Serialize;
use wazuh_cluster_protocol::message::JobReport;
use wazuh_cluster_protocol::Role;

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

/// One actor in `GET /cluster/actors`.
#[derive(Debug, Clone, Serialize)]
pub struct ActorView {
    pub name: String,
    /// Which end of the connection runs it: `master` or `worker`.
    pub end: String,
    /// `periodic`, `server` or `pusher`: how it fails (see ARCHITECTURE.md).
    pub kind: String,
    pub state: String,
    pub runs: u64,
    pub failures: u64,
    pub panics: u64,
    pub restarts: u64,
    pub last_run: Option<String>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The job's own figures, by name (numbers; `*_at` ones are dates).
    pub details: serde_json::Map<String, serde_json::Value>,
    /// The same figures as numbers, for metrics (epoch milliseconds for `*_at_ms`).
    #[serde(skip)]
    pub figures: Vec<(String, u64)>,
}

/// One node in `GET /cluster/actors`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeHealthView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub connected: bool,
    pub last_keepalive: Option<String>,
    pub actors: Vec<ActorView>,
    /// This node's agent connections and events (only for the node that answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_connections: Option<wazuh_cluster_actors::agents::messages::HubView>,
}

/// One agent as Wazuh's API shows it: its field names and types (`labels` and, only from
/// `GET /agents/{id}/key`, `key` are ours). What a node does not know is left out, never null.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    /// The address the agent reports from (its own `_agent_ip`, else its connection's), before it
    /// ever connected the address it registered with.
    pub ip: String,
    /// The address in its key (`any` when none was given).
    #[serde(rename = "registerIP")]
    pub register_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the status last changed (Wazuh's code; 0: no error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The manager (cluster node) the agent reports to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<AgentOs>,
    /// Labels from the last keep-alive (`#` system, `!` hidden).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(rename = "mergedSum", skip_serializing_if = "Option::is_none")]
    pub merged_sum: Option<String>,
    #[serde(rename = "configSum", skip_serializing_if = "Option::is_none")]
    pub config_sum: Option<String>,
    /// `synced` or `not synced`: whether the agent has its groups' current merged.mg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_config_status: Option<String>,
    pub group: Vec<String>,
    #[serde(rename = "dateAdd", skip_serializing_if = "Option::is_none")]
    pub date_add: Option<String>,
    #[serde(rename = "lastKeepAlive", skip_serializing_if = "Option::is_none")]
    pub last_keep_alive: Option<String>,
    /// Only from `GET /agents/{id}/key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// An agent's operating system, as its keep-alive said (Wazuh's `os` object).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentOs {
    pub arch: String,
    pub codename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor: Option<String>,
    pub name: String,
    pub platform: String,
    pub uname: String,
    pub version: String,
}

impl AgentOs {
    /// `major` and `minor` from the version's leading numbers (`20.04.2 LTS`: 20 and 04).
    pub fn new(name: &str, platform: &str, version: &str, codename: &str, arch: &str, uname: &str) -> Self {
        let (major, minor) = os_numbers(version);
        AgentOs {
            arch: arch.into(),
            codename: codename.into(),
            major: major.map(str::to_string),
            minor: minor.map(str::to_string),
            name: name.into(),
            platform: platform.into(),
            uname: uname.into(),
            version: version.into(),
        }
    }
}

/// An OS version's major and minor numbers: its leading digits, and the digits right after its
/// first dot (`20.04.2 LTS`: 20 and 04); none without leading digits.
pub fn os_numbers(version: &str) -> (Option<&str>, Option<&str>) {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let major = &version[..digits(version)];
    if major.is_empty() {
        return (None, None);
    }
    let minor = version.split_once('.').map(|(_, rest)| &rest[..digits(rest)]).filter(|m| !m.is_empty());
    (Some(major), minor)
}

/// Epoch milliseconds as RFC 3339 UTC.
pub fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).map(|t| t.to_string()).unwrap_or_default()
}

/// A job's figures for the JSON view: `x_at_ms` becomes the date `x_at` (absent when 0, never),
/// everything else stays a number under its own name.
fn details(figures: &[(String, u64)]) -> serde_json::Map<String, serde_json::Value> {
    figures
        .iter()
        .map(|(name, value)| match name.strip_suffix("_ms").filter(|n| n.ends_with("_at")) {
            Some(date) => {
                let v = if *value == 0 { serde_json::Value::Null } else { serde_json::Value::String(iso(*value)) };
                (date.to_string(), v)
            }
            None => (name.clone(), serde_json::Value::from(*value)),
        })
        .collect()
}

/// The actors of one end, as the health check shows them.
pub fn actor_views(reports: &[JobReport], end: Role) -> Vec<ActorView> {
    reports
        .iter()
        .map(|r| ActorView {
            name: r.name.clone(),
            end: end.name().into(),
            kind: serde_json::to_value(r.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            state: r.state.name().into(),
            runs: r.runs,
            failures: r.failures,
            panics: r.panics,
            restarts: r.restarts,
            last_run: r.last_run_ms.map(iso),
            last_duration_ms: r.last_duration_ms,
            last_error: r.last_error.clone(),
            details: details(&r.figures),
            figures: r.figures.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wazuh_cluster_protocol::message::{JobKind, JobState};

    #[test]
    fn figures_become_numbers_and_dates() {
        let report = JobReport {
            name: "Integrity".into(),
            kind: JobKind::Periodic,
            state: JobState::BackingOff,
            figures: vec![
                ("missing".into(), 3),
                ("last_sync_end_at_ms".into(), 1_764_166_000_000),
                ("last_check_at_ms".into(), 0),
                ("last_sync_duration_ms".into(), 250),
            ],
            ..JobReport::default()
        };
        let view = actor_views(&[report], Role::Worker).remove(0);
        assert_eq!((view.kind.as_str(), view.state.as_str(), view.end.as_str()), ("periodic", "restarting", "worker"));
        assert_eq!(view.details["missing"], 3);
        assert_eq!(view.details["last_sync_end_at"], "2025-11-26T14:06:40Z");
        assert!(view.details["last_check_at"].is_null());
        assert_eq!(view.details["last_sync_duration_ms"], 250);
    }
}
