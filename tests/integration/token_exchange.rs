//! Token exchange (RFC 8693) against oidc-provider's grant handler: a projected service-account token file, another
//! profile's token fetched first, and cycles or unknown subject profiles refused at load.

use serde_json::json;

use crate::client_auth::*;
use crate::support::*;

/// A Kubernetes-like service-account token signed by the "cluster" key the server trusts.
fn cluster_token(fx: &Fixture, sub: &str) -> String {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, PrivatePkcs8KeyDer};
    let der = PrivatePkcs8KeyDer::from_pem_slice(fx.cluster.private.as_bytes()).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_der(der.secret_pkcs8_der());
    let now = now_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("subject-0".into()); // the key's id in the server's list of trusted subject keys
    jsonwebtoken::encode(
        &header,
        &json!({ "iss": "https://kubernetes.default.svc", "sub": sub, "aud": "sts", "iat": now, "exp": now + 600 }),
        &key,
    )
    .unwrap()
}

#[test]
fn token_exchange_of_a_projected_service_account_token_file() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    let sa = secret_file(
        &home,
        "sa-token",
        &cluster_token(&fx, "system:serviceaccount:ci:runner"),
    );
    home.config(&profile(
        "api",
        &idp,
        &format!(
            "grant = \"token_exchange\"\nauth = \"none\"\nclient_id = \"exchanger\"\nsubject_token = {{ file = \"{}\" }}\nsubject_token_type = \"urn:ietf:params:oauth:token-type:jwt\"",
            path(&sa)
        ),
    ));
    let first = home.run(["token", "api"]);
    first.success();
    let c = claims(&first.token());
    assert_eq!(c["sub"], "system:serviceaccount:ci:runner");
    assert_eq!(c["act"]["sub"], "exchanger");
    assert_eq!(
        c["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    home.run(["token", "api"]).success();
    assert_eq!(idp.issued(), 1, "served from the cache");
    // The kubelet rotates the file: a new subject is a new cache entry, exchanged at once.
    std::fs::write(&sa, cluster_token(&fx, "system:serviceaccount:ci:other"))?;
    let rotated = home.run(["token", "api"]);
    rotated.success();
    assert_eq!(
        claims(&rotated.token())["sub"],
        "system:serviceaccount:ci:other"
    );
    assert_eq!(idp.issued(), 2);
    // A subject the server does not trust: the grant is refused (exit 4, invalid_grant), naming the source.
    std::fs::write(&sa, crate::support::jwt(&json!({ "sub": "forged" })))?;
    home.run(["token", "api"])
        .code(4)
        .stderr_has("subject_token from file");
    Ok(())
}

#[test]
fn token_exchange_of_another_profiles_token_fetches_that_one_first() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    home.config(&format!(
        "{}{}",
        profile(
            "base",
            &idp,
            &format!("client_id = \"post-client\"\nclient_secret = \"{POST_SECRET}\"")
        ),
        profile(
            "exchanged",
            &idp,
            "grant = \"token_exchange\"\nauth = \"none\"\nclient_id = \"exchanger\"\nsubject_token = { profile = \"base\" }"
        )
    ));
    let run = home.run(["token", "exchanged"]);
    run.success();
    let c = claims(&run.token());
    assert_eq!(c["sub"], "post-client", "the subject is base's token");
    assert_eq!(
        c["subject_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(idp.issued(), 2, "base's token, then the exchange");
    assert_eq!(home.cached_tokens(), 2);
    home.run(["token", "base"]).success();
    home.run(["token", "exchanged"]).success();
    assert_eq!(idp.issued(), 2, "both served from the cache");
    home.run(["check"])
        .success()
        .stdout_has("subject_token        profile base");
    Ok(())
}

#[test]
fn a_token_exchange_cycle_and_an_unknown_subject_profile_are_config_errors() -> TestResult {
    let home = Home::new();
    let exchange = |name: &str, subject: &str| {
        format!("[profiles.{name}]\nkind = \"oauth2\"\ntoken_url = \"https://sts.example/token\"\ngrant = \"token_exchange\"\nauth = \"none\"\nclient_id = \"x\"\nsubject_token = {{ profile = \"{subject}\" }}\n\n")
    };
    home.config(&format!(
        "{}{}{}",
        exchange("a", "b"),
        exchange("b", "c"),
        exchange("c", "a")
    ));
    let run = home.run(["token", "a"]);
    run.code(3)
        .stderr_has("token exchange cycle: a -> b -> c -> a");
    run.stderr_has("config.toml:23:");
    home.config(&exchange("a", "bee"));
    home.run(["list"])
        .code(3)
        .stderr_has("exchanges the token of profile `bee`, which does not exist");
    Ok(())
}
