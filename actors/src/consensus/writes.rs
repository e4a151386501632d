//! Where the registry's changes go: straight to the local registry (one master, as always), or
//! through the Raft log (master-eligible nodes), where they are committed by a majority and then
//! applied to every member's registry. Callers see one API and one error type either way; on a
//! node that does not lead, a change fails with [`StoreError::NotLeader`] naming the leader.

use super::network::Raft;
use crate::registry::command::{is_registry_change, Command, Outcome};
use crate::registry::master::{NewAgent, Registry};
use crate::registry::store::{StoreError, StoreHandle};
use openraft::error::{ClientWriteError, RaftError};
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::{AdminError, AdminRequest, AgentEntry};

/// How long a change may wait for a majority before it is answered as not done (it may still
/// commit later if the majority comes back; an enrollment's key is then never handed out, and the
/// agent expires as undelivered).
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The registry's writer (cheap to clone).
#[derive(Clone)]
pub struct Writes {
    registry: StoreHandle<Registry>,
    raft: Option<Raft>,
}

fn not_committed(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> StoreError {
    match e.forward_to_leader() {
        Some(f) => StoreError::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
        None => StoreError::NotCommitted(e.to_string()),
    }
}

impl Writes {
    /// Changes applied to `registry` directly (a single master).
    pub fn local(registry: StoreHandle<Registry>) -> Self {
        Self { registry, raft: None }
    }

    /// Changes proposed through `raft`, whose state machine is `registry`.
    pub fn replicated(registry: StoreHandle<Registry>, raft: Raft) -> Self {
        Self { registry, raft: Some(raft) }
    }

    /// The registry, for reads.
    pub fn registry(&self) -> &StoreHandle<Registry> {
        &self.registry
    }

    /// The Raft node, when the registry is replicated.
    pub fn raft(&self) -> Option<&Raft> {
        self.raft.as_ref()
    }

    /// Proposes `command` and waits for it to be committed and applied here, for at most
    /// [`COMMIT_TIMEOUT`]: a leader cut off from its majority answers no change as done.
    async fn propose(&self, raft: &Raft, command: Command) -> Result<Outcome, StoreError> {
        match tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(command)).await {
            Ok(result) => Ok(result.map_err(not_committed)?.data),
            Err(_) => Err(StoreError::NotCommitted(format!(
                "no majority of the masters committed it within {} s",
                COMMIT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Enrolls `agent` (idempotent per token): its key is returned only once the enrollment is
    /// committed (by a majority, when replicated).
    pub async fn enroll(&self, agent: NewAgent) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        let Some(raft) = &self.raft else { return self.registry.run(move |r| r.enroll(&agent)).await };
        let now = crate::clock::now_ms();
        let prepared = match self.registry.run(move |r| r.prepare_enrollment(&agent, now)).await? {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        match self.propose(raft, Command::Enroll(prepared)).await? {
            Outcome::Enrolled(outcome) => Ok(outcome),
            other => Err(StoreError::Invalid(format!("an enrollment was applied as {other:?}"))),
        }
    }

    /// A worker delivered an enrollment's key (keep the agent) or could not (remove it).
    pub async fn resolve(&self, token: String, delivered: bool) -> Result<(), StoreError> {
        let Some(raft) = &self.raft else { return self.registry.run(move |r| r.resolve(&token, delivered)).await };
        self.propose(raft, Command::Resolve { token, delivered }).await.map(|_| ())
    }

    /// Removes agents whose delivery was never confirmed within `older_than_ms`: the ids removed.
    /// Replicated, only the leader proposes it (others answer with nothing to do).
    pub async fn expire_pending(&self, older_than_ms: u64) -> Result<Vec<u32>, StoreError> {
        let Some(raft) = &self.raft else { return self.registry.run(move |r| r.expire_pending(older_than_ms)).await };
        if leadership(raft).is_err() {
            return Ok(Vec::new());
        }
        let cutoff = crate::clock::now_ms().saturating_sub(older_than_ms);
        let ids = self.registry.run(move |r| r.pending_older_than(cutoff)).await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        match self.propose(raft, Command::Expire { ids }).await? {
            Outcome::Expired(removed) => Ok(removed),
            other => Err(StoreError::Invalid(format!("an expiry was applied as {other:?}"))),
        }
    }

    /// A change to agents or groups (through the log when replicated), or to files (on this node,
    /// which must lead when replicated: its sync roots are the ones the others follow).
    pub async fn admin(&self, request: AdminRequest) -> Result<Result<(), AdminError>, StoreError> {
        let Some(raft) = &self.raft else { return self.registry.run(move |r| r.admin(&request)).await };
        if !is_registry_change(&request) {
            leadership(raft).map_err(StoreError::NotLeader)?;
            return self.registry.run(move |r| r.admin(&request)).await;
        }
        let command = Command::Admin { request, at_ms: crate::clock::now_ms() };
        match self.propose(raft, command).await? {
            Outcome::Admin(outcome) => Ok(outcome),
            other => Err(StoreError::Invalid(format!("a change was applied as {other:?}"))),
        }
    }
}

/// Whether `raft`'s node leads, and the leader's address when it does not (and one is known).
pub fn leadership(raft: &Raft) -> Result<(), Option<String>> {
    let m = raft.metrics().borrow().clone();
    match m.current_leader {
        Some(l) if l == m.id && m.state.is_leader() => Ok(()),
        Some(l) => Err(m.membership_config.nodes().find(|(id, _)| **id == l).map(|(_, n)| n.addr.clone())),
        None => Err(None),
    }
}
