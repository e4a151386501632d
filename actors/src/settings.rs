//! What a node needs to open and run cluster connections.

use std::time::Duration;
use wazuh_cluster_protocol::handshake::Hello;
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::{CipherSuite, Psk, Role};

/// Everything the cluster channel of one node depends on; built from the node's config.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    pub node_name: String,
    pub role: Role,
    pub cluster_name: String,
    pub psk: Psk,
    pub suite: CipherSuite,
    /// Cap on one sealed frame after the handshake.
    pub max_frame: usize,
    /// A handshake not finished within this time is dropped.
    pub handshake_timeout: Duration,
    /// Worker: how often to send a keep-alive. Master: a worker silent for three of these is dropped.
    pub keepalive_interval: Duration,
    /// Worker: first redial delay and the cap of the exponential back-off.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl ChannelSettings {
    /// What this node says about itself in a handshake.
    pub fn hello(&self) -> Hello {
        Hello {
            node_name: self.node_name.clone(),
            role: self.role,
            cluster_name: self.cluster_name.clone(),
            versions: VersionRange::ours(),
            software: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Silence after which a peer is considered dead.
    pub fn peer_timeout(&self) -> Duration {
        self.keepalive_interval * 3
    }
}
