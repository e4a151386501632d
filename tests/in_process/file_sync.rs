//! File synchronization between a master and its workers, in one process with real files: trees
//! written, edited and deleted on the master appear on every worker; changes made on a worker are put
//! back; a hostile worker cannot read outside the master's roots; a master whose root is missing
//! does not make workers delete their copies.

use crate::common;

use common::cluster::TestCluster;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::time::{Duration, Instant};
use wazuh_cluster_actors::link;
use wazuh_cluster_actors::manifest::scan;
use wazuh_cluster_protocol::message::{FetchFiles, FetchItem, SyncManifest};
use wazuh_cluster_protocol::sync::FileMeta;
use wazuh_cluster_protocol::{
    Envelope, MasterToWorker, MessageDecoder, MessageEncoder, RequestId, Role, WorkerToMaster,
};

const WAIT: Duration = Duration::from_secs(20);

fn node_dir(cluster: &TestCluster, name: &str) -> std::path::PathBuf {
    cluster.dir.path().join(name)
}

fn digest(dir: &Path) -> (String, usize) {
    let (m, _) = scan(dir, None);
    (m.digest(), m.files.len())
}

/// Waits until every worker's sync roots equal the master's; returns how long it took.
async fn until_synced(cluster: &TestCluster, workers: usize) -> Duration {
    let start = Instant::now();
    let master = node_dir(cluster, &cluster.master_name());
    let synced = || async {
        let want = digest(&master);
        (0..workers).all(|i| digest(&node_dir(cluster, &cluster.worker_name(i))) == want)
    };
    wait_until("every worker's files are the master's", WAIT, synced).await;
    start.elapsed()
}

/// A CDB list of about `size` bytes.
fn big_list(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 64);
    let mut i = 0u64;
    while out.len() < size {
        out.extend_from_slice(format!("10.{}.{}.{}:blocked\n", i >> 16 & 255, i >> 8 & 255, i & 255).as_bytes());
        i += 1;
    }
    out
}

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, content).expect("write");
}

#[actix_rt::test]
async fn files_written_edited_and_deleted_on_the_master_reach_every_worker() {
    let cluster = TestCluster::start("sync", 2).await;
    let master = node_dir(&cluster, &cluster.master_name());
    for i in 0..300 {
        let content = format!("<group name=\"g{i}\">{}</group>\n", "x".repeat(i * 7));
        write(&master, &format!("etc/rules/set{}/rule_{i}.xml", i % 10), content.as_bytes());
    }
    let big_list = big_list(3 << 20);
    write(&master, "etc/lists/big-list", &big_list);
    write(&master, "etc/shared/default/agent.conf", b"<agent_config/>\n");
    let took = until_synced(&cluster, 2).await;
    eprintln!("302 files (a 3 MiB list + 300 small) on both workers in {} ms", took.as_millis());
    let w1 = node_dir(&cluster, &cluster.worker_name(0));
    assert_eq!(std::fs::read(w1.join("etc/lists/big-list")).expect("big"), big_list);

    // One edit reaches both.
    write(&master, "etc/rules/set3/rule_3.xml", b"<group name=\"edited\"/>\n");
    let took = until_synced(&cluster, 2).await;
    eprintln!("one edited file on both workers in {} ms", took.as_millis());
    assert_eq!(std::fs::read(w1.join("etc/rules/set3/rule_3.xml")).expect("edited"), b"<group name=\"edited\"/>\n");

    // A deleted file (and its emptied directory) disappears.
    std::fs::remove_file(master.join("etc/shared/default/agent.conf")).expect("rm");
    until_synced(&cluster, 2).await;
    assert!(!w1.join("etc/shared/default/agent.conf").exists());
    assert!(w1.join("etc/shared").exists(), "the root itself stays");

    // The master is the source of truth: additions and edits on a worker are put back.
    write(&w1, "etc/rules/rogue.xml", b"<rogue/>");
    write(&w1, "etc/rules/set1/rule_1.xml", b"tampered");
    until_synced(&cluster, 2).await;
    assert!(!w1.join("etc/rules/rogue.xml").exists());
    // Files outside the roots are not the cluster's business.
    write(&w1, "etc/ossec.conf", b"local");
    until_synced(&cluster, 2).await;
    assert_eq!(std::fs::read(w1.join("etc/ossec.conf")).expect("local file"), b"local");
    wait_for_log(&cluster.worker_name(0), &["file sync with master", "extra"], WAIT).await;
}

#[actix_rt::test]
async fn a_master_whose_root_is_missing_does_not_make_workers_delete_their_copies() {
    let cluster = TestCluster::start("noroot", 1).await;
    let master = node_dir(&cluster, &cluster.master_name());
    write(&master, "etc/decoders/local_decoder.xml", b"<decoder/>");
    write(&master, "etc/rules/r.xml", b"<rule/>");
    until_synced(&cluster, 1).await;
    let w = node_dir(&cluster, &cluster.worker_name(0));
    std::fs::remove_dir_all(master.join("etc/decoders")).expect("rm root");
    std::fs::write(master.join("etc/rules/r2.xml"), b"<rule/>").expect("write");
    // The next sync brings r2.xml but keeps the decoders the master no longer has a root for.
    wait_until("r2.xml reached the worker", WAIT, || async { w.join("etc/rules/r2.xml").exists() }).await;
    assert!(w.join("etc/decoders/local_decoder.xml").exists(), "a missing root on the master deletes nothing");
}

#[actix_rt::test]
async fn a_hostile_worker_cannot_read_outside_the_masters_roots() {
    let cluster = TestCluster::start("hostile", 0).await;
    let master = node_dir(&cluster, &cluster.master_name());
    write(&master, "etc/rules/ok.xml", b"<ok/>");
    std::fs::write(master.join("etc/client.keys.bak"), b"secret").expect("secret");
    let NodeHandle::Master { cluster_addr, .. } = &cluster.master().handle else { panic!("master") };
    let s = cluster.hand_worker("evil-worker");
    let l = link::dial(&cluster_addr.to_string(), &s).await.expect("dial");
    let source = std::io::Cursor::new(l.read_buf).chain(l.read);
    let mut reader =
        tokio_util::codec::FramedRead::new(source, MessageDecoder::<MasterToWorker>::new(l.channel.opener));
    let mut writer =
        tokio_util::codec::FramedWrite::new(l.write, MessageEncoder::<WorkerToMaster>::new(l.channel.sealer));
    // Wait until the master has scanned (it answers Unavailable before).
    let ask = |seq, paths: &[&str]| {
        Envelope::request(
            RequestId { origin: Role::Worker, seq },
            WorkerToMaster::FetchFiles(FetchFiles {
                items: paths.iter().map(|p| FetchItem { path: p.to_string(), offset: 0 }).collect(),
                max_bytes: 1 << 20,
            }),
        )
    };
    let hostile = [
        "../../../etc/passwd",
        "/etc/passwd",
        "etc/rules/../../../etc/shadow",
        "etc/client.keys.bak",
        "etc/rules/ok.xml\0x",
        "var/db/registry.db",
    ];
    let mut seq = 1;
    let batch = loop {
        let mut paths = hostile.to_vec();
        paths.push("etc/rules/ok.xml");
        writer.send(ask(seq, &paths)).await.expect("send");
        seq += 1;
        let answer = loop {
            match reader.next().await.expect("answer").expect("decode") {
                Envelope { body: MasterToWorker::FileBatch(b), .. } => break Some(b),
                Envelope { body: MasterToWorker::Error(_), .. } => break None,
                _ => continue,
            }
        };
        // Until the master's manifest holds ok.xml (a scan or the file watcher has seen it).
        // (Until then, ok.xml is answered as superseded: not in the manifest yet.)
        if let Some(b) = answer.filter(|b| !b.parts.is_empty() || b.refused.len() < hostile.len()) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(batch.parts.len(), 1, "only the manifest's own file is served: {batch:?}");
    assert_eq!(batch.parts[0].path, "etc/rules/ok.xml");
    assert_eq!(batch.refused.len(), hostile.len());
    assert!(batch.superseded.is_empty(), "a hostile path is refused, never 'superseded': {:?}", batch.superseded);
    // A hostile manifest cannot make the master plan anything outside the roots either.
    let manifest = SyncManifest {
        files: vec![
            FileMeta { path: "../outside".into(), size: 1, md5: "x".into() },
            FileMeta { path: "etc/rules/../../x".into(), size: 1, md5: "x".into() },
        ],
    };
    writer
        .send(Envelope::request(RequestId { origin: Role::Worker, seq }, WorkerToMaster::SyncManifest(manifest)))
        .await
        .expect("send");
    let plan = loop {
        if let Envelope { body: MasterToWorker::SyncPlan(p), .. } =
            reader.next().await.expect("answer").expect("decode")
        {
            break p;
        }
    };
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
    // Only the master's own files (its rule file and the default group's agent.conf) are planned.
    assert!(plan.fetch.iter().all(|m| !m.path.contains("..") && m.path.starts_with("etc/")), "{:?}", plan.fetch);
    assert!(plan.fetch.iter().any(|m| m.path.starts_with("etc/rules/")), "{:?}", plan.fetch);
}

use tokio::io::AsyncReadExt;
use wazuh_multi_node::node::NodeHandle;
