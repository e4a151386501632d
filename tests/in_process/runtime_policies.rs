//! The runtime's failure policies, end to end in one process over real sockets: a request server
//! answers a failed (or panicking) request with an error while the other requests in flight
//! complete; restarted jobs never receive a change twice; a panic is counted and the job serves
//! again.

use crate::common;
use wazuh_cluster_actors::jobs::runtime::InjectFault;

use common::cluster::TestCluster;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use wazuh_cluster_actors::jobs::runtime::FaultKind;
use wazuh_cluster_actors::master::{GetManifestDigest, ListWorkers, LocalJobs, MasterListener};
use wazuh_cluster_actors::worker::{GetLink, WorkerLink};
use wazuh_cluster_protocol::message::{ErrorCode, IntegrityCheck, JobReport, JobState};
use wazuh_cluster_protocol::{
    Envelope, Kind, MasterToWorker, MessageDecoder, MessageEncoder, RequestId, Role, WorkerToMaster,
};
use wazuh_multi_node::node::NodeHandle;

const WAIT: Duration = Duration::from_secs(10);

fn listener_of(cluster: &TestCluster) -> actix::Addr<MasterListener> {
    match &cluster.master().handle {
        NodeHandle::Master { listener, .. } => listener.clone(),
        NodeHandle::Worker { .. } => panic!("not a master"),
    }
}

fn link_of(cluster: &TestCluster, i: usize) -> actix::Addr<WorkerLink> {
    match &cluster.worker(i).handle {
        NodeHandle::Worker { link, .. } => link.clone(),
        NodeHandle::Master { .. } => panic!("not a worker"),
    }
}

fn job<'a>(jobs: &'a [JobReport], name: &str) -> &'a JobReport {
    jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job {name} in {jobs:?}"))
}

/// The master's end of the jobs of worker `name`.
async fn master_end(listener: &actix::Addr<MasterListener>, name: &str) -> Vec<JobReport> {
    let workers = listener.send(ListWorkers).await.expect("listener");
    workers.into_iter().find(|w| w.peer.node_name == name).map(|w| w.jobs).unwrap_or_default()
}

fn check(seq: u64) -> Envelope<WorkerToMaster> {
    Envelope::request(
        RequestId { origin: Role::Worker, seq },
        WorkerToMaster::IntegrityCheck(IntegrityCheck { manifest_digest: "nothing like it".into(), files: 0 }),
    )
}

#[actix_rt::test]
async fn a_failed_request_gets_an_error_reply_while_the_others_in_flight_complete() {
    // The hand-made worker below sends no keep-alives: the master's silence limit (three
    // intervals) must outlast the pauses of a loaded machine between its requests.
    let cluster = TestCluster::start_with("inflight", 0, &[("cluster.intervals.keepalive", "2s".into())]).await;
    let listener = listener_of(&cluster);
    wait_until("the master computed its manifest", WAIT, || {
        let listener = listener.clone();
        async move { listener.send(GetManifestDigest).await.ok().flatten().is_some() }
    })
    .await;
    // A worker speaking the protocol by hand, so that requests can be put in flight together.
    let NodeHandle::Master { cluster_addr, .. } = &cluster.master().handle else { panic!("master") };
    let s = cluster.hand_worker("inflight-w");
    let l = wazuh_cluster_actors::link::dial(&cluster_addr.to_string(), &s).await.expect("dial");
    let source = std::io::Cursor::new(l.read_buf).chain(l.read);
    let mut reader =
        tokio_util::codec::FramedRead::new(source, MessageDecoder::<MasterToWorker>::new(l.channel.opener));
    let mut writer =
        tokio_util::codec::FramedWrite::new(l.write, MessageEncoder::<WorkerToMaster>::new(l.channel.sealer));
    wait_until("the master registered the connection", WAIT, || {
        let listener = listener.clone();
        async move { !master_end(&listener, "inflight-w").await.is_empty() }
    })
    .await;

    // Sends `n` checks back to back (all in flight at once) and collects the answers by id.
    let mut next = 0u64;
    let mut round = |n: u64| {
        let ids: Vec<u64> = (next + 1..=next + n).collect();
        next += n;
        ids
    };
    async fn exchange<R, W>(reader: &mut R, writer: &mut W, ids: &[u64]) -> BTreeMap<u64, MasterToWorker>
    where
        R: futures_util::Stream<Item = Result<Envelope<MasterToWorker>, wazuh_cluster_protocol::ChannelError>> + Unpin,
        W: futures_util::Sink<Envelope<WorkerToMaster>, Error = wazuh_cluster_protocol::ChannelError> + Unpin,
    {
        for id in ids {
            writer.feed(check(*id)).await.expect("send");
        }
        writer.flush().await.expect("flush");
        let mut answers = BTreeMap::new();
        while answers.len() < ids.len() {
            let envelope = tokio::time::timeout(WAIT, reader.next()).await.expect("an answer in time");
            let envelope = envelope.expect("open").expect("decode");
            if let Kind::Response(id) = envelope.kind {
                answers.insert(id.seq, envelope.body);
            }
        }
        answers
    }

    // One injected failure: the first request is answered with an error, the other three with
    // their status, all of them while they were in flight together.
    let fault = |kind| InjectFault { worker: Some("inflight-w".into()), job: "Integrity".into(), kind, count: 1 };
    assert!(listener.send(fault(FaultKind::Fail)).await.unwrap());
    let ids = round(4);
    let answers = exchange(&mut reader, &mut writer, &ids).await;
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), ids, "every request answered");
    match &answers[&ids[0]] {
        MasterToWorker::Error(e) => {
            assert_eq!(e.code, ErrorCode::Internal);
            assert!(e.message.contains("injected fault"), "{e:?}");
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    for id in &ids[1..] {
        assert!(matches!(answers[id], MasterToWorker::IntegrityStatus(_)), "{:?}", answers[id]);
    }

    // One injected panic: caught, counted, answered with an error; the job serves on.
    assert!(listener.send(fault(FaultKind::Panic)).await.unwrap());
    let ids = round(3);
    let answers = exchange(&mut reader, &mut writer, &ids).await;
    match &answers[&ids[0]] {
        MasterToWorker::Error(e) => assert!(e.message.contains("panicked: injected panic"), "{e:?}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert!(ids[1..].iter().all(|id| matches!(answers[id], MasterToWorker::IntegrityStatus(_))));
    let ids = round(1);
    let answers = exchange(&mut reader, &mut writer, &ids).await;
    assert!(matches!(answers[&ids[0]], MasterToWorker::IntegrityStatus(_)), "the job serves again");

    let jobs = master_end(&listener, "inflight-w").await;
    let integrity = job(&jobs, "Integrity");
    assert_eq!((integrity.failures, integrity.panics, integrity.restarts), (2, 1, 0), "{integrity:?}");
    assert_eq!(integrity.runs, 6);
    assert_eq!(integrity.state, JobState::Running);
    wait_for_log(&cluster.master_name(), &["job Integrity for inflight-w: a request failed: injected fault"], WAIT)
        .await;
}

/// A worker's figure of job `name`.
async fn worker_figure(link: &actix::Addr<WorkerLink>, name: &str, figure: &str) -> u64 {
    let info = link.send(GetLink).await.ok().flatten().expect("connected");
    job(&info.jobs, name).figure(figure).unwrap_or(0)
}

async fn local_figure(listener: &actix::Addr<MasterListener>, name: &str, figure: &str) -> u64 {
    let jobs = listener.send(LocalJobs).await.expect("listener");
    job(&jobs, name).figure(figure).unwrap_or(0)
}

#[actix_rt::test]
async fn restarted_jobs_never_receive_a_change_twice() {
    let cluster = TestCluster::start("dedup", 1).await;
    let listener = listener_of(&cluster);
    let link = link_of(&cluster, 0);
    let worker = cluster.worker_name(0);
    let master_dir = cluster.dir.path().join(cluster.master_name());
    let worker_dir = cluster.dir.path().join(&worker);

    // Three restarts of every job that keeps a receiver or publishes: the master's shared jobs
    // (failed runs), the pusher of the agent table and the worker's Integrity (panics).
    for job in ["LocalIntegrity", "LocalAgentGroups"] {
        let fault = InjectFault { worker: None, job: job.into(), kind: FaultKind::Fail, count: 3 };
        assert!(listener.send(fault).await.unwrap());
    }
    let fault =
        InjectFault { worker: Some(worker.clone()), job: "AgentGroupsSend".into(), kind: FaultKind::Panic, count: 3 };
    assert!(listener.send(fault).await.unwrap());
    let fault = InjectFault { worker: None, job: "Integrity".into(), kind: FaultKind::Panic, count: 3 };
    assert!(link.send(fault).await.unwrap());
    // Agent-table changes make the pusher push (and panic, three times).
    for i in 0..3 {
        let line = format!("OSSEC A:'dedup-{i}'\n");
        let reply = enroll_line(cluster.master().enrollment_addr, &line).await;
        assert!(reply.starts_with("OSSEC K:"), "{reply}");
    }
    wait_until("every injected restart happened and the jobs run again", WAIT, || {
        let (listener, link, worker) = (listener.clone(), link.clone(), worker.clone());
        async move {
            let local = listener.send(LocalJobs).await.unwrap_or_default();
            let ours = master_end(&listener, &worker).await;
            let theirs = link.send(GetLink).await.ok().flatten().map(|i| i.jobs).unwrap_or_default();
            let done = |j: Option<&JobReport>| j.is_some_and(|j| j.restarts >= 3 && j.state == JobState::Running);
            local.iter().filter(|j| done(Some(j))).count() == 2
                && done(ours.iter().find(|j| j.name == "AgentGroupsSend"))
                && done(theirs.iter().find(|j| j.name == "Integrity"))
        }
    })
    .await;
    let theirs = link.send(GetLink).await.unwrap().expect("connected").jobs;
    assert_eq!(job(&theirs, "Integrity").panics, 3);
    wait_until("the worker holds the 3 agents", WAIT, || {
        let dir = worker_dir.clone();
        async move { std::fs::read_to_string(dir.join("etc/client.keys")).is_ok_and(|k| k.lines().count() == 3) }
    })
    .await;

    // One receiver per connection (plus the master's agent hub for files), whatever restarted.
    assert_eq!(local_figure(&listener, "LocalIntegrity", "subscribers").await, 2);
    assert_eq!(local_figure(&listener, "LocalAgentGroups", "subscribers").await, 1);

    // One file change reaches the worker exactly once per publication.
    let (announced, published) = (
        worker_figure(&link, "Integrity", "announcements").await,
        local_figure(&listener, "LocalIntegrity", "publications").await,
    );
    std::fs::create_dir_all(master_dir.join("etc/rules")).expect("mkdir");
    std::fs::write(master_dir.join("etc/rules/once.xml"), b"<group name=\"once\"/>\n").expect("write");
    wait_until("the file reached the worker", WAIT, || {
        let dir = worker_dir.clone();
        async move { dir.join("etc/rules/once.xml").exists() }
    })
    .await;
    // Time for any duplicate to arrive (there would be one per extra receiver, at once).
    cluster.sync_rounds_pass(0, 2).await;
    let published = local_figure(&listener, "LocalIntegrity", "publications").await - published;
    let announced = worker_figure(&link, "Integrity", "announcements").await - announced;
    assert!(published >= 1);
    assert_eq!(announced, published, "each change announced to the worker exactly once");

    // One agent-table change is pushed once: the worker applies one update.
    let updates = worker_figure(&link, "AgentGroupsSend", "updates").await;
    let reply = enroll_line(cluster.master().enrollment_addr, "OSSEC A:'dedup-last'\n").await;
    assert!(reply.starts_with("OSSEC K:"), "{reply}");
    wait_until("the worker holds the 4th agent", WAIT, || {
        let dir = worker_dir.clone();
        async move { std::fs::read_to_string(dir.join("etc/client.keys")).is_ok_and(|k| k.contains("dedup-last")) }
    })
    .await;
    cluster.sync_rounds_pass(0, 2).await;
    assert_eq!(worker_figure(&link, "AgentGroupsSend", "updates").await - updates, 1);
}

/// Sends one enrollment line over TLS and returns the reply.
async fn enroll_line(addr: std::net::SocketAddr, line: &str) -> String {
    let connector = wazuh_cluster_tools::sim::connector().expect("tls");
    wazuh_cluster_tools::sim::enroll_one(connector, addr.to_string(), line.to_string()).await.expect("enroll")
}

#[actix_rt::test]
async fn an_idle_master_leaves_its_registry_idle_after_changes() {
    let cluster = TestCluster::start("idle", 1).await;
    let NodeHandle::Master { registry, .. } = &cluster.master().handle else { panic!("master") };
    // Changes move the registry's sequence: the jobs following it must wake once per change, not
    // for ever after.
    for i in 0..5 {
        let reply = enroll_line(cluster.master().enrollment_addr, &format!("OSSEC A:'idle-{i}'\n")).await;
        assert!(reply.starts_with("OSSEC K:"), "{reply}");
    }
    let worker_keys = cluster.dir.path().join(cluster.worker_name(0)).join("etc/client.keys");
    wait_until("the worker holds the 5 agents", WAIT, || {
        let path = worker_keys.clone();
        async move { std::fs::read_to_string(path).is_ok_and(|k| k.lines().count() == 5) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = registry.commands_run();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = registry.commands_run() - before;
    // The periodic jobs (every 300 ms here) and the worker's status rounds ask a few dozen
    // times a second at most; a job spinning on the registry asks thousands of times.
    assert!(per_second < 100, "{per_second} registry commands in a second of idling");
}
