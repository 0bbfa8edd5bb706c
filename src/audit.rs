//! The audit log (docs/reference.md §11): one JSON line per request to the daemon or the proxy and per upstream
//! fetch (time, the caller as the kernel described it, profile, outcome, the token's fingerprint, upstream latency),
//! written by a thread of its own to `audit.log` in the state directory (0600, rotated by size, a bounded number of
//! files) or to a syslog socket.
//!
//! *Invariant: recording never blocks a request for longer than a copy into a bounded buffer (the writer takes the
//! whole buffer at once, never writing under its lock): a line goes in, or is counted as dropped; no line holds a
//! token or a secret (a token appears only as its fingerprint). When the log cannot be written the daemon
//! says so once and goes on; with `mode = "required"` a request whose line cannot be taken is refused.*

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use broker_core::caller::Caller;
use broker_core::config::{AuditDef, AuditMode, AuditSink};
use broker_core::{AccessToken, Error, ErrorKind, Observer};

/// Bytes waiting for the writer at most; past this a line is dropped (and counted), never waited for.
const BUFFERED: usize = 8 << 20;

/// The writer wakes at least this often; sooner when a quarter of the buffer is used.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// The file's name in the state directory; rotated files add `.1`, `.2`, ...
pub const FILE: &str = "audit.log";

/// The audit log of a daemon or a proxy.
pub struct Audit {
    /// Lines not yet written, and the writer's wake-up; none when the log is off.
    pending: Option<Arc<(Mutex<Vec<u8>>, Condvar)>>,
    mode: AuditMode,
    /// The last write succeeded (or none was tried yet).
    healthy: Arc<AtomicBool>,
    dropped: AtomicU64,
}

/// One request or fetch, as recorded.
pub struct Record<'a> {
    /// `daemon`, `proxy` or `fetch`.
    pub kind: &'static str,
    pub profile: &'a str,
    pub caller: Option<&'a Caller>,
    /// `hit`, `fetched`, `refused`, an error class, or an HTTP status class for the proxy.
    pub outcome: &'a str,
    pub token: Option<&'a AccessToken>,
    pub upstream: Option<Duration>,
}

impl Audit {
    /// An audit log as `def` says; `Off` records nothing. A file that cannot be opened is an error with `required`,
    /// else a warning (and the log is tried again at every write).
    pub fn start(def: &AuditDef) -> Result<Arc<Audit>, Error> {
        if def.mode == AuditMode::Off {
            return Ok(Arc::new(Audit {
                pending: None,
                mode: def.mode,
                healthy: Arc::new(AtomicBool::new(true)),
                dropped: AtomicU64::new(0),
            }));
        }
        let mut sink = Sink::new(def)?;
        if let Err(e) = sink.open() {
            if def.mode == AuditMode::Required {
                return Err(e);
            }
            tracing::error!(
                "{}; requests are served without it until it can be written",
                e.message()
            );
        }
        let healthy = Arc::new(AtomicBool::new(true));
        let pending = Arc::new((Mutex::new(Vec::with_capacity(64 << 10)), Condvar::new()));
        let (h, p) = (healthy.clone(), pending.clone());
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(&p, sink, &h))
            .map_err(|e| Error::internal(format!("cannot start the audit writer: {e}")))?;
        Ok(Arc::new(Audit {
            pending: Some(pending),
            mode: def.mode,
            healthy,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Whether a request must be refused because its line cannot be written (`mode = "required"` only).
    pub fn refuses(&self) -> bool {
        self.mode == AuditMode::Required && !self.healthy.load(Ordering::Relaxed)
    }

    /// `mode = "required"`: a request whose line cannot be taken is refused.
    pub fn required(&self) -> bool {
        self.mode == AuditMode::Required
    }

    /// Whether requests are recorded.
    pub fn enabled(&self) -> bool {
        self.pending.is_some()
    }

    /// Buffers `r`'s line for the writer; `false` when it could not be taken (the buffer is full, or the log is not
    /// writable).
    pub fn record(&self, r: &Record<'_>) -> bool {
        let Some(pending) = &self.pending else {
            return true;
        };
        let mut line = Vec::with_capacity(256);
        line_of(&mut line, r, SystemTime::now());
        line.push(b'\n');
        let (buffer, wake) = &**pending;
        let mut buf = buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() + line.len() > BUFFERED {
            drop(buf);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!("the audit log is not keeping up: lines are being dropped");
            }
            return false;
        }
        let before = buf.len();
        buf.extend_from_slice(&line);
        let crossed = before < BUFFERED / 4 && buf.len() >= BUFFERED / 4;
        drop(buf);
        if crossed {
            wake.notify_one();
        }
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the last write failed.
    pub fn failing(&self) -> bool {
        !self.healthy.load(Ordering::Relaxed)
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Appends the JSON line of a record (without its newline) to `out`.
fn line_of(out: &mut Vec<u8>, r: &Record<'_>, now: SystemTime) {
    use std::io::Write as _;
    let text = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"kind\":",
        humantime::format_rfc3339_millis(now)
    );
    text(out, r.kind);
    out.extend_from_slice(b",\"profile\":");
    text(out, r.profile);
    out.extend_from_slice(b",\"outcome\":");
    text(out, r.outcome);
    if let Some(c) = r.caller {
        let num = |out: &mut Vec<u8>, n: Option<u32>| {
            let _ = match n {
                Some(n) => write!(out, "{n}"),
                None => write!(out, "null"),
            };
        };
        out.extend_from_slice(b",\"caller\":{\"uid\":");
        num(out, c.uid);
        out.extend_from_slice(b",\"gid\":");
        num(out, c.gid);
        out.extend_from_slice(b",\"pid\":");
        num(out, c.pid);
        out.extend_from_slice(b",\"exe\":");
        match &c.exe {
            Some(e) => text(out, &e.to_string_lossy()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"unit\":");
        match &c.unit {
            Some(u) => text(out, u),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"via\":");
        text(out, c.via);
        out.push(b'}');
    }
    if let Some(t) = r.token {
        out.extend_from_slice(b",\"token\":");
        text(out, &t.fingerprint());
    }
    if let Some(d) = r.upstream {
        let _ = write!(out, ",\"upstream_ms\":{:.1}", d.as_secs_f64() * 1e3);
    }
    out.push(b'}');
}

fn write_loop(pending: &(Mutex<Vec<u8>>, Condvar), mut sink: Sink, healthy: &AtomicBool) {
    let (buffer, wake) = pending;
    let mut batch = Vec::with_capacity(64 << 10);
    loop {
        {
            let buf = buffer.lock().unwrap_or_else(|e| e.into_inner());
            let (mut buf, _) = wake
                .wait_timeout_while(buf, WRITE_EVERY, |b| b.len() < BUFFERED / 4)
                .unwrap_or_else(|e| e.into_inner());
            if buf.is_empty() {
                continue;
            }
            // Taken whole: the lock is never held across a write.
            std::mem::swap(&mut *buf, &mut batch);
        }
        match sink.write(&batch) {
            Ok(()) => {
                if !healthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the audit log can be written again");
                }
            }
            Err(e) => {
                if healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(
                        "cannot write the audit log: {e}; going on without it until it can be written"
                    );
                }
            }
        }
        batch.clear();
    }
}

/// Where lines go.
enum Sink {
    File {
        dir: PathBuf,
        max_size: u64,
        keep: usize,
        file: Option<(std::fs::File, u64)>,
    },
    Syslog {
        socket: PathBuf,
        io: Option<std::os::unix::net::UnixDatagram>,
    },
}

impl Sink {
    fn new(def: &AuditDef) -> Result<Sink, Error> {
        Ok(match &def.sink {
            AuditSink::File => Sink::File {
                dir: broker_core::paths::state_dir().ok_or_else(|| {
                    Error::config(
                        "no state directory for the audit log: set XDG_STATE_HOME or HOME",
                    )
                })?,
                max_size: def.max_size,
                keep: def.keep,
                file: None,
            },
            AuditSink::Syslog(socket) => Sink::Syslog {
                socket: socket.clone(),
                io: None,
            },
        })
    }

    fn open(&mut self) -> Result<(), Error> {
        match self {
            Sink::File { dir, file, .. } => {
                let fd = private_dir(dir)?;
                let f = open_log(&fd, dir)?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                *file = Some((f, size));
            }
            Sink::Syslog { io, .. } => {
                *io = Some(std::os::unix::net::UnixDatagram::unbound().map_err(|e| {
                    Error::internal(format!("cannot open a socket for syslog: {e}"))
                })?);
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: &[u8]) -> std::io::Result<()> {
        let reopen = match self {
            Sink::File { file, .. } => file.is_none(),
            Sink::Syslog { io, .. } => io.is_none(),
        };
        if reopen {
            self.open()
                .map_err(|e| std::io::Error::other(e.message().to_owned()))?;
        }
        match self {
            Sink::File {
                dir,
                max_size,
                keep,
                file,
            } => {
                // Whole lines, each file within `max_size` (a single longer line gets a file of its own).
                let mut rest = batch;
                while !rest.is_empty() {
                    let size = file.as_ref().map_or(0, |(_, s)| *s);
                    let room = usize::try_from(max_size.saturating_sub(size)).unwrap_or(usize::MAX);
                    let fits = rest[..room.min(rest.len())]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map(|i| i + 1);
                    let take = match fits {
                        Some(n) => n,
                        None if size > 0 => {
                            *file = None;
                            rotate(dir, *keep)?;
                            let fd = private_dir(dir)
                                .map_err(|e| std::io::Error::other(e.message().to_owned()))?;
                            let f = open_log(&fd, dir)
                                .map_err(|e| std::io::Error::other(e.message().to_owned()))?;
                            *file = Some((f, 0));
                            continue;
                        }
                        None => rest
                            .iter()
                            .position(|b| *b == b'\n')
                            .map_or(rest.len(), |i| i + 1),
                    };
                    let Some((f, size)) = file else {
                        return Err(std::io::Error::other("the audit log is not open"));
                    };
                    let written = f.write_all(&rest[..take]);
                    if written.is_err() {
                        // Whatever part went in is not known: start again from the file's real size.
                        *file = None;
                        return written;
                    }
                    *size += take as u64;
                    rest = &rest[take..];
                }
                Ok(())
            }
            Sink::Syslog { socket, io } => {
                let Some(io) = io else {
                    return Err(std::io::Error::other("no syslog socket"));
                };
                // RFC 3164 to the local socket: facility authpriv (10), severity info (6).
                let pid = std::process::id();
                for line in batch.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let mut msg = format!("<86>broker[{pid}]: ").into_bytes();
                    msg.extend_from_slice(line);
                    io.send_to(&msg, &*socket)?;
                }
                Ok(())
            }
        }
    }
}

fn private_dir(dir: &std::path::Path) -> Result<OwnedFd, Error> {
    broker_core::paths::open_private_dir(dir, true)?
        .ok_or_else(|| Error::internal(format!("cannot create {}", dir.display())))
}

/// `audit.log` in the open directory: appended to, created 0600, never through a symlink.
fn open_log(dir: &OwnedFd, path: &std::path::Path) -> Result<std::fs::File, Error> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        dir,
        FILE,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| Error::internal(format!("cannot open {}: {e}", path.join(FILE).display())))?;
    Ok(std::fs::File::from(fd))
}

/// `audit.log` → `.1` → `.2` ... → `.keep`, the oldest dropped.
fn rotate(dir: &std::path::Path, keep: usize) -> std::io::Result<()> {
    let name = |i: usize| {
        if i == 0 {
            dir.join(FILE)
        } else {
            dir.join(format!("{FILE}.{i}"))
        }
    };
    let _ = std::fs::remove_file(name(keep));
    for i in (0..keep).rev() {
        match std::fs::rename(name(i), name(i + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Every file of the log in `dir`, oldest first.
pub fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(&format!("{FILE}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(dir.join(FILE));
    out
}

/// Tells the audit log of every upstream fetch (once the log is started), and the next observer (the metrics).
pub struct Fetches {
    pub audit: Arc<std::sync::OnceLock<Arc<Audit>>>,
    pub next: Arc<dyn Observer>,
}

impl Observer for Fetches {
    fn upstream(&self, profile: &str, outcome: Result<(), ErrorKind>, took: Duration) {
        self.next.upstream(profile, outcome, took);
        let Some(audit) = self.audit.get() else {
            return;
        };
        let outcome = match outcome {
            Ok(()) => "fetched",
            Err(k) => k.as_str(),
        };
        audit.record(&Record {
            kind: "fetch",
            profile,
            caller: None,
            outcome,
            token: None,
            upstream: Some(took),
        });
    }

    fn retrying(&self, profile: &str, attempt: u32, error: &Error, next_in: Duration) {
        self.next.retrying(profile, attempt, error, next_in);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_holds_the_fingerprint_never_the_token() {
        let token = AccessToken::new(
            secrecy::SecretString::from("s3cret-token".to_owned()),
            "Bearer",
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_secs(60),
        );
        let caller = Caller {
            uid: Some(1000),
            exe: Some("/usr/bin/curl".into()),
            via: "unix socket",
            ..Default::default()
        };
        let mut line = Vec::new();
        line_of(
            &mut line,
            &Record {
                kind: "daemon",
                profile: "p",
                caller: Some(&caller),
                outcome: "hit",
                token: Some(&token),
                upstream: None,
            },
            SystemTime::UNIX_EPOCH,
        );
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["token"], token.fingerprint());
        assert_eq!(v["caller"]["exe"], "/usr/bin/curl");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert!(!String::from_utf8_lossy(&line).contains("s3cret"));
    }

    #[test]
    fn rotation_keeps_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..10 {
            std::fs::write(dir.path().join(FILE), format!("{round}\n")).unwrap();
            rotate(dir.path(), 3).unwrap();
        }
        let names: Vec<String> = files(dir.path())
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["audit.log.3", "audit.log.2", "audit.log.1"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap(),
            "9\n"
        );
    }
}
