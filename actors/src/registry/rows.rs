//! Full agent rows and pages of them, for the API.

use super::master::Registry;
use super::query::{AgentQuery, SortField};
use super::schema::{groups_of, groups_vec};
use super::store::StoreError;
use rusqlite::params;
use wazuh_cluster_protocol::message::AgentEntry;

/// A full agent row, for the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentRow {
    pub entry: AgentEntry,
    pub registered_at_ms: u64,
    pub node_name: String,
    pub status: String,
    pub last_keepalive_ms: Option<u64>,
    pub version: Option<String>,
    pub os_name: Option<String>,
    pub os_platform: Option<String>,
    pub os_version: Option<String>,
    /// Enrolled through a worker whose delivery of the key is not confirmed yet.
    pub pending: bool,
    /// What its last keep-alive said.
    pub info: Option<wazuh_cluster_protocol::agent::keepalive::KeepAlive>,
    pub group_config_status: Option<String>,
    pub peer_ip: Option<String>,
}

/// The columns [`agent_row`] reads, in its order.
const ROW_COLUMNS: &str =
    "id, name, ip, key, groups, registered_at, node_name, status, last_keepalive, version, os_name,
    os_platform, os_version, pending, info, group_config_status, peer_ip";

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        entry: AgentEntry {
            id: r.get(0)?,
            name: r.get(1)?,
            ip: r.get(2)?,
            key: r.get(3)?,
            groups: groups_vec(&r.get::<_, String>(4)?),
        },
        registered_at_ms: r.get::<_, i64>(5)? as u64,
        node_name: r.get(6)?,
        status: r.get(7)?,
        last_keepalive_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        version: r.get(9)?,
        os_name: r.get(10)?,
        os_platform: r.get(11)?,
        os_version: r.get(12)?,
        pending: r.get::<_, i64>(13)? != 0,
        info: r.get::<_, Option<String>>(14)?.and_then(|t| serde_json::from_str(&t).ok()),
        group_config_status: r.get(15)?,
        peer_ip: r.get(16)?,
    })
}

impl Registry {
    /// Full rows for the API, in id order (only agent `only` when given).
    pub fn rows(&self, only: Option<u32>) -> Result<Vec<AgentRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM agents WHERE ?1 IS NULL OR id = ?1 ORDER BY id"))?;
        let rows = stmt.query_map(params![only], agent_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One page of agents and how many match in all. The total comes from the in-memory counts
    /// unless a group is asked for.
    pub fn page(&self, q: &AgentQuery) -> Result<(u64, Vec<AgentRow>), StoreError> {
        let counted = q.counted_in_memory().then(|| self.counts.count(q.status.as_deref(), q.node.as_deref()));
        page_on(&self.table.conn, q, counted)
    }
}

/// One agent's row as a page of the API reads it, borrowed from SQLite for one step of the query:
/// written out without each field copied first ([`super::reader::RegistryReader::page_with`]).
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub id: u32,
    pub name: &'a str,
    pub ip: &'a str,
    /// As stored: comma-separated.
    pub groups: &'a str,
    pub registered_at_ms: u64,
    pub node_name: &'a str,
    pub status: &'a str,
    pub last_keepalive_ms: Option<u64>,
    pub version: Option<&'a str>,
    /// What its last keep-alive said, as stored: a `KeepAlive` in JSON.
    pub info: Option<&'a str>,
    pub group_config_status: Option<&'a str>,
    pub peer_ip: Option<&'a str>,
}

impl RowRef<'_> {
    /// Its groups, in their order.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        groups_of(self.groups)
    }
}

/// The columns [`row_ref`] reads, in its order (no key: a page never shows one).
const PAGE_COLUMNS: &str =
    "id, name, ip, groups, registered_at, node_name, status, last_keepalive, version, info, group_config_status, peer_ip";

fn row_ref<'a>(r: &'a rusqlite::Row<'_>) -> rusqlite::Result<RowRef<'a>> {
    let bad = |i: usize, e: rusqlite::types::FromSqlError| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    let text = move |i: usize| r.get_ref(i)?.as_str().map_err(|e| bad(i, e));
    let maybe = move |i: usize| r.get_ref(i)?.as_str_or_null().map_err(|e| bad(i, e));
    Ok(RowRef {
        id: r.get(0)?,
        name: text(1)?,
        ip: text(2)?,
        groups: text(3)?,
        registered_at_ms: r.get::<_, i64>(4)? as u64,
        node_name: text(5)?,
        status: text(6)?,
        last_keepalive_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        version: maybe(8)?,
        info: maybe(9)?,
        group_config_status: maybe(10)?,
        peer_ip: maybe(11)?,
    })
}

/// How many agents match `q` in all: `counted`, or counted in SQL.
fn total_on(conn: &rusqlite::Connection, q: &AgentQuery, counted: Option<u64>) -> Result<u64, StoreError> {
    if let Some(total) = counted {
        return Ok(total);
    }
    let (filter, args) = q.where_clause();
    let sql = format!("SELECT COUNT(*) FROM agents {filter}");
    Ok(conn.prepare_cached(&sql)?.query_row(rusqlite::params_from_iter(&args), |r| r.get::<_, i64>(0))? as u64)
}

/// The query of one page of `columns` for `q`, and its arguments.
fn page_sql(q: &AgentQuery, columns: &str) -> (String, Vec<rusqlite::types::Value>) {
    let (filter, mut args) = q.where_clause();
    let all = [
        SortField::Name,
        SortField::Ip,
        SortField::Status,
        SortField::NodeName,
        SortField::Version,
        SortField::RegisteredAt,
        SortField::LastKeepAlive,
    ];
    let sql = format!("SELECT {columns} FROM agents {filter} {} {}", q.order_clause(&all), q.page_clause(&mut args));
    (sql, args)
}

/// One page of agents on `conn` and how many match in all: `counted`, or counted in SQL.
pub(crate) fn page_on(
    conn: &rusqlite::Connection,
    q: &AgentQuery,
    counted: Option<u64>,
) -> Result<(u64, Vec<AgentRow>), StoreError> {
    let total = total_on(conn, q, counted)?;
    let (sql, args) = page_sql(q, ROW_COLUMNS);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(&args), agent_row)?;
    Ok((total, rows.collect::<Result<_, _>>()?))
}

/// [`page_on`], each row handed to `each` as SQLite holds it; how many match in all.
pub(crate) fn page_on_with(
    conn: &rusqlite::Connection,
    q: &AgentQuery,
    counted: Option<u64>,
    each: &mut dyn FnMut(&RowRef<'_>),
) -> Result<u64, StoreError> {
    let total = total_on(conn, q, counted)?;
    let (sql, args) = page_sql(q, PAGE_COLUMNS);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(&args))?;
    while let Some(r) = rows.next()? {
        each(&row_ref(r)?);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{agent, enroll, status};

    #[test]
    fn pages_hold_every_agent_exactly_once_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..230 {
            ids.push(enroll(&mut reg, &agent(&format!("p{:03}", (i * 7919) % 1000), None)).unwrap().id);
        }
        for id in ids.iter().step_by(3) {
            reg.store_statuses("worker-1", &[status(*id, "active", Some(*id as u64 % 17))]).unwrap();
        }
        for sort in ["", "-id", "+name", "-name", "lastKeepAlive", "-status,+name", "node_name"] {
            let mut seen = Vec::new();
            let mut offset = 0;
            loop {
                let q = AgentQuery {
                    sort: super::super::query::parse_sort(sort).unwrap(),
                    offset,
                    limit: 17,
                    ..AgentQuery::default()
                };
                let (total, page) = reg.page(&q).unwrap();
                assert_eq!(total, 230, "sort {sort}");
                if page.is_empty() {
                    break;
                }
                offset += page.len() as u64;
                seen.extend(page.into_iter().map(|r| r.entry.id));
            }
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 230, "sort {sort}: every agent exactly once");
            assert_eq!(seen.len(), 230, "sort {sort}: no agent twice");
        }
        let q = AgentQuery { status: Some("active".into()), limit: 1000, ..AgentQuery::default() };
        let (total, page) = reg.page(&q).unwrap();
        assert_eq!((total, page.len()), (77, 77));
        let q = AgentQuery { group: Some("default".into()), limit: 5, ..AgentQuery::default() };
        assert_eq!(reg.page(&q).unwrap().0, 230);
        let q = AgentQuery { group: Some("defaul".into()), ..AgentQuery::default() };
        assert_eq!(reg.page(&q).unwrap().0, 0, "a group is matched whole");
    }
}
