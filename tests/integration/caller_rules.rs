//! Per-profile caller rules (`allow`) in the daemon and the proxy, with real processes as other uids (`setpriv`) and
//! other executables, and a pid made to be reused by an allowed program after the caller that connected has exited.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::Daemon;
use crate::proxy::Proxy;
use crate::support::*;

fn root() -> bool {
    rustix::process::geteuid().as_raw() == 0
}

/// An Auth0-style issuer and profiles with rules: `nobody` (uid 65534 only), `root` (uid 0 only), `curl` (the curl
/// executable only), `unit` (a systemd unit no test runs in).
fn home_with_rules(idp: &NodeServer) -> Home {
    let home = Home::new();
    let secret = crate::client_auth::secret_file(&home, "secret", "rules-secret");
    let curl = std::fs::canonicalize(which("curl")).unwrap();
    let mut config = String::new();
    for (name, rule) in [
        ("nobody", "allow = { uids = [\"nobody\"] }".to_owned()),
        ("root", "allow = { uids = [0] }".to_owned()),
        (
            "curl",
            format!("allow = {{ exe = [\"{}\"] }}", curl.display()),
        ),
        (
            "unit",
            "allow = { units = [\"broker-test.service\"] }".to_owned(),
        ),
        ("open", String::new()),
    ] {
        config.push_str(&format!(
            "[profiles.{name}]\nkind = \"auth0\"\ntoken_url = \"{}/oauth/token\"\naudience = \"https://chiligrafx.com\"\n\
             client_id = \"cid\"\nclient_secret = {{ file = \"{}\" }}\napi = \"{}\"\n{rule}\n\n",
            idp.base(),
            secret.display(),
            idp.base()
        ));
    }
    home.config(&config);
    home
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// A directory others may enter (the daemon's socket for other uids), removed when dropped.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("broker-shared")
        .tempdir()
        .unwrap();
    chmod(dir.path(), 0o755);
    dir
}

/// `curl` over the daemon's socket as `uid` (root stays root): status and body.
fn curl_as(uid: Option<u32>, socket: &Path, path: &str) -> (u16, String) {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                &u.to_string(),
                "--regid",
                &u.to_string(),
                "--clear-groups",
                "curl",
            ]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://broker{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_daemon_gives_each_profile_only_to_the_callers_its_rule_names() {
    if !root() {
        return; // playing another uid needs root, as CI runs
    }
    let idp = auth0_issuer("rules-secret", "300");
    let home = home_with_rules(&idp);
    let shared = shared_dir();
    let socket = shared.path().join("broker.sock");
    let _daemon = Daemon::start_on(&home, socket.clone(), &["--allow-uid", "65534"], &[]);
    let nobody = Some(65534);
    assert_eq!(curl_as(nobody, &socket, "/v1/token/nobody").0, 200);
    assert_eq!(curl_as(None, &socket, "/v1/token/root").0, 200);
    let (status, body) = curl_as(nobody, &socket, "/v1/token/root");
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "rejected");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("allow.uids = [0]") && message.contains("uid 65534"),
        "{message}"
    );
    assert_eq!(curl_as(None, &socket, "/v1/token/nobody").0, 403);
    // The executable: curl may, Python may not (as the same uid, over the same socket).
    assert_eq!(curl_as(nobody, &socket, "/v1/token/curl").0, 200);
    let py = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket; s=socket.socket(socket.AF_UNIX); s.connect({:?}); \
             s.sendall(b'GET /v1/token/curl HTTP/1.1\\r\\nHost: b\\r\\nConnection: close\\r\\n\\r\\n'); \
             print(s.makefile('rb').readline().decode().split()[1])",
            socket.display().to_string()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "403");
    // A unit no caller here runs in; a profile with no rule is anyone's the listener admits.
    assert_eq!(curl_as(None, &socket, "/v1/token/unit").0, 403);
    assert_eq!(curl_as(nobody, &socket, "/v1/token/open").0, 200);
    // `broker check` shows each rule.
    home.run(["check"])
        .success()
        .stdout_has("allow                uids [65534]")
        .stdout_has("allow                units [\"broker-test.service\"]");
}

#[test]
fn a_refusal_is_exit_4_in_the_cli_and_403_in_the_proxy() {
    let idp = auth0_issuer("rules-secret", "300");
    let home = home_with_rules(&idp);
    let me = rustix::process::geteuid().as_raw();
    // The profile for another uid than ours: the daemon refuses us, and the CLI says so with class `rejected`.
    let other = if me == 65534 { "root" } else { "nobody" };
    let mine = if me == 0 { "root" } else { "open" };
    let _daemon = Daemon::start(&home);
    home.run(["token", other])
        .code(4)
        .stderr_has("may not have its token");
    home.run(["token", mine]).success();
    let proxy = Proxy::start(&home, &[]);
    let (status, _, body) = proxy.get(&format!("/{other}/anything"), "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("rejected"), "{body}");
    let (status, _, _) = proxy.get(&format!("/{mine}/anything"), "");
    assert_ne!(status, 403);
}

#[test]
fn a_pid_reused_by_an_allowed_program_after_the_caller_exited_never_passes() {
    if !root() || !Path::new("/proc/sys/kernel/ns_last_pid").exists() {
        return; // steering the next pid needs root
    }
    let idp = auth0_issuer("rules-secret", "300");
    let home = Home::new();
    let secret = crate::client_auth::secret_file(&home, "secret", "rules-secret");
    let sleep = std::fs::canonicalize(which("sleep")).unwrap();
    home.config(&format!(
        "[profiles.sleep]\nkind = \"auth0\"\ntoken_url = \"{}/oauth/token\"\naudience = \"https://chiligrafx.com\"\n\
         client_id = \"cid\"\nclient_secret = {{ file = \"{}\" }}\nallow = {{ exe = [\"{}\"] }}\n",
        idp.base(),
        secret.display(),
        sleep.display()
    ));
    let daemon = Daemon::start(&home);
    // Each round: a child connects, hands its socket to the parent and exits; the parent steers the kernel to give
    // the child's pid to `sleep` (the allowed program), then asks over the child's connection. The daemon must see
    // that the process that connected is gone, whatever now runs under its pid.
    let script = r#"
import os, socket, subprocess, sys
path, sleep, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
passed = reused = 0
for _ in range(rounds):
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        s = socket.socket(socket.AF_UNIX); s.connect(path)
        socket.send_fds(b, [b"x"], [s.fileno()]); os._exit(0)
    _, fds, _, _ = socket.recv_fds(a, 1, 1)
    os.waitpid(pid, 0)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    p = subprocess.Popen([sleep, "30"])
    reused += p.pid == pid
    s = socket.socket(fileno=fds[0])
    s.sendall(b"GET /v1/token/sleep HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    status = s.makefile("rb").readline().split()[1]
    passed += status == b"200"
    p.kill(); p.wait(); s.close(); a.close(); b.close()
print(passed, reused)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&daemon.socket)
        .arg(&sleep)
        .arg("40")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (passed, reused) = text.trim().split_once(' ').unwrap();
    assert_eq!(
        passed, "0",
        "a caller passed as the program that took its pid"
    );
    assert_ne!(
        reused, "0",
        "the kernel never gave the pid to the allowed program: nothing was tried"
    );
}

/// Where the unified (v2) cgroup hierarchy is mounted, if it is.
fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(at))
        })
}

#[test]
fn a_unit_rule_admits_a_process_of_that_unit_only() {
    let Some(mount) = cgroup2_mount().filter(|_| root()) else {
        return; // making a cgroup needs root and a cgroup2 mount
    };
    let unit = format!("broker-test-{}.service", std::process::id());
    let group = mount.join(&unit);
    if std::fs::create_dir(&group).is_err() {
        return; // a read-only cgroup file system (an unprivileged container)
    }
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _remove = Remove(group.clone());
    let idp = auth0_issuer("rules-secret", "300");
    let home = Home::new();
    let secret = crate::client_auth::secret_file(&home, "secret", "rules-secret");
    home.config(&format!(
        "[profiles.unit]\nkind = \"auth0\"\ntoken_url = \"{}/oauth/token\"\naudience = \"https://chiligrafx.com\"\n\
         client_id = \"cid\"\nclient_secret = {{ file = \"{}\" }}\nallow = {{ units = [\"{unit}\"] }}\n",
        idp.base(),
        secret.display()
    ));
    let daemon = Daemon::start(&home);
    // curl, started inside the unit's cgroup (as systemd starts a service's processes), and then outside it.
    let in_unit = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec curl -s -o /dev/null -w %{{http_code}} --unix-socket {} http://b/v1/token/unit",
            group.display(),
            daemon.socket.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&in_unit.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&in_unit.stderr)
    );
    assert_eq!(curl_as(None, &daemon.socket, "/v1/token/unit").0, 403);
}

#[test]
fn a_callers_executable_named_with_escapes_reaches_no_log_message_or_terminal_raw() {
    if !root() {
        return; // the daemon's log and the caller run as one uid here; the same holds for another
    }
    let idp = auth0_issuer("rules-secret", "300");
    let home = home_with_rules(&idp);
    let daemon = Daemon::start(&home);
    // curl under a name another user could give their program: a terminal escape in its path.
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("curl\u{1b}]0;pwned\u{7}\u{1b}[31m");
    std::fs::copy(which("curl"), &evil).unwrap();
    chmod(&evil, 0o755);
    let out = Command::new(&evil)
        .args(["-s", "--unix-socket"])
        .arg(&daemon.socket)
        .arg("http://b/v1/token/curl")
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("allow.exe") && message.contains("\\u{1b}"),
        "{message}"
    );
    assert!(
        !message.contains('\u{1b}') && !message.contains('\u{7}'),
        "{message:?}"
    );
    let log = std::fs::read_to_string(home.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("refused") && !log.contains('\u{1b}'),
        "{log:?}"
    );
    // `broker audit` on a terminal: the same escaped (the log itself keeps the name, JSON-escaped).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let table = home
            .program("script")
            .args(["-qec", &format!("{BIN} audit --profile curl"), "/dev/null"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&table.stdout).into_owned();
        if text.contains("refused") {
            assert!(
                !text.contains('\u{1b}') && !text.contains('\u{7}'),
                "{text:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "no refused line in the audit log: {text:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
