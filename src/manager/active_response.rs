//! analysisd's active-response queue (`queue/alerts/ar`, a Unix datagram socket this node binds in
//! remoted's place). Each datagram is `(location) [source] <c1><c2><c3> <agent id> <message>`
//! (analysisd's `get_exec_msg`, the framework's `WazuhQueue`): `A` all agents, `R` the agent that
//! raised the event, `S` a defined agent, `!` (second place) not an active response. The agent gets
//! `#!-execd <message>` (`#!-<message>` when not an active response), as remoted's `AR_Forward`
//! sends it; here wherever in the cluster it is connected.
//!
//! A reader task takes datagrams into a bounded queue (`manager.queue`); a sender task empties it.
//! A full queue drops the request (counted, logged at most once a minute).

use super::figures::Figures;
use super::reach::Target;
use crate::node::handle::NodeHandle;
use anyhow::Context;
use log::{debug, info, warn};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wazuh_cluster_actors::throttle::{suppressed, Throttle};

/// Longest datagram taken (remoted reads `OS_MAXSTR - 1` bytes; analysisd sends less).
pub const MAX_DATAGRAM: usize = 65536;

/// One request read from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArRequest {
    pub target: Option<Target>,
    /// What the agent gets, headers included.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArError {
    #[error("not text (UTF-8)")]
    NotText,
    #[error("no '(location) ' at the start")]
    NoLocation,
    #[error("no '[source] ' after the location")]
    NoSource,
    #[error("no three location flags and an agent id")]
    NoFlags,
    #[error("agent id {0:?} is not a number")]
    BadAgent(String),
}

/// Parses one datagram as remoted's `AR_Forward` reads it (bounds checked where remoted's pointer
/// arithmetic assumes them).
pub fn parse(datagram: &[u8]) -> Result<ArRequest, ArError> {
    let text = std::str::from_utf8(datagram).map_err(|_| ArError::NotText)?;
    // The location runs to the first ')' and is followed by one space.
    let close = text.find(')').ok_or(ArError::NoLocation)?;
    let rest = text.get(close + 2..).ok_or(ArError::NoLocation)?;
    let close = rest.find(']').ok_or(ArError::NoSource)?;
    let rest = rest.get(close + 2..).ok_or(ArError::NoSource)?;
    let flags = rest.as_bytes();
    let flag = |b: &u8| b.is_ascii_uppercase() || *b == b'!';
    if flags.len() < 4 || !flags[..3].iter().all(flag) || flags[3] != b' ' {
        return Err(ArError::NoFlags);
    }
    let all = flags[0] == b'A';
    let remote = flags[1] == b'R';
    let not_ar = flags[1] == b'!';
    let specific = flags[2] == b'S';
    let rest = &rest[4..];
    let (agent, message) = rest.split_once(' ').ok_or(ArError::NoFlags)?;
    let message = if not_ar { format!("#!-{message}") } else { format!("#!-execd {message}") };
    let target = if all {
        Some(Target::All)
    } else if remote || specific {
        let id = wazuh_cluster_actors::registry::parse_id(agent).ok_or_else(|| ArError::BadAgent(agent.into()))?;
        Some(Target::Agent(id))
    } else {
        None
    };
    Ok(ArRequest { target, message })
}

/// Binds the queue at `path` and starts its reader and sender.
pub fn start(
    path: &Path,
    bound: usize,
    node: NodeHandle,
    figures: Arc<Figures>,
) -> anyhow::Result<Vec<actix_rt::task::JoinHandle<()>>> {
    super::prepare_socket_path(path)?;
    let socket = tokio::net::UnixDatagram::bind(path)
        .with_context(|| format!("cannot bind the active-response queue {}", path.display()))?;
    super::wazuh_permissions(path)?;
    let f = &figures.active_response;
    f.on.set(1);
    f.queue_bound.set(bound as u64);
    info!(node = node.name(); "reading active responses from {} (analysisd's queue; up to {bound} waiting)", path.display());
    let (tx, rx) = tokio::sync::mpsc::channel::<ArRequest>(bound);
    let reader = actix_rt::spawn(read(socket, tx, node.name().to_string(), figures.clone()));
    let sender = actix_rt::spawn(send(rx, node, figures));
    Ok(vec![reader, sender])
}

async fn read(
    socket: tokio::net::UnixDatagram,
    tx: tokio::sync::mpsc::Sender<ArRequest>,
    node: String,
    figures: Arc<Figures>,
) {
    let f = &figures.active_response;
    // One byte more than the largest datagram taken: a longer one shows as filling it.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let (mut bad, mut full) = (Throttle::new(Duration::from_secs(60)), Throttle::new(Duration::from_secs(60)));
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                warn!(node = node.as_str(); "the active-response queue failed: {e}; reading on");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        f.received.add(1);
        let request = if n > MAX_DATAGRAM {
            Err(format!("a datagram over {MAX_DATAGRAM} bytes"))
        } else {
            parse(&buf[..n]).map_err(|e| e.to_string())
        };
        let request = match request {
            Ok(r) => r,
            Err(why) => {
                f.refused.add(1);
                if let Some(unsaid) = bad.allow() {
                    let head = String::from_utf8_lossy(&buf[..n.min(80)]).into_owned();
                    warn!(node = node.as_str(); "an active-response request is not in analysisd's format ({why}): {head:?}; dropped{}", suppressed(unsaid));
                }
                continue;
            }
        };
        if request.target.is_none() {
            debug!(node = node.as_str(); "an active-response request names no agent (flags N N N): nothing to send");
            continue;
        }
        match tx.try_send(request) {
            Ok(()) => f.queued.add(1),
            Err(_) => {
                f.dropped.add(1);
                if let Some(n) = full.allow() {
                    warn!(node = node.as_str(); "the active-response queue is full ({} waiting: manager.queue); a request was dropped{}", f.queue_bound.get(), suppressed(n));
                }
            }
        }
    }
}

async fn send(mut rx: tokio::sync::mpsc::Receiver<ArRequest>, node: NodeHandle, figures: Arc<Figures>) {
    let f = &figures.active_response;
    let mut missed = Throttle::new(Duration::from_secs(60));
    while let Some(ArRequest { target, message }) = rx.recv().await {
        f.queued.set(f.queued.get().saturating_sub(1));
        let Some(target) = target else { continue };
        let reached = node.send_execd(target, message).await;
        f.sent.add(reached.here + reached.elsewhere);
        f.sent_elsewhere.add(reached.elsewhere);
        if let (Target::Agent(id), 0) = (target, reached.here + reached.elsewhere) {
            f.undelivered.add(1);
            if let Some(n) = missed.allow() {
                info!(node = node.name(); "an active response for agent {} was not sent: the agent is not connected to any node{}", wazuh_cluster_actors::registry::fmt_id(id), suppressed(n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysisds_and_the_frameworks_requests_parse_as_remoted_reads_them() {
        let json = r#"{"version":1,"origin":{"name":"node01","module":"wazuh-analysisd"},"command":"firewall-drop0","parameters":{"extra_args":[],"alert":{"rule":{"id":"5712"}}}}"#;
        let r = parse(format!("(local_source) [] NRN 001 {json}").as_bytes()).unwrap();
        assert_eq!(r, ArRequest { target: Some(Target::Agent(1)), message: format!("#!-execd {json}") });
        let r = parse(b"(msg_to_agent) [] NNS 042 restart-ossec0 - null (from_the_server) (no_rule_id)").unwrap();
        assert_eq!(r.target, Some(Target::Agent(42)));
        assert_eq!(r.message, "#!-execd restart-ossec0 - null (from_the_server) (no_rule_id)");
        let r = parse(b"(msg_to_agent) [] ANN (null) restart-ossec0").unwrap();
        assert_eq!(r.target, Some(Target::All));
        let r = parse(b"(msg_to_agent) [] N!S 007 syscheck restart").unwrap();
        assert_eq!(r, ArRequest { target: Some(Target::Agent(7)), message: "#!-syscheck restart".into() });
        assert_eq!(parse(b"(local_source) [] NNN 000 x").unwrap().target, None);
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason_and_no_panic() {
        for (bad, why) in [
            (&b"no location"[..], ArError::NoLocation),
            (b"(x)", ArError::NoLocation),
            (b"(x) no source", ArError::NoSource),
            (b"(x) []", ArError::NoSource),
            (b"(x) [] NR", ArError::NoFlags),
            (b"(x) [] NRS 001", ArError::NoFlags),
            (b"(x) [] NRS abc message", ArError::BadAgent("abc".into())),
            (b"(x) [] \xff\xfe", ArError::NotText),
            (b"(x) [] N\xc3\xa9 001 m", ArError::NoFlags),
        ] {
            assert_eq!(parse(bad), Err(why), "{:?}", String::from_utf8_lossy(bad));
        }
        // Every prefix of a good request parses or fails, never panics.
        let good = b"(local_source) [] NRN 001 {\"command\":\"x\"}";
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
    }
}
