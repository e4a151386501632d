//! Helpers for the registry's unit tests.

use super::master::{NewAgent, Registry};
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::AgentEntry;

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
