//! Master high availability, as processes: three master-eligible nodes on loopback (a Raft group
//! over the cluster channel) take enrollments through whichever leads, and survive `kill -9` of it.

use crate::common;

use common::process::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_agent-sim");

/// Enrolls `n` agents named `prefix-<i>` through `enroll` with agent-sim: how many got a key, and
/// the keys they got written to `keys`.
fn enroll(enroll: &str, n: usize, prefix: &str, keys: &Path) -> u64 {
    let out = Command::new(SIM)
        .args(["--enroll", enroll, "--agents", &n.to_string(), "--prefix", prefix, "--timeout", "5", "--json"])
        .arg("--keys-out")
        .arg(keys)
        .output()
        .expect("agent-sim");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    summary["enrolled"].as_u64().unwrap_or(0)
}

/// `id -> (name, key)` from a client.keys-shaped file (`id name ip key`; lines of removed agents,
/// marked with `#` in place as Wazuh does, are skipped).
fn keys_of(path: &Path) -> BTreeMap<String, (String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[0].to_string(), (f[1].to_string(), f[3].to_string())))
        })
        .collect()
}

/// The index of the node that takes an enrollment (the leader), trying each in turn.
fn leader(sets: &[Vec<String>], alive: &[usize], dir: &Path, within: Duration) -> usize {
    let start = Instant::now();
    for round in 0.. {
        for &i in alive {
            let probe = dir.join(format!("probe-{round}-{i}.keys"));
            if enroll(&setting(&sets[i], "enrollment.bind"), 1, &format!("probe-{round}-{i}"), &probe) == 1 {
                return i;
            }
        }
        assert!(start.elapsed() < within, "no node took an enrollment within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

fn wait_same_keys(dirs: &[&Path], at_least: usize) -> BTreeMap<String, (String, String)> {
    let start = Instant::now();
    loop {
        let tables: Vec<_> = dirs.iter().map(|d| keys_of(&d.join("etc/client.keys"))).collect();
        if tables[0].len() >= at_least && tables.windows(2).all(|w| w[0] == w[1]) {
            return tables[0].clone();
        }
        assert!(start.elapsed() < WAIT, "client.keys differ: {:?}", tables.iter().map(|t| t.len()).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_master_processes_elect_a_leader_replicate_enrollments_and_survive_kill_9_of_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let masters = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let sets: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let mut s = local(dir.path(), &format!("m{i}"), &key, ports[i]);
            s.push(format!("node.name=m{i}"));
            s.push(format!("cluster.masters={masters}"));
            s
        })
        .collect();
    let mut nodes: Vec<Option<Node>> = sets.iter().map(|s| Some(Node::start("master.toml", s))).collect();
    for n in nodes.iter().flatten() {
        n.wait_for(&["master-eligible node", "acts as the master"]);
    }
    let data = |i: usize| dir.path().join(format!("m{i}"));

    let first = leader(&sets, &[0, 1, 2], dir.path(), Duration::from_secs(15));
    // `wazuh-cluster nodes` on every member names the same leader (the one taking enrollments),
    // with one term, and exactly one member says it leads.
    let views: Vec<String> = (0..3)
        .map(|i| {
            let out = Command::new(BIN)
                .args(["nodes", "--api", &format!("http://127.0.0.1:{}", api_port(&sets[i]))])
                .env("WMN_API_TOKEN", API_TOKEN)
                .output()
                .expect("nodes");
            String::from_utf8_lossy(&out.stdout).to_string()
        })
        .collect();
    let leader_line =
        |v: &str| v.lines().find(|l| l.starts_with("masters: term")).map(String::from).unwrap_or_default();
    let heads: Vec<String> =
        views.iter().map(|v| leader_line(v).split(", this node").next().unwrap_or("").to_string()).collect();
    assert!(heads.iter().all(|h| *h == heads[0] && h.contains("leader")), "{views:?}");
    assert!(heads[0].contains(&format!("({})", setting(&sets[first], "cluster.bind"))), "{heads:?} vs m{first}");
    assert_eq!(views.iter().filter(|v| leader_line(v).ends_with("is Leader")).count(), 1, "{views:?}");
    eprintln!("`wazuh-cluster nodes` on the leader:\n{}", views[first]);
    let got = dir.path().join("first.keys");
    assert_eq!(enroll(&setting(&sets[first], "enrollment.bind"), 40, "web", &got), 40);
    let table = wait_same_keys(&[&data(0), &data(1), &data(2)], 41);
    for (id, (name, key)) in keys_of(&got) {
        assert_eq!(table.get(&id), Some(&(name, key)), "agent {id} holds its key on every member");
    }

    // kill -9 of the leader: another member takes enrollments within seconds.
    nodes[first].take().expect("leader").kill_9();
    let lost = Instant::now();
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = leader(&sets, &rest, dir.path(), Duration::from_secs(15));
    eprintln!("m{second} took enrollments {} ms after kill -9 of leader m{first}", lost.elapsed().as_millis());
    let more = dir.path().join("second.keys");
    assert_eq!(enroll(&setting(&sets[second], "enrollment.bind"), 20, "db", &more), 20);
    let table = wait_same_keys(&[&data(rest[0]), &data(rest[1])], 62);
    let received: Vec<_> = keys_of(&got).into_iter().chain(keys_of(&more)).collect();
    for (id, (name, key)) in &received {
        assert_eq!(table.get(id), Some(&(name.clone(), key.clone())), "agent {id} kept its key across the failover");
    }
    let names: BTreeSet<&String> = table.values().map(|(n, _)| n).collect();
    assert_eq!(names.len(), table.len(), "no name twice");
    for n in nodes.into_iter().flatten() {
        assert!(n.terminate().success());
    }
}

#[test]
fn workers_follow_the_leader_through_kill_9_during_an_enrollment_storm_and_no_acknowledged_key_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let list: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let masters = list.join(",");
    let master_sets: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let mut s = local(dir.path(), &format!("m{i}"), &key, ports[i]);
            s.extend([format!("node.name=m{i}"), format!("cluster.masters={masters}")]);
            s
        })
        .collect();
    let mut nodes: Vec<Option<Node>> = master_sets.iter().map(|s| Some(Node::start("master.toml", s))).collect();
    let worker_sets: Vec<Vec<String>> = (0..2)
        .map(|i| {
            // The worker's cluster.master is dropped in favour of the list.
            let mut s = local(dir.path(), &format!("w{i}"), &key, ports[0]);
            s.retain(|x| !x.starts_with("cluster.master="));
            s.extend([format!("node.name=w{i}"), format!("cluster.masters={masters}"), "cluster.master=".into()]);
            s
        })
        .collect();
    let workers: Vec<Node> = worker_sets.iter().map(|s| Node::start("worker-1.toml", s)).collect();
    let leader_of = |w: &Node| -> usize {
        let line = w.wait_for(&["handshake complete with master m"]);
        let at = line.find("with master m").expect("name") + "with master m".len();
        line[at..at + 1].parse().expect("a master index")
    };
    let first = leader_of(&workers[0]);
    assert_eq!(leader_of(&workers[1]), first, "both workers connect to the leader");

    // An enrollment storm through worker 0; the leader is killed in the middle of it.
    let got = dir.path().join("storm.keys");
    let storm = Command::new(SIM)
        .args(["--enroll", &setting(&worker_sets[0], "enrollment.bind"), "--agents", "400", "--concurrency", "8"])
        .args(["--prefix", "storm", "--timeout", "10", "--json", "--keys-out"])
        .arg(&got)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("agent-sim");
    std::thread::sleep(Duration::from_millis(700));
    nodes[first].take().expect("leader").kill_9();
    let killed = Instant::now();
    let out = storm.wait_with_output().expect("agent-sim ends");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agent-sim --json");
    let enrolled = summary["enrolled"].as_u64().expect("enrolled");
    eprintln!("storm: {enrolled} of 400 acknowledged, {} errors", summary["errors"]);
    // Both workers are with the new leader.
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    for w in &workers {
        let start = Instant::now();
        while !w
            .lines()
            .iter()
            .any(|l| rest.iter().any(|r| l.contains(&format!("handshake complete with master m{r}"))))
        {
            assert!(start.elapsed() < WAIT, "{} did not follow the new leader:\n{}", w.name, w.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("workers followed the new leader within {} ms of kill -9", killed.elapsed().as_millis());
    // Enrollment resumes through the worker.
    let after = dir.path().join("after.keys");
    assert_eq!(enroll(&setting(&worker_sets[0], "enrollment.bind"), 20, "after", &after), 20);

    // Every acknowledged key, and nothing else, on every surviving node.
    let received: BTreeMap<String, (String, String)> = keys_of(&got).into_iter().chain(keys_of(&after)).collect();
    assert_eq!(received.len() as u64, enrolled + 20, "agent-sim wrote what it acknowledged");
    let dirs: Vec<std::path::PathBuf> = rest
        .iter()
        .map(|i| dir.path().join(format!("m{i}")))
        .chain((0..2).map(|i| dir.path().join(format!("w{i}"))))
        .collect();
    let start = Instant::now();
    loop {
        let tables: Vec<_> = dirs.iter().map(|d| keys_of(&d.join("etc/client.keys"))).collect();
        if tables.iter().all(|t| *t == received) {
            break;
        }
        let extra: Vec<_> = tables.iter().map(|t| t.keys().filter(|k| !received.contains_key(*k)).count()).collect();
        let missing: Vec<_> = tables.iter().map(|t| received.keys().filter(|k| !t.contains_key(*k)).count()).collect();
        if start.elapsed() > Duration::from_secs(30) {
            let names: Vec<String> =
                tables[0].iter().filter(|(k, _)| !received.contains_key(*k)).map(|(_, (n, _))| n.clone()).collect();
            let log: Vec<String> = workers
                .iter()
                .chain(nodes.iter().flatten())
                .flat_map(|n| n.lines())
                .filter(|l| {
                    names.iter().any(|n| l.contains(n.as_str()))
                        || l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("handshake complete")
                })
                .collect();
            panic!(
                "tables differ from what agents received: extra {extra:?} {names:?}, missing {missing:?}\n{}",
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let names: BTreeSet<&String> = received.values().map(|(n, _)| n).collect();
    assert_eq!(names.len(), received.len(), "no id or name twice");
    for n in workers.into_iter().chain(nodes.into_iter().flatten()) {
        assert!(n.terminate().success());
    }
}
