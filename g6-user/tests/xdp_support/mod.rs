//! Helpers of tests/xdp.rs and tests/xdp_netns.rs: packet builders, network namespaces of
//! our own, a g6 inside them, bounded floods.
#![allow(dead_code)]

pub mod flood;
pub mod g6ns;
pub mod netns;
pub mod packet;

/// Root or the eBPF object missing: SKIP, or fail under `G6_EBPF_STRICT=1`.
pub fn skip_or_fail(why: &str) {
    if std::env::var("G6_EBPF_STRICT").is_ok_and(|v| v == "1") {
        panic!("G6_EBPF_STRICT=1 but: {why}");
    }
    eprintln!("SKIP: {why}");
}
