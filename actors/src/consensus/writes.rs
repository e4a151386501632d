//! Where the registry's changes go: straight to the local registry (one master, as always), or
//! through the Raft log (master-eligible nodes), where they are committed by a majority and then
//! applied to every member's registry. Callers see one API and one error type either way; on a
//! node that does not lead, a change fails with [`StoreError::NotLeader`] naming the leader.

use super::network::Raft;
use crate::registry::command::{is_registry_change, Command, Outcome};
use crate::registry::enroll::{Fixed, NewAgent};
use crate::registry::master::Registry;
use crate::registry::store::{StoreError, StoreHandle};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::{AdminError, AdminRequest, AgentEntry};

/// How long a change may wait for a majority before it is answered as not done (it may still
/// commit later if the majority comes back; an enrollment's key is then never handed out, and the
/// agent expires as undelivered).
pub(crate) const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A leader that no majority of the masters acknowledged for this long accepts no change (its
/// lease is over): the others may be electing a new leader, which takes at least the shortest
/// election timeout ([`super::Timing`]) of silence, so it stays the only one taking changes.
pub const LEASE_MS: u64 = super::Timing::DEFAULT.election_min;

/// Most changes in one log entry, changes waiting for one, and entries being committed at once.
const MOST_PER_ENTRY: usize = 256;
const QUEUED: usize = 4_096;
const ENTRIES_IN_FLIGHT: usize = 1;
/// How long a round waits for more changes under load.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// The registry's writer (cheap to clone).
#[derive(Clone)]
pub struct Writes {
    registry: StoreHandle<Registry>,
    raft: Option<Raft>,
    /// Changes for the batching proposer (replicated only).
    proposals: Option<mpsc::Sender<Proposal>>,
}

/// A change waiting for its log entry, and who waits for its outcome.
struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

fn not_committed(e: &RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> StoreError {
    match e.forward_to_leader() {
        Some(f) => StoreError::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
        None => StoreError::NotCommitted(e.to_string()),
    }
}

fn timed_out() -> StoreError {
    StoreError::NotCommitted(format!("no majority of the masters committed it within {} s", COMMIT_TIMEOUT.as_secs()))
}

/// Gathers the changes that arrive while the previous entry is being committed into one entry
/// each round, so that a storm of enrollments costs one log write, one message per follower and
/// one transaction per member for many of them. The queue holds [`QUEUED`] changes; callers
/// wait for room when it is full.
///
/// Under load (the previous entry carried more than one change), a round waits up to [`LINGER`]
/// for more changes before it proposes: fewer, fuller entries cost every member less for the
/// same changes (the log's fsync, the messages, a transaction each), which is what bounds the
/// group's throughput. Otherwise (changes coming one at a time) an entry is proposed at once.
async fn propose_in_batches(raft: Raft, mut queue: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT));
    let mut busy = false;
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MOST_PER_ENTRY {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) if !busy => break,
                Err(_) => match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        busy = batch.len() > 1;
        let raft = raft.clone();
        actix_rt::spawn(async move {
            commit_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

async fn commit_batch(raft: &Raft, batch: Vec<Proposal>) {
    let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    match commit(raft, commands).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for reply in replies {
                let again = match &e {
                    StoreError::NotLeader(leader) => StoreError::NotLeader(leader.clone()),
                    StoreError::NotCommitted(why) => StoreError::NotCommitted(why.clone()),
                    other => StoreError::Invalid(other.to_string()),
                };
                let _ = reply.send(Err(again));
            }
        }
    }
}

/// Proposes `commands` as one entry (a batch when there are several) and waits for it to be
/// committed and applied here: their outcomes, in order.
async fn commit(raft: &Raft, mut commands: Vec<Command>) -> Result<Vec<Outcome>, StoreError> {
    leadership(raft).map_err(StoreError::NotLeader)?;
    let n = commands.len();
    let command = match commands.pop() {
        Some(only) if commands.is_empty() => only,
        last => Command::Batch(commands.into_iter().chain(last).collect()),
    };
    let written = tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(command)).await.map_err(|_| timed_out())?;
    match written.map_err(|e| not_committed(&e))?.data {
        Outcome::Batch(outcomes) if n > 1 && outcomes.len() == n => Ok(outcomes),
        outcome if n == 1 => Ok(vec![outcome]),
        other => Err(StoreError::Invalid(format!("a batch of {n} was applied as {other:?}"))),
    }
}

impl Writes {
    /// Changes applied to `registry` directly (a single master).
    pub fn local(registry: StoreHandle<Registry>) -> Self {
        Self { registry, raft: None, proposals: None }
    }

    /// Changes proposed through `raft`, whose state machine is `registry` (in batches: call it
    /// on the node's runtime, where the proposer runs).
    pub fn replicated(registry: StoreHandle<Registry>, raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED);
        actix_rt::spawn(propose_in_batches(raft.clone(), rx));
        Self { registry, raft: Some(raft), proposals: Some(tx) }
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
    /// [`COMMIT_TIMEOUT`] once its entry is proposed: a leader cut off from its majority answers
    /// no change as done, and refuses changes at once when its lease is over.
    async fn propose(&self, raft: &Raft, command: Command) -> Result<Outcome, StoreError> {
        leadership(raft).map_err(StoreError::NotLeader)?;
        let stopping = || StoreError::NotCommitted("the node is stopping".into());
        let queue = self.proposals.as_ref().ok_or_else(stopping)?;
        let (reply, answer) = oneshot::channel();
        queue.send(Proposal { command, reply }).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// Enrolls `agent` (idempotent per token): its key is returned only once the enrollment is
    /// committed (by a majority, when replicated).
    pub async fn enroll(&self, agent: NewAgent) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        self.insert(agent, Fixed::default()).await
    }

    /// [`Writes::enroll`] with the id or key an insertion fixes (`POST /agents/insert`).
    pub async fn insert(&self, agent: NewAgent, fixed: Fixed) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        let now = crate::clock::now_ms();
        let Some(raft) = &self.raft else {
            return self
                .registry
                .run(move |r| match r.prepare_insert(&agent, &fixed, now)? {
                    Ok(p) => r.apply_enrollment(&p),
                    Err(e) => Ok(Err(e)),
                })
                .await;
        };
        let prepared = match self.registry.run(move |r| r.prepare_insert(&agent, &fixed, now)).await? {
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
    pub(crate) async fn expire_pending(&self, older_than_ms: u64) -> Result<Vec<u32>, StoreError> {
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
    /// Applies the configured API users whose entry changed (see [`Registry::seed_users`]): the
    /// names applied. Replicated, only the leader may (the node that leads next seeds its own).
    pub async fn seed_users(&self, seeds: Vec<crate::registry::users::SeedUser>) -> Result<Vec<String>, StoreError> {
        let Some(raft) = &self.raft else { return self.registry.run(move |r| r.seed_users(&seeds)).await };
        match self.propose(raft, Command::SeedUsers(seeds)).await? {
            Outcome::Seeded(applied) => Ok(applied),
            Outcome::Admin(Err(e)) => Err(StoreError::Invalid(e.to_string())),
            other => Err(StoreError::Invalid(format!("the users were applied as {other:?}"))),
        }
    }

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

/// Whether `raft`'s node leads (and a majority acknowledged it within [`LEASE_MS`]), and the
/// leader's address when it does not (and one is known).
pub fn leadership(raft: &Raft) -> Result<(), Option<String>> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    match m.current_leader {
        Some(l) if l == m.id && m.state.is_leader() => match m.millis_since_quorum_ack {
            Some(ms) if ms <= LEASE_MS => Ok(()),
            _ => Err(None),
        },
        Some(l) => Err(super::member_addr(&m, l)),
        None => Err(None),
    }
}
