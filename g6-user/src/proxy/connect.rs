//! Connecting to a server (SPEC.md §5.4): bounded by the connect timeout, with failures
//! classified as the server's fault (isolate it) or ours (isolate nobody).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Who is to blame for a failed connect attempt.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused, unreachable, reset, timed out: the server's fault; retry on another server.
    #[error("{0}")]
    Server(io::Error),
    /// The connect timeout elapsed.
    #[error("connect timeout after {0:?}")]
    Timeout(Duration),
    /// Out of local ports, descriptors or memory: not the server's fault, isolate nobody.
    #[error("{0}")]
    Local(io::Error),
}

impl ConnectError {
    pub fn is_local(&self) -> bool {
        matches!(self, ConnectError::Local(_))
    }
}

/// errno values that are our own resource problems (SPEC.md §5.4).
pub fn is_local_errno(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::EADDRNOTAVAIL
                | libc::EADDRINUSE
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
        )
    )
}

fn classify(err: io::Error) -> ConnectError {
    if is_local_errno(&err) {
        ConnectError::Local(err)
    } else {
        ConnectError::Server(err)
    }
}

/// A socket ready to connect; created first so `show sessions` can list its descriptor.
pub fn new_socket(addr: SocketAddr) -> Result<TcpSocket, ConnectError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(classify)?;
    Ok(socket)
}

/// Asks the kernel to hold back the ACK that completes the handshake with the server, so it
/// travels with the client's first bytes: a packet less, and the server accepts and reads in
/// one wake-up (HAProxy's `tcp-smart-connect`). Only when those bytes are already waiting,
/// or a server that speaks first would wait for the delayed-ACK timer (200 ms). Best effort:
/// a failure only costs the packet.
pub fn delay_handshake_ack(socket: &TcpSocket) {
    let _ = socket2::SockRef::from(socket).set_tcp_quickack(false);
}

/// Connects `socket` to `addr`; `timeout` zero means no G6 limit (the kernel's SYN retries).
pub async fn connect(
    socket: TcpSocket,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let attempt = socket.connect(addr);
    let stream = if timeout.is_zero() {
        attempt.await.map_err(classify)?
    } else {
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r.map_err(classify)?,
            Err(_) => return Err(ConnectError::Timeout(timeout)),
        }
    };
    stream.set_nodelay(true).map_err(classify)?;
    Ok(stream)
}
