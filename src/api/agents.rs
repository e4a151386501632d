//! Agents: `GET /agents` (one page, filtered), `GET /agents/{id}[/key]`, `GET /agents/summary/status`,
//! `PUT /agents/reconnect`, deletion and group assignment one by one or in bulk. Every endpoint reads
//! `agents_list` through [`AgentsList`].

use super::agent_list::{select_agents, sql_page, sql_page_json, AgentsParams, Selection};
use super::*;
use wazuh_cluster_actors::registry::enroll::MAX_AGENT_ID;
use wazuh_cluster_actors::registry::Fixed;

/// `GET /agents`: one page of the agents the parameters select (see [`Selection`]);
/// `total_affected_items` counts every match.
pub(super) async fn agents(node: web::Data<NodeHandle>, query: web::Query<AgentsParams>) -> HttpResponse {
    let params = query.into_inner();
    let pretty = params.pretty.unwrap_or(false);
    let selection = match Selection::of_list(params) {
        Ok(s) => s,
        Err(why) => return bad_request(&why),
    };
    const DONE: &str = "All selected agents information was returned";
    let unavailable = |e: &str| {
        HttpResponse::ServiceUnavailable().json(error_body(503, &format!("the agent registry is unavailable: {e}")))
    };
    if !pretty {
        // The master's page, written from the rows as SQLite holds them.
        if let Some(page) = sql_page_json(&node, &selection).await {
            return match page {
                Ok((total, items)) => HttpResponse::Ok()
                    .content_type("application/json")
                    .body(crate::node::page::envelope(&items, total, DONE)),
                Err(e) => unavailable(&e),
            };
        }
    }
    if let Some(page) = sql_page(&node, &selection).await {
        // Written as it is read, without a JSON tree per agent.
        return match page {
            Ok((total, items)) => json_answer(&Listed::new(&items, total, DONE), pretty),
            Err(e) => unavailable(&e),
        };
    }
    match select_agents(&node, &selection).await {
        Ok((total, items)) => json_answer(&Listed::new(&items, total, DONE), pretty),
        Err(e) => unavailable(&e),
    }
}

/// A 200 with `body`, indented when the caller asked for `pretty`.
pub(super) fn json_answer<T: serde::Serialize>(body: &T, pretty: bool) -> HttpResponse {
    let text = if pretty { serde_json::to_string_pretty(body) } else { serde_json::to_string(body) };
    HttpResponse::Ok().content_type("application/json").body(text.unwrap_or_default())
}

/// A 400 in the API's error format.
pub(super) fn bad_request(why: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(error_body(400, why))
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

pub(super) fn bad_id(text: &str) -> HttpResponse {
    bad_request(&format!("invalid agent id {text:?}"))
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
pub(super) fn agents_list(text: Option<&str>, rule: ListRule) -> Result<AgentsList, String> {
    let Some(text) = text else {
        return match rule {
            ListRule::Optional => Ok(AgentsList::Every),
            ListRule::RequiredOrAll => Err("agents_list is required (agent ids, or all)".into()),
        };
    };
    if text.trim() == "all" {
        return match rule {
            ListRule::RequiredOrAll => Ok(AgentsList::Every),
            ListRule::Optional => {
                Err("agents_list: `all` is not taken here; leave agents_list out for every agent".into())
            }
        };
    }
    let mut ids = Vec::new();
    for piece in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some(id) = wazuh_cluster_actors::registry::parse_id(piece) else {
            return Err(format!("agents_list: invalid agent id {piece:?}"));
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() > wazuh_cluster_actors::registry::query::MAX_IDS {
            return Err(wazuh_cluster_actors::registry::query::QueryError::TooManyIds.to_string());
        }
    }
    if ids.is_empty() {
        return Err("agents_list names no agent".into());
    }
    Ok(AgentsList::Ids(ids))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `wait_for_complete` and `force_single_group` are read only to be accepted.
pub(super) struct BulkAgents {
    /// Indented JSON.
    pretty: Option<bool>,
    /// Accepted for Wazuh's clients: every answer is complete.
    wait_for_complete: Option<bool>,
    agents_list: Option<String>,
    group_id: Option<String>,
    /// Accepted for Wazuh's clients: an agent has as many groups as it is given.
    force_single_group: Option<bool>,
}

/// `DELETE /agents?agents_list=001,002|all&status=active,disconnected|all[&older_than=7d][&q=...]`:
/// each agent selected deleted, in Wazuh's bulk envelope (`older_than` is 7 days unless given,
/// as in Wazuh: `0s` for any age).
pub(super) async fn delete_agents(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<AgentsParams>,
) -> HttpResponse {
    let selection = match Selection::of_deletion(query.into_inner()) {
        Ok(s) => s,
        Err(why) => return bad_request(&why),
    };
    let ids = match selected_ids(&node, &selection).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests = ids.into_iter().map(|id| (fmt_id(id), AdminRequest::DeleteAgent { id })).collect();
    bulk(&node, &req, requests, "All selected agents were deleted").await
}

/// The ids of the agents `selection` selects.
async fn selected_ids(node: &NodeHandle, selection: &Selection) -> Result<Vec<u32>, Box<HttpResponse>> {
    let (_, items) = select_agents(node, selection)
        .await
        .map_err(|e| Box::new(HttpResponse::ServiceUnavailable().json(error_body(503, &e))))?;
    Ok(items
        .iter()
        .filter_map(|a| a.get("id").and_then(serde_json::Value::as_str))
        .filter_map(wazuh_cluster_actors::registry::parse_id)
        .collect())
}

/// The agents a required `agents_list` (ids, or `all`) names.
async fn required_ids(node: &NodeHandle, list: Option<&str>) -> Result<Vec<u32>, Box<HttpResponse>> {
    match agents_list(list, ListRule::RequiredOrAll) {
        Ok(AgentsList::Ids(ids)) => Ok(ids),
        Ok(AgentsList::Every) => selected_ids(node, &Selection::every()).await,
        Err(why) => Err(Box::new(bad_request(&why))),
    }
}

/// `PUT /agents/group?group_id=...&agents_list=...` (Wazuh's form): each agent assigned to the
/// group.
pub(super) async fn assign_many_wazuh(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<BulkAgents>,
) -> HttpResponse {
    let q = query.into_inner();
    let Some(group) = q.group_id else { return bad_request("group_id is required") };
    let ids = match required_ids(&node, q.agents_list.as_deref().or(Some("all"))).await {
        Ok(ids) => ids,
        Err(r) => return *r,
    };
    let requests =
        ids.into_iter().map(|id| (fmt_id(id), AdminRequest::AssignGroup { id, group: group.clone() })).collect();
    bulk(&node, &req, requests, "All selected agents were assigned to the group").await
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
        // Wazuh's GET /agents/{agent_id}/key: a failed item, not a 404.
        Ok(None) if with_key => failed_item(&id, 1701, "Agent does not exist", "No agent keys were obtained"),
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

    fn status(r: Result<AgentsList, String>) -> u16 {
        r.map(|_| 200).unwrap_or(400)
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

/// `POST /agents`'s body (Wazuh's `AgentAddBody`). Wazuh's `force` is refused by name: the node's
/// `[enrollment]` replace policy decides when an agent holding the name or address is replaced.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAgentBody {
    name: String,
    /// `any` (the default), an address or a network.
    ip: Option<String>,
}

/// `POST /agents/insert`'s body (Wazuh's `AgentInsertBody`, without `force` as above).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InsertAgentBody {
    name: String,
    ip: Option<String>,
    /// Three digits or more (`"123"`), not `000` (the manager's).
    id: Option<String>,
    /// 64 letters and digits.
    key: Option<String>,
}

/// `POST /agents` with `{"name": ..., "ip": ...}`: registers an agent as Wazuh's API does (the
/// registry's enrollment, so its rules on names and addresses hold) and answers its id and its key
/// as `manage_agents` imports it (base64 of `id name ip key`). A worker forwards it to the master.
pub(super) async fn add_agent(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    body: web::Json<NewAgentBody>,
) -> HttpResponse {
    let NewAgentBody { name, ip } = body.into_inner();
    register(node, req, name, ip, Fixed::default()).await
}

/// `POST /agents/insert`: [`add_agent`] with the agent's id and key given (both optional, as in
/// Wazuh): an agent moved from another manager keeps its `client.keys` line.
pub(super) async fn insert_agent(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    body: web::Json<InsertAgentBody>,
) -> HttpResponse {
    let InsertAgentBody { name, ip, id, key } = body.into_inner();
    let id = match id.as_deref().map(str::trim) {
        None => None,
        Some(text) => match (text.len() >= 3 && text.bytes().all(|b| b.is_ascii_digit()), text.parse::<u32>()) {
            (true, Ok(n)) if (1..=MAX_AGENT_ID).contains(&n) => Some(n),
            _ => {
                return bad_request(&format!(
                    "id: {:?} is not an agent id (three digits or more, from 001 to {MAX_AGENT_ID})",
                    wazuh_cluster_protocol::agent::enrollment::printable(text)
                ))
            }
        },
    };
    if let Some(k) = &key {
        if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return bad_request("key: an agent key is 64 letters and digits");
        }
    }
    register(node, req, name, ip, Fixed { id, key }).await
}

async fn register(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: String,
    ip: Option<String>,
    fixed: Fixed,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let ip = ip.unwrap_or_else(|| "any".into()).to_ascii_lowercase();
    match node.register_agent(name, ip, fixed).await {
        Ok(Ok(agent)) => {
            let line = format!("{} {} {} {}", fmt_id(agent.id), agent.name, agent.ip, agent.key);
            let key = base64ct::Base64::encode_string(line.as_bytes());
            let body = serde_json::json!({ "data": { "id": fmt_id(agent.id), "key": key }, "error": 0 });
            let pretty = req.query_string().split('&').any(|pair| pair == "pretty=true");
            json_answer(&body, pretty)
        }
        Ok(Err(refused)) => bad_request(&refused.to_string()),
        Err(e) => change_failed(&e),
    }
}
