//! The hand-off to wazuh-analysisd, with Unix sockets standing in for it: events reach its queue
//! byte for byte as remoted writes them; the node keeps serving agents while it is absent, counts
//! what it drops, and delivers again when it appears; a ruleset change on the master makes each
//! worker ask for exactly one reload, after its sync round completed, and a failed reload shows in
//! health.

use crate::common;

use common::cluster::TestCluster;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wazuh_cluster_actors::agents::messages::HubView;
use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key, read_payload, SimAgent};

const WAIT: Duration = Duration::from_secs(10);

async fn enrolled(addr: std::net::SocketAddr, name: &str) -> SimAgent {
    let reply =
        enroll_one(connector().expect("tls"), addr.to_string(), format!("OSSEC A:'{name}'\n")).await.expect("enroll");
    SimAgent::from_key_line(&parse_key(&reply).expect("key")).expect("agent")
}

async fn connected(agent: &mut SimAgent, addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}")).await.expect("startup");
    let ack = read_payload(&mut s).await.expect("ack");
    assert_eq!(agent.open(&ack).expect("decrypt"), b"#!-agent ack ");
    s
}

/// Receives datagrams until `n` arrived (or the deadline).
fn receive(sock: &UnixDatagram, n: usize) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    while out.len() < n {
        match sock.recv(&mut buf) {
            Ok(k) => out.push(buf[..k].to_vec()),
            Err(e) => panic!("{} of {n} datagrams, then: {e}", out.len()),
        }
    }
    out
}

#[actix_rt::test]
async fn events_reach_analysisd_as_remoted_writes_them() {
    let cluster = TestCluster::start_with("ana", 1, &[("analysis.queue", "queue/sockets/queue".into())]).await;
    let worker_dir = cluster.dir.path().join(cluster.worker_name(0));
    std::fs::create_dir_all(worker_dir.join("queue/sockets")).expect("dir");
    let queue = std::sync::Arc::new(UnixDatagram::bind(worker_dir.join("queue/sockets/queue")).expect("bind"));
    let mut agent = enrolled(cluster.worker(0).enrollment_addr, "web-01").await;
    let mut s = connected(&mut agent, cluster.worker(0).agents_addr).await;
    let id = agent.id.clone();
    // As long as an agent's frame may be once inflated (64 KiB with its header), from an agent whose
    // name has the longest length enrollment allows: longer than remoted's datagram once framed.
    let long_name = "a".repeat(128);
    let big = format!("1:/var/log/big.log:{}", "x".repeat(65_420));
    let events: Vec<Vec<u8>> = vec![
        b"1:/var/log/auth.log:Nov 30 12:00:00 web-01 sshd[7]: Accepted publickey for root".to_vec(),
        "1:C:\\Program Files\\app|x.log:a: b|c 'quoted' ünïcødé 日志".as_bytes().to_vec(),
        b"x:[web-01] with spaces:->looks like a source".to_vec(),
    ];
    for e in &events {
        s.write_all(&agent.frame(e)).await.expect("event");
    }
    let mut long = enrolled(cluster.worker(0).enrollment_addr, &long_name).await;
    let long_id = long.id.clone();
    let mut s2 = connected(&mut long, cluster.worker(0).agents_addr).await;
    // In order: the three events above are in the queue before the big one is sent.
    let q = queue.clone();
    let mut got = tokio::task::spawn_blocking(move || receive(&q, 3)).await.expect("join");
    s2.write_all(&long.frame(big.as_bytes())).await.expect("big event");
    // Control messages never go to analysisd.
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
    got.extend(tokio::task::spawn_blocking(move || receive(&queue, 1)).await.expect("join"));
    let src = format!("[{id}] (web-01) any");
    assert_eq!(
        got[0],
        format!("1:{src}->/var/log/auth.log:Nov 30 12:00:00 web-01 sshd[7]: Accepted publickey for root").into_bytes()
    );
    assert_eq!(got[1], format!("1:{src}->C:\\Program Files\\app|x.log:a: b|c 'quoted' ünïcødé 日志").into_bytes());
    assert_eq!(got[2], format!("x:{src}->[web-01] with spaces:->looks like a source").into_bytes());
    // Longer than remoted's 65,535 bytes once framed: cut there, as snprintf cuts it.
    let full = format!("1:[{long_id}] ({long_name}) any->{}", &big[2..]);
    assert!(full.len() > 65_535);
    assert_eq!(got[3].len(), 65_535);
    assert_eq!(got[3][..], full.as_bytes()[..65_535]);
    // The writer thread counts a datagram once the socket took it: the count may trail the receipt.
    let mut figures = cluster.worker(0).handle.hub_figures().await.expect("hub");
    let counted = |v: &HubView| (v.events_analysis, v.events_analysis_dropped, v.analysis_connected) == (4, 0, 1);
    wait_for("4 events delivered, none dropped, analysisd connected", WAIT, &mut figures, counted).await;
}

#[actix_rt::test]
async fn without_analysisd_agents_are_served_drops_are_counted_and_delivery_resumes_when_it_appears() {
    let cluster = TestCluster::start_with(
        "anadown",
        1,
        &[("analysis.queue", "queue/sockets/queue".into()), ("analysis.buffer", "64KiB".into())],
    )
    .await;
    let worker = cluster.worker_name(0);
    let path = cluster.dir.path().join(&worker).join("queue/sockets/queue");
    let mut agent = enrolled(cluster.worker(0).enrollment_addr, "quiet-01").await;
    let mut s = connected(&mut agent, cluster.worker(0).agents_addr).await;
    // 2,000 events of ~300 bytes: far more than 64 KiB; keep-alives in between are still acked.
    for i in 0..2_000u32 {
        let line = format!("1:/var/log/syslog:event {i} {}", "p".repeat(280));
        s.write_all(&agent.frame(line.as_bytes())).await.expect("event");
        if i % 500 == 0 {
            s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
            let ack = loop {
                let p = tokio::time::timeout(WAIT, read_payload(&mut s)).await.expect("an ack in time").expect("frame");
                let text = agent.open(&p).expect("decrypt");
                if text.starts_with(b"#!-agent ack") {
                    break text;
                }
            };
            assert_eq!(ack, b"#!-agent ack ");
        }
    }
    let mut figures = cluster.worker(0).handle.hub_figures().await.expect("hub");
    let view = wait_for("every event received", WAIT, &mut figures, |v| v.events == 2_000).await;
    assert!(view.events_analysis_dropped > 1_000, "{view:?}");
    assert!(view.analysis_held_bytes <= 64 * 1024, "{view:?}");
    assert_eq!((view.events_analysis, view.analysis_connected), (0, 0));
    let held = (2_000 - view.events_analysis_dropped) as usize;
    wait_for_log(&worker, &["analysisd's queue", "not available"], WAIT).await;
    wait_for_log(&worker, &["events dropped"], WAIT).await;
    // analysisd appears: what was held arrives, then new events.
    std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    let queue = UnixDatagram::bind(&path).expect("bind");
    s.write_all(&agent.frame(b"1:/var/log/syslog:after the restart")).await.expect("event");
    let got = tokio::task::spawn_blocking(move || receive(&queue, held + 1)).await.expect("join");
    assert!(
        got[0].ends_with(b"event 0 ") || got[0].windows(8).any(|w| w == b"event 0 "),
        "the oldest held comes first"
    );
    assert!(got[held].ends_with(b"after the restart"));
    wait_for("analysisd connected again", WAIT, &mut figures, |v| v.analysis_connected == 1).await;
    wait_for_log(&worker, &["takes events again"], WAIT).await;
}

/// A stand-in for analysisd's control socket: answers every request with `answer`, and records
/// what each asked and what the watched file held then.
async fn control_stand_in(
    path: std::path::PathBuf,
    watched: std::path::PathBuf,
    answer: &'static [u8],
    seen: std::sync::Arc<std::sync::Mutex<Vec<(serde_json::Value, String)>>>,
) {
    common::control_stand_in(path, move |request| {
        let content = std::fs::read_to_string(&watched).unwrap_or_default();
        if let Ok(mut v) = seen.lock() {
            v.push((request, content));
        }
        answer.to_vec()
    })
    .await
}

#[actix_rt::test]
async fn a_rule_change_makes_each_worker_reload_once_after_its_sync_round_and_failures_show_in_health() {
    let cluster = TestCluster::start_with(
        "reload",
        2,
        &[("analysis.control", "queue/sockets/analysis".into()), ("analysis.reload_debounce", "500ms".into())],
    )
    .await;
    let rule = "etc/rules/local_rules.xml";
    let mut seen = Vec::new();
    for (i, answer) in [
        (0, &br#"{"error":0,"message":"ok","data":[]}"#[..]),
        (1, &br#"{"error":1,"message":"Error loading the rules: 'local_rules.xml' rule 100200 is duplicated"}"#[..]),
    ] {
        let dir = cluster.dir.path().join(cluster.worker_name(i));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        actix_rt::spawn(control_stand_in(dir.join("queue/sockets/analysis"), dir.join(rule), answer, log.clone()));
        seen.push(log);
    }
    // The master's analysisd too: an operator's change there reloads it.
    let master_dir = cluster.dir.path().join(cluster.master_name());
    let master_seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    actix_rt::spawn(control_stand_in(
        master_dir.join("queue/sockets/analysis"),
        master_dir.join(rule),
        br#"{"error":0,"message":"ok"}"#,
        master_seen.clone(),
    ));
    // The rule changes on the master, in two writes close together (one reload each, still).
    let master_rule = cluster.dir.path().join(cluster.master_name()).join(rule);
    std::fs::create_dir_all(master_rule.parent().expect("dir")).expect("dir");
    let content = "<group name=\"local\">\n  <rule id=\"100200\" level=\"5\"><match>test</match></rule>\n</group>\n";
    std::fs::write(&master_rule, "<group name=\"local\"></group>\n").expect("write");
    std::fs::write(&master_rule, content).expect("write");
    let asked = || async { seen.iter().all(|s| s.lock().map(|v| !v.is_empty()).unwrap_or(false)) };
    wait_until("every worker asked for a reload", WAIT * 2, asked).await;
    // Four more sync checks on every worker (each 300 ms, so well past the 500 ms debounce after
    // the check that followed its request): still exactly one request each.
    let checks = || async {
        let mut runs = Vec::new();
        for i in 0..2 {
            let view = cluster.worker(i).handle.healthcheck().await;
            runs.push(view[0].actors.iter().find(|a| a.name == "Integrity").map_or(0, |a| a.runs));
        }
        runs
    };
    let then = checks().await;
    let later = || async { checks().await.iter().zip(&then).all(|(now, then)| *now >= then + 4) };
    wait_health("four more sync checks on every worker", WAIT, later).await;
    for (i, log) in seen.iter().enumerate() {
        let v = log.lock().expect("log").clone();
        assert_eq!(v.len(), 1, "worker {i} sent {} requests", v.len());
        let (request, on_disk) = &v[0];
        assert_eq!(request["command"], "reload-ruleset");
        assert_eq!(request["origin"]["name"], cluster.worker_name(i));
        // Sent only once the round had written the new file.
        assert_eq!(on_disk, content, "worker {i} asked before its tree was complete");
    }
    let on_master = master_seen.lock().expect("log").clone();
    assert_eq!(on_master.len(), 1, "the master asked {} times", on_master.len());
    assert_eq!(on_master[0].1, content);
    // The refused reload shows in health: on the worker and, through its keep-alives, on the master.
    let failing = cluster.worker_name(1);
    wait_for_log(&failing, &["ruleset reload failed", "rule 100200 is duplicated"], WAIT).await;
    let health = cluster.worker(1).handle.healthcheck().await;
    let job = health[0].actors.iter().find(|a| a.name == "RulesetReload").expect("RulesetReload in health");
    assert_eq!(job.failures, 1);
    assert!(job.last_error.as_deref().unwrap_or("").contains("duplicated"), "{:?}", job.last_error);
    let failed_on_master = || async {
        let master_view = cluster.master().handle.healthcheck().await;
        let on_master = master_view
            .iter()
            .find(|n| n.name == failing)
            .and_then(|n| n.actors.iter().find(|a| a.name == "RulesetReload").cloned());
        match on_master {
            Some(a) if a.failures == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    eventually("the master sees the failed reload in the worker's health", WAIT, failed_on_master).await;
    let ok = cluster.worker(0).handle.healthcheck().await;
    let job = ok[0].actors.iter().find(|a| a.name == "RulesetReload").expect("RulesetReload");
    assert_eq!((job.runs, job.failures), (1, 0));

    // A cluster-wide reload right after another change: each worker asks only once its files have
    // the change; the answer names who reloaded and who did not (and why).
    let newer = content.replace("level=\"5\"", "level=\"7\"");
    std::fs::write(&master_rule, &newer).expect("write");
    let before: Vec<usize> = seen.iter().map(|l| l.lock().map(|v| v.len()).unwrap_or(0)).collect();
    let base = format!("http://{}", cluster.master().api_addr);
    let (status, body) = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::request(
            &base,
            "PUT",
            "/cluster/analysisd/reload",
            Some(common::cluster::API_TOKEN),
            None,
        )
    })
    .await
    .expect("join")
    .expect("http");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    let names = |key: &str, field: &dyn Fn(&serde_json::Value) -> String| -> Vec<String> {
        body["data"][key].as_array().expect("items").iter().map(field).collect()
    };
    let mut affected = names("affected_items", &|i| i["name"].as_str().unwrap_or_default().to_string());
    affected.sort();
    assert_eq!(affected, [cluster.master_name(), cluster.worker_name(0)], "{body}");
    let failed = names("failed_items", &|i| i["id"][0].as_str().unwrap_or_default().to_string());
    assert_eq!(failed, [cluster.worker_name(1)], "{body}");
    assert!(
        body["data"]["failed_items"][0]["error"]["message"].as_str().unwrap_or("").contains("duplicated"),
        "{body}"
    );
    assert_eq!(body["error"], 2);
    for (i, log) in seen.iter().enumerate() {
        let v = log.lock().expect("log").clone();
        assert!(v.len() > before[i], "worker {i} was not asked");
        for (_, on_disk) in &v[before[i]..] {
            assert_eq!(on_disk, &newer, "worker {i} reloaded before its files had the change");
        }
    }
}
