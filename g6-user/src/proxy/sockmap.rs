//! The `sockmap` data path's session driver: the pair is spliced inside the kernel by the
//! eBPF verdict (fastpath/), and this task only watches it (see LIFECYCLE.md):
//!
//! * EOF on a socket → wait until every byte redirected from it is in the other socket's TCP
//!   send stream (sharp edge 3), then propagate the FIN; both directions done → close.
//! * Reset/error → reset the other socket, as in user space.
//! * Locally passed data (a redirect failed), or more than [`HIGH_WATER`] bytes redirected
//!   but not yet sent on (the peer stopped reading; the kernel has no backpressure here,
//!   sharp edge 4) → stop redirecting both ways, let the backlog drain, and continue the
//!   session in user space with nothing lost or reordered.
//! * A timer refreshes byte counters, idle time and RT samples from the map: fast while
//!   bytes move or a FIN waits, backing off while the pair is quiet.
//! * The verdict cuts retransmitted overlaps (fastpath rule 6); if the kernel refused a cut
//!   (`trim_fail`), a segment is missing and the session is reset, in either phase.
//!
//! Map entries are deleted only when the session ends (both directions done, or abort).

use std::io::{self, Read as _};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::relay::{self, CloseReason, DataPath, SessionMeters, Side};
use crate::fastpath::{FastPath, PairKeys, sys};

/// Bytes redirected but not yet in the receiving socket's send stream that make a pair
/// leave the fast path (SPEC.md §5.5: at most 1 MiB held per direction).
pub const HIGH_WATER: u64 = 1 << 20;
/// Hard cap the kernel enforces between two looks: at most this many bytes beyond what had
/// arrived at the last look may be redirected; past it data is passed locally (TCP flow
/// control then applies) and the pair leaves the fast path.
pub const BUDGET_SLACK: u64 = 32 << 20;
/// Accelerated pairs at most; more sessions use the user-space path.
pub const MAX_PAIRS: usize = 16_384;
/// Watch intervals: fast while bytes move, slower while quiet, slowest after long quiet.
const TICK_MIN: Duration = Duration::from_millis(1);
const TICK_QUIET: Duration = Duration::from_millis(50);
const TICK_IDLE: Duration = Duration::from_secs(1);
/// Quiet for this long = idle (the budget still bounds a sudden flood).
const LONG_QUIET: Duration = Duration::from_secs(5);
/// How long a reset waits for redirected bytes that stopped moving before resetting the peer.
const RESET_STALL: Duration = Duration::from_millis(200);
/// How long a pair leaving the fast path may make no progress before it is aborted (only
/// without an idle timeout, which otherwise decides).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The loaded fast path plus the count of pairs it carries.
pub struct Accelerator {
    fp: FastPath,
    pairs: AtomicUsize,
}

impl Accelerator {
    pub fn new(fp: FastPath) -> Self {
        Accelerator {
            fp,
            pairs: AtomicUsize::new(0),
        }
    }

    pub fn pairs(&self) -> usize {
        self.pairs.load(Relaxed)
    }
}

/// An inserted pair; removes its map entries and releases its count when dropped.
struct Pair<'a> {
    acc: &'a Accelerator,
    keys: PairKeys,
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        self.acc.fp.remove_pair(self.keys);
        self.acc.pairs.fetch_sub(1, Relaxed);
    }
}

/// What a readiness event on a spliced socket means.
enum Event {
    Eof,
    /// Bytes were passed to this socket locally: user space must relay them.
    LocalData,
    Reset,
    Spurious,
}

/// Reads what a readiness event means without reading data: a peek would go through the
/// psock's receive path, which must only ever be consumed in order by the relay.
fn classify(stream: &TcpStream, ready: tokio::io::Ready, passed_any: bool) -> Event {
    let fd = stream.as_raw_fd();
    if ready.is_error() || sys::so_error(fd).map_or(true, |e| e != 0) {
        return Event::Reset;
    }
    match sys::inq(fd) {
        Ok(n) if n > 0 => return Event::LocalData,
        Ok(_) => {}
        Err(_) => return Event::Reset,
    }
    if ready.is_read_closed() {
        // Bytes passed locally may still be on their way to the receive queue when the FIN
        // is seen: then user space takes over and reads them before the EOF.
        return if passed_any {
            Event::LocalData
        } else {
            Event::Eof
        };
    }
    // Nothing to act on: clear the readiness so that the next wait really waits.
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
    Event::Spurious
}

/// Per-direction progress while spliced.
#[derive(Default)]
struct Direction {
    /// EOF read from the source socket.
    eof: bool,
    /// FIN sent on to the other socket.
    done: bool,
    /// Redirected bytes already added to the counters.
    reported: u64,
    /// Kernel budget last set for the source socket.
    budget: u64,
}

struct Driver<'a> {
    acc: &'a Accelerator,
    keys: PairKeys,
    client: &'a TcpStream,
    server: &'a TcpStream,
    meters: &'a SessionMeters<'a>,
    up: Direction,
    down: Direction,
    rt_samples_seen: u64,
    /// The verdict had to drop a skb (see [`damaged`]); set by `refresh`.
    damaged: bool,
}

enum Exit {
    Closed(CloseReason),
    /// This side's socket was reset or failed.
    Reset(Side),
    /// Continue in user space.
    Fallback,
}

impl Driver<'_> {
    /// Copies the kernel's counters into the session's; true if bytes moved.
    fn refresh(&mut self) -> bool {
        let mut moved = false;
        if let Some(st) = self.acc.fp.state(self.keys.a) {
            self.damaged |= st.trim_fail > 0;
            let delta = st.redirected_bytes.saturating_sub(self.up.reported);
            if delta > 0 {
                self.up.reported = st.redirected_bytes;
                self.meters.add_delivered(Side::Client, delta);
                moved = true;
            }
        }
        if let Some(st) = self.acc.fp.state(self.keys.b) {
            self.damaged |= st.trim_fail > 0;
            let delta = st.redirected_bytes.saturating_sub(self.down.reported);
            if delta > 0 {
                self.down.reported = st.redirected_bytes;
                self.meters.add_delivered(Side::Server, delta);
                moved = true;
            }
            // The verdict measures turns on the server-facing socket (SPEC.md §6 RT).
            if st.rt_samples > self.rt_samples_seen {
                self.rt_samples_seen = st.rt_samples;
                self.meters.server.record_rt_sample(st.rt_last_ns / 1000);
            }
        }
        if moved {
            self.meters.traffic.touch();
        }
        moved
    }

    /// Keeps each source's kernel budget at "arrived at the peer + slack".
    fn extend_budgets(&mut self) {
        for side in [Side::Client, Side::Server] {
            let backlog = self.backlog(side);
            let (cookie, dir) = match side {
                Side::Client => (self.keys.a, &mut self.up),
                Side::Server => (self.keys.b, &mut self.down),
            };
            let arrived = dir.reported.saturating_sub(backlog);
            let budget = arrived + BUDGET_SLACK;
            // Re-set only after real progress: each update is a syscall.
            if budget >= dir.budget + BUDGET_SLACK / 4 {
                dir.budget = budget;
                let _ = self.acc.fp.set_budget(cookie, budget);
            }
        }
    }

    fn backlog(&self, side: Side) -> u64 {
        let (src, dst) = match side {
            Side::Client => (self.keys.a, self.server),
            Side::Server => (self.keys.b, self.client),
        };
        // An error here means the socket is gone; the readiness path reports it.
        self.acc.fp.backlog(&self.keys, src, dst, 0).unwrap_or(0)
    }

    /// Sends a pending FIN on once the direction has drained.
    fn propagate_fins(&mut self) -> Result<(), CloseReason> {
        for side in [Side::Client, Side::Server] {
            let (dir, to) = match side {
                Side::Client => (&self.up, self.server),
                Side::Server => (&self.down, self.client),
            };
            if dir.eof && !dir.done && self.backlog(side) == 0 {
                match SockRef::from(to).shutdown(std::net::Shutdown::Write) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
                    Err(_) => {
                        return Err(match side {
                            Side::Client => CloseReason::ServerReset,
                            Side::Server => CloseReason::ClientReset,
                        });
                    }
                }
                match side {
                    Side::Client => self.up.done = true,
                    Side::Server => self.down.done = true,
                }
            }
        }
        Ok(())
    }

    fn classify(&self, side: Side, ready: io::Result<tokio::io::Ready>) -> Event {
        let Ok(ready) = ready else {
            return Event::Reset;
        };
        let (stream, cookie) = match side {
            Side::Client => (self.client, self.keys.a),
            Side::Server => (self.server, self.keys.b),
        };
        let passed_any = self
            .acc
            .fp
            .state(cookie)
            .is_some_and(|s| s.passed_bytes > 0);
        classify(stream, ready, passed_any)
    }

    fn on_event(&mut self, side: Side, event: Event) -> Option<Exit> {
        match event {
            Event::Spurious => None,
            Event::LocalData => Some(Exit::Fallback),
            Event::Reset => Some(Exit::Reset(side)),
            Event::Eof => {
                self.meters.traffic.mark_eof(side);
                match side {
                    Side::Client => self.up.eof = true,
                    Side::Server => self.down.eof = true,
                }
                None
            }
        }
    }

    async fn watch(&mut self, idle: Duration) -> Exit {
        let mut tick = TICK_MIN;
        for (cookie, dir) in [(self.keys.a, &mut self.up), (self.keys.b, &mut self.down)] {
            dir.budget = BUDGET_SLACK;
            if self.acc.fp.set_budget(cookie, BUDGET_SLACK).is_err() {
                return Exit::Fallback;
            }
        }
        loop {
            if self.up.done && self.down.done {
                self.refresh();
                return Exit::Closed(self.meters.traffic.first_close());
            }
            let event = tokio::select! {
                r = self.client.ready(Interest::READABLE), if !self.up.eof => {
                    Some((Side::Client, self.classify(Side::Client, r)))
                }
                r = self.server.ready(Interest::READABLE), if !self.down.eof => {
                    Some((Side::Server, self.classify(Side::Server, r)))
                }
                _ = tokio::time::sleep(next_wake(tick, idle, self.meters.traffic.idle_for())) => None,
            };
            if let Some((side, ev)) = event
                && let Some(exit) = self.on_event(side, ev)
            {
                self.refresh();
                return exit;
            }
            let moved = self.refresh();
            if self.damaged {
                return Exit::Closed(abort_damaged(self.client, self.server));
            }
            if moved {
                self.extend_budgets();
            }
            if let Err(reason) = self.propagate_fins() {
                return Exit::Closed(reason);
            }
            if self.backlog(Side::Client) > HIGH_WATER || self.backlog(Side::Server) > HIGH_WATER {
                return Exit::Fallback;
            }
            if !idle.is_zero() && self.meters.traffic.idle_for() >= idle {
                return Exit::Closed(CloseReason::IdleTimeout);
            }
            let pending_fin = (self.up.eof && !self.up.done) || (self.down.eof && !self.down.done);
            tick = if moved || pending_fin {
                TICK_MIN
            } else if self.meters.traffic.idle_for() > LONG_QUIET {
                TICK_IDLE
            } else {
                (tick * 2).min(TICK_QUIET)
            };
        }
    }

    /// A reset of `side`: bytes already redirected from it are passed on first (they sit in
    /// the other socket's psock backlog until its send queue takes them), then the bytes
    /// still readable on it, then the other socket is reset once its peer acknowledged them
    /// all (SPEC.md §5.5); each wait ends when nothing moves for [`RESET_STALL`].
    async fn pass_on_reset(&mut self, side: Side) -> CloseReason {
        let (reason, from, other) = match side {
            Side::Client => (CloseReason::ClientReset, self.client, self.server),
            Side::Server => (CloseReason::ServerReset, self.server, self.client),
        };
        settle(|| self.backlog(side)).await;
        // Bytes the verdict passed locally, or never saw: a reset that arrives right after
        // insertion takes the socket out of the sockhash (TCP unhashes it) before the kick
        // ran the verdict on bytes queued earlier. User space reads them, as its path would.
        let n = forward_unread(from, other).await;
        if n > 0 {
            self.meters.add_delivered(side, n);
        }
        // The linger-0 close below discards the send queue: a byte queued but not yet sent
        // would be lost.
        settle(|| sys::outq(other.as_raw_fd()).unwrap_or(0)).await;
        self.refresh();
        relay::reset(other);
        reason
    }

    /// Every byte count that grows while the pair makes progress: the verdict's counters
    /// and both sockets' TCP_INFO (bytes acked by a slow reader, bytes still arriving).
    fn activity(&self) -> u64 {
        let map: u64 = [self.keys.a, self.keys.b]
            .into_iter()
            .filter_map(|c| self.acc.fp.state(c))
            .map(|st| st.redirected_bytes + st.passed_bytes)
            .sum();
        let tcp = relay::tcp_progress(self.client, self.server);
        map.wrapping_add(tcp)
    }

    /// Stops redirecting both ways and waits until nothing redirected is left in flight, so
    /// user space can take over without loss or reordering.
    /// A reset meanwhile ends the wait (a receiver that does not read would make it long).
    /// Bytes that still move (see [`Self::activity`]) refresh the idle clock; the listener's
    /// idle timeout then closes a stuck pair with FIN as on every path (SPEC.md §5.5). With
    /// no idle timeout, a pair stuck for [`DRAIN_LIMIT`] is reset.
    async fn leave_fast_path(&mut self, idle: Duration) -> Result<(), Exit> {
        for cookie in [self.keys.a, self.keys.b] {
            let _ = self.acc.fp.set_peer(cookie, 0);
        }
        let mut seen = self.activity();
        let mut stalled = Instant::now();
        while self.backlog(Side::Client) > 0 || self.backlog(Side::Server) > 0 {
            let now = self.activity();
            if now != seen {
                seen = now;
                stalled = Instant::now();
                self.meters.traffic.touch();
            }
            if !idle.is_zero() && self.meters.traffic.idle_for() >= idle {
                self.refresh();
                relay::close_idle(self.client, self.server);
                return Err(Exit::Closed(CloseReason::IdleTimeout));
            }
            if idle.is_zero() && stalled.elapsed() > DRAIN_LIMIT {
                tracing::error!("sockmap: pair did not drain within {DRAIN_LIMIT:?}; aborted");
                relay::reset(self.client);
                relay::reset(self.server);
                return Err(Exit::Closed(CloseReason::Error));
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK_MIN) => {}
                _ = self.client.ready(Interest::ERROR) => return Err(Exit::Reset(Side::Client)),
                _ = self.server.ready(Interest::ERROR) => return Err(Exit::Reset(Side::Server)),
            }
        }
        self.refresh();
        Ok(())
    }
}

/// Waits until `pending()` is 0 or has not decreased for [`RESET_STALL`].
async fn settle(pending: impl Fn() -> u64) {
    let mut last = pending();
    let mut stalled = Instant::now();
    while last > 0 && stalled.elapsed() < RESET_STALL {
        tokio::time::sleep(TICK_MIN).await;
        let now = pending();
        if now < last {
            stalled = Instant::now();
        }
        last = now;
    }
}

/// Copies what is still readable on the reset socket `from` to `to` (bounded by `from`'s
/// receive queue; a write stalled for [`RESET_STALL`] gives up); → bytes written.
async fn forward_unread(from: &TcpStream, to: &TcpStream) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        // A direct read(2): readiness flags may not show bytes queued while nobody read.
        let n = match (&*SockRef::from(from)).read(&mut buf) {
            Ok(n) if n > 0 => n,
            _ => return total,
        };
        let mut off = 0;
        while off < n {
            let wrote = tokio::time::timeout(RESET_STALL, async {
                loop {
                    to.writable().await?;
                    match to.try_write(&buf[off..n]) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return r,
                    }
                }
            })
            .await;
            match wrote {
                Ok(Ok(k)) if k > 0 => {
                    off += k;
                    total += k as u64;
                }
                _ => return total,
            }
        }
    }
}

/// The next look: the tick, but never past the idle deadline.
fn next_wake(tick: Duration, idle: Duration, idle_for: Duration) -> Duration {
    if idle.is_zero() {
        tick
    } else {
        tick.min(idle.saturating_sub(idle_for) + TICK_MIN)
    }
}

/// Relays a connected pair through the kernel; falls back to user space when it must.
/// `fallback` is the user-space path for pairs that cannot be accelerated at all.
pub async fn relay(
    acc: &Accelerator,
    fallback: DataPath,
    client: &TcpStream,
    server: &TcpStream,
    meters: &SessionMeters<'_>,
    idle: Duration,
) -> CloseReason {
    if acc.pairs.fetch_add(1, Relaxed) >= MAX_PAIRS {
        acc.pairs.fetch_sub(1, Relaxed);
        return relay::relay(fallback, client, server, meters, idle).await;
    }
    let keys = match acc.fp.insert_pair(client, server) {
        Ok(k) => k,
        Err(e) => {
            acc.pairs.fetch_sub(1, Relaxed);
            tracing::debug!("sockmap: pair not accelerated: {e}");
            return relay::relay(fallback, client, server, meters, idle).await;
        }
    };
    let _pair = Pair { acc, keys };
    // The idle clock starts once the server connection is made (SPEC.md §5.5).
    meters.traffic.touch();
    let mut driver = Driver {
        acc,
        keys,
        client,
        server,
        meters,
        up: Direction::default(),
        down: Direction::default(),
        rt_samples_seen: 0,
        damaged: false,
    };
    // Read now: once both sides are shut down the socket has no peer any more.
    let client_addr = client
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let (reason, left) = drive(&mut driver, idle).await;
    log_split(&driver, &client_addr, reason, left);
    reason
}

/// The session after insertion: spliced, then, if it must, in user space. → the close
/// reason and whether the pair left the fast path.
async fn drive(driver: &mut Driver<'_>, idle: Duration) -> (CloseReason, bool) {
    let (client, server, meters, acc, keys) = (
        driver.client,
        driver.server,
        driver.meters,
        driver.acc,
        driver.keys,
    );
    let fp = &acc.fp;
    match driver.watch(idle).await {
        Exit::Closed(reason) => (reason, false),
        Exit::Reset(side) => (driver.pass_on_reset(side).await, false),
        Exit::Fallback => {
            match driver.leave_fast_path(idle).await {
                Ok(()) => {}
                Err(Exit::Reset(side)) => return (driver.pass_on_reset(side).await, true),
                Err(Exit::Closed(reason)) => return (reason, true),
                Err(Exit::Fallback) => unreachable!("leave_fast_path never asks to fall back"),
            }
            // The sockets stay in the sockhash until the end (deleting them would drop what
            // their psock holds), so user space reads them through the psock: copy, never
            // splice(2), which bypasses it.
            let gate = |side: Side, read: u64| {
                let cookie = match side {
                    Side::Client => keys.a,
                    Side::Server => keys.b,
                };
                fp.state(cookie).is_none_or(|st| read >= st.passed_bytes)
            };
            let relay =
                relay::relay_gated(DataPath::Copy, client, server, meters, idle, Some(&gate));
            tokio::pin!(relay);
            loop {
                tokio::select! {
                    reason = &mut relay => return (reason, true),
                    _ = tokio::time::sleep(TICK_QUIET) => {
                        if damaged(fp, keys) {
                            return (abort_damaged(client, server), true);
                        }
                    }
                }
            }
        }
    }
}

/// DEBUG line at the end of an accelerated session: how many bytes the kernel redirected
/// (the verdict's counters) and how many user space relayed after the pair left the fast
/// path. The tests use it to prove that spliced bytes never crossed the agent.
fn log_split(driver: &Driver<'_>, client: &str, reason: CloseReason, left: bool) {
    let traffic = driver.meters.traffic;
    let (r_in, r_out) = (driver.up.reported, driver.down.reported);
    let user_in = traffic.bytes_in.load(Relaxed).saturating_sub(r_in);
    let user_out = traffic.bytes_out.load(Relaxed).saturating_sub(r_out);
    tracing::debug!(
        "sockmap: session client={client} close={} left_fast_path={left} \
         redirected_in={r_in} redirected_out={r_out} user_in={user_in} user_out={user_out}",
        reason.as_str()
    );
}

/// True if the verdict failed to cut a stale prefix for either socket and dropped that skb
/// (`ConnState::trim_fail`): the stream can no longer be delivered exactly.
fn damaged(fp: &FastPath, keys: PairKeys) -> bool {
    [keys.a, keys.b]
        .into_iter()
        .any(|c| fp.state(c).is_some_and(|st| st.trim_fail > 0))
}

/// Resets both sockets of a damaged pair: an abort, never a silently wrong stream.
fn abort_damaged(client: &TcpStream, server: &TcpStream) -> CloseReason {
    tracing::error!(
        "sockmap: the kernel refused to cut a retransmitted overlap; a segment was dropped, \
         session reset"
    );
    relay::reset(client);
    relay::reset(server);
    CloseReason::Error
}
