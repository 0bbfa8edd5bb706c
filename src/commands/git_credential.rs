//! `broker git-credential <profile> get|store|erase`: the git credential-helper protocol. `get` answers only for
//! the profile's own hosts, so a globally configured helper never hands a token to another host.

use std::io::BufRead;

use broker_core::{Settings, TokenRequest};
use secrecy::ExposeSecret;

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::output;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Action {
    /// Answer with a token when protocol and host match the profile.
    Get,
    /// Ignored: the broker keeps its own cache.
    Store,
    /// Ignored: tokens expire by themselves.
    Erase,
}

#[derive(clap::Args)]
pub struct Args {
    /// The profile.
    pub profile: String,
    /// What git asks.
    #[arg(value_enum)]
    pub action: Action,
}

/// The `key=value` attributes git sends, up to a blank line.
fn read_request(input: impl BufRead) -> Vec<(String, String)> {
    input
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Whether the request's protocol and host are ones this profile answers for.
pub fn matches(settings: &Settings, protocol: &str, host: &str) -> bool {
    let Some(api) = settings.api() else {
        return false;
    };
    if !settings.git_hosts().is_empty() {
        return protocol == "https"
            && settings
                .git_hosts()
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host));
    }
    let api_host = match (api.host_str(), api.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return false,
    };
    protocol == api.scheme() && api_host.eq_ignore_ascii_case(host)
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    let request = read_request(std::io::stdin().lock());
    if !matches!(args.action, Action::Get) {
        return Ok(());
    }
    let get = |k: &str| {
        request
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let config = context::load(g)?;
    let settings = config.resolve(&args.profile, &Default::default())?;
    if !matches(&settings, get("protocol"), get("host")) {
        // Not ours: say nothing, and git asks the next helper.
        return Ok(());
    }
    let broker = context::broker_for(&config, settings)?;
    let token = context::get_token(&broker, &args.profile, &TokenRequest::default())?;
    let expiry = token
        .expires_at()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    output::print_stdout(&format!(
        "username=broker\npassword={}\npassword_expiry_utc={expiry}\n",
        token.secret().expose_secret()
    ))?;
    Ok(())
}
