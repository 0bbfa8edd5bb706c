//! `broker list`: profiles, provider, environment, cache state. Never a token.

use std::time::SystemTime;

use broker_core::CacheState;

use crate::cli::{Cli, CmdResult};
use crate::context;
use crate::output::{self, rfc3339};

pub fn run(cli: &Cli) -> CmdResult {
    let config = context::load(cli)?;
    let broker = context::broker_all(&config);
    let now = SystemTime::now();
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
        let state = match broker.cache_state(name) {
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
