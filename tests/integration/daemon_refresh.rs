//! The daemon over time: refresh ahead of expiry, idle profiles, a provider that hands back its token, a slow secret
//! command, outages ridden out and recovered from, and sinks.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::daemon::*;
use crate::support::*;

#[test]
fn tokens_are_refreshed_ahead_so_callers_never_wait() {
    // Tokens live 4 s: the daemon refreshes each at its margin (2 s) less jitter, with no caller asking.
    let idp = auth0("4", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    assert_eq!(d.get("/v1/token/chili").0, 200);
    poll("three background refreshes", || idp.issued() >= 4);
    // Callers across those lifetimes got valid tokens without waiting on a fetch: only the first was a miss.
    for _ in 0..5 {
        let (status, _, body) = d.get("/v1/token/chili");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert!(v["expires_in"].as_u64().is_some_and(|n| n >= 1), "{body}");
    }
    let m = d.metrics();
    assert_eq!(
        metric(&m, "broker_cache_misses_total{profile=\"chili\"}"),
        1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "broker_upstream_requests_total{profile=\"chili\",status=\"ok\"}"
        ) >= 4.0,
        "{m}"
    );
    for name in [
        "broker_requests_total",
        "broker_cache_hits_total",
        "broker_cache_misses_total",
        "broker_upstream_requests_total",
        "broker_upstream_duration_seconds",
        "broker_token_remaining_seconds",
        "broker_refresh_failures_total",
    ] {
        assert!(
            m.contains(&format!("# TYPE {name} ")),
            "metric {name} missing:\n{m}"
        );
    }
}

/// The `refresh` object `/v1/profiles` shows for `profile`.
fn refresh_state(d: &Daemon, profile: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.get("/v1/profiles").2).unwrap_or_default();
    v["profiles"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == profile))
        .map(|p| p["refresh"].clone())
        .unwrap_or_default()
}

#[test]
fn a_profile_nobody_asks_for_stops_being_refreshed_and_resumes_when_asked() {
    // Tokens live 4 s, so the refresh falls due 1.6-2 s after the fetch: past the 1 s idle limit.
    let idp = auth0("4", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start_with(&home, &["--refresh-idle-after", "1s"], &[]);
    assert_eq!(
        refresh_state(&d, "chili")["state"],
        "idle",
        "before any request"
    );
    assert_eq!(d.get("/v1/token/chili").0, 200);
    poll("the refresh to be scheduled", || {
        refresh_state(&d, "chili")["state"] == "scheduled"
    });
    poll("the idle profile to leave the schedule", || {
        refresh_state(&d, "chili")["state"] == "idle"
    });
    assert_eq!(idp.issued(), 1, "an idle profile was refreshed");
    assert_eq!(d.get("/v1/token/chili").0, 200);
    poll("the refresh to be scheduled again", || {
        refresh_state(&d, "chili")["state"] == "scheduled"
    });
}

#[test]
fn a_provider_that_hands_back_its_cached_token_is_not_asked_again_and_again() {
    // Auth0 answers a refresh with the token it already gave until that expires. Tokens live 6 s: the daemon's
    // refresh ahead (2.4-3 s before expiry) gets the same token back, which is not a failure; it asks again when
    // the token expires, not on a backoff of 1 s, 2 s, ...
    let idp = auth0_with("6", None, "1");
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    assert_eq!(d.get("/v1/token/chili").0, 200);
    poll("a second token, after the first expired", || {
        idp.issued() >= 2
    });
    let m = d.metrics();
    assert_eq!(
        metric(&m, "broker_refresh_failures_total{profile=\"chili\"}"),
        0.0,
        "{m}"
    );
    // The first token's fetch, one refresh that got it back, the second token's fetch at the first's expiry.
    assert!(
        idp.calls() <= 3,
        "{} token requests for two tokens",
        idp.calls()
    );
}

#[test]
fn a_slow_secret_command_does_not_stall_other_profiles() {
    // One runtime thread: `slow`'s secret command waits for a gate file; `fast` must be served meanwhile.
    let idp = auth0("300", None);
    let home = Home::new();
    let dir = home.path().display().to_string();
    home.config(&format!(
        "[profiles.slow]\nprovider = \"chili\"\ntoken_url = \"{base}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {{ command = [\"sh\", \"-c\", \"touch {dir}/started; while [ ! -e {dir}/gate ]; do sleep 0.02; done; echo {SECRET}\"] }}\n\
         [profiles.fast]\nprovider = \"chili\"\ntoken_url = \"{base}/oauth/token\"\nclient_id = \"cid\"\nclient_secret = {SECRET:?}\n",
        base = idp.base()
    ));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start_with(&home, &["--threads", "1"], &[]);
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| d.get("/v1/token/slow").0);
        poll("the secret command to start", || {
            home.path().join("started").exists()
        });
        let (fast, _, body) = d.get("/v1/token/fast");
        let slow_first = slow.is_finished();
        // Open the gate before any assertion, so a failure does not leave `slow` waiting forever.
        std::fs::write(home.path().join("gate"), b"").unwrap();
        let slow_status = slow.join().unwrap_or(0);
        assert_eq!(fast, 200, "fast was not served: {body}");
        assert!(
            !slow_first,
            "slow was served before its secret command finished"
        );
        assert_eq!(slow_status, 200);
    });
}

#[test]
fn an_outage_is_ridden_out_while_the_token_is_valid_and_recovered_from_without_a_restart() {
    let idp = auth0("6", None);
    let port = idp.port;
    let home = Home::new();
    chili_profile_with(&home, &idp.base(), "retry = \"1s\"\n");
    let d = Daemon::start(&home);
    assert_eq!(d.get("/v1/token/chili").0, 200);
    drop(idp); // the provider goes away with a valid token cached
    assert_eq!(
        d.get("/v1/token/chili").0,
        200,
        "served from cache during the outage"
    );
    poll(
        "the token to expire and the daemon to say unavailable",
        || {
            let (status, _, body) = d.get("/v1/token/chili");
            assert!(status == 200 || status == 503, "{status} {body}");
            status == 503 && body.contains("\"unavailable\"")
        },
    );
    let _back = auth0("6", Some(port));
    poll("recovery", || d.get("/v1/token/chili").0 == 200);
    assert!(
        metric(
            &d.metrics(),
            "broker_refresh_failures_total{profile=\"chili\"}"
        ) >= 1.0
    );
}

#[test]
fn sinks_are_written_with_their_mode_and_rewritten_on_every_refresh() {
    let idp = auth0("4", None);
    let home = Home::new();
    let sink = home.path().join("token.header");
    chili_profile_with(
        &home,
        &idp.base(),
        &format!(
            "sink = {{ path = \"{}\", format = \"header\", mode = \"0640\" }}\n",
            sink.display()
        ),
    );
    let _d = Daemon::start(&home);
    // Nobody asks: the daemon keeps the file fresh by itself.
    poll("the sink file", || sink.exists());
    let mode = std::fs::metadata(&sink)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o640);
    let first = std::fs::read_to_string(&sink).unwrap_or_default();
    assert!(first.starts_with("Authorization: Bearer ey"), "{first}");
    poll("the sink to be rewritten by a refresh", || {
        std::fs::read_to_string(&sink)
            .is_ok_and(|s| s != first && s.starts_with("Authorization: Bearer "))
    });
}

#[test]
fn sinks_refuse_directories_others_can_write_and_take_an_owner() {
    use std::os::unix::fs::MetadataExt;
    let idp = auth0("300", None);
    let home = Home::new();
    let open_dir = home.path().join("open");
    let sticky = home.path().join("sticky");
    let mine = home.path().join("mine");
    for (dir, mode) in [(&open_dir, 0o777), (&sticky, 0o1777), (&mine, 0o755)] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // In the sticky directory someone else got there first.
    let squatted = sticky.join("token");
    std::fs::write(&squatted, "theirs").unwrap();
    std::os::unix::fs::chown(&squatted, Some(54_321), Some(54_321)).unwrap();
    let sink = |name: &str, path: &std::path::Path, extra: &str| {
        format!(
            "[profiles.{name}]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"cid\"\nclient_secret = {SECRET:?}\nsink = {{ path = \"{}\"{extra} }}\n",
            idp.base(),
            path.display()
        )
    };
    home.config(
        &[
            sink("a", &open_dir.join("token"), ""),
            sink("b", &squatted, ""),
            sink(
                "c",
                &mine.join("token"),
                ", owner = \"nobody\", group = 65534, mode = \"0640\"",
            ),
            sink("d", &sticky.join("fresh"), ""),
        ]
        .concat(),
    );
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let _d = Daemon::start(&home);
    poll("the private sink", || mine.join("token").exists());
    poll("the sink in the sticky directory", || {
        sticky.join("fresh").exists()
    });
    let meta = std::fs::metadata(mine.join("token")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65_534, 65_534, 0o640)
    );
    let log = home.path().join("daemon.log");
    poll("both refusals in the log", || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("profile `a`")
            && l.contains("not sticky")
            && l.contains("profile `b`")
            && l.contains("not ours")
    });
    assert!(!open_dir.join("token").exists());
    assert_eq!(
        std::fs::read_to_string(&squatted).ok().as_deref(),
        Some("theirs")
    );
}

#[test]
fn during_an_outage_with_no_valid_token_every_caller_gets_503_at_once_and_recovery_needs_no_restart(
) {
    let idp = auth0("3", None);
    let port = idp.port;
    let home = Home::new();
    // A retry budget far above what any caller may wait here.
    chili_profile_with(&home, &idp.base(), "retry = \"20s\"\n");
    let d = Daemon::start(&home);
    assert_eq!(d.get("/v1/token/chili").0, 200);
    drop(idp);
    poll("the token to expire", || {
        d.get("/v1/profiles").2.contains("\"expired\"")
    });
    let socket = d.socket.clone();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = get_with_head(&socket, "/v1/token/chili", "");
                (answer, started.elapsed())
            })
        })
        .collect();
    for c in callers {
        let ((status, head, body), took) = c.join().expect("caller panicked");
        assert_eq!(status, 503, "{body}");
        assert!(head.contains("\r\nretry-after: "), "no Retry-After: {head}");
        assert!(body.contains("\"unavailable\""), "{body}");
        // Nobody sat through a retry round (20 s): the outage was already known.
        assert!(took < Duration::from_secs(5), "a caller waited {took:?}");
    }
    let _back = auth0("3", Some(port));
    poll("recovery without a restart", || {
        d.get("/v1/token/chili").0 == 200
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_background_refresh_waits_for_the_next_attempt_the_core_remembers() {
    // One 4 s token, then rejections: the refresh ahead is rejected and the core starts a 45 s cool-down. Once the
    // token has expired the refresher must wait for that cool-down, not come back after a backoff of its own.
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "first", "expires_in": 4})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"error": "invalid_client"})),
        )
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s3cret-s3cret\"\n\
         cooldown = \"45s\"\n",
        server.uri()
    ));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start(&home);
    let asked = std::time::SystemTime::now();
    assert_eq!(d.get("/v1/token/p").0, 200);
    let expired = asked + Duration::from_secs(4);
    let scheduled_at = || {
        let r = refresh_state(&d, "p");
        (r["state"] == "scheduled")
            .then(|| {
                r["at"]
                    .as_str()
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
            })
            .flatten()
    };
    // The first run scheduled after the token's expiry.
    poll("a run after the token's expiry to be scheduled", || {
        scheduled_at().is_some_and(|at| at > expired + Duration::from_millis(500))
    });
    let at = scheduled_at().unwrap_or(asked);
    let wait = at.duration_since(asked).unwrap_or_default();
    assert!(
        wait >= Duration::from_secs(40),
        "the refresher came back {wait:?} after the fetch, not at the core's 45 s cool-down"
    );
    assert_eq!(server.received_requests().await.map_or(0, |r| r.len()), 2);
}
