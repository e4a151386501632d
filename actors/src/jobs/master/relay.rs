//! The master's end of [`WorkerToMaster::AgentRelay`](wazuh_cluster_protocol::WorkerToMaster):
//! what the Wazuh daemons beside a worker (analysisd's active responses, the request socket's
//! clients) ask of agents another node holds. The node's manager integrations answer it through
//! [`crate::settings::AgentRelays`]; here it is checked as untrusted input first: only active
//! responses (`#!-execd `) of bounded size, for a bounded number of agents, and requests of
//! bounded size.

use crate::connection::{LocalFuture, MasterSide};
use crate::jobs::runtime::{Serve, ServeError, Served};
use log::warn;
use wazuh_cluster_protocol::message::{AgentRelay, AgentRelayed};
use wazuh_cluster_protocol::MasterToWorker;

/// The prefix of every active response remoted sends an agent.
pub const EXECD_PREFIX: &str = "#!-execd ";

/// Serves one worker's relays.
pub(crate) struct AgentRelayServe {
    pub relays: crate::settings::AgentRelays,
    pub node: String,
    pub peer: String,
}

/// Why a relay is refused before anything is sent (`None`: it may go on).
pub(crate) fn refusal(relay: &AgentRelay) -> Option<String> {
    match relay {
        AgentRelay::Execd { ids, all, message } => {
            if !message.starts_with(EXECD_PREFIX) {
                Some("only active responses (#!-execd) are relayed".into())
            } else if message.len() > AgentRelay::MAX_MESSAGE {
                Some(format!("a message of {} bytes is over {}", message.len(), AgentRelay::MAX_MESSAGE))
            } else if ids.len() > AgentRelay::MAX_IDS || (*all && !ids.is_empty()) || (!*all && ids.is_empty()) {
                Some(format!("{} agents named (all: {all})", ids.len()))
            } else {
                None
            }
        }
        AgentRelay::Ask(ask) => (ask.payload.len() > AgentRelay::MAX_MESSAGE || ask.payload.is_empty())
            .then(|| format!("a request of {} bytes", ask.payload.len())),
    }
}

impl Serve for AgentRelayServe {
    type Side = MasterSide;
    type Request = AgentRelay;

    fn serve(&mut self, relay: AgentRelay) -> LocalFuture<Result<Served<MasterToWorker>, ServeError>> {
        if let Some(why) = refusal(&relay) {
            warn!(node = self.node.as_str(); "worker {} relayed an agent message the master refuses: {why}", self.peer);
            return Box::pin(async move { Err(ServeError::Invalid(why)) });
        }
        let Some(relay_fn) = self.relays.get() else {
            return Box::pin(async {
                Err(ServeError::Unavailable("the master's manager integrations are not up".into()))
            });
        };
        let peer = self.peer.clone();
        Box::pin(async move {
            let count = if matches!(relay, AgentRelay::Ask(_)) { "asks" } else { "active_responses" };
            let done: AgentRelayed = relay_fn(peer, relay).await;
            Ok(Served { reply: MasterToWorker::AgentRelayed(done), counts: vec![(count, 1)] })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wazuh_cluster_protocol::message::AgentRequest;

    #[test]
    fn only_bounded_active_responses_and_requests_are_relayed() {
        let execd = |ids: Vec<u32>, all: bool, message: &str| AgentRelay::Execd { ids, all, message: message.into() };
        assert!(refusal(&execd(vec![1], false, "#!-execd {}")).is_none());
        assert!(refusal(&execd(vec![], true, "#!-execd {}")).is_none());
        assert!(refusal(&execd(vec![1], false, "#!-force_reconnect")).is_some());
        assert!(refusal(&execd(vec![1], false, "#!-req 1 getconfig")).is_some());
        assert!(refusal(&execd(vec![], false, "#!-execd {}")).is_some());
        assert!(refusal(&execd(vec![1], true, "#!-execd {}")).is_some());
        assert!(refusal(&execd((0..5000).collect(), false, "#!-execd {}")).is_some());
        let long = format!("#!-execd {}", "x".repeat(AgentRelay::MAX_MESSAGE));
        assert!(refusal(&execd(vec![1], false, &long)).is_some());
        let ask = |payload: &str| AgentRelay::Ask(AgentRequest { id: 1, payload: payload.into(), timeout_ms: 1 });
        assert!(refusal(&ask("logcollector getconfig localfile")).is_none());
        assert!(refusal(&ask("")).is_some());
    }
}
