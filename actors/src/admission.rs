//! Which workers a master admits: node identities, join tokens and revocations, in the master's
//! `var/db/nodes.db`.
//!
//! The cluster key lets a peer speak the protocol; it no longer makes it a worker. A worker is
//! admitted when its identity key is the one recorded for its name, or, the first time, when it
//! proves a join token the master issued (`cluster.admission = "token"`, the default) or, in a lab
//! (`"open"`), when its name is new (the key is then pinned to the name). A revoked key is refused
//! whatever name it comes with, and the name's live connection is closed; the rest of the cluster
//! keeps its key.
//!
//! A master may also hold a standing join token (`cluster.join_token` in its own config, for
//! container platforms where workers come and go under one secret): it admits any number of new
//! names, never expires, and stops working when it is removed from the config. Its holders are as
//! trusted as holders of issued tokens; revocation still works name by name.
//!
//! The decision runs twice: on the hello (message 1), so that a refusal reaches the worker with
//! its reason, and on message 3, after the signature (and the token's MAC) proved the claims, in
//! one transaction with the token's use.

use crate::registry::schema::open_db;
use crate::registry::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wazuh_cluster_protocol::handshake::{Confirmed, Hello, Refusal};
use wazuh_cluster_protocol::identity::{JoinToken, NodeIdentity, Proof, PublicKey};

/// Where a node keeps its identity key (PKCS#8, mode 0600), under its data dir.
pub const IDENTITY_FILE: &str = "var/identity.key";
/// Where a master keeps the admitted workers, revoked keys and join tokens.
pub(crate) const NODES_DB: &str = "var/db/nodes.db";
/// Bounds of a join token's lifetime and uses.
pub const TOKEN_TTL: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(30 * 86_400));
pub const MAX_TOKEN_USES: u32 = 1000;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, public_key BLOB NOT NULL UNIQUE, admitted_ms INTEGER NOT NULL, how TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revoked (
    public_key BLOB PRIMARY KEY, name TEXT NOT NULL, revoked_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY, secret BLOB NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
    uses_left INTEGER NOT NULL);
";

/// How a master admits a worker it does not know yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdmissionMode {
    /// With a join token issued by the master (`wazuh-cluster join-token`).
    #[default]
    Token,
    /// With the cluster key alone; the worker's key is pinned to its name at its first join.
    Open,
}

/// A `cluster.admission` value that is neither mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown admission mode {0:?} (expected \"token\" or \"open\")")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for AdmissionMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "token" => Ok(AdmissionMode::Token),
            "open" => Ok(AdmissionMode::Open),
            other => Err(UnknownMode(other.to_string())),
        }
    }
}

/// Why a node's identity does not check out against the key pinned for it.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("invalid node name: {0}")]
    Name(String),
    #[error("no master-eligible node at a configured address answers as {0:?}: not a member")]
    NotAMember(String),
    #[error("the {0} sent no identity key")]
    NoKey(&'static str),
    #[error("the {0} did not sign the handshake with its identity")]
    Unsigned(&'static str),
    #[error("the {0}'s signature of the handshake does not verify with its identity key")]
    BadSignature(&'static str),
    #[error(transparent)]
    Proof(#[from] wazuh_cluster_protocol::identity::IdentityError),
    #[error(transparent)]
    Changed(Box<IdentityChanged>),
    #[error("cannot pin the {what}'s identity in {}: {error}", path.display())]
    Pin { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
}

/// A node offers another identity than the one pinned for it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {what}'s identity changed: this {us} knows {known}, {name:?} offers {offered}; if it was re-installed on purpose, remove {} on this {us}",
    pin.display()
)]
pub struct IdentityChanged {
    what: &'static str,
    us: &'static str,
    known: String,
    name: String,
    offered: String,
    pin: PathBuf,
}

/// Why a worker is not admitted on its message 3.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("{0}")]
    Refused(Refusal),
    #[error(transparent)]
    Identity(#[from] wazuh_cluster_protocol::identity::IdentityError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("the hello names a join token but message 3 has no proof of it")]
    NoTokenProof,
    #[error("the join token was used up meanwhile")]
    TokenUsedUp,
    #[error("cannot record the worker: {0}")]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for AdmissionError {
    fn from(e: rusqlite::Error) -> Self {
        AdmissionError::Store(e.into())
    }
}

impl std::fmt::Display for AdmissionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdmissionMode::Token => "token",
            AdmissionMode::Open => "open",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityFileError {
    #[error("cannot read or write the node identity {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("the node identity {path} is unusable: {error} (move it away to make a new one; the master must then admit this node again)")]
    Bad { path: PathBuf, error: wazuh_cluster_protocol::identity::IdentityError },
}

/// Loads the node's identity from `data_dir`, making one at the first start. `true` when made.
pub fn load_or_create_identity(data_dir: &Path) -> Result<(NodeIdentity, bool), IdentityFileError> {
    let path = data_dir.join(IDENTITY_FILE);
    let io = |error| IdentityFileError::Io { path: path.clone(), error };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let identity = NodeIdentity::from_pkcs8(&bytes)
                .map_err(|error| IdentityFileError::Bad { path: path.clone(), error })?;
            Ok((identity, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (identity, pkcs8) =
                NodeIdentity::generate().map_err(|error| IdentityFileError::Bad { path: path.clone(), error })?;
            crate::secret::write_private(&path, &pkcs8).map_err(io)?;
            Ok((identity, true))
        }
        Err(e) => Err(io(e)),
    }
}

/// Where a worker keeps the master's identity, pinned at its first connection.
pub(crate) const MASTER_PIN_FILE: &str = "var/master.pub";

/// Worker: checks the master's identity: its signature of this connection's `hello_hash` must
/// verify with the key in its hello, and that key must be the one pinned at the first connection
/// (`data_dir/var/master.pub`; pinned now if there is none). `Ok(true)` when pinned now.
pub(crate) fn check_master_identity(
    data_dir: &Path,
    hello: &Hello,
    hello_hash: &[u8],
    signature: Option<&[u8]>,
) -> Result<bool, PinError> {
    check_pinned_identity(&data_dir.join(MASTER_PIN_FILE), "master", "worker", hello, hello_hash, signature)
}

/// Where a master-eligible node pins the identity of another one (by its name), under its data dir.
pub(crate) fn peer_pin_file(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("var/peers").join(format!("{name}.pub"))
}

/// Whether `name` is a master-eligible peer whose identity is pinned here (learnt by this node's
/// own dial to a configured member address): such a node following the leader's files connects as
/// a worker, and is admitted by that identity ([`check_known_peer_identity`]) instead of a join
/// token.
pub fn is_pinned_peer(data_dir: &Path, name: &str) -> bool {
    wazuh_cluster_protocol::handshake::check_node_name(name).is_ok() && peer_pin_file(data_dir, name).is_file()
}

/// Master-eligible nodes: checks a peer's identity as [`check_master_identity`] does, pinned per
/// peer name in [`peer_pin_file`]. `name` comes from an authenticated hello (checked by
/// `check_node_name`: no path separator can reach the file name).
pub(crate) fn check_peer_identity(
    data_dir: &Path,
    hello: &Hello,
    hello_hash: &[u8],
    signature: Option<&[u8]>,
) -> Result<bool, PinError> {
    wazuh_cluster_protocol::handshake::check_node_name(&hello.node_name).map_err(PinError::Name)?;
    let pin = peer_pin_file(data_dir, &hello.node_name);
    check_pinned_identity(&pin, "master-eligible peer", "node", hello, hello_hash, signature)
}

/// A master-eligible peer on a connection it opened: its identity must be the one pinned for its
/// name, which only this node's own dials to the members' configured addresses pin.
pub(crate) fn check_known_peer_identity(data_dir: &Path, hello: &Hello, confirmed: &Confirmed) -> Result<(), PinError> {
    if !is_pinned_peer(data_dir, &hello.node_name) {
        return Err(PinError::NotAMember(hello.node_name.clone()));
    }
    let proof = Proof::parse(&confirmed.proof)?;
    check_peer_identity(data_dir, hello, &confirmed.hash, Some(&proof.signature[..])).map(|_| ())
}

/// The identity in `hello` must sign `hello_hash` and be the key pinned in `path` (pinned now
/// when there is none: `Ok(true)`).
fn check_pinned_identity(
    path: &Path,
    what: &'static str,
    us: &'static str,
    hello: &Hello,
    hello_hash: &[u8],
    signature: Option<&[u8]>,
) -> Result<bool, PinError> {
    let key = hello.public_key.as_deref().and_then(PublicKey::from_slice).ok_or(PinError::NoKey(what))?;
    let signature = signature.ok_or(PinError::Unsigned(what))?;
    key.verify_handshake(hello_hash, signature).map_err(|_| PinError::BadSignature(what))?;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if text.trim() == key.to_string() {
                Ok(false)
            } else {
                Err(PinError::Changed(Box::new(IdentityChanged {
                    what,
                    us,
                    known: text.trim().get(..16).unwrap_or("?").to_string(),
                    name: hello.node_name.clone(),
                    offered: key.fingerprint(),
                    pin: path.to_path_buf(),
                })))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let write = || -> std::io::Result<()> {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension("pub.tmp");
                std::fs::write(&tmp, format!("{key}\n"))?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, path)
            };
            write().map_err(|error| PinError::Pin { what, path: path.to_path_buf(), error })?;
            Ok(true)
        }
        Err(error) => Err(PinError::Read { path: path.to_path_buf(), error }),
    }
}

/// How a worker got in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Its key is the one recorded for its name.
    Known,
    /// Its key was recorded now, on a join token (its id).
    Joined(String),
    /// Its key was pinned to its (new) name now, in open mode.
    Pinned,
}

/// An admitted worker, for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KnownNode {
    pub name: String,
    /// The first 16 hex characters of its public key.
    pub identity: String,
    pub admitted_ms: u64,
    /// `token <id>`, `standing token <id>`, `open` or `recorded`.
    pub how: String,
}

/// A join token as issued: the full token is shown once.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: JoinToken,
    pub expires_ms: u64,
    pub uses: u32,
}

/// The master's admission records.
pub struct Admission {
    conn: Connection,
    pub mode: AdmissionMode,
    /// The master's standing join token, if its config has one.
    standing: Option<JoinToken>,
}

/// The first 16 hex characters of a hello's identity key ("none" without one).
pub(crate) fn fingerprint_of(hello: &Hello) -> String {
    key_of(hello).map(|k| k.fingerprint()).unwrap_or_else(|_| "none".into())
}

fn key_of(hello: &Hello) -> Result<PublicKey, Refusal> {
    hello.public_key.as_deref().and_then(PublicKey::from_slice).ok_or(Refusal::IdentityRequired)
}

fn not_admitted(hello: &Hello, reason: impl Into<String>) -> Refusal {
    Refusal::NotAdmitted { name: hello.node_name.clone(), reason: reason.into() }
}

impl Admission {
    pub fn open(data_dir: &Path, mode: AdmissionMode) -> Result<Self, StoreError> {
        let conn = open_db(&data_dir.join(NODES_DB))?;
        conn.execute_batch(TABLES)?;
        Ok(Self { conn, mode, standing: None })
    }

    /// Accepts `token` too, for any number of joins, as long as this master runs with it.
    pub fn with_standing_token(mut self, token: Option<JoinToken>) -> Self {
        self.standing = token;
        self
    }

    fn standing(&self, id: &str) -> Option<&JoinToken> {
        self.standing.as_ref().filter(|t| t.id == id)
    }

    fn revoked(&self, key: &PublicKey) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT name FROM revoked WHERE public_key = ?1", params![&key.0[..]], |r| r.get(0))
            .optional()?)
    }

    fn recorded_key(&self, name: &str) -> Result<Option<PublicKey>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT public_key FROM nodes WHERE name = ?1", params![name], |r| r.get(0))
            .optional()?;
        Ok(bytes.as_deref().and_then(PublicKey::from_slice))
    }

    fn name_of(&self, key: &PublicKey) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT name FROM nodes WHERE public_key = ?1", params![&key.0[..]], |r| r.get(0))
            .optional()?)
    }

    /// A usable token (known, not expired, uses left), with its secret.
    fn usable_token(&self, id: &str, now_ms: u64) -> Result<Option<JoinToken>, StoreError> {
        if let Some(token) = self.standing(id) {
            return Ok(Some(token.clone()));
        }
        let secret: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT secret FROM join_tokens WHERE id = ?1 AND expires_ms > ?2 AND uses_left > 0",
                params![id, now_ms as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(secret.and_then(|s| JoinToken::from_parts(id, &s).ok()))
    }

    /// The decision on a hello (message 1): `Ok` when the worker may go on and prove its claims.
    pub(crate) fn check_hello(&self, hello: &Hello, now_ms: u64) -> Result<(), Refusal> {
        let db = |e: StoreError| not_admitted(hello, format!("the master cannot read its node records: {e}"));
        let key = key_of(hello)?;
        if self.revoked(&key).map_err(db)?.is_some() {
            return Err(Refusal::Revoked { name: hello.node_name.clone() });
        }
        let recorded = self.recorded_key(&hello.node_name).map_err(db)?;
        if recorded == Some(key) {
            return Ok(());
        }
        if let Some(other) = self.name_of(&key).map_err(db)? {
            return Err(not_admitted(hello, format!("this identity is admitted as {other:?}")));
        }
        let token_ok = match &hello.join_token {
            Some(id) => self.usable_token(id, now_ms).map_err(db)?.is_some(),
            None => false,
        };
        match (recorded, token_ok, self.mode) {
            // A token never takes a name over from an identity that holds it.
            (Some(known), _, _) => Err(not_admitted(
                hello,
                format!(
                    "the name is admitted with another identity ({}); if that worker was re-installed, revoke the old identity first (wazuh-cluster revoke {})",
                    known.fingerprint(),
                    hello.node_name
                ),
            )),
            (None, true, _) | (None, false, AdmissionMode::Open) => Ok(()),
            (None, false, AdmissionMode::Token) => Err(not_admitted(
                hello,
                match &hello.join_token {
                    Some(_) => "its join token is unknown, expired or used up".to_string(),
                    None => "it is not a known worker; issue a join token on the master (wazuh-cluster join-token) and set cluster.join_token".to_string(),
                },
            )),
        }
    }

    /// The decision on message 3: the signature must be the hello's key's over this connection's
    /// hash, and a join must prove its token, whose use is recorded with the worker's key.
    pub fn finish(&mut self, hello: &Hello, confirmed: &Confirmed, now_ms: u64) -> Result<Admitted, AdmissionError> {
        let key = key_of(hello).map_err(AdmissionError::Refused)?;
        let proof = Proof::parse(&confirmed.proof)?;
        proof.verify(&key, &confirmed.hash)?;
        self.check_hello(hello, now_ms).map_err(AdmissionError::Refused)?;
        if self.recorded_key(&hello.node_name)? == Some(key) {
            return Ok(Admitted::Known);
        }
        if let Some(token) = hello.join_token.as_deref().and_then(|id| self.standing(id)) {
            let mac = proof.token_mac.ok_or(AdmissionError::NoTokenProof)?;
            token.verify_mac(&confirmed.hash, &key, &mac)?;
            self.conn.execute(
                "INSERT OR REPLACE INTO nodes (name, public_key, admitted_ms, how) VALUES (?1, ?2, ?3, ?4)",
                params![hello.node_name, &key.0[..], now_ms as i64, format!("standing token {}", token.id)],
            )?;
            return Ok(Admitted::Joined(token.id.clone()));
        }
        if let Some(id) = &hello.join_token {
            if let Some(token) = self.usable_token(id, now_ms)? {
                let mac = proof.token_mac.ok_or(AdmissionError::NoTokenProof)?;
                token.verify_mac(&confirmed.hash, &key, &mac)?;
                let tx = self.conn.transaction()?;
                let used = tx.execute(
                    "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0 AND expires_ms > ?2",
                    params![id, now_ms as i64],
                )?;
                if used != 1 {
                    return Err(AdmissionError::TokenUsedUp);
                }
                tx.execute(
                    "INSERT OR REPLACE INTO nodes (name, public_key, admitted_ms, how) VALUES (?1, ?2, ?3, ?4)",
                    params![hello.node_name, &key.0[..], now_ms as i64, format!("token {id}")],
                )?;
                tx.commit()?;
                return Ok(Admitted::Joined(id.clone()));
            }
        }
        // check_hello passed without a recorded key or a usable token: open mode, new name.
        self.conn.execute(
            "INSERT INTO nodes (name, public_key, admitted_ms, how) VALUES (?1, ?2, ?3, 'open')",
            params![hello.node_name, &key.0[..], now_ms as i64],
        )?;
        Ok(Admitted::Pinned)
    }

    /// Issues a join token valid for `ttl` (clamped to [`TOKEN_TTL`]) and `uses` joins.
    pub fn issue(&mut self, ttl: Duration, uses: u32, now_ms: u64) -> Result<Issued, StoreError> {
        let ttl = ttl.clamp(TOKEN_TTL.0, TOKEN_TTL.1);
        let uses = uses.clamp(1, MAX_TOKEN_USES);
        let token = JoinToken::generate().map_err(|e| StoreError::Invalid(e.to_string()))?;
        let expires_ms = now_ms + ttl.as_millis() as u64;
        self.conn
            .execute("DELETE FROM join_tokens WHERE expires_ms <= ?1 OR uses_left <= 0", params![now_ms as i64])?;
        self.conn.execute(
            "INSERT INTO join_tokens (id, secret, created_ms, expires_ms, uses_left) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token.id, token.secret(), now_ms as i64, expires_ms as i64, uses],
        )?;
        Ok(Issued { token, expires_ms, uses })
    }

    /// Revokes the identity recorded for `name`: it can no longer join under any name. `None` when
    /// the name is not admitted.
    pub fn revoke(&mut self, name: &str, now_ms: u64) -> Result<Option<PublicKey>, StoreError> {
        let Some(key) = self.recorded_key(name)? else { return Ok(None) };
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO revoked (public_key, name, revoked_ms) VALUES (?1, ?2, ?3)",
            params![&key.0[..], name, now_ms as i64],
        )?;
        tx.execute("DELETE FROM nodes WHERE name = ?1", params![name])?;
        tx.commit()?;
        Ok(Some(key))
    }

    /// The admitted workers, by name.
    pub fn known(&self) -> Result<Vec<KnownNode>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT name, public_key, admitted_ms, how FROM nodes ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            let key: Vec<u8> = r.get(1)?;
            Ok(KnownNode {
                name: r.get(0)?,
                identity: PublicKey::from_slice(&key).map(|k| k.fingerprint()).unwrap_or_default(),
                admitted_ms: r.get::<_, i64>(2)? as u64,
                how: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::test_settings;
    use wazuh_cluster_protocol::Role;

    fn hello(name: &str, identity: &NodeIdentity, token: Option<&JoinToken>) -> Hello {
        let mut s = test_settings(name);
        s.role = Role::Worker;
        let mut h = s.hello();
        h.public_key = Some(identity.public_key().0.to_vec());
        h.join_token = token.map(|t| t.id.clone());
        h
    }

    fn confirm(identity: &NodeIdentity, hash: &[u8], token: Option<&JoinToken>) -> Confirmed {
        Confirmed { hash: hash.to_vec(), proof: identity.prove(hash, token) }
    }

    fn store(mode: AdmissionMode) -> Admission {
        Admission::open(&tempfile::tempdir().unwrap().keep(), mode).unwrap()
    }

    #[test]
    fn token_mode_admits_a_new_worker_only_with_a_valid_token_and_only_as_often_as_issued() {
        let mut a = store(AdmissionMode::Token);
        let (w1, _) = NodeIdentity::generate().unwrap();
        let now = 1_000_000;
        assert!(matches!(a.check_hello(&hello("w1", &w1, None), now), Err(Refusal::NotAdmitted { .. })));
        let issued = a.issue(Duration::from_secs(3600), 1, now).unwrap();
        let h = hello("w1", &w1, Some(&issued.token));
        a.check_hello(&h, now).unwrap();
        // A wrong secret with the right id does not get in.
        let forged = JoinToken::from_parts(&issued.token.id, &[7u8; 32]).unwrap();
        assert!(a.finish(&h, &confirm(&w1, b"hash", Some(&forged)), now).is_err());
        // A signature by another key does not either.
        let (thief, _) = NodeIdentity::generate().unwrap();
        assert!(a.finish(&h, &confirm(&thief, b"hash", Some(&issued.token)), now).is_err());
        assert_eq!(
            a.finish(&h, &confirm(&w1, b"hash", Some(&issued.token)), now).ok(),
            Some(Admitted::Joined(issued.token.id.clone()))
        );
        // Known from now on, token or not; the token is used up for anyone else.
        assert_eq!(a.finish(&hello("w1", &w1, None), &confirm(&w1, b"h2", None), now).ok(), Some(Admitted::Known));
        let (w2, _) = NodeIdentity::generate().unwrap();
        assert!(a.check_hello(&hello("w2", &w2, Some(&issued.token)), now).is_err());
        // Another key under a known name is refused, even with a usable token.
        assert!(matches!(a.check_hello(&hello("w1", &w2, None), now), Err(Refusal::NotAdmitted { .. })));
        let spare = a.issue(Duration::from_secs(3600), 1, now).unwrap();
        assert!(matches!(a.check_hello(&hello("w1", &w2, Some(&spare.token)), now), Err(Refusal::NotAdmitted { .. })));
        // Expired tokens do not work.
        let short = a.issue(Duration::from_secs(60), 5, now).unwrap();
        a.check_hello(&hello("w2", &w2, Some(&short.token)), now).unwrap();
        assert!(a.check_hello(&hello("w2", &w2, Some(&short.token)), now + 61_000).is_err());
        assert_eq!(a.known().unwrap().len(), 1);
    }

    #[test]
    fn a_standing_token_admits_any_number_of_new_names_but_never_takes_a_name_or_a_revoked_key() {
        let standing = JoinToken::generate().unwrap();
        let mut a = store(AdmissionMode::Token).with_standing_token(Some(standing.clone()));
        let now = 5_000_000;
        for n in 0..5 {
            let (w, _) = NodeIdentity::generate().unwrap();
            let h = hello(&format!("w{n}"), &w, Some(&standing));
            a.check_hello(&h, now).unwrap();
            // Years later too: it does not expire.
            let later = now + 10 * 365 * 86_400_000;
            assert_eq!(
                a.finish(&h, &confirm(&w, b"h", Some(&standing)), later).ok(),
                Some(Admitted::Joined(standing.id.clone()))
            );
        }
        assert_eq!(a.known().unwrap().len(), 5);
        assert!(a.known().unwrap().iter().all(|k| k.how.starts_with("standing token")));
        // Its id alone proves nothing: the MAC under the secret does.
        let (thief, _) = NodeIdentity::generate().unwrap();
        let forged = JoinToken::from_parts(&standing.id, &[9u8; 32]).unwrap();
        let h = hello("thief", &thief, Some(&standing));
        assert!(a.finish(&h, &confirm(&thief, b"h", Some(&forged)), now).is_err());
        // It takes no name from the identity that holds it, and a revoked key stays out.
        assert!(matches!(a.check_hello(&hello("w1", &thief, Some(&standing)), now), Err(Refusal::NotAdmitted { .. })));
        let (w, _) = NodeIdentity::generate().unwrap();
        assert!(a.finish(&hello("w9", &w, Some(&standing)), &confirm(&w, b"h", Some(&standing)), now).is_ok());
        a.revoke("w9", now).unwrap();
        assert_eq!(
            a.check_hello(&hello("w10", &w, Some(&standing)), now),
            Err(Refusal::Revoked { name: "w10".into() })
        );
        // Another master without it does not know it.
        let b = store(AdmissionMode::Token);
        let (w, _) = NodeIdentity::generate().unwrap();
        assert!(b.check_hello(&hello("w", &w, Some(&standing)), now).is_err());
    }

    #[test]
    fn a_revoked_identity_is_refused_under_any_name_and_the_name_can_join_again_with_a_new_key() {
        let mut a = store(AdmissionMode::Open);
        let (w1, _) = NodeIdentity::generate().unwrap();
        assert_eq!(a.finish(&hello("w1", &w1, None), &confirm(&w1, b"h", None), 1).ok(), Some(Admitted::Pinned));
        assert!(a.revoke("w1", 2).unwrap().is_some());
        assert!(a.revoke("nobody", 2).unwrap().is_none());
        for name in ["w1", "w9"] {
            assert_eq!(a.check_hello(&hello(name, &w1, None), 3), Err(Refusal::Revoked { name: name.into() }));
        }
        let (fresh, _) = NodeIdentity::generate().unwrap();
        assert_eq!(a.finish(&hello("w1", &fresh, None), &confirm(&fresh, b"h", None), 4).ok(), Some(Admitted::Pinned));
    }

    #[test]
    fn a_hello_without_identity_is_refused() {
        let a = store(AdmissionMode::Open);
        let (w, _) = NodeIdentity::generate().unwrap();
        let mut h = hello("w", &w, None);
        h.public_key = None;
        assert_eq!(a.check_hello(&h, 1), Err(Refusal::IdentityRequired));
        h.public_key = Some(vec![1, 2, 3]);
        assert_eq!(a.check_hello(&h, 1), Err(Refusal::IdentityRequired));
    }

    #[test]
    fn a_worker_pins_the_masters_identity_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let (master, _) = NodeIdentity::generate().unwrap();
        let mut h = test_settings("m").hello();
        h.public_key = Some(master.public_key().0.to_vec());
        let sig = master.sign_handshake(b"h1");
        assert_eq!(check_master_identity(dir.path(), &h, b"h1", Some(&sig)).ok(), Some(true));
        assert_eq!(check_master_identity(dir.path(), &h, b"h1", Some(&sig)).ok(), Some(false));
        assert!(check_master_identity(dir.path(), &h, b"h2", Some(&sig)).is_err(), "a signature of another hash");
        assert!(check_master_identity(dir.path(), &h, b"h1", None).is_err());
        let (impostor, _) = NodeIdentity::generate().unwrap();
        h.public_key = Some(impostor.public_key().0.to_vec());
        let err = check_master_identity(dir.path(), &h, b"h1", Some(&impostor.sign_handshake(b"h1"))).unwrap_err();
        assert!(matches!(err, PinError::Changed(_)), "{err}");
        assert!(err.to_string().contains("identity changed"), "{err}");
    }

    #[test]
    fn the_identity_file_is_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (a, made) = load_or_create_identity(dir.path()).unwrap();
        assert!(made);
        let (b, made) = load_or_create_identity(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(a.public_key(), b.public_key());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(load_or_create_identity(dir.path()), Err(IdentityFileError::Bad { .. })));
    }
}
