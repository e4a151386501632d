//! Agent connections (remoted's job): every node accepts stock Wazuh agents on TCP 1514.
//!
//! - [`session`]: one task per TCP connection: frames, header and peer-address checks, decryption,
//!   the startup/keep-alive/shutdown conversation, events to the [`archive`].
//! - [`hub::AgentHub`]: one actor per node: the keys (from the registry or replica, reloaded on every
//!   change), which connection holds which agent, statuses, the changes not yet delivered to the
//!   master, and `merged.mg` pushes ([`merged`]).
//! - [`messages`]: what sessions, the hub and the jobs say to each other (sessions and the hub
//!   know this module, not each other).

pub mod archive;
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

/// Every agent's key, by id and (for agents registered with one address) by address.
#[derive(Debug, Default)]
pub struct KeyMap {
    pub by_id: HashMap<u32, Arc<AgentKey>>,
    pub by_ip: HashMap<IpAddr, u32>,
    /// Group lists in use, shared.
    group_lists: std::collections::HashSet<Arc<[String]>>,
}

fn key_of(e: AgentEntry) -> AgentKey {
    let ip = AgentIp::parse(&e.ip).unwrap_or(AgentIp::Any);
    let aes = aes_key(&e.key);
    AgentKey { id: e.id, name: e.name.into_boxed_str(), ip, aes, groups: e.groups.into() }
}

impl KeyMap {
    pub fn from_entries(entries: Vec<AgentEntry>) -> Self {
        Self::from_entries_reusing(entries, &KeyMap::default())
    }

    /// [`KeyMap::from_entries`] keeping the keys of `old` that did not change: a reload after one
    /// enrollment derives one AES key, not one per agent.
    pub fn from_entries_reusing(entries: Vec<AgentEntry>, old: &KeyMap) -> Self {
        let mut map = KeyMap {
            by_id: HashMap::with_capacity(entries.len()),
            by_ip: HashMap::with_capacity(old.by_ip.len()),
            group_lists: Default::default(),
        };
        for e in entries {
            let ip = AgentIp::parse(&e.ip).unwrap_or(AgentIp::Any);
            let key = match old.by_id.get(&e.id) {
                Some(k) if *k.name == *e.name && k.ip == ip && *k.groups == *e.groups && k.aes == aes_key(&e.key) => {
                    k.clone()
                }
                _ => Arc::new(key_of(e)),
            };
            map.insert(key);
        }
        map
    }

    /// The shared copy of `groups`.
    fn shared_groups(&mut self, groups: Arc<[String]>) -> Arc<[String]> {
        if let Some(g) = self.group_lists.get(&*groups) {
            return g.clone();
        }
        self.group_lists.insert(groups.clone());
        groups
    }

    fn insert(&mut self, key: Arc<AgentKey>) {
        self.remove(key.id);
        let groups = self.shared_groups(key.groups.clone());
        let key = if Arc::ptr_eq(&groups, &key.groups) { key } else { Arc::new(AgentKey { groups, ..(*key).clone() }) };
        if let AgentIp::Addr(a) = key.ip {
            self.by_ip.insert(a, key.id);
        }
        self.by_id.insert(key.id, key);
    }

    fn remove(&mut self, id: u32) {
        if let Some(old) = self.by_id.remove(&id) {
            if let AgentIp::Addr(a) = old.ip {
                if self.by_ip.get(&a) == Some(&id) {
                    self.by_ip.remove(&a);
                }
            }
        }
    }

    /// Applies committed changes of the agent table, each in O(1).
    pub fn apply(&mut self, changes: &[AgentChange]) {
        for p in prepare(changes) {
            self.apply_prepared(p);
        }
    }

    fn apply_prepared(&mut self, change: Prepared) {
        match change {
            Prepared::Put(key) => self.insert(key),
            Prepared::Remove(id) => self.remove(id),
            Prepared::Groups(id, groups) => {
                if let Some(old) = self.by_id.get(&id) {
                    let key = AgentKey { groups: groups.into(), ..(**old).clone() };
                    self.insert(Arc::new(key));
                }
            }
        }
    }
}

/// A change with its AES key already derived (done outside the index's lock).
enum Prepared {
    Put(Arc<AgentKey>),
    Remove(u32),
    Groups(u32, Vec<String>),
}

fn prepare(changes: &[AgentChange]) -> Vec<Prepared> {
    changes
        .iter()
        .map(|c| match c {
            AgentChange::Added(e) => Prepared::Put(Arc::new(key_of(e.clone()))),
            AgentChange::Removed { id } => Prepared::Remove(*id),
            AgentChange::GroupsChanged { id, groups } => Prepared::Groups(*id, groups.clone()),
        })
        .collect()
}

/// The node's key index: kept up to date by the registry's (or replica's) thread as a
/// [`KeySink`], right after each commit; read by agent sessions and the hub.
#[derive(Debug, Default)]
pub struct KeyIndex(RwLock<KeyMap>);

impl KeyIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyMap> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyMap> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, id: u32) -> Option<Arc<AgentKey>> {
        self.read().by_id.get(&id).cloned()
    }

    /// The agent registered with address `ip`, if one is.
    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<AgentKey>> {
        let map = self.read();
        map.by_ip.get(&ip).and_then(|id| map.by_id.get(id)).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KeySink for KeyIndex {
    fn reset(&self, entries: &[AgentEntry]) {
        // Built outside the lock: sessions keep reading the old map meanwhile.
        let map = {
            let old = self.read();
            KeyMap::from_entries_reusing(entries.to_vec(), &old)
        };
        *self.write() = map;
    }

    fn apply(&self, changes: &[AgentChange]) {
        // AES keys are derived before taking the lock.
        let prepared = prepare(changes);
        let mut map = self.write();
        for p in prepared {
            map.apply_prepared(p);
        }
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
    pub counters: ManagerCounters,
    pub archive: archive::Archive,
    pub stats: Stats,
}

/// Counters for health.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: std::sync::atomic::AtomicU64,
    pub frames: std::sync::atomic::AtomicU64,
    pub events: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
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

    #[test]
    fn committed_changes_give_the_index_a_full_reload_would() {
        let index = KeyIndex::default();
        index.reset(&[entry(1, 'a', "any"), entry(2, 'b', "10.0.0.2"), entry(3, 'c', "10.0.0.3")]);
        let kept = index.get(1).unwrap();
        index.apply(&[
            AgentChange::Removed { id: 3 },
            AgentChange::Added(entry(2, 'd', "10.0.0.9")),
            AgentChange::Added(entry(4, 'e', "10.0.0.3")),
            AgentChange::GroupsChanged { id: 1, groups: vec!["linux".into()] },
        ]);
        let full = KeyMap::from_entries(vec![
            AgentEntry { groups: vec!["linux".into()], ..entry(1, 'a', "any") },
            entry(2, 'd', "10.0.0.9"),
            entry(4, 'e', "10.0.0.3"),
        ]);
        let map = index.read();
        assert_eq!(map.by_ip, full.by_ip, "the old address of a re-keyed agent is gone, a reused one moved");
        let view = |m: &KeyMap| {
            let mut v: Vec<_> = m.by_id.values().map(|k| (k.id, k.name.clone(), k.aes, k.groups.to_vec())).collect();
            v.sort();
            v
        };
        assert_eq!(view(&map), view(&full));
        drop(map);
        assert!(!Arc::ptr_eq(&kept, &index.get(1).unwrap()), "a group change gives the agent a new key entry");
        assert_eq!(index.by_ip("10.0.0.3".parse().unwrap()).map(|k| k.id), Some(4));
        assert!(index.get(3).is_none());
        let (two, four) = (index.get(2).unwrap(), index.get(4).unwrap());
        assert!(Arc::ptr_eq(&two.groups, &four.groups), "agents with the same groups share one list");
    }

    #[test]
    fn a_reload_keeps_unchanged_keys_and_derives_only_new_ones() {
        let old = KeyMap::from_entries(vec![entry(1, 'a', "any"), entry(2, 'b', "10.0.0.2"), entry(3, 'c', "any")]);
        // Agent 2 re-keyed, 3 deleted, 4 enrolled.
        let new = KeyMap::from_entries_reusing(
            vec![entry(1, 'a', "any"), entry(2, 'd', "10.0.0.2"), entry(4, 'e', "any")],
            &old,
        );
        assert!(Arc::ptr_eq(&new.by_id[&1], &old.by_id[&1]), "an unchanged key is reused");
        assert!(!Arc::ptr_eq(&new.by_id[&2], &old.by_id[&2]));
        assert_eq!(new.by_id[&2].aes, aes_key(&entry(2, 'd', "").key));
        assert_eq!(new.by_id[&4].aes, aes_key(&entry(4, 'e', "").key));
        assert!(!new.by_id.contains_key(&3));
        assert_eq!(new.by_ip.get(&"10.0.0.2".parse().unwrap()), Some(&2));
        assert_eq!(new.by_id.len(), 3);
    }
}
