//! Integration tests of the `broker` binary and the `broker-core` crate. One binary, one link.
// A test crate: its helpers, like its tests, may panic on what the test set up (clippy.toml covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Harness: private homes, the binary, the npm OAuth servers.
mod support;
// A real redis-server per test.
mod redis_server;

// Conformance against third-party servers: oidc-provider as a Keycloak realm, oauth2-mock-server as Auth0.
mod conformance;
// Client authentication without a shared secret, token exchange, keyring secrets, against oidc-provider.
mod client_auth;
// Token exchange (RFC 8693) against oidc-provider.
mod token_exchange;
// Bad key material named at its file, and keyring secrets.
mod key_material;
// Contract §4 classification of token endpoint answers, one wiremock row each.
mod classification;
// In-process single flight: 100 concurrent callers, one upstream call; keys do not block each other.
mod single_flight;
// Cross-process: 50 `broker token` processes on a cold cache, one upstream call.
mod cross_process;
// Expiry, margins, the same-token pause and failed refreshes, on an injected clock.
mod expiry;
// Retries, Retry-After, cool-downs, stalls and resets (issue: hardening).
mod hardening;
// Secret hygiene at trace level, SIGKILL mid-write, 200 processes over four profiles.
mod hygiene;
// Broken configs, snapshotted with insta: file, line, column, hint, exit 3.
mod config_errors;
// ca_file against a local TLS endpoint with a generated CA.
mod tls;
// Integrations: ExecCredential, git credential helper, exec, curl, env eval, completions, man.
mod integrations;
// Outages: one shared retry round, the remembered next attempt, per-call min_ttl, the status line, cache clear.
mod outages;
// The cache at rest: sealed entries, a copied cache directory.
mod cache_at_rest;
// Attacks by another local user or a hostile provider: planted cache files and endpoints, hostile answers, leaks.
mod trust;
// The trust boundary of key files, subject tokens, the fleet key, Redis, discovery and excerpts (a real second uid).
mod trust_material;
// Fleet mode: daemons of several homes sharing one real redis-server.
mod fleet;
// The daemon: socket, uid check, single flight, refresh ahead, outage, reload, shutdown, metrics.
mod daemon;
// The daemon over time: refresh ahead, idle profiles, outages, sinks.
mod daemon_refresh;
// The daemon's bounds: connection floods, the key check, unknown names, --socket and --listen.
mod daemon_limits;
// The audit log: a line per request and fetch, rotation, a full disk, `broker audit`.
mod audit;
// Per-profile caller rules in the daemon and the proxy: other uids, executables, a reused pid.
mod caller_rules;
// DPoP (RFC 9449) against oidc-provider and a resource server that verifies every proof.
mod dpop;
// DPoP keys: bindings a server makes against the profile's, a generated key in the keyring.
mod dpop_keys;
// docker-credential-broker with the real skopeo against a registry front that checks the issuer's signature.
mod docker_credential;
// Token files for any program: netrc read by curl, npmrc, docker, env, templates, on_change.
mod sinks;
// `broker proxy` in front of a real API: headers, origins, redirects, 401 retries, streaming, callers, Python.
mod proxy;
// Who may call the proxy (uids, the key, Python's requests with a base URL) and [proxy] inside the daemon.
mod proxy_callers;
// The CLI's other commands, formats, exit codes and config errors.
mod cli;
// `broker demo`, the README's first command.
mod demo;
