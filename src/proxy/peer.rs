//! Who is at the other end of a loopback TCP connection: the uid that owns the client's socket, read from the
//! kernel's socket table (`/proc/net/tcp`, `/proc/net/tcp6`), as identd answers it. This lets a program that knows
//! only a base URL (a Python script, a BI tool) use the proxy while another local user cannot.
//!
//! *Invariant: a uid is returned only for the one socket whose local address is the peer's and whose remote
//! address is our end of this connection: while the connection is open no other socket has that pair.*

use std::net::{IpAddr, SocketAddr};

/// The uid owning the socket at `peer` that is connected to `ours`, if the kernel's table shows it (Linux).
pub fn tcp_peer_uid(peer: SocketAddr, ours: SocketAddr) -> Option<u32> {
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
