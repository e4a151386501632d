//! The API's users, in Wazuh's paths and shapes (`/security/users`, `/security/user/revoke`, the
//! sign-out `DELETE /security/user/authenticate`): the cluster holds them (see
//! `wazuh_cluster_actors::registry::users`), any node lists them, and a change made through any
//! node is answered once every connected node honours it.
//!
//! Roles are Wazuh's two default ones by id: `1` administrator, `2` readonly. A user created
//! through the API starts readonly (Wazuh's start with no role; here the least one).

use super::*;
use crate::auth::{role_of_wazuh_id, wazuh_role_id, StoredUser};

/// A user in Wazuh's shape (never its hash).
fn user_view(u: &StoredUser) -> serde_json::Value {
    serde_json::json!({
        "id": u.id,
        "username": u.name,
        "allow_run_as": false,
        "roles": [wazuh_role_id(u.role)],
    })
}

/// Wazuh's rule for passwords set through the API: 8 to 64 characters with an upper and a lower
/// case letter, a digit and a symbol.
fn check_password_policy(password: &str) -> Result<(), &'static str> {
    let n = password.chars().count();
    if !(8..=64).contains(&n) {
        return Err("Insecure user password provided: the password must contain a length between 8 and 64 characters");
    }
    let has = |f: fn(char) -> bool| password.chars().any(f);
    if !(has(|c| c.is_ascii_uppercase())
        && has(|c| c.is_ascii_lowercase())
        && has(|c| c.is_ascii_digit())
        && has(|c| !c.is_alphanumeric() && !c.is_whitespace()))
    {
        return Err("Insecure user password provided: the password must contain at least one upper and lower case \
                    letter, a number and a symbol");
    }
    Ok(())
}

/// Checks `password` against the policy and hashes it off the API's thread, within the sign-in
/// gate's places (it costs what a sign-in costs); `Err` is the answer to give.
async fn hash_new_password(access: &Access, password: String) -> Result<String, Box<HttpResponse>> {
    check_password_policy(&password).map_err(|why| Box::new(bad_request(why)))?;
    let hashed = access.signin.run(move || crate::auth::hash_password(&password)).await.map_err(|refused| {
        Box::new(
            HttpResponse::TooManyRequests()
                .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
                .json(error_body(429, &refused.to_string())),
        )
    })?;
    hashed.map_err(|_| {
        Box::new(HttpResponse::InternalServerError().json(error_body(500, "the password could not be hashed")))
    })
}

fn bad_request(why: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(error_body(400, why))
}

fn no_user(id: u32) -> HttpResponse {
    HttpResponse::NotFound().json(error_body(404, &format!("The user does not exist: no user with id {id}")))
}

/// The user with Wazuh id `id`, as this node holds them.
fn by_id(node: &NodeHandle, id: u32) -> Option<StoredUser> {
    node.users().all().values().find(|u| u.id == id).cloned()
}

/// Comma-separated ids (`all`: every user).
fn parse_user_ids(node: &NodeHandle, text: &str) -> Result<Vec<u32>, Box<HttpResponse>> {
    if text.trim() == "all" {
        let mut ids: Vec<u32> = node.users().all().values().map(|u| u.id).collect();
        ids.sort_unstable();
        return Ok(ids);
    }
    let mut ids = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => return Err(Box::new(bad_request(&format!("user_ids: {:?} is not a user id", printable(part))))),
        }
    }
    if ids.is_empty() {
        return Err(Box::new(bad_request("user_ids names no user")));
    }
    Ok(ids)
}

fn printable(text: &str) -> String {
    wazuh_cluster_protocol::agent::enrollment::printable(text).into_owned()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsersQuery {
    user_ids: Option<String>,
}

/// `GET /security/users[?user_ids=1,2]`: the users, by id.
pub(super) async fn list_users(node: web::Data<NodeHandle>, query: web::Query<UsersQuery>) -> HttpResponse {
    let all = node.users().all();
    let mut users: Vec<&StoredUser> = all.values().collect();
    if let Some(text) = query.user_ids.as_deref() {
        let ids = match parse_user_ids(&node, text) {
            Ok(ids) => ids,
            Err(r) => return *r,
        };
        users.retain(|u| ids.contains(&u.id));
    }
    users.sort_by_key(|u| u.id);
    let items: Vec<_> = users.into_iter().map(user_view).collect();
    HttpResponse::Ok().json(envelope(&items, "All specified users were returned"))
}

/// `GET /security/users/me`: the caller.
pub(super) async fn me(node: web::Data<NodeHandle>, req: actix_web::HttpRequest) -> HttpResponse {
    match caller(&req).and_then(|c| c.user).and_then(|name| node.users().get(&name)) {
        Some(u) => HttpResponse::Ok().json(envelope(&[user_view(&u)], "Current user information was returned")),
        None => bad_request("the caller signed in with the static api.token, which belongs to no user"),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    username: String,
    password: String,
}

/// `POST /security/users` with `{"username", "password"}`: a new user, readonly.
pub(super) async fn create_user(
    node: web::Data<NodeHandle>,
    access: web::Data<Access>,
    req: actix_web::HttpRequest,
    body: web::Json<NewUser>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let NewUser { username, password } = body.into_inner();
    if username.chars().count() < 4 {
        return bad_request("username: at least 4 characters");
    }
    if let Err(why) = wazuh_cluster_actors::registry::users::check_name(&username) {
        return bad_request(&why.to_string());
    }
    let password_hash = match hash_new_password(&access, password).await {
        Ok(hash) => hash,
        Err(r) => return *r,
    };
    let request = AdminRequest::CreateUser { name: username.clone(), password_hash, role: ApiRole::Readonly };
    one_user_change(&node, &req, request, &username, "User was successfully created").await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPassword {
    password: String,
}

/// `PUT /security/users/{user_id}` with `{"password"}`: a new password; the user's tokens so far
/// are revoked.
pub(super) async fn update_user(
    node: web::Data<NodeHandle>,
    access: web::Data<Access>,
    req: actix_web::HttpRequest,
    id: web::Path<u32>,
    body: web::Json<NewPassword>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let id = id.into_inner();
    // As Wazuh's API: an unknown user is a failed item, not a 404.
    let Some(user) = by_id(&node, id) else {
        return failed_item(&id.to_string(), 5001, "The user does not exist", "User could not be updated");
    };
    let password_hash = match hash_new_password(&access, body.into_inner().password).await {
        Ok(hash) => hash,
        Err(r) => return *r,
    };
    let request = AdminRequest::UpdateUser { name: user.name.clone(), password_hash: Some(password_hash), role: None };
    one_user_change(&node, &req, request, &user.name, "User was successfully updated").await
}

/// Applies `request` about user `name` and answers with the user as it is now.
async fn one_user_change(
    node: &NodeHandle,
    req: &actix_web::HttpRequest,
    request: AdminRequest,
    name: &str,
    done: &str,
) -> HttpResponse {
    if let Err(e) = node.admin(request, bearer(req).to_string()).await {
        return change_failed(&e);
    }
    let items: Vec<_> = node.users().get(name).iter().map(user_view).collect();
    HttpResponse::Ok().json(envelope(&items, done))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteUsersQuery {
    user_ids: Option<String>,
}

/// `DELETE /security/users?user_ids=1,2|all`: each user deleted (its tokens refused at once);
/// the caller cannot delete itself.
pub(super) async fn delete_users(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<DeleteUsersQuery>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let Some(text) = query.user_ids.as_deref() else { return bad_request("user_ids is required (ids, or all)") };
    let ids = match parse_user_ids(&node, text) {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let me = caller(&req).and_then(|c| c.user);
    let (mut affected, mut failed) = (Vec::new(), Vec::new());
    for id in ids {
        let fail = |code: u16, message: String| serde_json::json!({ "error": { "code": code, "message": message }, "id": [id] });
        let Some(user) = by_id(&node, id) else {
            failed.push(fail(404, format!("The user does not exist: no user with id {id}")));
            continue;
        };
        if me.as_deref() == Some(user.name.as_str()) {
            failed.push(fail(403, "The current user cannot be deleted".into()));
            continue;
        }
        match node.admin(AdminRequest::DeleteUser { name: user.name.clone() }, bearer(&req).to_string()).await {
            Ok(()) => affected.push(user_view(&user)),
            Err(e) => failed.push(fail(change_status(&e).as_u16(), e.to_string())),
        }
    }
    bulk_answer(affected, failed, "Users were successfully deleted")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleIds {
    role_ids: String,
}

fn parse_roles(text: &str) -> Result<Vec<ApiRole>, Box<HttpResponse>> {
    let mut roles = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>().ok().and_then(role_of_wazuh_id) {
            Some(role) => roles.push(role),
            None => {
                return Err(Box::new(bad_request(&format!(
                    "role_ids: {:?} is not a role of this cluster (1: administrator, 2: readonly)",
                    printable(part)
                ))))
            }
        }
    }
    if roles.is_empty() {
        return Err(Box::new(bad_request("role_ids names no role")));
    }
    Ok(roles)
}

/// What a roles call names: the user (by id) and the roles, checked; or the answer to give.
fn role_call(
    node: &NodeHandle,
    req: &actix_web::HttpRequest,
    id: u32,
    role_ids: &str,
) -> Result<(StoredUser, Vec<ApiRole>), Box<HttpResponse>> {
    if let Some(refusal) = refuse_unauthorized(req) {
        return Err(Box::new(refusal));
    }
    let roles = parse_roles(role_ids)?;
    let user = by_id(node, id).ok_or_else(|| Box::new(no_user(id)))?;
    Ok((user, roles))
}

/// `POST /security/users/{user_id}/roles?role_ids=1|2`: the user's role (administrator when 1 is
/// named). Takes effect at once for the user's tokens.
pub(super) async fn add_roles(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    id: web::Path<u32>,
    query: web::Query<RoleIds>,
) -> HttpResponse {
    let (user, roles) = match role_call(&node, &req, id.into_inner(), &query.role_ids) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    let role = if roles.contains(&ApiRole::Administrator) { ApiRole::Administrator } else { ApiRole::Readonly };
    let request = AdminRequest::UpdateUser { name: user.name.clone(), password_hash: None, role: Some(role) };
    one_user_change(&node, &req, request, &user.name, "All roles were linked to user").await
}

/// `DELETE /security/users/{user_id}/roles?role_ids=1`: removing administrator (1) leaves the
/// user readonly, at once for its tokens; readonly is the least role and stays.
pub(super) async fn remove_roles(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    id: web::Path<u32>,
    query: web::Query<RoleIds>,
) -> HttpResponse {
    let (user, roles) = match role_call(&node, &req, id.into_inner(), &query.role_ids) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    if user.role == ApiRole::Administrator && roles.contains(&ApiRole::Administrator) {
        if caller(&req).and_then(|c| c.user).as_deref() == Some(user.name.as_str()) {
            return HttpResponse::Forbidden().json(error_body(403, "The current user cannot remove its own role"));
        }
        let request =
            AdminRequest::UpdateUser { name: user.name.clone(), password_hash: None, role: Some(ApiRole::Readonly) };
        return one_user_change(&node, &req, request, &user.name, "All roles were unlinked from user").await;
    }
    HttpResponse::Ok().json(envelope(&[user_view(&user)], "All roles were unlinked from user"))
}

/// `PUT /security/users/{user_id}/revoke` (this cluster's): every token of the user issued so far
/// is refused from now on, on every node, without rotating `api.secret`.
pub(super) async fn revoke_user(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    id: web::Path<u32>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let id = id.into_inner();
    let Some(user) = by_id(&node, id) else { return no_user(id) };
    let request = AdminRequest::RevokeUserTokens { name: user.name.clone() };
    one_user_change(&node, &req, request, &user.name, "User tokens were successfully revoked").await
}

/// `PUT /security/user/revoke`: every user's tokens so far are refused from now on (Wazuh's
/// "revoke all active JWT tokens"); the static `api.token` is not a user's and stays valid.
pub(super) async fn revoke_all(node: web::Data<NodeHandle>, req: actix_web::HttpRequest) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let mut names: Vec<String> = node.users().all().keys().cloned().collect();
    names.sort();
    for name in names {
        if let Err(e) = node.admin(AdminRequest::RevokeUserTokens { name }, bearer(&req).to_string()).await {
            return change_failed(&e);
        }
    }
    HttpResponse::Ok().json(serde_json::json!({ "message": "Tokens were successfully revoked", "error": 0 }))
}

/// `DELETE /security/user/authenticate`: the caller's tokens (this one included) are refused from
/// now on, on every node.
pub(super) async fn sign_out(node: web::Data<NodeHandle>, req: actix_web::HttpRequest) -> HttpResponse {
    let Some(name) = caller(&req).and_then(|c| c.user) else {
        return bad_request("the caller signed in with the static api.token, which belongs to no user");
    };
    // The caller's own credential carries the change: it is valid until the change is applied.
    let request = AdminRequest::RevokeUserTokens { name: name.clone() };
    match node.admin(request, bearer(&req).to_string()).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({
            "data": { "message": format!("User {name} was successfully logged out") },
            "error": 0,
        })),
        Err(e) => change_failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_follow_wazuhs_policy() {
        assert!(check_password_policy("Secret-123").is_ok());
        assert!(check_password_policy("Short1!A").is_ok(), "8 characters is enough");
        for weak in ["Sh0rt!", "nouppercase-1", "NOLOWERCASE-1", "NoDigits-here", "NoSymbol123", &"Aa1!".repeat(17)] {
            assert!(check_password_policy(weak).is_err(), "{weak}");
        }
    }
}
