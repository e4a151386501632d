//! `wazuh-cluster demo`: a master and N workers in one process, on loopback, with a fresh key and a
//! temporary data directory, until Ctrl-C. The master's API is on the default 127.0.0.1:55000 (or
//! the port given), so `wazuh-cluster nodes` works beside it; every other port is picked free.

use crate::config::{Config, Sources};
use crate::node::{self, RunningNode};
use anyhow::Context as _;
use log::{info, warn};
use std::path::Path;
use std::time::{Duration, Instant};
use wazuh_cluster_protocol::key;

fn node_config(
    dir: &Path,
    name: &str,
    role: &str,
    key: &str,
    token: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Config> {
    let mut overrides = vec![
        ("node.name".to_string(), name.to_string()),
        ("node.role".to_string(), role.to_string()),
        ("node.data_dir".to_string(), dir.join(name).display().to_string()),
        ("cluster.name".to_string(), "demo".to_string()),
        ("cluster.key".to_string(), key.to_string()),
        ("api.token".to_string(), token.to_string()),
        ("cluster.bind".to_string(), "127.0.0.1:0".to_string()),
        ("api.bind".to_string(), "127.0.0.1:0".to_string()),
        ("enrollment.bind".to_string(), "127.0.0.1:0".to_string()),
        ("agents.bind".to_string(), "127.0.0.1:0".to_string()),
        ("cluster.intervals.keepalive".to_string(), "2s".to_string()),
        // Ctrl-C ends the demo at once: its workers drain their agents for 2 s at most.
        ("agents.drain_timeout".to_string(), "2s".to_string()),
    ];
    overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Ok(Config::load(&Sources { file: None, env: Vec::new(), overrides, host_name: None })?)
}

/// The demo's API user (an administrator) and the secret every node signs tokens with.
struct DemoUser {
    password: String,
    user: crate::auth::ApiUser,
    secret: String,
}

impl DemoUser {
    fn new() -> anyhow::Result<Self> {
        let generated = key::generate()?;
        let password = generated
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect::<String>();
        let user = crate::auth::ApiUser {
            name: "wazuh".into(),
            password_hash: crate::auth::hash_password(&password)?,
            role: crate::auth::ApiRole::Administrator,
        };
        Ok(Self { password, user, secret: key::generate()? })
    }

    fn apply(&self, cfg: &mut Config) {
        cfg.api.users = vec![self.user.clone()];
        cfg.api.secret = Some(self.secret.clone());
    }
}

/// `n` ports free on loopback now (for master-eligible nodes, which must know each other's
/// addresses before they start).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free ports on loopback")?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Runs the demo: `masters` master-eligible nodes (1: a single master, as in most clusters; 3 or
/// 5: a Raft group whose leader acts as the master) and `workers` workers.
pub fn run(workers: usize, masters: usize, api_port: u16) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(masters, 1 | 3 | 5), "--masters is 1, 3 or 5 (a majority must survive a loss)");
    let ha = masters > 1;
    let dir = tempfile::Builder::new()
        .prefix("wazuh-cluster-demo-")
        .tempdir()
        .context("cannot create a temporary data dir")?;
    let key = key::generate()?;
    // Changes through the API need a token; the demo makes one and prints it.
    let token = key::generate()?;
    let data_dir = dir.path().to_path_buf();
    let demo_user = DemoUser::new()?;
    // With several masters, workers join with a standing token every master knows (a token one
    // master issues is known to it alone).
    let standing = wazuh_cluster_protocol::identity::JoinToken::generate()?.reveal();
    let peers: Vec<String> =
        if ha { free_ports(masters)?.into_iter().map(|p| format!("127.0.0.1:{p}")).collect() } else { Vec::new() };
    let mut master_cfgs = Vec::new();
    for i in 0..masters {
        let name = if ha { format!("master-{}", i + 1) } else { "master".to_string() };
        let api = if i == 0 { format!("127.0.0.1:{api_port}") } else { "127.0.0.1:0".to_string() };
        let mut extra = vec![("api.bind", api)];
        if ha {
            extra.extend([
                ("cluster.bind", peers[i].clone()),
                ("cluster.masters", peers.join(",")),
                ("cluster.join_token", standing.clone()),
            ]);
        }
        let mut cfg = node_config(&data_dir, &name, "master", &key, &token, &extra)?;
        demo_user.apply(&mut cfg);
        master_cfgs.push(cfg);
    }
    let psk = node::derive_psk(&master_cfgs[0])?;
    let started = Instant::now();
    actix_rt::System::new().block_on(async move {
        let mut signals = node::Signals::install()?;
        let mut started_masters: Vec<RunningNode> = Vec::new();
        for (i, cfg) in master_cfgs.iter_mut().enumerate() {
            let node = match node::start(cfg, psk.clone()).await {
                Ok(m) => m,
                Err(e) if i == 0 && api_port != 0 => {
                    warn!(node = "demo"; "{e:#}; using a free port for the master's API instead");
                    cfg.api.bind = "127.0.0.1:0".parse()?;
                    node::start(cfg, psk.clone()).await?
                }
                Err(e) => return Err(e),
            };
            started_masters.push(node);
        }
        let node::NodeHandle::Master { cluster_addr, listener, .. } = &started_masters[0].handle else {
            anyhow::bail!("the demo master did not start as a master");
        };
        let join = if ha {
            standing.clone()
        } else {
            // Workers join as in production: with a join token the master issues (one for all).
            listener
                .send(wazuh_cluster_actors::master::IssueJoinToken {
                    ttl: Duration::from_secs(600),
                    uses: workers as u32,
                })
                .await
                .context("the master stopped")?
                .map_err(anyhow::Error::msg)?
                .token
                .reveal()
        };
        let to_master: Vec<(&str, String)> = if ha {
            vec![("cluster.masters", peers.join(",")), ("cluster.master", String::new())]
        } else {
            vec![("cluster.master", cluster_addr.to_string())]
        };
        let mut nodes: Vec<RunningNode> = Vec::new();
        for i in 1..=workers {
            let mut extra = to_master.clone();
            extra.push(("cluster.join_token", join.clone()));
            let mut cfg = node_config(&data_dir, &format!("worker-{i}"), "worker", &key, &token, &extra)?;
            // The users are the master's: a worker gets them from it (only the secret is shared).
            cfg.api.secret = Some(demo_user.secret.clone());
            nodes.push(node::start(&cfg, psk.clone()).await?);
        }
        // Wait (up to 15 s) until a master leads (the only one, or the one the Raft group elected)
        // and lists every worker, then show the table as its API serves it. The APIs speak HTTPS
        // with the certificate each made: trust that of the master shown.
        while started.elapsed() < Duration::from_secs(10) && !started_masters.iter().any(leads) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let shown = started_masters.iter().position(leads).unwrap_or(0);
        let ca_file = master_cfgs[shown].api.cert_file.clone();
        crate::client::set_trust(crate::client::Trust { ca_file: Some(ca_file.clone()), insecure: false });
        let api = format!("https://{}", started_masters[shown].api_addr);
        let mut body = serde_json::Value::Null;
        while started.elapsed() < Duration::from_secs(15) {
            let fetch = {
                let (api, token) = (api.clone(), token.clone());
                actix_rt::task::spawn_blocking(move || crate::client::get(&api, "/cluster/nodes", Some(&token)))
            };
            if let Ok(Ok((200, text))) = fetch.await {
                body = serde_json::from_str(&text).unwrap_or_default();
                let listed: Vec<&str> = body["data"]["affected_items"]
                    .as_array()
                    .map(|items| items.iter().filter_map(|i| i["name"].as_str()).collect())
                    .unwrap_or_default();
                // Every worker (and with several masters, the others follow the leader's files).
                if (1..=workers).all(|i| listed.contains(&format!("worker-{i}").as_str()))
                    && listed.len() == workers + masters
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let master = &started_masters[shown];
        println!("\ndemo cluster up in {} ms (data dir {})", started.elapsed().as_millis(), data_dir.display());
        print!("{}", crate::report::nodes_table(&body));
        if let Some(raft) = master.handle.raft_status() {
            let status = serde_json::json!({ "data": { "raft": raft } });
            print!("{}", crate::report::raft_table(&status));
            println!(
                "  master APIs: {}",
                started_masters.iter().map(|m| format!("https://{}", m.api_addr)).collect::<Vec<_>>().join(", ")
            );
        }
        println!(
            "\nAPI user: wazuh / {}   (curl -k -u wazuh:{} -X POST {api}/security/user/authenticate)",
            demo_user.password, demo_user.password
        );
        println!("API token (every call but /health needs one): export WMN_API_TOKEN={token}");
        println!("the API's certificate (self-signed):   export WMN_API_CA={}", ca_file.display());
        println!("master API: {api}   try: wazuh-cluster nodes --api {api}   |   wazuh-cluster health --api {api}");
        let name_of = |i: usize| if ha { format!("master-{}", i + 1) } else { "master".to_string() };
        let list = |addr: fn(&RunningNode) -> std::net::SocketAddr| {
            started_masters
                .iter()
                .enumerate()
                .map(|(i, m)| format!("{} {}", name_of(i), addr(m)))
                .chain(nodes.iter().enumerate().map(|(i, n)| format!("worker-{} {}", i + 1, addr(n))))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("enrollment: {}", list(|n| n.enrollment_addr));
        println!("agent connections: {}", list(|n| n.agents_addr));
        println!("press Ctrl-C to stop\n");
        let signal = signals.recv().await;
        info!(node = "demo"; "{signal} received, stopping the demo cluster");
        // Workers first (their goodbyes reach a master still listening), all at once.
        futures_util::future::join_all(nodes.iter().map(|n| n.shutdown("demo stopping"))).await;
        futures_util::future::join_all(started_masters.iter().map(|m| m.shutdown("demo stopping"))).await;
        Ok(())
    })
}

/// Whether `node` is the master: the only one, or the Raft leader.
fn leads(node: &RunningNode) -> bool {
    node.handle.leads()
}
