//! Node identities and join tokens: what lets a master tell its workers apart, admit only the
//! ones it knows, and revoke one without re-keying the cluster.
//!
//! - Every node has an Ed25519 key pair of its own ([`NodeIdentity`]), made at its first start.
//!   Its public key travels in the hello (message 1); in the key confirmation (message 3) the node
//!   signs the handshake hash, which is unique to the connection and covers both ephemeral keys,
//!   so a signature cannot be replayed on another connection and proves the key is held now.
//! - A worker that the master does not know yet presents a [`JoinToken`] issued by the master:
//!   `<id>.<secret>`. Only the id travels in the hello; message 3 carries an HMAC-SHA256 of the
//!   handshake hash and the worker's public key under the secret. The secret never crosses the
//!   wire, and message 3 is sealed with the session keys (which another holder of the cluster key
//!   cannot derive), so neither an eavesdropper nor a replay learns or reuses it.
//!
//! Message 3's plaintext after the confirmation hash is the [`Proof`]: the signature, then the
//! token's MAC when the hello named a token.

use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use std::fmt;

/// Length of a public key and of a signature.
pub const PUBLIC_KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
/// Length of a join token's MAC.
pub const TOKEN_MAC_LEN: usize = 32;
/// A join token's id and secret, in bytes (hex on the wire and in files: 16 and 64 characters).
const TOKEN_ID_LEN: usize = 8;
const TOKEN_SECRET_LEN: usize = 32;

const SIGN_LABEL: &[u8] = b"WMN-IDENTITY";
const JOIN_LABEL: &[u8] = b"WMN-JOIN";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the node identity file is not an Ed25519 key (PKCS#8): {0}")]
    BadKeyFile(String),
    #[error("cannot make a key: the system's random source failed")]
    Random,
    #[error("the signature over the handshake does not verify with the node's public key")]
    BadSignature,
    #[error("the join token proof does not verify (wrong token secret)")]
    BadTokenProof,
    #[error("malformed identity proof: {0}")]
    Malformed(&'static str),
    #[error("malformed join token: {0}")]
    BadToken(&'static str),
}

/// A node's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(PublicKey)
    }

    /// The first 16 hex characters: enough to tell keys apart in logs and tables.
    pub fn fingerprint(&self) -> String {
        hex(&self.0[..8])
    }

    /// Checks `signature` over `hash`, as made by [`NodeIdentity::sign_handshake`].
    pub fn verify_handshake(&self, hash: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let mut message = SIGN_LABEL.to_vec();
        message.extend_from_slice(hash);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&message, signature)
            .map_err(|_| IdentityError::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// A node's key pair.
pub struct NodeIdentity {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeIdentity({})", self.public.fingerprint())
    }
}

impl NodeIdentity {
    /// A new key pair and its PKCS#8 encoding (what to store; it holds the secret).
    pub fn generate() -> Result<(Self, Vec<u8>), IdentityError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| IdentityError::Random)?;
        let me = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((me, pkcs8.as_ref().to_vec()))
    }

    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, IdentityError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|e| IdentityError::BadKeyFile(e.to_string()))?;
        let public = PublicKey::from_slice(pair.public_key().as_ref())
            .ok_or(IdentityError::BadKeyFile("unexpected public key length".into()))?;
        Ok(Self { pair, public })
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs a handshake hash.
    pub fn sign_handshake(&self, hash: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut message = SIGN_LABEL.to_vec();
        message.extend_from_slice(hash);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(&message).as_ref());
        out
    }

    /// Message 3's proof: the signature, and the token's MAC when joining with one.
    pub fn prove(&self, hash: &[u8], token: Option<&JoinToken>) -> Vec<u8> {
        let mut proof = self.sign_handshake(hash).to_vec();
        if let Some(token) = token {
            proof.extend_from_slice(&token.mac(hash, &self.public));
        }
        proof
    }
}

/// What message 3 proved, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub signature: [u8; SIGNATURE_LEN],
    pub token_mac: Option<[u8; TOKEN_MAC_LEN]>,
}

impl Proof {
    pub fn parse(bytes: &[u8]) -> Result<Self, IdentityError> {
        let (sig, rest) = match bytes.split_at_checked(SIGNATURE_LEN) {
            Some(parts) => parts,
            None => return Err(IdentityError::Malformed("no signature")),
        };
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(sig);
        let token_mac = match rest.len() {
            0 => None,
            TOKEN_MAC_LEN => {
                let mut mac = [0u8; TOKEN_MAC_LEN];
                mac.copy_from_slice(rest);
                Some(mac)
            }
            _ => return Err(IdentityError::Malformed("trailing bytes after the signature")),
        };
        Ok(Self { signature, token_mac })
    }

    /// Checks the signature of `key` over `hash`.
    pub fn verify(&self, key: &PublicKey, hash: &[u8]) -> Result<(), IdentityError> {
        key.verify_handshake(hash, &self.signature)
    }
}

/// A one-time (or few-times) credential a master issues so that a new worker may join:
/// `<16 hex id>.<64 hex secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    secret: [u8; TOKEN_SECRET_LEN],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.***)", self.id)
    }
}

impl JoinToken {
    pub fn generate() -> Result<Self, IdentityError> {
        let mut id = [0u8; TOKEN_ID_LEN];
        let mut secret = [0u8; TOKEN_SECRET_LEN];
        getrandom::fill(&mut id).map_err(|_| IdentityError::Random)?;
        getrandom::fill(&mut secret).map_err(|_| IdentityError::Random)?;
        Ok(Self { id: hex(&id), secret })
    }

    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let (id, secret) = text.trim().split_once('.').ok_or(IdentityError::BadToken("expected <id>.<secret>"))?;
        check_token_id(id)?;
        let bytes = unhex(secret).ok_or(IdentityError::BadToken("the secret is not hex"))?;
        let secret = bytes.try_into().map_err(|_| IdentityError::BadToken("the secret is not 64 hex characters"))?;
        Ok(Self { id: id.to_string(), secret })
    }

    /// From an id and a secret as stored by the master.
    pub fn from_parts(id: &str, secret: &[u8]) -> Result<Self, IdentityError> {
        check_token_id(id)?;
        let secret = secret.try_into().map_err(|_| IdentityError::BadToken("the secret is not 32 bytes"))?;
        Ok(Self { id: id.to_string(), secret })
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The full token, to hand to an operator (it is a secret).
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, hex(&self.secret))
    }

    /// HMAC-SHA256 under the secret of the handshake hash and the joining node's public key.
    pub fn mac(&self, hash: &[u8], key: &PublicKey) -> [u8; TOKEN_MAC_LEN] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(JOIN_LABEL);
        ctx.update(hash);
        ctx.update(&key.0);
        let mut out = [0u8; TOKEN_MAC_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Checks a MAC made by [`JoinToken::mac`], in constant time.
    pub fn verify_mac(&self, hash: &[u8], key: &PublicKey, mac: &[u8]) -> Result<(), IdentityError> {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        let mut message = JOIN_LABEL.to_vec();
        message.extend_from_slice(hash);
        message.extend_from_slice(&key.0);
        hmac::verify(&k, &message, mac).map_err(|_| IdentityError::BadTokenProof)
    }
}

/// A token id: 16 lowercase hex characters.
pub fn check_token_id(id: &str) -> Result<(), IdentityError> {
    if id.len() == TOKEN_ID_LEN * 2 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(IdentityError::BadToken("the id is not 16 lowercase hex characters"))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_hash_and_key() {
        let (me, pkcs8) = NodeIdentity::generate().unwrap();
        let again = NodeIdentity::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(me.public_key(), again.public_key());
        let (other, _) = NodeIdentity::generate().unwrap();
        let proof = Proof::parse(&me.prove(b"hash-1", None)).unwrap();
        assert!(proof.verify(&me.public_key(), b"hash-1").is_ok());
        assert_eq!(proof.verify(&me.public_key(), b"hash-2"), Err(IdentityError::BadSignature));
        assert_eq!(proof.verify(&other.public_key(), b"hash-1"), Err(IdentityError::BadSignature));
        assert!(NodeIdentity::from_pkcs8(b"not a key").is_err());
    }

    #[test]
    fn a_token_round_trips_and_its_mac_binds_hash_and_key() {
        let token = JoinToken::generate().unwrap();
        let parsed = JoinToken::parse(&token.reveal()).unwrap();
        assert_eq!(parsed, token);
        assert!(!format!("{token:?}").contains(&hex(token.secret())), "Debug hides the secret");
        let (me, _) = NodeIdentity::generate().unwrap();
        let (other, _) = NodeIdentity::generate().unwrap();
        let proof = Proof::parse(&me.prove(b"h", Some(&token))).unwrap();
        let mac = proof.token_mac.unwrap();
        assert!(token.verify_mac(b"h", &me.public_key(), &mac).is_ok());
        assert!(token.verify_mac(b"x", &me.public_key(), &mac).is_err());
        assert!(token.verify_mac(b"h", &other.public_key(), &mac).is_err());
        let wrong = JoinToken::generate().unwrap();
        assert!(wrong.verify_mac(b"h", &me.public_key(), &mac).is_err());
    }

    #[test]
    fn malformed_tokens_and_proofs_are_named() {
        for bad in ["", "abc", "0123456789abcdef", "0123456789ABCDEF.00", "0123456789abcdef.zz", "0123.00"] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Proof::parse(&[0u8; 10]).is_err());
        assert!(Proof::parse(&[0u8; SIGNATURE_LEN + 5]).is_err());
        assert_eq!(Proof::parse(&[0u8; SIGNATURE_LEN]).unwrap().token_mac, None);
    }
}
