//! API users and their tokens, as Wazuh's API has them: `POST /security/user/authenticate` with
//! HTTP Basic returns a JWT (HS256) that every node of the cluster accepts (they share
//! `api.secret`), with the user's role; `administrator` may change things, `readonly` may only read.
//!
//! Passwords are stored as Argon2id PHC strings (`wazuh-cluster hash-password`); a token carries
//! Wazuh's claims (`iss` "wazuh", `aud` "Wazuh API REST", `nbf`, `exp`, `sub`, `rbac_roles`) plus
//! the role by name, and is checked in constant time. The static `api.token` stays a credential of
//! its own (an administrator's, for automation).

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use std::time::Duration;
pub use wazuh_cluster_actors::registry::users::UserDirectory;
/// A user as the cluster holds it (name, hash, role, token generation, id).
pub use wazuh_cluster_protocol::message::ApiUser as StoredUser;

pub use wazuh_cluster_protocol::message::ApiRole;

/// Wazuh's ids of its default roles of the same names (`rbac_roles` in a token, `roles` of a user).
pub fn wazuh_role_id(role: ApiRole) -> u32 {
    match role {
        ApiRole::Administrator => 1,
        ApiRole::Readonly => 2,
    }
}

/// The role of Wazuh's role id.
pub fn role_of_wazuh_id(id: u32) -> Option<ApiRole> {
    match id {
        1 => Some(ApiRole::Administrator),
        2 => Some(ApiRole::Readonly),
        _ => None,
    }
}

/// One configured user.
#[derive(Debug, Clone, Serialize)]
pub struct ApiUser {
    pub name: String,
    #[serde(serialize_with = "masked")]
    pub password_hash: String,
    pub role: ApiRole,
}

fn masked<S: serde::Serializer>(_: &String, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("********")
}

thread_local! {
    /// Argon2's working memory, kept by each thread that hashes (the sign-in threads): allocated
    /// once at the largest size asked for (64 MiB at most, see the cost bound), reused by every
    /// hash after. Allocated and freed per hash instead, glibc keeps the freed 19 MiB buffers in
    /// its arenas (its mmap threshold rises past them after the first): a sign-in flood grew a node
    /// by 400-600 MiB that way, measured.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Argon2 of `password` and `salt` with `argon2`'s parameters into `out`, in this thread's
/// working memory.
fn argon2_into(argon2: &Argon2<'_>, params: &argon2::Params, password: &[u8], salt: &[u8], out: &mut [u8]) -> bool {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let need = params.block_count();
        if blocks.len() < need {
            blocks.resize(need, argon2::Block::default());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..need]).is_ok()
    })
}

/// An Argon2id PHC string for `password` (a fresh random salt, the default parameters).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{Output, ParamsString};
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let params = argon2::Params::default();
    let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params.clone());
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    anyhow::ensure!(argon2_into(&argon2, &params, password.as_bytes(), &raw, &mut out), "Argon2 failed");
    let phc = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("{e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("{e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` is the one `phc` (an Argon2 PHC string) was made from, compared in constant
/// time.
fn verify(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Ok(algorithm), Ok(params)) =
        (argon2::Algorithm::try_from(parsed.algorithm), argon2::Params::try_from(&parsed))
    else {
        return false;
    };
    let version = parsed.version.and_then(|v| argon2::Version::try_from(v).ok()).unwrap_or_default();
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    argon2_into(&argon2, &params, password.as_bytes(), salt, &mut out)
        && wazuh_cluster_actors::secret::same_bytes(&out, expected.as_bytes())
}

/// Whether `hash` is a PHC string this build can check.
pub fn valid_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
}

/// Why a configured password hash is refused (not Argon2, or dearer to check than a sign-in may
/// be: see [`wazuh_cluster_actors::registry::users::check_hash`]).
pub fn check_hash_cost(hash: &str) -> Result<(), wazuh_cluster_actors::registry::users::UserFieldError> {
    wazuh_cluster_actors::registry::users::check_hash(hash)
}

/// A hash of nothing anyone knows, with the parameters `wazuh-cluster hash-password` uses: an
/// unknown user's password is checked against it, so that the time (and memory) of a sign-in does
/// not say whether the user exists.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut raw = [0u8; 24];
        let _ = getrandom::fill(&mut raw);
        let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        hash_password(&text).unwrap_or_default()
    })
}

/// The user `name` when `password` is theirs (from the cluster's users). An unknown user costs the
/// same work as a known one.
pub fn check_password(users: &UserDirectory, name: &str, password: &str) -> Option<StoredUser> {
    let user = users.get(name);
    let hash: &str = match &user {
        Some(u) => &u.password_hash,
        None => decoy_hash(),
    };
    let verified = verify(hash, password);
    user.filter(|_| verified)
}

/// What a sign-in attempt may cost the node: at most `permits` password checks at once (each takes
/// Argon2's memory, 19 MiB with the default parameters, for tens of milliseconds), the rest
/// answered at once; and, as Wazuh's API does, an address that failed `max_attempts` times within
/// `block_time` of its first failure is refused until that time has passed.
pub struct SignInGate {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// The checks go to `concurrency` threads of their own: the same few threads (and so the same
    /// few allocator arenas) take every Argon2 buffer, so what they keep between checks is bounded
    /// by their number. (On tokio's blocking pool, threads come and go, each arena keeping the
    /// last 19 MiB buffer it served: 600 MiB after a few seconds of flood, measured.)
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// How many checks may run at once.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub block_time: Duration,
    failures: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Failures>>,
}

/// Work for a sign-in thread.
type Job = Box<dyn FnOnce() + Send>;

/// One address's failed sign-ins since its first one.
#[derive(Debug, Clone, Copy)]
struct Failures {
    first: std::time::Instant,
    count: u32,
}

/// Addresses whose failures are remembered at most (about 40 bytes each): beyond it, windows that
/// ended are forgotten first, then the oldest.
pub const MAX_REMEMBERED_ADDRESSES: usize = 65_536;

/// Why a sign-in is not checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInRefused {
    #[error("Limit of login attempts reached. The current IP has been blocked due to a high number of login attempts")]
    Blocked,
    #[error("too many sign-ins are being checked at once; retry in a moment")]
    Busy,
}

impl SignInGate {
    /// `concurrency` 0: from the cores (at most 4). Starts that many threads, which end with the gate.
    pub fn new(concurrency: usize, max_attempts: u32, block_time: Duration) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let concurrency = if concurrency == 0 { cores.clamp(1, 4) } else { concurrency };
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(concurrency);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        for i in 0..concurrency {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("sign-in-{i}")).spawn(move || loop {
                let job = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            });
            if let Err(e) = spawned {
                log::error!("cannot start a sign-in thread: {e}");
            }
        }
        Self {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency)),
            jobs,
            concurrency,
            max_attempts: max_attempts.max(1),
            block_time,
            failures: Default::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refused when `ip` is blocked (a window that ended is forgotten here).
    pub fn check_blocked(&self, ip: std::net::IpAddr) -> Result<(), SignInRefused> {
        let ip = ip.to_canonical();
        let mut failures = self.failures();
        match failures.get(&ip) {
            Some(f) if f.first.elapsed() >= self.block_time => {
                failures.remove(&ip);
                Ok(())
            }
            Some(f) if f.count >= self.max_attempts => Err(SignInRefused::Blocked),
            _ => Ok(()),
        }
    }

    /// A place among the checks running now, or `Busy` at once.
    pub fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, SignInRefused> {
        self.permits.clone().try_acquire_owned().map_err(|_| SignInRefused::Busy)
    }

    /// Runs `work` (a password check or hash) on one of the gate's threads if a place is free now;
    /// `Busy` at once otherwise.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, SignInRefused> {
        let permit = self.permit()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
            drop(permit);
        });
        // Never full: a job is sent only with a permit, and there are as many places as permits.
        self.jobs.try_send(job).map_err(|_| SignInRefused::Busy)?;
        rx.await.map_err(|_| SignInRefused::Busy)
    }

    /// Counts a failed sign-in from `ip`; true when it blocks the address from now on.
    pub fn failed(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        let now = std::time::Instant::now();
        let mut failures = self.failures();
        if failures.len() >= MAX_REMEMBERED_ADDRESSES && !failures.contains_key(&ip) {
            let block_time = self.block_time;
            failures.retain(|_, f| now.duration_since(f.first) < block_time);
            if failures.len() >= MAX_REMEMBERED_ADDRESSES {
                if let Some(oldest) = failures.iter().min_by_key(|(_, f)| f.first).map(|(ip, _)| *ip) {
                    failures.remove(&oldest);
                }
            }
        }
        let f = failures.entry(ip).or_insert(Failures { first: now, count: 0 });
        if now.duration_since(f.first) >= self.block_time {
            *f = Failures { first: now, count: 0 };
        }
        f.count += 1;
        f.count == self.max_attempts
    }

    /// Addresses remembered now (tests, health).
    pub fn remembered(&self) -> usize {
        self.failures().len()
    }
}

/// Wazuh's token claims, and ours (`role`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub nbf: u64,
    pub exp: u64,
    pub sub: String,
    pub run_as: bool,
    pub rbac_roles: Vec<u32>,
    pub rbac_mode: String,
    pub role: ApiRole,
    /// The user's token generation when it was issued: revoking the user's tokens raises it, and
    /// a token of an older one is refused (absent in tokens of earlier builds: 0).
    #[serde(default)]
    pub gen: u64,
}

const ISSUER: &str = "wazuh";
const AUDIENCE: &str = "Wazuh API REST";

/// Signs and checks tokens with the cluster's API secret (HS256, through `jsonwebtoken`).
#[derive(Clone)]
pub struct Tokens {
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    pub lifetime: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

/// Tolerance for a token's `nbf` against this node's clock (nodes' clocks differ a little).
const NBF_LEEWAY_S: u64 = 5;

impl Tokens {
    pub fn new(secret: &[u8], lifetime: Duration) -> Self {
        Self {
            encoding: jsonwebtoken::EncodingKey::from_secret(secret),
            decoding: jsonwebtoken::DecodingKey::from_secret(secret),
            lifetime,
        }
    }

    /// A token for `user` with `role` under token generation `gen`, valid from `now` (seconds
    /// since the epoch) for the lifetime.
    pub fn issue(&self, user: &str, role: ApiRole, gen: u64, now: u64) -> String {
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            nbf: now,
            exp: now + self.lifetime.as_secs(),
            sub: user.into(),
            run_as: false,
            rbac_roles: vec![wazuh_role_id(role)],
            rbac_mode: "white".into(),
            role,
            gen,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        // Serializing these claims cannot fail; an empty token would only be refused.
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap_or_default()
    }

    /// The claims of a token this cluster signed and that is valid at `now`: HS256 only (no
    /// `alg: none`, no other algorithm), signed with this secret, Wazuh's issuer and audience.
    /// Times are checked here against `now`, not by the library against its own clock.
    pub fn check(&self, token: &str, now: u64) -> Option<Claims> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?.claims;
        let valid = claims.nbf <= now + NBF_LEEWAY_S && now < claims.exp;
        valid.then_some(claims)
    }
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    wazuh_cluster_actors::clock::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_check_against_their_argon2id_hash_only() {
        let hash = hash_password("s3cret pass").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(valid_hash(&hash));
        assert!(!valid_hash("plain") && !valid_hash("$2b$10$abcdefghijklmnopqrstuv"));
        let users = UserDirectory::default();
        let user = |id, name: &str, password_hash: String, role| StoredUser {
            id,
            name: name.into(),
            password_hash,
            role,
            generation: 0,
        };
        users.replace(vec![
            user(1, "admin", hash.clone(), ApiRole::Administrator),
            user(2, "ro", hash_password("ro-pass").unwrap(), ApiRole::Readonly),
        ]);
        let role = |name, password| check_password(&users, name, password).map(|u| u.role);
        assert_eq!(role("admin", "s3cret pass"), Some(ApiRole::Administrator));
        assert_eq!(role("ro", "ro-pass"), Some(ApiRole::Readonly));
        assert_eq!(role("admin", "wrong"), None);
        assert_eq!(role("nobody", "s3cret pass"), None);
        assert_ne!(hash_password("s3cret pass").unwrap(), hash, "a fresh salt each time");
    }

    #[test]
    fn an_address_is_blocked_after_max_attempts_until_block_time_after_its_first_failure() {
        let gate = SignInGate::new(2, 3, Duration::from_millis(300));
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(!gate.failed(a) && !gate.failed(a));
        assert_eq!(gate.check_blocked(a), Ok(()));
        assert!(gate.failed(a), "the third failure blocks");
        assert_eq!(gate.check_blocked(a), Err(SignInRefused::Blocked));
        // The same address as an IPv4-mapped IPv6 address is the same address.
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(gate.check_blocked(mapped), Err(SignInRefused::Blocked));
        assert_eq!(gate.check_blocked(b), Ok(()), "another address is not");
        std::thread::sleep(Duration::from_millis(320));
        assert_eq!(gate.check_blocked(a), Ok(()), "block_time after the first failure, the address is free");
        assert!(!gate.failed(a), "and its count starts again");
    }

    #[test]
    fn at_most_n_checks_at_once_and_the_rest_refused_at_once() {
        let gate = SignInGate::new(2, 50, Duration::from_secs(300));
        let one = gate.permit().unwrap();
        let _two = gate.permit().unwrap();
        assert_eq!(gate.permit().err(), Some(SignInRefused::Busy));
        drop(one);
        assert!(gate.permit().is_ok());
        assert!(SignInGate::new(0, 50, Duration::from_secs(1)).concurrency >= 1);
    }

    #[test]
    fn remembered_addresses_are_bounded() {
        let gate = SignInGate::new(1, 50, Duration::from_secs(300));
        for i in 0..(MAX_REMEMBERED_ADDRESSES as u32 + 100) {
            gate.failed(std::net::IpAddr::V4(std::net::Ipv4Addr::from(i)));
        }
        assert!(gate.remembered() <= MAX_REMEMBERED_ADDRESSES);
    }

    #[test]
    fn configured_hashes_above_the_sign_in_cost_bound_are_refused() {
        assert!(check_hash_cost(&hash_password("x").unwrap()).is_ok());
        let costly = "$argon2id$v=19$m=262144,t=2,p=1$c2FsdHNhbHRzYWx0$3kFqOZXJ6hb3ZsmBdEi7Tq6z2eEHD2Xu3v1nD3Glmjo";
        assert!(check_hash_cost(costly).unwrap_err().to_string().contains("m=262144"));
    }

    #[test]
    fn a_token_issued_by_an_earlier_build_stays_valid() {
        // Earlier builds wrote the header and signature by hand: `{"alg":"HS256","typ":"JWT"}`,
        // the claims as JSON, HMAC-SHA256 over both, all base64url without padding.
        use base64ct::{Base64UrlUnpadded, Encoding};
        let secret = b"cluster-api-secret-0123456789abcdef";
        let header = Base64UrlUnpadded::encode_string(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = r#"{"iss":"wazuh","aud":"Wazuh API REST","nbf":1000,"exp":1900,"sub":"admin","run_as":false,"rbac_roles":[1],"rbac_mode":"white","role":"administrator"}"#;
        let input = format!("{header}.{}", Base64UrlUnpadded::encode_string(claims.as_bytes()));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let token =
            format!("{input}.{}", Base64UrlUnpadded::encode_string(ring::hmac::sign(&key, input.as_bytes()).as_ref()));
        let t = Tokens::new(secret, Duration::from_secs(900));
        let claims = t.check(&token, 1_000).expect("an earlier build's token");
        assert_eq!((claims.sub.as_str(), claims.role, claims.gen), ("admin", ApiRole::Administrator, 0));
    }

    #[test]
    fn tokens_are_valid_only_unaltered_in_their_lifetime_and_with_this_secret() {
        use base64ct::{Base64UrlUnpadded, Encoding};
        let t = Tokens::new(b"cluster-api-secret-0123456789abcdef", Duration::from_secs(900));
        let token = t.issue("admin", ApiRole::Administrator, 0, 1_000);
        let claims = t.check(&token, 1_000).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role, claims.exp), ("admin", ApiRole::Administrator, 1_900));
        assert_eq!(claims.rbac_roles, [1]);
        assert!(t.check(&token, 1_899).is_some());
        assert!(t.check(&token, 1_900).is_none(), "expired");
        assert!(t.check(&token, 900).is_none(), "not yet valid");
        let other = Tokens::new(b"another-secret-0123456789abcdefgh", Duration::from_secs(900));
        assert!(other.check(&token, 1_000).is_none(), "another cluster's secret");
        // A readonly user cannot make itself an administrator: the payload is signed.
        let ro = t.issue("ro", ApiRole::Readonly, 0, 1_000);
        let parts: Vec<&str> = ro.split('.').collect();
        let forged_payload = Base64UrlUnpadded::encode_string(
            String::from_utf8(Base64UrlUnpadded::decode_vec(parts[1]).unwrap())
                .unwrap()
                .replace("readonly", "administrator")
                .as_bytes(),
        );
        assert!(t.check(&format!("{}.{forged_payload}.{}", parts[0], parts[2]), 1_000).is_none());
        // `alg: none` and garbage.
        let none = Base64UrlUnpadded::encode_string(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(t.check(&format!("{none}.{}.", parts[1]), 1_000).is_none());
        for bad in ["", "a.b", "a.b.c.d", "...", &token[..token.len() - 2]] {
            assert!(t.check(bad, 1_000).is_none(), "{bad}");
        }
    }
}
