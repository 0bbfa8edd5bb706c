//! Outages and feedback (docs/reference.md §4): one retry round shared by every caller, a remembered next attempt
//! that answers at once, per-call `min_ttl` honoured whole, the status line in a terminal and only there, rejections
//! that say where the credentials came from, `broker list`'s status column, and `cache clear` during a fetch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use broker_core::clock::{Clock, ManualClock};
use broker_core::{Broker, Config, ErrorKind, TokenRequest};
use secrecy::ExposeSecret;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::*;

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

/// Answers `token-1`, `token-2`, ... with the given lifetime.
struct Counting {
    n: AtomicUsize,
    expires_in: u64,
}

impl Respond for Counting {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(
            json!({"access_token": format!("token-{n}"), "expires_in": self.expires_in}),
        )
    }
}

/// `N` from a final error's "(gave up after N attempts over T)".
fn attempts(message: &str) -> usize {
    message
        .split("gave up after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_callers_share_one_retry_round_and_the_next_attempt_is_remembered() {
    let server = token_endpoint(ResponseTemplate::new(503)).await;
    let config = Config::parse(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\ncache = \"memory\"\nretry = \"30s\"\n",
        server.uri()
    ))
    .unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let broker = Arc::new(
        Broker::builder()
            .clock(clock.clone())
            .config(&config, &Default::default())
            .build(),
    );
    let callers = (0..100).map(|_| {
        let broker = broker.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            let r = broker.token("p", &TokenRequest::default()).await;
            (r.err(), clock.now())
        })
    });
    let results: Vec<_> = futures::future::join_all(callers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let first = results[0].0.clone().expect("no error");
    assert_eq!(first.kind(), ErrorKind::Unavailable);
    let n = attempts(first.message());
    assert!(n >= 2, "one retry round has several attempts: {first}");
    assert_eq!(
        requests(&server).await,
        n,
        "upstream attempts are one retry round"
    );
    for (e, _) in &results {
        let e = e.as_ref().expect("a caller got a token");
        assert_eq!(
            e.message(),
            first.message(),
            "every caller gets the same error"
        );
    }
    let returned: Vec<SystemTime> = results.iter().map(|(_, at)| *at).collect();
    let (earliest, latest) = (
        returned
            .iter()
            .min()
            .copied()
            .unwrap_or(SystemTime::UNIX_EPOCH),
        returned
            .iter()
            .max()
            .copied()
            .unwrap_or(SystemTime::UNIX_EPOCH),
    );
    assert_eq!(earliest, latest, "the last caller returned after the first");

    // During the remembered window: answered at once, with the next attempt's time, without asking.
    let next = first.retry_at().expect("no next attempt time");
    let asked = clock.now();
    let during = broker.token("p", &TokenRequest::default()).await;
    let during = during.expect_err("a token during the outage");
    assert_eq!(during.kind(), ErrorKind::Unavailable);
    assert_eq!(during.retry_at(), Some(next));
    assert!(during.message().contains("next attempt after"), "{during}");
    assert_eq!(clock.now(), asked, "it waited");
    assert_eq!(requests(&server).await, n);

    // The provider is back; after the window the next call gets a token.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "back", "expires_in": 300})),
        )
        .mount(&server)
        .await;
    clock.advance(next.duration_since(clock.now()).unwrap_or_default() + Duration::from_millis(1));
    let t = broker.token("p", &TokenRequest::default()).await;
    let t = t.unwrap();
    assert_eq!(t.secret().expose_secret(), "back");
}

#[test]
fn the_status_line_shows_in_a_terminal_and_never_in_a_pipe() {
    let port = free_port();
    // A literal secret in a file others can read also makes a warning: it must carry no colour in a pipe.
    let new_home = || {
        let home = Home::new();
        home.config(&format!(
            "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\nretry = \"3s\"\n"
        ));
        home
    };
    let home = new_home();
    let piped = home.run(["token", "p"]);
    piped
        .code(5)
        .stderr_has("gave up after")
        .stderr_has("attempts over");
    assert!(!piped.stderr.contains("waiting for"), "{}", piped.stderr);
    assert!(
        !piped.stderr.contains('\u{1b}'),
        "an escape in piped stderr: {:?}",
        piped.stderr
    );
    // The same in a pseudo-terminal (util-linux `script`), in a home that has not seen the outage yet: the status
    // line shows what it waits for.
    let home = new_home();
    let mut cmd = home.program("script");
    cmd.args(["-q", "-e", "-c", &format!("{BIN} token p"), "/dev/null"]);
    let out = Run::from(cmd.env("TERM", "dumb").output().unwrap());
    assert!(
        out.stdout
            .contains(&format!("waiting for http://127.0.0.1:{port}/token")),
        "no status line in the terminal: {:?}",
        out.stdout
    );
    assert!(out.stdout.contains("gave up after"), "{:?}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_min_ttl_asked_per_call_is_honoured_whole() {
    let server = token_endpoint(Counting {
        n: AtomicUsize::new(0),
        expires_in: 100,
    })
    .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
        server.uri()
    ));
    assert_eq!(home.run(["token", "p"]).success().token(), "token-1");
    // 100 s of life, asked for 100 s: more than half the lifetime, and more than is left, so it is replaced (the
    // new one cannot meet it either, which is said).
    let r = home.run(["token", "p", "--min-ttl", "100s", "--no-daemon"]);
    assert_eq!(r.success().token(), "token-2");
    r.stderr_has("less than the 1m40s asked for");
    assert_eq!(home.run(["token", "p"]).success().token(), "token-2");
    assert_eq!(requests(&server).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_says_where_the_credentials_came_from_and_list_shows_the_cool_down() {
    let server = token_endpoint(ResponseTemplate::new(401)).await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = {{ env = \"P_SECRET\" }}\n",
        server.uri()
    ));
    let config = home.config_path().display().to_string();
    let run = |args: &[&str]| {
        Run::from(
            home.cmd(args)
                .env("P_SECRET", "wrong-secret")
                .output()
                .unwrap(),
        )
    };
    let first = run(&["token", "p"]);
    first
        .code(4)
        .stderr_has(&format!("client_secret from env P_SECRET ({config}:5:17)"))
        .stderr_has(&format!(
            "client_id from literal (redacted) ({config}:4:13)"
        ));
    let second = run(&["token", "p"]);
    second.code(4).stderr_has("cool-down");
    assert_eq!(
        second.stderr.matches("profile `p`").count(),
        1,
        "{}",
        second.stderr
    );
    assert_eq!(requests(&server).await, 1);
    run(&["list"])
        .success()
        .stdout_has("STATUS")
        .stdout_has("cool-down for")
        .stdout_has("after `rejected`");
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_clear_during_a_fetch_never_lets_a_second_fetch_start() {
    let server = token_endpoint(
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": "only-one", "expires_in": 300}))
            .set_delay(Duration::from_secs(2)),
    )
    .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
        server.uri()
    ));
    let first = home
        .cmd(["token", "p", "--no-daemon"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while requests(&server).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first fetch never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    home.run(["cache", "clear"]).success();
    let second = home
        .cmd(["token", "p", "--no-daemon"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) =
        tokio::task::spawn_blocking(move || (first.wait_with_output(), second.wait_with_output()))
            .await
            .unwrap();
    for out in [a, b] {
        let r = Run::from(out.unwrap());
        assert_eq!(r.success().token(), "only-one");
    }
    assert_eq!(requests(&server).await, 1, "a second fetch started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_queued_behind_a_lock_wait_that_timed_out_share_it() {
    let server = token_endpoint(
        ResponseTemplate::new(200).set_body_json(json!({"access_token": "t", "expires_in": 300})),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // The cross-process lock is waited for at most retry + timeout + connect_timeout: 2 s here.
    let config = Config::parse(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\nretry = \"0s\"\ntimeout = \"1s\"\nconnect_timeout = \"1s\"\n",
        server.uri()
    ))
    .unwrap();
    let broker = Arc::new(
        Broker::builder()
            .config(&config, &Default::default())
            .disk_cache(dir.path())
            .build(),
    );
    broker.token("p", &TokenRequest::default()).await.unwrap();
    // Another process holds the key's lock and never lets go.
    let lock_path = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "lock"))
        .expect("a lock file");
    let held = std::fs::File::open(&lock_path).unwrap();
    held.lock().unwrap();
    let forced = TokenRequest {
        force_refresh: true,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let calls = (0..5).map(|_| {
        let broker = broker.clone();
        tokio::spawn(async move { broker.token("p", &forced).await })
    });
    for r in futures::future::join_all(calls).await {
        // Each is served the still-valid token, with the lock's failure as a warning.
        assert_eq!(r.unwrap().unwrap().secret().expose_secret(), "t");
    }
    // One lock wait (2 s) for all five, not five in a row (10 s).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(requests(&server).await, 1);
}
