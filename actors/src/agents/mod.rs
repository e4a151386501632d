//! Agent connections (remoted's job): every node accepts stock Wazuh agents on TCP 1514.
//!
//! - [`session`]: one task per TCP connection: frames, header and peer-address checks, decryption,
//!   the startup/keep-alive/shutdown conversation, events to the [`archive`].
//! - [`hub::AgentHub`]: one actor per node: the keys (from the registry or replica, reloaded on every
//!   change), which connection holds which agent, statuses, the changes not yet delivered to the
//!   master, and `merged.mg` pushes ([`merged`]).

pub mod archive;
pub mod hub;
pub mod merged;
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
        let mut map = KeyMap::default();
        for e in entries {
            let ip = AgentIp::parse(&e.ip).unwrap_or(AgentIp::Any);
            if let AgentIp::Addr(a) = ip {
                map.by_ip.insert(a, e.id);
            }
            let aes = aes_key(&e.key);
            map.by_id
                .insert(e.id, Arc::new(AgentKey { id: e.id, name: e.name, ip, raw_key: e.key, aes, groups: e.groups }));
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
        let secs = crate::now_ms() / 1000;
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
}
