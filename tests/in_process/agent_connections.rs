//! Agent connections (TCP 1514) on a master and two workers, in one process with real sockets:
//! the conversation, statuses reaching the master, deletion, merged.mg pushes and bad input.

use crate::common;

use common::cluster::{TestCluster, API_TOKEN};
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key, read_payload, SimAgent};

const WAIT: Duration = Duration::from_secs(10);

async fn enroll(addr: std::net::SocketAddr, line: &str) -> String {
    let reply = enroll_one(connector().expect("tls"), addr.to_string(), format!("{line}\n")).await.expect("enroll");
    parse_key(&reply).unwrap_or_else(|| panic!("{reply}"))
}

async fn api(addr: std::net::SocketAddr, method: &'static str, path: String) -> (u16, serde_json::Value) {
    let base = format!("http://{addr}");
    let (status, text) = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::request(&base, method, &path, Some(API_TOKEN), None)
    })
    .await
    .expect("join")
    .expect("http");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

async fn master_agent(cluster: &TestCluster, id: &str) -> serde_json::Value {
    let (_, body) = api(cluster.master().api_addr, "GET", format!("/agents/{id}")).await;
    body["data"]["affected_items"][0].clone()
}

/// Connects `agent` and sends its startup; returns the stream after checking the first frame.
async fn start_agent(agent: &mut SimAgent, addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}")).await.expect("startup");
    let payload = match read_payload(&mut s).await {
        Ok(p) => p,
        Err(e) => panic!("no first frame ({e}); logs: {:?}", find_logs("", &["agent connection"])),
    };
    let first = agent.open(&payload).expect("decrypt");
    assert_eq!(first, b"#!-agent ack ", "the ack is the first frame");
    s
}

/// Reads manager messages until `pred` matches one, or the connection ends (`None`).
async fn read_until(agent: &SimAgent, s: &mut TcpStream, pred: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    loop {
        let payload = tokio::time::timeout(WAIT, read_payload(s)).await.expect("no frame in time").ok()?;
        let text = agent.open(&payload).expect("decrypt");
        if pred(&text) {
            return Some(text);
        }
    }
}

async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was not closed within {limit:?}"),
        }
    }
}

#[actix_rt::test]
async fn an_agent_on_a_worker_is_active_on_the_master_and_deleting_it_closes_its_connection() {
    init_logs();
    let cluster = TestCluster::start("ac", 2).await;
    cluster.wait_for_workers(2, WAIT).await;
    let line = enroll(cluster.worker(0).enrollment_addr, "OSSEC A:'ac-web'").await;
    let mut agent = SimAgent::from_key_line(&line).expect("key line");
    // The replica has the key by the time enrollment answered.
    let mut s = start_agent(&mut agent, cluster.worker(1).agents_addr).await;
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keepalive");
    read_until(&agent, &mut s, |t| t == b"#!-agent ack ").await.expect("keep-alive acknowledged");
    let id = agent.id.clone();
    wait_until("the master shows the agent active", WAIT, || async {
        let a = master_agent(&cluster, &id).await;
        a["status"] == "active" && a["node_name"] == cluster.worker_name(1).as_str()
    })
    .await;
    let a = master_agent(&cluster, &id).await;
    assert_eq!(a["os"]["name"], "Debian GNU/Linux");
    assert_eq!(a["os"]["platform"], "debian");
    assert_eq!(a["os"]["version"], "12");
    assert_eq!(a["version"], "Wazuh v4.14.7");
    assert_eq!(a["labels"]["env"], "sim");
    // An event goes to the worker's archive.
    s.write_all(&agent.frame(b"1:/var/log/auth.log:sshd[7]: Accepted publickey")).await.expect("event");
    let archive = cluster.dir.path().join(cluster.worker_name(1)).join("var/archives/events.jsonl");
    wait_until("the event is archived", WAIT, || async {
        std::fs::read_to_string(&archive).unwrap_or_default().contains("Accepted publickey")
    })
    .await;
    // Deleted on the master: its worker closes the connection within a second.
    let t = Instant::now();
    let (status, _) = api(cluster.master().api_addr, "DELETE", format!("/agents/{id}")).await;
    assert_eq!(status, 200);
    let took = t.elapsed() + closed_within(&mut s, Duration::from_secs(5)).await;
    println!("deleted agent's connection closed {} ms after the DELETE", took.as_millis());
    assert!(took < Duration::from_secs(5));
    wait_for_log(&cluster.worker_name(1), &["deleted or re-keyed", &id], WAIT).await;
    // It cannot come back: its key is gone everywhere.
    let mut s = TcpStream::connect(cluster.worker(1).agents_addr).await.expect("connect");
    s.write_all(&agent.frame(b"#!-agent startup ")).await.expect("write");
    closed_within(&mut s, WAIT).await;
    let (status, _) = api(cluster.master().api_addr, "GET", format!("/agents/{id}")).await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn changing_a_group_file_on_the_master_pushes_the_new_merged_mg() {
    init_logs();
    let cluster = TestCluster::start_with("push", 1, &[("cluster.intervals.integrity", "1s".into())]).await;
    cluster.wait_for_workers(1, WAIT).await;
    let line = enroll(cluster.master().enrollment_addr, "OSSEC A:'push-a'").await;
    let mut agent = SimAgent::from_key_line(&line).expect("key line");
    let mut s = start_agent(&mut agent, cluster.worker(0).agents_addr).await;
    // Its keep-alive says it has no merged.mg: the worker pushes the default group's.
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keepalive");
    let up = read_until(&agent, &mut s, |t| t.starts_with(b"#!-up file ")).await.expect("a push");
    let first_md5 = String::from_utf8_lossy(&up[11..43]).to_string();
    let mut data = Vec::new();
    loop {
        let text = read_until(&agent, &mut s, |_| true).await.expect("chunk");
        if text == b"#!-close file " {
            break;
        }
        assert!(text.len() <= 900, "chunks are at most 900 bytes");
        data.extend(text);
    }
    let got: String = {
        use md5::{Digest, Md5};
        Md5::digest(&data).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(got, first_md5);
    assert!(String::from_utf8_lossy(&data).starts_with("#default\n"));
    agent.merged_sum = first_md5.clone();
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keepalive");
    // A new agent.conf on the master reaches the worker and the agent, without a keep-alive.
    let conf = cluster.dir.path().join(cluster.master_name()).join("etc/shared/default/agent.conf");
    let t = Instant::now();
    std::fs::write(&conf, "<agent_config><labels><label key=\"x\">2</label></labels></agent_config>\n").expect("write");
    // (A repeat of the first push may come first, under load: the new file is what is awaited.)
    let first = first_md5.clone();
    let up =
        read_until(&agent, &mut s, move |t| t.starts_with(b"#!-up file ") && t.get(11..43) != Some(first.as_bytes()))
            .await
            .expect("a second push");
    println!("group file change pushed to the agent in {} ms", t.elapsed().as_millis());
    assert_ne!(String::from_utf8_lossy(&up[11..43]), first_md5);
}

#[actix_rt::test]
async fn bad_agent_input_is_refused_and_logged() {
    init_logs();
    let cluster = TestCluster::start_with("bad", 1, &[("agents.stall_timeout", "300ms".into())]).await;
    cluster.wait_for_workers(1, WAIT).await;
    let node = cluster.worker_name(0);
    let addr = cluster.worker(0).agents_addr;
    let line = enroll(cluster.master().enrollment_addr, "OSSEC A:'bad-a'").await;
    let mut agent = SimAgent::from_key_line(&line).expect("key line");

    // A frame for an agent id nobody has.
    let mut fake = SimAgent::from_key_line(&format!("977 ghost any {}", "ab".repeat(32))).expect("line");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&fake.frame(b"#!-agent startup ")).await.expect("write");
    closed_within(&mut s, WAIT).await;
    wait_for_log(&node, &["unknown agent id 977"], WAIT).await;

    // A length over 64 KiB.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&65537u32.to_le_bytes()).await.expect("write");
    closed_within(&mut s, WAIT).await;
    wait_for_log(&node, &["65537", "above the limit"], WAIT).await;

    // A length header, then nothing.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&100u32.to_le_bytes()).await.expect("write");
    closed_within(&mut s, WAIT).await;
    wait_for_log(&node, &["started and not finished"], WAIT).await;

    // Garbage in a well-formed frame.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut garbage = format!("!{}!#AES:", agent.id).into_bytes();
    garbage.extend([7u8; 32]);
    s.write_all(&wazuh_cluster_protocol::agent::secure::frame(&garbage)).await.expect("write");
    closed_within(&mut s, WAIT).await;
    wait_for_log(&node, &["cannot decrypt a frame for agent bad-a"], WAIT).await;

    // `#ping` is answered in clear, and the connection stays.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&wazuh_cluster_protocol::agent::secure::frame(b"#ping")).await.expect("write");
    assert_eq!(read_payload(&mut s).await.expect("pong"), b"#pong");

    // A second live connection for the same agent is refused with #!-err; the first goes on.
    let mut first = start_agent(&mut agent, addr).await;
    let mut second = TcpStream::connect(addr).await.expect("connect");
    second.write_all(&agent.frame(b"#!-agent startup ")).await.expect("write");
    let err = agent.open(&read_payload(&mut second).await.expect("an answer")).expect("decrypt");
    assert!(err.starts_with(b"#!-err "), "{}", String::from_utf8_lossy(&err));
    closed_within(&mut second, WAIT).await;
    first.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keepalive");
    read_until(&agent, &mut first, |t| t == b"#!-agent ack ").await.expect("the first connection still works");

    // An agent registered with one address, connecting from another.
    let line = enroll(cluster.master().enrollment_addr, "OSSEC A:'bad-ip' IP:'10.9.8.7'").await;
    let mut pinned = SimAgent::from_key_line(&line).expect("line");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&pinned.frame(b"#!-agent startup ")).await.expect("write");
    closed_within(&mut s, WAIT).await;
    wait_for_log(&node, &["registered with IP 10.9.8.7, not 127.0.0.1"], WAIT).await;
}

#[actix_rt::test]
async fn the_master_can_ask_agents_on_a_worker_to_reconnect() {
    init_logs();
    let cluster = TestCluster::start("rc", 1).await;
    cluster.wait_for_workers(1, WAIT).await;
    let line = enroll(cluster.worker(0).enrollment_addr, "OSSEC A:'rc-a'").await;
    let mut agent = SimAgent::from_key_line(&line).expect("key line");
    let mut s = start_agent(&mut agent, cluster.worker(0).agents_addr).await;
    // As Wazuh's API: only an active agent is asked (one that sent a keep-alive).
    let path = format!("/agents/reconnect?agents_list={}&node={}", agent.id, cluster.worker_name(0));
    let (_, body) = api(cluster.master().api_addr, "PUT", path.clone()).await;
    assert_eq!(body["data"]["failed_items"][0]["error"]["code"], 1707, "{body}");
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
    let id = agent.id.clone();
    wait_until("the master shows the agent active", WAIT, || async {
        master_agent(&cluster, &id).await["status"] == "active"
    })
    .await;
    let (status, body) = api(cluster.master().api_addr, "PUT", path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["affected_items"], serde_json::json!([agent.id]), "{body}");
    read_until(&agent, &mut s, |t| t == b"#!-force_reconnect").await.expect("asked to reconnect");
}

/// A connection that says nothing for `agents.disconnection_time` is closed; one that keeps
/// talking stays open however long it lives (its silence timer is moved, not fired).
#[actix_rt::test]
async fn a_silent_connection_is_closed_and_a_talking_one_is_not() {
    init_logs();
    let cluster = TestCluster::start_with("quiet", 1, &[("agents.disconnection_time", "1s".into())]).await;
    cluster.wait_for_workers(1, WAIT).await;
    let node = cluster.worker_name(0);
    let addr = cluster.worker(0).agents_addr;
    let line = enroll(cluster.master().enrollment_addr, "OSSEC A:'quiet-a'").await;
    let mut talker = SimAgent::from_key_line(&line).expect("key line");
    let line = enroll(cluster.master().enrollment_addr, "OSSEC A:'quiet-b'").await;
    let mut silent = SimAgent::from_key_line(&line).expect("key line");

    let mut t = start_agent(&mut talker, addr).await;
    let mut s = start_agent(&mut silent, addr).await;
    let started = Instant::now();
    // Keep-alives every 300 ms for three silence limits.
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.write_all(&talker.frame(talker.keepalive_text().as_bytes())).await.expect("keep-alive");
        read_until(&talker, &mut t, |m| m == b"#!-agent ack ").await.expect("the talking agent was cut off");
    }
    // The silent one was closed meanwhile, for its silence.
    closed_within(&mut s, WAIT).await;
    wait_for_log(&node, &["quiet-b", "silent for"], WAIT).await;
    assert!(find_logs(&node, &["quiet-a", "closing"]).is_empty(), "the talking agent was closed");
}

/// With `agents.enforce_counters`, a frame captured on the wire and sent again on a new connection
/// is refused (the node keeps each agent's last counters, not each connection), also after the
/// node restarts (they are written to `queue/rids/<id>` as Wazuh writes them); the agent's next
/// real frame is still accepted.
#[actix_rt::test]
async fn a_frame_replayed_on_a_new_connection_is_refused_with_counters_enforced_also_after_a_restart() {
    init_logs();
    let mut cluster = TestCluster::start_with("replay", 1, &[("agents.enforce_counters", "true".into())]).await;
    let worker = cluster.worker_name(0);
    let line = enroll(cluster.worker(0).enrollment_addr, "OSSEC A:'replay-agent'").await;
    let mut agent = SimAgent::from_key_line(&line).expect("key line");
    let addr = cluster.worker(0).agents_addr;
    let mut s = start_agent(&mut agent, addr).await;
    // Captured: a keep-alive and an event, as they went over the wire.
    let keepalive = agent.frame(agent.keepalive_text().as_bytes());
    let event = agent.frame(b"1:/var/log/auth.log:sshd[1]: Accepted password for root");
    s.write_all(&keepalive).await.expect("keep-alive");
    read_until(&agent, &mut s, |m| m == b"#!-agent ack ").await.expect("ack");
    let mut figures = cluster.worker(0).handle.hub_figures().await.expect("hub");
    s.write_all(&event).await.expect("event");
    // The event is taken before the connection goes (a replay that overtook it would be new).
    wait_for("the event was taken", WAIT, &mut figures, |v| v.events >= 1).await;
    let (global, local) = agent.last_counters();
    drop(s);
    // Replayed on new connections: each closed, nothing acknowledged.
    for (what, frame) in [("keep-alive", &keepalive), ("event", &event)] {
        let mut replay = TcpStream::connect(addr).await.expect("connect");
        replay.write_all(frame).await.expect("replay");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, replay.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
        assert_eq!(n, 0, "the replayed {what} was answered");
    }
    wait_for_log(&worker, &["replayed?"], WAIT).await;
    // Written as Wazuh's remoted writes them; then a restart keeps them.
    let id = line.split(' ').next().expect("id").to_string();
    let rids = cluster.dir.path().join(&worker).join("queue/rids").join(&id);
    wait_until("the counters reached queue/rids", Duration::from_secs(15), || {
        let rids = rids.clone();
        async move { std::fs::read_to_string(&rids).ok().as_deref() == Some(&format!("{global}:{local}:")) }
    })
    .await;
    cluster.kill_worker(0).await;
    cluster.restart_worker(0).await;
    let addr = cluster.worker(0).agents_addr;
    let mut replay = TcpStream::connect(addr).await.expect("connect");
    replay.write_all(&keepalive).await.expect("replay after restart");
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, replay.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0, "the replayed keep-alive was answered after a restart");
    // The agent's own next frames go on.
    let mut s = start_agent(&mut agent, addr).await;
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
    read_until(&agent, &mut s, |m| m == b"#!-agent ack ").await.expect("the real agent is still served");
}
