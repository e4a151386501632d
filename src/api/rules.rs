//! `GET /rules` and `GET /decoders`: the rules and decoders of this node's files (`etc/rules`,
//! `etc/decoders`, and Wazuh's own `ruleset/rules`, `ruleset/decoders` when the data directory is
//! a Wazuh installation), as Wazuh's API lists them: one item per rule (id, level, description,
//! groups, the compliance mappings its groups carry, the rest of its options under `details`) or
//! per decoder (name, position in its file, options under `details`), with Wazuh's filters.

use super::listing::{page, ListParams};
use super::*;
use serde_json::{json, Map, Value};

/// An option element as Wazuh lists it under `details`: its text, or `{"pattern": text, attrs...}`
/// when it has attributes.
fn option(node: roxmltree::Node<'_, '_>) -> Value {
    let text = node.text().unwrap_or("").trim().to_string();
    if node.attributes().len() == 0 {
        return Value::String(text);
    }
    let mut map = Map::new();
    map.insert("pattern".into(), Value::String(text));
    for a in node.attributes() {
        map.insert(a.name().to_string(), Value::String(a.value().to_string()));
    }
    Value::Object(map)
}

/// Adds `value` under `name` in `details` (a name that repeats makes a list).
fn add(details: &mut Map<String, Value>, name: &str, value: Value) {
    match details.get_mut(name) {
        Some(Value::Array(list)) => list.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
        None => {
            details.insert(name.to_string(), value);
        }
    }
}

/// The compliance mappings Wazuh takes out of a rule's groups, by the prefix they carry.
const COMPLIANCE: &[(&str, &str)] = &[
    ("pci_dss_", "pci_dss"),
    ("gpg13_", "gpg13"),
    ("gdpr_", "gdpr"),
    ("hipaa_", "hipaa"),
    ("nist_800_53_", "nist_800_53"),
    ("tsc_", "tsc"),
];

/// The rules of one file.
fn rules_of(dir: &str, file: &str, text: &str) -> Vec<Value> {
    let wrapped = format!("<root>{text}</root>");
    let options = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
    let Ok(doc) = roxmltree::Document::parse_with_options(&wrapped, options) else { return Vec::new() };
    let mut out = Vec::new();
    for group in doc.root_element().children().filter(|n| n.has_tag_name("group")) {
        let outer: Vec<String> = group
            .attribute("name")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        for rule in group.children().filter(|n| n.has_tag_name("rule")) {
            let mut groups = outer.clone();
            let mut details = Map::new();
            let mut mitre = Vec::new();
            let mut description = String::new();
            for a in rule.attributes().filter(|a| !matches!(a.name(), "id" | "level")) {
                details.insert(a.name().to_string(), Value::String(a.value().to_string()));
            }
            for child in rule.children().filter(|n| n.is_element()) {
                match child.tag_name().name() {
                    "description" => description = child.text().unwrap_or("").trim().to_string(),
                    "group" => groups.extend(
                        child
                            .text()
                            .unwrap_or("")
                            .split(',')
                            .map(str::trim)
                            .filter(|g| !g.is_empty())
                            .map(String::from),
                    ),
                    "mitre" => mitre.extend(
                        child
                            .children()
                            .filter(|n| n.has_tag_name("id"))
                            .filter_map(|n| n.text())
                            .map(|t| t.trim().to_string()),
                    ),
                    name => add(&mut details, name, option(child)),
                }
            }
            let mut item = json!({
                "filename": file,
                "relative_dirname": dir,
                "id": rule.attribute("id").and_then(|i| i.parse::<u64>().ok()),
                "level": rule.attribute("level").and_then(|l| l.parse::<u64>().ok()),
                "status": "enabled",
                "details": details,
                "mitre": mitre,
                "description": description,
            });
            let mut plain = Vec::new();
            for g in groups {
                match COMPLIANCE.iter().find(|(prefix, _)| g.starts_with(prefix)) {
                    Some((prefix, field)) => {
                        let list = item[*field].as_array_mut().map(std::mem::take).unwrap_or_default();
                        let mut list = list;
                        list.push(Value::String(g[prefix.len()..].to_string()));
                        item[*field] = Value::Array(list);
                    }
                    None => plain.push(Value::String(g)),
                }
            }
            for (_, field) in COMPLIANCE {
                if item.get(*field).is_none() {
                    item[*field] = json!([]);
                }
            }
            item["groups"] = Value::Array(plain);
            out.push(item);
        }
    }
    out
}

/// The decoders of one file.
fn decoders_of(dir: &str, file: &str, text: &str) -> Vec<Value> {
    let wrapped = format!("<root>{text}</root>");
    let options = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
    let Ok(doc) = roxmltree::Document::parse_with_options(&wrapped, options) else { return Vec::new() };
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("decoder"))
        .enumerate()
        .map(|(position, decoder)| {
            let mut details = Map::new();
            for child in decoder.children().filter(|n| n.is_element()) {
                add(&mut details, child.tag_name().name(), option(child));
            }
            json!({
                "filename": file,
                "relative_dirname": dir,
                "status": "enabled",
                "name": decoder.attribute("name").unwrap_or(""),
                "position": position,
                "details": details,
            })
        })
        .collect()
}

/// Every item `parse` finds in the `*.xml` files of `kind`'s directories.
fn items(node: &NodeHandle, kind: &str, parse: fn(&str, &str, &str) -> Vec<Value>) -> Vec<Value> {
    let base = node.data_dir();
    let mut out = Vec::new();
    for file in super::listing::xml_files(node, kind) {
        let (Some(dir), Some(name)) = (file["relative_dirname"].as_str(), file["filename"].as_str()) else { continue };
        let text = std::fs::read_to_string(base.join(dir).join(name)).unwrap_or_default();
        out.extend(parse(dir, name, &text));
    }
    out
}

/// `GET /rules` (Wazuh's parameters; any other is a 400 naming it). The listing's parameters are
/// spelled out here rather than flattened from [`ListParams`]: serde's `flatten` cannot refuse
/// unknown fields, and reads every value of a query string as text (numbers would not parse).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RulesQuery {
    rule_ids: Option<String>,
    group: Option<String>,
    level: Option<String>,
    pci_dss: Option<String>,
    gdpr: Option<String>,
    gpg13: Option<String>,
    hipaa: Option<String>,
    #[serde(rename = "nist-800-53")]
    nist_800_53: Option<String>,
    tsc: Option<String>,
    mitre: Option<String>,
    pretty: Option<bool>,
    wait_for_complete: Option<bool>,
    offset: Option<u64>,
    limit: Option<u64>,
    select: Option<String>,
    sort: Option<String>,
    search: Option<String>,
    q: Option<String>,
    status: Option<String>,
    filename: Option<String>,
    relative_dirname: Option<String>,
    distinct: Option<bool>,
}

/// The listing parameters of a rules or decoders query.
macro_rules! listing_of {
    ($q:expr) => {
        ListParams {
            pretty: $q.pretty,
            wait_for_complete: $q.wait_for_complete,
            offset: $q.offset,
            limit: $q.limit,
            select: $q.select.clone(),
            sort: $q.sort.clone(),
            search: $q.search.clone(),
            q: $q.q.clone(),
            status: $q.status.clone(),
            filename: $q.filename.clone(),
            relative_dirname: $q.relative_dirname.clone(),
            distinct: $q.distinct,
            ..ListParams::default()
        }
    };
}

/// `level`: one level (`5`) or a range (`2-7`).
fn level_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("level: {text:?} is neither a level nor a range (2-7)");
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let low: u64 = low.trim().parse().map_err(|_| bad())?;
    let high: u64 = high.trim().parse().map_err(|_| bad())?;
    if low > high {
        return Err(bad());
    }
    Ok((low, high))
}

const RULE_FIELDS: &[&str] = &[
    "id",
    "level",
    "description",
    "filename",
    "relative_dirname",
    "status",
    "groups",
    "pci_dss",
    "gpg13",
    "gdpr",
    "hipaa",
    "nist_800_53",
    "tsc",
    "mitre",
    "details",
];

pub(super) async fn rules(node: web::Data<NodeHandle>, query: web::Query<RulesQuery>) -> HttpResponse {
    let q = query.into_inner();
    let ids: Option<Vec<u64>> = match q.rule_ids.as_deref().map(|l| {
        l.split(',').map(str::trim).filter(|i| !i.is_empty()).map(|i| i.parse::<u64>()).collect::<Result<Vec<_>, _>>()
    }) {
        None => None,
        Some(Ok(ids)) => Some(ids),
        Some(Err(_)) => return agents::bad_request("rule_ids: rule ids are numbers, separated by commas"),
    };
    let levels = match q.level.as_deref().map(level_range).transpose() {
        Ok(l) => l,
        Err(why) => return agents::bad_request(&why),
    };
    let has = |item: &Value, field: &str, wanted: &Option<String>| {
        wanted.as_deref().is_none_or(|w| item[field].as_array().is_some_and(|l| l.iter().any(|v| v == w)))
    };
    let found: Vec<Value> = items(&node, "rules", rules_of)
        .into_iter()
        .filter(|r| ids.as_ref().is_none_or(|ids| r["id"].as_u64().is_some_and(|id| ids.contains(&id))))
        .filter(|r| levels.is_none_or(|(lo, hi)| r["level"].as_u64().is_some_and(|l| (lo..=hi).contains(&l))))
        .filter(|r| has(r, "groups", &q.group) && has(r, "pci_dss", &q.pci_dss) && has(r, "gdpr", &q.gdpr))
        .filter(|r| has(r, "gpg13", &q.gpg13) && has(r, "hipaa", &q.hipaa) && has(r, "nist_800_53", &q.nist_800_53))
        .filter(|r| has(r, "tsc", &q.tsc) && has(r, "mitre", &q.mitre))
        .collect();
    let allowed = [
        "pretty",
        "wait_for_complete",
        "offset",
        "limit",
        "select",
        "sort",
        "search",
        "q",
        "status",
        "filename",
        "relative_dirname",
        "distinct",
    ];
    page(found, &listing_of!(q), &allowed, "GET /rules", (RULE_FIELDS, "id"), "All selected rules were returned")
}

/// `GET /decoders` (Wazuh's parameters; any other is a 400 naming it).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DecodersQuery {
    decoder_names: Option<String>,
    pretty: Option<bool>,
    wait_for_complete: Option<bool>,
    offset: Option<u64>,
    limit: Option<u64>,
    select: Option<String>,
    sort: Option<String>,
    search: Option<String>,
    q: Option<String>,
    status: Option<String>,
    filename: Option<String>,
    relative_dirname: Option<String>,
    distinct: Option<bool>,
}

const DECODER_FIELDS: &[&str] = &["name", "position", "filename", "relative_dirname", "status", "details"];

pub(super) async fn decoders(node: web::Data<NodeHandle>, query: web::Query<DecodersQuery>) -> HttpResponse {
    let q = query.into_inner();
    let names: Option<Vec<&str>> =
        q.decoder_names.as_deref().map(|l| l.split(',').map(str::trim).filter(|n| !n.is_empty()).collect());
    let found: Vec<Value> = items(&node, "decoders", decoders_of)
        .into_iter()
        .filter(|d| names.as_ref().is_none_or(|n| d["name"].as_str().is_some_and(|name| n.contains(&name))))
        .collect();
    let allowed = [
        "pretty",
        "wait_for_complete",
        "offset",
        "limit",
        "select",
        "sort",
        "search",
        "q",
        "filename",
        "relative_dirname",
        "status",
        "distinct",
    ];
    page(
        found,
        &listing_of!(q),
        &allowed,
        "GET /decoders",
        (DECODER_FIELDS, "filename"),
        "All selected decoders were returned",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_decoders_as_wazuh_lists_them() {
        let text = r#"<group name="syslog,sshd,">
  <rule id="5710" level="5" noalert="1">
    <if_sid>5700</if_sid>
    <match>illegal user|invalid user</match>
    <regex type="pcre2">from (\S+)</regex>
    <description>sshd: Attempt to login using a non-existent user</description>
    <mitre><id>T1110.001</id></mitre>
    <group>invalid_login,authentication_failed,pci_dss_10.2.4,gdpr_IV_35.7.d,</group>
  </rule>
</group>"#;
        let rules = rules_of("etc/rules", "local_rules.xml", text);
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!((r["id"].as_u64(), r["level"].as_u64()), (Some(5710), Some(5)));
        assert_eq!(r["groups"], json!(["syslog", "sshd", "invalid_login", "authentication_failed"]));
        assert_eq!(
            (&r["pci_dss"], &r["gdpr"], &r["mitre"]),
            (&json!(["10.2.4"]), &json!(["IV_35.7.d"]), &json!(["T1110.001"]))
        );
        assert_eq!(r["details"]["if_sid"], "5700");
        assert_eq!(r["details"]["regex"], json!({ "pattern": "from (\\S+)", "type": "pcre2" }));
        assert_eq!(r["details"]["noalert"], "1");
        let decoders = decoders_of(
            "etc/decoders",
            "d.xml",
            "<decoder name=\"a\"><prematch>^a</prematch></decoder>\n<decoder name=\"b\"><parent>a</parent></decoder>",
        );
        assert_eq!((decoders[1]["name"].as_str(), decoders[1]["position"].as_u64()), (Some("b"), Some(1)));
        assert_eq!(decoders[1]["details"]["parent"], "a");
        assert_eq!(level_range("2-7"), Ok((2, 7)));
        assert_eq!(level_range("5"), Ok((5, 5)));
        assert!(level_range("7-2").is_err() && level_range("x").is_err());
    }
}
