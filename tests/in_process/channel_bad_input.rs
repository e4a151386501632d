//! Socket-level bad input against a real master listening on loopback: every case closes the
//! connection with a clear log line naming the peer, nothing panics, and the master keeps serving.

use crate::common;

use bytes::BytesMut;
use common::*;
use serde::Serialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wazuh_cluster_actors::link::{self, Link, LinkError};
use wazuh_cluster_actors::master::ListWorkers;
use wazuh_cluster_protocol::handshake::{HandshakeError, Reject};
use wazuh_cluster_protocol::message::{self, KeepAlive};
use wazuh_cluster_protocol::{CipherSuite, Envelope, Refusal, RequestId, Role, WorkerToMaster};

const WAIT: Duration = Duration::from_secs(5);

/// Reads until the peer closes (EOF or reset); panics if it stays open.
async fn expect_closed(stream: &mut (impl AsyncReadExt + Unpin)) {
    let mut buf = [0u8; 1024];
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the master kept the connection open");
}

/// A master named `name`, and proof that it still admits a good worker afterwards.
async fn master(name: &str) -> (actix::Addr<wazuh_cluster_actors::master::MasterListener>, std::net::SocketAddr) {
    start_master(settings(name, Role::Master, 1)).await
}

async fn still_serves(
    master: &actix::Addr<wazuh_cluster_actors::master::MasterListener>,
    addr: std::net::SocketAddr,
    worker: &str,
) {
    let link =
        link::dial(&addr.to_string(), &settings(worker, Role::Worker, 1)).await.expect("good worker must still get in");
    assert_eq!(link.peer.role, Role::Master);
    drop(link);
    assert!(master.connected());
}

fn keepalive(seq: u64) -> Vec<u8> {
    let env = Envelope::request(
        RequestId { origin: Role::Worker, seq },
        WorkerToMaster::KeepAlive(KeepAlive { sent_at_ms: seq, jobs: vec![] }),
    );
    message::to_bytes(&env).expect("encode").to_vec()
}

fn seal(link: &mut Link, plaintext: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    link.channel.sealer.seal(&mut out, plaintext).expect("seal");
    out
}

/// An authenticated worker connection for the post-handshake cases. Frame 0 of each direction is
/// the handshake's key confirmation, so the first transport frame is frame 1.
async fn authenticated(addr: std::net::SocketAddr, worker: &str) -> Link {
    link::dial(&addr.to_string(), &settings(worker, Role::Worker, 1)).await.expect("handshake")
}

#[actix_rt::test]
async fn garbage_before_the_handshake_is_refused() {
    let (m, addr) = master("m-garbage").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap().to_string();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    expect_closed(&mut s).await;
    wait_for_log("m-garbage", &["handshake with", &local, "exceeds the limit of 4096 bytes"], WAIT).await;

    // Right length, wrong magic: not a cluster peer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap().to_string();
    s.write_all(&[0, 0, 0, 8, b'X', b'Y', b'Z', 1, 2, 3, 4, 5]).await.unwrap();
    expect_closed(&mut s).await;
    wait_for_log("m-garbage", &[&local, "not a wazuh-multi-node cluster peer"], WAIT).await;
    still_serves(&m, addr, "w-after-garbage").await;
}

#[actix_rt::test]
async fn length_header_above_the_cap_is_refused() {
    let (m, addr) = master("m-cap").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap().to_string();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    expect_closed(&mut s).await;
    wait_for_log("m-cap", &[&local, "frame of 4294967295 bytes exceeds the limit"], WAIT).await;
    still_serves(&m, addr, "w-after-cap").await;
}

#[actix_rt::test]
async fn truncated_handshake_frame_is_reported() {
    let (_m, addr) = master("m-trunc-hs").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap().to_string();
    s.write_all(&[0, 0, 0, 100, b'W', b'M', b'N', 1]).await.unwrap();
    s.shutdown().await.unwrap();
    expect_closed(&mut s).await;
    wait_for_log("m-trunc-hs", &[&local, "stream ended inside a frame (8 of 104 bytes received)"], WAIT).await;
}

#[actix_rt::test]
async fn stalled_handshake_is_dropped_after_the_deadline() {
    let mut cfg = settings("m-stall", Role::Master, 1);
    cfg.handshake_timeout = Duration::from_millis(300);
    let (m, addr) = start_master(cfg).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap().to_string();
    // Send a header promising a body, then nothing.
    s.write_all(&[0, 0, 0, 50]).await.unwrap();
    expect_closed(&mut s).await;
    wait_for_log("m-stall", &[&local, "handshake not finished within 300ms"], WAIT).await;
    still_serves(&m, addr, "w-after-stall").await;
}

#[actix_rt::test]
async fn wrong_cluster_key_fails_on_both_sides_with_clear_errors() {
    let (m, addr) = master("m-key").await;
    let err = link::dial(&addr.to_string(), &settings("w-wrong-key", Role::Worker, 2)).await.err().expect("must fail");
    assert!(matches!(err, LinkError::Handshake(HandshakeError::Rejected(Reject::AuthenticationFailed))), "{err}");
    assert!(err.is_config_problem());
    assert_eq!(err.to_string(), "the peer refused the handshake: it does not accept our cluster key");
    let line = wait_for_log(
        "m-key",
        &["handshake with 127.0.0.1:", "authentication failed: the peer does not hold this cluster's key"],
        WAIT,
    )
    .await;
    assert!(line.starts_with("WARN"), "{line}");
    still_serves(&m, addr, "w-after-key").await;
}

#[actix_rt::test]
async fn worker_link_logs_that_it_was_refused_and_keeps_retrying() {
    use actix::Actor;
    let (_m, addr) = master("m-key2").await;
    let link = wazuh_cluster_actors::worker::WorkerLink::new(
        std::sync::Arc::new(settings("w-key2", Role::Worker, 9)),
        addr.to_string(),
        worker_services(),
    )
    .start();
    wait_for_log("w-key2", &["master", "refused this worker", "does not accept our cluster key"], WAIT).await;
    wait_for_log("w-key2", &["redialling master"], WAIT).await;
    assert!(link.connected(), "a refused worker must not crash");
}

#[actix_rt::test]
async fn cipher_mismatch_is_named() {
    let (_m, addr) = master("m-suite").await;
    let mut w = settings("w-suite", Role::Worker, 1);
    w.suite = CipherSuite::Aes256Gcm;
    let err = link::dial(&addr.to_string(), &w).await.err().expect("must fail");
    assert!(matches!(err, LinkError::Handshake(HandshakeError::Rejected(Reject::UnsupportedSuite))), "{err}");
    wait_for_log(
        "m-suite",
        &["cipher mismatch: the peer uses aes-256-gcm, this node is configured for chacha20-poly1305"],
        WAIT,
    )
    .await;
}

#[actix_rt::test]
async fn refusals_are_sent_to_the_worker_and_logged_on_the_master() {
    let (_m, addr) = master("m-refuse").await;
    let mut w = settings("w-refuse", Role::Worker, 1);
    w.cluster_name = "other-cluster".into();
    match link::dial(&addr.to_string(), &w).await {
        Err(LinkError::Refused { peer, refusal: Refusal::WrongCluster { expected, got } }) => {
            assert_eq!((peer.as_str(), expected.as_str(), got.as_str()), ("m-refuse", "test", "other-cluster"));
        }
        other => panic!("expected a wrong-cluster refusal, got {:?}", other.err()),
    }
    wait_for_log(
        "m-refuse",
        &["refused worker w-refuse from 127.0.0.1:", "wrong cluster name \"other-cluster\""],
        WAIT,
    )
    .await;
    // A worker may not take the master's own name.
    let err = link::dial(&addr.to_string(), &settings("m-refuse", Role::Worker, 1)).await.err().expect("must fail");
    assert!(matches!(err, LinkError::Refused { refusal: Refusal::DuplicateName { .. }, .. }), "{err}");
}

#[actix_rt::test]
async fn garbage_after_the_handshake_closes_the_connection() {
    let (m, addr) = master("m-garbage2").await;
    let mut l = authenticated(addr, "w-garbage2").await;
    wait_for_log("m-garbage2", &["handshake complete with worker w-garbage2"], WAIT).await;
    l.write.write_all(&[0, 0, 0, 40]).await.unwrap();
    l.write.write_all(&[0x42; 40]).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log("m-garbage2", &["closing connection with worker w-garbage2", "frame 1 failed authentication"], WAIT)
        .await;
    still_serves(&m, addr, "w-after-garbage2").await;
}

#[actix_rt::test]
async fn replayed_frame_closes_the_connection() {
    let (_m, addr) = master("m-replay").await;
    let mut l = authenticated(addr, "w-replay").await;
    let frame = seal(&mut l, &keepalive(1));
    l.write.write_all(&frame).await.unwrap();
    l.write.write_all(&frame).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log("m-replay", &["closing connection with worker w-replay", "frame 2 failed authentication"], WAIT).await;
}

#[actix_rt::test]
async fn reordered_frames_close_the_connection() {
    let (_m, addr) = master("m-reorder").await;
    let mut l = authenticated(addr, "w-reorder").await;
    let first = seal(&mut l, &keepalive(1));
    let second = seal(&mut l, &keepalive(2));
    l.write.write_all(&second).await.unwrap();
    l.write.write_all(&first).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log("m-reorder", &["closing connection with worker w-reorder", "frame 1 failed authentication"], WAIT)
        .await;
}

#[actix_rt::test]
async fn one_flipped_bit_closes_the_connection() {
    let (_m, addr) = master("m-bitflip").await;
    let mut l = authenticated(addr, "w-bitflip").await;
    let mut frame = seal(&mut l, &keepalive(1));
    let mid = frame.len() / 2;
    frame[mid] ^= 0x10;
    l.write.write_all(&frame).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log("m-bitflip", &["closing connection with worker w-bitflip", "failed authentication"], WAIT).await;
}

#[actix_rt::test]
async fn oversized_and_truncated_frames_after_the_handshake() {
    let (_m, addr) = master("m-big").await;
    let mut l = authenticated(addr, "w-big").await;
    l.write.write_all(&(2u32 << 20).to_be_bytes()).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log(
        "m-big",
        &["closing connection with worker w-big", "frame of 2097152 bytes exceeds the limit of 1048576 bytes"],
        WAIT,
    )
    .await;

    let mut l = authenticated(addr, "w-cut").await;
    let frame = seal(&mut l, &keepalive(1));
    l.write.write_all(&frame[..frame.len() - 5]).await.unwrap();
    l.write.shutdown().await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log("m-big", &["closing connection with worker w-cut", "stream ended inside a frame"], WAIT).await;
}

#[actix_rt::test]
async fn unknown_message_type_closes_the_connection() {
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Evil {
        RunAsRoot { command: String },
    }
    let (_m, addr) = master("m-unknown").await;
    let mut l = authenticated(addr, "w-unknown").await;
    let plain = message::to_bytes(&Envelope::notify(Evil::RunAsRoot { command: "id".into() })).unwrap();
    let frame = seal(&mut l, &plain);
    l.write.write_all(&frame).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log(
        "m-unknown",
        &["closing connection with worker w-unknown", "unknown message type", "run_as_root"],
        WAIT,
    )
    .await;
}

#[actix_rt::test]
async fn messagepack_of_the_wrong_shape_closes_the_connection() {
    let (_m, addr) = master("m-shape").await;
    let mut l = authenticated(addr, "w-shape").await;
    let frame = seal(&mut l, &rmp_serde::to_vec(&(1, "two", [3.0])).unwrap());
    l.write.write_all(&frame).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log("m-shape", &["closing connection with worker w-shape", "malformed message"], WAIT).await;

    // A master-originated request id coming from a worker is a protocol violation too.
    let mut l = authenticated(addr, "w-shape2").await;
    let env = Envelope::request(
        RequestId { origin: Role::Master, seq: 1 },
        WorkerToMaster::KeepAlive(KeepAlive { sent_at_ms: 0, jobs: vec![] }),
    );
    let frame = seal(&mut l, &message::to_bytes(&env).unwrap());
    l.write.write_all(&frame).await.unwrap();
    expect_closed(&mut l.read).await;
    wait_for_log("m-shape", &["closing connection with worker w-shape2", "does not belong to this direction"], WAIT)
        .await;
}

#[actix_rt::test]
async fn silent_worker_is_dropped_after_three_keepalive_intervals() {
    let (_m, addr) = master("m-silent").await;
    let mut l = authenticated(addr, "w-silent").await;
    expect_closed(&mut l.read).await;
    wait_for_log("m-silent", &["closing connection with worker w-silent", "no traffic for"], WAIT).await;
}

#[actix_rt::test]
async fn live_worker_keeps_alive_and_is_listed() {
    use actix::Actor;
    let (m, addr) = master("m-live").await;
    let worker = wazuh_cluster_actors::worker::WorkerLink::new(
        std::sync::Arc::new(settings("w-live", Role::Worker, 1)),
        addr.to_string(),
        worker_services(),
    )
    .start();
    // Six keep-alive rounds is twice the silence limit: the connection must survive it.
    let keepalive_runs = |jobs: &[wazuh_cluster_protocol::message::JobReport]| {
        jobs.iter().find(|j| j.name == "KeepAlive").map(|j| j.runs).unwrap_or(0)
    };
    wait_until("the worker has six keep-alives acknowledged", WAIT, || {
        let worker = worker.clone();
        async move {
            matches!(worker.send(wazuh_cluster_actors::worker::GetLink).await,
                Ok(Some(info)) if keepalive_runs(&info.jobs) >= 6)
        }
    })
    .await;
    let listed = m.send(ListWorkers).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].peer.node_name, "w-live");
    assert!(keepalive_runs(&listed[0].jobs) >= 5, "the master answered the keep-alives");
    assert!(listed[0].last_keepalive_ms.is_some());
    wait_for_log("w-live", &["handshake complete with master m-live"], WAIT).await;
    assert!(find_logs("m-live", &["closing connection"]).is_empty());
}

#[actix_rt::test]
async fn a_second_live_connection_with_the_same_name_is_refused() {
    let (_m, addr) = master("m-dup").await;
    let first = settings("w-dup", Role::Worker, 1);
    let _first = link::dial(&addr.to_string(), &first).await.expect("handshake");
    wait_for_log("m-dup", &["handshake complete with worker w-dup"], WAIT).await;
    // Same name, same identity (a copy of its key): a live duplicate is refused.
    let err = link::dial(&addr.to_string(), &first).await.err().expect("duplicate");
    assert!(matches!(err, LinkError::Refused { refusal: Refusal::DuplicateName { .. }, .. }), "{err}");
}
