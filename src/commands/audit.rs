//! `broker audit [--profile P] [--since 1h] [--follow]`: the audit log of the daemon and the proxy (docs/reference.md
//! §11), oldest first: a table on a terminal, the JSON lines as they are in a pipe.

use std::io::{BufRead, IsTerminal, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use broker_core::Error;
use serde_json::Value;

use crate::context::CmdResult;

#[derive(clap::Args)]
pub struct Args {
    /// Only this profile's lines.
    #[arg(long)]
    pub profile: Option<String>,
    /// Only lines from this long ago on (e.g. `1h`).
    #[arg(long, value_name = "DURATION", value_parser = crate::commands::token::parse_duration)]
    pub since: Option<Duration>,
    /// Keep printing lines as they are written.
    #[arg(long)]
    pub follow: bool,
}

pub fn run(args: &Args) -> CmdResult {
    let dir = broker_core::paths::state_dir()
        .ok_or_else(|| Error::config("no state directory: set XDG_STATE_HOME or HOME"))?;
    let since = args.since.map(|d| SystemTime::now() - d);
    let table = std::io::stdout().is_terminal();
    let mut out = Printer {
        table,
        header: false,
    };
    for path in crate::audit::files(&dir) {
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            out.line(&line, args, since)?;
        }
    }
    if args.follow {
        follow(&dir.join(crate::audit::FILE), &mut out, args, since)?;
    }
    Ok(())
}

/// Prints what is appended to `path` from now on, reopening it when it is rotated. Polls: the log is a file.
fn follow(
    path: &std::path::Path,
    out: &mut Printer,
    args: &Args,
    since: Option<SystemTime>,
) -> CmdResult {
    let open = || {
        std::fs::File::open(path)
            .ok()
            .map(|f| (f.metadata().map(|m| m.ino()).unwrap_or(0), f))
    };
    let mut current = open();
    if let Some((_, f)) = &mut current {
        let _ = f.seek(std::io::SeekFrom::End(0));
    }
    let mut pending = String::new();
    loop {
        if let Some((_, f)) = &mut current {
            let mut chunk = String::new();
            let _ = f.read_to_string(&mut chunk);
            pending.push_str(&chunk);
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                out.line(line.trim_end(), args, since)?;
            }
        }
        let now = std::fs::metadata(path).ok().map(|m| m.ino());
        if now.is_some() && now != current.as_ref().map(|(ino, _)| *ino) {
            current = open();
            pending.clear();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Printer {
    table: bool,
    header: bool,
}

impl Printer {
    fn line(&mut self, line: &str, args: &Args, since: Option<SystemTime>) -> CmdResult {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return Ok(());
        };
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
        // Every value shown escaped: a caller's executable or a requested profile name is anyone's text.
        let shown = |s: &str| broker_core::provider_text(s);
        if args
            .profile
            .as_deref()
            .is_some_and(|p| p != field("profile"))
        {
            return Ok(());
        }
        if let Some(since) = since {
            match humantime::parse_rfc3339(field("time")) {
                Ok(t) if t >= since => {}
                _ => return Ok(()),
            }
        }
        let mut stdout = std::io::stdout().lock();
        let io = |e: std::io::Error| Error::internal(format!("cannot write: {e}"));
        if !self.table {
            return writeln!(stdout, "{line}").map_err(|e| io(e).into());
        }
        if !self.header {
            writeln!(
                stdout,
                "{:<24} {:<6} {:<20} {:<16} {:>6} {:>8} {:<28} {:<12} {:>9}",
                "TIME", "KIND", "PROFILE", "OUTCOME", "UID", "PID", "EXE", "TOKEN", "UPSTREAM"
            )
            .map_err(io)?;
            self.header = true;
        }
        let caller = |k: &str| {
            v.get("caller")
                .and_then(|c| c.get(k))
                .filter(|x| !x.is_null())
                .map(|x| x.as_str().map_or_else(|| x.to_string(), shown))
                .unwrap_or_else(|| "-".into())
        };
        let upstream = v
            .get("upstream_ms")
            .and_then(Value::as_f64)
            .map_or_else(|| "-".into(), |ms| format!("{ms} ms"));
        writeln!(
            stdout,
            "{:<24} {:<6} {:<20} {:<16} {:>6} {:>8} {:<28} {:<12} {:>9}",
            shown(field("time")),
            shown(field("kind")),
            shown(field("profile")),
            shown(field("outcome")),
            caller("uid"),
            caller("pid"),
            caller("exe"),
            shown(v.get("token").and_then(Value::as_str).unwrap_or("-")),
            upstream
        )
        .map_err(|e| io(e).into())
    }
}
