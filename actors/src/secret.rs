//! Small helpers for secrets, below every other module: comparing them without leaking how much
//! matched, and writing them to private files.

/// Writes `bytes` to `path` as a private file (mode 0600), creating its directory, under a
/// temporary name first and synced, so that a crash never leaves half a secret.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("private.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Whether `given` is `expected`: the length first, then every byte, with no early exit on the
/// first difference (the time does not tell how much of a secret was right).
pub fn same_secret(given: &str, expected: &str) -> bool {
    same_bytes(given.as_bytes(), expected.as_bytes())
}

/// [`same_secret`] for bytes.
pub fn same_bytes(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
