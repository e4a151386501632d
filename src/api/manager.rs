//! `GET /manager/status` and `GET /manager/logs` for this node, in Wazuh's shapes.

use super::listing::{page, ListParams};
use super::*;
use serde_json::{json, Value};

/// `GET /manager/status`: the Wazuh daemons whose work this node does, and their state: remoted
/// (agent connections), authd (enrollment), clusterd and apid are this process, running while it
/// answers; analysisd is the one beside it, running while its socket is connected (absent when the
/// node forwards no events). Wazuh's other daemons are not this node's to report.
pub(super) async fn status(node: web::Data<NodeHandle>, query: web::Query<overview::PlainParams>) -> HttpResponse {
    let mut item = json!({
        "wazuh-remoted": "running",
        "wazuh-authd": "running",
        "wazuh-clusterd": "running",
        "wazuh-apid": "running",
    });
    let figures = node.hub().send(wazuh_cluster_actors::agents::messages::GetHubView).await.unwrap_or_default();
    if figures.analysis_configured > 0 {
        item["wazuh-analysisd"] = if figures.analysis_connected > 0 { "running" } else { "stopped" }.into();
    }
    agents::json_answer(&envelope(&[item], "Processes status was successfully read"), query.pretty.unwrap_or(false))
}

/// `GET /manager/logs` (Wazuh's parameters; any other is a 400 naming it).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    pretty: Option<bool>,
    wait_for_complete: Option<bool>,
    offset: Option<u64>,
    limit: Option<u64>,
    sort: Option<String>,
    search: Option<String>,
    tag: Option<String>,
    level: Option<String>,
    q: Option<String>,
    select: Option<String>,
    distinct: Option<bool>,
}

const LEVELS: &[&str] = &["critical", "debug", "debug2", "error", "info", "warning"];
const LOG_FIELDS: &[&str] = &["timestamp", "tag", "level", "description"];

/// `GET /manager/logs`: this node's recent log lines (the last few thousand the process kept),
/// newest first unless sorted otherwise, filtered by `tag`, `level`, `q`, `search`, paged.
pub(super) async fn logs(node: web::Data<NodeHandle>, query: web::Query<LogsQuery>) -> HttpResponse {
    let q = query.into_inner();
    if let Some(level) = q.level.as_deref().filter(|l| !LEVELS.contains(l)) {
        return agents::bad_request(&format!("level: {level:?} is not one of {}", LEVELS.join(", ")));
    }
    let items: Vec<Value> = crate::logging::recent(node.name())
        .into_iter()
        .filter(|l| q.tag.as_deref().is_none_or(|t| l.tag == t))
        .filter(|l| q.level.as_deref().is_none_or(|level| l.level == level))
        .map(|l| {
            let at = crate::views::iso(l.at_ms);
            json!({ "timestamp": at, "tag": l.tag, "level": l.level, "description": l.description })
        })
        .collect();
    let list = ListParams {
        pretty: q.pretty,
        wait_for_complete: q.wait_for_complete,
        offset: q.offset,
        limit: q.limit,
        // Newest first, as Wazuh lists its log.
        sort: q.sort.or_else(|| Some("-timestamp".into())),
        search: q.search,
        q: q.q,
        select: q.select,
        distinct: q.distinct,
        ..ListParams::default()
    };
    let allowed = ["pretty", "wait_for_complete", "offset", "limit", "sort", "search", "q", "select", "distinct"];
    page(items, &list, &allowed, "GET /manager/logs", (LOG_FIELDS, "timestamp"), "Logs were successfully read")
}

/// `GET /manager/configuration` (Wazuh's parameters; any other is a 400 naming it).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigurationQuery {
    pretty: Option<bool>,
    #[allow(dead_code)] // Read only to be accepted: every answer is complete.
    wait_for_complete: Option<bool>,
    raw: Option<bool>,
    section: Option<String>,
    field: Option<String>,
    #[allow(dead_code)] // One item: distinct changes nothing.
    distinct: Option<bool>,
}

/// `GET /manager/configuration`: the `etc/ossec.conf` of the Wazuh installation this node works
/// in (its data directory), as Wazuh's API shows it: the bare file with `raw`, otherwise its
/// sections as JSON, one `section` (and one `field` of it) when asked. A node without an
/// `ossec.conf` answers a 400 that says so.
pub(super) async fn configuration(node: web::Data<NodeHandle>, query: web::Query<ConfigurationQuery>) -> HttpResponse {
    let q = query.into_inner();
    if q.field.is_some() && q.section.is_none() {
        return agents::bad_request("field needs a section");
    }
    let path = node.data_dir().join("etc/ossec.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => return agents::bad_request(&format!("this node has no readable etc/ossec.conf: {e}")),
    };
    if q.raw.unwrap_or(false) {
        return HttpResponse::Ok().content_type("application/xml").body(text);
    }
    let mut config = match super::xml::ossec_conf(&text) {
        Ok(config) => config,
        Err(why) => return agents::bad_request(&format!("etc/ossec.conf does not parse: {why}")),
    };
    if let Some(section) = &q.section {
        let Some(mut value) = config.remove(section) else {
            return agents::bad_request(&format!("Requested component configuration does not exist: {section:?}"));
        };
        if let Some(field) = &q.field {
            let picked = match &value {
                Value::Array(list) => Value::Array(list.iter().filter_map(|v| v.get(field).cloned()).collect()),
                other => other.get(field).cloned().unwrap_or(Value::Null),
            };
            value = json!({ field: picked });
        }
        config = [(section.clone(), value)].into_iter().collect();
    }
    agents::json_answer(
        &envelope(&[Value::Object(config)], "Configuration was successfully read"),
        q.pretty.unwrap_or(false),
    )
}

/// This node's `etc/ossec.conf` checked: `{"name", "status": "OK"}`, or `"KO"` with why.
pub(super) fn validation_item(node: &NodeHandle) -> Value {
    let checked = std::fs::read_to_string(node.data_dir().join("etc/ossec.conf"))
        .map_err(|e| format!("etc/ossec.conf cannot be read: {e}"))
        .and_then(|text| super::xml::ossec_conf(&text).map_err(|why| format!("etc/ossec.conf does not parse: {why}")));
    match checked {
        Ok(_) => json!({ "name": node.name(), "status": "OK" }),
        Err(why) => json!({ "name": node.name(), "status": "KO", "details": [why] }),
    }
}

/// `GET /manager/configuration/validation`: whether this node's `ossec.conf` reads.
pub(super) async fn validation(node: web::Data<NodeHandle>, query: web::Query<overview::PlainParams>) -> HttpResponse {
    agents::json_answer(
        &envelope(&[validation_item(&node)], "Validation was successfully checked"),
        query.pretty.unwrap_or(false),
    )
}

/// `GET /cluster/configuration/validation[?nodes_list=]`: each node's answer to
/// `GET /manager/configuration/validation` (the master asks each worker's API); a node that cannot
/// be asked is `KO` with why.
pub(super) async fn cluster_validation(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<super::cluster::NodesQuery>,
) -> HttpResponse {
    let only = query.nodes_list();
    let mut items = Vec::new();
    for n in node.nodes().await {
        if only.as_ref().is_some_and(|o| !o.contains(&n.name)) {
            continue;
        }
        if n.name == node.name() {
            items.push(validation_item(&node));
            continue;
        }
        let call = wazuh_cluster_protocol::message::ApiCall {
            method: wazuh_cluster_protocol::message::ApiMethod::Get,
            target: "/manager/configuration/validation".into(),
            credential: bearer(&req).to_string(),
            content_type: String::new(),
            body: Vec::new(),
        };
        let asked = node.call_worker_api(&n.name, call).await.and_then(|answer| {
            let body: Value = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
            body["data"]["affected_items"].get(0).cloned().ok_or_else(|| format!("the node answered {}", answer.status))
        });
        items.push(asked.unwrap_or_else(|why| json!({ "name": n.name, "status": "KO", "details": [why] })));
    }
    agents::json_answer(&envelope(&items, "Validation was successfully checked"), query.pretty())
}
