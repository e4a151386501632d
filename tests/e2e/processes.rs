//! End to end: the real `wazuh-cluster` binary, started as separate processes with the example
//! configs from `deploy/`, talking over loopback.

use crate::common;

use common::process::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A master from `deploy/master.toml`, listening, then a worker from `deploy/worker-1.toml` started
/// (not yet joined): the cluster key's path, the master's cluster port, the two nodes.
fn master_then_worker(dir: &Path) -> (std::path::PathBuf, u16, Node, Node) {
    let key = write_key(dir, "cluster.key");
    let port = free_port();
    let master = Node::start("master.toml", &local(dir, "master", &key, port));
    master.wait_for(&["master listening for workers on 127.0.0.1"]);
    let worker = Node::start("worker-1.toml", &local(dir, "worker", &key, port));
    (key, port, master, worker)
}

#[test]
fn master_and_worker_processes_complete_the_handshake_and_name_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, port, master, worker) = master_then_worker(dir.path());

    let w = worker.wait_for(&["[worker-1]", "handshake complete with master master-1"]);
    let m = master.wait_for(&["[master-1]", "handshake complete with worker worker-1"]);
    assert!(w.contains(&format!("127.0.0.1:{port}")), "{w}");
    assert!(
        m.contains(&format!("protocol {}", wazuh_cluster_protocol::version::CURRENT))
            && m.contains("chacha20-poly1305"),
        "{m}"
    );
    assert!(
        !master.log().contains(&std::fs::read_to_string(&key).expect("key").trim().to_string()),
        "key leaked into the log"
    );

    // Graceful stop: the worker says goodbye, the master notices and both exit 0.
    assert!(worker.terminate().success());
    master.wait_for(&["connection with worker worker-1", "closed"]);
    assert!(master.terminate().success());
}

/// Each thread of process `pid`: its name and its nice value (Linux: `/proc/<pid>/task/*/stat`).
fn thread_nices(pid: u32) -> Vec<(u32, String, i32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads").flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        // After the name: state (field 3) ... nice (field 19).
        let nice = stat[close + 1..].split_whitespace().nth(16).and_then(|n| n.parse().ok());
        let tid = task.file_name().to_string_lossy().parse().ok();
        if let (Some(tid), Some(nice)) = (tid, nice) {
            threads.push((tid, stat[open + 1..close].to_string(), nice));
        }
    }
    threads
}

#[test]
fn a_workers_event_loop_yields_the_cpu_and_its_other_threads_and_the_master_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, master, worker) = master_then_worker(dir.path());
    worker.wait_for(&["handshake complete with master master-1"]);
    // The nodes start at the value this test process started with (its main thread keeps it).
    let me = std::process::id();
    let base = thread_nices(me).into_iter().find(|(tid, ..)| *tid == me).expect("this process's main thread").2;
    // The worker's event loop is its main thread (thread id = process id).
    let pid = worker.child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let threads = loop {
        let threads = thread_nices(pid);
        if threads.iter().any(|(tid, _, nice)| *tid == pid && *nice == (base + 5).min(19)) || Instant::now() > deadline
        {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let event_loop = threads.iter().find(|(tid, ..)| *tid == pid).expect("the main thread");
    assert_eq!(event_loop.2, (base + 5).min(19), "node.event_loop_nice defaults to 5 on a worker: {threads:?}");
    let replica = threads.iter().find(|(_, name, _)| name.contains("-repl")).expect("the replica's thread");
    assert_eq!(replica.2, base, "the registry's thread keeps the process's value: {threads:?}");
    let api = threads.iter().find(|(_, name, _)| name.starts_with("actix-server")).expect("the API's thread");
    assert_eq!(api.2, base, "the API's thread keeps the process's value: {threads:?}");
    let on_master = thread_nices(master.child.id());
    assert!(on_master.iter().all(|(_, _, nice)| *nice == base), "a master yields nothing: {on_master:?}");
    assert!(worker.terminate().success());
    assert!(master.terminate().success());
}

#[test]
fn a_worker_with_another_key_is_refused_and_neither_process_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let other = write_key(dir.path(), "other.key");
    let port = free_port();
    let mut master = Node::start("master.toml", &local(dir.path(), "master", &key, port));
    master.wait_for(&["master listening"]);
    let mut worker = Node::start("worker-2.toml", &local(dir.path(), "worker", &other, port));

    let m = master.wait_for(&["handshake with 127.0.0.1:", "failed", "does not hold this cluster's key"]);
    assert!(m.contains("WARN"), "{m}");
    worker.wait_for(&["[worker-2]", "refused this worker", "does not accept our cluster key"]);
    // The worker keeps retrying with back-off and both stay up; the master writes the same
    // refusal once per 10 s at most, however often the worker retries.
    worker.wait_for_count(&["refused this worker"], 3);
    let said = master.lines().iter().filter(|l| l.contains("does not hold this cluster's key")).count();
    let retried = worker.lines().iter().filter(|l| l.contains("refused this worker")).count();
    assert!(said >= 1 && said < retried, "the master logged {said} lines for {retried} refusals");
    master.assert_running();
    worker.assert_running();
    assert!(!master.log().contains("handshake complete"));
    assert!(worker.terminate().success());
    assert!(master.terminate().success());
}

/// A panic in an actor the node cannot run without (the test build's hook makes one) ends the
/// process with a non-zero status and one ERROR line that says which actor and why; an actor that
/// can go on (a worker's connection) does not stop it.
#[test]
fn a_vital_actor_panic_exits_non_zero_with_one_clear_line() {
    for (config, actor, what) in [
        ("master.toml", "MasterListener", "the master's listener (MasterListener) panicked"),
        ("master.toml", "AgentHub", "the agent hub (AgentHub) panicked"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write_key(dir.path(), "cluster.key");
        let mut cmd = run_command(Command::new(BIN), config, &local(dir.path(), "master", &key, free_port()));
        cmd.env("WAZUH_CLUSTER_TEST_PANIC", actor).env("WAZUH_CLUSTER_TEST_PANIC_AFTER_MS", "300");
        let mut node = Node::spawn(config, cmd);
        let status = node.wait_exit(Duration::from_secs(30)).expect("the node exits");
        assert_eq!(status.code(), Some(1), "{actor}: {}", node.log());
        let errors: Vec<String> = node.lines().into_iter().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{actor}: {errors:#?}");
        assert!(errors[0].contains(what) && errors[0].contains("the node cannot go on without it"), "{}", errors[0]);
    }
    // A worker whose link panics exits the same way; one whose connection panics dials again.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let port = free_port();
    let master = Node::start("master.toml", &local(dir.path(), "master", &key, port));
    master.wait_for(&["master listening"]);
    let mut cmd = run_command(Command::new(BIN), "worker-1.toml", &local(dir.path(), "w1", &key, port));
    cmd.env("WAZUH_CLUSTER_TEST_PANIC", "Connection").env("WAZUH_CLUSTER_TEST_PANIC_AFTER_MS", "1500");
    let mut w1 = Node::spawn("worker-1", cmd);
    w1.wait_for(&["ERROR", "connection with master master-1", "panicked"]);
    w1.wait_for_count(&["handshake complete with master master-1"], 2);
    w1.assert_running();
    let mut cmd = run_command(Command::new(BIN), "worker-2.toml", &local(dir.path(), "w2", &key, port));
    cmd.env("WAZUH_CLUSTER_TEST_PANIC", "WorkerLink").env("WAZUH_CLUSTER_TEST_PANIC_AFTER_MS", "1500");
    let mut w2 = Node::spawn("worker-2", cmd);
    let status = w2.wait_exit(Duration::from_secs(30)).expect("worker-2 exits");
    assert_eq!(status.code(), Some(1), "{}", w2.log());
    assert!(w2.log().contains("the worker's link to its master (WorkerLink) panicked"), "{}", w2.log());
    assert!(w1.terminate().success());
    assert!(master.terminate().success());
}

#[test]
fn json_logs_name_the_node_on_every_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let port = free_port();
    let mut sets = local(dir.path(), "master", &key, port);
    sets.push("log.format=json".into());
    let master = Node::start("master.toml", &sets);
    let line = master.wait_for(&["master listening"]);
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["node"], "master-1");
    assert_eq!(v["level"], "info");
    assert!(v["msg"].as_str().is_some_and(|m| m.contains("listening")));
    assert!(master.terminate().success());
}

#[test]
fn three_processes_survive_kill_9_of_the_master_and_of_a_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let port = free_port();
    let master_sets = local(dir.path(), "master", &key, port);
    let api = api_port(&master_sets);
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let w1 = Node::start("worker-1.toml", &local(dir.path(), "w1", &key, port));
    let w2 = Node::start("worker-2.toml", &local(dir.path(), "w2", &key, port));
    let all = ["master-1", "worker-1", "worker-2"];
    let first = wait_listed(api, &all, &[&master, &w1, &w2]);
    eprintln!("nodes --json lists both workers {} ms after they started", first.as_millis());

    // kill -9 the master, start it again on the same ports: both workers come back by themselves.
    master.kill_9();
    w1.wait_for(&["connection with master master-1", "closed"]);
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let listening = Instant::now();
    wait_listed(api, &all, &[&master, &w1, &w2]);
    eprintln!("both workers back {} ms after the restarted master listened", listening.elapsed().as_millis());

    // kill -9 a worker: the master drops it (its socket closes; a silent one goes after 3 intervals).
    let killed = Instant::now();
    w2.kill_9();
    wait_listed(api, &["master-1", "worker-1"], &[&master, &w1]);
    eprintln!("killed worker dropped after {} ms (keep-alive interval 500 ms)", killed.elapsed().as_millis());
    master.wait_for(&["connection with worker worker-2", "closed"]);

    // SIGTERM: each exits 0 within 5 s.
    assert!(w1.terminate().success());
    assert!(master.terminate().success());
}

/// A node configured as in a container: no config file, only `WMN_*` variables (from
/// `wazuh-cluster secrets` and per node), in `dir/<name>`; (node, API port).
fn env_node(dir: &Path, secrets: &[(String, String)], name: &str, vars: &[(&str, String)]) -> (Node, u16) {
    let api = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("run").env_remove("WMN_CONFIG").envs(secrets.iter().map(|(k, v)| (k, v)));
    let data = dir.join(name).display().to_string();
    let own = [
        ("WMN_NODE__NAME", name.to_string()),
        ("WMN_NODE__DATA_DIR", data),
        ("WMN_API__BIND", format!("127.0.0.1:{api}")),
        ("WMN_API__TLS", "false".into()),
        ("WMN_ENROLLMENT__BIND", format!("127.0.0.1:{}", free_port())),
        ("WMN_AGENTS__BIND", format!("127.0.0.1:{}", free_port())),
    ];
    cmd.envs(own.iter().chain(vars).map(|(k, v)| (k.to_string(), v.clone())));
    (Node::spawn(name, cmd), api)
}

#[test]
fn nodes_run_from_environment_variables_alone_and_workers_join_with_the_masters_standing_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN).arg("secrets").output().expect("secrets");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let secrets: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let names: Vec<&str> = secrets.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["WMN_CLUSTER__KEY", "WMN_CLUSTER__JOIN_TOKEN", "WMN_API__SECRET", "WMN_API__TOKEN"]);
    let token = &secrets[3].1;
    let port = free_port();
    let master_vars = [("WMN_NODE__ROLE", "master".to_string()), ("WMN_CLUSTER__BIND", format!("127.0.0.1:{port}"))];
    let (master, api) = env_node(dir.path(), &secrets, "m", &master_vars);
    master.wait_for(&["master listening for workers"]);
    let worker_vars = [("WMN_NODE__ROLE", "worker".to_string()), ("WMN_CLUSTER__MASTER", format!("127.0.0.1:{port}"))];
    let (w1, _) = env_node(dir.path(), &secrets, "w1", &worker_vars);
    let (w2, _) = env_node(dir.path(), &secrets, "w2", &worker_vars);
    // The same env file's API token is the administrator's on the master.
    let listed = || {
        let mut names = listed_nodes_with(api, token);
        names.sort();
        names
    };
    let start = Instant::now();
    while listed() != ["m", "w1", "w2"] {
        assert!(start.elapsed() < WAIT, "listed {:?}\n{}\n{}\n{}", listed(), master.log(), w1.log(), w2.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    w1.wait_for(&["handshake complete with master m"]);
    // A worker with another join token (and the right cluster key) stays out, and says why.
    let mut forged = secrets.clone();
    forged[1].1 = String::from_utf8(Command::new(BIN).arg("secrets").output().expect("secrets").stdout)
        .expect("utf-8")
        .lines()
        .find_map(|l| l.strip_prefix("WMN_CLUSTER__JOIN_TOKEN=").map(String::from))
        .expect("a token");
    let (w3, _) = env_node(dir.path(), &forged, "w3", &worker_vars);
    w3.wait_for(&["refused this worker", "join token"]);
    assert_eq!(listed(), ["m", "w1", "w2"]);
    for node in [w3, w2, w1, master] {
        assert!(node.terminate().success());
    }
}

/// A master and two workers as processes from `deploy/`, in `dir`: (master's settings, worker-1's
/// settings, the three nodes), once every worker is listed.
fn master_and_two_workers(dir: &Path) -> (Vec<String>, Vec<String>, Node, Node, Node) {
    let key = write_key(dir, "cluster.key");
    let port = free_port();
    let master_sets = local(dir, "master", &key, port);
    let w1_sets = local(dir, "w1", &key, port);
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let w1 = Node::start("worker-1.toml", &w1_sets);
    let w2 = Node::start("worker-2.toml", &local(dir, "w2", &key, port));
    wait_listed(api_port(&master_sets), &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);
    (master_sets, w1_sets, master, w1, w2)
}

/// The lines of a file, sorted (none if it cannot be read).
fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn agent_sim_enrolls_through_a_worker_and_every_node_holds_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master_sets, w1_sets, master, w1, w2) = master_and_two_workers(dir.path());

    let received = dir.path().join("received.keys");
    let out = Command::new(agent_sim())
        .args(["--enroll", &setting(&w1_sets, "enrollment.bind"), "--agents", "1000", "--concurrency", "32", "--json"])
        .arg("--keys-out")
        .arg(&received)
        .output()
        .expect("agent-sim");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agent-sim --json");
    eprintln!("agent-sim through worker-1: {summary}");
    assert_eq!(summary["enrolled"], 1000, "{summary}");
    assert_eq!(summary["errors"], 0);
    let mut given: Vec<String> = std::fs::read_to_string(&received).expect("keys").lines().map(String::from).collect();
    given.sort();

    // The master's API lists every agent with the id and key it was given.
    let api = format!("http://127.0.0.1:{}", api_port(&master_sets));
    let out = Command::new(BIN)
        .args(["agents", "--json", "--keys", "--api", &api])
        .env("WMN_API_TOKEN", API_TOKEN)
        .output()
        .expect("agents");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agents --json");
    let mut listed: Vec<String> = body["data"]["affected_items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {}",
                a["id"].as_str().unwrap_or(""),
                a["name"].as_str().unwrap_or(""),
                a["registerIP"].as_str().unwrap_or(""),
                a["key"].as_str().unwrap_or("")
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, given);

    // Both workers' client.keys hold exactly the same keys.
    let keys_of = |node: &str| sorted_lines(&dir.path().join(node).join("etc/client.keys"));
    let start = Instant::now();
    while keys_of("w1") != given || keys_of("w2") != given {
        assert!(start.elapsed() < WAIT, "worker replicas did not converge");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("replicas equal to the master {} ms after agent-sim returned", start.elapsed().as_millis());
    assert_eq!(keys_of("master"), given);

    // Delete one agent with the CLI (token from the environment): gone from every node.
    let victim = given[0].clone();
    let id = victim.split(' ').next().expect("id").to_string();
    let out = Command::new(BIN)
        .args(["agents", "delete", &id, "--api", &api])
        .env("WMN_API_TOKEN", API_TOKEN)
        .output()
        .expect("agents delete");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    while ["master", "w1", "w2"].iter().any(|n| keys_of(n).contains(&victim)) {
        assert!(start.elapsed() < WAIT, "the deleted agent is still on a node");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("deleted agent gone from every node {} ms after the CLI returned", start.elapsed().as_millis());
    drop((w1, w2, master));
}

/// The agents the master's API lists, as `id name ip key` lines.
fn master_agents(api: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["agents", "--json", "--keys", "--api", api])
        .env("WMN_API_TOKEN", API_TOKEN)
        .output()
        .expect("agents");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut v: Vec<String> = body["data"]["affected_items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    let f = |k: &str| a[k].as_str().unwrap_or("").to_string();
                    format!("{} {} {} {}", f("id"), f("name"), f("ip"), f("key"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn killing_the_master_during_an_enrollment_storm_leaves_no_agent_without_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let port = free_port();
    let master_sets = local(dir.path(), "master", &key, port);
    let w1_sets = local(dir.path(), "w1", &key, port);
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let w1 = Node::start("worker-1.toml", &w1_sets);
    wait_listed(api_port(&master_sets), &["master-1", "worker-1"], &[&master, &w1]);

    let received = dir.path().join("received.keys");
    let sim = Command::new(agent_sim())
        .args(["--enroll", &setting(&w1_sets, "enrollment.bind"), "--agents", "1500", "--concurrency", "32", "--json"])
        .arg("--keys-out")
        .arg(&received)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent-sim");
    // Mid-storm: kill -9 the master, then bring it back.
    w1.wait_for_count(&["enrolled from"], 200);
    master.kill_9();
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let out = sim.wait_with_output().expect("agent-sim");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agent-sim --json");
    eprintln!("storm through worker-1 with a master crash: {summary}");
    let mut given: Vec<String> = std::fs::read_to_string(&received).expect("keys").lines().map(String::from).collect();
    given.sort();
    let ids: std::collections::BTreeSet<&str> = given.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(ids.len(), given.len(), "an id was given twice");
    assert!(given.len() >= 200);

    // Once the worker has told the master the fate of every enrollment, the master holds exactly
    // the agents that received their key.
    let api = format!("http://127.0.0.1:{}", api_port(&master_sets));
    let start = Instant::now();
    loop {
        let listed = master_agents(&api);
        if listed == given {
            break;
        }
        if start.elapsed() > WAIT {
            let extra: Vec<_> = listed.iter().filter(|l| !given.contains(l)).take(5).collect();
            let missing: Vec<_> = given.iter().filter(|l| !listed.contains(l)).take(5).collect();
            panic!(
                "master has {} agents, agents received {}; extra {extra:?}, missing {missing:?}",
                listed.len(),
                given.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("master consistent with what the agents received {} ms after the storm", start.elapsed().as_millis());
    drop((w1, master));
}

/// MD5 of every file under the sync roots, by relative path.
fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let (m, _) = wazuh_cluster_actors::manifest::scan(dir, None);
    m.files.into_iter().map(|(k, v)| (k, v.md5)).collect()
}

fn wait_trees_equal(master: &Path, workers: &[&Path], what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let want = tree(master);
        if workers.iter().all(|w| tree(w) == want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "{what}: the workers' trees differ from the master's");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn three_processes_keep_rules_byte_identical_on_every_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, port, master_sets, master) = started_master(dir.path());
    let mut w1_sets = local(dir.path(), "w1", &key, port);
    w1_sets.push("cluster.intervals.integrity=1s".into());
    let mut w2_sets = local(dir.path(), "w2", &key, port);
    w2_sets.push("cluster.intervals.integrity=1s".into());
    let w1 = Node::start("worker-1.toml", &w1_sets);
    let w2 = Node::start("worker-2.toml", &w2_sets);
    wait_listed(api_port(&master_sets), &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);
    let (m, a, b) = (dir.path().join("master"), dir.path().join("w1"), dir.path().join("w2"));

    // 1,000 files under the master's etc/rules.
    let t = Instant::now();
    for i in 0..1000 {
        let p = m.join(format!("etc/rules/batch{}/rule_{i}.xml", i % 20));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, format!("<group name=\"r{i}\"><rule id=\"{}\"/></group>\n", 100_000 + i)).expect("write");
    }
    wait_trees_equal(&m, &[&a, &b], "1,000 new files");
    eprintln!("1,000 files byte-identical on both workers {} ms after the first was written", t.elapsed().as_millis());

    // One edited file.
    let t = Instant::now();
    std::fs::write(m.join("etc/rules/batch7/rule_7.xml"), b"<group name=\"edited\"/>\n").expect("edit");
    wait_trees_equal(&m, &[&a, &b], "one edit");
    eprintln!("one edited file on both workers in {} ms", t.elapsed().as_millis());

    // A deleted file disappears; a file added on a worker is removed.
    std::fs::remove_file(m.join("etc/rules/batch3/rule_3.xml")).expect("rm");
    wait_trees_equal(&m, &[&a, &b], "a deletion");
    assert!(!a.join("etc/rules/batch3/rule_3.xml").exists());
    std::fs::write(a.join("etc/rules/intruder.xml"), b"<rule/>").expect("intruder");
    let t = Instant::now();
    while a.join("etc/rules/intruder.xml").exists() {
        assert!(t.elapsed() < WAIT, "the file added on worker-1 was never removed");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("a file added on worker-1 was removed after {} ms (integrity interval 1 s)", t.elapsed().as_millis());
    w1.wait_for(&["file sync with master master-1", "1 extra"]);
    drop((w1, w2, master));
}

/// One agent as the master's API shows it.
struct MasterAgent {
    id: String,
    status: String,
    node: String,
    os: String,
    config_status: String,
    merged_sum: String,
}

/// The master's agents, or none if its API does not answer.
fn master_agent_states(api: &str) -> Vec<MasterAgent> {
    let Ok((200, body)) = wazuh_multi_node::client::get(api, "/agents?limit=100000", Some(common::process::API_TOKEN))
    else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let s = |a: &serde_json::Value, k: &str| a[k].as_str().unwrap_or("").to_string();
    v["data"]["affected_items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| MasterAgent {
                    id: s(a, "id"),
                    status: s(a, "status"),
                    node: s(a, "node_name"),
                    os: a["os"]["name"].as_str().unwrap_or("").to_string(),
                    config_status: s(a, "group_config_status"),
                    merged_sum: s(a, "mergedSum"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_processes_keep_1000_agents_active_across_the_loss_of_a_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let port = free_port();
    let master_sets = local(dir.path(), "master", &key, port);
    let (w1_sets, w2_sets) = (local(dir.path(), "w1", &key, port), local(dir.path(), "w2", &key, port));
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let w1 = Node::start("worker-1.toml", &w1_sets);
    let w2 = Node::start("worker-2.toml", &w2_sets);
    wait_listed(api_port(&master_sets), &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);
    let api = format!("http://127.0.0.1:{}", api_port(&master_sets));

    // 1,000 agents enroll through worker-1 and then report to both workers.
    let connect = format!("{},{}", setting(&w1_sets, "agents.bind"), setting(&w2_sets, "agents.bind"));
    let started = Instant::now();
    let mut sim = Command::new(agent_sim())
        .args(["--enroll", &setting(&w1_sets, "enrollment.bind"), "--agents", "1000", "--json"])
        .args(["--connect", &connect, "--keepalive", "2", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent-sim");
    let limit = Duration::from_secs(60);
    let all_active = loop {
        let states = master_agent_states(&api);
        let active: Vec<_> = states.iter().filter(|a| a.status == "active" && a.os == "Debian GNU/Linux").collect();
        if active.len() == 1000 {
            let on = |n: &str| active.iter().filter(|a| a.node == n).count();
            assert_eq!((on("worker-1"), on("worker-2")), (500, 500), "agents are spread over both workers");
            break started.elapsed();
        }
        assert!(started.elapsed() < limit, "only {} of 1000 agents active on the master", active.len());
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "1000 agents active on the master {} ms after agent-sim started (enrollment included)",
        all_active.as_millis()
    );
    // Every agent got its group's merged.mg and said so in a keep-alive.
    let start = Instant::now();
    while master_agent_states(&api).iter().filter(|a| a.config_status == "synced").count() < 1000 {
        assert!(start.elapsed() < limit, "merged.mg not synced on every agent");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A group file changed on the master: every agent gets the new merged.mg (agent-sim checks its
    // MD5) and reports its sum in the next keep-alive (every 2 s).
    let sums = |api: &str| -> Vec<String> { master_agent_states(api).into_iter().map(|a| a.merged_sum).collect() };
    let old = sums(&api)[0].clone();
    let conf = dir.path().join("master/etc/shared/default/agent.conf");
    let changed = Instant::now();
    std::fs::write(&conf, "<agent_config>\n  <labels><label key=\"e2e\">1</label></labels>\n</agent_config>\n")
        .expect("write agent.conf");
    loop {
        let now = sums(&api);
        if now.len() == 1000 && now.iter().all(|s| *s != old && *s == now[0]) {
            break;
        }
        assert!(changed.elapsed() < limit, "not every agent reported the new merged.mg");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "agent.conf changed on the master: all 1000 agents report the new merged.mg {} ms later (keep-alive every 2 s)",
        changed.elapsed().as_millis()
    );

    // One agent deleted on the master: it is gone and never comes back, though it keeps trying.
    let victim = master_agent_states(&api).into_iter().find(|a| a.node == "worker-2").expect("an agent on worker-2").id;
    let out = Command::new(BIN)
        .args(["agents", "delete", &victim, "--api", &api])
        .env("WMN_API_TOKEN", API_TOKEN)
        .output()
        .expect("agents delete");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w2.wait_for(&["deleted or re-keyed", &victim]);

    // kill -9 worker-1: its agents move to worker-2 and are active again on the master.
    let killed = Instant::now();
    w1.kill_9();
    let moved = loop {
        let states = master_agent_states(&api);
        assert!(states.iter().all(|a| a.id != victim), "the deleted agent came back");
        let on_w2 = states.iter().filter(|a| a.status == "active" && a.node == "worker-2").count();
        if on_w2 == 999 {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < limit, "{on_w2} of 999 agents active on worker-2");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("worker-1 killed: its 500 agents active again through worker-2 {} ms later", moved.as_millis());
    let _ = sim.kill();
    let _ = sim.wait();
    drop((w2, master));
}

/// The master loses its registry (its database deleted, the process restarted): no worker loses an
/// agent and the master's log says why it sends them nothing; `wazuh-cluster recover` rebuilds the
/// registry from a worker's replica, and the restarted master has every agent, key and group back.
#[test]
fn a_master_that_lost_its_registry_is_recovered_from_a_worker_and_no_worker_loses_an_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master_sets, w1_sets, master, w1, w2) = master_and_two_workers(dir.path());
    let api = api_port(&master_sets);
    let base = format!("http://127.0.0.1:{api}");
    let (status, body) = wazuh_multi_node::client::request(
        &base,
        "POST",
        "/groups",
        Some(API_TOKEN),
        Some(&serde_json::json!({ "group_id": "linux" }).to_string()),
    )
    .expect("create a group");
    assert_eq!(status, 200, "{body}");
    let out = Command::new(agent_sim())
        .args(["--enroll", &setting(&w1_sets, "enrollment.bind"), "--agents", "200", "--concurrency", "16"])
        .args(["--groups", "linux", "--json"])
        .output()
        .expect("agent-sim");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agent-sim --json");
    assert_eq!(summary["enrolled"], 200, "{summary}");
    let read = |node: &str, file: &str| sorted_lines(&dir.path().join(node).join(file));
    let start = Instant::now();
    let before = loop {
        let m = read("master", "etc/client.keys");
        if m.len() == 200 && read("w1", "etc/client.keys") == m && read("w2", "etc/client.keys") == m {
            break m;
        }
        assert!(start.elapsed() < WAIT, "replicas did not converge");
        std::thread::sleep(Duration::from_millis(20));
    };
    let groups_before = master_groups(&base);

    // The disk of the master is lost: its database goes, it starts again with an empty registry.
    master.kill_9();
    for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join("master/var/db").join(f));
    }
    let master = Node::start("master.toml", &master_sets);
    master.wait_for_count(&["not sending the agent table to worker", "another agent registry"], 2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read("w1", "etc/client.keys"), before, "worker-1 lost agents");
    assert_eq!(read("w2", "etc/client.keys"), before, "worker-2 lost agents");

    // Recovery from worker-1's replica, the master stopped.
    assert!(master.terminate().success());
    let mut recover = Command::new(BIN);
    recover.arg("recover").arg("--config").arg(deploy("master.toml"));
    for s in &master_sets {
        recover.arg("--set").arg(s);
    }
    let out = recover.arg("--from-replica").arg(dir.path().join("w1/var/db/replica.db")).output().expect("recover");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("recovered 200 agents, 2 groups and 0 API users"), "{said}");
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    wait_listed(api, &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);
    assert_eq!(read("master", "etc/client.keys"), before, "the master's agents and keys after recovery");
    assert_eq!(master_groups(&base), groups_before);
    assert!(
        master.lines().iter().all(|l| !l.contains("not sending the agent table")),
        "the recovered master still refuses a worker:\n{}",
        master.log()
    );
}

/// The master's groups with their agent counts.
fn master_groups(base: &str) -> Vec<(String, u64)> {
    let (status, body) =
        wazuh_multi_node::client::get(base, "/groups", Some(common::process::API_TOKEN)).expect("groups");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    body["data"]["affected_items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|g| (g["name"].as_str().unwrap_or("").to_string(), g["count"].as_u64().unwrap_or(0)))
        .collect()
}

/// agent-sim's events reach a stand-in for analysisd's queue beside a worker process: each one byte
/// for byte as remoted writes it (`1:[<id>] (<name>) any-><location>:<log>`), and exactly as many as
/// agent-sim sent.
#[test]
fn agent_sim_events_reach_analysisd_byte_for_byte_through_a_worker_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, port, master_sets, master) = started_master(dir.path());
    let queue_path = dir.path().join("analysisd-queue.sock");
    let queue = std::os::unix::net::UnixDatagram::bind(&queue_path).expect("bind the stand-in");
    let mut w_sets = local(dir.path(), "w1", &key, port);
    w_sets.push(format!("analysis.queue={}", queue_path.display()));
    let w1 = Node::start("worker-1.toml", &w_sets);
    wait_listed(api_port(&master_sets), &["master-1", "worker-1"], &[&master, &w1]);
    w1.wait_for(&["events go to analysisd's queue"]);
    let reader = std::thread::spawn(move || {
        queue.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let mut buf = vec![0u8; 70_000];
        let mut got = Vec::new();
        while let Ok(n) = queue.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    });
    let keys = dir.path().join("sim.keys");
    let out = Command::new(agent_sim())
        .args(["--enroll", &setting(&w_sets, "enrollment.bind"), "--connect", &setting(&w_sets, "agents.bind")])
        .args([
            "--agents",
            "20",
            "--events-per-s",
            "5",
            "--event-size",
            "256",
            "--duration",
            "3",
            "--json",
            "--keys-out",
        ])
        .arg(&keys)
        .output()
        .expect("agent-sim");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent: u64 = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["events_sent"].as_u64())
        .unwrap_or_else(|| panic!("no events_sent in {stdout}"));
    let got = reader.join().expect("reader");
    assert!(sent > 0);
    assert_eq!(got.len() as u64, sent, "every event sent reached analysisd's queue, once");
    let names: std::collections::HashMap<String, String> = std::fs::read_to_string(&keys)
        .expect("keys")
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect();
    for d in &got {
        let text = String::from_utf8(d.clone()).expect("UTF-8");
        let (id, rest) = text.strip_prefix("1:[").and_then(|t| t.split_once("] (")).unwrap_or_else(|| panic!("{text}"));
        let name = &names[id];
        let head = format!("1:[{id}] ({name}) any->");
        let log = text.strip_prefix(&head).unwrap_or_else(|| panic!("{text} does not start with {head} ({rest})"));
        // agent-sim's 256-byte event, `1:` taken off: the location and the line, as sent.
        assert_eq!(log.len(), 254, "{text}");
        assert!(log.starts_with(&format!("/var/log/auth.log:Nov 30 12:00:00 {name} ")), "{text}");
    }
    drop((w1, master));
}
