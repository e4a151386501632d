//! One agent connection: reads frames, checks who speaks and from where, answers the conversation,
//! and writes whatever the hub asks (pushes, reconnect requests), each frame with one write.

use super::archive::ArchivedEvent;
use super::messages::{session_inbox, Bind, BindRefused, Closed, HubLink, Seen, SeenKind, SessionTx, ToSession};
use super::{AgentKey, Shared};
use crate::budget::{NoPlace, Pool, Ticket};
use log::{debug, info, warn};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use wazuh_cluster_protocol::agent::analysis::event_datagram;
use wazuh_cluster_protocol::agent::keepalive::{classify, AgentMessage};
use wazuh_cluster_protocol::agent::secure::{self, decrypt, encrypt, frame, parse_header, FrameBuffer, SecureError};

/// Accepts agent connections until the listener's task is aborted. Every connection takes a place
/// in `pool` (the node's budget of agent connections) for as long as it lives: when the pool is
/// full, the oldest connection that speaks for no agent yet is closed to make room; an address
/// with `max_pending_per_address` such connections gets no more (closed at once). Each kind of
/// refusal is counted and logged once per 10 s at most, with how many there were.
pub async fn serve(listener: TcpListener, hub: HubLink, shared: Arc<Shared>, pool: Pool) {
    use crate::throttle::Throttle;
    let node = shared.settings.node_name.clone();
    let every = std::time::Duration::from_secs(10);
    let (mut said_address, mut said_full, mut said_shed, mut said_accept) =
        (Throttle::new(every), Throttle::new(every), Throttle::new(every), Throttle::new(every));
    let mut shed_unsaid = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ip = peer.ip().to_canonical();
                let (ticket, shed) = match pool.admit(ip) {
                    Ok(admitted) => admitted,
                    Err(no_place) => {
                        drop(stream);
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        match no_place {
                            NoPlace::Address(max) => {
                                if let Some(unsaid) = said_address.allow() {
                                    warn!(node = node.as_str(); "agent connections: {} from {ip} closed at once: that address already has {max} connections that speak for no agent (agents.max_pending_per_address)", unsaid + 1);
                                }
                            }
                            NoPlace::Full(cap) => {
                                if let Some(unsaid) = said_full.allow() {
                                    warn!(node = node.as_str(); "agent connections: {} closed at once: all {cap} places of this node's budget of agent connections are held by agents (see the open-file limit in check-config)", unsaid + 1);
                                }
                            }
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = shared.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
                actix_rt::spawn(session(stream, peer, conn, hub.clone(), shared.clone(), ticket));
                if shed > 0 {
                    shared.stats.shed.fetch_add(shed as u64, Ordering::Relaxed);
                    shed_unsaid += shed as u64;
                    if said_shed.allow().is_some() {
                        warn!(node = node.as_str(); "agent connections: {shed_unsaid} that spoke for no agent closed to make room, the oldest first: this node's budget of {} agent connections is full", pool.capacity());
                        shed_unsaid = 0;
                    }
                    // Let the connections told to close do it now, before the next accept.
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                // Out of descriptors (the budget should prevent it; something else may hold more
                // than its share): free one by closing the oldest connection that speaks for no
                // agent, rather than leaving the backlog to real agents' retries.
                let shed = pool.shed_oldest();
                if let Some(unsaid) = said_accept.allow() {
                    let what = if shed { "; closed the oldest connection that spoke for no agent" } else { "" };
                    warn!(node = node.as_str(); "agent connections: accept failed: {e}{what}{}", crate::throttle::suppressed(unsaid));
                }
                tokio::time::sleep(std::time::Duration::from_millis(if shed { 1 } else { 50 })).await;
            }
        }
    }
}

thread_local! {
    /// The read buffer of every session of this thread: a connection holds no buffer of its own
    /// while it waits (what a read brings goes to its frame buffer, which is empty between frames).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
}

/// Reads what the socket has (without waiting) into `fb`; `Ok(0)` is the end of the stream.
fn read_into(stream: &TcpStream, fb: &mut FrameBuffer) -> std::io::Result<usize> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let n = stream.try_read(&mut scratch)?;
        fb.extend(&scratch[..n]);
        Ok(n)
    })
}

struct Session {
    peer: SocketAddr,
    conn: u64,
    hub: HubLink,
    shared: Arc<Shared>,
    tx: SessionTx,
    /// The agent this connection speaks for, once it said who it is.
    agent: Option<Arc<AgentKey>>,
    /// The connection's place in the node's budget; evictable until it speaks for an agent.
    ticket: Ticket,
}

/// Why a session ends.
enum End {
    Closed,
    Refused(Refusal),
}

/// Why a connection is closed on this side. Each is one log line naming node, peer and agent.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("read failed: {0}")]
    Read(std::io::Error),
    #[error("write failed: {0}")]
    Write(std::io::Error),
    #[error("{0}")]
    Frame(SecureError),
    #[error("a frame for agent {0} on a connection of another agent")]
    OtherAgent(String),
    #[error("cannot decrypt a frame for agent {0} (wrong key?)")]
    WrongKey(String),
    #[error("bad frame for agent {name}: {error}")]
    BadFrame { name: String, error: SecureError },
    #[error("agent {name}: counters {global}:{local} not after {last_global}:{last_local} (replayed?)")]
    Replayed { name: String, global: u32, local: u32, last_global: u32, last_local: u32 },
    #[error("a frame for unknown agent id {0}")]
    UnknownId(String),
    #[error("a frame without an agent id from {0}, which no agent is registered with")]
    UnknownAddress(IpAddr),
    #[error("agent {id:03} ({name}) is registered with IP {registered}, not {peer}")]
    WrongAddress { id: u32, name: String, registered: String, peer: IpAddr },
    #[error(transparent)]
    Taken(#[from] BindRefused),
    #[error("the agent hub is gone")]
    HubGone,
    #[error("a frame was started and not finished within {0} s")]
    Stalled(u64),
    #[error("silent for {0} s")]
    Silent(u64),
    #[error("spoke for no agent within {0:?}")]
    NotAuthenticated(std::time::Duration),
    #[error("spoke for no agent yet and the node's budget of agent connections is full (the oldest such connection closes first)")]
    Shed,
    /// The hub closed it (deleted agent, replaced connection, node stopping...).
    #[error("{0}")]
    Ordered(String),
}

async fn session(
    mut stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    hub: HubLink,
    shared: Arc<Shared>,
    ticket: Ticket,
) {
    let (tx, mut rx) = session_inbox();
    let mut s = Session { peer, conn, hub, shared, tx, agent: None, ticket };
    let auth = s.shared.settings.auth_timeout;
    let node = s.shared.settings.node_name.clone();
    let mut fb = FrameBuffer::default();
    let idle = s.shared.settings.disconnection_time;
    let stall = s.shared.settings.stall_timeout;
    let mut partial_since: Option<tokio::time::Instant> = None;
    let mut last_read = tokio::time::Instant::now();
    let opened = last_read;
    // One timer for the connection's life, moved only when it fires early (the connection was
    // active meanwhile) or a frame starts that must end sooner: a timer made or moved on every
    // frame costs a timer-wheel registration, and at times a wake-up of the runtime, each time.
    let timer = tokio::time::sleep_until((last_read + idle).min(opened + auth));
    tokio::pin!(timer);
    let end = 'conn: loop {
        tokio::select! {
            ready = stream.readable() => {
                if let Err(e) = ready {
                    break End::Refused(Refusal::Read(e));
                }
                match read_into(&stream, &mut fb) {
                    Ok(0) => break End::Closed,
                    Ok(_) => last_read = tokio::time::Instant::now(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => break End::Refused(Refusal::Read(e)),
                }
                loop {
                    match fb.next_payload() {
                        Ok(Some(payload)) => {
                            // Boxed: a frame's handling is the largest state of this task, and
                            // an idle connection (nearly all of them) need not hold room for it.
                            if let Err(why) = Box::pin(s.payload(&mut stream, &payload)).await {
                                break 'conn End::Refused(why);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => break 'conn End::Refused(Refusal::Frame(e)),
                    }
                }
                partial_since = match (fb.pending(), partial_since) {
                    (0, _) => None,
                    (_, Some(t)) => Some(t),
                    (_, None) => {
                        let started = tokio::time::Instant::now();
                        if started + stall < timer.deadline() {
                            timer.as_mut().reset(started + stall);
                        }
                        Some(started)
                    }
                };
            }
            _ = s.ticket.evicted(), if s.agent.is_none() => break End::Refused(Refusal::Shed),
            order = rx.recv() => match order {
                ToSession::Send(messages) => {
                    if let Err(e) = s.send(&mut stream, &messages).await {
                        break End::Refused(Refusal::Write(e));
                    }
                }
                ToSession::Close(why) => break End::Refused(Refusal::Ordered(why)),
            },
            _ = &mut timer => {
                let mut deadline = match partial_since {
                    Some(t) => t + stall,
                    None => last_read + idle,
                };
                let unbound = s.agent.is_none();
                if unbound {
                    deadline = deadline.min(opened + auth);
                }
                if tokio::time::Instant::now() < deadline {
                    timer.as_mut().reset(deadline);
                    continue;
                }
                break End::Refused(match partial_since {
                    _ if unbound && tokio::time::Instant::now() >= opened + auth => Refusal::NotAuthenticated(auth),
                    Some(_) => Refusal::Stalled(stall.as_secs()),
                    None => Refusal::Silent(idle.as_secs()),
                });
            }
        }
    };
    let who = s.who();
    match end {
        End::Closed => debug!(node = node.as_str(); "agent connection {who} closed by the peer"),
        End::Refused(
            why @ (Refusal::NotAuthenticated(_) | Refusal::Shed | Refusal::Taken(BindRefused::SentAway(_))),
        ) => {
            // Before any agent spoke, or an agent moved away coming back: not logged one by one
            // (a flood would flood the log too; a move is logged once per batch).
            s.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            debug!(node = node.as_str(); "closing agent connection {who}: {why}");
        }
        End::Refused(why) => {
            s.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            info!(node = node.as_str(); "closing agent connection {who}: {why}");
        }
    }
    let _ = stream.shutdown().await;
    if let Some(agent) = &s.agent {
        s.hub.closed.do_send(Closed { id: agent.id, conn });
    }
}

impl Session {
    fn who(&self) -> String {
        match &self.agent {
            Some(a) => format!("from {} (agent {} {})", self.peer, crate::registry::fmt_id(a.id), a.name),
            None => format!("from {}", self.peer),
        }
    }

    async fn send(&self, stream: &mut TcpStream, messages: &[Vec<u8>]) -> std::io::Result<()> {
        let Some(agent) = &self.agent else { return Ok(()) };
        for m in messages {
            stream.write_all(&self.seal(agent, m)).await?;
        }
        Ok(())
    }

    /// One manager frame for `key`'s agent: `#AES:`, the process's next counters, ready for one write.
    fn seal(&self, key: &AgentKey, message: &[u8]) -> Vec<u8> {
        let random = (crate::backoff::random_u64() % 100_000) as u32;
        frame(&encrypt(&key.aes, secure::AES_TAG, self.shared.counters.advance(), random, message))
    }

    /// Handles one payload; `Err` closes the connection with the reason.
    async fn payload(&mut self, stream: &mut TcpStream, payload: &[u8]) -> Result<(), Refusal> {
        self.shared.stats.frames.fetch_add(1, Ordering::Relaxed);
        if payload == secure::PING {
            return stream.write_all(&frame(secure::PONG)).await.map_err(Refusal::Write);
        }
        let header = parse_header(payload).map_err(Refusal::Frame)?;
        let key = self.key_for(header.agent_id).await?;
        if let Some(bound) = &self.agent {
            if bound.id != key.id {
                return Err(Refusal::OtherAgent(header.agent_id.unwrap_or("?").to_string()));
            }
        }
        let message = decrypt(&key.aes, header.ciphertext).map_err(|e| match e {
            SecureError::BadPadding => Refusal::WrongKey(key.name.to_string()),
            error => Refusal::BadFrame { name: key.name.to_string(), error },
        })?;
        self.check_counters(&key, message.global, message.local)?;
        // An event for analysisd, byte for byte as remoted hands it over (whatever its encoding).
        if let Some(analysis) = &self.shared.analysis {
            if !message.text.starts_with(b"#!-") {
                let id = crate::registry::fmt_id(key.id);
                let ip = key.ip.to_string();
                if let Some(datagram) = event_datagram(&id, &key.name, &ip, &message.text) {
                    analysis.offer(datagram);
                }
            }
        }
        let text = classify(&message.text);
        let shared = self.shared.clone();
        let node = shared.settings.node_name.as_str();
        match text {
            Ok(AgentMessage::Startup { version }) => {
                self.bind(stream, &key).await?;
                // The acknowledgement is the first frame the agent gets on this connection.
                self.send(stream, &[b"#!-agent ack ".to_vec()]).await.map_err(Refusal::Write)?;
                debug!(node = node; "agent {} ({}) started up {} (version {})", crate::registry::fmt_id(key.id), key.name, self.peer, version.as_deref().unwrap_or("before 4.6"));
                self.seen(key.id, SeenKind::Startup(version)).await?;
            }
            Ok(AgentMessage::KeepAlive(ka)) => {
                if self.agent.is_none() {
                    self.bind(stream, &key).await?;
                }
                self.send(stream, &[b"#!-agent ack ".to_vec()]).await.map_err(Refusal::Write)?;
                self.seen(key.id, SeenKind::KeepAlive(ka)).await?;
            }
            Ok(AgentMessage::Shutdown) => {
                self.seen(key.id, SeenKind::Shutdown).await?;
            }
            // Only an agent bound to this connection has requests to answer.
            Ok(AgentMessage::Reply { counter, text }) if self.agent.is_some() => {
                self.seen(key.id, SeenKind::Reply { counter, text }).await?;
            }
            Ok(AgentMessage::Reply { counter, .. }) => {
                debug!(node = node; "agent {} answered request {counter:?} before it started up; ignored", key.name);
            }
            Ok(AgentMessage::Event(e)) => {
                if self.agent.is_none() {
                    self.bind(stream, &key).await?;
                }
                self.shared.stats.events.fetch_add(1, Ordering::Relaxed);
                if self.shared.archive_events {
                    self.shared
                        .archive
                        .send(ArchivedEvent {
                            time_ms: crate::clock::now_ms(),
                            agent: key.clone(),
                            location: e.location,
                            message: e.message,
                        })
                        .await;
                }
            }
            Err(e) => {
                // Understood frame, unknown content: logged, the connection stays.
                debug!(node = node; "agent {} sent a message that is not understood: {e}", key.name);
            }
        }
        Ok(())
    }

    /// Tells the hub what the agent said; waits for room in the hub's mailbox (this agent's next
    /// frames wait in the socket meanwhile).
    async fn seen(&self, id: u32, kind: SeenKind) -> Result<(), Refusal> {
        match self.hub.seen.try_send(Seen { id, conn: self.conn, kind }) {
            Ok(()) => Ok(()),
            Err(actix::prelude::SendError::Full(seen)) => self.hub.seen.send(seen).await.map_err(|_| Refusal::HubGone),
            Err(actix::prelude::SendError::Closed(_)) => Err(Refusal::HubGone),
        }
    }

    /// The key of the agent a frame claims to come from, by id or (without one) by the peer address,
    /// checking the peer address against what the agent registered with.
    async fn key_for(&mut self, id: Option<&str>) -> Result<Arc<AgentKey>, Refusal> {
        // The agent this connection speaks for, without asking the store again.
        if let (Some(bound), Some(text)) = (&self.agent, id) {
            if text.parse::<u32>().ok() == Some(bound.id) {
                if let Some(current) = self.shared.keys.get(bound.id) {
                    return Ok(current);
                }
            }
        }
        let peer = self.peer.ip();
        let lookup = |shared: Arc<Shared>| async move {
            let source = shared.source.get();
            match id {
                Some(text) => match text.parse::<u32>() {
                    Ok(n) => shared.keys.lookup(n, source).await,
                    Err(_) => None,
                },
                None => shared.keys.by_ip(peer, source).await,
            }
        };
        let key = match lookup(self.shared.clone()).await {
            Some(k) => k,
            None => {
                // Perhaps enrolled a moment ago (through another node, its key still on its way to
                // this one): look again for up to three seconds.
                let mut found = None;
                for _ in 0..15 {
                    found = lookup(self.shared.clone()).await;
                    if found.is_some() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                found.ok_or_else(|| match id {
                    Some(id) => Refusal::UnknownId(id.to_string()),
                    None => Refusal::UnknownAddress(self.peer.ip()),
                })?
            }
        };
        if !key.ip.admits(self.peer.ip()) {
            return Err(Refusal::WrongAddress {
                id: key.id,
                name: key.name.to_string(),
                registered: key.ip.to_string(),
                peer: self.peer.ip(),
            });
        }
        Ok(key)
    }

    /// With `agents.enforce_counters`, a message whose counters are not after the agent's last
    /// ones (kept by the node across connections and restarts) is refused: a replay.
    fn check_counters(&mut self, key: &AgentKey, global: u32, local: u32) -> Result<(), Refusal> {
        let Some(counters) = &self.shared.agent_counters else { return Ok(()) };
        counters.advance(key.id, global, local).map_err(|stale| Refusal::Replayed {
            name: key.name.to_string(),
            global,
            local,
            last_global: stale.last_global,
            last_local: stale.last_local,
        })
    }

    /// Binds this connection to `key`'s agent; when the hub refuses (another live connection holds
    /// it), tells the agent why with `#!-err` and returns the reason (the connection then closes).
    async fn bind(&mut self, stream: &mut TcpStream, key: &Arc<AgentKey>) -> Result<(), Refusal> {
        if self.agent.as_ref().is_some_and(|a| a.id == key.id) {
            return Ok(());
        }
        let bound = self
            .hub
            .bind
            .send(Bind { id: key.id, conn: self.conn, peer: self.peer, tx: self.tx.clone(), key: key.clone() })
            .await
            .map_err(|_| Refusal::HubGone)?;
        match bound {
            Ok(()) => {
                self.agent = Some(key.clone());
                self.ticket.authenticated();
                Ok(())
            }
            Err(refused) => {
                let err = format!("#!-err {}", serde_json::json!({ "message": refused.to_string() }));
                let _ = stream.write_all(&self.seal(key, err.as_bytes())).await;
                Err(refused.into())
            }
        }
    }
}
