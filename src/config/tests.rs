use super::*;

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn load(toml: &str, env: &[(&str, &str)], sets: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(&Sources {
        file: Some(path),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        overrides: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        host_name: None,
    })
}

fn master() -> String {
    format!("[node]\nname = \"master-1\"\nrole = \"master\"\n[cluster]\nkey = \"{KEY}\"\n")
}

fn field_of(err: ConfigError) -> String {
    match err {
        ConfigError::Invalid { field, .. } => field,
        ConfigError::Load(m) => panic!("expected a validation error, got load error {m}"),
    }
}

#[test]
fn minimal_master_gets_the_documented_defaults() {
    let c = load(&master(), &[], &[]).unwrap();
    assert_eq!(c.node.role, Role::Master);
    assert_eq!(c.cluster.name, "wazuh");
    assert_eq!(c.cluster.bind, "0.0.0.0:1516".parse().unwrap());
    assert_eq!(c.enrollment.bind, "0.0.0.0:1515".parse().unwrap());
    assert_eq!(c.agents.bind, "0.0.0.0:1514".parse().unwrap());
    assert_eq!(c.api.bind, "127.0.0.1:55000".parse().unwrap());
    assert!(c.api.tls, "HTTPS unless configured otherwise");
    assert_eq!(c.cluster.cipher, CipherSuite::ChaCha20Poly1305);
    assert_eq!(c.cluster.max_frame, 16 * 1024 * 1024);
    assert_eq!(c.cluster.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.cluster.intervals.keepalive, Duration::from_secs(5));
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let env = [
        ("WMN_CLUSTER__BIND", "127.0.0.1:2000"),
        ("WMN_CLUSTER__INTERVALS__KEEPALIVE", "250ms"),
        ("WMN_CLUSTER__CIPHER", "aes-256-gcm"),
        ("WMN_API_TOKEN", "not-config"),
        ("OTHER__THING", "ignored"),
    ];
    let c = load(&master(), &env, &[]).unwrap();
    assert_eq!(c.cluster.bind, "127.0.0.1:2000".parse().unwrap());
    assert_eq!(c.cluster.intervals.keepalive, Duration::from_millis(250));
    assert_eq!(c.cluster.cipher, CipherSuite::Aes256Gcm);
    let c = load(&master(), &env, &[("cluster.bind", "127.0.0.1:3000")]).unwrap();
    assert_eq!(c.cluster.bind, "127.0.0.1:3000".parse().unwrap());
}

#[test]
fn unknown_keys_are_errors() {
    let err = load(&format!("{}\n[cluster.intervals]\nkeepalive_typo = \"5s\"\n", master()), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("keepalive_typo"), "{err}");
    let err = load(&format!("{}\n[nodes]\nx = 1\n", master()), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("nodes"), "{err}");
    let err = load(&master(), &[("WMN_CLUSTER__PROT", "1")], &[]).unwrap_err();
    assert!(err.to_string().contains("prot"), "{err}");
}

#[test]
fn a_node_runs_from_environment_variables_alone_named_after_its_host() {
    let token = wazuh_cluster_protocol::identity::JoinToken::generate().unwrap().reveal();
    let env: Vec<(String, String)> = [
        ("WMN_NODE__ROLE", "worker"),
        ("WMN_CLUSTER__KEY", KEY),
        ("WMN_CLUSTER__MASTER", "master:1516"),
        ("WMN_CLUSTER__JOIN_TOKEN", token.as_str()),
        ("HOSTNAME", "ignored"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sources =
        |host: Option<&str>| Sources { env: env.clone(), host_name: host.map(String::from), ..Default::default() };
    let c = Config::load(&sources(Some("3f2a9c1b7d4e"))).unwrap();
    assert_eq!(c.node.name, "3f2a9c1b7d4e");
    assert_eq!(c.node.role, Role::Worker);
    assert_eq!(c.cluster.master.as_deref(), Some("master:1516"));
    assert!(c.cluster.join_token.is_some());
    // A domain name's dots become dashes; a name set anywhere wins over the host's.
    assert_eq!(Config::load(&sources(Some("node-7.example.com"))).unwrap().node.name, "node-7-example-com");
    let mut named = sources(Some("host"));
    named.env.push(("WMN_NODE__NAME".into(), "worker-9".into()));
    assert_eq!(Config::load(&named).unwrap().node.name, "worker-9");
    assert_eq!(field_of(Config::load(&sources(None)).unwrap_err()), "node.name");
    assert_eq!(node_name_from_host(&"x".repeat(300)).len(), MAX_NAME_LEN);
}

#[test]
fn a_key_from_the_environment_or_a_flag_replaces_the_files_key_file() {
    let file = master().replace(&format!("key = \"{KEY}\""), "key_file = \"/nonexistent/cluster.key\"");
    // The file alone: its key_file, which does not exist.
    assert_eq!(field_of(load(&file, &[], &[]).unwrap_err()), "cluster.key_file");
    let c = load(&file, &[("WMN_CLUSTER__KEY", KEY)], &[]).unwrap();
    assert!(c.cluster.key.is_some());
    let c = load(&file, &[], &[("cluster.key", KEY)]).unwrap();
    assert!(c.cluster.key.is_some());
    // Both ways in one source is still an error.
    let both = load(&file, &[("WMN_CLUSTER__KEY", KEY), ("WMN_CLUSTER__KEY_FILE", "/k")], &[]).unwrap_err();
    assert_eq!(field_of(both), "cluster.key");
}

#[test]
fn master_eligible_nodes_find_themselves_in_cluster_masters_given_as_a_list_or_a_string() {
    let list = "masters = [\"master-a:1516\", \"master-1:1516\", \"10.0.0.3:1516\"]\n";
    let c = load(&format!("{}{list}", master()), &[], &[]).unwrap();
    assert_eq!(c.cluster.masters.len(), 3);
    assert_eq!(c.cluster.raft_id, Some(2), "node.name master-1 is the second entry");
    // The same from the environment, as one comma-separated value; found by its bind address.
    let env = [
        ("WMN_CLUSTER__MASTERS", "10.0.0.1:1516, 10.0.0.2:1516,10.0.0.3:1516"),
        ("WMN_CLUSTER__BIND", "10.0.0.3:1516"),
    ];
    assert_eq!(load(&master(), &env, &[]).unwrap().cluster.raft_id, Some(3));
    // A worker dials the first when it has no cluster.master.
    let worker = master().replace("role = \"master\"", "role = \"worker\"");
    let w = load(&worker, &[("WMN_CLUSTER__MASTERS", "a:1516,b:1516,c:1516")], &[]).unwrap();
    assert_eq!((w.cluster.master.as_deref(), w.cluster.raft_id), (Some("a:1516"), None));
    // One master: as before, no Raft.
    assert_eq!(load(&master(), &[("WMN_CLUSTER__MASTERS", "master-1:1516")], &[]).unwrap().cluster.raft_id, None);
    for bad in ["a:1516,b:1516", "a:1516,a:1516,b:1516", "a:1516,b:1516,c:1516", "a:1516,b,c:1516"] {
        let err = load(&master(), &[("WMN_CLUSTER__MASTERS", bad)], &[]).unwrap_err();
        assert_eq!(field_of(err), "cluster.masters", "{bad}");
    }
}

#[test]
fn validation_names_the_field() {
    let cases: Vec<(String, &str)> = vec![
        (master().replace("master-1", "bad name"), "node.name"),
        (master().replace("role = \"master\"", "role = \"boss\""), "node.role"),
        (master().replace(KEY, "short"), "cluster.key"),
        (format!("{}bind = \"nowhere\"\n", master()), "cluster.bind"),
        (format!("{}cipher = \"rot13\"\n", master()), "cluster.cipher"),
        (format!("{}max_frame = \"1GiB\"\n", master()), "cluster.max_frame"),
        (format!("{}max_frame = \"32MiB\"\n", master()), "cluster.max_frame"),
        (format!("{}handshake_timeout = \"10 parsecs\"\n", master()), "cluster.handshake_timeout"),
        (format!("{}key_file = \"k\"\n", master()), "cluster.key"),
        (master().replace("role = \"master\"", "role = \"worker\""), "cluster.master"),
        (format!("{}master = \"no-port\"\n", master()), "cluster.master"),
        (format!("{}[log]\nformat = \"xml\"\n", master()), "log.format"),
        (format!("{}[api]\nbind = \"localhost\"\n", master()), "api.bind"),
    ];
    for (toml, field) in cases {
        assert_eq!(field_of(load(&toml, &[], &[]).unwrap_err()), field, "{toml}");
    }
}

#[test]
fn a_workers_event_loop_yields_by_default_and_a_masters_does_not() {
    assert_eq!(load(&master(), &[], &[]).unwrap().node.event_loop_nice, 0);
    let worker = master().replace("role = \"master\"", "role = \"worker\"") + "master = \"10.0.0.1:1516\"\n";
    assert_eq!(load(&worker, &[], &[]).unwrap().node.event_loop_nice, 5);
    let off = load(&worker, &[], &[("node.event_loop_nice", "0")]).unwrap();
    assert_eq!(off.node.event_loop_nice, 0);
    let set = load(&master(), &[("WMN_NODE__EVENT_LOOP_NICE", "19")], &[]).unwrap();
    assert_eq!(set.node.event_loop_nice, 19);
    for bad in ["20", "-1"] {
        let err = load(&master(), &[], &[("node.event_loop_nice", bad)]).unwrap_err();
        assert_eq!(field_of(err), "node.event_loop_nice", "{bad}");
    }
}

#[test]
fn key_file_is_read_relative_to_the_config_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.key"), format!("{KEY}\n")).unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "[node]\nname = \"m\"\nrole = \"master\"\n[cluster]\nkey_file = \"cluster.key\"\n").unwrap();
    let c = Config::load(&Sources { file: Some(path), ..Default::default() }).unwrap();
    assert_eq!(c.cluster.key, Some(ClusterKey::new(KEY).unwrap()));
    let shown = c.to_masked_toml();
    assert!(!shown.contains(KEY), "{shown}");
    assert!(shown.contains("cluster.key"));
    let inline = load(&master(), &[], &[]).unwrap().to_masked_toml();
    assert!(!inline.contains(KEY), "{inline}");
    assert!(inline.contains("key = \"********\""), "{inline}");
}

#[test]
fn missing_file_and_bad_toml_are_load_errors() {
    let err = Config::load(&Sources { file: Some("does/not/exist.toml".into()), ..Default::default() }).unwrap_err();
    assert!(matches!(err, ConfigError::Load(_)));
    assert!(matches!(load("[node\nname=", &[], &[]), Err(ConfigError::Load(_))));
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("5 fortnights").is_err());
    assert!(parse_duration("-1s").is_err());
    assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
    assert_eq!(parse_size("65536").unwrap(), 65536);
    assert!(parse_size("99999999999999999999MiB").is_err());
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    assert_eq!(parse_override("cluster.bind=1.2.3.4:5").unwrap(), ("cluster.bind".into(), "1.2.3.4:5".into()));
    assert!(parse_override("novalue").is_err());
}

#[test]
fn manager_integrations_are_off_unless_set_and_true_means_wazuhs_own_path() {
    let c = load(&master(), &[], &[]).unwrap();
    assert!(c.manager.enabled().is_empty(), "every integration is off by default");
    let toml = format!(
        "{}[manager]\nactive_response = true\nrequests = \"sockets/remote\"\nwazuh_db = false\n",
        master().replacen("[node]\n", "[node]\ndata_dir = \"/var/ossec\"\n", 1)
    );
    let c = load(&toml, &[], &[]).unwrap();
    let on: Vec<(&str, String)> = c.manager.enabled().into_iter().map(|(n, p)| (n, p.display().to_string())).collect();
    assert_eq!(
        on,
        vec![
            ("active_response", "/var/ossec/queue/alerts/ar".into()),
            ("requests", "/var/ossec/sockets/remote".into())
        ]
    );
    // From the environment, "true" and "off" read as switches.
    let c = load(&master(), &[("WMN_MANAGER__WAZUH_DB", "true"), ("WMN_MANAGER__REQUESTS", "off")], &[]).unwrap();
    assert_eq!(c.manager.enabled().len(), 1);
    assert!(c.manager.wazuh_db.as_ref().is_some_and(|p| p.ends_with("queue/db/wdb")));
    let long = format!("/{}", "d".repeat(120));
    assert_eq!(field_of(load(&master(), &[], &[("manager.wazuh_db", &long)]).unwrap_err()), "manager.wazuh_db");
    assert_eq!(field_of(load(&master(), &[], &[("manager.queue", "3")]).unwrap_err()), "manager.queue");
}
