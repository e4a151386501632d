//! The `wazuh-cluster` binary's library: configuration, logging, node start-up, the HTTP API, the
//! CLI's client and tables, and the demo. The wire lives in `wazuh-cluster-protocol`, the actors in
//! `wazuh-cluster-actors`.

pub mod api;
pub mod client;
pub mod config;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod report;
pub mod sim;
