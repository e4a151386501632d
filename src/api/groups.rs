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

/// `GET /groups/{group_id}/configuration`: the group's `agent.conf` as Wazuh's API gives it (see
/// [`super::xml::agent_conf`]), paged with `offset` and `limit`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigurationQuery {
    pretty: Option<bool>,
    #[allow(dead_code)] // Read only to be accepted: every answer is complete.
    wait_for_complete: Option<bool>,
    offset: Option<u64>,
    limit: Option<u64>,
}

pub(super) async fn get_group_configuration(
    node: web::Data<NodeHandle>,
    group: web::Path<String>,
    query: web::Query<ConfigurationQuery>,
) -> HttpResponse {
    let dir = match group_dir(&node, &group) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let text = std::fs::read_to_string(dir.join("agent.conf")).unwrap_or_default();
    let items = match super::xml::agent_conf(&text) {
        Ok(items) => items,
        Err(why) => return agents::bad_request(&format!("the group's agent.conf does not parse: {why}")),
    };
    let limit = query.limit.unwrap_or(500);
    if !(1..=wazuh_cluster_actors::registry::query::MAX_LIMIT).contains(&limit) {
        return agents::bad_request(&format!(
            "limit must be between 1 and {}",
            wazuh_cluster_actors::registry::query::MAX_LIMIT
        ));
    }
    let total = items.len();
    let page: Vec<_> = items.into_iter().skip(query.offset.unwrap_or(0) as usize).take(limit as usize).collect();
    let body = serde_json::json!({ "data": { "total_affected_items": total, "affected_items": page }, "error": 0 });
    agents::json_answer(&body, query.pretty.unwrap_or(false))
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

/// The MD5 of a group's `merged.mg` and `agent.conf` (Wazuh's `mergedSum` and `configSum`), where
/// the group has them.
pub(super) fn group_sums(node: &NodeHandle, group: &str) -> (Option<String>, Option<String>) {
    let dir = node.data_dir().join("etc/shared").join(group);
    let sum = |file: &str| {
        use md5::Digest;
        let bytes = std::fs::read(dir.join(file)).ok()?;
        Some(md5::Md5::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    (sum("merged.mg"), sum("agent.conf"))
}

/// A group as Wazuh's API shows it: its name, its agents and, where it has them, the sums of its
/// `merged.mg` and `agent.conf`.
pub(super) fn group_item(node: &NodeHandle, name: String, count: u64) -> serde_json::Value {
    let (merged, config) = group_sums(node, &name);
    let mut g = serde_json::json!({ "name": name, "count": count });
    if let Some(m) = merged {
        g["mergedSum"] = m.into();
    }
    if let Some(c) = config {
        g["configSum"] = c.into();
    }
    g
}

/// The fields of a group that `q`, `sort` and `select` take.
const GROUP_FIELDS: &[&str] = &["name", "count", "mergedSum", "configSum"];

/// `GET /groups`: the groups with their agent counts and sums, with Wazuh's parameters (see
/// [`listing::page`](super::listing::page)); `groups_list` names the groups, `hash` is md5.
pub(super) async fn list_groups(
    node: web::Data<NodeHandle>,
    query: web::Query<super::listing::ListParams>,
) -> HttpResponse {
    let p = query.into_inner();
    if p.hash.as_deref().is_some_and(|h| h != "md5") {
        return agents::bad_request("hash: only md5 is served");
    }
    let only: Option<Vec<&str>> =
        p.groups_list.as_deref().map(|l| l.split(',').map(str::trim).filter(|g| !g.is_empty()).collect());
    let groups = match node.groups().await {
        Ok(groups) => groups,
        Err(e) => return HttpResponse::ServiceUnavailable().json(error_body(503, &e.to_string())),
    };
    let items: Vec<serde_json::Value> = groups
        .into_iter()
        .filter(|(name, _)| only.as_ref().is_none_or(|o| o.contains(&name.as_str())))
        .map(|(name, count)| group_item(&node, name, count))
        .collect();
    let allowed = [
        "pretty",
        "wait_for_complete",
        "groups_list",
        "offset",
        "limit",
        "sort",
        "search",
        "hash",
        "q",
        "select",
        "distinct",
    ];
    super::listing::page(
        items,
        &p,
        &allowed,
        "GET /groups",
        (GROUP_FIELDS, "name"),
        "All selected groups information was returned",
    )
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
