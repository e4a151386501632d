//! Wazuh's query language (`q`), its `search`, `select` and `sort`, over items as the API shows
//! them (JSON objects; `os.platform` names a nested field).
//!
//! `q` is terms `field op value` joined by `;` (and) and `,` (or), grouped by parentheses; `;`
//! binds tighter than `,`, as in the SQL Wazuh translates it to. Operators: `=`, `!=`, `<`, `>`
//! and `~` (contains). Text compares without regard to ASCII case; two numbers (ids too: `1` is
//! `001`) compare as numbers; a `version` compares by its numbers (`4.9.0 < v4.14.7`). A list
//! field (`group`) matches when one of its values does. A field the item lacks matches only `!=`.

use serde_json::Value;
use std::cmp::Ordering;

/// A comparison of `q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Like,
}

/// A parsed `q`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Term { field: String, op: Op, value: String },
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// Parses `q` over `fields` (any other field is an error naming it and the valid ones).
pub fn parse(q: &str, fields: &[&str]) -> Result<Expr, String> {
    let mut p = Parser { text: q.as_bytes(), at: 0, fields };
    let expr = p.or()?;
    if p.at < p.text.len() {
        return Err(format!("q: unexpected {:?} at position {}", char::from(p.text[p.at]), p.at));
    }
    Ok(expr)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    fields: &'a [&'a str],
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(b',') {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::Or(parts) })
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.primary()?];
        while self.peek() == Some(b';') {
            self.at += 1;
            parts.push(self.primary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::And(parts) })
    }

    fn primary(&mut self) -> Result<Expr, String> {
        if self.peek() == Some(b'(') {
            self.at += 1;
            let inner = self.or()?;
            if self.peek() != Some(b')') {
                return Err("q: a parenthesis is not closed".into());
            }
            self.at += 1;
            return Ok(inner);
        }
        self.term()
    }

    fn term(&mut self) -> Result<Expr, String> {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            self.at += 1;
        }
        let field = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
        if field.is_empty() {
            let rest = String::from_utf8_lossy(&self.text[start..]).into_owned();
            return Err(format!("q: expected a field name at {rest:?}"));
        }
        let op = match (self.peek(), self.text.get(self.at + 1)) {
            (Some(b'!'), Some(b'=')) => {
                self.at += 2;
                Op::Ne
            }
            (Some(b'='), _) => {
                self.at += 1;
                Op::Eq
            }
            (Some(b'<'), _) => {
                self.at += 1;
                Op::Lt
            }
            (Some(b'>'), _) => {
                self.at += 1;
                Op::Gt
            }
            (Some(b'~'), _) => {
                self.at += 1;
                Op::Like
            }
            _ => return Err(format!("q: {field:?} needs an operator: =, !=, <, > or ~")),
        };
        if !self.fields.contains(&field.as_str()) {
            return Err(format!("q: no field {field:?} here; use one of {}", self.fields.join(", ")));
        }
        // The value runs to the next separator or closing parenthesis.
        let start = self.at;
        while let Some(b) = self.peek() {
            if b == b';' || b == b',' || b == b')' {
                break;
            }
            self.at += 1;
        }
        let value = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
        Ok(Expr::Term { field, op, value })
    }
}

/// The value at a dotted `path` of `item` (`None` when absent, null or empty text).
pub fn lookup<'a>(item: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = item;
    for part in path.split('.') {
        at = at.get(part)?;
    }
    (!at.is_null() && at.as_str() != Some("")).then_some(at)
}

/// A version's numbers: `Wazuh v4.14.7` and `4.14.7` both give `[4, 14, 7]`.
pub(super) fn version_numbers(text: &str) -> Option<Vec<u64>> {
    let t = text.trim();
    let t = t.strip_prefix("Wazuh ").unwrap_or(t).trim_start_matches(['v', 'V']);
    let numbers: Option<Vec<u64>> = t.split('.').map(|p| p.trim().parse::<u64>().ok()).collect();
    numbers.filter(|n| !n.is_empty())
}

/// How a scalar of an item compares with a value of a query, after the rules of the module.
fn compare(field: &str, actual: &Value, wanted: &str) -> Option<Ordering> {
    let text = match actual {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    if field == "version" {
        if let (Some(a), Some(b)) = (version_numbers(&text), version_numbers(wanted)) {
            return Some(a.cmp(&b));
        }
    }
    if let (Ok(a), Ok(b)) = (text.trim().parse::<f64>(), wanted.trim().parse::<f64>()) {
        return a.partial_cmp(&b);
    }
    Some(text.to_ascii_lowercase().cmp(&wanted.to_ascii_lowercase()))
}

fn scalar_matches(field: &str, actual: &Value, op: Op, wanted: &str) -> bool {
    match op {
        Op::Like => match actual {
            Value::String(s) => s.to_ascii_lowercase().contains(&wanted.to_ascii_lowercase()),
            Value::Number(n) => n.to_string().contains(wanted),
            _ => false,
        },
        Op::Eq => compare(field, actual, wanted) == Some(Ordering::Equal),
        Op::Ne => compare(field, actual, wanted) != Some(Ordering::Equal),
        Op::Lt => compare(field, actual, wanted) == Some(Ordering::Less),
        Op::Gt => compare(field, actual, wanted) == Some(Ordering::Greater),
    }
}

/// Whether `item`'s `field` stands in `op` to `wanted`.
pub fn term_matches(item: &Value, field: &str, op: Op, wanted: &str) -> bool {
    match lookup(item, field) {
        None => op == Op::Ne,
        Some(Value::Array(values)) => match op {
            // Not equal: none of the values is.
            Op::Ne => !values.iter().any(|v| scalar_matches(field, v, Op::Eq, wanted)),
            _ => values.iter().any(|v| scalar_matches(field, v, op, wanted)),
        },
        Some(v) => scalar_matches(field, v, op, wanted),
    }
}

/// Whether `item` satisfies `expr`.
pub fn matches(expr: &Expr, item: &Value) -> bool {
    match expr {
        Expr::Term { field, op, value } => term_matches(item, field, *op, value),
        Expr::And(parts) => parts.iter().all(|p| matches(p, item)),
        Expr::Or(parts) => parts.iter().any(|p| matches(p, item)),
    }
}

/// Wazuh's `search`: items with `text` in any of their values (`-text`: items without it),
/// without regard to ASCII case.
pub fn search_matches(item: &Value, text: &str) -> bool {
    let (negate, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let needle = text.to_ascii_lowercase();
    fn any(v: &Value, needle: &str) -> bool {
        match v {
            Value::String(s) => s.to_ascii_lowercase().contains(needle),
            Value::Number(n) => n.to_string().contains(needle),
            Value::Array(a) => a.iter().any(|v| any(v, needle)),
            Value::Object(o) => o.values().any(|v| any(v, needle)),
            _ => false,
        }
    }
    any(item, &needle) != negate
}

/// One key of `sort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: String,
    pub descending: bool,
}

/// Parses `sort` (`+name,-os.version`) over `fields`.
pub fn parse_sort(text: &str, fields: &[&str]) -> Result<Vec<SortKey>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (descending, name) = match t.as_bytes()[0] {
                b'-' => (true, t[1..].trim()),
                b'+' => (false, t[1..].trim()),
                _ => (false, t),
            };
            if fields.contains(&name) {
                Ok(SortKey { field: name.to_string(), descending })
            } else {
                Err(format!("sort: no field {name:?} here; use one of {}", fields.join(", ")))
            }
        })
        .collect()
}

/// Orders two items by `keys` (absent values first), then by `tiebreak`'s value.
pub fn order(a: &Value, b: &Value, keys: &[SortKey], tiebreak: &str) -> Ordering {
    for key in keys {
        let by = match (lookup(a, &key.field), lookup(b, &key.field)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => {
                let y_text = match y {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                compare(&key.field, x, &y_text).unwrap_or(Ordering::Equal)
            }
        };
        let by = if key.descending { by.reverse() } else { by };
        if by != Ordering::Equal {
            return by;
        }
    }
    let (x, y) = (lookup(a, tiebreak), lookup(b, tiebreak));
    match (x, y) {
        (Some(x), Some(y)) => compare(tiebreak, x, &y.as_str().map(str::to_string).unwrap_or_else(|| y.to_string()))
            .unwrap_or(Ordering::Equal),
        _ => Ordering::Equal,
    }
}

/// Checks `select` (comma-separated, dotted) against `fields`.
pub fn parse_select(text: &str, fields: &[&str]) -> Result<Vec<String>, String> {
    let chosen: Vec<String> = text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
    for f in &chosen {
        // A whole object (`os`) selects all of its fields.
        let known = fields.iter().any(|k| k == f || k.strip_prefix(f.as_str()).is_some_and(|r| r.starts_with('.')));
        if !known {
            return Err(format!("select: no field {f:?} here; use some of {}", fields.join(", ")));
        }
    }
    if chosen.is_empty() {
        return Err("select names no field".into());
    }
    Ok(chosen)
}

/// `item` with only the `chosen` (dotted) fields it has.
pub fn project(item: &Value, chosen: &[String]) -> Value {
    fn put(map: &mut serde_json::Map<String, Value>, parts: &[&str], value: Value) {
        match parts {
            [] => {}
            [last] => {
                map.insert(last.to_string(), value);
            }
            [first, rest @ ..] => {
                if let Value::Object(inner) =
                    map.entry(first.to_string()).or_insert_with(|| Value::Object(Default::default()))
                {
                    put(inner, rest, value);
                }
            }
        }
    }
    let mut out = serde_json::Map::new();
    for path in chosen {
        if let Some(value) = lookup(item, path) {
            put(&mut out, &path.split('.').collect::<Vec<_>>(), value.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[&str] = &["id", "name", "status", "group", "os.platform", "version"];

    fn agent(id: &str, name: &str, status: &str, groups: &[&str], platform: Option<&str>, version: &str) -> Value {
        let mut a = json!({ "id": id, "name": name, "status": status, "group": groups, "version": version });
        if let Some(p) = platform {
            a["os"] = json!({ "platform": p });
        }
        a
    }

    #[test]
    fn precedence_groups_and_every_operator() {
        let agents = [
            agent("001", "web-1", "active", &["default", "linux"], Some("ubuntu"), "Wazuh v4.14.7"),
            agent("002", "db-1", "disconnected", &["default"], Some("centos"), "Wazuh v4.9.0"),
            agent("010", "Web-2", "never_connected", &[], None, ""),
        ];
        let ids = |q: &str| -> Vec<&str> {
            let e = parse(q, FIELDS).unwrap_or_else(|e| panic!("{q}: {e}"));
            agents.iter().filter(|a| matches(&e, a)).map(|a| a["id"].as_str().unwrap_or("")).collect()
        };
        assert_eq!(ids("name=WEB-1"), ["001"], "case");
        assert_eq!(ids("name~web"), ["001", "010"]);
        assert_eq!(ids("status!=active"), ["002", "010"]);
        assert_eq!(ids("id<2"), ["001"], "ids as numbers");
        assert_eq!(ids("id>2"), ["010"]);
        assert_eq!(ids("version<4.14.7"), ["002"], "versions by their numbers");
        assert_eq!(ids("version>v4.9.0"), ["001"]);
        assert_eq!(ids("group=linux"), ["001"], "a list matches by one value");
        assert_eq!(ids("group!=default"), ["010"]);
        assert_eq!(ids("os.platform=ubuntu"), ["001"]);
        assert_eq!(ids("os.platform!=ubuntu"), ["002", "010"], "absent is not equal");
        assert_eq!(ids("status=active,status=disconnected;name~db"), ["001", "002"], "; before ,");
        assert_eq!(ids("(status=active,status=disconnected);name~db"), ["002"]);
        assert_eq!(ids("((id=1))"), ["001"]);
        for bad in ["os.name=x", "name", "=x", "(name=x", "name=x)", "name==x;", "name^x"] {
            assert!(parse(bad, FIELDS).is_err(), "{bad}");
        }
        let err = parse("os.name=x", FIELDS).err().unwrap_or_default();
        assert!(err.contains("os.name"), "{err}");
    }

    #[test]
    fn search_select_and_sort() {
        let a = agent("001", "web-1", "active", &["linux"], Some("ubuntu"), "Wazuh v4.14.7");
        let b = agent("002", "db-1", "active", &[], Some("centos"), "Wazuh v4.9.0");
        assert!(search_matches(&a, "UBUN") && !search_matches(&b, "ubun"));
        assert!(!search_matches(&a, "-ubun") && search_matches(&b, "-ubun"));
        assert_eq!(
            project(&a, &["os.platform".into(), "id".into()]),
            json!({ "os": { "platform": "ubuntu" }, "id": "001" })
        );
        assert!(parse_select("os.platform,os", &["os.platform", "id"]).is_ok());
        assert!(parse_select("os.nope", &["os.platform"]).is_err());
        let keys = parse_sort("-version", FIELDS).unwrap_or_default();
        assert_eq!(order(&a, &b, &keys, "id"), Ordering::Less, "4.14.7 above 4.9.0 when descending");
        let keys = parse_sort("+status", FIELDS).unwrap_or_default();
        assert_eq!(order(&a, &b, &keys, "id"), Ordering::Less, "ties broken by id");
        assert!(parse_sort("-nope", FIELDS).is_err());
    }
}
