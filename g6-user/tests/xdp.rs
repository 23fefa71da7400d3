//! The XDP guard's program on the real kernel, through BPF_PROG_TEST_RUN (needs root and the
//! embedded eBPF object; without them the tests print SKIP and pass, unless
//! `G6_EBPF_STRICT=1`): golden packets for every verdict, and the kernel never dropping a SYN
//! the agent's own client filter would admit. End to end: tests/xdp_netns.rs.

mod support;
mod xdp_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;

use g6::config;
use g6::guard::{AttachMode, Guard, GuardError, blocklist::mono_ns};

use xdp_support::packet::{self, Tcp};
use xdp_support::skip_or_fail;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// One golden test at a time (each loads its own program; serialising keeps load time bounded).
static SERIAL: Mutex<()> = Mutex::new(());

/// A loaded (never attached) guard with the tables of `conf`.
fn guard(conf: &str) -> Option<Guard> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("not root (the XDP guard needs CAP_BPF + CAP_NET_ADMIN)");
        return None;
    }
    let mut g = match Guard::load(AttachMode::Generic) {
        Ok(g) => g,
        Err(e @ GuardError::NoObject) => {
            skip_or_fail(&e.to_string());
            return None;
        }
        Err(e) => panic!("Guard::load as root: {e}"),
    };
    let cfg = config::parse("xdp.conf", conf.as_bytes()).expect("test config");
    g.set_tables(&cfg).expect("tables");
    Some(g)
}

fn counters(g: &Guard) -> (u64, u64) {
    g.state().stats.read()
}

fn run(g: &Guard, pkt: &[u8]) -> u32 {
    g.test_run(pkt)
        .unwrap_or_else(|e| panic!("test run of {} bytes: {e}", pkt.len()))
}

fn v4(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const CONF: &str = "\
admin G 127.0.0.1:* - 127.0.0.1:8600 ;\n\
web RR 198.18.0.2:* 198.18.1.*:1* [2001:db8::2]:* - 198.18.0.1:80 [2001:db8::1]:80 > 127.0.0.1:9 ;\n\
any RR 198.18.0.2:* - 0.0.0.0:81 > 127.0.0.1:9 ;\n\
wild RR 198.18.0.2:* [fe80::*]:* - [::]:82 > 127.0.0.1:9 ;\n\
nobody RR - 198.18.0.1:83 > 127.0.0.1:9 ;\n\
v6any RR [2001:db8::2]:* - [::]:85 > 127.0.0.1:9 ;\n";

#[test]
fn ipv4_verdicts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = guard(CONF) else { return };
    let syn = |src: &str, dst: &str| packet::v4(v4(src), v4(dst), Tcp::Syn);
    let (b0, n0) = counters(&g);
    // Allowed by pattern (exact, octet glob + port glob), to a specific and a wildcard listener.
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "198.18.0.1:80")), XDP_PASS);
    assert_eq!(run(&g, &syn("198.18.1.77:1999", "198.18.0.1:80")), XDP_PASS);
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "10.9.9.9:81")), XDP_PASS);
    assert_eq!(counters(&g), (b0, n0), "passes are not counted");
    // Not allowed: wrong address, wrong source port, wildcard listener, rule without patterns.
    assert_eq!(run(&g, &syn("198.18.0.3:4000", "198.18.0.1:80")), XDP_DROP);
    assert_eq!(run(&g, &syn("198.18.1.77:2999", "198.18.0.1:80")), XDP_DROP);
    assert_eq!(run(&g, &syn("198.18.0.3:4000", "10.9.9.9:81")), XDP_DROP);
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "198.18.0.1:83")), XDP_DROP);
    assert_eq!(counters(&g), (b0, n0 + 4));
    // Not a listen address / port: untouched, whoever sends it.
    assert_eq!(run(&g, &syn("198.18.0.3:4000", "198.18.0.1:84")), XDP_PASS);
    assert_eq!(run(&g, &syn("198.18.0.3:4000", "198.18.0.9:80")), XDP_PASS);
    // Only connection requests are checked: ACK, SYN+ACK, RST, FIN pass.
    for flags in [Tcp::Ack, Tcp::SynAck, Tcp::Rst, Tcp::FinAck] {
        let p = packet::v4(v4("198.18.0.3:4000"), v4("198.18.0.1:80"), flags);
        assert_eq!(run(&g, &p), XDP_PASS, "{flags:?}");
    }
    // Blocked: dropped even though the pattern allows it; counted as blocked.
    let blocked: IpAddr = "198.18.0.2".parse().unwrap();
    g.state().blocks.set(blocked, 0);
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "198.18.0.1:80")), XDP_DROP);
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "198.18.0.9:80")), XDP_PASS);
    assert_eq!(counters(&g), (b0 + 1, n0 + 4));
    // Timed: a deadline ahead blocks, one passed does not (the kernel expires it itself).
    g.state().blocks.set(blocked, mono_ns() + 60_000_000_000);
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "198.18.0.1:80")), XDP_DROP);
    g.state().blocks.set(blocked, mono_ns() - 1);
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "198.18.0.1:80")), XDP_PASS);
    g.state().blocks.remove(blocked);
    assert_eq!(run(&g, &syn("198.18.0.2:4000", "198.18.0.1:80")), XDP_PASS);
    assert_eq!(counters(&g), (b0 + 2, n0 + 4));
}

#[test]
fn ipv6_verdicts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = guard(CONF) else { return };
    let addr = |ip: &str, port| SocketAddr::new(ip.parse().unwrap(), port);
    let syn = |src: SocketAddr, dst: SocketAddr| packet::v6(src, dst, Tcp::Syn, None);
    let listen = addr("2001:db8::1", 80);
    let (b0, n0) = counters(&g);
    assert_eq!(run(&g, &syn(addr("2001:db8::2", 5), listen)), XDP_PASS);
    assert_eq!(run(&g, &syn(addr("2001:db8::3", 5), listen)), XDP_DROP);
    assert_eq!(counters(&g), (b0, n0 + 1));
    // The wildcard listener [::]:85 takes any destination address.
    assert_eq!(
        run(&g, &syn(addr("2001:db8::2", 5), addr("::1", 85))),
        XDP_PASS
    );
    assert_eq!(
        run(&g, &syn(addr("2001:db8::3", 5), addr("::1", 85))),
        XDP_DROP
    );
    assert_eq!(counters(&g), (b0, n0 + 2));
    // [::]:82 has an IPv6 wildcard pattern: not compilable, so every source passes.
    assert_eq!(
        run(&g, &syn(addr("2001:db8::3", 5), addr("::1", 82))),
        XDP_PASS
    );
    // Other port, non-SYN: untouched.
    assert_eq!(
        run(&g, &syn(addr("2001:db8::3", 5), addr("2001:db8::1", 81))),
        XDP_PASS
    );
    let ack = packet::v6(addr("2001:db8::3", 5), listen, Tcp::Ack, None);
    assert_eq!(run(&g, &ack), XDP_PASS);
    // Extension headers are not walked: such packets pass (the agent still filters).
    let hbh = packet::v6(addr("2001:db8::3", 5), listen, Tcp::Syn, Some(0));
    assert_eq!(run(&g, &hbh), XDP_PASS);
    // Blocked IPv6 source, also on the unfiltered listener.
    let ip: IpAddr = "2001:db8::2".parse().unwrap();
    g.state().blocks.set(ip, 0);
    assert_eq!(run(&g, &syn(addr("2001:db8::2", 5), listen)), XDP_DROP);
    assert_eq!(
        run(&g, &syn(addr("2001:db8::2", 5), addr("::1", 82))),
        XDP_DROP
    );
    assert_eq!(counters(&g), (b0 + 2, n0 + 2));
    g.state().blocks.remove(ip);
}

#[test]
fn malformed_and_other_traffic_passes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = guard(CONF) else { return };
    let (src, dst) = (v4("198.18.0.3:4000"), v4("198.18.0.1:80"));
    let good = packet::v4(src, dst, Tcp::Syn);
    assert_eq!(run(&g, &good), XDP_DROP, "the reference packet is dropped");
    let before = counters(&g);
    // Every truncation of it (down to the Ethernet header, the least test-run accepts).
    for len in 14..good.len() {
        if len >= 14 + 20 + 14 {
            continue; // source/destination ports and flags are all there: still a SYN
        }
        assert_eq!(run(&g, &good[..len]), XDP_PASS, "truncated to {len}");
    }
    let mut p = good.clone();
    p[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    assert_eq!(run(&g, &p), XDP_PASS, "not IP");
    let mut p = good.clone();
    p[14 + 9] = 17; // UDP
    assert_eq!(run(&g, &p), XDP_PASS, "not TCP");
    let mut p = good.clone();
    p[14] = 0x65; // version 6 in an IPv4 frame
    assert_eq!(run(&g, &p), XDP_PASS, "bad version");
    let mut p = good.clone();
    p[14] = 0x44; // IHL 4 (< 20 bytes)
    assert_eq!(run(&g, &p), XDP_PASS, "bad IHL");
    let mut p = good.clone();
    p[14] = 0x4f; // IHL 15: the TCP header would start past the end
    assert_eq!(run(&g, &p), XDP_PASS, "IHL past the end");
    let mut p = good.clone();
    p[14 + 6..14 + 8].copy_from_slice(&0x0001u16.to_be_bytes()); // fragment offset 8
    assert_eq!(run(&g, &p), XDP_PASS, "later fragment");
    assert_eq!(counters(&g), before, "nothing above was dropped or counted");
    // IPv4 options (IHL 6) are skipped correctly: still a dropped SYN.
    let opt = packet::v4_with_options(src, dst, Tcp::Syn);
    assert_eq!(run(&g, &opt), XDP_DROP, "IHL 6");
}

/// The property that matters most: for many sources, the kernel drops a SYN only if the
/// agent's own filter (the config's glob matcher) would refuse that client.
#[test]
fn kernel_never_drops_what_the_agent_admits() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let conf = "r RR 198.18.?.1*:* 198.18.1*:2? 19?.18.3.*:*9 *.5:1 - 0.0.0.0:80 [::]:80 > 127.0.0.1:9 ;\n\
                s RR [2001:db8::7]:1* *:5 - [2001:db8::1]:90 > 127.0.0.1:9 ;\n";
    let Some(g) = guard(conf) else { return };
    let cfg = config::parse("x", conf.as_bytes()).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut checked = [0usize; 2];
    for i in 0..3000 {
        let r = next();
        let octet =
            |k: u32| [1u8, 3, 5, 10, 11, 12, 18, 19, 25, 100, 198, 255][((r >> k) % 12) as usize];
        let port = [1u16, 5, 9, 12, 19, 20, 21, 29, 123, 1999, 65535][((r >> 40) % 11) as usize];
        let (src, dst, rule): (SocketAddr, SocketAddr, usize) = if i % 3 == 2 {
            let last = [1u16, 7, 8][((r >> 8) % 3) as usize];
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last);
            (
                SocketAddr::new(ip.into(), port),
                "[2001:db8::1]:90".parse().unwrap(),
                1,
            )
        } else {
            let ip = Ipv4Addr::new(octet(0), octet(8), octet(16), octet(24));
            (SocketAddr::new(ip.into(), port), v4("198.18.0.1:80"), 0)
        };
        let agent_admits = cfg.rules[rule].match_client(src).is_some();
        let pkt = match (src, dst) {
            (SocketAddr::V4(_), _) => packet::v4(src, dst, Tcp::Syn),
            _ => packet::v6(src, dst, Tcp::Syn, None),
        };
        let verdict = run(&g, &pkt);
        if agent_admits {
            assert_eq!(
                verdict, XDP_PASS,
                "{src} is admitted by the agent but dropped"
            );
        } else {
            // Everything here is compilable exactly: refused clients are dropped early.
            assert_eq!(
                verdict, XDP_DROP,
                "{src} is refused by the agent but passed"
            );
        }
        checked[usize::from(agent_admits)] += 1;
    }
    assert!(
        checked[0] > 100 && checked[1] > 100,
        "both outcomes exercised: {checked:?}"
    );
}
