//! Transient failures and hostile answers: retries within the budget, Retry-After, cool-downs that separate
//! processes obey, stalls and resets from a raw TCP server.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

fn profile(home: &Home, url: &str, extra: &str) {
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{url}\"\nclient_id = \"id\"\nclient_secret = \"s\"\n{extra}"
    ));
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

fn ok_body() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"access_token": "after-retry", "expires_in": 300}))
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_answers_are_retried_within_the_budget() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok_body())
        .mount(&server)
        .await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    assert_eq!(home.run(["token", "p"]).success().stdout, "after-retry\n");
    assert_eq!(requests(&server).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_failures_are_not_retried() {
    for status in [400, 401, 403, 404] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status))
            .mount(&server)
            .await;
        let home = Home::new();
        profile(&home, &format!("{}/token", server.uri()), "");
        let out = home.run(["token", "p"]);
        assert_ne!(out.code, 0);
        assert_eq!(requests(&server).await, 1, "HTTP {status} was retried");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_within_the_budget_is_waited_for() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok_body())
        .mount(&server)
        .await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    let started = std::time::Instant::now();
    home.run(["token", "p"]).success();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the named second was not waited for"
    );
    assert_eq!(requests(&server).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_naming_a_time_past_the_budget_fails_at_once_and_later_processes_wait_for_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .mount(&server)
        .await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    let started = std::time::Instant::now();
    home.run(["token", "p"])
        .code(5)
        .stderr_has("retry after")
        .stderr_has("beyond the retry budget");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited instead of failing at once"
    );
    assert_eq!(requests(&server).await, 1);
    // A separate process obeys the time the provider named, without asking it.
    home.run(["token", "p", "--format", "json"])
        .code(5)
        .stderr_has(r#""error":"unavailable""#)
        .stderr_has("not asking the provider again before");
    assert_eq!(requests(&server).await, 1);
    home.run(["token", "p", "--force-refresh"]).code(5);
    assert_eq!(requests(&server).await, 2, "--force-refresh asks anyway");
}

#[tokio::test(flavor = "multi_thread")]
async fn x_ratelimit_reset_is_honoured_when_there_is_no_retry_after() {
    let server = MockServer::start().await;
    let reset = (now_secs() + 600).to_string();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("x-ratelimit-reset", reset.as_str()))
        .mount(&server)
        .await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    home.run(["token", "p"]).code(5).stderr_has("retry after");
    home.run(["token", "p"]).code(5).stderr_has("cool-down");
    assert_eq!(requests(&server).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_in_a_shell_loop_asks_the_provider_once_per_cooldown() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    let home = Home::new();
    profile(
        &home,
        &format!("{}/token", server.uri()),
        "cooldown = \"10m\"\n",
    );
    for _ in 0..5 {
        home.run(["token", "p"])
            .code(4)
            .stderr_has("invalid_client");
    }
    assert_eq!(
        requests(&server).await,
        1,
        "a rejected secret must not be retried by later processes"
    );
    home.run(["token", "p"])
        .code(4)
        .stderr_has("--force-refresh overrides");
    home.run(["token", "p", "--force-refresh"]).code(4);
    assert_eq!(requests(&server).await, 2);
}

/// A raw TCP server that answers one connection with `head` and then does `then`.
fn raw_server(head: &'static [u8], then: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(head);
            let _ = s.flush();
            then(s);
        }
    });
    port
}

const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"access_token\":\"par";

#[test]
fn a_body_that_stalls_past_the_timeout_is_unavailable() {
    // Hold the connection open, sending nothing more, until the broker gives up and closes it.
    let port = raw_server(PARTIAL, |mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    });
    let home = Home::new();
    profile(
        &home,
        &format!("http://127.0.0.1:{port}/token"),
        "timeout = \"1s\"\nretry = \"0s\"\n",
    );
    home.run(["token", "p"]).code(5).stderr_has("timed out");
    assert_eq!(home.cached_tokens(), 0);
}

#[test]
fn a_connection_reset_mid_body_is_unavailable() {
    let port = raw_server(PARTIAL, |s| {
        // SO_LINGER 0: closing sends a RST, not a FIN.
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    });
    let home = Home::new();
    profile(
        &home,
        &format!("http://127.0.0.1:{port}/token"),
        "retry = \"0s\"\n",
    );
    home.run(["token", "p"]).code(5);
    assert_eq!(home.cached_tokens(), 0);
}
