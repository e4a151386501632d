//! AgentGroupsSend, worker end: keeps the worker's agent replica (keys and groups) in step with
//! the master. A request server: it applies each update the master pushes in one transaction and
//! answers with its new position and hash; a delta that does not start at its position is not
//! applied, and the answer (its old position) makes the master send a snapshot. An update that
//! cannot be applied (a full disk) is answered with an error; the master backs off and retries.
//! Its position is told to the master once per connection (see [`tell_position`]).

use crate::connection::{ConnHandle, LocalFuture, WorkerSide};
use crate::jobs::runtime::{Serve, ServeError, Served};
use crate::registry::{Replica, StoreHandle};
use log::{debug, error, warn};
use wazuh_cluster_protocol::message::{AgentGroupsAck, AgentGroupsUpdate};
use wazuh_cluster_protocol::WorkerToMaster;

pub(crate) struct AgentGroupsApply {
    pub replica: StoreHandle<Replica>,
    pub node: String,
    pub peer: String,
}

impl Serve for AgentGroupsApply {
    type Side = WorkerSide;
    type Request = AgentGroupsUpdate;

    fn serve(&mut self, update: AgentGroupsUpdate) -> LocalFuture<Result<Served<WorkerToMaster>, ServeError>> {
        let (replica, node, peer) = (self.replica.clone(), self.node.clone(), self.peer.clone());
        Box::pin(async move {
            let n = update.changes.len() as u64;
            let snapshot = update.snapshot;
            let from_generation = update.generation;
            let (applied, seq, global_hash, generation, foreign) = replica
                .run(move |r| {
                    let foreign = r.foreign(update.generation);
                    let applied = r.apply_from(
                        update.generation,
                        update.from_seq,
                        update.to_seq,
                        update.snapshot,
                        &update.changes,
                    )?;
                    Ok((applied, r.seq(), r.hash(), r.generation(), foreign))
                })
                .await?;
            if foreign {
                error!(node = node.as_str(); "master {peer} sent the agent table of another registry (generation {from_generation}); this replica follows generation {generation} and holds agents up to position {seq}: it is left as it is. If the master lost its registry, rebuild it from a replica (wazuh-cluster recover); to follow this master anyway, stop this worker and remove its var/db/replica.db");
            }
            if applied && n > 0 {
                debug!(node = node.as_str(); "applied {n} agent changes from {peer}{}", if snapshot { " (snapshot)" } else { "" });
            }
            Ok(Served {
                reply: WorkerToMaster::AgentGroupsAck(AgentGroupsAck { seq, global_hash, generation }),
                counts: vec![("updates", u64::from(applied)), ("changes", if applied { n } else { 0 })],
            })
        })
    }
}

/// Tells the master this worker's position in the agent table ("everything after N"), once per
/// connection; if the replica cannot be read, retries after a back-off until it can or the
/// connection is gone.
pub(crate) async fn tell_position(
    replica: StoreHandle<Replica>,
    conn: ConnHandle<WorkerSide>,
    backoff: crate::backoff::Backoff,
) {
    let mut failures = 0;
    loop {
        match replica.run(|r| Ok((r.seq(), r.hash(), r.generation()))).await {
            Ok((seq, global_hash, generation)) => {
                let ack = AgentGroupsAck { seq, global_hash, generation };
                let _ = conn.notify(WorkerToMaster::AgentGroupsAck(ack)).await;
                return;
            }
            Err(e) => {
                let delay = backoff.delay(failures);
                failures += 1;
                warn!(node = conn.node(); "cannot read the agent replica to tell master {} its position: {e}; retrying in {} ms",
                    conn.peer(), delay.as_millis());
                tokio::time::sleep(delay).await;
                if conn.is_closed() {
                    return;
                }
            }
        }
    }
}
