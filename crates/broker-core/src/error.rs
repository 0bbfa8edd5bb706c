//! The one error type of the core: a class (which decides the exit code) and a message that never holds a secret.

use std::fmt;
use std::time::SystemTime;

/// What kind of failure happened. Each maps to one exit code of the CLI (docs/reference.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A local failure: cache directory not writable, an I/O error, a bug. Exit code 1.
    Internal,
    /// Bad command-line arguments or a bad request from an embedder. Exit code 2.
    Usage,
    /// A config or provider file is invalid, a profile is unknown, a secret source failed,
    /// or the token request itself is wrong (404, 415, `invalid_scope`, ...). Exit code 3.
    Config,
    /// The provider refused these credentials (401, 403, `invalid_client`, ...). Exit code 4.
    Rejected,
    /// The provider could not be reached, or asked us to wait (timeouts, 408, 429, 5xx). Exit code 5.
    Unavailable,
    /// The provider answered, but not with a usable token. Exit code 6.
    BadResponse,
}

impl ErrorKind {
    /// The process exit code of this class.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Config => 3,
            ErrorKind::Rejected => 4,
            ErrorKind::Unavailable => 5,
            ErrorKind::BadResponse => 6,
        }
    }

    /// The class name used in JSON error objects.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Internal => "internal",
            ErrorKind::Usage => "usage",
            ErrorKind::Config => "config",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::BadResponse => "bad_response",
        }
    }

    /// Parses a class name as produced by [`ErrorKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "internal" => ErrorKind::Internal,
            "usage" => ErrorKind::Usage,
            "config" => ErrorKind::Config,
            "rejected" => ErrorKind::Rejected,
            "unavailable" => ErrorKind::Unavailable,
            "bad_response" => ErrorKind::BadResponse,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a file an error points: for a front end to draw (the CLI uses `annotate-snippets`) or to report as
/// fields (`broker token --format json`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diagnostic {
    /// The file, as shown to the user (built-ins show as `<built-in>/name.toml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The line itself, with the values of secret literals replaced by `[redacted]`.
    pub excerpt: String,
    /// The byte range of `excerpt` the error is about.
    pub span: std::ops::Range<usize>,
    /// What would fix it: the closest valid name, the valid names, an example.
    pub hint: Option<String>,
}

/// An error of the broker: a class (which decides the exit code), a message that names the profile, provider, URL
/// and status where known and never a secret or a token, and optionally where in a file it points
/// ([`Error::diagnostic`]) and the underlying error ([`std::error::Error::source`]).
///
/// `Display` is one line: `file:line:column: message` when it points into a file, else the message.
///
/// ```
/// use broker_core::{Config, ErrorKind};
///
/// let e = Config::parse("[profiles.p]\nkind = \"oauth2\"\nmin_tl = \"5m\"\n").expect_err("a typo");
/// assert_eq!(e.kind(), ErrorKind::Config); // exit code 3
/// let d = e.diagnostic().expect("it points into the file");
/// assert_eq!((d.file.as_str(), d.line, d.column), ("<inline>", 3, 1));
/// assert_eq!(d.hint.as_deref(), Some("did you mean `min_ttl`?"));
/// assert_eq!(e.to_string(), "<inline>:3:1: unknown key `min_tl` in profile `p`");
/// ```
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    retry_at: Option<SystemTime>,
    diagnostic: Option<Box<Diagnostic>>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.diagnostic {
            Some(d) => write!(f, "{}:{}:{}: {}", d.file, d.line, d.column, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            retry_at: None,
            diagnostic: None,
            source: None,
        }
    }
    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// Shorthand for [`ErrorKind::Config`].
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// Shorthand for [`ErrorKind::Usage`].
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
    /// Shorthand for [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    /// Shorthand for [`ErrorKind::BadResponse`].
    pub fn bad_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadResponse, message)
    }
    /// Shorthand for [`ErrorKind::Rejected`].
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, message)
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Where in a file this error points, if it does.
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        self.diagnostic.as_deref()
    }

    /// Records where in a file this error points.
    pub fn with_diagnostic(mut self, d: Diagnostic) -> Self {
        self.diagnostic = Some(Box::new(d));
        self
    }

    /// Records the underlying error, returned by [`std::error::Error::source`]. Its text must hold no secret: it
    /// may be printed.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// The message, without the class or the position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// When the provider said it may be asked again, if it said so.
    pub fn retry_at(&self) -> Option<SystemTime> {
        self.retry_at
    }

    /// Records when the provider may be asked again.
    pub fn with_retry_at(mut self, at: Option<SystemTime>) -> Self {
        self.retry_at = at;
        self
    }

    /// Replaces every occurrence of each of `secrets` in the message with `[redacted]` (docs/security.md,
    /// "provider text"): for a provider that echoes the request back.
    pub fn redacted(mut self, secrets: &[String]) -> Self {
        self.message = crate::http::redact(&self.message, secrets);
        self
    }

    /// Puts `context` in front of the message: `context: message`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The one rule that names the profile in an error from its provider, built-in or custom: `profile `name`: `
    /// in front, unless the message already starts with it (the built-in providers say `profile `name`
    /// (provider p, environment e)`).
    pub fn for_profile(self, profile: &str) -> Self {
        let named = format!("profile `{profile}`");
        if self.message.starts_with(&named) {
            self
        } else {
            self.context(named)
        }
    }
}

/// The one "unknown profile" error, wherever a name is looked up: the closest known name, then the known ones, or
/// (when there are none) the files that were read.
pub fn unknown_profile(name: &str, known: &[&str], files_read: &[String]) -> Error {
    let mut msg = format!("unknown profile `{name}`");
    if let Some(c) = crate::config::closest(name, known.iter().copied()) {
        msg.push_str(&format!("; did you mean `{c}`?"));
    }
    if !known.is_empty() {
        msg.push_str(&format!("; known profiles: {}", known.join(", ")));
    } else if files_read.is_empty() {
        msg.push_str("; no profiles are configured");
    } else {
        msg.push_str(&format!(
            "; no profiles are configured (files read: {})",
            files_read.join(", ")
        ));
    }
    Error::config(msg)
}

/// The result type of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
