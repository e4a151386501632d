//! Commands to agents, routed to the node that holds each agent's connection (Wazuh's distributed
//! API): `PUT /agents/restart`, `PUT /agents/{id}/restart`, `PUT /agents/group/{group_id}/restart`
//! and `PUT /active-response`. Each agent gets the bytes Wazuh's manager sends it for the same call
//! (`#!-execd` and the message its framework writes to remoted's queue: JSON for agents of 4.2 and
//! later, the legacy text before), and the answer lists every agent in `affected_items` or, with
//! Wazuh's code and message, in `failed_items` (1701: no such agent; 1707: not active; 3023: its
//! node is not connected).
//!
//! A worker forwards these calls to the master ([`super::forward`]), which knows every agent's
//! status and node.

use super::agent_list::{select_agents, Selection};
use super::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// What Wazuh's framework sends to restart an agent of 4.2 or later (its `RESTART_AGENTS_JSON`,
/// with the suffix its queue message carries for restarts).
const RESTART_JSON: &str = "{\"version\": 1, \"origin\": {\"module\": \"framework\"}, \"command\": \"restart-wazuh0\", \"parameters\": {\"extra_args\": [], \"alert\": {}}}";
/// The same for an older agent.
const RESTART_LEGACY: &str = "restart-ossec0";
/// What follows a restart in the queue message, and so on the agent's connection.
const RESTART_SUFFIX: &str = " - null (from_the_server) (no_rule_id)";
/// The first agent version that takes JSON active-response messages (Wazuh's `AR_LEGACY_VERSION`).
const JSON_SINCE: [u64; 3] = [4, 2, 0];

/// Whether an agent of `version` (`Wazuh v4.14.7`) takes JSON messages; an unknown version is
/// taken for a current one.
fn takes_json(version: Option<&str>) -> bool {
    version.and_then(super::wql::version_numbers).is_none_or(|v| v.as_slice() >= JSON_SINCE.as_slice())
}

/// Text as Python's `json.dumps` writes it (what Wazuh's framework sends): `", "` and `": "` between
/// items, every non-ASCII character escaped, keys in the order given.
pub(super) fn python_json(raw: &str) -> Result<String, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(raw).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(raw.len() + 16);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // Decode the string, then write it as Python does.
                let mut text = String::from('"');
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            text.push('\\');
                            if let Some(e) = chars.next() {
                                text.push(e);
                            }
                        }
                        other => text.push(other),
                    }
                }
                text.push('"');
                let decoded: String = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                out.push('"');
                for ch in decoded.chars() {
                    match ch {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        '\u{8}' => out.push_str("\\b"),
                        '\u{c}' => out.push_str("\\f"),
                        c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                            let mut units = [0u16; 2];
                            for unit in c.encode_utf16(&mut units) {
                                out.push_str(&format!("\\u{unit:04x}"));
                            }
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            ',' => out.push_str(", "),
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

/// An active-response message as Wazuh's framework makes it for an agent: JSON from `node` for
/// agents of 4.2 and later, `command arguments` (or `command - -`) before.
fn ar_message(json: bool, node: &str, command: &str, arguments: &[String], alert: &str) -> String {
    if json {
        let args: Vec<String> = arguments.iter().map(|a| python_string(a)).collect();
        format!(
            "{{\"version\": 1, \"origin\": {{\"name\": {}, \"module\": \"API\"}}, \"command\": {}, \"parameters\": {{\"extra_args\": [{}], \"alert\": {alert}}}}}",
            python_string(node),
            python_string(command),
            args.join(", ")
        )
    } else if arguments.is_empty() {
        format!("{command} - -")
    } else {
        let escaped: Vec<String> = arguments.iter().map(|a| shell_escaped(a)).collect();
        format!("{command} {}", escaped.join(" "))
    }
}

/// A string as Python's `json.dumps` writes it.
fn python_string(text: &str) -> String {
    python_json(&serde_json::Value::String(text.to_string()).to_string()).unwrap_or_else(|_| "\"\"".into())
}

/// Wazuh's escaping of legacy arguments: a backslash before each character its shell would read.
fn shell_escaped(text: &str) -> String {
    const SPECIAL: &[char] =
        &['"', '\'', '\t', ';', '`', '>', '<', '|', '#', '*', '[', ']', '{', '}', '&', '$', '!', ':', '(', ')'];
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The agents a command goes to: the items of `selection` (id, status, node, version), and the
/// ids asked for that do not exist.
async fn targets(
    node: &NodeHandle,
    selection: &Selection,
    asked: &[u32],
) -> Result<(Vec<Value>, Vec<u32>), HttpResponse> {
    let (_, items) = select_agents(node, selection).await.map_err(|e| {
        HttpResponse::ServiceUnavailable().json(error_body(503, &format!("the agent registry is unavailable: {e}")))
    })?;
    let found: Vec<u32> = items
        .iter()
        .filter_map(|a| a.get("id").and_then(Value::as_str).and_then(wazuh_cluster_actors::registry::parse_id))
        .collect();
    let missing = asked.iter().copied().filter(|id| !found.contains(id)).collect();
    Ok((items, missing))
}

/// The messages of the active agents among `items`, made by `message(json, node)`; the others in
/// `failed`; then each sent through its node. Wazuh's envelope with `messages` (all, some, none).
async fn send(
    node: &NodeHandle,
    req: &actix_web::HttpRequest,
    items: Vec<Value>,
    missing: Vec<u32>,
    message: impl Fn(bool, &str) -> String,
    messages: [&str; 3],
) -> HttpResponse {
    let mut failed: Vec<(u32, (u16, String))> =
        missing.into_iter().map(|id| (id, (1701, "Agent does not exist".to_string()))).collect();
    let mut to_send = Vec::new();
    for a in &items {
        let Some(id) = a.get("id").and_then(Value::as_str).and_then(wazuh_cluster_actors::registry::parse_id) else {
            continue;
        };
        let (status, holder) = (a.get("status").and_then(Value::as_str), a.get("node_name").and_then(Value::as_str));
        match (status, holder) {
            (Some("active"), Some(holder)) => {
                let json = takes_json(a.get("version").and_then(Value::as_str));
                to_send.push((id, holder.to_string(), message(json, holder)));
            }
            _ => failed.push((id, (1707, "Cannot send request, agent is not active".into()))),
        }
    }
    let mut affected = Vec::new();
    for (id, outcome) in node.command_agents(to_send).await {
        match outcome {
            Ok(()) => affected.push(id),
            Err(why) => failed.push((id, why)),
        }
    }
    affected.sort_unstable();
    // Wazuh groups the failed agents by error.
    let mut by_error: BTreeMap<(u16, String), Vec<String>> = BTreeMap::new();
    for (id, why) in failed {
        by_error.entry(why).or_default().push(fmt_id(id));
    }
    let failed: Vec<Value> = by_error
        .into_iter()
        .map(|((code, message), mut ids)| {
            ids.sort();
            serde_json::json!({ "error": { "code": code, "message": message }, "id": ids })
        })
        .collect();
    let [all, some, none] = messages;
    let message = if failed.is_empty() {
        all
    } else if affected.is_empty() {
        none
    } else {
        some
    };
    let affected: Vec<String> = affected.into_iter().map(fmt_id).collect();
    let mut body = bulk_envelope(affected, Vec::new(), message);
    let total_failed: usize = failed.iter().map(|f| f["id"].as_array().map_or(0, Vec::len)).sum();
    body["data"]["failed_items"] = Value::Array(failed);
    body["data"]["total_failed_items"] = total_failed.into();
    let pretty = req.query_string().split('&').any(|pair| pair == "pretty=true");
    agents::json_answer(&body, pretty)
}

const RESTART_MESSAGES: [&str; 3] = [
    "Restart command was sent to all agents",
    "Restart command was not sent to some agents",
    "Restart command was not sent to any agent",
];

/// The restart message for an agent that takes JSON or not.
fn restart_message(json: bool) -> String {
    format!("#!-execd {}{RESTART_SUFFIX}", if json { RESTART_JSON } else { RESTART_LEGACY })
}

/// `PUT /agents/restart[?agents_list=...]` (the query's parameters: `pretty`, `wait_for_complete`,
/// `agents_list`; absent: every agent).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `pretty` is read from the query string; `wait_for_complete` only accepted.
pub(super) struct CommandQuery {
    pretty: Option<bool>,
    wait_for_complete: Option<bool>,
    agents_list: Option<String>,
}

async fn restart_selected(
    node: &NodeHandle,
    req: &actix_web::HttpRequest,
    selection: Selection,
    asked: Vec<u32>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(req) {
        return refusal;
    }
    match targets(node, &selection, &asked).await {
        Ok((items, missing)) => {
            send(node, req, items, missing, |json, _| restart_message(json), RESTART_MESSAGES).await
        }
        Err(r) => r,
    }
}

pub(super) async fn restart_agents(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<CommandQuery>,
) -> HttpResponse {
    let ids = match agents_list(query.agents_list.as_deref(), ListRule::Optional) {
        Ok(AgentsList::Every) => Vec::new(),
        Ok(AgentsList::Ids(ids)) => ids,
        Err(why) => return bad_request(&why),
    };
    restart_selected(&node, &req, Selection::of_ids(ids.clone()), ids).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `wait_for_complete` is only accepted.
pub(super) struct PlainQuery {
    pretty: Option<bool>,
    wait_for_complete: Option<bool>,
}

pub(super) async fn restart_agent(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    id: web::Path<String>,
    _query: web::Query<PlainQuery>,
) -> HttpResponse {
    let Some(id) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    restart_selected(&node, &req, Selection::of_ids(vec![id]), vec![id]).await
}

pub(super) async fn restart_group(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    group: web::Path<String>,
    _query: web::Query<PlainQuery>,
) -> HttpResponse {
    restart_selected(&node, &req, Selection::of_group(group.into_inner()), Vec::new()).await
}

/// `PUT /agents/reconnect`'s parameters: Wazuh's, and `node` (this project's: only the agents
/// connected to that node).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `pretty` is read from the query string; `wait_for_complete` only accepted.
pub(super) struct ReconnectQuery {
    pretty: Option<bool>,
    wait_for_complete: Option<bool>,
    agents_list: Option<String>,
    node: Option<String>,
}

/// `PUT /agents/reconnect[?agents_list=001,002][&node=worker-1]`: `#!-force_reconnect` to each
/// active agent through the node that holds it; the agents in `affected_items` (Wazuh's shape),
/// the others failed with Wazuh's codes (1701, 1707).
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
        Err(why) => return bad_request(&why),
    };
    let (mut items, missing) = match targets(&node, &Selection::of_ids(ids.clone()), &ids).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Some(only) = &query.node {
        items.retain(|a| a.get("node_name").and_then(Value::as_str) == Some(only.as_str()));
    }
    // The moves this causes are taken as such, not as contested claims.
    node.release_claims(query.node.clone(), ids).await;
    let messages = [
        "Force reconnect command was sent to all agents",
        "Force reconnect command was not sent to some agents",
        "Force reconnect command was not sent to any agent",
    ];
    send(&node, &req, items, missing, |_, _| "#!-force_reconnect".to_string(), messages).await
}

/// `PUT /active-response`'s body (Wazuh's `ActiveResponseBody`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArBody {
    command: String,
    #[serde(default)]
    arguments: Vec<String>,
    alert: Option<Box<serde_json::value::RawValue>>,
}

/// The command names `etc/shared/ar.conf` defines (`name - executable - timeout` lines).
fn defined_commands(data_dir: &std::path::Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(data_dir.join("etc/shared/ar.conf")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split(" - ").next())
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
    )
}

/// `PUT /active-response[?agents_list=...]` with `{"command": ..., "arguments": [...], "alert": {...}}`:
/// the command to each agent (absent list: every agent). A command not starting with `!` must be
/// one `etc/shared/ar.conf` defines (Wazuh's 1652).
pub(super) async fn active_response(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    query: web::Query<CommandQuery>,
    body: web::Json<ArBody>,
) -> HttpResponse {
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let ArBody { command, arguments, alert } = body.into_inner();
    if command.is_empty() {
        return bad_request("Active response - Command not specified");
    }
    if !command.starts_with('!') && !defined_commands(&node.data_dir()).is_some_and(|c| c.contains(&command)) {
        return bad_request(&format!(
            "The command used is not defined in the configuration (etc/shared/ar.conf): {:?}",
            wazuh_cluster_protocol::agent::enrollment::printable(&command)
        ));
    }
    let alert = match alert.as_deref().map(|a| python_json(a.get())) {
        None => "{}".to_string(),
        Some(Ok(text)) => text,
        Some(Err(why)) => return bad_request(&format!("alert: {why}")),
    };
    let ids = match agents_list(query.agents_list.as_deref(), ListRule::Optional) {
        Ok(AgentsList::Every) => Vec::new(),
        Ok(AgentsList::Ids(ids)) => ids,
        Err(why) => return bad_request(&why),
    };
    let (items, missing) = match targets(&node, &Selection::of_ids(ids.clone()), &ids).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let message =
        |json: bool, holder: &str| format!("#!-execd {}", ar_message(json, holder, &command, &arguments, &alert));
    let messages = [
        "AR command was sent to all agents",
        "AR command was not sent to some agents",
        "AR command was not sent to any agent",
    ];
    send(&node, &req, items, missing, message, messages).await
}

/// The components Wazuh's API asks an agent about (its `component` parameter).
const COMPONENTS: &[&str] = &[
    "agent",
    "agentless",
    "analysis",
    "auth",
    "com",
    "csyslog",
    "integrator",
    "logcollector",
    "mail",
    "monitor",
    "request",
    "syscheck",
    "wazuh-db",
    "wmodules",
];

/// `GET /agents/{id}/config/{component}/{configuration}`: the agent's active configuration, asked
/// of the agent through the node that holds its connection as remoted's request socket asks it
/// (`#!-req <counter> <component> getconfig <configuration>`), answered in Wazuh's shape
/// (`{"data": {...}}`). Errors as Wazuh's: 404 (1701) no such agent, 400 otherwise (1101 no such
/// component, 1740 not active, 1116 or 1117 the agent's own refusal).
pub(super) async fn agent_config(
    node: web::Data<NodeHandle>,
    path: web::Path<(String, String, String)>,
    query: web::Query<PlainQuery>,
) -> HttpResponse {
    let (id, component, configuration) = path.into_inner();
    let Some(num) = wazuh_cluster_actors::registry::parse_id(&id) else { return bad_id(&id) };
    if !COMPONENTS.contains(&component.as_str()) {
        return bad_request(&format!(
            "Requested component does not exist. Valid components: {}",
            COMPONENTS.join(", ")
        ));
    }
    let printable = |t: &str| t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if configuration.is_empty() || !printable(&configuration) {
        return bad_request("Requested component configuration does not exist");
    }
    let (items, _) = match targets(&node, &Selection::of_ids(vec![num]), &[num]).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(agent) = items.first() else {
        return HttpResponse::NotFound().json(error_body(404, "Agent does not exist"));
    };
    let (status, holder) =
        (agent.get("status").and_then(Value::as_str), agent.get("node_name").and_then(Value::as_str));
    let (Some("active"), Some(holder)) = (status, holder) else {
        return bad_request("Action only available for active agents");
    };
    let answer = node.ask_agent(num, holder, format!("{component} getconfig {configuration}")).await;
    match answer.as_deref().map(|a| a.split_once(' ').unwrap_or((a, ""))).map_err(String::as_str) {
        Ok(("ok", json)) => match serde_json::from_str::<Value>(json) {
            Ok(data) => {
                agents::json_answer(&serde_json::json!({ "data": data, "error": 0 }), query.pretty.unwrap_or(false))
            }
            Err(e) => bad_request(&format!("the agent's answer is not JSON: {e}")),
        },
        Ok((_, why)) | Err(why) => {
            let unreachable = why.contains("No such file or directory") || why.contains("Cannot send request");
            let what = if unreachable {
                "Unable to connect with component. The component might be disabled."
            } else {
                "Requested component configuration does not exist"
            };
            let why = wazuh_cluster_protocol::agent::enrollment::printable(why);
            bad_request(&format!("{what} ({component}:{configuration}: {why})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_as_wazuhs_framework_writes_them() {
        assert_eq!(
            restart_message(true),
            "#!-execd {\"version\": 1, \"origin\": {\"module\": \"framework\"}, \"command\": \"restart-wazuh0\", \"parameters\": {\"extra_args\": [], \"alert\": {}}} - null (from_the_server) (no_rule_id)"
        );
        assert_eq!(restart_message(false), "#!-execd restart-ossec0 - null (from_the_server) (no_rule_id)");
        let alert = python_json(r#"{"data":{"srcip":"10.0.0.9","é":[1,2.5,true,null]}}"#).unwrap_or_default();
        assert_eq!(
            alert, r#"{"data": {"srcip": "10.0.0.9", "\u00e9": [1, 2.5, true, null]}}"#,
            "order kept, ASCII only"
        );
        assert_eq!(
            ar_message(true, "worker-2", "firewall-drop0", &["-".into(), "x y".into()], "{}"),
            r#"{"version": 1, "origin": {"name": "worker-2", "module": "API"}, "command": "firewall-drop0", "parameters": {"extra_args": ["-", "x y"], "alert": {}}}"#
        );
        assert_eq!(ar_message(false, "w", "firewall-drop0", &[], "{}"), "firewall-drop0 - -");
        assert_eq!(ar_message(false, "w", "!x.sh", &["a;b".into()], "{}"), "!x.sh a\\;b");
        assert!(takes_json(Some("Wazuh v4.2.0")) && takes_json(Some("Wazuh v4.14.7")) && takes_json(None));
        assert!(!takes_json(Some("Wazuh v4.1.5")) && !takes_json(Some("v3.13.3")));
        assert!(python_json("{").is_err());
    }
}
