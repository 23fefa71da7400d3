//! End to end: server selection (SPEC §6) and fail-over (SPEC §5.3, §5.4) with real g6
//! processes and `Identify` backends that tell the client which server it reached.

mod e2e;
mod support;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use e2e::*;
use socket2::{Domain, Socket, Type};
use support::*;

/// Names reached by `n` sequential connections to `l` (each closed after its name).
fn names(l: SocketAddr, n: usize) -> Vec<String> {
    (0..n).map(|_| identify(l)).collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `n` repetitions of `cycle`.
fn cycle(cycle: &[&str], n: usize) -> Vec<String> {
    strs(cycle).into_iter().cycle().take(n).collect()
}

#[test]
fn rr_strict_cycle_skips_disabled_and_failing_servers() {
    let (s1, s2, s3) = (
        Backend::identify("s1"),
        Backend::identify("s2"),
        Backend::identify("s3"),
    );
    let x = RefusedAddr::new();
    let (a, l1, l2) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\n\
         rr RR *:* - {l1} > {} {} {} ;\n\
         rx RR *:* - {l2} > {} {} {} ;\n",
        s1.addr(),
        s2.addr(),
        s3.addr(),
        s1.addr(),
        x.addr(),
        s3.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l2], COPY);

    // Strict cycle in list order from the first server.
    assert_eq!(
        names(l1.addr(), 7),
        cycle(&["s1", "s2", "s3"], 7),
        "{}",
        g6.diagnostics()
    );
    // p = 1 (s2) now. A disabled server is skipped; the cycle goes on among the others.
    let s2_ip = s2.addr().ip().to_string();
    let port = s2.addr().port();
    admin(a.addr(), &format!("disable {s2_ip} {port}"));
    assert_eq!(names(l1.addr(), 4), strs(&["s3", "s1", "s3", "s1"]));
    admin(a.addr(), &format!("enable {s2_ip} {port}"));
    assert_eq!(names(l1.addr(), 3), strs(&["s2", "s3", "s1"]));

    // A refusing server is tried (p moves past it), fails, and the client gets the next one.
    assert_eq!(names(l2.addr(), 6), cycle(&["s1", "s3"], 6));
    let sx = server_stats(a.addr(), "rx", x.addr());
    assert_eq!(
        (
            sx["failures"].as_u64(),
            sx["total"].as_u64(),
            sx["state"].as_str()
        ),
        (Some(3), Some(0), Some("up")),
        "moratorium 0: failures counted, state unchanged: {sx}"
    );
    for s in [s1.addr(), s3.addr()] {
        let st = server_stats(a.addr(), "rx", s);
        assert_eq!(
            (st["total"].as_u64(), st["failures"].as_u64()),
            (Some(3), Some(0)),
            "{st}"
        );
    }
}

/// A server address that refuses connects until `revive`, then accepts (and is served by hand
/// from the test thread: `serve_one`).
struct Revivable {
    sock: Socket,
    addr: SocketAddr,
}

impl Revivable {
    fn new() -> Revivable {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        Revivable { sock, addr }
    }

    fn revive(&self) {
        self.sock.listen(16).unwrap();
        self.sock.set_nonblocking(true).unwrap();
    }

    /// A connection waiting in the accept queue, if any.
    fn try_accept(&self) -> Option<TcpStream> {
        match self.sock.accept() {
            Ok((s, _)) => {
                let s: TcpStream = s.into();
                s.set_nonblocking(false).unwrap();
                Some(s)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept on {}: {e}", self.addr),
        }
    }

    /// Accepts the next connection (bounded) and announces `name` on it.
    fn serve_one(&self, name: &str) -> TcpStream {
        let mut s = wait_for(WAIT_TIMEOUT, || self.try_accept())
            .unwrap_or_else(|| panic!("{}: nothing connected", self.addr));
        s.write_all(format!("{name}\n").as_bytes()).unwrap();
        s
    }
}

#[test]
fn ms_fails_over_and_never_fails_back() {
    let primary = Revivable::new();
    let standby = Backend::identify("standby");
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nms MS *:* - {l} > {} {} ;\n",
        primary.addr,
        standby.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);

    // The primary refuses: the client is failed over to the standby.
    assert_eq!(identify(l.addr()), "standby", "{}", g6.diagnostics());
    // The pointer moved to the standby: the primary is not even tried again.
    assert_eq!(names(l.addr(), 3), cycle(&["standby"], 3));
    let sp = server_stats(a.addr(), "ms", primary.addr);
    assert_eq!(sp["failures"], 1, "{sp}");

    // The primary comes back: no fail-back, and nothing ever connects to it.
    primary.revive();
    assert_eq!(names(l.addr(), 3), cycle(&["standby"], 3));
    assert!(
        primary.try_accept().is_none(),
        "no connection to the primary"
    );

    // The standby goes down: the next in list order (wrapping) is the primary ...
    let sb = standby.addr();
    let r = admin(a.addr(), &format!("disable {} {}", sb.ip(), sb.port()));
    assert_eq!(r, format!("ms {} {} unabled\n", sb.ip(), sb.port()));
    for _ in 0..2 {
        let mut c = connect(l.addr());
        let _server_side = primary.serve_one("primary");
        assert_eq!(read_line(&mut c), "primary");
    }
    // ... and traffic stays there once the standby is back.
    admin(a.addr(), &format!("enable {} {}", sb.ip(), sb.port()));
    let mut c = connect(l.addr());
    let _server_side = primary.serve_one("primary");
    assert_eq!(read_line(&mut c), "primary");
    assert_eq!(server_stats(a.addr(), "ms", sb)["total"], 7);
}

/// `Identify` backends s1, s2, s3 behind rule `rule` (`<rule> <method> *:* - l > s1 s2 s3`)
/// with an admin listener: ((s1, s2, s3), admin, l, g6).
fn three_servers(
    rule: &str,
    method: &str,
) -> ((Backend, Backend, Backend), PreBound, PreBound, G6Proc) {
    let (s1, s2, s3) = (
        Backend::identify("s1"),
        Backend::identify("s2"),
        Backend::identify("s3"),
    );
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\n{rule} {method} *:* - {l} > {} {} {} ;\n",
        s1.addr(),
        s2.addr(),
        s3.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    ((s1, s2, s3), a, l, g6)
}

#[test]
fn lc_picks_the_server_with_fewest_active_connections() {
    let ((s1, _s2, s3), a, l, g6) = three_servers("lc", "LC");

    // Held open: one on each server (ties go to scan order).
    let mut held: Vec<(String, TcpStream)> = (0..3).map(|_| connect_identify(l.addr())).collect();
    let got: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, ["s1", "s2", "s3"], "{}", g6.diagnostics());
    // All at 1: ties go to scan order from p (s1, then s2).
    held.push(connect_identify(l.addr()));
    assert_eq!(held[3].0, "s1");
    held.push(connect_identify(l.addr()));
    assert_eq!(held[4].0, "s2");
    // s1=2 s2=2 s3=1: the least loaded wins whatever the pointer.
    assert_eq!(connect_identify(l.addr()).0, "s3");
    wait_server_stats(a.addr(), "lc", s3.addr(), "active=1", |s| s["active"] == 1);

    // Close both s1 connections: s1 becomes the least loaded (s1=0, s2=2, s3=1).
    held.retain(|(n, _)| n != "s1");
    wait_server_stats(a.addr(), "lc", s1.addr(), "active=0", |s| s["active"] == 0);
    let first = connect_identify(l.addr());
    assert_eq!(first.0, "s1", "s1 has 0 active, s2 2, s3 1");
    // s1=1 s2=2 s3=1: a tie between s3 and s1, broken by scan order from p (= s2).
    assert_eq!(connect_identify(l.addr()).0, "s3");
    drop(held);
}

/// A request/response server: for each 5-byte request it waits `delay` (its simulated
/// processing time, the very thing RT measures) and answers its 4-letter name + `\n`.
struct DelayServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl DelayServer {
    fn start(name: &'static str, delay: Duration) -> DelayServer {
        assert_eq!(name.len(), 4);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let acceptor = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                // Requests come one at a time: served right here, so no thread start-up
                // latency adds to the fast server's answers. Bounded by the read timeout;
                // the connection is closed after the answer.
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut req = [0u8; 5];
                if s.read_exact(&mut req).is_ok() {
                    thread::sleep(delay);
                    let _ = s.write_all(format!("{name}\n").as_bytes());
                }
            }
        });
        DelayServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for DelayServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// One request through `l`; returns the name of the server that answered.
fn rt_request(l: SocketAddr) -> String {
    let mut c = connect(l);
    c.write_all(b"ping\n").unwrap();
    let mut reply = [0u8; 5];
    c.read_exact(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..4]).into_owned()
}

#[test]
fn rt_prefers_the_faster_server_on_every_data_path() {
    let delay = Duration::from_millis(300);
    for path in G6Proc::data_paths() {
        let slow = DelayServer::start("slow", delay);
        let fast = DelayServer::start("fast", Duration::ZERO);
        let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
        // The slow server first in the list: only measurements can move traffic away from it.
        let conf = format!(
            "admin G 127.0.0.1:* - {a} ;\nrt RT *:* - {l} > {} {} ;\n",
            slow.addr, fast.addr
        );
        let g6 = G6Proc::start(&conf, &[&a, &l], &["--data-path", &path]);
        let stats = show(a.addr(), "stats");
        assert!(
            stats.contains(&format!(
                "  server {} up active=0 total=0 failures=0 bytes_in=0 bytes_out=0 rt_us=-\n",
                slow.addr
            )),
            "{path}: no sample yet: {stats}"
        );
        let rt = |s: SocketAddr| {
            server_stats(a.addr(), "rt", s)["rt_us"]
                .as_u64()
                .unwrap_or_else(|| panic!("{path}: no rt_us for {s}"))
        };
        // Servers without a sample first, in scan order.
        let mut seq = vec![rt_request(l.addr()), rt_request(l.addr())];
        assert_eq!(seq, ["slow", "fast"], "{path} {}", g6.diagnostics());
        let rs = rt(slow.addr);
        assert!(
            rs >= delay.as_micros() as u64 * 3 / 4,
            "{path}: slow rt_us {rs} for a {delay:?} delay"
        );
        // Then always the lowest measured RT (checked against the displayed values, which
        // holds even if a loaded machine distorts a measurement) ...
        for _ in 0..4 {
            let (rs, rf) = (rt(slow.addr), rt(fast.addr));
            let got = rt_request(l.addr());
            if rs != rf {
                let want = if rf < rs { "fast" } else { "slow" };
                assert_eq!(got, want, "{path}: rt_us slow {rs} fast {rf}");
            }
            seq.push(got);
        }
        // ... which is the faster server.
        assert_eq!(
            seq,
            ["slow", "fast", "fast", "fast", "fast", "fast"],
            "{path} {}",
            g6.diagnostics()
        );
        let (rs, rf) = (rt(slow.addr), rt(fast.addr));
        assert!(rf < rs, "{path}: fast rt_us {rf} >= slow {rs}");
        // (The slow server's session ends once its thread has seen the FIN: wait for it.)
        let want = format!(
            "  server {} up active=0 total=1 failures=0 bytes_in=5 bytes_out=5 rt_us={rs}\n",
            slow.addr
        );
        let shown = wait_until(WAIT_TIMEOUT, || show(a.addr(), "stats").contains(&want));
        assert!(shown, "{path}: text stats: {}", show(a.addr(), "stats"));
    }
}

#[test]
fn rd_uses_only_eligible_servers_roughly_uniformly() {
    let ((s1, s2, s3), a, l, g6) = three_servers("rd", "RD");
    admin(
        a.addr(),
        &format!("disable {} {}", s2.addr().ip(), s2.addr().port()),
    );
    let n = 80;
    let mut count: HashMap<String, usize> = HashMap::new();
    for name in names(l.addr(), n) {
        *count.entry(name).or_default() += 1;
    }
    assert_eq!(count.get("s2"), None, "disabled server used: {count:?}");
    // Binomial(80, 1/2): 40 ± 4.5; [20, 60] is beyond 4 sigma.
    for s in ["s1", "s3"] {
        let k = count.get(s).copied().unwrap_or(0);
        assert!(
            (20..=60).contains(&k),
            "{s}: {k} of {n} ({count:?}) {}",
            g6.diagnostics()
        );
    }
    // The list is never reordered: show rules still lists the servers as configured.
    let rules = show(a.addr(), "rules");
    assert!(
        rules.contains(&format!(
            "rd | RD | *:* - {l} > {}(0|0|0) {}(0|1|0) {}(0|0|0) \n",
            s1.addr(),
            s2.addr(),
            s3.addr()
        )),
        "{rules}"
    );
}

/// SPEC §6 HS score, implemented here independently of g6.
fn hs_score(client: IpAddr, server_text: &str) -> u64 {
    let mut x: u64 = 0xcbf29ce484222325;
    let ip = match client {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    for b in ip.iter().chain(server_text.as_bytes()) {
        x ^= u64::from(*b);
        x = x.wrapping_mul(0x100000001b3);
    }
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9f5ec53ba63);
    x ^= x >> 33;
    x
}

/// Index of the HS target of `client` among `servers` (ties: earlier in list).
fn hs_target(client: &str, servers: &[SocketAddr]) -> usize {
    let ip: IpAddr = client.parse().unwrap();
    let mut best = 0;
    for (i, s) in servers.iter().enumerate() {
        if hs_score(ip, &s.to_string()) > hs_score(ip, &servers[best].to_string()) {
            best = i;
        }
    }
    best
}

#[test]
fn hs_same_client_ip_same_server_and_refusal_without_fallback() {
    let backends = [
        Backend::identify("s0"),
        Backend::identify("s1"),
        Backend::identify("s2"),
    ];
    let servers: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let x = RefusedAddr::new();
    let hx_servers = [x.addr(), servers[0], servers[1]];
    let (a, l, l6, lx) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("[::1]:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\n\
         hs HS *:* - {l} {l6} > {} {} {} ;\n\
         hx HS *:* - {lx} > {} {} {} ;\n",
        servers[0], servers[1], servers[2], hx_servers[0], hx_servers[1], hx_servers[2]
    );
    let g6 = G6Proc::start(&conf, &[&a, &l, &l6, &lx], COPY);
    // An IPv6 client: its 16 address bytes are hashed.
    let want = hs_target("::1", &servers);
    for _ in 0..2 {
        assert_eq!(identify_from("::1", l6.addr()).0, format!("s{want}"));
    }

    let clients: Vec<String> = (2..=9).map(|i| format!("127.0.0.{i}")).collect();
    let mut used = [false; 3];
    for c in &clients {
        let want = hs_target(c, &servers);
        used[want] = true;
        for _ in 0..3 {
            let (name, _s) = identify_from(c, l.addr());
            assert_eq!(name, format!("s{want}"), "client {c} {}", g6.diagnostics());
        }
    }
    assert!(
        used.iter().filter(|u| **u).count() >= 2,
        "8 client IPs should spread over the servers: {used:?}"
    );

    // The target of 127.0.0.2 goes down: that client is refused (no fallback) while a client
    // whose target is another server is still served.
    let victim = hs_target("127.0.0.2", &servers);
    let v = servers[victim];
    admin(a.addr(), &format!("disable {} {}", v.ip(), v.port()));
    expect_refused_from("127.0.0.2", l.addr());
    let other = clients
        .iter()
        .find(|c| hs_target(c, &servers) != victim)
        .expect("a client with another target");
    let want = hs_target(other, &servers);
    assert_eq!(identify_from(other, l.addr()).0, format!("s{want}"));
    admin(a.addr(), &format!("enable {} {}", v.ip(), v.port()));

    // A target whose connect fails: refused, the failure counted, no other server tried.
    let ips: Vec<String> = (2..=254).map(|i| format!("127.0.1.{i}")).collect();
    let to_x = ips
        .iter()
        .find(|c| hs_target(c, &hx_servers) == 0)
        .expect("some client IP hashes to the refusing server");
    let to_s = ips
        .iter()
        .find(|c| hs_target(c, &hx_servers) != 0)
        .expect("some client IP hashes to a live server");
    let before: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
    expect_refused_from(to_x, lx.addr());
    let sx = server_stats(a.addr(), "hx", x.addr());
    assert_eq!(sx["failures"], 1, "{sx}");
    let after: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
    assert_eq!(before, after, "no fallback to another server");
    let want = hs_target(to_s, &hx_servers);
    assert_eq!(
        identify_from(to_s, lx.addr()).0,
        format!("s{}", want - 1),
        "{}",
        g6.diagnostics()
    );
}

#[test]
fn failover_on_refused_server_and_on_connect_timeout() {
    let s1 = Backend::identify("s1");
    let x = RefusedAddr::new();
    let na = NeverAccept::new();
    let (a, l1, l2) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\n\
         fr RR *:* - {l1} > {x} {s1} ;\n\
         ft RR *:* - {l2} > {na} ( connect_timeout = 1 ) {s1} ;\n",
        x = x.addr(),
        s1 = s1.addr(),
        na = na.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l2], COPY);

    let (name, c) = connect_identify(l1.addr());
    assert_eq!(name, "s1", "{}", g6.diagnostics());
    let client = c.local_addr().unwrap();
    drop(c);
    assert_eq!(
        wait_access(&g6, client),
        format!(
            "session rule=fr client={client} listen={l1} server={} path=copy bytes_in=0 bytes_out=3 close=client_close",
            s1.addr()
        )
    );
    let sx = server_stats(a.addr(), "fr", x.addr());
    assert_eq!(
        (sx["failures"].as_u64(), sx["state"].as_str()),
        (Some(1), Some("up"))
    );
    g6.expect_log("a WARN for the refused server", WAIT_TIMEOUT, |log| {
        log.lines().any(|line| {
            line.contains("| WARN  |")
                && line.contains(&x.addr().to_string())
                && line.contains("refused")
        })
    });

    // Connect timeout: the attempt is abandoned after ~1 s and the next server is used.
    let t = Instant::now();
    let (name, _c) = connect_identify(l2.addr());
    let took = t.elapsed();
    assert_eq!(name, "s1");
    // Upper bound: generous for a loaded machine, yet well below the listener's default of
    // 5 s (the server's own value applies) and the kernel's SYN retries (about 2 min).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "connect timeout 1 s, fail-over after {took:?}"
    );
    let sn = server_stats(a.addr(), "ft", na.addr());
    assert_eq!(
        (sn["failures"].as_u64(), sn["total"].as_u64()),
        (Some(1), Some(0)),
        "{sn}"
    );
    g6.expect_log("a WARN for the connect timeout", WAIT_TIMEOUT, |log| {
        log.lines().any(|line| {
            line.contains("| WARN  |")
                && line.contains(&na.addr().to_string())
                && line.contains("timeout")
        })
    });
}

/// Open descriptor numbers of `pid`.
fn open_fds(pid: i32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// SPEC §5.3/§5.4: a local failure (here EMFILE when creating the server socket) is logged as
/// ERROR and neither counts as a server failure nor isolates anybody, even with a moratorium.
#[test]
fn local_failure_is_not_blamed_on_the_server() {
    let (s1, s2) = (Backend::identify("s1"), Backend::identify("s2"));
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "( moratorium = 60 ) ;\nadmin G 127.0.0.1:* - {a} ;\nlf RR *:* - {l} > {} {} ;\n",
        s1.addr(),
        s2.addr()
    );
    // One relay thread: nothing runs concurrently with the accept loop (see below).
    let g6 = G6Proc::start(&conf, &[&a, &l], &["--data-path", "copy", "-t", "1"]);
    assert_eq!(identify(l.addr()), "s1");
    wait_rule_active(a.addr(), "lf", 0);

    // Leave exactly one free descriptor number: the client's accept takes it, the server
    // socket cannot be created.
    let pid = worker_pid(&g6);
    let fds = open_fds(pid);
    let free_below = |lim: u64| (0..lim).filter(|n| !fds.contains(n)).count();
    let limit = (1..4096)
        .find(|&lim| free_below(lim) == 1)
        .expect("a limit leaving one free descriptor");
    let old = set_nofile_soft(pid, limit);
    let c = connect(l.addr());
    let client = c.local_addr().unwrap();
    let refused = check_stream_refused(c);
    set_nofile_soft(pid, old);
    refused.unwrap_or_else(|e| panic!("{e} {}", g6.diagnostics()));

    assert_eq!(
        wait_access(&g6, client),
        format!(
            "session rule=lf client={client} listen={l} server=- path=- bytes_in=0 bytes_out=0 close=connect_failed"
        )
    );
    g6.expect_log("an ERROR for the local failure", WAIT_TIMEOUT, |log| {
        log.lines()
            .any(|line| line.contains("| ERROR |") && line.contains("local failure"))
    });
    for s in [s1.addr(), s2.addr()] {
        let st = server_stats(a.addr(), "lf", s);
        assert_eq!(
            (st["failures"].as_u64(), st["state"].as_str()),
            (Some(0), Some("up")),
            "{st}"
        );
        assert_eq!(triple(a.addr(), "lf", s), (0, 0, 0));
    }
    // Both servers still take traffic.
    let mut got = names(l.addr(), 2);
    got.sort();
    assert_eq!(got, strs(&["s1", "s2"]), "{}", g6.diagnostics());
}

/// SPEC §6 MS: a master that is merely full for a client keeps the pointer.
#[test]
fn ms_full_master_keeps_the_pointer() {
    let (s1, s2) = (Backend::identify("s1"), Backend::identify("s2"));
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nms MS *:* - {l} > {} ( max_connections = 1 ) {} ;\n",
        s1.addr(),
        s2.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    let (n1, c1) = connect_identify(l.addr());
    assert_eq!(n1, "s1", "{}", g6.diagnostics());
    assert_eq!(
        names(l.addr(), 2),
        cycle(&["s2"], 2),
        "master full: standby"
    );
    drop(c1);
    // Back on the master (one client at a time: it takes one connection).
    for _ in 0..2 {
        wait_server_stats(a.addr(), "ms", s1.addr(), "active=0", |s| s["active"] == 0);
        assert_eq!(identify(l.addr()), "s1", "the pointer stayed on the master");
    }
    assert_eq!(server_stats(a.addr(), "ms", s1.addr())["failures"], 0);
}

/// SPEC §6 LC: a connect in progress counts as an active connection of its server.
#[test]
fn lc_counts_connects_in_progress() {
    let (s1, s2) = (Backend::identify("s1"), Backend::identify("s2"));
    let na = NeverAccept::new();
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nlc LC *:* - {l} > {} {} ( connect_timeout = 60 ) {} ;\n",
        s1.addr(),
        na.addr(),
        s2.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    let (n1, _c1) = connect_identify(l.addr());
    assert_eq!(n1, "s1", "{}", g6.diagnostics());
    // Ties at 0 from p = 1: the never-accepting server; this client waits in its connect.
    let _c2 = connect(l.addr());
    wait_server_stats(a.addr(), "lc", na.addr(), "a connect in progress", |s| {
        s["active"] == 1
    });
    let (n3, _c3) = connect_identify(l.addr());
    assert_eq!(n3, "s2");
    // All at 1 (the connect counts): scan order from p = 0 gives s1. Were the connect not
    // counted, the never-accepting server (0) would be picked.
    let (n4, _c4) = connect_identify(l.addr());
    assert_eq!(n4, "s1");
    assert_eq!(server_stats(a.addr(), "lc", na.addr())["failures"], 0);
}

/// SPEC §5.3: a client that resets during the connect aborts it, with no penalty for the
/// server.
#[test]
fn client_reset_during_connect_aborts_without_penalty() {
    let na = NeverAccept::new();
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "( moratorium = 60 ) ;\nadmin G 127.0.0.1:* - {a} ;\nr RR *:* - {l} > {} ( connect_timeout = 30 ) ;\n",
        na.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    let c = connect(l.addr());
    let client = c.local_addr().unwrap();
    wait_server_stats(a.addr(), "r", na.addr(), "a connect in progress", |s| {
        s["active"] == 1
    });
    let t = Instant::now();
    reset(c);
    assert_eq!(
        wait_access(&g6, client),
        format!(
            "session rule=r client={client} listen={l} server=- path=- bytes_in=0 bytes_out=0 close=client_reset"
        )
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "aborted at once: {:?}",
        t.elapsed()
    );
    let st = server_stats(a.addr(), "r", na.addr());
    assert_eq!(
        (
            st["active"].as_u64(),
            st["failures"].as_u64(),
            st["state"].as_str()
        ),
        (Some(0), Some(0), Some("up")),
        "{st}"
    );
}
