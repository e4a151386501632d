//! The enrollment request line (authd's `OSSEC A:'name' V:'..' G:'..' IP:'..' K:'..'`, with or
//! without a password) and the checks after it, on arbitrary text: no panic; what passes has a
//! name, groups and address that cannot break a client.keys line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wazuh_cluster_protocol::agent::enrollment::{parse, validate, validate_fields};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    let peer = std::net::IpAddr::from([192, 0, 2, 7]);
    for password in [None, Some("secret")] {
        let Ok(req) = parse(line, password) else { continue };
        let Ok(valid) = validate(&req, peer) else { continue };
        let ip = valid.ip.to_string();
        assert!(validate_fields(&valid.name, &valid.groups, &ip, None, None).is_ok(), "{line:?}");
        for field in [&valid.name, &ip].into_iter().chain(valid.groups.iter()) {
            assert!(!field.contains([' ', '\n', '\r', '\0']), "{field:?} from {line:?}");
        }
    }
});
