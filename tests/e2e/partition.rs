//! Master high availability under a network partition: three master-eligible nodes, each in its own
//! network namespace, joined by veth pairs to a bridge in a fourth (all made by the test, removed
//! at its end). Cutting the leader's link isolates it from the other two: they elect a leader and
//! go on; it refuses changes; after healing, the three converge on one registry, and the checker
//! finds every acknowledged enrollment and deletion in it. Needs root (`ip netns`), as CI has.

use crate::checker::{keys_of, History};
use crate::common::process::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed (this test needs root and network namespaces): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's network: node `i` in namespace `<tag>-n<i>` at 10.77.0.<i+1>, its veth's other end
/// `p<i>` on bridge `br0` in namespace `<tag>-sw`.
struct Net {
    switch: String,
    nodes: Vec<String>,
}

impl Net {
    fn new(n: usize) -> Net {
        // Unique per network: the tests of this file run at once in one process.
        static NETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("wmn{}x{k}", std::process::id());
        let net = Net { switch: format!("{tag}-sw"), nodes: (0..n).map(|i| format!("{tag}-n{i}")).collect() };
        let sw = net.switch.as_str();
        ip(&["netns", "add", sw]);
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        for (i, ns) in net.nodes.iter().enumerate() {
            let port = format!("p{i}");
            ip(&["netns", "add", ns]);
            ip(&["-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns]);
            ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{}/24", Net::addr(i)), "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn addr(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// `program` run inside node `i`'s namespace.
    fn exec(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.nodes[i], program]);
        c
    }

    /// Node `i`'s link to the others goes down (its own interfaces stay up: it just hears nothing).
    fn cut(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "down"]);
    }

    fn heal(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

const API: &str = "http://127.0.0.1:55000";
const ENROLL: &str = "127.0.0.1:1515";

/// `wazuh-cluster nodes` on node `i`: its view of the masters (term, leader, registry).
fn view(net: &Net, i: usize) -> String {
    let out = net.exec(i, BIN).args(["nodes", "--api", API]).env("WMN_API_TOKEN", API_TOKEN).output().expect("nodes");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The `registry: change N, hash H` line of a view.
fn registry_line(view: &str) -> Option<String> {
    view.lines().find(|l| l.trim_start().starts_with("registry: change")).map(|l| l.trim().to_string())
}

/// The one of `among` that leads (says so, with a majority) and takes an enrollment.
fn leader(net: &Net, among: &[usize], history: &History, dir: &std::path::Path, within: Duration) -> usize {
    let start = Instant::now();
    for round in 0.. {
        for &i in among {
            if crate::ha::leads(&view(net, i))
                && history.enroll(net.exec(i, agent_sim()), ENROLL, 1, 1, &format!("probe-{round}-{i}"), dir) == 1
            {
                return i;
            }
        }
        assert!(start.elapsed() < within, "none of {among:?} took an enrollment within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

#[test]
fn a_leader_cut_off_by_a_partition_refuses_changes_the_majority_goes_on_and_all_converge_after_healing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let net = Net::new(3);
    let masters: Vec<String> = (0..3).map(|i| format!("{}:1516", Net::addr(i))).collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let mut s = local(dir.path(), &format!("m{i}"), &key, 1516);
            s.retain(|x| {
                !x.starts_with("cluster.") || x.starts_with("cluster.key_file") || x.starts_with("cluster.admission")
            });
            s.retain(|x| {
                !x.starts_with("api.bind") && !x.starts_with("enrollment.bind") && !x.starts_with("agents.bind")
            });
            s.extend([
                format!("node.name=m{i}"),
                format!("cluster.bind={}", masters[i]),
                format!("cluster.masters={}", masters.join(",")),
                "cluster.intervals.keepalive=500ms".into(),
                "api.bind=127.0.0.1:55000".into(),
                "enrollment.bind=0.0.0.0:1515".into(),
                "agents.bind=0.0.0.0:1514".into(),
            ]);
            Node::spawn(&format!("m{i}"), run_command(net.exec(i, BIN), "master.toml", &s))
        })
        .collect();
    for n in &nodes {
        n.wait_for(&["master-eligible node", "acts as the master"]);
    }
    let history = History::default();
    let first = leader(&net, &[0, 1, 2], &history, dir.path(), Duration::from_secs(20));
    assert_eq!(history.enroll(net.exec(first, agent_sim()), ENROLL, 30, 8, "before", dir.path()), 30);
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();

    // The partition: the leader hears nobody, nobody hears it.
    net.cut(first);
    let cut = Instant::now();
    // Past its lease, the old leader refuses at once (it does not wait out a commit timeout).
    std::thread::sleep(Duration::from_millis(1_500));
    let asked = Instant::now();
    assert_eq!(history.enroll(net.exec(first, agent_sim()), ENROLL, 3, 3, "isolated", dir.path()), 0);
    let refused_in = asked.elapsed();
    assert!(!history.delete(net.exec(first, BIN), API, "001"), "the isolated leader deleted an agent");
    let isolated_view = view(&net, first);
    eprintln!("isolated m{first} refused an enrollment in {} ms:\n{isolated_view}", refused_in.as_millis());
    assert!(
        isolated_view.contains("it accepts no change"),
        "the isolated leader says it takes no change: {isolated_view}"
    );

    // The majority elects a leader and goes on: enrollments and deletions.
    let second = leader(&net, &rest, &history, dir.path(), Duration::from_secs(20));
    eprintln!("m{second} took enrollments {} ms after the cut", cut.elapsed().as_millis());
    assert_eq!(history.enroll(net.exec(second, agent_sim()), ENROLL, 30, 8, "majority", dir.path()), 30);
    let before = keys_of(&dir.path().join("before.keys"));
    for id in before.keys().take(5) {
        assert!(history.delete(net.exec(second, BIN), API, id), "deleting {id} on the new leader");
    }
    // The isolated node still takes nothing.
    assert_eq!(history.enroll(net.exec(first, agent_sim()), ENROLL, 2, 2, "still-isolated", dir.path()), 0);

    // Healing: the old leader learns the new term, drops what it never committed, catches up.
    net.heal(first);
    let healed = Instant::now();
    let converged = loop {
        let lines: Vec<Option<String>> = (0..3).map(|i| registry_line(&view(&net, i))).collect();
        if lines[0].is_some() && lines.windows(2).all(|w| w[0] == w[1]) {
            break lines[0].clone().unwrap_or_default();
        }
        assert!(healed.elapsed() < WAIT, "the members do not converge: {lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("all three at \"{converged}\" {} ms after healing", healed.elapsed().as_millis());
    let views: Vec<String> = (0..3).map(|i| view(&net, i)).collect();
    let leads = |v: &String| crate::ha::leads(v);
    assert_eq!(views.iter().filter(|v| leads(v)).count(), 1, "one leader after healing: {views:?}");
    assert!(!leads(&views[first]), "the old leader follows after healing: {}", views[first]);

    // Every member: what the clients saw acknowledged, and nothing else.
    let (enrolled, deleted) = history.counts();
    assert!(enrolled >= 62 && deleted == 5, "{enrolled} enrollments, {deleted} deletions acknowledged");
    for i in 0..3 {
        let table = keys_of(&dir.path().join(format!("m{i}/etc/client.keys")));
        let bad = history.violations(&table);
        assert!(bad.is_empty(), "m{i}: {bad:#?}");
    }
    for n in nodes {
        assert!(n.terminate().success());
    }
}

#[test]
fn workers_follow_a_new_leader_within_seconds_of_a_partition_with_the_shipped_timings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    // Masters in namespaces 0..2, workers in 3 and 4.
    let net = Net::new(5);
    let masters: Vec<String> = (0..3).map(|i| format!("{}:1516", Net::addr(i))).collect();
    let node_sets = |name: &str, extra: Vec<String>| {
        let mut s = local(dir.path(), name, &key, 1516);
        // The shipped timings: local()'s shorter keep-alive is left out.
        s.retain(|x| {
            !x.starts_with("cluster.") || x.starts_with("cluster.key_file") || x.starts_with("cluster.admission")
        });
        s.retain(|x| !x.starts_with("api.bind") && !x.starts_with("enrollment.bind") && !x.starts_with("agents.bind"));
        s.extend([
            format!("node.name={name}"),
            format!("cluster.masters={}", masters.join(",")),
            "api.bind=127.0.0.1:55000".into(),
            "enrollment.bind=0.0.0.0:1515".into(),
            "agents.bind=0.0.0.0:1514".into(),
        ]);
        s.extend(extra);
        s
    };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let s = node_sets(&format!("m{i}"), vec![format!("cluster.bind={}", masters[i])]);
            Node::spawn(&format!("m{i}"), run_command(net.exec(i, BIN), "master.toml", &s))
        })
        .collect();
    for w in 0..2 {
        let s = node_sets(&format!("w{w}"), vec!["cluster.master=".into()]);
        nodes.push(Node::spawn(&format!("w{w}"), run_command(net.exec(3 + w, BIN), "worker-1.toml", &s)));
    }
    // Each worker connected to a master, as its own API lists it.
    let start = Instant::now();
    let connected = |w: usize| view(&net, w).lines().any(|l| l.split_whitespace().nth(1) == Some("master"));
    while !(3..5).all(connected) {
        assert!(start.elapsed() < WAIT, "the workers did not connect to a master");
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = History::default();
    let enroll_through = |w: usize, attempt: usize, tag: &str| {
        let sim = net.exec(3 + w, agent_sim());
        history.enroll(sim, ENROLL, 1, 1, &format!("{tag}-w{w}-{attempt}"), dir.path()) == 1
    };
    let start = Instant::now();
    while !(0..2).all(|w| enroll_through(w, 0, "before")) {
        assert!(start.elapsed() < WAIT, "no enrollment through both workers before the partition");
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = leader(&net, &[0, 1, 2], &history, dir.path(), Duration::from_secs(20));
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();

    // The leader is cut off from everyone, workers included.
    net.cut(first);
    let at = Instant::now();
    let leads = || rest.iter().any(|&i| crate::ha::leads(&view(&net, i)));
    let followed = crate::failover::follow(
        at,
        &leads,
        &|w, attempt| enroll_through(w, attempt, "partition"),
        2,
        Duration::from_secs(60),
    );
    eprintln!("partition of leader m{first}: {followed}");
    assert!(
        followed.worst_after_election() < crate::failover::LOOSE,
        "the workers took {:?} after the election",
        followed.worst_after_election()
    );

    // Healed, every node holds what the clients saw acknowledged, and nothing else.
    net.heal(first);
    let dirs: Vec<std::path::PathBuf> = ["m0", "m1", "m2", "w0", "w1"].iter().map(|n| dir.path().join(n)).collect();
    crate::failover::wait_agreed(&dirs, &history);
    for n in nodes {
        assert!(n.terminate().success());
    }
}
