//! Tests of the integration-test support library itself (tests/support): backends, clients,
//! waits, PreBound and the process launcher — mostly without g6 (client → backend directly).
//! The last two tests run the real g6 binary: `run_check_reports_ok` (`--check`) and
//! `g6_start_smoke` (serving, `G6_LISTEN_SOCKFDS`, admin, TERM).

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::client::{self, read_digest};
use support::data::{self, digest_of_stream};
use support::*;

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn data_stream_and_checksum_are_chunking_independent() {
    let whole = data::bytes(7, 100_003);
    let mut g = DataGen::new(7);
    let mut pieces = Vec::new();
    let mut sum = Checksum::new();
    for k in [0usize, 1, 3, 8, 13, 64, 1000, 4096, 5].iter().cycle() {
        let n = (*k).min(whole.len() - pieces.len());
        let p = g.take(n);
        sum.update(&p);
        pieces.extend_from_slice(&p);
        if pieces.len() == whole.len() {
            break;
        }
    }
    assert_eq!(pieces, whole);
    assert_eq!(sum.digest(), Digest::of(&whole));
    assert_eq!(digest_of_stream(7, 100_003), Digest::of(&whole));
    assert_ne!(
        data::bytes(8, 64),
        data::bytes(7, 64),
        "seeds give different streams"
    );
    // Order-sensitive and length-sensitive.
    let mut swapped = whole.clone();
    swapped.swap(10, 20_000);
    assert_ne!(Digest::of(&swapped), Digest::of(&whole));
    assert_ne!(
        Digest::of(&whole[..99]),
        Digest::of(&[&whole[..99], &[0u8][..]].concat())
    );
    assert_ne!(Digest::of(b""), Digest::of(b"\0"));
}

#[test]
fn wait_until_returns_promptly_and_is_bounded() {
    let t = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || true));
    assert!(t.elapsed() < Duration::from_millis(100));
    let t = Instant::now();
    let mut calls = 0;
    assert!(!wait_until(Duration::from_millis(100), || {
        calls += 1;
        false
    }));
    assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_secs(2));
    assert!(calls >= 3, "polls with backoff, got {calls} calls");
    let start = Instant::now();
    assert_eq!(
        wait_for(Duration::from_secs(5), || (start.elapsed()
            > Duration::from_millis(30))
        .then_some(42)),
        Some(42)
    );
}

#[test]
fn identify_announces_then_echoes_v4_and_v6() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let b = Backend::identify_on(bind, "s1");
        let (name, mut s) = client::connect_identify(b.addr());
        assert_eq!(name, "s1");
        s.write_all(b"ping").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (rest, end) = read_until_end(&mut s);
        assert_eq!((rest.as_slice(), end), (&b"ping"[..], End::Eof), "{b}");
        assert_eq!(identify(b.addr()), "s1");
        b.expect_accepted(2);
        let r = b.expect_record("ended with 4 bytes in", |r| {
            r.end == End::Eof && r.bytes_in == 4
        });
        assert_eq!(r.bytes_out, 3 + 4);
        assert!(b.label().starts_with("Identify(s1)@"), "{}", b.label());
    }
}

#[test]
fn echo_full_duplex_large_with_half_close() {
    let b = Backend::echo();
    let n = 8 << 20;
    echo_checked(b.addr(), n);
    let r = b.expect_record("echoed everything then saw EOF", |r| r.end == End::Eof);
    assert_eq!((r.bytes_in, r.bytes_out), (n, n));
    // Half-close: after our FIN the echo still sends what it has, then its FIN.
    let mut s = connect(b.addr());
    s.write_all(b"abc").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_until_end(&mut s), (b"abc".to_vec(), End::Eof));
}

#[test]
fn many_concurrent_connections_are_served() {
    let b = Backend::echo();
    let addr = b.addr();
    let hs: Vec<_> = (0..64)
        .map(|_| thread::spawn(move || echo_checked(addr, 100_000)))
        .collect();
    for h in hs {
        h.join().expect("echo client failed");
    }
    b.expect_accepted(64);
    assert!(b.wait_ended(64, WAIT_TIMEOUT));
    assert!(
        b.records()
            .iter()
            .all(|r| r.end == End::Eof && r.bytes_in == 100_000)
    );
    assert_eq!(b.open_count(), 0);
}

#[test]
fn speak_first_sends_banner_on_accept() {
    let b = Backend::speak_first(b"220 smtp ready\r\n");
    let mut s = connect(b.addr());
    let mut banner = [0u8; 16];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"220 smtp ready\r\n");
    s.write_all(b"HELO").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_until_end(&mut s), (b"HELO".to_vec(), End::Eof));
}

#[test]
fn sink_records_upload_and_identifies_the_sink() {
    let (a, b) = (Backend::sink(), Backend::sink());
    assert_eq!(upload_checked(b.addr(), &[&a, &b], 3 << 20), 1);
    assert_eq!(upload_checked(a.addr(), &[&a, &b], 1), 0);
    assert_eq!(upload_checked(a.addr(), &[&a], 0), 0);
    let r = b.expect_record("3 MiB then EOF", |r| r.end == End::Eof);
    assert_eq!((r.bytes_in, r.bytes_out), (3 << 20, 0));
}

#[test]
fn sink_replies_large_payload_after_client_fin() {
    let s = Backend::sink_replying(5 << 20);
    assert_eq!(upload_checked(s.addr(), &[&s], 1 << 20), 0);
    let r = s.expect_record("replied after EOF", |r| r.end == End::Eof);
    assert_eq!((r.bytes_in, r.bytes_out), (1 << 20, 5 << 20));
    assert_eq!(s.reply_digest().unwrap().len, 5 << 20);
}

#[test]
fn sink_records_reset() {
    let s = Backend::sink();
    let mut c = connect(s.addr());
    c.write_all(b"12345").unwrap();
    assert!(s.wait_records(WAIT_TIMEOUT, |rs| {
        rs.first().is_some_and(|r| r.bytes_in == 5)
    }));
    reset(c);
    let r = s.expect_record("ended by RST", |r| !r.end.is_open());
    assert_eq!(r.end, End::Reset, "{r:?}");
    assert_eq!(r.digest_in, Digest::of(b"12345"));
}

#[test]
fn generator_download_checked_and_keeps_reading() {
    let (g1, g2) = (Backend::generator(2 << 20), Backend::generator(2 << 20));
    assert_ne!(g1.generated_digest(), g2.generated_digest());
    assert_eq!(download_checked(g2.addr(), &[&g1, &g2]), 1);
    assert_eq!(download_checked(g1.addr(), &[&g1, &g2]), 0);
    // It reads and discards while writing: our bytes are recorded, our FIN ends it.
    let mut c = connect(g1.addr());
    c.write_all(&[1u8; 1000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (d, end) = read_digest(&mut c);
    assert_eq!((d, end), (g1.generated_digest().unwrap(), End::Eof));
    let r = g1.expect_record("1000 bytes in, EOF", |r| {
        r.bytes_in == 1000 && r.end == End::Eof
    });
    assert_eq!(r.bytes_out, 2 << 20);
}

#[test]
fn never_accept_makes_connects_time_out() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let na = NeverAccept::new_on(bind);
        assert!(na.filled() >= 1);
        let t = Instant::now();
        let e =
            TcpStream::connect_timeout(&na.addr(), SHORT).expect_err("connect must not complete");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{bind}: {e}"
        );
        assert!(
            t.elapsed() >= SHORT - Duration::from_millis(10),
            "{:?}",
            t.elapsed()
        );
    }
}

#[test]
fn refused_addr_refuses_v4_and_v6() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let r = RefusedAddr::new_on(bind);
        let e = TcpStream::connect_timeout(&r.addr(), IO_TIMEOUT).expect_err("must be refused");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{bind}: {e}");
        assert!(
            check_refused(r.addr(), SHORT)
                .unwrap_err()
                .contains("connect failed")
        );
    }
}

#[test]
fn expect_refused_accepts_only_accept_then_eof() {
    let closer = Backend::close_on_accept();
    expect_refused(closer.addr());
    let r = closer.expect_record("closed", |r| !r.end.is_open());
    assert_eq!(r.end, End::Closed);
    let echo = Backend::echo();
    assert!(
        check_refused(echo.addr(), SHORT)
            .unwrap_err()
            .contains("not refused")
    );
    let talker = Backend::speak_first(b"hi");
    assert!(
        check_refused(talker.addr(), SHORT)
            .unwrap_err()
            .contains("without data")
    );
}

#[test]
fn accept_no_read_shows_back_pressure() {
    let b = Backend::accept_no_read();
    let mut c = connect(b.addr());
    c.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let blocked = wait_until(WAIT_TIMEOUT, || {
        loop {
            match c.write(&chunk) {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => panic!("write: {e}"),
            }
            assert!(total < 64 << 20, "no back-pressure after {total} bytes");
        }
    });
    assert!(blocked);
    assert!(total < 16 << 20, "back-pressure only after {total} bytes");
    b.expect_accepted(1);
    assert_eq!(b.records()[0].bytes_in, 0);
}

#[test]
fn controlled_connections_send_fin_and_rst() {
    let ctl = Controlled::new();
    let mut c1 = connect(ctl.addr());
    let mut c2 = connect(ctl.addr());
    let s1 = ctl.conn(0);
    let s2 = ctl.conn(1);
    assert_eq!(s1.peer(), c1.local_addr().unwrap());
    s1.send(b"hello");
    c1.write_all(b"abc").unwrap();
    assert_eq!(s1.read_exact(3), b"abc");
    s1.shutdown_write();
    let mut five = [0u8; 5];
    c1.read_exact(&mut five).unwrap();
    assert_eq!(&five, b"hello");
    assert_eq!(c1.read(&mut five).unwrap(), 0, "FIN after shutdown_write");
    c1.write_all(b"more").unwrap(); // half-closed: the other direction still flows
    c1.shutdown(Shutdown::Write).unwrap();
    assert_eq!(s1.read_all(), b"more");
    s1.close();
    assert!(s1.is_closed());
    s2.reset();
    let (d, end) = read_until_end(&mut c2);
    assert_eq!((d.len(), end), (0, End::Reset));
    assert_eq!(ctl.accepted(), 2);
}

#[test]
fn admin_client_pipelines_and_reads_lines() {
    let echo = Backend::echo();
    assert_eq!(
        admin_cmd(echo.addr(), "show rules\nquit"),
        "show rules\nquit"
    );
    let mut a = AdminConn::connect(echo.addr());
    a.send("l1\nl2\nl3\npartial");
    assert_eq!(a.read_lines(2), "l1\nl2\n");
    assert_eq!(a.read_lines(1), "l3\n");
    assert_eq!(
        a.read_until(WAIT_TIMEOUT, |t| t.ends_with("partial")),
        "partial"
    );
    a.send("x\n");
    assert_eq!(a.read_until(WAIT_TIMEOUT, |t| t.ends_with('\n')), "x\n");
    assert_eq!(a.read_quiet(Duration::from_millis(100)), "");
    a.shutdown_write();
    assert!(a.is_closed_within(WAIT_TIMEOUT));
}

#[test]
fn backend_drop_is_bounded_and_closes_everything() {
    let g = Backend::generator(512 << 20);
    let e = Backend::echo();
    let h = Backend::accept_no_read();
    let (ga, ea, ha) = (g.addr(), e.addr(), h.addr());
    let mut cg = connect(ga); // never reads: the generator blocks in write
    let mut ce = connect(ea); // idle: the echo blocks in read
    let mut ch = connect(ha);
    assert!(g.wait_records(WAIT_TIMEOUT, |rs| {
        rs.first().is_some_and(|r| r.bytes_out > 0)
    }));
    assert!(e.wait_accepted(1, WAIT_TIMEOUT) && h.wait_accepted(1, WAIT_TIMEOUT));
    let t = Instant::now();
    drop((g, e, h));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    assert_eq!(read_until_end(&mut ce), (vec![], End::Eof));
    assert_eq!(read_until_end(&mut ch).1, End::Eof);
    let (_, end) = read_digest(&mut cg);
    assert!(matches!(end, End::Eof | End::Reset), "{end:?}");
    for a in [ga, ea, ha] {
        let err = TcpStream::connect_timeout(&a, IO_TIMEOUT).expect_err("listener closed");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}

/// The launcher, exercised with /bin/sh instead of g6: fd inheritance, the env format,
/// the ready pipe, hand-over of the test's copies and the kill on Drop.
#[test]
fn prebound_sockets_reach_the_child_and_die_with_it() {
    let l4 = PreBound::tcp("127.0.0.1:0");
    let l6 = PreBound::tcp("[::1]:0");
    assert!(l6.to_string().starts_with("[::1]:"));
    let fds = [l4.fd().unwrap(), l6.fd().unwrap()];
    let script = r#"d=$(dirname "$0"); printf '%s' "$G6_LISTEN_SOCKFDS" > "$d/env"
        for f in $(echo "$G6_LISTEN_SOCKFDS" | tr '|' ' '); do readlink /proc/self/fd/$f; done > "$d/fds"
        printf x > /proc/self/fd/$G6_READY_FD; exec sleep 60"#;
    let dir = G6Proc::conf_dir("");
    let script_path = dir.path().join("g6.conf");
    std::fs::write(&script_path, script).unwrap();
    let g = G6Proc::launch(
        Path::new("/bin/sh"),
        &[script_path.into()],
        dir,
        &[&l4, &l6],
        true,
    );
    assert!(l4.is_handed_over() && l6.is_handed_over());
    let env = std::fs::read_to_string(g.dir().join("env")).unwrap();
    assert_eq!(env, format!("2|{}|{}|", fds[0], fds[1]));
    let links = std::fs::read_to_string(g.dir().join("fds")).unwrap();
    assert_eq!(
        links.lines().filter(|l| l.starts_with("socket:")).count(),
        2,
        "{links}"
    );
    // Only the child holds the listeners now: connects are queued by its sockets.
    for a in [l4.addr(), l6.addr()] {
        connect(a);
    }
    assert!(g.is_running());
    assert!(g.fd_count() >= 3, "fd_count {}", g.fd_count());
    let pid = g.pid();
    drop(g);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} not reaped"
    );
    for a in [l4.addr(), l6.addr()] {
        let e = TcpStream::connect_timeout(&a, IO_TIMEOUT).expect_err("listener must be gone");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}

#[test]
fn launch_reports_early_exit_with_stderr() {
    let dir = G6Proc::conf_dir("echo boom >&2; exit 3");
    let script = dir.path().join("g6.conf");
    let r = std::panic::catch_unwind(|| {
        G6Proc::launch(Path::new("/bin/sh"), &[script.into()], dir, &[], true)
    });
    let msg = r
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .expect("launch must panic");
    assert!(
        msg.contains("exited during start-up") && msg.contains("boom"),
        "{msg}"
    );
}

#[test]
fn signal_and_wait_exit() {
    let dir = G6Proc::conf_dir("printf x > /proc/self/fd/$G6_READY_FD; exec sleep 60");
    let script = dir.path().join("g6.conf");
    let g = G6Proc::launch(Path::new("/bin/sh"), &[script.into()], dir, &[], true);
    assert_eq!(g.wait_exit(Duration::from_millis(50)), None);
    g.signal(Signal::SIGTERM);
    let st = g.wait_exit(WAIT_TIMEOUT).expect("exits on TERM");
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    assert_eq!(g.exit_status(), Some(st), "status stays available");

    let dir = G6Proc::conf_dir("exit 5");
    let script = dir.path().join("g6.conf");
    let g = G6Proc::launch(Path::new("/bin/sh"), &[script.into()], dir, &[], false);
    assert_eq!(g.wait_exit(WAIT_TIMEOUT).and_then(|s| s.code()), Some(5));
}

#[test]
fn data_paths_are_known() {
    let p = G6Proc::data_paths();
    assert!(
        !p.is_empty()
            && p.iter()
                .all(|p| ["copy", "splice", "sockmap"].contains(&p.as_str())),
        "{p:?}"
    );
}

/// Needs `g6 --check` (SPEC §2).
#[test]
fn run_check_reports_ok() {
    let conf = "admin G 127.0.0.1:* - 127.0.0.1:8600 ;\nr1 RR *:* - 127.0.0.1:18601 > 127.0.0.1:18701 127.0.0.1:18702 ;\n";
    let (code, out, err) = G6Proc::run_check(conf);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(": ok, 2 rules, 2 listen addresses, 2 server entries"),
        "stdout: {out}\nstderr: {err}"
    );
    let (code, _, err) = G6Proc::run_check("r1 RR *:* - 127.0.0.1:0 > 127.0.0.1:1 ;\n");
    assert_eq!(code, 1, "port 0 is invalid; stderr: {err}");
    assert!(err.contains("error"), "{err}");
}

/// End to end with the real agent: pre-bound listeners adopted, readiness, balancing across
/// two `Identify` backends, the admin client, TERM → exit 0 → listeners gone.
#[test]
fn g6_start_smoke() {
    let (s1, s2) = (Backend::identify("s1"), Backend::identify("s2"));
    for path in G6Proc::data_paths() {
        let a = PreBound::tcp("127.0.0.1:0");
        let l = PreBound::tcp("[::1]:0");
        let conf = format!(
            "admin G 127.0.0.1:* - {a} ;\nr1 RR *:* - {l} > {} {} ;\n",
            s1.addr(),
            s2.addr()
        );
        let g6 = G6Proc::start(&conf, &[&a, &l], &["--data-path", &path]);
        assert!(a.is_handed_over() && l.is_handed_over());
        let mut names = [identify(l.addr()), identify(l.addr())];
        names.sort();
        assert_eq!(names, ["s1", "s2"], "{path} {}", g6.diagnostics());
        let rules = admin_cmd(a.addr(), "show rules\n");
        assert!(rules.starts_with("admin | G |"), "{rules}");
        assert!(g6.fd_count() >= 2, "{}", g6.fd_count());
        g6.signal(Signal::SIGTERM);
        let st = g6.wait_exit(WAIT_TIMEOUT);
        let st = st.unwrap_or_else(|| panic!("no exit on TERM {}", g6.diagnostics()));
        assert_eq!(st.code(), Some(0), "{}", g6.diagnostics());
        for addr in [a.addr(), l.addr()] {
            let e = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect_err("listener closed");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{addr}");
        }
    }
}
