//! `docker-credential-broker` (the broker binary under that name, a link) and `broker docker-credential`: the docker
//! credential-helper protocol, for docker, podman, skopeo, buildah and anything using their libraries. `get` reads
//! a registry on stdin and answers `{"ServerURL","Username","Secret"}` with the token of the profile whose
//! `registries` name it; `list` names those registries; `store` and `erase` refuse, since the token comes from the
//! provider. It answers only for registries a profile names.

use std::io::{Read, Write};

use broker_core::Error;
use secrecy::ExposeSecret;

use crate::context::{self, CmdResult, Failure, Globals};

/// The message the helper protocol's clients recognise as "nothing stored for this registry".
const NOT_FOUND: &str = "credentials not found in native keychain";

#[derive(clap::Args)]
pub struct Args {
    /// The helper's action: get, list, store, erase, version.
    pub action: String,
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    let mut input = String::new();
    if matches!(args.action.as_str(), "get" | "store" | "erase") {
        // A registry name or a small JSON document: anything longer is not the protocol.
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut input)
            .map_err(|e| Error::usage(format!("cannot read the request on stdin: {e}")))?;
    }
    let answer = match args.action.as_str() {
        "get" => match get(g, input.trim()) {
            Ok(Some(text)) => Ok(text),
            Ok(None) => {
                // What the protocol's clients take for "nothing here" (they then go on without credentials).
                let _ = writeln!(std::io::stdout(), "{NOT_FOUND}");
                return Err(Failure::Exit(1));
            }
            Err(e) => Err(e),
        },
        "list" => list(g),
        "store" | "erase" => Err(Error::usage(format!(
            "docker-credential-broker does not {} credentials: tokens come from the identity provider of the \
             profile whose `registries` name the registry (`broker check` shows them)",
            args.action
        ))),
        "version" => Ok(concat!("docker-credential-broker ", env!("CARGO_PKG_VERSION"), "\n").to_owned()),
        other => Err(Error::usage(format!(
            "unknown action `{other}`: use get, list, store, erase or version"
        ))),
    };
    match answer {
        Ok(text) => crate::output::print_stdout(&text).map_err(Failure::from),
        Err(e) => {
            // Helper clients show what the helper printed on stdout; the error names no secret.
            let _ = writeln!(std::io::stdout(), "{}", crate::output::error_text(&e));
            Err(Failure::Reported(e.kind()))
        }
    }
}

/// The registry a server URL names, as `host` or `host:port` in lower case: `https://r.example.com/v2/` and
/// `r.example.com` are the same registry.
pub fn registry_of(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or_default();
    host.to_ascii_lowercase()
}

/// Each registry a profile names (as [`registry_of`] writes it), with that profile and its `username`, in
/// profile order.
fn registries(g: &Globals) -> Result<Vec<(String, String, String)>, Error> {
    let config = context::load(g)?;
    let mut out = Vec::new();
    for name in config.profile_names() {
        if let Ok(s) = config.resolve(name, &Default::default()) {
            for r in s.registries() {
                out.push((registry_of(r), name.to_owned(), s.username().to_owned()));
            }
        }
    }
    Ok(out)
}

/// The answer for `server`, or `None` when no profile names it.
fn get(g: &Globals, server: &str) -> Result<Option<String>, Error> {
    let wanted = registry_of(server);
    let Some((_, profile, username)) = registries(g)?.into_iter().find(|(r, ..)| *r == wanted)
    else {
        return Ok(None);
    };
    let (_, token) = context::profile_token(g, &profile)?;
    let answer = serde_json::json!({
        "ServerURL": server,
        "Username": username,
        "Secret": token.secret().expose_secret(),
    });
    Ok(Some(format!("{answer}\n")))
}

/// Every registry and the user name given for it (the first profile naming a registry answers for it).
fn list(g: &Globals) -> Result<String, Error> {
    let mut map = serde_json::Map::new();
    for (registry, _, username) in registries(g)? {
        map.entry(registry)
            .or_insert(serde_json::Value::from(username));
    }
    Ok(format!("{}\n", serde_json::Value::Object(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_name_their_registry() {
        for (url, want) in [
            ("https://Registry.Example.com/v2/", "registry.example.com"),
            ("registry.example.com", "registry.example.com"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://127.0.0.1:5000/v1/", "127.0.0.1:5000"),
            ("https://index.docker.io/v1/", "index.docker.io"),
        ] {
            assert_eq!(registry_of(url), want, "{url}");
        }
    }
}
