//! What a node needs to open and run cluster connections.

use crate::admission::AdmissionMode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wazuh_cluster_protocol::handshake::Hello;
use wazuh_cluster_protocol::identity::{JoinToken, NodeIdentity};
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::{CipherSuite, Psk, Role};

/// Everything the cluster channel and the job actors of one node depend on; built from its config.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    pub node_name: String,
    pub role: Role,
    /// The node's data directory (sync roots live under it).
    pub data_dir: PathBuf,
    pub cluster_name: String,
    pub psk: Psk,
    pub suite: CipherSuite,
    /// Cap on one sealed frame after the handshake.
    pub max_frame: usize,
    /// A handshake not finished within this time is dropped.
    pub handshake_timeout: Duration,
    /// A request not answered within this time fails (and its job restarts).
    pub request_timeout: Duration,
    /// Worker: how often to send a keep-alive. Master: a worker silent for three of these is dropped.
    pub keepalive_interval: Duration,
    /// Worker: first redial delay and the cap of the exponential back-off.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub jobs: JobIntervals,
    /// The protocol versions this node offers; [`VersionRange::ours`] except in compatibility tests.
    pub versions: VersionRange,
    /// Bounds of each connection's queues.
    pub budgets: Budgets,
    /// Master: whether the API credential a change forwarded by a worker carries is an
    /// administrator's (the node's own API rules); `None`: changes from workers are refused.
    pub admin: Option<AdminCheck>,
    /// This node's identity key (see [`crate::admission`]).
    pub identity: Arc<NodeIdentity>,
    /// Worker: the join token to present while the master does not know this node yet.
    pub join_token: Option<JoinToken>,
    /// Master: how workers it does not know yet are admitted.
    pub admission: AdmissionMode,
    /// Master: cluster handshakes in flight at once (the node's descriptor budget gives it); more
    /// connections are closed at once.
    pub max_handshakes: usize,
    /// Master: the cluster's enrollment policy, applied to what workers forward too.
    pub enrollment: Arc<crate::enrollment_policy::EnrollmentPolicy>,
    /// Master: how the API reads workers forward are answered (by this node's API, once it runs).
    pub api_calls: ApiCalls,
    /// Master: how what workers relay for agents other nodes hold is done (by the node's manager
    /// integrations, once they run).
    pub agent_relays: AgentRelays,
    /// Master: rebalancing agents across workers (`[cluster.rebalance]`).
    pub rebalance: RebalanceSettings,
}

/// Master: answers the API reads its workers forward, as the master's own API answers its callers.
/// The node sets it once its API runs; until then, and on a node without an API, a forwarded read
/// is answered 503.
#[derive(Clone, Default)]
pub struct ApiCalls(Arc<std::sync::OnceLock<Arc<CallsFactory>>>);

/// Makes the reader of one worker connection (it lives on that connection's thread).
pub type CallsFactory = dyn Fn() -> Box<dyn CallApi> + Send + Sync;

/// Answers one call a worker forwarded, as the master's API answers its own callers.
pub trait CallApi {
    fn call(
        &self,
        call: wazuh_cluster_protocol::message::ApiCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = wazuh_cluster_protocol::message::ApiAnswer>>>;
}

impl ApiCalls {
    /// Installs the API's reader (the first one set stays).
    pub fn set(&self, factory: Arc<CallsFactory>) {
        let _ = self.0.set(factory);
    }

    /// A reader for one connection, once the API runs.
    pub fn reader(&self) -> Option<Box<dyn CallApi>> {
        self.0.get().map(|make| make())
    }
}

impl std::fmt::Debug for ApiCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "ApiCalls(set)" } else { "ApiCalls(unset)" })
    }
}

/// Master: does what a worker relays for agents other nodes hold
/// ([`wazuh_cluster_protocol::message::AgentRelay`]); set once by the node. Until then a relay is
/// answered `unavailable`.
#[derive(Clone, Default)]
pub struct AgentRelays(Arc<std::sync::OnceLock<Arc<RelayFn>>>);

/// `(worker, relay) -> outcome`, run on the worker connection's thread.
pub type RelayFn = dyn Fn(
        String,
        wazuh_cluster_protocol::message::AgentRelay,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = wazuh_cluster_protocol::message::AgentRelayed>>>
    + Send
    + Sync;

impl AgentRelays {
    /// Installs the relay (the first one set stays).
    pub fn set(&self, relay: Arc<RelayFn>) {
        let _ = self.0.set(relay);
    }

    pub fn get(&self) -> Option<Arc<RelayFn>> {
        self.0.get().cloned()
    }
}

impl std::fmt::Debug for AgentRelays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "AgentRelays(set)" } else { "AgentRelays(unset)" })
    }
}

/// Decides whether a credential (a bearer token of the API) may make a change: an
/// administrator's may make any; a user's may revoke that user's own tokens (signing out).
#[derive(Clone)]
pub struct AdminCheck(pub Arc<AllowsChange>);

/// `(credential, request) -> allowed`.
pub(crate) type AllowsChange = dyn Fn(&str, &wazuh_cluster_protocol::message::AdminRequest) -> bool + Send + Sync;

impl std::fmt::Debug for AdminCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCheck(..)")
    }
}

impl AdminCheck {
    /// Only this one token (compared in constant time).
    pub fn token(expected: String) -> Self {
        AdminCheck(Arc::new(move |given: &str, _: &_| crate::secret::same_secret(given, &expected)))
    }

    pub fn allows(&self, credential: &str, request: &wazuh_cluster_protocol::message::AdminRequest) -> bool {
        (self.0)(credential, request)
    }
}

/// How much one connection may hold in memory on each side of its socket. When a bound is
/// reached, the connection stops reading from the peer (TCP pushes back) or the job sending waits;
/// nothing grows without bound and nothing is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Requests and notifications of the peer being handled at once.
    pub inbound_requests: usize,
    /// Their bytes (as sealed frames), at once.
    pub inbound_bytes: usize,
    /// Bytes queued for the peer and not yet written to its socket.
    pub outbound_bytes: usize,
}

impl Budgets {
    /// The defaults for frames of up to `max_frame` bytes: 64 requests, and one frame's worth of
    /// bytes each way (so a message of the largest size always fits, alone; small ones go many at
    /// a time).
    pub fn for_frame(max_frame: usize) -> Self {
        Self { inbound_requests: 64, inbound_bytes: max_frame, outbound_bytes: max_frame }
    }
}

/// Periods of the job actors.
#[derive(Debug, Clone)]
pub struct JobIntervals {
    /// Worker -> master agent status round.
    pub agent_info: Duration,
    /// Worker <-> master integrity check round.
    pub integrity: Duration,
    /// Master: recomputation of the file manifest (LocalIntegrity).
    pub local_integrity: Duration,
    /// Master: re-read of the agent-groups table (LocalAgentGroups).
    pub local_agent_groups: Duration,
    /// First and largest delay before a failed job restarts.
    pub restart_min: Duration,
    pub restart_max: Duration,
}

impl Default for JobIntervals {
    fn default() -> Self {
        Self {
            agent_info: Duration::from_secs(1),
            integrity: Duration::from_secs(10),
            local_integrity: Duration::from_secs(60),
            local_agent_groups: Duration::from_secs(5),
            restart_min: Duration::from_millis(100),
            restart_max: Duration::from_secs(5),
        }
    }
}

impl JobIntervals {
    /// The delays a failed job waits out before it works again.
    pub(crate) fn restart_backoff(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff::new(self.restart_min, self.restart_max)
    }

    /// How often agent status changes are looked at (and sent or stored): a fifth of `agent_info`, so
    /// a change leaves well within that interval.
    pub fn status_tick(agent_info: Duration) -> Duration {
        (agent_info / 5).max(Duration::from_millis(20))
    }
}

impl ChannelSettings {
    /// What this node says about itself in a handshake.
    pub fn hello(&self) -> Hello {
        Hello {
            node_name: self.node_name.clone(),
            role: self.role,
            cluster_name: self.cluster_name.clone(),
            versions: self.versions,
            software: env!("CARGO_PKG_VERSION").to_string(),
            public_key: Some(self.identity.public_key().0.to_vec()),
            join_token: self.join_token.as_ref().map(|t| t.id.clone()),
        }
    }

    /// Silence after which a peer is considered dead.
    pub(crate) fn peer_timeout(&self) -> Duration {
        self.keepalive_interval * 3
    }
}

/// Settings for unit tests: a node of cluster "test" with short timers.
#[cfg(test)]
pub(crate) fn test_settings(name: &str) -> ChannelSettings {
    ChannelSettings {
        node_name: name.into(),
        role: wazuh_cluster_protocol::Role::Master,
        // Each test node its own directory: a worker pins its master's identity there.
        data_dir: std::env::temp_dir().join(format!("wmn-unit-{}", crate::backoff::random_u64())),
        cluster_name: "test".into(),
        psk: Psk::from_bytes([1; 32]),
        suite: CipherSuite::default(),
        max_frame: 1 << 20,
        handshake_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(1),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(100),
        jobs: JobIntervals::default(),
        versions: VersionRange::ours(),
        budgets: Budgets::for_frame(1 << 20),
        admin: None,
        identity: Arc::new(test_identity()),
        join_token: None,
        admission: AdmissionMode::Open,
        max_handshakes: 256,
        enrollment: Default::default(),
        api_calls: Default::default(),
        agent_relays: Default::default(),
        rebalance: Default::default(),
    }
}

/// A fresh identity for tests (key generation cannot fail short of a broken OS random source).
#[cfg(test)]
pub(crate) fn test_identity() -> NodeIdentity {
    match NodeIdentity::generate() {
        Ok((identity, _)) => identity,
        Err(e) => panic!("cannot make a test identity: {e}"),
    }
}

/// `[cluster.rebalance] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebalanceMode {
    #[default]
    Off,
    On,
    /// Decides and logs what it would move, moves nothing.
    DryRun,
}

/// How the master rebalances agents across workers (`[cluster.rebalance]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceSettings {
    pub mode: RebalanceMode,
    /// A worker is over when it holds more than the mean by this share (0.2: 20 %).
    pub share: f64,
    /// How often the distribution is checked; one batch at most per check.
    pub every: Duration,
    /// Moves a second at most, in all (a batch is this many times `every`).
    pub max_per_second: u32,
    /// How long a moved agent is refused by the worker it left.
    pub away: Duration,
    /// Whether moves that fill a worker far below the mean are steered to it (every other worker
    /// refuses the moved agents for `away` too).
    pub steer: bool,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        RebalanceSettings {
            mode: RebalanceMode::Off,
            share: 0.2,
            every: Duration::from_secs(5),
            max_per_second: 50,
            away: Duration::from_secs(60),
            steer: true,
        }
    }
}
