//! Packet economy of a proxied connection (issue #6: connections/s and CPU per connection):
//! the ACK completing the handshake with the server rides with the client's first bytes when
//! they are already waiting, and a response with the FIN right behind it reaches the client
//! as one segment; and a server that speaks first is not held up by an ACK held back for
//! bytes that never come. Segments are counted by the kernel (TCP_INFO `tcpi_segs_in`) on
//! the receiving sockets.

mod e2e;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

/// (`tcpi_segs_in`, `tcpi_bytes_received`) of a socket: offsets 140 and 128 of the kernel's
/// `struct tcp_info` (glibc's `tcp_info` stops before them).
fn segments_in(s: &TcpStream) -> (u32, u64) {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into a buffer we own.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    assert!(r == 0 && len >= 144, "TCP_INFO: {r}, {len} bytes");
    let segs = u32::from_ne_bytes(info[140..144].try_into().expect("4 bytes"));
    let bytes = u64::from_ne_bytes(info[128..136].try_into().expect("8 bytes"));
    (segs, bytes)
}

/// What the backend saw of its one connection: segments in once the request was read.
struct BackendSaw {
    segments_with_request: u32,
}

/// Reads the request, then answers and closes in one segment (TCP_CORK until the shutdown,
/// as a server writing a response and closing at once usually does on loopback); then reads
/// to the client's FIN.
fn serve_one(listener: TcpListener) -> BackendSaw {
    let (mut s, _) = listener.accept().expect("backend accept");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("backend read");
        assert!(n > 0, "EOF before the end of the request");
        got.extend_from_slice(&buf[..n]);
    }
    let (segments_with_request, bytes) = segments_in(&s);
    assert_eq!(
        bytes,
        REQUEST.len() as u64,
        "tcp_info layout: bytes received"
    );
    socket2::SockRef::from(&s).set_tcp_cork(true).expect("cork");
    s.write_all(RESPONSE).expect("backend write");
    s.shutdown(Shutdown::Write).expect("backend shutdown");
    while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    BackendSaw {
        segments_with_request,
    }
}

/// Waits until the kernel has acknowledged every byte `s` sent (they are queued at the
/// receiver).
fn wait_acknowledged(s: &TcpStream) {
    let fd = s.as_raw_fd();
    let acked = wait_until(WAIT_TIMEOUT, || {
        let mut outq: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int we own; `s` keeps the descriptor open.
        unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut outq) == 0 && outq == 0 }
    });
    assert!(acked, "the request was not acknowledged");
}

/// Waits until every thread of `pid` is stopped (a signal is delivered asynchronously).
fn wait_stopped(pid: Pid) {
    let tasks = format!("/proc/{pid}/task");
    let stopped = wait_until(WAIT_TIMEOUT, || {
        let Ok(dir) = std::fs::read_dir(&tasks) else {
            return false;
        };
        dir.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    });
    assert!(stopped, "worker {pid} did not stop");
}

#[test]
fn handshake_ack_and_fin_ride_with_the_data() {
    for path in ["copy", "splice"] {
        let listen = PreBound::tcp("127.0.0.1:0");
        let backend = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let conf = format!(
            "r1 RR *:* - {} > {} ;\n",
            listen.addr(),
            backend.local_addr().expect("backend addr")
        );
        let g6 = G6Proc::start(&conf, &[&listen], &["--data-path", path]);
        let worker = Pid::from_raw(e2e::worker_pid(&g6));
        let serving = std::thread::spawn(move || serve_one(backend));

        // The request is queued before g6 accepts (as when g6 is busy), so the connect to the
        // server finds it waiting.
        kill(worker, Signal::SIGSTOP).expect("stop the worker");
        wait_stopped(worker);
        let mut c = connect(listen.addr());
        c.write_all(REQUEST).expect("send request");
        wait_acknowledged(&c);
        kill(worker, Signal::SIGCONT).expect("continue the worker");
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut response = Vec::new();
        c.read_to_end(&mut response).expect("read response");
        assert_eq!(response, RESPONSE, "{path}: response");
        let (client_segments, bytes) = segments_in(&c);
        // The FIN takes a sequence number too.
        assert_eq!(
            bytes,
            RESPONSE.len() as u64 + 1,
            "tcp_info layout: bytes received"
        );
        drop(c);
        let saw = serving.join().expect("backend thread");

        // SYN, then the request carrying the handshake's last ACK (3 if the ACK came alone).
        assert_eq!(
            saw.segments_with_request, 2,
            "{path}: backend's segments in"
        );
        // SYN-ACK, the ACK of the request, the response with the FIN (4 if the FIN came alone).
        assert_eq!(client_segments, 3, "{path}: client's segments in");
        let line = e2e::wait_access(&g6, c_addr(&g6));
        assert!(line.contains("close=server_close"), "{path}: {line}");
    }
}

/// The client address of the test's only session, from g6's access line.
fn c_addr(g6: &G6Proc) -> std::net::SocketAddr {
    let found = wait_for(WAIT_TIMEOUT, || {
        g6.log_contents()
            .lines()
            .find_map(|l| l.split_whitespace().find(|w| w.starts_with("client=")))
            .map(|w| w["client=".len()..].to_string())
    });
    let text = found.unwrap_or_else(|| panic!("no access line {}", g6.diagnostics()));
    text.parse().expect("client address")
}

#[test]
fn a_server_that_speaks_first_is_not_held_up() {
    for path in data_paths() {
        let backend = Backend::speak_first(b"220 ready\r\n");
        let listen = PreBound::tcp("127.0.0.1:0");
        let conf = format!("r1 RR *:* - {} > {} ;\n", listen.addr(), backend.addr());
        let _g6 = G6Proc::start(&conf, &[&listen], &["--data-path", &path]);
        let mut took: Vec<Duration> = (0..15)
            .map(|_| {
                let t = Instant::now();
                let mut s = connect(listen.addr());
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                assert_eq!(read_line(&mut s), "220 ready\r", "{path}: banner");
                t.elapsed()
            })
            .collect();
        took.sort();
        // A handshake ACK held back for client bytes that never come costs the delayed-ACK
        // timer (200 ms) on every connection; the median is immune to a loaded machine's
        // odd slow connect.
        let median = took[took.len() / 2];
        assert!(
            median < Duration::from_millis(100),
            "{path}: banner after {median:?} (all: {took:?})"
        );
    }
}
