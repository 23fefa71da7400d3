//! Soak (issue #8): thousands of sessions of random sizes (0 B – 8 MiB, log-uniform), with
//! half-closes in random order and resets from either side, through one agent per data path
//! at once; every byte checked on arrival. Afterwards each agent is back at rest: no
//! session listed, every `active=` 0, descriptors as before, RSS within `RSS_SLACK_KB`.
//!
//! * `soak_ci` — `CI_SESSIONS` sessions, run by `cargo test`;
//! * `soak_full` (ignored) — `G6_SOAK_SESSIONS` (default 10 000) sessions, bounded by
//!   `G6_SOAK_MAX_SECS` (default 1200): `cargo xtask soak [--sessions N] [--secs S]`.
//!
//! `G6_SOAK_SEED` replays a run (the seed is printed). Each session: the client sends a
//! 56-byte header (its plan), the server answers one byte, then both run the plan.

mod robust;
mod support;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use robust::{Agent, field, raise_nofile};
use socket2::SockRef;
use support::data::DataGen;
use support::*;

/// Sessions of the CI variant, spread over the data paths.
const CI_SESSIONS: usize = 1000;
/// Largest session size per direction (sizes are log-uniform below it, 5% are empty).
const MAX_SIZE: u64 = 8 << 20;
/// Clients running at once per agent.
const PER_AGENT: usize = 6;
/// Relay threads of each agent.
const THREADS: &str = "2";
/// RSS an agent may keep above its baseline after the soak: up to 64 pooled 64 KiB buffers
/// per relay thread (proxy/pool.rs) plus allocator slack.
const RSS_SLACK_KB: u64 = 12 * 1024;
/// A session that makes no progress for this long fails.
const STALL: Duration = Duration::from_secs(30);

/// Data paths left out of the CI variant while a bug there is open: none. (sockmap was, for
/// the duplication after a back-pressure fallback and README's sockmap defect 3; both fixed.)
const CI_SKIP_PATHS: &[&str] = &[];

#[test]
fn soak_ci() {
    run(CI_SESSIONS, Duration::from_secs(300), CI_SKIP_PATHS);
}

#[test]
#[ignore = "long: cargo xtask soak"]
fn soak_full() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("G6_SOAK_SESSIONS", 10_000) as usize;
    let secs = env("G6_SOAK_MAX_SECS", 1200);
    run(n, Duration::from_secs(secs), &[]);
}

// ------------------------------------------------------------------------------------------
// Plans.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Both sides send their bytes then FIN; `order` says who waits for whose FIN.
    Normal,
    /// The client resets after sending `cut` bytes.
    ClientReset,
    /// The server resets after sending `cut` bytes.
    ServerReset,
}

/// Who starts sending when, in a `Normal` session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Together,
    /// The server sends only after the client's FIN (request, then response).
    ClientFirst,
    /// The client sends only after the server's FIN (server speaks first).
    ServerFirst,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    id: u64,
    kind: Kind,
    order: Order,
    up: u64,
    down: u64,
    seed_up: u64,
    seed_down: u64,
    cut: u64,
    /// The client stops reading for `PAUSE` once it has this many bytes (back-pressure
    /// through the agent; sockmap pairs leave the fast path); `u64::MAX` = never.
    pause_at: u64,
}

/// How long a pausing client stops reading.
const PAUSE: Duration = Duration::from_millis(300);

const HEADER: usize = 56;

impl Plan {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        let kind = match self.kind {
            Kind::Normal => 0u8,
            Kind::ClientReset => 1,
            Kind::ServerReset => 2,
        };
        let order = match self.order {
            Order::Together => 0u8,
            Order::ClientFirst => 1,
            Order::ServerFirst => 2,
        };
        h[0] = kind;
        h[1] = order;
        for (i, v) in [
            self.id,
            self.up,
            self.down,
            self.seed_up,
            self.seed_down,
            self.cut,
        ]
        .iter()
        .enumerate()
        {
            h[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        h
    }

    fn decode(h: &[u8; HEADER]) -> Option<Plan> {
        let w = |i: usize| u64::from_le_bytes(h[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        Some(Plan {
            kind: match h[0] {
                0 => Kind::Normal,
                1 => Kind::ClientReset,
                2 => Kind::ServerReset,
                _ => return None,
            },
            order: match h[1] {
                0 => Order::Together,
                1 => Order::ClientFirst,
                2 => Order::ServerFirst,
                _ => return None,
            },
            id: w(0),
            up: w(1),
            down: w(2),
            seed_up: w(3),
            seed_down: w(4),
            cut: w(5),
            pause_at: u64::MAX,
        })
    }
}

/// xorshift64*: plans are reproducible from `G6_SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// 0 with 5%, else log-uniform in [1, MAX_SIZE].
    fn size(&mut self) -> u64 {
        if self.below(20) == 0 {
            return 0;
        }
        let bits = 64 - MAX_SIZE.leading_zeros() as u64; // 24 for 8 MiB
        let e = self.below(bits);
        ((1u64 << e) + self.below(1u64 << e)).min(MAX_SIZE)
    }

    fn plan(&mut self, id: u64) -> Plan {
        let kind = match self.below(10) {
            0 => Kind::ClientReset,
            1 => Kind::ServerReset,
            _ => Kind::Normal,
        };
        let order = match self.below(3) {
            0 => Order::Together,
            1 => Order::ClientFirst,
            _ => Order::ServerFirst,
        };
        let (up, down) = (self.size(), self.size());
        let cut = match kind {
            Kind::ClientReset => self.below(up + 1),
            Kind::ServerReset => self.below(down + 1),
            Kind::Normal => 0,
        };
        let pause_at = if self.below(20) == 0 {
            self.below(down + 1)
        } else {
            u64::MAX
        };
        Plan {
            id,
            kind,
            order,
            up,
            down,
            seed_up: self.next(),
            seed_down: self.next(),
            cut,
            pause_at,
        }
    }
}

// ------------------------------------------------------------------------------------------
// One side of a session: send a stream (then FIN or RST) while checking what arrives.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Then {
    Fin,
    Reset,
}

#[derive(Clone, Debug)]
struct Outcome {
    /// Bytes received, all equal to the expected stream up to `bad_at`.
    got: u64,
    bad_at: Option<u64>,
    /// How the receiving side ended (`Open` if this side reset first).
    end: End,
    /// Bytes sent.
    sent: u64,
}

struct Side<'a> {
    s: &'a TcpStream,
    out: DataGen,
    out_len: u64,
    then: Then,
    /// Send only once the peer's FIN has been read.
    after_eof: bool,
    inc: DataGen,
    inc_max: u64,
    /// Stop reading for `PAUSE` after this many bytes received.
    pause_at: u64,
}

impl Side<'_> {
    fn run(mut self) -> Outcome {
        let s = self.s;
        s.set_nonblocking(true).expect("O_NONBLOCK");
        let mut o = Outcome {
            got: 0,
            bad_at: None,
            end: End::Open,
            sent: 0,
        };
        let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut pending: (Vec<u8>, usize) = (Vec::new(), 0);
        let mut out_done = false;
        let mut last = Instant::now();
        let mut pause: Option<Instant> = None;
        loop {
            if pause.is_none() && o.got >= self.pause_at {
                pause = Some(Instant::now() + PAUSE);
            }
            let paused = pause.is_some_and(|t| Instant::now() < t);
            let can_send = !out_done && (!self.after_eof || o.end != End::Open);
            if can_send && o.sent == self.out_len && pending.1 == pending.0.len() {
                out_done = true;
                match self.then {
                    Then::Fin => {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                    Then::Reset => {
                        let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
                        return o; // the caller's drop sends the RST
                    }
                }
            }
            let want_read = o.end == End::Open && !paused;
            let want_write = !out_done && (!self.after_eof || o.end != End::Open);
            if !want_read && !want_write && !paused {
                return o;
            }
            let mut events = 0;
            if want_read {
                events |= libc::POLLIN;
            }
            if want_write {
                events |= libc::POLLOUT;
            }
            let mut p = libc::pollfd {
                fd: s.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let wait_ms = if paused { 10 } else { 200 };
            let r = unsafe { libc::poll(&mut p, 1, wait_ms) };
            if r <= 0 {
                if paused {
                    last = Instant::now();
                    continue;
                }
                if last.elapsed() > STALL {
                    o.end = End::Error(format!("stalled for {STALL:?}"));
                    return o;
                }
                continue;
            }
            last = Instant::now();
            if want_read && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                loop {
                    match (&*s).read(&mut buf) {
                        Ok(0) => {
                            o.end = End::Eof;
                            break;
                        }
                        Ok(n) => {
                            if o.bad_at.is_none() {
                                let k = (n as u64).min(self.inc_max.saturating_sub(o.got)) as usize;
                                self.inc.fill(&mut want[..k]);
                                if let Some(i) = (0..n).find(|&i| i >= k || buf[i] != want[i]) {
                                    o.bad_at = Some(o.got + i as u64);
                                }
                            }
                            o.got += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            o.end = End::from_io(&e);
                            return o;
                        }
                    }
                }
            }
            if want_write && p.revents & libc::POLLOUT != 0 {
                loop {
                    if pending.1 == pending.0.len() {
                        let k = (self.out_len - o.sent).min(64 * 1024) as usize;
                        if k == 0 {
                            break;
                        }
                        pending.0.resize(k, 0);
                        self.out.fill(&mut pending.0);
                        pending.1 = 0;
                    }
                    match (&*s).write(&pending.0[pending.1..]) {
                        Ok(n) => {
                            pending.1 += n;
                            o.sent += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            o.end = End::from_io(&e);
                            return o;
                        }
                    }
                }
                // `sent` counts bytes handed to the kernel; the generator ran ahead by the
                // pending rest, which is written before anything new.
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The server: reads a plan, acks, runs its side, reports.

#[derive(Default)]
struct Reports {
    by_id: Mutex<HashMap<u64, Result<Outcome, String>>>,
    cv: Condvar,
}

impl Reports {
    fn put(&self, id: u64, r: Result<Outcome, String>) {
        self.by_id.lock().unwrap().insert(id, r);
        self.cv.notify_all();
    }

    fn take(&self, id: u64, timeout: Duration) -> Result<Outcome, String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.by_id.lock().unwrap();
        loop {
            if let Some(r) = g.remove(&id) {
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no server report within {timeout:?}"));
            }
            g = self.cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }
}

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    reports: Arc<Reports>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind soak server");
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reports = Arc::new(Reports::default());
        let (st, rp) = (stop.clone(), reports.clone());
        let acceptor = thread::spawn(move || {
            let mut handlers: Vec<thread::JoinHandle<()>> = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let rp = rp.clone();
                        handlers.retain(|h| !h.is_finished());
                        handlers.push(
                            thread::Builder::new()
                                .stack_size(256 * 1024)
                                .spawn(move || serve(s, &rp))
                                .expect("spawn server thread"),
                        );
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        wait_readable(l.as_raw_fd(), 50);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        Server {
            addr,
            stop,
            reports,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

/// poll(2) for readability of `fd`, at most `ms` milliseconds.
fn wait_readable(fd: i32, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}

fn serve(s: TcpStream, reports: &Reports) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut h = [0u8; HEADER];
    if (&s).read_exact(&mut h).is_err() {
        return; // a client that reset before its plan arrived: nothing to report
    }
    let Some(plan) = Plan::decode(&h) else {
        return;
    };
    if (&s).write_all(b"K").is_err() {
        reports.put(plan.id, Err("server: cannot send the ack".into()));
        return;
    }
    let (out_len, then) = match plan.kind {
        Kind::ServerReset => (plan.cut, Then::Reset),
        _ => (plan.down, Then::Fin),
    };
    let o = Side {
        s: &s,
        out: DataGen::new(plan.seed_down),
        out_len,
        then,
        after_eof: plan.kind == Kind::Normal && plan.order == Order::ClientFirst,
        inc: DataGen::new(plan.seed_up),
        inc_max: plan.up,
        pause_at: u64::MAX,
    }
    .run();
    reports.put(plan.id, Ok(o));
}

// ------------------------------------------------------------------------------------------
// The client side of one session, and the checks of both sides.

/// The source IP of session `id`: its own address in 127.0.0.0/8, so that its access line
/// is found by the client IP alone (client ports are reused over thousands of sessions).
fn source_ip(id: u64) -> std::net::Ipv4Addr {
    let n = id % 15_625_000;
    let d = |k: u64| (1 + k % 250) as u8;
    std::net::Ipv4Addr::new(127, d(n / 62_500), d(n / 250), d(n))
}

fn connect_as(id: u64, to: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((source_ip(id), 0)).into())?;
    sock.connect_timeout(&to.into(), IO_TIMEOUT)?;
    let s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    Ok(s)
}

/// Runs one session through `listen`; Ok((client address, bytes received by both ends)).
fn session(listen: SocketAddr, plan: Plan, reports: &Reports) -> Result<(SocketAddr, u64), String> {
    let s = connect_as(plan.id, listen).map_err(|e| format!("connect: {e}"))?;
    let me = s.local_addr().unwrap();
    (&s).write_all(&plan.encode())
        .map_err(|e| format!("header: {e}"))?;
    let mut ack = [0u8; 1];
    (&s).read_exact(&mut ack).map_err(|e| format!("ack: {e}"))?;
    let (out_len, then) = match plan.kind {
        Kind::ClientReset => (plan.cut, Then::Reset),
        _ => (plan.up, Then::Fin),
    };
    let c = Side {
        s: &s,
        out: DataGen::new(plan.seed_up),
        out_len,
        then,
        after_eof: plan.kind == Kind::Normal && plan.order == Order::ServerFirst,
        inc: DataGen::new(plan.seed_down),
        inc_max: plan.down,
        pause_at: plan.pause_at,
    }
    .run();
    drop(s);
    let srv = reports.take(plan.id, STALL + WAIT_TIMEOUT)?;
    let fail = |what: &str| Err(format!("{what}: client {c:?}, server {srv:?}"));
    if c.bad_at.is_some() || srv.bad_at.is_some() {
        return fail("bytes differ");
    }
    match plan.kind {
        Kind::Normal => {
            if (c.got, &c.end, srv.got, &srv.end) != (plan.down, &End::Eof, plan.up, &End::Eof) {
                return fail("incomplete");
            }
        }
        Kind::ClientReset => {
            if srv.end != End::Reset || srv.got > plan.cut {
                return fail("the server must see a prefix then a reset");
            }
        }
        Kind::ServerReset => {
            if c.end != End::Reset || c.got > plan.cut {
                return fail("the client must see a prefix then a reset");
            }
        }
    }
    Ok((me, c.got + srv.got))
}

// ------------------------------------------------------------------------------------------
// The run.

struct PathRun {
    path: String,
    agent: Agent,
    server: Server,
    listen: SocketAddr,
    base: robust::Rest,
    rss0: u64,
    done: AtomicUsize,
    bytes: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Client address → plan, for the access-line checks.
    clients: Mutex<Vec<(SocketAddr, Plan)>>,
}

fn run(sessions: usize, limit: Duration, skip: &[&str]) {
    raise_nofile();
    let seed = std::env::var("G6_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| support::data::fresh_seed() ^ std::process::id() as u64);
    let paths: Vec<String> = data_paths()
        .into_iter()
        .filter(|p| !skip.contains(&p.as_str()))
        .collect();
    eprintln!("soak: {sessions} sessions over {paths:?}, G6_SOAK_SEED={seed}");
    let runs: Vec<PathRun> = paths
        .iter()
        .map(|p| {
            let server = Server::start();
            let l = PreBound::tcp("127.0.0.1:0");
            let agent = Agent::start(
                p,
                &format!("soak RR *:* - {l} > {} ;\n", server.addr),
                &[&l],
                &["--data-path", p, "-t", THREADS, "--log-level", "INFO"],
            );
            PathRun {
                path: p.clone(),
                listen: l.addr(),
                server,
                base: agent.rest(),
                rss0: 0,
                agent,
                done: AtomicUsize::new(0),
                bytes: AtomicU64::new(0),
                failures: Mutex::default(),
                clients: Mutex::default(),
            }
        })
        .collect();
    // Warm-up: a few sessions each, then the baselines (thread pools and buffers exist).
    let mut rng = Rng(seed | 1);
    let mut runs = runs;
    for r in &mut runs {
        for i in 0..8u64 {
            let mut plan = rng.plan(sessions as u64 + i);
            plan.kind = Kind::Normal;
            session(r.listen, plan, &r.server.reports)
                .unwrap_or_else(|e| panic!("[{}] warm-up: {e}", r.path));
        }
        r.base = r.agent.expect_rest(&r.agent.rest(), WAIT_TIMEOUT);
        r.rss0 = r.agent.rss_kb();
    }
    let plans: Vec<Plan> = (0..sessions as u64).map(|i| rng.plan(i)).collect();
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    thread::scope(|s| {
        for r in &runs {
            for _ in 0..PER_AGENT {
                let (plans, next) = (&plans, &next);
                thread::Builder::new()
                    .stack_size(512 * 1024)
                    .spawn_scoped(s, move || {
                        loop {
                            if t0.elapsed() > limit || r.failures.lock().unwrap().len() >= 5 {
                                return;
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(plan) = plans.get(i) else { return };
                            match session(r.listen, *plan, &r.server.reports) {
                                Ok((me, moved)) => {
                                    r.clients.lock().unwrap().push((me, *plan));
                                    r.done.fetch_add(1, Ordering::Relaxed);
                                    r.bytes.fetch_add(moved, Ordering::Relaxed);
                                }
                                Err(e) => r.failures.lock().unwrap().push(format!(
                                    "session {} {:?}/{:?} up={} down={} cut={}: {e}",
                                    plan.id, plan.kind, plan.order, plan.up, plan.down, plan.cut
                                )),
                            }
                        }
                    })
                    .expect("spawn soak client");
            }
        }
    });
    let took = t0.elapsed();
    let mut problems = Vec::new();
    for r in &runs {
        let f = r.failures.lock().unwrap();
        if !f.is_empty() {
            problems.push(format!(
                "[{}] {} failed sessions: {:#?}",
                r.path,
                f.len(),
                *f
            ));
        }
    }
    let done: usize = runs.iter().map(|r| r.done.load(Ordering::Relaxed)).sum();
    let bytes: u64 = runs.iter().map(|r| r.bytes.load(Ordering::Relaxed)).sum();
    eprintln!(
        "soak: {done} of {sessions} sessions ok in {took:.1?}, {:.1} MiB checked",
        bytes as f64 / (1 << 20) as f64
    );
    assert!(problems.is_empty(), "seed {seed}: {}", problems.join("\n"));
    assert_eq!(
        done, sessions,
        "seed {seed}: only {done} sessions within {limit:?}"
    );
    for r in &runs {
        check_rest(r);
    }
}

/// Access lines, sessions, counters, descriptors and memory of one agent after the soak.
fn check_rest(r: &PathRun) {
    let ctx = format!("[{}]", r.path);
    let now = r.agent.expect_rest(&r.base, WAIT_TIMEOUT);
    let clients = r.clients.lock().unwrap();
    let want = clients.len() + 8;
    let mut lines = Vec::new();
    wait_until(WAIT_TIMEOUT, || {
        lines = r.agent.access_lines();
        lines.retain(|l| field(l, "rule") == "soak");
        lines.len() >= want
    });
    if lines.is_empty() {
        // Seen once in a full run: say why the log could not be read.
        let log = r.agent.g6.log_path();
        panic!(
            "{ctx} no access line in {}: {:?}",
            log.display(),
            std::fs::metadata(&log).map(|m| m.len())
        );
    }
    assert_eq!(lines.len(), want, "{ctx} access lines");
    let by_client: HashMap<String, &String> = lines
        .iter()
        .map(|l| {
            let client = field(l, "client");
            (client[..client.rfind(':').unwrap()].to_string(), l)
        })
        .collect();
    let mut bad = Vec::new();
    for (me, plan) in clients.iter() {
        let line = by_client
            .get(&me.ip().to_string())
            .unwrap_or_else(|| panic!("{ctx} no access line for session {} ({me})", plan.id));
        let close = field(line, "close");
        let ok = match plan.kind {
            Kind::Normal => {
                ["client_close", "server_close"].contains(&close)
                    && field(line, "bytes_in") == (HEADER as u64 + plan.up).to_string()
                    && field(line, "bytes_out") == (1 + plan.down).to_string()
            }
            Kind::ClientReset => close == "client_reset",
            Kind::ServerReset => close == "server_reset",
        };
        if !ok {
            bad.push(format!("{:?}/{:?}: {line}", plan.kind, plan.order));
        }
    }
    assert!(
        bad.is_empty(),
        "{ctx} {} access lines disagree with their session: {:#?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    let rss = r.agent.rss_kb();
    eprintln!(
        "{ctx} at rest: {now:?} (before {:?}); RSS {} kB → {rss} kB",
        r.base, r.rss0
    );
    assert!(
        rss <= r.rss0 + RSS_SLACK_KB,
        "{ctx} RSS {rss} kB after the soak, baseline {} kB (+{RSS_SLACK_KB} kB allowed)",
        r.rss0
    );
}
