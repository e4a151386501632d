//! The node's HTTP API (actix-web), in Wazuh's response envelope:
//! `{"data": {"affected_items": [...], "total_affected_items": N, ...}, "message": "...", "error": 0}`.
//!
//! - `GET /cluster/nodes`: the master lists itself and every connected worker; a worker lists
//!   itself and its master while connected.
//! - `GET /cluster/healthcheck`: per node, the status of every actor (state, runs, failures,
//!   restarts, last run, last error); for each worker, both ends of its connection.
//! - `GET /health`: 200 while the node serves (master listening, worker connected), 503 otherwise.
//! - `GET /agents[?offset=&limit=&sort=&status=&node_name=&group=&keys=true]`, `GET /agents/{id}`:
//!   the master answers from its registry, a worker from its replica; one page at a time (default
//!   500, at most 100,000, as Wazuh's API); keys only for loopback clients that ask.
//! - `GET /agents/summary/status`: counts by status, configuration status and node (no agent read).
//! - `PUT /agents/reconnect[?agents_list=001,002][&node=NAME]`: `#!-force_reconnect` to agents.
//! - `DELETE /agents/{id}`, `GET /groups`, `POST /groups` (`{"group_id": "linux"}`),
//!   `DELETE /groups/{group}`, `PUT|DELETE /agents/{id}/group/{group}`: changes need
//!   `Authorization: Bearer <api.token>`; a worker forwards them to the master.

use crate::node::handle::{ChangeError, NodeHandle};
use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Serialize;
use wazuh_cluster_actors::registry::query::{parse_sort, AgentQuery};
use wazuh_cluster_protocol::message::{AdminError, AdminRequest};

/// Wazuh's envelope around a list of items.
pub fn envelope<T: Serialize>(items: &[T], message: &str) -> serde_json::Value {
    serde_json::json!({
        "data": {
            "affected_items": items,
            "total_affected_items": items.len(),
            "total_failed_items": 0,
            "failed_items": [],
        },
        "message": message,
        "error": 0,
    })
}

fn error_body(code: u16, message: &str) -> serde_json::Value {
    serde_json::json!({ "title": message, "detail": message, "error": code })
}

async fn nodes(node: web::Data<NodeHandle>) -> HttpResponse {
    let items = node.nodes().await;
    HttpResponse::Ok().json(envelope(&items, "All selected nodes information was returned"))
}

async fn healthcheck(node: web::Data<NodeHandle>) -> HttpResponse {
    let items = node.healthcheck().await;
    HttpResponse::Ok().json(envelope(&items, "All selected nodes healthcheck information was returned"))
}

async fn health(node: web::Data<NodeHandle>) -> HttpResponse {
    let (serving, detail) = node.serving().await;
    let body = serde_json::json!({ "status": if serving { "serving" } else { "not serving" }, "detail": detail, "node": node.name() });
    if serving {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[derive(serde::Deserialize)]
struct AgentsParams {
    status: Option<String>,
    /// Wazuh's name for it; `node` is accepted too.
    node_name: Option<String>,
    node: Option<String>,
    group: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
    /// `+name,-id`: see [`parse_sort`].
    sort: Option<String>,
    /// Include each agent's key (loopback only).
    keys: Option<bool>,
}

/// `GET /agents`: one page (`offset`, `limit` default 500 and at most 100,000, `sort`), filtered
/// by `status`, `node_name`, `group`; `total_affected_items` counts every match.
async fn agents(
    node: web::Data<NodeHandle>,
    query: web::Query<AgentsParams>,
    req: actix_web::HttpRequest,
) -> HttpResponse {
    let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    let p = query.into_inner();
    let with_keys = p.keys.unwrap_or(false);
    if with_keys && !loopback {
        return HttpResponse::Forbidden().json(error_body(403, "agent keys are only served to loopback clients"));
    }
    let sort = match p.sort.as_deref().map(parse_sort).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &e.to_string())),
    };
    let q = AgentQuery {
        status: p.status,
        node: p.node_name.or(p.node),
        group: p.group,
        sort,
        offset: p.offset.unwrap_or(0),
        ..AgentQuery::default()
    };
    let q = match q.with_limit(p.limit) {
        Ok(q) => q,
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &e.to_string())),
    };
    match node.agents_page(q, with_keys).await {
        Ok((total, items)) => {
            let mut body = envelope(&items, "All selected agents information was returned");
            body["data"]["total_affected_items"] = total.into();
            HttpResponse::Ok().json(body)
        }
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(error_body(503, &format!("the agent registry is unavailable: {e}")))
        }
    }
}

/// `GET /agents/summary/status`: agents by connection status and configuration status (Wazuh's
/// shape), and by node (`nodes`), from counters: no agent is read.
async fn agents_summary(node: web::Data<NodeHandle>) -> HttpResponse {
    match node.agent_summary().await {
        Ok(summary) => HttpResponse::Ok().json(serde_json::json!({
            "data": summary,
            "message": "Agent summary was returned",
            "error": 0,
        })),
        Err(e) => HttpResponse::ServiceUnavailable().json(error_body(503, &e.to_string())),
    }
}

/// The configured token, shared with the handlers.
#[derive(Clone)]
pub struct Token(pub Option<String>);

/// The request's `Authorization: Bearer` credential ("" when there is none).
fn bearer(req: &actix_web::HttpRequest) -> &str {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Mutations need `Authorization: Bearer <api.token>`; `Some(refusal)` when this request may not.
fn refuse_unauthorized(req: &actix_web::HttpRequest, token: &Token) -> Option<HttpResponse> {
    let Some(expected) = &token.0 else {
        return Some(
            HttpResponse::Forbidden().json(error_body(403, "changes through the API need api.token to be configured")),
        );
    };
    let given = bearer(req);
    // Length first, then every byte: no early exit on the first difference.
    let same = given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        None
    } else {
        Some(HttpResponse::Unauthorized().json(error_body(401, "missing or wrong API token")))
    }
}

async fn change(
    node: &NodeHandle,
    req: &actix_web::HttpRequest,
    token: &Token,
    request: AdminRequest,
    done: &str,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(req, token) {
        return refusal;
    }
    // A worker hands the caller's credential to the master, which checks it again itself.
    match node.admin(request, bearer(req).to_string()).await {
        Ok(()) => HttpResponse::Ok().json(envelope::<String>(&[], done)),
        Err(e) => {
            let status = change_status(&e);
            HttpResponse::build(status).json(error_body(status.as_u16(), &e.to_string()))
        }
    }
}

#[derive(serde::Deserialize)]
struct ReconnectQuery {
    /// Comma-separated agent ids; absent: every agent.
    agents_list: Option<String>,
    /// Only agents connected to this node.
    node: Option<String>,
}

/// `PUT /agents/reconnect[?agents_list=001,002][&node=worker-1]`: sends `#!-force_reconnect` to
/// the agents (the master forwards the request to its workers).
async fn reconnect(
    node: web::Data<NodeHandle>,
    token: web::Data<Token>,
    req: actix_web::HttpRequest,
    query: web::Query<ReconnectQuery>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req, &token) {
        return refusal;
    }
    let mut ids = Vec::new();
    for text in query.agents_list.as_deref().unwrap_or("").split(',').filter(|t| !t.is_empty()) {
        match wazuh_cluster_actors::registry::parse_id(text) {
            Some(id) => ids.push(id),
            None => return bad_id(text),
        }
    }
    let nodes = node.force_reconnect(query.node.clone(), ids).await;
    HttpResponse::Ok().json(envelope(&nodes, "Force reconnect command was sent to the agents"))
}

fn bad_id(text: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(error_body(400, &format!("invalid agent id {text:?}")))
}

async fn delete_agent(
    node: web::Data<NodeHandle>,
    token: web::Data<Token>,
    req: actix_web::HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, &token, AdminRequest::DeleteAgent { id }, "Agent deleted").await
}

async fn list_groups(node: web::Data<NodeHandle>) -> HttpResponse {
    match node.groups().await {
        Ok(groups) => {
            let items: Vec<_> =
                groups.into_iter().map(|(name, count)| serde_json::json!({ "name": name, "count": count })).collect();
            HttpResponse::Ok().json(envelope(&items, "All selected groups information was returned"))
        }
        Err(e) => HttpResponse::ServiceUnavailable().json(error_body(503, &e.to_string())),
    }
}

#[derive(serde::Deserialize)]
struct NewGroup {
    group_id: String,
}

async fn create_group(
    node: web::Data<NodeHandle>,
    token: web::Data<Token>,
    req: actix_web::HttpRequest,
    body: web::Json<NewGroup>,
) -> HttpResponse {
    let name = body.into_inner().group_id;
    change(&node, &req, &token, AdminRequest::CreateGroup { name }, "Group created").await
}

async fn delete_group(
    node: web::Data<NodeHandle>,
    token: web::Data<Token>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    change(&node, &req, &token, AdminRequest::DeleteGroup { name: name.into_inner() }, "Group deleted").await
}

async fn assign(
    node: web::Data<NodeHandle>,
    token: web::Data<Token>,
    req: actix_web::HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (id, group) = path.into_inner();
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, &token, AdminRequest::AssignGroup { id, group }, "Agent assigned to the group").await
}

async fn unassign(
    node: web::Data<NodeHandle>,
    token: web::Data<Token>,
    req: actix_web::HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (id, group) = path.into_inner();
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, &token, AdminRequest::UnassignGroup { id, group }, "Agent removed from the group").await
}

async fn get_agent(node: web::Data<NodeHandle>, id: web::Path<String>) -> HttpResponse {
    let Some(num) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    let id = wazuh_cluster_actors::registry::fmt_id(num);
    match node.agent(num).await {
        Ok(Some(a)) => HttpResponse::Ok().json(envelope(&[a], "Agent information was returned")),
        Ok(None) => HttpResponse::NotFound().json(error_body(404, &format!("no agent with id {id}"))),
        Err(e) => HttpResponse::ServiceUnavailable().json(error_body(503, &e.to_string())),
    }
}

/// Prometheus' scrape endpoint (see `metrics.rs`).
async fn metrics(node: web::Data<NodeHandle>) -> HttpResponse {
    let nodes = node.healthcheck().await;
    let agents = node.agent_summary().await.ok();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(crate::metrics::render(
        node.name(),
        &nodes,
        agents.as_ref(),
    ))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(error_body(404, "no such endpoint"))
}

/// The HTTP status for a change that was not made: the only place cluster outcomes become HTTP.
fn change_status(e: &ChangeError) -> StatusCode {
    match e {
        ChangeError::Refused(AdminError::NoSuchAgent(_) | AdminError::NoSuchGroup(_)) => StatusCode::NOT_FOUND,
        ChangeError::Refused(AdminError::Invalid(_)) => StatusCode::BAD_REQUEST,
        ChangeError::Refused(AdminError::Unauthorized) => StatusCode::FORBIDDEN,
        ChangeError::Refused(AdminError::Unavailable(_))
        | ChangeError::Registry(_)
        | ChangeError::Master(_)
        | ChangeError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Starts serving the API on `listener` (bound by the caller) in the background. Returns a handle
/// to stop it.
pub fn start(
    listener: std::net::TcpListener,
    node: NodeHandle,
    token: Option<String>,
) -> std::io::Result<ServerHandle> {
    let data = web::Data::new(node);
    let token = web::Data::new(Token(token));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(token.clone())
            .route("/cluster/nodes", web::get().to(nodes))
            .route("/cluster/healthcheck", web::get().to(healthcheck))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics))
            .route("/agents", web::get().to(agents))
            .route("/agents/reconnect", web::put().to(reconnect))
            .route("/agents/summary/status", web::get().to(agents_summary))
            .route("/agents/{id}", web::get().to(get_agent))
            .route("/agents/{id}", web::delete().to(delete_agent))
            .route("/agents/{id}/group/{group}", web::put().to(assign))
            .route("/agents/{id}/group/{group}", web::delete().to(unassign))
            .route("/groups", web::get().to(list_groups))
            .route("/groups", web::post().to(create_group))
            .route("/groups/{group}", web::delete().to(delete_group))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}
