//! Reaching an agent wherever in the cluster it is connected: this node's own agents directly, the
//! others through the master (a worker relays, protocol 2.5; the master sends through the worker
//! that holds the agent). Active responses and requests both go this way.

use super::figures::Figures;
use crate::node::handle::NodeHandle;
use std::sync::Arc;
use std::time::Duration;
use wazuh_cluster_actors::agents::messages::{AskAgent, AskError, SendToAgents, SendToLive};
use wazuh_cluster_actors::registry::query::AgentQuery;
use wazuh_cluster_actors::worker::Relay;
use wazuh_cluster_protocol::message::{AgentRelay, AgentRelayed, AgentRequest};

/// Which agents an active response goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every agent connected (remoted: active within the disconnection time).
    All,
    Agent(u32),
}

/// Where an active response went: agents here, agents on other nodes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub here: u64,
    pub elsewhere: u64,
}

/// What a request came to: the agent's answer, no such agent (remoted closes the client's
/// connection without a word), or one of remoted's own error answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Answer(String),
    NoSuchAgent,
    Failed(&'static str),
}

/// remoted's error answers (remoted/request.c).
pub const SEND_ERROR: &str = "err Cannot send request";
pub const TIMEOUT_ERROR: &str = "err Response timeout";
pub const INTERNAL_ERROR: &str = "err Internal error";

/// remoted's answer for why an agent gave none (the words travel as text between nodes).
fn failure(why: &str) -> &'static str {
    if why.contains(&AskError::Timeout.to_string()) || why.contains("timed out") || why.contains("no answer") {
        TIMEOUT_ERROR
    } else if why.contains(&AskError::Busy.to_string()) {
        INTERNAL_ERROR
    } else {
        SEND_ERROR
    }
}

impl NodeHandle {
    /// The manager integrations' figures.
    pub fn manager_figures(&self) -> &Arc<Figures> {
        match self {
            NodeHandle::Master { manager, .. } | NodeHandle::Worker { manager, .. } => manager,
        }
    }

    /// Sends `message` (`#!-execd ...` as remoted builds it) to `target`, wherever connected.
    pub async fn send_execd(&self, target: Target, message: String) -> Reached {
        let hub = self.hub();
        let here: Vec<u32> = match target {
            Target::All => hub.send(SendToLive(message.clone().into_bytes())).await.unwrap_or_default(),
            Target::Agent(id) => {
                hub.send(SendToAgents(vec![(id, message.clone().into_bytes())])).await.unwrap_or_default()
            }
        };
        let mut reached = Reached { here: here.len() as u64, elsewhere: 0 };
        if matches!(target, Target::Agent(_)) && reached.here > 0 {
            return reached;
        }
        let (ids, all) = match target {
            Target::All => (Vec::new(), true),
            Target::Agent(id) => (vec![id], false),
        };
        reached.elsewhere = match self {
            NodeHandle::Master { name, .. } => self.execd_elsewhere(name, ids, all, message).await.len() as u64,
            NodeHandle::Worker { link, .. } => match link.send(Relay(AgentRelay::Execd { ids, all, message })).await {
                Ok(Ok(Some(done))) => done.sent.len() as u64,
                _ => 0,
            },
        };
        reached
    }

    /// Master: sends `message` to the agents `ids` (every active agent when `all`) that a node
    /// other than `except` holds; the agents whose connection took it.
    async fn execd_elsewhere(&self, except: &str, ids: Vec<u32>, all: bool, message: String) -> Vec<u32> {
        let query = AgentQuery {
            status: Some("active".into()),
            ids: if all { Vec::new() } else { ids },
            limit: u64::MAX >> 1,
            ..AgentQuery::default()
        };
        let Ok((_, agents)) = self.agents_page(query).await else { return Vec::new() };
        let items: Vec<(u32, String, String)> = agents
            .into_iter()
            .filter_map(|a| {
                let node = a.node_name?;
                let id = wazuh_cluster_actors::registry::parse_id(&a.id)?;
                (node != except).then(|| (id, node, message.clone()))
            })
            .collect();
        if items.is_empty() {
            return Vec::new();
        }
        self.command_agents(items).await.into_iter().filter_map(|(id, r)| r.is_ok().then_some(id)).collect()
    }

    /// Asks agent `id` a request (`getconfig ...`), wherever it is connected, as remoted's request
    /// socket does.
    pub async fn ask_anywhere(&self, id: u32, payload: String, timeout: Duration) -> Asked {
        let ask = AskAgent { id, payload: payload.clone(), timeout };
        match self.hub().send(ask).await {
            Ok(Ok(answer)) => return Asked::Answer(answer),
            Ok(Err(AskError::NotActive)) => {}
            Ok(Err(why)) => return Asked::Failed(failure(&why.to_string())),
            Err(_) => return Asked::Failed(INTERNAL_ERROR),
        }
        match self {
            NodeHandle::Master { name, .. } => self.ask_elsewhere(name, id, payload).await,
            NodeHandle::Worker { link, .. } => {
                let request = AgentRequest { id, payload, timeout_ms: timeout.as_millis() as u64 };
                match link.send(Relay(AgentRelay::Ask(request))).await {
                    Ok(Ok(Some(AgentRelayed { answer: Some(Ok(answer)), .. }))) => Asked::Answer(answer),
                    Ok(Ok(Some(AgentRelayed { answer: Some(Err(why)), .. }))) if why == NO_SUCH_AGENT => {
                        Asked::NoSuchAgent
                    }
                    Ok(Ok(Some(AgentRelayed { answer: Some(Err(why)), .. }))) => Asked::Failed(failure(&why)),
                    // An older master, no master, or no answer: the agent cannot be reached.
                    _ => Asked::Failed(SEND_ERROR),
                }
            }
        }
    }

    /// Master: asks agent `id` through the node that holds it, unless that is `except`.
    async fn ask_elsewhere(&self, except: &str, id: u32, payload: String) -> Asked {
        let agent = match self.agent(id, false).await {
            Ok(Some(agent)) => agent,
            Ok(None) => return Asked::NoSuchAgent,
            Err(_) => return Asked::Failed(INTERNAL_ERROR),
        };
        let node = agent.node_name.unwrap_or_default();
        if agent.status.as_deref() != Some("active") || node == except || node.is_empty() {
            return Asked::Failed(SEND_ERROR);
        }
        match self.ask_agent(id, &node, payload).await {
            Ok(answer) => Asked::Answer(answer),
            Err(why) => Asked::Failed(failure(&why)),
        }
    }
}

/// The words of a relayed request's answer for an agent that does not exist.
const NO_SUCH_AGENT: &str = "no such agent";

/// Master: does what workers relay for agents other nodes hold (always on: a worker's
/// integrations need the master's help even when the master's own are off).
pub fn install_relays(relays: &wazuh_cluster_actors::settings::AgentRelays, node: NodeHandle) {
    relays.set(Arc::new(move |worker: String, relay: AgentRelay| {
        let node = node.clone();
        Box::pin(async move {
            match relay {
                AgentRelay::Execd { ids, all, message } => {
                    let sent = node.execd_elsewhere(&worker, ids, all, message).await;
                    AgentRelayed { sent, answer: None }
                }
                AgentRelay::Ask(request) => {
                    let answer = match node.ask_elsewhere(&worker, request.id, request.payload).await {
                        Asked::Answer(answer) => Ok(answer),
                        Asked::NoSuchAgent => Err(NO_SUCH_AGENT.to_string()),
                        Asked::Failed(why) => Err(why.to_string()),
                    };
                    AgentRelayed { sent: Vec::new(), answer: Some(answer) }
                }
            }
        })
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_remoteds_error_answers() {
        assert_eq!(failure(&AskError::Timeout.to_string()), TIMEOUT_ERROR);
        assert_eq!(failure(&AskError::Busy.to_string()), INTERNAL_ERROR);
        assert_eq!(failure(&AskError::NotActive.to_string()), SEND_ERROR);
        assert_eq!(failure(&AskError::Closed.to_string()), SEND_ERROR);
        assert_eq!(failure("worker w2 is not connected"), SEND_ERROR);
    }
}
