//! Changes to agents and groups made through an API (the master's own, or a worker's, forwarded):
//! one typed request in, a typed outcome out. HTTP statuses are the API's business, not this one's.

use super::master::Registry;
use super::store::StoreError;
use wazuh_cluster_protocol::message::{AdminError, AdminRequest};

impl Registry {
    /// Applies `req` inside the caller's transaction. `Ok(Err(_))` is a refusal to report to the
    /// caller (nothing changed); `Err(_)` is a failure of the store itself.
    pub fn admin(&mut self, req: &AdminRequest) -> Result<Result<(), AdminError>, StoreError> {
        let result = match req {
            AdminRequest::DeleteAgent { id } => self.delete(*id),
            AdminRequest::CreateGroup { name } => self.create_group(name).and_then(|created| {
                if created {
                    Ok(())
                } else {
                    Err(StoreError::Invalid(format!("group {name:?} already exists")))
                }
            }),
            AdminRequest::DeleteGroup { name } => self.delete_group(name),
            AdminRequest::AssignGroup { id, group } => self.assign(*id, group),
            AdminRequest::UnassignGroup { id, group } => self.unassign(*id, group),
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
    }
}
