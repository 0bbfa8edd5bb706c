//! What no local user can make the daemon do: hold connections or memory without bound, pass the key check,
//! or make `--socket` and `--listen` touch what they should not.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::daemon::*;
use crate::support::*;

/// The daemon's resident memory, in KiB.
fn rss_kib(d: &Daemon) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_idle_and_half_sent_tcp_connections_is_bounded_and_closed() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(
        &home,
        &[
            "--listen",
            &listen,
            "--max-connections",
            "100",
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "2s",
        ],
        &[],
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let mut flood = Vec::new();
    for i in 0..2000 {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            continue;
        };
        if i % 2 == 0 {
            // Half-sent: a request line and one header, never the blank line.
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n");
        }
        flood.push(s);
    }
    assert!(
        flood.len() > 1000,
        "only {} connections opened",
        flood.len()
    );
    // The Unix socket, its /healthz and the token path do not wait for the flood.
    assert_eq!(d.get("/healthz").0, 200);
    assert_eq!(d.get("/v1/token/chili").0, 200);
    // Every flooding connection is closed: those over the limit at once, the others at their timeout.
    for s in &flood {
        let _ = s.set_nonblocking(true);
    }
    let mut open: Vec<&std::net::TcpStream> = flood.iter().collect();
    poll("every flooding connection to be closed", || {
        open.retain(|s| {
            let mut buf = [0u8; 256];
            let mut r: &std::net::TcpStream = s;
            matches!(r.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        open.is_empty()
    });
    // And the port serves again.
    let key =
        std::fs::read_to_string(home.path().join("run/broker/daemon.key")).unwrap_or_default();
    poll("the TCP port to answer again", || {
        tcp_get(addr.port(), "/healthz", Some(key.trim()))
            .is_some_and(|(status, _, _)| status == 200)
    });
}

#[test]
fn a_connection_that_fails_the_key_check_is_closed_after_the_answer() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let port = free_port();
    let _d = Daemon::start_with(&home, &["--listen", &format!("127.0.0.1:{port}")], &[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    // Keep-alive is asked for; the answer must still end the connection.
    let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n");
    let mut raw = String::new();
    let eof = s.read_to_string(&mut raw); // Ok only at EOF: the daemon closed the connection
    assert!(eof.is_ok(), "the connection was left open: {eof:?}");
    assert_eq!(parse_response(&raw).0, 401, "{raw}");
}

#[test]
fn unknown_profile_names_do_not_grow_the_daemons_memory() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let d = Daemon::start(&home);
    // Warm up: the allocator's arenas and the server's buffers settle first.
    for i in 0..1000 {
        d.get(&format!("/v1/token/warmup-{i}"));
    }
    let before = rss_kib(&d);
    for i in 0..20_000 {
        assert_eq!(
            d.get(&format!("/v1/token/nosuch-{i}-{}", "x".repeat(1000)))
                .0,
            404
        );
    }
    let after = rss_kib(&d);
    eprintln!("RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 4096,
        "RSS grew from {before} KiB to {after} KiB over 20,000 unknown names"
    );
    let metrics = d.metrics();
    assert!(metrics.contains("profile=\"(unknown)\""), "{metrics}");
    assert!(
        !metrics.contains("nosuch-"),
        "a metric series per unknown name"
    );
}

#[test]
fn the_socket_option_never_removes_a_file_or_chmods_a_directory() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let precious = home.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    home.run(["daemon", "--socket", &precious.display().to_string()])
        .code(3)
        .stderr_has("not a socket");
    assert_eq!(
        std::fs::read_to_string(&precious).ok().as_deref(),
        Some("keep me")
    );
    // A directory of ours named by --socket keeps its mode.
    let project = home.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o750)).unwrap();
    let d = Daemon::start_on(&home, project.join("d.sock"), &[], &[]);
    assert_eq!(d.get("/healthz").0, 200);
    let mode = std::fs::metadata(&project).map(|m| m.permissions().mode() & 0o7777);
    assert_eq!(mode.ok(), Some(0o750));
}

#[test]
fn an_insecure_socket_directory_is_refused() {
    let home = Home::new();
    home.config("");
    let dir = home.path().join("run/broker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    home.run(["daemon"])
        .code(3)
        .stderr_has("writable by group or others");
}

#[test]
fn listen_on_loopback_needs_the_key_and_refuses_remote_addresses() {
    let idp = auth0("300", None);
    let home = Home::new();
    chili_profile(&home, &idp.base());
    let port = free_port();
    let _d = Daemon::start_with(&home, &["--listen", &format!("127.0.0.1:{port}")], &[]);
    let key_path = home.path().join("run/broker/daemon.key");
    let mode = std::fs::metadata(&key_path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap_or_default();
    let tcp_get = |auth| tcp_get(port, "/v1/token/chili", auth).unwrap_or_default();
    assert_eq!(tcp_get(None).0, 401);
    assert_eq!(tcp_get(Some("not-the-key")).0, 401);
    let (status, _, body) = tcp_get(Some(key.trim()));
    assert_eq!(status, 200, "{body}");
    home.run([
        "daemon",
        "--socket",
        &home
            .path()
            .join("run/broker/other.sock")
            .display()
            .to_string(),
        "--listen",
        "0.0.0.0:1",
    ])
    .code(2)
    .stderr_has("--allow-remote");
}
