//! The `wazuh-cluster` binary's library: configuration, logging, node start-up and the demo.
//! The wire lives in `wazuh-cluster-protocol`, the actors in `wazuh-cluster-actors`.

pub mod config;
pub mod demo;
pub mod logging;
pub mod node;
