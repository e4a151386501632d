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

#[cfg(test)]
mod tests {
    use super::to_json;
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
}
