//! The wire of the wazuh-multi-node cluster channel, with no actors and no sockets.
//!
//! Layers, each testable on byte slices:
//! - [`frame`]: `u32` big-endian length prefix; the maximum size is checked from the header, before
//!   anything is allocated, and the buffer only ever grows with bytes that actually arrived.
//! - [`handshake`]: Noise `NNpsk0` (through `snow`) keyed by the cluster key stretched with Argon2id,
//!   plus a key-confirmation message from the initiator, so both sides prove they hold the key. The
//!   transcript binds both nodes' hellos (names, cluster name, role, protocol version range).
//! - [`transport`]: after the handshake each direction has its own key and a counter nonce; every
//!   frame is AEAD-sealed (ChaCha20-Poly1305 or AES-256-GCM) with its length header as associated
//!   data, so a replayed, reordered, dropped, truncated or tampered frame fails to open.
//! - [`message`]: closed enums of plain structs, one per direction, in MessagePack (rmp-serde),
//!   wrapped in an [`message::Envelope`] that carries the message kind and request id inside the
//!   sealed payload.
//! - [`codec`]: `tokio_util::codec` encoders/decoders stacking the layers for a framed socket.

pub mod agent;
pub mod codec;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod key;
pub mod message;
pub mod ruleset;
pub mod suite;
pub mod sync;
pub mod transport;
pub mod version;

pub use codec::{ChannelError, MessageDecoder, MessageEncoder};
pub use handshake::{HandshakeError, Hello, Refusal};
pub use key::{ClusterKey, KeyError, Psk};
pub use message::{Envelope, Kind, MasterToWorker, RequestId, Role, WorkerToMaster};
pub use suite::CipherSuite;
pub use version::ProtocolVersion;

/// Default cluster port, as Wazuh's.
pub const DEFAULT_CLUSTER_PORT: u16 = 1516;
/// Default cap on one sealed frame (header excluded). Larger payloads are split by the layer above.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
