//! The node's agent hub: keys, live connections, statuses, undelivered changes and pushes.

use super::merged::{groups_key, MergedCache};
use super::messages::{
    AskAgent, AskError, Bind, BindRefused, CloseAll, Closed, Delivered, ForceReconnect, GetHubView, HubLink, HubView,
    LiveStates, RefreshKeys, ResendAll, Seen, SeenKind, SendToAgents, SendToLive, SessionTx, SharedChanged,
    TakeUpdates, WatchFigures, FIGURES_EVERY,
};
use super::{AgentKey, Shared};
use crate::registry::fmt_id;

mod moves;
use actix::prelude::*;
use log::{debug, info, warn};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// Shortest time between two checks of the live connections against the key index. The first
/// change after a quiet spell is picked up at once.
const KEY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
use std::sync::Arc;
use std::time::Instant;
use wazuh_cluster_protocol::agent::keepalive::KeepAlive;
use wazuh_cluster_protocol::message::AgentInfoUpdate;

/// Messages the hub's mailbox holds; sessions wait for room beyond this (their agents' frames
/// then wait in the kernel's socket buffers).
pub(crate) const HUB_MAILBOX: usize = 4096;

pub use super::KeySource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Active,
    Disconnected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Active => "active",
            Status::Disconnected => "disconnected",
        }
    }
}

struct AgentState {
    status: Status,
    /// Last startup or keep-alive (for the disconnection timeout and takeovers).
    last_seen: Instant,
    last_keepalive_ms: Option<u64>,
    version: Option<String>,
    info: Option<KeepAlive>,
    peer: Option<SocketAddr>,
    group_config_status: Option<String>,
    /// Bumped at every change; the master has everything up to `delivered`.
    version_seq: u64,
    /// When the details (version, keep-alive fields, group configuration status, address) last
    /// changed, and whether the master has acknowledged them since: a keep-alive that changes
    /// nothing but the time is sent to the master without them.
    details_seq: u64,
    details_acked: bool,
}

struct Live {
    conn: u64,
    peer: SocketAddr,
    tx: SessionTx,
    /// The key the connection was bound with.
    key: Arc<AgentKey>,
}

pub struct AgentHub {
    shared: Arc<Shared>,
    source: KeySource,
    loaded_losses: Option<u64>,
    live: HashMap<u32, Live>,
    states: HashMap<u32, AgentState>,
    /// Agents whose state changed since the master acknowledged it: id -> version_seq.
    dirty: HashMap<u32, u64>,
    next_seq: u64,
    merged: MergedCache,
    /// Master: a write of statuses is in flight.
    flushing: bool,
    /// The figures, published while someone watches them.
    figures: tokio::sync::watch::Sender<HubView>,
    /// Requests asked of agents and not answered yet, by counter: the agent, and where the answer goes.
    asks: HashMap<String, (u32, tokio::sync::oneshot::Sender<String>)>,
    next_ask: u32,
    /// The drain under way (see [`Drain`]).
    drain: Option<SpawnHandle>,
    /// Agents moved away to balance the cluster, refused here until then (see [`SendAway`]).
    away: HashMap<u32, Instant>,
}

/// Most requests to agents in flight at once (remoted's request pool is of the same order).
const MAX_ASKS: usize = 64;

impl AgentHub {
    pub fn new(shared: Arc<Shared>, source: KeySource) -> Self {
        Self {
            shared,
            source,
            loaded_losses: None,
            live: HashMap::new(),
            states: HashMap::new(),
            dirty: HashMap::new(),
            next_seq: 0,
            merged: MergedCache::default(),
            flushing: false,
            figures: tokio::sync::watch::Sender::new(HubView::default()),
            asks: HashMap::new(),
            next_ask: (crate::backoff::random_u64() & 0xffff_ffff) as u32,
            drain: None,
            away: HashMap::new(),
        }
    }

    /// Starts the hub with a mailbox of [`HUB_MAILBOX`] messages. It holds every agent session of
    /// the node, which cannot be rebuilt in place: a panic cuts `lifeline` (see
    /// `supervise::start_watched`).
    pub fn launch(self, lifeline: crate::supervise::Lifeline) -> Addr<Self> {
        let mut ctx = Context::new();
        ctx.set_mailbox_capacity(HUB_MAILBOX);
        let node = self.node().to_string();
        let what = "the agent hub (AgentHub)".to_string();
        crate::supervise::start_watched(ctx, self, what, node, crate::supervise::OnPanic::Fatal(lifeline))
    }

    /// What agent sessions hold to reach `hub`.
    pub fn link(hub: &Addr<Self>) -> HubLink {
        HubLink { bind: hub.clone().recipient(), seen: hub.clone().recipient(), closed: hub.clone().recipient() }
    }

    fn node(&self) -> &str {
        &self.shared.settings.node_name
    }

    fn touch(&mut self, id: u32) {
        self.next_seq += 1;
        if let Some(s) = self.states.get_mut(&id) {
            s.version_seq = self.next_seq;
        }
        self.dirty.insert(id, self.next_seq);
    }

    /// [`AgentHub::touch`] for a change of the agent's details: the next update carries them.
    fn touch_details(&mut self, id: u32) {
        self.touch(id);
        if let Some(s) = self.states.get_mut(&id) {
            s.details_seq = self.next_seq;
            s.details_acked = false;
        }
    }

    /// After a change of the agent table: closes the connections of agents deleted (or re-keyed)
    /// since, and forgets the state of deleted agents. Costs one lookup per agent of this node (the
    /// key index itself is kept up to date by the store's thread; it caches the key of every agent
    /// that connected here until the agent is deleted, so a missing key means a deleted agent), and
    /// only after a change that may take a key away: agents enrolled elsewhere (thousands a second
    /// in a burst, each moving the table) cost nothing here.
    fn check_keys(&mut self) {
        let losses = self.shared.keys.losses();
        if self.loaded_losses == Some(losses) {
            return;
        }
        self.loaded_losses = Some(losses);
        let keys = &self.shared.keys;
        let gone: Vec<u32> = self
            .live
            .iter()
            .filter(|(id, live)| keys.get(**id).is_none_or(|k| k.aes != live.key.aes))
            .map(|(id, _)| *id)
            .collect();
        let removed: Vec<u32> = self.states.keys().copied().filter(|id| keys.get(*id).is_none()).collect();
        for id in gone {
            if let Some(live) = self.live.remove(&id) {
                info!(node = self.node(); "agent {} was deleted or re-keyed: closing its connection from {}", fmt_id(id), live.peer);
                live.tx.close("the agent was deleted or its key changed");
            }
        }
        for id in removed {
            self.states.remove(&id);
            self.dirty.remove(&id);
        }
    }

    /// Pushes the current merged.mg to `id` if what it last reported differs.
    fn push_if_stale(&mut self, id: u32) {
        let Some(key) = self.shared.keys.get(id) else { return };
        let Some(tx) = self.live.get(&id).map(|l| l.tx.clone()) else { return };
        let reported = self.states.get(&id).and_then(|s| s.info.as_ref()).and_then(|i| i.merged_sum.clone());
        let merged = match self.merged.get(&self.shared.settings.data_dir, &key.groups) {
            Ok(m) => m,
            Err(e) => {
                warn!(node = self.node(); "cannot build merged.mg for {}: {e}", groups_key(&key.groups));
                return;
            }
        };
        let synced = reported.as_deref() == Some(merged.md5.as_str());
        let status = if synced { "synced" } else { "not synced" };
        if let Some(s) = self.states.get_mut(&id) {
            if s.group_config_status.as_deref() != Some(status) {
                s.group_config_status = Some(status.into());
                self.touch_details(id);
            }
        }
        if synced {
            return;
        }
        let mut messages = Vec::with_capacity(2 + merged.data.len() / 900 + 1);
        messages.push(format!("#!-up file {} merged.mg\n", merged.md5).into_bytes());
        for chunk in merged.data.chunks(900) {
            messages.push(chunk.to_vec());
        }
        messages.push(b"#!-close file ".to_vec());
        debug!(node = self.node(); "pushing merged.mg {} ({} bytes) to agent {}", merged.md5, merged.data.len(), fmt_id(id));
        if tx.push(messages) {
            self.shared.stats.pushes.fetch_add(1, Ordering::Relaxed);
        } else {
            // The session has not taken its earlier orders: the agent's next keep-alive retries.
            self.shared.stats.pushes_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks agents silent for longer than the disconnection time as disconnected.
    fn sweep(&mut self) {
        let limit = self.shared.settings.disconnection_time;
        let stale: Vec<u32> = self
            .states
            .iter()
            .filter(|(_, s)| s.status != Status::Disconnected && s.last_seen.elapsed() >= limit)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(s) = self.states.get_mut(&id) {
                s.status = Status::Disconnected;
            }
            info!(node = self.node(); "agent {} silent for {} s: disconnected", fmt_id(id), limit.as_secs());
            self.touch(id);
        }
    }

    /// Up to `max` changes the master has not acknowledged, with their versions.
    fn pending_updates(&self, max: usize) -> Vec<(AgentInfoUpdate, u64)> {
        self.dirty
            .iter()
            .take(max)
            .filter_map(|(id, v)| self.states.get(id).map(|s| (self.update_for(*id, s), *v)))
            .collect()
    }

    /// The update for the master: status and time always, the details only until it has them.
    fn update_for(&self, id: u32, s: &AgentState) -> AgentInfoUpdate {
        state_update(id, s, !s.details_acked)
    }
}

/// Agent `id`'s state as an update: status and time, and the details when `details`.
fn state_update(id: u32, s: &AgentState, details: bool) -> AgentInfoUpdate {
    AgentInfoUpdate {
        id,
        status: s.status.as_str().to_string(),
        last_keepalive_ms: s.last_keepalive_ms,
        version: s.version.clone().filter(|_| details),
        info: s.info.clone().filter(|_| details),
        group_config_status: s.group_config_status.clone().filter(|_| details),
        peer_ip: s.peer.map(|p| p.ip().to_string()).filter(|_| details),
    }
}

impl Actor for AgentHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Live connections are checked against the keys after a committed change, at most once
        // per `KEY_CHECK_EVERY` during a burst of enrollments.
        let mut watch = self.source.watch();
        let me = ctx.address();
        ctx.spawn(
            async move {
                loop {
                    if me.send(RefreshKeys).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(KEY_CHECK_EVERY).await;
                    if watch.changed().await.is_err() {
                        break;
                    }
                }
            }
            .into_actor(self),
        );
        ctx.run_interval(std::time::Duration::from_secs(1), |act, _| act.sweep());
        // The figures, for whoever watches them (see `WatchFigures`).
        ctx.run_interval(FIGURES_EVERY, |act, _| {
            if act.figures.receiver_count() > 0 {
                let view = act.view();
                act.figures.send_if_modified(|now| {
                    let changed = *now != view;
                    *now = view;
                    changed
                });
            }
        });
        if let KeySource::Master(registry) = &self.source {
            // The master stores its own agents' statuses directly.
            let registry = registry.clone();
            ctx.run_interval(self.shared.settings.status_flush, move |act, ctx| {
                if act.flushing || act.dirty.is_empty() {
                    return;
                }
                act.flushing = true;
                let batch = act.pending_updates(usize::MAX);
                let node = act.shared.settings.node_name.clone();
                let registry = registry.clone();
                ctx.spawn(
                    async move {
                        let versions: Vec<(u32, u64)> = batch.iter().map(|(u, v)| (u.id, *v)).collect();
                        let updates: Vec<AgentInfoUpdate> = batch.into_iter().map(|(u, _)| u).collect();
                        // In the bulk lane, as the workers' statuses: no enrollment waits behind it.
                        registry.run_bulk(move |r| r.store_statuses(&node, &updates)).await.map(|_| versions)
                    }
                    .into_actor(act)
                    .map(|result, act, ctx| {
                        act.flushing = false;
                        match result {
                            Ok(versions) => <Self as Handler<Delivered>>::handle(act, Delivered(versions), ctx),
                            Err(e) => warn!(node = act.node(); "cannot store agent statuses: {e}"),
                        }
                    }),
                );
            });
        }
    }
}

impl Handler<RefreshKeys> for AgentHub {
    type Result = ();

    fn handle(&mut self, _: RefreshKeys, _: &mut Context<Self>) {
        self.check_keys()
    }
}

impl Handler<Bind> for AgentHub {
    type Result = Result<(), BindRefused>;

    fn handle(&mut self, b: Bind, _: &mut Context<Self>) -> Self::Result {
        if self.sent_away(b.id) {
            return Err(BindRefused::SentAway(b.id));
        }
        let takeover = self.shared.settings.takeover_after;
        if let Some(old) = self.live.get(&b.id) {
            if old.conn != b.conn {
                let silent = self.states.get(&b.id).map(|s| s.last_seen.elapsed()).unwrap_or(takeover);
                if silent < takeover && !old.tx.is_closed() {
                    warn!(node = self.node(); "agent {}: refusing a second connection from {} while the one from {} is live", fmt_id(b.id), b.peer, old.peer);
                    return Err(BindRefused::Taken(b.id));
                }
                info!(node = self.node(); "agent {}: the connection from {} replaces the silent one from {}", fmt_id(b.id), b.peer, old.peer);
                old.tx.close("replaced by a newer connection of the same agent");
            }
        }
        self.live.insert(b.id, Live { conn: b.conn, peer: b.peer, tx: b.tx, key: b.key });
        Ok(())
    }
}

impl Handler<Seen> for AgentHub {
    type Result = ();

    fn handle(&mut self, seen: Seen, _: &mut Context<Self>) {
        let Some(live) = self.live.get(&seen.id) else { return };
        if live.conn != seen.conn {
            return;
        }
        let peer = live.peer;
        let state = self.states.entry(seen.id).or_insert_with(|| AgentState {
            status: Status::Pending,
            last_seen: Instant::now(),
            last_keepalive_ms: None,
            version: None,
            info: None,
            peer: None,
            group_config_status: None,
            version_seq: 0,
            details_seq: 0,
            details_acked: false,
        });
        let mut details = state.peer != Some(peer);
        state.peer = Some(peer);
        match seen.kind {
            SeenKind::Startup(version) => {
                state.status = Status::Pending;
                state.last_seen = Instant::now();
                if let Some(v) = version {
                    let v = Some(format!("Wazuh {v}"));
                    details |= state.version != v;
                    state.version = v;
                }
                if details {
                    self.touch_details(seen.id);
                } else {
                    self.touch(seen.id);
                }
            }
            SeenKind::KeepAlive(ka) => {
                state.last_seen = Instant::now();
                state.last_keepalive_ms = Some(crate::clock::now_ms());
                state.status = Status::Active;
                if !ka.version.is_empty() && state.version.as_deref() != Some(ka.version.as_str()) {
                    state.version = Some(ka.version.clone());
                    details = true;
                }
                if state.info.as_ref() != Some(&*ka) {
                    state.info = Some(*ka);
                    details = true;
                }
                // Every keep-alive refreshes last_keepalive on the master; its fields go along
                // only when they changed.
                if details {
                    self.touch_details(seen.id);
                } else {
                    self.touch(seen.id);
                }
                self.push_if_stale(seen.id);
            }
            SeenKind::Reply { counter, text } => {
                // An acknowledgement says the request arrived; the answer ends it, and is
                // acknowledged in turn (as remoted does). Only the agent asked may answer.
                if text == "ack" || self.asks.get(&counter).is_none_or(|(id, _)| *id != seen.id) {
                    return;
                }
                if let Some((id, tx)) = self.asks.remove(&counter) {
                    let _ = tx.send(text);
                    if let Some(live) = self.live.get(&id) {
                        live.tx.push(vec![format!("#!-req {counter} ack").into_bytes()]);
                    }
                }
            }
            SeenKind::Shutdown => {
                state.status = Status::Disconnected;
                debug!(node = self.node(); "agent {} shut down", fmt_id(seen.id));
                self.touch(seen.id);
            }
        }
    }
}

impl Handler<Closed> for AgentHub {
    type Result = ();

    fn handle(&mut self, c: Closed, _: &mut Context<Self>) {
        if self.live.get(&c.id).is_some_and(|l| l.conn == c.conn) {
            self.live.remove(&c.id);
        }
    }
}

impl Handler<TakeUpdates> for AgentHub {
    type Result = MessageResult<TakeUpdates>;

    fn handle(&mut self, t: TakeUpdates, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.pending_updates(t.max))
    }
}

impl Handler<Delivered> for AgentHub {
    type Result = ();

    fn handle(&mut self, Delivered(done): Delivered, _: &mut Context<Self>) {
        for (id, v) in done {
            if self.dirty.get(&id) == Some(&v) {
                self.dirty.remove(&id);
            }
            if let Some(s) = self.states.get_mut(&id) {
                if s.details_seq <= v {
                    s.details_acked = true;
                }
            }
        }
    }
}

impl Handler<ResendAll> for AgentHub {
    type Result = ();

    fn handle(&mut self, _: ResendAll, _: &mut Context<Self>) {
        let ids: Vec<u32> = self.states.keys().copied().collect();
        for id in ids {
            self.touch_details(id);
        }
    }
}

impl Handler<SharedChanged> for AgentHub {
    type Result = ();

    fn handle(&mut self, SharedChanged(paths): SharedChanged, _: &mut Context<Self>) {
        if let Some(p) = &paths {
            if !p.iter().any(|p| p.starts_with("etc/shared/")) {
                return;
            }
        }
        self.merged.invalidate(paths.as_deref());
        let ids: Vec<u32> = self.live.keys().copied().collect();
        for id in ids {
            if self.states.get(&id).is_some_and(|s| s.status == Status::Active) {
                self.push_if_stale(id);
            }
        }
    }
}

impl Handler<ForceReconnect> for AgentHub {
    type Result = usize;

    fn handle(&mut self, ForceReconnect(ids): ForceReconnect, _: &mut Context<Self>) -> usize {
        let mut n = 0;
        for (id, live) in &self.live {
            let asked = ids.is_empty() || ids.contains(id);
            if asked && live.tx.push(vec![b"#!-force_reconnect".to_vec()]) {
                n += 1;
            }
        }
        if n > 0 {
            info!(node = self.node(); "asked {n} agents to reconnect");
        }
        n
    }
}

impl Handler<AskAgent> for AgentHub {
    type Result = ResponseActFuture<Self, Result<String, AskError>>;

    fn handle(&mut self, AskAgent { id, payload, timeout }: AskAgent, _: &mut Context<Self>) -> Self::Result {
        let refuse = |why: AskError| -> Self::Result { Box::pin(actix::fut::ready(Err(why))) };
        if self.asks.len() >= MAX_ASKS {
            return refuse(AskError::Busy);
        }
        let Some(live) = self.live.get(&id) else { return refuse(AskError::NotActive) };
        self.next_ask = self.next_ask.wrapping_add(1);
        let counter = format!("{:x}", self.next_ask);
        if !live.tx.push(vec![format!("#!-req {counter} {payload}").into_bytes()]) {
            return refuse(AskError::ConnectionFull);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.asks.insert(counter.clone(), (id, tx));
        let wait = async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(AskError::Closed),
                Err(_) => Err(AskError::Timeout),
            }
        };
        Box::pin(wait.into_actor(self).map(move |answer, hub, _| {
            hub.asks.remove(&counter);
            answer
        }))
    }
}

impl Handler<SendToLive> for AgentHub {
    type Result = Vec<u32>;

    fn handle(&mut self, SendToLive(message): SendToLive, _: &mut Context<Self>) -> Vec<u32> {
        let sent: Vec<u32> =
            self.live.iter().filter(|(_, live)| live.tx.push(vec![message.clone()])).map(|(id, _)| *id).collect();
        debug!(node = self.node(); "sent a message to all {} agents connected here", sent.len());
        sent
    }
}

impl Handler<LiveStates> for AgentHub {
    type Result = Vec<AgentInfoUpdate>;

    fn handle(&mut self, _: LiveStates, _: &mut Context<Self>) -> Vec<AgentInfoUpdate> {
        self.live.keys().filter_map(|id| self.states.get(id).map(|s| state_update(*id, s, true))).collect()
    }
}

impl Handler<SendToAgents> for AgentHub {
    type Result = Vec<u32>;

    fn handle(&mut self, SendToAgents(messages): SendToAgents, _: &mut Context<Self>) -> Vec<u32> {
        let mut sent = Vec::new();
        for (id, message) in messages {
            if self.live.get(&id).is_some_and(|live| live.tx.push(vec![message])) {
                sent.push(id);
            }
        }
        if !sent.is_empty() {
            info!(node = self.node(); "sent a command to {} agents", sent.len());
        }
        sent
    }
}

impl Handler<GetHubView> for AgentHub {
    type Result = MessageResult<GetHubView>;

    fn handle(&mut self, _: GetHubView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.view())
    }
}

impl Handler<WatchFigures> for AgentHub {
    type Result = MessageResult<WatchFigures>;

    fn handle(&mut self, _: WatchFigures, _: &mut Context<Self>) -> Self::Result {
        let view = self.view();
        self.figures.send_replace(view);
        MessageResult(self.figures.subscribe())
    }
}

impl AgentHub {
    /// The hub's figures now.
    fn view(&self) -> HubView {
        let count = |st: Status| self.states.values().filter(|s| s.status == st).count();
        let s = &self.shared.stats;
        let a = self.shared.analysis.as_ref().map(|a| &*a.stats);
        HubView {
            connected: self.live.len(),
            active: count(Status::Active),
            pending: count(Status::Pending),
            disconnected: count(Status::Disconnected),
            undelivered: self.dirty.len(),
            connections: s.connections.load(Ordering::Relaxed),
            frames: s.frames.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            events_archived: self.shared.archive.written.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            pushes: s.pushes.load(Ordering::Relaxed),
            pushes_dropped: s.pushes_dropped.load(Ordering::Relaxed),
            events_failed: self.shared.archive.failed.load(Ordering::Relaxed),
            archive_waits: self.shared.archive.waits.load(Ordering::Relaxed),
            events_analysis: a.map_or(0, |a| a.delivered.load(Ordering::Relaxed)),
            events_analysis_dropped: a.map_or(0, |a| a.dropped.load(Ordering::Relaxed)),
            analysis_held_bytes: a.map_or(0, |a| a.held.load(Ordering::Relaxed) as u64),
            analysis_connected: a.map_or(0, |a| a.connected.load(Ordering::Relaxed) as u64),
            analysis_configured: u64::from(a.is_some()),
        }
    }
}

impl Handler<CloseAll> for AgentHub {
    type Result = usize;

    fn handle(&mut self, CloseAll(why): CloseAll, _: &mut Context<Self>) -> usize {
        let n = self.live.len();
        for (_, live) in self.live.drain() {
            live.tx.close(&why);
        }
        n
    }
}

#[cfg(feature = "testing")]
impl Handler<crate::supervise::testing::Panic> for AgentHub {
    type Result = ();

    fn handle(&mut self, msg: crate::supervise::testing::Panic, _: &mut Context<Self>) {
        panic!("{}", msg.0);
    }
}
