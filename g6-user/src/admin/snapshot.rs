//! Plain-data snapshots of runtime state that the admin renderers print. The admin server fills
//! them from the live state; rendering is then pure.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// One session as `show sessions` lists it (SPEC.md §9.4, §9.6). Descriptor numbers are the
/// `#n#` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRow {
    /// A listening socket.
    Listen {
        rule: String,
        listen: SocketAddr,
        listen_fd: i32,
    },
    /// An admin connection.
    Manager {
        rule: String,
        peer: SocketAddr,
        fd: i32,
        listen: SocketAddr,
        listen_fd: i32,
        age_ms: u64,
        idle_ms: u64,
    },
    /// A proxied connection (two text lines: SERVER, then CLIENT).
    Proxy {
        /// `false` while the server connect is in progress.
        connected: bool,
        rule: String,
        client: SocketAddr,
        client_fd: i32,
        listen: SocketAddr,
        listen_fd: i32,
        server: SocketAddr,
        server_fd: i32,
        /// `copy`, `splice` or `sockmap`; printed as null while connecting whatever its value.
        data_path: Option<&'static str>,
        bytes_in: u64,
        bytes_out: u64,
        age_ms: u64,
        idle_ms: u64,
        client_eof: bool,
        server_eof: bool,
    },
}

/// Counters of one server entry for `show stats` (SPEC.md §9.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    pub addr: SocketAddr,
    /// One of `up full moratorium disabled no-heartbeat`.
    pub state: &'static str,
    pub active: u64,
    pub total: u64,
    pub failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Response-time estimate in µs; `None` without a sample (`-` / null).
    pub rt_us: Option<u64>,
}

/// Counters of one rule for `show stats` (SPEC.md §9.5), servers in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStats {
    pub id: String,
    /// The algorithm token (`G`, `MS`, `RR`, …).
    pub alg: &'static str,
    pub active: u64,
    pub total: u64,
    pub refused: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub servers: Vec<ServerStats>,
}

/// Runtime state of one server entry for `show rules json` (SPEC.md §7, §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStateView {
    /// Effective heartbeat period in seconds (printed as `heartbeat`).
    pub hb: u32,
    /// 0 or 1.
    pub unable: u32,
    /// Wall-clock epoch seconds, 0 = none.
    pub deadline: u64,
    /// One of `up full moratorium disabled no-heartbeat`.
    pub state: &'static str,
}

/// `ip:port`, IPv6 as `[ip]:port` (RFC 5952 text, no zone / flow info), as `show` prints.
pub fn fmt_sockaddr(addr: &SocketAddr) -> String {
    let mut s = String::with_capacity(48);
    push_sockaddr(&mut s, addr);
    s
}

pub(crate) fn push_sockaddr(out: &mut String, addr: &SocketAddr) {
    // Writing to a String cannot fail.
    let _ = match addr {
        SocketAddr::V4(a) => write!(out, "{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => write!(out, "[{}]:{}", a.ip(), a.port()),
    };
}

/// The XDP guard's line of `show stats` [ext].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpStats {
    /// `off`, `generic` or `native`.
    pub mode: &'static str,
    /// Guarded interfaces (empty: none).
    pub ifaces: Vec<String>,
    pub dropped_blocked: u64,
    pub dropped_not_allowed: u64,
}

/// One line of `show blocked` [ext].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedEntry {
    pub ip: std::net::IpAddr,
    /// Wall-clock epoch seconds at which the block ends; 0 = until unblocked.
    pub deadline: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    #[test]
    fn sockaddr_text() {
        assert_eq!(
            fmt_sockaddr(&"127.0.0.1:8600".parse().unwrap()),
            "127.0.0.1:8600"
        );
        assert_eq!(fmt_sockaddr(&"[::1]:80".parse().unwrap()), "[::1]:80");
        assert_eq!(
            fmt_sockaddr(&"[2001:DB8:0:0::1]:443".parse().unwrap()),
            "[2001:db8::1]:443"
        );
        let scoped = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse::<Ipv6Addr>().unwrap(),
            22,
            7,
            3,
        ));
        assert_eq!(fmt_sockaddr(&scoped), "[fe80::1]:22");
    }
}
