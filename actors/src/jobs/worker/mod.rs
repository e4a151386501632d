//! A worker's end of its connection: its job set ([`set::WorkerJobs`]), the periodic reports
//! ([`status`]), AgentGroupsSend ([`agent_groups`]), file sync ([`integrity`]) and the pure
//! decisions of a sync round ([`sync_round`]).

pub(crate) mod agent_groups;
pub mod integrity;
pub mod set;
pub mod status;
pub(crate) mod sync_round;

pub use set::{WorkerJobs, WorkerServices};
