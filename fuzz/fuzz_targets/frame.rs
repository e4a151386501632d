//! The frame decoder and the transport opener on arbitrary byte streams: no panic, no allocation
//! beyond the cap, and every outcome is a frame, "need more", or a typed error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use wazuh_cluster_protocol::frame::FrameCodec;
use wazuh_cluster_protocol::transport;
use wazuh_cluster_protocol::CipherSuite;

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // Plain frames, fed in two reads split where the first byte says.
    let split = data.first().map(|b| *b as usize % (data.len() + 1)).unwrap_or(0);
    let mut codec = FrameCodec::new(CAP);
    let mut buf = BytesMut::from(&data[..split]);
    let mut feed = |buf: &mut BytesMut| loop {
        match codec.decode(buf) {
            Ok(Some(frame)) => assert!(frame.len() <= CAP),
            Ok(None) => return true,
            Err(_) => return false,
        }
    };
    if feed(&mut buf) {
        buf.extend_from_slice(&data[split..]);
        if feed(&mut buf) {
            let _ = codec.decode_eof(&mut buf);
        }
    }

    // Sealed frames: the same bytes through an opener of either suite.
    for suite in CipherSuite::ALL {
        let (_, mut opener) = transport::pair(suite, [1; 32], [2; 32], CAP);
        let mut wire = BytesMut::from(data);
        while let Ok(Some(plain)) = opener.open_from(&mut wire) {
            assert!(plain.len() <= CAP);
        }
    }

    // A genuine sealed frame with one byte changed must never open.
    if let Some((&pos, rest)) = data.split_first() {
        let (mut sealer, _) = transport::pair(CipherSuite::ChaCha20Poly1305, [3; 32], [4; 32], CAP);
        let (_, mut opener) = transport::pair(CipherSuite::ChaCha20Poly1305, [4; 32], [3; 32], CAP);
        let mut wire = BytesMut::new();
        if sealer.seal(&mut wire, &rest[..rest.len().min(1024)]).is_ok() {
            let i = pos as usize % wire.len();
            wire[i] ^= 0x80;
            assert!(!matches!(opener.open_from(&mut wire), Ok(Some(_))), "a tampered frame opened");
        }
    }
});
