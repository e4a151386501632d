//! Cost of the cluster channel against the raw AEAD of the same crates.
//!
//! `cargo bench -p wazuh-cluster-protocol --bench channel`
//!
//! - `seal_open/<suite>/channel`: one 64 KiB frame sealed by a `Sealer` (header, counter nonce,
//!   header as associated data) and opened by an `Opener` (length check, split, open in place).
//! - `seal_open/<suite>/raw_aead`: `encrypt_in_place_detached` + `decrypt_in_place_detached` of the
//!   same 64 KiB buffer with the same crate, nothing else.
//! - `message/*`: MessagePack encode and decode of a worker keep-alive (with its four job reports).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wazuh_cluster_protocol::handshake::{Hello, Initiator, InitiatorOutcome, Responder};
use wazuh_cluster_protocol::message::{
    self, Envelope, JobReport, JobState, KeepAlive, RequestId, Role, WorkerToMaster,
};
use wazuh_cluster_protocol::transport::{RawAead, TAG_LEN};
use wazuh_cluster_protocol::version::{VersionRange, CURRENT};
use wazuh_cluster_protocol::{CipherSuite, Psk};

const FRAME: usize = 64 * 1024;

fn channels(
    suite: CipherSuite,
) -> (wazuh_cluster_protocol::handshake::Channel, wazuh_cluster_protocol::handshake::Channel) {
    let psk = Psk::from_bytes([7; 32]);
    let hello = |name: &str, role| Hello {
        node_name: name.into(),
        role,
        cluster_name: "bench".into(),
        versions: VersionRange::ours(),
        software: "bench".into(),
        public_key: None,
        join_token: None,
    };
    let (init, m1) = Initiator::start(&psk, suite, &hello("w", Role::Worker), 1 << 20).expect("start");
    let (resp, _) = Responder::read_hello(&psk, suite, 1 << 20, &m1).expect("hello");
    let (m2, pending) = resp.accept(&hello("m", Role::Master), CURRENT).expect("accept");
    let InitiatorOutcome::Accepted { channel, confirmation, .. } = init.finish(&m2, |_| Vec::new()).expect("finish")
    else {
        panic!("refused")
    };
    let (other, _) = pending.confirm(&confirmation).expect("confirm");
    (channel, other)
}

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal_open");
    group.throughput(Throughput::Bytes(FRAME as u64));
    for suite in CipherSuite::ALL {
        let (mut tx, mut rx) = channels(suite);
        let plain = vec![0x5au8; FRAME];
        let mut wire = BytesMut::with_capacity(FRAME + 64);
        group.bench_function(BenchmarkId::new(suite.name(), "channel"), |b| {
            b.iter(|| {
                tx.sealer.seal(&mut wire, black_box(&plain)).expect("seal");
                let opened = rx.opener.open_from(&mut wire).expect("open").expect("whole frame");
                black_box(opened.len());
                // Hand the allocation back so each iteration reuses one buffer, as a socket loop does.
                drop(opened);
                wire.clear();
                wire.reserve(FRAME + 64);
            })
        });
        let raw = RawAead::new(suite, &[3; 32]);
        let mut buf = vec![0x5au8; FRAME];
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new(suite.name(), "raw_aead"), |b| {
            b.iter(|| {
                let tag: [u8; TAG_LEN] = raw.seal(n, black_box(&mut buf));
                assert!(raw.open(n, &mut buf, &tag));
                n += 1;
            })
        });
    }
    group.finish();
}

/// A worker's keep-alive carries the state of its four job actors.
fn typical_jobs() -> Vec<JobReport> {
    ["KeepAlive", "AgentInfo", "AgentGroupsSend", "Integrity"]
        .iter()
        .map(|name| JobReport {
            name: (*name).into(),
            state: JobState::Running,
            runs: 1_234,
            failures: 1,
            restarts: 1,
            last_run_ms: Some(1_764_166_000_000),
            last_duration_ms: Some(3),
            last_error: Some("request timed out after 10s".into()),
            ..JobReport::default()
        })
        .collect()
}

fn messages(c: &mut Criterion) {
    let env = Envelope::request(
        RequestId { origin: Role::Worker, seq: 123_456 },
        WorkerToMaster::KeepAlive(KeepAlive { sent_at_ms: 1_764_166_000_000, jobs: typical_jobs() }),
    );
    let mut out = BytesMut::with_capacity(256);
    c.bench_function("message/encode_keepalive", |b| {
        b.iter(|| {
            out.clear();
            message::encode(black_box(&env), &mut out).expect("encode");
        })
    });
    let bytes = message::to_bytes(&env).expect("encode");
    c.bench_function("message/decode_keepalive", |b| {
        b.iter(|| message::decode::<WorkerToMaster>(black_box(&bytes)).expect("decode"))
    });
}

criterion_group!(benches, seal_open, messages);
criterion_main!(benches);
