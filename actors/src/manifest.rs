//! The file manifest of a node's sync roots: every regular file (relative path, size, mtime, MD5,
//! as the seed says) and one digest over all of it, so that "same files" is one comparison.
//!
//! Scans are incremental: a file whose size and mtime did not change keeps its previous MD5, so a
//! warm scan costs a directory walk and a `stat` per file. The files that do need hashing are
//! spread over all cores. Symlinks are never followed, and a root that is missing or could not be
//! read completely is marked incomplete, so that nobody deletes a worker's copies because of it.
//! Scans block: run them on a blocking thread, never on an actor's thread.

use md5::{Digest, Md5};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use wazuh_cluster_protocol::sync::{self, FileMeta, SYNC_ROOTS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u64,
    pub mtime_ns: u128,
    pub md5: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Relative path (with `/`) -> entry, sorted.
    pub files: BTreeMap<String, FileEntry>,
    /// Roots that exist and were read without error. Deletions are only ever decided inside these.
    pub complete_roots: BTreeSet<String>,
    /// Paths the master holds back (their contents failed [`wazuh_cluster_protocol::ruleset`]'s
    /// check): not in `files`, so never served, and never deleted on a worker either, which keeps
    /// the last good copy it has. Empty on workers.
    pub held: BTreeSet<String>,
}

/// What a scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files: usize,
    pub hashed: usize,
    pub reused: usize,
    pub errors: Vec<String>,
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

    /// The digest a worker holding `theirs` reaches once in sync: this manifest's files plus the
    /// worker's own copies of the paths held back (which it keeps) and of names each node owns
    /// (which a worker of an earlier version still lists, and which are never deleted either).
    pub(crate) fn digest_for(&self, theirs: &[FileMeta]) -> String {
        let kept: Vec<&FileMeta> = theirs
            .iter()
            .filter(|m| self.held.contains(&m.path) || sync::check_path(&m.path) == Err(sync::PathError::Excluded))
            .collect();
        if kept.is_empty() {
            return self.digest();
        }
        let mut view = Manifest { files: self.files.clone(), ..Manifest::default() };
        for m in kept {
            view.files.insert(m.path.clone(), FileEntry { size: m.size, mtime_ns: 0, md5: m.md5.clone() });
        }
        view.digest()
    }

    pub(crate) fn metas(&self) -> Vec<FileMeta> {
        self.files.iter().map(|(path, e)| FileMeta { path: path.clone(), size: e.size, md5: e.md5.clone() }).collect()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The MD5 of a file's contents (see [`hex`] for its text form).
pub(crate) fn md5_file(path: &Path) -> std::io::Result<[u8; 16]> {
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
    Ok(h.finalize().into())
}

struct Found {
    rel: String,
    abs: PathBuf,
    size: u64,
    mtime_ns: u128,
}

/// Scans the sync roots under `data_dir`, reusing `previous` for unchanged files.
/// Walks one subtree (symlinks not followed): the files in it, errors, and whether it was complete.
fn walk(data_dir: &Path, base: &Path, max_depth: Option<usize>) -> (Vec<Found>, Vec<String>, bool) {
    let (mut found, mut errors, mut complete) = (Vec::new(), Vec::new(), true);
    let mut walker = walkdir::WalkDir::new(base).follow_links(false);
    if let Some(depth) = max_depth {
        walker = walker.max_depth(depth);
    }
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                complete = false;
                errors.push(e.to_string());
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if sync::excluded(&name) {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(data_dir) else { continue };
        let Some(rel) = rel.to_str().map(|r| r.replace('\\', "/")) else {
            errors.push(format!("{}: not valid UTF-8, skipped", entry.path().display()));
            continue;
        };
        if let Err(e) = sync::check_path(&rel) {
            errors.push(format!("{rel}: {e}, skipped"));
            continue;
        }
        match entry.metadata() {
            Ok(meta) => {
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                found.push(Found { rel, abs: entry.path().to_path_buf(), size: meta.len(), mtime_ns });
            }
            Err(e) => {
                complete = false;
                errors.push(format!("{rel}: {e}"));
            }
        }
    }
    (found, errors, complete)
}

/// Scans the sync roots under `data_dir`, reusing `previous` for unchanged files. The walk and the
/// hashing both use every core (the subdirectories of the roots are shared out between threads).
pub fn scan(data_dir: &Path, previous: Option<&Manifest>) -> (Manifest, ScanStats) {
    let mut found = Vec::new();
    let mut stats = ScanStats::default();
    let mut complete_roots = BTreeSet::new();
    // Each root's own files, and its subdirectories as units of work.
    let mut units: Vec<(&'static str, PathBuf)> = Vec::new();
    let mut root_ok: BTreeMap<&'static str, bool> = BTreeMap::new();
    for root in SYNC_ROOTS {
        let base = data_dir.join(root);
        match std::fs::symlink_metadata(&base) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                stats.errors.push(format!("{root}: not a directory (a symlink is never followed)"));
                continue;
            }
            Err(_) => continue,
        }
        let (top, errors, complete) = walk(data_dir, &base, Some(1));
        found.extend(top);
        stats.errors.extend(errors);
        root_ok.insert(root, complete);
        match std::fs::read_dir(&base) {
            Ok(entries) => {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        units.push((root, e.path()));
                    }
                }
            }
            Err(e) => {
                root_ok.insert(root, false);
                stats.errors.push(format!("{root}: {e}"));
            }
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let per = units.len().div_ceil(threads).max(1);
    let walked: Vec<(&'static str, Vec<Found>, Vec<String>, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = units
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(root, dir)| {
                            let (f, e, c) = walk(data_dir, dir, None);
                            (*root, f, e, c)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    for (root, f, errors, complete) in walked {
        found.extend(f);
        stats.errors.extend(errors);
        if !complete {
            root_ok.insert(root, false);
        }
    }
    for (root, ok) in root_ok {
        if ok {
            complete_roots.insert(root.to_string());
        }
    }
    // Reuse what did not change; hash the rest on every core.
    let mut files = BTreeMap::new();
    let mut to_hash = Vec::new();
    for f in found {
        match previous.and_then(|p| p.files.get(&f.rel)) {
            Some(old) if old.size == f.size && old.mtime_ns == f.mtime_ns && f.mtime_ns != 0 => {
                files.insert(f.rel, old.clone());
                stats.reused += 1;
            }
            _ => to_hash.push(f),
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let chunk = to_hash.len().div_ceil(threads).max(1);
    let results: Vec<(String, std::io::Result<FileEntry>)> = std::thread::scope(|s| {
        let handles: Vec<_> = to_hash
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|f| {
                            let r = md5_file(&f.abs).map(|md5| FileEntry {
                                size: f.size,
                                mtime_ns: f.mtime_ns,
                                md5: hex(&md5),
                            });
                            (f.rel.clone(), r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    for (rel, r) in results {
        match r {
            Ok(entry) => {
                files.insert(rel, entry);
                stats.hashed += 1;
            }
            // Deleted while being hashed, or unreadable: logged, the others go on. The root is no
            // longer complete, so nothing is deleted on the workers because of it.
            Err(e) => {
                if let Some(root) = sync::root_of(&rel) {
                    complete_roots.remove(root);
                }
                stats.errors.push(format!("{rel}: {e}"));
            }
        }
    }
    stats.files = files.len();
    (Manifest { files, complete_roots, held: BTreeSet::new() }, stats)
}

/// What changed between two manifests: files added or modified (with their new metadata) and files
/// removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub changed: Vec<FileMeta>,
    pub removed: Vec<String>,
}

impl Delta {
    /// Every path the delta names (changed or removed).
    pub fn paths(&self) -> Vec<String> {
        self.changed.iter().map(|m| m.path.clone()).chain(self.removed.iter().cloned()).collect()
    }

    pub fn between(old: &Manifest, new: &Manifest) -> Delta {
        let mut d = Delta::default();
        for (path, e) in &new.files {
            if old.files.get(path).is_none_or(|o| o.md5 != e.md5 || o.size != e.size) {
                d.changed.push(FileMeta { path: path.clone(), size: e.size, md5: e.md5.clone() });
            }
        }
        // Never announce removals under a root the master cannot see completely (missing or
        // unreadable): workers keep their copies.
        d.removed = old
            .files
            .keys()
            .filter(|p| !new.files.contains_key(*p) && !new.held.contains(*p))
            .filter(|p| sync::root_of(p).is_some_and(|r| new.complete_roots.contains(r)))
            .cloned()
            .collect();
        d
    }

    pub fn len(&self) -> usize {
        self.changed.len() + self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file of the master's disk refused by the ruleset check, with the contents it was refused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub size: u64,
    pub md5: String,
    pub why: String,
}

/// What the master serves from what its disk holds: `disk` without the ruleset files whose
/// contents fail the check. A file is read again only when its contents changed since the last
/// pass: `served` (what was served then) and `held` (what was held back then) say which were
/// already judged. Returns the manifest to serve and the files held back now.
pub fn hold_back(
    data_dir: &Path,
    disk: &Manifest,
    served: Option<&Manifest>,
    held: &BTreeMap<String, Held>,
) -> (Manifest, BTreeMap<String, Held>) {
    let mut out = disk.clone();
    let mut now = BTreeMap::new();
    for (path, e) in &disk.files {
        let Some(kind) = wazuh_cluster_protocol::ruleset::kind_of(path) else { continue };
        let same = |size: u64, md5: &str| size == e.size && md5 == e.md5;
        if served.and_then(|m| m.files.get(path)).is_some_and(|o| same(o.size, &o.md5)) {
            continue;
        }
        let why = match held.get(path) {
            Some(h) if same(h.size, &h.md5) => Some(h.why.clone()),
            _ => judge(&data_dir.join(path), kind, e),
        };
        if let Some(why) = why {
            out.files.remove(path);
            out.held.insert(path.clone());
            now.insert(path.clone(), Held { size: e.size, md5: e.md5.clone(), why });
        }
    }
    (out, now)
}

/// Why the file at `abs` (of entry `e`) is refused, if it is.
fn judge(abs: &Path, kind: wazuh_cluster_protocol::ruleset::Kind, e: &FileEntry) -> Option<String> {
    use wazuh_cluster_protocol::ruleset::{self, Refused, Source};
    let max = ruleset::max_size(kind);
    if e.size > max as u64 {
        // Not even read.
        return Some(Refused::TooLarge { size: e.size as usize, max }.to_string());
    }
    let data = match std::fs::read(abs) {
        Ok(data) => data,
        Err(error) => return Some(format!("cannot be read: {error}")),
    };
    if data.len() as u64 != e.size || hex(&Md5::digest(&data)) != e.md5 {
        // What was hashed is not what was checked: held until the next pass hashes it again.
        return Some("changed while it was being checked; checked again at the next scan".into());
    }
    ruleset::check(kind, &data, Source::Disk).err().map(|why| why.to_string())
}

fn stat_entry(abs: &Path) -> Option<(u64, u128)> {
    let meta = std::fs::symlink_metadata(abs).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mtime_ns =
        meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    Some((meta.len(), mtime_ns))
}

/// Updates `previous` for a set of changed absolute paths (files or directories, present or gone)
/// instead of walking every root: what a file notification needs.
pub fn update(data_dir: &Path, previous: &Manifest, paths: &[PathBuf]) -> (Manifest, ScanStats) {
    let mut m = previous.clone();
    let mut stats = ScanStats::default();
    for abs in paths {
        let Ok(rel) = abs.strip_prefix(data_dir) else { continue };
        let Some(rel) = rel.to_str().map(|r| r.replace('\\', "/")) else { continue };
        match std::fs::symlink_metadata(abs) {
            Ok(meta) if meta.is_dir() => {
                // Re-walk the directory: drop what is gone under it, (re)hash what changed.
                let prefix = format!("{rel}/");
                m.files.retain(|p, _| !p.starts_with(&prefix));
                for entry in walkdir::WalkDir::new(abs).follow_links(false).into_iter().flatten() {
                    if !entry.file_type().is_file() {
                        continue;
                    }
                    let Some(r) =
                        entry.path().strip_prefix(data_dir).ok().and_then(|r| r.to_str()).map(|r| r.replace('\\', "/"))
                    else {
                        continue;
                    };
                    refresh(&mut m, previous, &r, entry.path(), &mut stats);
                }
            }
            Ok(meta) if meta.is_file() => refresh(&mut m, previous, &rel, abs, &mut stats),
            // Gone, or something that is not a file (a symlink): not in the manifest.
            _ => {
                let prefix = format!("{rel}/");
                m.files.retain(|p, _| p != &rel && !p.starts_with(&prefix));
            }
        }
    }
    for root in SYNC_ROOTS {
        let base = data_dir.join(root);
        let is_dir = std::fs::symlink_metadata(&base).map(|m| m.is_dir()).unwrap_or(false);
        if !is_dir {
            m.complete_roots.remove(root);
        } else if !m.complete_roots.contains(root) {
            // A root that (re)appeared: read it whole once, so that it can be trusted again.
            let before = stats.errors.len();
            let prefix = format!("{root}/");
            m.files.retain(|p, _| !p.starts_with(&prefix));
            for entry in walkdir::WalkDir::new(&base).follow_links(false) {
                match entry {
                    Ok(e) if e.file_type().is_file() => {
                        if let Some(r) =
                            e.path().strip_prefix(data_dir).ok().and_then(|r| r.to_str()).map(|r| r.replace('\\', "/"))
                        {
                            refresh(&mut m, previous, &r, e.path(), &mut stats);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => stats.errors.push(e.to_string()),
                }
            }
            if stats.errors.len() == before {
                m.complete_roots.insert(root.to_string());
            }
        }
    }
    stats.files = m.files.len();
    (m, stats)
}

fn refresh(m: &mut Manifest, previous: &Manifest, rel: &str, abs: &Path, stats: &mut ScanStats) {
    if sync::check_path(rel).is_err() {
        m.files.remove(rel);
        return;
    }
    let Some((size, mtime_ns)) = stat_entry(abs) else {
        m.files.remove(rel);
        return;
    };
    if let Some(old) = previous.files.get(rel).filter(|o| o.size == size && o.mtime_ns == mtime_ns && mtime_ns != 0) {
        m.files.insert(rel.to_string(), old.clone());
        stats.reused += 1;
        return;
    }
    match md5_file(abs) {
        Ok(md5) => {
            m.files.insert(rel.to_string(), FileEntry { size, mtime_ns, md5: hex(&md5) });
            stats.hashed += 1;
        }
        Err(e) => {
            m.files.remove(rel);
            stats.errors.push(format!("{rel}: {e}"));
        }
    }
}

/// Records files just written (their size and MD5 are known; only the mtime is read) and removed.
pub(crate) fn record_applied(data_dir: &Path, m: &mut Manifest, written: &[FileMeta], deleted: &[String]) {
    for f in written {
        match stat_entry(&data_dir.join(&f.path)) {
            Some((size, mtime_ns)) => {
                m.files.insert(f.path.clone(), FileEntry { size, mtime_ns, md5: f.md5.clone() });
            }
            None => {
                m.files.remove(&f.path);
            }
        }
    }
    for d in deleted {
        m.files.remove(d);
    }
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
        let (m, stats) = scan(d, None);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        let names: Vec<_> = m.files.keys().cloned().collect();
        assert_eq!(names, ["etc/rules/local_rules.xml", "etc/rules/sub/x.xml", "etc/shared/default/agent.conf"]);
        assert_eq!(m.files["etc/rules/sub/x.xml"].md5, "9dd4e461268c8034f5c8564e155c67a6");
        assert_eq!(m.complete_roots.iter().cloned().collect::<Vec<_>>(), ["etc/rules", "etc/shared"]);
        let before = m.digest();
        // Warm: nothing rehashed.
        let (warm, s) = scan(d, Some(&m));
        assert_eq!((s.hashed, s.reused), (0, 3));
        assert_eq!(warm.digest(), before);
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(d.join("etc/rules/sub/x.xml"), b"yy").unwrap();
        let (changed, s) = scan(d, Some(&warm));
        assert_eq!(s.hashed, 1);
        assert_ne!(changed.digest(), before, "content change changes the digest");
        assert_eq!(Manifest::default().digest(), "d41d8cd98f00b204e9800998ecf8427e");
        // A partial update for the paths that changed gives the same manifest as a full scan.
        std::fs::write(d.join("etc/rules/new.xml"), b"n").unwrap();
        std::fs::remove_dir_all(d.join("etc/shared/default")).unwrap();
        let paths = vec![d.join("etc/rules/new.xml"), d.join("etc/shared/default"), d.join("etc/rules/sub")];
        let (partial, _) = update(d, &changed, &paths);
        let (full, _) = scan(d, None);
        assert_eq!(partial.files, full.files);
        let delta = Delta::between(&changed, &partial);
        assert_eq!(delta.changed.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(), ["etc/rules/new.xml"]);
        assert_eq!(delta.removed, ["etc/shared/default/agent.conf"]);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_not_followed_and_unreadable_files_make_the_root_incomplete() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::fs::create_dir_all(dir.path().join("etc/rules")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/rules/link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("etc/rules/f")).unwrap();
        let (m, _) = scan(dir.path(), None);
        assert!(m.files.is_empty());
        assert!(m.complete_roots.contains("etc/rules"));
        // A symlinked root is not a root.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/decoders")).unwrap();
        let (m, stats) = scan(dir.path(), None);
        assert!(!m.complete_roots.contains("etc/decoders"));
        assert!(stats.errors.iter().any(|e| e.contains("etc/decoders")));
        // An unreadable file (when not root, which ignores modes) is logged and the rest goes on.
        let locked = dir.path().join("etc/rules/locked.xml");
        std::fs::write(&locked, b"x").unwrap();
        std::fs::write(dir.path().join("etc/rules/ok.xml"), b"x").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let (m, stats) = scan(dir.path(), None);
        assert!(m.files.contains_key("etc/rules/ok.xml"));
        if std::fs::read(&locked).is_err() {
            assert!(!m.files.contains_key("etc/rules/locked.xml"));
            assert!(!m.complete_roots.contains("etc/rules"));
            assert!(stats.errors.iter().any(|e| e.contains("locked.xml")));
        }
    }

    #[test]
    fn refused_ruleset_files_are_held_back_judged_once_and_never_deleted_on_a_worker() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (rel, body) in [
            ("etc/rules/good.xml", &b"<group name=\"g\"><rule id=\"1\" level=\"1\"/></group>\n"[..]),
            ("etc/rules/broken.xml", b"<group name=\"g\">\n<rule id=\"2\">\n"),
            (
                "etc/decoders/xxe.xml",
                b"<!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/shadow\">]>\n<decoder name=\"&x;\"/>",
            ),
            ("etc/lists/ok", b"a:b\n"),
            ("etc/lists/bad", b"no colon\n"),
            ("etc/shared/default/agent.conf", b"not checked here"),
        ] {
            std::fs::create_dir_all(d.join(rel).parent().unwrap()).unwrap();
            std::fs::write(d.join(rel), body).unwrap();
        }
        let (disk, _) = scan(d, None);
        let (served, held) = hold_back(d, &disk, None, &BTreeMap::new());
        assert_eq!(held.keys().collect::<Vec<_>>(), ["etc/decoders/xxe.xml", "etc/lists/bad", "etc/rules/broken.xml"]);
        assert!(held["etc/rules/broken.xml"].why.contains("line 2"), "{:?}", held["etc/rules/broken.xml"]);
        assert!(held["etc/decoders/xxe.xml"].why.contains("declarations"));
        assert_eq!(served.files.len(), 3);
        assert!(served.held.contains("etc/rules/broken.xml") && !served.files.contains_key("etc/rules/broken.xml"));
        // A worker holding an older, good copy of a held file keeps it: not deleted, not fetched,
        // and its digest (with that copy) is what the master expects of it.
        let mut worker = served.metas();
        worker.push(FileMeta { path: "etc/rules/broken.xml".into(), size: 5, md5: "00".into() });
        let (fetch, delete, _, _) = crate::files::plan(&served, &worker);
        assert!(fetch.is_empty() && delete.is_empty(), "{fetch:?} {delete:?}");
        let theirs = Manifest {
            files: worker
                .iter()
                .map(|m| (m.path.clone(), FileEntry { size: m.size, mtime_ns: 0, md5: m.md5.clone() }))
                .collect(),
            ..Manifest::default()
        };
        assert_eq!(served.digest_for(&worker), theirs.digest());
        assert_eq!(served.digest_for(&served.metas()), served.digest());
        // A worker of an earlier version lists the files it owns: kept, and in sync with them.
        let mut older = served.metas();
        older.push(FileMeta { path: "etc/lists/ok.cdb".into(), size: 3, md5: "11".into() });
        let (fetch, delete, _, _) = crate::files::plan(&served, &older);
        assert!(fetch.is_empty() && delete.is_empty());
        let older_view = Manifest {
            files: older
                .iter()
                .map(|m| (m.path.clone(), FileEntry { size: m.size, mtime_ns: 0, md5: m.md5.clone() }))
                .collect(),
            ..Manifest::default()
        };
        assert_eq!(served.digest_for(&older), older_view.digest());
        // Unchanged files are not judged again; the held ones keep their reason without a read.
        std::fs::remove_file(d.join("etc/lists/bad")).unwrap();
        std::fs::create_dir(d.join("etc/lists/bad")).unwrap();
        let (again, held_again) = hold_back(d, &disk, Some(&served), &held);
        assert_eq!((again, &held_again), (served.clone(), &held));
        std::fs::remove_dir(d.join("etc/lists/bad")).unwrap();
        // Fixed: served again, and announced as a change; held files are never announced removed.
        std::fs::write(d.join("etc/rules/broken.xml"), b"<group name=\"g\"/>\n").unwrap();
        let (disk2, _) = scan(d, Some(&disk));
        let (served2, held2) = hold_back(d, &disk2, Some(&served), &held);
        assert_eq!(held2.keys().collect::<Vec<_>>(), ["etc/decoders/xxe.xml"]);
        let delta = Delta::between(&served, &served2);
        assert_eq!(delta.changed.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(), ["etc/rules/broken.xml"]);
        assert!(delta.removed.is_empty(), "{delta:?}");
        // Breaking a good file: held, and not announced as removed either.
        std::fs::write(d.join("etc/rules/good.xml"), b"<group>").unwrap();
        let (disk3, _) = scan(d, Some(&disk2));
        let (served3, held3) = hold_back(d, &disk3, Some(&served2), &held2);
        assert!(held3.contains_key("etc/rules/good.xml"));
        assert!(Delta::between(&served2, &served3).is_empty());
    }
}
