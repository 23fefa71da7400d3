//! Parked sessions (LIFECYCLE.md PARKED): a relay that moved nothing for `PARK_AFTER` with
//! both pumps at rest gives its sockets back to the kernel's care. They leave tokio's reactor
//! (its per-socket state and the relay's future are freed) and wait in one epoll set per relay
//! thread, level-triggered and one-shot: bytes, a FIN or a reset on either socket — also ones
//! that arrived during the hand-over — wake the session, which relays again.
//!
//! A parked session costs its task, its `show sessions` entry and a slot here; the idle
//! timeout runs on as in the relay (`relay::idle_expired`, same cadence and TCP progress).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::relay::{self, CloseReason, Traffic};
use crate::runtime::lock;

/// Events taken from the epoll set per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;

/// How often the driver looks whether to give freed heap back, and after how many parks.
const TRIM_TICK: Duration = Duration::from_secs(1);
const TRIM_AFTER_PARKS: usize = 128;

/// One parked session: woken once `fired`.
#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    fired: bool,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Sessions parked now.
    parked: usize,
    /// Sessions parked since the driver last gave freed heap back.
    parked_since_trim: usize,
}

impl Slots {
    fn take(&mut self) -> usize {
        self.parked += 1;
        self.parked_since_trim += 1;
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        }
    }

    fn give(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Slot::default();
            self.free.push(i);
            self.parked -= 1;
        }
    }

    fn fire(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.fired = true;
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }
}

/// A relay thread's epoll set of parked sockets and the sessions waiting on them.
struct Parker {
    epoll: AsyncFd<OwnedFd>,
    slots: Mutex<Slots>,
}

thread_local! {
    /// This thread's parker while its driver task or a parked session holds it.
    static PARKER: RefCell<Weak<Parker>> = const { RefCell::new(Weak::new()) };
}

impl Parker {
    /// This relay thread's parker; the first park creates it and spawns its driver.
    fn of_this_thread() -> io::Result<Arc<Parker>> {
        PARKER.with(|cell| {
            if let Some(p) = cell.borrow().upgrade() {
                return Ok(p);
            }
            // SAFETY: epoll_create1 has no memory arguments; the result is checked.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: an OwnedFd's descriptor stays open, the same, until the AsyncFd drops it.
            let epoll = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)?;
            let parker = Arc::new(Parker {
                epoll,
                slots: Mutex::new(Slots::default()),
            });
            drop(tokio::spawn(drive(parker.clone())));
            *cell.borrow_mut() = Arc::downgrade(&parker);
            Ok(parker)
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, slot: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: slot as u64,
        };
        // SAFETY: `ev` outlives the call; a bad fd is reported as an error.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Makes the next park on this thread create a new parker (when the driver ends).
struct Retire<'a>(&'a Arc<Parker>);

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        let _ = PARKER.try_with(|cell| {
            let mut cell = cell.borrow_mut();
            if std::ptr::eq(cell.as_ptr(), Arc::as_ptr(self.0)) {
                *cell = Weak::new();
            }
        });
    }
}

/// Wakes the sessions whose sockets became readable (or hung up). Ends, closing the epoll
/// set, once no session was parked for a whole tick (the next park makes a new one): an idle
/// agent holds no descriptor more than before. Runs on the relay thread that made it, a
/// current-thread runtime, so no park can come between its last look and its end.
async fn drive(parker: Arc<Parker>) {
    let _retire = Retire(&parker);
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    let mut tick = tokio::time::interval(TRIM_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_empty = false;
    loop {
        let readable = tokio::select! {
            r = parker.epoll.readable() => r,
            _ = tick.tick() => {
                trim_if_many_parked(&parker);
                let empty = lock(&parker.slots).parked == 0;
                if empty && was_empty {
                    return;
                }
                was_empty = empty;
                continue;
            }
        };
        let mut ready = match readable {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("park: epoll set unusable: {e}");
                return;
            }
        };
        let fd = parker.epoll.as_raw_fd();
        // SAFETY: the kernel writes at most EVENTS_PER_WAIT entries into `events`.
        let n = unsafe { libc::epoll_wait(fd, events.as_mut_ptr(), EVENTS_PER_WAIT as i32, 0) };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!("park: epoll_wait: {e}");
                return;
            }
            continue;
        };
        if n < EVENTS_PER_WAIT {
            ready.clear_ready();
        }
        let mut slots = lock(&parker.slots);
        for ev in &events[..n] {
            slots.fire(ev.u64 as usize);
        }
    }
}

/// A park frees the relay's future and tokio's state of both sockets, but between the
/// allocations of live sessions: glibc keeps those pages until a trim. Measured: 2 000
/// sessions opened at once, then parked, kept 3.8 kB of RSS each without, 2.7 kB with.
fn trim_if_many_parked(parker: &Parker) {
    let mut slots = lock(&parker.slots);
    if slots.parked_since_trim >= TRIM_AFTER_PARKS {
        slots.parked_since_trim = 0;
        drop(slots);
        crate::fastpath::release_free_heap();
    }
}

/// A session's two sockets in the parker's epoll set; dropping it takes them out.
struct Registration {
    parker: Arc<Parker>,
    slot: usize,
    fds: [RawFd; 2],
}

impl Registration {
    fn new(fds: [RawFd; 2]) -> io::Result<Registration> {
        let parker = Parker::of_this_thread()?;
        let slot = lock(&parker.slots).take();
        let reg = Registration { parker, slot, fds };
        for fd in fds {
            reg.parker.ctl(libc::EPOLL_CTL_ADD, fd, slot)?;
        }
        Ok(reg)
    }

    fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = lock(&self.parker.slots);
        match slots.slots.get_mut(self.slot) {
            Some(slot) if !slot.fired => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for fd in self.fds {
            // ENOENT when its ADD failed: nothing to take out.
            let _ = self.parker.ctl(libc::EPOLL_CTL_DEL, fd, self.slot);
        }
        lock(&self.parker.slots).give(self.slot);
    }
}

/// What ends a park.
pub enum Resumed {
    /// Bytes, a FIN or a reset came: relay again.
    Relay(TcpStream, TcpStream),
    Closed(CloseReason),
}

/// The sockets of a parked session, out of tokio's reactor and in the parker's epoll set.
struct Parked {
    // Dropped first: out of the epoll set before the sockets close.
    reg: Registration,
    client: StdTcpStream,
    server: StdTcpStream,
}

/// Hands a session's sockets from tokio's reactor to the parker. `Err`: the session could
/// not park (relay again) or ended.
fn hand_over(client: TcpStream, server: TcpStream, peer: SocketAddr) -> Result<Parked, Resumed> {
    let client = match client.into_std() {
        Ok(c) => c,
        Err(e) => return Err(failed("park: client socket", e, &server)),
    };
    let server = match server.into_std() {
        Ok(s) => s,
        Err(e) => return Err(failed("park: server socket", e, &client)),
    };
    match Registration::new([client.as_raw_fd(), server.as_raw_fd()]) {
        Ok(reg) => {
            tracing::debug!("relay: parked client={peer}");
            Ok(Parked {
                reg,
                client,
                server,
            })
        }
        Err(e) => {
            // The relay goes on (and tries to park again later).
            tracing::debug!("park: cannot park client={peer}: {e}");
            Err(resume(client, server))
        }
    }
}

/// Parks a session whose relay returned `Parked` (the sockets leave tokio's reactor at once)
/// until either socket has something to read or report, or the idle timeout (`idle`, zero =
/// none) expires.
pub fn park<'a>(
    client: TcpStream,
    server: TcpStream,
    peer: SocketAddr,
    traffic: &'a Traffic,
    idle: Duration,
    tcp_seen: &'a AtomicU64,
) -> Parking<'a> {
    let state = match hand_over(client, server, peer) {
        Ok(p) => State::Parked(p),
        Err(now) => State::Ended(now),
    };
    Parking {
        state,
        peer,
        traffic,
        idle,
        tcp_seen,
        timer: None,
    }
}

/// A parked session's wait. Written by hand, not `async`: it is most of what a parked
/// session holds (an `async` block took twice the room).
pub struct Parking<'a> {
    state: State,
    peer: SocketAddr,
    traffic: &'a Traffic,
    idle: Duration,
    tcp_seen: &'a AtomicU64,
    /// The idle timer's next look (`relay::idle_next_look`); made at the first poll.
    timer: Option<Pin<Box<Sleep>>>,
}

enum State {
    Parked(Parked),
    Ended(Resumed),
    Done,
}

impl Future for Parking<'_> {
    type Output = Resumed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resumed> {
        let this = self.get_mut();
        let p = match &this.state {
            State::Parked(p) => p,
            State::Ended(_) => match std::mem::replace(&mut this.state, State::Done) {
                State::Ended(now) => return Poll::Ready(now),
                _ => return Poll::Pending,
            },
            // Polled after completion.
            State::Done => return Poll::Pending,
        };
        if p.reg.poll_fired(cx).is_ready() {
            tracing::debug!("relay: woken client={}", this.peer);
            return match this.leave() {
                Some((client, server)) => Poll::Ready(resume(client, server)),
                None => Poll::Pending,
            };
        }
        if this.idle.is_zero() {
            return Poll::Pending;
        }
        loop {
            let waited = match &mut this.timer {
                Some(t) => {
                    if t.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    true
                }
                None => false,
            };
            let (traffic, idle, seen) = (this.traffic, this.idle, this.tcp_seen);
            let next = relay::idle_next_look(traffic, idle, &p.client, &p.server, seen, waited);
            let Some(at) = next else {
                if let Some((client, server)) = this.leave() {
                    relay::close_idle(&client, &server);
                }
                return Poll::Ready(Resumed::Closed(CloseReason::IdleTimeout));
            };
            match &mut this.timer {
                Some(t) => t.as_mut().reset(at.into()),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(at.into()))),
            }
        }
    }
}

impl Parking<'_> {
    /// Out of the epoll set: the sockets are the caller's again (None: not parked).
    fn leave(&mut self) -> Option<(StdTcpStream, StdTcpStream)> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Parked(Parked {
                reg,
                client,
                server,
            }) => {
                drop(reg);
                Some((client, server))
            }
            _ => None,
        }
    }
}

/// How a new session's wait for its first bytes ended.
pub enum FirstBytes {
    /// Bytes, a FIN or a reset on either socket: relay.
    Came,
    /// Nothing for `relay::PARK_AFTER`: park.
    Park,
    /// The idle timeout expired (sockets not closed yet).
    Idle,
}

/// A new session is at rest until its first bytes come: it waits here, in a small future
/// freed at once, rather than in the relay (about 1.4 kB), so sessions that stay silent
/// never make one (or the holes it leaves between parked sessions' memory). Same rules as
/// the relay: the idle timer (`carry`'s TCP progress) and `PARK_AFTER` without a byte.
pub async fn first_bytes(
    client: &TcpStream,
    server: &TcpStream,
    traffic: &Traffic,
    idle: Duration,
    tcp_seen: &AtomicU64,
) -> FirstBytes {
    let expired = async {
        if idle.is_zero() {
            std::future::pending().await
        } else {
            relay::idle_expired(traffic, idle, client, server, tcp_seen).await
        }
    };
    let park_due = Instant::now() + relay::PARK_AFTER.saturating_sub(traffic.idle_for());
    tokio::select! {
        biased;
        _ = client.readable() => FirstBytes::Came,
        _ = server.readable() => FirstBytes::Came,
        _ = expired => FirstBytes::Idle,
        _ = tokio::time::sleep_until(park_due.into()) => FirstBytes::Park,
    }
}

/// Back into tokio's reactor.
fn resume(client: StdTcpStream, server: StdTcpStream) -> Resumed {
    let client = match TcpStream::from_std(client) {
        Ok(c) => c,
        Err(e) => return failed("unpark: client socket", e, &server),
    };
    match TcpStream::from_std(server) {
        Ok(server) => Resumed::Relay(client, server),
        Err(e) => failed("unpark: server socket", e, &client),
    }
}

/// A socket could not change hands (and is closed): reset the other one, end the session.
fn failed(what: &str, e: io::Error, other: &impl std::os::fd::AsFd) -> Resumed {
    tracing::error!("{what}: {e}");
    relay::reset(other);
    Resumed::Closed(CloseReason::Error)
}
