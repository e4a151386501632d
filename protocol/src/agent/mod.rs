//! The Wazuh 4.x agent protocol, as a manager speaks it (pure parsing and formatting; the sockets are
//! in `actors`).

pub mod analysis;
pub mod enrollment;
pub mod keepalive;
pub mod secure;
