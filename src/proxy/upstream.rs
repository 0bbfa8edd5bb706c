//! What goes upstream with a request: the profile's header with the token, a DPoP proof for the request when the
//! token is bound, after the api refused a token the one replacement, and the upstream's answer as the client gets
//! it.

use std::sync::Arc;
use std::time::Instant;

use axum::http::header::{self, HeaderName, HeaderValue};
use broker_core::{AccessToken, Broker, TokenRequest};
use secrecy::ExposeSecret;
use url::Url;

use super::forward;
use super::routes::Route;
use super::FORCED_EVERY;

/// The DPoP proof of a `method` request to `url` with `token`, when the token is bound (with the api's last nonce).
pub(super) fn proof(
    broker: &Broker,
    profile: &str,
    route: &Route,
    method: &axum::http::Method,
    url: &Url,
    token: &AccessToken,
) -> broker_core::Result<Option<secrecy::SecretString>> {
    if !route.dpop {
        return Ok(None);
    }
    let nonce = route.nonces.get(url.as_str());
    broker.proof(
        profile,
        token,
        method.as_str(),
        url.as_str(),
        nonce.as_deref(),
    )
}

/// Keeps the api's `DPoP-Nonce`; whether the api refused the request for want of it (RFC 9449 §9).
pub(super) fn asks_for_nonce(route: &Route, resp: &reqwest::Response) -> bool {
    route
        .nonces
        .take_from(resp.url().as_str(), resp.status().as_u16(), resp.headers())
}

pub(super) async fn send(
    route: &Route,
    method: &axum::http::Method,
    url: Url,
    mut headers: axum::http::HeaderMap,
    body: reqwest::Body,
    token: &AccessToken,
    proof: Option<secrecy::SecretString>,
) -> reqwest::Result<reqwest::Response> {
    let raw = token.secret().expose_secret();
    let value = if token.token_type().eq_ignore_ascii_case("dpop")
        && route.header == header::AUTHORIZATION
    {
        format!("DPoP {raw}")
    } else {
        broker_core::config::fill_header(&route.value, raw)
    };
    // A token is printable ASCII (the core refuses any other), so it is always a valid header value.
    if let Ok(mut v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        v.set_sensitive(true);
        headers.insert(route.header.clone(), v);
    }
    if let Some(p) = proof {
        if let Ok(mut v) =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(p.expose_secret().to_owned()))
        {
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static("dpop"), v);
        }
    }
    route
        .client
        .request(method.clone(), url)
        .headers(headers)
        .body(body)
        .send()
        .await
}

/// A token to replace `rejected`, which the api refused: the one another request already got, else a new one
/// (at most once per [`FORCED_EVERY`]); `None` when there is none to try.
pub(super) async fn replacement(
    broker: &Broker,
    profile: &str,
    route: &Route,
    rejected: &AccessToken,
) -> Option<Arc<AccessToken>> {
    let _one = route.replacing.lock().await;
    let current = broker.token(profile, &TokenRequest::default()).await.ok()?;
    if current.secret().expose_secret() != rejected.secret().expose_secret() {
        return Some(current);
    }
    {
        let mut last = route.last_forced.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < FORCED_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
    }
    let forced = TokenRequest {
        force_refresh: true,
        ..Default::default()
    };
    let new = broker.token(profile, &forced).await.ok()?;
    (new.secret().expose_secret() != rejected.secret().expose_secret()).then_some(new)
}

/// The upstream's answer as the client gets it: end-to-end headers, a redirect into the api pointed back through
/// the proxy (under `/<profile>` when the proxy serves several), the body streamed.
pub(super) fn answer_of(
    mut resp: reqwest::Response,
    route: &Route,
    under: Option<&str>,
) -> axum::http::Response<reqwest::Body> {
    let mut headers = std::mem::take(resp.headers_mut());
    forward::strip_hop_by_hop(&mut headers);
    if resp.status().is_redirection() {
        let local = headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| {
                let prefix = under.map(|p| format!("/{p}")).unwrap_or_default();
                forward::local_location(l, &route.api, &prefix)
            })
            .and_then(|l| HeaderValue::try_from(l).ok());
        if let Some(l) = local {
            headers.insert(header::LOCATION, l);
        }
    }
    let status = resp.status();
    let mut out = axum::http::Response::new(reqwest::Body::from(resp));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}
