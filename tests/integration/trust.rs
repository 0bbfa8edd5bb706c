//! Attacks by another local user and by a hostile provider (docs/security.md, "threats"), each shown harmless:
//! planted cache directories, entries, temp files and endpoints; hostile token answers; secrets in provider text,
//! excerpts and children's environments; config files others can write. The daemon's share is in `daemon.rs`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

/// The secret of every profile here: long enough that its encoded forms are unmistakable.
const SECRET: &str = "s3cr3t/with+special chars";
/// An uid no one on the test machine has: "another local user".
const OTHER_UID: u32 = 54_321;

fn profile(home: &Home, url: &str, extra: &str) {
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{url}\"\nclient_id = \"id\"\nclient_secret = {SECRET:?}\nretry = \"0s\"\n{extra}"
    ));
    chmod(&home.config_path(), 0o600);
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

async fn idp(token: &str) -> MockServer {
    let server = token_endpoint(
        ResponseTemplate::new(200).set_body_json(json!({"access_token": token, "expires_in": 300})),
    )
    .await;
    server
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

/// A cache entry file (`<key>.json`) holding `token`, valid for an hour, as the broker writes them.
fn forged_entry(token: &str, endpoint: Option<&str>) -> String {
    let now = now_secs() * 1000;
    let mut v = json!({
        "version": 1, "profile": "p", "access_token": token, "token_type": "Bearer",
        "obtained_at_ms": now, "expires_at_ms": now + 3_600_000,
    });
    if let Some(e) = endpoint {
        v["endpoint"] = json!(e);
    }
    v.to_string()
}

/// The file name of profile `p`'s cache entry, learned from a real run in a scratch home with the same config.
async fn entry_name(url: &str) -> String {
    let scratch = Home::new();
    profile(&scratch, url, "");
    scratch.run(["token", "p"]).success();
    let entries = scratch.cache_entries();
    let first = entries.first().expect("no entry written");
    first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_directory_planted_by_another_user_is_refused_and_its_token_never_served() {
    let server = idp("real-token").await;
    let name = entry_name(&format!("{}/token", server.uri())).await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    // XDG_CACHE_HOME points into a shared, sticky, world-writable parent (like /tmp), where the other user got
    // there first and created `broker/` with a forged entry.
    let shared = home.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let planted = shared.join("broker");
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join(&name), forged_entry("forged-token", None)).unwrap();
    chmod(&planted.join(&name), 0o644);
    chown(&planted.join(&name), OTHER_UID);
    chown(&planted, OTHER_UID);
    chmod(&planted, 0o755);
    let run = |args: &[&str]| {
        Run::from(
            home.cmd(args)
                .env("XDG_CACHE_HOME", &shared)
                .output()
                .unwrap(),
        )
    };
    for args in [
        &["token", "p"][..],
        &["token", "p", "--format", "header"],
        &["exec", "p", "--", "sh", "-c", "echo $BROKER_TOKEN"],
    ] {
        let r = run(args);
        r.code(1).stderr_has(&planted.display().to_string());
        assert!(!r.stdout.contains("forged-token"), "{args:?}: {}", r.stdout);
    }
    let meta = std::fs::metadata(&planted).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755, "never chmod-ed");
    assert_eq!(requests(&server).await, 1, "only the scratch run fetched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlinked_cache_directory_is_refused_and_its_target_left_alone() {
    let server = idp("real-token").await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    let target = home.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    chmod(&target, 0o755);
    std::fs::create_dir_all(home.path().join("cache")).unwrap();
    std::os::unix::fs::symlink(&target, home.cache_dir()).unwrap();
    home.run(["token", "p"]).code(1).stderr_has("symlink");
    let mode = std::fs::metadata(&target).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o755), "the symlink's target was chmod-ed");
    assert_eq!(
        std::fs::read_dir(&target).map(Iterator::count).ok(),
        Some(0),
        "something was written through the symlink"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn planted_entries_and_temp_files_are_neither_trusted_nor_followed() {
    let server = idp("real-token").await;
    let url = format!("{}/token", server.uri());
    let name = entry_name(&url).await;
    let home = Home::new();
    profile(&home, &url, "");
    let dir = home.cache_dir();
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o700);
    // A temp file that is a symlink to a file the attacker wants overwritten.
    let victim = home.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let tmp = dir.join(name.replace(".json", ".tmp"));
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    // Entries that must not be believed: a symlink to a forged entry, a file of another user, one anyone can write.
    let forged = home.path().join("forged.json");
    std::fs::write(&forged, forged_entry("forged-token", None)).unwrap();
    let entry = dir.join(&name);
    let plant: [&dyn Fn(); 3] = [
        &|| std::os::unix::fs::symlink(&forged, &entry).unwrap(),
        &|| {
            std::fs::write(&entry, forged_entry("forged-token", None)).unwrap();
            chmod(&entry, 0o600);
            chown(&entry, OTHER_UID);
        },
        &|| {
            std::fs::write(&entry, forged_entry("forged-token", None)).unwrap();
            chmod(&entry, 0o666);
        },
    ];
    for (i, plant) in plant.iter().enumerate() {
        let _ = std::fs::remove_file(&entry);
        plant();
        let r = home.run(["token", "p"]);
        r.success().stderr_has("ignoring cache entry");
        assert_eq!(r.token(), "real-token", "case {i}");
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        assert!(
            meta.file_type().is_file(),
            "case {i}: replaced by a real entry"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "case {i}");
    }
    assert_eq!(
        std::fs::read_to_string(&victim).ok().as_deref(),
        Some("precious"),
        "the temp file's symlink was followed"
    );
    assert_eq!(requests(&server).await, 1 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_remembered_in_the_cache_gets_no_secret_unless_the_config_leads_there() {
    let real = idp("real-token").await;
    let evil = idp("evil-token").await;
    let home = Home::new();
    // A Keycloak profile, whose cache entry may remember the layout that worked.
    // Plain entries, so the test can write what a hostile writer would (a sealed one opens only if the broker wrote it).
    home.config(&format!(
        "cache_encryption = \"off\"\n[profiles.p]\nkind = \"keycloak\"\nauth_server = \"{}\"\nrealm = \"r\"\nclient_id = \"id\"\nclient_secret = {SECRET:?}\nretry = \"0s\"\n",
        real.uri()
    ));
    home.run(["token", "p"]).success();
    let entry = home.cache_entries().pop().expect("no entry");
    // The remembered endpoint is rewritten to another origin, and the token expired, so the next call fetches.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&entry).unwrap_or_default()).unwrap();
    v["endpoint"] = json!(format!("{}/steal", evil.uri()));
    v["expires_at_ms"] = json!(now_secs() * 1000 - 1000);
    std::fs::write(&entry, v.to_string()).unwrap();
    let r = home.run(["token", "p"]);
    assert_eq!(r.success().token(), "real-token");
    r.stderr_has("ignoring the token endpoint remembered in the cache");
    assert_eq!(
        requests(&evil).await,
        0,
        "the secret went to a planted endpoint"
    );
    assert_eq!(requests(&real).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_token_url_remembered_in_the_cache_is_used_without_a_word() {
    let server = idp("tok").await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    home.run(["token", "p"]).success();
    // The entry now remembers the endpoint it used: the configured one, which a refresh uses quietly.
    let r = home.run(["token", "p", "--force-refresh"]);
    r.success();
    assert!(
        !r.stderr.contains("ignoring the token endpoint"),
        "{}",
        r.stderr
    );
    assert_eq!(requests(&server).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discovery_document_naming_plain_http_elsewhere_gets_no_secret() {
    let issuer = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"issuer": issuer.uri(), "token_endpoint": "http://token.broker-test.invalid/token"}),
        ))
        .mount(&issuer)
        .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\nissuer = \"{}\"\nclient_id = \"id\"\nclient_secret = {SECRET:?}\nretry = \"0s\"\n",
        issuer.uri()
    ));
    home.run(["token", "p"]).code(6).stderr_has("is not https");
}

/// A proxy that records the first request line it is sent, answers 502 and closes.
fn recording_proxy() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let _ = s.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            let _ = tx.send(line);
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_never_goes_through_a_proxy_but_https_does() {
    let server = idp("direct-token").await;
    let (port, seen) = recording_proxy();
    let proxy = format!("http://127.0.0.1:{port}");
    let home = Home::new();
    let run = || {
        Run::from(
            home.cmd(["token", "p", "--no-cache"])
                .env("http_proxy", &proxy)
                .env("HTTP_PROXY", &proxy)
                .env("https_proxy", &proxy)
                .env("HTTPS_PROXY", &proxy)
                .output()
                .unwrap(),
        )
    };
    // Loopback http: straight to the server, the proxy sees nothing.
    profile(&home, &format!("{}/token", server.uri()), "");
    assert_eq!(run().success().token(), "direct-token");
    assert_eq!(requests(&server).await, 1);
    // https to a host that does not exist: only the proxy is asked (to open a tunnel).
    profile(&home, "https://token.broker-test.invalid/token", "");
    run().code(5);
    let first = seen
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_default();
    assert_eq!(first, "CONNECT token.broker-test.invalid:443 HTTP/1.1");
    assert!(
        seen.try_recv().is_err(),
        "the proxy saw more than the tunnel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_with_control_characters_are_bad_responses_and_never_printed() {
    for token in [
        "abc\r\nHost: evil.example",
        "abc\npassword=stolen",
        "abc\u{1b}[2J",
        "abc\u{7f}",
        "t\u{e9}st",
    ] {
        let server = idp(token).await;
        let home = Home::new();
        profile(
            &home,
            &format!("{}/token", server.uri()),
            &format!("api = \"{}\"\n", server.uri()),
        );
        for args in [
            &["token", "p", "--format", "header"][..],
            &["token", "p", "--format", "json"],
        ] {
            let r = home.run(args);
            r.code(6).stderr_has("control character");
            assert!(r.stdout.is_empty(), "{token:?}: {}", r.stdout);
        }
        let git = Run::from(
            home.cmd(["git-credential", "p", "get"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    let host = server.address().to_string();
                    if let Some(mut i) = c.stdin.take() {
                        let _ = write!(i, "protocol=http\nhost={host}\n\n");
                    }
                    c.wait_with_output()
                })
                .unwrap(),
        );
        git.code(6);
        assert!(!git.stdout.contains("password"), "{}", git.stdout);
        assert_eq!(home.cached_tokens(), 0, "{token:?} was cached");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_retry_after_values_saturate_and_cool_downs_are_capped() {
    for (value, cap) in [
        ("18446744073709551615", "max_cooldown = \"10m\"\n"),
        ("100000000000", ""),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", value))
            .mount(&server)
            .await;
        let home = Home::new();
        profile(&home, &format!("{}/token", server.uri()), cap);
        let r = home.run(["token", "p"]);
        r.code(5);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        let entry = home.cache_entries().pop().expect("no cool-down stored");
        let v: serde_json::Value = serde_json::from_str(&home.entry_text(&entry)).unwrap();
        let until = v["cooldown_until_ms"].as_u64().unwrap_or(u64::MAX) / 1000;
        let longest = if cap.is_empty() { 3600 } else { 600 };
        assert!(
            until <= now_secs() + longest,
            "{value}: cool-down until {until}, more than {longest}s away"
        );
        // The next call obeys the cool-down without asking.
        home.run(["token", "p"]).code(5).stderr_has("cool-down");
        assert_eq!(requests(&server).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_text_is_escaped_cut_and_never_shows_the_secret() {
    use base64::Engine as _;
    let form: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "id:{}",
        percent_encoding::utf8_percent_encode(SECRET, percent_encoding::NON_ALPHANUMERIC)
    ));
    let echo = format!(
        "you sent {SECRET} or {form} or Basic {basic}; \u{1b}]0;pwned\u{7}\u{1b}[31m red {}",
        "x".repeat(2000)
    );
    let server = token_endpoint(
        ResponseTemplate::new(401)
            .set_body_json(json!({"error": "invalid_client", "error_description": echo})),
    )
    .await;
    let home = Home::new();
    profile(&home, &format!("{}/token", server.uri()), "");
    let first = home.run(["token", "p"]);
    let second = home.run(["token", "p", "--format", "json"]); // from the stored cool-down
    let stored = home.entry_text(&home.cache_entries().pop().expect("no cool-down stored"));
    for (what, text) in [
        ("stderr", &first.stderr),
        ("json stderr", &second.stderr),
        ("cool-down", &stored),
    ] {
        assert!(text.contains("[redacted]"), "{what}: {text}");
        for form in [SECRET, &form, &basic] {
            assert!(
                !text.contains(form),
                "{what} shows the secret as {form:?}: {text}"
            );
        }
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{what}: raw escape sequence"
        );
        assert!(!text.contains(&"x".repeat(400)), "{what}: not cut");
    }
    first.code(4);
    second.code(4);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_curl_children_do_not_inherit_the_secret_variables() {
    let server = idp("tok").await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = {{ env = \"P_ID\" }}\nclient_secret = {{ env = \"P_SECRET\" }}\n",
        server.uri()
    ));
    let run = |args: &[&str]| {
        Run::from(
            home.cmd(args)
                .env("P_ID", "the-id")
                .env("P_SECRET", SECRET)
                .output()
                .unwrap(),
        )
    };
    let show = "echo id=${P_ID-unset} secret=${P_SECRET-unset} token=$BROKER_TOKEN";
    let r = run(&["exec", "p", "--", "sh", "-c", show]);
    assert_eq!(r.success().stdout, "id=unset secret=unset token=tok\n");
    let r = run(&["exec", "p", "--keep-env", "P_ID", "--", "sh", "-c", show]);
    assert_eq!(r.success().stdout, "id=the-id secret=unset token=tok\n");
    // curl is a child too: a stand-in `curl` first on PATH shows what its environment held.
    let fake_curl = home.path().join("bin");
    std::fs::create_dir_all(&fake_curl).unwrap();
    std::fs::write(
        fake_curl.join("curl"),
        "#!/bin/sh\necho id=${P_ID-unset} secret=${P_SECRET-unset}\n",
    )
    .unwrap();
    chmod(&fake_curl.join("curl"), 0o755);
    let r = Run::from(
        home.cmd(["curl", "p", "https://api.example/x"])
            .env("PATH", format!("{}:/usr/bin:/bin", fake_curl.display()))
            .env("P_ID", "the-id")
            .env("P_SECRET", SECRET)
            .output()
            .unwrap(),
    );
    assert_eq!(r.success().stdout, "id=unset secret=unset\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_files_another_user_could_change_are_refused() {
    let server = idp("tok").await;
    let home = Home::new();
    let ran = home.path().join("ran");
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = {{ command = [\"sh\", \"-c\", \"touch {}; echo s\"] }}\n",
        server.uri(),
        ran.display()
    ));
    let config = home.config_path();
    let config_shown = config.display().to_string();
    chown(&config, OTHER_UID);
    chmod(&config, 0o644);
    home.run(["token", "p"])
        .code(3)
        .stderr_has(&config_shown)
        .stderr_has(&format!("chown {}", rustix::process::geteuid().as_raw()));
    chown(&config, rustix::process::geteuid().as_raw());
    chmod(&config, 0o666);
    home.run(["token", "p"]).code(3).stderr_has("chmod o-w");
    assert!(!ran.exists(), "the planted command ran");
    // A user provider file is a config file too.
    chmod(&config, 0o600);
    home.provider("evil", "kind = \"oauth2\"\n");
    let provider_file = home.path().join("config/broker/providers/evil.toml");
    chmod(&provider_file, 0o646);
    home.run(["token", "p"]).code(3).stderr_has("evil.toml");
    // Group-writable: a warning, and it works.
    chmod(&provider_file, 0o664);
    home.run(["token", "p"])
        .success()
        .stderr_has("writable by its group");
    assert!(ran.exists());
}
