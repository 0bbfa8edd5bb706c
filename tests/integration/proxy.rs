//! `broker proxy` in front of a real API (tests/servers/echo-api.mjs) with tokens from a real Auth0-style issuer
//! (oauth2-mock-server): the header of each profile, the client's own header replaced, absolute-form targets and
//! redirects that never take the token elsewhere, one new token for a 401, 100 MiB each way in bounded memory, a
//! slowloris cut off. Who may call it, and the proxy inside the daemon: `proxy_callers.rs`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::daemon::{metric, poll};
use crate::support::*;

pub(crate) const SECRET: &str = "proxy-secret";

pub(crate) struct Proxy {
    child: Child,
    pub(crate) port: u16,
}

impl Proxy {
    /// `broker proxy --listen 127.0.0.1:<free port>` with `args`, waited for until it answers.
    pub(crate) fn start(home: &Home, args: &[&str]) -> Proxy {
        let port = free_port();
        let log = std::fs::File::create(home.path().join("proxy.log")).unwrap();
        let child = home
            .cmd(["proxy", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("BROKER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Proxy { child, port };
        poll("the proxy", || {
            raw(
                p.port,
                "GET /.broker/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .0 == 200
        });
        p
    }

    pub(crate) fn get(&self, path: &str, extra: &str) -> (u16, String, String) {
        raw(
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"),
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request written as is to 127.0.0.1:`port`: status, head, body.
pub(crate) fn raw(port: u16, request: &str) -> (u16, String, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.write_all(request.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (status, head, body) = split_response(&text);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

/// A raw HTTP/1.1 answer's status, head and body.
pub(crate) fn split_response(text: &str) -> (u16, &str, &str) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

/// A chunked body's data.
pub(crate) fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub(crate) fn issuer() -> NodeServer {
    auth0_issuer(SECRET, "300")
}

/// The API on `ports[0]`, the host that must see no token on `ports[1]`.
pub(crate) fn echo_api() -> NodeServer {
    NodeServer::start("echo-api.mjs", &[])
}

/// Two profiles on one issuer and one api: `chili` (Bearer) and `ion-like` (ION's raw `Authorization: <token>`).
pub(crate) fn home_with(issuer: &NodeServer, api: &NodeServer) -> Home {
    let home = Home::new();
    let base = issuer.base();
    let api = format!("http://127.0.0.1:{}", api.ports[0]);
    home.config(&format!(
        "[profiles.chili]\nprovider = \"chili\"\ntoken_url = \"{base}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {SECRET:?}\napi = \"{api}\"\n\n\
         [profiles.ion-like]\nprovider = \"chili\"\ntoken_url = \"{base}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {SECRET:?}\napi = \"{api}/v2\"\nheader = \"Authorization: {{token}}\"\n"
    ));
    std::fs::set_permissions(home.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    home
}

pub(crate) fn body_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

pub(crate) fn seen_elsewhere(api: &NodeServer) -> Value {
    body_json(&http_get(api.ports[1], "/__seen"))
}

#[test]
fn each_profile_gets_its_header_and_the_clients_own_is_replaced_not_forwarded() {
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let proxy = Proxy::start(&home, &[]);
    let token = home
        .run(["token", "chili", "--no-daemon"])
        .success()
        .token();

    let (status, _, body) = proxy.get(
        "/chili/things?page=2",
        "Authorization: Bearer the-clients-own\r\nX-Hop: 1\r\nConnection: x-hop\r\nX-Request-Id: 7\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let echo = body_json(&body);
    assert_eq!(echo["url"], "/things?page=2");
    let h = &echo["headers"];
    assert_eq!(h["authorization"], format!("Bearer {token}"));
    assert_eq!(h["x-request-id"], "7");
    assert!(
        h.get("x-hop").is_none(),
        "a header Connection names is hop-by-hop: {h}"
    );
    assert_eq!(h["host"], format!("127.0.0.1:{}", api.ports[0]));

    // ION's header is the raw token, and the api's own path comes first.
    let (status, _, body) = proxy.get("/ion-like/graphql", "");
    assert_eq!(status, 200, "{body}");
    let echo = body_json(&body);
    assert_eq!(echo["url"], "/v2/graphql");
    assert_eq!(echo["headers"]["authorization"], token.as_str());

    // A profile the proxy does not serve, and a path that would leave the api, are the proxy's own answers.
    assert_eq!(proxy.get("/nope/x", "").0, 404);
    assert_eq!(idp.issued(), 1, "the proxy used the cached token");
    let log = std::fs::read_to_string(home.path().join("proxy.log")).unwrap();
    assert!(log.contains("GET /chili/things -> 200"), "{log}");
    assert!(!log.contains(&token) && !log.contains("page=2"), "{log}");
}

#[test]
fn absolute_form_targets_hosts_and_redirects_never_take_the_token_elsewhere() {
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let proxy = Proxy::start(&home, &[]);
    let other = format!("127.0.0.1:{}", api.ports[1]);

    // An absolute-form target and a Host naming the other host: forwarded to the api, nowhere else.
    let (status, _, body) = raw(
        proxy.port,
        &format!(
            "GET http://{other}/chili/echo HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body_json(&body)["url"], "/echo");

    // A redirect to another origin is handed back as it is, not followed.
    let (status, head, _) = proxy.get("/chili/redirect-away", "");
    assert_eq!(status, 302);
    assert!(
        head.contains(&format!("location: http://{other}/stolen")),
        "{head}"
    );
    // A redirect into the api comes back through the proxy.
    let (status, head, _) = proxy.get("/chili/redirect-here", "");
    assert_eq!(status, 302);
    assert!(head.contains("location: /chili/echo?moved=1"), "{head}");
    assert_eq!(seen_elsewhere(&api), serde_json::json!([]));
}

#[test]
fn a_401_about_the_token_costs_one_new_token_however_many_requests_saw_it() {
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let proxy = Proxy::start(&home, &[]);
    let (status, _, body) = proxy.get("/chili/echo", "");
    assert_eq!(status, 200, "{body}");
    let first = body_json(&body)["headers"]["authorization"]
        .as_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    assert_eq!(idp.issued(), 1);
    let (s, _, _) = raw(
        api.ports[0],
        &format!(
            "POST /__revoke HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
            first.len()
        ),
    );
    assert_eq!(s, 200);

    // Twenty requests with bodies at once: every one is sent again with the one new token.
    let answers: Vec<(u16, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let port = proxy.port;
                s.spawn(move || {
                    let body = format!("{{\"n\":{i}}}");
                    raw(
                        port,
                        &format!(
                            "POST /chili/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, _, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        let echo = body_json(body);
        assert_ne!(echo["headers"]["authorization"], format!("Bearer {first}"));
        assert_eq!(echo["body"], format!("{{\"n\":{i}}}"), "the replayed body");
    }
    assert_eq!(
        idp.issued(),
        2,
        "one new token however many requests saw the 401"
    );
    // Those that took the revoked token were sent again (the others found the new one already cached).
    let m = proxy.get("/.broker/metrics", "").2;
    let retries = metric(&m, "broker_proxy_retries_total{profile=\"chili\"}");
    assert!((1.0..=20.0).contains(&retries), "{m}");
    assert_eq!(
        metric(
            &m,
            "broker_upstream_requests_total{profile=\"chili\",status=\"ok\"}"
        ),
        2.0,
        "{m}"
    );

    // A body over --retry-body-limit streams, and its 401 is passed back rather than replayed.
    let (idp2, api2) = (issuer(), echo_api());
    let home2 = home_with(&idp2, &api2);
    let small = Proxy::start(&home2, &["--retry-body-limit", "10"]);
    let token = home2
        .run(["token", "chili", "--no-daemon"])
        .success()
        .token();
    raw(
        api2.ports[0],
        &format!(
            "POST /__revoke HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{token}",
            token.len()
        ),
    );
    let long = "x".repeat(100);
    let (status, head, _) = raw(
        small.port,
        &format!("POST /chili/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{long}"),
    );
    assert_eq!(status, 401, "{head}");
    assert_eq!(idp2.issued(), 1);
}

/// Peak resident memory of a process, in KiB.
pub(crate) fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_hundred_mebibytes_stream_each_way_in_bounded_memory() {
    const SIZE: usize = 100 << 20;
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let proxy = Proxy::start(&home, &[]);

    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /chili/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'y'; 1 << 16];
    for _ in 0..SIZE / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = dechunk(out.split_once("\r\n\r\n").unwrap().1);
    let echo = body_json(&body);
    assert_eq!(echo["bytes"], SIZE);
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for _ in 0..SIZE / chunk.len() {
        sha2::Digest::update(&mut h, &chunk);
    }
    assert_eq!(echo["sha256"], hex::encode(sha2::Digest::finalize(h)));

    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET /chili/download?bytes={SIZE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got > SIZE, "head and {SIZE} bytes, got {got}");
    let peak = peak_kib(proxy.pid());
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB: bodies were buffered"
    );
}

#[test]
fn a_slowloris_client_is_cut_off_and_others_are_served() {
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let proxy = Proxy::start(&home, &["--header-timeout", "1s"]);
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /chili/echo HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(proxy.get("/chili/echo", "").0, 200);
    // Trickled bytes do not extend the deadline; the proxy closes the connection (EOF), it does not answer.
    let mut buf = [0u8; 64];
    let mut closed = false;
    for _ in 0..40 {
        let _ = slow.write_all(b"X-A: b\r\n");
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the slow client was not cut off");
}

#[test]
fn at_trace_level_no_log_line_holds_the_token_the_secret_or_a_query() {
    let (idp, api) = (issuer(), echo_api());
    let home = home_with(&idp, &api);
    let log = home.path().join("proxy.log");
    let port = free_port();
    let child = home
        .cmd(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .env("BROKER_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p = Proxy { child, port };
    poll("the proxy", || p.get("/.broker/healthz", "").0 == 200);
    let (status, _, body) = p.get(
        "/chili/echo?api_key=query-secret",
        "Proxy-Authorization: Bearer nope\r\n",
    );
    assert_eq!(
        status, 403,
        "a wrong key is refused even from an allowed uid: {body}"
    );
    let (status, _, body) = p.get(
        "/chili/echo?api_key=query-secret",
        "Authorization: Bearer the-clients-own\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let token = body_json(&body)["headers"]["authorization"]
        .as_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    drop(p);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("GET /chili/echo"),
        "the access log is there: {text}"
    );
    for secret in [token.as_str(), SECRET, "query-secret", "the-clients-own"] {
        assert!(!text.contains(secret), "`{secret}` is in the log");
    }
}
