//! A real `redis-server` for the fleet tests (and the hostile-Redis ones), started per test on a free port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A real `redis-server` on a free loopback port, without persistence, until dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// `requirepass`, when set.
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_as(None)
    }

    /// A Redis that asks for `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Redis {
        Self::start_as(Some(password.to_owned()))
    }

    fn start_as(password: Option<String>) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            password,
        };
        r.restart();
        r
    }

    /// Starts it (again) on its port, and waits (with a deadline) until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server (scripts/test installs Debian's package): {e}")
            });
        self.child = Some(child);
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !self.answers() {
            assert!(
                std::time::Instant::now() < end,
                "redis-server did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if let Some(p) = &self.password {
            let mut ok = [0u8; 5];
            if s.write_all(format!("AUTH {p}\r\n").as_bytes()).is_err()
                || s.read_exact(&mut ok).is_err()
                || &ok != b"+OK\r\n"
            {
                return false;
            }
        }
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills it (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` with `args`, raw output.
    pub fn cli(&self, args: &[&str]) -> Vec<u8> {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli")
            .stdout
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
