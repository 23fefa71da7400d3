//! `floor-relay ROUTES-FILE`: the least a user-space L4 relay can do, for the benchmark's
//! `floor` target. Each line of the file is `LISTEN BACKEND…` (IPv4 `addr:port`); `#` starts
//! a comment. One thread, one edge-triggered epoll set, round robin, recv/send through one
//! shared 64 KiB buffer (a direction holds memory only while its receiver lags), half-close
//! passed on, and G6's two packet savings (the handshake's last ACK delayed onto the client's
//! first bytes; last bytes and FIN in one segment); nothing else: no limits, timeouts, logs,
//! admin port or health checks.
//!
//! It bounds what any user-space proxy can reach on the machine: what G6 costs above it is
//! G6's own; what it costs above `direct` is the kernel's (a second TCP connection, two more
//! transmissions and wake-ups per request), which no proxy design removes.

use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::IntoRawFd as _;

const SCRATCH: usize = 64 * 1024;
/// Tokens at or above this are listeners (`LISTENER_BASE + route index`).
const LISTENER_BASE: u64 = 1 << 62;

#[derive(Default)]
struct Direction {
    /// Bytes read but not yet accepted by the receiver (empty, unallocated, when it keeps up).
    pending: Vec<u8>,
    sent: usize,
    eof: bool,
    shut: bool,
    /// The source may hold more: set by its epoll edge, cleared by EAGAIN or a short read.
    readable: bool,
    /// The source's FIN was reported: read until it is seen, whatever the read sizes.
    fin: bool,
}

struct Pair {
    fd: [i32; 2],
    /// `dir[0]`: client → server, `dir[1]`: server → client.
    dir: [Direction; 2],
}

struct Route {
    fd: i32,
    backends: Vec<SocketAddrV4>,
    next: usize,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An IPPROTO_TCP integer option; best effort (a failure only costs speed).
fn set_tcp_option(fd: i32, option: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn connect_to(addr: &SocketAddrV4, client_bytes_waiting: bool) -> Option<i32> {
    // SAFETY: plain syscalls on an fd we own; sockaddr_in is fully initialised.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return None;
        }
        set_tcp_option(fd, libc::TCP_NODELAY, 1);
        if client_bytes_waiting {
            // The handshake's last ACK rides with the client's first bytes, as G6 does.
            set_tcp_option(fd, libc::TCP_QUICKACK, 0);
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc < 0 && errno() != libc::EINPROGRESS {
            libc::close(fd);
            return None;
        }
        Some(fd)
    }
}

fn watch(ep: i32, fd: i32, token: u64, events: u32) {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll and socket fds.
    unsafe {
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
    }
}

/// Sends `bytes` to `to`; returns how many were taken, or None on an error other than EAGAIN.
/// `more`: the FIN follows at once, let it leave in the same segment.
fn send_some(to: i32, bytes: &[u8], more: bool) -> Option<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: sending from a valid slice.
    let n = unsafe { libc::send(to, bytes.as_ptr().cast(), bytes.len(), flags) };
    if n >= 0 {
        Some(n as usize)
    } else if errno() == libc::EAGAIN {
        Some(0)
    } else {
        None
    }
}

/// Moves what it can from `from` to `to`; false once the pair must close.
fn pump(from: i32, to: i32, d: &mut Direction, scratch: &mut [u8], edge: bool, fin: bool) -> bool {
    d.readable |= edge || fin;
    d.fin |= fin;
    loop {
        if d.sent < d.pending.len() {
            let Some(n) = send_some(to, &d.pending[d.sent..], false) else {
                return false;
            };
            d.sent += n;
            if d.sent < d.pending.len() {
                return true;
            }
            d.pending = Vec::new();
            d.sent = 0;
        }
        if d.eof {
            if !d.shut {
                // SAFETY: a valid socket.
                unsafe { libc::shutdown(to, libc::SHUT_WR) };
                d.shut = true;
            }
            return true;
        }
        if !d.readable {
            return true;
        }
        // SAFETY: reading into the scratch buffer.
        let n = unsafe { libc::recv(from, scratch.as_mut_ptr().cast(), scratch.len(), 0) };
        if n < 0 {
            d.readable = false;
            return errno() == libc::EAGAIN;
        }
        let n = n as usize;
        if n == 0 {
            d.eof = true;
            continue;
        }
        // A short read drained the socket: edge-triggered epoll reports what comes next.
        let short = n < scratch.len();
        d.readable = !short || d.fin;
        // The FIN is in and these were the last bytes (the next read is the EOF): they and
        // the FIN leave as one segment, as G6 does (a packet and an ACK less).
        let Some(sent) = send_some(to, &scratch[..n], short && d.fin) else {
            return false;
        };
        if sent < n {
            d.pending = scratch[sent..n].to_vec();
            return true;
        }
    }
}

/// Edge-triggered interest in both directions and the peer's FIN, for every relayed socket.
const PAIR_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// Accepts every waiting client of `route`, connects it to the next backend and watches both
/// sockets under the pair's slot (token `slot << 1 | side`).
fn accept_all(ep: i32, route: &mut Route, pairs: &mut Vec<Option<Pair>>, free: &mut Vec<usize>) {
    loop {
        // SAFETY: accepting on our listener.
        let c = unsafe {
            libc::accept4(
                route.fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            return;
        }
        let backend = route.backends[route.next % route.backends.len()];
        route.next += 1;
        let mut waiting: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int we own.
        unsafe { libc::ioctl(c, libc::FIONREAD, &mut waiting) };
        let Some(s) = connect_to(&backend, waiting > 0) else {
            // SAFETY: our accepted fd.
            unsafe { libc::close(c) };
            continue;
        };
        let pair = Pair {
            fd: [c, s],
            dir: Default::default(),
        };
        let slot = match free.pop() {
            Some(i) => {
                pairs[i] = Some(pair);
                i
            }
            None => {
                pairs.push(Some(pair));
                pairs.len() - 1
            }
        };
        watch(ep, c, (slot as u64) << 1, PAIR_EVENTS);
        watch(ep, s, ((slot as u64) << 1) | 1, PAIR_EVENTS);
    }
}

fn parse_routes(text: &str) -> Result<Vec<(SocketAddrV4, Vec<SocketAddrV4>)>, String> {
    let mut routes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let addrs: Result<Vec<SocketAddrV4>, String> = line
            .split_whitespace()
            .map(|a| {
                a.parse::<SocketAddrV4>()
                    .map_err(|e| format!("line {}: `{a}`: {e}", i + 1))
            })
            .collect();
        let addrs = addrs?;
        if addrs.len() < 2 {
            return Err(format!("line {}: want `LISTEN BACKEND…`", i + 1));
        }
        routes.push((addrs[0], addrs[1..].to_vec()));
    }
    if routes.is_empty() {
        return Err("no route".into());
    }
    Ok(routes)
}

fn main() {
    let routes = match std::env::args().nth(1).map(|p| {
        std::fs::read_to_string(&p)
            .map_err(|e| format!("{p}: {e}"))
            .and_then(|t| parse_routes(&t).map_err(|e| format!("{p}: {e}")))
    }) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            eprintln!("floor-relay: {e}");
            std::process::exit(1);
        }
        None => {
            eprintln!("usage: floor-relay ROUTES-FILE   (lines: LISTEN BACKEND…)");
            std::process::exit(2);
        }
    };
    // SAFETY: creating an epoll fd.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let mut listeners = Vec::new();
    for (i, (listen, backends)) in routes.into_iter().enumerate() {
        let l = TcpListener::bind(SocketAddr::V4(listen)).unwrap_or_else(|e| {
            eprintln!("floor-relay: bind {listen}: {e}");
            std::process::exit(1);
        });
        l.set_nonblocking(true).expect("nonblocking listener");
        // Port 0 picks one: say which, for whoever started us.
        if let Ok(bound) = l.local_addr() {
            println!("floor-relay: listening on {bound}");
        }
        let fd = l.into_raw_fd();
        // Accepted sockets inherit TCP_NODELAY.
        set_tcp_option(fd, libc::TCP_NODELAY, 1);
        watch(ep, fd, LISTENER_BASE + i as u64, libc::EPOLLIN as u32);
        listeners.push(Route {
            fd,
            backends,
            next: 0,
        });
    }
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Slots closed during a batch are reused only after it: a later event of the batch may
    // still name them.
    let mut closed: Vec<usize> = Vec::new();
    let mut scratch = vec![0u8; SCRATCH];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        for ev in events.iter().take(n.max(0) as usize) {
            let (token, bits) = (ev.u64, ev.events);
            if token >= LISTENER_BASE {
                let route = &mut listeners[(token - LISTENER_BASE) as usize];
                accept_all(ep, route, &mut pairs, &mut free);
                continue;
            }
            let slot = (token >> 1) as usize;
            let side = (token & 1) as usize;
            let Some(p) = pairs.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let readable = bits & libc::EPOLLIN as u32 != 0;
            let fin = bits & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0;
            let [c, s] = p.fd;
            let [up, down] = &mut p.dir;
            let sc = &mut scratch[..];
            // An event on one side may let either direction move (bytes in, or room out).
            let ok = if side == 0 {
                pump(c, s, up, sc, readable, fin) && pump(s, c, down, sc, false, false)
            } else {
                pump(s, c, down, sc, readable, fin) && pump(c, s, up, sc, false, false)
            };
            let done = up.shut && down.shut;
            if !ok || done || bits & libc::EPOLLERR as u32 != 0 {
                // SAFETY: closing the pair's own fds (closing also leaves the epoll set).
                unsafe {
                    libc::close(c);
                    libc::close(s);
                }
                pairs[slot] = None;
                closed.push(slot);
            }
        }
        free.append(&mut closed);
    }
}
