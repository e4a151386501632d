//! The queries of wazuh-db's agent table, as Wazuh's authd, remoted and clusterd write them
//! (`wazuh_db/helpers/wdb_global_helpers.c`, `remoted/manager.c`, `wazuh_db/wdb_global.c`): pure
//! functions of the agents as the node knows them, tested on plain values.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use wazuh_cluster_protocol::agent::keepalive::KeepAlive;

/// Changes in one pass up to which each is written as remoted writes it.
pub const ONE_BY_ONE: usize = 64;
/// Largest batched query (wazuh-db takes `OS_MAXSTR` less its command).
pub const BATCH_BYTES: usize = 60 * 1024;

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
pub(super) struct Written {
    pub(super) groups: u64,
    pub(super) details: u64,
    pub(super) status: String,
    pub(super) keepalive_s: Option<u64>,
}

pub(super) fn digest<T: Hash>(value: T) -> u64 {
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
pub(super) enum Change {
    /// A keep-alive with new details (`update-agent-data`).
    Data(u32),
    /// `update-keepalive` with this connection status (a startup: `pending`; an unchanged keep-alive).
    KeepAlive(u32, &'static str),
    /// `update-connection-status` to `disconnected`.
    Disconnected(u32),
}

/// The queries for one pass's changes: each as remoted writes it, or batched at scale.
pub(super) fn change_queries(changes: &[Change], now: &HashMap<u32, &AgentNow>, now_s: u64) -> Vec<String> {
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
pub(super) fn full_row(agent: &AgentNow, gone: bool, now_s: u64) -> Value {
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
pub(super) fn batches(prefix: &str, items: Vec<String>) -> Vec<String> {
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
pub(super) fn group_queries(agents: &[&AgentNow]) -> Vec<String> {
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
pub(super) fn insert_query(agent: &AgentNow) -> String {
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

/// What changed for `agent` since `written`, which is brought up to date.
pub(super) fn change_of(agent: &AgentNow, written: &mut Written) -> Option<Change> {
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
        None => matches!(written.status.as_str(), "active" | "pending").then_some(Change::Disconnected(agent.id)),
    }?;
    match &agent.state {
        Some(state) => {
            written.status = state.status.clone();
            written.keepalive_s = state.keepalive_s;
        }
        None => written.status = "disconnected".into(),
    }
    Some(change)
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
