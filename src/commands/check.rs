//! `broker check`: validate every file, resolve every profile, show settings with secrets redacted.

use broker_core::secret::SecretSource;
use broker_core::{Error, Settings};

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::output;

pub fn run(g: &Globals) -> CmdResult {
    let config = context::load(g)?;
    let mut out = String::from("files:\n");
    for f in config.files() {
        out.push_str(&format!("  {f}\n"));
    }
    let mut failed = 0;
    for name in config.profile_names() {
        out.push_str(&format!("\n[profiles.{name}]\n"));
        match config
            .resolve(name, &Default::default())
            .and_then(|s| check_secrets(&s).map(|()| s))
        {
            Ok(s) => {
                for (k, v) in s.describe() {
                    out.push_str(&format!("  {k:<16} {v}\n"));
                }
            }
            Err(e) => {
                failed += 1;
                let text = output::error_text(&e);
                out.push_str(&format!("  {}\n", text.trim_end().replace('\n', "\n  ")));
            }
        }
    }
    output::print_stdout(&out)?;
    if failed > 0 {
        return Err(Error::config(format!("{failed} profile(s) have errors")).into());
    }
    output::print_stdout("\nok\n")?;
    Ok(())
}

/// Env and file sources must be readable now; commands are not run (they may prompt or cost).
fn check_secrets(s: &Settings) -> Result<(), Error> {
    for (field, src) in [
        ("client_id", s.client_id()),
        ("client_secret", s.client_secret()),
    ] {
        if matches!(src, SecretSource::Env(_) | SecretSource::File(_)) {
            src.resolve()
                .map_err(|e| e.context(format!("profile `{}`: {field}", s.profile())))?;
        }
    }
    Ok(())
}
