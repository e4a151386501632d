//! The job set of the master's end of one worker connection: six request servers, one pusher,
//! and two small tasks that carry the shared jobs' publications to this worker.
//!
//! | job | kind | serves / does |
//! |---|---|---|
//! | `KeepAlive` | server | `keep_alive` -> `keep_alive_ack`, keeps the worker's job reports |
//! | `AgentInfo` | server | `agent_info` -> `agent_info_ack`, statuses into the registry's inbox |
//! | `AgentGroupsSend` | pusher | the worker's position in, `agent_groups` out after every change |
//! | `Integrity` | server | `integrity_check`, `sync_manifest`, `fetch_files`; announces file changes |
//! | `Registration` | server | `enroll`, `enroll_resolve`, `admin` |
//! | `ApiCalls` | server | `api_call` -> `api_answer`: the master's API answers a worker's read |
//! | `AgentRelay` | server | `agent_relay` -> `agent_relayed`: a worker's daemons reach other nodes' agents |
//!
//! [`MasterJobs::deliver`](crate::connection::Dispatch::deliver) unpacks each message into the
//! typed request of the one job that serves it; a message no job takes in that form (a request
//! sent as a notification, a response type sent as a request) is refused with an `invalid` error.

use super::agent_groups::{AgentGroupsSend, GroupsMoved};
use super::relay::AgentRelayServe;
use super::servers::{
    AgentInfoServe, ApiCallServe, IntegrityRequest, IntegrityServe, KeepAliveServe, PeerReport, RegistrationRequest,
    RegistrationServe,
};
use crate::connection::{ConnHandle, Dispatch, Inbound, LocalFuture, MasterSide, Undeliverable};
use crate::jobs::local::{GetIntegrity, MasterServices};
use crate::jobs::runtime::{deliver as send, Controls, JobSetView, Notice, Request, Server, SetControl, MAILBOX};
use crate::settings::ChannelSettings;
use crate::supervise::{liveness, JobHealth};
use actix::prelude::*;
use log::warn;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use wazuh_cluster_protocol::message::{IntegrityChanged, JobKind, MessageName};
use wazuh_cluster_protocol::{Kind, MasterToWorker, WorkerToMaster};

/// How long a change of the API's users waits for every worker to hold it before it is answered:
/// half the request timeout (the forwarding worker's call must not time out meanwhile), at most 5 s.
pub fn settle_timeout(settings: &ChannelSettings) -> std::time::Duration {
    (settings.request_timeout / 2).min(std::time::Duration::from_secs(5))
}

/// The job actors of one worker connection, master end.
pub struct MasterJobs {
    keepalive: Addr<Server<KeepAliveServe>>,
    agent_info: Addr<Server<AgentInfoServe>>,
    agent_groups: Addr<AgentGroupsSend>,
    integrity: Addr<Server<IntegrityServe>>,
    registration: Addr<Server<RegistrationServe>>,
    api_calls: Addr<Server<ApiCallServe>>,
    relays: Addr<Server<AgentRelayServe>>,
    control: SetControl,
    report: Arc<Mutex<PeerReport>>,
    node: String,
    peer: String,
}

impl MasterJobs {
    /// Starts the jobs of the connection `conn` handles.
    pub fn spawn(conn: ConnHandle<MasterSide>, settings: &Arc<ChannelSettings>, services: &MasterServices) -> Rc<Self> {
        let (alive, all_stopped) = liveness();
        let (node, peer) = (settings.node_name.clone(), conn.peer().to_string());
        let report = Arc::new(Mutex::new(PeerReport::default()));
        let mut controls = Controls::default();

        let (keepalive, h) = Server::start(
            "KeepAlive",
            KeepAliveServe { report: report.clone() },
            conn.clone(),
            settings,
            alive.clone(),
        );
        controls.add("KeepAlive", &keepalive, h);
        let job = AgentInfoServe { statuses: services.statuses.clone(), peer: peer.clone() };
        let (agent_info, h) = Server::start("AgentInfo", job, conn.clone(), settings, alive.clone());
        controls.add("AgentInfo", &agent_info, h);

        let health = JobHealth::new("AgentGroupsSend", JobKind::Pusher, settings.jobs.restart_backoff());
        let (c, r, h, p) = (conn.clone(), services.registry.clone(), health.clone(), services.positions());
        let agent_groups = crate::supervise::start(MAILBOX, Some(alive.clone()), move |_| {
            AgentGroupsSend::new(h.clone(), c.clone(), r.clone(), p.clone())
        });
        controls.add("AgentGroupsSend", &agent_groups, health);

        let announcements = Arc::new(AtomicU64::new(0));
        let job = IntegrityServe {
            local: services.local_integrity.clone(),
            data_dir: settings.data_dir.clone(),
            max_frame: settings.max_frame,
            node: node.clone(),
            peer: peer.clone(),
            announcements: announcements.clone(),
            kept: Default::default(),
        };
        let (integrity, h) = Server::start("Integrity", job, conn.clone(), settings, alive.clone());
        controls.add("Integrity", &integrity, h);

        let job = RegistrationServe {
            writes: services.writes.clone(),
            node: node.clone(),
            peer: peer.clone(),
            admin: settings.admin.clone(),
            positions: services.positions(),
            settle_timeout: settle_timeout(settings),
            policy: settings.enrollment.clone(),
            version: conn.version(),
        };
        let (registration, h) = Server::start("Registration", job, conn.clone(), settings, alive.clone());
        controls.add("Registration", &registration, h);

        let job = ApiCallServe {
            reads: settings.api_calls.clone(),
            reader: None,
            max_body: settings.max_frame / 2,
            node: node.clone(),
            peer: peer.clone(),
        };
        let (api_calls, h) = Server::start("ApiCalls", job, conn.clone(), settings, alive.clone());
        controls.add("ApiCalls", &api_calls, h);

        let job = AgentRelayServe { relays: settings.agent_relays.clone(), node: node.clone(), peer: peer.clone() };
        let (relays, h) = Server::start("AgentRelay", job, conn.clone(), settings, alive);
        controls.add("AgentRelay", &relays, h);

        // The shared jobs' publications: one receiver each, taken here, once per connection.
        let tasks = vec![
            actix_rt::spawn(announce_file_changes(services.files(), services.clone(), conn, announcements)),
            actix_rt::spawn(follow_groups(services.groups(), agent_groups.downgrade())),
        ];
        Rc::new(MasterJobs {
            keepalive,
            agent_info,
            agent_groups,
            integrity,
            registration,
            api_calls,
            relays,
            control: SetControl::new(controls, tasks, all_stopped),
            report,
            node,
            peer,
        })
    }

    /// This end's jobs and what the worker last said of its own.
    pub fn view(&self) -> JobSetView {
        let report = self.report.lock().map(|r| r.clone()).unwrap_or_default();
        JobSetView { jobs: self.control.reports(), peer_jobs: report.jobs, last_keepalive_ms: report.last_keepalive_ms }
    }

    #[cfg(feature = "testing")]
    /// Sends `fault` to the job named `job`; false if there is none.
    pub(crate) fn inject(&self, job: &str, fault: crate::jobs::runtime::JobFault) -> bool {
        self.control.inject(job, fault)
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Notify => "a notification",
        Kind::Request(_) => "a request",
        Kind::Response(_) => "a response",
    }
}

impl Dispatch<MasterSide> for MasterJobs {
    fn deliver(&self, message: Inbound<WorkerToMaster>) -> LocalFuture<Result<(), Undeliverable>> {
        let Inbound { kind, body, permit } = message;
        use WorkerToMaster as W;
        match (kind, body) {
            (Kind::Request(id), W::KeepAlive(body)) => send(&self.keepalive, Request { id, body, permit }),
            (Kind::Request(id), W::AgentInfo(body)) => send(&self.agent_info, Request { id, body, permit }),
            (Kind::Notify, W::AgentGroupsAck(body)) => send(&self.agent_groups, Notice { body, _permit: permit }),
            (Kind::Request(id), W::IntegrityCheck(c)) => {
                send(&self.integrity, Request { id, body: IntegrityRequest::Check(c), permit })
            }
            (Kind::Request(id), W::SyncManifest(m)) => {
                send(&self.integrity, Request { id, body: IntegrityRequest::Manifest(m), permit })
            }
            (Kind::Request(id), W::FetchFiles(f)) => {
                send(&self.integrity, Request { id, body: IntegrityRequest::Fetch(f), permit })
            }
            (Kind::Request(id), W::Enroll(e)) => {
                send(&self.registration, Request { id, body: RegistrationRequest::Enroll(e), permit })
            }
            (Kind::Request(id), W::EnrollResolve(r)) => {
                send(&self.registration, Request { id, body: RegistrationRequest::Resolve(r), permit })
            }
            (Kind::Request(id), W::Admin(a)) => {
                send(&self.registration, Request { id, body: RegistrationRequest::Admin(a), permit })
            }
            (Kind::Request(id), W::ApiCall(body)) => send(&self.api_calls, Request { id, body, permit }),
            (Kind::Request(id), W::AgentRelay(body)) => send(&self.relays, Request { id, body, permit }),
            (Kind::Notify, W::Error(e)) => {
                warn!(node = self.node.as_str(); "worker {} sent an error that answers nothing: {e}", self.peer);
                Box::pin(async { Ok(()) })
            }
            (kind, body) => {
                let why = format!("{} is not valid as {}", body.name(), kind_name(kind));
                Box::pin(async move { Err(Undeliverable::Invalid(why)) })
            }
        }
    }

    fn stop(&self) -> LocalFuture<()> {
        self.control.stop()
    }
}

/// Tells the worker at once when the master's files change, with the change itself when it is
/// small; one that fell behind is told to compare everything.
async fn announce_file_changes(
    mut changes: broadcast::Receiver<crate::jobs::local::FilesChanged>,
    services: MasterServices,
    conn: ConnHandle<MasterSide>,
    announced: Arc<AtomicU64>,
) {
    loop {
        let body = match changes.recv().await {
            Ok(change) => {
                let (delta, changed, removed) = match &change.delta {
                    Some(d) => (true, d.changed.clone(), d.removed.clone()),
                    None => (false, Vec::new(), Vec::new()),
                };
                IntegrityChanged { master_digest: change.digest, delta, changed, removed }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(node = conn.node(); "worker {} missed {missed} file change announcements; it will compare everything", conn.peer());
                let digest = services.local_integrity.send(GetIntegrity).await.ok().flatten().map(|s| s.digest);
                IntegrityChanged { master_digest: digest.unwrap_or_default(), delta: false, ..Default::default() }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if conn.notify(MasterToWorker::IntegrityChanged(body)).await.is_err() {
            return;
        }
        announced.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wakes the connection's AgentGroupsSend each time the agent-groups table moves. Ends when the
/// job is gone for good (not when it restarts: a wake-up lost to a restart is sent again).
async fn follow_groups(
    mut groups: tokio::sync::watch::Receiver<Option<crate::jobs::local::GroupsState>>,
    job: actix::WeakAddr<AgentGroupsSend>,
) {
    let mut lost = 0;
    loop {
        let state = groups.borrow_and_update().clone();
        let Some(addr) = job.upgrade() else { return };
        // Waits for room: one wake-up at a time from here.
        if addr.send(GroupsMoved(state)).await.is_err() {
            if !addr.connected() {
                return;
            }
            // Lost in a restart (the job panicked while handling it): send it again, a few
            // times at most; after that the next change wakes it.
            lost += 1;
            if lost <= 3 {
                continue;
            }
        }
        lost = 0;
        drop(addr);
        if groups.changed().await.is_err() {
            return;
        }
    }
}
