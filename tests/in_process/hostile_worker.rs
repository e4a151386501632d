//! A hostile worker: a node built from this project's library that holds the cluster key and
//! sends the master what it likes through its own link. The master must re-check every field.

use crate::common;

use common::cluster::TestCluster;
use common::{eventually, wait_for, wait_until};
use std::collections::BTreeSet;
use wazuh_cluster_actors::worker::Forward;
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::EnrollForward;
use wazuh_multi_node::node::NodeHandle;

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn keys_file(cluster: &TestCluster, node: &str) -> BTreeSet<String> {
    let path = cluster.dir.path().join(node).join("etc/client.keys");
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

fn forward(name: &str, ip: &str, groups: &[&str]) -> EnrollForward {
    EnrollForward {
        token: format!("hostile-{}", wazuh_cluster_actors::backoff::random_u64()),
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ip: ip.into(),
        key_hash: None,
        version: None,
        ..EnrollForward::default()
    }
}

/// Forwarded enrollments with fields that would break a client.keys line, or that the enrollment
/// endpoint would refuse, are refused by the master: client.keys stays as it was on every node.
#[actix_rt::test]
async fn a_forged_enrollment_cannot_write_to_client_keys() {
    let cluster = TestCluster::start("hostile-enroll", 1).await;
    let NodeHandle::Worker { link, .. } = &cluster.worker(0).handle else { panic!("not a worker") };
    let (master, worker) = (cluster.master_name(), cluster.worker_name(0));
    let before = (keys_file(&cluster, &master), keys_file(&cluster, &worker));
    let injected = format!("pwn a\n777 injected any {}\n#", "ab".repeat(32));
    let cases = [
        (forward(&injected, "any", &[]), "newline in the name"),
        (forward("esc\u{1b}[31mred", "any", &[]), "escape in the name"),
        (forward("bell\u{7}", "any", &[]), "bell in the name"),
        (forward("web-01", "999.1.1.1; rm -rf /", &[]), "shell in the address"),
        (forward("web-02", "any injected", &[]), "space in the address"),
        (forward("web-03", "any", &["default\n777"]), "newline in a group"),
    ];
    for (f, what) in cases {
        let result = link
            .send(Forward { request: f, local_password: None })
            .await
            .expect("the link")
            .expect("an answer from the master");
        let refused = result.outcome.err().unwrap_or_else(|| panic!("{what}: enrolled"));
        assert!(
            matches!(
                refused,
                EnrollError::InvalidName(_) | EnrollError::InvalidIp(_) | EnrollError::InvalidGroupName(_)
            ),
            "{what}: {refused:?}"
        );
    }
    // A well-formed forward still works, so the link was usable all along.
    let ok = link
        .send(Forward { request: forward("fine-agent", "any", &[]), local_password: None })
        .await
        .expect("link")
        .expect("answer");
    let entry = ok.outcome.expect("a good forward is enrolled");
    let both = || async {
        let (m, w) = (keys_file(&cluster, &master), keys_file(&cluster, &worker));
        if m.len() == before.0.len() + 1 && w == m {
            Ok(m)
        } else {
            Err(format!("client.keys: {m:?} / {w:?}"))
        }
    };
    let m = eventually("the new key on the master and the worker", WAIT, both).await;
    assert!(m.iter().all(|l| !l.contains("injected") && l.split(' ').count() == 4), "{m:?}");
    assert!(m.iter().any(|l| l.starts_with(&format!("{:03} fine-agent ", entry.id))));
}

/// The cluster key alone is no administrator: a change a worker forwards without the master's API
/// credential is refused and changes nothing; with it, the change is applied.
#[actix_rt::test]
async fn a_worker_cannot_change_the_registry_without_the_callers_credential() {
    use wazuh_cluster_actors::worker::ForwardAdmin;
    use wazuh_cluster_protocol::message::{AdminError, AdminRequest};
    let cluster = TestCluster::start("hostile-admin", 1).await;
    let NodeHandle::Worker { link, .. } = &cluster.worker(0).handle else { panic!("not a worker") };
    let ok = link
        .send(Forward { request: forward("kept-agent", "any", &[]), local_password: None })
        .await
        .expect("link")
        .expect("answer");
    let id = ok.outcome.expect("enrolled").id;
    for credential in ["", "guessed-token-0123456789", &common::cluster::API_TOKEN[1..]] {
        let request = AdminRequest::DeleteAgent { id };
        let result = link
            .send(ForwardAdmin { request, credential: credential.to_string() })
            .await
            .expect("link")
            .expect("an answer from the master");
        assert_eq!(result.outcome, Err(AdminError::Unauthorized), "credential {credential:?}");
    }
    let NodeHandle::Master { registry, .. } = &cluster.master().handle else { panic!("not a master") };
    let still = registry.run(move |r| r.rows(Some(id))).await.expect("rows");
    assert_eq!(still.len(), 1, "the agent was deleted without a credential");
    common::wait_for_log(
        &cluster.master_name(),
        &["without a valid API credential"],
        std::time::Duration::from_secs(5),
    )
    .await;
    // The operator's credential, carried by the worker: applied.
    let request = AdminRequest::DeleteAgent { id };
    let credential = common::cluster::API_TOKEN.to_string();
    let result = link.send(ForwardAdmin { request, credential }).await.expect("link").expect("answer");
    assert_eq!(result.outcome, Ok(()));
    assert!(registry.run(move |r| r.rows(Some(id))).await.expect("rows").is_empty());
}

/// The cluster key alone does not make a worker: a node the master does not know needs a join
/// token; a revoked worker is disconnected and cannot come back, under its name or another, with
/// or without a token, while the rest of the cluster keeps its key.
#[actix_rt::test]
async fn a_worker_without_a_join_token_is_refused_and_a_revoked_worker_cannot_reconnect() {
    use wazuh_cluster_actors::link::{self, LinkError};
    use wazuh_cluster_actors::master::RevokeWorker;
    use wazuh_cluster_protocol::Refusal;
    let cluster = TestCluster::start("revoke", 2).await;
    let NodeHandle::Master { listener, cluster_addr, .. } = &cluster.master().handle else { panic!("master") };
    let addr = cluster_addr.to_string();

    // The cluster key without a token: refused, with the reason, before any message.
    let mut intruder = cluster.hand_worker("intruder");
    intruder.join_token = None;
    match link::dial(&addr, &intruder).await {
        Err(LinkError::Refused { refusal: Refusal::NotAdmitted { reason, .. }, .. }) => {
            assert!(reason.contains("join token"), "{reason}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|l| l.peer)),
    }
    // A forged token (right id, wrong secret) gets past the hello, and no further.
    let mut forged = cluster.hand_worker("forger");
    let id = forged.join_token.as_ref().expect("token").id.clone();
    forged.join_token = Some(wazuh_cluster_protocol::identity::JoinToken::from_parts(&id, &[9; 32]).expect("token"));
    if let Ok(l) = link::dial(&addr, &forged).await {
        // The master closes the connection once it checked message 3.
        let mut read = l.read;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut read, &mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the connection must be closed: {n:?}");
    }
    common::wait_for_log(&cluster.master_name(), &["closing connection of forger", "join token proof"], WAIT).await;
    assert!(!cluster.connected_workers().await.contains(&"forger".to_string()));

    // Revoke worker 1: its connection closes, and it stays out.
    let victim = cluster.worker_name(0);
    let revoked = listener.send(RevokeWorker { name: victim.clone() }).await.expect("master").expect("revoke");
    assert!(revoked.is_some());
    common::wait_for_log(&victim, &["refused this worker", "was revoked"], WAIT).await;
    assert!(!cluster.connected_workers().await.contains(&victim));
    // With a copy of its key, under its name or a new one, even with a fresh token: refused.
    for name in [victim.as_str(), "renamed"] {
        let mut again = cluster.hand_worker(name);
        again.identity = cluster.worker_identity(0);
        match link::dial(&addr, &again).await {
            Err(LinkError::Refused { refusal: Refusal::Revoked { .. }, .. }) => {}
            other => panic!("{name}: expected a revocation refusal, got {:?}", other.map(|l| l.peer)),
        }
    }
    // The other worker was never disturbed and still serves.
    assert!(cluster.worker_connected(1).await);
    // Over the next sync rounds of the one left (the revoked ones keep dialling meanwhile).
    cluster.sync_rounds_pass(1, 5).await;
    assert_eq!(cluster.connected_workers().await, vec![cluster.worker_name(1)]);
}

/// A status hijack through the wire: an admitted worker reports an agent that another worker holds,
/// with a keep-alive time from the future and forged fields. The master stores none of it (the
/// first live claim holds; times are capped at its clock) and says so naming both workers; the
/// agent stays active on the worker that holds its session.
#[actix_rt::test]
async fn a_worker_cannot_report_an_agent_another_worker_holds() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use wazuh_cluster_protocol::message::{AgentInfoBatch, AgentInfoUpdate, Envelope, Kind, MasterToWorker};
    use wazuh_cluster_protocol::{MessageDecoder, MessageEncoder, RequestId, Role, WorkerToMaster};
    use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key, read_payload, SimAgent};

    let cluster = TestCluster::start("hijack", 1).await;
    let holder = cluster.worker_name(0);
    let reply =
        enroll_one(connector().expect("tls"), cluster.worker(0).enrollment_addr.to_string(), "OSSEC A:'held'\n".into())
            .await
            .expect("enroll");
    let mut agent = SimAgent::from_key_line(&parse_key(&reply).expect("key")).expect("agent");
    let mut s = tokio::net::TcpStream::connect(cluster.worker(0).agents_addr).await.expect("connect");
    s.write_all(&agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}")).await.expect("startup");
    read_payload(&mut s).await.expect("ack");
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
    let id: u32 = agent.id.parse().expect("id");
    let NodeHandle::Master { registry, .. } = &cluster.master().handle else { panic!("master") };
    let row = || async move {
        let rows = registry.run(move |r| r.rows(Some(id))).await.expect("rows");
        rows.into_iter().next().map(|r| (r.status, r.node_name, r.version, r.peer_ip))
    };
    let active = || async { row().await.map(|r| (r.0, r.1)) == Some(("active".into(), holder.clone())) };
    wait_until(&format!("the agent shows active on {holder}"), WAIT, active).await;
    let before = row().await;

    // The hostile worker: admitted (it has a join token), speaking the protocol by hand.
    let l = wazuh_cluster_actors::link::dial(
        &match &cluster.master().handle {
            NodeHandle::Master { cluster_addr, .. } => cluster_addr.to_string(),
            _ => unreachable!(),
        },
        &cluster.hand_worker("evil3"),
    )
    .await
    .expect("dial");
    let source = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(l.read_buf), l.read);
    let mut reader =
        tokio_util::codec::FramedRead::new(source, MessageDecoder::<MasterToWorker>::new(l.channel.opener));
    let mut writer =
        tokio_util::codec::FramedWrite::new(l.write, MessageEncoder::<WorkerToMaster>::new(l.channel.sealer));
    let forged = |status: &str| AgentInfoUpdate {
        id,
        status: status.into(),
        last_keepalive_ms: Some(9_000_000_000_000_000_000),
        version: Some("Wazuh v9.9.9".into()),
        info: None,
        group_config_status: Some("synced".into()),
        peer_ip: Some("10.6.6.6".into()),
    };
    for (seq, status) in [(1u64, "active"), (2, "disconnected")] {
        let body = WorkerToMaster::AgentInfo(AgentInfoBatch { updates: vec![forged(status)] });
        writer.send(Envelope::request(RequestId { origin: Role::Worker, seq }, body)).await.expect("send");
        let ack = loop {
            let envelope =
                tokio::time::timeout(WAIT, reader.next()).await.expect("an answer").expect("open").expect("decode");
            if let (Kind::Response(_), MasterToWorker::AgentInfoAck(ack)) = (envelope.kind, envelope.body) {
                break ack;
            }
        };
        // Taken in (answered at once); what counts is what the registry makes of it.
        assert_eq!((ack.stored, ack.unknown), (1, 0), "{status}");
        let mut inbox = cluster.master().handle.status_inbox().await.expect("the master's status inbox");
        let refused = |f: &wazuh_cluster_actors::jobs::master::statuses::Figures| f.stale >= seq && f.waiting == 0;
        wait_for(&format!("the {status} report refused as stale"), WAIT, &mut inbox, refused).await;
        assert_eq!(row().await, before, "{status}: the agent's row changed");
    }
    common::wait_for_log(&cluster.master_name(), &["worker evil3 reports agent", &holder, "refused"], WAIT).await;
    assert_eq!(row().await, before, "the agent's row changed");
    // The real worker's next reports are still stored.
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
    let stored = || async { row().await.map(|r| (r.0, r.1)) == Some(("active".into(), holder.clone())) };
    wait_until("the real worker's report is stored", WAIT, stored).await;
}

/// A holder of the cluster key posing as the master (another identity on the master's address) gets
/// no worker: each worker pinned the real master's identity at its first connection and refuses,
/// saying why; the real master back on its address is followed again.
#[actix_rt::test]
async fn a_worker_refuses_a_master_with_another_identity() {
    let mut cluster = TestCluster::start("pinned", 1).await;
    let worker = cluster.worker_name(0);
    cluster.start_impostor_master().await;
    common::wait_for_log(&worker, &["the master's identity changed", "remove"], WAIT).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(cluster.connected_workers().await.is_empty(), "a worker followed the impostor");
    cluster.kill_master().await;
    cluster.restart_master().await;
    cluster.wait_for_workers(1, WAIT).await;
}

/// The API's users travel with the agent table to workers of protocol 2.2 only: a worker one minor
/// version behind (2.1) gets the agents and none of the users (it could not read them), and a 2.2
/// worker gets both.
#[actix_rt::test]
async fn the_users_go_to_workers_of_protocol_2_2_and_not_to_2_1() {
    use futures_util::{SinkExt, StreamExt};
    use wazuh_cluster_protocol::message::{AgentChange, AgentGroupsAck, Envelope, Kind, MasterToWorker};
    use wazuh_cluster_protocol::version::VersionRange;
    use wazuh_cluster_protocol::{MessageDecoder, MessageEncoder, ProtocolVersion, WorkerToMaster};

    let cluster = TestCluster::start("userver", 0).await;
    let _agent = wazuh_cluster_tools::sim::enroll_one(
        wazuh_cluster_tools::sim::connector().expect("tls"),
        cluster.master().enrollment_addr.to_string(),
        "OSSEC A:'versioned'\n".into(),
    )
    .await
    .expect("enroll");
    let NodeHandle::Master { cluster_addr, .. } = &cluster.master().handle else { panic!("master") };
    for (name, max, users_expected) in [("old-minor", 1u16, 0usize), ("this-minor", 2, 2)] {
        let mut settings = cluster.hand_worker(name);
        settings.versions = VersionRange { min: ProtocolVersion::new(2, 1), max: ProtocolVersion::new(2, max) };
        let l = wazuh_cluster_actors::link::dial(&cluster_addr.to_string(), &settings).await.expect("dial");
        assert_eq!(l.version, ProtocolVersion::new(2, max));
        let source = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(l.read_buf), l.read);
        let mut reader =
            tokio_util::codec::FramedRead::new(source, MessageDecoder::<MasterToWorker>::new(l.channel.opener));
        let mut writer =
            tokio_util::codec::FramedWrite::new(l.write, MessageEncoder::<WorkerToMaster>::new(l.channel.sealer));
        // "I hold nothing": the master pushes the whole table.
        let empty = AgentGroupsAck { seq: 0, global_hash: String::new(), generation: 0 };
        writer.send(Envelope::notify(WorkerToMaster::AgentGroupsAck(empty))).await.expect("send");
        let update = loop {
            let envelope =
                tokio::time::timeout(WAIT, reader.next()).await.expect("a push").expect("open").expect("decode");
            if let (Kind::Request(_), MasterToWorker::AgentGroups(update)) = (envelope.kind, envelope.body) {
                break update;
            }
        };
        let users = update.changes.iter().filter(|c| c.is_user()).count();
        let agents = update.changes.iter().filter(|c| matches!(c, AgentChange::Added(_))).count();
        assert_eq!((agents, users), (1, users_expected), "{name} (protocol 2.{max}): {:?}", update.changes);
    }
}
