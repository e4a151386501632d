//! What file sync sends, keeps and refuses, with real nodes and real files: identical files (5,000
//! new groups' default agent.conf, 1,000 identical rule files) land in one round; a deleted group's
//! files go from every node and a re-created one starts from the default; the files each node owns
//! (compiled `.cdb` lists, daemon and temporary files) are never touched and never cause a reload,
//! even with an analysisd stand-in that rewrites `.cdb` files at each reload; malformed rule,
//! decoder and list files are refused with a 400 naming why and never reach a worker; a
//! client.keys truncated by hand is written whole again.

use crate::common;

use common::cluster::{TestCluster, API_TOKEN};
use common::wait_until;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

async fn call(
    addr: std::net::SocketAddr,
    method: &'static str,
    path: String,
    body: Option<String>,
) -> (u16, serde_json::Value) {
    let base = format!("http://{addr}");
    let (status, text) = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::request(&base, method, &path, Some(API_TOKEN), body.as_deref())
    })
    .await
    .expect("join")
    .expect("http");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn dir_of(cluster: &TestCluster, node: &str) -> PathBuf {
    cluster.dir.path().join(node)
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// A figure of one of `handle`'s own jobs (0 when absent).
async fn figure(handle: &wazuh_multi_node::node::NodeHandle, job: &str, name: &str) -> u64 {
    let health = handle.healthcheck().await;
    health[0]
        .actors
        .iter()
        .find(|a| a.name == job)
        .and_then(|a| a.figures.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
        .unwrap_or(0)
}

/// Waits until `done` holds, polling; fails after `limit` naming `what`.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_until(what, limit, || std::future::ready(done())).await;
    start.elapsed()
}

/// Creates `names` through `api`, `parallel` requests at a time.
async fn create_groups(api: std::net::SocketAddr, names: Vec<String>, parallel: usize) {
    let chunks: Vec<Vec<String>> = names.chunks(names.len().div_ceil(parallel)).map(|c| c.to_vec()).collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            actix_rt::task::spawn_blocking(move || {
                let base = format!("http://{api}");
                for name in chunk {
                    let body = serde_json::json!({ "group_id": name }).to_string();
                    let (status, text) =
                        wazuh_multi_node::client::request(&base, "POST", "/groups", Some(API_TOKEN), Some(&body))
                            .expect("http");
                    assert_eq!(status, 200, "{name}: {text}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
}

#[actix_rt::test]
async fn five_thousand_new_groups_reach_two_workers_in_a_burst_without_a_warning() {
    // Slower keep-alives than the test clusters' default, as in the test below.
    let cluster = TestCluster::start_with("burst", 2, &[("cluster.intervals.keepalive", "2s".into())]).await;
    let master_api = cluster.master().api_addr;
    let names: Vec<String> = (0..5000).map(|i| format!("burst-{i:05}")).collect();
    let t = Instant::now();
    create_groups(master_api, names.clone(), 8).await;
    let created = t.elapsed();
    let master = dir_of(&cluster, &cluster.master_name());
    let default_conf = std::fs::read(master.join("etc/shared/burst-00000/agent.conf")).expect("default agent.conf");
    let workers: Vec<PathBuf> = (0..2).map(|i| dir_of(&cluster, &cluster.worker_name(i))).collect();
    let all_there = |w: &Path| {
        names
            .iter()
            .all(|g| std::fs::read(w.join("etc/shared").join(g).join("agent.conf")).ok() == Some(default_conf.clone()))
    };
    let synced = until("5,000 agent.conf files on both workers", Duration::from_secs(180), || {
        workers.iter().all(|w| all_there(w))
    })
    .await;
    println!(
        "5,000 groups created through the master's API in {} ms; every agent.conf byte-identical on both workers {} ms after the last create ({} ms after the first)",
        created.as_millis(),
        synced.as_millis(),
        (created + synced).as_millis()
    );
    // A group written right after it is created: no round on either worker refused a file.
    for i in 0..20 {
        let g = format!("fresh-{i}");
        let (status, body) =
            call(master_api, "POST", "/groups".into(), Some(format!("{{\"group_id\":\"{g}\"}}"))).await;
        assert_eq!(status, 200, "{body}");
        let conf =
            format!("<agent_config><localfile><location>/var/log/{g}.log</location></localfile></agent_config>\n");
        let (status, body) = call(master_api, "PUT", format!("/groups/{g}/configuration"), Some(conf)).await;
        assert_eq!(status, 200, "{body}");
    }
    until("the fresh groups' configurations on both workers", WAIT, || {
        workers.iter().all(|w| {
            (0..20).all(|i| {
                std::fs::read_to_string(w.join(format!("etc/shared/fresh-{i}/agent.conf")))
                    .is_ok_and(|c| c.contains(&format!("fresh-{i}.log")))
            })
        })
    })
    .await;
    for i in 0..2 {
        let errors = figure(&cluster.worker(i).handle, "Integrity", "errors").await;
        let warned: Vec<String> = common::find_logs(&cluster.worker_name(i), &["file sync with"])
            .into_iter()
            .filter(|l| l.contains("WARN"))
            .collect();
        assert_eq!(errors, 0, "worker {i}'s sync rounds reported {errors} file errors: {warned:?}");
    }
}

#[actix_rt::test]
async fn a_thousand_identical_rule_files_land_on_every_worker_in_one_round() {
    // Keep-alives slower than the test clusters' default: a debug build on two busy cores may go
    // quiet for longer than 0.6 s during the round, and a reconnect would split it in two.
    let cluster = TestCluster::start_with("same", 2, &[("cluster.intervals.keepalive", "2s".into())]).await;
    let master = dir_of(&cluster, &cluster.master_name());
    // Both workers first hold what the master has now (the default group).
    for i in 0..2 {
        while figure(&cluster.worker(i).handle, "Integrity", "in_sync").await != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rule = b"<group name=\"same\">\n  <rule id=\"100500\" level=\"3\"><match>same</match></rule>\n</group>\n";
    // Made aside and moved into the master's root at once: one change, one announcement.
    let aside = master.join("aside/identical");
    for i in 0..1000 {
        write(&aside.join(format!("same_{i:04}.xml")), rule);
    }
    std::fs::create_dir_all(master.join("etc/rules")).expect("rules");
    let moved_at = wazuh_cluster_actors::clock::now_ms();
    std::fs::rename(&aside, master.join("etc/rules/identical")).expect("move in");
    let workers: Vec<PathBuf> = (0..2).map(|i| dir_of(&cluster, &cluster.worker_name(i))).collect();
    let took = until("1,000 identical rule files on both workers", WAIT, || {
        workers.iter().all(|w| (0..1000).all(|i| w.join(format!("etc/rules/identical/same_{i:04}.xml")).is_file()))
    })
    .await;
    println!("1,000 identical rule files on both workers {} ms after they appeared on the master", took.as_millis());
    for (i, w) in workers.iter().enumerate() {
        // The round that renamed them into place has ended (and been counted).
        let handle = &cluster.worker(i).handle;
        while figure(handle, "Integrity", "in_sync").await != 1
            || figure(handle, "Integrity", "last_sync_end_at_ms").await < moved_at
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 0..1000 {
            assert_eq!(std::fs::read(w.join(format!("etc/rules/identical/same_{n:04}.xml"))).expect("read"), rule);
        }
        // The round that brought them found all 1,000 missing and refused none.
        let rounds = common::find_logs(&cluster.worker_name(i), &["file sync with master"]);
        assert_eq!(
            figure(handle, "Integrity", "missing").await,
            1000,
            "worker {i} needed more than one round: {rounds:#?}"
        );
        assert_eq!(figure(handle, "Integrity", "errors").await, 0, "worker {i}");
    }
}

#[actix_rt::test]
async fn a_deleted_group_leaves_every_node_and_comes_back_with_the_default_files() {
    let cluster = TestCluster::start("tomb", 2).await;
    let master_api = cluster.master().api_addr;
    let nodes = [cluster.master_name(), cluster.worker_name(0), cluster.worker_name(1)];
    let secret = "<agent_config><!-- meant to be destroyed --></agent_config>\n";
    for (g, delete) in [("tmpc", "/groups/tmpc".to_string()), ("tmpd", "/groups?groups_list=tmpd".to_string())] {
        let (status, body) =
            call(master_api, "POST", "/groups".into(), Some(format!("{{\"group_id\":\"{g}\"}}"))).await;
        assert_eq!(status, 200, "{body}");
        let default_conf = std::fs::read(dir_of(&cluster, &nodes[0]).join(format!("etc/shared/{g}/agent.conf")))
            .expect("the default agent.conf");
        let (status, body) = call(master_api, "PUT", format!("/groups/{g}/configuration"), Some(secret.into())).await;
        assert_eq!(status, 200, "{body}");
        let conf_on = |n: &str| dir_of(&cluster, n).join(format!("etc/shared/{g}/agent.conf"));
        until("the configuration on every node", WAIT, || {
            nodes.iter().all(|n| std::fs::read_to_string(conf_on(n)).ok().as_deref() == Some(secret))
        })
        .await;
        let (status, body) = call(master_api, "DELETE", delete, None).await;
        assert_eq!(status, 200, "{body}");
        let took = until("the group's directory gone from every node", WAIT, || {
            nodes.iter().all(|n| !dir_of(&cluster, n).join(format!("etc/shared/{g}")).exists())
        })
        .await;
        println!("group {g} deleted: its directory gone from all 3 nodes in {} ms", took.as_millis());
        // Created again: the default files, on every node, and through every API.
        let (status, body) =
            call(master_api, "POST", "/groups".into(), Some(format!("{{\"group_id\":\"{g}\"}}"))).await;
        assert_eq!(status, 200, "{body}");
        until("the re-created group's default agent.conf on every node", WAIT, || {
            nodes.iter().all(|n| std::fs::read(conf_on(n)).ok().as_ref() == Some(&default_conf))
        })
        .await;
        for api in [master_api, cluster.worker(0).api_addr] {
            let (status, body) = call(api, "GET", format!("/groups/{g}/files/agent.conf?raw=true"), None).await;
            assert_eq!(status, 200);
            assert!(!body.to_string().contains("meant to be destroyed"), "{body}");
        }
    }
    // Names Wazuh refuses: hidden, dot-only, "all".
    for bad in [".hid", "..hidden", "all"] {
        let (status, body) =
            call(master_api, "POST", "/groups".into(), Some(format!("{{\"group_id\":\"{bad}\"}}"))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(!dir_of(&cluster, &nodes[0]).join("etc/shared").join(bad).exists());
    }
}

/// A stand-in for analysisd's control socket that, like analysisd, compiles every CDB list under
/// `lists` into a `.cdb` file beside it at each reload; counts the reloads.
async fn compiling_stand_in(socket: PathBuf, lists: PathBuf, reloads: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    common::control_stand_in(socket, move |_| {
        for entry in walkdir::WalkDir::new(&lists).into_iter().flatten() {
            let p = entry.path();
            if entry.file_type().is_file() && p.extension().is_none() {
                let compiled = std::fs::read(p).unwrap_or_default().iter().rev().copied().collect::<Vec<u8>>();
                let _ = std::fs::write(p.with_extension("cdb"), compiled);
            }
        }
        reloads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        br#"{"error":0,"message":"ok","data":[]}"#.to_vec()
    })
    .await
}

#[actix_rt::test]
async fn a_workers_own_files_stay_and_cause_no_reload_loop() {
    let cluster = TestCluster::start_with(
        "own",
        1,
        &[("analysis.control", "queue/sockets/analysis".into()), ("analysis.reload_debounce", "200ms".into())],
    )
    .await;
    let master = dir_of(&cluster, &cluster.master_name());
    let worker = dir_of(&cluster, &cluster.worker_name(0));
    let reloads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    actix_rt::spawn(compiling_stand_in(
        worker.join("queue/sockets/analysis"),
        worker.join("etc/lists"),
        reloads.clone(),
    ));
    let master_reloads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    actix_rt::spawn(compiling_stand_in(
        master.join("queue/sockets/analysis"),
        master.join("etc/lists"),
        master_reloads.clone(),
    ));
    // What each node's daemons write under the synced roots, on the worker (and a compiled list on
    // the master, which is never sent).
    let own: Vec<(&str, &[u8])> = vec![
        ("etc/lists/security-eventchannel.cdb", b"compiled by this worker"),
        ("etc/lists/amazon/aws-eventnames.cdb", b"compiled too"),
        ("etc/shared/ar.conf", b"restart-wazuh0 - restart-wazuh - 0\n"),
        ("etc/shared/default/merged.mg", b"#default\n"),
        ("etc/shared/default/agent.conf.swp", b"an editor's"),
        ("etc/rules/local_rules.xml~", b"a backup"),
        ("etc/decoders/.queue.lock", b""),
        ("etc/lists/list.tmp", b"half written"),
    ];
    for (rel, content) in &own {
        write(&worker.join(rel), content);
    }
    write(&master.join("etc/lists/security-eventchannel.cdb"), b"the master's own compiled list");
    // A synced list the master changes once: exactly one reload, which rewrites the .cdb files.
    write(&master.join("etc/lists/security-eventchannel"), b"4624:logon\n4625:failed\n");
    until("the worker's reload after the list arrived", WAIT, || {
        reloads.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let handle = &cluster.worker(0).handle;
    let (rounds_before, t) = (figure(handle, "Integrity", "rounds").await, Instant::now());
    // At least 60 s and 10 integrity rounds with nothing synced changing.
    loop {
        let rounds = figure(handle, "Integrity", "rounds").await - rounds_before;
        if rounds >= 10 && t.elapsed() >= Duration::from_secs(60) {
            println!("{rounds} integrity rounds in {} s after the reload", t.elapsed().as_secs());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(reloads.load(std::sync::atomic::Ordering::SeqCst), 1, "the worker's analysisd was asked again");
    assert_eq!(figure(handle, "RulesetReload", "requests").await, 1);
    for (rel, content) in &own[2..] {
        assert_eq!(std::fs::read(worker.join(rel)).expect(rel), *content, "{rel}");
    }
    // The .cdb files are the worker's own compilation, not the master's.
    let cdb = std::fs::read(worker.join("etc/lists/security-eventchannel.cdb")).expect("cdb");
    assert_eq!(cdb, b"\ndeliaf:5264\nnogol:4264".to_vec());
    assert_eq!(std::fs::read(worker.join("etc/lists/amazon/aws-eventnames.cdb")).expect("cdb"), b"compiled too");
    assert_eq!(figure(handle, "Integrity", "errors").await, 0);
}

#[actix_rt::test]
async fn malformed_ruleset_files_are_refused_and_never_reach_a_worker() {
    let cluster = TestCluster::start("bad", 1).await;
    let (master_api, worker_api) = (cluster.master().api_addr, cluster.worker(0).api_addr);
    let worker = dir_of(&cluster, &cluster.worker_name(0));
    let master = dir_of(&cluster, &cluster.master_name());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/rules/files/unterminated.xml",
            "<group name=\"x\">\n  <rule id=\"100001\" level=\"3\">\n".into(),
            "never closed",
        ),
        (
            "/decoders/files/xxe.xml",
            "<!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/shadow\">]>\n<decoder name=\"&x;\"/>\n".into(),
            "entity declarations",
        ),
        ("/rules/files/ten.xml", "a".repeat(10_000_000), "bytes, more than"),
        ("/rules/files/text.xml", "aaaa".into(), "text outside any element"),
        ("/lists/files/bad-list", "key:value\nnot a list line\n".into(), "line 2"),
        ("/lists/files/empty", String::new(), "empty"),
    ];
    for (path, content, why) in &cases {
        // Through either node's API: a 400 that says why.
        for api in [master_api, worker_api] {
            let (status, body) = call(api, "PUT", path.to_string(), Some(content.clone())).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body.to_string().contains(why), "{path}: {body}");
        }
    }
    // Broken files found on the master's disk are held back: logged, shown in health, not sent;
    // a worker's older good copy of one stays.
    let good = b"<group name=\"local\"><rule id=\"100010\" level=\"3\"><match>x</match></rule></group>\n";
    write(&master.join("etc/rules/local_rules.xml"), good);
    until("the good rule file on the worker", WAIT, || {
        std::fs::read(worker.join("etc/rules/local_rules.xml")).ok().as_deref() == Some(&good[..])
    })
    .await;
    write(&master.join("etc/rules/local_rules.xml"), b"<group name=\"local\"><rule id=\"100010\">\n");
    write(&master.join("etc/decoders/disk_xxe.xml"), cases[1].1.as_bytes());
    write(&master.join("etc/lists/disk-bad"), b"no colon on this line\n");
    write(&master.join("etc/rules/after.xml"), b"<group name=\"after\"/>\n");
    until("a good file written after the broken ones on the worker", WAIT, || {
        worker.join("etc/rules/after.xml").is_file()
    })
    .await;
    let held = loop {
        let health = cluster.master().handle.healthcheck().await;
        let job = health[0].actors.iter().find(|a| a.name == "LocalIntegrity").cloned().expect("LocalIntegrity");
        if job.figures.iter().any(|(n, v)| n == "held_back" && *v == 3) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(held.last_error.as_deref().is_some_and(|e| e.contains("kept out of file sync")), "{held:?}");
    // The worker stays in sync, keeps its good copy, and never saw the broken files.
    let handle = &cluster.worker(0).handle;
    let in_sync_rounds = figure(handle, "Integrity", "rounds").await;
    loop {
        if figure(handle, "Integrity", "rounds").await >= in_sync_rounds + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(figure(handle, "Integrity", "in_sync").await, 1, "the worker is in sync with what the master serves");
    assert_eq!(std::fs::read(worker.join("etc/rules/local_rules.xml")).expect("kept"), good);
    for (path, ..) in &cases {
        let rel = format!("etc{}", path.replace("/files", ""));
        assert!(!worker.join(&rel).exists() && !master.join(&rel).exists(), "{rel}");
    }
    assert!(!worker.join("etc/decoders/disk_xxe.xml").exists() && !worker.join("etc/lists/disk-bad").exists());
    // Fixed on disk: it travels again.
    write(&master.join("etc/rules/local_rules.xml"), b"<group name=\"local\"/>\n");
    until("the fixed file on the worker", WAIT, || {
        std::fs::read(worker.join("etc/rules/local_rules.xml")).ok().as_deref()
            == Some(&b"<group name=\"local\"/>\n"[..])
    })
    .await;
}

#[actix_rt::test]
async fn a_client_keys_truncated_by_hand_is_written_whole_again() {
    let cluster = TestCluster::start("keys", 1).await;
    let addr = cluster.master().enrollment_addr;
    for i in 0..20 {
        let reply = wazuh_cluster_tools::sim::enroll_one(
            wazuh_cluster_tools::sim::connector().expect("tls"),
            addr.to_string(),
            format!("OSSEC A:'keys-{i}'\n"),
        )
        .await
        .expect("enroll");
        assert!(reply.starts_with("OSSEC K:"), "{reply}");
    }
    let path = dir_of(&cluster, &cluster.master_name()).join("etc/client.keys");
    let whole = std::fs::read_to_string(&path).expect("client.keys");
    assert_eq!(whole.lines().count(), 20);
    // Truncated by hand, with nothing enrolled since: the master's periodic pass puts it right.
    std::fs::OpenOptions::new().write(true).truncate(true).open(&path).expect("truncate");
    until("client.keys written whole again", WAIT, || std::fs::read_to_string(&path).is_ok_and(|t| t == whole)).await;
    // Truncated again, then an enrollment: no hole of NUL bytes, every agent's line.
    std::fs::OpenOptions::new().write(true).truncate(true).open(&path).expect("truncate");
    let reply = wazuh_cluster_tools::sim::enroll_one(
        wazuh_cluster_tools::sim::connector().expect("tls"),
        addr.to_string(),
        "OSSEC A:'keys-after'\n".into(),
    )
    .await
    .expect("enroll");
    assert!(reply.starts_with("OSSEC K:"), "{reply}");
    until("every agent's line, no NUL byte", WAIT, || {
        std::fs::read_to_string(&path)
            .is_ok_and(|t| !t.contains('\0') && t.lines().count() == 21 && t.contains("keys-after"))
    })
    .await;
}
