//! A page of `GET /agents` on the master written straight from the registry's rows: each row, as
//! SQLite holds it, becomes its JSON object in one buffer, with no owned copy of its fields, no
//! [`AgentView`](crate::views::AgentView) and no JSON tree. The objects are the ones
//! [`AgentView`](crate::views::AgentView) makes of the same row (a test compares them); a page of 500
//! costs the master about half the CPU it did through owned rows.

use crate::views::{iso, os_numbers};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use wazuh_cluster_actors::registry::{fmt_id, RowRef};

/// The fields of a stored keep-alive ([`wazuh_cluster_protocol::agent::keepalive::KeepAlive`]) the
/// page shows, borrowed from the stored JSON where no escape made a copy necessary. Its fields are
/// required as that type's are: a stored text that one would refuse, this one refuses too.
#[derive(Deserialize)]
struct InfoRef<'a> {
    #[serde(borrow)]
    os_uname: Cow<'a, str>,
    #[serde(borrow)]
    os_name: Cow<'a, str>,
    #[serde(borrow)]
    os_platform: Cow<'a, str>,
    #[serde(borrow)]
    os_version: Cow<'a, str>,
    #[serde(borrow)]
    os_codename: Cow<'a, str>,
    #[serde(borrow)]
    os_arch: Cow<'a, str>,
    #[serde(rename = "hostname")]
    _hostname: serde::de::IgnoredAny,
    #[serde(rename = "version")]
    _version: serde::de::IgnoredAny,
    #[serde(borrow)]
    config_sum: Option<Cow<'a, str>>,
    #[serde(borrow)]
    merged_sum: Option<Cow<'a, str>>,
    #[serde(borrow)]
    agent_ip: Option<Cow<'a, str>>,
    #[serde(borrow)]
    labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// [`crate::views::AgentOs`], borrowed.
#[derive(Serialize)]
struct OsRef<'a> {
    arch: &'a str,
    codename: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    major: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    minor: Option<&'a str>,
    name: &'a str,
    platform: &'a str,
    uname: &'a str,
    version: &'a str,
}

/// [`crate::views::AgentView`] of a row, borrowed: its fields, names and order (never a key).
#[derive(Serialize)]
struct ViewRef<'a> {
    id: String,
    name: &'a str,
    ip: &'a str,
    #[serde(rename = "registerIP")]
    register_ip: &'a str,
    status: &'a str,
    status_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    node_name: &'a str,
    manager: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<OsRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<&'a str, &'a str>>,
    #[serde(rename = "mergedSum", skip_serializing_if = "Option::is_none")]
    merged_sum: Option<&'a str>,
    #[serde(rename = "configSum", skip_serializing_if = "Option::is_none")]
    config_sum: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_config_status: Option<&'a str>,
    group: Vec<&'a str>,
    #[serde(rename = "dateAdd")]
    date_add: String,
    #[serde(rename = "lastKeepAlive", skip_serializing_if = "Option::is_none")]
    last_keep_alive: Option<String>,
}

/// Appends `row`'s JSON object to `out`, after a comma unless `out` is empty.
pub fn render(row: &RowRef<'_>, out: &mut Vec<u8>) {
    let info: Option<InfoRef<'_>> = row.info.and_then(|t| serde_json::from_str(t).ok());
    let info = info.as_ref();
    // Where it reports from: its own word, else its connection's, else where it registered.
    let ip = info.and_then(|i| i.agent_ip.as_deref()).or(row.peer_ip).unwrap_or(row.ip);
    let view = ViewRef {
        id: fmt_id(row.id),
        name: row.name,
        ip,
        register_ip: row.ip,
        status: row.status,
        status_code: 0,
        version: row.version,
        node_name: row.node_name,
        manager: row.node_name,
        os: info.map(|i| {
            let (major, minor) = os_numbers(&i.os_version);
            OsRef {
                arch: &i.os_arch,
                codename: &i.os_codename,
                major,
                minor,
                name: &i.os_name,
                platform: &i.os_platform,
                uname: &i.os_uname,
                version: &i.os_version,
            }
        }),
        labels: info.map(|i| i.labels.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect()),
        merged_sum: info.and_then(|i| i.merged_sum.as_deref()),
        config_sum: info.and_then(|i| i.config_sum.as_deref()),
        group_config_status: row.group_config_status,
        group: row.groups().collect(),
        date_add: iso(row.registered_at_ms),
        last_keep_alive: row.last_keepalive_ms.map(iso),
    };
    if !out.is_empty() {
        out.push(b',');
    }
    // Writing to a Vec fails only on a value serde_json cannot write, which this type has none of.
    let _ = serde_json::to_writer(&mut *out, &view);
}

/// The answer to `GET /agents` around `items`, the page's objects separated by commas (Wazuh's
/// envelope, as [`crate::api::Listed`] writes it).
pub fn envelope(items: &[u8], total: u64, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() + 160);
    out.extend_from_slice(b"{\"data\":{\"affected_items\":[");
    out.extend_from_slice(items);
    out.extend_from_slice(b"],\"total_affected_items\":");
    out.extend_from_slice(total.to_string().as_bytes());
    out.extend_from_slice(b",\"total_failed_items\":0,\"failed_items\":[]},\"message\":");
    let _ = serde_json::to_writer(&mut out, message);
    out.extend_from_slice(b",\"error\":0}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wazuh_cluster_actors::registry::AgentRow;
    use wazuh_cluster_protocol::agent::keepalive::KeepAlive;
    use wazuh_cluster_protocol::message::AgentEntry;

    fn keepalive(version: &str) -> KeepAlive {
        KeepAlive {
            os_uname: "Linux |host |5.15.0 |#1 SMP |x86_64".into(),
            os_name: "Ubuntu \"Jammy\"".into(),
            os_platform: "ubuntu".into(),
            os_version: version.into(),
            os_codename: "jammy".into(),
            os_arch: "x86_64".into(),
            hostname: "host".into(),
            version: "Wazuh v4.14.7".into(),
            config_sum: Some("ab12".into()),
            merged_sum: None,
            agent_ip: Some("10.0.0.9".into()),
            labels: vec![("z".into(), "last".into()), ("#sys".into(), "v\\1".into()), ("z".into(), "over".into())],
        }
    }

    fn row(id: u32, info: Option<KeepAlive>, peer: Option<&str>, keepalive_ms: Option<u64>) -> AgentRow {
        AgentRow {
            entry: AgentEntry {
                id,
                name: format!("agent-{id}"),
                ip: "any".into(),
                key: "k".repeat(64),
                groups: vec!["default".into(), "web".into()],
            },
            registered_at_ms: 1_700_000_000_123,
            node_name: "worker-1".into(),
            status: "active".into(),
            last_keepalive_ms: keepalive_ms,
            version: Some("Wazuh v4.14.7".into()),
            os_name: None,
            os_platform: None,
            os_version: None,
            pending: false,
            info,
            group_config_status: Some("synced".into()),
            peer_ip: peer.map(str::to_string),
        }
    }

    #[test]
    fn each_object_is_the_one_the_owned_view_makes_of_the_same_row() {
        let rows = [
            row(1, Some(keepalive("22.04.3 LTS")), Some("127.0.0.5"), Some(1_700_000_100_000)),
            row(2, Some(keepalive("rolling")), None, None),
            row(3, None, Some("127.0.0.6"), None),
            row(1001, None, None, Some(5)),
        ];
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for r in &rows {
            let info = r.info.as_ref().map(|i| serde_json::to_string(i).unwrap());
            let groups = r.entry.groups.join(",");
            let borrowed = RowRef {
                id: r.entry.id,
                name: &r.entry.name,
                ip: &r.entry.ip,
                groups: &groups,
                registered_at_ms: r.registered_at_ms,
                node_name: &r.node_name,
                status: &r.status,
                last_keepalive_ms: r.last_keepalive_ms,
                version: r.version.as_deref(),
                info: info.as_deref(),
                group_config_status: r.group_config_status.as_deref(),
                peer_ip: r.peer_ip.as_deref(),
            };
            render(&borrowed, &mut ours);
            theirs.push(crate::node::handle::row_view(r.clone(), false));
        }
        let ours = envelope(&ours, 7, "All selected agents information was returned");
        let theirs =
            serde_json::to_vec(&crate::api::Listed::new(&theirs, 7, "All selected agents information was returned"))
                .unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
    }

    #[test]
    fn a_stored_keepalive_that_the_owned_view_refuses_is_left_out_here_too() {
        // No hostname: KeepAlive refuses it, so the owned view shows no os; neither does this one.
        let partial = r#"{"os_uname":"u","os_name":"n","os_platform":"p","os_version":"1.2","os_codename":"c","os_arch":"a","version":"v","config_sum":null,"merged_sum":null,"agent_ip":null,"labels":[]}"#;
        assert!(serde_json::from_str::<KeepAlive>(partial).is_err());
        let r = RowRef {
            id: 5,
            name: "a",
            ip: "any",
            groups: "default",
            registered_at_ms: 0,
            node_name: "master",
            status: "active",
            last_keepalive_ms: None,
            version: None,
            info: Some(partial),
            group_config_status: None,
            peer_ip: None,
        };
        let mut out = Vec::new();
        render(&r, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("os").is_none(), "{v}");
        assert_eq!(v["ip"], "any");
    }
}
