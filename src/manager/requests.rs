//! remoted's request socket (`queue/sockets/remote`, Unix stream): a client (Wazuh's framework,
//! modulesd's agent upgrades) sends one framed message `<agent id> <payload>` and reads one framed
//! answer: the agent's own (`ok {...}`), or remoted's `err Cannot send request` (the agent is not
//! connected), `err Response timeout`, `err Internal error` (too many requests at once). A request
//! for an agent that does not exist is closed without an answer, as remoted does. Here the agent is
//! asked wherever in the cluster it is connected.
//!
//! Bounded: [`MAX_IN_FLIGHT`] requests at once (more are answered `err Internal error` at once), a
//! client must send its request within [`READ_TIMEOUT`], and a frame over 64 KiB closes the
//! connection; each refusal is counted and logged at most once a minute.

use super::figures::Figures;
use super::framing::{read_frame, write_frame, MAX_MESSAGE};
use super::reach::{Asked, INTERNAL_ERROR};
use crate::node::handle::NodeHandle;
use anyhow::Context;
use log::{info, warn};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixStream;
use wazuh_cluster_actors::throttle::{suppressed, Throttle};

/// Requests served at once (remoted's pool is of this order).
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Splits `<agent id> <payload>`; `None` when there is no agent id (remoted: "Request has no
/// agent id").
pub fn split(request: &[u8]) -> Option<(u32, String)> {
    let text = std::str::from_utf8(request).ok()?;
    let (agent, payload) = text.split_once(' ')?;
    let id = wazuh_cluster_actors::registry::parse_id(agent)?;
    (!payload.is_empty()).then(|| (id, payload.to_string()))
}

/// Binds the socket at `path` and serves it.
pub fn start(
    path: &Path,
    timeout: Duration,
    node: NodeHandle,
    figures: Arc<Figures>,
) -> anyhow::Result<actix_rt::task::JoinHandle<()>> {
    super::prepare_socket_path(path)?;
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the request socket {}", path.display()))?;
    super::wazuh_permissions(path)?;
    figures.requests.on.set(1);
    figures.requests.bound.set(MAX_IN_FLIGHT as u64);
    info!(node = node.name(); "serving agent requests on {} (remoted's request socket)", path.display());
    Ok(actix_rt::spawn(serve(listener, timeout, node, figures)))
}

async fn serve(listener: tokio::net::UnixListener, timeout: Duration, node: NodeHandle, figures: Arc<Figures>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let refusals = Arc::new(Mutex::new(Throttle::new(Duration::from_secs(60))));
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!(node = node.name(); "the request socket cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            figures.requests.refused.add(1);
            refused(&refusals, &node, &format!("{MAX_IN_FLIGHT} requests are in flight"));
            // Answered as remoted answers when its pool is full, in one non-blocking write (an
            // empty socket buffer takes it whole), and closed: no task, nothing waited on.
            let mut frame = (INTERNAL_ERROR.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(INTERNAL_ERROR.as_bytes());
            let _ = stream.try_write(&frame);
            continue;
        };
        let (node, figures, refusals) = (node.clone(), figures.clone(), refusals.clone());
        actix_rt::spawn(async move {
            let f = &figures.requests;
            f.in_flight.add(1);
            one(&mut stream, timeout, &node, &figures, &refusals).await;
            f.in_flight.set(f.in_flight.get().saturating_sub(1));
            drop(permit);
        });
    }
}

fn refused(throttle: &Mutex<Throttle>, node: &NodeHandle, why: &str) {
    let allowed = throttle.lock().ok().and_then(|mut t| t.allow());
    if let Some(n) = allowed {
        warn!(node = node.name(); "a request socket client was refused: {why}{}", suppressed(n));
    }
}

/// Serves one client: one request, one answer.
async fn one(
    stream: &mut UnixStream,
    timeout: Duration,
    node: &NodeHandle,
    figures: &Figures,
    refusals: &Mutex<Throttle>,
) {
    let f = &figures.requests;
    let request = match tokio::time::timeout(READ_TIMEOUT, read_frame(stream, MAX_MESSAGE)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            f.refused.add(1);
            refused(refusals, node, &e.to_string());
            return;
        }
        Err(_) => {
            f.refused.add(1);
            refused(refusals, node, &format!("no request within {} s", READ_TIMEOUT.as_secs()));
            return;
        }
    };
    f.received.add(1);
    let Some((id, payload)) = split(&request) else {
        f.failed.add(1);
        refused(refusals, node, "the request has no agent id (\"<id> <payload>\")");
        return;
    };
    let answer = match node.ask_anywhere(id, payload, timeout).await {
        Asked::Answer(answer) => {
            f.answered.add(1);
            answer
        }
        Asked::NoSuchAgent => {
            f.failed.add(1);
            refused(refusals, node, &format!("agent {} does not exist", wazuh_cluster_actors::registry::fmt_id(id)));
            return;
        }
        Asked::Failed(why) => {
            f.failed.add(1);
            why.to_string()
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write_frame(stream, answer.as_bytes())).await;
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn requests_name_their_agent_first() {
        assert_eq!(
            split(b"001 logcollector getconfig localfile"),
            Some((1, "logcollector getconfig localfile".into()))
        );
        assert_eq!(split(b"1024 agent getconfig internal"), Some((1024, "agent getconfig internal".into())));
        for bad in [&b"getconfig"[..], b"abc getconfig", b"001 ", b"001", b"\xff 001 x", b""] {
            assert_eq!(split(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
