//! `broker list`: profiles, provider, environment, cache state. Never a token.

use std::time::SystemTime;

use broker_core::cache::Cooldown;
use broker_core::{CacheState, ErrorKind, Status};

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::output::{self, rfc3339};

/// The status the daemon reports for `name` in its `/v1/profiles` answer.
fn daemon_status(v: &serde_json::Value, name: &str) -> Option<Status> {
    let p = v
        .get("profiles")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))?;
    let cache = p.get("cache")?;
    let time = |v: &serde_json::Value, field: &str| {
        v.get(field)
            .and_then(|s| s.as_str())
            .and_then(|s| humantime::parse_rfc3339(s).ok())
    };
    let cache = match cache.get("state")?.as_str()? {
        "valid" => CacheState::Valid(time(cache, "expires_at")?),
        "expired" => CacheState::Expired(time(cache, "expires_at")?),
        "none" => CacheState::None,
        _ => return None,
    };
    let cooldown = p.get("cooldown").and_then(|c| {
        Some(Cooldown {
            until: time(c, "until")?,
            kind: ErrorKind::parse(c.get("class")?.as_str()?)?,
            message: c.get("message")?.as_str()?.to_owned(),
            streak: 0,
        })
    });
    Some(Status { cache, cooldown })
}

/// The STATUS column: when the provider will be asked again, and why not before.
fn cooldown_text(c: Option<&Cooldown>, now: SystemTime) -> String {
    let Some(c) = c else {
        return "-".into();
    };
    let left = broker_core::duration::format(c.until.duration_since(now).unwrap_or_default());
    let why: String = c.message.chars().take(100).collect();
    match c.kind {
        ErrorKind::Unavailable => format!("outage: next attempt in {left} ({why})"),
        kind => format!("cool-down for {left} after `{kind}` ({why})"),
    }
}

pub fn run(g: &Globals) -> CmdResult {
    let config = context::load(g)?;
    let broker = context::broker_all(&config, None)?;
    let now = SystemTime::now();
    // A live daemon with our config knows the freshest state; otherwise the disk cache is read here.
    let from_daemon =
        crate::daemon::client::get(config.fingerprint(), "/v1/profiles").map(|(_, v)| v);
    let mut rows = vec![vec![
        "PROFILE".into(),
        "PROVIDER".into(),
        "ENVIRONMENT".into(),
        "CACHE".into(),
        "STATUS".into(),
    ]];
    for name in config.profile_names() {
        let (provider, env) = match config.resolve(name, &Default::default()) {
            Ok(s) => (
                s.provider()
                    .map_or_else(|| format!("({})", s.kind().as_str()), str::to_owned),
                s.environment().unwrap_or("-").to_owned(),
            ),
            Err(_) => ("?".into(), "?".into()),
        };
        let status = match from_daemon.as_ref().and_then(|v| daemon_status(v, name)) {
            Some(s) => Ok(s),
            None => broker.status(name),
        };
        let (state, next) = match status {
            Ok(s) => (
                match s.cache {
                    CacheState::None => "none".into(),
                    CacheState::Valid(at) => format!(
                        "valid until {} ({} left)",
                        rfc3339(at),
                        broker_core::duration::format(at.duration_since(now).unwrap_or_default())
                    ),
                    CacheState::Expired(at) => format!("expired {}", rfc3339(at)),
                },
                cooldown_text(s.cooldown.as_ref(), now),
            ),
            Err(e) => (
                format!("{} error (see `broker check`)", e.kind()),
                "-".into(),
            ),
        };
        rows.push(vec![name.to_owned(), provider, env, state, next]);
    }
    if rows.len() == 1 {
        let files = config
            .files()
            .iter()
            .filter(|f| !f.starts_with("<built-in>"))
            .cloned()
            .collect::<Vec<_>>();
        output::print_stdout(&format!(
            "no profiles configured (read: {}); see `broker providers` and docs/providers.md\n",
            if files.is_empty() {
                "no config file".to_owned()
            } else {
                files.join(", ")
            }
        ))?;
        return Ok(());
    }
    output::print_stdout(&output::table(&rows))?;
    Ok(())
}
