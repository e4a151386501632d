//! The process's descriptor budget: who may hold how many of the node's open files.
//!
//! A node holds files and databases (its registry, the sync roots, logs), the cluster channel, the
//! API's connections, enrollments in progress (1515) and agent connections (1514). Strangers reach
//! the last two before they authenticate, so they must never take what the others need: at start a
//! node raises its open-file limit to the hard limit (or `node.max_open_files`) and splits it
//! ([`Budget::plan`]): a reserve for files and databases, the API's connections, the cluster's
//! handshakes and workers, a share for enrollment, and the rest for agent connections.
//!
//! The two stranger-facing listeners each hold a [`Pool`]: every accepted connection takes a place
//! for as long as it lives. When a pool is full, the oldest connection that has not authenticated
//! yet is closed to make room (a flood that holds connections open loses the oldest ones first; a
//! real agent that connects and speaks at once is never the oldest for long); when every place is
//! held by an authenticated connection, the new one is closed at once. Accept itself never fails
//! for want of a descriptor, and an agent that already connected never meets `EMFILE`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::rc::Rc;
use tokio::sync::Notify;
use wazuh_cluster_protocol::Role;

/// Descriptors kept for files, databases, the runtime and sync (measured: an idle master holds
/// about 40, a worker about 30; sync and parallel hashing open a few more at a time).
pub(crate) const RESERVED_FOR_FILES: u64 = 128;
/// A worker's cluster connections: its link to the master and a dial in progress.
const WORKER_CLUSTER: u64 = 16;
/// Places a pool may be over its capacity while the connections it closed to make room are
/// still closing (they close as soon as the accept loop yields to them).
pub(crate) const SLACK: usize = 64;
/// The smallest share of agent connections a node may run with.
pub(crate) const MIN_AGENTS: u64 = 64;

/// How a node's open-file limit is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The process's open-file limit (its soft `RLIMIT_NOFILE`).
    pub limit: u64,
    /// Kept for files, databases and the runtime, and each pool's slack.
    pub reserved: u64,
    /// API connections served at once.
    pub api: u64,
    /// Master: cluster handshakes in flight at once.
    pub handshakes: u64,
    /// Master: connected workers this budget keeps room for (a master takes more, with a warning).
    pub workers: u64,
    /// Enrollment connections (1515) at once.
    pub enrollment: u64,
    /// Agent connections (1514) at once, authenticated or not.
    pub agents: u64,
}

/// Why a limit cannot run a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an open-file limit of {limit} leaves {agents} for agent connections, fewer than {MIN_AGENTS}: raise the node's nofile limit (ulimit -n, LimitNOFILE=, ulimits.nofile) to at least {needed}")]
pub struct BudgetError {
    pub limit: u64,
    pub agents: u64,
    pub needed: u64,
}

impl Budget {
    /// Splits `limit` for a node of `role` whose API serves at most `api_max` connections: the
    /// reserve and the listeners' slack first, then the API (at most an eighth of the limit) and
    /// the cluster (a master: handshakes up to an eighth, and a sixty-fourth, at least 64, for its
    /// workers), then an eighth of what remains for enrollment (16 to 4,096), and the rest for
    /// agent connections.
    pub fn plan(limit: u64, role: Role, api_max: u64) -> Result<Budget, BudgetError> {
        let budget = Self::split(limit, role, api_max);
        if budget.agents >= MIN_AGENTS {
            return Ok(budget);
        }
        // The smallest limit that does (the split grows with the limit).
        let needed =
            (limit..).step_by(16).find(|l| Self::split(*l, role, api_max).agents >= MIN_AGENTS).unwrap_or(limit);
        Err(BudgetError { limit, agents: budget.agents, needed })
    }

    fn split(limit: u64, role: Role, api_max: u64) -> Budget {
        let reserved = RESERVED_FOR_FILES + 2 * SLACK as u64;
        let api = api_max.min((limit / 8).max(16));
        let (handshakes, workers) = match role {
            Role::Master => ((limit / 8).clamp(8, 256), (limit / 64).max(64)),
            Role::Worker => (0, 0),
        };
        let cluster = match role {
            Role::Master => handshakes + workers,
            Role::Worker => WORKER_CLUSTER,
        };
        let left = limit.saturating_sub(reserved + api + cluster);
        let enrollment = (left / 8).clamp(16, 4096).min(left);
        let agents = left - enrollment;
        Budget { limit, reserved, api, handshakes, workers, enrollment, agents }
    }

    /// One line for the log and `check-config`.
    pub fn describe(&self) -> String {
        let cluster = if self.handshakes > 0 {
            format!("{} cluster handshakes, {} workers", self.handshakes, self.workers)
        } else {
            format!("{WORKER_CLUSTER} for the cluster link")
        };
        format!(
            "open-file limit {}: {} agent connections, {} enrollments at once, {} API connections, {cluster}, {} kept for files and databases",
            self.limit, self.agents, self.enrollment, self.api, self.reserved
        )
    }
}

/// The process's open-file limit, raised to `want` (default: the hard limit) when it is lower,
/// and lowered to `want` when it is higher. Returns the limit in effect.
pub fn set_open_files(want: Option<u64>) -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let max = lim.maximum.unwrap_or(u64::MAX);
    let target = want.unwrap_or(max).min(max);
    if Some(target) != lim.current {
        setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: lim.maximum })?;
    }
    Ok(target)
}

/// The open-file limit now, without changing it.
pub fn open_files_limit() -> std::io::Result<(u64, u64)> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Ok((lim.current.unwrap_or(u64::MAX), lim.maximum.unwrap_or(u64::MAX)))
}

/// The places of one listener's connections. Lives on the thread that runs the listener's accept
/// loop and its connections' tasks (actix's arbiter): no lock.
#[derive(Clone)]
pub struct Pool(Rc<RefCell<PoolState>>);

struct PoolState {
    capacity: usize,
    max_per_address: u32,
    /// Connections alive (each holds a descriptor until its ticket drops).
    held: usize,
    /// Of those, told to close and not closed yet.
    closing: usize,
    /// Connections that have not authenticated, oldest first.
    pending: BTreeMap<u64, Rc<Eviction>>,
    /// Of those, per address.
    by_address: HashMap<IpAddr, u32>,
    next: u64,
    /// Connections closed to make room, since start.
    shed: u64,
}

/// How a pending connection is told to close.
#[derive(Default)]
struct Eviction {
    notify: Notify,
    evicted: Cell<bool>,
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPlace {
    /// Its address already holds `max_per_address` connections that did not authenticate.
    Address(u32),
    /// Every place is held by an authenticated connection (or closing ones fill the slack).
    Full(usize),
}

impl Pool {
    pub fn new(capacity: usize, max_per_address: u32) -> Pool {
        Pool(Rc::new(RefCell::new(PoolState {
            capacity: capacity.max(1),
            max_per_address: max_per_address.max(1),
            held: 0,
            closing: 0,
            pending: BTreeMap::new(),
            by_address: HashMap::new(),
            next: 0,
            shed: 0,
        })))
    }

    /// A place for a new connection from `ip`: when the pool is full, the oldest connection that
    /// has not authenticated is told to close (the caller should yield so that it does). The
    /// second value counts the connections told to close for this one.
    pub fn admit(&self, ip: IpAddr) -> Result<(Ticket, usize), NoPlace> {
        let ip = ip.to_canonical();
        let mut p = self.0.borrow_mut();
        let from = p.by_address.get(&ip).copied().unwrap_or(0);
        if from >= p.max_per_address {
            return Err(NoPlace::Address(p.max_per_address));
        }
        if p.held >= p.capacity + SLACK {
            return Err(NoPlace::Full(p.capacity));
        }
        let mut shed = 0;
        while p.held - p.closing >= p.capacity {
            let Some((_, oldest)) = p.pending.pop_first() else { return Err(NoPlace::Full(p.capacity)) };
            // (Its address count goes with it: it is no longer pending.)
            oldest.evicted.set(true);
            oldest.notify.notify_one();
            p.closing += 1;
            p.shed += 1;
            shed += 1;
        }
        let seq = p.next;
        p.next += 1;
        p.held += 1;
        let eviction = Rc::new(Eviction::default());
        p.pending.insert(seq, eviction.clone());
        *p.by_address.entry(ip).or_default() += 1;
        drop(p);
        Ok((Ticket { pool: self.clone(), seq, ip, authenticated: false, eviction }, shed))
    }

    /// Tells the oldest connection that has not authenticated to close (a descriptor is needed
    /// now: accept failed for want of one). Whether there was one.
    pub(crate) fn shed_oldest(&self) -> bool {
        let mut p = self.0.borrow_mut();
        let Some((_, oldest)) = p.pending.pop_first() else { return false };
        oldest.evicted.set(true);
        oldest.notify.notify_one();
        p.closing += 1;
        p.shed += 1;
        true
    }

    /// (connections alive, of which not authenticated, closed to make room since start)
    pub fn figures(&self) -> (usize, usize, u64) {
        let p = self.0.borrow();
        (p.held, p.pending.len(), p.shed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.0.borrow().capacity
    }
}

/// A connection's place in its pool, for as long as it lives.
pub struct Ticket {
    pool: Pool,
    seq: u64,
    ip: IpAddr,
    authenticated: bool,
    eviction: Rc<Eviction>,
}

impl Ticket {
    /// The connection proved who it is: it keeps its place and is never closed to make room.
    pub fn authenticated(&mut self) {
        if self.authenticated || self.eviction.evicted.get() {
            return;
        }
        self.authenticated = true;
        let mut p = self.pool.0.borrow_mut();
        p.pending.remove(&self.seq);
        forget_address(&mut p.by_address, self.ip);
    }

    /// Resolves when the pool tells this connection to close to make room.
    pub(crate) async fn evicted(&self) {
        if !self.eviction.evicted.get() {
            self.eviction.notify.notified().await;
        }
    }

    #[cfg(test)]
    pub(crate) fn is_evicted(&self) -> bool {
        self.eviction.evicted.get()
    }
}

fn forget_address(by_address: &mut HashMap<IpAddr, u32>, ip: IpAddr) {
    if let Some(n) = by_address.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            by_address.remove(&ip);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut p = self.pool.0.borrow_mut();
        p.held -= 1;
        if self.eviction.evicted.get() {
            p.closing -= 1;
            forget_address(&mut p.by_address, self.ip);
        } else if !self.authenticated {
            p.pending.remove(&self.seq);
            forget_address(&mut p.by_address, self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn plans_leave_the_reserve_and_give_agents_the_rest() {
        let w = Budget::plan(1024, Role::Worker, 256).unwrap();
        assert_eq!(w.api, 128, "an eighth of a small limit");
        assert_eq!(w.reserved + w.api + WORKER_CLUSTER + w.enrollment + w.agents, 1024);
        assert!(w.agents >= 500, "{w:?}");
        let m = Budget::plan(1024, Role::Master, 256).unwrap();
        assert_eq!((m.handshakes, m.workers), (128, 64));
        assert_eq!(m.reserved + m.api + m.handshakes + m.workers + m.enrollment + m.agents, 1024);
        let big = Budget::plan(20_000, Role::Worker, 256).unwrap();
        assert_eq!((big.api, big.enrollment), (256, 2_434));
        assert!(big.agents > 17_000, "{big:?}");
        let huge = Budget::plan(1 << 20, Role::Master, 256).unwrap();
        assert_eq!((huge.handshakes, huge.enrollment), (256, 4096));
        let err = Budget::plan(400, Role::Master, 256).unwrap_err();
        assert!(err.needed > 400 && Budget::plan(err.needed, Role::Master, 256).is_ok(), "{err}");
        assert!(err.to_string().contains("nofile"), "{err}");
    }

    #[test]
    fn a_full_pool_closes_its_oldest_unauthenticated_connection_first() {
        let pool = Pool::new(3, 100);
        let (mut a, _) = pool.admit(ip(1)).unwrap();
        let (b, _) = pool.admit(ip(2)).unwrap();
        let (c, _) = pool.admit(ip(3)).unwrap();
        a.authenticated();
        // Full: the oldest pending (b) is told to close; a, authenticated, never is.
        let (d, shed) = pool.admit(ip(4)).unwrap();
        assert_eq!(shed, 1);
        assert!(b.is_evicted() && !a.is_evicted() && !c.is_evicted() && !d.is_evicted());
        // While b is still closing, the next newcomer makes c close.
        let (e, shed) = pool.admit(ip(5)).unwrap();
        assert_eq!(shed, 1);
        assert!(c.is_evicted());
        drop((b, c));
        assert_eq!(pool.figures(), (3, 2, 2));
        // Only authenticated connections left: a newcomer is refused.
        let (mut d, mut e) = (d, e);
        d.authenticated();
        e.authenticated();
        assert_eq!(pool.admit(ip(6)).err(), Some(NoPlace::Full(3)));
        drop((a, d, e));
        assert_eq!(pool.figures(), (0, 0, 2));
    }

    #[test]
    fn an_address_holds_at_most_its_share_of_unauthenticated_connections() {
        let pool = Pool::new(100, 2);
        let (mut a, _) = pool.admit(ip(1)).unwrap();
        let _b = pool.admit(ip(1)).unwrap();
        assert_eq!(pool.admit(ip(1)).err(), Some(NoPlace::Address(2)));
        a.authenticated();
        let _c = pool.admit(ip(1)).expect("an authenticated connection no longer counts against its address");
        assert!(pool.admit(IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001])).is_err(), "mapped IPv6 is the same");
    }

    #[test]
    fn closing_connections_cannot_push_a_pool_past_its_slack() {
        let pool = Pool::new(4, 1_000);
        let mut held = Vec::new();
        for _ in 0..4 + SLACK {
            held.push(pool.admit(ip(1)).expect("within capacity and slack").0);
        }
        // Every earlier one is closing and none has closed yet: refused rather than over.
        assert_eq!(pool.admit(ip(1)).err(), Some(NoPlace::Full(4)));
        held.clear();
        assert!(pool.admit(ip(1)).is_ok());
    }

    #[tokio::test]
    async fn an_evicted_ticket_hears_it_even_when_it_was_told_before_it_listened() {
        let pool = Pool::new(1, 10);
        let (a, _) = pool.admit(ip(1)).unwrap();
        let _b = pool.admit(ip(2)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), a.evicted()).await.expect("told");
    }
}
