//! Agents: `GET /agents` (one page, filtered), `GET /agents/{id}[/key]`, `GET /agents/summary/status`,
//! `PUT /agents/reconnect`, deletion and group assignment one by one or in bulk. Every endpoint reads
//! `agents_list` through [`AgentsList`].

use super::*;

#[derive(serde::Deserialize)]
#[allow(dead_code)] // `keys` is read only to refuse it with a clear message.
pub(super) struct AgentsParams {
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
pub(super) async fn agents(node: web::Data<NodeHandle>, query: web::Query<AgentsParams>) -> HttpResponse {
    let p = query.into_inner();
    if p.keys.is_some() {
        return HttpResponse::BadRequest()
            .json(error_body(400, "lists never carry agent keys: ask for one with GET /agents/{id}/key"));
    }
    let sort = match p.sort.as_deref().map(parse_sort).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &e.to_string())),
    };
    let ids = match agents_list(p.agents_list.as_deref(), ListRule::Optional) {
        Ok(AgentsList::Every) => Vec::new(),
        Ok(AgentsList::Ids(ids)) => ids,
        Err(r) => return *r,
    };
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
pub(super) async fn agents_summary(node: web::Data<NodeHandle>) -> HttpResponse {
    match node.agent_summary().await {
        Ok(summary) => HttpResponse::Ok().json(serde_json::json!({
            "data": summary,
            "message": "Agent summary was returned",
            "error": 0,
        })),
        Err(e) => HttpResponse::ServiceUnavailable().json(error_body(503, &e.to_string())),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ReconnectQuery {
    /// Comma-separated agent ids; absent: every agent.
    agents_list: Option<String>,
    /// Only agents connected to this node.
    node: Option<String>,
}

/// `PUT /agents/reconnect[?agents_list=001,002][&node=worker-1]`: sends `#!-force_reconnect` to
/// the agents (the master forwards the request to its workers).
pub(super) async fn reconnect(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<ReconnectQuery>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let ids = match agents_list(query.agents_list.as_deref(), ListRule::Optional) {
        Ok(AgentsList::Every) => Vec::new(),
        Ok(AgentsList::Ids(ids)) => ids,
        Err(r) => return *r,
    };
    let nodes = node.force_reconnect(query.node.clone(), ids).await;
    HttpResponse::Ok().json(envelope(&nodes, "Force reconnect command was sent to the agents"))
}

pub(super) fn bad_id(text: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(error_body(400, &format!("invalid agent id {text:?}")))
}

pub(super) async fn delete_agent(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, AdminRequest::DeleteAgent { id }, "Agent deleted").await
}

/// Which `agents_list` an endpoint takes, after Wazuh's two parameters of that name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ListRule {
    /// `agents_list`: absent means every agent; `all` is not a value.
    Optional,
    /// `agents_list_all`: required; `all` names every agent.
    RequiredOrAll,
}

/// The agents an endpoint's `agents_list` names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AgentsList {
    Every,
    /// Distinct ids, in the order given.
    Ids(Vec<u32>),
}

/// `agents_list` read the same way by every endpoint: ids separated by commas, each trimmed, at
/// most `MAX_IDS` of them; a bad id, a list that names none, too many, a missing required list or
/// an `all` where it is not taken is a 400 that says which.
pub(super) fn agents_list(text: Option<&str>, rule: ListRule) -> Result<AgentsList, Box<HttpResponse>> {
    let refuse = |why: &str| Box::new(HttpResponse::BadRequest().json(error_body(400, why)));
    let Some(text) = text else {
        return match rule {
            ListRule::Optional => Ok(AgentsList::Every),
            ListRule::RequiredOrAll => Err(refuse("agents_list is required (agent ids, or all)")),
        };
    };
    if text.trim() == "all" {
        return match rule {
            ListRule::RequiredOrAll => Ok(AgentsList::Every),
            ListRule::Optional => {
                Err(refuse("agents_list: `all` is not taken here; leave agents_list out for every agent"))
            }
        };
    }
    let mut ids = Vec::new();
    for piece in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some(id) = wazuh_cluster_actors::registry::parse_id(piece) else { return Err(Box::new(bad_id(piece))) };
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() > wazuh_cluster_actors::registry::query::MAX_IDS {
            return Err(refuse(&wazuh_cluster_actors::registry::query::QueryError::TooManyIds.to_string()));
        }
    }
    if ids.is_empty() {
        return Err(refuse("agents_list names no agent"));
    }
    Ok(AgentsList::Ids(ids))
}

/// The agents `list` names, kept when they have `status` and, with `older_than`, when their last
/// keep-alive (or, never connected, their registration) is older than that.
pub(super) async fn agent_ids(
    node: &NodeHandle,
    list: AgentsList,
    status: Option<String>,
    older_than: Option<std::time::Duration>,
) -> Result<Vec<u32>, Box<HttpResponse>> {
    if let (AgentsList::Ids(ids), None, None) = (&list, &status, older_than) {
        return Ok(ids.clone());
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
    Ok(match list {
        AgentsList::Every => found,
        AgentsList::Ids(named) => named.into_iter().filter(|id| found.contains(id)).collect(),
    })
}

#[derive(serde::Deserialize)]
pub(super) struct BulkAgents {
    agents_list: Option<String>,
    status: Option<String>,
    group_id: Option<String>,
    /// `7d`, `12h`, `30m`, `90s`: only agents not heard from for this long.
    older_than: Option<String>,
}

/// `DELETE /agents?agents_list=001,002|all[&status=disconnected][&older_than=7d]`: each agent deleted, in Wazuh's
/// bulk envelope.
pub(super) async fn delete_agents(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<BulkAgents>,
) -> HttpResponse {
    let q = query.into_inner();
    let list = match agents_list(q.agents_list.as_deref(), ListRule::RequiredOrAll) {
        Ok(list) => list,
        Err(r) => return *r,
    };
    let older_than = match q.older_than.as_deref().map(crate::config::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => return HttpResponse::BadRequest().json(error_body(400, &format!("older_than: {e}"))),
    };
    let ids = match agent_ids(&node, list, q.status, older_than).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests = ids.into_iter().map(|id| (fmt_id(id), AdminRequest::DeleteAgent { id })).collect();
    bulk(&node, &req, requests, "All selected agents were deleted").await
}

/// The agents a required `agents_list` (ids, or `all`) names.
async fn required_ids(node: &NodeHandle, list: Option<&str>) -> Result<Vec<u32>, Box<HttpResponse>> {
    agent_ids(node, agents_list(list, ListRule::RequiredOrAll)?, None, None).await
}

/// `PUT /agents/group/{group_id}?agents_list=...`: each agent assigned to the group.
pub(super) async fn assign_many(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    group: web::Path<String>,
    query: web::Query<BulkAgents>,
) -> HttpResponse {
    let group = group.into_inner();
    let ids = match required_ids(&node, query.agents_list.as_deref()).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests =
        ids.into_iter().map(|id| (fmt_id(id), AdminRequest::AssignGroup { id, group: group.clone() })).collect();
    bulk(&node, &req, requests, "All selected agents were assigned to the group").await
}

/// `DELETE /agents/group?agents_list=...&group_id=...`: each agent removed from the group.
pub(super) async fn unassign_many(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<BulkAgents>,
) -> HttpResponse {
    let q = query.into_inner();
    let Some(group) = q.group_id else {
        return HttpResponse::BadRequest().json(error_body(400, "group_id is required"));
    };
    let ids = match required_ids(&node, q.agents_list.as_deref()).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests =
        ids.into_iter().map(|id| (fmt_id(id), AdminRequest::UnassignGroup { id, group: group.clone() })).collect();
    bulk(&node, &req, requests, "All selected agents were removed from the group").await
}

pub(super) async fn assign(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (id, group) = path.into_inner();
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, AdminRequest::AssignGroup { id, group }, "Agent assigned to the group").await
}

pub(super) async fn unassign(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (id, group) = path.into_inner();
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    change(&node, &req, AdminRequest::UnassignGroup { id, group }, "Agent removed from the group").await
}

pub(super) async fn get_agent(node: web::Data<NodeHandle>, id: web::Path<String>) -> HttpResponse {
    one_agent(&node, &id, false).await
}

/// `GET /agents/{id}/key`: the agent with its key; the only call that returns a key.
pub(super) async fn get_agent_key(node: web::Data<NodeHandle>, id: web::Path<String>) -> HttpResponse {
    one_agent(&node, &id, true).await
}

pub(super) async fn one_agent(node: &NodeHandle, id: &str, with_key: bool) -> HttpResponse {
    let Some(num) = wazuh_cluster_actors::registry::parse_id(id) else { return bad_id(id) };
    let id = wazuh_cluster_actors::registry::fmt_id(num);
    match node.agent(num, with_key).await {
        Ok(Some(a)) => HttpResponse::Ok().json(envelope(&[a], "Agent information was returned")),
        Ok(None) => HttpResponse::NotFound().json(error_body(404, &format!("no agent with id {id}"))),
        Err(e) => HttpResponse::ServiceUnavailable().json(error_body(503, &e.to_string())),
    }
}

/// `GET /groups/{group_id}/agents`: the group's agents, paged and sorted as `GET /agents`.
pub(super) async fn group_agents(
    node: web::Data<NodeHandle>,
    group: web::Path<String>,
    query: web::Query<AgentsParams>,
) -> HttpResponse {
    let mut p = query.into_inner();
    p.group = Some(group.into_inner());
    agents(node, web::Query(p)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<AgentsList, Box<HttpResponse>>) -> u16 {
        r.map(|_| 200).unwrap_or_else(|e| e.status().as_u16())
    }

    #[test]
    fn every_endpoint_reads_agents_list_one_way() {
        use AgentsList::{Every, Ids};
        use ListRule::{Optional, RequiredOrAll};
        for rule in [Optional, RequiredOrAll] {
            assert_eq!(agents_list(Some(" 001, 2 ,001,"), rule).ok(), Some(Ids(vec![1, 2])), "trimmed, distinct");
            assert_eq!(status(agents_list(Some(""), rule)), 400, "names no agent");
            assert_eq!(status(agents_list(Some(" , "), rule)), 400, "names no agent");
            assert_eq!(status(agents_list(Some("1,abc"), rule)), 400, "bad id");
            assert_eq!(status(agents_list(Some("-1"), rule)), 400, "bad id");
            let many: Vec<String> =
                (1..=wazuh_cluster_actors::registry::query::MAX_IDS + 1).map(|i| i.to_string()).collect();
            assert_eq!(status(agents_list(Some(&many.join(",")), rule)), 400, "too many");
        }
        assert_eq!(agents_list(None, Optional).ok(), Some(Every));
        assert_eq!(status(agents_list(Some("all"), Optional)), 400, "all is not a value of agents_list");
        assert_eq!(status(agents_list(None, RequiredOrAll)), 400, "required");
        assert_eq!(agents_list(Some(" all "), RequiredOrAll).ok(), Some(Every));
    }
}
