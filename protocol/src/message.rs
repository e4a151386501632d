//! Typed cluster messages: a closed enum per direction, each variant a plain struct.
//!
//! There is no dispatch by name and nothing that can run code: a message is one of the variants
//! below or it is refused. Payloads are MessagePack with named fields, so a newer minor version can
//! add optional fields that an older peer ignores. The [`Envelope`] says whether the message is a
//! notification, a request or a response; the kind and request id travel inside the sealed frame.

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The two node roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request id. Each side numbers its own requests and the id carries the side that issued it,
/// so ids from the two directions can never collide (Wazuh's shared counter space can).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub origin: Role,
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.origin, self.seq)
    }
}

/// What a message is, relative to request/response correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Fire and forget.
    Notify,
    /// Expects exactly one response with the same id; `origin` is the sender's role.
    Request(RequestId),
    /// Answers the request with this id; `origin` is the receiver's role.
    Response(RequestId),
}

impl Kind {
    /// Checks that a kind received from a peer with role `peer` is consistent: its requests carry
    /// its own role, its responses answer ours.
    pub fn check_from(&self, peer: Role) -> Result<(), MessageError> {
        match self {
            Kind::Notify => Ok(()),
            Kind::Request(id) if id.origin == peer => Ok(()),
            Kind::Response(id) if id.origin != peer => Ok(()),
            Kind::Request(id) | Kind::Response(id) => Err(MessageError::BadCorrelation(*id)),
        }
    }
}

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<B> {
    pub kind: Kind,
    pub body: B,
}

impl<B> Envelope<B> {
    pub fn notify(body: B) -> Self {
        Self { kind: Kind::Notify, body }
    }
    pub fn request(id: RequestId, body: B) -> Self {
        Self { kind: Kind::Request(id), body }
    }
    pub fn response(id: RequestId, body: B) -> Self {
        Self { kind: Kind::Response(id), body }
    }
}

/// Messages a worker sends to the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerToMaster {
    /// Keeps the permanent connection alive; answered with [`MasterToWorker::KeepAliveAck`].
    KeepAlive(KeepAlive),
    /// Status of the agents reporting to this worker; answered with [`MasterToWorker::AgentInfoAck`].
    AgentInfo(AgentInfoBatch),
    /// The worker's position in the agent-groups stream; answers [`MasterToWorker::AgentGroups`].
    AgentGroupsAck(AgentGroupsAck),
    /// The worker's file manifest digest; answered with [`MasterToWorker::IntegrityStatus`].
    IntegrityCheck(IntegrityCheck),
    /// The worker's whole manifest, when digests differ; answered with [`MasterToWorker::SyncPlan`].
    SyncManifest(SyncManifest),
    /// Asks for file contents; answered with [`MasterToWorker::FileBatch`].
    FetchFiles(FetchFiles),
    /// An enrollment received by the worker; answered with [`MasterToWorker::EnrollResult`].
    Enroll(EnrollForward),
    /// Whether the agent got its key; answered with [`MasterToWorker::EnrollResolved`].
    EnrollResolve(EnrollResolve),
    /// A change to agents or groups received by the worker's API, with its caller's credential;
    /// answered with [`MasterToWorker::AdminResult`].
    Admin(AdminForward),
    /// The outcome of a [`MasterToWorker::ReloadRuleset`] (protocol 2.1).
    RulesetReloaded(RulesetReloaded),
    /// A read received by the worker's API, with its caller's credential (protocol 2.4); answered
    /// with [`MasterToWorker::ApiAnswer`].
    ApiCall(ApiCall),
    /// Which agents the messages of a [`MasterToWorker::AgentCommand`] went to (protocol 2.4).
    AgentCommandSent(AgentCommandSent),
    /// The agent's answer to a [`MasterToWorker::AgentRequest`] (protocol 2.4).
    AgentAnswer(AgentAnswer),
    /// The worker API's answer to a [`MasterToWorker::NodeApiCall`] (protocol 2.4).
    NodeApiAnswer(ApiAnswer),
    /// What the Wazuh daemons beside the worker ask of an agent another node holds: an active
    /// response, or a request on remoted's request socket (protocol 2.5); answered with
    /// [`MasterToWorker::AgentRelayed`].
    AgentRelay(AgentRelay),
    /// The worker is closing the connection on purpose.
    Goodbye(Goodbye),
    /// A request of the master's could not be served (the answer to it).
    Error(ErrorReply),
}

/// Messages the master sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterToWorker {
    KeepAliveAck(KeepAliveAck),
    AgentInfoAck(AgentInfoAck),
    /// Agent-group assignments after the worker's last acknowledged sequence number.
    AgentGroups(AgentGroupsUpdate),
    IntegrityStatus(IntegrityStatus),
    SyncPlan(SyncPlan),
    FileBatch(FileBatch),
    /// The master's files changed: check now instead of at the next interval.
    IntegrityChanged(IntegrityChanged),
    EnrollResult(EnrollResult),
    EnrollResolved(EnrollResolve),
    AdminResult(AdminResult),
    /// The master API's answer to a [`WorkerToMaster::ApiCall`].
    ApiAnswer(ApiAnswer),
    /// Asks the worker to send `#!-force_reconnect` to these agents (all when empty).
    ForceReconnect(ForceReconnect),
    /// Asks the worker to send each agent its message (a restart, an active response) on its
    /// connection (protocol 2.4); answered with [`WorkerToMaster::AgentCommandSent`].
    AgentCommand(AgentCommand),
    /// Asks the worker to ask one of its agents a request (`logcollector getconfig localfile`) and
    /// answer with the agent's answer (protocol 2.4); answered with [`WorkerToMaster::AgentAnswer`].
    AgentRequest(AgentRequest),
    /// A read of the worker's own (`GET /manager/...`) that the master's API was asked as
    /// `/cluster/{node_id}/...` (protocol 2.4); answered with [`WorkerToMaster::NodeApiAnswer`].
    NodeApiCall(ApiCall),
    /// Asks the worker to have its analysisd reload the ruleset once its files reached
    /// `digest` (protocol 2.1); answered with [`WorkerToMaster::RulesetReloaded`].
    ReloadRuleset(ReloadRuleset),
    /// The outcome of a [`WorkerToMaster::AgentRelay`] (protocol 2.5).
    AgentRelayed(AgentRelayed),
    /// The master is closing the connection on purpose.
    Goodbye(Goodbye),
    /// A request could not be served.
    Error(ErrorReply),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {
    /// Sender's wall clock, milliseconds since the Unix epoch; echoed back to measure round trips.
    pub sent_at_ms: u64,
    /// The worker's own job actors, so the master's health check can show them.
    #[serde(default)]
    pub jobs: Vec<JobReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAliveAck {
    pub echo_sent_at_ms: u64,
    /// The master's wall clock when it answered.
    pub master_time_ms: u64,
}

/// Where a job actor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    #[default]
    Starting,
    Running,
    /// Failed, waiting out its back-off before it runs again.
    #[serde(rename = "restarting")]
    BackingOff,
    Stopped,
    /// A state a newer peer reported that this build does not know.
    #[serde(other)]
    Unknown,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::BackingOff => "restarting",
            JobState::Stopped => "stopped",
            JobState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a job works, and so how it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Runs on its own schedule; a failed run restarts it after an exponential back-off.
    #[default]
    Periodic,
    /// Answers the peer's requests; a failed request gets an error reply, the job goes on.
    Server,
    /// Pushes changes to the peer; a failed push is retried after an exponential back-off.
    Pusher,
    #[serde(other)]
    Unknown,
}

/// The observable state of one job actor.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobReport {
    pub name: String,
    #[serde(default)]
    pub kind: JobKind,
    pub state: JobState,
    /// Runs (periodic jobs), requests served (servers) or pushes (pushers) that succeeded.
    pub runs: u64,
    /// Those that failed (panics included).
    pub failures: u64,
    /// Of the failures, panics caught at the job's boundary.
    #[serde(default)]
    pub panics: u64,
    pub restarts: u64,
    pub last_run_ms: Option<u64>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Job-specific counters and gauges. Names ending in `_at_ms` are epoch milliseconds, in `_ms`
    /// durations; the others are counts (booleans as 0 or 1).
    #[serde(default)]
    pub figures: Vec<(String, u64)>,
}

impl JobReport {
    /// The figure named `name`, if the job reports it.
    pub fn figure(&self, name: &str) -> Option<u64> {
        self.figures.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// One agent's status as seen by the worker it reports to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfoUpdate {
    pub id: u32,
    /// `pending`, `active` or `disconnected`.
    pub status: String,
    pub last_keepalive_ms: Option<u64>,
    /// e.g. `Wazuh v4.14.7`.
    pub version: Option<String>,
    /// What the last keep-alive said (OS, labels, sums).
    pub info: Option<crate::agent::keepalive::KeepAlive>,
    /// `synced` or `not synced` (merged.mg).
    pub group_config_status: Option<String>,
    /// The address the agent connects from.
    pub peer_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentInfoBatch {
    pub updates: Vec<AgentInfoUpdate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReloadRuleset {
    /// The master's manifest digest: the worker reloads once its own files have it.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RulesetReloaded {
    pub reloaded: bool,
    /// analysisd's words, or why no reload was asked for.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ForceReconnect {
    pub ids: Vec<u32>,
}

/// Messages for agents, each as the manager sends it on the agent's connection (`#!-execd {...}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentCommand {
    pub messages: Vec<(u32, String)>,
    /// A rebalancing move: the worker refuses these agents for this many milliseconds after the
    /// message, so that one with a server list goes on to its next server. Optional (a worker
    /// that does not know it just sends the messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away_ms: Option<u64>,
    /// A rebalancing move's steering: agents moved from other workers to fill one that needs
    /// them, refused here too for `away_ms` (without a message: they are not connected here), so
    /// that they go on to that worker. Optional, like `away_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refuse: Vec<u32>,
}

/// A request for one agent, and how long the worker waits for the agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentRequest {
    pub id: u32,
    pub payload: String,
    pub timeout_ms: u64,
}

/// The agent's answer (`ok ...`, `err ...`), or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAnswer {
    pub outcome: Result<String, String>,
}

/// What a worker asks the master to do with agents held by other nodes (protocol 2.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRelay {
    /// An active response (`#!-execd ...`, as remoted sends it) for these agents, or for every
    /// active agent of the cluster that the sender does not hold when `all`.
    Execd { ids: Vec<u32>, all: bool, message: String },
    /// A request for agent `id` (remoted's request socket): the agent's answer comes back.
    Ask(AgentRequest),
}

impl AgentRelay {
    /// Longest active-response message relayed (remoted's own buffer, `OS_MAXSTR`).
    pub const MAX_MESSAGE: usize = 65536;
    /// Most agents named in one relayed active response.
    pub const MAX_IDS: usize = 4096;
}

/// The outcome of an [`AgentRelay`]: the agents whose connection took the message, and for a
/// request the agent's answer or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentRelayed {
    pub sent: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Result<String, String>>,
}

/// The agents of an [`AgentCommand`] whose connection on this node took their message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentCommandSent {
    pub sent: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentInfoAck {
    /// Updates taken: a master of this version answers once the batch is in its status inbox and
    /// writes it to the registry right after (a master that stops first is followed by a new
    /// connection, on which the worker sends every status again); older masters answered after
    /// storing, counting only what they stored.
    pub stored: u32,
    /// Updates for agents the master does not know (not stored); 0 from a master with an inbox,
    /// which counts them in its own figures.
    pub unknown: u32,
}

/// What every node needs to know of an agent: identity, key and groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    /// Numeric id (`1` is shown as `001`).
    pub id: u32,
    pub name: String,
    /// `any`, an address or a CIDR.
    pub ip: String,
    /// 64 lowercase hex characters.
    pub key: String,
    pub groups: Vec<String>,
}

/// One change of the agent table, in sequence order. The API's users travel the same way (the
/// same log, positions and acknowledgements), so that every node knows the current users and
/// their roles as soon as the master changed them; they are sent to workers of protocol 2.2 and
/// later only, and are no part of the agent table's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentChange {
    Added(AgentEntry),
    Removed {
        id: u32,
    },
    GroupsChanged {
        id: u32,
        groups: Vec<String>,
    },
    /// An API user was created or changed (protocol 2.2).
    UserSet(ApiUser),
    /// An API user was deleted (protocol 2.2).
    UserRemoved {
        name: String,
    },
}

impl AgentChange {
    /// Whether this change is about the API's users (not the agent table).
    pub fn is_user(&self) -> bool {
        matches!(self, AgentChange::UserSet(_) | AgentChange::UserRemoved { .. })
    }
}

/// What an API user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    Administrator,
    Readonly,
}

impl ApiRole {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "administrator" => Some(ApiRole::Administrator),
            "readonly" => Some(ApiRole::Readonly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Administrator => "administrator",
            ApiRole::Readonly => "readonly",
        }
    }
}

/// An API user as the cluster holds it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiUser {
    /// Numeric, as Wazuh's API numbers users; never reused.
    pub id: u32,
    pub name: String,
    /// An Argon2 PHC string.
    pub password_hash: String,
    pub role: ApiRole,
    /// Raised to revoke every token issued to the user before (a token carries the generation it
    /// was issued under).
    pub generation: u64,
}

impl std::fmt::Debug for ApiUser {
    /// The hash is not shown: users are logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiUser")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// An enrollment a worker forwards to the master.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnrollForward {
    /// Chosen by the worker; the master answers a repeated token with the first answer, so a
    /// retried request never creates two agents.
    pub token: String,
    pub name: String,
    pub groups: Vec<String>,
    /// Already resolved (`src` replaced by the agent's address).
    pub ip: String,
    pub key_hash: Option<String>,
    pub version: Option<String>,
    /// The password the agent sent, if any (protocol 2.2): the master checks it against its own
    /// `enrollment.password`, so the policy is the cluster's whichever node the agent reaches.
    #[serde(default)]
    pub password: Option<String>,
    /// The client certificate chain the agent presented, DER, leaf first (protocol 2.2): the
    /// master checks it against its own `enrollment.ca_file`.
    #[serde(default)]
    pub client_chain: Vec<serde_bytes::ByteBuf>,
}

impl std::fmt::Debug for EnrollForward {
    /// The password is not shown: requests are logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollForward")
            .field("token", &self.token)
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("ip", &self.ip)
            .field("key_hash", &self.key_hash)
            .field("version", &self.version)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("client_chain", &self.client_chain.len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResult {
    pub token: String,
    pub outcome: Result<AgentEntry, crate::agent::enrollment::EnrollError>,
}

/// A change to agents, groups or ruleset files; only the master applies them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRequest {
    DeleteAgent {
        id: u32,
    },
    CreateGroup {
        name: String,
    },
    DeleteGroup {
        name: String,
    },
    AssignGroup {
        id: u32,
        group: String,
    },
    UnassignGroup {
        id: u32,
        group: String,
    },
    /// Writes a file of the ruleset into the master's sync roots (protocol 2.1); file sync takes
    /// it to every worker.
    PutRulesetFile {
        root: RulesetRoot,
        name: String,
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
        overwrite: bool,
    },
    /// Deletes a file of the ruleset from the master's sync roots (protocol 2.1).
    DeleteRulesetFile {
        root: RulesetRoot,
        name: String,
    },
    /// Writes a group's `agent.conf` (protocol 2.1).
    PutGroupConfiguration {
        group: String,
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
    },
    /// Creates an API user (protocol 2.2); the password arrives hashed.
    CreateUser {
        name: String,
        password_hash: String,
        role: ApiRole,
    },
    /// Changes an API user's password (its tokens are revoked) and/or role (protocol 2.2).
    UpdateUser {
        name: String,
        password_hash: Option<String>,
        role: Option<ApiRole>,
    },
    /// Deletes an API user (protocol 2.2): its tokens are refused at once.
    DeleteUser {
        name: String,
    },
    /// Revokes every token issued to an API user so far (protocol 2.2).
    RevokeUserTokens {
        name: String,
    },
}

impl AdminRequest {
    /// Whether this request is about the API's users (protocol 2.2 and later only).
    pub fn is_user(&self) -> bool {
        matches!(
            self,
            AdminRequest::CreateUser { .. }
                | AdminRequest::UpdateUser { .. }
                | AdminRequest::DeleteUser { .. }
                | AdminRequest::RevokeUserTokens { .. }
        )
    }
}

impl std::fmt::Debug for AdminRequest {
    /// A file's content shows as its length: requests are logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminRequest::DeleteAgent { id } => f.debug_struct("DeleteAgent").field("id", id).finish(),
            AdminRequest::CreateGroup { name } => f.debug_struct("CreateGroup").field("name", name).finish(),
            AdminRequest::DeleteGroup { name } => f.debug_struct("DeleteGroup").field("name", name).finish(),
            AdminRequest::AssignGroup { id, group } => {
                f.debug_struct("AssignGroup").field("id", id).field("group", group).finish()
            }
            AdminRequest::UnassignGroup { id, group } => {
                f.debug_struct("UnassignGroup").field("id", id).field("group", group).finish()
            }
            AdminRequest::PutRulesetFile { root, name, content, overwrite } => f
                .debug_struct("PutRulesetFile")
                .field("root", root)
                .field("name", name)
                .field("bytes", &content.len())
                .field("overwrite", overwrite)
                .finish(),
            AdminRequest::DeleteRulesetFile { root, name } => {
                f.debug_struct("DeleteRulesetFile").field("root", root).field("name", name).finish()
            }
            AdminRequest::PutGroupConfiguration { group, content } => {
                f.debug_struct("PutGroupConfiguration").field("group", group).field("bytes", &content.len()).finish()
            }
            AdminRequest::CreateUser { name, role, .. } => {
                f.debug_struct("CreateUser").field("name", name).field("role", role).finish_non_exhaustive()
            }
            AdminRequest::UpdateUser { name, password_hash, role } => f
                .debug_struct("UpdateUser")
                .field("name", name)
                .field("password", &password_hash.as_ref().map(|_| "(new)"))
                .field("role", role)
                .finish(),
            AdminRequest::DeleteUser { name } => f.debug_struct("DeleteUser").field("name", name).finish(),
            AdminRequest::RevokeUserTokens { name } => f.debug_struct("RevokeUserTokens").field("name", name).finish(),
        }
    }
}

/// Where a ruleset file lives: `etc/rules`, `etc/decoders` or `etc/lists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesetRoot {
    Rules,
    Decoders,
    Lists,
}

impl RulesetRoot {
    /// The directory under a node's data dir.
    pub fn dir(self) -> &'static str {
        match self {
            RulesetRoot::Rules => "etc/rules",
            RulesetRoot::Decoders => "etc/decoders",
            RulesetRoot::Lists => "etc/lists",
        }
    }

    /// Checks a file name for this root: one path component of `[A-Za-z0-9._-]`, at most 255
    /// bytes, not starting with `.`, `.xml` for rules and decoders, not a temporary name file sync
    /// skips.
    pub fn check_name(self, name: &str) -> Result<(), String> {
        if name.is_empty() || name.len() > 255 {
            return Err("a file name needs 1 to 255 characters".into());
        }
        if name.starts_with('.') || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(format!(
                "{:?} is not a file name here: only A-Z a-z 0-9 . _ -, not starting with '.'",
                crate::agent::enrollment::printable(name)
            ));
        }
        if matches!(self, RulesetRoot::Rules | RulesetRoot::Decoders) && !name.ends_with(".xml") {
            return Err(format!("{name:?}: rule and decoder files end in .xml"));
        }
        if crate::sync::excluded(name) {
            return Err(format!(
                "{name:?}: a name each node keeps as its own (temporary, lock, compiled list or daemon file), which file sync never sends"
            ));
        }
        Ok(())
    }
}

/// A change received by a worker's API and the API credential its caller gave. The master checks
/// the credential against its own: holding the cluster key never authorizes a change by itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminForward {
    pub request: AdminRequest,
    pub credential: String,
}

impl std::fmt::Debug for AdminForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminForward").field("request", &self.request).field("credential", &"<hidden>").finish()
    }
}

/// A call received by a worker's API, forwarded so that the master's API answers it (a read, a
/// command to agents, a registration): the method, the request target (path and query), the
/// caller's credential (which the master's API checks as its own callers'), and the body with its
/// content type (empty for a read).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCall {
    pub method: ApiMethod,
    pub target: String,
    pub credential: String,
    pub content_type: String,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The methods a worker forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ApiMethod {
    Get,
    Put,
    Post,
}

impl ApiCall {
    /// Longest request target forwarded (the API's own request line limit is larger than any
    /// target it serves).
    pub const MAX_TARGET: usize = 8192;
    /// Largest body forwarded (an active-response command with its alert).
    pub const MAX_BODY: usize = 64 * 1024;
}

impl std::fmt::Debug for ApiCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCall")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("credential", &"<hidden>")
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// The master API's answer to an [`ApiCall`]: its HTTP status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiAnswer {
    pub status: u16,
    pub content_type: String,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Why the master refused or failed an [`AdminRequest`]. Each variant says what the caller can do;
/// the API maps them to HTTP statuses, nothing on the wire does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum AdminError {
    /// No agent with this id: nothing to retry.
    #[error("no agent with id {0:03}")]
    NoSuchAgent(u32),
    /// No group with this name: nothing to retry.
    #[error("no group named {0:?}")]
    NoSuchGroup(String),
    /// No such file (protocol 2.1).
    #[error("no file {0}")]
    NoSuchFile(String),
    /// No API user of this name (protocol 2.2).
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    /// The request cannot be applied as it is (an invalid name, a limit reached, a group that
    /// exists already): change it before retrying.
    #[error("{0}")]
    Invalid(String),
    /// The master could not apply it now (its registry failed): retry later.
    #[error("the master could not apply the change: {0}")]
    Unavailable(String),
    /// The caller's credential is not valid on the master (or the master takes no changes from
    /// workers: it has no API token): nothing was changed.
    #[error("the master refused the change: the caller's API credential is not valid there")]
    Unauthorized,
}

/// The outcome of an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResult {
    pub outcome: Result<(), AdminError>,
}

/// After the reply to the agent: `delivered` keeps the agent, otherwise the master removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResolve {
    pub token: String,
    pub delivered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentGroupsUpdate {
    /// Changes after this sequence number...
    pub from_seq: u64,
    /// ...up to and including this one.
    pub to_seq: u64,
    /// True when `changes` is the whole table rather than a delta.
    pub snapshot: bool,
    pub changes: Vec<AgentChange>,
    /// Hash of the whole table at `to_seq`, for the worker to check its replica; empty when
    /// `to_seq` is not the master's current position (one part of a longer delta).
    pub global_hash: String,
    /// The master registry's generation: a worker never applies an update of another registry
    /// over a replica that holds agents.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentGroupsAck {
    pub seq: u64,
    pub global_hash: String,
    /// The generation of the registry the worker's replica follows (0: none yet).
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IntegrityCheck {
    pub manifest_digest: String,
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IntegrityStatus {
    pub master_digest: String,
    pub files: u64,
    pub in_sync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncManifest {
    pub files: Vec<crate::sync::FileMeta>,
}

/// What the worker must fetch and what it must delete to match the master.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncPlan {
    pub master_digest: String,
    /// Missing or changed on the worker.
    pub fetch: Vec<crate::sync::FileMeta>,
    /// Only on the worker (never under a root the master could not read completely).
    pub delete: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchItem {
    pub path: String,
    /// Resume from this byte.
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FetchFiles {
    pub items: Vec<FetchItem>,
    /// Stop adding data to the answer past this many bytes.
    pub max_bytes: u64,
}

/// Part of a file (all of it when `offset == 0` and `offset + raw_len == size`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePart {
    pub path: String,
    pub offset: u64,
    /// The whole file's size and MD5, for the receiver's check.
    pub size: u64,
    pub md5: String,
    /// Length of this part before compression.
    pub raw_len: u64,
    /// LZ4 block compressed when that saved space.
    pub compressed: bool,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileBatch {
    pub parts: Vec<FilePart>,
    /// Asked for but not served (refused), with the reason.
    pub refused: Vec<(String, String)>,
    /// Asked for but changed or removed on the master since: not an error, the change that
    /// superseded them is announced (or found by the next round). Older masters report these as
    /// refused.
    #[serde(default)]
    pub superseded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IntegrityChanged {
    pub master_digest: String,
    /// When `delta` is true, the change since the previous manifest: the worker can fetch just these.
    #[serde(default)]
    pub delta: bool,
    #[serde(default)]
    pub changed: Vec<crate::sync::FileMeta>,
    #[serde(default)]
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    pub reason: String,
}

/// The answer to a request that could not be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is understood but not served in this state; retry later.
    Unavailable,
    /// The request is invalid; do not retry it unchanged.
    Invalid,
    /// The peer failed internally while serving it; retrying later may work.
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Internal => "internal",
        })
    }
}

/// Names for logs.
/// Which Raft RPC a [`RaftMessage`] carries (between master-eligible nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// A Raft RPC or its answer, encoded by the consensus layer (this crate stays free of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMessage {
    pub rpc: RaftRpc,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// What a master-eligible node sends on the connection it dialed to another one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRequest {
    /// A Raft RPC; answered with [`PeerReply::Raft`].
    Raft(RaftMessage),
    Goodbye(Goodbye),
    Error(ErrorReply),
}

/// What a master-eligible node answers on a connection another one dialed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerReply {
    Raft(RaftMessage),
    Goodbye(Goodbye),
    Error(ErrorReply),
}

impl MessageName for PeerRequest {
    fn name(&self) -> &'static str {
        match self {
            PeerRequest::Raft(_) => "raft",
            PeerRequest::Goodbye(_) => "goodbye",
            PeerRequest::Error(_) => "error",
        }
    }
}

impl MessageName for PeerReply {
    fn name(&self) -> &'static str {
        match self {
            PeerReply::Raft(_) => "raft_reply",
            PeerReply::Goodbye(_) => "goodbye",
            PeerReply::Error(_) => "error",
        }
    }
}

pub trait MessageName {
    fn name(&self) -> &'static str;
}

impl MessageName for WorkerToMaster {
    fn name(&self) -> &'static str {
        match self {
            WorkerToMaster::KeepAlive(_) => "keep_alive",
            WorkerToMaster::AgentInfo(_) => "agent_info",
            WorkerToMaster::AgentGroupsAck(_) => "agent_groups_ack",
            WorkerToMaster::IntegrityCheck(_) => "integrity_check",
            WorkerToMaster::SyncManifest(_) => "sync_manifest",
            WorkerToMaster::FetchFiles(_) => "fetch_files",
            WorkerToMaster::Enroll(_) => "enroll",
            WorkerToMaster::EnrollResolve(_) => "enroll_resolve",
            WorkerToMaster::Admin(_) => "admin",
            WorkerToMaster::ApiCall(_) => "api_call",
            WorkerToMaster::AgentCommandSent(_) => "agent_command_sent",
            WorkerToMaster::AgentAnswer(_) => "agent_answer",
            WorkerToMaster::NodeApiAnswer(_) => "node_api_answer",
            WorkerToMaster::AgentRelay(_) => "agent_relay",
            WorkerToMaster::RulesetReloaded(_) => "ruleset_reloaded",
            WorkerToMaster::Goodbye(_) => "goodbye",
            WorkerToMaster::Error(_) => "error",
        }
    }
}

impl MessageName for MasterToWorker {
    fn name(&self) -> &'static str {
        match self {
            MasterToWorker::KeepAliveAck(_) => "keep_alive_ack",
            MasterToWorker::AgentInfoAck(_) => "agent_info_ack",
            MasterToWorker::AgentGroups(_) => "agent_groups",
            MasterToWorker::IntegrityStatus(_) => "integrity_status",
            MasterToWorker::SyncPlan(_) => "sync_plan",
            MasterToWorker::FileBatch(_) => "file_batch",
            MasterToWorker::IntegrityChanged(_) => "integrity_changed",
            MasterToWorker::EnrollResult(_) => "enroll_result",
            MasterToWorker::EnrollResolved(_) => "enroll_resolved",
            MasterToWorker::AdminResult(_) => "admin_result",
            MasterToWorker::ApiAnswer(_) => "api_answer",
            MasterToWorker::AgentCommand(_) => "agent_command",
            MasterToWorker::AgentRequest(_) => "agent_request",
            MasterToWorker::NodeApiCall(_) => "node_api_call",
            MasterToWorker::ForceReconnect(_) => "force_reconnect",
            MasterToWorker::ReloadRuleset(_) => "reload_ruleset",
            MasterToWorker::AgentRelayed(_) => "agent_relayed",
            MasterToWorker::Goodbye(_) => "goodbye",
            MasterToWorker::Error(_) => "error",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("unknown message type: {0}")]
    UnknownType(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("request id {0} does not belong to this direction")]
    BadCorrelation(RequestId),
}

/// Appends the MessagePack encoding of `envelope` to `dst`.
pub fn encode<B: Serialize>(envelope: &Envelope<B>, dst: &mut BytesMut) -> Result<(), MessageError> {
    let mut ser = rmp_serde::Serializer::new(dst.writer()).with_struct_map();
    envelope.serialize(&mut ser).map_err(|e| MessageError::Encode(e.to_string()))
}

/// Encodes to a fresh buffer.
pub fn to_bytes<B: Serialize>(envelope: &Envelope<B>) -> Result<BytesMut, MessageError> {
    let mut out = BytesMut::new();
    encode(envelope, &mut out)?;
    Ok(out)
}

/// Decodes one envelope; the whole slice must be consumed.
pub fn decode<B: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<B>, MessageError> {
    let mut de = rmp_serde::Deserializer::new(bytes);
    let envelope = match Envelope::<B>::deserialize(&mut de) {
        Ok(envelope) => envelope,
        Err(err) => return Err(classify(bytes, err)),
    };
    let rest = de.get_ref().len();
    if rest != 0 {
        return Err(MessageError::Malformed(format!("{rest} trailing bytes after the message")));
    }
    Ok(envelope)
}

/// Tells "a well-formed envelope whose body is a type we do not know" from any other fault. Runs
/// only on the error path.
fn classify(bytes: &[u8], err: rmp_serde::decode::Error) -> MessageError {
    let text = err.to_string();
    let envelope_ok = rmp_serde::from_slice::<Envelope<serde::de::IgnoredAny>>(bytes).is_ok();
    if envelope_ok && text.contains("unknown variant") {
        MessageError::UnknownType(text)
    } else {
        MessageError::Malformed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keepalive() -> Envelope<WorkerToMaster> {
        Envelope::request(
            RequestId { origin: Role::Worker, seq: 7 },
            WorkerToMaster::KeepAlive(KeepAlive { sent_at_ms: 42, jobs: vec![] }),
        )
    }

    #[test]
    fn round_trip_both_directions() {
        let bytes = to_bytes(&keepalive()).unwrap();
        assert_eq!(decode::<WorkerToMaster>(&bytes).unwrap(), keepalive());
        let ack = Envelope::response(
            RequestId { origin: Role::Worker, seq: 7 },
            MasterToWorker::KeepAliveAck(KeepAliveAck { echo_sent_at_ms: 42, master_time_ms: 43 }),
        );
        assert_eq!(decode::<MasterToWorker>(&to_bytes(&ack).unwrap()).unwrap(), ack);
    }

    #[test]
    fn unknown_message_type_is_named_as_such() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Future {
            RunCommand(String),
        }
        let bytes = to_bytes(&Envelope::notify(Future::RunCommand("rm -rf /".into()))).unwrap();
        assert!(matches!(decode::<WorkerToMaster>(&bytes), Err(MessageError::UnknownType(_))));
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        // Right variant name, wrong payload shape.
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Liar {
            KeepAlive(String),
        }
        let bytes = to_bytes(&Envelope::notify(Liar::KeepAlive("soon".into()))).unwrap();
        assert!(matches!(decode::<WorkerToMaster>(&bytes), Err(MessageError::Malformed(_))));
        // Not an envelope at all, garbage, empty, and trailing bytes.
        let cases: Vec<Vec<u8>> = vec![
            rmp_serde::to_vec(&42u32).unwrap(),
            rmp_serde::to_vec(&vec!["a", "b"]).unwrap(),
            vec![0xc1, 0xff, 0x00],
            vec![],
            {
                let mut b = to_bytes(&keepalive()).unwrap().to_vec();
                b.push(0);
                b
            },
            // A map that claims 2^32-1 entries with none present.
            vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        ];
        for case in cases {
            assert!(matches!(decode::<WorkerToMaster>(&case), Err(MessageError::Malformed(_))), "{case:?}");
        }
    }

    #[test]
    fn correlation_is_checked_by_direction() {
        let w = |seq| RequestId { origin: Role::Worker, seq };
        let m = |seq| RequestId { origin: Role::Master, seq };
        // From a worker: its requests carry "worker", its responses answer master requests.
        assert!(Kind::Request(w(1)).check_from(Role::Worker).is_ok());
        assert!(Kind::Response(m(1)).check_from(Role::Worker).is_ok());
        assert!(Kind::Request(m(1)).check_from(Role::Worker).is_err());
        assert!(Kind::Response(w(1)).check_from(Role::Worker).is_err());
        assert!(Kind::Notify.check_from(Role::Master).is_ok());
        assert_ne!(w(1), m(1), "same number, different origin: distinct ids");
    }

    #[test]
    fn job_states_travel_as_names_and_unknown_ones_are_kept_apart() {
        let report = JobReport {
            name: "Integrity".into(),
            kind: JobKind::Server,
            state: JobState::BackingOff,
            figures: vec![("in_sync".into(), 1)],
            ..JobReport::default()
        };
        let bytes = rmp_serde::to_vec_named(&report).unwrap();
        assert!(bytes.windows(10).any(|w| w == b"restarting"));
        assert_eq!(rmp_serde::from_slice::<JobReport>(&bytes).unwrap(), report);
        assert_eq!(report.figure("in_sync"), Some(1));
        // A state or kind from a newer peer does not break the keep-alive carrying it.
        #[derive(Serialize)]
        struct Newer {
            name: &'static str,
            kind: &'static str,
            state: &'static str,
            runs: u64,
            failures: u64,
            restarts: u64,
            last_run_ms: Option<u64>,
            last_duration_ms: Option<u64>,
            last_error: Option<String>,
        }
        let newer = Newer {
            name: "X",
            kind: "sidecar",
            state: "hibernating",
            runs: 1,
            failures: 0,
            restarts: 0,
            last_run_ms: None,
            last_duration_ms: None,
            last_error: None,
        };
        let decoded: JobReport = rmp_serde::from_slice(&rmp_serde::to_vec_named(&newer).unwrap()).unwrap();
        assert_eq!((decoded.state, decoded.kind, decoded.panics), (JobState::Unknown, JobKind::Unknown, 0));
    }

    #[test]
    fn names_are_not_in_clear_but_are_in_plaintext() {
        // The plaintext carries the type name (sealed by the transport layer, see transport tests).
        let bytes = to_bytes(&keepalive()).unwrap();
        assert!(bytes.windows(10).any(|w| w == b"keep_alive"));
    }
}
