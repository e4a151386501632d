//! The integration tests that run nodes inside this process (or none at all), in one binary: linked
//! once, and the harness runs them in parallel. Each module says what it covers.

#[path = "../common/mod.rs"]
mod common;

mod agent_connections;
mod agents_api;
mod analysis;
mod api_fidelity;
mod channel_bad_input;
mod cli;
mod cluster_runtime;
mod enrollment;
mod file_sync;
mod hostile_worker;
mod layers;
mod replica_burst;
mod runtime_policies;
mod sync_rules;
mod users;
mod vital_actors;
