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
//! - `GET /agents[?offset=&limit=&sort=&status=&node_name=&group=&agents_list=&search=&select=&q=]`,
//!   `GET /agents/{id}`:
//!   the master answers from its registry, a worker from its replica; one page at a time (default
//!   500, at most 100,000, as Wazuh's API). No list carries a key: `GET /agents/{id}/key` is the
//!   one explicit call that returns one.
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
use wazuh_cluster_actors::registry::query::{parse_sort, AgentQuery};
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
#[allow(dead_code)] // `keys` is read only to refuse it with a clear message.
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
    /// No longer served in lists: refused with a pointer to `GET /agents/{id}/key`.
    keys: Option<String>,
    /// Comma-separated agent ids.
    agents_list: Option<String>,
    /// Agents whose id, name or address contains this.
    search: Option<String>,
    /// Comma-separated fields to return (`id` always comes).
    select: Option<String>,
    /// Wazuh's query: `field=value` terms joined by `;` (status, node_name, group, name, id).
    q: Option<String>,
}

/// `GET /agents`: one page (`offset`, `limit` default 500 and at most 100,000, `sort`), filtered
/// by `status`, `node_name`, `group`; `total_affected_items` counts every match.
async fn agents(node: web::Data<NodeHandle>, query: web::Query<AgentsParams>) -> HttpResponse {
    let p = query.into_inner();
    if p.keys.is_some() {
        return HttpResponse::BadRequest()
            .json(error_body(400, "lists never carry agent keys: ask for one with GET /agents/{id}/key"));
    }
    let sort = match p.sort.as_deref().map(parse_sort).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &e.to_string())),
    };
    let mut ids = Vec::new();
    for text in p.agents_list.as_deref().unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match wazuh_cluster_actors::registry::parse_id(text) {
            Some(id) => ids.push(id),
            None => return bad_id(text),
        }
    }
    if ids.len() > wazuh_cluster_actors::registry::query::MAX_IDS {
        let e = wazuh_cluster_actors::registry::query::QueryError::TooManyIds;
        return HttpResponse::BadRequest().json(error_body(400, &e.to_string()));
    }
    let q = AgentQuery {
        status: p.status,
        node: p.node_name.or(p.node),
        group: p.group,
        ids,
        search: p.search.filter(|s| !s.is_empty()),
        sort,
        offset: p.offset.unwrap_or(0),
        ..AgentQuery::default()
    };
    let q = match q.with_q(p.q.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &e.to_string())),
    };
    let q = match q.with_limit(p.limit) {
        Ok(q) => q,
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &e.to_string())),
    };
    let select: Option<Vec<String>> = p.select.as_deref().map(|s| {
        s.split(',').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).chain(["id".to_string()]).collect()
    });
    match node.agents_page(q).await {
        Ok((total, items)) => {
            let items: Vec<serde_json::Value> = items
                .into_iter()
                .map(|a| {
                    let mut v = serde_json::to_value(a).unwrap_or_default();
                    if let (Some(keep), serde_json::Value::Object(map)) = (&select, &mut v) {
                        map.retain(|k, _| keep.contains(k));
                    }
                    v
                })
                .collect();
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

/// The request's `Authorization: Bearer` credential ("" when there is none).
fn bearer(req: &actix_web::HttpRequest) -> &str {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Changes need an administrator: `Some(refusal)` when this request's caller (as the guard found
/// it) is not one.
fn refuse_unauthorized(req: &actix_web::HttpRequest) -> Option<HttpResponse> {
    use actix_web::HttpMessage;
    match req.extensions().get::<Caller>().map(|c| c.role) {
        Some(ApiRole::Administrator) => None,
        Some(ApiRole::Readonly) => Some(forbidden()),
        None => Some(unauthorized("missing or invalid credentials")),
    }
}

/// The caller the guard found for this request.
fn caller(req: &actix_web::HttpRequest) -> Option<Caller> {
    use actix_web::HttpMessage;
    req.extensions().get::<Caller>().cloned()
}

fn forbidden() -> HttpResponse {
    HttpResponse::Forbidden().json(error_body(403, "Permission denied: this user's role may only read"))
}

/// Who is calling, as the guard found it (kept in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: ApiRole,
    /// The API user (`None`: the static `api.token`).
    pub user: Option<String>,
}

impl Access {
    /// Who holds the request's bearer credential: the static `api.token` (an administrator's), or
    /// a token this cluster signed for a user who still exists, under the user's current token
    /// generation, with the role the user has now (not the one the token was issued with).
    fn caller_of(&self, given: &str) -> Option<Caller> {
        if given.is_empty() {
            return None;
        }
        if self.token.as_deref().is_some_and(|t| wazuh_cluster_actors::secret::same_secret(given, t)) {
            return Some(Caller { role: ApiRole::Administrator, user: None });
        }
        let claims = self.tokens.check(given, crate::auth::now_s())?;
        let user = self.users.get(&claims.sub)?;
        (user.generation == claims.gen).then_some(Caller { role: user.role, user: Some(user.name) })
    }

    /// Whether a credential a worker forwarded with a change is an administrator's.
    pub fn admin_check(&self) -> wazuh_cluster_actors::settings::AdminCheck {
        let me = self.clone();
        wazuh_cluster_actors::settings::AdminCheck(std::sync::Arc::new(move |c: &str, request: &AdminRequest| {
            me.caller_of(c).is_some_and(|c| match request {
                // Signing out: a user revokes its own tokens, whatever its role.
                AdminRequest::RevokeUserTokens { name } if c.user.as_deref() == Some(name.as_str()) => true,
                _ => c.role == ApiRole::Administrator,
            })
        }))
    }
}

fn unauthorized(message: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"))
        .json(error_body(401, message))
}

/// What this node is, for the informational endpoints.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub cluster: String,
    pub data_dir: String,
}

/// `GET /`: the API's own information, in Wazuh's shape.
async fn api_info(node: web::Data<NodeHandle>) -> HttpResponse {
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

fn node_type(node: &NodeHandle) -> &'static str {
    match node {
        NodeHandle::Master { .. } => "master",
        NodeHandle::Worker { .. } => "worker",
    }
}

/// `GET /cluster/status`: clustering is on; with high availability, this node's view of the Raft
/// group (state, term, leader, members) and where its registry stands (last change, digest).
async fn cluster_status(node: web::Data<NodeHandle>) -> HttpResponse {
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
async fn cluster_local_info(node: web::Data<NodeHandle>, info: web::Data<NodeInfo>) -> HttpResponse {
    let item = serde_json::json!({ "node": node.name(), "cluster": info.cluster, "type": node_type(&node) });
    HttpResponse::Ok().json(envelope(&[item], "Read node information"))
}

/// `GET /manager/info`: what this node is, in the fields Wazuh's manager reports.
async fn manager_info(node: web::Data<NodeHandle>, info: web::Data<NodeInfo>) -> HttpResponse {
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

/// What the guard in front of every endpoint knows.
#[derive(Clone)]
pub struct Access {
    pub token: Option<String>,
    /// Signs and checks the users' tokens.
    pub tokens: crate::auth::Tokens,
    /// The cluster's users as this node has them now.
    pub users: std::sync::Arc<crate::auth::UserDirectory>,
    /// Names accepted in `Host` besides IP literals and `localhost` (lowercase).
    pub allowed_hosts: Vec<String>,
    pub metrics_public: bool,
    /// What sign-ins may cost (password checks at once, blocked addresses).
    pub signin: std::sync::Arc<crate::auth::SignInGate>,
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]:port`), lowercase.
fn host_name(value: &str) -> String {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match v.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => v,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a `Host` header value names this API: an IP literal (what a browser sends only when it
/// was pointed at an address, never after DNS rebinding), `localhost`, or a configured name.
fn host_allowed(value: &str, allowed: &[String]) -> bool {
    let host = host_name(value);
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || allowed.contains(&host)
}

/// The names a request is addressed to must all be this API's: exactly one `Host` header (also in
/// HTTP/1.0, where it is optional: a client without one is refused rather than let past the check),
/// and the authority of an absolute-form target (`GET http://name/...`), which HTTP says wins over
/// `Host`. A refusal says which rule failed.
fn check_host(req: &actix_web::dev::ServiceRequest, allowed: &[String]) -> Result<(), Box<HttpResponse>> {
    let mut hosts = req.headers().get_all(actix_web::http::header::HOST);
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(Box::new(
            HttpResponse::BadRequest().json(error_body(400, "a request must carry one Host header, not several")),
        ));
    }
    let Some(host) = first else {
        return Err(Box::new(HttpResponse::BadRequest().json(error_body(400, "a request must carry a Host header"))));
    };
    let authority = req.uri().authority().map(|a| a.as_str().rsplit('@').next().unwrap_or("").to_string());
    let named = [Some(String::from_utf8_lossy(host.as_bytes()).into_owned()), authority];
    for name in named.into_iter().flatten() {
        let ok = !name.chars().any(char::is_control) && host_allowed(&name, allowed);
        if !ok {
            let shown = wazuh_cluster_protocol::agent::enrollment::printable(&name);
            let body = error_body(421, &format!("this API does not serve the host {shown:?} (see api.allowed_hosts)"));
            return Err(Box::new(HttpResponse::MisdirectedRequest().json(body)));
        }
    }
    Ok(())
}

/// The guard in front of every endpoint: the `Host` check, then the credential.
async fn guard(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(access) = req.app_data::<web::Data<Access>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError("the API guard has no settings"));
    };
    if let Err(refusal) = check_host(&req, &access.allowed_hosts) {
        return Ok(req.into_response(*refusal));
    }
    let path = req.path();
    let open = path == "/health"
        || path == "/ui"
        || path.starts_with("/ui/")
        || (path == "/metrics" && access.metrics_public)
        || (path == AUTHENTICATE && req.method() == actix_web::http::Method::POST);
    if !open {
        let Some(caller) = access.caller_of(bearer(req.request())) else {
            return Ok(
                req.into_response(unauthorized("missing or invalid credentials (Authorization: Bearer <token>)"))
            );
        };
        // Reading, and signing oneself out, are for every role.
        let own = path == AUTHENTICATE && req.method() == actix_web::http::Method::DELETE;
        if caller.role == ApiRole::Readonly && req.method() != actix_web::http::Method::GET && !own {
            return Ok(req.into_response(forbidden()));
        }
        use actix_web::HttpMessage;
        req.extensions_mut().insert(caller);
    }
    Ok(next.call(req).await?.map_into_boxed_body())
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
    req: actix_web::HttpRequest,
    query: web::Query<ReconnectQuery>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
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

async fn delete_agent(node: web::Data<NodeHandle>, req: actix_web::HttpRequest, id: web::Path<String>) -> HttpResponse {
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, AdminRequest::DeleteAgent { id }, "Agent deleted").await
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
    bulk_answer(affected, failed, done)
}

/// Wazuh's bulk envelope: what was done, what was not and why; `error` 0 (all), 2 (some), 1 (none).
fn bulk_answer<T: Serialize>(affected: Vec<T>, failed: Vec<serde_json::Value>, done: &str) -> HttpResponse {
    let message = if failed.is_empty() { done.to_string() } else { format!("{done} (some were not)") };
    HttpResponse::Ok().json(serde_json::json!({
        "data": {
            "affected_items": affected,
            "total_affected_items": affected.len(),
            "total_failed_items": failed.len(),
            "failed_items": failed,
        },
        "message": message,
        "error": if failed.is_empty() { 0 } else if affected.is_empty() { 1 } else { 2 },
    }))
}

/// Agent ids from `agents_list` (comma-separated; `all` for every agent this node knows), kept
/// when they have `status` and, with `older_than`, when their last keep-alive (or, never connected,
/// their registration) is older than that.
async fn agent_ids(
    node: &NodeHandle,
    list: &str,
    status: Option<String>,
    older_than: Option<std::time::Duration>,
) -> Result<Vec<u32>, Box<HttpResponse>> {
    if list.trim() != "all" && status.is_none() && older_than.is_none() {
        return parse_ids(list);
    }
    let q = AgentQuery { status, ..AgentQuery::default() }
        .with_limit(Some(wazuh_cluster_actors::registry::query::MAX_LIMIT))
        .map_err(|e| Box::new(HttpResponse::BadRequest().json(error_body(400, &e.to_string()))))?;
    let (_, items) = node
        .agents_page(q)
        .await
        .map_err(|e| Box::new(HttpResponse::ServiceUnavailable().json(error_body(503, &e.to_string()))))?;
    let cutoff = older_than.map(|d| wazuh_cluster_actors::clock::now_ms().saturating_sub(d.as_millis() as u64));
    let ms = |t: &Option<String>| {
        t.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond().max(0) as u64)
    };
    let found: Vec<u32> = items
        .iter()
        .filter(|a| cutoff.is_none_or(|c| ms(&a.last_keepalive).or(ms(&a.registered_at)).is_some_and(|t| t < c)))
        .filter_map(|a| wazuh_cluster_actors::registry::parse_id(&a.id))
        .collect();
    if list.trim() == "all" {
        return Ok(found);
    }
    let named = parse_ids(list)?;
    Ok(named.into_iter().filter(|id| found.contains(id)).collect())
}

fn parse_ids(list: &str) -> Result<Vec<u32>, Box<HttpResponse>> {
    let mut ids = Vec::new();
    for text in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match wazuh_cluster_actors::registry::parse_id(text) {
            Some(id) => ids.push(id),
            None => return Err(Box::new(bad_id(text))),
        }
    }
    if ids.is_empty() {
        return Err(Box::new(HttpResponse::BadRequest().json(error_body(400, "agents_list names no agent"))));
    }
    Ok(ids)
}

#[derive(serde::Deserialize)]
struct BulkAgents {
    agents_list: Option<String>,
    status: Option<String>,
    group_id: Option<String>,
    /// `7d`, `12h`, `30m`, `90s`: only agents not heard from for this long.
    older_than: Option<String>,
}

/// `DELETE /agents?agents_list=001,002|all[&status=disconnected][&older_than=7d]`: each agent deleted, in Wazuh's
/// bulk envelope.
async fn delete_agents(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<BulkAgents>,
) -> HttpResponse {
    let q = query.into_inner();
    let Some(list) = q.agents_list else {
        return HttpResponse::BadRequest().json(error_body(400, "agents_list is required (ids, or all)"));
    };
    let older_than = match q.older_than.as_deref().map(crate::config::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &format!("older_than: {e}"))),
    };
    let ids = match agent_ids(&node, &list, q.status, older_than).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests = ids.into_iter().map(|id| (fmt_id(id), AdminRequest::DeleteAgent { id })).collect();
    bulk(&node, &req, requests, "All selected agents were deleted").await
}

/// `PUT /agents/group/{group_id}?agents_list=...`: each agent assigned to the group.
async fn assign_many(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    group: web::Path<String>,
    query: web::Query<BulkAgents>,
) -> HttpResponse {
    let group = group.into_inner();
    let ids = match agent_ids(&node, query.agents_list.as_deref().unwrap_or(""), None, None).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests =
        ids.into_iter().map(|id| (fmt_id(id), AdminRequest::AssignGroup { id, group: group.clone() })).collect();
    bulk(&node, &req, requests, "All selected agents were assigned to the group").await
}

/// `DELETE /agents/group?agents_list=...&group_id=...`: each agent removed from the group.
async fn unassign_many(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<BulkAgents>,
) -> HttpResponse {
    let q = query.into_inner();
    let Some(group) = q.group_id else {
        return HttpResponse::BadRequest().json(error_body(400, "group_id is required"));
    };
    let ids = match agent_ids(&node, q.agents_list.as_deref().unwrap_or(""), None, None).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests =
        ids.into_iter().map(|id| (fmt_id(id), AdminRequest::UnassignGroup { id, group: group.clone() })).collect();
    bulk(&node, &req, requests, "All selected agents were removed from the group").await
}

#[derive(serde::Deserialize)]
struct GroupsList {
    groups_list: Option<String>,
}

/// `DELETE /groups?groups_list=a,b`: each group deleted.
async fn delete_groups(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<GroupsList>,
) -> HttpResponse {
    let names: Vec<String> = query
        .groups_list
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return HttpResponse::BadRequest().json(error_body(400, "groups_list names no group"));
    }
    let requests = names.into_iter().map(|name| (name.clone(), AdminRequest::DeleteGroup { name })).collect();
    bulk(&node, &req, requests, "All selected groups were deleted").await
}

/// `GET /groups/{group_id}/agents`: the group's agents, paged and sorted as `GET /agents`.
async fn group_agents(
    node: web::Data<NodeHandle>,
    group: web::Path<String>,
    query: web::Query<AgentsParams>,
) -> HttpResponse {
    let mut p = query.into_inner();
    p.group = Some(group.into_inner());
    agents(node, web::Query(p)).await
}

/// A group's directory under the sync roots, if `group` is a valid group name.
fn group_dir(node: &NodeHandle, group: &str) -> Result<std::path::PathBuf, Box<HttpResponse>> {
    if !wazuh_cluster_protocol::agent::enrollment::valid_group_name(group) {
        return Err(Box::new(HttpResponse::BadRequest().json(error_body(400, "not a group name"))));
    }
    let dir = node.data_dir().join("etc/shared").join(group);
    if !dir.is_dir() {
        return Err(Box::new(HttpResponse::NotFound().json(error_body(404, &format!("no group named {group:?}")))));
    }
    Ok(dir)
}

/// `GET /groups/{group_id}/files`: the group's files with their MD5.
async fn group_files(node: web::Data<NodeHandle>, group: web::Path<String>) -> HttpResponse {
    let dir = match group_dir(&node, &group) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let mut items = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(bytes) = std::fs::read(e.path()) else { continue };
        if !e.path().is_file() {
            continue;
        }
        use md5::Digest;
        let hash: String = md5::Md5::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        items.push(serde_json::json!({ "filename": e.file_name().to_string_lossy(), "hash": hash }));
    }
    HttpResponse::Ok().json(envelope(&items, "All selected groups files were returned"))
}

/// `GET /groups/{group_id}/files/{file_name}[?raw=true]`.
async fn group_file(
    node: web::Data<NodeHandle>,
    path: web::Path<(String, String)>,
    query: web::Query<FileQuery>,
) -> HttpResponse {
    let (group, file) = path.into_inner();
    let dir = match group_dir(&node, &group) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    if file.starts_with('.') || !file.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return HttpResponse::BadRequest().json(error_body(400, "not a file name"));
    }
    match std::fs::read(dir.join(&file)) {
        Ok(bytes) if query.raw.unwrap_or(false) => HttpResponse::Ok().content_type("text/plain").body(bytes),
        Ok(bytes) => HttpResponse::Ok().json(envelope(
            &[serde_json::json!({ "filename": file, "group": group, "content": String::from_utf8_lossy(&bytes) })],
            "File read",
        )),
        Err(_) => HttpResponse::NotFound().json(error_body(404, &format!("no file {file:?} in group {group:?}"))),
    }
}

/// `PUT /groups/{group_id}/configuration` with an `agent.conf` as the body: written into the
/// master's group directory (a worker forwards it), pushed to the group's agents by every node.
async fn put_group_configuration(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    group: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let request = AdminRequest::PutGroupConfiguration { group: group.into_inner(), content: body.to_vec() };
    change(&node, &req, request, "Agent configuration was successfully updated").await
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
    req: actix_web::HttpRequest,
    body: web::Json<NewGroup>,
) -> HttpResponse {
    let name = body.into_inner().group_id;
    change(&node, &req, AdminRequest::CreateGroup { name }, "Group created").await
}

async fn delete_group(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    change(&node, &req, AdminRequest::DeleteGroup { name: name.into_inner() }, "Group deleted").await
}

async fn assign(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (id, group) = path.into_inner();
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, AdminRequest::AssignGroup { id, group }, "Agent assigned to the group").await
}

async fn unassign(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (id, group) = path.into_inner();
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, AdminRequest::UnassignGroup { id, group }, "Agent removed from the group").await
}

async fn get_agent(node: web::Data<NodeHandle>, id: web::Path<String>) -> HttpResponse {
    one_agent(&node, &id, false).await
}

/// `GET /agents/{id}/key`: the agent with its key; the only call that returns a key.
async fn get_agent_key(node: web::Data<NodeHandle>, id: web::Path<String>) -> HttpResponse {
    one_agent(&node, &id, true).await
}

async fn one_agent(node: &NodeHandle, id: &str, with_key: bool) -> HttpResponse {
    let Some(num) = wazuh_cluster_actors::registry::parse_id(id) else { return bad_id(id) };
    let id = wazuh_cluster_actors::registry::fmt_id(num);
    match node.agent(num, with_key).await {
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

/// Where users trade their password for a token (Wazuh's path).
const AUTHENTICATE: &str = "/security/user/authenticate";

#[derive(serde::Deserialize)]
struct AuthenticateQuery {
    /// `true`: the bare token as text, as Wazuh's API answers.
    raw: Option<bool>,
}

/// `POST /security/user/authenticate` with HTTP Basic: a token for the user, valid
/// `api.token_lifetime`, accepted by every node that shares `api.secret`.
async fn authenticate(
    access: web::Data<Access>,
    req: actix_web::HttpRequest,
    query: web::Query<AuthenticateQuery>,
) -> HttpResponse {
    let peer = req.peer_addr().map(|a| a.ip());
    if let Some(Err(blocked)) = peer.map(|ip| access.signin.check_blocked(ip)) {
        return HttpResponse::Forbidden().json(error_body(403, &blocked.to_string()));
    }
    let basic = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64ct::Base64::decode_vec(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((user, password)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        if let Some(ip) = peer {
            access.signin.failed(ip);
        }
        return HttpResponse::Unauthorized()
            .insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Basic realm=\"wazuh\""))
            .json(error_body(401, "Invalid credentials: HTTP Basic authentication is required"));
    };
    // At most a few checks at once (each takes Argon2's memory, tens of milliseconds, off the
    // API's thread): the rest are answered now.
    let (users, user_name, password) = (access.users.clone(), user.to_string(), password.to_string());
    let found = match access.signin.run(move || crate::auth::check_password(&users, &user_name, &password)).await {
        Ok(found) => found,
        Err(refused) => {
            return HttpResponse::TooManyRequests()
                .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
                .json(error_body(429, &refused.to_string()))
        }
    };
    let Some(found) = found else {
        let shown = wazuh_cluster_protocol::agent::enrollment::printable(user).into_owned();
        let blocks = peer.is_some_and(|ip| access.signin.failed(ip));
        let from = peer.map(|ip| ip.to_string()).unwrap_or_default();
        // One line per failure until the address is blocked (at most max_login_attempts per
        // block_time from one address), then one saying so.
        if blocks {
            log::warn!(
                "API: address {from} blocked for sign-ins: {} failed within {} s (last for user {shown:?})",
                access.signin.max_attempts,
                access.signin.block_time.as_secs()
            );
        } else {
            log::warn!("API: failed authentication for user {shown:?} from {from}");
        }
        return HttpResponse::Unauthorized().json(error_body(401, "Invalid credentials"));
    };
    let token = access.tokens.issue(&found.name, found.role, found.generation, crate::auth::now_s());
    if query.raw.unwrap_or(false) {
        return HttpResponse::Ok().content_type("text/plain").body(token);
    }
    HttpResponse::Ok().json(serde_json::json!({ "data": { "token": token }, "error": 0 }))
}

#[derive(serde::Deserialize)]
struct JoinTokenQuery {
    /// Seconds the token is valid (60 s .. 30 days; default 1 h).
    ttl: Option<u64>,
    /// How many workers may join with it (1..1000; default 1).
    uses: Option<u32>,
}

/// `POST /cluster/join-tokens[?ttl=&uses=]` (master): a join token, shown this once.
async fn join_token(node: web::Data<NodeHandle>, query: web::Query<JoinTokenQuery>) -> HttpResponse {
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
async fn revoke(node: web::Data<NodeHandle>, name: web::Path<String>) -> HttpResponse {
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
async fn reload_analysisd(node: web::Data<NodeHandle>) -> HttpResponse {
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
            HttpResponse::Ok().json(serde_json::json!({
                "data": {
                    "affected_items": affected,
                    "total_affected_items": affected.len(),
                    "total_failed_items": failed.len(),
                    "failed_items": failed,
                },
                "message": message,
                "error": if failed.is_empty() { 0 } else if affected.is_empty() { 1 } else { 2 },
            }))
        }
        Err(e) => change_failed(&e),
    }
}

#[derive(serde::Deserialize)]
struct FileQuery {
    /// GET: the file's content as text (`true`) or in Wazuh's envelope. PUT: replace an existing
    /// file (`true`) or refuse to (default).
    raw: Option<bool>,
    overwrite: Option<bool>,
}

/// Which ruleset directory a route serves.
fn ruleset_root(req: &actix_web::HttpRequest) -> Option<RulesetRoot> {
    let first = req.path().trim_start_matches('/').split('/').next()?;
    match first {
        "rules" => Some(RulesetRoot::Rules),
        "decoders" => Some(RulesetRoot::Decoders),
        "lists" => Some(RulesetRoot::Lists),
        _ => None,
    }
}

/// `GET /{rules,decoders,lists}/files/{name}[?raw=true]`: the file as this node has it (file sync
/// keeps it the master's).
async fn get_ruleset_file(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
    query: web::Query<FileQuery>,
) -> HttpResponse {
    let Some(root) = ruleset_root(&req) else { return not_found().await };
    if let Err(e) = root.check_name(&name) {
        return HttpResponse::BadRequest().json(error_body(400, &e));
    }
    let path = node.data_dir().join(root.dir()).join(name.as_str());
    match std::fs::read(&path) {
        Ok(bytes) if query.raw.unwrap_or(false) => HttpResponse::Ok().content_type("text/plain").body(bytes),
        Ok(bytes) => HttpResponse::Ok().json(envelope(
            &[serde_json::json!({
                "filename": name.as_str(),
                "relative_dirname": root.dir(),
                "content": String::from_utf8_lossy(&bytes),
            })],
            "File read",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            HttpResponse::NotFound().json(error_body(404, &format!("no file {}/{}", root.dir(), name.as_str())))
        }
        Err(e) => HttpResponse::InternalServerError().json(error_body(500, &format!("cannot read the file: {e}"))),
    }
}

/// `PUT /{rules,decoders,lists}/files/{name}[?overwrite=true]` with the file as the body: written
/// into the master's sync roots (a worker forwards it), from where file sync takes it everywhere.
async fn put_ruleset_file(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
    query: web::Query<FileQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let Some(root) = ruleset_root(&req) else { return not_found().await };
    let request = AdminRequest::PutRulesetFile {
        root,
        name: name.into_inner(),
        content: body.to_vec(),
        overwrite: query.overwrite.unwrap_or(false),
    };
    change(&node, &req, request, "File was successfully uploaded").await
}

/// `DELETE /{rules,decoders,lists}/files/{name}`.
async fn delete_ruleset_file(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    let Some(root) = ruleset_root(&req) else { return not_found().await };
    let request = AdminRequest::DeleteRulesetFile { root, name: name.into_inner() };
    change(&node, &req, request, "File was successfully deleted").await
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
const UI_HTML: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/app.js");
const UI_CSS: &str = include_str!("ui/app.css");

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

#[path = "api_spec.rs"]
pub mod spec;

#[path = "api_security.rs"]
mod security;

#[path = "api_listener.rs"]
mod listener;
pub use listener::ApiLimits;

/// Starts serving the API on `listener` (bound by the caller) in the background, within `limits`.
/// Returns a handle to stop it.
pub fn start(
    listener: std::net::TcpListener,
    node: NodeHandle,
    access: Access,
    limits: ApiLimits,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    info: NodeInfo,
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
    let tls = tls.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    });
    listener::serve(listener, app, tls, limits, &name)
}
