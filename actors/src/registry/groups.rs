//! Groups: their rows, their `etc/shared/<group>` directories (made with the default
//! `agent.conf`, removed with the group after its commit, crash-safe through a tombstone), and
//! agents' memberships.

use super::master::{now_ms, Registry};
use super::schema::{fmt_id, groups_text, DEFAULT_GROUP};
use super::store::StoreError;
use rusqlite::params;
use std::collections::HashMap;
use std::path::Path;
use wazuh_cluster_protocol::agent::enrollment::MAX_GROUPS;
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

impl Registry {
    /// Makes the group's directory, with an empty `agent.conf` as Wazuh does, if it has none.
    /// Removes `etc/shared/<group>` whole (a symlink there is removed, never followed): first
    /// renamed aside, so that file sync never sees half of it.
    pub(super) fn remove_group_dir(&self, group: &str) -> Result<(), StoreError> {
        let dir = self.table.data_dir.join("etc/shared").join(group);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |error| StoreError::Io { path, error }
        };
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&dir)(e)),
            Ok(m) if !m.is_dir() => return std::fs::remove_file(&dir).map_err(io(&dir)),
            Ok(_) => {}
        }
        let trash = self.table.data_dir.join("var/sync/trash");
        std::fs::create_dir_all(&trash).map_err(io(&trash))?;
        let aside = trash.join(format!("{group}.{}", crate::backoff::random_u64()));
        std::fs::rename(&dir, &aside).map_err(io(&dir))?;
        std::fs::remove_dir_all(&aside).map_err(io(&aside))
    }

    /// Directories of deleted groups that a crash left behind (the deletion committed, the
    /// directory not removed yet) go: a group's files never outlive it.
    pub(super) fn remove_deleted_group_dirs(&mut self) -> Result<(), StoreError> {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM deleted_groups WHERE name NOT IN (SELECT name FROM groups)")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in names {
            if wazuh_cluster_protocol::agent::enrollment::valid_group_name(&name) {
                self.remove_group_dir(&name)?;
            }
        }
        Ok(())
    }

    pub(super) fn ensure_group_dir(&self, group: &str) -> Result<(), StoreError> {
        let dir = self.table.data_dir.join("etc/shared").join(group);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |error| StoreError::Io { path, error }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let conf = dir.join("agent.conf");
        if std::fs::symlink_metadata(&conf).is_err() {
            // Whole or not at all: file sync (which skips `.tmp` names) never sees half of it.
            let tmp = dir.join("agent.conf.tmp");
            std::fs::write(&tmp, "<agent_config>\n\n  <!-- Shared agent configuration here -->\n\n</agent_config>\n")
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &conf).map_err(io(&conf))?;
        }
        Ok(())
    }

    /// Group names with their agent counts.
    pub fn groups(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for e in self.entries()? {
            for g in e.groups {
                *counts.entry(g).or_default() += 1;
            }
        }
        let mut stmt = self.table.conn.prepare_cached("SELECT name FROM groups ORDER BY name")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(names
            .into_iter()
            .map(|n| {
                let c = counts.get(&n).copied().unwrap_or(0);
                (n, c)
            })
            .collect())
    }

    pub fn create_group(&mut self, name: &str) -> Result<bool, StoreError> {
        self.create_group_at(name, now_ms())
    }

    /// [`Registry::create_group`] with the time it was created.
    pub(crate) fn create_group_at(&mut self, name: &str, at_ms: u64) -> Result<bool, StoreError> {
        if !wazuh_cluster_protocol::agent::enrollment::valid_group_name(name) {
            return Err(StoreError::Invalid(format!(
                "invalid group name {name:?}: use [A-Za-z0-9_.-], not starting with a dot, not \"all\""
            )));
        }
        let n = self
            .conn
            .execute("INSERT OR IGNORE INTO groups (name, created_at) VALUES (?1, ?2)", params![name, at_ms as i64])?;
        if n > 0 {
            // A group deleted before starts afresh: whatever its old directory held is gone.
            let was_deleted = self.table.conn.execute("DELETE FROM deleted_groups WHERE name = ?1", params![name])? > 0;
            if was_deleted || self.removals.iter().any(|r| r == name) {
                self.removals.retain(|r| r != name);
                self.removals_mark = self.removals_mark.min(self.removals.len());
                self.remove_group_dir(name)?;
            }
        }
        self.ensure_group_dir(name)?;
        Ok(n > 0)
    }

    pub(super) fn set_groups(&mut self, id: u32, groups: Vec<String>) -> Result<(), StoreError> {
        let Some(old) = self.entry(id)? else { return Err(StoreError::NoSuchAgent(id)) };
        if old.groups == groups {
            return Ok(());
        }
        self.table
            .conn
            .prepare_cached("UPDATE agents SET groups = ?1 WHERE id = ?2")?
            .execute(params![groups_text(&groups), id])?;
        self.table.hash.toggle(&old);
        let new = AgentEntry { groups: groups.clone(), ..old };
        self.table.hash.toggle(&new);
        self.log_change(&AgentChange::GroupsChanged { id, groups })
    }

    /// Deletes a group; its agents lose it (and fall back to `default` if it was their only one).
    pub fn delete_group(&mut self, name: &str) -> Result<(), StoreError> {
        if name == DEFAULT_GROUP {
            return Err(StoreError::Invalid("the default group cannot be deleted".into()));
        }
        if self.table.conn.prepare_cached("DELETE FROM groups WHERE name = ?1")?.execute(params![name])? == 0 {
            return Err(StoreError::NoSuchGroup(name.into()));
        }
        // Its directory goes once this commits (a crash before that: at the next start).
        self.table
            .conn
            .prepare_cached("INSERT OR REPLACE INTO deleted_groups (name, at) VALUES (?1, ?2)")?
            .execute(params![name, now_ms() as i64])?;
        self.removals.push(name.to_string());
        for e in self.entries()? {
            if e.groups.iter().any(|g| g == name) {
                let mut groups: Vec<String> = e.groups.into_iter().filter(|g| g != name).collect();
                if groups.is_empty() {
                    groups.push(DEFAULT_GROUP.into());
                }
                self.set_groups(e.id, groups)?;
            }
        }
        Ok(())
    }

    pub fn assign(&mut self, id: u32, group: &str) -> Result<(), StoreError> {
        let exists: bool = self
            .conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM groups WHERE name = ?1)")?
            .query_row(params![group], |r| r.get(0))?;
        if !exists {
            return Err(StoreError::NoSuchGroup(group.into()));
        }
        let Some(e) = self.entry(id)? else { return Err(StoreError::NoSuchAgent(id)) };
        if e.groups.iter().any(|g| g == group) {
            return Ok(());
        }
        if e.groups.len() >= MAX_GROUPS {
            return Err(StoreError::Invalid(format!("agent {} already has {MAX_GROUPS} groups", fmt_id(id))));
        }
        let mut groups = e.groups;
        groups.push(group.into());
        self.set_groups(id, groups)
    }

    pub fn unassign(&mut self, id: u32, group: &str) -> Result<(), StoreError> {
        let Some(e) = self.entry(id)? else { return Err(StoreError::NoSuchAgent(id)) };
        let mut groups: Vec<String> = e.groups.into_iter().filter(|g| g != group).collect();
        if groups.is_empty() {
            groups.push(DEFAULT_GROUP.into());
        }
        self.set_groups(id, groups)
    }
}
