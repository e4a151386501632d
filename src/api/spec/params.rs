//! The parameter lists the endpoints share.

use super::*;

/// A `&'static [Param]` of `head`, the equalities `GET /agents` and `DELETE /agents` share
/// (Wazuh's), then `tail`.
macro_rules! with_agent_equalities {
    ([$($head:expr),* $(,)?], [$($tail:expr),* $(,)?]) => {{
        const P: &[Param] = &[
            $($head,)*
            query("os.platform", "string", "the agents' OS platform (ubuntu, windows...)"),
            query("os.version", "string", "the agents' OS version"),
            query("os.name", "string", "the agents' OS name"),
            query("manager", "string", "the manager (node) the agents report to"),
            query("version", "string", "the agents' version (Wazuh v4.14.7 or 4.14.7)"),
            query("group", "string", "a group the agents belong to"),
            query("node_name", "string", "the node the agents report to"),
            query("name", "string", "the agents' name"),
            query("ip", "string", "the address the agents report from"),
            query("registerIP", "string", "the address the agents registered with"),
            $($tail,)*
        ];
        P
    }};
}

pub(super) const AGENT_FILTERS: &[Param] = with_agent_equalities!(
    [
        query("pretty", "boolean", "indented JSON"),
        query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
        query("agents_list", "string", "comma-separated agent ids (absent: every agent)"),
        query("offset", "integer", "first item (0)"),
        query("limit", "integer", "items per page (500, at most 100000)"),
        query("select", "string", "comma-separated fields to return, dotted for nested ones (id always)"),
        query("sort", "string", "+field or -field, comma-separated, dotted for nested ones"),
        query("search", "string", "text in any field (-text: not in any)"),
        query("status", "string", "comma-separated: active, pending, never_connected, disconnected"),
        query("q", "string", "Wazuh's query: field=value, !=, <, >, ~ joined by ; (and) and , (or), in parentheses"),
        query(
            "older_than",
            "string",
            "last keep-alive (never connected: registration) older than: 7d, 12h, 30m, 10s, 10"
        ),
    ],
    [
        query("group_config_status", "string", "synced or not synced"),
        query("distinct", "boolean", "distinct items only"),
    ]
);

pub(super) const DELETE_AGENTS: &[Param] = with_agent_equalities!(
    [
        query("pretty", "boolean", "indented JSON"),
        query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
        query("agents_list", "string", "comma-separated ids, or all (required)"),
        query("purge", "boolean", "accepted (a deleted agent's key is always removed)"),
        query("status", "string", "comma-separated statuses, or all (required)"),
        query("older_than", "string", "only agents not heard from for this long (default 7d; 0s: any)"),
        query("q", "string", "Wazuh's query (as GET /agents)"),
    ],
    []
);

pub(super) const PLAIN: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
];

pub(super) const PAGE: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("sort", "string", "+field or -field, comma-separated, dotted for nested ones"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("select", "string", "comma-separated fields to return, dotted for nested ones (id always)"),
    query("q", "string", "Wazuh's query (as GET /agents)"),
];

pub(super) const DISTINCT: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("fields", "string", "comma-separated fields, dotted for nested ones (required)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("sort", "string", "+field or -field (the fields, or count)"),
    query("search", "string", "text in any field of the agents (-text: not in any)"),
    query("q", "string", "Wazuh's query over the agents (as GET /agents)"),
];

pub(super) const GROUPS: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("groups_list", "string", "comma-separated group names"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("sort", "string", "+field or -field: name, count, mergedSum, configSum"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("hash", "string", "md5 (the only one served)"),
    query("q", "string", "Wazuh's query over name, count, mergedSum, configSum"),
    query("select", "string", "comma-separated fields (name always)"),
    query("distinct", "boolean", "distinct items only"),
];

pub(super) const COMMAND: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("agents_list", "string", "comma-separated agent ids (absent: every agent)"),
];

pub(super) const BULK_GROUP: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("agents_list", "string", "comma-separated agent ids (absent: every agent)"),
    query("group_id", "string", "the group (required)"),
    query("force_single_group", "boolean", "accepted (agents keep their other groups)"),
];

pub(super) const FILE_PARAMS: &[Param] = &[
    path("name", "the file's name"),
    query("raw", "boolean", "the bare file"),
    query("overwrite", "boolean", "replace an existing file"),
];
pub(super) const FILE_NAME: &[Param] = &[path("name", "the file's name")];
pub(super) const GROUP_AGENTS: &[Param] = &[
    path("group_id", "the group"),
    query("pretty", "boolean", "indented JSON"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("sort", "string", "+field or -field, comma-separated, dotted for nested ones"),
    query("status", "string", "comma-separated: active, pending, never_connected, disconnected"),
    query("node_name", "string", "the node the agents report to"),
    query("agents_list", "string", "comma-separated agent ids (absent: every agent)"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("select", "string", "comma-separated fields to return, dotted for nested ones (id always)"),
    query("q", "string", "Wazuh's query (as GET /agents)"),
    query("distinct", "boolean", "distinct items only"),
];

pub(super) const LISTING: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("sort", "string", "+field or -field: filename, relative_dirname, status"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("relative_dirname", "string", "only files in this directory"),
    query("filename", "string", "only this file"),
    query("status", "string", "enabled, disabled or all (rule and decoder files)"),
    query("q", "string", "Wazuh's query over the fields"),
    query("select", "string", "comma-separated fields (filename always)"),
    query("distinct", "boolean", "distinct items only"),
];

pub(super) const LISTING_PATHS: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("sort", "string", "+field or -field: filename, relative_dirname"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("relative_dirname", "string", "only files in this directory"),
    query("filename", "string", "only this file"),
];

pub(super) const LISTS: &[Param] = &[
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("select", "string", "comma-separated fields (filename always)"),
    query("sort", "string", "+field or -field: filename, relative_dirname"),
    query("search", "string", "text in any field, the items too (-text: not in any)"),
    query("relative_dirname", "string", "only lists in this directory"),
    query("filename", "string", "only this list"),
    query("q", "string", "Wazuh's query over filename and relative_dirname"),
    query("distinct", "boolean", "distinct items only"),
];

pub(super) const RULES: &[Param] = &[
    query("rule_ids", "string", "comma-separated rule ids"),
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("select", "string", "comma-separated fields (id always)"),
    query("sort", "string", "+field or -field"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("q", "string", "Wazuh's query over the rules' fields"),
    query("status", "string", "enabled, disabled or all"),
    query("group", "string", "rules in this group"),
    query("level", "string", "a level (5) or a range (2-7)"),
    query("filename", "string", "rules of this file"),
    query("relative_dirname", "string", "rules of files in this directory"),
    query("pci_dss", "string", "rules with this PCI DSS requirement"),
    query("gdpr", "string", "rules with this GDPR requirement"),
    query("gpg13", "string", "rules with this GPG13 requirement"),
    query("hipaa", "string", "rules with this HIPAA requirement"),
    query("nist-800-53", "string", "rules with this NIST 800-53 requirement"),
    query("tsc", "string", "rules with this TSC requirement"),
    query("mitre", "string", "rules with this MITRE technique"),
    query("distinct", "boolean", "distinct items only"),
];

pub(super) const DECODERS: &[Param] = &[
    query("decoder_names", "string", "comma-separated decoder names"),
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("select", "string", "comma-separated fields (filename always)"),
    query("sort", "string", "+field or -field"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("q", "string", "Wazuh's query over the decoders' fields"),
    query("filename", "string", "decoders of this file"),
    query("relative_dirname", "string", "decoders of files in this directory"),
    query("status", "string", "enabled, disabled or all"),
    query("distinct", "boolean", "distinct items only"),
];

/// The parameters of a node's log lines, after `head`.
macro_rules! logs_params {
    ($($head:expr),* $(,)?) => {{
        const P: &[Param] = &[
            $($head,)*
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted (answers are always complete)"),
    query("offset", "integer", "first item (0)"),
    query("limit", "integer", "items per page (500, at most 100000)"),
    query("sort", "string", "+field or -field: timestamp (newest first unless told), tag, level, description"),
    query("search", "string", "text in any field (-text: not in any)"),
    query("tag", "string", "lines of this tag (the module that wrote them)"),
    query("level", "string", "critical, debug, debug2, error, info or warning"),
    query("q", "string", "Wazuh's query over timestamp, tag, level, description"),
    query("select", "string", "comma-separated fields (timestamp always)"),
    query("distinct", "boolean", "distinct items only"),
        ];
        P
    }};
}

pub(super) const LOGS: &[Param] = logs_params!();

pub(super) const NODE_LOGS: &[Param] = logs_params!(path("node_id", "the node's name"));

/// `GET /manager/stats`.
pub(super) const STATS: &[Param] = params![
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted"),
    query("date", "string", "the day (YYYY-MM-DD); today when absent")
];
/// `GET /cluster/{node_id}/stats`.
pub(super) const NODE_STATS: &[Param] = params![
    path("node_id", "the node's name"),
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted"),
    query("date", "string", "the day (YYYY-MM-DD); today when absent")
];
/// A node's read with no parameter of its own.
pub(super) const NODE_PLAIN: &[Param] = params![
    path("node_id", "the node's name"),
    query("pretty", "boolean", "indented JSON"),
    query("wait_for_complete", "boolean", "accepted")
];
