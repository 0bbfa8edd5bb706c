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
    let home = Home::new();
    let secret_file = home.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    home.config(&format!(
        "[defaults]\nclient_id = \"id\"\nretry = \"0s\"\n\
         [profiles.ok]\nkind = \"oauth2\"\nauth = \"client_secret_basic\"\ntoken_url = \"{}/token\"\nclient_secret = {{ env = \"HYGIENE_SECRET\" }}\n\
         [profiles.viafile]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_secret = {{ file = \"{}\" }}\n\
         [profiles.bad]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_secret = {{ env = \"HYGIENE_SECRET\" }}\n",
        ok.uri(),
        ok.uri(),
        secret_file.display(),
        bad.uri()
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
        assert!(
            !out.stderr.contains(SECRET),
            "{args:?}: the secret reached stderr"
        );
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
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(
                broker_core::cache::decode_entry(&bytes).is_ok(),
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
