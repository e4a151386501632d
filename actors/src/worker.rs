//! `WorkerLink`: a worker's link to the master. Dials, runs the connection, and when it is lost
//! redials with exponential back-off and jitter (first retry within `reconnect_min`, then doubling
//! up to `reconnect_max`). It never gives up and never waits on a dead socket: a dial has the
//! handshake deadline, and a connection silent for three keep-alive intervals is closed.

use crate::connection::{
    Abort, Close, ConnectionActor, ConnectionClosed, ConnectionInfo, GetInfo, InjectJobFault, WorkerSide,
};
use crate::link::{self, LinkError};
use crate::settings::ChannelSettings;
use actix::prelude::*;
use log::{error, info, warn};
use std::sync::Arc;
use std::time::Duration;

pub struct WorkerLink {
    settings: Arc<ChannelSettings>,
    master: String,
    conn: Option<Addr<ConnectionActor<WorkerSide>>>,
    /// Failed attempts since the last established connection.
    failures: u32,
    stopping: bool,
}

/// The current connection, if any.
#[derive(Message)]
#[rtype(result = "Option<ConnectionInfo>")]
pub struct GetLink;

/// Drops the connection at once, without a goodbye, and stops (tests: a crashed worker).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill;

/// Makes a job of the connection fail `failures` times (chaos and test hook).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectFault {
    pub job: String,
    pub failures: u32,
}

/// Says goodbye to the master and stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub reason: String,
}

/// Delay before retry number `failures` (0-based): in `[base/2, base]` where
/// `base = min(min * 2^failures, max)`. The jitter keeps workers from redialling in lockstep.
pub fn backoff(failures: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
    let base = min.saturating_mul(factor).min(max);
    let half = base / 2;
    let spread = (base - half).as_micros() as u64;
    let jitter = if spread == 0 { 0 } else { random % (spread + 1) };
    half + Duration::from_micros(jitter)
}

impl WorkerLink {
    pub fn new(settings: Arc<ChannelSettings>, master: String) -> Self {
        Self { settings, master, conn: None, failures: 0, stopping: false }
    }

    fn node(&self) -> &str {
        &self.settings.node_name
    }

    fn dial(&mut self, ctx: &mut Context<Self>) {
        let settings = self.settings.clone();
        let master = self.master.clone();
        let fut = async move { link::dial(&master, &settings).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            if act.stopping {
                return;
            }
            match result {
                Ok(link) => {
                    act.failures = 0;
                    let owner = ctx.address().recipient();
                    act.conn = Some(ConnectionActor::<WorkerSide>::start(link, act.settings.clone(), (), Some(owner)));
                }
                Err(err) => {
                    act.log_failure(&err);
                    act.retry_later(ctx);
                }
            }
        }));
    }

    fn log_failure(&self, err: &LinkError) {
        if err.is_config_problem() {
            error!(node = self.node(); "master {} refused this worker: {err}", self.master);
        } else {
            warn!(node = self.node(); "cannot reach master {}: {err}", self.master);
        }
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>) {
        let delay =
            backoff(self.failures, self.settings.reconnect_min, self.settings.reconnect_max, crate::random_u64());
        self.failures = self.failures.saturating_add(1);
        info!(node = self.node(); "redialling master {} in {} ms", self.master, delay.as_millis());
        ctx.run_later(delay, |act, ctx| {
            if !act.stopping {
                act.dial(ctx)
            }
        });
    }
}

impl Actor for WorkerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(node = self.node(); "worker connecting to master {}", self.master);
        self.dial(ctx);
    }
}

impl Handler<ConnectionClosed> for WorkerLink {
    type Result = ();

    fn handle(&mut self, _: ConnectionClosed, ctx: &mut Context<Self>) {
        self.conn = None;
        if !self.stopping {
            self.retry_later(ctx);
        }
    }
}

impl Handler<GetLink> for WorkerLink {
    type Result = ResponseFuture<Option<ConnectionInfo>>;

    fn handle(&mut self, _: GetLink, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        Box::pin(async move {
            match conn {
                Some(conn) => conn.send(GetInfo).await.ok(),
                None => None,
            }
        })
    }
}

impl Handler<Shutdown> for WorkerLink {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) {
        self.stopping = true;
        if let Some(conn) = self.conn.take() {
            conn.do_send(Close { reason: msg.reason });
        }
        ctx.stop();
    }
}

impl Handler<Kill> for WorkerLink {
    type Result = ();

    fn handle(&mut self, _: Kill, ctx: &mut Context<Self>) {
        self.stopping = true;
        if let Some(conn) = self.conn.take() {
            conn.do_send(Abort);
        }
        ctx.stop();
    }
}

impl Handler<InjectFault> for WorkerLink {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        Box::pin(async move {
            match conn {
                Some(conn) => conn.send(InjectJobFault { job: msg.job, failures: msg.failures }).await.unwrap_or(false),
                None => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_small_doubles_and_is_capped() {
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(10));
        for r in [0, 1, 12345, u64::MAX] {
            let first = backoff(0, min, max, r);
            assert!(first <= min && first >= min / 2, "{first:?}");
            let third = backoff(2, min, max, r);
            assert!(third <= Duration::from_secs(1) && third >= Duration::from_millis(500));
            for n in [10, 31, 32, 1000, u32::MAX] {
                let late = backoff(n, min, max, r);
                assert!(late <= max && late >= max / 2, "{n}: {late:?}");
            }
        }
        assert_ne!(backoff(3, min, max, 1), backoff(3, min, max, 999_999));
    }
}
