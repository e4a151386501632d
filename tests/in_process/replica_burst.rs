//! A burst of 10,000 registry changes reaches a worker's replica as changes, never as a snapshot:
//! once while the worker is connected, once while it is down (it catches up when it comes back).

use crate::common;

use common::cluster::TestCluster;
use common::{eventually, wait_until};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use wazuh_cluster_actors::registry::NewAgent;
use wazuh_multi_node::node::NodeHandle;

const BURST: usize = 10_000;
/// Debug builds, a shared machine: generous, and only a bound on a hang.
const WAIT: Duration = Duration::from_secs(120);

fn keys_file(cluster: &TestCluster, node: &str) -> BTreeSet<String> {
    let path = cluster.dir.path().join(node).join("etc/client.keys");
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

/// `BURST` enrollments on the master in one transaction (one commit, `BURST` changelog entries).
async fn burst(cluster: &TestCluster, round: usize) {
    let NodeHandle::Master { registry, .. } = &cluster.master().handle else { panic!("not a master") };
    registry
        .run(move |r| {
            for i in 0..BURST {
                let a = NewAgent {
                    name: format!("burst-{round}-{i}"),
                    groups: vec![],
                    ip: "any".into(),
                    key_hash: None,
                    version: None,
                    node_name: "burst-master".into(),
                    token: None,
                };
                if let Err(refused) = r.enroll(&a)? {
                    panic!("enrollment {i} refused: {refused}");
                }
            }
            Ok(())
        })
        .await
        .expect("burst");
}

/// Waits until the worker's client.keys holds the master's lines (and `want` of them).
async fn converged(cluster: &TestCluster, want: usize) -> Duration {
    let (master, worker) = (cluster.master_name(), cluster.worker_name(0));
    let start = Instant::now();
    let same = || async {
        let m = keys_file(cluster, &master);
        m.len() == want && keys_file(cluster, &worker) == m
    };
    wait_until(&format!("the worker's client.keys holds the master's {want} agents"), WAIT, same).await;
    start.elapsed()
}

/// The master's AgentGroupsSend figures for the worker, while it is connected: (acknowledged
/// position, snapshots sent on this connection).
async fn sender_figures(cluster: &TestCluster) -> Option<(u64, u64)> {
    let worker = cluster.worker_name(0);
    let nodes = cluster.master().handle.healthcheck().await;
    let node = nodes.iter().find(|n| n.name == worker)?;
    let job = node.actors.iter().find(|a| a.name == "AgentGroupsSend" && a.end == "master")?;
    let figure = |k: &str| job.figures.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap_or(0);
    Some((figure("acked_seq"), figure("snapshots")))
}

/// Waits until the worker acknowledged the master's position; returns the snapshots sent.
async fn acknowledged(cluster: &TestCluster) -> u64 {
    let NodeHandle::Master { registry, .. } = &cluster.master().handle else { panic!("not a master") };
    let seq = registry.run(|r| Ok(r.seq())).await.expect("seq");
    let acked = || async {
        match sender_figures(cluster).await {
            Some((acked, snapshots)) if acked >= seq => Ok(snapshots),
            other => Err(format!("{other:?}")),
        }
    };
    eventually(&format!("the worker acknowledged position {seq}"), WAIT, acked).await
}

#[actix_rt::test]
async fn a_worker_replica_catches_up_with_a_burst_of_10000_changes_without_a_snapshot() {
    let mut cluster = TestCluster::start("burst", 1).await;

    // Connected: the burst arrives as changes.
    burst(&cluster, 1).await;
    converged(&cluster, BURST).await;
    assert_eq!(acknowledged(&cluster).await, 0, "a snapshot was sent for a burst the changelog holds");
    // In parts, each within the request timeout: no failed push, no connection dropped.
    let master = cluster.master_name();
    for problem in ["push failed", "no traffic for"] {
        let lines = common::find_logs(&master, &[problem]);
        assert!(lines.is_empty(), "the master logged {lines:?}");
    }

    // Down during the next burst: it comes back at its old position and catches up from there.
    cluster.kill_worker(0).await;
    burst(&cluster, 2).await;
    cluster.restart_worker(0).await;
    converged(&cluster, 2 * BURST).await;
    assert_eq!(acknowledged(&cluster).await, 0, "the returning worker got a snapshot");
}
