//! The cluster handshake: Noise `NNpsk0` keyed by the stretched cluster key, plus key confirmation.
//!
//! ```text
//! 1. initiator -> responder  "WMN\x01" | suite | Noise(psk, e) + sealed Hello      (plain frame)
//! 2. responder -> initiator  0x02 | Noise(e, ee) + sealed Reply                     (plain frame)
//!                        or  0x7f | reject code, in clear, when message 1 is unusable
//! 3. initiator -> responder  transport-sealed "WMN-FINISHED" | handshake hash        (plain frame)
//! ```
//!
//! Both ephemeral keys are fresh per connection (forward secrecy); the two halves of the Noise split
//! key the two directions. Message 1 only decrypts with the cluster key; message 2 only with the
//! key and the initiator's ephemeral secret, which authenticates the responder; message 3 proves to
//! the responder that the initiator is live and holds the key (message 1 alone could be a replay).
//! Every payload is mixed into the handshake hash, so both hellos (node names, cluster name, role,
//! version range) are bound into the transcript, and the suite is bound through the prologue.
//!
//! Everything here works on byte slices; `actors` moves the frames over sockets with a deadline.

use crate::key::Psk;
use crate::message::Role;
use crate::suite::CipherSuite;
use crate::transport::{self, Opener, Sealer, TransportError, TAG_LEN};
use crate::version::{ProtocolVersion, VersionRange};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use snow::{Builder, HandshakeState};
use std::fmt;

/// First bytes of every connection: a magic tag and the wire format generation.
pub const MAGIC: [u8; 4] = *b"WMN\x01";
/// Cap on each handshake frame. Nothing larger is buffered before the peer has proved the key.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Longest node or cluster name.
pub const MAX_NAME_LEN: usize = 128;

const PROLOGUE_LABEL: &[u8] = b"wazuh-multi-node cluster handshake";
const TAG_REPLY: u8 = 0x02;
const TAG_REJECT: u8 = 0x7f;
const FINISHED_LABEL: &[u8] = b"WMN-FINISHED";
/// Noise's own message limit.
const NOISE_MAX_MSG: usize = 65535;

/// What a node says about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_name: String,
    pub role: Role,
    pub cluster_name: String,
    pub versions: VersionRange,
    /// The software version, for operators (`wazuh-cluster nodes`).
    pub software: String,
    /// The node's identity ([`crate::identity::PublicKey`]); message 3 proves it is held.
    #[serde(default, with = "serde_bytes")]
    pub public_key: Option<Vec<u8>>,
    /// A worker joining with a join token: the token's id (the secret never travels; message 3
    /// carries a MAC made with it).
    #[serde(default)]
    pub join_token: Option<String>,
}

/// Why an authenticated peer was turned away; sent to it, sealed, and logged on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    WrongCluster {
        expected: String,
        got: String,
    },
    IncompatibleVersion {
        ours: VersionRange,
        theirs: VersionRange,
    },
    InvalidName {
        name: String,
        reason: String,
    },
    DuplicateName {
        name: String,
    },
    WrongRole {
        expected: Role,
        got: Role,
    },
    ShuttingDown,
    /// The peer sent no node identity (a node older than identities).
    IdentityRequired,
    /// This node's identity (or its name) was revoked by an operator.
    Revoked {
        name: String,
    },
    /// The master does not know this node and it brought no usable join token.
    NotAdmitted {
        name: String,
        reason: String,
    },
    /// A master-eligible node that does not lead (high availability): the worker should dial the
    /// leader, at this address when known.
    NotLeader {
        leader: Option<String>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::WrongCluster { expected, got } => {
                write!(f, "wrong cluster name {got:?} (this cluster is {expected:?})")
            }
            Refusal::IncompatibleVersion { ours, theirs } => {
                write!(f, "incompatible protocol versions: peer speaks {theirs}, this node {ours}")
            }
            Refusal::InvalidName { name, reason } => write!(f, "invalid node name {name:?}: {reason}"),
            Refusal::DuplicateName { name } => write!(f, "a node named {name:?} is already connected"),
            Refusal::WrongRole { expected, got } => write!(f, "a {got} cannot connect here (expected a {expected})"),
            Refusal::ShuttingDown => f.write_str("the node is shutting down"),
            Refusal::IdentityRequired => f.write_str("the node sent no identity key (upgrade it)"),
            Refusal::Revoked { name } => write!(f, "the identity of {name:?} was revoked by an operator"),
            Refusal::NotAdmitted { name, reason } => write!(f, "{name:?} is not admitted: {reason}"),
            Refusal::NotLeader { leader: Some(l) } => {
                write!(f, "this node does not lead the masters; the leader is {l}")
            }
            Refusal::NotLeader { leader: None } => {
                f.write_str("this node does not lead the masters; no leader is known yet")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Accepted {
        hello: Hello,
        version: ProtocolVersion,
        /// The responder's signature, by its identity key, of the handshake hash after message 1
        /// (which covers the initiator's fresh ephemeral key): see [`Responder::accept_signed`].
        #[serde(default, with = "serde_bytes")]
        signature: Option<Vec<u8>>,
    },
    Refused {
        hello: Hello,
        refusal: Refusal,
    },
}

/// Failures that a responder reports in clear, before any key is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    AuthenticationFailed,
    UnsupportedSuite,
    Malformed,
}

impl Reject {
    fn code(self) -> u8 {
        match self {
            Reject::AuthenticationFailed => 1,
            Reject::UnsupportedSuite => 2,
            Reject::Malformed => 3,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        [Reject::AuthenticationFailed, Reject::UnsupportedSuite, Reject::Malformed]
            .into_iter()
            .find(|r| r.code() == code)
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reject::AuthenticationFailed => "it does not accept our cluster key",
            Reject::UnsupportedSuite => "it is configured for another cipher",
            Reject::Malformed => "it could not parse our handshake",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("not a wazuh-multi-node cluster peer (unexpected first bytes)")]
    NotAClusterPeer,
    #[error("the peer offers an unknown cipher suite (id {0})")]
    UnknownSuite(u8),
    #[error("cipher mismatch: the peer uses {theirs}, this node is configured for {ours}")]
    SuiteMismatch { ours: CipherSuite, theirs: CipherSuite },
    #[error("authentication failed: the peer does not hold this cluster's key")]
    Authentication,
    #[error("the peer refused the handshake: {0}")]
    Rejected(Reject),
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    #[error("key confirmation failed: the peer did not prove it holds the session keys")]
    Confirmation,
    #[error("handshake failed internally: {0}")]
    Internal(String),
}

impl HandshakeError {
    /// The clear-text rejection a responder should send for this error, if any.
    pub fn reject_code(&self) -> Option<Reject> {
        match self {
            HandshakeError::Authentication => Some(Reject::AuthenticationFailed),
            HandshakeError::UnknownSuite(_) | HandshakeError::SuiteMismatch { .. } => Some(Reject::UnsupportedSuite),
            HandshakeError::Malformed(_) => Some(Reject::Malformed),
            _ => None,
        }
    }
}

fn internal(e: impl fmt::Display) -> HandshakeError {
    HandshakeError::Internal(e.to_string())
}

/// Checks a node name: `[A-Za-z0-9_-]+`, at most [`MAX_NAME_LEN`] characters.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        Some(c) => Err(format!("character {c:?} is not allowed (only A-Z, a-z, 0-9, '_' and '-')")),
        None => Ok(()),
    }
}

/// An established channel: the two halves of the transport.
pub struct Channel {
    pub sealer: Sealer,
    pub opener: Opener,
    pub suite: CipherSuite,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("suite", &self.suite).finish_non_exhaustive()
    }
}

fn prologue(suite: CipherSuite) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&MAGIC);
    p.push(suite.wire_id());
    p
}

fn builder_state(psk: &Psk, suite: CipherSuite, initiator: bool) -> Result<HandshakeState, HandshakeError> {
    let params = suite.noise_params().parse().map_err(internal)?;
    let prologue = prologue(suite);
    let builder =
        Builder::new(params).psk(0, psk.as_bytes()).map_err(internal)?.prologue(&prologue).map_err(internal)?;
    if initiator {
        builder.build_initiator().map_err(internal)
    } else {
        builder.build_responder().map_err(internal)
    }
}

fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, HandshakeError> {
    let bytes = rmp_serde::to_vec_named(value).map_err(internal)?;
    if bytes.len() > MAX_HANDSHAKE_FRAME - 128 {
        return Err(HandshakeError::Internal("handshake payload too large".into()));
    }
    Ok(bytes)
}

fn decode_payload<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, HandshakeError> {
    rmp_serde::from_slice(bytes).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

fn write_noise(hs: &mut HandshakeState, payload: &[u8], prefix: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; prefix.len() + payload.len() + 64 + TAG_LEN];
    out[..prefix.len()].copy_from_slice(prefix);
    let n = hs.write_message(payload, &mut out[prefix.len()..]).map_err(internal)?;
    out.truncate(prefix.len() + n);
    Ok(out)
}

fn read_noise(hs: &mut HandshakeState, msg: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    if msg.len() > NOISE_MAX_MSG {
        return Err(HandshakeError::Malformed("handshake message too long".into()));
    }
    let mut payload = vec![0u8; msg.len()];
    match hs.read_message(msg, &mut payload) {
        Ok(n) => {
            payload.truncate(n);
            Ok(payload)
        }
        Err(snow::Error::Decrypt) => Err(HandshakeError::Authentication),
        Err(snow::Error::Input) => Err(HandshakeError::Malformed("handshake message too short".into())),
        Err(e) => Err(HandshakeError::Malformed(e.to_string())),
    }
}

fn split(hs: &mut HandshakeState, suite: CipherSuite, initiator: bool, max_frame: usize) -> Channel {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    let (sealer, opener) = transport::pair(suite, send, recv, max_frame);
    Channel { sealer, opener, suite }
}

/// The dialling side (a worker).
pub struct Initiator {
    hs: HandshakeState,
    suite: CipherSuite,
    max_frame: usize,
    /// The handshake hash after message 1 (what the responder signs).
    hello_hash: Vec<u8>,
}

/// How the responder answered.
#[derive(Debug)]
pub enum InitiatorOutcome {
    /// Send `confirmation` as the next handshake frame, then use `channel`.
    Accepted {
        peer: Hello,
        version: ProtocolVersion,
        channel: Channel,
        confirmation: Vec<u8>,
        /// The responder's signature of `hello_hash`, if it sent one (its identity proof).
        signature: Option<Vec<u8>>,
        /// The handshake hash after message 1, which the signature covers.
        hello_hash: Vec<u8>,
    },
    /// The responder authenticated us and turned us away, saying why.
    Refused { peer: Hello, refusal: Refusal },
}

impl Initiator {
    /// Builds message 1. `max_frame` is the transport frame cap used once established.
    pub fn start(
        psk: &Psk,
        suite: CipherSuite,
        hello: &Hello,
        max_frame: usize,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::start_with_payload(psk, suite, &encode_payload(hello)?, max_frame)
    }

    /// Message 1 around an arbitrary payload; for fuzzing the responder's payload parsing.
    #[doc(hidden)]
    pub fn start_with_payload(
        psk: &Psk,
        suite: CipherSuite,
        payload: &[u8],
        max_frame: usize,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        if payload.len() > MAX_HANDSHAKE_FRAME - 128 {
            return Err(HandshakeError::Internal("handshake payload too large".into()));
        }
        let mut hs = builder_state(psk, suite, true)?;
        let mut prefix = MAGIC.to_vec();
        prefix.push(suite.wire_id());
        let msg1 = write_noise(&mut hs, payload, &prefix)?;
        let hello_hash = hs.get_handshake_hash().to_vec();
        Ok((Self { hs, suite, max_frame, hello_hash }, msg1))
    }

    /// Reads message 2 and, when accepted, builds message 3, with what `prove` makes of the
    /// handshake hash appended (the node's identity proof; see [`crate::identity`]).
    pub fn finish(
        mut self,
        msg2: &[u8],
        prove: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<InitiatorOutcome, HandshakeError> {
        match msg2 {
            [TAG_REJECT, code] => Err(HandshakeError::Rejected(Reject::from_code(*code).unwrap_or(Reject::Malformed))),
            [TAG_REPLY, rest @ ..] => {
                let payload = read_noise(&mut self.hs, rest)?;
                let reply: Reply = decode_payload(&payload)?;
                match reply {
                    Reply::Refused { hello, refusal } => Ok(InitiatorOutcome::Refused { peer: hello, refusal }),
                    Reply::Accepted { hello, version, signature } => {
                        if !self.hs.is_handshake_finished() {
                            return Err(internal("noise handshake not finished after message 2"));
                        }
                        let hash = self.hs.get_handshake_hash().to_vec();
                        let mut channel = split(&mut self.hs, self.suite, true, self.max_frame);
                        let mut plain = FINISHED_LABEL.to_vec();
                        plain.extend_from_slice(&hash);
                        plain.extend_from_slice(&prove(&hash));
                        let mut sealed = BytesMut::new();
                        channel.sealer.seal(&mut sealed, &plain).map_err(internal)?;
                        // The frame header is re-added by the plain framing layer; it is the same.
                        let confirmation = sealed.split_off(crate::frame::HEADER_LEN).to_vec();
                        Ok(InitiatorOutcome::Accepted {
                            peer: hello,
                            version,
                            channel,
                            confirmation,
                            signature,
                            hello_hash: self.hello_hash,
                        })
                    }
                }
            }
            _ => Err(HandshakeError::Malformed("unexpected reply to the first handshake message".into())),
        }
    }
}

/// The accepting side (the master).
pub struct Responder {
    hs: HandshakeState,
    suite: CipherSuite,
    max_frame: usize,
}

/// Waiting for message 3.
pub struct PendingConfirmation {
    channel: Channel,
    hash: Vec<u8>,
}

/// What message 3 carried besides the confirmation: the handshake hash it confirmed and the
/// initiator's identity proof, for the caller to check (see [`crate::identity::Proof`]).
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub hash: Vec<u8>,
    pub proof: Vec<u8>,
}

/// Message 2 of a rejection, sent in clear.
pub fn reject_message(reject: Reject) -> Vec<u8> {
    vec![TAG_REJECT, reject.code()]
}

impl Responder {
    /// Reads message 1 and returns the peer's hello. The hello is authentic only in that it was
    /// sealed with the cluster key; liveness is proved by message 3.
    pub fn read_hello(
        psk: &Psk,
        suite: CipherSuite,
        max_frame: usize,
        msg1: &[u8],
    ) -> Result<(Self, Hello), HandshakeError> {
        let Some(rest) = msg1.strip_prefix(&MAGIC[..]) else {
            return Err(HandshakeError::NotAClusterPeer);
        };
        let Some((&suite_id, noise)) = rest.split_first() else {
            return Err(HandshakeError::Malformed("first handshake message ends after the magic".into()));
        };
        let theirs = CipherSuite::from_wire_id(suite_id).ok_or(HandshakeError::UnknownSuite(suite_id))?;
        if theirs != suite {
            return Err(HandshakeError::SuiteMismatch { ours: suite, theirs });
        }
        let mut hs = builder_state(psk, suite, false)?;
        let payload = read_noise(&mut hs, noise)?;
        let hello: Hello = decode_payload(&payload)?;
        Ok((Self { hs, suite, max_frame }, hello))
    }

    /// Accepts the peer at `version` and builds message 2.
    pub fn accept(
        self,
        ours: &Hello,
        version: ProtocolVersion,
    ) -> Result<(Vec<u8>, PendingConfirmation), HandshakeError> {
        self.accept_signed(ours, version, |_| None)
    }

    /// As [`Responder::accept`], with `sign`'s signature of the handshake hash after message 1 in
    /// the reply. Message 2 is readable only with the initiator's ephemeral secret, so the
    /// signature reaches no one else, and the hash it covers is unique to this connection.
    pub fn accept_signed(
        mut self,
        ours: &Hello,
        version: ProtocolVersion,
        sign: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, PendingConfirmation), HandshakeError> {
        let signature = sign(self.hs.get_handshake_hash());
        let msg2 = write_noise(
            &mut self.hs,
            &encode_payload(&Reply::Accepted { hello: ours.clone(), version, signature })?,
            &[TAG_REPLY],
        )?;
        if !self.hs.is_handshake_finished() {
            return Err(internal("noise handshake not finished after message 2"));
        }
        let hash = self.hs.get_handshake_hash().to_vec();
        let channel = split(&mut self.hs, self.suite, false, self.max_frame);
        Ok((msg2, PendingConfirmation { channel, hash }))
    }

    /// Refuses the (authenticated) peer, telling it why.
    pub fn refuse(mut self, ours: &Hello, refusal: Refusal) -> Result<Vec<u8>, HandshakeError> {
        write_noise(&mut self.hs, &encode_payload(&Reply::Refused { hello: ours.clone(), refusal })?, &[TAG_REPLY])
    }
}

impl PendingConfirmation {
    /// Checks message 3; on success the channel is ready, its receive counter past message 3,
    /// and the proof that followed the confirmation is returned unchecked.
    pub fn confirm(mut self, msg3: &[u8]) -> Result<(Channel, Confirmed), HandshakeError> {
        let len = u32::try_from(msg3.len()).map_err(|_| HandshakeError::Confirmation)?;
        let mut framed = BytesMut::with_capacity(msg3.len() + 4);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(msg3);
        let plain = match self.channel.opener.open_from(&mut framed) {
            Ok(Some(plain)) => plain,
            Ok(None) | Err(TransportError::Frame(_)) | Err(_) => return Err(HandshakeError::Confirmation),
        };
        let confirmed_len = FINISHED_LABEL.len() + self.hash.len();
        if plain.len() < confirmed_len
            || !plain.starts_with(FINISHED_LABEL)
            || plain[FINISHED_LABEL.len()..confirmed_len] != self.hash[..]
        {
            return Err(HandshakeError::Confirmation);
        }
        let proof = plain[confirmed_len..].to_vec();
        Ok((self.channel, Confirmed { hash: self.hash, proof }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ClusterKey;
    use crate::version::VersionRange;

    fn hello(name: &str, role: Role) -> Hello {
        Hello {
            node_name: name.into(),
            role,
            cluster_name: "wazuh".into(),
            versions: VersionRange::ours(),
            software: "test".into(),
            public_key: None,
            join_token: None,
        }
    }

    fn psk(n: u8) -> Psk {
        Psk::from_bytes([n; 32])
    }

    /// Runs a full handshake on byte slices and returns both channels.
    fn handshake(suite: CipherSuite) -> (Channel, Channel, Hello, Hello) {
        let (init, msg1) = Initiator::start(&psk(1), suite, &hello("worker-1", Role::Worker), 1 << 20).unwrap();
        let (resp, peer) = Responder::read_hello(&psk(1), suite, 1 << 20, &msg1).unwrap();
        assert_eq!(peer, hello("worker-1", Role::Worker));
        let version = VersionRange::ours().negotiate(&peer.versions).unwrap();
        let (msg2, pending) = resp.accept(&hello("master", Role::Master), version).unwrap();
        let InitiatorOutcome::Accepted { peer: master, channel: wch, confirmation, version: v, .. } =
            init.finish(&msg2, |_| Vec::new()).unwrap()
        else {
            panic!("refused")
        };
        assert_eq!(v, version);
        let (mch, confirmed) = pending.confirm(&confirmation).unwrap();
        assert!(confirmed.proof.is_empty());
        (wch, mch, master, peer)
    }

    #[test]
    fn both_suites_establish_working_channels_in_both_directions() {
        for suite in CipherSuite::ALL {
            let (mut w, mut m, master, _) = handshake(suite);
            assert_eq!(master.node_name, "master");
            let mut wire = BytesMut::new();
            w.sealer.seal(&mut wire, b"to master").unwrap();
            assert_eq!(&m.opener.open_from(&mut wire).unwrap().unwrap()[..], b"to master");
            m.sealer.seal(&mut wire, b"to worker").unwrap();
            assert_eq!(&w.opener.open_from(&mut wire).unwrap().unwrap()[..], b"to worker");
        }
    }

    #[test]
    fn directions_use_different_keys() {
        let (mut w, mut m, _, _) = handshake(CipherSuite::ChaCha20Poly1305);
        // A worker frame reflected back to the worker does not open: keys differ per direction.
        let mut wire = BytesMut::new();
        w.sealer.seal(&mut wire, b"reflect me").unwrap();
        let mut reflected = wire.clone();
        assert!(w.opener.open_from(&mut reflected).is_err());
        assert!(m.opener.open_from(&mut wire).is_ok());
    }

    #[test]
    fn each_connection_gets_fresh_keys() {
        let (mut w1, _, _, _) = handshake(CipherSuite::ChaCha20Poly1305);
        let (_, mut m2, _, _) = handshake(CipherSuite::ChaCha20Poly1305);
        let mut wire = BytesMut::new();
        w1.sealer.seal(&mut wire, b"old session").unwrap();
        assert!(m2.opener.open_from(&mut wire).is_err(), "a frame from another session must not open");
    }

    #[test]
    fn wrong_key_fails_on_the_responder_with_a_clear_reject() {
        let (init, msg1) =
            Initiator::start(&psk(1), CipherSuite::ChaCha20Poly1305, &hello("w", Role::Worker), 1024).unwrap();
        let err = Responder::read_hello(&psk(2), CipherSuite::ChaCha20Poly1305, 1024, &msg1).err().unwrap();
        assert_eq!(err, HandshakeError::Authentication);
        let reject = reject_message(err.reject_code().unwrap());
        assert_eq!(
            init.finish(&reject, |_| Vec::new()).unwrap_err(),
            HandshakeError::Rejected(Reject::AuthenticationFailed)
        );
    }

    #[test]
    fn impostor_responder_without_the_key_is_detected_by_the_initiator() {
        // An impostor answers with its own Noise state built from a guessed key.
        let (init, msg1) = Initiator::start(&psk(1), CipherSuite::Aes256Gcm, &hello("w", Role::Worker), 1024).unwrap();
        let mut fake = builder_state(&psk(3), CipherSuite::Aes256Gcm, false).unwrap();
        // It cannot read message 1, so it replies with garbage shaped like message 2.
        assert!(read_noise(&mut fake, &msg1[5..]).is_err());
        let mut msg2 = vec![TAG_REPLY];
        msg2.extend_from_slice(&[0x55; 80]);
        assert_eq!(init.finish(&msg2, |_| Vec::new()).unwrap_err(), HandshakeError::Authentication);
    }

    #[test]
    fn suite_mismatch_and_garbage_are_named() {
        let (_, msg1) = Initiator::start(&psk(1), CipherSuite::Aes256Gcm, &hello("w", Role::Worker), 1024).unwrap();
        let err = Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &msg1).err().unwrap();
        assert_eq!(
            err,
            HandshakeError::SuiteMismatch { ours: CipherSuite::ChaCha20Poly1305, theirs: CipherSuite::Aes256Gcm }
        );
        assert_eq!(err.reject_code(), Some(Reject::UnsupportedSuite));
        let cases: [(&[u8], HandshakeError); 4] = [
            (b"GET / HTTP/1.1\r\n", HandshakeError::NotAClusterPeer),
            (b"", HandshakeError::NotAClusterPeer),
            (b"WMN\x01", HandshakeError::Malformed("first handshake message ends after the magic".into())),
            (b"WMN\x01\x09rest", HandshakeError::UnknownSuite(9)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, bytes).err(),
                Some(expected)
            );
        }
        // Magic and suite fine, Noise body garbage or too short.
        let mut garbage = msg1[..5].to_vec();
        garbage[4] = CipherSuite::ChaCha20Poly1305.wire_id();
        garbage.extend_from_slice(&[0xAA; 10]);
        assert!(Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &garbage).is_err());
        garbage.extend_from_slice(&[0xAA; 100]);
        assert_eq!(
            Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &garbage).err(),
            Some(HandshakeError::Authentication)
        );
    }

    #[test]
    fn tampered_suite_byte_breaks_the_transcript() {
        // Flip the clear suite byte in flight on a responder that accepts both: the prologue no
        // longer matches and message 1 fails to authenticate.
        let (_, mut msg1) =
            Initiator::start(&psk(1), CipherSuite::ChaCha20Poly1305, &hello("w", Role::Worker), 1024).unwrap();
        msg1[4] = CipherSuite::Aes256Gcm.wire_id();
        assert!(Responder::read_hello(&psk(1), CipherSuite::Aes256Gcm, 1024, &msg1).is_err());
    }

    #[test]
    fn refusal_reaches_the_initiator_sealed() {
        let (init, msg1) =
            Initiator::start(&psk(1), CipherSuite::ChaCha20Poly1305, &hello("w", Role::Worker), 1024).unwrap();
        let (resp, _) = Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &msg1).unwrap();
        let refusal = Refusal::WrongCluster { expected: "prod".into(), got: "wazuh".into() };
        let msg2 = resp.refuse(&hello("master", Role::Master), refusal.clone()).unwrap();
        assert!(!msg2.windows(4).any(|w| w == b"prod"), "the reason is sealed");
        match init.finish(&msg2, |_| Vec::new()).unwrap() {
            InitiatorOutcome::Refused { refusal: got, peer } => {
                assert_eq!(got, refusal);
                assert_eq!(peer.node_name, "master");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn replayed_first_message_cannot_complete_the_handshake() {
        let (_, msg1) =
            Initiator::start(&psk(1), CipherSuite::ChaCha20Poly1305, &hello("w", Role::Worker), 1024).unwrap();
        // An eavesdropper replays message 1; the responder answers, but without the initiator's
        // ephemeral secret the attacker cannot produce message 3.
        let (resp, _) = Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &msg1).unwrap();
        let (_, pending) = resp.accept(&hello("master", Role::Master), crate::version::CURRENT).unwrap();
        assert_eq!(pending.confirm(&[0u8; 60]).unwrap_err(), HandshakeError::Confirmation);
        // And a genuine confirmation from another session does not fit this one.
        let (init2, msg1b) =
            Initiator::start(&psk(1), CipherSuite::ChaCha20Poly1305, &hello("w", Role::Worker), 1024).unwrap();
        let (resp2, _) = Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &msg1b).unwrap();
        let (msg2b, _pending2) = resp2.accept(&hello("master", Role::Master), crate::version::CURRENT).unwrap();
        let InitiatorOutcome::Accepted { confirmation, .. } = init2.finish(&msg2b, |_| Vec::new()).unwrap() else {
            panic!()
        };
        let (resp3, _) = Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &msg1).unwrap();
        let (_, pending3) = resp3.accept(&hello("master", Role::Master), crate::version::CURRENT).unwrap();
        assert_eq!(pending3.confirm(&confirmation).unwrap_err(), HandshakeError::Confirmation);
    }

    #[test]
    fn flipped_bits_in_handshake_messages_fail() {
        let (_, msg1) =
            Initiator::start(&psk(1), CipherSuite::ChaCha20Poly1305, &hello("w", Role::Worker), 1024).unwrap();
        for byte in 5..msg1.len() {
            let mut bad = msg1.clone();
            bad[byte] ^= 0x01;
            assert!(Responder::read_hello(&psk(1), CipherSuite::ChaCha20Poly1305, 1024, &bad).is_err(), "byte {byte}");
        }
    }

    #[test]
    fn derived_cluster_key_works_end_to_end() {
        let key = ClusterKey::new("c98b62a9b6169ac5f67dae55ae4a9088").unwrap();
        let p = key.derive_psk().unwrap();
        let (init, msg1) =
            Initiator::start(&p, CipherSuite::ChaCha20Poly1305, &hello("w", Role::Worker), 1024).unwrap();
        let (resp, _) = Responder::read_hello(&p, CipherSuite::ChaCha20Poly1305, 1024, &msg1).unwrap();
        let (msg2, pending) = resp.accept(&hello("m", Role::Master), crate::version::CURRENT).unwrap();
        let InitiatorOutcome::Accepted { confirmation, .. } = init.finish(&msg2, |_| Vec::new()).unwrap() else {
            panic!()
        };
        pending.confirm(&confirmation).unwrap();
    }

    #[test]
    fn message_3_carries_a_signed_identity_proof_bound_to_the_connection() {
        use crate::identity::{NodeIdentity, Proof};
        let (me, _) = NodeIdentity::generate().unwrap();
        let suite = CipherSuite::ChaCha20Poly1305;
        let run = || {
            let (init, msg1) = Initiator::start(&psk(1), suite, &hello("w", Role::Worker), 1024).unwrap();
            let (resp, _) = Responder::read_hello(&psk(1), suite, 1024, &msg1).unwrap();
            let (msg2, pending) = resp.accept(&hello("m", Role::Master), crate::version::CURRENT).unwrap();
            let InitiatorOutcome::Accepted { confirmation, .. } = init.finish(&msg2, |h| me.prove(h, None)).unwrap()
            else {
                panic!()
            };
            pending.confirm(&confirmation).unwrap().1
        };
        let first = run();
        let proof = Proof::parse(&first.proof).unwrap();
        proof.verify(&me.public_key(), &first.hash).unwrap();
        // Each connection has its own hash: a proof from one does not verify on another.
        let second = run();
        assert_ne!(first.hash, second.hash);
        assert!(proof.verify(&me.public_key(), &second.hash).is_err());
    }

    #[test]
    fn the_responder_signs_the_hash_of_message_1_and_the_initiator_can_check_it() {
        use crate::identity::NodeIdentity;
        let (master, _) = NodeIdentity::generate().unwrap();
        let suite = CipherSuite::Aes256Gcm;
        let (init, msg1) = Initiator::start(&psk(1), suite, &hello("w", Role::Worker), 1024).unwrap();
        let (resp, _) = Responder::read_hello(&psk(1), suite, 1024, &msg1).unwrap();
        let (msg2, _) = resp
            .accept_signed(&hello("m", Role::Master), crate::version::CURRENT, |h| {
                Some(master.sign_handshake(h).to_vec())
            })
            .unwrap();
        let InitiatorOutcome::Accepted { signature, hello_hash, .. } = init.finish(&msg2, |_| Vec::new()).unwrap()
        else {
            panic!()
        };
        let signature = signature.expect("signed");
        master.public_key().verify_handshake(&hello_hash, &signature).unwrap();
        let (other, _) = NodeIdentity::generate().unwrap();
        assert!(other.public_key().verify_handshake(&hello_hash, &signature).is_err());
    }

    #[test]
    fn node_names() {
        assert!(check_node_name("worker-01_a").is_ok());
        assert!(check_node_name("").is_err());
        assert!(check_node_name("bad name").is_err());
        assert!(check_node_name("../etc").is_err());
        assert!(check_node_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
