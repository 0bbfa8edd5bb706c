//! Token files the daemon keeps fresh (docs/daemon-api.md, "Token files"): what a sink's file holds (the formats of
//! `broker token`, the presets `netrc`, `npmrc`, `docker`, `env`, or the user's template), where it may be written,
//! and the `on_change` command run after it changed.
//!
//! *Invariants: a sink is written only into a directory no one else can swap it in; a template is filled from a
//! fixed set of placeholders (no code, no file access); `on_change` runs without a shell, with a clean environment,
//! stdin closed and a time limit, and never gets the token (its argv is the config's, not filled in).*

use std::time::{Duration, SystemTime};

use base64::Engine;
use broker_core::config::{template_pieces, Piece, Sink};
use broker_core::{AccessToken, Error};
use secrecy::ExposeSecret;
use url::Url;

use super::write_private_owned;
use crate::output::{self, shell_quote, Format, Shown};

/// How long `on_change` may run before it is killed.
pub const ON_CHANGE_LIMIT: Duration = Duration::from_secs(30);

/// A profile's sink and what filling it needs beyond the token.
pub struct Target {
    pub sink: Sink,
    pub api: Option<Url>,
    pub username: String,
    pub registries: Vec<String>,
}

impl Target {
    pub fn of(s: &broker_core::Settings) -> Option<Box<Target>> {
        Some(Box::new(Target {
            sink: s.sink()?.clone(),
            api: s.api().cloned(),
            username: s.username().to_owned(),
            registries: s.registries().to_vec(),
        }))
    }
}

/// The text of `target`'s file for `token`.
pub fn render(
    target: &Target,
    shown: &Shown,
    token: &AccessToken,
    now: SystemTime,
    min_ttl: Duration,
) -> Result<String, Error> {
    let raw = token.secret().expose_secret();
    let format = match target.sink.format.as_str() {
        "header" => Format::Header,
        "json" => Format::Json,
        "token" => Format::Token,
        "env" => {
            let mut out = format!("BROKER_TOKEN={}\n", shell_quote(raw));
            if let Some(name) = &shown.token_env {
                out.push_str(&format!("{name}={}\n", shell_quote(raw)));
            }
            return Ok(out);
        }
        // netrc names a host without its port.
        "netrc" => {
            let host = target.api.as_ref().and_then(Url::host_str).ok_or_else(|| {
                Error::config(
                    "a netrc sink needs the profile's `api` (its host is the netrc machine)",
                )
            })?;
            return Ok(format!(
                "machine {host}\nlogin {}\npassword {raw}\n",
                target.username
            ));
        }
        "npmrc" => return Ok(format!("//{}/:_authToken={raw}\n", npm_registry(target)?)),
        "docker" => {
            let auth = basic(&target.username, raw);
            let auths: serde_json::Map<String, serde_json::Value> = docker_hosts(target)
                .into_iter()
                .map(|h| (h, serde_json::json!({ "auth": auth })))
                .collect();
            return Ok(format!("{}\n", serde_json::json!({ "auths": auths })));
        }
        _ => {
            let template = target.sink.template.as_deref().unwrap_or_default();
            return fill(template, target, shown, token, now);
        }
    };
    output::render(format, shown, token, None, now, min_ttl)
}

/// The value of each placeholder of [`broker_core::config::SINK_PLACEHOLDERS`].
fn fill(
    template: &str,
    target: &Target,
    shown: &Shown,
    token: &AccessToken,
    now: SystemTime,
) -> Result<String, Error> {
    let raw = token.secret().expose_secret();
    let header = broker_core::config::fill_header(&shown.header, raw);
    let (header_name, header_value) = header.split_once(':').unwrap_or((&header, ""));
    let api_host = || {
        target.api.as_ref().and_then(host_port).ok_or_else(|| {
            Error::config(format!(
                "profile `{}`: its sink names the api's host, but the profile has no `api`",
                shown.profile
            ))
        })
    };
    let pieces = template_pieces(template).map_err(Error::config)?;
    let mut out = String::with_capacity(template.len() + 2 * raw.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(name) => match name {
                "token" => out.push_str(raw),
                "header" => out.push_str(&header),
                "header_name" => out.push_str(header_name.trim()),
                "header_value" => out.push_str(header_value.trim()),
                "expires_at" => out.push_str(&output::rfc3339(token.expires_at())),
                "expires_in" => out.push_str(&token.remaining(now).as_secs().to_string()),
                "profile" => out.push_str(&shown.profile),
                "api" => out.push_str(target.api.as_ref().map_or("", Url::as_str)),
                "api_host" => out.push_str(&api_host()?),
                "username" => out.push_str(&target.username),
                "basic" => out.push_str(&basic(&target.username, raw)),
                _ => {}
            },
        }
    }
    Ok(out)
}

/// `host` or `host:port` of a URL (the port only when it is not the scheme's default).
pub fn host_port(u: &Url) -> Option<String> {
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// The base64 of `user:token`, as HTTP Basic and docker's `auth` field carry it.
pub fn basic(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
}

/// npm's registry key: the api's host and path, without the scheme.
fn npm_registry(target: &Target) -> Result<String, Error> {
    let api = target.api.as_ref().ok_or_else(|| {
        Error::config("an npmrc sink needs the profile's `api` (the registry URL)")
    })?;
    let host = host_port(api).unwrap_or_default();
    Ok(format!("{host}{}", api.path().trim_end_matches('/')))
}

/// The registries a docker sink names: the profile's `registries`, else the api's host.
fn docker_hosts(target: &Target) -> Vec<String> {
    if target.registries.is_empty() {
        target.api.iter().filter_map(host_port).collect()
    } else {
        target.registries.clone()
    }
}

/// Writes `target`'s file for `token` atomically, with its mode and owner, if its directory allows it.
pub fn write(
    target: &Target,
    shown: &Shown,
    token: &AccessToken,
    min_ttl: Duration,
) -> Result<(), Error> {
    let body = render(target, shown, token, SystemTime::now(), min_ttl)?;
    let sink = &target.sink;
    let path = broker_core::secret::expand_home(&sink.path);
    check_path(&path)?;
    let uid = sink.owner.as_deref().map(user_id).transpose()?;
    let gid = sink.group.as_deref().map(group_id).transpose()?;
    write_private_owned(&path, body.as_bytes(), sink.mode, (uid, gid))
}

/// Runs `argv` (no shell, stdin closed, `PATH` and `HOME` only, killed after [`ON_CHANGE_LIMIT`]) and logs how it
/// ended and the start of what it printed (escaped).
pub async fn on_change(profile: &str, argv: &[String]) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for var in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let shown = argv.join(" ");
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("profile `{profile}`: on_change `{shown}` could not start: {e}");
            return;
        }
    };
    // On the time limit the future is dropped, and with it the child, which is killed.
    match tokio::time::timeout(ON_CHANGE_LIMIT, child.wait_with_output()).await {
        Err(_) => tracing::warn!(
            "profile `{profile}`: on_change `{shown}` ran over {} s and was killed",
            ON_CHANGE_LIMIT.as_secs()
        ),
        Ok(Err(e)) => tracing::warn!("profile `{profile}`: on_change `{shown}`: {e}"),
        Ok(Ok(out)) => {
            let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
            said.push_str(&String::from_utf8_lossy(&out.stderr));
            let said: String = said
                .trim()
                .chars()
                .take(500)
                .collect::<String>()
                .escape_debug()
                .to_string();
            if out.status.success() {
                tracing::info!("profile `{profile}`: on_change `{shown}` done: {said}");
            } else {
                tracing::warn!(
                    "profile `{profile}`: on_change `{shown}` failed ({}): {said}",
                    out.status
                );
            }
        }
    }
}

/// A sink goes only where no one else can swap or read it first (docs/security.md, "sinks"): its directory is not
/// writable by others, unless it is sticky (like `/tmp`) and the file there, if any, is ours and not a symlink.
fn check_path(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let dir = path
        .parent()
        .ok_or_else(|| Error::config(format!("sink {} has no directory", path.display())))?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::config(format!("sink directory {}: {e}", dir.display())))?;
    if meta.mode() & 0o002 == 0 {
        return Ok(());
    }
    if meta.mode() & 0o1000 == 0 {
        return Err(Error::config(format!(
            "sink {}: its directory is writable by others and not sticky, so anyone could replace the file; \
             choose a private directory",
            path.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_file() && m.uid() == rustix::process::geteuid().as_raw() => Ok(()),
        Ok(_) => Err(Error::config(format!(
            "sink {}: the file there is not ours (or is not a regular file) in a directory others can write: \
             refusing to write it",
            path.display()
        ))),
    }
}

/// A user name or numeric uid.
fn user_id(name: &str) -> Result<u32, Error> {
    name.parse().or_else(|_| {
        uzers::get_user_by_name(name)
            .map(|u| u.uid())
            .ok_or_else(|| Error::config(format!("sink owner: no user `{name}`")))
    })
}

/// A group name or numeric gid.
fn group_id(name: &str) -> Result<u32, Error> {
    name.parse().or_else(|_| {
        uzers::get_group_by_name(name)
            .map(|g| g.gid())
            .ok_or_else(|| Error::config(format!("sink group: no group `{name}`")))
    })
}
