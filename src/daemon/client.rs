//! The CLI's side of the daemon: a minimal HTTP/1.1 exchange over std's `UnixStream` (no HTTP client, no TLS,
//! no runtime). Used only when the daemon's config fingerprint equals ours.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use broker_core::{Error, ErrorKind};

/// What the daemon said: the `json` format of a token, or an error.
pub enum Answer {
    Token(serde_json::Value),
    Failed(Error),
}

/// Asks the daemon for `profile`'s token. `None` when there is no live daemon, or it runs another config:
/// then the caller works in-process.
pub fn token(
    fingerprint: &str,
    profile: &str,
    min_ttl: Option<Duration>,
    force_refresh: bool,
) -> Option<Answer> {
    let mut path = format!(
        "/v1/token/{}",
        url::form_urlencoded::byte_serialize(profile.as_bytes()).collect::<String>()
    );
    let mut query = Vec::new();
    if let Some(d) = min_ttl {
        query.push(format!("min_ttl={}s", d.as_secs()));
    }
    if force_refresh {
        query.push("force_refresh=true".to_owned());
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let (status, v) = get(fingerprint, &path)?;
    if status == 200 {
        return Some(Answer::Token(v));
    }
    let kind = v
        .get("error")
        .and_then(serde_json::Value::as_str)
        .and_then(ErrorKind::parse)
        .unwrap_or(ErrorKind::Internal);
    let message = v
        .get("message")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("the daemon failed")
        .to_owned();
    Some(Answer::Failed(Error::new(kind, message)))
}

/// `GET path` on the daemon's socket: the status and JSON body, when the daemon is live and runs our config.
pub fn get(fingerprint: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    let socket = super::default_socket()?;
    let mut stream = UnixStream::connect(&socket).ok()?;
    // The daemon may have to ask the provider: allow its whole retry budget and then some.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.take(16 << 20).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let theirs = lines.find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("broker-config"))
            .map(|(_, v)| v.trim().to_owned())
    });
    if theirs.as_deref() != Some(fingerprint) {
        tracing::debug!(
            "the daemon on {} runs another configuration; working in-process",
            socket.display()
        );
        return None;
    }
    // The daemon always sends a Content-Length body; anything else is not our daemon speaking.
    Some((status, serde_json::from_str(body).ok()?))
}

/// Rebuilds a token from the daemon's `json` answer (`obtained_at` is unknown and taken as `now`).
pub fn token_from_json(
    v: &serde_json::Value,
    now: std::time::SystemTime,
) -> Result<broker_core::AccessToken, Error> {
    let bad = || Error::internal("the daemon's answer is not a token");
    let raw = v
        .get("access_token")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(bad)?;
    let token_type = v
        .get("token_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("Bearer");
    if !broker_core::token::printable(raw) || !broker_core::token::printable(token_type) {
        return Err(bad());
    }
    let expires_at = v
        .get("expires_at")
        .and_then(serde_json::Value::as_str)
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .ok_or_else(bad)?;
    Ok(broker_core::AccessToken::new(
        secrecy::SecretString::from(raw.to_owned()),
        token_type,
        now.min(expires_at),
        expires_at,
    ))
}
