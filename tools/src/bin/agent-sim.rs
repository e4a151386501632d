//! `agent-sim`: simulated Wazuh 4.x agents, written from the protocol reference, for load tests.
//!
//! Enrollment: `agent-sim --enroll HOST:PORT[,HOST:PORT...] --agents N [--password P]
//! [--concurrency C] [--json]` enrolls N agents over TLS (as agents do, without verifying the
//! manager's certificate), agent n through the n-th address (round robin), at most C at a time in
//! all, and prints a summary: enrolled, errors, p50/p99 latency, enrollments per second (overall,
//! and over the first and the last tenth of the enrollments). `--keys-out FILE` writes what each
//! agent received (`id name ip key` lines, like client.keys); `--keys-in FILE` skips enrollment and
//! uses those keys instead.
//!
//! Connections: with `--connect HOST:PORT[,HOST:PORT...]` the agents then connect (spread over the
//! addresses, moving to the next one when a connection fails or the manager sends
//! `#!-force_reconnect`), send their startup, a keep-alive every `--keepalive` seconds and
//! `--events-per-s` events of `--event-size` bytes each for `--duration` seconds (or until standard
//! input closes, with `--control-stdin`), check that each startup is acknowledged first, follow
//! merged.mg pushes (verifying the MD5) and shut down. With `--max-retries N` they reconnect as a
//! real Wazuh agent does (client-agent/start_agent.c): the same server first, the next one only
//! after N failed attempts `--retry-interval` seconds apart. The summary adds `active` (connected at the
//! end), `acks`, `pushes`, `events_sent`, `connection_errors`. `--status-samples N --api URL` also
//! measures, N times one agent after the other, the time from a keep-alive with a changed label to
//! that label on the master's API; with `--control-stdin`, a line `status N` on standard input
//! measures N more at that moment (a benchmark driving agent-sim picks its steady state).
//!
//! Scale: a process may hold only so many sockets, so agent-sim runs its agents in child processes
//! of its own, `--per-process` agents each (15,000 by default: 50,000 agents make four), and adds
//! up what they report. `sim_cpu_s` is the CPU time of all of them. With `--progress`, each phase
//! (`enrolled`, `active`, `status`) is also printed as a JSON line when it ends.

use clap::Parser;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key, run_agent, AgentCmd, AgentOpts, ConnStats, SimAgent};

#[derive(Parser, Debug, Clone)]
#[command(name = "agent-sim", version, about = "Simulated Wazuh agents for load tests")]
struct Args {
    /// Enrollment addresses (authd), HOST:PORT, comma separated: agent n enrolls through the n-th.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    enroll: Vec<String>,
    /// How many agents.
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// Enrollment password.
    #[arg(long)]
    password: Option<String>,
    /// Enrollments in flight at once, in all processes together.
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
    /// Use these keys (`id name ip key` per line, e.g. an earlier --keys-out) instead of enrolling.
    #[arg(long, value_name = "FILE", conflicts_with = "enroll")]
    keys_in: Option<std::path::PathBuf>,
    /// Agent connection addresses (remoted), comma separated: agents are spread over them.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    connect: Vec<String>,
    /// Seconds between keep-alives.
    #[arg(long, default_value_t = 10.0)]
    keepalive: f64,
    /// Events each agent sends per second (fractions allowed; 0: none).
    #[arg(long, default_value_t = 0.0)]
    events_per_s: f64,
    /// Bytes of each event's log line.
    #[arg(long, default_value_t = 200)]
    event_size: usize,
    /// Real-agent reconnection (Wazuh's `<max_retries>`, 5 in an agent's defaults; 0: off): after
    /// `#!-force_reconnect` or a lost connection an agent dials the same server again first, and
    /// moves to the next address only after this many failed attempts `--retry-interval` apart.
    /// Off, an agent moves to the next address at once, and agents start spread over the addresses
    /// (on, they all start with the first, as real agents with the same list do).
    #[arg(long, default_value_t = 0)]
    max_retries: u32,
    /// Seconds between real-agent attempts (Wazuh's `<retry_interval>`, 10 in an agent's defaults).
    #[arg(long, default_value_t = 10.0)]
    retry_interval: f64,
    /// Seconds the agents stay connected.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// With --enroll and --connect: each agent connects as soon as it is enrolled, while the
    /// others still enroll (enrollment and the connection burst overlap, as in a real rollout).
    #[arg(long)]
    connect_as_enrolled: bool,
    /// Connect each agent from an address of its own in 127.0.0.0/8 (servers on loopback), so that
    /// per-address caps see many hosts, as in a real deployment.
    #[arg(long)]
    spread_sources: bool,
    /// Write every command the manager sends an agent here (`<agent name> <message>` per line:
    /// active responses, requests); requests are answered `ok {"sim":NAME,"asked":PAYLOAD}`.
    #[arg(long)]
    commands_out: Option<std::path::PathBuf>,
    /// Read commands from standard input (`status N`: measure N status changes now, needs --api)
    /// and stop the agents when it closes (for a benchmark driving agent-sim).
    #[arg(long)]
    control_stdin: bool,
    /// Status-change measurements (needs --api).
    #[arg(long, default_value_t = 0)]
    status_samples: usize,
    /// The master's API, for --status-samples.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// The API token (the master's api.token), for --api. Child processes read it from the
    /// environment too.
    #[arg(long, env = "WMN_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Most agents in one process: more agents run in more processes.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    per_process: u64,
    /// Print each phase as a JSON line as soon as it ends.
    #[arg(long)]
    progress: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Internal: this process runs part I of P (`I/P`) and reports in JSON lines.
    #[arg(long, hide = true, value_name = "I/P")]
    part: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn now_ms() -> u64 {
    wazuh_cluster_actors::clock::now_ms()
}

/// One line a part reports to the parent.
fn report(line: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ------------------------------------------------------------------------------------------------
// A part: one process running agents `first..=last`.

struct Part {
    index: usize,
    count: usize,
    first: usize,
    last: usize,
}

impl Part {
    fn parse(text: &str, agents: usize) -> anyhow::Result<Self> {
        let (i, p) = text.split_once('/').ok_or_else(|| anyhow::anyhow!("--part wants I/P"))?;
        let (index, count): (usize, usize) = (i.parse()?, p.parse()?);
        anyhow::ensure!(count > 0 && index < count, "--part {text}: out of range");
        Ok(Part { index, count, first: index * agents / count + 1, last: (index + 1) * agents / count })
    }
}

/// Enrolls agents `first..=last`; reports latencies, completion times and the keys.
/// With `feed`, each key also goes there as soon as its agent is enrolled (`--connect-as-enrolled`).
async fn enroll_part(
    args: &Args,
    part: &Part,
    feed: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> anyhow::Result<Vec<String>> {
    let connector = connector()?;
    let semaphore = Arc::new(tokio::sync::Semaphore::new((args.concurrency / part.count).max(1)));
    let start_ms = now_ms();
    let mut tasks = Vec::with_capacity(part.last + 1 - part.first);
    for n in part.first..=part.last {
        let mut line = String::new();
        if let Some(p) = &args.password {
            line.push_str(&format!("OSSEC PASS: {p} "));
        }
        line.push_str(&format!("OSSEC A:'{}-{n}' V:'{}'", args.prefix, args.agent_version));
        if let Some(g) = &args.groups {
            line.push_str(&format!(" G:'{g}'"));
        }
        line.push('\n');
        let addr = args.enroll[(n - 1) % args.enroll.len()].clone();
        let (connector, semaphore) = (connector.clone(), semaphore.clone());
        let name = format!("{}-{n}", args.prefix);
        let limit = Duration::from_secs(args.timeout);
        let feed = feed.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let t0 = Instant::now();
            let result = tokio::time::timeout(limit, enroll_one(connector, addr, line)).await;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let outcome = match result {
                Ok(Ok(reply)) => match parse_key(&reply) {
                    Some(key) => {
                        if let Some(feed) = &feed {
                            let _ = feed.send(key.clone());
                        }
                        Ok(key)
                    }
                    // Group errors by kind: the agent's own name is not part of it.
                    None => Err(reply.replace(&name, "<agent>")),
                },
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
            (ms, now_ms(), outcome)
        }));
    }
    let (mut latencies, mut done, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok((ms, at, Ok(key))) => {
                latencies.push(round2(ms));
                done.push(at);
                keys.push(key);
            }
            Ok((_, _, Err(e))) => *errors.entry(e).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    report(serde_json::json!({
        "phase": "enrolled", "start_ms": start_ms, "end_ms": now_ms(), "lat_ms": latencies, "done_ms": done,
        "errors": errors, "keys": if args.keys_out.is_some() { keys.clone() } else { Vec::new() },
    }));
    Ok(keys)
}

/// Keys `first..=last` of `--keys-in`.
fn keys_in_part(path: &std::path::Path, part: &Part) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    let keys: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .skip(part.first - 1)
        .take(part.last + 1 - part.first)
        .map(String::from)
        .collect();
    report(serde_json::json!({
        "phase": "enrolled", "start_ms": now_ms(), "end_ms": now_ms(), "lat_ms": [], "done_ms": [],
        "errors": {}, "keys": [], "from_file": keys.len(),
    }));
    Ok(keys)
}

/// Runs the part's agents until the duration ends or (with --control-stdin) standard input closes.
/// The keys arrive on `keys` (all at once, or as their agents enroll); each agent starts as its
/// key arrives, and "active" is reported once the keys stopped coming and every agent is active.
async fn connect_part(
    args: &Args,
    part: &Part,
    mut keys: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let addrs = Arc::new(args.connect.clone());
    let stats = Arc::new(ConnStats::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let opts = Arc::new(AgentOpts {
        keepalive: Duration::from_secs_f64(args.keepalive.max(0.01)),
        events_per_s: args.events_per_s.max(0.0),
        event_size: args.event_size,
        max_retries: args.max_retries,
        retry_interval: Duration::from_secs_f64(args.retry_interval.max(0.01)),
        spread_sources: args.spread_sources,
        commands_out: match &args.commands_out {
            Some(path) => Some(Arc::new(std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?,
            ))),
            None => None,
        },
    });
    let started_ms = now_ms();
    // Who is connected when the run ends is read just before the agents are told to stop.
    let active_at_end = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop_now = {
        let (stop_tx, stats, active_at_end) = (stop_tx.clone(), stats.clone(), active_at_end.clone());
        move || {
            if !*stop_tx.borrow() {
                active_at_end.store(stats.active.load(Relaxed), Relaxed);
                let _ = stop_tx.send(true);
            }
        }
    };
    let duration = Duration::from_secs(args.duration);
    let by_timer = stop_now.clone();
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        by_timer();
    });
    // Commands: `status N` lines; the end of the input stops the agents.
    let (status_tx, mut status_rx) = tokio::sync::mpsc::channel::<usize>(4);
    if args.status_samples > 0 {
        let _ = status_tx.try_send(args.status_samples);
    }
    if args.control_stdin {
        let by_stdin = stop_now.clone();
        let status_tx = status_tx.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.trim().strip_prefix("status ").and_then(|n| n.trim().parse().ok()) {
                    let _ = status_tx.blocking_send(n);
                }
            }
            by_stdin();
        });
    }
    drop(status_tx);
    let measures = part.index == 0 && args.api.is_some();
    let mut tasks = Vec::new();
    let mut controls = Vec::new();
    let mut start = |line: String| -> anyhow::Result<()> {
        let agent = SimAgent::from_key_line(&line).ok_or_else(|| anyhow::anyhow!("bad key line {line:?}"))?;
        // Spread over the addresses; real agents all start with the first server of their list.
        let n: usize = if opts.max_retries > 0 { 0 } else { agent.id.parse().unwrap_or(0) };
        // One command at a time per agent (the benchmark waits for each to show on the master).
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if measures {
            controls.push((agent.id.clone(), tx));
        }
        let (addrs, stats, opts, stop) = (addrs.clone(), stats.clone(), opts.clone(), stop.clone());
        tasks.push(tokio::spawn(run_agent(agent, addrs, n, opts, stop, stats, rx)));
        Ok(())
    };
    // Every agent started as its key came, then every one connected and acknowledged.
    let (mut started, mut keys_open) = (0usize, true);
    let mut waiting = stop.clone();
    loop {
        while keys_open {
            match keys.try_recv() {
                Ok(line) => {
                    start(line)?;
                    started += 1;
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => keys_open = false,
            }
        }
        if !keys_open && stats.active.load(Relaxed) as usize >= started {
            let errors = stats.errors.load(Relaxed);
            report(
                serde_json::json!({ "phase": "active", "at_ms": now_ms(), "since_ms": started_ms, "connection_errors": errors }),
            );
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = wazuh_cluster_tools::sim::stopped(&mut waiting) => break,
        }
    }
    // Status measurements when asked, until the end of the run.
    loop {
        tokio::select! {
            _ = wazuh_cluster_tools::sim::stopped(&mut waiting) => break,
            n = status_rx.recv() => {
                let Some(n) = n else {
                    wazuh_cluster_tools::sim::stopped(&mut waiting).await;
                    break;
                };
                if let (true, Some(api)) = (!controls.is_empty() && n > 0, &args.api) {
                    let latencies = status_samples(n, api, args.api_token.as_deref(), &controls).await?;
                    report(serde_json::json!({ "phase": "status", "lat_ms": latencies }));
                }
            }
        }
    }
    let active = active_at_end.load(Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    report(serde_json::json!({
        "phase": "end",
        "active": active,
        "acks": stats.acks.load(Relaxed),
        "pushes": stats.pushes.load(Relaxed),
        "last_push_epoch_ms": stats.last_push_ms.load(Relaxed),
        "reconnects": stats.reconnects.load(Relaxed),
        "connection_errors": stats.errors.load(Relaxed),
        "events_sent": stats.events.load(Relaxed),
    }));
    Ok(())
}

/// `samples` times, one agent after the other: a keep-alive with a new label, then the master's
/// API polled until it shows the label. Returns the latencies in milliseconds.
async fn status_samples(
    samples: usize,
    api: &str,
    token: Option<&str>,
    controls: &[(String, tokio::sync::mpsc::Sender<AgentCmd>)],
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    for k in 0..samples {
        let (id, tx) = &controls[k * controls.len() / samples];
        let value = format!("{}-{k}", std::process::id());
        let t0 = Instant::now();
        let _ = tx.send(AgentCmd::Label(value.clone())).await;
        loop {
            let (api, path, token) = (api.to_string(), format!("/agents/{id}"), token.map(String::from));
            let body =
                tokio::task::spawn_blocking(move || wazuh_multi_node::client::get(&api, &path, token.as_deref()))
                    .await?;
            let seen = body
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["data"]["affected_items"][0]["labels"]["bench"].as_str() == Some(value.as_str()));
            if seen {
                latencies.push(round2(t0.elapsed().as_secs_f64() * 1000.0));
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "a status change never reached the master");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(latencies)
}

async fn run_part(args: Args, part: Part) -> anyhow::Result<()> {
    let (feed, keys) = tokio::sync::mpsc::unbounded_channel();
    if args.connect.is_empty() {
        drop(keys);
        match &args.keys_in {
            Some(path) => drop(keys_in_part(path, &part)?),
            None => drop(enroll_part(&args, &part, None).await?),
        }
    } else if let Some(path) = &args.keys_in {
        for key in keys_in_part(path, &part)? {
            let _ = feed.send(key);
        }
        drop(feed);
        connect_part(&args, &part, keys).await?;
    } else if args.connect_as_enrolled {
        // Each agent connects as soon as it has its key, while the others still enroll.
        let enrolled = async {
            let result = enroll_part(&args, &part, Some(feed)).await;
            result.map(drop)
        };
        let (enrolled, connected) = tokio::join!(enrolled, connect_part(&args, &part, keys));
        enrolled?;
        connected?;
    } else {
        for key in enroll_part(&args, &part, None).await? {
            let _ = feed.send(key);
        }
        drop(feed);
        connect_part(&args, &part, keys).await?;
    }
    report(serde_json::json!({ "phase": "cpu", "cpu_ms": wazuh_cluster_tools::procstat::cpu_ms(None) }));
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The parent: starts the parts, adds up what they report.

/// The arguments of part `index` of `count`.
fn part_args(args: &Args, index: usize, count: usize) -> Vec<String> {
    let mut out = vec!["--agents".to_string(), args.agents.to_string()];
    let mut push = |k: &str, v: String| {
        out.push(k.to_string());
        out.push(v);
    };
    if !args.enroll.is_empty() {
        push("--enroll", args.enroll.join(","));
    }
    if let Some(p) = &args.password {
        push("--password", p.clone());
    }
    push("--concurrency", args.concurrency.to_string());
    push("--prefix", args.prefix.clone());
    if let Some(g) = &args.groups {
        push("--groups", g.clone());
    }
    push("--agent-version", args.agent_version.clone());
    push("--timeout", args.timeout.to_string());
    if let Some(k) = &args.keys_in {
        push("--keys-in", k.display().to_string());
    }
    if args.keys_out.is_some() {
        // The parent writes the file; the part only has to return its keys.
        push("--keys-out", "-".into());
    }
    if !args.connect.is_empty() {
        push("--connect", args.connect.join(","));
    }
    push("--keepalive", args.keepalive.to_string());
    push("--events-per-s", args.events_per_s.to_string());
    push("--event-size", args.event_size.to_string());
    push("--max-retries", args.max_retries.to_string());
    push("--retry-interval", args.retry_interval.to_string());
    push("--duration", args.duration.to_string());
    if let Some(path) = &args.commands_out {
        // Each part appends its agents' lines (one write per line).
        push("--commands-out", path.display().to_string());
    }
    if index == 0 {
        push("--status-samples", args.status_samples.to_string());
        if let Some(api) = &args.api {
            push("--api", api.clone());
        }
    }
    push("--part", format!("{index}/{count}"));
    out.push("--control-stdin".into());
    if args.spread_sources {
        out.push("--spread-sources".into());
    }
    if args.connect_as_enrolled {
        out.push("--connect-as-enrolled".into());
    }
    out
}

/// What the parent learns from its parts.
#[derive(Default)]
struct Tally {
    enrolled_parts: usize,
    start_ms: u64,
    end_ms: u64,
    latencies: Vec<f64>,
    done: Vec<u64>,
    errors: BTreeMap<String, u64>,
    keys: BTreeMap<usize, Vec<String>>,
    from_file: u64,
    active_parts: usize,
    connect_since_ms: u64,
    active_at_ms: u64,
    /// Connection errors the parts had counted when all their agents were active.
    errors_until_active: u64,
    status: Vec<f64>,
    end: BTreeMap<String, u64>,
    cpu_ms: u64,
    /// When each part enrolled its last agent.
    part_ends: Vec<u64>,
}

impl Tally {
    fn enrollment(&self, args: &Args) -> serde_json::Value {
        let mut lat = self.latencies.clone();
        lat.sort_by(|a, b| a.total_cmp(b));
        let mut done = self.done.clone();
        done.sort_unstable();
        let n = done.len();
        let elapsed_s = (self.end_ms.saturating_sub(self.start_ms)) as f64 / 1000.0;
        // The first and the last tenth of the enrollments, each over the time it took.
        let tenth = (n / 10).max(1);
        let rate =
            |count: usize, ms: u64| if ms == 0 { 0.0 } else { (count as f64 * 10_000.0 / ms as f64).round() / 10.0 };
        let (first, last) = if n > 1 {
            (
                rate(tenth, done[tenth - 1].saturating_sub(self.start_ms)),
                rate(tenth, done[n - 1].saturating_sub(done[n.saturating_sub(tenth + 1)])),
            )
        } else {
            (0.0, 0.0)
        };
        let mut v = serde_json::json!({
            "agents": args.agents,
            "enrolled": n as u64 + self.from_file,
            "errors": self.errors.values().sum::<u64>(),
            "error_kinds": self.errors,
            "enroll_p50_ms": round2(percentile(&lat, 0.50)),
            "enroll_p99_ms": round2(percentile(&lat, 0.99)),
            "enroll_per_s": if elapsed_s > 0.0 { (n as f64 / elapsed_s * 10.0).round() / 10.0 } else { 0.0 },
            "enroll_first10_per_s": first,
            "enroll_last10_per_s": last,
            "elapsed_s": elapsed_s,
            "concurrency": args.concurrency,
        });
        // Each process enrolls its own share with its share of the concurrency: when some finish
        // before the others, fewer enrollments are in flight at the end (what the last tenth sees).
        if self.part_ends.len() > 1 && n > 1 {
            let mut ends = self.part_ends.clone();
            ends.sort_unstable();
            let last_tenth_from = done[n.saturating_sub(tenth + 1)];
            v["parts_done_s"] =
                ends.iter().map(|e| round2(e.saturating_sub(self.start_ms) as f64 / 1000.0)).collect::<Vec<_>>().into();
            v["parts_done_before_last_tenth"] = ends.iter().filter(|&&e| e <= last_tenth_from).count().into();
        }
        if self.from_file > 0 {
            v["keys_from_file"] = self.from_file.into();
        }
        v
    }

    fn take(&mut self, part: usize, line: &serde_json::Value) {
        let num = |k: &str| line[k].as_u64().unwrap_or(0);
        match line["phase"].as_str() {
            Some("enrolled") => {
                self.enrolled_parts += 1;
                let start = num("start_ms");
                self.start_ms = if self.start_ms == 0 { start } else { self.start_ms.min(start) };
                self.end_ms = self.end_ms.max(num("end_ms"));
                self.part_ends.push(num("end_ms"));
                self.latencies.extend(line["lat_ms"].as_array().into_iter().flatten().filter_map(|v| v.as_f64()));
                self.done.extend(line["done_ms"].as_array().into_iter().flatten().filter_map(|v| v.as_u64()));
                for (k, v) in line["errors"].as_object().into_iter().flatten() {
                    *self.errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
                }
                let keys = line["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(String::from));
                self.keys.insert(part, keys.collect());
                self.from_file += num("from_file");
            }
            Some("active") => {
                self.active_parts += 1;
                let since = num("since_ms");
                self.connect_since_ms =
                    if self.connect_since_ms == 0 { since } else { self.connect_since_ms.min(since) };
                self.active_at_ms = self.active_at_ms.max(num("at_ms"));
                self.errors_until_active += num("connection_errors");
            }
            Some("status") => {
                self.status.extend(line["lat_ms"].as_array().into_iter().flatten().filter_map(|v| v.as_f64()));
            }
            Some("end") => {
                for (k, v) in line.as_object().into_iter().flatten() {
                    if let Some(v) = v.as_u64() {
                        let e = self.end.entry(k.clone()).or_default();
                        *e = if k == "last_push_epoch_ms" { (*e).max(v) } else { *e + v };
                    }
                }
            }
            Some("cpu") => self.cpu_ms += num("cpu_ms"),
            _ => {}
        }
    }
}

fn run_parent(args: &Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.keys_in.is_some() || !args.enroll.is_empty(), "--enroll or --keys-in is needed");
    let count = (args.agents as u64).div_ceil(args.per_process).max(1) as usize;
    let exe = std::env::current_exe()?;
    // The parts' output lines, 1,024 at most: a reader waits (and its part with it, on its pipe)
    // while the parent is behind.
    let (tx, rx) = mpsc::sync_channel::<(usize, Option<String>)>(1024);
    let mut children = Vec::new();
    let stdins = Arc::new(Mutex::new(Vec::new()));
    for index in 0..count {
        let mut child = std::process::Command::new(&exe)
            .args(part_args(args, index, count))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        if let (Ok(mut held), Some(stdin)) = (stdins.lock(), child.stdin.take()) {
            held.push(stdin);
        }
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout from part {index}"))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send((index, Some(l))).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send((index, None));
        });
        children.push(child);
    }
    drop(tx);
    // Stopping early: our standard input closing (with --control-stdin), or SIGINT/SIGTERM, closes
    // the parts' standard input; they shut their agents down and report. `status N` lines go to
    // the first part, whose agents measure.
    let closer = stdins.clone();
    let close_parts = move || {
        if let Ok(mut held) = closer.lock() {
            held.clear();
        }
    };
    if args.control_stdin {
        let close = close_parts.clone();
        let parts = stdins.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Ok(mut held) = parts.lock() {
                    if let Some(first) = held.first_mut() {
                        let _ = writeln!(first, "{}", line.trim());
                        let _ = first.flush();
                    }
                }
            }
            close();
        });
    }
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        close_parts();
    });
    let mut tally = Tally::default();
    let mut open = count;
    let mut enrollment_printed = false;
    let mut active_printed = false;
    while open > 0 {
        let Ok((part, line)) = rx.recv() else { break };
        let Some(line) = line else {
            open -= 1;
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        tally.take(part, &value);
        if args.progress && !enrollment_printed && tally.enrolled_parts == count {
            enrollment_printed = true;
            let mut e = tally.enrollment(args);
            e["phase"] = "enrolled".into();
            println!("{e}");
        }
        if args.progress && !active_printed && tally.active_parts == count {
            active_printed = true;
            println!(
                "{}",
                serde_json::json!({ "phase": "active", "all_active_ms": tally.active_at_ms.saturating_sub(tally.connect_since_ms), "connection_errors": tally.errors_until_active })
            );
        }
        if args.progress && value["phase"] == "status" {
            let mut s: Vec<f64> = value["lat_ms"].as_array().into_iter().flatten().filter_map(|v| v.as_f64()).collect();
            s.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{}",
                serde_json::json!({ "phase": "status", "p50_ms": round2(percentile(&s, 0.5)), "p99_ms": round2(percentile(&s, 0.99)) })
            );
        }
        let _ = std::io::stdout().flush();
    }
    let mut failed_parts = 0;
    for mut c in children {
        if !c.wait().is_ok_and(|s| s.success()) {
            failed_parts += 1;
        }
    }
    if let Some(path) = &args.keys_out {
        let keys: Vec<&String> = tally.keys.values().flatten().collect();
        let mut text = keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text)?;
    }
    let mut summary = tally.enrollment(args);
    summary["processes"] = count.into();
    if failed_parts > 0 {
        summary["failed_processes"] = failed_parts.into();
    }
    if !args.connect.is_empty() {
        for (k, v) in &tally.end {
            summary[k.as_str()] = (*v).into();
        }
        summary["all_active_ms"] = if tally.active_parts == count {
            tally.active_at_ms.saturating_sub(tally.connect_since_ms).into()
        } else {
            serde_json::Value::Null
        };
        if !tally.status.is_empty() {
            let mut s = tally.status.clone();
            s.sort_by(|a, b| a.total_cmp(b));
            summary["status_to_master_ms_p50"] = round2(percentile(&s, 0.5)).into();
            summary["status_to_master_ms_p99"] = round2(percentile(&s, 0.99)).into();
            summary["status_samples"] = s.len().into();
        }
    }
    let own = wazuh_cluster_tools::procstat::cpu_ms(None).unwrap_or(0);
    summary["sim_cpu_s"] = ((tally.cpu_ms + own) as f64 / 1000.0).into();
    Ok(summary)
}

fn print_text(summary: &serde_json::Value) {
    println!(
        "enrolled {} of {} in {} s: {} per second (first tenth {}, last tenth {}), p50 {} ms, p99 {} ms, {} errors {}",
        summary["enrolled"],
        summary["agents"],
        summary["elapsed_s"],
        summary["enroll_per_s"],
        summary["enroll_first10_per_s"],
        summary["enroll_last10_per_s"],
        summary["enroll_p50_ms"],
        summary["enroll_p99_ms"],
        summary["errors"],
        summary["error_kinds"]
    );
    if summary.get("active").is_some() {
        println!(
            "connections: {} active at the end (all active after {} ms), {} acks, {} pushes, {} events, {} reconnects, {} errors",
            summary["active"],
            summary["all_active_ms"],
            summary["acks"],
            summary["pushes"],
            summary["events_sent"],
            summary["reconnects"],
            summary["connection_errors"]
        );
    }
    if summary.get("status_to_master_ms_p50").is_some() {
        println!(
            "status change to master: p50 {} ms, p99 {} ms over {} samples",
            summary["status_to_master_ms_p50"], summary["status_to_master_ms_p99"], summary["status_samples"]
        );
    }
    println!("agent-sim CPU: {} s in {} processes", summary["sim_cpu_s"], summary["processes"]);
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(text) = args.part.clone() {
        let part = match Part::parse(&text, args.agents) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        };
        // A plain single-threaded runtime: tasks woken by the I/O driver are queued in place
        // (actix's LocalSet wakes its runtime through an eventfd write for each of them).
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run_part(args, part)));
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    match run_parent(&args) {
        Ok(summary) => {
            if args.json {
                println!("{summary}");
            } else {
                print_text(&summary);
            }
            let failed = summary["errors"].as_u64() != Some(0) || summary.get("failed_processes").is_some();
            if failed {
                std::process::ExitCode::from(1)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
