//! Confinement: every path a node reads or writes for file sync stays inside its sync root, by
//! construction. A path first passes `protocol::sync::check_path` (relative, normalized, inside a
//! root, no control characters), then [`safe_target`], which refuses any existing symlink (or
//! non-directory) on the way from the data dir to the file, so a link planted in a root can never
//! redirect a read or a write. Files are then opened relative to an open directory
//! ([`Dir`], `openat` with `O_NOFOLLOW`).

use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::sync::{self, PathError};

/// Why a file could not be read, staged or put in place. Each names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("refused path: {0}")]
    Path(#[from] PathError),
    #[error("{} is a symlink", .0.display())]
    Symlink(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} is a directory", .0.display())]
    IsADirectory(PathBuf),
    #[error("{} has no parent directory", .0.display())]
    NoParent(PathBuf),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("not in the master's manifest")]
    NotInManifest,
    #[error("changed since the last scan")]
    Changed,
    #[error("offset {offset} beyond the size {size}")]
    BeyondEnd { offset: u64, size: u64 },
    #[error("the part does not match the file the master announced")]
    NotAnnounced,
    #[error("bad compressed data: {0}")]
    Compression(String),
    #[error("the part's length is inconsistent")]
    BadLength,
    #[error("part at offset {offset} but {have} bytes staged")]
    OutOfStep { offset: u64, have: u64 },
    #[error("MD5 mismatch (got {got}, expected {expected})")]
    Md5 { got: String, expected: String },
    #[error("{} appeared during the transfer", .0.display())]
    Appeared(PathBuf),
    #[error("cannot exchange the directories: {0}")]
    Exchange(std::io::Error),
}

impl FileError {
    /// Whether a file a worker asked for is no longer the one announced (changed or removed since
    /// the master's last scan): the change is announced next, nobody did anything wrong.
    pub fn superseded(&self) -> bool {
        match self {
            FileError::Changed | FileError::NotInManifest => true,
            FileError::Io { error, .. } => error.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

impl FileError {
    /// I/O on `path` failed.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
        let path = path.to_path_buf();
        move |error| FileError::Io { path, error }
    }
}

/// The absolute path for `rel` under `data_dir`, or why it is refused.
pub fn safe_target(data_dir: &Path, rel: &str) -> Result<PathBuf, FileError> {
    sync::check_path(rel)?;
    let components: Vec<&str> = rel.split('/').collect();
    let mut cur = data_dir.to_path_buf();
    for (i, c) in components.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == components.len();
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(FileError::Symlink(cur)),
            Ok(m) if !last && !m.is_dir() => return Err(FileError::NotADirectory(cur)),
            Ok(m) if last && m.is_dir() => return Err(FileError::IsADirectory(cur)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(FileError::Io { path: cur, error }),
        }
    }
    Ok(cur)
}

/// How a file is opened in a [`Dir`].
#[derive(Clone, Copy)]
pub(crate) enum Access {
    Read,
    /// Created if missing (mode 0660, the mode synced files have), written at the end.
    Append,
}

/// An open directory whose files are opened by name (`openat`): the kernel looks up one component
/// instead of walking the whole path again for each of thousands of files, and once the directory
/// is open, swapping it (or a directory above it) for a symlink no longer redirects those opens. A
/// symlink in the file's place is refused (`O_NOFOLLOW`).
#[cfg(unix)]
pub(crate) struct Dir(std::os::fd::OwnedFd);

#[cfg(unix)]
impl Dir {
    /// Opens `path` as a directory; a symlink as its last component is refused.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path)?;
        Ok(Dir(dir.into()))
    }

    pub(crate) fn open_file(&self, name: &std::ffi::OsStr, access: Access) -> std::io::Result<std::fs::File> {
        use rustix::fs::{openat, Mode, OFlags};
        let flags = OFlags::CLOEXEC
            | OFlags::NOFOLLOW
            | match access {
                Access::Read => OFlags::RDONLY,
                Access::Append => OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND,
            };
        let fd = openat(&self.0, name, flags, Mode::from_raw_mode(0o660))?;
        Ok(std::fs::File::from(fd))
    }
}

/// Elsewhere: the same interface over whole paths.
#[cfg(not(unix))]
pub(crate) struct Dir(PathBuf);

#[cfg(not(unix))]
impl Dir {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Dir(path.to_path_buf()))
    }

    pub(crate) fn open_file(&self, name: &std::ffi::OsStr, access: Access) -> std::io::Result<std::fs::File> {
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
pub(crate) const MAX_OPEN_DIRS: usize = 64;

/// Directories already checked by [`safe_target`] and opened, by path (at most [`MAX_OPEN_DIRS`]).
#[derive(Default)]
pub(crate) struct Dirs(pub(crate) std::collections::HashMap<PathBuf, Dir>);
