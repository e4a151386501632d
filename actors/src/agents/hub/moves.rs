//! Moving agents off this node: a drain when it stops ([`Drain`]) and the master's rebalancing
//! moves ([`SendAway`]).

use super::AgentHub;
use crate::agents::messages::{Drain, Drained, RefuseFor, SendAway};
use actix::prelude::*;
use log::info;
use std::time::Instant;

impl AgentHub {
    /// Whether agent `id` was moved away and is still refused here (forgetting it once not).
    pub(super) fn sent_away(&mut self, id: u32) -> bool {
        match self.away.get(&id) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                self.away.remove(&id);
                false
            }
            None => false,
        }
    }
}

impl Handler<RefuseFor> for AgentHub {
    type Result = ();

    fn handle(&mut self, RefuseFor { ids, away }: RefuseFor, _: &mut Context<Self>) {
        let now = Instant::now();
        self.away.retain(|_, until| *until > now);
        for id in ids {
            if !self.live.contains_key(&id) {
                self.away.insert(id, now + away);
            }
        }
    }
}

impl Handler<SendAway> for AgentHub {
    type Result = Vec<u32>;

    fn handle(&mut self, SendAway { messages, away }: SendAway, _: &mut Context<Self>) -> Vec<u32> {
        let now = Instant::now();
        self.away.retain(|_, until| *until > now);
        let mut sent = Vec::new();
        for (id, message) in messages {
            if self.live.get(&id).is_some_and(|live| live.tx.push(vec![message])) {
                self.away.insert(id, now + away);
                sent.push(id);
            }
        }
        if !sent.is_empty() {
            info!(node = self.node(); "moving {} agents to other nodes to balance the cluster; each is refused here for {} s", sent.len(), away.as_secs());
        }
        sent
    }
}

/// How often a drain asks the next agents and checks whether they are gone.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(100);

impl Handler<Drain> for AgentHub {
    type Result = ResponseFuture<Drained>;

    fn handle(&mut self, Drain { rate, deadline }: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut reply = Some(reply);
        let started = std::time::Instant::now();
        // A tenth of the rate each tick, carrying the remainder over (5 a second is one each 200 ms).
        let per_tick = f64::from(rate.max(1)) * DRAIN_TICK.as_secs_f64();
        let mut owed = 0.0f64;
        let mut asked: std::collections::HashSet<u32> = std::collections::HashSet::new();
        info!(node = self.node(); "draining: asking {} agents to reconnect elsewhere, {rate} a second, for {} s at most", self.live.len(), deadline.as_secs_f64());
        let tick = move |hub: &mut AgentHub, ctx: &mut Context<AgentHub>| {
            let done = hub.live.is_empty() || started.elapsed() >= deadline;
            if done {
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Drained { asked: asked.len(), left: hub.live.len(), took: started.elapsed() });
                }
                if let Some(h) = hub.drain.take() {
                    ctx.cancel_future(h);
                }
                return;
            }
            owed += per_tick;
            let mut n = owed as usize;
            owed -= n as f64;
            for (id, live) in &hub.live {
                if n == 0 {
                    break;
                }
                if !asked.contains(id) && live.tx.push(vec![b"#!-force_reconnect".to_vec()]) {
                    asked.insert(*id);
                    n -= 1;
                }
            }
        };
        self.drain = Some(ctx.run_interval(DRAIN_TICK, tick));
        Box::pin(async move { answer.await.unwrap_or_default() })
    }
}
