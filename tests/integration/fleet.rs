//! Fleet mode (docs/reference.md §9) against a real `redis-server`: daemons on separate homes (their own caches and
//! sockets) sharing one Redis, as hosts of a fleet do.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::daemon::{get_async, metric, poll, Daemon};
use crate::support::*;

const SECRET: &str = "fleet-client-secret-77a1";
const CLIENT: &str = "fleet-client-id-3c9e";

fn fleet_key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// A host of the fleet: a home whose config shares `redis` under `key`, with `profiles` (TOML) added. Redis gets 2 s
/// to answer (not the default 50 ms): these tests count upstream calls, and a test machine busy with other tests must
/// not make a host work alone; `a_redis_that_does_not_answer_fails_no_request` covers the default.
fn member(redis: &Redis, key: &str, profiles: &str) -> Home {
    member_at(&redis.url(), key, "timeout = \"2s\"", profiles)
}

fn member_at(url: &str, key: &str, extra: &str, profiles: &str) -> Home {
    let home = Home::new();
    let key_file = home.path().join("fleet.key");
    std::fs::write(&key_file, key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    home.config(&format!(
        "[shared_cache]\nurl = \"{url}\"\nkey = {{ file = \"{}\" }}\nprefix = \"fleet\"\n{extra}\n\n{profiles}",
        key_file.display()
    ));
    home
}

/// A profile at `server` named `name` (its client id tells its requests apart), with `extra` lines.
fn profile(name: &str, server: &MockServer, extra: &str) -> String {
    format!(
        "[profiles.{name}]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"{CLIENT}-{name}\"\nclient_secret = {{ env = \"S\" }}\n{extra}\n",
        server.uri()
    )
}

fn start(home: &Home) -> Daemon {
    Daemon::start_with(home, &[], &[("S", SECRET)])
}

/// Upstream requests for profile `name` so far.
async fn asked(server: &MockServer, name: &str) -> usize {
    let id = format!("client_id={CLIENT}-{name}");
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(&id))
        .count()
}

fn token_of(d: &Daemon, profile: &str) -> (u16, String) {
    let (status, _, body) = d.get(&format!("/v1/token/{profile}"));
    let token = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["access_token"].as_str().map(str::to_owned))
        .unwrap_or(body);
    (status, token)
}

async fn token_server(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    let n = std::sync::atomic::AtomicUsize::new(0);
    Mock::given(method("POST"))
        .respond_with(move |_: &wiremock::Request| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({"access_token": format!("fleet-token-{i}"), "expires_in": 300}),
                )
                .set_delay(delay)
        })
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_daemons_and_a_thousand_callers_on_a_cold_profile_make_one_upstream_call() {
    let redis = Redis::start();
    let server = token_server(Duration::from_millis(500)).await;
    let homes: Vec<Home> = (0..10)
        .map(|_| member(&redis, &fleet_key(1), &profile("p", &server, "")))
        .collect();
    let daemons: Vec<Daemon> = homes.iter().map(start).collect();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let socket = daemons[i % daemons.len()].socket.clone();
            tokio::spawn(async move { get_async(&socket, "/v1/token/p").await })
        })
        .collect();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("\"fleet-token-0\""),
            "everyone gets the one token: {body}"
        );
    }
    assert_eq!(
        asked(&server, "p").await,
        1,
        "one upstream call for the whole fleet"
    );
    let waits: f64 = daemons
        .iter()
        .map(|d| metric(&d.metrics(), "broker_shared_cache_lock_waits_total"))
        .sum();
    let hits: f64 = daemons
        .iter()
        .map(|d| metric(&d.metrics(), "broker_shared_cache_hits_total"))
        .sum();
    assert!(
        waits + hits >= 9.0,
        "the other nine waited for or found the token: {waits} waits, {hits} hits"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_holder_killed_mid_fetch_is_replaced_once_its_lock_expires() {
    let redis = Redis::start();
    let server = MockServer::start().await;
    // The first request stalls (the holder is killed during it); later ones answer at once.
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "never-seen", "expires_in": 300}))
                .set_delay(Duration::from_secs(60)),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "after-the-lock", "expires_in": 300})),
        )
        .mount(&server)
        .await;
    // The lock lives as long as a fetch may: timeout + connect_timeout + retry = 4 s.
    let limits = "timeout = \"3s\"\nconnect_timeout = \"1s\"\nretry = \"0s\"";
    let a_home = member(&redis, &fleet_key(2), &profile("p", &server, limits));
    let b_home = member(&redis, &fleet_key(2), &profile("p", &server, limits));
    let a = start(&a_home);
    let b = start(&b_home);
    let socket = a.socket.clone();
    let holder = std::thread::spawn(move || {
        let _ = crate::daemon::get_with_head(&socket, "/v1/token/p", "");
    });
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while asked(&server, "p").await == 0 {
        assert!(
            std::time::Instant::now() < end,
            "the first daemon never asked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a); // SIGKILL, holding the fleet lock
    let _ = holder.join();
    let started = std::time::Instant::now();
    let b_token = tokio::task::spawn_blocking(move || {
        let t = token_of(&b, "p");
        (t, b)
    })
    .await
    .unwrap();
    let ((status, token), b) = b_token;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token, "after-the-lock");
    assert_eq!(
        asked(&server, "p").await,
        2,
        "the second fetch came after the lock expired"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(metric(&b.metrics(), "broker_shared_cache_lock_waits_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_down_fails_no_request_and_sharing_resumes_when_it_is_back() {
    let mut redis = Redis::start();
    let server = token_server(Duration::ZERO).await;
    let profiles = ["p", "q", "r"]
        .iter()
        .map(|n| profile(n, &server, ""))
        .collect::<String>();
    let a_home = member(&redis, &fleet_key(3), &profiles);
    let b_home = member(&redis, &fleet_key(3), &profiles);
    let (a, b) = (start(&a_home), start(&b_home));
    assert_eq!(token_of(&a, "p").0, 200);
    assert_eq!(
        token_of(&b, "p"),
        token_of(&a, "p"),
        "b found a's token in Redis"
    );
    assert_eq!(asked(&server, "p").await, 1);

    // The CLI of a third host, with no daemon: a local miss reads Redis before asking upstream.
    let cli_home = member(&redis, &fleet_key(3), &profiles);
    let cli = Run::from(
        cli_home
            .cmd(["token", "p", "--no-daemon"])
            .env("S", SECRET)
            .output()
            .unwrap(),
    );
    assert_eq!(cli.success().token(), token_of(&a, "p").1);
    assert_eq!(asked(&server, "p").await, 1);

    redis.stop();
    poll("broker_shared_cache_up 0", || {
        metric(&a.metrics(), "broker_shared_cache_up") == 0.0
            && metric(&b.metrics(), "broker_shared_cache_up") == 0.0
    });
    assert_eq!(
        token_of(&a, "p").0,
        200,
        "tokens in memory are still served"
    );
    assert_eq!(
        token_of(&b, "q").0,
        200,
        "a cold profile is fetched without the fleet"
    );
    assert_eq!(token_of(&a, "q").0, 200);
    assert_eq!(asked(&server, "q").await, 2, "each host fetched q alone");
    let log = std::fs::read_to_string(a_home.path().join("daemon.log")).unwrap_or_default();
    assert_eq!(
        log.matches("is unavailable").count(),
        1,
        "logged once: {log}"
    );

    redis.restart();
    poll("broker_shared_cache_up 1", || {
        metric(&a.metrics(), "broker_shared_cache_up") == 1.0
            && metric(&b.metrics(), "broker_shared_cache_up") == 1.0
    });
    assert_eq!(token_of(&a, "r").0, 200);
    assert_eq!(
        token_of(&b, "r"),
        token_of(&a, "r"),
        "sharing resumed without a restart"
    );
    assert_eq!(asked(&server, "r").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_fleet_key_never_serves_the_fleets_tokens_and_redis_holds_nothing_in_clear() {
    let redis = Redis::start();
    let server = token_server(Duration::ZERO).await;
    let a_home = member(&redis, &fleet_key(4), &profile("p", &server, ""));
    let other_home = member(&redis, &fleet_key(5), &profile("p", &server, ""));
    let a = start(&a_home);
    let other = start(&other_home);
    let (_, a_token) = token_of(&a, "p");
    let (status, other_token) = token_of(&other, "p");
    assert_eq!(status, 200);
    assert_ne!(
        other_token, a_token,
        "a value that does not open is never served"
    );
    assert_eq!(asked(&server, "p").await, 2);
    let log = std::fs::read_to_string(other_home.path().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("does not open under this fleet key"), "{log}");
    let keys = String::from_utf8_lossy(&redis.cli(&["--scan"])).into_owned();
    assert!(!keys.trim().is_empty(), "the fleet wrote to Redis");
    for name in keys.lines().filter(|l| !l.is_empty()) {
        assert!(name.starts_with("fleet:"), "{name}");
        let value = redis.cli(&["GET", name]);
        for secret in [a_token.as_str(), other_token.as_str(), SECRET, CLIENT] {
            assert!(!name.contains(secret), "{name} names {secret}");
            assert!(
                !value.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name} holds {secret} in clear"
            );
        }
    }
    let check = Run::from(other_home.cmd(["check"]).env("S", SECRET).output().unwrap());
    check.success().stdout_has("(sha256:");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_seen_by_one_daemon_cools_the_whole_fleet_down() {
    let redis = Redis::start();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    let homes: Vec<Home> = (0..3)
        .map(|_| member(&redis, &fleet_key(6), &profile("p", &server, "")))
        .collect();
    let daemons: Vec<Daemon> = homes.iter().map(start).collect();
    for d in &daemons {
        let (status, body) = token_of(d, "p");
        assert_ne!(status, 200);
        assert!(body.contains("rejected"), "{body}");
    }
    assert_eq!(
        asked(&server, "p").await,
        1,
        "one upstream call for the fleet"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshes_ahead_of_expiry_make_one_upstream_call_per_lifetime_for_the_fleet() {
    let redis = Redis::start();
    let server = MockServer::start().await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let log = seen.clone();
    Mock::given(method("POST"))
        .respond_with(move |_: &wiremock::Request| {
            let mut log = log.lock().unwrap();
            log.push(std::time::Instant::now());
            ResponseTemplate::new(200).set_body_json(
                json!({"access_token": format!("lifetime-{}", log.len()), "expires_in": 4}),
            )
        })
        .mount(&server)
        .await;
    let homes: Vec<Home> = (0..3)
        .map(|_| member(&redis, &fleet_key(7), &profile("p", &server, "")))
        .collect();
    let daemons: Vec<Daemon> = homes.iter().map(start).collect();
    for d in &daemons {
        assert_eq!(token_of(d, "p").0, 200);
    }
    // Each daemon refreshes the 4 s tokens at their margin (2 s), less up to 0.4 s of jitter, with nobody asking.
    poll("three refreshes ahead of expiry", || {
        seen.lock().unwrap().len() >= 4
    });
    let times = seen.lock().unwrap().clone();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(1),
            "two upstream calls {gap:?} apart: the fleet refreshed one token twice ({times:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_does_not_answer_fails_no_request() {
    // A listener that accepts connections and never says a word: every command runs into the 50 ms default.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/0", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || silent.incoming().take(8).flatten().collect::<Vec<_>>());
    let server = token_server(Duration::ZERO).await;
    let home = member_at(&url, &fleet_key(8), "", &profile("p", &server, ""));
    let d = start(&home);
    let started = std::time::Instant::now();
    let (status, token) = token_of(&d, "p");
    assert_eq!(status, 200, "{token}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held up by Redis: {:?}",
        started.elapsed()
    );
    assert_eq!(asked(&server, "p").await, 1);
    poll("broker_shared_cache_up 0", || {
        metric(&d.metrics(), "broker_shared_cache_errors_total") >= 1.0
    });
    assert_eq!(metric(&d.metrics(), "broker_shared_cache_up"), 0.0);
    drop(d);
    drop(held);
}
