//! The classifier of decrypted agent messages (startup, keep-alive with its OS line, labels and
//! sums, shutdown, events) on arbitrary bytes: no panic, a typed outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_cluster_protocol::agent::keepalive::{classify, parse_keepalive};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_keepalive(text);
    }
});
