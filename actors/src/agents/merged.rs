//! `merged.mg`: the shared configuration of a group (or of a set of groups) as one file.
//!
//! Built from the group directories under `etc/shared/` (which the integrity sync keeps identical on
//! every node), so every node computes the same bytes and the same MD5 for the same groups.

use md5::{Digest, Md5};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// One built file and its checksum.
#[derive(Debug)]
pub struct Merged {
    pub md5: String,
    pub data: Vec<u8>,
}

/// The name a set of groups is cached and announced under (`g1,g2`).
pub(crate) fn groups_key(groups: &[String]) -> String {
    if groups.is_empty() {
        crate::registry::DEFAULT_GROUP.to_string()
    } else {
        groups.join(",")
    }
}

/// The files of one group directory that go into its merged.mg, by name, in name order: regular,
/// not hidden, not `merged.mg*`, not binary (holding a NUL byte).
fn group_files(shared: &Path, group: &str) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let dir = shared.join(group);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        // A group without files (not synchronized as a directory): nothing but ar.conf.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with("merged.mg") || name == "ar.conf" {
            continue;
        }
        // Never follows a link: only regular files of the directory itself.
        if !entry.file_type()?.is_file() {
            continue;
        }
        let data = std::fs::read(entry.path())?;
        if data.contains(&0) {
            continue;
        }
        out.insert(name, data);
    }
    Ok(out)
}

fn append(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(format!("!{} {name}\n", data.len()).as_bytes());
    out.extend_from_slice(data);
}

/// Builds merged.mg for `groups` under `data_dir`: `#<groups>`, then `ar.conf` (from `etc/shared/`),
/// then the files in name order. With several groups, their `agent.conf` files are concatenated in
/// group order, each after a `<!-- Source file: <group>/agent.conf -->` line; for other names the
/// later group wins.
pub fn build(data_dir: &Path, groups: &[String]) -> std::io::Result<Merged> {
    let shared = data_dir.join("etc/shared");
    let key = groups_key(groups);
    let names: Vec<String> = if groups.is_empty() { vec![key.clone()] } else { groups.to_vec() };
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let [only] = names.as_slice() {
        files = group_files(&shared, only)?;
    } else {
        let mut agent_conf = Vec::new();
        for g in &names {
            for (name, data) in group_files(&shared, g)? {
                if name == "agent.conf" {
                    agent_conf.extend_from_slice(format!("<!-- Source file: {g}/agent.conf -->\n").as_bytes());
                    agent_conf.extend_from_slice(&data);
                } else {
                    files.insert(name, data);
                }
            }
        }
        if !agent_conf.is_empty() {
            files.insert("agent.conf".into(), agent_conf);
        }
    }
    let mut out = format!("#{key}\n").into_bytes();
    match std::fs::read(shared.join("ar.conf")) {
        Ok(ar) => append(&mut out, "ar.conf", &ar),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for (name, data) in &files {
        append(&mut out, name, data);
    }
    let md5 = crate::manifest::hex(&Md5::digest(&out));
    Ok(Merged { md5, data: out })
}

/// Built files by groups key, rebuilt after the files they come from change.
#[derive(Default)]
pub(crate) struct MergedCache {
    entries: HashMap<String, Arc<Merged>>,
}

impl MergedCache {
    pub fn get(&mut self, data_dir: &Path, groups: &[String]) -> std::io::Result<Arc<Merged>> {
        let key = groups_key(groups);
        if let Some(m) = self.entries.get(&key) {
            return Ok(m.clone());
        }
        let m = Arc::new(build(data_dir, groups)?);
        self.entries.insert(key, m.clone());
        Ok(m)
    }

    /// Forgets what `paths` (relative to the data dir; `None`: anything) may have changed. Returns
    /// whether anything cached was affected.
    pub(crate) fn invalidate(&mut self, paths: Option<&[String]>) -> bool {
        let Some(paths) = paths else {
            let any = !self.entries.is_empty();
            self.entries.clear();
            return any;
        };
        let mut groups = std::collections::HashSet::new();
        for p in paths {
            let Some(rest) = p.strip_prefix("etc/shared/") else { continue };
            match rest.split_once('/') {
                Some((group, _)) => {
                    groups.insert(group);
                }
                // A file directly under etc/shared (ar.conf): every group.
                None => return self.invalidate(None),
            }
        }
        let before = self.entries.len();
        self.entries.retain(|key, _| !key.split(',').any(|g| groups.contains(g)));
        before != self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_builds_like_the_reference_vector() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("etc/shared/default")).unwrap();
        let ar = "restart-ossec0 - restart-ossec.sh - 0\nrestart-ossec0 - restart-ossec.cmd - 0\nrestart-wazuh0 - restart-ossec.sh - 0\nrestart-wazuh0 - restart-ossec.cmd - 0\nrestart-wazuh0 - restart-wazuh - 0\nrestart-wazuh0 - restart-wazuh.exe - 0\n";
        let conf = "<agent_config>\n  <labels>\n    <label key=\"env\">test</label>\n  </labels>\n</agent_config>\n";
        std::fs::write(d.join("etc/shared/ar.conf"), ar).unwrap();
        std::fs::write(d.join("etc/shared/default/agent.conf"), conf).unwrap();
        // Skipped: an old merged.mg, hidden and binary files, directories.
        std::fs::write(d.join("etc/shared/default/merged.mg"), "old").unwrap();
        std::fs::write(d.join("etc/shared/default/.hidden"), "h").unwrap();
        std::fs::write(d.join("etc/shared/default/bin.dat"), b"a\0b").unwrap();
        std::fs::create_dir_all(d.join("etc/shared/default/sub")).unwrap();
        let m = build(d, &["default".into()]).unwrap();
        assert_eq!(m.md5, "3d9d636f3ed4284a41913b304c13ad96", "{}", String::from_utf8_lossy(&m.data));
        assert_eq!(m.data.len(), 353);
    }

    #[test]
    fn several_groups_concatenate_agent_conf_and_later_groups_win() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (g, conf, other) in [("a", "<a/>\n", "from a"), ("b", "<b/>\n", "from b")] {
            std::fs::create_dir_all(d.join("etc/shared").join(g)).unwrap();
            std::fs::write(d.join("etc/shared").join(g).join("agent.conf"), conf).unwrap();
            std::fs::write(d.join("etc/shared").join(g).join("rootcheck.txt"), other).unwrap();
        }
        let m = build(d, &["a".into(), "b".into()]).unwrap();
        let text = String::from_utf8(m.data).unwrap();
        assert!(text.starts_with("#a,b\n"), "{text}");
        assert!(text.contains("<!-- Source file: a/agent.conf -->\n<a/>\n<!-- Source file: b/agent.conf -->\n<b/>\n"));
        assert!(text.contains("!6 rootcheck.txt\nfrom b") && !text.contains("from a"));
        let mut cache = MergedCache::default();
        let first = cache.get(d, &["a".into(), "b".into()]).unwrap();
        assert!(!cache.invalidate(Some(&["etc/shared/c/x".into()])));
        std::fs::write(d.join("etc/shared/b/agent.conf"), "<b2/>\n").unwrap();
        assert!(cache.invalidate(Some(&["etc/shared/b/agent.conf".into()])));
        assert_ne!(cache.get(d, &["a".into(), "b".into()]).unwrap().md5, first.md5);
    }
}
