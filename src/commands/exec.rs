//! `broker exec <profile> -- <command>`: replace this process with the command, the token in its environment.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use secrecy::ExposeSecret;

use crate::context;
use crate::context::{CmdResult, Failure, Globals};

#[derive(clap::Args)]
pub struct Args {
    /// The profile.
    pub profile: String,
    /// Also put the token in this variable (repeatable).
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,
    /// Pass this variable on to the command although it holds one of the profile's credentials (repeatable).
    /// By default the variables named by the profile's `{ env = "..." }` sources are removed.
    #[arg(long = "keep-env", value_name = "NAME")]
    pub keep_env: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    let (settings, token) = context::profile_token(g, &args.profile)?;
    let Some((program, rest)) = args.command.split_first() else {
        return Err(broker_core::Error::usage("no command given after `--`").into());
    };
    let raw = token.secret().expose_secret();
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    context::scrub_credentials(&mut cmd, &settings, &args.keep_env);
    cmd.env("BROKER_TOKEN", raw);
    for name in settings
        .token_env()
        .into_iter()
        .chain(args.env.iter().map(String::as_str))
    {
        cmd.env(name, raw);
    }
    // exec(2): signals and the exit status are the command's own. It only returns on failure.
    let err = cmd.exec();
    eprintln!("error: cannot run {}: {err}", program.to_string_lossy());
    Err(Failure::Exit(
        if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
}
