//! The last message counters of each agent, kept by the node (`agents.enforce_counters`).
//!
//! Every encrypted agent message carries a global counter (raised at each agent start) and a local
//! one (raised at each message). Wazuh's remoted keeps the last pair of each agent in
//! `queue/rids/<id>` (`global:local:`) and, when told to verify them, refuses a message whose pair
//! is not after it: a message captured on the wire and sent again, on any connection and after a
//! restart of the manager, is refused. Here the pairs live in memory, per agent and shared by every
//! connection of the node, and are written to the same files every [`FLUSH_EVERY`] (and at a clean
//! stop), so that they survive restarts. A crash loses at most the pairs of that last interval: a
//! message from then could be replayed once, until the agent's next message moves its pair on.
//! A deleted (or re-keyed) agent's pair is forgotten with it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How often changed pairs are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Where Wazuh keeps them, under the node's data directory.
pub const RIDS_DIR: &str = "queue/rids";

/// A message whose counters are not after the agent's last ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    pub last_global: u32,
    pub last_local: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    global: u32,
    local: u32,
}

pub struct AgentCounters {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pairs: HashMap<u32, Pair>,
    /// Changed since the last flush.
    dirty: HashSet<u32>,
    /// Forgotten since the last flush (their files go).
    forgotten: HashSet<u32>,
}

impl AgentCounters {
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join(RIDS_DIR), state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(crate::registry::fmt_id(id))
    }

    /// The pair written for agent `id`, if there is a readable one.
    fn stored(&self, id: u32) -> Option<Pair> {
        let text = std::fs::read_to_string(self.path(id)).ok()?;
        let mut parts = text.trim().split(':');
        let global = parts.next()?.trim().parse().ok()?;
        let local = parts.next()?.trim().parse().ok()?;
        Some(Pair { global, local })
    }

    /// Records `(global, local)` for agent `id` if it comes after the agent's last pair (or the
    /// agent has none yet); otherwise leaves it and says what the last pair is.
    pub fn advance(&self, id: u32, global: u32, local: u32) -> Result<(), Stale> {
        let mut state = self.state();
        let last = match state.pairs.get(&id) {
            Some(p) => Some(*p),
            // First message since start: the pair written before, if any (one small read per
            // agent per start of the node).
            None if !state.forgotten.contains(&id) => self.stored(id),
            None => None,
        };
        if let Some(last) = last {
            if global < last.global || (global == last.global && local <= last.local) {
                state.pairs.insert(id, last);
                return Err(Stale { last_global: last.global, last_local: last.local });
            }
        }
        state.pairs.insert(id, Pair { global, local });
        state.dirty.insert(id);
        Ok(())
    }

    /// Agent `id` was deleted or given another key: its pair goes (and its file at the next flush).
    pub(crate) fn forget(&self, id: u32) {
        let mut state = self.state();
        state.pairs.remove(&id);
        state.dirty.remove(&id);
        state.forgotten.insert(id);
    }

    /// Writes the pairs changed since the last call (each file replaced whole: `global:local:`, as
    /// Wazuh writes them) and removes the files of forgotten agents. Returns how many it wrote.
    pub fn flush(&self) -> std::io::Result<usize> {
        let (write, remove) = {
            let mut state = self.state();
            let dirty = std::mem::take(&mut state.dirty);
            let write: Vec<(u32, Pair)> =
                dirty.into_iter().filter_map(|id| state.pairs.get(&id).map(|p| (id, *p))).collect();
            (write, std::mem::take(&mut state.forgotten))
        };
        if write.is_empty() && remove.is_empty() {
            return Ok(0);
        }
        std::fs::create_dir_all(&self.dir)?;
        for id in &remove {
            match std::fs::remove_file(self.path(*id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        for (id, pair) in &write {
            let path = self.path(*id);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{}:{}:", pair.global, pair.local))?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(write.len())
    }

    /// Agents whose pair is held in memory.
    pub fn held(&self) -> usize {
        self.state().pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_not_after_the_last_is_refused_across_restarts_until_the_agent_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let c = AgentCounters::new(dir.path());
        assert_eq!(c.advance(7, 1_000, 5), Ok(()));
        assert_eq!(c.advance(7, 1_000, 6), Ok(()));
        assert_eq!(c.advance(7, 1_000, 6), Err(Stale { last_global: 1_000, last_local: 6 }), "the same again");
        assert_eq!(c.advance(7, 999, 9_000), Err(Stale { last_global: 1_000, last_local: 6 }), "an older start");
        assert_eq!(c.advance(7, 1_001, 0), Ok(()), "the agent restarted");
        assert_eq!(c.advance(8, 5, 5), Ok(()), "another agent has its own");
        assert_eq!(c.flush().unwrap(), 2);
        assert_eq!(std::fs::read_to_string(dir.path().join("queue/rids/007")).unwrap(), "1001:0:");
        assert_eq!(c.flush().unwrap(), 0, "nothing changed since");
        // A node started again reads what was written.
        let again = AgentCounters::new(dir.path());
        assert_eq!(again.advance(7, 1_001, 0), Err(Stale { last_global: 1_001, last_local: 0 }));
        assert_eq!(again.advance(7, 1_001, 1), Ok(()));
        // Deleted: forgotten, its file removed, and a new agent under that id starts afresh.
        again.forget(7);
        again.flush().unwrap();
        assert!(!dir.path().join("queue/rids/007").exists());
        assert_eq!(again.advance(7, 1, 1), Ok(()));
        // A file that does not parse counts as none.
        std::fs::write(dir.path().join("queue/rids/009"), "garbage").unwrap();
        assert_eq!(AgentCounters::new(dir.path()).advance(9, 0, 1), Ok(()));
    }
}
