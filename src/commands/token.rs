//! `broker token <profile>`.

use std::time::{Duration, SystemTime};

use broker_core::config::Overrides;
use broker_core::{Error, TokenRequest};

use crate::cli::{Cli, CmdResult, Failure};
use crate::context;
use crate::output::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// The profile (a `[profiles.<name>]` table of the config file).
    pub profile: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Token)]
    pub format: Format,
    /// Serve a cached token only if it has at least this much life left (e.g. `5m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_ttl: Option<Duration>,
    /// Request this scope instead of the configured one.
    #[arg(long)]
    pub scope: Option<String>,
    /// Request this audience instead of the configured one.
    #[arg(long)]
    pub audience: Option<String>,
    /// Ask the provider even if a fresh token is cached.
    #[arg(long)]
    pub force_refresh: bool,
    /// Neither read nor write the cache.
    #[arg(long)]
    pub no_cache: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    broker_core::duration::parse(s)
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    match token(cli, args) {
        Ok(()) => Ok(()),
        Err(e) if args.format == Format::Json => {
            let v = serde_json::json!({"error": e.kind().as_str(), "message": e.message()});
            eprintln!("{v}");
            Err(Failure::Reported(e.kind()))
        }
        Err(e) => Err(e.into()),
    }
}

fn token(cli: &Cli, args: &Args) -> Result<(), Error> {
    let overrides = Overrides {
        min_ttl: args.min_ttl,
        scope: args.scope.clone(),
        audience: args.audience.clone(),
    };
    let req = TokenRequest {
        min_ttl: args.min_ttl,
        force_refresh: args.force_refresh,
    };
    let (settings, token) =
        context::settings_and_token(cli, &args.profile, &overrides, &req, args.no_cache)?;
    let rendered = output::render(
        args.format,
        &settings,
        &token,
        SystemTime::now(),
        args.min_ttl.unwrap_or(settings.min_ttl),
    )?;
    output::print_stdout(&rendered)
}
