//! `etc/client.keys`, byte-compatible with Wazuh's: one `ID NAME IP KEY` line per agent, mode 0640.
//!
//! Kept up to date per change, not per registry: an enrollment appends its line (one write per
//! committed transaction, whatever it holds), a removal turns the first byte of the agent's line
//! into `#` (Wazuh skips lines that start with `#`), and once the dead lines outnumber the live ones
//! (and there are at least [`COMPACT_AFTER`] of them) the file is compacted: written again without
//! them to a temporary file and renamed over the old one, so a reader sees the old file or the new
//! one, never a mix. Compaction costs one pass over the file, at most once per as many removals as
//! the file has live lines, so each change costs O(1) amortized.
//!
//! The file is derived from the database: it is written whole when the store opens, so a crash
//! between a commit and the write of its lines loses nothing, and no write here needs an fsync.

use super::schema::fmt_id;
use super::store::StoreError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wazuh_cluster_protocol::message::{AgentChange, AgentEntry};

/// Dead lines below this are never worth a compaction.
pub(crate) const COMPACT_AFTER: u64 = 1024;

/// One agent's line.
pub fn line(e: &AgentEntry) -> String {
    format!("{} {} {} {}\n", fmt_id(e.id), e.name, e.ip, e.key)
}

#[cfg(test)]
/// The whole file's text for `entries`.
pub fn render(entries: &[AgentEntry]) -> String {
    let mut text = String::with_capacity(entries.len() * 96);
    for e in entries {
        text.push_str(&line(e));
    }
    text
}

/// The live file: where each agent's line starts, how many lines are dead.
#[derive(Debug)]
pub(crate) struct ClientKeys {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    /// Agent id -> offset of its line.
    lines: HashMap<u32, u64>,
    dead: u64,
    /// Compactions so far (for tests and figures).
    pub compactions: u64,
    /// The file's identity (device, inode) when this node wrote it.
    identity: (u64, u64),
    /// The last bytes written (at most [`TAIL`]), to tell whether someone else wrote since.
    tail: Vec<u8>,
}

/// How much of the file's end is compared before each write.
const TAIL: usize = 256;

fn open_options() -> std::fs::OpenOptions {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o640);
    }
    opts
}

/// Writes `text` to `<path>.tmp` and renames it over `path`: readers see the old file or the new.
fn replace(path: &Path, text: &[u8]) -> Result<std::fs::File, StoreError> {
    use std::io::Write;
    let tmp = path.with_file_name(".client.keys.tmp");
    let mut f = open_options().open(&tmp).map_err(StoreError::io(&tmp))?;
    f.write_all(text).map_err(StoreError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(StoreError::io(path))?;
    Ok(f)
}

#[cfg(unix)]
fn write_at(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

fn tail_of(text: &[u8]) -> &[u8] {
    &text[text.len().saturating_sub(TAIL)..]
}

fn meta_identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn identity(file: &std::fs::File) -> std::io::Result<(u64, u64)> {
    file.metadata().map(|m| meta_identity(&m))
}

impl ClientKeys {
    /// Writes `<data_dir>/etc/client.keys` for `entries` and keeps it open for changes.
    pub fn create(data_dir: &Path, entries: &[AgentEntry]) -> Result<Self, StoreError> {
        let etc = data_dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(StoreError::io(&etc))?;
        let path = etc.join("client.keys");
        let (text, lines) = Self::layout(entries.iter().map(|e| (e.id, line(e))));
        let file = replace(&path, text.as_bytes())?;
        let identity = identity(&file).map_err(StoreError::io(&path))?;
        let tail = tail_of(text.as_bytes()).to_vec();
        Ok(Self { path, file, len: text.len() as u64, lines, dead: 0, compactions: 0, identity, tail })
    }

    /// Whether the file on disk is still the one this node wrote, as it wrote it: the same file
    /// (not replaced), of the length written, ending with the bytes written last. A file someone
    /// else truncated, appended to, edited at its end or replaced fails, with what differs.
    pub fn check(&self) -> Result<(), Changed> {
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Changed::Removed),
            Err(e) => return Err(Changed::Unexaminable(e)),
        };
        if !meta.file_type().is_file() {
            return Err(Changed::NotAFile);
        }
        if meta_identity(&meta) != self.identity {
            return Err(Changed::Replaced);
        }
        if meta.len() != self.len {
            return Err(Changed::Length { on_disk: meta.len(), written: self.len });
        }
        let mut end = vec![0u8; self.tail.len()];
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut end, self.len - self.tail.len() as u64)
            .map_err(Changed::Unreadable)?;
        if end != self.tail {
            return Err(Changed::Tail);
        }
        Ok(())
    }

    fn layout(lines: impl Iterator<Item = (u32, String)>) -> (String, HashMap<u32, u64>) {
        let mut text = String::new();
        let mut offsets = HashMap::new();
        for (id, l) in lines {
            offsets.insert(id, text.len() as u64);
            text.push_str(&l);
        }
        (text, offsets)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Agents with a live line.
    pub fn live(&self) -> u64 {
        self.lines.len() as u64
    }

    #[cfg(test)]
    /// Lines marked removed and not compacted away yet.
    pub(crate) fn dead(&self) -> u64 {
        self.dead
    }

    fn kill(&mut self, id: u32) -> Result<(), StoreError> {
        if let Some(offset) = self.lines.remove(&id) {
            write_at(&self.file, b"#", offset).map_err(StoreError::io(&self.path))?;
            self.dead += 1;
            let tail_start = self.len - self.tail.len() as u64;
            if let Some(byte) = offset.checked_sub(tail_start).and_then(|i| self.tail.get_mut(i as usize)) {
                *byte = b'#';
            }
        }
        Ok(())
    }

    /// Applies committed changes: new lines appended in one write, removed (or re-keyed) agents'
    /// lines marked dead; compacts when the dead lines are too many.
    pub fn apply(&mut self, changes: &[AgentChange]) -> Result<(), StoreError> {
        let mut appended = String::new();
        let mut new_lines = Vec::new();
        for c in changes {
            match c {
                AgentChange::Added(e) => {
                    if let Some(pos) = new_lines.iter().position(|(id, _)| *id == e.id) {
                        // Added twice in one batch: the first line is dead before it is written.
                        let (_, at): (u32, u64) = new_lines.remove(pos);
                        appended.replace_range(at as usize..at as usize + 1, "#");
                        self.dead += 1;
                    }
                    self.kill(e.id)?;
                    new_lines.push((e.id, appended.len() as u64));
                    appended.push_str(&line(e));
                }
                AgentChange::Removed { id } => {
                    if let Some(pos) = new_lines.iter().position(|(i, _)| i == id) {
                        let (_, at) = new_lines.remove(pos);
                        appended.replace_range(at as usize..at as usize + 1, "#");
                        self.dead += 1;
                    }
                    self.kill(*id)?;
                }
                AgentChange::GroupsChanged { .. } | AgentChange::UserSet(_) | AgentChange::UserRemoved { .. } => {}
            }
        }
        if !appended.is_empty() {
            write_at(&self.file, appended.as_bytes(), self.len).map_err(StoreError::io(&self.path))?;
            for (id, at) in new_lines {
                self.lines.insert(id, self.len + at);
            }
            self.len += appended.len() as u64;
            let mut tail = std::mem::take(&mut self.tail);
            tail.extend_from_slice(appended.as_bytes());
            self.tail = tail_of(&tail).to_vec();
        }
        if self.dead >= COMPACT_AFTER && self.dead > self.live() {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the file again without its dead lines (atomically, see the module documentation).
    pub(crate) fn compact(&mut self) -> Result<(), StoreError> {
        let text = std::fs::read_to_string(&self.path).map_err(StoreError::io(&self.path))?;
        let live = text.split_inclusive('\n').filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|l| {
            let id = l.split(' ').next().and_then(super::schema::parse_id)?;
            Some((id, l.to_string()))
        });
        let (text, lines) = Self::layout(live);
        self.file = replace(&self.path, text.as_bytes())?;
        self.identity = identity(&self.file).map_err(StoreError::io(&self.path))?;
        self.tail = tail_of(text.as_bytes()).to_vec();
        self.len = text.len() as u64;
        self.lines = lines;
        self.dead = 0;
        self.compactions += 1;
        Ok(())
    }
}

#[cfg(test)]
/// Why a client.keys text cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("line {line}: {text:?} is not ID NAME IP KEY")]
    Fields { line: usize, text: String },
    #[error("line {line}: bad id {id:?}")]
    Id { line: usize, id: String },
    #[error("line {line}: id {id} or name {name} twice")]
    Twice { line: usize, id: u32, name: String },
}

/// How the file on disk differs from what this node wrote ([`ClientKeys::check`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Changed {
    #[error("was removed")]
    Removed,
    #[error("cannot be examined: {0}")]
    Unexaminable(std::io::Error),
    #[error("is no longer a regular file")]
    NotAFile,
    #[error("was replaced by another file")]
    Replaced,
    #[error("holds {on_disk} bytes where this node wrote {written}")]
    Length { on_disk: u64, written: u64 },
    #[error("cannot be read back: {0}")]
    Unreadable(std::io::Error),
    #[error("ends with other bytes than this node wrote")]
    Tail,
}

#[cfg(test)]
/// Reads a client.keys text as Wazuh does: `ID NAME IP KEY` lines, lines starting with `#` or a
/// space skipped. Errors name the line; an id or name twice is an error.
pub fn parse(text: &str) -> Result<Vec<AgentEntry>, ParseError> {
    let mut out = Vec::new();
    let (mut ids, mut names) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for (n, l) in text.lines().enumerate() {
        if l.is_empty() || l.starts_with('#') || l.starts_with(' ') {
            continue;
        }
        let line = n + 1;
        let fields: Vec<&str> = l.split(' ').collect();
        let [id, name, ip, key] = fields[..] else {
            return Err(ParseError::Fields { line, text: l.to_string() });
        };
        let id = super::schema::parse_id(id).ok_or_else(|| ParseError::Id { line, id: id.to_string() })?;
        if !ids.insert(id) || !names.insert(name.to_string()) {
            return Err(ParseError::Twice { line, id, name: name.to_string() });
        }
        out.push(AgentEntry { id, name: name.into(), ip: ip.into(), key: key.into(), groups: Vec::new() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u32, name: &str, key: char) -> AgentEntry {
        AgentEntry {
            id,
            name: name.into(),
            ip: "any".into(),
            key: std::iter::repeat_n(key, 64).collect(),
            groups: vec!["default".into()],
        }
    }

    fn read(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("etc/client.keys")).unwrap()
    }

    #[test]
    fn lines_are_id_name_ip_key_and_the_file_is_created_whole() {
        let dir = tempfile::tempdir().unwrap();
        ClientKeys::create(dir.path(), &[e(1, "web", 'a'), e(12, "db", 'b')]).unwrap();
        assert_eq!(read(dir.path()), format!("001 web any {}\n012 db any {}\n", "a".repeat(64), "b".repeat(64)));
        assert!(!dir.path().join("etc/.client.keys.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("etc/client.keys")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
    }

    #[test]
    fn additions_append_and_removals_comment_out_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = ClientKeys::create(dir.path(), &[e(1, "web", 'a')]).unwrap();
        keys.apply(&[AgentChange::Added(e(2, "db", 'b')), AgentChange::Removed { id: 1 }]).unwrap();
        let text = read(dir.path());
        assert_eq!(text, format!("#01 web any {}\n002 db any {}\n", "a".repeat(64), "b".repeat(64)));
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.iter().map(|p| p.id).collect::<Vec<_>>(), vec![2]);
        // Re-keyed: the old line dies, the new one is appended.
        keys.apply(&[AgentChange::Added(e(2, "db", 'c'))]).unwrap();
        let parsed = parse(&read(dir.path())).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].key, "c".repeat(64));
        assert_eq!((keys.live(), keys.dead()), (1, 2));
    }

    /// Any sequence of additions, re-keyings and removals, applied in batches of any size, leaves a
    /// file that Wazuh's rules read as exactly the agents a full rewrite would hold.
    #[test]
    fn incremental_changes_read_back_as_a_full_rewrite_after_any_sequence() {
        for seed in 1..=6u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut rand = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut model: std::collections::BTreeMap<u32, AgentEntry> = Default::default();
            let initial: Vec<AgentEntry> = (1..=rand(50) as u32).map(|i| e(i, &format!("a{i}"), 'i')).collect();
            for a in &initial {
                model.insert(a.id, a.clone());
            }
            let mut keys = ClientKeys::create(dir.path(), &initial).unwrap();
            let mut next_id = initial.len() as u32 + 1;
            for _round in 0..100 {
                let mut batch = Vec::new();
                for _ in 0..=rand(40) {
                    let ids: Vec<u32> = model.keys().copied().collect();
                    match rand(10) {
                        0..=4 => {
                            let a = e(next_id, &format!("a{next_id}"), 'n');
                            next_id += 1;
                            model.insert(a.id, a.clone());
                            batch.push(AgentChange::Added(a));
                        }
                        5..=7 if !ids.is_empty() => {
                            let id = ids[rand(ids.len() as u64) as usize];
                            model.remove(&id);
                            batch.push(AgentChange::Removed { id });
                        }
                        8 if !ids.is_empty() => {
                            let id = ids[rand(ids.len() as u64) as usize];
                            let a = e(id, &format!("a{id}"), (b'a' + rand(26) as u8) as char);
                            model.insert(id, a.clone());
                            batch.push(AgentChange::Added(a));
                        }
                        _ if !ids.is_empty() => {
                            let id = ids[rand(ids.len() as u64) as usize];
                            batch.push(AgentChange::GroupsChanged { id, groups: vec!["linux".into()] });
                        }
                        _ => {}
                    }
                }
                keys.apply(&batch).unwrap();
                let mut read = parse(&read(dir.path())).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                read.sort_by_key(|a| a.id);
                let want: Vec<AgentEntry> = model.values().cloned().collect();
                assert_eq!(render(&read), render(&want), "seed {seed}");
                assert_eq!(keys.live(), model.len() as u64);
            }
            keys.compact().unwrap();
            let text = read(dir.path());
            assert!(!text.lines().any(|l| l.starts_with('#')), "seed {seed}: compaction leaves no dead line");
            let mut read = parse(&text).unwrap();
            read.sort_by_key(|a| a.id);
            assert_eq!(render(&read), render(&model.values().cloned().collect::<Vec<_>>()), "seed {seed}");
        }
    }

    #[test]
    fn the_reader_refuses_what_wazuh_would_not_read() {
        assert!(parse("001 a any k\n001 b any k\n").is_err(), "an id twice");
        assert!(parse("001 a any k\n002 a any k\n").is_err(), "a name twice");
        assert!(parse("001 a any\n").is_err(), "three fields");
        assert!(parse("x01 a any k\n").is_err(), "a bad id");
        assert_eq!(parse("#01 a any k\n 02 b any k\n\n003 c any k\n").unwrap().len(), 1);
    }

    #[test]
    fn compaction_drops_dead_lines_and_keeps_the_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<AgentEntry> = (1..=3000).map(|i| e(i, &format!("a{i}"), 'k')).collect();
        let mut keys = ClientKeys::create(dir.path(), &all).unwrap();
        let removed: Vec<AgentChange> = (1..=2000).map(|id| AgentChange::Removed { id }).collect();
        keys.apply(&removed).unwrap();
        assert_eq!(keys.compactions, 1);
        let text = read(dir.path());
        assert!(!text.contains('#'));
        assert_eq!(text, render(&all[2000..]));
        keys.apply(&[AgentChange::Removed { id: 2500 }, AgentChange::Added(e(3001, "a3001", 'n'))]).unwrap();
        let parsed = parse(&read(dir.path())).unwrap();
        assert_eq!(parsed.len(), 1000);
        assert!(parsed.iter().all(|p| p.id != 2500));
    }

    #[test]
    fn a_file_someone_else_changed_is_found_at_the_next_write_and_written_whole_again() {
        use super::super::derived::Derived;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut all = vec![e(1, "web", 'a'), e(2, "db", 'b')];
        let mut derived = Derived::open(d, &all).unwrap();
        // Its own writes (an append, a removal inside the compared tail) keep it intact.
        derived.record(AgentChange::Added(e(3, "mail", 'c')));
        derived.record(AgentChange::Removed { id: 3 });
        derived.record(AgentChange::Added(e(4, "dns", 'd')));
        all.push(e(4, "dns", 'd'));
        assert_eq!(derived.committed(d, || Ok(all.clone())).unwrap(), None);
        derived.record(AgentChange::Removed { id: 4 });
        all.pop();
        assert_eq!(derived.committed(d, || Ok(all.clone())).unwrap(), None);
        assert!(derived.client_keys().check().is_ok());
        let path = d.join("etc/client.keys");
        let live = |text: &str| parse(text).unwrap().into_iter().map(|a| a.id).collect::<Vec<_>>();

        // Truncated by hand: the next enrollment does not write at its old offset (a hole of NUL
        // bytes before it) but the whole file again.
        std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        assert!(derived.client_keys().check().unwrap_err().to_string().contains("0 bytes where this node wrote"));
        derived.record(AgentChange::Added(e(5, "ntp", 'e')));
        all.push(e(5, "ntp", 'e'));
        let why = derived.committed(d, || Ok(all.clone())).unwrap().expect("repaired");
        assert!(why.contains("written again whole"), "{why}");
        let text = read(d);
        assert!(!text.contains('\0'));
        assert_eq!((text.clone(), live(&text)), (render(&all), vec![1, 2, 5]));

        // Appended to, edited at its end, replaced by another file, removed: each found.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"099 intruder any k\n").unwrap();
        assert!(derived.client_keys().check().unwrap_err().to_string().contains("bytes where"));
        assert!(derived.repair(d, || Ok(all.clone())).unwrap().is_some());
        assert_eq!(read(d), render(&all));
        let mut edited = read(d).into_bytes();
        let n = edited.len();
        edited[n - 2] = b'X';
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
            &edited[n - 2..n - 1],
            n as u64 - 2,
        )
        .unwrap();
        assert!(derived.client_keys().check().unwrap_err().to_string().contains("other bytes"));
        derived.repair(d, || Ok(all.clone())).unwrap();
        std::fs::write(d.join("etc/other"), render(&all)).unwrap();
        std::fs::rename(d.join("etc/other"), &path).unwrap();
        assert!(derived.client_keys().check().unwrap_err().to_string().contains("replaced"));
        derived.repair(d, || Ok(all.clone())).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(derived.client_keys().check().unwrap_err().to_string().contains("removed"));
        derived.repair(d, || Ok(all.clone())).unwrap();
        assert!(derived.client_keys().check().is_ok());
        assert_eq!(read(d), render(&all));
        // Intact: nothing to do.
        assert_eq!(derived.repair(d, || Ok(all.clone())).unwrap(), None);
    }
}
