//! The agent side of the protocol, for the `agent-sim` load generator and the tests.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Agents do not verify the manager's certificate by default; neither does the simulator.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents one certificate chain whatever the server asks. (rustls' own way of setting a client
/// certificate parses it with webpki, which refuses version 1 certificates; real agents present
/// what OpenSSL takes, version 1 included, and so does the simulator.)
#[derive(Debug)]
struct OneCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A connector presenting a client certificate (for managers that require one).
pub fn connector_with_client_cert(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing_key = provider.key_provider.load_private_key(key)?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing_key));
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_client_cert_resolver(Arc::new(OneCertificate(certified)));
    Ok(TlsConnector::from(Arc::new(config)))
}

pub fn connector() -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One enrollment: the request line out, the reply back.
pub async fn enroll_one(connector: TlsConnector, addr: String, line: String) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(&addr).await?;
    enroll_over(connector, tcp, line).await
}

/// [`enroll_one`] over a connection already made (from a chosen source address, in tests).
pub async fn enroll_over(connector: TlsConnector, tcp: TcpStream, line: String) -> anyhow::Result<String> {
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("wazuh-manager")?.to_owned();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(line.as_bytes()).await?;
    tls.flush().await?;
    let mut reply = Vec::new();
    // The manager writes one reply and closes; a missing close_notify is tolerated.
    match tls.read_to_end(&mut reply).await {
        Ok(_) => {}
        Err(e) if !reply.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.into()),
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// `OSSEC K:'001 name ip key'` -> `001 name ip key`.
pub fn parse_key(reply: &str) -> Option<String> {
    let inner = reply.strip_prefix("OSSEC K:'")?.strip_suffix('\'')?;
    (inner.split(' ').count() == 4).then(|| inner.to_string())
}

/// Counters of simulated agent connections.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Agents connected and acknowledged right now.
    pub active: std::sync::atomic::AtomicU64,
    pub acks: std::sync::atomic::AtomicU64,
    /// merged.mg pushes received whole with the announced MD5.
    pub pushes: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub reconnects: std::sync::atomic::AtomicU64,
    /// When the latest push was received, in milliseconds since the Unix epoch.
    pub last_push_ms: std::sync::atomic::AtomicU64,
    /// Events sent.
    pub events: std::sync::atomic::AtomicU64,
}

/// What a simulated agent can be told to do while it runs.
#[derive(Debug)]
pub enum AgentCmd {
    /// Send a keep-alive now with this extra label (`"bench":value`).
    Label(String),
}

/// One simulated agent: `key_line` is `id name ip key` as enrollment returned it.
pub struct SimAgent {
    pub id: String,
    pub name: String,
    aes: [u8; 32],
    header: Vec<u8>,
    counters: wazuh_cluster_protocol::agent::secure::Counters,
    pub merged_sum: String,
    label: Option<String>,
}

impl SimAgent {
    pub fn from_key_line(line: &str) -> Option<Self> {
        let mut parts = line.split(' ');
        let (id, name, _ip, key) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        Some(Self {
            id: id.to_string(),
            name: name.to_string(),
            aes: wazuh_cluster_protocol::agent::secure::aes_key(key),
            header: format!("!{id}!#AES:").into_bytes(),
            counters: Default::default(),
            merged_sum: "x".into(),
            label: None,
        })
    }

    /// One encrypted frame carrying `message`.
    pub fn frame(&mut self, message: &[u8]) -> Vec<u8> {
        use wazuh_cluster_protocol::agent::secure::{encrypt, frame};
        let c = self.counters.advance();
        frame(&encrypt(
            &self.aes,
            &self.header,
            c,
            (wazuh_cluster_actors::backoff::random_u64() % 100_000).max(1) as u32,
            message,
        ))
    }

    /// The counters of the last frame made, as (global, local).
    pub fn last_counters(&self) -> (u32, u32) {
        (self.counters.global, self.counters.local)
    }

    pub fn keepalive_text(&self) -> String {
        let mut text = format!(
            "#!-Linux |{} |6.1.0-18-amd64 |#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 |x86_64 [Debian GNU/Linux|debian: 12 (bookworm)] - Wazuh v4.14.7 / ab73af41699f13fdd81903b5f23d8d00\n\"env\":sim\n",
            self.name
        );
        if let Some(l) = &self.label {
            text.push_str(&format!("\"bench\":{l}\n"));
        }
        text.push_str(&format!("{} merged.mg\n#\"_agent_ip\":127.0.0.1\n", self.merged_sum));
        text
    }

    /// Decrypts a manager frame's payload.
    pub fn open(&self, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        use wazuh_cluster_protocol::agent::secure::{decrypt, parse_header};
        let h = parse_header(payload)?;
        anyhow::ensure!(h.agent_id.is_none(), "the manager sent an id header");
        Ok(decrypt(&self.aes, h.ciphertext)?.text)
    }
}

/// Reads one frame's payload.
pub async fn read_payload(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    anyhow::ensure!(len <= wazuh_cluster_protocol::agent::secure::MAX_PAYLOAD, "frame of {len} bytes");
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Why a connection of a simulated agent ended.
enum ConnEnd {
    Stopped,
    Reconnect,
    /// The connection was up, then failed (the manager closed it, a read or write failed).
    Lost,
}

/// How simulated agents behave once connected.
#[derive(Debug, Clone)]
pub struct AgentOpts {
    /// Time between keep-alives.
    pub keepalive: std::time::Duration,
    /// Events each agent sends per second (0: none), as logcollector forwards log lines.
    pub events_per_s: f64,
    /// Bytes of each event's log line.
    pub event_size: usize,
    /// Real-agent reconnection: failed attempts on one server before the next (0: move at once).
    pub max_retries: u32,
    /// Real-agent reconnection: the pause after each failed attempt.
    pub retry_interval: std::time::Duration,
    /// Where to write each command the manager sends (`<agent name> <message>` lines: active
    /// responses `#!-execd ...`, requests `#!-req ...`); requests are answered either way.
    pub commands_out: Option<std::sync::Arc<std::sync::Mutex<std::fs::File>>>,
    /// Connect from an address of the agent's own in 127.0.0.0/8 (for servers on loopback), as
    /// agents behind many hosts do.
    pub spread_sources: bool,
}

/// The loopback address agent `id` connects from with `spread_sources`: 127.a.b.c, none of them 0
/// or 255, a different one for each of the first 16 million agents.
pub fn source_for(id: u32) -> std::net::Ipv4Addr {
    let n = id as u64;
    let c = (n % 254) as u8 + 1;
    let b = ((n / 254) % 254) as u8 + 1;
    let a = ((n / (254 * 254)) % 254) as u8 + 1;
    std::net::Ipv4Addr::new(127, a, b, c)
}

/// Resolves once `stop` says so (at once if it already has).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        // The sender is gone: nothing will ever say stop; wait forever like a live run would.
        std::future::pending::<()>().await;
    }
}

/// Runs `agent` until `stop`: connects to `addrs` (starting at `first`, moving to the next address
/// whenever a connection fails or the manager asks it to reconnect), sends the startup and then a
/// keep-alive every `opts.keepalive` (and events at `opts.events_per_s`), checks that the ack comes
/// first, follows merged.mg pushes (verifying the MD5) and reports the new sum in its keep-alives.
pub async fn run_agent(
    mut agent: SimAgent,
    addrs: Arc<Vec<String>>,
    first: usize,
    opts: Arc<AgentOpts>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: Arc<ConnStats>,
    mut cmds: tokio::sync::mpsc::Receiver<AgentCmd>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut idx = first;
    let mut attempt = 0u32;
    let real = opts.max_retries > 0;
    while !*stop.borrow() {
        let addr = &addrs[idx % addrs.len()];
        let pause = match agent_conn(&mut agent, addr, &opts, &mut stop, &stats, &mut cmds).await {
            Ok(ConnEnd::Stopped) => break,
            // As a real agent: the same server again, at once; the attempts start over.
            Ok(ConnEnd::Reconnect | ConnEnd::Lost) if real => {
                attempt = 0;
                std::time::Duration::ZERO
            }
            Err(_) if real => {
                stats.errors.fetch_add(1, Relaxed);
                attempt += 1;
                if attempt >= opts.max_retries {
                    // The last attempt on this server failed: the next one in the list.
                    attempt = 0;
                    idx += 1;
                }
                opts.retry_interval
            }
            ended => {
                match ended {
                    Ok(ConnEnd::Reconnect) => attempt = 0,
                    // Counted as an error where it was lost.
                    Ok(_) => attempt += 1,
                    Err(_) => {
                        stats.errors.fetch_add(1, Relaxed);
                        attempt += 1;
                    }
                }
                idx += 1;
                std::time::Duration::from_millis(
                    (50u64 << attempt.min(4)) + wazuh_cluster_actors::backoff::random_u64() % 100,
                )
            }
        };
        stats.reconnects.fetch_add(1, Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped(&mut stop) => break,
        }
    }
}

async fn agent_conn(
    agent: &mut SimAgent,
    addr: &str,
    opts: &AgentOpts,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    stats: &ConnStats,
    cmds: &mut tokio::sync::mpsc::Receiver<AgentCmd>,
) -> anyhow::Result<ConnEnd> {
    use std::sync::atomic::Ordering::Relaxed;
    let connect = async {
        if !opts.spread_sources {
            return TcpStream::connect(addr).await;
        }
        let target: std::net::SocketAddr =
            addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        let id = agent.id.parse::<u32>().unwrap_or(0);
        socket.bind(std::net::SocketAddr::new(source_for(id).into(), 0))?;
        socket.connect(target).await
    };
    let mut stream = tokio::time::timeout(std::time::Duration::from_secs(5), connect).await??;
    stream.set_nodelay(true)?;
    let startup = agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}");
    stream.write_all(&startup).await?;
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), read_payload(&mut stream)).await??;
    let first = agent.open(&first)?;
    anyhow::ensure!(first == b"#!-agent ack ", "the first frame is not the ack: {}", String::from_utf8_lossy(&first));
    stats.acks.fetch_add(1, Relaxed);
    stats.active.fetch_add(1, Relaxed);
    let result = conversation(agent, &mut stream, opts, stop, stats, cmds).await;
    stats.active.fetch_sub(1, Relaxed);
    let result = match result {
        Err(_) => {
            stats.errors.fetch_add(1, Relaxed);
            Ok(ConnEnd::Lost)
        }
        ended => ended,
    };
    if matches!(result, Ok(ConnEnd::Stopped | ConnEnd::Reconnect)) {
        if matches!(result, Ok(ConnEnd::Stopped)) {
            let bye = agent.frame(b"#!-agent shutdown ");
            let _ = stream.write_all(&bye).await;
        }
        // End the stream and read what the manager still sends until it closes too: a socket
        // closed with unread bytes resets the connection, and a reset makes the manager's kernel
        // drop whatever events it had received and the manager had not read yet.
        if stream.shutdown().await.is_ok() {
            let mut sink = [0u8; 4096];
            let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
        }
    }
    result
}

/// One log line of about `size` bytes, as logcollector forwards it (`1:<location>:<line>`): sshd
/// and sudo lines of the kinds Wazuh's default ruleset decodes (failed and accepted logins, invalid
/// users, sudo commands), in turn.
pub fn event_text(agent: &str, n: u64, size: usize) -> String {
    let pid = 1000 + n % 30_000;
    let (a, b) = (n % 250, (n / 250) % 250);
    let mut text = match n % 4 {
        0 => format!("1:/var/log/auth.log:Nov 30 12:00:00 {agent} sshd[{pid}]: Failed password for invalid user admin from 10.0.{a}.{b} port 22 ssh2 #{n}"),
        1 => format!("1:/var/log/auth.log:Nov 30 12:00:00 {agent} sshd[{pid}]: Accepted publickey for deploy from 10.0.{a}.{b} port 52{a:03} ssh2: RSA SHA256:q7X{n}"),
        2 => format!("1:/var/log/auth.log:Nov 30 12:00:00 {agent} sudo:   deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/usr/bin/systemctl restart nginx #{n}"),
        _ => format!("1:/var/log/auth.log:Nov 30 12:00:00 {agent} sshd[{pid}]: Invalid user oracle from 10.0.{a}.{b} port 4{b:04} #{n}"),
    };
    while text.len() < size {
        text.push_str(" padding");
    }
    text.truncate(size.max(40));
    text
}

/// Writes one command the manager sent to `--commands-out`, if asked.
fn note_command(opts: &AgentOpts, agent: &str, text: &[u8]) {
    use std::io::Write;
    if let Some(file) = &opts.commands_out {
        if let Ok(mut file) = file.lock() {
            let _ = writeln!(file, "{agent} {}", String::from_utf8_lossy(text));
        }
    }
}

async fn conversation(
    agent: &mut SimAgent,
    stream: &mut TcpStream,
    opts: &AgentOpts,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    stats: &ConnStats,
    cmds: &mut tokio::sync::mpsc::Receiver<AgentCmd>,
) -> anyhow::Result<ConnEnd> {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut rd, mut wr) = stream.split();
    let now = tokio::time::Instant::now();
    // Events go out in batches, at most ten times a second.
    let tick = if opts.events_per_s > 0.0 {
        std::time::Duration::from_secs_f64((1.0 / opts.events_per_s).max(0.1))
    } else {
        std::time::Duration::from_secs(3600)
    };
    let per_tick = opts.events_per_s * tick.as_secs_f64();
    let mut owed = 0.0f64;
    let mut next_ev = now + tick.mul_f64(wazuh_cluster_actors::backoff::random_u64() as f64 / u64::MAX as f64);
    let mut file: Option<(String, Vec<u8>)> = None;
    // Reads are cancel-safe: whatever arrived stays in the buffer whatever branch wins.
    let mut fb = wazuh_cluster_protocol::agent::secure::FrameBuffer::default();
    let mut buf = vec![0u8; 4 * 1024];
    // The timers and the stop signal live as long as the connection: a timer made anew on each
    // turn of the loop registers with the runtime's timer wheel every time, and each registration
    // can wake the driver (a write to its eventfd), which cost this process half its CPU.
    let keepalive = tokio::time::sleep_until(now);
    let events = tokio::time::sleep_until(next_ev);
    let stop = stopped(stop);
    tokio::pin!(keepalive, events, stop);
    let mut commands_open = true;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(ConnEnd::Stopped),
            _ = &mut keepalive => {
                let f = agent.frame(agent.keepalive_text().as_bytes());
                wr.write_all(&f).await?;
                keepalive.as_mut().reset(tokio::time::Instant::now() + opts.keepalive);
            }
            _ = &mut events, if opts.events_per_s > 0.0 => {
                owed += per_tick;
                let n = owed as u64;
                owed -= n as f64;
                let mut out = Vec::new();
                for _ in 0..n {
                    let seq = stats.events.fetch_add(1, Relaxed);
                    out.extend_from_slice(&agent.frame(event_text(&agent.name, seq, opts.event_size).as_bytes()));
                }
                wr.write_all(&out).await?;
                next_ev += tick;
                events.as_mut().reset(next_ev);
            }
            cmd = cmds.recv(), if commands_open => match cmd {
                Some(AgentCmd::Label(l)) => {
                    agent.label = Some(l);
                    keepalive.as_mut().reset(tokio::time::Instant::now());
                }
                // Nobody will send commands: stop asking (a closed channel answers at once, and
                // asking again and again would spin).
                None => commands_open = false,
            },
            read = rd.read(&mut buf) => {
                let n = read?;
                anyhow::ensure!(n > 0, "the manager closed the connection");
                fb.extend(&buf[..n]);
                while let Some(payload) = fb.next_payload()? {
                    let text = agent.open(&payload)?;
                    if text == b"#!-agent ack " {
                        stats.acks.fetch_add(1, Relaxed);
                    } else if let Some(rest) = text.strip_prefix(b"#!-up file ") {
                        let line = String::from_utf8_lossy(rest);
                        let md5 = line.split(' ').next().unwrap_or_default().to_string();
                        file = Some((md5, Vec::new()));
                    } else if text == b"#!-close file " {
                        let Some((md5, data)) = file.take() else { anyhow::bail!("close without a file") };
                        use md5::{Digest, Md5};
                        let got: String = Md5::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
                        anyhow::ensure!(got == md5, "merged.mg MD5 {got}, announced {md5}");
                        agent.merged_sum = md5;
                        stats.pushes.fetch_add(1, Relaxed);
                        stats.last_push_ms.fetch_max(wazuh_cluster_actors::clock::now_ms(), Relaxed);
                    } else if let Some(rest) = text.strip_prefix(b"#!-req ") {
                        // As an agent answers a request: an ack, then its answer, under the counter.
                        let line = String::from_utf8_lossy(rest).into_owned();
                        let (counter, payload) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                        note_command(opts, &agent.name, &text);
                        if payload != "ack" {
                            let answer = serde_json::json!({"sim": agent.name, "asked": payload});
                            let mut out = agent.frame(format!("#!-req {counter} ack").as_bytes());
                            out.extend(agent.frame(format!("#!-req {counter} ok {answer}").as_bytes()));
                            wr.write_all(&out).await?;
                        }
                    } else if text.starts_with(b"#!-execd ") {
                        note_command(opts, &agent.name, &text);
                    } else if text.starts_with(b"#!-force_reconnect") {
                        return Ok(ConnEnd::Reconnect);
                    } else if text.starts_with(b"#!-err") {
                        anyhow::bail!("refused: {}", String::from_utf8_lossy(&text));
                    } else if let Some((_, data)) = file.as_mut() {
                        data.extend_from_slice(&text);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod source_tests {
    #[test]
    fn every_agent_gets_a_loopback_address_of_its_own() {
        let mut seen = std::collections::HashSet::new();
        for id in 0..200_000u32 {
            let ip = super::source_for(id);
            assert!(ip.is_loopback() && !ip.octets()[1..].contains(&0) && !ip.octets()[1..].contains(&255));
            assert!(seen.insert(ip), "{ip} twice");
        }
    }
}
