//! `wazuh-cluster demo`: a master and N workers in one process, on loopback, with a fresh key and a
//! temporary data directory, until Ctrl-C.

use crate::config::{Config, Sources};
use crate::node::{self, RunningNode};
use anyhow::Context as _;
use log::info;
use std::time::{Duration, Instant};
use wazuh_cluster_actors::master::ListWorkers;
use wazuh_cluster_protocol::key;

fn node_config(
    dir: &std::path::Path,
    name: &str,
    role: &str,
    key: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Config> {
    let mut overrides = vec![
        ("node.name".to_string(), name.to_string()),
        ("node.role".to_string(), role.to_string()),
        ("node.data_dir".to_string(), dir.join(name).display().to_string()),
        ("cluster.name".to_string(), "demo".to_string()),
        ("cluster.key".to_string(), key.to_string()),
    ];
    overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Ok(Config::load(&Sources { file: None, env: Vec::new(), overrides })?)
}

pub fn run(workers: usize, master_port: u16) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("wazuh-cluster-demo-")
        .tempdir()
        .context("cannot create a temporary data dir")?;
    let key = key::generate()?;
    let master_cfg =
        node_config(dir.path(), "master", "master", &key, &[("cluster.bind", format!("127.0.0.1:{master_port}"))])?;
    let psk = node::derive_psk(&master_cfg)?;
    let data_dir = dir.path().display().to_string();
    actix_rt::System::new().block_on(async move {
        let master = node::start(&master_cfg, psk.clone()).await?;
        let RunningNode::Master { listener, cluster_addr } = &master else {
            anyhow::bail!("the demo master did not start as a master");
        };
        let mut nodes = vec![];
        for i in 1..=workers {
            let cfg = node_config(
                std::path::Path::new(&data_dir),
                &format!("worker-{i}"),
                "worker",
                &key,
                &[("cluster.master", cluster_addr.to_string())],
            )?;
            nodes.push(node::start(&cfg, psk.clone()).await?);
        }
        let started = Instant::now();
        let connected = loop {
            let list = listener.send(ListWorkers).await.unwrap_or_default();
            if list.len() == workers || started.elapsed() > Duration::from_secs(10) {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("demo cluster up in {} ms; data dir {data_dir}", started.elapsed().as_millis());
        println!("{:<12} {:<8} {:<22} {:<9}", "NAME", "TYPE", "ADDRESS", "PROTOCOL");
        println!(
            "{:<12} {:<8} {:<22} {:<9}",
            "master",
            "master",
            cluster_addr.to_string(),
            wazuh_cluster_protocol::version::CURRENT.to_string()
        );
        for w in &connected {
            println!(
                "{:<12} {:<8} {:<22} {:<9}",
                w.peer.node_name,
                "worker",
                w.peer_addr.to_string(),
                w.version.to_string()
            );
        }
        println!("press Ctrl-C to stop");
        let signal = node::wait_for_signal().await;
        info!(node = "demo"; "{signal} received, stopping the demo cluster");
        for n in &nodes {
            n.shutdown("demo stopping");
        }
        master.shutdown("demo stopping");
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    })
}
