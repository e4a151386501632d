//! The worker's side of file sync: received parts are staged (partial files keyed by destination
//! and content, so a
//! cut transfer resumes), checked (size, MD5), made durable, and only then renamed into place, so a
//! crash leaves the old or the new version of each file, never a torn one. A root the worker holds
//! nothing under is staged as a tree and moved in with one atomic directory exchange.

use super::confine::{safe_target, Access, Dir, FileError, MAX_OPEN_DIRS};
use crate::manifest::md5_file;
use std::io::Write;
use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::message::FilePart;
use wazuh_cluster_protocol::sync::{self, FileMeta};

/// A walk error as a [`FileError`] on the walked path.
fn walk_error(root: &Path) -> impl Fn(walkdir::Error) -> FileError + '_ {
    move |e| {
        let path = e.path().unwrap_or(root).to_path_buf();
        FileError::Io { path, error: e.into_io_error().unwrap_or_else(|| std::io::Error::other("a symlink loop")) }
    }
}

/// Worker side: where received files wait until the whole batch is checked.
///
/// Files of a root the worker holds nothing under ("fresh" roots, e.g. on a new worker) are staged
/// as a tree shaped like the root, and the whole root is moved into place with one rename instead
/// of one rename per file. Every other file is staged flat, keyed by destination and content.
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
    pub(crate) fn open_with_fresh(data_dir: &Path, fresh: &[&'static str]) -> std::io::Result<Self> {
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
            // Keyed by destination and content: a transfer cut midway resumes where it stopped,
            // and files of identical contents (every new group's default agent.conf) never share
            // one staged copy, which the first rename into place would use up (or two threads
            // staging them at once would interleave).
            None => {
                use md5::{Digest, Md5};
                let to = crate::manifest::hex(&Md5::digest(meta.path.as_bytes()));
                self.dir.join(format!("{}-{}-{}.part", meta.md5, meta.size, &to[..16]))
            }
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
    fn make_parent(&self, rel: &str, path: &Path) -> Result<std::sync::Arc<Dir>, FileError> {
        let parent = path.parent().ok_or_else(|| FileError::NoParent(path.to_path_buf()))?;
        if let Some(dir) = self.made.lock().ok().and_then(|m| m.get(parent).cloned()) {
            return Ok(dir);
        }
        let tree = self.tree();
        safe_target(&tree, rel)?;
        std::fs::create_dir_all(parent).map_err(FileError::io(parent))?;
        safe_target(&tree, rel)?;
        let dir = std::sync::Arc::new(Dir::open(parent).map_err(FileError::io(parent))?);
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
    pub fn write(&self, meta: &FileMeta, part: &FilePart) -> Result<Option<Staged>, FileError> {
        if part.path != meta.path || part.md5 != meta.md5 || part.size != meta.size {
            return Err(FileError::NotAnnounced);
        }
        let data = if part.compressed {
            lz4_flex::block::decompress(&part.data, part.raw_len as usize)
                .map_err(|e| FileError::Compression(e.to_string()))?
        } else {
            part.data.clone()
        };
        if data.len() as u64 != part.raw_len || part.offset.saturating_add(part.raw_len) > meta.size {
            return Err(FileError::BadLength);
        }
        let path = self.part_path(meta);
        let dir = match self.fresh_root(&meta.path) {
            Some(_) => {
                sync::check_path(&meta.path)?;
                Some(self.make_parent(&meta.path, &path)?)
            }
            None => None,
        };
        let have = self.have(meta);
        if part.offset != have {
            // Out of step (a stale partial file): start over.
            let _ = std::fs::remove_file(&path);
            if part.offset != 0 {
                return Err(FileError::OutOfStep { offset: part.offset, have });
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
        .map_err(FileError::io(&path))?;
        f.write_all(&data).map_err(FileError::io(&path))?;
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
            crate::manifest::hex(&md5_file(&path).map_err(FileError::io(&path))?)
        };
        if md5 != meta.md5 {
            let _ = std::fs::remove_file(&path);
            return Err(FileError::Md5 { got: md5, expected: meta.md5.clone() });
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
        let dir = std::fs::File::open(dir)?;
        Ok(rustix::fs::syncfs(&dir)?)
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
    pub refused: Vec<(String, FileError)>,
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
    fn target(&mut self, rel: &str, create_parent: bool) -> Result<PathBuf, FileError> {
        sync::check_path(rel)?;
        let target = self.data_dir.join(rel);
        let parent = target.parent().ok_or_else(|| FileError::NoParent(target.clone()))?.to_path_buf();
        if !self.checked.contains(&parent) {
            // Full check of the way down, then make the directories.
            safe_target(self.data_dir, rel)?;
            if create_parent {
                std::fs::create_dir_all(&parent).map_err(FileError::io(&parent))?;
                safe_target(self.data_dir, rel)?;
            }
            self.checked.insert(parent);
        }
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => Err(FileError::Symlink(target)),
            Ok(m) if m.is_dir() => Err(FileError::IsADirectory(target)),
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
            Err(error) => out.refused.push((st.meta.path, FileError::Io { path: target, error })),
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
                Err(error) => out.refused.push((rel.clone(), FileError::Io { path: target, error })),
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
fn move_root(data_dir: &Path, root: &str, staged_root: &Path, files: &[Staged]) -> Result<(), FileError> {
    let wanted: std::collections::HashSet<&Path> = files.iter().map(|st| st.path.as_path()).collect();
    // Anything in the staged tree that is not a checked file of this transfer goes (a part left by
    // a failed write, a file of an earlier attempt the master no longer has, a planted link).
    for entry in walkdir::WalkDir::new(staged_root).follow_links(false).min_depth(1) {
        let entry = entry.map_err(walk_error(staged_root))?;
        let kind = entry.file_type();
        let keep = kind.is_dir() || (kind.is_file() && wanted.contains(entry.path()));
        if !keep {
            std::fs::remove_file(entry.path()).map_err(FileError::io(entry.path()))?;
        }
    }
    // The way to the root: no symlink, directories only.
    let target = data_dir.join(root);
    let parent = target.parent().ok_or_else(|| FileError::NoParent(target.clone()))?;
    std::fs::create_dir_all(parent).map_err(FileError::io(parent))?;
    let mut cur = data_dir.to_path_buf();
    for c in root.split('/') {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(FileError::Symlink(cur)),
            Ok(m) if !m.is_dir() => return Err(FileError::NotADirectory(cur)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && cur == target => {}
            Err(error) => return Err(FileError::Io { path: cur, error }),
        }
    }
    let exists = target.exists();
    if exists {
        for entry in walkdir::WalkDir::new(&target).follow_links(false).min_depth(1) {
            let entry = entry.map_err(walk_error(&target))?;
            if !entry.file_type().is_dir() {
                return Err(FileError::Appeared(entry.path().to_path_buf()));
            }
        }
        exchange(staged_root, &target).map_err(FileError::Exchange)?;
    } else {
        std::fs::rename(staged_root, &target).map_err(FileError::io(&target))?;
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
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    Ok(renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)?)
}

/// Without an atomic exchange: the (empty) old root is removed, then the new one renamed in; a
/// crash in between leaves no root, which the next round fills again.
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(b)?;
    std::fs::rename(a, b)
}
