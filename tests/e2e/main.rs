//! End to end: the real `wazuh-cluster` binary (and `agent-sim`) as separate processes, in one test
//! binary. [`processes`]: clusters from the `deploy/` configs, crashes, enrollment, sync, 1,000
//! agents. [`runtime`]: the runtime under abuse (a taken port, a flooding worker, a full disk).
//! [`drain`]: a worker drained on SIGTERM, its agents moving to the others. [`ha`]: three master-eligible nodes, a leader lost; [`failover`]: workers following a frozen or
//! killed leader within seconds; [`partition`]: the leader cut off by a
//! network partition (namespaces); [`checker`]: what clients saw acknowledged against the final
//! registry.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod drain;
mod failover;
mod ha;
mod manager;
mod partition;
mod processes;
mod rebalance;
mod runtime;
mod stall;
