//! Accelerated pairs: insertion (with the RCVLOWAT kick), state, backpressure switch, drain
//! check and removal. See shared/design/ebpf-fastpath.md §2–§3 for the rules encoded here.

use std::{
    os::fd::{AsRawFd, RawFd},
    thread,
    time::{Duration, Instant},
};

use aya::maps::MapError;
use g6_common::{ConnState, MAP_BUDGET, MAP_CONNS, MAP_PEERS, MAP_SOCKS};

use super::{FastPath, FastPathError, sys};

/// `BPF_EXIST`: update only an existing element.
const BPF_EXIST: u64 = 2;

/// One accelerated pair, as returned by [`FastPath::insert_pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairKeys {
    /// `SO_COOKIE`s of the two sockets (the map keys).
    pub a: u64,
    pub b: u64,
    /// [`sys::bytes_sent`] of each socket at insertion: the base of the drain check.
    pub a_sent_base: u64,
    pub b_sent_base: u64,
}

impl PairKeys {
    /// The send-stream base of the socket with this cookie, if it belongs to the pair.
    pub fn sent_base(&self, cookie: u64) -> Option<u64> {
        if cookie == self.a {
            Some(self.a_sent_base)
        } else if cookie == self.b {
            Some(self.b_sent_base)
        } else {
            None
        }
    }
}

impl FastPath {
    /// Accelerates the pair: reads both `SO_COOKIE`s, inserts both `G6_CONNS` and `G6_PEERS`
    /// entries (each socket's peer is the other), then both sockets into `G6_SOCKS`, then
    /// `SO_RCVLOWAT=1` on both, which runs the verdict on bytes queued before insertion.
    ///
    /// The state entries go in first: a socket in the sockhash without them would pass data
    /// locally without a trace. If data arrives on `a` before `b` is in the sockhash, the
    /// redirect fails and that direction is passed locally from then on (`passed_bytes > 0`
    /// is sticky in the verdict), so the caller must always be ready to relay passed data.
    pub fn insert_pair(
        &self,
        a: &impl AsRawFd,
        b: &impl AsRawFd,
    ) -> Result<PairKeys, FastPathError> {
        self.insert_pair_inner(a.as_raw_fd(), b.as_raw_fd(), true)
    }

    /// [`Self::insert_pair`] without the SO_RCVLOWAT kick: only for tests that demonstrate
    /// sharp edge 1 (bytes queued before insertion stay stuck).
    #[doc(hidden)]
    pub fn insert_pair_unkicked(
        &self,
        a: &impl AsRawFd,
        b: &impl AsRawFd,
    ) -> Result<PairKeys, FastPathError> {
        self.insert_pair_inner(a.as_raw_fd(), b.as_raw_fd(), false)
    }

    fn insert_pair_inner(&self, a: RawFd, b: RawFd, kick: bool) -> Result<PairKeys, FastPathError> {
        let ca = sys::socket_cookie(a).map_err(FastPathError::socket("SO_COOKIE", a))?;
        let cb = sys::socket_cookie(b).map_err(FastPathError::socket("SO_COOKIE", b))?;
        let keys = PairKeys {
            a: ca,
            b: cb,
            a_sent_base: sys::bytes_sent(a).map_err(FastPathError::socket("TCP_INFO", a))?,
            b_sent_base: sys::bytes_sent(b).map_err(FastPathError::socket("TCP_INFO", b))?,
        };
        if let Err(e) = self.insert_entries(&keys, a, b) {
            self.remove_pair(keys);
            return Err(e);
        }
        if kick {
            for fd in [a, b] {
                if let Err(e) = sys::set_rcvlowat(fd, 1) {
                    // An error means "not accelerated": the caller has no keys to remove.
                    self.remove_pair(keys);
                    return Err(FastPathError::Socket {
                        op: "SO_RCVLOWAT",
                        fd,
                        err: e,
                    });
                }
            }
        }
        Ok(keys)
    }

    fn insert_entries(&self, k: &PairKeys, a: RawFd, b: RawFd) -> Result<(), FastPathError> {
        {
            let mut conns = self.conns_mut();
            for (key, pair) in [(k.a, k.b), (k.b, k.a)] {
                conns
                    .insert(key, ConnState::new(pair), 0)
                    .map_err(map_err(MAP_CONNS, "insert", key))?;
            }
        }
        {
            let mut peers = self.peers_mut();
            for (key, peer) in [(k.a, k.b), (k.b, k.a)] {
                peers
                    .insert(key, peer, 0)
                    .map_err(map_err(MAP_PEERS, "insert", key))?;
            }
        }
        let mut socks = self.socks();
        for (key, fd) in [(k.a, a), (k.b, b)] {
            socks
                .insert(key, fd, 0)
                .map_err(map_err(MAP_SOCKS, "insert", key))?;
        }
        Ok(())
    }

    /// The kernel's counters for a socket (`None` if not in a pair).
    pub fn state(&self, cookie: u64) -> Option<ConnState> {
        self.conns().get(&cookie, 0).ok()
    }

    /// Redirect target of `cookie`. `peer = 0` makes the verdict pass data locally, where it
    /// is charged to the socket's receive buffer, so TCP flow control works again (sharp
    /// edge 4). Once a byte has been passed locally the direction stays local: setting a peer
    /// again does not resume redirection (that would reorder data).
    pub fn set_peer(&self, cookie: u64, peer: u64) -> Result<(), FastPathError> {
        self.peers_mut()
            .insert(cookie, peer, BPF_EXIST)
            .map_err(map_err(MAP_PEERS, "update", cookie))
    }

    /// Caps the bytes `cookie` may have redirected in total; past it the verdict passes data
    /// locally (for good). The session driver keeps it at "arrived at the peer + high-water
    /// mark", so the kernel never holds more than the mark for a pair, even between looks.
    pub fn set_budget(&self, cookie: u64, total: u64) -> Result<(), FastPathError> {
        self.budget_mut()
            .insert(cookie, total, 0)
            .map_err(map_err(MAP_BUDGET, "update", cookie))
    }

    /// Deletes both sockets from `G6_SOCKS`, then their `G6_PEERS` and `G6_CONNS` entries.
    /// Deleting a live socket drops whatever sits in its psock queues: call this only after
    /// both directions reached EOF and drained, or on abort. Entries already gone (a closed
    /// socket leaves the sockhash by itself) are not an error.
    pub fn remove_pair(&self, keys: PairKeys) {
        let both = [keys.a, keys.b];
        {
            let mut socks = self.socks();
            for k in both {
                ignore_missing(MAP_SOCKS, k, socks.remove(&k));
            }
        }
        {
            let mut peers = self.peers_mut();
            for k in both {
                ignore_missing(MAP_PEERS, k, peers.remove(&k));
            }
        }
        {
            let mut budget = self.budget_mut();
            for k in both {
                ignore_missing(MAP_BUDGET, k, budget.remove(&k));
            }
        }
        let mut conns = self.conns_mut();
        for k in both {
            ignore_missing(MAP_CONNS, k, conns.remove(&k));
        }
    }

    /// Bytes redirected from `src` (a socket of `keys`) that have not yet entered the TCP send
    /// stream of `dst` (the other socket): they sit in dst's psock backlog, unbounded and
    /// uncharged. `user_sent`: bytes the agent itself wrote to `dst` since insertion.
    pub fn backlog(
        &self,
        keys: &PairKeys,
        src: u64,
        dst: &impl AsRawFd,
        user_sent: u64,
    ) -> Result<u64, FastPathError> {
        let dst = dst.as_raw_fd();
        let dst_base = if src == keys.a {
            keys.b_sent_base
        } else if src == keys.b {
            keys.a_sent_base
        } else {
            return Err(FastPathError::NotInPair(src));
        };
        let redirected = self.state(src).map_or(0, |s| s.redirected_bytes);
        let sent = sys::bytes_sent(dst).map_err(FastPathError::socket("TCP_INFO", dst))?;
        let arrived = sent.saturating_sub(dst_base).saturating_sub(user_sent);
        Ok(redirected.saturating_sub(arrived))
    }

    /// Non-blocking drain check: everything redirected from `src` is in dst's TCP send stream.
    /// Required before propagating a FIN to `dst` (sharp edge 3: `shutdown(SHUT_WR)` with data
    /// in the psock backlog loses it) and before relaying locally passed data in userspace.
    pub fn drained(
        &self,
        keys: &PairKeys,
        src: u64,
        dst: &impl AsRawFd,
        user_sent: u64,
    ) -> Result<bool, FastPathError> {
        Ok(self.backlog(keys, src, dst, user_sent)? == 0)
    }

    /// Blocking [`Self::drained`] poll (0.5 ms, backing off to 5 ms). For tests and blocking
    /// contexts; the async session driver polls [`Self::backlog`] from its timer instead.
    pub fn wait_drained(
        &self,
        keys: &PairKeys,
        src: u64,
        dst: &impl AsRawFd,
        user_sent: u64,
        timeout: Duration,
    ) -> Result<(), FastPathError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(500);
        loop {
            let backlog = self.backlog(keys, src, dst, user_sent)?;
            if backlog == 0 {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(FastPathError::DrainTimeout {
                    src,
                    dst: dst.as_raw_fd(),
                    backlog,
                    timeout,
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

fn map_err(
    map: &'static str,
    op: &'static str,
    key: u64,
) -> impl FnOnce(MapError) -> FastPathError {
    move |err| FastPathError::Map { map, op, key, err }
}

fn ignore_missing(map: &'static str, key: u64, r: Result<(), MapError>) {
    match r {
        Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => tracing::debug!("fastpath: {map} delete {key}: {e}"),
    }
}
