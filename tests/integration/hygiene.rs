//! Secret hygiene and crash safety: no secret or token in logs, errors or stray files at `RUST_LOG=trace`;
//! SIGKILL mid-write never leaves a torn entry; many processes over several profiles share one fetch each.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const SECRET: &str = "hygiene-client-secret-5f2a";
const TOKEN: &str = "hygiene-access-token-9c7e";
/// A subject token of a token exchange: as secret as the client secret.
const SUBJECT: &str = "hygiene-subject-token-1d3b";

fn files_containing(dir: &Path, needle: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_containing(&p, needle, out);
        } else if std::fs::read(&p)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            out.push(p.display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_or_token_reaches_stderr_or_any_file_but_the_cache_entry() {
    let ok = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": TOKEN, "expires_in": 300})),
        )
        .mount(&ok)
        .await;
    let bad = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&bad)
        .await;
    // A hostile provider that refuses every request and echoes the credentials it got back in the error, the
    // secret ones first (provider text is cut at 300 characters).
    let echo = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(|req: &wiremock::Request| {
            let fields: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&req.body)
                    .into_owned()
                    .collect();
            let echoed: Vec<&str> = ["subject_token", "client_assertion", "client_secret"]
                .iter()
                .filter_map(|k| fields.get(*k).map(String::as_str))
                .collect();
            ResponseTemplate::new(400).set_body_json(json!({
                "error": "invalid_grant",
                "error_description": echoed.join(" "),
            }))
        })
        .mount(&echo)
        .await;
    let home = Home::new();
    let secret_file = home.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_file = home.path().join("key.pem");
    std::fs::write(&key_file, keygen("p256", "pkcs8").private).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let subject_file = home.path().join("subject");
    std::fs::write(&subject_file, SUBJECT).unwrap();
    std::fs::set_permissions(&subject_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_lines = format!(
        "auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{}\" }}",
        key_file.display()
    );
    let exchange_lines = format!(
        "grant = \"token_exchange\"\nauth = \"client_secret_jwt\"\nclient_secret = {{ env = \"HYGIENE_SECRET\" }}\nsubject_token = {{ file = \"{}\" }}",
        subject_file.display()
    );
    home.config(&format!(
        "[defaults]\nclient_id = \"id\"\nretry = \"0s\"\n\
         [profiles.ok]\nkind = \"oauth2\"\nauth = \"client_secret_basic\"\ntoken_url = \"{}/token\"\nclient_secret = {{ env = \"HYGIENE_SECRET\" }}\n\
         [profiles.viafile]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_secret = {{ file = \"{}\" }}\n\
         [profiles.bad]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_secret = {{ env = \"HYGIENE_SECRET\" }}\n\
         [profiles.signed]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\n{key_lines}\n\
         [profiles.signed-echo]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\n{key_lines}\n\
         [profiles.exchange]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\n{exchange_lines}\n\
         [profiles.exchange-echo]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\n{exchange_lines}\n",
        ok.uri(),
        ok.uri(),
        secret_file.display(),
        bad.uri(),
        ok.uri(),
        echo.uri(),
        ok.uri(),
        echo.uri(),
    ));
    let runs: &[(&[&str], bool)] = &[
        (&["token", "ok"], true),
        (
            &["token", "ok", "--force-refresh", "--format", "json"],
            true,
        ),
        (&["token", "viafile", "--no-cache"], true),
        (&["token", "bad"], false),
        (&["token", "bad", "--format", "json"], false),
        (&["token", "signed", "--no-cache"], true),
        (&["token", "signed-echo"], false),
        (&["token", "exchange", "--no-cache"], true),
        (&["token", "exchange-echo"], false),
        (&["token", "exchange-echo", "--format", "json"], false),
        (&["token", "missing-profile"], false),
        (&["list"], false),
        (&["check"], false),
        (&["providers"], false),
        (&["inspect", "ok"], false),
        (&["token", "ok", "--min-ttl", "nonsense"], false),
    ];
    for (args, prints_token) in runs {
        let out = Run::from(
            home.cmd(*args)
                .env("HYGIENE_SECRET", SECRET)
                .env("RUST_LOG", "trace")
                .output()
                .unwrap(),
        );
        for secret in [SECRET, SUBJECT] {
            assert!(
                !out.stderr.contains(secret) && !out.stdout.contains(secret),
                "{args:?}: {secret} reached stderr or stdout: {}",
                out.stderr
            );
        }
        // Every client assertion the providers saw, sent by any run so far: never on stderr.
        for server in [&ok, &echo] {
            for req in server.received_requests().await.unwrap_or_default() {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
                    if k == "client_assertion" {
                        assert!(
                            !out.stderr.contains(v.as_ref()),
                            "{args:?}: the assertion reached stderr"
                        );
                    }
                }
            }
        }
        assert!(
            !out.stderr.contains(TOKEN),
            "{args:?}: the token reached stderr"
        );
        assert!(
            !out.stdout.contains(SECRET),
            "{args:?}: the secret reached stdout"
        );
        assert_eq!(
            out.stdout.contains(TOKEN),
            *prints_token,
            "{args:?}: token on stdout only where asked for"
        );
    }
    let mut with_token = Vec::new();
    files_containing(home.path(), TOKEN, &mut with_token);
    let entries: Vec<String> = home
        .cache_entries()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        with_token.iter().all(|f| entries.contains(f)),
        "the token is in files other than cache entries: {with_token:?}"
    );
    let mut with_secret = Vec::new();
    files_containing(home.path(), SECRET, &mut with_secret);
    assert_eq!(
        with_secret,
        vec![secret_file.display().to_string()],
        "the secret was written somewhere"
    );
    let mut with_subject = Vec::new();
    files_containing(home.path(), SUBJECT, &mut with_subject);
    assert_eq!(
        with_subject,
        vec![subject_file.display().to_string()],
        "the subject token was written somewhere"
    );
    let echoed = echo.received_requests().await.unwrap_or_default();
    // Once per echo profile: the repeat of `exchange-echo` is held back by the cool-down after the rejection.
    assert_eq!(echoed.len(), 2, "the echoing provider was asked");
}

#[test]
fn a_readable_config_with_a_literal_secret_gets_a_chmod_warning() {
    let home = Home::new();
    home.config(
        "[profiles.p]\nprovider = \"chili\"\nclient_id = \"id\"\nclient_secret = \"literal\"\n",
    );
    let path = home.config_path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    home.run(["check"]).success().stderr_has("chmod 600");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = home.run(["check"]);
    assert!(!out.stderr.contains("chmod"), "{}", out.stderr);
}

/// A small deterministic generator, so a failing run can be replayed from the printed seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_any_point_never_leaves_a_torn_entry() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "k".repeat(4000), "expires_in": 300})),
        )
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!("[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n", server.uri()));
    let seed = std::env::var("BROKER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_secs);
    println!("kill seed: {seed} (BROKER_KILL_SEED={seed} replays it)");
    let mut rng = Lcg(seed);
    for round in 0..60 {
        let mut child = home
            .cmd(["token", "p", "--force-refresh"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The injected fault: a kill after a seeded delay of 0-8 ms, across start-up, fetch and write.
        std::thread::sleep(Duration::from_micros(rng.next() % 8000));
        let _ = child.kill();
        let _ = child.wait();
        for entry in home.cache_entries() {
            let text = home.entry_text(&entry);
            assert!(
                broker_core::cache::decode_entry(text.as_bytes()).is_ok(),
                "round {round} (seed {seed}): torn entry {}",
                entry.display()
            );
        }
    }
    home.run(["token", "p"]).success();
    let strays: Vec<_> = std::fs::read_dir(home.cache_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    home.run(["token", "p", "--force-refresh"]).success();
    let after: Vec<_> = std::fs::read_dir(home.cache_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        after.is_empty(),
        "stray temp files survived a write: {after:?} (before: {strays:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_processes_over_four_profiles_make_one_call_per_profile() {
    let server = MockServer::start().await;
    let mut toml = String::new();
    for i in 0..4 {
        Mock::given(method("POST"))
            .and(body_string_contains(
                format!("client_id=client{i}&").as_str(),
            ))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": format!("token-{i}"), "expires_in": 300}))
                    .set_delay(Duration::from_millis(300)),
            )
            .expect(1)
            .mount(&server)
            .await;
        toml.push_str(&format!(
            "[profiles.p{i}]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"client{i}\"\nclient_secret = {{ env = \"S\" }}\n",
            server.uri()
        ));
    }
    let home = Home::new();
    home.config(&toml);
    let children: Vec<_> = (0..200)
        .map(|n| {
            let profile = format!("p{}", n % 4);
            (
                n % 4,
                home.cmd(["token", profile.as_str()])
                    .env("S", "s")
                    .stdout(std::process::Stdio::piped())
                    .spawn(),
            )
        })
        .map(|(i, c)| (i, c.expect("spawn")))
        .collect();
    for (i, child) in children {
        let out = Run::from(child.wait_with_output().unwrap());
        assert_eq!(out.token(), format!("token-{i}"), "stderr: {}", out.stderr);
    }
}
