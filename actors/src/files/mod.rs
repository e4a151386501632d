//! Reading and writing synchronized files, confined to the sync roots by construction.
//!
//! - [`confine`]: the path checks every read and write goes through, and the typed [`FileError`].
//! - [`serve`]: the master's side: plans and file contents for workers, with a part cache.
//! - [`staging`]: the worker's side: staged, checked, durable, then renamed into place.

pub(crate) mod confine;
pub mod serve;
pub(crate) mod staging;

pub use confine::{safe_target, FileError};
pub use serve::{plan, read_batch, read_part, PartCache};
pub use staging::{apply, sync_filesystem, Applied, Staged, Staging};

#[cfg(test)]
pub(crate) mod tests {
    use super::confine::safe_target;
    use super::serve::{plan, read_part};
    use super::staging::{apply, Staged, Staging};
    use crate::manifest::{scan, Manifest};
    use std::path::Path;
    use wazuh_cluster_protocol::message::FilePart;
    use wazuh_cluster_protocol::sync::FileMeta;

    #[cfg(unix)]
    #[test]
    fn a_symlink_planted_in_a_root_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/rules")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/rules/evil")).unwrap();
        let err = safe_target(dir.path(), "etc/rules/evil/x.xml").unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/rules/passwd.xml")).unwrap();
        assert!(safe_target(dir.path(), "etc/rules/passwd.xml").unwrap_err().to_string().contains("symlink"));
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
        std::fs::write(master.path().join("etc/lists/deep/big-list"), &content).unwrap();
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
        assert_eq!(std::fs::read(worker.path().join("etc/lists/deep/big-list")).unwrap(), content);
        // A chunk whose content does not match the announced MD5 is refused, nothing is applied.
        let mut bad = read_part(master.path(), &m, &meta.path, 0, 1 << 20).unwrap();
        bad.data = lz4_flex::block::compress(&vec![0u8; content.len()]);
        bad.compressed = true;
        assert!(staging.write(&meta, &bad).unwrap_err().to_string().contains("MD5 mismatch"));
        // A file the manifest does not list is never served.
        assert!(read_part(master.path(), &m, "etc/lists/other", 0, 10).is_err());
        assert!(read_part(master.path(), &m, "../../etc/passwd", 0, 10).is_err());
    }

    /// Identical contents are staged apart, each for its destination (also when written on several
    /// threads at once), and every file lands in the same apply.
    #[test]
    fn identical_files_are_staged_apart_and_all_land_in_one_round() {
        let master = tempfile::tempdir().unwrap();
        let worker = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(master.path().join("etc/rules")).unwrap();
        std::fs::create_dir_all(worker.path().join("etc/rules")).unwrap();
        std::fs::write(worker.path().join("etc/rules/kept.xml"), "<group/>").unwrap();
        let names: Vec<String> = (0..64).map(|i| format!("same_{i}.xml")).collect();
        for name in &names {
            std::fs::write(master.path().join("etc/rules").join(name), "<group name=\"same\"/>\n").unwrap();
        }
        let (m, _) = scan(master.path(), None);
        let staging = Staging::open(worker.path()).unwrap();
        let metas = m.metas();
        let staged: Vec<Staged> = std::thread::scope(|s| {
            let handles: Vec<_> = metas
                .chunks(8)
                .map(|chunk| {
                    let (staging, master, m) = (&staging, master.path(), &m);
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|meta| {
                                assert_eq!(staging.have(meta), 0, "nothing staged for {} yet", meta.path);
                                let part = read_part(master, m, &meta.path, 0, 1 << 20).unwrap();
                                staging.write(meta, &part).unwrap().unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let paths: std::collections::HashSet<&std::path::PathBuf> = staged.iter().map(|s| &s.path).collect();
        assert_eq!(paths.len(), 64, "one staged file per destination");
        staging.sync(&staged).unwrap();
        let out = staging.apply(worker.path(), staged, &[]);
        assert_eq!((out.written.len(), out.refused.len()), (64, 0), "{:?}", out.refused);
        for name in &names {
            assert_eq!(std::fs::read(worker.path().join("etc/rules").join(name)).unwrap(), b"<group name=\"same\"/>\n");
        }
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

    pub(crate) fn master_tree() -> tempfile::TempDir {
        let master = tempfile::tempdir().unwrap();
        for (rel, body) in [
            ("etc/rules/a.xml", &b"<rule/>"[..]),
            ("etc/rules/sub/b.xml", b"<rule id=2/>"),
            ("etc/shared/default/agent.conf", b"<agent_config/>"),
            ("etc/shared/g1/extra.conf", b"#default\n"),
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
        assert_eq!(std::fs::read(worker.path().join("etc/shared/g1/extra.conf")).unwrap(), b"#default\n");
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
