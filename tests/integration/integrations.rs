//! Each integration against what its consumer accepts: kubectl's ExecCredential, git's credential protocol,
//! `exec`, `curl` (token never on argv), shell `eval`, completions and the man page.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const TOKEN: &str = "integration-token-31d9";

async fn idp() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": TOKEN, "expires_in": 600})),
        )
        .mount(&server)
        .await;
    server
}

fn profile(home: &Home, idp: &MockServer, extra: &str) {
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = {{ env = \"S\" }}\ntoken_env = \"API_TOKEN\"\n{extra}",
        idp.uri()
    ));
}

fn run_with(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = home.cmd(args);
    cmd.env("S", "secret");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_credential_has_the_kubernetes_shape_in_both_versions() {
    let idp = idp().await;
    let home = Home::new();
    profile(&home, &idp, "min_ttl = \"2m\"\n");
    for (info, version) in [
        ("", "client.authentication.k8s.io/v1"),
        (
            r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}"#,
            "client.authentication.k8s.io/v1",
        ),
        (
            r#"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{}}"#,
            "client.authentication.k8s.io/v1beta1",
        ),
    ] {
        let out = run_with(
            &home,
            &["token", "p", "--format", "exec-credential"],
            &[("KUBERNETES_EXEC_INFO", info)],
        );
        out.success();
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
        assert_eq!(v["apiVersion"], version);
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["status"]["token"], TOKEN);
        let exp = v["status"]["expirationTimestamp"]
            .as_str()
            .unwrap_or_default();
        let exp = humantime::parse_rfc3339(exp).unwrap_or_else(|e| panic!("{e}: {exp}"));
        let left = exp
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        // expires_in 600 minus the 120 s margin.
        assert!(
            (470..=480).contains(&left),
            "expirationTimestamp {left}s ahead"
        );
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(3),
            "only apiVersion, kind and status"
        );
    }
    run_with(
        &home,
        &["token", "p", "--format", "exec-credential"],
        &[("KUBERNETES_EXEC_INFO", r#"{"apiVersion":"v9"}"#)],
    )
    .code(2);
}

fn git(home: &Home, repo: &std::path::Path, host: &str) -> Run {
    let helper = format!("!{BIN} git-credential p");
    let mut child = std::process::Command::new("git")
        .args([
            "-c",
            &format!("credential.helper={helper}"),
            "credential",
            "fill",
        ])
        .current_dir(repo)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("S", "secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git");
    let _ = child
        .stdin
        .take()
        .map(|mut s| s.write_all(format!("protocol=https\nhost={host}\n\n").as_bytes()));
    Run::from(child.wait_with_output().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn git_credential_fill_answers_only_for_the_profile_host() {
    let idp = idp().await;
    let home = Home::new();
    profile(&home, &idp, "api = \"https://api.example.test\"\n");
    let repo = home.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let init = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(init.status.success());
    let ours = git(&home, &repo, "api.example.test");
    ours.success()
        .stdout_has(&format!("password={TOKEN}"))
        .stdout_has("username=broker");
    let other = git(&home, &repo, "evil.example.test");
    assert!(
        !other.stdout.contains(TOKEN) && !other.stderr.contains(TOKEN),
        "the token went to another host"
    );
    assert_ne!(other.code, 0, "git found no credential for the other host");
    // store and erase are accepted and do nothing.
    for action in ["store", "erase"] {
        let mut c = home
            .cmd(["git-credential", "p", action])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = c
            .stdin
            .take()
            .map(|mut s| s.write_all(b"protocol=https\nhost=api.example.test\npassword=x\n\n"));
        let out = Run::from(c.wait_with_output().unwrap());
        assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_passes_the_token_in_the_environment_and_the_childs_exit_status() {
    let idp = idp().await;
    let home = Home::new();
    profile(&home, &idp, "");
    let out = run_with(
        &home,
        &[
            "exec",
            "p",
            "--env",
            "EXTRA",
            "--",
            "sh",
            "-c",
            "printf '%s|%s|%s' \"$BROKER_TOKEN\" \"$API_TOKEN\" \"$EXTRA\"",
        ],
        &[],
    );
    assert_eq!(out.success().stdout, format!("{TOKEN}|{TOKEN}|{TOKEN}"));
    run_with(&home, &["exec", "p", "--", "sh", "-c", "exit 7"], &[]).code(7);
    let killed = home
        .cmd(["exec", "p", "--", "sh", "-c", "kill -TERM $$"])
        .env("S", "secret")
        .output()
        .unwrap();
    assert_eq!(
        killed.status.signal(),
        Some(15),
        "the child's signal is the broker's: it exec'd"
    );
    run_with(&home, &["exec", "p", "--", "/nonexistent/program"], &[]).code(127);
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_sends_the_header_from_a_pipe_never_on_argv() {
    let idp = idp().await;
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/graphql"))
        .and(header("authorization", TOKEN))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("{\"data\":{}}")
                .set_delay(Duration::from_millis(1500)),
        )
        .expect(1)
        .mount(&api)
        .await;
    let home = Home::new();
    // ION-style: the raw token as Authorization.
    profile(
        &home,
        &idp,
        &format!(
            "api = \"{}\"\nheader = \"Authorization: {{token}}\"\n",
            api.uri()
        ),
    );
    let child = home
        .cmd([
            "curl",
            "p",
            "/graphql",
            "-sS",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"query":"{ runs(first: 10) { edges { node { id title } } } }"}"#,
        ])
        .env("S", "secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the process has become curl, its argv must not hold the token.
    let cmdline = format!("/proc/{}/cmdline", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let argv = loop {
        let argv = std::fs::read(&cmdline)
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if argv.starts_with("curl ") {
            break argv;
        }
        assert!(Instant::now() < deadline, "curl never started: {argv}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!argv.contains(TOKEN), "token on curl's argv: {argv}");
    assert!(argv.contains("@/dev/fd/"), "{argv}");
    let out = Run::from(child.wait_with_output().unwrap());
    assert_eq!(out.success().stdout, "{\"data\":{}}");
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_missing_gives_a_clear_error() {
    let idp = idp().await;
    let home = Home::new();
    profile(&home, &idp, "");
    let out = Run::from(
        home.cmd(["curl", "p", "https://api.example.test/x"])
            .env("S", "secret")
            .env("PATH", "/nonexistent")
            .output()
            .unwrap(),
    );
    out.code(127).stderr_has("curl is not installed");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_output_evaluates_in_bash_and_sh() {
    let server = MockServer::start().await;
    let nasty = "a'b\"c$d`e\\f g";
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": nasty, "expires_in": 600})),
        )
        .mount(&server)
        .await;
    let home = Home::new();
    profile(&home, &server, "");
    let env = run_with(&home, &["token", "p", "--format", "env"], &[]);
    env.success();
    for shell in ["bash", "sh"] {
        let out = std::process::Command::new(shell)
            .args([
                "-c",
                &format!(
                    "{}printf '%s|%s' \"$BROKER_TOKEN\" \"$API_TOKEN\"",
                    env.stdout
                ),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{nasty}|{nasty}"),
            "{shell}"
        );
    }
}

#[test]
fn completions_for_every_shell_and_bash_parses_them() {
    let home = Home::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = home.run(["completions", shell]);
        out.success();
        assert!(out.stdout.contains("broker"), "{shell}");
        if shell == "bash" {
            let path = home.path().join("broker.bash");
            std::fs::write(&path, &out.stdout).unwrap();
            let check = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
}

#[test]
fn the_man_page_renders() {
    let home = Home::new();
    let out = home.run(["man"]);
    out.success();
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH SUBCOMMANDS",
    ] {
        assert!(out.stdout.contains(section), "missing {section}");
    }
    let page = home.path().join("broker.1");
    std::fs::write(&page, &out.stdout).unwrap();
    if let Ok(rendered) = std::process::Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("COLUMNS", "100")
        .output()
    {
        if rendered.status.success() {
            let text = String::from_utf8_lossy(&rendered.stdout);
            assert!(text.contains("NAME") && text.contains("broker"), "{text}");
        }
    }
}

#[test]
fn every_command_help_shows_an_example() {
    let home = Home::new();
    for cmd in [
        "token",
        "list",
        "providers",
        "check",
        "inspect",
        "exec",
        "curl",
        "git-credential",
        "completions",
        "man",
        "demo",
        "dev-issuer",
    ] {
        home.run([cmd, "--help"]).success().stdout_has("Example");
    }
    home.run(["cache", "clear", "--help"])
        .success()
        .stdout_has("Example");
}
