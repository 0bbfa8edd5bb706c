//! The broker against real third-party OAuth servers installed from npm.

use crate::support::*;

const POST_SECRET: &str = "p@ss word&=+%~";
const BASIC_SECRET: &str = "s3:cr+t%/=& x";

fn keycloak() -> NodeServer {
    NodeServer::start(
        "oidc-keycloak.mjs",
        &[("POST_SECRET", POST_SECRET), ("BASIC_SECRET", BASIC_SECRET)],
    )
}

fn claims(token: &str) -> serde_json::Map<String, serde_json::Value> {
    broker_core::token::jwt_claims(token).unwrap_or_else(|| panic!("not a JWT: {token}"))
}

#[test]
fn keycloak_realm_post_client_fetches_once_then_serves_from_cache() -> TestResult {
    let idp = keycloak();
    let home = Home::new();
    home.config(&format!(
        "[profiles.ion-local]\nprovider = \"ion\"\nauth_server = \"{}\"\nclient_id = \"post-client\"\nclient_secret = {{ env = \"ION_SECRET\" }}\n",
        idp.base()
    ));
    let run = |args: &[&str]| {
        Run::from(
            home.cmd(args)
                .env("ION_SECRET", POST_SECRET)
                .output()
                .unwrap(),
        )
    };
    let first = run(&["token", "ion-local"]);
    first.success();
    assert_eq!(claims(&first.token())["client_id"], "post-client");
    assert_eq!(idp.issued(), 1);

    let second = run(&["token", "ion-local"]);
    second.success();
    assert_eq!(
        second.token(),
        first.token(),
        "the second call is served from the cache"
    );
    assert_eq!(idp.issued(), 1);

    let header = run(&["token", "ion-local", "--format", "header"]);
    assert_eq!(
        header.stdout,
        format!("Authorization: {}\n", first.token()),
        "ION takes the raw token, no Bearer"
    );

    let forced = run(&["token", "ion-local", "--force-refresh"]);
    forced.success();
    assert_ne!(forced.token(), first.token());
    assert_eq!(idp.issued(), 2);
    Ok(())
}

#[test]
fn keycloak_realm_basic_client_with_special_characters_in_the_secret() -> TestResult {
    let idp = keycloak();
    let home = Home::new();
    home.config(&format!(
        "[profiles.basic]\nkind = \"keycloak\"\nauth_server = \"{}\"\nrealm = \"api-keys\"\nauth = \"client_secret_basic\"\nclient_id = \"basic-client\"\nclient_secret = {{ file = \"{}\" }}\n",
        idp.base(),
        home.path().join("secret").display()
    ));
    std::fs::write(home.path().join("secret"), format!("{BASIC_SECRET}\n"))?;
    let out = home.run(["token", "basic", "--format", "json"]);
    out.success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(
        claims(v["access_token"].as_str().unwrap_or_default())["client_id"],
        "basic-client"
    );
    assert_eq!(v["profile"], "basic");
    let left = v["expires_in"].as_u64().unwrap_or(0);
    assert!((290..=300).contains(&left), "expires_in {left}");
    assert_eq!(idp.issued(), 1);
    Ok(())
}

#[test]
fn keycloak_realm_rejects_a_wrong_secret_with_exit_4_and_no_leak() -> TestResult {
    let idp = keycloak();
    let home = Home::new();
    home.config(&format!(
        "[profiles.bad]\nprovider = \"ion\"\nauth_server = \"{}\"\nclient_id = \"post-client\"\nclient_secret = \"wrong-secret-value\"\n",
        idp.base()
    ));
    let out = home.run(["token", "bad"]);
    out.code(4)
        .stderr_has("invalid_client")
        .stderr_has("HTTP 401")
        .stderr_has("profile `bad`");
    assert!(!out.stderr.contains("wrong-secret-value"));
    assert_eq!(home.cached_tokens(), 0, "nothing cached after a rejection");
    Ok(())
}

#[test]
fn keycloak_legacy_path_falls_back_once_and_says_which_line_to_add() -> TestResult {
    let idp = keycloak();
    let home = Home::new();
    home.config(&format!(
        "[profiles.old]\nprovider = \"ion\"\nauth_server = \"{}\"\nlegacy_path = true\nclient_id = \"post-client\"\nclient_secret = {:?}\n",
        idp.base(),
        POST_SECRET
    ));
    let out = home.run(["token", "old"]);
    out.success().stderr_has("legacy_path = false");
    assert_eq!(idp.issued(), 1);
    Ok(())
}

#[test]
fn oauth2_kind_discovers_the_token_endpoint_from_the_issuer() -> TestResult {
    let idp = keycloak();
    let home = Home::new();
    home.config(&format!(
        "[profiles.disc]\nkind = \"oauth2\"\nissuer = \"{}/realms/api-keys\"\nclient_id = \"post-client\"\nclient_secret = {:?}\n",
        idp.base(),
        POST_SECRET
    ));
    home.run(["token", "disc"]).success();
    assert_eq!(idp.issued(), 1);
    let entry = home.entry_text(&home.cache_entries()[0]);
    assert!(
        entry.contains("/realms/api-keys/protocol/openid-connect/token"),
        "the discovered endpoint is cached: {entry}"
    );
    Ok(())
}

const AUTH0_SECRET: &str = r#"chili"secret\with\json-escapes/é"#;

fn auth0() -> NodeServer {
    NodeServer::start(
        "mock-auth0.mjs",
        &[
            ("CLIENT_ID", "chili-client"),
            ("CLIENT_SECRET", AUTH0_SECRET),
            ("AUDIENCE", "https://chiligrafx.com"),
        ],
    )
}

#[test]
fn auth0_tenant_gets_a_json_body_with_audience_and_caches() -> TestResult {
    let idp = auth0();
    let home = Home::new();
    home.config(&format!(
        "[profiles.chili]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"chili-client\"\nclient_secret = {{ env = \"CHILI_SECRET\" }}\n",
        idp.base()
    ));
    let run = |args: &[&str]| {
        Run::from(
            home.cmd(args)
                .env("CHILI_SECRET", AUTH0_SECRET)
                .output()
                .unwrap(),
        )
    };
    let first = run(&["token", "chili", "--format", "header"]);
    first.success();
    let token = first
        .stdout
        .trim()
        .strip_prefix("Authorization: Bearer ")
        .unwrap_or_else(|| panic!("{}", first.stdout))
        .to_owned();
    assert_eq!(claims(&token)["aud"], "https://chiligrafx.com");
    assert_eq!(idp.issued(), 1);
    let second = run(&["token", "chili"]);
    assert_eq!(second.token(), token);
    assert_eq!(idp.issued(), 1);
    Ok(())
}

#[test]
fn auth0_tenant_rejection_is_exit_4() -> TestResult {
    let idp = auth0();
    let home = Home::new();
    home.config(&format!(
        "[profiles.chili]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"chili-client\"\nclient_secret = \"not-it\"\n",
        idp.base()
    ));
    home.run(["token", "chili", "--format", "json"])
        .code(4)
        .stderr_has(r#""error":"rejected""#)
        .stderr_has("access_denied");
    assert_eq!(idp.issued(), 0);
    Ok(())
}

#[test]
fn auth0_audience_override_from_the_command_line_is_sent() -> TestResult {
    let idp = auth0();
    let home = Home::new();
    home.config(&format!(
        "[profiles.chili]\nprovider = \"chili\"\naudience = \"https://wrong.example\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"chili-client\"\nclient_secret = {:?}\n",
        idp.base(),
        AUTH0_SECRET
    ));
    home.run(["token", "chili"]).code(4);
    home.run(["token", "chili", "--audience", "https://chiligrafx.com"])
        .success();
    assert_eq!(idp.issued(), 1);
    Ok(())
}
