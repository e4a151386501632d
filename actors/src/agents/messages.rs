//! What agent sessions, the agent hub and the jobs say to each other. Sessions and the hub both
//! depend on this module and not on each other: a session reaches the hub through a [`HubLink`]
//! (recipients), the hub reaches a session through its bounded [`SessionTx`].

use actix::prelude::*;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use wazuh_cluster_protocol::agent::keepalive::KeepAlive;
use wazuh_cluster_protocol::message::AgentInfoUpdate;

/// What the hub asks a session to do.
#[derive(Debug)]
pub(crate) enum ToSession {
    /// Encrypt and write these messages, in order.
    Send(Vec<Vec<u8>>),
    /// Close the connection, logging why.
    Close(String),
}

/// Orders for one session that it has not taken yet; the hub never waits on a full queue (a push
/// that does not fit is dropped and made again at the agent's next keep-alive; a close has a place
/// of its own and always fits).
pub(crate) const SESSION_QUEUE: usize = 16;

/// One session's orders: a few hundred bytes per connection, nothing allocated while empty (a
/// tokio channel costs ~1.5 KB per connection before its first message, and a worker holds
/// thousands of idle connections).
#[derive(Debug, Default)]
struct Inbox {
    state: Mutex<InboxState>,
    ready: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct InboxState {
    sends: VecDeque<Vec<Vec<u8>>>,
    close: Option<String>,
    /// The session is gone: nobody reads this inbox any more.
    gone: bool,
}

impl Inbox {
    fn state(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The hub's way to one session; cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionTx(Arc<Inbox>);

/// The session's end of its inbox.
#[derive(Debug)]
pub(crate) struct SessionRx(Arc<Inbox>);

/// A new inbox for one session.
pub(crate) fn session_inbox() -> (SessionTx, SessionRx) {
    let inbox = Arc::new(Inbox::default());
    (SessionTx(inbox.clone()), SessionRx(inbox))
}

impl SessionTx {
    /// Queues messages to write, in order; false (and nothing queued) when [`SESSION_QUEUE`]
    /// orders are already waiting or the session is gone.
    pub fn push(&self, messages: Vec<Vec<u8>>) -> bool {
        {
            let mut s = self.0.state();
            if s.gone || s.sends.len() >= SESSION_QUEUE {
                return false;
            }
            s.sends.push_back(messages);
        }
        self.0.ready.notify_one();
        true
    }

    /// Tells the session to close (the first reason given stands); never waits, always fits.
    pub fn close(&self, why: &str) {
        {
            let mut s = self.0.state();
            if s.close.is_none() {
                s.close = Some(why.to_string());
            }
        }
        self.0.ready.notify_one();
    }

    /// The session has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.state().gone
    }
}

impl SessionRx {
    /// The next order: a close before any writes still waiting (they would go to a connection
    /// about to be closed), else the oldest writes. Cancel-safe: an order is taken only when this
    /// resolves.
    pub async fn recv(&mut self) -> ToSession {
        loop {
            let notified = self.0.ready.notified();
            {
                let mut s = self.0.state();
                if let Some(why) = s.close.take() {
                    return ToSession::Close(why);
                }
                if let Some(messages) = s.sends.pop_front() {
                    return ToSession::Send(messages);
                }
            }
            notified.await;
        }
    }
}

impl Drop for SessionRx {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.gone = true;
        s.sends.clear();
    }
}

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
pub enum BindRefused {
    #[error("agent {0:03} already has a live connection")]
    Taken(u32),
    #[error("agent {0:03} was moved to another node to balance the cluster, and is refused here for a while")]
    SentAway(u32),
}

#[derive(Debug)]
pub enum SeenKind {
    Startup(Option<String>),
    KeepAlive(Box<KeepAlive>),
    Shutdown,
    /// `#!-req <counter> <text>`: an acknowledgement of, or the answer to, an [`AskAgent`].
    Reply {
        counter: String,
        text: String,
    },
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
pub(crate) struct RefreshKeys;

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
pub(crate) struct TakeUpdates {
    pub max: usize,
}

/// The master stored these updates: forget them unless they changed again since.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Delivered(pub Vec<(u32, u64)>);

/// A new connection to the master: everything known is sent again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ResendAll;

/// Files under `etc/shared` changed (`None`: maybe any): push new merged.mg files where needed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SharedChanged(pub Option<Vec<String>>);

/// Asks agents (all when the list is empty) to reconnect; returns how many were asked.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ForceReconnect(pub Vec<u32>);

/// Asks a connected agent a request (`#!-req <counter> <payload>`, as remoted's request socket
/// does: `logcollector getconfig localfile`) and waits at most `timeout` for its answer (`ok ...`
/// or `err ...`). `Err`: why there is none.
#[derive(Message)]
#[rtype(result = "Result<String, AskError>")]
pub struct AskAgent {
    pub id: u32,
    pub payload: String,
    pub timeout: std::time::Duration,
}

/// Why an agent gave no answer to an [`AskAgent`] (the words are Wazuh's where it has them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// [`MAX_ASKS`](crate::agents::hub) requests are in flight on this node already.
    #[error("too many requests to agents in flight on this node")]
    Busy,
    #[error("Cannot send request, agent is not active")]
    NotActive,
    #[error("Cannot send request, the agent's connection is full")]
    ConnectionFull,
    #[error("the agent's connection closed")]
    Closed,
    #[error("err Response timeout")]
    Timeout,
}

/// Sends each agent its message on its connection here; returns the agents whose connection took it.
#[derive(Message)]
#[rtype(result = "Vec<u32>")]
pub struct SendToAgents(pub Vec<(u32, Vec<u8>)>);

/// Sends one message on the connection of every agent connected here (remoted's "all agents"
/// active response); returns the agents whose connection took it.
#[derive(Message)]
#[rtype(result = "Vec<u32>")]
pub struct SendToLive(pub Vec<u8>);

/// The state of every agent connected here, with its details (for wazuh-db's agent table).
#[derive(Message)]
#[rtype(result = "Vec<wazuh_cluster_protocol::message::AgentInfoUpdate>")]
pub struct LiveStates;

/// The node is stopping and no longer accepts agents: asks the connected ones to reconnect
/// (`#!-force_reconnect`, as Wazuh's remoted asks), at most `rate` a second so that the nodes they
/// go to are not stormed, and answers once none is connected or `deadline` has passed. Meanwhile
/// their connections are served as before: what they send before they go is taken.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Drained")]
pub struct Drain {
    pub rate: u32,
    pub deadline: std::time::Duration,
}

/// How a [`Drain`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Agents asked to reconnect.
    pub asked: usize,
    /// Agents still connected at the end (the deadline passed).
    pub left: usize,
    pub took: std::time::Duration,
}

/// A rebalancing move: sends each agent its message (`#!-force_reconnect`) and refuses its next
/// connections here for `away` (an agent with a server list tries the same server first); returns
/// the agents whose connection took the message.
#[derive(Message)]
#[rtype(result = "Vec<u32>")]
pub struct SendAway {
    pub messages: Vec<(u32, Vec<u8>)>,
    pub away: std::time::Duration,
}

/// A rebalancing move's steering: agents moved from another worker to fill one that needs them are
/// refused here for `away` too (those connected here are left alone).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefuseFor {
    pub ids: Vec<u32>,
    pub away: std::time::Duration,
}

/// The longest a moved agent is refused (what the master asks is capped at this).
pub const MAX_AWAY_MS: u64 = 10 * 60 * 1000;

/// Closes every agent connection (the node is stopping); returns how many were closed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll(pub String);

/// Figures for health, also published on a watch channel (see [`WatchFigures`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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
    /// Events written to analysisd's queue; dropped (its queue full past `analysis.buffer`);
    /// bytes held for it now; whether its socket is connected (all 0 without `[analysis]`).
    pub events_analysis: u64,
    pub events_analysis_dropped: u64,
    pub analysis_held_bytes: u64,
    pub analysis_connected: u64,
    /// Whether the node forwards events to analysisd at all (`[analysis]` is set): 1 or 0.
    pub analysis_configured: u64,
}

#[derive(Message)]
#[rtype(result = "HubView")]
pub struct GetHubView;

/// A receiver of the hub's figures: while one exists, the hub publishes them every
/// [`FIGURES_EVERY`] when they changed (nothing is computed while nobody watches).
#[derive(Message)]
#[rtype(result = "tokio::sync::watch::Receiver<HubView>")]
pub struct WatchFigures;

/// How often the hub publishes its figures while someone watches them.
pub const FIGURES_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_inbox_holds_a_bounded_number_of_writes_and_a_close_that_always_fits() {
        let (tx, mut rx) = session_inbox();
        for i in 0..SESSION_QUEUE {
            assert!(tx.push(vec![vec![i as u8]]), "write {i} refused");
        }
        assert!(!tx.push(vec![b"one too many".to_vec()]), "the bound was not kept");
        // A close fits however full the inbox is, and comes before the writes still waiting.
        tx.close("deleted");
        tx.close("a later reason");
        assert!(matches!(rx.recv().await, ToSession::Close(why) if why == "deleted"));
        for i in 0..SESSION_QUEUE {
            assert!(matches!(rx.recv().await, ToSession::Send(m) if m == vec![vec![i as u8]]));
        }
        // Empty: recv waits until something comes, and an abandoned recv takes nothing.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), rx.recv()).await;
        assert!(waited.is_err(), "recv on an empty inbox returned");
        assert!(tx.push(vec![b"later".to_vec()]));
        assert!(matches!(rx.recv().await, ToSession::Send(m) if m == vec![b"later".to_vec()]));
        // A writer wakes a waiting session.
        let sender = tx.clone();
        let wake = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            sender.push(vec![b"woken".to_vec()])
        });
        assert!(matches!(rx.recv().await, ToSession::Send(m) if m == vec![b"woken".to_vec()]));
        assert!(wake.await.unwrap());
        // The session gone: nothing more is queued.
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert!(!tx.push(vec![b"to nobody".to_vec()]));
    }
}
