//! The per-node event archive: one JSON object per line (`time`, `agent` id and name, `location`,
//! `message`) in `<data_dir>/var/archives/events.jsonl`, rotated by size (`events.jsonl.1` is the
//! newest old file), written by one thread so that agent sessions never touch the disk.
//!
//! Between the sessions and that thread is a queue bounded by bytes ([`QUEUE_BYTES`], each event
//! counted as its text plus [`EVENT_OVERHEAD`]). When the writer falls that far behind, a session
//! with an event to queue waits for room: it stops reading its socket, so TCP slows that agent down
//! (backpressure, as a Wazuh manager's full queue does) and no event that was received is dropped.
//! Other agents' keep-alives go on; the waits are counted (`archive_waits`) and logged once a
//! minute at most.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::Semaphore;

/// One event, as received.
#[derive(Debug, Clone)]
pub struct ArchivedEvent {
    pub time_ms: u64,
    /// The agent that sent it (shared with its connection, not copied).
    pub agent: std::sync::Arc<super::AgentKey>,
    pub location: String,
    pub message: String,
}

impl ArchivedEvent {
    /// What the event counts for against [`QUEUE_BYTES`].
    fn cost(&self) -> u32 {
        (self.location.len() + self.message.len() + EVENT_OVERHEAD).min(u32::MAX as usize) as u32
    }
}

/// Bytes of events waiting for the writer thread, at most.
pub(crate) const QUEUE_BYTES: usize = 16 << 20;

/// What an event costs beyond its text: the struct, two string headers, the channel's slot.
pub(crate) const EVENT_OVERHEAD: usize = 128;

/// Where events go; cheap to clone.
#[derive(Clone)]
pub struct Archive {
    tx: mpsc::Sender<ArchivedEvent>,
    /// Free bytes of the queue: a sender takes an event's cost, the writer gives it back.
    room: Arc<Semaphore>,
    pub written: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    /// Times a session waited for room in the queue.
    pub waits: Arc<AtomicU64>,
    node: Arc<str>,
    wait_log: Arc<std::sync::Mutex<crate::throttle::Throttle>>,
}

impl Archive {
    /// Starts the writer thread on `<data_dir>/var/archives/events.jsonl`.
    pub fn start(node: &str, data_dir: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        Self::start_with(node, data_dir, max_bytes, keep, QUEUE_BYTES, None)
    }

    /// [`Archive::start`] with a queue of `queue_bytes`; the writer waits before each batch while
    /// `paused` is set (a test sets it to play a disk that does not keep up).
    fn start_with(
        node: &str,
        data_dir: &Path,
        max_bytes: u64,
        keep: usize,
        queue_bytes: usize,
        paused: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("var/archives");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("events.jsonl");
        // Bounded by `room`, not by the channel: a sender takes an event's cost in bytes first
        // (waiting when the queue is full), so at most QUEUE_BYTES / EVENT_OVERHEAD events wait
        // here; a fixed-size channel of that many slots would allocate them all up front.
        let (tx, rx) = mpsc::channel::<ArchivedEvent>();
        let room = Arc::new(Semaphore::new(queue_bytes.clamp(64 << 10, Semaphore::MAX_PERMITS)));
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (w, f, freed) = (written.clone(), failed.clone(), room.clone());
        let name = node.to_string();
        let mut writer = Writer::open(path, max_bytes.max(1024), keep)?;
        std::thread::Builder::new().name("event-archive".into()).spawn(move || {
            let mut batch = Vec::new();
            // Ends when every sender is gone.
            while let Ok(first) = rx.recv() {
                while paused.as_ref().is_some_and(|p| p.load(Ordering::Relaxed)) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                batch.push(first);
                batch.extend(rx.try_iter().take(4095));
                let (mut ok, mut cost) = (0, 0usize);
                for e in batch.drain(..) {
                    cost += e.cost() as usize;
                    match writer.write(&e) {
                        Ok(()) => ok += 1,
                        Err(err) => {
                            if f.fetch_add(1, Ordering::Relaxed) == 0 {
                                log::error!(node = name.as_str(); "cannot write to the event archive {}: {err}", writer.path.display());
                            }
                        }
                    }
                }
                // Counted once on disk (in the page cache), so a reader sees what the count says.
                match writer.file.flush() {
                    Ok(()) => w.fetch_add(ok, Ordering::Relaxed),
                    Err(_) => f.fetch_add(ok, Ordering::Relaxed),
                };
                freed.add_permits(cost);
            }
        })?;
        Ok(Self {
            tx,
            room,
            written,
            failed,
            waits: Arc::new(AtomicU64::new(0)),
            node: node.into(),
            wait_log: Arc::new(std::sync::Mutex::new(crate::throttle::Throttle::new(std::time::Duration::from_secs(
                60,
            )))),
        })
    }

    /// Queues `e` for the writer, waiting for room when the queue is full (the caller's agent is
    /// then held back: its session reads nothing more meanwhile).
    pub async fn send(&self, e: ArchivedEvent) {
        let cost = e.cost();
        match self.room.try_acquire_many(cost) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let waits = self.waits.fetch_add(1, Ordering::Relaxed) + 1;
                if self.wait_log.lock().is_ok_and(|mut t| t.allow().is_some()) {
                    log::warn!(node = &*self.node; "the event archive is {} MiB behind the agents: agents sending events wait for it ({waits} waits so far)", QUEUE_BYTES >> 20);
                }
                match self.room.acquire_many(cost).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
            }
            Err(tokio::sync::TryAcquireError::Closed) => return,
        }
        if self.tx.send(e).is_err() {
            // The writer thread is gone (it only ends with the last sender, so: it panicked).
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    /// Bytes of events queued for the writer.
    pub(crate) fn queued_bytes(&self, queue_bytes: usize) -> usize {
        queue_bytes.saturating_sub(self.room.available_permits())
    }
}

/// One line of the archive, serialized without building a map.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: u64,
    agent: LineAgent<'a>,
    location: &'a str,
    message: &'a str,
}

#[derive(serde::Serialize)]
struct LineAgent<'a> {
    id: &'a str,
    name: &'a str,
}

/// The writer's buffer: one write system call per this many bytes at most.
const WRITE_BUFFER: usize = 256 << 10;

struct Writer {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    line: Vec<u8>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl Writer {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file: std::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            line: Vec::new(),
            size,
            max_bytes,
            keep,
        })
    }

    fn write(&mut self, e: &ArchivedEvent) -> std::io::Result<()> {
        self.line.clear();
        let id = crate::registry::fmt_id(e.agent.id);
        let line = Line {
            time: e.time_ms,
            agent: LineAgent { id: &id, name: &e.agent.name },
            location: &e.location,
            message: &e.message,
        };
        serde_json::to_writer(&mut self.line, &line)?;
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&self.line)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(name(self.keep));
            for i in (1..self.keep).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            std::fs::rename(&self.path, name(1))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.file = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Arc<crate::agents::AgentKey> {
        Arc::new(crate::agents::AgentKey {
            id: 7,
            name: "web01".into(),
            ip: wazuh_cluster_protocol::agent::enrollment::AgentIp::Any,
            aes: [0; 32],
            groups: vec!["default".to_string()].into(),
        })
    }

    fn event(agent: &Arc<crate::agents::AgentKey>, i: usize, size: usize) -> ArchivedEvent {
        ArchivedEvent {
            time_ms: 1,
            agent: agent.clone(),
            location: "/var/log/syslog".into(),
            message: format!("event {i} \"quoted\" {}", "x".repeat(size)),
        }
    }

    fn wait_written(archive: &Archive, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while archive.written.load(Ordering::Relaxed) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} written",
                archive.written.load(Ordering::Relaxed)
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn events_are_written_as_json_lines_and_rotated_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::start("node", dir.path(), 2048, 2).unwrap();
        let agent = agent();
        for i in 0..40 {
            archive.send(event(&agent, i, 60)).await;
        }
        wait_written(&archive, 40);
        drop(archive);
        let base = dir.path().join("var/archives/events.jsonl");
        let current = std::fs::read_to_string(&base).unwrap();
        let first: serde_json::Value = serde_json::from_str(current.lines().next().unwrap()).unwrap();
        assert_eq!(first["agent"]["id"], "007");
        assert_eq!(first["agent"]["name"], "web01");
        assert_eq!(first["location"], "/var/log/syslog");
        assert!(first["message"].as_str().unwrap().contains("\"quoted\""));
        assert!(std::fs::metadata(&base).unwrap().len() <= 2048);
        assert!(dir.path().join("var/archives/events.jsonl.1").exists());
        assert!(dir.path().join("var/archives/events.jsonl.2").exists());
        assert!(!dir.path().join("var/archives/events.jsonl.3").exists(), "only `keep` old files");
    }

    /// A writer that does not keep up makes senders wait once the queue's bytes are taken; nothing
    /// is dropped, and every event is written once the writer goes on.
    #[tokio::test]
    async fn a_full_queue_holds_senders_back_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let queue = 64 << 10;
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let archive = Archive::start_with("node", dir.path(), 100 << 20, 1, queue, Some(paused.clone())).unwrap();
        let agent = agent();
        let mut sent = 0;
        let blocked = loop {
            let send = archive.send(event(&agent, sent, 900));
            match tokio::time::timeout(std::time::Duration::from_millis(300), send).await {
                Ok(()) => sent += 1,
                Err(_) => break sent,
            }
            assert!(archive.queued_bytes(queue) <= queue, "the queue holds more than its bound");
            assert!(sent < 10_000, "a writer that is held never made a sender wait");
        };
        // About the bound's worth got in (the first event may be in the writer's hands, held).
        let per_event = 900 + 30 + EVENT_OVERHEAD;
        assert!(blocked >= queue / per_event - 1 && blocked <= queue / per_event + 2, "{blocked} events queued");
        assert_eq!(archive.waits.load(Ordering::Relaxed), 1);
        assert_eq!(archive.written.load(Ordering::Relaxed), 0);
        // The disk goes on: the waiting sender gets in, and everything is written.
        paused.store(false, Ordering::Relaxed);
        archive.send(event(&agent, blocked, 900)).await;
        for i in blocked + 1..blocked + 200 {
            archive.send(event(&agent, i, 900)).await;
        }
        wait_written(&archive, (blocked + 200) as u64);
        assert_eq!(archive.failed.load(Ordering::Relaxed), 0);
        drop(archive);
        let text = std::fs::read_to_string(dir.path().join("var/archives/events.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), blocked + 200);
        for (i, l) in lines.iter().enumerate() {
            assert!(l["message"].as_str().unwrap().starts_with(&format!("event {i} ")), "line {i} out of order");
        }
    }
}
