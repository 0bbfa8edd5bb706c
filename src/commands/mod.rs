//! One file per subcommand.

pub mod cache;
pub mod check;
pub mod demo;
pub mod inspect;
pub mod list;
pub mod providers;
pub mod token;
