//! `broker secret set|delete <profile> [--field F]`: the value of a `{ keyring = "service/account" }` source, read
//! without echo from the terminal (or from standard input when it is not one), never from argv.

use std::io::{IsTerminal, Read};

use broker_core::secret::{SecretSource, Shape};
use broker_core::Error;
use secrecy::SecretString;

use crate::context;
use crate::context::{CmdResult, Globals};

#[derive(clap::Subcommand)]
pub enum SecretCommand {
    /// Store a value in the keyring entry that a profile's field names (read without echo, or from stdin).
    #[command(
        after_help = "Examples:\n  broker secret set ion-prod                       # asks for the client secret\n  broker secret set ion-prod --field private_key < key.pem"
    )]
    Set(Target),
    /// Delete the keyring entry that a profile's field names.
    #[command(after_help = "Example:\n  broker secret delete ion-prod")]
    Delete(Target),
}

#[derive(clap::Args)]
pub struct Target {
    /// The profile.
    pub profile: String,
    /// The field whose `{ keyring = "service/account" }` source is meant.
    #[arg(long, default_value = "client_secret")]
    pub field: String,
}

pub fn run(g: &Globals, cmd: &SecretCommand) -> CmdResult {
    let (Target { profile, field }, set) = match cmd {
        SecretCommand::Set(t) => (t, true),
        SecretCommand::Delete(t) => (t, false),
    };
    let config = context::load(g)?;
    let settings = config.resolve(profile, &Default::default())?;
    let sources = settings.secret_sources();
    let Some((_, source, shape)) = sources.iter().find(|(f, _, _)| f == field) else {
        let fields: Vec<&str> = sources.iter().map(|(f, _, _)| *f).collect();
        return Err(Error::config(format!(
            "profile `{profile}` has no `{field}` secret source (it has: {})",
            fields.join(", ")
        ))
        .into());
    };
    if !matches!(source, SecretSource::Keyring { .. }) {
        return Err(Error::config(format!(
            "profile `{profile}`: `{field}` comes from {}, not the keyring; write `{field} = {{ keyring = \"service/account\" }}` in the config first",
            source.describe()
        ))
        .into());
    }
    if set {
        let value = read_value(&format!("{field} for {profile}"), *shape)?;
        source.store(&value)?;
        eprintln!("stored {field} of `{profile}` in {}", source.describe());
    } else if source.delete()? {
        eprintln!("deleted {}", source.describe());
    } else {
        eprintln!("{} had no entry", source.describe());
    }
    Ok(())
}

/// The value: typed without echo at a terminal, else standard input (its first line, or all of it for PEM).
fn read_value(what: &str, shape: Shape) -> Result<SecretString, Error> {
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what}: "))
            .map_err(|e| Error::usage(format!("cannot read from the terminal: {e}")))?
    } else {
        let mut s = String::new();
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut s)
            .map_err(|e| Error::usage(format!("cannot read standard input: {e}")))?;
        s
    };
    let value = match shape {
        Shape::Line => text.lines().next().unwrap_or("").trim(),
        Shape::Whole | Shape::Public => text.trim(),
    };
    if value.is_empty() {
        return Err(Error::usage(format!("no value given for {what}")));
    }
    Ok(SecretString::from(value.to_owned()))
}
