//! Agent connections (remoted's job): every node accepts stock Wazuh agents on TCP 1514.
//!
//! - [`session`]: one task per TCP connection: frames, header and peer-address checks, decryption,
//!   the startup/keep-alive/shutdown conversation, events to the [`archive`].
//! - [`hub::AgentHub`]: one actor per node: the keys (from the registry or replica, reloaded on every
//!   change), which connection holds which agent, statuses, the changes not yet delivered to the
//!   master, and `merged.mg` pushes ([`merged`]).
//! - [`messages`]: what sessions, the hub and the jobs say to each other (sessions and the hub
//!   know this module, not each other).

pub mod analysis;
pub mod archive;
pub mod counters;
pub mod hub;
pub mod merged;
pub mod messages;
pub mod session;

use crate::registry::KeySink;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use wazuh_cluster_protocol::agent::enrollment::AgentIp;
use wazuh_cluster_protocol::agent::secure::{aes_key, Counters};
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

/// How agent connections behave.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// An agent silent this long is `disconnected` (Wazuh's `agents_disconnection_time`).
    pub disconnection_time: Duration,
    /// Refuse messages whose counters do not increase (Wazuh's default: record only).
    pub enforce_counters: bool,
    /// A frame started and not finished within this time closes the connection.
    pub stall_timeout: Duration,
    /// A connection that speaks for no agent within this time is closed.
    pub auth_timeout: Duration,
    /// Connections of one address that speak for no agent yet, at most; more are closed at once.
    pub max_pending_per_address: u32,
    /// A second connection for an agent takes over only after the first is silent this long.
    pub takeover_after: Duration,
    /// Event archive: rotate above this size, keep this many old files.
    pub archive_max_bytes: u64,
    pub archive_keep: usize,
    /// How often status changes are written (master) or may be sent (worker) at most.
    pub status_flush: Duration,
}

impl AgentSettings {
    pub fn new(node_name: &str, data_dir: PathBuf) -> Self {
        Self {
            node_name: node_name.to_string(),
            data_dir,
            disconnection_time: Duration::from_secs(900),
            enforce_counters: false,
            stall_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(30),
            max_pending_per_address: 4096,
            takeover_after: Duration::from_secs(60),
            archive_max_bytes: 100 << 20,
            archive_keep: 5,
            status_flush: Duration::from_millis(200),
        }
    }
}

/// What a connection needs to know of an agent. Every node holds one per registered agent, so it
/// is kept small: no copy of the registered key (the AES key derived from it is enough, and tells
/// a re-keyed agent apart), and group lists shared between the agents that have the same.
#[derive(Debug, Clone)]
pub struct AgentKey {
    pub id: u32,
    pub name: Box<str>,
    pub ip: AgentIp,
    pub aes: [u8; 32],
    pub groups: Arc<[String]>,
}

/// The keys of the agents that connected to this node, by id; and, for every agent registered
/// with one address, its address (a frame without an agent id is matched by it). Other agents'
/// keys stay in the store until one connects: a worker of a 50,000-agent cluster holds the keys
/// of its 2,000 agents, not of all 50,000.
#[derive(Debug, Default)]
pub(crate) struct KeyMap {
    pub by_id: HashMap<u32, Arc<AgentKey>>,
    pub by_ip: HashMap<IpAddr, u32>,
    /// The address of each agent in `by_ip`.
    ip_of: HashMap<u32, IpAddr>,
    /// Group lists in use, shared.
    group_lists: std::collections::HashSet<Arc<[String]>>,
    /// Bumped by every change applied: a key read from the store before a change to the table
    /// was applied here is not cached (it may predate that change).
    epoch: u64,
    /// Bumped by every change that may take a key from an agent of this node (a deletion, a
    /// cached agent added again, a whole new table); new agents elsewhere leave it alone.
    losses: u64,
}

fn key_of(e: AgentEntry) -> AgentKey {
    let ip = AgentIp::parse(&e.ip).unwrap_or(AgentIp::Any);
    let aes = aes_key(&e.key);
    AgentKey { id: e.id, name: e.name.into_boxed_str(), ip, aes, groups: e.groups.into() }
}

impl KeyMap {
    /// The shared copy of `groups`.
    fn shared_groups(&mut self, groups: Arc<[String]>) -> Arc<[String]> {
        if let Some(g) = self.group_lists.get(&*groups) {
            return g.clone();
        }
        self.group_lists.insert(groups.clone());
        groups
    }

    /// Caches `key`.
    fn cache(&mut self, key: Arc<AgentKey>) -> Arc<AgentKey> {
        let groups = self.shared_groups(key.groups.clone());
        let key = if Arc::ptr_eq(&groups, &key.groups) { key } else { Arc::new(AgentKey { groups, ..(*key).clone() }) };
        self.by_id.insert(key.id, key.clone());
        key
    }

    /// Records the address agent `id` is registered with (`None`: any).
    fn set_address(&mut self, id: u32, ip: Option<IpAddr>) {
        if let Some(old) = self.ip_of.remove(&id) {
            if self.by_ip.get(&old) == Some(&id) {
                self.by_ip.remove(&old);
            }
        }
        if let Some(ip) = ip {
            self.by_ip.insert(ip, id);
            self.ip_of.insert(id, ip);
        }
    }

    fn address(ip: &str) -> Option<IpAddr> {
        match AgentIp::parse(ip) {
            Some(AgentIp::Addr(a)) => Some(a),
            _ => None,
        }
    }

    /// The table is now exactly `entries`: addresses rebuilt, cached keys refreshed or dropped.
    fn reset(&mut self, entries: &[AgentEntry]) {
        self.epoch += 1;
        self.losses += 1;
        self.by_ip.clear();
        self.ip_of.clear();
        let cached = std::mem::take(&mut self.by_id);
        for e in entries {
            let ip = Self::address(&e.ip);
            self.set_address(e.id, ip);
            if let Some(old) = cached.get(&e.id) {
                let same = *old.name == *e.name
                    && old.ip == AgentIp::parse(&e.ip).unwrap_or(AgentIp::Any)
                    && *old.groups == *e.groups
                    && old.aes == aes_key(&e.key);
                let key = if same { old.clone() } else { Arc::new(key_of(e.clone())) };
                self.cache(key);
            }
        }
    }

    /// Applies committed changes of the agent table, each in O(1); only cached agents' keys are
    /// derived again.
    fn apply(&mut self, changes: &[AgentChange]) {
        self.epoch += 1;
        for c in changes {
            match c {
                AgentChange::Added(e) => {
                    self.set_address(e.id, Self::address(&e.ip));
                    if self.by_id.contains_key(&e.id) {
                        self.losses += 1;
                        self.cache(Arc::new(key_of(e.clone())));
                    }
                }
                AgentChange::Removed { id } => {
                    self.losses += 1;
                    self.set_address(*id, None);
                    self.by_id.remove(id);
                }
                AgentChange::GroupsChanged { id, groups } => {
                    if let Some(old) = self.by_id.get(id) {
                        let key = AgentKey { groups: groups.clone().into(), ..(**old).clone() };
                        self.cache(Arc::new(key));
                    }
                }
                AgentChange::UserSet(_) | AgentChange::UserRemoved { .. } => {}
            }
        }
    }
}

/// The store a node's keys come from (its registry or replica).
#[derive(Clone)]
pub enum KeySource {
    Master(crate::registry::StoreHandle<crate::registry::Registry>),
    Worker(crate::registry::StoreHandle<crate::registry::Replica>),
}

impl KeySource {
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        match self {
            KeySource::Master(h) => h.watch(),
            KeySource::Worker(h) => h.watch(),
        }
    }

    /// Agent `id` as the store has it, the index's epoch when it was read, and whether the read
    /// saw only committed changes. Runs on the store's thread, in order with its commits.
    async fn read_key(
        &self,
        id: u32,
        index: Arc<KeyIndex>,
    ) -> Result<(Option<AgentEntry>, u64, bool), crate::registry::StoreError> {
        match self {
            KeySource::Master(h) => {
                h.run(move |r| {
                    let (entry, committed) = r.key_entry(id)?;
                    Ok((entry, index.epoch(), committed))
                })
                .await
            }
            KeySource::Worker(h) => {
                h.run(move |r| {
                    let (entry, committed) = r.key_entry(id)?;
                    Ok((entry, index.epoch(), committed))
                })
                .await
            }
        }
    }
}

/// The node's key index: kept up to date by the registry's (or replica's) thread as a
/// [`KeySink`], right after each commit; read by agent sessions and the hub. It caches the keys
/// of agents that connect here ([`KeyIndex::lookup`] reads a missing one from the store); a
/// cached key leaves only when its agent is deleted, so an agent the hub knows is one it finds.
#[derive(Default)]
pub struct KeyIndex {
    map: RwLock<KeyMap>,
    /// The agents' message counters, when the node keeps them: a deleted or re-keyed agent's go.
    counters: std::sync::OnceLock<Arc<counters::AgentCounters>>,
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex").field("cached", &self.cached()).finish_non_exhaustive()
    }
}

impl KeyIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyMap> {
        self.map.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyMap> {
        self.map.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached key of agent `id`.
    pub fn get(&self, id: u32) -> Option<Arc<AgentKey>> {
        self.read().by_id.get(&id).cloned()
    }

    fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// Moves whenever a change may have deleted or re-keyed an agent whose key is cached here (see
    /// [`KeyMap`]): while it stays, every cached key is still its agent's.
    pub(crate) fn losses(&self) -> u64 {
        self.read().losses
    }

    /// The key of agent `id`: cached, or read from `source` and cached. `None` when the agent is
    /// not registered (or the store cannot be read).
    pub(crate) async fn lookup(self: &Arc<Self>, id: u32, source: Option<&KeySource>) -> Option<Arc<AgentKey>> {
        if let Some(k) = self.get(id) {
            return Some(k);
        }
        let source = source?;
        // A read that races with a commit is read again; a commit in flight ends within a batch.
        for attempt in 0..20u64 {
            let (entry, epoch, committed) = source.read_key(id, self.clone()).await.ok()?;
            let entry = entry?;
            if committed {
                let mut map = self.write();
                if let Some(k) = map.by_id.get(&id) {
                    return Some(k.clone());
                }
                if map.epoch == epoch {
                    return Some(map.cache(Arc::new(key_of(entry))));
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(2 * (attempt + 1))).await;
        }
        None
    }

    /// The agent registered with address `ip`, if one is.
    pub(crate) async fn by_ip(self: &Arc<Self>, ip: IpAddr, source: Option<&KeySource>) -> Option<Arc<AgentKey>> {
        let id = *self.read().by_ip.get(&ip)?;
        self.lookup(id, source).await
    }

    /// Keys cached.
    pub fn cached(&self) -> usize {
        self.read().by_id.len()
    }
}

impl KeyIndex {
    /// From now on, a deleted or re-keyed agent's counters are forgotten with it.
    pub fn follow_counters(&self, counters: Arc<counters::AgentCounters>) {
        let _ = self.counters.set(counters);
    }
}

impl KeySink for KeyIndex {
    fn reset(&self, entries: &[AgentEntry]) {
        let mut map = self.write();
        if let Some(counters) = self.counters.get() {
            // Agents gone from the table, or now with another key (the cache knows theirs).
            let now: HashMap<u32, [u8; 32]> = entries.iter().map(|e| (e.id, aes_key(&e.key))).collect();
            for (id, key) in &map.by_id {
                if now.get(id) != Some(&key.aes) {
                    counters.forget(*id);
                }
            }
        }
        map.reset(entries);
    }

    fn apply(&self, changes: &[AgentChange]) {
        if let Some(counters) = self.counters.get() {
            for c in changes {
                match c {
                    AgentChange::Added(e) => counters.forget(e.id),
                    AgentChange::Removed { id } => counters.forget(*id),
                    AgentChange::GroupsChanged { .. } | AgentChange::UserSet(_) | AgentChange::UserRemoved { .. } => {}
                }
            }
        }
        self.write().apply(changes);
    }
}

/// The manager's message counters: one pair per process, shared by every agent connection, and
/// starting from the clock's seconds so that they keep increasing across restarts and nodes.
#[derive(Debug)]
pub struct ManagerCounters(Mutex<Counters>);

impl ManagerCounters {
    pub fn new() -> Self {
        let secs = crate::clock::now_ms() / 1000;
        Self(Mutex::new(Counters { global: secs.min(u32::MAX as u64) as u32, local: 0 }))
    }

    pub fn advance(&self) -> Counters {
        match self.0.lock() {
            Ok(mut c) => c.advance(),
            Err(poisoned) => poisoned.into_inner().advance(),
        }
    }
}

impl Default for ManagerCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// What sessions share with the hub without asking it.
pub struct Shared {
    pub settings: AgentSettings,
    pub keys: Arc<KeyIndex>,
    /// Where keys missing from `keys` are read (set once the store's thread runs).
    pub source: std::sync::OnceLock<KeySource>,
    pub counters: ManagerCounters,
    pub archive: archive::Archive,
    /// Whether events are written to the archive (`agents.archive`).
    pub archive_events: bool,
    /// analysisd's queue, when events are handed to it (`[analysis]`).
    pub analysis: Option<Arc<analysis::AnalysisQueue>>,
    /// The agents' last message counters, when they are enforced (`agents.enforce_counters`).
    pub agent_counters: Option<Arc<counters::AgentCounters>>,
    pub stats: Stats,
}

/// Counters for health.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: std::sync::atomic::AtomicU64,
    pub frames: std::sync::atomic::AtomicU64,
    pub events: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    /// Connections that spoke for no agent, closed to make room for new ones (the budget was full).
    pub shed: std::sync::atomic::AtomicU64,
    pub pushes: std::sync::atomic::AtomicU64,
    /// Pushes not queued because the session had not taken its earlier orders.
    pub pushes_dropped: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, key: char, ip: &str) -> AgentEntry {
        AgentEntry {
            id,
            name: format!("agent-{id}"),
            ip: ip.into(),
            key: std::iter::repeat_n(key, 64).collect(),
            groups: vec!["default".into()],
        }
    }

    type KeyView = (u32, Box<str>, [u8; 32], Vec<String>);

    fn view(index: &KeyIndex) -> Vec<KeyView> {
        let map = index.read();
        let mut v: Vec<_> = map.by_id.values().map(|k| (k.id, k.name.clone(), k.aes, k.groups.to_vec())).collect();
        v.sort();
        v
    }

    fn cache(index: &KeyIndex, e: AgentEntry) {
        index.write().cache(Arc::new(key_of(e)));
    }

    #[test]
    fn changes_keep_cached_keys_and_every_address_as_a_full_reload_would() {
        let index = KeyIndex::default();
        index.reset(&[
            entry(1, 'a', "any"),
            entry(2, 'b', "10.0.0.2"),
            entry(3, 'c', "10.0.0.3"),
            entry(5, 'f', "any"),
        ]);
        assert_eq!(index.cached(), 0, "nothing is cached before an agent connects");
        for e in [entry(1, 'a', "any"), entry(2, 'b', "10.0.0.2"), entry(3, 'c', "10.0.0.3")] {
            cache(&index, e);
        }
        let kept = index.get(1).unwrap();
        index.apply(&[
            AgentChange::Removed { id: 3 },
            AgentChange::Added(entry(2, 'd', "10.0.0.9")),
            AgentChange::Added(entry(4, 'e', "10.0.0.3")),
            AgentChange::GroupsChanged { id: 1, groups: vec!["linux".into()] },
            AgentChange::GroupsChanged { id: 5, groups: vec!["linux".into()] },
        ]);
        // The same table read whole, with the same agents cached.
        let full = KeyIndex::default();
        full.reset(&[
            AgentEntry { groups: vec!["linux".into()], ..entry(1, 'a', "any") },
            entry(2, 'd', "10.0.0.9"),
            entry(4, 'e', "10.0.0.3"),
            AgentEntry { groups: vec!["linux".into()], ..entry(5, 'f', "any") },
        ]);
        cache(&full, AgentEntry { groups: vec!["linux".into()], ..entry(1, 'a', "any") });
        cache(&full, entry(2, 'd', "10.0.0.9"));
        assert_eq!(
            index.read().by_ip,
            full.read().by_ip,
            "the old address of a re-keyed agent is gone, a reused one moved"
        );
        assert_eq!(view(&index), view(&full), "cached keys follow; uncached agents stay out");
        assert!(!Arc::ptr_eq(&kept, &index.get(1).unwrap()), "a group change gives the agent a new key entry");
        assert!(index.get(3).is_none() && index.get(4).is_none() && index.get(5).is_none());
        assert_eq!(index.read().by_ip.get(&"10.0.0.3".parse().unwrap()), Some(&4));
        cache(&index, entry(4, 'e', "10.0.0.3"));
        let (two, four) = (index.get(2).unwrap(), index.get(4).unwrap());
        assert!(Arc::ptr_eq(&two.groups, &four.groups), "agents with the same groups share one list");
    }

    #[test]
    fn a_reload_keeps_unchanged_cached_keys_and_drops_deleted_ones() {
        let index = KeyIndex::default();
        index.reset(&[entry(1, 'a', "any"), entry(2, 'b', "10.0.0.2"), entry(3, 'c', "any")]);
        for e in [entry(1, 'a', "any"), entry(2, 'b', "10.0.0.2"), entry(3, 'c', "any")] {
            cache(&index, e);
        }
        let one = index.get(1).unwrap();
        let two = index.get(2).unwrap();
        // Agent 2 re-keyed, 3 deleted, 4 enrolled.
        index.reset(&[entry(1, 'a', "any"), entry(2, 'd', "10.0.0.2"), entry(4, 'e', "any")]);
        assert!(Arc::ptr_eq(&index.get(1).unwrap(), &one), "an unchanged key is reused");
        assert!(!Arc::ptr_eq(&index.get(2).unwrap(), &two));
        assert_eq!(index.get(2).unwrap().aes, aes_key(&entry(2, 'd', "").key));
        assert!(index.get(3).is_none() && index.get(4).is_none());
        assert_eq!(index.read().by_ip.get(&"10.0.0.2".parse().unwrap()), Some(&2));
    }

    /// A key missing from the index is read from the store and cached; a deletion committed
    /// later removes it; an agent the store does not have is not found.
    #[tokio::test]
    async fn lookups_read_missing_keys_from_the_store_and_changes_follow() {
        use crate::registry::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let mut replica = crate::registry::Replica::open(dir.path()).unwrap();
        replica.begin().unwrap();
        let added = [entry(1, 'a', "any"), entry(2, 'b', "10.0.0.2")].map(AgentChange::Added);
        assert!(replica.apply(0, 2, false, &added).unwrap());
        replica.commit().unwrap();
        let index = Arc::new(KeyIndex::default());
        replica.set_key_sink(index.clone()).unwrap();
        let store = crate::registry::StoreHandle::spawn("test-replica", replica, |s| s.seq()).unwrap();
        let source = KeySource::Worker(store.clone());
        assert_eq!(index.cached(), 0);
        let two = index.by_ip("10.0.0.2".parse().unwrap(), Some(&source)).await.expect("agent 2 by address");
        assert_eq!((two.id, two.aes), (2, aes_key(&entry(2, 'b', "").key)));
        assert!(Arc::ptr_eq(&index.get(2).unwrap(), &two), "cached once read");
        assert!(index.lookup(9, Some(&source)).await.is_none(), "an agent the store does not have");
        assert!(index.lookup(1, None).await.is_none(), "without a store only the cache answers");
        assert_eq!(index.lookup(1, Some(&source)).await.map(|k| k.id), Some(1));
        store
            .run(|r| {
                r.apply(2, 3, false, &[AgentChange::Removed { id: 2 }])?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(index.get(2).is_none(), "a deletion leaves the cache");
        assert!(index.lookup(2, Some(&source)).await.is_none());
        assert!(index.by_ip("10.0.0.2".parse().unwrap(), Some(&source)).await.is_none());
        assert_eq!(index.cached(), 1);
    }
}
