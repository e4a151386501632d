//! The master rebalances agents by itself: 2,000 agent-sim agents (reconnecting as real Wazuh
//! agents do) on two workers, a third worker joins, and within a minute each worker holds the mean
//! (667) within 20 %, with the shipped settings (a batch every 5 s, 50 moves a second at most):
//! once through a round-robin TCP proxy in front of the workers, once with server lists in the
//! agents and no balancer (a moved agent is refused by the worker it left, so it goes on to its
//! next server).

use crate::common;
use crate::drain::{active_by_node, enroll, wait_active, Proxy, Sim};

use common::process::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const AGENTS: u64 = 2000;

/// The master's `GET /cluster/balance`.
fn balance(api: u16) -> serde_json::Value {
    let base = format!("http://127.0.0.1:{api}");
    let (_, body) = wazuh_multi_node::client::get(&base, "/cluster/balance", Some(API_TOKEN)).expect("balance");
    serde_json::from_str(&body).unwrap_or_default()
}

/// One run: a master and two workers with 1,000 agents each, then a third worker joins; how long
/// until every worker holds 667 within 20 %, and how many moves the master made.
fn run(through_proxy: bool) {
    let _ = wazuh_cluster_actors::budget::set_open_files(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_key(dir.path(), "cluster.key");
    let port = free_port();
    // The shipped rebalancer.
    let shipped = |mut s: Vec<String>| {
        s.retain(|x| !x.starts_with("cluster.rebalance"));
        s
    };
    let master_sets = shipped(local(dir.path(), "master", &key, port));
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    let api = api_port(&master_sets);
    let sets: Vec<Vec<String>> = (1..=3)
        .map(|i| {
            let mut s = local(dir.path(), &format!("w{i}"), &key, port);
            s.push(format!("node.name=worker-{i}"));
            s
        })
        .collect();
    let mut workers: Vec<Node> = sets[..2].iter().map(|s| Node::start("worker-1.toml", s)).collect();
    wait_listed(api, &["master-1", "worker-1", "worker-2"], &[&master, &workers[0], &workers[1]]);
    let agents_of = |i: usize| -> SocketAddr { setting(&sets[i], "agents.bind").parse().expect("agents.bind") };
    let (keys_1, keys_2) = (dir.path().join("a.keys"), dir.path().join("b.keys"));
    enroll(&setting(&sets[0], "enrollment.bind"), AGENTS / 2, "a", &keys_1);
    enroll(&setting(&sets[1], "enrollment.bind"), AGENTS / 2, "b", &keys_2);

    let half = (AGENTS / 2).to_string();
    let _proxy;
    let sims: Vec<Sim> = if through_proxy {
        // Each half through a proxy in front of its worker; then one proxy in front of all three.
        let proxy = Proxy::start(vec![agents_of(0)]);
        let a = Sim::start(
            &keys_1,
            &["--agents", &half, "--connect", &proxy.addr.to_string(), "--max-retries", "5", "--retry-interval", "2"],
        );
        wait_active(api, "worker-1", false, AGENTS / 2, Duration::from_secs(60));
        proxy.set_backends(vec![agents_of(1)]);
        let b = Sim::start(
            &keys_2,
            &["--agents", &half, "--connect", &proxy.addr.to_string(), "--max-retries", "5", "--retry-interval", "2"],
        );
        wait_active(api, "worker-2", false, AGENTS / 2, Duration::from_secs(60));
        proxy.set_backends(vec![agents_of(0), agents_of(1), agents_of(2)]);
        _proxy = Some(proxy);
        vec![a, b]
    } else {
        // Server lists: each half starts with its worker, worker 3 second.
        let list = |first: usize, last: usize| format!("{},{},{}", agents_of(first), agents_of(2), agents_of(last));
        let a = Sim::start(
            &keys_1,
            &["--agents", &half, "--connect", &list(0, 1), "--max-retries", "3", "--retry-interval", "2"],
        );
        let b = Sim::start(
            &keys_2,
            &["--agents", &half, "--connect", &list(1, 0), "--max-retries", "3", "--retry-interval", "2"],
        );
        wait_active(api, "worker-1", false, AGENTS / 2, Duration::from_secs(60));
        wait_active(api, "worker-2", false, AGENTS / 2, Duration::from_secs(60));
        _proxy = None;
        vec![a, b]
    };

    // The third worker joins.
    let joined = Instant::now();
    workers.push(Node::start("worker-1.toml", &sets[2]));
    let mean = AGENTS as f64 / 3.0;
    let (low, high) = ((mean * 0.8).floor() as u64, (mean * 1.2).ceil() as u64);
    let took = loop {
        let by_node = active_by_node(api);
        let held: Vec<u64> = (1..=3).map(|i| by_node.get(&format!("worker-{i}")).copied().unwrap_or(0)).collect();
        if held.iter().all(|&n| (low..=high).contains(&n)) && held.iter().sum::<u64>() == AGENTS {
            break joined.elapsed();
        }
        assert!(joined.elapsed() < Duration::from_secs(120), "not balanced within 120 s: {held:?}\n{}", balance(api));
        std::thread::sleep(Duration::from_millis(200));
    };
    let view = balance(api);
    let moves = view["data"]["moves"].as_u64().unwrap_or(0);
    let how = if through_proxy { "through a round-robin proxy" } else { "with server lists (3 attempts 2 s apart)" };
    eprintln!(
        "rebalance {how}: every worker within {low}..={high} active agents {} ms after the third joined; {moves} agents moved in {} batches ({:.1} moves a second over that time; at most 50 a second by setting); {:?}",
        took.as_millis(),
        view["data"]["batches"],
        moves as f64 / took.as_secs_f64(),
        active_by_node(api)
    );
    assert!(moves >= AGENTS / 3 - AGENTS / 15, "the master moved {moves} agents");
    assert!(moves as f64 <= 50.0 * (took.as_secs_f64() + 5.0), "{moves} moves in {took:?}: more than 50 a second");
    for s in sims {
        s.stop();
    }
    for w in workers {
        assert!(w.terminate().success());
    }
    drop(master);
}

#[test]
fn a_joining_worker_gets_its_share_through_a_proxy_and_with_server_lists() {
    run(true);
    run(false);
}
