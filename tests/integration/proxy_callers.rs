//! Who may call `broker proxy` and what it proxies: other uids refused unless they have the key, Python's `requests`
//! with nothing but a base URL, an api in clear to another host refused, and `[proxy]` served by the daemon.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::daemon::{metric, poll, Daemon};
use crate::proxy::*;
use crate::support::*;

#[test]
fn another_uid_is_refused_unless_it_has_the_key() {
    if rustix::process::geteuid().as_raw() != 0 {
        return; // playing another uid needs root, as CI runs
    }
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let proxy = Proxy::start(&home, &[]);
    let url = format!("http://127.0.0.1:{}/chili/echo", proxy.port);
    let as_nobody = |extra: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "curl",
                "-s",
            ])
            .args(extra)
            .args(["-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(as_nobody(&[]), "403");
    let key = std::fs::read_to_string(home.path().join("run/broker/proxy.key")).unwrap();
    assert_eq!(
        std::fs::metadata(home.path().join("run/broker/proxy.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        as_nobody(&["-H", &format!("Proxy-Authorization: Bearer {key}")]),
        "200"
    );
    assert_eq!(
        as_nobody(&["-H", "Proxy-Authorization: Bearer wrong"]),
        "403"
    );
    assert_eq!(idp.issued(), 1);
}

#[test]
fn pythons_requests_with_only_a_base_url_reaches_the_api_and_a_redirect_elsewhere_carries_no_token()
{
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let proxy = Proxy::start(&home, &["--profile", "ion-like"]);
    let script = r#"
import json, sys, requests
base = sys.argv[1]
r = requests.post(base + "/graphql", json={"query": "{ runs { id } }"})
r.raise_for_status()
echo = r.json()
away = requests.get(base + "/redirect-away")
print(json.dumps({"url": echo["url"], "auth": echo["headers"].get("authorization"), "body": echo["body"], "away": away.status_code}))
"#;
    let out = home
        .program("python3")
        .args(["-c", script, &format!("http://127.0.0.1:{}", proxy.port)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = body_json(&String::from_utf8_lossy(&out.stdout));
    let token = home
        .run(["token", "ion-like", "--no-daemon"])
        .success()
        .token();
    assert_eq!(got["url"], "/v2/graphql");
    assert_eq!(got["auth"], token.as_str());
    assert_eq!(got["body"], r#"{"query": "{ runs { id } }"}"#);
    assert_eq!(
        got["away"], 200,
        "requests followed the redirect to the other host"
    );
    let seen = seen_elsewhere(&api);
    assert_eq!(seen.as_array().map(Vec::len), Some(1), "{seen}");
    assert_eq!(
        seen[0]["authorization"],
        Value::Null,
        "the token went elsewhere: {seen}"
    );
}

#[test]
fn an_api_in_clear_to_another_host_is_not_proxied() {
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let config = std::fs::read_to_string(home.config_path()).unwrap();
    home.config(&format!(
        "{config}\n[profiles.clear]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {SECRET:?}\napi = \"http://api.example.com\"\n",
        idp.base()
    ));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = home
        .cmd([
            "proxy",
            "--profile",
            "clear",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in clear"));
    let proxy = Proxy::start(&home, &[]);
    assert_eq!(proxy.get("/clear/x", "").0, 404);
    assert_eq!(proxy.get("/chili/x", "").0, 200);
}

#[test]
fn the_daemon_serves_the_proxy_from_its_own_cache_and_keeps_proxied_profiles_fresh() {
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let port = free_port();
    let config = std::fs::read_to_string(home.config_path()).unwrap();
    home.config(&format!(
        "{config}\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nretry_body_limit = 4096\n"
    ));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start(&home);
    let token = body_json(&d.get("/v1/token/chili").2)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    poll("the daemon's proxy", || {
        raw(
            port,
            "GET /.broker/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .0 == 200
    });
    let (status, _, body) = raw(
        port,
        "GET /chili/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body_json(&body)["headers"]["authorization"],
        format!("Bearer {token}")
    );
    assert_eq!(idp.issued(), 1, "the proxy used the daemon's token");
    let m = d.metrics();
    assert_eq!(
        metric(
            &m,
            "broker_proxy_requests_total{profile=\"chili\",class=\"2xx\"}"
        ),
        1.0,
        "{m}"
    );
    // A profile only the proxy used is kept fresh by the daemon's refresher too.
    let (status, _, _) = raw(
        port,
        "GET /ion-like/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    poll("ion-like in the refresh schedule", || {
        d.get("/v1/profiles").2.contains("\"name\":\"ion-like\"") && {
            let profiles = body_json(&d.get("/v1/profiles").2);
            profiles["profiles"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "ion-like" && p["refresh"]["state"] != "idle")
        }
    });
}
