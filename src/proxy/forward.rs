//! One proxied request: the upstream URL (always on the profile's own `api` origin), the headers that pass each way
//! (hop-by-hop ones per RFC 9110 §7.6.1 never do, and the client's own copy of the profile's header is replaced),
//! the body (streamed; a small one buffered so that a request refused with `invalid_token` can be sent again once
//! with a new token), and the answer (streamed back; a redirect is handed to the client, never followed).
//!
//! *Invariant: the token goes to one origin only, the profile's `api`: the request target's authority, the client's
//! `Host` and any redirect never choose where it is sent.*

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use url::Url;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `Proxy-Connection`; they are
/// never passed on, in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `headers` without the hop-by-hop ones, those the `Connection` header names, and `drop`.
pub fn end_to_end(headers: &HeaderMap, drop: &[&HeaderName]) -> HeaderMap {
    let named = connection_named(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let hop = HOP_BY_HOP.contains(name)
            || name.as_str() == "proxy-connection"
            || named.contains(name)
            || drop.contains(&name);
        if !hop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Removes from `headers` the hop-by-hop ones and those the `Connection` header names (an answer's headers, kept
/// in place rather than copied).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect()
}

/// The upstream URL of a request for `path` (what follows the profile's prefix: empty or starting with `/`) and
/// `query` on `api`: the api's path, then `path`. Only the path and query of `api` are set, so the result is on
/// the api's origin whatever they hold; `None` when `path` is not a path.
pub fn upstream_url(api: &Url, path: &str, query: Option<&str>) -> Option<Url> {
    if !(path.is_empty() || path.starts_with('/')) {
        return None;
    }
    let mut url = api.clone();
    url.set_path(&format!("{}{path}", api.path().trim_end_matches('/')));
    url.set_query(query);
    url.set_fragment(None);
    Some(url)
}

/// A redirect's `Location`, made to point back through the proxy when it points into the api (`prefix` is how the
/// proxy's paths for this profile start: `/<profile>`, or empty with one profile per listener). A location
/// elsewhere is left alone: the client may follow it, without the token, which only the proxy adds.
pub fn local_location(location: &str, api: &Url, prefix: &str) -> Option<String> {
    let base = api.path().trim_end_matches('/');
    let target = api.join(location).ok()?;
    if target.origin() != api.origin() {
        return None;
    }
    let rest = target.path().strip_prefix(base)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let query = target.query().map(|q| format!("?{q}")).unwrap_or_default();
    Some(format!("{prefix}{rest}{query}"))
}

/// A request body: whole when it was small enough to keep for a second attempt, else streamed.
pub enum Outgoing {
    Whole(Bytes),
    Streamed(Prefixed),
}

impl Outgoing {
    /// Reads `body` up to `keep` bytes: all of it when it ends by then, else what was read and the rest.
    pub async fn read(mut body: Incoming, keep: usize) -> Result<Outgoing, hyper::Error> {
        if body.is_end_stream() {
            return Ok(Outgoing::Whole(Bytes::new()));
        }
        let mut read = VecDeque::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            // Trailers are hop-by-hop here (a proxied request's are dropped, as `Trailer` is).
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            len += data.len();
            read.push_back(data);
            if len > keep {
                return Ok(Outgoing::Streamed(Prefixed { read, rest: body }));
            }
        }
        let mut whole = bytes::BytesMut::with_capacity(len);
        for chunk in read {
            whole.extend_from_slice(&chunk);
        }
        Ok(Outgoing::Whole(whole.freeze()))
    }

    /// The body for reqwest, and a copy for a second attempt when there can be one.
    pub fn send(self) -> (reqwest::Body, Option<Bytes>) {
        match self {
            Outgoing::Whole(b) => (reqwest::Body::from(b.clone()), Some(b)),
            Outgoing::Streamed(p) => (reqwest::Body::wrap(p), None),
        }
    }
}

/// What was read of a body, then the rest of it.
pub struct Prefixed {
    read: VecDeque<Bytes>,
    rest: Incoming,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.read.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

/// Whether an answer asks for a new token: 401 with a `WWW-Authenticate` challenge whose error is
/// `invalid_token` (RFC 6750 §3.1), or a 401 with no challenge error at all (many APIs send a bare 401 on expiry).
pub fn wants_new_token(status: StatusCode, headers: &HeaderMap) -> bool {
    if status != StatusCode::UNAUTHORIZED {
        return false;
    }
    let challenges: Vec<String> = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    challenges.is_empty()
        || challenges
            .iter()
            .any(|c| c.contains("invalid_token") || !c.contains("error="))
}

/// The request line as the access log shows it: method and path, never the query (it may hold secrets).
pub fn logged<B>(req: &Request<B>) -> String {
    format!("{} {}", req.method(), req.uri().path())
}

/// A plain-text answer of the proxy's own (no upstream reached).
pub fn own_answer(status: StatusCode, text: String) -> Response {
    let mut resp = Response::new(axum::body::Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn upstream_urls_stay_on_the_api_origin() {
        let api = url("https://api.example.com/v2");
        let check = |rest: &str, want: Option<&str>| {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            assert_eq!(
                upstream_url(&api, path, query)
                    .map(|u| u.to_string())
                    .as_deref(),
                want,
                "{rest}"
            )
        };
        check("", Some("https://api.example.com/v2"));
        check(
            "/graphql?x=1",
            Some("https://api.example.com/v2/graphql?x=1"),
        );
        check("?x=1", Some("https://api.example.com/v2?x=1"));
        // A path that looks like an authority stays a path on the api's host.
        check(
            "//evil.example/x",
            Some("https://api.example.com/v2//evil.example/x"),
        );
        check("/a/../../../b", Some("https://api.example.com/b"));
        check("/a?x=1?y", Some("https://api.example.com/v2/a?x=1?y"));
        check(
            "/a\\@evil.example/",
            Some("https://api.example.com/v2/a/@evil.example/"),
        );
        check("@evil.example/x", None);
        check(".evil.example/x", None);
        check(":8443/x", None);
        let root = url("https://api.example.com/");
        assert_eq!(
            upstream_url(&root, "/a", None)
                .map(|u| u.to_string())
                .as_deref(),
            Some("https://api.example.com/a")
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Bearer k"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer theirs"),
            ("accept", "application/json"),
            ("x-request-id", "7"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        let out = end_to_end(&h, &[&header::AUTHORIZATION]);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["accept", "x-request-id"]);
        let mut in_place = h.clone();
        strip_hop_by_hop(&mut in_place);
        let mut names: Vec<&str> = in_place.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["accept", "authorization", "x-request-id"]);
    }

    #[test]
    fn redirects_into_the_api_come_back_through_the_proxy() {
        let api = url("https://api.example.com/v2");
        let check = |loc: &str, want: Option<&str>| {
            assert_eq!(local_location(loc, &api, "/ion").as_deref(), want, "{loc}")
        };
        check("https://api.example.com/v2/next?p=2", Some("/ion/next?p=2"));
        check("/v2/next", Some("/ion/next"));
        check("https://other.example/v2/next", None);
        check("http://api.example.com/v2/next", None);
        check("/v3/next", None);
        check("/v2x", None);
    }

    #[test]
    fn a_new_token_is_wanted_only_on_a_401_that_is_about_the_token() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
            h
        };
        let u = StatusCode::UNAUTHORIZED;
        assert!(wants_new_token(u, &HeaderMap::new()));
        assert!(wants_new_token(u, &with(r#"Bearer error="invalid_token""#)));
        assert!(wants_new_token(u, &with(r#"Bearer realm="api""#)));
        assert!(!wants_new_token(
            u,
            &with(r#"Bearer error="insufficient_scope""#)
        ));
        assert!(!wants_new_token(StatusCode::FORBIDDEN, &HeaderMap::new()));
    }
}
