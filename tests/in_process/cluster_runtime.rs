//! The cluster runtime in one process: supervision of job actors, refusals, reconnects after a
//! master crash, dropped workers, and the HTTP API. Real sockets, real nodes, millisecond timers;
//! every wait is on a condition, none is a fixed sleep.

use crate::common;
use wazuh_cluster_actors::jobs::runtime::InjectFault;

use common::cluster::TestCluster;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use wazuh_cluster_actors::jobs::runtime::FaultKind;
use wazuh_cluster_actors::link;
use wazuh_cluster_actors::master::{self, LocalJobs};
use wazuh_cluster_actors::worker::{GetLink, WorkerLink};
use wazuh_cluster_protocol::message::{JobReport, JobState};
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::ProtocolVersion;
use wazuh_multi_node::node::NodeHandle;

const WAIT: Duration = Duration::from_secs(10);

fn job<'a>(jobs: &'a [JobReport], name: &str) -> &'a JobReport {
    jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job {name} in {jobs:?}"))
}

fn link_of(cluster: &TestCluster, i: usize) -> actix::Addr<WorkerLink> {
    match &cluster.worker(i).handle {
        NodeHandle::Worker { link, .. } => link.clone(),
        NodeHandle::Master { .. } => panic!("not a worker"),
    }
}

fn listener_of(cluster: &TestCluster) -> actix::Addr<master::MasterListener> {
    match &cluster.master().handle {
        NodeHandle::Master { listener, .. } => listener.clone(),
        NodeHandle::Worker { .. } => panic!("not a master"),
    }
}

/// GET on a node's API from a blocking thread; returns status and parsed JSON.
async fn api_get(addr: std::net::SocketAddr, path: &'static str) -> (u16, serde_json::Value) {
    let base = format!("http://{addr}");
    let (status, body) = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::get(&base, path, Some(common::cluster::API_TOKEN))
    })
    .await
    .expect("join")
    .expect("http");
    (status, serde_json::from_str(&body).expect("json"))
}

#[actix_rt::test]
async fn a_failing_periodic_job_restarts_in_place_and_a_failing_server_answers_errors_without_restarting() {
    let cluster = TestCluster::start("sup", 1).await;
    let link = link_of(&cluster, 0);
    let before = link.send(GetLink).await.unwrap().expect("connected");
    let keepalive_before = job(&before.jobs, "KeepAlive").runs;

    // The worker's AgentInfo (periodic) fails its next 3 runs; each failure stops it and its
    // supervisor restarts it after a back-off.
    assert!(link
        .send(InjectFault { worker: None, job: "AgentInfo".into(), kind: FaultKind::Fail, count: 3 })
        .await
        .unwrap());
    wait_until("the worker's AgentInfo restarted 3 times and ran again", WAIT, || {
        let link = link.clone();
        async move {
            let info = link.send(GetLink).await.ok().flatten();
            info.is_some_and(|i| {
                let a = job(&i.jobs, "AgentInfo");
                a.restarts >= 3 && a.state == JobState::Running && a.runs > 0
            })
        }
    })
    .await;
    let after = link.send(GetLink).await.unwrap().expect("still connected");
    let agent_info = job(&after.jobs, "AgentInfo");
    assert_eq!(agent_info.failures, 3);
    assert_eq!(agent_info.last_error.as_deref(), Some("injected fault"));
    assert_eq!(after.connected_since_ms, before.connected_since_ms, "the connection was never dropped");
    assert!(job(&after.jobs, "KeepAlive").runs > keepalive_before, "siblings kept running");
    assert_eq!(job(&after.jobs, "KeepAlive").restarts, 0);

    // The master's end of AgentInfo is a server: its next 2 requests fail, each is answered with
    // an error (the worker's periodic AgentInfo then fails and backs off), and it never restarts.
    let listener = listener_of(&cluster);
    let worker = cluster.worker_name(0);
    let fault = InjectFault { worker: Some(worker.clone()), job: "AgentInfo".into(), kind: FaultKind::Fail, count: 2 };
    assert!(listener.send(fault).await.unwrap());
    wait_until("the master's AgentInfo answered 2 requests with errors and serves again", WAIT, || {
        let listener = listener.clone();
        async move {
            let workers = listener.send(master::ListWorkers).await.unwrap_or_default();
            workers.first().is_some_and(|w| {
                let a = job(&w.jobs, "AgentInfo");
                a.failures >= 2 && a.runs > 0 && a.last_run_ms.is_some()
            })
        }
    })
    .await;
    let workers = listener.send(master::ListWorkers).await.unwrap();
    let server = job(&workers[0].jobs, "AgentInfo");
    assert_eq!((server.failures, server.restarts, server.state), (2, 0, JobState::Running));
    wait_for_log(&worker, &["job AgentInfo for", "the peer answered with an error", "injected fault"], WAIT).await;

    // The healthcheck API shows both ends (the worker's through its keep-alives).
    let master_api = cluster.master().api_addr;
    wait_until("the healthcheck shows the failures", WAIT, || async move {
        let (status, body) = api_get(master_api, "/cluster/actors").await;
        let items = body["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        let worker_node = items.iter().find(|n| n["type"] == "worker");
        let actor = |end: &str, field: &str| {
            worker_node
                .and_then(|n| n["actors"].as_array())
                .and_then(|a| a.iter().find(|x| x["name"] == "AgentInfo" && x["end"] == end))
                .and_then(|x| x[field].as_u64())
                .unwrap_or(0)
        };
        status == 200 && actor("worker", "restarts") >= 3 && actor("master", "failures") >= 2
    })
    .await;
    assert!(find_logs(&cluster.master_name(), &["closing connection"]).is_empty());
    assert!(!find_logs(&worker, &["job AgentInfo for", "failed: injected fault; restarting it in"]).is_empty());
}

#[actix_rt::test]
async fn the_master_runs_one_shared_local_integrity_and_local_agent_groups() {
    let cluster = TestCluster::start("shared", 2).await;
    let listener = listener_of(&cluster);
    wait_until("the shared jobs have run", WAIT, || {
        let listener = listener.clone();
        async move {
            let jobs = listener.send(LocalJobs).await.unwrap_or_default();
            jobs.len() == 2 && jobs.iter().all(|j| j.runs >= 2)
        }
    })
    .await;
    let names: Vec<String> = listener.send(LocalJobs).await.unwrap().into_iter().map(|j| j.name).collect();
    assert_eq!(names, ["LocalIntegrity", "LocalAgentGroups"]);
    // Both workers' Integrity rounds are served from LocalIntegrity's manifest, and each
    // connection holds one receiver of each shared job's publications.
    wait_until("both workers checked integrity", WAIT, || {
        let listener = listener.clone();
        async move {
            let ws = listener.send(master::ListWorkers).await.unwrap_or_default();
            ws.len() == 2
                && ws.iter().all(|w| {
                    job(&w.jobs, "Integrity").runs >= 1 && job(&w.jobs, "AgentGroupsSend").state == JobState::Running
                })
        }
    })
    .await;
    // Two connections (and, for file changes, the master's agent hub).
    wait_until("the shared jobs count one receiver per connection", WAIT, || {
        let listener = listener.clone();
        async move {
            let jobs = listener.send(LocalJobs).await.unwrap_or_default();
            let subscribers = |name: &str| jobs.iter().find(|j| j.name == name).and_then(|j| j.figure("subscribers"));
            subscribers("LocalIntegrity") == Some(3) && subscribers("LocalAgentGroups") == Some(2)
        }
    })
    .await;
    assert_eq!(find_logs(&cluster.worker_name(0), &["files in sync with master"]).len(), 1);
}

#[actix_rt::test]
async fn workers_come_back_after_the_master_is_killed_mid_conversation_repeatedly() {
    let mut cluster = TestCluster::start("crash", 2).await;
    for round in 1..=5 {
        cluster.kill_master().await;
        // Both workers notice at once (the socket closes) and start redialling.
        for i in 0..2 {
            let link = link_of(&cluster, i);
            wait_until("the worker lost its master", WAIT, || {
                let link = link.clone();
                async move { link.send(GetLink).await.ok().flatten().is_none() }
            })
            .await;
        }
        cluster.restart_master().await;
        let back = cluster.wait_for_workers(2, WAIT).await;
        eprintln!("round {round}: both workers back {} ms after the master listened", back.as_millis());
    }
    for i in 0..2 {
        assert!(cluster.worker_connected(i).await);
        wait_for_log(&cluster.worker_name(i), &["redialling master"], WAIT).await;
    }
}

#[actix_rt::test]
async fn a_killed_worker_is_dropped_and_rejoins_when_restarted() {
    let mut cluster = TestCluster::start("wkill", 2).await;
    cluster.kill_worker(1).await;
    cluster.wait_for_workers(1, WAIT).await;
    assert_eq!(cluster.connected_workers().await, [cluster.worker_name(0)]);
    let name = cluster.worker_name(1);
    wait_for_log(&cluster.master_name(), &["connection with worker", &name, "closed"], WAIT).await;
    cluster.restart_worker(1).await;
    cluster.wait_for_workers(2, WAIT).await;
}

/// Starts a WorkerLink with `settings` against `addr` and waits for both sides' refusal lines.
async fn refused(
    master_name: &str,
    addr: std::net::SocketAddr,
    settings: wazuh_cluster_actors::ChannelSettings,
    reason: &str,
) {
    let name = settings.node_name.clone();
    let link = WorkerLink::new(Arc::new(settings), addr.to_string(), worker_services()).launch(Default::default());
    let m = wait_for_log(master_name, &["refused worker", &name, reason], WAIT).await;
    assert!(m.starts_with("WARN"), "{m}");
    let w = wait_for_log(&name, &["refused this worker", reason], WAIT).await;
    assert!(w.starts_with("ERROR"), "{w}");
    link.do_send(wazuh_cluster_actors::supervise::Kill);
}

fn cluster_addr(cluster: &TestCluster) -> std::net::SocketAddr {
    match &cluster.master().handle {
        NodeHandle::Master { cluster_addr, .. } => *cluster_addr,
        NodeHandle::Worker { .. } => panic!("not a master"),
    }
}

#[actix_rt::test]
async fn wrong_cluster_duplicate_name_incompatible_version_and_invalid_name_are_refused_in_both_logs() {
    let cluster = TestCluster::start("refuse", 1).await;
    let addr = cluster_addr(&cluster);
    let m = cluster.master_name();
    let base = |name: &str| cluster.hand_worker(name);

    let mut wrong_cluster = base("refuse-other-cluster");
    wrong_cluster.cluster_name = "production".into();
    refused(&m, addr, wrong_cluster, "wrong cluster name \"production\" (this cluster is \"test\")").await;

    // The worker's name with another identity is not that worker...
    let impostor = base(&cluster.worker_name(0));
    refused(&m, addr, impostor, "is admitted with another identity").await;
    // ...and with its identity (a copy of its key), a second live connection is refused.
    let mut duplicate = base(&cluster.worker_name(0));
    duplicate.identity = cluster.worker_identity(0);
    refused(&m, addr, duplicate, "is already connected").await;

    let mut future = base("refuse-future");
    future.versions = VersionRange { min: ProtocolVersion::new(3, 0), max: ProtocolVersion::new(3, 3) };
    refused(&m, addr, future, "incompatible protocol versions: peer speaks 3.0..=3.3, this node 2.1..=2.5").await;

    refused(&m, addr, base("bad.name"), "invalid node name \"bad.name\"").await;

    // The genuine worker was never disturbed.
    assert!(cluster.worker_connected(0).await);

    // One minor version ahead still joins.
    let mut next = base("refuse-next-minor");
    next.versions = VersionRange { min: ProtocolVersion::new(2, 5), max: ProtocolVersion::new(2, 6) };
    let joined = link::dial(&addr.to_string(), &next).await.expect("a node one minor version apart joins");
    assert_eq!(joined.version, ProtocolVersion::new(2, 5));
    // And 2.1 (before the users and the enrollment policy) too, at its version; 2.0 no longer.
    let mut previous = base("refuse-previous-minor");
    previous.versions = VersionRange { min: ProtocolVersion::new(2, 0), max: ProtocolVersion::new(2, 1) };
    let joined = link::dial(&addr.to_string(), &previous).await.expect("a 2.1 node joins");
    assert_eq!(joined.version, ProtocolVersion::new(2, 1));
    let mut older = base("refuse-older-minor");
    older.versions = VersionRange { min: ProtocolVersion::new(2, 0), max: ProtocolVersion::new(2, 0) };
    refused(&m, addr, older, "incompatible protocol versions: peer speaks 2.0..=2.0, this node 2.1..=2.5").await;
}

#[actix_rt::test]
async fn a_stale_connection_is_replaced_by_a_new_one_with_the_same_name() {
    let cluster = TestCluster::start("stale", 0).await;
    let addr = cluster_addr(&cluster);
    let s = cluster.hand_worker("stale-w");
    // A connection that authenticates and then goes silent, as after a power loss on its host.
    let ghost = link::dial(&addr.to_string(), &s).await.expect("dial");
    cluster.wait_for_workers(1, WAIT).await;
    // While it is fresh, a second connection under its name is refused...
    let live = link::dial(&addr.to_string(), &s).await;
    assert!(live.is_err(), "a live duplicate must be refused");
    // ...once it has missed a keep-alive, the newcomer replaces it.
    let dial = || async { link::dial(&addr.to_string(), &s).await.map_err(|e| e.to_string()) };
    let replaced = eventually("the stale connection is replaced", WAIT, dial).await;
    wait_for_log(&cluster.master_name(), &["replacing stale connection of worker stale-w"], WAIT).await;
    drop((ghost, replaced));
}

#[actix_rt::test]
async fn nodes_and_health_endpoints_answer_in_the_wazuh_envelope() {
    let mut cluster = TestCluster::start("api", 2).await;
    let (status, body) = api_get(cluster.master().api_addr, "/cluster/nodes").await;
    assert_eq!(status, 200);
    assert_eq!(body["error"], 0);
    assert_eq!(body["data"]["total_affected_items"], 3);
    let items = body["data"]["affected_items"].as_array().unwrap();
    assert_eq!(items[0]["name"], cluster.master_name());
    assert_eq!(items[0]["type"], "master");
    assert_eq!(items[1]["type"], "worker");
    assert_eq!(items[1]["version"], env!("CARGO_PKG_VERSION"));
    assert!(items[1]["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(items[1]["connected_since"].as_str().unwrap().ends_with('Z'));

    let (status, body) = api_get(cluster.master().api_addr, "/health").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("serving")));
    let worker_api = cluster.worker(0).api_addr;
    let (status, _) = api_get(worker_api, "/health").await;
    assert_eq!(status, 200);
    let (status, body) = api_get(worker_api, "/cluster/nodes").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["affected_items"][1]["type"], "master");
    let (status, body) = api_get(worker_api, "/nope").await;
    assert_eq!((status, body["error"].as_u64()), (404, Some(404)));

    // A worker without its master is not serving.
    cluster.kill_master().await;
    wait_until("the worker reports 503", WAIT, || async move { api_get(worker_api, "/health").await.0 == 503 }).await;
}

#[actix_rt::test]
async fn metrics_show_every_node_and_actor_in_prometheus_text() {
    let cluster = TestCluster::start("metrics", 2).await;
    let base = format!("http://{}", cluster.master().api_addr);
    let workers = [cluster.worker_name(0), cluster.worker_name(1)];
    let master = cluster.master_name();
    let scrape = move || {
        let base = base.clone();
        async move {
            actix_rt::task::spawn_blocking(move || {
                wazuh_multi_node::client::get(&base, "/metrics", Some(common::cluster::API_TOKEN))
            })
            .await
            .expect("join")
            .expect("http")
        }
    };
    // A sample's value, by its exact name and labels.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' '))?.parse().ok())
    }
    let expect = |text: &str| {
        workers
            .iter()
            .all(|w| value(text, &format!("wazuh_cluster_node_connected{{node=\"{w}\",type=\"worker\"}}")) == Some(1.0))
            && value(
                text,
                &format!("wazuh_cluster_actor_runs_total{{node=\"{master}\",actor=\"LocalIntegrity\",end=\"master\"}}"),
            )
            .is_some_and(|runs| runs >= 1.0)
    };
    wait_until("the master's /metrics lists both workers and its LocalIntegrity runs", WAIT, || {
        let scrape = scrape.clone();
        async move {
            let (status, text) = scrape().await;
            status == 200 && expect(&text)
        }
    })
    .await;
    let (_, text) = scrape().await;
    assert_eq!(value(&text, &format!("wazuh_cluster_registry_up{{node=\"{master}\"}}")), Some(1.0));
    assert!(text.contains("# TYPE wazuh_cluster_actor_restarts_total counter"));
    // Both ends of each worker's Integrity job are there, with their sync figures.
    for end in ["master", "worker"] {
        let series =
            format!("wazuh_cluster_actor_runs_total{{node=\"{}\",actor=\"Integrity\",end=\"{end}\"}}", workers[0]);
        assert!(value(&text, &series).is_some(), "no {series} in:\n{text}");
    }
}
