//! Groups: list, create, delete (one or many), their agents, files and `agent.conf`.

use super::*;

#[derive(serde::Deserialize)]
pub(super) struct GroupsList {
    groups_list: Option<String>,
}

/// `DELETE /groups?groups_list=a,b`: each group deleted.
pub(super) async fn delete_groups(
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

/// A group's directory under the sync roots, if `group` is a valid group name.
pub(super) fn group_dir(node: &NodeHandle, group: &str) -> Result<std::path::PathBuf, Box<HttpResponse>> {
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
pub(super) async fn group_files(node: web::Data<NodeHandle>, group: web::Path<String>) -> HttpResponse {
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
pub(super) async fn group_file(
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
pub(super) async fn put_group_configuration(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    group: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let request = AdminRequest::PutGroupConfiguration { group: group.into_inner(), content: body.to_vec() };
    change(&node, &req, request, "Agent configuration was successfully updated").await
}

pub(super) async fn list_groups(node: web::Data<NodeHandle>) -> HttpResponse {
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
pub(super) struct NewGroup {
    group_id: String,
}

pub(super) async fn create_group(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    body: web::Json<NewGroup>,
) -> HttpResponse {
    let name = body.into_inner().group_id;
    change(&node, &req, AdminRequest::CreateGroup { name }, "Group created").await
}

pub(super) async fn delete_group(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    change(&node, &req, AdminRequest::DeleteGroup { name: name.into_inner() }, "Group deleted").await
}
