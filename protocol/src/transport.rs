//! Sealed transport frames: `[u32 length][ciphertext][16-byte tag]`.
//!
//! Each direction has its own key (the two halves of the Noise split) and a 64-bit counter nonce
//! that both ends advance in step. The length header is the associated data. A frame that was
//! replayed, reordered, dropped, cut or altered therefore fails to open, and the connection must be
//! closed: a failed [`Opener`] is poisoned and refuses everything after.

use crate::frame::{self, FrameError, HEADER_LEN};
use crate::suite::CipherSuite;
use aes_gcm::Aes256Gcm;
use bytes::{BufMut, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::Zeroize;

/// Bytes added to every frame by the AEAD tag.
pub const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error(
        "frame {seq} failed authentication: it was tampered with, replayed, reordered, cut, or sealed with another key"
    )]
    Authentication { seq: u64 },
    #[error("frame of {len} bytes is too short to hold an authentication tag")]
    TooShort { len: usize },
    #[error("message of {len} bytes does not fit in a frame of at most {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    #[error("the nonce counter is exhausted; the connection must be re-established")]
    NonceExhausted,
    #[error("the channel already failed and accepts nothing more")]
    Poisoned,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

enum Cipher {
    ChaCha(Box<ChaCha20Poly1305>),
    Aes(Box<Aes256Gcm>),
}

impl Cipher {
    fn new(suite: CipherSuite, key: &[u8; 32]) -> Self {
        match suite {
            CipherSuite::ChaCha20Poly1305 => Cipher::ChaCha(Box::new(ChaCha20Poly1305::new(key.into()))),
            CipherSuite::Aes256Gcm => Cipher::Aes(Box::new(Aes256Gcm::new(key.into()))),
        }
    }

    /// Nonces as Noise lays them out: 4 zero bytes, then the counter (little-endian for ChaChaPoly,
    /// big-endian for AESGCM).
    fn nonce(&self, n: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        match self {
            Cipher::ChaCha(_) => nonce[4..].copy_from_slice(&n.to_le_bytes()),
            Cipher::Aes(_) => nonce[4..].copy_from_slice(&n.to_be_bytes()),
        }
        nonce
    }

    fn seal(&self, n: u64, ad: &[u8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let nonce = self.nonce(n);
        let tag = match self {
            Cipher::ChaCha(c) => c.encrypt_in_place_detached(&nonce.into(), ad, buf).ok()?,
            Cipher::Aes(c) => c.encrypt_in_place_detached(&nonce.into(), ad, buf).ok()?,
        };
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        Some(out)
    }

    fn open(&self, n: u64, ad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        let nonce = self.nonce(n);
        match self {
            Cipher::ChaCha(c) => c.decrypt_in_place_detached(&nonce.into(), ad, buf, tag.into()).is_ok(),
            Cipher::Aes(c) => c.decrypt_in_place_detached(&nonce.into(), ad, buf, tag.into()).is_ok(),
        }
    }
}

/// The sending half of a channel.
pub struct Sealer {
    cipher: Cipher,
    next: u64,
    max: usize,
}

/// The receiving half of a channel.
pub struct Opener {
    cipher: Cipher,
    next: u64,
    max: usize,
    poisoned: bool,
}

/// Builds both halves of one end from raw keys: the handshake's split, or fixed keys in tests and
/// fuzzing.
pub fn pair(suite: CipherSuite, mut send: [u8; 32], mut recv: [u8; 32], max: usize) -> (Sealer, Opener) {
    let sealer = Sealer { cipher: Cipher::new(suite, &send), next: 0, max };
    let opener = Opener { cipher: Cipher::new(suite, &recv), next: 0, max, poisoned: false };
    send.zeroize();
    recv.zeroize();
    (sealer, opener)
}

impl Sealer {
    /// Appends one sealed frame to `dst`; `write` appends the plaintext. On error `dst` is left as
    /// it was and no nonce is used.
    pub fn seal_with<E>(
        &mut self,
        dst: &mut BytesMut,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<Result<(), TransportError>, E> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = write(dst) {
            dst.truncate(start);
            return Err(e);
        }
        Ok(self.finish(dst, start))
    }

    /// Appends one sealed frame holding `plaintext`.
    pub fn seal(&mut self, dst: &mut BytesMut, plaintext: &[u8]) -> Result<(), TransportError> {
        dst.reserve(HEADER_LEN + plaintext.len() + TAG_LEN);
        let start = dst.len();
        dst.put_u32(0);
        dst.extend_from_slice(plaintext);
        self.finish(dst, start)
    }

    fn finish(&mut self, dst: &mut BytesMut, start: usize) -> Result<(), TransportError> {
        let plain_len = dst.len() - start - HEADER_LEN;
        let body_len = plain_len + TAG_LEN;
        if body_len > self.max || body_len > u32::MAX as usize {
            dst.truncate(start);
            return Err(TransportError::MessageTooLarge { len: plain_len, max: self.max.saturating_sub(TAG_LEN) });
        }
        if self.next == u64::MAX {
            dst.truncate(start);
            return Err(TransportError::NonceExhausted);
        }
        let header = (body_len as u32).to_be_bytes();
        dst[start..start + HEADER_LEN].copy_from_slice(&header);
        let Some(tag) = self.cipher.seal(self.next, &header, &mut dst[start + HEADER_LEN..]) else {
            dst.truncate(start);
            return Err(TransportError::MessageTooLarge { len: plain_len, max: self.max });
        };
        dst.extend_from_slice(&tag);
        self.next += 1;
        Ok(())
    }

    /// Frames sealed so far.
    pub fn sent(&self) -> u64 {
        self.next
    }
}

impl Opener {
    /// Takes one whole frame off the front of `src` and opens it. `Ok(None)`: need more bytes.
    pub fn open_from(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TransportError> {
        if self.poisoned {
            return Err(TransportError::Poisoned);
        }
        let len = match frame::peek(src, self.max) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.poisoned = true;
                return Err(e.into());
            }
        };
        let mut whole = src.split_to(HEADER_LEN + len);
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&whole[..HEADER_LEN]);
        let _ = whole.split_to(HEADER_LEN);
        self.open_body(&header, whole).map(Some)
    }

    fn open_body(&mut self, header: &[u8; HEADER_LEN], mut body: BytesMut) -> Result<BytesMut, TransportError> {
        if body.len() < TAG_LEN {
            self.poisoned = true;
            return Err(TransportError::TooShort { len: body.len() });
        }
        if self.next == u64::MAX {
            self.poisoned = true;
            return Err(TransportError::NonceExhausted);
        }
        let tag = body.split_off(body.len() - TAG_LEN);
        if !self.cipher.open(self.next, header, &mut body, &tag) {
            self.poisoned = true;
            return Err(TransportError::Authentication { seq: self.next });
        }
        self.next += 1;
        Ok(body)
    }

    /// Frames opened so far.
    pub fn received(&self) -> u64 {
        self.next
    }

    pub fn max_frame(&self) -> usize {
        self.max
    }
}

/// Raw AEAD over one buffer with the same crates and nonce layout, for benchmarks that compare the
/// channel's cost with the ciphers' own.
#[doc(hidden)]
pub struct RawAead(Cipher);

#[doc(hidden)]
impl RawAead {
    pub fn new(suite: CipherSuite, key: &[u8; 32]) -> Self {
        Self(Cipher::new(suite, key))
    }
    pub fn seal(&self, n: u64, buf: &mut [u8]) -> [u8; TAG_LEN] {
        self.0.seal(n, &[], buf).unwrap_or([0; TAG_LEN])
    }
    pub fn open(&self, n: u64, buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        self.0.open(n, &[], buf, tag)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn channel(suite: CipherSuite, max: usize) -> ((Sealer, Opener), (Sealer, Opener)) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        (pair(suite, a, b, max), pair(suite, b, a, max))
    }

    fn sealed(sealer: &mut Sealer, text: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        sealer.seal(&mut out, text).unwrap();
        out
    }

    #[test]
    fn frames_open_in_order_for_both_suites() {
        for suite in CipherSuite::ALL {
            let ((mut tx, _), (_, mut rx)) = channel(suite, 1 << 20);
            let mut wire = BytesMut::new();
            for i in 0..5u8 {
                tx.seal(&mut wire, &[i; 100]).unwrap();
            }
            for i in 0..5u8 {
                assert_eq!(&rx.open_from(&mut wire).unwrap().unwrap()[..], &[i; 100][..]);
            }
            assert!(wire.is_empty());
            assert_eq!((tx.sent(), rx.received()), (5, 5));
        }
    }

    #[test]
    fn ciphertext_hides_the_plaintext() {
        let ((mut tx, _), _) = channel(CipherSuite::ChaCha20Poly1305, 1024);
        let wire = sealed(&mut tx, b"KeepAlive KeepAlive KeepAlive");
        assert!(!wire.windows(9).any(|w| w == b"KeepAlive"));
    }

    #[test]
    fn replayed_frame_fails_and_poisons() {
        let ((mut tx, _), (_, mut rx)) = channel(CipherSuite::ChaCha20Poly1305, 1024);
        let first = sealed(&mut tx, b"one");
        let mut wire = first.clone();
        rx.open_from(&mut wire).unwrap().unwrap();
        let mut replay = first;
        assert_eq!(rx.open_from(&mut replay).unwrap_err(), TransportError::Authentication { seq: 1 });
        let mut next = sealed(&mut tx, b"two");
        assert_eq!(rx.open_from(&mut next).unwrap_err(), TransportError::Poisoned);
    }

    #[test]
    fn reordered_and_dropped_frames_fail() {
        for suite in CipherSuite::ALL {
            let ((mut tx, _), (_, mut rx)) = channel(suite, 1024);
            let _a = sealed(&mut tx, b"a");
            let mut b = sealed(&mut tx, b"b");
            // `a` never arrives (dropped) or arrives after `b` (reordered): `b` fails either way.
            assert!(matches!(rx.open_from(&mut b), Err(TransportError::Authentication { seq: 0 })));
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let ((mut tx, _), _) = channel(CipherSuite::Aes256Gcm, 1024);
        let wire = sealed(&mut tx, b"a short message");
        for bit in 0..wire.len() * 8 {
            let mut bad = wire.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let (_, (_, mut rx)) = channel(CipherSuite::Aes256Gcm, 1024);
            assert!(!matches!(rx.open_from(&mut bad), Ok(Some(_))), "bit {bit} flipped and the frame still opened");
        }
    }

    #[test]
    fn wrong_key_or_other_suite_fails() {
        let ((mut tx, _), _) = channel(CipherSuite::ChaCha20Poly1305, 1024);
        let wire = sealed(&mut tx, b"secret");
        let mut other = pair(CipherSuite::ChaCha20Poly1305, [9; 32], [9; 32], 1024).1;
        assert!(other.open_from(&mut wire.clone()).is_err());
        let mut aes = pair(CipherSuite::Aes256Gcm, [2; 32], [1; 32], 1024).1;
        assert!(aes.open_from(&mut wire.clone()).is_err());
    }

    #[test]
    fn tiny_and_oversized_frames_are_refused() {
        let (_, (_, mut rx)) = channel(CipherSuite::ChaCha20Poly1305, 64);
        let mut tiny = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
        assert_eq!(rx.open_from(&mut tiny).unwrap_err(), TransportError::TooShort { len: 3 });
        let (_, (_, mut rx)) = channel(CipherSuite::ChaCha20Poly1305, 64);
        let mut big = BytesMut::from(&65u32.to_be_bytes()[..]);
        assert!(matches!(
            rx.open_from(&mut big),
            Err(TransportError::Frame(FrameError::TooLarge { len: 65, max: 64 }))
        ));
        let ((mut tx, _), _) = channel(CipherSuite::ChaCha20Poly1305, 64);
        let mut out = BytesMut::new();
        assert!(matches!(tx.seal(&mut out, &[0; 49]), Err(TransportError::MessageTooLarge { .. })));
        assert!(out.is_empty());
        tx.seal(&mut out, &[0; 48]).unwrap();
        assert_eq!(tx.sent(), 1, "the failed seal used no nonce");
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let ((mut tx, _), (_, mut rx)) = channel(CipherSuite::ChaCha20Poly1305, 1024);
        let wire = sealed(&mut tx, b"partial");
        let mut buf = BytesMut::new();
        for byte in &wire[..wire.len() - 1] {
            buf.put_u8(*byte);
            assert_eq!(rx.open_from(&mut buf).unwrap(), None);
        }
        buf.put_u8(wire[wire.len() - 1]);
        assert_eq!(&rx.open_from(&mut buf).unwrap().unwrap()[..], b"partial");
    }
}
