//! Wazuh's listings (and the paging, filters and projections they share, `GET /groups` too) of ruleset files: `GET /rules/files`, `/decoders/files`, `/lists/files` and
//! `GET /lists` (each CDB list with its `key:value` items), from this node's files (file sync keeps
//! them the master's), filtered, sorted, projected and paged with Wazuh's parameters.

use super::wql;
use super::*;
use serde_json::Value;

/// The parameters these listings take between them; each refuses the ones Wazuh's operation does
/// not take, by name.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    pub(super) pretty: Option<bool>,
    pub(super) wait_for_complete: Option<bool>,
    pub(super) offset: Option<u64>,
    pub(super) limit: Option<u64>,
    pub(super) sort: Option<String>,
    pub(super) search: Option<String>,
    pub(super) q: Option<String>,
    pub(super) select: Option<String>,
    pub(super) distinct: Option<bool>,
    pub(super) relative_dirname: Option<String>,
    pub(super) filename: Option<String>,
    pub(super) status: Option<String>,
    /// `GET /groups` only.
    pub(super) groups_list: Option<String>,
    /// `GET /groups` only: md5, the one served.
    pub(super) hash: Option<String>,
}

impl ListParams {
    fn given(&self) -> Vec<&'static str> {
        [
            ("pretty", self.pretty.is_some()),
            ("wait_for_complete", self.wait_for_complete.is_some()),
            ("offset", self.offset.is_some()),
            ("limit", self.limit.is_some()),
            ("sort", self.sort.is_some()),
            ("search", self.search.is_some()),
            ("q", self.q.is_some()),
            ("select", self.select.is_some()),
            ("distinct", self.distinct.is_some()),
            ("relative_dirname", self.relative_dirname.is_some()),
            ("filename", self.filename.is_some()),
            ("status", self.status.is_some()),
            ("groups_list", self.groups_list.is_some()),
            ("hash", self.hash.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect()
    }
}

/// One page of `items` after the parameters, in Wazuh's envelope; `fields` are what `q`, `sort`
/// and `select` take, `key` the field that orders ties and is always selected.
pub(super) fn page(
    items: Vec<Value>,
    p: &ListParams,
    allowed: &[&str],
    operation: &str,
    (fields, key): (&[&str], &str),
    message: &str,
) -> HttpResponse {
    if let Some(name) = p.given().into_iter().find(|n| !allowed.contains(n)) {
        return agents::bad_request(&format!("{name} is not a parameter of {operation}"));
    }
    let limit = p.limit.unwrap_or(500);
    if !(1..=wazuh_cluster_actors::registry::query::MAX_LIMIT).contains(&limit) {
        return agents::bad_request(&format!(
            "limit must be between 1 and {}",
            wazuh_cluster_actors::registry::query::MAX_LIMIT
        ));
    }
    if let Some(status) = p.status.as_deref().filter(|s| !matches!(*s, "enabled" | "disabled" | "all")) {
        return agents::bad_request(&format!("status: {status:?} is not one of enabled, disabled, all"));
    }
    let parsed = (|| -> Result<_, String> {
        let q = p.q.as_deref().filter(|q| !q.trim().is_empty()).map(|q| wql::parse(q, fields)).transpose()?;
        let sort = p.sort.as_deref().map(|s| wql::parse_sort(s, fields)).transpose()?.unwrap_or_default();
        let select = p.select.as_deref().map(|s| wql::parse_select(s, fields)).transpose()?;
        Ok((q, sort, select))
    })();
    let (q, sort, select) = match parsed {
        Ok(parsed) => parsed,
        Err(why) => return agents::bad_request(&why),
    };
    let exact = |item: &Value, field: &str, wanted: &Option<String>| {
        wanted.as_deref().is_none_or(|w| item.get(field).and_then(Value::as_str) == Some(w))
    };
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|i| exact(i, "filename", &p.filename) && exact(i, "relative_dirname", &p.relative_dirname))
        .filter(|i| {
            p.status.as_deref().is_none_or(|s| s == "all" || i.get("status").and_then(Value::as_str) == Some(s))
        })
        .filter(|i| q.as_ref().is_none_or(|q| wql::matches(q, i)))
        .filter(|i| p.search.as_deref().is_none_or(|s| wql::search_matches(i, s)))
        .collect();
    items.sort_by(|a, b| wql::order(a, b, &sort, key));
    if let Some(mut chosen) = select {
        if !p.distinct.unwrap_or(false) && !chosen.iter().any(|f| f == key) {
            chosen.push(key.into());
        }
        items = items.iter().map(|i| wql::project(i, &chosen)).collect();
    }
    if p.distinct.unwrap_or(false) {
        let mut seen = std::collections::HashSet::new();
        items.retain(|i| seen.insert(i.to_string()));
    }
    let total = items.len();
    let shown: Vec<Value> = items.into_iter().skip(p.offset.unwrap_or(0) as usize).take(limit as usize).collect();
    let mut body = envelope(&shown, message);
    body["data"]["total_affected_items"] = total.into();
    agents::json_answer(&body, p.pretty.unwrap_or(false))
}

/// The files under `root` (recursively when `deep`) that `keep` takes, as `(relative_dirname,
/// filename)`, in path order.
pub(super) fn files_under(node: &NodeHandle, root: &str, deep: bool, keep: fn(&str) -> bool) -> Vec<(String, String)> {
    let base = node.data_dir();
    let mut out = Vec::new();
    let walker =
        walkdir::WalkDir::new(base.join(root)).min_depth(1).max_depth(if deep { 8 } else { 1 }).sort_by_file_name();
    for entry in walker.into_iter().flatten() {
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            continue;
        }
        let dir =
            entry.path().parent().and_then(|d| d.strip_prefix(&base).ok()).map(|d| d.to_string_lossy().into_owned());
        if let Some(dir) = dir {
            out.push((dir, name));
        }
    }
    out
}

const XML_FILE_PARAMS: &[&str] = &[
    "pretty",
    "wait_for_complete",
    "offset",
    "limit",
    "sort",
    "search",
    "relative_dirname",
    "filename",
    "status",
    "q",
    "select",
    "distinct",
];
const FILE_FIELDS: &[&str] = &["filename", "relative_dirname", "status"];

/// The `*.xml` files analysisd loads for `kind` (`rules`, `decoders`): Wazuh's own under
/// `ruleset/` (when the data directory is a Wazuh installation), then the user's under `etc/`,
/// each directory itself, not below; all enabled.
pub(super) fn xml_files(node: &NodeHandle, kind: &str) -> Vec<Value> {
    [format!("ruleset/{kind}"), format!("etc/{kind}")]
        .iter()
        .flat_map(|root| files_under(node, root, false, |n| n.ends_with(".xml")))
        .map(|(dir, name)| serde_json::json!({ "filename": name, "relative_dirname": dir, "status": "enabled" }))
        .collect()
}

/// `GET /rules/files`.
pub(super) async fn rule_files(node: web::Data<NodeHandle>, query: web::Query<ListParams>) -> HttpResponse {
    let items = xml_files(&node, "rules");
    page(items, &query, XML_FILE_PARAMS, "GET /rules/files", (FILE_FIELDS, "filename"), "All rules files were returned")
}

/// `GET /decoders/files`.
pub(super) async fn decoder_files(node: web::Data<NodeHandle>, query: web::Query<ListParams>) -> HttpResponse {
    let items = xml_files(&node, "decoders");
    page(
        items,
        &query,
        XML_FILE_PARAMS,
        "GET /decoders/files",
        (FILE_FIELDS, "filename"),
        "All decoder files were returned",
    )
}

/// A CDB list's source file (not analysisd's compiled `.cdb`, not a hidden file).
fn list_source(name: &str) -> bool {
    !name.ends_with(".cdb") && !name.starts_with('.')
}

/// `GET /lists/files`.
pub(super) async fn list_files(node: web::Data<NodeHandle>, query: web::Query<ListParams>) -> HttpResponse {
    let items = files_under(&node, RulesetRoot::Lists.dir(), true, list_source)
        .into_iter()
        .map(|(dir, name)| serde_json::json!({ "filename": name, "relative_dirname": dir }))
        .collect();
    let allowed = ["pretty", "wait_for_complete", "offset", "limit", "sort", "search", "relative_dirname", "filename"];
    let fields = &["filename", "relative_dirname"][..];
    page(items, &query, &allowed, "GET /lists/files", (fields, "filename"), "All specified paths were returned")
}

/// A CDB list's `key:value` lines as Wazuh's API shows them (a quoted key may hold `:`; a line
/// without a value has an empty one).
pub(super) fn list_items(text: &str) -> Vec<Value> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (key, value) = match line.strip_prefix('"').and_then(|rest| rest.split_once('"')) {
                Some((key, rest)) => (key, rest.strip_prefix(':').unwrap_or(rest)),
                None => line.split_once(':').unwrap_or((line, "")),
            };
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            serde_json::json!({ "key": key, "value": value })
        })
        .collect()
}

/// `GET /lists`: each CDB list with its items.
pub(super) async fn lists(node: web::Data<NodeHandle>, query: web::Query<ListParams>) -> HttpResponse {
    let base = node.data_dir();
    let items = files_under(&node, RulesetRoot::Lists.dir(), true, list_source)
        .into_iter()
        .map(|(dir, name)| {
            let text = std::fs::read_to_string(base.join(&dir).join(&name)).unwrap_or_default();
            serde_json::json!({ "items": list_items(&text), "relative_dirname": dir, "filename": name })
        })
        .collect();
    let allowed = [
        "pretty",
        "wait_for_complete",
        "offset",
        "limit",
        "select",
        "sort",
        "search",
        "relative_dirname",
        "filename",
        "q",
        "distinct",
    ];
    let fields = &["filename", "relative_dirname", "items"][..];
    page(items, &query, &allowed, "GET /lists", (fields, "filename"), "All specified lists were returned")
}

#[cfg(test)]
mod tests {
    use super::list_items;
    use serde_json::json;

    #[test]
    fn cdb_lines_as_wazuh_shows_them() {
        let text = "audit-wazuh-w:write\n\"key:with:colons\":\"v\"\nbare\n\n";
        assert_eq!(
            list_items(text),
            [
                json!({ "key": "audit-wazuh-w", "value": "write" }),
                json!({ "key": "key:with:colons", "value": "v" }),
                json!({ "key": "bare", "value": "" }),
            ]
        );
    }
}
