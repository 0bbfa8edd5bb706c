//! The audit log: one line per request to the daemon (and per upstream fetch) under 200 concurrent callers, with no
//! token or secret in it; rotation within its bound; a full disk said once while serving goes on, or refusing when
//! the log is required until it can be written again; `broker audit` reading it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{metric, Daemon};
use crate::support::*;

const SECRET: &str = "audit-secret";

fn home(idp: &NodeServer, extra: &str) -> Home {
    let home = Home::new();
    let secret = crate::client_auth::secret_file(&home, "secret", SECRET);
    home.config(&format!(
        "{extra}\n[profiles.chili]\nprovider = \"chili\"\ntoken_url = \"{}/oauth/token\"\nclient_id = \"cid\"\n\
         client_secret = {{ file = \"{}\" }}\n",
        idp.base(),
        secret.display()
    ));
    home
}

fn log_dir(home: &Home) -> PathBuf {
    home.path().join("state/broker")
}

fn lines(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("audit.log"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls until the log holds `n` lines, for at most 30 s.
fn wait_for_lines(dir: &Path, n: usize) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let got = lines(dir);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < end,
            "the audit log holds {} lines, not {n}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_hundred_concurrent_callers_make_two_hundred_lines_and_one_fetch_line_with_no_token_in_them()
{
    let idp = auth0_issuer(SECRET, "300");
    let home = home(&idp, "");
    let daemon = Daemon::start(&home);
    let tokens: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..200)
            .map(|_| s.spawn(|| daemon.get("/v1/token/chili")))
            .collect();
        calls
            .into_iter()
            .map(|c| {
                let (status, _, body) = c.join().unwrap();
                assert_eq!(status, 200, "{body}");
                serde_json::from_str::<Value>(&body).unwrap()["access_token"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    });
    let got = wait_for_lines(&log_dir(&home), 201);
    // Nothing more comes: exactly one line per request and per fetch.
    std::thread::sleep(Duration::from_millis(200));
    let got_again = lines(&log_dir(&home));
    assert_eq!(got_again.len(), 201, "{got_again:?}");
    let requests: Vec<&Value> = got.iter().filter(|l| l["kind"] == "daemon").collect();
    let fetches: Vec<&Value> = got.iter().filter(|l| l["kind"] == "fetch").collect();
    assert_eq!((requests.len(), fetches.len()), (200, 1));
    assert_eq!(fetches[0]["outcome"], "fetched");
    assert!(fetches[0]["upstream_ms"].as_f64().is_some());
    let me = rustix::process::geteuid().as_raw();
    for l in &requests {
        assert!(
            matches!(l["outcome"].as_str(), Some("hit" | "fetched")),
            "{l}"
        );
        assert_eq!(l["caller"]["uid"], me);
        assert_eq!(l["caller"]["pid"], std::process::id(), "{l}");
        assert_eq!(
            l["caller"]["exe"].as_str(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(Path::to_str)
        );
        assert_eq!(l["token"].as_str().map(str::len), Some(12));
    }
    let text: String = std::fs::read_to_string(log_dir(&home).join("audit.log")).unwrap();
    assert!(!text.contains(&tokens[0]) && !text.contains(SECRET));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(log_dir(&home).join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // `broker audit` in a pipe: the JSON lines, filtered.
    let all = home.run(["audit"]);
    assert_eq!(all.success().stdout.lines().count(), 201);
    let recent = home.run(["audit", "--profile", "chili", "--since", "1h"]);
    assert_eq!(recent.success().stdout.lines().count(), 201);
    assert_eq!(
        home.run(["audit", "--profile", "other"])
            .success()
            .stdout
            .lines()
            .count(),
        0
    );
    // On a terminal (util-linux's `script` gives it one): a table, a header and a row per line.
    let table = home
        .program("script")
        .args(["-qec", &format!("{BIN} audit --profile chili"), "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout).replace('\r', "");
    let rows: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        rows[0].starts_with("TIME") && rows[0].contains("OUTCOME"),
        "{text}"
    );
    assert_eq!(rows.len(), 202, "{text}");
    assert!(rows[1..].iter().all(|r| r.contains("chili")), "{text}");
}

#[test]
fn rotation_keeps_the_number_and_size_of_files_bounded() {
    let idp = auth0_issuer(SECRET, "300");
    let home = home(&idp, "[audit]\nmax_size = 4096\nkeep = 2\n");
    let daemon = Daemon::start(&home);
    for _ in 0..150 {
        assert_eq!(daemon.get("/v1/token/chili").0, 200);
    }
    // At least the newest lines are there, and no more than three files, none much over the bound.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let names: Vec<String> = std::fs::read_dir(log_dir(&home))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("audit.log"))
            .collect();
        assert!(names.len() <= 3, "{names:?}");
        for n in &names {
            let size = std::fs::metadata(log_dir(&home).join(n)).unwrap().len();
            assert!(size <= 4096, "{n}: {size} bytes");
        }
        if names.len() == 3 {
            break;
        }
        assert!(Instant::now() < end, "never rotated: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_is_said_once_and_serving_goes_on_or_is_refused_when_required() {
    if rustix::process::geteuid().as_raw() != 0 {
        return; // mounting a small file system needs root
    }
    for required in [false, true] {
        let idp = auth0_issuer(SECRET, "300");
        let home = home(
            &idp,
            if required {
                "[audit]\nmode = \"required\"\n"
            } else {
                ""
            },
        );
        let state = home.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mount = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(&state)
            .status()
            .unwrap();
        if !mount.success() {
            return; // no mounting here (an unprivileged container)
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(state.clone());
        std::fs::create_dir_all(state.join("broker")).unwrap();
        crate::support::chmod(&state.join("broker"), 0o700);
        // Fill it: the log can be opened, not written.
        let filler = state.join("filler");
        let _ = std::fs::write(&filler, vec![b'x'; 64 * 1024]);
        let daemon = Daemon::start(&home);
        let mut statuses = Vec::new();
        let end = Instant::now() + Duration::from_secs(30);
        while metric(&daemon.metrics(), "broker_audit_up") != 0.0 {
            statuses.push(daemon.get("/v1/token/chili").0);
            assert!(Instant::now() < end, "the full disk never showed");
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..20 {
            statuses.push(daemon.get("/v1/token/chili").0);
        }
        let log = std::fs::read_to_string(home.path().join("daemon.log")).unwrap();
        assert_eq!(
            log.matches("cannot write the audit log").count(),
            1,
            "{log}"
        );
        if required {
            assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
            // Room again: the next request's line is written, and serving resumes.
            std::fs::remove_file(&filler).unwrap();
            let end = Instant::now() + Duration::from_secs(30);
            while daemon.get("/v1/token/chili").0 != 200 {
                assert!(Instant::now() < end, "serving never resumed");
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        }
    }
}

#[test]
fn the_proxy_records_its_requests_and_broker_audit_follows_them() {
    use std::io::BufRead;
    let idp = auth0_issuer(SECRET, "300");
    let home = home(&idp, "");
    let mut config = std::fs::read_to_string(home.config_path()).unwrap();
    config.push_str(&format!("api = \"{}\"\n", idp.base()));
    home.config(&config);
    let proxy = crate::proxy::Proxy::start(&home, &[]);
    let mut follow = home
        .cmd(["audit", "--follow", "--profile", "chili"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // `--follow` prints what is written after it started: ask until a proxy line comes (the follower may start late).
    let end = Instant::now() + Duration::from_secs(30);
    let v = 'found: loop {
        proxy.get("/chili/anything", "");
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["kind"] == "proxy" {
                break 'found v;
            }
            assert_eq!(v["kind"], "fetch", "{v}");
        }
        assert!(
            Instant::now() < end,
            "broker audit --follow printed no proxy line"
        );
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        (v["kind"].as_str(), v["profile"].as_str()),
        (Some("proxy"), Some("chili")),
        "{v}"
    );
    assert_eq!(v["caller"]["via"], "tcp");
    assert!(v["token"].as_str().is_some(), "{v}");
}

#[test]
fn lines_go_to_a_syslog_socket_when_asked() {
    let idp = auth0_issuer(SECRET, "300");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log");
    let log = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let home = home(
        &idp,
        &format!(
            "[audit]\nto = \"syslog\"\nsyslog_socket = \"{}\"\n",
            socket.display()
        ),
    );
    let daemon = Daemon::start(&home);
    assert_eq!(daemon.get("/v1/token/chili").0, 200);
    let mut got = Vec::new();
    while got.len() < 2 {
        let mut buf = [0u8; 4096];
        let n = log.recv(&mut buf).expect("a syslog datagram");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    for msg in &got {
        let json = msg
            .strip_prefix("<86>broker[")
            .and_then(|m| m.split_once("]: "))
            .map(|(_, j)| j);
        let v: Value =
            serde_json::from_str(json.unwrap_or_else(|| panic!("not RFC 3164: {msg}"))).unwrap();
        assert_eq!(v["profile"], "chili");
    }
    assert!(
        !log_dir(&home).join("audit.log").exists(),
        "no file when syslog is asked"
    );
}
