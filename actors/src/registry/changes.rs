//! The change log workers follow: every change with its sequence number, written in the
//! transaction that makes it, read back as "everything after N" (or "too old: take a snapshot").

use super::master::Registry;
use super::schema::{groups_text, groups_vec, CHANGELOG_KEEP};
use super::store::StoreError;
use rusqlite::params;
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

impl Registry {
    pub(crate) fn log_change(&mut self, change: &AgentChange) -> Result<(), StoreError> {
        self.table.seq += 1;
        let (op, id, name, ip, key, groups) = match change {
            // A user: its role in `ip`, its hash in `key`, its generation in `groups`.
            AgentChange::UserSet(u) => (
                "user",
                u.id,
                Some(u.name.clone()),
                Some(u.role.as_str().to_string()),
                Some(u.password_hash.clone()),
                Some(u.generation.to_string()),
            ),
            AgentChange::UserRemoved { name } => ("user_removed", 0, Some(name.clone()), None, None, None),
            AgentChange::Added(e) => (
                "added",
                e.id,
                Some(e.name.clone()),
                Some(e.ip.clone()),
                Some(e.key.clone()),
                Some(groups_text(&e.groups)),
            ),
            AgentChange::Removed { id } => ("removed", *id, None, None, None, None),
            AgentChange::GroupsChanged { id, groups } => ("groups", *id, None, None, None, Some(groups_text(groups))),
        };
        self.table
            .conn
            .prepare_cached(
                "INSERT INTO changes (seq, op, id, name, ip, key, groups) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![self.table.seq as i64, op, id, name, ip, key, groups])?;
        self.table
            .conn
            .prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'seq'")?
            .execute(params![self.table.seq as i64])?;
        if self.table.seq > CHANGELOG_KEEP && self.table.seq % 1000 == 0 {
            self.table
                .conn
                .prepare_cached("DELETE FROM changes WHERE seq <= ?1")?
                .execute(params![(self.table.seq - CHANGELOG_KEEP) as i64])?;
        }
        self.table.derived.record(change.clone());
        Ok(())
    }

    #[cfg(test)]
    /// The changes after position `after` (all of them), or the whole table as `Added` entries when
    /// the changelog no longer reaches back that far (or `after` is beyond the table): (snapshot?,
    /// changes).
    pub(crate) fn changes_since(&self, after: u64) -> Result<(bool, Vec<AgentChange>), StoreError> {
        let (snapshot, changes, _) = self.changes_since_limited(after, usize::MAX)?;
        Ok((snapshot, changes))
    }

    /// Like [`Registry::changes_since`], at most `limit` changes of a delta (a snapshot is always
    /// whole): (snapshot?, changes, the position they lead to).
    pub(crate) fn changes_since_limited(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(bool, Vec<AgentChange>, u64), StoreError> {
        let oldest: Option<i64> =
            self.table.conn.prepare_cached("SELECT MIN(seq) FROM changes")?.query_row([], |r| r.get(0))?;
        let delta_ok =
            after <= self.table.seq && (after == self.table.seq || oldest.is_some_and(|o| o as u64 <= after + 1));
        if !delta_ok {
            let mut all: Vec<AgentChange> = self.entries()?.into_iter().map(AgentChange::Added).collect();
            all.extend(self.users()?.into_iter().map(AgentChange::UserSet));
            return Ok((true, all, self.table.seq));
        }
        let mut stmt = self.table.conn.prepare_cached(
            "SELECT seq, op, id, name, ip, key, groups FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after as i64, limit], |r| {
            let seq: i64 = r.get(0)?;
            let op: String = r.get(1)?;
            let id: u32 = r.get(2)?;
            let groups = r.get::<_, Option<String>>(6)?.map(|g| groups_vec(&g)).unwrap_or_default();
            let change = match op.as_str() {
                "added" => AgentChange::Added(AgentEntry {
                    id,
                    name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    ip: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    key: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    groups,
                }),
                "removed" => AgentChange::Removed { id },
                "user" => AgentChange::UserSet(wazuh_cluster_protocol::message::ApiUser {
                    id,
                    name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    password_hash: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    role: r
                        .get::<_, Option<String>>(4)?
                        .and_then(|role| wazuh_cluster_protocol::message::ApiRole::parse(&role))
                        .unwrap_or(wazuh_cluster_protocol::message::ApiRole::Readonly),
                    generation: r.get::<_, Option<String>>(6)?.and_then(|g| g.parse().ok()).unwrap_or(0),
                }),
                "user_removed" => AgentChange::UserRemoved { name: r.get::<_, Option<String>>(3)?.unwrap_or_default() },
                _ => AgentChange::GroupsChanged { id, groups },
            };
            Ok((seq as u64, change))
        })?;
        let mut changes = Vec::new();
        let mut to = after;
        for row in rows {
            let (seq, change) = row?;
            to = seq;
            changes.push(change);
        }
        // Fewer than asked: the delta reaches the current position.
        if (changes.len() as i64) < limit {
            to = self.table.seq;
        }
        Ok((false, changes, to))
    }
}
