//! Which node's word counts for which agent: the nodes that hold agent sessions now, the first
//! live claim of an agent against later ones (logged as a contest), the moves a reconnect order
//! releases, and the checks on every status a node reports.

use super::master::{now_ms, Registry, Release, CLAIM_LAPSE_MS, RELEASE_MS};
use super::schema::{fmt_id, one_entry};
use super::store::StoreError;
use rusqlite::{params, OptionalExtension};
use wazuh_cluster_protocol::message::AgentInfoUpdate;

/// A status update as the master stores it, whoever sent it: a keep-alive time no later than the
/// master's own clock (a report from the future would otherwise win over every later one), an
/// address that is an address, a version and a configuration status of the expected shape; a
/// field that is not is dropped (the stored value stays).
fn checked_update(u: &AgentInfoUpdate, now: u64) -> std::borrow::Cow<'_, AgentInfoUpdate> {
    let printable = |t: &str, max: usize| t.len() <= max && !t.chars().any(char::is_control);
    let time_ok = u.last_keepalive_ms.is_none_or(|t| t <= now);
    let version_ok = u.version.as_deref().is_none_or(|v| printable(v, 64));
    let status_ok = u.group_config_status.as_deref().is_none_or(|s| s == "synced" || s == "not synced");
    let ip_ok = u.peer_ip.as_deref().is_none_or(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    if time_ok && version_ok && status_ok && ip_ok {
        // The usual case, on the status path: nothing to copy.
        return std::borrow::Cow::Borrowed(u);
    }
    std::borrow::Cow::Owned(AgentInfoUpdate {
        id: u.id,
        status: u.status.clone(),
        last_keepalive_ms: u.last_keepalive_ms.map(|t| t.min(now)),
        version: u.version.clone().filter(|_| version_ok),
        info: u.info.clone(),
        group_config_status: u.group_config_status.clone().filter(|_| status_ok),
        peer_ip: u.peer_ip.clone().filter(|_| ip_ok),
    })
}

/// Why a node's status report is not stored: another live node holds the agent.
pub(super) enum Refused {
    /// A report older than the holder's, or not a claim: not stored, not logged.
    Stale,
    /// A newer claim of an agent the named node holds: logged (at most once per 10 s).
    Contest(String),
}

impl Registry {
    /// Marks `node` as holding agent sessions now (the master itself, a connected worker) or not
    /// (a worker that left): what decides competing claims in [`Registry::store_statuses`].
    pub(crate) fn set_live(&mut self, node: &str, live: bool) {
        if live {
            self.claims.live.insert(node.to_string());
        } else {
            self.claims.live.remove(node);
        }
    }

    /// Worker `node`'s connection to the master ended (a goodbye after its drain, or a death): the
    /// agents it still had active or pending are disconnected now, rather than counted active on a
    /// node that is gone until they report elsewhere. An agent that reports through another node
    /// since is untouched (its node is that one). The ids disconnected.
    pub(crate) fn node_gone(&mut self, node: &str, now: u64) -> Result<Vec<u32>, StoreError> {
        let ids: Vec<u32> = self
            .conn
            .prepare_cached("SELECT id FROM agents WHERE node_name = ?1 AND status IN ('active', 'pending')")?
            .query_map(params![node], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for &id in &ids {
            self.table
                .conn
                .prepare_cached(
                    "UPDATE agents SET status = 'disconnected', disconnected_at = ?2
                     WHERE id = ?1 AND node_name = ?3 AND status IN ('active', 'pending')",
                )?
                .execute(params![id, now as i64, node])?;
            self.counts.update(id, "disconnected", node, None);
        }
        Ok(ids)
    }

    /// Up to `n` agents active on `node` whose move costs least (for the rebalancer): those that
    /// already have their groups' configuration first (no `merged.mg` follows them to their next
    /// node), then the most recently registered.
    pub(crate) fn movable(&self, node: &str, n: usize) -> Result<Vec<u32>, StoreError> {
        let ids = self
            .conn
            .prepare_cached(
                "SELECT id FROM agents WHERE node_name = ?1 AND status = 'active'
                 ORDER BY COALESCE(group_config_status = 'synced', 0) DESC, id DESC LIMIT ?2",
            )?
            .query_map(params![node, n as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// A log line about the reports refused as contested since the last line, at most once per
    /// 10 s (the caller logs it, naming its node).
    pub(crate) fn contest_line(&mut self) -> Option<String> {
        self.claims.last_contest.as_ref()?;
        let n = self.claims.contests.allow()?;
        let (id, claimant, holder) = self.claims.last_contest.take()?;
        let others = if n > 0 { format!(" ({n} similar not logged)") } else { String::new() };
        Some(format!(
            "worker {claimant} reports agent {} which is active on {holder}: refused, the first live claim holds{others}; if this repeats, one of them is not telling the truth",
            fmt_id(id)
        ))
    }

    /// An operator asked the agents `ids` (all when empty) connected to `holder` (any node when
    /// `None`) to reconnect: for [`RELEASE_MS`] from `now`, another node's claim of one of them is
    /// the move this causes, taken (and logged as such), not a contest.
    pub fn release_claims(&mut self, holder: Option<&str>, ids: &[u32], now: u64) {
        self.claims.releases.retain(|r| r.until_ms > now);
        let ids = (!ids.is_empty()).then(|| ids.iter().copied().collect());
        self.claims.releases.push(Release { ids, holder: holder.map(str::to_string), until_ms: now + RELEASE_MS });
    }

    pub(super) fn released(&self, id: u32, holder: &str, now: u64) -> bool {
        self.claims.releases.iter().any(|r| {
            r.until_ms > now
                && r.ids.as_ref().is_none_or(|ids| ids.contains(&id))
                && r.holder.as_deref().is_none_or(|h| h == holder)
        })
    }

    /// A log line about the moves reconnect orders caused since the last line, at most once per
    /// 10 s (the caller logs it, naming its node).
    pub(crate) fn move_line(&mut self) -> Option<String> {
        self.claims.last_move.as_ref()?;
        self.claims.move_lines.allow()?;
        let (id, from, to) = self.claims.last_move.take()?;
        let n = std::mem::take(&mut self.claims.moves);
        let others = if n > 1 { format!(" ({} more agents moved since the last line)", n - 1) } else { String::new() };
        Some(format!("agent {} moved from {from} to {to} after a reconnect order{others}", fmt_id(id)))
    }

    /// Whether `node`'s report on agent `id` (of a keep-alive at `reported`) is refused because
    /// another live node has the agent active and reported it within [`CLAIM_LAPSE_MS`]: the
    /// master's order is that the first claim holds, unless a reconnect order released the agent
    /// (then the claim is its move). A claim is a contest (logged) only when it is newer than the
    /// holder's last keep-alive: an older one is the node the agent left speaking late (its report
    /// was on its way, or waited in the inbox, while the agent connected elsewhere).
    pub(super) fn contested(
        &mut self,
        node: &str,
        id: u32,
        now: u64,
        claim: bool,
        reported: Option<u64>,
    ) -> Result<Option<Refused>, StoreError> {
        let Some(holder) = self.counts.active_on(id) else { return Ok(None) };
        if holder == node || !self.claims.live.contains(holder) {
            return Ok(None);
        }
        let holder = holder.to_string();
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT last_keepalive FROM agents WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?
            .flatten();
        let fresh = last.is_some_and(|t| now.saturating_sub(t.max(0) as u64) < CLAIM_LAPSE_MS);
        if fresh && claim && self.released(id, &holder, now) {
            self.claims.last_move = Some((id, holder, node.to_string()));
            self.claims.moves += 1;
            return Ok(None);
        }
        if !fresh {
            return Ok(None);
        }
        let late = reported.zip(last).is_some_and(|(r, l)| r < l.max(0) as u64);
        Ok(Some(if claim && !late { Refused::Contest(holder) } else { Refused::Stale }))
    }

    /// Stores status updates reported by `node` (a worker, or the master for its own agents), only
    /// for agents that exist, and never over a newer report from another node (an agent that moved),
    /// nor over the live claim of another node (see [`Registry::contested`]; counted as stale and
    /// logged, naming both nodes).
    /// A status Wazuh does not have (or `never_connected`, which only the registry sets) is refused
    /// and counted as unknown. Returns (stored, unknown, stale).
    pub(crate) fn store_statuses(
        &mut self,
        node: &str,
        updates: &[AgentInfoUpdate],
    ) -> Result<(u32, u32, u32), StoreError> {
        let (mut stored, mut unknown, mut stale) = (0, 0, 0);
        let now = now_ms();
        for u in updates {
            let checked = checked_update(u, now);
            let u = &*checked;
            if super::counts::status_code(&u.status).is_none_or(|c| c == 0) {
                unknown += 1;
                continue;
            }
            let claim = u.status == "active";
            if let Some(refused) = self.contested(node, u.id, now, claim, u.last_keepalive_ms)? {
                stale += 1;
                // Only a newer claim is a contest: another node's word that the agent left it (its
                // old session ending after a move), or its report from before the move, is merely
                // stale.
                if let Refused::Contest(holder) = refused {
                    self.claims.last_contest = Some((u.id, node.to_string(), holder));
                }
                continue;
            }
            let changed = if u.version.is_none()
                && u.info.is_none()
                && u.group_config_status.is_none()
                && u.peer_ip.is_none()
            {
                // A keep-alive that changed nothing but the time: the light statement.
                self.table.conn
                    .prepare_cached(
                        "UPDATE agents SET status = ?2, last_keepalive = COALESCE(?3, last_keepalive), node_name = ?4,
                            disconnected_at = CASE WHEN ?2 = 'disconnected' THEN ?5 ELSE NULL END
                         WHERE id = ?1 AND (node_name = ?4 OR last_keepalive IS NULL OR ?3 IS NULL AND status != 'active'
                                            OR last_keepalive <= ?3)",
                    )?
                    .execute(params![u.id, u.status, u.last_keepalive_ms.map(|v| v as i64), node, now_ms() as i64])?
            } else {
                self.store_status_details(node, u)?
            };
            if changed > 0 {
                stored += 1;
                self.counts.update(u.id, &u.status, node, u.group_config_status.as_deref());
            } else if one_entry(&self.table.conn, u.id)?.is_some() {
                stale += 1;
            } else {
                unknown += 1;
            }
        }
        Ok((stored, unknown, stale))
    }

    /// One status update with its details (version, keep-alive fields...): the full statement.
    pub(super) fn store_status_details(&mut self, node: &str, u: &AgentInfoUpdate) -> Result<usize, StoreError> {
        let info = u.info.as_ref().and_then(|i| serde_json::to_string(i).ok());
        let i = u.info.as_ref();
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE agents SET status = ?2, last_keepalive = COALESCE(?3, last_keepalive), node_name = ?4,
                    version = COALESCE(?5, version), os_name = COALESCE(?6, os_name),
                    os_platform = COALESCE(?7, os_platform), os_version = COALESCE(?8, os_version),
                    info = COALESCE(?9, info), merged_sum = COALESCE(?10, merged_sum),
                    config_sum = COALESCE(?11, config_sum),
                    group_config_status = COALESCE(?12, group_config_status), peer_ip = COALESCE(?13, peer_ip),
                    disconnected_at = CASE WHEN ?2 = 'disconnected' THEN ?14 ELSE NULL END
             WHERE id = ?1 AND (node_name = ?4 OR last_keepalive IS NULL OR ?3 IS NULL AND status != 'active'
                                OR last_keepalive <= ?3)",
            )?
            .execute(params![
                u.id,
                u.status,
                u.last_keepalive_ms.map(|v| v as i64),
                node,
                u.version,
                i.map(|i| i.os_name.clone()),
                i.map(|i| i.os_platform.clone()),
                i.map(|i| i.os_version.clone()),
                info,
                i.and_then(|i| i.merged_sum.clone()),
                i.and_then(|i| i.config_sum.clone()),
                u.group_config_status,
                u.peer_ip,
                now_ms() as i64,
            ])?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{agent, enroll, status};

    #[test]
    fn statuses_are_stored_only_for_existing_agents_and_never_over_a_newer_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("s1", None)).unwrap();
        // A deleted (or never existing) agent is counted, not inserted.
        assert_eq!(reg.store_statuses("worker-1", &[status(999, "active", Some(10))]).unwrap(), (0, 1, 0));
        assert_eq!(reg.rows(None).unwrap().len(), 1);
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(100))]).unwrap(), (1, 0, 0));
        // The agent moved to worker-2 (newer keep-alive); worker-1's late "disconnected" loses.
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(200))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "disconnected", Some(100))]).unwrap(), (0, 0, 1));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!((row.status.as_str(), row.node_name.as_str()), ("active", "worker-2"));
        assert_eq!(row.last_keepalive_ms, Some(200));
    }

    /// A report from the future cannot take an agent for good: its time is the master's clock at
    /// most, so the real node's next report wins; fields of the wrong shape are not stored.
    #[test]
    fn a_worker_cannot_claim_an_agent_from_the_future_or_store_forged_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("victim", None)).unwrap();
        let t0 = now_ms();
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(t0))]).unwrap(), (1, 0, 0));
        let forged = AgentInfoUpdate {
            version: Some("Wazuh v9\u{1b}[2J".into()),
            peer_ip: Some("999.1.1.1; rm -rf /".into()),
            group_config_status: Some("owned".into()),
            ..status(a.id, "active", Some(9_000_000_000_000_000_000))
        };
        assert_eq!(reg.store_statuses("evil3", &[forged]).unwrap(), (1, 0, 0));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!(row.node_name, "evil3");
        assert!(row.last_keepalive_ms.is_some_and(|t| t <= now_ms()), "a time from the future was stored");
        assert_eq!(row.version.as_deref(), Some("Wazuh v4.14.7"), "a forged version was stored");
        assert_eq!(row.peer_ip, None);
        assert_eq!(row.group_config_status, None);
        // The real worker's next keep-alive takes it back.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!((row.status.as_str(), row.node_name.as_str()), ("active", "worker-1"));
    }

    /// A worker that is gone leaves no agent counted active on it; one that moved is untouched.
    #[test]
    fn a_gone_workers_agents_are_disconnected_at_once_but_not_those_that_moved() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let stayed = enroll(&mut reg, &agent("stayed", None)).unwrap();
        let moved = enroll(&mut reg, &agent("moved", None)).unwrap();
        let never = enroll(&mut reg, &agent("never", None)).unwrap();
        reg.set_live("worker-1", true);
        let t = now_ms() - 1_000;
        reg.store_statuses("worker-1", &[status(stayed.id, "active", Some(t)), status(moved.id, "active", Some(t))])
            .unwrap();
        // Worker 1 says goodbye (it is draining): its agents' moves are believed from then on.
        reg.set_live("worker-1", false);
        reg.store_statuses("worker-2", &[status(moved.id, "active", Some(now_ms()))]).unwrap();
        assert_eq!(reg.node_gone("worker-1", now_ms()).unwrap(), [stayed.id]);
        let row = |id| reg.rows(Some(id)).unwrap().remove(0);
        assert_eq!((row(stayed.id).status.as_str(), row(stayed.id).node_name.as_str()), ("disconnected", "worker-1"));
        assert_eq!((row(moved.id).status.as_str(), row(moved.id).node_name.as_str()), ("active", "worker-2"));
        assert_eq!(row(never.id).status, "never_connected");
        assert_eq!(reg.counts.active_on(stayed.id), None);
        assert!(reg.node_gone("worker-1", now_ms()).unwrap().is_empty(), "once");
    }

    /// Competing claims of one agent are decided by the master's order: the live node that has
    /// it active keeps it until it reports it gone, leaves, or stops reporting it.
    #[test]
    fn a_live_claim_holds_against_other_workers_until_released_or_lapsed() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("held", None)).unwrap();
        reg.set_live("worker-1", true);
        reg.set_live("evil", true);
        let node_of = |reg: &Registry| {
            let row = reg.rows(Some(a.id)).unwrap().remove(0);
            (row.status, row.node_name)
        };
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        // Another live worker cannot report it, active or not.
        for s in ["active", "disconnected"] {
            assert_eq!(reg.store_statuses("evil", &[status(a.id, s, Some(now_ms()))]).unwrap(), (0, 0, 1), "{s}");
        }
        assert_eq!(node_of(&reg), ("active".to_string(), "worker-1".to_string()));
        // Released by its holder: the agent reconnecting elsewhere is that node's.
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "disconnected", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("evil", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        // The holder leaves (or is revoked): the claim goes with it.
        reg.set_live("evil", false);
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(node_of(&reg), ("active".to_string(), "worker-1".to_string()));
        // A claim that stopped being renewed lapses.
        reg.set_live("worker-2", true);
        let old = now_ms() - CLAIM_LAPSE_MS - 1000;
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(old))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(node_of(&reg), ("active".to_string(), "worker-2".to_string()));
    }

    #[test]
    fn a_reconnect_order_makes_the_moves_it_causes_moves_not_contests() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("moving", None)).unwrap();
        let b = enroll(&mut reg, &agent("staying", None)).unwrap();
        for n in ["worker-1", "worker-2"] {
            reg.set_live(n, true);
        }
        for id in [a.id, b.id] {
            assert_eq!(reg.store_statuses("worker-1", &[status(id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        }
        // Without an order, worker-2's claim is a contest, logged as one.
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        assert!(reg.contest_line().is_some_and(|l| l.contains("not telling the truth")));
        assert_eq!(reg.move_line(), None);
        // The operator reconnects agent `a` (only): its move to worker-2 is taken and logged as a move.
        reg.release_claims(None, &[a.id], now_ms());
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
        assert_eq!(reg.contest_line(), None);
        let line = reg.move_line().expect("a move line");
        assert!(
            line.contains(&format!("agent {} moved from worker-1 to worker-2 after a reconnect order", fmt_id(a.id))),
            "{line}"
        );
        // The old session's word that it left is merely stale: neither stored nor a contest.
        assert_eq!(
            reg.store_statuses("worker-1", &[status(a.id, "disconnected", Some(now_ms() - 5))]).unwrap(),
            (0, 0, 1)
        );
        assert_eq!(reg.contest_line(), None);
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!((row.status.as_str(), row.node_name.as_str()), ("active", "worker-2"));
        // The order named `a` only; and an order for worker-1's agents does not release worker-2's.
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        reg.release_claims(Some("worker-2"), &[], now_ms());
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        // An order lapses.
        reg.release_claims(None, &[], now_ms() - RELEASE_MS - 1);
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        reg.release_claims(Some("worker-1"), &[], now_ms());
        assert_eq!(reg.store_statuses("worker-2", &[status(b.id, "active", Some(now_ms()))]).unwrap(), (1, 0, 0));
    }

    /// After a move the node the agent left may still speak of it: a report from before the move,
    /// sent or waiting in the inbox while the agent connected elsewhere. It is refused as stale
    /// and not logged; a claim newer than the holder's last keep-alive still is a contest.
    #[test]
    fn a_late_report_from_before_a_move_is_stale_not_a_contest() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("moving", None)).unwrap();
        for n in ["worker-1", "worker-2"] {
            reg.set_live(n, true);
        }
        let before = now_ms() - 2_000;
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(before))]).unwrap(), (1, 0, 0));
        reg.release_claims(Some("worker-1"), &[a.id], now_ms());
        let moved = now_ms() - 1_000;
        assert_eq!(reg.store_statuses("worker-2", &[status(a.id, "active", Some(moved))]).unwrap(), (1, 0, 0));
        assert!(reg.move_line().is_some());
        // worker-1's report of the agent's last keep-alive there arrives now.
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(before + 500))]).unwrap(), (0, 0, 1));
        assert_eq!(reg.contest_line(), None, "a late report is not a contest");
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!((row.node_name.as_str(), row.last_keepalive_ms), ("worker-2", Some(moved)));
        // A claim newer than worker-2's last keep-alive is one, refused and logged.
        assert_eq!(reg.store_statuses("worker-1", &[status(a.id, "active", Some(now_ms()))]).unwrap(), (0, 0, 1));
        assert!(reg.contest_line().is_some_and(|l| l.contains("worker worker-1 reports agent")), "a contest");
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!(row.node_name, "worker-2");
    }

    #[test]
    fn a_keepalive_without_details_keeps_them_and_counts_follow_every_update() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        let a = enroll(&mut reg, &agent("s1", None)).unwrap();
        let b = enroll(&mut reg, &agent("s2", None)).unwrap();
        assert_eq!(reg.count(Some("never_connected"), None), 2);
        let full = AgentInfoUpdate {
            group_config_status: Some("synced".into()),
            peer_ip: Some("10.1.1.1".into()),
            ..status(a.id, "active", Some(100))
        };
        reg.store_statuses("worker-1", &[full]).unwrap();
        let light = AgentInfoUpdate { version: None, ..status(a.id, "active", Some(300)) };
        assert_eq!(reg.store_statuses("worker-1", &[light]).unwrap(), (1, 0, 0));
        let row = reg.rows(Some(a.id)).unwrap().remove(0);
        assert_eq!(row.last_keepalive_ms, Some(300));
        assert_eq!(row.version.as_deref(), Some("Wazuh v4.14.7"), "details kept");
        assert_eq!((row.group_config_status.as_deref(), row.peer_ip.as_deref()), (Some("synced"), Some("10.1.1.1")));
        // Statuses Wazuh does not have are refused, and counted as unknown.
        assert_eq!(reg.store_statuses("worker-1", &[status(b.id, "bogus", Some(1))]).unwrap(), (0, 1, 0));
        assert_eq!(reg.store_statuses("worker-1", &[status(b.id, "never_connected", Some(1))]).unwrap(), (0, 1, 0));
        let summary = reg.status_summary();
        assert_eq!((summary.connection["active"], summary.connection["never_connected"]), (1, 1));
        assert_eq!(summary.configuration["synced"], 1);
        assert_eq!(summary.nodes["worker-1"]["active"], 1);
        // A light update keeps the configuration status in the counts too.
        reg.store_statuses("worker-2", &[AgentInfoUpdate { version: None, ..status(a.id, "active", Some(400)) }])
            .unwrap();
        assert_eq!(reg.status_summary().configuration["synced"], 1);
        assert_eq!(reg.count(Some("active"), Some("worker-2")), 1);
        reg.delete(a.id).unwrap();
        assert_eq!(reg.status_summary().connection["total"], 1);
    }
}
