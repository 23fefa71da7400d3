//! Threaded test servers ("backends"). Each binds a loopback address with port 0, accepts on
//! its own thread, serves every connection on its own thread, keeps one [`ConnRecord`] per
//! accepted connection, and on Drop stops accepting, shuts down live connections and joins
//! every thread.
//!
//! ```ignore
//! let s1 = Backend::identify("s1");          // writes "s1\n" then echoes
//! let sink = Backend::sink();                // reads to EOF, records digest
//! let gen = Backend::generator(1 << 20);     // writes 1 MiB then FIN
//! assert!(s1.wait_accepted(1, WAIT_TIMEOUT));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::data::{Checksum, DataGen, Digest, digest_of_stream, fresh_seed};
use super::net::{self, Stopper, parse_loopback, poll_readable};
use super::wait::{WAIT_TIMEOUT, wait_until};

pub use super::net::End;

const BUF: usize = 64 * 1024;
const STACK: usize = 256 * 1024;

/// What a [`Backend`] does with each accepted connection.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Echo everything; on EOF finish echoing, then shut down the write side.
    Echo,
    /// Write `banner` on accept, then behave as `Echo` (`Identify` is `name\n`).
    SpeakFirst(Vec<u8>),
    /// Read to EOF recording the digest; then, if set, reply `len` bytes of the `seed`
    /// stream; then FIN.
    Sink { reply: Option<(u64, u64)> },
    /// Write `len` bytes of the `seed` stream then FIN, while reading and discarding.
    Generator { len: u64, seed: u64 },
    /// Accept and never read (the listener has a small SO_RCVBUF).
    Hold,
    /// Close at once without data (what G6 does to a refused client).
    CloseOnAccept,
}

/// Per-connection record, updated live by the connection's thread.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    /// Accept order, from 0.
    pub id: usize,
    pub peer: SocketAddr,
    pub accepted_at: Instant,
    /// Bytes read from the peer so far and their digest.
    pub bytes_in: u64,
    pub digest_in: Digest,
    /// Bytes written to the peer so far.
    pub bytes_out: u64,
    pub end: End,
    pub ended_at: Option<Instant>,
}

struct Shared {
    label: String,
    behaviour: Behaviour,
    stop: Stopper,
    stopping: AtomicBool,
    accepted: AtomicUsize,
    accept_errors: Mutex<Vec<String>>,
    records: Mutex<Vec<ConnRecord>>,
    live: Mutex<HashMap<usize, RawFd>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn update(&self, id: usize, f: impl FnOnce(&mut ConnRecord)) {
        f(&mut self.records.lock().unwrap()[id]);
    }
}

/// A running test server; see the module docs.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts `behaviour` on 127.0.0.1:0.
    pub fn start(behaviour: Behaviour) -> Backend {
        Self::start_on("127.0.0.1:0", behaviour)
    }

    /// Starts `behaviour` on `bind` ("127.0.0.1:0", "[::1]:0", …).
    pub fn start_on(bind: &str, behaviour: Behaviour) -> Backend {
        Self::start_named(bind, behaviour, None)
    }

    fn start_named(bind: &str, behaviour: Behaviour, name: Option<&str>) -> Backend {
        let rcvbuf = matches!(behaviour, Behaviour::Hold).then_some(4096);
        let listener = net::listen(parse_loopback(bind), 1024, rcvbuf);
        listener
            .set_nonblocking(true)
            .expect("O_NONBLOCK on listener");
        let addr = listener.local_addr().expect("getsockname");
        let kind = name
            .map(|n| format!("Identify({n})"))
            .unwrap_or_else(|| kind_name(&behaviour));
        let shared = Arc::new(Shared {
            label: format!("{kind}@{addr}"),
            behaviour,
            stop: Stopper::new(),
            stopping: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            accept_errors: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            live: Mutex::new(HashMap::new()),
            handlers: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("accept {}", shared.label))
            .stack_size(STACK)
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn acceptor thread");
        Backend {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// On accept writes `name\n`, then echoes (tells a test which server it reached).
    pub fn identify(name: &str) -> Backend {
        Self::identify_on("127.0.0.1:0", name)
    }

    pub fn identify_on(bind: &str, name: &str) -> Backend {
        assert!(
            !name.contains('\n'),
            "identify name must be one line: {name:?}"
        );
        Self::start_named(
            bind,
            Behaviour::SpeakFirst(format!("{name}\n").into_bytes()),
            Some(name),
        )
    }

    pub fn echo() -> Backend {
        Self::start(Behaviour::Echo)
    }

    /// Writes `banner` on accept (SMTP/MySQL style), then echoes.
    pub fn speak_first(banner: &[u8]) -> Backend {
        Self::start(Behaviour::SpeakFirst(banner.to_vec()))
    }

    /// Reads to EOF, then FIN without reply.
    pub fn sink() -> Backend {
        Self::start(Behaviour::Sink { reply: None })
    }

    /// Reads to EOF, then replies `reply_len` deterministic bytes (see `reply_digest`), FIN.
    pub fn sink_replying(reply_len: u64) -> Backend {
        Self::start(Behaviour::Sink {
            reply: Some((reply_len, fresh_seed())),
        })
    }

    /// Writes `len` deterministic bytes (see `generated_digest`) then FIN.
    pub fn generator(len: u64) -> Backend {
        Self::start(Behaviour::Generator {
            len,
            seed: fresh_seed(),
        })
    }

    /// Accepts and never reads; small receive buffer so back-pressure shows early.
    pub fn accept_no_read() -> Backend {
        Self::start(Behaviour::Hold)
    }

    /// Accepts and closes at once without data.
    pub fn close_on_accept() -> Backend {
        Self::start(Behaviour::CloseOnAccept)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "Kind@ip:port", for messages.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    pub fn behaviour(&self) -> &Behaviour {
        &self.shared.behaviour
    }

    /// Digest of what a `sink_replying` sends after the client's EOF (None for other kinds).
    pub fn reply_digest(&self) -> Option<Digest> {
        match self.shared.behaviour {
            Behaviour::Sink {
                reply: Some((len, seed)),
            } => Some(digest_of_stream(seed, len)),
            _ => None,
        }
    }

    /// `(len, seed)` of a generator's stream; `data::bytes(seed, len)` is what it sends.
    pub fn generated(&self) -> Option<(u64, u64)> {
        match self.shared.behaviour {
            Behaviour::Generator { len, seed } => Some((len, seed)),
            _ => None,
        }
    }

    /// Digest of what a generator sends on every connection (None for other kinds).
    pub fn generated_digest(&self) -> Option<Digest> {
        self.generated()
            .map(|(len, seed)| digest_of_stream(seed, len))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Snapshot of all connection records, in accept order.
    pub fn records(&self) -> Vec<ConnRecord> {
        self.shared.records.lock().unwrap().clone()
    }

    /// Connections accepted and not yet ended.
    pub fn open_count(&self) -> usize {
        self.shared
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.end.is_open())
            .count()
    }

    /// Errors from accept(2) (e.g. EMFILE), for diagnostics.
    pub fn accept_errors(&self) -> Vec<String> {
        self.shared.accept_errors.lock().unwrap().clone()
    }

    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.accepted() >= n)
    }

    /// Waits until at least `n` connections have ended (any way).
    pub fn wait_ended(&self, n: usize, timeout: Duration) -> bool {
        self.wait_records(timeout, |rs| {
            rs.iter().filter(|r| !r.end.is_open()).count() >= n
        })
    }

    /// Waits until `pred` holds over the records.
    pub fn wait_records(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[ConnRecord]) -> bool,
    ) -> bool {
        wait_until(timeout, || pred(&self.shared.records.lock().unwrap()))
    }

    /// Waits for a record matching `pred`; panics (dumping all records) if none shows up.
    pub fn expect_record(&self, what: &str, pred: impl Fn(&ConnRecord) -> bool) -> ConnRecord {
        let found = super::wait::wait_for(WAIT_TIMEOUT, || {
            self.shared
                .records
                .lock()
                .unwrap()
                .iter()
                .find(|r| pred(r))
                .cloned()
        });
        found.unwrap_or_else(|| {
            panic!(
                "{}: no connection record {what} within {WAIT_TIMEOUT:?}; records: {:#?}",
                self.label(),
                self.records()
            )
        })
    }

    /// Panics unless exactly `n` connections were accepted, waiting up to `WAIT_TIMEOUT`
    /// for the count to reach `n`.
    pub fn expect_accepted(&self, n: usize) {
        self.wait_accepted(n, WAIT_TIMEOUT);
        let got = self.accepted();
        assert_eq!(
            got,
            n,
            "{}: expected {n} accepted connections, got {got}",
            self.label()
        );
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.stop();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for &fd in self.shared.live.lock().unwrap().values() {
            // SAFETY: fds in `live` are open: a connection removes itself (under this lock)
            // before its socket is closed.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        let handlers = std::mem::take(&mut *self.shared.handlers.lock().unwrap());
        for h in handlers {
            if h.join().is_err() && !thread::panicking() {
                panic!("{}: a connection thread panicked", self.shared.label);
            }
        }
    }
}

fn kind_name(b: &Behaviour) -> String {
    match b {
        Behaviour::Echo => "Echo".into(),
        Behaviour::SpeakFirst(_) => "SpeakFirst".into(),
        Behaviour::Sink { reply: None } => "Sink".into(),
        Behaviour::Sink {
            reply: Some((len, _)),
        } => format!("Sink(reply {len})"),
        Behaviour::Generator { len, .. } => format!("Generator({len})"),
        Behaviour::Hold => "AcceptNoRead".into(),
        Behaviour::CloseOnAccept => "CloseOnAccept".into(),
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    loop {
        let ready = poll_readable(&[listener.as_raw_fd(), sh.stop.fd()], None);
        if ready[1] {
            return;
        }
        match listener.accept() {
            Ok((stream, peer)) => spawn_conn(&sh, stream, peer),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                sh.accept_errors.lock().unwrap().push(e.to_string());
                sh.stop.wait(Some(Duration::from_millis(10))); // e.g. EMFILE: back off
            }
        }
    }
}

fn spawn_conn(sh: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    stream
        .set_nonblocking(false)
        .expect("blocking accepted socket");
    let id = {
        let mut recs = sh.records.lock().unwrap();
        let id = recs.len();
        recs.push(ConnRecord {
            id,
            peer,
            accepted_at: Instant::now(),
            bytes_in: 0,
            digest_in: Checksum::new().digest(),
            bytes_out: 0,
            end: End::Open,
            ended_at: None,
        });
        id
    };
    sh.live.lock().unwrap().insert(id, stream.as_raw_fd());
    sh.accepted.fetch_add(1, Ordering::SeqCst);
    let conn = Conn {
        stream,
        rec: Rec {
            id,
            sh: sh.clone(),
            sum: Checksum::new(),
        },
    };
    let h = thread::Builder::new()
        .name(format!("conn {} #{id}", sh.label))
        .stack_size(STACK)
        .spawn(move || serve(conn))
        .expect("spawn connection thread");
    let mut hs = sh.handlers.lock().unwrap();
    hs.retain(|h| !h.is_finished());
    hs.push(h);
}

/// One accepted connection; removes itself from `live` before its socket closes (so
/// `Backend::drop` never shuts down a recycled descriptor).
struct Conn {
    stream: TcpStream,
    rec: Rec,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.rec.sh.live.lock().unwrap().remove(&self.rec.id);
    }
}

/// Updates one connection's record.
struct Rec {
    id: usize,
    sh: Arc<Shared>,
    sum: Checksum,
}

impl Rec {
    fn got(&mut self, data: &[u8]) {
        self.sum.update(data);
        let d = self.sum.digest();
        self.sh.update(self.id, |r| {
            r.bytes_in = d.len;
            r.digest_in = d;
        });
    }
}

fn read(s: &mut TcpStream, buf: &mut [u8]) -> Result<usize, End> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::from_io(&e)),
        }
    }
}

fn write(s: &mut TcpStream, rec: &Rec, data: &[u8]) -> Result<(), End> {
    s.write_all(data).map_err(|e| End::from_io(&e))?;
    rec.sh.update(rec.id, |r| r.bytes_out += data.len() as u64);
    Ok(())
}

/// Reads to EOF, recording.
fn drain(s: &mut TcpStream, rec: &mut Rec, buf: &mut [u8]) -> Result<(), End> {
    loop {
        let n = read(s, buf)?;
        if n == 0 {
            return Ok(());
        }
        rec.got(&buf[..n]);
    }
}

/// Echoes until EOF, then shuts down the write side.
fn echo(s: &mut TcpStream, rec: &mut Rec, buf: &mut [u8]) -> Result<(), End> {
    loop {
        let n = read(s, buf)?;
        if n == 0 {
            let _ = s.shutdown(Shutdown::Write);
            return Ok(());
        }
        rec.got(&buf[..n]);
        write(s, rec, &buf[..n])?;
    }
}

fn send_stream(
    s: &mut TcpStream,
    rec: &Rec,
    len: u64,
    seed: u64,
    buf: &mut [u8],
) -> Result<(), End> {
    let mut g = DataGen::new(seed);
    let mut left = len;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        g.fill(&mut buf[..k]);
        write(s, rec, &buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn serve(mut c: Conn) {
    let mut buf = vec![0u8; BUF];
    let (s, rec) = (&mut c.stream, &mut c.rec);
    let result = match rec.sh.behaviour.clone() {
        Behaviour::Echo => echo(s, rec, &mut buf),
        Behaviour::SpeakFirst(banner) => {
            write(s, rec, &banner).and_then(|()| echo(s, rec, &mut buf))
        }
        Behaviour::Sink { reply } => drain(s, rec, &mut buf).and_then(|()| {
            if let Some((len, seed)) = reply {
                send_stream(s, rec, len, seed, &mut buf)?;
            }
            let _ = s.shutdown(Shutdown::Write);
            Ok(())
        }),
        Behaviour::Generator { len, seed } => generate(s, rec, len, seed, &mut buf),
        Behaviour::Hold => {
            rec.sh.stop.wait(None);
            Err(End::Stopped)
        }
        Behaviour::CloseOnAccept => Err(End::Closed),
    };
    let end = match result {
        _ if rec.sh.stopping.load(Ordering::SeqCst) => End::Stopped,
        Ok(()) => End::Eof,
        Err(end) => end,
    };
    rec.sh.update(rec.id, |r| {
        r.end = end;
        r.ended_at = Some(Instant::now());
    });
}

/// Writes the stream then FIN while a second thread reads and discards (recording).
fn generate(
    s: &mut TcpStream,
    rec: &mut Rec,
    len: u64,
    seed: u64,
    buf: &mut [u8],
) -> Result<(), End> {
    let mut rd = s.try_clone().expect("dup accepted socket");
    let mut rd_rec = Rec {
        id: rec.id,
        sh: rec.sh.clone(),
        sum: Checksum::new(),
    };
    let reader = thread::Builder::new()
        .name(format!("gen-read {} #{}", rec.sh.label, rec.id))
        .stack_size(STACK)
        .spawn(move || drain(&mut rd, &mut rd_rec, &mut vec![0u8; BUF]))
        .expect("spawn generator reader thread");
    let written = send_stream(s, rec, len, seed, buf);
    let _ = s.shutdown(Shutdown::Write);
    // The reader ends at the client's EOF/RST, or when Backend::drop shuts the socket down.
    let read = reader.join().expect("generator reader thread panicked");
    written.and(read)
}
