//! The node's HTTP API (actix-web), in Wazuh's response envelope:
//! `{"data": {"affected_items": [...], "total_affected_items": N, ...}, "message": "...", "error": 0}`.
//!
//! - `GET /ui`: the web console (static files embedded in the binary; it signs in through the API).
//! - `GET /` (the API's information), `GET /manager/info`, `GET /cluster/status`,
//!   `GET /cluster/local/info`: in Wazuh's shapes.
//! - `GET /cluster/nodes`: the master lists itself and every connected worker; a worker lists
//!   itself and its master while connected.
//! - `GET /cluster/healthcheck`: per node, the status of every actor (state, runs, failures,
//!   restarts, last run, last error); for each worker, both ends of its connection.
//! - `GET /health`: 200 while the node serves (master listening, worker connected), 503 otherwise.
//! - `GET /agents` with every parameter of Wazuh's specification (see [`agent_list`] and Wazuh's
//!   query language in [`wql`]), `GET /agents/{id}`: the master answers from its registry; a
//!   worker forwards reads of agents and groups to the master ([`forward`]), so every node answers
//!   alike. One page at a time (default 500, at most 100,000, as Wazuh's API). No list carries a
//!   key: `GET /agents/{id}/key` is the one explicit call that returns one.
//! - `GET /agents/summary/status`: counts by status, configuration status and node (no agent read).
//! - `PUT /agents/reconnect[?agents_list=001,002][&node=NAME]`: `#!-force_reconnect` to agents.
//! - `DELETE /agents/{id}`, `GET /groups`, `POST /groups` (`{"group_id": "linux"}`),
//!   `DELETE /groups/{group}`, `PUT|DELETE /agents/{id}/group/{group}`: changes need
//!   a worker forwards them to the master with the caller's credential, which the master checks.
//! - `GET|PUT|DELETE /{rules,decoders,lists}/files/{name}`: a ruleset file (`?raw=true` for the bare
//!   content; PUT takes the file as its body, `?overwrite=true` to replace): writes go to the
//!   master's sync roots (a worker forwards them) and reach every node by file sync.
//! - `PUT /cluster/analysisd/reload` (master): every node's analysisd reloads the ruleset, each
//!   worker once its files reached the master's digest.
//! - `POST /cluster/join-tokens[?ttl=SECONDS&uses=N]` (master): a join token for new workers;
//!   `POST /cluster/nodes/{name}/revoke` (master): a worker's identity is revoked.
//!
//! - `POST /security/user/authenticate[?raw=true]` with HTTP Basic: a token for an `api.users`
//!   user (Wazuh's envelope, or the bare token).
//!
//! Every endpoint but `/health`, the authentication (and `/metrics` with `api.metrics_public`) needs
//! `Authorization: Bearer <token>` (a user's token, or the static `api.token`), and answers 401
//! without it; a `readonly` user gets 403 on anything but `GET`. A request whose `Host` is not
//! an IP literal, `localhost` or one of `api.allowed_hosts` is refused (421) before anything else:
//! a web page cannot reach the API through a name it controls (DNS rebinding). No CORS header is
//! ever sent, so browsers keep other origins' scripts from reading answers.

use crate::auth::ApiRole;
use crate::node::handle::{ChangeError, NodeHandle};
use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse};
use base64ct::Encoding;
use serde::Serialize;
use wazuh_cluster_actors::registry::fmt_id;
use wazuh_cluster_actors::registry::query::AgentQuery;
use wazuh_cluster_protocol::message::{AdminError, AdminRequest, RulesetRoot};

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

/// [`envelope`]'s shape for items of a type, written straight to text: a page of hundreds of
/// agents costs no `serde_json::Value` tree (whose maps were most of a page's cost).
#[derive(Serialize)]
pub struct Listed<'a, T: Serialize> {
    data: ListedData<'a, T>,
    message: &'a str,
    error: u8,
}

#[derive(Serialize)]
struct ListedData<'a, T: Serialize> {
    affected_items: &'a [T],
    total_affected_items: u64,
    total_failed_items: u8,
    failed_items: [u8; 0],
}

impl<'a, T: Serialize> Listed<'a, T> {
    /// `items` of `total` matches, with `message`.
    pub fn new(items: &'a [T], total: u64, message: &'a str) -> Self {
        Self {
            data: ListedData {
                affected_items: items,
                total_affected_items: total,
                total_failed_items: 0,
                failed_items: [],
            },
            message,
            error: 0,
        }
    }
}

fn error_body(code: u16, message: &str) -> serde_json::Value {
    serde_json::json!({ "title": message, "detail": message, "error": code })
}

async fn change(node: &NodeHandle, req: &actix_web::HttpRequest, request: AdminRequest, done: &str) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(req) {
        return refusal;
    }
    // A worker hands the caller's credential to the master, which checks it again itself.
    match node.admin(request, bearer(req).to_string()).await {
        Ok(()) => HttpResponse::Ok().json(envelope::<String>(&[], done)),
        Err(e) => change_failed(&e),
    }
}

/// Applies `requests` one by one (each named by the id it shows in the answer), in Wazuh's bulk
/// envelope: the ones done in `affected_items`, the others in `failed_items` with why.
async fn bulk(
    node: &NodeHandle,
    req: &actix_web::HttpRequest,
    requests: Vec<(String, AdminRequest)>,
    done: &str,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(req) {
        return refusal;
    }
    let (mut affected, mut failed) = (Vec::new(), Vec::new());
    for (id, request) in requests {
        match node.admin(request, bearer(req).to_string()).await {
            Ok(()) => affected.push(id),
            Err(e) => {
                let code = change_status(&e).as_u16();
                failed.push(serde_json::json!({ "error": { "code": code, "message": e.to_string() }, "id": [id] }));
            }
        }
    }
    let pretty = req.query_string().split('&').any(|pair| pair == "pretty=true");
    let message = if failed.is_empty() { done.to_string() } else { format!("{done} (some were not)") };
    agents::json_answer(&bulk_envelope(affected, failed, &message), pretty)
}

/// Wazuh's bulk envelope: what was done, what was not and why; `error` 0 (all), 2 (some), 1 (none).
fn bulk_answer<T: Serialize>(affected: Vec<T>, failed: Vec<serde_json::Value>, done: &str) -> HttpResponse {
    let message = if failed.is_empty() { done.to_string() } else { format!("{done} (some were not)") };
    HttpResponse::Ok().json(bulk_envelope(affected, failed, &message))
}

/// The body of Wazuh's bulk envelope with `message`.
fn bulk_envelope<T: Serialize>(affected: Vec<T>, failed: Vec<serde_json::Value>, message: &str) -> serde_json::Value {
    serde_json::json!({
        "data": {
            "affected_items": affected,
            "total_affected_items": affected.len(),
            "total_failed_items": failed.len(),
            "failed_items": failed,
        },
        "message": message,
        "error": if failed.is_empty() { 0 } else if affected.is_empty() { 1 } else { 2 },
    })
}

/// Wazuh's answer when the one item asked for could not be handled (no such agent, file, user):
/// 200 with `error` 1 and the item in `failed_items`, with Wazuh's code and message.
fn failed_item(id: &str, code: u16, message: &str, none_msg: &str) -> HttpResponse {
    let failed = vec![serde_json::json!({ "error": { "code": code, "message": message }, "id": [id] })];
    HttpResponse::Ok().json(bulk_envelope::<String>(Vec::new(), failed, none_msg))
}

#[derive(serde::Deserialize)]
struct FileQuery {
    /// GET: the file's content as text (`true`) or in Wazuh's envelope. PUT: replace an existing
    /// file (`true`) or refuse to (default).
    raw: Option<bool>,
    overwrite: Option<bool>,
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(error_body(404, "no such endpoint"))
}

/// The HTTP status for a change that was not made: the only place cluster outcomes become HTTP.
/// The answer to a change that failed: its status and Wazuh's error body.
fn change_failed(e: &ChangeError) -> HttpResponse {
    let status = change_status(e);
    HttpResponse::build(status).json(error_body(status.as_u16(), &e.to_string()))
}

fn change_status(e: &ChangeError) -> StatusCode {
    match e {
        ChangeError::Refused(
            AdminError::NoSuchAgent(_)
            | AdminError::NoSuchGroup(_)
            | AdminError::NoSuchFile(_)
            | AdminError::NoSuchUser(_),
        ) => StatusCode::NOT_FOUND,
        ChangeError::Refused(AdminError::Invalid(_)) => StatusCode::BAD_REQUEST,
        ChangeError::Refused(AdminError::Unauthorized) => StatusCode::FORBIDDEN,
        ChangeError::Refused(AdminError::Unavailable(_))
        | ChangeError::Registry(_)
        | ChangeError::Master(_)
        | ChangeError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The web console's files, embedded in the binary.
const UI_HTML: &str = include_str!("../ui/index.html");
const UI_JS: &str = include_str!("../ui/app.js");
const UI_CSS: &str = include_str!("../ui/app.css");

/// A static file of the console; the page may run only its own script and style (CSP).
fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

/// A 400 in the API's error format for a request that does not parse.
fn bad_input(why: String) -> actix_web::Error {
    let body = error_body(400, &format!("invalid request: {why}"));
    actix_web::error::InternalError::from_response(why, HttpResponse::BadRequest().json(body)).into()
}

mod access;
mod agent_list;
mod agents;
mod cluster;
mod commands;
mod forward;
mod groups;
mod listener;
mod listing;
mod manager;
mod overview;
mod rules;
mod ruleset;
mod security;
pub mod spec;
mod stats;
mod wql;
mod xml;

use access::*;
pub use access::{Access, Caller};
use agents::*;
pub use cluster::NodeInfo;
use cluster::*;
use groups::*;
pub use listener::ApiLimits;
use ruleset::*;

/// Starts serving the API on `listener` (bound by the caller) in the background, within `limits`.
/// Returns a handle to stop it.
pub fn start(
    listener: std::net::TcpListener,
    node: NodeHandle,
    access: Access,
    limits: ApiLimits,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    info: NodeInfo,
    reads: &wazuh_cluster_actors::settings::ApiCalls,
) -> std::io::Result<ServerHandle> {
    let name = node.name().to_string();
    let data = web::Data::new(node);
    let info = web::Data::new(info);
    let access = web::Data::new(access);
    let app = move || {
        let mut app = App::new()
            .app_data(data.clone())
            .app_data(access.clone())
            .app_data(info.clone())
            // The guard (outermost) lets the caller in; then a worker forwards cluster reads.
            .wrap(actix_web::middleware::from_fn(forward::forward_calls))
            .wrap(actix_web::middleware::from_fn(guard))
            // Malformed parameters and bodies answer in the API's JSON error format.
            .app_data(web::QueryConfig::default().error_handler(|e, _| bad_input(e.to_string())))
            .app_data(web::PathConfig::default().error_handler(|e, _| bad_input(e.to_string())))
            .app_data(web::JsonConfig::default().error_handler(|e, _| bad_input(e.to_string())))
            .app_data(web::PayloadConfig::new(wazuh_cluster_actors::registry::admin::MAX_RULESET_FILE));
        // The web console: static files, open (it signs in through the API).
        app = app
            .route("/ui", web::get().to(|| async { asset("text/html; charset=utf-8", UI_HTML) }))
            .route("/ui/", web::get().to(|| async { asset("text/html; charset=utf-8", UI_HTML) }))
            .route("/ui/app.js", web::get().to(|| async { asset("text/javascript; charset=utf-8", UI_JS) }))
            .route("/ui/app.css", web::get().to(|| async { asset("text/css; charset=utf-8", UI_CSS) }));
        for ep in spec::endpoints() {
            app = app.route(ep.path, (ep.route)());
        }
        app.default_service(web::to(not_found))
    };
    // The master answers the reads its workers forward with this same application.
    reads.set(forward::in_process_calls(app.clone()));
    let tls = tls.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    });
    listener::serve(listener, app, tls, limits, &name)
}
