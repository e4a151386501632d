//! A started node ([`RunningNode`], made by `startup::start`): stopping it (gracefully or as a crash), what ends it (a signal, its store
//! thread, a vital actor), and `wazuh-cluster run`.

use super::handle::NodeHandle;
use super::startup::{derive_psk, kill_actors, start, RunningNode};
use crate::config::Config;
use anyhow::Context as _;
use log::{error, info, warn};
use wazuh_cluster_actors::agents::messages::CloseAll;
use wazuh_cluster_actors::master;
use wazuh_cluster_actors::worker;

impl RunningNode {
    /// Graceful stop, joined: stop accepting (cluster, enrollment, agents, API), close the agent
    /// connections, say goodbye to peers and wait (bounded) for each connection and its jobs to
    /// stop, then let the API finish its requests.
    pub async fn shutdown(&self, reason: &str) {
        self.agents_accept.abort();
        for t in &self.tasks {
            t.abort();
        }
        let api = self.api.stop(true);
        if let NodeHandle::Worker { link, .. } = &self.handle {
            // Goodbye first: the master then counts this node's agents disconnected at once, so
            // the nodes they move to during the drain are believed at once. The drain needs no
            // master: sessions, events, the archive and analysisd are this node's.
            let _ = link.send(worker::Shutdown { reason: reason.into() }).await;
            self.drain().await;
        }
        let _ = self.handle.hub().send(CloseAll(reason.to_string())).await;
        match &self.handle {
            NodeHandle::Master { listener, writes, .. } => {
                let _ = listener.send(master::Shutdown { reason: reason.into() }).await;
                if let Some(raft) = writes.raft() {
                    if let Err(e) = raft.shutdown().await {
                        log::warn!("raft did not stop cleanly: {e}");
                    }
                }
            }
            NodeHandle::Worker { .. } => {}
        }
        if let Some(counters) = self.agent_counters.clone() {
            let name = self.handle.name().to_string();
            if let Ok(Err(e)) = actix_rt::task::spawn_blocking(move || counters.flush()).await {
                warn!(node = name.as_str(); "cannot write the agents' message counters: {e}");
            }
        }
        if let Some(analysis) = self.analysis.clone() {
            // What is held goes to analysisd if it takes it within a second.
            let _ = actix_rt::task::spawn_blocking(move || analysis.stop(std::time::Duration::from_secs(1))).await;
        }
        api.await;
    }

    /// Worker, no longer accepting agents and gone from the master: asks the agents connected to
    /// reconnect elsewhere (through a balancer, or the next server in their list), serving them
    /// until they are gone or the drain deadline passes. Their events keep being taken meanwhile.
    async fn drain(&self) {
        if self.drain.deadline.is_zero() {
            return;
        }
        let node = self.handle.name().to_string();
        match self.handle.hub().send(self.drain).await {
            Ok(d) if d.left == 0 => {
                info!(node = node.as_str(); "drained: {} agents asked to reconnect elsewhere, all gone in {} ms", d.asked, d.took.as_millis())
            }
            Ok(d) => {
                warn!(node = node.as_str(); "drain deadline passed: {} agents asked to reconnect elsewhere, {} still connected after {} ms are closed", d.asked, d.left, d.took.as_millis())
            }
            Err(e) => warn!(node = node.as_str(); "cannot drain the agents ({e}); closing their connections"),
        }
    }

    /// Abrupt stop, as a crash: sockets dropped without goodbyes (tests).
    pub async fn kill(&self) {
        self.agents_accept.abort();
        for t in &self.tasks {
            t.abort();
        }
        kill_actors(&self.handle);
        let _ = self.handle.hub().send(CloseAll("the node was killed".into())).await;
        self.api.stop(false).await;
        if let Some(analysis) = &self.analysis {
            analysis.stop(std::time::Duration::ZERO);
        }
    }

    /// Resolves if the node's store thread dies, with why (the node cannot go on without it).
    pub async fn store_died(&self) -> String {
        match &self.handle {
            NodeHandle::Master { registry, writes, .. } => {
                let registry = async { format!("the agent registry thread stopped: {}", registry.stopped().await) };
                let Some(raft) = writes.raft().cloned() else { return registry.await };
                // A member whose Raft stopped (a storage failure) can take no part in the group:
                // the node exits, for its supervisor to start it again from its log.
                let raft_stopped = async move {
                    let mut metrics = raft.metrics();
                    loop {
                        if let Err(e) = &metrics.borrow().running_state {
                            return format!("the Raft member stopped: {e}");
                        }
                        if metrics.changed().await.is_err() {
                            return "the Raft member stopped".to_string();
                        }
                    }
                };
                tokio::select! {
                    why = registry => why,
                    why = raft_stopped => why,
                }
            }
            NodeHandle::Worker { replica, .. } => {
                format!("the agent replica thread stopped: {}", replica.stopped().await)
            }
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment this is made (before the node starts, so that a
/// signal sent as soon as the node logs anything stops it gracefully rather than killing it).
pub struct Signals {
    #[cfg(unix)]
    term: actix_rt::signal::unix::Signal,
    #[cfg(unix)]
    int: actix_rt::signal::unix::Signal,
}

impl Signals {
    /// Starts catching the signals. Must run inside the actix system.
    pub fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use actix_rt::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
            let int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
            Ok(Self { term, int })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves with the name of the next signal.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = actix_rt::signal::ctrl_c().await;
            "interrupt"
        }
    }
}

/// A graceful stop asked through the API (`PUT /manager/drain`), as SIGTERM would.
static STOP: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Asks the node `run` runs to stop gracefully (a worker drains its agents first); `false` when no
/// node runs in this process (a test's nodes, which stop as their test says).
pub fn request_stop() -> bool {
    if !RUNNING.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    STOP.notify_one();
    true
}

static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `wazuh-cluster run`: one node until SIGINT/SIGTERM (exit 0), or until its store dies (error).
pub fn run(config: Config) -> anyhow::Result<()> {
    let psk = derive_psk(&config)?;
    let name = config.node.name.clone();
    actix_rt::System::new().block_on(async move {
        let mut signals = Signals::install()?;
        let node = start(&config, psk).await?;
        super::watchdog::start(&name, config.node.stall_timeout);
        // Every other thread of the node is started: from here the event loop alone yields.
        super::priority::yield_this_thread(&name, config.node.event_loop_nice);
        super::watchdog::notify("READY=1");
        RUNNING.store(true, std::sync::atomic::Ordering::Relaxed);
        let fatal = tokio::select! {
            signal = signals.recv() => {
                info!(node = name.as_str(); "{signal} received, shutting down");
                None
            }
            () = STOP.notified() => {
                info!(node = name.as_str(); "a drain was asked through the API; shutting down");
                None
            }
            died = node.store_died() => {
                error!(node = name.as_str(); "{died}; shutting down");
                Some(died)
            }
            why = node.lifeline.cut_off() => {
                // The actor's own ERROR line said why; the process exits non-zero with it.
                info!(node = name.as_str(); "shutting down after that failure");
                Some(why)
            }
        };
        node.shutdown(&format!("node {name} is shutting down")).await;
        info!(node = name.as_str(); "stopped");
        match fatal {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    })
}
