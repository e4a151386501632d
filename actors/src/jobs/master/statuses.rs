//! The master's inbox of agent statuses: what every worker's `AgentInfo` reports, taken in at once
//! and answered, then written to the registry by one applier, a bounded slice at a time.
//!
//! A worker's `AgentInfo` call is answered as soon as its batch is in the inbox, whatever the
//! registry's thread is doing: a storm of reports from many workers (100,000 agents connecting at
//! once) cannot hold a worker's call past its deadline, and the registry's queue holds at most one
//! status write at a time, so an enrollment waits behind one slice of statuses, not behind every
//! worker's batch.
//!
//! Bounds: per worker, one update per agent: a newer report of an agent replaces the one waiting
//! (its fields merged as the registry would have applied both); in all, at most [`PENDING`] entries
//! wait or are being written (a report finding no room waits for the applier, in turn: the room is
//! a fair semaphore; 20,000 entries with an agent's full details are some 30 MB). One store command
//! takes at most [`SLICE`] updates.
//!
//! What "answered" promises: the updates are applied in order right after, unless the registry
//! fails (they are kept and tried again; a worker's newer report still wins) or this node stops
//! leading (then they are dropped: the workers connect to the new master and send every status
//! again, as a new connection always does).

use crate::registry::{Registry, StoreError, StoreHandle};
use crate::throttle::Throttle;
use log::{debug, info, warn};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use wazuh_cluster_protocol::message::AgentInfoUpdate;

/// Most entries waiting or being written, every worker's together; a report finding no room waits
/// for the applier.
pub(crate) const PENDING: usize = 20_000;
/// Most updates in one store command.
pub(crate) const SLICE: usize = 2048;
/// How long the applier waits before trying a failed write again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `newer` over `older`, as the registry would have applied them one after the other: its status,
/// and each field it leaves out kept from `older` (the registry keeps a stored value for a field
/// left out).
fn merged(newer: AgentInfoUpdate, older: AgentInfoUpdate) -> AgentInfoUpdate {
    AgentInfoUpdate {
        id: newer.id,
        status: newer.status,
        last_keepalive_ms: newer.last_keepalive_ms.or(older.last_keepalive_ms),
        version: newer.version.or(older.version),
        info: newer.info.or(older.info),
        group_config_status: newer.group_config_status.or(older.group_config_status),
        peer_ip: newer.peer_ip.or(older.peer_ip),
    }
}

/// One worker's waiting updates, one per agent, in the order the agents first came in.
#[derive(Default)]
struct Pending {
    order: Vec<u32>,
    by_id: HashMap<u32, AgentInfoUpdate>,
}

impl Pending {
    /// Whether `update` made a new entry (rather than merging into one).
    fn put(&mut self, update: AgentInfoUpdate) -> bool {
        self.merge_in(update, true)
    }

    /// Puts back `older` updates (a write that failed) under whatever came in since; how many
    /// merged into an entry that came in meanwhile.
    fn put_back(&mut self, older: Vec<AgentInfoUpdate>) -> usize {
        older.into_iter().map(|u| self.merge_in(u, false)).filter(|new| !new).count()
    }

    /// `u` with what waits for its agent: over it when `newer`, under it otherwise. Whether it made
    /// a new entry.
    fn merge_in(&mut self, u: AgentInfoUpdate, newer: bool) -> bool {
        match self.by_id.remove(&u.id) {
            Some(there) => {
                let m = if newer { merged(u, there) } else { merged(there, u) };
                self.by_id.insert(m.id, m);
                false
            }
            None => {
                self.order.push(u.id);
                self.by_id.insert(u.id, u);
                true
            }
        }
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn into_updates(mut self) -> Vec<AgentInfoUpdate> {
        self.order.into_iter().filter_map(|id| self.by_id.remove(&id)).collect()
    }
}

#[derive(Default)]
struct Waiting {
    peers: HashMap<String, Pending>,
    /// Peers in the order their first waiting update came in.
    order: Vec<String>,
    /// Applied, refused as unknown or stale, and dropped since the start.
    figures: Figures,
}

/// What the inbox has done since the node started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Updates taken in (after merging, each agent once per wait).
    pub accepted: u64,
    /// Updates the registry stored.
    pub stored: u64,
    /// Updates for agents the registry does not have.
    pub unknown: u64,
    /// Updates older than what the registry has, or another node's live claim won.
    pub stale: u64,
    /// Store commands that failed (their updates kept and tried again).
    pub failed_writes: u64,
    /// Updates dropped because this node no longer leads (or its registry stopped).
    pub dropped: u64,
    /// Updates waiting now.
    pub waiting: u64,
}

/// The inbox shared by every worker connection's `AgentInfo` server on the master.
pub struct StatusInbox {
    waiting: Mutex<Waiting>,
    /// Rung when updates come in (shared with the applier, which holds no strong reference).
    arrived: Arc<Notify>,
    /// Room for entries: one permit per entry waiting or being written ([`PENDING`]).
    room: tokio::sync::Semaphore,
    /// The inbox's figures after each change, for whoever waits on them (tests, health).
    figures: watch::Sender<Figures>,
    /// The room's size ([`PENDING`]).
    bound: usize,
}

impl StatusInbox {
    /// An inbox, and its applier writing to `registry` (a task on the current runtime that ends
    /// once the inbox is dropped). `node`: this node's name, for the log.
    pub fn start(registry: StoreHandle<Registry>, node: String) -> Arc<Self> {
        Self::start_bounded(registry, node, PENDING)
    }

    /// [`StatusInbox::start`] with another bound per worker.
    pub(crate) fn start_bounded(registry: StoreHandle<Registry>, node: String, bound: usize) -> Arc<Self> {
        let bound = bound.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let inbox = Arc::new(Self {
            waiting: Mutex::new(Waiting::default()),
            arrived: Arc::new(Notify::new()),
            room: tokio::sync::Semaphore::new(bound),
            figures: watch::channel(Figures::default()).0,
            bound,
        });
        actix_rt::spawn(apply_loop(Arc::downgrade(&inbox), inbox.arrived.clone(), registry, node));
        inbox
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes in worker `peer`'s `updates`; returns how many, once they are in. Waits only while
    /// the inbox has no room (for the applier to write some).
    pub async fn put(&self, peer: &str, updates: Vec<AgentInfoUpdate>) -> u32 {
        let n = updates.len() as u32;
        let mut updates = updates.into_iter().peekable();
        while updates.peek().is_some() {
            let chunk: Vec<AgentInfoUpdate> = updates.by_ref().take(self.bound).collect();
            // The room is never closed; should it be, the updates are dropped (the node stops).
            let Ok(permit) = self.room.acquire_many(chunk.len() as u32).await else { return n };
            permit.forget();
            let taken = chunk.len();
            let added = {
                let mut w = self.lock();
                let w = &mut *w;
                if !w.peers.contains_key(peer) {
                    w.order.push(peer.to_string());
                }
                let pending = w.peers.entry(peer.to_string()).or_default();
                let added = chunk.into_iter().map(|u| pending.put(u)).filter(|new| *new).count();
                w.figures.accepted += added as u64;
                w.figures.waiting += added as u64;
                self.figures.send_replace(w.figures);
                added
            };
            // Merged into entries already waiting: no more room taken.
            self.room.add_permits(taken - added);
            self.arrived.notify_one();
        }
        n
    }

    /// Takes worker `peer`'s waiting updates out (its connection ended: they are written before the
    /// registry marks its agents disconnected).
    pub fn take_peer(&self, peer: &str) -> Vec<AgentInfoUpdate> {
        let mut w = self.lock();
        w.order.retain(|p| p != peer);
        let updates = w.peers.remove(peer).map(Pending::into_updates).unwrap_or_default();
        w.figures.waiting = w.figures.waiting.saturating_sub(updates.len() as u64);
        self.figures.send_replace(w.figures);
        drop(w);
        self.room.add_permits(updates.len());
        updates
    }

    /// The figures, updated after every change.
    pub fn figures(&self) -> watch::Receiver<Figures> {
        self.figures.subscribe()
    }

    /// Up to [`SLICE`] waiting updates, whole peers first, in the order they came in.
    fn take_slice(&self) -> Vec<(String, Vec<AgentInfoUpdate>)> {
        let mut w = self.lock();
        let mut slice = Vec::new();
        let mut room = SLICE;
        while room > 0 && !w.order.is_empty() {
            let peer = w.order.remove(0);
            let Some(mut pending) = w.peers.remove(&peer) else { continue };
            if pending.len() > room {
                // Part of this peer now, the rest stays at the head of the line.
                let rest_ids = pending.order.split_off(room);
                let mut rest = Pending::default();
                for id in rest_ids {
                    if let Some(u) = pending.by_id.remove(&id) {
                        rest.order.push(id);
                        rest.by_id.insert(id, u);
                    }
                }
                w.peers.insert(peer.clone(), rest);
                w.order.insert(0, peer.clone());
            }
            room -= pending.len();
            w.figures.waiting = w.figures.waiting.saturating_sub(pending.len() as u64);
            slice.push((peer, pending.into_updates()));
        }
        self.figures.send_replace(w.figures);
        slice
    }

    /// `n` entries were written (or dropped): their room is free.
    fn done(&self, n: usize) {
        self.room.add_permits(n);
    }

    /// The most entries that may wait or be written at once.
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// A slice that could not be written goes back under what came in since.
    fn put_back(&self, slice: Vec<(String, Vec<AgentInfoUpdate>)>) {
        let mut w = self.lock();
        let mut freed = 0;
        for (peer, updates) in slice.into_iter().rev() {
            w.figures.waiting += updates.len() as u64;
            if !w.peers.contains_key(&peer) {
                w.order.insert(0, peer.clone());
            }
            let merged = w.peers.entry(peer).or_default().put_back(updates);
            w.figures.waiting -= merged as u64;
            freed += merged;
        }
        self.figures.send_replace(w.figures);
        drop(w);
        self.room.add_permits(freed);
    }

    fn count(&self, f: impl FnOnce(&mut Figures)) {
        let mut w = self.lock();
        f(&mut w.figures);
        self.figures.send_replace(w.figures);
    }
}

/// Writes what waits, one slice per store command, until the inbox is gone.
async fn apply_loop(inbox: Weak<StatusInbox>, arrived: Arc<Notify>, registry: StoreHandle<Registry>, node: String) {
    let mut failures = Throttle::new(Duration::from_secs(60));
    loop {
        let Some(me) = inbox.upgrade() else { return };
        let slice = me.take_slice();
        if slice.is_empty() {
            drop(me);
            // Woken by an arrival (one that came in meanwhile left a permit), or now and then to
            // see whether the inbox is gone.
            let _ = tokio::time::timeout(Duration::from_secs(1), arrived.notified()).await;
            continue;
        }
        let n: usize = slice.iter().map(|(_, u)| u.len()).sum();
        let written = slice.clone();
        let outcome = registry
            .run_bulk(move |r| {
                let mut per_peer = Vec::with_capacity(written.len());
                for (peer, updates) in &written {
                    per_peer.push((peer.clone(), r.store_statuses(peer, updates)?));
                }
                Ok((per_peer, r.contest_line(), r.move_line()))
            })
            .await;
        match outcome {
            Ok((per_peer, contest, moved)) => {
                if let Some(line) = contest {
                    warn!(node = node.as_str(); "{line}");
                }
                if let Some(line) = moved {
                    info!(node = node.as_str(); "{line}");
                }
                for (peer, (_, unknown, _)) in &per_peer {
                    if *unknown > 0 {
                        warn!(node = node.as_str(); "worker {peer}: {unknown} status updates for agents that do not exist (deleted?) were not stored");
                    }
                }
                me.count(|f| {
                    for (_, (stored, unknown, stale)) in &per_peer {
                        f.stored += u64::from(*stored);
                        f.unknown += u64::from(*unknown);
                        f.stale += u64::from(*stale);
                    }
                });
                debug!(node = node.as_str(); "{n} agent statuses written from {} workers", per_peer.len());
                me.done(n);
            }
            Err(StoreError::NotLeader(_) | StoreError::Stopped) => {
                // The workers resend everything to whoever leads next (a new connection does).
                me.count(|f| f.dropped += n as u64);
                me.done(n);
                debug!(node = node.as_str(); "{n} agent statuses dropped: this node no longer writes the registry");
            }
            Err(e) => {
                me.put_back(slice);
                me.count(|f| f.failed_writes += 1);
                if let Some(more) = failures.allow() {
                    warn!(node = node.as_str(); "{n} agent statuses could not be written to the registry, kept and tried again in {}s: {e}{}", RETRY_AFTER.as_secs(), crate::throttle::suppressed(more));
                }
                drop(me);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::master::servers::AgentInfoServe;
    use crate::jobs::runtime::Serve;
    use crate::registry::testing::agent;
    use crate::registry::Store;
    use wazuh_cluster_protocol::message::AgentInfoBatch;
    use wazuh_cluster_protocol::MasterToWorker;

    const WAIT: Duration = Duration::from_secs(60);

    /// A registry of `n` agents on its store thread, and a write holding that thread until the
    /// sender is used (or dropped).
    async fn held_registry(
        n: usize,
    ) -> (
        tempfile::TempDir,
        StoreHandle<Registry>,
        Vec<u32>,
        std::sync::mpsc::SyncSender<()>,
        tokio::task::JoinHandle<Result<(), StoreError>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(dir.path()).unwrap();
        registry.begin().unwrap();
        let ids: Vec<u32> =
            (0..n).map(|i| registry.enroll(&agent(&format!("storm-{i}"), None)).unwrap().unwrap().id).collect();
        registry.commit().unwrap();
        let store = StoreHandle::spawn("storm-test", registry, |r| r.seq()).unwrap();
        let (release, write) = crate::registry::testing::hold(&store, |_| {}).await;
        (dir, store, ids, release, write)
    }

    fn ack_of(answer: Result<crate::jobs::runtime::Served<MasterToWorker>, crate::jobs::runtime::ServeError>) -> u32 {
        match answer.map(|s| s.reply) {
            Ok(MasterToWorker::AgentInfoAck(ack)) => ack.stored,
            other => panic!("not an acknowledgement: {other:?}"),
        }
    }

    /// The status storm of a connection burst: 40 workers report each of their agents three times
    /// over while the registry's thread is busy (held by a write, so that nothing at all is stored
    /// meanwhile). Every report is answered all the same (a worker's AgentInfo call waits for the
    /// inbox, never for the registry, so no storm can hold it past its deadline); what waits is one
    /// update per agent; once the registry is free, every agent has its last status.
    #[actix_rt::test]
    async fn a_status_storm_from_many_workers_is_answered_while_the_registry_is_busy() {
        const WORKERS: usize = 40;
        const EACH: usize = 50;
        let (_dir, store, ids, release, write) = held_registry(WORKERS * EACH).await;
        let inbox = StatusInbox::start(store.clone(), "master".into());
        let mut figures = inbox.figures();
        let report = |round: u64, w: usize| AgentInfoBatch {
            updates: ids[w * EACH..(w + 1) * EACH]
                .iter()
                .map(|&id| update(id, if round == 1 { "disconnected" } else { "active" }, 1_000 + round))
                .collect(),
        };
        for round in 0..3u64 {
            let calls: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let mut server = AgentInfoServe { statuses: inbox.clone(), peer: format!("worker-{w}") };
                    actix_rt::spawn(server.serve(report(round, w)))
                })
                .collect();
            for call in calls {
                assert_eq!(ack_of(call.await.unwrap()), EACH as u32, "round {round}: every update taken");
            }
        }
        assert!(!write.is_finished(), "the reports were answered while the registry's thread was held");
        let f = *figures.borrow();
        assert!(f.waiting <= (WORKERS * EACH) as u64, "one waiting update per agent at most: {f:?}");
        assert!(f.accepted <= 2 * (WORKERS * EACH) as u64, "6,000 reports, merged per agent: {f:?}");
        assert_eq!(f.stored, 0);

        release.send(()).unwrap();
        let all = (WORKERS * EACH) as u64;
        let settled = figures.wait_for(|f| f.waiting == 0 && f.stored + f.stale >= f.accepted && f.stored >= all);
        tokio::time::timeout(WAIT, settled).await.expect("the statuses written").unwrap();
        let rows = store.run(|r| r.rows(None)).await.unwrap();
        assert_eq!(rows.len(), WORKERS * EACH);
        for row in rows {
            let w = ids.iter().position(|&id| id == row.entry.id).unwrap() / EACH;
            assert_eq!(
                (row.status.as_str(), row.node_name.as_str(), row.last_keepalive_ms),
                ("active", format!("worker-{w}").as_str(), Some(1_002)),
                "agent {}: its last report",
                row.entry.id
            );
        }
        assert_eq!(inbox.figures().borrow().failed_writes, 0);
    }

    /// A report finding no room in the inbox waits for the applier (and only for it); nothing it
    /// reported is lost.
    #[actix_rt::test]
    async fn a_report_over_the_bound_waits_for_the_applier_and_loses_nothing() {
        let (_dir, store, ids, release, _write) = held_registry(25).await;
        let inbox = StatusInbox::start_bounded(store.clone(), "master".into(), 10);
        let mut figures = inbox.figures();
        let mut server = AgentInfoServe { statuses: inbox.clone(), peer: "worker-1".into() };
        let batch = AgentInfoBatch { updates: ids.iter().map(|&id| update(id, "active", 5)).collect() };
        let call = actix_rt::spawn(server.serve(batch));
        // A first 10 went in and the applier took them (it is stuck on the held registry): the
        // room is full until they are written.
        let full = figures.wait_for(|f| f.waiting == 0 && f.accepted == 10);
        tokio::time::timeout(WAIT, full).await.expect("the inbox full").unwrap();
        assert!(!call.is_finished(), "a report over the bound was answered before the applier wrote any");
        release.send(()).unwrap();
        assert_eq!(ack_of(call.await.unwrap()), 25);
        let settled = figures.wait_for(|f| f.stored == 25 && f.waiting == 0);
        tokio::time::timeout(WAIT, settled).await.expect("every status written").unwrap();
        let rows = store.run(|r| r.rows(None)).await.unwrap();
        assert!(rows.iter().all(|r| r.status == "active" && r.node_name == "worker-1"));
    }

    fn update(id: u32, status: &str, at: u64) -> AgentInfoUpdate {
        AgentInfoUpdate {
            id,
            status: status.into(),
            last_keepalive_ms: Some(at),
            version: None,
            info: None,
            group_config_status: None,
            peer_ip: None,
        }
    }

    #[test]
    fn a_newer_report_keeps_the_fields_it_leaves_out() {
        let first = AgentInfoUpdate {
            version: Some("Wazuh v4.14.7".into()),
            peer_ip: Some("10.0.0.1".into()),
            ..update(7, "active", 100)
        };
        let second = AgentInfoUpdate { last_keepalive_ms: None, ..update(7, "disconnected", 0) };
        let m = merged(second, first);
        assert_eq!(m.status, "disconnected");
        assert_eq!(m.last_keepalive_ms, Some(100));
        assert_eq!(m.version.as_deref(), Some("Wazuh v4.14.7"));
        assert_eq!(m.peer_ip.as_deref(), Some("10.0.0.1"));

        let mut p = Pending::default();
        p.put(update(1, "active", 1));
        p.put(update(2, "active", 1));
        p.put(update(1, "disconnected", 2));
        p.put_back(vec![update(3, "active", 0), update(2, "pending", 0)]);
        let out = p.into_updates();
        let seen: Vec<(u32, &str, Option<u64>)> =
            out.iter().map(|u| (u.id, u.status.as_str(), u.last_keepalive_ms)).collect();
        assert_eq!(seen, [(1, "disconnected", Some(2)), (2, "active", Some(1)), (3, "active", Some(0))]);
    }
}
