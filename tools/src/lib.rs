//! The tools around wazuh-multi-node, apart from the product: `sim` (the agent side of enrollment
//! and of the 1514 conversation, for the load generator, the benchmarks and the tests) and
//! `procstat` (CPU and memory of a process, from `/proc`). The binaries are `agent-sim`,
//! `bench-scale`, `sync-bench` and `flood-check`.

pub mod procstat;
pub mod sim;
