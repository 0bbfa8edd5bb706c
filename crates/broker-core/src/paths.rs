//! XDG directories (docs/reference.md §1, §3) and private directories. The only place besides `secret` that
//! reads the process environment.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn xdg(var: &str, fallback: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() && Path::new(&v).is_absolute() => Some(PathBuf::from(v)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(fallback)),
    }
}

/// `$XDG_CONFIG_HOME/broker`, else `~/.config/broker`.
pub fn config_dir() -> Option<PathBuf> {
    xdg("XDG_CONFIG_HOME", ".config").map(|p| p.join("broker"))
}

/// The config file: `BROKER_CONFIG`, else `config_dir()/config.toml`. The flag, when given, wins over both
/// and is handled by the caller.
pub fn config_file() -> Option<PathBuf> {
    match std::env::var_os("BROKER_CONFIG") {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => config_dir().map(|d| d.join("config.toml")),
    }
}

/// Whether `BROKER_CONFIG` names the config file (which then must exist).
pub fn config_file_is_explicit() -> bool {
    std::env::var_os("BROKER_CONFIG").is_some_and(|v| !v.is_empty())
}

/// `$XDG_CACHE_HOME/broker`, else `~/.cache/broker`.
pub fn cache_dir() -> Option<PathBuf> {
    xdg("XDG_CACHE_HOME", ".cache").map(|p| p.join("broker"))
}

/// `$XDG_STATE_HOME/broker`, else `~/.local/state/broker`: the audit log.
pub fn state_dir() -> Option<PathBuf> {
    xdg("XDG_STATE_HOME", ".local/state").map(|p| p.join("broker"))
}

/// `$XDG_RUNTIME_DIR/broker`, else `cache_dir()/run`. Never `/tmp`.
pub fn runtime_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(v) if !v.is_empty() && Path::new(&v).is_absolute() => {
            Some(PathBuf::from(v).join("broker"))
        }
        _ => cache_dir().map(|p| p.join("run")),
    }
}

/// The effective uid, read once: ownership checks are on the warm path, and it does not change in a broker.
pub(crate) fn euid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// Creates `dir` (and parents) if missing and makes sure it is ours and mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    open_private_dir(dir, true).map(drop)
}

/// Opens `dir` (creating it 0700 when `create` and it is missing) without following a symlink, and checks the
/// open directory (docs/security.md, "cache trust"): it must be a real directory owned by the effective user. One
/// that belongs to someone else is refused, never chmod-ed or written into; one of ours with group or other
/// access is tightened to 0700 through the descriptor. `Ok(None)` when it is missing and `create` is false.
///
/// Everything under it is then opened relative to the returned descriptor (`openat`), so a directory swapped
/// for a symlink after this check is never followed.
pub fn open_private_dir(dir: &Path, create: bool) -> Result<Option<OwnedFd>> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(dir, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) if create => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
            rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| dir_error(dir, e))?
        }
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(dir_error(dir, e)),
    };
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", dir.display())))?;
    let me = euid();
    if st.st_uid != me {
        return Err(foreign(dir, st.st_uid, me));
    }
    if st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .map_err(|e| Error::internal(format!("cannot chmod 0700 {}: {e}", dir.display())))?;
    }
    Ok(Some(fd))
}

fn foreign(dir: &Path, owner: u32, me: u32) -> Error {
    Error::internal(format!(
        "{} belongs to uid {owner}, not to us (uid {me}): refusing to use it; point XDG_CACHE_HOME (or \
         XDG_RUNTIME_DIR) at a directory of your own",
        dir.display()
    ))
}

fn dir_error(dir: &Path, e: rustix::io::Errno) -> Error {
    match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => Error::internal(format!(
            "{} is a symlink or not a directory: refusing to use it",
            dir.display()
        )),
        e => Error::internal(format!("cannot open {}: {e}", dir.display())),
    }
}

/// Who a written file is given to: a uid and a gid, each optional (the writer's when absent).
pub type Owner = (Option<u32>, Option<u32>);

/// The one atomic file write of the broker (cache entries, daemon token files and key): in the open directory
/// `dir`, the temp file `tmp` is created `O_CREAT | O_EXCL | O_NOFOLLOW` (a stray one, of a writer that died, is
/// unlinked first: unlinking never follows a symlink), given exactly `mode` and `owner`, written and fsynced, then
/// renamed over `name`, and the directory is fsynced. A reader sees the old file or the new one, never a torn one.
pub fn write_atomic(
    dir: &OwnedFd,
    tmp: &str,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Owner,
) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    use std::io::Write;
    let create = || {
        rustix::fs::openat(
            dir,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    };
    let fd = match create() {
        Err(rustix::io::Errno::EXIST) => {
            rustix::fs::unlinkat(dir, tmp, AtFlags::empty())?;
            create()
        }
        other => other,
    }?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    if owner != (None, None) {
        let uid = owner.0.map(rustix::fs::Uid::from_raw);
        let gid = owner.1.map(rustix::fs::Gid::from_raw);
        rustix::fs::fchown(&fd, uid, gid)?;
    }
    let mut file = fs::File::from(fd);
    file.write_all(bytes)?;
    file.sync_all()?;
    rustix::fs::renameat(dir, tmp, dir, name)?;
    rustix::fs::fsync(dir)?;
    Ok(())
}
