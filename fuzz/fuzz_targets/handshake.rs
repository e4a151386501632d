//! The handshake decoders on arbitrary input: the responder reading message 1 (raw bytes, and a
//! valid Noise message around an arbitrary payload), the initiator reading message 2, and the
//! responder checking message 3. Nothing panics; garbage never completes a handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_cluster_protocol::handshake::{Hello, Initiator, InitiatorOutcome, Responder};
use wazuh_cluster_protocol::version::{VersionRange, CURRENT};
use wazuh_cluster_protocol::{CipherSuite, Psk, Role};

const MAX: usize = 1 << 16;

fn hello(role: Role) -> Hello {
    Hello {
        node_name: "fuzz".into(),
        role,
        cluster_name: "fuzz".into(),
        versions: VersionRange::ours(),
        software: "fuzz".into(),
        public_key: None,
        join_token: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let psk = Psk::from_bytes([5; 32]);
    let suite = if mode & 0x80 == 0 { CipherSuite::ChaCha20Poly1305 } else { CipherSuite::Aes256Gcm };
    match mode % 4 {
        // Raw bytes as message 1.
        0 => {
            let _ = Responder::read_hello(&psk, suite, MAX, rest);
        }
        // An authentic message 1 whose payload is arbitrary.
        1 => {
            if let Ok((_, msg1)) = Initiator::start_with_payload(&psk, suite, rest, MAX) {
                if let Ok((responder, _)) = Responder::read_hello(&psk, suite, MAX, &msg1) {
                    // Whatever it decoded to, answering must not panic.
                    let _ = responder.accept(&hello(Role::Master), CURRENT);
                }
            }
        }
        // Arbitrary bytes as message 2.
        2 => {
            if let Ok((initiator, _)) = Initiator::start(&psk, suite, &hello(Role::Worker), MAX) {
                if let Ok(InitiatorOutcome::Accepted { .. }) = initiator.finish(rest, |_| Vec::new()) {
                    panic!("garbage completed the handshake");
                }
            }
        }
        // Arbitrary bytes as message 3.
        _ => {
            let Ok((_, msg1)) = Initiator::start(&psk, suite, &hello(Role::Worker), MAX) else { return };
            let Ok((responder, _)) = Responder::read_hello(&psk, suite, MAX, &msg1) else { return };
            let Ok((_, pending)) = responder.accept(&hello(Role::Master), CURRENT) else { return };
            assert!(pending.confirm(rest).is_err(), "garbage confirmed the handshake");
        }
    }
});
