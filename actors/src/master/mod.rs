//! The master's side of the cluster channel: the accept loop, admission of workers, the registry
//! of connected workers (each a connection and its job set), and the master's shared jobs.

use crate::admission::{Admission, Admitted, Issued, KnownNode};
use crate::connection::{
    self, Abort, Close, ConnHandle, ConnectionActor, ConnectionClosed, ConnectionInfo, Dispatch, GetInfo, MasterSide,
};
use crate::jobs::local::{FilesChanged, MasterServices};
use crate::jobs::master::MasterJobs;
#[cfg(feature = "testing")]
use crate::jobs::runtime::JobFault;
use crate::link::{self, LinkError};
use crate::registry::StoreError;
use crate::settings::ChannelSettings;
use crate::supervise::Kill;
use crate::supervise::{AllStopped, JobHealth};
use actix::prelude::*;
use log::{debug, info, warn};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use wazuh_cluster_protocol::handshake::{Hello, Refusal};
use wazuh_cluster_protocol::message::JobReport;
use wazuh_cluster_protocol::MasterToWorker;
use wazuh_cluster_protocol::{ProtocolVersion, Role};

mod balance;
mod orders;
pub use balance::{BalanceView, GetBalance, RebalanceMode, RebalanceSettings};
pub use orders::*;

/// The rules that need no knowledge of other connections: cluster, role (a worker), name, version.
pub fn admit(settings: &ChannelSettings, hello: &Hello) -> Result<ProtocolVersion, Refusal> {
    crate::link::admit_hello(settings, hello, Role::Worker)
}

/// One connected worker: its connection and the job set serving it.
struct Live {
    addr: Addr<ConnectionActor<MasterSide>>,
    handle: ConnHandle<MasterSide>,
    jobs: Rc<MasterJobs>,
    peer_addr: SocketAddr,
    version: ProtocolVersion,
}

/// Owns the accept loop and the connected workers of a master.
pub struct MasterListener {
    settings: Arc<ChannelSettings>,
    services: MasterServices,
    services_stopped: Option<AllStopped>,
    workers: HashMap<String, Live>,
    pending: usize,
    accept_task: Option<actix_rt::task::JoinHandle<()>>,
    /// Refusals before authentication, logged at most once per [`REFUSAL_LOG_EVERY`] per kind.
    refusals: RefusalLog,
    /// Handshakes in flight per source address (at most [`MAX_PENDING_PER_ADDRESS`] each).
    pending_by_ip: HashMap<std::net::IpAddr, usize>,
    /// Which workers are admitted (identities, join tokens, revocations).
    admission: Admission,
    /// The rebalancer's state (see `balance.rs`).
    balance: balance::BalanceState,
}

/// Handshakes allowed in flight at once from one address: a flood from a few addresses cannot
/// take the slots a worker needs to join.
pub const MAX_PENDING_PER_ADDRESS: usize = 8;

/// How often one kind of refused cluster connection is logged at most.
pub(crate) const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts refusals of one kind (the same message, whoever the peer) and says when one may be
/// logged: the first, then one per [`REFUSAL_LOG_EVERY`] with how many were not. A peer that
/// opens connections as fast as they close cannot write a line for each.
#[derive(Default)]
struct RefusalLog {
    kinds: HashMap<String, crate::throttle::Throttle>,
}

impl RefusalLog {
    /// `Some(suppressed)` when a line for `kind` may be written now (after `suppressed` were not).
    fn allow(&mut self, kind: &str) -> Option<u64> {
        if self.kinds.len() > 1024 {
            self.kinds.retain(|_, t| !t.idle());
        }
        self.kinds.entry(kind.to_string()).or_insert_with(|| crate::throttle::Throttle::new(REFUSAL_LOG_EVERY)).allow()
    }
}

/// `" (N similar suppressed)"`, or nothing.
fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed in the last {} s)", REFUSAL_LOG_EVERY.as_secs())
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Accepted(TcpStream, SocketAddr);

/// Decides on an authenticated hello, including the duplicate-name rule.
#[derive(Message)]
#[rtype(result = "Result<ProtocolVersion, Refusal>")]
struct Admit(Hello);

/// Stops accepting, says goodbye to every worker (waiting, bounded, for each connection and its
/// jobs to stop), stops the shared jobs, and stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub reason: String,
}

impl MasterListener {
    /// Starts serving workers on `listener` (bound by the caller, so tests can use port 0), with the
    /// master's shared jobs.
    /// The node cannot serve without it: a panic cuts `lifeline` (see `supervise::start_watched`).
    pub fn start(
        listener: TcpListener,
        settings: Arc<ChannelSettings>,
        writes: crate::consensus::writes::Writes,
        admission: Admission,
        lifeline: crate::supervise::Lifeline,
    ) -> std::io::Result<Addr<Self>> {
        let local_addr = listener.local_addr()?;
        let (services, services_stopped) = MasterServices::start(settings.clone(), writes);
        let node = settings.node_name.clone();
        let ctx = Context::new();
        let me = {
            let addr = ctx.address();
            let accept_task = actix_rt::spawn(accept_loop(listener, addr, settings.node_name.clone()));
            info!(node = settings.node_name.as_str(); "master listening for workers on {local_addr}");
            let me = MasterListener {
                settings,
                services,
                services_stopped: Some(services_stopped),
                workers: HashMap::new(),
                pending: 0,
                accept_task: Some(accept_task),
                refusals: RefusalLog::default(),
                pending_by_ip: HashMap::new(),
                admission,
                balance: Default::default(),
            };
            // The master's own agents are its to report.
            me.set_live(&me.settings.node_name, true);
            if let Some(raft) = me.services.writes.raft().cloned() {
                actix_rt::spawn(follow_leadership(raft, ctx.address()));
            }
            me
        };
        let what = "the master's listener (MasterListener)".to_string();
        Ok(crate::supervise::start_watched(ctx, me, what, node, crate::supervise::OnPanic::Fatal(lifeline)))
    }

    /// Tells the registry whether `node` holds agent sessions now (see `Registry::set_live`).
    fn set_live(&self, node: &str, live: bool) {
        let (registry, node) = (self.services.registry.clone(), node.to_string());
        actix_rt::spawn(async move {
            let _ = registry
                .run(move |r| {
                    r.set_live(&node, live);
                    Ok(())
                })
                .await;
        });
    }

    /// Worker `node` is gone: its agents that have not reported elsewhere are disconnected now.
    fn node_gone(&self, node: &str) {
        let (registry, node, me) = (self.services.registry.clone(), node.to_string(), self.settings.node_name.clone());
        // What it reported and the inbox still holds goes in first: its word before the verdict.
        let last_words = self.services.statuses.take_peer(&node);
        actix_rt::spawn(async move {
            let gone = node.clone();
            let verdict = move |r: &mut crate::registry::Registry| {
                if !last_words.is_empty() {
                    r.store_statuses(&gone, &last_words)?;
                }
                r.node_gone(&gone, crate::clock::now_ms())
            };
            match registry.run(verdict).await {
                Ok(ids) if !ids.is_empty() => {
                    info!(node = me.as_str(); "worker {node} is gone: its {} agents still active there are disconnected until they report through another node", ids.len())
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(node = me.as_str(); "worker {node} is gone, but its agents' statuses could not be updated: {e}")
                }
            }
        });
    }

    fn stop_accepting(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, addr: Addr<MasterListener>, node: String) {
    let mut said = crate::throttle::Throttle::new(REFUSAL_LOG_EVERY);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Waits for room in the listener's mailbox; the kernel's backlog holds the rest.
                let sent = match addr.try_send(Accepted(stream, peer)) {
                    Err(SendError::Full(accepted)) => addr.send(accepted).await.is_ok(),
                    other => other.is_ok(),
                };
                if !sent {
                    return;
                }
            }
            Err(err) => {
                // Usually descriptor exhaustion: back off instead of spinning, and say so once
                // in a while rather than at every attempt.
                if let Some(n) = said.allow() {
                    warn!(node = node.as_str(); "accepting a cluster connection failed: {err}{}", suppressed(n));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// This master-eligible node stopped leading: its workers must go to the leader.
#[derive(Message)]
#[rtype(result = "()")]
struct NotLeading;

/// Watches the Raft node's state and tells the listener when it stops leading, including when its
/// lease lapses without a new report (checked every heartbeat as well as on each report).
async fn follow_leadership(raft: crate::consensus::network::Raft, listener: Addr<MasterListener>) {
    let mut metrics = raft.metrics();
    let mut leading = false;
    let every = std::time::Duration::from_millis(crate::consensus::Timing::DEFAULT.heartbeat);
    loop {
        let now = crate::consensus::writes::leadership(&raft).is_ok();
        if leading && !now {
            listener.do_send(NotLeading);
        }
        leading = now;
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(every) => {}
        }
    }
}

impl Handler<NotLeading> for MasterListener {
    type Result = ();

    fn handle(&mut self, _: NotLeading, _: &mut Context<Self>) {
        let node = self.settings.node_name.as_str();
        if !self.workers.is_empty() {
            warn!(node = node; "this node no longer leads the masters: closing the connections of its {} workers, which go to the leader", self.workers.len());
        }
        for w in self.workers.values() {
            w.addr.do_send(crate::connection::Close { reason: "this node no longer leads the masters".into() });
        }
    }
}

impl Actor for MasterListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let rebalance = self.settings.rebalance;
        if rebalance.mode != RebalanceMode::Off {
            ctx.run_interval(rebalance.every, |act, ctx| act.rebalance(ctx));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.stop_accepting();
    }
}

impl Handler<Accepted> for MasterListener {
    type Result = ();

    fn handle(&mut self, Accepted(stream, peer): Accepted, ctx: &mut Context<Self>) {
        let node = self.settings.node_name.clone();
        // Bounds what unauthenticated peers can make the master hold (the descriptor budget).
        let max = self.settings.max_handshakes;
        if self.pending >= max {
            if let Some(n) = self.refusals.allow("handshakes full") {
                warn!(node = node.as_str(); "dropping connection from {peer}: {max} handshakes already in progress{}", suppressed(n));
            }
            return;
        }
        let ip = peer.ip();
        let from_ip = self.pending_by_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= MAX_PENDING_PER_ADDRESS {
            if let Some(n) = self.refusals.allow(&format!("handshakes full from {ip}")) {
                warn!(node = node.as_str(); "dropping connection from {peer}: {MAX_PENDING_PER_ADDRESS} handshakes from {ip} already in progress{}", suppressed(n));
            }
            return;
        }
        self.pending += 1;
        *self.pending_by_ip.entry(ip).or_insert(0) += 1;
        let settings = self.settings.clone();
        let me = ctx.address();
        let fut = async move {
            link::accept(stream, &settings, |hello| async move {
                me.send(Admit(hello)).await.unwrap_or(Err(Refusal::ShuttingDown))
            })
            .await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.pending -= 1;
            if let Some(n) = act.pending_by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    act.pending_by_ip.remove(&ip);
                }
            }
            match result {
                Ok(link) if link.peer.role == Role::Master => {
                    let name = link.peer.node_name.clone();
                    let Some(raft) = act.services.writes.raft().cloned() else { return };
                    let settings = act.settings.clone();
                    let served = async move { crate::consensus::network::serve_peer(link, &settings, raft).await };
                    ctx.spawn(served.into_actor(act).map(move |result, act, _| match result {
                        Ok(()) => debug!(node = node.as_str(); "serving raft to master-eligible peer {name} from {peer}"),
                        Err(e) => {
                            if let Some(n) = act.refusals.allow(&format!("peer {name}: {e}")) {
                                warn!(node = node.as_str(); "closing connection of master-eligible peer {name} from {peer}: {e}{}", suppressed(n));
                            }
                        }
                    }));
                }
                Ok(link) => {
                    let name = link.peer.node_name.clone();
                    let Some(confirmed) = link.confirmed.as_ref() else { return };
                    let admitted = if act.follower_files(&name) {
                        crate::admission::check_known_peer_identity(&act.settings.data_dir, &link.peer, confirmed)
                            .map(|()| {
                                info!(node = node.as_str(); "master-eligible node {name} from {peer} follows this leader's files");
                                Admitted::Known
                            })
                            .map_err(crate::admission::AdmissionError::from)
                    } else {
                        act.admission.finish(&link.peer, confirmed, crate::clock::now_ms())
                    };
                    match admitted {
                        Ok(Admitted::Known) => {}
                        Ok(Admitted::Joined(token)) => {
                            info!(node = node.as_str(); "admitted new worker {name} from {peer} with join token {token} (identity {})", identity_of(&link.peer));
                        }
                        Ok(Admitted::Pinned) => {
                            info!(node = node.as_str(); "admitted new worker {name} from {peer} in open admission; its identity {} is now pinned to the name", identity_of(&link.peer));
                        }
                        Err(reason) => {
                            if let Some(n) = act.refusals.allow(&format!("identity of {name}: {reason}")) {
                                warn!(node = node.as_str(); "closing connection of {name} from {peer}: its identity does not check out: {reason}{}", suppressed(n));
                            }
                            return;
                        }
                    }
                    if act.workers.get(&name).is_some_and(|w| !w.handle.is_closed()) {
                        // Two handshakes with one name raced; the first to finish keeps it.
                        warn!(node = node.as_str(); "closing second connection of worker {name} from {peer}: already connected");
                        return;
                    }
                    let version = link.version;
                    let (handle, transport) = connection::open::<MasterSide>(link, &act.settings);
                    let peer_addr = transport.peer_addr();
                    let jobs = MasterJobs::spawn(handle.clone(), &act.settings, &act.services);
                    let dispatch: Rc<dyn Dispatch<MasterSide>> = jobs.clone();
                    let owner = Some(ctx.address().recipient());
                    let addr = ConnectionActor::start(transport, handle.clone(), dispatch, owner);
                    act.set_live(&name, true);
                    act.workers.insert(name, Live { addr, handle, jobs, peer_addr, version });
                }
                Err(LinkError::RefusedPeer { peer: name, refusal }) => {
                    if let Some(n) = act.refusals.allow(&format!("refused {name}: {refusal}")) {
                        warn!(node = node.as_str(); "refused worker {name} from {peer}: {refusal}{}", suppressed(n));
                    }
                }
                Err(err) => {
                    // One kind per message (the peer's address left out): a flood of the same
                    // failure is one line per interval; different failures each get theirs.
                    if let Some(n) = act.refusals.allow(&err.to_string()) {
                        warn!(node = node.as_str(); "handshake with {peer} failed: {err}{}", suppressed(n));
                    }
                }
            }
        }));
    }
}

impl Handler<Admit> for MasterListener {
    type Result = ResponseFuture<Result<ProtocolVersion, Refusal>>;

    fn handle(&mut self, Admit(hello): Admit, _: &mut Context<Self>) -> Self::Result {
        if hello.role == Role::Master && self.services.writes.raft().is_some() {
            // Another master-eligible node, for Raft: its identity is checked once the handshake
            // completes (pinned per name), not by worker admission.
            let verdict = crate::consensus::network::admit_peer(&self.settings, &hello);
            return Box::pin(async move { verdict });
        }
        if let Some(raft) = self.services.writes.raft() {
            // High availability: workers connect to the leader only.
            if let Err(leader) = crate::consensus::writes::leadership(raft) {
                let refusal = Refusal::NotLeader { leader };
                return Box::pin(async move { Err(refusal) });
            }
        }
        let follower = self.follower_files(&hello.node_name);
        let verdict = admit(&self.settings, &hello).and_then(|version| {
            if !follower {
                self.admission.check_hello(&hello, crate::clock::now_ms())?;
            }
            Ok(version)
        });
        let existing = self.workers.get(&hello.node_name).filter(|w| !w.handle.is_closed()).map(|w| w.addr.clone());
        // A connection counts as stale, and is replaced, once it has been silent for more than one
        // and a half keep-alive intervals: its worker has missed a keep-alive, so the socket is
        // probably dead (a host that lost power sends no FIN). A live duplicate is refused.
        let stale_after_ms = (self.settings.keepalive_interval.as_millis() as u64).saturating_mul(3) / 2;
        let node = self.settings.node_name.clone();
        Box::pin(async move {
            let version = verdict?;
            let Some(existing) = existing else { return Ok(version) };
            match existing.send(GetInfo).await {
                Ok(info) if info.idle_ms <= stale_after_ms => Err(Refusal::DuplicateName { name: hello.node_name }),
                Ok(info) => {
                    warn!(node = node.as_str(); "replacing stale connection of worker {} from {} (silent for {} ms)", hello.node_name, info.peer_addr, info.idle_ms);
                    existing.do_send(Abort);
                    Ok(version)
                }
                Err(_) => Ok(version),
            }
        })
    }
}

use crate::admission::fingerprint_of as identity_of;

impl MasterListener {
    /// High availability: whether a worker hello named `name` comes from another master-eligible
    /// node (its identity pinned on a Raft connection) that follows this leader's files.
    fn follower_files(&self, name: &str) -> bool {
        self.services.writes.raft().is_some() && crate::admission::is_pinned_peer(&self.settings.data_dir, name)
    }
}

#[cfg(feature = "testing")]
impl Handler<crate::supervise::testing::Panic> for MasterListener {
    type Result = ();

    fn handle(&mut self, msg: crate::supervise::testing::Panic, _: &mut Context<Self>) {
        panic!("{}", msg.0);
    }
}

impl Handler<ConnectionClosed> for MasterListener {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, _: &mut Context<Self>) {
        // Only if it is still that connection (not a newer one of the same worker).
        if self.workers.get(&msg.peer).is_some_and(|w| w.peer_addr == msg.peer_addr) {
            self.workers.remove(&msg.peer);
            self.set_live(&msg.peer, false);
            self.node_gone(&msg.peer);
        }
    }
}

/// How long a graceful stop may take before connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl Handler<Shutdown> for MasterListener {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.stop_accepting();
        info!(node = self.settings.node_name.as_str(); "no longer accepting workers; closing {} connections", self.workers.len());
        let conns: Vec<_> = self.workers.drain().map(|(_, w)| w.addr).collect();
        self.services.stop();
        let services_stopped = self.services_stopped.take();
        Box::pin(
            async move {
                let closes = conns.iter().map(|c| c.send(Close { reason: msg.reason.clone() }));
                if tokio::time::timeout(SHUTDOWN_GRACE, futures_util::future::join_all(closes)).await.is_err() {
                    for c in &conns {
                        c.do_send(Abort);
                    }
                }
                if let Some(stopped) = services_stopped {
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, stopped.wait()).await;
                }
            }
            .into_actor(self)
            .map(|(), _, ctx| ctx.stop()),
        )
    }
}

impl Handler<Kill> for MasterListener {
    type Result = ();

    fn handle(&mut self, _: Kill, ctx: &mut Context<Self>) {
        self.stop_accepting();
        for w in self.workers.values() {
            w.addr.do_send(Abort);
        }
        self.services.stop();
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wazuh_cluster_protocol::version::VersionRange;

    #[test]
    fn refusals_of_one_kind_are_logged_once_per_interval_with_a_count() {
        let mut log = RefusalLog::default();
        assert_eq!(log.allow("bad key"), Some(0), "the first is logged");
        for _ in 0..500 {
            assert_eq!(log.allow("bad key"), None);
        }
        assert_eq!(log.allow("garbage"), Some(0), "another kind has its own line");
        // Once the interval is over, the next line says how many were not written.
        if let Some(t) = log.kinds.get_mut("bad key") {
            t.age(REFUSAL_LOG_EVERY);
        }
        assert_eq!(log.allow("bad key"), Some(500));
        assert_eq!(log.allow("bad key"), None);
        assert_eq!(suppressed(500), " (500 similar suppressed in the last 10 s)");
        assert_eq!(suppressed(0), "");
    }

    fn settings() -> ChannelSettings {
        crate::settings::test_settings("master")
    }

    fn worker(name: &str) -> Hello {
        let mut s = settings();
        s.node_name = name.into();
        s.role = Role::Worker;
        s.hello()
    }

    #[test]
    fn admission_rules() {
        let s = settings();
        assert!(admit(&s, &worker("worker-1")).is_ok());
        let mut wrong_cluster = worker("w");
        wrong_cluster.cluster_name = "other".into();
        assert!(matches!(admit(&s, &wrong_cluster), Err(Refusal::WrongCluster { .. })));
        let mut master = worker("m2");
        master.role = Role::Master;
        assert!(matches!(admit(&s, &master), Err(Refusal::WrongRole { .. })));
        assert!(matches!(admit(&s, &worker("bad/name")), Err(Refusal::InvalidName { .. })));
        assert!(matches!(admit(&s, &worker("master")), Err(Refusal::DuplicateName { .. })));
        let mut future = worker("w");
        future.versions = VersionRange { min: ProtocolVersion::new(3, 0), max: ProtocolVersion::new(3, 1) };
        assert!(matches!(admit(&s, &future), Err(Refusal::IncompatibleVersion { .. })));
        let mut next_minor = worker("w");
        let current = wazuh_cluster_protocol::version::CURRENT;
        next_minor.versions.max = ProtocolVersion::new(current.major, current.minor + 1);
        assert_eq!(admit(&s, &next_minor), Ok(wazuh_cluster_protocol::version::CURRENT));
        // A worker one minor version behind joins at its version (2.1: no users, no policy).
        let mut previous = worker("w");
        previous.versions = VersionRange { min: ProtocolVersion::new(2, 0), max: ProtocolVersion::new(2, 1) };
        assert_eq!(admit(&s, &previous), Ok(ProtocolVersion::new(2, 1)));
    }
}
