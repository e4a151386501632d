//! The agent port's reading path on arbitrary bytes, as a session runs it before any agent is
//! known: length-prefixed frames (fed in two reads), the `!id!#AES:` header, and decryption with a
//! fixed key (padding, zlib with its 64 KiB cap, checksum, counters). No panic; every frame is at
//! most the payload cap; every outcome is a payload, "need more", or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_cluster_protocol::agent::secure::{aes_key, decrypt, parse_header, FrameBuffer, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let key = aes_key("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    let split = data.first().map(|b| *b as usize % (data.len() + 1)).unwrap_or(0);
    let mut fb = FrameBuffer::default();
    for part in [&data[..split], &data[split..]] {
        fb.extend(part);
        loop {
            match fb.next_payload() {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= MAX_PAYLOAD);
                    if let Ok(h) = parse_header(&payload) {
                        if let Ok(m) = decrypt(&key, h.ciphertext) {
                            assert!(m.text.len() <= MAX_PAYLOAD);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // The ciphertext alone, too: most random payloads fail the header check above.
    let _ = decrypt(&key, data);
});
