//! `GET /metrics`: the node's view of the cluster in Prometheus' text exposition format (0.0.4).
//!
//! Built from the same views as `GET /cluster/actors` and `GET /agents/summary/status`, so the figures always
//! agree with the CLI. Rendering is a pure function, tested on plain values.

use crate::views::NodeHealthView;
use std::fmt::Write;
use wazuh_cluster_actors::registry::counts::StatusSummary;

/// Prometheus label values: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric family: its `# HELP` / `# TYPE` header, then one line per labelled sample.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// The exposition text for `nodes` (as `/cluster/actors` shows them) and `agents` (as
/// `/agents/summary/status` shows them; `None` when the registry could not be read).
pub fn render(
    this_node: &str,
    nodes: &[NodeHealthView],
    agents: Option<&StatusSummary>,
    balance: Option<&wazuh_cluster_actors::master::BalanceView>,
    manager: &[(String, String, u64)],
) -> String {
    let mut out = String::new();
    if !manager.is_empty() {
        let name = "wazuh_cluster_manager_integration";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "The Wazuh daemons around this node ([manager]): per integration (active_response, requests, wazuh_db), its bound, what it received, sent, refused and dropped.",
        );
        for (integration, figure, value) in manager {
            f.sample(name, &[("node", this_node), ("integration", integration), ("figure", figure)], *value as f64);
        }
    }
    let name = "wazuh_cluster_node_connected";
    let mut f = Family::new(&mut out, name, "gauge", "1 if the node is connected (a worker: to the master).");
    for n in nodes {
        f.sample(name, &[("node", &n.name), ("type", &n.kind)], if n.connected { 1.0 } else { 0.0 });
    }

    // Per actor: one family per counter, samples labelled by node, actor and end.
    type Pick = fn(&crate::views::ActorView) -> Option<f64>;
    let families: [(&str, &str, &str, Pick); 6] = [
        ("wazuh_cluster_actor_runs_total", "counter", "Runs of the actor since it started.", |a| Some(a.runs as f64)),
        ("wazuh_cluster_actor_failures_total", "counter", "Failed runs of the actor.", |a| Some(a.failures as f64)),
        ("wazuh_cluster_actor_panics_total", "counter", "Panics caught at the actor's boundary.", |a| {
            Some(a.panics as f64)
        }),
        ("wazuh_cluster_actor_restarts_total", "counter", "Restarts of the actor by its supervisor.", |a| {
            Some(a.restarts as f64)
        }),
        ("wazuh_cluster_actor_running", "gauge", "1 if the actor is running (not restarting or stopped).", |a| {
            Some(if a.state == "running" { 1.0 } else { 0.0 })
        }),
        ("wazuh_cluster_actor_last_duration_seconds", "gauge", "Duration of the actor's last run.", |a| {
            a.last_duration_ms.map(|ms| ms as f64 / 1000.0)
        }),
    ];
    for (name, kind, help, pick) in families {
        let mut f = Family::new(&mut out, name, kind, help);
        for n in nodes {
            for a in &n.actors {
                if let Some(v) = pick(a) {
                    f.sample(name, &[("node", &n.name), ("actor", &a.name), ("end", &a.end)], v);
                }
            }
        }
    }
    let name = "wazuh_cluster_actor_detail";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "The actor's own figures (Integrity: missing, changed, extra files, bytes; LocalIntegrity: files...).",
    );
    for n in nodes {
        for a in &n.actors {
            for (key, value) in &a.figures {
                f.sample(
                    name,
                    &[("node", &n.name), ("actor", &a.name), ("end", &a.end), ("detail", key)],
                    *value as f64,
                );
            }
        }
    }

    let name = "wazuh_cluster_agent_connections";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "This node's agent connections: connected, active, pending, disconnected agents; connections, frames, events received, archived, failed; archive waits; pushes.",
    );
    for n in nodes {
        let Some(hub) = &n.agent_connections else { continue };
        let Ok(serde_json::Value::Object(figures)) = serde_json::to_value(hub) else { continue };
        for (figure, value) in figures {
            if let Some(v) = value.as_f64() {
                f.sample(name, &[("node", &n.name), ("figure", &figure)], v);
            }
        }
    }

    let name = "wazuh_cluster_agents";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Registered agents by status and by the node they report to, as this node knows them.",
    );
    for (node, statuses) in agents.map(|a| &a.nodes).into_iter().flatten() {
        for (status, count) in statuses {
            f.sample(name, &[("status", status), ("node", node)], *count as f64);
        }
    }
    if let Some(b) = balance {
        let name = "wazuh_cluster_rebalance_moves_total";
        let mut f = Family::new(
            &mut out,
            name,
            "counter",
            "Agents the master's rebalancer asked to move to another worker (would have, in dry-run mode).",
        );
        f.sample(name, &[("node", this_node)], b.moves as f64);
        let name = "wazuh_cluster_rebalance_batches_total";
        let mut f = Family::new(&mut out, name, "counter", "Batches of moves the master's rebalancer sent.");
        f.sample(name, &[("node", this_node)], b.batches as f64);
        let name = "wazuh_cluster_worker_active_agents";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "Active agents per connected worker, as the master's rebalancer last saw them.",
        );
        for (worker, n) in &b.workers {
            f.sample(name, &[("node", worker)], *n as f64);
        }
    }
    let name = "wazuh_cluster_registry_up";
    let mut f = Family::new(&mut out, name, "gauge", "1 if this node could read its agent registry (or replica).");
    f.sample(name, &[("node", this_node)], if agents.is_some() { 1.0 } else { 0.0 });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::ActorView;

    fn actor(name: &str, state: &str, figures: &[(&str, u64)]) -> ActorView {
        ActorView {
            name: name.into(),
            end: "master".into(),
            kind: "periodic".into(),
            state: state.into(),
            runs: 12,
            failures: 1,
            panics: 1,
            restarts: 0,
            last_run: None,
            last_duration_ms: Some(250),
            last_error: None,
            details: Default::default(),
            figures: figures.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn renders_nodes_actors_numeric_details_and_agent_counts() {
        let nodes = vec![
            NodeHealthView {
                name: "master-1".into(),
                kind: "master".into(),
                connected: true,
                last_keepalive: None,
                actors: vec![actor("LocalIntegrity", "running", &[("files", 50037)])],
                agent_connections: Some(wazuh_cluster_actors::agents::messages::HubView {
                    connected: 3,
                    events_archived: 120,
                    ..Default::default()
                }),
            },
            NodeHealthView {
                name: "wor\"ker".into(),
                kind: "worker".into(),
                connected: false,
                last_keepalive: None,
                actors: vec![actor("Integrity", "restarting", &[("in_sync", 1), ("bytes_sent", 10)])],
                agent_connections: None,
            },
        ];
        let mut counts = wazuh_cluster_actors::registry::counts::StatusCounts::default();
        counts.set(1, "active", "w1", None);
        counts.set(2, "active", "w1", None);
        counts.set(3, "never_connected", "", None);
        let balance = wazuh_cluster_actors::master::BalanceView {
            workers: [("w1".to_string(), 2)].into(),
            moves: 7,
            batches: 2,
            ..Default::default()
        };
        let text = render(
            "master-1",
            &nodes,
            Some(&counts.summary()),
            Some(&balance),
            &[("wazuh_db".into(), "dropped".into(), 3)],
        );
        assert!(
            text.contains(
                "wazuh_cluster_manager_integration{node=\"master-1\",integration=\"wazuh_db\",figure=\"dropped\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("wazuh_cluster_rebalance_moves_total{node=\"master-1\"} 7"), "{text}");
        assert!(text.contains("wazuh_cluster_worker_active_agents{node=\"w1\"} 2"), "{text}");
        for line in [
            "wazuh_cluster_node_connected{node=\"master-1\",type=\"master\"} 1",
            "wazuh_cluster_agent_connections{node=\"master-1\",figure=\"connected\"} 3",
            "wazuh_cluster_agent_connections{node=\"master-1\",figure=\"events_archived\"} 120",
            "wazuh_cluster_node_connected{node=\"wor\\\"ker\",type=\"worker\"} 0",
            "wazuh_cluster_actor_runs_total{node=\"master-1\",actor=\"LocalIntegrity\",end=\"master\"} 12",
            "wazuh_cluster_actor_running{node=\"wor\\\"ker\",actor=\"Integrity\",end=\"master\"} 0",
            "wazuh_cluster_actor_last_duration_seconds{node=\"master-1\",actor=\"LocalIntegrity\",end=\"master\"} 0.25",
            "wazuh_cluster_actor_detail{node=\"master-1\",actor=\"LocalIntegrity\",end=\"master\",detail=\"files\"} 50037",
            "wazuh_cluster_actor_detail{node=\"wor\\\"ker\",actor=\"Integrity\",end=\"master\",detail=\"in_sync\"} 1",
            "wazuh_cluster_agents{status=\"active\",node=\"w1\"} 2",
            "wazuh_cluster_agents{status=\"never_connected\",node=\"\"} 1",
            "wazuh_cluster_registry_up{node=\"master-1\"} 1",
            "# TYPE wazuh_cluster_actor_failures_total counter",
            "wazuh_cluster_actor_panics_total{node=\"master-1\",actor=\"LocalIntegrity\",end=\"master\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
        assert!(render("w", &[], None, None, &[]).contains("wazuh_cluster_registry_up{node=\"w\"} 0"));
    }
}
