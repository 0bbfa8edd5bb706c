//! `broker list`: profiles, provider, environment, cache state. Never a token.

use std::time::SystemTime;

use broker_core::CacheState;

use crate::cli::{Cli, CmdResult};
use crate::context;
use crate::output::{self, rfc3339};

/// The cache state the daemon reports for `name` in its `/v1/profiles` answer.
fn daemon_cache_state(v: &serde_json::Value, name: &str) -> Option<CacheState> {
    let p = v
        .get("profiles")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))?;
    let cache = p.get("cache")?;
    let at = || {
        cache
            .get("expires_at")
            .and_then(|s| s.as_str())
            .and_then(|s| humantime::parse_rfc3339(s).ok())
    };
    match cache.get("state")?.as_str()? {
        "valid" => Some(CacheState::Valid(at()?)),
        "expired" => Some(CacheState::Expired(at()?)),
        "none" => Some(CacheState::None),
        _ => None,
    }
}

pub fn run(cli: &Cli) -> CmdResult {
    let config = context::load(cli)?;
    let broker = context::broker_all(&config);
    let now = SystemTime::now();
    // A live daemon with our config knows the freshest state; otherwise the disk cache is read here.
    let from_daemon =
        crate::daemon::client::get(config.fingerprint(), "/v1/profiles").map(|(_, v)| v);
    let mut rows = vec![vec![
        "PROFILE".into(),
        "PROVIDER".into(),
        "ENVIRONMENT".into(),
        "CACHE".into(),
    ]];
    for name in config.profile_names() {
        let (provider, env) = match config.resolve(name, &Default::default()) {
            Ok(s) => (
                s.provider
                    .unwrap_or_else(|| format!("({})", s.kind.as_str())),
                s.environment.unwrap_or_else(|| "-".into()),
            ),
            Err(_) => ("?".into(), "?".into()),
        };
        let daemon_state = from_daemon
            .as_ref()
            .and_then(|v| daemon_cache_state(v, name));
        let state = match daemon_state
            .map(Ok)
            .unwrap_or_else(|| broker.cache_state(name))
        {
            Ok(CacheState::None) => "none".into(),
            Ok(CacheState::Valid(at)) => format!(
                "valid until {} ({} left)",
                rfc3339(at),
                broker_core::duration::format(at.duration_since(now).unwrap_or_default())
            ),
            Ok(CacheState::Expired(at)) => format!("expired {}", rfc3339(at)),
            Err(e) => format!("{} error (see `broker check`)", e.kind()),
        };
        rows.push(vec![name.to_owned(), provider, env, state]);
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
