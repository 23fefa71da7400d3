//! Relaying bytes between a client and its server in user space (SPEC.md §5.5): `copy`
//! (read/write through a pooled buffer) and `splice` (splice(2) through a pooled pipe). Idle
//! sessions hold neither a buffer nor a pipe: both are taken only while data is in flight.
//!
//! Each direction is a pump with explicit state (see LIFECYCLE.md): it moves bytes until EOF,
//! then shuts down the write side of the other socket (half-close) and ends; the other
//! direction flows on. A reset or error on either socket ends both pumps and resets the other
//! socket. The idle timer runs across both directions. A relay with both pumps at rest for
//! `PARK_AFTER` ends as `Outcome::Parked`: the session parks (park.rs) and relays again later.

use std::future::Future;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::pool;
use crate::runtime::{RuleRuntime, ServerRuntime};

/// The user-space data paths; `sockmap` sessions fall back to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Copy,
    Splice,
    Sockmap,
}

impl DataPath {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Copy => "copy",
            DataPath::Splice => "splice",
            DataPath::Sockmap => "sockmap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Why a session ended (the access log's `close=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClose,
    ServerClose,
    ClientReset,
    ServerReset,
    IdleTimeout,
    ConnectFailed,
    NoServer,
    Filter,
    ClientLimit,
    Slots,
    /// Refused: the source is on the admin's block list [ext].
    Blocked,
    Shutdown,
    Error,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::ServerClose => "server_close",
            CloseReason::ClientReset => "client_reset",
            CloseReason::ServerReset => "server_reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::NoServer => "no_server",
            CloseReason::Filter => "filter",
            CloseReason::ClientLimit => "client_limit",
            CloseReason::Slots => "slots",
            CloseReason::Blocked => "blocked",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }
}

/// Live per-session state shared with `show sessions` and the access log.
#[derive(Debug)]
pub struct Traffic {
    pub start: Instant,
    /// Milliseconds after `start` of the last byte moved in either direction.
    last_ms: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub client_eof: AtomicBool,
    pub server_eof: AtomicBool,
    /// Which side's EOF came first (`client_close` or `server_close`).
    first_eof_client: AtomicBool,
    any_eof: AtomicBool,
}

impl Traffic {
    pub fn new(start: Instant) -> Self {
        Traffic {
            start,
            last_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            client_eof: AtomicBool::new(false),
            server_eof: AtomicBool::new(false),
            first_eof_client: AtomicBool::new(false),
            any_eof: AtomicBool::new(false),
        }
    }

    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    /// Restart the idle clock (the idle timeout starts when the server connection is made).
    pub fn idle_ms(&self) -> u64 {
        (self.start.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(Relaxed))
    }

    /// Time since the last byte moved either way.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(self.idle_ms())
    }

    fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Relaxed))
    }

    /// Whether `side`'s EOF has been read.
    pub fn eof_seen(&self, side: Side) -> bool {
        match side {
            Side::Client => self.client_eof.load(Relaxed),
            Side::Server => self.server_eof.load(Relaxed),
        }
    }

    pub fn mark_eof(&self, side: Side) {
        match side {
            Side::Client => self.client_eof.store(true, Relaxed),
            Side::Server => self.server_eof.store(true, Relaxed),
        }
        if !self.any_eof.swap(true, Relaxed) {
            self.first_eof_client.store(side == Side::Client, Relaxed);
        }
    }

    /// `client_close` or `server_close`: the side whose EOF came first.
    pub fn first_close(&self) -> CloseReason {
        if self.first_eof_client.load(Relaxed) {
            CloseReason::ClientClose
        } else {
            CloseReason::ServerClose
        }
    }
}

/// Response-time sampling (SPEC.md §6 RT): from the first client bytes of a turn written to the
/// server to the next server bytes.
struct RtProbe {
    turn_open: AtomicBool,
    /// Microseconds after session start when the turn's first bytes were written; 0 = none.
    pending_us: AtomicU64,
}

/// What a session keeps across relay runs when it parks (park.rs): the RT turn, and the TCP
/// progress the idle timer saw last (so bytes TCP moved around a park still count).
pub struct Carry {
    rt: RtProbe,
    pub tcp_seen: AtomicU64,
}

impl Carry {
    /// `idle`: the idle timeout (zero: none, TCP's progress is never looked at).
    pub fn new<S: AsRawFd>(client: &S, server: &S, idle: Duration) -> Self {
        let tcp_seen = if idle.is_zero() {
            0
        } else {
            tcp_progress(client, server)
        };
        Carry {
            rt: RtProbe {
                turn_open: AtomicBool::new(true),
                pending_us: AtomicU64::new(0),
            },
            tcp_seen: AtomicU64::new(tcp_seen),
        }
    }
}

/// How long a relay must have moved nothing, both pumps waiting for bytes, before it parks.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How a relay run ended.
pub enum Outcome {
    Closed(CloseReason),
    /// Idle for [`PARK_AFTER`] with both pumps at rest: nothing is in flight, the sockets
    /// can be handed to the parker (park.rs) and the relay started again when bytes come.
    Parked,
}

/// Everything a pump updates besides the bytes themselves.
pub struct SessionMeters<'a> {
    pub traffic: &'a Traffic,
    pub rule: &'a RuleRuntime,
    pub server: &'a Arc<ServerRuntime>,
}

impl SessionMeters<'_> {
    /// Counts `n` bytes delivered from `from`'s side to the other (session, rule, server).
    pub fn add_delivered(&self, from: Side, n: u64) {
        let (session, rule, server) = match from {
            Side::Client => (
                &self.traffic.bytes_in,
                &self.rule.counters.bytes_in,
                &self.server.bytes_in,
            ),
            Side::Server => (
                &self.traffic.bytes_out,
                &self.rule.counters.bytes_out,
                &self.server.bytes_out,
            ),
        };
        session.fetch_add(n, Relaxed);
        rule.fetch_add(n, Relaxed);
        server.fetch_add(n, Relaxed);
    }
}

/// Decides whether an EOF read from a side's socket is final, given the bytes read from it
/// so far. Only the sockmap path needs one: after it leaves the fast path, the FIN can be
/// seen before every byte the kernel passed to the socket is readable.
pub type EofGate<'a> = &'a (dyn Fn(Side, u64) -> bool + Sync);

/// How long a gated EOF may wait for its bytes before it is taken as final anyway.
const EOF_GATE_LIMIT: Duration = Duration::from_secs(5);

struct Pump<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// The side `from` belongs to.
    side: Side,
    meters: &'a SessionMeters<'a>,
    rt: &'a RtProbe,
    eof_gate: Option<EofGate<'a>>,
    /// Bytes read from `from` by this pump.
    read: AtomicU64,
    /// Waiting for `from` to be readable with nothing in flight (no buffer, pipe or write
    /// pending, no EOF seen): the relay may park.
    at_rest: AtomicBool,
}

/// What one buffered read-and-write did.
enum Copied {
    Eof,
    Bytes(usize),
    /// Bytes, then the sender's FIN right behind them: both already passed on.
    Last,
    /// Spurious readiness, or an EOF the gate does not take as final yet.
    Nothing,
}

/// How a pump failed, naming the socket at fault.
#[derive(Debug)]
enum PumpError {
    Reset(Side),
    Local(io::Error),
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
}

impl Pump<'_> {
    /// Any read error is the reading socket's (reset, timeout): reset the other one.
    fn read_error(&self, _e: io::Error) -> PumpError {
        PumpError::Reset(self.side)
    }

    /// A write error means the receiving socket is gone (EPIPE, ECONNRESET).
    fn write_error(&self, _e: io::Error) -> PumpError {
        PumpError::Reset(other(self.side))
    }

    /// Bytes written to the other side: counters, activity and RT.
    fn delivered(&self, n: usize) {
        let m = self.meters;
        m.traffic.touch();
        m.add_delivered(self.side, n as u64);
        if self.side == Side::Client && self.rt.turn_open.swap(false, Relaxed) {
            let now = m.traffic.start.elapsed().as_micros() as u64;
            self.rt.pending_us.store(now.max(1), Relaxed);
        }
    }

    /// False while an EOF gate says bytes are still due on `from` (retry shortly).
    async fn eof_is_final(&self, since: &mut Option<Instant>) -> bool {
        let Some(gate) = self.eof_gate else {
            return true;
        };
        if gate(self.side, self.read.load(Relaxed)) {
            return true;
        }
        let first = *since.get_or_insert_with(Instant::now);
        if first.elapsed() > EOF_GATE_LIMIT {
            tracing::warn!("relay: EOF taken as final with bytes still announced");
            return true;
        }
        // Boxed: only the sockmap path's fallback gets here, keep its timer out of the pump.
        Box::pin(tokio::time::sleep(Duration::from_millis(1))).await;
        false
    }

    /// Bytes arrived from the server: closes an RT turn.
    fn server_bytes_arrived(&self) {
        if self.side != Side::Server {
            return;
        }
        let pending = self.rt.pending_us.swap(0, Relaxed);
        if pending != 0 {
            let now = self.meters.traffic.start.elapsed().as_micros() as u64;
            self.meters
                .server
                .record_rt_sample(now.saturating_sub(pending));
        }
        self.rt.turn_open.store(true, Relaxed);
    }

    /// EOF from `from`: every earlier byte is delivered, so send the FIN on.
    fn eof(&self) -> Result<(), PumpError> {
        let traffic = self.meters.traffic;
        traffic.touch();
        // The other direction ended already: the session closes both sockets right after
        // this, and close(2) sends the FIN (nothing is unread on `to`: its EOF was read),
        // so the shutdown would be a syscall for nothing. Not with a gate: the sockmap path
        // marks EOFs the kernel relayed too.
        let both_done = self.eof_gate.is_none() && traffic.eof_seen(other(self.side));
        traffic.mark_eof(self.side);
        if both_done {
            return Ok(());
        }
        match SockRef::from(self.to).shutdown(std::net::Shutdown::Write) {
            Ok(()) => Ok(()),
            // The other side is already gone entirely; nothing left to deliver to it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            Err(e) => Err(self.write_error(e)),
        }
    }

    /// Waits until `to` can take more bytes, or until `from` fails meanwhile.
    ///
    /// Fix (SPEC.md §5.5 "Reset": bytes already read are passed on *without waiting*, then
    /// the other socket is reset): a pump blocked writing used to wait on `to` alone, and
    /// the other pump waits on `to` too, so a reset of `from` went unnoticed for as long as
    /// the receiver did not read (for ever with a receiver that never reads: the session
    /// hung, no reset was passed on, no access line). Now an error on `from` ends the pump
    /// as `from`'s reset, dropping only what the receiver would not take. Writability wins
    /// when both are ready, so a receiver that still takes bytes gets them.
    async fn wait_writable(&self) -> Result<(), PumpError> {
        tokio::select! {
            biased;
            r = self.to.writable() => r.map_err(|e| self.write_error(e)),
            r = self.from.ready(Interest::ERROR) => Err(match r {
                Ok(_) => PumpError::Reset(self.side),
                Err(e) => self.read_error(e),
            }),
        }
    }

    /// [`Self::wait_writable`] on the heap: its state exists only under back-pressure, so
    /// each pump (and every idle session) stays smaller.
    async fn wait_writable_boxed(&self) -> Result<(), PumpError> {
        Box::pin(self.wait_writable()).await
    }

    /// Writes all of `data`; `more`: hold a last partial segment for the FIN that follows
    /// (MSG_MORE), so the bytes and the FIN leave as one segment.
    async fn write_all(&self, mut data: &[u8], more: bool) -> Result<(), PumpError> {
        let fd = self.to.as_raw_fd();
        let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
        while !data.is_empty() {
            let sent = self.to.try_io(Interest::WRITABLE, || {
                // SAFETY: sends from a slice we borrow on a descriptor `to` keeps open.
                let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), flags) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match sent {
                Ok(n) => {
                    self.delivered(n);
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_writable_boxed().await?
                }
                Err(e) => return Err(self.write_error(e)),
            }
        }
        Ok(())
    }

    /// One read through a pooled buffer, and the write of what it got. `fin_announced`: the
    /// readiness that woke us reported the sender's FIN (EPOLLRDHUP).
    async fn copy_once(
        &self,
        gated_since: &mut Option<Instant>,
        fin_announced: bool,
    ) -> Result<Copied, PumpError> {
        let mut buf = pool::take_buffer();
        let result = read_draining(self.from, &mut buf);
        match result {
            Ok(0) => {
                pool::give_buffer(buf);
                Ok(if self.eof_is_final(gated_since).await {
                    Copied::Eof
                } else {
                    Copied::Nothing
                })
            }
            Ok(n) => {
                self.read.fetch_add(n as u64, Relaxed);
                self.server_bytes_arrived();
                // The FIN came with these bytes (a response and its close): pass both on in
                // one segment, a packet less for the receiver and one ACK less back. Only
                // after a short read (the queue is drained) and without a gate (sockmap).
                let last =
                    fin_announced && self.eof_gate.is_none() && n < buf.len() && at_eof(self.from);
                let written = self.write_all(&buf[..n], last).await;
                pool::give_buffer(buf);
                written?;
                Ok(if last { Copied::Last } else { Copied::Bytes(n) })
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool::give_buffer(buf);
                Ok(Copied::Nothing)
            }
            Err(e) => {
                pool::give_buffer(buf);
                Err(self.read_error(e))
            }
        }
    }

    /// Waits for `from` to be readable, at rest meanwhile; true if the readiness reported
    /// the sender's FIN too (EPOLLRDHUP).
    async fn rest(&self) -> Result<bool, PumpError> {
        self.at_rest.store(true, Relaxed);
        let ready = self.from.ready(Interest::READABLE).await;
        self.at_rest.store(false, Relaxed);
        ready
            .map(|r| r.is_read_closed())
            .map_err(|e| self.read_error(e))
    }

    async fn run_copy(&self) -> Result<(), PumpError> {
        let mut gated_since = None;
        loop {
            let fin = self.rest().await?;
            if let Copied::Eof | Copied::Last = self.copy_once(&mut gated_since, fin).await? {
                return self.eof();
            }
        }
    }

    /// Splices bulk data; small messages go through a buffer, since one recv + one send cost
    /// less than two splices (measured: about 15 % less CPU per keep-alive request). A read
    /// that fills the buffer switches to splice, a splice that moves less than a quarter of
    /// that switches back.
    async fn run_splice(&self) -> Result<(), PumpError> {
        let from_fd = self.from.as_raw_fd();
        let to_fd = self.to.as_raw_fd();
        let mut bulk = false;
        loop {
            let fin = self.rest().await?;
            if !bulk {
                match self.copy_once(&mut None, fin).await? {
                    Copied::Eof | Copied::Last => return self.eof(),
                    Copied::Bytes(n) => bulk = n == pool::BUFFER_SIZE,
                    Copied::Nothing => {}
                }
                continue;
            }
            let pipe = pool::take_pipe().map_err(PumpError::Local)?;
            let filled = self.from.try_io(Interest::READABLE, || {
                pool::splice(from_fd, pipe.write_fd(), pool::PIPE_CAPACITY)
            });
            let mut in_pipe = match filled {
                Ok(0) => {
                    pool::give_pipe(pipe);
                    return self.eof();
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pool::give_pipe(pipe);
                    continue;
                }
                Err(e) => {
                    pool::give_pipe(pipe);
                    return Err(self.read_error(e));
                }
            };
            self.read.fetch_add(in_pipe as u64, Relaxed);
            // Hysteresis: a bulk stream's splices vary in size under load.
            bulk = in_pipe >= pool::BUFFER_SIZE / 4;
            self.server_bytes_arrived();
            while in_pipe > 0 {
                let drained = self.to.try_io(Interest::WRITABLE, || {
                    pool::splice(pipe.read_fd(), to_fd, in_pipe)
                });
                match drained {
                    Ok(n) => {
                        self.delivered(n);
                        in_pipe -= n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.wait_writable_boxed().await?;
                    }
                    // The pipe still holds bytes: drop it rather than return it to the pool.
                    Err(e) => return Err(self.write_error(e)),
                }
            }
            pool::give_pipe(pipe);
        }
    }

    async fn run(&self, path: DataPath) -> Result<(), PumpError> {
        match path {
            DataPath::Splice => self.run_splice().await,
            DataPath::Copy | DataPath::Sockmap => self.run_copy().await,
        }
    }
}

/// Reads once. A short read shows the socket's receive queue was drained at that moment, so
/// its readiness is cleared at once (edge-triggered epoll raises a new event for new bytes;
/// tokio keeps an EOF's readiness), instead of learning it from one more read failing with
/// EAGAIN: a syscall saved per message, as tokio's own `AsyncRead` does.
fn read_draining(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let fd = from.as_raw_fd();
    let mut short = 0;
    let result = from.try_io(Interest::READABLE, || {
        // recv(2) as tokio's `try_read` uses. SAFETY: reads into a buffer we own from a
        // descriptor `from` keeps open.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        match usize::try_from(n) {
            Err(_) => Err(io::Error::last_os_error()),
            Ok(n) if n > 0 && n < buf.len() => {
                short = n;
                Err(io::ErrorKind::WouldBlock.into())
            }
            Ok(n) => Ok(n),
        }
    });
    match result {
        Err(e) if short > 0 && e.kind() == io::ErrorKind::WouldBlock => Ok(short),
        r => r,
    }
}

/// True if the next read of `from`, whose receive queue was just drained, would be its EOF:
/// the peer's FIN is in and no reset came. From TCP_INFO's state, which leaves the socket as
/// it is: a peek (or SO_ERROR) would take a pending reset's error, and the next read would
/// then see a clean EOF instead of the reset.
fn at_eof(from: &TcpStream) -> bool {
    const TIME_WAIT: u8 = 6;
    const CLOSE_WAIT: u8 = 8;
    const LAST_ACK: u8 = 9;
    const CLOSING: u8 = 11;
    crate::fastpath::tcp_info(from.as_raw_fd())
        .is_ok_and(|ti| matches!(ti.state, CLOSE_WAIT | LAST_ACK | CLOSING | TIME_WAIT))
}

/// Bytes TCP moved on both sockets (acknowledged by each peer + received from it). It grows
/// without the pumps too: a slow reader acknowledging what the agent had queued (a blocked
/// writer is only woken once half its send buffer is free).
pub fn tcp_progress<S: AsRawFd>(client: &S, server: &S) -> u64 {
    [client, server]
        .into_iter()
        .filter_map(|s| crate::fastpath::tcp_info(s.as_raw_fd()).ok())
        .map(|ti| ti.bytes_acked.wrapping_add(ti.bytes_received))
        .fold(0, u64::wrapping_add)
}

/// Completes when the session has been idle (no byte either way) for `idle`: neither the
/// pumps nor TCP moved a byte. TCP's counters are looked at every quarter of the timeout,
/// so a close comes at most that much late. `seen`: TCP's progress when last looked at.
pub async fn idle_expired<S: AsRawFd>(
    traffic: &Traffic,
    idle: Duration,
    client: &S,
    server: &S,
    seen: &AtomicU64,
) {
    let mut waited = false;
    while let Some(at) = idle_next_look(traffic, idle, client, server, seen, waited) {
        tokio::time::sleep_until(at.into()).await;
        waited = true;
    }
}

/// One look of the idle timer (also park.rs's): after a wait (`waited`), bytes TCP moved
/// refresh the clock. → None if the session is idle now, else when to look next.
pub fn idle_next_look<S: AsRawFd>(
    traffic: &Traffic,
    idle: Duration,
    client: &S,
    server: &S,
    seen: &AtomicU64,
    waited: bool,
) -> Option<Instant> {
    if waited {
        let progress = tcp_progress(client, server);
        if seen.swap(progress, Relaxed) != progress {
            traffic.touch();
        }
    }
    let now = Instant::now();
    let deadline = traffic.last_activity() + idle;
    (now < deadline).then(|| deadline.min(now + idle / 4))
}

/// Reads at most this many times per socket when discarding unread bytes at an idle close.
const IDLE_DISCARD_READS: usize = 256;

/// Idle timeout (SPEC.md §5.5): FIN to both sides. close(2) of a socket holding unread
/// bytes (a receiver that stopped reading) would send an RST instead, so the FIN goes first,
/// then what is unread is discarded (bounded); a late RST then still follows the FIN.
pub fn close_idle<S: AsFd>(client: &S, server: &S) {
    for s in [client, server] {
        let _ = SockRef::from(s).shutdown(std::net::Shutdown::Write);
    }
    let mut buf = pool::take_buffer();
    for s in [client, server] {
        // A direct read(2) (the socket is non-blocking): tokio's try_read would trust a
        // readiness flag that may not show bytes that arrived while the pump was not reading.
        let sock = SockRef::from(s);
        for _ in 0..IDLE_DISCARD_READS {
            if !matches!((&*sock).read(&mut buf), Ok(n) if n > 0) {
                break;
            }
        }
    }
    pool::give_buffer(buf);
}

/// How long a reset waits for the other side's send queue to make progress.
const RESET_STALL: Duration = Duration::from_millis(200);

/// Waits until `stream`'s peer acknowledged everything queued on it, or nothing was
/// acknowledged for [`RESET_STALL`]: the linger-0 close of a reset discards the send queue,
/// so bytes relayed just before it (SPEC.md §5.5: delivered first) could be lost.
pub async fn acked_or_stalled(stream: &TcpStream) {
    let outq = || crate::fastpath::outq(stream.as_raw_fd()).unwrap_or(0);
    let mut last = outq();
    let mut stalled = Instant::now();
    while last > 0 && stalled.elapsed() < RESET_STALL {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = outq();
        if now < last {
            stalled = Instant::now();
        }
        last = now;
    }
}

/// Closes `stream` with a reset (linger 0) when it is dropped.
pub fn reset<S: AsFd>(stream: &S) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Relays until both directions are done, a reset, or the idle timeout; `idle` zero = none.
/// Both sockets are closed when this returns (they are dropped by the caller).
pub async fn relay(
    path: DataPath,
    client: &TcpStream,
    server: &TcpStream,
    meters: &SessionMeters<'_>,
    idle: Duration,
) -> CloseReason {
    relay_gated(path, client, server, meters, idle, None).await
}

/// [`relay`] with an [`EofGate`] (the sockmap path after it left the kernel).
pub async fn relay_gated(
    path: DataPath,
    client: &TcpStream,
    server: &TcpStream,
    meters: &SessionMeters<'_>,
    idle: Duration,
    eof_gate: Option<EofGate<'_>>,
) -> CloseReason {
    meters.traffic.touch();
    let carry = Carry::new(client, server, idle);
    let run = Run {
        path,
        client,
        server,
        meters,
        idle,
        carry: &carry,
    };
    match run.relay(eof_gate, false).await {
        Outcome::Closed(reason) => reason,
        Outcome::Parked => unreachable!("a relay that may not park never parks"),
    }
}

/// [`relay`] that returns [`Outcome::Parked`] once it has been at rest for [`PARK_AFTER`]
/// (session.rs then parks it). The caller starts the idle clock (`Traffic::touch`) once for
/// the session; `carry` goes from one run to the next.
pub async fn relay_or_park(
    path: DataPath,
    client: &TcpStream,
    server: &TcpStream,
    meters: &SessionMeters<'_>,
    idle: Duration,
    carry: &Carry,
) -> Outcome {
    let run = Run {
        path,
        client,
        server,
        meters,
        idle,
        carry,
    };
    run.relay(None, true).await
}

/// Polls `timer` only until it is armed: it then wakes the task itself, and polling it on
/// every wake-up for bytes would register the task's waker with it again each time (the
/// keep-alive hot path).
fn poll_armed(timer: Pin<&mut Sleep>, armed: &mut bool, cx: &mut Context<'_>) -> Poll<()> {
    if *armed && !timer.is_elapsed() {
        return Poll::Pending;
    }
    *armed = true;
    timer.poll(cx)
}

/// One relay run's inputs.
struct Run<'a> {
    path: DataPath,
    client: &'a TcpStream,
    server: &'a TcpStream,
    meters: &'a SessionMeters<'a>,
    idle: Duration,
    carry: &'a Carry,
}

impl Run<'_> {
    async fn relay(&self, eof_gate: Option<EofGate<'_>>, may_park: bool) -> Outcome {
        let (client, server, meters, idle) = (self.client, self.server, self.meters, self.idle);
        let pump = |from, to, side| Pump {
            from,
            to,
            side,
            meters,
            rt: &self.carry.rt,
            eof_gate,
            read: AtomicU64::new(0),
            at_rest: AtomicBool::new(false),
        };
        let up = pump(client, server, Side::Client);
        let down = pump(server, client, Side::Server);
        let both = async { tokio::try_join!(up.run(self.path), down.run(self.path)) };
        let outcome = if idle.is_zero() && !may_park {
            both.await
        } else {
            tokio::pin!(both);
            let expired = async {
                if idle.is_zero() {
                    std::future::pending().await
                } else {
                    let seen = &self.carry.tcp_seen;
                    idle_expired(meters.traffic, idle, client, server, seen).await
                }
            };
            tokio::pin!(expired);
            // Never in the past: a pump stuck writing moves nothing and is not at rest.
            let park_due = || {
                (meters.traffic.last_activity() + PARK_AFTER).max(Instant::now() + PARK_AFTER / 4)
            };
            let park_look = tokio::time::sleep_until(park_due().into());
            tokio::pin!(park_look);
            let mut armed = false;
            loop {
                tokio::select! {
                    biased;
                    r = &mut both => break r,
                    _ = &mut expired => {
                        close_idle(client, server);
                        return Outcome::Closed(CloseReason::IdleTimeout);
                    }
                    _ = std::future::poll_fn(|cx| poll_armed(park_look.as_mut(), &mut armed, cx)),
                        if may_park =>
                    {
                        let rest = up.at_rest.load(Relaxed) && down.at_rest.load(Relaxed);
                        if rest && meters.traffic.idle_for() >= PARK_AFTER {
                            return Outcome::Parked;
                        }
                        // Bytes moved meanwhile, or some are in flight: look again later.
                        park_look.as_mut().reset(park_due().into());
                        armed = false;
                    }
                }
            }
        };
        Outcome::Closed(match outcome {
            Ok(_) => meters.traffic.first_close(),
            Err(PumpError::Reset(Side::Client)) => {
                acked_or_stalled(server).await;
                reset(server);
                CloseReason::ClientReset
            }
            Err(PumpError::Reset(Side::Server)) => {
                acked_or_stalled(client).await;
                reset(client);
                CloseReason::ServerReset
            }
            Err(PumpError::Local(e)) => {
                tracing::error!("relay: local failure: {e}");
                reset(client);
                reset(server);
                CloseReason::Error
            }
        })
    }
}
