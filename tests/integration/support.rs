//! The test harness: a private HOME per test, the broker binary, and third-party OAuth servers from npm.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub use crate::redis_server::Redis;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_broker");

/// A private home: config, cache and runtime directories in a temp dir, and nothing of the user's.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Home {
            dir: tempfile::Builder::new()
                .prefix("broker-test")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config/broker/config.toml")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path().join("cache/broker")
    }

    /// Writes the config file.
    pub fn config(&self, toml: &str) -> &Self {
        let p = self.config_path();
        std::fs::create_dir_all(p.parent().unwrap_or(self.path())).expect("mkdir");
        std::fs::write(&p, toml).expect("write config");
        self
    }

    /// Writes a user provider file.
    pub fn provider(&self, name: &str, toml: &str) -> &Self {
        let d = self.path().join("config/broker/providers");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(format!("{name}.toml")), toml).expect("write provider");
        self
    }

    /// The broker binary with this home's environment and nothing else of the caller's.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.program(BIN);
        c.args(args);
        c
    }

    /// `program` with this home's environment and nothing else of the caller's.
    pub fn program(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("XDG_STATE_HOME", self.path().join("state"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .stdin(Stdio::null());
        c
    }

    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Run::from(self.cmd(args).output().expect("run broker"))
    }

    /// Cache entries that hold a token (an entry may hold only a cool-down).
    pub fn cached_tokens(&self) -> usize {
        self.cache_entries()
            .iter()
            .filter(|p| self.entry_text(p).contains("\"access_token\""))
            .count()
    }

    /// The text of a cache entry, opened as the broker opens it (entries are sealed under the user's cache key,
    /// bound to their directory); empty when it does not open.
    pub fn entry_text(&self, path: &Path) -> String {
        broker_core::cache::DiskCache::new(self.cache_dir())
            .entry_text(path)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Cache entry files (`<hex>.json`).
    pub fn cache_entries(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.cache_dir()) else {
            return vec![];
        };
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        v.sort();
        v
    }
}

/// A finished broker run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn success(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.stdout
        );
        self
    }

    pub fn token(&self) -> String {
        self.stdout.trim().to_owned()
    }
}

/// The directory of the npm test servers.
pub fn servers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

/// Installs the npm test servers once (`npm ci`, locked across test processes). Never skips: a test that
/// needs them fails with the reason when they cannot be installed.
pub fn ensure_node_modules() {
    let dir = servers_dir();
    let marker = dir.join("node_modules/.package-lock.json");
    if marker.exists() {
        return;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("broker-tests-npm.lock"))
        .expect("npm lock file");
    lock.lock().expect("npm lock");
    if marker.exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the conformance tests need npm (Node 20) to install their servers: {e}")
        });
    assert!(
        out.status.success(),
        "npm ci in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PEM key pair made by Node's crypto (`tests/servers/keygen.mjs`): `kind` rsa | p256 | p384 | ed25519, `format`
/// pkcs1 | sec1 | pkcs8.
pub struct KeyPem {
    pub private: String,
    pub public: String,
}

pub fn keygen(kind: &str, format: &str) -> KeyPem {
    ensure_node_modules();
    let out = std::process::Command::new("node")
        .arg(servers_dir().join("keygen.mjs"))
        .args([kind, format])
        .output()
        .expect("node keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("keygen json");
    KeyPem {
        private: v["private"].as_str().unwrap_or_default().to_owned(),
        public: v["public"].as_str().unwrap_or_default().to_owned(),
    }
}

/// A third-party OAuth server from npm, running on loopback until dropped.
pub struct NodeServer {
    child: Child,
    pub port: u16,
    /// Every port of the `READY` line (a server may listen on more than one).
    pub ports: Vec<u16>,
}

impl NodeServer {
    /// Starts `tests/servers/<script>` with `env` and waits (with a deadline) for its `READY <port>...` line.
    pub fn start(script: &str, env: &[(&str, &str)]) -> NodeServer {
        Self::start_with(script, &[], env)
    }

    /// [`NodeServer::start`] with arguments for the script.
    pub fn start_with(script: &str, args: &[&str], env: &[(&str, &str)]) -> NodeServer {
        ensure_node_modules();
        let mut cmd = Command::new("node");
        cmd.arg(servers_dir().join(script))
            .args(args)
            .current_dir(servers_dir())
            .stdout(Stdio::piped())
            // BROKER_TEST_SERVER_LOGS=1 shows what a server says on stderr, for debugging a test.
            .stderr(if std::env::var_os("BROKER_TEST_SERVER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start node {script}: {e}"));
        let stdout = child.stdout.take().expect("no stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("READY ") {
                    let ports: Option<Vec<u16>> =
                        p.split_whitespace().map(|p| p.parse().ok()).collect();
                    let _ = tx.send(ports.filter(|p| !p.is_empty()));
                }
            }
        });
        let ports = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(p)) => p,
            other => {
                let _ = child.kill();
                panic!("{script} did not report READY within 30 s: {other:?}");
            }
        };
        NodeServer {
            child,
            port: ports[0],
            ports,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Tokens the server has issued, asked of the server itself (`GET /__count`).
    pub fn issued(&self) -> u64 {
        http_get(self.port, "/__count")
            .trim()
            .parse()
            .expect("count")
    }

    /// Successful token requests, including tokens handed back again (`GET /__calls`, mock-auth0 only).
    pub fn calls(&self) -> u64 {
        http_get(self.port, "/__calls")
            .trim()
            .parse()
            .expect("calls")
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// oauth2-mock-server as an Auth0 tenant for client `cid` with `secret` and CHILI's audience, issuing tokens of
/// `ttl` seconds.
pub fn auth0_issuer(secret: &str, ttl: &str) -> NodeServer {
    NodeServer::start(
        "mock-auth0.mjs",
        &[
            ("CLIENT_ID", "cid"),
            ("CLIENT_SECRET", secret),
            ("AUDIENCE", "https://chiligrafx.com"),
            ("TOKEN_TTL", ttl),
        ],
    )
}

/// Sets `path`'s mode.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A minimal HTTP/1.0 GET on loopback, returning the body.
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A JWT-shaped (unsigned) token with the given claims.
pub fn jwt(claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let e = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.c2ln",
        e(r#"{"alg":"RS256","typ":"JWT"}"#),
        e(&claims.to_string())
    )
}

/// A wiremock server whose every POST gets `answer`: a token endpoint for one test.
pub async fn token_endpoint(answer: impl wiremock::Respond + 'static) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
