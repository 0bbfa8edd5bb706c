//! One file per subcommand.

pub mod audit;
pub mod cache;
pub mod check;
pub mod completions;
pub mod curl;
pub mod demo;
pub mod docker_credential;
pub mod exec;
pub mod git_credential;
pub mod inspect;
pub mod list;
pub mod providers;
pub mod secret;
pub mod token;
