//! The accept loops of the daemon and the proxy, which bound what any local user can make them hold (docs/reference.md §6):
//! at most `max_connections` open connections per listener (one more is closed as soon as it is accepted), a
//! request's headers within `header_timeout` of its first byte (or of the connection's opening), and an idle
//! keep-alive connection closed after `idle_timeout`. A connection never waits on another one, so a flood on the TCP
//! port leaves the Unix socket, the background refresh and `/healthz` untouched.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use axum::serve::Listener;
use broker_core::Error;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// What answers a connection's requests. `answering` marks the request as in flight until dropped: a handler whose
/// answer streams drops it with the body ([`Guarded`]), so a long download is not taken for an idle connection.
pub trait Handler: Clone + Send + 'static {
    fn handle(
        self,
        req: hyper::Request<Incoming>,
        answering: Answering,
    ) -> impl std::future::Future<Output = Response> + Send + 'static;
}

/// The command-line options of a server (the daemon, the proxy): its runtime, its logs and its listeners' limits.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Open connections at most, on each listener; one more is closed as soon as it is accepted.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A request's headers must arrive within this long of its first byte (or of the connection's opening).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::commands::token::parse_duration)]
    pub header_timeout: Duration,
    /// A kept-alive connection idle for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::commands::token::parse_duration)]
    pub idle_timeout: Duration,
    /// Log lines as JSON.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServerArgs {
    /// The runtime: one thread with `--threads 1`, else a worker per core or as many as asked.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, broker_core::Error> {
        let mut rt = if self.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            tokio::runtime::Builder::new_multi_thread()
        };
        if self.threads > 1 {
            rt.worker_threads(self.threads);
        }
        rt.enable_all()
            .build()
            .map_err(|e| broker_core::Error::internal(format!("cannot start the runtime: {e}")))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    pub fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
    }
}

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// From a request's first byte (or the connection's opening) to the end of its headers.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
}

/// What a connection is doing, for its watchdog.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No request in flight and no byte of the next one read, since then; `first`: no request yet.
    Idle { since: Instant, first: bool },
    /// Part of a request has been read, starting then.
    Reading { since: Instant },
    /// This many requests are being answered.
    Answering(usize),
}

impl Phase {
    /// When the connection is to be closed, if nothing happens before.
    fn deadline(self, l: &Limits) -> Option<Instant> {
        match self {
            Phase::Idle { since, first: true } | Phase::Reading { since } => {
                Some(since + l.header_timeout)
            }
            Phase::Idle {
                since,
                first: false,
            } => Some(since + l.idle_timeout),
            Phase::Answering(_) => None,
        }
    }
}

type Shared = Arc<Mutex<Phase>>;

fn with(phase: &Shared, f: impl FnOnce(&mut Phase)) {
    f(&mut phase.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The connection's stream, noting when the bytes of a new request start to arrive.
struct Watched<S> {
    io: S,
    phase: Shared,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            with(&this.phase, |p| {
                if let Phase::Idle { .. } = p {
                    *p = Phase::Reading {
                        since: Instant::now(),
                    };
                }
            });
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Marks a request as being answered until dropped.
pub struct Answering(Shared);

impl Answering {
    fn start(phase: &Shared) -> Self {
        with(phase, |p| {
            *p = match *p {
                Phase::Answering(n) => Phase::Answering(n + 1),
                _ => Phase::Answering(1),
            }
        });
        Answering(phase.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        with(&self.0, |p| {
            *p = match *p {
                Phase::Answering(n) if n > 1 => Phase::Answering(n - 1),
                _ => Phase::Idle {
                    since: Instant::now(),
                    first: false,
                },
            }
        });
    }
}

/// Serves `listener` until `stop` turns true, then lets the open connections finish their requests (for at most
/// `header_timeout`). `handler` gives a connection the [`Handler`] of its requests, knowing who it is (the Unix
/// peer's uid, the TCP peer's address).
pub async fn serve<L, H>(
    mut listener: L,
    limits: Limits,
    handler: impl Fn(&L::Io) -> H + Send + 'static,
    mut stop: watch::Receiver<bool>,
) where
    H: Handler,
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = stopped(&mut stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the limit: closed at once, so it holds nothing; said once per thousand.
            if refused.is_multiple_of(1000) {
                tracing::warn!(
                    "{} connections are open (--max-connections): closing new ones until some end",
                    limits.max_connections
                );
            }
            refused += 1;
            continue;
        };
        let handler = handler(&io);
        let stop = stop.clone();
        tokio::spawn(async move {
            connection(io, handler, limits, stop).await;
            drop(permit);
        });
    }
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.header_timeout, permits.acquire_many(all)).await;
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn connection<S, H: Handler>(
    io: S,
    handler: H,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let phase: Shared = Arc::new(Mutex::new(Phase::Idle {
        since: Instant::now(),
        first: true,
    }));
    let answering = phase.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let answer = handler.clone().handle(req, Answering::start(&answering));
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(
            TokioIo::new(Watched {
                io,
                phase: phase.clone(),
            }),
            service,
        );
    tokio::pin!(conn);
    loop {
        let now = Instant::now();
        let deadline = (*phase.lock().unwrap_or_else(|e| e.into_inner())).deadline(&limits);
        if deadline.is_some_and(|d| d <= now) {
            return; // dropped: closed
        }
        let wake = deadline.unwrap_or(now + limits.idle_timeout);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(wake) => {}
            _ = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.header_timeout, conn.as_mut()).await;
                return;
            }
        }
    }
}

/// A response body that keeps its request marked as in flight ([`Answering`]) until it has been sent (or dropped).
pub struct Guarded<B> {
    pub body: B,
    /// Held, never read: dropped with the body.
    #[allow(dead_code)]
    pub answering: Answering,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Refuses a socket directory that is not ours or that others can write to; creates it 0700 if missing. The
/// default runtime directory is ours alone and tightened to 0700; a directory named by `--socket` is never chmod-ed.
pub fn check_socket_dir(dir: &Path, default: bool) -> Result<(), Error> {
    if let Ok(meta) = std::fs::metadata(dir) {
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(Error::config(format!(
                "{} belongs to uid {}, not to us (uid {me}): refusing to put the socket there",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(Error::config(format!(
                "{} is writable by group or others: refusing to put the socket there (chmod 700 {})",
                dir.display(),
                dir.display()
            )));
        }
        if !default {
            return Ok(());
        }
    }
    broker_core::paths::ensure_private_dir(dir)
}

/// Removes a stale socket at `socket`, and nothing else: a path that is not a socket is refused.
pub fn remove_stale_socket(socket: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(socket) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::config(format!(
            "{} exists and is not a socket: refusing to replace it; choose another --socket",
            socket.display()
        )));
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(Error::config(format!(
            "a daemon is already listening on {}",
            socket.display()
        )));
    }
    tracing::info!("removing the stale socket {}", socket.display());
    std::fs::remove_file(socket).map_err(|e| {
        Error::internal(format!(
            "cannot remove stale socket {}: {e}",
            socket.display()
        ))
    })
}

/// Raises the soft open-file limit to the hard one: the connection limits, not the process's file table, are what
/// bound connections, so a flood on one listener cannot starve the other or the cache.
pub fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing requests in flight"),
        _ = int.recv() => tracing::info!("SIGINT: finishing requests in flight"),
    }
}

/// Binds the loopback TCP listener and writes its key, 0600, beside the socket as `key_file`.
/// (Whether the address may be non-loopback was decided before anything was bound.)
pub async fn listen_tcp(
    addr: std::net::SocketAddr,
    dir: &Path,
    key_file: &str,
) -> Result<(tokio::net::TcpListener, String), Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    let key = hex::encode(bytes);
    let path = dir.join(key_file);
    crate::daemon::write_private(&path, key.as_bytes(), 0o600)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {addr}: {e}")))?;
    tracing::info!("listening on {addr}; key in {}", path.display());
    Ok((listener, key))
}
