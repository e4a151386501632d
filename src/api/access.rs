//! Who may call: the `Host` check, bearer credentials (the static token or a user's), roles,
//! and the sign-in that trades a password for a token.

use super::*;

/// The request's `Authorization: Bearer` credential ("" when there is none).
pub(super) fn bearer(req: &actix_web::HttpRequest) -> &str {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Changes need an administrator: `Some(refusal)` when this request's caller (as the guard found
/// it) is not one.
pub(super) fn refuse_unauthorized(req: &actix_web::HttpRequest) -> Option<HttpResponse> {
    use actix_web::HttpMessage;
    match req.extensions().get::<Caller>().map(|c| c.role) {
        Some(ApiRole::Administrator) => None,
        Some(ApiRole::Readonly) => Some(forbidden()),
        None => Some(unauthorized("missing or invalid credentials")),
    }
}

/// The caller the guard found for this request.
pub(super) fn caller(req: &actix_web::HttpRequest) -> Option<Caller> {
    use actix_web::HttpMessage;
    req.extensions().get::<Caller>().cloned()
}

pub(super) fn forbidden() -> HttpResponse {
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

pub(super) fn unauthorized(message: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"))
        .json(error_body(401, message))
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
pub(super) fn host_name(value: &str) -> String {
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
pub(super) fn host_allowed(value: &str, allowed: &[String]) -> bool {
    let host = host_name(value);
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || allowed.contains(&host)
}

/// The names a request is addressed to must all be this API's: exactly one `Host` header (also in
/// HTTP/1.0, where it is optional: a client without one is refused rather than let past the check),
/// and the authority of an absolute-form target (`GET http://name/...`), which HTTP says wins over
/// `Host`. A refusal says which rule failed.
pub(super) fn check_host(req: &actix_web::dev::ServiceRequest, allowed: &[String]) -> Result<(), Box<HttpResponse>> {
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
pub(super) async fn guard(
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

/// Where users trade their password for a token (Wazuh's path).
pub(super) const AUTHENTICATE: &str = "/security/user/authenticate";

#[derive(serde::Deserialize)]
pub(super) struct AuthenticateQuery {
    /// `true`: the bare token as text, as Wazuh's API answers.
    raw: Option<bool>,
}

/// `POST /security/user/authenticate` with HTTP Basic: a token for the user, valid
/// `api.token_lifetime`, accepted by every node that shares `api.secret`.
pub(super) async fn authenticate(
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
