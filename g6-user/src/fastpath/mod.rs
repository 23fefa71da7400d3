//! The optional sockmap fast path (SPEC §5.6 `sockmap`): an `sk_skb/stream_verdict` program on
//! a SOCKHASH splices an accepted client socket to its backend socket inside the kernel.
//!
//! Design and measurements: shared/design/ebpf-fastpath.md. The rules a session driver must
//! follow (each one encoded or helped here):
//! 1. [`FastPath::insert_pair`] kicks with `SO_RCVLOWAT` so bytes queued before insertion move.
//! 2. The verdict never queues the FIN's zero-length skb on a psock (it drops it; TCP has set
//!    RCV_SHUTDOWN already): EOF shows as EPOLLRDHUP and a non-blocking `recv() == 0`. A
//!    *blocking* reader woken by the FIN may get one spurious EAGAIN.
//! 3. Before propagating a FIN to the other socket, wait for [`FastPath::drained`].
//! 4. There is no kernel backpressure: poll [`FastPath::backlog`]; over a high-water mark call
//!    [`FastPath::set_peer`]`(src, 0)`, wait until drained, then relay that direction in
//!    userspace (locally passed bytes are readable from the source socket, in order). Passing
//!    is sticky: the kernel never redirects that direction again. An EOF on such a socket is
//!    final only once the agent has read `state(src).passed_bytes` bytes from it (passed skbs
//!    can still be on their way into the socket when the FIN is seen).
//! 5. [`FastPath::remove_pair`] only after both directions ended and drained, or on abort.
//! 6. The kernel's `tcp_read_skb` hands the verdict whole skbs, so a segment overlapping
//!    bytes already received (a spurious retransmission coalesced with new data) would be
//!    delivered twice; the verdict cuts the stale prefix by TCP sequence number
//!    (`ConnState::next_seq`, `dup_bytes`). If the kernel refuses the cut, the skb is dropped
//!    and `trim_fail` counts it: the session must be reset.
//!
//! Start-up calls [`probe`]; any error means "sockmap unavailable, reason ...".

mod error;
mod loader;
mod pairs;
mod selftest;
pub mod sys;

pub use error::FastPathError;
pub use g6_common::ConnState;
pub use loader::FastPath;
pub use pairs::PairKeys;
pub use sys::{TcpInfoLite, bytes_sent, outq, set_rcvlowat, socket_cookie, tcp_info};

/// The eBPF object built by `build.rs`; empty when the agent was built without it.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/g6"));

/// Whether this binary carries the eBPF object (the build degrades to an empty one when the
/// eBPF toolchain is missing, unless `G6_EBPF_STRICT=1`).
pub fn object_embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// Loads the embedded object (every map of it is created). Without the kernel's BTF: no
/// program of ours needs CO-RE relocations, and parsing `/sys/kernel/btf/vmlinux` costs
/// about 17 MB of heap in every process that loads (measured RSS after start: 20 MB against
/// 3 MB), which the allocator keeps after the parse is dropped.
pub fn load_object() -> Result<aya::Ebpf, aya::EbpfError> {
    let loaded = aya::EbpfLoader::new().btf(None).load(EBPF_OBJECT);
    release_free_heap();
    loaded
}

/// Returns freed heap to the kernel (glibc keeps it otherwise: RSS after start).
pub fn release_free_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

// The session driver shares one FastPath between relay threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<FastPath>();
};

/// Load, attach and self-test: what start-up calls to decide whether `sockmap` is available.
pub fn probe() -> Result<FastPath, FastPathError> {
    let fp = FastPath::load()?;
    fp.self_test()?;
    Ok(fp)
}
