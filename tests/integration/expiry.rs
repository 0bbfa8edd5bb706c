//! Contract §2 on an injected clock: margins, the pause after a server hands back its cached token,
//! failed refreshes that keep serving a still-valid token, and never an expired one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use broker_core::clock::ManualClock;
use broker_core::config::{Config, LoadOptions, Overrides};
use broker_core::{Broker, ErrorKind, TokenRequest};
use secrecy::ExposeSecret;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Fixture {
    server: MockServer,
    clock: Arc<ManualClock>,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(extra: &str) -> Self {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            format!("[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n{extra}", server.uri()),
        )
        .unwrap();
        let config = Config::load(&LoadOptions {
            config_file: Some(p),
            config_file_required: true,
            ..Default::default()
        })
        .unwrap();
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let broker = Broker::builder()
            .clock(clock.clone())
            .disk_cache(dir.path().join("cache"))
            .config(&config, &Overrides::default())
            .build();
        Fixture {
            server,
            clock,
            broker,
            _dir: dir,
        }
    }

    /// The next `n` token requests get `body`.
    async fn answer(&self, body: serde_json::Value, n: u64) {
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .up_to_n_times(n)
            .mount(&self.server)
            .await;
    }

    async fn fail_with(&self, status: u16) {
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status))
            .mount(&self.server)
            .await;
    }

    async fn calls(&self) -> usize {
        self.server.received_requests().await.map_or(0, |r| r.len())
    }

    async fn token(&self) -> Result<String, broker_core::Error> {
        self.broker
            .token("p", &TokenRequest::default())
            .await
            .map(|t| t.secret().expose_secret().to_owned())
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

#[tokio::test]
async fn a_token_is_served_until_the_margin_then_refreshed() {
    let f = Fixture::new("").await;
    f.answer(json!({"access_token": "first", "expires_in": 300}), 1)
        .await;
    f.answer(json!({"access_token": "second", "expires_in": 300}), 1)
        .await;
    assert_eq!(f.token().await.ok().as_deref(), Some("first"));
    f.advance(239); // 61 s left > min_ttl 60 s
    assert_eq!(f.token().await.ok().as_deref(), Some("first"));
    assert_eq!(f.calls().await, 1);
    f.advance(2); // 59 s left: inside the margin
    assert_eq!(f.token().await.ok().as_deref(), Some("second"));
    assert_eq!(f.calls().await, 2);
}

#[tokio::test]
async fn short_lived_tokens_use_half_their_lifetime_as_margin() {
    let f = Fixture::new("").await;
    f.answer(json!({"access_token": "short", "expires_in": 40}), 1)
        .await;
    f.answer(json!({"access_token": "next", "expires_in": 40}), 1)
        .await;
    assert_eq!(
        f.token().await.ok().as_deref(),
        Some("short"),
        "a just-fetched token is returned even below min_ttl"
    );
    f.advance(19);
    assert_eq!(f.token().await.ok().as_deref(), Some("short"));
    f.advance(2);
    assert_eq!(f.token().await.ok().as_deref(), Some("next"));
}

#[tokio::test]
async fn a_request_min_ttl_overrides_the_profile() {
    let f = Fixture::new("").await;
    f.answer(json!({"access_token": "a", "expires_in": 3600}), 1)
        .await;
    f.answer(json!({"access_token": "b", "expires_in": 3600}), 1)
        .await;
    f.token().await.unwrap();
    f.advance(3000); // 600 s left
    let req = TokenRequest {
        min_ttl: Some(Duration::from_secs(900)),
        ..Default::default()
    };
    let t = f.broker.token("p", &req).await.unwrap();
    assert_eq!(t.secret().expose_secret(), "b");
}

#[tokio::test]
async fn the_same_token_handed_back_is_kept_and_not_asked_for_again_too_soon() {
    let f = Fixture::new("").await;
    f.answer(
        json!({"access_token": "cached-upstream", "expires_in": 300}),
        1,
    )
    .await;
    f.answer(
        json!({"access_token": "cached-upstream", "expires_in": 50}),
        2,
    )
    .await;
    f.token().await.unwrap();
    f.advance(250); // 50 s left, inside the 60 s margin: refresh, the server hands back the same token
    assert_eq!(f.token().await.ok().as_deref(), Some("cached-upstream"));
    assert_eq!(f.calls().await, 2);
    // The same token keeps its 300 s lifetime, so margin = 60 s and the pause = max(60/2, 5) = 30 s.
    f.advance(29);
    assert_eq!(f.token().await.ok().as_deref(), Some("cached-upstream"));
    assert_eq!(f.calls().await, 2, "not asked again inside the pause");
    f.advance(2);
    f.token().await.unwrap();
    assert_eq!(f.calls().await, 3, "asked again after the pause");
}

#[tokio::test]
async fn a_failed_refresh_serves_the_still_valid_token_and_never_an_expired_one() {
    let f = Fixture::new("retry = \"0s\"\n").await;
    f.answer(json!({"access_token": "keep-me", "expires_in": 300}), 1)
        .await;
    f.fail_with(503).await;
    f.token().await.unwrap();
    f.advance(280);
    assert_eq!(
        f.token().await.ok().as_deref(),
        Some("keep-me"),
        "still valid for 20 s: served despite the 503"
    );
    assert_eq!(f.calls().await, 2);
    f.advance(20);
    let res = f.token().await;
    let err = res
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("an expired token was served: {res:?}"));
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn a_new_broker_reads_the_disk_cache_without_asking() {
    let f = Fixture::new("").await;
    f.answer(json!({"access_token": "on-disk", "expires_in": 300}), 1)
        .await;
    f.token().await.unwrap();
    let entry = f
        .broker
        .disk()
        .map(|d| d.dir().to_path_buf())
        .unwrap_or_default();
    let config = {
        let p = f._dir.path().join("config.toml");
        Config::load(&LoadOptions {
            config_file: Some(p),
            config_file_required: true,
            ..Default::default()
        })
        .unwrap()
    };
    let second = Broker::builder()
        .clock(f.clock.clone())
        .disk_cache(entry)
        .config(&config, &Overrides::default())
        .build();
    let t = second.cached("p", &TokenRequest::default()).unwrap();
    assert_eq!(
        t.map(|t| t.secret().expose_secret().to_owned()).as_deref(),
        Some("on-disk")
    );
    assert_eq!(f.calls().await, 1);
}

#[tokio::test]
async fn lifetimes_above_max_ttl_are_cut() {
    let f = Fixture::new("max_ttl = \"1h\"\n").await;
    f.answer(
        json!({"access_token": "long", "expires_in": 315_360_000}),
        1,
    )
    .await;
    let t = f.broker.token("p", &TokenRequest::default()).await.unwrap();
    assert_eq!(t.lifetime(), Duration::from_secs(3600));
}
