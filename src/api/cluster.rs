//! The node and the cluster: `GET /`, `/manager/info`, `/cluster/{status,local/info,nodes,healthcheck}`,
//! `/health`, `/metrics`, join tokens, revocation and the cluster-wide analysisd reload.

use super::*;

pub(super) async fn nodes(node: web::Data<NodeHandle>) -> HttpResponse {
    let items = node.nodes().await;
    HttpResponse::Ok().json(envelope(&items, "All selected nodes information was returned"))
}

pub(super) async fn healthcheck(node: web::Data<NodeHandle>) -> HttpResponse {
    let items = node.healthcheck().await;
    HttpResponse::Ok().json(envelope(&items, "All selected nodes healthcheck information was returned"))
}

pub(super) async fn health(node: web::Data<NodeHandle>) -> HttpResponse {
    let (serving, detail) = node.serving().await;
    let body = serde_json::json!({ "status": if serving { "serving" } else { "not serving" }, "detail": detail, "node": node.name() });
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
            "revision": 1,
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
    });
    HttpResponse::Ok().json(envelope(&[item], "Basic information was successfully read"))
}

/// Prometheus' scrape endpoint (see `metrics.rs`).
pub(super) async fn metrics(node: web::Data<NodeHandle>) -> HttpResponse {
    let nodes = node.healthcheck().await;
    let agents = node.agent_summary().await.ok();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(crate::metrics::render(
        node.name(),
        &nodes,
        agents.as_ref(),
    ))
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
