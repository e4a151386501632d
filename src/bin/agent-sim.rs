//! `agent-sim`: simulated Wazuh 4.x agents, written from the protocol reference, for load tests.
//!
//! Enrollment: `agent-sim --enroll HOST:PORT --agents N [--password P] [--concurrency C] [--json]`
//! enrolls N agents over TLS (as agents do, without verifying the manager's certificate), at most C
//! at a time, and prints a summary: enrolled, errors, p50/p99 latency, enrollments per second.
//! `--keys-out FILE` writes what each agent received (`id name ip key` lines), like client.keys.
//!
//! Connections: with `--connect HOST:PORT[,HOST:PORT...]` the enrolled agents then connect (spread
//! over the addresses, moving to the next one when a connection fails or the manager sends
//! `#!-force_reconnect`), send their startup, a keep-alive every `--keepalive` seconds for
//! `--duration` seconds, check that each startup is acknowledged first, follow merged.mg pushes
//! (verifying the MD5) and shut down. The summary adds `active` (connected at the end), `acks`,
//! `pushes`, `errors`. `--status-samples N --api URL` also measures, N times one agent after the
//! other, the time from a keep-alive with a changed label to that label on the master's API.

use clap::Parser;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wazuh_multi_node::sim::{connector, enroll_one, parse_key, run_agent, AgentCmd, ConnStats, SimAgent};

#[derive(Parser, Debug, Clone)]
#[command(name = "agent-sim", version, about = "Simulated Wazuh agents for load tests")]
struct Args {
    /// Enrollment address (authd), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    enroll: String,
    /// How many agents to enroll.
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// Enrollment password.
    #[arg(long)]
    password: Option<String>,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Agent names are PREFIX-<n>.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Groups to ask for (comma separated).
    #[arg(long)]
    groups: Option<String>,
    /// Agent version to announce.
    #[arg(long = "agent-version", default_value = "v4.14.7")]
    agent_version: String,
    /// Give up on one enrollment after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Write the received keys here (`id name ip key` per line).
    #[arg(long, value_name = "FILE")]
    keys_out: Option<std::path::PathBuf>,
    /// Agent connection addresses (remoted), comma separated: agents are spread over them.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    connect: Vec<String>,
    /// Seconds between keep-alives.
    #[arg(long, default_value_t = 10)]
    keepalive: u64,
    /// Seconds the agents stay connected.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Status-change measurements (needs --api).
    #[arg(long, default_value_t = 0)]
    status_samples: usize,
    /// The master's API, for --status-samples.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let connector = connector()?;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.agents);
    for n in 1..=args.agents {
        let mut line = String::new();
        if let Some(p) = &args.password {
            line.push_str(&format!("OSSEC PASS: {p} "));
        }
        line.push_str(&format!("OSSEC A:'{}-{n}' V:'{}'", args.prefix, args.agent_version));
        if let Some(g) = &args.groups {
            line.push_str(&format!(" G:'{g}'"));
        }
        line.push('\n');
        let (connector, addr, semaphore) = (connector.clone(), args.enroll.clone(), semaphore.clone());
        let name = format!("{}-{n}", args.prefix);
        let limit = Duration::from_secs(args.timeout);
        tasks.push(actix_rt::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let t0 = Instant::now();
            let result = tokio::time::timeout(limit, enroll_one(connector, addr, line)).await;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            match result {
                Ok(Ok(reply)) => match parse_key(&reply) {
                    Some(key) => (ms, Ok(key)),
                    // Group errors by kind: the agent's own name is not part of it.
                    None => (ms, Err(reply.replace(&name, "<agent>"))),
                },
                Ok(Err(e)) => (ms, Err(e.to_string())),
                Err(_) => (ms, Err("timed out".to_string())),
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut keys = Vec::new();
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for t in tasks {
        match t.await {
            Ok((ms, Ok(key))) => {
                latencies.push(ms);
                keys.push(key);
            }
            Ok((_, Err(e))) => *errors.entry(e).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    if let Some(path) = &args.keys_out {
        let mut text = keys.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text)?;
    }
    let mut summary = serde_json::json!({
        "agents": args.agents,
        "enrolled": keys.len(),
        "errors": errors.values().sum::<u64>(),
        "error_kinds": errors,
        "enroll_p50_ms": (percentile(&latencies, 0.50) * 100.0).round() / 100.0,
        "enroll_p99_ms": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
        "enroll_per_s": ((keys.len() as f64 / elapsed.max(1e-9)) * 10.0).round() / 10.0,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "concurrency": args.concurrency,
    });
    if !args.connect.is_empty() {
        let more = connect(&args, &keys).await?;
        if let (Some(obj), serde_json::Value::Object(more)) = (summary.as_object_mut(), more) {
            obj.extend(more);
        }
    }
    Ok(summary)
}

/// Runs the enrolled agents' connections (see the module documentation).
async fn connect(args: &Args, keys: &[String]) -> anyhow::Result<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let addrs = Arc::new(args.connect.clone());
    let stats = Arc::new(ConnStats::default());
    let start = tokio::time::Instant::now();
    let until = start + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    let mut controls = Vec::new();
    for (i, line) in keys.iter().enumerate() {
        let agent = SimAgent::from_key_line(line).ok_or_else(|| anyhow::anyhow!("bad key line {line:?}"))?;
        // One command at a time per agent (the benchmark waits for each to show on the master).
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        controls.push((agent.id.clone(), tx));
        let (addrs, stats) = (addrs.clone(), stats.clone());
        tasks.push(actix_rt::spawn(run_agent(agent, addrs, i, Duration::from_secs(args.keepalive), until, stats, rx)));
    }
    // Everyone connected and acknowledged.
    let mut all_active_ms = None;
    while tokio::time::Instant::now() < until {
        if stats.active.load(Relaxed) as usize >= keys.len() {
            all_active_ms = Some(start.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::new();
    if let (true, Some(api)) = (args.status_samples > 0 && !controls.is_empty(), &args.api) {
        for k in 0..args.status_samples {
            let (id, tx) = &controls[k * controls.len() / args.status_samples];
            let value = format!("{}-{k}", std::process::id());
            let t0 = Instant::now();
            let _ = tx.send(AgentCmd::Label(value.clone())).await;
            let (api, path) = (api.clone(), format!("/agents/{id}"));
            loop {
                let (api, path) = (api.clone(), path.clone());
                let body = actix_rt::task::spawn_blocking(move || wazuh_multi_node::client::get(&api, &path)).await?;
                let seen =
                    body.ok().and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok()).is_some_and(|v| {
                        v["data"]["affected_items"][0]["labels"]["bench"].as_str() == Some(value.as_str())
                    });
                if seen {
                    latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "a status change never reached the master");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
    }
    // Connected at the end of the run.
    let end_sample = until.checked_sub(Duration::from_millis(500)).unwrap_or(until);
    tokio::time::sleep_until(end_sample).await;
    let active = stats.active.load(Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let mut out = serde_json::json!({
        "active": active,
        "all_active_ms": all_active_ms,
        "acks": stats.acks.load(Relaxed),
        "pushes": stats.pushes.load(Relaxed),
        "last_push_epoch_ms": stats.last_push_ms.load(Relaxed),
        "reconnects": stats.reconnects.load(Relaxed),
        "connection_errors": stats.errors.load(Relaxed),
    });
    if !latencies.is_empty() {
        out["status_to_master_ms_p50"] = serde_json::json!((percentile(&latencies, 0.5) * 100.0).round() / 100.0);
        out["status_to_master_ms_p99"] = serde_json::json!((percentile(&latencies, 0.99) * 100.0).round() / 100.0);
        out["status_samples"] = serde_json::json!(latencies.len());
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json = args.json;
    let result = actix_rt::System::new().block_on(run(args));
    match result {
        Ok(summary) => {
            if json {
                println!("{summary}");
            } else {
                println!(
                    "enrolled {} of {} in {} s: {} per second, p50 {} ms, p99 {} ms, {} errors {}",
                    summary["enrolled"],
                    summary["agents"],
                    summary["elapsed_s"],
                    summary["enroll_per_s"],
                    summary["enroll_p50_ms"],
                    summary["enroll_p99_ms"],
                    summary["errors"],
                    summary["error_kinds"]
                );
                if summary.get("active").is_some() {
                    println!(
                        "connections: {} active at the end (all active after {} ms), {} acks, {} pushes, {} reconnects, {} errors",
                        summary["active"],
                        summary["all_active_ms"],
                        summary["acks"],
                        summary["pushes"],
                        summary["reconnects"],
                        summary["connection_errors"]
                    );
                }
                if summary.get("status_to_master_ms_p50").is_some() {
                    println!(
                        "status change to master: p50 {} ms, p99 {} ms over {} samples",
                        summary["status_to_master_ms_p50"],
                        summary["status_to_master_ms_p99"],
                        summary["status_samples"]
                    );
                }
            }
            if summary["errors"].as_u64() == Some(0) {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
