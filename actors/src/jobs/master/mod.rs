//! The master's end of a worker connection: its job set ([`set::MasterJobs`]), the request
//! servers ([`servers`]), AgentGroupsSend ([`agent_groups`]), its pure delivery state
//! ([`delivery`]), the workers' acknowledged positions ([`positions`]) and the inbox of their agents'
//! statuses ([`statuses`]).

pub(crate) mod agent_groups;
pub(crate) mod delivery;
pub mod positions;
pub(crate) mod relay;
pub(crate) mod servers;
pub mod set;
pub mod statuses;

pub use set::MasterJobs;
