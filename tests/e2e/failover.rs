//! Workers follow a new leader within seconds whatever happened to the old one: three
//! master-eligible processes and two workers on loopback, with the shipped timings. The leader is
//! frozen (SIGSTOP) and, later, killed (kill -9); after each, an enrollment through each worker
//! succeeds soon after the majority elects a new leader, and the checker finds every acknowledged
//! enrollment. A leader cut off by a partition is in `partition.rs` (network namespaces).

use crate::checker::{keys_of, History};
use crate::common;

use common::process::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// How a failover went: when a surviving master first led, and when an enrollment through each
/// worker first succeeded, both after the fault.
pub struct Followed {
    pub elected: Duration,
    pub resumed: Vec<Duration>,
}

impl Followed {
    /// The worst worker's delay after the election.
    pub fn worst_after_election(&self) -> Duration {
        self.resumed.iter().max().copied().unwrap_or_default().saturating_sub(self.elected)
    }
}

impl std::fmt::Display for Followed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resumed: Vec<String> = self
            .resumed
            .iter()
            .map(|r| {
                format!("{} ms ({} ms after the election)", r.as_millis(), r.saturating_sub(self.elected).as_millis())
            })
            .collect();
        write!(
            f,
            "a leader elected {} ms after the fault; enrollment through the workers resumed {}",
            self.elected.as_millis(),
            resumed.join(", ")
        )
    }
}

/// From `fault` on: polls `leads` (whether a surviving master leads) and, for each worker, `enroll`
/// (whether one enrollment through it succeeded, given an attempt number) until all happened,
/// within `within`.
pub fn follow(
    fault: Instant,
    leads: &(dyn Fn() -> bool + Sync),
    enroll: &(dyn Fn(usize, usize) -> bool + Sync),
    workers: usize,
    within: Duration,
) -> Followed {
    std::thread::scope(|scope| {
        let elected = scope.spawn(|| loop {
            if leads() {
                return fault.elapsed();
            }
            assert!(fault.elapsed() < within, "no surviving master led within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        });
        let resumed: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    for attempt in 0.. {
                        if enroll(w, attempt) {
                            return fault.elapsed();
                        }
                        assert!(fault.elapsed() < within, "no enrollment through worker {w} within {within:?}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    unreachable!()
                })
            })
            .collect();
        Followed {
            elected: elected.join().expect("the election watch"),
            resumed: resumed.into_iter().map(|r| r.join().expect("a worker's enrollments")).collect(),
        }
    })
}

/// The loose bound the tests assert (the goal, 5 s, is what they print and the README reports).
pub const LOOSE: Duration = Duration::from_secs(12);

fn view(sets: &[String]) -> String {
    let out = Command::new(BIN)
        .args(["nodes", "--api", &format!("http://127.0.0.1:{}", api_port(sets))])
        .env("WMN_API_TOKEN", API_TOKEN)
        .output()
        .expect("nodes");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The shipped timings: `local`'s shorter keep-alive is left out.
fn shipped(mut sets: Vec<String>) -> Vec<String> {
    sets.retain(|s| !s.starts_with("cluster.intervals.keepalive"));
    sets
}

/// The master (index) a worker is connected to, as its own API lists it (`None`: none now).
fn followed_master(worker_sets: &[String]) -> Option<usize> {
    let listed = listed_nodes(api_port(worker_sets));
    listed.iter().find_map(|n| n.strip_prefix('m').and_then(|i| i.parse().ok()))
}

fn signal(node: &Node, sig: &str) {
    let ok = Command::new("kill").args([sig, &node.child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} {}", node.name);
}

#[test]
fn workers_follow_a_new_leader_within_seconds_of_a_freeze_and_of_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let masters = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let master_sets: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let mut s = shipped(local(dir.path(), &format!("m{i}"), &key, ports[i]));
            s.extend([format!("node.name=m{i}"), format!("cluster.masters={masters}")]);
            s
        })
        .collect();
    let mut nodes: Vec<Option<Node>> = master_sets.iter().map(|s| Some(Node::start("master.toml", s))).collect();
    let worker_sets: Vec<Vec<String>> = (0..2)
        .map(|i| {
            let mut s = shipped(local(dir.path(), &format!("w{i}"), &key, free_port()));
            s.retain(|x| !x.starts_with("cluster.master="));
            s.extend([format!("node.name=w{i}"), format!("cluster.masters={masters}"), "cluster.master=".into()]);
            s
        })
        .collect();
    let workers: Vec<Node> = worker_sets.iter().map(|s| Node::start("worker-1.toml", s)).collect();
    let start = Instant::now();
    while !worker_sets.iter().all(|s| followed_master(s).is_some()) {
        assert!(start.elapsed() < WAIT, "the workers did not connect to a master");
        std::thread::sleep(Duration::from_millis(50));
    }
    let history = History::default();
    let enroll_through = |w: usize, attempt: usize, tag: &str| {
        let addr = setting(&worker_sets[w], "enrollment.bind");
        history.enroll(Command::new(agent_sim()), &addr, 1, 1, &format!("{tag}-w{w}-{attempt}"), dir.path()) == 1
    };
    for w in 0..2 {
        assert!(enroll_through(w, 0, "before"), "an enrollment through worker {w} before any fault");
    }

    let mut figures = Vec::new();
    for fault in ["SIGSTOP", "kill -9"] {
        // The leader, as both workers follow it.
        let start = Instant::now();
        let leader = loop {
            let seen: Vec<Option<usize>> = worker_sets.iter().map(|s| followed_master(s)).collect();
            if let [Some(a), Some(b)] = seen[..] {
                if a == b && nodes[a].is_some() {
                    break a;
                }
            }
            assert!(start.elapsed() < WAIT, "the workers do not follow one leader: {seen:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let alive: Vec<usize> = (0..3).filter(|&i| i != leader && nodes[i].is_some()).collect();
        let at = Instant::now();
        match fault {
            "SIGSTOP" => signal(nodes[leader].as_ref().expect("leader"), "-STOP"),
            _ => nodes[leader].take().expect("leader").kill_9(),
        }
        let leads = || alive.iter().any(|&i| crate::ha::leads(&view(&master_sets[i])));
        let tag = fault.replace(' ', "");
        let followed = follow(at, &leads, &|w, attempt| enroll_through(w, attempt, &tag), 2, Duration::from_secs(60));
        eprintln!("{fault} of leader m{leader}: {followed}");
        assert!(
            followed.worst_after_election() < LOOSE,
            "{fault}: the workers took {:?} after the election",
            followed.worst_after_election()
        );
        figures.push(followed);
        if fault == "SIGSTOP" {
            // It resumes as a follower of the new leader, and catches up before the next fault.
            signal(nodes[leader].as_ref().expect("frozen leader"), "-CONT");
            let members: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("m{i}"))).collect();
            wait_agreed(&members, &history);
        }
    }

    // Every acknowledged key, and nothing else, on every node still running.
    let dirs: Vec<PathBuf> = (0..3)
        .filter(|&i| nodes[i].is_some())
        .map(|i| dir.path().join(format!("m{i}")))
        .chain((0..2).map(|i| dir.path().join(format!("w{i}"))))
        .collect();
    wait_agreed(&dirs, &history);
    for n in workers.into_iter().chain(nodes.into_iter().flatten()) {
        assert!(n.terminate().success());
    }
}

/// Waits until every node in `dirs` holds the same agents and the checker finds nothing wrong.
pub fn wait_agreed(dirs: &[PathBuf], history: &History) {
    let start = Instant::now();
    loop {
        let tables: Vec<_> = dirs.iter().map(|d: &PathBuf| keys_of(&d.join("etc/client.keys"))).collect();
        let bad: Vec<Vec<String>> = tables.iter().map(|t| history.violations(t)).collect();
        if tables.windows(2).all(|w| w[0] == w[1]) && bad.iter().all(|b| b.is_empty()) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the nodes disagree or lost a key: {bad:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
