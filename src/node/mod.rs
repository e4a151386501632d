//! One node: [`startup`] (start), [`running`] (run, stop) and [`handle`] (what the API and the CLI use to observe
//! and change it). Modules of this crate import from the submodules directly; these re-exports
//! are for the binaries and the tests.

pub mod handle;
mod leader_files;
pub mod page;
mod priority;
pub mod running;
pub mod startup;
pub mod watchdog;

pub use handle::{ChangeError, NodeHandle, VERSION};
pub use running::{run, Signals};
pub use startup::{channel_settings, derive_psk, start, RunningNode};
