//! `ca_file`: a local TLS token endpoint whose CA the test generates (rcgen) is refused without it and
//! trusted with it; the same for an api behind `broker proxy`.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::support::*;

struct Pki {
    ca_pem: String,
    config: Arc<rustls::ServerConfig>,
    /// The server's certificate (for `localhost`) and key, PEM.
    leaf_pem: String,
    leaf_key_pem: String,
}

fn pki() -> Result<Pki, Box<dyn std::error::Error>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&leaf_key, &issuer)?;
    let leaf_pem = leaf.pem();
    let leaf_key_pem = leaf_key.serialize_pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        config: Arc::new(config),
        leaf_pem,
        leaf_key_pem,
    })
}

/// Serves every connection a fixed token response over TLS.
async fn serve(config: Arc<rustls::ServerConfig>) -> u16 {
    serve_with(config, |_| {
        r#"{"access_token":"over-tls","token_type":"Bearer","expires_in":300}"#.to_owned()
    })
    .await
}

/// Serves every connection, over TLS, the body `answer` makes of the request's head.
async fn serve_with(config: Arc<rustls::ServerConfig>, answer: fn(&str) -> String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let body = answer(&String::from_utf8_lossy(&buf[..n]));
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_file_adds_the_roots_a_private_token_endpoint_needs() -> TestResult {
    let pki = pki()?;
    let port = serve(pki.config.clone()).await;
    let home = Home::new();
    let ca = home.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem)?;
    let base = format!("[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"https://localhost:{port}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\nretry = \"0s\"\n");
    home.config(&base);
    let untrusted = tokio::task::spawn_blocking({
        let cmd = home.cmd(["token", "p"]);
        move || run_cmd(cmd)
    })
    .await?;
    untrusted.code(5);
    home.config(&format!("{base}ca_file = \"{}\"\n", ca.display()));
    // The failure is remembered as an outage for a moment; the user who fixed the config asks again at once.
    let trusted = tokio::task::spawn_blocking({
        let cmd = home.cmd(["token", "p", "--force-refresh"]);
        move || run_cmd(cmd)
    })
    .await?;
    assert_eq!(trusted.success().stdout, "over-tls\n");
    Ok(())
}

#[test]
fn a_ca_file_that_is_not_pem_is_a_config_error() {
    let home = Home::new();
    let ca = home.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"https://localhost:9/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\nca_file = \"{}\"\n",
        ca.display()
    ));
    home.run(["token", "p"]).code(3).stderr_has("ca_file");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_reaches_an_api_behind_a_private_ca_only_with_its_ca_file() -> TestResult {
    let pki = pki()?;
    // The api answers with the Authorization header it got, over TLS.
    let api = serve_with(pki.config.clone(), |head| {
        head.lines()
            .find_map(|l| l.strip_prefix("authorization: "))
            .unwrap_or("none")
            .to_owned()
    })
    .await;
    let idp = token_endpoint(
        wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "tok", "expires_in": 300})),
    )
    .await;
    let home = Home::new();
    let ca = home.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem)?;
    let profile = |name: &str, extra: &str| {
        format!(
            "[profiles.{name}]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n\
             api = \"https://localhost:{api}\"\n{extra}",
            idp.uri()
        )
    };
    home.config(
        &(profile("trusted", &format!("ca_file = \"{}\"\n", ca.display()))
            + &profile("untrusted", "")),
    );
    let port = free_port();
    let mut proxy = home
        .cmd(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let get = move |path: &'static str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-w",
                " %{http_code}",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut trusted = String::new();
    for _ in 0..1500 {
        trusted = tokio::task::spawn_blocking(move || get("/trusted/x")).await?;
        if !trusted.is_empty() && !trusted.ends_with(" 000") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let untrusted = tokio::task::spawn_blocking(move || get("/untrusted/x")).await?;
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(trusted, "Bearer tok 200");
    assert!(
        untrusted.ends_with(" 502") && untrusted.contains("did not answer"),
        "{untrusted}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_speaks_http2_to_an_api_that_offers_only_that() -> TestResult {
    let pki = pki()?;
    let home = Home::new();
    let (cert, key, ca) = (
        home.path().join("leaf.pem"),
        home.path().join("leaf.key"),
        home.path().join("ca.pem"),
    );
    std::fs::write(&cert, &pki.leaf_pem)?;
    std::fs::write(&key, &pki.leaf_key_pem)?;
    std::fs::write(&ca, &pki.ca_pem)?;
    let api = NodeServer::start(
        "h2-api.mjs",
        &[
            ("CERT", &cert.display().to_string()),
            ("KEY", &key.display().to_string()),
        ],
    );
    let idp = token_endpoint(
        wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "tok", "expires_in": 300})),
    )
    .await;
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n\
         api = \"https://localhost:{}/v1\"\nca_file = \"{}\"\n",
        idp.uri(),
        api.port,
        ca.display()
    ));
    let port = free_port();
    let mut proxy = home
        .cmd([
            "proxy",
            "--profile",
            "p",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let get = move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--http1.1",
                &format!("http://127.0.0.1:{port}/things?a=1"),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut body = String::new();
    for _ in 0..1500 {
        body = tokio::task::spawn_blocking(get).await?;
        if body.starts_with('{') {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
    let seen: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(seen["version"], "2.0");
    assert_eq!(seen["authority"], format!("localhost:{}", api.port));
    assert_eq!(seen["path"], "/v1/things?a=1");
    assert_eq!(seen["authorization"], "Bearer tok");
    Ok(())
}

fn run_cmd(mut cmd: std::process::Command) -> Run {
    Run::from(cmd.output().unwrap())
}
