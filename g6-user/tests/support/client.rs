//! Client-side helpers: bounded connects, checked transfers, refusal checks, admin client.
//! Every socket made here has SO_RCVTIMEO/SO_SNDTIMEO = `IO_TIMEOUT`; failures panic with
//! the address, the expectation and what was seen.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::backends::Backend;
use super::data::{Checksum, DataGen, Digest, digest_of_stream, fresh_seed};
use super::wait::{IO_TIMEOUT, WAIT_TIMEOUT, wait_for};

pub use super::net::{End, read_until_end, reset, set_timeouts};

/// Connects within `timeout`, with socket timeouts `IO_TIMEOUT` and TCP_NODELAY.
pub fn try_connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    set_timeouts(&s, IO_TIMEOUT);
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects (bounded by `IO_TIMEOUT`) or panics.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr} failed: {e}"))
}

/// Reads one `\n`-terminated line byte by byte (nothing after it is consumed); without
/// the newline. Panics on EOF, error or timeout.
pub fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => panic!(
                "EOF before end of line; got {:?}",
                String::from_utf8_lossy(&line)
            ),
            Ok(_) if b[0] == b'\n' => return String::from_utf8_lossy(&line).into_owned(),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "read_line failed after {:?}: {e}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
}

/// Connects and returns the name an `Identify` backend announces, plus the stream (which
/// then echoes).
pub fn connect_identify(addr: SocketAddr) -> (String, TcpStream) {
    let mut s = connect(addr);
    let name = read_line(&mut s);
    (name, s)
}

/// The name of the `Identify` backend reached through `addr` (connection then closed).
pub fn identify(addr: SocketAddr) -> String {
    connect_identify(addr).0
}

/// Ok if `addr` accepts the connection and then closes it with no data (EOF, SPEC §5.1
/// "refused") within `timeout`; Err describes what happened instead.
pub fn check_refused(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        format!("{addr}: expected accept-then-EOF (refused, SPEC §5.1), but connect failed: {e}")
    })?;
    s.set_read_timeout(Some(timeout)).expect("SO_RCVTIMEO");
    let mut buf = [0u8; 4096];
    loop {
        return match s.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "{addr}: expected EOF without data (refused), got {n} bytes {:?}",
                String::from_utf8_lossy(&buf[..n])
            )),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => match End::from_io(&e) {
                End::Reset => Err(format!("{addr}: expected EOF (refused), got a reset")),
                _ => Err(format!(
                    "{addr}: expected EOF (refused) within {timeout:?}, got {e}: not refused"
                )),
            },
        };
    }
}

/// Panics unless `addr` refuses (accept then EOF, no data) within `IO_TIMEOUT`.
pub fn expect_refused(addr: SocketAddr) {
    check_refused(addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
}

/// Writes `n` bytes of the `seed` stream in chunks of varying size.
fn write_stream(s: &mut TcpStream, seed: u64, n: u64) -> Result<(), String> {
    let mut g = DataGen::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut sent, mut step) = (0u64, seed | 1);
    while sent < n {
        step = step
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = (1 + (step >> 48) as usize % buf.len()).min((n - sent) as usize);
        g.fill(&mut buf[..k]);
        s.write_all(&buf[..k])
            .map_err(|e| format!("write failed after {sent} of {n} bytes: {e}"))?;
        sent += k as u64;
    }
    Ok(())
}

/// Reads to the end, returning the digest and how it ended (bounded memory).
pub fn read_digest(s: &mut TcpStream) -> (Digest, End) {
    let mut c = Checksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (c.digest(), End::Eof),
            Ok(k) => c.update(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (c.digest(), End::from_io(&e)),
        }
    }
}

fn dump(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("{}: {:#?}\n", b.label(), b.records()))
        .collect()
}

/// Uploads `n` fresh deterministic bytes to `addr`, half-closes, reads the reply to EOF and
/// checks that exactly the bytes sent arrived, ending in EOF, at one of `sinks` (and that
/// the reply is that sink's reply, if it has one). Returns the index of that sink.
/// Use `n > 0` when the sink must be identified.
pub fn upload_checked(addr: SocketAddr, sinks: &[&Backend], n: u64) -> usize {
    let seed = fresh_seed();
    let want = digest_of_stream(seed, n);
    let mut s = connect(addr);
    write_stream(&mut s, seed, n).unwrap_or_else(|e| panic!("upload {n} bytes to {addr}: {e}"));
    s.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("upload to {addr}: shutdown(Write): {e}"));
    let (reply, end) = read_digest(&mut s);
    assert_eq!(
        end,
        End::Eof,
        "upload {n} bytes to {addr}: reply ({reply}) did not end in EOF"
    );
    let hit = wait_for(WAIT_TIMEOUT, || {
        sinks.iter().position(|b| {
            b.records()
                .iter()
                .any(|r| r.digest_in == want && r.end == End::Eof)
        })
    });
    let i = hit.unwrap_or_else(|| {
        panic!(
            "upload {n} bytes to {addr}: no sink recorded {want} ending in EOF; sinks:\n{}",
            dump(sinks)
        )
    });
    let want_reply = sinks[i].reply_digest().unwrap_or_else(|| Digest::of(b""));
    assert_eq!(
        reply,
        want_reply,
        "upload {n} bytes to {addr}: reply from {} differs",
        sinks[i].label()
    );
    i
}

/// Reads everything `addr` sends until EOF and checks it is exactly the stream of one of
/// `generators`. Returns the index of that generator.
pub fn download_checked(addr: SocketAddr, generators: &[&Backend]) -> usize {
    let mut s = connect(addr);
    let (got, end) = read_digest(&mut s);
    let wants: Vec<Digest> = generators
        .iter()
        .map(|g| {
            g.generated_digest()
                .unwrap_or_else(|| panic!("{} is not a generator", g.label()))
        })
        .collect();
    assert_eq!(
        end,
        End::Eof,
        "download from {addr}: stream ended by {end} after {got}; expected one of {wants:?}"
    );
    wants.iter().position(|w| *w == got).unwrap_or_else(|| {
        panic!(
            "download from {addr}: got {got}, expected one of {wants:?} (generators: {})",
            {
                let l: Vec<&str> = generators.iter().map(|g| g.label()).collect();
                l.join(", ")
            }
        )
    })
}

/// Full-duplex check against an echo path: one thread writes `n` fresh bytes then
/// half-closes, while this thread reads and verifies them byte for byte, then expects EOF.
pub fn echo_checked(addr: SocketAddr, n: u64) {
    echo_checked_on(connect(addr), n);
}

/// `echo_checked` on a connection already made (e.g. after reading a banner).
pub fn echo_checked_on(mut s: TcpStream, n: u64) {
    let addr = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| format!("<peer: {e}>"));
    let seed = fresh_seed();
    let mut w = s.try_clone().expect("dup client socket");
    let writer = thread::spawn(move || {
        let r = write_stream(&mut w, seed, n);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let read = verify_stream(&mut s, seed, n);
    if read.is_err() {
        let _ = s.shutdown(Shutdown::Both); // unblock the writer at once
    }
    let wrote = writer.join().expect("echo writer thread panicked");
    if let Err(e) = read {
        panic!("echo {n} bytes via {addr}: {e} (writer: {wrote:?})");
    }
    if let Err(e) = wrote {
        panic!("echo {n} bytes via {addr}: {e}");
    }
}

/// Reads exactly the `seed` stream of length `n`, then EOF.
fn verify_stream(s: &mut TcpStream, seed: u64, n: u64) -> Result<(), String> {
    let mut g = DataGen::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let k = match s.read(&mut buf) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read failed after {got} of {n} bytes: {e}")),
        };
        if k == 0 {
            return if got == n {
                Ok(())
            } else {
                Err(format!("EOF after {got} of {n} bytes"))
            };
        }
        if got + k as u64 > n {
            return Err(format!(
                "received more than the {n} bytes sent ({} so far)",
                got + k as u64
            ));
        }
        g.fill(&mut want[..k]);
        if let Some(i) = (0..k).find(|&i| buf[i] != want[i]) {
            return Err(format!(
                "data differs at offset {}: got {:#04x}, want {:#04x}",
                got + i as u64,
                buf[i],
                want[i]
            ));
        }
        got += k as u64;
    }
}

/// Sends `text` to the admin port `addr`, half-closes (end of input: SPEC §9.1 executes a
/// final unterminated line, then closes) and returns the whole reply.
pub fn admin_cmd(addr: SocketAddr, text: &str) -> String {
    let mut c = AdminConn::connect(addr);
    c.send(text);
    c.shutdown_write();
    c.read_to_eof()
}

/// A persistent admin connection for pipelining and multi-step sessions.
pub struct AdminConn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl AdminConn {
    pub fn connect(addr: SocketAddr) -> AdminConn {
        AdminConn {
            addr,
            stream: connect(addr),
            buf: Vec::new(),
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    pub fn send_bytes(&mut self, data: &[u8]) {
        let addr = self.addr;
        self.stream
            .write_all(data)
            .unwrap_or_else(|e| panic!("admin {addr}: send failed: {e}"));
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// One read into the buffer with at most `timeout`; Ok(false) on EOF.
    fn fill(&mut self, timeout: Duration) -> io::Result<bool> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut b = [0u8; 16 * 1024];
        let r = loop {
            match self.stream.read(&mut b) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        let _ = self.stream.set_read_timeout(Some(IO_TIMEOUT));
        let k = r?;
        self.buf.extend_from_slice(&b[..k]);
        Ok(k > 0)
    }

    fn take(&mut self, n: usize) -> String {
        let rest = self.buf.split_off(n);
        String::from_utf8_lossy(&std::mem::replace(&mut self.buf, rest)).into_owned()
    }

    fn pending(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Exactly the next `n` lines (each with its `\n`), within `IO_TIMEOUT`.
    pub fn read_lines(&mut self, n: usize) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if n == 0 {
                return String::new();
            }
            let mut newlines = self.buf.iter().enumerate().filter(|(_, b)| **b == b'\n');
            if let Some((i, _)) = newlines.nth(n - 1) {
                return self.take(i + 1);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.fill(left) {
                Ok(true) => {}
                Ok(false) => panic!(
                    "admin {}: EOF before {n} lines; got {:?}",
                    self.addr,
                    self.pending()
                ),
                Err(e) => panic!(
                    "admin {}: waiting for {n} lines: {e}; got {:?}",
                    self.addr,
                    self.pending()
                ),
            }
        }
    }

    /// Reads until `pred(all text read so far)` holds (→ that text) or EOF/`timeout` (panic).
    pub fn read_until(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.pending()) {
                let n = self.buf.len();
                return self.take(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.fill(left) {
                Ok(true) => {}
                Ok(false) => panic!(
                    "admin {}: EOF before the expected reply; got {:?}",
                    self.addr,
                    self.pending()
                ),
                Err(e) => panic!(
                    "admin {}: no expected reply within {timeout:?} ({e}); got {:?}",
                    self.addr,
                    self.pending()
                ),
            }
        }
    }

    /// Reads until no byte arrives for `quiet`, or EOF; returns what was read.
    pub fn read_quiet(&mut self, quiet: Duration) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match self.fill(quiet) {
                Ok(true) if Instant::now() < deadline => {}
                Ok(true) => panic!(
                    "admin {}: reply never went quiet within {IO_TIMEOUT:?}",
                    self.addr
                ),
                Ok(false) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => panic!(
                    "admin {}: read failed: {e}; got {:?}",
                    self.addr,
                    self.pending()
                ),
            }
        }
        let n = self.buf.len();
        self.take(n)
    }

    /// Everything up to EOF; panics on reset, error or timeout.
    pub fn read_to_eof(&mut self) -> String {
        let (data, end) = read_until_end(&mut self.stream);
        self.buf.extend_from_slice(&data);
        assert_eq!(
            end,
            End::Eof,
            "admin {}: expected the reply to end in EOF; got {:?}",
            self.addr,
            self.pending()
        );
        let n = self.buf.len();
        self.take(n)
    }

    /// Waits (up to `timeout`) for the server to close: true on EOF with no further data.
    pub fn is_closed_within(&mut self, timeout: Duration) -> bool {
        matches!(self.fill(timeout), Ok(false)) && self.buf.is_empty()
    }
}
