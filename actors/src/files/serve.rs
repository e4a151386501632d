//! The master's side of file sync: what a worker must fetch and delete ([`plan`]), and the file
//! contents it asks for ([`read_batch`]): only files of the current manifest, only through
//! confined paths, LZ4-compressed where it pays, read once for all workers that sync together
//! ([`PartCache`]).

use super::confine::{safe_target, Access, Dir, Dirs, FileError, MAX_OPEN_DIRS};
use crate::manifest::{FileEntry, Manifest};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use wazuh_cluster_protocol::message::{FetchItem, FileBatch, FilePart};
use wazuh_cluster_protocol::sync::{self, FileMeta};

/// Below this, compression is not worth it.
const COMPRESS_MIN: usize = 512;

/// Master side: parts read (and compressed) for one worker, kept for the others.
///
/// Workers that sync at the same time (every worker of a cluster that starts, or reconnects after
/// the master restarted) ask for the same files in the same order, so each file is read and
/// compressed once instead of once per worker. One cache belongs to one manifest: a part is only
/// served for the MD5 and size the manifest gives, so nothing stale can come out of it. Bounded
/// in bytes; the oldest parts go first.
pub struct PartCache {
    capacity: usize,
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    parts: std::collections::HashMap<(String, u64), std::sync::Arc<FilePart>>,
    /// Oldest first, with when each part came in.
    order: std::collections::VecDeque<((String, u64), std::time::Instant)>,
    bytes: usize,
    hits: u64,
}

impl CacheInner {
    fn pop_oldest(&mut self) -> bool {
        let Some((key, _)) = self.order.pop_front() else { return false };
        if let Some(p) = self.parts.remove(&key) {
            self.bytes -= p.data.len() + p.path.len() + 64;
        }
        true
    }
}

impl PartCache {
    /// How long a part stays cached (see [`PartCache::expire`]).
    pub(crate) const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

    /// Room for the parts of a few answers: workers that sync together stay that close.
    pub(crate) const DEFAULT_CAPACITY: usize = 32 << 20;

    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Default::default() }
    }

    /// The part of `rel` at `offset`, if cached for this `entry` and no longer than `max`.
    fn get(&self, rel: &str, offset: u64, entry: &FileEntry, max: usize) -> Option<FilePart> {
        let mut inner = self.inner.lock().ok()?;
        let part = inner.parts.get(&(rel.to_string(), offset))?.clone();
        if part.md5 != entry.md5 || part.size != entry.size || part.raw_len as usize > max.max(1) {
            return None;
        }
        inner.hits += 1;
        Some(FilePart::clone(&part))
    }

    fn put(&self, part: &FilePart) {
        let cost = part.data.len() + part.path.len() + 64;
        if cost > self.capacity {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        let key = (part.path.clone(), part.offset);
        if inner.parts.contains_key(&key) {
            return;
        }
        while inner.bytes + cost > self.capacity && inner.pop_oldest() {}
        inner.bytes += cost;
        inner.order.push_back((key.clone(), std::time::Instant::now()));
        inner.parts.insert(key, std::sync::Arc::new(part.clone()));
    }

    /// Drops parts cached longer than `max_age` ago: workers that sync together ask for a part
    /// within moments of each other, and an idle master should not hold on to the memory.
    pub(crate) fn expire(&self, max_age: std::time::Duration) {
        let Ok(mut inner) = self.inner.lock() else { return };
        while inner.order.front().is_some_and(|(_, at)| at.elapsed() > max_age) && inner.pop_oldest() {}
    }

    /// Parts served from the cache so far.
    #[cfg(test)]
    fn hits(&self) -> u64 {
        self.inner.lock().map(|i| i.hits).unwrap_or(0)
    }
}

impl std::fmt::Debug for PartCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (parts, bytes) = self.inner.lock().map(|i| (i.parts.len(), i.bytes)).unwrap_or_default();
        f.debug_struct("PartCache").field("parts", &parts).field("bytes", &bytes).finish()
    }
}

impl Default for PartCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

/// Master side: up to `max` bytes of `rel` from `offset`, if `rel` is in `manifest`.
pub fn read_part(
    data_dir: &Path,
    manifest: &Manifest,
    rel: &str,
    offset: u64,
    max: usize,
) -> Result<FilePart, FileError> {
    read_part_checked(data_dir, manifest, rel, offset, max, &mut Default::default(), None)
}

/// [`read_part`] keeping, across one batch, the directories already checked for symlinks (open),
/// and going through `cache` when given.
fn read_part_checked(
    data_dir: &Path,
    manifest: &Manifest,
    rel: &str,
    offset: u64,
    max: usize,
    dirs: &mut Dirs,
    cache: Option<&PartCache>,
) -> Result<FilePart, FileError> {
    // A path that could never be served is refused as such, before it is looked up.
    sync::check_path(rel)?;
    let entry = manifest.files.get(rel).ok_or(FileError::NotInManifest)?;
    if let Some(part) = cache.and_then(|c| c.get(rel, offset, entry, max)) {
        return Ok(part);
    }
    let path = data_dir.join(rel);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(FileError::NoParent(path));
    };
    if !dirs.0.contains_key(parent) {
        safe_target(data_dir, rel)?;
        let dir = Dir::open(parent).map_err(FileError::io(parent))?;
        if dirs.0.len() >= MAX_OPEN_DIRS {
            dirs.0.clear();
        }
        dirs.0.insert(parent.to_path_buf(), dir);
    }
    let dir = dirs.0.get(parent).ok_or_else(|| FileError::NoParent(path.clone()))?;
    // The file itself is opened with O_NOFOLLOW: a symlink put there since the scan is refused.
    let mut file = dir.open_file(name, Access::Read).map_err(FileError::io(&path))?;
    let size = file.metadata().map_err(FileError::io(&path))?.len();
    if size != entry.size {
        return Err(FileError::Changed);
    }
    if offset > size {
        return Err(FileError::BeyondEnd { offset, size });
    }
    file.seek(SeekFrom::Start(offset)).map_err(FileError::io(&path))?;
    let want = ((size - offset) as usize).min(max.max(1));
    // Read into spare capacity: no zeroing of a buffer about to be overwritten.
    let mut raw = Vec::with_capacity(want);
    (&mut file).take(want as u64).read_to_end(&mut raw).map_err(FileError::io(&path))?;
    if raw.len() != want {
        return Err(FileError::Changed);
    }
    let (data, compressed) = if raw.len() >= COMPRESS_MIN {
        let c = lz4_flex::block::compress(&raw);
        if c.len() < raw.len() * 9 / 10 {
            (c, true)
        } else {
            (raw.clone(), false)
        }
    } else {
        (raw.clone(), false)
    };
    let part = FilePart {
        path: rel.to_string(),
        offset,
        size,
        md5: entry.md5.clone(),
        raw_len: raw.len() as u64,
        compressed,
        data,
    };
    if let Some(cache) = cache {
        cache.put(&part);
    }
    Ok(part)
}

/// Master side: the parts of `items` that fit in about `budget` bytes, read on several threads (the
/// disk's per-file latency, not the CPU, is what a batch of small files waits on). Items left out
/// are simply asked for again.
pub fn read_batch(
    data_dir: &Path,
    manifest: &Manifest,
    items: Vec<FetchItem>,
    budget: usize,
    cache: Option<&PartCache>,
) -> FileBatch {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    let per = items.len().div_ceil(threads).max(1);
    let share = (budget / threads).max(1);
    let parts: Vec<FileBatch> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    let mut batch = FileBatch::default();
                    let mut used = 0usize;
                    let mut dirs = Dirs::default();
                    for item in chunk {
                        if used >= share {
                            break;
                        }
                        let max = share - used;
                        match read_part_checked(data_dir, manifest, &item.path, item.offset, max, &mut dirs, cache) {
                            Ok(part) => {
                                used += part.data.len() + part.path.len() + 64;
                                batch.parts.push(part);
                            }
                            Err(e) if e.superseded() => batch.superseded.push(item.path.clone()),
                            Err(e) => batch.refused.push((item.path.clone(), e.to_string())),
                        }
                    }
                    batch
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut out = FileBatch::default();
    for b in parts {
        out.parts.extend(b.parts);
        out.refused.extend(b.refused);
        out.superseded.extend(b.superseded);
    }
    out
}

/// The plan that makes a worker's manifest equal to the master's: files to fetch (missing or
/// different) and files to delete (only under roots the master read completely, never a path the
/// master holds back: the worker keeps its last good copy).
pub fn plan(master: &Manifest, worker: &[FileMeta]) -> (Vec<FileMeta>, Vec<String>, usize, usize) {
    let theirs: std::collections::HashMap<&str, &FileMeta> = worker.iter().map(|m| (m.path.as_str(), m)).collect();
    let mut fetch = Vec::new();
    let (mut missing, mut changed) = (0, 0);
    for (path, e) in &master.files {
        match theirs.get(path.as_str()) {
            None => {
                missing += 1;
                fetch.push(FileMeta { path: path.clone(), size: e.size, md5: e.md5.clone() });
            }
            Some(m) if m.md5 != e.md5 || m.size != e.size => {
                changed += 1;
                fetch.push(FileMeta { path: path.clone(), size: e.size, md5: e.md5.clone() });
            }
            Some(_) => {}
        }
    }
    let delete = worker
        .iter()
        .filter(|m| !master.files.contains_key(&m.path) && !master.held.contains(&m.path))
        .filter(|m| sync::check_path(&m.path).is_ok())
        .filter(|m| sync::root_of(&m.path).is_some_and(|r| master.complete_roots.contains(r)))
        .map(|m| m.path.clone())
        .collect();
    (fetch, delete, missing, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::tests::master_tree;
    use crate::manifest::scan;

    #[test]
    fn a_part_read_for_one_worker_is_served_to_the_next_only_for_the_same_content() {
        let master = master_tree();
        let (m, _) = scan(master.path(), None);
        let cache = PartCache::new(1 << 20);
        let items = || vec![FetchItem { path: "etc/rules/a.xml".into(), offset: 0 }];
        let first = read_batch(master.path(), &m, items(), 1 << 20, Some(&cache));
        assert_eq!((first.parts.len(), cache.hits()), (1, 0));
        // Rewritten on disk, same size, manifest not rescanned yet: the second worker gets the part
        // the manifest describes, from the cache, not a read of the new bytes.
        std::fs::write(master.path().join("etc/rules/a.xml"), b"<xxxx/>").unwrap();
        let second = read_batch(master.path(), &m, items(), 1 << 20, Some(&cache));
        assert_eq!(second.parts, first.parts);
        assert_eq!(cache.hits(), 1);
        // Once the manifest says otherwise, the cached part is never served for it.
        let (m2, _) = scan(master.path(), Some(&m));
        let third = read_batch(master.path(), &m2, items(), 1 << 20, Some(&cache));
        assert_eq!(third.parts[0].data, b"<xxxx/>");
        assert_eq!(cache.hits(), 1);
        // A part longer than the room left in an answer is read again, in a shorter piece.
        let short = read_batch(master.path(), &m2, items(), 3, Some(&cache));
        assert!(short.parts[0].raw_len < 7);
        assert_eq!(cache.hits(), 1);
    }

    #[test]
    fn the_part_cache_stays_within_its_bytes() {
        let cache = PartCache::new(10_000);
        for i in 0..100u64 {
            let part = FilePart {
                path: format!("etc/rules/{i}.xml"),
                offset: 0,
                size: 1_000,
                md5: "x".into(),
                raw_len: 1_000,
                compressed: false,
                data: vec![0; 1_000],
            };
            cache.put(&part);
        }
        {
            let inner = cache.inner.lock().unwrap();
            assert!(inner.bytes <= 10_000 && inner.parts.len() == inner.order.len() && inner.parts.len() >= 8);
            assert!(inner.parts.contains_key(&("etc/rules/99.xml".to_string(), 0)));
            assert!(!inner.parts.contains_key(&("etc/rules/0.xml".to_string(), 0)));
        }
        // Kept while fresh, gone once old.
        cache.expire(std::time::Duration::from_secs(60));
        assert!(!cache.inner.lock().unwrap().parts.is_empty());
        std::thread::sleep(std::time::Duration::from_millis(5));
        cache.expire(std::time::Duration::from_millis(1));
        let inner = cache.inner.lock().unwrap();
        assert!(inner.parts.is_empty() && inner.order.is_empty() && inner.bytes == 0);
    }
}
