//! What a panic does to each long-lived actor that is not a job (jobs have their own tests in
//! cluster_runtime.rs), injected through the `testing` feature's `Panic` message:
//! - a connection closes alone and its worker dials again, and serves;
//! - the ruleset reloader is restarted in place (counted in health) and reloads again;
//! - the master's listener, a worker's link and the agent hub cut the node's lifeline, which makes
//!   `wazuh-cluster run` stop the node and exit non-zero (the process test in e2e/processes.rs).

use crate::common;

use common::cluster::TestCluster;
use std::time::Duration;
use wazuh_cluster_actors::supervise::testing::Panic;
use wazuh_cluster_actors::worker::{GetLink, PanicConnection};
use wazuh_multi_node::node::NodeHandle;

const WAIT: Duration = Duration::from_secs(20);

/// When worker `i`'s current connection was made (`None`: no connection).
async fn connected_since(cluster: &TestCluster, i: usize) -> Option<u64> {
    let NodeHandle::Worker { link, .. } = &cluster.worker(i).handle else { panic!("a worker") };
    link.send(GetLink).await.ok().flatten().map(|c| c.connected_since_ms)
}

#[actix_rt::test]
async fn a_panicking_connection_closes_alone_and_its_worker_dials_again() {
    let cluster = TestCluster::start("conn-panic", 1).await;
    let before = connected_since(&cluster, 0).await.expect("connected");
    let NodeHandle::Worker { link, .. } = &cluster.worker(0).handle else { panic!("a worker") };
    assert!(link.send(PanicConnection("injected".into())).await.expect("link"), "no connection to panic");
    common::wait_until("a new connection to the master", WAIT, || async {
        connected_since(&cluster, 0).await.is_some_and(|since| since != before)
    })
    .await;
    // It serves: a file written on the master reaches the worker over the new connection.
    let master = cluster.dir.path().join(cluster.master_name());
    std::fs::create_dir_all(master.join("etc/rules")).expect("mkdir");
    std::fs::write(master.join("etc/rules/after_panic.xml"), b"<group name=\"after\"/>\n").expect("write");
    let on_worker = cluster.dir.path().join(cluster.worker_name(0)).join("etc/rules/after_panic.xml");
    common::wait_until("the file on the worker", WAIT, || {
        let there = on_worker.is_file();
        async move { there }
    })
    .await;
    // Neither node stops for it.
    assert_eq!(cluster.worker(0).lifeline.why(), None);
    assert_eq!(cluster.master().lifeline.why(), None);
}

#[actix_rt::test]
async fn a_panicking_ruleset_reloader_is_restarted_and_reloads_again() {
    let cluster = TestCluster::start_with(
        "reload-panic",
        1,
        &[("analysis.control", "queue/sockets/analysis".into()), ("analysis.reload_debounce", "100ms".into())],
    )
    .await;
    let worker_dir = cluster.dir.path().join(cluster.worker_name(0));
    let reloads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = reloads.clone();
    actix_rt::spawn(common::control_stand_in(worker_dir.join("queue/sockets/analysis"), move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        br#"{"error":0,"message":"ok"}"#.to_vec()
    }));
    let Some((reloader, health)) = cluster.worker(0).handle.ruleset().cloned() else { panic!("a reloader") };
    reloader.do_send(Panic("injected".into()));
    common::wait_until("the reloader restarted", WAIT, || {
        let report = health.snapshot();
        async move { report.panics == 1 && report.restarts == 1 }
    })
    .await;
    // It still does its work: a rule change on the master makes the worker reload.
    let master = cluster.dir.path().join(cluster.master_name());
    std::fs::create_dir_all(master.join("etc/rules")).expect("mkdir");
    std::fs::write(master.join("etc/rules/local_rules.xml"), b"<group name=\"local\"/>\n").expect("write");
    common::wait_until("a reload after the restart", WAIT, || {
        let n = reloads.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    assert_eq!(cluster.worker(0).lifeline.why(), None);
}

#[actix_rt::test]
async fn the_vital_actors_of_a_node_cut_its_lifeline_when_they_panic() {
    let cluster = TestCluster::start("vital", 2).await;
    // The master's listener.
    let NodeHandle::Master { listener, .. } = &cluster.master().handle else { panic!("a master") };
    listener.do_send(Panic("injected into the listener".into()));
    let why = tokio::time::timeout(WAIT, cluster.master().lifeline.cut_off()).await.expect("the master's lifeline");
    assert!(why.contains("MasterListener") && why.contains("injected into the listener"), "{why}");
    // A worker's link to its master.
    let NodeHandle::Worker { link, .. } = &cluster.worker(0).handle else { panic!("a worker") };
    link.do_send(Panic("injected into the link".into()));
    let why = tokio::time::timeout(WAIT, cluster.worker(0).lifeline.cut_off()).await.expect("worker 1's lifeline");
    assert!(why.contains("WorkerLink") && why.contains("injected into the link"), "{why}");
    // The other worker's agent hub.
    cluster.worker(1).handle.hub().do_send(Panic("injected into the hub".into()));
    let why = tokio::time::timeout(WAIT, cluster.worker(1).lifeline.cut_off()).await.expect("worker 2's lifeline");
    assert!(why.contains("AgentHub") && why.contains("injected into the hub"), "{why}");
}
