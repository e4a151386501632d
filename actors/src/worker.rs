//! `WorkerLink`: a worker's link to the master. Dials, runs the connection and its jobs, and when
//! the connection is lost redials with exponential back-off and jitter (first retry within
//! `reconnect_min`, then doubling up to `reconnect_max`). It never gives up and never waits on a
//! dead socket: a dial has the handshake deadline, and a connection silent for three keep-alive
//! intervals is closed. It also carries what the worker forwards to the master: enrollments, their
//! outcomes (kept in the replica's outbox until acknowledged), and agent/group changes.
//!
//! With several master-eligible nodes it follows the leader ([`WorkerLink::following`]): a node
//! that does not lead names the leader, which is dialled next. A failover is followed in seconds
//! whatever the leader's failure: the keep-alive is at most [`HA_KEEPALIVE`], so a leader that is
//! frozen or cut off is found silent within three of them; the master it left is dialled last for
//! [`LEFT_FOR`] (the others elect its successor meanwhile, and name it); and dials while following
//! a failover have [`FAILOVER_HANDSHAKE`] to finish rather than the full handshake timeout.

use crate::backoff::Backoff;
use crate::connection::{
    self, Abort, CallError, Close, ConnHandle, ConnectionActor, ConnectionClosed, ConnectionInfo, Dispatch, GetInfo,
    WorkerSide,
};
#[cfg(feature = "testing")]
use crate::jobs::runtime::JobFault;
use crate::jobs::worker::{WorkerJobs, WorkerServices};
use crate::link::{self, LinkError};
use crate::settings::ChannelSettings;
use crate::supervise::Kill;
use actix::prelude::*;
use log::{error, info, warn};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wazuh_cluster_protocol::message::{
    AdminForward, AdminRequest, AdminResult, ApiAnswer, ApiCall, EnrollForward, EnrollResolve, EnrollResult,
};
use wazuh_cluster_protocol::{MasterToWorker, Refusal, WorkerToMaster};

/// The connection to the master while there is one.
struct Live {
    addr: Addr<ConnectionActor<WorkerSide>>,
    handle: ConnHandle<WorkerSide>,
    jobs: Rc<WorkerJobs>,
}

pub struct WorkerLink {
    settings: Arc<ChannelSettings>,
    services: WorkerServices,
    /// The address dialled now (the master, or with high availability the node believed to lead).
    master: String,
    /// High availability: every master-eligible node, tried in turn (empty: one master).
    masters: Vec<String>,
    /// High availability: the master whose connection ended last, and when (dialled last for
    /// [`LEFT_FOR`], even when another names it as the leader).
    left: Option<(String, Instant)>,
    conn: Option<Live>,
    /// Failed attempts since the last established connection.
    failures: u32,
    stopping: bool,
}

/// The current connection, if any.
#[derive(Message)]
#[rtype(result = "Option<ConnectionInfo>")]
pub struct GetLink;

/// Says goodbye to the master, waits (bounded) for the connection and its jobs to stop, and stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub reason: String,
}

/// Why something could not be forwarded to the master.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    /// No connection to the master now: try again later.
    #[error("not connected to the master")]
    NotConnected,
    #[error(transparent)]
    Call(#[from] CallError),
    /// The worker is stopping.
    #[error("the worker is stopping")]
    Stopping,
}

/// High availability: the longest keep-alive interval of a worker's link (a leader that stopped
/// answering is found silent within three of them).
pub const HA_KEEPALIVE: Duration = Duration::from_secs(1);
/// High availability: how long the master whose connection just ended is dialled last.
pub const LEFT_FOR: Duration = Duration::from_secs(5);
/// High availability: the handshake deadline while following a failover.
pub const FAILOVER_HANDSHAKE: Duration = Duration::from_secs(2);

impl WorkerLink {
    pub fn new(settings: Arc<ChannelSettings>, master: String, services: WorkerServices) -> Self {
        Self { settings, services, master, masters: Vec::new(), left: None, conn: None, failures: 0, stopping: false }
    }

    /// Follows the leader among `masters` (the master-eligible nodes): a node that does not lead
    /// names the leader, which is dialled next; one that cannot be reached makes way for the next
    /// in the list. Each one's identity is pinned under its name.
    /// Starts the link. The node cannot serve without it: a panic cuts `lifeline` (see
    /// `supervise::start_watched`).
    pub fn launch(self, lifeline: crate::supervise::Lifeline) -> Addr<Self> {
        let node = self.settings.node_name.clone();
        let what = "the worker's link to its master (WorkerLink)".to_string();
        crate::supervise::start_watched(Context::new(), self, what, node, crate::supervise::OnPanic::Fatal(lifeline))
    }

    pub fn following(mut self, masters: Vec<String>) -> Self {
        if masters.len() > 1 {
            self.masters = masters;
            if self.settings.keepalive_interval > HA_KEEPALIVE {
                let mut settings = (*self.settings).clone();
                settings.keepalive_interval = HA_KEEPALIVE;
                self.settings = Arc::new(settings);
            }
        }
        self
    }

    /// Whether `master` is the one whose connection ended less than [`LEFT_FOR`] ago.
    fn just_left(&self, master: &str) -> bool {
        self.left.as_ref().is_some_and(|(m, at)| m == master && at.elapsed() < LEFT_FOR)
    }

    /// How long a dial may take: [`FAILOVER_HANDSHAKE`] while following a failover (a master
    /// that is cut off is not waited on for the full handshake timeout).
    fn dial_deadline(&self) -> Duration {
        let following_failover = !self.masters.is_empty() && (self.failures > 0 || self.left.is_some());
        if following_failover {
            self.settings.handshake_timeout.min(FAILOVER_HANDSHAKE)
        } else {
            self.settings.handshake_timeout
        }
    }

    fn conn_handle(&self) -> Option<ConnHandle<WorkerSide>> {
        self.conn.as_ref().map(|l| l.handle.clone())
    }

    /// Sends every enrollment outcome the master has not acknowledged yet.
    fn flush_outbox(&mut self, ctx: &mut Context<Self>) {
        let Some(conn) = self.conn_handle() else { return };
        let replica = self.services.replica.clone();
        let node = self.settings.node_name.clone();
        let fut = async move {
            let pending = match replica.run(|r| r.outbox()).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(node = node.as_str(); "cannot read the enrollment outbox: {e}; it is sent after the next connect");
                    return;
                }
            };
            for (token, delivered) in pending {
                let body = WorkerToMaster::EnrollResolve(EnrollResolve { token: token.clone(), delivered });
                match conn.call(body).await {
                    Ok(MasterToWorker::EnrollResolved(_)) => {
                        let t = token.clone();
                        if let Err(e) = replica.run(move |r| r.outbox_done(&t)).await {
                            warn!(node = node.as_str(); "enrollment outcome {token} acknowledged, but not cleared: {e}");
                        }
                    }
                    Ok(other) => {
                        let e = CallError::unexpected("enroll_resolved", &other);
                        return warn!(node = node.as_str(); "enrollment outcome {token} not acknowledged yet: {e}");
                    }
                    Err(e) => {
                        return warn!(node = node.as_str(); "enrollment outcome {token} not acknowledged yet: {e}")
                    }
                }
            }
        };
        ctx.spawn(fut.into_actor(self));
    }

    fn node(&self) -> &str {
        &self.settings.node_name
    }

    fn dial(&mut self, ctx: &mut Context<Self>) {
        let settings = self.settings.clone();
        let master = self.master.clone();
        let pin = if self.masters.is_empty() { link::Pin::Master } else { link::Pin::Peer };
        let deadline = self.dial_deadline();
        let fut = async move { link::dial_within(&master, &settings, pin, deadline).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            if act.stopping {
                return;
            }
            match result {
                Ok(link) => {
                    act.failures = 0;
                    act.left = None;
                    let (handle, transport) = connection::open::<WorkerSide>(link, &act.settings);
                    let jobs = WorkerJobs::spawn(handle.clone(), &act.settings, &act.services);
                    let dispatch: Rc<dyn Dispatch<WorkerSide>> = jobs.clone();
                    let owner = ctx.address().recipient();
                    let addr = ConnectionActor::start(transport, handle.clone(), dispatch, Some(owner));
                    act.conn = Some(Live { addr, handle, jobs });
                    act.flush_outbox(ctx);
                }
                Err(LinkError::Refused { refusal: Refusal::NotLeader { leader }, .. }) if !act.masters.is_empty() => {
                    // Straight to the leader it named (or the next one, if it knows none yet, or
                    // names the leader just left: the others are electing its successor).
                    let next =
                        leader.filter(|l| *l != act.master && !act.just_left(l)).unwrap_or_else(|| act.next_master());
                    info!(node = act.node(); "{} does not lead the masters; dialling {next}", act.master);
                    act.master = next;
                    act.failures = act.failures.min(1);
                    act.retry_later(ctx);
                }
                Err(err) => {
                    act.log_failure(&err);
                    if !act.masters.is_empty() {
                        act.master = act.next_master();
                    }
                    act.retry_later(ctx);
                }
            }
        }));
    }

    /// The master-eligible node after the one dialled now, in the configured order, passing over
    /// the one just left while there is another.
    fn next_master(&self) -> String {
        let at = self.masters.iter().position(|m| *m == self.master).map_or(0, |i| i + 1);
        let n = self.masters.len();
        let candidates = (0..n).map(|k| &self.masters[(at + k) % n]);
        let mut fallback = None;
        for m in candidates {
            if !self.just_left(m) {
                return m.clone();
            }
            fallback.get_or_insert(m);
        }
        fallback.cloned().unwrap_or_else(|| self.master.clone())
    }

    fn log_failure(&self, err: &LinkError) {
        if err.is_config_problem() {
            error!(node = self.node(); "master {} refused this worker: {err}", self.master);
        } else {
            warn!(node = self.node(); "cannot reach master {}: {err}", self.master);
        }
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>) {
        let delay = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max).delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        info!(node = self.node(); "redialling master {} in {} ms", self.master, delay.as_millis());
        ctx.run_later(delay, |act, ctx| {
            if !act.stopping {
                act.dial(ctx)
            }
        });
    }
}

impl Actor for WorkerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(node = self.node(); "worker connecting to master {}", self.master);
        self.dial(ctx);
    }
}

impl Handler<ConnectionClosed> for WorkerLink {
    type Result = ();

    fn handle(&mut self, _: ConnectionClosed, ctx: &mut Context<Self>) {
        self.conn = None;
        if self.stopping {
            return;
        }
        if self.masters.is_empty() {
            return self.retry_later(ctx);
        }
        // The leader went away (closed, silent, or no longer leading): ask the others first; they
        // name its successor once it is elected, and the one left is dialled last for a while.
        self.left = Some((self.master.clone(), Instant::now()));
        self.master = self.next_master();
        info!(node = self.node(); "the connection to master {} ended; following the leader through {}", self.left.as_ref().map_or("", |(m, _)| m.as_str()), self.master);
        self.failures = 0;
        self.retry_later(ctx);
    }
}

#[cfg(feature = "testing")]
impl Handler<crate::supervise::testing::Panic> for WorkerLink {
    type Result = ();

    fn handle(&mut self, msg: crate::supervise::testing::Panic, _: &mut Context<Self>) {
        panic!("{}", msg.0);
    }
}

/// Makes the link's current connection actor panic (tests of what that does); `false` without one.
#[cfg(feature = "testing")]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct PanicConnection(pub String);

#[cfg(feature = "testing")]
impl Handler<PanicConnection> for WorkerLink {
    type Result = bool;

    fn handle(&mut self, msg: PanicConnection, _: &mut Context<Self>) -> bool {
        match &self.conn {
            Some(live) => {
                live.addr.do_send(crate::supervise::testing::Panic(msg.0));
                true
            }
            None => false,
        }
    }
}

impl Handler<GetLink> for WorkerLink {
    type Result = ResponseFuture<Option<ConnectionInfo>>;

    fn handle(&mut self, _: GetLink, _: &mut Context<Self>) -> Self::Result {
        let live = self.conn.as_ref().map(|l| (l.addr.clone(), l.jobs.view()));
        Box::pin(async move {
            let (addr, view) = live?;
            let mut info = addr.send(GetInfo).await.ok()?;
            info.jobs = view.jobs;
            info.last_keepalive_ms = view.last_keepalive_ms;
            Some(info)
        })
    }
}

/// How long a graceful stop may take before the connection is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl Handler<Shutdown> for WorkerLink {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let conn = self.conn.take().map(|l| l.addr);
        Box::pin(
            async move {
                if let Some(conn) = conn {
                    let closed = conn.send(Close { reason: msg.reason });
                    if tokio::time::timeout(SHUTDOWN_GRACE, closed).await.is_err() {
                        conn.do_send(Abort);
                    }
                }
            }
            .into_actor(self)
            .map(|(), _, ctx| ctx.stop()),
        )
    }
}

/// Forwards an enrollment to the master; fails at once when there is no connection.
#[derive(Message)]
#[rtype(result = "Result<EnrollResult, ForwardError>")]
pub struct Forward {
    pub request: EnrollForward,
    /// This worker's own `enrollment.password`, checked here only when the master speaks a
    /// protocol too old to check the cluster's (2.1): it does not get the agent's password.
    pub local_password: Option<String>,
}

/// Tells the master whether an agent got its key; kept in the outbox until acknowledged.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Resolve {
    pub token: String,
    pub delivered: bool,
}

/// Forwards an agent/group change to the master.
#[derive(Message)]
#[rtype(result = "Result<AdminResult, ForwardError>")]
pub struct ForwardAdmin {
    pub request: AdminRequest,
    /// The API credential the change came with (checked by the master).
    pub credential: String,
}

impl Handler<ForwardAdmin> for WorkerLink {
    type Result = ResponseFuture<Result<AdminResult, ForwardError>>;

    fn handle(&mut self, ForwardAdmin { request, credential }: ForwardAdmin, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn_handle();
        Box::pin(async move {
            let conn = conn.ok_or(ForwardError::NotConnected)?;
            if request.is_user() && conn.version() < wazuh_cluster_protocol::version::USERS {
                // A 2.1 master could not even read it (the connection would close).
                let why = format!("the master speaks protocol {}: upgrade it to change API users", conn.version());
                return Ok(AdminResult { outcome: Err(wazuh_cluster_protocol::message::AdminError::Unavailable(why)) });
            }
            match conn.call(WorkerToMaster::Admin(AdminForward { request, credential })).await? {
                MasterToWorker::AdminResult(result) => Ok(result),
                other => Err(CallError::unexpected("admin_result", &other).into()),
            }
        })
    }
}

/// Forwards a read of the worker's API to the master, whose API answers it. `None`: the master
/// speaks a protocol older than [`wazuh_cluster_protocol::version::API_CALLS`] (the worker answers
/// from its own view).
#[derive(Message)]
#[rtype(result = "Result<Option<ApiAnswer>, ForwardError>")]
pub struct ForwardCall(pub ApiCall);

impl Handler<ForwardCall> for WorkerLink {
    type Result = ResponseFuture<Result<Option<ApiAnswer>, ForwardError>>;

    fn handle(&mut self, ForwardCall(read): ForwardCall, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn_handle();
        Box::pin(async move {
            let conn = conn.ok_or(ForwardError::NotConnected)?;
            if conn.version() < wazuh_cluster_protocol::version::API_CALLS {
                return Ok(None);
            }
            match conn.call(WorkerToMaster::ApiCall(read)).await? {
                MasterToWorker::ApiAnswer(result) => Ok(Some(result)),
                other => Err(CallError::unexpected("api_answer", &other).into()),
            }
        })
    }
}

/// Relays to the master what the Wazuh daemons beside this worker ask of agents other nodes hold.
/// `None`: the master speaks a protocol older than
/// [`wazuh_cluster_protocol::version::AGENT_RELAY`] (only this worker's own agents are reached).
#[derive(Message)]
#[rtype(result = "Result<Option<wazuh_cluster_protocol::message::AgentRelayed>, ForwardError>")]
pub struct Relay(pub wazuh_cluster_protocol::message::AgentRelay);

impl Handler<Relay> for WorkerLink {
    type Result = ResponseFuture<Result<Option<wazuh_cluster_protocol::message::AgentRelayed>, ForwardError>>;

    fn handle(&mut self, Relay(relay): Relay, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn_handle();
        Box::pin(async move {
            let conn = conn.ok_or(ForwardError::NotConnected)?;
            if conn.version() < wazuh_cluster_protocol::version::AGENT_RELAY {
                return Ok(None);
            }
            match conn.call(WorkerToMaster::AgentRelay(relay)).await? {
                MasterToWorker::AgentRelayed(done) => Ok(Some(done)),
                other => Err(CallError::unexpected("agent_relayed", &other).into()),
            }
        })
    }
}

impl Handler<Forward> for WorkerLink {
    type Result = ResponseFuture<Result<EnrollResult, ForwardError>>;

    fn handle(&mut self, Forward { mut request, local_password }: Forward, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn_handle();
        Box::pin(async move {
            let conn = conn.ok_or(ForwardError::NotConnected)?;
            if conn.version() < wazuh_cluster_protocol::version::USERS {
                // The master cannot check the cluster's policy: this worker's own password holds.
                let given = request.password.take();
                request.client_chain.clear();
                if let Some(expected) = local_password {
                    if !given.is_some_and(|g| wazuh_cluster_protocol::agent::enrollment::same_password(&g, &expected)) {
                        let outcome = Err(wazuh_cluster_protocol::agent::enrollment::EnrollError::InvalidPassword);
                        return Ok(EnrollResult { token: request.token, outcome });
                    }
                }
            }
            match conn.call(WorkerToMaster::Enroll(request)).await? {
                MasterToWorker::EnrollResult(result) => Ok(result),
                other => Err(CallError::unexpected("enroll_result", &other).into()),
            }
        })
    }
}

impl Handler<Resolve> for WorkerLink {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Resolve, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn_handle();
        let replica = self.services.replica.clone();
        let node = self.settings.node_name.clone();
        Box::pin(async move {
            let token = msg.token.clone();
            // Durable first: if the master does not hear it now, it hears it after the next connect.
            if let Err(e) = replica.run(move |r| r.outbox_put(&token, msg.delivered)).await {
                warn!(node = node.as_str(); "cannot record enrollment outcome {}: {e}", msg.token);
            }
            let Some(conn) = conn else { return };
            let body =
                WorkerToMaster::EnrollResolve(EnrollResolve { token: msg.token.clone(), delivered: msg.delivered });
            if let Ok(MasterToWorker::EnrollResolved(_)) = conn.call(body).await {
                let token = msg.token;
                if let Err(e) = replica.run(move |r| r.outbox_done(&token)).await {
                    warn!(node = node.as_str(); "enrollment outcome acknowledged, but not cleared: {e}");
                }
            }
        })
    }
}

impl Handler<Kill> for WorkerLink {
    type Result = ();

    fn handle(&mut self, _: Kill, ctx: &mut Context<Self>) {
        self.stopping = true;
        if let Some(live) = self.conn.take() {
            live.addr.do_send(Abort);
        }
        ctx.stop();
    }
}

#[cfg(feature = "testing")]
impl Handler<crate::jobs::runtime::InjectFault> for WorkerLink {
    type Result = bool;

    fn handle(&mut self, msg: crate::jobs::runtime::InjectFault, _: &mut Context<Self>) -> bool {
        let fault = JobFault { kind: msg.kind, count: msg.count };
        self.conn.as_ref().is_some_and(|l| l.jobs.inject(&msg.job, fault))
    }
}
