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
use g6_common::{ConnState, MAX_SOCKETS, SEQ_KNOWN};

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
    let raw_len = ctx.len();
    if raw_len == 0 {
        // The FIN's zero-length skb. Any queueing of it on a psock breaks that socket: the
        // backlog worker treats a 0-byte send/ingress as a hard error, sets EPIPE and stops
        // transmitting. Redirected, it kills the peer (sharp edge 2); passed while this
        // socket's own psock queue holds redirected data for it, it kills this socket's
        // transmit side and strands that data (measured: ~1-4 MB lost per 16 MiB). Dropping
        // it is safe: TCP has already set RCV_SHUTDOWN, so the agent still sees EOF
        // (EPOLLRDHUP, recv() == 0).
        return SK_DROP;
    }
    let len = match trim_stale_prefix(ctx, st, raw_len) {
        Some(len) => u64::from(len),
        None => return SK_DROP,
    };
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

/// Most 4095-byte steps `sk_skb_adjust_room` may take to cut a stale prefix (256 KiB).
const TRIM_STEPS: u32 = 64;
/// The most `sk_skb_adjust_room` removes from the front in one call.
const TRIM_STEP: u32 = 0xfff;

/// Cuts off the bytes of this skb that the verdict already handed on; returns the length
/// left, or `None` if nothing is left (or the cut failed: then `trim_fail` is counted and
/// the agent resets the session rather than deliver a byte twice).
///
/// Why: the kernel's `tcp_read_skb` hands the verdict whole skbs and ignores `copied_seq`.
/// When TCP queues a segment that partly overlaps bytes it already has (a spurious
/// retransmission coalesced with new data in the socket backlog while the socket was owned
/// by a reader), its stale prefix reaches the verdict a second time. Measured under load:
/// one 65483-byte segment delivered twice in about 3 of 60 back-pressured 128 MiB
/// sessions, with the socket's `tcpi_bytes_received` exact and the verdict's counters one
/// segment over. For skbs from `tcp_read_skb`, `cb[0..2]` (read-only for sk_skb) is
/// `TCP_SKB_CB(skb)->{seq, end_seq}`.
#[inline(always)]
fn trim_stale_prefix(ctx: &SkBuffContext, st: &mut ConnState, len: u32) -> Option<u32> {
    let cb = ctx.cb();
    let (seq, end) = (cb[0], cb[1]);
    // end_seq - seq = len, +1 with a FIN: anything else is not a TCP skb we understand.
    let span = end.wrapping_sub(seq);
    if span != len && span != len.wrapping_add(1) {
        return Some(len);
    }
    let next = seq.wrapping_add(len);
    if st.next_seq & SEQ_KNOWN == 0 {
        st.next_seq = SEQ_KNOWN | u64::from(next);
        return Some(len);
    }
    let known = st.next_seq as u32;
    let stale = known.wrapping_sub(seq) as i32;
    if stale <= 0 {
        st.next_seq = SEQ_KNOWN | u64::from(next);
        return Some(len);
    }
    let stale = (stale as u32).min(len);
    if !cut_front(ctx, stale) {
        st.trim_fail += 1;
        return None;
    }
    st.dup_bytes += u64::from(stale);
    if stale == len {
        return None;
    }
    st.next_seq = SEQ_KNOWN | u64::from(next);
    Some(len - stale)
}

/// Removes `n` bytes from the front of the skb's data (linearised once, then pulled).
#[inline(always)]
fn cut_front(ctx: &SkBuffContext, n: u32) -> bool {
    if n > TRIM_STEPS * TRIM_STEP || ctx.pull_data(n).is_err() {
        return false;
    }
    let mut left = n;
    for _ in 0..TRIM_STEPS {
        if left == 0 {
            break;
        }
        let step = if left < TRIM_STEP { left } else { TRIM_STEP };
        if ctx.adjust_room(-(step as i32), 0, 0).is_err() {
            return false;
        }
        left -= step;
    }
    left == 0
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
