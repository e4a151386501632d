//! Agent events as wazuh-analysisd reads them from its queue socket.
//!
//! What Wazuh 4.x does, read from its sources (the code here is our own):
//! - `src/remoted/secure.c` (`HandleSecureMessage`): for a decrypted message that is not a control
//!   message, remoted builds the source `[<agent id>] (<agent name>) <agent ip>` (the registered
//!   address, `any` for agents registered without one) and calls `SendMSG(queue, message, source,
//!   SECURE_MQ)`.
//! - `src/shared/mq_op.c` (`SendMSGAction`): the source is escaped with `wstr_escape(.., '|', ':')`,
//!   so `|` becomes `||` and `:` becomes `|:`; in the `SECURE_MQ` mode the message's first byte is the
//!   queue id, its second byte must be `:` (otherwise the message is dropped with a format error),
//!   a message whose location starts with `keepalive` is dropped, and the datagram is
//!   `<queue id>:<escaped source>-><rest of the message>`, written with `snprintf` into a buffer of
//!   `OS_MAXSTR` (65,536) bytes: at most 65,535 bytes are sent, the rest is cut, and the message
//!   ends at its first NUL byte (C strings). `OS_SendUnix` sends it as one datagram.
//! - `src/analysisd/cleanevent.c` (`OS_CleanMSG`) is the parser on the other side: it unescapes the
//!   source up to the first unescaped `:` and splits location from log at `->`.

/// Largest datagram remoted sends (`OS_MAXSTR - 1`).
pub const MAX_DATAGRAM: usize = 65_535;

/// Appends `text` to `out` with `|` and `:` escaped by `|`, as `wstr_escape(.., '|', ':')` does.
fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    for &b in text {
        if b == b'|' || b == b':' {
            out.push(b'|');
        }
        out.push(b);
    }
}

/// The datagram for analysisd of `message` (an agent's decrypted event payload,
/// `<queue id>:<location>:<log>`) from agent `id`/`name` registered with `ip`; `None` when remoted
/// would not send it (no `:` after the queue id, or a `keepalive` location).
pub fn event_datagram(id: &str, name: &str, ip: &str, message: &[u8]) -> Option<Vec<u8>> {
    // A C string ends at its first NUL.
    let message = message.split(|b| *b == 0).next().unwrap_or_default();
    let (&queue, rest) = message.split_first()?;
    let rest = rest.strip_prefix(b":")?;
    if rest.starts_with(b"keepalive") {
        return None;
    }
    let mut out = Vec::with_capacity(8 + id.len() + name.len() + ip.len() + rest.len());
    out.push(queue);
    out.push(b':');
    let source = format!("[{id}] ({name}) {ip}");
    escape_into(&mut out, source.as_bytes());
    out.extend_from_slice(b"->");
    out.extend_from_slice(rest);
    out.truncate(MAX_DATAGRAM);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_framed_as_remoted_frames_it() {
        let got = event_datagram("001", "web-1", "any", b"1:/var/log/auth.log:sshd[7]: Accepted publickey").unwrap();
        assert_eq!(got, b"1:[001] (web-1) any->/var/log/auth.log:sshd[7]: Accepted publickey");
    }

    #[test]
    fn colons_and_bars_in_the_source_are_escaped_and_the_rest_is_not() {
        let got = event_datagram("002", "a|b", "fe80::1", b"x:C:\\log|x:msg: a|b").unwrap();
        assert_eq!(got, b"x:[002] (a||b) fe80|:|:1->C:\\log|x:msg: a|b".to_vec());
        let utf8 = event_datagram("003", "srv-ü", "10.0.0.0/8", "1:日志:ü ok".as_bytes()).unwrap();
        assert_eq!(utf8, "1:[003] (srv-ü) 10.0.0.0/8->日志:ü ok".as_bytes());
    }

    #[test]
    fn what_remoted_drops_or_cuts() {
        assert_eq!(event_datagram("1", "n", "any", b""), None);
        assert_eq!(event_datagram("1", "n", "any", b"1"), None);
        assert_eq!(event_datagram("1", "n", "any", b"1x/var/log"), None, "no ':' after the queue id");
        assert_eq!(event_datagram("1", "n", "any", b"1:keepalive:x"), None);
        assert_eq!(event_datagram("1", "n", "any", b"1:loc:a\0hidden").unwrap(), b"1:[1] (n) any->loc:a");
        let long = [b"1:loc:".to_vec(), vec![b'x'; 70_000]].concat();
        let got = event_datagram("001", "n", "any", &long).unwrap();
        assert_eq!(got.len(), MAX_DATAGRAM);
        assert!(got.starts_with(b"1:[001] (n) any->loc:xxx"));
        // Exactly at the limit: nothing cut.
        let head = b"1:[001] (n) any->loc:".len();
        let fits = [b"1:loc:".to_vec(), vec![b'y'; MAX_DATAGRAM - head]].concat();
        assert_eq!(event_datagram("001", "n", "any", &fits).unwrap().len(), MAX_DATAGRAM);
    }
}
