//! XDG directories (contract §1, §3) and private directories. The only place besides `secret` that
//! reads the process environment.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
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

/// `$XDG_RUNTIME_DIR/broker`, else `cache_dir()/run`. Never `/tmp`.
pub fn runtime_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(v) if !v.is_empty() && Path::new(&v).is_absolute() => {
            Some(PathBuf::from(v).join("broker"))
        }
        _ => cache_dir().map(|p| p.join("run")),
    }
}

/// Creates `dir` (and parents) if missing and makes sure it is ours and mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let meta = fs::metadata(dir)
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Error::internal(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(Error::internal(format!(
            "{} belongs to another user",
            dir.display()
        )));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::internal(format!("cannot chmod 0700 {}: {e}", dir.display())))?;
    }
    Ok(())
}
