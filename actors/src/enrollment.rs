//! Agent enrollment on TCP 1515 (authd), on every node: TLS 1.2/1.3 with a self-signed certificate
//! made at first start (or a configured one), one request line per connection, one reply.
//!
//! On the master the request is committed to the registry (durably) before the reply is written; if
//! the reply cannot be written, the agent is removed again. On a worker the request is forwarded to
//! the master with an idempotency token; after writing the reply the worker tells the master whether
//! the agent got its key (and, if the master is unreachable then, keeps that in its replica's outbox
//! until it is), so no agent exists that never received its key.

use crate::registry::{fmt_id, NewAgent};
use crate::worker::{Forward, Resolve, WorkerLink};
use actix::Addr;
use log::{debug, error, info, warn};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use wazuh_cluster_protocol::agent::enrollment::{self, success_reply, EnrollError, MAX_LINE};
use wazuh_cluster_protocol::message::{AdminRequest, AgentEntry, EnrollForward};

/// Where enrollments go.
#[derive(Clone)]
pub enum Enroller {
    Master(crate::consensus::writes::Writes),
    Worker(Addr<WorkerLink>),
    /// A master-eligible node: into the registry while it leads, else forwarded to the leader over
    /// its link to the leader's files (as a worker forwards them), when it has one.
    MasterEligible(crate::consensus::writes::Writes, tokio::sync::watch::Receiver<Option<Addr<WorkerLink>>>),
}

impl Enroller {
    /// Where this enrollment goes (a master-eligible node decides per enrollment).
    fn route(&self) -> Enroller {
        match self {
            Enroller::MasterEligible(writes, link) => {
                let follows = writes.raft().is_some_and(|r| crate::consensus::writes::leadership(r).is_err());
                match link.borrow().clone() {
                    Some(link) if follows => Enroller::Worker(link),
                    _ => Enroller::Master(writes.clone()),
                }
            }
            other => other.clone(),
        }
    }
}

pub use crate::enrollment_policy::{EnrollmentPolicy, PolicyRefusal};

pub struct EnrollmentSettings {
    pub node_name: String,
    pub password: Option<String>,
    /// A client must finish TLS and send its line within this time.
    pub timeout: Duration,
    /// Enrollments in progress from one address, at most; more connections are closed at once.
    pub max_per_address: u32,
    pub tls: Arc<rustls::ServerConfig>,
    /// The cluster's policy (on the master: its rate applies to the enrollments it takes itself).
    pub policy: Arc<EnrollmentPolicy>,
    /// Lines about clients that failed before their request line: one per kind per 10 s at most.
    pub unsaid: std::sync::Mutex<std::collections::HashMap<&'static str, crate::throttle::Throttle>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot generate the enrollment certificate: {0}")]
    Generate(String),
    #[error("cannot read or write {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("invalid certificate or key in {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the enrollment port asks of clients' certificates.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// Nothing.
    None,
    /// A certificate from this CA, checked here.
    Require(Arc<crate::client_cert::ClientCa>),
    /// Any certificate or none, for the master to check (a node that forwards enrollments).
    Collect,
}

/// Loads `<data_dir>/etc/sslmanager.cert` and `.key`, creating a self-signed pair on first start,
/// asking clients for certificates as `client` says.
pub fn tls_config(
    data_dir: &Path,
    node_name: &str,
    client: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let etc = data_dir.join("etc");
    server_tls(&etc.join("sslmanager.cert"), &etc.join("sslmanager.key"), node_name, "enrollment", client)
}

/// A TLS server configuration from a PEM certificate and key, made self-signed (for the node's
/// name, `localhost` and 127.0.0.1) when neither file exists; `what` names the use in the log line.
pub fn server_tls(
    cert_path: &Path,
    key_path: &Path,
    node_name: &str,
    what: &str,
    client: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |error| TlsSetupError::Io { path, error }
    };
    if !cert_path.exists() && !key_path.exists() {
        if let Some(dir) = cert_path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let names = vec![node_name.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
        let certified =
            rcgen::generate_simple_self_signed(names).map_err(|e| TlsSetupError::Generate(e.to_string()))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        opts.open(&key_path)
            .and_then(|mut f| f.write_all(certified.signing_key.serialize_pem().as_bytes()))
            .map_err(io(&key_path))?;
        std::fs::write(&cert_path, certified.cert.pem()).map_err(io(&cert_path))?;
        info!(node = node_name; "generated a self-signed {what} certificate in {}", cert_path.display());
    }
    let cert_pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let key_pem = std::fs::read(&key_path).map_err(io(&key_path))?;
    let pem_err = |p: &Path| {
        let path = p.display().to_string();
        move |reason: PemError| TlsSetupError::Pem { path, reason: reason.to_string() }
    };
    let certs: Vec<_> = rustls_pemfile_certs(&cert_pem).map_err(pem_err(&cert_path))?;
    let key = rustls_pemfile_key(&key_pem).map_err(pem_err(&key_path))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match client {
        ClientAuth::None => builder.with_no_client_auth().with_single_cert(certs, key)?,
        ClientAuth::Require(ca) => builder
            .with_client_cert_verifier(crate::client_cert::ClientVerifier::requiring(ca))
            .with_single_cert(certs, key)?,
        ClientAuth::Collect => builder
            .with_client_cert_verifier(crate::client_cert::ClientVerifier::collecting())
            .with_single_cert(certs, key)?,
    };
    Ok(Arc::new(config))
}

/// Why a PEM file gave no certificate or key.
#[derive(Debug, thiserror::Error)]
enum PemError {
    #[error(transparent)]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("no certificate found")]
    NoCertificate,
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PemError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

fn rustls_pemfile_key(pem: &[u8]) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PemError> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::PrivateKeyDer::from_pem_slice(pem)?)
}

/// Accepts enrollments on `listener` until the returned task is aborted. Every connection takes a
/// place in a pool of `capacity` (the node's share of enrollments) until it ends: when the pool is full, the
/// oldest connection that has not sent its request line yet is closed to make room; an address
/// with `max_per_address` of those gets no more (closed at once). Each kind of refusal is logged
/// once per 10 s at most, with how many there were.
///
/// Enrollments are served on a thread of their own (an arbiter named after the node): the TLS
/// handshakes stay off the thread that serves the agents' connections, and an enrollment does not
/// wait in line behind the keep-alives of every connected agent (at 100,000 agents, thousands a
/// second). Aborting the returned task stops that thread.
pub fn serve(
    listener: TcpListener,
    settings: Arc<EnrollmentSettings>,
    enroller: Enroller,
    (capacity, max_per_address): (usize, u32),
) -> actix_rt::task::JoinHandle<()> {
    /// Stops the enrollment thread when the task holding it is aborted or ends.
    struct Thread(actix_rt::Arbiter);
    impl Drop for Thread {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let node = settings.node_name.clone();
    let arbiter = match listener.into_std() {
        Ok(std_listener) => {
            let arbiter = actix_rt::Arbiter::new();
            // Made on the thread itself: the listener registers with its runtime, and the pool
            // (not Send) lives there.
            let spawned = arbiter.spawn_fn(move || match TcpListener::from_std(std_listener) {
                Ok(listener) => {
                    let pool = crate::budget::Pool::new(capacity, max_per_address);
                    actix_rt::spawn(accept_loop(listener, settings, enroller, pool));
                }
                Err(e) => error!(node = node.as_str(); "enrollment: cannot listen on the enrollment thread: {e}"),
            });
            Some(arbiter).filter(|_| spawned)
        }
        Err(e) => {
            error!(node = node.as_str(); "enrollment: cannot hand the listener to its thread: {e}");
            None
        }
    };
    actix_rt::spawn(async move {
        let _thread = arbiter.map(Thread);
        std::future::pending::<()>().await
    })
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<EnrollmentSettings>,
    enroller: Enroller,
    pool: crate::budget::Pool,
) {
    {
        use crate::budget::NoPlace;
        use crate::throttle::Throttle;
        let acceptor = TlsAcceptor::from(settings.tls.clone());
        let node = settings.node_name.as_str();
        let every = Duration::from_secs(10);
        let (mut said_address, mut said_full, mut said_shed, mut said_accept) =
            (Throttle::new(every), Throttle::new(every), Throttle::new(every), Throttle::new(every));
        let mut shed_unsaid = 0usize;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let (ticket, shed) = match pool.admit(peer.ip()) {
                        Ok(admitted) => admitted,
                        Err(NoPlace::Address(max)) => {
                            drop(stream);
                            if let Some(unsaid) = said_address.allow() {
                                warn!(node = node; "enrollment: {} connections from {} closed at once: that address already has {max} enrollments in progress (enrollment.max_per_address)", unsaid + 1, peer.ip());
                            }
                            continue;
                        }
                        Err(NoPlace::Full(cap)) => {
                            drop(stream);
                            if let Some(unsaid) = said_full.allow() {
                                warn!(node = node; "enrollment: {} connections closed at once: all {cap} places of this node's share of enrollments are being answered", unsaid + 1);
                            }
                            continue;
                        }
                    };
                    let (acceptor, settings, enroller) = (acceptor.clone(), settings.clone(), enroller.clone());
                    actix_rt::spawn(handle(stream, peer, acceptor, settings, enroller, ticket));
                    if shed > 0 {
                        shed_unsaid += shed;
                        if said_shed.allow().is_some() {
                            warn!(node = node; "enrollment: {shed_unsaid} connections that sent no request closed to make room, the oldest first: this node's share of {} enrollments at once is full", pool.capacity());
                            shed_unsaid = 0;
                        }
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    let shed = pool.shed_oldest();
                    if let Some(unsaid) = said_accept.allow() {
                        let what = if shed { "; closed the oldest connection that sent no request" } else { "" };
                        let more = crate::throttle::suppressed(unsaid);
                        warn!(node = node; "enrollment: accepting a connection failed: {e}{what}{more}");
                    }
                    tokio::time::sleep(Duration::from_millis(if shed { 1 } else { 100 })).await;
                }
            }
        }
    }
}

/// Why no request line could be read.
#[derive(Debug, thiserror::Error)]
enum LineError {
    #[error("the connection failed before the request line ended: {0}")]
    Failed(std::io::Error),
    #[error("the client closed the connection before sending a complete request line")]
    Closed,
    #[error("the request line is not UTF-8")]
    NotUtf8,
    #[error("the request line is longer than 68 KiB")]
    TooLong,
}

/// Reads up to and including the first `\n`, at most [`MAX_LINE`] bytes.
async fn read_line<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<String, LineError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).await.map_err(LineError::Failed)?;
        if n == 0 {
            return Err(LineError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            // The limit holds for a line that arrived whole in one read too.
            if pos + 1 > MAX_LINE {
                return Err(LineError::TooLong);
            }
            buf.truncate(pos + 1);
            return String::from_utf8(buf).map_err(|_| LineError::NotUtf8);
        }
        if buf.len() > MAX_LINE {
            return Err(LineError::TooLong);
        }
    }
}

/// One enrollment connection, holding its place in the pool until it ends; closed without a word
/// if the pool needs its place before the request line arrived.
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    settings: Arc<EnrollmentSettings>,
    enroller: Enroller,
    mut ticket: crate::budget::Ticket,
) {
    let node = settings.node_name.as_str();
    // Before its request line a client is a stranger: each kind of failure is said once per 10 s
    // at most for all of them (with how many were not said), not once per connection.
    let say = |kind: &'static str, what: String| {
        let allowed = {
            let mut unsaid = settings.unsaid.lock().unwrap_or_else(|p| p.into_inner());
            unsaid.entry(kind).or_insert_with(|| crate::throttle::Throttle::new(Duration::from_secs(10))).allow()
        };
        if let Some(unsaid) = allowed {
            let more = crate::throttle::suppressed(unsaid);
            warn!(node = node; "enrollment from {peer}: {what}{more}");
        }
    };
    let read = async {
        let _ = stream.set_nodelay(true);
        let mut tls = match tokio::time::timeout(settings.timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                say("tls", format!("TLS handshake failed: {e}"));
                return Err(());
            }
            Err(_) => {
                say("no tls", format!("no TLS handshake within {:?}; closed", settings.timeout));
                return Err(());
            }
        };
        match tokio::time::timeout(settings.timeout, read_line(&mut tls)).await {
            Ok(Ok(line)) => Ok((tls, line)),
            Ok(Err(reason)) => {
                say("line", format!("{reason}; closed"));
                if matches!(reason, LineError::TooLong) {
                    let _ = tls.write_all(EnrollError::InvalidRequest.reply().as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
                Err(())
            }
            Err(_) => {
                say("no line", format!("no request line within {:?}; closed", settings.timeout));
                Err(())
            }
        }
    };
    let (tls, line) = tokio::select! {
        read = read => match read {
            Ok(read) => read,
            Err(()) => return,
        },
        // Not logged one by one: the accept loop says how many (a flood would flood the log).
        _ = ticket.evicted() => return debug!(node = node; "enrollment from {peer}: closed to make room for newer connections"),
    };
    // The request is in: it is answered whatever comes next.
    ticket.authenticated();
    answer(tls, line, peer, &settings, enroller).await;
}

/// Checks, commits or forwards, replies and settles one request line.
async fn answer(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    line: String,
    peer: SocketAddr,
    settings: &EnrollmentSettings,
    enroller: Enroller,
) {
    let node = settings.node_name.as_str();
    let enroller = enroller.route();
    // A node that forwards passes the agent's password and certificate on for the master to check
    // with its own policy; the master checks its own here (the certificate in the TLS handshake).
    let forwards = matches!(enroller, Enroller::Worker(_));
    let password = if forwards { None } else { settings.password.as_deref() };
    let request =
        enrollment::parse(&line, password).and_then(|req| enrollment::validate(&req, peer.ip()).map(|v| (req, v)));
    let (req, valid) = match request {
        Ok(ok) => ok,
        Err(e) => {
            info!(node = node; "enrollment from {peer} refused: {e}");
            let _ = tls.write_all(e.reply().as_bytes()).await;
            let _ = tls.shutdown().await;
            return;
        }
    };
    let client_chain = match (forwards, tls.get_ref().1.peer_certificates()) {
        (true, Some(chain)) => chain.iter().map(|c| serde_bytes::ByteBuf::from(c.to_vec())).collect(),
        _ => Vec::new(),
    };
    let forward = EnrollForward {
        token: random_token(),
        name: valid.name.clone(),
        groups: valid.groups.clone(),
        ip: valid.ip.to_string(),
        key_hash: valid.key_hash.clone(),
        version: valid.version.clone(),
        password: if forwards { req.password } else { None },
        client_chain,
    };
    let outcome = match (&enroller, settings.policy.take()) {
        // The cluster's rate, on the master (a worker's forwards are counted there).
        (Enroller::Master(_) | Enroller::MasterEligible(..), Err(refused)) => {
            Err((refused.reply(&valid.name, wazuh_cluster_protocol::version::CURRENT), false))
        }
        _ => enroll(&enroller, node, forward.clone(), settings.password.clone()).await,
    };
    let entry = match outcome {
        Ok(entry) => entry,
        // Refused for its certificate: authd ends the handshake without a reply line; so do we.
        Err((e @ EnrollError::ClientCertificate(_), _)) => {
            return info!(node = node; "enrollment of {} from {peer} refused: {e}", valid.name);
        }
        Err((e, uncertain)) => {
            info!(node = node; "enrollment of {} from {peer} refused: {e}", valid.name);
            let _ = tls.write_all(e.reply().as_bytes()).await;
            let _ = tls.shutdown().await;
            if uncertain {
                // The master may have committed it before the link failed: it must go again.
                settle(&enroller, node, &forward.token, 0, false).await;
            }
            return;
        }
    };
    let reply = success_reply(&fmt_id(entry.id), &entry.name, &entry.ip, &entry.key);
    let delivered = async {
        tls.write_all(reply.as_bytes()).await?;
        tls.flush().await?;
        tls.shutdown().await
    }
    .await
    .is_ok();
    if delivered {
        info!(node = node; "agent {} {} enrolled from {peer}", fmt_id(entry.id), entry.name);
    } else {
        warn!(node = node; "agent {} {} from {peer}: the reply could not be delivered; removing the agent", fmt_id(entry.id), entry.name);
    }
    settle(&enroller, node, &forward.token, entry.id, delivered).await;
}

/// Commits (master) or forwards (worker) one enrollment. The flag of an error says whether the
/// master might have created the agent anyway (the answer was lost), so it must be told to drop it.
/// `local_password` is this node's own, checked on a worker whose master is too old to check the
/// cluster's.
async fn enroll(
    enroller: &Enroller,
    node: &str,
    f: EnrollForward,
    local_password: Option<String>,
) -> Result<AgentEntry, (EnrollError, bool)> {
    match enroller {
        Enroller::Master(writes) | Enroller::MasterEligible(writes, _) => {
            let name = f.name.clone();
            // Replicated, the agent stays pending until its reply is delivered, as one a worker
            // forwards: an entry that commits after its answer timed out is then removed.
            let replicated = writes.raft().is_some();
            let agent = NewAgent::from_forward(f, node.to_string(), replicated);
            match writes.enroll(agent).await {
                Ok(outcome) => outcome.map_err(|e| (e, false)),
                Err(e) => {
                    warn!(node = node; "enrollment of {name} failed in the registry: {e}");
                    let uncertain = replicated && matches!(e, crate::registry::StoreError::NotCommitted(_));
                    Err((EnrollError::Internal(name), uncertain))
                }
            }
        }
        Enroller::Worker(link) => {
            let name = f.name.clone();
            match link.send(Forward { request: f, local_password }).await {
                Ok(Ok(result)) => result.outcome.map_err(|e| (e, false)),
                Ok(Err(e)) => {
                    // Not sent at all: nothing to undo. Sent and not (or badly) answered: the
                    // master may have committed it, so it is told to drop it.
                    let uncertain = !matches!(e, crate::worker::ForwardError::NotConnected);
                    let why = match &e {
                        crate::worker::ForwardError::Call(crate::connection::CallError::Refused(r)) => {
                            format!("the master could not serve it ({r})")
                        }
                        other => format!("the master is unreachable ({other})"),
                    };
                    warn!(node = node; "enrollment of {name}: {why}; refused at once");
                    Err((EnrollError::Internal(name), uncertain))
                }
                Err(_) => Err((EnrollError::Internal(name), true)),
            }
        }
    }
}

/// After the reply: keep or remove the agent.
async fn settle(enroller: &Enroller, node: &str, token: &str, id: u32, delivered: bool) {
    match enroller {
        Enroller::Master(writes) | Enroller::MasterEligible(writes, _) if writes.raft().is_some() => {
            // Kept (delivered) or removed; if this fails, an undelivered agent expires as pending.
            if let Err(e) = writes.resolve(token.to_string(), delivered).await {
                warn!(node = node; "enrollment {token} not settled (delivered: {delivered}): {e}");
            }
        }
        Enroller::Master(writes) | Enroller::MasterEligible(writes, _) => {
            if !delivered {
                if let Err(e) = writes.admin(AdminRequest::DeleteAgent { id }).await {
                    warn!(node = node; "could not remove undelivered agent {}: {e}", fmt_id(id));
                }
            }
        }
        Enroller::Worker(link) => {
            // The link delivers it now or keeps it in the outbox until the master is reachable.
            let _ = link.send(Resolve { token: token.to_string(), delivered }).await;
            debug!(node = node; "enrollment {token} settled (delivered: {delivered})");
        }
    }
}

/// An idempotency token, 128 bits: the time in milliseconds (48 bits, first, so that tokens sort
/// in the order they are made) then 80 bits from the OS generator. Tokens only need to be unique;
/// in time order, each new one lands at the end of the indexes that hold them (the registry's on
/// every master, the worker's outbox) instead of on a random page, so a transaction of many
/// enrollments writes a few pages rather than two per enrollment. If the generator fails, a
/// counter stands in for the random part.
fn random_token() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut raw = [0u8; 16];
    raw[..6].copy_from_slice(&crate::clock::now_ms().to_be_bytes()[2..]);
    if getrandom::fill(&mut raw[6..]).is_err() {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        raw[8..].copy_from_slice(&n.to_be_bytes());
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_tokens_are_unique_and_sort_in_the_order_they_are_made() {
        let burst: Vec<String> = (0..2_000).map(|_| random_token()).collect();
        assert!(burst.iter().all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())), "{burst:?}");
        assert_eq!(burst.iter().collect::<std::collections::BTreeSet<_>>().len(), burst.len());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = random_token();
        assert!(burst.iter().all(|t| *t < later), "{later} sorts after every earlier token");
    }

    #[tokio::test]
    async fn a_request_line_over_the_limit_is_refused_even_when_its_newline_came_in_the_same_read() {
        // Over the limit by less than one read's worth: the newline arrives in the read that
        // crosses it.
        let mut long = vec![b'A'; MAX_LINE + 500];
        long.push(b'\n');
        assert!(matches!(read_line(&mut &long[..]).await, Err(LineError::TooLong)));
        let mut longer = vec![b'A'; 70 * 1024];
        longer.push(b'\n');
        assert!(matches!(read_line(&mut &longer[..]).await, Err(LineError::TooLong)));
        // At the limit, newline included: read.
        let mut fits = vec![b'A'; MAX_LINE - 1];
        fits.push(b'\n');
        fits.extend_from_slice(b"after");
        let line = read_line(&mut &fits[..]).await.expect("a line at the limit");
        assert_eq!(line.len(), MAX_LINE);
        assert!(matches!(read_line(&mut &b"no newline"[..]).await, Err(LineError::Closed)));
    }
}
