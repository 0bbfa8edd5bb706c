//! Loading the config the way the CLI does (built-ins, user providers, the config file) and building a broker.

use std::path::PathBuf;

use broker_core::config::LoadOptions;
use broker_core::shared::SharedCache;
use broker_core::{paths, Broker, BrokerBuilder, Config, Result, Settings};

/// Load options for the CLI: `--config` (which must exist) over the user defaults.
pub fn load_options_for(config_flag: Option<&std::path::Path>) -> LoadOptions {
    let mut opts = LoadOptions::user_default();
    if let Some(p) = config_flag {
        opts.config_file = Some(p.to_path_buf());
        opts.config_file_required = true;
    }
    opts
}

/// What every command is given of the command line beyond its own arguments.
pub struct Globals {
    /// `--config PATH`.
    pub config: Option<PathBuf>,
}

/// How a command failed: an error still to print, or one already reported (e.g. as JSON).
pub enum Failure {
    Error(broker_core::Error),
    Reported(broker_core::ErrorKind),
    /// A child could not be started: the shell's codes, 127 not found, 126 not runnable.
    Exit(u8),
}

impl From<broker_core::Error> for Failure {
    fn from(e: broker_core::Error) -> Self {
        Failure::Error(e)
    }
}

pub type CmdResult = std::result::Result<(), Failure>;

pub fn load(g: &Globals) -> Result<Config> {
    Config::load(&load_options_for(g.config.as_deref()))
}

pub fn cache_dir() -> Option<PathBuf> {
    paths::cache_dir()
}

/// A broker over the user's disk cache serving `settings`, and the profiles whose tokens it exchanges (a
/// `{ profile = ... }` subject or actor token, and theirs in turn), reporting retries to the status line.
pub fn broker_for(config: &Config, settings: Settings) -> Result<Broker> {
    let mut b = with_shared_cache(Broker::builder(), config)?
        .observer(crate::feedback::get())
        .cache_encryption(config.cache_encryption());
    let mut wanted: Vec<String> = settings.profile_tokens().map(str::to_owned).collect();
    let mut seen = vec![settings.profile().to_owned()];
    b = b.settings(settings);
    // Load time refused cycles and unknown names; `seen` only keeps a diamond from registering a profile twice.
    while let Some(name) = wanted.pop() {
        if seen.contains(&name) {
            continue;
        }
        match config.resolve(&name, &Default::default()) {
            Ok(s) => {
                wanted.extend(s.profile_tokens().map(str::to_owned));
                b = b.settings(s);
            }
            Err(e) => b = b.broken(&name, e),
        }
        seen.push(name);
    }
    if let Some(dir) = cache_dir() {
        b = b.disk_cache(dir);
    }
    Ok(b.build())
}

/// `builder` with the config's `[shared_cache]`, if it has one (docs/reference.md §9). Nothing is read or connected
/// until a local miss needs it.
pub fn with_shared_cache(builder: BrokerBuilder, config: &Config) -> Result<BrokerBuilder> {
    Ok(match config.shared_cache() {
        Some(def) => builder.shared_cache(std::sync::Arc::new(SharedCache::from_config(def)?)),
        None => builder,
    })
}

/// A broker over the user's disk cache serving every profile of `config`, reporting fetches to `observer`.
pub fn broker_all(
    config: &Config,
    observer: Option<std::sync::Arc<dyn broker_core::Observer>>,
) -> Result<Broker> {
    let mut b = with_shared_cache(Broker::builder(), config)?;
    if let Some(o) = observer {
        b = b.observer(o);
    }
    let mut b = b.config(config, &Default::default());
    if let Some(dir) = cache_dir() {
        b = b.disk_cache(dir);
    }
    Ok(b.build())
}

/// [`settings_and_token`] with no overrides and a plain request: `exec`, `curl` and `inspect`.
pub fn profile_token(
    g: &Globals,
    profile: &str,
) -> Result<(Settings, std::sync::Arc<broker_core::AccessToken>)> {
    settings_and_token(
        g,
        profile,
        &Default::default(),
        &broker_core::TokenRequest::default(),
        false,
    )
}

/// Resolves `profile` and gets its token: what every token-printing command does.
pub fn settings_and_token(
    g: &Globals,
    profile: &str,
    overrides: &broker_core::Overrides,
    req: &broker_core::TokenRequest,
    no_cache: bool,
) -> Result<(Settings, std::sync::Arc<broker_core::AccessToken>)> {
    let config = load(g)?;
    let mut settings = config.resolve(profile, overrides)?;
    if no_cache {
        settings = settings.with_cache(broker_core::config::CacheMode::None);
    }
    let broker = broker_for(&config, settings.clone())?;
    let token = get_token(&broker, profile, req)?;
    Ok((settings, token))
}

/// Gets a token: from cache without a runtime or HTTP client when fresh, else on a one-thread runtime.
pub fn get_token(
    broker: &Broker,
    profile: &str,
    req: &broker_core::TokenRequest,
) -> Result<std::sync::Arc<broker_core::AccessToken>> {
    if let Some(t) = broker.cached(profile, req)? {
        return Ok(t);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| broker_core::Error::internal(format!("cannot start the runtime: {e}")))?;
    let feedback = crate::feedback::get();
    let result = rt.block_on(async {
        let fetch = broker.token(profile, req);
        tokio::pin!(fetch);
        tokio::select! {
            r = &mut fetch => r,
            () = tokio::time::sleep(crate::feedback::QUIET_FOR) => {
                feedback.waiting(profile);
                fetch.await
            }
        }
    });
    feedback.done();
    result
}

/// Removes from `cmd`'s environment the variables that hold this profile's credentials (`{ env = "..." }`
/// sources), except those named in `keep`: a program given a token has no business with the secret that got it.
pub fn scrub_credentials(cmd: &mut std::process::Command, settings: &Settings, keep: &[String]) {
    for (_, source, _) in settings.secret_sources() {
        if let broker_core::secret::SecretSource::Env(name) = source {
            if !keep.contains(name) {
                cmd.env_remove(name);
            }
        }
    }
}
