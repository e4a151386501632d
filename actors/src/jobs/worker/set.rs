//! The job set of a worker's end of its connection to the master.
//!
//! | job | kind | does |
//! |---|---|---|
//! | `KeepAlive` | periodic | `keep_alive` every interval, with its siblings' health |
//! | `AgentInfo` | periodic | the statuses of this worker's agents |
//! | `AgentGroupsSend` | server | applies the master's `agent_groups` pushes to the replica |
//! | `Integrity` | periodic | file sync rounds, and at once on `integrity_changed` |
//!
//! `force_reconnect` from the master goes straight to the agent hub.

use super::agent_groups::{tell_position, AgentGroupsApply};
use super::integrity::Integrity;
use super::status::{AgentInfo, KeepAlive};
use super::sync_round::Schedule;
use crate::agents::hub::AgentHub;
use crate::agents::messages::{AskAgent, ForceReconnect, RefuseFor, SendAway, SendToAgents, MAX_AWAY_MS};
use crate::connection::{ConnHandle, Dispatch, Inbound, LocalFuture, Undeliverable, WorkerSide};
use crate::jobs::runtime::{
    deliver as send, Controls, JobCore, JobSetView, Notice, Request, Server, SetControl, MAILBOX,
};
use crate::registry::{Replica, StoreHandle};
use crate::settings::ChannelSettings;
use crate::supervise::{liveness, JobHealth};
use actix::prelude::*;
use log::{info, warn};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wazuh_cluster_protocol::message::{AgentAnswer, AgentCommandSent, JobKind, MessageName, RulesetReloaded};
use wazuh_cluster_protocol::{Kind, MasterToWorker, WorkerToMaster};

/// What a worker lends its connection: the agent replica and (when it serves agents) its agent hub.
#[derive(Clone)]
pub struct WorkerServices {
    pub replica: StoreHandle<Replica>,
    pub agents: Option<Addr<AgentHub>>,
    /// The node's ruleset reloader and its health, when analysisd's control socket is configured.
    pub ruleset: Option<(Addr<crate::ruleset::RulesetReloader>, JobHealth)>,
    /// The digest of the worker's files the last time a sync round ended with them as the
    /// master's (kept across connections).
    pub tree: Arc<tokio::sync::watch::Sender<String>>,
    /// A master-eligible node following the leader's files: it syncs files only, and never asks
    /// for the agent table (its registry comes through the Raft log).
    pub files_only: bool,
}

/// The job actors of the worker's connection.
pub struct WorkerJobs {
    agent_groups: Addr<Server<AgentGroupsApply>>,
    integrity: Addr<Integrity>,
    hub: Option<Addr<AgentHub>>,
    control: SetControl,
    last_ack_ms: Arc<AtomicU64>,
    node: String,
    peer: String,
    conn: ConnHandle<WorkerSide>,
    ruleset: Option<Addr<crate::ruleset::RulesetReloader>>,
    tree: tokio::sync::watch::Receiver<String>,
    /// How long a reload request may wait for the files to reach the master's digest.
    reload_wait: std::time::Duration,
    /// This node's API, for the reads of its own the master forwards.
    api_calls: crate::settings::ApiCalls,
}

impl WorkerJobs {
    pub fn spawn(conn: ConnHandle<WorkerSide>, settings: &Arc<ChannelSettings>, services: &WorkerServices) -> Rc<Self> {
        let (alive, all_stopped) = liveness();
        let peer = conn.peer().to_string();
        let core = |name| JobCore::new(name, JobKind::Periodic, settings, &peer);
        let (keepalive_core, agent_info_core, integrity_core) =
            (core("KeepAlive"), core("AgentInfo"), core("Integrity"));
        let job = AgentGroupsApply {
            replica: services.replica.clone(),
            node: settings.node_name.clone(),
            peer: peer.clone(),
        };
        let (agent_groups, groups_health) =
            Server::start("AgentGroupsSend", job, conn.clone(), settings, alive.clone());
        let mut controls = Controls::default();
        let siblings: Vec<JobHealth> = vec![
            keepalive_core.health().clone(),
            agent_info_core.health().clone(),
            groups_health.clone(),
            integrity_core.health().clone(),
        ];
        // The node's ruleset reloads are reported to the master with the connection's jobs.
        let siblings: Vec<JobHealth> =
            siblings.into_iter().chain(services.ruleset.as_ref().map(|(_, h)| h.clone())).collect();
        let last_ack_ms = Arc::new(AtomicU64::new(0));
        let (c, s, l) = (conn.clone(), siblings.clone(), last_ack_ms.clone());
        let (kh, ah, ih) =
            (keepalive_core.health().clone(), agent_info_core.health().clone(), integrity_core.health().clone());
        let keepalive = crate::supervise::start(MAILBOX, Some(alive.clone()), move |_| KeepAlive {
            core: keepalive_core,
            conn: c,
            siblings: s,
            last_ack_ms: l,
        });
        let (c, hub) = (conn.clone(), services.agents.clone());
        let agent_info = crate::supervise::start(MAILBOX, Some(alive.clone()), move |_| AgentInfo {
            core: agent_info_core,
            conn: c,
            hub,
            last_sent: None,
            sent: 0,
        });
        let (c, hub) = (conn.clone(), services.agents.clone());
        let ruleset = services.ruleset.as_ref().map(|(addr, _)| addr.clone());
        let tree = services.tree.clone();
        let integrity = crate::supervise::start(MAILBOX, Some(alive), move |_| Integrity {
            core: integrity_core,
            conn: c,
            hub,
            ruleset: ruleset.clone(),
            ruleset_pending: false,
            tree: tree.clone(),
            manifest: None,
            schedule: Schedule::default(),
            totals: Default::default(),
        });
        controls.add("KeepAlive", &keepalive, kh);
        controls.add("AgentInfo", &agent_info, ah);
        controls.add("AgentGroupsSend", &agent_groups, groups_health);
        controls.add("Integrity", &integrity, ih);
        let backoff = settings.jobs.restart_backoff();
        // The master pushes the agent table once it knows the replica's position.
        let tasks = if services.files_only {
            Vec::new()
        } else {
            vec![actix_rt::spawn(tell_position(services.replica.clone(), conn.clone(), backoff))]
        };
        Rc::new(WorkerJobs {
            agent_groups,
            integrity,
            hub: services.agents.clone(),
            control: SetControl::new(controls, tasks, all_stopped),
            last_ack_ms,
            node: settings.node_name.clone(),
            peer,
            conn,
            ruleset: services.ruleset.as_ref().map(|(addr, _)| addr.clone()),
            tree: services.tree.subscribe(),
            reload_wait: settings.request_timeout * 3 / 4,
            api_calls: settings.api_calls.clone(),
        })
    }

    /// This end's jobs (a worker knows nothing of the master's end).
    pub fn view(&self) -> JobSetView {
        let ack = self.last_ack_ms.load(Ordering::Relaxed);
        JobSetView { jobs: self.control.reports(), peer_jobs: Vec::new(), last_keepalive_ms: (ack > 0).then_some(ack) }
    }

    #[cfg(feature = "testing")]
    /// Sends `fault` to the job named `job`; false if there is none.
    pub(crate) fn inject(&self, job: &str, fault: crate::jobs::runtime::JobFault) -> bool {
        self.control.inject(job, fault)
    }
}

/// Waits (at most `wait`) until the worker's files have the master's `digest`, then has its
/// analysisd reload the ruleset.
async fn reload_when_in_sync(
    ruleset: Option<Addr<crate::ruleset::RulesetReloader>>,
    tree: &mut tokio::sync::watch::Receiver<String>,
    digest: &str,
    wait: std::time::Duration,
) -> RulesetReloaded {
    let Some(ruleset) = ruleset else {
        return RulesetReloaded { reloaded: false, message: "this worker has no analysis.control configured".into() };
    };
    if tokio::time::timeout(wait, tree.wait_for(|d| d == digest)).await.is_err() {
        return RulesetReloaded {
            reloaded: false,
            message: format!("its files did not reach the master's digest {digest} within {wait:?}; not reloaded"),
        };
    }
    match ruleset.send(crate::ruleset::ReloadNow).await {
        Ok(crate::ruleset::ReloadOutcome::Reloaded(words)) => {
            RulesetReloaded { reloaded: true, message: if words.is_empty() { "reloaded".into() } else { words } }
        }
        Ok(crate::ruleset::ReloadOutcome::Failed(why)) => RulesetReloaded { reloaded: false, message: why },
        Err(_) => RulesetReloaded { reloaded: false, message: "the ruleset reloader stopped".into() },
    }
}

impl Dispatch<WorkerSide> for WorkerJobs {
    fn deliver(&self, message: Inbound<MasterToWorker>) -> LocalFuture<Result<(), Undeliverable>> {
        let Inbound { kind, body, permit } = message;
        use MasterToWorker as M;
        match (kind, body) {
            (Kind::Request(id), M::AgentGroups(body)) => send(&self.agent_groups, Request { id, body, permit }),
            (Kind::Notify, M::IntegrityChanged(body)) => send(&self.integrity, Notice { body, _permit: permit }),
            (Kind::Notify, M::ForceReconnect(f)) => {
                let hub = self.hub.clone();
                Box::pin(async move {
                    if let Some(hub) = hub {
                        hub.send(ForceReconnect(f.ids)).await.map_err(|_| Undeliverable::Stopped)?;
                    }
                    drop(permit);
                    Ok(())
                })
            }
            (Kind::Request(id), M::AgentCommand(c)) => {
                let (hub, conn) = (self.hub.clone(), self.conn.clone());
                let (node, peer) = (self.node.clone(), self.peer.clone());
                Box::pin(async move {
                    let messages = c.messages.into_iter().map(|(id, m)| (id, m.into_bytes())).collect();
                    if let (Some(hub), Some(ms), false) = (&hub, c.away_ms, c.refuse.is_empty()) {
                        let away = std::time::Duration::from_millis(ms.min(MAX_AWAY_MS));
                        hub.send(RefuseFor { ids: c.refuse, away }).await.map_err(|_| Undeliverable::Stopped)?;
                    }
                    let sent = match (hub, c.away_ms) {
                        (Some(hub), None) => {
                            hub.send(SendToAgents(messages)).await.map_err(|_| Undeliverable::Stopped)?
                        }
                        // A rebalancing move: the agents are refused here for a while.
                        (Some(hub), Some(ms)) => {
                            let away = std::time::Duration::from_millis(ms.min(MAX_AWAY_MS));
                            hub.send(SendAway { messages, away }).await.map_err(|_| Undeliverable::Stopped)?
                        }
                        (None, _) => Vec::new(),
                    };
                    if !sent.is_empty() {
                        info!(node = node.as_str(); "master {peer} had {} agents sent a command", sent.len());
                    }
                    let _ = conn.respond(id, WorkerToMaster::AgentCommandSent(AgentCommandSent { sent })).await;
                    drop(permit);
                    Ok(())
                })
            }
            (Kind::Request(id), M::NodeApiCall(call)) => {
                let (conn, reader) = (self.conn.clone(), self.api_calls.reader());
                let (node, peer) = (self.node.clone(), self.peer.clone());
                Box::pin(async move {
                    // Only reads of this node's own, and its drain: the master asks nothing else
                    // this way (the node's API checks the caller's credential as for its own).
                    use wazuh_cluster_protocol::message::ApiMethod;
                    let drain =
                        call.method == ApiMethod::Put && call.target.split('?').next() == Some("/manager/drain");
                    let own = (call.method == ApiMethod::Get || drain)
                        && call.target.starts_with("/manager/")
                        && call.target.bytes().all(|b| b.is_ascii_graphic())
                        && call.target.len() <= wazuh_cluster_protocol::message::ApiCall::MAX_TARGET;
                    let answer = match reader {
                        Some(reader) if own => reader.call(call).await,
                        _ => {
                            warn!(node = node.as_str(); "master {peer} asked this node's API for something it may not; refused");
                            let why = serde_json::json!({ "title": "refused", "detail": "not a read of this node's own", "error": 400 });
                            wazuh_cluster_protocol::message::ApiAnswer {
                                status: 400,
                                content_type: "application/json".into(),
                                body: why.to_string().into_bytes(),
                            }
                        }
                    };
                    let _ = conn.respond(id, WorkerToMaster::NodeApiAnswer(answer)).await;
                    drop(permit);
                    Ok(())
                })
            }
            (Kind::Request(id), M::AgentRequest(r)) => {
                let (hub, conn) = (self.hub.clone(), self.conn.clone());
                actix_rt::spawn(async move {
                    let ask = AskAgent {
                        id: r.id,
                        payload: r.payload,
                        timeout: std::time::Duration::from_millis(r.timeout_ms.min(60_000)),
                    };
                    let outcome = match hub {
                        Some(hub) => match hub.send(ask).await {
                            Ok(answer) => answer.map_err(|e| e.to_string()),
                            Err(_) => Err("the agent hub stopped".into()),
                        },
                        None => Err("this node serves no agents".into()),
                    };
                    let _ = conn.respond(id, WorkerToMaster::AgentAnswer(AgentAnswer { outcome })).await;
                    drop(permit);
                });
                Box::pin(async { Ok(()) })
            }
            (Kind::Request(id), M::ReloadRuleset(r)) => {
                let (conn, ruleset, mut tree, wait) =
                    (self.conn.clone(), self.ruleset.clone(), self.tree.clone(), self.reload_wait);
                let (node, peer) = (self.node.clone(), self.peer.clone());
                actix_rt::spawn(async move {
                    let answer = reload_when_in_sync(ruleset, &mut tree, &r.digest, wait).await;
                    info!(node = node.as_str(); "ruleset reload asked by master {peer}: {}", answer.message);
                    let _ = conn.respond(id, WorkerToMaster::RulesetReloaded(answer)).await;
                    drop(permit);
                });
                Box::pin(async { Ok(()) })
            }
            (Kind::Notify, M::Error(e)) => {
                warn!(node = self.node.as_str(); "master {} sent an error that answers nothing: {e}", self.peer);
                Box::pin(async { Ok(()) })
            }
            (kind, body) => {
                let what = match kind {
                    Kind::Request(_) => "a request",
                    _ => "a notification",
                };
                let why = format!("{} is not valid as {what}", body.name());
                Box::pin(async move { Err(Undeliverable::Invalid(why)) })
            }
        }
    }

    fn stop(&self) -> LocalFuture<()> {
        self.control.stop()
    }
}
