//! The master's end of a worker connection: its job set ([`set::MasterJobs`]), the request
//! servers ([`servers`]), AgentGroupsSend ([`agent_groups`]) and its pure delivery state
//! ([`delivery`]).

pub mod agent_groups;
pub mod delivery;
pub mod servers;
pub mod set;

pub use set::MasterJobs;
