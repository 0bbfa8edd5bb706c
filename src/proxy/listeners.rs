//! The proxy's listeners: loopback TCP (with `proxy.key`, or a client socket of an allowed uid) and a 0600 Unix
//! socket, on the accept loops of `crate::listen`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use broker_core::Error;

use super::{peer, Caller, Conn, Proxy};
use crate::listen;

/// The proxy's listeners, serving until their stop signal.
pub struct Listening {
    servers: Vec<tokio::task::JoinHandle<()>>,
    socket: Option<PathBuf>,
}

impl Listening {
    /// Waits for the listeners to finish their requests, then removes the socket.
    pub async fn finish(self) {
        for s in self.servers {
            let _ = s.await;
        }
        if let Some(path) = self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts `proxy`'s listeners: on `listen` (loopback TCP, its key written to the runtime directory as
/// `proxy.key`), and on `socket` (default `proxy.sock` in the runtime directory, when `listen` is not given).
pub async fn start(
    proxy: Arc<Proxy>,
    listen: Option<SocketAddr>,
    socket: Option<PathBuf>,
    limits: listen::Limits,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Listening, Error> {
    if let Some(addr) = listen.filter(|a| !a.ip().is_loopback()) {
        return Err(Error::usage(format!(
            "proxy: {addr} is not a loopback address: the proxy hands out tokens to whoever reaches it"
        )));
    }
    let dir = broker_core::paths::runtime_dir().ok_or_else(|| {
        Error::config("no runtime directory: set XDG_RUNTIME_DIR or HOME, or pass --socket")
    })?;
    let mut servers = Vec::new();
    let mut socket_path = None;
    if let Some(addr) = listen {
        listen::check_socket_dir(&dir, true)?;
        let (listener, key) = listen::listen_tcp(addr, &dir, "proxy.key").await?;
        tracing::info!("proxy listening on {addr}");
        let ours = listener.local_addr().ok();
        let key: Arc<str> = Arc::from(key);
        let p = proxy.clone();
        let handler = move |io: &tokio::net::TcpStream| {
            // A streamed answer is written in pieces (head, then body): without this, Nagle's algorithm holds a
            // piece until the client's delayed ACK (tens of milliseconds).
            let _ = io.set_nodelay(true);
            Conn {
                proxy: p.clone(),
                caller: Caller::Tcp {
                    owner: Arc::new(peer::Owner::new(io.peer_addr().ok().zip(ours))),
                    key: key.clone(),
                },
            }
        };
        servers.push(tokio::spawn(listen::serve(
            listener,
            limits,
            handler,
            stop.clone(),
        )));
    }
    if socket.is_some() || listen.is_none() {
        let default = socket.is_none();
        let path = socket.unwrap_or_else(|| dir.join("proxy.sock"));
        let parent = path
            .parent()
            .ok_or_else(|| Error::config("the socket path has no directory"))?;
        listen::check_socket_dir(parent, default)?;
        listen::remove_stale_socket(&path)?;
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::internal(format!("cannot listen on {}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::internal(format!("cannot chmod {}: {e}", path.display())))?;
        tracing::info!("proxy listening on {}", path.display());
        let p = proxy.clone();
        let handler = move |io: &tokio::net::UnixStream| Conn {
            proxy: p.clone(),
            caller: Caller::Unix(Arc::new(crate::caller::Peer::of_unix(io))),
        };
        servers.push(tokio::spawn(listen::serve(
            listener,
            limits,
            handler,
            stop.clone(),
        )));
        socket_path = Some(path);
    }
    Ok(Listening {
        servers,
        socket: socket_path,
    })
}
