//! Across processes: the per-key `.lock` file makes concurrent `broker token` processes on a cold cache
//! share one upstream call.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_processes_on_a_cold_cache_make_one_upstream_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "one-for-all", "token_type": "Bearer", "expires_in": 86400}))
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let home = Home::new();
    home.config(&format!(
        "[profiles.chili]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
        server.uri()
    ));
    let children: Vec<_> = (0..50)
        .map(|_| {
            home.cmd(["token", "chili"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .expect("spawn");
    for child in children {
        let out = Run::from(child.wait_with_output().expect("wait"));
        out.success();
        assert_eq!(out.token(), "one-for-all");
    }
    assert_eq!(home.cache_entries().len(), 1);
}
