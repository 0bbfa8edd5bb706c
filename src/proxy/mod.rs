//! `broker proxy`: a local reverse proxy that adds each profile's header, so a program that knows only a base URL
//! gets the token without knowing broker exists (docs/integrations.md, "The proxy"). Each profile with an `api` is
//! served under `/<profile>/...` (or, with `--profile`, at the root), forwarded to its `api` with the provider's
//! header; `/.broker/metrics` and `/.broker/healthz` are the proxy's own.
//!
//! Who may use it is decided as for the daemon: a Unix socket 0600 whose peer uid must be ours (or `--allow-uid`);
//! a loopback TCP port whose client must send `Proxy-Authorization: Bearer <proxy.key>`, or be a socket of an
//! allowed uid in the kernel's table (`peer.rs`). Connections are bounded by the listeners of `crate::listen`.
//!
//! *Invariants: the token is sent only to the profile's `api` origin (`forward.rs`), and only when that origin may
//! carry a credential (`config::secure_enough`); a 401 about the token costs at most one new token per profile
//! however many requests saw it, and a forced refresh at most once per [`FORCED_EVERY`]; neither the token nor a
//! query string reaches a log line.*

mod forward;
mod listeners;
mod peer;
mod routes;
mod upstream;

pub use listeners::start;
pub use routes::Routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use broker_core::{AccessToken, Error, TokenRequest};
use hyper::body::Incoming;
use url::Url;

use crate::context::{self, CmdResult, Globals};
use crate::daemon::metrics::Metrics;
use crate::listen::{self, Answering, Guarded, Handler};
use forward::Outgoing;
use upstream::{answer_of, asks_for_nonce, proof, replacement, send};

/// The shortest time between two refreshes a 401 forces for one profile: an API that rejects every token (a wrong
/// audience, revoked access) must not turn each request into a token request.
pub const FORCED_EVERY: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Listen on this loopback TCP address (e.g. 127.0.0.1:8081). Clients send `Proxy-Authorization: Bearer <key>`
    /// (the key is written 0600 to the runtime directory as `proxy.key`), or are processes of an allowed uid.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Listen on this Unix socket (default, when --listen is not given: $XDG_RUNTIME_DIR/broker/proxy.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Serve this one profile at the root of the paths (else every profile with an `api`, under /<profile>/).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Also accept callers of this uid (repeatable).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Request bodies up to this many bytes are kept, so a request refused for its token can be sent once more
    /// with a new one; a longer body streams through and a 401 is passed back.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub retry_body_limit: usize,
    /// How long the upstream may take to connect, and stay silent while answering.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::commands::token::parse_duration)]
    pub upstream_timeout: Duration,
    #[command(flatten)]
    pub server: listen::ServerArgs,
}

/// Where the proxy's routes come from: its own (`broker proxy`), or the daemon's current configuration (`broker
/// daemon` with `[proxy]`: SIGHUP swaps it, and its refresher keeps a proxied profile fresh).
pub trait Backing: Send + Sync + 'static {
    fn routes(&self) -> Option<Arc<Routes>>;
    /// `profile` was just proxied.
    fn used(&self, _profile: &str) {}
}

impl Backing for Arc<Routes> {
    fn routes(&self) -> Option<Arc<Routes>> {
        Some(self.clone())
    }
}

pub struct Proxy {
    pub backing: Arc<dyn Backing>,
    pub retry_body_limit: usize,
    pub metrics: Arc<Metrics>,
    pub allowed_uids: Vec<u32>,
    /// Where each request is recorded (docs/reference.md §11).
    pub audit: Arc<crate::audit::Audit>,
}

/// Who a connection is.
#[derive(Clone)]
enum Caller {
    /// A Unix-socket peer, as the kernel described it.
    Unix(Arc<crate::caller::Peer>),
    /// A loopback TCP client: who owns its socket (asked of the kernel on its first request without the key),
    /// and the key it may send instead.
    Tcp {
        owner: Arc<peer::Owner>,
        key: Arc<str>,
    },
}

#[derive(Clone)]
struct Conn {
    proxy: Arc<Proxy>,
    caller: Caller,
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    args.server.runtime()?.block_on(serve(g, args))?;
    Ok(())
}

async fn serve(g: &Globals, args: &Args) -> Result<(), Error> {
    let config = context::load(g)?;
    let metrics = Arc::new(Metrics::default());
    let audit = crate::audit::Audit::start(&config.audit())?;
    let observer = crate::audit::Fetches {
        audit: Arc::new(std::sync::OnceLock::from(audit.clone())),
        next: metrics.clone(),
    };
    let broker = Arc::new(context::broker_all(&config, Some(Arc::new(observer)))?);
    let routes = Routes::build(
        &config,
        broker,
        args.profile.as_deref(),
        args.upstream_timeout,
    )?;
    let proxy = Arc::new(Proxy {
        backing: Arc::new(Arc::new(routes)),
        retry_body_limit: args.retry_body_limit,
        metrics,
        allowed_uids: std::iter::once(rustix::process::geteuid().as_raw())
            .chain(args.allow_uid.iter().copied())
            .collect(),
        audit,
    });
    listen::raise_open_file_limit();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listening = start(
        proxy,
        args.listen,
        args.socket.clone(),
        args.server.limits(),
        stop_rx,
    )
    .await?;
    listen::shutdown_signal().await;
    let _ = stop_tx.send(true);
    listening.finish().await;
    Ok(())
}

impl Handler for Conn {
    async fn handle(self, req: Request<Incoming>, answering: Answering) -> Response {
        if let Some(refused) = self.refuse(&req) {
            return refused;
        }
        let peer = match &self.caller {
            Caller::Unix(p) => p.clone(),
            Caller::Tcp { owner, .. } => Arc::new(crate::caller::Peer::of_tcp(owner.uid(), "tcp")),
        };
        self.proxy.answer(req, answering, peer).await
    }
}

impl Conn {
    /// The answer to a caller who may not use the proxy, if it may not.
    fn refuse<B>(&self, req: &Request<B>) -> Option<Response> {
        let allowed = |uid: &Option<u32>| uid.is_some_and(|u| self.proxy.allowed_uids.contains(&u));
        let ok = match &self.caller {
            Caller::Unix(peer) => allowed(&peer.uid()),
            Caller::Tcp { owner, key } => {
                use subtle::ConstantTimeEq;
                let given = req
                    .headers()
                    .get(header::PROXY_AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match given {
                    Some(given) => bool::from(given.as_bytes().ct_eq(key.as_bytes())),
                    None => allowed(&owner.uid()),
                }
            }
        };
        if ok {
            return None;
        }
        tracing::warn!("proxy: refused a request from {}", self.describe());
        let mut resp = forward::own_answer(
            StatusCode::FORBIDDEN,
            "broker proxy: this caller may not use the proxy (another uid, or a wrong Proxy-Authorization key)\n"
                .into(),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Some(resp)
    }

    fn describe(&self) -> String {
        match &self.caller {
            Caller::Unix(peer) => format!("uid {:?} on the Unix socket", peer.uid()),
            Caller::Tcp { owner, .. } => format!("uid {:?} over TCP", owner.uid()),
        }
    }
}

impl Proxy {
    async fn answer(
        self: Arc<Self>,
        req: Request<Incoming>,
        answering: Answering,
        peer: Arc<crate::caller::Peer>,
    ) -> Response {
        match req.uri().path() {
            "/.broker/healthz" => return forward::own_answer(StatusCode::OK, "ok\n".into()),
            "/.broker/metrics" => {
                let mut resp = forward::own_answer(StatusCode::OK, self.metrics.render());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                return resp;
            }
            _ => {}
        }
        let Some(routes) = self.backing.routes() else {
            let text =
                "broker proxy: the daemon's configuration has no [proxy] table any more\n".into();
            return forward::own_answer(StatusCode::SERVICE_UNAVAILABLE, text);
        };
        // A clone of the target shares its bytes: the path and query borrow from it while the request moves on.
        let uri = req.uri().clone();
        let (profile, rest) = match &routes.single {
            Some(p) => (p.as_str(), uri.path()),
            None => {
                let trimmed = uri.path().trim_start_matches('/');
                trimmed
                    .split_once('/')
                    .map_or((trimmed, ""), |(a, _)| (a, &trimmed[a.len()..]))
            }
        };
        if !routes.routes.contains_key(profile) {
            return forward::own_answer(
                StatusCode::NOT_FOUND,
                format!(
                    "broker proxy: no profile with an api is served at /{}: use /<profile>/<path>\n",
                    profile.escape_debug()
                ),
            );
        }
        let rule = routes.routes.get(profile).and_then(|r| r.allow.as_ref());
        let record = |outcome: &str, token: Option<&AccessToken>| {
            if !self.audit.enabled() {
                return true;
            }
            let taken = self.audit.record(&crate::audit::Record {
                kind: "proxy",
                profile,
                caller: Some(peer.caller()),
                outcome,
                token,
                upstream: None,
            });
            taken || !self.audit.required()
        };
        let unrecorded = || {
            let e = Error::unavailable(
                "the audit log cannot be written, and the [audit] mode is required",
            );
            crate::daemon::error_response(&e, StatusCode::SERVICE_UNAVAILABLE)
        };
        if self.audit.refuses() {
            // Its line is still tried: a log that can be written again ends the refusals.
            record("unrecorded", None);
            return unrecorded();
        }
        if let Some((e, _)) = crate::daemon::refused_by_rule(profile, rule, Some(&peer)) {
            self.metrics
                .proxied(profile, "refused", false, Duration::ZERO);
            record("refused", None);
            return crate::daemon::error_response(&e, StatusCode::FORBIDDEN);
        }
        let logged = tracing::enabled!(target: "broker::access", tracing::Level::INFO)
            .then(|| forward::logged(&req));
        let started = Instant::now();
        let mut used = None;
        let (answer, class, retried) = self
            .forward(&routes, profile, (rest, uri.query()), req, &mut used)
            .await;
        self.backing.used(profile);
        if !record(class, used.as_deref()) {
            return unrecorded();
        }
        self.metrics
            .proxied(profile, class, retried, started.elapsed());
        if let Some(logged) = logged {
            tracing::info!(
                target: "broker::access",
                "{logged} -> {} ({class}{}) {:.1} ms",
                answer.status().as_u16(),
                if retried { ", retried with a new token" } else { "" },
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        match answer {
            Answer::Own(resp) => resp,
            Answer::Upstream(resp) => {
                // The upstream's body streams: the request stays in flight until it is sent.
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, axum::body::Body::new(Guarded { body, answering }))
            }
        }
    }

    /// Forwards one request: the answer, its status class for the metrics, and whether it was sent again; `used`
    /// gets the token it was (last) sent with.
    async fn forward(
        &self,
        routes: &Routes,
        profile: &str,
        (path, query): (&str, Option<&str>),
        req: Request<Incoming>,
        used: &mut Option<Arc<AccessToken>>,
    ) -> (Answer, &'static str, bool) {
        let Some(route) = routes.routes.get(profile) else {
            return (
                Answer::Own(forward::own_answer(StatusCode::NOT_FOUND, String::new())),
                "usage",
                false,
            );
        };
        let Some(url) = forward::upstream_url(&route.api, path, query) else {
            let text = "broker proxy: that path does not stay on the profile's api\n".into();
            return (
                Answer::Own(forward::own_answer(StatusCode::BAD_REQUEST, text)),
                "usage",
                false,
            );
        };
        let (parts, body) = req.into_parts();
        let dpop = HeaderName::from_static("dpop");
        let dropped: &[&HeaderName] = if route.dpop {
            &[&route.header, &header::HOST, &dpop]
        } else {
            &[&route.header, &header::HOST]
        };
        let to_send = || forward::end_to_end(&parts.headers, dropped);
        let body = match Outgoing::read(body, self.retry_body_limit).await {
            Ok(b) => b,
            Err(e) => {
                let text = format!("broker proxy: the request body could not be read: {e}\n");
                return (
                    Answer::Own(forward::own_answer(StatusCode::BAD_REQUEST, text)),
                    "usage",
                    false,
                );
            }
        };
        let broker = &routes.broker;
        let token = match broker.token(profile, &TokenRequest::default()).await {
            Ok(t) => t,
            Err(e) => return (Answer::Own(token_failure(&e)), e.kind().as_str(), false),
        };
        *used = Some(token.clone());
        let (body, again) = body.send();
        let method = &parts.method;
        let signed =
            |url: &Url, token: &AccessToken| proof(broker, profile, route, method, url, token);
        let mut answer = match signed(&url, &token) {
            Ok(p) => send(route, method, url, to_send(), body, &token, p).await,
            Err(e) => return (Answer::Own(token_failure(&e)), e.kind().as_str(), false),
        };
        let mut retried = false;
        if let (Ok(resp), Some(again)) = (&answer, again) {
            if route.dpop && asks_for_nonce(route, resp) {
                tracing::debug!("profile `{profile}`: the api asked for a DPoP nonce; sending the request again with it");
                let url = resp.url().clone();
                if let Ok(p) = signed(&url, &token) {
                    answer = send(route, method, url, to_send(), again.into(), &token, p).await;
                    retried = true;
                }
            } else if forward::wants_new_token(resp.status(), resp.headers()) {
                if let Some(new) = replacement(broker, profile, route, &token).await {
                    tracing::debug!("profile `{profile}`: the api refused the token; sending the request again with a new one");
                    let url = resp.url().clone();
                    if let Ok(p) = signed(&url, &new) {
                        answer = send(route, method, url, to_send(), again.into(), &new, p).await;
                        retried = true;
                        *used = Some(new);
                    }
                }
            }
        }
        if let (true, Ok(resp)) = (route.dpop, &answer) {
            asks_for_nonce(route, resp);
        }
        match answer {
            Ok(resp) => {
                let class = match resp.status().as_u16() {
                    100..=199 => "1xx",
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                };
                (
                    Answer::Upstream(answer_of(
                        resp,
                        route,
                        routes.single.is_none().then_some(profile),
                    )),
                    class,
                    retried,
                )
            }
            Err(e) => {
                let status = if e.is_timeout() {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                let text = format!(
                    "broker proxy: profile `{profile}`: the api at {} did not answer: {}\n",
                    route.api.origin().ascii_serialization(),
                    chain(&e.without_url())
                );
                (
                    Answer::Own(forward::own_answer(status, text)),
                    "unavailable",
                    retried,
                )
            }
        }
    }
}

/// What a request is answered with: the proxy's own answer, or the upstream's, whose body streams.
enum Answer {
    Own(Response),
    Upstream(axum::http::Response<reqwest::Body>),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Own(r) => r.status(),
            Answer::Upstream(r) => r.status(),
        }
    }
}

/// The answer when no token could be had: the daemon's error JSON and status for the class.
fn token_failure(e: &Error) -> Response {
    crate::daemon::error_response(e, crate::daemon::status_of(e.kind()))
}

/// An error and its causes on one line (reqwest's own message is often just "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}
