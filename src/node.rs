//! Starting and stopping one node inside an actix system.

use crate::config::Config;
use actix::prelude::*;
use anyhow::Context as _;
use log::info;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use wazuh_cluster_actors::master::{self, MasterListener};
use wazuh_cluster_actors::worker::{self, WorkerLink};
use wazuh_cluster_actors::ChannelSettings;
use wazuh_cluster_protocol::{Psk, Role};

/// A started node.
pub enum RunningNode {
    Master { listener: Addr<MasterListener>, cluster_addr: SocketAddr },
    Worker { link: Addr<WorkerLink> },
}

/// The channel settings of `config`, with `psk` already derived from its key.
pub fn channel_settings(config: &Config, psk: Psk) -> ChannelSettings {
    let c = &config.cluster;
    ChannelSettings {
        node_name: config.node.name.clone(),
        role: config.node.role,
        cluster_name: c.name.clone(),
        psk,
        suite: c.cipher,
        max_frame: c.max_frame,
        handshake_timeout: c.handshake_timeout,
        keepalive_interval: c.intervals.keepalive,
        reconnect_min: c.intervals.reconnect_min,
        reconnect_max: c.intervals.reconnect_max,
    }
}

/// Stretches the configured key (Argon2id; tens of milliseconds).
pub fn derive_psk(config: &Config) -> anyhow::Result<Psk> {
    let key = config.cluster.key.as_ref().context("no cluster key configured")?;
    key.derive_psk().context("cannot derive the cluster key")
}

/// Starts the node's actors. Must run inside an actix system.
pub async fn start(config: &Config, psk: Psk) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("cannot create node.data_dir {}", config.node.data_dir.display()))?;
    let settings = Arc::new(channel_settings(config, psk));
    let name = config.node.name.as_str();
    match config.node.role {
        Role::Master => {
            let bind = config.cluster.bind;
            let listener =
                TcpListener::bind(bind).await.with_context(|| format!("cannot listen on cluster.bind {bind}"))?;
            let cluster_addr = listener.local_addr().context("cannot read the bound address")?;
            info!(node = name; "starting master of cluster {:?} (cipher {})", config.cluster.name, config.cluster.cipher);
            let listener = MasterListener::start(listener, settings).context("cannot start the master")?;
            Ok(RunningNode::Master { listener, cluster_addr })
        }
        Role::Worker => {
            let master = config.cluster.master.clone().context("cluster.master is required for a worker")?;
            info!(node = name; "starting worker of cluster {:?} (cipher {})", config.cluster.name, config.cluster.cipher);
            Ok(RunningNode::Worker { link: WorkerLink::new(settings, master).start() })
        }
    }
}

impl RunningNode {
    /// Tells peers we are leaving and stops the node's actors.
    pub fn shutdown(&self, reason: &str) {
        match self {
            RunningNode::Master { listener, .. } => listener.do_send(master::Shutdown { reason: reason.into() }),
            RunningNode::Worker { link } => link.do_send(worker::Shutdown { reason: reason.into() }),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = actix_rt::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = actix_rt::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_rt::signal::ctrl_c().await;
        "interrupt"
    }
}

/// `wazuh-cluster run`: one node until SIGINT/SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    let psk = derive_psk(&config)?;
    let name = config.node.name.clone();
    actix_rt::System::new().block_on(async move {
        let node = start(&config, psk).await?;
        let signal = wait_for_signal().await;
        info!(node = name.as_str(); "{signal} received, shutting down");
        node.shutdown(&format!("node {name} is shutting down"));
        // Let goodbyes reach the peers.
        tokio::time::sleep(Duration::from_millis(300)).await;
        info!(node = name.as_str(); "stopped");
        Ok(())
    })
}
