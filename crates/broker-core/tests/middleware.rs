//! The reqwest-middleware middleware: adds the profile's header, and on a 401 from the API forces one refresh
//! and retries once.
// A test crate: its helpers, like its tests, may panic on what the test set up (clippy.toml covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "middleware")]

use std::sync::Arc;

use broker_core::middleware::TokenMiddleware;
use broker_core::{Broker, Config};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn setup(server: &MockServer) -> reqwest_middleware::ClientWithMiddleware {
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "stale", "expires_in": 300})),
        )
        .up_to_n_times(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "fresh", "expires_in": 300})),
        )
        .mount(server)
        .await;
    client(server, "")
}

/// A client with the middleware for profile `p` at `server`'s `/token`, in memory, with `extra` lines.
fn client(server: &MockServer, extra: &str) -> reqwest_middleware::ClientWithMiddleware {
    let config = Config::parse(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\ncache = \"memory\"\n{extra}\n",
        server.uri()
    ))
    .unwrap();
    let broker = Arc::new(
        Broker::builder()
            .config(&config, &Default::default())
            .build(),
    );
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(broker, "p"))
        .build()
}

#[tokio::test]
async fn a_401_forces_one_refresh_and_one_retry() {
    let server = MockServer::start().await;
    let client = setup(&server).await;
    Mock::given(path("/api"))
        .and(header("authorization", "Bearer stale"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api"))
        .and(header("authorization", "Bearer fresh"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let resp = client
        .get(format!("{}/api", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_second_401_is_returned_not_retried_again() {
    let server = MockServer::start().await;
    let client = setup(&server).await;
    Mock::given(path("/api"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&server)
        .await;
    let resp = client
        .get(format!("{}/api", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_callers_reqwest_client_is_used_for_token_requests() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("user-agent", "my-app/1.0"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "from-my-client", "expires_in": 300})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let config = Config::parse(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\ncache = \"memory\"\n",
        server.uri()
    ))
    .unwrap();
    let mine = reqwest::Client::builder()
        .user_agent("my-app/1.0")
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let broker = Broker::builder()
        .http_client(mine)
        .config(&config, &Default::default())
        .build();
    let t = broker.token("p", &Default::default()).await.unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(t.secret()),
        "from-my-client"
    );
}

/// A DPoP resource server: checks each proof's signature (with the key it embeds), `htm`, `htu`, `ath` and `jti`,
/// asks for a nonce once, and accepts only proofs that carry it.
struct DpopApi {
    jtis: std::sync::Mutex<Vec<String>>,
}

impl wiremock::Respond for DpopApi {
    fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
        use base64::Engine as _;
        let b64 = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap_or_default()
        };
        let get = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let token = get("authorization")
            .strip_prefix("DPoP ")
            .unwrap_or("")
            .to_owned();
        let proof = get("dpop");
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3, "a DPoP proof");
        let header: serde_json::Value = serde_json::from_slice(&b64(parts[0])).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&b64(parts[1])).unwrap();
        let point = [
            &[4u8][..],
            &b64(header["jwk"]["x"].as_str().unwrap()),
            &b64(header["jwk"]["y"].as_str().unwrap()),
        ]
        .concat();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64(parts[2]),
            )
            .expect("the proof's signature verifies");
        assert_eq!(token, "bound");
        assert_eq!(claims["htm"], "GET");
        // wiremock names every request's host `localhost`: the URL sent is the Host header's.
        let htu = format!("http://{}{}", get("host"), req.url.path());
        assert_eq!(claims["htu"], htu.as_str());
        assert_eq!(claims["ath"], broker_core::dpop::ath("bound"));
        let mut jtis = self.jtis.lock().unwrap();
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert!(!jtis.contains(&jti), "a jti used twice");
        jtis.push(jti);
        if claims["nonce"] != "n-1" {
            return ResponseTemplate::new(401)
                .insert_header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
                .insert_header("dpop-nonce", "n-1");
        }
        ResponseTemplate::new(200)
    }
}

#[tokio::test]
async fn a_dpop_bound_token_goes_with_a_proof_per_request_and_one_retry_for_the_apis_nonce() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(wiremock::matchers::header_exists("dpop"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "bound", "token_type": "DPoP", "expires_in": 300}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let api = DpopApi {
        jtis: Default::default(),
    };
    // One refusal for the nonce, then three requests that carry it from the start.
    Mock::given(path("/api"))
        .respond_with(api)
        .expect(4)
        .mount(&server)
        .await;
    let client = client(&server, "dpop = true");
    for i in 0..3 {
        let resp = client
            .get(format!("{}/api?page={i}", server.uri()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}
