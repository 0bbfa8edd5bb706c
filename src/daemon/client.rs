//! The CLI's side of the daemon: one HTTP/1.1 exchange over std's `UnixStream`, parsed with `httparse` (no HTTP
//! client, no TLS, no runtime). It sends our config fingerprint; the daemon answers 409 before any work when its own
//! differs, and the CLI then works in-process.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use broker_core::{Error, ErrorKind};

/// What the daemon said: a token (and the DPoP proof asked for with it), or an error.
pub enum Answer {
    Token(broker_core::AccessToken, Option<String>),
    Failed(Error),
}

/// The request a DPoP proof is asked for: method, URL, and the resource server's nonce.
pub type ProofFor<'a> = (&'a str, &'a str, Option<&'a str>);

/// Asks the daemon for `profile`'s token. `None` when the caller should work in-process: no daemon (silently), a
/// daemon with another configuration (silently), or a daemon that failed to answer properly (with a warning).
pub fn token(
    fingerprint: &str,
    profile: &str,
    min_ttl: Option<Duration>,
    force_refresh: bool,
    proof: Option<ProofFor<'_>>,
) -> Option<Answer> {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut path = format!("/v1/token/{}", enc(profile));
    let mut query = Vec::new();
    if let Some((htm, htu, nonce)) = proof {
        path.push_str("/proof");
        query.push(format!("htm={}&htu={}", enc(htm), enc(htu)));
        if let Some(n) = nonce {
            query.push(format!("nonce={}", enc(n)));
        }
    }
    if let Some(d) = min_ttl {
        query.push(format!("min_ttl={}ms", d.as_millis()));
    }
    if force_refresh {
        query.push("force_refresh=true".to_owned());
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let (status, v) = get(fingerprint, &path)?;
    if status == 200 {
        let token = serde_json::from_value::<crate::output::TokenJson>(v)
            .map_err(|_| Error::internal("the daemon's answer is not a token"))
            .and_then(|t| Ok((t.token(std::time::SystemTime::now())?, t.dpop)));
        return Some(match token {
            Ok((t, proof)) => Answer::Token(t, proof),
            Err(e) => Answer::Failed(e),
        });
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

/// Why the daemon's answer cannot be used.
enum Unusable {
    /// No socket, or nobody listening: the normal case without a daemon.
    NoDaemon,
    /// A daemon with another configuration (it answered 409, or an older one stamped another fingerprint).
    OtherConfig,
    /// A daemon that is there but did not answer as it should: timed out, crashed, garbage, 5xx without the error
    /// JSON.
    Failed(String),
}

/// `GET path` on the daemon's socket, sending our fingerprint: the status and JSON body when a live daemon with our
/// configuration answered. Otherwise `None`, with a warning when a daemon is there but failed.
pub fn get(fingerprint: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    let socket = super::default_socket()?;
    match exchange(&socket, fingerprint, path) {
        Ok(answer) => Some(answer),
        Err(Unusable::NoDaemon) => None,
        Err(Unusable::OtherConfig) => {
            tracing::debug!(
                "the daemon on {} runs another configuration; working in-process",
                socket.display()
            );
            None
        }
        Err(Unusable::Failed(why)) => {
            tracing::warn!(
                "the daemon on {} failed ({why}); working in-process",
                socket.display()
            );
            None
        }
    }
}

fn exchange(
    socket: &std::path::Path,
    fingerprint: &str,
    path: &str,
) -> Result<(u16, serde_json::Value), Unusable> {
    use std::io::ErrorKind as Io;
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        Io::NotFound | Io::ConnectionRefused => Unusable::NoDaemon,
        _ => Unusable::Failed(format!("cannot connect: {e}")),
    })?;
    let failed = |what: &str, e: std::io::Error| {
        Unusable::Failed(if matches!(e.kind(), Io::WouldBlock | Io::TimedOut) {
            "no answer within 120s".to_owned()
        } else {
            format!("{what}: {e}")
        })
    };
    // The daemon may have to ask the provider: allow its whole retry budget and then some.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: broker\r\nBroker-Config: {fingerprint}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| failed("cannot send the request", e))?;
    let mut raw = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| failed("cannot read the answer", e))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(Unusable::Failed("the answer ended early".into()))
        }
        Err(e) => return Err(Unusable::Failed(format!("not HTTP: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if status == 409 || header("broker-config") != Some(fingerprint.as_bytes()) {
        return Err(Unusable::OtherConfig);
    }
    let body = &raw[head_len..];
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| Unusable::Failed(format!("HTTP {status} without a JSON body")))?;
    if status != 200 && v.get("error").and_then(serde_json::Value::as_str).is_none() {
        return Err(Unusable::Failed(format!(
            "HTTP {status} without an error class"
        )));
    }
    Ok((status, v))
}
