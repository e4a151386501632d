//! Shared helpers of the integration tests: a log capture that tests can wait on, channel settings
//! on loopback, and a master started on an ephemeral port.
#![allow(dead_code)]

use actix::Addr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wazuh_cluster_actors::jobs::worker::WorkerServices;
use wazuh_cluster_actors::master::MasterListener;
use wazuh_cluster_actors::registry::{Registry, Replica, StoreHandle};
use wazuh_cluster_actors::settings::{Budgets, JobIntervals};
use wazuh_cluster_actors::ChannelSettings;
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::{CipherSuite, Psk, Role};

pub mod cluster;
pub mod process;

/// Every log line of the test process, as `LEVEL [node] message`.
fn lines() -> &'static Mutex<Vec<String>> {
    static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LINES.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

struct NodeOf(Option<String>);

impl<'kvs> log::kv::VisitSource<'kvs> for NodeOf {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        if key.as_str() == "node" {
            self.0 = Some(value.to_string());
        }
        Ok(())
    }
}

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // As the node's own logger does: its lines are what `/manager/logs` shows.
        wazuh_multi_node::logging::remember(record, "");
        let mut node = NodeOf(None);
        let _ = record.key_values().visit(&mut node);
        let line = format!("{} [{}] {}", record.level(), node.0.unwrap_or_default(), record.args());
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{line}");
        }
        if let Ok(mut l) = lines().lock() {
            l.push(line);
        }
    }

    fn flush(&self) {}
}

pub fn init_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = log::set_boxed_logger(Box::new(Capture));
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// Log lines of `node` containing every one of `needles`.
pub fn find_logs(node: &str, needles: &[&str]) -> Vec<String> {
    let tag = format!("[{node}]");
    lines()
        .lock()
        .map(|l| {
            l.iter().filter(|line| line.contains(&tag) && needles.iter().all(|n| line.contains(n))).cloned().collect()
        })
        .unwrap_or_default()
}

/// Waits until `node` logged a line containing all `needles`; returns it. For asserting what the
/// log says where a clear line is the behaviour under test (a refusal, an error named for the
/// operator); to wait for a state, use [`wait_for`] or [`wait_until`].
pub async fn wait_for_log(node: &str, needles: &[&str], timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(line) = find_logs(node, needles).into_iter().next() {
            return line;
        }
        if start.elapsed() > timeout {
            let all = lines().lock().map(|l| l.join("\n")).unwrap_or_default();
            panic!("{node} did not log {needles:?} within {timeout:?}; log so far:\n{all}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the state published on `rx` satisfies `predicate`; returns that state. On timeout
/// the panic shows the last state seen. The one helper for waiting on published state (a node's
/// hub figures, a Raft member's metrics, a store's position).
pub async fn wait_for<T: Clone + std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    rx: &mut tokio::sync::watch::Receiver<T>,
    mut predicate: impl FnMut(&T) -> bool,
) -> T {
    let outcome = match tokio::time::timeout(timeout, rx.wait_for(|v| predicate(v))).await {
        Ok(Ok(state)) => Ok(state.clone()),
        Ok(Err(_)) => Err("the publisher stopped"),
        Err(_) => Err("timed out"),
    };
    outcome.unwrap_or_else(|why| {
        panic!("{why} after up to {timeout:?} waiting until {what}; last state {:?}", *rx.borrow())
    })
}

/// Waits until `holds` (which reads health reports) is true, evaluating it again at each change of
/// a job's health in this process (`supervise::health_changes`), not on a timer.
pub async fn wait_health<F, Fut>(what: &str, timeout: Duration, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut changes = wazuh_cluster_actors::supervise::health_changes();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        changes.borrow_and_update();
        if holds().await {
            return;
        }
        if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
    }
}

/// Polls `probe` until it gives a value; returns it. On timeout the panic shows `what` and the
/// last thing the probe said (its `Err`).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting until {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Polls `predicate` until it holds.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut predicate: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !predicate().await {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Settings for a node of cluster "test" keyed by `psk_byte`, with short timers.
pub fn settings(name: &str, role: Role, psk_byte: u8) -> ChannelSettings {
    ChannelSettings {
        node_name: name.into(),
        role,
        // Its own directory: a worker pins its master's identity there.
        data_dir: scratch_dir(),
        cluster_name: "test".into(),
        psk: Psk::from_bytes([psk_byte; 32]),
        suite: CipherSuite::ChaCha20Poly1305,
        max_frame: 1 << 20,
        handshake_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        keepalive_interval: Duration::from_millis(200),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        jobs: JobIntervals {
            agent_info: Duration::from_millis(100),
            integrity: Duration::from_millis(300),
            local_integrity: Duration::from_millis(300),
            local_agent_groups: Duration::from_millis(300),
            restart_min: Duration::from_millis(20),
            restart_max: Duration::from_millis(200),
        },
        versions: VersionRange::ours(),
        budgets: Budgets::for_frame(1 << 20),
        admin: None,
        identity: std::sync::Arc::new(wazuh_cluster_protocol::identity::NodeIdentity::generate().expect("identity").0),
        join_token: None,
        admission: wazuh_cluster_actors::admission::AdmissionMode::Open,
        max_handshakes: 256,
        enrollment: Default::default(),
        api_calls: Default::default(),
        agent_relays: Default::default(),
        rebalance: Default::default(),
    }
}

/// A directory that outlives the test (the OS cleans the temp dir).
pub fn scratch_dir() -> std::path::PathBuf {
    tempfile::tempdir().expect("tempdir").keep()
}

/// Starts a master on 127.0.0.1:0, with a fresh registry.
pub async fn start_master(settings: ChannelSettings) -> (Addr<MasterListener>, SocketAddr) {
    init_logs();
    let registry = Registry::open(&scratch_dir()).expect("registry");
    let registry = StoreHandle::spawn("test-registry", registry, |s| s.seq()).expect("registry thread");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admission =
        wazuh_cluster_actors::admission::Admission::open(&scratch_dir(), settings.admission).expect("node records");
    let writes = wazuh_cluster_actors::consensus::writes::Writes::local(registry);
    let master = MasterListener::start(listener, Arc::new(settings), writes, admission, Default::default())
        .expect("start master");
    (master, addr)
}

/// A worker's services with a fresh replica.
pub fn worker_services() -> WorkerServices {
    let replica = Replica::open(&scratch_dir()).expect("replica");
    WorkerServices {
        replica: StoreHandle::spawn("test-replica", replica, |s| s.seq()).expect("replica thread"),
        agents: None,
        ruleset: None,
        tree: Arc::new(tokio::sync::watch::Sender::new(String::new())),
        files_only: false,
    }
}

/// A stand-in for analysisd's control socket (`queue/sockets/analysis`: a 4-byte little-endian
/// length, then JSON, each way) at `path`: each request goes to `on_request`, whose bytes are the
/// answer. Runs until the test's runtime ends.
pub async fn control_stand_in(
    path: std::path::PathBuf,
    mut on_request: impl FnMut(serde_json::Value) -> Vec<u8> + 'static,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind control");
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            continue;
        }
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        if s.read_exact(&mut body).await.is_err() {
            continue;
        }
        let answer = on_request(serde_json::from_slice(&body).unwrap_or_default());
        let _ = s.write_all(&(answer.len() as u32).to_le_bytes()).await;
        let _ = s.write_all(&answer).await;
    }
}
