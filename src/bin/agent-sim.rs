//! `agent-sim`: simulated Wazuh 4.x agents, written from the protocol reference, for load tests.
//!
//! Enrollment: `agent-sim --enroll HOST:PORT --agents N [--password P] [--concurrency C] [--json]`
//! enrolls N agents over TLS (as agents do, without verifying the manager's certificate), at most C
//! at a time, and prints a summary: enrolled, errors, p50/p99 latency, enrollments per second.
//! `--keys-out FILE` writes what each agent received (`id name ip key` lines), like client.keys.

use clap::Parser;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wazuh_multi_node::sim::{connector, enroll_one, parse_key};

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
    Ok(serde_json::json!({
        "agents": args.agents,
        "enrolled": keys.len(),
        "errors": errors.values().sum::<u64>(),
        "error_kinds": errors,
        "enroll_p50_ms": (percentile(&latencies, 0.50) * 100.0).round() / 100.0,
        "enroll_p99_ms": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
        "enroll_per_s": ((keys.len() as f64 / elapsed.max(1e-9)) * 10.0).round() / 10.0,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "concurrency": args.concurrency,
    }))
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
