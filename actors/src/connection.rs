//! The cluster channel over one established connection: a generic transport that knows nothing
//! of jobs.
//!
//! [`open`] turns an authenticated [`Link`] into a [`ConnHandle`] (what jobs use to send: `call`,
//! `notify`, `respond`) and a [`Transport`] that a [`ConnectionActor`] runs. The actor owns the
//! sealed socket through two tasks:
//!
//! - the **reader** decodes frames, completes responses to this side's requests, and hands each
//!   request or notification to the connection's [`Dispatch`] (the owner's job set) with an
//!   [`InboundPermit`]. Permits are bounded in number and bytes ([`Budgets`]); when none is left the
//!   reader stops reading, so TCP pushes back on the peer instead of memory growing here.
//! - the **writer** seals and writes what jobs queue through their handles. The queue is bounded in
//!   bytes: a job whose message does not fit waits for room. A peer that does not read for three
//!   keep-alive intervals is dropped.
//!
//! Request ids carry this side's role and a sequence number; a response is matched to its caller,
//! who gives up after `request_timeout`. Any fault on the channel (a frame that fails
//! authentication, a frame over the cap, a message of unknown type or wrong shape, a truncated
//! stream, a peer silent for three keep-alive intervals) closes the connection with one log line
//! naming the node and the peer. Nothing here panics on what the peer sends.

use crate::link::Link;
use crate::settings::{Budgets, ChannelSettings};
use actix::clock::Instant;
use actix::prelude::*;
use bytes::BytesMut;
use futures_util::StreamExt;
use log::{debug, warn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Decoder, FramedRead};
use wazuh_cluster_protocol::message::{
    self, ErrorCode, ErrorReply, Goodbye, JobReport, MessageName, PeerReply, PeerRequest, RequestId,
};
use wazuh_cluster_protocol::transport::{Sealer, TAG_LEN};
use wazuh_cluster_protocol::{
    ChannelError, Envelope, Hello, Kind, MasterToWorker, MessageDecoder, ProtocolVersion, Role, WorkerToMaster,
};

/// A boxed future that stays on the actor's thread.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// What differs between the two directions of the channel: the message types and how a goodbye
/// and an error answer look. (Only the wire; the jobs each side runs are its owner's business.)
pub trait Side: Sized + Unpin + 'static {
    type In: DeserializeOwned + MessageName + Send + 'static;
    type Out: Serialize + MessageName + Send + 'static;
    const LOCAL: Role;
    /// What the other end is, in logs.
    const PEER: &'static str;
    /// How a close for silence is logged: a warning where keep-alives are due (a worker and its
    /// master); between master-eligible nodes a connection in one direction carries nothing
    /// while its dialler follows, so silence there is normal (it is dialled again when needed).
    const SILENCE: log::Level = log::Level::Warn;
    /// How a connection's start and end are logged (between master-eligible nodes they come and
    /// go with elections and silence; who leads is logged instead).
    const LIFECYCLE: log::Level = log::Level::Info;

    fn goodbye(reason: String) -> Self::Out;
    /// The goodbye reason, if `body` is a goodbye.
    fn goodbye_reason(body: &Self::In) -> Option<&str>;
    /// The error answer to a request that could not be served.
    fn error(reply: ErrorReply) -> Self::Out;
    /// `Err(reply)` if `body` is an error answer.
    fn check_answer(body: Self::In) -> Result<Self::In, ErrorReply>;
}

/// The master's end of a worker connection.
pub struct MasterSide;
/// A worker's end of its connection to the master.
pub struct WorkerSide;

impl Side for MasterSide {
    type In = WorkerToMaster;
    type Out = MasterToWorker;
    const LOCAL: Role = Role::Master;
    const PEER: &'static str = "worker";

    fn goodbye(reason: String) -> MasterToWorker {
        MasterToWorker::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &WorkerToMaster) -> Option<&str> {
        match body {
            WorkerToMaster::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> MasterToWorker {
        MasterToWorker::Error(reply)
    }
    fn check_answer(body: WorkerToMaster) -> Result<WorkerToMaster, ErrorReply> {
        match body {
            WorkerToMaster::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

impl Side for WorkerSide {
    type In = MasterToWorker;
    type Out = WorkerToMaster;
    const LOCAL: Role = Role::Worker;
    const PEER: &'static str = "master";

    fn goodbye(reason: String) -> WorkerToMaster {
        WorkerToMaster::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &MasterToWorker) -> Option<&str> {
        match body {
            MasterToWorker::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> WorkerToMaster {
        WorkerToMaster::Error(reply)
    }
    fn check_answer(body: MasterToWorker) -> Result<MasterToWorker, ErrorReply> {
        match body {
            MasterToWorker::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// Between two master-eligible nodes (a Raft group), the dialing end. On the wire it takes the
/// worker's place (its request ids carry that role), so that the two ends' ids never mix.
pub struct PeerDialSide;
/// Between two master-eligible nodes, the accepting end (the master's place on the wire).
pub struct PeerAcceptSide;

impl Side for PeerDialSide {
    type In = PeerReply;
    type Out = PeerRequest;
    const LOCAL: Role = Role::Worker;
    const PEER: &'static str = "master-eligible peer";
    const SILENCE: log::Level = log::Level::Debug;
    const LIFECYCLE: log::Level = log::Level::Debug;

    fn goodbye(reason: String) -> PeerRequest {
        PeerRequest::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &PeerReply) -> Option<&str> {
        match body {
            PeerReply::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> PeerRequest {
        PeerRequest::Error(reply)
    }
    fn check_answer(body: PeerReply) -> Result<PeerReply, ErrorReply> {
        match body {
            PeerReply::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

impl Side for PeerAcceptSide {
    type In = PeerRequest;
    type Out = PeerReply;
    const LOCAL: Role = Role::Master;
    const PEER: &'static str = "master-eligible peer";
    const SILENCE: log::Level = log::Level::Debug;
    const LIFECYCLE: log::Level = log::Level::Debug;

    fn goodbye(reason: String) -> PeerReply {
        PeerReply::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &PeerRequest) -> Option<&str> {
        match body {
            PeerRequest::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> PeerReply {
        PeerReply::Error(reply)
    }
    fn check_answer(body: PeerRequest) -> Result<PeerRequest, ErrorReply> {
        match body {
            PeerRequest::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

fn peer_role(local: Role) -> Role {
    match local {
        Role::Master => Role::Worker,
        Role::Worker => Role::Master,
    }
}

/// Why a message to the peer got no answer. The variants say what the caller can do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// No answer in time: the peer is slow or the connection is stuck; retry later.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The connection is gone: retry on the next one.
    #[error("the connection closed before the response arrived")]
    Closed,
    /// The peer answered that it could not serve the request.
    #[error("the peer answered with an error: {0}")]
    Refused(ErrorReply),
    /// The message cannot be sent at all (it does not fit in one frame): do not retry it as is.
    #[error("cannot send the message: {0}")]
    Unsendable(String),
    /// The peer answered with a message of another type.
    #[error("unexpected answer {got} (expected {expected})")]
    Unexpected { expected: &'static str, got: &'static str },
}

impl CallError {
    pub fn unexpected(expected: &'static str, got: &impl MessageName) -> Self {
        CallError::Unexpected { expected, got: got.name() }
    }
}

/// A request or notification from the peer, on its way to the job that serves its type. It holds
/// its share of the connection's inbound budget until it is dropped: a job drops it once the
/// answer is queued (or the notification handled).
pub struct Inbound<T> {
    pub kind: Kind,
    pub body: T,
    pub permit: InboundPermit,
}

/// A share of a connection's inbound budget (see [`Budgets`]).
pub struct InboundPermit {
    _count: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl InboundPermit {
    /// A permit that holds nothing (tests, and messages that are not the peer's).
    pub fn none() -> Self {
        Self { _count: None, _bytes: None }
    }
}

/// Why a message could not be handed to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undeliverable {
    /// No job takes this message in this form (a notification of a request type...): the reader
    /// answers a request with an `invalid` error and logs the rest.
    Invalid(String),
    /// The job has stopped (the connection is closing).
    Stopped,
}

/// The owner's job set, as the connection sees it: where inbound messages go, and how to stop.
pub trait Dispatch<S: Side> {
    /// Hands `message` to the job that serves its type; resolves once that job's mailbox took it.
    fn deliver(&self, message: Inbound<S::In>) -> LocalFuture<Result<(), Undeliverable>>;
    /// Stops every job for good; resolves once all have stopped.
    fn stop(&self) -> LocalFuture<()>;
}

/// One encoded message waiting for the writer, with its share of the outbound budget.
struct Outgoing {
    plain: BytesMut,
    _permit: Option<OwnedSemaphorePermit>,
    /// The goodbye: written last, then the socket is shut down.
    last: bool,
}

type Pending<I> = Mutex<HashMap<u64, oneshot::Sender<Result<I, CallError>>>>;

struct HandleInner<S: Side> {
    node: String,
    peer: String,
    /// The protocol version the two ends settled on.
    version: ProtocolVersion,
    request_timeout: Duration,
    /// Largest plaintext that fits in one frame.
    max_plain: usize,
    out: mpsc::Sender<Outgoing>,
    out_budget: Arc<Semaphore>,
    out_budget_max: usize,
    pending: Pending<S::In>,
    next: AtomicU64,
    closed: AtomicBool,
}

/// What jobs hold to talk to the peer. Cheap to clone; every method fails with
/// [`CallError::Closed`] once the connection is gone.
pub struct ConnHandle<S: Side> {
    inner: Arc<HandleInner<S>>,
}

impl<S: Side> Clone for ConnHandle<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

/// Removes a caller's pending entry when the call ends, however it ends.
struct Forget<'a, I> {
    pending: &'a Pending<I>,
    seq: u64,
}

impl<I> Drop for Forget<'_, I> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.seq);
        }
    }
}

impl<S: Side> ConnHandle<S> {
    /// This node's name (for log lines).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The peer's node name.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// The protocol version the two ends settled on.
    pub fn version(&self) -> ProtocolVersion {
        self.inner.version
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Sends a request and waits for its answer (an error answer is [`CallError::Refused`]); gives
    /// up after the request timeout, waiting for room in the queue included.
    pub async fn call(&self, body: S::Out) -> Result<S::In, CallError> {
        let inner = &self.inner;
        let seq = inner.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = RequestId { origin: S::LOCAL, seq };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = inner.pending.lock() {
            p.insert(seq, tx);
        }
        let _forget = Forget { pending: &inner.pending, seq };
        let deadline = inner.request_timeout;
        let exchange = async {
            self.send(Envelope::request(id, body), false).await?;
            rx.await.map_err(|_| CallError::Closed)?
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(deadline)),
        }
    }

    /// Sends a notification (no answer).
    pub async fn notify(&self, body: S::Out) -> Result<(), CallError> {
        self.send(Envelope::notify(body), false).await
    }

    /// Answers the peer's request `id`.
    pub async fn respond(&self, id: RequestId, body: S::Out) -> Result<(), CallError> {
        self.send(Envelope::response(id, body), false).await
    }

    /// Answers the peer's request `id` with an error.
    pub async fn respond_error(&self, id: RequestId, code: ErrorCode, message: String) -> Result<(), CallError> {
        self.respond(id, S::error(ErrorReply { code, message })).await
    }

    /// Queues an error answer to `id` without waiting (from a `Drop`): skipped when the queue is
    /// full or the connection is gone, in which case the peer's request times out on its side.
    pub fn try_respond_error(&self, id: RequestId, code: ErrorCode, message: String) -> bool {
        let inner = &self.inner;
        if self.is_closed() {
            return false;
        }
        let Ok(plain) = message::to_bytes(&Envelope::response(id, S::error(ErrorReply { code, message }))) else {
            return false;
        };
        let cost = plain.len().clamp(1, inner.out_budget_max) as u32;
        let Ok(permit) = inner.out_budget.clone().try_acquire_many_owned(cost) else { return false };
        inner.out.try_send(Outgoing { plain, _permit: Some(permit), last: false }).is_ok()
    }

    async fn send(&self, envelope: Envelope<S::Out>, last: bool) -> Result<(), CallError> {
        let inner = &self.inner;
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        let plain = message::to_bytes(&envelope).map_err(|e| CallError::Unsendable(e.to_string()))?;
        if plain.len() > inner.max_plain {
            return Err(CallError::Unsendable(format!(
                "{} of {} bytes does not fit in a frame of {} bytes",
                envelope.body.name(),
                plain.len(),
                inner.max_plain
            )));
        }
        // The whole budget at most, so that one message of the largest size always gets through.
        let cost = plain.len().clamp(1, inner.out_budget_max) as u32;
        let permit = inner.out_budget.clone().acquire_many_owned(cost).await.map_err(|_| CallError::Closed)?;
        debug!(node = inner.node.as_str(); "sending {} to {}", envelope.body.name(), inner.peer);
        inner.out.send(Outgoing { plain, _permit: Some(permit), last }).await.map_err(|_| CallError::Closed)
    }

    /// Completes this side's request `id` with the peer's answer.
    fn complete(&self, seq: u64, body: S::In) -> bool {
        let tx = self.inner.pending.lock().ok().and_then(|mut p| p.remove(&seq));
        match tx {
            Some(tx) => {
                let _ = tx.send(S::check_answer(body).map_err(CallError::Refused));
                true
            }
            None => false,
        }
    }

    /// Fails every call in flight and refuses new ones.
    fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let drained: Vec<_> = self.inner.pending.lock().map(|mut p| p.drain().collect()).unwrap_or_default();
        for (_, tx) in drained {
            let _ = tx.send(Err(CallError::Closed));
        }
    }
}

/// The socket halves and codec state of a connection, consumed by its [`ConnectionActor`].
pub struct Transport<S: Side> {
    peer: Hello,
    peer_addr: SocketAddr,
    version: ProtocolVersion,
    read: Box<dyn AsyncRead + Unpin>,
    opener: MessageDecoder<S::In>,
    sealer: Sealer,
    write: OwnedWriteHalf,
    out_rx: mpsc::Receiver<Outgoing>,
    settings: Arc<ChannelSettings>,
}

impl<S: Side> Transport<S> {
    pub fn peer(&self) -> &Hello {
        &self.peer
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }
}

/// Splits an authenticated link into the handle jobs send through and the transport the
/// connection actor runs.
pub fn open<S: Side>(link: Link, settings: &Arc<ChannelSettings>) -> (ConnHandle<S>, Transport<S>) {
    let Link { peer, peer_addr, version, channel, read, read_buf, write, .. } = link;
    let budgets = settings.budgets;
    let out_budget_max = budgets.outbound_bytes.max(1);
    // Messages queued beyond the byte budget wait on its semaphore, so the channel itself only
    // needs room for the messages the budget admits (a small one each, at worst).
    let (out_tx, out_rx) = mpsc::channel(1024);
    let handle = ConnHandle {
        inner: Arc::new(HandleInner {
            node: settings.node_name.clone(),
            peer: peer.node_name.clone(),
            version,
            request_timeout: settings.request_timeout,
            max_plain: settings.max_frame.saturating_sub(TAG_LEN),
            out: out_tx,
            out_budget: Arc::new(Semaphore::new(out_budget_max)),
            out_budget_max,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }),
    };
    // Bytes that arrived with the last handshake frame come first.
    let read: Box<dyn AsyncRead + Unpin> = Box::new(std::io::Cursor::new(read_buf).chain(read));
    let transport = Transport {
        peer,
        peer_addr,
        version,
        read,
        opener: MessageDecoder::new(channel.opener),
        sealer: channel.sealer,
        write,
        out_rx,
        settings: settings.clone(),
    };
    (handle, transport)
}

/// Decodes envelopes and says how many bytes each took on the wire.
struct SizedDecoder<T>(MessageDecoder<T>);

impl<T: DeserializeOwned> Decoder for SizedDecoder<T> {
    type Item = (Envelope<T>, usize);
    type Error = ChannelError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, ChannelError> {
        let before = src.len();
        Ok(self.0.decode(src)?.map(|e| (e, before - src.len())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, ChannelError> {
        let before = src.len();
        Ok(self.0.decode_eof(src)?.map(|e| (e, before - src.len())))
    }
}

/// The inbound budget: permits for requests in flight and for their bytes.
struct InboundBudget {
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

impl InboundBudget {
    fn new(b: &Budgets) -> Self {
        let max_bytes = b.inbound_bytes.max(1);
        Self {
            count: Arc::new(Semaphore::new(b.inbound_requests.max(1))),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        }
    }

    async fn acquire(&self, size: usize) -> Option<InboundPermit> {
        let count = self.count.clone().acquire_owned().await.ok()?;
        let bytes = self.bytes.clone().acquire_many_owned(size.clamp(1, self.max_bytes) as u32).await.ok()?;
        Some(InboundPermit { _count: Some(count), _bytes: Some(bytes) })
    }

    fn in_flight(&self, limit: usize) -> usize {
        limit.saturating_sub(self.count.available_permits())
    }
}

/// What the reader and the actor share: when bytes last arrived, how many frames did, and whether
/// the reader is waiting for the inbound budget (then the peer is not silent, we are not reading).
struct Activity {
    last_heard: Cell<Instant>,
    frames: Cell<u64>,
    throttled: Cell<bool>,
}

/// The socket's read side, noting each time bytes arrive: a peer sending one large frame over a
/// slow link is not silent.
struct Heard<R> {
    inner: R,
    activity: Rc<Activity>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Heard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.last_heard.set(Instant::now());
        }
        polled
    }
}

/// How a side of the socket ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct Ended {
    reason: String,
    level: log::Level,
}

/// Sent to the owner when a connection actor stops.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ConnectionClosed {
    pub peer: String,
    pub peer_addr: SocketAddr,
    pub reason: String,
}

/// Stops the jobs, says goodbye to the peer, flushes, closes; resolves once closed.
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

/// One connection as health reports show it. The transport fills the first part; the owner adds
/// what its job set knows (`jobs`, `peer_jobs`, `last_keepalive_ms`).
#[derive(Debug, Clone, MessageResponse)]
pub struct ConnectionInfo {
    pub peer: Hello,
    pub peer_addr: SocketAddr,
    pub version: ProtocolVersion,
    pub connected_since_ms: u64,
    /// Milliseconds since anything arrived from the peer.
    pub idle_ms: u64,
    pub frames_received: u64,
    /// The peer's requests and notifications being handled now.
    pub inbound_in_flight: usize,
    /// Bytes queued for the peer, not yet written.
    pub outbound_queued_bytes: usize,
    /// When the last keep-alive (worker -> master) or its acknowledgement (master -> worker) arrived.
    pub last_keepalive_ms: Option<u64>,
    /// This end's job actors.
    pub jobs: Vec<JobReport>,
    /// The peer's job actors, as it last reported them (workers report in their keep-alives).
    pub peer_jobs: Vec<JobReport>,
}

/// One per established connection, on each side. Owns the reader and writer tasks; stops with
/// them; tells its owner when it stopped.
pub struct ConnectionActor<S: Side> {
    settings: Arc<ChannelSettings>,
    peer: Hello,
    peer_addr: SocketAddr,
    version: ProtocolVersion,
    handle: ConnHandle<S>,
    dispatch: Rc<dyn Dispatch<S>>,
    owner: Option<Recipient<ConnectionClosed>>,
    activity: Rc<Activity>,
    budget: Rc<InboundBudget>,
    connected_since_ms: u64,
    close_reason: Option<String>,
    reader: Option<actix_rt::task::JoinHandle<()>>,
    writer: Option<actix_rt::task::JoinHandle<()>>,
    /// Resolves when the writer has ended (after a goodbye, or on a write fault).
    writer_done: Option<oneshot::Receiver<()>>,
    /// The socket's halves and codecs until `started` hands them to the reader and writer tasks.
    socket: Option<Socket<S>>,
    closing: bool,
    /// `wind_up` ran (from `stopped`, or from `Drop` after a panic).
    wound_up: bool,
}

struct Socket<S: Side> {
    read: Box<dyn AsyncRead + Unpin>,
    opener: MessageDecoder<S::In>,
    sealer: Sealer,
    write: OwnedWriteHalf,
    out_rx: mpsc::Receiver<Outgoing>,
}

impl<S: Side> ConnectionActor<S> {
    /// Starts the actor on `transport`. `dispatch` takes the peer's requests and notifications;
    /// `owner` hears when the connection stops.
    pub fn start(
        transport: Transport<S>,
        handle: ConnHandle<S>,
        dispatch: Rc<dyn Dispatch<S>>,
        owner: Option<Recipient<ConnectionClosed>>,
    ) -> Addr<Self> {
        let Transport { peer, peer_addr, version, read, opener, sealer, write, out_rx, settings } = transport;
        let budget = Rc::new(InboundBudget::new(&settings.budgets));
        let what = format!("the connection with {} {} ({peer_addr})", S::PEER, peer.node_name);
        let node = settings.node_name.clone();
        let act = ConnectionActor {
            settings,
            peer,
            peer_addr,
            version,
            handle,
            dispatch,
            owner,
            activity: Rc::new(Activity {
                last_heard: Cell::new(Instant::now()),
                frames: Cell::new(0),
                throttled: Cell::new(false),
            }),
            budget,
            connected_since_ms: crate::clock::now_ms(),
            close_reason: None,
            reader: None,
            writer: None,
            writer_done: None,
            socket: Some(Socket { read, opener, sealer, write, out_rx }),
            closing: false,
            wound_up: false,
        };
        // A panic closes this connection alone (its Drop tells the owner); the worker dials again.
        crate::supervise::start_watched(Context::new(), act, what, node, crate::supervise::OnPanic::End)
    }

    fn node(&self) -> &str {
        &self.settings.node_name
    }

    /// Closes the connection, logging `reason` once at `level` (an orderly goodbye is no warning).
    fn end(&mut self, ctx: &mut Context<Self>, level: log::Level, reason: String) {
        if self.close_reason.is_none() {
            log::log!(level, node = self.settings.node_name.as_str();
                "closing connection with {} {} ({}): {reason}", S::PEER, self.peer.node_name, self.peer_addr);
            self.close_reason = Some(reason);
        }
        ctx.stop();
    }
}

impl<S: Side> Actor for ConnectionActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::log!(S::LIFECYCLE, node = self.node();
            "handshake complete with {} {} ({}), protocol {}, cipher {}",
            S::PEER, self.peer.node_name, self.peer_addr, self.version, self.settings.suite);
        let Some(Socket { read, opener, sealer, write, out_rx }) = self.socket.take() else { return };
        let me = ctx.address();
        let read: Box<dyn AsyncRead + Unpin> = Box::new(Heard { inner: read, activity: self.activity.clone() });
        let frames = FramedRead::new(read, SizedDecoder(opener));
        let reader = Reader {
            handle: self.handle.clone(),
            dispatch: self.dispatch.clone(),
            budget: self.budget.clone(),
            activity: self.activity.clone(),
        };
        let to_me = me.clone();
        self.reader = Some(actix_rt::spawn(async move {
            let (reason, level) = reader.run(frames).await;
            to_me.do_send(Ended { reason, level });
        }));
        let (done_tx, done_rx) = oneshot::channel();
        self.writer_done = Some(done_rx);
        let stall = self.settings.peer_timeout();
        self.writer = Some(actix_rt::spawn(async move {
            let outcome = write_loop(out_rx, sealer, write, stall).await;
            let _ = done_tx.send(());
            if let Err(e) = outcome {
                me.do_send(Ended { reason: e.to_string(), level: log::Level::Warn });
            }
        }));
        // The silence check runs at a quarter of the keep-alive interval so that a dead peer is
        // dropped close to the 3-interval mark, not up to a whole interval later.
        let check = (self.settings.keepalive_interval / 4).max(Duration::from_millis(5));
        ctx.run_interval(check, |act, ctx| {
            if act.activity.throttled.get() {
                // Not reading because our own jobs are behind: the peer is not silent.
                act.activity.last_heard.set(Instant::now());
                return;
            }
            let silent = act.activity.last_heard.get().elapsed();
            if silent > act.settings.peer_timeout() {
                let reason = format!(
                    "no traffic for {:.1}s (limit {:.1}s)",
                    silent.as_secs_f64(),
                    act.settings.peer_timeout().as_secs_f64()
                );
                act.end(ctx, S::SILENCE, reason);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.wind_up();
    }
}

impl<S: Side> ConnectionActor<S> {
    /// Closes the socket, stops the jobs and tells the owner; once.
    fn wind_up(&mut self) {
        if std::mem::replace(&mut self.wound_up, true) {
            return;
        }
        self.handle.close();
        for task in [self.reader.take(), self.writer.take()].into_iter().flatten() {
            task.abort();
        }
        if !self.closing {
            // Not a graceful close: the jobs are told to stop now; nobody waits for them (and
            // nothing is spawned: this also runs while the runtime itself is being torn down).
            drop(self.dispatch.stop());
        }
        let reason = self.close_reason.clone().unwrap_or_else(|| "closed".into());
        log::log!(S::LIFECYCLE, node = self.node();
            "connection with {} {} ({}) closed: {reason}", S::PEER, self.peer.node_name, self.peer_addr);
        if let Some(owner) = self.owner.take() {
            owner.do_send(ConnectionClosed { peer: self.peer.node_name.clone(), peer_addr: self.peer_addr, reason });
        }
    }
}

impl<S: Side> Drop for ConnectionActor<S> {
    /// After a panic (or with the runtime going away) the actor is dropped without `stopped`:
    /// wind up here instead.
    fn drop(&mut self) {
        if !self.wound_up {
            self.close_reason
                .get_or_insert_with(|| "its actor ended abruptly (a panic, or the runtime stopping)".into());
            self.wind_up();
        }
    }
}

#[cfg(feature = "testing")]
impl<S: Side> Handler<crate::supervise::testing::Panic> for ConnectionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: crate::supervise::testing::Panic, _: &mut Context<Self>) {
        panic!("{}", msg.0);
    }
}

impl<S: Side> Handler<Ended> for ConnectionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Ended, ctx: &mut Context<Self>) {
        if !self.closing {
            self.end(ctx, msg.level, msg.reason);
        }
    }
}

impl<S: Side> Handler<Close> for ConnectionActor<S> {
    type Result = ResponseActFuture<Self, ()>;

    /// Graceful: stop reading, stop the jobs (waiting for them), queue the goodbye after what the
    /// jobs queued, wait for the writer to flush it, then stop. Each wait is bounded.
    fn handle(&mut self, msg: Close, _ctx: &mut Context<Self>) -> Self::Result {
        self.close_reason.get_or_insert_with(|| msg.reason.clone());
        if self.closing {
            return Box::pin(actix::fut::ready(()));
        }
        self.closing = true;
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
        let grace = self.settings.request_timeout.clamp(Duration::from_millis(100), Duration::from_secs(2));
        let stop_jobs = self.dispatch.stop();
        let handle = self.handle.clone();
        let writer_done = self.writer_done.take();
        let reason = msg.reason;
        Box::pin(
            async move {
                let _ = tokio::time::timeout(grace, stop_jobs).await;
                let goodbye = handle.send(Envelope::notify(S::goodbye(reason)), true);
                let _ = tokio::time::timeout(grace, goodbye).await;
                if let Some(done) = writer_done {
                    let _ = tokio::time::timeout(grace, done).await;
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                if act.close_reason.is_none() {
                    act.close_reason = Some("closed".into());
                }
                ctx.stop();
            }),
        )
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
        let out = &self.handle.inner;
        ConnectionInfo {
            peer: self.peer.clone(),
            peer_addr: self.peer_addr,
            version: self.version,
            connected_since_ms: self.connected_since_ms,
            idle_ms: self.activity.last_heard.get().elapsed().as_millis() as u64,
            frames_received: self.activity.frames.get(),
            inbound_in_flight: self.budget.in_flight(self.settings.budgets.inbound_requests.max(1)),
            outbound_queued_bytes: out.out_budget_max.saturating_sub(out.out_budget.available_permits()),
            last_keepalive_ms: None,
            jobs: Vec::new(),
            peer_jobs: Vec::new(),
        }
    }
}

/// The reading side of a connection.
struct Reader<S: Side> {
    handle: ConnHandle<S>,
    dispatch: Rc<dyn Dispatch<S>>,
    budget: Rc<InboundBudget>,
    activity: Rc<Activity>,
}

impl<S: Side> Reader<S> {
    /// Reads until the peer leaves or faults; returns why, and how loudly to say it.
    async fn run(
        self,
        mut frames: FramedRead<Box<dyn AsyncRead + Unpin>, SizedDecoder<S::In>>,
    ) -> (String, log::Level) {
        let node = self.handle.node().to_string();
        let peer = self.handle.peer().to_string();
        loop {
            let (envelope, size) = match frames.next().await {
                Some(Ok(item)) => item,
                Some(Err(err)) => return (err.to_string(), log::Level::Warn),
                None => return ("the peer closed the connection".into(), S::LIFECYCLE),
            };
            self.activity.frames.set(self.activity.frames.get() + 1);
            if let Err(err) = envelope.kind.check_from(peer_role(S::LOCAL)) {
                return (err.to_string(), log::Level::Warn);
            }
            if let Some(reason) = S::goodbye_reason(&envelope.body) {
                return (format!("the {} said goodbye: {reason}", peer_role(S::LOCAL)), log::Level::Info);
            }
            let Envelope { kind, body } = envelope;
            if let Kind::Response(id) = kind {
                if !self.handle.complete(id.seq, body) {
                    debug!(node = node.as_str(); "late or unknown response {id} from {peer}; ignored");
                }
                continue;
            }
            // A request or a notification: it waits for its share of the budget, and while it
            // waits nothing more is read from the socket.
            self.activity.throttled.set(true);
            let permit = self.budget.acquire(size).await;
            self.activity.throttled.set(false);
            let Some(permit) = permit else { return ("the inbound budget closed".into(), log::Level::Warn) };
            let name = body.name();
            match self.dispatch.deliver(Inbound { kind, body, permit }).await {
                Ok(()) => {}
                Err(Undeliverable::Invalid(why)) => {
                    warn!(node = node.as_str(); "{} {peer}: {why}", peer_role(S::LOCAL));
                    if let Kind::Request(id) = kind {
                        let _ = self.handle.respond_error(id, ErrorCode::Invalid, why).await;
                    }
                }
                Err(Undeliverable::Stopped) => {
                    debug!(node = node.as_str(); "{name} from {peer} arrived while its job was stopping; dropped");
                    if let Kind::Request(id) = kind {
                        let message = "the job serving this request is stopping".to_string();
                        let _ = self.handle.respond_error(id, ErrorCode::Unavailable, message).await;
                    }
                }
            }
        }
    }
}

/// Most bytes sealed into one write.
const WRITE_BATCH: usize = 1 << 20;

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("cannot seal a frame: {0}")]
    Seal(#[from] wazuh_cluster_protocol::transport::TransportError),
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer has not read what it was sent for {:.1}s", .0.as_secs_f64())]
    Stalled(Duration),
}

/// Seals and writes what the handles queue, batching what is ready into one write. Ends after the
/// goodbye (`Ok`), when every handle is gone (`Ok`), or on a fault (`Err` with why). A write that
/// makes no progress for `stall` means the peer stopped reading.
async fn write_loop(
    mut rx: mpsc::Receiver<Outgoing>,
    mut sealer: Sealer,
    mut sock: OwnedWriteHalf,
    stall: Duration,
) -> Result<(), WriteError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut size = batch[0].plain.len();
        while size < WRITE_BATCH && !batch.last().is_some_and(|o| o.last) {
            match rx.try_recv() {
                Ok(next) => {
                    size += next.plain.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        buf.clear();
        let mut last = false;
        for out in &batch {
            sealer.seal(&mut buf, &out.plain)?;
            last |= out.last;
        }
        match tokio::time::timeout(stall, sock.write_all(&buf)).await {
            Ok(result) => result?,
            Err(_) => return Err(WriteError::Stalled(stall)),
        }
        // Their budget goes back once their bytes are in the socket.
        drop(batch);
        if last {
            let _ = tokio::time::timeout(stall, sock.shutdown()).await;
            return Ok(());
        }
    }
    Ok(())
}
