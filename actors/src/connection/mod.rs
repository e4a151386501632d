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

mod handle;
mod io;
mod side;

pub use handle::*;
use io::*;
pub use side::*;

/// A boxed future that stays on the actor's thread.
pub(crate) type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

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
pub(crate) struct ConnectionClosed {
    pub peer: String,
    pub peer_addr: SocketAddr,
}

/// Stops the jobs, says goodbye to the peer, flushes, closes; resolves once closed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub(crate) struct Close {
    pub reason: String,
}

/// Closes the socket at once, without a goodbye (tests: a crashed node).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub(crate) struct Abort;

/// A snapshot for health reports, the nodes list and tests.
#[derive(Message)]
#[rtype(result = "ConnectionInfo")]
pub(crate) struct GetInfo;

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
pub(crate) struct ConnectionActor<S: Side> {
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
            match outcome {
                // The peer left (its goodbye, or its end) while something was on its way to it:
                // said as the reader says an end it sees first, whichever of the two comes first.
                Err(e) if e.peer_closed() => {
                    me.do_send(Ended { reason: format!("the peer closed the connection ({e})"), level: S::LIFECYCLE });
                }
                Err(e) => me.do_send(Ended { reason: e.to_string(), level: log::Level::Warn }),
                Ok(()) => {}
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
            owner.do_send(ConnectionClosed { peer: self.peer.node_name.clone(), peer_addr: self.peer_addr });
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
