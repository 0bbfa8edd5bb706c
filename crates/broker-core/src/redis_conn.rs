//! The shared cache's connection to Redis, read with bounds (docs/security.md, "a hostile Redis"): every byte
//! Redis sends passes a streaming check of the RESP framing before redis-rs parses it, so a broken or hostile
//! server that announces a huge bulk string or array, or streams an endless line, ends the connection (the
//! shared cache is then marked down) instead of making the broker hold what it sends.
//!
//! *Invariant: no reply element may exceed [`BULK_CAP`] bytes, an aggregate [`ARRAY_CAP`] elements or
//! [`DEPTH_CAP`] levels, a line [`LINE_CAP`] bytes; the check keeps no more than one header line of state.*

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, RedisResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest bulk string accepted: a sealed entry of the largest token a provider's answer can hold (the
/// answer is read up to 1 MiB), with room for the entry around it.
pub(crate) const BULK_CAP: u64 = crate::http::BODY_CAP as u64 + 64 * 1024;
/// The most elements of an array, set or map: our commands get none longer than a handshake's few fields.
pub(crate) const ARRAY_CAP: u64 = 64;
/// How deep aggregates may nest.
pub(crate) const DEPTH_CAP: usize = 4;
/// The longest simple line (`+OK`, `-ERR ...`, `:1`, a length header).
pub(crate) const LINE_CAP: usize = 4096;

/// Connects to the address of `client`'s URL, wrapping the stream in the bounded reader.
pub(crate) async fn connect(
    client: &redis::Client,
    within: Duration,
) -> RedisResult<MultiplexedConnection> {
    let info = client.get_connection_info();
    let io = |e: std::io::Error| redis::RedisError::from(e);
    let stream: Pin<Box<dyn Stream>> = match info.addr() {
        ConnectionAddr::Tcp(host, port) => Box::pin(Bounded::new(
            tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(io)?,
        )),
        ConnectionAddr::Unix(path) => Box::pin(Bounded::new(
            tokio::net::UnixStream::connect(path).await.map_err(io)?,
        )),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(refused(
                    "rediss:// without certificate checks is not supported",
                ));
            }
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(io)?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| refused("the rediss:// host is not a valid server name"))?;
            let tls = tls_connector()?.connect(name, tcp).await.map_err(io)?;
            Box::pin(Bounded::new(tls))
        }
        _ => return Err(refused("unsupported Redis address")),
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(within))
        .set_response_timeout(Some(within));
    let (conn, driver) =
        MultiplexedConnection::new_with_config(info.redis_settings(), stream, config).await?;
    tokio::spawn(driver);
    Ok(conn)
}

fn refused(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what))
}

/// The TLS connector of `rediss://`: the system's roots, as redis-rs itself uses with rustls.
fn tls_connector() -> RedisResult<tokio_rustls::TlsConnector> {
    static CONNECTOR: std::sync::OnceLock<std::result::Result<tokio_rustls::TlsConnector, String>> =
        std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system root certificates for rediss://".to_owned());
            }
            let config = tokio_rustls::rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        })
        .clone()
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "TLS", e)))
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Send + Sync> Stream for T {}

/// A stream whose incoming bytes are checked by a [`Scanner`] as they arrive.
struct Bounded<S> {
    inner: S,
    scanner: Scanner,
}

impl<S> Bounded<S> {
    fn new(inner: S) -> Self {
        Bounded {
            inner,
            scanner: Scanner::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                match this.scanner.feed(fresh) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(why) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("Redis sent {why}: closing the connection"),
                    ))),
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A streaming check of RESP framing: where each element starts and ends, and whether its announced size fits.
#[derive(Debug, Default)]
struct Scanner {
    /// Bytes of a bulk string's body (and its CRLF) still to pass, when inside one.
    bulk_left: u64,
    /// The current line's type byte and bytes so far, when inside a line.
    line: Option<(u8, Vec<u8>)>,
    /// Elements still to come of each open aggregate, innermost last.
    open: Vec<u64>,
}

impl Scanner {
    fn feed(&mut self, mut bytes: &[u8]) -> std::result::Result<(), String> {
        while !bytes.is_empty() {
            if self.bulk_left > 0 {
                let n = self.bulk_left.min(bytes.len() as u64);
                self.bulk_left -= n;
                bytes = &bytes[n as usize..];
                if self.bulk_left == 0 {
                    self.element_done();
                }
                continue;
            }
            let Some((kind, line)) = &mut self.line else {
                let kind = bytes[0];
                if !b"+-:,#_($!=*%~>".contains(&kind) {
                    return Err(format!("a reply of unknown type {:?}", kind as char));
                }
                self.line = Some((kind, Vec::new()));
                bytes = &bytes[1..];
                continue;
            };
            let end = bytes.iter().position(|&b| b == b'\n');
            let take = end.map_or(bytes.len(), |i| i + 1);
            if line.len() + take > LINE_CAP {
                return Err(format!("a line longer than {LINE_CAP} bytes"));
            }
            line.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if end.is_some() {
                let (kind, line) = (*kind, std::mem::take(line));
                self.line = None;
                self.header(kind, &line)?;
            }
        }
        Ok(())
    }

    /// A complete line of type `kind`.
    fn header(&mut self, kind: u8, line: &[u8]) -> std::result::Result<(), String> {
        let number = || -> std::result::Result<i64, String> {
            std::str::from_utf8(line)
                .ok()
                .map(str::trim_end)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "a malformed length".to_owned())
        };
        match kind {
            b'$' | b'!' | b'=' => match number()? {
                -1 => self.element_done(),
                n if n < 0 || n as u64 > BULK_CAP => {
                    return Err(format!("a bulk string of {n} bytes (at most {BULK_CAP})"))
                }
                n => self.bulk_left = n as u64 + 2,
            },
            b'*' | b'%' | b'~' | b'>' => match number()? {
                -1 | 0 => self.element_done(),
                n if n < 0 || n as u64 > ARRAY_CAP => {
                    return Err(format!(
                        "an aggregate of {n} elements (at most {ARRAY_CAP})"
                    ))
                }
                _ if self.open.len() >= DEPTH_CAP => {
                    return Err(format!("aggregates nested over {DEPTH_CAP} deep"))
                }
                n => self
                    .open
                    .push(if kind == b'%' { 2 * n as u64 } else { n as u64 }),
            },
            _ => self.element_done(),
        }
        Ok(())
    }

    fn element_done(&mut self) {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> std::result::Result<(), String> {
        let mut s = Scanner::default();
        chunks.iter().try_for_each(|c| s.feed(c))
    }

    #[test]
    fn ordinary_replies_pass_in_any_chunks() {
        let replies: &[u8] =
            b"+OK\r\n$5\r\nhello\r\n$-1\r\n:1\r\n*2\r\n$1\r\na\r\n*1\r\n:2\r\n-ERR no\r\n";
        assert!(scan(&[replies]).is_ok());
        let bytes: Vec<&[u8]> = replies.chunks(1).collect();
        assert!(scan(&bytes).is_ok());
    }

    #[test]
    fn announced_sizes_over_the_caps_are_refused_before_their_bytes_come() {
        assert!(scan(&[b"$999999999\r\n"])
            .unwrap_err()
            .contains("bulk string"));
        assert!(scan(&[b"*1000000\r\n"]).unwrap_err().contains("aggregate"));
        assert!(scan(&[b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"])
            .unwrap_err()
            .contains("nested"));
        let endless = vec![b'x'; LINE_CAP + 1];
        assert!(scan(&[b"+", &endless]).unwrap_err().contains("line longer"));
        assert!(scan(&[b"?"]).unwrap_err().contains("unknown type"));
    }
}
