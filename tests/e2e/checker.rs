//! What the clients of a high-availability test saw acknowledged, checked against the registry the
//! masters end with: a small linearizability check of enrollments and deletions.
//!
//! Each operation is recorded with when it was invoked and when its answer came (on the test's
//! clock). An enrollment batch (agent-sim enrolling many agents at once) is one operation whose
//! answers are the keys it received. The checks:
//! - every acknowledged enrollment is in the final registry with the id, name and key its agent
//!   received, unless a deletion removed it (an acknowledged one must have; one that failed may
//!   have);
//! - every acknowledged deletion's agent is gone;
//! - nothing else is there: no agent exists whose enrollment was never acknowledged;
//! - no id was handed out twice (a deleted agent's id included);
//! - ids follow real time: an enrollment acknowledged before another was invoked has the lower id
//!   (the log orders them, and ids are never reused, across leaders too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// An agent as a key line gives it: id -> (name, key).
pub type Agents = BTreeMap<String, (String, String)>;

#[derive(Debug, Clone)]
enum Op {
    Enroll {
        invoked: Instant,
        answered: Instant,
        agents: Agents,
    },
    /// A deletion's effect is checked from its answer on.
    Delete {
        answered: Instant,
        id: String,
        acknowledged: bool,
    },
}

/// The history of one test's clients.
#[derive(Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

/// `id -> (name, key)` from a client.keys-shaped file (`id name ip key`; lines of removed agents,
/// marked with `#` in place as Wazuh does, are skipped).
pub fn keys_of(path: &Path) -> Agents {
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

impl History {
    /// Runs `sim` (agent-sim, perhaps behind `ip netns exec`) enrolling `n` agents named
    /// `prefix-<i>` through `addr`, `concurrency` at once, and records what it received: how
    /// many got a key.
    pub fn enroll(
        &self,
        mut sim: Command,
        addr: &str,
        n: usize,
        concurrency: usize,
        prefix: &str,
        dir: &Path,
    ) -> usize {
        let keys = dir.join(format!("{prefix}.keys"));
        let invoked = Instant::now();
        let out = sim
            .args(["--enroll", addr, "--agents", &n.to_string(), "--prefix", prefix, "--timeout", "10", "--json"])
            .args(["--concurrency", &concurrency.to_string(), "--keys-out"])
            .arg(&keys)
            .output()
            .expect("agent-sim");
        let answered = Instant::now();
        let agents = keys_of(&keys);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(
            summary["enrolled"].as_u64().unwrap_or(0),
            agents.len() as u64,
            "agent-sim wrote every key it received: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = agents.len();
        self.ops.lock().expect("history").push(Op::Enroll { invoked, answered, agents });
        got
    }

    /// Runs `cli` (`wazuh-cluster`, perhaps behind `ip netns exec`) deleting agent `id` through
    /// the API at `api`, and records whether it was acknowledged.
    pub fn delete(&self, mut cli: Command, api: &str, id: &str) -> bool {
        let out = cli
            .args(["agents", "--api", api, "delete", id])
            .env("WMN_API_TOKEN", crate::common::process::API_TOKEN)
            .output()
            .expect("wazuh-cluster agents delete");
        let acknowledged = out.status.success();
        let answered = Instant::now();
        self.ops.lock().expect("history").push(Op::Delete { answered, id: id.to_string(), acknowledged });
        acknowledged
    }

    /// Every agent whose enrollment was acknowledged (deleted or not).
    pub fn enrolled(&self) -> Agents {
        let ops = self.ops.lock().expect("history");
        ops.iter()
            .filter_map(|op| match op {
                Op::Enroll { agents, .. } => Some(agents.clone()),
                Op::Delete { .. } => None,
            })
            .flatten()
            .collect()
    }

    /// The checks of the module's documentation against `registry` (a master's final table):
    /// the reasons it fails, none if it passes.
    pub fn violations(&self, registry: &Agents) -> Vec<String> {
        let ops = self.ops.lock().expect("history").clone();
        let mut bad = Vec::new();
        let mut given: BTreeMap<String, (String, String)> = BTreeMap::new();
        for op in &ops {
            if let Op::Enroll { agents, .. } = op {
                for (id, agent) in agents {
                    if let Some(before) = given.insert(id.clone(), agent.clone()) {
                        bad.push(format!("id {id} handed out twice: to {} and to {}", before.0, agent.0));
                    }
                }
            }
        }
        let deleted: BTreeSet<&String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Delete { id, acknowledged: true, .. } => Some(id),
                _ => None,
            })
            .collect();
        // A deletion that failed (a timeout, a leader lost on the way) may still have happened.
        let tried: BTreeSet<&String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Delete { id, acknowledged: false, .. } => Some(id),
                _ => None,
            })
            .collect();
        for (id, agent) in &given {
            match registry.get(id) {
                _ if deleted.contains(id) => {}
                None if tried.contains(id) => {}
                Some(held) if held == agent => {}
                Some(held) => bad.push(format!("agent {id} received {agent:?} but the registry holds {held:?}")),
                None => bad.push(format!("agent {id} ({}) received its key but is not in the registry", agent.0)),
            }
        }
        for id in &deleted {
            if registry.contains_key(*id) {
                bad.push(format!("agent {id}'s deletion was acknowledged but it is still in the registry"));
            }
        }
        for (id, (name, _)) in registry {
            if !given.contains_key(id) {
                bad.push(format!("agent {id} ({name}) is in the registry but its enrollment was never acknowledged"));
            }
        }
        // Real-time order of ids, between enrollments that did not overlap.
        let id = |s: &String| s.parse::<u32>().unwrap_or(0);
        let enrollments: Vec<(&Instant, &Instant, &Agents)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Enroll { invoked, answered, agents } if !agents.is_empty() => Some((invoked, answered, agents)),
                _ => None,
            })
            .collect();
        for (_, a_end, a) in &enrollments {
            for (b_start, _, b) in &enrollments {
                let (a_max, b_min) = (a.keys().map(id).max(), b.keys().map(id).min());
                if a_end < b_start && a_max >= b_min {
                    bad.push(format!(
                        "ids out of real-time order: {a_max:?} acknowledged before an enrollment that got {b_min:?} began"
                    ));
                }
            }
        }
        // A deletion acknowledged before an enrollment began cannot have removed that enrollment.
        for op in &ops {
            if let Op::Delete { answered, id: gone, acknowledged: true, .. } = op {
                for (b_start, _, b) in &enrollments {
                    if answered < *b_start && b.contains_key(gone) {
                        bad.push(format!("agent {gone} was deleted, then its id was handed out again"));
                    }
                }
            }
        }
        bad
    }

    /// How many operations of each kind were acknowledged: (enrolled agents, deletions).
    pub fn counts(&self) -> (usize, usize) {
        let deletions = {
            let ops = self.ops.lock().expect("history");
            ops.iter().filter(|op| matches!(op, Op::Delete { acknowledged: true, .. })).count()
        };
        (self.enrolled().len(), deletions)
    }
}

#[test]
fn the_checker_finds_a_lost_key_a_reused_id_a_ghost_an_undone_deletion_and_ids_out_of_order() {
    let h = History::default();
    let t = Instant::now();
    let later = |ms: u64| t + std::time::Duration::from_millis(ms);
    let agents = |list: &[(&str, &str)]| -> Agents {
        list.iter().map(|(id, name)| (id.to_string(), (name.to_string(), format!("key-{name}")))).collect()
    };
    {
        let mut ops = h.ops.lock().unwrap();
        ops.push(Op::Enroll { invoked: later(0), answered: later(10), agents: agents(&[("001", "a"), ("002", "b")]) });
        ops.push(Op::Enroll { invoked: later(20), answered: later(30), agents: agents(&[("003", "c")]) });
        ops.push(Op::Delete { answered: later(50), id: "002".into(), acknowledged: true });
        ops.push(Op::Delete { answered: later(50), id: "001".into(), acknowledged: false });
    }
    let good = agents(&[("001", "a"), ("003", "c")]);
    assert_eq!(h.violations(&good), Vec::<String>::new());
    // The unacknowledged deletion may have happened.
    assert_eq!(h.violations(&agents(&[("003", "c")])), Vec::<String>::new());
    let mut lost = good.clone();
    lost.remove("003");
    assert_eq!(h.violations(&lost).len(), 1, "a lost key");
    let mut other_key = good.clone();
    other_key.insert("003".into(), ("c".into(), "another".into()));
    assert_eq!(h.violations(&other_key).len(), 1, "a changed key");
    let mut ghost = good.clone();
    ghost.insert("004".into(), ("d".into(), "key-d".into()));
    assert_eq!(h.violations(&ghost).len(), 1, "an agent nobody received");
    let mut undeleted = good.clone();
    undeleted.insert("002".into(), ("b".into(), "key-b".into()));
    assert_eq!(h.violations(&undeleted).len(), 1, "a deletion undone");
    // An id given again after its deletion (twice, and after the deletion was acknowledged).
    h.ops.lock().unwrap().push(Op::Enroll { invoked: later(60), answered: later(70), agents: agents(&[("002", "e")]) });
    let v = h.violations(&agents(&[("001", "a"), ("003", "c"), ("002", "e")]));
    assert!(v.iter().any(|m| m.contains("twice")), "{v:?}");
    assert!(v.iter().any(|m| m.contains("handed out again")), "{v:?}");
    assert!(v.iter().any(|m| m.contains("real-time order")), "{v:?}");
}
