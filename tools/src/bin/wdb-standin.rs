//! A stand-in for wazuh-db's socket (`queue/db/wdb`) that speaks its wire format as Wazuh's
//! sources define it (a 4-byte little-endian length, then the query; answers `ok`, `err`, `due`),
//! keeps the agent ids it was given (`global insert-agent`, `global delete-agent`, and
//! `global get-all-agents last_id N` answered from them, in pages with `due` as wazuh-db does),
//! answers `ok` to every other query, and records what it was sent: each query on one line of
//! `--log` (optional), and every second its totals as one JSON line of `--stats` (queries and bytes
//! per command, agents held).
//!
//! For the process tests and `scripts/bench-scale.sh` (`--wazuh-db`): the node under test talks
//! to it as to wazuh-db.
//!
//!     wdb-standin --socket DIR/queue/db/wdb --log queries.log --stats stats.jsonl

use anyhow::Context;
use clap::Parser;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Where to listen (made, with its directory; a stale socket is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Write each query here, one per line.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Write the totals here every second, one JSON line each.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Agent ids `get-all-agents` answers per page (wazuh-db's answers are bounded too).
    #[arg(long, default_value_t = 1000)]
    page: usize,
}

#[derive(Default)]
struct State {
    agents: BTreeSet<u64>,
    /// Per command (`global update-keepalive`): queries, bytes.
    totals: BTreeMap<String, (u64, u64)>,
    connections: u64,
    log: Option<std::fs::File>,
}

/// The answer to one query, as wazuh-db answers it.
fn answer(state: &mut State, query: &str, page: usize) -> String {
    let mut words = query.splitn(3, ' ');
    let (db, command, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""), words.next().unwrap_or(""));
    let key = format!("{db} {command}");
    let entry = state.totals.entry(key).or_default();
    entry.0 += 1;
    entry.1 += query.len() as u64 + 4;
    if db != "global" {
        return "err Invalid DB query syntax".into();
    }
    match command {
        "insert-agent" => {
            let Ok(data) = serde_json::from_str::<serde_json::Value>(rest) else {
                return "err Invalid JSON syntax".into();
            };
            match data.get("id").and_then(serde_json::Value::as_u64) {
                Some(id) if state.agents.insert(id) => "ok".into(),
                Some(_) => "err Cannot execute SQL query; UNIQUE constraint failed: agent.id".into(),
                None => "err Invalid JSON data".into(),
            }
        }
        "delete-agent" => match rest.trim().parse::<u64>() {
            Ok(id) => {
                state.agents.remove(&id);
                "ok".into()
            }
            Err(_) => "err Invalid agent ID".into(),
        },
        "get-all-agents" => {
            let last: u64 = rest.strip_prefix("last_id ").and_then(|n| n.trim().parse().ok()).unwrap_or(0);
            let ids: Vec<u64> = state.agents.range(last + 1..).take(page).copied().collect();
            let more = state.agents.range(last + 1..).nth(page).is_some();
            let items: Vec<serde_json::Value> = ids.iter().map(|id| serde_json::json!({ "id": id })).collect();
            format!("{} {}", if more { "due" } else { "ok" }, serde_json::Value::Array(items))
        }
        _ => "ok".into(),
    }
}

async fn serve(mut stream: tokio::net::UnixStream, state: Arc<Mutex<State>>, page: usize) -> anyhow::Result<()> {
    loop {
        let mut header = [0u8; 4];
        if stream.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        let len = u32::from_le_bytes(header) as usize;
        anyhow::ensure!(len <= 1 << 20, "a query of {len} bytes");
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let query = String::from_utf8_lossy(&body).into_owned();
        let reply = {
            let mut state = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            if let Some(log) = state.log.as_mut() {
                writeln!(log, "{query}")?;
            }
            answer(&mut state, &query, page)
        };
        let mut out = (reply.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(reply.as_bytes());
        stream.write_all(&out).await?;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    let log = match &args.log {
        Some(path) => Some(std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?),
        None => None,
    };
    let state = Arc::new(Mutex::new(State { log, ..State::default() }));
    if let Some(path) = args.stats.clone() {
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(mut out) = std::fs::File::create(&path) else { return };
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let line = {
                    let Ok(mut s) = state.lock() else { return };
                    if let Some(log) = s.log.as_mut() {
                        let _ = log.flush();
                    }
                    let totals: BTreeMap<&String, serde_json::Value> = s
                        .totals
                        .iter()
                        .map(|(k, (n, b))| (k, serde_json::json!({ "queries": n, "bytes": b })))
                        .collect();
                    serde_json::json!({
                        "ms": wazuh_cluster_actors::clock::now_ms(),
                        "agents": s.agents.len(),
                        "connections": s.connections,
                        "totals": totals,
                    })
                };
                let _ = writeln!(out, "{line}");
            }
        });
    }
    eprintln!("wdb-standin: listening on {}", args.socket.display());
    loop {
        let (stream, _) = listener.accept().await?;
        if let Ok(mut s) = state.lock() {
            s.connections += 1;
        }
        let (state, page) = (state.clone(), args.page);
        tokio::spawn(async move {
            if let Err(e) = serve(stream, state, page).await {
                eprintln!("wdb-standin: a connection failed: {e}");
            }
        });
    }
}
