//! `broker daemon` on a temporary socket: the CLI through it, the socket's modes and the uid check, single flight
//! for 1,000 concurrent callers, refresh ahead of expiry, an outage, SIGHUP reload, graceful shutdown, metrics.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
}

impl Daemon {
    pub(crate) fn start(home: &Home) -> Daemon {
        Self::start_with(home, &[], &[])
    }

    /// `broker daemon` with extra arguments and environment, waited for (with a deadline) until it answers.
    pub(crate) fn start_with(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_on(home, home.path().join("run/broker/broker.sock"), args, env)
    }

    /// [`Daemon::start_with`] on the socket `socket` (passed as `--socket` unless it is the default).
    pub(crate) fn start_on(
        home: &Home,
        socket: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut cmd = home.cmd(["daemon"]);
        if socket != home.path().join("run/broker/broker.sock") {
            cmd.arg("--socket").arg(&socket);
        }
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(home.path().join("daemon.log")).expect("daemon.log");
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let d = Daemon { child, socket };
        poll("the daemon's socket", || d.get("/healthz").0 == 200);
        d
    }

    pub(crate) fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0))
            .expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// A GET over the socket: status, the `Broker-Config` header, body. Status 0 when nothing answers.
    pub(crate) fn get(&self, path: &str) -> (u16, String, String) {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return (0, String::new(), String::new());
        };
        // A stalled daemon fails a test instead of hanging it.
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n"
        );
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        parse_response(&raw)
    }

    pub(crate) fn metrics(&self) -> String {
        self.get("/metrics").2
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn parse_response(raw: &str) -> (u16, String, String) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let fp = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("broker-config"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, fp, body.to_owned())
}

/// Polls `cond` every 20 ms until it holds, for at most 30 s.
pub(crate) fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET on the daemon's loopback TCP port, with the key if given: status, `Broker-Config`, body. `None` when
/// nothing accepts the connection.
fn tcp_get(port: u16, path: &str, key: Option<&str>) -> Option<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: broker\r\n{auth}Connection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    Some(parse_response(&raw))
}

/// The value of the first metric line starting with `prefix`, 0 when absent.
pub(crate) fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const SECRET: &str = "daemon-secret";

fn auth0(ttl: &str, port: Option<u16>) -> NodeServer {
    auth0_with(ttl, port, "0")
}

/// `reuse`: `1` to hand back the cached token until it expires, as Auth0 does.
fn auth0_with(ttl: &str, port: Option<u16>, reuse: &str) -> NodeServer {
    let port = port.map(|p| p.to_string()).unwrap_or_else(|| "0".into());
    NodeServer::start(
        "mock-auth0.mjs",
        &[
            ("CLIENT_ID", "cid"),
            ("CLIENT_SECRET", SECRET),
            ("AUDIENCE", "https://chiligrafx.com"),
            ("TOKEN_TTL", ttl),
            ("PORT", &port),
            ("REUSE_TOKEN", reuse),
        ],
    )
}

fn chili_profile(home: &Home, base: &str) {
    chili_profile_with(home, base, "");
}

fn chili_profile_with(home: &Home, base: &str, extra: &str) {
    home.config(&format!(
        "[profiles.chili]\nprovider = \"chili\"\ntoken_url = \"{base}/oauth/token\"\nclient_id = \"cid\"\nclient_secret = {SECRET:?}\n{extra}"
    ));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn the_cli_goes_through_the_daemon_and_prints_its_token() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(d.socket.parent().unwrap_or(home.path())), 0o700);

    let (status, fingerprint, body) = d.get("/v1/token/chili");
    assert_eq!(status, 200, "{body}");
    assert!(!fingerprint.is_empty(), "no Broker-Config header");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let token = v["access_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(v["profile"], "chili");
    assert_eq!(v["header"], format!("Authorization: Bearer {token}"));

    let cli = home.run(["token", "chili"]);
    assert_eq!(cli.success().token(), token);
    let json_out: serde_json::Value =
        serde_json::from_str(&home.run(["token", "chili", "--format", "json"]).stdout)
            .unwrap_or_default();
    assert_eq!(json_out["access_token"], v["access_token"]);
    assert_eq!(json_out["expires_at"], v["expires_at"]);
    assert_eq!(
        metric(
            &d.metrics(),
            "broker_requests_total{profile=\"chili\",outcome=\"ok\"}"
        ),
        3.0,
        "the CLI asked the daemon"
    );
    assert_eq!(idp.issued(), 1);
    // Errors travel with their class: same exit code as in-process.
    home.run(["token", "nope"])
        .code(3)
        .stderr_has("unknown profile");
    // --no-daemon works in-process (from the disk cache the daemon filled).
    assert_eq!(home.run(["token", "chili", "--no-daemon"]).token(), token);
    assert_eq!(
        metric(
            &d.metrics(),
            "broker_requests_total{profile=\"chili\",outcome=\"ok\"}"
        ),
        3.0
    );
    // The profiles endpoint lists the profile and its cache state, never a token.
    let (_, _, profiles) = d.get("/v1/profiles");
    assert!(
        profiles.contains("\"valid\"") && !profiles.contains(&token),
        "{profiles}"
    );
}

#[test]
fn a_peer_with_another_uid_is_refused_by_the_uid_check() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    // Open the file modes, test-only, so that the daemon's own uid check is what refuses.
    for dir in [
        home.path().to_path_buf(),
        home.path().join("run"),
        home.path().join("run/broker"),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&d.socket)
        .arg("http://broker/healthz")
        .output()
        .expect("setpriv");
    assert_eq!(
        String::from_utf8_lossy(&as_nobody.stdout),
        "403",
        "stderr: {}",
        String::from_utf8_lossy(&as_nobody.stderr)
    );
    assert_eq!(d.get("/healthz").0, 200, "our own uid is allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_callers_on_a_cold_profile_make_one_upstream_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "for-all", "expires_in": 300}))
                .set_delay(Duration::from_millis(500)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!("[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = {{ env = \"S\" }}\n", server.uri()));
    let d = Daemon::start_with(&home, &[], &[("S", "s")]);
    let socket = d.socket.clone();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let socket = socket.clone();
            tokio::spawn(async move { get_async(&socket, "/v1/token/p").await })
        })
        .collect();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"for-all\""));
    }
}

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

#[tokio::test(flavor = "multi_thread")]
async fn clock_skew_is_warned_about_once_per_profile() {
    // The JWT's exp is an hour behind request time + expires_in: the clocks disagree (docs/reference.md §2).
    let server = MockServer::start().await;
    let skewed = jwt(&json!({"exp": now_secs() - 3600}));
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": skewed, "expires_in": 300})),
        )
        .expect(3)
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!("[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = {{ env = \"S\" }}\n", server.uri()));
    let text = tokio::task::spawn_blocking(move || {
        let d = Daemon::start_with(&home, &[], &[("S", "s")]);
        for _ in 0..3 {
            assert_eq!(d.get("/v1/token/p?force_refresh=true").0, 200);
        }
        drop(d);
        std::fs::read_to_string(home.path().join("daemon.log")).unwrap_or_default()
    })
    .await
    .unwrap();
    let warnings = text.lines().filter(|l| l.contains("clock")).count();
    assert_eq!(warnings, 1, "three skewed fetches, one warning:\n{text}");
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
fn sighup_reloads_and_a_broken_config_keeps_the_old_one() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    let before = d.get("/healthz").1;
    let mut text = std::fs::read_to_string(home.config_path()).unwrap_or_default();
    text.push_str("[profiles.second]\nprovider = \"chili\"\nclient_id = \"x\"\nclient_secret = { env = \"UNSET\" }\n");
    std::fs::write(home.config_path(), &text).unwrap();
    d.signal(rustix::process::Signal::HUP);
    poll("the reload", || {
        d.get("/v1/profiles").2.contains("\"second\"")
    });
    assert_ne!(
        d.get("/healthz").1,
        before,
        "the fingerprint follows the config"
    );
    std::fs::write(home.config_path(), "[profiles.broken\n").unwrap();
    d.signal(rustix::process::Signal::HUP);
    // Still serving the last good config (give the signal a moment by asking until a request succeeds).
    poll("the daemon to keep serving", || {
        d.get("/v1/profiles").2.contains("\"second\"")
    });
}

#[test]
fn sigterm_stops_gracefully_and_removes_the_socket_and_a_second_daemon_is_refused() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let mut d = Daemon::start(&home);
    home.run(["daemon"]).code(3).stderr_has("already listening");
    d.signal(rustix::process::Signal::TERM);
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!d.socket.exists(), "the socket was left behind");
    // A stale socket file is removed by the next daemon.
    std::os::unix::net::UnixListener::bind(&d.socket)
        .map(drop)
        .unwrap();
    let d2 = Daemon::start(&home);
    assert_eq!(d2.get("/healthz").0, 200);
}

#[test]
fn an_insecure_socket_directory_is_refused() {
    let home = Home::new();
    home.config("");
    let dir = home.path().join("run/broker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    home.run(["daemon"])
        .code(3)
        .stderr_has("writable by group or others");
}

#[test]
fn listen_on_loopback_needs_the_key_and_refuses_remote_addresses() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let port = free_port();
    let _d = Daemon::start_with(&home, &["--listen", &format!("127.0.0.1:{port}")], &[]);
    let key_path = home.path().join("run/broker/daemon.key");
    let mode = std::fs::metadata(&key_path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap_or_default();
    let tcp_get = |auth| tcp_get(port, "/v1/token/chili", auth).unwrap_or_default();
    assert_eq!(tcp_get(None).0, 401);
    assert_eq!(tcp_get(Some("not-the-key")).0, 401);
    let (status, _, body) = tcp_get(Some(key.trim()));
    assert_eq!(status, 200, "{body}");
    home.run([
        "daemon",
        "--socket",
        &home
            .path()
            .join("run/broker/other.sock")
            .display()
            .to_string(),
        "--listen",
        "0.0.0.0:1",
    ])
    .code(2)
    .stderr_has("--allow-remote");
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
fn list_goes_through_the_daemon_and_shows_what_it_holds() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile_with(&home, &idp.base(), "cache = \"memory\"\n");
    let d = Daemon::start(&home);
    home.run(["list"]).success().stdout_has("none");
    assert_eq!(d.get("/v1/token/chili").0, 200);
    // The token lives only in the daemon's memory: only the daemon can say it is valid.
    home.run(["list"]).success().stdout_has("valid until");
    home.run([
        "list",
        "--config",
        &home.config_path().display().to_string(),
    ])
    .success()
    .stdout_has("valid until");
}

/// The daemon's resident memory, in KiB.
fn rss_kib(d: &Daemon) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_idle_and_half_sent_tcp_connections_is_bounded_and_closed() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(
        &home,
        &[
            "--listen",
            &listen,
            "--max-connections",
            "100",
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "2s",
        ],
        &[],
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let mut flood = Vec::new();
    for i in 0..2000 {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            continue;
        };
        if i % 2 == 0 {
            // Half-sent: a request line and one header, never the blank line.
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n");
        }
        flood.push(s);
    }
    assert!(
        flood.len() > 1000,
        "only {} connections opened",
        flood.len()
    );
    // The Unix socket, its /healthz and the token path do not wait for the flood.
    assert_eq!(d.get("/healthz").0, 200);
    assert_eq!(d.get("/v1/token/chili").0, 200);
    // Every flooding connection is closed: those over the limit at once, the others at their timeout.
    for s in &flood {
        let _ = s.set_nonblocking(true);
    }
    let mut open: Vec<&std::net::TcpStream> = flood.iter().collect();
    poll("every flooding connection to be closed", || {
        open.retain(|s| {
            let mut buf = [0u8; 256];
            let mut r: &std::net::TcpStream = s;
            matches!(r.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        open.is_empty()
    });
    // And the port serves again.
    let key =
        std::fs::read_to_string(home.path().join("run/broker/daemon.key")).unwrap_or_default();
    poll("the TCP port to answer again", || {
        tcp_get(addr.port(), "/healthz", Some(key.trim()))
            .is_some_and(|(status, _, _)| status == 200)
    });
}

#[test]
fn a_connection_that_fails_the_key_check_is_closed_after_the_answer() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let port = free_port();
    let _d = Daemon::start_with(&home, &["--listen", &format!("127.0.0.1:{port}")], &[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    // Keep-alive is asked for; the answer must still end the connection.
    let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n");
    let mut raw = String::new();
    let eof = s.read_to_string(&mut raw); // Ok only at EOF: the daemon closed the connection
    assert!(eof.is_ok(), "the connection was left open: {eof:?}");
    assert_eq!(parse_response(&raw).0, 401, "{raw}");
}

#[test]
fn unknown_profile_names_do_not_grow_the_daemons_memory() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    // Warm up: the allocator's arenas and the server's buffers settle first.
    for i in 0..1000 {
        d.get(&format!("/v1/token/warmup-{i}"));
    }
    let before = rss_kib(&d);
    for i in 0..20_000 {
        assert_eq!(
            d.get(&format!("/v1/token/nosuch-{i}-{}", "x".repeat(1000)))
                .0,
            404
        );
    }
    let after = rss_kib(&d);
    eprintln!("RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 4096,
        "RSS grew from {before} KiB to {after} KiB over 20,000 unknown names"
    );
    let metrics = d.metrics();
    assert!(metrics.contains("profile=\"(unknown)\""), "{metrics}");
    assert!(
        !metrics.contains("nosuch-"),
        "a metric series per unknown name"
    );
}

#[test]
fn the_socket_option_never_removes_a_file_or_chmods_a_directory() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let precious = home.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    home.run(["daemon", "--socket", &precious.display().to_string()])
        .code(3)
        .stderr_has("not a socket");
    assert_eq!(
        std::fs::read_to_string(&precious).ok().as_deref(),
        Some("keep me")
    );
    // A directory of ours named by --socket keeps its mode.
    let project = home.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o750)).unwrap();
    let d = Daemon::start_on(&home, project.join("d.sock"), &[], &[]);
    assert_eq!(d.get("/healthz").0, 200);
    let mode = std::fs::metadata(&project).map(|m| m.permissions().mode() & 0o7777);
    assert_eq!(mode.ok(), Some(0o750));
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

/// A GET over the socket from async code (many at once): status, the `Broker-Config` header, body.
pub(crate) async fn get_async(socket: &std::path::Path, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    parse_response(&raw)
}

/// A raw GET over the socket: status, the whole head (for headers), body.
pub(crate) fn get_with_head(
    socket: &std::path::Path,
    path: &str,
    extra: &str,
) -> (u16, String, String) {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return (0, String::new(), String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: broker\r\n{extra}Connection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        parse_response(&raw).0,
        head.to_ascii_lowercase(),
        body.to_owned(),
    )
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

#[test]
fn a_cli_with_another_configuration_gets_409_before_the_daemon_does_any_work() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    let (status, _, _) = get_with_head(&d.socket, "/v1/token/chili", "Broker-Config: not-ours\r\n");
    assert_eq!(status, 409);
    assert_eq!(
        idp.calls(),
        0,
        "the daemon fetched for a request it refused"
    );
    // The same credentials under a changed file: the CLI's forced refresh costs one upstream call, not two.
    let text = std::fs::read_to_string(home.config_path()).unwrap_or_default();
    home.config(&format!("# changed\n{text}"));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    home.run(["token", "chili", "--force-refresh"]).success();
    assert_eq!(idp.calls(), 1);
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
