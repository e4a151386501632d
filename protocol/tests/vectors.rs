//! The enrollment vectors of `shared/reference/wazuh-agent-vectors.json` (a copy lives in
//! `tests/data/`), produced by an independent agent implementation.

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
