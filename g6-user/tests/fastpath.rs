//! The sockmap fast path on the real kernel (needs root and the embedded eBPF object).
//!
//! Every test builds `client <-> pa ... pb <-> server` on loopback (port 0) with blocking std
//! sockets, accelerates (pa, pb) and proves one property of shared/design/ebpf-fastpath.md.
//! The test itself never reads the proxy sockets unless it is relaying in userspace.
//! Without root or without the object the tests print SKIP and pass, unless
//! `G6_EBPF_STRICT=1`, where they fail.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use g6::fastpath::{self, FastPath, FastPathError, sys};

#[path = "fastpath/inject.rs"]
mod inject;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Sharp edge 1: bytes queued before insertion.

#[test]
fn early_bytes_stuck_without_kick_then_delivered_by_rcvlowat() {
    let Some(fp) = fast_path() else { return };
    bounded(10, move || {
        let mut r = Relay::new();
        r.client.write_all(b"early").unwrap();
        wait_readable(&r.pa);
        let keys = fp.insert_pair_unkicked(&r.pa, &r.pb).unwrap();
        // Without the kick nothing moves (and a userspace read would get EAGAIN).
        thread::sleep(Duration::from_millis(200));
        assert_eq!(
            sys::inq(r.server.as_raw_fd()).unwrap(),
            0,
            "delivered without the kick?"
        );
        sys::set_rcvlowat(r.pa.as_raw_fd(), 1).unwrap();
        assert_eq!(read_n(&mut r.server, 5), b"early");
        assert_eq!(fp.state(keys.a).unwrap().redirected_bytes, 5);
        fp.remove_pair(keys);
    });
}

#[test]
fn early_bytes_both_ways_arrive_after_insert_pair() {
    let Some(fp) = fast_path() else { return };
    bounded(10, move || {
        let mut r = Relay::new();
        r.client.write_all(b"request").unwrap();
        r.server.write_all(b"banner").unwrap();
        wait_readable(&r.pa);
        wait_readable(&r.pb);
        let keys = fp.insert_pair(&r.pa, &r.pb).unwrap();
        assert_eq!(read_n(&mut r.server, 7), b"request");
        assert_eq!(read_n(&mut r.client, 6), b"banner");
        let (a, b) = (fp.state(keys.a).unwrap(), fp.state(keys.b).unwrap());
        assert_eq!((a.redirected_bytes, a.passed_bytes, a.peer), (7, 0, keys.b));
        assert_eq!((b.redirected_bytes, b.passed_bytes, b.peer), (6, 0, keys.a));
        fp.remove_pair(keys);
        assert!(fp.state(keys.a).is_none() && fp.state(keys.b).is_none());
        // Gone from the maps: no longer a pair.
        assert!(fp.set_peer(keys.a, 0).is_err());
    });
}

// ---------------------------------------------------------------------------------------------
// Bulk, both directions, the proxy never reads.

#[test]
fn sixteen_mib_each_way_concurrently_intact_and_counted() {
    let Some(fp) = fast_path() else { return };
    bounded(60, move || {
        let r = Relay::new();
        let keys = fp.insert_pair(&r.pa, &r.pb).unwrap();
        let n = 16 * MIB;
        let (c_rd, s_rd) = (clone(&r.client), clone(&r.server));
        let up_rx = spawn_reader(s_rd, 1);
        let down_rx = spawn_reader(c_rd, 2);
        let up_tx = spawn_writer(clone(&r.client), 1, n, None, None);
        let down_tx = spawn_writer(clone(&r.server), 2, n, None, None);
        up_tx.join().unwrap();
        down_tx.join().unwrap();
        // The FINs reach pa / pb themselves; relay them the way the agent does.
        for (src, rd, dst) in [(keys.a, &r.pa, &r.pb), (keys.b, &r.pb, &r.pa)] {
            expect_eof(rd);
            if let Err(e) = fp.wait_drained(&keys, src, dst, 0, Duration::from_secs(20)) {
                let err = sys::so_error(dst.as_raw_fd());
                panic!("{e}; SO_ERROR of the destination: {err:?}");
            }
            dst.shutdown(Shutdown::Write).unwrap();
        }
        assert_eq!(up_rx.join().unwrap(), n, "upload length");
        assert_eq!(down_rx.join().unwrap(), n, "download length");
        for (cookie, sock) in [(keys.a, &r.pa), (keys.b, &r.pb)] {
            let st = fp.state(cookie).unwrap();
            let ti = sys::tcp_info(sock.as_raw_fd()).unwrap();
            assert_eq!(st.redirected_bytes, n);
            // tcpi_bytes_received counts the FIN's sequence number too.
            assert_eq!(st.redirected_bytes + 1, ti.bytes_received, "map vs kernel");
            assert_eq!((st.passed_bytes, st.redirect_fail), (0, 0));
            assert!(st.skbs > 0 && st.last_ns >= st.first_ns && st.first_ns > 0);
            assert_eq!(sys::inq(sock.as_raw_fd()).unwrap(), 0);
        }
        fp.remove_pair(keys);
    });
}

// ---------------------------------------------------------------------------------------------
// Sharp edge 2: the FIN must not be redirected.

#[test]
fn fin_is_seen_as_eof_and_leaves_no_error_on_the_peer() {
    let Some(fp) = fast_path() else { return };
    bounded(10, move || {
        let mut r = Relay::new();
        let keys = fp.insert_pair(&r.pa, &r.pb).unwrap();
        r.client.write_all(b"hello").unwrap();
        assert_eq!(read_n(&mut r.server, 5), b"hello");
        r.client.shutdown(Shutdown::Write).unwrap();
        expect_eof(&r.pa);
        thread::sleep(Duration::from_millis(20)); // a redirected FIN breaks pb asynchronously
        assert_eq!(
            sys::so_error(r.pb.as_raw_fd()).unwrap(),
            0,
            "EPIPE on the peer"
        );
        // Half-close: the other direction keeps flowing through the redirect.
        r.server.write_all(b"response after half-close").unwrap();
        assert_eq!(read_n(&mut r.client, 25), b"response after half-close");
        // pb can still transmit, and the FIN is propagated by the agent after the drain.
        fp.wait_drained(&keys, keys.a, &r.pb, 0, Duration::from_secs(5))
            .unwrap();
        r.pb.shutdown(Shutdown::Write).unwrap();
        assert_eq!(r.server.read(&mut [0u8; 8]).unwrap(), 0, "server sees EOF");
        assert_eq!(sys::so_error(r.pb.as_raw_fd()).unwrap(), 0);
        let st = fp.state(keys.a).unwrap();
        assert_eq!((st.redirected_bytes, st.passed_bytes), (5, 0));
        // The server's answer is one RT sample: measured on its side of the pair.
        let sb = fp.state(keys.b).unwrap();
        assert_eq!((sb.turns, sb.rt_samples), (1, 1));
        assert!(sb.rt_last_ns > 0 && sb.turn_ns > fp.state(keys.a).unwrap().turn_ns);
        fp.remove_pair(keys);
    });
}

/// Sharp edge 2b (found here): a FIN arriving on a socket whose psock still queues data
/// redirected *to* it. Passed (SK_PASS), the zero-length skb is queued behind that data and
/// the backlog worker fails on it: EPIPE on that socket, its transmit side stops, the queued
/// data is lost. The verdict drops it instead; EOF still shows (RCV_SHUTDOWN).
#[test]
fn fin_on_a_socket_with_queued_egress_keeps_its_backlog() {
    let Some(fp) = fast_path() else { return };
    bounded(60, move || {
        let r = Relay::new();
        let keys = fp.insert_pair(&r.pa, &r.pb).unwrap();
        let n = 16 * MIB;
        // Download while the client does not read: the data queues in pa's psock.
        let tx = spawn_writer(clone(&r.server), 5, n, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while fp.backlog(&keys, keys.b, &r.pa, 0).unwrap() < 2 * MIB {
            assert!(Instant::now() < deadline, "no backlog built up");
            thread::sleep(Duration::from_millis(1));
        }
        r.client.shutdown(Shutdown::Write).unwrap();
        expect_eof(&r.pa);
        assert_eq!(sys::so_error(r.pa.as_raw_fd()).unwrap(), 0, "EPIPE on pa");
        let rx = spawn_reader(clone(&r.client), 5);
        tx.join().unwrap();
        expect_eof(&r.pb);
        fp.wait_drained(&keys, keys.b, &r.pa, 0, Duration::from_secs(20))
            .unwrap();
        r.pa.shutdown(Shutdown::Write).unwrap();
        assert_eq!(rx.join().unwrap(), n, "download after the client's FIN");
        fp.remove_pair(keys);
    });
}

// ---------------------------------------------------------------------------------------------
// Sharp edge 3: FIN after a big upload, propagated only once drained.

#[test]
fn upload_64mib_then_fin_arrives_whole_when_fin_waits_for_drain() {
    let Some(fp) = fast_path() else { return };
    bounded(120, move || {
        let r = Relay::new();
        let keys = fp.insert_pair(&r.pa, &r.pb).unwrap();
        let n = 64 * MIB;
        let rx = spawn_reader(clone(&r.server), 3);
        let tx = spawn_writer(clone(&r.client), 3, n, None, None);
        tx.join().unwrap();
        expect_eof(&r.pa);
        let backlog_at_eof = fp.backlog(&keys, keys.a, &r.pb, 0).unwrap();
        fp.wait_drained(&keys, keys.a, &r.pb, 0, Duration::from_secs(60))
            .unwrap();
        r.pb.shutdown(Shutdown::Write).unwrap();
        assert_eq!(rx.join().unwrap(), n, "bytes before the FIN");
        eprintln!("fastpath: backlog at EOF was {backlog_at_eof} bytes");
        assert_eq!(fp.state(keys.a).unwrap().redirected_bytes, n);
        fp.remove_pair(keys);
    });
}

// ---------------------------------------------------------------------------------------------
// Sharp edge 4: no kernel backpressure; the high-water mark restores it.

#[test]
fn backpressure_high_water_mark_then_userspace_relay_loses_nothing() {
    let Some(fp) = fast_path() else { return };
    bounded(120, move || {
        let r = Relay::new();
        let keys = fp.insert_pair(&r.pa, &r.pb).unwrap();
        let n = 128 * MIB;
        let sent = Arc::new(AtomicU64::new(0));
        let hwm = 8 * MIB;
        let (rmem, wmem) = (sysctl_max("tcp_rmem"), sysctl_max("tcp_wmem"));
        // Until the switch, the client may write enough to pass the mark (the server's receive
        // buffer and pb's send queue fill first) but not the whole stream: the watchdog below
        // polls, and nothing else would stop the kernel taking all of it if the watchdog's
        // thread were descheduled for the ~100 ms that takes.
        let cap = WriteCap::new(hwm + rmem + 2 * wmem + 8 * MIB);
        let tx = spawn_writer(
            clone(&r.client),
            4,
            n,
            Some(sent.clone()),
            Some(cap.clone()),
        );

        // The server does not read. Watchdog: over 8 MiB of backlog, stop redirecting.
        let deadline = Instant::now() + Duration::from_secs(30);
        let at_switch = loop {
            let b = fp.backlog(&keys, keys.a, &r.pb, 0).unwrap();
            if b > hwm {
                fp.set_peer(keys.a, 0).unwrap();
                break b;
            }
            assert!(Instant::now() < deadline, "backlog stayed at {b}");
            thread::sleep(Duration::from_micros(500));
        };
        cap.lift();

        // Locally passed data is charged to pa's receive memory: TCP closes the window and the
        // client blocks. The bound is the receive window (net.ipv4.tcp_rmem max), plus what
        // the client's own send buffer holds.
        let stalled = wait_stall(&sent, Duration::from_millis(300), Duration::from_secs(20));
        let st = fp.state(keys.a).unwrap();
        eprintln!(
            "fastpath: backlog at switch {at_switch}, client blocked after {stalled}, \
             redirected {} passed {}",
            st.redirected_bytes, st.passed_bytes
        );
        assert!(stalled < n, "the client was never blocked");
        assert!(
            st.passed_bytes <= rmem,
            "passed {} > tcp_rmem",
            st.passed_bytes
        );
        let held = stalled - st.redirected_bytes;
        assert!(
            held <= rmem + wmem + 2 * MIB,
            "{held} bytes held outside the backlog"
        );

        // The server reads again: drain the backlog, then relay pa -> pb in userspace.
        let rx = spawn_reader(clone(&r.server), 4);
        fp.wait_drained(&keys, keys.a, &r.pb, 0, Duration::from_secs(30))
            .unwrap();
        let redirected = fp.state(keys.a).unwrap().redirected_bytes;
        let user_sent = relay_in_userspace(&fp, keys.a, &r.pa, &r.pb, 4, redirected);
        tx.join().unwrap();
        fp.wait_drained(&keys, keys.a, &r.pb, user_sent, Duration::from_secs(5))
            .unwrap();
        r.pb.shutdown(Shutdown::Write).unwrap();
        assert_eq!(rx.join().unwrap(), n, "bytes through kernel + userspace");
        let st = fp.state(keys.a).unwrap();
        assert_eq!(
            st.redirected_bytes, redirected,
            "redirected after the switch"
        );
        assert_eq!(st.redirected_bytes + st.passed_bytes, n);
        assert_eq!(user_sent, st.passed_bytes);
        fp.remove_pair(keys);
    });
}

/// Relays `src -> dst` the way the agent does (non-blocking, poll), checking the bytes it
/// forwards (they start at stream offset `start`). EOF is final only once everything the
/// verdict passed has been read: passed skbs can still sit in the psock queue when the FIN is
/// seen. Returns the bytes relayed.
fn relay_in_userspace(
    fp: &FastPath,
    src_cookie: u64,
    src: &TcpStream,
    mut dst: &TcpStream,
    seed: u64,
    start: u64,
) -> u64 {
    src.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    loop {
        sys::poll_one(src.as_raw_fd(), libc::POLLIN | libc::POLLRDHUP, 1000).unwrap();
        match (&*src).read(&mut buf) {
            Ok(0) => {
                let passed = fp.state(src_cookie).unwrap().passed_bytes;
                if done >= passed {
                    return done;
                }
                thread::sleep(Duration::from_millis(1));
            }
            Ok(k) => {
                check_pattern(seed, start + done, &buf[..k], "relay input (pa)");
                dst.write_all(&buf[..k]).unwrap();
                done += k as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("relay read after {done} bytes: {e}"),
        }
    }
}

fn sysctl_max(name: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap();
    s.split_whitespace().nth(2).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Overlapping segments: the kernel's tcp_read_skb hands the verdict whole skbs.

/// A segment overlapping bytes pb already received (a spurious retransmission coalesced
/// with new data looks like this; under load it delivered one 65483-byte segment twice in
/// ~1 of 40 back-pressured sessions) is delivered once, whether redirected or passed
/// locally: the verdict cuts the stale prefix. Then the server's own copy of the injected
/// bytes, now a real overlapping segment, is cut too. Without the cut the receiver gets
/// the overlaps twice.
#[test]
fn overlapping_segment_is_delivered_once_redirected_or_passed() {
    let Some(fp) = fast_path() else { return };
    bounded(30, move || {
        inject::private_netns_without_timestamps();
        for passed in [false, true] {
            let mut r = Relay::new();
            let keys = fp.insert_pair(&r.pa, &r.pb).unwrap();
            if passed {
                fp.set_peer(keys.b, 0).unwrap();
            }
            // The test reads where the bytes land: the client, or pb itself as the agent.
            let mut rx = if passed {
                clone(&r.pb)
            } else {
                clone(&r.client)
            };
            let seed = 40 + u64::from(passed);
            let stream =
                |from: u64, to: u64| -> Vec<u8> { (from..to).map(|p| pattern(seed, p)).collect() };
            r.server.write_all(&stream(0, 4000)).unwrap();
            check_pattern(seed, 0, &read_n(&mut rx, 4000), "before the overlap");
            let idle = Instant::now();
            while sys::outq(r.server.as_raw_fd()).unwrap() > 0 {
                assert!(
                    idle.elapsed() < Duration::from_secs(5),
                    "server never acked"
                );
                thread::sleep(Duration::from_millis(1));
            }

            // 1000 bytes pb already has, then 2000 new ones.
            let (snd_nxt, rcv_nxt) = inject::sequence_numbers(&r.server);
            let v4 = |a: std::net::SocketAddr| match a {
                std::net::SocketAddr::V4(a) => a,
                a => panic!("not IPv4: {a}"),
            };
            let (from, to) = (
                v4(r.server.local_addr().unwrap()),
                v4(r.pb.local_addr().unwrap()),
            );
            inject::send_segment(from, to, snd_nxt - 1000, rcv_nxt, &stream(3000, 6000));
            check_pattern(
                seed,
                4000,
                &read_n(&mut rx, 2000),
                "after the injected overlap",
            );

            // The server sends [4000, 8000) itself: its first 2000 bytes are stale for pb.
            r.server.write_all(&stream(4000, 8000)).unwrap();
            r.server.shutdown(Shutdown::Write).unwrap();
            check_pattern(
                seed,
                6000,
                &read_n(&mut rx, 2000),
                "after the server's overlap",
            );
            if passed {
                expect_eof(&r.pb);
            } else {
                let mut rest = Vec::new();
                fp.wait_drained(&keys, keys.b, &r.pa, 0, Duration::from_secs(5))
                    .unwrap();
                r.pa.shutdown(Shutdown::Write).unwrap();
                r.client.read_to_end(&mut rest).unwrap();
                assert!(
                    rest.is_empty(),
                    "{} bytes after the stream's end",
                    rest.len()
                );
            }
            let st = fp.state(keys.b).unwrap();
            assert_eq!(
                (
                    st.redirected_bytes + st.passed_bytes,
                    st.dup_bytes,
                    st.trim_fail
                ),
                (8000, 3000, 0),
                "[passed={passed}] bytes handed on, stale bytes cut, failed cuts"
            );
            fp.remove_pair(keys);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Start-up probe and privileges.

#[test]
fn probe_loads_and_self_test_passes_repeatedly() {
    let Some(fp) = fast_path() else { return };
    bounded(10, move || {
        let t = Instant::now();
        fastpath::probe().unwrap();
        let probe = t.elapsed();
        let t = Instant::now();
        fp.self_test().unwrap();
        eprintln!(
            "fastpath: probe (load + self-test) {probe:?}, self-test alone {:?}",
            t.elapsed()
        );
        for _ in 0..3 {
            fp.self_test().unwrap();
        }
    });
}

/// In the child (see below): an unprivileged load fails with a clear EPERM.
#[test]
fn unprivileged_child_load() {
    if std::env::var_os("G6_FASTPATH_CHILD").is_none() {
        return;
    }
    match FastPath::load() {
        Ok(_) => panic!("loaded without privileges"),
        Err(e) => {
            println!("child: {e}");
            assert!(e.is_permission_denied(), "{e}");
            assert!(e.to_string().contains("Operation not permitted"), "{e}");
        }
    }
}

#[test]
fn unprivileged_load_fails_with_eperm() {
    let Some(_fp) = fast_path() else { return };
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(exe)
        .args([
            "--exact",
            "unprivileged_child_load",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("G6_FASTPATH_CHILD", "1")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return skip_or_fail(&format!("setpriv not runnable ({e}); `cargo xtask setup`")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("child: ") && text.contains("1 passed"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Support.

/// Tests that move a lot of data run one at a time: 2 vCPUs, timing-sensitive watchdogs.
static SERIAL: Mutex<()> = Mutex::new(());

fn strict() -> bool {
    std::env::var("G6_EBPF_STRICT").is_ok_and(|v| v == "1")
}

fn skip_or_fail(why: &str) {
    assert!(!strict(), "G6_EBPF_STRICT=1: {why}");
    // Straight to fd 2: libtest captures eprintln! of passing tests, and a skip must show.
    let _ = writeln!(std::io::stderr(), "SKIP fastpath test: {why}");
}

/// A loaded fast path, or None (SKIP) without root / object; a load failure as root fails.
fn fast_path() -> Option<FastPath> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("not root (sockmap needs CAP_BPF + CAP_NET_ADMIN)");
        return None;
    }
    if !fastpath::object_embedded() {
        skip_or_fail("built without the eBPF object (see the g6 build warning)");
        return None;
    }
    match FastPath::load() {
        Ok(fp) => Some(fp),
        Err(e @ FastPathError::NoObject) => {
            skip_or_fail(&e.to_string());
            None
        }
        Err(e) => panic!("FastPath::load as root: {e}"),
    }
}

/// Runs `f` (serialised with the other tests) and fails if it takes longer than `secs`.
fn bounded(secs: u64, f: impl FnOnce() + Send + 'static) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (done_tx, done_rx) = mpsc::channel();
    let h = thread::spawn(move || {
        f();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        // The sender was dropped: `f` panicked; re-raise its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded {secs} s"),
    }
}

/// `client <-> pa` (proxy front) and `pb <-> server` (proxy back), all on loopback.
struct Relay {
    client: TcpStream,
    pa: TcpStream,
    pb: TcpStream,
    server: TcpStream,
}

impl Relay {
    fn new() -> Relay {
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let back = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
        let (pa, _) = front.accept().unwrap();
        let pb = TcpStream::connect(back.local_addr().unwrap()).unwrap();
        let (server, _) = back.accept().unwrap();
        for s in [&client, &pa, &pb, &server] {
            s.set_nodelay(true).unwrap();
            // Nothing legitimately waits this long; a hang becomes an error, not a stuck test.
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        Relay {
            client,
            pa,
            pb,
            server,
        }
    }
}

fn clone(s: &TcpStream) -> TcpStream {
    s.try_clone().unwrap()
}

fn wait_readable(s: &TcpStream) {
    let rev = sys::poll_one(s.as_raw_fd(), libc::POLLIN, 2000).unwrap();
    assert!(rev & libc::POLLIN != 0, "data did not arrive");
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// EOF on a proxy socket: readable, and recv() == 0 (redirected data never shows here).
fn expect_eof(s: &TcpStream) {
    let rev = sys::poll_one(s.as_raw_fd(), libc::POLLIN | libc::POLLRDHUP, 30_000).unwrap();
    assert!(rev & libc::POLLRDHUP != 0, "no EOF (revents {rev:#x})");
    assert_eq!((&*s).read(&mut [0u8; 16]).unwrap(), 0, "EOF must read as 0");
}

/// Position-dependent byte stream: loss, duplication or reordering changes the bytes.
fn pattern(seed: u64, pos: u64) -> u8 {
    ((pos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xff51_afd7_ed55_8ccd) >> 56)
        as u8
}

/// How far a writer may go, shared with the test driving it.
#[derive(Clone)]
struct WriteCap(Arc<(Mutex<u64>, Condvar)>);

impl WriteCap {
    fn new(bytes: u64) -> WriteCap {
        WriteCap(Arc::new((Mutex::new(bytes), Condvar::new())))
    }

    /// Blocks until the writer may write past `pos`; → how many bytes it may write.
    fn wait_past(&self, pos: u64) -> u64 {
        let (lock, cv) = &*self.0;
        let cap = cv.wait_while(lock.lock().unwrap(), |c| *c <= pos).unwrap();
        *cap - pos
    }

    fn lift(&self) {
        *self.0.0.lock().unwrap() = u64::MAX;
        self.0.1.notify_all();
    }
}

/// Writes `n` pattern bytes (never past `cap`, if given), then FIN.
fn spawn_writer(
    mut s: TcpStream,
    seed: u64,
    n: u64,
    progress: Option<Arc<AtomicU64>>,
    cap: Option<WriteCap>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        while pos < n {
            let allowed = cap.as_ref().map_or(u64::MAX, |c| c.wait_past(pos));
            let k = (n - pos).min(buf.len() as u64).min(allowed) as usize;
            for (i, b) in buf[..k].iter_mut().enumerate() {
                *b = pattern(seed, pos + i as u64);
            }
            let w = s.write(&buf[..k]).unwrap();
            pos += w as u64;
            if let Some(p) = &progress {
                p.store(pos, Ordering::Relaxed);
            }
        }
        s.shutdown(Shutdown::Write).unwrap();
    })
}

/// Reads to EOF, checking every byte against the pattern; returns the byte count.
fn spawn_reader(mut s: TcpStream, seed: u64) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = 0u64;
        loop {
            let k = match s.read(&mut buf) {
                Ok(0) => return pos,
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => panic!("reader {seed} at byte {pos}: {e}"),
            };
            check_pattern(seed, pos, &buf[..k], "received stream");
            pos += k as u64;
        }
    })
}

/// Waits until `sent` stops moving for `quiet`; returns its value then.
fn wait_stall(sent: &AtomicU64, quiet: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = sent.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while start.elapsed() < limit {
        thread::sleep(Duration::from_millis(20));
        let now = sent.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
    panic!("the client never blocked (sent {last})");
}

/// Asserts that `data` is the pattern at stream offset `at`; on a mismatch, says where in the
/// stream the bytes found there belong (loss, duplication and stale data look different).
fn check_pattern(seed: u64, at: u64, data: &[u8], what: &str) {
    let Some(i) = (0..data.len()).find(|&i| data[i] != pattern(seed, at + i as u64)) else {
        return;
    };
    let bad = at + i as u64;
    let window = &data[i..(i + 64).min(data.len())];
    let origin = (bad.saturating_sub(256 * MIB)..bad + 256 * MIB).find(|&q| {
        window
            .iter()
            .enumerate()
            .all(|(j, &b)| b == pattern(seed, q + j as u64))
    });
    panic!("{what} {seed}: wrong byte at offset {bad}; the bytes there belong at {origin:?}");
}
