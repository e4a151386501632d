//! The `wazuh-cluster` binary's library: configuration, logging, node start-up, the HTTP API, the
//! CLI's client and tables, and the demo. Modules, each depending only on those listed before it:
//! [`config`], [`logging`], [`views`] (what operators see, as plain values), [`metrics`] (views as
//! Prometheus text), [`node::handle`] (observing and changing a running node), [`api`] (HTTP),
//! [`node::startup`] (start) and [`node::running`] (run, stop), [`client`] and [`report`] (the
//! CLI), [`demo`]. The wire lives in `wazuh-cluster-protocol`, the actors in `wazuh-cluster-actors`;
//! the load generator and the benchmarks in `wazuh-cluster-tools` (`tools/`), which this crate
//! does not depend on.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod demo;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod report;
pub mod views;
