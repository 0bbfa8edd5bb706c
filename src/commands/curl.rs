//! `broker curl <profile> <url> [curl args...]`: curl with the provider's header (and a DPoP proof for the method
//! and URL curl will use, when the token is DPoP-bound), passed through a pipe (`-H @/dev/fd/N`) so neither is
//! ever on argv.

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

/// The method curl will send, from its arguments: `-X`/`--request`, else `-I`/`--head`, else `-T` (PUT), else
/// `-G` (GET), else `-d`/`-F`/`--data*`/`--form*`/`--json` (POST), else GET.
pub fn curl_method(args: &[OsString]) -> String {
    // Short options that take a value (curl's manual): the value is the rest of the cluster or the next argument.
    const WITH_VALUE: &str = "AbcCdDeEFhHKmoOPQrtTuUwxXYyz";
    let (mut explicit, mut head, mut upload, mut get, mut data) =
        (None, false, false, false, false);
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if let Some(long) = a.strip_prefix("--") {
            match long {
                "request" => explicit = it.next(),
                "head" => head = true,
                "upload-file" => upload = true,
                "get" => get = true,
                l if l.starts_with("data") || l.starts_with("form") || l == "json" => data = true,
                _ => {}
            }
        } else if let Some(cluster) = a.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (i, c) in cluster.char_indices() {
                match c {
                    'I' => head = true,
                    'G' => get = true,
                    _ => {}
                }
                if WITH_VALUE.contains(c) {
                    let rest = &cluster[i + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        it.next()
                    } else {
                        Some(rest.to_owned())
                    };
                    match c {
                        'X' => explicit = value,
                        'd' | 'F' => data = true,
                        'T' => upload = true,
                        _ => {}
                    }
                    break;
                }
            }
        }
    }
    match explicit {
        Some(m) => m.to_ascii_uppercase(),
        None if head => "HEAD".into(),
        None if upload => "PUT".into(),
        None if data && !get => "POST".into(),
        None => "GET".into(),
    }
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    let config = context::load(g)?;
    let settings = config.resolve(&args.profile, &Default::default())?;
    let broker = context::broker_for(&config, settings.clone())?;
    let token = context::get_token(&broker, &args.profile, &Default::default())?;
    let url = join_url(settings.api(), &args.url, &args.profile)?;
    let (name, value) = broker.header(&args.profile, &token)?;
    let mut lines = format!("{name}: {}\n", value.expose_secret());
    let method = curl_method(&args.curl_args);
    if let Some(proof) = broker.proof(&args.profile, &token, &method, &url, None)? {
        lines.push_str(&format!("DPoP: {}\n", proof.expose_secret()));
    }
    let lines = secrecy::SecretString::from(lines);
    let io = |e: std::io::Error| Error::internal(format!("cannot pass the header to curl: {e}"));
    let (reader, mut writer) = std::io::pipe().map_err(io)?;
    writer
        .write_all(lines.expose_secret().as_bytes())
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

    #[test]
    fn the_method_is_the_one_curl_will_send() {
        let m = |args: &[&str]| curl_method(&args.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(m(&[]), "GET");
        assert_eq!(m(&["-s", "-o", "-X"]), "GET"); // -o's value, not an option
        assert_eq!(m(&["-X", "delete"]), "DELETE");
        assert_eq!(m(&["-sXPATCH"]), "PATCH");
        assert_eq!(m(&["--request", "PUT", "-d", "x"]), "PUT");
        assert_eq!(m(&["-d", "a=1"]), "POST");
        assert_eq!(m(&["--json", "{}"]), "POST");
        assert_eq!(m(&["-G", "-d", "q=1"]), "GET");
        assert_eq!(m(&["-I"]), "HEAD");
        assert_eq!(m(&["-T", "file"]), "PUT");
        assert_eq!(m(&["-F", "f=@x"]), "POST");
    }
}
