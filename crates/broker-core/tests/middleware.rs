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
    let config = Config::parse(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\ncache = \"memory\"\n",
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
