//! Types shared by the eBPF programs (`g6-ebpf`) and the agent (`g6-user`).
//! `#[repr(C)]`, integers only, sizes asserted; `aya::Pod` only with the `user` feature.
#![no_std]

/// Capacity of the sockmap: sockets (two per accelerated pair). The hash maps use
/// `BPF_F_NO_PREALLOC`, so an idle agent does not pay for the capacity.
pub const MAX_SOCKETS: u32 = 65536;

/// Names of the objects in the eBPF ELF, shared so that a rename breaks the build, not start-up.
pub const PROG_VERDICT: &str = "g6_verdict";
pub const MAP_SOCKS: &str = "G6_SOCKS";
pub const MAP_PEERS: &str = "G6_PEERS";
pub const MAP_BUDGET: &str = "G6_BUDGET";
pub const MAP_CONNS: &str = "G6_CONNS";

/// Per-socket state in `G6_CONNS`, keyed by the socket's own `SO_COOKIE`.
///
/// The agent inserts it zeroed except `pair`; afterwards only the verdict program writes it.
/// The redirect target lives in a separate map (`G6_PEERS: cookie -> peer cookie`), because a
/// userspace update of a hash element replaces it and would lose the kernel's concurrent counter
/// increments (the FIN drain check depends on `redirected_bytes` being exact).
///
/// All times are `bpf_ktime_get_ns()` = `CLOCK_MONOTONIC` in ns; 0 = never.
/// "Data skb" = an skb with `len > 0` (the FIN's zero-length skb is only counted in `skbs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// Peer the last data skb was redirected to; 0 = it was passed to this socket locally.
    pub peer: u64,
    /// The other socket of the pair (fixed at insertion); used for turn/RT tracking.
    pub pair: u64,
    /// Bytes redirected to the peer. Incremented *before* the redirect, so a concurrent reader
    /// never sees fewer bytes than are on their way (it may briefly see more).
    pub redirected_bytes: u64,
    /// Bytes passed to this socket's own receive queue (no peer, or the redirect failed).
    /// Sticky: once non-zero, every later byte is passed too, so the agent's relay of the
    /// passed bytes cannot be overtaken by redirected ones.
    pub passed_bytes: u64,
    /// Every skb the verdict saw for this socket, FINs included.
    pub skbs: u64,
    /// Redirects refused by the kernel (peer not in the sockhash); those bytes were passed.
    pub redirect_fail: u64,
    /// First and last data skb.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Start of this socket's current turn: its first data skb after the other side sent.
    pub turn_ns: u64,
    /// Turns started on this socket.
    pub turns: u64,
    /// Response-time samples: `turn_ns(this) - turn_ns(pair)` when this socket starts a turn
    /// that answers the pair's turn. Meaningful on the server-facing socket (SPEC §6 RT).
    pub rt_last_ns: u64,
    pub rt_samples: u64,
    pub rt_sum_ns: u64,
    /// TCP sequence number just past the last byte the verdict handed on, with
    /// [`SEQ_KNOWN`] set once known. The kernel's `tcp_read_skb` hands the verdict whole
    /// skbs; a segment that overlaps bytes already received (a spurious retransmission
    /// coalesced with new data) arrives whole, so its stale prefix is trimmed against this.
    pub next_seq: u64,
    /// Bytes of such stale prefixes trimmed (already delivered once; not counted again).
    pub dup_bytes: u64,
    /// Stale prefixes the kernel refused to trim: those skbs were dropped and the session
    /// must be reset (it can no longer be delivered exactly).
    pub trim_fail: u64,
}

/// Flag in [`ConnState::next_seq`]: the low 32 bits hold a valid sequence number.
pub const SEQ_KNOWN: u64 = 1 << 32;

// Only u64 fields: no implicit padding; the kernel and the agent must agree on this size.
const _: () = assert!(core::mem::size_of::<ConnState>() == 16 * 8);
const _: () = assert!(core::mem::align_of::<ConnState>() == 8);

impl ConnState {
    /// The entry the agent inserts for a new pair.
    pub const fn new(pair: u64) -> Self {
        ConnState {
            peer: 0,
            pair,
            redirected_bytes: 0,
            passed_bytes: 0,
            skbs: 0,
            redirect_fail: 0,
            first_ns: 0,
            last_ns: 0,
            turn_ns: 0,
            turns: 0,
            rt_last_ns: 0,
            rt_samples: 0,
            rt_sum_ns: 0,
            next_seq: 0,
            dup_bytes: 0,
            trim_fail: 0,
        }
    }
}

// SAFETY: repr(C), integers only, no padding (asserted above); every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnState {}

// ---------------------------------------------------------------------------------------------
// XDP guard (g6-ebpf/src/xdp.rs, g6-user/src/guard/): drops connection requests (TCP SYN
// without ACK) to G6's listen addresses from blocked sources and from sources that no client
// pattern of the listener's rule allows. Patterns are compiled by the agent into exact tables.
// ---------------------------------------------------------------------------------------------

pub const PROG_XDP_GUARD: &str = "g6_xdp_guard";
/// `XdpListen4 -> XdpListener`: IPv4 listen addresses (`addr` 0 = 0.0.0.0).
pub const MAP_XDP_LISTEN4: &str = "G6_XDP_LISTEN4";
/// `XdpListen6 -> XdpListener`: IPv6 listen addresses (`addr` all zero = ::).
pub const MAP_XDP_LISTEN6: &str = "G6_XDP_LISTEN6";
/// Array of `XdpPattern`: the compiled client patterns, each listener owns a slice.
pub const MAP_XDP_PATTERNS: &str = "G6_XDP_PATTERNS";
/// Array of `u64`: source-port bitmaps, `XDP_PORT_WORDS` words per port set.
pub const MAP_XDP_PORTS: &str = "G6_XDP_PORTS";
/// `[u8; 4] -> u64` / `[u8; 16] -> u64`: blocked sources -> deadline in `bpf_ktime_get_ns`
/// (CLOCK_MONOTONIC) ns, 0 = until unblocked.
pub const MAP_XDP_BLOCK4: &str = "G6_XDP_BLOCK4";
pub const MAP_XDP_BLOCK6: &str = "G6_XDP_BLOCK6";
/// Per-CPU array of `u64` drop counters, indexed by `XDP_STAT_*`.
pub const MAP_XDP_STATS: &str = "G6_XDP_STATS";

pub const XDP_STAT_BLOCKED: u32 = 0;
pub const XDP_STAT_NOT_ALLOWED: u32 = 1;
pub const XDP_STATS: u32 = 2;

/// Listen addresses per family.
pub const XDP_MAX_LISTENERS: u32 = 1024;
/// Compiled patterns in total, and per listener (the program's loop bound).
pub const XDP_MAX_PATTERNS: u32 = 4096;
pub const XDP_PATTERNS_PER_LISTENER: u32 = 32;
/// Distinct source-port sets (a port set is a 65536-bit bitmap).
pub const XDP_MAX_PORT_SETS: u32 = 64;
pub const XDP_PORT_WORDS: u32 = 65536 / 64;
/// Blocked sources per family.
pub const XDP_MAX_BLOCKED: u32 = 65536;

/// `XdpListener::flags`: the rule's patterns could not be compiled exactly; the program passes
/// every source that is not blocked and the agent's own filter decides.
pub const XDP_LISTEN_UNFILTERED: u32 = 1;

/// `XdpPattern::kind`.
pub const XDP_PAT_V4: u32 = 1;
pub const XDP_PAT_V6_EXACT: u32 = 2;
pub const XDP_PAT_ANY_IP: u32 = 3;
/// `XdpPattern::port_set` meaning "every source port".
pub const XDP_PORTS_ANY: u32 = u32::MAX;

/// Key of `G6_XDP_LISTEN4`: the destination as it is in the packet (`addr` = the 4 address
/// bytes read as a native u32), `port` in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct XdpListen4 {
    pub addr: u32,
    pub port: u32,
}

/// Key of `G6_XDP_LISTEN6`: the 16 address bytes as 4 native u32, `port` in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct XdpListen6 {
    pub addr: [u32; 4],
    pub port: u32,
}

/// A listener's slice of `G6_XDP_PATTERNS`: a SYN is allowed if any of `count` patterns from
/// `first` matches (none: dropped, as the agent refuses everyone), unless `flags` says
/// `XDP_LISTEN_UNFILTERED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpListener {
    pub first: u32,
    pub count: u32,
    pub flags: u32,
}

/// One compiled client pattern (an exact equivalent of a part of a glob, see the compiler).
/// `XDP_PAT_V4`: `octets[4 * i .. 4 * i + 4]` is the 256-bit set of allowed values of octet i
/// (bit v of word v / 64). `XDP_PAT_V6_EXACT`: `v6` = the address bytes as native u32.
/// `XDP_PAT_ANY_IP`: any address. `port_set`: index into `G6_XDP_PORTS` or `XDP_PORTS_ANY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPattern {
    pub octets: [u64; 16],
    pub v6: [u32; 4],
    pub port_set: u32,
    pub kind: u32,
}

const _: () = assert!(core::mem::size_of::<XdpListen4>() == 8);
const _: () = assert!(core::mem::size_of::<XdpListen6>() == 20);
const _: () = assert!(core::mem::size_of::<XdpListener>() == 12);
const _: () = assert!(core::mem::size_of::<XdpPattern>() == 16 * 8 + 16 + 8);

// SAFETY: repr(C), integers only, no padding (sizes asserted above); every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpListen4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpListen6 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpListener {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpPattern {}
