//! `wazuh-cluster`: run a node, check a config, make a key, or try a local cluster.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wazuh_multi_node::config::{parse_override, Config, LogFormat, Sources};
use wazuh_multi_node::{client, demo, logging, node, report};

/// The local node's API.
const DEFAULT_API: &str = "https://127.0.0.1:55000";

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
    /// The node's TOML configuration file (none: the settings come from WMN_* environment
    /// variables and --set alone, as in a container).
    #[arg(long, short, value_name = "FILE", env = "WMN_CONFIG")]
    config: Option<PathBuf>,
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
    /// Rebuild a lost master registry from a worker's replica (the master stopped): every agent
    /// with its id, key and groups, the groups, the next id, and the replica's position.
    Recover {
        #[command(flatten)]
        config: ConfigArgs,
        /// A worker's replica database (its var/db/replica.db; the most advanced worker's).
        #[arg(long, value_name = "FILE")]
        from_replica: PathBuf,
    },
    /// Print a new random cluster key (256 bits).
    Keygen,
    /// Print a new set of cluster secrets as WMN_* variables, one per line: an env file for
    /// `podman-compose`/`docker compose` or `kubectl create secret generic --from-env-file`. The
    /// cluster key, a standing join token (the master admits new workers that show it), the API's
    /// token-signing secret and a static administrator API token. Keep it private (mode 0600).
    Secrets,
    /// Exit 0 if the node's API says it serves (GET /health), 1 otherwise: for a container
    /// engine's health check (the image has no shell or curl). Loopback's certificate is not checked.
    Probe {
        /// The node's API.
        #[arg(long, value_name = "URL", default_value = DEFAULT_API)]
        api: String,
    },
    /// Print an Argon2id hash of a password for api.users (the password from WMN_PASSWORD, or the
    /// first line of standard input).
    HashPassword,
    /// Start a master and workers on loopback with a temporary data dir, until Ctrl-C.
    Demo {
        /// How many workers.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
        /// Master-eligible nodes: 1 (a single master), or 3 or 5 (high availability: a Raft group
        /// whose leader acts as the master; stop the leader's process to see another take over).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
        masters: u16,
        /// The master's API port on 127.0.0.1 (0: any free port; if taken, a free one is used).
        #[arg(long, default_value_t = 55000)]
        api_port: u16,
    },
    /// List the cluster's nodes (GET /cluster/nodes).
    Nodes {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show every node's actors: state, runs, failures, restarts, last error (GET /cluster/actors).
    Health {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the agents (GET /agents), or delete one.
    Agents {
        #[command(subcommand)]
        action: Option<AgentsAction>,
        #[command(flatten)]
        api: ApiArgs,
        /// Include each agent's key (one explicit GET /agents/{id}/key per agent).
        #[arg(long)]
        keys: bool,
    },
    /// Issue a join token on the master (POST /cluster/join-tokens): a new worker sets it as
    /// cluster.join_token for its first connection.
    JoinToken {
        /// How long the token is valid, in seconds (60 .. 2592000).
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(
            wazuh_cluster_actors::admission::TOKEN_TTL.0.as_secs()..=wazuh_cluster_actors::admission::TOKEN_TTL.1.as_secs()))]
        ttl: u64,
        /// How many workers may join with it (1 .. 1000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=wazuh_cluster_actors::admission::MAX_TOKEN_USES as i64))]
        uses: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Have every node's analysisd reload the ruleset, each worker once its files reached the
    /// master's (PUT /cluster/analysisd/reload on the master).
    Ruleset {
        #[command(subcommand)]
        action: RulesetAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Drain a worker (PUT /cluster/{name}/drain, through any node): it stops taking agents, asks
    /// its agents to reconnect elsewhere, waits for them (agents.drain_timeout at most) and stops,
    /// as on SIGTERM; its supervisor decides whether it starts again.
    Drain {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a worker's identity on the master: its connection closes and it cannot join again
    /// (POST /cluster/nodes/{name}/revoke). The cluster key stays as it is.
    Revoke {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List, create and delete groups; assign agents to them.
    Groups {
        #[command(subcommand)]
        action: Option<GroupsAction>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum RulesetAction {
    /// Reload the ruleset on every node (the master, then each worker once in sync).
    Reload,
}

#[derive(Subcommand)]
enum AgentsAction {
    /// Counts by status, configuration status and node (GET /agents/summary/status).
    Summary,
    /// Delete an agent (on the master; a worker's API forwards it).
    Delete { id: String },
    /// Show one agent with its key (GET /agents/{id}/key).
    Key { id: String },
    /// Send `#!-force_reconnect` to agents (all, or the IDs given), e.g. to rebalance them.
    Reconnect {
        /// Only agents connected to this node.
        #[arg(long)]
        node: Option<String>,
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum GroupsAction {
    List,
    Create {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Add an agent to a group.
    Assign {
        id: String,
        group: String,
    },
    /// Remove an agent from a group.
    Unassign {
        id: String,
        group: String,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// The node's API.
    #[arg(long, value_name = "URL", default_value = DEFAULT_API, global = true)]
    api: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The API token (a user's token, or api.token of the node); every call but /health needs one.
    #[arg(long, env = "WMN_API_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Trust this certificate (PEM) for https: the node's var/api.crt when it is self-signed.
    #[arg(long, env = "WMN_API_CA", value_name = "FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Trust any certificate (as curl -k).
    #[arg(long, short = 'k', global = true)]
    insecure: bool,
    /// Sign in as this API user instead (password from WMN_API_PASSWORD, or asked for); the token
    /// is kept in a 0600 file under ~/.cache/wazuh-cluster until it expires.
    #[arg(long, env = "WMN_API_USER", global = true)]
    user: Option<String>,
}

/// The bearer credential for `args`: `--token`, or a token for `--user` (cached, or signed in now).
fn cred(args: &ApiArgs) -> anyhow::Result<Option<String>> {
    client::set_trust(client::Trust {
        ca_file: args.ca_file.clone(),
        insecure: args.insecure || std::env::var("WMN_API_INSECURE").is_ok_and(|v| v == "1" || v == "true"),
    });
    if args.token.is_some() {
        return Ok(args.token.clone());
    }
    let Some(user) = &args.user else { return Ok(None) };
    let cache = token_cache(&args.api, user);
    if let Some(token) = cache.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        if token_valid_for_a_while(token.trim()) {
            return Ok(Some(token.trim().to_string()));
        }
    }
    let password = password_from("WMN_API_PASSWORD", Some(&format!("password for {user} at {}: ", args.api)))?;
    let token = client::authenticate(&args.api, user, &password)?;
    if let Some(path) = cache {
        // Best effort: without a cache the next command signs in again.
        let _ = wazuh_cluster_actors::secret::write_private(&path, token.as_bytes());
    }
    Ok(Some(token))
}

/// `~/.cache/wazuh-cluster/token-<api>-<user>` (a name safe for the file system).
fn token_cache(api: &str, user: &str) -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME")?;
    let safe: String =
        format!("{api}-{user}").chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    Some(std::path::PathBuf::from(home).join(".cache/wazuh-cluster").join(format!("token-{safe}")))
}

/// A password from the environment variable `var`, else the first line of standard input (after
/// `prompt` on standard error, if any).
fn password_from(var: &str, prompt: Option<&str>) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(var) {
        return Ok(p);
    }
    if let Some(prompt) = prompt {
        eprint!("{prompt}");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Whether a cached token has more than a minute left (read from its `exp`, not checked: the API
/// checks it).
fn token_valid_for_a_while(token: &str) -> bool {
    use base64ct::Encoding;
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|p| base64ct::Base64UrlUnpadded::decode_vec(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["exp"].as_u64());
    exp.is_some_and(|e| e > wazuh_multi_node::auth::now_s() + 60)
}

/// jemalloc rather than the C library's allocator: see the dependency's comment in Cargo.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        Command::Probe { api } => {
            let trust = client::Trust { ca_file: None, insecure: true };
            let (status, body) = client::request_trusting(&trust, &api, "GET", "/health", None, None)?;
            anyhow::ensure!(status == 200, "{api}/health answered {status}: {}", body.trim());
            println!("{}", body.trim());
            Ok(())
        }
        Command::HashPassword => {
            let password = password_from("WMN_PASSWORD", None)?;
            anyhow::ensure!(password.len() >= 8, "a password needs at least 8 characters");
            println!("{}", wazuh_multi_node::auth::hash_password(&password)?);
            Ok(())
        }
        Command::Keygen => {
            println!("{}", wazuh_cluster_protocol::key::generate()?);
            Ok(())
        }
        Command::Secrets => {
            use wazuh_cluster_protocol::identity::JoinToken;
            println!("# wazuh-multi-node secrets (wazuh-cluster secrets): the same on every node; keep private.");
            println!("WMN_CLUSTER__KEY={}", wazuh_cluster_protocol::key::generate()?);
            println!("WMN_CLUSTER__JOIN_TOKEN={}", JoinToken::generate()?.reveal());
            println!("WMN_API__SECRET={}", wazuh_cluster_protocol::key::generate()?);
            println!("WMN_API__TOKEN={}", wazuh_cluster_protocol::key::generate()?);
            Ok(())
        }
        Command::Recover { config, from_replica } => {
            let cfg = Config::load(&Sources::from_process(config.config, config.set))?;
            anyhow::ensure!(
                cfg.node.role == wazuh_cluster_protocol::Role::Master,
                "recover rebuilds a master's registry: node.role is not master"
            );
            let done = wazuh_cluster_actors::registry::master::Registry::recover_from_replica(
                &cfg.node.data_dir,
                &from_replica,
            )?;
            println!(
                "recovered {} agents, {} groups and {} API users into {} (position {}, generation {}); start the master",
                done.agents,
                done.groups,
                done.users,
                cfg.node.data_dir.display(),
                done.seq,
                done.generation
            );
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&Sources::from_process(config.config, config.set))?;
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!("# configuration is valid");
            // What the open-file limit gives, as the node would split it (the limit of this
            // process: a service manager's LimitNOFILE or a container's ulimits may differ).
            let (soft, hard) = wazuh_cluster_actors::budget::open_files_limit()?;
            let limit = cfg.node.max_open_files.unwrap_or(hard).min(hard);
            match wazuh_cluster_actors::budget::Budget::plan(limit, cfg.node.role, cfg.api.max_connections as u64) {
                Ok(budget) => {
                    println!("# {} (soft {soft}, hard {hard} here)", budget.describe());
                    if let Some(n) = cfg.agents.max_connections.filter(|n| *n < budget.agents) {
                        println!("# agents.max_connections holds agent connections at {n}");
                    }
                }
                Err(e) => anyhow::bail!("node.max_open_files / nofile: {e}"),
            }
            let on = cfg.manager.enabled();
            if on.is_empty() {
                println!("# manager integrations: none on (see [manager])");
            }
            for (name, path) in on {
                println!("# manager integration on: {name} at {}", path.display());
            }
            print!("{}", cfg.to_masked_toml());
            Ok(())
        }
        Command::Run { config, json_logs } => {
            let mut cfg = Config::load(&Sources::from_process(config.config, config.set))?;
            if json_logs {
                cfg.log.format = LogFormat::Json;
            }
            logging::init(cfg.log.format, &cfg.log.level, &cfg.node.name);
            for w in &cfg.warnings {
                log::warn!("{w}");
            }
            node::run(cfg)
        }
        Command::Demo { workers, masters, api_port } => {
            logging::init(LogFormat::Text, "info", "demo");
            demo::run(workers as usize, masters as usize, api_port)
        }
        Command::Nodes { api } => {
            show(&api, "/cluster/nodes", report::nodes_table)?;
            if !api.json {
                // High availability: which master-eligible node leads, the term, each member.
                let (status, body) = client::request(&api.api, "GET", "/cluster/status", cred(&api)?.as_deref(), None)?;
                let value = answer(&api, status, "/cluster/status", &body)?;
                print!("{}", report::raft_table(&value));
                // Agents per worker and the rebalancer's state (a master too old to say: nothing).
                let (status, body) =
                    client::request(&api.api, "GET", "/cluster/balance", cred(&api)?.as_deref(), None)?;
                if status == 200 {
                    let value = answer(&api, status, "/cluster/balance", &body)?;
                    print!("{}", report::balance_table(&value));
                }
            }
            Ok(())
        }
        Command::Health { api } => show(&api, "/cluster/actors", report::health_table),
        Command::Agents { action: None, api, keys } => show_all_agents(&api, keys),
        Command::Agents { action: Some(AgentsAction::Summary), api, .. } => {
            show(&api, "/agents/summary/status", report::summary_table)
        }
        Command::Agents { action: Some(AgentsAction::Delete { id }), api, .. } => {
            mutate(&api, "DELETE", &format!("/agents/{id}"), None)
        }
        Command::Agents { action: Some(AgentsAction::Key { id }), api, .. } => {
            show(&api, &format!("/agents/{id}/key"), report::agents_table)
        }
        Command::JoinToken { ttl, uses, api } => {
            let (status, body) = client::request(
                &api.api,
                "POST",
                &format!("/cluster/join-tokens?ttl={ttl}&uses={uses}"),
                cred(&api)?.as_deref(),
                None,
            )?;
            let value = answer(&api, status, "/cluster/join-tokens", &body)?;
            if api.json {
                println!("{}", body.trim());
            } else {
                println!("{}", value["data"]["token"].as_str().unwrap_or_default());
                eprintln!(
                    "valid until {} for {} worker(s): set it as cluster.join_token on the new worker",
                    value["data"]["expires"].as_str().unwrap_or("?"),
                    value["data"]["uses"]
                );
            }
            Ok(())
        }
        Command::Ruleset { action: RulesetAction::Reload, api } => {
            let path = "/cluster/analysisd/reload";
            let (status, body) = client::request(&api.api, "PUT", path, cred(&api)?.as_deref(), None)?;
            let value = answer(&api, status, path, &body)?;
            if api.json {
                println!("{}", body.trim());
            } else {
                for item in value["data"]["affected_items"].as_array().into_iter().flatten() {
                    println!(
                        "{}: reloaded ({})",
                        item["name"].as_str().unwrap_or("?"),
                        item["message"].as_str().unwrap_or("")
                    );
                }
                for item in value["data"]["failed_items"].as_array().into_iter().flatten() {
                    println!(
                        "{}: NOT reloaded: {}",
                        item["id"][0].as_str().unwrap_or("?"),
                        wazuh_cluster_protocol::agent::enrollment::printable(
                            item["error"]["message"].as_str().unwrap_or("")
                        )
                    );
                }
            }
            anyhow::ensure!(value["error"] == 0, "the ruleset was not reloaded everywhere");
            Ok(())
        }
        Command::Drain { name, api } => mutate(&api, "PUT", &format!("/cluster/{name}/drain"), None),
        Command::Revoke { name, api } => mutate(&api, "POST", &format!("/cluster/nodes/{name}/revoke"), None),
        Command::Agents { action: Some(AgentsAction::Reconnect { node, ids }), api, .. } => {
            let mut query = Vec::new();
            if !ids.is_empty() {
                query.push(format!("agents_list={}", ids.join(",")));
            }
            if let Some(n) = node {
                query.push(format!("node={n}"));
            }
            let path = if query.is_empty() {
                "/agents/reconnect".to_string()
            } else {
                format!("/agents/reconnect?{}", query.join("&"))
            };
            mutate(&api, "PUT", &path, None)
        }
        Command::Groups { action: None | Some(GroupsAction::List), api } => show(&api, "/groups", report::groups_table),
        Command::Groups { action: Some(action), api } => match action {
            GroupsAction::List => Ok(()),
            GroupsAction::Create { name } => {
                let body = serde_json::json!({ "group_id": name }).to_string();
                mutate(&api, "POST", "/groups", Some(&body))
            }
            GroupsAction::Delete { name } => mutate(&api, "DELETE", &format!("/groups/{name}"), None),
            GroupsAction::Assign { id, group } => mutate(&api, "PUT", &format!("/agents/{id}/group/{group}"), None),
            GroupsAction::Unassign { id, group } => {
                mutate(&api, "DELETE", &format!("/agents/{id}/group/{group}"), None)
            }
        },
    }
}

/// A 200 answer's JSON, or an error naming the API, the path and what it said.
fn answer(args: &ApiArgs, status: u16, path: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    if status == 401 && args.token.is_none() && args.user.is_none() {
        anyhow::bail!("the API at {} needs its token: pass --token (or WMN_API_TOKEN) or --user", args.api);
    }
    if status != 200 {
        let detail = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["detail"].as_str().map(String::from))
            .unwrap_or_else(|| body.trim().to_string());
        anyhow::bail!(
            "the API at {} answered {status} for {path}: {}",
            args.api,
            wazuh_cluster_protocol::agent::enrollment::printable(&detail)
        );
    }
    serde_json::from_str(body).map_err(|e| anyhow::anyhow!("the API at {} sent invalid JSON: {e}", args.api))
}

fn show(args: &ApiArgs, path: &str, render: fn(&serde_json::Value) -> String) -> anyhow::Result<()> {
    let (status, body) = client::request(&args.api, "GET", path, cred(args)?.as_deref(), None)?;
    let value = answer(args, status, path, &body)?;
    if args.json {
        println!("{}", body.trim());
        return Ok(());
    }
    print!("{}", render(&value));
    Ok(())
}

/// Every agent, read a page of [`AGENTS_PAGE`] at a time, shown as one list.
fn show_all_agents(args: &ApiArgs, keys: bool) -> anyhow::Result<()> {
    const AGENTS_PAGE: u64 = 10_000;
    let mut items = Vec::new();
    let mut offset = 0u64;
    loop {
        let path = format!("/agents?offset={offset}&limit={AGENTS_PAGE}");
        let (status, body) = client::request(&args.api, "GET", &path, cred(args)?.as_deref(), None)?;
        let value = answer(args, status, &path, &body)?;
        let page = value["data"]["affected_items"].as_array().cloned().unwrap_or_default();
        let total = value["data"]["total_affected_items"].as_u64().unwrap_or(0);
        offset += page.len() as u64;
        let done = page.is_empty() || offset >= total;
        items.extend(page);
        if done {
            break;
        }
    }
    if keys {
        // Lists never carry keys: one explicit call per agent.
        for item in &mut items {
            let Some(id) = item["id"].as_str().map(String::from) else { continue };
            let path = format!("/agents/{id}/key");
            let (status, body) = client::request(&args.api, "GET", &path, cred(args)?.as_deref(), None)?;
            let value = answer(args, status, &path, &body)?;
            item["key"] = value["data"]["affected_items"][0]["key"].clone();
        }
    }
    let all = wazuh_multi_node::api::envelope(&items, "All selected agents information was returned");
    if args.json {
        println!("{all}");
    } else {
        print!("{}", report::agents_table(&all));
    }
    Ok(())
}

fn mutate(args: &ApiArgs, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<()> {
    let (status, text) = client::request(&args.api, method, path, cred(args)?.as_deref(), body)?;
    if args.json {
        println!("{}", text.trim());
    }
    if status == 401 && args.token.is_none() && args.user.is_none() {
        anyhow::bail!("{method} {path} needs the API token: pass --token (or WMN_API_TOKEN) or --user");
    }
    if status != 200 {
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(String::from))
            .unwrap_or_else(|| text.trim().to_string());
        anyhow::bail!(
            "{method} {path} failed ({status}): {}",
            wazuh_cluster_protocol::agent::enrollment::printable(&detail)
        );
    }
    if !args.json {
        let message =
            serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["message"].as_str().map(String::from));
        println!("{}", message.unwrap_or_else(|| "done".into()));
    }
    Ok(())
}
