//! Who may ask for a profile's token (docs/reference.md §11): a caller as the daemon or the proxy saw it, and a
//! profile's `allow` rule. *Invariant: a rule admits a caller only when every list it gives matches something the
//! kernel said of the caller; what the kernel did not say (a TCP caller's process, an exited process's executable)
//! never matches.*

use std::fmt;
use std::path::PathBuf;

/// A caller as the kernel described it: its credentials, and (for a Unix-socket peer that is still alive) its
/// executable and systemd unit. `None` where it could not be known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The peer's uid.
    pub uid: Option<u32>,
    /// The peer's gid.
    pub gid: Option<u32>,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
    /// The pid of the process that connected.
    pub pid: Option<u32>,
    /// Its executable (`/proc/<pid>/exe`), read while the process was known to be the one that connected.
    pub exe: Option<PathBuf>,
    /// Its systemd unit (the last `.service` or `.scope` of its cgroup).
    pub unit: Option<String>,
    /// How it reached us: `unix socket`, `tcp`, `tcp with the key`.
    pub via: &'static str,
}

/// Shown with control characters escaped: the executable's path and the unit are named by whoever runs the caller,
/// another local user among them, and end up in log lines, a 403's message and a terminal.
impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt =
            |v: Option<String>| v.map_or_else(|| "?".into(), |v| crate::http::provider_text(&v));
        write!(
            f,
            "uid {} gid {} pid {} exe {} unit {} ({})",
            opt(self.uid.map(|u| u.to_string())),
            opt(self.gid.map(|g| g.to_string())),
            opt(self.pid.map(|p| p.to_string())),
            opt(self.exe.as_ref().map(|e| e.display().to_string())),
            self.unit
                .as_deref()
                .map_or_else(|| "-".into(), crate::http::provider_text),
            self.via
        )
    }
}

/// A profile's `allow`: each list given must match (uids: the caller's uid; gids: its gid or one of its groups; exe:
/// its executable; units: its systemd unit). An empty rule admits everyone the listener admits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// Allowed uids.
    pub uids: Vec<u32>,
    /// Allowed groups.
    pub gids: Vec<u32>,
    /// Allowed executables (absolute paths, as `/proc/<pid>/exe` names them).
    pub exe: Vec<PathBuf>,
    /// Allowed systemd units (`backup.service`).
    pub units: Vec<String>,
}

impl Allow {
    /// Whether the rule needs more of a caller than its uid (its process: groups, executable or unit).
    pub fn needs_process(&self) -> bool {
        !(self.gids.is_empty() && self.exe.is_empty() && self.units.is_empty())
    }

    /// `Ok` when `caller` passes; else which part of the rule refused it.
    pub fn admits(&self, caller: &Caller) -> Result<(), String> {
        let list = |v: Vec<String>| v.join(", ");
        if !self.uids.is_empty() && !caller.uid.is_some_and(|u| self.uids.contains(&u)) {
            return Err(format!(
                "uids = [{}]",
                list(self.uids.iter().map(u32::to_string).collect())
            ));
        }
        let in_group = |g: &u32| caller.gid == Some(*g) || caller.groups.contains(g);
        if !self.gids.is_empty() && !self.gids.iter().any(in_group) {
            return Err(format!(
                "gids = [{}]",
                list(self.gids.iter().map(u32::to_string).collect())
            ));
        }
        if !self.exe.is_empty() && !caller.exe.as_ref().is_some_and(|e| self.exe.contains(e)) {
            return Err(format!(
                "exe = [{}]",
                list(self.exe.iter().map(|e| e.display().to_string()).collect())
            ));
        }
        if !self.units.is_empty() && !caller.unit.as_ref().is_some_and(|u| self.units.contains(u)) {
            return Err(format!("units = [{}]", list(self.units.clone())));
        }
        Ok(())
    }

    /// The rule as `broker check` shows it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.uids.is_empty() {
            parts.push(format!("uids {:?}", self.uids));
        }
        if !self.gids.is_empty() {
            parts.push(format!("gids {:?}", self.gids));
        }
        if !self.exe.is_empty() {
            parts.push(format!("exe {:?}", self.exe));
        }
        if !self.units.is_empty() {
            parts.push(format!("units {:?}", self.units));
        }
        if parts.is_empty() {
            "anyone the listener admits".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_given_must_match_and_the_unknown_never_does() {
        let rule = Allow {
            uids: vec![1000],
            exe: vec!["/usr/bin/kubectl".into()],
            ..Default::default()
        };
        let kubectl = Caller {
            uid: Some(1000),
            exe: Some("/usr/bin/kubectl".into()),
            ..Default::default()
        };
        assert_eq!(rule.admits(&kubectl), Ok(()));
        let other_uid = Caller {
            uid: Some(1001),
            ..kubectl.clone()
        };
        assert_eq!(rule.admits(&other_uid), Err("uids = [1000]".into()));
        let curl = Caller {
            exe: Some("/usr/bin/curl".into()),
            ..kubectl.clone()
        };
        assert!(rule.admits(&curl).unwrap_err().starts_with("exe"));
        let unknown = Caller {
            exe: None,
            ..kubectl.clone()
        };
        assert!(rule.admits(&unknown).is_err());
        let groups = Allow {
            gids: vec![27],
            ..Default::default()
        };
        assert!(groups
            .admits(&Caller {
                gid: Some(1000),
                groups: vec![27],
                ..Default::default()
            })
            .is_ok());
        assert!(groups
            .admits(&Caller {
                gid: Some(1000),
                ..Default::default()
            })
            .is_err());
        let unit = Allow {
            units: vec!["backup.service".into()],
            ..Default::default()
        };
        assert!(unit
            .admits(&Caller {
                unit: Some("backup.service".into()),
                ..Default::default()
            })
            .is_ok());
        assert!(unit.admits(&Caller::default()).is_err());
        assert_eq!(Allow::default().admits(&Caller::default()), Ok(()));
    }

    #[test]
    fn a_caller_is_shown_without_the_control_characters_of_its_names() {
        let c = Caller {
            exe: Some("/tmp/cu\u{1b}[31mrl".into()),
            unit: Some("x\u{7}.service".into()),
            ..Default::default()
        };
        let shown = c.to_string();
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown}"
        );
        assert!(shown.contains("cu\\u{1b}[31mrl"), "{shown}");
    }
}
