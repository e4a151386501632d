//! The two directions of the channel: the message types and how a goodbye and an error answer
//! look on each (only the wire: the jobs each side runs are its owner's business).

use super::*;

/// What differs between the two directions of the channel: the message types and how a goodbye
/// and an error answer look. (Only the wire; the jobs each side runs are its owner's business.)
pub trait Side: Sized + Unpin + 'static {
    type In: DeserializeOwned + MessageName + Send + 'static;
    type Out: Serialize + MessageName + Send + 'static;
    const LOCAL: Role;
    /// What the other end is, in logs.
    const PEER: &'static str;
    /// How a close for silence is logged: a warning where keep-alives are due (a worker and its
    /// master); between master-eligible nodes a connection in one direction carries nothing
    /// while its dialler follows, so silence there is normal (it is dialled again when needed).
    const SILENCE: log::Level = log::Level::Warn;
    /// How a connection's start and end are logged (between master-eligible nodes they come and
    /// go with elections and silence; who leads is logged instead).
    const LIFECYCLE: log::Level = log::Level::Info;

    fn goodbye(reason: String) -> Self::Out;
    /// The goodbye reason, if `body` is a goodbye.
    fn goodbye_reason(body: &Self::In) -> Option<&str>;
    /// The error answer to a request that could not be served.
    fn error(reply: ErrorReply) -> Self::Out;
    /// `Err(reply)` if `body` is an error answer.
    fn check_answer(body: Self::In) -> Result<Self::In, ErrorReply>;
}

/// The master's end of a worker connection.
pub struct MasterSide;
/// A worker's end of its connection to the master.
pub struct WorkerSide;

impl Side for MasterSide {
    type In = WorkerToMaster;
    type Out = MasterToWorker;
    const LOCAL: Role = Role::Master;
    const PEER: &'static str = "worker";

    fn goodbye(reason: String) -> MasterToWorker {
        MasterToWorker::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &WorkerToMaster) -> Option<&str> {
        match body {
            WorkerToMaster::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> MasterToWorker {
        MasterToWorker::Error(reply)
    }
    fn check_answer(body: WorkerToMaster) -> Result<WorkerToMaster, ErrorReply> {
        match body {
            WorkerToMaster::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

impl Side for WorkerSide {
    type In = MasterToWorker;
    type Out = WorkerToMaster;
    const LOCAL: Role = Role::Worker;
    const PEER: &'static str = "master";

    fn goodbye(reason: String) -> WorkerToMaster {
        WorkerToMaster::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &MasterToWorker) -> Option<&str> {
        match body {
            MasterToWorker::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> WorkerToMaster {
        WorkerToMaster::Error(reply)
    }
    fn check_answer(body: MasterToWorker) -> Result<MasterToWorker, ErrorReply> {
        match body {
            MasterToWorker::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// Between two master-eligible nodes (a Raft group), the dialing end. On the wire it takes the
/// worker's place (its request ids carry that role), so that the two ends' ids never mix.
pub(crate) struct PeerDialSide;
/// Between two master-eligible nodes, the accepting end (the master's place on the wire).
pub(crate) struct PeerAcceptSide;

impl Side for PeerDialSide {
    type In = PeerReply;
    type Out = PeerRequest;
    const LOCAL: Role = Role::Worker;
    const PEER: &'static str = "master-eligible peer";
    const SILENCE: log::Level = log::Level::Debug;
    const LIFECYCLE: log::Level = log::Level::Debug;

    fn goodbye(reason: String) -> PeerRequest {
        PeerRequest::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &PeerReply) -> Option<&str> {
        match body {
            PeerReply::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> PeerRequest {
        PeerRequest::Error(reply)
    }
    fn check_answer(body: PeerReply) -> Result<PeerReply, ErrorReply> {
        match body {
            PeerReply::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

impl Side for PeerAcceptSide {
    type In = PeerRequest;
    type Out = PeerReply;
    const LOCAL: Role = Role::Master;
    const PEER: &'static str = "master-eligible peer";
    const SILENCE: log::Level = log::Level::Debug;
    const LIFECYCLE: log::Level = log::Level::Debug;

    fn goodbye(reason: String) -> PeerReply {
        PeerReply::Goodbye(Goodbye { reason })
    }
    fn goodbye_reason(body: &PeerRequest) -> Option<&str> {
        match body {
            PeerRequest::Goodbye(bye) => Some(&bye.reason),
            _ => None,
        }
    }
    fn error(reply: ErrorReply) -> PeerReply {
        PeerReply::Error(reply)
    }
    fn check_answer(body: PeerRequest) -> Result<PeerRequest, ErrorReply> {
        match body {
            PeerRequest::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

pub(super) fn peer_role(local: Role) -> Role {
    match local {
        Role::Master => Role::Worker,
        Role::Worker => Role::Master,
    }
}
