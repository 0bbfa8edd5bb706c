//! Who is at the other end of a loopback TCP connection: the uid that owns the client's socket, as identd answers
//! it. This lets a program that knows only a base URL (a Python script, a BI tool) use the proxy while another
//! local user cannot. The kernel is asked for that one socket over netlink (`sock_diag`, an exact lookup by its
//! address pair); where that is not available, its whole table is read (`/proc/net/tcp`, `/proc/net/tcp6`), which
//! costs milliseconds on a host with thousands of sockets.
//!
//! *Invariant: a uid is returned only for the one socket whose local address is the peer's and whose remote
//! address is our end of this connection: while the connection is open no other socket has that pair.*

use std::net::{IpAddr, SocketAddr};

/// Who owns a connection's client socket: asked once, when first needed (a client that sends the key never costs
/// the question), on the connection's own task, never in the accept loop.
pub struct Owner {
    ends: Option<(SocketAddr, SocketAddr)>,
    uid: std::sync::OnceLock<Option<u32>>,
}

impl Owner {
    /// The connection from `peer` to `ours`.
    pub fn new(ends: Option<(SocketAddr, SocketAddr)>) -> Self {
        Owner {
            ends,
            uid: std::sync::OnceLock::new(),
        }
    }

    pub fn uid(&self) -> Option<u32> {
        *self
            .uid
            .get_or_init(|| self.ends.and_then(|(peer, ours)| tcp_peer_uid(peer, ours)))
    }
}

/// The uid owning the socket at `peer` that is connected to `ours`, if the kernel says (Linux).
pub fn tcp_peer_uid(peer: SocketAddr, ours: SocketAddr) -> Option<u32> {
    match sock_diag_uid(peer, ours) {
        Ok(uid) => uid,
        Err(_) => table_uid(peer, ours),
    }
}

/// `SOCK_DIAG_BY_FAMILY`, `NLM_F_REQUEST`, `IPPROTO_TCP`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const IPPROTO_TCP: u8 = 6;

/// The uid of the socket `peer` -> `ours` by netlink's exact lookup (`inet_diag_req_v2` without `NLM_F_DUMP`):
/// `Ok(None)` when the kernel knows no such socket, `Err` when it cannot be asked.
fn sock_diag_uid(peer: SocketAddr, ours: SocketAddr) -> std::io::Result<Option<u32>> {
    use rustix::net::{netlink, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    rustix::net::send(&fd, &diag_request(peer, ours), SendFlags::empty())?;
    let mut buf = [0u8; 512];
    let (_, n) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
    Ok(diag_uid(&buf[..n.min(buf.len())]))
}

/// A netlink message asking for the TCP socket whose source is `src` and destination `dst`.
fn diag_request(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family: u8 = if src.is_ipv4() { 2 } else { 10 }; // AF_INET, AF_INET6
    let addr = |a: SocketAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match a.ip() {
            IpAddr::V4(ip) => out[..4].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => out = ip.octets(),
        }
        out
    };
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes()); // nlmsg_len: header 16 + inet_diag_req_v2 56
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]); // family, protocol, ext, pad
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    m.extend_from_slice(&addr(src));
    m.extend_from_slice(&addr(dst));
    m.extend_from_slice(&0u32.to_ne_bytes()); // interface
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    m
}

/// The `idiag_uid` of the answer, if it is an `inet_diag_msg` (not an error: no such socket).
fn diag_uid(answer: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    // NLMSG_ERROR: no such socket.
    if kind != SOCK_DIAG_BY_FAMILY || answer.len() < 16 + 72 {
        return None;
    }
    // nlmsghdr (16), then inet_diag_msg: family, state, timer, retrans (4), id (48), expires, rqueue, wqueue (12),
    // uid.
    Some(u32::from_ne_bytes(
        answer.get(16 + 64..16 + 68)?.try_into().ok()?,
    ))
}

/// [`tcp_peer_uid`] from the kernel's whole table.
fn table_uid(peer: SocketAddr, ours: SocketAddr) -> Option<u32> {
    let table = match peer.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    uid_in(&text, peer, ours)
}

/// [`tcp_peer_uid`] over the text of a table.
fn uid_in(table: &str, peer: SocketAddr, ours: SocketAddr) -> Option<u32> {
    let (local, remote) = (hex_addr(peer), hex_addr(ours));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
        (f.len() > 7 && f[1].eq_ignore_ascii_case(&local) && f[2].eq_ignore_ascii_case(&remote))
            .then(|| f[7].parse().ok())
            .flatten()
    })
}

/// An address as the kernel prints it in the table: each 32-bit word of the address in host byte order as hex,
/// then the port.
fn hex_addr(a: SocketAddr) -> String {
    let words: Vec<[u8; 4]> = match a.ip() {
        IpAddr::V4(ip) => vec![ip.octets()],
        IpAddr::V6(ip) => ip
            .octets()
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
    };
    let mut out: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
    out.push_str(&format!(":{:04X}", a.port()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_socket_is_found_by_both_ends_and_our_own_end_is_not_taken_for_it() {
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let ours: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let (p, o) = (hex_addr(peer), hex_addr(ours));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {o} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
             1: {o} {p} 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
             2: {p} {o} 01 00000000:00000000 00:00000000 00000000  1000        0 3 1\n"
        );
        assert_eq!(uid_in(&table, peer, ours), Some(1000));
        let stranger: SocketAddr = "127.0.0.1:50001".parse().unwrap();
        assert_eq!(uid_in(&table, stranger, ours), None);
    }

    #[test]
    fn netlink_and_the_table_agree_on_a_real_loopback_connection_and_on_none() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let ours = server_side.local_addr().unwrap();
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(sock_diag_uid(peer, ours).unwrap(), Some(me));
        assert_eq!(table_uid(peer, ours), Some(me));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sock_diag_uid(nobody, ours).unwrap(), None);
        drop(client);
    }

    #[test]
    fn a_real_loopback_connection_is_ours() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(
            tcp_peer_uid(peer, server_side.local_addr().unwrap()),
            Some(me)
        );
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(l6) = v6 {
            let c6 = std::net::TcpStream::connect(l6.local_addr().unwrap()).unwrap();
            let (s6, p6) = l6.accept().unwrap();
            assert_eq!(p6, c6.local_addr().unwrap());
            assert_eq!(tcp_peer_uid(p6, s6.local_addr().unwrap()), Some(me));
        }
    }
}
