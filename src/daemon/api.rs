//! The daemon's HTTP API (docs/reference.md §6): the routes' handlers, the uid, key and fingerprint guards, and the
//! error JSON.

use super::*;

/// Who a connection is, and the checks its every request passes before routing: on the Unix socket the peer's
/// uid, on the TCP listener `Authorization: Bearer <key>` in constant time; on both the config fingerprint (a
/// request carrying another one is answered 409 before any work), stamped on every answer. Plain functions on the
/// connection's side rather than router middleware, since every cache hit passes them.
#[derive(Clone)]
pub(super) struct Gate {
    pub(super) daemon: Arc<Daemon>,
    pub(super) who: Who,
}

#[derive(Clone)]
pub(super) enum Who {
    /// A Unix-socket peer, as the kernel described it.
    Unix(Arc<crate::caller::Peer>),
    /// A TCP client, which must send this key, known to the rules and the audit log only as its holder.
    Tcp(Arc<str>, Arc<crate::caller::Peer>),
}

impl Who {
    /// The caller for a profile's `allow` rule: a TCP client is known only as a holder of the key.
    fn peer(&self) -> Arc<crate::caller::Peer> {
        match self {
            Who::Unix(p) => p.clone(),
            Who::Tcp(_, holder) => holder.clone(),
        }
    }
}

impl Gate {
    /// The answer to a request refused before routing, if it is.
    pub(super) fn refuse<B>(&self, req: &axum::http::Request<B>) -> Option<Response> {
        match &self.who {
            Who::Unix(peer)
                if !peer
                    .uid()
                    .is_some_and(|u| self.daemon.allowed_uids.contains(&u)) =>
            {
                tracing::warn!("refused a connection from uid {:?}", peer.uid());
                return Some(error_response(
                    &Error::new(ErrorKind::Usage, "this uid may not use the daemon"),
                    StatusCode::FORBIDDEN,
                ));
            }
            Who::Tcp(key, _) => {
                use subtle::ConstantTimeEq;
                let given = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
                    // Answered, then closed: a connection without the key holds nothing open.
                    let mut resp = error_response(
                        &Error::usage(
                            "missing or wrong key: send Authorization: Bearer <daemon.key>",
                        ),
                        StatusCode::UNAUTHORIZED,
                    );
                    resp.headers_mut()
                        .insert("connection", HeaderValue::from_static("close"));
                    return Some(resp);
                }
            }
            Who::Unix(_) => {}
        }
        let theirs = req.headers().get("broker-config")?;
        (theirs != self.daemon.loaded().fingerprint).then(|| {
            error_response(
                &Error::usage(
                    "this daemon runs another configuration (see the Broker-Config header)",
                ),
                StatusCode::CONFLICT,
            )
        })
    }

    /// Stamps an answer with the config fingerprint.
    pub(super) fn stamp(&self, resp: &mut Response) {
        let fingerprint = self.daemon.loaded().fingerprint.clone();
        resp.headers_mut().insert("broker-config", fingerprint);
    }
}

/// The API behind its gate: what a connection's requests are answered by.
#[derive(Clone)]
pub(super) struct Gated {
    pub(super) gate: Gate,
    pub(super) app: Router,
}

impl crate::listen::Handler for Gated {
    fn handle(
        self,
        req: axum::http::Request<hyper::body::Incoming>,
        answering: crate::listen::Answering,
    ) -> impl std::future::Future<Output = Response> + Send + 'static {
        use tower::ServiceExt;
        let refused = self.gate.refuse(&req);
        let mut req = req;
        req.extensions_mut().insert(self.gate.who.peer());
        async move {
            let mut resp = match refused {
                Some(resp) => resp,
                None => match self.app.oneshot(req.map(axum::body::Body::new)).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
            };
            self.gate.stamp(&mut resp);
            drop(answering);
            resp
        }
    }
}

/// The error JSON (the CLI's `--format json` error, [`crate::output::error_json`]); an error that says when to
/// come back (an outage, a cool-down) also carries `Retry-After`.
pub(crate) fn error_response(e: &Error, status: StatusCode) -> Response {
    let mut resp = (status, Json(crate::output::error_json(e))).into_response();
    if let Some(at) = e.retry_at() {
        let secs = at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs_f64()
            .ceil()
            .max(1.0);
        if let Ok(v) = HeaderValue::from_str(&format!("{secs}")) {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}

pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Usage => StatusCode::BAD_REQUEST,
        ErrorKind::Config => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Rejected | ErrorKind::BadResponse => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    min_ttl: Option<String>,
    force_refresh: Option<bool>,
    /// `/proof`: the request the DPoP proof is for, and the resource server's nonce.
    htm: Option<String>,
    htu: Option<String>,
    nonce: Option<String>,
}

/// The metrics label of every profile name that is not configured.
pub(super) const UNKNOWN_PROFILE: &str = "(unknown)";

pub(super) async fn token(
    State(daemon): State<Arc<Daemon>>,
    UrlPath(profile): UrlPath<String>,
    peer: Option<axum::Extension<Arc<crate::caller::Peer>>>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    serve(daemon, profile, peer.map(|p| p.0), query, false).await
}

/// `/v1/token/<profile>/proof?htm=GET&htu=URL[&nonce=N]`: the token, with a DPoP proof for that request in `dpop`
/// (docs/reference.md §6, §10), so a consumer never holds the key.
pub(super) async fn proof(
    State(daemon): State<Arc<Daemon>>,
    UrlPath(profile): UrlPath<String>,
    peer: Option<axum::Extension<Arc<crate::caller::Peer>>>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    serve(daemon, profile, peer.map(|p| p.0), query, true).await
}

/// The answer to a caller `allow` refuses, if it does: 403, class `rejected`, naming the part of the rule that
/// refused and the caller as the kernel described it (docs/reference.md §11).
pub(crate) fn refused_by_rule(
    profile: &str,
    rule: Option<&broker_core::caller::Allow>,
    peer: Option<&crate::caller::Peer>,
) -> Option<(Error, broker_core::caller::Caller)> {
    let rule = rule?;
    let caller = match peer {
        Some(p) if rule.needs_process() => p.caller().clone(),
        Some(p) => p.credentials(),
        None => broker_core::caller::Caller::default(),
    };
    let part = rule.admits(&caller).err()?;
    tracing::warn!("profile `{profile}`: refused {caller}: not in its `allow.{part}`");
    Some((
        Error::rejected(format!(
            "profile `{profile}`: this caller may not have its token: its rule `allow.{part}` does not admit {caller}"
        )),
        caller,
    ))
}

/// A token request, recorded in the audit log (docs/reference.md §11): with `mode = "required"`, a request whose
/// line cannot be taken is answered 503 instead.
async fn serve(
    daemon: Arc<Daemon>,
    profile: String,
    peer: Option<Arc<crate::caller::Peer>>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    with_proof: bool,
) -> Response {
    let unrecorded = || {
        error_response(
            &Error::unavailable(
                "the audit log cannot be written, and this daemon's [audit] mode is required",
            ),
            StatusCode::SERVICE_UNAVAILABLE,
        )
    };
    if daemon.audit.refuses() {
        // Its line is still tried: a log that can be written again ends the refusals.
        daemon.audit.record(&crate::audit::Record {
            kind: "daemon",
            profile: &profile,
            caller: peer.as_deref().map(crate::caller::Peer::caller),
            outcome: "unrecorded",
            token: None,
            upstream: None,
        });
        return unrecorded();
    }
    let (resp, outcome, token) =
        answer(&daemon, &profile, peer.as_deref(), query, with_proof).await;
    if daemon.audit.enabled() {
        let taken = daemon.audit.record(&crate::audit::Record {
            kind: "daemon",
            profile: &profile,
            caller: peer.as_deref().map(crate::caller::Peer::caller),
            outcome,
            token: token.as_deref(),
            upstream: None,
        });
        if !taken && daemon.audit.required() {
            return unrecorded();
        }
    }
    resp
}

/// The answer to a token request, the outcome the audit log records, and the token served.
async fn answer(
    daemon: &Daemon,
    profile: &str,
    peer: Option<&crate::caller::Peer>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    with_proof: bool,
) -> (
    Response,
    &'static str,
    Option<Arc<broker_core::AccessToken>>,
) {
    let profile = profile.to_owned();
    let loaded = daemon.loaded();
    let m = &daemon.metrics;
    // Metric series only for configured profiles: a name from the request must not grow memory.
    let known = loaded.names.binary_search(&profile).is_ok();
    let label = if known {
        profile.as_str()
    } else {
        UNKNOWN_PROFILE
    };
    let Ok(Query(q)) = query else {
        m.request(label, "usage");
        let e = Error::usage("bad query: use min_ttl=<duration>&force_refresh=<bool>");
        return (error_response(&e, StatusCode::BAD_REQUEST), "usage", None);
    };
    let asked_for = match (with_proof, &q.htm, &q.htu) {
        (false, _, _) => None,
        (true, Some(m), Some(u)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some((m.as_str(), u.as_str()))
        }
        (true, ..) => {
            m.request(label, "usage");
            let e = Error::usage(
                "a proof is for one request: use htm=<METHOD>&htu=<URL>[&nonce=<nonce>]",
            );
            return (error_response(&e, StatusCode::BAD_REQUEST), "usage", None);
        }
    };
    let min_ttl = match q
        .min_ttl
        .as_deref()
        .map(broker_core::duration::parse)
        .transpose()
    {
        Ok(d) => d,
        Err(e) => {
            let e = Error::usage(format!("min_ttl: {e}"));
            return (error_response(&e, StatusCode::BAD_REQUEST), "usage", None);
        }
    };
    if !known {
        m.request(label, "unknown_profile");
        let names: Vec<&str> = loaded.names.iter().map(String::as_str).collect();
        let e = broker_core::error::unknown_profile(&profile, &names, &[]);
        return (
            error_response(&e, StatusCode::NOT_FOUND),
            "unknown_profile",
            None,
        );
    }
    let rule = loaded.settings.get(&profile).and_then(|s| s.allow.as_ref());
    if let Some((e, _)) = refused_by_rule(&profile, rule, peer) {
        m.request(&profile, "refused");
        return (error_response(&e, StatusCode::FORBIDDEN), "refused", None);
    }
    let req = TokenRequest {
        min_ttl,
        force_refresh: q.force_refresh.unwrap_or(false),
        ..Default::default()
    };
    let asked = SystemTime::now();
    let result = loaded.broker.token(&profile, &req).await;
    let now = SystemTime::now();
    let mut outcome = "fetched";
    if let Ok(t) = &result {
        // A hit: the token was not fetched for this request.
        let hit = t.obtained_at() < asked;
        m.served(&profile, hit, t.remaining(now));
        if hit {
            outcome = "hit";
        }
    }
    match (result, loaded.settings.get(&profile)) {
        (Ok(t), Some(settings)) => {
            m.request(&profile, "ok");
            daemon.refresher.keep_fresh(&profile);
            let proof = match asked_for
                .map(|(htm, htu)| {
                    loaded
                        .broker
                        .proof(&profile, &t, htm, htu, q.nonce.as_deref())
                })
                .transpose()
            {
                Ok(p) => p.flatten(),
                Err(e) => {
                    return (
                        error_response(&e, status_of(e.kind())),
                        e.kind().as_str(),
                        None,
                    )
                }
            };
            let resp = match output::render(
                Format::Json,
                &settings.shown,
                &t,
                proof.as_ref().map(secrecy::ExposeSecret::expose_secret),
                now,
                min_ttl.unwrap_or(settings.min_ttl),
            ) {
                Ok(body) => ([("content-type", "application/json")], body).into_response(),
                Err(e) => error_response(&e, StatusCode::INTERNAL_SERVER_ERROR),
            };
            (resp, outcome, Some(t))
        }
        (Ok(_), None) => (
            error_response(
                &Error::internal("profile without settings"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            "internal",
            None,
        ),
        (Err(e), _) => {
            m.request(&profile, e.kind().as_str());
            (
                error_response(&e, status_of(e.kind())),
                e.kind().as_str(),
                None,
            )
        }
    }
}

pub(super) async fn profiles(State(daemon): State<Arc<Daemon>>) -> Json<serde_json::Value> {
    let loaded = daemon.loaded();
    let list: Vec<serde_json::Value> = loaded
        .names
        .iter()
        .map(String::as_str)
        .map(|name| {
            let s = loaded.settings.get(name);
            let status = loaded.broker.status(name);
            let cache = match &status {
                Ok(s) => match s.cache {
                    CacheState::Valid(at) => json!({"state": "valid", "expires_at": rfc3339(at)}),
                    CacheState::Expired(at) => json!({"state": "expired", "expires_at": rfc3339(at)}),
                    CacheState::None => json!({"state": "none"}),
                },
                Err(e) => json!({"state": "error", "error": e.kind().as_str()}),
            };
            let cooldown = status.ok().and_then(|s| s.cooldown).map(|c| {
                json!({"class": c.kind.as_str(), "until": rfc3339(c.until), "message": c.message})
            });
            let refresh = match daemon.refresher.state(name) {
                None => json!({"state": "idle"}),
                Some(None) => json!({"state": "running"}),
                Some(Some(at)) => json!({"state": "scheduled", "at": rfc3339(at)}),
            };
            json!({"name": name, "provider": s.and_then(|s| s.provider.clone()), "environment": s.and_then(|s| s.environment.clone()), "cache": cache, "cooldown": cooldown, "refresh": refresh})
        })
        .collect();
    Json(json!({"profiles": list}))
}

pub(super) async fn metrics_text(State(daemon): State<Arc<Daemon>>) -> impl IntoResponse {
    let mut text = daemon.metrics.render();
    if daemon.audit.enabled() {
        text.push_str(&format!(
            "# HELP broker_audit_up Whether the audit log's last write succeeded.\n# TYPE broker_audit_up gauge\n\
             broker_audit_up {}\n# HELP broker_audit_dropped_total Audit lines dropped because the writer fell \
             behind.\n# TYPE broker_audit_dropped_total counter\nbroker_audit_dropped_total {}\n",
            u8::from(!daemon.audit.failing()),
            daemon.audit.dropped()
        ));
    }
    if let Some(shared) = daemon.loaded().broker.shared_cache() {
        super::metrics::render_shared(&mut text, shared.stats());
    }
    ([("content-type", "text/plain; version=0.0.4")], text)
}
