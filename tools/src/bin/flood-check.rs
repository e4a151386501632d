//! `flood-check`: the node under hostile clients that never authenticate, as release processes
//! started from the shipped configs (`deploy/`), on loopback, and the figures that show what the
//! node keeps bounded and what it keeps serving. Run by `scripts/flood-check.sh` (and `.ci/run`).
//!
//! Scenarios (each prints one line of figures; the bounds on memory and on "still served" are
//! asserted, times only loosely):
//!
//! - `signin`: 64, then 256 concurrent wrong sign-ins (HTTPS, 8 source addresses, for 8 s each):
//!   the master's resident memory grows by less than [`SIGNIN_RSS_BOUND_MIB`]; a real API call made
//!   meanwhile is answered.
//! - `agents`: 20,000 idle connections to a worker's 1514 from 9 addresses (two holder processes:
//!   one process may hold 20,000 files here): a real agent connects and is acknowledged, an
//!   enrollment through that worker is answered, the worker's API answers; no "too many open
//!   files" line.
//! - `agents-1024`: the same with the worker under `ulimit -n 1024` and 1,100 connections from one
//!   address.
//! - `api`: 1,000 TCP connections that never start TLS, 1,000 that stop in the middle of a
//!   ClientHello and 1,000 that finish TLS and never finish their request head, from four addresses:
//!   a real call is answered.
//!
//! `flood-check hold --target ADDR --from IP[,IP...] --count N [--kind idle|half-tls|slow-header]`
//! is the holder: it opens the connections, prints `held N`, and keeps them until its standard
//! input closes, then prints `open M` (how many the server had not closed).

use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use wazuh_cluster_tools::procstat;
use wazuh_cluster_tools::sim::{connector, enroll_over, parse_key, read_payload, SimAgent};
use wazuh_multi_node::client::{request_trusting, Trust};

/// What the sign-in floods may add to the master's resident memory.
const SIGNIN_RSS_BOUND_MIB: u64 = 100;
/// A legitimate call must be answered within this (loose: the goal is 1-2 s; the figure is printed).
const LOOSE: Duration = Duration::from_secs(10);
const API_TOKEN: &str = "flood-check-api-token-0123456789";
const PASSWORD: &str = "Flood-check-password-1";

#[derive(Parser, Debug)]
#[command(name = "flood-check", about = "Hostile-client floods against release nodes, with figures")]
struct Args {
    #[command(subcommand)]
    hold: Option<Hold>,
    /// The directory of the wazuh-cluster binary (default: this binary's).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The shipped configs.
    #[arg(long, default_value = "deploy")]
    deploy: PathBuf,
    /// Only these scenarios (signin, agents, agents-1024, api).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Hold {
    /// Open connections and hold them until standard input closes.
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, value_delimiter = ',')]
        from: Vec<String>,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "idle")]
        kind: String,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // This process (and its holders) may need many sockets.
    let _ = wazuh_cluster_actors::budget::set_open_files(None);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flood-check: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match args.hold {
        Some(Hold::Hold { target, from, count, kind }) => rt.block_on(holder(target, from, count, kind)),
        None => rt.block_on(run(&args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flood-check: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A connection a flood holds.
enum Held {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Held {
    /// Whether the server has not closed it (bytes waiting, such as TLS session tickets, are not a
    /// close).
    fn open(&self) -> bool {
        let mut buf = [0u8; 4096];
        let tcp = match self {
            Held::Tcp(s) => s,
            Held::Tls(s) => s.get_ref().0,
        };
        match tcp.try_read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Connections made at once by one holder.
const CONNECTING: usize = 128;

/// One connection of `kind` from `source` to `target`.
async fn one(target: SocketAddr, source: String, kind: String) -> Option<Held> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{source}:0").parse().ok()?).ok()?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await.ok()?.ok()?;
    match kind.as_str() {
        "half-tls" => {
            // A TLS record header that promises 512 bytes of ClientHello, then 5 of them.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03]).await.ok()?;
            Some(Held::Tcp(s))
        }
        "slow-header" => {
            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
            let mut tls =
                tokio::time::timeout(Duration::from_secs(5), connector().ok()?.connect(name, s)).await.ok()?.ok()?;
            tls.write_all(b"GET /agents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.ok()?;
            tls.flush().await.ok()?;
            Some(Held::Tls(Box::new(tls)))
        }
        _ => Some(Held::Tcp(s)),
    }
}

/// Opens `count` connections of `kind` to `target`, round robin over the `from` addresses,
/// [`CONNECTING`] at a time.
async fn hold(target: SocketAddr, from: &[String], count: usize, kind: &str) -> Vec<Held> {
    let mut held = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..count.min(next + CONNECTING))
            .map(|i| tokio::spawn(one(target, from[i % from.len().max(1)].clone(), kind.to_string())))
            .collect();
        next += batch.len();
        for t in batch {
            if let Ok(Some(h)) = t.await {
                held.push(h);
            }
        }
    }
    held
}

async fn holder(target: SocketAddr, from: Vec<String>, count: usize, kind: String) -> anyhow::Result<()> {
    let held = hold(target, &from, count, &kind).await;
    println!("held {}", held.len());
    std::io::stdout().flush()?;
    // Until the caller closes our standard input (read on a thread: it blocks).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.await;
    println!("open {}", held.iter().filter(|h| h.open()).count());
    Ok(())
}

/// A holder process.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    pid: u32,
}

impl Holder {
    fn start(me: &Path, target: SocketAddr, from: &[&str], count: usize, kind: &str) -> anyhow::Result<Holder> {
        let mut child = Command::new(me)
            .args(["hold", "--target", &target.to_string(), "--from", &from.join(","), "--count", &count.to_string()])
            .args(["--kind", kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
        Ok(Holder { child, stdin, out, pid })
    }

    /// Waits for `held N`.
    fn held(&mut self) -> anyhow::Result<usize> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        line.trim()
            .strip_prefix("held ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("holder said {line:?}"))
    }

    /// Closes its input; `open M` and its CPU time.
    fn finish(mut self) -> anyhow::Result<(usize, u64)> {
        let cpu = procstat::cpu_ms(Some(self.pid)).unwrap_or(0);
        self.stdin.take();
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let _ = self.child.wait();
        let open = line.trim().strip_prefix("open ").and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok((open, cpu))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node process started from a shipped config.
struct Node {
    name: String,
    child: Child,
    dir: PathBuf,
    api: SocketAddr,
    enrollment: SocketAddr,
    agents: SocketAddr,
    cluster: SocketAddr,
}

impl Node {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_mib(&self) -> u64 {
        procstat::rss_kib(self.pid()).unwrap_or(0) / 1024
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port below the ephemeral range.
fn free_port(next: &mut u16) -> u16 {
    loop {
        *next += 1;
        if std::net::TcpListener::bind(("127.0.0.1", *next)).is_ok() {
            return *next;
        }
    }
}

struct Cluster {
    bin: PathBuf,
    deploy: PathBuf,
    tmp: tempfile::TempDir,
    key: PathBuf,
    ports: u16,
}

impl Cluster {
    fn new(bin: PathBuf, deploy: PathBuf) -> anyhow::Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let key = tmp.path().join("cluster.key");
        let out = Command::new(bin.join("wazuh-cluster")).arg("keygen").output()?;
        anyhow::ensure!(out.status.success(), "wazuh-cluster keygen failed");
        std::fs::write(&key, &out.stdout)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let ports = 20_000 + (std::process::id() % 500) as u16 * 20;
        Ok(Cluster { bin, deploy, tmp, key, ports })
    }

    /// Starts `name` from `deploy/<config>` with loopback ports, `sets`, and an open-file limit.
    fn start(
        &mut self,
        config: &str,
        name: &str,
        master: Option<&Node>,
        sets: &[String],
        nofile: Option<u64>,
    ) -> anyhow::Result<Node> {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let (api, enrollment, agents, cluster) = (
            free_port(&mut self.ports),
            free_port(&mut self.ports),
            free_port(&mut self.ports),
            free_port(&mut self.ports),
        );
        // The shipped config, with an API user the sign-in flood can aim at.
        let hash = {
            let out = Command::new(self.bin.join("wazuh-cluster"))
                .arg("hash-password")
                .env("WMN_PASSWORD", PASSWORD)
                .output()?;
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let mut text = std::fs::read_to_string(self.deploy.join(config))?;
        text.push_str(&format!(
            "\n[[api.users]]\nname = \"flood-admin\"\npassword_hash = \"{hash}\"\nrole = \"administrator\"\n"
        ));
        let file = dir.join(config);
        std::fs::write(&file, text)?;
        let mut all = vec![
            format!("node.name={name}"),
            format!("node.data_dir={}", dir.join("data").display()),
            format!("cluster.key_file={}", self.key.display()),
            format!("cluster.bind=127.0.0.1:{cluster}"),
            format!("api.bind=127.0.0.1:{api}"),
            format!("enrollment.bind=127.0.0.1:{enrollment}"),
            format!("agents.bind=127.0.0.1:{agents}"),
            format!("api.token={API_TOKEN}"),
            "cluster.admission=open".to_string(),
        ];
        if let Some(m) = master {
            all.push(format!("cluster.master={}", m.cluster));
        }
        all.extend(sets.iter().cloned());
        let exe = self.bin.join("wazuh-cluster");
        let mut cmd = match nofile {
            // The limit a container's ulimits would give (lowered before exec, as a shell does).
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg("run").arg("--config").arg(&file);
        for s in &all {
            cmd.arg("--set").arg(s);
        }
        let log = std::fs::File::create(dir.join("node.log"))?;
        let child = cmd.env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn()?;
        let node = Node {
            name: name.to_string(),
            child,
            dir,
            api: format!("127.0.0.1:{api}").parse()?,
            enrollment: format!("127.0.0.1:{enrollment}").parse()?,
            agents: format!("127.0.0.1:{agents}").parse()?,
            cluster: format!("127.0.0.1:{cluster}").parse()?,
        };
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = api_call(node.api, "/health") {
                return Ok(node);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "{name} did not serve within 30 s:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One real API call over HTTPS (a fresh connection, as a script would), with the static token.
fn api_call(api: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    request_trusting(
        &Trust { ca_file: None, insecure: true },
        &format!("https://{api}"),
        "GET",
        path,
        Some(API_TOKEN),
        None,
    )
}

/// A real API call made from a blocking thread; its status and time.
async fn timed_call(api: SocketAddr) -> (Option<u16>, Duration) {
    let t0 = Instant::now();
    let answer = tokio::task::spawn_blocking(move || api_call(api, "/agents")).await;
    let status = match answer {
        Ok(Ok((s, _))) => Some(s),
        _ => None,
    };
    (status, t0.elapsed())
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => me.parent().map(Path::to_path_buf).ok_or_else(|| anyhow::anyhow!("no binary directory"))?,
    };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    println!(
        "flood-check: {} CPUs, open-file limit {:?}; the nodes, the holders and this process share them",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        wazuh_cluster_actors::budget::open_files_limit()?
    );
    if wanted("signin") {
        signin(Cluster::new(bin.clone(), args.deploy.clone())?).await?;
    }
    if wanted("agents") {
        agents(Cluster::new(bin.clone(), args.deploy.clone())?, &me, None, 20_000).await?;
    }
    if wanted("agents-1024") {
        agents(Cluster::new(bin.clone(), args.deploy.clone())?, &me, Some(1024), 1_100).await?;
    }
    if wanted("api") {
        api_floods(Cluster::new(bin, args.deploy.clone())?).await?;
    }
    println!("flood-check: all bounds held");
    Ok(())
}

/// Wrong sign-ins, `concurrency` at a time over 8 addresses for `secs` seconds; returns the answers
/// by status.
async fn wrong_signins(api: SocketAddr, concurrency: usize, secs: u64) -> std::collections::BTreeMap<u16, u64> {
    use base64ct::Encoding;
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let basic = base64ct::Base64::encode_string(b"flood-admin:not-the-password");
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let basic = basic.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts: std::collections::BTreeMap<u16, u64> = std::collections::BTreeMap::new();
            let source = format!("127.0.0.{}:0", 2 + i % 8);
            while Instant::now() < deadline {
                let Ok(socket) = TcpSocket::new_v4() else { break };
                let _ = socket.bind(source.parse().expect("address"));
                let Ok(tcp) = socket.connect(api).await else { continue };
                let Ok(name) = rustls::pki_types::ServerName::try_from("localhost") else { break };
                let Ok(c) = connector() else { break };
                let Ok(mut tls) = c.connect(name, tcp).await else {
                    *counts.entry(0).or_default() += 1;
                    continue;
                };
                let head = format!(
                    "POST /security/user/authenticate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if tls.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let mut answer = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer)).await;
                let status = String::from_utf8_lossy(&answer).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                *counts.entry(status).or_default() += 1;
            }
            counts
        }));
    }
    let mut all: std::collections::BTreeMap<u16, u64> = std::collections::BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap_or_default() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

async fn signin(mut c: Cluster) -> anyhow::Result<()> {
    // The block after 50 failures would stop the flood's Argon2 work at once; lifted here so that
    // what bounds the memory is the number of checks at once.
    let sets = ["api.max_login_attempts=1000000".to_string()];
    let master = c.start("master.toml", "signin-master", None, &sets, None)?;
    let start = master.rss_mib();
    for concurrency in [64, 256] {
        let before = master.rss_mib();
        let cpu_before = procstat::cpu_ms(None).unwrap_or(0);
        let flood = tokio::spawn(wrong_signins(master.api, concurrency, 8));
        let (mut peak, mut calls, mut failed) = (before, Vec::new(), 0);
        let started = Instant::now();
        while !flood.is_finished() {
            peak = peak.max(master.rss_mib());
            let (status, took) = timed_call(master.api).await;
            peak = peak.max(master.rss_mib());
            match status {
                Some(200) => calls.push(took),
                _ => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answers = flood.await.unwrap_or_default();
        let worst = calls.iter().max().copied().unwrap_or_default();
        println!(
            "signin {concurrency:>3} at once for {:.0} s: answers by status {answers:?}; master RSS {before} -> peak {peak} MiB (+{} MiB over its {start} MiB at start, bound {SIGNIN_RSS_BOUND_MIB}); a real GET /agents p50 {} max {} over {} calls, {failed} unanswered; flood-check CPU {} ms",
            started.elapsed().as_secs_f64(),
            peak.saturating_sub(start),
            millis(median(calls.clone())),
            millis(worst),
            calls.len(),
            procstat::cpu_ms(None).unwrap_or(0) - cpu_before,
        );
        anyhow::ensure!(
            peak.saturating_sub(before) < SIGNIN_RSS_BOUND_MIB,
            "sign-in flood: RSS grew {} MiB",
            peak - before
        );
        anyhow::ensure!(failed == 0 && worst < LOOSE, "sign-in flood: a real call failed or took {worst:?}");
    }
    Ok(())
}

/// What a legitimate peer got during a flood of the worker: a real agent's acknowledgement, an
/// enrollment's reply, the API's answer (each timed).
async fn legitimate(master: &Node, worker: &Node, n: u8) -> anyhow::Result<[Duration; 3]> {
    let from = |ip: &str| -> anyhow::Result<TcpSocket> {
        let s = TcpSocket::new_v4()?;
        s.bind(format!("{ip}:0").parse()?)?;
        Ok(s)
    };
    // An agent enrolled (through the master), then connecting to the flooded worker.
    let tcp = from("127.0.0.1")?.connect(master.enrollment).await?;
    let reply = enroll_over(connector()?, tcp, format!("OSSEC A:'real-agent-{n}'\n")).await?;
    let mut agent = SimAgent::from_key_line(&parse_key(&reply).ok_or_else(|| anyhow::anyhow!("no key: {reply}"))?)
        .ok_or_else(|| anyhow::anyhow!("a bad key line"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let mut s = tokio::time::timeout(LOOSE, from("127.0.0.20")?.connect(worker.agents)).await??;
    s.write_all(&agent.frame(b"#!-agent startup {\"version\":\"v4.14.7\"}")).await?;
    let ack = tokio::time::timeout(LOOSE, read_payload(&mut s)).await??;
    anyhow::ensure!(agent.open(&ack)? == b"#!-agent ack ", "the agent was not acknowledged");
    let agent_took = t0.elapsed();
    // An enrollment through the flooded worker.
    let t0 = Instant::now();
    let tcp = tokio::time::timeout(LOOSE, from("127.0.0.21")?.connect(worker.enrollment)).await??;
    let reply = tokio::time::timeout(LOOSE, enroll_over(connector()?, tcp, format!("OSSEC A:'flood-enrolled-{n}'\n")))
        .await??;
    anyhow::ensure!(parse_key(&reply).is_some(), "the enrollment was refused: {reply}");
    let enroll_took = t0.elapsed();
    // The worker's API.
    let (status, api_took) = timed_call(worker.api).await;
    anyhow::ensure!(status == Some(200), "the worker's API did not answer ({status:?})");
    Ok([agent_took, enroll_took, api_took])
}

async fn agents(mut c: Cluster, me: &Path, nofile: Option<u64>, connections: usize) -> anyhow::Result<()> {
    let master = c.start("master.toml", "agents-master", None, &[], None)?;
    // The flood may hold what it opened for as long as the measurement lasts (by default the
    // worker closes a connection that speaks for no agent after 30 s, and so the flood would
    // have to keep opening new ones: the same, at a higher cost to it).
    let worker =
        c.start("worker-1.toml", "agents-worker", Some(&master), &["agents.auth_timeout=300s".into()], nofile)?;
    // The worker is connected once the master lists it.
    let started = Instant::now();
    while !api_call(master.api, "/cluster/nodes").map(|(_, b)| b.contains("agents-worker")).unwrap_or(false) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the worker did not join:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let quiet = legitimate(&master, &worker, 0).await?;
    let (rss_before, files_before) = (worker.rss_mib(), worker.open_files());
    let sources: Vec<String> = (2..=10).map(|i| format!("127.0.0.{i}")).collect();
    let sources: Vec<&str> =
        if nofile.is_some() { vec!["127.0.0.2"] } else { sources.iter().map(String::as_str).collect() };
    // One process may hold only so many sockets: two holders for a large flood.
    let shares = if connections > 10_000 { 2 } else { 1 };
    let t0 = Instant::now();
    let mut holders = Vec::new();
    for _ in 0..shares {
        holders.push(Holder::start(me, worker.agents, &sources, connections / shares, "idle")?);
    }
    let mut made = 0;
    for h in &mut holders {
        made += h.held()?;
    }
    let flooded_in = t0.elapsed();
    let during = legitimate(&master, &worker, 1).await?;
    let (rss, files) = (worker.rss_mib(), worker.open_files());
    let mut open = 0;
    let mut holder_cpu = 0;
    for h in holders {
        let (o, cpu) = h.finish()?;
        open += o;
        holder_cpu += cpu;
    }
    let log = worker.log();
    let emfile = log.lines().filter(|l| l.contains("Too many open files")).count();
    let about = log.lines().filter(|l| l.contains("agent connections:")).count();
    let limit = nofile.map(|n| format!("ulimit -n {n}")).unwrap_or_else(|| "the hard open-file limit".into());
    println!(
        "agents{} ({limit}): {made} idle connections from {} address(es) made in {:.1} s; the worker held {open} of them and {files} open files ({files_before} before), RSS {rss_before} -> {rss} MiB; a real agent acknowledged in {} (quiet: {}), an enrollment answered in {} ({}), the worker's API in {} ({}); {emfile} 'too many open files' lines, {about} lines about the agent port; holders' CPU {holder_cpu} ms",
        nofile.map(|n| format!("-{n}")).unwrap_or_default(),
        sources.len(),
        flooded_in.as_secs_f64(),
        millis(during[0]),
        millis(quiet[0]),
        millis(during[1]),
        millis(quiet[1]),
        millis(during[2]),
        millis(quiet[2]),
    );
    anyhow::ensure!(during.iter().all(|d| *d < LOOSE), "a legitimate peer waited too long: {during:?}");
    anyhow::ensure!(emfile == 0, "the worker ran out of descriptors ({emfile} lines)");
    anyhow::ensure!(about <= 20, "{about} log lines about the flood");
    Ok(())
}

async fn api_floods(mut c: Cluster) -> anyhow::Result<()> {
    let master = c.start("master.toml", "api-master", None, &[], None)?;
    let sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let quiet: Vec<Duration> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(timed_call(master.api).await.1);
        }
        v
    };
    for (kind, n) in [("idle", 1_000), ("half-tls", 1_000), ("slow-header", 1_000)] {
        let t0 = Instant::now();
        let held = hold(master.api, &sources.map(String::from), n, kind).await;
        let made = t0.elapsed();
        let mut calls = Vec::new();
        for _ in 0..5 {
            let (status, took) = timed_call(master.api).await;
            anyhow::ensure!(status == Some(200), "a real call during the {kind} flood was not answered ({status:?})");
            calls.push(took);
        }
        let open = held.iter().filter(|h| h.open()).count();
        println!(
            "api {kind}: {} of {n} connections made from {} addresses in {:.1} s, {open} held by the master; a real GET /agents p50 {} max {} (quiet p50 {}); master RSS {} MiB",
            held.len(),
            sources.len(),
            made.as_secs_f64(),
            millis(median(calls.clone())),
            millis(calls.iter().max().copied().unwrap_or_default()),
            millis(median(quiet.clone())),
            master.rss_mib(),
        );
        anyhow::ensure!(calls.iter().all(|d| *d < LOOSE), "a real call took too long: {calls:?}");
        drop(held);
    }
    let lines = master.log().lines().filter(|l| l.contains("API:")).count();
    println!("api: {lines} log lines about the floods ({})", master.name);
    anyhow::ensure!(lines <= 20, "{lines} log lines about the API floods");
    Ok(())
}
