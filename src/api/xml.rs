//! Rule and decoder files as JSON, the way Wazuh's API gives them (it reads them with `xmltodict`
//! inside a `<root>` element, since a rule file has several top-level `<group>`s): an element's
//! attributes as `@name` keys, its children by name (a name that repeats makes a list), its text
//! as `#text` beside attributes or children, or as the value itself when it has neither; an empty
//! element is `null`.

use serde_json::{Map, Value};

/// `content` (a rule or decoder file) as JSON, or why it does not parse.
pub(super) fn to_json(content: &str) -> Result<Value, String> {
    let wrapped = format!("<root>{content}</root>");
    let options = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&wrapped, options).map_err(|e| e.to_string())?;
    Ok(element(doc.root_element()))
}

fn element(node: roxmltree::Node<'_, '_>) -> Value {
    let mut map = Map::new();
    for a in node.attributes() {
        map.insert(format!("@{}", a.name()), Value::String(a.value().to_string()));
    }
    let mut text = String::new();
    for child in node.children() {
        if child.is_element() {
            let name = child.tag_name().name().to_string();
            let value = element(child);
            match map.get_mut(&name) {
                Some(Value::Array(list)) => list.push(value),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, value]);
                }
                None => {
                    map.insert(name, value);
                }
            }
        } else if child.is_text() {
            text.push_str(child.text().unwrap_or(""));
        }
    }
    let text = text.trim();
    match (map.is_empty(), text.is_empty()) {
        (true, true) => Value::Null,
        (true, false) => Value::String(text.to_string()),
        (false, false) => {
            map.insert("#text".into(), Value::String(text.to_string()));
            Value::Object(map)
        }
        (false, true) => Value::Object(map),
    }
}

/// Sections an `agent.conf` may hold several of: each is one item of a list (Wazuh's
/// "duplicate" sections); any other section met twice merges into one object.
const LIST_SECTIONS: &[&str] =
    &["localfile", "command", "active-response", "agentless", "remote", "syslog_output", "integration", "wodle"];

/// An option of a section: its text; with attributes or children, an object of them (the text then
/// under `item`, children by name as lists); a `label` of `labels` as `{value, attributes...}`; a
/// syscheck `directories` as one object per path.
fn option(section: &str, node: roxmltree::Node<'_, '_>) -> Vec<Value> {
    let name = node.tag_name().name();
    let text = node.text().map(str::trim).unwrap_or("").to_string();
    let attributes = || node.attributes().map(|a| (a.name().to_string(), Value::String(a.value().to_string())));
    if section == "syscheck" && name == "directories" {
        return text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|path| {
                let mut map: Map<String, Value> = attributes().collect();
                map.insert("path".into(), Value::String(path.to_string()));
                Value::Object(map)
            })
            .collect();
    }
    if section == "labels" && name == "label" {
        let mut map: Map<String, Value> = [("value".to_string(), Value::String(text))].into_iter().collect();
        map.extend(attributes());
        return vec![Value::Object(map)];
    }
    let children: Vec<_> = node.children().filter(|c| c.is_element()).collect();
    if node.attributes().len() == 0 && children.is_empty() {
        return if text.is_empty() { Vec::new() } else { vec![Value::String(text)] };
    }
    let mut map: Map<String, Value> = attributes().collect();
    if children.is_empty() {
        map.insert("item".into(), Value::String(text));
    }
    for child in children {
        let values = option(child.tag_name().name(), child);
        let entry = map.entry(child.tag_name().name().to_string()).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.extend(values);
        }
    }
    vec![Value::Object(map)]
}

/// The sections of a configuration block (`<agent_config>`, `<ossec_config>`) into `config`:
/// repeatable sections as lists, any other merged into one object.
fn sections_into(block: roxmltree::Node<'_, '_>, config: &mut Map<String, Value>) {
    for section in block.children().filter(|n| n.is_element()) {
        let name = match section.tag_name().name() {
            "wodle" => section.attribute("name").unwrap_or("wodle").to_string(),
            other => other.to_string(),
        };
        let mut body = Map::new();
        for opt in section.children().filter(|n| n.is_element()) {
            let opt_name = opt.tag_name().name().to_string();
            for value in option(&name, opt) {
                match body.get_mut(&opt_name) {
                    Some(Value::Array(list)) => list.push(value),
                    Some(existing) => {
                        let first = existing.take();
                        *existing = Value::Array(vec![first, value]);
                    }
                    None => {
                        body.insert(opt_name.clone(), value);
                    }
                }
            }
        }
        if LIST_SECTIONS.contains(&section.tag_name().name()) {
            let entry = config.entry(name).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                list.push(Value::Object(body));
            }
        } else {
            match config.get_mut(&name) {
                Some(Value::Object(existing)) => existing.extend(body),
                _ => {
                    config.insert(name, Value::Object(body));
                }
            }
        }
    }
}

/// Wazuh's `ossec.conf` as its API shows it: the sections of every `<ossec_config>` block.
pub(super) fn ossec_conf(content: &str) -> Result<Map<String, Value>, String> {
    let wrapped = format!("<root>{content}</root>");
    let options = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&wrapped, options).map_err(|e| e.to_string())?;
    let mut config = Map::new();
    for block in doc.root_element().children().filter(|n| n.has_tag_name("ossec_config")) {
        sections_into(block, &mut config);
    }
    Ok(config)
}

/// An `agent.conf` as Wazuh's API gives it: one item per distinct set of filters (the attributes
/// of `<agent_config>`: `os`, `name`, `profile`), with the sections of every block that has them
/// under `config`.
pub(super) fn agent_conf(content: &str) -> Result<Vec<Value>, String> {
    let wrapped = format!("<root>{content}</root>");
    let options = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&wrapped, options).map_err(|e| e.to_string())?;
    let mut items: Vec<(Map<String, Value>, Map<String, Value>)> = Vec::new();
    for block in doc.root_element().children().filter(|n| n.has_tag_name("agent_config")) {
        let filters: Map<String, Value> =
            block.attributes().map(|a| (a.name().to_string(), Value::String(a.value().to_string()))).collect();
        let at = match items.iter().position(|(f, _)| *f == filters) {
            Some(i) => i,
            None => {
                items.push((filters, Map::new()));
                items.len() - 1
            }
        };
        sections_into(block, &mut items[at].1);
    }
    Ok(items.into_iter().map(|(filters, config)| serde_json::json!({ "filters": filters, "config": config })).collect())
}

#[cfg(test)]
mod tests {
    use super::{agent_conf, to_json};
    use serde_json::json;

    #[test]
    fn rule_files_read_as_xmltodict_reads_them() {
        let rules = r#"<!-- local -->
<group name="syslog,">
  <rule id="100" level="3">
    <match>^a&lt;b</match>
    <group>x,</group>
    <group>y,</group>
    <options>no_log</options>
    <if_sid/>
  </rule>
</group>
<group name="web,"><rule id="101" level="0"><regex type="pcre2">\d+</regex><description>d</description></rule></group>
"#;
        let value = to_json(rules).unwrap_or_default();
        assert_eq!(
            value,
            json!({ "group": [
                { "@name": "syslog,", "rule": { "@id": "100", "@level": "3", "match": "^a<b", "group": ["x,", "y,"], "options": "no_log", "if_sid": null } },
                { "@name": "web,", "rule": { "@id": "101", "@level": "0", "regex": { "@type": "pcre2", "#text": "\\d+" }, "description": "d" } },
            ]})
        );
        assert!(to_json("<group><rule></group>").is_err());
        assert!(to_json("<!DOCTYPE x [<!ENTITY a \"b\">]><group/>").is_err(), "no DTD");
    }

    #[test]
    fn an_agent_conf_reads_as_wazuhs_api_shows_it() {
        let conf = r#"<agent_config name="agent_name">
  <localfile><location>/var/log/my.log</location><log_format>syslog</log_format></localfile>
</agent_config>
<agent_config os="Linux">
  <localfile><location>/var/log/linux.log</location><log_format>syslog</log_format></localfile>
  <syscheck><directories check_all="yes">/etc,/usr/bin</directories><frequency>3600</frequency></syscheck>
  <labels><label key="env">prod</label></labels>
</agent_config>
<agent_config name="agent_name">
  <localfile><location>/var/log/other.log</location><log_format>syslog</log_format></localfile>
</agent_config>"#;
        let items = agent_conf(conf).unwrap_or_default();
        assert_eq!(items.len(), 2, "blocks with the same filters merge");
        assert_eq!(items[0]["filters"], json!({ "name": "agent_name" }));
        assert_eq!(items[0]["config"]["localfile"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            items[0]["config"]["localfile"][1],
            json!({ "location": "/var/log/other.log", "log_format": "syslog" })
        );
        assert_eq!(
            items[1]["config"]["syscheck"]["directories"],
            json!([{ "check_all": "yes", "path": "/etc" }, { "check_all": "yes", "path": "/usr/bin" }])
        );
        assert_eq!(items[1]["config"]["syscheck"]["frequency"], "3600");
        assert_eq!(items[1]["config"]["labels"]["label"], json!({ "value": "prod", "key": "env" }));
        assert!(agent_conf("<agent_config><x></agent_config>").is_err());
    }
}
