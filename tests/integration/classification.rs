//! Contract §4: how each answer of a token endpoint is classified, against wiremock, through the binary.
//! One `check` per row: the answer, the exit code and error class, and whether anything was cached.

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

struct Case {
    name: &'static str,
    answer: ResponseTemplate,
    code: i32,
    class: Option<&'static str>,
    stderr: &'static str,
}

fn case(
    name: &'static str,
    answer: ResponseTemplate,
    code: i32,
    class: Option<&'static str>,
    stderr: &'static str,
) -> Case {
    Case {
        name,
        answer,
        code,
        class,
        stderr,
    }
}

fn oauth_error(status: u16, error: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"error": error, "error_description": "described"}))
}

fn token_body(v: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(v)
}

/// Runs one row against `server` (reset first, so every row starts from no mocks and no recorded requests).
async fn check(server: &MockServer, c: Case) {
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(c.answer)
        .mount(server)
        .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"{}/token\"\nclient_id = \"id\"\nclient_secret = \"sekrit-value\"\nretry = \"0s\"\n",
        server.uri()
    ));
    let out = home.run(["token", "p", "--format", "json"]);
    assert_eq!(
        out.code, c.code,
        "{}: exit code\nstderr: {}",
        c.name, out.stderr
    );
    if let Some(class) = c.class {
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("{}: no JSON error: {}", c.name, out.stderr));
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(v["error"], class, "{}: {}", c.name, out.stderr);
        assert_eq!(
            home.cached_tokens(),
            0,
            "{}: a failure must not be cached",
            c.name
        );
    } else {
        assert_eq!(
            home.cache_entries().len(),
            1,
            "{}: a success is cached",
            c.name
        );
    }
    assert!(
        out.stderr.contains(c.stderr),
        "{}: stderr lacks {:?}: {}",
        c.name,
        c.stderr,
        out.stderr
    );
    assert!(
        !out.stderr.contains("sekrit-value"),
        "{}: secret leaked",
        c.name
    );
    let calls = server.received_requests().await.map_or(0, |r| r.len());
    assert_eq!(calls, 1, "{}: exactly one request, nothing retried", c.name);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_of_the_classification_table() {
    let skewed = jwt(&json!({"exp": now_secs() - 3600}));
    let cases = vec![
        case(
            "401",
            oauth_error(401, "unauthorized_client"),
            4,
            Some("rejected"),
            "unauthorized_client",
        ),
        case(
            "403",
            oauth_error(403, "access_denied"),
            4,
            Some("rejected"),
            "HTTP 403",
        ),
        case(
            "400 invalid_client",
            oauth_error(400, "invalid_client"),
            4,
            Some("rejected"),
            "invalid_client",
        ),
        case(
            "401 empty, WWW-Authenticate",
            ResponseTemplate::new(401).insert_header("www-authenticate", "Basic realm=\"x\""),
            4,
            Some("rejected"),
            "HTTP 401",
        ),
        case(
            "404",
            ResponseTemplate::new(404),
            3,
            Some("config"),
            "HTTP 404",
        ),
        case(
            "415",
            ResponseTemplate::new(415)
                .set_body_string(r#"{"error":"RESTEASY003065: Cannot consume content type"}"#),
            3,
            Some("config"),
            "HTTP 415",
        ),
        case(
            "400 invalid_scope",
            oauth_error(400, "invalid_scope"),
            3,
            Some("config"),
            "invalid_scope",
        ),
        case(
            "400 unsupported_grant_type",
            oauth_error(400, "unsupported_grant_type"),
            3,
            Some("config"),
            "unsupported_grant_type",
        ),
        case(
            "408",
            ResponseTemplate::new(408),
            5,
            Some("unavailable"),
            "HTTP 408",
        ),
        case(
            "429",
            ResponseTemplate::new(429).insert_header("retry-after", "120"),
            5,
            Some("unavailable"),
            "retry after",
        ),
        case(
            "500",
            ResponseTemplate::new(500),
            5,
            Some("unavailable"),
            "HTTP 500",
        ),
        case(
            "503 with an OAuth body",
            oauth_error(503, "temporarily_unavailable"),
            5,
            Some("unavailable"),
            "HTTP 503",
        ),
        case(
            "302",
            ResponseTemplate::new(302).insert_header("location", "https://elsewhere.example/token"),
            6,
            Some("bad_response"),
            "not followed",
        ),
        case(
            "307",
            ResponseTemplate::new(307).insert_header("location", "https://elsewhere.example/token"),
            6,
            Some("bad_response"),
            "not followed",
        ),
        case(
            "HTML 200",
            ResponseTemplate::new(200).set_body_raw("<html><body>Login</body></html>", "text/html"),
            6,
            Some("bad_response"),
            "HTML",
        ),
        case(
            "empty 200",
            ResponseTemplate::new(200),
            6,
            Some("bad_response"),
            "empty",
        ),
        case(
            "JSON array",
            ResponseTemplate::new(200).set_body_json(json!([1])),
            6,
            Some("bad_response"),
            "not an object",
        ),
        case(
            "missing access_token",
            token_body(json!({"token_type": "Bearer"})),
            6,
            Some("bad_response"),
            "missing",
        ),
        case(
            "empty access_token",
            token_body(json!({"access_token": ""})),
            6,
            Some("bad_response"),
            "empty",
        ),
        case(
            "numeric access_token",
            token_body(json!({"access_token": 5})),
            6,
            Some("bad_response"),
            "not a string",
        ),
        case(
            "expires_in \"abc\"",
            token_body(json!({"access_token": "t", "expires_in": "abc"})),
            6,
            Some("bad_response"),
            "expires_in",
        ),
        case(
            "expires_in 0",
            token_body(json!({"access_token": "t", "expires_in": 0})),
            6,
            Some("bad_response"),
            "expires_in",
        ),
        case(
            "token_type mac",
            token_body(json!({"access_token": "t", "token_type": "mac"})),
            6,
            Some("bad_response"),
            "mac",
        ),
        case(
            "200 with an OAuth error",
            token_body(json!({"error": "invalid_request"})),
            6,
            Some("bad_response"),
            "invalid_request",
        ),
        case(
            "expires_in \"300\"",
            token_body(json!({"access_token": "t", "expires_in": "300"})),
            0,
            None,
            "",
        ),
        case(
            "expires_in 299.5",
            token_body(json!({"access_token": "t", "expires_in": 299.5})),
            0,
            None,
            "",
        ),
        case(
            "no token_type",
            token_body(json!({"access_token": "t", "expires_in": 300})),
            0,
            None,
            "",
        ),
        case(
            "text/plain JSON",
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"access_token":"t","expires_in":300}"#, "text/plain"),
            0,
            None,
            "",
        ),
        case(
            "no expiry at all",
            token_body(json!({"access_token": "opaque"})),
            0,
            None,
            "default_ttl",
        ),
        case(
            "clock-skewed exp",
            token_body(json!({"access_token": skewed, "expires_in": 300})),
            0,
            None,
            "clock",
        ),
    ];
    let server = MockServer::start().await;
    for c in cases {
        check(&server, c).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_one_mebibyte_is_a_bad_response() {
    let big = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(1 << 21));
    let server = MockServer::start().await;
    check(
        &server,
        case(
            "2 MiB",
            ResponseTemplate::new(200).set_body_raw(big, "application/json"),
            6,
            Some("bad_response"),
            "over",
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keycloak_404_tries_the_other_layout_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/realms/r/protocol/openid-connect/token"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth/realms/r/protocol/openid-connect/token"))
        .respond_with(token_body(
            json!({"access_token": "legacy-token", "expires_in": 300}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.k]\nkind = \"keycloak\"\nauth_server = \"{}\"\nrealm = \"r\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
        server.uri()
    ));
    let out = home.run(["token", "k"]);
    out.success().stderr_has("legacy_path = true");
    assert_eq!(out.token(), "legacy-token");
    home.run(["token", "k"]).success();
}

#[tokio::test(flavor = "multi_thread")]
async fn keycloak_404_on_both_layouts_is_a_config_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .expect(2)
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.k]\nkind = \"keycloak\"\nauth_server = \"{}\"\nrealm = \"r\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
        server.uri()
    ));
    home.run(["token", "k"])
        .code(3)
        .stderr_has("HTTP 404")
        .stderr_has("realm");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_cannot_be_reached_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().map(|a| a.port()).unwrap_or(1)
    };
    let home = Home::new();
    home.config(&format!(
        "[profiles.p]\nkind = \"oauth2\"\ntoken_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\nretry = \"0s\"\n"
    ));
    home.run(["token", "p"])
        .code(5)
        .stderr_has("could not connect");
}
