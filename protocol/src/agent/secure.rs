//! The agent <-> manager secure message format (remoted, TCP 1514).
//!
//! A frame is a little-endian `u32` length and a payload of at most [`MAX_PAYLOAD`] bytes. The payload
//! is `#ping`/`#pong` in clear, or a header (`!<id>!#AES:` or `#AES:` from an agent, `#AES:` from the
//! manager) followed by AES-256-CBC ciphertext (fixed IV, PKCS#7) of `'!'* + zlib(md5hex(inner) +
//! inner)`, where `inner` is a 5-digit random number, a 10-digit global counter, `:`, a 4-digit local
//! counter, `:` and the message. Every check a receiver makes is a distinct [`SecureError`].

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use md5::{Digest, Md5};
use std::cell::RefCell;
use std::io::Write;

/// Largest frame payload, and largest inflated body.
pub const MAX_PAYLOAD: usize = 65536;
/// md5hex (32) + random (5) + global (10) + ':' + local (4) + ':'.
pub const BODY_OVERHEAD: usize = 53;
/// The fixed CBC IV both ends use.
pub const IV: &[u8; 16] = b"FEDCBA0987654321";
/// Cipher tag of the AES method.
pub const AES_TAG: &[u8] = b"#AES:";
pub const PING: &[u8] = b"#ping";
pub const PONG: &[u8] = b"#pong";

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    #[error("frame length {0} is above the limit of {MAX_PAYLOAD} bytes")]
    TooLong(usize),
    #[error("empty payload")]
    Empty,
    #[error("the agent id is not followed by '!' or is not made of digits")]
    BadId,
    #[error("unknown cipher tag (only #AES: is accepted)")]
    UnknownCipher,
    #[error("the ciphertext is empty or not a multiple of 16 bytes")]
    BadCipherLength,
    #[error("bad padding (wrong key or corrupted frame)")]
    BadPadding,
    #[error("the plaintext is not a zlib stream: {0}")]
    BadZlib(String),
    #[error("the inflated body exceeds {MAX_PAYLOAD} bytes")]
    TooLarge,
    #[error("the inflated body is shorter than {BODY_OVERHEAD} bytes")]
    TooShort,
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("malformed counters")]
    BadCounters,
}

/// A payload's header: who claims to send it, and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// `Some(id)` for `!<id>!#AES:`; `None` for `#AES:` (the agent is found by its address).
    pub agent_id: Option<&'a str>,
    pub ciphertext: &'a [u8],
}

/// Splits an agent's payload into id and ciphertext.
pub fn parse_header(payload: &[u8]) -> Result<Header<'_>, SecureError> {
    if payload.is_empty() {
        return Err(SecureError::Empty);
    }
    let (agent_id, rest) = match payload.strip_prefix(b"!") {
        Some(after) => {
            let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || digits > 8 || after.get(digits) != Some(&b'!') {
                return Err(SecureError::BadId);
            }
            // Digits only: valid UTF-8.
            let id = std::str::from_utf8(&after[..digits]).map_err(|_| SecureError::BadId)?;
            (Some(id), &after[digits + 1..])
        }
        None => (None, payload),
    };
    let ciphertext = rest.strip_prefix(AES_TAG).ok_or(SecureError::UnknownCipher)?;
    Ok(Header { agent_id, ciphertext })
}

/// The AES key of an agent: the 32 ASCII bytes of md5hex of its 64-hex key.
pub fn aes_key(raw_key: &str) -> [u8; 32] {
    md5_hex(raw_key.as_bytes())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn md5_hex(data: &[u8]) -> [u8; 32] {
    let digest = Md5::digest(data);
    let mut out = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

/// A decrypted, checked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub random: u32,
    pub global: u32,
    pub local: u32,
    pub text: Vec<u8>,
}

/// Decrypts and checks a ciphertext with `key` (see [`aes_key`]).
pub fn decrypt(key: &[u8; 32], ciphertext: &[u8]) -> Result<Message, SecureError> {
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(SecureError::BadCipherLength);
    }
    let mut buf = ciphertext.to_vec();
    let plain =
        Dec::new(key.into(), IV.into()).decrypt_padded_mut::<Pkcs7>(&mut buf).map_err(|_| SecureError::BadPadding)?;
    let start = plain.iter().take_while(|&&b| b == b'!').count();
    let body = inflate_capped(&plain[start..])?;
    if body.len() < BODY_OVERHEAD {
        return Err(SecureError::TooShort);
    }
    if md5_hex(&body[32..]) != body[..32] {
        return Err(SecureError::BadChecksum);
    }
    if body[47] != b':' || body[52] != b':' {
        return Err(SecureError::BadCounters);
    }
    let num = |range: std::ops::Range<usize>| -> Result<u32, SecureError> {
        let digits = &body[range];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(SecureError::BadCounters);
        }
        std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or(SecureError::BadCounters)
    };
    Ok(Message {
        random: num(32..37)?,
        global: num(37..47)?,
        local: num(48..52)?,
        text: body[BODY_OVERHEAD..].to_vec(),
    })
}

thread_local! {
    // One compressor and one decompressor per thread, reset for each message: making new ones costs
    // more than the message itself (their state is hundreds of kilobytes to allocate and clear).
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), true));
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(true));
}

/// Messages this short go out as stored (uncompressed) zlib blocks: compressing them would save a
/// few bytes at the cost of clearing the compressor's tables (over 100 KiB) for each one, which is
/// most of what sending a keep-alive's acknowledgement costs.
const STORED_UP_TO: usize = 1024;

/// `data` as one zlib stream of stored blocks (RFC 1950/1951): any inflater reads it.
fn stored(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(usize::from(u16::MAX)).max(1);
    let mut out = Vec::with_capacity(data.len() + 5 * blocks + 6);
    // CMF: deflate with a 32 KiB window; FLG: no dictionary, the lowest level, (CMF << 8 | FLG) % 31 == 0.
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = data.chunks(usize::from(u16::MAX)).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// zlib's checksum of `data`.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5,552 bytes is the most that can be summed before `b` could overflow a u32.
    for chunk in data.chunks(5_552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// Deflates `data` as one zlib stream (stored blocks when it is short: see [`STORED_UP_TO`]).
fn deflate(data: &[u8]) -> Vec<u8> {
    if data.len() <= STORED_UP_TO {
        return stored(data);
    }
    DEFLATE.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            let input = data.get(consumed..).unwrap_or_default();
            match c.compress_vec(input, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => return out,
                // More room wanted: grow and go on.
                Ok(_) => out.reserve(out.capacity().max(64)),
                // Compressing into a growable buffer cannot fail; should it, fall back.
                Err(_) => {
                    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
                    let _ = z.write_all(data);
                    return z.finish().unwrap_or_default();
                }
            }
        }
    })
}

/// Inflates a zlib stream, refusing more than [`MAX_PAYLOAD`] bytes of output; bytes after the end of
/// the stream are ignored.
fn inflate_capped(data: &[u8]) -> Result<Vec<u8>, SecureError> {
    INFLATE.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(true);
        let mut out = Vec::with_capacity((data.len() * 4).clamp(64, MAX_PAYLOAD + 1));
        loop {
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let input = data.get(d.total_in() as usize..).unwrap_or_default();
            let status = d
                .decompress_vec(input, &mut out, FlushDecompress::None)
                .map_err(|e| SecureError::BadZlib(e.to_string()))?;
            if out.len() > MAX_PAYLOAD {
                return Err(SecureError::TooLarge);
            }
            match status {
                Status::StreamEnd => return Ok(out),
                _ if out.len() == out.capacity() => {
                    // Out of room: grow up to one byte past the cap (which then refuses it).
                    let room = (out.capacity() * 2).min(MAX_PAYLOAD + 1) - out.len();
                    if room == 0 {
                        return Err(SecureError::TooLarge);
                    }
                    out.reserve_exact(room);
                }
                _ if d.total_in() == in_before && d.total_out() == out_before => {
                    return Err(SecureError::BadZlib("the stream ends before its end".into()));
                }
                _ => {}
            }
        }
    })
}

/// The counters a sender puts in each message: `local` wraps at 9997 into `global`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub global: u32,
    pub local: u32,
}

impl Counters {
    /// The pair for the next message.
    pub fn advance(&mut self) -> Counters {
        if self.local >= 9997 {
            self.local = 0;
            self.global = self.global.wrapping_add(1);
        }
        self.local += 1;
        *self
    }
}

/// Encrypts `message` as one payload: `header` (e.g. `#AES:` or `!001!#AES:`) then the ciphertext.
pub fn encrypt(key: &[u8; 32], header: &[u8], counters: Counters, random: u32, message: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_OVERHEAD + message.len());
    body.extend_from_slice(&[b'0'; 32]);
    body.extend_from_slice(
        format!("{:05}{:010}:{:04}:", random % 100_000, counters.global, counters.local % 10_000).as_bytes(),
    );
    body.extend_from_slice(message);
    let sum = md5_hex(&body[32..]);
    body[..32].copy_from_slice(&sum);
    let comp = deflate(&body);
    let bangs = 8 - comp.len() % 8;
    let mut plain = Vec::with_capacity(bangs + comp.len() + 16);
    plain.resize(bangs, b'!');
    plain.extend_from_slice(&comp);
    let cipher = Enc::new(key.into(), IV.into()).encrypt_padded_vec_mut::<Pkcs7>(&plain);
    let mut payload = Vec::with_capacity(header.len() + cipher.len());
    payload.extend_from_slice(header);
    payload.extend_from_slice(&cipher);
    payload
}

/// A payload with its little-endian length prefix, ready for one write.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Incremental frame reader over a byte buffer: complete payloads, or how the stream went wrong.
///
/// Consumed bytes are dropped once per [`FrameBuffer::extend`] (not once per frame), and a buffer
/// left empty gives its memory back, so an idle connection holds no buffer at all.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
}

/// Capacity an empty buffer may keep; more is released. None: a connection waiting between frames
/// (nearly all of them, nearly all the time) holds no buffer, and a read costs one allocation.
const KEEP_CAPACITY: usize = 0;

impl FrameBuffer {
    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete payload, `Ok(None)` if more bytes are needed, or an error when the length
    /// prefix is over the limit (the connection must be closed).
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, SecureError> {
        let rest = &self.buf[self.start..];
        let Some(prefix) = rest.get(..4) else { return Ok(self.settle()) };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(SecureError::TooLong(len));
        }
        if rest.len() < 4 + len {
            return Ok(self.settle());
        }
        let payload = rest[4..4 + len].to_vec();
        self.start += 4 + len;
        Ok(Some(payload))
    }

    /// Nothing complete is left: frees the buffer if it is empty.
    fn settle(&mut self) -> Option<Vec<u8>> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        None
    }

    /// Bytes buffered but not yet a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "e38b58deca755913845ce6a42865eb2a557f34509245e71ca56fcafe812b6d59";

    /// Stored streams are read back by another inflater (flate2's reader, as zlib's `uncompress`
    /// reads them on an agent), with zlib's own checksum, across block boundaries.
    #[test]
    fn short_messages_go_out_as_stored_zlib_streams_any_inflater_reads() {
        use std::io::Read;
        for len in [0usize, 1, 13, STORED_UP_TO, 65_535, 65_536, 140_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let wire = stored(&data);
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&wire[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{len} bytes");
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
            z.write_all(&data).unwrap();
            let reference = z.finish().unwrap();
            assert_eq!(wire[wire.len() - 4..], reference[reference.len() - 4..], "adler-32 of {len} bytes");
            if len <= MAX_PAYLOAD {
                assert_eq!(inflate_capped(&deflate(&data)).unwrap(), data);
            }
        }
        assert_eq!(deflate(b"#!-agent ack ")[..2], [0x78, 0x01], "a short message is stored");
    }

    #[test]
    fn key_derivation_matches_the_reference_example() {
        assert_eq!(&aes_key(RAW), b"1f7086392acc2b3c9a3b306f743fb84b");
    }

    #[test]
    fn what_is_encrypted_decrypts_back() {
        let key = aes_key(RAW);
        let mut c = Counters { global: 7, local: 9997 };
        let payload = encrypt(&key, b"!001!#AES:", c.advance(), 12345, b"#!-agent startup ");
        let h = parse_header(&payload).unwrap();
        assert_eq!(h.agent_id, Some("001"));
        let m = decrypt(&key, h.ciphertext).unwrap();
        assert_eq!((m.random, m.global, m.local), (12345, 8, 1));
        assert_eq!(m.text, b"#!-agent startup ");
        // Another key cannot read it.
        assert!(decrypt(&aes_key(&"0".repeat(64)), h.ciphertext).is_err());
    }

    #[test]
    fn frames_are_read_whole_across_splits_and_coalesced_writes() {
        let mut fb = FrameBuffer::default();
        let mut wire = frame(b"#ping");
        wire.extend(frame(b"abc"));
        fb.extend(&wire[..3]);
        assert_eq!(fb.next_payload().unwrap(), None);
        fb.extend(&wire[3..]);
        assert_eq!(fb.next_payload().unwrap().unwrap(), b"#ping");
        assert_eq!(fb.next_payload().unwrap().unwrap(), b"abc");
        assert_eq!(fb.next_payload().unwrap(), None);
        fb.extend(&65537u32.to_le_bytes());
        assert_eq!(fb.next_payload().unwrap_err(), SecureError::TooLong(65537));
    }

    #[test]
    fn a_drained_buffer_gives_its_memory_back_and_keeps_a_partial_frame() {
        let mut fb = FrameBuffer::default();
        let big = vec![b'x'; 60_000];
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend(frame(&big));
        }
        wire.extend(&frame(b"tail")[..6]);
        fb.extend(&wire);
        for _ in 0..3 {
            assert_eq!(fb.next_payload().unwrap().unwrap().len(), 60_000);
        }
        assert_eq!(fb.next_payload().unwrap(), None);
        assert_eq!(fb.pending(), 6, "the start of the next frame is kept");
        fb.extend(&frame(b"tail")[6..]);
        assert_eq!(fb.next_payload().unwrap().unwrap(), b"tail");
        assert_eq!(fb.next_payload().unwrap(), None);
        assert_eq!((fb.pending(), fb.buf.capacity()), (0, 0), "an idle buffer holds no memory");
    }
}
