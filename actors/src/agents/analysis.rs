//! The hand-off of agents' events to wazuh-analysisd: its queue socket (a Unix datagram socket,
//! Wazuh's `queue/sockets/queue`), one event per datagram, formatted as remoted formats it
//! ([`wazuh_cluster_protocol::agent::analysis`]).
//!
//! Sessions never wait for analysisd: [`AnalysisQueue::offer`] puts the datagram in a queue bounded
//! in bytes and returns; one thread of its own writes the queue to the socket. When analysisd is
//! absent or restarting (no socket, connection refused) the thread retries with back-off and the
//! queue holds events up to its bound; when analysisd is slow (the socket's buffer full), the thread
//! waits on the socket and the queue fills. Past the bound, events are dropped and counted (health,
//! `/metrics`, one log line per 10 s at most). Keep-alives and other control messages never pass
//! here.

use crate::backoff::Backoff;
use log::{error, info, warn};
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What an event costs against the bound beyond its bytes (the allocation and the queue's slot).
const EVENT_OVERHEAD: usize = 64;
/// How long one send may wait for room in analysisd's socket before the thread looks again.
const SEND_WAIT: Duration = Duration::from_millis(200);

/// Figures of the hand-off, for health and `/metrics`.
#[derive(Debug, Default)]
pub struct AnalysisStats {
    /// Datagrams written to the socket.
    pub delivered: AtomicU64,
    /// Events dropped: the queue was full, or one analysisd refused as too large.
    pub dropped: AtomicU64,
    /// Bytes held in the queue now (with [`EVENT_OVERHEAD`] each).
    pub held: AtomicUsize,
    /// Whether the socket is connected now.
    pub connected: AtomicBool,
    /// Times the socket was (re)connected.
    pub connects: AtomicU64,
}

/// The sending half; cheap to share between sessions.
pub struct AnalysisQueue {
    tx: Mutex<Option<Sender<Vec<u8>>>>,
    max_bytes: usize,
    pub stats: Arc<AnalysisStats>,
    pub path: PathBuf,
    node: String,
    said: Mutex<crate::throttle::Throttle>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AnalysisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalysisQueue").field("path", &self.path).field("max_bytes", &self.max_bytes).finish()
    }
}

impl AnalysisQueue {
    /// Starts the writer thread for analysisd's queue socket at `path`, holding up to `max_bytes`.
    pub fn start(node: &str, path: &Path, max_bytes: usize) -> std::io::Result<Arc<Self>> {
        // Bounded by bytes, not by the channel: `offer` counts each datagram against `max_bytes`
        // before sending and drops (and counts) what would go past it; the writer gives the bytes
        // back as it delivers.
        let (tx, rx) = channel();
        let stats = Arc::new(AnalysisStats::default());
        let writer = Writer { node: node.to_string(), path: path.to_path_buf(), stats: stats.clone(), max_bytes };
        let thread = std::thread::Builder::new().name(format!("{node}-analysis")).spawn(move || writer.run(rx))?;
        info!(node = node; "events go to analysisd's queue {} (holding up to {max_bytes} bytes while it is away)", path.display());
        Ok(Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            max_bytes,
            stats,
            path: path.to_path_buf(),
            node: node.to_string(),
            said: Mutex::new(crate::throttle::Throttle::new(Duration::from_secs(10))),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues one datagram; never waits. `false` when it was dropped (the queue is full).
    pub fn offer(&self, datagram: Vec<u8>) -> bool {
        let cost = datagram.len() + EVENT_OVERHEAD;
        let held = self.stats.held.fetch_add(cost, Ordering::AcqRel);
        let queued = held + cost <= self.max_bytes
            && self.tx.lock().ok().and_then(|tx| tx.as_ref().map(|tx| tx.send(datagram).is_ok())).unwrap_or(false);
        if !queued {
            self.stats.held.fetch_sub(cost, Ordering::AcqRel);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            let said = self.said.lock().ok().and_then(|mut t| t.allow());
            if let Some(n) = said {
                warn!(node = self.node.as_str(); "analysisd's queue {} is not taking events fast enough: {} bytes held (the bound); events dropped ({} in all; {n} more since the last line)", self.path.display(), self.stats.held.load(Ordering::Relaxed), self.stats.dropped.load(Ordering::Relaxed));
            }
        }
        queued
    }

    /// Stops taking events and lets the writer finish what it holds (waiting at most `grace`).
    pub fn stop(&self, grace: Duration) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let start = std::time::Instant::now();
            while !handle.is_finished() && start.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

struct Writer {
    node: String,
    path: PathBuf,
    stats: Arc<AnalysisStats>,
    max_bytes: usize,
}

/// Errors that mean analysisd is not there (now): reconnect later.
fn gone(kind: ErrorKind, raw: Option<i32>) -> bool {
    matches!(kind, ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::NotConnected | ErrorKind::BrokenPipe)
        || raw == Some(libc::ECONNRESET)
        || raw == Some(libc::EDESTADDRREQ)
}

impl Writer {
    fn connect(&self) -> std::io::Result<UnixDatagram> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(&self.path)?;
        sock.set_write_timeout(Some(SEND_WAIT))?;
        Ok(sock)
    }

    /// analysisd is not there: says so once per outage, then waits out the back-off.
    fn away(&self, what: &str, said: &mut bool, backoff: &Backoff, failures: &mut u32) {
        if !*said {
            warn!(node = self.node.as_str(); "analysisd's queue {} {what}; holding events (up to {} bytes) and retrying", self.path.display(), self.max_bytes);
            *said = true;
        }
        std::thread::sleep(backoff.delay(*failures));
        *failures = failures.saturating_add(1);
    }

    fn run(self, rx: Receiver<Vec<u8>>) {
        let node = self.node.as_str();
        let mut sock: Option<UnixDatagram> = None;
        let mut pending: Option<Vec<u8>> = None;
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut failures = 0u32;
        let mut down_said = false;
        loop {
            let datagram = match pending.take() {
                Some(d) => d,
                None => match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(d) => d,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            let s = match &sock {
                Some(s) => s,
                None => match self.connect() {
                    Ok(s) => {
                        self.stats.connected.store(true, Ordering::Relaxed);
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        if down_said {
                            info!(node = node; "analysisd's queue {} takes events again ({} bytes were held)", self.path.display(), self.stats.held.load(Ordering::Relaxed));
                            down_said = false;
                        }
                        failures = 0;
                        sock.insert(s)
                    }
                    Err(e) => {
                        self.away(&format!("is not available ({e})"), &mut down_said, &backoff, &mut failures);
                        pending = Some(datagram);
                        continue;
                    }
                },
            };
            match s.send(&datagram) {
                Ok(_) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    self.stats.held.fetch_sub(datagram.len() + EVENT_OVERHEAD, Ordering::AcqRel);
                }
                // analysisd is slow: its buffer is full. Hold the event and try again.
                Err(e)
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    pending = Some(datagram);
                }
                Err(e) if gone(e.kind(), e.raw_os_error()) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    sock = None;
                    pending = Some(datagram);
                    self.away(&format!("went away ({e})"), &mut down_said, &backoff, &mut failures);
                }
                Err(e) => {
                    // Too large for its buffer (EMSGSIZE), or a failure a retry cannot help.
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    self.stats.held.fetch_sub(datagram.len() + EVENT_OVERHEAD, Ordering::AcqRel);
                    error!(node = node; "analysisd's queue {} refused an event of {} bytes: {e}; dropped", self.path.display(), datagram.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_all(sock: &UnixDatagram, n: usize) -> Vec<Vec<u8>> {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 70_000];
        (0..n).map(|_| sock.recv(&mut buf).map(|k| buf[..k].to_vec()).unwrap()).collect()
    }

    #[test]
    fn events_wait_for_analysisd_within_the_bound_and_the_rest_are_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue");
        // No listener yet: 10 events of 100 bytes fit in 1,700 bytes with their overhead; 20 do not.
        let q = AnalysisQueue::start("t", &path, 10 * (100 + EVENT_OVERHEAD)).unwrap();
        let sent: Vec<bool> = (0..20u8).map(|i| q.offer(vec![b'a' + i % 26; 100])).collect();
        assert_eq!(sent.iter().filter(|s| **s).count(), 10);
        assert_eq!(q.stats.dropped.load(Ordering::Relaxed), 10);
        assert!(!q.stats.connected.load(Ordering::Relaxed));
        // analysisd appears: the held events arrive, in order, and new ones follow.
        let listener = UnixDatagram::bind(&path).unwrap();
        let got = recv_all(&listener, 10);
        assert_eq!(got, (0..10u8).map(|i| vec![b'a' + i; 100]).collect::<Vec<_>>());
        assert!(q.offer(b"after".to_vec()));
        assert_eq!(recv_all(&listener, 1), vec![b"after".to_vec()]);
        // The sender counts a delivery once its send has returned, which may be just after the
        // datagram arrived here: wait for the figures (bounded) rather than race them.
        let start = std::time::Instant::now();
        while (q.stats.delivered.load(Ordering::Relaxed) < 11 || q.stats.held.load(Ordering::Relaxed) > 0)
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(q.stats.delivered.load(Ordering::Relaxed), 11);
        assert_eq!(q.stats.held.load(Ordering::Relaxed), 0);
        // analysisd restarts (its socket file replaced): delivery resumes on the new one.
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        assert!(q.offer(b"while away".to_vec()));
        std::thread::sleep(Duration::from_millis(300));
        let listener = UnixDatagram::bind(&path).unwrap();
        assert_eq!(recv_all(&listener, 1), vec![b"while away".to_vec()]);
        assert!(q.stats.connects.load(Ordering::Relaxed) >= 2);
        q.stop(Duration::from_secs(1));
        assert!(!q.offer(b"stopped".to_vec()));
    }
}
