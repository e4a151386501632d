//! Every node's API answers alike (as Wazuh's distributed API does): a worker forwards the reads
//! of agents and groups (what only the master knows whole: statuses, nodes, keep-alives, operating
//! systems) and the commands to agents (restarts, active responses: the master knows which node
//! holds each agent) over its cluster connection, and the master's own API answers them, checking
//! the caller's credential and role as its own callers'. The worker checks them first too, so an
//! unauthenticated request never reaches the master.
//!
//! On the master the forwarded call runs through the same routes, guard and handlers as a request
//! on its socket ([`in_process_calls`]); nothing is rendered twice.

use super::*;
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use std::cell::RefCell;
use std::rc::Rc;
use wazuh_cluster_actors::settings::{CallApi, CallsFactory};
use wazuh_cluster_protocol::message::{ApiAnswer, ApiCall, ApiMethod};

/// Whether a worker forwards this read to the master: agents, groups, the overview and Wazuh's
/// healthcheck (this node's own view, its actors, the ruleset files and the API's own routes are
/// this node's).
pub(super) fn is_cluster_read(path: &str) -> bool {
    path == "/cluster/healthcheck"
        || path == "/cluster/balance"
        || path == "/cluster/ruleset/synchronization"
        || path == "/cluster/configuration/validation"
        || is_node_read(path)
        || ["/agents", "/groups", "/overview"]
            .iter()
            .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// `/cluster/{node_id}/{status,info,logs,configuration,stats...}`: another node's own reads, which the master routes.
fn is_node_read(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["cluster", node, "status" | "info" | "logs" | "configuration" | "stats"]
            | ["cluster", node, "stats", "hourly" | "weekly"]
            if !matches!(*node, "local" | "api")
    )
}

/// Whether a worker forwards this `PUT` to the master: a command to agents (the master knows which
/// node holds each agent's connection and routes it there).
pub(super) fn is_agent_command(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["active-response"]
            | ["agents", "restart"]
            | ["agents", "reconnect"]
            | ["agents", _, "restart"]
            | ["agents", "group", _, "restart"]
            | ["cluster", _, "drain"]
    )
}

/// Worker: forwards reads of agents and groups, and commands to agents, to the master (after the
/// guard let the caller in), and answers with the master's answer. A master too old to answer
/// them leaves them to this node.
pub(super) async fn forward_calls(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(node) = req.app_data::<web::Data<NodeHandle>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError("the API has no node"));
    };
    let method = match *req.method() {
        actix_web::http::Method::GET if is_cluster_read(req.path()) => ApiMethod::Get,
        actix_web::http::Method::PUT if is_agent_command(req.path()) => ApiMethod::Put,
        // Registration through the API: only the master's registry can number the agent.
        actix_web::http::Method::POST if matches!(req.path(), "/agents" | "/agents/insert") => ApiMethod::Post,
        _ => return Ok(next.call(req).await?.map_into_boxed_body()),
    };
    if !matches!(**node, NodeHandle::Worker { .. }) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| req.path().into());
    if target.len() > ApiCall::MAX_TARGET {
        let body = error_body(414, "the request target is too long");
        return Ok(req.into_response(HttpResponse::build(StatusCode::URI_TOO_LONG).json(body)));
    }
    let body = match method {
        ApiMethod::Get => Vec::new(),
        ApiMethod::Put | ApiMethod::Post => match req.extract::<web::Bytes>().await {
            Ok(bytes) if bytes.len() <= ApiCall::MAX_BODY => bytes.to_vec(),
            _ => {
                let why = format!("the body must be at most {} bytes", ApiCall::MAX_BODY);
                return Ok(req.into_response(HttpResponse::PayloadTooLarge().json(error_body(413, &why))));
            }
        },
    };
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let credential = bearer(req.request()).to_string();
    match node.forward_call(ApiCall { method, target, credential, content_type, body }).await {
        Ok(Some(answer)) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let response = HttpResponse::build(status).content_type(answer.content_type).body(answer.body);
            Ok(req.into_response(response))
        }
        Ok(None) => Ok(next.call(req).await?.map_into_boxed_body()),
        Err(e) => {
            let why = format!("this worker answers agents' reads and commands through the master: {e}");
            Ok(req.into_response(HttpResponse::ServiceUnavailable().json(error_body(503, &why))))
        }
    }
}

/// A forwarded read's answer from the service: status, content type, body.
type Call = Rc<dyn Fn(actix_http::Request) -> futures_util::future::LocalBoxFuture<'static, ApiAnswer>>;

/// Master: answers forwarded reads with the API's own service, made from `app` (the same factory
/// the server runs) on the connection's thread at its first read.
pub(super) fn in_process_calls<F, T, B>(app: F) -> std::sync::Arc<CallsFactory>
where
    F: Fn() -> App<T> + Clone + Send + Sync + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    std::sync::Arc::new(move || Box::new(InProcess { app: app.clone(), call: Rc::new(RefCell::new(None)) }))
}

struct InProcess<F> {
    app: F,
    call: Rc<RefCell<Option<Call>>>,
}

impl<F, T, B> CallApi for InProcess<F>
where
    F: Fn() -> App<T> + Clone + 'static,
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    fn call(&self, forwarded: ApiCall) -> std::pin::Pin<Box<dyn std::future::Future<Output = ApiAnswer>>> {
        let (app, cell) = (self.app.clone(), self.call.clone());
        Box::pin(async move {
            let existing = cell.borrow().clone();
            let call = match existing {
                Some(call) => call,
                None => {
                    let factory = actix_service::IntoServiceFactory::into_factory(app());
                    let Ok(service) = factory.new_service(actix_web::dev::AppConfig::default()).await else {
                        return plain(503, "the master's API could not start a reader");
                    };
                    let service = Rc::new(service);
                    let call: Call = Rc::new(move |request| {
                        let service = service.clone();
                        Box::pin(async move {
                            match service.call(request).await {
                                Ok(response) => result_of(response.map_into_boxed_body().into_parts().1).await,
                                Err(e) => result_of(e.error_response()).await,
                            }
                        })
                    });
                    *cell.borrow_mut() = Some(call.clone());
                    call
                }
            };
            let ApiCall { method, target, credential, content_type, body } = forwarded;
            let Ok(uri) = target.parse::<actix_web::http::Uri>() else {
                return plain(400, "invalid request target");
            };
            let length = body.len();
            let mut request =
                actix_http::Request::with_payload(actix_http::Payload::from(actix_web::web::Bytes::from(body)));
            let head = request.head_mut();
            head.method = match method {
                ApiMethod::Get => actix_web::http::Method::GET,
                ApiMethod::Put => actix_web::http::Method::PUT,
                ApiMethod::Post => actix_web::http::Method::POST,
            };
            head.uri = uri;
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&content_type) {
                if !content_type.is_empty() {
                    head.headers.insert(actix_web::http::header::CONTENT_TYPE, value);
                }
            }
            head.headers
                .insert(actix_web::http::header::CONTENT_LENGTH, actix_web::http::header::HeaderValue::from(length));
            head.headers
                .insert(actix_web::http::header::HOST, actix_web::http::header::HeaderValue::from_static("localhost"));
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&format!("Bearer {credential}")) {
                head.headers.insert(actix_web::http::header::AUTHORIZATION, value);
            }
            call(request).await
        })
    }
}

/// An answer of the API's error format with `status`.
fn plain(status: u16, why: &str) -> ApiAnswer {
    ApiAnswer {
        status,
        content_type: "application/json".into(),
        body: error_body(status, why).to_string().into_bytes(),
    }
}

async fn result_of(response: HttpResponse) -> ApiAnswer {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    match actix_web::body::to_bytes(response.into_body()).await {
        Ok(body) => ApiAnswer { status, content_type, body: body.to_vec() },
        Err(_) => plain(500, "the master's answer could not be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::is_cluster_read;

    #[test]
    fn agent_and_group_reads_and_agent_commands_go_to_the_master_the_rest_stays() {
        use super::is_agent_command;
        for command in ["/active-response", "/agents/restart", "/agents/001/restart", "/agents/group/web/restart"] {
            assert!(is_agent_command(command), "{command}");
        }
        for other in ["/agents", "/agents/001", "/agents/group/web", "/agents/reconnectx", "/active-responsex"] {
            assert!(!is_agent_command(other), "{other}");
        }
        for forwarded in [
            "/agents",
            "/agents/001",
            "/agents/summary/status",
            "/groups",
            "/groups/x/agents",
            "/overview/agents",
            "/cluster/healthcheck",
            "/cluster/worker-2/stats",
            "/cluster/worker-2/stats/weekly",
        ] {
            assert!(is_cluster_read(forwarded), "{forwarded}");
        }
        for local in [
            "/",
            "/agentsx",
            "/cluster/actors",
            "/cluster/nodes",
            "/rules/files/a.xml",
            "/health",
            "/groupsx/a",
            "/cluster/local/stats",
            "/cluster/worker-2/stats/monthly",
        ] {
            assert!(!is_cluster_read(local), "{local}");
        }
    }
}
