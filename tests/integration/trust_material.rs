//! The trust boundary of what came after the cache's (docs/security.md, "credential files" and after): key files,
//! subject tokens and the fleet key planted or swapped by another uid (played for real with `setpriv`), FIFOs and
//! oversized files, a discovery document naming another issuer or origin, a short HMAC key, a hostile RESP server,
//! Redis passwords, and a client key rustls refuses.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::daemon::{poll, Daemon};
use crate::support::*;

/// The attacker: `nobody`, a real second uid, played with `setpriv`.
const ATTACKER: u32 = 65_534;

/// Runs `script` as the attacker.
fn as_attacker(script: &str) {
    let status = Command::new("setpriv")
        .args([
            "--reuid",
            &ATTACKER.to_string(),
            "--regid",
            &ATTACKER.to_string(),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .expect("setpriv");
    assert!(status.success(), "as the attacker: {script}");
}

/// A directory the attacker owns (outside the victim's private home, which the attacker cannot enter).
fn attacker_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(d.path(), Some(ATTACKER), Some(ATTACKER)).unwrap();
    chmod(d.path(), 0o755);
    d
}

async fn idp() -> MockServer {
    token_endpoint(
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": "exchanged", "expires_in": 300})),
    )
    .await
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

/// A token-exchange profile `p` whose subject token is the file at `subject`.
fn exchange(home: &Home, server: &MockServer, subject: &Path) {
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nauth = \"none\"\n\
         grant = \"token_exchange\"\nsubject_token = {{ file = \"{}\" }}\nretry = \"0s\"\n",
        server.uri(),
        subject.display()
    ));
    chmod(&home.config_path(), 0o600);
}

/// A FIFO in `home`: a reader that opens it blocks until a writer comes, which none does.
fn fifo_in(home: &Home) -> PathBuf {
    let fifo = home.path().join("fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    fifo
}

/// The child's exit code, or a panic (after killing it) when it has not ended within `limit`.
fn exits_within(mut cmd: Command, limit: Duration) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still waiting after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_token_the_attacker_wrote_or_swapped_for_a_symlink_is_never_sent() {
    let server = idp().await;
    let planted = attacker_dir();
    // 1. The attacker writes the subject token the victim's profile names.
    as_attacker(&format!(
        "echo attacker-token > {0}/token; chmod 666 {0}/token",
        planted.path().display()
    ));
    let home = Home::new();
    exchange(&home, &server, &planted.path().join("token"));
    home.run(["token", "p"])
        .code(3)
        .stderr_has("subject_token")
        .stderr_has(&format!("belongs to uid {ATTACKER}"));
    // 2. The attacker swaps it for a symlink to a file only the victim (root) can read.
    let private = home.path().join("root-only");
    std::fs::write(&private, "root-only-secret\n").unwrap();
    chmod(&private, 0o600);
    as_attacker(&format!(
        "rm -f {0}/token; ln -s {1} {0}/token",
        planted.path().display(),
        private.display()
    ));
    let run = home.run(["token", "p"]);
    run.code(3).stderr_has("refusing to use it");
    assert!(!run.stderr.contains("root-only-secret"));
    assert_eq!(
        requests(&server).await,
        0,
        "the planted token reached the endpoint"
    );
    // The same file in a directory of the victim's own is exchanged.
    let own = home.path().join("token");
    std::fs::write(&own, "real-subject\n").unwrap();
    chmod(&own, 0o600);
    exchange(&home, &server, &own);
    assert_eq!(home.run(["token", "p"]).success().token(), "exchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_files_others_can_write_are_refused_and_ones_others_can_read_draw_a_warning() {
    let server = idp().await;
    let home = Home::new();
    let secret = home.path().join("secret");
    std::fs::write(&secret, "a-client-secret-of-some-length\n").unwrap();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\n\
         client_secret = {{ file = \"{}\" }}\nretry = \"0s\"\n",
        server.uri(),
        secret.display()
    ));
    chmod(&home.config_path(), 0o600);
    chmod(&secret, 0o666);
    home.run(["token", "p"])
        .code(3)
        .stderr_has("client_secret")
        .stderr_has("writable by others (mode 0666)");
    home.run(["check"]).code(3).stdout_has("writable by others");
    assert_eq!(requests(&server).await, 0);
    chmod(&secret, 0o644);
    home.run(["token", "p"])
        .success()
        .stderr_has("readable by others (mode 0644)")
        .stderr_has(&secret.display().to_string());
    // The fleet key, too: `broker check` reads it by the same rule.
    let key = home.path().join("fleet.key");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    chmod(&key, 0o644);
    home.config(&format!(
        "[shared_cache]\nurl = \"redis://127.0.0.1:{}/0\"\nkey = {{ file = \"{}\" }}\n",
        free_port(),
        key.display()
    ));
    chmod(&home.config_path(), 0o600);
    home.run(["check"])
        .success()
        .stderr_has("readable by others (mode 0644)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_or_an_oversized_subject_token_is_an_error_at_once_and_never_posted() {
    let server = idp().await;
    let home = Home::new();
    let big = home.path().join("big");
    std::fs::write(&big, vec![b'a'; 64 * 1024 + 1]).unwrap();
    chmod(&big, 0o600);
    exchange(&home, &server, &big);
    home.run(["token", "p"])
        .code(3)
        .stderr_has("subject_token")
        .stderr_has("larger than 64 KiB");
    let fifo = fifo_in(&home);
    exchange(&home, &server, &fifo);
    let (code, err) = exits_within(home.cmd(["token", "p"]), Duration::from_secs(20));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    exits_within(home.cmd(["list"]), Duration::from_secs(20));
    assert_eq!(requests(&server).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_subject_token_stalls_neither_the_daemon_nor_its_other_profiles_nor_sigterm() {
    let server = idp().await;
    let home = Home::new();
    let fifo = fifo_in(&home);
    home.config(&format!(
        "[profiles.stuck]\nkind = \"oauth2\"\ntoken_url = \"{0}/token\"\nclient_id = \"id\"\nauth = \"none\"\n\
         grant = \"token_exchange\"\nsubject_token = {{ file = \"{1}\" }}\nretry = \"0s\"\n\
         [profiles.ok]\nkind = \"oauth2\"\ntoken_url = \"{0}/token\"\nclient_id = \"id\"\nclient_secret = \"s3cret-s3cret\"\n",
        server.uri(),
        fifo.display()
    ));
    chmod(&home.config_path(), 0o600);
    // One runtime thread: a read stuck on the FIFO would stall everything else (`get` gives up after 60 s).
    let mut d = Daemon::start_with(&home, &["--threads", "1"], &[]);
    std::thread::scope(|scope| {
        let stuck = scope.spawn(|| d.get("/v1/token/stuck"));
        assert_eq!(d.get("/healthz").0, 200);
        assert_eq!(d.get("/v1/token/ok").0, 200);
        let (status, _, body) = stuck.join().unwrap();
        assert!(status != 200 && status != 0, "{status} {body}");
        assert!(body.contains("FIFO"), "{body}");
    });
    d.signal(rustix::process::Signal::TERM);
    let end = Instant::now() + Duration::from_secs(20);
    poll("the daemon to stop on SIGTERM", || {
        assert!(Instant::now() < end);
        d.child.try_wait().ok().flatten().is_some()
    });
}

/// A server whose discovery document `doc(its own base URL)` says, and whose token endpoint answers any POST.
async fn discovery(doc: impl Fn(&str) -> serde_json::Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(doc(&server.uri())))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": 300})),
        )
        .mount(&server)
        .await;
    server
}

async fn posts(server: &MockServer) -> usize {
    let requests = server.received_requests().await.unwrap_or_default();
    requests
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

fn discovering(home: &Home, issuer: &str) {
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\nissuer = \"{issuer}\"\nclient_id = \"id\"\nclient_secret = \"s3cret-s3cret\"\nretry = \"0s\"\n"
    ));
    chmod(&home.config_path(), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discovery_document_of_another_issuer_or_naming_another_origin_gets_no_credentials() {
    // Another issuer's document, though served where we asked, naming an endpoint of its own.
    let server = discovery(
        |base| json!({"issuer": "https://evil.example", "token_endpoint": format!("{base}/token")}),
    )
    .await;
    let home = Home::new();
    discovering(&home, &server.uri());
    home.run(["token", "p"])
        .code(3)
        .stderr_has("names issuer https://evil.example")
        .stderr_has(&server.uri());
    assert_eq!(
        posts(&server).await,
        0,
        "credentials went to another issuer's endpoint"
    );
    // The right issuer, but a token endpoint on another origin.
    let elsewhere = discovery(|_| json!({})).await;
    let target = format!("{}/token", elsewhere.uri());
    let server = discovery(move |base| json!({"issuer": base, "token_endpoint": target})).await;
    discovering(&home, &server.uri());
    home.run(["token", "p"])
        .code(3)
        .stderr_has("not on the issuer's origin");
    assert_eq!(
        posts(&elsewhere).await,
        0,
        "credentials went to another origin"
    );
    // The same document with its endpoint at the issuer's origin works.
    let good =
        discovery(|base| json!({"issuer": base, "token_endpoint": format!("{base}/token")})).await;
    discovering(&home, &good.uri());
    assert_eq!(home.run(["token", "p"]).success().token(), "t");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_client_secret_jwt_key_is_a_warning_and_refused_when_strict() {
    let server = idp().await;
    let home = Home::new();
    let config = |strict: bool| {
        format!(
            "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"7-bytes\"\n\
             auth = \"client_secret_jwt\"\nstrict = {strict}\nretry = \"0s\"\n",
            server.uri()
        )
    };
    home.config(&config(false));
    chmod(&home.config_path(), 0o600);
    home.run(["check"])
        .success()
        .stdout_has("7 bytes, shorter than the 32 that HS256 needs");
    home.run(["token", "p"])
        .success()
        .stderr_has("7 bytes, shorter than the 32 that HS256 needs");
    assert_eq!(requests(&server).await, 1);
    // (`strict` is not part of the cache key: the cached token would be served, with the refusal as a warning.)
    let home = Home::new();
    home.config(&config(true));
    chmod(&home.config_path(), 0o600);
    home.run(["token", "p"])
        .code(3)
        .stderr_has("refused because `strict = true`");
    home.run(["check"]).code(3).stdout_has("strict");
    assert_eq!(requests(&server).await, 1);
}

/// A "Redis" that answers every command with `header` and then streams filler until the peer hangs up. Returns
/// its port and the bytes it managed to send, per connection.
fn hostile_resp(
    header: &'static [u8],
    filler: &'static [u8],
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { return };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                if conn.read(&mut buf).unwrap_or(0) == 0 {
                    return;
                }
                let mut total = 0;
                let chunk: Vec<u8> = filler.iter().copied().cycle().take(64 * 1024).collect();
                let mut ok = conn.write_all(header).is_ok();
                // At most 256 MiB, and for at most 20 s: the loop ends by itself.
                let end = Instant::now() + Duration::from_secs(20);
                while ok && total < 256 << 20 && Instant::now() < end {
                    ok = conn.write_all(&chunk).is_ok();
                    if ok {
                        total += chunk.len();
                    }
                }
                record.lock().unwrap().push(total);
            });
        }
    });
    (port, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_redis_costs_bounded_memory_and_fails_no_request() {
    let server = idp().await;
    for (header, filler) in [
        (&b"$999999999\r\n"[..], &b"x"[..]),
        (&b"*1000000\r\n"[..], &b"$1\r\na\r\n"[..]),
    ] {
        let (port, sent) = hostile_resp(header, filler);
        let home = Home::new();
        let key = home.path().join("fleet.key");
        std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
        chmod(&key, 0o600);
        // Redis gets 5 s to answer, so only the bounds can end the reply early.
        home.config(&format!(
            "[shared_cache]\nurl = \"redis://127.0.0.1:{port}/0\"\nkey = {{ file = \"{}\" }}\ntimeout = \"5s\"\n\
             [profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s3cret-s3cret\"\n",
            key.display(),
            server.uri()
        ));
        chmod(&home.config_path(), 0o600);
        let run = home.run(["token", "p"]);
        run.success();
        assert_eq!(run.token(), "exchanged");
        poll("the hostile server to see the connection closed", || {
            !sent.lock().unwrap().is_empty()
        });
        let most = sent.lock().unwrap().iter().copied().max().unwrap_or(0);
        assert!(
            most < 32 << 20,
            "the broker took {most} bytes of one reply (header {:?})",
            String::from_utf8_lossy(header)
        );
    }
}

#[test]
fn a_redis_password_is_shown_nowhere_and_sent_in_clear_only_with_a_warning() {
    const PW: &str = "redis-pw-hunter2hunter2";
    let redis = Redis::start_with_password(PW);
    let home = Home::new();
    let key = home.path().join("fleet.key");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    chmod(&key, 0o600);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        token_endpoint(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t0k3n", "expires_in": 300})),
        )
        .await
    });
    let write = |url: &str| {
        home.config(&format!(
            "[shared_cache]\nurl = \"{url}\"\nkey = {{ file = \"{}\" }}\ntimeout = \"2s\"\n\
             [profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s3cret-s3cret\"\n",
            key.display(),
            server.uri()
        ));
        chmod(&home.config_path(), 0o600);
    };
    write(&format!("redis://:{PW}@127.0.0.1:{}/0", redis.port));
    let run = home.run(["check"]);
    run.success().stdout_has("***");
    let run2 = home
        .cmd(["token", "p"])
        .env("BROKER_LOG", "trace")
        .output()
        .unwrap();
    assert!(run2.status.success());
    for text in [
        &run.stdout,
        &run.stderr,
        &String::from_utf8_lossy(&run2.stderr).into_owned(),
    ] {
        assert!(!text.contains(PW), "the Redis password was shown: {text}");
    }
    // The password was used: the fleet's entry is there.
    let keys = redis.cli(&["-a", PW, "--no-auth-warning", "--scan"]);
    assert!(
        String::from_utf8_lossy(&keys).contains(":token:"),
        "nothing was shared"
    );
    // `pass=` of a unix socket URL, an error excerpt on the url line, and a cleartext password to another host.
    write(&format!("redis+unix:///run/redis.sock?db=0&pass={PW}"));
    let run = home.run(["check"]);
    assert!(
        !run.stdout.contains(PW) && !run.stderr.contains(PW),
        "{}",
        run.stdout
    );
    home.config(&format!(
        "[shared_cache]\nurl = \"redis://:{PW}@127.0.0.1:1/0\" junk\n"
    ));
    chmod(&home.config_path(), 0o600);
    let run = home.run(["check"]);
    run.code(3);
    assert!(!run.stderr.contains(PW), "{}", run.stderr);
    write(&format!("redis://:{PW}@192.0.2.10:6379/0"));
    home.run(["check"]).success().stderr_has("without TLS");
}
