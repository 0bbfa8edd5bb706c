//! DPoP (RFC 9449) end to end against oidc-provider with `features.dPoP` and a resource server that verifies every
//! proof (tests/servers/oidc-dpop.mjs): tokens bound to the profile's key, the nonce dances, a key rotated, proofs
//! from `--format dpop`, `broker curl`, the proxy and the daemon's `/proof`, and what a server that binds nothing
//! (or binds to another key) gets. The middleware's proofs: crates/broker-core/tests/middleware.rs.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::client_auth::secret_file;
use crate::daemon::Daemon;
use crate::proxy::{body_json, Proxy};
use crate::support::*;

pub(crate) const SECRET: &str = "dpop-secret-dpop-secret-dpop-secret";

pub(crate) struct Dpop {
    pub(crate) server: NodeServer,
    _conf: tempfile::TempDir,
}

impl Dpop {
    /// The issuer (a Keycloak realm) and its resource server; `token_nonce` and `api_nonce` make each ask for a nonce.
    pub(crate) fn start(token_nonce: bool, api_nonce: bool) -> Dpop {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({
            "clients": [{"client_id": "svc", "secret": SECRET, "bound": true}],
            "token_nonce": token_nonce,
            "api_nonce": api_nonce,
        });
        let path = dir.path().join("server.json");
        std::fs::write(&path, conf.to_string()).unwrap();
        let server = NodeServer::start_with("oidc-dpop.mjs", &[path.to_str().unwrap()], &[]);
        Dpop { server, _conf: dir }
    }

    pub(crate) fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.ports[1])
    }

    pub(crate) fn stats(&self) -> Value {
        serde_json::from_str(&http_get(self.server.port, "/__stats")).unwrap()
    }

    /// A home with an ION profile (the built-in Keycloak provider) with `extra` lines (`dpop = ...`).
    pub(crate) fn home(&self, extra: &str) -> Home {
        let home = Home::new();
        self.configure(&home, extra);
        home
    }

    pub(crate) fn configure(&self, home: &Home, extra: &str) {
        let secret = secret_file(home, "ion.secret", SECRET);
        home.config(&format!(
            "[profiles.ion-dev]\nprovider = \"ion\"\nauth_server = \"{}\"\napi = \"{}\"\nclient_id = \"svc\"\n\
             client_secret = {{ file = \"{}\" }}\n{extra}\n",
            self.server.base(),
            self.api(),
            secret.display()
        ));
    }
}

pub(crate) fn run(home: &Home, args: &[&str]) -> Run {
    home.run(args)
}

/// The JSON a successful run printed.
#[track_caller]
pub(crate) fn json_of(run: &Run) -> Value {
    run.success();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// Sends `GET url` with the header lines of `--format dpop` (by curl, a program that knows nothing of DPoP): status,
/// the `DPoP-Nonce` it was given, and the body.
fn send_lines(url: &str, lines: &str) -> (u16, Option<String>, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-i", url]);
    for line in lines.lines().filter(|l| !l.is_empty()) {
        cmd.args(["-H", line]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, head, body) = crate::proxy::split_response(&text);
    let nonce = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("dpop-nonce"))
            .map(|(_, v)| v.trim().to_owned())
    });
    (status, nonce, body.to_owned())
}

pub(crate) fn cnf_jkt(token: &str) -> String {
    let claims = broker_core::token::jwt_claims(token).expect("a JWT");
    claims["cnf"]["jkt"].as_str().unwrap_or_default().to_owned()
}

fn thumbprint_in_check(home: &Home) -> String {
    let out = run(home, &["check"]);
    out.success()
        .stdout
        .lines()
        .find_map(|l| l.split("(cnf.jkt) ").nth(1))
        .unwrap_or_else(|| panic!("no thumbprint in check: {}", out.stdout))
        .trim()
        .to_owned()
}

#[test]
fn a_bound_token_is_issued_and_accepted_and_a_replayed_proof_is_refused() {
    let idp = Dpop::start(false, false);
    let home = idp.home("dpop = true");
    let check = run(&home, &["check"]);
    check.success().stdout_has("generated on first use");
    let v = json_of(&run(&home, &["token", "ion-dev", "--format", "json"]));
    assert_eq!(v["token_type"], "DPoP");
    let token = v["access_token"].as_str().unwrap();
    assert!(v["header"]
        .as_str()
        .unwrap()
        .starts_with("Authorization: DPoP "));
    // The token names the key broker generated, kept 0600 beside the cache.
    assert_eq!(cnf_jkt(token), thumbprint_in_check(&home));
    let key = home.cache_dir().join("dpop/ion-dev.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    run(&home, &["inspect", "ion-dev"])
        .success()
        .stdout_has("the profile's key (matches)");

    // `--format dpop` for one request: the resource server verifies it; the same lines again are a replay.
    let url = format!("{}/v1/runs?first=10", idp.api());
    let lines = run(
        &home,
        &[
            "token",
            "ion-dev",
            "--format",
            "dpop",
            "--url",
            "/v1/runs?first=10",
        ],
    );
    lines.success();
    assert!(
        lines.stdout.lines().any(|l| l.starts_with("DPoP: ")),
        "{}",
        lines.stdout
    );
    let (status, _, body) = send_lines(&url, &lines.stdout);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = send_lines(&url, &lines.stdout);
    assert_eq!(
        (status, body_json(&body)["reason"].as_str()),
        (401, Some("jti replayed"))
    );
    // A proof for another method is refused too.
    let post = run(
        &home,
        &[
            "token", "ion-dev", "--format", "dpop", "--method", "POST", "--url", &url,
        ],
    );
    assert_eq!(send_lines(&url, &post.stdout).0, 401);
    assert_eq!(
        idp.server.issued(),
        1,
        "every proof used the one cached token"
    );
}

#[test]
fn each_nonce_dance_costs_exactly_one_retry() {
    let idp = Dpop::start(true, true);
    let home = idp.home("dpop = true");
    let proxy = Proxy::start(&home, &["--profile", "ion-dev"]);
    let first = proxy.get("/v1/first", "");
    assert_eq!(first.0, 200, "{}", first.2);
    for i in 0..5 {
        let (status, _, body) = proxy.get(&format!("/v1/again/{i}"), "");
        assert_eq!(status, 200, "{body}");
    }
    let s = idp.stats();
    // The token endpoint: asked once without a nonce, told one, asked once more; the api likewise, once.
    assert_eq!(
        (s["token_requests"].as_u64(), s["token_nonce_asks"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(s["issued"], 1, "{s}");
    assert_eq!(
        (s["api_nonce_asks"].as_u64(), s["accepted"].as_u64()),
        (Some(1), Some(6)),
        "{s}"
    );
    // `--format dpop` for a program that makes its own requests: refused without the api's nonce, which the refusal
    // names, and accepted with `--nonce`.
    let url = format!("{}/v1/own", idp.api());
    let plain = run(
        &home,
        &["token", "ion-dev", "--format", "dpop", "--url", &url],
    );
    let (status, nonce, body) = send_lines(&url, &plain.stdout);
    assert_eq!(status, 401, "{body}");
    let nonce = nonce.expect("the api's nonce");
    let with = run(
        &home,
        &[
            "token", "ion-dev", "--format", "dpop", "--url", &url, "--nonce", &nonce,
        ],
    );
    let (status, _, body) = send_lines(&url, &with.stdout);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_token_bound_to_one_key_is_never_sent_with_another() {
    let idp = Dpop::start(false, false);
    let key_a = keygen("p256", "pkcs8");
    let key_b = keygen("p256", "sec1");
    let home = Home::new();
    let key = secret_file(&home, "dpop.pem", &key_a.private);
    idp.configure(
        &home,
        &format!(
            "dpop = {{ key = {{ file = \"{}\" }}, alg = \"ES256\" }}",
            key.display()
        ),
    );

    let a = json_of(&run(&home, &["token", "ion-dev", "--format", "json"]));
    let jkt_a = thumbprint_in_check(&home);
    assert_eq!(cnf_jkt(a["access_token"].as_str().unwrap()), jkt_a);
    // Warm: the same token with the same key.
    let again = json_of(&run(&home, &["token", "ion-dev", "--format", "json"]));
    assert_eq!(again["access_token"], a["access_token"]);
    assert_eq!(idp.server.issued(), 1);

    // The key file rotated: a new key is a new cache entry, so the token bound to the old key is never served.
    std::fs::write(&key, &key_b.private).unwrap();
    let b = json_of(&run(&home, &["token", "ion-dev", "--format", "json"]));
    let jkt_b = thumbprint_in_check(&home);
    assert_ne!(jkt_a, jkt_b);
    assert_ne!(b["access_token"], a["access_token"]);
    assert_eq!(cnf_jkt(b["access_token"].as_str().unwrap()), jkt_b);
    assert_eq!(idp.server.issued(), 2);
    // Its proofs are made with the new key and accepted.
    let url = format!("{}/v1/after-rotation", idp.api());
    let lines = run(
        &home,
        &["token", "ion-dev", "--format", "dpop", "--url", &url],
    );
    assert_eq!(send_lines(&url, &lines.stdout).0, 200);

    // A key file another user can write is refused, as private keys are.
    crate::support::chmod(&key, 0o666);
    run(&home, &["token", "ion-dev", "--no-cache"])
        .code(3)
        .stderr_has("writable by others");
}

#[test]
fn broker_curl_and_the_proxy_each_pass_a_hundred_requests_with_a_hundred_distinct_jtis() {
    let idp = Dpop::start(false, false);
    let home = idp.home("dpop = true");
    let mut jtis = HashSet::new();
    for i in 0..100 {
        let out = run(
            &home,
            &[
                "curl",
                "ion-dev",
                &format!("/v1/curl/{i}?page={i}"),
                "-s",
                "-X",
                "POST",
                "-d",
                "x=1",
            ],
        );
        let v = json_of(&out);
        assert_eq!(
            (v["ok"].as_bool(), v["method"].as_str()),
            (Some(true), Some("POST")),
            "{v}"
        );
        jtis.insert(v["jti"].as_str().unwrap().to_owned());
    }
    assert_eq!(jtis.len(), 100);
    let proxy = Proxy::start(&home, &["--profile", "ion-dev"]);
    let mut jtis = HashSet::new();
    for i in 0..100 {
        let (status, _, body) = proxy.get(
            &format!("/v1/proxy/{i}"),
            "DPoP: a-client-proof-is-dropped\r\n",
        );
        assert_eq!(status, 200, "{body}");
        jtis.insert(body_json(&body)["jti"].as_str().unwrap().to_owned());
    }
    assert_eq!(jtis.len(), 100);
    let s = idp.stats();
    assert_eq!(
        (s["accepted"].as_u64(), s["issued"].as_u64()),
        (Some(200), Some(1)),
        "{s}"
    );
}

#[test]
fn the_daemon_hands_out_proofs_and_keeps_the_key() {
    let idp = Dpop::start(false, false);
    let home = idp.home("dpop = true");
    let daemon = Daemon::start(&home);
    let url = format!("{}/v1/from-the-daemon", idp.api());
    let enc: String = url::form_urlencoded::byte_serialize(url.as_bytes()).collect();
    let (status, _, body) = daemon.get(&format!("/v1/token/ion-dev/proof?htm=GET&htu={enc}"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lines = format!(
        "{}\nDPoP: {}\n",
        v["header"].as_str().unwrap(),
        v["dpop"].as_str().unwrap()
    );
    assert_eq!(send_lines(&url, &lines).0, 200);
    // Without the request it is for, there is no proof.
    assert_eq!(daemon.get("/v1/token/ion-dev/proof").0, 400);
    // The CLI asks the daemon for its proof: the daemon's metrics count the request.
    let lines = run(
        &home,
        &["token", "ion-dev", "--format", "dpop", "--url", &url],
    );
    assert_eq!(send_lines(&url, &lines.stdout).0, 200);
    assert!(
        crate::daemon::metric(
            &daemon.metrics(),
            "broker_requests_total{profile=\"ion-dev\",outcome=\"ok\"}"
        ) >= 2.0
    );
    assert_eq!(idp.server.issued(), 1);
}

#[test]
fn at_trace_level_no_log_line_holds_the_token_a_proof_or_the_key() {
    let idp = Dpop::start(true, false);
    let home = idp.home("dpop = true");
    let out = Run::from(
        home.cmd(["token", "ion-dev", "--format", "dpop", "--url", "/v1/x"])
            .env("BROKER_LOG", "trace")
            .output()
            .unwrap(),
    );
    out.success();
    let key = std::fs::read_to_string(home.cache_dir().join("dpop/ion-dev.pem")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut secrets: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, v)| v))
        .collect();
    secrets.extend([SECRET, "PRIVATE KEY", &key_body[..40]]);
    assert!(
        out.stderr.contains("DPoP nonce"),
        "the trace shows the nonce dance: {}",
        out.stderr
    );
    for s in secrets {
        assert!(
            !out.stderr.contains(s),
            "the log holds {s:.20}...:\n{}",
            out.stderr
        );
    }
}
