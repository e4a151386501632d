//! Wazuh's API on every node, on a master and two workers with agents connected to each: a worker
//! answers reads as the master does (it forwards them), and `GET /agents` honours each of Wazuh's
//! parameters and `q` operators, checked against the full list filtered here.

use crate::common;

use common::cluster::{TestCluster, API_TOKEN};
use common::*;
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key, read_payload, SimAgent};

const WAIT: Duration = Duration::from_secs(10);

/// `path` with every byte a URI may not carry as it is percent-encoded (`q`'s `<`, `>`, `~`, `!`,
/// parentheses...).
fn encoded(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'='
            | b'&'
            | b','
            | b';'
            | b'%'
            | b'/'
            | b'?' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One call of the API with `token`, the path percent-encoded, and a JSON body if any.
async fn call(
    addr: std::net::SocketAddr,
    method: &'static str,
    path: &str,
    token: &'static str,
    body: Option<Value>,
) -> (u16, Value) {
    let (base, path, body) = (format!("http://{addr}"), encoded(path), body.map(|b| b.to_string()));
    let (status, text) = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::request(&base, method, &path, Some(token), body.as_deref())
    })
    .await
    .expect("join")
    .expect("http");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(addr: std::net::SocketAddr, path: &str, token: &'static str) -> (u16, Value) {
    call(addr, "GET", path, token, None).await
}

/// One agent of the fleet: where it enrolls and reports, and what its keep-alive says.
struct Spec {
    name: &'static str,
    /// 0: the master, 1 and 2: the workers; `None`: never connects.
    node: Option<usize>,
    /// `Name|platform: version (codename)` and the agent's version.
    os: &'static str,
    version: &'static str,
}

const FLEET: &[Spec] = &[
    Spec { name: "web-1", node: Some(1), os: "Ubuntu|ubuntu: 22.04.3 LTS (Jammy Jellyfish)", version: "v4.14.7" },
    Spec { name: "web-2", node: Some(1), os: "Ubuntu|ubuntu: 20.04.6 LTS (Focal Fossa)", version: "v4.9.0" },
    Spec { name: "db-1", node: Some(2), os: "CentOS Linux|centos: 7.9 (Core)", version: "v4.14.7" },
    Spec { name: "mail-1", node: Some(0), os: "Debian GNU/Linux|debian: 12 (bookworm)", version: "v4.8.2" },
    Spec { name: "idle-1", node: None, os: "", version: "" },
    Spec { name: "idle-2", node: None, os: "", version: "" },
];

struct Fleet {
    cluster: TestCluster,
    /// The connected agents (by name) and their connections, kept open for the test.
    agents: Vec<(SimAgent, TcpStream)>,
}

impl Fleet {
    fn api(&self, node: usize) -> std::net::SocketAddr {
        if node == 0 {
            self.cluster.master().api_addr
        } else {
            self.cluster.worker(node - 1).api_addr
        }
    }
}

fn keepalive(agent: &SimAgent, spec: &Spec, n: usize) -> String {
    format!(
        "#!-Linux |{} |6.1.0 |#1 SMP |x86_64 [{}] - Wazuh {} / ab73af41699f13fdd81903b5f23d8d00\nx merged.mg\n#\"_agent_ip\":10.0.0.{n}\n",
        agent.name, spec.os, spec.version
    )
}

/// A master and two workers; the fleet enrolled and connected, every connected agent active on
/// the master.
async fn fleet(prefix: &str) -> Fleet {
    fleet_with(prefix, &[]).await
}

/// [`fleet`] with extra settings for every node.
async fn fleet_with(prefix: &str, extra: &[(&str, String)]) -> Fleet {
    let cluster = TestCluster::start_with(prefix, 2, extra).await;
    cluster.wait_for_workers(2, WAIT).await;
    let mut agents = Vec::new();
    for (n, spec) in FLEET.iter().enumerate() {
        let node = spec.node.unwrap_or(0);
        let (enroll_at, report_at) = if node == 0 {
            (cluster.master().enrollment_addr, cluster.master().agents_addr)
        } else {
            (cluster.worker(node - 1).enrollment_addr, cluster.worker(node - 1).agents_addr)
        };
        let line = format!("OSSEC A:'{}'\n", spec.name);
        let reply = enroll_one(connector().expect("tls"), enroll_at.to_string(), line).await.expect("enroll");
        let key = parse_key(&reply).unwrap_or_else(|| panic!("{reply}"));
        if spec.node.is_none() {
            continue;
        }
        let mut agent = SimAgent::from_key_line(&key).expect("key line");
        let mut s = TcpStream::connect(report_at).await.expect("connect");
        s.write_all(&agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}")).await.expect("startup");
        read_payload(&mut s).await.expect("the startup is acknowledged");
        s.write_all(&agent.frame(keepalive(&agent, spec, n + 1).as_bytes())).await.expect("keep-alive");
        agents.push((agent, s));
    }
    let master = cluster.master().api_addr;
    wait_until("every connected agent is active on the master", WAIT, || async {
        let (_, body) = get(master, "/agents?status=active", API_TOKEN).await;
        body["data"]["total_affected_items"] == 4
    })
    .await;
    Fleet { cluster, agents }
}

#[actix_rt::test]
async fn a_worker_answers_every_read_as_the_master_does() {
    let fleet = fleet("fid").await;
    let paths = [
        "/agents",
        "/agents?status=active",
        "/agents?q=os.platform=ubuntu&select=os.platform,version",
        "/agents/summary/status",
        "/agents/001",
        "/groups",
        "/groups/default/agents",
        "/cluster/healthcheck",
        "/cluster/ruleset/synchronization",
    ];
    for path in paths {
        let (status, on_master) = get(fleet.api(0), path, API_TOKEN).await;
        assert_eq!(status, 200, "{path}: {on_master}");
        for worker in [1, 2] {
            eventually(&format!("worker {worker} answers {path} as the master"), WAIT, || async {
                let (_, here) = get(fleet.api(worker), path, API_TOKEN).await;
                let (_, master) = get(fleet.api(0), path, API_TOKEN).await;
                if here == master {
                    Ok(())
                } else {
                    Err(format!("worker: {here}\nmaster: {master}"))
                }
            })
            .await;
        }
    }
    // What only the master knows, seen from a worker: statuses, nodes, systems.
    let (_, body) = get(fleet.api(2), "/agents?status=active&select=node_name,os.platform", API_TOKEN).await;
    assert_eq!(body["data"]["total_affected_items"], 4, "{body}");
    for item in body["data"]["affected_items"].as_array().expect("items") {
        assert!(item["node_name"].is_string() && item["os"]["platform"].is_string(), "{item}");
    }
    // Every node's files reach the master's; the master is the source.
    eventually("every node's ruleset is in sync", WAIT, || async {
        let (_, body) = get(fleet.api(1), "/cluster/ruleset/synchronization", API_TOKEN).await;
        let items = body["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        if items.len() == 3 && items.iter().all(|n| n["synced"] == true) {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    // This node's own: its cluster settings (never the key) and its installation's stable UUID.
    let (_, body) = get(fleet.api(2), "/cluster/local/config", API_TOKEN).await;
    let config = &body["data"]["affected_items"][0];
    assert_eq!((config["node_type"].as_str(), config.get("key")), (Some("worker"), None), "{body}");
    let uuid = |body: Value| body["data"]["affected_items"][0]["uuid"].as_str().unwrap_or("").to_string();
    let first = uuid(get(fleet.api(2), "/manager/info", API_TOKEN).await.1);
    assert_eq!(first.len(), 36, "{first}");
    assert_eq!(uuid(get(fleet.api(2), "/manager/info", API_TOKEN).await.1), first);
    assert_ne!(uuid(get(fleet.api(0), "/manager/info", API_TOKEN).await.1), first, "each node its own");
    // The worker checks the credential itself before anything reaches the master.
    let (status, _) = get(fleet.api(1), "/agents", "not-a-valid-token-0123456789").await;
    assert_eq!(status, 401);
    // A parameter the API does not know is refused by name, on every node.
    for node in [0, 1] {
        let (status, body) = get(fleet.api(node), "/agents?colour=blue", API_TOKEN).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["detail"].as_str().unwrap_or("").contains("colour"), "{body}");
    }
}

/// The ids of `items`, as the API lists them.
fn ids(items: &Value) -> Vec<String> {
    items.as_array().into_iter().flatten().filter_map(|a| a["id"].as_str().map(String::from)).collect()
}

fn text(a: &Value, path: &str) -> String {
    let mut at = a;
    for part in path.split('.') {
        at = &at[part];
    }
    at.as_str().map(str::to_ascii_lowercase).unwrap_or_default()
}

fn version(a: &Value) -> Vec<u64> {
    text(a, "version").trim_start_matches("wazuh v").split('.').filter_map(|p| p.parse().ok()).collect()
}

#[actix_rt::test]
async fn every_agent_parameter_and_q_operator_filters_as_the_list_filtered_here() {
    let fleet = fleet("flt").await;
    let (_, all) = get(fleet.api(0), "/agents?limit=100000", API_TOKEN).await;
    let all: Vec<Value> = all["data"]["affected_items"].as_array().cloned().expect("items");
    assert_eq!(all.len(), FLEET.len());
    let worker_1 = fleet.cluster.worker_name(0);
    let id_of = |name: &str| all.iter().find(|a| a["name"] == name).map(|a| a["id"].clone()).expect("agent");
    let web_1 = id_of("web-1");
    let num = |a: &Value| a["id"].as_str().and_then(|i| i.parse::<u32>().ok()).unwrap_or(0);
    type Pred<'a> = Box<dyn Fn(&Value) -> bool + 'a>;
    let cases: Vec<(String, Pred)> = vec![
        ("status=active".into(), Box::new(|a| a["status"] == "active")),
        (
            "status=active,never_connected".into(),
            Box::new(|a| a["status"] == "active" || a["status"] == "never_connected"),
        ),
        ("older_than=0s".into(), Box::new(|_| true)),
        ("older_than=1h".into(), Box::new(|_| false)),
        ("name=web-2".into(), Box::new(|a| a["name"] == "web-2")),
        ("ip=10.0.0.3".into(), Box::new(|a| a["ip"] == "10.0.0.3")),
        ("registerIP=any".into(), Box::new(|a| a["registerIP"] == "any")),
        ("os.platform=ubuntu".into(), Box::new(|a| text(a, "os.platform") == "ubuntu")),
        ("os.name=CentOS%20Linux".into(), Box::new(|a| text(a, "os.name") == "centos linux")),
        ("os.version=12".into(), Box::new(|a| text(a, "os.version") == "12")),
        ("version=Wazuh%20v4.9.0".into(), Box::new(|a| version(a) == [4, 9, 0])),
        ("version=4.14.7".into(), Box::new(|a| version(a) == [4, 14, 7])),
        (format!("manager={worker_1}"), Box::new(|a| a["manager"] == worker_1.as_str())),
        (format!("node_name={worker_1}"), Box::new(|a| a["node_name"] == worker_1.as_str())),
        ("group=default".into(), Box::new(|a| a["group"].as_array().is_some_and(|g| g.contains(&"default".into())))),
        (format!("agents_list={},002", web_1.as_str().unwrap_or("")), Box::new(|a| a["id"] == web_1 || num(a) == 2)),
        ("q=os.platform=ubuntu".into(), Box::new(|a| text(a, "os.platform") == "ubuntu")),
        ("q=os.platform!=ubuntu".into(), Box::new(|a| text(a, "os.platform") != "ubuntu")),
        ("q=version<4.14.7".into(), Box::new(|a| !version(a).is_empty() && version(a) < vec![4, 14, 7])),
        ("q=id>3".into(), Box::new(|a| num(a) > 3)),
        ("q=name~WEB".into(), Box::new(|a| text(a, "name").contains("web"))),
        ("q=os.major=22".into(), Box::new(|a| text(a, "os.major") == "22")),
        (
            "q=(status=active,status=disconnected);os.platform~u".into(),
            Box::new(|a| a["status"] == "active" && text(a, "os.platform").contains('u')),
        ),
        (
            "q=status=never_connected,os.platform=centos".into(),
            Box::new(|a| a["status"] == "never_connected" || text(a, "os.platform") == "centos"),
        ),
        ("search=ubuntu".into(), Box::new(|a| a.to_string().to_ascii_lowercase().contains("ubuntu"))),
        ("search=-ubuntu".into(), Box::new(|a| !a.to_string().to_ascii_lowercase().contains("ubuntu"))),
    ];
    for (query, keep) in &cases {
        let mut expected: Vec<String> =
            all.iter().filter(|a| keep(a)).filter_map(|a| a["id"].as_str().map(String::from)).collect();
        expected.sort();
        for node in [0, 1, 2] {
            let (status, body) = get(fleet.api(node), &format!("/agents?limit=100000&{query}"), API_TOKEN).await;
            assert_eq!(status, 200, "{query} on node {node}: {body}");
            let mut got = ids(&body["data"]["affected_items"]);
            got.sort();
            assert_eq!(got, expected, "{query} on node {node}");
            assert_eq!(body["data"]["total_affected_items"], expected.len(), "{query} on node {node}");
        }
    }

    // sort (dotted), then offset and limit over the sorted list.
    let mut by_name: Vec<String> = all.iter().map(|a| text(a, "name")).collect();
    by_name.sort();
    by_name.reverse();
    let (_, body) = get(fleet.api(1), "/agents?sort=-name&offset=1&limit=2", API_TOKEN).await;
    let names: Vec<String> =
        body["data"]["affected_items"].as_array().expect("items").iter().map(|a| text(a, "name")).collect();
    assert_eq!(names, by_name[1..3], "{body}");
    assert_eq!(body["data"]["total_affected_items"], all.len());
    let (_, body) = get(fleet.api(2), "/agents?sort=-os.version,name&q=os.platform~u", API_TOKEN).await;
    let names: Vec<String> =
        body["data"]["affected_items"].as_array().expect("items").iter().map(|a| text(a, "name")).collect();
    assert_eq!(names, ["web-1", "web-2"], "22.04 before 20.04: {body}");

    // select (dotted) and distinct.
    let (_, body) = get(fleet.api(1), "/agents?select=os.platform&q=status=active", API_TOKEN).await;
    for item in body["data"]["affected_items"].as_array().expect("items") {
        let keys: Vec<&String> = item.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["id", "os"], "{item}");
        assert_eq!(item["os"].as_object().map(|o| o.len()), Some(1), "{item}");
    }
    let mut platforms: Vec<String> = all.iter().map(|a| text(a, "os.platform")).filter(|p| !p.is_empty()).collect();
    platforms.sort();
    platforms.dedup();
    let (_, body) = get(fleet.api(2), "/agents?select=os.platform&distinct=true&status=active", API_TOKEN).await;
    let mut got: Vec<String> =
        body["data"]["affected_items"].as_array().expect("items").iter().map(|a| text(a, "os.platform")).collect();
    got.sort();
    assert_eq!(got, platforms, "{body}");

    // Refusals name what is wrong, on master and worker alike.
    for (query, names) in [
        ("status=bogus", "bogus"),
        ("q=os.colour=red", "os.colour"),
        ("q=name=web;(status=active", "parenthesis"),
        ("select=nope", "nope"),
        ("sort=-nope", "nope"),
        ("older_than=soon", "older_than"),
        ("group_config_status=maybe", "group_config_status"),
        ("registerip=any", "registerip"),
    ] {
        for node in [0, 2] {
            let (status, body) = get(fleet.api(node), &format!("/agents?{query}"), API_TOKEN).await;
            assert_eq!(status, 400, "{query} on node {node}: {body}");
            assert!(body["detail"].as_str().unwrap_or("").contains(names), "{query}: {body}");
        }
    }
}

#[actix_rt::test]
async fn a_wazuh_style_bulk_delete_and_group_assignment_do_what_they_say() {
    let fleet = fleet("bulk").await;
    let master = fleet.api(0);
    let all_ids = |body: &Value| ids(&body["data"]["affected_items"]);
    // A bulk answer lists the ids themselves.
    let done = |body: &Value| -> Vec<String> {
        body["data"]["affected_items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let (_, body) = get(master, "/agents?limit=100000", API_TOKEN).await;
    let everyone = all_ids(&body);

    // Wazuh's bulk assignment: PUT /agents/group?group_id=...&agents_list=...
    let request = |method: &'static str, path: String, body: Option<Value>| async move {
        call(master, method, &path, API_TOKEN, body).await
    };
    let group = serde_json::json!({ "group_id": "linux2" });
    let (status, body) = request("POST", "/groups".into(), Some(group)).await;
    assert_eq!(status, 200, "{body}");
    let two = format!("{},{}", everyone[0], everyone[1]);
    let (status, body) = request("PUT", format!("/agents/group?group_id=linux2&agents_list={two}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(done(&body), everyone[..2], "{body}");
    let (_, body) = get(fleet.api(2), "/agents?group=linux2", API_TOKEN).await;
    assert_eq!(all_ids(&body), everyone[..2], "seen from a worker: {body}");

    // Wazuh's bulk delete: status is required, older_than is 7 days unless given.
    let (status, body) = request("DELETE", "/agents?agents_list=all".into(), None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = request("DELETE", "/agents?agents_list=all&status=never_connected".into(), None).await;
    assert_eq!((status, body["data"]["total_affected_items"].clone()), (200, 0.into()), "none is 7 days old: {body}");
    let (status, body) =
        request("DELETE", "/agents?agents_list=all&status=never_connected&older_than=0s".into(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["total_affected_items"], 2, "{body}");
    let (status, body) =
        request("DELETE", format!("/agents?agents_list={}&status=all&older_than=0s", everyone[0]), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(done(&body), [everyone[0].clone()], "{body}");
    let (_, body) = get(fleet.api(1), "/agents", API_TOKEN).await;
    assert_eq!(body["data"]["total_affected_items"], FLEET.len() - 3, "{body}");

    // Registration through a worker's API (Wazuh's POST /agents): numbered by the master's
    // registry, the key as manage_agents imports it (base64 of `id name ip key`).
    let new = serde_json::json!({ "name": "api-made", "ip": "10.9.8.7" });
    let (status, body) = call(fleet.api(2), "POST", "/agents", API_TOKEN, Some(new.clone())).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().expect("id").to_string();
    use base64ct::Encoding;
    let decoded = base64ct::Base64::decode_vec(body["data"]["key"].as_str().expect("key")).expect("base64");
    let decoded = String::from_utf8(decoded).expect("text");
    let parts: Vec<&str> = decoded.split(' ').collect();
    assert_eq!(parts[..3], [id.as_str(), "api-made", "10.9.8.7"], "{decoded}");
    assert_eq!(parts.get(3).map(|k| k.len()), Some(64), "{decoded}");
    let (_, listed) = get(fleet.api(0), &format!("/agents?agents_list={id}"), API_TOKEN).await;
    assert_eq!(listed["data"]["affected_items"][0]["name"], "api-made", "{listed}");
    for refused in [new, serde_json::json!({ "name": "bad-ip", "ip": "300.1.2.3" }), serde_json::json!({ "ip": "any" })]
    {
        let (status, body) = call(fleet.api(2), "POST", "/agents", API_TOKEN, Some(refused.clone())).await;
        assert_eq!(status, 400, "{refused}: {body}");
    }

    // Wazuh's POST /agents/insert through a worker: the id and key given are kept (an agent moved
    // from another manager keeps its client.keys line); the next registration is numbered after it.
    let key = "Ab3".repeat(21) + "z";
    let moved = serde_json::json!({ "name": "moved-in", "ip": "any", "id": "4321", "key": key });
    let (status, body) = call(fleet.api(1), "POST", "/agents/insert", API_TOKEN, Some(moved.clone())).await;
    assert_eq!((status, body["data"]["id"].clone()), (200, "4321".into()), "{body}");
    let decoded = base64ct::Base64::decode_vec(body["data"]["key"].as_str().expect("key")).expect("base64");
    assert_eq!(String::from_utf8(decoded).expect("text"), format!("4321 moved-in any {key}"));
    let (_, listed) = get(fleet.api(2), "/agents?agents_list=4321", API_TOKEN).await;
    assert_eq!(listed["data"]["affected_items"][0]["name"], "moved-in", "{listed}");
    let (status, body) =
        call(fleet.api(0), "POST", "/agents/insert", API_TOKEN, Some(serde_json::json!({ "name": "after" }))).await;
    assert_eq!((status, body["data"]["id"].clone()), (200, "4322".into()), "{body}");
    for (refused, names) in [
        (serde_json::json!({ "name": "same-id", "id": "4321" }), "Duplicate agent ID: 4321"),
        (serde_json::json!({ "name": "short-id", "id": "7" }), "id"),
        (serde_json::json!({ "name": "manager-id", "id": "000" }), "id"),
        (serde_json::json!({ "name": "bad-key", "key": "short" }), "key"),
        (serde_json::json!({ "name": "forced", "force": { "enabled": true } }), "force"),
    ] {
        let (status, body) = call(fleet.api(2), "POST", "/agents/insert", API_TOKEN, Some(refused.clone())).await;
        assert_eq!(status, 400, "{refused}: {body}");
        assert!(body.to_string().contains(names), "{refused}: {body}");
    }
}

/// The next `#!-execd` message the manager sends `name` (other messages are passed over).
async fn next_execd(fleet: &mut Fleet, name: &str) -> String {
    let (agent, s) = fleet.agents.iter_mut().find(|(a, _)| a.name == name).expect("a connected agent");
    loop {
        let payload = tokio::time::timeout(WAIT, read_payload(s)).await.expect("a message in time").expect("a frame");
        let text = String::from_utf8(agent.open(&payload).expect("decrypt")).expect("text");
        if text.starts_with("#!-execd") {
            return text;
        }
    }
}

async fn put(addr: std::net::SocketAddr, path: &str, body: Option<Value>) -> (u16, Value) {
    call(addr, "PUT", path, API_TOKEN, body).await
}

#[actix_rt::test]
async fn restarts_and_active_responses_reach_the_agent_through_the_node_that_holds_it() {
    let mut fleet = fleet("cmd").await;
    let ar_conf = fleet.cluster.dir.path().join(fleet.cluster.master_name()).join("etc/shared/ar.conf");
    std::fs::write(&ar_conf, "firewall-drop0 - firewall-drop - 0\nrestart-wazuh0 - restart-wazuh - 0\n")
        .expect("ar.conf");
    let (_, all) = get(fleet.api(0), "/agents?limit=100000", API_TOKEN).await;
    let id = |name: &str| -> String {
        all["data"]["affected_items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == name)
            .map(|a| a["id"].as_str().unwrap_or("").to_string())
            .expect("agent")
    };
    let (db, idle, web) = (id("db-1"), id("idle-1"), id("web-2"));
    let worker_2 = fleet.cluster.worker_name(1);
    let done = |body: &Value| -> Vec<String> {
        body["data"]["affected_items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };

    // A restart through the master's API, of an agent on worker 2: delivered by worker 2, as
    // Wazuh's manager sends it.
    let (status, body) = put(fleet.api(0), &format!("/agents/{db}/restart"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(done(&body), std::slice::from_ref(&db), "{body}");
    let restart = "#!-execd {\"version\": 1, \"origin\": {\"module\": \"framework\"}, \"command\": \"restart-wazuh0\", \"parameters\": {\"extra_args\": [], \"alert\": {}}} - null (from_the_server) (no_rule_id)";
    assert_eq!(next_execd(&mut fleet, "db-1").await, restart);

    // An active response: the active agent gets it, an agent never connected and one that does
    // not exist are failed items with Wazuh's codes.
    let ar = serde_json::json!({ "command": "firewall-drop0", "arguments": ["-"], "alert": { "data": { "srcip": "10.0.0.9" } } });
    let (status, body) =
        put(fleet.api(0), &format!("/active-response?agents_list={db},{idle},999"), Some(ar.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(done(&body), std::slice::from_ref(&db), "{body}");
    assert_eq!(body["data"]["total_failed_items"], 2, "{body}");
    let codes: Vec<(u64, Vec<Value>)> = body["data"]["failed_items"]
        .as_array()
        .expect("failed")
        .iter()
        .map(|f| (f["error"]["code"].as_u64().unwrap_or(0), f["id"].as_array().cloned().unwrap_or_default()))
        .collect();
    assert!(
        codes.contains(&(1701, vec!["999".into()])) && codes.contains(&(1707, vec![idle.clone().into()])),
        "{body}"
    );
    assert_eq!(body["message"], "AR command was not sent to some agents");
    let expected = format!(
        "#!-execd {{\"version\": 1, \"origin\": {{\"name\": \"{worker_2}\", \"module\": \"API\"}}, \"command\": \"firewall-drop0\", \"parameters\": {{\"extra_args\": [\"-\"], \"alert\": {{\"data\": {{\"srcip\": \"10.0.0.9\"}}}}}}}}"
    );
    assert_eq!(next_execd(&mut fleet, "db-1").await, expected);

    // Through worker 2's API, of an agent on worker 1: forwarded to the master, routed to worker 1.
    let (status, body) = put(fleet.api(2), &format!("/agents/restart?agents_list={web}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(done(&body), std::slice::from_ref(&web), "{body}");
    assert_eq!(next_execd(&mut fleet, "web-2").await, restart);

    // A command ar.conf does not define is refused, on master and worker alike.
    let bad = serde_json::json!({ "command": "rm-everything0" });
    for node in [0, 2] {
        let (status, body) =
            put(fleet.api(node), &format!("/active-response?agents_list={db}"), Some(bad.clone())).await;
        assert_eq!(status, 400, "{body}");
    }
}

#[actix_rt::test]
async fn wazuhs_agent_views_answer_alike_on_every_node_from_the_same_agents() {
    let fleet = fleet("views").await;
    let (_, all) = get(fleet.api(0), "/agents?limit=100000", API_TOKEN).await;
    let all: Vec<Value> = all["data"]["affected_items"].as_array().cloned().expect("items");
    let ids_where = |keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
        let mut v: Vec<String> =
            all.iter().filter(|a| keep(a)).filter_map(|a| a["id"].as_str().map(String::from)).collect();
        v.sort();
        v
    };
    let outdated = ids_where(&|a| !version(a).is_empty() && version(a) < vec![4, 14, 7]);
    let ungrouped = ids_where(&|a| a["group"].as_array().is_none_or(|g| g.is_empty()));
    let mut platforms: Vec<String> = all.iter().map(|a| text(a, "os.platform")).filter(|p| !p.is_empty()).collect();
    platforms.sort();
    platforms.dedup();
    for node in [0, 1, 2] {
        let (status, body) = get(fleet.api(node), "/agents/outdated", API_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        let mut got = ids(&body["data"]["affected_items"]);
        got.sort();
        assert_eq!(got, outdated, "outdated on node {node}");
        let (_, body) = get(fleet.api(node), "/agents/no_group", API_TOKEN).await;
        let mut got = ids(&body["data"]["affected_items"]);
        got.sort();
        assert_eq!(got, ungrouped, "no_group on node {node}");
        let (_, body) = get(fleet.api(node), "/agents/summary/os", API_TOKEN).await;
        assert_eq!(body["data"]["affected_items"], serde_json::json!(platforms), "summary/os on node {node}");
        let (_, body) = get(fleet.api(node), "/agents/stats/distinct?fields=os.platform&sort=-count", API_TOKEN).await;
        let rows = body["data"]["affected_items"].as_array().cloned().expect("rows");
        let counted: u64 = rows.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum();
        assert_eq!(counted, all.len() as u64, "every agent counted once: {body}");
        let ubuntu = rows.iter().find(|r| r["os"]["platform"] == "ubuntu").map(|r| r["count"].clone());
        assert_eq!(ubuntu, Some(2.into()), "{body}");
        assert!(rows.iter().any(|r| r["os"]["platform"] == "N/A"), "never connected: N/A: {body}");
        let (_, body) = get(fleet.api(node), "/overview/agents", API_TOKEN).await;
        let nodes: u64 =
            body["data"]["nodes"].as_array().expect("nodes").iter().map(|n| n["count"].as_u64().unwrap_or(0)).sum();
        assert_eq!(nodes, all.len() as u64, "{body}");
        assert_eq!(body["data"]["agent_status"]["connection"]["active"], 4, "{body}");
        // The one registered last (the highest id among those of the latest registration time).
        let latest = all.iter().filter_map(|a| a["dateAdd"].as_str()).max().unwrap_or_default();
        let last = all.iter().filter(|a| a["dateAdd"] == latest).filter_map(|a| a["id"].as_str()).max();
        assert_eq!(body["data"]["last_registered_agent"][0]["id"].as_str(), last, "{body}");
        let (_, body) = get(fleet.api(node), "/agents/001/group/is_sync", API_TOKEN).await;
        assert_eq!(body["data"]["affected_items"][0]["id"], "001", "{body}");
        assert!(body["data"]["affected_items"][0]["synced"].is_boolean(), "{body}");
        let (_, body) = get(fleet.api(node), "/groups?select=name,count&limit=1&sort=-count", API_TOKEN).await;
        assert_eq!(body["data"]["affected_items"][0]["name"], "default", "{body}");
    }
    // What an endpoint does not take is refused by name.
    for (path, name) in [
        ("/agents/outdated?status=active", "status"),
        ("/agents/stats/distinct", "fields"),
        ("/groups?colour=x", "colour"),
    ] {
        let (status, body) = get(fleet.api(1), path, API_TOKEN).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["detail"].as_str().unwrap_or("").contains(name), "{path}: {body}");
    }
}

#[actix_rt::test]
async fn ruleset_files_and_cdb_lists_are_listed_as_wazuh_lists_them_on_every_node() {
    let fleet = fleet("lists").await;
    let list = "audit-wazuh-w:write\naudit-wazuh-r:read\n";
    let rules = "<group name=\"local,\">\n  <rule id=\"100200\" level=\"3\">\n    <match>fidelity</match>\n    <description>fidelity</description>\n  </rule>\n</group>\n";
    let conf = "<agent_config os=\"Linux\">\n  <localfile><location>/var/log/fid.log</location><log_format>syslog</log_format></localfile>\n</agent_config>\n";
    for (path, content) in [
        ("/lists/files/audit-keys", list),
        ("/rules/files/fidelity_rules.xml", rules),
        ("/groups/default/configuration", conf),
    ] {
        let (base, path, body) = (format!("http://{}", fleet.api(0)), path.to_string(), content.to_string());
        let (status, text) = actix_rt::task::spawn_blocking(move || {
            wazuh_multi_node::client::request(&base, "PUT", &path, Some(API_TOKEN), Some(&body))
        })
        .await
        .expect("join")
        .expect("http");
        assert_eq!(status, 200, "{text}");
    }
    for node in [0, 1, 2] {
        eventually(&format!("node {node} lists the new files"), WAIT, || async {
            let (_, lists) = get(fleet.api(node), "/lists?filename=audit-keys", API_TOKEN).await;
            let (_, rules) = get(fleet.api(node), "/rules/files?search=fidelity", API_TOKEN).await;
            let items = &lists["data"]["affected_items"][0]["items"];
            let want = serde_json::json!([{ "key": "audit-wazuh-w", "value": "write" }, { "key": "audit-wazuh-r", "value": "read" }]);
            let rule_file = &rules["data"]["affected_items"][0];
            if *items == want && rule_file["filename"] == "fidelity_rules.xml" && rule_file["status"] == "enabled" {
                Ok(())
            } else {
                Err(format!("{lists}\n{rules}"))
            }
        })
        .await;
        // One file: a rule file as JSON the way Wazuh's API reads it, a CDB list as its keys.
        let (_, body) = get(fleet.api(node), "/rules/files/fidelity_rules.xml", API_TOKEN).await;
        let group = &body["data"]["affected_items"][0]["group"];
        assert_eq!(
            (&group["@name"], &group["rule"]["@id"], &group["rule"]["match"]),
            (&"local,".into(), &"100200".into(), &"fidelity".into()),
            "{body}"
        );
        let (_, body) = get(fleet.api(node), "/lists/files/audit-keys", API_TOKEN).await;
        assert_eq!(
            body["data"]["affected_items"][0],
            serde_json::json!({ "audit-wazuh-w": "write", "audit-wazuh-r": "read" }),
            "{body}"
        );
        // The group's agent.conf as Wazuh's API shows it, once file sync brought it here.
        eventually(&format!("node {node} shows the group's configuration"), WAIT, || async {
            let (_, body) = get(fleet.api(node), "/groups/default/configuration", API_TOKEN).await;
            let item = &body["data"]["affected_items"][0];
            let want = serde_json::json!({ "filters": { "os": "Linux" }, "config": { "localfile": [{ "location": "/var/log/fid.log", "log_format": "syslog" }] } });
            if *item == want {
                Ok(())
            } else {
                Err(body.to_string())
            }
        })
        .await;
        // The rule itself, listed as Wazuh's GET /rules lists it.
        let (_, body) = get(fleet.api(node), "/rules?rule_ids=100200&level=1-5", API_TOKEN).await;
        let rule = &body["data"]["affected_items"][0];
        assert_eq!(
            (&rule["id"], &rule["level"], &rule["groups"], &rule["description"]),
            (&100200.into(), &3.into(), &serde_json::json!(["local"]), &"fidelity".into()),
            "{body}"
        );
        assert_eq!(rule["details"]["match"], "fidelity", "{body}");
        let (_, body) = get(fleet.api(node), "/rules?rule_ids=100200&level=4-9", API_TOKEN).await;
        assert_eq!(body["data"]["total_affected_items"], 0, "{body}");
        let (_, files) = get(fleet.api(node), "/lists/files", API_TOKEN).await;
        assert!(ids_of(&files, "filename").contains(&"audit-keys".to_string()), "{files}");
        let (status, body) = get(fleet.api(node), "/lists/files?status=enabled", API_TOKEN).await;
        assert_eq!(status, 400, "GET /lists/files takes no status: {body}");
    }
}

/// The values of `field` in a listing.
fn ids_of(body: &Value, field: &str) -> Vec<String> {
    body["data"]["affected_items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a[field].as_str().map(String::from))
        .collect()
}

/// Reads `name`'s connection until the manager sends it a request (`#!-req <counter> <payload>`).
async fn next_request(fleet: &mut Fleet, name: &str) -> (String, String) {
    let (agent, s) = fleet.agents.iter_mut().find(|(a, _)| a.name == name).expect("a connected agent");
    loop {
        let payload = tokio::time::timeout(WAIT, read_payload(s)).await.expect("a message in time").expect("a frame");
        let text = String::from_utf8(agent.open(&payload).expect("decrypt")).expect("text");
        if let Some(rest) = text.strip_prefix("#!-req ") {
            let (counter, payload) = rest.split_once(' ').unwrap_or((rest, ""));
            return (counter.to_string(), payload.to_string());
        }
    }
}

/// `name` sends the manager `text`.
async fn agent_says(fleet: &mut Fleet, name: &str, text: &str) {
    let (agent, s) = fleet.agents.iter_mut().find(|(a, _)| a.name == name).expect("a connected agent");
    s.write_all(&agent.frame(text.as_bytes())).await.expect("write");
}

#[actix_rt::test]
async fn an_agents_active_configuration_is_asked_of_the_agent_through_its_node() {
    // The cluster channel's timeout bounds the wait for the agent: give it room on a busy machine.
    let mut fleet = fleet_with("cfg", &[("cluster.request_timeout", "10s".to_string())]).await;
    let (_, all) = get(fleet.api(0), "/agents?limit=100000", API_TOKEN).await;
    let id = |name: &str| -> String {
        let items = all["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        items.iter().find(|a| a["name"] == name).and_then(|a| a["id"].as_str().map(String::from)).expect("agent")
    };
    let (db, idle) = (id("db-1"), id("idle-1"));
    let config = serde_json::json!({ "localfile": [{ "logformat": "syslog", "file": "/var/log/auth.log" }] });
    // Through the master's API and through worker 1's, of the agent on worker 2.
    for node in [0, 1] {
        let addr = fleet.api(node);
        let path = format!("/agents/{db}/config/logcollector/localfile");
        let call = actix_rt::spawn(async move { get(addr, &path, API_TOKEN).await });
        let (counter, payload) = next_request(&mut fleet, "db-1").await;
        assert_eq!(payload, "logcollector getconfig localfile");
        // An answer to no request of the manager's is passed over.
        agent_says(&mut fleet, "db-1", "#!-req zz9 ok {\"forged\":true}").await;
        agent_says(&mut fleet, "db-1", &format!("#!-req {counter} ack")).await;
        agent_says(&mut fleet, "db-1", &format!("#!-req {counter} ok {config}")).await;
        let (status, body) = call.await.expect("join");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"], config, "{body}");
        // The manager acknowledges the answer, as remoted does.
        assert_eq!(next_request(&mut fleet, "db-1").await, (counter, "ack".to_string()));
    }
    // The agent's own refusal, an agent not connected, one that does not exist, a component Wazuh
    // does not have.
    let addr = fleet.api(0);
    let path = format!("/agents/{db}/config/syscheck/nope");
    let call = actix_rt::spawn(async move { get(addr, &path, API_TOKEN).await });
    let (counter, _) = next_request(&mut fleet, "db-1").await;
    agent_says(&mut fleet, "db-1", &format!("#!-req {counter} err Could not get requested section")).await;
    let (status, body) = call.await.expect("join");
    assert_eq!(status, 400, "{body}");
    assert_eq!(get(addr, &format!("/agents/{idle}/config/logcollector/localfile"), API_TOKEN).await.0, 400);
    assert_eq!(get(addr, "/agents/999/config/logcollector/localfile", API_TOKEN).await.0, 404);
    assert_eq!(get(addr, &format!("/agents/{db}/config/nothing/localfile"), API_TOKEN).await.0, 400);
}

#[actix_rt::test]
async fn a_nodes_status_and_recent_log_lines_as_wazuh_shows_them() {
    let fleet = fleet("logs").await;
    for node in [0, 1] {
        let (_, body) = get(fleet.api(node), "/manager/status", API_TOKEN).await;
        let status = &body["data"]["affected_items"][0];
        assert_eq!(
            (&status["wazuh-clusterd"], &status["wazuh-remoted"]),
            (&"running".into(), &"running".into()),
            "{body}"
        );
        // Every node logged its start; the newest line comes first.
        let (status, body) = get(fleet.api(node), "/manager/logs?limit=100000", API_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        let items = body["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        assert!(!items.is_empty(), "{body}");
        let times: Vec<&str> = items.iter().filter_map(|l| l["timestamp"].as_str()).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
        assert!(
            items.iter().all(|l| ["info", "warning", "error"].contains(&l["level"].as_str().unwrap_or(""))),
            "{body}"
        );
        let (_, body) = get(fleet.api(node), "/manager/logs?level=info&search=listening&limit=5", API_TOKEN).await;
        let items = body["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        assert!(!items.is_empty() && items.iter().all(|l| l["level"] == "info"), "{body}");
        let (status, _) = get(fleet.api(node), "/manager/logs?level=loud", API_TOKEN).await;
        assert_eq!(status, 400);
    }
    // Another node's own reads, from any node: the master asks that node's API.
    let (worker_1, master) = (fleet.cluster.worker_name(0), fleet.cluster.master_name());
    for (from, about) in [(0, worker_1.clone()), (2, worker_1.clone()), (2, master.clone())] {
        let (status, body) = get(fleet.api(from), &format!("/cluster/{about}/status"), API_TOKEN).await;
        assert_eq!((status, &body["data"]["affected_items"][0]["wazuh-clusterd"]), (200, &"running".into()), "{body}");
        let (_, body) = get(fleet.api(from), &format!("/cluster/{about}/info"), API_TOKEN).await;
        assert_eq!(body["data"]["affected_items"][0]["node_name"], about.as_str(), "{body}");
        let (_, body) = get(fleet.api(from), &format!("/cluster/{about}/logs?level=info&limit=3"), API_TOKEN).await;
        let lines = body["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        assert!(!lines.is_empty() && lines.len() <= 3, "{body}");
    }
    // The ossec.conf of the installation each node works in, as Wazuh's API shows it.
    let ossec = "<ossec_config>\n  <global><logall>no</logall></global>\n  <remote><connection>secure</connection><port>1514</port></remote>\n</ossec_config>\n<ossec_config>\n  <remote><connection>syslog</connection><port>514</port></remote>\n</ossec_config>\n";
    for name in [&master, &worker_1] {
        std::fs::write(fleet.cluster.dir.path().join(name).join("etc/ossec.conf"), ossec).expect("ossec.conf");
    }
    let (_, body) = get(fleet.api(0), "/manager/configuration?section=global", API_TOKEN).await;
    assert_eq!(body["data"]["affected_items"][0], serde_json::json!({ "global": { "logall": "no" } }), "{body}");
    let (_, body) =
        get(fleet.api(2), &format!("/cluster/{worker_1}/configuration?section=remote&field=port"), API_TOKEN).await;
    assert_eq!(
        body["data"]["affected_items"][0],
        serde_json::json!({ "remote": { "port": ["1514", "514"] } }),
        "{body}"
    );
    let (status, _) = get(fleet.api(0), "/manager/configuration?section=nothing", API_TOKEN).await;
    assert_eq!(status, 400);
    // Each node checks its own ossec.conf; worker 2 has none.
    let (_, body) = get(fleet.api(2), "/cluster/configuration/validation", API_TOKEN).await;
    let status_of = |name: &str| {
        let items = body["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        items.iter().find(|i| i["name"] == name).map(|i| i["status"].clone())
    };
    let worker_2 = fleet.cluster.worker_name(1);
    assert_eq!(
        (status_of(&master), status_of(&worker_1), status_of(&worker_2)),
        (Some("OK".into()), Some("OK".into()), Some("KO".into())),
        "{body}"
    );
    let (status, body) = get(fleet.api(0), "/cluster/nobody/status", API_TOKEN).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get(fleet.api(0), &format!("/cluster/{worker_1}/logs?colour=red"), API_TOKEN).await;
    assert_eq!(status, 400, "the node itself refuses what it does not take");

    // The totals analysisd writes beside worker 1 (stats/ of its installation), from any node.
    let stats = fleet.cluster.dir.path().join(&worker_1).join("stats");
    std::fs::create_dir_all(stats.join("totals/2026/Mar")).expect("stats dir");
    std::fs::write(stats.join("totals/2026/Mar/ossec-totals-07.log"), "3-5501-3-2\n3--2--40--1--0\n4--0--9--0--0\n")
        .expect("totals");
    std::fs::create_dir_all(stats.join("hourly-average")).expect("hourly dir");
    std::fs::write(stats.join("hourly-average/5"), "17").expect("hourly");
    for from in [0, 2] {
        let (status, body) =
            get(fleet.api(from), &format!("/cluster/{worker_1}/stats?date=2026-03-07"), API_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        let hours = body["data"]["affected_items"].clone();
        assert_eq!(hours[0]["alerts"], serde_json::json!([{ "sigid": 5501, "level": 3, "times": 2 }]), "{body}");
        assert_eq!(
            (hours[0]["hour"].clone(), hours[0]["events"].clone(), hours[1]["events"].clone()),
            (3.into(), 40.into(), 9.into())
        );
        let (status, body) =
            get(fleet.api(from), &format!("/cluster/{worker_1}/stats?date=2026-03-08"), API_TOKEN).await;
        assert_eq!((status, body["error"].clone()), (400, 1308.into()), "no totals that day: {body}");
        let (_, body) = get(fleet.api(from), &format!("/cluster/{worker_1}/stats/hourly"), API_TOKEN).await;
        assert_eq!(body["data"]["affected_items"][0]["averages"][5], 17, "{body}");
        let (_, body) = get(fleet.api(from), &format!("/cluster/{worker_1}/stats/weekly"), API_TOKEN).await;
        assert_eq!(body["data"]["affected_items"][6]["Sat"]["hours"].as_array().map(Vec::len), Some(24), "{body}");
    }
    let (status, _) = get(fleet.api(1), "/manager/stats?date=2026-03-07", API_TOKEN).await;
    assert_eq!(status, 200, "worker 1's own");
    let (status, _) = get(fleet.api(0), "/manager/stats?date=2026-03-07", API_TOKEN).await;
    assert_eq!(status, 400, "the master has no totals of that day");
    let (status, _) = get(fleet.api(0), "/manager/stats?date=March", API_TOKEN).await;
    assert_eq!(status, 400);
}
