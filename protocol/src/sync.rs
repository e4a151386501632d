//! File synchronization: which paths may travel, and in which shape.
//!
//! A path is accepted only if it is relative, normalized, inside one of the sync roots, and free of
//! anything that could make it point elsewhere: no `..` or `.` components, no empty components (`//`),
//! no absolute or drive prefix, no backslash, no NUL or control character, bounded lengths. Both the
//! master (serving) and the worker (writing) check every path with [`check_path`]; the receiving
//! side also refuses any existing symlink on the way (see `actors::files`).

use serde::{Deserialize, Serialize};

/// The directories (under a node's data dir) that the master distributes, recursively.
pub const SYNC_ROOTS: [&str; 4] = ["etc/rules", "etc/decoders", "etc/lists", "etc/shared"];
/// Files each node owns, wherever they are under the roots: never sent, never deleted, never a
/// difference. Wazuh's own cluster excludes `ar.conf` and `ossec.conf` (written by each node's
/// daemons from its own configuration); `merged.mg` is built by each node for its own agents.
pub const EXCLUDED_NAMES: [&str; 3] = ["ar.conf", "ossec.conf", "merged.mg"];
/// Name endings each node owns: editor, temporary and lock files (as in Wazuh's cluster), and CDB
/// lists compiled by the node's own analysisd (`.cdb`) from the synchronized text lists.
pub const EXCLUDED_SUFFIXES: [&str; 5] = ["~", ".tmp", ".lock", ".swp", ".cdb"];
/// Longest accepted path and path component.
pub const MAX_PATH: usize = 4096;
pub const MAX_COMPONENT: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("absolute path")]
    Absolute,
    #[error("'..', '.' or empty component")]
    Traversal,
    #[error("NUL, control character or backslash in the path")]
    BadCharacter,
    #[error("component longer than {MAX_COMPONENT} bytes")]
    ComponentTooLong,
    #[error("not inside a sync root")]
    OutsideRoots,
    #[error("excluded name")]
    Excluded,
}

/// The sync root `path` belongs to.
pub fn root_of(path: &str) -> Option<&'static str> {
    SYNC_ROOTS
        .into_iter()
        .find(|root| path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1))
}

/// Whether a file name is excluded from synchronization (the node's own file).
pub fn excluded(name: &str) -> bool {
    EXCLUDED_NAMES.contains(&name) || EXCLUDED_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Checks a relative file path as it travels between nodes.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') || path.as_bytes().get(1) == Some(&b':') {
        return Err(PathError::Absolute);
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::BadCharacter);
    }
    for component in path.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(PathError::Traversal);
        }
        if component.len() > MAX_COMPONENT {
            return Err(PathError::ComponentTooLong);
        }
    }
    if root_of(path).is_none() {
        return Err(PathError::OutsideRoots);
    }
    if path.rsplit('/').next().is_some_and(excluded) {
        return Err(PathError::Excluded);
    }
    Ok(())
}

/// One file of a manifest, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub path: String,
    pub size: u64,
    pub md5: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths() {
        for p in
            ["etc/rules/local_rules.xml", "etc/shared/default/agent.conf", "etc/lists/a/b/c", "etc/decoders/x y.xml"]
        {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        // Only the exact names and endings are the node's own.
        for p in ["etc/lists/cdb", "etc/lists/x.cdb.txt", "etc/shared/g/my-ar.conf", "etc/shared/g/merged.mgx"] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        assert_eq!(root_of("etc/shared/default/agent.conf"), Some("etc/shared"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let cases: Vec<(String, PathError)> = vec![
            ("".into(), PathError::Empty),
            ("../x".into(), PathError::Traversal),
            ("/etc/passwd".into(), PathError::Absolute),
            ("etc/rules/../../b".into(), PathError::Traversal),
            ("etc/rules/a/../../../etc/passwd".into(), PathError::Traversal),
            ("etc/rules/./x".into(), PathError::Traversal),
            ("etc/rules//x".into(), PathError::Traversal),
            ("etc/rules/a\0b".into(), PathError::BadCharacter),
            ("etc/rules/a\\..\\b".into(), PathError::BadCharacter),
            ("etc/rules/a\nb".into(), PathError::BadCharacter),
            ("C:/windows".into(), PathError::Absolute),
            (format!("etc/rules/{}", "a".repeat(300)), PathError::ComponentTooLong),
            (format!("etc/rules/{}", "a/".repeat(2100)), PathError::TooLong),
            ("etc/ossec.conf".into(), PathError::OutsideRoots),
            ("etc/client.keys".into(), PathError::OutsideRoots),
            ("etc/rulesX/a".into(), PathError::OutsideRoots),
            ("etc/rules".into(), PathError::OutsideRoots),
            ("var/db/registry.db".into(), PathError::OutsideRoots),
            ("etc/rules/x.xml~".into(), PathError::Excluded),
            ("etc/rules/.x.swp".into(), PathError::Excluded),
            ("etc/lists/audit-keys.cdb".into(), PathError::Excluded),
            ("etc/lists/deep/x.cdb".into(), PathError::Excluded),
            ("etc/shared/ar.conf".into(), PathError::Excluded),
            ("etc/shared/g/ossec.conf".into(), PathError::Excluded),
            ("etc/shared/g/merged.mg".into(), PathError::Excluded),
            ("etc/shared/g/merged.mg.tmp".into(), PathError::Excluded),
        ];
        for (p, err) in cases {
            assert_eq!(check_path(&p), Err(err), "{p:?}");
        }
    }
}
