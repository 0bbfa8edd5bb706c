//! `broker-core`: OAuth2 client-credentials tokens for any API, cached and shared.
//!
//! The crate never prints and never parses argv. See `docs/ARCHITECTURE.md` for the map.

pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod secret;
pub mod token;

pub use error::{Error, ErrorKind, Result};
pub mod broker;
pub mod cache;
pub mod http;
pub mod kinds;
pub mod paths;
pub mod provider;

pub use broker::{Broker, BrokerBuilder, CacheState, Policy, TokenRequest};
pub use config::{Config, LoadOptions, Overrides, Settings};
pub use kinds::HttpProvider;
pub use provider::{FetchContext, Fetched, Provider};
pub use token::AccessToken;
