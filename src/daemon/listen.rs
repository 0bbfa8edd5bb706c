//! The daemon's accept loops, which bound what any local user can make the daemon hold (docs/reference.md §6):
//! at most `max_connections` open connections per listener (one more is closed as soon as it is accepted), a
//! request's headers within `header_timeout` of its first byte (or of the connection's opening), and an idle
//! keep-alive connection closed after `idle_timeout`. A connection never waits on another one, so a flood on the TCP
//! port leaves the Unix socket, the background refresh and `/healthz` untouched.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use super::api::Gate;

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
struct Answering(Shared);

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

/// Serves `app` on `listener` until `stop` turns true, then lets the open connections finish their requests (for at
/// most `header_timeout`). `gate` gives a connection its [`Gate`] (who it is: the Unix peer's uid), which every
/// request passes before `app` and which stamps every answer.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: Limits,
    gate: impl Fn(&L::Io) -> Gate + Send + 'static,
    mut stop: watch::Receiver<bool>,
) where
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
        let gate = gate(&io);
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            connection(io, app, limits, gate, stop).await;
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

async fn connection<S>(
    io: S,
    app: Router,
    limits: Limits,
    gate: Gate,
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
        let guard = Answering::start(&answering);
        let refused = gate.refuse(&req);
        let app = app.clone();
        let gate = gate.clone();
        async move {
            let mut resp = match refused {
                Some(resp) => resp,
                None => app.oneshot(req.map(axum::body::Body::new)).await?,
            };
            gate.stamp(&mut resp);
            drop(guard);
            Ok::<_, std::convert::Infallible>(resp)
        }
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
