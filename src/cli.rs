//! The command tree (one clap derive), logging set-up, and the mapping of error classes to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use broker_core::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

use crate::commands;
use crate::context::{Failure, Globals};

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (also a still-valid cached token served after a failed refresh)
  1  internal: a local failure (cache directory not writable, I/O error, a bug)
  2  usage: bad command-line arguments
  3  config: config or provider file invalid, unknown profile, secret source failed, request wrong (404, 415, invalid_scope)
  4  rejected: the provider refused these credentials (401, 403, invalid_client)
  5  unavailable: the provider could not be reached, or asked us to wait (timeouts, 408, 429, 5xx)
  6  bad_response: the provider answered, but not with a usable token";

const EXAMPLES: &str = "\
Examples:
  broker token ion-prod                    # the bare token, from cache while it is good
  broker token chili --format header       # Authorization: Bearer eyJ...
  broker list                              # profiles and what the cache holds
  broker demo                              # a tour against a local development issuer";

#[derive(Parser)]
#[command(
    name = "broker",
    version,
    about = "OAuth2 client-credentials tokens for any API, cached and shared"
)]
#[command(after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct Cli {
    /// Config file (default: $BROKER_CONFIG, else $XDG_CONFIG_HOME/broker/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print an access token for a profile.
    #[command(
        after_help = "Examples:\n  broker token ion-prod\n  broker token chili --format json --min-ttl 10m\n  curl -H \"$(broker token ion-prod --format header)\" https://api.buildwithion.com/graphql"
    )]
    Token(commands::token::Args),
    /// List profiles with their provider, environment and cache state (never a token).
    #[command(after_help = "Example:\n  broker list")]
    List,
    /// List provider definitions, built-in and the user's.
    #[command(after_help = "Example:\n  broker providers")]
    Providers,
    /// Validate every config and provider file and show each profile's resolved settings, secrets redacted.
    #[command(after_help = "Example:\n  broker check --config ./config.toml")]
    Check,
    /// Show a token's JWT header and claims (never the signature) and its expiry.
    #[command(
        after_help = "Examples:\n  broker inspect ion-prod\n  echo \"$TOKEN\" | broker inspect -"
    )]
    Inspect(commands::inspect::Args),
    /// Manage the token cache.
    #[command(subcommand)]
    Cache(commands::cache::CacheCommand),
    /// Read the audit log of the daemon and the proxy: a table on a terminal, JSON lines in a pipe.
    #[command(
        after_help = "Examples:\n  broker audit --since 1h\n  broker audit --profile ion-prod --follow | jq .caller"
    )]
    Audit(commands::audit::Args),
    /// Store or delete a profile's `{ keyring = "service/account" }` secret (read without echo, never from argv).
    #[command(subcommand)]
    Secret(commands::secret::SecretCommand),
    /// Run a command with the token in its environment (BROKER_TOKEN and the provider's token_env).
    #[command(
        after_help = "Examples:\n  broker exec ion-prod -- python3 query_runs.py\n  broker exec chili --env API_TOKEN -- ./deploy.sh"
    )]
    Exec(commands::exec::Args),
    /// Run curl with the provider's header (never on argv); a URL starting with / is joined to the profile's api.
    #[command(
        after_help = "Example:\n  broker curl ion-prod /graphql -H 'Content-Type: application/json' -d '{\"query\":\"{ runs(first: 10) { edges { node { id title } } } }\"}'"
    )]
    Curl(commands::curl::Args),
    /// A git credential helper that answers only for the profile's api host (or its git_hosts).
    #[command(
        name = "git-credential",
        after_help = "Example:\n  git config --global credential.https://git.example.com.helper '!broker git-credential my-profile'"
    )]
    GitCredential(commands::git_credential::Args),
    /// A docker credential helper (also run as `docker-credential-broker`, a link to broker) that answers only for
    /// the registries a profile names.
    #[command(
        name = "docker-credential",
        after_help = "Example:\n  ln -s \"$(command -v broker)\" ~/.local/bin/docker-credential-broker\n  # ~/.docker/config.json: {\"credHelpers\": {\"registry.example.com\": \"broker\"}}\n  echo registry.example.com | broker docker-credential get"
    )]
    DockerCredential(commands::docker_credential::Args),
    /// Print shell completions.
    #[command(
        after_help = "Examples:\n  broker completions bash > ~/.local/share/bash-completion/completions/broker\n  broker completions zsh > ~/.zfunc/_broker"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_help = "Example:\n  broker man | man -l -")]
    Man,
    /// Serve tokens to every local process over a private Unix socket, refreshing them ahead of expiry.
    #[command(
        after_help = "Examples:\n  broker daemon\n  broker daemon --allow-uid 1000 --log-format json\n  curl --unix-socket \"$XDG_RUNTIME_DIR/broker/broker.sock\" http://broker/v1/token/ion-prod"
    )]
    Daemon(crate::daemon::Args),
    /// A local reverse proxy that adds each profile's header: programs that know only a base URL get the token.
    #[command(
        after_help = "Examples:\n  broker proxy --listen 127.0.0.1:8081                 # http://127.0.0.1:8081/ion-prod/graphql\n  broker proxy --profile chili --listen 127.0.0.1:8082  # http://127.0.0.1:8082/... is CHILI's api\n  curl --unix-socket \"$XDG_RUNTIME_DIR/broker/proxy.sock\" http://x/ion-prod/graphql -d '{\"query\":\"{ me { id } }\"}'"
    )]
    Proxy(crate::proxy::Args),
    /// Run a tour: a local development issuer, an ION-shaped and a CHILI-shaped profile, cold and warm.
    #[command(after_help = "Example:\n  cargo run --release -- demo")]
    Demo,
    /// Run a local development token issuer on loopback (Keycloak- and Auth0-shaped endpoints).
    #[command(
        name = "dev-issuer",
        after_help = "Example:\n  broker dev-issuer --port 8080 --ttl 300"
    )]
    DevIssuer(crate::dev_issuer::Args),
}

/// The hot path's command line: `broker token ...`, parsed by clap from a tree of that one subcommand, so a warm
/// call does not build every other subcommand's arguments (scripts/bench-cli). Anything it does not accept (help,
/// a mistake) goes to the whole tree, which gives the usual message.
#[derive(Parser)]
#[command(name = "broker")]
struct TokenLine {
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TokenOnly,
}

#[derive(Subcommand)]
enum TokenOnly {
    Token(commands::token::Args),
}

pub fn run() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Run as `docker-credential-broker ACTION` (a link), the docker credential helper.
    if argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        == Some("docker-credential-broker".as_ref())
    {
        argv.splice(0..1, ["broker".into(), "docker-credential".into()]);
    }
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("--version" | "-V") if argv.len() == 2 => {
            let _ =
                crate::output::print_stdout(concat!("broker ", env!("CARGO_PKG_VERSION"), "\n"));
            return ExitCode::SUCCESS;
        }
        Some("token") => {
            if let Ok(TokenLine {
                config,
                command: TokenOnly::Token(args),
            }) = TokenLine::try_parse_from(&argv)
            {
                init_logging(false);
                return exit(commands::token::run(&Globals { config }, &args));
            }
        }
        _ => {}
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                ErrorKind::Usage.exit_code()
            } else {
                0
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let json_logs = match &cli.command {
        Command::Daemon(a) => a.server.json_logs(),
        Command::Proxy(a) => a.server.json_logs(),
        _ => false,
    };
    init_logging(json_logs);
    let g = Globals {
        config: cli.config.clone(),
    };
    let result = match &cli.command {
        Command::Token(args) => commands::token::run(&g, args),
        Command::List => commands::list::run(&g),
        Command::Providers => commands::providers::run(&g),
        Command::Check => commands::check::run(&g),
        Command::Inspect(args) => commands::inspect::run(&g, args),
        Command::Cache(c) => commands::cache::run(&g, c),
        Command::Audit(args) => commands::audit::run(args),
        Command::Secret(c) => commands::secret::run(&g, c),
        Command::Exec(args) => commands::exec::run(&g, args),
        Command::Curl(args) => commands::curl::run(&g, args),
        Command::GitCredential(args) => commands::git_credential::run(&g, args),
        Command::DockerCredential(args) => commands::docker_credential::run(&g, args),
        Command::Completions { shell } => {
            commands::completions::completions(*shell, Cli::command())
        }
        Command::Man => commands::completions::man(Cli::command()),
        Command::Daemon(args) => crate::daemon::run(&g, args),
        Command::Proxy(args) => crate::proxy::run(&g, args),
        Command::Demo => commands::demo::run(),
        Command::DevIssuer(args) => crate::dev_issuer::run(args),
    };
    exit(result)
}

/// The exit code of a command's result, with its error shown.
fn exit(result: crate::context::CmdResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported(kind)) => ExitCode::from(kind.exit_code()),
        Err(Failure::Exit(code)) => ExitCode::from(code),
        Err(Failure::Error(e)) => {
            eprintln!("{}", crate::output::error_text(&e));
            ExitCode::from(e.kind().exit_code())
        }
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(crate::output::colour())
        .with_target(false);
    let from_env = ["BROKER_LOG", "RUST_LOG"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    // A filter is compiled only when a variable asks for one; otherwise a level suffices.
    let _ = match (from_env, json) {
        (true, _) => {
            let filter = EnvFilter::try_from_env("BROKER_LOG")
                .or_else(|_| EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| EnvFilter::new(if json { "info" } else { "warn" }));
            let fmt = fmt.with_env_filter(filter);
            if json {
                fmt.json().try_init()
            } else {
                fmt.without_time().try_init()
            }
        }
        (false, true) => fmt.with_max_level(tracing::Level::INFO).json().try_init(),
        (false, false) => fmt
            .with_max_level(tracing::Level::WARN)
            .without_time()
            .try_init(),
    };
}
