//! What an agent says once its frame is decrypted: control messages (`#!-...`) and events.

use serde::{Deserialize, Serialize};

/// A decrypted agent message, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMessage {
    /// `#!-agent startup ` with the optional `{"version":...}` of 4.6+ agents.
    Startup { version: Option<String> },
    /// `#!-agent shutdown `.
    Shutdown,
    /// `#!-req <counter> <text>`: the agent's acknowledgement (`ack`) of, or answer to, a request
    /// the manager sent it with that counter.
    Reply { counter: String, text: String },
    /// Any other control message: a keep-alive.
    KeepAlive(Box<KeepAlive>),
    /// Anything else: an event `<queue>:<location>:<message>`.
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub queue: char,
    pub location: String,
    pub message: String,
}

/// The fields of a keep-alive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {
    /// The whole uname part of the first line.
    pub os_uname: String,
    pub os_name: String,
    pub os_platform: String,
    pub os_version: String,
    pub os_codename: String,
    pub os_arch: String,
    pub hostname: String,
    /// e.g. `Wazuh v4.14.7`.
    pub version: String,
    /// MD5 of the agent's agent.conf, if reported.
    pub config_sum: Option<String>,
    /// Sum of its merged.mg (`x` when it has none).
    pub merged_sum: Option<String>,
    /// `#"_agent_ip":...`.
    pub agent_ip: Option<String>,
    /// `(key, value)`; system labels keep their `#` prefix, hidden ones their `!`.
    pub labels: Vec<(String, String)>,
}

/// Why a message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the message is not UTF-8")]
    NotText,
    #[error("a keep-alive needs at least one line feed")]
    NoNewline,
    #[error("an event needs '<queue>:<location>:<message>'")]
    BadEvent,
}

/// Classifies a decrypted message.
pub fn classify(text: &[u8]) -> Result<AgentMessage, MessageError> {
    let text = std::str::from_utf8(text).map_err(|_| MessageError::NotText)?;
    if let Some(rest) = text.strip_prefix("#!-agent startup") {
        let json = rest.trim();
        let version = serde_json_version(json);
        return Ok(AgentMessage::Startup { version });
    }
    if text.starts_with("#!-agent shutdown") {
        return Ok(AgentMessage::Shutdown);
    }
    if let Some(rest) = text.strip_prefix("#!-req ") {
        let (counter, reply) = rest.split_once(' ').unwrap_or((rest, ""));
        return Ok(AgentMessage::Reply { counter: counter.to_string(), text: reply.to_string() });
    }
    if let Some(body) = text.strip_prefix("#!-") {
        return parse_keepalive(body).map(|ka| AgentMessage::KeepAlive(Box::new(ka)));
    }
    let mut parts = text.splitn(3, ':');
    let queue = parts.next().and_then(|q| q.chars().next()).ok_or(MessageError::BadEvent)?;
    let location = parts.next().ok_or(MessageError::BadEvent)?;
    let message = parts.next().ok_or(MessageError::BadEvent)?;
    Ok(AgentMessage::Event(Event { queue, location: location.to_string(), message: message.to_string() }))
}

/// `{"version":"v4.14.7"}` -> `v4.14.7`, without a JSON parser for one field.
fn serde_json_version(json: &str) -> Option<String> {
    let after = json.split("\"version\"").nth(1)?;
    let after = after.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(after.split('"').next()?.to_string())
}

/// Parses a keep-alive body (after `#!-`).
pub fn parse_keepalive(body: &str) -> Result<KeepAlive, MessageError> {
    let Some(end) = body.rfind('\n') else { return Err(MessageError::NoNewline) };
    let mut lines = body[..end].split('\n');
    let first = lines.next().unwrap_or_default();
    let mut ka = KeepAlive::default();
    let (uname, wazuh) = match first.rfind(" - ") {
        Some(i) => (&first[..i], &first[i + 3..]),
        None => (first, ""),
    };
    match wazuh.split_once(" / ") {
        Some((version, sum)) => {
            ka.version = version.trim().to_string();
            ka.config_sum = Some(sum.trim().to_string()).filter(|s| !s.is_empty());
        }
        None => ka.version = wazuh.trim().to_string(),
    }
    ka.os_uname = uname.to_string();
    parse_uname(uname, &mut ka);
    for line in lines {
        let label = line.strip_prefix('"').map(|l| ("", l)).or_else(|| {
            line.strip_prefix("!\"").map(|l| ("!", l)).or_else(|| line.strip_prefix("#\"").map(|l| ("#", l)))
        });
        if let Some((prefix, rest)) = label {
            if let Some((key, value)) = rest.split_once("\":") {
                if prefix == "#" && key == "_agent_ip" {
                    ka.agent_ip = Some(value.to_string());
                }
                ka.labels.push((format!("{prefix}{key}"), value.to_string()));
            }
        } else if let Some(sum) = line.strip_suffix(" merged.mg") {
            ka.merged_sum = Some(sum.to_string());
        }
    }
    Ok(ka)
}

/// `sysname |nodename |release |version |machine [os_name|platform: version (codename)]`, or Windows'
/// `Microsoft Windows 10 Pro [Ver: 10.0.19045] |host |x86_64`.
fn parse_uname(uname: &str, ka: &mut KeepAlive) {
    let (outside, bracket) = match (uname.find(" ["), uname.rfind(']')) {
        (Some(open), Some(close)) if close > open => {
            (format!("{}{}", &uname[..open], &uname[close + 1..]), Some(&uname[open + 2..close]))
        }
        _ => (uname.to_string(), None),
    };
    let fields: Vec<&str> = outside.split('|').map(str::trim).collect();
    if let Some(inner) = bracket.and_then(|b| b.strip_prefix("Ver: ")) {
        // Windows: name first, then host and architecture.
        ka.os_name = fields.first().copied().unwrap_or_default().to_string();
        ka.os_platform = "windows".into();
        ka.os_version = inner.trim().to_string();
        ka.hostname = fields.get(1).copied().unwrap_or_default().to_string();
        ka.os_arch = fields.get(2).copied().unwrap_or_default().to_string();
        return;
    }
    ka.hostname = fields.get(1).copied().unwrap_or_default().to_string();
    ka.os_arch = fields.get(4).copied().unwrap_or_default().to_string();
    match bracket {
        Some(inner) => {
            let (name, rest) = inner.split_once('|').unwrap_or((inner, ""));
            ka.os_name = name.trim().to_string();
            let (platform, version) = rest.split_once(':').unwrap_or((rest, ""));
            ka.os_platform = platform.trim().to_string();
            let version = version.trim();
            match (version.find(" ("), version.ends_with(')')) {
                (Some(i), true) => {
                    ka.os_version = version[..i].to_string();
                    ka.os_codename = version[i + 2..version.len() - 1].to_string();
                }
                _ => ka.os_version = version.to_string(),
            }
        }
        None => ka.os_name = fields.first().copied().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linux_keepalive_gives_its_fields() {
        let body = "Linux |web01 |5.15.0-91-generic |#101-Ubuntu SMP x |x86_64 [Ubuntu|ubuntu: 22.04.3 LTS (Jammy Jellyfish)] - Wazuh v4.14.7 / ab73af41699f13fdd81903b5f23d8d00\n\"env\":prod\n#\"_internal\":x\nfd756ba04d9c32c8848d4608bec41251 merged.mg\n#\"_agent_ip\":10.0.0.5\nignored";
        let ka = parse_keepalive(body).unwrap();
        assert_eq!(ka.os_name, "Ubuntu");
        assert_eq!(ka.os_platform, "ubuntu");
        assert_eq!(ka.os_version, "22.04.3 LTS");
        assert_eq!(ka.os_codename, "Jammy Jellyfish");
        assert_eq!(ka.os_arch, "x86_64");
        assert_eq!(ka.hostname, "web01");
        assert_eq!(ka.version, "Wazuh v4.14.7");
        assert_eq!(ka.config_sum.as_deref(), Some("ab73af41699f13fdd81903b5f23d8d00"));
        assert_eq!(ka.merged_sum.as_deref(), Some("fd756ba04d9c32c8848d4608bec41251"));
        assert_eq!(ka.agent_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(ka.labels[0], ("env".to_string(), "prod".to_string()));
        assert_eq!(ka.labels[1], ("#_internal".to_string(), "x".to_string()));
    }

    #[test]
    fn a_windows_keepalive_gives_its_fields() {
        let ka =
            parse_keepalive("Microsoft Windows 10 Pro [Ver: 10.0.19045] |host |x86_64 - Wazuh v4.14.7\nx merged.mg\n")
                .unwrap();
        assert_eq!((ka.os_name.as_str(), ka.os_platform.as_str()), ("Microsoft Windows 10 Pro", "windows"));
        assert_eq!(
            (ka.os_version.as_str(), ka.hostname.as_str(), ka.os_arch.as_str()),
            ("10.0.19045", "host", "x86_64")
        );
        assert_eq!(ka.merged_sum.as_deref(), Some("x"));
        assert_eq!(ka.config_sum, None);
    }

    #[test]
    fn messages_are_classified() {
        assert_eq!(classify(b"#!-agent startup ").unwrap(), AgentMessage::Startup { version: None });
        assert_eq!(
            classify(b"#!-agent startup {\"version\":\"v4.14.7\"}").unwrap(),
            AgentMessage::Startup { version: Some("v4.14.7".into()) }
        );
        assert_eq!(classify(b"#!-agent shutdown ").unwrap(), AgentMessage::Shutdown);
        assert_eq!(
            classify(b"#!-req 1f3a ok {\"localfile\":[]}").unwrap(),
            AgentMessage::Reply { counter: "1f3a".into(), text: "ok {\"localfile\":[]}".into() }
        );
        assert_eq!(classify(b"#!-req 7 ack").unwrap(), AgentMessage::Reply { counter: "7".into(), text: "ack".into() });
        assert_eq!(classify(b"#!-Linux |h |r |v |m - Wazuh v4.9.0").unwrap_err(), MessageError::NoNewline);
        match classify(b"1:/var/log/syslog:Jan 29 10:03:41 host sshd[1]: test").unwrap() {
            AgentMessage::Event(e) => {
                assert_eq!((e.queue, e.location.as_str()), ('1', "/var/log/syslog"));
                assert_eq!(e.message, "Jan 29 10:03:41 host sshd[1]: test");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(classify(b"no colon").unwrap_err(), MessageError::BadEvent);
        assert_eq!(classify(&[0xff, 0xfe]).unwrap_err(), MessageError::NotText);
    }
}
