//! `wazuh-cluster`: run a node, check a config, make a key, or try a local cluster.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wazuh_multi_node::config::{parse_override, Config, LogFormat, Sources};
use wazuh_multi_node::{demo, logging, node};

#[derive(Parser)]
#[command(
    name = "wazuh-cluster",
    version,
    about = "Wazuh manager clustering: a master and workers over a secure channel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The node's TOML configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Override one setting, after the file and WMN_* environment variables (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_override)]
    set: Vec<(String, String)>,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node (master or worker, per the config) until SIGINT or SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Log as JSON lines instead of text (overrides log.format).
        #[arg(long)]
        json_logs: bool,
    },
    /// Validate a configuration and print the effective settings, secrets masked.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print a new random cluster key (256 bits).
    Keygen,
    /// Start a master and workers on loopback with a temporary data dir, until Ctrl-C.
    Demo {
        /// How many workers.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
        /// The master's cluster port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen => {
            println!("{}", wazuh_cluster_protocol::key::generate()?);
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&Sources::from_process(Some(config.config), config.set))?;
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!("# configuration is valid");
            print!("{}", cfg.to_masked_toml());
            Ok(())
        }
        Command::Run { config, json_logs } => {
            let mut cfg = Config::load(&Sources::from_process(Some(config.config), config.set))?;
            if json_logs {
                cfg.log.format = LogFormat::Json;
            }
            logging::init(cfg.log.format, &cfg.log.level, &cfg.node.name);
            for w in &cfg.warnings {
                log::warn!("{w}");
            }
            node::run(cfg)
        }
        Command::Demo { workers, port } => {
            logging::init(LogFormat::Text, "info", "demo");
            demo::run(workers as usize, port)
        }
    }
}
