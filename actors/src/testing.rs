//! Test hooks of the whole node, compiled only with the `testing` feature (the test suite's
//! builds). Without it every function here does nothing.

use crate::agents::hub::AgentHub;
use crate::master::MasterListener;
use crate::ruleset::RulesetReloader;
use crate::worker::WorkerLink;
use actix::Addr;

/// The node's long-lived actors, for [`panic_on_cue`].
pub struct Vitals {
    pub node: String,
    pub listener: Option<Addr<MasterListener>>,
    pub link: Option<Addr<WorkerLink>>,
    pub hub: Addr<AgentHub>,
    pub ruleset: Option<Addr<RulesetReloader>>,
}

/// The variable naming an actor to panic (`MasterListener`, `WorkerLink`, `AgentHub`,
/// `RulesetReloader` or `Connection`) once the node has run for `WAZUH_CLUSTER_TEST_PANIC_AFTER_MS`
/// (default 1,000): how the process tests see what a panic does to a whole process.
pub const PANIC_VAR: &str = "WAZUH_CLUSTER_TEST_PANIC";

/// With the `testing` feature, makes the actor [`PANIC_VAR`] names panic after the delay.
#[cfg(feature = "testing")]
pub fn panic_on_cue(vitals: Vitals) {
    use crate::supervise::testing::Panic;
    let Ok(target) = std::env::var(PANIC_VAR) else { return };
    let after = std::env::var("WAZUH_CLUSTER_TEST_PANIC_AFTER_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    log::warn!(node = vitals.node.as_str(); "test hook: {target} will panic in {after} ms");
    actix_rt::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(after)).await;
        let why = format!("test hook {PANIC_VAR}={target}");
        match target.as_str() {
            "MasterListener" => vitals.listener.iter().for_each(|a| a.do_send(Panic(why.clone()))),
            "WorkerLink" => vitals.link.iter().for_each(|a| a.do_send(Panic(why.clone()))),
            "Connection" => vitals.link.iter().for_each(|a| a.do_send(crate::worker::PanicConnection(why.clone()))),
            "AgentHub" => vitals.hub.do_send(Panic(why)),
            "RulesetReloader" => vitals.ruleset.iter().for_each(|a| a.do_send(Panic(why.clone()))),
            other => log::error!(node = vitals.node.as_str(); "test hook: no actor {other:?}"),
        }
    });
}

/// Without the `testing` feature: nothing.
#[cfg(not(feature = "testing"))]
pub fn panic_on_cue(_: Vitals) {}

/// The variable naming a file whose appearance makes the node's event loop stop making progress
/// (a blocking call on it): how the process tests see what the watchdog does with a node that hangs.
pub const STALL_VAR: &str = "WAZUH_CLUSTER_TEST_STALL_WHEN";

/// With the `testing` feature, blocks the event loop once the file [`STALL_VAR`] names exists.
#[cfg(feature = "testing")]
pub fn stall_on_cue(node: &str) {
    let Some(cue) = std::env::var_os(STALL_VAR).map(std::path::PathBuf::from) else { return };
    log::warn!(node = node; "test hook: the event loop will block once {} exists", cue.display());
    actix_rt::spawn(async move {
        while !cue.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Deliberately blocking the loop's thread: the hang the watchdog is for.
        std::thread::sleep(std::time::Duration::from_secs(3600));
    });
}

/// Without the `testing` feature: nothing.
#[cfg(not(feature = "testing"))]
pub fn stall_on_cue(_: &str) {}
