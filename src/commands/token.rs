//! `broker token <profile>`.

use std::time::{Duration, SystemTime};

use broker_core::config::{CacheMode, Overrides};
use broker_core::{Error, TokenRequest};
use secrecy::ExposeSecret;

use crate::context;
use crate::context::{CmdResult, Failure, Globals};
use crate::daemon;
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
    /// Work in-process even when a daemon with the same configuration is running.
    #[arg(long)]
    pub no_daemon: bool,
    /// The request a DPoP proof is made for (`--format dpop`, or `json` with a `dpop` field): its URL; one
    /// starting with `/` is joined to the profile's `api`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The method of that request.
    #[arg(long, value_name = "METHOD", default_value = "GET", requires = "url")]
    pub method: String,
    /// The resource server's `DPoP-Nonce`, for a proof it asked a nonce in.
    #[arg(long, value_name = "NONCE", requires = "url")]
    pub nonce: Option<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    broker_core::duration::parse(s)
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    match token(g, args) {
        Ok(()) => Ok(()),
        Err(e) if args.format == Format::Json => {
            eprintln!("{}", output::error_json(&e));
            Err(Failure::Reported(e.kind()))
        }
        Err(e) => Err(e.into()),
    }
}

fn token(g: &Globals, args: &Args) -> Result<(), Error> {
    let overrides = Overrides {
        min_ttl: args.min_ttl,
        scope: args.scope.clone(),
        audience: args.audience.clone(),
    };
    if args.format == Format::Dpop && args.url.is_none() {
        return Err(Error::usage(
            "--format dpop makes a proof for one request: give its --url (and --method, GET by default)",
        ));
    }
    if !args.method.bytes().all(|b| b.is_ascii_alphabetic()) || args.method.is_empty() {
        return Err(Error::usage(format!(
            "--method {}: not an HTTP method",
            args.method
        )));
    }
    let config = context::load(g)?;
    let mut settings = config.resolve(&args.profile, &overrides)?;
    let url = args
        .url
        .as_deref()
        .map(|u| crate::commands::curl::join_url(settings.api(), u, &args.profile))
        .transpose()?;
    let proof_for = url
        .as_deref()
        .map(|u| (args.method.as_str(), u, args.nonce.as_deref()));
    let now = SystemTime::now();
    let min_ttl = args.min_ttl.unwrap_or(settings.min_ttl());
    // The daemon serves what its API can express; anything else is done here.
    let via_daemon = !args.no_daemon
        && !args.no_cache
        && args.scope.is_none()
        && args.audience.is_none()
        && args.format != Format::ExecCredential;
    if via_daemon {
        match daemon::client::token(
            config.fingerprint(),
            &args.profile,
            args.min_ttl,
            args.force_refresh,
            proof_for,
        ) {
            Some(daemon::client::Answer::Token(token, proof)) => {
                return output::print_stdout(&output::render(
                    args.format,
                    &output::Shown::from(&settings),
                    &token,
                    proof.as_deref(),
                    now,
                    min_ttl,
                )?);
            }
            Some(daemon::client::Answer::Failed(e)) => return Err(e),
            None => {}
        }
    }
    if args.no_cache {
        settings = settings.with_cache(CacheMode::None);
    }
    let req = TokenRequest {
        min_ttl: args.min_ttl,
        force_refresh: args.force_refresh,
        ..Default::default()
    };
    let broker = context::broker_for(&config, settings.clone())?;
    let token = context::get_token(&broker, &args.profile, &req)?;
    let proof = proof_for
        .map(|(m, u, n)| broker.proof(&args.profile, &token, m, u, n))
        .transpose()?
        .flatten();
    output::print_stdout(&output::render(
        args.format,
        &output::Shown::from(&settings),
        &token,
        proof.as_ref().map(|p| p.expose_secret()),
        now,
        min_ttl,
    )?)
}
