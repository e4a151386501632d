//! The master's end of a worker connection: its job set ([`set::MasterJobs`]), the request
//! servers ([`servers`]), AgentGroupsSend ([`agent_groups`]), its pure delivery state
//! ([`delivery`]) and the workers' acknowledged positions ([`positions`]).

pub mod agent_groups;
pub mod delivery;
pub mod positions;
pub mod servers;
pub mod set;

pub use set::MasterJobs;
