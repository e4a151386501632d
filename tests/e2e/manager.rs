//! Inside a Wazuh install (`[manager]`): the sockets Wazuh's other daemons use, with stand-ins that
//! speak each one's wire format as Wazuh's sources define it. A master (with wazuh-db's stand-in,
//! `wdb-standin`) and two workers; worker 1 reads analysisd's active-response queue and serves
//! remoted's request socket; agent-sim agents on both workers write down every command they get.
//!
//! - An active response written to worker 1's queue in analysisd's format reaches the agent that
//!   raised it on worker 1, a defined agent on worker 2 (through the master), and every agent (`A`).
//! - A request on worker 1's request socket is answered by the agent, on worker 1 or on worker 2;
//!   an agent that is not connected gets remoted's `err Cannot send request`, one that does not
//!   exist a closed connection.
//! - wazuh-db's stand-in receives authd's and remoted's queries (wdb_global_helpers.c) for
//!   enrollment, keep-alives, a shutdown and a deletion, and a resync after it restarts.

use crate::common;

use crate::drain::{active_by_node, enroll, wait_active};
use common::process::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// agent-sim running the agents of `keys` against `connect`, writing their commands to `out`.
struct Agents(Child);

impl Agents {
    fn start(keys: &Path, n: usize, connect: &str, out: &Path) -> Agents {
        let child = Command::new(agent_sim())
            .arg("--keys-in")
            .arg(keys)
            .args(["--agents", &n.to_string(), "--connect", connect, "--events-per-s", "0", "--keepalive", "1"])
            .args(["--control-stdin", "--duration", "600", "--json", "--commands-out"])
            .arg(out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent-sim");
        Agents(child)
    }

    /// Stops the agents as agents stop (each says `#!-agent shutdown`).
    fn stop(mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The wazuh-db stand-in, recording its queries in `log`.
struct Wdb {
    child: Child,
    log: PathBuf,
}

impl Wdb {
    fn start(socket: &Path, log: &Path) -> Wdb {
        let child = Command::new(wdb_standin())
            .arg("--socket")
            .arg(socket)
            .arg("--log")
            .arg(log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wdb-standin");
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < WAIT, "the stand-in does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Wdb { child, log: log.to_path_buf() }
    }

    fn queries(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(String::from).collect()
    }
}

impl Drop for Wdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids in a keys file (`id name ip key` lines).
fn ids(keys: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(keys).expect("keys");
    text.lines().filter_map(|l| l.split(' ').next()).map(String::from).collect()
}

/// Waits until `check` holds (at most `limit`), saying what was waited for and, if it does not,
/// the nodes' logs.
fn wait_until(what: &str, limit: Duration, nodes: &[&Node], mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() >= limit {
            let logs: Vec<String> = nodes.iter().map(|n| format!("--- {}:\n{}", n.name, n.log())).collect();
            panic!("not within {limit:?}: {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines of an agent-sim commands file.
fn commands(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

/// One request on remoted's request socket: the answer, or `None` when the connection closed
/// without one.
fn ask(socket: &Path, request: &str) -> Option<String> {
    let mut s = UnixStream::connect(socket).expect("the request socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut frame = (request.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(request.as_bytes());
    s.write_all(&frame).expect("write");
    let mut header = [0u8; 4];
    s.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut body).ok()?;
    Some(String::from_utf8(body).expect("text"))
}

#[test]
fn wazuhs_daemons_reach_agents_anywhere_and_wazuh_db_follows_the_cluster() {
    let _ = wazuh_cluster_actors::budget::set_open_files(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let port = free_port();
    let wdb_socket = dir.path().join("master/queue/db/wdb");
    let wdb = Wdb::start(&wdb_socket, &dir.path().join("wdb.log"));
    let mut master_sets = local(dir.path(), "master", &key, port);
    master_sets.extend(["manager.wazuh_db=true".to_string(), "manager.wazuh_db_interval=1s".to_string()]);
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let api = api_port(&master_sets);
    let mut w1_sets = local(dir.path(), "w1", &key, port);
    w1_sets.extend(["manager.active_response=true".to_string(), "manager.requests=true".to_string()]);
    let w2_sets = local(dir.path(), "w2", &key, port);
    let w1 = Node::start("worker-1.toml", &w1_sets);
    let w2 = Node::start("worker-2.toml", &w2_sets);
    wait_listed(api, &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);

    // Two agents on worker 1, one on worker 2, one that never connects.
    let (keys1, keys2, keys3) = (dir.path().join("a1.keys"), dir.path().join("a2.keys"), dir.path().join("a3.keys"));
    enroll(&setting(&w1_sets, "enrollment.bind"), 2, "one", &keys1);
    enroll(&setting(&w2_sets, "enrollment.bind"), 1, "two", &keys2);
    enroll(&setting(&w2_sets, "enrollment.bind"), 1, "idle", &keys3);
    let (on_w1, on_w2, idle) = (ids(&keys1), ids(&keys2)[0].clone(), ids(&keys3)[0].clone());
    let (out1, out2) = (dir.path().join("commands-1.txt"), dir.path().join("commands-2.txt"));
    let agents1 = Agents::start(&keys1, 2, &setting(&w1_sets, "agents.bind"), &out1);
    let agents2 = Agents::start(&keys2, 1, &setting(&w2_sets, "agents.bind"), &out2);
    wait_active(api, "worker-1", false, 2, Duration::from_secs(30));
    wait_active(api, "worker-2", false, 1, Duration::from_secs(30));

    // Active responses, in analysisd's format, into worker 1's queue (Wazuh's path under data_dir).
    let queue = dir.path().join("w1/queue/alerts/ar");
    let analysisd = UnixDatagram::unbound().expect("datagram socket");
    let drop_json = |n: u32| {
        format!(
            r#"{{"version":1,"origin":{{"name":"worker-1","module":"wazuh-analysisd"}},"command":"firewall-drop0","parameters":{{"extra_args":[],"alert":{{"n":{n}}}}}}}"#
        )
    };
    analysisd.send_to(format!("(local_source) [] NRN {} {}", on_w1[0], drop_json(1)).as_bytes(), &queue).expect("send");
    let here = format!("#!-execd {}", drop_json(1));
    wait_until("the agent that raised the event gets the active response", WAIT, &[&master, &w1, &w2], || {
        commands(&out1).iter().any(|l| l.ends_with(&here))
    });
    analysisd.send_to(format!("(local_source) [] NNS {on_w2} {}", drop_json(2)).as_bytes(), &queue).expect("send");
    let there = format!("#!-execd {}", drop_json(2));
    wait_until(
        "an agent on worker 2 gets worker 1's active response through the master",
        WAIT,
        &[&master, &w1, &w2],
        || commands(&out2).iter().any(|l| l.ends_with(&there)),
    );
    analysisd.send_to(format!("(msg_to_agent) [] ANN (null) {}", drop_json(3)).as_bytes(), &queue).expect("send");
    let all = format!("#!-execd {}", drop_json(3));
    wait_until("every agent gets an active response for all agents", WAIT, &[&master, &w1, &w2], || {
        commands(&out1).iter().filter(|l| l.ends_with(&all)).count() == 2
            && commands(&out2).iter().filter(|l| l.ends_with(&all)).count() == 1
    });
    // Nothing else reached the agents: each message once, where it belongs.
    assert_eq!(commands(&out1).iter().filter(|l| l.ends_with(&here)).count(), 1);
    assert!(!commands(&out2).iter().any(|l| l.ends_with(&here)));
    assert!(!commands(&out1).iter().any(|l| l.ends_with(&there)));
    // Garbage and an oversized datagram in the queue are refused and counted; the node goes on.
    analysisd.send_to(b"\xff\xfe not analysisd's format", &queue).expect("send");
    let oversized = format!("(local_source) [] NRN {} {}", on_w1[0], "x".repeat(70_000));
    analysisd.send_to(oversized.as_bytes(), &queue).expect("send");

    // Requests on worker 1's request socket (remoted's), for agents on both workers.
    let requests = dir.path().join("w1/queue/sockets/remote");
    let answer = ask(&requests, &format!("{} logcollector getconfig localfile", on_w1[1])).expect("an answer");
    assert!(answer.starts_with("ok ") && answer.contains("logcollector getconfig localfile"), "{answer}");
    let answer = ask(&requests, &format!("{on_w2} agent getconfig internal")).expect("an answer");
    assert!(answer.starts_with("ok ") && answer.contains("\"sim\":\"two-"), "{answer}");
    assert_eq!(ask(&requests, &format!("{idle} agent getconfig internal")).as_deref(), Some("err Cannot send request"));
    assert_eq!(ask(&requests, "999 agent getconfig internal"), None, "no such agent: closed without an answer");
    // A request with no agent id, and a frame over 64 KiB: closed without an answer.
    assert_eq!(ask(&requests, "getconfig"), None);
    let mut s = UnixStream::connect(&requests).expect("the request socket");
    s.write_all(&(1u32 << 30).to_le_bytes()).expect("write");
    assert_eq!(s.read(&mut [0u8; 16]).ok(), Some(0), "an oversized frame closes the connection");

    // The counters, in worker 1's /metrics and /health.
    let base = format!("http://127.0.0.1:{}", api_port(&w1_sets));
    let (_, metrics) = wazuh_multi_node::client::get(&base, "/metrics", Some(API_TOKEN)).expect("metrics");
    for figure in [
        r#"integration="active_response",figure="sent"} 5"#,
        r#"integration="active_response",figure="refused"} 2"#,
        r#"integration="active_response",figure="queue_bound"} 1024"#,
        r#"integration="requests",figure="answered"} 2"#,
        r#"integration="requests",figure="failed"} 3"#,
        r#"integration="requests",figure="refused"} 1"#,
    ] {
        assert!(metrics.contains(figure), "{figure} in worker 1's metrics:\n{metrics}");
    }
    let (_, health) = wazuh_multi_node::client::get(&base, "/health", None).expect("health");
    let health: serde_json::Value = serde_json::from_str(&health).expect("json");
    assert_eq!(health["manager"]["active_response"]["dropped"], 0, "{health}");

    // wazuh-db: authd's inserts, remoted's keep-alive updates, the groups, for every agent.
    let every: Vec<String> = on_w1.iter().cloned().chain([on_w2.clone(), idle.clone()]).collect();
    let number = |id: &str| id.trim_start_matches('0').to_string();
    wait_until("wazuh-db has every agent inserted and its updates", WAIT, &[&master, &w1, &w2], || {
        let q = wdb.queries();
        every.iter().all(|id| {
            q.iter().any(|l| l.starts_with("global insert-agent ") && l.contains(&format!("\"id\":{},", number(id))))
        }) && [&on_w1[0], &on_w1[1], &on_w2].iter().all(|id| {
            q.iter().any(|l| {
                l.starts_with("global update-agent-data ")
                    && l.contains(&format!("\"id\":{},", number(id)))
                    && l.contains("\"connection_status\":\"active\"")
            })
        })
    });
    let q = wdb.queries();
    assert!(q.iter().any(|l| l.starts_with("global get-all-agents last_id 0")), "the resync at connection");
    assert!(q.iter().any(|l| l.starts_with("global set-agent-groups {\"mode\":\"override\"")), "{q:?}");
    assert!(!q.iter().any(|l| l.contains(&format!("\"id\":{},\"connection_status\"", number(&idle)))));

    wait_until("unchanged keep-alives are written as remoted writes them", WAIT, &[&master, &w1, &w2], || {
        wdb.queries()
            .iter()
            .any(|l| l.starts_with("global update-keepalive ") && l.contains("\"connection_status\":\"active\""))
    });
    // A shutdown: remoted's update-connection-status to disconnected.
    agents2.stop();
    wait_until("wazuh-db hears worker 2's agent disconnect", Duration::from_secs(60), &[&master, &w1, &w2], || {
        wdb.queries().iter().any(|l| {
            l.starts_with("global update-connection-status ")
                && l.contains(&format!("\"id\":{},", number(&on_w2)))
                && l.contains("\"connection_status\":\"disconnected\"")
        })
    });
    // A deletion: delete-agent.
    let path = format!("/agents?agents_list={idle}&status=all&older_than=0s");
    let (status, body) =
        wazuh_multi_node::client::request(&format!("http://127.0.0.1:{api}"), "DELETE", &path, Some(API_TOKEN), None)
            .expect("delete");
    assert_eq!(status, 200, "{body}");
    wait_until("wazuh-db hears the deletion", WAIT, &[&master, &w1, &w2], || {
        wdb.queries().iter().any(|l| l == &format!("global delete-agent {}", number(&idle)))
    });

    // wazuh-db restarts: the node reconnects, reads what it has, writes the rest; no agent session
    // is lost meanwhile, and the passes it misses (one a second here) cost one log line a minute.
    drop(wdb);
    wait_until("the master misses passes while wazuh-db is away", WAIT, &[&master, &w1, &w2], || {
        let base = format!("http://127.0.0.1:{api}");
        let health = wazuh_multi_node::client::get(&base, "/health", None).map(|(_, b)| b).unwrap_or_default();
        let health: serde_json::Value = serde_json::from_str(&health).unwrap_or_default();
        health["manager"]["wazuh_db"]["missed_passes"].as_u64() >= Some(3)
    });
    let said = master.lines().iter().filter(|l| l.contains("wazuh-db at") && l.contains("WARN")).count();
    assert!(said <= 2, "{said} lines for 3 missed passes:\n{}", master.log());
    let wdb = Wdb::start(&wdb_socket, &dir.path().join("wdb-2.log"));
    wait_until("the restarted wazuh-db gets every agent again", Duration::from_secs(30), &[&master, &w1, &w2], || {
        let q = wdb.queries();
        q.iter().any(|l| l.starts_with("global get-all-agents"))
            && q.iter().filter(|l| l.starts_with("global insert-agent ")).count() == 3
    });
    assert_eq!(active_by_node(api).get("worker-1").copied(), Some(2), "worker 1's agents stayed connected");
    let master_base = format!("http://127.0.0.1:{api}");
    let (_, health) = wazuh_multi_node::client::get(&master_base, "/health", None).expect("health");
    let health: serde_json::Value = serde_json::from_str(&health).expect("json");
    assert!(health["manager"]["wazuh_db"]["connections"].as_u64() >= Some(2), "{health}");
    agents1.stop();
    for node in [&master, &w1, &w2] {
        let warned: Vec<String> =
            node.lines().into_iter().filter(|l| l.contains("ERROR") || l.contains("panicked")).collect();
        assert!(warned.is_empty(), "{}: {warned:?}", node.name);
    }
}
