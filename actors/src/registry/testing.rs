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

/// Holds `store`'s thread with a command (which first runs `first`) until the returned sender is
/// used or dropped; returns once the command runs, with the task awaiting it.
pub async fn hold<S: super::Store>(
    store: &super::StoreHandle<S>,
    first: impl FnOnce(&mut S) + Send + 'static,
) -> (std::sync::mpsc::SyncSender<()>, tokio::task::JoinHandle<Result<(), super::StoreError>>) {
    let (release, held) = std::sync::mpsc::sync_channel::<()>(1);
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let store = store.clone();
    let write = tokio::spawn(async move {
        store
            .run(move |s| {
                first(s);
                let _ = started_tx.send(());
                let _ = held.recv();
                Ok(())
            })
            .await
    });
    started.await.expect("the holding command ran");
    (release, write)
}
