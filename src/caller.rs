//! Who is calling, as the kernel says (docs/reference.md §11): a Unix-socket peer's credentials (`SO_PEERCRED`), a
//! pidfd of the very process that connected (`SO_PEERPIDFD`, taken at accept), and, read only when a profile's rule
//! needs them, its groups, executable and systemd unit.
//!
//! *Invariant: a process detail is believed only if the pidfd says the process that connected is still alive after
//! it was read, so a pid reused by another process (after the caller exited) never lends it its executable or unit.*

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use broker_core::caller::Caller;

/// A connection's caller: what the kernel said at accept, and the rest read on first need.
#[derive(Debug)]
pub struct Peer {
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<u32>,
    via: &'static str,
    pidfd: Option<OwnedFd>,
    details: OnceLock<Caller>,
}

impl Peer {
    /// A Unix-socket peer: its credentials and a pidfd of the process that connected.
    pub fn of_unix(io: &tokio::net::UnixStream) -> Peer {
        let cred = io.peer_cred().ok();
        let pid = cred
            .as_ref()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        // The kernel's pidfd of the connecting process. Only a kernel without SO_PEERPIDFD (before 6.5) gets a
        // pidfd of the pid as it is now, which is that process unless it exited between connect and accept; any
        // other failure (the process is gone) leaves none, so nothing of the process is believed.
        let pidfd = match nix::sys::socket::getsockopt(io, nix::sys::socket::sockopt::PeerPidfd) {
            Ok(fd) => Some(fd),
            Err(nix::errno::Errno::ENOPROTOOPT) => pid
                .and_then(|p| rustix::process::Pid::from_raw(i32::try_from(p).ok()?))
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                }),
            Err(_) => None,
        };
        Peer {
            uid: cred.as_ref().map(|c| c.uid()),
            gid: cred.as_ref().map(|c| c.gid()),
            pid,
            via: "unix socket",
            pidfd,
            details: OnceLock::new(),
        }
    }

    /// A peer known only by the uid owning its TCP socket (`None`: unknown, or a key holder).
    pub fn of_tcp(uid: Option<u32>, via: &'static str) -> Peer {
        let caller = Caller {
            uid,
            via,
            ..Default::default()
        };
        Peer {
            uid,
            gid: None,
            pid: None,
            via,
            pidfd: None,
            details: OnceLock::from(caller),
        }
    }

    /// The peer's uid.
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// The caller with its credentials only, as cheap as the accept made it.
    pub fn credentials(&self) -> Caller {
        Caller {
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            via: self.via,
            ..Default::default()
        }
    }

    /// The caller with its groups, executable and unit (read once per connection).
    pub fn caller(&self) -> &Caller {
        self.details.get_or_init(|| self.read_details())
    }

    fn read_details(&self) -> Caller {
        let mut c = self.credentials();
        let (Some(pid), Some(pidfd)) = (self.pid, &self.pidfd) else {
            return c;
        };
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let exe = std::fs::read_link(proc.join("exe")).ok();
        let unit = std::fs::read_to_string(proc.join("cgroup"))
            .ok()
            .and_then(|text| unit_of(&text));
        let groups = std::fs::read_to_string(proc.join("status"))
            .ok()
            .map(|text| groups_of(&text))
            .unwrap_or_default();
        // Believed only if the process that connected is still alive now: then /proc/<pid> was that process.
        if alive(pidfd) {
            c.exe = exe;
            c.unit = unit;
            c.groups = groups;
        }
        c
    }
}

/// Whether the process behind `pidfd` has not exited (a pidfd polls readable once it has).
fn alive(pidfd: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    matches!(
        poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0
            })
        ),
        Ok(0)
    )
}

/// The systemd unit of a `/proc/<pid>/cgroup` text: the last `.service` or `.scope` of its path in the unified
/// hierarchy (`0::`), else in systemd's own (`name=systemd:`, on a host with both hierarchies).
fn unit_of(cgroup: &str) -> Option<String> {
    let unit = |path: &str| {
        path.rsplit('/')
            .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
            .map(str::to_owned)
    };
    let path_of = |hierarchy: &str| {
        cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            (names == hierarchy).then_some(path)
        })
    };
    path_of("")
        .and_then(unit)
        .or_else(|| path_of("name=systemd").and_then(unit))
}

/// The supplementary groups of a `/proc/<pid>/status` text.
fn groups_of(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_the_last_service_or_scope_of_the_cgroup() {
        assert_eq!(
            unit_of("0::/system.slice/backup.service\n").as_deref(),
            Some("backup.service")
        );
        assert_eq!(
            unit_of("0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-u12.scope\n")
                .as_deref(),
            Some("run-u12.scope")
        );
        assert_eq!(unit_of("0::/\n"), None);
        assert_eq!(
            unit_of("9:name=systemd:/system.slice/cron.service\n0::/\n").as_deref(),
            Some("cron.service")
        );
        assert_eq!(groups_of("Name:\tx\nGroups:\t27 100 \n"), vec![27, 100]);
    }

    #[tokio::test]
    async fn a_peer_that_exited_lends_no_executable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // A child connects and exits; its pid may be reused, its pidfd says it is gone.
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import socket; s=socket.socket(socket.AF_UNIX); s.connect({:?})",
                    path
                ),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let (io, _) = listener.accept().await.unwrap();
        let peer = Peer::of_unix(&io);
        assert!(peer.pid.is_some());
        assert_eq!(peer.caller().exe, None);
        // While we ourselves connect and stay, our executable is known.
        let me = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (io, _) = listener.accept().await.unwrap();
        let peer = Peer::of_unix(&io);
        assert_eq!(peer.caller().exe, std::env::current_exe().ok());
        drop(me);
    }
}
