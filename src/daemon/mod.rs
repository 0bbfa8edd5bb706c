//! `broker daemon`: one process that keeps every token fresh for every local caller, over HTTP/1.1 on a private
//! Unix socket (docs/reference.md §6). The CLI side of the exchange is `client.rs`.

mod api;
pub mod client;
pub mod metrics;
mod refresh;
mod sink;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use broker_core::{Broker, CacheState, Config, Error, ErrorKind, Settings, TokenRequest};
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;

use crate::context;
use crate::context::{CmdResult, Globals};
use crate::listen::{
    self, check_socket_dir, listen_tcp, raise_open_file_limit, remove_stale_socket, shutdown_signal,
};
use crate::output::{self, rfc3339, Format};
use api::*;
pub(crate) use api::{error_response, refused_by_rule, status_of};
use metrics::Metrics;

#[derive(clap::Args)]
pub struct Args {
    /// The socket (default: $XDG_RUNTIME_DIR/broker/broker.sock, else $XDG_CACHE_HOME/broker/run/broker.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Also accept connections from this uid (repeatable), e.g. a container's user.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Stop refreshing a profile nobody asked for in this long.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = crate::commands::token::parse_duration)]
    pub refresh_idle_after: Duration,
    /// Also listen on this loopback TCP address (e.g. 127.0.0.1:7878); every request must carry
    /// `Authorization: Bearer <key>`, the key being written 0600 to the runtime directory as `daemon.key`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Permit --listen on a non-loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    #[command(flatten)]
    pub server: listen::ServerArgs,
}

/// The socket path the daemon listens on by default, and the CLI looks for.
pub fn default_socket() -> Option<PathBuf> {
    broker_core::paths::runtime_dir().map(|d| d.join("broker.sock"))
}

/// Everything a request needs, swapped whole on SIGHUP.
struct Loaded {
    broker: Arc<Broker>,
    /// Profile names, sorted, and the config fingerprint: the parsed config itself is not kept.
    names: Vec<String>,
    /// The `Broker-Config` header value (a hex digest, so always a valid one).
    fingerprint: HeaderValue,
    settings: HashMap<String, Served>,
    /// `[proxy]`: what the proxy serves from this configuration, and the table itself (its listeners are started
    /// once, from the configuration the daemon started with).
    proxy: Option<(broker_core::config::ProxyDef, Arc<crate::proxy::Routes>)>,
    /// `[audit]` (read once, when the daemon starts).
    audit: broker_core::config::AuditDef,
}

/// What the daemon keeps per profile beside the broker's own state.
struct Served {
    shown: output::Shown,
    min_ttl: Duration,
    sink: Option<Box<sink::Target>>,
    provider: Option<String>,
    environment: Option<String>,
    /// Who may ask for the token (docs/reference.md §11).
    allow: Option<broker_core::caller::Allow>,
}

impl From<&Settings> for Served {
    fn from(s: &Settings) -> Self {
        Served {
            shown: output::Shown::from(s),
            min_ttl: s.min_ttl(),
            sink: sink::Target::of(s),
            provider: s.provider().map(str::to_owned),
            environment: s.environment().map(str::to_owned),
            allow: s.allow().cloned(),
        }
    }
}

struct Daemon {
    loaded: RwLock<Arc<Loaded>>,
    metrics: Arc<Metrics>,
    /// The audit log, started from the configuration the daemon started with.
    audit: Arc<crate::audit::Audit>,
    /// The broker's observer: the metrics, and the audit log of fetches.
    observer: Arc<dyn broker_core::Observer>,
    allowed_uids: Vec<u32>,
    idle_after: Duration,
    /// Profiles being refreshed in the background.
    refresher: refresh::Refresher,
}

impl crate::proxy::Backing for Daemon {
    fn routes(&self) -> Option<Arc<crate::proxy::Routes>> {
        self.loaded().proxy.as_ref().map(|(_, r)| r.clone())
    }

    fn used(&self, profile: &str) {
        self.refresher.keep_fresh(profile);
    }
}

impl Daemon {
    fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn load(
    config_flag: Option<&Path>,
    observer: &Arc<dyn broker_core::Observer>,
) -> Result<Loaded, Error> {
    let started = std::time::Instant::now();
    let loaded = load_config(config_flag, observer);
    // The parse of a large config (the TOML tree, every profile's layers) is freed by now, but glibc keeps freed pages
    // that live data sits above; give them back, so the daemon's resident size is what it holds (scripts/bench-daemon).
    release_freed_memory();
    let loaded = loaded?;
    tracing::info!(
        "loaded {} profiles in {} ms",
        loaded.names.len(),
        started.elapsed().as_millis()
    );
    Ok(loaded)
}

/// Asks glibc to return the pages it holds free to the system (`malloc_trim(0)`); nothing elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it walks and locks glibc's arenas itself.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

fn load_config(
    config_flag: Option<&Path>,
    observer: &Arc<dyn broker_core::Observer>,
) -> Result<Loaded, Error> {
    let config = Config::load(&context::load_options_for(config_flag))?;
    if let Some(warning) = config.shared_cache().and_then(|d| d.cleartext_password()) {
        tracing::warn!("{warning}");
    }
    let mut settings = HashMap::new();
    let mut b = context::with_shared_cache(Broker::builder(), &config)?
        .observer(observer.clone())
        .cache_encryption(config.cache_encryption());
    // Each profile resolved once: its `Served` record and its provider come from the same settings.
    for name in config.profile_names() {
        match config.resolve(name, &Default::default()) {
            Ok(s) => {
                settings.insert(name.to_owned(), Served::from(&s));
                b = b.settings(s);
            }
            Err(e) => b = b.broken(name, e),
        }
    }
    if let Some(dir) = context::cache_dir() {
        b = b.disk_cache(dir);
    }
    let broker = Arc::new(b.build());
    let proxy = match config.proxy() {
        Some(def) => Some((
            def.clone(),
            Arc::new(crate::proxy::Routes::build(
                &config,
                broker.clone(),
                None,
                def.upstream_timeout,
            )?),
        )),
        None => None,
    };
    Ok(Loaded {
        broker,
        proxy,
        names: config.profile_names().map(str::to_owned).collect(),
        fingerprint: HeaderValue::from_str(config.fingerprint())
            .map_err(|_| Error::internal("the config fingerprint is not a header value"))?,
        settings,
        audit: config.audit(),
    })
}

pub fn run(g: &Globals, args: &Args) -> CmdResult {
    args.server.runtime()?.block_on(serve(g, args))?;
    Ok(())
}

async fn serve(g: &Globals, args: &Args) -> Result<(), Error> {
    if let Some(addr) = args
        .listen
        .filter(|a| !a.ip().is_loopback() && !args.allow_remote)
    {
        return Err(Error::usage(format!(
            "--listen {addr} is not a loopback address; add --allow-remote if you mean it"
        )));
    }
    let socket = args.socket.clone().or_else(default_socket).ok_or_else(|| {
        Error::config("no runtime directory: set XDG_RUNTIME_DIR or HOME, or pass --socket")
    })?;
    let dir = socket
        .parent()
        .ok_or_else(|| Error::config("the socket path has no directory"))?;
    check_socket_dir(dir, args.socket.is_none())?;
    remove_stale_socket(&socket)?;
    raise_open_file_limit();
    let listener = UnixListener::bind(&socket)
        .map_err(|e| Error::internal(format!("cannot listen on {}: {e}", socket.display())))?;
    // Others can connect only when other uids are allowed (the kernel's uid of each peer is checked, and each
    // profile's `allow`); else the socket is ours alone.
    let mode = if args.allow_uid.is_empty() {
        0o600
    } else {
        0o666
    };
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::internal(format!("cannot chmod {}: {e}", socket.display())))?;

    let metrics = Arc::new(Metrics::default());
    let audit_cell = Arc::new(std::sync::OnceLock::new());
    let observer: Arc<dyn broker_core::Observer> = Arc::new(crate::audit::Fetches {
        audit: audit_cell.clone(),
        next: metrics.clone(),
    });
    let loaded = load(g.config.as_deref(), &observer)?;
    let audit = crate::audit::Audit::start(&loaded.audit)?;
    let _ = audit_cell.set(audit.clone());
    let daemon = Arc::new(Daemon {
        loaded: RwLock::new(Arc::new(loaded)),
        metrics,
        audit,
        observer,
        allowed_uids: std::iter::once(rustix::process::geteuid().as_raw())
            .chain(args.allow_uid.iter().copied())
            .collect(),
        idle_after: args.refresh_idle_after,
        refresher: refresh::Refresher::default(),
    });
    let tcp = match args.listen {
        Some(addr) => Some(listen_tcp(addr, dir, "daemon.key").await?),
        None => None,
    };
    for (name, s) in &daemon.loaded().settings {
        if s.sink.is_some() {
            daemon.refresher.keep_fresh(name);
        }
    }
    let refresher = tokio::spawn(refresh::run(daemon.clone()));
    let reload = tokio::spawn(reload_on_hup(daemon.clone(), g.config.clone()));
    let fleet = tokio::spawn(watch_shared_cache(daemon.clone()));
    tracing::info!("listening on {}", socket.display());
    let served = run_listeners(&daemon, args, listener, tcp).await;
    reload.abort();
    refresher.abort();
    fleet.abort();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped; removed {}", socket.display());
    served
}

/// Asks the shared cache, if configured, how it is once a second: it keeps `broker_shared_cache_up` true to the
/// moment, and brings a Redis that went down back into use as soon as it answers (docs/reference.md §9).
async fn watch_shared_cache(daemon: Arc<Daemon>) {
    loop {
        if let Some(shared) = daemon.loaded().broker.shared_cache() {
            shared.ping().await;
        }
        tokio::time::sleep(broker_core::shared::DOWN_FOR).await;
    }
}

/// Serves the API on the Unix socket (uid-checked) and on the TCP listener if any (key-checked), each within the
/// connection limits, until SIGTERM or SIGINT; then lets the requests in flight finish.
async fn run_listeners(
    daemon: &Arc<Daemon>,
    args: &Args,
    unix: UnixListener,
    tcp: Option<(tokio::net::TcpListener, String)>,
) -> Result<(), Error> {
    let api = Router::new()
        .route("/v1/token/{profile}", get(token))
        .route("/v1/token/{profile}/proof", get(api::proof))
        .route("/v1/profiles", get(profiles))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .with_state(daemon.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = args.server.limits();
    let tcp_server = tcp.map(|(listener, key)| {
        let gated = Gated {
            gate: Gate {
                daemon: daemon.clone(),
                who: Who::Tcp(
                    Arc::from(key),
                    Arc::new(crate::caller::Peer::of_tcp(None, "tcp with the daemon key")),
                ),
            },
            app: api.clone(),
        };
        let handler = move |_: &tokio::net::TcpStream| gated.clone();
        tokio::spawn(listen::serve(listener, limits, handler, stop_rx.clone()))
    });
    let unix_daemon = daemon.clone();
    let handler = move |io: &tokio::net::UnixStream| Gated {
        gate: Gate {
            daemon: unix_daemon.clone(),
            who: Who::Unix(Arc::new(crate::caller::Peer::of_unix(io))),
        },
        app: api.clone(),
    };
    let unix_server = tokio::spawn(listen::serve(unix, limits, handler, stop_rx.clone()));
    let proxy = match daemon.loaded().proxy.as_ref().map(|(def, _)| def.clone()) {
        Some(def) => {
            let proxy = crate::proxy::Proxy {
                backing: daemon.clone(),
                retry_body_limit: def.retry_body_limit,
                metrics: daemon.metrics.clone(),
                allowed_uids: daemon.allowed_uids.clone(),
                audit: daemon.audit.clone(),
            };
            Some(
                crate::proxy::start(Arc::new(proxy), def.listen, def.socket, limits, stop_rx)
                    .await?,
            )
        }
        None => None,
    };
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Some(p) = proxy {
        p.finish().await;
    }
    let served = unix_server.await;
    if let Some(t) = tcp_server {
        let _ = t.await;
    }
    served.map_err(|e| Error::internal(format!("server task: {e}")))
}

async fn reload_on_hup(daemon: Arc<Daemon>, config: Option<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match load(config.as_deref(), &daemon.observer) {
            Ok(l) => {
                *daemon.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(l);
                let sinks: Vec<String> = daemon
                    .loaded()
                    .settings
                    .iter()
                    .filter(|(_, s)| s.sink.is_some())
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in sinks {
                    daemon.refresher.keep_fresh(&name);
                }
                tracing::info!("SIGHUP: configuration reloaded");
            }
            Err(e) => tracing::warn!("SIGHUP: keeping the old configuration: {e}"),
        }
    }
}

/// Writes `bytes` to `path` atomically with `mode` ([`broker_core::paths::write_atomic`], a temp file
/// `.<name>.<random>.broker-tmp` beside it).
pub fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    write_private_owned(path, bytes, mode, (None, None))
}

/// [`write_private`], the file given to `owner` (uid, gid; when set) before it takes its name.
pub fn write_private_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: broker_core::paths::Owner,
) -> Result<(), Error> {
    use rustix::fs::{Mode, OFlags};
    let io = |e: std::io::Error| {
        Error::internal(format!("cannot write {}: {e}", path.display())).with_source(e)
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::internal(format!(
            "{} is not a file path",
            path.display()
        )));
    };
    let name = name.to_string_lossy();
    let dir = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    // A temp name of its own per write: two writers of one file (two daemons, a daemon and a restarted one) never
    // unlink each other's temp file. A writer killed mid-write leaves its temp file behind.
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    broker_core::paths::write_atomic(
        &dir,
        &format!(".{name}.{}.broker-tmp", hex::encode(nonce)),
        &name,
        bytes,
        mode,
        owner,
    )
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_writers_of_one_file_never_undo_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::thread::scope(|s| {
            for who in [b'a', b'b'] {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..300 {
                        write_private(path, &[who; 64], 0o600).unwrap();
                    }
                });
            }
        });
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the file, no temp file left");
        let body = std::fs::read(&path).unwrap();
        assert!(body == [b'a'; 64] || body == [b'b'; 64]);
    }
}
