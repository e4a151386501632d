//! Floods against the agent, enrollment and cluster ports (bounded loops, loopback only):
//! connections that never authenticate are capped per address and closed after their deadline; a
//! real agent still enrolls and connects and a new worker still joins during each flood; the node
//! logs a bounded number of lines about it, and its memory stays within a stated bound.
//!
//! Times are printed, not asserted against the 1 s goal (a timed assertion would fail on a busy
//! machine for the wrong reason): the assertions are that each legitimate peer gets in while the
//! flood is on, within a loose 5 s.

use crate::common;

use common::cluster::{TestCluster, API_TOKEN};
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key, read_payload, SimAgent};

const FLOOD: usize = 5_000;
const CAP: u32 = 256;
/// How long a test waits for a deadline of a few seconds to be acted on.
const WAIT: Duration = Duration::from_secs(15);
/// Loose bound on a legitimate peer's wait during a flood (the figure is printed).
const LOOSE: Duration = Duration::from_secs(5);
/// Stated bound on what a flood may add to the test process (every node of the cluster, and the
/// flood's own client sockets).
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// Held for the length of a test: the RSS bounds hold only while no other test runs nodes in this
/// process.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

/// Raises this process's open-file limit to what `want` sockets need (up to the hard limit).
fn allow_files(want: u64) {
    if let Ok((now, max)) = wazuh_cluster_actors::budget::open_files_limit() {
        if now < want {
            let _ = wazuh_cluster_actors::budget::set_open_files(Some(want.min(max)));
        }
    }
}

/// An agent enrolled through the master.
async fn enrolled(cluster: &TestCluster, name: &str) -> SimAgent {
    let reply = enroll_one(
        connector().expect("tls"),
        cluster.master().enrollment_addr.to_string(),
        format!("OSSEC A:'{name}'\n"),
    )
    .await
    .expect("enroll");
    SimAgent::from_key_line(&parse_key(&reply).expect("key")).expect("agent")
}

fn rss_kib() -> u64 {
    wazuh_cluster_tools::procstat::rss_kib(std::process::id()).unwrap_or(0)
}

#[actix_rt::test]
async fn idle_connections_on_the_agent_port_are_capped_and_closed_and_a_real_agent_still_connects() {
    let _one = one_at_a_time().await;
    allow_files(FLOOD as u64 + 2_000);
    let cluster = TestCluster::start_with(
        "flood",
        1,
        &[("agents.auth_timeout", "2s".into()), ("agents.max_pending_per_address", CAP.to_string())],
    )
    .await;
    let node = cluster.worker_name(0);
    let addr = cluster.worker(0).agents_addr;
    let mut agent = enrolled(&cluster, "flood-agent").await;
    let mut cluster = cluster;
    let rss_before = rss_kib();

    // The flood: connections that never say anything, all from 127.0.0.1.
    let started = Instant::now();
    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        match TcpStream::connect(addr).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect {} failed: {e}", idle.len()),
        }
    }
    let flooded_in = started.elapsed();

    // A real agent from another address connects and is acknowledged within a second.
    let t0 = Instant::now();
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(&agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}")).await.expect("startup");
    let ack =
        tokio::time::timeout(Duration::from_secs(5), read_payload(&mut s)).await.expect("an answer").expect("frame");
    assert_eq!(agent.open(&ack).expect("decrypt"), b"#!-agent ack ");
    let took = t0.elapsed();
    assert!(took < LOOSE, "the real agent waited {took:?} during the flood");
    // A new worker joins meanwhile.
    let joined = cluster.add_worker("flood-late-worker", LOOSE).await;

    // Beyond the cap the worker closed them at once; the rest within the deadline.
    let rss_flood = rss_kib();
    let closed = || async { idle.iter().all(|c| !still_open(c)) };
    wait_until("every idle connection is closed (agents.auth_timeout is 2 s)", WAIT, closed).await;
    eprintln!(
        "{FLOOD} idle connections made in {flooded_in:?}; a real agent acknowledged after {took:?}; \
         a new worker joined in {joined:?}; all closed {:?} after the flood; test process RSS {rss_before} -> {rss_flood} KiB",
        started.elapsed()
    );
    // The one real agent is still served.
    s.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
    let ack =
        tokio::time::timeout(Duration::from_secs(5), read_payload(&mut s)).await.expect("an answer").expect("frame");
    assert_eq!(agent.open(&ack).expect("decrypt"), b"#!-agent ack ");
    // A handful of lines about the flood, not one per connection.
    let lines = find_logs(&node, &["agent connection"]).len() + find_logs(&node, &["agent connections:"]).len();
    assert!(lines <= 10, "{lines} log lines about the flood");
    assert!(!find_logs(&node, &["agent connections:", "closed at once"]).is_empty(), "the cap was never reached");
    // The in-process cluster and the test's own sockets: a stated, loose bound.
    assert!(rss_flood.saturating_sub(rss_before) < RSS_BOUND_KIB, "RSS grew {} KiB", rss_flood - rss_before);
}

/// The same on the enrollment port: connections that never finish an enrollment are capped per
/// address and closed after `enrollment.timeout`; a real agent enrolls meanwhile.
#[actix_rt::test]
async fn idle_connections_on_the_enrollment_port_are_capped_and_closed_and_a_real_agent_still_enrolls() {
    let _one = one_at_a_time().await;
    allow_files(FLOOD as u64 + 2_000);
    let mut cluster = TestCluster::start_with(
        "eflood",
        1,
        &[("enrollment.timeout", "2s".into()), ("enrollment.max_per_address", CAP.to_string())],
    )
    .await;
    let node = cluster.worker_name(0);
    let addr = cluster.worker(0).enrollment_addr;
    let rss_before = rss_kib();
    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let t0 = Instant::now();
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
    let tcp = socket.connect(addr).await.expect("connect");
    let reply =
        wazuh_cluster_tools::sim::enroll_over(connector().expect("tls"), tcp, "OSSEC A:'eflood-agent'\n".into())
            .await
            .expect("enroll");
    let took = t0.elapsed();
    assert!(parse_key(&reply).is_some(), "{reply}");
    assert!(took < LOOSE, "enrollment took {took:?} during the flood");
    let joined = cluster.add_worker("eflood-late-worker", LOOSE).await;
    let rss_flood = rss_kib();
    let closed = || async { idle.iter().all(|c| !still_open(c)) };
    wait_until("every idle enrollment connection is closed (enrollment.timeout)", WAIT, closed).await;
    eprintln!(
        "{FLOOD} idle enrollment connections; a real enrollment took {took:?}; a new worker joined in {joined:?}; \
         all closed since; test process RSS {rss_before} -> {rss_flood} KiB"
    );
    assert!(rss_flood.saturating_sub(rss_before) < RSS_BOUND_KIB, "RSS grew {} KiB", rss_flood - rss_before);
    assert!(!find_logs(&node, &["enrollment:", "closed at once"]).is_empty(), "the cap was never reached");
    // One line per idle connection that timed out would be FLOOD lines; the capped ones are not logged.
    let lines = find_logs(&node, &["enrollment"]).len();
    assert!(lines <= CAP as usize + 10, "{lines} log lines about the flood");
}

/// The cluster port: 300 connections from one address that never finish a handshake, reopened as
/// fast as they are closed, with a handshake deadline long enough (30 s) that they would hold
/// every handshake slot for the whole test: the master keeps at most 8 handshakes per address and
/// closes the rest at once, so a new worker (from another address) joins meanwhile; the refusals
/// make a few log lines, not one per connection.
#[actix_rt::test]
async fn a_handshake_flood_on_the_cluster_port_cannot_keep_a_worker_out() {
    let _one = one_at_a_time().await;
    allow_files(4_000);
    const SOCKETS: usize = 300;
    let mut cluster = TestCluster::start_with("cflood", 0, &[("cluster.handshake_timeout", "30s".into())]).await;
    let master = cluster.master_name();
    let wazuh_multi_node::node::NodeHandle::Master { cluster_addr, .. } = &cluster.master().handle else {
        panic!("master")
    };
    let addr = *cluster_addr;
    let rss_before = rss_kib();
    let connect = move || async move {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind("127.0.0.2:0".parse().ok()?).ok()?;
        socket.connect(addr).await.ok()
    };
    // The flood runs beside the join: every closed socket is reopened at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flood = stop.clone();
    let flood = actix_rt::spawn(async move {
        let mut socks: Vec<Option<TcpStream>> = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            socks.push(connect().await);
        }
        let (mut opened, mut buf) = (SOCKETS, [0u8; 16]);
        while !stop_flood.load(std::sync::atomic::Ordering::Relaxed) {
            for slot in socks.iter_mut() {
                let closed = match slot {
                    Some(s) => !matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                    None => true,
                };
                if closed {
                    *slot = connect().await;
                    opened += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let open = socks
            .iter()
            .flatten()
            .filter(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
            .count();
        (opened, open)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let joined = cluster.add_worker("cflood-worker", LOOSE).await;
    let rss_flood = rss_kib();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opened, open) = flood.await.expect("flood task");
    eprintln!(
        "{SOCKETS} handshake sockets from 127.0.0.2 reopened {opened} times; {open} held open by the master; \
         a new worker joined in {joined:?}; test process RSS {rss_before} -> {rss_flood} KiB"
    );
    assert!(opened > SOCKETS, "the master closed none of the flood");
    assert!(open <= wazuh_cluster_actors::master::MAX_PENDING_PER_ADDRESS, "{open} flood handshakes held at once");
    let lines = find_logs(&master, &["127.0.0.2"]).len();
    assert!(lines <= 10, "{lines} log lines about the flood");
    assert!(!find_logs(&master, &["handshakes from 127.0.0.2 already in progress"]).is_empty(), "never capped");
    assert!(rss_flood.saturating_sub(rss_before) < RSS_BOUND_KIB, "RSS grew {} KiB", rss_flood - rss_before);
}

/// Opens `n` connections to `addr` from `source`, each given to `then` once connected.
async fn open_from<T, F, Fut>(source: &str, addr: std::net::SocketAddr, n: usize, then: F) -> Vec<T>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{source}:0").parse().expect("addr")).expect("bind");
        if let Ok(s) = socket.connect(addr).await {
            if let Some(t) = then(s).await {
                held.push(t);
            }
        }
    }
    held
}

/// Whether a connection is still open (the server neither closed it nor sent anything).
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The API under floods from three addresses at once, over HTTPS: connections that never start
/// TLS, connections that stop in the middle of a ClientHello, and connections that finish TLS and
/// never finish their headers. Each address keeps at most `api.max_connections_per_address` (the
/// rest are closed at once), each kept one is closed at its deadline (handshake, header), and a
/// real call from a fourth address is answered meanwhile.
#[actix_rt::test]
async fn api_floods_of_idle_half_tls_and_slow_header_connections_leave_real_calls_served() {
    let _one = one_at_a_time().await;
    use wazuh_multi_node::client::{request_trusting, Trust};
    allow_files(4_000);
    const PER_ADDRESS: usize = 8;
    const EACH: usize = 300;
    let cluster = TestCluster::start_with(
        "apiflood",
        0,
        &[
            ("api.tls", "true".into()),
            ("api.max_connections_per_address", PER_ADDRESS.to_string()),
            ("api.handshake_timeout", "1s".into()),
            ("api.header_timeout", "1s".into()),
        ],
    )
    .await;
    let api = cluster.master().api_addr;
    let node = cluster.master_name();
    let ask = || async move {
        let t0 = Instant::now();
        let base = format!("https://{api}");
        let answer = actix_rt::task::spawn_blocking(move || {
            request_trusting(&Trust { ca_file: None, insecure: true }, &base, "GET", "/agents", Some(API_TOKEN), None)
        })
        .await
        .expect("join");
        (answer.map(|(status, _)| status).ok(), t0.elapsed())
    };
    let (status, quiet) = ask().await;
    assert_eq!(status, Some(200));
    let rss_before = rss_kib();

    let started = Instant::now();
    // Never a byte.
    let idle = open_from("127.0.0.2", api, EACH, |s| async move { Some(s) }).await;
    // Half a ClientHello (a TLS record header that promises 512 bytes, then 5 of them).
    let half = open_from("127.0.0.3", api, EACH, |mut s| async move {
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03]).await.ok()?;
        Some(s)
    })
    .await;
    // TLS finished, then a request head that never ends.
    let slow = open_from("127.0.0.4", api, EACH, |s| async move {
        let name = rustls::pki_types::ServerName::try_from("localhost").ok()?.to_owned();
        let mut tls = wazuh_cluster_tools::sim::connector().ok()?.connect(name, s).await.ok()?;
        tls.write_all(b"GET /agents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.ok()?;
        tls.flush().await.ok()?;
        Some(tls)
    })
    .await;
    let flooded_in = started.elapsed();
    let (status, during) = ask().await;
    let rss_flood = rss_kib();
    let open_now = [idle.iter().filter(|s| still_open(s)).count(), half.iter().filter(|s| still_open(s)).count()];
    eprintln!(
        "API floods ({EACH} idle, {EACH} half-TLS, {} slow-header connections from three addresses, made in \
         {flooded_in:?}): a real call took {during:?} (quiet: {quiet:?}); open per address right after: {open_now:?}; \
         test process RSS {rss_before} -> {rss_flood} KiB",
        slow.len()
    );
    assert_eq!(status, Some(200), "the real call was not answered during the floods");
    assert!(during < LOOSE, "the real call took {during:?}");
    assert!(open_now.iter().all(|n| *n <= PER_ADDRESS), "more than {PER_ADDRESS} held by one address: {open_now:?}");
    assert!(slow.len() <= PER_ADDRESS, "{} slow-header connections finished TLS", slow.len());
    // Past the deadlines, none is left.
    let closed = || async { idle.iter().chain(half.iter()).all(|s| !still_open(s)) };
    wait_until("the idle and half-TLS connections are closed at the handshake deadline", WAIT, closed).await;
    let mut buf = [0u8; 256];
    for mut tls in slow {
        let n = tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(_)) | Ok(Err(_))), "a slow-header connection outlived the header deadline");
    }
    let lines = find_logs(&node, &["API:", "closed at once"]).len();
    assert!((1..=5).contains(&lines), "{lines} log lines about the refused connections");
    assert!(rss_flood.saturating_sub(rss_before) < RSS_BOUND_KIB, "RSS grew {} KiB", rss_flood - rss_before);
}

/// With the node's agent connections full (`agents.max_connections` below the flood), each new
/// connection closes the oldest one that speaks for no agent: a real agent connecting during the
/// flood gets in, and once it spoke it is never the one closed, however long the flood goes on.
#[actix_rt::test]
async fn a_full_agent_port_sheds_the_oldest_unauthenticated_connection_and_keeps_real_agents() {
    let _one = one_at_a_time().await;
    allow_files(6_000);
    const PLACES: usize = 200;
    let cluster = TestCluster::start_with(
        "shed",
        1,
        &[("agents.max_connections", PLACES.to_string()), ("agents.auth_timeout", "60s".into())],
    )
    .await;
    let node = cluster.worker_name(0);
    let addr = cluster.worker(0).agents_addr;
    let mut agent = enrolled(&cluster, "shed-agent").await;
    // The flood fills the pool first.
    let first = open_from("127.0.0.2", addr, 1_000, |s| async move { Some(s) }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let open_first = first.iter().filter(|s| still_open(s)).count();
    // A real agent connects from another address and speaks.
    let t0 = Instant::now();
    let mut real = open_from("127.0.0.3", addr, 1, |s| async move { Some(s) }).await.pop().expect("connect");
    real.write_all(&agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}")).await.expect("startup");
    let ack = tokio::time::timeout(LOOSE, read_payload(&mut real)).await.expect("an answer").expect("frame");
    assert_eq!(agent.open(&ack).expect("decrypt"), b"#!-agent ack ");
    let took = t0.elapsed();
    // More flood: the real agent is authenticated, so it is never the one closed.
    let second = open_from("127.0.0.4", addr, 1_000, |s| async move { Some(s) }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (open_first_after, open_second) =
        (first.iter().filter(|s| still_open(s)).count(), second.iter().filter(|s| still_open(s)).count());
    real.write_all(&agent.frame(agent.keepalive_text().as_bytes())).await.expect("keep-alive");
    let ack = tokio::time::timeout(LOOSE, read_payload(&mut real)).await.expect("an answer").expect("frame");
    assert_eq!(agent.open(&ack).expect("decrypt"), b"#!-agent ack ");
    eprintln!(
        "{PLACES} places: 1,000 idle connections left {open_first} open; a real agent acknowledged after {took:?}; \
         1,000 more left {open_first_after} of the first and {open_second} of the second open; the agent still served"
    );
    assert!(open_first <= PLACES, "{open_first} held with {PLACES} places");
    assert_eq!(open_first_after, 0, "the newer flood closed every older unauthenticated connection");
    assert!(open_second < PLACES, "{open_second}: the real agent keeps its place");
    let lines = find_logs(&node, &["agent connections:"]).len();
    assert!((1..=6).contains(&lines), "{lines} log lines about the shedding");
    assert!(!find_logs(&node, &["closed to make room"]).is_empty(), "the shedding was never said");
}
