//! The CLI's status line while a token request waits on its provider (docs/reference.md §4, outages): shown only
//! when stderr is a terminal and the wait has passed a second, rewritten on each failed attempt, cleared when done.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use broker_core::{Error, ErrorKind, Observer};

/// How long a call waits before it says what it is waiting for.
pub const QUIET_FOR: Duration = Duration::from_secs(1);

pub struct Feedback {
    /// Whether stderr is a terminal, asked only when there is something to draw: a warm hit makes no syscall here.
    tty: OnceLock<bool>,
    started: Instant,
    shown: AtomicBool,
    /// The latest line, drawn once the call has waited [`QUIET_FOR`].
    line: Mutex<Option<String>>,
}

/// The process's one status line.
pub fn get() -> Arc<Feedback> {
    static FEEDBACK: OnceLock<Arc<Feedback>> = OnceLock::new();
    FEEDBACK
        .get_or_init(|| {
            Arc::new(Feedback {
                tty: OnceLock::new(),
                started: Instant::now(),
                shown: AtomicBool::new(false),
                line: Mutex::new(None),
            })
        })
        .clone()
}

impl Feedback {
    fn draw(&self, text: &str) {
        if !*self.tty.get_or_init(|| std::io::stderr().is_terminal()) {
            return;
        }
        let text: String = text.chars().take(160).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.shown.store(true, Ordering::Relaxed);
    }

    /// The call has waited [`QUIET_FOR`]: say what for.
    pub fn waiting(&self, profile: &str) {
        let line = self.line.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.draw(
            &line.unwrap_or_else(|| format!("waiting for profile `{profile}`'s provider...")),
        );
    }

    /// The call is over: clear the line if one was drawn.
    pub fn done(&self) {
        if self.shown.swap(false, Ordering::Relaxed) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

/// `(endpoint, reason)` of a built-in provider's error (`...: POST <url>: <reason>`), else the message alone.
fn split(message: &str) -> (Option<&str>, &str) {
    match message.split_once("POST ") {
        Some((_, rest)) => match rest.split_once(": ") {
            Some((url, reason)) => (Some(url), reason),
            None => (Some(rest), ""),
        },
        None => (None, message),
    }
}

impl Observer for Feedback {
    fn upstream(&self, _: &str, _: Result<(), ErrorKind>, _: Duration) {}

    fn retrying(&self, profile: &str, attempt: u32, error: &Error, next_in: Duration) {
        let (url, reason) = split(error.message());
        let what = url.map_or_else(|| format!("profile `{profile}`"), str::to_owned);
        let line = format!(
            "waiting for {what}: attempt {attempt} failed ({reason}), next in {:.1}s",
            next_in.as_secs_f64()
        );
        if self.started.elapsed() >= QUIET_FOR {
            self.draw(&line);
        }
        *self.line.lock().unwrap_or_else(|e| e.into_inner()) = Some(line);
    }
}
