//! Agents and groups through the HTTP API of the master and of a worker (which forwards changes):
//! deletion reaches every replica, group changes reach every node, and changes need the token.

use crate::common;

use common::cluster::{TestCluster, API_TOKEN};
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key};

const WAIT: Duration = Duration::from_secs(10);

async fn call(
    addr: std::net::SocketAddr,
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    body: Option<String>,
) -> (u16, serde_json::Value) {
    let base = format!("http://{addr}");
    let (status, text) = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::request(&base, method, &path, token, body.as_deref())
    })
    .await
    .expect("join")
    .expect("http");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

fn keys_file(cluster: &TestCluster, node: &str) -> BTreeSet<String> {
    let path = cluster.dir.path().join(node).join("etc/client.keys");
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

async fn enroll(addr: std::net::SocketAddr, name: &str) -> String {
    let reply =
        enroll_one(connector().expect("tls"), addr.to_string(), format!("OSSEC A:'{name}'\n")).await.expect("enroll");
    parse_key(&reply).unwrap_or_else(|| panic!("{reply}"))
}

/// Waits until `pred` holds for the client.keys of every node.
async fn until_every_node(cluster: &TestCluster, what: &str, pred: impl Fn(&BTreeSet<String>) -> bool) -> Duration {
    let nodes = [cluster.master_name(), cluster.worker_name(0), cluster.worker_name(1)];
    let start = Instant::now();
    wait_until(&format!("on every node: {what}"), WAIT, || async {
        nodes.iter().all(|n| pred(&keys_file(cluster, n)))
    })
    .await;
    start.elapsed()
}

#[actix_rt::test]
async fn deleting_an_agent_removes_it_from_every_replica_and_needs_the_token() {
    let cluster = TestCluster::start("del", 2).await;
    let a = enroll(cluster.worker(0).enrollment_addr, "del-a").await;
    let b = enroll(cluster.worker(1).enrollment_addr, "del-b").await;
    until_every_node(&cluster, "both agents", |k| k.contains(&a) && k.contains(&b)).await;
    let id_a = a.split(' ').next().unwrap_or_default().to_string();
    let id_b = b.split(' ').next().unwrap_or_default().to_string();
    let master_api = cluster.master().api_addr;

    let (status, _) = call(master_api, "DELETE", format!("/agents/{id_a}"), None, None).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = call(master_api, "DELETE", format!("/agents/{id_a}"), Some("wrong-token-0123456789"), None).await;
    assert_eq!(status, 401, "wrong token");
    let (status, body) = call(master_api, "DELETE", format!("/agents/{id_a}"), Some(API_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    let took = until_every_node(&cluster, "a deleted", |k| !k.contains(&a) && k.contains(&b)).await;
    eprintln!("deletion on the master reached every node in {} ms", took.as_millis());

    // Through a worker: forwarded to the master, then replicated like any change.
    let worker_api = cluster.worker(1).api_addr;
    let (status, body) = call(worker_api, "DELETE", format!("/agents/{id_b}"), Some(API_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    until_every_node(&cluster, "b deleted", |k| !k.contains(&b)).await;
    let (status, _) = call(master_api, "DELETE", format!("/agents/{id_b}"), Some(API_TOKEN), None).await;
    assert_eq!(status, 404);
    let (status, body) = call(master_api, "GET", format!("/agents/{id_b}"), Some(API_TOKEN), None).await;
    assert_eq!((status, body["error"].as_u64()), (404, Some(404)));
    let (status, _) = call(master_api, "DELETE", "/agents/not-an-id".into(), Some(API_TOKEN), None).await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn groups_created_and_assigned_through_a_worker_show_everywhere() {
    let cluster = TestCluster::start("grp", 2).await;
    let key = enroll(cluster.master().enrollment_addr, "grp-agent").await;
    let id = key.split(' ').next().unwrap_or_default().to_string();
    let worker_api = cluster.worker(0).api_addr;
    let master_api = cluster.master().api_addr;

    let body = serde_json::json!({ "group_id": "linux" }).to_string();
    let (status, resp) = call(worker_api, "POST", "/groups".into(), Some(API_TOKEN), Some(body.clone())).await;
    assert_eq!(status, 200, "{resp}");
    let (status, _) = call(worker_api, "POST", "/groups".into(), Some(API_TOKEN), Some(body)).await;
    assert_eq!(status, 400, "a second create is refused");
    assert!(cluster.dir.path().join(cluster.master_name()).join("etc/shared/linux").is_dir());
    let (status, resp) = call(worker_api, "PUT", format!("/agents/{id}/group/linux"), Some(API_TOKEN), None).await;
    assert_eq!(status, 200, "{resp}");

    // The master's registry and the other worker's replica both know.
    let other = cluster.worker(1).api_addr;
    let spread = || async {
        let (_, m) = call(master_api, "GET", "/agents?group=linux".into(), Some(API_TOKEN), None).await;
        let (_, w) = call(other, "GET", "/agents?group=linux".into(), Some(API_TOKEN), None).await;
        let both = m["data"]["total_affected_items"] == 1 && w["data"]["total_affected_items"] == 1;
        if both {
            Ok(())
        } else {
            Err(format!("{m} / {w}"))
        }
    };
    eventually("the group assignment reached the master and the other worker", WAIT, spread).await;
    let (_, groups) = call(master_api, "GET", "/groups".into(), Some(API_TOKEN), None).await;
    let names: Vec<(String, u64)> = groups["data"]["affected_items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|g| (g["name"].as_str().unwrap_or_default().to_string(), g["count"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(names, [("default".to_string(), 1), ("linux".to_string(), 1)]);

    // Unknown group or agent: 404; the default group stays.
    let (status, _) = call(master_api, "PUT", format!("/agents/{id}/group/nope"), Some(API_TOKEN), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(master_api, "DELETE", "/groups/default".into(), Some(API_TOKEN), None).await;
    assert_eq!(status, 400);
    let (status, _) = call(master_api, "DELETE", "/groups/linux".into(), Some(API_TOKEN), None).await;
    assert_eq!(status, 200);
    let (_, a) = call(master_api, "GET", format!("/agents/{id}"), Some(API_TOKEN), None).await;
    assert_eq!(a["data"]["affected_items"][0]["group"], serde_json::json!(["default"]));
}

#[actix_rt::test]
async fn a_worker_position_beyond_the_master_is_left_alone_and_said_so() {
    let mut cluster = TestCluster::start("future", 2).await;
    let key = enroll(cluster.master().enrollment_addr, "future-agent").await;
    until_every_node(&cluster, "the agent", |k| k.contains(&key)).await;
    cluster.kill_worker(0).await;
    // The replica claims a position far ahead of the master's, with an agent the master lacks.
    let db = cluster.dir.path().join(cluster.worker_name(0)).join("var/db/replica.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("open replica");
        conn.execute("UPDATE meta SET v = 999999 WHERE k = 'seq'", []).expect("seq");
        conn.execute("INSERT INTO agents (id, name, ip, key, groups) VALUES (777, 'ghost', 'any', 'k', 'default')", [])
            .expect("ghost");
    }
    let worker = cluster.worker_name(0);
    cluster.restart_worker(0).await;
    let line = wait_for_log(
        &cluster.master_name(),
        &["not sending the agent table to worker", "beyond this master's", "wazuh-cluster recover"],
        WAIT,
    )
    .await;
    assert!(line.starts_with("ERROR"), "{line}");
    // Nothing is rewritten over the next sync rounds: the worker keeps what it has, however it differs.
    cluster.sync_rounds_pass(0, 3).await;
    let after = keys_file(&cluster, &worker);
    assert!(after.iter().any(|l| l.contains("ghost")) && after.contains(&key), "{after:?}");
    let conn = rusqlite::Connection::open(&db).expect("open replica");
    let seq: i64 = conn.query_row("SELECT v FROM meta WHERE k = 'seq'", [], |r| r.get(0)).expect("seq");
    assert_eq!(seq, 999999);
}

/// The master's registry lost (its database deleted, the master restarted with an empty one): no
/// worker's replica is emptied; the master says why it sends them nothing.
#[actix_rt::test]
async fn a_master_that_lost_its_registry_wipes_no_worker() {
    let mut cluster = TestCluster::start("lost", 2).await;
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(enroll(cluster.master().enrollment_addr, &format!("lost-agent-{i}")).await);
    }
    until_every_node(&cluster, "the agents", |k| keys.iter().all(|key| k.contains(key))).await;
    let replicas: Vec<_> = (0..2).map(|i| keys_file(&cluster, &cluster.worker_name(i))).collect();
    cluster.kill_master().await;
    let db = cluster.dir.path().join(cluster.master_name()).join("var/db");
    for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
        let _ = std::fs::remove_file(db.join(f));
    }
    cluster.restart_master().await;
    for i in 0..2 {
        let worker = cluster.worker_name(i);
        wait_for_log(
            &cluster.master_name(),
            &["not sending the agent table to worker", &worker, "another agent registry"],
            WAIT,
        )
        .await;
    }
    for i in 0..replicas.len() {
        cluster.sync_rounds_pass(i, 3).await;
    }
    for (i, before) in replicas.iter().enumerate() {
        assert_eq!(&keys_file(&cluster, &cluster.worker_name(i)), before, "worker {i} lost agents");
    }

    // `wazuh-cluster recover`: the master stopped, its registry rebuilt from a worker's replica.
    cluster.kill_master().await;
    let master_dir = cluster.dir.path().join(cluster.master_name());
    let replica = cluster.dir.path().join(cluster.worker_name(0)).join("var/db/replica.db");
    let done =
        wazuh_cluster_actors::registry::master::Registry::recover_from_replica(&master_dir, &replica).expect("recover");
    assert_eq!(done.agents, 5);
    assert_eq!(done.users, 2, "the API's users come back too (admin and auditor)");
    // Refused over a registry that holds agents.
    assert!(wazuh_cluster_actors::registry::master::Registry::recover_from_replica(&master_dir, &replica).is_err());
    cluster.restart_master().await;
    assert_eq!(keys_file(&cluster, &cluster.master_name()), replicas[0], "the master has every agent and key back");
    // The workers follow it again: a new enrollment reaches both, with the next id.
    let new = enroll(cluster.master().enrollment_addr, "after-recovery").await;
    let max_id = keys.iter().filter_map(|k| k.split(' ').next()?.parse::<u32>().ok()).max().unwrap_or(0);
    assert_eq!(new.split(' ').next().and_then(|id| id.parse::<u32>().ok()), Some(max_id + 1));
    until_every_node(&cluster, "the new agent", |k| k.contains(&new) && keys.iter().all(|key| k.contains(key))).await;
}

/// `GET /agents` pages on the master and on a worker: every agent exactly once across the pages,
/// whatever the sort; the default page is 500, more than 100,000 is refused; the summary counts
/// them all without reading them.
#[actix_rt::test]
async fn agents_come_in_pages_each_agent_exactly_once() {
    use wazuh_cluster_actors::registry::NewAgent;
    use wazuh_multi_node::node::NodeHandle;
    const N: usize = 1237;
    let cluster = TestCluster::start("page", 1).await;
    let NodeHandle::Master { registry, .. } = &cluster.master().handle else { panic!("not a master") };
    registry
        .run(|r| {
            for i in 0..N {
                // Names in an order unlike the ids.
                let a = NewAgent {
                    name: format!("page-{:04}", (i * 7919) % 10_000),
                    groups: vec![],
                    ip: "any".into(),
                    key_hash: None,
                    version: None,
                    node_name: "page-master".into(),
                    token: None,
                };
                if let Err(refused) = r.enroll(&a)? {
                    panic!("refused: {refused}");
                }
            }
            Ok(())
        })
        .await
        .expect("enroll");
    let worker_api = cluster.worker(0).api_addr;
    let reached = || async {
        let (_, w) = call(worker_api, "GET", "/agents?limit=1".into(), Some(API_TOKEN), None).await;
        if w["data"]["total_affected_items"] == N as u64 {
            Ok(())
        } else {
            Err(w.to_string())
        }
    };
    eventually(&format!("the worker's replica has {N} agents"), WAIT * 3, reached).await;
    for api in [cluster.master().api_addr, worker_api] {
        for sort in ["", "&sort=name", "&sort=-id", "&sort=-name,id"] {
            let mut seen = BTreeSet::new();
            let mut names = Vec::new();
            let mut offset = 0;
            loop {
                let (status, page) =
                    call(api, "GET", format!("/agents?offset={offset}&limit=100{sort}"), Some(API_TOKEN), None).await;
                assert_eq!(status, 200, "{page}");
                assert_eq!(page["data"]["total_affected_items"], N as u64);
                let items = page["data"]["affected_items"].as_array().expect("items").clone();
                if items.is_empty() {
                    break;
                }
                assert!(items.len() <= 100);
                for item in items {
                    let id = item["id"].as_str().expect("id").to_string();
                    assert!(seen.insert(id.clone()), "agent {id} on two pages ({api}, sort {sort:?})");
                    names.push(item["name"].as_str().expect("name").to_string());
                }
                offset += 100;
            }
            assert_eq!(seen.len(), N, "{api}, sort {sort:?}");
            if sort == "&sort=name" {
                assert!(names.windows(2).all(|w| w[0] <= w[1]), "not sorted by name");
            }
        }
        let (_, page) = call(api, "GET", "/agents".into(), Some(API_TOKEN), None).await;
        assert_eq!(page["data"]["affected_items"].as_array().map(Vec::len), Some(500), "the default page");
        let (status, _) = call(api, "GET", "/agents?limit=100001".into(), Some(API_TOKEN), None).await;
        assert_eq!(status, 400, "a page above 100,000");
        let (status, _) = call(api, "GET", "/agents?sort=secret".into(), Some(API_TOKEN), None).await;
        assert_eq!(status, 400, "an unknown sort field");
        let (status, summary) = call(api, "GET", "/agents/summary/status".into(), Some(API_TOKEN), None).await;
        assert_eq!(status, 200);
        assert_eq!(summary["data"]["connection"]["total"], N as u64, "{summary}");
    }
}

/// A worker whose replica database is damaged sets it aside (kept), starts an empty one and gets
/// the agent table from the master again, instead of refusing to start.
#[actix_rt::test]
async fn a_corrupt_replica_is_set_aside_and_rebuilt_from_the_master() {
    let mut cluster = TestCluster::start("corrupt", 2).await;
    let key = enroll(cluster.master().enrollment_addr, "corrupt-agent").await;
    until_every_node(&cluster, "the agent", |k| k.contains(&key)).await;
    cluster.kill_worker(0).await;
    let db = cluster.dir.path().join(cluster.worker_name(0)).join("var/db");
    std::fs::write(db.join("replica.db"), b"garbage, not a database ".repeat(400)).expect("corrupt it");
    for f in ["replica.db-wal", "replica.db-shm"] {
        let _ = std::fs::remove_file(db.join(f));
    }
    cluster.restart_worker(0).await;
    let line = wait_for_log(&cluster.worker_name(0), &["agent replica was corrupt: set aside as"], WAIT).await;
    assert!(line.starts_with("ERROR"), "{line}");
    until_every_node(&cluster, "the agent again", |k| k.contains(&key)).await;
    let kept = std::fs::read_dir(&db)
        .expect("db dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("replica.db.corrupt-"));
    assert!(kept, "the corrupt database is kept for inspection");
}

/// A raw HTTP/1.1 request with the headers given: status and headers+body text.
async fn raw(addr: std::net::SocketAddr, head: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Every endpoint but /health needs the token, on the master and on a worker (unknown paths too,
/// so that nothing is learnt without it); no list carries a key, only the explicit per-agent call;
/// a request for a host name the API does not serve (DNS rebinding) is refused whatever its
/// credential; no CORS header is ever sent.
#[actix_rt::test]
async fn every_endpoint_but_health_needs_the_token_and_lists_never_carry_keys() {
    let cluster = TestCluster::start("guard", 1).await;
    let key = enroll(cluster.worker(0).enrollment_addr, "guard-agent").await;
    let id = key.split(' ').next().unwrap_or_default().to_string();
    until_every_node_of(&cluster, &key).await;
    let endpoints: [(&str, String); 32] = [
        ("DELETE", "/agents?agents_list=all".into()),
        ("PUT", "/agents/group/default?agents_list=001".into()),
        ("DELETE", "/agents/group?agents_list=001&group_id=default".into()),
        ("DELETE", "/groups?groups_list=x".into()),
        ("GET", "/groups/default/agents".into()),
        ("GET", "/groups/default/files".into()),
        ("PUT", "/groups/default/configuration".into()),
        ("GET", "/".into()),
        ("GET", "/manager/info".into()),
        ("GET", "/cluster/status".into()),
        ("GET", "/cluster/local/info".into()),
        ("GET", "/cluster/nodes".into()),
        ("GET", "/cluster/healthcheck".into()),
        ("GET", "/metrics".into()),
        ("GET", "/agents".into()),
        ("GET", "/agents/summary/status".into()),
        ("GET", format!("/agents/{id}")),
        ("GET", format!("/agents/{id}/key")),
        ("GET", "/groups".into()),
        ("PUT", "/agents/reconnect".into()),
        ("DELETE", format!("/agents/{id}")),
        ("PUT", format!("/agents/{id}/group/default")),
        ("DELETE", format!("/agents/{id}/group/default")),
        ("POST", "/groups".into()),
        ("DELETE", "/groups/nope".into()),
        ("POST", "/cluster/join-tokens".into()),
        ("PUT", "/cluster/analysisd/reload".into()),
        ("GET", "/rules/files/local_rules.xml".into()),
        ("PUT", "/decoders/files/local_decoder.xml".into()),
        ("DELETE", "/lists/files/audit-keys".into()),
        ("POST", "/cluster/nodes/nobody/revoke".into()),
        ("GET", "/no/such/endpoint".into()),
    ];
    for api in [cluster.master().api_addr, cluster.worker(0).api_addr] {
        for (method, path) in &endpoints {
            for token in [None, Some("wrong-token-0123456789")] {
                let (status, body) = call(api, method, path.clone(), token, None).await;
                assert_eq!(status, 401, "{method} {path} with {token:?} on {api}: {body}");
            }
        }
        let (status, body) = call(api, "GET", "/health".into(), None, None).await;
        assert_eq!(status, 200, "{body}");
        // The console's static files are open (the page signs in through the API), with a CSP.
        let (status, text) =
            raw(api, "GET /ui HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string()).await;
        assert_eq!(status, 200);
        assert!(text.contains("content-security-policy: default-src 'self'") && text.contains("signin-form"), "{text}");
        let (status, text) =
            raw(api, "GET /ui/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string()).await;
        assert_eq!(status, 200);
        assert!(text.contains("/security/user/authenticate"));

        // Lists: no key, with or without asking; the one explicit call has it.
        let (status, list) = call(api, "GET", "/agents".into(), Some(API_TOKEN), None).await;
        assert_eq!(status, 200);
        assert!(!list.to_string().contains(key.rsplit(' ').next().unwrap_or("?")), "a list carried a key: {list}");
        assert!(list["data"]["affected_items"][0].get("key").is_none());
        let (status, body) = call(api, "GET", "/agents?keys=true".into(), Some(API_TOKEN), None).await;
        assert_eq!(status, 400, "{body}");
        let (status, one) = call(api, "GET", format!("/agents/{id}/key"), Some(API_TOKEN), None).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["data"]["affected_items"][0]["key"].as_str(), key.rsplit(' ').next());

        // Host: IP literals and localhost are this API; any other name is refused, token or not.
        let port = api.port();
        for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "[::1]".to_string()] {
            let (status, text) = raw(
                api,
                format!("GET /cluster/nodes HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_TOKEN}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(status, 200, "{host}: {text}");
        }
        for host in ["attacker.example", "attacker.example:55000", "evil\u{1b}[31m"] {
            let (status, text) = raw(
                api,
                format!("GET /cluster/nodes HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_TOKEN}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            // (A control character does not even parse as a header: 400.)
            assert!(status == 421 || (status == 400 && host.contains('\u{1b}')), "{host}: {text}");
            assert!(!text.contains('\u{1b}'), "the refused host is escaped: {text}");
        }
        // No Host (HTTP/1.0 allows it), two Host headers, or an absolute-form target naming another
        // host: refused, whatever the credential.
        let auth = format!("Authorization: Bearer {API_TOKEN}\r\nConnection: close\r\n\r\n");
        for (head, want) in [
            (format!("GET /cluster/nodes HTTP/1.0\r\n{auth}"), 400),
            (format!("GET /cluster/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\n{auth}"), 400),
            (format!("GET /cluster/nodes HTTP/1.1\r\nHost: attacker.example\r\nHost: 127.0.0.1\r\n{auth}"), 400),
            (format!("GET http://attacker.example/cluster/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"), 421),
            (format!("GET http://127.0.0.1:{port}/cluster/nodes HTTP/1.1\r\nHost: attacker.example\r\n{auth}"), 421),
            (format!("GET http://127.0.0.1:{port}/cluster/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"), 200),
            (format!("GET /cluster/nodes HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}"), 200),
        ] {
            let (status, text) = raw(api, head.clone()).await;
            assert_eq!(status, want, "{head:?}: {text}");
        }
        // No CORS: a preflight and a cross-origin read get no Access-Control-* header.
        for head in [
            "OPTIONS /agents HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://attacker.example\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n".to_string(),
            format!("GET /agents HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://attacker.example\r\nAuthorization: Bearer {API_TOKEN}\r\nConnection: close\r\n\r\n"),
        ] {
            let (_, text) = raw(api, head).await;
            assert!(!text.to_ascii_lowercase().contains("access-control-"), "{text}");
        }
    }
}

async fn until_every_node_of(cluster: &TestCluster, key: &str) {
    let nodes = [cluster.master_name(), cluster.worker_name(0)];
    wait_until("the agent reached every node", WAIT, || async {
        nodes.iter().all(|n| keys_file(cluster, n).contains(key))
    })
    .await;
}

/// Users trade a password for a token (Wazuh's `POST /security/user/authenticate`, HTTP Basic);
/// every node accepts any node's tokens; a readonly user reads and gets 403 on every change; an
/// administrator's token carries a change through a worker to the master, which checks it again;
/// wrong passwords and altered tokens get 401.
#[actix_rt::test]
async fn users_get_tokens_that_every_node_accepts_and_readonly_users_only_read() {
    use common::cluster::{ADMIN_PASSWORD, AUDITOR_PASSWORD};
    let cluster = TestCluster::start("users", 1).await;
    let (master_api, worker_api) = (cluster.master().api_addr, cluster.worker(0).api_addr);
    let login = |addr: std::net::SocketAddr, user: &'static str, password: &'static str| async move {
        let base = format!("http://{addr}");
        actix_rt::task::spawn_blocking(move || wazuh_multi_node::client::authenticate(&base, user, password))
            .await
            .expect("join")
    };
    let admin: &'static str =
        Box::leak(login(worker_api, "admin", ADMIN_PASSWORD).await.expect("admin").into_boxed_str());
    let auditor: &'static str =
        Box::leak(login(master_api, "auditor", AUDITOR_PASSWORD).await.expect("auditor").into_boxed_str());
    assert_eq!(admin.split('.').count(), 3, "a JWT");
    assert!(login(master_api, "admin", "wrong-password").await.is_err());
    assert!(login(master_api, "nobody", ADMIN_PASSWORD).await.is_err());
    // Wazuh's envelope without ?raw=true.
    let (status, _) = call(master_api, "POST", "/security/user/authenticate".into(), None, None).await;
    assert_eq!(status, 401, "no Basic credentials");

    // Both tokens are good on both nodes for reads.
    for api in [master_api, worker_api] {
        for token in [admin, auditor] {
            let (status, body) = call(api, "GET", "/cluster/nodes".into(), Some(token), None).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    // The readonly user: 403 on every change, on either node.
    let group = serde_json::json!({ "group_id": "ro-test" }).to_string();
    for api in [master_api, worker_api] {
        for (method, path) in [
            ("POST", "/groups"),
            ("DELETE", "/agents/001"),
            ("PUT", "/agents/reconnect"),
            ("PUT", "/cluster/analysisd/reload"),
            ("POST", "/cluster/join-tokens"),
        ] {
            let (status, body) = call(api, method, path.into(), Some(auditor), Some(group.clone())).await;
            assert_eq!(status, 403, "{method} {path}: {body}");
        }
    }
    // The administrator's token (issued by the worker) makes a change through the worker: the
    // master checks the token itself.
    let (status, body) = call(worker_api, "POST", "/groups".into(), Some(admin), Some(group)).await;
    assert_eq!(status, 200, "{body}");
    assert!(cluster.dir.path().join(cluster.master_name()).join("etc/shared/ro-test").is_dir());
    // An altered token: 401.
    let mut altered = admin.to_string();
    altered.pop();
    altered.push(if admin.ends_with('A') { 'B' } else { 'A' });
    let altered: &'static str = Box::leak(altered.into_boxed_str());
    let (status, _) = call(master_api, "GET", "/agents".into(), Some(altered), None).await;
    assert_eq!(status, 401);
}

/// The CLI signs in with `--user` (password from WMN_API_PASSWORD), keeps the token in a 0600 file
/// and uses it until it expires; `hash-password` prints what api.users takes.
#[actix_rt::test]
async fn the_cli_signs_in_as_a_user_and_keeps_its_token_private() {
    const BIN: &str = env!("CARGO_BIN_EXE_wazuh-cluster");
    let cluster = TestCluster::start("cli-user", 1).await;
    let api = format!("http://{}", cluster.master().api_addr);
    let home = tempfile::tempdir().expect("home");
    let home_path = home.path().to_path_buf();
    let run = move |password: &'static str| {
        let (api, home) = (api.clone(), home_path.clone());
        actix_rt::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["nodes", "--json", "--api", &api, "--user", "admin"])
                .env("HOME", &home)
                .env("WMN_API_PASSWORD", password)
                .env_remove("WMN_API_TOKEN")
                .output()
                .expect("run")
        })
    };
    let out = run(common::cluster::ADMIN_PASSWORD).await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body["data"]["total_affected_items"], 2);
    let cache: Vec<_> = std::fs::read_dir(home.path().join(".cache/wazuh-cluster")).expect("cache").flatten().collect();
    assert_eq!(cache.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(cache[0].metadata().expect("meta").permissions().mode() & 0o777, 0o600);
    // The kept token serves the next command (a wrong password is never tried).
    let out = run("not-the-password").await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without it, a wrong password is refused with one clear line.
    std::fs::remove_file(cache[0].path()).expect("rm");
    let out = run("not-the-password").await.expect("join");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused user \"admin\" (401)"), "{err}");

    let out = actix_rt::task::spawn_blocking(|| {
        std::process::Command::new(BIN)
            .arg("hash-password")
            .env("WMN_PASSWORD", "a good password")
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let users = wazuh_multi_node::auth::UserDirectory::default();
    users.replace(vec![wazuh_multi_node::auth::StoredUser {
        id: 1,
        name: "u".into(),
        password_hash: hash,
        role: wazuh_multi_node::auth::ApiRole::Readonly,
        generation: 0,
    }]);
    assert!(wazuh_multi_node::auth::check_password(&users, "u", "a good password").is_some());
}

/// HTTPS unless configured otherwise: a certificate made at the first start (key 0600); a client
/// that trusts that certificate, or trusts anything (`curl -k`), gets answers; one that trusts only
/// public CAs is refused the connection, and plain HTTP gets no answer.
#[actix_rt::test]
async fn the_api_speaks_https_with_a_certificate_made_at_first_start() {
    use wazuh_multi_node::client::{request_trusting, Trust};
    let cluster = TestCluster::start_with("tls", 1, &[("api.tls", "true".into())]).await;
    let dir = cluster.dir.path().join(cluster.master_name());
    let cert = dir.join("var/api.crt");
    assert!(cert.is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("var/api.key")).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let https = format!("https://{}", cluster.master().api_addr);
    let http = format!("http://{}", cluster.master().api_addr);
    let ask = |trust: Trust, base: String| async move {
        actix_rt::task::spawn_blocking(move || {
            request_trusting(&trust, &base, "GET", "/cluster/nodes", Some(API_TOKEN), None)
        })
        .await
        .expect("join")
    };
    let pinned = Trust { ca_file: Some(cert.clone()), insecure: false };
    let (status, body) = ask(pinned, https.clone()).await.expect("trusting the node's certificate");
    assert_eq!(status, 200, "{body}");
    let (status, _) = ask(Trust { ca_file: None, insecure: true }, https.clone()).await.expect("-k");
    assert_eq!(status, 200);
    let refused = ask(Trust::default(), https).await;
    assert!(refused.is_err(), "a self-signed certificate passed as a public CA's: {refused:?}");
    let plain = ask(Trust::default(), http).await;
    assert!(!matches!(plain, Ok((200, _))), "plain HTTP was answered: {plain:?}");
}

/// A rule file written through a worker's API lands in the master's sync roots and reaches every
/// node, byte for byte; names that are not a plain file name of that directory are refused; a
/// delete spreads the same way.
#[actix_rt::test]
async fn a_rule_file_written_through_a_workers_api_reaches_every_node_and_traversal_is_refused() {
    let cluster = TestCluster::start("rulesapi", 2).await;
    let worker_api = cluster.worker(0).api_addr;
    let nodes = [cluster.master_name(), cluster.worker_name(0), cluster.worker_name(1)];
    let on = |node: &str| cluster.dir.path().join(node).join("etc/rules/api_rules.xml");
    let content = "<group name=\"api\">\n  <rule id=\"100300\" level=\"3\"><match>api test</match></rule>\n</group>\n";
    let t = Instant::now();
    let (status, body) =
        call(worker_api, "PUT", "/rules/files/api_rules.xml".into(), Some(API_TOKEN), Some(content.into())).await;
    assert_eq!(status, 200, "{body}");
    let everywhere = || async { nodes.iter().all(|n| std::fs::read_to_string(on(n)).ok().as_deref() == Some(content)) };
    wait_until("the rule file reached every node", WAIT, everywhere).await;
    println!("a rule file PUT on a worker's API was on all 3 nodes after {} ms", t.elapsed().as_millis());
    // Not replaced unless asked; replaced when asked.
    let (status, _) =
        call(worker_api, "PUT", "/rules/files/api_rules.xml".into(), Some(API_TOKEN), Some("<x/>".into())).await;
    assert_eq!(status, 400);
    let newer = content.replace("level=\"3\"", "level=\"4\"");
    let (status, _) = call(
        worker_api,
        "PUT",
        "/rules/files/api_rules.xml?overwrite=true".into(),
        Some(API_TOKEN),
        Some(newer.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let base = format!("http://{}", cluster.worker(1).api_addr);
    let served = || async {
        let b = base.clone();
        let (status, text) = actix_rt::task::spawn_blocking(move || {
            wazuh_multi_node::client::request(&b, "GET", "/rules/files/api_rules.xml?raw=true", Some(API_TOKEN), None)
        })
        .await
        .expect("join")
        .expect("http");
        if status == 200 && text == newer {
            Ok(())
        } else {
            Err(format!("{status} {text}"))
        }
    };
    eventually("worker 2's API serves the new content", WAIT, served).await;
    // Names that could leave the directory, hide, or be something else: refused, nothing written.
    for name in
        ["..%2F..%2Fetc%2Fpasswd", "..%2Fdecoders%2Fx.xml", "..", ".hidden.xml", "notes.txt", "a%20b.xml", "x.xml.tmp"]
    {
        let (status, body) =
            call(worker_api, "PUT", format!("/rules/files/{name}"), Some(API_TOKEN), Some("<x/>".into())).await;
        assert!((400..500).contains(&status) && status != 401, "{name}: {status} {body}");
    }
    for node in &nodes {
        let dir = cluster.dir.path().join(node);
        assert!(!dir.join("etc/passwd").exists() && !dir.join("etc/decoders/x.xml").exists());
        let names: Vec<String> = std::fs::read_dir(dir.join("etc/rules"))
            .expect("rules")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["api_rules.xml"], "{node}");
    }
    // Deleted through the master: gone everywhere; a second delete, and reading a file that is not
    // there, are failed items with Wazuh's codes (as its API answers), not 404s.
    let master_api = cluster.master().api_addr;
    let (status, _) = call(master_api, "DELETE", "/rules/files/api_rules.xml".into(), Some(API_TOKEN), None).await;
    assert_eq!(status, 200);
    wait_until("the deletion reached every node", WAIT, || async { !nodes.iter().any(|n| on(n).exists()) }).await;
    let (status, body) = call(master_api, "DELETE", "/rules/files/api_rules.xml".into(), Some(API_TOKEN), None).await;
    assert_eq!((status, body["error"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(body["data"]["failed_items"][0]["error"]["code"], 1906, "{body}");
    let (status, body) = call(master_api, "GET", "/lists/files/nope".into(), Some(API_TOKEN), None).await;
    assert_eq!((status, body["data"]["failed_items"][0]["error"]["code"].as_u64()), (200, Some(1802)), "{body}");
}

/// The informational endpoints answer in Wazuh's shapes, each node for itself.
#[actix_rt::test]
async fn info_endpoints_answer_in_wazuhs_shapes() {
    let cluster = TestCluster::start("info", 1).await;
    for (api, name, kind) in [
        (cluster.master().api_addr, cluster.master_name(), "master"),
        (cluster.worker(0).api_addr, cluster.worker_name(0), "worker"),
    ] {
        let (status, root) = call(api, "GET", "/".into(), Some(API_TOKEN), None).await;
        assert_eq!(status, 200);
        assert_eq!(root["data"]["title"], "Wazuh API REST");
        assert_eq!(root["data"]["hostname"], name.as_str());
        let (status, s) = call(api, "GET", "/cluster/status".into(), Some(API_TOKEN), None).await;
        assert_eq!((status, &s["data"]["enabled"], &s["data"]["running"]), (200, &"yes".into(), &"yes".into()));
        let (_, local) = call(api, "GET", "/cluster/local/info".into(), Some(API_TOKEN), None).await;
        let item = &local["data"]["affected_items"][0];
        assert_eq!(
            (item["node"].as_str(), item["cluster"].as_str(), item["type"].as_str()),
            (Some(name.as_str()), Some("test"), Some(kind))
        );
        let (_, manager) = call(api, "GET", "/manager/info".into(), Some(API_TOKEN), None).await;
        let item = &manager["data"]["affected_items"][0];
        assert_eq!(item["type"], "server");
        assert!(item["version"].as_str().unwrap_or("").starts_with('v'));
        assert_eq!(manager["data"]["total_affected_items"], 1);
    }
}

/// `agents_list`, `search`, `select` and `q` filter and shape `GET /agents` on the master and on
/// a worker; a query this API does not support is a 400 that says what it supports.
#[actix_rt::test]
async fn agents_filter_by_list_search_select_and_q() {
    let cluster = TestCluster::start("filters", 1).await;
    let mut keys = Vec::new();
    for name in ["web-01", "web-02", "db-01", "db_x"] {
        keys.push(enroll(cluster.master().enrollment_addr, name).await);
    }
    let ids: Vec<String> = keys.iter().map(|k| k.split(' ').next().unwrap_or_default().to_string()).collect();
    until_every_node_of(&cluster, &keys[3]).await;
    let names = |body: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = body["data"]["affected_items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["name"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    for api in [cluster.master().api_addr, cluster.worker(0).api_addr] {
        let get = |path: String| call(api, "GET", path, Some(API_TOKEN), None);
        let (_, b) = get(format!("/agents?agents_list={},{}", ids[0], ids[2])).await;
        assert_eq!(names(&b), ["db-01", "web-01"]);
        assert_eq!(b["data"]["total_affected_items"], 2);
        let (_, b) = get("/agents?search=web".into()).await;
        assert_eq!(names(&b), ["web-01", "web-02"]);
        // `_` is a character, not a wildcard.
        let (_, b) = get("/agents?search=db_".into()).await;
        assert_eq!(names(&b), ["db_x"]);
        let (_, b) = get("/agents?q=name=db-01".into()).await;
        assert_eq!(names(&b), ["db-01"]);
        let (_, b) = get("/agents?select=name&search=web-02".into()).await;
        let item = b["data"]["affected_items"][0].as_object().expect("item").clone();
        let mut fields: Vec<&String> = item.keys().collect();
        fields.sort();
        assert_eq!(fields, ["id", "name"]);
        let (status, b) = get("/agents?q=os.colour~linux".into()).await;
        assert_eq!(status, 400, "{b}");
        let (status, _) = get("/agents?agents_list=1,abc".into()).await;
        assert_eq!(status, 400);
    }
}

/// Wazuh's bulk and group endpoints: assignments and deletions by `agents_list` answer with
/// affected and failed items; a group's agents, files and `agent.conf` (written through a worker,
/// on every node after file sync).
#[actix_rt::test]
async fn bulk_agent_changes_and_group_files_in_wazuhs_shapes() {
    let cluster = TestCluster::start("bulk", 1).await;
    let (master_api, worker_api) = (cluster.master().api_addr, cluster.worker(0).api_addr);
    let mut ids = Vec::new();
    for name in ["b-1", "b-2", "b-3"] {
        let key = enroll(cluster.master().enrollment_addr, name).await;
        ids.push(key.split(' ').next().unwrap_or_default().to_string());
    }
    let admin =
        |api, method: &'static str, path: String, body: Option<String>| call(api, method, path, Some(API_TOKEN), body);
    let group = serde_json::json!({ "group_id": "linux" }).to_string();
    assert_eq!(admin(master_api, "POST", "/groups".into(), Some(group)).await.0, 200);
    let (status, b) =
        admin(worker_api, "PUT", format!("/agents/group/linux?agents_list={},{},999", ids[0], ids[1]), None).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["data"]["affected_items"], serde_json::json!([ids[0], ids[1]]));
    assert_eq!(b["data"]["failed_items"][0]["id"][0], "999");
    assert_eq!(b["data"]["failed_items"][0]["error"]["code"], 404);
    assert_eq!(b["error"], 2);
    let (_, b) = admin(master_api, "GET", "/groups/linux/agents".into(), None).await;
    assert_eq!(b["data"]["total_affected_items"], 2, "{b}");
    // agent.conf through the worker: on every node.
    let conf = "<agent_config>\n  <labels><label key=\"env\">prod</label></labels>\n</agent_config>\n";
    let (status, b) = admin(worker_api, "PUT", "/groups/linux/configuration".into(), Some(conf.into())).await;
    assert_eq!(status, 200, "{b}");
    for node in [cluster.master_name(), cluster.worker_name(0)] {
        let path = cluster.dir.path().join(&node).join("etc/shared/linux/agent.conf");
        let there = || async { std::fs::read_to_string(&path).ok().as_deref() == Some(conf) };
        wait_until(&format!("agent.conf reached {node}"), WAIT, there).await;
    }
    let (_, b) = admin(worker_api, "GET", "/groups/linux/files".into(), None).await;
    let files = b["data"]["affected_items"].as_array().expect("files").clone();
    let conf_item = files.iter().find(|f| f["filename"] == "agent.conf").expect("agent.conf listed");
    use md5::Digest;
    let md5: String = md5::Md5::digest(conf.as_bytes()).iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(conf_item["hash"], md5.as_str());
    let base = format!("http://{worker_api}");
    let raw = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::request(
            &base,
            "GET",
            "/groups/linux/files/agent.conf?raw=true",
            Some(API_TOKEN),
            None,
        )
    })
    .await
    .expect("join")
    .expect("http");
    assert_eq!(raw, (200, conf.to_string()));
    assert_eq!(admin(master_api, "PUT", "/groups/nope/configuration".into(), Some(conf.into())).await.0, 404);
    assert_eq!(admin(master_api, "GET", "/groups/..%2F..%2Fetc/files".into(), None).await.0, 400);
    // Out of the group, then deleted.
    let (_, b) =
        admin(master_api, "DELETE", format!("/agents/group?agents_list={}&group_id=linux", ids[0]), None).await;
    assert_eq!(b["data"]["total_affected_items"], 1, "{b}");
    assert_eq!(admin(master_api, "DELETE", "/agents".into(), None).await.0, 400, "agents_list is required");
    // older_than: nobody here is a week old; a bad duration is a 400.
    assert_eq!(admin(master_api, "DELETE", "/agents?agents_list=all".into(), None).await.0, 400, "status too");
    let (_, b) = admin(master_api, "DELETE", "/agents?agents_list=all&status=all&older_than=7d".into(), None).await;
    assert_eq!(b["data"]["total_affected_items"], 0, "{b}");
    let (_, b) = admin(master_api, "DELETE", "/agents?agents_list=all&status=all".into(), None).await;
    assert_eq!(b["data"]["total_affected_items"], 0, "7 days unless told: {b}");
    let soon = "/agents?agents_list=all&status=all&older_than=soon";
    assert_eq!(admin(master_api, "DELETE", soon.into(), None).await.0, 400);
    let one = format!("/agents?agents_list={}&status=all&older_than=0s", ids[2]);
    let (_, b) = admin(master_api, "DELETE", one, None).await;
    assert_eq!(b["data"]["affected_items"], serde_json::json!([ids[2]]));
    let (_, b) = admin(master_api, "GET", "/agents".into(), None).await;
    assert_eq!(b["data"]["total_affected_items"], 2);
    let (_, b) = admin(master_api, "DELETE", "/groups?groups_list=linux".into(), None).await;
    assert_eq!(b["data"]["affected_items"], serde_json::json!(["linux"]), "{b}");
}

/// The OpenAPI document is served and names every endpoint the server routes (they come from one
/// table), each with its parameters, responses and security.
#[actix_rt::test]
async fn the_openapi_document_covers_every_endpoint() {
    let cluster = TestCluster::start("openapi", 0).await;
    let (status, doc) = call(cluster.master().api_addr, "GET", "/api/openapi.json".into(), Some(API_TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let endpoints = wazuh_multi_node::api::spec::endpoints();
    assert!(endpoints.len() >= 40, "{}", endpoints.len());
    for ep in &endpoints {
        let op = &doc["paths"][ep.path][ep.method];
        assert!(op.is_object(), "{} {} is not documented", ep.method, ep.path);
        assert!(op["responses"]["200"].is_object());
        let placeholders = ep.path.matches('{').count();
        let in_path = op["parameters"].as_array().map_or(0, |p| p.iter().filter(|p| p["in"] == "path").count());
        assert_eq!(placeholders, in_path, "{} {}", ep.method, ep.path);
        if ep.path != "/health" && ep.path != "/security/user/authenticate" {
            assert_eq!(op["security"], serde_json::json!([{ "bearer": [] }]), "{}", ep.path);
        }
    }
    // An operation Wazuh has too is documented with Wazuh's own response schemas, and every
    // reference in the document resolves.
    let schema = &doc["paths"]["/agents"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(schema["allOf"][0]["$ref"], "#/components/schemas/ApiResponse", "{schema}");
    assert_eq!(doc["paths"]["/agents"]["get"]["responses"]["400"]["$ref"], "#/components/responses/ResponseError");
    assert!(doc["components"]["schemas"]["AgentsSummary"].is_object());
    fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(list) => list.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 100, "{}", all.len());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or(r);
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    // Every documented operation is routed: called, it never gets the "no such endpoint" answer.
    for ep in &endpoints {
        let path = ep
            .path
            .replace("{id}", "001")
            .replace("{group_id}", "default")
            .replace("{group}", "default")
            .replace("{file_name}", "agent.conf")
            .replace("{name}", "probe.xml");
        let method: &'static str = ep.method.to_uppercase().leak();
        let (_, body) = call(cluster.master().api_addr, method, path.clone(), Some(API_TOKEN), None).await;
        assert_ne!(body["detail"], "no such endpoint", "{method} {path} is not routed");
    }
}
