//! The actors of a wazuh-multi-node node.
//!
//! - [`link`]: moves the handshake frames of `protocol::handshake` over a TCP socket, with a
//!   deadline, on both sides (dial for workers, accept for the master).
//! - [`connection::ConnectionActor`]: one per established peer connection; owns the encrypted socket
//!   (reads through a stream handler, writes through a framed writer), answers and sends keep-alives,
//!   and closes the connection with a log line naming node and peer on any fault.
//! - [`master`]: the accept loop and the admission decision for workers.
//! - [`worker::WorkerLink`]: dials the master and redials with exponential back-off and jitter.
//!
//! Every log line carries the local node's name as the `node` key-value.

pub mod agents;
pub mod connection;
pub mod enrollment;
pub mod files;
pub mod jobs;
pub mod link;
pub mod manifest;
pub mod master;
pub mod registry;
pub mod settings;
pub mod store_thread;
pub mod worker;

pub use settings::ChannelSettings;

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A random number for jitter (not for cryptography).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}
