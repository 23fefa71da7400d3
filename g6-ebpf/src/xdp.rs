//! The XDP guard: drops connection requests (TCP SYN without ACK) to G6's listen addresses
//! from blocked sources and from sources no client pattern of the listener's rule allows,
//! before the kernel's TCP stack sees them. Everything else passes untouched: other
//! destinations, other protocols, segments of established connections (so sessions in flight
//! keep the settings they started with, as in user space), IPv4 fragments after the first,
//! IPv6 packets with extension headers, and anything truncated or malformed (the stack drops
//! those itself). The agent still filters every connection it accepts: this is an accelerator.
//!
//! The tables are compiled by the agent (`g6-user/src/guard/compile.rs`); the checks below
//! are their exact evaluation (mirrored by `CompiledPattern::matches` there).

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use g6_common::{
    XDP_LISTEN_UNFILTERED, XDP_MAX_BLOCKED, XDP_MAX_LISTENERS, XDP_MAX_PATTERNS, XDP_MAX_PORT_SETS,
    XDP_PAT_ANY_IP, XDP_PAT_V4, XDP_PAT_V6_EXACT, XDP_PATTERNS_PER_LISTENER, XDP_PORT_WORDS,
    XDP_PORTS_ANY, XDP_STAT_BLOCKED, XDP_STAT_NOT_ALLOWED, XDP_STATS, XdpListen4, XdpListen6,
    XdpListener, XdpPattern,
};

#[map]
static G6_XDP_LISTEN4: HashMap<XdpListen4, XdpListener> =
    HashMap::with_max_entries(XDP_MAX_LISTENERS, 0);
#[map]
static G6_XDP_LISTEN6: HashMap<XdpListen6, XdpListener> =
    HashMap::with_max_entries(XDP_MAX_LISTENERS, 0);
#[map]
static G6_XDP_PATTERNS: Array<XdpPattern> = Array::with_max_entries(XDP_MAX_PATTERNS, 0);
#[map]
static G6_XDP_PORTS: Array<u64> = Array::with_max_entries(XDP_MAX_PORT_SETS * XDP_PORT_WORDS, 0);
#[map]
static G6_XDP_BLOCK4: HashMap<[u8; 4], u64> =
    HashMap::with_max_entries(XDP_MAX_BLOCKED, BPF_F_NO_PREALLOC);
#[map]
static G6_XDP_BLOCK6: HashMap<[u8; 16], u64> =
    HashMap::with_max_entries(XDP_MAX_BLOCKED, BPF_F_NO_PREALLOC);
#[map]
static G6_XDP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XDP_STATS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[xdp]
pub fn g6_xdp_guard(ctx: XdpContext) -> u32 {
    let Some(eth) = read::<[u8; ETH_HLEN]>(&ctx, 0) else {
        return XDP_PASS;
    };
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IP => guard_v4(&ctx),
        ETH_P_IPV6 => guard_v6(&ctx),
        _ => XDP_PASS,
    }
}

/// A copy of the `T` at `off`, if the packet holds it entirely.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let start = ctx.data() + off;
    if start + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; unaligned read of plain bytes.
    Some(unsafe { core::ptr::read_unaligned(start as *const T) })
}

/// Source port, destination port and flags of the TCP header at `off`, if it is a SYN
/// without ACK (a connection request).
#[inline(always)]
fn syn_at(ctx: &XdpContext, off: usize) -> Option<(u16, u16)> {
    let tcp = read::<[u8; 14]>(ctx, off)?;
    if tcp[13] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    Some((
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    ))
}

#[inline(always)]
fn guard_v4(ctx: &XdpContext) -> u32 {
    let Some(ip) = read::<[u8; 20]>(ctx, ETH_HLEN) else {
        return XDP_PASS;
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_TCP || fragment_offset != 0 {
        return XDP_PASS;
    }
    let Some((sport, dport)) = syn_at(ctx, ETH_HLEN + ihl) else {
        return XDP_PASS;
    };
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let port = u32::from(dport);
    let listener = match G6_XDP_LISTEN4.get_ptr(XdpListen4 { addr: dst, port }) {
        Some(l) => l,
        None => match G6_XDP_LISTEN4.get_ptr(XdpListen4 { addr: 0, port }) {
            Some(l) => l,
            None => return XDP_PASS,
        },
    };
    // SAFETY: a live element; the agent replaces listener entries whole (12 bytes).
    let listener = unsafe { *listener };
    // SAFETY: u64 value read once.
    if is_blocked(unsafe { G6_XDP_BLOCK4.get(src) }.copied()) {
        return drop_for(XDP_STAT_BLOCKED);
    }
    verdict(
        &listener,
        |p| match p.kind {
            XDP_PAT_ANY_IP => true,
            XDP_PAT_V4 => {
                bit(&p.octets, 0, src[0])
                    && bit(&p.octets, 4, src[1])
                    && bit(&p.octets, 8, src[2])
                    && bit(&p.octets, 12, src[3])
            }
            _ => false,
        },
        sport,
    )
}

#[inline(always)]
fn guard_v6(ctx: &XdpContext) -> u32 {
    let Some(ip) = read::<[u8; 40]>(ctx, ETH_HLEN) else {
        return XDP_PASS;
    };
    // Extension headers (next header != TCP) pass: the agent still filters those clients.
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP {
        return XDP_PASS;
    }
    let Some((sport, dport)) = syn_at(ctx, ETH_HLEN + 40) else {
        return XDP_PASS;
    };
    // Constant indexes only: a runtime index would bring a bounds-check panic path, which
    // the verifier rejects.
    let w = |b: usize| u32::from_ne_bytes([ip[b], ip[b + 1], ip[b + 2], ip[b + 3]]);
    let src_words = [w(8), w(12), w(16), w(20)];
    let dst = [w(24), w(28), w(32), w(36)];
    let src = [
        ip[8], ip[9], ip[10], ip[11], ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18],
        ip[19], ip[20], ip[21], ip[22], ip[23],
    ];
    let port = u32::from(dport);
    let listener = match G6_XDP_LISTEN6.get_ptr(XdpListen6 { addr: dst, port }) {
        Some(l) => l,
        None => match G6_XDP_LISTEN6.get_ptr(XdpListen6 { addr: [0; 4], port }) {
            Some(l) => l,
            None => return XDP_PASS,
        },
    };
    // SAFETY: a live element; the agent replaces listener entries whole.
    let listener = unsafe { *listener };
    // SAFETY: u64 value read once.
    if is_blocked(unsafe { G6_XDP_BLOCK6.get(src) }.copied()) {
        return drop_for(XDP_STAT_BLOCKED);
    }
    verdict(
        &listener,
        |p| match p.kind {
            XDP_PAT_ANY_IP => true,
            XDP_PAT_V6_EXACT => p.v6 == src_words,
            _ => false,
        },
        sport,
    )
}

/// Blocked if listed with no deadline (0) or a deadline still ahead.
#[inline(always)]
fn is_blocked(deadline: Option<u64>) -> bool {
    match deadline {
        None => false,
        Some(0) => true,
        Some(d) => {
            // SAFETY: no side effects.
            let now = unsafe { bpf_ktime_get_ns() };
            now < d
        }
    }
}

/// Pass if the listener is unfiltered or one of its patterns allows the source.
#[inline(always)]
fn verdict(l: &XdpListener, ip_ok: impl Fn(&XdpPattern) -> bool, sport: u16) -> u32 {
    if l.flags & XDP_LISTEN_UNFILTERED != 0 {
        return XDP_PASS;
    }
    for i in 0..XDP_PATTERNS_PER_LISTENER {
        if i >= l.count {
            break;
        }
        let Some(p) = G6_XDP_PATTERNS.get(l.first.wrapping_add(i)) else {
            break;
        };
        if ip_ok(p) && port_ok(p.port_set, sport) {
            return XDP_PASS;
        }
    }
    drop_for(XDP_STAT_NOT_ALLOWED)
}

/// Bit `v` of the 256-bit set stored in `words[base .. base + 4]`.
#[inline(always)]
fn bit(words: &[u64; 16], base: usize, v: u8) -> bool {
    let w = words[(base + usize::from(v >> 6)) & 15];
    (w >> (v & 63)) & 1 == 1
}

#[inline(always)]
fn port_ok(set: u32, port: u16) -> bool {
    if set == XDP_PORTS_ANY {
        return true;
    }
    let index = set
        .wrapping_mul(XDP_PORT_WORDS)
        .wrapping_add(u32::from(port >> 6));
    match G6_XDP_PORTS.get(index) {
        Some(w) => (*w >> (port & 63)) & 1 == 1,
        None => false,
    }
}

#[inline(always)]
fn drop_for(stat: u32) -> u32 {
    if let Some(n) = G6_XDP_STATS.get_ptr_mut(stat) {
        // SAFETY: this CPU's slot; XDP runs with preemption disabled.
        unsafe { *n += 1 };
    }
    XDP_DROP
}
