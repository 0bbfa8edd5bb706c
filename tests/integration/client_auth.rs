//! Client authentication without a shared secret and token exchange (docs/reference.md §8), against oidc-provider:
//! signed assertions (RFC 7523), mutual TLS (RFC 8705), `auth = "none"`, the RFC 8693 grant, and keyring secrets.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};

use crate::support::*;

pub(crate) const JWT_SECRET: &str = "a client secret long enough for HS256 (32+ bytes)";
pub(crate) const POST_SECRET: &str = "post-client secret";
pub(crate) const SAN: &str = "client.broker.test";

/// A certificate and its key, PEM.
pub(crate) struct CertPem {
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// Certificate parameters for `name`, with it as the common name (rcgen's default subject is the same for every
/// certificate, which would make a leaf look self-signed: its subject equal to its issuer).
pub(crate) fn params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p
}

pub(crate) fn self_signed(name: &str) -> CertPem {
    let key = KeyPair::generate().unwrap();
    let cert = params(name).self_signed(&key).unwrap();
    CertPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// The keys and certificates of one test server: which clients exist and what they authenticate with.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) rsa: KeyPem,
    pub(crate) rsa_next: KeyPem,
    pub(crate) p256: KeyPem,
    pub(crate) p384: KeyPem,
    pub(crate) ed25519: KeyPem,
    pub(crate) ca: CertPem,
    pub(crate) client: CertPem,
    pub(crate) rogue: CertPem,
    pub(crate) self_signed: CertPem,
    pub(crate) other_self_signed: CertPem,
    pub(crate) cluster: KeyPem,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = params("broker test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = CertPem {
            cert: ca_cert.pem(),
            key: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);
        let signed = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = params(name).signed_by(&key, &issuer).unwrap();
            CertPem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        };
        let server = signed("127.0.0.1");
        let client = signed(SAN);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.crt"), &server.cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.cert).unwrap();
        Fixture {
            dir,
            rsa: keygen("rsa", "pkcs1"),
            rsa_next: keygen("rsa", "pkcs8"),
            p256: keygen("p256", "sec1"),
            p384: keygen("p384", "pkcs8"),
            ed25519: keygen("ed25519", "pkcs8"),
            ca,
            client,
            rogue: self_signed(SAN),
            self_signed: self_signed("self.broker.test"),
            other_self_signed: self_signed("self.broker.test"),
            cluster: keygen("p256", "pkcs8"),
        }
    }

    /// Starts oidc-provider with every client of these tests.
    pub(crate) fn start(&self) -> NodeServer {
        let key = |k: &KeyPem, kid: &str| json!({ "pem": k.public, "kid": kid });
        let conf = json!({
            "clients": [
                { "client_id": "jwt-secret-client", "method": "client_secret_jwt", "secret": JWT_SECRET },
                { "client_id": "rsa-client", "method": "private_key_jwt",
                  "keys": [key(&self.rsa, "rsa-1"), key(&self.rsa_next, "rsa-2")] },
                { "client_id": "p256-client", "method": "private_key_jwt", "keys": [key(&self.p256, "")] },
                { "client_id": "p384-client", "method": "private_key_jwt", "keys": [key(&self.p384, "")] },
                { "client_id": "ed25519-client", "method": "private_key_jwt", "keys": [key(&self.ed25519, "")] },
                { "client_id": "tls-client", "method": "tls_client_auth", "san_dns": SAN },
                { "client_id": "self-signed-client", "method": "self_signed_tls_client_auth",
                  "cert": self.self_signed.cert },
                { "client_id": "exchanger", "method": "none",
                  "grants": ["urn:ietf:params:oauth:grant-type:token-exchange"] },
                { "client_id": "post-client", "method": "client_secret_post", "secret": POST_SECRET },
            ],
            "tls": {
                "cert": self.dir.path().join("server.crt"),
                "key": self.dir.path().join("server.key"),
                "ca": self.dir.path().join("ca.crt"),
            },
            "subject_keys": [self.cluster.public],
        });
        let path = self.dir.path().join("server.json");
        std::fs::write(&path, conf.to_string()).unwrap();
        NodeServer::start_with(
            "oidc-clients.mjs",
            &[path.to_str().unwrap_or_default()],
            &[],
        )
    }
}

/// Writes `text` as a 0600 file in `home` and returns its path.
pub(crate) fn secret_file(home: &Home, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = home.path().join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

pub(crate) fn issuer(idp: &NodeServer) -> String {
    format!("{}/realms/api-keys", idp.base())
}

pub(crate) fn token_url(idp: &NodeServer) -> String {
    format!("{}/protocol/openid-connect/token", issuer(idp))
}

pub(crate) fn claims(token: &str) -> serde_json::Map<String, Value> {
    broker_core::token::jwt_claims(token).unwrap_or_else(|| panic!("not a JWT: {token}"))
}

/// A profile of kind oauth2 at the server's token endpoint, with `extra` lines.
pub(crate) fn profile(name: &str, idp: &NodeServer, extra: &str) -> String {
    format!(
        "[profiles.{name}]\nkind = \"oauth2\"\ntoken_url = \"{}\"\n{extra}\n",
        token_url(idp)
    )
}

pub(crate) fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn client_secret_jwt_signs_with_the_secret_and_a_wrong_secret_is_rejected() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    home.config(&format!(
        "{}{}",
        profile(
            "good",
            &idp,
            &format!("auth = \"client_secret_jwt\"\nclient_id = \"jwt-secret-client\"\nclient_secret = \"{JWT_SECRET}\"")
        ),
        profile(
            "bad",
            &idp,
            "auth = \"client_secret_jwt\"\nclient_id = \"jwt-secret-client\"\nclient_secret = \"not the secret at all, but long enough\""
        )
    ));
    let good = home.run(["token", "good"]);
    good.success();
    assert_eq!(claims(&good.token())["client_id"], "jwt-secret-client");
    let bad = home.run(["token", "bad"]);
    bad.code(4).stderr_has("client_secret_jwt");
    assert!(
        !bad.stderr.contains("not the secret at all"),
        "{}",
        bad.stderr
    );
    assert_eq!(idp.issued(), 1);
    Ok(())
}

#[test]
fn private_key_jwt_signs_with_every_key_type_and_encoding() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    let cases = [
        ("rsa-pkcs1", "rsa-client", &fx.rsa, "key_id = \"rsa-1\""),
        (
            "rsa-pkcs8-ps256",
            "rsa-client",
            &fx.rsa_next,
            "key_id = \"rsa-2\"\nsigning_alg = \"PS256\"",
        ),
        ("p256-sec1", "p256-client", &fx.p256, ""),
        ("p384-pkcs8", "p384-client", &fx.p384, ""),
        ("ed25519", "ed25519-client", &fx.ed25519, ""),
    ];
    let mut config = String::new();
    for (name, client, key, extra) in &cases {
        let file = secret_file(&home, &format!("{name}.pem"), &key.private);
        config.push_str(&profile(
            name,
            &idp,
            &format!(
                "auth = \"private_key_jwt\"\nclient_id = \"{client}\"\nprivate_key = {{ file = \"{}\" }}\n{extra}",
                path(&file)
            ),
        ));
    }
    home.config(&config);
    for (name, client, _, _) in &cases {
        let run = home.run(["token", name]);
        run.success();
        assert_eq!(claims(&run.token())["client_id"], *client, "{name}");
    }
    assert_eq!(idp.issued(), cases.len() as u64);
    let check = home.run(["check"]);
    check.success().stdout_has("private_key signs PS256");
    check.stdout_has("private_key signs ES384");
    check.stdout_has("private_key signs EdDSA");
    assert!(
        !check.stdout.contains("PRIVATE KEY-----\n"),
        "check shows sources, never material"
    );
    Ok(())
}

#[test]
fn private_key_jwt_with_an_unregistered_key_is_rejected_with_exit_4() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    let file = secret_file(&home, "wrong.pem", &fx.p384.private);
    home.config(&profile(
        "p",
        &idp,
        &format!(
            "auth = \"private_key_jwt\"\nclient_id = \"p256-client\"\nprivate_key = {{ file = \"{}\" }}\nsigning_alg = \"ES384\"",
            path(&file)
        ),
    ));
    home.run(["token", "p"])
        .code(4)
        .stderr_has(&format!("private_key from file {}", path(&file)));
    assert_eq!(idp.issued(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_refuses_a_replayed_assertion_and_the_broker_never_sends_one_twice() -> TestResult
{
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    let key = secret_file(&home, "key.pem", &fx.p256.private);
    // A capturing endpoint in front: the assertion names the issuer as its audience, so the real server accepts it.
    let capture = token_endpoint(wiremock::ResponseTemplate::new(200).set_body_json(
        json!({ "access_token": "captured", "token_type": "Bearer", "expires_in": 300 }),
    ))
    .await;
    let key_lines = format!(
        "auth = \"private_key_jwt\"\nclient_id = \"p256-client\"\nprivate_key = {{ file = \"{}\" }}",
        path(&key)
    );
    home.config(&format!(
        "[profiles.capture]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nissuer = \"{}\"\nassertion_audience = \"issuer\"\n{key_lines}\n\n{}",
        capture.uri(),
        issuer(&idp),
        profile("direct", &idp, &key_lines)
    ));
    let h = home.cmd(["token", "capture"]).output()?;
    assert!(h.status.success(), "{}", String::from_utf8_lossy(&h.stderr));
    let sent = capture.received_requests().await.unwrap_or_default();
    let body = String::from_utf8_lossy(&sent[0].body).into_owned();
    assert!(body.contains(
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    ));

    // Replaying that exact request body: accepted once, refused the second time.
    let client = reqwest::Client::new();
    let post = || {
        client
            .post(token_url(&idp))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
    };
    assert_eq!(post().await?.status(), 200);
    let replay = post().await?;
    assert_eq!(replay.status(), 401);
    assert!(replay.text().await?.contains("invalid_client"));

    // The broker signs a new assertion (a new jti) for each request: two uncached fetches in the same second pass.
    for _ in 0..2 {
        let run = Run::from(home.cmd(["token", "direct", "--no-cache"]).output()?);
        run.success();
    }
    Ok(())
}

#[test]
fn a_new_key_file_is_a_new_cache_entry_and_a_warm_hit_asks_nothing() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    let key = secret_file(&home, "key.pem", &fx.rsa.private);
    // No key_id: the server tries each of the client's registered keys, so only the file changes below.
    home.config(&profile(
        "p",
        &idp,
        &format!(
            "auth = \"private_key_jwt\"\nclient_id = \"rsa-client\"\nprivate_key = {{ file = \"{}\" }}",
            path(&key)
        ),
    ));
    let first = home.run(["token", "p"]);
    first.success();
    assert_eq!(home.run(["token", "p"]).success().token(), first.token());
    assert_eq!(idp.issued(), 1, "the warm hit asked nothing");
    std::fs::write(&key, &fx.rsa_next.private)?;
    let rotated = home.run(["token", "p"]);
    rotated.success();
    assert_ne!(rotated.token(), first.token());
    assert_eq!(idp.issued(), 2, "the new key is a new cache entry");
    assert_eq!(home.cached_tokens(), 2);
    Ok(())
}

/// A profile per certificate at `endpoint` (an `issuer` or `token_url` line), with `auth` lines, its certificate and
/// key in 0600 files, trusting the test CA.
pub(crate) fn mtls_profiles(
    home: &Home,
    fx: &Fixture,
    endpoint: &str,
    auth: &str,
    certs: [(&str, &CertPem); 2],
) -> String {
    let ca = secret_file(home, "ca.crt", &fx.ca.cert);
    let mut config = String::new();
    for (name, cert) in certs {
        let c = secret_file(home, &format!("{name}.crt"), &cert.cert);
        let k = secret_file(home, &format!("{name}.key"), &cert.key);
        config.push_str(&format!(
            "[profiles.{name}]\nkind = \"oauth2\"\n{endpoint}\n{auth}\nclient_cert = {{ file = \"{}\" }}\nclient_key = {{ file = \"{}\" }}\nca_file = \"{}\"\n\n",
            path(&c),
            path(&k),
            path(&ca)
        ));
    }
    config
}

#[test]
fn tls_client_auth_uses_the_mtls_alias_and_binds_the_token_to_the_certificate() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    // Discovery from the plain-http issuer: only the mutual-TLS alias can take a client certificate.
    home.config(&mtls_profiles(
        &home,
        &fx,
        &format!("issuer = \"{}\"", issuer(&idp)),
        "auth = \"tls_client_auth\"\nclient_id = \"tls-client\"",
        [("good", &fx.client), ("rogue", &fx.rogue)],
    ));
    let good = home.run(["token", "good"]);
    good.success();
    let bound = claims(&good.token());
    let thumbprint = bound["cnf"]["x5t#S256"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !thumbprint.is_empty(),
        "a certificate-bound token: {bound:?}"
    );
    home.run(["inspect", "good"]).success().stdout_has(&format!(
        "x5t#S256 {thumbprint}: the configured client_cert (matches)"
    ));
    home.run(["check"])
        .success()
        .stdout_has(&format!("x5t#S256 {thumbprint}"));
    // A certificate from no CA the server trusts: the server refuses the client.
    home.run(["token", "rogue"])
        .code(4)
        .stderr_has("client_cert from file");
    assert_eq!(idp.issued(), 1);
    Ok(())
}

#[test]
fn self_signed_tls_client_auth_takes_the_registered_certificate_only() -> TestResult {
    let fx = Fixture::new();
    let idp = fx.start();
    let home = Home::new();
    home.config(&mtls_profiles(
        &home,
        &fx,
        &format!(
            "token_url = \"https://127.0.0.1:{}/realms/api-keys/protocol/openid-connect/token\"",
            idp.ports[1]
        ),
        "auth = \"self_signed_tls_client_auth\"\nclient_id = \"self-signed-client\"",
        [("good", &fx.self_signed), ("other", &fx.other_self_signed)],
    ));
    let good = home.run(["token", "good"]);
    good.success();
    assert_eq!(claims(&good.token())["client_id"], "self-signed-client");
    home.run(["token", "other"]).code(4);
    assert_eq!(idp.issued(), 1);
    Ok(())
}
