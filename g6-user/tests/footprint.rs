//! Memory after start (issue #6: RSS after start ≤ 10 MB): the monitor and its worker
//! together, with everything that loads at start-up on — the XDP guard and the sockmap fast
//! path. The kernel's BTF, once parsed at load time and kept by the allocator in both
//! processes, took this from 7 MB to 41 MB unnoticed; `cargo xtask bench` measures the same.

mod e2e;
mod support;

use support::netns::NetNs;
use support::*;

const LIMIT_KB: u64 = 10 * 1000;

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in status")
}

#[test]
fn monitor_and_worker_stay_under_10_mb_after_start() {
    // A namespace of its own: the guard attaches to its loopback, not the one other tests
    // share.
    let ns = NetNs::new("fp");
    let listen = ns.run(|| PreBound::tcp("127.0.0.1:0"));
    let conf = format!("r1 RR *:* - {} > 127.0.0.1:9 ;\n", listen.addr());
    let g6 = G6Proc::start_in_netns(
        ns.name(),
        &conf,
        &[&listen],
        &["--data-path", "sockmap", "--xdp", "generic", "-t", "1"],
    );
    let log = g6.log_contents();
    assert!(
        log.contains("xdp guard: generic mode on lo") && log.contains("data path sockmap"),
        "the guard and the fast path must be loaded: {}",
        g6.diagnostics()
    );
    let pids = g6.pids();
    assert_eq!(pids.len(), 2, "monitor and worker: {pids:?}");
    let total: u64 = pids.iter().map(|&p| rss_kb(p)).sum();
    assert!(
        total <= LIMIT_KB,
        "RSS after start {total} kB (monitor and worker {pids:?}) > {LIMIT_KB} kB"
    );
}
