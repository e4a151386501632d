//! A worker whose event loop hangs is ended by its own watchdog (`node.stall_timeout`, 15 s by
//! default), so that its supervisor (here, the test) starts it again; meanwhile its agents, whose
//! connections the hung process held open, are active on the other worker.

use crate::common;
use crate::drain::{enroll, wait_active, Proxy, Sim};

use common::process::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_worker_whose_event_loop_hangs_is_ended_and_its_agents_go_on_elsewhere() {
    let _ = wazuh_cluster_actors::budget::set_open_files(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, port, master_sets, master) = started_master(dir.path());
    let api = api_port(&master_sets);
    let w1_sets = local(dir.path(), "w1", &key, port);
    let w2_sets = local(dir.path(), "w2", &key, port);
    let cue = dir.path().join("stall-now");
    let mut hung = Command::new(BIN);
    hung.env(wazuh_cluster_actors::testing::STALL_VAR, &cue);
    let mut w1 = Node::spawn("worker-1", run_command(hung, "worker-1.toml", &w1_sets));
    let w2 = Node::start("worker-2.toml", &w2_sets);
    wait_listed(api, &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);
    let keys = dir.path().join("agents.keys");
    enroll(&setting(&w1_sets, "enrollment.bind"), 200, "sim", &keys);
    let agents_of = |sets: &[String]| -> SocketAddr { setting(sets, "agents.bind").parse().expect("agents.bind") };
    let proxy = Proxy::start(vec![agents_of(&w1_sets)]);
    let sim = Sim::start(
        &keys,
        &["--agents", "200", "--connect", &proxy.addr.to_string(), "--max-retries", "5", "--retry-interval", "2"],
    );
    wait_active(api, "worker-1", false, 200, Duration::from_secs(60));
    proxy.set_backends(vec![agents_of(&w1_sets), agents_of(&w2_sets)]);

    // The hang: worker 1's event loop blocks; its sockets stay open.
    std::fs::write(&cue, b"now").expect("cue");
    let hung_at = Instant::now();
    let status = w1.wait_exit(Duration::from_secs(60)).expect("the watchdog ends the hung worker");
    let ended = hung_at.elapsed();
    assert!(!status.success(), "a hung worker ends with a failure, for its supervisor to restart it");
    let said = w1.lines().into_iter().find(|l| l.contains("made no progress")).unwrap_or_default();
    assert!(said.contains("ERROR"), "one ERROR line says why:\n{}", w1.log());
    wait_active(api, "worker-1", true, 200, Duration::from_secs(60));
    let moved = hung_at.elapsed();
    eprintln!(
        "a hung worker: ended by its watchdog {} ms after its event loop blocked (node.stall_timeout 15 s); its 200 agents active on worker 2 {} ms after the hang",
        ended.as_millis(),
        moved.as_millis()
    );
    // Its supervisor starts it again, and it serves.
    std::fs::remove_file(&cue).expect("no more cue");
    let w1 = Node::start("worker-1.toml", &w1_sets);
    wait_listed(api, &["master-1", "worker-1", "worker-2"], &[&master, &w1, &w2]);
    sim.stop();
    drop((w1, w2, master));
}
