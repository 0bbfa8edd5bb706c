//! `{ command = [...] }` sources: a program run without a shell, with stdin closed, an environment of `PATH` and
//! `HOME` only, in a process group of its own, within [`COMMAND_TIMEOUT`] for its exit and its output.
//! *Invariant: its output never reaches an error; at the limit the whole group is killed.*

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::COMMAND_TIMEOUT;
use crate::error::{Error, Result};

pub(super) fn run_command(argv: &[String]) -> Result<SecretString> {
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
}
