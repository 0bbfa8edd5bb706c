//! `broker curl <profile> <url> [curl args...]`: curl with the provider's header, passed through a pipe
//! (`-H @/dev/fd/N`) so the token is never on argv.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

use broker_core::Error;
use secrecy::ExposeSecret;

use crate::context;
use crate::context::{CmdResult, Failure, Globals};

#[derive(clap::Args)]
pub struct Args {
    /// The profile.
    pub profile: String,
    /// The URL; one starting with `/` is joined to the profile's `api` endpoint.
    pub url: String,
    /// Pass this variable on to the command although it holds one of the profile's credentials (repeatable).
    /// By default the variables named by the profile's `{ env = "..." }` sources are removed.
    #[arg(long = "keep-env", value_name = "NAME")]
    pub keep_env: Vec<String>,
    /// Further arguments for curl.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CURL_ARGS"
    )]
    pub curl_args: Vec<OsString>,
}

/// `url`, or `api` + `url` when it starts with `/`.
pub fn join_url(api: Option<&url::Url>, url: &str, profile: &str) -> Result<String, Error> {
    if !url.starts_with('/') {
        return Ok(url.to_owned());
    }
    let api = api.ok_or_else(|| {
        Error::config(format!(
            "profile `{profile}` has no `api` endpoint to join {url} to; give a full URL"
        ))
    })?;
    Ok(format!("{}{url}", api.as_str().trim_end_matches('/')))
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    let (settings, token) = context::profile_token(g, &args.profile)?;
    let url = join_url(settings.api(), &args.url, &args.profile)?;
    let io = |e: std::io::Error| Error::internal(format!("cannot pass the header to curl: {e}"));
    let (reader, mut writer) = std::io::pipe().map_err(io)?;
    writer
        .write_all(format!("{}\n", settings.header_line(token.secret().expose_secret())).as_bytes())
        .map_err(io)?;
    drop(writer);
    // The read end must survive exec: clear its close-on-exec flag.
    rustix::io::fcntl_setfd(&reader, rustix::io::FdFlags::empty()).map_err(|e| io(e.into()))?;
    let mut cmd = std::process::Command::new("curl");
    cmd.arg("-H")
        .arg(format!("@/dev/fd/{}", reader.as_raw_fd()))
        .arg(&url)
        .args(&args.curl_args);
    context::scrub_credentials(&mut cmd, &settings, &args.keep_env);
    let err = cmd.exec();
    drop(reader);
    if err.kind() == std::io::ErrorKind::NotFound {
        eprintln!("error: curl is not installed or not on PATH (e.g. `apt-get install curl`)");
        return Err(Failure::Exit(127));
    }
    eprintln!("error: cannot run curl: {err}");
    Err(Failure::Exit(126))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_to_the_api_endpoint() {
        let api = url::Url::parse("https://api.buildwithion.com").ok();
        assert_eq!(
            join_url(api.as_ref(), "/graphql", "p").ok().as_deref(),
            Some("https://api.buildwithion.com/graphql")
        );
        assert_eq!(
            join_url(None, "https://x.example/a", "p").ok().as_deref(),
            Some("https://x.example/a")
        );
        assert!(join_url(None, "/graphql", "p").is_err());
    }
}
