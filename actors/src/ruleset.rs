//! Ruleset reloads: after the rules, decoders or CDB lists of a node changed (a worker's file sync
//! round that ended with its tree in sync with the master's; an operator's change on the master),
//! the node asks its wazuh-analysisd to hot-reload them, as Wazuh 4.13+'s cluster does.
//!
//! The request, read from Wazuh's sources (`framework/wazuh/core/analysisd.py`,
//! `wazuh_socket.py`; `src/analysisd` answers it): a Unix stream connection to analysisd's control
//! socket (`queue/sockets/analysis`), one message framed by a 4-byte little-endian length, the JSON
//! `{"version": 1, "origin": {"name": <node>, "module": "cluster"}, "command": "reload-ruleset"}`;
//! the answer is framed the same way, JSON with `error` (0: done) and `message`/`data`.
//!
//! Changes closer together than the debounce make one request. The outcome (reloaded, or failed
//! with analysisd's words) is the `RulesetReload` job's state in health and `/metrics`.

use crate::supervise::JobHealth;
use actix::prelude::*;
use log::{info, warn};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wazuh_cluster_protocol::message::{JobKind, JobState};

/// The directories whose files make analysisd's ruleset.
pub(crate) const RULESET_DIRS: [&str; 3] = ["etc/rules/", "etc/decoders/", "etc/lists/"];
/// A request and its answer must be done within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 1 << 20;

/// Whether a relative path (as file sync names them) is part of the ruleset.
pub fn in_ruleset(path: &str) -> bool {
    RULESET_DIRS.iter().any(|d| path.starts_with(d))
}

/// What one reload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Reloaded(String),
    Failed(String),
}

/// Sends one `reload-ruleset` request to the control socket at `path` and reads the answer.
pub(crate) async fn request_reload(path: &Path, node: &str) -> ReloadOutcome {
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(path, node)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => ReloadOutcome::Failed(format!("cannot ask analysisd at {}: {e}", path.display())),
        Err(_) => {
            ReloadOutcome::Failed(format!("analysisd at {} did not answer within {REQUEST_TIMEOUT:?}", path.display()))
        }
    }
}

async fn exchange(path: &Path, node: &str) -> std::io::Result<ReloadOutcome> {
    let request = serde_json::json!({
        "version": 1,
        "origin": { "name": node, "module": "cluster" },
        "command": "reload-ruleset",
    })
    .to_string();
    let mut s = tokio::net::UnixStream::connect(path).await?;
    let mut framed = (request.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(request.as_bytes());
    s.write_all(&framed).await?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_ANSWER {
        return Ok(ReloadOutcome::Failed(format!("analysisd's answer announces {len} bytes (more than {MAX_ANSWER})")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(outcome_of(&body))
}

/// Reads analysisd's answer.
pub(crate) fn outcome_of(body: &[u8]) -> ReloadOutcome {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ReloadOutcome::Failed(format!(
            "analysisd answered something that is not JSON: {}",
            wazuh_cluster_protocol::agent::enrollment::printable(&String::from_utf8_lossy(body))
        ));
    };
    let words = |v: &serde_json::Value| {
        let message = v.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_string();
        let data = match v.get("data") {
            Some(serde_json::Value::Null) | None => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let text = [message, data].into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join(": ");
        wazuh_cluster_protocol::agent::enrollment::printable(&text).into_owned()
    };
    match value.get("error").and_then(|e| e.as_i64()) {
        Some(0) => ReloadOutcome::Reloaded(words(&value)),
        Some(code) => ReloadOutcome::Failed(format!("analysisd refused (error {code}): {}", words(&value))),
        None => ReloadOutcome::Failed(format!("analysisd's answer has no error code: {}", words(&value))),
    }
}

/// Asks for ruleset reloads, debounced, and keeps the outcome in its job health.
pub struct RulesetReloader {
    node: String,
    control: PathBuf,
    debounce: Duration,
    health: JobHealth,
    /// A reload is due at the end of the current debounce.
    scheduled: Option<SpawnHandle>,
    /// A request is in flight; another change asks for one more after it.
    busy: bool,
    again: bool,
    requests: u64,
    reloaded: u64,
    failed: u64,
}

/// The ruleset changed on disk (the tree complete): a reload is due.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RulesetChanged;

/// Reloads now (no debounce) and answers with the outcome.
#[derive(Message)]
#[rtype(result = "ReloadOutcome")]
pub struct ReloadNow;

impl RulesetReloader {
    pub fn new(node: &str, control: PathBuf, debounce: Duration, health: JobHealth) -> Self {
        health.set_state(JobState::Running);
        Self {
            node: node.to_string(),
            control,
            debounce,
            health,
            scheduled: None,
            busy: false,
            again: false,
            requests: 0,
            reloaded: 0,
            failed: 0,
        }
    }

    /// The job health this reloader reports in (for a node's health views).
    pub fn job_health() -> JobHealth {
        JobHealth::new(
            "RulesetReload",
            JobKind::Pusher,
            crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        )
    }

    fn record(&mut self, outcome: &ReloadOutcome, took: Duration) {
        self.requests += 1;
        match outcome {
            ReloadOutcome::Reloaded(words) => {
                self.reloaded += 1;
                self.health.succeeded(Some(took));
                info!(node = self.node.as_str(); "analysisd reloaded its ruleset in {} ms{}", took.as_millis(), if words.is_empty() { String::new() } else { format!(": {words}") });
            }
            ReloadOutcome::Failed(why) => {
                self.failed += 1;
                self.health.failed_once(why, false);
                warn!(node = self.node.as_str(); "ruleset reload failed: {why}");
            }
        }
        self.health.set_figures(vec![
            ("requests".into(), self.requests),
            ("reloaded".into(), self.reloaded),
            ("failed".into(), self.failed),
        ]);
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        self.scheduled = None;
        if self.busy {
            self.again = true;
            return;
        }
        self.busy = true;
        let (path, node) = (self.control.clone(), self.node.clone());
        let started = std::time::Instant::now();
        ctx.spawn(async move { request_reload(&path, &node).await }.into_actor(self).map(move |outcome, act, ctx| {
            act.busy = false;
            act.record(&outcome, started.elapsed());
            if std::mem::take(&mut act.again) {
                act.schedule(ctx);
            }
        }));
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.scheduled.take() {
            ctx.cancel_future(h);
        }
        self.scheduled = Some(ctx.run_later(self.debounce, |act, ctx| act.fire(ctx)));
    }
}

impl Actor for RulesetReloader {
    type Context = Context<Self>;
}

impl RulesetReloader {
    /// Starts it under the job supervisor: a panic is caught, counted in its health and the
    /// reloader restarted in place (a reload that was due is asked for again).
    pub fn launch(self) -> Addr<Self> {
        crate::supervise::start(16, None, |_| self)
    }
}

impl actix::Supervised for RulesetReloader {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.health.restarted();
        self.health.set_state(JobState::Running);
        self.busy = false;
        self.scheduled = None;
        // Whatever was due (or in flight) when it stopped is asked for again.
        if std::mem::take(&mut self.again) {
            self.schedule(ctx);
        }
    }
}

impl crate::supervise::Guarded for RulesetReloader {
    fn health(&self) -> &JobHealth {
        &self.health
    }

    fn names(&self) -> (&str, &str) {
        (&self.node, "analysisd")
    }
}

#[cfg(feature = "testing")]
impl Handler<crate::supervise::testing::Panic> for RulesetReloader {
    type Result = ();

    fn handle(&mut self, msg: crate::supervise::testing::Panic, _: &mut Context<Self>) {
        panic!("{}", msg.0);
    }
}

impl Handler<RulesetChanged> for RulesetReloader {
    type Result = ();

    fn handle(&mut self, _: RulesetChanged, ctx: &mut Context<Self>) {
        self.schedule(ctx);
    }
}

impl Handler<ReloadNow> for RulesetReloader {
    type Result = ResponseActFuture<Self, ReloadOutcome>;

    fn handle(&mut self, _: ReloadNow, _: &mut Context<Self>) -> Self::Result {
        let (path, node) = (self.control.clone(), self.node.clone());
        let started = std::time::Instant::now();
        Box::pin(async move { request_reload(&path, &node).await }.into_actor(self).map(move |outcome, act, _| {
            act.record(&outcome, started.elapsed());
            outcome
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_analysisd_writes_them() {
        assert_eq!(outcome_of(br#"{"error":0,"message":"ok","data":[]}"#), ReloadOutcome::Reloaded("ok: []".into()));
        assert_eq!(outcome_of(br#"{"error":0}"#), ReloadOutcome::Reloaded(String::new()));
        match outcome_of(br#"{"error":2,"message":"Error loading rules: rule 100001 \u001b dup"}"#) {
            ReloadOutcome::Failed(why) => {
                assert!(why.contains("error 2") && why.contains("rule 100001"), "{why}");
                assert!(!why.chars().any(char::is_control), "{why:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(outcome_of(b"garbage"), ReloadOutcome::Failed(_)));
        assert!(in_ruleset("etc/rules/local_rules.xml") && in_ruleset("etc/lists/audit-keys"));
        assert!(!in_ruleset("etc/shared/default/agent.conf") && !in_ruleset("etc/rulesx"));
    }

    #[actix_rt::test]
    async fn a_request_is_framed_and_its_answer_read_and_an_absent_analysisd_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analysis");
        assert!(matches!(request_reload(&path, "n").await, ReloadOutcome::Failed(_)));
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            s.read_exact(&mut body).await.unwrap();
            let answer = br#"{"error":0,"message":"ok"}"#;
            s.write_all(&(answer.len() as u32).to_le_bytes()).await.unwrap();
            s.write_all(answer).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        });
        assert_eq!(request_reload(&path, "worker-1").await, ReloadOutcome::Reloaded("ok".into()));
        let request = server.await.unwrap();
        assert_eq!(request["command"], "reload-ruleset");
        assert_eq!(request["version"], 1);
        assert_eq!(request["origin"]["name"], "worker-1");
    }
}
