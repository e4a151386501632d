//! What the manager integrations did: plain counters, read by `/metrics`, `/health` and
//! `GET /manager/status`.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter the integrations add to and the API reads.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// Active responses read from analysisd's queue.
#[derive(Debug, Default, Serialize)]
pub struct ArFigures {
    pub on: Count,
    /// Datagrams read.
    pub received: Count,
    /// Agents whose connection (here or on another node) took a message.
    pub sent: Count,
    /// Of those, agents held by another node (through the master).
    pub sent_elsewhere: Count,
    /// Requests for agents not connected anywhere (remoted sends them nowhere either).
    pub undelivered: Count,
    /// Datagrams not in analysisd's format (or not UTF-8, or over 64 KiB).
    pub refused: Count,
    /// Requests dropped because the queue was full (`manager.queue`).
    pub dropped: Count,
    /// Requests waiting to be sent now, and the bound.
    pub queued: Count,
    pub queue_bound: Count,
}

/// Requests on remoted's request socket.
#[derive(Debug, Default, Serialize)]
pub struct RequestFigures {
    pub on: Count,
    /// Requests received.
    pub received: Count,
    /// Answered with the agent's answer.
    pub answered: Count,
    /// Answered with one of remoted's errors (`err ...`), or closed unanswered (no such agent).
    pub failed: Count,
    /// Clients refused because as many requests as allowed were in flight, or that sent a frame
    /// over 64 KiB or stalled.
    pub refused: Count,
    /// In flight now, and the bound.
    pub in_flight: Count,
    pub bound: Count,
}

/// wazuh-db's agent table.
#[derive(Debug, Default, Serialize)]
pub struct WdbFigures {
    pub on: Count,
    /// 1 while the node holds a connection to wazuh-db.
    pub connected: Count,
    /// Connections made (the first, then one after each wazuh-db restart, each followed by a resync).
    pub connections: Count,
    /// Queries sent, and of those answered with an error (`err ...`).
    pub queries: Count,
    pub errors: Count,
    /// Agent rows written (inserted, updated, deleted), all passes together.
    pub rows_written: Count,
    pub inserted: Count,
    pub deleted: Count,
    /// Passes run, and passes that could not reach wazuh-db (their changes wait for the next pass:
    /// nothing queues up meanwhile, the next pass writes the state as it is then).
    pub passes: Count,
    pub missed_passes: Count,
    /// The last pass: agents looked at, rows written, queries sent, bytes sent, milliseconds.
    pub last_agents: Count,
    pub last_rows: Count,
    pub last_queries: Count,
    pub last_bytes: Count,
    pub last_ms: Count,
}

/// What the integrations did, for `/metrics`, `/health` and `GET /manager/status`.
#[derive(Debug, Default, Serialize)]
pub struct Figures {
    pub active_response: ArFigures,
    pub requests: RequestFigures,
    pub wazuh_db: WdbFigures,
}

impl Figures {
    /// Every figure as `(integration, figure, value)`.
    pub fn samples(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        if let Ok(serde_json::Value::Object(all)) = serde_json::to_value(self) {
            for (integration, figures) in all {
                let serde_json::Value::Object(figures) = figures else { continue };
                if figures.get("on").and_then(serde_json::Value::as_u64) != Some(1) {
                    continue;
                }
                for (figure, value) in figures {
                    if let Some(v) = value.as_u64() {
                        out.push((integration.clone(), figure, v));
                    }
                }
            }
        }
        out
    }

    /// Why the integrations are not serving as they should (for `/health`): wazuh-db on and not
    /// connected. The others need nothing to be up.
    pub fn trouble(&self) -> Option<String> {
        (self.wazuh_db.on.get() == 1 && self.wazuh_db.connected.get() == 0)
            .then(|| "wazuh-db is not reachable: its agent table waits (see wazuh_db in /metrics)".to_string())
    }
}
