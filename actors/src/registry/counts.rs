//! Agent counts by connection status, by node and by group-configuration status, kept up to date
//! as the master's registry changes, so that `GET /agents/summary/status` and `/metrics` answer
//! without reading the agent table (a few bytes per agent: a status, a node and a flag).

use std::collections::{BTreeMap, HashMap};

/// The connection statuses an agent can have (Wazuh's).
pub(crate) const STATUSES: [&str; 4] = ["never_connected", "pending", "active", "disconnected"];

/// Index of `status` in [`STATUSES`].
pub(crate) fn status_code(status: &str) -> Option<u8> {
    STATUSES.iter().position(|s| *s == status).map(|i| i as u8)
}

/// One agent's place in the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cell {
    status: u8,
    node: u16,
    /// 0: unknown, 1: synced, 2: not synced.
    config: u8,
}

fn config_code(config: Option<&str>) -> u8 {
    match config {
        Some("synced") => 1,
        Some("not synced") => 2,
        _ => 0,
    }
}

/// The counts (see the module documentation).
#[derive(Debug, Default)]
pub struct StatusCounts {
    /// Node names, interned: an agent holds an index.
    nodes: Vec<String>,
    agents: HashMap<u32, Cell>,
    by_status_node: HashMap<(u8, u16), u64>,
    by_config: [u64; 3],
}

/// What `GET /agents/summary/status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatusSummary {
    /// Agents by status (every status present, zero or not), plus `total`.
    pub connection: BTreeMap<String, u64>,
    /// `synced`, `not_synced`, `total`.
    pub configuration: BTreeMap<String, u64>,
    /// Per node the agents report to: agents by status.
    pub nodes: BTreeMap<String, BTreeMap<String, u64>>,
}

impl StatusSummary {
    /// Agents with `status` reporting to `node` (either `None`: any), as [`StatusCounts::count`]
    /// counts them.
    pub fn count(&self, status: Option<&str>, node: Option<&str>) -> u64 {
        match (status, node) {
            (None, None) => self.connection.get("total").copied().unwrap_or(0),
            (Some(s), None) if s != "total" => self.connection.get(s).copied().unwrap_or(0),
            (Some(_), None) => 0,
            (s, Some(n)) => self.nodes.get(n).map_or(0, |by| match s {
                Some(s) => by.get(s).copied().unwrap_or(0),
                None => by.values().sum(),
            }),
        }
    }
}

impl StatusCounts {
    fn node_index(&mut self, node: &str) -> u16 {
        if let Some(i) = self.nodes.iter().position(|n| n == node) {
            return i as u16;
        }
        // Node names are few (a cluster's nodes); beyond u16 they share the last slot.
        if self.nodes.len() >= u16::MAX as usize {
            return u16::MAX - 1;
        }
        self.nodes.push(node.to_string());
        (self.nodes.len() - 1) as u16
    }

    fn add(&mut self, cell: Cell, by: i64) {
        let slot = self.by_status_node.entry((cell.status, cell.node)).or_default();
        *slot = slot.saturating_add_signed(by);
        let c = &mut self.by_config[cell.config as usize];
        *c = c.saturating_add_signed(by);
    }

    /// The node agent `id` is active on, if it is active.
    pub(crate) fn active_on(&self, id: u32) -> Option<&str> {
        let cell = self.agents.get(&id)?;
        if cell.status != 2 {
            return None;
        }
        self.nodes.get(cell.node as usize).map(String::as_str)
    }

    /// Agent `id` now has `status` (one of [`STATUSES`]; anything else counts as never connected),
    /// reports to `node`, and its group configuration is `config` (`synced`, `not synced`, unknown).
    pub fn set(&mut self, id: u32, status: &str, node: &str, config: Option<&str>) {
        let cell =
            Cell { status: status_code(status).unwrap_or(0), node: self.node_index(node), config: config_code(config) };
        if let Some(old) = self.agents.insert(id, cell) {
            self.add(old, -1);
        }
        self.add(cell, 1);
    }

    /// [`StatusCounts::set`] keeping whatever of the three is `None`.
    pub fn update(&mut self, id: u32, status: &str, node: &str, config: Option<&str>) {
        let keep = self.agents.get(&id).map(|c| c.config).unwrap_or(0);
        let config = match config {
            Some(c) => Some(c),
            None => match keep {
                1 => Some("synced"),
                2 => Some("not synced"),
                _ => None,
            },
        };
        self.set(id, status, node, config);
    }

    pub fn remove(&mut self, id: u32) {
        if let Some(old) = self.agents.remove(&id) {
            self.add(old, -1);
        }
    }

    pub fn clear(&mut self) {
        *self = StatusCounts::default();
    }

    pub fn total(&self) -> u64 {
        self.agents.len() as u64
    }

    /// Agents with `status` (any when `None`) reporting to `node` (any when `None`).
    pub fn count(&self, status: Option<&str>, node: Option<&str>) -> u64 {
        let status = match status {
            Some(s) => match status_code(s) {
                Some(c) => Some(c),
                None => return 0,
            },
            None => None,
        };
        let node = match node {
            Some(n) => match self.nodes.iter().position(|x| x == n) {
                Some(i) => Some(i as u16),
                None => return 0,
            },
            None => None,
        };
        self.by_status_node
            .iter()
            .filter(|((s, n), _)| status.is_none_or(|x| x == *s) && node.is_none_or(|x| x == *n))
            .map(|(_, c)| c)
            .sum()
    }

    pub fn summary(&self) -> StatusSummary {
        let mut connection: BTreeMap<String, u64> = STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
        let mut nodes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((status, node), count) in &self.by_status_node {
            if *count == 0 {
                continue;
            }
            let status = STATUSES[*status as usize % STATUSES.len()].to_string();
            *connection.entry(status.clone()).or_default() += count;
            let name = self.nodes.get(*node as usize).cloned().unwrap_or_default();
            *nodes.entry(name).or_default().entry(status).or_default() += count;
        }
        connection.insert("total".into(), self.total());
        let configuration = BTreeMap::from([
            ("synced".to_string(), self.by_config[1]),
            ("not_synced".to_string(), self.by_config[2]),
            ("total".to_string(), self.total()),
        ]);
        StatusSummary { connection, configuration, nodes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_every_change_and_removal() {
        let mut c = StatusCounts::default();
        c.set(1, "never_connected", "master", None);
        c.set(2, "never_connected", "worker-1", None);
        c.update(1, "active", "worker-1", Some("synced"));
        c.update(2, "active", "worker-2", None);
        c.update(2, "disconnected", "worker-2", None);
        assert_eq!(c.count(Some("active"), None), 1);
        assert_eq!(c.count(None, Some("worker-2")), 1);
        assert_eq!(c.count(Some("active"), Some("worker-2")), 0);
        assert_eq!(c.count(Some("bogus"), None), 0);
        let s = c.summary();
        assert_eq!(s.connection["active"], 1);
        assert_eq!(s.connection["disconnected"], 1);
        assert_eq!(s.connection["pending"], 0);
        assert_eq!(s.connection["total"], 2);
        assert_eq!(s.configuration["synced"], 1);
        assert_eq!(s.nodes["worker-1"]["active"], 1);
        assert!(!s.nodes.contains_key("master"), "no agent reports to the master any more");
        c.remove(1);
        c.remove(1);
        let s = c.summary();
        assert_eq!((s.connection["active"], s.connection["total"], s.configuration["synced"]), (0, 1, 0));
    }
}
