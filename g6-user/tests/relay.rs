//! End-to-end tests of the data paths (SPEC.md §5.4, §5.5, §10): real g6 processes on
//! pre-bound listeners, real backends, and every test run once per data path
//! (`G6Proc::data_paths()`: `copy`, `splice`, `sockmap`; set `G6_TEST_PATHS` to narrow).
//!
//! * byte-exact bulk transfers (upload, download, full-duplex echo, server speaks first);
//! * half-close both ways, RST both ways, with the access line's `close=`;
//! * 500+ concurrent sessions, then no session, socket or counter left behind;
//! * a slow / absent reader: g6's memory stays bounded, nothing is lost;
//! * idle timeout (silent, refreshed, half-closed, silent server) and connect timeout;
//! * the access line's format and numbers.
//!
//! Timing tests measure from an instant the test takes *before* the event that starts g6's
//! clock, so "not before T" is exact; "not much after T" allows `LATE` for a loaded CI box.
//!
//! `sockmap_bulk_transfers_are_byte_exact` stresses back-pressured sockmap sessions (where
//! a kernel overlap bug once duplicated a segment; `G6_SOCKMAP_ROUNDS` makes it longer).

mod support;

use std::any::Any;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::client::read_digest;
use support::data::{digest_of_stream, fresh_seed};
use support::*;

const MIB: u64 = 1 << 20;
/// Relay threads given to g6 (`-t`): more than one, so sessions cross threads.
const THREADS: usize = 2;
/// The idle timeout configured in the idle tests, and the connect timeout in those tests.
const T: Duration = Duration::from_secs(1);
/// Closing earlier than T by more than this is a failure (g6 keeps ms, truncated).
const EARLY: Duration = Duration::from_millis(50);
/// Closing later than T by more than this is a failure (SPEC §8 says 100 ms; CI slack).
const LATE: Duration = Duration::from_millis(500);
/// Pacing of "traffic every 300 ms" in the idle-refresh tests.
const TICK: Duration = Duration::from_millis(300);
/// Pooled idle pipes g6 may keep per relay thread (proxy/pool.rs POOL_MAX), 2 fds each.
const POOLED_PIPES_PER_THREAD: usize = 64;

// ------------------------------------------------------------------------------------------
// Harness: a g6 with an admin rule, access-line parsing, process introspection.

/// A running g6 with an admin rule and a `warmup` rule first, started with
/// `--data-path <path> -t THREADS`; `start` returns once a session has been relayed through
/// `warmup` (the worker is serving, so timings and baselines are not skewed by start-up).
struct Rig {
    g6: G6Proc,
    _warmup: Backend,
    admin: SocketAddr,
    /// The path asked for.
    path: String,
    /// The path g6 announced in its start-up line (`… data path <p>`).
    in_use: String,
    /// Access lines already returned by `access`.
    seen: Mutex<std::collections::HashSet<String>>,
}

impl Rig {
    /// `rules`: config text after the admin rule; `listeners`: the PreBound sockets they use.
    fn start(path: &str, rules: &str, listeners: &[&PreBound]) -> Rig {
        let admin = PreBound::tcp("127.0.0.1:0");
        let warmup = Backend::echo();
        let wl = PreBound::tcp("127.0.0.1:0");
        let conf = format!(
            "admin G 127.0.0.1:* - {admin} ;\nwarmup RR *:* - {wl} > {} ;\n{rules}",
            warmup.addr()
        );
        let mut all = vec![&admin, &wl];
        all.extend_from_slice(listeners);
        let threads = THREADS.to_string();
        let g6 = G6Proc::start(&conf, &all, &["--data-path", path, "-t", &threads]);
        let mut rig = Rig {
            admin: admin.addr(),
            g6,
            _warmup: warmup,
            path: path.to_string(),
            in_use: String::new(),
            seen: Mutex::default(),
        };
        let mut c = connect(wl.addr());
        c.write_all(b"warm-up").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            read_until_end(&mut c),
            (b"warm-up".to_vec(), End::Eof),
            "[{path}] warm-up session"
        );
        let warm = rig.access(id(&c, wl.addr()));
        // The path in use: g6's start-up line (`… data path <p>`), or else what the warm-up
        // session's access line reports (SPEC §10 `path=`).
        rig.in_use = rig
            .g6
            .log_contents()
            .lines()
            .find(|l| l.contains(" started") && l.contains("data path "))
            .and_then(|l| l.rsplit("data path ").next())
            .map_or_else(|| warm.get("path").to_string(), |p| p.trim().to_string());
        // A requested user-space path that works here must be the one used (SPEC §5.6);
        // `sockmap` may fall back (SPEC §5.6: WARN, next available path).
        if path == "copy" || path == "splice" {
            assert_eq!(
                rig.in_use,
                path,
                "[{path}] g6 did not use the requested data path {}",
                rig.g6.diagnostics()
            );
        } else {
            assert!(
                ["sockmap", "splice", "copy"].contains(&rig.in_use.as_str()),
                "[{path}] unknown data path {:?}",
                rig.in_use
            );
        }
        rig.check_path(&warm);
        rig
    }

    /// The access line of the session `(client, listen)` (see [`id`]), waiting for it.
    /// Matched on both addresses (an ephemeral client port may be reused towards another
    /// listener) and never the same line twice (nor towards the same listener later).
    fn access(&self, (client, listen): (SocketAddr, SocketAddr)) -> Access {
        let (c, l) = (client.to_string(), listen.to_string());
        let mut found = wait_for(WAIT_TIMEOUT, || {
            let seen = self.seen.lock().unwrap();
            let all: Vec<Access> = access_lines(&self.g6.log_contents())
                .into_iter()
                .filter(|a| a.get("client") == c && a.get("listen") == l && !seen.contains(&a.line))
                .collect();
            (!all.is_empty()).then_some(all)
        })
        .unwrap_or_else(|| {
            panic!(
                "[{}] no access line for client {client} on {listen} within {WAIT_TIMEOUT:?} {}",
                self.path,
                self.g6.diagnostics()
            )
        });
        assert_eq!(
            found.len(),
            1,
            "[{}] one access line per client connection: {found:#?}",
            self.path
        );
        let a = found.remove(0);
        self.seen.lock().unwrap().insert(a.line.clone());
        if !self.in_use.is_empty() {
            self.check_path(&a);
        }
        a
    }

    /// The only access line, once exactly `1` session has ended.
    fn only_access(&self) -> Access {
        let mut all = self.wait_access_count(1);
        let a = all.remove(0);
        self.check_path(&a);
        a
    }

    /// Waits until exactly `n` access lines of proxied sessions are logged; returns them.
    fn wait_access_count(&self, n: usize) -> Vec<Access> {
        let all = wait_for(WAIT_TIMEOUT, || {
            // Admin connections have access lines too (rule=admin): not counted here, nor
            // the warm-up session.
            let all: Vec<Access> = access_lines(&self.g6.log_contents())
                .into_iter()
                .filter(|a| !["admin", "warmup"].contains(&a.get("rule")))
                .collect();
            (all.len() >= n).then_some(all)
        })
        .unwrap_or_else(|| {
            panic!(
                "[{}] fewer than {n} access lines {}",
                self.path,
                self.g6.diagnostics()
            )
        });
        assert_eq!(all.len(), n, "[{}] access lines: {all:#?}", self.path);
        all
    }

    /// `path=` of a relayed session is the path in use (a sockmap session may have moved
    /// to user space: SPEC §5.6).
    fn check_path(&self, a: &Access) {
        if a.get("server") == "-" {
            assert_eq!(
                a.get("path"),
                "-",
                "[{}] no server, no path: {}",
                self.path,
                a.line
            );
        } else if self.in_use == "sockmap" {
            assert!(
                ["sockmap", "splice", "copy"].contains(&a.get("path")),
                "{}",
                a.line
            );
        } else {
            assert_eq!(a.get("path"), self.in_use, "[{}] {}", self.path, a.line);
        }
    }

    /// `show sessions` lines of proxied connections (SERVER/CLIENT), as (kind, status).
    fn proxied(&self) -> Vec<(String, String)> {
        admin_cmd(self.admin, "show sessions\n")
            .lines()
            .filter_map(|l| {
                let mut f = l.split('|').map(str::trim);
                let (kind, status) = (f.next()?, f.next()?);
                matches!(kind, "SERVER" | "CLIENT").then(|| (kind.to_string(), status.to_string()))
            })
            .collect()
    }

    /// Panics unless `show sessions` lists no proxied session within `WAIT_TIMEOUT`.
    fn expect_no_sessions(&self) {
        let mut last = Vec::new();
        let gone = wait_until(WAIT_TIMEOUT, || {
            last = self.proxied();
            last.is_empty()
        });
        assert!(
            gone,
            "[{}] sessions left in `show sessions`: {last:?} {}",
            self.path,
            self.g6.diagnostics()
        );
    }

    /// `show stats json` (SPEC §9.6).
    fn stats(&self) -> serde_json::Value {
        let text = admin_cmd(self.admin, "show stats json\n");
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("show stats json: {e}: {text}"))
    }

    /// The `show stats json` object of rule `id`.
    fn rule_stats(&self, id: &str) -> serde_json::Value {
        let v = self.stats();
        v["rules"]
            .as_array()
            .expect("rules[]")
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no rule {id} in show stats json: {v}"))
    }

    /// `(rule id, server addr) → failures` from `show stats json`.
    fn failures(&self) -> BTreeMap<(String, String), u64> {
        let v = self.stats();
        let mut out = BTreeMap::new();
        for r in v["rules"].as_array().expect("rules[]") {
            for s in r["servers"].as_array().expect("servers[]") {
                out.insert(
                    (
                        r["id"].as_str().unwrap().to_string(),
                        s["addr"].as_str().unwrap().to_string(),
                    ),
                    s["failures"].as_u64().expect("failures"),
                );
            }
        }
        out
    }

    /// g6's descriptors (all its processes), classified.
    fn fds(&self) -> Fds {
        let tcp = tcp_states();
        let mut f = Fds::default();
        for pid in self.g6.pids() {
            let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for e in dir.flatten() {
                let link = fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                f.total += 1;
                if let Some(inode) = link.strip_prefix("socket:[") {
                    f.sockets += 1;
                    let inode: u64 = inode.trim_end_matches(']').parse().unwrap_or(0);
                    if tcp.get(&inode).is_some_and(|st| st != "0A") {
                        f.connections += 1;
                    }
                } else if link.starts_with("pipe:") {
                    f.pipes += 1;
                }
                f.list
                    .push(format!("{pid}:{}->{link}", e.file_name().to_string_lossy()));
            }
        }
        f.list.sort();
        f
    }

    /// Stops every g6 process (SIGSTOP) until the guard drops (SIGCONT): what peers send
    /// meanwhile, an RST included, is queued by the kernel before g6 reads any of it.
    fn freeze(&self) -> Frozen {
        let pids = self.g6.pids();
        for &p in &pids {
            kill(Pid::from_raw(p), Signal::SIGSTOP).expect("SIGSTOP g6");
        }
        let stopped = wait_until(WAIT_TIMEOUT, || {
            pids.iter().all(|p| proc_state(*p) == Some('T'))
        });
        assert!(stopped, "[{}] g6 did not stop", self.path);
        Frozen(pids)
    }

    /// Sum over g6's processes of `/proc/<pid>/status` `key` (kB).
    fn mem_kb(&self, key: &str) -> u64 {
        self.g6.pids().iter().map(|p| status_kb(*p, key)).sum()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Fds {
    total: usize,
    sockets: usize,
    pipes: usize,
    /// TCP sockets not in LISTEN state (sessions, admin connections, connect attempts).
    connections: usize,
    /// `pid:fd->link` of every descriptor, for messages.
    list: Vec<String>,
}

/// TCP socket inode → state (hex, `0A` = LISTEN) from `/proc/net/tcp{,6}`.
fn tcp_states() -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for p in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for l in fs::read_to_string(p).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if let (Some(st), Some(Ok(inode))) = (f.get(3), f.get(9).map(|i| i.parse())) {
                out.insert(inode, st.to_string());
            }
        }
    }
    out
}

/// SIGCONT for a `Rig::freeze`.
struct Frozen(Vec<i32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
        }
    }
}

/// The state letter of `/proc/<pid>/stat` (`T` = stopped).
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn status_kb(pid: i32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One access line (SPEC §10): `session rule=… client=… … close=…`.
#[derive(Debug, Clone)]
struct Access {
    line: String,
    keys: Vec<String>,
    fields: BTreeMap<String, String>,
}

impl Access {
    fn get(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("access line without {k}=: {}", self.line))
    }

    fn num(&self, k: &str) -> u64 {
        self.get(k)
            .parse()
            .unwrap_or_else(|e| panic!("access line {k}= not a number ({e}): {}", self.line))
    }

    /// Panics unless `close=`, `bytes_in=` and `bytes_out=` are as given.
    fn expect(&self, ctx: &str, close: &str, bytes_in: u64, bytes_out: u64) {
        assert_eq!(
            (
                self.get("close"),
                self.num("bytes_in"),
                self.num("bytes_out")
            ),
            (close, bytes_in, bytes_out),
            "{ctx}: access line (close, bytes_in, bytes_out): {}",
            self.line
        );
    }
}

fn access_lines(log: &str) -> Vec<Access> {
    log.lines()
        .filter_map(|l| {
            let (_, msg) = l.split_once(" | session ")?;
            let mut keys = Vec::new();
            let mut fields = BTreeMap::new();
            for kv in msg.split_whitespace() {
                let (k, v) = kv.split_once('=')?;
                keys.push(k.to_string());
                fields.insert(k.to_string(), v.to_string());
            }
            Some(Access {
                line: l.to_string(),
                keys,
                fields,
            })
        })
        .collect()
}

/// Runs `f(path)` for every data path, one after the other, each on its own thread (so a
/// `G6Proc` lives on the thread that made it); failures are reported with their path.
fn per_path(f: impl Fn(&str) + Sync) {
    run_paths(f, false);
}

/// `per_path` over the paths in `only` (those of `G6Proc::data_paths()`).
fn per_path_only(only: &[&str], f: impl Fn(&str) + Sync) {
    run_paths_filtered(f, false, |p| only.contains(&p));
}

/// Like `per_path` but all paths at once (for tests that mostly wait on timers).
fn per_path_parallel(f: impl Fn(&str) + Sync) {
    run_paths(f, true);
}

fn run_paths(f: impl Fn(&str) + Sync, parallel: bool) {
    run_paths_filtered(f, parallel, |_| true);
}

fn run_paths_filtered(f: impl Fn(&str) + Sync, parallel: bool, keep: impl Fn(&str) -> bool) {
    let paths: Vec<String> = G6Proc::data_paths()
        .into_iter()
        .filter(|p| keep(p))
        .collect();
    let f = &f;
    let failures: Vec<String> = thread::scope(|s| {
        let mut failures = Vec::new();
        let mut running = Vec::new();
        for p in &paths {
            let h = thread::Builder::new()
                .name(format!("path {p}"))
                .spawn_scoped(s, move || f(p))
                .expect("spawn path thread");
            running.push((p, h));
            if !parallel {
                let (p, h) = running.pop().unwrap();
                failures.extend(h.join().err().map(|e| format!("[{p}] {}", panic_text(&*e))));
            }
        }
        for (p, h) in running {
            failures.extend(h.join().err().map(|e| format!("[{p}] {}", panic_text(&*e))));
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "failed for some data paths:\n{}",
        failures.join("\n")
    );
}

/// A named piece of a test to run on its own thread.
type Task<'a> = (&'a str, Box<dyn FnOnce() + Send + 'a>);

/// Runs the closures concurrently on scoped threads; panics with every failure's message.
fn concurrently(tasks: Vec<Task<'_>>) {
    let failures: Vec<String> = thread::scope(|s| {
        let hs: Vec<_> = tasks
            .into_iter()
            .map(|(name, t)| (name, s.spawn(t)))
            .collect();
        hs.into_iter()
            .filter_map(|(name, h)| {
                h.join()
                    .err()
                    .map(|e| format!("{name}: {}", panic_text(&*e)))
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn panic_text(e: &(dyn Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".to_string())
}

/// `(client, listen)`: what identifies a client connection's access line (getsockname
/// stays valid after the connection is closed or reset, unlike getpeername).
fn id(c: &TcpStream, listen: SocketAddr) -> (SocketAddr, SocketAddr) {
    (c.local_addr().expect("getsockname"), listen)
}

/// Writes `n` bytes of the `seed` stream.
fn send_stream(s: &mut TcpStream, seed: u64, n: u64) {
    let mut g = DataGen::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        g.fill(&mut buf[..k]);
        s.write_all(&buf[..k])
            .unwrap_or_else(|e| panic!("write failed with {left} of {n} bytes left: {e}"));
        left -= k as u64;
    }
}

/// Reads for `quiet` expecting nothing at all (no byte, no EOF, no error).
fn expect_quiet(s: &mut TcpStream, quiet: Duration, what: &str) {
    s.set_read_timeout(Some(quiet)).expect("SO_RCVTIMEO");
    let mut b = [0u8; 256];
    let r = loop {
        match s.read(&mut b) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => break r,
        }
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("SO_RCVTIMEO");
    match r {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Ok(0) => panic!("{what}: connection closed (EOF) while it should stay open"),
        Ok(n) => panic!(
            "{what}: unexpected {n} bytes {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Err(e) => panic!("{what}: connection failed while it should stay open: {e}"),
    }
}

/// Panics unless `closed_at - from` is T within (−EARLY, +LATE).
fn expect_idle_close(what: &str, from: Instant, closed_at: Instant) {
    let d = closed_at.duration_since(from);
    assert!(
        d + EARLY >= T && d <= T + LATE,
        "{what}: closed {d:?} after the last activity; idle timeout is {T:?} \
         (allowed −{EARLY:?}/+{LATE:?})"
    );
}

/// Raises this process's descriptor limit (many concurrent clients and backends).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit NOFILE");
    }
}

/// A one-shot gate threads wait on (bounded), opened by the test.
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            open: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let g = self.open.lock().unwrap();
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |open| !*open)
            .unwrap();
        *g
    }
}

// ------------------------------------------------------------------------------------------
// Byte-exact transfers.

#[test]
fn upload_50mib_arrives_byte_exact() {
    per_path(upload_50mib_arrives_byte_exact_on);
}

fn upload_50mib_arrives_byte_exact_on(path: &str) {
    let sink = Backend::sink();
    let l = PreBound::tcp("127.0.0.1:0");
    let rig = Rig::start(
        path,
        &format!("r1 RR *:* - {l} > {} ;\n", sink.addr()),
        &[&l],
    );
    let n = 50 * MIB;
    upload_checked(l.addr(), &[&sink], n);
    rig.only_access().expect(path, "client_close", n, 0);
    rig.expect_no_sessions();
}

#[test]
fn download_50mib_arrives_byte_exact() {
    per_path(download_50mib_arrives_byte_exact_on);
}

fn download_50mib_arrives_byte_exact_on(path: &str) {
    let n = 50 * MIB;
    let generator = Backend::generator(n);
    let l = PreBound::tcp("127.0.0.1:0");
    let rig = Rig::start(
        path,
        &format!("r1 RR *:* - {l} > {} ;\n", generator.addr()),
        &[&l],
    );
    download_checked(l.addr(), &[&generator]);
    // The generator FINs first; the client closes after reading its EOF.
    rig.only_access().expect(path, "server_close", 0, n);
    generator.expect_record("saw the client's EOF", |r| r.end == End::Eof);
    rig.expect_no_sessions();
}

#[test]
fn full_duplex_echo_of_a_large_stream() {
    per_path(full_duplex_echo_of_a_large_stream_on);
}

fn full_duplex_echo_of_a_large_stream_on(path: &str) {
    let echo = Backend::echo();
    let l = PreBound::tcp("127.0.0.1:0");
    let rig = Rig::start(
        path,
        &format!("r1 RR *:* - {l} > {} ;\n", echo.addr()),
        &[&l],
    );
    let n = 32 * MIB;
    // Writer and reader run at once: both directions are in flight together.
    echo_checked(l.addr(), n);
    rig.only_access().expect(path, "client_close", n, n);
    let r = echo.expect_record("ended", |r| !r.end.is_open());
    assert_eq!(
        (r.bytes_in, r.bytes_out, r.end),
        (n, n, End::Eof),
        "[{path}]"
    );
    rig.expect_no_sessions();
}

#[test]
fn server_speaks_first_then_echoes() {
    per_path(|path| {
        let banner = b"220 relay.test ESMTP ready\r\n";
        let srv = Backend::speak_first(banner);
        let l = PreBound::tcp("127.0.0.1:0");
        let rig = Rig::start(
            path,
            &format!("r1 RR *:* - {l} > {} ;\n", srv.addr()),
            &[&l],
        );
        let mut c = connect(l.addr());
        // Nothing sent yet: the banner must still come through.
        let mut got = vec![0u8; banner.len()];
        c.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("[{path}] banner not relayed before the client spoke: {e}"));
        assert_eq!(got, banner, "[{path}]");
        let req = b"EHLO client.test\r\n";
        c.write_all(req).unwrap();
        let mut echo = vec![0u8; req.len()];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(echo, req, "[{path}]");
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_until_end(&mut c), (vec![], End::Eof), "[{path}]");
        rig.access(id(&c, l.addr())).expect(
            path,
            "client_close",
            req.len() as u64,
            (banner.len() + req.len()) as u64,
        );
    });
}

// ------------------------------------------------------------------------------------------
// Half-close.

/// Client sends, FINs; the server replies 8 MiB only after seeing that FIN.
#[test]
fn half_close_client_first_then_large_reply() {
    per_path(half_close_client_first_then_large_reply_on);
}

fn half_close_client_first_then_large_reply_on(path: &str) {
    let reply = 8 * MIB;
    let sink = Backend::sink_replying(reply);
    let l = PreBound::tcp("127.0.0.1:0");
    let rig = Rig::start(
        path,
        &format!("r1 RR *:* - {l} > {} ;\n", sink.addr()),
        &[&l],
    );
    // upload_checked: sends, shutdown(Write), reads the whole reply to EOF and checks
    // it; the sink records the upload ending in EOF (our FIN passed on).
    upload_checked(l.addr(), &[&sink], MIB);
    let r = sink.expect_record("ended", |r| !r.end.is_open());
    assert_eq!(
        (r.bytes_in, r.bytes_out, r.end),
        (MIB, reply, End::Eof),
        "[{path}]"
    );
    rig.only_access().expect(path, "client_close", MIB, reply);
    rig.expect_no_sessions();
}

/// The server sends and FINs first; the client, after reading that EOF, keeps sending
/// 8 MiB, and the server receives all of it before the client's FIN.
#[test]
fn half_close_server_first_then_client_keeps_sending() {
    per_path(half_close_server_first_then_client_keeps_sending_on);
}

fn half_close_server_first_then_client_keeps_sending_on(path: &str) {
    let down = 4 * MIB;
    let up = 8 * MIB;
    let generator = Backend::generator(down);
    let l = PreBound::tcp("127.0.0.1:0");
    let rig = Rig::start(
        path,
        &format!("r1 RR *:* - {l} > {} ;\n", generator.addr()),
        &[&l],
    );
    let mut c = connect(l.addr());
    let (got, end) = read_digest(&mut c);
    assert_eq!(
        (got, end),
        (generator.generated_digest().unwrap(), End::Eof),
        "[{path}] download"
    );
    // Half-closed by the server; our direction must still flow.
    let seed = fresh_seed();
    send_stream(&mut c, seed, up);
    c.shutdown(Shutdown::Write).unwrap();
    let want = digest_of_stream(seed, up);
    let r = generator.expect_record("received the upload then EOF", |r| !r.end.is_open());
    assert_eq!(
        (r.digest_in, r.end),
        (want, End::Eof),
        "[{path}] upload after the server's FIN"
    );
    let mut b = [0u8; 16];
    assert_eq!(c.read(&mut b).unwrap(), 0, "[{path}] nothing after the EOF");
    rig.access(id(&c, l.addr()))
        .expect(path, "server_close", up, down);
    rig.expect_no_sessions();
}

// ------------------------------------------------------------------------------------------
// Resets.

/// Sizes of the data sent right before a reset (within the initial TCP windows, so all of
/// it is queued at g6 before the RST even while g6 is stopped).
const BEFORE_RESET: [usize; 3] = [0, 4096, 32 * 1024];

/// The client sends `n` bytes and resets while g6 is frozen (bytes and RST both queued
/// before g6 reads): the server gets exactly those bytes, then a reset (not a FIN),
/// promptly.
#[test]
fn client_reset_reaches_the_server_after_the_bytes_read() {
    per_path(|path| {
        let ctl = Controlled::new();
        let l = PreBound::tcp("127.0.0.1:0");
        let rig = Rig::start(
            path,
            &format!("r1 RR *:* - {l} > {} ;\n", ctl.addr()),
            &[&l],
        );
        for (i, n) in BEFORE_RESET.into_iter().enumerate() {
            let ctx = format!("[{path}] client reset after {n} bytes");
            let mut c = connect(l.addr());
            let sc = ctl.conn(i);
            // One turn first, so the relay is surely running (not still connecting).
            sc.send(b"ready");
            let mut b = [0u8; 5];
            c.read_exact(&mut b).unwrap();
            let client_addr = id(&c, l.addr());
            let data = support::data::bytes(fresh_seed(), n);
            let frozen = rig.freeze();
            c.write_all(&data).unwrap();
            reset(c);
            let t0 = Instant::now();
            drop(frozen);
            let (got, end) = sc.read_until_end();
            let took = t0.elapsed();
            assert_eq!(got.len(), n, "{ctx}: bytes before the reset");
            assert!(got == data, "{ctx}: bytes differ");
            assert_eq!(
                end,
                End::Reset,
                "{ctx}: the server must see a reset, not {end}"
            );
            assert!(
                took < Duration::from_secs(1),
                "{ctx}: reset passed on after {took:?}"
            );
            rig.access(client_addr)
                .expect(&ctx, "client_reset", n as u64, 5);
        }
        rig.expect_no_sessions();
    });
}

/// The server sends `n` bytes and resets while g6 is frozen: the client gets exactly those
/// bytes, then a reset, promptly.
#[test]
fn server_reset_reaches_the_client_after_the_bytes_read() {
    per_path(|path| {
        let ctl = Controlled::new();
        let l = PreBound::tcp("127.0.0.1:0");
        let rig = Rig::start(
            path,
            &format!("r1 RR *:* - {l} > {} ;\n", ctl.addr()),
            &[&l],
        );
        for (i, n) in BEFORE_RESET.into_iter().enumerate() {
            let ctx = format!("[{path}] server reset after {n} bytes");
            let mut c = connect(l.addr());
            let conn = id(&c, l.addr());
            let sc = ctl.conn(i);
            c.write_all(b"hello").unwrap();
            assert_eq!(sc.read_exact(5), b"hello", "{ctx}");
            let data = support::data::bytes(fresh_seed(), n);
            let frozen = rig.freeze();
            sc.send(&data);
            sc.reset();
            let t0 = Instant::now();
            drop(frozen);
            let (got, end) = read_until_end(&mut c);
            let took = t0.elapsed();
            assert_eq!(got.len(), n, "{ctx}: bytes before the reset");
            assert!(got == data, "{ctx}: bytes differ");
            assert_eq!(
                end,
                End::Reset,
                "{ctx}: the client must see a reset, not {end}"
            );
            assert!(
                took < Duration::from_secs(1),
                "{ctx}: reset passed on after {took:?}"
            );
            rig.access(conn).expect(&ctx, "server_reset", 5, n as u64);
        }
        rig.expect_no_sessions();
    });
}

/// Non-blocking writer of the `seed` stream: pushes until the socket would block.
struct NbWriter {
    g: DataGen,
    seed: u64,
    buf: Vec<u8>,
    off: usize,
    written: u64,
}

impl NbWriter {
    fn new() -> NbWriter {
        let seed = fresh_seed();
        NbWriter {
            g: DataGen::new(seed),
            seed,
            buf: Vec::new(),
            off: 0,
            written: 0,
        }
    }

    /// Writes until EWOULDBLOCK (the socket must be non-blocking) or `cap` bytes in all.
    fn push(&mut self, mut s: &TcpStream, cap: u64) -> u64 {
        while self.written < cap {
            if self.off == self.buf.len() {
                self.buf.resize(64 * 1024, 0);
                self.g.fill(&mut self.buf);
                self.off = 0;
            }
            match s.write(&self.buf[self.off..]) {
                Ok(n) => {
                    self.off += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("non-blocking push after {} bytes: {e}", self.written),
            }
        }
        self.written
    }

    /// Pushes until the peer stops taking bytes (blocked for 300 ms); → bytes written.
    fn push_until_blocked(&mut self, s: &TcpStream, what: &str) -> u64 {
        const CAP: u64 = 256 * MIB;
        s.set_nonblocking(true).expect("O_NONBLOCK");
        let n = wait_stalled(Duration::from_secs(20), Duration::from_millis(300), || {
            self.push(s, CAP)
        })
        .unwrap_or_else(|| panic!("{what}: the writer never got blocked"));
        assert!(n < CAP, "{what}: no back-pressure after {n} bytes");
        n
    }

    /// Panics unless `got` is a prefix of what was written.
    fn check_prefix(&self, got: Digest, what: &str) {
        assert!(
            got.len <= self.written,
            "{what}: got {got}, only {} bytes were sent",
            self.written
        );
        assert_eq!(
            got,
            digest_of_stream(self.seed, got.len),
            "{what}: not a prefix of the stream sent"
        );
    }
}

/// A server socket the test drives directly (for non-blocking pushes and a reset at will).
fn accept_raw(l: &std::net::TcpListener) -> TcpStream {
    l.set_nonblocking(true).expect("O_NONBLOCK");
    let s = wait_for(WAIT_TIMEOUT, || match l.accept() {
        Ok((s, _)) => Some(s),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("accept: {e}"),
    })
    .expect("g6 never connected to the raw server");
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// The end of a session that resets in `reset_while_peer_blocked`.
#[derive(Clone, Copy)]
enum Resetter {
    Client,
    Server,
}

/// One session through `listen` to `server`: the `resetter` end pushes until g6 is blocked
/// writing towards the other end (which does not read), then resets. The session must end
/// at once as `<resetter>_reset`, and the other end see an exact prefix ended by a reset.
fn reset_while_peer_blocked(
    rig: &Rig,
    server: &std::net::TcpListener,
    listen: SocketAddr,
    path: &str,
    resetter: Resetter,
) {
    let (name, peer_name) = match resetter {
        Resetter::Client => ("client", "server"),
        Resetter::Server => ("server", "client"),
    };
    let ctx = format!("[{path}] {name} resets, {peer_name} not reading");
    let c = connect(listen);
    let s = accept_raw(server);
    let client = id(&c, listen);
    let (resetting, mut peer) = match resetter {
        Resetter::Client => (c, s),
        Resetter::Server => (s, c),
    };
    peer.write_all(b"ready").unwrap();
    let mut b = [0u8; 5];
    (&resetting).read_exact(&mut b).unwrap(); // the relay runs
    let mut w = NbWriter::new();
    w.push_until_blocked(&resetting, &ctx);
    let t0 = Instant::now();
    reset(resetting);
    let a = rig.access(client);
    let took = t0.elapsed();
    assert_eq!(a.get("close"), format!("{name}_reset"), "{ctx}: {}", a.line);
    assert!(
        took < Duration::from_secs(1),
        "{ctx}: session ended {took:?} after the reset"
    );
    let (got, end) = read_digest(&mut peer);
    assert_eq!(
        end,
        End::Reset,
        "{ctx}: the {peer_name} must see a reset after {got}"
    );
    w.check_prefix(got, &ctx);
}

/// SPEC §5.5 "reset … passed on without waiting": a reset on one side while g6 is blocked
/// writing towards the other (which does not read) still resets the other side at once;
/// what was delivered is an exact prefix and ends in a reset, not a FIN.
#[test]
fn reset_is_passed_on_while_the_other_side_is_blocked() {
    per_path(|path| {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l = PreBound::tcp("127.0.0.1:0");
        let rig = Rig::start(
            path,
            &format!("r1 RR *:* - {l} > {} ;\n", server.local_addr().unwrap()),
            &[&l],
        );
        reset_while_peer_blocked(&rig, &server, l.addr(), path, Resetter::Client);
        reset_while_peer_blocked(&rig, &server, l.addr(), path, Resetter::Server);
        rig.expect_no_sessions();
    });
}

// ------------------------------------------------------------------------------------------
// Many sessions at once.

/// 520 sessions open at the same time (all listed CONNECTED), each with its own checksummed
/// echo; afterwards no session is listed and g6's sockets are back to the baseline.
#[test]
fn many_concurrent_sessions_complete_and_leave_nothing_behind() {
    const N: usize = 520;
    const EACH: u64 = 32 * 1024;
    raise_nofile();
    per_path(|path| {
        let echo = Backend::echo();
        let l = PreBound::tcp("127.0.0.1:0");
        let rig = Rig::start(
            path,
            &format!("r1 RR *:* - {l} > {} ;\n", echo.addr()),
            &[&l],
        );
        // Baseline: at rest, g6 holds listening sockets only.
        let mut base = rig.fds();
        let at_rest = wait_until(WAIT_TIMEOUT, || {
            base = rig.fds();
            base.connections == 0
        });
        assert!(at_rest, "[{path}] g6 not at rest before the test: {base:?}");
        let addr = l.addr();
        let connected = AtomicUsize::new(0);
        let gate = Gate::new();
        let (results, listed) = thread::scope(|s| {
            let hs: Vec<_> = (0..N)
                .map(|_| {
                    thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn_scoped(s, || -> Result<(), String> {
                            let mut c = try_connect(addr, IO_TIMEOUT)
                                .map_err(|e| format!("connect: {e}"))?;
                            connected.fetch_add(1, Ordering::SeqCst);
                            if !gate.wait(3 * WAIT_TIMEOUT) {
                                return Err("the gate never opened".into());
                            }
                            let seed = fresh_seed();
                            send_stream(&mut c, seed, EACH);
                            c.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                            let (got, end) = read_digest(&mut c);
                            let want = digest_of_stream(seed, EACH);
                            if (got, &end) != (want, &End::Eof) {
                                return Err(format!("echo: got {got} ending {end}, want {want}"));
                            }
                            Ok(())
                        })
                        .expect("spawn client thread")
                })
                .collect();
            // All N sessions must be established together before any data moves.
            let all_connected = wait_until(WAIT_TIMEOUT, || connected.load(Ordering::SeqCst) == N);
            let mut listed = 0;
            if all_connected {
                wait_until(WAIT_TIMEOUT, || {
                    listed = rig
                        .proxied()
                        .iter()
                        .filter(|(k, st)| k == "SERVER" && st == "CONNECTED")
                        .count();
                    listed == N
                });
            }
            gate.open();
            let results: Vec<_> = hs
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| Err(panic_text(&*e))))
                .collect();
            (results, listed)
        });
        let failed: Vec<_> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .collect();
        assert!(
            failed.is_empty(),
            "[{path}] {} of {N} sessions failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert_eq!(listed, N, "[{path}] sessions listed CONNECTED at once");
        assert!(
            echo.wait_records(WAIT_TIMEOUT, |rs| rs.len() == N
                && rs.iter().all(|r| r.end == End::Eof
                    && r.bytes_in == EACH
                    && r.bytes_out == EACH)),
            "[{path}] echo records: {} accepted, {} open",
            echo.accepted(),
            echo.open_count()
        );
        let lines = rig.wait_access_count(N);
        for a in &lines {
            a.expect(path, "client_close", EACH, EACH);
            rig.check_path(a);
        }
        rig.expect_no_sessions();
        // Counters are exact and nothing stays active (SPEC §5.5: no counter leaks).
        let r = rig.rule_stats("r1");
        let n = N as u64;
        let sum = n * EACH;
        assert_eq!(
            (&r["active"], &r["total"], &r["bytes_in"], &r["bytes_out"]),
            (&0.into(), &n.into(), &sum.into(), &sum.into()),
            "[{path}] rule stats {r}"
        );
        let srv = &r["servers"][0];
        assert_eq!(
            (&srv["active"], &srv["total"]),
            (&0.into(), &n.into()),
            "[{path}] server stats {srv}"
        );
        // Every session socket is closed (only listeners remain) and the descriptor count is
        // back to the baseline, except pooled idle splice pipes (bounded, checked below).
        let mut now = rig.fds();
        let back = wait_until(WAIT_TIMEOUT, || {
            now = rig.fds();
            now.connections == 0 && now.total - now.pipes == base.total - base.pipes
        });
        assert!(
            back,
            "[{path}] g6 descriptors not back to baseline: before {base:?}, after {now:?}"
        );
        assert!(
            now.pipes <= base.pipes + 2 * POOLED_PIPES_PER_THREAD * THREADS,
            "[{path}] pipes kept: before {base:?}, after {now:?}"
        );
    });
}

// ------------------------------------------------------------------------------------------
// Slow or absent readers: back-pressure, bounded memory.

/// Waits until `progress()` has not changed for `quiet` (the writer is blocked); → its value.
fn wait_stalled(
    timeout: Duration,
    quiet: Duration,
    mut progress: impl FnMut() -> u64,
) -> Option<u64> {
    let mut last = (u64::MAX, Instant::now());
    wait_for(timeout, || {
        let now = progress();
        if now != last.0 {
            last = (now, Instant::now());
            None
        } else {
            (now > 0 && last.1.elapsed() >= quiet).then_some(now)
        }
    })
}

/// A client that does not read while the server pushes 256 MiB: the server ends up blocked
/// (TCP back-pressure through g6) with g6's memory flat; then the client drains and gets
/// every byte. And the reverse: a server that never reads blocks an uploading client.
#[test]
fn slow_reader_keeps_memory_bounded_and_loses_nothing() {
    per_path(slow_reader_keeps_memory_bounded_and_loses_nothing_on);
}

fn slow_reader_keeps_memory_bounded_and_loses_nothing_on(path: &str) {
    const PUSH: u64 = 256 * MIB;
    const MAX_GROWTH_KB: u64 = 32 * 1024;
    let generator = Backend::generator(PUSH);
    let hold = Backend::accept_no_read();
    let (l1, l2) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let rig = Rig::start(
        path,
        &format!(
            "down RR *:* - {l1} > {} ;\nup RR *:* - {l2} > {} ;\n",
            generator.addr(),
            hold.addr()
        ),
        &[&l1, &l2],
    );
    let rss0 = rig.mem_kb("VmRSS");
    let hwm0 = rig.mem_kb("VmHWM");

    // Phase 1: nobody reads; the generator must get blocked long before 256 MiB.
    let mut c = connect(l1.addr());
    let pushed = wait_stalled(Duration::from_secs(20), Duration::from_millis(300), || {
        generator.records().first().map_or(0, |r| r.bytes_out)
    });
    let pushed = pushed.unwrap_or_else(|| panic!("[{path}] the server never got blocked"));
    assert!(
        pushed < PUSH / 2,
        "[{path}] no back-pressure: {pushed} bytes taken while nobody reads"
    );
    let rss1 = rig.mem_kb("VmRSS");
    assert!(
        rss1 < rss0 + MAX_GROWTH_KB,
        "[{path}] g6 RSS grew from {rss0} kB to {rss1} kB holding {pushed} unread bytes"
    );

    eprintln!(
        "[{path}] slow reader: server blocked after {pushed} bytes; g6 RSS {rss0} → {rss1} kB"
    );
    // Phase 2: the client drains in small reads; memory sampled throughout.
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(rss1);
    let (digest, end) = thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rig.mem_kb("VmRSS"), Ordering::Relaxed);
                wait_until(Duration::from_millis(5), || done.load(Ordering::Relaxed));
            }
        });
        let mut sum = Checksum::new();
        let mut buf = vec![0u8; 16 * 1024];
        let end = loop {
            match c.read(&mut buf) {
                Ok(0) => break End::Eof,
                Ok(k) => sum.update(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break End::from_io(&e),
            }
        };
        done.store(true, Ordering::Relaxed);
        (sum.digest(), end)
    });
    assert_eq!(
        (digest, end),
        (generator.generated_digest().unwrap(), End::Eof),
        "[{path}] drained stream"
    );
    let (peak, hwm1) = (peak.load(Ordering::Relaxed), rig.mem_kb("VmHWM"));
    assert!(
        peak < rss0 + MAX_GROWTH_KB && hwm1 < hwm0 + MAX_GROWTH_KB,
        "[{path}] g6 memory while relaying {PUSH} bytes to a slow reader: \
             RSS {rss0} → peak {peak} kB, HWM {hwm0} → {hwm1} kB"
    );
    drop(c);

    // Reverse: the server never reads; the uploading client must get blocked.
    let mut u = connect(l2.addr());
    u.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0u64;
    let blocked = wait_stalled(Duration::from_secs(20), Duration::from_millis(300), || {
        while written < PUSH {
            match u.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("[{path}] upload to a non-reading server: {e}"),
            }
        }
        written // reaching PUSH (never blocked) fails below
    })
    .unwrap_or_else(|| panic!("[{path}] the uploading client never got blocked"));
    assert!(
        blocked < PUSH / 2,
        "[{path}] no back-pressure: {blocked} bytes taken by a server that never reads"
    );
    let rss2 = rig.mem_kb("VmRSS");
    eprintln!(
        "[{path}] non-reading server: client blocked after {blocked} bytes; \
             g6 RSS {rss0} → {rss2} kB (drain peak {peak}, HWM {hwm0} → {hwm1} kB)"
    );
    assert!(
        rss2 < rss0 + MAX_GROWTH_KB,
        "[{path}] g6 RSS grew from {rss0} kB to {rss2} kB holding {blocked} unread upload bytes"
    );
}

/// Reads `c` to its end, comparing on the fly with the `seed` stream of `len` bytes. On a
/// difference at offset x, says whether what came instead repeats the stream from d bytes
/// earlier (a segment delivered twice).
fn drain_verified(c: &mut TcpStream, seed: u64, len: u64) -> Result<(), String> {
    let mut g = DataGen::new(seed);
    let (mut buf, mut want) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut got, mut bad_at, mut after) = (0u64, None, Vec::new());
    let end = loop {
        let k = match c.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break End::from_io(&e),
        };
        if bad_at.is_none() {
            let k2 = k.min(len.saturating_sub(got) as usize);
            g.fill(&mut want[..k2]);
            if let Some(i) = (0..k).find(|&i| i >= k2 || buf[i] != want[i]) {
                bad_at = Some(got + i as u64);
                after.extend_from_slice(&buf[i..k]);
            }
        } else if after.len() < 64 {
            after.extend_from_slice(&buf[..k]);
        }
        got += k as u64;
    };
    let Some(x) = bad_at else {
        return if (got, &end) == (len, &End::Eof) {
            Ok(())
        } else {
            Err(format!("{got} of {len} bytes, then {end}"))
        };
    };
    // The stream's last MiB before x, to find where the wrong bytes come from.
    let from = x.saturating_sub(MIB);
    let mut g = DataGen::new(seed);
    let mut skip = vec![0u8; 64 * 1024];
    while g.pos() < from {
        let k = (from - g.pos()).min(skip.len() as u64) as usize;
        g.fill(&mut skip[..k]);
    }
    let window = g.take((x - from) as usize + 64);
    let probe = &after[..after.len().min(64)];
    let repeat = (1..=(x - from) as usize).find(|d| {
        let at = (x - from) as usize - d;
        window[at..].starts_with(probe)
    });
    Err(format!(
        "{got} bytes received for {len} sent ({end}); first difference at offset {x}{}",
        repeat.map_or(String::new(), |d| format!(
            ": the bytes there repeat the stream from {d} bytes earlier (a segment delivered twice)"
        ))
    ))
}

/// Back-pressured sockmap sessions stay byte-exact: readers that pause until the server is
/// blocked (so g6 leaves the fast path and relays through the psock), then drain 128 MiB;
/// 6 at a time, `G6_SOCKMAP_ROUNDS` rounds (default 2; 20 to hunt rare kernel effects).
///
/// Regression: under load the kernel now and then queued a segment overlapping bytes it
/// already had (a spurious retransmission coalesced with new data) and `tcp_read_skb` handed
/// it to the verdict whole, so one 65483-byte segment arrived twice (~3 of 60 sessions).
/// The verdict now cuts such stale prefixes (fastpath.rs proves it deterministically); here
/// the map's counters must add up to the stream exactly.
#[test]
fn sockmap_bulk_transfers_are_byte_exact() {
    let rounds: usize = std::env::var("G6_SOCKMAP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    per_path_only(&["sockmap"], |path| {
        const LEN: u64 = 128 * MIB;
        const AT_ONCE: usize = 6;
        let generator = Backend::generator(LEN);
        let (_, seed) = generator.generated().unwrap();
        let l = PreBound::tcp("127.0.0.1:0");
        let rig = Rig::start(
            path,
            &format!("r1 RR *:* - {l} > {} ;\n", generator.addr()),
            &[&l],
        );
        let addr = l.addr();
        for round in 0..rounds {
            let failures: Vec<String> = thread::scope(|s| {
                let hs: Vec<_> = (0..AT_ONCE)
                    .map(|i| {
                        let generator = &generator;
                        s.spawn(move || {
                            let mut c = connect(addr);
                            let idx = round * AT_ONCE + i;
                            wait_stalled(
                                Duration::from_secs(20),
                                Duration::from_millis(200),
                                || generator.records().get(idx).map_or(0, |r| r.bytes_out),
                            );
                            drain_verified(&mut c, seed, LEN)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .filter_map(|h| h.join().expect("reader thread").err())
                    .collect()
            });
            assert!(
                failures.is_empty(),
                "[{path}] round {round} of {AT_ONCE} back-pressured sessions: {failures:#?}"
            );
        }
        // g6's own byte counts (from the map, then from the relay) are exact too.
        for a in rig.wait_access_count(rounds * AT_ONCE) {
            a.expect(
                &format!("[{path}] back-pressured session"),
                "server_close",
                0,
                LEN,
            );
        }
    });
}

// ------------------------------------------------------------------------------------------
// Idle timeout.

/// Listener `timeout=1` (SPEC §5.5): silent sessions close at T, not before; traffic in
/// either direction every 300 ms keeps one alive for 3 s; half-closed sessions and a
/// server that never answers are reaped too; the access line says idle_timeout.
#[test]
fn idle_timeout_reaps_silent_sessions_only() {
    per_path_parallel(|path| {
        let names = [
            "silent",
            "up_ticks",
            "down_ticks",
            "client_fin",
            "server_fin",
            "no_reply",
        ];
        let ctl: Vec<Controlled> = names.iter().map(|_| Controlled::new()).collect();
        let ls: Vec<PreBound> = names.iter().map(|_| PreBound::tcp("127.0.0.1:0")).collect();
        // Both placements of the attribute: after the address, and as the list default.
        let rules: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let listen = if i % 2 == 0 {
                    format!("{} (timeout=1)", ls[i])
                } else {
                    format!("(timeout=1) {}", ls[i])
                };
                format!("{n} RR *:* - {listen} > {} ;\n", ctl[i].addr())
            })
            .collect();
        let listeners: Vec<&PreBound> = ls.iter().collect();
        let rig = Rig::start(path, &rules, &listeners);
        let rig = &rig;
        let addr = |i: usize| ls[i].addr();
        let ctl = &ctl;
        let ticks = (3 * T).as_millis().div_ceil(TICK.as_millis()) as usize;

        let silent = move || {
            let ctx = format!("[{path}] silent session");
            let t0 = Instant::now();
            let mut c = connect(addr(0));
            let sc = ctl[0].conn(0);
            let (data, end) = read_until_end(&mut c);
            let at = Instant::now();
            assert_eq!((data.len(), end), (0, End::Eof), "{ctx}: client");
            expect_idle_close(&ctx, t0, at);
            assert_eq!(
                sc.read_until_end(),
                (vec![], End::Eof),
                "{ctx}: server sees FIN"
            );
            rig.access(id(&c, addr(0)))
                .expect(&ctx, "idle_timeout", 0, 0);
        };
        let up_ticks = move || {
            let ctx = format!("[{path}] client→server byte every {TICK:?}");
            let mut c = connect(addr(1));
            let sc = ctl[1].conn(0);
            let start = Instant::now();
            let mut last = start;
            for i in 0..ticks {
                last = Instant::now();
                c.write_all(b"u").unwrap();
                expect_quiet(&mut c, TICK, &format!("{ctx}, tick {i}"));
            }
            assert!(start.elapsed() >= 3 * T, "{ctx}");
            let (data, end) = read_until_end(&mut c);
            let at = Instant::now();
            assert_eq!((data.len(), end), (0, End::Eof), "{ctx}: client");
            expect_idle_close(&ctx, last, at);
            assert_eq!(
                sc.read_until_end(),
                (vec![b'u'; ticks], End::Eof),
                "{ctx}: server"
            );
            rig.access(id(&c, addr(1)))
                .expect(&ctx, "idle_timeout", ticks as u64, 0);
        };
        let down_ticks = move || {
            let ctx = format!("[{path}] server→client byte every {TICK:?}");
            let mut c = connect(addr(2));
            let sc = ctl[2].conn(0);
            let start = Instant::now();
            let mut last = start;
            for i in 0..ticks {
                last = Instant::now();
                sc.send(b"d");
                let mut b = [0u8; 1];
                c.read_exact(&mut b)
                    .unwrap_or_else(|e| panic!("{ctx}, tick {i}: {e}"));
                expect_quiet(&mut c, TICK, &format!("{ctx}, tick {i}"));
            }
            assert!(start.elapsed() >= 3 * T, "{ctx}");
            let (data, end) = read_until_end(&mut c);
            let at = Instant::now();
            assert_eq!((data.len(), end), (0, End::Eof), "{ctx}: client");
            expect_idle_close(&ctx, last, at);
            assert_eq!(sc.read_until_end(), (vec![], End::Eof), "{ctx}: server");
            rig.access(id(&c, addr(2)))
                .expect(&ctx, "idle_timeout", 0, ticks as u64);
        };
        let client_fin = move || {
            let ctx = format!("[{path}] half-closed by the client");
            let mut c = connect(addr(3));
            let sc = ctl[3].conn(0);
            c.write_all(b"req").unwrap();
            let t = Instant::now();
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(sc.read_all(), b"req", "{ctx}: server");
            // The FIN is passed on at once, not by the idle close.
            assert!(
                t.elapsed() < T / 2,
                "{ctx}: FIN reached the server after {:?}",
                t.elapsed()
            );
            // The server stays silent with its direction open: reaped at T.
            let (data, end) = read_until_end(&mut c);
            let at = Instant::now();
            assert_eq!((data.len(), end), (0, End::Eof), "{ctx}: client");
            expect_idle_close(&ctx, t, at);
            rig.access(id(&c, addr(3)))
                .expect(&ctx, "idle_timeout", 3, 0);
        };
        let server_fin = move || {
            let ctx = format!("[{path}] half-closed by the server");
            let mut c = connect(addr(4));
            let sc = ctl[4].conn(0);
            sc.send(b"resp");
            let t = Instant::now();
            sc.shutdown_write();
            assert_eq!(
                read_until_end(&mut c),
                (b"resp".to_vec(), End::Eof),
                "{ctx}: client"
            );
            // The FIN is passed on at once, not by the idle close.
            assert!(
                t.elapsed() < T / 2,
                "{ctx}: FIN reached the client after {:?}",
                t.elapsed()
            );
            // The client stays silent with its direction open: reaped at T.
            let (data, end) = sc.read_until_end();
            let at = Instant::now();
            assert_eq!((data.len(), end), (0, End::Eof), "{ctx}: server");
            expect_idle_close(&ctx, t, at);
            rig.access(id(&c, addr(4)))
                .expect(&ctx, "idle_timeout", 0, 4);
        };
        let no_reply = move || {
            let ctx = format!("[{path}] server accepts and never answers");
            let mut c = connect(addr(5));
            let sc = ctl[5].conn(0);
            let t = Instant::now();
            c.write_all(b"request").unwrap();
            let (data, end) = read_until_end(&mut c);
            let at = Instant::now();
            assert_eq!((data.len(), end), (0, End::Eof), "{ctx}: client");
            expect_idle_close(&ctx, t, at);
            assert_eq!(
                sc.read_until_end(),
                (b"request".to_vec(), End::Eof),
                "{ctx}: server"
            );
            rig.access(id(&c, addr(5)))
                .expect(&ctx, "idle_timeout", 7, 0);
        };
        concurrently(vec![
            ("silent", Box::new(silent)),
            ("up_ticks", Box::new(up_ticks)),
            ("down_ticks", Box::new(down_ticks)),
            ("client_fin", Box::new(client_fin)),
            ("server_fin", Box::new(server_fin)),
            ("no_reply", Box::new(no_reply)),
        ]);
        rig.expect_no_sessions();
    });
}

// ------------------------------------------------------------------------------------------
// Connect timeout and fail-over.

/// `connect_timeout=1` towards a server that never accepts: fail-over to the next server
/// after ~1 s (server-list default), or refusal after ~1 s with no next server (listen-list
/// default); a refused server fails over at once (the default 5 s timeout is not waited);
/// and the idle clock only starts once a server connection is established.
#[test]
fn connect_timeout_and_refusal_fail_over() {
    per_path_parallel(|path| {
        let na = NeverAccept::new();
        let refused = RefusedAddr::new();
        let (s2, s3) = (Backend::identify("s2"), Backend::identify("s3"));
        let silent = Controlled::new();
        let ls: Vec<PreBound> = (0..4).map(|_| PreBound::tcp("127.0.0.1:0")).collect();
        let (na_a, ref_a) = (na.addr(), refused.addr());
        let rules = format!(
            "ct MS *:* - {} > (connect_timeout=1) {na_a} {} ;\n\
             cf MS *:* - (connect_timeout=1) {} > {na_a} ;\n\
             rf MS *:* - {} > {ref_a} {} ;\n\
             ci MS *:* - (timeout=1) {} > {na_a} (connect_timeout=2) {} ;\n",
            ls[0],
            s2.addr(),
            ls[1],
            ls[2],
            s3.addr(),
            ls[3],
            silent.addr()
        );
        let listeners: Vec<&PreBound> = ls.iter().collect();
        let rig = Rig::start(path, &rules, &listeners);
        let rig = &rig;
        let addr = |i: usize| ls[i].addr();
        let (s2a, s3a) = (s2.addr().to_string(), s3.addr().to_string());

        let timeout_failover = move || {
            let ctx = format!("[{path}] connect timeout → next server");
            let t0 = Instant::now();
            let (name, c) = connect_identify(addr(0));
            let took = t0.elapsed();
            assert_eq!(name, "s2", "{ctx}");
            assert!(
                took + EARLY >= T && took <= T + LATE,
                "{ctx}: served after {took:?}, want ~{T:?}"
            );
            let client = id(&c, addr(0));
            drop(c);
            let a = rig.access(client);
            assert_eq!(a.get("server"), s2a, "{ctx}: {}", a.line);
            assert_eq!(a.get("close"), "client_close", "{ctx}: {}", a.line);
        };
        let timeout_refuse = move || {
            let ctx = format!("[{path}] connect timeout, no next server");
            let t0 = Instant::now();
            let mut c = connect(addr(1));
            let client = id(&c, addr(1));
            let (data, end) = read_until_end(&mut c);
            let took = t0.elapsed();
            assert_eq!(
                (data.len(), end),
                (0, End::Eof),
                "{ctx}: refused = EOF without data"
            );
            assert!(
                took + EARLY >= T && took <= T + LATE,
                "{ctx}: refused after {took:?}, want ~{T:?}"
            );
            let a = rig.access(client);
            assert_eq!(
                (a.get("server"), a.get("close")),
                ("-", "connect_failed"),
                "{ctx}: {}",
                a.line
            );
            a.expect(&ctx, "connect_failed", 0, 0);
        };
        let refused_failover = move || {
            let ctx = format!("[{path}] refused → next server");
            let t0 = Instant::now();
            let (name, c) = connect_identify(addr(2));
            let took = t0.elapsed();
            assert_eq!(name, "s3", "{ctx}");
            assert!(
                took < LATE,
                "{ctx}: served after {took:?}; a refusal must fail over at once"
            );
            let client = id(&c, addr(2));
            drop(c);
            assert_eq!(rig.access(client).get("server"), s3a, "{ctx}");
        };
        let silent = &silent;
        let idle_after_connect = move || {
            // SPEC §5.5: the idle clock starts when the server connection is established,
            // so 2 s of connecting do not count against `timeout=1`.
            let ctx = format!("[{path}] idle timeout after a 2 s connect timeout");
            let t0 = Instant::now();
            let mut c = connect(addr(3));
            let _sc = silent.conn(0);
            let (data, end) = read_until_end(&mut c);
            let took = t0.elapsed();
            assert_eq!((data.len(), end), (0, End::Eof), "{ctx}");
            let want = 2 * T + T;
            assert!(
                took + EARLY >= want && took <= want + LATE,
                "{ctx}: closed {took:?} after connecting, want ~{want:?} (connect 2 s + idle 1 s)"
            );
            let a = rig.access(id(&c, addr(3)));
            assert_eq!(a.get("close"), "idle_timeout", "{ctx}: {}", a.line);
        };
        concurrently(vec![
            ("timeout_failover", Box::new(timeout_failover)),
            ("timeout_refuse", Box::new(timeout_refuse)),
            ("refused_failover", Box::new(refused_failover)),
            ("idle_after_connect", Box::new(idle_after_connect)),
        ]);
        // Each failed attempt is a server failure of that entry (SPEC §5.3), nothing else.
        let f = rig.failures();
        let key = |r: &str, a: &dyn ToString| (r.to_string(), a.to_string());
        assert_eq!(f.get(&key("ct", &na_a)), Some(&1), "[{path}] {f:?}");
        assert_eq!(f.get(&key("ct", &s2.addr())), Some(&0), "[{path}] {f:?}");
        assert_eq!(f.get(&key("cf", &na_a)), Some(&1), "[{path}] {f:?}");
        assert_eq!(f.get(&key("rf", &ref_a)), Some(&1), "[{path}] {f:?}");
        assert_eq!(f.get(&key("rf", &s3.addr())), Some(&0), "[{path}] {f:?}");
        assert_eq!(f.get(&key("ci", &na_a)), Some(&1), "[{path}] {f:?}");
        rig.expect_no_sessions();
    });
}

// ------------------------------------------------------------------------------------------
// The access line.

/// A normal session over IPv4 and over IPv6: every field of the access line (SPEC §10), in
/// order, with the exact addresses, path, byte counts, a plausible duration and the reason.
#[test]
fn access_line_of_a_normal_session() {
    per_path(|path| {
        let (up, reply) = (123_457u64, 300_001u64);
        let s4 = Backend::sink_replying(reply);
        let s6 = Backend::start_on(
            "[::1]:0",
            Behaviour::Sink {
                reply: Some((reply, fresh_seed())),
            },
        );
        let (l4, l6) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("[::1]:0"));
        let rig = Rig::start(
            path,
            &format!(
                "v4 RR *:* - {l4} > {} ;\nv6 RR *:* - {l6} > {} ;\n",
                s4.addr(),
                s6.addr()
            ),
            &[&l4, &l6],
        );
        for (rule, l, sink) in [("v4", &l4, &s4), ("v6", &l6, &s6)] {
            let ctx = format!("[{path}] {rule}");
            let t0 = Instant::now();
            let mut c = connect(l.addr());
            let client = id(&c, l.addr());
            // g6 connects to the sink after admitting the client, when its session clock has
            // started: the hold below then lies inside the session however late g6 accepted.
            assert!(
                wait_until(WAIT_TIMEOUT, || sink.accepted() == 1),
                "{ctx}: g6 never connected to the sink"
            );
            // Hold the session open, silent, for a known time (and check nothing arrives).
            let hold = Duration::from_millis(250);
            expect_quiet(&mut c, hold, &ctx);
            let seed = fresh_seed();
            send_stream(&mut c, seed, up);
            c.shutdown(Shutdown::Write).unwrap();
            let (got, end) = read_digest(&mut c);
            assert_eq!(
                (got, end),
                (sink.reply_digest().unwrap(), End::Eof),
                "{ctx}: reply"
            );
            drop(c);
            let a = rig.access(client);
            let seen = t0.elapsed();
            assert_eq!(
                a.keys,
                [
                    "rule",
                    "client",
                    "listen",
                    "server",
                    "path",
                    "bytes_in",
                    "bytes_out",
                    "duration_ms",
                    "close"
                ],
                "{ctx}: fields and their order: {}",
                a.line
            );
            assert_eq!(a.get("rule"), rule, "{ctx}: {}", a.line);
            assert_eq!(a.get("client"), client.0.to_string(), "{ctx}: {}", a.line);
            assert_eq!(a.get("listen"), l.addr().to_string(), "{ctx}: {}", a.line);
            assert_eq!(
                a.get("server"),
                sink.addr().to_string(),
                "{ctx}: {}",
                a.line
            );
            a.expect(&ctx, "client_close", up, reply);
            // At most `seen` (g6 accepted after t0 and logged before we saw the line); at
            // least the hold, less a few ms of skew (SO_RCVTIMEO expires on a jiffy). Enough
            // to tell ms from s or µs.
            let ms = a.num("duration_ms");
            let skew = 10;
            assert!(
                ms + skew >= hold.as_millis() as u64 && ms <= seen.as_millis() as u64,
                "{ctx}: duration_ms={ms}, the session lasted between {hold:?} (−{skew} ms) \
                 and {seen:?}"
            );
            let r = sink.expect_record("upload ended", |r| !r.end.is_open());
            assert_eq!(
                (r.digest_in, r.end),
                (digest_of_stream(seed, up), End::Eof),
                "{ctx}"
            );
            // `YYYY-MM-DD hh:mm:ss.uuuuuu | INFO  | pid:tid | session …`
            let parts: Vec<&str> = a.line.splitn(4, " | ").collect();
            assert_eq!(parts.len(), 4, "{ctx}: {}", a.line);
            let ts = parts[0].as_bytes();
            let shape_ok = ts.len() == 26
                && ts.iter().enumerate().all(|(i, b)| match i {
                    4 | 7 => *b == b'-',
                    10 => *b == b' ',
                    13 | 16 => *b == b':',
                    19 => *b == b'.',
                    _ => b.is_ascii_digit(),
                });
            assert!(shape_ok, "{ctx}: timestamp {:?}", parts[0]);
            assert_eq!(parts[1], "INFO ", "{ctx}: level: {}", a.line);
            let (pid, tid) = parts[2].split_once(':').expect("pid:tid");
            let pid: i32 = pid.parse().expect("pid");
            assert!(
                rig.g6.pids().contains(&pid),
                "{ctx}: pid {pid} is not g6's: {}",
                a.line
            );
            assert!(tid.parse::<i32>().is_ok(), "{ctx}: tid: {}", a.line);
            assert!(parts[3].starts_with("session rule="), "{ctx}: {}", a.line);
        }
        rig.expect_no_sessions();
    });
}
