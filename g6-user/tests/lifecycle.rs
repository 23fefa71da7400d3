//! Process model and signals (SPEC.md §3), end to end with the real binary and real signals:
//! TERM drain, INT, worker crash and restart, USR1 log reopen, HUP reload, USR2 hand-over,
//! and restarts under continuous load with every transfer checksummed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

fn pid_file_pid(g6: &G6Proc) -> Option<i32> {
    std::fs::read_to_string(g6.dir().join("g6.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    // Zombies still have /proc entries; look at the state letter.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn signal_pid(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill {pid} {sig}: {e}"));
}

/// Starts g6 with `--pid-file <dir>/g6.pid`, so tests can follow USR2 successors.
fn start(conf: &str, listeners: &[&PreBound]) -> G6Proc {
    start_with(conf, listeners, &[])
}

/// `start` with more flags.
fn start_with(conf: &str, listeners: &[&PreBound], extra: &[&str]) -> G6Proc {
    let dir = G6Proc::conf_dir(conf);
    let pid_file = dir.path().join("g6.pid");
    let pid_file = pid_file.to_str().unwrap();
    let mut flags = vec!["--data-path", "copy", "--pid-file", pid_file];
    flags.extend(extra);
    let args = G6Proc::standard_args(dir.path(), &flags);
    let g6 = G6Proc::launch(
        std::path::Path::new(support::g6proc::G6_BIN),
        &args,
        dir,
        listeners,
        true,
    );
    assert!(
        wait_until(WAIT_TIMEOUT, || pid_file_pid(&g6).is_some()),
        "no pid file\n{}",
        g6.diagnostics()
    );
    g6
}

/// Sends `n` bytes through `addr` to an echo server and checks them; Err on any failure.
fn echo_once(addr: SocketAddr, n: usize, seed: u64) -> Result<(), String> {
    let mut s = try_connect(addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let data = support::data::bytes(seed, n);
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    if got != data {
        return Err("echo differs".into());
    }
    Ok(())
}

#[test]
fn term_closes_listeners_at_once_and_drains_sessions() {
    let echo = Backend::echo();
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = start(&format!("r RR *:* - {l} > {} ;\n", echo.addr()), &[&l]);
    let mut s = connect(l.addr());
    s.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    g6.signal(Signal::SIGTERM);
    // New clients are refused by the kernel at once (not left hanging in a backlog).
    assert!(
        wait_until(WAIT_TIMEOUT, || matches!(
            TcpStream::connect_timeout(&l.addr(), Duration::from_millis(500)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )),
        "listener still open after TERM\n{}",
        g6.diagnostics()
    );
    // The session in flight keeps working.
    s.write_all(b"during").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    assert!(g6.is_running(), "exited with a session in flight");
    drop(s);
    let status = g6
        .wait_exit(WAIT_TIMEOUT)
        .expect("g6 did not exit after its last session");
    assert_eq!(status.code(), Some(0));
    assert!(!g6.dir().join("g6.pid").exists(), "pid file left behind");
}

/// `--drain-timeout` [ext]: TERM's drain lasts at most that long; then the sessions left are
/// closed (each logs `close=shutdown`) and the process exits 0. On every data path.
#[test]
fn drain_timeout_closes_the_sessions_left_then_exits() {
    for path in ["copy", "splice", "sockmap"] {
        let echo = Backend::echo();
        let l = PreBound::tcp("127.0.0.1:0");
        let g6 = start_with(
            &format!("r RR *:* - {l} > {} ;\n", echo.addr()),
            &[&l],
            &["--data-path", path, "--drain-timeout", "1"],
        );
        let mut s = connect(l.addr());
        let client = s.local_addr().unwrap();
        let mut buf = [0u8; 6];
        s.write_all(b"before").unwrap();
        s.read_exact(&mut buf).unwrap();
        let t0 = Instant::now();
        g6.signal(Signal::SIGTERM);
        // Still served while the drain lasts.
        s.write_all(b"during").unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"during", "[{path}]");
        // Then closed: EOF, not before the timeout.
        assert_eq!(
            s.read(&mut buf).unwrap(),
            0,
            "[{path}] EOF at the drain timeout"
        );
        let closed_after = t0.elapsed();
        assert!(
            closed_after + Duration::from_millis(100) >= Duration::from_secs(1),
            "[{path}] closed {closed_after:?} after TERM, before the 1 s drain timeout"
        );
        let status = g6
            .wait_exit(WAIT_TIMEOUT)
            .expect("g6 did not exit after the drain timeout");
        assert_eq!(status.code(), Some(0), "[{path}]");
        let log = g6.log_contents();
        assert!(
            log.contains("drain timeout (1 s): closing the 1 sessions left"),
            "[{path}] {log}"
        );
        let access = access_line(&log, client);
        assert!(access.ends_with(" close=shutdown"), "[{path}] {access}");
    }
}

/// Rule `r`'s access line for `client` in `log`.
fn access_line(log: &str, client: SocketAddr) -> &str {
    log.lines()
        .find(|l| l.contains(&format!("| session rule=r client={client} ")))
        .unwrap_or_else(|| panic!("no access line for {client}: {log}"))
}

/// A session still connecting when the drain runs out stops there: no server failure is
/// counted or logged, no other server is tried, and it logs `close=shutdown`.
#[test]
fn drain_timeout_stops_a_session_still_connecting() {
    let (hangs, s1) = (NeverAccept::new(), Backend::identify("s1"));
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let g6 = start_with(
        &format!(
            "admin G 127.0.0.1:* - {a} ;\nr RR *:* - ( connect_timeout = 60 ) {l} > {} {} ;\n",
            hangs.addr(),
            s1.addr()
        ),
        &[&a, &l],
        &["--drain-timeout", "1"],
    );
    let mut c = connect(l.addr());
    let client = c.local_addr().unwrap();
    // Round robin tries the first server first; its connect hangs (SPEC §9.4: CONNECTING).
    assert!(
        wait_until(WAIT_TIMEOUT, || admin_cmd(a.addr(), "show sessions\n")
            .lines()
            .any(
                |l| l.contains(" CONNECTING | ") && l.contains(&client.to_string())
            )),
        "the session never showed CONNECTING: {}",
        admin_cmd(a.addr(), "show sessions\n")
    );
    g6.signal(Signal::SIGTERM);
    assert_eq!(
        c.read(&mut [0u8; 1]).unwrap(),
        0,
        "EOF at the drain timeout"
    );
    let status = g6.wait_exit(WAIT_TIMEOUT).expect("g6 did not exit");
    assert_eq!(status.code(), Some(0));
    let log = g6.log_contents();
    let access = access_line(&log, client);
    assert!(
        access.contains(" server=- ") && access.ends_with(" close=shutdown"),
        "{access}"
    );
    assert!(
        !log.contains("failed:"),
        "a server failure was logged: {log}"
    );
    assert_eq!(s1.accepted(), 0, "another server was tried");
}

#[test]
fn int_stops_at_once_even_with_sessions() {
    let echo = Backend::echo();
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = start(&format!("r RR *:* - {l} > {} ;\n", echo.addr()), &[&l]);
    let mut s = connect(l.addr());
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    g6.signal(Signal::SIGINT);
    let status = g6.wait_exit(WAIT_TIMEOUT).expect("INT did not stop g6");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn killed_worker_is_restarted_and_monitor_stays() {
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = start(&format!("r RR *:* - {l} > {} ;\n", s1.addr()), &[&l]);
    let monitor = g6.pid();
    let worker =
        wait_for(WAIT_TIMEOUT, || children(monitor).first().copied()).expect("no worker process");
    assert_eq!(identify(l.addr()), "s1");
    signal_pid(worker, Signal::SIGKILL);
    // The monitor waits 1 s, then starts a worker on the same sockets; clients wait in the
    // backlog meanwhile.
    let new_worker = wait_for(WAIT_TIMEOUT, || {
        children(monitor)
            .into_iter()
            .find(|&p| p != worker && alive(p))
    })
    .expect("worker not restarted");
    assert_eq!(identify(l.addr()), "s1");
    assert!(alive(monitor), "monitor died");
    assert_ne!(new_worker, worker);
    let died = format!("worker {worker} died (killed by SIGKILL)");
    let started = format!("monitor: worker {new_worker} started");
    g6.expect_log("crash and restart logged", WAIT_TIMEOUT, |t| {
        t.contains(&died) && t.contains(&started)
    });
    // The wait, by the monitor's own clock (the log's timestamps): the test's clock would add
    // its own scheduling delays.
    let log = g6.log_contents();
    let at = |text: &str| {
        log.lines()
            .find(|l| l.contains(text))
            .and_then(log_time_s)
            .unwrap_or_else(|| panic!("no timestamped line with {text:?} in {log}"))
    };
    let waited = (at(&started) - at(&died)).rem_euclid(86_400.0);
    assert!(
        (1.0..2.0).contains(&waited),
        "restarted {waited:.3} s after the crash, expected 1 s"
    );
}

/// Seconds since midnight of a log line's timestamp (`YYYY-MM-DD HH:MM:SS.ffffff | …`).
fn log_time_s(line: &str) -> Option<f64> {
    let time = line.split(' ').nth(1)?;
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

#[test]
fn usr1_reopens_a_moved_log_file() {
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = start(&format!("r RR *:* - {l} > {} ;\n", s1.addr()), &[&l]);
    let log = g6.log_path();
    let rotated = g6.dir().join("g6.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    g6.signal(Signal::SIGUSR1);
    assert!(
        wait_until(WAIT_TIMEOUT, || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("USR1: log file reopened"))),
        "no new log file after USR1\n{}",
        g6.diagnostics()
    );
    // The worker reopens when the monitor tells it, after the line above: wait until no g6
    // process holds the moved file any more.
    let holds_rotated = || {
        g6.pids().iter().any(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .into_iter()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .any(|target| target == rotated)
        })
    };
    assert!(
        wait_until(WAIT_TIMEOUT, || !holds_rotated()),
        "a g6 process still writes to the moved file\n{}",
        g6.diagnostics()
    );
    // The worker writes to the new file too.
    assert_eq!(identify(l.addr()), "s1");
    assert!(wait_until(WAIT_TIMEOUT, || std::fs::read_to_string(&log)
        .is_ok_and(|t| t.contains("session rule=r"))));
    assert!(
        !std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("session rule=r")
    );
}

/// A free loopback port for a listener a reload adds (the config needs a number).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn hup_reloads_rules_servers_and_listeners_without_dropping_sessions() {
    let s1 = Backend::identify("s1");
    let s2 = Backend::identify("s2");
    let echo = Backend::echo();
    let a = PreBound::tcp("127.0.0.1:0");
    let l = PreBound::tcp("127.0.0.1:0");
    let e = PreBound::tcp("127.0.0.1:0");
    let base = format!(
        "admin G 127.0.0.1:* - {a} ;\nr RR *:* - {l} > {} ;\necho RR *:* - {e} > {} ;\n",
        s1.addr(),
        echo.addr()
    );
    let g6 = start(&base, &[&a, &l, &e]);
    assert_eq!(identify(l.addr()), "s1");
    let mut long = connect(e.addr());
    long.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    long.read_exact(&mut b).unwrap();

    // Rule r now balances to s2 only, and a new rule listens on a new address; the echo
    // rule and its listener go away.
    let added = free_addr();
    g6.write_conf(&format!(
        "admin G 127.0.0.1:* - {a} ;\nr RR *:* - {l} > {} ;\nnew RR *:* - {added} > {} ;\n",
        s2.addr(),
        s1.addr()
    ));
    g6.signal(Signal::SIGHUP);
    g6.expect_log("reload", WAIT_TIMEOUT, |t| t.contains("HUP: reloaded"));
    assert!(wait_until(WAIT_TIMEOUT, || identify(l.addr()) == "s2"));
    assert!(wait_until(WAIT_TIMEOUT, || try_connect(added, IO_TIMEOUT)
        .is_ok_and(|mut s| read_line(&mut s) == "s1")));
    assert!(
        wait_until(WAIT_TIMEOUT, || matches!(
            TcpStream::connect_timeout(&e.addr(), Duration::from_millis(500)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )),
        "removed listener still open"
    );
    // The session that started under the old config finishes on its old entries.
    long.write_all(b"b").unwrap();
    long.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    // Kept rule: counters survive (r served 1 session before, at least 2 after).
    let stats = admin_cmd(a.addr(), "show stats\n");
    let line = stats.lines().find(|x| x.starts_with("rule r RR")).unwrap();
    let total: u64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(total >= 2, "counters reset by reload: {line}");
}

#[test]
fn hup_with_a_bad_config_keeps_the_running_one() {
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = start(&format!("r RR *:* - {l} > {} ;\n", s1.addr()), &[&l]);
    g6.write_conf(&format!("r RR *:* - {l} > {}:99999 ;\n", s1.addr().ip()));
    g6.signal(Signal::SIGHUP);
    g6.expect_log("rejected reload", WAIT_TIMEOUT, |t| {
        t.contains("| ERROR |") && t.contains("invalid port '99999'") && t.contains("keeping")
    });
    assert_eq!(identify(l.addr()), "s1");
    // An unbindable new listener is rejected the same way.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    g6.write_conf(&format!(
        "r RR *:* - {l} > {} ;\nx RR *:* - {} > {} ;\n",
        s1.addr(),
        busy.local_addr().unwrap(),
        s1.addr()
    ));
    g6.signal(Signal::SIGHUP);
    g6.expect_log("rejected bind", WAIT_TIMEOUT, |t| {
        t.contains("Address already in use") && t.contains("keeping")
    });
    assert_eq!(identify(l.addr()), "s1");
}

#[test]
fn usr2_hands_over_to_a_new_generation() {
    let s1 = Backend::identify("s1");
    let echo = Backend::echo();
    let l = PreBound::tcp("127.0.0.1:0");
    let e = PreBound::tcp("127.0.0.1:0");
    let conf = format!(
        "r RR *:* - {l} > {} ;\necho RR *:* - {e} > {} ;\n",
        s1.addr(),
        echo.addr()
    );
    let g6 = start(&conf, &[&l, &e]);
    let old = g6.pid();
    let mut long = connect(e.addr());
    long.write_all(b"1").unwrap();
    let mut b = [0u8; 1];
    long.read_exact(&mut b).unwrap();
    g6.signal(Signal::SIGUSR2);
    let new = wait_for(WAIT_TIMEOUT, || pid_file_pid(&g6).filter(|&p| p != old))
        .expect("no successor took over the pid file");
    assert_eq!(identify(l.addr()), "s1");
    // The old generation keeps its session alive until it ends, then exits.
    long.write_all(b"2").unwrap();
    long.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"2");
    assert!(alive(old), "old generation exited with a session in flight");
    drop(long);
    assert!(
        wait_until(WAIT_TIMEOUT, || !alive(old)),
        "old generation did not exit after draining"
    );
    assert!(alive(new));
    assert_eq!(identify(l.addr()), "s1");
    signal_pid(new, Signal::SIGTERM);
    assert!(wait_until(WAIT_TIMEOUT, || !alive(new)));
}

#[test]
fn usr2_with_a_bad_config_keeps_the_old_generation() {
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = start(&format!("r RR *:* - {l} > {} ;\n", s1.addr()), &[&l]);
    g6.write_conf("r RR *:* - oops ;\n");
    g6.signal(Signal::SIGUSR2);
    g6.expect_log("failed successor", WAIT_TIMEOUT, |t| {
        t.contains("| ERROR |") && t.contains("failed before serving")
    });
    assert_eq!(pid_file_pid(&g6), Some(g6.pid()));
    assert_eq!(identify(l.addr()), "s1");
    assert!(g6.is_running());
}

/// The PID a log line was written by (`… | LEVEL | pid:tid | message`).
fn logged_by(line: &str) -> Option<i32> {
    line.split(" | ")
        .nth(2)?
        .split(':')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The successor PID the old monitor logged at USR2.
fn started_successor(log: &str) -> i32 {
    log.lines()
        .find_map(|l| l.split("USR2: started successor ").nth(1))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no successor logged\n{log}"))
}

/// Sets both RLIMIT_NOFILE limits of `pid` (a child inherits them through fork and exec).
fn set_nofile(pid: i32, limit: u64) {
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: valid pointer; changes the limits of a g6 monitor this test started.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit({pid}): {}", std::io::Error::last_os_error());
}

/// g6 with `-t 8` on one listener to `Identify` backend "s1": (s1, listener, g6, its worker).
fn start_with_8_relay_threads() -> (Backend, PreBound, G6Proc, i32) {
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let conf = format!("r RR *:* - {l} > {} ;\n", s1.addr());
    let g6 = start_with(&conf, &[&l], &["-t", "8"]);
    let worker = children(g6.pid())[0];
    (s1, l, g6, worker)
}

#[test]
fn usr2_successor_whose_worker_cannot_start_leaves_the_old_generation_serving() {
    let (_s1, l, g6, old_worker) = start_with_8_relay_threads();
    let old = g6.pid();
    // The successor inherits this limit and raises its soft limit only up to it: 24 leaves
    // its monitor room (it holds ~9) but not its worker, whose 8 relay runtimes need ~50.
    // So the fork succeeds and the worker fails after it.
    set_nofile(old, 24);
    g6.signal(Signal::SIGUSR2);
    g6.expect_log(
        "the old monitor seeing the failed successor",
        WAIT_TIMEOUT,
        |t| t.contains("USR2: successor") && t.contains("failed before serving"),
    );
    let log = g6.log_contents();
    let successor = started_successor(&log);
    let failed = log
        .lines()
        .find(|l| l.contains("worker: cannot start the relay threads: Too many open files"))
        .and_then(logged_by)
        .unwrap_or_else(|| panic!("the successor's worker did not fail as set up\n{log}"));
    assert!(
        ![old, old_worker, successor].contains(&failed),
        "the failure was not in the successor's worker ({failed})\n{log}"
    );
    assert!(
        log.contains(&format!(
            "worker {failed} failed before serving (exit status 1); exiting without the G6_READY_FD byte"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "USR2: successor {successor} failed before serving (exit status 1); still serving"
        )),
        "{log}"
    );
    assert!(
        !log.contains("stops accepting"),
        "the old generation stepped back\n{log}"
    );
    assert!(wait_until(WAIT_TIMEOUT, || !alive(successor)));
    assert_eq!(pid_file_pid(&g6), Some(old));
    assert!(alive(old_worker), "the old worker was stopped");
    for _ in 0..5 {
        assert_eq!(identify(l.addr()), "s1");
    }
}

#[test]
fn usr2_old_generation_steps_back_only_once_the_successors_worker_serves() {
    // 8 relay threads: the successor's worker needs a while between its fork and serving.
    let (_s1, l, g6, old_worker) = start_with_8_relay_threads();
    g6.signal(Signal::SIGUSR2);
    g6.expect_log("the old generation stepping back", WAIT_TIMEOUT, |t| {
        t.contains("this generation stops accepting and drains")
    });
    // Every log line is one O_APPEND write, so the file's order is the order of events.
    let log = g6.log_contents();
    let successor = started_successor(&log);
    let lines: Vec<&str> = log.lines().collect();
    let stepped_back = lines
        .iter()
        .position(|l| l.contains(&format!("USR2: successor {successor} is serving")))
        .unwrap_or_else(|| panic!("no hand-over to {successor}\n{log}"));
    let new_worker_serving = lines.iter().position(|l| {
        logged_by(l)
            .is_some_and(|pid| pid != old_worker && l.contains(&format!("worker {pid} serving")))
    });
    assert!(
        new_worker_serving.is_some_and(|i| i < stepped_back),
        "the old generation stepped back before the successor's worker served\n{log}"
    );
    assert_eq!(identify(l.addr()), "s1");
}

#[test]
fn restarts_and_reloads_under_load_lose_nothing() {
    const ROUNDS: usize = 20;
    let echo = Backend::echo();
    let l = PreBound::tcp("127.0.0.1:0");
    let conf = format!("r RR *:* - {l} > {} ;\n", echo.addr());
    let g6 = start(&conf, &[&l]);
    let addr = l.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // Long sessions opened before the restarts, used throughout.
    let mut long: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                // Bounded: stops when told, or after a generous count.
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    if let Err(e) = echo_once(addr, 16 * 1024, (c << 32) | i) {
                        failures.lock().unwrap().push(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let mut current = g6.pid();
    for round in 0..ROUNDS {
        let before = done.load(Ordering::Relaxed);
        signal_pid(current, Signal::SIGHUP);
        let hups = round + 1;
        assert!(
            wait_until(WAIT_TIMEOUT, || g6
                .log_contents()
                .matches("HUP: reloaded")
                .count()
                >= hups),
            "HUP {round} not applied"
        );
        signal_pid(current, Signal::SIGUSR2);
        let prev = current;
        current = wait_for(WAIT_TIMEOUT, || pid_file_pid(&g6).filter(|&p| p != prev))
            .unwrap_or_else(|| panic!("USR2 {round}: no successor\n{}", g6.diagnostics()));
        // Load keeps flowing through each generation.
        assert!(wait_until(WAIT_TIMEOUT, || done.load(Ordering::Relaxed) > before + 2));
        for (i, s) in long.iter_mut().enumerate() {
            let tag = [b'a' + (round % 26) as u8, i as u8];
            s.write_all(&tag).unwrap();
            let mut got = [0u8; 2];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, tag, "long session {i} broken in round {round}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} transfers failed: {:?}",
        failures.len(),
        done.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    drop(long);
    signal_pid(current, Signal::SIGTERM);
    assert!(wait_until(WAIT_TIMEOUT, || !alive(current)));
}

#[test]
fn systemd_is_notified_of_readiness_main_pid_reloads_and_stop() {
    use std::os::unix::net::UnixDatagram;
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify.set_read_timeout(Some(WAIT_TIMEOUT)).unwrap();
    let dir = G6Proc::conf_dir(&format!("r RR *:* - {l} > {} ;\n", s1.addr()));
    let args = G6Proc::standard_args(dir.path(), &["--data-path", "copy"]);
    let g6 = {
        let mut args = args;
        // Pass NOTIFY_SOCKET through `env` so no other test's process sees it.
        args.insert(0, G6_BIN_OS.into());
        args.insert(0, format!("NOTIFY_SOCKET={}", sock_path.display()).into());
        G6Proc::launch(
            std::path::Path::new("/usr/bin/env"),
            &args,
            dir,
            &[&l],
            true,
        )
    };
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no readiness notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", g6.pid())), "{msg}");
    assert_eq!(identify(l.addr()), "s1");
    // A worker restarted after a crash serves without announcing the start again.
    let crashed = children(g6.pid())[0];
    signal_pid(crashed, Signal::SIGKILL);
    g6.expect_log("the restarted worker serving", WAIT_TIMEOUT, |t| {
        t.lines().any(|l| {
            logged_by(l).is_some_and(|p| p != crashed && l.contains(&format!("worker {p} serving")))
        })
    });
    // A reload is announced and its end reported, also when it fails (the running config
    // stays): RELOADING=1 with the monotonic time, then READY=1 with the outcome.
    let mut next = || {
        let n = notify.recv(&mut buf).expect("no notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    for (config_ok, outcome) in [
        (true, "HUP: reloaded"),
        (false, "keeping the running config"),
    ] {
        if !config_ok {
            std::fs::write(g6.dir().join("g6.conf"), "not a config\n").unwrap();
        }
        g6.signal(Signal::SIGHUP);
        let msg = next();
        assert!(
            msg.contains("RELOADING=1\n") && msg.contains("MONOTONIC_USEC="),
            "{msg}"
        );
        let msg = next();
        assert!(msg.contains("READY=1") && msg.contains(outcome), "{msg}");
        assert!(!msg.contains("RELOADING=1"), "{msg}");
    }
    assert_eq!(identify(l.addr()), "s1");
    g6.signal(Signal::SIGTERM);
    let n = notify.recv(&mut buf).expect("no stop notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        msg.contains("STOPPING=1") && !msg.contains("READY=1"),
        "{msg}"
    );
    assert_eq!(g6.wait_exit(WAIT_TIMEOUT).and_then(|s| s.code()), Some(0));
}

const G6_BIN_OS: &str = support::g6proc::G6_BIN;

/// `Cpus_allowed_list` of every thread of `pid`, by thread name.
fn thread_cpus(pid: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    out
}

#[test]
fn set_cpu_affinity_pins_relay_threads() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs 2 CPUs to tell pinned threads apart");
        return;
    }
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = G6Proc::start(
        &format!("r RR *:* - {l} > {} ;\n", s1.addr()),
        &[&l],
        &["--data-path", "copy", "--set-cpu-affinity", "-t", "1"],
    );
    let worker = wait_for(WAIT_TIMEOUT, || children(g6.pid()).first().copied()).unwrap();
    assert_eq!(identify(l.addr()), "s1");
    let threads = thread_cpus(worker);
    // Relay thread 0 → the second allowed CPU; every other thread → the first.
    let relay: Vec<_> = threads.iter().filter(|(n, _)| n == "g6-relay").collect();
    assert_eq!(relay.len(), 1, "{threads:?}");
    assert_eq!(relay[0].1, "1", "{threads:?}");
    let main = threads
        .iter()
        .find(|(n, _)| n == "g6")
        .expect("main thread");
    assert_eq!(main.1, "0", "{threads:?}");
}

/// `-t 3`: every relay thread accepts on the same listening socket (thread 0 on it, the others
/// on duplicates) and serves the clients it accepted; `show sessions` still lists the socket
/// once, and TERM closes it in every thread (else the kernel would keep accepting).
#[test]
fn relay_threads_share_each_listener_and_all_close_it_on_term() {
    let echo = Backend::echo();
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let g6 = G6Proc::start(
        &format!(
            "admin G 127.0.0.1:* - {a} ;\nr RR *:* - {l} > {} ;\n",
            echo.addr()
        ),
        &[&a, &l],
        &["--data-path", "copy", "-t", "3"],
    );
    let worker = wait_for(WAIT_TIMEOUT, || children(g6.pid()).first().copied()).unwrap();
    let relay_threads = || {
        thread_cpus(worker)
            .iter()
            .filter(|(n, _)| n == "g6-relay")
            .count()
    };
    // The worker starts its threads after the monitor reported ready.
    assert!(
        wait_until(WAIT_TIMEOUT, || relay_threads() == 3),
        "{:?}",
        thread_cpus(worker)
    );
    // Concurrent clients: the threads race on accept; every client is served.
    let clients: Vec<_> = (0..24u64)
        .map(|i| {
            let addr = l.addr();
            std::thread::spawn(move || echo_once(addr, 20_000, i))
        })
        .collect();
    for c in clients {
        c.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", g6.diagnostics()));
    }
    let text = admin_cmd(a.addr(), "show sessions\n");
    let listen_lines = text
        .lines()
        .filter(|x| x.contains("LISTEN") && x.contains(&format!("- {l}(#")))
        .count();
    assert_eq!(listen_lines, 1, "{text}");
    g6.signal(Signal::SIGTERM);
    assert!(
        wait_until(WAIT_TIMEOUT, || matches!(
            TcpStream::connect_timeout(&l.addr(), Duration::from_millis(500)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )),
        "a relay thread kept the listener open after TERM\n{}",
        g6.diagnostics()
    );
    let status = g6.wait_exit(WAIT_TIMEOUT).expect("g6 did not exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn usr2_successor_applies_a_changed_config() {
    let s1 = Backend::identify("s1");
    let s2 = Backend::identify("s2");
    let kept = PreBound::tcp("127.0.0.1:0");
    let removed = PreBound::tcp("127.0.0.1:0");
    let g6 = start(
        &format!(
            "k RR *:* - {kept} > {} ;\nr RR *:* - {removed} > {} ;\n",
            s1.addr(),
            s1.addr()
        ),
        &[&kept, &removed],
    );
    let old = g6.pid();
    let added = free_addr();
    g6.write_conf(&format!(
        "k RR *:* - {kept} > {} ;\nn RR *:* - {added} > {} ;\n",
        s2.addr(),
        s1.addr()
    ));
    g6.signal(Signal::SIGUSR2);
    wait_for(WAIT_TIMEOUT, || pid_file_pid(&g6).filter(|&p| p != old))
        .expect("no successor took over");
    // The kept listener was inherited (never closed) and now follows the new config.
    assert!(wait_until(WAIT_TIMEOUT, || identify(kept.addr()) == "s2"));
    assert!(wait_until(WAIT_TIMEOUT, || try_connect(added, IO_TIMEOUT)
        .is_ok_and(|mut s| read_line(&mut s) == "s1")));
    assert!(
        wait_until(WAIT_TIMEOUT, || matches!(
            TcpStream::connect_timeout(&removed.addr(), Duration::from_millis(500)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )),
        "the removed listener is still open after the hand-over"
    );
}
