//! The cluster's enrollment policy (the master's password, client CA and rate), applied by the
//! master to the enrollments it takes itself and to every one a worker forwards.

use std::sync::Arc;
use std::time::Duration;
use wazuh_cluster_protocol::agent::enrollment::{self, EnrollError};
use wazuh_cluster_protocol::message::EnrollForward;

/// The cluster's enrollment policy, as the master applies it: to enrollments on its own 1515 and
/// to every enrollment a worker forwards (with the password and certificate chain the agent gave
/// the worker), so that a password or CA set on the master is required through every node.
#[derive(Default)]
pub struct EnrollmentPolicy {
    pub password: Option<String>,
    pub ca: Option<Arc<crate::client_cert::ClientCa>>,
    /// Enrollments per second for the whole cluster, at most (`enrollment.max_per_second`).
    rate: Option<std::sync::Mutex<Bucket>>,
    /// Refusals are said once per 10 s at most (they can come as fast as strangers send them).
    refusals: std::sync::Mutex<Option<crate::throttle::Throttle>>,
}

/// A token bucket: `per_second` tokens a second, a second's worth at most.
#[derive(Debug)]
struct Bucket {
    per_second: f64,
    tokens: f64,
    last: std::time::Instant,
}

/// Why the policy refused an enrollment (the log says this; the agent gets `reply`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error("wrong or missing enrollment password")]
    Password,
    #[error("{0}")]
    Certificate(crate::client_cert::CertError),
    #[error("over enrollment.max_per_second ({0}/s for the cluster)")]
    Rate(u32),
    #[error("the worker speaks protocol {0}, which cannot pass on the agent's password and certificate that this master requires: upgrade the worker")]
    OldWorker(wazuh_cluster_protocol::ProtocolVersion),
}

impl PolicyRefusal {
    /// What the agent is told (a worker of protocol 2.1 knows no certificate refusal).
    pub fn reply(&self, name: &str, worker_version: wazuh_cluster_protocol::ProtocolVersion) -> EnrollError {
        match self {
            PolicyRefusal::Password => EnrollError::InvalidPassword,
            PolicyRefusal::Certificate(e) if worker_version >= wazuh_cluster_protocol::version::USERS => {
                EnrollError::ClientCertificate(e.to_string())
            }
            _ => EnrollError::Internal(name.to_string()),
        }
    }
}

impl std::fmt::Debug for EnrollmentPolicy {
    /// The password is not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentPolicy")
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("ca", &self.ca)
            .field("rate", &self.rate.is_some())
            .finish()
    }
}

impl EnrollmentPolicy {
    pub fn new(password: Option<String>, ca: Option<Arc<crate::client_cert::ClientCa>>, max_per_second: u32) -> Self {
        let rate = (max_per_second > 0).then(|| {
            let per_second = f64::from(max_per_second);
            std::sync::Mutex::new(Bucket { per_second, tokens: per_second, last: std::time::Instant::now() })
        });
        Self { password, ca, rate, refusals: Default::default() }
    }

    /// Runs `say` (a log line about a refusal) if one may be said now.
    pub fn said(&self, say: impl FnOnce()) {
        let mut t = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if t.get_or_insert_with(|| crate::throttle::Throttle::new(Duration::from_secs(10))).allow().is_some() {
            say();
        }
    }

    /// Takes one enrollment from the cluster's rate; refused when there is none left this second.
    pub fn take(&self) -> Result<(), PolicyRefusal> {
        let Some(rate) = &self.rate else { return Ok(()) };
        let mut b = rate.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.per_second).min(b.per_second);
        b.last = now;
        if b.tokens < 1.0 {
            return Err(PolicyRefusal::Rate(b.per_second as u32));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Checks what a worker passed on of the agent's request (its password and certificate chain,
    /// from a worker of protocol 2.2 or later), then the rate.
    pub(crate) fn check_forwarded(
        &self,
        f: &EnrollForward,
        worker_version: wazuh_cluster_protocol::ProtocolVersion,
    ) -> Result<(), PolicyRefusal> {
        let demanding = self.password.is_some() || self.ca.is_some();
        if demanding && worker_version < wazuh_cluster_protocol::version::USERS {
            return Err(PolicyRefusal::OldWorker(worker_version));
        }
        if let Some(expected) = &self.password {
            if !f.password.as_deref().is_some_and(|given| enrollment::same_password(given, expected)) {
                return Err(PolicyRefusal::Password);
            }
        }
        if let Some(ca) = &self.ca {
            let chain: Vec<&[u8]> = f.client_chain.iter().map(|c| c.as_ref()).collect();
            ca.verify(&chain, rustls::pki_types::UnixTime::now()).map_err(PolicyRefusal::Certificate)?;
        }
        self.take()
    }
}
