//! The command line: keygen, check-config, errors, help.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_wazuh-cluster");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("RUST_LOG").output().expect("run wazuh-cluster")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keygen_prints_a_fresh_printable_256_bit_key() {
    let a = text(&run(&["keygen"]).stdout);
    let b = text(&run(&["keygen"]).stdout);
    assert_ne!(a, b);
    let key = a.trim();
    assert!(key.len() >= 43 && key.chars().all(|c| c.is_ascii_graphic()), "{key}");
    assert!(wazuh_cluster_protocol::ClusterKey::new(key).is_ok());
}

#[test]
fn check_config_accepts_the_deploy_examples_and_masks_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "wazuh-style-32-character-key-abc";
    for file in ["master.toml", "worker-1.toml", "worker-2.toml"] {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file);
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&config)
            .args(["--set", "cluster.key_file="])
            .env("WMN_CLUSTER__KEY", key)
            .env("WMN_NODE__DATA_DIR", dir.path())
            .output()
            .expect("run");
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert!(stdout.contains("configuration is valid"));
        assert!(!stdout.contains(key), "the key must be masked:\n{stdout}");
        assert!(stdout.contains("********"));
    }
}

#[test]
fn bad_config_exits_non_zero_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[node]\nname = \"w 1\"\nrole = \"worker\"\n").expect("write");
    let out = run(&["check-config", "--config", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: invalid configuration: node.name:"), "{err}");

    let out = run(&["run", "--config", "no/such/file.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no such file"));

    let out = run(&["run", "--config", path.to_str().expect("utf8"), "--set", "garbage"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a malformed --set");
}

#[test]
fn help_is_everywhere() {
    for args in
        [&["--help"][..], &["run", "--help"], &["check-config", "--help"], &["keygen", "--help"], &["demo", "--help"]]
    {
        let out = run(args);
        assert!(out.status.success(), "{args:?}");
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[test]
fn a_join_token_lifetime_or_use_count_out_of_range_is_refused_not_stretched() {
    for args in [["join-token", "--ttl", "2"], ["join-token", "--ttl", "99999999"], ["join-token", "--uses", "0"]] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} was taken");
        let err = text(&out.stderr);
        assert!(
            err.contains("not in") && (err.contains("60..=2592000") || err.contains("1..=1000")),
            "{args:?}: {err}"
        );
    }
}

/// `check-config` says how the open-file limit is split, and refuses a limit that leaves agent
/// connections too few, naming the limit it needs.
#[test]
fn check_config_prints_the_descriptor_budget_and_refuses_a_limit_too_low() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let check = |file: &str, sets: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check-config", "--config"]).arg(deploy.join(file)).args(["--set", "cluster.key_file="]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd.env("WMN_CLUSTER__KEY", "wazuh-style-32-character-key-abc").output().expect("run")
    };
    let out = check("worker-1.toml", &["node.max_open_files=1024"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("open-file limit 1024: 546 agent connections, 78 enrollments at once, 128 API connections"),
        "{stdout}"
    );
    // A master keeps more for the cluster: 512 leaves it too few agent connections.
    let out = check("master.toml", &["node.max_open_files=512"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("to at least"), "{}", text(&out.stderr));
}
