//! The node and the cluster: `GET /`, `/manager/info`, `/cluster/{status,local/info,nodes,healthcheck,actors}`,
//! `/health`, `/metrics`, join tokens, revocation and the cluster-wide analysisd reload.

use super::*;

pub(super) async fn nodes(node: web::Data<NodeHandle>) -> HttpResponse {
    let items: Vec<serde_json::Value> = node
        .nodes()
        .await
        .into_iter()
        .map(|n| {
            let ip = host_of(&n.address);
            let mut v = serde_json::to_value(n).unwrap_or_default();
            // Wazuh's name for the node's address.
            v["ip"] = ip.into();
            v
        })
        .collect();
    HttpResponse::Ok().json(envelope(&items, "All selected nodes information was returned"))
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            host.trim_start_matches('[').trim_end_matches(']').to_string()
        }
        _ => address.to_string(),
    }
}

/// `GET /cluster/actors` (this project's): per node, the status of every actor (state, runs,
/// failures, restarts, last run, last error); for each worker, both ends of its connection.
pub(super) async fn actors(node: web::Data<NodeHandle>) -> HttpResponse {
    let items = node.healthcheck().await;
    HttpResponse::Ok().json(envelope(&items, "All selected nodes healthcheck information was returned"))
}

/// A date as Wazuh's cluster writes it (Python's `str(datetime)` in UTC).
fn wazuh_date(iso: &str) -> Option<String> {
    let t: jiff::Timestamp = iso.parse().ok()?;
    Some(t.strftime("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string())
}

/// `GET /cluster/healthcheck` in Wazuh's shape: per node its `info` (name, type, version, ip,
/// active agents) and, for a worker, the `status` of its synchronizations (when each last started
/// and ended, whether one runs now, the last keep-alive), from the master's end of its connection.
pub(super) async fn healthcheck(node: web::Data<NodeHandle>) -> HttpResponse {
    let health = node.healthcheck().await;
    let nodes = node.nodes().await;
    let summary = node.agent_summary().await.ok();
    let items: Vec<serde_json::Value> = health
        .iter()
        .map(|h| {
            let view = nodes.iter().find(|n| n.name == h.name);
            let active = summary.as_ref().and_then(|s| s.nodes.get(&h.name)).and_then(|c| c.get("active")).copied();
            let mut item = serde_json::json!({ "info": {
                "name": h.name,
                "type": h.kind,
                "version": view.map(|v| v.version.clone()).unwrap_or_else(|| crate::node::handle::VERSION.to_string()),
                "ip": view.map(|v| host_of(&v.address)).unwrap_or_default(),
                "n_active_agents": active.unwrap_or(0),
            }});
            if h.kind == "worker" {
                item["status"] = worker_status(h);
            }
            item
        })
        .collect();
    HttpResponse::Ok().json(envelope(&items, "All selected nodes healthcheck information was returned"))
}

/// A worker's synchronizations, as Wazuh's healthcheck shows them, from the master's jobs of its
/// connection: `Integrity` (files), `AgentInfo` (statuses), `AgentGroupsSend` (groups).
fn worker_status(h: &crate::views::NodeHealthView) -> serde_json::Value {
    let job = |name: &str| h.actors.iter().find(|a| a.name == name && a.end == "master");
    // When the job's last run started and ended, under Wazuh's names for them.
    let span = |name: &str, start: &str, end: &str| {
        let mut out = serde_json::Map::new();
        if let Some(a) = job(name) {
            let started = a.last_run.as_deref().and_then(wazuh_date);
            let ended = a.last_run.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).and_then(|t| {
                let end =
                    t.checked_add(jiff::SignedDuration::from_millis(a.last_duration_ms.unwrap_or(0) as i64)).ok()?;
                wazuh_date(&end.to_string())
            });
            if let (Some(s), Some(e)) = (started, ended) {
                out.insert(start.into(), s.into());
                out.insert(end.into(), e.into());
            }
            out.insert("n_synced_chunks".into(), a.runs.into());
        }
        serde_json::Value::Object(out)
    };
    let free = |name: &str| job(name).is_none_or(|a| a.state != "running");
    let mut integrity = span("Integrity", "date_start_master", "date_end_master");
    if let Some(map) = integrity.as_object_mut() {
        map.remove("n_synced_chunks");
    }
    let mut status = serde_json::json!({
        "sync_integrity_free": free("Integrity"),
        "last_sync_integrity": integrity,
        "sync_agent_info_free": free("AgentInfo"),
        "last_sync_agentinfo": span("AgentInfo", "date_start_master", "date_end_master"),
        "last_sync_agentgroup": span("AgentGroupsSend", "date_start", "date_end"),
    });
    if let Some(at) = h.last_keepalive.as_deref().and_then(wazuh_date) {
        status["last_keep_alive"] = at.into();
    }
    status
}

pub(super) async fn health(node: web::Data<NodeHandle>) -> HttpResponse {
    // The event loop first: a stuck one would not answer what follows.
    if let Some(age) = crate::node::watchdog::heartbeat().map(|h| h.age()).filter(|a| *a > crate::node::watchdog::LATE)
    {
        let detail = format!("the node's event loop has made no progress for {} s", age.as_secs());
        let body = serde_json::json!({ "status": "not serving", "detail": detail, "node": node.name() });
        return HttpResponse::ServiceUnavailable().json(body);
    }
    let (serving, detail) = node.serving().await;
    let mut body = serde_json::json!({ "status": if serving { "serving" } else { "not serving" }, "detail": detail, "node": node.name() });
    // The manager integrations that are on, with their bounds and drops; a daemon of the install
    // that is away is said here without taking the node out of service (its agents are served).
    let figures = node.manager_figures();
    let on: serde_json::Map<String, serde_json::Value> = serde_json::to_value(&**figures)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, v)| v.get("on").and_then(serde_json::Value::as_u64) == Some(1))
        .collect();
    if !on.is_empty() {
        body["manager"] = serde_json::Value::Object(on);
        if let Some(trouble) = figures.trouble() {
            body["manager"]["trouble"] = trouble.into();
        }
    }
    if serving {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// What this node is, for the informational endpoints.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub cluster: String,
    pub data_dir: String,
}

/// `GET /`: the API's own information, in Wazuh's shape.
pub(super) async fn api_info(node: web::Data<NodeHandle>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "data": {
            "title": "Wazuh API REST",
            "api_version": crate::node::handle::VERSION,
            // A string, as Wazuh's API gives it (its document's `x-revision`).
            "revision": "1",
            "license_name": "Apache 2.0",
            "license_url": "https://www.apache.org/licenses/LICENSE-2.0",
            "hostname": node.name(),
            "timestamp": crate::views::iso(wazuh_cluster_actors::clock::now_ms()),
        },
        "error": 0,
    }))
}

pub(super) fn node_type(node: &NodeHandle) -> &'static str {
    match node {
        NodeHandle::Master { .. } => "master",
        NodeHandle::Worker { .. } => "worker",
    }
}

/// `GET /cluster/status`: clustering is on; with high availability, this node's view of the Raft
/// group (state, term, leader, members) and where its registry stands (last change, digest).
pub(super) async fn cluster_status(node: web::Data<NodeHandle>) -> HttpResponse {
    let mut data = serde_json::json!({ "enabled": "yes", "running": "yes" });
    if let Some(mut raft) = node.raft_status() {
        if let Some((change, hash)) = node.registry_position().await {
            raft["registry"] = serde_json::json!({ "change": change, "hash": hash });
        }
        data["raft"] = raft;
    }
    HttpResponse::Ok().json(serde_json::json!({ "data": data, "error": 0 }))
}

/// `GET /cluster/local/info`: this node's name, cluster and type.
pub(super) async fn cluster_local_info(node: web::Data<NodeHandle>, info: web::Data<NodeInfo>) -> HttpResponse {
    let item = serde_json::json!({ "node": node.name(), "cluster": info.cluster, "type": node_type(&node) });
    HttpResponse::Ok().json(envelope(&[item], "Read node information"))
}

/// This installation's UUID (Wazuh's `uuid`): random, made at the first ask and kept in
/// `var/uuid` under the data directory; empty if it can be neither read nor written.
fn installation_uuid(data_dir: &std::path::Path) -> String {
    let path = data_dir.join("var/uuid");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if text.len() == 36 {
            return text.to_string();
        }
    }
    let (a, b) = (wazuh_cluster_actors::backoff::random_u64(), wazuh_cluster_actors::backoff::random_u64());
    // Version 4 (random) and the RFC 4122 variant.
    let hi = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    );
    let written = std::fs::create_dir_all(data_dir.join("var")).and_then(|_| std::fs::write(&path, &uuid));
    if written.is_ok() {
        uuid
    } else {
        String::new()
    }
}

/// `GET /cluster/local/config`: this node's cluster settings as Wazuh's shows them (never the key).
pub(super) async fn cluster_local_config(
    node: web::Data<NodeHandle>,
    info: web::Data<NodeInfo>,
    query: web::Query<overview::PlainParams>,
) -> HttpResponse {
    let mut item = serde_json::json!({
        "name": info.cluster,
        "node_name": node.name(),
        "node_type": node_type(&node),
        "hidden": "no",
        "disabled": false,
    });
    match &**node {
        NodeHandle::Master { cluster_addr, .. } => {
            item["bind_addr"] = cluster_addr.ip().to_string().into();
            item["port"] = cluster_addr.port().into();
            item["nodes"] = serde_json::json!([cluster_addr.to_string()]);
        }
        NodeHandle::Worker { master, .. } => item["nodes"] = serde_json::json!([master]),
    }
    agents::json_answer(&envelope(&[item], "All selected information was returned"), query.pretty.unwrap_or(false))
}

/// `GET /cluster/ruleset/synchronization[?nodes_list=...]`: whether each node's files are the
/// master's (a worker's last file sync round ended in sync; the master is the source).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodesQuery {
    pretty: Option<bool>,
    #[allow(dead_code)] // Read only to be accepted: every answer is complete.
    wait_for_complete: Option<bool>,
    nodes_list: Option<String>,
}

impl NodesQuery {
    /// The nodes named, if any were.
    pub(super) fn nodes_list(&self) -> Option<Vec<String>> {
        self.nodes_list
            .as_deref()
            .map(|l| l.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect())
    }

    pub(super) fn pretty(&self) -> bool {
        self.pretty.unwrap_or(false)
    }
}

pub(super) async fn ruleset_synchronization(
    node: web::Data<NodeHandle>,
    query: web::Query<NodesQuery>,
) -> HttpResponse {
    let only: Option<Vec<&str>> =
        query.nodes_list.as_deref().map(|l| l.split(',').map(str::trim).filter(|n| !n.is_empty()).collect());
    let items: Vec<serde_json::Value> = node
        .healthcheck()
        .await
        .iter()
        .filter(|h| only.as_ref().is_none_or(|o| o.contains(&h.name.as_str())))
        .map(|h| {
            let synced = h.kind == "master"
                || h.actors.iter().any(|a| {
                    a.name == "Integrity"
                        && a.end == "worker"
                        && a.details.get("in_sync").and_then(|v| v.as_u64()) == Some(1)
                });
            serde_json::json!({ "name": h.name, "synced": synced })
        })
        .collect();
    agents::json_answer(
        &envelope(&items, "Nodes ruleset synchronization status was successfully read"),
        query.pretty.unwrap_or(false),
    )
}

/// `GET /cluster/{node_id}/{status,info,logs,configuration,stats...}`: a node's own `GET /manager/...`, from any node
/// (a worker asks the master, which asks the node, whose API answers with the caller's credential).
pub(super) async fn node_read(
    node: web::Data<NodeHandle>,
    info: web::Data<NodeInfo>,
    req: actix_web::HttpRequest,
    node_id: web::Path<String>,
) -> HttpResponse {
    let node_id = node_id.into_inner();
    // What follows `/cluster/{node_id}/`: `status`, `info`, `logs`, `configuration`, `stats[/hourly|/weekly]`.
    let what = req.path().trim_start_matches('/').splitn(3, '/').nth(2).unwrap_or("info").to_string();
    if node_id == node.name() {
        let query = req.query_string();
        return match what.as_str() {
            "status" => match web::Query::<overview::PlainParams>::from_query(query) {
                Ok(q) => manager::status(node, q).await,
                Err(e) => agents::bad_request(&format!("invalid request: {e}")),
            },
            "logs" => match web::Query::<manager::LogsQuery>::from_query(query) {
                Ok(q) => manager::logs(node, q).await,
                Err(e) => agents::bad_request(&format!("invalid request: {e}")),
            },
            "configuration" => match web::Query::<manager::ConfigurationQuery>::from_query(query) {
                Ok(q) => manager::configuration(node, q).await,
                Err(e) => agents::bad_request(&format!("invalid request: {e}")),
            },
            "stats" => match web::Query::<super::stats::TotalsQuery>::from_query(query) {
                Ok(q) => super::stats::day(node, q).await,
                Err(e) => agents::bad_request(&format!("invalid request: {e}")),
            },
            "stats/hourly" => match web::Query::<overview::PlainParams>::from_query(query) {
                Ok(q) => super::stats::hourly(node, q).await,
                Err(e) => agents::bad_request(&format!("invalid request: {e}")),
            },
            "stats/weekly" => match web::Query::<overview::PlainParams>::from_query(query) {
                Ok(q) => super::stats::weekly(node, q).await,
                Err(e) => agents::bad_request(&format!("invalid request: {e}")),
            },
            _ => match web::Query::<overview::PlainParams>::from_query(query) {
                Ok(_) => manager_info(node, info).await,
                Err(e) => agents::bad_request(&format!("invalid request: {e}")),
            },
        };
    }
    let known = node.nodes().await.iter().any(|n| n.name == node_id);
    if !known {
        return agents::bad_request(&format!(
            "Node does not exist: {:?}",
            wazuh_cluster_protocol::agent::enrollment::printable(&node_id)
        ));
    }
    let query = req.query_string();
    let target = if query.is_empty() { format!("/manager/{what}") } else { format!("/manager/{what}?{query}") };
    ask_node(&node, &req, &node_id, wazuh_cluster_protocol::message::ApiMethod::Get, target).await
}

/// Has node `node_id`'s own API answer `method target` with the caller's credential (the master
/// asks it over the cluster connection), and passes its answer on.
async fn ask_node(
    node: &NodeHandle,
    req: &actix_web::HttpRequest,
    node_id: &str,
    method: wazuh_cluster_protocol::message::ApiMethod,
    target: String,
) -> HttpResponse {
    let call = wazuh_cluster_protocol::message::ApiCall {
        method,
        target,
        credential: bearer(req).to_string(),
        content_type: String::new(),
        body: Vec::new(),
    };
    match node.call_worker_api(node_id, call).await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            HttpResponse::build(status).content_type(answer.content_type).body(answer.body)
        }
        Err(why) => HttpResponse::ServiceUnavailable().json(error_body(503, &why)),
    }
}

/// `PUT /manager/drain`: this worker stops gracefully, as on SIGTERM: it stops taking agents, asks
/// its agents to reconnect elsewhere, waits for them (`agents.drain_timeout` at most), says goodbye
/// and exits 0. A master does not drain.
pub(super) async fn drain(node: web::Data<NodeHandle>) -> HttpResponse {
    if !matches!(**node, NodeHandle::Worker { .. }) {
        return agents::bad_request("a master does not drain: its workers do");
    }
    if !crate::node::running::request_stop() {
        return HttpResponse::ServiceUnavailable()
            .json(error_body(503, "this node is not run by `wazuh-cluster run`: nothing here can stop it"));
    }
    let item = serde_json::json!({ "name": node.name(), "drain": "started" });
    agents::json_answer(&envelope(&[item], "The node is draining; it stops once its agents have gone"), false)
}

/// `PUT /cluster/{node_id}/drain`: has worker `node_id` drain (its own `PUT /manager/drain`, asked
/// over the cluster connection with the caller's credential), from any node.
pub(super) async fn node_drain(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    node_id: web::Path<String>,
) -> HttpResponse {
    let node_id = node_id.into_inner();
    if node_id == node.name() {
        return drain(node).await;
    }
    if !node.nodes().await.iter().any(|n| n.name == node_id) {
        return agents::bad_request(&format!(
            "Node does not exist: {:?}",
            wazuh_cluster_protocol::agent::enrollment::printable(&node_id)
        ));
    }
    ask_node(&node, &req, &node_id, wazuh_cluster_protocol::message::ApiMethod::Put, "/manager/drain".into()).await
}

/// `GET /manager/info`: what this node is, in the fields Wazuh's manager reports.
pub(super) async fn manager_info(node: web::Data<NodeHandle>, info: web::Data<NodeInfo>) -> HttpResponse {
    let item = serde_json::json!({
        "path": info.data_dir,
        "version": format!("v{}", crate::node::handle::VERSION),
        "type": "server",
        "max_agents": "unlimited",
        "openssl_support": "yes",
        "tz_offset": "+0000",
        "tz_name": "UTC",
        "node_name": node.name(),
        "node_type": node_type(&node),
        "uuid": installation_uuid(&node.data_dir()),
    });
    HttpResponse::Ok().json(envelope(&[item], "Basic information was successfully read"))
}

/// Prometheus' scrape endpoint (see `metrics.rs`).
pub(super) async fn metrics(node: web::Data<NodeHandle>) -> HttpResponse {
    let nodes = node.healthcheck().await;
    let agents = node.agent_summary().await.ok();
    let balance = node.balance().await;
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(crate::metrics::render(
        node.name(),
        &nodes,
        agents.as_ref(),
        balance.as_ref(),
        &node.manager_figures().samples(),
    ))
}

/// `GET /cluster/balance`: the active agents per worker, their mean, and what the rebalancer
/// does (its mode, state, moves and batches so far). A worker asks the master.
pub(super) async fn cluster_balance(
    node: web::Data<NodeHandle>,
    query: web::Query<overview::PlainParams>,
) -> HttpResponse {
    match node.balance().await {
        Some(view) => {
            agents::json_answer(&serde_json::json!({ "data": view, "error": 0 }), query.pretty.unwrap_or(false))
        }
        None => HttpResponse::ServiceUnavailable()
            .json(error_body(503, "the distribution of agents is the master's to tell, and it cannot now")),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct JoinTokenQuery {
    /// Seconds the token is valid (60 s .. 30 days; default 1 h).
    ttl: Option<u64>,
    /// How many workers may join with it (1..1000; default 1).
    uses: Option<u32>,
}

/// `POST /cluster/join-tokens[?ttl=&uses=]` (master): a join token, shown this once.
pub(super) async fn join_token(node: web::Data<NodeHandle>, query: web::Query<JoinTokenQuery>) -> HttpResponse {
    let (min, max) = wazuh_cluster_actors::admission::TOKEN_TTL;
    let ttl = std::time::Duration::from_secs(query.ttl.unwrap_or(3600));
    if ttl < min || ttl > max {
        let why = format!("ttl: {} s is out of range: {}..={} seconds", ttl.as_secs(), min.as_secs(), max.as_secs());
        return HttpResponse::BadRequest().json(error_body(400, &why));
    }
    let uses = query.uses.unwrap_or(1);
    if !(1..=wazuh_cluster_actors::admission::MAX_TOKEN_USES).contains(&uses) {
        let why = format!("uses: {uses} is out of range: 1..={}", wazuh_cluster_actors::admission::MAX_TOKEN_USES);
        return HttpResponse::BadRequest().json(error_body(400, &why));
    }
    match node.issue_join_token(ttl, uses).await {
        Ok(issued) => HttpResponse::Ok().json(serde_json::json!({
            "data": {
                "token": issued.token.reveal(),
                "id": issued.token.id,
                "expires": crate::views::iso(issued.expires_ms),
                "uses": issued.uses,
            },
            "message": "Join token issued: set it as cluster.join_token on the new worker(s)",
            "error": 0,
        })),
        Err(e) => change_failed(&e),
    }
}

/// `POST /cluster/nodes/{name}/revoke` (master): the worker's identity is revoked and its
/// connection closed; it cannot join again under any name.
pub(super) async fn revoke(node: web::Data<NodeHandle>, name: web::Path<String>) -> HttpResponse {
    match node.revoke_worker(name.into_inner()).await {
        Ok(Some(identity)) => HttpResponse::Ok().json(serde_json::json!({
            "data": { "revoked_identity": identity },
            "message": "Worker revoked",
            "error": 0,
        })),
        Ok(None) => HttpResponse::NotFound().json(error_body(404, "no admitted worker by that name")),
        Err(e) => change_failed(&e),
    }
}

/// `PUT /cluster/analysisd/reload` (master): every node's analysisd reloads the ruleset, each worker
/// once its files reached the master's; nodes that did not are `failed_items`, in Wazuh's shape.
pub(super) async fn reload_analysisd(node: web::Data<NodeHandle>) -> HttpResponse {
    match node.reload_ruleset_everywhere().await {
        Ok(outcomes) => {
            let (ok, failed): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(_, reloaded, _)| *reloaded);
            let affected: Vec<_> =
                ok.iter().map(|(name, _, message)| serde_json::json!({ "name": name, "message": message })).collect();
            let failed: Vec<_> = failed
                .iter()
                .map(|(name, _, message)| serde_json::json!({ "error": { "code": 1914, "message": message }, "id": [name] }))
                .collect();
            let message = if failed.is_empty() {
                "Reload request sent to all specified nodes"
            } else if affected.is_empty() {
                "Could not send reload request to any node"
            } else {
                "Could not send reload request to some nodes"
            };
            HttpResponse::Ok().json(bulk_envelope(affected, failed, message))
        }
        Err(e) => change_failed(&e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_and_addresses_as_wazuh_writes_them() {
        assert_eq!(
            super::wazuh_date("2021-05-27T10:50:51.325656Z").as_deref(),
            Some("2021-05-27 10:50:51.325656+00:00")
        );
        assert_eq!(super::wazuh_date("2021-05-27T10:50:51Z").as_deref(), Some("2021-05-27 10:50:51.000000+00:00"));
        assert_eq!(super::host_of("10.0.0.5:1516"), "10.0.0.5");
        assert_eq!(super::host_of("[::1]:1516"), "::1");
        assert_eq!(super::host_of("master"), "master");
    }
}
