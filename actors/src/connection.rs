//! `ConnectionActor`: one per established peer connection, on each side.
//!
//! It owns the encrypted socket: the read half is a stream of decoded envelopes (a
//! [`MessageDecoder`] under a `FramedRead`), the write half an `actix::io::FramedWrite` with a
//! [`MessageEncoder`]. It starts the connection's job actors (see [`crate::jobs`]), routes each
//! incoming message to the job that owns its type, carries the jobs' outgoing messages and requests
//! (matching responses to requests by id, with a deadline), and tells its owner (the master's
//! registry or the worker's link) when it stops, stopping its jobs with it.
//!
//! Any fault on the channel (a frame that fails authentication, a frame over the cap, a message of
//! unknown type or wrong shape, a truncated stream, a peer silent for three keep-alive intervals)
//! closes the connection with one log line naming the node and the peer. Nothing here panics on what
//! the peer sends.

use crate::jobs::{self, InjectFault, JobHealth};
use crate::link::Link;
use crate::settings::ChannelSettings;
use actix::clock::Instant;
use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use log::{debug, info};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use wazuh_cluster_protocol::message::{Goodbye, JobReport, MessageName, RequestId};
use wazuh_cluster_protocol::{
    ChannelError, Envelope, Hello, Kind, MasterToWorker, MessageDecoder, MessageEncoder, ProtocolVersion, Role,
    WorkerToMaster,
};

/// The behaviour that differs between the master's and the worker's end of a connection.
pub trait Side: Sized + Unpin + 'static {
    type In: DeserializeOwned + MessageName + Unpin + Send + 'static;
    type Out: Serialize + MessageName + Unpin + Send + 'static;
    /// What the node lends every connection (the master's shared jobs).
    type Services: Clone + Unpin + 'static;
    /// The connection's job actors.
    type Jobs: JobSet<Self> + Unpin + 'static;
    const LOCAL: Role;

    fn spawn_jobs(
        conn: Addr<ConnectionActor<Self>>,
        settings: &Arc<ChannelSettings>,
        services: &Self::Services,
        peer: &str,
    ) -> Self::Jobs;

    fn goodbye(reason: String) -> Self::Out;

    /// The goodbye reason, if `body` is a goodbye.
    fn goodbye_reason(body: &Self::In) -> Option<&str>;

    /// The worker's own job reports, if `body` is a keep-alive that carries them.
    fn reported_jobs(body: &Self::In) -> Option<&[JobReport]>;
}

/// The job actors of one connection.
pub trait JobSet<S: Side> {
    /// Hands an incoming message to the job that owns its type.
    fn route(&self, envelope: Envelope<S::In>);
    fn healths(&self) -> Vec<JobHealth>;
    /// Sends `fault` to the job named `job`; false if there is none.
    fn inject(&self, job: &str, fault: InjectFault) -> bool;
    /// Stops every job for good.
    fn stop(&self);
}

/// The master's end of a worker connection.
pub struct MasterSide;
/// A worker's end of its connection to the master.
pub struct WorkerSide;

/// Sent to the owner when a connection actor stops.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ConnectionClosed {
    pub peer: String,
    pub peer_addr: SocketAddr,
    pub reason: String,
}

/// Asks the connection to say goodbye to the peer and close.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: String,
}

/// Closes the socket at once, without a goodbye (tests: a crashed node).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Abort;

/// A snapshot for health reports, the nodes list and tests.
#[derive(Message)]
#[rtype(result = "ConnectionInfo")]
pub struct GetInfo;

#[derive(Debug, Clone, MessageResponse)]
pub struct ConnectionInfo {
    pub peer: Hello,
    pub peer_addr: SocketAddr,
    pub version: ProtocolVersion,
    pub connected_since_ms: u64,
    /// When the last keep-alive (worker -> master) or its acknowledgement (master -> worker) arrived.
    pub last_keepalive_ms: Option<u64>,
    /// Milliseconds since anything arrived from the peer.
    pub idle_ms: u64,
    pub frames_received: u64,
    /// This end's job actors.
    pub jobs: Vec<JobReport>,
    /// The peer's job actors, as it last reported them (workers report in their keep-alives).
    pub peer_jobs: Vec<JobReport>,
}

/// Sends one message to the peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outgoing<T>(pub Envelope<T>);

/// Sends a request to the peer and resolves with its response.
pub struct Call<O, I> {
    pub body: O,
    _in: std::marker::PhantomData<fn() -> I>,
}

impl<O, I> Call<O, I> {
    pub fn new(body: O) -> Self {
        Self { body, _in: std::marker::PhantomData }
    }
}

impl<O, I: 'static> Message for Call<O, I> {
    type Result = Result<I, CallError>;
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before the response arrived")]
    Closed,
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

/// Routes `fault` to one job of the connection (chaos and test hook).
#[derive(Message, Debug, Clone)]
#[rtype(result = "bool")]
pub struct InjectJobFault {
    pub job: String,
    pub failures: u32,
}

type Writer<S> = FramedWrite<Envelope<<S as Side>::Out>, OwnedWriteHalf, MessageEncoder<<S as Side>::Out>>;
type Pending<I> = HashMap<u64, oneshot::Sender<Result<I, CallError>>>;

pub struct ConnectionActor<S: Side> {
    settings: Arc<ChannelSettings>,
    services: S::Services,
    peer: Hello,
    peer_addr: SocketAddr,
    version: ProtocolVersion,
    writer: Writer<S>,
    owner: Option<Recipient<ConnectionClosed>>,
    jobs: Option<S::Jobs>,
    pending: Pending<S::In>,
    last_seen: Instant,
    connected_since_ms: u64,
    last_keepalive_ms: Option<u64>,
    peer_jobs: Vec<JobReport>,
    next_request: u64,
    frames_received: u64,
    close_reason: Option<String>,
}

impl<S: Side> ConnectionActor<S>
where
    MessageEncoder<S::Out>: tokio_util::codec::Encoder<Envelope<S::Out>, Error = ChannelError>,
{
    /// Starts the actor on an established link. `owner` hears when it stops.
    pub fn start(
        link: Link,
        settings: Arc<ChannelSettings>,
        services: S::Services,
        owner: Option<Recipient<ConnectionClosed>>,
    ) -> Addr<Self> {
        ConnectionActor::create(move |ctx| {
            let Link { peer, peer_addr, version, channel, read, read_buf, write } = link;
            // Bytes that arrived with the last handshake frame come first. (Putting them into the
            // FramedRead's buffer is not enough: it decodes only after the socket turns readable.)
            let source = std::io::Cursor::new(read_buf).chain(read);
            ctx.add_stream(FramedRead::new(source, MessageDecoder::<S::In>::new(channel.opener)));
            let writer = FramedWrite::new(write, MessageEncoder::new(channel.sealer), ctx);
            ConnectionActor {
                settings,
                services,
                peer,
                peer_addr,
                version,
                writer,
                owner,
                jobs: None,
                pending: HashMap::new(),
                last_seen: Instant::now(),
                connected_since_ms: crate::now_ms(),
                last_keepalive_ms: None,
                peer_jobs: Vec::new(),
                next_request: 0,
                frames_received: 0,
                close_reason: None,
            }
        })
    }
}

impl<S: Side> ConnectionActor<S> {
    fn node(&self) -> &str {
        &self.settings.node_name
    }

    fn write(&mut self, envelope: Envelope<S::Out>) {
        debug!(node = self.settings.node_name.as_str(); "sending {} to {} ({})", envelope.body.name(), self.peer.node_name, self.peer_addr);
        self.writer.write(envelope);
    }

    /// Closes the connection, logging `reason` once as a warning.
    fn fail(&mut self, ctx: &mut Context<Self>, reason: String) {
        self.close(ctx, log::Level::Warn, reason);
    }

    /// Closes the connection, logging `reason` once at `level` (an orderly goodbye is no warning).
    fn close(&mut self, ctx: &mut Context<Self>, level: log::Level, reason: String) {
        if self.close_reason.is_none() {
            log::log!(level, node = self.settings.node_name.as_str();
                "closing connection with {} {} ({}): {reason}", peer_role(S::LOCAL), self.peer.node_name, self.peer_addr);
            self.close_reason = Some(reason);
        }
        ctx.stop();
    }

    fn stop_jobs(&mut self) {
        if let Some(jobs) = self.jobs.take() {
            jobs.stop();
            // `jobs` drops here: with their last addresses gone, the supervisors do not restart them.
        }
    }
}

fn peer_role(local: Role) -> Role {
    match local {
        Role::Master => Role::Worker,
        Role::Worker => Role::Master,
    }
}

impl<S: Side> Actor for ConnectionActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(node = self.settings.node_name.as_str();
            "handshake complete with {} {} ({}), protocol {}, cipher {}",
            peer_role(S::LOCAL), self.peer.node_name, self.peer_addr, self.version, self.settings.suite);
        self.jobs = Some(S::spawn_jobs(ctx.address(), &self.settings, &self.services, &self.peer.node_name));
        // The silence check runs at a quarter of the keep-alive interval so that a dead peer is
        // dropped close to the 3-interval mark, not up to a whole interval later.
        let check = (self.settings.keepalive_interval / 4).max(Duration::from_millis(5));
        ctx.run_interval(check, |act, ctx| {
            let silent = act.last_seen.elapsed();
            if silent > act.settings.peer_timeout() {
                let reason = format!(
                    "no traffic for {:.1}s (limit {:.1}s)",
                    silent.as_secs_f64(),
                    act.settings.peer_timeout().as_secs_f64()
                );
                act.fail(ctx, reason);
            }
            // Requests whose callers gave up (timed out) need no answer any more.
            act.pending.retain(|_, tx| !tx.is_closed());
        });
    }

    fn stopping(&mut self, _ctx: &mut Context<Self>) -> Running {
        self.stop_jobs();
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.stop_jobs();
        let reason = self.close_reason.clone().unwrap_or_else(|| "closed".into());
        info!(node = self.settings.node_name.as_str();
            "connection with {} {} ({}) closed: {reason}", peer_role(S::LOCAL), self.peer.node_name, self.peer_addr);
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(CallError::Closed));
        }
        if let Some(owner) = self.owner.take() {
            owner.do_send(ConnectionClosed { peer: self.peer.node_name.clone(), peer_addr: self.peer_addr, reason });
        }
    }
}

impl<S: Side> StreamHandler<Result<Envelope<S::In>, ChannelError>> for ConnectionActor<S> {
    fn handle(&mut self, item: Result<Envelope<S::In>, ChannelError>, ctx: &mut Context<Self>) {
        let envelope = match item {
            Ok(envelope) => envelope,
            Err(err) => return self.fail(ctx, err.to_string()),
        };
        self.frames_received += 1;
        self.last_seen = Instant::now();
        if let Err(err) = envelope.kind.check_from(peer_role(S::LOCAL)) {
            return self.fail(ctx, err.to_string());
        }
        if let Some(reason) = S::goodbye_reason(&envelope.body) {
            let reason = format!("the {} said goodbye: {reason}", peer_role(S::LOCAL));
            return self.close(ctx, log::Level::Info, reason);
        }
        if let Some(reports) = S::reported_jobs(&envelope.body) {
            self.peer_jobs = reports.to_vec();
            self.last_keepalive_ms = Some(crate::now_ms());
        }
        if let Kind::Response(id) = envelope.kind {
            match self.pending.remove(&id.seq) {
                Some(tx) => {
                    if S::LOCAL == Role::Worker {
                        // A worker hears back from the master: count acknowledgements as keep-alives.
                        self.last_keepalive_ms = Some(crate::now_ms());
                    }
                    let _ = tx.send(Ok(envelope.body));
                }
                None => {
                    debug!(node = self.node(); "late or unknown response {id} from {}; ignored", self.peer.node_name);
                }
            }
            return;
        }
        match &self.jobs {
            Some(jobs) => jobs.route(envelope),
            None => debug!(node = self.node(); "message from {} before the jobs started; dropped", self.peer.node_name),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.close_reason.is_none() {
            self.close_reason = Some("the peer closed the connection".into());
        }
        ctx.stop();
    }
}

impl<S: Side> WriteHandler<ChannelError> for ConnectionActor<S> {
    fn error(&mut self, err: ChannelError, ctx: &mut Context<Self>) -> Running {
        self.fail(ctx, format!("write failed: {err}"));
        Running::Stop
    }
}

impl<S: Side> Handler<Outgoing<S::Out>> for ConnectionActor<S> {
    type Result = ();

    fn handle(&mut self, Outgoing(envelope): Outgoing<S::Out>, _ctx: &mut Context<Self>) {
        self.write(envelope);
    }
}

impl<S: Side> Handler<Call<S::Out, S::In>> for ConnectionActor<S> {
    type Result = ResponseFuture<Result<S::In, CallError>>;

    fn handle(&mut self, call: Call<S::Out, S::In>, _ctx: &mut Context<Self>) -> Self::Result {
        self.next_request += 1;
        let id = RequestId { origin: S::LOCAL, seq: self.next_request };
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id.seq, tx);
        self.write(Envelope::request(id, call.body));
        let deadline = self.settings.request_timeout;
        Box::pin(async move {
            match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CallError::Closed),
                Err(_) => Err(CallError::Timeout(deadline)),
            }
        })
    }
}

impl<S: Side> Handler<Close> for ConnectionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        self.close_reason.get_or_insert_with(|| msg.reason.clone());
        self.stop_jobs();
        self.writer.write(Envelope::notify(S::goodbye(msg.reason)));
        self.writer.close();
        // Stop once the goodbye has been flushed (WriteHandler::finished), or after a grace period.
        ctx.run_later(Duration::from_millis(500), |_, ctx| ctx.stop());
    }
}

impl<S: Side> Handler<Abort> for ConnectionActor<S> {
    type Result = ();

    fn handle(&mut self, _: Abort, ctx: &mut Context<Self>) {
        self.close_reason.get_or_insert_with(|| "aborted".into());
        ctx.stop();
    }
}

impl<S: Side> Handler<GetInfo> for ConnectionActor<S> {
    type Result = ConnectionInfo;

    fn handle(&mut self, _: GetInfo, _: &mut Context<Self>) -> ConnectionInfo {
        ConnectionInfo {
            peer: self.peer.clone(),
            peer_addr: self.peer_addr,
            version: self.version,
            connected_since_ms: self.connected_since_ms,
            last_keepalive_ms: self.last_keepalive_ms,
            idle_ms: self.last_seen.elapsed().as_millis() as u64,
            frames_received: self.frames_received,
            jobs: self.jobs.as_ref().map(|j| j.healths().iter().map(JobHealth::snapshot).collect()).unwrap_or_default(),
            peer_jobs: self.peer_jobs.clone(),
        }
    }
}

impl<S: Side> Handler<InjectJobFault> for ConnectionActor<S> {
    type Result = bool;

    fn handle(&mut self, msg: InjectJobFault, _: &mut Context<Self>) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.inject(&msg.job, InjectFault { failures: msg.failures }))
    }
}

impl Side for MasterSide {
    type In = WorkerToMaster;
    type Out = MasterToWorker;
    type Services = jobs::local::MasterServices;
    type Jobs = jobs::master::MasterJobs;
    const LOCAL: Role = Role::Master;

    fn spawn_jobs(
        conn: Addr<ConnectionActor<Self>>,
        settings: &Arc<ChannelSettings>,
        services: &Self::Services,
        peer: &str,
    ) -> Self::Jobs {
        jobs::master::MasterJobs::spawn(conn, settings, services, peer)
    }

    fn goodbye(reason: String) -> MasterToWorker {
        MasterToWorker::Goodbye(Goodbye { reason })
    }

    fn goodbye_reason(body: &WorkerToMaster) -> Option<&str> {
        match body {
            WorkerToMaster::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }

    fn reported_jobs(body: &WorkerToMaster) -> Option<&[JobReport]> {
        match body {
            WorkerToMaster::KeepAlive(ka) => Some(&ka.jobs),
            _ => None,
        }
    }
}

impl Side for WorkerSide {
    type In = MasterToWorker;
    type Out = WorkerToMaster;
    type Services = crate::worker::WorkerServices;
    type Jobs = jobs::worker::WorkerJobs;
    const LOCAL: Role = Role::Worker;

    fn spawn_jobs(
        conn: Addr<ConnectionActor<Self>>,
        settings: &Arc<ChannelSettings>,
        services: &Self::Services,
        peer: &str,
    ) -> Self::Jobs {
        jobs::worker::WorkerJobs::spawn(conn, settings, services, peer)
    }

    fn goodbye(reason: String) -> WorkerToMaster {
        WorkerToMaster::Goodbye(Goodbye { reason })
    }

    fn goodbye_reason(body: &MasterToWorker) -> Option<&str> {
        match body {
            MasterToWorker::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }

    fn reported_jobs(_body: &MasterToWorker) -> Option<&[JobReport]> {
        None
    }
}
