//! A minimal HTTP/1.1 client for the CLI's `nodes` and `health` commands (plain `http://` only: the
//! API listens on loopback by default).

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `http://host:port` -> `host:port`.
fn authority(base: &str) -> anyhow::Result<&str> {
    let rest = base
        .strip_prefix("http://")
        .with_context(|| format!("unsupported API URL {base:?}: expected http://HOST:PORT"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("unsupported API URL {base:?}: expected http://HOST:PORT");
    }
    Ok(authority)
}

/// GETs `path` and returns the status code and the body.
pub fn get(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request(base, "GET", path, None, None)
}

/// One request; `token` goes in `Authorization: Bearer`, `json` is the body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let authority = authority(base)?;
    let mut stream = TcpStream::connect(authority).with_context(|| format!("cannot reach the API at {base}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = json.unwrap_or("");
    if json.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).context("cannot send the request")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("cannot read the response")?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status: u16 = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("malformed chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("malformed chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("truncated chunk")?);
        body = rest.get(size + 2..).unwrap_or("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2\r\n\":\r\n1\r\n1\r\n1\r\n}\r\n0\r\n\r\n";
        let (s, b) = parse_response(raw).unwrap();
        assert_eq!((s, b.as_str()), (503, "{\"a\":1}"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn only_plain_http_urls() {
        assert_eq!(authority("http://127.0.0.1:55000").unwrap(), "127.0.0.1:55000");
        assert_eq!(authority("http://127.0.0.1:55000/").unwrap(), "127.0.0.1:55000");
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://x:1/path").is_err());
    }
}
