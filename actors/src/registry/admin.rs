//! Changes to agents and groups made through an API (the master's own, or a worker's, forwarded):
//! one typed request in, a typed outcome out. HTTP statuses are the API's business, not this one's.

use super::master::Registry;
use super::store::StoreError;
use wazuh_cluster_protocol::message::{AdminError, AdminRequest, RulesetRoot};
use wazuh_cluster_protocol::ruleset;

impl Registry {
    /// Applies `req` inside the caller's transaction. `Ok(Err(_))` is a refusal to report to the
    /// caller (nothing changed); `Err(_)` is a failure of the store itself.
    pub fn admin(&mut self, req: &AdminRequest) -> Result<Result<(), AdminError>, StoreError> {
        self.admin_at(req, crate::clock::now_ms())
    }

    /// [`Registry::admin`] at the time `at_ms` (what a replicated change carries).
    pub(crate) fn admin_at(&mut self, req: &AdminRequest, at_ms: u64) -> Result<Result<(), AdminError>, StoreError> {
        let result = match req {
            AdminRequest::DeleteAgent { id } => self.delete(*id),
            AdminRequest::CreateGroup { name } => self.create_group_at(name, at_ms).and_then(|created| {
                if created {
                    Ok(())
                } else {
                    Err(StoreError::Invalid(format!("group {name:?} already exists")))
                }
            }),
            AdminRequest::DeleteGroup { name } => self.delete_group(name),
            AdminRequest::AssignGroup { id, group } => self.assign(*id, group),
            AdminRequest::UnassignGroup { id, group } => self.unassign(*id, group),
            AdminRequest::PutRulesetFile { root, name, content, overwrite } => {
                return Ok(check_contents(req).and_then(|()| self.put_ruleset_file(*root, name, content, *overwrite)));
            }
            AdminRequest::DeleteRulesetFile { root, name } => return Ok(self.delete_ruleset_file(*root, name)),
            AdminRequest::PutGroupConfiguration { group, content } => {
                return Ok(check_contents(req).and_then(|()| self.put_group_configuration(group, content)));
            }
            AdminRequest::CreateUser { .. }
            | AdminRequest::UpdateUser { .. }
            | AdminRequest::DeleteUser { .. }
            | AdminRequest::RevokeUserTokens { .. } => return self.user_request(req),
        };
        match result {
            Ok(()) => Ok(Ok(())),
            Err(StoreError::NoSuchAgent(id)) => Ok(Err(AdminError::NoSuchAgent(id))),
            Err(StoreError::NoSuchGroup(name)) => Ok(Err(AdminError::NoSuchGroup(name))),
            Err(StoreError::Invalid(m)) => Ok(Err(AdminError::Invalid(m))),
            Err(e) => Err(e),
        }
    }
}

/// Largest ruleset file taken through the API.
pub const MAX_RULESET_FILE: usize = 10 << 20;

/// Checks the contents a request carries (a ruleset file's name and text, an agent.conf), as the
/// master does before applying it: a worker checks the same before it forwards the request, so
/// that a refused file is answered at once and never crosses the cluster.
pub fn check_contents(req: &AdminRequest) -> Result<(), AdminError> {
    match req {
        AdminRequest::PutRulesetFile { root, name, content, .. } => {
            root.check_name(name).map_err(AdminError::Invalid)?;
            if content.len() > MAX_RULESET_FILE {
                return Err(AdminError::Invalid(format!("{name}: larger than {MAX_RULESET_FILE} bytes")));
            }
            let kind = ruleset::kind_of(&format!("{}/{name}", root.dir())).unwrap_or(ruleset::Kind::Other);
            ruleset::check(kind, content, ruleset::Source::Api)
                .map_err(|why| AdminError::Invalid(format!("{}/{name}: {why}", root.dir())))
        }
        AdminRequest::PutGroupConfiguration { group, content } => {
            if !wazuh_cluster_protocol::agent::enrollment::valid_group_name(group) {
                return Err(AdminError::Invalid(format!(
                    "{:?} is not a group name",
                    wazuh_cluster_protocol::agent::enrollment::printable(group)
                )));
            }
            ruleset::check(ruleset::Kind::Xml, content, ruleset::Source::Api)
                .map_err(|why| AdminError::Invalid(format!("etc/shared/{group}/agent.conf: {why}")))
        }
        _ => Ok(()),
    }
}

impl Registry {
    /// Writes `etc/<root>/<name>` (checked by [`check_contents`]) in the master's sync roots, atomically (a temporary name file sync
    /// skips, then a rename), so that file sync never sees half a file.
    fn put_ruleset_file(
        &self,
        root: RulesetRoot,
        name: &str,
        content: &[u8],
        overwrite: bool,
    ) -> Result<(), AdminError> {
        let dir = self.data_dir().join(root.dir());
        let path = dir.join(name);
        if !overwrite && path.exists() {
            return Err(AdminError::Invalid(format!("{}/{name} exists (overwrite=true replaces it)", root.dir())));
        }
        let unavailable = |e: std::io::Error| AdminError::Unavailable(format!("{}/{name}: {e}", root.dir()));
        std::fs::create_dir_all(&dir).map_err(unavailable)?;
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, content).map_err(unavailable)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(unavailable)?;
        std::fs::rename(&tmp, &path).map_err(unavailable)
    }

    /// Writes `etc/shared/<group>/agent.conf` of an existing group, atomically.
    fn put_group_configuration(&self, group: &str, content: &[u8]) -> Result<(), AdminError> {
        let dir = self.data_dir().join("etc/shared").join(group);
        if !dir.is_dir() {
            return Err(AdminError::NoSuchGroup(group.to_string()));
        }
        let unavailable = |e: std::io::Error| AdminError::Unavailable(format!("etc/shared/{group}/agent.conf: {e}"));
        let tmp = dir.join("agent.conf.tmp");
        std::fs::write(&tmp, content).map_err(unavailable)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(unavailable)?;
        std::fs::rename(&tmp, dir.join("agent.conf")).map_err(unavailable)
    }

    fn delete_ruleset_file(&self, root: RulesetRoot, name: &str) -> Result<(), AdminError> {
        root.check_name(name).map_err(AdminError::Invalid)?;
        let path = self.data_dir().join(root.dir()).join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(AdminError::NoSuchFile(format!("{}/{name}", root.dir())))
            }
            Err(e) => Err(AdminError::Unavailable(format!("{}/{name}: {e}", root.dir()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_typed_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let mut apply = |req: AdminRequest| {
            reg.begin().unwrap();
            let out = reg.admin(&req).unwrap();
            reg.commit().unwrap();
            out
        };
        assert_eq!(apply(AdminRequest::DeleteAgent { id: 9 }), Err(AdminError::NoSuchAgent(9)));
        assert_eq!(
            apply(AdminRequest::AssignGroup { id: 9, group: "nope".into() }),
            Err(AdminError::NoSuchGroup("nope".into()))
        );
        assert!(matches!(apply(AdminRequest::CreateGroup { name: "../x".into() }), Err(AdminError::Invalid(_))));
        assert_eq!(apply(AdminRequest::CreateGroup { name: "linux".into() }), Ok(()));
        assert!(
            matches!(apply(AdminRequest::CreateGroup { name: "linux".into() }), Err(AdminError::Invalid(m)) if m.contains("already exists"))
        );
        assert!(matches!(apply(AdminRequest::DeleteGroup { name: "default".into() }), Err(AdminError::Invalid(_))));
        assert_eq!(apply(AdminRequest::DeleteGroup { name: "linux".into() }), Ok(()));
        for hidden in [".hid", "..hidden", ".", "..", "all"] {
            assert!(
                matches!(apply(AdminRequest::CreateGroup { name: hidden.into() }), Err(AdminError::Invalid(_))),
                "{hidden}"
            );
        }
    }

    /// A deleted group's directory goes with it, once the deletion commits; created again, the
    /// group starts from the default files; a directory a crash left behind goes at the next start.
    #[test]
    fn a_deleted_groups_files_go_with_it_and_never_come_back() {
        use crate::registry::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("etc/shared/tmpc");
        let mut reg = Registry::open(dir.path()).unwrap();
        let apply = |reg: &mut Registry, req: AdminRequest| {
            reg.begin().unwrap();
            let out = reg.admin(&req).unwrap();
            reg.commit().unwrap();
            out
        };
        assert_eq!(apply(&mut reg, AdminRequest::CreateGroup { name: "tmpc".into() }), Ok(()));
        let default_conf = std::fs::read(shared.join("agent.conf")).unwrap();
        std::fs::write(shared.join("agent.conf"), "<agent_config>secret</agent_config>").unwrap();
        std::fs::write(shared.join("extra.txt"), "x").unwrap();
        assert_eq!(apply(&mut reg, AdminRequest::DeleteGroup { name: "tmpc".into() }), Ok(()));
        assert!(!shared.exists(), "the directory went with the group");
        assert_eq!(apply(&mut reg, AdminRequest::CreateGroup { name: "tmpc".into() }), Ok(()));
        assert_eq!(std::fs::read(shared.join("agent.conf")).unwrap(), default_conf, "created again: the default");
        assert!(!shared.join("extra.txt").exists());
        // A deletion undone with its command (savepoint) leaves the directory.
        reg.begin().unwrap();
        reg.savepoint().unwrap();
        reg.delete_group("tmpc").unwrap();
        reg.release(false);
        reg.commit().unwrap();
        assert!(shared.join("agent.conf").exists(), "a deletion rolled back removes nothing");
        // A crash after the deletion committed and before the directory went: gone at the next start.
        assert_eq!(apply(&mut reg, AdminRequest::DeleteGroup { name: "tmpc".into() }), Ok(()));
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("agent.conf"), "left by a crash").unwrap();
        drop(reg);
        let _reg = Registry::open(dir.path()).unwrap();
        assert!(!shared.exists(), "a deleted group's directory left by a crash goes at the next start");
    }
}
