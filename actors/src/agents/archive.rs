//! The per-node event archive: one JSON object per line (`time`, `agent` id and name, `location`,
//! `message`) in `<data_dir>/var/archives/events.jsonl`, rotated by size (`events.jsonl.1` is the
//! newest old file), written by one thread so that agent sessions never wait for the disk.
//!
//! Between the sessions and that thread is a queue of [`QUEUE`] events. When the disk falls that
//! far behind, further events are dropped and counted (`events_dropped` in the hub's figures, one
//! log line per minute at most) rather than held in memory or made to slow down keep-alives.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

/// One event, as received.
#[derive(Debug, Clone)]
pub struct ArchivedEvent {
    pub time_ms: u64,
    /// The agent that sent it (shared with its connection, not copied).
    pub agent: std::sync::Arc<super::AgentKey>,
    pub location: String,
    pub message: String,
}

/// Events waiting for the writer thread, at most.
pub const QUEUE: usize = 65_536;

/// Where events go; cheap to clone.
#[derive(Clone)]
pub struct Archive {
    tx: mpsc::SyncSender<ArchivedEvent>,
    pub written: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    /// Events dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
    node: Arc<str>,
    last_drop_log: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Archive {
    /// Starts the writer thread on `<data_dir>/var/archives/events.jsonl`.
    pub fn start(node: &str, data_dir: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let dir = data_dir.join("var/archives");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("events.jsonl");
        let (tx, rx): (mpsc::SyncSender<ArchivedEvent>, _) = mpsc::sync_channel(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (w, f) = (written.clone(), failed.clone());
        let name = node.to_string();
        let mut writer = Writer::open(path, max_bytes.max(1024), keep)?;
        std::thread::Builder::new().name("event-archive".into()).spawn(move || {
            // Ends when every sender is gone.
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let mut ok = 0;
                for e in &batch {
                    match writer.write(e) {
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
            }
        })?;
        Ok(Self {
            tx,
            written,
            failed,
            dropped: Arc::new(AtomicU64::new(0)),
            node: node.into(),
            last_drop_log: Default::default(),
        })
    }

    /// Queues `e` for the writer; never waits. A full queue drops it (counted, logged once a minute).
    pub fn send(&self, e: ArchivedEvent) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(e) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let Ok(mut last) = self.last_drop_log.lock() else { return };
            if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                *last = Some(std::time::Instant::now());
                log::warn!(node = &*self.node; "the event archive is {QUEUE} events behind the agents; {dropped} events dropped so far");
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl Writer {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, file: std::io::BufWriter::new(file), size, max_bytes, keep })
    }

    fn write(&mut self, e: &ArchivedEvent) -> std::io::Result<()> {
        let line = serde_json::json!({
            "time": e.time_ms,
            "agent": { "id": crate::registry::fmt_id(e.agent.id), "name": &*e.agent.name },
            "location": e.location,
            "message": e.message,
        })
        .to_string();
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += line.len() as u64 + 1;
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
        self.file = std::io::BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_written_as_json_lines_and_rotated_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::start("node", dir.path(), 2048, 2).unwrap();
        let agent = std::sync::Arc::new(crate::agents::AgentKey {
            id: 7,
            name: "web01".into(),
            ip: wazuh_cluster_protocol::agent::enrollment::AgentIp::Any,
            aes: [0; 32],
            groups: vec!["default".to_string()].into(),
        });
        for i in 0..40 {
            archive.send(ArchivedEvent {
                time_ms: 1,
                agent: agent.clone(),
                location: "/var/log/syslog".into(),
                message: format!("event {i} {}", "x".repeat(60)),
            });
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while archive.written.load(Ordering::Relaxed) < 40 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(archive);
        let base = dir.path().join("var/archives/events.jsonl");
        let current = std::fs::read_to_string(&base).unwrap();
        let first: serde_json::Value = serde_json::from_str(current.lines().next().unwrap()).unwrap();
        assert_eq!(first["agent"]["id"], "007");
        assert_eq!(first["location"], "/var/log/syslog");
        assert!(std::fs::metadata(&base).unwrap().len() <= 2048);
        assert!(dir.path().join("var/archives/events.jsonl.1").exists());
        assert!(dir.path().join("var/archives/events.jsonl.2").exists());
        assert!(!dir.path().join("var/archives/events.jsonl.3").exists(), "only `keep` old files");
    }
}
