//! Rebalancing agents across workers. Every `every`, the master (the leader, with several masters)
//! reads the active agents per connected worker from its counters. A worker holding more than
//! `share` above the mean for two checks in a row is asked to move its excess down to the mean: the
//! master picks the agents whose move costs least (those that already have their groups'
//! configuration, so no `merged.mg` follows them), releases their claims, and has the worker send
//! them `#!-force_reconnect` and refuse them for `away` (so that an agent with a server list, which
//! reconnects to the same server first, goes on to its next one). At most `max_per_second` moves a
//! second in all, in one batch per check. Nothing moves while agents are on the move by themselves
//! (the number of active agents changed since the last check: a failover, a drain, agents
//! arriving), nor on a master that does not lead.

use super::MasterListener;
pub use crate::settings::{RebalanceMode, RebalanceSettings};
use actix::prelude::*;
use log::{info, warn};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The distribution as the master last saw it (`GET /cluster/balance`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BalanceView {
    pub mode: RebalanceMode,
    /// `off`, `balanced`, `moving` (a batch went out at the last check), `settling` (agents are
    /// on the move by themselves: nothing is moved), `following` (this master does not lead).
    pub state: String,
    /// Active agents per connected worker.
    pub workers: BTreeMap<String, u64>,
    pub mean: f64,
    /// Workers being brought down to the mean.
    pub over: Vec<String>,
    /// Agents asked to move since the node started (would have been, in dry-run mode).
    pub moves: u64,
    pub batches: u64,
    /// When the last batch went out (epoch ms; 0: never).
    pub last_batch_at_ms: u64,
}

/// What the rebalancer carries from one check to the next.
#[derive(Default)]
pub(super) struct BalanceState {
    /// Consecutive checks each worker was found over.
    over_for: HashMap<String, u32>,
    /// Workers being brought down to the mean (until they are near it).
    moving: HashSet<String>,
    /// Active agents in all at the last check.
    last_total: Option<u64>,
    /// The totals of the last checks (the highest is the number the mean is taken from: agents
    /// moved by the last batch are on their way to another worker, not gone).
    recent: std::collections::VecDeque<u64>,
    /// Agents the last batch moved that may not have reported from their new worker yet.
    in_transit: u64,
    pub(super) view: BalanceView,
    pub(super) busy: bool,
}

/// How many agents each worker should move now: those over `share` above `mean`, or already being
/// brought down (`moving`) and still above a quarter of `share`, down to the mean; and when a worker
/// is more than `share` below the mean (one that joined) and those over it do not make up for it, the
/// rest from every worker above the mean, in proportion to what each holds above it. At most
/// `budget` in all, shared in proportion.
pub(crate) fn plan(
    active: &BTreeMap<String, u64>,
    mean: f64,
    share: f64,
    moving: &HashSet<String>,
    budget: u64,
) -> Vec<(String, u64)> {
    if active.len() < 2 || budget == 0 {
        return Vec::new();
    }
    let target = mean.ceil() as u64;
    let mut take: BTreeMap<String, u64> = active
        .iter()
        .filter(|(node, &n)| {
            let over = n as f64 > mean * (1.0 + share);
            let still = moving.contains(*node) && n as f64 > mean + (mean * share / 4.0).max(1.0);
            over || still
        })
        .map(|(node, &n)| (node.clone(), n.saturating_sub(target)))
        .filter(|(_, e)| *e > 0)
        .collect();
    // Workers far below the mean (one that joined among many) are filled from those above it.
    let deficit: u64 = active
        .values()
        .filter(|&&n| (n as f64) < mean * (1.0 - share))
        .map(|&n| (mean.floor() as u64).saturating_sub(n))
        .sum();
    let covered: u64 = take.values().sum();
    if deficit > covered {
        let above: Vec<(&String, u64)> = active
            .iter()
            .map(|(node, &n)| (node, n.saturating_sub(target).saturating_sub(take.get(node).copied().unwrap_or(0))))
            .filter(|(_, a)| *a > 0)
            .collect();
        let pool: u64 = above.iter().map(|(_, a)| a).sum();
        let rest = deficit - covered;
        for (node, a) in above {
            let share_of_rest = ((rest as u128 * a as u128).div_ceil(pool.max(1) as u128)) as u64;
            *take.entry(node.clone()).or_default() += a.min(share_of_rest);
        }
    }
    let all: u64 = take.values().sum();
    if all <= budget {
        return take.into_iter().filter(|(_, n)| *n > 0).collect();
    }
    take.into_iter()
        .filter(|(_, e)| *e > 0)
        .map(|(node, e)| (node, ((e as u128 * budget as u128) / all as u128).max(1) as u64))
        .collect()
}

impl MasterListener {
    /// One check of the distribution (see the module's documentation).
    pub(super) fn rebalance(&mut self, ctx: &mut Context<Self>) {
        let rs = self.settings.rebalance;
        if rs.mode == RebalanceMode::Off || self.balance.busy {
            return;
        }
        if let Some(raft) = self.services.writes.raft() {
            if crate::consensus::writes::leadership(raft).is_err() {
                self.balance.view.state = "following".into();
                return;
            }
        }
        // Workers that can be asked to move agents (protocol 2.4).
        let workers: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.version >= wazuh_cluster_protocol::version::API_CALLS && !w.handle.is_closed())
            .map(|(name, _)| name.clone())
            .collect();
        let mut state = std::mem::take(&mut self.balance);
        state.busy = true;
        self.balance.busy = true;
        let registry = self.services.registry.clone();
        let me = ctx.address();
        let node = self.settings.node_name.clone();
        let check = async move {
            let summary = match registry.run(|r| Ok(r.status_summary())).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(node = node.as_str(); "rebalance: cannot read the agents per node: {e}");
                    return state;
                }
            };
            let active: BTreeMap<String, u64> = workers
                .iter()
                .map(|w| (w.clone(), summary.nodes.get(w).and_then(|s| s.get("active")).copied().unwrap_or(0)))
                .collect();
            let total: u64 = active.values().sum();
            // The agents to spread: the most seen in the last checks (those the last batch moved
            // are on their way, not gone).
            let high = state.recent.iter().copied().chain([total]).max().unwrap_or(total);
            let tolerance = (high / 100).max(2);
            // Steady: no more agents than before, and no fewer than the ones on their way explain
            // (a failover, a drain or arriving agents change the total by themselves).
            let steady = state.last_total.is_some_and(|last| total <= last + tolerance)
                && total + state.in_transit + tolerance >= high;
            if total + tolerance >= high {
                state.in_transit = 0;
            }
            state.last_total = Some(total);
            state.recent.push_back(total);
            while state.recent.len() > 3 {
                state.recent.pop_front();
            }
            let mean = if active.is_empty() { 0.0 } else { high as f64 / active.len() as f64 };
            state.view.workers = active.clone();
            state.view.mean = mean;
            if !steady {
                state.over_for.clear();
                state.view.state = "settling".into();
                return state;
            }
            // Over for two checks in a row, or already being brought down.
            let over_now: HashSet<String> =
                plan(&active, mean, rs.share, &HashSet::new(), u64::MAX).into_iter().map(|(n, _)| n).collect();
            state.over_for.retain(|n, _| over_now.contains(n));
            for n in &over_now {
                *state.over_for.entry(n.clone()).or_default() += 1;
            }
            let sustained: HashSet<String> =
                state.over_for.iter().filter(|(_, &c)| c >= 2).map(|(n, _)| n.clone()).collect();
            let candidates: HashSet<String> = state.moving.union(&sustained).cloned().collect();
            let budget = (f64::from(rs.max_per_second) * rs.every.as_secs_f64()).round() as u64;
            let batch: Vec<(String, u64)> = plan(&active, mean, rs.share, &candidates, budget)
                .into_iter()
                .filter(|(n, _)| candidates.contains(n))
                .collect();
            state.moving = batch.iter().map(|(n, _)| n.clone()).collect();
            state.view.over = batch.iter().map(|(n, _)| n.clone()).collect();
            if batch.is_empty() {
                state.view.state = "balanced".into();
                return state;
            }
            let mut moved = 0u64;
            let mut said = Vec::new();
            let mut picked_all: Vec<(String, Vec<u32>)> = Vec::new();
            for (worker, n) in &batch {
                let (from, want) = (worker.clone(), *n);
                let picked = registry
                    .run(move |r| {
                        let ids = r.movable(&from, want as usize)?;
                        if rs.mode == RebalanceMode::On {
                            r.release_claims(Some(&from), &ids, crate::clock::now_ms());
                        }
                        Ok(ids)
                    })
                    .await;
                match picked {
                    Ok(ids) => picked_all.push((worker.clone(), ids)),
                    Err(e) => warn!(node = node.as_str(); "rebalance: cannot pick agents of {worker} to move: {e}"),
                }
            }
            // Workers far below the mean (one that joined) are to get what moves: every other
            // worker refuses the moved agents for a while too, so that an agent whose next server
            // (or a balancer's next pick) is another busy worker goes on to one of them.
            let targets: HashSet<&String> =
                active.iter().filter(|(_, &n)| (n as f64) < mean * (1.0 - rs.share)).map(|(w, _)| w).collect();
            let targets = if rs.steer { targets } else { HashSet::new() };
            if rs.mode == RebalanceMode::On && !targets.is_empty() {
                let all: Vec<u32> = picked_all.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
                for w in active.keys().filter(|w| !targets.contains(w)) {
                    let order = super::CommandAgents {
                        node: w.clone(),
                        messages: Vec::new(),
                        away: Some(rs.away),
                        refuse: all.clone(),
                    };
                    match me.send(order).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(node = node.as_str(); "rebalance: {e}"),
                        Err(_) => return state,
                    }
                }
            }
            for (worker, ids) in picked_all {
                let holds = active.get(&worker).copied().unwrap_or(0);
                if rs.mode == RebalanceMode::DryRun {
                    moved += ids.len() as u64;
                    said.push(format!("{worker} ({holds} active) would move {}", ids.len()));
                    continue;
                }
                let messages = ids.iter().map(|&id| (id, "#!-force_reconnect".to_string())).collect();
                let order =
                    super::CommandAgents { node: worker.clone(), messages, away: Some(rs.away), refuse: Vec::new() };
                match me.send(order).await {
                    Ok(Ok(sent)) => {
                        moved += sent.len() as u64;
                        said.push(format!("{worker} ({holds} active) moves {}", sent.len()));
                    }
                    Ok(Err(e)) => warn!(node = node.as_str(); "rebalance: {e}"),
                    Err(_) => return state,
                }
            }
            if !targets.is_empty() && rs.mode == RebalanceMode::On {
                let mut to: Vec<&str> = targets.iter().map(|t| t.as_str()).collect();
                to.sort_unstable();
                said.push(format!("steered to {} (the others refuse the moved agents)", to.join(", ")));
            }
            state.view.moves += moved;
            if rs.mode == RebalanceMode::On {
                state.in_transit = moved;
            }
            state.view.batches += 1;
            state.view.last_batch_at_ms = crate::clock::now_ms();
            state.view.state = "moving".into();
            info!(node = node.as_str(); "rebalance{}: mean {mean:.0} active agents per worker; {}", if rs.mode == RebalanceMode::DryRun { " (dry run)" } else { "" }, said.join(", "));
            state
        };
        ctx.spawn(check.into_actor(self).map(|mut state, act, _| {
            state.busy = false;
            state.view.mode = act.settings.rebalance.mode;
            act.balance = state;
        }));
    }

    /// The distribution now: the view of the last check, with the connected workers.
    pub(super) fn balance_view(&self) -> BalanceView {
        let mut view = self.balance.view.clone();
        view.mode = self.settings.rebalance.mode;
        if view.mode == RebalanceMode::Off {
            view.state = "off".into();
        }
        view.workers.retain(|w, _| self.workers.contains_key(w));
        for w in self.workers.keys() {
            view.workers.entry(w.clone()).or_insert(0);
        }
        view
    }
}

/// The distribution of agents over the workers, as the rebalancer sees it.
#[derive(Message)]
#[rtype(result = "BalanceView")]
pub struct GetBalance;

impl Handler<GetBalance> for MasterListener {
    type Result = MessageResult<GetBalance>;

    fn handle(&mut self, _: GetBalance, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.balance_view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn the_excess_above_the_mean_moves_within_the_budget() {
        let none = HashSet::new();
        let mean = 2000.0 / 3.0;
        // 2,000 on two workers, a third joins: each old one is 333 over the mean of 667.
        let a = counts(&[("w1", 1000), ("w2", 1000), ("w3", 0)]);
        assert_eq!(plan(&a, mean, 0.2, &none, 10_000), [("w1".into(), 333), ("w2".into(), 333)]);
        // A budget of 250 is shared in proportion.
        assert_eq!(plan(&a, mean, 0.2, &none, 250), [("w1".into(), 125), ("w2".into(), 125)]);
        // Within the share: nothing.
        assert!(plan(&counts(&[("w1", 790), ("w2", 610), ("w3", 600)]), mean, 0.2, &none, 250).is_empty());
        // Being brought down, it goes on to near the mean (here with agents on their way: the
        // mean is the one given, not this snapshot's).
        let moving: HashSet<String> = ["w1".to_string()].into();
        let b = counts(&[("w1", 760), ("w2", 620), ("w3", 500)]);
        assert_eq!(plan(&b, mean, 0.2, &moving, 250), [("w1".into(), 93)]);
        assert!(plan(&counts(&[("w1", 690), ("w2", 655), ("w3", 655)]), mean, 0.2, &moving, 250).is_empty());
        // A worker joins 24 that each hold a little above the mean: none is over, yet the newcomer
        // is filled from all of them, each giving what it holds above the mean.
        let mut many: Vec<(String, u64)> = (1..=24).map(|i| (format!("w{i:02}"), 2083)).collect();
        many.push(("w25".into(), 0));
        let many: BTreeMap<String, u64> = many.into_iter().collect();
        let moves = plan(&many, 2000.0, 0.2, &none, 100_000);
        assert_eq!(moves.len(), 24, "{moves:?}");
        assert!(moves.iter().all(|(n, m)| n != "w25" && *m == 83), "{moves:?}");
        // One worker, or no budget: nothing.
        assert!(plan(&counts(&[("w1", 1000)]), 1000.0, 0.2, &none, 250).is_empty());
        assert!(plan(&a, mean, 0.2, &none, 0).is_empty());
    }
}
