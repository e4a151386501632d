//! Views over the agents that Wazuh's API gives beside `GET /agents`: `GET /agents/outdated`,
//! `/agents/no_group`, `/agents/summary/os`, `/agents/stats/distinct`, `/overview/agents` and
//! `/agents/{id}/group/is_sync`, in Wazuh's shapes, from the same selection as `GET /agents`.

use super::agent_list::{select_agents, AgentsParams, Selection};
use super::wql;
use super::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// The Wazuh version this manager stands for: agents older than it are outdated.
pub(super) const MANAGER_VERSION: [u64; 3] = [4, 14, 7];

fn outdated(item: &Value) -> bool {
    item.get("version")
        .and_then(Value::as_str)
        .and_then(wql::version_numbers)
        .is_some_and(|v| v.as_slice() < MANAGER_VERSION.as_slice())
}

fn without_group(item: &Value) -> bool {
    item.get("group").and_then(Value::as_array).is_none_or(Vec::is_empty)
}

/// The answer of a page of agents (or a 400, or a 503).
async fn page(node: &NodeHandle, selection: Result<Selection, String>, pretty: bool) -> HttpResponse {
    let selection = match selection {
        Ok(s) => s,
        Err(why) => return agents::bad_request(&why),
    };
    match select_agents(node, &selection).await {
        Ok((total, items)) => {
            let mut body = envelope(&items, "All selected agents information was returned");
            body["data"]["total_affected_items"] = total.into();
            agents::json_answer(&body, pretty)
        }
        Err(e) => unavailable(&e),
    }
}

fn unavailable(e: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(error_body(503, &format!("the agent registry is unavailable: {e}")))
}

/// `GET /agents/outdated`: agents older than this manager's Wazuh version (4.14.7).
pub(super) async fn agents_outdated(node: web::Data<NodeHandle>, query: web::Query<AgentsParams>) -> HttpResponse {
    let p = query.into_inner();
    let pretty = p.pretty.unwrap_or(false);
    page(&node, Selection::of_page(p, outdated, "GET /agents/outdated"), pretty).await
}

/// `GET /agents/no_group`: agents in no group.
pub(super) async fn agents_no_group(node: web::Data<NodeHandle>, query: web::Query<AgentsParams>) -> HttpResponse {
    let p = query.into_inner();
    let pretty = p.pretty.unwrap_or(false);
    page(&node, Selection::of_page(p, without_group, "GET /agents/no_group"), pretty).await
}

/// `pretty` and `wait_for_complete`, the parameters every view takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlainParams {
    pub(super) pretty: Option<bool>,
    /// Accepted for Wazuh's clients: every answer is complete.
    #[allow(dead_code)] // Read only to be accepted.
    wait_for_complete: Option<bool>,
}

/// Every agent as the API shows it.
async fn every_agent(node: &NodeHandle) -> Result<Vec<Value>, HttpResponse> {
    select_agents(node, &Selection::every()).await.map(|(_, items)| items).map_err(|e| unavailable(&e))
}

/// `GET /agents/summary/os`: the platforms of the agents, each once.
pub(super) async fn summary_os(node: web::Data<NodeHandle>, query: web::Query<PlainParams>) -> HttpResponse {
    let items = match every_agent(&node).await {
        Ok(items) => items,
        Err(r) => return r,
    };
    let platforms: std::collections::BTreeSet<&str> =
        items.iter().filter_map(|a| wql::lookup(a, "os.platform").and_then(Value::as_str)).collect();
    let platforms: Vec<&str> = platforms.into_iter().collect();
    agents::json_answer(
        &envelope(&platforms, "Showing the operative system of all specified agents"),
        query.pretty.unwrap_or(false),
    )
}

/// `GET /agents/stats/distinct?fields=...`: how many agents have each combination of the fields'
/// values (`N/A` where an agent has none), filtered by `q` and `search`, sorted, one page.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DistinctParams {
    pretty: Option<bool>,
    #[allow(dead_code)] // Read only to be accepted.
    wait_for_complete: Option<bool>,
    fields: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
    sort: Option<String>,
    search: Option<String>,
    q: Option<String>,
}

pub(super) async fn stats_distinct(node: web::Data<NodeHandle>, query: web::Query<DistinctParams>) -> HttpResponse {
    let p = query.into_inner();
    let Some(fields) = p.fields.as_deref() else { return agents::bad_request("fields is required") };
    let fields = match wql::parse_select(fields, super::agent_list::AGENT_FIELDS) {
        Ok(f) => f,
        Err(why) => return agents::bad_request(&why.replacen("select", "fields", 1)),
    };
    let q =
        match p.q.as_deref().filter(|q| !q.trim().is_empty()).map(|q| wql::parse(q, super::agent_list::AGENT_FIELDS)) {
            None => None,
            Some(Ok(q)) => Some(q),
            Some(Err(why)) => return agents::bad_request(&why),
        };
    let limit = p.limit.unwrap_or(500);
    if !(1..=wazuh_cluster_actors::registry::query::MAX_LIMIT).contains(&limit) {
        return agents::bad_request(&format!(
            "limit must be between 1 and {}",
            wazuh_cluster_actors::registry::query::MAX_LIMIT
        ));
    }
    let mut sort_fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    sort_fields.push("count");
    let sort = match p.sort.as_deref().map(|s| wql::parse_sort(s, &sort_fields)).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(why) => return agents::bad_request(&why),
    };
    let items = match every_agent(&node).await {
        Ok(items) => items,
        Err(r) => return r,
    };
    let mut counts: BTreeMap<String, (Value, u64)> = BTreeMap::new();
    for a in &items {
        if q.as_ref().is_some_and(|q| !wql::matches(q, a))
            || p.search.as_deref().is_some_and(|s| !wql::search_matches(a, s))
        {
            continue;
        }
        let mut filled = a.clone();
        for f in &fields {
            if wql::lookup(&filled, f).is_none() {
                set_path(&mut filled, f, Value::String("N/A".into()));
            }
        }
        let key = wql::project(&filled, &fields);
        let entry = counts.entry(key.to_string()).or_insert((key, 0));
        entry.1 += 1;
    }
    let mut rows: Vec<Value> = counts
        .into_values()
        .map(|(mut key, count)| {
            key["count"] = count.into();
            key
        })
        .collect();
    if !sort.is_empty() {
        rows.sort_by(|a, b| wql::order(a, b, &sort, "count"));
    }
    let total = rows.len();
    let page: Vec<Value> = rows.into_iter().skip(p.offset.unwrap_or(0) as usize).take(limit as usize).collect();
    let mut body = envelope(&page, "All selected agents information was returned");
    body["data"]["total_affected_items"] = total.into();
    agents::json_answer(&body, p.pretty.unwrap_or(false))
}

/// Sets the value at a dotted path, making the objects on the way.
fn set_path(item: &mut Value, path: &str, value: Value) {
    let mut at = item;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Value::Object(map) = at else { return };
        if i + 1 == parts.len() {
            map.insert(part.to_string(), value);
            return;
        }
        at = map.entry(part.to_string()).or_insert_with(|| Value::Object(Default::default()));
    }
}

/// How many of `items` have each value of `key(item)` (those without one left out), as
/// `{name: value, "count": n}` objects in the values' order.
fn count_by(items: &[Value], name: &str, key: impl Fn(&Value) -> Option<Value>) -> Vec<Value> {
    let mut counts: BTreeMap<String, (Value, u64)> = BTreeMap::new();
    for a in items {
        if let Some(k) = key(a) {
            counts.entry(k.to_string()).or_insert((k, 0)).1 += 1;
        }
    }
    counts.into_values().map(|(k, n)| serde_json::json!({ name: k, "count": n })).collect()
}

/// `GET /overview/agents`: agents per node, per group (with the group's sums), per system and per
/// version, the status summary, and the agent registered last.
pub(super) async fn overview_agents(node: web::Data<NodeHandle>, query: web::Query<PlainParams>) -> HttpResponse {
    let items = match every_agent(&node).await {
        Ok(items) => items,
        Err(r) => return r,
    };
    let status = match node.agent_summary().await {
        Ok(s) => s,
        Err(e) => return unavailable(&e.to_string()),
    };
    let groups = match node.groups().await {
        Ok(g) => g,
        Err(e) => return unavailable(&e.to_string()),
    };
    let groups: Vec<Value> =
        groups.into_iter().map(|(name, count)| super::groups::group_item(&node, name, count)).collect();
    let os = |a: &Value| {
        let os = a.get("os")?;
        Some(wql::project(os, &["name".into(), "platform".into(), "version".into()]))
    };
    let last = items
        .iter()
        .max_by(|a, b| {
            let at = |x: &Value| x.get("dateAdd").and_then(Value::as_str).unwrap_or("").to_string();
            at(a).cmp(&at(b)).then_with(|| wql::order(a, b, &[], "id"))
        })
        .cloned();
    let body = serde_json::json!({
        "data": {
            "nodes": count_by(&items, "node_name", |a| a.get("node_name").cloned()),
            "groups": groups,
            "agent_os": count_by(&items, "os", os),
            "agent_status": { "connection": status.connection, "configuration": status.configuration },
            "agent_version": count_by(&items, "version", |a| a.get("version").cloned()),
            "last_registered_agent": last.into_iter().collect::<Vec<_>>(),
        },
        "message": "Agents overview was returned",
        "error": 0,
    });
    agents::json_answer(&body, query.pretty.unwrap_or(false))
}

/// `GET /agents/{id}/group/is_sync`: whether the agent has its groups' current configuration.
pub(super) async fn is_sync(
    node: web::Data<NodeHandle>,
    id: web::Path<String>,
    query: web::Query<PlainParams>,
) -> HttpResponse {
    let Some(num) = wazuh_cluster_actors::registry::parse_id(&id) else { return agents::bad_id(&id) };
    let id = fmt_id(num);
    match node.agent(num, false).await {
        Ok(Some(a)) => {
            let synced = a.group_config_status.as_deref() == Some("synced");
            let item = serde_json::json!({ "id": id, "synced": synced });
            agents::json_answer(
                &envelope(&[item], "Sync info was returned for all selected agents"),
                query.pretty.unwrap_or(false),
            )
        }
        Ok(None) => failed_item(&id, 1701, "Agent does not exist", "Sync info was not returned"),
        Err(e) => unavailable(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outdated_and_grouped_as_wazuh_counts_them() {
        assert!(outdated(&json!({ "version": "Wazuh v4.9.0" })));
        assert!(!outdated(&json!({ "version": "Wazuh v4.14.7" })) && !outdated(&json!({})));
        assert!(without_group(&json!({ "group": [] })) && without_group(&json!({})));
        assert!(!without_group(&json!({ "group": ["default"] })));
        let items = [json!({ "version": "a" }), json!({ "version": "a" }), json!({})];
        assert_eq!(count_by(&items, "version", |a| a.get("version").cloned()), [json!({ "version": "a", "count": 2 })]);
        let mut v = json!({ "id": "001" });
        set_path(&mut v, "os.version", json!("N/A"));
        assert_eq!(v, json!({ "id": "001", "os": { "version": "N/A" } }));
    }
}
