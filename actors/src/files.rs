//! Reading and writing synchronized files, confined to the sync roots by construction.
//!
//! Every path goes through `protocol::sync::check_path` and then through [`safe_target`], which
//! refuses any existing symlink (or non-directory) on the way from the data dir to the file, so a
//! link planted in a root can never redirect a read or a write. Received files are staged, checked
//! (size and MD5), fsynced, and only then renamed into place: a crash leaves the old or the new
//! version of each file, never a torn one.

use crate::manifest::{md5_file, Manifest};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::message::{FetchItem, FileBatch, FilePart};
use wazuh_cluster_protocol::sync::{self, FileMeta};

/// Below this, compression is not worth it.
const COMPRESS_MIN: usize = 512;

/// The absolute path for `rel` under `data_dir`, or why it is refused.
pub fn safe_target(data_dir: &Path, rel: &str) -> Result<PathBuf, String> {
    sync::check_path(rel).map_err(|e| e.to_string())?;
    let components: Vec<&str> = rel.split('/').collect();
    let mut cur = data_dir.to_path_buf();
    for (i, c) in components.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == components.len();
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(format!("{} is a symlink", cur.display())),
            Ok(m) if !last && !m.is_dir() => return Err(format!("{} is not a directory", cur.display())),
            Ok(m) if last && m.is_dir() => return Err(format!("{} is a directory", cur.display())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", cur.display())),
        }
    }
    Ok(cur)
}

/// How a file is opened in a [`Dir`].
#[derive(Clone, Copy)]
enum Access {
    Read,
    /// Created if missing (mode 0660, the mode synced files have), written at the end.
    Append,
}

/// An open directory whose files are opened by name (`openat`): the kernel looks up one component
/// instead of walking the whole path again for each of thousands of files, and once the directory
/// is open, swapping it (or a directory above it) for a symlink no longer redirects those opens. A
/// symlink in the file's place is refused (`O_NOFOLLOW`).
#[cfg(unix)]
struct Dir(std::os::fd::OwnedFd);

#[cfg(unix)]
impl Dir {
    /// Opens `path` as a directory; a symlink as its last component is refused.
    fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path)?;
        Ok(Dir(dir.into()))
    }

    fn open_file(&self, name: &std::ffi::OsStr, access: Access) -> std::io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a file name"))?;
        let flags = libc::O_CLOEXEC
            | libc::O_NOFOLLOW
            | match access {
                Access::Read => libc::O_RDONLY,
                Access::Append => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
            };
        // SAFETY: `self.0` is an open descriptor for the whole call and `name` is NUL-terminated.
        let fd = unsafe { libc::openat(self.0.as_raw_fd(), name.as_ptr(), flags, 0o660 as libc::c_uint) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by `openat` and nothing else owns it.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }
}

/// Elsewhere: the same interface over whole paths.
#[cfg(not(unix))]
struct Dir(PathBuf);

#[cfg(not(unix))]
impl Dir {
    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Dir(path.to_path_buf()))
    }

    fn open_file(&self, name: &std::ffi::OsStr, access: Access) -> std::io::Result<std::fs::File> {
        let mut opts = std::fs::OpenOptions::new();
        match access {
            Access::Read => opts.read(true),
            Access::Append => opts.create(true).append(true),
        };
        opts.open(self.0.join(name))
    }
}

/// Most directories kept open at once by one reader or one staging area: files come sorted by
/// path, so a few suffice, and descriptors stay far from the process's limit.
const MAX_OPEN_DIRS: usize = 64;

/// Directories already checked by [`safe_target`] and opened, by path (at most [`MAX_OPEN_DIRS`]).
#[derive(Default)]
struct Dirs(std::collections::HashMap<PathBuf, Dir>);

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
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

    /// Room for the parts of a few answers: workers that sync together stay that close.
    pub const DEFAULT_CAPACITY: usize = 32 << 20;

    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Default::default() }
    }

    /// The part of `rel` at `offset`, if cached for this `entry` and no longer than `max`.
    fn get(&self, rel: &str, offset: u64, entry: &crate::manifest::FileEntry, max: usize) -> Option<FilePart> {
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
    pub fn expire(&self, max_age: std::time::Duration) {
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
pub fn read_part(data_dir: &Path, manifest: &Manifest, rel: &str, offset: u64, max: usize) -> Result<FilePart, String> {
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
) -> Result<FilePart, String> {
    let entry = manifest.files.get(rel).ok_or("not in the master's manifest")?;
    sync::check_path(rel).map_err(|e| e.to_string())?;
    if let Some(part) = cache.and_then(|c| c.get(rel, offset, entry, max)) {
        return Ok(part);
    }
    let path = data_dir.join(rel);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("no parent directory".into());
    };
    if !dirs.0.contains_key(parent) {
        safe_target(data_dir, rel)?;
        let dir = Dir::open(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        if dirs.0.len() >= MAX_OPEN_DIRS {
            dirs.0.clear();
        }
        dirs.0.insert(parent.to_path_buf(), dir);
    }
    let dir = dirs.0.get(parent).ok_or("no parent directory")?;
    // The file itself is opened with O_NOFOLLOW: a symlink put there since the scan is refused.
    let mut file = dir.open_file(name, Access::Read).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size != entry.size {
        return Err("changed since the last scan".into());
    }
    if offset > size {
        return Err(format!("offset {offset} beyond the size {size}"));
    }
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let want = ((size - offset) as usize).min(max.max(1));
    // Read into spare capacity: no zeroing of a buffer about to be overwritten.
    let mut raw = Vec::with_capacity(want);
    (&mut file).take(want as u64).read_to_end(&mut raw).map_err(|e| e.to_string())?;
    if raw.len() != want {
        return Err("changed since the last scan (shorter than listed)".into());
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
                            Err(e) => batch.refused.push((item.path.clone(), e)),
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
    }
    out
}

/// Worker side: where received files wait until the whole batch is checked.
///
/// Files of a root the worker holds nothing under ("fresh" roots, e.g. on a new worker) are staged
/// as a tree shaped like the root, and the whole root is moved into place with one rename instead
/// of one rename per file. Every other file is staged flat, keyed by content.
pub struct Staging {
    dir: PathBuf,
    /// Fresh roots, each with whether its staged tree already existed (a resumed transfer).
    fresh: std::collections::HashMap<&'static str, bool>,
    /// Directories of the staged trees already made (and checked), open (the latest few).
    made: std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<Dir>>>,
    /// Files of new trees with some parts staged by this transfer.
    partial: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A file fully received and checked, ready to be renamed into place.
#[derive(Debug)]
pub struct Staged {
    pub meta: FileMeta,
    pub path: PathBuf,
}

impl Staging {
    /// `<data_dir>/var/sync/staging`: on the same filesystem as the roots, so renames are atomic.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_with_fresh(data_dir, &[])
    }

    /// [`Staging::open`] where the files of `fresh` roots (roots this worker has no file under) are
    /// staged as trees, to be moved into place one root at a time by [`Staging::apply`].
    pub fn open_with_fresh(data_dir: &Path, fresh: &[&'static str]) -> std::io::Result<Self> {
        let dir = data_dir.join("var/sync/staging");
        std::fs::create_dir_all(&dir)?;
        let fresh = fresh.iter().map(|root| (*root, dir.join("tree").join(root).exists())).collect();
        Ok(Self { dir, fresh, made: Default::default(), partial: Default::default() })
    }

    fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    /// Whether `rel` is staged in a tree (its root is fresh), and if so whether that tree was
    /// there before this transfer.
    fn fresh_root(&self, rel: &str) -> Option<bool> {
        sync::root_of(rel).and_then(|root| self.fresh.get(root).copied())
    }

    fn part_path(&self, meta: &FileMeta) -> PathBuf {
        match self.fresh_root(&meta.path) {
            Some(_) => self.tree().join(&meta.path),
            // Keyed by content: a transfer cut midway resumes where it stopped.
            None => self.dir.join(format!("{}-{}.part", meta.md5, meta.size)),
        }
    }

    /// Bytes of `meta` already staged (to resume from).
    pub fn have(&self, meta: &FileMeta) -> u64 {
        if self.fresh_root(&meta.path) == Some(false)
            && !self.partial.lock().map(|p| p.contains(&meta.path)).unwrap_or(true)
        {
            // A tree made by this transfer, and no part of this file written yet.
            return 0;
        }
        std::fs::metadata(self.part_path(meta)).map(|m| m.len()).unwrap_or(0).min(meta.size)
    }

    /// Makes the directory a tree-staged file goes in, refusing any symlink on the way.
    /// Returns it open.
    fn make_parent(&self, rel: &str, path: &Path) -> Result<std::sync::Arc<Dir>, String> {
        let parent = path.parent().ok_or("no parent directory")?;
        if let Some(dir) = self.made.lock().ok().and_then(|m| m.get(parent).cloned()) {
            return Ok(dir);
        }
        let tree = self.tree();
        safe_target(&tree, rel)?;
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        safe_target(&tree, rel)?;
        let dir = std::sync::Arc::new(Dir::open(parent).map_err(|e| format!("{}: {e}", parent.display()))?);
        if let Ok(mut made) = self.made.lock() {
            if made.len() >= MAX_OPEN_DIRS {
                // Made and checked again (cheaply) if a file of one of them comes later.
                made.clear();
            }
            made.insert(parent.to_path_buf(), dir.clone());
        }
        Ok(dir)
    }

    /// Appends a received part. Returns the staged file once complete and checked (size and MD5).
    /// The data is not yet durable: call [`Staging::sync`] once for the whole batch before applying.
    pub fn write(&self, meta: &FileMeta, part: &FilePart) -> Result<Option<Staged>, String> {
        if part.path != meta.path || part.md5 != meta.md5 || part.size != meta.size {
            return Err("the part does not match the file the master announced".into());
        }
        let data = if part.compressed {
            lz4_flex::block::decompress(&part.data, part.raw_len as usize)
                .map_err(|e| format!("bad compressed data: {e}"))?
        } else {
            part.data.clone()
        };
        if data.len() as u64 != part.raw_len || part.offset + part.raw_len > meta.size {
            return Err("the part's length is inconsistent".into());
        }
        let path = self.part_path(meta);
        let dir = match self.fresh_root(&meta.path) {
            Some(_) => {
                sync::check_path(&meta.path).map_err(|e| e.to_string())?;
                Some(self.make_parent(&meta.path, &path)?)
            }
            None => None,
        };
        let have = self.have(meta);
        if part.offset != have {
            // Out of step (a stale partial file): start over.
            let _ = std::fs::remove_file(&path);
            if part.offset != 0 {
                return Err(format!("part at offset {} but {have} bytes staged", part.offset));
            }
        }
        // Created with the mode synced files have (0660), so applying needs no chmod.
        let mut f = match (dir, path.file_name()) {
            (Some(dir), Some(name)) => dir.open_file(name, Access::Append),
            _ => {
                let mut opts = std::fs::OpenOptions::new();
                opts.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o660);
                }
                opts.open(&path)
            }
        }
        .map_err(|e| e.to_string())?;
        f.write_all(&data).map_err(|e| e.to_string())?;
        if part.offset + part.raw_len < meta.size {
            if let Ok(mut partial) = self.partial.lock() {
                partial.insert(meta.path.clone());
            }
            return Ok(None);
        }
        drop(f);
        // A whole file in one part is checked from memory; a resumed one is read back.
        let md5 = if part.offset == 0 {
            use md5::{Digest, Md5};
            crate::manifest::hex(&Md5::digest(&data))
        } else {
            md5_file(&path).map_err(|e| e.to_string())?
        };
        if md5 != meta.md5 {
            let _ = std::fs::remove_file(&path);
            return Err(format!("MD5 mismatch (got {md5}, expected {})", meta.md5));
        }
        Ok(Some(Staged { meta: meta.clone(), path }))
    }
}

impl Staging {
    /// Makes every staged file durable before any of them is applied: a few files are fsynced one by
    /// one (a filesystem sync would also wait for everything else dirty on the disk), a batch of
    /// more with one filesystem sync instead of one `fsync` per file.
    pub fn sync(&self, staged: &[Staged]) -> std::io::Result<()> {
        if staged.len() > Self::FSYNC_EACH_UP_TO {
            return sync_filesystem(&self.dir);
        }
        for file in staged {
            std::fs::File::open(&file.path)?.sync_all()?;
        }
        Ok(())
    }

    /// Up to this many staged files, each is fsynced on its own.
    const FSYNC_EACH_UP_TO: usize = 64;
}

/// Flushes everything written to the filesystem holding `dir` (Linux: one `syncfs`; elsewhere every
/// file under `dir` is fsynced).
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let dir = std::fs::File::open(dir)?;
        // SAFETY: `syncfs` only reads the descriptor, which `dir` keeps open for the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        for entry in walkdir::WalkDir::new(dir).follow_links(false) {
            let entry = entry?;
            if entry.file_type().is_file() {
                std::fs::File::open(entry.path())?.sync_all()?;
            }
        }
        Ok(())
    }
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    pub written: Vec<FileMeta>,
    pub deleted: Vec<String>,
    pub refused: Vec<(String, String)>,
    /// Worth a line in the log.
    pub notes: Vec<String>,
}

/// [`safe_target`] for many paths at once: directories already checked (and created) are not
/// checked again.
struct Targets<'a> {
    data_dir: &'a Path,
    checked: std::collections::HashSet<PathBuf>,
}

impl Targets<'_> {
    fn target(&mut self, rel: &str, create_parent: bool) -> Result<PathBuf, String> {
        sync::check_path(rel).map_err(|e| e.to_string())?;
        let target = self.data_dir.join(rel);
        let parent = target.parent().ok_or("no parent directory")?.to_path_buf();
        if !self.checked.contains(&parent) {
            // Full check of the way down, then make the directories.
            safe_target(self.data_dir, rel)?;
            if create_parent {
                std::fs::create_dir_all(&parent).map_err(|e| e.to_string())?;
                safe_target(self.data_dir, rel)?;
            }
            self.checked.insert(parent);
        }
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => Err(format!("{} is a symlink", target.display())),
            Ok(m) if m.is_dir() => Err(format!("{} is a directory", target.display())),
            _ => Ok(target),
        }
    }
}

/// Renames every staged file into place and deletes `delete`, refusing any path that leaves the
/// roots or crosses a symlink; then removes directories the deletions emptied.
pub fn apply(data_dir: &Path, staged: Vec<Staged>, delete: &[String]) -> Applied {
    let mut out = Applied::default();
    let mut targets = Targets { data_dir, checked: Default::default() };
    for st in staged {
        let target = match targets.target(&st.meta.path, true) {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&st.path);
                out.refused.push((st.meta.path, e));
                continue;
            }
        };
        match std::fs::rename(&st.path, &target) {
            Ok(()) => out.written.push(st.meta),
            Err(e) => out.refused.push((st.meta.path, e.to_string())),
        }
    }
    let mut emptied = std::collections::BTreeSet::new();
    for rel in delete {
        match targets.target(rel, false) {
            Ok(target) => match std::fs::remove_file(&target) {
                Ok(()) => {
                    out.deleted.push(rel.clone());
                    if let Some(p) = target.parent() {
                        emptied.insert(p.to_path_buf());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => out.refused.push((rel.clone(), e.to_string())),
            },
            Err(e) => out.refused.push((rel.clone(), e)),
        }
    }
    // fsync the directories that got new entries, so the renames survive a crash.
    for d in &targets.checked {
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    // Remove directories left empty, up to (not including) their root.
    let roots: Vec<PathBuf> = sync::SYNC_ROOTS.iter().map(|r| data_dir.join(r)).collect();
    for mut d in emptied.into_iter().rev() {
        while !roots.contains(&d) && d.starts_with(data_dir) && std::fs::remove_dir(&d).is_ok() {
            match d.parent() {
                Some(p) => d = p.to_path_buf(),
                None => break,
            }
        }
    }
    out
}

impl Staging {
    /// Applies a transfer: each fresh root whose files were staged as a tree is moved into place
    /// with one rename (an atomic exchange when the root's directory exists, holding no file);
    /// everything else goes through [`apply`], file by file. A fresh root that gained files since
    /// the transfer began also goes file by file, so nothing of the worker's is thrown away.
    pub fn apply(&self, data_dir: &Path, staged: Vec<Staged>, delete: &[String]) -> Applied {
        let mut trees: std::collections::BTreeMap<&'static str, Vec<Staged>> = Default::default();
        let mut flat = Vec::new();
        for st in staged {
            match sync::root_of(&st.meta.path).filter(|root| self.fresh.contains_key(root)) {
                Some(root) => trees.entry(root).or_default().push(st),
                None => flat.push(st),
            }
        }
        let mut out = apply(data_dir, flat, delete);
        for (root, files) in trees {
            let staged_root = self.tree().join(root);
            match move_root(data_dir, root, &staged_root, &files) {
                Ok(()) => out.written.extend(files.into_iter().map(|st| st.meta)),
                Err(why) => {
                    out.notes.push(format!("{root}: not moved in at once ({why}); file by file instead"));
                    let more = apply(data_dir, files, &[]);
                    out.written.extend(more.written);
                    out.refused.extend(more.refused);
                }
            }
            // What is left there (old empty directories, files nobody asked for) is not needed.
            let _ = std::fs::remove_dir_all(&staged_root);
        }
        out
    }
}

/// Moves the staged tree of `root` into place, keeping exactly the `files` staged for it.
fn move_root(data_dir: &Path, root: &str, staged_root: &Path, files: &[Staged]) -> Result<(), String> {
    let wanted: std::collections::HashSet<&Path> = files.iter().map(|st| st.path.as_path()).collect();
    // Anything in the staged tree that is not a checked file of this transfer goes (a part left by
    // a failed write, a file of an earlier attempt the master no longer has, a planted link).
    for entry in walkdir::WalkDir::new(staged_root).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| e.to_string())?;
        let kind = entry.file_type();
        let keep = kind.is_dir() || (kind.is_file() && wanted.contains(entry.path()));
        if !keep {
            std::fs::remove_file(entry.path()).map_err(|e| format!("{}: {e}", entry.path().display()))?;
        }
    }
    // The way to the root: no symlink, directories only.
    let target = data_dir.join(root);
    let parent = target.parent().ok_or("no parent directory")?;
    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    let mut cur = data_dir.to_path_buf();
    for c in root.split('/') {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(format!("{} is a symlink", cur.display())),
            Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", cur.display())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && cur == target => {}
            Err(e) => return Err(format!("{}: {e}", cur.display())),
        }
    }
    let exists = target.exists();
    if exists {
        for entry in walkdir::WalkDir::new(&target).follow_links(false).min_depth(1) {
            let entry = entry.map_err(|e| e.to_string())?;
            if !entry.file_type().is_dir() {
                return Err(format!("{} appeared during the transfer", entry.path().display()));
            }
        }
        exchange(staged_root, &target).map_err(|e| format!("cannot exchange the directories: {e}"))?;
    } else {
        std::fs::rename(staged_root, &target).map_err(|e| e.to_string())?;
    }
    // The rename itself must survive a crash (the files' contents were synced before).
    for dir in [parent, staged_root.parent().unwrap_or(parent)] {
        if let Ok(f) = std::fs::File::open(dir) {
            let _ = f.sync_all();
        }
    }
    Ok(())
}

/// Swaps two directories atomically: at every instant `b` is either the old or the new tree.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Without an atomic exchange: the (empty) old root is removed, then the new one renamed in; a
/// crash in between leaves no root, which the next round fills again.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(b)?;
    std::fs::rename(a, b)
}

/// The plan that makes a worker's manifest equal to the master's: files to fetch (missing or
/// different) and files to delete (only under roots the master read completely).
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
        .filter(|m| !master.files.contains_key(&m.path))
        .filter(|m| sync::check_path(&m.path).is_ok())
        .filter(|m| sync::root_of(&m.path).is_some_and(|r| master.complete_roots.contains(r)))
        .map(|m| m.path.clone())
        .collect();
    (fetch, delete, missing, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::scan;

    #[cfg(unix)]
    #[test]
    fn a_symlink_planted_in_a_root_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/rules")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/rules/evil")).unwrap();
        let err = safe_target(dir.path(), "etc/rules/evil/x.xml").unwrap_err();
        assert!(err.contains("symlink"), "{err}");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/rules/passwd.xml")).unwrap();
        assert!(safe_target(dir.path(), "etc/rules/passwd.xml").unwrap_err().contains("symlink"));
        // Applying through the link writes nothing outside.
        let staging = Staging::open(dir.path()).unwrap();
        let meta =
            FileMeta { path: "etc/rules/evil/x.xml".into(), size: 1, md5: "9dd4e461268c8034f5c8564e155c67a6".into() };
        let part = FilePart {
            path: meta.path.clone(),
            offset: 0,
            size: 1,
            md5: meta.md5.clone(),
            raw_len: 1,
            compressed: false,
            data: b"x".to_vec(),
        };
        let staged = staging.write(&meta, &part).unwrap().unwrap();
        let out = apply(dir.path(), vec![staged], &["etc/rules/passwd.xml".into()]);
        assert!(out.written.is_empty());
        assert_eq!(out.refused.len(), 2);
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(
            std::fs::symlink_metadata(dir.path().join("etc/rules/passwd.xml")).is_ok(),
            "the link itself is left alone"
        );
    }

    #[test]
    fn traversal_paths_never_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["../x", "/etc/passwd", "etc/rules/../../b", "etc/rules/a\0b", "etc/ossec.conf"] {
            assert!(safe_target(dir.path(), p).is_err(), "{p:?}");
        }
        let long = format!("etc/rules/{}", "n".repeat(5000));
        assert!(safe_target(dir.path(), &long).is_err());
        let out = apply(dir.path(), vec![], &["../../etc/passwd".into(), "etc/rules/../../x".into()]);
        assert_eq!(out.refused.len(), 2);
    }

    #[test]
    fn staged_parts_are_checked_resumed_and_applied_atomically() {
        let master = tempfile::tempdir().unwrap();
        let worker = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(master.path().join("etc/lists/deep")).unwrap();
        let content: Vec<u8> = (0..10_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        std::fs::write(master.path().join("etc/lists/deep/big.cdb"), &content).unwrap();
        let (m, _) = scan(master.path(), None);
        let meta = m.metas().remove(0);
        let staging = Staging::open(worker.path()).unwrap();
        // First part, then the transfer is cut; a new round resumes at the staged length.
        let p1 = read_part(master.path(), &m, &meta.path, 0, 16_000).unwrap();
        assert!(staging.write(&meta, &p1).unwrap().is_none());
        assert_eq!(staging.have(&meta), 16_000);
        let p2 = read_part(master.path(), &m, &meta.path, staging.have(&meta), 1 << 20).unwrap();
        let staged = staging.write(&meta, &p2).unwrap().unwrap();
        let out = apply(worker.path(), vec![staged], &[]);
        assert_eq!(out.written.len(), 1);
        assert_eq!(std::fs::read(worker.path().join("etc/lists/deep/big.cdb")).unwrap(), content);
        // A chunk whose content does not match the announced MD5 is refused, nothing is applied.
        let mut bad = read_part(master.path(), &m, &meta.path, 0, 1 << 20).unwrap();
        bad.data = lz4_flex::block::compress(&vec![0u8; content.len()]);
        bad.compressed = true;
        assert!(staging.write(&meta, &bad).unwrap_err().contains("MD5 mismatch"));
        // A file the manifest does not list is never served.
        assert!(read_part(master.path(), &m, "etc/lists/other", 0, 10).is_err());
        assert!(read_part(master.path(), &m, "../../etc/passwd", 0, 10).is_err());
    }

    #[test]
    fn plans_never_delete_under_an_incomplete_root() {
        let mut master = Manifest::default();
        master.files.insert("etc/rules/a".into(), crate::manifest::FileEntry { size: 1, mtime_ns: 1, md5: "m".into() });
        master.complete_roots.insert("etc/rules".into());
        let worker = vec![
            FileMeta { path: "etc/rules/a".into(), size: 1, md5: "old".into() },
            FileMeta { path: "etc/rules/extra".into(), size: 1, md5: "x".into() },
            FileMeta { path: "etc/decoders/kept".into(), size: 1, md5: "x".into() },
        ];
        let (fetch, delete, missing, changed) = plan(&master, &worker);
        assert_eq!(fetch.len(), 1);
        assert_eq!((missing, changed), (0, 1));
        assert_eq!(delete, ["etc/rules/extra"], "etc/decoders is missing on the master: its files stay");
    }

    /// Stages every file of `master` for a worker whose `fresh` roots are staged as trees.
    fn stage_all(master: &Path, worker: &Path, fresh: &[&'static str]) -> (Staging, Vec<Staged>) {
        let (m, _) = scan(master, None);
        let staging = Staging::open_with_fresh(worker, fresh).unwrap();
        let staged = m
            .metas()
            .into_iter()
            .map(|meta| {
                let part = read_part(master, &m, &meta.path, staging.have(&meta), 1 << 20).unwrap();
                staging.write(&meta, &part).unwrap().unwrap()
            })
            .collect();
        (staging, staged)
    }

    fn tree_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = walkdir::WalkDir::new(dir.join("etc"))
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                (rel, std::fs::read(e.path()).unwrap())
            })
            .collect();
        out.sort();
        out
    }

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

    fn master_tree() -> tempfile::TempDir {
        let master = tempfile::tempdir().unwrap();
        for (rel, body) in [
            ("etc/rules/a.xml", &b"<rule/>"[..]),
            ("etc/rules/sub/b.xml", b"<rule id=2/>"),
            ("etc/shared/default/agent.conf", b"<agent_config/>"),
            ("etc/shared/g1/merged.mg", b"#default\n"),
        ] {
            std::fs::create_dir_all(master.path().join(rel).parent().unwrap()).unwrap();
            std::fs::write(master.path().join(rel), body).unwrap();
        }
        master
    }

    #[test]
    fn a_fresh_root_is_staged_as_a_tree_and_moved_in_whole() {
        let master = master_tree();
        let worker = tempfile::tempdir().unwrap();
        // etc/rules exists on the worker with empty directories only; etc/shared does not exist.
        std::fs::create_dir_all(worker.path().join("etc/rules/empty/dirs")).unwrap();
        let (staging, staged) = stage_all(master.path(), worker.path(), &["etc/rules", "etc/shared"]);
        assert!(worker.path().join("var/sync/staging/tree/etc/rules/sub/b.xml").is_file());
        // A part left behind by an earlier failed write is not moved in.
        std::fs::write(worker.path().join("var/sync/staging/tree/etc/rules/torn.xml"), b"<ru").unwrap();
        let out = staging.apply(worker.path(), staged, &[]);
        assert!(out.refused.is_empty() && out.notes.is_empty(), "{out:?}");
        assert_eq!(out.written.len(), 4);
        assert_eq!(tree_of(worker.path()), tree_of(master.path()));
        assert!(!worker.path().join("etc/rules/empty").exists(), "the old root was exchanged away");
        assert!(!worker.path().join("var/sync/staging/tree/etc/rules").exists(), "nothing left staged");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(worker.path().join("etc/rules/a.xml")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777 & !0o022, 0o660 & !0o022);
        }
    }

    #[test]
    fn a_fresh_root_that_gained_a_file_meanwhile_is_applied_file_by_file() {
        let master = master_tree();
        let worker = tempfile::tempdir().unwrap();
        let (staging, staged) = stage_all(master.path(), worker.path(), &["etc/rules"]);
        // A file written locally during the transfer: the root is not swapped away with it.
        std::fs::create_dir_all(worker.path().join("etc/rules")).unwrap();
        std::fs::write(worker.path().join("etc/rules/local.xml"), b"local").unwrap();
        let out = staging.apply(worker.path(), staged, &[]);
        assert!(out.refused.is_empty(), "{out:?}");
        assert_eq!(out.written.len(), 4);
        assert!(out.notes.iter().any(|n| n.contains("appeared during the transfer")), "{:?}", out.notes);
        assert_eq!(std::fs::read(worker.path().join("etc/rules/local.xml")).unwrap(), b"local");
        assert_eq!(std::fs::read(worker.path().join("etc/rules/sub/b.xml")).unwrap(), b"<rule id=2/>");
        assert_eq!(std::fs::read(worker.path().join("etc/shared/g1/merged.mg")).unwrap(), b"#default\n");
    }

    #[cfg(unix)]
    #[test]
    fn a_fresh_root_behind_a_symlink_is_never_written_through() {
        let master = master_tree();
        let worker = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(worker.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), worker.path().join("etc/rules")).unwrap();
        let (staging, staged) = stage_all(master.path(), worker.path(), &["etc/rules"]);
        let out = staging.apply(worker.path(), staged, &[]);
        assert_eq!(out.refused.len(), 2, "{out:?}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(std::fs::symlink_metadata(worker.path().join("etc/rules")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_resumed_tree_continues_a_large_file_from_its_staged_length() {
        let master = tempfile::tempdir().unwrap();
        let worker = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(master.path().join("etc/lists")).unwrap();
        let content: Vec<u8> = (0..50_000u32).flat_map(|i| (i % 241).to_le_bytes()).collect();
        std::fs::write(master.path().join("etc/lists/big"), &content).unwrap();
        let (m, _) = scan(master.path(), None);
        let meta = m.metas().remove(0);
        let staging = Staging::open_with_fresh(worker.path(), &["etc/lists"]).unwrap();
        assert_eq!(staging.have(&meta), 0);
        let p1 = read_part(master.path(), &m, &meta.path, 0, 30_000).unwrap();
        assert!(staging.write(&meta, &p1).unwrap().is_none());
        assert_eq!(staging.have(&meta), 30_000, "a part written by this transfer counts");
        drop(staging);
        // The transfer is cut; the next round finds the tree and resumes.
        let staging = Staging::open_with_fresh(worker.path(), &["etc/lists"]).unwrap();
        assert_eq!(staging.have(&meta), 30_000);
        let p2 = read_part(master.path(), &m, &meta.path, 30_000, 1 << 20).unwrap();
        let staged = staging.write(&meta, &p2).unwrap().unwrap();
        let out = staging.apply(worker.path(), vec![staged], &[]);
        assert_eq!(out.written.len(), 1, "{out:?}");
        assert_eq!(std::fs::read(worker.path().join("etc/lists/big")).unwrap(), content);
    }
}
