//! Inside a Wazuh install: the work Wazuh's remoted, authd and clusterd did for the daemons around
//! them, each turned on in `[manager]` (see `docs` in the README, "Running inside a Wazuh manager
//! install"):
//!
//! - [`active_response`]: analysisd's active-response queue (`queue/alerts/ar`), read and sent to
//!   the agents wherever in the cluster they are connected.
//! - [`requests`]: remoted's request socket (`queue/sockets/remote`), answered by the agent, wherever
//!   it is connected.
//! - [`wazuh_db`]: wazuh-db's agent table (`queue/db/wdb`) kept in step with the cluster's.
//!
//! The wire facts come from Wazuh's sources (`remoted/ar-forward.c`, `remoted/request.c`,
//! `wazuh_db/helpers/wdb_global_helpers.c`). Each integration is bounded, counts what it drops, and
//! logs a missing or restarting daemon at a limited rate; none of it costs an agent its session.

pub mod active_response;
pub mod figures;
mod framing;
mod reach;
pub mod requests;
pub mod wazuh_db;

use crate::config::ManagerConfig;
use crate::node::handle::NodeHandle;

pub use figures::Figures;
pub use reach::install_relays;

/// Starts the integrations `config` turns on. Must run inside the actix system.
pub fn start(config: &ManagerConfig, node: &NodeHandle) -> anyhow::Result<Vec<actix_rt::task::JoinHandle<()>>> {
    let figures = node.manager_figures().clone();
    let mut tasks = Vec::new();
    if let Some(path) = &config.active_response {
        tasks.extend(active_response::start(path, config.queue, node.clone(), figures.clone())?);
    }
    if let Some(path) = &config.requests {
        tasks.push(requests::start(path, config.request_timeout, node.clone(), figures.clone())?);
    }
    if let Some(path) = &config.wazuh_db {
        tasks.push(wazuh_db::start(path.clone(), config.wazuh_db_interval, node.clone(), figures));
    }
    Ok(tasks)
}

/// Binds a Unix socket at `path` for a daemon of the install: a stale socket there (an earlier run,
/// or the remoted this node replaces) is removed; anything else there is an error. The parent
/// directory is made if missing.
fn prepare_socket_path(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::FileTypeExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot make {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("cannot remove the old socket {}", path.display()))
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(_) => Ok(()),
    }
}

/// Wazuh's permissions for the sockets its daemons bind (`0660`: the wazuh group may write).
fn wazuh_permissions(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the permissions of {}", path.display()))
}
