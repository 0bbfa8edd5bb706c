//! `broker demo`: the README's first command. Starts the dev issuer in-process on a free port, uses a
//! temporary config and cache (never the user's), and shows a cold fetch and a warm hit for an ION-shaped
//! and a CHILI-shaped profile. Prints fingerprints, never tokens.

use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use broker_core::config::LoadOptions;
use broker_core::token::jwt_claims;
use broker_core::{Broker, Config, Error, TokenRequest};
use secrecy::ExposeSecret;

use crate::context::CmdResult;
use crate::dev_issuer;
use crate::output::rfc3339;

pub fn run() -> CmdResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    rt.block_on(demo())?;
    Ok(())
}

fn io(e: std::io::Error) -> Error {
    Error::internal(format!("demo: {e}"))
}

/// The demo's config in `dir`: an ION- and a CHILI-shaped profile against the issuer at `base`. The secret goes
/// into a 0600 file and the config names the file: no secret on argv or in the config.
fn write_config(dir: &std::path::Path, base: &str, client_secret: &str) -> Result<Config, Error> {
    let secret_path = dir.join("client-secret");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_path)
            .map_err(io)?;
        writeln!(f, "{client_secret}").map_err(io)?;
    }
    let config_path = dir.join("config.toml");
    let secret = secret_path
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    std::fs::write(
        &config_path,
        format!(
            r#"[defaults]
client_id = "demo-client"
client_secret = {{ file = "{secret}" }}

[profiles.ion-demo]
provider = "ion"
auth_server = "{base}"

[profiles.chili-demo]
provider = "chili"
token_url = "{base}/oauth/token"
"#
        ),
    )
    .map_err(io)?;
    Config::load(&LoadOptions {
        builtin_providers: broker_core::BUILTIN_PROVIDERS
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect(),
        providers_dir: None,
        config_file: Some(config_path),
        config_file_required: true,
    })
}

async fn demo() -> Result<(), Error> {
    let tmp = tempfile::Builder::new()
        .prefix("broker-demo")
        .tempdir()
        .map_err(io)?;
    let issuer = dev_issuer::start(0, 300, "demo-client").await?;
    let base = issuer.base().to_owned();

    let config = write_config(tmp.path(), &base, &issuer.client_secret)?;
    let cache_dir = tmp.path().join("cache");

    println!(
        "broker demo: a development issuer on {base}; config and cache in a temporary directory\n"
    );
    for (profile, what) in [
        ("ion-demo", "the built-in `ion` provider (Keycloak realm api-keys, form body, raw `Authorization: <token>`)"),
        ("chili-demo", "the built-in `chili` provider (Auth0 style, JSON body with audience, `Bearer`)"),
    ] {
        let settings = config.resolve(profile, &Default::default())?;
        println!("{profile}: {what}");
        // Each round uses a new broker over the same disk cache, as separate `broker token` runs would.
        let mut last = None;
        for round in ["first  (cold cache)", "second (warm cache)"] {
            let broker = Broker::builder().settings(settings.clone()).disk_cache(&cache_dir).build();
            let before = issuer.issued();
            let started = Instant::now();
            let token = broker.token(profile, &TokenRequest::default()).await?;
            let took = started.elapsed();
            println!(
                "  {round}: upstream calls: {}  time: {:.3} ms",
                issuer.issued() - before,
                took.as_secs_f64() * 1000.0
            );
            last = Some(token);
        }
        let Some(token) = last else { continue };
        show(settings.header(), &token);
        println!();
    }
    println!(
        "The tokens themselves were never printed. Try it on your own provider: see README.md."
    );
    Ok(())
}

fn show(header: &str, token: &Arc<broker_core::AccessToken>) {
    let now = SystemTime::now();
    println!(
        "  token fingerprint: sha256:{} (the token itself is not shown)",
        token.fingerprint()
    );
    println!("  header template:   {header}");
    println!(
        "  expires:           {} ({} left)",
        rfc3339(token.expires_at()),
        broker_core::duration::format(token.remaining(now))
    );
    if let Some(claims) = jwt_claims(token.secret().expose_secret()) {
        println!("  claims:            {}", serde_json::Value::Object(claims));
    }
}
