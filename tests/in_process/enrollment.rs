//! Agent enrollment on every node (TLS, port 1515 in production): the exact replies, forwarding
//! through a worker, replication of keys to every worker, and bad input on the socket.

use crate::common;

use common::cluster::TestCluster;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wazuh_cluster_tools::sim::{connector, enroll_one, parse_key};

const WAIT: Duration = Duration::from_secs(10);

async fn enroll(addr: std::net::SocketAddr, line: &str) -> String {
    enroll_one(connector().expect("tls"), addr.to_string(), line.to_string()).await.expect("enrollment exchange")
}

fn keys_file(cluster: &TestCluster, node: &str) -> BTreeSet<String> {
    let path = cluster.dir.path().join(node).join("etc/client.keys");
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

#[actix_rt::test]
async fn enrollment_through_a_worker_is_committed_on_the_master_and_replicated_to_every_worker() {
    let cluster = TestCluster::start("enr", 2).await;
    let worker_enroll = cluster.worker(0).enrollment_addr;
    let mut received = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let line = format!("OSSEC A:'agent-{i}' V:'v4.14.7'\n");
        tasks.push(actix_rt::spawn(async move { enroll(worker_enroll, &line).await }));
    }
    for t in tasks {
        let reply = t.await.expect("task");
        received.push(parse_key(&reply).unwrap_or_else(|| panic!("not a key reply: {reply}")));
    }
    let last_reply = Instant::now();
    // Ids are unique and the lines are exactly what the agents were given.
    let ids: BTreeSet<String> = received.iter().map(|k| k.split(' ').next().unwrap_or_default().to_string()).collect();
    assert_eq!(ids.len(), 40);
    let master = cluster.master_name();
    let workers = [cluster.worker_name(0), cluster.worker_name(1)];
    // Every key reaches every node (how fast is measured by bench-scale, not asserted here).
    let everywhere = || async {
        let nodes = [&master, &workers[0], &workers[1]];
        received.iter().all(|key| nodes.iter().all(|n| keys_file(&cluster, n).contains(key.as_str())))
    };
    wait_until("every key is on every node", WAIT, everywhere).await;
    eprintln!("every key on every node {} ms after the last reply", last_reply.elapsed().as_millis());
    assert_eq!(keys_file(&cluster, &master), keys_file(&cluster, &workers[1]));
    // The master logged where each came from.
    wait_for_log(&workers[0], &["agent", "agent-0 enrolled from 127.0.0.1:"], WAIT).await;
}

#[actix_rt::test]
async fn every_refusal_is_answered_with_authds_exact_reply() {
    let cluster = TestCluster::start("enrbad", 1).await;
    let first = enroll(cluster.master().enrollment_addr, "OSSEC A:'dup-agent'\n").await;
    assert!(first.starts_with("OSSEC K:'"), "{first}");
    // The same replies from the master and, forwarded, from a worker: one registry decides.
    for addr in [cluster.master().enrollment_addr, cluster.worker(0).enrollment_addr] {
        let cases = [
            ("hello\n", "ERROR: Invalid request for new agent. Unable to add agent"),
            ("OSSEC A:'bad name!'\n", "ERROR: Invalid agent name: bad name!. Unable to add agent"),
            ("OSSEC A:'ok-name' V:'v4.14\n", "ERROR: Unterminated version field. Unable to add agent"),
            (
                "OSSEC A:'ok-name' V:'v9.0.0'\n",
                "ERROR: Agent version must be lower or equal to manager version. Unable to add agent",
            ),
            ("OSSEC A:'ok-name' G:'bad/group'\n", "ERROR: Invalid group name: bad/group. Unable to add agent"),
            ("OSSEC A:'ok-name' G:'nosuchgroup'\n", "ERROR: Invalid group: nosuchgroup. Unable to add agent"),
            ("OSSEC A:'ok-name' IP:'300.1.1.1'\n", "ERROR: Invalid IP: 300.1.1.1. Unable to add agent"),
            ("OSSEC A:'dup-agent'\n", "ERROR: Duplicate agent name: dup-agent. Unable to add agent"),
        ];
        for (line, reply) in cases {
            let got = enroll(addr, line).await;
            assert_eq!(got, reply, "{line}");
        }
        // Over-long line: refused, not buffered without end.
        let long = format!("OSSEC A:'{}'\n", "a".repeat(70 * 1024));
        let got = enroll(addr, &long).await;
        assert_eq!(got, "ERROR: Invalid request for new agent. Unable to add agent");
    }
    // Log forging: a refused name with ESC and CR reaches the log (and the reply) escaped.
    let got = enroll(cluster.master().enrollment_addr, "OSSEC A:'forge\u{1b}[2J\rINFO fake'\n").await;
    assert!(got.starts_with("ERROR: Invalid agent name: forge\\u{1b}[2J\\rINFO fake"), "{got:?}");
    let lines = wait_for_log(&cluster.master_name(), &["forge"], Duration::from_secs(10)).await;
    assert!(!lines.chars().any(char::is_control), "a control character reached the log: {lines:?}");
    assert!(lines.contains("\\u{1b}"), "{lines}");
}

#[actix_rt::test]
async fn plain_tcp_and_silent_clients_are_dropped_with_a_log_line() {
    let cluster = TestCluster::start("enrtcp", 0).await;
    let addr = cluster.master().enrollment_addr;
    let master = cluster.master_name();
    // No TLS at all.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let local = s.local_addr().expect("addr").to_string();
    s.write_all(b"OSSEC A:'plain'\n").await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert!(n == 0 || !buf[..n].starts_with(b"OSSEC K:"), "no key over plain TCP");
    wait_for_log(&master, &["enrollment from", &local, "TLS handshake failed"], WAIT).await;
    // TLS, then nothing: dropped after enrollment.timeout.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let local = tcp.local_addr().expect("addr").to_string();
    let name = rustls::pki_types::ServerName::try_from("wazuh").expect("name").to_owned();
    let mut tls = connector().expect("tls").connect(name, tcp).await.expect("tls handshake");
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a silent client must be dropped");
    assert!(out.is_empty());
    wait_for_log(&master, &["enrollment from", &local, "no request line within 300ms"], WAIT).await;
}

#[actix_rt::test]
async fn a_worker_without_its_master_refuses_at_once() {
    let mut cluster = TestCluster::start("enrdown", 1).await;
    cluster.kill_master().await;
    let worker = cluster.worker(0).enrollment_addr;
    let link_down = || async { !cluster.worker_connected(0).await };
    wait_until("the worker lost its master", WAIT, link_down).await;
    // Refused because the master is unreachable (the log says so), not after a timeout.
    let reply = enroll(worker, "OSSEC A:'orphan'\n").await;
    assert_eq!(reply, "ERROR: Internal manager error adding agent: orphan. Unable to add agent");
    wait_for_log(&cluster.worker_name(0), &["enrollment of orphan", "the master is unreachable"], WAIT).await;
}

#[actix_rt::test]
async fn a_configured_password_is_required_on_every_node_and_replacement_follows_the_policy() {
    let extra = [("enrollment.password", "TopSecret".to_string()), ("enrollment.force_after", "0s".to_string())];
    let cluster = TestCluster::start_with("enrpw", 1, &extra).await;
    for addr in [cluster.master().enrollment_addr, cluster.worker(0).enrollment_addr] {
        assert_eq!(enroll(addr, "OSSEC A:'pw-agent'\n").await, "ERROR: Invalid password. Unable to add agent");
        assert_eq!(
            enroll(addr, "OSSEC PASS: wrong OSSEC A:'pw-agent'\n").await,
            "ERROR: Invalid password. Unable to add agent"
        );
    }
    let first = enroll(cluster.worker(0).enrollment_addr, "OSSEC PASS: TopSecret OSSEC A:'pw-agent'\n").await;
    let first = parse_key(&first).expect("key");
    // force_after 0s: a never-connected agent of the same name is replaced by a new one (new id).
    let second = enroll(cluster.master().enrollment_addr, "OSSEC PASS: TopSecret OSSEC A:'pw-agent'\n").await;
    let second = parse_key(&second).expect("key");
    let id = |k: &str| k.split(' ').next().unwrap_or_default().parse::<u32>().unwrap_or(0);
    assert!(id(&second) > id(&first), "{first} then {second}");
}

#[actix_rt::test]
async fn with_a_client_ca_only_agents_holding_a_signed_certificate_enroll() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().expect("client key");
    let client_cert = CertificateParams::new(vec!["agent-01".to_string()])
        .expect("params")
        .signed_by(&client_key, &issuer)
        .expect("sign");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("agents-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).expect("write ca");

    let cluster = TestCluster::start_with("enrca", 0, &[("enrollment.ca_file", ca_path.display().to_string())]).await;
    let addr = cluster.master().enrollment_addr;
    // No certificate: the TLS handshake fails and no key is handed out.
    let refused = enroll_one(connector().expect("tls"), addr.to_string(), "OSSEC A:'no-cert'\n".into()).await;
    assert!(refused.map(|r| !r.starts_with("OSSEC K:")).unwrap_or(true));
    wait_for_log(&cluster.master_name(), &["enrollment from", "TLS handshake failed"], WAIT).await;
    // A certificate from the CA: enrolled.
    let chain = vec![client_cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der()).expect("key der");
    let connector = wazuh_cluster_tools::sim::connector_with_client_cert(chain, key).expect("client tls");
    let reply = enroll_one(connector, addr.to_string(), "OSSEC A:'with-cert'\n".into()).await.expect("enroll");
    assert!(parse_key(&reply).is_some(), "{reply}");
}

/// The password set on the master is the cluster's: required through a worker that has none of its
/// own (the worker passes the agent's password on, the master checks it). The refusals, however
/// many, leave nothing in the master's registry.
#[actix_rt::test]
async fn a_password_set_on_the_master_is_required_through_every_worker_and_refusals_leave_no_rows() {
    let master_only = [("enrollment.password", "MasterSecret".to_string())];
    let cluster = TestCluster::start_with_roles("enrpolicy", 2, &master_only, &[]).await;
    let registry = cluster.dir.path().join(cluster.master_name()).join("var/db/registry.db");
    let rows = || -> (i64, i64) {
        let db = rusqlite::Connection::open(&registry).expect("registry");
        let count = |t: &str| db.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0)).expect("count");
        (count("agents"), count("tokens"))
    };
    let before = rows();
    for i in 0..2 {
        let worker = cluster.worker(i).enrollment_addr;
        for _ in 0..20 {
            assert_eq!(enroll(worker, "OSSEC A:'no-pass'\n").await, "ERROR: Invalid password. Unable to add agent");
            assert_eq!(
                enroll(worker, "OSSEC PASS: WorkerGuess OSSEC A:'bad-pass'\n").await,
                "ERROR: Invalid password. Unable to add agent"
            );
        }
    }
    assert_eq!(rows(), before, "refused requests left rows in the registry");
    for i in 0..2 {
        let reply =
            enroll(cluster.worker(i).enrollment_addr, &format!("OSSEC PASS: MasterSecret OSSEC A:'good-{i}'\n")).await;
        assert!(parse_key(&reply).is_some(), "the master's password through worker {i}: {reply}");
    }
    assert_eq!(
        enroll(cluster.master().enrollment_addr, "OSSEC A:'direct'\n").await,
        "ERROR: Invalid password. Unable to add agent"
    );
}

/// Client certificates made as Wazuh's instructions make them (`openssl x509 -req`: version 1)
/// from the master's CA are taken, on the master and through a worker that has no CA of its own;
/// one from another CA, and none at all, are refused (the connection closed without a key).
#[actix_rt::test]
async fn version_1_client_certificates_from_the_masters_ca_enroll_through_every_node_and_others_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(d).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    for ca in ["rootCA", "otherCA"] {
        openssl(
            &["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", &format!("{ca}.key")]
                .into_iter()
                .chain(["-sha256", "-days", "30", "-subj", &format!("/C=US/CN={ca}"), "-out", &format!("{ca}.pem")])
                .collect::<Vec<_>>(),
        );
    }
    for (agent, ca) in [("agent", "rootCA"), ("stranger", "otherCA")] {
        openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            &format!("{agent}.key"),
            "-out",
            &format!("{agent}.csr"),
            "-batch",
            "-subj",
            &format!("/CN={agent}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "30",
            "-in",
            &format!("{agent}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-out",
            &format!("{agent}.cert"),
            "-CAcreateserial",
        ]);
    }
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(d.join("agent.cert")).expect("pem");
    assert_eq!(x509_version(&der), 0, "the agent's certificate is version 1, as Wazuh's instructions make it");
    let ca = d.join("rootCA.pem").display().to_string();
    let cluster = TestCluster::start_with_roles("enrv1", 1, &[("enrollment.ca_file", ca)], &[]).await;
    let with = |who: &str| {
        let chain =
            vec![rustls::pki_types::CertificateDer::from_pem_file(d.join(format!("{who}.cert"))).expect("cert")];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(d.join(format!("{who}.key"))).expect("key");
        wazuh_cluster_tools::sim::connector_with_client_cert(chain, key).expect("client tls")
    };
    for (node, addr) in [("master", cluster.master().enrollment_addr), ("worker", cluster.worker(0).enrollment_addr)] {
        let reply =
            enroll_one(with("agent"), addr.to_string(), format!("OSSEC A:'v1-{node}'\n")).await.expect("enroll");
        assert!(parse_key(&reply).is_some(), "a v1 certificate from the CA through the {node}: {reply}");
        for (what, connector) in [("another CA's", with("stranger")), ("no", connector().expect("tls"))] {
            let refused = enroll_one(connector, addr.to_string(), format!("OSSEC A:'refused-{node}'\n")).await;
            assert!(
                refused.as_deref().map(|r| !r.starts_with("OSSEC K:")).unwrap_or(true),
                "{what} certificate through the {node}: {refused:?}"
            );
        }
    }
    wait_for_log(&cluster.master_name(), &["through worker", "not issued by the CA"], WAIT).await;
}

/// The X.509 version field of a DER certificate (0: version 1, 2: version 3).
fn x509_version(der: &[u8]) -> u8 {
    // SEQUENCE { SEQUENCE (tbsCertificate) { [0] EXPLICIT INTEGER version ... } }: absent means v1.
    let skip_header = |b: &[u8]| -> usize {
        if b[1] & 0x80 == 0 {
            2
        } else {
            2 + (b[1] & 0x7f) as usize
        }
    };
    let tbs = &der[skip_header(der)..];
    let inner = &tbs[skip_header(tbs)..];
    if inner[0] == 0xa0 {
        inner[4]
    } else {
        0
    }
}

/// `enrollment.max_per_second` on the master holds the whole cluster's enrollments (its own and
/// every worker's) to that rate: a burst beyond it is refused at once.
#[actix_rt::test]
async fn the_masters_enrollment_rate_holds_for_the_whole_cluster() {
    let cluster = TestCluster::start_with_roles("enrrate", 1, &[("enrollment.max_per_second", "5".into())], &[]).await;
    let (master, worker) = (cluster.master().enrollment_addr, cluster.worker(0).enrollment_addr);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = if i % 2 == 0 { master } else { worker };
        tasks.push(actix_rt::spawn(async move { enroll(addr, &format!("OSSEC A:'burst-{i}'\n")).await }));
    }
    let mut enrolled = 0;
    for t in tasks {
        let reply = t.await.expect("task");
        if parse_key(&reply).is_some() {
            enrolled += 1;
        } else {
            assert!(reply.starts_with("ERROR: Internal manager error adding agent"), "{reply}");
        }
    }
    eprintln!("40 enrollments at once with max_per_second 5: {enrolled} enrolled");
    assert!((5..=12).contains(&enrolled), "{enrolled} of 40 enrolled at 5 per second");
}
