//! The API's users, as the cluster holds them: in the master's registry (changed through any node's
//! API, seeded from the master's `[[api.users]]`), sent to every worker with the agent table's
//! changes ([`AgentChange::UserSet`]), kept in each replica, and read by every node's API from a
//! [`UserDirectory`] in memory. A token names its user and the generation it was issued under; a
//! node honours it only while that user exists with that generation, and with the role the user
//! has now, so deleting a user, changing its role or password, or revoking its tokens takes
//! effect on every node as soon as the change reaches it.

use super::master::Registry;
use super::store::StoreError;
use super::user_store::read_user;
pub use super::user_store::{
    apply_user_change, check_hash, check_name, read_users, SeedUser, UserDirectory, UserFieldError, MAX_HASH_LANES,
    MAX_HASH_MEMORY_KIB, MAX_HASH_PASSES, MAX_USERS,
};
use rusqlite::{params, OptionalExtension};
use wazuh_cluster_protocol::message::{AdminError, AgentChange, ApiUser};

impl Registry {
    /// A new user's id: one more than any given before (never reused).
    fn next_user_id(&mut self) -> Result<u32, StoreError> {
        let conn = self.conn();
        conn.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('last_user_id', 0)", [])?;
        let last: i64 = conn.query_row("SELECT v FROM meta WHERE k = 'last_user_id'", [], |r| r.get(0))?;
        let id = u32::try_from(last + 1).map_err(|_| StoreError::Invalid("no user id left".into()))?;
        conn.execute("UPDATE meta SET v = ?1 WHERE k = 'last_user_id'", params![id])?;
        Ok(id)
    }

    fn set_user(&mut self, user: ApiUser) -> Result<(), StoreError> {
        let change = AgentChange::UserSet(user);
        apply_user_change(self.conn(), &change)?;
        self.log_change(&change)
    }

    /// A user change from an API (inside the caller's transaction): the master re-checks every field.
    pub(crate) fn user_request(
        &mut self,
        request: &wazuh_cluster_protocol::message::AdminRequest,
    ) -> Result<Result<(), AdminError>, StoreError> {
        use wazuh_cluster_protocol::message::AdminRequest;
        let name = match request {
            AdminRequest::CreateUser { name, .. }
            | AdminRequest::UpdateUser { name, .. }
            | AdminRequest::DeleteUser { name }
            | AdminRequest::RevokeUserTokens { name } => name,
            _ => return Ok(Err(AdminError::Invalid("not a user change".into()))),
        };
        if let Err(why) = check_name(name) {
            return Ok(Err(AdminError::Invalid(why.to_string())));
        }
        let existing = read_user(self.conn(), name)?;
        match (request, existing) {
            (AdminRequest::CreateUser { .. }, Some(_)) => Ok(Err(AdminError::Invalid(format!("user {name:?} exists")))),
            (AdminRequest::CreateUser { password_hash, role, .. }, None) => {
                if let Err(why) = check_hash(password_hash) {
                    return Ok(Err(AdminError::Invalid(format!("password hash: {why}"))));
                }
                if self.users()?.len() >= MAX_USERS {
                    return Ok(Err(AdminError::Invalid(format!("the cluster holds {MAX_USERS} users already"))));
                }
                let id = self.next_user_id()?;
                let user = ApiUser {
                    id,
                    name: name.clone(),
                    password_hash: password_hash.clone(),
                    role: *role,
                    generation: 0,
                };
                self.set_user(user).map(Ok)
            }
            (_, None) => Ok(Err(AdminError::NoSuchUser(name.clone()))),
            (AdminRequest::UpdateUser { password_hash, role, .. }, Some(mut user)) => {
                if let Some(hash) = password_hash {
                    if let Err(why) = check_hash(hash) {
                        return Ok(Err(AdminError::Invalid(format!("password hash: {why}"))));
                    }
                    // A new password revokes the tokens issued with the old one.
                    user.password_hash = hash.clone();
                    user.generation += 1;
                }
                if let Some(role) = role {
                    user.role = *role;
                }
                self.set_user(user).map(Ok)
            }
            (AdminRequest::RevokeUserTokens { .. }, Some(mut user)) => {
                user.generation += 1;
                self.set_user(user).map(Ok)
            }
            (AdminRequest::DeleteUser { .. }, Some(_)) => {
                let change = AgentChange::UserRemoved { name: name.clone() };
                apply_user_change(self.conn(), &change)?;
                self.log_change(&change).map(Ok)
            }
            _ => Ok(Err(AdminError::Invalid("not a user change".into()))),
        }
    }

    /// Applies the configured users whose entry changed since it was last applied (a new name, a
    /// new password hash or role): created, or updated (a new password revokes the user's tokens).
    /// An entry applied before is left alone, so a user deleted or changed through the API stays so
    /// until its entry in the configuration changes. Returns the names applied.
    pub fn seed_users(&mut self, seeds: &[SeedUser]) -> Result<Vec<String>, StoreError> {
        let mut applied = Vec::new();
        for seed in seeds {
            check_name(&seed.name).map_err(|e| StoreError::Invalid(e.to_string()))?;
            check_hash(&seed.password_hash).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let fingerprint = seed.fingerprint();
            let recorded: Option<String> = self
                .conn()
                .prepare_cached("SELECT fingerprint FROM api_users_seeded WHERE name = ?1")?
                .query_row(params![seed.name], |r| r.get(0))
                .optional()?;
            if recorded.as_deref() == Some(fingerprint.as_str()) {
                continue;
            }
            let user = match read_user(self.conn(), &seed.name)? {
                Some(mut u) => {
                    if u.password_hash != seed.password_hash {
                        u.password_hash = seed.password_hash.clone();
                        u.generation += 1;
                    }
                    u.role = seed.role;
                    u
                }
                None => ApiUser {
                    id: self.next_user_id()?,
                    name: seed.name.clone(),
                    password_hash: seed.password_hash.clone(),
                    role: seed.role,
                    generation: 0,
                },
            };
            self.set_user(user)?;
            self.conn()
                .prepare_cached("INSERT OR REPLACE INTO api_users_seeded (name, fingerprint) VALUES (?1, ?2)")?
                .execute(params![seed.name, fingerprint])?;
            applied.push(seed.name.clone());
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wazuh_cluster_protocol::message::{AdminRequest, ApiRole};

    fn hash() -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        argon2::Argon2::default().hash_password(b"pw", &salt).unwrap().to_string()
    }

    fn apply(reg: &mut Registry, req: AdminRequest) -> Result<(), AdminError> {
        reg.begin().unwrap();
        let out = reg.admin(&req).unwrap();
        reg.commit().unwrap();
        out
    }

    #[test]
    fn user_changes_are_checked_logged_and_bump_the_generation_where_tokens_must_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let directory = UserDirectory::new();
        reg.set_user_directory(directory.clone()).unwrap();
        let h = hash();
        let create = |name: &str| AdminRequest::CreateUser {
            name: name.into(),
            password_hash: h.clone(),
            role: ApiRole::Administrator,
        };
        assert_eq!(apply(&mut reg, create("ops")), Ok(()));
        assert!(matches!(apply(&mut reg, create("ops")), Err(AdminError::Invalid(m)) if m.contains("exists")));
        assert!(matches!(apply(&mut reg, create("bad name")), Err(AdminError::Invalid(_))));
        let weak =
            AdminRequest::CreateUser { name: "x".into(), password_hash: "plain".into(), role: ApiRole::Readonly };
        assert!(matches!(apply(&mut reg, weak), Err(AdminError::Invalid(_))));
        let costly = "$argon2id$v=19$m=262144,t=2,p=1$c2FsdHNhbHRzYWx0$3kFqOZXJ6hb3ZsmBdEi7Tq6z2eEHD2Xu3v1nD3Glmjo";
        let dear = AdminRequest::CreateUser { name: "x".into(), password_hash: costly.into(), role: ApiRole::Readonly };
        assert!(matches!(apply(&mut reg, dear), Err(AdminError::Invalid(m)) if m.contains("m=262144")));
        assert_eq!(directory.get("ops").map(|u| (u.role, u.generation)), Some((ApiRole::Administrator, 0)));
        // A role change keeps the generation (tokens follow the role); revoking and a new password bump it.
        let demote =
            AdminRequest::UpdateUser { name: "ops".into(), password_hash: None, role: Some(ApiRole::Readonly) };
        assert_eq!(apply(&mut reg, demote), Ok(()));
        assert_eq!(directory.get("ops").map(|u| (u.role, u.generation)), Some((ApiRole::Readonly, 0)));
        assert_eq!(apply(&mut reg, AdminRequest::RevokeUserTokens { name: "ops".into() }), Ok(()));
        let repass = AdminRequest::UpdateUser { name: "ops".into(), password_hash: Some(h.clone()), role: None };
        assert_eq!(apply(&mut reg, repass), Ok(()));
        assert_eq!(directory.get("ops").map(|u| u.generation), Some(2));
        assert_eq!(apply(&mut reg, AdminRequest::DeleteUser { name: "ops".into() }), Ok(()));
        assert!(directory.get("ops").is_none());
        assert_eq!(
            apply(&mut reg, AdminRequest::RevokeUserTokens { name: "ops".into() }),
            Err(AdminError::NoSuchUser("ops".into()))
        );
        // Every change is in the log, for the workers.
        let (_, changes) = reg.changes_since(0).unwrap();
        let users: Vec<&AgentChange> = changes.iter().filter(|c| c.is_user()).collect();
        assert_eq!(users.len(), 5, "{users:?}");
        assert!(matches!(users[4], AgentChange::UserRemoved { name } if name == "ops"));
    }

    #[test]
    fn configured_users_are_applied_when_their_entry_changes_and_a_deletion_holds_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let seed = |role| SeedUser { name: "wazuh".into(), password_hash: hash(), role };
        let run = |reg: &mut Registry, seeds: &[SeedUser]| {
            reg.begin().unwrap();
            let out = reg.seed_users(seeds).unwrap();
            reg.commit().unwrap();
            out
        };
        assert_eq!(run(&mut reg, &[seed(ApiRole::Administrator)]), ["wazuh"]);
        assert!(run(&mut reg, &[seed(ApiRole::Administrator)]).is_empty(), "the same entry again: nothing");
        assert_eq!(apply(&mut reg, AdminRequest::DeleteUser { name: "wazuh".into() }), Ok(()));
        assert!(run(&mut reg, &[seed(ApiRole::Administrator)]).is_empty(), "deleted through the API: stays deleted");
        assert!(reg.users().unwrap().is_empty());
        assert_eq!(run(&mut reg, &[seed(ApiRole::Readonly)]), ["wazuh"], "the entry changed: applied again");
        assert_eq!(reg.users().unwrap()[0].role, ApiRole::Readonly);
        // A snapshot (a worker far behind) carries the users too.
        let (snapshot, changes) = reg.changes_since(u64::MAX).unwrap();
        assert!(snapshot && changes.iter().any(|c| matches!(c, AgentChange::UserSet(u) if u.name == "wazuh")));
    }
}
