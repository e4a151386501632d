//! Length-prefixed framing: `[u32 big-endian body length][body]`.
//!
//! The cap is enforced from the 4-byte header alone, before any allocation; the decoder never
//! reserves the declared length, so a peer that announces a large frame and then sends nothing
//! costs only the bytes it really sent. A stream that ends inside a frame is a typed
//! [`FrameError::Truncated`], not a silent drop.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Size of the length header.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame ({have} of {need} bytes received)")]
    Truncated { have: usize, need: usize },
}

/// Looks at the start of `src` and, when a whole frame is buffered, returns its body length.
/// `Ok(None)` means "need more bytes", the normal outcome of a partial read.
pub fn peek(src: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = src.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; HEADER_LEN];
    len_bytes.copy_from_slice(header);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if src.len() < HEADER_LEN + len {
        return Ok(None);
    }
    Ok(Some(len))
}

/// The error for a stream that ended with `src` still holding part of a frame.
pub fn truncated(src: &[u8]) -> FrameError {
    let need = match src.get(..HEADER_LEN) {
        Some(h) => HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize,
        None => HEADER_LEN,
    };
    FrameError::Truncated { have: src.len(), need }
}

/// Plain (unsealed) frames: used for the handshake messages only.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Error type of the framed codecs: framing faults or the socket's own I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum FramedIoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FramedIoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FramedIoError> {
        match peek(src, self.max)? {
            Some(len) => {
                src.advance(HEADER_LEN);
                Ok(Some(src.split_to(len)))
            }
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FramedIoError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(truncated(src).into()),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FramedIoError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FramedIoError> {
        if body.len() > self.max {
            return Err(FrameError::TooLarge { len: body.len(), max: self.max }.into());
        }
        dst.reserve(HEADER_LEN + body.len());
        dst.put_u32(body.len() as u32);
        dst.extend_from_slice(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        FrameCodec::new(1024).encode(body, &mut b).unwrap();
        b
    }

    #[test]
    fn round_trip_and_partial_reads() {
        let mut codec = FrameCodec::new(1024);
        let full = frame(b"hello");
        // Byte by byte: nothing until the last byte arrives.
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            buf.put_u8(*byte);
            let out = codec.decode(&mut buf).unwrap();
            if i + 1 < full.len() {
                assert!(out.is_none());
            } else {
                assert_eq!(&out.unwrap()[..], b"hello");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn two_frames_in_one_read() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = frame(b"one");
        buf.extend_from_slice(&frame(b""));
        buf.extend_from_slice(&frame(b"three"));
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"one");
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"");
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"three");
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn oversized_header_is_refused_before_any_allocation() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let cap_before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, FramedIoError::Frame(FrameError::TooLarge { len, max: 1024 }) if len == u32::MAX as usize)
        );
        assert_eq!(buf.capacity(), cap_before, "decoder must not reserve the declared length");
        // One byte over the cap is refused, the cap itself is fine.
        assert!(peek(&1025u32.to_be_bytes(), 1024).is_err());
        assert_eq!(peek(&1024u32.to_be_bytes(), 1024), Ok(None));
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut codec = FrameCodec::new(1024);
        let full = frame(b"truncated body");
        let mut buf = BytesMut::from(&full[..full.len() - 3]);
        let err = codec.decode_eof(&mut buf).unwrap_err();
        match err {
            FramedIoError::Frame(FrameError::Truncated { have, need }) => {
                assert_eq!(have, full.len() - 3);
                assert_eq!(need, full.len());
            }
            other => panic!("unexpected {other:?}"),
        }
        // A partial header is truncated too; an empty buffer is a clean end.
        let mut two = BytesMut::from(&[0u8, 0][..]);
        assert!(codec.decode_eof(&mut two).is_err());
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn encoder_refuses_bodies_over_the_cap() {
        let mut codec = FrameCodec::new(4);
        let mut dst = BytesMut::new();
        assert!(codec.encode(&b"12345"[..], &mut dst).is_err());
        assert!(dst.is_empty());
    }
}
