//! The handshake over a socket: plain frames capped at `MAX_HANDSHAKE_FRAME`, the whole exchange
//! under one deadline, then the socket halves and the channel for a [`crate::connection::ConnectionActor`].

use crate::settings::ChannelSettings;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wazuh_cluster_protocol::frame::{FrameCodec, FramedIoError};
use wazuh_cluster_protocol::handshake::{
    self, Channel, Confirmed, HandshakeError, Hello, InitiatorOutcome, Refusal, Responder, MAX_HANDSHAKE_FRAME,
};
use wazuh_cluster_protocol::ProtocolVersion;

/// Why a connection never got established. Every message names what to look at; none holds a key.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("the peer closed the connection during the handshake")]
    Closed,
    #[error("{0}")]
    Frame(#[from] FramedIoError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("refused by {peer}: {refusal}")]
    Refused { peer: String, refusal: Refusal },
    #[error("refused {peer}: {refusal}")]
    RefusedPeer { peer: String, refusal: Refusal },
    #[error(transparent)]
    MasterIdentity(#[from] crate::admission::PinError),
}

impl LinkError {
    /// True when retrying with the same configuration cannot help (wrong key, name, cluster...).
    pub fn is_config_problem(&self) -> bool {
        matches!(
            self,
            LinkError::Handshake(HandshakeError::Rejected(_))
                | LinkError::Handshake(HandshakeError::Authentication)
                | LinkError::Handshake(HandshakeError::SuiteMismatch { .. })
                | LinkError::Refused {
                    refusal: Refusal::WrongCluster { .. }
                        | Refusal::IncompatibleVersion { .. }
                        | Refusal::InvalidName { .. }
                        | Refusal::DuplicateName { .. }
                        | Refusal::WrongRole { .. }
                        | Refusal::IdentityRequired
                        | Refusal::Revoked { .. }
                        | Refusal::NotAdmitted { .. },
                    ..
                }
                | LinkError::MasterIdentity(_)
        )
    }
}

/// An authenticated connection, ready for a connection actor.
pub struct Link {
    pub peer: Hello,
    pub peer_addr: SocketAddr,
    pub version: ProtocolVersion,
    pub channel: Channel,
    pub read: OwnedReadHalf,
    /// Bytes that arrived after the handshake, already part of the transport stream.
    pub read_buf: BytesMut,
    pub write: OwnedWriteHalf,
    /// Master side: what message 3 carried (the handshake hash and the worker's identity proof),
    /// for admission to check before the connection is used.
    pub confirmed: Option<Confirmed>,
}

async fn next_frame(framed: &mut Framed<TcpStream, FrameCodec>) -> Result<BytesMut, LinkError> {
    match framed.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(e.into()),
        None => Err(LinkError::Closed),
    }
}

fn into_link(
    framed: Framed<TcpStream, FrameCodec>,
    peer: Hello,
    version: ProtocolVersion,
    channel: Channel,
    confirmed: Option<Confirmed>,
) -> Result<Link, LinkError> {
    let parts = framed.into_parts();
    let peer_addr = parts.io.peer_addr().map_err(LinkError::Connect)?;
    let (read, write) = parts.io.into_split();
    Ok(Link { peer, peer_addr, version, channel, read, read_buf: parts.read_buf, write, confirmed })
}

/// Worker side: connect to `addr` and run the handshake as initiator; the master's identity must
/// be the one this worker pinned.
pub async fn dial(addr: &str, settings: &ChannelSettings) -> Result<Link, LinkError> {
    dial_checking(addr, settings, Pin::Master).await
}

/// Whose identity a dial checks the answering node's against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The master's, pinned once per worker ([`crate::admission::MASTER_PIN_FILE`]).
    Master,
    /// A master-eligible peer's, pinned per peer name ([`crate::admission::peer_pin_file`]).
    Peer,
}

/// [`dial`] with the identity check `pin`.
pub(crate) async fn dial_checking(addr: &str, settings: &ChannelSettings, pin: Pin) -> Result<Link, LinkError> {
    dial_within(addr, settings, pin, settings.handshake_timeout).await
}

/// [`dial_checking`] within `deadline` rather than the configured handshake timeout (a worker
/// following a failover does not wait 10 s on a master that has gone silent).
pub(crate) async fn dial_within(
    addr: &str,
    settings: &ChannelSettings,
    pin: Pin,
    deadline: Duration,
) -> Result<Link, LinkError> {
    match tokio::time::timeout(deadline, dial_inner(addr, settings, pin)).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Timeout(deadline)),
    }
}

/// How long one name lookup may take before the dial fails and is retried with a fresh query.
/// glibc waits 5 s for a DNS server that dropped the query (a container network's DNS while it
/// reloads, as the master's container restarts); a new query usually gets the answer at once.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves `host:port` in a thread of its own rather than the runtime's blocking pool: a resolver
/// that does not answer (the name of a master that has just gone, while the container network's
/// DNS reloads) holds neither the dial past [`RESOLVE_TIMEOUT`] nor the node's exit, which waits
/// for the blocking pool but not for a detached thread.
async fn resolve(addr: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return Ok(vec![sa]);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned = addr.to_string();
    std::thread::Builder::new().name("resolve".into()).spawn(move || {
        let _ = tx.send(owned.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    })?;
    let answer = tokio::time::timeout(RESOLVE_TIMEOUT, rx).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer for {addr} within {RESOLVE_TIMEOUT:?}"))
    })?;
    let addrs = answer.map_err(|_| std::io::Error::other("the resolver thread ended without an answer"))??;
    if addrs.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to no address")));
    }
    Ok(addrs)
}

async fn dial_inner(addr: &str, settings: &ChannelSettings, pin: Pin) -> Result<Link, LinkError> {
    let addrs = resolve(addr).await.map_err(LinkError::Connect)?;
    let stream = TcpStream::connect(&addrs[..]).await.map_err(LinkError::Connect)?;
    stream.set_nodelay(true).map_err(LinkError::Connect)?;
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME));
    let (initiator, msg1) =
        handshake::Initiator::start(&settings.psk, settings.suite, &settings.hello(), settings.max_frame)?;
    framed.send(&msg1[..]).await?;
    let msg2 = next_frame(&mut framed).await?;
    let prove = |hash: &[u8]| settings.identity.prove(hash, settings.join_token.as_ref());
    match initiator.finish(&msg2, prove)? {
        InitiatorOutcome::Refused { peer, refusal } => Err(LinkError::Refused { peer: peer.node_name, refusal }),
        InitiatorOutcome::Accepted { peer, version, channel, confirmation, signature, hello_hash } => {
            let check = match pin {
                Pin::Master => crate::admission::check_master_identity,
                Pin::Peer => crate::admission::check_peer_identity,
            };
            let pinned = check(&settings.data_dir, &peer, &hello_hash, signature.as_deref())
                .map_err(LinkError::MasterIdentity)?;
            if pinned {
                log::info!(node = settings.node_name.as_str(); "pinned the identity of {} {} ({})", peer.role, peer.node_name, crate::admission::fingerprint_of(&peer));
            }
            framed.send(&confirmation[..]).await?;
            into_link(framed, peer, version, channel, None)
        }
    }
}

/// The rules for an authenticated hello that need no knowledge of other connections: this
/// cluster, the `expected` role, a valid name that is not ours, a common protocol version.
pub(crate) fn admit_hello(
    settings: &ChannelSettings,
    hello: &Hello,
    expected: wazuh_cluster_protocol::Role,
) -> Result<ProtocolVersion, Refusal> {
    if hello.cluster_name != settings.cluster_name {
        return Err(Refusal::WrongCluster { expected: settings.cluster_name.clone(), got: hello.cluster_name.clone() });
    }
    if hello.role != expected {
        return Err(Refusal::WrongRole { expected, got: hello.role });
    }
    if let Err(reason) = wazuh_cluster_protocol::handshake::check_node_name(&hello.node_name) {
        return Err(Refusal::InvalidName { name: hello.node_name.clone(), reason });
    }
    if hello.node_name == settings.node_name {
        return Err(Refusal::DuplicateName { name: hello.node_name.clone() });
    }
    let ours = wazuh_cluster_protocol::version::VersionRange::ours();
    ours.negotiate(&hello.versions).ok_or(Refusal::IncompatibleVersion { ours, theirs: hello.versions })
}

/// Master side: run the handshake as responder on an accepted socket. `admit` decides, from the
/// authenticated hello, whether to accept the peer and at which version (it may ask other actors).
pub async fn accept<F, Fut>(stream: TcpStream, settings: &ChannelSettings, admit: F) -> Result<Link, LinkError>
where
    F: FnOnce(Hello) -> Fut,
    Fut: std::future::Future<Output = Result<ProtocolVersion, Refusal>>,
{
    let deadline = settings.handshake_timeout;
    match tokio::time::timeout(deadline, accept_inner(stream, settings, admit)).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Timeout(deadline)),
    }
}

async fn accept_inner<F, Fut>(stream: TcpStream, settings: &ChannelSettings, admit: F) -> Result<Link, LinkError>
where
    F: FnOnce(Hello) -> Fut,
    Fut: std::future::Future<Output = Result<ProtocolVersion, Refusal>>,
{
    stream.set_nodelay(true).map_err(LinkError::Connect)?;
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME));
    let msg1 = next_frame(&mut framed).await?;
    let (responder, hello) = match Responder::read_hello(&settings.psk, settings.suite, settings.max_frame, &msg1) {
        Ok(ok) => ok,
        Err(err) => {
            if let Some(code) = err.reject_code() {
                // Best effort: the peer learns why; the connection closes either way.
                let _ = framed.send(&handshake::reject_message(code)[..]).await;
            }
            return Err(err.into());
        }
    };
    let ours = settings.hello();
    match admit(hello.clone()).await {
        Err(refusal) => {
            let msg2 = responder.refuse(&ours, refusal.clone())?;
            let _ = framed.send(&msg2[..]).await;
            Err(LinkError::RefusedPeer { peer: hello.node_name, refusal })
        }
        Ok(version) => {
            let sign = |hash: &[u8]| Some(settings.identity.sign_handshake(hash).to_vec());
            let (msg2, pending) = responder.accept_signed(&ours, version, sign)?;
            framed.send(&msg2[..]).await?;
            let msg3 = next_frame(&mut framed).await?;
            let (channel, confirmed) = pending.confirm(&msg3)?;
            into_link(framed, hello, version, channel, Some(confirmed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn names_resolve_off_the_runtime_and_a_name_that_does_not_resolve_is_a_clear_error() {
        assert_eq!(resolve("127.0.0.1:1516").await.unwrap(), vec!["127.0.0.1:1516".parse().unwrap()]);
        assert!(resolve("localhost:1516").await.unwrap().iter().all(|a| a.ip().is_loopback() && a.port() == 1516));
        // RFC 2606: .invalid never resolves.
        let err = resolve("master.invalid:1516").await.unwrap_err();
        assert!(!err.to_string().is_empty());
        assert!(resolve("no-port").await.is_err());
    }
}
