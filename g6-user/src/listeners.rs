//! Listening sockets (SPEC.md §3): adopt inherited ones named in `G6_LISTEN_SOCKFDS`
//! (`<count>|<fd>|…|`), bind the rest (`SO_REUSEADDR`, never `SO_REUSEPORT`, backlog 1024,
//! IPv6 v6-only), close inherited ones no longer configured.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

pub const LISTEN_FDS_ENV: &str = "G6_LISTEN_SOCKFDS";
pub const BACKLOG: i32 = 1024;

/// An OS error as the C library words it (`Address already in use`), without Rust's
/// `(os error N)` suffix, for messages users compare with the original's.
pub fn os_error_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {}", os_error_text(error))]
pub struct ListenError {
    pub addr: SocketAddr,
    // Not `#[source]`: the message already words the OS error, and `{:#}` would repeat it.
    pub error: io::Error,
}

/// Binds a fresh listening socket.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |error| ListenError { addr, error };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// Parses `G6_LISTEN_SOCKFDS`. Malformed text yields what could be read plus warnings.
pub fn parse_fd_list(text: &str) -> (Vec<RawFd>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut parts = text.split('|');
    let count: Option<usize> = parts.next().and_then(|c| c.trim().parse().ok());
    let fds: Vec<RawFd> = parts
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.trim().parse::<RawFd>() {
            Ok(fd) if fd > 2 => Some(fd),
            _ => {
                warnings.push(format!("{LISTEN_FDS_ENV}: ignoring invalid entry '{p}'"));
                None
            }
        })
        .collect();
    match count {
        Some(c) if c == fds.len() => {}
        _ => warnings.push(format!(
            "{LISTEN_FDS_ENV}: count does not match the entries in '{text}'"
        )),
    }
    (fds, warnings)
}

/// Takes ownership of an inherited fd if it is a listening TCP socket; returns its address.
fn adopt_fd(fd: RawFd) -> Option<(SocketAddr, TcpListener)> {
    // Only touch descriptors that are really open sockets: fcntl fails on closed ones.
    // SAFETY: F_GETFD has no side effects.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open and was handed to us by our parent for this purpose.
    let socket = unsafe { Socket::from(OwnedFd::from_raw_fd(fd)) };
    if !socket.is_listener().unwrap_or(false) {
        // Not ours to keep, but do not close a descriptor we do not understand.
        std::mem::forget(socket);
        return None;
    }
    let addr = socket.local_addr().ok()?.as_socket()?;
    let _ = socket.set_cloexec(true);
    let _ = socket.set_nonblocking(true);
    Some((addr, socket.into()))
}

/// Listening sockets for `wanted`, in order: adopted from the environment where possible,
/// else bound. Unused inherited sockets are closed. Warnings are returned for the log.
pub fn open_all(
    wanted: &[SocketAddr],
    inherited: Option<&str>,
) -> Result<(Vec<TcpListener>, Vec<String>), ListenError> {
    let mut warnings = Vec::new();
    let mut pool: HashMap<SocketAddr, TcpListener> = HashMap::new();
    if let Some(text) = inherited {
        let (fds, w) = parse_fd_list(text);
        warnings.extend(w);
        for fd in fds {
            match adopt_fd(fd) {
                Some((addr, l)) => {
                    pool.insert(addr, l);
                }
                None => warnings.push(format!(
                    "{LISTEN_FDS_ENV}: fd {fd} is not a listening socket; ignored"
                )),
            }
        }
    }
    let mut out = Vec::with_capacity(wanted.len());
    for addr in wanted {
        match pool.remove(addr) {
            Some(l) => out.push(l),
            None => out.push(bind(*addr)?),
        }
    }
    // Whatever is left in the pool is dropped (closed) here: no longer configured.
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_the_original_format() {
        assert_eq!(parse_fd_list("2|3|4|"), (vec![3, 4], vec![]));
        let (fds, w) = parse_fd_list("3|7|x|");
        assert_eq!(fds, vec![7]);
        assert_eq!(w.len(), 2);
        assert!(parse_fd_list("garbage").1.len() == 1);
    }

    /// SPEC §3: `SO_REUSEADDR`, never `SO_REUSEPORT`, IPv6 listeners v6-only (so `[::]:P`
    /// and `0.0.0.0:P` are two listeners, as with the original).
    #[test]
    fn listeners_have_the_socket_options_spec_requires() {
        for (addr, v6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let l = bind(addr.parse().unwrap()).unwrap();
            let s = socket2::SockRef::from(&l);
            assert!(s.reuse_address().unwrap(), "{addr}: SO_REUSEADDR");
            assert!(!s.reuse_port().unwrap(), "{addr}: SO_REUSEPORT");
            if v6 {
                assert!(s.only_v6().unwrap(), "{addr}: IPV6_V6ONLY");
            }
            assert!(s.nonblocking().unwrap(), "{addr}: O_NONBLOCK");
        }
    }

    #[test]
    fn adopts_matching_and_binds_the_rest() {
        let pre = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let pre_addr = pre.local_addr().unwrap();
        let fd = pre.as_raw_fd();
        std::mem::forget(pre); // ownership moves to open_all, as across exec
        let other: SocketAddr = {
            let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
            l.local_addr().unwrap()
        };
        let (ls, w) = open_all(&[pre_addr, other], Some(&format!("1|{fd}|"))).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(ls[0].as_raw_fd(), fd, "adopted, not rebound");
        assert_eq!(ls[1].local_addr().unwrap(), other);
    }

    #[test]
    fn bind_error_names_the_address() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let e = bind(addr).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot listen on {addr}: Address already in use")
        );
    }
}
