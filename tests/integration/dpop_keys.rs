//! DPoP keys and what binds to them: a server that binds nothing, or to another key, against what the profile asked
//! for (wiremock); a generated key kept in the keyring beside the profile's secret.

use serde_json::json;

use crate::client_auth::secret_file;
use crate::dpop::{cnf_jkt, json_of, run, Dpop, SECRET};
use crate::support::*;

#[test]
fn what_a_server_binds_must_be_what_the_profile_asked_for() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, key_pem) = broker_core::dpop::DpopKey::generate().unwrap();
    let other = broker_core::dpop::DpopKey::generate().unwrap().0;
    let bound_elsewhere =
        jwt(&json!({"exp": now_secs() + 300, "cnf": {"jkt": other.thumbprint()}}));
    for (dpop, answer, want) in [
        (
            "dpop = true",
            json!({"access_token": "opaque", "token_type": "Bearer", "expires_in": 300}),
            Err("not `DPoP`"),
        ),
        (
            "dpop = \"optional\"",
            json!({"access_token": "opaque", "token_type": "Bearer", "expires_in": 300}),
            Ok("Bearer"),
        ),
        (
            "",
            json!({"access_token": "opaque", "token_type": "DPoP", "expires_in": 300}),
            Err("set `dpop = true`"),
        ),
        (
            "dpop = { key = { file = \"KEY\" } }",
            json!({"access_token": bound_elsewhere, "token_type": "DPoP"}),
            Err("not to this profile's key"),
        ),
    ] {
        let server = rt.block_on(token_endpoint(
            wiremock::ResponseTemplate::new(200).set_body_json(answer),
        ));
        let home = Home::new();
        let key = secret_file(
            &home,
            "key.pem",
            secrecy::ExposeSecret::expose_secret(&key_pem),
        );
        home.config(&format!(
            "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"c\"\nclient_secret = {{ env = \"S\" }}\n{}\n",
            server.uri(),
            dpop.replace("KEY", &key.display().to_string())
        ));
        let out = Run::from(
            home.cmd(["token", "p", "--format", "json"])
                .env("S", "s3cret-for-p")
                .output()
                .unwrap(),
        );
        match want {
            Ok(token_type) => assert_eq!(json_of(&out)["token_type"], token_type),
            Err(text) => {
                out.code(6).stderr_has(text);
            }
        }
        // Every token request carried a proof when DPoP was on.
        let requests = rt.block_on(server.received_requests()).unwrap_or_default();
        assert_eq!(
            requests.iter().all(|r| r.headers.contains_key("dpop")),
            !dpop.is_empty(),
            "{dpop}"
        );
    }
}

#[test]
fn a_generated_key_is_kept_in_the_keyring_when_the_secret_is_there() {
    use std::io::Write;
    let idp = Dpop::start(false, false);
    let home = Home::new();
    // A service name of this test alone: the kernel keyring is the user's, shared by tests running at once.
    let service = format!("broker-dpop-test-{}", std::process::id());
    home.config(&format!(
        "[profiles.ion-dev]\nprovider = \"ion\"\nauth_server = \"{}\"\napi = \"{}\"\nclient_id = \"svc\"\n\
         client_secret = {{ keyring = \"{service}/svc\" }}\ndpop = true\n",
        idp.server.base(),
        idp.api()
    ));
    let mut set = home
        .cmd(["secret", "set", "ion-dev"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    set.stdin
        .take()
        .unwrap()
        .write_all(format!("{SECRET}\n").as_bytes())
        .unwrap();
    assert!(set.wait().unwrap().success());
    run(&home, &["check"])
        .success()
        .stdout_has(&format!("key kept in keyring {service}/svc.dpop"));
    // Two processes, the second forcing a new token: both bound to the one key the keyring keeps, none in a file.
    let c = json_of(&run(&home, &["token", "ion-dev", "--format", "json"]));
    let d = json_of(&run(
        &home,
        &["token", "ion-dev", "--format", "json", "--force-refresh"],
    ));
    assert_eq!(
        cnf_jkt(c["access_token"].as_str().unwrap()),
        cnf_jkt(d["access_token"].as_str().unwrap())
    );
    assert!(!home.cache_dir().join("dpop/ion-dev.pem").exists());
    let secret = broker_core::secret::SecretSource::Keyring {
        service: service.clone(),
        account: "svc.dpop".into(),
    };
    let pem = secret
        .read(broker_core::secret::Shape::Whole)
        .expect("the key is in the keyring");
    let key =
        broker_core::dpop::DpopKey::from_pem(secrecy::ExposeSecret::expose_secret(&pem).as_bytes())
            .unwrap();
    assert_eq!(
        key.thumbprint(),
        cnf_jkt(c["access_token"].as_str().unwrap())
    );
    let _ = secret.delete();
    run(&home, &["secret", "delete", "ion-dev"]).success();
}
