//! G6 eBPF programs: one `sk_skb/stream_verdict` on a SOCKHASH that splices accepted client
//! sockets to their backend sockets (see shared/design/ebpf-fastpath.md §2–§3).
//! No stream parser and no sk_msg: the verdict-only path needs neither.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{map, stream_verdict},
    maps::{HashMap, SockHash},
    programs::SkBuffContext,
};
use g6_common::{ConnState, MAX_SOCKETS};

/// The XDP guard (its own maps and program).
mod xdp;

/// Accelerated sockets, keyed by their own `SO_COOKIE`.
#[map]
static G6_SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKETS, 0);

/// Control: cookie -> peer cookie to redirect to (0 = pass locally). Written by the agent only.
#[map]
static G6_PEERS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Control: cookie -> most bytes this socket may have redirected in total (no entry = no
/// limit). Written by the agent only. A skb that would go past it is passed locally instead
/// (and, passing being sticky, so is everything after it): the kernel itself bounds what a
/// pair can pile up in a psock backlog, however late the agent looks (sharp edge 4).
#[map]
static G6_BUDGET: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Counters: cookie -> ConnState. Inserted by the agent, then written by this program only.
#[map]
static G6_CONNS: HashMap<u64, ConnState> =
    HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

#[stream_verdict]
pub fn g6_verdict(ctx: SkBuffContext) -> u32 {
    try_verdict(&ctx)
}

/// Data skbs always get SK_PASS: after a successful `redirect_skb` the kernel sees the redirect
/// mark; otherwise the skb is delivered to the socket itself and the agent relays it.
#[inline(always)]
fn try_verdict(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the verifier accepts bpf_get_socket_cookie(skb) in sk_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(st) = G6_CONNS.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    // SAFETY: a live element (BPF_F_NO_PREALLOC: freed only after RCU); the verdict for one
    // socket runs under that socket's lock, so this program is its only concurrent writer.
    let st = unsafe { &mut *st };
    st.skbs += 1;
    let len = u64::from(ctx.len());
    if len == 0 {
        // The FIN's zero-length skb. Any queueing of it on a psock breaks that socket: the
        // backlog worker treats a 0-byte send/ingress as a hard error, sets EPIPE and stops
        // transmitting. Redirected, it kills the peer (sharp edge 2); passed while this
        // socket's own psock queue holds redirected data for it, it kills this socket's
        // transmit side and strands that data (measured: ~1-4 MB lost per 16 MiB). Dropping
        // it is safe: TCP has already set RCV_SHUTDOWN, so the agent still sees EOF
        // (EPOLLRDHUP, recv() == 0).
        return SK_DROP;
    }
    // SAFETY: no side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    track_turn(st, now);

    // SAFETY: u64 value, read once; the agent replaces (never mutates) elements.
    let mut peer = unsafe { G6_PEERS.get(cookie) }.copied().unwrap_or(0);
    // Once a byte was passed locally, the agent relays this direction: redirecting later bytes
    // could overtake the passed ones, so passing is sticky.
    if peer != 0 && st.passed_bytes == 0 && within_budget(cookie, st.redirected_bytes + len) {
        // Count first: a concurrent drain check must never see fewer bytes than are in flight.
        st.redirected_bytes += len;
        if G6_SOCKS.redirect_skb(ctx, &mut peer, 0) == i64::from(SK_PASS) {
            st.peer = peer;
            return SK_PASS;
        }
        // Peer not (or no longer) in the sockhash: deliver locally instead.
        st.redirected_bytes -= len;
        st.redirect_fail += 1;
    }
    st.peer = 0;
    st.passed_bytes += len;
    SK_PASS
}

#[inline(always)]
fn within_budget(cookie: u64, total: u64) -> bool {
    // SAFETY: u64 value, read once; the agent replaces (never mutates) elements.
    match unsafe { G6_BUDGET.get(cookie) } {
        Some(budget) => total <= *budget,
        None => true,
    }
}

/// Turn and response-time bookkeeping (SPEC §6 "RT sample"), cheap enough for every data skb.
#[inline(always)]
fn track_turn(st: &mut ConnState, now: u64) {
    let (pair_last, pair_turn) = match G6_CONNS.get_ptr(st.pair) {
        // SAFETY: live element; a racing write by the pair's verdict only skews one sample.
        Some(p) => unsafe { ((*p).last_ns, (*p).turn_ns) },
        None => (0, 0),
    };
    if st.last_ns == 0 || pair_last > st.last_ns {
        // The other side sent since we last did: this skb starts a new turn of ours...
        if pair_turn != 0 && pair_turn > st.last_ns && now >= pair_turn {
            // ...answering the pair's current turn.
            let rt = now - pair_turn;
            st.rt_last_ns = rt;
            st.rt_samples += 1;
            st.rt_sum_ns += rt;
        }
        st.turn_ns = now;
        st.turns += 1;
    }
    if st.first_ns == 0 {
        st.first_ns = now;
    }
    st.last_ns = now;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
