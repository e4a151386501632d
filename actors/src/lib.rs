//! The actors of a wazuh-multi-node node, in layers (each depends only on those below it):
//!
//! - Foundations: [`clock`] (the one wall clock), [`backoff`] (delays and OS randomness),
//!   [`secret`] (constant-time comparison, private files), [`budget`] (the open-file limit split
//!   between files, the cluster, the API, enrollment and agents; pools that shed the oldest
//!   unauthenticated connection first),
//!   [`settings`], [`supervise`] (job health, restarts, panics caught at a job's boundary).
//! - Storage and files: [`registry`] (the master's registry, the workers' replicas, their store
//!   threads, `client.keys`), [`manifest`] (scans and digests of the sync roots), [`files`]
//!   (confinement, serving, staging).
//! - The channel: [`link`] (the handshake over a socket, with a deadline) and [`connection`] (the
//!   generic transport of an established connection: bounded queues both ways, request ids,
//!   deadlines; it knows nothing of jobs).
//! - The jobs: [`jobs`] (the runtime every job shares, each side's job set, the master's shared
//!   jobs).
//! - Agents: [`agents`] (sessions on 1514, the hub, the event archive) and [`enrollment`] (TLS on
//!   1515, with [`client_cert`] for agents' client certificates).
//! - The owners: [`master::MasterListener`] (accepts workers and admits them by identity, see
//!   [`admission`]) and
//!   [`worker::WorkerLink`] (dials the master, redials with back-off).
//!
//! Every log line carries the local node's name as the `node` key-value.

pub mod admission;
pub mod agents;
pub mod backoff;
pub mod budget;
pub mod client_cert;
pub mod clock;
pub(crate) mod connection;
pub mod consensus;
pub mod enrollment;
pub(crate) mod enrollment_policy;
pub mod files;
pub mod jobs;
pub mod link;
pub mod manifest;
pub mod master;
pub mod registry;
pub mod ruleset;
pub mod secret;
pub mod settings;
pub mod supervise;
pub mod testing;
pub mod throttle;
pub mod worker;

pub use settings::ChannelSettings;
