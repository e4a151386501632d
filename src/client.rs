//! The CLI's HTTP client for the node's API, on `ureq`: `https://` (the API's default) or
//! `http://`, connect and overall timeouts, chunked bodies, strict UTF-8.
//!
//! A node's certificate is self-signed unless the operator gave it another: the client trusts the
//! certificate named by `--ca-file`/`WMN_API_CA` (the node's `var/api.crt`), or public CAs, or,
//! with `--insecure`/`WMN_API_INSECURE=1`, anything (as `curl -k`).

use anyhow::{bail, Context};
use std::time::Duration;

/// Connecting to the API gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request (connect, send, read the answer) gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (`GET /agents` of a large cluster is tens of megabytes).
const MAX_BODY: u64 = 512 << 20;

/// Checks that `base` is `https://HOST:PORT` or `http://HOST:PORT` and returns it without a
/// trailing slash.
fn base_url(base: &str) -> anyhow::Result<&str> {
    let authority = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))
        .with_context(|| format!("unsupported API URL {base:?}: expected https://HOST:PORT or http://HOST:PORT"))?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("unsupported API URL {base:?}: expected https://HOST:PORT or http://HOST:PORT");
    }
    Ok(base.trim_end_matches('/'))
}

/// Whom the client trusts over https.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// A PEM certificate (or CA) to trust, instead of public CAs.
    pub ca_file: Option<std::path::PathBuf>,
    /// Trust any certificate (`curl -k`).
    pub insecure: bool,
}

static TRUST: std::sync::OnceLock<Trust> = std::sync::OnceLock::new();

/// Sets whom this process's API calls trust (once; later calls change nothing). Without it,
/// `WMN_API_CA` and `WMN_API_INSECURE=1` are read.
pub fn set_trust(trust: Trust) {
    let _ = TRUST.set(trust);
}

fn trust() -> Trust {
    TRUST
        .get_or_init(|| Trust {
            ca_file: std::env::var_os("WMN_API_CA").map(Into::into),
            insecure: std::env::var("WMN_API_INSECURE").is_ok_and(|v| v == "1" || v == "true"),
        })
        .clone()
}

fn agent(trust: &Trust) -> anyhow::Result<ureq::Agent> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder().disable_verification(trust.insecure);
    if let Some(path) = &trust.ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("cannot read the API's certificate {}", path.display()))?;
        let cert =
            Certificate::from_pem(&pem).with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        tls = tls.root_certs(RootCerts::new_with_certs(&[cert]));
    }
    Ok(ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        // A 4xx or 5xx is an answer to show, not a transport failure.
        .http_status_as_error(false)
        .tls_config(tls.build())
        .build()
        .new_agent())
}

/// GETs `path` with the API token (`None`: only `/health` answers) and returns the status code
/// and the body.
pub fn get(base: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    request(base, "GET", path, token, None)
}

/// One request; `token` goes in `Authorization: Bearer`, `json` is the body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    request_trusting(&trust(), base, method, path, token, json)
}

/// [`request`], trusting `trust` rather than this process's setting.
pub fn request_trusting(
    trust: &Trust,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let url = format!("{}{path}", base_url(base)?);
    let agent = agent(trust)?;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let sent = match method {
        "GET" | "DELETE" => {
            let mut req = if method == "GET" { agent.get(&url) } else { agent.delete(&url) };
            req = req.header("Accept", "application/json");
            if let Some(b) = &bearer {
                req = req.header("Authorization", b);
            }
            req.call()
        }
        "PUT" | "POST" => {
            let mut req = if method == "PUT" { agent.put(&url) } else { agent.post(&url) };
            req = req.header("Accept", "application/json");
            if let Some(b) = &bearer {
                req = req.header("Authorization", b);
            }
            match json {
                Some(body) => req.header("Content-Type", "application/json").send(body),
                None => req.send_empty(),
            }
        }
        other => bail!("unsupported HTTP method {other}"),
    };
    let mut response = sent.with_context(|| format!("cannot reach the API at {base}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .with_context(|| format!("cannot read the API's answer to {method} {path}"))?;
    Ok((status, body))
}

/// `POST /security/user/authenticate` as `user`: the token, or an error naming the API's answer.
pub fn authenticate(base: &str, user: &str, password: &str) -> anyhow::Result<String> {
    use base64ct::Encoding;
    let url = format!("{}/security/user/authenticate?raw=true", base_url(base)?);
    let basic = base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes());
    let mut response = agent(&trust())?
        .post(&url)
        .header("Authorization", &format!("Basic {basic}"))
        .send_empty()
        .with_context(|| format!("cannot reach the API at {base}"))?;
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
    if status != 200 {
        bail!("the API at {base} refused user {user:?} ({status}): {}", body.trim());
    }
    Ok(body.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_urls_only() {
        assert_eq!(base_url("http://127.0.0.1:55000").unwrap(), "http://127.0.0.1:55000");
        assert_eq!(base_url("http://127.0.0.1:55000/").unwrap(), "http://127.0.0.1:55000");
        assert_eq!(base_url("https://127.0.0.1:55000/").unwrap(), "https://127.0.0.1:55000");
        assert!(base_url("ftp://x:1").is_err());
        assert!(base_url("http://x:1/path").is_err());
        assert!(base_url("http://").is_err());
    }

    #[test]
    fn an_unreachable_api_is_a_clear_error_not_a_hang() {
        // Port 1 on loopback: nothing listens there.
        let err = get("http://127.0.0.1:1", "/health", None).unwrap_err();
        assert!(format!("{err:#}").contains("cannot reach the API at http://127.0.0.1:1"), "{err:#}");
    }
}
