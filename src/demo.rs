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

pub fn run(workers: usize, api_port: u16) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("wazuh-cluster-demo-")
        .tempdir()
        .context("cannot create a temporary data dir")?;
    let key = key::generate()?;
    // Changes through the API need a token; the demo makes one and prints it.
    let token = key::generate()?;
    let data_dir = dir.path().to_path_buf();
    let demo_user = DemoUser::new()?;
    let mut master_cfg =
        node_config(&data_dir, "master", "master", &key, &token, &[("api.bind", format!("127.0.0.1:{api_port}"))])?;
    demo_user.apply(&mut master_cfg);
    let psk = node::derive_psk(&master_cfg)?;
    let started = Instant::now();
    actix_rt::System::new().block_on(async move {
        let mut signals = node::Signals::install()?;
        let master = match node::start(&master_cfg, psk.clone()).await {
            Ok(m) => m,
            Err(e) if api_port != 0 => {
                warn!(node = "demo"; "{e:#}; using a free port for the master's API instead");
                master_cfg.api.bind = "127.0.0.1:0".parse()?;
                node::start(&master_cfg, psk.clone()).await?
            }
            Err(e) => return Err(e),
        };
        let node::NodeHandle::Master { cluster_addr, listener, .. } = &master.handle else {
            anyhow::bail!("the demo master did not start as a master");
        };
        // Workers join as in production: with a join token the master issues (one for all).
        let join = listener
            .send(wazuh_cluster_actors::master::IssueJoinToken { ttl: Duration::from_secs(600), uses: workers as u32 })
            .await
            .context("the master stopped")?
            .map_err(anyhow::Error::msg)?
            .token
            .reveal();
        let mut nodes: Vec<RunningNode> = Vec::new();
        for i in 1..=workers {
            let mut cfg = node_config(
                &data_dir,
                &format!("worker-{i}"),
                "worker",
                &key,
                &token,
                &[("cluster.master", cluster_addr.to_string()), ("cluster.join_token", join.clone())],
            )?;
            demo_user.apply(&mut cfg);
            nodes.push(node::start(&cfg, psk.clone()).await?);
        }
        // Wait (up to 10 s) until every worker is listed, then show the table as the API serves it.
        // The master's API speaks HTTPS with the certificate it made: trust that one.
        let ca_file = master_cfg.api.cert_file.clone();
        crate::client::set_trust(crate::client::Trust { ca_file: Some(ca_file.clone()), insecure: false });
        let api = format!("https://{}", master.api_addr);
        let mut body = serde_json::Value::Null;
        while started.elapsed() < Duration::from_secs(10) {
            let fetch = {
                let (api, token) = (api.clone(), token.clone());
                actix_rt::task::spawn_blocking(move || crate::client::get(&api, "/cluster/nodes", Some(&token)))
            };
            if let Ok(Ok((200, text))) = fetch.await {
                body = serde_json::from_str(&text).unwrap_or_default();
                if body["data"]["total_affected_items"].as_u64() == Some(workers as u64 + 1) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("\ndemo cluster up in {} ms (data dir {})", started.elapsed().as_millis(), data_dir.display());
        print!("{}", crate::report::nodes_table(&body));
        println!(
            "\nAPI user: wazuh / {}   (curl -k -u wazuh:{} -X POST {api}/security/user/authenticate)",
            demo_user.password, demo_user.password
        );
        println!("API token (every call but /health needs one): export WMN_API_TOKEN={token}");
        println!("the API's certificate (self-signed):   export WMN_API_CA={}", ca_file.display());
        println!("master API: {api}   try: wazuh-cluster nodes --api {api}   |   wazuh-cluster health --api {api}");
        println!(
            "enrollment: master {}{}",
            master.enrollment_addr,
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| format!(", worker-{} {}", i + 1, n.enrollment_addr))
                .collect::<String>()
        );
        println!(
            "agent connections: master {}{}",
            master.agents_addr,
            nodes.iter().enumerate().map(|(i, n)| format!(", worker-{} {}", i + 1, n.agents_addr)).collect::<String>()
        );
        println!("press Ctrl-C to stop\n");
        let signal = signals.recv().await;
        info!(node = "demo"; "{signal} received, stopping the demo cluster");
        // Workers first (their goodbyes reach a master still listening), all at once.
        futures_util::future::join_all(nodes.iter().map(|n| n.shutdown("demo stopping"))).await;
        master.shutdown("demo stopping").await;
        Ok(())
    })
}
