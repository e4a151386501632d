//! The enrollment vectors in `tests/data/` (the project's reference set of agent test vectors),
//! produced by an independent agent implementation.

use serde_json::Value;
use wazuh_cluster_protocol::agent::enrollment::{parse, success_reply, validate, EnrollError};

fn vectors() -> Value {
    let text = include_str!("data/wazuh-agent-vectors.json");
    serde_json::from_str(text).expect("vectors file is JSON")
}

fn opt(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

#[test]
fn every_request_vector_parses_to_its_fields() {
    let v = vectors();
    let requests = v["enrollment"]["requests"].as_array().expect("requests");
    assert!(requests.len() >= 8);
    for r in requests {
        let text = r["text"].as_str().expect("text");
        let p = &r["parsed"];
        let password = opt(&p["password"]);
        let parsed = parse(text, password.as_deref()).unwrap_or_else(|e| panic!("{}: {e:?}", r["name"]));
        assert_eq!(parsed.password, password, "{}", r["name"]);
        assert_eq!(Some(parsed.name.clone()), opt(&p["name"]), "{}", r["name"]);
        assert_eq!(parsed.version, opt(&p["version"]), "{}", r["name"]);
        assert_eq!(parsed.groups, opt(&p["groups"]), "{}", r["name"]);
        assert_eq!(parsed.ip, opt(&p["ip"]), "{}", r["name"]);
        assert_eq!(parsed.key_hash, opt(&p["key_hash"]), "{}", r["name"]);
        assert!(validate(&parsed, "10.0.0.5".parse().unwrap()).is_ok(), "{}", r["name"]);
    }
}

#[test]
fn every_reply_vector_is_produced_exactly() {
    let v = vectors();
    let replies = v["enrollment"]["replies"].as_array().expect("replies");
    for r in replies {
        let name = r["name"].as_str().expect("name");
        let text = r["text"].as_str().expect("text");
        let ours = match name {
            n if n.starts_with("success") => {
                let q = &r["wazuh_qa_parse"];
                success_reply(
                    q["id"].as_str().expect("id"),
                    q["name"].as_str().expect("name"),
                    q["ip"].as_str().expect("ip"),
                    q["key"].as_str().expect("key"),
                )
            }
            "invalid_password" => EnrollError::InvalidPassword.reply(),
            "invalid_request" => EnrollError::InvalidRequest.reply(),
            "invalid_agent_name" => EnrollError::InvalidName("bad name!".into()).reply(),
            "unterminated_version" => EnrollError::UnterminatedVersion.reply(),
            "version_too_high" => EnrollError::VersionTooHigh.reply(),
            "unterminated_group" => EnrollError::UnterminatedGroup.reply(),
            "invalid_group_name" => EnrollError::InvalidGroupName("bad/group".into()).reply(),
            "invalid_group" => EnrollError::NoSuchGroup("nosuchgroup".into()).reply(),
            "max_multigroup" => EnrollError::TooManyGroups.reply(),
            "unterminated_ip" => EnrollError::UnterminatedIp.reply(),
            "invalid_ip" => EnrollError::InvalidIp("300.1.1.1".into()).reply(),
            "unterminated_key" => EnrollError::UnterminatedKey.reply(),
            "duplicate_ip" => EnrollError::DuplicateIp("10.0.0.7".into()).reply(),
            "duplicate_name" => EnrollError::DuplicateName("web-01".into()).reply(),
            "internal_error" => EnrollError::Internal("web-01".into()).reply(),
            other => panic!("a reply vector this test does not know: {other}"),
        };
        assert_eq!(ours, text, "{name}");
    }
}

mod secure_channel {
    use super::vectors;
    use serde_json::Value;
    use wazuh_cluster_protocol::agent::keepalive::{classify, AgentMessage};
    use wazuh_cluster_protocol::agent::secure::{
        aes_key, decrypt, encrypt, frame, parse_header, Counters, FrameBuffer, Message, SecureError, PING, PONG,
    };

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn key_of(v: &Value, id: &str) -> [u8; 32] {
        let entry = v["key_derivation"].as_array().expect("keys").iter().find(|k| k["agent_id"] == id).expect("key");
        let key = aes_key(entry["raw_key"].as_str().expect("raw key"));
        assert_eq!(&key[..], entry["aes_key_ascii"].as_str().expect("ascii").as_bytes());
        key
    }

    /// Wire bytes -> one payload -> header -> plaintext message, as a manager reads them.
    fn read_wire(v: &Value, wire: &[u8]) -> Result<Option<(Option<String>, Message)>, SecureError> {
        let mut fb = FrameBuffer::default();
        fb.extend(wire);
        let Some(payload) = fb.next_payload()? else { return Ok(None) };
        let header = parse_header(&payload)?;
        let key = key_of(v, header.agent_id.unwrap_or("001"));
        let message = decrypt(&key, header.ciphertext)?;
        Ok(Some((header.agent_id.map(String::from), message)))
    }

    #[test]
    fn every_agent_frame_decodes_to_its_fields() {
        let v = vectors();
        let frames = v["agent_to_manager"].as_array().expect("frames");
        assert_eq!(frames.len(), 9);
        for f in frames {
            let name = f["name"].as_str().expect("name");
            let (id, m) = read_wire(&v, &hex(f["wire_hex"].as_str().expect("wire")))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("{name}: incomplete"));
            assert_eq!(id.as_deref(), f["agent_id_in_header"].as_str(), "{name}");
            let fields = &f["fields"];
            let expected = match f.get("message_repeat") {
                // The boundary vector gives its 65,483-byte message as a byte and a count.
                Some(r) => {
                    hex(r["byte_hex"].as_str().expect("byte")).repeat(r["count"].as_u64().expect("count") as usize)
                }
                None => hex(fields["message_hex"].as_str().expect("message")),
            };
            assert_eq!(m.text, expected, "{name}");
            if name.starts_with("boundary") {
                continue;
            }
            assert_eq!(
                m.random.to_string(),
                fields["random"].as_str().expect("random").trim_start_matches('0'),
                "{name}"
            );
            assert_eq!(format!("{:010}", m.global), fields["global_counter"].as_str().expect("global"), "{name}");
            assert_eq!(format!("{:04}", m.local), fields["local_counter"].as_str().expect("local"), "{name}");
            // And the message means what its name says.
            let kind = classify(&m.text).unwrap_or_else(|e| panic!("{name}: {e}"));
            match (name, kind) {
                (n, AgentMessage::Startup { .. }) if n.starts_with("startup") => {}
                (n, AgentMessage::KeepAlive(ka)) if n.starts_with("keepalive") => {
                    assert_eq!(ka.os_name, "Debian GNU/Linux");
                    assert_eq!(ka.os_platform, "debian");
                    assert_eq!(ka.os_version, "8");
                    assert_eq!(ka.os_codename, "jessie");
                    assert_eq!(ka.version, "Wazuh v4.14.7");
                    assert_eq!(ka.agent_ip.as_deref(), Some("10.0.2.15"));
                    assert_eq!(ka.merged_sum.as_ref().map(String::len), Some(32));
                }
                ("shutdown", AgentMessage::Shutdown) => {}
                ("event_syslog", AgentMessage::Event(e)) => assert_eq!(e.location, "/var/log/syslog"),
                (n, other) => panic!("{n}: classified as {other:?}"),
            }
        }
    }

    #[test]
    fn manager_frames_decode_and_our_encodings_decode_back() {
        let v = vectors();
        let key = key_of(&v, "001");
        let mut counters = Counters::default();
        for f in v["manager_to_agent"].as_array().expect("frames") {
            let name = f["name"].as_str().expect("name");
            let text = hex(f["message_hex"].as_str().expect("message"));
            // The reference frame decodes with the agent's key (an agent reads it the same way).
            let (id, m) = read_wire(&v, &hex(f["wire_hex"].as_str().expect("wire"))).expect(name).expect(name);
            assert_eq!((id, &m.text), (None, &text), "{name}");
            // Ours: one frame, `#AES:` header, decodes back to the same plaintext.
            let wire = frame(&encrypt(&key, b"#AES:", counters.advance(), 4242, &text));
            assert_eq!(&wire[4..9], b"#AES:");
            let (id, back) = read_wire(&v, &wire).expect(name).expect(name);
            assert_eq!((id, back.text), (None, text), "{name}");
        }
        let ping = &v["plaintext_health_check"];
        assert_eq!(hex(ping[0]["wire_hex"].as_str().expect("ping")), frame(PING));
        assert_eq!(hex(ping[1]["wire_hex"].as_str().expect("pong")), frame(PONG));
    }

    #[test]
    fn every_negative_frame_is_refused_as_the_file_says() {
        let v = vectors();
        let mut cases: Vec<Value> = v["negative_cases"].as_array().expect("negatives").clone();
        cases.extend(v["extra_negative_cases"].as_array().expect("extra").iter().cloned());
        assert_eq!(cases.len(), 14);
        for c in cases {
            let id = c["id"].as_str().expect("id");
            let outcome = read_wire(&v, &hex(c["wire_hex"].as_str().expect("wire")));
            match c["expected_outcome"].as_str().expect("outcome") {
                "incomplete" => assert!(matches!(outcome, Ok(None)), "{id}: {outcome:?}"),
                "close" => {
                    // The refusal names the rule the file gives.
                    let rule = c["strict_decoder_result"].as_str().expect("rule");
                    let expected = match rule {
                        r if r.contains("length > 65536") => SecureError::TooLong(65537),
                        r if r.contains("Padding") => SecureError::BadPadding,
                        r if r.contains("md5(body") => SecureError::BadChecksum,
                        r if r.contains("followed by '!'") => SecureError::BadId,
                        r if r.contains("multiple of 16") => SecureError::BadCipherLength,
                        r if r.contains("zlib stream complete") || r.contains("<= 65536") => SecureError::TooLarge,
                        r if r.contains("cipher tag") && c["wire_len"] == 4 => SecureError::Empty,
                        r if r.contains("cipher tag") => SecureError::UnknownCipher,
                        r if r.contains(">= 53") => SecureError::TooShort,
                        r if r.contains("counter separators") => SecureError::BadCounters,
                        r => panic!("{id}: no rule for {r}"),
                    };
                    assert_eq!(outcome.err(), Some(expected), "{id}: {rule}");
                }
                other => panic!("{id}: unknown outcome {other}"),
            }
        }
    }
}
