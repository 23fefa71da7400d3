//! `Controlled`: a server whose connections the test drives by hand (send, read, FIN, RST).
//!
//! ```ignore
//! let ctl = Controlled::new();
//! let mut c = client::connect(proxy_addr);
//! let sc = ctl.conn(0);          // waits for the first accepted connection
//! sc.send(b"hello");
//! sc.reset();                    // RST towards the proxy
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::net::{self, End, Stopper, parse_loopback, poll_readable, set_timeouts};
use super::wait::{IO_TIMEOUT, WAIT_TIMEOUT, wait_for, wait_until};

struct Shared {
    label: String,
    stop: Stopper,
    conns: Mutex<Vec<ControlledConn>>,
}

/// A server that accepts and hands every connection to the test; see the module docs.
pub struct Controlled {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// One accepted connection of a [`Controlled`] server. Clones share the socket. Every
/// operation is bounded by `IO_TIMEOUT` and panics with a clear message on failure.
#[derive(Clone)]
pub struct ControlledConn {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    label: String,
    peer: SocketAddr,
    stream: Mutex<Option<TcpStream>>,
}

impl Controlled {
    pub fn new() -> Controlled {
        Self::new_on("127.0.0.1:0")
    }

    pub fn new_on(bind: &str) -> Controlled {
        let listener = net::listen(parse_loopback(bind), 1024, None);
        listener
            .set_nonblocking(true)
            .expect("O_NONBLOCK on listener");
        let addr = listener.local_addr().expect("getsockname");
        let shared = Arc::new(Shared {
            label: format!("Controlled@{addr}"),
            stop: Stopper::new(),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("accept {}", shared.label))
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn acceptor thread");
        Controlled {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn label(&self) -> &str {
        &self.shared.label
    }

    pub fn accepted(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.accepted() >= n)
    }

    /// The `i`-th accepted connection (from 0), waiting up to `WAIT_TIMEOUT` for it.
    pub fn conn(&self, i: usize) -> ControlledConn {
        wait_for(WAIT_TIMEOUT, || {
            self.shared.conns.lock().unwrap().get(i).cloned()
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: connection #{i} not accepted within {WAIT_TIMEOUT:?} ({} accepted)",
                self.label(),
                self.accepted()
            )
        })
    }
}

impl Default for Controlled {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Controlled {
    fn drop(&mut self) {
        self.shared.stop.stop();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for c in self.shared.conns.lock().unwrap().iter() {
            c.inner.stream.lock().unwrap().take();
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    loop {
        if poll_readable(&[listener.as_raw_fd(), sh.stop.fd()], None)[1] {
            return;
        }
        if let Ok((s, peer)) = listener.accept() {
            s.set_nonblocking(false).expect("blocking accepted socket");
            set_timeouts(&s, IO_TIMEOUT);
            let mut conns = sh.conns.lock().unwrap();
            let label = format!("{} #{} (peer {peer})", sh.label, conns.len());
            conns.push(ControlledConn {
                inner: Arc::new(ConnInner {
                    label,
                    peer,
                    stream: Mutex::new(Some(s)),
                }),
            });
        }
    }
}

impl ControlledConn {
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }

    pub fn label(&self) -> &str {
        &self.inner.label
    }

    fn with<T>(&self, op: &str, f: impl FnOnce(&mut TcpStream) -> T) -> T {
        let mut g = self.inner.stream.lock().unwrap();
        let s = g
            .as_mut()
            .unwrap_or_else(|| panic!("{}: {op} on a closed connection", self.inner.label));
        f(s)
    }

    /// Writes all of `data`.
    pub fn send(&self, data: &[u8]) {
        self.with("send", |s| s.write_all(data))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: send of {} bytes failed: {e}",
                    self.inner.label,
                    data.len()
                )
            });
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.with("read_exact", |s| s.read_exact(&mut v))
            .unwrap_or_else(|e| panic!("{}: read_exact({n}) failed: {e}", self.inner.label));
        v
    }

    /// Reads until EOF; panics on RST, error or timeout.
    pub fn read_all(&self) -> Vec<u8> {
        let (data, end) = self.read_until_end();
        assert_eq!(
            end,
            End::Eof,
            "{}: read_all: expected EOF after {} bytes",
            self.inner.label,
            data.len()
        );
        data
    }

    /// Reads until EOF, RST, error or timeout and reports which.
    pub fn read_until_end(&self) -> (Vec<u8>, End) {
        self.with("read_until_end", net::read_until_end)
    }

    /// Sends FIN (shutdown of the write side); reading stays possible.
    pub fn shutdown_write(&self) {
        self.with("shutdown_write", |s| s.shutdown(Shutdown::Write))
            .unwrap_or_else(|e| panic!("{}: shutdown(Write) failed: {e}", self.inner.label));
    }

    /// close(2): a FIN — or an RST if received data is still unread (kernel rule).
    pub fn close(&self) {
        let s = self.inner.stream.lock().unwrap().take();
        assert!(
            s.is_some(),
            "{}: close on a closed connection",
            self.inner.label
        );
    }

    /// SO_LINGER 0 + close: an RST.
    pub fn reset(&self) {
        let s = self.inner.stream.lock().unwrap().take();
        net::reset(
            s.unwrap_or_else(|| panic!("{}: reset on a closed connection", self.inner.label)),
        );
    }

    pub fn is_closed(&self) -> bool {
        self.inner.stream.lock().unwrap().is_none()
    }
}
