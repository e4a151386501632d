//! The API's users are the cluster's: created, demoted, signed out, revoked and deleted through any
//! node, and honoured by every node as soon as the change is answered; sign-in is bounded per
//! address.

use crate::common;

use common::cluster::{TestCluster, ADMIN_PASSWORD, API_TOKEN, AUDITOR_PASSWORD};
use std::net::SocketAddr;

async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    token: &str,
    body: Option<String>,
) -> (u16, serde_json::Value) {
    let base = format!("http://{addr}");
    let token = token.to_string();
    let (status, text) = actix_rt::task::spawn_blocking(move || {
        wazuh_multi_node::client::request(&base, method, &path, Some(&token), body.as_deref())
    })
    .await
    .expect("join")
    .expect("http");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> anyhow::Result<String> {
    let (base, user, password) = (format!("http://{addr}"), user.to_string(), password.to_string());
    actix_rt::task::spawn_blocking(move || wazuh_multi_node::client::authenticate(&base, &user, &password))
        .await
        .expect("join")
}

/// The status of a read and of a change with `token` on each of `apis`.
async fn statuses(apis: &[SocketAddr], token: &str) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let (read, _) = call(*api, "GET", "/agents".into(), token, None).await;
        // A change that fails on its own merits when allowed (404), so that it changes nothing.
        let (write, _) = call(*api, "DELETE", format!("/groups/no-such-group-{i}"), token, None).await;
        out.push((read, write));
    }
    out
}

#[actix_rt::test]
async fn users_changed_on_any_node_take_effect_on_every_node_when_the_change_is_answered() {
    let cluster = TestCluster::start("usr", 2).await;
    let apis = [cluster.master().api_addr, cluster.worker(0).api_addr, cluster.worker(1).api_addr];
    let admin = login(apis[1], "admin", ADMIN_PASSWORD).await.expect("admin signs in on a worker");

    // Created through worker 1, made an administrator through worker 2 (Wazuh's role id 1).
    let new = serde_json::json!({ "username": "ops-user", "password": "Ops-pass-123" }).to_string();
    let (status, body) = call(apis[1], "POST", "/security/users".into(), &admin, Some(new)).await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["affected_items"][0]["id"].as_u64().expect("an id");
    assert_eq!(body["data"]["affected_items"][0]["roles"], serde_json::json!([2]), "readonly until given a role");
    let (status, body) = call(apis[2], "POST", format!("/security/users/{id}/roles?role_ids=1"), &admin, None).await;
    assert_eq!(status, 200, "{body}");
    // Every node lists it (no waiting: the change was answered once every worker had it).
    for api in apis {
        let (status, body) = call(api, "GET", format!("/security/users?user_ids={id}"), &admin, None).await;
        assert_eq!((status, body["data"]["affected_items"][0]["username"].as_str()), (200, Some("ops-user")), "{body}");
    }
    let ops = login(apis[2], "ops-user", "Ops-pass-123").await.expect("the new user signs in");
    assert_eq!(statuses(&apis, &ops).await, vec![(200, 404); 3], "an administrator reads and changes");

    // Demoted on the master: its token loses its writes on every node at once, keeps its reads.
    let (status, body) = call(apis[0], "DELETE", format!("/security/users/{id}/roles?role_ids=1"), &admin, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&apis, &ops).await, vec![(200, 403); 3], "the demoted user's token");

    // Its tokens revoked (through a worker): refused everywhere; a new sign-in works.
    let (status, body) = call(apis[1], "PUT", format!("/security/users/{id}/revoke"), &admin, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&apis, &ops).await, vec![(401, 401); 3], "a revoked token");
    let ops = login(apis[0], "ops-user", "Ops-pass-123").await.expect("signs in again");
    assert_eq!(statuses(&apis, &ops).await, vec![(200, 403); 3]);

    // Deleted through worker 2: its token is refused on every node at once, and it cannot sign in.
    let (status, body) = call(apis[2], "DELETE", format!("/security/users?user_ids={id}"), &admin, None).await;
    assert_eq!((status, body["data"]["total_affected_items"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(statuses(&apis, &ops).await, vec![(401, 401); 3], "a deleted user's token");
    assert!(login(apis[0], "ops-user", "Ops-pass-123").await.is_err());
    assert!(login(apis[2], "ops-user", "Ops-pass-123").await.is_err());

    // Signing out (a readonly user may): that user's tokens go, everywhere.
    let auditor = login(apis[2], "auditor", AUDITOR_PASSWORD).await.expect("auditor");
    let (status, body) = call(apis[2], "DELETE", "/security/user/authenticate".into(), &auditor, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&apis, &auditor).await, vec![(401, 401); 3], "a signed-out token");

    // Every user's tokens revoked at once; the static api.token is no user's and keeps working.
    let (status, body) = call(apis[0], "PUT", "/security/user/revoke".into(), &admin, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&apis, &admin).await, vec![(401, 401); 3], "every user token revoked");
    assert_eq!(statuses(&apis, API_TOKEN).await, vec![(200, 404); 3], "the static token");

    // Bad input: a weak password, a short name, an unknown role, an unknown parameter, no such user.
    for (method, path, body, want) in [
        ("POST", "/security/users".to_string(), Some(r#"{"username":"weak-user","password":"password"}"#), 400),
        ("POST", "/security/users".to_string(), Some(r#"{"username":"abc","password":"Ops-pass-123"}"#), 400),
        ("POST", "/security/users".to_string(), Some(r#"{"username":"x y z w","password":"Ops-pass-123"}"#), 400),
        ("POST", "/security/users/1/roles?role_ids=7".to_string(), None, 400),
        ("GET", "/security/users?user_ids=1&bogus=1".to_string(), None, 400),
        ("PUT", format!("/security/users/{id}/revoke"), None, 404),
    ] {
        let (status, answer) = call(apis[1], method, path.clone(), API_TOKEN, body.map(String::from)).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
    }
    // A join token with a lifetime out of range is refused, not stretched.
    let (status, body) = call(apis[0], "POST", "/cluster/join-tokens?ttl=2".into(), API_TOKEN, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("60..=2592000")), "{body}");
}

/// As Wazuh's API: an address with `api.max_login_attempts` failed sign-ins within `api.block_time`
/// of its first is refused (403, Wazuh's text), even with the right password, while another
/// address still signs in.
#[actix_rt::test]
async fn an_address_is_blocked_after_too_many_failed_sign_ins_and_others_are_not() {
    let cluster = TestCluster::start_with("blk", 0, &[("api.max_login_attempts", "3".into())]).await;
    let api = cluster.master().api_addr;
    for _ in 0..3 {
        assert!(login(api, "admin", "wrong").await.is_err());
    }
    let (status, body) = sign_in_from("127.0.0.1", api, "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 403, "blocked even with the right password: {body}");
    assert!(body.contains("Limit of login attempts reached"), "{body}");
    let (status, body) = sign_in_from("127.0.0.2", api, "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "another address is not blocked: {body}");
}

/// `POST /security/user/authenticate?raw=true` from `source`: the status and the body.
async fn sign_in_from(source: &str, api: SocketAddr, user: &str, password: &str) -> (u16, String) {
    use base64ct::Encoding;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("addr")).expect("bind");
    let mut s = socket.connect(api).await.expect("connect");
    let basic = base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes());
    let head = format!(
        "POST /security/user/authenticate?raw=true HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}
