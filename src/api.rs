//! The node's HTTP API (actix-web), in Wazuh's response envelope:
//! `{"data": {"affected_items": [...], "total_affected_items": N, ...}, "message": "...", "error": 0}`.
//!
//! - `GET /cluster/nodes`: the master lists itself and every connected worker; a worker lists
//!   itself and its master while connected.
//! - `GET /cluster/healthcheck`: per node, the status of every actor (state, runs, failures,
//!   restarts, last run, last error); for each worker, both ends of its connection.
//! - `GET /health`: 200 while the node serves (master listening, worker connected), 503 otherwise.
//! - `GET /agents[?status=&node=&group=&keys=true]`: the master answers from its registry, a worker
//!   from its replica; keys only for loopback clients that ask.

use crate::node::NodeHandle;
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Serialize;
use std::net::SocketAddr;

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
struct AgentQuery {
    status: Option<String>,
    node: Option<String>,
    group: Option<String>,
    /// Include each agent's key (loopback only).
    keys: Option<bool>,
}

async fn agents(
    node: web::Data<NodeHandle>,
    query: web::Query<AgentQuery>,
    req: actix_web::HttpRequest,
) -> HttpResponse {
    let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    let with_keys = query.keys.unwrap_or(false);
    if with_keys && !loopback {
        return HttpResponse::Forbidden().json(error_body(403, "agent keys are only served to loopback clients"));
    }
    match node.agents(with_keys).await {
        Ok(items) => {
            let items: Vec<_> = items
                .into_iter()
                .filter(|a| query.status.as_ref().is_none_or(|s| a.status.as_ref() == Some(s)))
                .filter(|a| query.node.as_ref().is_none_or(|n| a.node_name.as_ref() == Some(n)))
                .filter(|a| query.group.as_ref().is_none_or(|g| a.group.contains(g)))
                .collect();
            HttpResponse::Ok().json(envelope(&items, "All selected agents information was returned"))
        }
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(error_body(503, &format!("the agent registry is unavailable: {e}")))
        }
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(error_body(404, "no such endpoint"))
}

/// Binds the API on `bind` and starts serving in the background. Returns the bound address and a
/// handle to stop it.
pub fn start(bind: SocketAddr, node: NodeHandle) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let data = web::Data::new(node);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/cluster/nodes", web::get().to(nodes))
            .route("/cluster/healthcheck", web::get().to(healthcheck))
            .route("/health", web::get().to(health))
            .route("/agents", web::get().to(agents))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(bind)?;
    let addr = server.addrs().first().copied().unwrap_or(bind);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((addr, handle))
}
