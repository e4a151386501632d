//! Pages of agents for the API, as Wazuh's `GET /agents` gives them: filters, a sort, an offset and
//! a limit (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]). Sorting and paging run in SQLite, so
//! a page costs the rows it returns (plus the rows skipped by a deep offset), not the registry.

use rusqlite::types::Value;

/// Agents per page when the caller does not say (Wazuh's default).
pub(crate) const DEFAULT_LIMIT: u64 = 500;
/// Most agents per page (Wazuh's maximum).
pub const MAX_LIMIT: u64 = 100_000;

/// What an agent list can be sorted by: Wazuh's field names (and ours for the same columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Id,
    Name,
    Ip,
    Status,
    NodeName,
    Version,
    RegisteredAt,
    LastKeepAlive,
}

impl SortField {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "id" => SortField::Id,
            "name" => SortField::Name,
            "ip" => SortField::Ip,
            "status" => SortField::Status,
            "node_name" => SortField::NodeName,
            "version" => SortField::Version,
            "dateAdd" | "registered_at" => SortField::RegisteredAt,
            "lastKeepAlive" | "last_keepalive" => SortField::LastKeepAlive,
            _ => return None,
        })
    }

    /// The column: a fixed name, never text from the request.
    pub(crate) fn column(self) -> &'static str {
        match self {
            SortField::Id => "id",
            SortField::Name => "name",
            SortField::Ip => "ip",
            SortField::Status => "status",
            SortField::NodeName => "node_name",
            SortField::Version => "version",
            SortField::RegisteredAt => "registered_at",
            SortField::LastKeepAlive => "last_keepalive",
        }
    }
}

/// One sort key: the field and whether it runs high to low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub field: SortField,
    pub descending: bool,
}

/// Why a query was refused (the API answers 400 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("cannot sort by {0:?}: use id, name, ip, status, node_name, version, dateAdd or lastKeepAlive")]
    SortField(String),
    #[error("limit must be between 1 and {MAX_LIMIT}, not {0}")]
    Limit(u64),
    #[error("agents_list may name at most {MAX_IDS} agents")]
    TooManyIds,
    #[error("q term {0:?}: only field=value terms joined by ';' are supported")]
    NotATerm(String),
    #[error("q term {0:?}: only = is supported")]
    Operator(String),
    #[error("q term {0:?}: not an agent id")]
    NotAnId(String),
    #[error("q field {0:?}: use status, node_name, group, name or id")]
    Field(String),
}

/// Most agents one `agents_list` may name.
pub const MAX_IDS: usize = 10_000;

/// `+name,-id` (Wazuh's syntax; no sign means ascending).
pub fn parse_sort(text: &str) -> Result<Vec<SortKey>, QueryError> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (descending, name) = match t.as_bytes()[0] {
                b'-' => (true, &t[1..]),
                b'+' | b' ' => (false, &t[1..]),
                _ => (false, t),
            };
            SortField::parse(name.trim())
                .map(|field| SortKey { field, descending })
                .ok_or_else(|| QueryError::SortField(name.into()))
        })
        .collect()
}

/// Which agents, in what order, which page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentQuery {
    pub status: Option<String>,
    pub node: Option<String>,
    pub group: Option<String>,
    /// Only these agents (`agents_list`), when not empty.
    pub ids: Vec<u32>,
    /// An exact name (`q=name=...`).
    pub name: Option<String>,
    /// Agents whose id, name or address contains this text (`search`).
    pub search: Option<String>,
    pub sort: Vec<SortKey>,
    pub offset: u64,
    pub limit: u64,
}

impl Default for AgentQuery {
    fn default() -> Self {
        Self {
            status: None,
            node: None,
            group: None,
            ids: Vec::new(),
            name: None,
            search: None,
            sort: Vec::new(),
            offset: 0,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl AgentQuery {
    /// Whether the in-memory counts can say how many match (no filter they do not keep).
    pub(crate) fn counted_in_memory(&self) -> bool {
        self.group.is_none() && self.ids.is_empty() && self.name.is_none() && self.search.is_none()
    }

    /// Applies Wazuh's `q` for the fields this API filters on: `field=value` terms joined by `;`
    /// (and), over `status`, `node_name`, `group`, `name` and `id`.
    pub fn with_q(mut self, q: &str) -> Result<Self, QueryError> {
        for term in q.split(';').map(str::trim).filter(|t| !t.is_empty()) {
            let Some((field, value)) = term.split_once('=') else {
                return Err(QueryError::NotATerm(term.to_string()));
            };
            if value.contains(['<', '>', '~', '!', ',', '(', ')']) || field.contains(['<', '>', '~', '!']) {
                return Err(QueryError::Operator(term.to_string()));
            }
            let value = value.to_string();
            match field.trim() {
                "status" => self.status = Some(value),
                "node_name" => self.node = Some(value),
                "group" => self.group = Some(value),
                "name" => self.name = Some(value),
                "id" => match crate::registry::parse_id(&value) {
                    Some(id) => self.ids.push(id),
                    None => return Err(QueryError::NotAnId(term.to_string())),
                },
                other => return Err(QueryError::Field(other.to_string())),
            }
        }
        Ok(self)
    }

    /// The query with `limit` checked against [`MAX_LIMIT`].
    pub fn with_limit(mut self, limit: Option<u64>) -> Result<Self, QueryError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(QueryError::Limit(limit));
        }
        self.limit = limit;
        Ok(self)
    }

    /// `WHERE ...` (or nothing) with its parameters (status and node are columns of the master's
    /// table only).
    pub(crate) fn where_clause(&self) -> (String, Vec<Value>) {
        let mut terms = Vec::new();
        let mut params = Vec::new();
        if let Some(s) = &self.status {
            params.push(Value::Text(s.clone()));
            terms.push(format!("status = ?{}", params.len()));
        }
        if let Some(n) = &self.node {
            params.push(Value::Text(n.clone()));
            terms.push(format!("node_name = ?{}", params.len()));
        }
        if let Some(g) = &self.group {
            params.push(Value::Text(g.clone()));
            terms.push(format!("instr(',' || groups || ',', ',' || ?{} || ',') > 0", params.len()));
        }
        if !self.ids.is_empty() {
            let first = params.len() + 1;
            params.extend(self.ids.iter().map(|id| Value::Integer(i64::from(*id))));
            let marks: Vec<String> = (first..=params.len()).map(|i| format!("?{i}")).collect();
            terms.push(format!("id IN ({})", marks.join(", ")));
        }
        if let Some(n) = &self.name {
            params.push(Value::Text(n.clone()));
            terms.push(format!("name = ?{}", params.len()));
        }
        if let Some(text) = &self.search {
            // LIKE with the text's own % and _ taken literally.
            let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            params.push(Value::Text(format!("%{escaped}%")));
            let n = params.len();
            terms.push(format!(
                "(name LIKE ?{n} ESCAPE '\\' OR ip LIKE ?{n} ESCAPE '\\' OR printf('%03d', id) LIKE ?{n} ESCAPE '\\')"
            ));
        }
        if terms.is_empty() {
            (String::new(), params)
        } else {
            (format!("WHERE {}", terms.join(" AND ")), params)
        }
    }

    /// `LIMIT ?n OFFSET ?m`, its two parameters appended to `params`.
    pub(crate) fn page_clause(&self, params: &mut Vec<Value>) -> String {
        params.push(Value::Integer(self.limit.min(i64::MAX as u64) as i64));
        params.push(Value::Integer(self.offset.min(i64::MAX as u64) as i64));
        format!("LIMIT ?{} OFFSET ?{}", params.len() - 1, params.len())
    }

    /// `ORDER BY ...` over `allowed` fields (others are ignored), always ending with the id so that
    /// pages never overlap or miss an agent.
    pub(crate) fn order_clause(&self, allowed: &[SortField]) -> String {
        let mut keys: Vec<String> = self
            .sort
            .iter()
            .filter(|k| allowed.contains(&k.field) && k.field != SortField::Id)
            .map(|k| format!("{} {}", k.field.column(), if k.descending { "DESC" } else { "ASC" }))
            .collect();
        let id_desc = self.sort.iter().find(|k| k.field == SortField::Id).is_some_and(|k| k.descending);
        keys.push(format!("id {}", if id_desc { "DESC" } else { "ASC" }));
        format!("ORDER BY {}", keys.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_parse_as_wazuh_writes_them() {
        assert_eq!(
            parse_sort("+name,-lastKeepAlive,id").unwrap(),
            vec![
                SortKey { field: SortField::Name, descending: false },
                SortKey { field: SortField::LastKeepAlive, descending: true },
                SortKey { field: SortField::Id, descending: false },
            ]
        );
        assert_eq!(
            parse_sort("-name; DROP TABLE agents"),
            Err(QueryError::SortField("name; DROP TABLE agents".into()))
        );
        assert!(parse_sort("").unwrap().is_empty());
    }

    #[test]
    fn clauses_use_parameters_and_end_with_the_id() {
        let q = AgentQuery {
            status: Some("active".into()),
            group: Some("linux".into()),
            sort: parse_sort("-status,-id").unwrap(),
            ..AgentQuery::default()
        };
        let (w, p) = q.where_clause();
        assert_eq!(w, "WHERE status = ?1 AND instr(',' || groups || ',', ',' || ?2 || ',') > 0");
        assert_eq!(p, vec![Value::Text("active".into()), Value::Text("linux".into())]);
        assert_eq!(q.order_clause(&[SortField::Status]), "ORDER BY status DESC, id DESC");
        assert_eq!(q.order_clause(&[]), "ORDER BY id DESC");
        assert_eq!(AgentQuery::default().with_limit(Some(0)), Err(QueryError::Limit(0)));
        assert!(AgentQuery::default().with_limit(Some(MAX_LIMIT)).is_ok());
        // agents_list, an exact name and a search, all as parameters.
        let q = AgentQuery { ids: vec![1, 7], search: Some("50%_x".into()), ..AgentQuery::default() }
            .with_q("status=active;name=web-1")
            .unwrap();
        let (w, p) = q.where_clause();
        assert!(w.contains("id IN (?2, ?3)") && w.contains("name = ?4") && w.contains("LIKE ?5"), "{w}");
        assert_eq!(p.last(), Some(&Value::Text("%50\\%\\_x%".into())));
        assert!(!q.counted_in_memory());
        for bad in ["status>1", "os.name=x", "name", "id=abc"] {
            assert!(AgentQuery::default().with_q(bad).is_err(), "{bad}");
        }
        assert_eq!(AgentQuery::default().with_limit(None).unwrap().limit, DEFAULT_LIMIT);
    }
}
