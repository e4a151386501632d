//! The master's side of the cluster channel: the accept loop, admission of workers, and the set of
//! connected workers.

use crate::connection::{Close, ConnectionActor, ConnectionClosed, ConnectionInfo, GetInfo, MasterSide};
use crate::link::{self, LinkError};
use crate::settings::ChannelSettings;
use actix::prelude::*;
use log::{info, warn};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use wazuh_cluster_protocol::handshake::{check_node_name, Hello, Refusal};
use wazuh_cluster_protocol::version::VersionRange;
use wazuh_cluster_protocol::{ProtocolVersion, Role};

/// Handshakes allowed in flight at once; further connections are closed at once. Bounds what
/// unauthenticated peers can make the master hold.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Decides whether an authenticated peer may join, and at which protocol version.
pub fn admit(
    settings: &ChannelSettings,
    hello: &Hello,
    connected: &HashSet<String>,
) -> Result<ProtocolVersion, Refusal> {
    if hello.cluster_name != settings.cluster_name {
        return Err(Refusal::WrongCluster { expected: settings.cluster_name.clone(), got: hello.cluster_name.clone() });
    }
    if hello.role != Role::Worker {
        return Err(Refusal::WrongRole { expected: Role::Worker, got: hello.role });
    }
    if let Err(reason) = check_node_name(&hello.node_name) {
        return Err(Refusal::InvalidName { name: hello.node_name.clone(), reason });
    }
    if hello.node_name == settings.node_name || connected.contains(&hello.node_name) {
        return Err(Refusal::DuplicateName { name: hello.node_name.clone() });
    }
    let ours = VersionRange::ours();
    ours.negotiate(&hello.versions).ok_or(Refusal::IncompatibleVersion { ours, theirs: hello.versions })
}

/// Owns the connected workers of a master.
pub struct MasterListener {
    settings: Arc<ChannelSettings>,
    local_addr: SocketAddr,
    workers: HashMap<String, Addr<ConnectionActor<MasterSide>>>,
    pending: usize,
    accept_task: Option<actix_rt::task::JoinHandle<()>>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Accepted(TcpStream, SocketAddr);

/// Lists the connected workers.
#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub struct ListWorkers;

/// Stops accepting, says goodbye to every worker, and stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub reason: String,
}

impl MasterListener {
    /// Starts serving workers on `listener` (bound by the caller, so tests can use port 0).
    pub fn start(listener: TcpListener, settings: Arc<ChannelSettings>) -> std::io::Result<Addr<Self>> {
        let local_addr = listener.local_addr()?;
        Ok(MasterListener::create(move |ctx| {
            let addr = ctx.address();
            let accept_task = actix_rt::spawn(accept_loop(listener, addr, settings.node_name.clone()));
            info!(node = settings.node_name.as_str(); "master listening for workers on {local_addr}");
            MasterListener { settings, local_addr, workers: HashMap::new(), pending: 0, accept_task: Some(accept_task) }
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
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
        let connected: HashSet<String> =
            self.workers.iter().filter(|(_, a)| a.connected()).map(|(name, _)| name.clone()).collect();
        let fut = async move {
            let admit_settings = settings.clone();
            link::accept(stream, &settings, move |hello| admit(&admit_settings, hello, &connected)).await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.pending -= 1;
            match result {
                Ok(link) => {
                    let name = link.peer.node_name.clone();
                    if act.workers.get(&name).is_some_and(|a| a.connected()) {
                        warn!(node = node.as_str(); "closing second connection of worker {name} from {peer}: already connected");
                        return;
                    }
                    let conn = ConnectionActor::<MasterSide>::start(link, act.settings.clone(), Some(ctx.address().recipient()));
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
        let addrs: Vec<_> = self.workers.values().cloned().collect();
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

impl Handler<Shutdown> for MasterListener {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        for conn in self.workers.values() {
            conn.do_send(Close { reason: msg.reason.clone() });
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wazuh_cluster_protocol::{CipherSuite, Psk};

    fn settings() -> ChannelSettings {
        ChannelSettings {
            node_name: "master".into(),
            role: Role::Master,
            cluster_name: "wazuh".into(),
            psk: Psk::from_bytes([1; 32]),
            suite: CipherSuite::default(),
            max_frame: 1 << 20,
            handshake_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
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
        let none = HashSet::new();
        assert!(admit(&s, &worker("worker-1"), &none).is_ok());
        let mut wrong_cluster = worker("w");
        wrong_cluster.cluster_name = "other".into();
        assert!(matches!(admit(&s, &wrong_cluster, &none), Err(Refusal::WrongCluster { .. })));
        let mut master = worker("m2");
        master.role = Role::Master;
        assert!(matches!(admit(&s, &master, &none), Err(Refusal::WrongRole { .. })));
        assert!(matches!(admit(&s, &worker("bad/name"), &none), Err(Refusal::InvalidName { .. })));
        assert!(matches!(admit(&s, &worker("master"), &none), Err(Refusal::DuplicateName { .. })));
        let taken: HashSet<String> = ["worker-1".to_string()].into();
        assert!(matches!(admit(&s, &worker("worker-1"), &taken), Err(Refusal::DuplicateName { .. })));
        let mut future = worker("w");
        future.versions = VersionRange { min: ProtocolVersion::new(2, 0), max: ProtocolVersion::new(2, 1) };
        assert!(matches!(admit(&s, &future, &none), Err(Refusal::IncompatibleVersion { .. })));
        let mut next_minor = worker("w");
        next_minor.versions.max = ProtocolVersion::new(1, 1);
        assert_eq!(admit(&s, &next_minor, &none), Ok(wazuh_cluster_protocol::version::CURRENT));
    }
}
