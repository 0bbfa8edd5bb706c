//! `broker`: OAuth2 client-credentials tokens for any API, cached and shared.

mod audit;
mod caller;
mod cli;
mod commands;
mod context;
mod daemon;
mod dev_issuer;
mod feedback;
mod listen;
mod output;
mod proxy;

fn main() -> std::process::ExitCode {
    cli::run()
}
