//! Where client ids, secrets, keys and subject tokens come from: a literal, an environment variable, a file, a
//! command, or the OS keyring.
//!
//! Values are held in [`SecretString`] and never formatted; `Debug` shows the source, not the value.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::credfile::{Check, CredentialFile, Material};
use crate::error::{Error, Result};

mod command;
use command::run_command;

/// How long a `{ command = [...] }` source may run, and how long an async read of any source that may block (a
/// file, the keyring) may take before the fetch fails: a stuck source never stalls the daemon.
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
    /// `{ file = "PATH" }`: the first line of a file (the whole file for PEM material); a leading `~/` is the
    /// home directory. Read by the rule of docs/security.md, "credential files": a regular file of ours (or
    /// root's) that others cannot write, at most 64 KiB, reached through no directory another user controls.
    File(PathBuf),
    /// `{ command = ["argv0", ...] }`: a program's trimmed standard output. No shell, stdin closed,
    /// an environment of `PATH` and `HOME` only, at most [`COMMAND_TIMEOUT`].
    Command(Vec<String>),
    /// `{ keyring = "service/account" }`: the OS keyring (Linux kernel keyutils, macOS Keychain).
    Keyring {
        /// The service part.
        service: String,
        /// The account part.
        account: String,
    },
}

/// How much of a source's text is the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The first line, trimmed: ids, secrets, tokens.
    Line,
    /// All of it: PEM private keys (docs/reference.md §8).
    Whole,
    /// All of it, and not secret: certificates (a file of one may be readable by others without a warning).
    Public,
}

impl Shape {
    fn material(self) -> Material {
        match self {
            Shape::Line | Shape::Whole => Material::Secret,
            Shape::Public => Material::Certificate,
        }
    }
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
            SecretSource::Keyring { service, account } => format!("keyring {service}/{account}"),
        }
    }

    /// Reads the secret (its first line).
    pub fn resolve(&self) -> Result<SecretString> {
        self.read(Shape::Line)
    }

    /// Reads the value in `shape` (a file with the whole rule of docs/security.md, "credential files").
    pub fn read(&self, shape: Shape) -> Result<SecretString> {
        self.read_checked(shape, Check::Full)
    }

    fn read_checked(&self, shape: Shape, check: Check) -> Result<SecretString> {
        let value = match self {
            SecretSource::Literal(s) => return Ok(s.clone()),
            SecretSource::Env(name) => std::env::var(name)
                .map_err(|_| Error::config(format!("environment variable {name} is not set")))?,
            SecretSource::File(path) => {
                let path = expand_home(path);
                let bytes = CredentialFile::new(&path, shape.material()).read(check)?;
                String::from_utf8(bytes).map_err(|_| {
                    Error::config(format!("secret file {} is not UTF-8 text", path.display()))
                })?
            }
            SecretSource::Command(argv) => return run_command(argv),
            SecretSource::Keyring { service, account } => keyring_get(service, account)?,
        };
        let value = match shape {
            Shape::Line => value.lines().next().unwrap_or("").trim(),
            Shape::Whole | Shape::Public => value.trim(),
        };
        if value.is_empty() {
            return Err(Error::config(format!("{} is empty", self.describe())));
        }
        Ok(SecretString::from(value.to_owned()))
    }

    /// Reads the secret from async code: a command, a file and the keyring are read on the runtime's blocking
    /// pool, within [`COMMAND_TIMEOUT`], so a slow one (a password manager asking for a PIN, a file on a hung
    /// network mount) does not stall other requests served by the same runtime thread. The environment and a
    /// literal are read in place.
    pub async fn resolve_async(&self) -> Result<SecretString> {
        self.read_async(Shape::Line).await
    }

    /// [`SecretSource::read`] from async code (see [`SecretSource::resolve_async`]).
    pub async fn read_async(&self, shape: Shape) -> Result<SecretString> {
        match self {
            SecretSource::Literal(_) | SecretSource::Env(_) => self.read(shape),
            // A command has a limit of its own, which kills it.
            SecretSource::Command(argv) => {
                let argv = argv.clone();
                tokio::task::spawn_blocking(move || run_command(&argv))
                    .await
                    .map_err(|e| Error::internal(format!("secret command task: {e}")))?
            }
            _ => {
                let source = self.clone();
                off_thread(&self.describe(), move || source.read(shape)).await
            }
        }
    }

    /// What identifies this secret in a cache key: a hash of the value for literal, env and file sources, the
    /// argv for a command and the entry's name for the keyring (so a warm cache hit never runs a command or asks
    /// a keyring, which may prompt).
    pub fn key_material(&self) -> Result<Vec<u8>> {
        self.key_material_of(Shape::Line)
    }

    /// [`SecretSource::key_material`] of the value in `shape`.
    pub fn key_material_of(&self, shape: Shape) -> Result<Vec<u8>> {
        let named = |kind: &str, parts: &[&str]| {
            let mut out = format!("{kind}\0").into_bytes();
            for a in parts {
                out.extend_from_slice(a.as_bytes());
                out.push(0);
            }
            out
        };
        match self {
            SecretSource::Command(argv) => {
                let parts: Vec<&str> = argv.iter().map(String::as_str).collect();
                Ok(named("command", &parts))
            }
            SecretSource::Keyring { service, account } => Ok(named("keyring", &[service, account])),
            other => {
                // The warm path's cache key: the checks of the open file, not the walk (docs/security.md).
                let value = other.read_checked(shape, Check::Descriptor)?;
                let mut out = b"value\0".to_vec();
                out.extend_from_slice(&Sha256::digest(value.expose_secret().as_bytes()));
                Ok(out)
            }
        }
    }

    /// Stores `value` in the keyring entry this source names (`broker secret set`).
    pub fn store(&self, value: &SecretString) -> Result<()> {
        match self {
            SecretSource::Keyring { service, account } => {
                keyring_entry(service, account)?
                    .set_password(value.expose_secret())
                    .map_err(|e| keyring_error(service, account, e))
            }
            other => Err(Error::usage(format!(
                "{} is not a keyring entry: only {{ keyring = \"service/account\" }} sources can be set",
                other.describe()
            ))),
        }
    }

    /// The value of the keyring entry this source names, or `None` when it has none (other sources: [`Self::read`]).
    pub fn read_if_present(&self, shape: Shape) -> Result<Option<SecretString>> {
        match self {
            #[cfg(feature = "keyring")]
            SecretSource::Keyring { service, account } => {
                match keyring_entry(service, account)?.get_password() {
                    Ok(v) => Ok(Some(SecretString::from(v))),
                    Err(keyring::Error::NoEntry) => Ok(None),
                    Err(e) => Err(keyring_error(service, account, e)),
                }
            }
            other => other.read(shape).map(Some),
        }
    }

    /// Deletes the keyring entry this source names (`broker secret delete`). Returns whether there was one.
    pub fn delete(&self) -> Result<bool> {
        match self {
            SecretSource::Keyring { service, account } => {
                match keyring_entry(service, account)?.delete_credential() {
                    Ok(()) => Ok(true),
                    #[cfg(feature = "keyring")]
                    Err(keyring::Error::NoEntry) => Ok(false),
                    Err(e) => Err(keyring_error(service, account, e)),
                }
            }
            other => Err(Error::usage(format!(
                "{} is not a keyring entry: only {{ keyring = \"service/account\" }} sources can be deleted",
                other.describe()
            ))),
        }
    }
}

/// A subject or actor token of a token exchange (docs/reference.md §8).
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// Read from a secret source, first line.
    Secret(SecretSource),
    /// `{ profile = "other" }`: that profile's current token, from the same broker and cache.
    Profile(String),
}

impl TokenSource {
    /// A description for messages and `broker check`, never the value.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Secret(s) => s.describe(),
            TokenSource::Profile(p) => format!("profile {p}"),
        }
    }

    /// What identifies the token in a cache key: the profile's name, or the source's key material (a hash of a
    /// file's content, so a new subject token means a new entry).
    pub fn key_material(&self) -> Result<Vec<u8>> {
        match self {
            TokenSource::Secret(s) => s.key_material(),
            TokenSource::Profile(p) => Ok([b"profile\0".as_slice(), p.as_bytes()].concat()),
        }
    }
}

#[cfg(feature = "keyring")]
fn keyring_entry(service: &str, account: &str) -> Result<keyring::Entry> {
    // The kernel keyring store keeps entries in the user's persistent keyring, reached through the session keyring.
    // A process with no session keyring of its own (a container, a service started without PAM) would fall back to
    // the user-session keyring, which cannot link the persistent one: join a fresh session keyring first, as
    // `pam_keyinit` does for a login. A process that has one keeps it.
    #[cfg(target_os = "linux")]
    {
        static JOINED: std::sync::Once = std::sync::Once::new();
        JOINED.call_once(|| {
            let _ = linux_keyutils::KeyRing::from_special_id(
                linux_keyutils::KeyRingIdentifier::Session,
                true,
            );
        });
    }
    keyring::Entry::new(service, account).map_err(|e| keyring_error(service, account, e))
}

#[cfg(feature = "keyring")]
fn keyring_error(service: &str, account: &str, e: keyring::Error) -> Error {
    match e {
        keyring::Error::NoEntry => Error::config(format!(
            "keyring {service}/{account} has no entry: store one with `broker secret set <profile>`"
        )),
        // The crate's messages name the store and the entry, never the value.
        e => Error::config(format!("keyring {service}/{account}: {e}")),
    }
}

#[cfg(feature = "keyring")]
fn keyring_get(service: &str, account: &str) -> Result<String> {
    keyring_entry(service, account)?
        .get_password()
        .map_err(|e| keyring_error(service, account, e))
}

#[cfg(not(feature = "keyring"))]
struct NoKeyring;

#[cfg(not(feature = "keyring"))]
impl NoKeyring {
    fn set_password(&self, _: &str) -> Result<()> {
        Err(Error::config(
            "this build has no keyring support (feature `keyring`)",
        ))
    }
    fn delete_credential(&self) -> Result<()> {
        self.set_password("")
    }
}

#[cfg(not(feature = "keyring"))]
fn keyring_entry(_: &str, _: &str) -> Result<NoKeyring> {
    Ok(NoKeyring)
}

#[cfg(not(feature = "keyring"))]
fn keyring_error(_: &str, _: &str, e: Error) -> Error {
    e
}

#[cfg(not(feature = "keyring"))]
fn keyring_get(_: &str, _: &str) -> Result<String> {
    NoKeyring.set_password("").map(|()| String::new())
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

/// Runs `read` on the blocking pool within [`COMMAND_TIMEOUT`]; at the limit the caller gets an error naming
/// `what` (the read itself may still be stuck on its thread, which no longer holds anything up).
pub(crate) async fn off_thread<T: Send + 'static>(
    what: &str,
    read: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, tokio::task::spawn_blocking(read)).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => Err(Error::internal(format!("reading {what}: {e}"))),
        Err(_) => Err(Error::config(format!(
            "{what} did not answer within {}s",
            COMMAND_TIMEOUT.as_secs()
        ))),
    }
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
    fn command_key_material_does_not_run_the_command() {
        let s = SecretSource::Command(vec!["/nonexistent/never-run".into()]);
        assert!(s.key_material().is_ok());
    }
}
