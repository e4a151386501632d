//! Master high availability, as processes: three master-eligible nodes on loopback (a Raft group
//! over the cluster channel) take enrollments through whichever leads, and survive `kill -9` of it.

use crate::checker::{keys_of, Agents, History};
use crate::common;

use common::process::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sim() -> Command {
    Command::new(agent_sim())
}

/// `wazuh-cluster nodes` against node `i`'s API: its view of the masters.
fn view(sets: &[Vec<String>], i: usize) -> String {
    let out = Command::new(BIN)
        .args(["nodes", "--api", &format!("http://127.0.0.1:{}", api_port(&sets[i]))])
        .env("WMN_API_TOKEN", API_TOKEN)
        .output()
        .expect("nodes");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether a `wazuh-cluster nodes` view is that of a leader taking changes.
pub fn leads(view: &str) -> bool {
    view.lines().any(|l| l.starts_with("masters:") && l.ends_with("is Leader")) && !view.contains("accepts no change")
}

/// The index of the leader among `alive` (the one that says it leads and takes an enrollment).
fn leader(sets: &[Vec<String>], alive: &[usize], history: &History, dir: &Path, within: Duration) -> usize {
    let start = Instant::now();
    for round in 0.. {
        for &i in alive {
            if leads(&view(sets, i))
                && history.enroll(
                    sim(),
                    &setting(&sets[i], "enrollment.bind"),
                    1,
                    1,
                    &format!("probe-{round}-{i}"),
                    dir,
                ) == 1
            {
                return i;
            }
        }
        assert!(start.elapsed() < within, "no node led and took an enrollment within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

/// Waits until every data dir in `dirs` holds `content` at `path`: how long it took.
fn wait_files(dirs: &[PathBuf], path: &str, content: &[u8]) -> Duration {
    let start = Instant::now();
    while !dirs.iter().all(|d| std::fs::read(d.join(path)).is_ok_and(|c| c == content)) {
        assert!(start.elapsed() < WAIT, "{path} did not reach {dirs:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Waits until every node in `dirs` holds the same agents and the checker finds nothing wrong
/// with them; panics with what it found otherwise.
fn wait_checked(dirs: &[PathBuf], history: &History, logs: &[&Node]) -> Agents {
    let start = Instant::now();
    loop {
        let tables: Vec<Agents> = dirs.iter().map(|d| keys_of(&d.join("etc/client.keys"))).collect();
        let bad: Vec<Vec<String>> = tables.iter().map(|t| history.violations(t)).collect();
        if tables.windows(2).all(|w| w[0] == w[1]) && bad.iter().all(|b| b.is_empty()) {
            return tables[0].clone();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let log: Vec<String> = logs
                .iter()
                .flat_map(|n| n.lines())
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("handshake complete"))
                .collect();
            panic!("the registries differ from what clients saw acknowledged: {bad:#?}\n{}", log.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The settings of three master-eligible nodes m0..m2 on loopback, sharing `key`: each one's, and
/// the `cluster.masters` list.
fn three_masters(dir: &Path, key: &Path) -> (Vec<Vec<String>>, String) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let masters = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let sets = (0..3)
        .map(|i| {
            let mut s = local(dir, &format!("m{i}"), key, ports[i]);
            s.extend([format!("node.name=m{i}"), format!("cluster.masters={masters}")]);
            s
        })
        .collect();
    (sets, masters)
}

#[test]
fn three_master_processes_elect_a_leader_replicate_enrollments_and_survive_kill_9_of_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let (sets, _) = three_masters(dir.path(), &key);
    let mut nodes: Vec<Option<Node>> = sets.iter().map(|s| Some(Node::start("master.toml", s))).collect();
    for n in nodes.iter().flatten() {
        n.wait_for(&["master-eligible node", "acts as the master"]);
    }
    let data = |i: usize| dir.path().join(format!("m{i}"));

    let history = History::default();
    let first = leader(&sets, &[0, 1, 2], &history, dir.path(), Duration::from_secs(15));
    // `wazuh-cluster nodes` on every member names the same leader (the one taking enrollments),
    // with one term, and exactly one member says it leads.
    let views: Vec<String> = (0..3).map(|i| view(&sets, i)).collect();
    let leader_line =
        |v: &str| v.lines().find(|l| l.starts_with("masters: term")).map(String::from).unwrap_or_default();
    let heads: Vec<String> =
        views.iter().map(|v| leader_line(v).split(", this node").next().unwrap_or("").to_string()).collect();
    assert!(heads.iter().all(|h| *h == heads[0] && h.contains("leader")), "{views:?}");
    assert!(heads[0].contains(&format!("({})", setting(&sets[first], "cluster.bind"))), "{heads:?} vs m{first}");
    assert_eq!(views.iter().filter(|v| leader_line(v).ends_with("is Leader")).count(), 1, "{views:?}");
    eprintln!("`wazuh-cluster nodes` on the leader:\n{}", views[first]);
    let enroll_on = |i: usize, n: usize, prefix: &str| {
        history.enroll(sim(), &setting(&sets[i], "enrollment.bind"), n, 8, prefix, dir.path())
    };
    assert_eq!(enroll_on(first, 40, "web"), 40);
    let api_of = |i: usize| format!("http://127.0.0.1:{}", api_port(&sets[i]));
    for id in ["002", "003"] {
        assert!(history.delete(Command::new(BIN), &api_of(first), id), "deleting {id}");
    }
    // The leader's files are the truth: a rule file written on it reaches both followers.
    let rule = "etc/rules/ha_rules.xml";
    std::fs::create_dir_all(data(first).join("etc/rules")).expect("etc/rules");
    std::fs::write(data(first).join(rule), b"<group name=\"ha\"/>\n").expect("write a rule file");
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let took = wait_files(&others.iter().map(|&i| data(i)).collect::<Vec<_>>(), rule, b"<group name=\"ha\"/>\n");
    eprintln!("a rule file written on leader m{first} was on both followers {} ms later", took.as_millis());
    // A follower's own 1515 takes enrollments too: it forwards them to the leader, as a worker.
    assert_eq!(enroll_on(others[0], 10, "via-follower"), 10);
    let all: Vec<PathBuf> = (0..3).map(data).collect();
    let logs: Vec<&Node> = nodes.iter().flatten().collect();
    assert_eq!(wait_checked(&all, &history, &logs).len(), 41 + 10 - 2);
    drop(logs);

    // kill -9 of the leader: another member takes enrollments within seconds.
    nodes[first].take().expect("leader").kill_9();
    let lost = Instant::now();
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = leader(&sets, &rest, &history, dir.path(), Duration::from_secs(15));
    eprintln!("m{second} took enrollments {} ms after kill -9 of leader m{first}", lost.elapsed().as_millis());
    assert_eq!(enroll_on(second, 20, "db"), 20);
    let web = keys_of(&dir.path().join("web.keys"));
    let last_web = web.keys().last().expect("web agents").clone();
    assert!(history.delete(Command::new(BIN), &api_of(second), &last_web), "deleting {last_web} after the failover");
    let survivors: Vec<PathBuf> = rest.iter().map(|&i| data(i)).collect();
    let logs: Vec<&Node> = nodes.iter().flatten().collect();
    let table = wait_checked(&survivors, &history, &logs);
    let (enrolled, deleted) = history.counts();
    assert_eq!(table.len(), enrolled - deleted);
    // The new leader kept the files; the remaining follower now follows its files.
    let after = b"<group name=\"after-failover\"/>\n";
    std::fs::write(data(second).join(rule), after).expect("edit the rule file on the new leader");
    let other = rest.iter().copied().find(|&i| i != second).expect("a follower");
    wait_files(&[data(other)], rule, after);
    // ... and forwards enrollments to the new leader.
    assert_eq!(enroll_on(other, 5, "via-new-follower"), 5);
    wait_checked(&survivors, &history, &nodes.iter().flatten().collect::<Vec<_>>());
    let names: BTreeSet<&String> = table.values().map(|(n, _)| n).collect();
    assert_eq!(names.len(), table.len(), "no name twice");
    drop(logs);
    for n in nodes.into_iter().flatten() {
        assert!(n.terminate().success());
    }
}

#[test]
fn workers_follow_the_leader_through_kill_9_during_an_enrollment_storm_and_no_acknowledged_key_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let (master_sets, masters) = three_masters(dir.path(), &key);
    let mut nodes: Vec<Option<Node>> = master_sets.iter().map(|s| Some(Node::start("master.toml", s))).collect();
    let worker_sets: Vec<Vec<String>> = (0..2)
        .map(|i| {
            // The worker's cluster.master is dropped in favour of the list.
            let mut s = local(dir.path(), &format!("w{i}"), &key, free_port());
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
    let history = History::default();
    let through_worker = setting(&worker_sets[0], "enrollment.bind");
    let (enrolled, killed) = std::thread::scope(|scope| {
        let storm = scope.spawn(|| history.enroll(sim(), &through_worker, 400, 8, "storm", dir.path()));
        std::thread::sleep(Duration::from_millis(700));
        nodes[first].take().expect("leader").kill_9();
        let killed = Instant::now();
        (storm.join().expect("the storm"), killed)
    });
    eprintln!("storm: {enrolled} of 400 acknowledged");
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
    // Enrollment resumes through the worker; deletions through the other worker's API (it
    // forwards them to the leader).
    assert_eq!(history.enroll(sim(), &through_worker, 20, 8, "after", dir.path()), 20);
    let storm = keys_of(&dir.path().join("storm.keys"));
    let worker_api = format!("http://127.0.0.1:{}", api_port(&worker_sets[1]));
    for id in storm.keys().take(3) {
        assert!(history.delete(Command::new(BIN), &worker_api, id), "deleting {id} through a worker");
    }

    // Every acknowledged key, and nothing else, on every surviving node.
    let dirs: Vec<PathBuf> = rest
        .iter()
        .map(|i| dir.path().join(format!("m{i}")))
        .chain((0..2).map(|i| dir.path().join(format!("w{i}"))))
        .collect();
    let logs: Vec<&Node> = workers.iter().chain(nodes.iter().flatten()).collect();
    let table = wait_checked(&dirs, &history, &logs);
    drop(logs);
    let (acknowledged, deleted) = history.counts();
    assert_eq!((table.len(), deleted), (acknowledged - 3, 3));
    let names: BTreeSet<&String> = table.values().map(|(n, _)| n).collect();
    assert_eq!(names.len(), table.len(), "no id or name twice");
    for n in workers.into_iter().chain(nodes.into_iter().flatten()) {
        assert!(n.terminate().success());
    }
}

#[test]
fn a_member_whose_disk_fills_stops_with_the_reason_and_the_other_two_go_on() {
    let unshare = crate::runtime::private_mounts();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let (sets, _) = three_masters(dir.path(), &key);
    // m2's data dir is a 16 MiB tmpfs in a mount namespace of its own.
    let full = dir.path().join("m2");
    std::fs::create_dir_all(&full).expect("mkdir");
    let mut cmd = Command::new("unshare");
    cmd.args(&unshare)
        .arg("sh")
        .arg("-c")
        .arg(format!("mount -t tmpfs -o size=16m tmpfs '{}' && exec \"$0\" \"$@\"", full.display()));
    cmd.arg(BIN);
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::start("master.toml", &sets[i])).collect();
    nodes.push(Node::spawn("m2", run_command(cmd, "master.toml", &sets[2])));
    let history = History::default();
    leader(&sets, &[0, 1, 2], &history, dir.path(), Duration::from_secs(20));
    let inside = PathBuf::from(format!("/proc/{}/root{}", nodes[2].child.id(), full.display()));
    assert!(crate::runtime::fill(&inside.join("filler")) > 8 << 20, "is the tmpfs there?");

    // Changes go on through the two others (m2, leader or not, cannot write its log or registry).
    let start = Instant::now();
    let mut enrolled = 0;
    let mut round = 0;
    while enrolled < 40 {
        assert!(start.elapsed() < Duration::from_secs(30), "the two others stopped taking enrollments");
        for (i, set) in sets.iter().take(2).enumerate() {
            let at = setting(set, "enrollment.bind");
            enrolled += history.enroll(sim(), &at, 10, 4, &format!("full-{round}-{i}"), dir.path());
        }
        round += 1;
    }
    // m2 stops with the reason, and nothing else does.
    let status = nodes[2].wait_exit(Duration::from_secs(30));
    let log = nodes[2].log();
    assert!(status.is_some_and(|s| !s.success()), "m2 went on with a full disk:\n{log}");
    let reason = log.lines().find(|l| l.contains("shutting down") && l.contains("stopped")).unwrap_or_default();
    assert!(!reason.is_empty(), "m2 did not say why it stopped:\n{log}");
    eprintln!("m2: {reason}");
    for n in &mut nodes[..2] {
        n.assert_running();
    }
    let survivors: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("m{i}"))).collect();
    let logs: Vec<&Node> = nodes[..2].iter().collect();
    wait_checked(&survivors, &history, &logs);
    for n in nodes.into_iter().take(2) {
        assert!(n.terminate().success());
    }
}
