//! Enrollment (as prepared by one node and applied by every member of a replicated group),
//! its outcome for forwarded enrollments, expiry of keys never delivered, deletion.

use super::master::{now_ms, Registry};
use super::policy::{Incumbent, Verdict};
use super::schema::{fmt_id, groups_text, one_entry, row_entry, DEFAULT_GROUP, TOKENS_KEPT_MS};
use super::store::StoreError;
use rusqlite::{params, OptionalExtension};
use wazuh_cluster_protocol::agent::enrollment::{EnrollError, MAX_GROUPS};
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

/// An enrollment as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewAgent {
    pub name: String,
    pub groups: Vec<String>,
    pub ip: String,
    pub key_hash: Option<String>,
    pub version: Option<String>,
    /// Node that received the enrollment.
    pub node_name: String,
    /// Idempotency token of a forwarded enrollment (`None`: received by the master itself).
    pub token: Option<String>,
}

impl NewAgent {
    /// The enrollment `f`, received by `node_name`; `forwarded` keeps its token for idempotency.
    pub(crate) fn from_forward(
        f: wazuh_cluster_protocol::message::EnrollForward,
        node_name: String,
        forwarded: bool,
    ) -> Self {
        NewAgent {
            name: f.name,
            groups: f.groups,
            ip: f.ip,
            key_hash: f.key_hash,
            version: f.version,
            node_name,
            token: forwarded.then_some(f.token),
        }
    }
}

/// The enrollment endpoint's rules on the fields of `a`.
fn validate_new(a: &NewAgent) -> Result<(), EnrollError> {
    wazuh_cluster_protocol::agent::enrollment::validate_fields(
        &a.name,
        &a.groups,
        &a.ip,
        a.key_hash.as_deref(),
        a.version.as_deref(),
    )
}

/// An enrollment with what one node decided for it (see [`Registry::prepare_enrollment`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreparedEnrollment {
    pub agent: NewAgent,
    /// The agent's key, 64 hex characters.
    pub key: String,
    /// When it was registered.
    pub at_ms: u64,
    /// Agents holding its name, IP or id that it may replace.
    pub replace: Vec<u32>,
    /// The id an insertion asked for (`POST /agents/insert`); `None`: the next free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

/// What an insertion (`POST /agents/insert`) fixes that an enrollment leaves to the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fixed {
    /// The agent's id (1 or more).
    pub id: Option<u32>,
    /// The agent's key: 64 letters and digits, as in `client.keys`.
    pub key: Option<String>,
}

/// Highest id an insertion may ask for.
pub const MAX_AGENT_ID: u32 = i32::MAX as u32;

impl Fixed {
    /// The checks Wazuh's API makes on an insertion's id and key.
    fn validate(&self) -> Result<(), EnrollError> {
        if let Some(id) = self.id {
            if id == 0 || id > MAX_AGENT_ID {
                return Err(EnrollError::InvalidRequest);
            }
        }
        match &self.key {
            Some(k) if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Err(EnrollError::InvalidRequest)
            }
            _ => Ok(()),
        }
    }
}

fn random_key() -> Result<String, EnrollError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| EnrollError::Internal(format!("random source failed: {e}")))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

impl Registry {
    pub(super) fn entry(&self, id: u32) -> Result<Option<AgentEntry>, StoreError> {
        one_entry(&self.table.conn, id)
    }

    pub(super) fn remove_row(&mut self, id: u32) -> Result<bool, StoreError> {
        let Some(e) = self.entry(id)? else { return Ok(false) };
        self.table.conn.prepare_cached("DELETE FROM agents WHERE id = ?1")?.execute(params![id])?;
        self.table.hash.toggle(&e);
        self.counts.remove(id);
        self.log_change(&AgentChange::Removed { id })?;
        Ok(true)
    }

    /// May the agent `id` be replaced by a new enrollment (see [`ReplacePolicy`])?
    pub(super) fn replaceable(&self, id: u32, key_hash: Option<&str>) -> Result<bool, StoreError> {
        let (name, key, registered, status, disconnected_at, last_keepalive): (
            String,
            String,
            i64,
            String,
            Option<i64>,
            Option<i64>,
        ) = self
            .conn
            .prepare_cached(
                "SELECT name, key, registered_at, status, disconnected_at, last_keepalive FROM agents WHERE id = ?1",
            )?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        let incumbent = Incumbent {
            id,
            name: &name,
            key: &key,
            registered_at_ms: ms(registered),
            status: &status,
            disconnected_at_ms: disconnected_at.map(ms),
            last_keepalive_ms: last_keepalive.map(ms),
        };
        Ok(self.replace.decide(&incumbent, key_hash, now_ms()) == Verdict::Replace)
    }

    /// Enrolls one agent inside the caller's transaction. Idempotent per token. The request is
    /// checked again here with the enrollment endpoint's rules, whoever sent it (a worker's forward
    /// is not trusted): nothing that could break a `client.keys` line is ever stored. The same as
    /// [`Registry::prepare_enrollment`] then [`Registry::apply_enrollment`].
    pub fn enroll(&mut self, a: &NewAgent) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        match self.prepare_enrollment(a, now_ms())? {
            Ok(prepared) => self.apply_enrollment(&prepared),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The agent an earlier enrollment with `a`'s idempotency token made, if one did (an agent keeps
    /// its token for good). A refusal leaves nothing: a retry of a refused request is tried afresh,
    /// which is harmless (the worker acts on the one answer it gets), and refused requests, which a
    /// stranger can repeat without end, cost the registry no row.
    pub(super) fn prior_outcome(&self, a: &NewAgent) -> Result<Option<Result<AgentEntry, EnrollError>>, StoreError> {
        let Some(token) = &a.token else { return Ok(None) };
        let made = self
            .conn
            .prepare_cached("SELECT id, name, ip, key, groups FROM agents WHERE token = ?1")?
            .query_row(params![token], row_entry)
            .optional()?;
        Ok(made.map(Ok))
    }

    /// Everything about enrolling `a` that is not a function of the table alone, decided now by
    /// this node: the key (random), the time, and which agents holding its name or IP may be
    /// replaced (that depends on their statuses, which only this node's view has). Applying the
    /// result ([`Registry::apply_enrollment`]) is then the same on every registry with the same
    /// table: what a replicated log needs.
    pub(crate) fn prepare_enrollment(
        &self,
        a: &NewAgent,
        now_ms: u64,
    ) -> Result<Result<PreparedEnrollment, EnrollError>, StoreError> {
        self.prepare_insert(a, &Fixed::default(), now_ms)
    }

    /// [`Registry::prepare_enrollment`] with the id or key an insertion fixes; an agent already
    /// holding that id is replaced under the same policy as one holding the name or address.
    pub(crate) fn prepare_insert(
        &self,
        a: &NewAgent,
        fixed: &Fixed,
        now_ms: u64,
    ) -> Result<Result<PreparedEnrollment, EnrollError>, StoreError> {
        if let Err(e) = validate_new(a).and_then(|()| fixed.validate()) {
            return Ok(Err(e));
        }
        let key = match &fixed.key {
            Some(k) => k.clone(),
            None => match random_key() {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            },
        };
        let mut replace = Vec::new();
        let by_name: Option<u32> = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE name = ?1")?
            .query_row(params![a.name], |r| r.get(0))
            .optional()?;
        let by_ip: Option<u32> = match a.ip.as_str() {
            "any" => None,
            ip => self
                .conn
                .prepare_cached("SELECT id FROM agents WHERE ip = ?1")?
                .query_row(params![ip], |r| r.get(0))
                .optional()?,
        };
        let by_id = match fixed.id {
            Some(id) => self.entry(id)?.map(|e| e.id),
            None => None,
        };
        for old in by_name.into_iter().chain(by_ip).chain(by_id) {
            if !replace.contains(&old) && self.replaceable(old, a.key_hash.as_deref())? {
                replace.push(old);
            }
        }
        Ok(Ok(PreparedEnrollment { agent: a.clone(), key, at_ms: now_ms, replace, id: fixed.id }))
    }

    /// Applies an enrollment prepared by [`Registry::prepare_enrollment`] (here or on another
    /// node), inside the caller's transaction: a function of the table and `p` alone.
    pub(crate) fn apply_enrollment(
        &mut self,
        p: &PreparedEnrollment,
    ) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        if let Err(e) = validate_new(&p.agent) {
            return Ok(Err(e));
        }
        if let Some(prior) = self.prior_outcome(&p.agent)? {
            return Ok(prior);
        }
        let outcome = self.enroll_new(p)?;
        // Outcomes recorded by earlier builds (refusals included) go after their day, by the
        // enrollment's own time (carried in it: the same rows on every member).
        self.table
            .conn
            .prepare_cached("DELETE FROM tokens WHERE at < ?1")?
            .execute(params![p.at_ms.saturating_sub(TOKENS_KEPT_MS) as i64])?;
        Ok(outcome)
    }

    pub(super) fn enroll_new(&mut self, p: &PreparedEnrollment) -> Result<Result<AgentEntry, EnrollError>, StoreError> {
        let a = &p.agent;
        let groups = if a.groups.is_empty() { vec![DEFAULT_GROUP.to_string()] } else { a.groups.clone() };
        for g in &groups {
            let exists: bool = self
                .conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM groups WHERE name = ?1)")?
                .query_row(params![g], |r| r.get(0))?;
            if !exists {
                return Ok(Err(EnrollError::NoSuchGroup(g.clone())));
            }
        }
        if groups.len() > MAX_GROUPS {
            return Ok(Err(EnrollError::TooManyGroups));
        }
        let by_name: Option<u32> = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE name = ?1")?
            .query_row(params![a.name], |r| r.get(0))
            .optional()?;
        if let Some(old) = by_name {
            if !p.replace.contains(&old) {
                return Ok(Err(EnrollError::DuplicateName(a.name.clone())));
            }
            self.remove_row(old)?;
        }
        if a.ip != "any" {
            let by_ip: Option<u32> = self
                .conn
                .prepare_cached("SELECT id FROM agents WHERE ip = ?1")?
                .query_row(params![a.ip], |r| r.get(0))
                .optional()?;
            if let Some(old) = by_ip {
                if !p.replace.contains(&old) {
                    return Ok(Err(EnrollError::DuplicateIp(a.ip.clone())));
                }
                self.remove_row(old)?;
            }
        }
        let last: i64 =
            self.table.conn.prepare_cached("SELECT v FROM meta WHERE k = 'last_id'")?.query_row([], |r| r.get(0))?;
        let id = match p.id {
            Some(id) => {
                if id == 0 || id > MAX_AGENT_ID {
                    return Ok(Err(EnrollError::InvalidRequest));
                }
                if self.entry(id)?.is_some() {
                    if !p.replace.contains(&id) {
                        return Ok(Err(EnrollError::DuplicateId(fmt_id(id))));
                    }
                    self.remove_row(id)?;
                }
                id
            }
            None => u32::try_from(last + 1).map_err(|_| StoreError::Invalid("agent ids exhausted".into()))?,
        };
        if p.key.len() != 64 || !p.key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(Err(EnrollError::InvalidRequest));
        }
        let entry = AgentEntry { id, name: a.name.clone(), ip: a.ip.clone(), key: p.key.clone(), groups };
        self.table
            .conn
            .prepare_cached(
                "INSERT INTO agents (id, name, ip, key, groups, registered_at, node_name, version, token, pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                id,
                entry.name,
                entry.ip,
                entry.key,
                groups_text(&entry.groups),
                p.at_ms as i64,
                a.node_name,
                a.version,
                a.token,
                a.token.is_some() as i64
            ])?;
        // Ids are never handed out twice: an inserted id above the last one moves it.
        self.table
            .conn
            .prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'last_id'")?
            .execute(params![last.max(i64::from(id))])?;
        self.table.hash.toggle(&entry);
        self.counts.set(id, "never_connected", &a.node_name, None);
        self.log_change(&AgentChange::Added(entry.clone()))?;
        Ok(Ok(entry))
    }

    /// The worker delivered the key (keep the agent) or could not (remove it). Idempotent.
    pub fn resolve(&mut self, token: &str, delivered: bool) -> Result<(), StoreError> {
        let id: Option<u32> = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE token = ?1")?
            .query_row(params![token], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(()) };
        if delivered {
            self.table.conn.prepare_cached("UPDATE agents SET pending = 0 WHERE id = ?1")?.execute(params![id])?;
        } else {
            self.remove_row(id)?;
        }
        Ok(())
    }

    /// Removes agents whose delivery was never confirmed within `older_than_ms`.
    pub(crate) fn expire_pending(&mut self, older_than_ms: u64) -> Result<Vec<u32>, StoreError> {
        let ids = self.pending_older_than(now_ms().saturating_sub(older_than_ms))?;
        self.apply_expiry(&ids)
    }

    /// Agents enrolled through a worker before `cutoff_ms` whose delivery is still unconfirmed.
    pub(crate) fn pending_older_than(&self, cutoff_ms: u64) -> Result<Vec<u32>, StoreError> {
        let mut stmt = self.table.conn.prepare("SELECT id FROM agents WHERE pending = 1 AND registered_at < ?1")?;
        let rows = stmt.query_map(params![cutoff_ms as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes those of `ids` that are still pending (one node chose them with its clock; a
    /// delivery confirmed since keeps the agent): the ones removed.
    pub(crate) fn apply_expiry(&mut self, ids: &[u32]) -> Result<Vec<u32>, StoreError> {
        let mut removed = Vec::new();
        for &id in ids {
            let pending: Option<bool> = self
                .conn
                .prepare_cached("SELECT pending FROM agents WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            if pending == Some(true) && self.remove_row(id)? {
                removed.push(id);
            }
        }
        Ok(removed)
    }

    pub fn delete(&mut self, id: u32) -> Result<(), StoreError> {
        if self.remove_row(id)? {
            Ok(())
        } else {
            Err(StoreError::NoSuchAgent(id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::schema::fmt_id;
    use crate::registry::testing::{agent, enroll};
    use crate::registry::ReplacePolicy;

    #[test]
    fn ids_are_wazuh_style_monotonic_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("a1", None)).unwrap();
        let b = enroll(&mut reg, &agent("a2", None)).unwrap();
        assert_eq!((fmt_id(a.id), fmt_id(b.id)), ("001".into(), "002".into()));
        assert_eq!(a.key.len(), 64);
        assert!(a.key.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a.groups, ["default"]);
        reg.begin().unwrap();
        reg.delete(b.id).unwrap();
        reg.commit().unwrap();
        let c = enroll(&mut reg, &agent("a3", None)).unwrap();
        assert_eq!(c.id, 3, "ids are never reused");
        drop(reg);
        let mut reg = Registry::open(dir.path()).unwrap();
        assert_eq!(enroll(&mut reg, &agent("a4", None)).unwrap().id, 4, "survives a restart");
        let keys = std::fs::read_to_string(dir.path().join("etc/client.keys")).unwrap();
        assert_eq!(keys.lines().count(), 3);
        assert!(keys.starts_with(&format!("001 a1 any {}\n", a.key)));
        assert_eq!(fmt_id(1000), "1000");
    }

    fn insert(reg: &mut Registry, a: &NewAgent, id: Option<u32>, key: Option<&str>) -> Result<AgentEntry, EnrollError> {
        let fixed = Fixed { id, key: key.map(String::from) };
        reg.begin().unwrap();
        let out = match reg.prepare_insert(a, &fixed, now_ms()).unwrap() {
            Ok(p) => reg.apply_enrollment(&p).unwrap(),
            Err(e) => Err(e),
        };
        reg.commit().unwrap();
        out
    }

    #[test]
    fn an_insertion_keeps_its_id_and_key_and_moves_the_next_id_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        enroll(&mut reg, &agent("a1", None)).unwrap();
        let key = "K".repeat(32) + &"7".repeat(32);
        let e = insert(&mut reg, &agent("fixed", None), Some(123), Some(&key)).unwrap();
        assert_eq!((e.id, e.key.as_str()), (123, key.as_str()));
        // Below the last id, where no agent is, is fine too; the next free id stays after 123.
        assert_eq!(insert(&mut reg, &agent("low", None), Some(50), None).unwrap().id, 50);
        assert_eq!(enroll(&mut reg, &agent("next", None)).unwrap().id, 124);
        assert_eq!(
            insert(&mut reg, &agent("other", None), Some(123), None),
            Err(EnrollError::DuplicateId("123".into())),
            "an id held by an agent that may not be replaced"
        );
        for bad in ["short", &"x".repeat(65), &("-".to_string() + &"a".repeat(63))] {
            assert_eq!(
                insert(&mut reg, &agent("bad", None), None, Some(bad)),
                Err(EnrollError::InvalidRequest),
                "{bad}"
            );
        }
        assert_eq!(insert(&mut reg, &agent("zero", None), Some(0), None), Err(EnrollError::InvalidRequest));
        let keys = std::fs::read_to_string(dir.path().join("etc/client.keys")).unwrap();
        assert!(keys.contains(&format!("123 fixed any {key}\n")), "{keys}");
        assert_eq!(keys.lines().count(), 4);
    }

    #[test]
    fn duplicates_groups_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        enroll(&mut reg, &agent("web-01", None)).unwrap();
        assert_eq!(enroll(&mut reg, &agent("web-01", None)), Err(EnrollError::DuplicateName("web-01".into())));
        let mut fixed = agent("db", None);
        fixed.ip = "10.0.0.7".into();
        enroll(&mut reg, &fixed).unwrap();
        let mut other = agent("db2", None);
        other.ip = "10.0.0.7".into();
        assert_eq!(enroll(&mut reg, &other), Err(EnrollError::DuplicateIp("10.0.0.7".into())));
        let mut grouped = agent("g1", None);
        grouped.groups = vec!["nosuchgroup".into()];
        assert_eq!(enroll(&mut reg, &grouped), Err(EnrollError::NoSuchGroup("nosuchgroup".into())));
        // A retried forwarded request returns the first answer and creates nothing.
        let first = enroll(&mut reg, &agent("tok", Some("t-1"))).unwrap();
        let again = enroll(&mut reg, &agent("tok", Some("t-1"))).unwrap();
        assert_eq!(first, again);
        assert_eq!(reg.entries().unwrap().len(), 3);
        // Undelivered: removed.
        reg.begin().unwrap();
        reg.resolve("t-1", false).unwrap();
        reg.commit().unwrap();
        assert_eq!(reg.entries().unwrap().len(), 2);
    }

    #[test]
    fn refusals_leave_no_row_and_an_agent_answers_for_its_token_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let at = 1_000_000_000_000u64;
        let apply = |reg: &mut Registry, a: &NewAgent, now: u64| {
            reg.begin().unwrap();
            let out = match reg.prepare_enrollment(a, now).unwrap() {
                Ok(p) => reg.apply_enrollment(&p).unwrap(),
                Err(e) => Err(e),
            };
            reg.commit().unwrap();
            out
        };
        // A row an earlier build recorded for a refusal.
        reg.table
            .conn
            .execute("INSERT INTO tokens (token, id, error, at) VALUES ('old', NULL, 'x', ?1)", [at as i64])
            .unwrap();
        let made = apply(&mut reg, &agent("web", Some("t-made")), at).unwrap();
        let rows = |reg: &Registry| -> i64 {
            reg.table.conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0)).unwrap()
        };
        // Refused requests, however many: no row.
        for i in 0..50 {
            let mut lost = agent(&format!("lost-{i}"), Some(&format!("t-refused-{i}")));
            lost.groups = vec!["nosuchgroup".into()];
            assert!(apply(&mut reg, &lost, at).is_err());
        }
        assert_eq!(rows(&reg), 1, "only the earlier build's row");
        // A retried refusal is tried afresh (the group exists now).
        reg.begin().unwrap();
        reg.create_group("nosuchgroup").unwrap();
        reg.commit().unwrap();
        let mut lost = agent("lost-0", Some("t-refused-0"));
        lost.groups = vec!["nosuchgroup".into()];
        assert!(apply(&mut reg, &lost, at + 1_000).is_ok());
        // A day later the earlier build's row goes; the agent still answers for its own token.
        apply(&mut reg, &agent("db", Some("t-later")), at + TOKENS_KEPT_MS + 1).unwrap();
        assert_eq!(rows(&reg), 0);
        assert_eq!(apply(&mut reg, &agent("web", Some("t-made")), at + TOKENS_KEPT_MS + 2), Ok(made));
    }

    #[test]
    fn an_old_never_connected_agent_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let old = enroll(&mut reg, &agent("web", None)).unwrap();
        reg.replace = ReplacePolicy { enabled: true, disconnected_for_ms: 0, registered_for_ms: 0 };
        let new = enroll(&mut reg, &agent("web", None)).unwrap();
        assert!(new.id > old.id);
        assert_eq!(reg.entries().unwrap().len(), 1);
        // With the key it holds, it is the same agent: not replaced.
        let mut same = agent("web", None);
        same.key_hash = Some(crate::registry::policy::key_hash(new.id, "web", &new.key));
        assert_eq!(enroll(&mut reg, &same), Err(EnrollError::DuplicateName("web".into())));
    }
}
