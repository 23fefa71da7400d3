//! Addresses where connects fail: `NeverAccept` (SYNs dropped → connect timeout) and
//! `RefusedAddr` (RST → ECONNREFUSED).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use super::net::{bound_socket, local_addr, parse_loopback};

/// A listening socket that never accepts and whose accept queue is full, so the kernel
/// drops further SYNs: connects to it hang until the connector's own timeout.
pub struct NeverAccept {
    addr: SocketAddr,
    _listener: Socket,
    fillers: Vec<Socket>,
}

impl NeverAccept {
    pub fn new() -> NeverAccept {
        Self::new_on("127.0.0.1:0")
    }

    pub fn new_on(bind: &str) -> NeverAccept {
        let listener = bound_socket(parse_loopback(bind), false, None);
        listener.listen(0).expect("listen(0)");
        let addr = local_addr(&listener);
        // listen(0) leaves room for one queued connection; fill until a connect times out.
        let mut fillers = Vec::new();
        loop {
            assert!(
                fillers.len() < 64,
                "NeverAccept@{addr}: accept queue never filled"
            );
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
            match s.connect_timeout(&addr.into(), Duration::from_millis(200)) {
                Ok(()) => fillers.push(s),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    break;
                }
                Err(e) => panic!("NeverAccept@{addr}: filler connect failed: {e}"),
            }
        }
        assert!(
            !fillers.is_empty(),
            "NeverAccept@{addr}: even the first connect timed out"
        );
        NeverAccept {
            addr,
            _listener: listener,
            fillers,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections the harness itself queued to fill the accept queue.
    pub fn filled(&self) -> usize {
        self.fillers.len()
    }
}

impl Default for NeverAccept {
    fn default() -> Self {
        Self::new()
    }
}

/// An address where connects are refused (RST, ECONNREFUSED): a socket bound to a free
/// port but not listening. Holding the bound socket (instead of closing it) keeps the port
/// reserved, so no other socket can start listening there during the test.
pub struct RefusedAddr {
    addr: SocketAddr,
    _sock: Socket,
}

impl RefusedAddr {
    pub fn new() -> RefusedAddr {
        Self::new_on("127.0.0.1:0")
    }

    pub fn new_on(bind: &str) -> RefusedAddr {
        let sock = bound_socket(parse_loopback(bind), false, None);
        RefusedAddr {
            addr: local_addr(&sock),
            _sock: sock,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for RefusedAddr {
    fn default() -> Self {
        Self::new()
    }
}
