//! Low-level socket helpers shared by backends and clients.

use std::fmt;
use std::io::{self, PipeReader, PipeWriter, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

use super::wait::IO_TIMEOUT;

/// How a connection ended, as seen by the side that records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Still open.
    Open,
    /// The peer's FIN was read (EOF).
    Eof,
    /// The peer reset the connection (ECONNRESET, or EPIPE after a reset).
    Reset,
    /// Closed on purpose by the recording side (e.g. `Backend::close_on_accept`).
    Closed,
    /// Closed because the backend was dropped.
    Stopped,
    /// Any other error, including timeouts.
    Error(String),
}

impl End {
    pub fn from_io(e: &io::Error) -> End {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => End::Reset,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                End::Error(format!("timed out ({e})"))
            }
            _ => End::Error(e.to_string()),
        }
    }

    pub fn is_open(&self) -> bool {
        *self == End::Open
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Parses "127.0.0.1:0" / "[::1]:0", panicking on anything that is not loopback or, for
/// tests inside their own network namespaces (`netns`), in 198.18.0.0/15.
pub fn parse_loopback(addr: &str) -> SocketAddr {
    let a: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("bad socket address {addr:?}: {e}"));
    let allowed = match a.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || super::netns::is_benchmark_range(v4),
        ip => ip.is_loopback(),
    };
    assert!(
        allowed,
        "tests use loopback or 198.18.0.0/15 addresses only, got {a}"
    );
    a
}

/// A bound socket (not yet listening): IPv6 sockets are v6-only.
pub fn bound_socket(addr: SocketAddr, reuse: bool, rcvbuf: Option<usize>) -> Socket {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .unwrap_or_else(|e| panic!("socket() for {addr}: {e}"));
    if addr.is_ipv6() {
        s.set_only_v6(true).expect("IPV6_V6ONLY");
    }
    if reuse {
        s.set_reuse_address(true).expect("SO_REUSEADDR");
    }
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    s.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s
}

/// A listening std listener on `addr` (port 0 = any free port).
pub fn listen(addr: SocketAddr, backlog: i32, rcvbuf: Option<usize>) -> TcpListener {
    let s = bound_socket(addr, false, rcvbuf);
    s.listen(backlog)
        .unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
    s.into()
}

pub fn local_addr(s: &Socket) -> SocketAddr {
    s.local_addr()
        .expect("getsockname")
        .as_socket()
        .expect("inet address")
}

/// Sets SO_RCVTIMEO and SO_SNDTIMEO (nothing blocks forever).
pub fn set_timeouts(s: &TcpStream, t: Duration) {
    s.set_read_timeout(Some(t)).expect("SO_RCVTIMEO");
    s.set_write_timeout(Some(t)).expect("SO_SNDTIMEO");
}

/// SO_LINGER 0 then close: the peer gets an RST.
pub fn reset(s: TcpStream) {
    SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

/// Reads until EOF, reset, error or `IO_TIMEOUT` without a byte; returns the data and how
/// the stream ended (`End::Eof`, `End::Reset` or `End::Error`).
pub fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, End) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (out, End::from_io(&e)),
        }
    }
}

/// poll(2) for readability on `fds`; returns which are readable (or hung up).
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
        };
        // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()` pollfd.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            return pfds.iter().map(|p| p.revents != 0).collect();
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
    }
}

/// A stop signal threads can poll on: `stop()` closes a pipe's write end, which makes the
/// read end permanently readable.
pub struct Stopper {
    rd: PipeReader,
    wr: Mutex<Option<PipeWriter>>,
}

impl Stopper {
    pub fn new() -> Stopper {
        let (rd, wr) = io::pipe().expect("pipe");
        Stopper {
            rd,
            wr: Mutex::new(Some(wr)),
        }
    }

    pub fn stop(&self) {
        self.wr.lock().unwrap().take();
    }

    pub fn fd(&self) -> RawFd {
        self.rd.as_raw_fd()
    }

    pub fn is_stopped(&self) -> bool {
        poll_readable(&[self.fd()], Some(Duration::ZERO))[0]
    }

    /// Blocks until stopped or `timeout` (None = forever); true if stopped.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        poll_readable(&[self.fd()], timeout)[0]
    }
}
