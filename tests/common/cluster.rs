//! `TestCluster`: a master and N workers in one process, on ephemeral loopback ports, each a real
//! node (config, actors, HTTP API) as `wazuh-cluster run` starts it. Any node can be killed (sockets
//! dropped without goodbyes, as a crash) and restarted with the same configuration.

use super::init_logs;
use std::time::{Duration, Instant};
use wazuh_cluster_actors::master::ListWorkers;
use wazuh_cluster_actors::worker::GetLink;
use wazuh_cluster_protocol::Psk;
use wazuh_multi_node::config::{Config, Sources};
use wazuh_multi_node::node::{self, NodeHandle, RunningNode};

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub master: Option<RunningNode>,
    pub workers: Vec<Option<RunningNode>>,
    master_cfg: Config,
    worker_cfgs: Vec<Config>,
    psk: Psk,
    /// A join token of the master (1,000 uses), for workers made by hand.
    join: String,
}

const KEY: &str = "test-cluster-key-0123456789abcdef0123";
/// Every test node's `api.token`.
pub const API_TOKEN: &str = "test-api-token-0123456789";

/// Millisecond intervals so that cluster behaviour plays out in real time, quickly.
fn config(dir: &std::path::Path, name: &str, role: &str, extra: &[(&str, String)]) -> Config {
    let mut overrides: Vec<(String, String)> = [
        ("node.name", name.to_string()),
        ("node.role", role.to_string()),
        ("node.data_dir", dir.join(name).display().to_string()),
        ("cluster.name", "test".to_string()),
        ("cluster.key", KEY.to_string()),
        ("cluster.bind", "127.0.0.1:0".to_string()),
        ("cluster.request_timeout", "500ms".to_string()),
        ("cluster.intervals.keepalive", "200ms".to_string()),
        ("cluster.intervals.reconnect_min", "20ms".to_string()),
        ("cluster.intervals.reconnect_max", "200ms".to_string()),
        ("cluster.intervals.agent_info", "100ms".to_string()),
        ("cluster.intervals.integrity", "300ms".to_string()),
        ("cluster.intervals.local_integrity", "300ms".to_string()),
        ("cluster.intervals.local_agent_groups", "300ms".to_string()),
        ("api.bind", "127.0.0.1:0".to_string()),
        // Plain HTTP, set explicitly (HTTPS is the default; its own test sets it back).
        ("api.tls", "false".to_string()),
        ("enrollment.bind", "127.0.0.1:0".to_string()),
        ("enrollment.timeout", "300ms".to_string()),
        ("api.token", API_TOKEN.to_string()),
        ("agents.bind", "127.0.0.1:0".to_string()),
        // A worker's drain on stop is short here (its own process test has the shipped one).
        ("agents.drain_timeout", "300ms".to_string()),
        // No agent moves but those a test makes (the rebalancer has its own process test).
        ("cluster.rebalance.mode", "off".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    overrides.push(("api.secret".to_string(), "test-cluster-api-secret-0123456789abcdef".to_string()));
    let mut cfg =
        Config::load(&Sources { file: None, env: Vec::new(), overrides, host_name: None }).expect("test config");
    // The users are the master's (a worker gets them from it).
    if role == "master" {
        cfg.api.users = test_users().to_vec();
    }
    cfg
}

/// Every test node's API users: `admin` (administrator) and `auditor` (readonly), passwords
/// [`ADMIN_PASSWORD`] and [`AUDITOR_PASSWORD`] (hashed once per test process).
pub fn test_users() -> &'static [wazuh_multi_node::auth::ApiUser] {
    use wazuh_multi_node::auth::{hash_password, ApiRole, ApiUser};
    static USERS: std::sync::OnceLock<Vec<ApiUser>> = std::sync::OnceLock::new();
    USERS.get_or_init(|| {
        vec![
            ApiUser {
                name: "admin".into(),
                password_hash: hash_password(ADMIN_PASSWORD).expect("hash"),
                role: ApiRole::Administrator,
            },
            ApiUser {
                name: "auditor".into(),
                password_hash: hash_password(AUDITOR_PASSWORD).expect("hash"),
                role: ApiRole::Readonly,
            },
        ]
    })
}

pub const ADMIN_PASSWORD: &str = "admin-password-0123";
pub const AUDITOR_PASSWORD: &str = "auditor-password-0123";

impl TestCluster {
    /// Starts a master named `prefix-master` and `n` workers named `prefix-worker-i`, and waits until
    /// every worker is connected.
    pub async fn start(prefix: &str, n: usize) -> TestCluster {
        Self::start_with(prefix, n, &[]).await
    }

    /// As [`TestCluster::start`], with extra settings for every node.
    pub async fn start_with(prefix: &str, n: usize, extra: &[(&str, String)]) -> TestCluster {
        Self::start_with_roles(prefix, n, extra, extra).await
    }

    /// As [`TestCluster::start`], with extra settings for the master and for the workers.
    pub async fn start_with_roles(
        prefix: &str,
        n: usize,
        master_extra: &[(&str, String)],
        extra: &[(&str, String)],
    ) -> TestCluster {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut master_cfg = config(dir.path(), &format!("{prefix}-master"), "master", master_extra);
        let psk = node::derive_psk(&master_cfg).expect("psk");
        let master = node::start(&master_cfg, psk.clone()).await.expect("start master");
        let NodeHandle::Master { cluster_addr, listener, .. } = &master.handle else { panic!("not a master") };
        // Workers join with a join token, as in production (the default admission).
        let join = listener
            .send(wazuh_cluster_actors::master::IssueJoinToken { ttl: Duration::from_secs(3600), uses: 1000 })
            .await
            .expect("master")
            .expect("join token")
            .token
            .reveal();
        // Restarts reuse the ports, as a restarted process would.
        master_cfg.cluster.bind = *cluster_addr;
        master_cfg.enrollment.bind = master.enrollment_addr;
        let mut worker_cfgs = Vec::new();
        let mut workers = Vec::new();
        for i in 1..=n {
            let mut settings = vec![("cluster.master", cluster_addr.to_string()), ("cluster.join_token", join.clone())];
            settings.extend(extra.iter().cloned());
            let cfg = config(dir.path(), &format!("{prefix}-worker-{i}"), "worker", &settings);
            workers.push(Some(node::start(&cfg, psk.clone()).await.expect("start worker")));
            worker_cfgs.push(cfg);
        }
        let cluster = TestCluster { dir, master: Some(master), workers, master_cfg, worker_cfgs, psk, join };
        cluster.wait_for_workers(n, Duration::from_secs(10)).await;
        cluster.wait_for_users().await;
        cluster
    }

    /// Waits until every worker holds the master's API users (they travel with the agent table,
    /// after the connection): a sign-in on a worker right after the start would be refused before.
    pub async fn wait_for_users(&self) {
        let want: std::collections::BTreeSet<String> = self.master().handle.users().all().keys().cloned().collect();
        for i in 0..self.workers.len() {
            let Some(worker) = self.workers[i].as_ref() else { continue };
            let mut version = worker.handle.users().watch();
            let holds = |_: &u64| {
                let have: std::collections::BTreeSet<String> = worker.handle.users().all().keys().cloned().collect();
                want.is_subset(&have)
            };
            let what = format!("{} holds the master's API users {want:?}", self.worker_name(i));
            crate::common::wait_for(&what, Duration::from_secs(10), &mut version, holds).await;
        }
    }

    /// Settings for a worker speaking the protocol by hand (a hostile one, or a raw test client):
    /// this cluster's key and a join token, a fresh identity.
    pub fn hand_worker(&self, name: &str) -> wazuh_cluster_actors::ChannelSettings {
        let mut s = super::settings(name, wazuh_cluster_protocol::Role::Worker, 0);
        s.psk = self.psk.clone();
        s.join_token = Some(wazuh_cluster_protocol::identity::JoinToken::parse(&self.join).expect("join token"));
        s
    }

    /// Worker `i`'s identity, as its node loaded it from its data dir.
    pub fn worker_identity(&self, i: usize) -> std::sync::Arc<wazuh_cluster_protocol::identity::NodeIdentity> {
        let dir = &self.worker_cfgs[i].node.data_dir;
        std::sync::Arc::new(wazuh_cluster_actors::admission::load_or_create_identity(dir).expect("identity").0)
    }

    pub fn master_name(&self) -> String {
        self.master_cfg.node.name.clone()
    }

    pub fn worker_name(&self, i: usize) -> String {
        self.worker_cfgs[i].node.name.clone()
    }

    pub fn master(&self) -> &RunningNode {
        self.master.as_ref().expect("master is running")
    }

    pub fn worker(&self, i: usize) -> &RunningNode {
        self.workers[i].as_ref().expect("worker is running")
    }

    /// Names of the workers the master has connected now.
    pub async fn connected_workers(&self) -> Vec<String> {
        let Some(NodeHandle::Master { listener, .. }) = self.master.as_ref().map(|m| &m.handle) else {
            return Vec::new();
        };
        listener.send(ListWorkers).await.unwrap_or_default().into_iter().map(|w| w.peer.node_name).collect()
    }

    /// Whether worker `i` has a live connection to the master.
    pub async fn worker_connected(&self, i: usize) -> bool {
        match self.workers[i].as_ref().map(|w| &w.handle) {
            Some(NodeHandle::Worker { link, .. }) => matches!(link.send(GetLink).await, Ok(Some(_))),
            _ => false,
        }
    }

    /// How many times node `node`'s periodic job `job` has run, as node `on` reports it.
    pub async fn job_runs(&self, on: &RunningNode, node: &str, job: &str) -> u64 {
        let health = on.handle.healthcheck().await;
        let found = health.iter().find(|n| n.name == node).and_then(|n| n.actors.iter().find(|a| a.name == job));
        found.map_or(0, |a| a.runs)
    }

    /// Waits until worker `i` has run its `Integrity` check (every 300 ms here) `rounds` more times:
    /// how a test shows that something did not happen over a number of sync rounds, without a
    /// fixed sleep.
    pub async fn sync_rounds_pass(&self, i: usize, rounds: u64) {
        let (worker, name) = (self.worker(i), self.worker_name(i));
        let then = self.job_runs(worker, &name, "Integrity").await;
        let passed = || async { self.job_runs(worker, &name, "Integrity").await >= then + rounds };
        crate::common::wait_health(&format!("{rounds} more sync rounds on {name}"), Duration::from_secs(20), passed)
            .await;
    }

    /// Waits until the master lists exactly `n` workers; returns how long it took.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.connected_workers().await.len() == n {
                return start.elapsed();
            }
            assert!(start.elapsed() < timeout, "the master did not list {n} workers within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts one more worker named `name` (with the cluster's join token) and returns how long
    /// it took until the master listed it.
    pub async fn add_worker(&mut self, name: &str, timeout: Duration) -> Duration {
        let NodeHandle::Master { cluster_addr, .. } = &self.master().handle else { panic!("not a master") };
        let settings = [("cluster.master", cluster_addr.to_string()), ("cluster.join_token", self.join.clone())];
        let cfg = config(self.dir.path(), name, "worker", &settings);
        let before = self.connected_workers().await.len();
        let start = Instant::now();
        self.workers.push(Some(node::start(&cfg, self.psk.clone()).await.expect("start worker")));
        self.worker_cfgs.push(cfg);
        loop {
            if self.connected_workers().await.iter().any(|w| w == name) {
                return start.elapsed();
            }
            assert!(start.elapsed() < timeout, "worker {name} did not join within {timeout:?} ({before} before)");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Replaces the master by another node on its address with the same cluster key and settings
    /// but its own data directory (so another identity): a holder of the key posing as the master.
    pub async fn start_impostor_master(&mut self) {
        self.kill_master().await;
        let mut cfg = self.master_cfg.clone();
        cfg.node.data_dir = self.dir.path().join("impostor-master");
        // It lets anyone in: what an impostor wants.
        cfg.cluster.admission = "open".into();
        let start = Instant::now();
        loop {
            match node::start(&cfg, self.psk.clone()).await {
                Ok(m) => {
                    self.master = Some(m);
                    return;
                }
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("impostor master did not start: {e:#}"),
            }
        }
    }

    pub async fn kill_master(&mut self) {
        if let Some(m) = self.master.take() {
            m.kill().await;
        }
    }

    /// Restarts the master on its old port (retrying while the old socket is being released).
    pub async fn restart_master(&mut self) {
        let start = Instant::now();
        loop {
            match node::start(&self.master_cfg, self.psk.clone()).await {
                Ok(m) => {
                    self.master = Some(m);
                    return;
                }
                Err(e) if start.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("master did not restart: {e:#}"),
            }
        }
    }

    pub async fn kill_worker(&mut self, i: usize) {
        if let Some(w) = self.workers[i].take() {
            w.kill().await;
        }
    }

    pub async fn restart_worker(&mut self, i: usize) {
        let w = node::start(&self.worker_cfgs[i], self.psk.clone()).await.expect("restart worker");
        self.workers[i] = Some(w);
    }
}
