//! `WorkerLink`: a worker's link to the master. Dials, runs the connection, and when it is lost
//! redials with exponential back-off and jitter (first retry within `reconnect_min`, then doubling
//! up to `reconnect_max`). It never gives up and never waits on a dead socket: a dial has the
//! handshake deadline, and a connection silent for three keep-alive intervals is closed.

use crate::connection::{
    Abort, Close, ConnectionActor, ConnectionClosed, ConnectionInfo, GetInfo, InjectJobFault, WorkerSide,
};
use crate::link::{self, LinkError};
use crate::registry::Replica;
use crate::settings::ChannelSettings;
use crate::store_thread::StoreHandle;
use actix::prelude::*;
use log::{error, info, warn};
use std::sync::Arc;
use std::time::Duration;
use wazuh_cluster_protocol::message::{
    AdminRequest, AdminResult, EnrollForward, EnrollResolve, EnrollResult, MessageName,
};
use wazuh_cluster_protocol::{MasterToWorker, WorkerToMaster};

/// What a worker lends its connection: the agent replica and (when it serves agents) its agent hub.
#[derive(Clone)]
pub struct WorkerServices {
    pub replica: StoreHandle<Replica>,
    pub agents: Option<Addr<crate::agents::hub::AgentHub>>,
}

pub struct WorkerLink {
    settings: Arc<ChannelSettings>,
    services: WorkerServices,
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
    pub fn new(settings: Arc<ChannelSettings>, master: String, services: WorkerServices) -> Self {
        Self { settings, services, master, conn: None, failures: 0, stopping: false }
    }

    /// Sends every enrollment outcome the master has not acknowledged yet.
    fn flush_outbox(&mut self, ctx: &mut Context<Self>) {
        let Some(conn) = self.conn.clone() else { return };
        let replica = self.services.replica.clone();
        let node = self.settings.node_name.clone();
        let fut = async move {
            let pending = replica.run(|r| r.outbox()).await.unwrap_or_default();
            for (token, delivered) in pending {
                let body = WorkerToMaster::EnrollResolve(EnrollResolve { token: token.clone(), delivered });
                match crate::jobs::call(conn.clone(), body).await {
                    Ok(MasterToWorker::EnrollResolved(_)) => {
                        let t = token.clone();
                        let _ = replica.run(move |r| r.outbox_done(&t)).await;
                    }
                    other => {
                        warn!(node = node.as_str(); "enrollment outcome {token} not acknowledged yet: {:?}", other.err());
                        return;
                    }
                }
            }
        };
        ctx.spawn(fut.into_actor(self));
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
                    let services = act.services.clone();
                    act.conn =
                        Some(ConnectionActor::<WorkerSide>::start(link, act.settings.clone(), services, Some(owner)));
                    act.flush_outbox(ctx);
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

/// Forwards an enrollment to the master; fails at once when there is no connection.
#[derive(Message)]
#[rtype(result = "Result<EnrollResult, String>")]
pub struct Forward(pub EnrollForward);

/// Tells the master whether an agent got its key; kept in the outbox until acknowledged.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resolve {
    pub token: String,
    pub delivered: bool,
}

/// Forwards an agent/group change to the master.
#[derive(Message)]
#[rtype(result = "Result<AdminResult, String>")]
pub struct ForwardAdmin(pub AdminRequest);

impl Handler<ForwardAdmin> for WorkerLink {
    type Result = ResponseFuture<Result<AdminResult, String>>;

    fn handle(&mut self, ForwardAdmin(request): ForwardAdmin, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        Box::pin(async move {
            let conn = conn.ok_or_else(|| "not connected to the master".to_string())?;
            match crate::jobs::call(conn, WorkerToMaster::Admin(request)).await? {
                MasterToWorker::AdminResult(result) => Ok(result),
                other => Err(format!("unexpected answer {}", other.name())),
            }
        })
    }
}

impl Handler<Forward> for WorkerLink {
    type Result = ResponseFuture<Result<EnrollResult, String>>;

    fn handle(&mut self, Forward(request): Forward, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        Box::pin(async move {
            let conn = conn.ok_or_else(|| "not connected to the master".to_string())?;
            match crate::jobs::call(conn, WorkerToMaster::Enroll(request)).await? {
                MasterToWorker::EnrollResult(result) => Ok(result),
                other => Err(format!("unexpected answer {}", other.name())),
            }
        })
    }
}

impl Handler<Resolve> for WorkerLink {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Resolve, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        let replica = self.services.replica.clone();
        let node = self.settings.node_name.clone();
        Box::pin(async move {
            let token = msg.token.clone();
            // Durable first: if the master does not hear it now, it hears it after the next connect.
            if let Err(e) = replica.run(move |r| r.outbox_put(&token, msg.delivered)).await {
                warn!(node = node.as_str(); "cannot record enrollment outcome {}: {e}", msg.token);
            }
            let Some(conn) = conn else { return };
            let body =
                WorkerToMaster::EnrollResolve(EnrollResolve { token: msg.token.clone(), delivered: msg.delivered });
            if let Ok(MasterToWorker::EnrollResolved(_)) = crate::jobs::call(conn, body).await {
                let token = msg.token;
                let _ = replica.run(move |r| r.outbox_done(&token)).await;
            }
        })
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
