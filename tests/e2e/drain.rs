//! A worker drained on SIGTERM: 1,000 agent-sim agents, reconnecting as real Wazuh agents do (the
//! same server first, the next one after `--max-retries` failures), on worker 1 and sending events;
//! SIGTERM to worker 1 moves them all to worker 2, through a round-robin TCP proxy (as a balancer in
//! front of the workers), then with server lists in the agents; `wazuh-cluster drain worker-1` (the
//! master's API) then does the same as SIGTERM. Worker 1 exits 0 and
//! every event agent-sim counted as sent is in an archive.

use crate::common;

use common::process::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A round-robin TCP proxy, as nginx's stream module in front of the workers: each connection to
/// the next backend, and to the one after when that one refuses.
pub struct Proxy {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Proxy {
    pub fn start(backends: Vec<SocketAddr>) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        listener.set_nonblocking(true).expect("non-blocking");
        let backends = Arc::new(Mutex::new(backends));
        let shared = backends.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let mut next = 0usize;
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else { continue };
                    let order: Vec<SocketAddr> = {
                        let list = shared.lock().expect("backends");
                        (0..list.len()).map(|k| list[(next + k) % list.len()]).collect()
                    };
                    next = next.wrapping_add(1);
                    tokio::spawn(async move {
                        for backend in order {
                            let dial = tokio::net::TcpStream::connect(backend);
                            if let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_secs(1), dial).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                return;
                            }
                        }
                    });
                }
            });
        });
        Proxy { addr, backends }
    }

    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().expect("backends") = backends;
    }
}

/// agent-sim running the agents of `keys`, until its standard input closes.
pub struct Sim {
    child: Child,
}

impl Sim {
    pub fn start(keys: &std::path::Path, extra: &[&str]) -> Sim {
        let child = Command::new(agent_sim())
            .arg("--keys-in")
            .arg(keys)
            .args(["--events-per-s", "1", "--event-size", "200", "--keepalive", "2"])
            .args(["--control-stdin", "--duration", "600", "--json"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent-sim");
        Sim { child }
    }

    /// Stops the agents; the events they sent.
    pub fn stop(mut self) -> u64 {
        drop(self.child.stdin.take());
        let stdout = self.child.stdout.take().expect("stdout");
        let sent = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .find_map(|v| v["events_sent"].as_u64());
        let _ = self.child.wait();
        sent.expect("agent-sim's summary")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Enrolls `n` agents named `<prefix>-<i>` through `enroll` (authd's address) into `keys`.
pub fn enroll(enroll: &str, n: u64, prefix: &str, keys: &std::path::Path) {
    let out = Command::new(agent_sim())
        .args(["--enroll", enroll, "--agents", &n.to_string(), "--concurrency", "64", "--prefix", prefix])
        .args(["--json", "--keys-out"])
        .arg(keys)
        .output()
        .expect("agent-sim enrollment");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// SIGTERM to `node`.
fn send_sigterm(node: &Node) {
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
}

/// The master's count of active agents per node.
pub fn active_by_node(api: u16) -> std::collections::BTreeMap<String, u64> {
    let base = format!("http://127.0.0.1:{api}");
    let Ok((200, body)) = wazuh_multi_node::client::get(&base, "/agents/summary/status", Some(API_TOKEN)) else {
        return Default::default();
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let nodes = body["data"]["nodes"].as_object().cloned().unwrap_or_default();
    nodes.into_iter().map(|(n, s)| (n, s["active"].as_u64().unwrap_or(0))).collect()
}

/// Waits (at most `limit`) until `node` holds `n` active agents, or (with `away`) until nodes
/// other than it do: how long it took.
pub fn wait_active(api: u16, node: &str, away: bool, n: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let by_node = active_by_node(api);
        let count: u64 = by_node.iter().filter(|(name, _)| (name.as_str() == node) != away).map(|(_, c)| c).sum();
        if count >= n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{n} agents not active (away: {away}) on {node} within {limit:?}: {by_node:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Events in a node's archives (the current file and the rotated ones).
fn archived(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir.join("var/archives")) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("events"))
        .map(|e| std::fs::read_to_string(e.path()).map_or(0, |t| t.lines().count() as u64))
        .sum()
}

#[test]
fn sigterm_drains_a_workers_agents_to_the_others_through_a_proxy_and_with_server_lists() {
    let _ = wazuh_cluster_actors::budget::set_open_files(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, port, master_sets, master) = started_master(dir.path());
    let api = api_port(&master_sets);
    // The shipped drain (30 s at most, 200 agents a second).
    let shipped = |mut s: Vec<String>| {
        s.retain(|x| !x.starts_with("agents.drain_timeout"));
        s
    };
    let w1_sets = shipped(local(dir.path(), "w1", &key, port));
    let w2_sets = shipped(local(dir.path(), "w2", &key, port));
    let mut w1 = Node::start("worker-1.toml", &w1_sets);
    let w2 = Node::start("worker-2.toml", &w2_sets);
    wait_listed(api, &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);
    let keys = dir.path().join("agents.keys");
    enroll(&setting(&w1_sets, "enrollment.bind"), 1000, "sim", &keys);
    let agents_of = |sets: &[String]| -> SocketAddr { setting(sets, "agents.bind").parse().expect("agents.bind") };

    // Through the proxy: every agent on worker 1 first; then the proxy balances over both.
    let proxy = Proxy::start(vec![agents_of(&w1_sets)]);
    let sim = Sim::start(
        &keys,
        &["--agents", "1000", "--connect", &proxy.addr.to_string(), "--max-retries", "5", "--retry-interval", "10"],
    );
    wait_active(api, "worker-1", false, 1000, Duration::from_secs(60));
    proxy.set_backends(vec![agents_of(&w1_sets), agents_of(&w2_sets)]);
    std::thread::sleep(Duration::from_secs(2));
    let sigterm = Instant::now();
    send_sigterm(&w1);
    let moved = wait_active(api, "worker-1", true, 1000, Duration::from_secs(60));
    let status = w1.wait_exit(Duration::from_secs(45)).expect("worker 1 exits after its drain");
    let exited = sigterm.elapsed();
    assert!(status.success(), "worker 1 exited with {status}:\n{}", w1.log());
    eprintln!(
        "through the proxy: 1,000 agents active on other nodes {} ms after SIGTERM; worker 1 exited 0 after {} ms",
        moved.as_millis(),
        exited.as_millis()
    );
    let drained =
        w1.lines().into_iter().find(|l| l.contains("drained:") || l.contains("drain deadline")).unwrap_or_default();
    eprintln!("worker 1: {drained}");
    std::thread::sleep(Duration::from_secs(2));
    let sent_proxy = sim.stop();

    // With server lists (worker 1, then worker 2) and no balancer: as real agents, the same server
    // first, then the next after 3 failed attempts 2 s apart.
    let mut w1 = Node::start("worker-1.toml", &w1_sets);
    let list = format!("{},{}", agents_of(&w1_sets), agents_of(&w2_sets));
    let sim =
        Sim::start(&keys, &["--agents", "1000", "--connect", &list, "--max-retries", "3", "--retry-interval", "2"]);
    wait_active(api, "worker-1", false, 1000, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    send_sigterm(&w1);
    let moved = wait_active(api, "worker-1", true, 1000, Duration::from_secs(90));
    let status = w1.wait_exit(Duration::from_secs(45)).expect("worker 1 exits after its drain");
    assert!(status.success(), "worker 1 exited with {status}:\n{}", w1.log());
    eprintln!(
        "with server lists (3 attempts 2 s apart, 6 s on the agents' own schedule): 1,000 agents active on other nodes {} ms after SIGTERM",
        moved.as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    let sent_lists = sim.stop();

    // The drain asked of the master's API (`wazuh-cluster drain`), not by a signal, through the proxy.
    let mut w1 = Node::start("worker-1.toml", &w1_sets);
    proxy.set_backends(vec![agents_of(&w1_sets)]);
    let sim = Sim::start(
        &keys,
        &["--agents", "1000", "--connect", &proxy.addr.to_string(), "--max-retries", "5", "--retry-interval", "2"],
    );
    wait_active(api, "worker-1", false, 1000, Duration::from_secs(90));
    proxy.set_backends(vec![agents_of(&w1_sets), agents_of(&w2_sets)]);
    let asked = Command::new(BIN)
        .args(["drain", "worker-1", "--api", &format!("http://127.0.0.1:{api}")])
        .env("WMN_API_TOKEN", API_TOKEN)
        .output()
        .expect("wazuh-cluster drain");
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    let moved = wait_active(api, "worker-1", true, 1000, Duration::from_secs(60));
    let status = w1.wait_exit(Duration::from_secs(45)).expect("worker 1 exits after its drain");
    assert!(status.success(), "worker 1 exited with {status}:\n{}", w1.log());
    eprintln!(
        "drained through the master's API (the proxy): 1,000 agents active on other nodes {} ms after the call",
        moved.as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    let sent_api = sim.stop();

    // Every event agent-sim counted as sent is in an archive: worker 1's (stopped, flushed) or
    // worker 2's once it has written what it took.
    let sent = sent_proxy + sent_lists + sent_api;
    let archives = [dir.path().join("w1"), dir.path().join("w2")];
    let start = Instant::now();
    let mut got = 0;
    while start.elapsed() < Duration::from_secs(30) {
        got = archives.iter().map(|d| archived(d)).sum::<u64>();
        if got >= sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("events: {sent} sent ({sent_proxy} + {sent_lists} + {sent_api}), {got} archived");
    assert_eq!(got, sent, "every event sent is archived, once");
    assert!(w2.terminate().success());
    drop(master);
    let _ = std::io::stderr().flush();
}
