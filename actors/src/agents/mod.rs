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

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use wazuh_cluster_protocol::agent::enrollment::AgentIp;
use wazuh_cluster_protocol::agent::secure::{aes_key, Counters};
use wazuh_cluster_protocol::message::AgentEntry;

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

/// What a connection needs to know of an agent.
#[derive(Debug, Clone)]
pub struct AgentKey {
    pub id: u32,
    pub name: String,
    pub ip: AgentIp,
    pub raw_key: String,
    pub aes: [u8; 32],
    pub groups: Vec<String>,
}

/// Every agent's key, by id and (for agents registered with one address) by address.
#[derive(Debug, Default)]
pub struct KeyMap {
    pub by_id: HashMap<u32, Arc<AgentKey>>,
    pub by_ip: HashMap<IpAddr, u32>,
}

impl KeyMap {
    pub fn from_entries(entries: Vec<AgentEntry>) -> Self {
        Self::from_entries_reusing(entries, &KeyMap::default())
    }

    /// [`KeyMap::from_entries`] keeping the keys of `old` that did not change: a reload after one
    /// enrollment derives one AES key, not one per agent.
    pub fn from_entries_reusing(entries: Vec<AgentEntry>, old: &KeyMap) -> Self {
        let mut map =
            KeyMap { by_id: HashMap::with_capacity(entries.len()), by_ip: HashMap::with_capacity(old.by_ip.len()) };
        for e in entries {
            let ip = AgentIp::parse(&e.ip).unwrap_or(AgentIp::Any);
            if let AgentIp::Addr(a) = ip {
                map.by_ip.insert(a, e.id);
            }
            let key = match old.by_id.get(&e.id) {
                Some(k) if k.raw_key == e.key && k.name == e.name && k.ip == ip && k.groups == e.groups => k.clone(),
                _ => {
                    let aes = aes_key(&e.key);
                    Arc::new(AgentKey { id: e.id, name: e.name, ip, raw_key: e.key, aes, groups: e.groups })
                }
            };
            map.by_id.insert(e.id, key);
        }
        map
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
    pub keys: RwLock<Arc<KeyMap>>,
    pub counters: ManagerCounters,
    pub archive: archive::Archive,
    pub stats: Stats,
}

impl Shared {
    pub fn keys(&self) -> Arc<KeyMap> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
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
