//! The one rule for files that hold a credential or decide where one goes (docs/security.md, "credential
//! files"): `{ file }` secret sources (client ids and secrets, private keys, client certificates and keys, subject
//! and actor tokens, the fleet key) and `ca_file`. [`CredentialFile`] is the only way the core opens such a file
//! (`tests::no_other_code_opens_files` fails when another reader appears).
//!
//! *Invariant: a file is used only when it is a regular file (a FIFO, device or directory is refused at once,
//! never waited on), owned by the effective user or root, not writable by others, and at most its kind's size,
//! read through a bounded reader. On a fetch and in `broker check` ([`Check::Full`]) the path is also walked
//! component by component without following a symlink blindly: a symlink is followed only where the directory that
//! holds it is one no other user can write (or is sticky and the link is ours or root's), and no directory on the
//! way may belong to, or be writable by, another user (sticky directories such as `/tmp` excepted, for entries of
//! ours); a private key or secret that others can read, and anything group-writable, gets a warning naming the file
//! and its mode. A warm cache hit ([`Check::Descriptor`]) hashes the file for the cache key with the checks of the
//! open descriptor only (one `fstat`, as a plain read does), so it stays as fast as it was.*

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{FileType, Mode, OFlags, Stat};

use crate::error::{Error, Result};

/// What a credential file holds: it sets the size cap and whether others may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Material {
    /// A client id or secret, a token, a private key, the fleet key: others reading it draws a warning.
    Secret,
    /// A client certificate: public, but it decides who we are to the server.
    Certificate,
    /// `ca_file`: the certificates we trust, which decide where credentials may go.
    CaBundle,
}

impl Material {
    /// The most bytes a file of this kind may hold.
    pub(crate) fn cap(self) -> u64 {
        match self {
            Material::Secret | Material::Certificate => 64 * 1024,
            Material::CaBundle => 1024 * 1024,
        }
    }

    fn cap_text(self) -> &'static str {
        match self {
            Material::Secret | Material::Certificate => "64 KiB",
            Material::CaBundle => "1 MiB",
        }
    }
}

/// How much of the rule a read applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The open descriptor only (type, owner, others' write, size), no warnings: the warm path's cache key.
    Descriptor,
    /// The whole path walked as well, with warnings: a fetch and `broker check`.
    Full,
}

/// A file that holds a credential, read by the rule of this module.
pub(crate) struct CredentialFile<'a> {
    path: &'a Path,
    material: Material,
}

/// How many symlinks one path may pass through (Linux's own limit).
const MAX_LINKS: usize = 40;

impl<'a> CredentialFile<'a> {
    pub(crate) fn new(path: &'a Path, material: Material) -> Self {
        CredentialFile { path, material }
    }

    /// The file's bytes, if it passes the rule; an error names the file and what is wrong, never what it holds.
    pub(crate) fn read(&self, check: Check) -> Result<Vec<u8>> {
        let shown = self.path.display();
        let fd = match check {
            Check::Descriptor => rustix::fs::open(
                self.path,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::config(format!("cannot read {shown}: {e}")))?,
            Check::Full => self.walk()?,
        };
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| Error::config(format!("cannot read {shown}: {e}")))?;
        self.judge_file(&st, check)?;
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(self.material.cap() + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::config(format!("cannot read {shown}: {e}")))?;
        if bytes.len() as u64 > self.material.cap() {
            return Err(self.too_large());
        }
        Ok(bytes)
    }

    fn too_large(&self) -> Error {
        Error::config(format!(
            "{} is larger than {}, the most a {} file may hold: refusing to read it",
            self.path.display(),
            self.material.cap_text(),
            match self.material {
                Material::Secret => "secret, key or token",
                Material::Certificate => "certificate",
                Material::CaBundle => "ca_file",
            }
        ))
    }

    /// The checks of the open file itself.
    fn judge_file(&self, st: &Stat, check: Check) -> Result<()> {
        let shown = self.path.display();
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(Error::config(format!(
                "{shown} is {}, not a regular file: refusing to read it",
                type_name(kind)
            )));
        }
        let me = crate::paths::euid();
        if st.st_uid != me && st.st_uid != 0 {
            return Err(Error::config(format!(
                "{shown} belongs to uid {}, not to you (uid {me}) or root: refusing to use it, since its owner \
                 decides what it holds; if you trust it, take it over: `chown {me} {shown}`",
                st.st_uid
            )));
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o002 != 0 {
            return Err(Error::config(format!(
                "{shown} is writable by others (mode {mode:04o}): refusing to use it, since anyone could change \
                 what it holds; fix it with `chmod o-w {shown}`"
            )));
        }
        if u64::try_from(st.st_size).unwrap_or(u64::MAX) > self.material.cap() {
            return Err(self.too_large());
        }
        if check == Check::Full {
            if mode & 0o020 != 0 {
                tracing::warn!(
                    "{shown} is writable by its group (mode {mode:04o}): its members could change what it holds; \
                     `chmod g-w {shown}` unless that is intended"
                );
            }
            if self.material == Material::Secret && mode & 0o004 != 0 {
                tracing::warn!(
                    "{shown} holds a secret and is readable by others (mode {mode:04o}): run `chmod 600 {shown}`"
                );
            }
        }
        Ok(())
    }

    /// Opens the file by walking its path from the root (or the working directory), one component at a time,
    /// with the directory checks of the module's invariant.
    fn walk(&self) -> Result<OwnedFd> {
        let shown = self.path.display();
        let refuse = |what: String| Error::config(format!("{shown}: {what}: refusing to use it"));
        let io = |e: rustix::io::Errno| Error::config(format!("cannot read {shown}: {e}"));
        let path_flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let open_dir = |p: &Path| {
            rustix::fs::open(p, path_flags | OFlags::DIRECTORY, Mode::empty()).map_err(io)
        };
        let (mut dir, mut pending) = if self.path.is_absolute() {
            (open_dir(Path::new("/"))?, components(self.path))
        } else {
            (open_dir(Path::new("."))?, components(self.path))
        };
        let mut dir_st = rustix::fs::fstat(&dir).map_err(io)?;
        let mut dir_name = if self.path.is_absolute() {
            "/".to_owned()
        } else {
            ".".to_owned()
        };
        let mut links = 0;
        while let Some(name) = pending.pop() {
            let last = pending.is_empty();
            let fd = rustix::fs::openat(&dir, name.as_os_str(), path_flags, Mode::empty())
                .map_err(io)?;
            let st = rustix::fs::fstat(&fd).map_err(io)?;
            let kind = FileType::from_raw_mode(st.st_mode);
            if let Some(why) = unsafe_entry(&dir_st, &st) {
                let what = if kind == FileType::Symlink {
                    "a symlink"
                } else {
                    "an entry"
                };
                return Err(refuse(format!(
                    "{what} `{}` in {dir_name}, which {why}",
                    name.to_string_lossy()
                )));
            }
            if kind == FileType::Symlink {
                links += 1;
                if links > MAX_LINKS {
                    return Err(refuse("too many levels of symlinks".into()));
                }
                let target =
                    rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new()).map_err(io)?;
                let target =
                    Path::new(std::ffi::OsStr::from_bytes(target.as_bytes())).to_path_buf();
                if target.is_absolute() {
                    dir = open_dir(Path::new("/"))?;
                    dir_st = rustix::fs::fstat(&dir).map_err(io)?;
                    dir_name = "/".to_owned();
                }
                pending.extend(components(&target));
                continue;
            }
            if last {
                // The real open, relative to the checked directory and without following a link: what was
                // looked at above (no other user can change it) is what is read.
                return rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io);
            }
            if kind != FileType::Directory {
                return Err(refuse(format!(
                    "`{}` is {}, not a directory",
                    name.to_string_lossy(),
                    type_name(kind)
                )));
            }
            dir_name = if name == ".." {
                format!("{dir_name}/..")
            } else if dir_name == "/" {
                format!("/{}", name.to_string_lossy())
            } else {
                format!("{dir_name}/{}", name.to_string_lossy())
            };
            dir = fd;
            dir_st = st;
        }
        Err(refuse("names no file".into()))
    }
}

/// The path's normal components (and `..`), in reverse order (a stack: the next one is last).
fn components(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    out.reverse();
    out
}

/// Why an entry of `dir` could have been put there or swapped by another user, if it could.
fn unsafe_entry(dir: &Stat, entry: &Stat) -> Option<String> {
    let me = crate::paths::euid();
    let ours = |uid: u32| uid == me || uid == 0;
    if !ours(dir.st_uid) {
        return Some(format!("belongs to uid {}", dir.st_uid));
    }
    let sticky = dir.st_mode & 0o1000 != 0;
    if dir.st_mode & 0o002 != 0 {
        if !sticky {
            return Some("other users can write".into());
        }
        if !ours(entry.st_uid) {
            return Some(format!(
                "other users can write, and the entry belongs to uid {}",
                entry.st_uid
            ));
        }
    }
    None
}

fn type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn read(path: &Path, check: Check) -> std::result::Result<Vec<u8>, String> {
        CredentialFile::new(path, Material::Secret)
            .read(check)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_fifo_is_refused_at_once_in_both_checks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("token");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
        for check in [Check::Descriptor, Check::Full] {
            let err = read(&fifo, check).unwrap_err();
            assert!(err.contains("is a FIFO, not a regular file"), "{err}");
        }
    }

    #[test]
    fn size_is_capped_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("key.pem");
        std::fs::write(&big, vec![b'a'; 64 * 1024 + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        for check in [Check::Descriptor, Check::Full] {
            let err = read(&big, check).unwrap_err();
            assert!(err.contains("larger than 64 KiB"), "{err}");
        }
        let bundle = CredentialFile::new(&big, Material::CaBundle).read(Check::Full);
        assert_eq!(bundle.map(|b| b.len()).ok(), Some(64 * 1024 + 1));
    }

    #[test]
    fn others_writable_is_refused_and_a_symlink_in_a_private_directory_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "s3cret\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("sub/../link");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        assert_eq!(
            read(&link, Check::Full).ok().as_deref(),
            Some(&b"s3cret\n"[..])
        );
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o666)).unwrap();
        for check in [Check::Descriptor, Check::Full] {
            let err = read(&link, check).unwrap_err();
            assert!(err.contains("writable by others (mode 0666)"), "{err}");
        }
    }

    #[test]
    fn a_directory_others_can_write_is_refused_on_the_full_check() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let file = open.join("token");
        std::fs::write(&file, "t").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read(&file, Check::Full).unwrap_err();
        assert!(err.contains("other users can write"), "{err}");
        // Sticky (like /tmp): an entry of ours is safe there.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read(&file, Check::Full).is_ok());
    }

    /// The property of the module doc: outside the modules that own their files (config, cache, generated DPoP keys, private
    /// directories) and this one, the core opens no file. A new reader of material fails here until it goes
    /// through [`CredentialFile`].
    #[test]
    fn no_other_code_opens_files() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let allowed = [
            "credfile.rs",
            "cache/mod.rs",
            "paths.rs",
            "config/load.rs",
            "dpop/store.rs",
        ];
        let needles = [
            "fs::read(",
            "fs::read_to_string(",
            "File::open(",
            "OpenOptions",
            "fs::open(",
            "fs::openat(",
        ];
        let mut found = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
                if allowed.contains(&rel.as_str()) {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                // Unit tests may read what they made.
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                for n in needles {
                    if code.contains(n) {
                        found.push(format!("{rel}: {n}"));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "files opened outside CredentialFile: {found:?}"
        );
    }
}
