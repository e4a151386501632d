//! `bench-scale`: the cluster at Wazuh's QA shape, as separate processes on this machine.
//!
//! Starts a master and `--workers` workers from the release build (`deploy/` configurations, loopback
//! ports below 32768, a temporary data directory), then agent-sim with `--agents` agents enrolling
//! through every worker and reporting to them (keep-alive every `--keepalive` seconds), and
//! measures, printing one JSON object:
//! - enrollment: time and rate overall and over the first and the last tenth, latency, errors;
//! - the time until every agent is `active` on the master (from agent-sim's start), and the CPU
//!   time the master, the workers together and agent-sim used meanwhile (`burst_cpu`);
//! - a steady-state window: master and worker RSS (mean, max), each process's CPU, agent-sim's CPU,
//!   and the memory per connected agent on a worker (RSS in the window minus RSS before any agent,
//!   over the agents of a worker);
//! - status change on a worker -> visible on the master's API, p50 / p99 (agent-sim measures);
//! - a rule file written on the master -> the same bytes on every worker, p50 / p99 over rounds;
//! - `kill -9` of one worker -> its agents active again on the master through the others; then the
//!   same worker back with no agent, as a worker joining -> the time until the master's rebalancer
//!   has every worker within 20 % of the mean, and the moves it made;
//! - WARN and ERROR lines per node, before and after the kill, with the distinct messages.
//!
//! `bench-scale [--agents 50000] [--workers 25] [--keepalive 10] [--window 60] [--rule-rounds 10]`
//! (`scripts/bench-scale.sh` builds the release binaries and runs it).

use clap::Parser;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wazuh_cluster_tools::procstat;

#[derive(Parser, Debug)]
#[command(name = "bench-scale", about = "A master, N workers and many agents as processes on this machine")]
struct Args {
    #[arg(long, default_value_t = 50_000)]
    agents: usize,
    #[arg(long, default_value_t = 25)]
    workers: usize,
    /// Seconds between an agent's keep-alives.
    #[arg(long, default_value_t = 10.0)]
    keepalive: f64,
    /// Enrollments in flight at once (all agent-sim processes together).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of steady state measured for memory and CPU.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// Status-change measurements.
    #[arg(long, default_value_t = 100)]
    status_samples: usize,
    /// Rule-file propagation rounds.
    #[arg(long, default_value_t = 10)]
    rule_rounds: usize,
    /// Give up waiting for every agent to be active after this many seconds.
    #[arg(long, default_value_t = 900)]
    setup_timeout: u64,
    /// First port to try; every port used is below 32768 (the ephemeral range starts there).
    #[arg(long, default_value_t = 20_000)]
    base_port: u16,
    /// Where the binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The configurations to start from.
    #[arg(long, default_value = "deploy")]
    deploy: PathBuf,
    /// Events each agent sends per second (0: keep-alives only); the steady window then measures
    /// events archived per second by the workers and their CPU per 1,000 events.
    #[arg(long, default_value_t = 0.0)]
    events_per_s: f64,
    /// Bytes of each event's log line.
    #[arg(long, default_value_t = 256)]
    event_size: usize,
    /// Agents enrolled (through the workers, by agent-sim, never connected) before the measured
    /// enrollment starts: the registry the measured agents join.
    #[arg(long, default_value_t = 0)]
    prefill: usize,
    /// Calls of each API request timed on the master (median and maximum reported).
    #[arg(long, default_value_t = 5)]
    api_calls: usize,
    /// Keep the data directory (and the logs) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// The nodes' APIs over plain HTTP rather than HTTPS (their self-signed certificates, the
    /// default of a real node, which the API timings include by default).
    #[arg(long)]
    api_http: bool,
    /// The API sampled while the agents enroll and connect and in the steady window: one call every
    /// this many milliseconds, `GET /agents?limit=500` and `/agents/summary/status` in turn (0: off).
    #[arg(long, default_value_t = 250)]
    api_sample_ms: u64,
    /// Every agent connects from an address of its own in 127.0.0.0/8 (as agents behind many
    /// hosts do), so that the nodes' per-address caps do not shape the figures.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    spread_sources: bool,
    /// Each agent connects as soon as it is enrolled, while the others still enroll (the hard case:
    /// enrollment and the connection burst at once); `--overlap false`: all enroll first.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    overlap: bool,
    /// Workers hand events to a stand-in for wazuh-analysisd's queue (a Unix datagram socket per
    /// worker, read by this process) instead of writing the JSON archive; the event figures are then
    /// datagrams delivered, dropped and received.
    #[arg(long)]
    analysis: bool,
    /// After the killed worker rejoins: how long to wait for every worker to hold the mean within 20 %.
    #[arg(long, default_value_t = 180)]
    rebalance_wait: u64,
    /// With --analysis: each stand-in reads at most this many datagrams per second (0: as fast as
    /// it can), to show what a slow analysisd does to a worker (drops counted, memory bounded).
    #[arg(long, default_value_t = 0)]
    analysis_read_per_s: u64,
    /// The master keeps a wazuh-db stand-in's agent table in step (`manager.wazuh_db`, one pass per
    /// keep-alive interval); the figures say what it costs per agent per interval.
    #[arg(long)]
    wazuh_db: bool,
}

/// Workers started at once (the master takes 8 handshakes from one address at a time).
const WORKERS_AT_ONCE: usize = 6;

/// The wazuh-db stand-in (`wdb-standin`), stopped with the bench.
struct Standin(std::process::Child);

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The master's wazuh-db figures (`manager.wazuh_db` in /health).
fn wdb_figures(master_api: &str) -> serde_json::Value {
    get_json(master_api, "/health").map(|h| h["manager"]["wazuh_db"].clone()).unwrap_or_default()
}

/// Datagrams and bytes the analysisd stand-ins received.
#[derive(Default)]
struct Sink {
    datagrams: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// Binds a stand-in for analysisd's queue at `path` and reads it on a thread of its own.
fn analysis_sink(path: &Path, read_per_s: u64, sink: std::sync::Arc<Sink>) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let sock = std::os::unix::net::UnixDatagram::bind(path)?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        let started = Instant::now();
        let mut n = 0u64;
        while let Ok(k) = sock.recv(&mut buf) {
            n += 1;
            sink.datagrams.fetch_add(1, Relaxed);
            sink.bytes.fetch_add(k as u64, Relaxed);
            if read_per_s > 0 {
                let due = Duration::from_secs_f64(n as f64 / read_per_s as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    });
    Ok(())
}

/// Ports below 32768, each checked free when taken.
struct Ports(u16);

impl Ports {
    fn take(&mut self) -> anyhow::Result<u16> {
        while self.0 < 32_700 {
            let p = self.0;
            self.0 += 1;
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                return Ok(p);
            }
        }
        anyhow::bail!("no free port below 32700")
    }
}

struct Node {
    name: String,
    child: Child,
    api: u16,
    enroll: u16,
    agents: u16,
    data: PathBuf,
    log: PathBuf,
}

impl Node {
    fn api_url(&self) -> String {
        let scheme = if API_HTTPS.load(std::sync::atomic::Ordering::Relaxed) { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.api)
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn start_node(
    args: &Args,
    bin: &Path,
    dir: &Path,
    ports: &mut Ports,
    name: &str,
    master: bool,
    cluster_port: u16,
) -> anyhow::Result<Node> {
    let own = (ports.take()?, ports.take()?, ports.take()?);
    start_node_on(args, bin, dir, name, master, cluster_port, own, &format!("{name}.log"))
}

/// [`start_node`] on the given API, enrollment and agent ports, logging to `log` in `dir`.
#[allow(clippy::too_many_arguments)]
fn start_node_on(
    args: &Args,
    bin: &Path,
    dir: &Path,
    name: &str,
    master: bool,
    cluster_port: u16,
    (api, enroll, agents): (u16, u16, u16),
    log: &str,
) -> anyhow::Result<Node> {
    let data = dir.join(name);
    let log = dir.join(log);
    let config = args.deploy.join(if master { "master.toml" } else { "worker-1.toml" });
    let sets = [
        format!("node.name={name}"),
        format!("node.data_dir={}", data.display()),
        format!("cluster.key_file={}", dir.join("cluster.key").display()),
        format!("cluster.bind=127.0.0.1:{cluster_port}"),
        format!("cluster.master=127.0.0.1:{cluster_port}"),
        format!("api.bind=127.0.0.1:{api}"),
        format!("enrollment.bind=127.0.0.1:{enroll}"),
        format!("agents.bind=127.0.0.1:{agents}"),
        "log.level=info".to_string(),
        format!("api.token={API_TOKEN}"),
        format!("api.tls={}", !args.api_http),
        // A lab on loopback: workers join on the cluster key alone.
        "cluster.admission=open".to_string(),
    ];
    let mut sets = sets.to_vec();
    if args.wazuh_db && master {
        sets.push(format!("manager.wazuh_db={}", dir.join("wdb.sock").display()));
        sets.push(format!("manager.wazuh_db_interval={}s", args.keepalive.ceil().max(1.0) as u64));
    }
    if args.analysis && !master {
        sets.push(format!("analysis.queue={}", dir.join(format!("{name}-queue.sock")).display()));
        sets.push("agents.archive=false".to_string());
    }
    let mut cmd = Command::new(bin.join("wazuh-cluster"));
    cmd.arg("run").arg("--config").arg(&config);
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log)?).spawn()?;
    Ok(Node { name: name.to_string(), child, api, enroll, agents, data, log })
}

/// The API token of the bench's nodes (agent-sim reads it from WMN_API_TOKEN).
const API_TOKEN: &str = "bench-scale-api-token-0123456789";

fn get_json(base: &str, path: &str) -> Option<serde_json::Value> {
    match wazuh_multi_node::client::get(base, path, Some(API_TOKEN)) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds per call of the master's API requests an operator (or a scraper) makes, with
/// `total` agents registered: median and maximum of `calls` calls each.
fn api_timings(base: &str, calls: usize, total: usize) -> serde_json::Value {
    let deep = total.saturating_sub(500);
    let requests = [
        ("agents_first_page", "/agents".to_string()),
        ("agents_deep_offset", format!("/agents?offset={deep}&limit=500")),
        ("agents_sorted_by_name", "/agents?sort=name".to_string()),
        ("agents_sorted_by_name_deep", format!("/agents?sort=-name&offset={}", total / 2)),
        ("agents_active_on_a_node", "/agents?status=active&node_name=worker-01".to_string()),
        ("summary_status", "/agents/summary/status".to_string()),
        ("metrics", "/metrics".to_string()),
        ("healthcheck", "/cluster/actors".to_string()),
    ];
    let mut out = serde_json::Map::new();
    for (name, path) in requests {
        let mut ms = Vec::new();
        let mut failed = 0;
        for _ in 0..calls.max(1) {
            let t0 = Instant::now();
            match wazuh_multi_node::client::get(base, &path, Some(API_TOKEN)) {
                Ok((200, _)) => ms.push(t0.elapsed().as_secs_f64() * 1000.0),
                _ => failed += 1,
            }
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let mut v = serde_json::json!({
            "p50": round1(percentile(&ms, 0.5)), "max": round1(ms.last().copied().unwrap_or(0.0)),
        });
        if failed > 0 {
            v["failed"] = failed.into();
        }
        out.insert(name.to_string(), v);
    }
    out.into()
}

/// One API call the sampler made: seconds after the agents started, which call, milliseconds (or
/// `None`: it failed).
type ApiSample = (f64, &'static str, Option<f64>);

/// Samples the master's API on a thread of its own until `stop`: `GET /agents?limit=500` and
/// `/agents/summary/status` in turn, one call every `every`.
fn start_api_sampler(
    base: String,
    every: Duration,
    t0: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<ApiSample>> {
    std::thread::spawn(move || {
        let calls = [("agents_page_500", "/agents?limit=500"), ("summary_status", "/agents/summary/status")];
        let mut out = Vec::new();
        let mut turn = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (name, path) = calls[turn % calls.len()];
            turn += 1;
            let start = Instant::now();
            let ok = matches!(wazuh_multi_node::client::get(&base, path, Some(API_TOKEN)), Ok((200, _)));
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            out.push((start.duration_since(t0).as_secs_f64(), name, ok.then_some(ms)));
            std::thread::sleep(every.saturating_sub(start.elapsed()));
        }
        out
    })
}

/// p50 / p99 / max per call of the samples between `from` and `to` seconds, and the failed ones.
fn api_phase(samples: &[ApiSample], from: f64, to: f64) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for name in ["agents_page_500", "summary_status"] {
        let within: Vec<&ApiSample> = samples.iter().filter(|s| s.1 == name && s.0 >= from && s.0 <= to).collect();
        let mut ms: Vec<f64> = within.iter().filter_map(|s| s.2).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        out.insert(
            name.to_string(),
            serde_json::json!({
                "calls": within.len(), "failed": within.len() - ms.len(),
                "p50": round1(percentile(&ms, 0.5)), "p99": round1(percentile(&ms, 0.99)),
                "max": round1(ms.last().copied().unwrap_or(0.0)),
            }),
        );
    }
    out.into()
}

/// Status updates the master stored so far: its status inbox's `inbox_stored` (the same figure on
/// each worker's AgentInfo job), or, from a master without an inbox, the sum of those jobs'
/// `stored`; from its healthcheck.
fn statuses_stored(master: &str) -> u64 {
    let Some(h) = get_json(master, "/cluster/actors") else { return 0 };
    let nodes = h["data"]["affected_items"].as_array().cloned().unwrap_or_default();
    let (mut inbox, mut summed) = (None::<u64>, 0);
    for n in nodes {
        for a in n["actors"].as_array().into_iter().flatten() {
            if a["name"] == "AgentInfo" && a["end"] == "master" {
                if let Some(v) = a["details"]["inbox_stored"].as_u64() {
                    inbox = Some(inbox.unwrap_or(0).max(v));
                }
                summed += a["details"]["stored"].as_u64().unwrap_or(0);
            }
        }
    }
    inbox.unwrap_or(summed)
}

/// A figure of a node's agent connections, from its own healthcheck.
fn hub_figure(node: &Node, figure: &str) -> Option<u64> {
    get_json(&node.api_url(), "/cluster/actors")?["data"]["affected_items"][0]["agent_connections"][figure].as_u64()
}

/// Events archived so far by each of `nodes` (or, with `--analysis`, delivered to analysisd).
fn events_archived(nodes: &[Node]) -> Vec<u64> {
    let figure =
        if ANALYSIS.load(std::sync::atomic::Ordering::Relaxed) { "events_analysis" } else { "events_archived" };
    nodes.iter().map(|n| hub_figure(n, figure).unwrap_or(0)).collect()
}

/// Whether the nodes' APIs speak HTTPS (`--api-https`).
static API_HTTPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the run hands events to analysisd stand-ins (`--analysis`).
static ANALYSIS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The processes of agent-sim: the parent and its parts.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    out.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    out
}

/// Each node's CPU time so far, in milliseconds (0 for one that cannot be read).
fn node_cpu(nodes: &[Node]) -> Vec<u64> {
    nodes.iter().map(|n| procstat::cpu_ms(Some(n.pid())).unwrap_or(0)).collect()
}

fn cpu_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| procstat::cpu_ms(Some(*p))).sum()
}

/// WARN and ERROR lines of a log from line `from` on: count and distinct messages (without time).
fn log_problems(path: &Path, from: usize) -> (usize, usize, BTreeMap<String, u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut count, mut lines) = (0, 0);
    let mut kinds = BTreeMap::new();
    for l in text.lines() {
        lines += 1;
        if lines <= from {
            continue;
        }
        if l.contains(" WARN ") || l.contains(" ERROR ") {
            count += 1;
            // Without the timestamp and with digits folded, so that repeats group together.
            let msg: String = l
                .split_once(' ')
                .map_or(l, |(_, rest)| rest)
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            *kinds.entry(msg).or_default() += 1;
        }
    }
    (count, lines, kinds)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn say(text: &str) {
    eprintln!("[bench-scale] {text}");
}

fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let bin = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let tmp = tempfile::Builder::new().prefix("bench-scale-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let key = Command::new(bin.join("wazuh-cluster")).arg("keygen").output()?;
    anyhow::ensure!(key.status.success(), "keygen failed");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join("cluster.key"))?;
        f.write_all(&key.stdout)?;
    }
    let mut ports = Ports(args.base_port);
    let cluster_port = ports.take()?;
    let mut nodes = Vec::new();
    let result = measure(args, &bin, &dir, &mut ports, cluster_port, &mut nodes);
    // The workers first, as an operator stops a cluster: a worker whose master left first logs
    // each of its jobs failing.
    let first = 1.min(nodes.len());
    let (master, workers) = nodes.split_at_mut(first);
    for group in [workers, master] {
        for n in group.iter_mut() {
            if matches!(n.child.try_wait(), Ok(None)) {
                let _ = Command::new("kill").arg("-TERM").arg(n.pid().to_string()).status();
            }
        }
        for n in group.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(n.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // What did not stop within its 10 s is killed.
    for n in &mut nodes {
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    // WARN and ERROR lines over the whole run, start-up and teardown included.
    let result = result.map(|mut v| {
        let (mut total, mut kinds) = (0, BTreeMap::<String, u64>::new());
        for n in &nodes {
            let (count, _, k) = log_problems(&n.log, 0);
            total += count;
            for (m, c) in k {
                *kinds.entry(m).or_default() += c;
            }
        }
        let mut top: Vec<(String, u64)> = kinds.into_iter().collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.1));
        top.truncate(20);
        v["warn_error_lines"]["whole_run"] = serde_json::json!({ "total": total, "top": top });
        // Over the whole run: the killed worker's agents count theirs too.
        v["agent_sim_connection_errors_whole_run"] = v["agent_sim"]["connection_errors"].clone();
        v
    });
    if args.keep {
        let kept = tmp.keep();
        say(&format!("data and logs kept in {}", kept.display()));
    }
    result
}

fn measure(
    args: &Args,
    bin: &Path,
    dir: &Path,
    ports: &mut Ports,
    cluster_port: u16,
    nodes: &mut Vec<Node>,
) -> anyhow::Result<serde_json::Value> {
    ANALYSIS.store(args.analysis, std::sync::atomic::Ordering::Relaxed);
    API_HTTPS.store(!args.api_http, std::sync::atomic::Ordering::Relaxed);
    // The nodes' certificates are self-signed: the bench trusts them without checking.
    wazuh_multi_node::client::set_trust(wazuh_multi_node::client::Trust { ca_file: None, insecure: !args.api_http });
    let standin = if args.wazuh_db {
        let child = Command::new(bin.join("wdb-standin"))
            .arg("--socket")
            .arg(dir.join("wdb.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Some(Standin(child))
    } else {
        None
    };
    nodes.push(start_node(args, bin, dir, ports, "master", true, cluster_port)?);
    let master_api = nodes[0].api_url();
    anyhow::ensure!(
        wait_until(Duration::from_secs(30), || get_json(&master_api, "/cluster/nodes").is_some()),
        "the master did not start (see {})",
        nodes[0].log.display()
    );
    let sink = std::sync::Arc::new(Sink::default());
    let listed_now = || {
        get_json(&master_api, "/cluster/nodes").and_then(|v| v["data"]["total_affected_items"].as_u64()).unwrap_or(0)
    };
    for i in 1..=args.workers {
        let name = format!("worker-{i:02}");
        if args.analysis {
            analysis_sink(&dir.join(format!("{name}-queue.sock")), args.analysis_read_per_s, sink.clone())?;
        }
        nodes.push(start_node(args, bin, dir, ports, &name, false, cluster_port)?);
        // Every worker dials from 127.0.0.1, where real ones have addresses of their own: in groups
        // of WORKERS_AT_ONCE, each joined before the next, so that the master's per-address
        // handshake cap does not refuse them (a refused dial is a WARN line on both sides).
        if i % WORKERS_AT_ONCE == 0 {
            wait_until(Duration::from_secs(30), || listed_now() as usize > i);
        }
    }
    let expected = args.workers + 1;
    let listed = wait_until(Duration::from_secs(120), || {
        get_json(&master_api, "/cluster/nodes")
            .and_then(|v| v["data"]["total_affected_items"].as_u64())
            .is_some_and(|n| n as usize >= expected)
    });
    anyhow::ensure!(listed, "not every worker connected to the master within 120 s");
    say(&format!("master and {} workers up", args.workers));
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss: Vec<u64> = nodes.iter().map(|n| procstat::rss_kib(n.pid()).unwrap_or(0)).collect();

    // agent-sim: enrolls through every worker, connects to every worker.
    let enroll: Vec<String> = nodes[1..].iter().map(|n| format!("127.0.0.1:{}", n.enroll)).collect();
    let mut prefill = serde_json::Value::Null;
    if args.prefill > 0 {
        say(&format!("enrolling {} agents first (never connected)", args.prefill));
        let out = Command::new(bin.join("agent-sim"))
            .env("WMN_API_TOKEN", API_TOKEN)
            .env("WMN_API_INSECURE", if !args.api_http { "1" } else { "0" })
            .args(["--enroll", &enroll.join(","), "--agents", &args.prefill.to_string(), "--prefix", "prefill"])
            .args(["--concurrency", &args.concurrency.to_string(), "--json"])
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value =
            text.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_default();
        anyhow::ensure!(
            summary["enrolled"].as_u64() == Some(args.prefill as u64),
            "prefill: {} of {} enrolled ({})",
            summary["enrolled"],
            args.prefill,
            summary["error_kinds"]
        );
        let registered = wait_until(Duration::from_secs(120), || {
            get_json(&master_api, "/agents/summary/status")
                .and_then(|s| s["data"]["connection"]["total"].as_u64())
                .is_some_and(|n| n as usize >= args.prefill)
        });
        anyhow::ensure!(registered, "the master does not count the prefilled agents");
        prefill = serde_json::json!({
            "agents": args.prefill, "elapsed_s": summary["elapsed_s"], "per_s": summary["enroll_per_s"],
            "first10_per_s": summary["enroll_first10_per_s"], "last10_per_s": summary["enroll_last10_per_s"],
        });
        say(&format!("prefilled: {prefill}"));
    }
    let connect: Vec<String> = nodes[1..].iter().map(|n| format!("127.0.0.1:{}", n.agents)).collect();
    let burst_cpu0 = node_cpu(nodes);
    let sim_start = Instant::now();
    let stop_sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = (args.api_sample_ms > 0).then(|| {
        start_api_sampler(
            master_api.clone(),
            Duration::from_millis(args.api_sample_ms),
            sim_start,
            stop_sampling.clone(),
        )
    });
    let mut sim = Command::new(bin.join("agent-sim"))
        .env("WMN_API_TOKEN", API_TOKEN)
        .env("WMN_API_INSECURE", if !args.api_http { "1" } else { "0" })
        .args(["--enroll", &enroll.join(","), "--agents", &args.agents.to_string()])
        .args(["--concurrency", &args.concurrency.to_string(), "--connect", &connect.join(",")])
        .args(["--keepalive", &args.keepalive.to_string(), "--duration", "100000", "--api", &master_api])
        .args(["--events-per-s", &args.events_per_s.to_string(), "--event-size", &args.event_size.to_string()])
        .args(["--control-stdin", "--progress", "--json"])
        .args(args.spread_sources.then_some("--spread-sources"))
        .args(args.overlap.then_some("--connect-as-enrolled"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut sim_in = sim.stdin.take();
    let sim_out = sim.stdout.take().ok_or_else(|| anyhow::anyhow!("agent-sim has no stdout"))?;
    // agent-sim's lines, 1,024 at most: the reader waits (and agent-sim on its pipe) when full.
    let (tx, rx) = mpsc::sync_channel::<serde_json::Value>(1024);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(sim_out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let mut sim_lines: Vec<serde_json::Value> = Vec::new();
    let take_lines = |sim_lines: &mut Vec<serde_json::Value>| {
        while let Ok(v) = rx.try_recv() {
            sim_lines.push(v);
        }
    };
    let phase = |lines: &[serde_json::Value], p: &str| lines.iter().find(|v| v["phase"] == p).cloned();

    // Until every agent is active on the master.
    let mut all_active_s = None;
    let mut last_print = Instant::now();
    while sim_start.elapsed() < Duration::from_secs(args.setup_timeout) {
        take_lines(&mut sim_lines);
        let summary = get_json(&master_api, "/agents/summary/status");
        let active = summary.as_ref().and_then(|s| s["data"]["connection"]["active"].as_u64()).unwrap_or(0);
        if last_print.elapsed() > Duration::from_secs(10) {
            let total = summary.as_ref().and_then(|s| s["data"]["connection"]["total"].as_u64()).unwrap_or(0);
            say(&format!(
                "{:.0} s: {total} registered, {active} active on the master",
                sim_start.elapsed().as_secs_f64()
            ));
            last_print = Instant::now();
        }
        if active as usize >= args.agents {
            all_active_s = Some(sim_start.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    take_lines(&mut sim_lines);
    say(&format!("every agent active on the master after {all_active_s:?} s"));
    // Where the two cores went from agent-sim's start until every agent was active (or the limit).
    let burst_cpu1 = node_cpu(nodes);
    let burst_s = |ms: u64| round1(ms as f64 / 1000.0);
    let burst_cpu = serde_json::json!({
        "elapsed_s": round1(sim_start.elapsed().as_secs_f64()),
        "master_cpu_s": burst_s(burst_cpu1[0].saturating_sub(burst_cpu0[0])),
        "workers_cpu_s": burst_s(burst_cpu1[1..].iter().zip(&burst_cpu0[1..]).map(|(a, b)| a.saturating_sub(*b)).sum()),
        "agent_sim_cpu_s": burst_s(cpu_of(&process_tree(sim.id()))),
    });

    // Steady state: memory and CPU over the window.
    let sim_pids = process_tree(sim.id());
    let cpu0 = node_cpu(nodes);
    let sim_cpu0 = cpu_of(&sim_pids);
    let archived0 = events_archived(&nodes[1..]);
    let own_cpu0 = procstat::cpu_ms(None).unwrap_or(0);
    let sunk0 = sink.datagrams.load(std::sync::atomic::Ordering::Relaxed);
    let dropped0: u64 = nodes[1..].iter().filter_map(|n| hub_figure(n, "events_analysis_dropped")).sum();
    let stored0 = statuses_stored(&master_api);
    let wdb0 = wdb_figures(&master_api);
    let standin_cpu0 = standin.as_ref().and_then(|s| procstat::cpu_ms(Some(s.0.id()))).unwrap_or(0);
    let w0 = Instant::now();
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); nodes.len()];
    while w0.elapsed() < Duration::from_secs(args.window) {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(k) = procstat::rss_kib(n.pid()) {
                rss[i].push(k);
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let window_s = w0.elapsed().as_secs_f64();
    // The API during the burst (until every agent is active) and in the steady window.
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.and_then(|t| t.join().ok()).unwrap_or_default();
    let steady_from = w0.duration_since(sim_start).as_secs_f64();
    let api_during = serde_json::json!({
        "https": !args.api_http,
        "every_ms": args.api_sample_ms,
        "burst": api_phase(&samples, 0.0, all_active_s.unwrap_or(steady_from)),
        "steady": api_phase(&samples, steady_from, steady_from + window_s),
    });
    say(&format!("API while agents enroll and connect, and in the steady window: {api_during}"));
    let wdb1 = wdb_figures(&master_api);
    let standin_cpu = standin.as_ref().and_then(|s| procstat::cpu_ms(Some(s.0.id()))).unwrap_or(0) - standin_cpu0;
    let cpu1 = node_cpu(nodes);
    let archived1 = events_archived(&nodes[1..]);
    let own_cpu = procstat::cpu_ms(None).unwrap_or(0).saturating_sub(own_cpu0);
    let sunk = sink.datagrams.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(sunk0);
    let dropped: u64 = nodes[1..]
        .iter()
        .filter_map(|n| hub_figure(n, "events_analysis_dropped"))
        .sum::<u64>()
        .saturating_sub(dropped0);
    let stored = statuses_stored(&master_api).saturating_sub(stored0);
    let sim_cpu = cpu_of(&sim_pids).saturating_sub(sim_cpu0);
    let pct = |ms: u64| round1(ms as f64 / 10.0 / window_s);
    let mib = |k: f64| round1(k / 1024.0);
    let mean = |v: &[u64]| if v.is_empty() { 0.0 } else { v.iter().sum::<u64>() as f64 / v.len() as f64 };
    let master_rss = &rss[0];
    let worker_all: Vec<u64> = rss[1..].iter().flatten().copied().collect();
    let worker_means: Vec<f64> = rss[1..].iter().map(|v| mean(v)).collect();
    let idle_worker = mean(&idle_rss[1..]);
    let per_worker_agents = args.agents as f64 / args.workers.max(1) as f64;
    let per_agent_kib = (mean(&worker_all) - idle_worker) / per_worker_agents.max(1.0);
    let steady = serde_json::json!({
        "window_s": round1(window_s),
        "master_rss_mib": { "mean": mib(mean(master_rss)), "max": mib(master_rss.iter().copied().max().unwrap_or(0) as f64), "idle": mib(idle_rss[0] as f64) },
        "worker_rss_mib": { "mean": mib(mean(&worker_all)), "max": mib(worker_all.iter().copied().max().unwrap_or(0) as f64), "idle_mean": mib(idle_worker),
                             "min_of_means": mib(worker_means.iter().copied().fold(f64::MAX, f64::min)) },
        "worker_kib_per_connected_agent": round1(per_agent_kib),
        "master_cpu_pct": pct(cpu1[0] - cpu0[0]),
        "workers_cpu_pct_sum": pct(cpu1[1..].iter().zip(&cpu0[1..]).map(|(a, b)| a - b).sum()),
        "worker_cpu_pct_max": cpu1[1..].iter().zip(&cpu0[1..]).map(|(a, b)| pct(a - b)).fold(0.0, f64::max),
        "agent_sim_cpu_pct": pct(sim_cpu),
        "status_updates_stored_per_s": round1(stored as f64 / window_s),
        "master_cpu_us_per_status_update": if stored > 0 { round1((cpu1[0] - cpu0[0]) as f64 * 1000.0 / stored as f64) } else { 0.0 },
    });
    say(&format!("steady state: {steady}"));
    let mut wazuh_db = serde_json::Value::Null;
    if args.wazuh_db {
        let delta = |k: &str| wdb1[k].as_u64().unwrap_or(0).saturating_sub(wdb0[k].as_u64().unwrap_or(0));
        let passes = delta("passes").max(1);
        // Per agent, from the last pass of the window (the window's first pass may still insert
        // the agents enrolled just before it).
        let agents = wdb1["last_agents"].as_f64().unwrap_or(0.0).max(1.0);
        let per_agent = |figure: &str| (wdb1[figure].as_f64().unwrap_or(0.0) / agents * 10000.0).round() / 10000.0;
        wazuh_db = serde_json::json!({
            "interval_s": args.keepalive.ceil().max(1.0) as u64,
            "passes_in_window": delta("passes"),
            "missed_passes": delta("missed_passes"),
            "queries_per_pass": round1(delta("queries") as f64 / passes as f64),
            "rows_per_pass": round1(delta("rows_written") as f64 / passes as f64),
            "queries_per_agent_per_interval": per_agent("last_queries"),
            "last_pass": { "agents": wdb1["last_agents"], "rows": wdb1["last_rows"], "queries": wdb1["last_queries"],
                "bytes": wdb1["last_bytes"], "ms": wdb1["last_ms"] },
            "bytes_per_agent_per_interval": round1(per_agent("last_bytes")),
            "pass_us_per_agent": round1(per_agent("last_ms") * 1000.0),
            "errors": wdb1["errors"],
            "stand_in_cpu_pct": pct(standin_cpu),
        });
        say(&format!("wazuh-db: {wazuh_db}"));
    }
    let api = api_timings(&master_api, args.api_calls, args.agents + args.prefill);
    say(&format!("API on the master: {api}"));
    let mut events = serde_json::Value::Null;
    if args.events_per_s > 0.0 {
        let per_worker: Vec<f64> =
            archived1.iter().zip(&archived0).map(|(a, b)| a.saturating_sub(*b) as f64 / window_s).collect();
        let total: f64 = per_worker.iter().sum();
        let worker_cpu_ms: u64 = cpu1[1..].iter().zip(&cpu0[1..]).map(|(a, b)| a - b).sum();
        events = serde_json::json!({
            "offered_per_s": round1(args.events_per_s * args.agents as f64),
            "event_bytes": args.event_size,
            "archived_per_s": round1(total),
            "archived_per_s_per_worker_max": round1(per_worker.iter().copied().fold(0.0, f64::max)),
            "worker_cpu_ms_per_1000": if total > 0.0 { (worker_cpu_ms as f64 / (total * window_s / 1000.0) * 100.0).round() / 100.0 } else { 0.0 },
        });
        if args.analysis {
            // "archived" above counts datagrams the workers wrote to analysisd's queue.
            events["to_analysisd"] = serde_json::json!({
                "delivered_per_s": round1(total),
                "received_by_stand_in_per_s": round1(sunk as f64 / window_s),
                "dropped_per_s": round1(dropped as f64 / window_s),
                "stand_in_read_limit_per_s": args.analysis_read_per_s,
                "stand_in_cpu_pct": pct(own_cpu),
            });
        }
        say(&format!("events: {events}"));
    }

    // Status change: agent-sim measures on request.
    let mut status = serde_json::Value::Null;
    if let (Some(input), true) = (sim_in.as_mut(), args.status_samples > 0) {
        writeln!(input, "status {}", args.status_samples)?;
        input.flush()?;
        let deadline = Instant::now() + Duration::from_secs(60 + args.status_samples as u64);
        while Instant::now() < deadline {
            take_lines(&mut sim_lines);
            if let Some(s) = phase(&sim_lines, "status") {
                status = s;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    say(&format!("status change to the master: {status}"));

    // A rule file on every worker.
    let mut rule_ms = Vec::new();
    let rel = "etc/rules/bench_scale_rules.xml";
    for round in 0..args.rule_rounds {
        let content = format!(
            "<group name=\"bench,\">\n  <rule id=\"{}\" level=\"3\">\n    <match>bench round {round} {}</match>\n  </rule>\n</group>\n",
            100_000 + round,
            wazuh_cluster_actors::clock::now_ms()
        );
        let want = md5_hex(content.as_bytes());
        let target = nodes[0].data.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let t0 = Instant::now();
        std::fs::write(&target, &content)?;
        let mut pending: Vec<PathBuf> = nodes[1..].iter().map(|n| n.data.join(rel)).collect();
        while !pending.is_empty() && t0.elapsed() < Duration::from_secs(60) {
            pending.retain(|p| std::fs::read(p).map(|d| md5_hex(&d) != want).unwrap_or(true));
            std::thread::sleep(Duration::from_millis(5));
        }
        if pending.is_empty() {
            rule_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            say(&format!("round {round}: {} workers without the file after 60 s", pending.len()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    rule_ms.sort_by(|a, b| a.total_cmp(b));
    say(&format!("rule file on every worker: {rule_ms:?} ms"));

    // kill -9 of the last worker: its agents move to the others.
    let before_kill: Vec<(usize, usize, BTreeMap<String, u64>)> =
        nodes.iter().map(|n| log_problems(&n.log, 0)).collect();
    let mut failover_s = None;
    let mut moved_agents = 0;
    // Not with events: a worker killed with -9 loses what it received and had not written yet,
    // which would blur the count of events lost.
    if args.workers > 1 && args.events_per_s <= 0.0 {
        let victim = nodes.len() - 1;
        let name = nodes[victim].name.clone();
        let on_victim = get_json(&master_api, "/agents/summary/status")
            .and_then(|s| s["data"]["nodes"][name.as_str()]["active"].as_u64())
            .unwrap_or(0);
        moved_agents = on_victim;
        let t0 = Instant::now();
        nodes[victim].child.kill()?;
        let _ = nodes[victim].child.wait();
        while t0.elapsed() < Duration::from_secs(120) {
            if let Some(s) = get_json(&master_api, "/agents/summary/status") {
                let left = s["data"]["nodes"][name.as_str()]["active"].as_u64().unwrap_or(0);
                let active = s["data"]["connection"]["active"].as_u64().unwrap_or(0);
                if left == 0 && active as usize >= args.agents {
                    failover_s = Some(t0.elapsed().as_secs_f64());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        say(&format!("{on_victim} agents of {name} active through the others after {failover_s:?} s"));
    }

    // The killed worker comes back (the same address, in the agents' lists) with no agent: a worker
    // joining. The master's rebalancer gives it its share.
    let mut rebalance = serde_json::Value::Null;
    if failover_s.is_some() {
        let victim = nodes.len() - 1;
        let name = nodes[victim].name.clone();
        let own = (nodes[victim].api, nodes[victim].enroll, nodes[victim].agents);
        let moves_of =
            |b: &Option<serde_json::Value>, k: &str| b.as_ref().and_then(|b| b["data"][k].as_u64()).unwrap_or(0);
        let before = get_json(&master_api, "/cluster/balance");
        let t0 = Instant::now();
        let log = format!("{name}-rejoined.log");
        nodes.push(start_node_on(args, bin, dir, &name, false, cluster_port, own, &log)?);
        let workers: Vec<String> = nodes[1..victim + 1].iter().map(|n| n.name.clone()).collect();
        let mean = args.agents as f64 / args.workers as f64;
        let (low, high) = ((mean * 0.8).floor() as u64, (mean * 1.2).ceil() as u64);
        let mut balanced_s = None;
        let mut held: Vec<u64> = Vec::new();
        while t0.elapsed() < Duration::from_secs(args.rebalance_wait) {
            if let Some(s) = get_json(&master_api, "/agents/summary/status") {
                held = workers.iter().map(|w| s["data"]["nodes"][w.as_str()]["active"].as_u64().unwrap_or(0)).collect();
                if held.iter().all(|n| (low..=high).contains(n)) && held.iter().sum::<u64>() as usize >= args.agents {
                    balanced_s = Some(t0.elapsed().as_secs_f64());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let after = get_json(&master_api, "/cluster/balance");
        // null, not 0, when the master's view could not be read before or after.
        let read = before.is_some() && after.is_some();
        let moves = read.then(|| moves_of(&after, "moves").saturating_sub(moves_of(&before, "moves")));
        let batches = read.then(|| moves_of(&after, "batches").saturating_sub(moves_of(&before, "batches")));
        rebalance = serde_json::json!({
            "joined_worker": name, "balanced_s": balanced_s.map(round1), "wait_limit_s": args.rebalance_wait,
            "within": [low, high], "moves": moves, "batches": batches,
            "joined_holds": held.last().copied().unwrap_or(0),
            "min_active": held.iter().min().copied().unwrap_or(0), "max_active": held.iter().max().copied().unwrap_or(0),
        });
        say(&format!("rebalance after {name} joined: {rebalance}"));
    }

    // Stop agent-sim and read its summary.
    drop(sim_in.take());
    let deadline = Instant::now() + Duration::from_secs(120);
    let final_summary = loop {
        take_lines(&mut sim_lines);
        if let Some(v) = sim_lines.iter().find(|v| v.get("phase").is_none()).cloned() {
            break v;
        }
        if Instant::now() > deadline {
            break serde_json::Value::Null;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = sim.wait();
    if args.events_per_s > 0.0 {
        // Every event agent-sim sent must reach an archive.
        let sent = final_summary["events_sent"].as_u64().unwrap_or(0);
        let live = &nodes[1..];
        let mut archived = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(120) {
            archived = events_archived(live).iter().sum::<u64>();
            let dropped: u64 = live.iter().filter_map(|n| hub_figure(n, "events_analysis_dropped")).sum();
            if archived + dropped >= sent {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let waits: u64 = live.iter().filter_map(|n| hub_figure(n, "archive_waits")).sum();
        let dropped: u64 = live.iter().filter_map(|n| hub_figure(n, "events_analysis_dropped")).sum();
        events["sent"] = sent.into();
        events["archived"] = archived.into();
        // With --analysis: what a slow analysisd made the workers drop (counted, never waited for).
        events["dropped_for_analysisd"] = dropped.into();
        events["lost"] = sent.saturating_sub(archived + dropped).into();
        events["archive_waits"] = waits.into();
        say(&format!("events: {events}"));
    }

    let mut problems_before = serde_json::Map::new();
    let mut problems_after = serde_json::Map::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        // A worker that rejoined has a log of its own, read from its start.
        let from = match before_kill.get(i) {
            Some((before, lines, k)) => {
                problems_before.insert(n.name.clone(), (*before).into());
                for (m, c) in k {
                    *kinds.entry(m.clone()).or_default() += c;
                }
                *lines
            }
            None => 0,
        };
        let (after, _, k2) = log_problems(&n.log, from);
        let entry = problems_after.entry(n.name.clone()).or_insert(0.into());
        *entry = (entry.as_u64().unwrap_or(0) + after as u64).into();
        for (m, c) in k2 {
            *kinds.entry(format!("(after the kill) {m}")).or_default() += c;
        }
    }
    let mut top: Vec<(String, u64)> = kinds.into_iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    top.truncate(20);
    let enrolled = phase(&sim_lines, "enrolled").unwrap_or_default();
    Ok(serde_json::json!({
        "agents": args.agents,
        "workers": args.workers,
        "keepalive_s": args.keepalive,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "enrollment": {
            "elapsed_s": enrolled["elapsed_s"], "per_s": enrolled["enroll_per_s"],
            "first10_per_s": enrolled["enroll_first10_per_s"], "last10_per_s": enrolled["enroll_last10_per_s"],
            "p50_ms": enrolled["enroll_p50_ms"], "p99_ms": enrolled["enroll_p99_ms"],
            "enrolled": enrolled["enrolled"], "errors": enrolled["errors"], "error_kinds": enrolled["error_kinds"],
        },
        "prefill": prefill,
        "all_active_on_master_s": all_active_s.map(round1),
        "burst_cpu": burst_cpu,
        "api_ms": api,
        "api_during_ms": api_during,
        "agent_sim_connection_errors_until_all_active": phase(&sim_lines, "active").unwrap_or_default()["connection_errors"],
        "steady": steady,
        "status_change_ms": { "p50": status["p50_ms"], "p99": status["p99_ms"] },
        "rule_file_all_workers_ms": {
            "p50": round1(percentile(&rule_ms, 0.5)), "p99": round1(percentile(&rule_ms, 0.99)), "rounds": rule_ms.len(),
        },
        "events": events,
        "wazuh_db": wazuh_db,
        "failover": { "killed_worker_agents": moved_agents, "active_again_s": failover_s.map(round1) },
        "rebalance": rebalance,
        "warn_error_lines": { "before_kill": problems_before, "after_kill": problems_after, "top": top },
        "agent_sim": final_summary,
    }))
}
