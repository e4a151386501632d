//! Helpers for the registry's unit tests.

use super::enroll::NewAgent;
use super::master::Registry;
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::{AgentEntry, AgentInfoUpdate};

/// An enrollment of `name` on the master (forwarded, with `token`, when given).
pub fn agent(name: &str, token: Option<&str>) -> NewAgent {
    NewAgent {
        name: name.into(),
        groups: vec![],
        ip: "any".into(),
        key_hash: None,
        version: None,
        node_name: "master".into(),
        token: token.map(String::from),
    }
}

/// Enrolls `a` in its own transaction.
pub fn enroll(reg: &mut Registry, a: &NewAgent) -> Result<AgentEntry, EnrollError> {
    reg.begin().expect("begin");
    let out = reg.enroll(a).expect("enroll");
    reg.commit().expect("commit");
    out
}

/// A status report of agent `id` (a keep-alive at `ka`, when given).
pub fn status(id: u32, status: &str, ka: Option<u64>) -> AgentInfoUpdate {
    AgentInfoUpdate {
        id,
        status: status.into(),
        last_keepalive_ms: ka,
        version: Some("Wazuh v4.14.7".into()),
        info: None,
        group_config_status: None,
        peer_ip: None,
    }
}
