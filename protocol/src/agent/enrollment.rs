//! Enrollment (authd, TLS on 1515): the agent's one request line and the manager's one reply.
//!
//! ```text
//! [OSSEC PASS: <password> ]OSSEC A:'<name>'[ V:'<version>'][ G:'<g1,g2>'][ IP:'<ip|cidr|src>'][ K:'<sha1hex>']\n
//! OSSEC K:'<id> <name> <ip> <key>'                      (success, no newline)
//! ERROR: <reason>. Unable to add agent                  (failure, no newline)
//! ```
//!
//! [`parse`] reads the line; [`validate`] applies the checks that need no registry, in Wazuh's order.
//! The registry adds the rest (group exists, duplicates) with the same [`EnrollError`] replies.

use std::fmt;
use std::net::IpAddr;

/// Longest accepted request line (Wazuh's cap: 64 KiB + 4 KiB).
pub const MAX_LINE: usize = 64 * 1024 + 4 * 1024;
/// Most groups one agent may belong to.
pub const MAX_GROUPS: usize = 128;
/// The Wazuh version this manager answers as; agents newer than it are refused.
pub const MANAGER_VERSION: (u32, u32, u32) = (4, 14, 7);

/// The fields of a request line, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnrollRequest {
    pub password: Option<String>,
    pub name: String,
    pub version: Option<String>,
    pub groups: Option<String>,
    pub ip: Option<String>,
    pub key_hash: Option<String>,
}

/// Why an enrollment is refused. `Display` is the exact reason Wazuh's authd sends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollError {
    InvalidPassword,
    InvalidRequest,
    InvalidName(String),
    UnterminatedVersion,
    VersionTooHigh,
    UnterminatedGroup,
    InvalidGroupName(String),
    NoSuchGroup(String),
    TooManyGroups,
    UnterminatedIp,
    InvalidIp(String),
    UnterminatedKey,
    DuplicateIp(String),
    DuplicateName(String),
    /// An agent already holds the id an insertion asked for (`POST /agents/insert`).
    DuplicateId(String),
    Internal(String),
    /// The client certificate is missing or not from the master's CA (protocol 2.2; authd ends
    /// the TLS handshake then, so no reply line is written for it).
    ClientCertificate(String),
}

impl fmt::Display for EnrollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrollError::InvalidPassword => f.write_str("Invalid password"),
            EnrollError::InvalidRequest => f.write_str("Invalid request for new agent"),
            EnrollError::InvalidName(n) => write!(f, "Invalid agent name: {}", printable(n)),
            EnrollError::UnterminatedVersion => f.write_str("Unterminated version field"),
            EnrollError::VersionTooHigh => f.write_str("Agent version must be lower or equal to manager version"),
            EnrollError::UnterminatedGroup => f.write_str("Unterminated group field"),
            EnrollError::InvalidGroupName(g) => write!(f, "Invalid group name: {}", printable(g)),
            EnrollError::NoSuchGroup(g) => write!(f, "Invalid group: {}", printable(g)),
            EnrollError::TooManyGroups => write!(f, "Maximum multigroup reached: Limit is {MAX_GROUPS}"),
            EnrollError::UnterminatedIp => f.write_str("Unterminated IP field"),
            EnrollError::InvalidIp(ip) => write!(f, "Invalid IP: {}", printable(ip)),
            EnrollError::UnterminatedKey => f.write_str("Unterminated key field"),
            EnrollError::DuplicateIp(ip) => write!(f, "Duplicate IP: {}", printable(ip)),
            EnrollError::DuplicateName(n) => write!(f, "Duplicate agent name: {}", printable(n)),
            EnrollError::DuplicateId(id) => write!(f, "Duplicate agent ID: {}", printable(id)),
            EnrollError::Internal(n) => write!(f, "Internal manager error adding agent: {}", printable(n)),
            EnrollError::ClientCertificate(why) => write!(f, "Unable to verify client certificate: {}", printable(why)),
        }
    }
}

impl EnrollError {
    /// The reply line (one write, no newline).
    pub fn reply(&self) -> String {
        format!("ERROR: {self}. Unable to add agent")
    }
}

/// The success reply (one write, no newline).
pub fn success_reply(id: &str, name: &str, ip: &str, key: &str) -> String {
    format!("OSSEC K:'{id} {name} {ip} {key}'")
}

/// Reads `'<value>'` at the start of `rest`; `None` if the closing quote is missing.
fn quoted(rest: &str) -> Option<(&str, &str)> {
    let end = rest.find('\'')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// Reads an optional ` <tag>'<value>'` field.
fn field<'a>(rest: &'a str, tag: &str, unterminated: EnrollError) -> Result<(Option<String>, &'a str), EnrollError> {
    match rest.strip_prefix(tag) {
        Some(after) => match quoted(after) {
            Some((value, rest)) => Ok((Some(value.to_string()), rest)),
            None => Err(unterminated),
        },
        None => Ok((None, rest)),
    }
}

/// Whether `given` is `expected`, comparing every byte whatever the first difference (the time
/// does not tell how much of the password was right; only its length may show).
pub fn same_password(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Splits a request line into its fields. `configured_password` is checked first, as authd does.
pub fn parse(line: &str, configured_password: Option<&str>) -> Result<EnrollRequest, EnrollError> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (password, rest) = match line.strip_prefix("OSSEC PASS: ") {
        Some(after) => match after.split_once(' ') {
            Some((pass, rest)) => (Some(pass.to_string()), rest),
            None => (Some(after.to_string()), ""),
        },
        None => (None, line),
    };
    if let Some(expected) = configured_password {
        if !password.as_deref().is_some_and(|given| same_password(given, expected)) {
            return Err(EnrollError::InvalidPassword);
        }
    }
    let after = rest.strip_prefix("OSSEC A:'").ok_or(EnrollError::InvalidRequest)?;
    let (name, rest) = quoted(after).ok_or(EnrollError::InvalidRequest)?;
    let (version, rest) = field(rest, " V:'", EnrollError::UnterminatedVersion)?;
    let (groups, rest) = field(rest, " G:'", EnrollError::UnterminatedGroup)?;
    let (ip, rest) = field(rest, " IP:'", EnrollError::UnterminatedIp)?;
    let (key_hash, _rest) = field(rest, " K:'", EnrollError::UnterminatedKey)?;
    Ok(EnrollRequest { password, name: name.to_string(), version, groups, ip, key_hash })
}

/// Where an agent may connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentIp {
    Any,
    /// A single address.
    Addr(IpAddr),
    /// A network, kept as written (`10.0.0.0/8`).
    Cidr(IpAddr, u8),
}

impl fmt::Display for AgentIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentIp::Any => f.write_str("any"),
            AgentIp::Addr(a) => write!(f, "{a}"),
            AgentIp::Cidr(a, bits) => write!(f, "{a}/{bits}"),
        }
    }
}

impl AgentIp {
    /// Parses what `client.keys` and the IP field hold: `any`, an address, or a CIDR.
    pub fn parse(text: &str) -> Option<AgentIp> {
        if text == "any" {
            return Some(AgentIp::Any);
        }
        match text.split_once('/') {
            Some((addr, bits)) => {
                let addr: IpAddr = addr.parse().ok()?;
                let bits: u8 = bits.parse().ok()?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                (bits <= max).then_some(AgentIp::Cidr(addr, bits))
            }
            None => text.parse().ok().map(AgentIp::Addr),
        }
    }

    /// Whether a connection from `peer` may speak for this agent.
    pub fn admits(&self, peer: IpAddr) -> bool {
        match self {
            AgentIp::Any => true,
            AgentIp::Addr(a) => *a == peer,
            AgentIp::Cidr(net, bits) => match (net, peer) {
                (IpAddr::V4(n), IpAddr::V4(p)) => {
                    let mask = if *bits == 0 { 0 } else { u32::MAX << (32 - *bits as u32) };
                    u32::from(*n) & mask == u32::from(p) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(p)) => {
                    let mask = if *bits == 0 { 0 } else { u128::MAX << (128 - *bits as u32) };
                    u128::from(*n) & mask == u128::from(p) & mask
                }
                _ => false,
            },
        }
    }
}

/// A request that passed every check that needs no registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRequest {
    pub name: String,
    /// Empty means the default group.
    pub groups: Vec<String>,
    pub ip: AgentIp,
    pub key_hash: Option<String>,
    pub version: Option<String>,
}

fn valid_agent_name(name: &str) -> bool {
    (2..=128).contains(&name.len())
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// Wazuh's rule for group names (`[A-Za-z0-9._-]`, at most 255, not `all`), and no leading dot:
/// a group is a directory under `etc/shared`, and a hidden one is no group (it also rules out `.`
/// and `..`).
pub fn valid_group_name(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= 255
        && !group.starts_with('.')
        && group != "all"
        && group.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// `v4.14.7` -> (4, 14, 7); missing parts are 0.
fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim_start_matches(['v', 'V']).split('.').map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

/// The same rules as [`validate`], for an enrollment that reached the registry by another way (a
/// worker's forward, which the master does not trust): name, groups, an already resolved address,
/// version, and a key hash of at most 128 visible ASCII characters. A field that could break a `client.keys` line (a space,
/// a newline, any control character) fails one of these.
pub fn validate_fields(
    name: &str,
    groups: &[String],
    ip: &str,
    key_hash: Option<&str>,
    version: Option<&str>,
) -> Result<(), EnrollError> {
    if !valid_agent_name(name) {
        return Err(EnrollError::InvalidName(name.to_string()));
    }
    if let Some(v) = version {
        match version_tuple(v) {
            Some(t) if t <= MANAGER_VERSION => {}
            _ => return Err(EnrollError::VersionTooHigh),
        }
    }
    if groups.len() > MAX_GROUPS {
        return Err(EnrollError::TooManyGroups);
    }
    for (i, g) in groups.iter().enumerate() {
        if !valid_group_name(g) || groups[..i].contains(g) {
            return Err(EnrollError::InvalidGroupName(g.clone()));
        }
    }
    if AgentIp::parse(ip).is_none() {
        return Err(EnrollError::InvalidIp(ip.to_string()));
    }
    if let Some(h) = key_hash {
        if h.len() > 128 || !h.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EnrollError::InvalidRequest);
        }
    }
    Ok(())
}

/// `text` with every control character escaped (`\n`, `\u{1b}`...): for log lines and terminal
/// tables, where a name chosen by a client must not start a new line or drive the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The registry-free checks, in authd's order. `peer` resolves `IP:'src'`.
pub fn validate(req: &EnrollRequest, peer: IpAddr) -> Result<ValidRequest, EnrollError> {
    if !valid_agent_name(&req.name) {
        return Err(EnrollError::InvalidName(req.name.clone()));
    }
    if let Some(v) = &req.version {
        match version_tuple(v) {
            Some(t) if t <= MANAGER_VERSION => {}
            _ => return Err(EnrollError::VersionTooHigh),
        }
    }
    let mut groups = Vec::new();
    if let Some(text) = &req.groups {
        for g in text.split(',') {
            if !valid_group_name(g) {
                return Err(EnrollError::InvalidGroupName(g.to_string()));
            }
            if !groups.iter().any(|x| x == g) {
                groups.push(g.to_string());
            }
        }
        if groups.len() > MAX_GROUPS {
            return Err(EnrollError::TooManyGroups);
        }
    }
    let ip = match req.ip.as_deref() {
        None => AgentIp::Any,
        Some("src") => AgentIp::Addr(peer.to_canonical()),
        Some(text) => AgentIp::parse(text).ok_or_else(|| EnrollError::InvalidIp(text.to_string()))?,
    };
    Ok(ValidRequest {
        name: req.name.clone(),
        groups,
        ip,
        key_hash: req.key_hash.clone(),
        version: req.version.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> IpAddr {
        "10.0.0.5".parse().unwrap()
    }

    #[test]
    fn fields_in_order() {
        let r = parse("OSSEC PASS: pw OSSEC A:'a1' V:'v4.2.0' G:'x,y' IP:'10.0.0.0/8' K:'abc'\n", Some("pw")).unwrap();
        assert_eq!(r.password.as_deref(), Some("pw"));
        assert_eq!(r.name, "a1");
        assert_eq!(r.groups.as_deref(), Some("x,y"));
        let v = validate(&r, peer()).unwrap();
        assert_eq!(v.groups, ["x", "y"]);
        assert_eq!(v.ip.to_string(), "10.0.0.0/8");
        assert!(v.ip.admits("10.200.1.1".parse().unwrap()));
        assert!(!v.ip.admits("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn errors_and_their_exact_replies() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("OSSEC A:'a1'\n", Some("pw"), "ERROR: Invalid password. Unable to add agent"),
            ("OSSEC PASS: nope OSSEC A:'a1'\n", Some("pw"), "ERROR: Invalid password. Unable to add agent"),
            ("hello\n", None, "ERROR: Invalid request for new agent. Unable to add agent"),
            ("OSSEC A:'unterminated\n", None, "ERROR: Invalid request for new agent. Unable to add agent"),
            ("OSSEC A:'a1' V:'v4\n", None, "ERROR: Unterminated version field. Unable to add agent"),
            ("OSSEC A:'a1' G:'x\n", None, "ERROR: Unterminated group field. Unable to add agent"),
            ("OSSEC A:'a1' IP:'1.2.3.4\n", None, "ERROR: Unterminated IP field. Unable to add agent"),
            ("OSSEC A:'a1' K:'ab\n", None, "ERROR: Unterminated key field. Unable to add agent"),
        ];
        for (line, pw, reply) in cases {
            assert_eq!(parse(line, *pw).unwrap_err().reply(), *reply, "{line}");
        }
        let invalid: &[(&str, &str)] = &[
            ("OSSEC A:'bad name!'", "ERROR: Invalid agent name: bad name!. Unable to add agent"),
            ("OSSEC A:'x'", "ERROR: Invalid agent name: x. Unable to add agent"),
            ("OSSEC A:'.hidden'", "ERROR: Invalid agent name: .hidden. Unable to add agent"),
            (
                "OSSEC A:'a1' V:'v5.0.0'",
                "ERROR: Agent version must be lower or equal to manager version. Unable to add agent",
            ),
            (
                "OSSEC A:'a1' V:'v4.14.8'",
                "ERROR: Agent version must be lower or equal to manager version. Unable to add agent",
            ),
            ("OSSEC A:'a1' G:'bad/group'", "ERROR: Invalid group name: bad/group. Unable to add agent"),
            ("OSSEC A:'a1' G:'..'", "ERROR: Invalid group name: ... Unable to add agent"),
            ("OSSEC A:'a1' G:'a,,b'", "ERROR: Invalid group name: . Unable to add agent"),
            ("OSSEC A:'a1' IP:'300.1.1.1'", "ERROR: Invalid IP: 300.1.1.1. Unable to add agent"),
            ("OSSEC A:'a1' IP:'10.0.0.0/33'", "ERROR: Invalid IP: 10.0.0.0/33. Unable to add agent"),
        ];
        for (line, reply) in invalid {
            let req = parse(line, None).unwrap();
            assert_eq!(validate(&req, peer()).unwrap_err().reply(), *reply, "{line}");
        }
        let many: Vec<String> = (0..129).map(|i| format!("g{i}")).collect();
        let req = parse(&format!("OSSEC A:'a1' G:'{}'", many.join(",")), None).unwrap();
        assert_eq!(validate(&req, peer()).unwrap_err(), EnrollError::TooManyGroups);
        assert_eq!(
            EnrollError::TooManyGroups.reply(),
            "ERROR: Maximum multigroup reached: Limit is 128. Unable to add agent"
        );
    }

    #[test]
    fn src_takes_the_peer_address_and_old_agents_are_fine() {
        let req = parse("OSSEC A:'web-01' V:'v4.2.5' IP:'src'", None).unwrap();
        let v = validate(&req, "::ffff:10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!(v.ip, AgentIp::Addr(peer()));
        assert_eq!(success_reply("002", "web-01", &v.ip.to_string(), "k"), "OSSEC K:'002 web-01 10.0.0.5 k'");
    }

    #[test]
    fn forwarded_fields_that_could_break_a_keys_line_are_refused() {
        let ok = |name: &str, groups: &[&str], ip: &str, hash: Option<&str>, version: Option<&str>| {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            validate_fields(name, &groups, ip, hash, version)
        };
        assert_eq!(ok("web-01", &["default", "linux"], "10.0.0.0/8", Some("ab01"), Some("v4.14.7")), Ok(()));
        assert_eq!(ok("web-01", &[], "any", None, None), Ok(()));
        for name in
            ["pwn a\n777 injected any 00ff\n#", "a b", "esc\u{1b}[31m", "bell\u{7}", "x", ".hidden", &"n".repeat(129)]
        {
            assert!(matches!(ok(name, &[], "any", None, None), Err(EnrollError::InvalidName(_))), "{name:?} accepted");
        }
        for ip in ["999.1.1.1; rm -rf /", "10.0.0.1 any", "", "src", "10.0.0.0/33"] {
            assert!(matches!(ok("web", &[], ip, None, None), Err(EnrollError::InvalidIp(_))), "{ip:?} accepted");
        }
        assert!(matches!(ok("web", &["a b"], "any", None, None), Err(EnrollError::InvalidGroupName(_))));
        assert!(matches!(ok("web", &["linux", "linux"], "any", None, None), Err(EnrollError::InvalidGroupName(_))));
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(ok("web", &many, "any", None, None), Err(EnrollError::TooManyGroups));
        assert_eq!(ok("web", &[], "any", Some(&"f".repeat(129)), None), Err(EnrollError::InvalidRequest));
        assert_eq!(ok("web", &[], "any", Some("ab cd"), None), Err(EnrollError::InvalidRequest));
        assert_eq!(ok("web", &[], "any", None, Some("v9.0.0")), Err(EnrollError::VersionTooHigh));
    }

    #[test]
    fn refusals_name_what_was_sent_without_its_control_characters() {
        let e = EnrollError::InvalidName("a\r\nforged line\u{1b}[2J".into());
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("forged line"));
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\nb"), "a\\nb");
    }
}
