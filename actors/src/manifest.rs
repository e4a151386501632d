//! A file manifest: every regular file under the sync roots of a node's data directory, with its
//! size, modification time and MD5 (as the seed says), and one digest over all of it, so that "same
//! files" is one comparison.
//!
//! This is a full scan. It runs on a blocking thread, never on an actor's thread.

use md5::{Digest, Md5};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The directories under the data dir that the master distributes.
pub const SYNC_ROOTS: [&str; 4] = ["etc/rules", "etc/decoders", "etc/lists", "etc/shared"];
/// Name endings never synchronized (editor and lock files).
pub const EXCLUDED_SUFFIXES: [&str; 4] = ["~", ".tmp", ".lock", ".swp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u64,
    pub mtime_ms: u64,
    pub md5: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Relative path (with `/`) -> entry, sorted.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// MD5 over the sorted `(path, size, md5)` triples; mtimes are local and left out.
    pub fn digest(&self) -> String {
        let mut h = Md5::new();
        for (path, e) in &self.files {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(e.size.to_le_bytes());
            h.update(e.md5.as_bytes());
            h.update([b'\n']);
        }
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Scans the sync roots under `data_dir`. Missing roots are empty; unreadable files are skipped and
/// returned as errors beside the manifest so the caller can log them.
pub fn scan(data_dir: &Path) -> (Manifest, Vec<String>) {
    let mut manifest = Manifest::default();
    let mut errors = Vec::new();
    for root in SYNC_ROOTS {
        let base = data_dir.join(root);
        if !base.is_dir() {
            continue;
        }
        // Symlinks are not followed: a link can never pull a file from outside the root.
        for entry in walkdir::WalkDir::new(&base).follow_links(false) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy();
            if EXCLUDED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(data_dir) else { continue };
            let Some(rel) = rel.to_str() else {
                errors.push(format!("{}: not valid UTF-8, skipped", entry.path().display()));
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!("{rel}: {e}"));
                    continue;
                }
            };
            let mtime_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            match md5_file(entry.path()) {
                Ok(md5) => {
                    manifest.files.insert(rel.replace('\\', "/"), FileEntry { size: meta.len(), mtime_ms, md5 });
                }
                Err(e) => errors.push(format!("{rel}: {e}")),
            }
        }
    }
    (manifest, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_the_roots_skips_excluded_names_and_digests_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("etc/rules/sub")).unwrap();
        std::fs::create_dir_all(d.join("etc/shared/default")).unwrap();
        std::fs::write(d.join("etc/rules/local_rules.xml"), b"<group/>").unwrap();
        std::fs::write(d.join("etc/rules/sub/x.xml"), b"x").unwrap();
        std::fs::write(d.join("etc/rules/edit.xml~"), b"backup").unwrap();
        std::fs::write(d.join("etc/shared/default/agent.conf"), b"<agent_config/>").unwrap();
        std::fs::write(d.join("etc/ossec.conf"), b"not synced").unwrap();
        let (m, errors) = scan(d);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = m.files.keys().cloned().collect();
        assert_eq!(names, ["etc/rules/local_rules.xml", "etc/rules/sub/x.xml", "etc/shared/default/agent.conf"]);
        assert_eq!(m.files["etc/rules/sub/x.xml"].md5, "9dd4e461268c8034f5c8564e155c67a6");
        let before = m.digest();
        std::fs::write(d.join("etc/rules/sub/x.xml"), b"y").unwrap();
        assert_ne!(scan(d).0.digest(), before, "content change changes the digest");
        assert_eq!(Manifest::default().digest(), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::fs::create_dir_all(dir.path().join("etc/rules")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/rules/link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("etc/rules/f")).unwrap();
        assert!(scan(dir.path()).0.files.is_empty());
    }
}
