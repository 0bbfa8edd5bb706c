//! `broker dev-issuer`: a local development token issuer on loopback, like `vault server -dev`.
//!
//! Keycloak-shaped (`/realms/{realm}/protocol/openid-connect/token`, form) and Auth0-shaped (`/oauth/token`,
//! JSON or form) endpoints; EdDSA-signed JWTs with a JWKS; the client id and secret are checked; tokens are
//! counted (`GET /stats`). A request with a valid DPoP proof (RFC 9449: signature by its embedded P-256 key, `htm`
//! POST) gets a DPoP token bound to that key (`cnf.jkt`). A user feature and a demo aid, not a conformance target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use broker_core::Error;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::context::CmdResult;

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, default_value_t = 300)]
    pub ttl: u64,
    /// The client id to accept.
    #[arg(long, default_value = "dev-client")]
    pub client_id: String,
}

/// The issuer's shared state.
struct Issuer {
    base: String,
    client_id: String,
    client_secret: String,
    ttl: u64,
    key: EncodingKey,
    kid: String,
    public_x: String,
    issued: AtomicU64,
}

/// A running issuer.
pub struct Running {
    pub client_id: String,
    pub client_secret: String,
    state: Arc<Issuer>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }
    pub fn base(&self) -> &str {
        &self.state.base
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(b)
}

/// Starts an issuer on `127.0.0.1:port` on the current runtime.
pub async fn start(port: u16, ttl: u64, client_id: &str) -> Result<Running, Error> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::internal(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let seed: [u8; 32] = random_bytes()?;
    // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed 16-byte prefix, then the seed.
    let mut der = hex::decode("302e020100300506032b657004220420")
        .map_err(|e| Error::internal(e.to_string()))?;
    der.extend_from_slice(&seed);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let state = Arc::new(Issuer {
        base: format!("http://{addr}"),
        client_id: client_id.to_owned(),
        client_secret: b64.encode(random_bytes::<24>()?),
        ttl,
        key: EncodingKey::from_ed_der(&der),
        kid: hex::encode(random_bytes::<6>()?),
        public_x: b64.encode(public),
        issued: AtomicU64::new(0),
    });
    let app = Router::new()
        .route(
            "/realms/{realm}/protocol/openid-connect/token",
            post(keycloak_token),
        )
        .route("/realms/{realm}/protocol/openid-connect/certs", get(jwks))
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            get(realm_discovery),
        )
        .route("/oauth/token", post(auth0_token))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/stats", get(stats))
        .with_state(state.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Running {
        client_id: state.client_id.clone(),
        client_secret: state.client_secret.clone(),
        state,
        _stop: stop,
    })
}

pub fn run(args: &Args) -> CmdResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let issuer = start(args.port, args.ttl, &args.client_id).await?;
        let base = issuer.base();
        println!("broker dev-issuer: a development token issuer; never use it for anything real.");
        println!("  keycloak-shaped: {base}/realms/<realm>/protocol/openid-connect/token (form)");
        println!("  auth0-shaped:    {base}/oauth/token (JSON or form)");
        println!("  discovery:       {base}/.well-known/openid-configuration");
        println!("  client_id:       {}", issuer.client_id);
        println!("  client_secret:   {}", issuer.client_secret);
        println!("  token lifetime:  {}s; Ctrl-C stops it", args.ttl);
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        println!("issued {} token(s)", issuer.issued());
        Ok::<(), Error>(())
    })?;
    Ok(())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn json_fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    let Value::Object(m) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    Some(
        m.into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect(),
    )
}

async fn keycloak_token(
    State(st): State<Arc<Issuer>>,
    Path(realm): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !content_type(&headers).starts_with("application/x-www-form-urlencoded") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({"error": "RESTEASY003065: Cannot consume content type"})),
        )
            .into_response();
    }
    issue(
        &st,
        &headers,
        &form_fields(&body),
        &format!("{}/realms/{realm}", st.base),
    )
}

async fn auth0_token(State(st): State<Arc<Issuer>>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = if content_type(&headers).starts_with("application/json") {
        match json_fields(&body) {
            Some(f) => f,
            None => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the body is not a JSON object",
                )
            }
        }
    } else {
        form_fields(&body)
    };
    issue(&st, &headers, &fields, &format!("{}/", st.base))
}

/// Client credentials from `Authorization: Basic` (each part form-decoded) or the body.
fn client_credentials(
    headers: &HeaderMap,
    fields: &[(String, String)],
) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (id, secret) = raw.split_once(':')?;
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        return Some((dec(id)?, dec(secret)?));
    }
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Some((get("client_id")?, get("client_secret")?))
}

fn issue(st: &Issuer, headers: &HeaderMap, fields: &[(String, String)], iss: &str) -> Response {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("grant_type") != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    match client_credentials(headers, fields) {
        Some((id, secret)) if id == st.client_id && secret == st.client_secret => {}
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Invalid client or Invalid client credentials",
            )
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let mut claims = json!({
        "iss": iss, "sub": st.client_id, "azp": st.client_id, "client_id": st.client_id,
        "iat": now, "exp": now + st.ttl, "jti": format!("{}-{n}", st.kid),
    });
    if let Some(aud) = get("audience") {
        claims["aud"] = json!(aud);
    }
    if let Some(scope) = get("scope") {
        claims["scope"] = json!(scope);
    }
    let mut token_type = "Bearer";
    if let Some(proof) = headers.get("dpop").and_then(|v| v.to_str().ok()) {
        match proof_key(proof) {
            Some(jkt) => {
                claims["cnf"] = json!({ "jkt": jkt });
                token_type = "DPoP";
            }
            None => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_dpop_proof",
                    "the DPoP proof does not verify",
                )
            }
        }
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(st.kid.clone());
    match jsonwebtoken::encode(&header, &claims, &st.key) {
        Ok(token) => (
            [("cache-control", "no-store")],
            Json(json!({"access_token": token, "expires_in": st.ttl, "token_type": token_type, "scope": get("scope").unwrap_or("")})),
        )
            .into_response(),
        Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
    }
}

/// The RFC 7638 thumbprint of a token request's DPoP proof key, when the proof is an ES256 `dpop+jwt` for a POST
/// whose signature verifies with the P-256 key it embeds.
fn proof_key(proof: &str) -> Option<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = proof.split('.');
    let (h, c, sig) = (parts.next()?, parts.next()?, parts.next()?);
    let header: Value = serde_json::from_slice(&b64.decode(h).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&b64.decode(c).ok()?).ok()?;
    let jwk = &header["jwk"];
    if header["typ"] != "dpop+jwt"
        || header["alg"] != "ES256"
        || jwk["crv"] != "P-256"
        || claims["htm"] != "POST"
    {
        return None;
    }
    let (x, y) = (jwk["x"].as_str()?, jwk["y"].as_str()?);
    let point = [&[4u8][..], &b64.decode(x).ok()?, &b64.decode(y).ok()?].concat();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(format!("{h}.{c}").as_bytes(), &b64.decode(sig).ok()?)
        .ok()?;
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    use sha2::Digest;
    Some(b64.encode(sha2::Sha256::digest(canonical.as_bytes())))
}

async fn jwks(State(st): State<Arc<Issuer>>) -> Json<Value> {
    Json(
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": st.public_x, "kid": st.kid, "alg": "EdDSA", "use": "sig"}]}),
    )
}

async fn discovery(State(st): State<Arc<Issuer>>) -> Json<Value> {
    let b = &st.base;
    Json(
        json!({"issuer": format!("{b}/"), "token_endpoint": format!("{b}/oauth/token"), "jwks_uri": format!("{b}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"], "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"]}),
    )
}

async fn realm_discovery(State(st): State<Arc<Issuer>>, Path(realm): Path<String>) -> Json<Value> {
    let r = format!("{}/realms/{realm}", st.base);
    Json(
        json!({"issuer": r, "token_endpoint": format!("{r}/protocol/openid-connect/token"), "jwks_uri": format!("{r}/protocol/openid-connect/certs"),
        "grant_types_supported": ["client_credentials"]}),
    )
}

async fn stats(State(st): State<Arc<Issuer>>) -> Json<Value> {
    Json(json!({"tokens_issued": st.issued.load(Ordering::SeqCst)}))
}
