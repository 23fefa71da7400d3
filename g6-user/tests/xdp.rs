//! The XDP guard on the real kernel (needs root and the embedded eBPF object; without them
//! the tests print SKIP and pass, unless `G6_EBPF_STRICT=1`).
//!
//! * Golden packets through BPF_PROG_TEST_RUN: every verdict of the program, and the kernel
//!   never dropping a SYN the agent's own client filter would admit.
//! * End to end in network namespaces of our own (veth pair, 198.18.0.0/15): blocked and
//!   disallowed sources cannot connect (their SYNs are dropped, the agent logs no accept)
//!   while an allowed one is served; `block`/`unblock`/`show blocked` over the admin port;
//!   the interface is clean after stop; a killed worker does not detach the guard.
//! * `#[ignore]`d: the SYN-flood measurement (README "XDP guard").

mod support;
mod xdp_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;

use g6::config;
use g6::guard::{AttachMode, Guard, GuardError, blocklist::mono_ns};

use xdp_support::packet::{self, Tcp};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Loading programs concurrently is fine, but counters are global per program: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn skip_or_fail(why: &str) {
    if std::env::var("G6_EBPF_STRICT").is_ok_and(|v| v == "1") {
        panic!("G6_EBPF_STRICT=1 but: {why}");
    }
    eprintln!("SKIP: {why}");
}

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

// ---------------------------------------------------------------------------------------------
// End to end: a g6 in a namespace of our own behind a veth pair.

mod e2e {
    use std::ffi::OsString;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::time::Duration;

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use socket2::{Domain, Socket, Type};

    use super::support::g6proc::G6_BIN;
    use super::support::{Backend, G6Proc, WAIT_TIMEOUT, wait_until};
    use super::xdp_support::netns::{CLIENT_IPS, SERVER_IP, Segment};

    pub const ADMIN_PORT: u16 = 8600;
    pub const WEB_PORT: u16 = 8080;

    /// Root and an eBPF object, else SKIP (or fail under G6_EBPF_STRICT=1).
    pub fn available() -> bool {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            super::skip_or_fail("not root (namespaces and XDP need it)");
            return false;
        }
        if !g6::fastpath::object_embedded() {
            super::skip_or_fail("built without the eBPF object");
            return false;
        }
        true
    }

    /// The config: admin and `web` for .2, `web` also for .4 (.3 is allowed nowhere).
    /// Fixed ports are fine here: the namespace is ours alone.
    pub fn conf(server: SocketAddr, extra_web_pattern: &str) -> String {
        let [a, _, c] = CLIENT_IPS;
        format!(
            "admin G {a}:* - {SERVER_IP}:{ADMIN_PORT} ;\n\
             web RR {a}:* {c}:* {extra_web_pattern} - {SERVER_IP}:{WEB_PORT} > {server} ;\n"
        )
    }

    /// g6 started inside the server namespace (`ip netns exec`, which execs g6 itself).
    pub fn start(seg: &Segment, conf: &str, extra: &[&str]) -> G6Proc {
        let dir = G6Proc::conf_dir(conf);
        let mut args: Vec<OsString> = vec![
            "netns".into(),
            "exec".into(),
            seg.server.name.clone().into(),
            G6_BIN.into(),
        ];
        args.extend(G6Proc::standard_args(dir.path(), extra));
        G6Proc::launch(Path::new("ip"), &args, dir, &[], true)
    }

    /// Connects from `src` (a client address) to the server's `port`, within `timeout`; on
    /// success returns the first line the server sends (the backend's name for `web`).
    pub fn connect_from(
        seg: &Segment,
        src: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<String> {
        let src: SocketAddr = format!("{src}:0").parse().unwrap();
        let dst: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
        seg.client.run(move || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.bind(&src.into())?;
            s.connect_timeout(&dst.into(), timeout)?;
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b)? == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            Ok(String::from_utf8_lossy(&line).into_owned())
        })
    }

    /// Runs admin `commands` from the allowed client (then `quit`); the whole reply.
    pub fn admin(seg: &Segment, commands: &str) -> String {
        let src: SocketAddr = format!("{}:0", CLIENT_IPS[0]).parse().unwrap();
        let dst: SocketAddr = format!("{SERVER_IP}:{ADMIN_PORT}").parse().unwrap();
        let input = format!("{commands}quit\n");
        seg.client.run(move || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.bind(&src.into()).unwrap();
            s.connect_timeout(&dst.into(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("admin connect: {e}"));
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(input.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    }

    /// `(dropped_blocked, dropped_not_allowed)` from the `xdp` line of `show stats`.
    pub fn drops(seg: &Segment) -> (u64, u64) {
        let stats = admin(seg, "show stats\n");
        let line = stats
            .lines()
            .find(|l| l.starts_with("xdp "))
            .unwrap_or_else(|| panic!("no xdp line in {stats:?}"));
        let field = |k: &str| -> u64 {
            line.split(' ')
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {line:?}"))
        };
        (field("dropped_blocked="), field("dropped_not_allowed="))
    }

    pub fn backend(seg: &Segment) -> Backend {
        seg.server.run(|| Backend::identify("s1"))
    }

    /// The access lines g6 logged for clients from `ip`.
    pub fn accesses_from(g6: &G6Proc, ip: &str) -> usize {
        let tag = format!("client={ip}:");
        g6.log_contents()
            .lines()
            .filter(|l| l.contains("session rule=") && l.contains(&tag))
            .count()
    }

    pub const DROPPED: Duration = Duration::from_millis(700);

    pub fn signal_pid(pid: i32, sig: Signal) {
        kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
    }

    pub fn wait_no_xdp(seg: &Segment) -> bool {
        wait_until(WAIT_TIMEOUT, || !seg.server_has_xdp())
    }
}

use e2e::*;
use nix::sys::signal::Signal;
use support::{WAIT_TIMEOUT, wait_until};
use xdp_support::netns::{CLIENT_IPS, Segment};

fn is_timeout(r: &std::io::Result<String>) -> bool {
    matches!(r, Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock))
}

#[test]
fn blocked_and_disallowed_sources_never_reach_the_agent() {
    if !available() {
        return;
    }
    let seg = Segment::new("e");
    let s1 = backend(&seg);
    let g6 = start(&seg, &conf(s1.addr(), ""), &["--xdp", "generic"]);
    let [allowed, disallowed, blocked] = CLIENT_IPS;
    assert!(seg.server_has_xdp(), "{}", g6.diagnostics());
    assert!(
        !seg.lo_has_xdp(),
        "only the interface carrying {}",
        e2e::ADMIN_PORT
    );
    let stats = admin(&seg, "show stats\n");
    assert!(
        stats.ends_with(&format!(
            "xdp generic {} dropped_blocked=0 dropped_not_allowed=0\n",
            seg.server_if
        )),
        "{stats}"
    );
    // Allowed: served.
    assert_eq!(
        connect_from(&seg, allowed, WEB_PORT, DROPPED).unwrap(),
        "s1"
    );
    // Not allowed by any pattern: the SYN never gets an answer.
    let r = connect_from(&seg, disallowed, WEB_PORT, DROPPED);
    assert!(is_timeout(&r), "{r:?}");
    let (b, n) = drops(&seg);
    assert!(b == 0 && n >= 1, "{b} {n}");
    // Blocked (though its pattern allows it).
    assert_eq!(
        admin(&seg, &format!("block {blocked}\n")),
        format!("{blocked} blocked\n")
    );
    assert_eq!(admin(&seg, "show blocked\n"), format!("{blocked} 0\n"));
    let r = connect_from(&seg, blocked, WEB_PORT, DROPPED);
    assert!(is_timeout(&r), "{r:?}");
    // Also the admin port is guarded.
    let r = connect_from(&seg, blocked, e2e::ADMIN_PORT, DROPPED);
    assert!(is_timeout(&r), "{r:?}");
    let (b2, n2) = drops(&seg);
    assert!(b2 >= 2 && n2 >= n, "{b2} {n2}");
    // The agent never saw either of them.
    assert_eq!(accesses_from(&g6, disallowed), 0, "{}", g6.diagnostics());
    assert_eq!(accesses_from(&g6, blocked), 0, "{}", g6.diagnostics());
    // Unblocked: served again; a timed block ends by itself.
    assert_eq!(
        admin(&seg, &format!("unblock {blocked}\nshow blocked\n")),
        format!("{blocked} unblocked\n")
    );
    assert_eq!(
        connect_from(&seg, blocked, WEB_PORT, DROPPED).unwrap(),
        "s1"
    );
    admin(&seg, &format!("block {blocked} 2\n"));
    let r = connect_from(&seg, blocked, WEB_PORT, DROPPED);
    assert!(is_timeout(&r), "timed block in force: {r:?}");
    let served = wait_until(WAIT_TIMEOUT, || {
        connect_from(&seg, blocked, WEB_PORT, DROPPED).is_ok_and(|n| n == "s1")
    });
    assert!(served, "timed block never ended {}", g6.diagnostics());
    assert_eq!(admin(&seg, "show blocked\n"), "");
    // TERM: g6 exits and the interface is clean.
    g6.signal(Signal::SIGTERM);
    assert!(g6.wait_exit(WAIT_TIMEOUT).is_some(), "{}", g6.diagnostics());
    assert!(wait_no_xdp(&seg), "xdp still attached after exit");
}

/// Who holds the attachment: the monitor. A killed worker leaves the guard in place (and its
/// successor starts with an empty block list, in the kernel too); a killed monitor takes
/// its worker along, and with both gone the kernel detaches.
#[test]
fn the_monitor_holds_the_attachment() {
    if !available() {
        return;
    }
    let seg = Segment::new("k");
    let s1 = backend(&seg);
    let g6 = start(&seg, &conf(s1.addr(), ""), &["--xdp", "generic"]);
    let [allowed, disallowed, blocked] = CLIENT_IPS;
    assert!(seg.server_has_xdp(), "{}", g6.diagnostics());
    admin(&seg, &format!("block {blocked}\n"));
    assert!(is_timeout(&connect_from(&seg, blocked, WEB_PORT, DROPPED)));
    let worker = *g6.pids().get(1).expect("a worker");
    signal_pid(worker, Signal::SIGKILL);
    let restarted = wait_until(WAIT_TIMEOUT, || {
        g6.pids().get(1).is_some_and(|&w| w != worker)
            && connect_from(&seg, allowed, WEB_PORT, DROPPED).is_ok()
    });
    assert!(restarted, "{}", g6.diagnostics());
    assert!(seg.server_has_xdp(), "guard detached with the worker");
    // Runtime state restarts with the worker: no block, in user space or in the kernel.
    assert_eq!(admin(&seg, "show blocked\n"), "");
    assert_eq!(
        connect_from(&seg, blocked, WEB_PORT, DROPPED).unwrap(),
        "s1"
    );
    assert!(is_timeout(&connect_from(
        &seg, disallowed, WEB_PORT, DROPPED
    )));
    // kill -9 of the monitor: the worker follows (PDEATHSIG), the link's last fd closes.
    signal_pid(g6.pid(), Signal::SIGKILL);
    assert!(
        wait_no_xdp(&seg),
        "xdp still attached after kill -9 of the monitor"
    );
}

/// `--xdp off`: nothing attached, the block list still refuses (in user space, with its own
/// close reason), and HUP / `--xdp generic` keep the kernel tables in step with the config.
#[test]
fn userspace_blocks_without_xdp_and_reload_recomputes() {
    if !available() {
        return;
    }
    let seg = Segment::new("o");
    let s1 = backend(&seg);
    let [_, disallowed, blocked] = CLIENT_IPS;
    {
        let g6 = start(&seg, &conf(s1.addr(), ""), &["--xdp", "off"]);
        assert!(!seg.server_has_xdp());
        admin(&seg, &format!("block {blocked}\n"));
        // Accepted by the kernel, refused by the agent: connect works, then EOF.
        assert_eq!(connect_from(&seg, blocked, WEB_PORT, DROPPED).unwrap(), "");
        g6.expect_log("close=blocked", WAIT_TIMEOUT, |log| {
            log.lines()
                .any(|l| l.contains(&format!("client={blocked}:")) && l.ends_with("close=blocked"))
        });
        let stats = admin(&seg, "show stats\n");
        assert!(
            stats.ends_with("xdp off - dropped_blocked=0 dropped_not_allowed=0\n"),
            "{stats}"
        );
    }
    let g6 = start(&seg, &conf(s1.addr(), ""), &["--xdp", "generic"]);
    assert!(is_timeout(&connect_from(
        &seg, disallowed, WEB_PORT, DROPPED
    )));
    // HUP allowing .3: the kernel lets it through at once after the reload.
    g6.write_conf(&conf(s1.addr(), &format!("{disallowed}:*")));
    g6.signal(Signal::SIGHUP);
    g6.expect_log("the reload", WAIT_TIMEOUT, |log| {
        log.contains("HUP: reloaded")
    });
    let served = wait_until(WAIT_TIMEOUT, || {
        connect_from(&seg, disallowed, WEB_PORT, DROPPED).is_ok_and(|n| n == "s1")
    });
    assert!(served, "{}", g6.diagnostics());
    assert!(seg.server_has_xdp());
    // A second G6 on the same interface finds it taken: it says so and serves without XDP.
    let other = start(
        &seg,
        &format!(
            "w2 RR {}:* - {}:8601 > {} ;\n",
            CLIENT_IPS[0],
            xdp_support::netns::SERVER_IP,
            s1.addr()
        ),
        &["--xdp", "generic"],
    );
    other.expect_log("the busy interface", WAIT_TIMEOUT, |log| {
        log.contains(&format!(
            "attaching XDP to {}: Device or resource busy",
            seg.server_if
        ))
    });
    assert_eq!(
        connect_from(&seg, CLIENT_IPS[0], 8601, DROPPED).unwrap(),
        "s1"
    );
}

/// `prog/xdp id N` on the server's interface, if attached.
fn prog_id(seg: &Segment) -> Option<u32> {
    let out = seg
        .server
        .ip_out(&["-d", "link", "show", "dev", &seg.server_if]);
    let rest = out.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `(link_id, prog_id)` of every XDP link descriptor process `pid` holds (fdinfo).
fn xdp_links(pid: i32) -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if field("link_type:").as_deref() == Some("xdp") {
            let id = |k| field(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            out.push((id("link_id:"), id("prog_id:")));
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|t| !t.trim_start().starts_with('Z'))
    })
}

/// USR2: the successor swaps its program into the predecessor's links (BPF_LINK_UPDATE), so
/// the interface is never without the guard, and keeps them after the old generation exits.
#[test]
fn usr2_successor_takes_over_the_attachment_without_a_gap() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !available() {
        return;
    }
    let seg = Arc::new(Segment::new("u"));
    let s1 = backend(&seg);
    let pid_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_dir.path().join("g6.pid");
    let pf = pid_file.to_str().unwrap();
    let g6 = start(
        &seg,
        &conf(s1.addr(), ""),
        &["--xdp", "generic", "--pid-file", pf],
    );
    let old = g6.pid();
    let first = prog_id(&seg).expect("attached");
    let old_links = xdp_links(old);
    assert_eq!(old_links.len(), 1, "the monitor holds one link");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seg, stop) = (seg.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut samples, mut gaps) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                // Only a successful `ip` listing the interface counts: `ip -n` can fail
                // while other tests add or delete namespaces.
                let out = std::process::Command::new("ip")
                    .args([
                        "-n",
                        &seg.server.name,
                        "-d",
                        "link",
                        "show",
                        "dev",
                        &seg.server_if,
                    ])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                if out.status.success() && text.contains(&format!("{}@", seg.server_if)) {
                    samples += 1;
                    gaps += u32::from(!text.contains("prog/xdp id "));
                }
            }
            (samples, gaps)
        })
    };
    g6.signal(Signal::SIGUSR2);
    let new = support::wait_for(WAIT_TIMEOUT, || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p != old)
    })
    .unwrap_or_else(|| panic!("no successor {}", g6.diagnostics()));
    let swapped = wait_until(WAIT_TIMEOUT, || prog_id(&seg).is_some_and(|id| id != first));
    assert!(swapped, "the successor's program never replaced {first}");
    assert!(
        g6.wait_exit(WAIT_TIMEOUT).is_some(),
        "old generation still running {}",
        g6.diagnostics()
    );
    stop.store(true, Ordering::SeqCst);
    let (samples, gaps) = watcher.join().unwrap();
    assert!(
        samples > 0 && gaps == 0,
        "{gaps} of {samples} samples without XDP"
    );
    // The proof of "no gap": the successor holds the *same* link (BPF_LINK_UPDATE swaps the
    // program atomically), now running its own program.
    let new_links = xdp_links(new);
    assert_eq!(new_links.len(), 1, "{new_links:?}");
    assert_eq!(new_links[0].0, old_links[0].0, "same link id");
    assert_ne!(new_links[0].1, old_links[0].1, "new program");
    // The old generation's exit closed its descriptors; the successor's link remains.
    let second = prog_id(&seg).expect("still attached");
    assert_ne!(second, first);
    let [allowed, disallowed, _] = CLIENT_IPS;
    assert_eq!(
        connect_from(&seg, allowed, WEB_PORT, DROPPED).unwrap(),
        "s1"
    );
    assert!(is_timeout(&connect_from(
        &seg, disallowed, WEB_PORT, DROPPED
    )));
    assert!(drops(&seg).1 >= 1, "counted by the successor's program");
    assert!(alive(new));
    signal_pid(new, Signal::SIGTERM);
    assert!(wait_until(WAIT_TIMEOUT, || !alive(new)));
    assert!(
        wait_no_xdp(&seg),
        "xdp left attached after the successor stopped"
    );
}

// ---------------------------------------------------------------------------------------------
// Measurement (README "XDP guard"): `cargo test --release -p g6-user --test xdp --
// --ignored --nocapture syn_flood`. Bounded: FLOOD_PACKETS SYNs / FLOOD_CONNECTS connections
// per run, each phase at most FLOOD_LIMIT.

const FLOOD_PACKETS: u64 = 400_000;
const FLOOD_CONNECTS: u64 = 20_000;
const FLOOD_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// CPU seconds (user + system) of the processes in `pids`, from /proc/<pid>/stat.
fn cpu_secs(pids: &[i32]) -> f64 {
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| {
            let f: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12)) / hz // utime, stime (fields 14, 15 of the whole line)
        })
        .sum()
}

/// Busy and total jiffies of all CPUs (/proc/stat), for the kernel's share of the work.
fn host_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    (total - v[3] - v.get(4).copied().unwrap_or(0), total)
}

/// Sends `n` SYNs from `src` (random source ports) to `dst` on a raw socket, within
/// FLOOD_LIMIT; returns (sent, seconds).
fn raw_syn_flood(src: Ipv4Addr, dst: SocketAddr, n: u64) -> (u64, f64) {
    // SAFETY: plain socket calls on a descriptor we own; buffers outlive each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let SocketAddr::V4(d) = dst else {
            panic!("IPv4 only")
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(d.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let start = std::time::Instant::now();
        let mut sent = 0;
        while sent < n && start.elapsed() < FLOOD_LIMIT {
            let sport = 1024 + (sent % 60_000) as u16;
            let s = SocketAddr::new(src.into(), sport);
            let mut pkt = packet::ipv4_header(s, dst, &[], 20);
            pkt.extend_from_slice(&packet::tcp_header(s, dst, Tcp::Syn, sent as u32));
            let r = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if r < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "sendto: {e}");
                continue;
            }
            sent += 1;
        }
        libc::close(fd);
        (sent, start.elapsed().as_secs_f64())
    }
}

/// Up to `n` connections from `src` (4 threads, within `limit`), each read to EOF; returns
/// (refused, seconds).
fn connect_flood(
    seg: &Segment,
    src: &'static str,
    n: u64,
    limit: std::time::Duration,
) -> (u64, f64) {
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            seg.client.spawn(move || {
                let src: SocketAddr = format!("{src}:0").parse().unwrap();
                let dst: SocketAddr = format!("{}:{WEB_PORT}", xdp_support::netns::SERVER_IP)
                    .parse()
                    .unwrap();
                let mut refused = 0;
                let begin = std::time::Instant::now();
                for _ in 0..n / 4 {
                    if begin.elapsed() >= limit {
                        break;
                    }
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    s.bind(&src.into()).unwrap();
                    if s.connect_timeout(&dst.into(), std::time::Duration::from_millis(200))
                        .is_err()
                    {
                        continue;
                    }
                    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                        .unwrap();
                    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                    if matches!(s.recv(&mut b), Ok(0)) {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let refused = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (refused, start.elapsed().as_secs_f64())
}

#[test]
#[ignore = "measurement: ~1 minute of floods; run with --ignored --nocapture"]
fn syn_flood_measurement() {
    if !available() {
        return;
    }
    let dst: SocketAddr = format!("{}:{WEB_PORT}", xdp_support::netns::SERVER_IP)
        .parse()
        .unwrap();
    let src: Ipv4Addr = CLIENT_IPS[1].parse().unwrap();
    println!(
        "| mode | flood | sent | s | dropped by XDP /s | refused by g6 /s | g6 CPU s | host busy % |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (mode, tag) in [("native", "fn"), ("generic", "fg"), ("off", "fo")] {
        // A fresh segment per mode: nothing of the previous run (orphaned sockets) remains.
        let seg = Segment::new(tag);
        let s1 = backend(&seg);
        let g6 = start(&seg, &conf(s1.addr(), ""), &["--xdp", mode]);
        let refused_now = |seg: &Segment| -> u64 {
            let s = admin(seg, "show stats\n");
            let l = s
                .lines()
                .find(|l| l.starts_with("rule web "))
                .unwrap()
                .to_string();
            l.split(' ')
                .find_map(|f| f.strip_prefix("refused="))
                .unwrap()
                .parse()
                .unwrap()
        };
        for flood in ["raw SYN", "connect"] {
            let (d0, r0, c0, h0) = (
                drops(&seg).1,
                refused_now(&seg),
                cpu_secs(&g6.pids()),
                host_jiffies(),
            );
            let (sent, secs) = if flood == "raw SYN" {
                seg.client
                    .run(move || raw_syn_flood(src, dst, FLOOD_PACKETS))
            } else {
                // With the guard no handshake completes: 5 s show that nothing reaches g6.
                let limit = if mode == "off" {
                    FLOOD_LIMIT
                } else {
                    std::time::Duration::from_secs(5)
                };
                connect_flood(&seg, CLIENT_IPS[1], FLOOD_CONNECTS, limit)
            };
            let (d1, c1, h1) = (drops(&seg).1, cpu_secs(&g6.pids()), host_jiffies());
            // Refusals are logged after the close: wait until the count settles.
            let mut r1 = refused_now(&seg);
            while wait_until(std::time::Duration::from_millis(500), || {
                refused_now(&seg) != r1
            }) {
                r1 = refused_now(&seg);
            }
            let busy = 100.0 * (h1.0 - h0.0) as f64 / (h1.1 - h0.1).max(1) as f64;
            println!(
                "| {mode} | {flood} | {sent} | {secs:.1} | {:.0} | {:.0} | {:.2} | {busy:.0} |",
                (d1 - d0) as f64 / secs,
                (r1 - r0) as f64 / secs,
                c1 - c0
            );
        }
        drop(g6);
    }
}

/// `--xdp native`: veth has a native XDP driver hook; `lo` has none and falls back.
#[test]
fn native_mode_on_veth_and_fallback_on_lo() {
    if !available() {
        return;
    }
    let seg = Segment::new("n");
    let s1 = backend(&seg);
    let [allowed, disallowed, _] = CLIENT_IPS;
    let conf = format!(
        "{}local G 127.0.0.1:* - 127.0.0.1:8602 ;\n",
        conf(s1.addr(), "")
    );
    let g6 = start(&seg, &conf, &["--xdp", "native"]);
    let link = seg
        .server
        .ip_out(&["-d", "link", "show", "dev", &seg.server_if]);
    assert!(link.contains(" xdp ") || link.contains(" xdp/"), "{link}");
    assert!(!link.contains("xdpgeneric"), "{link}");
    let stats = admin(&seg, "show stats\n");
    let want = format!("xdp native lo:generic,{} ", seg.server_if);
    let got = stats.lines().find(|l| l.starts_with("xdp ")).unwrap_or("");
    assert!(got.starts_with(&want), "{got:?} {}", g6.diagnostics());
    assert_eq!(
        connect_from(&seg, allowed, WEB_PORT, DROPPED).unwrap(),
        "s1"
    );
    assert!(is_timeout(&connect_from(
        &seg, disallowed, WEB_PORT, DROPPED
    )));
    assert!(drops(&seg).1 >= 1);
}
