//! Where client ids and secrets come from: a literal, an environment variable, a file, or a command.
//!
//! Values are held in [`SecretString`] and never formatted; `Debug` shows the source, not the value.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How long a `{ command = [...] }` source may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A place a secret is read from.
///
/// ```
/// use broker_core::secret::SecretSource;
/// use secrecy::ExposeSecret;
///
/// std::env::set_var("MY_SECRET", "hunter2");
/// let s = SecretSource::Env("MY_SECRET".into());
/// assert_eq!(s.describe(), "env MY_SECRET"); // what messages and `broker check` show
/// assert_eq!(s.resolve()?.expose_secret(), "hunter2");
/// # Ok::<(), broker_core::Error>(())
/// ```
#[derive(Clone)]
pub enum SecretSource {
    /// The value itself, written in the config file.
    Literal(SecretString),
    /// `{ env = "NAME" }`: an environment variable.
    Env(String),
    /// `{ file = "PATH" }`: the first line of a file; a leading `~/` is the home directory.
    File(PathBuf),
    /// `{ command = ["argv0", ...] }`: a program's trimmed standard output. No shell, stdin closed,
    /// an environment of `PATH` and `HOME` only, at most [`COMMAND_TIMEOUT`].
    Command(Vec<String>),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SecretSource {
    /// A description for messages and `broker check`, never the value.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Literal(_) => "literal (redacted)".into(),
            SecretSource::Env(name) => format!("env {name}"),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Command(argv) => format!("command {argv:?}"),
        }
    }

    /// Reads the secret.
    pub fn resolve(&self) -> Result<SecretString> {
        match self {
            SecretSource::Literal(s) => Ok(s.clone()),
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                Ok(_) => Err(Error::config(format!(
                    "environment variable {name} is empty"
                ))),
                Err(_) => Err(Error::config(format!(
                    "environment variable {name} is not set"
                ))),
            },
            SecretSource::File(path) => {
                let path = expand_home(path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::config(format!("cannot read secret file {}: {e}", path.display()))
                })?;
                let first = text.lines().next().unwrap_or("").trim();
                if first.is_empty() {
                    return Err(Error::config(format!(
                        "secret file {} is empty",
                        path.display()
                    )));
                }
                Ok(SecretString::from(first.to_owned()))
            }
            SecretSource::Command(argv) => run_command(argv),
        }
    }

    /// Reads the secret from async code: a command runs on the runtime's blocking pool, so a slow one (it may
    /// take up to its 10 s limit, e.g. a password manager asking for a PIN) does not stall other requests served
    /// by the same runtime thread. Other sources are read in place.
    pub async fn resolve_async(&self) -> Result<SecretString> {
        match self {
            SecretSource::Command(argv) => {
                let argv = argv.clone();
                tokio::task::spawn_blocking(move || run_command(&argv))
                    .await
                    .map_err(|e| Error::internal(format!("secret command task: {e}")))?
            }
            _ => self.resolve(),
        }
    }

    /// What identifies this secret in a cache key: a hash of the value for literal, env and file
    /// sources, the argv for a command (so a warm cache hit never runs the command).
    pub fn key_material(&self) -> Result<Vec<u8>> {
        match self {
            SecretSource::Command(argv) => {
                let mut out = b"command\0".to_vec();
                for a in argv {
                    out.extend_from_slice(a.as_bytes());
                    out.push(0);
                }
                Ok(out)
            }
            other => {
                let value = other.resolve()?;
                let mut out = b"value\0".to_vec();
                out.extend_from_slice(&Sha256::digest(value.expose_secret().as_bytes()));
                Ok(out)
            }
        }
    }
}

/// Expands a leading `~/` to `$HOME/`.
pub fn expand_home(path: &std::path::Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    path.to_path_buf()
}

fn run_command(argv: &[String]) -> Result<SecretString> {
    run_command_within(argv, COMMAND_TIMEOUT)
}

/// Runs a secret command in a process group of its own, with `limit` for the whole of it: the command's exit and
/// the end of its output. At the limit the whole group is killed, so a grandchild that keeps stdout open (a
/// backgrounded helper) cannot keep the broker waiting.
fn run_command_within(argv: &[String], limit: Duration) -> Result<SecretString> {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::config("secret command is empty"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .env_clear();
    for var in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::config(format!("secret command {program:?} could not start: {e}")))?;
    let group = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::internal("secret command has no stdout"))?;
    // Read stdout on a thread so a chatty command cannot block on a full pipe while we wait; its end (EOF, when
    // every process holding the pipe has closed it) is awaited with the same deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.by_ref().take(1 << 20).read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    let deadline = crate::clock::instant_after(limit);
    let timed_out = |child: &mut std::process::Child| {
        if let Some(g) = group {
            let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        Error::config(format!(
            "secret command {program:?} did not finish within {}s (its process group was killed)",
            limit.as_secs_f64()
        ))
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => return Err(timed_out(&mut child)),
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Error::config(format!("secret command {program:?}: {e}"))),
        }
    };
    let out = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(out) => out,
        Err(_) => return Err(timed_out(&mut child)),
    };
    if !status.success() {
        return Err(Error::config(format!(
            "secret command {program:?} failed ({status})"
        )));
    }
    let text = String::from_utf8(out)
        .map_err(|_| Error::config(format!("secret command {program:?} printed non-UTF-8")))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(Error::config(format!(
            "secret command {program:?} printed nothing"
        )));
    }
    Ok(SecretString::from(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_literal() {
        let s = SecretSource::Literal(SecretString::from("hunter2".to_owned()));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn command_output_is_trimmed_and_failures_hide_output() {
        let ok = SecretSource::Command(vec!["sh".into(), "-c".into(), "echo '  s3cret  '".into()]);
        assert_eq!(
            ok.resolve()
                .map(|s| s.expose_secret().to_owned())
                .ok()
                .as_deref(),
            Some("s3cret")
        );
        let bad =
            SecretSource::Command(vec!["sh".into(), "-c".into(), "echo leaked; exit 3".into()]);
        let err = bad
            .resolve()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(!err.contains("leaked"), "{err}");
    }

    #[test]
    fn command_gets_a_clean_environment() {
        std::env::set_var("BROKER_TEST_SHOULD_NOT_LEAK", "x");
        let s = SecretSource::Command(vec![
            "sh".into(),
            "-c".into(),
            "echo ${BROKER_TEST_SHOULD_NOT_LEAK:-clean}".into(),
        ]);
        assert_eq!(
            s.resolve()
                .map(|s| s.expose_secret().to_owned())
                .ok()
                .as_deref(),
            Some("clean")
        );
    }

    #[test]
    fn a_grandchild_holding_stdout_open_is_killed_with_its_group_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The command prints its secret and exits at once, leaving a grandchild that keeps stdout open.
        let script = format!("sleep 600 & echo $! > {}; echo s3cret", pid_file.display());
        let argv = vec!["sh".to_owned(), "-c".to_owned(), script];
        let err = run_command_within(&argv, Duration::from_millis(500))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("did not finish"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        let pid = rustix::process::Pid::from_raw(pid).expect("no grandchild pid");
        // Killed (a zombie until init reaps it, so look at its state, not just its existence).
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
                .unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            if matches!(state, None | Some('Z' | 'X')) {
                break;
            }
            assert!(
                Instant::now() < end,
                "the grandchild is still running: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn command_key_material_does_not_run_the_command() {
        let s = SecretSource::Command(vec!["/nonexistent/never-run".into()]);
        assert!(s.key_material().is_ok());
    }
}
