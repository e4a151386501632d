//! `ConnectionActor`: one per established peer connection, on each side.
//!
//! It owns the encrypted socket: the read half is a stream of decoded envelopes (a
//! [`MessageDecoder`] under a `FramedRead`), the write half an `actix::io::FramedWrite` with a
//! [`MessageEncoder`]. Any fault on the channel (a frame that fails authentication, a frame over the
//! cap, a message of unknown type or wrong shape, a truncated stream, a peer silent for three
//! keep-alive intervals) closes the connection with one log line naming the node and the peer.
//! Nothing here panics on what the peer sends.

use crate::link::Link;
use crate::settings::ChannelSettings;
use actix::clock::Instant;
use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use log::{debug, info, warn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::codec::FramedRead;
use wazuh_cluster_protocol::message::{
    ErrorCode, ErrorReply, Goodbye, KeepAlive, KeepAliveAck, MessageName, RequestId,
};
use wazuh_cluster_protocol::{
    ChannelError, Envelope, Hello, Kind, MasterToWorker, MessageDecoder, MessageEncoder, ProtocolVersion, Role,
    WorkerToMaster,
};

/// The behaviour that differs between the master's and the worker's end of a connection.
pub trait Side: Sized + Unpin + 'static {
    type In: DeserializeOwned + MessageName + Unpin + Send + 'static;
    type Out: Serialize + MessageName + Unpin + 'static;
    const LOCAL: Role;

    /// Handles one authenticated, well-formed message. An `Err` closes the connection.
    fn on_message(
        conn: &mut ConnectionActor<Self>,
        envelope: Envelope<Self::In>,
        ctx: &mut Context<ConnectionActor<Self>>,
    ) -> Result<(), String>;

    /// Runs every keep-alive interval.
    fn on_tick(conn: &mut ConnectionActor<Self>, ctx: &mut Context<ConnectionActor<Self>>);

    fn goodbye(reason: String) -> Self::Out;
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

/// A snapshot for health reports and tests.
#[derive(Message)]
#[rtype(result = "ConnectionInfo")]
pub struct GetInfo;

#[derive(Debug, Clone, MessageResponse)]
pub struct ConnectionInfo {
    pub peer: Hello,
    pub peer_addr: SocketAddr,
    pub version: ProtocolVersion,
    pub frames_received: u64,
    pub keepalives_acked: u64,
    pub last_round_trip_ms: Option<u64>,
}

type Writer<S> = FramedWrite<Envelope<<S as Side>::Out>, OwnedWriteHalf, MessageEncoder<<S as Side>::Out>>;

pub struct ConnectionActor<S: Side> {
    settings: Arc<ChannelSettings>,
    peer: Hello,
    peer_addr: SocketAddr,
    version: ProtocolVersion,
    writer: Writer<S>,
    owner: Option<Recipient<ConnectionClosed>>,
    last_seen: Instant,
    next_request: u64,
    frames_received: u64,
    keepalives_acked: u64,
    last_round_trip_ms: Option<u64>,
    close_reason: Option<String>,
}

impl<S: Side> ConnectionActor<S>
where
    MessageEncoder<S::Out>: tokio_util::codec::Encoder<Envelope<S::Out>, Error = ChannelError>,
{
    /// Starts the actor on an established link. `owner` hears when it stops.
    pub fn start(link: Link, settings: Arc<ChannelSettings>, owner: Option<Recipient<ConnectionClosed>>) -> Addr<Self> {
        ConnectionActor::create(move |ctx| {
            let Link { peer, peer_addr, version, channel, read, read_buf, write } = link;
            // Bytes that arrived with the last handshake frame come first. (Putting them into the
            // FramedRead's buffer is not enough: it decodes only after the socket turns readable.)
            let source = std::io::Cursor::new(read_buf).chain(read);
            ctx.add_stream(FramedRead::new(source, MessageDecoder::<S::In>::new(channel.opener)));
            let writer = FramedWrite::new(write, MessageEncoder::new(channel.sealer), ctx);
            ConnectionActor {
                settings,
                peer,
                peer_addr,
                version,
                writer,
                owner,
                last_seen: Instant::now(),
                next_request: 0,
                frames_received: 0,
                keepalives_acked: 0,
                last_round_trip_ms: None,
                close_reason: None,
            }
        })
    }
}

impl<S: Side> ConnectionActor<S> {
    pub fn node(&self) -> &str {
        &self.settings.node_name
    }

    pub fn peer_name(&self) -> &str {
        &self.peer.node_name
    }

    /// Queues one message to the peer.
    pub fn send(&mut self, envelope: Envelope<S::Out>) {
        debug!(node = self.settings.node_name.as_str(); "sending {} to {} ({})", envelope.body.name(), self.peer.node_name, self.peer_addr);
        self.writer.write(envelope);
    }

    /// A fresh request id of this side.
    pub fn next_request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId { origin: S::LOCAL, seq: self.next_request }
    }

    /// Closes the connection, logging `reason` once.
    pub fn fail(&mut self, ctx: &mut Context<Self>, reason: String) {
        if self.close_reason.is_none() {
            warn!(node = self.settings.node_name.as_str();
                "closing connection with {} {} ({}): {reason}", peer_role(S::LOCAL), self.peer.node_name, self.peer_addr);
            self.close_reason = Some(reason);
        }
        ctx.stop();
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
        let interval = self.settings.keepalive_interval;
        S::on_tick(self, ctx);
        ctx.run_interval(interval, |act, ctx| {
            let silent = act.last_seen.elapsed();
            if silent > act.settings.peer_timeout() {
                let reason = format!(
                    "no traffic for {:.1}s (limit {:.1}s)",
                    silent.as_secs_f64(),
                    act.settings.peer_timeout().as_secs_f64()
                );
                act.fail(ctx, reason);
                return;
            }
            S::on_tick(act, ctx);
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let reason = self.close_reason.clone().unwrap_or_else(|| "closed".into());
        info!(node = self.settings.node_name.as_str();
            "connection with {} {} ({}) closed: {reason}", peer_role(S::LOCAL), self.peer.node_name, self.peer_addr);
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
        if let Err(reason) = S::on_message(self, envelope, ctx) {
            self.fail(ctx, reason);
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

impl<S: Side> Handler<Close> for ConnectionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        self.close_reason.get_or_insert_with(|| msg.reason.clone());
        self.writer.write(Envelope::notify(S::goodbye(msg.reason)));
        self.writer.close();
        // Give the goodbye a moment to leave, then stop regardless.
        ctx.run_later(std::time::Duration::from_millis(200), |_, ctx| ctx.stop());
    }
}

impl<S: Side> Handler<GetInfo> for ConnectionActor<S> {
    type Result = ConnectionInfo;

    fn handle(&mut self, _: GetInfo, _: &mut Context<Self>) -> ConnectionInfo {
        ConnectionInfo {
            peer: self.peer.clone(),
            peer_addr: self.peer_addr,
            version: self.version,
            frames_received: self.frames_received,
            keepalives_acked: self.keepalives_acked,
            last_round_trip_ms: self.last_round_trip_ms,
        }
    }
}

impl Side for MasterSide {
    type In = WorkerToMaster;
    type Out = MasterToWorker;
    const LOCAL: Role = Role::Master;

    fn on_message(
        conn: &mut ConnectionActor<Self>,
        envelope: Envelope<WorkerToMaster>,
        _ctx: &mut Context<ConnectionActor<Self>>,
    ) -> Result<(), String> {
        match (envelope.kind, envelope.body) {
            (Kind::Request(id), WorkerToMaster::KeepAlive(ka)) => {
                conn.keepalives_acked += 1;
                let ack = KeepAliveAck { echo_sent_at_ms: ka.sent_at_ms, master_time_ms: crate::now_ms() };
                conn.send(Envelope::response(id, MasterToWorker::KeepAliveAck(ack)));
                Ok(())
            }
            (_, WorkerToMaster::Goodbye(bye)) => Err(format!("the worker said goodbye: {}", bye.reason)),
            (kind, body) => {
                if let Kind::Request(id) = kind {
                    let message = format!("{} is not valid as {kind:?}", body.name());
                    conn.send(Envelope::response(
                        id,
                        MasterToWorker::Error(ErrorReply { code: ErrorCode::Invalid, message }),
                    ));
                }
                Ok(())
            }
        }
    }

    fn on_tick(_conn: &mut ConnectionActor<Self>, _ctx: &mut Context<ConnectionActor<Self>>) {}

    fn goodbye(reason: String) -> MasterToWorker {
        MasterToWorker::Goodbye(Goodbye { reason })
    }
}

impl Side for WorkerSide {
    type In = MasterToWorker;
    type Out = WorkerToMaster;
    const LOCAL: Role = Role::Worker;

    fn on_message(
        conn: &mut ConnectionActor<Self>,
        envelope: Envelope<MasterToWorker>,
        _ctx: &mut Context<ConnectionActor<Self>>,
    ) -> Result<(), String> {
        match envelope.body {
            MasterToWorker::KeepAliveAck(ack) => {
                conn.keepalives_acked += 1;
                conn.last_round_trip_ms = Some(crate::now_ms().saturating_sub(ack.echo_sent_at_ms));
                Ok(())
            }
            MasterToWorker::Goodbye(bye) => Err(format!("the master said goodbye: {}", bye.reason)),
            MasterToWorker::Error(err) => {
                warn!(node = conn.node(); "master {} answered an error ({:?}): {}", conn.peer_name(), err.code, err.message);
                Ok(())
            }
        }
    }

    fn on_tick(conn: &mut ConnectionActor<Self>, _ctx: &mut Context<ConnectionActor<Self>>) {
        let id = conn.next_request_id();
        conn.send(Envelope::request(id, WorkerToMaster::KeepAlive(KeepAlive { sent_at_ms: crate::now_ms() })));
    }

    fn goodbye(reason: String) -> WorkerToMaster {
        WorkerToMaster::Goodbye(Goodbye { reason })
    }
}
