//! What the rest of the node asks of the master's listener: its workers and their positions, the
//! shared jobs, join tokens and revocations, reconnect and reload orders to every worker.

use super::*;

/// Lists the connected workers.
#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub struct ListWorkers;

/// Where the connected workers' replicas stand (see [`WorkerPositions`]).
#[derive(Message)]
#[rtype(result = "Arc<crate::jobs::master::positions::WorkerPositions>")]
pub struct GetPositions;

impl Handler<GetPositions> for MasterListener {
    type Result = Arc<crate::jobs::master::positions::WorkerPositions>;

    fn handle(&mut self, _: GetPositions, _: &mut Context<Self>) -> Self::Result {
        self.services.positions()
    }
}

/// The inbox of the workers' agent statuses (its figures: health, tests).
#[derive(Message)]
#[rtype(result = "Arc<crate::jobs::master::statuses::StatusInbox>")]
pub struct GetStatusInbox;

impl Handler<GetStatusInbox> for MasterListener {
    type Result = Arc<crate::jobs::master::statuses::StatusInbox>;

    fn handle(&mut self, _: GetStatusInbox, _: &mut Context<Self>) -> Self::Result {
        self.services.statuses.clone()
    }
}

/// The master's own shared jobs.
#[derive(Message)]
#[rtype(result = "Vec<JobReport>")]
pub struct LocalJobs;

/// The master's current manifest digest and file count (benchmarks, tests).
#[derive(Message)]
#[rtype(result = "Option<(String, u64)>")]
pub struct GetManifestDigest;

impl Handler<GetManifestDigest> for MasterListener {
    type Result = ResponseFuture<Option<(String, u64)>>;

    fn handle(&mut self, _: GetManifestDigest, _: &mut Context<Self>) -> Self::Result {
        let local = self.services.local_integrity.clone();
        Box::pin(async move {
            local.send(crate::jobs::local::GetIntegrity).await.ok().flatten().map(|s| (s.digest, s.files))
        })
    }
}

/// A receiver of the master's file changes (the agent hub's, for merged.mg pushes).
#[derive(Message)]
#[rtype(result = "tokio::sync::broadcast::Receiver<FilesChanged>")]
pub struct SubscribeFiles;

/// Issues a join token (see [`Admission::issue`]).
#[derive(Message)]
#[rtype(result = "Result<Issued, StoreError>")]
pub struct IssueJoinToken {
    pub ttl: Duration,
    pub uses: u32,
}

impl Handler<IssueJoinToken> for MasterListener {
    type Result = Result<Issued, StoreError>;

    fn handle(&mut self, msg: IssueJoinToken, _: &mut Context<Self>) -> Self::Result {
        let issued = self.admission.issue(msg.ttl, msg.uses, crate::clock::now_ms())?;
        info!(node = self.settings.node_name.as_str(); "issued join token {} for {} join(s), valid until {} ms", issued.token.id, issued.uses, issued.expires_ms);
        Ok(issued)
    }
}

/// Revokes a worker's identity and closes its connection. `Ok(None)`: no such admitted worker.
#[derive(Message)]
#[rtype(result = "Result<Option<String>, StoreError>")]
pub struct RevokeWorker {
    pub name: String,
}

impl Handler<RevokeWorker> for MasterListener {
    type Result = Result<Option<String>, StoreError>;

    fn handle(&mut self, msg: RevokeWorker, _: &mut Context<Self>) -> Self::Result {
        let node = self.settings.node_name.as_str();
        let revoked = self.admission.revoke(&msg.name, crate::clock::now_ms())?;
        let Some(key) = revoked else { return Ok(None) };
        warn!(node = node; "revoked the identity {} of worker {}; it can no longer join", key.fingerprint(), msg.name);
        if let Some(live) = self.workers.remove(&msg.name) {
            live.addr.do_send(Close { reason: "this worker's identity was revoked".into() });
        }
        self.set_live(&msg.name, false);
        Ok(Some(key.fingerprint()))
    }
}

/// The admitted workers (connected or not).
#[derive(Message)]
#[rtype(result = "Result<Vec<KnownNode>, StoreError>")]
pub(crate) struct ListAdmitted;

impl Handler<ListAdmitted> for MasterListener {
    type Result = Result<Vec<KnownNode>, StoreError>;

    fn handle(&mut self, _: ListAdmitted, _: &mut Context<Self>) -> Self::Result {
        self.admission.known()
    }
}

impl Handler<ListWorkers> for MasterListener {
    type Result = ResponseFuture<Vec<ConnectionInfo>>;

    fn handle(&mut self, _: ListWorkers, _: &mut Context<Self>) -> Self::Result {
        let live: Vec<_> = self
            .workers
            .values()
            .filter(|w| w.addr.connected() && !w.handle.is_closed())
            .map(|w| (w.addr.clone(), w.jobs.view()))
            .collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(live.len());
            for (addr, view) in live {
                if let Ok(mut info) = addr.send(GetInfo).await {
                    info.jobs = view.jobs;
                    info.peer_jobs = view.peer_jobs;
                    info.last_keepalive_ms = view.last_keepalive_ms;
                    out.push(info);
                }
            }
            out.sort_by(|a, b| a.peer.node_name.cmp(&b.peer.node_name));
            out
        })
    }
}

impl Handler<SubscribeFiles> for MasterListener {
    type Result = MessageResult<SubscribeFiles>;

    fn handle(&mut self, _: SubscribeFiles, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.services.files())
    }
}

/// Why a worker gave no answer to a request of protocol 2.4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerAskError {
    #[error("node {0} is not connected to the master")]
    NotConnected(String),
    #[error("node {node} speaks protocol {version}: it cannot be asked this")]
    TooOld { node: String, version: ProtocolVersion },
    #[error("node {node} did not answer: {error}")]
    NoAnswer { node: String, error: String },
    #[error("node {node} answered {name}")]
    Unexpected { node: String, name: &'static str },
    /// The worker answered, with why it could not do it (an agent that did not answer).
    #[error("{0}")]
    Refused(String),
}

impl MasterListener {
    /// Sends worker `node` a request of protocol 2.4 (commands, requests to agents, API calls) and
    /// gives its answer; `Err`: the worker is not connected, speaks an older protocol, or did not
    /// answer.
    fn ask_worker(
        &self,
        node: &str,
        body: MasterToWorker,
    ) -> impl std::future::Future<Output = Result<wazuh_cluster_protocol::WorkerToMaster, WorkerAskError>> + 'static
    {
        let target = self.workers.get(node).filter(|w| !w.handle.is_closed()).map(|w| (w.handle.clone(), w.version));
        let node = node.to_string();
        async move {
            let Some((handle, version)) = target else { return Err(WorkerAskError::NotConnected(node)) };
            if version < wazuh_cluster_protocol::version::API_CALLS {
                return Err(WorkerAskError::TooOld { node, version });
            }
            handle.call(body).await.map_err(|e| WorkerAskError::NoAnswer { node, error: e.to_string() })
        }
    }
}

/// Has worker `node` send each agent its message on the agent's connection (protocol 2.4). The
/// agents whose connection took it, or why the worker could not be asked.
#[derive(Message)]
#[rtype(result = "Result<Vec<u32>, WorkerAskError>")]
pub struct CommandAgents {
    pub node: String,
    pub messages: Vec<(u32, String)>,
    /// A rebalancing move: the worker refuses these agents for this long after the message.
    pub away: Option<Duration>,
    /// A rebalancing move's steering: agents moved elsewhere that this worker refuses for `away`.
    pub refuse: Vec<u32>,
}

impl Handler<CommandAgents> for MasterListener {
    type Result = ResponseFuture<Result<Vec<u32>, WorkerAskError>>;

    fn handle(&mut self, msg: CommandAgents, _: &mut Context<Self>) -> Self::Result {
        let asked = self.ask_worker(
            &msg.node,
            MasterToWorker::AgentCommand(wazuh_cluster_protocol::message::AgentCommand {
                messages: msg.messages.clone(),
                away_ms: msg.away.map(|d| d.as_millis() as u64),
                refuse: msg.refuse.clone(),
            }),
        );
        Box::pin(async move {
            match asked.await? {
                wazuh_cluster_protocol::WorkerToMaster::AgentCommandSent(s) => Ok(s.sent),
                other => Err(WorkerAskError::Unexpected {
                    node: msg.node,
                    name: wazuh_cluster_protocol::message::MessageName::name(&other),
                }),
            }
        })
    }
}

/// Has worker `node` ask one of its agents a request and answer with the agent's answer.
#[derive(Message)]
#[rtype(result = "Result<String, WorkerAskError>")]
pub struct AskWorkerAgent {
    pub node: String,
    pub request: wazuh_cluster_protocol::message::AgentRequest,
}

impl Handler<AskWorkerAgent> for MasterListener {
    type Result = ResponseFuture<Result<String, WorkerAskError>>;

    fn handle(&mut self, msg: AskWorkerAgent, _: &mut Context<Self>) -> Self::Result {
        let asked = self.ask_worker(&msg.node, MasterToWorker::AgentRequest(msg.request.clone()));
        Box::pin(async move {
            match asked.await? {
                wazuh_cluster_protocol::WorkerToMaster::AgentAnswer(a) => a.outcome.map_err(WorkerAskError::Refused),
                other => Err(WorkerAskError::Unexpected {
                    node: msg.node,
                    name: wazuh_cluster_protocol::message::MessageName::name(&other),
                }),
            }
        })
    }
}

/// Has worker `node`'s API answer a read of its own (`GET /manager/...`).
#[derive(Message)]
#[rtype(result = "Result<wazuh_cluster_protocol::message::ApiAnswer, WorkerAskError>")]
pub struct CallWorkerApi {
    pub node: String,
    pub call: wazuh_cluster_protocol::message::ApiCall,
}

impl Handler<CallWorkerApi> for MasterListener {
    type Result = ResponseFuture<Result<wazuh_cluster_protocol::message::ApiAnswer, WorkerAskError>>;

    fn handle(&mut self, msg: CallWorkerApi, _: &mut Context<Self>) -> Self::Result {
        let asked = self.ask_worker(&msg.node, MasterToWorker::NodeApiCall(msg.call.clone()));
        Box::pin(async move {
            match asked.await? {
                wazuh_cluster_protocol::WorkerToMaster::NodeApiAnswer(a) => Ok(a),
                other => Err(WorkerAskError::Unexpected {
                    node: msg.node,
                    name: wazuh_cluster_protocol::message::MessageName::name(&other),
                }),
            }
        })
    }
}

/// Asks every connected worker to have its analysisd reload the ruleset once its files reached
/// the master's digest, read afresh from disk now (a file written just before the request counts);
/// the outcome per worker, by name.
#[derive(Message)]
#[rtype(result = "Vec<(String, wazuh_cluster_protocol::message::RulesetReloaded)>")]
pub struct ReloadWorkers;

impl Handler<ReloadWorkers> for MasterListener {
    type Result = ResponseFuture<Vec<(String, wazuh_cluster_protocol::message::RulesetReloaded)>>;

    fn handle(&mut self, _: ReloadWorkers, _: &mut Context<Self>) -> Self::Result {
        use wazuh_cluster_protocol::message::{ReloadRuleset, RulesetReloaded};
        let local = self.services.local_integrity.clone();
        let dir = self.settings.data_dir.clone();
        use wazuh_cluster_protocol::WorkerToMaster;
        let targets: Vec<(String, ConnHandle<MasterSide>, ProtocolVersion)> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.handle.is_closed())
            .map(|(name, w)| (name.clone(), w.handle.clone(), w.version))
            .collect();
        Box::pin(async move {
            // The digest the workers sync to once the master's integrity job has seen the same.
            let previous = local.send(crate::jobs::local::GetIntegrity).await.ok().flatten().map(|c| c.manifest);
            let scanned =
                actix_rt::task::spawn_blocking(move || crate::manifest::scan(&dir, previous.as_deref()).0.digest())
                    .await;
            let Ok(digest) = scanned else {
                let answer = RulesetReloaded { reloaded: false, message: "the master could not read its files".into() };
                return targets.into_iter().map(|(name, _, _)| (name, answer.clone())).collect();
            };
            let asks = targets.into_iter().map(|(name, handle, version)| {
                let digest = digest.clone();
                async move {
                    if version < ProtocolVersion::new(2, 1) {
                        let message = format!("this worker speaks protocol {version}: it cannot be asked to reload");
                        return (name, RulesetReloaded { reloaded: false, message });
                    }
                    let answer = match handle.call(MasterToWorker::ReloadRuleset(ReloadRuleset { digest })).await {
                        Ok(WorkerToMaster::RulesetReloaded(r)) => r,
                        Ok(other) => RulesetReloaded {
                            reloaded: false,
                            message: format!(
                                "unexpected answer {}",
                                wazuh_cluster_protocol::message::MessageName::name(&other)
                            ),
                        },
                        Err(e) => RulesetReloaded { reloaded: false, message: e.to_string() },
                    };
                    (name, answer)
                }
            });
            let mut out = futures_util::future::join_all(asks).await;
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        })
    }
}

impl Handler<LocalJobs> for MasterListener {
    type Result = Vec<JobReport>;

    fn handle(&mut self, _: LocalJobs, _: &mut Context<Self>) -> Vec<JobReport> {
        self.services.healths().iter().map(JobHealth::snapshot).collect()
    }
}

#[cfg(feature = "testing")]
impl Handler<crate::jobs::runtime::InjectFault> for MasterListener {
    type Result = bool;

    fn handle(&mut self, msg: crate::jobs::runtime::InjectFault, _: &mut Context<Self>) -> bool {
        let fault = JobFault { kind: msg.kind, count: msg.count };
        match &msg.worker {
            Some(worker) => self.workers.get(worker).is_some_and(|w| w.jobs.inject(&msg.job, fault)),
            None => self.services.controls().inject(&msg.job, fault),
        }
    }
}
