//! Talking to token endpoints: the HTTP client (rustls, no redirects, explicit timeouts, a body cap, the
//! system proxy) and the classification of answers of docs/reference.md §4.

use std::path::Path;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::token::{oauth_error_text, parse_response, TokenResponse};

/// The most of a response body that is read.
pub const BODY_CAP: usize = 1 << 20;

/// Builds the client used for token requests. Called only when a fetch is needed, never on a cache hit.
/// `plain_http`: the client for `http://` URLs, which never goes through a proxy (a proxy would see the secret in
/// clear; docs/security.md). `identity`: the client certificate of mutual TLS.
pub fn build_client(
    timeout: Duration,
    connect_timeout: Duration,
    ca_file: Option<&Path>,
    plain_http: bool,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder();
    if plain_http {
        b = b.no_proxy();
    }
    let mut b = with_roots(
        b.redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .user_agent(concat!("broker/", env!("CARGO_PKG_VERSION"))),
        ca_file,
    )?;
    let mutual = identity.is_some();
    if let Some(identity) = identity {
        b = b.identity(identity);
    }
    b.build().map_err(|e| {
        // The builder's own message is "builder error"; the reason (rustls refusing a key, say) is below it.
        let mut reason = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            reason.push_str(&format!(": {c}"));
            cause = c.source();
        }
        if mutual {
            Error::config(format!(
                "the client certificate and key cannot be used for TLS ({reason})"
            ))
        } else {
            Error::internal(format!("cannot build HTTP client: {reason}"))
        }
    })
}

/// `b` trusting the PEM roots of `ca_file` too, read by the rule of every credential file (it decides which
/// servers get credentials).
fn with_roots(
    mut b: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder> {
    let Some(path) = ca_file else {
        return Ok(b);
    };
    let path = crate::secret::expand_home(path);
    let pem = crate::credfile::CredentialFile::new(&path, crate::credfile::Material::CaBundle)
        .read(crate::credfile::Check::Full)
        .map_err(|e| e.context("ca_file"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::config(format!("ca_file {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "ca_file {} holds no certificates",
            path.display()
        )));
    }
    for c in certs {
        b = b.add_root_certificate(c);
    }
    Ok(b)
}

/// The client that carries a profile's token to its `api` (the proxy's): the profile's `ca_file`, no redirects
/// (a redirect is the caller's to follow, without the token), HTTP/2 where the server offers it, `silence` to
/// connect and between reads (no total limit: a proxied download may be long), and no proxy for plain http.
pub fn api_client(settings: &crate::Settings, silence: Duration) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder();
    if settings.api().is_some_and(|a| a.scheme() == "http") {
        b = b.no_proxy();
    }
    let b = with_roots(
        b.redirect(reqwest::redirect::Policy::none())
            .connect_timeout(silence)
            .read_timeout(silence)
            .tcp_nodelay(true)
            .user_agent(concat!("broker/", env!("CARGO_PKG_VERSION"))),
        settings.ca_file(),
    )?;
    b.build()
        .map_err(|e| Error::internal(format!("cannot build HTTP client: {e}")))
}

/// An HTTP answer, body read up to [`BODY_CAP`].
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, at most [`BODY_CAP`] bytes.
    pub body: Vec<u8>,
    /// The body was longer than the cap.
    pub truncated: bool,
}

/// Sends `req` and reads the answer. Transport failures are [`ErrorKind::Unavailable`].
pub async fn send(req: reqwest::RequestBuilder) -> Result<Answer> {
    let mut resp = req.send().await.map_err(transport_error)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > BODY_CAP {
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
        truncated,
    })
}

fn transport_error(e: reqwest::Error) -> Error {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    // Walk to the root cause for a useful message; none of these carry request bodies.
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    Error::unavailable(format!("{what}: {detail}")).with_source(e)
}

/// When the server says to come back: `Retry-After` (seconds or HTTP date), else Auth0's `x-ratelimit-reset`.
pub fn retry_at(headers: &HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(crate::clock::add_saturating(now, Duration::from_secs(secs)));
        }
        if let Ok(t) = httpdate::parse_http_date(v) {
            return Some(t);
        }
    }
    get("x-ratelimit-reset")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(crate::clock::from_unix)
}

/// Classifies a token endpoint's answer (docs/reference.md §4, rules 2–7; rule 1 is [`send`]'s).
pub fn classify(answer: &Answer, now: SystemTime) -> Result<TokenResponse> {
    let status = answer.status;
    let oauth = oauth_error(&answer.body);
    let described = |prefix: String| match &oauth {
        Some(text) => format!("{prefix}: {text}"),
        None => prefix,
    };
    match status {
        408 | 429 | 500..=599 => {
            let at = retry_at(&answer.headers, now);
            let mut msg = described(format!("HTTP {status}"));
            if let Some(at) = at {
                msg.push_str(&format!(
                    "; the provider asks to retry after {}",
                    humantime::format_rfc3339_seconds(at)
                ));
            }
            Err(Error::unavailable(msg).with_retry_at(at))
        }
        300..=399 => {
            let to = answer
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            let to = provider_text(to);
            Err(Error::bad_response(format!(
                "HTTP {status} redirect to {to}, not followed (a redirected POST would carry the secret elsewhere)"
            )))
        }
        200..=299 => {
            if answer.truncated {
                return Err(Error::bad_response(format!(
                    "HTTP {status} with a body over {BODY_CAP} bytes"
                )));
            }
            parse_response(&answer.body)
                .map_err(|why| Error::bad_response(format!("HTTP {status}, but {why}")))
        }
        404 | 415 => Err(Error::config(described(format!("HTTP {status}")))),
        401 | 403 => Err(Error::rejected(described(format!("HTTP {status}")))),
        _ => {
            let code = oauth_code(&answer.body);
            let kind = match code.as_deref() {
                Some(
                    "invalid_client" | "unauthorized_client" | "access_denied" | "invalid_grant",
                ) => ErrorKind::Rejected,
                _ => ErrorKind::Config,
            };
            Err(Error::new(kind, described(format!("HTTP {status}"))))
        }
    }
}

fn oauth_object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice(body).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn oauth_code(body: &[u8]) -> Option<String> {
    oauth_object(body)?
        .get("error")?
        .as_str()
        .map(str::to_owned)
}

fn oauth_error(body: &[u8]) -> Option<String> {
    let obj = oauth_object(body)?;
    let err = obj.get("error")?;
    Some(oauth_error_text(&obj, err))
}

/// How much of a provider's text is shown (docs/security.md, "provider text").
pub const PROVIDER_TEXT_MAX: usize = 300;

/// Provider text (or any text from outside: a caller's executable, an audit line) made safe to show: control
/// characters (and other non-printing ones) escaped, cut at 300 characters (`PROVIDER_TEXT_MAX`). Secrets are
/// redacted later, by whoever knows them (`redact`).
pub fn provider_text(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == PROVIDER_TEXT_MAX {
            out.push_str("...");
            break;
        }
        if c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Below this length a secret is redacted only where it stands alone (not inside a longer word), so that a
/// two-letter test secret does not shred every message; longer ones are redacted wherever they occur.
const SHORT_SECRET: usize = 8;

/// Replaces each non-empty `needle` in `text` with `[redacted]`: everywhere, or for a short one only where it is not
/// part of a longer word.
pub fn redact(text: &str, needles: &[String]) -> String {
    let mut out = text.to_owned();
    for n in needles.iter().filter(|n| !n.is_empty()) {
        if !out.contains(n.as_str()) {
            continue;
        }
        if n.chars().count() >= SHORT_SECRET {
            out = out.replace(n.as_str(), "[redacted]");
            continue;
        }
        let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(n.as_str()) {
            let before = rest[..at]
                .chars()
                .next_back()
                .or(result.chars().next_back());
            let after = rest[at + n.len()..].chars().next();
            result.push_str(&rest[..at]);
            if word(before) || word(after) {
                result.push_str(n);
            } else {
                result.push_str("[redacted]");
            }
            rest = &rest[at + n.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                *k,
                v.parse()
                    .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn retry_after_in_seconds_as_an_http_date_or_from_x_ratelimit_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_000);
        assert_eq!(
            retry_at(&headers(&[("retry-after", "120")]), now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            retry_at(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]),
                now
            ),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            retry_at(&headers(&[("x-ratelimit-reset", "784111900")]), now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_900))
        );
        assert_eq!(retry_at(&headers(&[("retry-after", "soon")]), now), None);
    }

    #[test]
    fn provider_text_is_escaped_and_cut() {
        assert_eq!(provider_text("a\x1b[31mb\r\nc"), "a\\u{1b}[31mb\\r\\nc");
        let long = "x".repeat(1000);
        assert_eq!(provider_text(&long).chars().count(), PROVIDER_TEXT_MAX + 3);
        assert_eq!(
            redact("id s3cret s3cret", &["s3cret".into(), String::new()]),
            "id [redacted] [redacted]"
        );
    }

    #[test]
    fn a_transport_failure_keeps_the_underlying_error_as_its_source() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = build_client(
            Duration::from_secs(5),
            Duration::from_secs(5),
            None,
            true,
            None,
        )
        .expect("client");
        // A loopback port bound and released: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let e = rt.block_on(send(client.post(format!("http://127.0.0.1:{port}/token"))));
        let e = e.expect_err("nothing listens there");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let source = std::error::Error::source(&e).map(|s| s.is::<reqwest::Error>());
        assert_eq!(source, Some(true), "{e}");
    }

    #[test]
    fn a_huge_retry_after_saturates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            reqwest::header::HeaderValue::from_static("18446744073709551615"),
        );
        assert!(retry_at(&h, now).is_some_and(|t| t > now));
    }
}
