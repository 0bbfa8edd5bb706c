//! In-process: one slot per cache key. Many concurrent callers of one key make one upstream call; a slow
//! provider for one key does not hold up another.

use std::sync::Arc;
use std::time::Duration;

use broker_core::config::{Config, LoadOptions, Overrides};
use broker_core::{Broker, TokenRequest};
use secrecy::ExposeSecret;
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn config(toml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    std::fs::write(&p, toml).unwrap();
    Config::load(&LoadOptions {
        config_file: Some(p),
        config_file_required: true,
        ..Default::default()
    })
    .unwrap()
}

fn profile(name: &str, server: &MockServer, client: &str) -> String {
    format!(
        "[profiles.{name}]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"{client}\"\nclient_secret = \"s\"\ncache = \"memory\"\n",
        server.uri()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_callers_make_one_upstream_call_and_cache_hits_make_none() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "shared", "expires_in": 300}))
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let broker = Arc::new(
        Broker::builder()
            .config(&config(&profile("p", &server, "a")), &Overrides::default())
            .build(),
    );
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let b = Arc::clone(&broker);
            tokio::spawn(async move { b.token("p", &TokenRequest::default()).await })
        })
        .collect();
    for t in tasks {
        let tok = t.await.unwrap().unwrap();
        assert_eq!(tok.secret().expose_secret(), "shared");
    }
    // Warm: served from memory; `.expect(1)` above fails the test on drop if any of these went upstream.
    for _ in 0..50 {
        broker.token("p", &TokenRequest::default()).await.unwrap();
        assert!(broker
            .cached("p", &TokenRequest::default())
            .unwrap()
            .is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_key_does_not_block_another() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("client_id=slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "slow", "expires_in": 300}))
                .set_delay(Duration::from_secs(3)),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("client_id=fast"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "fast", "expires_in": 300})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let toml = format!(
        "{}{}",
        profile("slow", &server, "slow"),
        profile("fast", &server, "fast")
    );
    let broker = Arc::new(
        Broker::builder()
            .config(&config(&toml), &Overrides::default())
            .build(),
    );
    let b = Arc::clone(&broker);
    let slow = tokio::spawn(async move { b.token("slow", &TokenRequest::default()).await });
    // Wait until the slow request is in flight at the server, then ask for the other key.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.received_requests().await.map_or(0, |r| r.len()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fast = broker
        .token("fast", &TokenRequest::default())
        .await
        .unwrap();
    assert_eq!(fast.secret().expose_secret(), "fast");
    assert!(
        !slow.is_finished(),
        "the fast key finished while the slow fetch was still in flight"
    );
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.secret().expose_secret(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_make_no_upstream_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "warm", "expires_in": 300})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let broker = Broker::builder()
        .config(&config(&profile("p", &server, "a")), &Overrides::default())
        .build();
    broker.token("p", &TokenRequest::default()).await.unwrap();
    server.verify().await;
    // From here on the provider must not be asked at all.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    for _ in 0..100 {
        let t = broker.token("p", &TokenRequest::default()).await.unwrap();
        assert_eq!(t.secret().expose_secret(), "warm");
    }
    server.verify().await;
}
