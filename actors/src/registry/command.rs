//! Changes of the registry as commands whose application is a function of the table and the
//! command alone: what a replicated log (several master-eligible nodes, each applying the same
//! commands in the same order) needs, so that every copy holds the same agents, keys, groups and
//! change log positions.
//!
//! Whatever a change needs that is not in the table is decided once, by the node that proposes it,
//! and carried in the command: an enrollment's key, its time and which agents it may replace (that
//! depends on their statuses, which stay out of the log); which pending enrollments expired (that
//! depends on the proposer's clock); a group's creation time. Applying a command never reads the
//! clock, a random source or a status.

use super::enroll::PreparedEnrollment;
use super::master::Registry;
use super::store::StoreError;
use serde::{Deserialize, Serialize};
use wazuh_cluster_protocol::agent::enrollment::EnrollError;
use wazuh_cluster_protocol::message::{AdminError, AdminRequest, AgentEntry};

/// One change of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Enroll(PreparedEnrollment),
    /// A worker delivered an enrollment's key to its agent (keep it) or could not (remove it).
    Resolve {
        token: String,
        delivered: bool,
    },
    /// These pending enrollments expired (those still pending when applied are removed).
    Expire {
        ids: Vec<u32>,
    },
    /// An agent or group change from an API (file changes are not registry commands).
    Admin {
        request: AdminRequest,
        at_ms: u64,
    },
    /// The configured API users of the node that leads (see [`Registry::seed_users`]).
    SeedUsers(Vec<super::user_store::SeedUser>),
    /// Several changes in one log entry, applied in order (the leader gathers the changes that
    /// arrive while earlier ones are being committed: one entry, one disk write and one message
    /// per follower for all of them). A batch holds no batch.
    Batch(Vec<Command>),
}

/// What applying a [`Command`] came to: the same on every registry that applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A log entry without a registry command (a new leader's blank entry, a membership change).
    Nothing,
    Enrolled(Result<AgentEntry, EnrollError>),
    Resolved,
    Expired(Vec<u32>),
    Admin(Result<(), AdminError>),
    /// The configured users applied (by name).
    Seeded(Vec<String>),
    /// The outcomes of a [`Command::Batch`], in its order.
    Batch(Vec<Outcome>),
}

/// Whether `request` changes the registry (the others write files, which file sync spreads).
pub(crate) fn is_registry_change(request: &AdminRequest) -> bool {
    matches!(
        request,
        AdminRequest::DeleteAgent { .. }
            | AdminRequest::CreateGroup { .. }
            | AdminRequest::DeleteGroup { .. }
            | AdminRequest::AssignGroup { .. }
            | AdminRequest::UnassignGroup { .. }
            | AdminRequest::CreateUser { .. }
            | AdminRequest::UpdateUser { .. }
            | AdminRequest::DeleteUser { .. }
            | AdminRequest::RevokeUserTokens { .. }
    )
}

impl Registry {
    /// Applies `command` inside the caller's transaction.
    pub fn apply(&mut self, command: &Command) -> Result<Outcome, StoreError> {
        Ok(match command {
            Command::Enroll(prepared) => Outcome::Enrolled(self.apply_enrollment(prepared)?),
            Command::Resolve { token, delivered } => {
                self.resolve(token, *delivered)?;
                Outcome::Resolved
            }
            Command::Expire { ids } => Outcome::Expired(self.apply_expiry(ids)?),
            Command::SeedUsers(seeds) => match self.seed_users(seeds) {
                Ok(applied) => Outcome::Seeded(applied),
                // A configured user this build cannot take is refused alone, the same on every member.
                Err(StoreError::Invalid(why)) => Outcome::Admin(Err(AdminError::Invalid(why))),
                Err(e) => return Err(e),
            },
            Command::Admin { request, at_ms } if is_registry_change(request) => {
                Outcome::Admin(self.admin_at(request, *at_ms)?)
            }
            Command::Admin { .. } => {
                Outcome::Admin(Err(AdminError::Invalid("a file change is not a registry command".into())))
            }
            Command::Batch(commands) => Outcome::Batch(
                commands
                    .iter()
                    .map(|c| match c {
                        // No leader makes one: applied as nothing (the same on every member)
                        // rather than failing the log.
                        Command::Batch(_) => {
                            log::warn!("a registry log entry holds a batch inside a batch: applied as nothing");
                            Ok(Outcome::Nothing)
                        }
                        c => self.apply(c),
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::enroll::NewAgent;
    use crate::registry::testing::agent;
    use wazuh_cluster_protocol::message::AgentInfoUpdate;

    fn registry() -> Registry {
        Registry::open(&tempfile::tempdir().unwrap().keep()).unwrap()
    }

    fn apply(reg: &mut Registry, c: &Command) -> Outcome {
        reg.begin().unwrap();
        let out = reg.apply(c).unwrap();
        reg.commit().unwrap();
        out
    }

    fn prepare(reg: &Registry, a: &NewAgent, now: u64) -> Command {
        Command::Enroll(reg.prepare_enrollment(a, now).unwrap().unwrap())
    }

    fn disconnected(reg: &mut Registry, id: u32, at: u64) {
        let u = AgentInfoUpdate {
            id,
            status: "disconnected".into(),
            last_keepalive_ms: Some(at),
            version: None,
            info: None,
            group_config_status: None,
            peer_ip: None,
        };
        reg.begin().unwrap();
        reg.store_statuses("worker-1", &[u]).unwrap();
        reg.commit().unwrap();
    }

    #[test]
    fn the_same_commands_make_the_same_registry_whatever_each_node_knows_of_statuses_and_time() {
        // The proposer knows agent statuses and runs a short replacement policy; the follower
        // knows no status at all. Both end with the same table, positions and outcomes.
        let (mut leader, mut follower) = (registry(), registry());
        leader.replace.disconnected_for_ms = 0;
        leader.replace.registered_for_ms = 0;
        let mut log = Vec::new();
        let propose = |leader: &mut Registry, c: Command, log: &mut Vec<(Command, Outcome)>| {
            let out = apply(leader, &c);
            log.push((c, out.clone()));
            out
        };
        let a = agent("web-1", Some("t1"));
        let c = prepare(&leader, &a, 1_000);
        let Outcome::Enrolled(Ok(first)) = propose(&mut leader, c, &mut log) else { panic!("not enrolled") };
        // The same token again: the same agent, through the log too.
        let c = prepare(&leader, &a, 1_001);
        assert_eq!(propose(&mut leader, c, &mut log), Outcome::Enrolled(Ok(first.clone())));
        // web-1 disconnected, as only the leader's view says: a new web-1 replaces it.
        disconnected(&mut leader, first.id, 1_500);
        let c = prepare(&leader, &agent("web-1", None), 2_000);
        let Command::Enroll(p) = &c else { unreachable!() };
        assert_eq!(p.replace, vec![first.id]);
        let Outcome::Enrolled(Ok(second)) = propose(&mut leader, c, &mut log) else { panic!("not replaced") };
        assert_ne!(second.key, first.key);
        // A name held by an agent the leader may not replace is refused the same way everywhere.
        let c = prepare(&registry(), &agent("web-1", None), 2_100);
        assert_eq!(
            propose(&mut leader, c, &mut log),
            Outcome::Enrolled(Err(EnrollError::DuplicateName("web-1".into())))
        );
        for (request, at) in [
            (AdminRequest::CreateGroup { name: "linux".into() }, 3_000),
            (AdminRequest::AssignGroup { id: second.id, group: "linux".into() }, 3_001),
            (AdminRequest::AssignGroup { id: 99, group: "linux".into() }, 3_002),
        ] {
            propose(&mut leader, Command::Admin { request, at_ms: at }, &mut log);
        }
        let pending = prepare(&leader, &agent("db-1", Some("t2")), 4_000);
        propose(&mut leader, pending, &mut log);
        let kept = prepare(&leader, &agent("db-2", Some("t3")), 4_000);
        propose(&mut leader, kept, &mut log);
        propose(&mut leader, Command::Resolve { token: "t3".into(), delivered: true }, &mut log);
        let ids = leader.pending_older_than(10_000).unwrap();
        // db-1 (t2) only: db-2's key was delivered, and the first web-1 (t1) was replaced.
        assert_eq!(ids.len(), 1);
        // Expiry removes what is still pending when applied, whatever the proposer listed.
        let listed = vec![ids[0], second.id];
        assert_eq!(propose(&mut leader, Command::Expire { ids: listed }, &mut log), Outcome::Expired(ids));
        let file = AdminRequest::DeleteGroup { name: "linux".into() };
        propose(&mut leader, Command::Admin { request: file, at_ms: 5_000 }, &mut log);

        // The follower applies the log: same outcomes, table, hash and change log.
        for (c, out) in &log {
            assert_eq!(&apply(&mut follower, c), out, "{c:?}");
        }
        assert_eq!(follower.entries().unwrap(), leader.entries().unwrap());
        assert_eq!(follower.hash(), leader.hash());
        assert_eq!(follower.seq(), leader.seq());
        assert_eq!(follower.changes_since(0).unwrap(), leader.changes_since(0).unwrap());
        assert_eq!(follower.groups().unwrap(), leader.groups().unwrap());
        // Commands survive the log's encoding unchanged.
        for (c, _) in &log {
            let bytes = serde_json::to_vec(c).unwrap();
            assert_eq!(&serde_json::from_slice::<Command>(&bytes).unwrap(), c);
        }
    }

    #[test]
    fn a_file_change_is_not_a_registry_command() {
        let mut reg = registry();
        let request = AdminRequest::DeleteRulesetFile {
            root: wazuh_cluster_protocol::message::RulesetRoot::Rules,
            name: "local_rules.xml".into(),
        };
        let out = apply(&mut reg, &Command::Admin { request, at_ms: 1 });
        assert!(matches!(out, Outcome::Admin(Err(AdminError::Invalid(_)))));
        assert_eq!(reg.seq(), 0);
    }

    #[test]
    fn a_batch_applies_its_commands_in_order_with_the_outcome_of_each_the_same_everywhere() {
        let (mut leader, mut follower) = (registry(), registry());
        // Both enrollments were prepared before either was applied (as the leader does while an
        // earlier entry is being committed): the second web-1 is refused when it is applied.
        let one = prepare(&leader, &agent("web-1", Some("t1")), 1_000);
        let two = prepare(&leader, &agent("web-1", Some("t2")), 1_001);
        let three = prepare(&leader, &agent("db-1", Some("t3")), 1_002);
        let batch = Command::Batch(vec![one, two, three, Command::Resolve { token: "t3".into(), delivered: true }]);
        let out = apply(&mut leader, &batch);
        let Outcome::Batch(outs) = &out else { panic!("{out:?}") };
        assert_eq!(outs.len(), 4);
        assert!(matches!(&outs[0], Outcome::Enrolled(Ok(a)) if a.name == "web-1" && a.id == 1));
        assert_eq!(outs[1], Outcome::Enrolled(Err(EnrollError::DuplicateName("web-1".into()))));
        assert!(matches!(&outs[2], Outcome::Enrolled(Ok(a)) if a.name == "db-1" && a.id == 2));
        assert_eq!(outs[3], Outcome::Resolved);
        assert_eq!(apply(&mut follower, &batch), out);
        assert_eq!(follower.hash(), leader.hash());
        assert_eq!(follower.seq(), leader.seq());
        // A batch inside a batch is no command: it applies as nothing (the log goes on).
        let seq = leader.seq();
        let nested = Command::Batch(vec![Command::Batch(Vec::new())]);
        assert_eq!(apply(&mut leader, &nested), Outcome::Batch(vec![Outcome::Nothing]));
        assert_eq!(leader.seq(), seq);
    }
}
