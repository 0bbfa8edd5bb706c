//! `broker cache clear [profile]`.

use broker_core::cache::DiskCache;

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::output;

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Remove cached tokens: one profile's, or all.
    #[command(after_help = "Examples:\n  broker cache clear ion-prod\n  broker cache clear")]
    Clear {
        /// The profile; all entries when omitted.
        profile: Option<String>,
    },
}

pub fn run(g: &Globals, cmd: &CacheCommand) -> CmdResult {
    let CacheCommand::Clear { profile } = cmd;
    match profile {
        Some(name) => {
            let config = context::load(g)?;
            let settings = config.resolve(name, &Default::default())?;
            let removed = context::broker_for(&config, settings)?.clear(name)?;
            output::print_stdout(&format!(
                "{}\n",
                if removed {
                    format!("cleared `{name}`")
                } else {
                    format!("`{name}` had no cached token")
                }
            ))?;
        }
        None => {
            let n = match context::cache_dir() {
                Some(dir) => DiskCache::new(dir).clear()?,
                None => 0,
            };
            output::print_stdout(&format!("cleared {n} cached token(s)\n"))?;
        }
    }
    Ok(())
}
