//! The master's side of the cluster channel: the accept loop, admission of workers, and the
//! registry of connected workers (the master's peer registry).

use crate::connection::{
    Abort, Close, ConnectionActor, ConnectionClosed, ConnectionInfo, GetInfo, InjectJobFault, MasterSide, Outgoing,
};
use crate::jobs::local::MasterServices;
use crate::jobs::JobHealth;
use crate::link::{self, LinkError};
use crate::registry::Registry;
use crate::settings::ChannelSettings;
use crate::store_thread::StoreHandle;
use actix::prelude::*;
use log::{info, warn};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use wazuh_cluster_protocol::handshake::{check_node_name, Hello, Refusal};
use wazuh_cluster_protocol::message::{ForceReconnect, JobReport};
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::{Envelope, MasterToWorker};
use wazuh_cluster_protocol::{ProtocolVersion, Role};

/// Handshakes allowed in flight at once; further connections are closed at once. Bounds what
/// unauthenticated peers can make the master hold.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// The rules that need no knowledge of other connections: cluster, role, name, version.
pub fn admit(settings: &ChannelSettings, hello: &Hello) -> Result<ProtocolVersion, Refusal> {
    if hello.cluster_name != settings.cluster_name {
        return Err(Refusal::WrongCluster { expected: settings.cluster_name.clone(), got: hello.cluster_name.clone() });
    }
    if hello.role != Role::Worker {
        return Err(Refusal::WrongRole { expected: Role::Worker, got: hello.role });
    }
    if let Err(reason) = check_node_name(&hello.node_name) {
        return Err(Refusal::InvalidName { name: hello.node_name.clone(), reason });
    }
    if hello.node_name == settings.node_name {
        return Err(Refusal::DuplicateName { name: hello.node_name.clone() });
    }
    let ours = VersionRange::ours();
    ours.negotiate(&hello.versions).ok_or(Refusal::IncompatibleVersion { ours, theirs: hello.versions })
}

/// Owns the accept loop and the connected workers of a master.
pub struct MasterListener {
    settings: Arc<ChannelSettings>,
    services: MasterServices,
    workers: HashMap<String, Addr<ConnectionActor<MasterSide>>>,
    pending: usize,
    accept_task: Option<actix_rt::task::JoinHandle<()>>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Accepted(TcpStream, SocketAddr);

/// Decides on an authenticated hello, including the duplicate-name rule.
#[derive(Message)]
#[rtype(result = "Result<ProtocolVersion, Refusal>")]
struct Admit(Hello);

/// Lists the connected workers.
#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub struct ListWorkers;

/// The master's own shared jobs.
#[derive(Message)]
#[rtype(result = "Vec<JobReport>")]
pub struct LocalJobs;

/// The master's current manifest digest and file count (benchmarks, tests).
#[derive(Message)]
#[rtype(result = "Option<(String, u64)>")]
pub struct GetManifestDigest;

impl Handler<GetManifestDigest> for MasterListener {
    type Result = ResponseFuture<Option<(String, u64)>>;

    fn handle(&mut self, _: GetManifestDigest, _: &mut Context<Self>) -> Self::Result {
        let local = self.services.local_integrity.clone();
        Box::pin(async move {
            local.send(crate::jobs::local::GetIntegrity).await.ok().flatten().map(|s| (s.digest, s.files))
        })
    }
}

/// Stops accepting, says goodbye to every worker, stops the shared jobs, and stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub reason: String,
}

/// Drops every socket at once, without goodbyes, as a crash would (tests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill;

/// Makes a job of one worker connection fail `failures` times (chaos and test hook).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectFault {
    pub worker: String,
    pub job: String,
    pub failures: u32,
}

impl MasterListener {
    /// Starts serving workers on `listener` (bound by the caller, so tests can use port 0), with the
    /// master's shared jobs.
    pub fn start(
        listener: TcpListener,
        settings: Arc<ChannelSettings>,
        registry: StoreHandle<Registry>,
    ) -> std::io::Result<Addr<Self>> {
        let local_addr = listener.local_addr()?;
        let services = MasterServices::start(settings.clone(), registry);
        Ok(MasterListener::create(move |ctx| {
            let addr = ctx.address();
            let accept_task = actix_rt::spawn(accept_loop(listener, addr, settings.node_name.clone()));
            info!(node = settings.node_name.as_str(); "master listening for workers on {local_addr}");
            MasterListener { settings, services, workers: HashMap::new(), pending: 0, accept_task: Some(accept_task) }
        }))
    }

    fn stop_accepting(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }

    fn stop_services(&self) {
        self.services.local_integrity.do_send(crate::jobs::StopJob);
        self.services.local_agent_groups.do_send(crate::jobs::StopJob);
    }
}

async fn accept_loop(listener: TcpListener, addr: Addr<MasterListener>, node: String) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if addr.try_send(Accepted(stream, peer)).is_err() && !addr.connected() {
                    return;
                }
            }
            Err(err) => {
                // Usually descriptor exhaustion: back off instead of spinning.
                warn!(node = node.as_str(); "accepting a cluster connection failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

impl Actor for MasterListener {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.stop_accepting();
    }
}

impl Handler<Accepted> for MasterListener {
    type Result = ();

    fn handle(&mut self, Accepted(stream, peer): Accepted, ctx: &mut Context<Self>) {
        let node = self.settings.node_name.clone();
        if self.pending >= MAX_PENDING_HANDSHAKES {
            warn!(node = node.as_str(); "dropping connection from {peer}: {MAX_PENDING_HANDSHAKES} handshakes already in progress");
            return;
        }
        self.pending += 1;
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
            match result {
                Ok(link) => {
                    let name = link.peer.node_name.clone();
                    if act.workers.get(&name).is_some_and(|a| a.connected()) {
                        // Two handshakes with one name raced; the first to finish keeps it.
                        warn!(node = node.as_str(); "closing second connection of worker {name} from {peer}: already connected");
                        return;
                    }
                    let owner = Some(ctx.address().recipient());
                    let conn =
                        ConnectionActor::<MasterSide>::start(link, act.settings.clone(), act.services.clone(), owner);
                    act.workers.insert(name, conn);
                }
                Err(LinkError::RefusedPeer { peer: name, refusal }) => {
                    warn!(node = node.as_str(); "refused worker {name} from {peer}: {refusal}");
                }
                Err(err) => {
                    warn!(node = node.as_str(); "handshake with {peer} failed: {err}");
                }
            }
        }));
    }
}

impl Handler<Admit> for MasterListener {
    type Result = ResponseFuture<Result<ProtocolVersion, Refusal>>;

    fn handle(&mut self, Admit(hello): Admit, _: &mut Context<Self>) -> Self::Result {
        let verdict = admit(&self.settings, &hello);
        let existing = self.workers.get(&hello.node_name).filter(|a| a.connected()).cloned();
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

impl Handler<ConnectionClosed> for MasterListener {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, _: &mut Context<Self>) {
        if self.workers.get(&msg.peer).is_some_and(|a| !a.connected()) {
            self.workers.remove(&msg.peer);
        }
    }
}

impl Handler<ListWorkers> for MasterListener {
    type Result = ResponseFuture<Vec<ConnectionInfo>>;

    fn handle(&mut self, _: ListWorkers, _: &mut Context<Self>) -> Self::Result {
        let addrs: Vec<_> = self.workers.values().filter(|a| a.connected()).cloned().collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(addrs.len());
            for addr in addrs {
                if let Ok(info) = addr.send(GetInfo).await {
                    out.push(info);
                }
            }
            out.sort_by(|a, b| a.peer.node_name.cmp(&b.peer.node_name));
            out
        })
    }
}

/// Subscribes to the master's file changes (the agent hub, for merged.mg pushes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeFiles(pub Recipient<crate::jobs::local::FilesChanged>);

impl Handler<SubscribeFiles> for MasterListener {
    type Result = ();

    fn handle(&mut self, SubscribeFiles(r): SubscribeFiles, _: &mut Context<Self>) {
        self.services.local_integrity.do_send(crate::jobs::local::SubscribeFiles(r));
    }
}

/// Asks connected workers (all, or the one named) to send `#!-force_reconnect` to agents (all of
/// theirs when `ids` is empty). Returns the workers asked.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ForceReconnectWorkers {
    pub node: Option<String>,
    pub ids: Vec<u32>,
}

impl Handler<ForceReconnectWorkers> for MasterListener {
    type Result = Vec<String>;

    fn handle(&mut self, msg: ForceReconnectWorkers, _: &mut Context<Self>) -> Vec<String> {
        let mut asked = Vec::new();
        for (name, conn) in &self.workers {
            if conn.connected() && msg.node.as_ref().is_none_or(|n| n == name) {
                let body = MasterToWorker::ForceReconnect(ForceReconnect { ids: msg.ids.clone() });
                conn.do_send(Outgoing(Envelope::notify(body)));
                asked.push(name.clone());
            }
        }
        asked
    }
}

impl Handler<LocalJobs> for MasterListener {
    type Result = Vec<JobReport>;

    fn handle(&mut self, _: LocalJobs, _: &mut Context<Self>) -> Vec<JobReport> {
        self.services.healths().iter().map(JobHealth::snapshot).collect()
    }
}

impl Handler<InjectFault> for MasterListener {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> Self::Result {
        let conn = self.workers.get(&msg.worker).cloned();
        Box::pin(async move {
            match conn {
                Some(conn) => conn.send(InjectJobFault { job: msg.job, failures: msg.failures }).await.unwrap_or(false),
                None => false,
            }
        })
    }
}

impl Handler<Shutdown> for MasterListener {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) {
        self.stop_accepting();
        info!(node = self.settings.node_name.as_str(); "no longer accepting workers; closing {} connections", self.workers.len());
        for conn in self.workers.values() {
            conn.do_send(Close { reason: msg.reason.clone() });
        }
        self.stop_services();
        ctx.stop();
    }
}

impl Handler<Kill> for MasterListener {
    type Result = ();

    fn handle(&mut self, _: Kill, ctx: &mut Context<Self>) {
        self.stop_accepting();
        for conn in self.workers.values() {
            conn.do_send(Abort);
        }
        self.stop_services();
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::JobIntervals;
    use std::time::Duration;
    use wazuh_cluster_protocol::{CipherSuite, Psk};

    fn settings() -> ChannelSettings {
        ChannelSettings {
            node_name: "master".into(),
            role: Role::Master,
            data_dir: std::env::temp_dir(),
            cluster_name: "wazuh".into(),
            psk: Psk::from_bytes([1; 32]),
            suite: CipherSuite::default(),
            max_frame: 1 << 20,
            handshake_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
            jobs: JobIntervals::default(),
            versions: VersionRange::ours(),
        }
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
        future.versions = VersionRange { min: ProtocolVersion::new(2, 0), max: ProtocolVersion::new(2, 1) };
        assert!(matches!(admit(&s, &future), Err(Refusal::IncompatibleVersion { .. })));
        let mut next_minor = worker("w");
        next_minor.versions.max = ProtocolVersion::new(1, 1);
        assert_eq!(admit(&s, &next_minor), Ok(wazuh_cluster_protocol::version::CURRENT));
    }
}
