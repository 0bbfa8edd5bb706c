//! What the proxy serves: a route per profile with an `api` (its origin, the header its token goes in, the HTTP
//! client that carries it), and the broker the tokens come from.
//!
//! *Invariant: a profile gets a route only when its `api` may carry a credential (`config::secure_enough`).*

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header::HeaderName;
use broker_core::{Broker, Error};
use url::Url;

/// One proxied profile.
pub(super) struct Route {
    pub(super) api: Url,
    /// The header the profile's token goes in; a client's own copy of it is dropped.
    pub(super) header: HeaderName,
    /// The template of its value (`Bearer {token}`, ION's `{token}`), split from the profile's header once.
    pub(super) value: String,
    pub(super) client: reqwest::Client,
    /// Held while a rejected token is replaced, so concurrent 401s cost one new token.
    pub(super) replacing: tokio::sync::Mutex<()>,
    pub(super) last_forced: Mutex<Option<Instant>>,
    /// The profile uses DPoP: a client's own `DPoP` header is dropped, each request gets the proxy's proof.
    pub(super) dpop: bool,
    /// The api's last `DPoP-Nonce`.
    pub(super) nonces: broker_core::dpop::Nonces,
    /// Who may use it (docs/reference.md §11).
    pub(super) allow: Option<broker_core::caller::Allow>,
}

/// The profiles the proxy serves and the broker their tokens come from.
pub struct Routes {
    pub(super) broker: Arc<Broker>,
    pub(super) routes: HashMap<String, Route>,
    /// `--profile`: the one profile, at the root.
    pub(super) single: Option<String>,
}

impl Routes {
    /// A route for every profile of `config` with an `api` (or for `single` only, which must have one), served by
    /// `broker`.
    pub fn build(
        config: &broker_core::Config,
        broker: Arc<Broker>,
        single: Option<&str>,
        upstream_timeout: Duration,
    ) -> Result<Routes, Error> {
        let names: Vec<String> = match single {
            Some(p) => vec![p.to_owned()],
            None => config.profile_names().map(str::to_owned).collect(),
        };
        let mut routes = HashMap::new();
        for name in names {
            let settings = match config.resolve(&name, &Default::default()) {
                Ok(s) => s,
                Err(e) if single.is_some() => return Err(e),
                Err(e) => {
                    tracing::warn!("not proxying profile `{name}`: {e}");
                    continue;
                }
            };
            match route(&settings, upstream_timeout) {
                Ok(Some(r)) => {
                    routes.insert(name, r);
                }
                Ok(None) if single.is_some() => {
                    return Err(Error::config(format!(
                        "profile `{name}` has no `api` to proxy to; set `api = \"https://...\"`"
                    )))
                }
                Ok(None) => {}
                Err(e) if single.is_some() => return Err(e),
                Err(e) => tracing::warn!("not proxying profile `{name}`: {e}"),
            }
        }
        tracing::info!("proxying {} profiles", routes.len());
        Ok(Routes {
            broker,
            routes,
            single: single.map(str::to_owned),
        })
    }
}

/// A profile's route, if it has an `api`.
fn route(s: &broker_core::Settings, upstream_timeout: Duration) -> Result<Option<Route>, Error> {
    let Some(api) = s.api() else {
        return Ok(None);
    };
    let name = s.profile();
    if !broker_core::config::secure_enough(api, s.allow_http()) {
        return Err(Error::config(format!(
            "profile `{name}`: api {api} is plain http to another host: the token would cross the network in \
             clear (set `allow_http = true` if that network is trusted)"
        )));
    }
    let (header, value) = s
        .header()
        .split_once(':')
        .and_then(|(n, v)| Some((HeaderName::try_from(n.trim()).ok()?, v.trim().to_owned())))
        .ok_or_else(|| {
            Error::config(format!(
                "profile `{name}`: header template is not `Name: value`"
            ))
        })?;
    let client = broker_core::api_client(s, upstream_timeout)?;
    Ok(Some(Route {
        api: api.clone(),
        header,
        value,
        client,
        replacing: tokio::sync::Mutex::new(()),
        last_forced: Mutex::new(None),
        dpop: s.dpop().enabled(),
        nonces: Default::default(),
        allow: s.allow().cloned(),
    }))
}
