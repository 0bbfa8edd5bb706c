//! The token cache on disk (docs/reference.md §3): one versioned JSON entry per key, 0600 in a 0700 directory,
//! written by temp file + fsync + rename + directory fsync, with a separate `.lock` file per key.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::paths::open_private_dir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

mod entry;
pub use entry::*;

/// A cache key: SHA-256 over everything that decides which token a request gets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Hashes `parts`, each length-prefixed so no two lists collide.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        CacheKey(h.finalize().into())
    }

    /// Lower-case hex, the entry's file stem.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The disk cache directory.
#[derive(Clone)]
pub struct DiskCache {
    dir: PathBuf,
    /// Entries sealed under a key in the keyring (default), or plain (`cache_encryption = "off"`).
    sealing: Option<Arc<OnceLock<crate::seal::Cipher>>>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("sealed", &self.sealing.is_some())
            .finish()
    }
}

/// What a sealed entry file starts with, before the nonce and the ciphertext.
const SEALED: &[u8] = b"broker-sealed-v1\n";

/// Holds the cross-process lock of one key until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

/// Flags of every file opened in the cache directory: never through a symlink, never inherited by a child.
fn at_flags() -> OFlags {
    OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Checks an open cache file (docs/security.md, "cache trust"): `Ok` with its size when it may be trusted, a
/// regular file owned by the effective user and not writable by group or others; else why not.
fn trusted(file: &File) -> Result<u64, String> {
    let st = rustix::fs::fstat(file).map_err(|e| format!("cannot stat it: {e}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err("not a regular file".into());
    }
    if st.st_uid != crate::paths::euid() {
        return Err(format!("owned by uid {}, not by us", st.st_uid));
    }
    if st.st_mode & 0o022 != 0 {
        return Err("writable by group or others".into());
    }
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

impl DiskCache {
    /// A cache in `dir`, its entries sealed under a key kept in the keyring (docs/reference.md §11). Nothing is
    /// touched until the first read, write or lock.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskCache {
            dir: dir.into(),
            sealing: Some(Arc::default()),
        }
    }

    /// Seals entries (`Keyring`, the default) or writes them plain (`Off`, for hosts with no keyring).
    pub fn with_encryption(mut self, mode: crate::config::CacheEncryption) -> Self {
        self.sealing = match mode {
            crate::config::CacheEncryption::Keyring => Some(Arc::default()),
            crate::config::CacheEncryption::Off => None,
        };
        self
    }

    /// The cipher of sealed entries: `None` before any key exists when not `create`-ing one.
    fn cipher(&self, create: bool) -> Result<Option<&crate::seal::Cipher>> {
        let Some(cell) = &self.sealing else {
            return Ok(None);
        };
        if let Some(c) = cell.get() {
            return Ok(Some(c));
        }
        match crate::seal::cache_cipher(create)? {
            Some(c) => Ok(Some(cell.get_or_init(|| c))),
            None => Ok(None),
        }
    }

    /// What a sealed entry is bound to: this cache's directory and the entry's name, so it opens nowhere else.
    fn aad(&self, name: &str) -> Vec<u8> {
        [
            self.dir.as_os_str().as_encoded_bytes(),
            b"\0",
            name.as_bytes(),
        ]
        .concat()
    }

    /// The entry text of a file's `bytes` stored under `name`: opened when sealed under this host's key. `Err` says
    /// why it cannot be used.
    fn unseal(&self, name: &str, bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
        let sealed = bytes.strip_prefix(SEALED);
        match (&self.sealing, sealed) {
            (None, None) => Ok(bytes),
            (None, Some(_)) => Err("sealed, and `cache_encryption` is off".into()),
            (Some(_), None) => Err("not sealed".into()),
            (Some(_), Some(sealed)) => {
                let cipher = self
                    .cipher(false)
                    .map_err(|e| format!("no cache key: {}", e.message()))?
                    .ok_or("no cache key in the keyring yet")?;
                crate::seal::open(cipher, &self.aad(name), sealed)
                    .ok_or_else(|| "it does not open under this host's cache key".into())
            }
        }
    }

    /// The entry text of the entry file at `path` in this cache (opened when sealed), for inspection.
    pub fn entry_text(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(self.unseal(&name, bytes).ok())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_name(key: &CacheKey) -> String {
        format!("{}.json", key.hex())
    }

    fn entry_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(Self::entry_name(key))
    }

    /// Opens the directory for writing: created if missing, ours, 0700.
    fn open_dir(&self) -> Result<OwnedFd> {
        open_private_dir(&self.dir, true)?
            .ok_or_else(|| Error::internal(format!("cannot create {}", self.dir.display())))
    }

    /// Reads the entry of `key`. A missing entry is `Ok(None)`; a corrupt, unknown-version or untrusted one
    /// (a symlink, another user's file, a file others can write) is `Ok(None)` with a warning, and the next write
    /// replaces it. A cache directory that is not a directory of ours is an error: nothing in it is trusted.
    ///
    /// The warm path costs one `fstat` over a plain read: an entry that is a regular file of ours, which others
    /// cannot write, was written by us, and we only ever write into a directory checked on its descriptor
    /// ([`open_private_dir`]). The directory itself is checked the same way only when there is no usable entry, to
    /// say why: a planted or foreign directory is then an error naming it.
    pub fn read(&self, key: &CacheKey) -> Result<Option<Entry>> {
        let path = self.entry_path(key);
        let shown = || path.display().to_string();
        let unusable = |why: &dyn std::fmt::Display| -> Result<Option<Entry>> {
            open_private_dir(&self.dir, false)?;
            tracing::warn!(
                "ignoring cache entry {} ({why}); it will be replaced",
                shown()
            );
            Ok(None)
        };
        let file = match rustix::fs::open(&path, OFlags::RDONLY | at_flags(), Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {
                open_private_dir(&self.dir, false)?;
                return Ok(None);
            }
            Err(e) => return unusable(&e),
        };
        let size = match trusted(&file) {
            Ok(size) if size <= ENTRY_LIMIT => size,
            Ok(size) => return unusable(&format_args!("{size} bytes, too large")),
            Err(why) => return unusable(&why),
        };
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
        if let Err(e) = (&file).take(ENTRY_LIMIT).read_to_end(&mut bytes) {
            tracing::warn!("cannot read cache entry {}: {e}", shown());
            return Ok(None);
        }
        let bytes = match self.unseal(&Self::entry_name(key), bytes) {
            Ok(b) => b,
            Err(why) => {
                // A copied cache (a backup, another host, an image layer) serves nothing, quietly.
                tracing::debug!(
                    "ignoring cache entry {} ({why}); it will be replaced",
                    shown()
                );
                return Ok(None);
            }
        };
        match decode_entry(&bytes) {
            Ok(e) => Ok(Some(e)),
            Err(why) => {
                tracing::warn!(
                    "ignoring cache entry {} ({why}); it will be replaced",
                    shown()
                );
                Ok(None)
            }
        }
    }

    /// Takes the cross-process lock of `key`, waiting at most `wait`.
    pub async fn lock(&self, key: &CacheKey, wait: Duration) -> Result<KeyLock> {
        let dir = self.open_dir()?;
        let name = format!("{}.lock", key.hex());
        let path = self.dir.join(&name);
        let file = rustix::fs::openat(
            &dir,
            &name,
            OFlags::RDWR | OFlags::CREATE | at_flags(),
            Mode::from_raw_mode(0o600),
        )
        .map(File::from)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", path.display())))?;
        if let Err(why) = trusted(&file) {
            return Err(Error::internal(format!(
                "refusing to lock {} ({why}): remove it",
                path.display()
            )));
        }
        let deadline = crate::clock::instant_after(wait);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(KeyLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(Error::unavailable(format!(
                            "another broker process has held the cache lock {} for over {}s",
                            path.display(),
                            wait.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::internal(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    }

    /// Writes the entry of `key` atomically ([`crate::paths::write_atomic`]). Call with the key's lock held: the
    /// temp file has one fixed name per key (`<key>.tmp`), so no directory scan is needed and a write costs the
    /// same with ten entries or ten thousand.
    pub fn write(&self, key: &CacheKey, entry: &Entry, profile: &str) -> Result<()> {
        let dir = self.open_dir()?;
        let io = |e: std::io::Error| {
            Error::internal(format!(
                "cannot write cache entry in {}: {e}",
                self.dir.display()
            ))
            .with_source(e)
        };
        let name = Self::entry_name(key);
        let plain = encode_entry(entry, profile);
        let bytes = match self.cipher(true).map_err(|e| {
            e.context(
                "the disk cache is sealed under a key in the keyring, which cannot be used (set \
                 `cache_encryption = \"off\"` on a host without a keyring)",
            )
        })? {
            Some(cipher) => {
                let sealed = crate::seal::seal(cipher, &self.aad(&name), &plain)
                    .ok_or_else(|| Error::internal("cannot seal a cache entry"))?;
                [SEALED, &sealed].concat()
            }
            None => plain,
        };
        crate::paths::write_atomic(
            &dir,
            &format!("{}.tmp", key.hex()),
            &name,
            &bytes,
            0o600,
            (None, None),
        )
        .map_err(io)?;
        Ok(())
    }

    /// Removes the entry of `key`; its lock file stays, so a process holding or waiting for the lock and one that
    /// comes later always lock the same inode. Returns whether an entry was there.
    pub fn remove(&self, key: &CacheKey) -> Result<bool> {
        let Some(dir) = open_private_dir(&self.dir, false)? else {
            return Ok(false);
        };
        match rustix::fs::unlinkat(&dir, Self::entry_name(key), AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::internal(format!("cannot remove cache entry: {e}"))),
        }
    }

    /// Removes every entry and stray temp file, keeping the lock files (see [`DiskCache::remove`]). Returns the
    /// number of entries removed.
    pub fn clear(&self) -> Result<usize> {
        let Some(dir) = open_private_dir(&self.dir, false)? else {
            return Ok(0);
        };
        let mut n = 0;
        let names = fs::read_dir(&self.dir)
            .map_err(|e| Error::internal(format!("cannot list {}: {e}", self.dir.display())))?;
        for e in names.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.len() > 64 && name[..64].bytes().all(|b| b.is_ascii_hexdigit());
            let entry = name.ends_with(".json");
            if ours && (entry || name.ends_with(".tmp")) {
                match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
                    Ok(()) => n += usize::from(entry),
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(err) => {
                        return Err(Error::internal(format!("cannot remove {name}: {err}")))
                    }
                }
            }
        }
        Ok(n)
    }
}

/// The most of an entry file that is read: entries are a few KB; anything larger is not ours.
const ENTRY_LIMIT: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::token::AccessToken;
    use secrecy::{ExposeSecret, SecretString};
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    #[test]
    fn entries_round_trip_with_private_modes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = DiskCache::new(dir.path().join("broker"));
        let key = CacheKey::from_parts([b"a".as_slice()]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tok = AccessToken::new(
            SecretString::from("tok".to_owned()),
            "Bearer",
            now,
            now + Duration::from_secs(300),
        );
        cache.write(
            &key,
            &Entry {
                token: Some(tok),
                endpoint: Some("https://x/token".into()),
                cooldown: Some(Cooldown {
                    until: now,
                    kind: ErrorKind::Rejected,
                    message: "HTTP 401".into(),
                    streak: 0,
                }),
            },
            "p",
        )?;
        let back = cache.read(&key)?.ok_or("no entry")?;
        let t = back.token.as_ref().ok_or("no token")?;
        assert_eq!(t.secret().expose_secret(), "tok");
        assert_eq!(t.expires_at(), now + Duration::from_secs(300));
        assert_eq!(back.endpoint.as_deref(), Some("https://x/token"));
        let c = back.cooldown.ok_or("no cooldown")?;
        assert_eq!(
            (c.until, c.kind, c.message.as_str()),
            (now, ErrorKind::Rejected, "HTTP 401")
        );
        let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(cache.dir())?, 0o700);
        assert_eq!(mode(&cache.entry_path(&key))?, 0o600);
        Ok(())
    }

    #[test]
    fn corrupt_and_unknown_version_entries_are_ignored() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = DiskCache::new(dir.path());
        let key = CacheKey::from_parts([b"a".as_slice()]);
        fs::write(cache.entry_path(&key), b"{not json")?;
        assert!(cache.read(&key)?.is_none());
        fs::write(cache.entry_path(&key), br#"{"version":99}"#)?;
        assert!(cache.read(&key)?.is_none());
        Ok(())
    }

    #[test]
    fn a_stray_temp_file_is_taken_over_by_the_next_write() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let cache = DiskCache::new(dir.path().join("broker"));
        let key = CacheKey::from_parts([b"a".as_slice()]);
        crate::paths::ensure_private_dir(cache.dir())?;
        // What a writer killed mid-write leaves (and an older version may have left it readable).
        let stray = cache.dir().join(format!("{}.tmp", key.hex()));
        fs::write(&stray, b"{\"version\":1,\"tok")?;
        fs::set_permissions(&stray, fs::Permissions::from_mode(0o644))?;
        let entry = Entry {
            token: None,
            endpoint: Some("https://x/token".into()),
            cooldown: None,
        };
        cache.write(&key, &entry, "p")?;
        assert!(!stray.exists(), "the stray temp file is still there");
        let back = cache.read(&key)?.ok_or("no entry")?;
        assert_eq!(back.endpoint.as_deref(), Some("https://x/token"));
        let mode = fs::metadata(cache.entry_path(&key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        Ok(())
    }

    #[tokio::test]
    async fn clearing_the_cache_keeps_the_lock_a_process_holds(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = DiskCache::new(dir.path().join("broker"));
        let key = CacheKey::from_parts([b"a".as_slice()]);
        let entry = Entry {
            token: None,
            endpoint: Some("https://x/token".into()),
            cooldown: None,
        };
        let held = cache.lock(&key, Duration::ZERO).await?;
        cache.write(&key, &entry, "p")?;
        assert_eq!(cache.clear()?, 1);
        assert!(!cache.remove(&key)?, "the entry is gone");
        // Another process comes now: it must wait for the same lock, not take a new file's.
        let second = cache.lock(&key, Duration::ZERO).await;
        assert!(
            second.is_err(),
            "a second lock was taken while the first is held"
        );
        drop(held);
        assert!(cache.lock(&key, Duration::ZERO).await.is_ok());
        Ok(())
    }
}
