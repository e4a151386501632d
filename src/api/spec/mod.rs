//! The API's endpoints as one table: the server registers its routes from it, and the OpenAPI 3
//! document (`GET /api/openapi.json`) is generated from it, so the document covers every endpoint
//! by construction.

use super::*;
use actix_web::Route;

/// Where a parameter goes.
#[derive(Clone, Copy)]
pub enum In {
    Path,
    Query,
}

/// One parameter: its name, where, its JSON type and a description.
#[derive(Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub at: In,
    /// `string`, `integer` or `boolean`.
    pub kind: &'static str,
    pub doc: &'static str,
}

const fn path(name: &'static str, doc: &'static str) -> Param {
    Param { name, at: In::Path, kind: "string", doc }
}
const fn query(name: &'static str, kind: &'static str, doc: &'static str) -> Param {
    Param { name, at: In::Query, kind, doc }
}

/// A `&'static [Param]` of const parameters.
macro_rules! params {
    ($($p:expr),* $(,)?) => {{
        const P: &[Param] = &[$($p),*];
        P
    }};
}

/// What a request carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// A JSON object with these string properties, all required.
    Json(&'static [&'static str]),
    /// A file's text.
    Text,
}

/// One endpoint.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    pub body: Body,
    /// `false`: answered without credentials.
    pub auth: bool,
    /// Whether a 200 may be plain text (`?raw=true`, Prometheus).
    pub text: bool,
    pub route: fn() -> Route,
}

mod document;
mod params;

pub use document::{document, openapi};
use params::*;

/// Every endpoint, in the order the server matches them (fixed paths before `{id}`).
pub fn endpoints() -> Vec<Endpoint> {
    let e = |method, path, summary, params, body, route| Endpoint {
        method,
        path,
        summary,
        params,
        body,
        auth: true,
        text: false,
        route,
    };
    let mut v = vec![
        Endpoint {
            auth: false,
            ..e(
                "post",
                AUTHENTICATE,
                "A token for an API user (HTTP Basic)",
                params![query("raw", "boolean", "the bare token")],
                Body::None,
                || web::post().to(authenticate),
            )
        },
        e("delete", "/agents", "Delete agents", DELETE_AGENTS, Body::None, || web::delete().to(delete_agents)),
        e(
            "delete",
            "/agents/group",
            "Remove agents from a group",
            params![
                query("agents_list", "string", "comma-separated ids, or all"),
                query("group_id", "string", "the group")
            ],
            Body::None,
            || web::delete().to(unassign_many),
        ),
        e("put", "/agents/restart", "Restart agents (through the nodes that hold them)", COMMAND, Body::None, || {
            web::put().to(commands::restart_agents)
        }),
        e(
            "put",
            "/agents/group/{group_id}/restart",
            "Restart a group's agents",
            params![
                path("group_id", "the group"),
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted")
            ],
            Body::None,
            || web::put().to(commands::restart_group),
        ),
        e(
            "put",
            "/active-response",
            "Run an active-response command on agents",
            COMMAND,
            Body::Json(&["command"]),
            || web::put().to(commands::active_response),
        ),
        e("put", "/agents/group", "Assign agents to a group (Wazuh's form)", BULK_GROUP, Body::None, || {
            web::put().to(assign_many_wazuh)
        }),
        e(
            "put",
            "/agents/group/{group_id}",
            "Assign agents to a group",
            params![path("group_id", "the group"), query("agents_list", "string", "comma-separated ids, or all")],
            Body::None,
            || web::put().to(assign_many),
        ),
        e(
            "delete",
            "/groups",
            "Delete groups",
            params![query("groups_list", "string", "comma-separated group names")],
            Body::None,
            || web::delete().to(delete_groups),
        ),
        e("get", "/groups/{group_id}/agents", "A group's agents", GROUP_AGENTS, Body::None, || {
            web::get().to(group_agents)
        }),
        e(
            "get",
            "/groups/{group_id}/files",
            "A group's files with their MD5",
            params![path("group_id", "the group")],
            Body::None,
            || web::get().to(group_files),
        ),
        Endpoint {
            text: true,
            ..e(
                "get",
                "/groups/{group_id}/files/{file_name}",
                "One file of a group",
                params![
                    path("group_id", "the group"),
                    path("file_name", "the file"),
                    query("raw", "boolean", "the bare file")
                ],
                Body::None,
                || web::get().to(group_file),
            )
        },
        e(
            "get",
            "/groups/{group_id}/configuration",
            "A group's agent.conf as JSON (its filters and sections)",
            params![
                path("group_id", "the group"),
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted"),
                query("offset", "integer", "first item (0)"),
                query("limit", "integer", "items per page (500, at most 100000)")
            ],
            Body::None,
            || web::get().to(get_group_configuration),
        ),
        e(
            "put",
            "/groups/{group_id}/configuration",
            "A group's agent.conf",
            params![path("group_id", "the group")],
            Body::Text,
            || web::put().to(put_group_configuration),
        ),
        e("get", "/", "The API's information", params![], Body::None, || web::get().to(api_info)),
        e("get", "/manager/info", "This node's information", params![], Body::None, || web::get().to(manager_info)),
        e("get", "/manager/status", "The state of the Wazuh daemons whose work this node does", PLAIN, Body::None, || {
            web::get().to(manager::status)
        }),
        e("get", "/manager/logs", "This node's recent log lines", LOGS, Body::None, || web::get().to(manager::logs)),
        e("get", "/manager/stats", "analysisd's totals of one day, by hour", STATS, Body::None, || {
            web::get().to(stats::day)
        }),
        e("get", "/manager/stats/hourly", "analysisd's alerts per hour, averaged", PLAIN, Body::None, || {
            web::get().to(stats::hourly)
        }),
        e("get", "/manager/stats/weekly", "analysisd's alerts per hour, by weekday", PLAIN, Body::None, || {
            web::get().to(stats::weekly)
        }),
        e("get", "/manager/configuration/validation", "Whether this node's ossec.conf reads", PLAIN, Body::None, || {
            web::get().to(manager::validation)
        }),
        e(
            "get",
            "/cluster/configuration/validation",
            "Whether each node's ossec.conf reads",
            params![
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted"),
                query("nodes_list", "string", "comma-separated node names")
            ],
            Body::None,
            || web::get().to(manager::cluster_validation),
        ),
        Endpoint { text: true, ..e(
            "get",
            "/manager/configuration",
            "The ossec.conf of the Wazuh installation this node works in",
            params![
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted"),
                query("raw", "boolean", "the bare file"),
                query("section", "string", "one section (global, remote, auth...)"),
                query("field", "string", "one field of the section"),
                query("distinct", "boolean", "accepted (one item)")
            ],
            Body::None,
            || web::get().to(manager::configuration),
        ) },
        e("put", "/manager/drain", "This worker drains its agents and stops (as on SIGTERM)", params![], Body::None, || {
            web::put().to(drain)
        }),
        e("put", "/cluster/{node_id}/drain", "A worker drains its agents and stops", params![path("node_id", "the worker's name")], Body::None, || {
            web::put().to(node_drain)
        }),
        e("get", "/cluster/balance", "Active agents per worker and what the rebalancer does", PLAIN, Body::None, || {
            web::get().to(cluster_balance)
        }),
        e("get", "/cluster/status", "Whether clustering is on", params![], Body::None, || {
            web::get().to(cluster_status)
        }),
        e("get", "/cluster/local/config", "This node's cluster settings (never the key)", PLAIN, Body::None, || {
            web::get().to(cluster_local_config)
        }),
        e(
            "get",
            "/cluster/ruleset/synchronization",
            "Whether each node's files are the master's",
            params![
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted"),
                query("nodes_list", "string", "comma-separated node names")
            ],
            Body::None,
            || web::get().to(ruleset_synchronization),
        ),
        e("get", "/cluster/local/info", "This node's name, cluster and type", params![], Body::None, || {
            web::get().to(cluster_local_info)
        }),
        e(
            "get",
            "/cluster/{node_id}/status",
            "A node's daemons (its GET /manager/status)",
            params![path("node_id", "the node's name"), query("pretty", "boolean", "indented JSON"), query("wait_for_complete", "boolean", "accepted")],
            Body::None,
            || web::get().to(node_read),
        ),
        e(
            "get",
            "/cluster/{node_id}/info",
            "A node's information (its GET /manager/info)",
            params![path("node_id", "the node's name"), query("pretty", "boolean", "indented JSON"), query("wait_for_complete", "boolean", "accepted")],
            Body::None,
            || web::get().to(node_read),
        ),
        Endpoint {
            text: true,
            ..e(
                "get",
                "/cluster/{node_id}/configuration",
                "A node's ossec.conf (its GET /manager/configuration)",
                params![
                    path("node_id", "the node's name"),
                    query("pretty", "boolean", "indented JSON"),
                    query("wait_for_complete", "boolean", "accepted"),
                    query("raw", "boolean", "the bare file"),
                    query("section", "string", "one section"),
                    query("field", "string", "one field of the section"),
                    query("distinct", "boolean", "accepted (one item)")
                ],
                Body::None,
                || web::get().to(node_read),
            )
        },
        e("get", "/cluster/{node_id}/logs", "A node's recent log lines (its GET /manager/logs)", NODE_LOGS, Body::None, || {
            web::get().to(node_read)
        }),
        e("get", "/cluster/{node_id}/stats", "A node's totals of one day (its GET /manager/stats)", NODE_STATS, Body::None, || {
            web::get().to(node_read)
        }),
        e("get", "/cluster/{node_id}/stats/hourly", "A node's hourly averages", NODE_PLAIN, Body::None, || {
            web::get().to(node_read)
        }),
        e("get", "/cluster/{node_id}/stats/weekly", "A node's weekday averages", NODE_PLAIN, Body::None, || {
            web::get().to(node_read)
        }),
        e(
            "post",
            "/cluster/join-tokens",
            "A join token for new workers (master)",
            params![query("ttl", "integer", "seconds valid"), query("uses", "integer", "joins allowed")],
            Body::None,
            || web::post().to(join_token),
        ),
        e(
            "put",
            "/cluster/analysisd/reload",
            "Every node's analysisd reloads the ruleset (master)",
            params![],
            Body::None,
            || web::put().to(reload_analysisd),
        ),
        e(
            "post",
            "/cluster/nodes/{name}/revoke",
            "Revoke a worker's identity (master)",
            params![path("name", "the worker")],
            Body::None,
            || web::post().to(revoke),
        ),
        e("get", "/cluster/nodes", "The cluster's nodes", params![], Body::None, || web::get().to(nodes)),
        e(
            "get",
            "/cluster/healthcheck",
            "Every node's synchronizations (Wazuh's shape)",
            params![],
            Body::None,
            || web::get().to(healthcheck),
        ),
        e("get", "/cluster/actors", "Every node's actors", params![], Body::None, || web::get().to(actors)),
        Endpoint {
            auth: false,
            ..e("get", "/health", "Whether this node serves", params![], Body::None, || web::get().to(health))
        },
        Endpoint {
            text: true,
            ..e("get", "/metrics", "Prometheus metrics", params![], Body::None, || web::get().to(metrics))
        },
        e("get", "/agents", "Agents, one page", AGENT_FILTERS, Body::None, || web::get().to(agents)),
        e("post", "/agents", "Register an agent ({\"name\": ..., \"ip\": ...})", PLAIN, Body::Json(&["name"]), || {
            web::post().to(add_agent)
        }),
        e(
            "post",
            "/agents/insert",
            "Register an agent with its id and key ({\"name\": ..., \"ip\", \"id\", \"key\"})",
            PLAIN,
            Body::Json(&["name"]),
            || web::post().to(insert_agent),
        ),
        e(
            "put",
            "/agents/reconnect",
            "Agents reconnect (#!-force_reconnect)",
            params![
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted"),
                query("agents_list", "string", "comma-separated agent ids (absent: every agent)"),
                query("node", "string", "only agents on this node (this API's)")
            ],
            Body::None,
            || web::put().to(commands::reconnect),
        ),
        e("get", "/agents/outdated", "Agents older than this manager's Wazuh version", PAGE, Body::None, || {
            web::get().to(overview::agents_outdated)
        }),
        e("get", "/agents/no_group", "Agents in no group", PAGE, Body::None, || {
            web::get().to(overview::agents_no_group)
        }),
        e("get", "/agents/summary/os", "The agents' platforms", PLAIN, Body::None, || {
            web::get().to(overview::summary_os)
        }),
        e("get", "/agents/stats/distinct", "Agents per combination of fields", DISTINCT, Body::None, || {
            web::get().to(overview::stats_distinct)
        }),
        e("get", "/overview/agents", "Agents per node, group, system and version", PLAIN, Body::None, || {
            web::get().to(overview::overview_agents)
        }),
        e(
            "get",
            "/agents/{id}/group/is_sync",
            "Whether the agent has its groups' configuration",
            params![
                path("id", "the agent's id"),
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted")
            ],
            Body::None,
            || web::get().to(overview::is_sync),
        ),
        e("get", "/agents/summary/status", "Agents by status and node", params![], Body::None, || {
            web::get().to(agents_summary)
        }),
        e(
            "get",
            "/agents/{id}/key",
            "One agent with its key",
            params![path("id", "the agent's id")],
            Body::None,
            || web::get().to(get_agent_key),
        ),
        e("get", "/agents/{id}", "One agent", params![path("id", "the agent's id")], Body::None, || {
            web::get().to(get_agent)
        }),
        e(
            "put",
            "/agents/{id}/restart",
            "Restart an agent",
            params![
                path("id", "the agent's id"),
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted")
            ],
            Body::None,
            || web::put().to(commands::restart_agent),
        ),
        e(
            "get",
            "/agents/{id}/config/{component}/{configuration}",
            "An agent's active configuration, asked of the agent",
            params![
                path("id", "the agent's id"),
                path("component", "agent, agentless, analysis, auth, com, csyslog, integrator, logcollector, mail, monitor, request, syscheck, wazuh-db, wmodules"),
                path("configuration", "the configuration section (client, localfile, syscheck...)"),
                query("pretty", "boolean", "indented JSON"),
                query("wait_for_complete", "boolean", "accepted")
            ],
            Body::None,
            || web::get().to(commands::agent_config),
        ),
        e("delete", "/agents/{id}", "Delete an agent", params![path("id", "the agent's id")], Body::None, || {
            web::delete().to(delete_agent)
        }),
        e(
            "put",
            "/agents/{id}/group/{group}",
            "Assign an agent to a group",
            params![path("id", "the agent's id"), path("group", "the group")],
            Body::None,
            || web::put().to(assign),
        ),
        e(
            "delete",
            "/agents/{id}/group/{group}",
            "Remove an agent from a group",
            params![path("id", "the agent's id"), path("group", "the group")],
            Body::None,
            || web::delete().to(unassign),
        ),
        e("get", "/groups", "Groups with their agent counts and sums", GROUPS, Body::None, || {
            web::get().to(list_groups)
        }),
        e("post", "/groups", "Create a group ({\"group_id\": ...})", params![], Body::Json(&["group_id"]), || {
            web::post().to(create_group)
        }),
        e("delete", "/groups/{group}", "Delete a group", params![path("group", "the group")], Body::None, || {
            web::delete().to(delete_group)
        }),
        e("get", "/api/openapi.json", "This document", params![], Body::None, || web::get().to(openapi)),
        e(
            "delete",
            AUTHENTICATE,
            "Sign out: the caller's tokens are refused from now on, on every node",
            params![],
            Body::None,
            || web::delete().to(security::sign_out),
        ),
        e(
            "put",
            "/security/user/revoke",
            "Every user's tokens so far are refused from now on",
            params![],
            Body::None,
            || web::put().to(security::revoke_all),
        ),
        e("get", "/security/users/me", "The calling user", params![], Body::None, || web::get().to(security::me)),
        e(
            "get",
            "/security/users",
            "The API's users",
            params![query("user_ids", "string", "comma-separated user ids, or all")],
            Body::None,
            || web::get().to(security::list_users),
        ),
        e(
            "post",
            "/security/users",
            "Create a user (readonly until given a role)",
            params![],
            Body::Json(&["username", "password"]),
            || web::post().to(security::create_user),
        ),
        e(
            "delete",
            "/security/users",
            "Delete users (their tokens are refused at once)",
            params![query("user_ids", "string", "comma-separated user ids, or all")],
            Body::None,
            || web::delete().to(security::delete_users),
        ),
        e(
            "put",
            "/security/users/{user_id}",
            "A user's new password (its tokens so far are revoked)",
            params![Param { name: "user_id", at: In::Path, kind: "integer", doc: "the user's id" }],
            Body::Json(&["password"]),
            || web::put().to(security::update_user),
        ),
        e(
            "put",
            "/security/users/{user_id}/revoke",
            "Revoke a user's tokens so far",
            params![Param { name: "user_id", at: In::Path, kind: "integer", doc: "the user's id" }],
            Body::None,
            || web::put().to(security::revoke_user),
        ),
        e(
            "post",
            "/security/users/{user_id}/roles",
            "Give a user a role (1 administrator, 2 readonly)",
            params![
                Param { name: "user_id", at: In::Path, kind: "integer", doc: "the user's id" },
                query("role_ids", "string", "1 (administrator) or 2 (readonly)")
            ],
            Body::None,
            || web::post().to(security::add_roles),
        ),
        e(
            "delete",
            "/security/users/{user_id}/roles",
            "Take a role from a user (without administrator it is readonly)",
            params![
                Param { name: "user_id", at: In::Path, kind: "integer", doc: "the user's id" },
                query("role_ids", "string", "1 (administrator) or 2 (readonly)")
            ],
            Body::None,
            || web::delete().to(security::remove_roles),
        ),
    ];
    v.extend([
        e("get", "/rules/files", "The rule files analysisd loads", LISTING, Body::None, || {
            web::get().to(listing::rule_files)
        }),
        e("get", "/decoders/files", "The decoder files analysisd loads", LISTING, Body::None, || {
            web::get().to(listing::decoder_files)
        }),
        e("get", "/lists/files", "The CDB list files", LISTING_PATHS, Body::None, || {
            web::get().to(listing::list_files)
        }),
        e("get", "/lists", "The CDB lists with their items", LISTS, Body::None, || web::get().to(listing::lists)),
        e("get", "/rules", "The rules analysisd loads, one item each", RULES, Body::None, || {
            web::get().to(rules::rules)
        }),
        e("get", "/decoders", "The decoders analysisd loads, one item each", DECODERS, Body::None, || {
            web::get().to(rules::decoders)
        }),
    ]);
    for p in ["/rules/files/{name}", "/decoders/files/{name}", "/lists/files/{name}"] {
        v.push(Endpoint {
            text: true,
            ..e("get", p, "A ruleset file as this node has it", FILE_PARAMS, Body::None, || {
                web::get().to(get_ruleset_file)
            })
        });
        v.push(e(
            "put",
            p,
            "Write a ruleset file (on the master; file sync spreads it)",
            FILE_PARAMS,
            Body::Text,
            || web::put().to(put_ruleset_file),
        ));
        v.push(e("delete", p, "Delete a ruleset file", FILE_NAME, Body::None, || {
            web::delete().to(delete_ruleset_file)
        }));
    }
    v
}
