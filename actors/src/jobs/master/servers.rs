//! The request servers of the master's end of a worker connection: KeepAlive, AgentInfo,
//! Integrity and Registration. Each is a [`Serve`] that a [`Server`](crate::jobs::runtime::Server)
//! runs: requests are served concurrently, a failed one is answered with a typed error.
//!
//! Everything a worker sends is checked here as untrusted input: statuses are stored only for
//! agents that exist and never over a newer report of another node; files are served only from
//! the manifest and through confined paths; enrollments and changes go through the registry's
//! own validation.

use crate::connection::{LocalFuture, MasterSide};
use crate::jobs::local::{GetIntegrity, LocalIntegrity};
use crate::jobs::master::statuses::StatusInbox;
use crate::jobs::runtime::{Serve, ServeError, Served};
use crate::registry::NewAgent;
use actix::Addr;
use log::{info, warn};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wazuh_cluster_protocol::message::{
    AdminError, AdminForward, AdminResult, AgentInfoAck, AgentInfoBatch, ApiAnswer, ApiCall, EnrollForward,
    EnrollResolve, EnrollResult, FetchFiles, IntegrityCheck, IntegrityStatus, JobReport, KeepAlive, KeepAliveAck,
    SyncManifest, SyncPlan,
};
use wazuh_cluster_protocol::MasterToWorker;

/// What the worker last reported about itself (in its keep-alives).
#[derive(Debug, Default, Clone)]
pub(crate) struct PeerReport {
    pub jobs: Vec<JobReport>,
    pub last_keepalive_ms: Option<u64>,
}

/// Answers keep-alives, keeping the worker's own job reports for the health check.
pub(crate) struct KeepAliveServe {
    pub report: Arc<Mutex<PeerReport>>,
}

impl Serve for KeepAliveServe {
    type Side = MasterSide;
    type Request = KeepAlive;

    fn serve(&mut self, ka: KeepAlive) -> LocalFuture<Result<Served<MasterToWorker>, ServeError>> {
        let now = crate::clock::now_ms();
        if let Ok(mut r) = self.report.lock() {
            r.jobs = ka.jobs;
            r.last_keepalive_ms = Some(now);
        }
        let ack = KeepAliveAck { echo_sent_at_ms: ka.sent_at_ms, master_time_ms: now };
        Box::pin(async move { Ok(Served::reply(MasterToWorker::KeepAliveAck(ack))) })
    }
}

/// Takes the statuses of the worker's agents into the master's inbox and answers at once: the
/// registry stores them right after, only for agents that exist, never over a newer report of
/// another node (an agent that moved); see [`StatusInbox`].
pub(crate) struct AgentInfoServe {
    pub statuses: Arc<StatusInbox>,
    pub peer: String,
}

impl Serve for AgentInfoServe {
    type Side = MasterSide;
    type Request = AgentInfoBatch;

    fn serve(&mut self, batch: AgentInfoBatch) -> LocalFuture<Result<Served<MasterToWorker>, ServeError>> {
        let (statuses, peer) = (self.statuses.clone(), self.peer.clone());
        Box::pin(async move {
            let taken = statuses.put(&peer, batch.updates).await;
            Ok(Served {
                reply: MasterToWorker::AgentInfoAck(AgentInfoAck { stored: taken, unknown: 0 }),
                counts: vec![("taken", taken.into())],
            })
        })
    }

    /// The inbox's figures (every worker's, the same on each connection).
    fn figures(&self) -> Vec<(String, u64)> {
        let f = *self.statuses.figures().borrow();
        [
            ("inbox_bound", self.statuses.bound() as u64),
            ("inbox_waiting", f.waiting),
            ("inbox_stored", f.stored),
            ("inbox_unknown", f.unknown),
            ("inbox_stale", f.stale),
            ("inbox_failed_writes", f.failed_writes),
            ("inbox_dropped", f.dropped),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The requests of a worker's file sync.
pub(crate) enum IntegrityRequest {
    Check(IntegrityCheck),
    Manifest(SyncManifest),
    Fetch(FetchFiles),
}

/// Serves file sync from `LocalIntegrity`'s manifest: digest checks, plans, and file contents
/// (only files of the manifest, only through confined paths).
pub(crate) struct IntegrityServe {
    pub local: Addr<LocalIntegrity>,
    pub data_dir: PathBuf,
    pub max_frame: usize,
    pub node: String,
    pub peer: String,
    /// Changes announced to the worker (by the connection's announcer task).
    pub announcements: Arc<AtomicU64>,
    /// When the worker keeps files the master does not serve (held back, or node-owned names an
    /// older worker lists): the master's digest at this worker's last plan and the digest the worker
    /// reaches by following it, so that its next checks count as in sync while neither changes.
    pub kept: Arc<std::sync::Mutex<Option<(String, String)>>>,
}

impl Serve for IntegrityServe {
    type Side = MasterSide;
    type Request = IntegrityRequest;

    fn serve(&mut self, request: IntegrityRequest) -> LocalFuture<Result<Served<MasterToWorker>, ServeError>> {
        let (local, data_dir, max_frame) = (self.local.clone(), self.data_dir.clone(), self.max_frame);
        let (node, peer, kept) = (self.node.clone(), self.peer.clone(), self.kept.clone());
        Box::pin(async move {
            let summary = local
                .send(GetIntegrity)
                .await
                .map_err(|e| ServeError::Internal(format!("LocalIntegrity did not answer: {e}")))?
                .ok_or_else(|| ServeError::Unavailable("the master's manifest is not computed yet".into()))?;
            match request {
                IntegrityRequest::Check(check) => {
                    let tolerated = kept
                        .lock()
                        .map(|k| k.as_ref() == Some(&(summary.digest.clone(), check.manifest_digest.clone())))
                        .unwrap_or(false);
                    let in_sync = summary.digest == check.manifest_digest || tolerated;
                    let status = IntegrityStatus { master_digest: summary.digest, files: summary.files, in_sync };
                    Ok(Served { reply: MasterToWorker::IntegrityStatus(status), counts: vec![("checks", 1)] })
                }
                IntegrityRequest::Manifest(theirs) => {
                    let (fetch, delete, _, _) = crate::files::plan(&summary.manifest, &theirs.files);
                    // What the worker holds once it follows the plan: the master's files, plus
                    // its own copies of the paths held back and of the names each node owns.
                    let manifest = summary.manifest.clone();
                    let master_digest = actix_rt::task::spawn_blocking(move || manifest.digest_for(&theirs.files))
                        .await
                        .map_err(|e| ServeError::Internal(format!("the digest thread failed: {e}")))?;
                    if let Ok(mut k) = kept.lock() {
                        *k = (master_digest != summary.digest).then(|| (summary.digest.clone(), master_digest.clone()));
                    }
                    let plan = SyncPlan { master_digest, fetch, delete };
                    Ok(Served { reply: MasterToWorker::SyncPlan(plan), counts: vec![("plans", 1)] })
                }
                IntegrityRequest::Fetch(req) => {
                    // Answers stay well inside one frame.
                    let budget = (req.max_bytes as usize).clamp(1, max_frame / 2);
                    let (manifest, parts) = (summary.manifest.clone(), summary.parts.clone());
                    let batch = actix_rt::task::spawn_blocking(move || {
                        crate::files::read_batch(&data_dir, &manifest, req.items, budget, Some(&parts))
                    })
                    .await
                    .map_err(|e| ServeError::Internal(format!("the file reader failed: {e}")))?;
                    let bytes: u64 = batch.parts.iter().map(|p| p.raw_len).sum();
                    let (files, refused) = (batch.parts.len() as u64, batch.refused.len() as u64);
                    if refused > 0 {
                        warn!(node = node.as_str(); "worker {peer} asked for {refused} files that were not served (gone, changed or refused)");
                    }
                    Ok(Served {
                        reply: MasterToWorker::FileBatch(batch),
                        counts: vec![("bytes_sent", bytes), ("file_parts_sent", files), ("refused", refused)],
                    })
                }
            }
        })
    }

    fn figures(&self) -> Vec<(String, u64)> {
        vec![("announcements".into(), self.announcements.load(Ordering::Relaxed))]
    }
}

fn printable(text: &str) -> String {
    wazuh_cluster_protocol::agent::enrollment::printable(text).into_owned()
}

/// What a worker forwards to the master: enrollments, their outcomes, agent and group changes.
pub(crate) enum RegistrationRequest {
    Enroll(EnrollForward),
    Resolve(EnrollResolve),
    Admin(AdminForward),
}

/// Serves what a worker forwards, through the registry (which validates it like the master's own
/// requests). Enrollments from one worker are served concurrently; the registry commits them in
/// groups.
pub(crate) struct RegistrationServe {
    pub writes: crate::consensus::writes::Writes,
    pub node: String,
    pub peer: String,
    /// Whether a forwarded change's credential is an administrator's (`None`: none is taken).
    pub admin: Option<crate::settings::AdminCheck>,
    /// Where the workers' replicas stand: a user change is answered once every worker has it.
    pub positions: Arc<super::positions::WorkerPositions>,
    /// How long a user change waits for the workers at most.
    pub settle_timeout: std::time::Duration,
    /// The cluster's enrollment policy (password, CA, rate), checked on every forwarded enrollment.
    pub policy: Arc<crate::enrollment_policy::EnrollmentPolicy>,
    /// The protocol version of this worker's connection.
    pub version: wazuh_cluster_protocol::ProtocolVersion,
}

impl Serve for RegistrationServe {
    type Side = MasterSide;
    type Request = RegistrationRequest;

    fn serve(&mut self, request: RegistrationRequest) -> LocalFuture<Result<Served<MasterToWorker>, ServeError>> {
        let (writes, node, peer) = (self.writes.clone(), self.node.clone(), self.peer.clone());
        let admin = self.admin.clone();
        let (positions, settle_timeout) = (self.positions.clone(), self.settle_timeout);
        let (policy, version) = (self.policy.clone(), self.version);
        Box::pin(async move {
            match request {
                RegistrationRequest::Enroll(f) => {
                    let token = f.token.clone();
                    // The cluster's policy first: a refusal leaves nothing in the registry.
                    if let Err(refused) = policy.check_forwarded(&f, version) {
                        policy.said(|| warn!(node = node.as_str(); "enrollment of {} through worker {peer} refused: {refused}", printable(&f.name)));
                        let outcome = Err(refused.reply(&f.name, version));
                        return Ok(Served {
                            reply: MasterToWorker::EnrollResult(EnrollResult { token, outcome }),
                            counts: vec![("refused", 1)],
                        });
                    }
                    let agent = NewAgent::from_forward(f, peer, true);
                    // A store failure is an error answer: the worker then tells the agent and
                    // settles the token, so no half-made agent stays.
                    let outcome = writes.enroll(agent).await?;
                    let counts =
                        vec![("enrolled", u64::from(outcome.is_ok())), ("refused", u64::from(outcome.is_err()))];
                    Ok(Served { reply: MasterToWorker::EnrollResult(EnrollResult { token, outcome }), counts })
                }
                RegistrationRequest::Resolve(r) => {
                    let token = r.token.clone();
                    let delivered = r.delivered;
                    writes.resolve(token, delivered).await?;
                    Ok(Served { reply: MasterToWorker::EnrollResolved(r), counts: vec![("resolved", 1)] })
                }
                RegistrationRequest::Admin(AdminForward { request, credential }) => {
                    let what = format!("{request:?}");
                    if !admin.as_ref().is_some_and(|a| a.allows(&credential, &request)) {
                        warn!(node = node.as_str(); "worker {peer} forwarded {what} without a valid API credential; refused");
                        return Ok(Served {
                            reply: MasterToWorker::AdminResult(AdminResult { outcome: Err(AdminError::Unauthorized) }),
                            counts: vec![("unauthorized", 1)],
                        });
                    }
                    let user = request.is_user();
                    let outcome = writes.admin(request).await?;
                    if outcome.is_ok() {
                        info!(node = node.as_str(); "worker {peer} applied {what} through the master");
                        if user {
                            let late = positions.wait_for_registry(writes.registry(), settle_timeout).await;
                            if !late.is_empty() {
                                warn!(node = node.as_str(); "{what}: workers {} have not confirmed it yet", late.join(", "));
                            }
                        }
                    }
                    Ok(Served {
                        reply: MasterToWorker::AdminResult(AdminResult { outcome }),
                        counts: vec![("changes", 1)],
                    })
                }
            }
        })
    }
}

/// Answers the API reads the worker forwards through the master's own API (which checks the
/// caller's credential as it checks its own callers'): every node's API answers a read alike.
pub(crate) struct ApiCallServe {
    pub reads: crate::settings::ApiCalls,
    /// Made at the first read (the API may start after the connection).
    pub reader: Option<std::rc::Rc<dyn crate::settings::CallApi>>,
    /// Largest answer sent back (half a frame: the envelope and the sealing stay inside one).
    pub max_body: usize,
    pub node: String,
    pub peer: String,
}

/// An answer of the master's own making, in the API's error format.
fn read_refusal(status: u16, why: &str) -> ApiAnswer {
    let body = serde_json::json!({ "title": why, "detail": why, "error": status });
    ApiAnswer { status, content_type: "application/json".into(), body: body.to_string().into_bytes() }
}

/// Whether `target` is a request target the API could be asked: an origin-form path (and query)
/// of printable ASCII, no longer than [`ApiCall::MAX_TARGET`].
fn valid_target(target: &str) -> bool {
    target.len() <= ApiCall::MAX_TARGET && target.starts_with('/') && target.bytes().all(|b| b.is_ascii_graphic())
}

impl Serve for ApiCallServe {
    type Side = MasterSide;
    type Request = ApiCall;

    fn serve(&mut self, request: ApiCall) -> LocalFuture<Result<Served<MasterToWorker>, ServeError>> {
        let answer = |result: ApiAnswer, count: &'static str| Served {
            reply: MasterToWorker::ApiAnswer(result),
            counts: vec![(count, 1)],
        };
        if !valid_target(&request.target) || request.body.len() > ApiCall::MAX_BODY {
            warn!(node = self.node.as_str(); "worker {} forwarded an API call with an invalid target ({} bytes) or body ({} bytes); refused", self.peer, request.target.len(), request.body.len());
            let refused = read_refusal(400, "invalid request target or body");
            return Box::pin(async move { Ok(answer(refused, "refused")) });
        }
        if self.reader.is_none() {
            self.reader = self.reads.reader().map(std::rc::Rc::from);
        }
        let Some(reader) = self.reader.clone() else {
            let refused = read_refusal(503, "the master serves no API: reads through a worker need the master's");
            return Box::pin(async move { Ok(answer(refused, "refused")) });
        };
        let (max_body, node, peer) = (self.max_body, self.node.clone(), self.peer.clone());
        Box::pin(async move {
            let result = reader.call(request).await;
            if result.body.len() > max_body {
                warn!(node = node.as_str(); "an API read worker {peer} forwarded answers {} bytes, more than one frame carries; refused", result.body.len());
                let why = format!(
                    "the answer ({} bytes) is larger than a cluster frame carries ({max_body}): ask for fewer items (limit)",
                    result.body.len()
                );
                return Ok(answer(read_refusal(413, &why), "too_large"));
            }
            Ok(answer(result, "reads"))
        })
    }
}

#[cfg(test)]
mod read_tests {
    use super::valid_target;

    #[test]
    fn only_origin_form_printable_targets_are_forwarded() {
        assert!(valid_target("/agents?status=active&q=os.platform~ubuntu"));
        for bad in ["agents", "http://evil/agents", "/agents\r\nX: y", "/a b", "", "/\u{e9}"] {
            assert!(!valid_target(bad), "{bad:?}");
        }
        assert!(!valid_target(&format!("/{}", "a".repeat(super::ApiCall::MAX_TARGET))));
    }
}
