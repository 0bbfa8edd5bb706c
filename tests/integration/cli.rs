//! The CLI's commands, formats, exit codes and config errors.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

async fn server_with(token: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": token, "token_type": "Bearer", "expires_in": 600}),
        ))
        .mount(&server)
        .await;
    server
}

fn ion_profile(home: &Home, server: &MockServer) {
    home.config(&format!(
        "[profiles.ion-prod]\nprovider = \"ion\"\nauth_server = \"{}\"\nclient_id = \"id\"\nclient_secret = \"literal-secret-xyz\"\n",
        server.uri()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn output_formats_follow_the_contract() {
    let server = server_with("tok'en").await;
    let home = Home::new();
    ion_profile(&home, &server);
    assert_eq!(home.run(["token", "ion-prod"]).stdout, "tok'en\n");
    assert_eq!(
        home.run(["token", "ion-prod", "--format", "header"]).stdout,
        "Authorization: tok'en\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&home.run(["token", "ion-prod", "--format", "json"]).stdout)
            .unwrap_or_default();
    assert_eq!(json["access_token"], "tok'en");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["profile"], "ion-prod");
    assert_eq!(json["header"], "Authorization: tok'en");
    assert!(json["expires_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    assert!(json["expires_in"]
        .as_u64()
        .is_some_and(|n| n > 590 && n <= 600));
    let env = home.run(["token", "ion-prod", "--format", "env"]);
    env.success();
    // The output is safe to eval: the quote inside the token survives.
    let evald = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "{}printf '%s|%s' \"$BROKER_TOKEN\" \"$ION_ACCESS_TOKEN\"",
                env.stdout
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&evald.stdout), "tok'en|tok'en");
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_files_are_private_and_list_shows_state_without_the_token() {
    let server = server_with("listed-token-value").await;
    let home = Home::new();
    ion_profile(&home, &server);
    home.run(["list"])
        .success()
        .stdout_has("ion-prod")
        .stdout_has("none");
    home.run(["token", "ion-prod"]).success();
    let list = home.run(["list"]);
    list.success()
        .stdout_has("valid until")
        .stdout_has("production");
    assert!(!list.stdout.contains("listed-token-value"));
    let entries = home.cache_entries();
    assert_eq!(entries.len(), 1);
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&entries[0]), 0o600);
    assert_eq!(mode(&home.cache_dir()), 0o700);
    home.run(["cache", "clear", "ion-prod"])
        .success()
        .stdout_has("cleared");
    assert!(home.cache_entries().is_empty());
    home.run(["token", "ion-prod"]).success();
    home.run(["cache", "clear"])
        .success()
        .stdout_has("cleared 1");
    assert!(home.cache_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_cache_neither_reads_nor_writes() {
    let server = server_with("fresh").await;
    let home = Home::new();
    ion_profile(&home, &server);
    home.run(["token", "ion-prod", "--no-cache"]).success();
    home.run(["token", "ion-prod", "--no-cache"]).success();
    assert!(home.cache_entries().is_empty());
    assert_eq!(server.received_requests().await.map_or(0, |r| r.len()), 2);
}

#[test]
fn providers_lists_the_builtins_and_user_files() {
    let home = Home::new();
    home.provider("acme", "kind = \"oauth2\"\ndescription = \"Acme API\"\ntoken_url = \"https://login.acme.example/token\"\n");
    let out = home.run(["providers"]);
    out.success()
        .stdout_has("ion")
        .stdout_has("production*")
        .stdout_has("staging (sandbox)")
        .stdout_has("gov-staging")
        .stdout_has("aus-staging")
        .stdout_has("chili")
        .stdout_has("auth0")
        .stdout_has("Acme API");
}

#[test]
fn check_shows_resolved_settings_with_secrets_redacted() {
    let home = Home::new();
    home.config(
        "[defaults]\nmin_ttl = \"2m\"\n[profiles.ion-sandbox]\nprovider = \"ion\"\nenvironment = \"sandbox\"\nclient_id = \"id\"\nclient_secret = \"super-secret-literal\"\n",
    );
    let out = home.run(["check"]);
    out.success()
        .stdout_has(
            "https://staging-auth.buildwithion.com/realms/api-keys/protocol/openid-connect/token",
        )
        .stdout_has("staging")
        .stdout_has("2m")
        .stdout_has("literal (redacted)");
    assert!(!out.stdout.contains("super-secret-literal"));
}

#[test]
fn check_fails_with_exit_3_when_a_secret_source_is_missing() {
    let home = Home::new();
    home.config("[profiles.p]\nprovider = \"chili\"\nclient_id = \"id\"\nclient_secret = { env = \"CHILI_SECRET_UNSET\" }\n");
    home.run(["check"])
        .code(3)
        .stdout_has("CHILI_SECRET_UNSET is not set");
    home.run(["token", "p"])
        .code(3)
        .stderr_has("environment variable CHILI_SECRET_UNSET is not set");
}

#[test]
fn config_errors_name_file_line_column_and_exit_3() {
    let home = Home::new();
    home.config("[profiles.p]\nprovider = \"ion\"\nclient_id = \"id\"\nclient_secert = \"x\"\n");
    let out = home.run(["token", "p"]);
    out.code(3)
        .stderr_has("unknown key `client_secert`")
        .stderr_has("config.toml:4:1")
        .stderr_has("did you mean `client_secret`?");

    home.config("[profiles.p]\nprovider = \"ion\"\nenvironment = \"prod\"\nclient_id = \"id\"\nclient_secret = \"x\"\n");
    home.run(["token", "p"])
        .code(3)
        .stderr_has("config.toml:3:15")
        .stderr_has("has no environment `prod`");

    home.config("[profiles.p]\nprovider = \"ionn\"\n");
    home.run(["token", "p"])
        .code(3)
        .stderr_has("unknown provider `ionn`")
        .stderr_has("did you mean `ion`?");

    home.config("[profiles.p]\nprovider = \"ion\"\nclient_id = \"id\"\nclient_secret = \"x\"\n");
    home.run(["token", "ion-prd"])
        .code(3)
        .stderr_has("unknown profile `ion-prd`")
        .stderr_has("known profiles: p");

    let dir = home.path().join("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    home.run(["token", "p", "--config", dir.to_str().unwrap_or_default()])
        .code(3)
        .stderr_has("cannot read");
}

#[test]
fn usage_errors_exit_2_and_help_lists_exit_codes() {
    let home = Home::new();
    home.run(["token"]).code(2);
    home.run(["token", "p", "--min-ttl", "soon"]).code(2);
    home.run(["--help"])
        .success()
        .stdout_has("Exit codes:")
        .stdout_has("6  bad_response");
    home.run(["token", "--help"])
        .success()
        .stdout_has("Examples:");
}

#[test]
fn inspect_shows_claims_never_the_signature() {
    let home = Home::new();
    let token = jwt(&json!({"sub": "svc", "exp": now_secs() + 600}));
    let mut child = home
        .cmd(["inspect", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .map(|mut s| s.write_all(token.as_bytes()));
    let out = Run::from(child.wait_with_output().unwrap());
    out.success()
        .stdout_has("\"sub\": \"svc\"")
        .stdout_has("RS256")
        .stdout_has("left)");
    assert!(!out.stdout.contains("c2ln"), "the signature is never shown");

    let mut child = home
        .cmd(["inspect", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().map(|mut s| s.write_all(b"opaque-token"));
    Run::from(child.wait_with_output().unwrap())
        .success()
        .stdout_has("opaque");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_provider_file_adds_a_provider_without_code() {
    let server = server_with("acme-token").await;
    let home = Home::new();
    home.provider("acme", &format!("kind = \"oauth2\"\ntoken_url = \"{}/token\"\nscope = \"read\"\nheader = \"X-Api-Token: {{token}}\"\n", server.uri()));
    home.config(
        "[profiles.acme]\nprovider = \"acme\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
    );
    assert_eq!(
        home.run(["token", "acme", "--format", "header"]).stdout,
        "X-Api-Token: acme-token\n"
    );
    let reqs = server.received_requests().await.unwrap_or_default();
    assert!(String::from_utf8_lossy(&reqs[0].body).contains("scope=read"));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_secret_basic_encodes_each_part_before_joining() {
    let server = MockServer::start().await;
    // RFC 6749 §2.3.1: form-encode id and secret separately (space as %20), join with `:`, then base64.
    let expected = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode("my%20id:a%3Ab%2Bc%25d%2Fe%3Df%26g%20h")
        )
    };
    Mock::given(method("POST"))
        .and(wiremock::matchers::header(
            "authorization",
            expected.as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "basic-ok", "expires_in": 60})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.b]\nkind = \"oauth2\"\nauth = \"client_secret_basic\"\ntoken_url = \"{}/token\"\nclient_id = \"my id\"\nclient_secret = \"a:b+c%d/e=f&g h\"\n",
        server.uri()
    ));
    assert_eq!(home.run(["token", "b"]).token(), "basic-ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_cache_hit_never_runs_a_secret_command() {
    let server = server_with("warm").await;
    let home = Home::new();
    let log = home.path().join("runs.log");
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = {{ command = [\"sh\", \"-c\", \"echo run >> {}; echo s3cret\"] }}\n",
        server.uri(),
        log.display()
    ));
    for _ in 0..3 {
        assert_eq!(home.run(["token", "p"]).success().stdout, "warm\n");
    }
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        runs.lines().count(),
        1,
        "the secret command ran on a cache hit"
    );
    assert_eq!(server.received_requests().await.map_or(0, |r| r.len()), 1);
}

#[test]
fn config_file_precedence_is_flag_then_broker_config_then_xdg() {
    let home = Home::new();
    home.config("[profiles.from-xdg]\nprovider = \"chili\"\nclient_id = \"a\"\nclient_secret = { env = \"X\" }\n");
    let env_file = home.path().join("env.toml");
    std::fs::write(&env_file, "[profiles.from-env]\nprovider = \"chili\"\nclient_id = \"a\"\nclient_secret = { env = \"X\" }\n").unwrap();
    let flag_file = home.path().join("flag.toml");
    std::fs::write(&flag_file, "[profiles.from-flag]\nprovider = \"chili\"\nclient_id = \"a\"\nclient_secret = { env = \"X\" }\n").unwrap();
    let list = |env: Option<&std::path::Path>, flag: Option<&std::path::Path>| {
        let mut cmd = home.cmd(["list"]);
        if let Some(e) = env {
            cmd.env("BROKER_CONFIG", e);
        }
        if let Some(f) = flag {
            cmd.arg("--config").arg(f);
        }
        Run::from(cmd.output().unwrap())
    };
    list(None, None).success().stdout_has("from-xdg");
    list(Some(&env_file), None).success().stdout_has("from-env");
    list(Some(&env_file), Some(&flag_file))
        .success()
        .stdout_has("from-flag");
    list(Some(&home.path().join("missing.toml")), None)
        .code(3)
        .stderr_has("missing.toml");
}
