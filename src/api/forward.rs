//! Every node's API answers reads alike (as Wazuh's distributed API does): a worker forwards the
//! reads of agents and groups (what only the master knows whole: statuses, nodes, keep-alives,
//! operating systems) over its cluster connection, and the master's own API answers them, checking
//! the caller's credential as its own callers'. The worker checks the credential first too, so an
//! unauthenticated request never reaches the master.
//!
//! On the master the forwarded read runs through the same routes, guard and handlers as a request
//! on its socket ([`in_process_reads`]); nothing is rendered twice.

use super::*;
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use std::cell::RefCell;
use std::rc::Rc;
use wazuh_cluster_actors::settings::{ReadApi, ReadsFactory};
use wazuh_cluster_protocol::message::{ApiRead, ApiReadResult};

/// Whether a worker forwards this read to the master: agents, groups and the overview (the
/// cluster's view of this node, the ruleset files and the API's own routes are this node's).
pub(super) fn is_cluster_read(path: &str) -> bool {
    ["/agents", "/groups", "/overview"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// Worker: forwards reads of agents and groups to the master (after the guard let the caller in),
/// and answers with the master's answer. A master too old to answer them leaves them to this node.
pub(super) async fn forward_reads(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(node) = req.app_data::<web::Data<NodeHandle>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError("the API has no node"));
    };
    if !matches!(**node, NodeHandle::Worker { .. })
        || req.method() != actix_web::http::Method::GET
        || !is_cluster_read(req.path())
    {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| req.path().into());
    if target.len() > ApiRead::MAX_TARGET {
        let body = error_body(414, "the request target is too long");
        return Ok(req.into_response(HttpResponse::build(StatusCode::URI_TOO_LONG).json(body)));
    }
    let credential = bearer(req.request()).to_string();
    match node.forward_read(ApiRead { target, credential }).await {
        Ok(Some(answer)) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let response = HttpResponse::build(status).content_type(answer.content_type).body(answer.body);
            Ok(req.into_response(response))
        }
        Ok(None) => Ok(next.call(req).await?.map_into_boxed_body()),
        Err(e) => {
            let why = format!("this worker answers agent and group reads through the master: {e}");
            Ok(req.into_response(HttpResponse::ServiceUnavailable().json(error_body(503, &why))))
        }
    }
}

/// A forwarded read's answer from the service: status, content type, body.
type Call = Rc<dyn Fn(actix_http::Request) -> futures_util::future::LocalBoxFuture<'static, ApiReadResult>>;

/// Master: answers forwarded reads with the API's own service, made from `app` (the same factory
/// the server runs) on the connection's thread at its first read.
pub(super) fn in_process_reads<F, T, B>(app: F) -> std::sync::Arc<ReadsFactory>
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

impl<F, T, B> ReadApi for InProcess<F>
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
    fn read(
        &self,
        target: String,
        credential: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ApiReadResult>>> {
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
            let Ok(uri) = target.parse::<actix_web::http::Uri>() else {
                return plain(400, "invalid request target");
            };
            let mut request = actix_http::Request::new();
            let head = request.head_mut();
            head.method = actix_web::http::Method::GET;
            head.uri = uri;
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
fn plain(status: u16, why: &str) -> ApiReadResult {
    ApiReadResult {
        status,
        content_type: "application/json".into(),
        body: error_body(status, why).to_string().into_bytes(),
    }
}

async fn result_of(response: HttpResponse) -> ApiReadResult {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    match actix_web::body::to_bytes(response.into_body()).await {
        Ok(body) => ApiReadResult { status, content_type, body: body.to_vec() },
        Err(_) => plain(500, "the master's answer could not be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::is_cluster_read;

    #[test]
    fn agent_and_group_reads_go_to_the_master_the_rest_stays() {
        for forwarded in
            ["/agents", "/agents/001", "/agents/summary/status", "/groups", "/groups/x/agents", "/overview/agents"]
        {
            assert!(is_cluster_read(forwarded), "{forwarded}");
        }
        for local in ["/", "/agentsx", "/cluster/healthcheck", "/rules/files/a.xml", "/health", "/groupsx/a"] {
            assert!(!is_cluster_read(local), "{local}");
        }
    }
}
