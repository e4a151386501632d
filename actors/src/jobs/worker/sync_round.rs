//! The decisions of a worker's file sync, without I/O (sans-IO): when to run which round, what a
//! round fetches and deletes, how its fetches are batched, and whether it ended in sync. The
//! Integrity job feeds in what happened and carries out what these decide; every edge case is
//! tested here on plain values.

use crate::manifest::Manifest;
use std::collections::{HashMap, VecDeque};
use wazuh_cluster_protocol::message::{FetchItem, IntegrityChanged};
use wazuh_cluster_protocol::sync::{self, FileMeta};

/// Which kind of round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoundKind {
    /// Compare digests, then (when they differ) whole manifests.
    Full,
    /// Fetch and delete exactly what the master announced.
    Delta,
}

/// What to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Full,
    Delta(IntegrityChanged),
    /// Nothing now: a round is running (another follows it if one was asked for meanwhile).
    Wait,
}

/// When rounds run: one at a time; a full round every interval; a delta round when the master
/// announces a small change and this worker was in sync. What is asked for during a round runs right
/// after it: announced changes, merged, as one delta round (when the round ended in sync), anything
/// else as a full round.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    running: Option<RoundKind>,
    next: Option<Queued>,
    in_sync: Option<bool>,
    have_manifest: bool,
}

/// What to run after the round that is running.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Queued {
    Full,
    Delta(IntegrityChanged),
}

/// `later` applied after `earlier`: one change that leads from before `earlier` to after `later`.
pub(crate) fn merge_deltas(earlier: IntegrityChanged, later: IntegrityChanged) -> IntegrityChanged {
    let mut changed: std::collections::BTreeMap<String, FileMeta> =
        earlier.changed.into_iter().map(|m| (m.path.clone(), m)).collect();
    let mut removed: std::collections::BTreeSet<String> = earlier.removed.into_iter().collect();
    for path in later.removed {
        changed.remove(&path);
        removed.insert(path);
    }
    for meta in later.changed {
        removed.remove(&meta.path);
        changed.insert(meta.path.clone(), meta);
    }
    IntegrityChanged {
        master_digest: later.master_digest,
        delta: true,
        changed: changed.into_values().collect(),
        removed: removed.into_iter().collect(),
    }
}

impl Schedule {
    pub fn in_sync(&self) -> Option<bool> {
        self.in_sync
    }

    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The interval elapsed (or a full comparison is wanted).
    pub fn tick(&mut self) -> Start {
        if self.running.is_some() {
            self.next = Some(Queued::Full);
            return Start::Wait;
        }
        self.running = Some(RoundKind::Full);
        Start::Full
    }

    /// The master announced a change of its files.
    pub fn announced(&mut self, change: IntegrityChanged) -> Start {
        if !change.delta || !self.have_manifest {
            return self.tick();
        }
        if self.running.is_some() {
            self.next = Some(match self.next.take() {
                None => Queued::Delta(change),
                Some(Queued::Delta(queued)) => Queued::Delta(merge_deltas(queued, change)),
                Some(Queued::Full) => Queued::Full,
            });
            return Start::Wait;
        }
        if self.in_sync != Some(true) {
            return self.tick();
        }
        self.running = Some(RoundKind::Delta);
        Start::Delta(change)
    }

    /// The running round ended with this worker `in_sync` (or not).
    pub fn finished(&mut self, in_sync: bool) -> Start {
        let kind = self.running.take();
        self.have_manifest = true;
        self.in_sync = Some(in_sync);
        match self.next.take() {
            Some(Queued::Delta(change)) if in_sync => {
                self.running = Some(RoundKind::Delta);
                Start::Delta(change)
            }
            Some(_) => self.tick(),
            // A delta that did not reach the master's digest is followed by a full comparison.
            None if kind == Some(RoundKind::Delta) && !in_sync => self.tick(),
            None => Start::Wait,
        }
    }

    /// The running round failed: the job restarts (after its back-off) and starts over.
    pub(crate) fn aborted(&mut self) {
        self.running = None;
        self.next = None;
    }
}

/// The roots this worker holds no file under but must fetch files for (a fresh worker): staged as
/// trees and moved in whole.
pub(crate) fn fresh_roots(fetch: &[FileMeta], local: &Manifest) -> Vec<&'static str> {
    sync::SYNC_ROOTS
        .into_iter()
        .filter(|root| {
            fetch.iter().any(|m| sync::root_of(&m.path) == Some(*root))
                && !local.files.keys().any(|p| sync::root_of(p) == Some(*root))
        })
        .collect()
}

/// What an announced change means for this worker: the files it must fetch (not already held
/// with that content) and those it must delete (held).
pub(crate) fn delta_plan(change: &IntegrityChanged, local: &Manifest) -> (Vec<FileMeta>, Vec<String>) {
    let fetch = change
        .changed
        .iter()
        .filter(|m| local.files.get(&m.path).is_none_or(|e| e.md5 != m.md5 || e.size != m.size))
        .cloned()
        .collect();
    let delete = change.removed.iter().filter(|p| local.files.contains_key(*p)).cloned().collect();
    (fetch, delete)
}

/// How a plan differs from what this worker holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Differences {
    pub missing: usize,
    pub changed: usize,
    pub extra: usize,
}

pub(crate) fn differences(fetch: &[FileMeta], delete: &[String], local: &Manifest) -> Differences {
    let changed = fetch.iter().filter(|m| local.files.contains_key(&m.path)).count();
    Differences { missing: fetch.len() - changed, changed, extra: delete.len() }
}

/// Fetch requests in flight at once: the master reads the next batches while this worker writes
/// the previous one.
pub(crate) const DEPTH: usize = 4;

/// Bytes asked for in one request: an eighth of a frame, so the answers in flight stay within half
/// a frame (measured: 2 x a quarter left this worker waiting ~1 s of a 3 s sync; small answers keep
/// both sides busy).
pub(crate) fn answer_budget(max_frame: usize) -> u64 {
    (max_frame / 8).max(1) as u64
}

/// The files a request asked for, by path.
pub(crate) type Asked = HashMap<String, FileMeta>;

/// The files still to fetch, in order, batched into requests that fit an answer.
#[derive(Debug, Default)]
pub(crate) struct FetchQueue {
    queue: VecDeque<FileMeta>,
}

impl FetchQueue {
    pub fn new(files: Vec<FileMeta>) -> Self {
        Self { queue: files.into() }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The next request: as many files as fit `budget` bytes (at least one), each resumed from
    /// what `staged` says is already there. `None` when nothing is left.
    pub(crate) fn next_request(
        &mut self,
        budget: u64,
        staged: impl Fn(&FileMeta) -> u64,
    ) -> Option<(Vec<FetchItem>, Asked)> {
        let mut items = Vec::new();
        let mut asked = Asked::new();
        let mut bytes = 0u64;
        while let Some(meta) = self.queue.pop_front() {
            let have = staged(&meta).min(meta.size);
            // Each file costs its remaining bytes and a little for its path and header.
            bytes += meta.size - have + 64;
            items.push(FetchItem { path: meta.path.clone(), offset: have });
            asked.insert(meta.path.clone(), meta);
            if bytes >= budget {
                break;
            }
        }
        (!items.is_empty()).then_some((items, asked))
    }

    /// Files to ask for again (parts still missing, or left out of an answer).
    pub(crate) fn requeue(&mut self, files: impl IntoIterator<Item = FileMeta>) {
        self.queue.extend(files);
    }
}

/// A round ended in sync when nothing failed and the manifest now matches the master's digest.
pub(crate) fn ended_in_sync(errors: usize, digest: &str, master_digest: &str) -> bool {
    errors == 0 && digest == master_digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FileEntry;

    fn meta(path: &str, size: u64, md5: &str) -> FileMeta {
        FileMeta { path: path.into(), size, md5: md5.into() }
    }

    fn manifest(files: &[(&str, u64, &str)]) -> Manifest {
        let mut m = Manifest::default();
        for (p, size, md5) in files {
            m.files.insert((*p).into(), FileEntry { size: *size, mtime_ns: 1, md5: (*md5).into() });
        }
        m
    }

    fn change(delta: bool) -> IntegrityChanged {
        IntegrityChanged { master_digest: "d".into(), delta, changed: vec![], removed: vec![] }
    }

    #[test]
    fn the_first_round_is_full_and_ticks_during_a_round_queue_one_more() {
        let mut s = Schedule::default();
        assert_eq!(s.tick(), Start::Full);
        assert_eq!(s.tick(), Start::Wait);
        assert_eq!(s.tick(), Start::Wait);
        assert_eq!(s.finished(false), Start::Full, "one follow-up for any number of ticks");
        assert_eq!(s.finished(true), Start::Wait);
        assert_eq!(s.in_sync(), Some(true));
    }

    #[test]
    fn a_delta_is_applied_only_by_a_worker_that_was_in_sync() {
        let mut s = Schedule::default();
        // Before any round: no manifest to apply a delta to.
        assert_eq!(s.announced(change(true)), Start::Full);
        assert_eq!(s.finished(false), Start::Wait);
        // Out of sync: compare everything.
        assert_eq!(s.announced(change(true)), Start::Full);
        assert_eq!(s.finished(true), Start::Wait);
        assert_eq!(s.announced(change(true)), Start::Delta(change(true)));
        assert_eq!(s.finished(true), Start::Wait);
        // A change too big to announce as a delta: compare everything.
        assert_eq!(s.announced(change(false)), Start::Full);
    }

    #[test]
    fn a_delta_that_misses_the_digest_is_followed_by_a_full_round() {
        let mut s = Schedule::default();
        assert_eq!(s.tick(), Start::Full);
        assert_eq!(s.finished(true), Start::Wait);
        assert_eq!(s.announced(change(true)), Start::Delta(change(true)));
        assert_eq!(s.finished(false), Start::Full);
    }

    fn delta(digest: &str, changed: &[(&str, &str)], removed: &[&str]) -> IntegrityChanged {
        IntegrityChanged {
            master_digest: digest.into(),
            delta: true,
            changed: changed.iter().map(|(p, m)| meta(p, 1, m)).collect(),
            removed: removed.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn announcements_during_a_round_run_after_it_as_one_merged_delta() {
        let mut s = Schedule::default();
        assert_eq!(s.tick(), Start::Full);
        assert_eq!(s.finished(true), Start::Wait);
        let first = delta("d1", &[("etc/rules/a", "1")], &[]);
        assert_eq!(s.announced(first.clone()), Start::Delta(first));
        // Two more while it runs (the same file written twice, one removed).
        assert_eq!(s.announced(delta("d2", &[("etc/rules/a", "2"), ("etc/rules/b", "1")], &[])), Start::Wait);
        assert_eq!(s.announced(delta("d3", &[], &["etc/rules/b", "etc/rules/c"])), Start::Wait);
        assert_eq!(
            s.finished(true),
            Start::Delta(delta("d3", &[("etc/rules/a", "2")], &["etc/rules/b", "etc/rules/c"]))
        );
        assert_eq!(s.finished(true), Start::Wait);
    }

    #[test]
    fn a_queued_delta_after_a_round_that_missed_the_digest_becomes_a_full_round() {
        let mut s = Schedule::default();
        assert_eq!(s.tick(), Start::Full);
        assert_eq!(s.finished(true), Start::Wait);
        assert_eq!(s.announced(change(true)), Start::Delta(change(true)));
        assert_eq!(s.announced(change(true)), Start::Wait);
        assert_eq!(s.finished(false), Start::Full);
        // A tick queued with a delta wins: one full round.
        assert_eq!(s.announced(change(true)), Start::Wait);
        assert_eq!(s.tick(), Start::Wait);
        assert_eq!(s.finished(true), Start::Full);
    }

    #[test]
    fn merging_deltas_keeps_the_last_word_on_each_path() {
        let merged = merge_deltas(
            delta("d1", &[("etc/rules/a", "1"), ("etc/rules/gone", "1")], &["etc/rules/back"]),
            delta("d2", &[("etc/rules/back", "2")], &["etc/rules/gone"]),
        );
        assert_eq!(merged, delta("d2", &[("etc/rules/a", "1"), ("etc/rules/back", "2")], &["etc/rules/gone"]));
    }

    #[test]
    fn an_aborted_round_forgets_what_was_queued() {
        let mut s = Schedule::default();
        assert_eq!(s.tick(), Start::Full);
        assert_eq!(s.tick(), Start::Wait);
        s.aborted();
        assert!(!s.is_running());
        assert_eq!(s.tick(), Start::Full);
        assert_eq!(s.finished(true), Start::Wait);
    }

    #[test]
    fn only_roots_without_any_local_file_are_fresh() {
        let local = manifest(&[("etc/rules/a.xml", 1, "x")]);
        let fetch = vec![meta("etc/rules/b.xml", 1, "y"), meta("etc/shared/default/agent.conf", 1, "z")];
        assert_eq!(fresh_roots(&fetch, &local), ["etc/shared"]);
        assert!(fresh_roots(&[], &Manifest::default()).is_empty(), "nothing to fetch: nothing fresh");
    }

    #[test]
    fn a_delta_fetches_only_new_content_and_deletes_only_what_is_held() {
        let local = manifest(&[("etc/rules/same", 1, "m1"), ("etc/rules/old", 1, "m2"), ("etc/rules/gone", 1, "m3")]);
        let change = IntegrityChanged {
            master_digest: "d".into(),
            delta: true,
            changed: vec![
                meta("etc/rules/same", 1, "m1"),
                meta("etc/rules/old", 2, "m9"),
                meta("etc/rules/new", 1, "m4"),
            ],
            removed: vec!["etc/rules/gone".into(), "etc/rules/never-had".into()],
        };
        let (fetch, delete) = delta_plan(&change, &local);
        let paths: Vec<&str> = fetch.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["etc/rules/old", "etc/rules/new"]);
        assert_eq!(delete, ["etc/rules/gone"]);
        assert_eq!(differences(&fetch, &delete, &local), Differences { missing: 1, changed: 1, extra: 1 });
    }

    #[test]
    fn requests_fill_a_budget_resume_partial_files_and_take_at_least_one_file() {
        let mut q = FetchQueue::new(vec![
            meta("etc/rules/a", 100, "a"),
            meta("etc/rules/b", 100, "b"),
            meta("etc/lists/huge", 10_000, "h"),
            meta("etc/rules/c", 10, "c"),
        ]);
        let staged = |m: &FileMeta| if m.path == "etc/rules/b" { 40 } else { 0 };
        let (items, asked) = q.next_request(300, staged).unwrap();
        assert_eq!(
            items,
            [
                FetchItem { path: "etc/rules/a".into(), offset: 0 },
                FetchItem { path: "etc/rules/b".into(), offset: 40 },
                FetchItem { path: "etc/lists/huge".into(), offset: 0 },
            ]
        );
        assert_eq!(asked.len(), 3);
        // A file larger than the budget still goes, alone.
        let mut q2 = FetchQueue::new(vec![meta("etc/lists/huge", 10_000, "h")]);
        assert_eq!(q2.next_request(10, |_| 0).unwrap().0.len(), 1);
        // What is left, then what comes back.
        assert_eq!(q.len(), 1);
        let (items, _) = q.next_request(300, staged).unwrap();
        assert_eq!(items.len(), 1);
        assert!(q.next_request(300, staged).is_none());
        q.requeue(vec![meta("etc/lists/huge", 10_000, "h")]);
        let (items, _) = q.next_request(300, |_| 4_000).unwrap();
        assert_eq!(items, [FetchItem { path: "etc/lists/huge".into(), offset: 4_000 }]);
        assert_eq!(answer_budget(16 << 20), 2 << 20);
    }

    #[test]
    fn in_sync_needs_no_error_and_the_masters_digest() {
        assert!(ended_in_sync(0, "d", "d"));
        assert!(!ended_in_sync(1, "d", "d"));
        assert!(!ended_in_sync(0, "d", "e"));
    }
}
