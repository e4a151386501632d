//! `tokio_util::codec` adapters: typed envelopes in, sealed frames out, and back.
//!
//! The encoder writes the MessagePack straight into the output buffer and seals it in place; the
//! decoder opens in place and decodes from the opened slice. One buffer, no copies.

use crate::frame::{self, FrameError};
use crate::message::{self, Envelope, MessageError};
use crate::transport::{Opener, Sealer, TransportError};
use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Anything that ends a channel. Every variant means "close the connection".
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for ChannelError {
    fn from(e: FrameError) -> Self {
        ChannelError::Transport(TransportError::Frame(e))
    }
}

/// Seals outgoing envelopes of type `T`.
pub struct MessageEncoder<T> {
    sealer: Sealer,
    _t: PhantomData<fn(T)>,
}

impl<T> MessageEncoder<T> {
    pub fn new(sealer: Sealer) -> Self {
        Self { sealer, _t: PhantomData }
    }

    pub fn frames_sent(&self) -> u64 {
        self.sealer.sent()
    }
}

impl<T: Serialize> Encoder<Envelope<T>> for MessageEncoder<T> {
    type Error = ChannelError;

    fn encode(&mut self, item: Envelope<T>, dst: &mut BytesMut) -> Result<(), ChannelError> {
        self.encode(&item, dst)
    }
}

impl<T: Serialize> Encoder<&Envelope<T>> for MessageEncoder<T> {
    type Error = ChannelError;

    fn encode(&mut self, item: &Envelope<T>, dst: &mut BytesMut) -> Result<(), ChannelError> {
        self.sealer.seal_with(dst, |buf| message::encode(item, buf))??;
        Ok(())
    }
}

/// Opens incoming frames and decodes envelopes of type `T`.
pub struct MessageDecoder<T> {
    opener: Opener,
    _t: PhantomData<fn() -> T>,
}

impl<T> MessageDecoder<T> {
    pub fn new(opener: Opener) -> Self {
        Self { opener, _t: PhantomData }
    }

    pub fn frames_received(&self) -> u64 {
        self.opener.received()
    }
}

impl<T: DeserializeOwned> Decoder for MessageDecoder<T> {
    type Item = Envelope<T>;
    type Error = ChannelError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope<T>>, ChannelError> {
        match self.opener.open_from(src)? {
            Some(plain) => Ok(Some(message::decode(&plain)?)),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Envelope<T>>, ChannelError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(frame::truncated(src).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{KeepAlive, MasterToWorker, RequestId, Role, WorkerToMaster};
    use crate::suite::CipherSuite;
    use crate::transport::tests::channel;

    fn pair() -> (MessageEncoder<WorkerToMaster>, MessageDecoder<WorkerToMaster>) {
        let ((tx, _), (_, rx)) = channel(CipherSuite::ChaCha20Poly1305, 4096);
        (MessageEncoder::new(tx), MessageDecoder::new(rx))
    }

    fn ka(seq: u64) -> Envelope<WorkerToMaster> {
        Envelope::request(
            RequestId { origin: Role::Worker, seq },
            WorkerToMaster::KeepAlive(KeepAlive { sent_at_ms: seq, jobs: vec![] }),
        )
    }

    #[test]
    fn envelopes_cross_the_codec_pair() {
        let (mut enc, mut dec) = pair();
        let mut wire = BytesMut::new();
        for seq in 0..3 {
            enc.encode(ka(seq), &mut wire).unwrap();
        }
        for seq in 0..3 {
            assert_eq!(dec.decode(&mut wire).unwrap().unwrap(), ka(seq));
        }
        assert_eq!(dec.frames_received(), 3);
    }

    #[test]
    fn truncated_stream_is_an_error_at_eof() {
        let (mut enc, mut dec) = pair();
        let mut wire = BytesMut::new();
        enc.encode(ka(1), &mut wire).unwrap();
        wire.truncate(wire.len() - 1);
        assert!(dec.decode(&mut wire).unwrap().is_none());
        assert!(matches!(
            dec.decode_eof(&mut wire),
            Err(ChannelError::Transport(TransportError::Frame(FrameError::Truncated { .. })))
        ));
    }

    #[test]
    fn a_message_of_the_other_direction_is_refused() {
        let ((tx, _), (_, rx)) = channel(CipherSuite::ChaCha20Poly1305, 4096);
        let mut enc = MessageEncoder::<MasterToWorker>::new(tx);
        let mut dec = MessageDecoder::<WorkerToMaster>::new(rx);
        let mut wire = BytesMut::new();
        let ack = MasterToWorker::KeepAliveAck(crate::message::KeepAliveAck { echo_sent_at_ms: 1, master_time_ms: 2 });
        enc.encode(Envelope::notify(ack), &mut wire).unwrap();
        assert!(matches!(dec.decode(&mut wire), Err(ChannelError::Message(MessageError::UnknownType(_)))));
    }

    #[test]
    fn oversized_message_is_refused_by_the_encoder_and_nothing_is_written() {
        let ((tx, _), _) = channel(CipherSuite::ChaCha20Poly1305, 64);
        let mut enc = MessageEncoder::<WorkerToMaster>::new(tx);
        let mut wire = BytesMut::new();
        let big = Envelope::notify(WorkerToMaster::Goodbye(crate::message::Goodbye { reason: "x".repeat(100) }));
        assert!(matches!(
            enc.encode(big, &mut wire),
            Err(ChannelError::Transport(TransportError::MessageTooLarge { .. }))
        ));
        assert!(wire.is_empty());
        assert_eq!(enc.frames_sent(), 0);
    }
}
