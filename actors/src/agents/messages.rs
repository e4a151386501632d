//! What agent sessions, the agent hub and the jobs say to each other. Sessions and the hub both
//! depend on this module and not on each other: a session reaches the hub through a [`HubLink`]
//! (recipients), the hub reaches a session through its bounded [`SessionTx`].

use actix::prelude::*;
use std::net::SocketAddr;
use tokio::sync::mpsc;
use wazuh_cluster_protocol::agent::keepalive::KeepAlive;
use wazuh_cluster_protocol::message::AgentInfoUpdate;

/// What the hub asks a session to do.
#[derive(Debug)]
pub enum ToSession {
    /// Encrypt and write these messages, in order.
    Send(Vec<Vec<u8>>),
    /// Close the connection, logging why.
    Close(String),
}

/// Orders for one session that it has not taken yet; the hub never waits on a full queue (a push
/// that does not fit is dropped and made again at the agent's next keep-alive; a close waits in a
/// task of its own).
pub const SESSION_QUEUE: usize = 16;

/// The hub's way to one session.
pub type SessionTx = mpsc::Sender<ToSession>;

/// A connection says it speaks for agent `id`. Refused (with why) when another live connection
/// holds that agent.
#[derive(Message)]
#[rtype(result = "Result<(), BindRefused>")]
pub struct Bind {
    pub id: u32,
    pub conn: u64,
    pub peer: SocketAddr,
    pub tx: SessionTx,
    /// The key the agent spoke with (a connection is closed when its agent's key changes).
    pub key: std::sync::Arc<super::AgentKey>,
}

/// Why a connection may not speak for an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent {id:03} already has a live connection")]
pub struct BindRefused {
    pub id: u32,
}

#[derive(Debug)]
pub enum SeenKind {
    Startup(Option<String>),
    KeepAlive(Box<KeepAlive>),
    Shutdown,
}

/// Something an agent said on its (bound) connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Seen {
    pub id: u32,
    pub conn: u64,
    pub kind: SeenKind,
}

/// A connection ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Closed {
    pub id: u32,
    pub conn: u64,
}

/// Checks the live connections against the key index if the store changed since the last check
/// (the hub sends it to itself after each commit).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshKeys;

/// What a session holds to reach the hub.
#[derive(Clone)]
pub struct HubLink {
    pub bind: Recipient<Bind>,
    pub seen: Recipient<Seen>,
    pub closed: Recipient<Closed>,
}

/// The changes the master has not acknowledged, with their versions.
#[derive(Message)]
#[rtype(result = "Vec<(AgentInfoUpdate, u64)>")]
pub struct TakeUpdates {
    pub max: usize,
}

/// The master stored these updates: forget them unless they changed again since.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Delivered(pub Vec<(u32, u64)>);

/// A new connection to the master: everything known is sent again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResendAll;

/// Files under `etc/shared` changed (`None`: maybe any): push new merged.mg files where needed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SharedChanged(pub Option<Vec<String>>);

/// Asks agents (all when the list is empty) to reconnect; returns how many were asked.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ForceReconnect(pub Vec<u32>);

/// Closes every agent connection (the node is stopping); returns how many were closed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll(pub String);

/// Figures for health.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HubView {
    pub connected: usize,
    pub active: usize,
    pub pending: usize,
    pub disconnected: usize,
    pub undelivered: usize,
    pub connections: u64,
    pub frames: u64,
    pub events: u64,
    pub events_archived: u64,
    /// Events the archive could not write (disk errors).
    pub events_failed: u64,
    /// Times a session waited for room in the archive's queue.
    pub archive_waits: u64,
    pub refused: u64,
    pub pushes: u64,
    pub pushes_dropped: u64,
}

#[derive(Message)]
#[rtype(result = "HubView")]
pub struct GetHubView;
