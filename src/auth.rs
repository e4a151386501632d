//! API users and their tokens, as Wazuh's API has them: `POST /security/user/authenticate` with
//! HTTP Basic returns a JWT (HS256) that every node of the cluster accepts (they share
//! `api.secret`), with the user's role; `administrator` may change things, `readonly` may only read.
//!
//! Passwords are stored as Argon2id PHC strings (`wazuh-cluster hash-password`); a token carries
//! Wazuh's claims (`iss` "wazuh", `aud` "Wazuh API REST", `nbf`, `exp`, `sub`, `rbac_roles`) plus
//! the role by name, and is checked in constant time. The static `api.token` stays a credential of
//! its own (an administrator's, for automation).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64ct::{Base64UrlUnpadded, Encoding};
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

    /// Wazuh's ids of its default roles of the same names.
    fn wazuh_id(self) -> u32 {
        match self {
            ApiRole::Administrator => 1,
            ApiRole::Readonly => 2,
        }
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

/// An Argon2id PHC string for `password` (a fresh random salt).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(hash.to_string())
}

/// Whether `hash` is a PHC string this build can check.
pub fn valid_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
}

/// The user's role when `password` is theirs.
pub fn check_password(users: &[ApiUser], name: &str, password: &str) -> Option<ApiRole> {
    let user = users.iter().find(|u| u.name == name);
    let Some(user) = user else {
        // The same work for an unknown name as for a wrong password: timing does not say which.
        let _ = hash_password(password);
        return None;
    };
    let parsed = PasswordHash::new(&user.password_hash).ok()?;
    Argon2::default().verify_password(password.as_bytes(), &parsed).ok().map(|_| user.role)
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
}

const ISSUER: &str = "wazuh";
const AUDIENCE: &str = "Wazuh API REST";

/// Signs and checks tokens with the cluster's API secret.
#[derive(Clone)]
pub struct Tokens {
    key: hmac::Key,
    pub lifetime: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

fn header() -> String {
    Base64UrlUnpadded::encode_string(br#"{"alg":"HS256","typ":"JWT"}"#)
}

impl Tokens {
    pub fn new(secret: &[u8], lifetime: Duration) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret), lifetime }
    }

    /// A token for `user` with `role`, valid from `now` (seconds since the epoch) for the lifetime.
    pub fn issue(&self, user: &str, role: ApiRole, now: u64) -> String {
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            nbf: now,
            exp: now + self.lifetime.as_secs(),
            sub: user.into(),
            run_as: false,
            rbac_roles: vec![role.wazuh_id()],
            rbac_mode: "white".into(),
            role,
        };
        let payload = Base64UrlUnpadded::encode_string(serde_json::to_string(&claims).unwrap_or_default().as_bytes());
        let signing_input = format!("{}.{payload}", header());
        let signature = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", Base64UrlUnpadded::encode_string(signature.as_ref()))
    }

    /// The claims of a token this cluster signed and that is valid at `now`.
    pub fn check(&self, token: &str, now: u64) -> Option<Claims> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || h != header() {
            // Only the header this node writes: no `alg: none`, no other algorithm.
            return None;
        }
        let signature = Base64UrlUnpadded::decode_vec(s).ok()?;
        hmac::verify(&self.key, format!("{h}.{p}").as_bytes(), &signature).ok()?;
        let claims: Claims = serde_json::from_slice(&Base64UrlUnpadded::decode_vec(p).ok()?).ok()?;
        let valid = claims.iss == ISSUER && claims.aud == AUDIENCE && claims.nbf <= now + 5 && now < claims.exp;
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
        let users = vec![
            ApiUser { name: "admin".into(), password_hash: hash.clone(), role: ApiRole::Administrator },
            ApiUser { name: "ro".into(), password_hash: hash_password("ro-pass").unwrap(), role: ApiRole::Readonly },
        ];
        assert_eq!(check_password(&users, "admin", "s3cret pass"), Some(ApiRole::Administrator));
        assert_eq!(check_password(&users, "ro", "ro-pass"), Some(ApiRole::Readonly));
        assert_eq!(check_password(&users, "admin", "wrong"), None);
        assert_eq!(check_password(&users, "nobody", "s3cret pass"), None);
        assert_ne!(hash_password("s3cret pass").unwrap(), hash, "a fresh salt each time");
    }

    #[test]
    fn tokens_are_valid_only_unaltered_in_their_lifetime_and_with_this_secret() {
        let t = Tokens::new(b"cluster-api-secret-0123456789abcdef", Duration::from_secs(900));
        let token = t.issue("admin", ApiRole::Administrator, 1_000);
        let claims = t.check(&token, 1_000).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role, claims.exp), ("admin", ApiRole::Administrator, 1_900));
        assert_eq!(claims.rbac_roles, [1]);
        assert!(t.check(&token, 1_899).is_some());
        assert!(t.check(&token, 1_900).is_none(), "expired");
        assert!(t.check(&token, 900).is_none(), "not yet valid");
        let other = Tokens::new(b"another-secret-0123456789abcdefgh", Duration::from_secs(900));
        assert!(other.check(&token, 1_000).is_none(), "another cluster's secret");
        // A readonly user cannot make itself an administrator: the payload is signed.
        let ro = t.issue("ro", ApiRole::Readonly, 1_000);
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
