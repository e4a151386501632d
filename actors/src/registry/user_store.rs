//! The API's users in SQLite and in memory: the tables (the master's and every replica's), the
//! checks every user field passes wherever it comes from, the [`UserDirectory`] every node's API
//! reads, and the configured users the master seeds. What changes them is in [`super::users`].

use super::store::StoreError;
use argon2::password_hash::PasswordHash;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use wazuh_cluster_protocol::message::{AgentChange, ApiRole, ApiUser};

/// The users table, on the master and in every replica.
pub(crate) const USER_TABLES: &str = "CREATE TABLE IF NOT EXISTS api_users (
        name TEXT PRIMARY KEY,
        id INTEGER NOT NULL,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        generation INTEGER NOT NULL
    );";

/// The master's record of which `[[api.users]]` entries it applied, so that a user deleted through
/// the API is not made again at the next start unless its entry changed.
pub(crate) const SEEDED_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS api_users_seeded (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);";

/// The most memory one password check may take: Argon2's `m` parameter, in KiB. Hashes that ask
/// for more are refused wherever they come from, so that a sign-in's memory has a stated bound.
pub const MAX_HASH_MEMORY_KIB: u32 = 64 * 1024;
/// The most passes (`t`) and lanes (`p`) a stored hash may ask for.
pub const MAX_HASH_PASSES: u32 = 10;
pub const MAX_HASH_LANES: u32 = 4;
/// Users the cluster holds at most.
pub const MAX_USERS: usize = 1_000;

/// Why a user's name or password hash is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserFieldError {
    #[error("user name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ -")]
    Name(String),
    #[error("not a PHC string: {0}")]
    NotPhc(String),
    #[error("not an Argon2 hash (make one with `wazuh-cluster hash-password`)")]
    NotArgon2,
    #[error("not Argon2 parameters: {0}")]
    Params(String),
    #[error(
        "its cost (m={m} KiB, t={t}, p={p}) is above what a sign-in may take (m <= {MAX_HASH_MEMORY_KIB}, t <= \
         {MAX_HASH_PASSES}, p <= {MAX_HASH_LANES}); make it with `wazuh-cluster hash-password`"
    )]
    TooDear { m: u32, t: u32, p: u32 },
}

/// Why a user name is refused.
pub fn check_name(name: &str) -> Result<(), UserFieldError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(UserFieldError::Name(wazuh_cluster_protocol::agent::enrollment::printable(name).into_owned()));
    }
    Ok(())
}

/// Why a password hash is refused: not an Argon2 PHC string, or dearer to check than a sign-in may
/// be.
pub fn check_hash(hash: &str) -> Result<(), UserFieldError> {
    let parsed = PasswordHash::new(hash).map_err(|e| UserFieldError::NotPhc(e.to_string()))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(UserFieldError::NotArgon2);
    }
    let params = argon2::Params::try_from(&parsed).map_err(|e| UserFieldError::Params(e.to_string()))?;
    if params.m_cost() > MAX_HASH_MEMORY_KIB || params.t_cost() > MAX_HASH_PASSES || params.p_cost() > MAX_HASH_LANES {
        return Err(UserFieldError::TooDear { m: params.m_cost(), t: params.t_cost(), p: params.p_cost() });
    }
    Ok(())
}

/// The users every node's API reads, replaced whole after each commit that changed them.
#[derive(Default)]
pub struct UserDirectory {
    users: RwLock<Arc<HashMap<String, ApiUser>>>,
    /// Bumped by every replacement (tests and the API wait on it).
    version: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for UserDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDirectory").field("users", &self.all().len()).finish()
    }
}

impl UserDirectory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every user now.
    pub fn all(&self) -> Arc<HashMap<String, ApiUser>> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(&self, name: &str) -> Option<ApiUser> {
        self.all().get(name).cloned()
    }

    pub fn replace(&self, users: Vec<ApiUser>) {
        let map: HashMap<String, ApiUser> = users.into_iter().map(|u| (u.name.clone(), u)).collect();
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        self.version.send_modify(|v| *v += 1);
    }

    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Every user in `conn`'s table, by name.
pub fn read_users(conn: &Connection) -> Result<Vec<ApiUser>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT name, password_hash, role, generation, id FROM api_users ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, u32>(4)?,
        ))
    })?;
    let mut users = Vec::new();
    for row in rows {
        let (name, password_hash, role, generation, id) = row?;
        // A role this build does not know reads as the least one.
        let role = ApiRole::parse(&role).unwrap_or(ApiRole::Readonly);
        users.push(ApiUser { id, name, password_hash, role, generation: generation.max(0) as u64 });
    }
    Ok(users)
}

pub(crate) fn read_user(conn: &Connection, name: &str) -> Result<Option<ApiUser>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT password_hash, role, generation, id FROM api_users WHERE name = ?1")?
        .query_row(params![name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, u32>(3)?))
        })
        .optional()?
        .map(|(password_hash, role, generation, id)| ApiUser {
            id,
            name: name.to_string(),
            password_hash,
            role: ApiRole::parse(&role).unwrap_or(ApiRole::Readonly),
            generation: generation.max(0) as u64,
        }))
}

/// Writes a user change into `conn`'s table (the master's and a replica's alike).
pub fn apply_user_change(conn: &Connection, change: &AgentChange) -> Result<(), StoreError> {
    match change {
        AgentChange::UserSet(u) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO api_users (name, id, password_hash, role, generation) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![u.name, u.id, u.password_hash, u.role.as_str(), u.generation as i64])?;
        }
        AgentChange::UserRemoved { name } => {
            conn.prepare_cached("DELETE FROM api_users WHERE name = ?1")?.execute(params![name])?;
        }
        _ => {}
    }
    Ok(())
}

/// A configured user as `[[api.users]]` gives it (the master seeds the cluster's users with them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeedUser {
    pub name: String,
    pub password_hash: String,
    pub role: ApiRole,
}

impl SeedUser {
    pub(crate) fn fingerprint(&self) -> String {
        use md5::Digest;
        let digest = md5::Md5::digest(format!("{}\n{}\n{}", self.name, self.password_hash, self.role.as_str()));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}
