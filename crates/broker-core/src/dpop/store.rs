//! A generated DPoP key's file: in the disk cache's `dpop/` (0700, ours), created once `O_EXCL` 0600 and linked into
//! place so that concurrent creators agree, read `O_NOFOLLOW`. *Invariant: a key file that is a symlink, not a
//! regular file of ours, or open to group or others is refused, never used.*

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::DpopKey;
use crate::error::{Error, Result};

/// The file name a generated key of `profile` is kept under (in the disk cache's `dpop/`): the profile's name when
/// it is a plain one, else a hash of it.
pub fn generated_key_name(profile: &str) -> String {
    let plain = !profile.starts_with('.')
        && !profile.is_empty()
        && profile
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        format!("{profile}.pem")
    } else {
        format!(
            "{}.pem",
            hex::encode(&Sha256::digest(profile.as_bytes())[..16])
        )
    }
}

/// The generated key `name` in `dir` if one was made, checked as [`load_or_create`] checks it; never makes one.
pub fn existing(dir: &Path, name: &str) -> Result<Option<DpopKey>> {
    let Some(fd) = crate::paths::open_private_dir(dir, false)? else {
        return Ok(None);
    };
    let path = dir.join(name);
    match read_ours(&fd, name, &path)? {
        None => Ok(None),
        Some(pem) => DpopKey::from_pem(pem.expose_secret().as_bytes())
            .map(Some)
            .map_err(|e| Error::config(format!("the DPoP key {}: {e}", path.display()))),
    }
}

/// The generated key `name` in `dir`: read when it is there (and ours, 0600), else created once. Two processes
/// creating it at once end up with the same key: each writes its own temp file and links it to `name`, and the
/// one that finds `name` taken reads the winner's.
pub fn load_or_create(dir: &Path, name: &str) -> Result<DpopKey> {
    let fd = crate::paths::open_private_dir(dir, true)?
        .ok_or_else(|| Error::internal(format!("cannot create {}", dir.display())))?;
    let path = dir.join(name);
    for _ in 0..3 {
        if let Some(pem) = read_ours(&fd, name, &path)? {
            return DpopKey::from_pem(pem.expose_secret().as_bytes()).map_err(|e| {
                Error::config(format!(
                    "the DPoP key {}: {e}; remove it to make a new one",
                    path.display()
                ))
            });
        }
        let (key, pem) = DpopKey::generate().map_err(Error::internal)?;
        let tmp = format!(".{name}.{:016x}.tmp", fastrand::u64(..));
        crate::paths::write_atomic(
            &fd,
            &tmp,
            &tmp,
            pem.expose_secret().as_bytes(),
            0o600,
            (None, None),
        )
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))?;
        let linked = rustix::fs::linkat(&fd, tmp.as_str(), &fd, name, rustix::fs::AtFlags::empty());
        let _ = rustix::fs::unlinkat(&fd, tmp.as_str(), rustix::fs::AtFlags::empty());
        match linked {
            Ok(()) => {
                tracing::info!(
                    "created the DPoP key {} ({})",
                    path.display(),
                    key.thumbprint()
                );
                return Ok(key);
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot create {}: {e}",
                    path.display()
                )))
            }
        }
    }
    Err(Error::internal(format!(
        "cannot create or read {}",
        path.display()
    )))
}

/// The file `name` in the open directory `fd`, if it exists: a regular file of ours that no one else can read or
/// write (a key readable by others is as good as published; one they can write is theirs).
fn read_ours(fd: &std::os::fd::OwnedFd, name: &str, path: &Path) -> Result<Option<SecretString>> {
    use rustix::fs::{FileType, Mode, OFlags};
    use std::io::Read;
    let file = match rustix::fs::openat(
        fd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(Error::config(format!(
                "the DPoP key {} is a symlink: refusing it",
                path.display()
            )))
        }
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot open {}: {e}",
                path.display()
            )))
        }
    };
    let st = rustix::fs::fstat(&file)
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))?;
    let me = crate::paths::euid();
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_uid != me
        || st.st_mode & 0o077 != 0
    {
        return Err(Error::config(format!(
            "the DPoP key {} is not a private file of ours (owner uid {}, mode {:o}): refusing it; remove it to \
             make a new one",
            path.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    let mut text = String::new();
    std::fs::File::from(file)
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))?;
    Ok(Some(SecretString::from(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_others_can_read_or_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("dpop");
        let a = load_or_create(&keys, "p.pem").unwrap();
        let b = load_or_create(&keys, "p.pem").unwrap();
        assert_eq!(a.thumbprint(), b.thumbprint());
        let file = keys.join("p.pem");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&keys, "p.pem").unwrap_err();
        assert!(e.message().contains("not a private file"), "{e}");
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
        assert!(load_or_create(&keys, "p.pem")
            .unwrap_err()
            .message()
            .contains("symlink"));
    }
}
