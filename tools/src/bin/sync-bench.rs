//! `sync-bench`: the file synchronization benchmark.
//!
//! Generates a tree shaped like a Wazuh manager's (by default 50,037 files: rules, decoders, CDB lists
//! and 1,000 group directories under etc/shared), then measures, on this machine:
//! - cold local integrity (full scan and MD5 of every file, no previous manifest),
//! - warm scan (nothing changed),
//! - the ruleset check a master makes at its start (every rule, decoder and list file read and checked),
//! - single-change detection latency (a file written on the master -> a new manifest digest),
//! - one file propagated to every worker (p50, p99 over `--rounds` edits),
//! - a fresh worker's full sync (time and throughput), for `--workers` workers at once, repeated
//!   `--full-syncs` times, each next to a plain copy of the same tree to as many places (the disk's
//!   own speed, measured just before).
//!
//! Nothing is deleted until the end of the run: on a filesystem without a journal (this project's
//! CI machines), ext4 skips every inode freed in the last one to six minutes when it allocates a
//! new one, so creating files just after deleting many is CPU-bound in the kernel and would measure
//! that, not the sync. For the same reason, leave a few minutes between two runs.
//!
//! `cargo run --release --bin sync-bench -- [--files 50037] [--workers 2] [--full-syncs 3] [--rounds 30] [--json]`

use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wazuh_cluster_actors::manifest::scan;
use wazuh_cluster_actors::master::GetManifestDigest;
use wazuh_multi_node::config::{Config, Sources};
use wazuh_multi_node::node::{self, NodeHandle};

#[derive(Parser, Debug)]
#[command(name = "sync-bench", about = "File synchronization benchmark on a Wazuh-shaped tree")]
struct Args {
    /// Total files in the generated tree (the shape scales to it).
    #[arg(long, default_value_t = 50_037)]
    files: usize,
    /// Fresh workers to sync at once.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Fresh full syncs (each with its own plain copy); figures are medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    full_syncs: u32,
    /// Single-file propagation measurements.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Where to build the trees (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Deterministic pseudo-random text, XML-ish like rules and decoders.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "<rule id=\"",
        "level=\"",
        "<match>",
        "</match>",
        "<description>",
        "</description>",
        "sshd",
        "authentication",
        "failed",
        "<group>",
        "syscheck,",
        "pci_dss_10.2.4,",
        "\n  ",
        "\n",
        "<decoder name=\"",
        "<regex>",
        "</regex>",
        "^(\\S+) ",
    ];
    let mut out = Vec::with_capacity(len + 32);
    for x in numbers(seed) {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        out.extend_from_slice((x % 100_000).to_string().as_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic pseudo-random numbers (xorshift) from `seed`.
fn numbers(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

/// A rule or decoder file of about `len` bytes that passes the master's check (the text in a comment).
fn xml_file(seed: u64, len: usize) -> Vec<u8> {
    let mut out = format!("<group name=\"bench{seed}\">\n<!--\n").into_bytes();
    out.extend(content(seed, len.saturating_sub(out.len() + 14)));
    out.extend_from_slice(b"\n-->\n</group>\n");
    out
}

/// A CDB list of about `len` bytes (`key:value` lines).
fn list_file(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    for x in numbers(seed) {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(format!("10.{}.{}.{}:{}\n", x % 256, (x >> 8) % 256, (x >> 16) % 256, x % 7).as_bytes());
    }
    out
}

/// Wazuh's shape at 50,037 files: 3,000 rule files, 2,000 decoders, 37 CDB lists, and 1,000 groups
/// of 45 files each (agent.conf and rootcheck/SCA files; not merged.mg, which each node builds for
/// its own agents). Returns (files, bytes).
fn generate(root: &Path, total: usize) -> std::io::Result<(usize, u64)> {
    let scale = total as f64 / 50_037.0;
    let rules = (3_000.0 * scale) as usize;
    let decoders = (2_000.0 * scale) as usize;
    let lists = ((37.0 * scale) as usize).max(1);
    let groups = ((1_000.0 * scale) as usize).max(1);
    let per_group = (total.saturating_sub(rules + decoders + lists) / groups).max(1);
    let mut count = (0usize, 0u64);
    fn put(root: &Path, count: &mut (usize, u64), rel: String, data: Vec<u8>) -> std::io::Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        count.0 += 1;
        count.1 += data.len() as u64;
        std::fs::write(p, data)
    }
    for i in 0..rules {
        put(
            root,
            &mut count,
            format!("etc/rules/{:04}-rules_{i}.xml", i),
            xml_file(i as u64, 2_000 + (i * 37) % 9_000),
        )?;
    }
    for i in 0..decoders {
        put(
            root,
            &mut count,
            format!("etc/decoders/{:04}-decoders_{i}.xml", i),
            xml_file(10_000 + i as u64, 1_500 + (i * 53) % 6_000),
        )?;
    }
    for i in 0..lists {
        put(
            root,
            &mut count,
            format!("etc/lists/list_{i}"),
            list_file(20_000 + i as u64, 40_000 + (i * 1_000) % 40_000),
        )?;
    }
    let mut g = 0;
    while count.0 < total {
        let group = format!("etc/shared/group_{g:04}");
        for j in 0..per_group {
            if count.0 >= total {
                break;
            }
            let (name, len) = match j {
                0 => ("agent.conf".to_string(), 600),
                1 => ("cis_debian_linux_rcl.txt".to_string(), 4_000),
                _ => (format!("rootcheck_{j}.txt"), 300 + (j * 61) % 1_500),
            };
            put(root, &mut count, format!("{group}/{name}"), content(30_000 + (g * 100 + j) as u64, len))?;
        }
        g += 1;
    }
    Ok(count)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn node_config(dir: &Path, name: &str, role: &str, extra: &[(&str, String)]) -> anyhow::Result<Config> {
    let mut overrides: Vec<(String, String)> = [
        ("node.name", name.to_string()),
        ("node.role", role.to_string()),
        ("node.data_dir", dir.display().to_string()),
        ("cluster.key", "sync-bench-cluster-key-0123456789abcdef".to_string()),
        ("cluster.bind", "127.0.0.1:0".to_string()),
        ("api.bind", "127.0.0.1:0".to_string()),
        ("enrollment.bind", "127.0.0.1:0".to_string()),
        ("agents.bind", "127.0.0.1:0".to_string()),
        ("cluster.admission", "open".to_string()),
        ("api.tls", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Ok(Config::load(&Sources { file: None, env: Vec::new(), overrides, host_name: None })?)
}

async fn master_digest(handle: &NodeHandle) -> Option<(String, u64)> {
    match handle {
        NodeHandle::Master { listener, .. } => listener.send(GetManifestDigest).await.ok().flatten(),
        NodeHandle::Worker { .. } => None,
    }
}

async fn worker_in_sync(handle: &NodeHandle) -> bool {
    let NodeHandle::Worker { link, .. } = handle else { return false };
    let Ok(Some(info)) = link.send(wazuh_cluster_actors::worker::GetLink).await else { return false };
    info.jobs.iter().any(|j| j.name == "Integrity" && j.figure("in_sync") == Some(1))
}

/// Copies every file under `src` to each of `dsts` (one thread each), then syncs the filesystem;
/// returns the time taken. The copies stay until the end of the run (see the module's comment).
fn copy_baseline(src: &Path, dsts: &[PathBuf]) -> std::io::Result<Duration> {
    let files: Vec<PathBuf> = walkdir::WalkDir::new(src)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.path().strip_prefix(src).ok().map(Path::to_path_buf))
        .collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = dsts
            .iter()
            .map(|dst| {
                let files = &files;
                s.spawn(move || -> std::io::Result<()> {
                    for rel in files {
                        let to = dst.join(rel);
                        if let Some(parent) = to.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        std::fs::write(to, std::fs::read(src.join(rel))?)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("copy panicked"))))
    })?;
    wazuh_cluster_actors::files::sync_filesystem(src)?;
    Ok(t.elapsed())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let master_dir = base.join("master");
    let started = Instant::now();
    let (files, bytes) = generate(&master_dir, args.files)?;
    eprintln!(
        "generated {files} files ({:.1} MiB) in {:.1} s",
        bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    // Local integrity, cold and warm.
    let dir = master_dir.clone();
    let (cold, warm, checked, held) = actix_rt::task::spawn_blocking(move || {
        let t = Instant::now();
        let (m, _) = scan(&dir, None);
        let cold = t.elapsed();
        let mut warm = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let _ = scan(&dir, Some(&m));
            warm.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        warm.sort_by(|a, b| a.total_cmp(b));
        // What a master adds at its start: every rule, decoder and list file read and checked.
        let t = Instant::now();
        let (_, held) = wazuh_cluster_actors::manifest::hold_back(&dir, &m, None, &Default::default());
        (cold, warm, t.elapsed(), held.len())
    })
    .await?;
    eprintln!(
        "cold scan {:.0} ms, warm scan median {:.0} ms, ruleset check of every rule, decoder and list {:.0} ms ({held} held back)",
        ms(cold),
        percentile(&warm, 0.5),
        ms(checked)
    );
    anyhow::ensure!(held == 0, "{held} generated files failed the ruleset check");

    // A cluster: the master on the generated tree; fresh workers join it below.
    let master_cfg = node_config(&master_dir, "bench-master", "master", &[])?;
    let psk = node::derive_psk(&master_cfg)?;
    let master = node::start(&master_cfg, psk.clone()).await?;
    let NodeHandle::Master { cluster_addr, .. } = &master.handle else { anyhow::bail!("not a master") };
    let cluster_addr = *cluster_addr;
    // Wait for the master's first manifest.
    let wait_start = Instant::now();
    let (digest, _) = loop {
        if let Some(d) = master_digest(&master.handle).await {
            break d;
        }
        anyhow::ensure!(wait_start.elapsed() < Duration::from_secs(120), "the master never computed its manifest");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Fresh full syncs, each just after the disk's own speed on the same work: the tree copied
    // (read + write per file) to as many places as there are workers, at once, then one filesystem
    // sync. The last set of workers stays for the single-file rounds.
    let (mut syncs, mut copies, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut workers: Vec<node::RunningNode> = Vec::new();
    let mut worker_dirs = Vec::new();
    for n in 1..=args.full_syncs {
        let (src, dsts): (PathBuf, Vec<PathBuf>) =
            (master_dir.clone(), (1..=args.workers).map(|i| base.join(format!("copy-{n}-{i}"))).collect());
        let copy = actix_rt::task::spawn_blocking(move || copy_baseline(&src, &dsts)).await??;

        for w in workers.drain(..) {
            w.shutdown("next full sync").await;
        }
        worker_dirs.clear();
        let sync_start = Instant::now();
        for i in 1..=args.workers {
            let dir = base.join(format!("worker-{n}-{i}"));
            let name = format!("bench-worker-{n}-{i}");
            let cfg = node_config(&dir, &name, "worker", &[("cluster.master", cluster_addr.to_string())])?;
            workers.push(node::start(&cfg, psk.clone()).await?);
            worker_dirs.push(dir);
        }
        // Until every worker's Integrity job reports itself in sync (cheap to ask), then confirmed
        // by comparing the trees (not timed).
        let mut done = vec![None; workers.len()];
        while done.iter().any(Option::is_none) {
            for (i, w) in workers.iter().enumerate() {
                if done[i].is_none() && worker_in_sync(&w.handle).await {
                    done[i] = Some(sync_start.elapsed());
                }
            }
            anyhow::ensure!(
                sync_start.elapsed() < Duration::from_secs(600),
                "the workers never finished their full sync"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for dir in &worker_dirs {
            let d = dir.clone();
            let m = actix_rt::task::spawn_blocking(move || scan(&d, None).0).await?;
            anyhow::ensure!(m.digest() == digest, "{} differs from the master after its sync", dir.display());
        }
        let full_sync = done.iter().flatten().max().copied().unwrap_or_default();
        eprintln!(
            "full sync {n}: plain copy to {} places {:.0} ms, {} fresh workers fully synced in {:.0} ms",
            args.workers,
            ms(copy),
            args.workers,
            ms(full_sync)
        );
        ratios.push(full_sync.as_secs_f64() / copy.as_secs_f64().max(1e-9));
        syncs.push(ms(full_sync));
        copies.push(ms(copy));
    }
    let (all_syncs, all_copies) = (syncs.clone(), copies.clone());
    for v in [&mut syncs, &mut copies, &mut ratios] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let full_sync_ms = percentile(&syncs, 0.5);
    let throughput = bytes as f64 * args.workers as f64 / 1048576.0 / (full_sync_ms / 1000.0).max(1e-9);

    // One file: detection on the master, then arrival on every worker.
    let mut detect = Vec::new();
    let mut propagate = Vec::new();
    for r in 0..args.rounds {
        let rel = format!("etc/rules/{:04}-rules_{}.xml", r % 100, r % 100);
        let data = xml_file(900_000 + r as u64, 3_000);
        let before = master_digest(&master.handle).await.map(|d| d.0);
        let t = Instant::now();
        std::fs::write(master_dir.join(&rel), &data)?;
        let mut detected = None;
        loop {
            if detected.is_none() && master_digest(&master.handle).await.map(|d| d.0) != before {
                detected = Some(t.elapsed());
            }
            let arrived = worker_dirs.iter().all(|d| std::fs::read(d.join(&rel)).map(|c| c == data).unwrap_or(false));
            if arrived && detected.is_some() {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "a single file never arrived");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        propagate.push(t.elapsed().as_secs_f64() * 1000.0);
        detect.push(detected.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0));
    }
    detect.sort_by(|a, b| a.total_cmp(b));
    propagate.sort_by(|a, b| a.total_cmp(b));
    futures_util::future::join_all(workers.iter().map(|w| w.shutdown("benchmark done"))).await;
    master.shutdown("benchmark done").await;
    Ok(serde_json::json!({
        "files": files,
        "bytes": bytes,
        "cold_scan_ms": ms(cold),
        "warm_scan_ms_p50": percentile(&warm, 0.5),
        "cold_ruleset_check_ms": ms(checked),
        "change_detection_ms_p50": percentile(&detect, 0.5),
        "change_detection_ms_p99": percentile(&detect, 0.99),
        "one_file_to_every_worker_ms_p50": percentile(&propagate, 0.5),
        "one_file_to_every_worker_ms_p99": percentile(&propagate, 0.99),
        "workers": args.workers,
        "fresh_full_sync_ms": full_sync_ms,
        "fresh_full_sync_mib_per_s": (throughput * 10.0).round() / 10.0,
        "plain_copy_ms": percentile(&copies, 0.5),
        "fresh_full_sync_vs_plain_copy": (percentile(&ratios, 0.5) * 100.0).round() / 100.0,
        "fresh_full_syncs_ms": all_syncs,
        "plain_copies_ms": all_copies,
        "rounds": args.rounds,
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json = args.json;
    wazuh_multi_node::logging::init(wazuh_multi_node::config::LogFormat::Text, "warn", "sync-bench");
    match actix_rt::System::new().block_on(run(args)) {
        Ok(v) => {
            if json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
