//! Which agents a request names, with every filter of Wazuh's `GET /agents` (and of the bulk
//! `DELETE /agents`): a status list, `older_than`, the `os.*`, `version`, `ip`, `registerIP`,
//! `manager`, `name`, `group`, `node_name` and `group_config_status` equalities, `q` (see
//! [`super::wql`]), `search` (`-` negates), then `sort`, `distinct`, `select`, `offset`, `limit`.
//!
//! A page with no filter SQLite cannot apply is read from SQLite a page at a time; any other reads
//! the agents the SQL part leaves and filters them here, on the items as the API shows them, so a
//! filter means the same whatever the path.

use super::wql;
use super::*;
use serde_json::Value;

/// The fields of an agent that `q`, `sort` and `select` take (Wazuh's names).
pub(super) const AGENT_FIELDS: &[&str] = &[
    "id",
    "name",
    "ip",
    "registerIP",
    "status",
    "status_code",
    "version",
    "node_name",
    "manager",
    "group",
    "group_config_status",
    "mergedSum",
    "configSum",
    "dateAdd",
    "lastKeepAlive",
    "os.arch",
    "os.codename",
    "os.major",
    "os.minor",
    "os.name",
    "os.platform",
    "os.uname",
    "os.version",
];

/// The statuses an agent can have (Wazuh's).
const STATUSES: &[&str] = &["active", "pending", "never_connected", "disconnected"];

/// The parameters of `GET /agents` and of the bulk `DELETE /agents`: every one of Wazuh's
/// specification for either; any other is a 400 naming it, and so is one of the other operation's
/// (see [`Selection::of_list`], [`Selection::of_deletion`]).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentsParams {
    /// Indented JSON.
    pub pretty: Option<bool>,
    /// Accepted for Wazuh's clients: every answer is complete.
    #[allow(dead_code)] // Read only to be accepted.
    pub wait_for_complete: Option<bool>,
    pub agents_list: Option<String>,
    pub offset: Option<u64>,
    pub limit: Option<u64>,
    pub select: Option<String>,
    pub sort: Option<String>,
    pub search: Option<String>,
    pub status: Option<String>,
    pub q: Option<String>,
    pub older_than: Option<String>,
    #[serde(rename = "os.platform")]
    pub os_platform: Option<String>,
    #[serde(rename = "os.version")]
    pub os_version: Option<String>,
    #[serde(rename = "os.name")]
    pub os_name: Option<String>,
    pub manager: Option<String>,
    pub version: Option<String>,
    pub group: Option<String>,
    pub node_name: Option<String>,
    pub name: Option<String>,
    pub ip: Option<String>,
    #[serde(rename = "registerIP")]
    pub register_ip: Option<String>,
    pub group_config_status: Option<String>,
    pub distinct: Option<bool>,
    /// No list carries keys: refused with a pointer to `GET /agents/{id}/key`.
    pub keys: Option<String>,
    /// `DELETE` only; accepted: a deleted agent's key and records are always removed.
    pub purge: Option<bool>,
}

impl AgentsParams {
    /// The named equalities both operations take (Wazuh's names), taken out.
    fn equalities(&mut self) -> Vec<(&'static str, String)> {
        [
            ("os.platform", self.os_platform.take()),
            ("os.version", self.os_version.take()),
            ("os.name", self.os_name.take()),
            ("manager", self.manager.take()),
            ("version", self.version.take()),
            ("group", self.group.take()),
            ("node_name", self.node_name.take()),
            ("name", self.name.take()),
            ("ip", self.ip.take()),
            ("registerIP", self.register_ip.take()),
        ]
        .into_iter()
        .filter_map(|(f, v)| Some((f, v?)))
        .collect()
    }

    /// The names of the parameters given.
    fn given(&self) -> Vec<&'static str> {
        let set = [
            ("pretty", self.pretty.is_some()),
            ("wait_for_complete", self.wait_for_complete.is_some()),
            ("agents_list", self.agents_list.is_some()),
            ("offset", self.offset.is_some()),
            ("limit", self.limit.is_some()),
            ("select", self.select.is_some()),
            ("sort", self.sort.is_some()),
            ("search", self.search.is_some()),
            ("status", self.status.is_some()),
            ("q", self.q.is_some()),
            ("older_than", self.older_than.is_some()),
            ("os.platform", self.os_platform.is_some()),
            ("os.version", self.os_version.is_some()),
            ("os.name", self.os_name.is_some()),
            ("manager", self.manager.is_some()),
            ("version", self.version.is_some()),
            ("group", self.group.is_some()),
            ("node_name", self.node_name.is_some()),
            ("name", self.name.is_some()),
            ("ip", self.ip.is_some()),
            ("registerIP", self.register_ip.is_some()),
            ("group_config_status", self.group_config_status.is_some()),
            ("distinct", self.distinct.is_some()),
            ("keys", self.keys.is_some()),
            ("purge", self.purge.is_some()),
        ];
        set.into_iter().filter(|(_, given)| *given).map(|(name, _)| name).collect()
    }

    /// The first parameter given that `operation` (which takes only `allowed`) does not take.
    fn refuse_beyond(&self, allowed: &[&str], operation: &str) -> Result<(), String> {
        match self.given().into_iter().find(|name| !allowed.contains(name)) {
            Some(name) => Err(format!("{name} is not a parameter of {operation}")),
            None => Ok(()),
        }
    }
}

/// What `GET /agents/outdated` and `GET /agents/no_group` take (Wazuh's).
pub(super) const PAGE_PARAMS: &[&str] =
    &["pretty", "wait_for_complete", "offset", "limit", "sort", "search", "select", "q"];

/// The filters of a request, checked.
#[derive(Default)]
pub(super) struct Selection {
    ids: Vec<u32>,
    statuses: Vec<String>,
    /// `field = value` equalities of the named parameters.
    equal: Vec<(&'static str, String)>,
    older_than_ms: Option<u64>,
    q: Option<wql::Expr>,
    search: Option<String>,
    sort: Vec<wql::SortKey>,
    select: Option<Vec<String>>,
    distinct: bool,
    /// A condition of the endpoint's own (outdated agents, agents without a group).
    only: Option<fn(&Value) -> bool>,
    offset: u64,
    limit: u64,
}

/// Wazuh's time frame: a number of seconds, or `30s`, `15m`, `12h`, `7d`, `2w`.
pub(super) fn parse_timeframe(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("older_than: {text:?} is not a time frame (7d, 12h, 30m, 10s, 10)"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("older_than: {text:?} is not a time frame (7d, 12h, 30m, 10s, 10)")),
    };
    Ok(n.saturating_mul(seconds).saturating_mul(1000))
}

/// A comma-separated status list; `all` (where `with_all`) names every status.
fn parse_statuses(text: &str, with_all: bool) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for s in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if with_all && s == "all" {
            return Ok(Vec::new());
        }
        if !STATUSES.contains(&s) {
            let also = if with_all { ", all" } else { "" };
            return Err(format!("status: {s:?} is not one of {}{also}", STATUSES.join(", ")));
        }
        out.push(s.to_string());
    }
    if out.is_empty() {
        return Err("status names no status".into());
    }
    Ok(out)
}

impl Selection {
    /// The selection of `GET /agents`.
    pub(super) fn of_list(mut p: AgentsParams) -> Result<Self, String> {
        if p.purge.is_some() {
            return Err("purge is not a parameter of GET /agents".into());
        }
        if p.keys.is_some() {
            return Err("lists never carry agent keys: ask for one with GET /agents/{id}/key".into());
        }
        let limit = p.limit.unwrap_or(500);
        if !(1..=wazuh_cluster_actors::registry::query::MAX_LIMIT).contains(&limit) {
            return Err(format!(
                "limit must be between 1 and {}, not {limit}",
                wazuh_cluster_actors::registry::query::MAX_LIMIT
            ));
        }
        if let Some(s) = p.group_config_status.as_deref() {
            if s != "synced" && s != "not synced" {
                return Err(format!("group_config_status: {s:?} is neither synced nor not synced"));
            }
        }
        let distinct = p.distinct.unwrap_or(false);
        let select = match p.select.as_deref() {
            Some(text) => {
                let mut chosen = wql::parse_select(text, AGENT_FIELDS)?;
                if !distinct && !chosen.iter().any(|f| f == "id") {
                    chosen.push("id".into());
                }
                Some(chosen)
            }
            None => None,
        };
        let equal = p.equalities();
        let mut selection = Selection {
            statuses: p.status.as_deref().map(|s| parse_statuses(s, false)).transpose()?.unwrap_or_default(),
            older_than_ms: p.older_than.as_deref().map(parse_timeframe).transpose()?,
            q: p.q.as_deref().filter(|q| !q.trim().is_empty()).map(|q| wql::parse(q, AGENT_FIELDS)).transpose()?,
            search: p.search.filter(|s| !s.is_empty() && s != "-"),
            sort: p.sort.as_deref().map(|s| wql::parse_sort(s, AGENT_FIELDS)).transpose()?.unwrap_or_default(),
            select,
            distinct,
            offset: p.offset.unwrap_or(0),
            limit,
            equal,
            ..Selection::default()
        };
        selection.ids = match agents_list(p.agents_list.as_deref(), ListRule::Optional)? {
            AgentsList::Every => Vec::new(),
            AgentsList::Ids(ids) => ids,
        };
        if let Some(status) = p.group_config_status {
            selection.equal.push(("group_config_status", status));
        }
        Ok(selection)
    }

    /// The selection of the bulk `DELETE /agents`: `agents_list` and `status` required (each may
    /// be `all`), `older_than` 7 days unless given, and the list's equalities and `q`.
    pub(super) fn of_deletion(mut p: AgentsParams) -> Result<Self, String> {
        let allowed = ["pretty", "wait_for_complete", "agents_list", "purge", "status", "older_than", "q"];
        let equalities = [
            "os.platform",
            "os.version",
            "os.name",
            "manager",
            "version",
            "group",
            "node_name",
            "name",
            "ip",
            "registerIP",
        ];
        p.refuse_beyond(&[&allowed[..], &equalities[..]].concat(), "DELETE /agents")?;
        let Some(status) = p.status.as_deref() else {
            return Err("status is required (statuses separated by commas, or all)".into());
        };
        let mut selection = Selection {
            statuses: parse_statuses(status, true)?,
            older_than_ms: Some(parse_timeframe(p.older_than.as_deref().unwrap_or("7d"))?),
            q: p.q.as_deref().filter(|q| !q.trim().is_empty()).map(|q| wql::parse(q, AGENT_FIELDS)).transpose()?,
            limit: u64::MAX,
            equal: p.equalities(),
            ..Selection::default()
        };
        selection.ids = match agents_list(p.agents_list.as_deref(), ListRule::RequiredOrAll)? {
            AgentsList::Every => Vec::new(),
            AgentsList::Ids(ids) => ids,
        };
        Ok(selection)
    }

    /// Every agent (for `agents_list=all`).
    pub(super) fn every() -> Self {
        Selection { limit: u64::MAX, ..Selection::default() }
    }

    /// A page of the agents for which `only` holds, with the parameters of `PAGE_PARAMS`.
    pub(super) fn of_page(p: AgentsParams, only: fn(&Value) -> bool, operation: &str) -> Result<Self, String> {
        p.refuse_beyond(PAGE_PARAMS, operation)?;
        Ok(Selection { only: Some(only), ..Selection::of_list(p)? })
    }

    /// These agents (none: every agent).
    pub(super) fn of_ids(ids: Vec<u32>) -> Self {
        Selection { ids, ..Selection::every() }
    }

    /// The agents of `group`.
    pub(super) fn of_group(group: String) -> Self {
        Selection { equal: vec![("group", group)], ..Selection::every() }
    }

    /// Whether SQLite can serve the whole request a page at a time.
    fn sql_only(&self) -> bool {
        self.equal.iter().all(|(f, _)| matches!(*f, "group" | "node_name"))
            && self.statuses.len() <= 1
            && self.older_than_ms.is_none()
            && self.q.is_none()
            && self.search.is_none()
            && self.select.is_none()
            && !self.distinct
            && self.only.is_none()
            && self
                .sort
                .iter()
                .all(|k| wazuh_cluster_actors::registry::query::SortField::parse(&k.field).is_some() && k.field != "ip")
    }

    /// What SQLite filters first (its part of the request, exact).
    fn sql_query(&self, page: bool) -> AgentQuery {
        let field = |name: &str| self.equal.iter().find(|(f, _)| *f == name).map(|(_, v)| v.clone());
        let sort = if page {
            self.sort
                .iter()
                .filter_map(|k| {
                    let field = wazuh_cluster_actors::registry::query::SortField::parse(&k.field)?;
                    Some(wazuh_cluster_actors::registry::query::SortKey { field, descending: k.descending })
                })
                .collect()
        } else {
            Vec::new()
        };
        AgentQuery {
            status: (self.statuses.len() == 1).then(|| self.statuses[0].clone()),
            node: field("node_name"),
            group: field("group"),
            ids: self.ids.clone(),
            sort,
            offset: if page { self.offset } else { 0 },
            limit: if page { self.limit } else { u64::MAX },
            ..AgentQuery::default()
        }
    }

    /// Whether `item` passes every filter not left to SQLite.
    fn keep(&self, item: &Value, now_ms: u64) -> bool {
        let status = item.get("status").and_then(Value::as_str).unwrap_or("");
        if !self.statuses.is_empty() && !self.statuses.iter().any(|s| s == status) {
            return false;
        }
        if !self.equal.iter().all(|(f, v)| wql::term_matches(item, f, wql::Op::Eq, v)) {
            return false;
        }
        if let Some(age) = self.older_than_ms {
            let at = |f: &str| {
                wql::lookup(item, f)
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_millisecond().max(0) as u64)
            };
            // Never connected: since its registration.
            let since = if status == "never_connected" { at("dateAdd") } else { at("lastKeepAlive").or(at("dateAdd")) };
            if since.is_none_or(|t| t > now_ms.saturating_sub(age)) {
                return false;
            }
        }
        if self.q.as_ref().is_some_and(|q| !wql::matches(q, item)) {
            return false;
        }
        if self.only.is_some_and(|only| !only(item)) {
            return false;
        }
        self.search.as_deref().is_none_or(|s| wql::search_matches(item, s))
    }
}

/// The page as SQLite selects it, when SQLite applies every filter and sort of `s` (`None`: some
/// are left to [`select_agents`]); how many match in all.
pub(super) async fn sql_page(
    node: &NodeHandle,
    s: &Selection,
) -> Option<Result<(u64, Vec<crate::views::AgentView>), String>> {
    if !s.sql_only() {
        return None;
    }
    Some(node.agents_page(s.sql_query(true)).await.map_err(|e| e.to_string()))
}

/// [`sql_page`] as the answer's bytes, on the master and when `s` is [`Selection::sql_only`]:
/// written from the rows as SQLite holds them (`crate::node::page`). `None`: another path answers.
pub(super) async fn sql_page_json(node: &NodeHandle, s: &Selection) -> Option<Result<(u64, Vec<u8>), String>> {
    if !s.sql_only() {
        return None;
    }
    Some(node.agents_page_json(s.sql_query(true)).await?.map_err(|e| e.to_string()))
}

/// The matching agents as the API shows them: how many there are, and the page asked for.
pub(super) async fn select_agents(node: &NodeHandle, s: &Selection) -> Result<(u64, Vec<Value>), String> {
    if let Some(page) = sql_page(node, s).await {
        let (total, items) = page?;
        return Ok((total, items.into_iter().map(|a| serde_json::to_value(a).unwrap_or_default()).collect()));
    }
    let (_, items) = node.agents_page(s.sql_query(false)).await.map_err(|e| e.to_string())?;
    let now = wazuh_cluster_actors::clock::now_ms();
    let mut kept: Vec<Value> = items
        .into_iter()
        .map(|a| serde_json::to_value(a).unwrap_or_default())
        .filter(|item| s.keep(item, now))
        .collect();
    kept.sort_by(|a, b| wql::order(a, b, &s.sort, "id"));
    if let Some(chosen) = &s.select {
        kept = kept.iter().map(|item| wql::project(item, chosen)).collect();
    }
    if s.distinct {
        let mut seen = std::collections::HashSet::new();
        kept.retain(|item| seen.insert(item.to_string()));
    }
    let total = kept.len() as u64;
    let page =
        kept.into_iter().skip(s.offset.min(usize::MAX as u64) as usize).take(s.limit.min(usize::MAX as u64) as usize);
    Ok((total, page.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_frames_and_status_lists_as_wazuh_writes_them() {
        assert_eq!(parse_timeframe("10"), Ok(10_000));
        assert_eq!(parse_timeframe("0s"), Ok(0));
        assert_eq!(parse_timeframe("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_timeframe("2w"), Ok(14 * 86_400_000));
        for bad in ["", "d", "7x", "-1s", "1.5h"] {
            assert!(parse_timeframe(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_statuses("active, disconnected", false), Ok(vec!["active".into(), "disconnected".into()]));
        assert!(parse_statuses("all", false).is_err());
        assert_eq!(parse_statuses("active,all", true), Ok(vec![]));
        assert!(parse_statuses("bogus", false).is_err_and(|e| e.contains("bogus")));
        assert!(parse_statuses(",", false).is_err());
    }

    #[test]
    fn each_operation_refuses_the_other_ones_parameters_by_name() {
        let list = AgentsParams { purge: Some(true), ..AgentsParams::default() };
        assert!(Selection::of_list(list).is_err_and(|e| e.contains("purge")));
        let deletion = AgentsParams {
            agents_list: Some("all".into()),
            status: Some("all".into()),
            select: Some("name".into()),
            ..AgentsParams::default()
        };
        assert!(Selection::of_deletion(deletion).is_err_and(|e| e.contains("select")));
        let deletion = AgentsParams { agents_list: Some("all".into()), ..AgentsParams::default() };
        assert!(Selection::of_deletion(deletion).is_err_and(|e| e.contains("status is required")));
        let deletion = AgentsParams {
            agents_list: Some("1,2".into()),
            status: Some("all".into()),
            name: Some("web".into()),
            ..AgentsParams::default()
        };
        let s = Selection::of_deletion(deletion).unwrap_or_default();
        assert_eq!((s.ids, s.statuses, s.older_than_ms), (vec![1, 2], vec![], Some(7 * 86_400_000)));
        assert_eq!(s.equal, [("name", "web".to_string())]);
    }
}
