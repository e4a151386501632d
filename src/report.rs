//! Tables for `wazuh-cluster nodes` and `wazuh-cluster health`, rendered from the API's JSON.

use serde_json::Value;

fn items(body: &Value) -> Vec<Value> {
    body["data"]["affected_items"].as_array().cloned().unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, each as wide as its widest cell. Control characters in cells are shown
/// escaped (`\n`, `\u{1b}`): a value that came from a client never drives the terminal.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| wazuh_cluster_protocol::agent::enrollment::printable(c).into_owned()).collect())
        .collect();
    let rows = &rows[..];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The Raft group as `/cluster/status` reports it (nothing without high availability).
pub fn raft_table(body: &Value) -> String {
    let raft = &body["data"]["raft"];
    if raft.is_null() {
        return String::new();
    }
    let leader = match &raft["leader"] {
        Value::Null => "none yet".to_string(),
        l => format!("{} ({})", s(&l["id"]), s(&l["address"])),
    };
    let mut out = format!(
        "\nmasters: term {}, leader {leader}, this node {} is {}\n",
        s(&raft["term"]),
        s(&raft["id"]),
        s(&raft["state"])
    );
    if raft["state"] == "Leader" && raft["accepts_changes"] == false {
        let since = match &raft["millis_since_majority"] {
            Value::Null => "yet".to_string(),
            ms => format!("for {} ms", s(ms)),
        };
        out.push_str(&format!("  no majority acknowledged this leader {since}: it accepts no change\n"));
    }
    if !raft["registry"].is_null() {
        out.push_str(&format!(
            "  registry: change {}, hash {}\n",
            s(&raft["registry"]["change"]),
            s(&raft["registry"]["hash"])
        ));
    }
    for m in raft["members"].as_array().into_iter().flatten() {
        let matched = match &m["matched_index"] {
            Value::Null => String::new(),
            v => format!(", replicated up to {}", s(v)),
        };
        out.push_str(&format!("  {} {} {}{matched}\n", s(&m["id"]), s(&m["address"]), s(&m["state"])));
    }
    out
}

/// `GET /cluster/nodes` as a table.
pub fn nodes_table(body: &Value) -> String {
    let rows: Vec<Vec<String>> = items(body)
        .iter()
        .map(|n| {
            vec![
                s(&n["name"]),
                s(&n["type"]),
                s(&n["version"]),
                s(&n["address"]),
                s(&n["connected_since"]),
                s(&n["last_keepalive"]),
            ]
        })
        .collect();
    table(&["NAME", "TYPE", "VERSION", "ADDRESS", "CONNECTED SINCE", "LAST KEEP-ALIVE"], &rows)
}

/// `GET /cluster/balance` as a table: active agents per worker against the mean, then the
/// rebalancer's mode, state and moves.
pub fn balance_table(body: &Value) -> String {
    let data = &body["data"];
    let mean = data["mean"].as_f64().unwrap_or(0.0);
    let over: Vec<&str> = data["over"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let rows: Vec<Vec<String>> = data["workers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(worker, n)| {
            let n = n.as_u64().unwrap_or(0);
            let off = if mean > 0.0 { format!("{:+.0} %", (n as f64 / mean - 1.0) * 100.0) } else { "-".into() };
            let moving = if over.contains(&worker.as_str()) { "moving agents away" } else { "" };
            vec![worker.clone(), n.to_string(), off, moving.to_string()]
        })
        .collect();
    let mut out = table(&["WORKER", "ACTIVE AGENTS", "FROM THE MEAN", ""], &rows);
    out.push_str(&format!(
        "rebalance: {}, {}; mean {mean:.0} active agents per worker; {} agents moved in {} batches\n",
        s(&data["mode"]),
        s(&data["state"]),
        s(&data["moves"]),
        s(&data["batches"]),
    ));
    out
}

/// `GET /agents` as a table.
pub fn agents_table(body: &Value) -> String {
    let rows: Vec<Vec<String>> = items(body)
        .iter()
        .map(|a| {
            let groups =
                a["group"].as_array().map(|g| g.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default();
            vec![
                s(&a["id"]),
                s(&a["name"]),
                s(&a["ip"]),
                s(&a["status"]),
                s(&a["node_name"]),
                groups,
                s(&a["registered_at"]),
            ]
        })
        .collect();
    table(&["ID", "NAME", "IP", "STATUS", "NODE", "GROUPS", "REGISTERED"], &rows)
}

/// `GET /agents/summary/status` as a table: one row per node, then the totals.
pub fn summary_table(body: &Value) -> String {
    let statuses = ["active", "pending", "disconnected", "never_connected"];
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0).to_string();
    let mut rows: Vec<Vec<String>> = body["data"]["nodes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(node, c)| {
            let mut row = vec![node.clone()];
            row.extend(statuses.iter().map(|st| count(c, st)));
            row
        })
        .collect();
    let all = &body["data"]["connection"];
    let mut total = vec!["(all)".to_string()];
    total.extend(statuses.iter().map(|st| count(all, st)));
    rows.push(total);
    let mut out = table(&["NODE", "ACTIVE", "PENDING", "DISCONNECTED", "NEVER CONNECTED"], &rows);
    out.push_str(&format!(
        "{} agents; group configuration synced {}, not synced {}\n",
        count(all, "total"),
        count(&body["data"]["configuration"], "synced"),
        count(&body["data"]["configuration"], "not_synced")
    ));
    out
}

/// `GET /groups` as a table.
pub fn groups_table(body: &Value) -> String {
    let rows: Vec<Vec<String>> = items(body).iter().map(|g| vec![s(&g["name"]), s(&g["count"])]).collect();
    table(&["GROUP", "AGENTS"], &rows)
}

/// `GET /cluster/actors` as a table: one row per actor, its figures and last error on indented
/// lines below it (they do not widen the columns).
pub fn health_table(body: &Value) -> String {
    let header = ["NODE", "TYPE", "ACTOR", "STATE", "RUNS/FAIL/RESTARTS", "LAST RUN"];
    let mut rows: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for node in items(body) {
        let actors = node["actors"].as_array().cloned().unwrap_or_default();
        if actors.is_empty() {
            let row = vec![s(&node["name"]), s(&node["type"]), "-".into(), "-".into(), "-".into(), "-".into()];
            rows.push((row, Vec::new()));
        }
        for a in actors {
            let kind = a["kind"].as_str().filter(|k| !k.is_empty()).map(|k| format!(", {k}")).unwrap_or_default();
            let panics = a["panics"].as_u64().filter(|p| *p > 0).map(|p| format!(" ({p} panics)")).unwrap_or_default();
            let row = vec![
                s(&node["name"]),
                s(&node["type"]),
                format!("{} ({}{kind})", s(&a["name"]), s(&a["end"])),
                s(&a["state"]),
                format!("{}/{}/{}{panics}", s(&a["runs"]), s(&a["failures"]), s(&a["restarts"])),
                s(&a["last_run"]),
            ];
            let mut extra = Vec::new();
            if let Some(details) = a["details"].as_object().filter(|d| !d.is_empty()) {
                extra.push(details.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(" "));
            }
            if let Some(err) = a["last_error"].as_str() {
                extra.push(format!("last error: {err}"));
            }
            rows.push((row, extra));
        }
    }
    let main: Vec<Vec<String>> = rows.iter().map(|(r, _)| r.clone()).collect();
    let table = table(&header, &main);
    let mut lines = table.lines();
    let mut out = String::new();
    if let Some(head) = lines.next() {
        out.push_str(head);
        out.push('\n');
    }
    for ((_, extra), line) in rows.iter().zip(lines) {
        out.push_str(line);
        out.push('\n');
        for e in extra {
            out.push_str("    ");
            out.push_str(e);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_envelope_as_columns() {
        let body = serde_json::json!({"data": {"affected_items": [
            {"name": "master", "type": "master", "version": "0.1.0", "address": "127.0.0.1:1516", "connected_since": "t", "last_keepalive": null},
            {"name": "worker-1", "type": "worker", "version": "0.1.0", "address": "127.0.0.1:5000", "connected_since": "t", "last_keepalive": "u"}
        ], "total_affected_items": 2}, "error": 0});
        let t = nodes_table(&body);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME      TYPE"));
        assert!(lines[2].starts_with("worker-1  worker"));
        assert!(lines[1].ends_with('-'), "null shows as -: {}", lines[1]);
    }

    #[test]
    fn health_figures_go_below_their_actor_without_widening_the_columns() {
        let body = serde_json::json!({"data": {"affected_items": [
            {"name": "w1", "type": "worker", "actors": [
                {"name": "Integrity", "end": "worker", "kind": "periodic", "state": "running", "runs": 3,
                 "failures": 1, "panics": 1, "restarts": 1, "last_run": "t",
                 "details": {"missing": 2, "in_sync": 1, "a_rather_long_figure_name_that_would_widen": 12345},
                 "last_error": "panicked: boom"}
            ]}
        ]}});
        let t = health_table(&body);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1].contains("Integrity (worker, periodic)") && lines[1].contains("3/1/1 (1 panics)"), "{t}");
        assert!(lines[2].starts_with("    ") && lines[2].contains("missing=2"), "{t}");
        assert_eq!(lines[3], "    last error: panicked: boom");
        assert!(lines[0].len() < 100, "the figures widened the header: {}", lines[0]);
    }

    #[test]
    fn control_characters_in_cells_are_shown_escaped() {
        let out = table(&["NAME"], &[vec!["evil\u{1b}[2J\nline".to_string()]]);
        assert!(!out.trim_end().contains('\n') || out.lines().count() == 2, "{out:?}");
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("evil\\u{1b}[2J\\nline"), "{out:?}");
    }
}
