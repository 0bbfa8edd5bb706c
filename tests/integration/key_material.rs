//! Key material and keyring secrets: bad PEM, algorithm mismatches and expired certificates are config errors
//! naming the file, and a keyring secret set from stdin is used and never leaks.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, KeyPair};

use crate::client_auth::*;
use crate::support::*;

#[test]
fn bad_material_is_a_config_error_that_names_the_file() -> TestResult {
    let fx = Fixture::new();
    let home = Home::new();
    let garbage = secret_file(
        &home,
        "garbage.pem",
        "-----BEGIN NOTHING-----\nzz\n-----END NOTHING-----\n",
    );
    let ed = secret_file(&home, "ed.pem", &fx.ed25519.private);
    let expired = {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![SAN.to_owned()])?;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key)?;
        (
            secret_file(&home, "old.crt", &cert.pem()),
            secret_file(&home, "old.key", &key.serialize_pem()),
        )
    };
    let base = "kind = \"oauth2\"\ntoken_url = \"https://as.example/token\"\nclient_id = \"c\"\n";
    let cases = [
        (
            format!("auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{}\" }}", path(&garbage)),
            format!("private_key (set at {}", home.config_path().display()),
            "not a PEM private key".to_owned(),
        ),
        (
            format!("auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{}\" }}\nsigning_alg = \"RS256\"", path(&ed)),
            path(&ed),
            "an Ed25519 key, which cannot sign `signing_alg = \"RS256\"` (it signs EdDSA)".to_owned(),
        ),
        (
            format!(
                "auth = \"tls_client_auth\"\nclient_cert = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}",
                path(&expired.0),
                path(&expired.1)
            ),
            path(&expired.0),
            "a certificate that expired 2021-01-01".to_owned(),
        ),
    ];
    for (lines, names, says) in cases {
        home.config(&format!("[profiles.p]\n{base}{lines}\n"));
        let check = home.run(["check"]);
        check.code(3).stdout_has(&names).stdout_has(&says);
        // The same material at fetch time: a config error before any request.
        home.run(["token", "p"]).code(3).stderr_has(&says);
    }
    // A certificate that ends within a week: check passes, with a warning that says when.
    let soon = {
        let key = KeyPair::generate()?;
        let mut p = params(SAN);
        // Midnight (UTC) of the day three days from now: two to three days left.
        let day = humantime::format_rfc3339(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3 * 86_400),
        )
        .to_string();
        let ymd: Vec<i32> = day[..10]
            .split('-')
            .filter_map(|n| n.parse().ok())
            .collect();
        p.not_after = rcgen::date_time_ymd(ymd[0], ymd[1] as u8, ymd[2] as u8);
        let cert = p.self_signed(&key)?;
        (
            secret_file(&home, "soon.crt", &cert.pem()),
            secret_file(&home, "soon.key", &key.serialize_pem()),
        )
    };
    home.config(&format!(
        "[profiles.p]\n{base}auth = \"tls_client_auth\"\nclient_cert = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}\n",
        path(&soon.0),
        path(&soon.1)
    ));
    home.run(["check"])
        .success()
        .stdout_has("warning: profile `p`: client_cert file")
        .stdout_has(": renew it");
    // HS256 with a private key is caught when the file is loaded, at its line.
    home.config(&format!(
        "[profiles.p]\n{base}auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{}\" }}\nsigning_alg = \"HS256\"\n",
        path(&ed)
    ));
    home.run(["token", "p"])
        .code(3)
        .stderr_has("`signing_alg = \"HS256\"` does not fit `auth = \"private_key_jwt\"`")
        .stderr_has("config.toml:7:");
    Ok(())
}

#[test]
fn a_keyring_secret_is_set_from_stdin_and_used_and_never_leaks() -> TestResult {
    use std::io::Write;
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    // A service name of this test alone: the kernel keyring is the user's, shared by tests running at once.
    let service = format!("broker-test-{}", std::process::id());
    home.config(&profile(
        "kr",
        &idp,
        &format!("client_id = \"post-client\"\nclient_secret = {{ keyring = \"{service}/kr\" }}"),
    ));
    home.run(["token", "kr"])
        .code(3)
        .stderr_has("has no entry: store one with `broker secret set <profile>`");
    let mut set = home
        .cmd(["secret", "set", "kr"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    set.stdin
        .take()
        .unwrap()
        .write_all(format!("{POST_SECRET}\n").as_bytes())?;
    let set = Run::from(set.wait_with_output()?);
    set.success().stderr_has(&format!("keyring {service}/kr"));
    let run = Run::from(
        home.cmd(["token", "kr"])
            .env("RUST_LOG", "trace")
            .output()?,
    );
    run.success();
    assert_eq!(claims(&run.token())["client_id"], "post-client");
    let check = home.run(["check"]);
    check
        .success()
        .stdout_has(&format!("client_secret        keyring {service}/kr"));
    for text in [&set.stdout, &set.stderr, &run.stderr, &check.stdout] {
        assert!(!text.contains(POST_SECRET), "the secret leaked: {text}");
    }
    for file in walk(home.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(POST_SECRET),
            "the secret is in {}",
            file.display()
        );
    }
    home.run(["secret", "delete", "kr"]).success();
    home.run(["token", "kr", "--no-cache"]).code(3);
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_client_key_rustls_refuses_is_a_config_error_naming_it() {
    let home = Home::new();
    let a = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client".into()])
        .unwrap()
        .self_signed(&a)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = home.path().join(name);
        std::fs::write(&p, text).unwrap();
        chmod(&p, 0o600);
        p
    };
    let cert = write("client.crt", &cert.pem());
    let key = write("other.key", &other.serialize_pem());
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"https://127.0.0.1:{}/token\"\nclient_id = \"id\"\n\
         auth = \"tls_client_auth\"\nclient_cert = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}\nretry = \"0s\"\n",
        free_port(),
        cert.display(),
        key.display()
    ));
    chmod(&home.config_path(), 0o600);
    home.run(["token", "p"])
        .code(3)
        .stderr_has("client_key (set at")
        .stderr_has("cannot be used for TLS");
}
