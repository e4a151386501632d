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
