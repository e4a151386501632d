//! Running the real `wazuh-cluster` binary as child processes, for the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wazuh-cluster");
/// The load generator's binary (`agent-sim`, in the `wazuh-cluster-tools` package beside this
/// one), built on first use with the profile these tests were built with (a no-op when it is up to
/// date; `cargo test --workspace` has built it already).
pub fn agent_sim() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        // This test binary is target/<profile>/deps/<name>: the tools land in target/<profile>.
        let exe = std::env::current_exe().expect("the test binary's path");
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet", "-p", "wazuh-cluster-tools"]);
        // Without the variables cargo sets for this test: some build scripts (ring's) watch them,
        // and a build that sees them differs from one run by hand, so each would redo the other's.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            let set_for_tests = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_PRIMARY_", "CARGO_RUSTC_"];
            if set_for_tests.iter().any(|p| name.starts_with(p)) {
                build.env_remove(&name);
            }
        }
        build.args(["--bin", "agent-sim", "--bin", "wdb-standin"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cannot build agent-sim: {status}");
        dir.join("agent-sim").to_string_lossy().into_owned()
    })
}

/// The wazuh-db stand-in (`wdb-standin`, built with `agent-sim`).
pub fn wdb_standin() -> String {
    let sim = std::path::PathBuf::from(agent_sim());
    sim.with_file_name("wdb-standin").to_string_lossy().into_owned()
}

pub const API_TOKEN: &str = "e2e-api-token-0123456789";
pub const WAIT: Duration = Duration::from_secs(20);

/// `cmd` (the binary, or a wrapper that ends up running it) given the arguments of
/// `wazuh-cluster run --config deploy/<config> --set ...`.
pub fn run_command(mut cmd: Command, config: &str, sets: &[String]) -> Command {
    cmd.arg("run").arg("--config").arg(deploy(config));
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd
}

pub fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

/// A running node whose stderr is collected line by line.
pub struct Node {
    pub name: String,
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn start(config: &str, sets: &[String]) -> Node {
        Self::spawn(config, run_command(Command::new(BIN), config, sets))
    }

    /// Runs `cmd` (a `wazuh-cluster run`, perhaps behind a wrapper), collecting its stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Node {
        cmd.env_remove("RUST_LOG").stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn wazuh-cluster");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Node { name: name.to_string(), child, lines }
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The exit status, once the process has exited (within `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The last lines of its stderr may still be on their way to `lines`.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_for(&self, needles: &[&str]) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.lines.lock().expect("lines").iter().find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.clone();
            }
            assert!(start.elapsed() < WAIT, "{} did not log {needles:?}; it logged:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `needles` matched `n` lines.
    pub fn wait_for_count(&self, needles: &[&str], n: usize) {
        let start = Instant::now();
        loop {
            let count =
                self.lines.lock().expect("lines").iter().filter(|l| needles.iter().all(|x| l.contains(x))).count();
            if count >= n {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "{} logged {needles:?} {count} times, not {n}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to say goodbye.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    pub fn assert_running(&mut self) {
        assert!(self.child.try_wait().expect("try_wait").is_none(), "{} exited; log:\n{}", self.name, self.log());
    }

    /// SIGTERM, then the exit status within 5 s.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success();
        assert!(ok, "kill -TERM {pid} failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                panic!("{} did not exit within 5 s of SIGTERM; log:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port for a child process to listen on. Not from the kernel's ephemeral range (port 0): the
/// 1,000-agent test opens that many outgoing connections in parallel with the others, and one of them
/// could take the port before the child binds it. Ports below the range are only ever handed out
/// here, one after the other, and checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 1_000) as u16 * 10, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "no free port left below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn write_key(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(BIN).arg("keygen").output().expect("keygen");
    assert!(out.status.success());
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout).expect("write key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    path
}

/// The settings that make the deploy/ examples run on loopback in a temporary directory, with
/// every listening port free.
pub fn local(dir: &Path, node: &str, key: &Path, port: u16) -> Vec<String> {
    vec![
        format!("node.data_dir={}", dir.join(node).display()),
        format!("cluster.key_file={}", key.display()),
        format!("cluster.bind=127.0.0.1:{port}"),
        format!("cluster.master=127.0.0.1:{port}"),
        format!("api.bind=127.0.0.1:{}", free_port()),
        format!("enrollment.bind=127.0.0.1:{}", free_port()),
        format!("agents.bind=127.0.0.1:{}", free_port()),
        format!("api.token={API_TOKEN}"),
        "api.tls=false".to_string(),
        "cluster.intervals.keepalive=500ms".to_string(),
        // A worker stopped with agents still connected drains them for 2 s at most (`terminate`
        // gives a node 5 s); the drain's own test sets the shipped deadline.
        "agents.drain_timeout=2s".to_string(),
        // No agent moves but those a test makes (the rebalancer has its own test).
        "cluster.rebalance.mode=off".to_string(),
        // Workers join on the cluster key alone here; the join-token path has its own tests.
        "cluster.admission=open".to_string(),
    ]
}

/// `wazuh-cluster nodes --json` against `api`: the names listed, or none if the API is down.
pub fn listed_nodes(api: u16) -> Vec<String> {
    listed_nodes_with(api, API_TOKEN)
}

/// [`listed_nodes`] with another API token.
pub fn listed_nodes_with(api: u16, token: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["nodes", "--json", "--api", &format!("http://127.0.0.1:{api}")])
        .env("WMN_API_TOKEN", token)
        .output()
        .expect("run wazuh-cluster nodes");
    if !out.status.success() {
        return Vec::new();
    }
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nodes --json prints JSON");
    body["data"]["affected_items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub fn api_port(sets: &[String]) -> u16 {
    sets.iter()
        .find_map(|s| s.strip_prefix("api.bind=127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .expect("api.bind in the settings")
}

/// Polls until `nodes --json` on the master lists exactly `names`; returns the time it took. On a
/// timeout the logs of `nodes` say why.
pub fn wait_listed(api: u16, names: &[&str], nodes: &[&Node]) -> Duration {
    let start = Instant::now();
    loop {
        let mut listed = listed_nodes(api);
        listed.sort();
        if listed == names {
            return start.elapsed();
        }
        if start.elapsed() >= WAIT {
            let logs: Vec<String> = nodes.iter().map(|n| format!("--- {}:\n{}", n.name, n.log())).collect();
            panic!("the master lists {listed:?}, not {names:?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh cluster key in `dir` and a master process started from deploy/ on a free port, listening:
/// the key file, the port, the master's settings and the master.
pub fn started_master(dir: &Path) -> (PathBuf, u16, Vec<String>, Node) {
    let key = write_key(dir, "cluster.key");
    let port = free_port();
    let master_sets = local(dir, "master", &key, port);
    let master = Node::start("master.toml", &master_sets);
    master.wait_for(&["master listening"]);
    (key, port, master_sets, master)
}

/// The value of `key` in `--set` style settings (`key=value`).
pub fn setting(sets: &[String], key: &str) -> String {
    sets.iter().find_map(|s| s.strip_prefix(&format!("{key}="))).expect("setting").to_string()
}
