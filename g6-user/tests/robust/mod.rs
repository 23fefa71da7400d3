//! Helpers shared by the robustness tests (`faults`, `hostile`, `soak`), on top of `support`:
//! an agent with an admin rule and its resting state (sessions, counters, descriptors,
//! memory) and a non-blocking writer that pushes until back-pressure. Network namespaces are
//! `support::netns`.
//!
//! Each of those files does `mod support; mod robust;`.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::data::{DataGen, digest_of_stream, fresh_seed};
use crate::support::{Digest, G6Proc, PreBound, WAIT_TIMEOUT, admin_cmd, wait_for, wait_until};

/// Raises this process's soft descriptor limit to its hard limit (many clients at once).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit NOFILE");
    }
    hard
}

/// What an agent at rest looks like from the outside (compared before and after a load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rest {
    /// Proxied rows of `show sessions` (SERVER/CLIENT).
    pub proxied_rows: usize,
    /// `active=` summed over every rule and server line of `show stats` except the admin
    /// rule's own (the querying connection counts there).
    pub active: u64,
    /// Descriptors of the agent's processes, pipes excepted (the relay keeps a bounded pool
    /// of idle splice pipes).
    pub fds_no_pipes: usize,
}

/// A g6 with an admin rule `admin` first, then `rules`.
pub struct Agent {
    pub g6: G6Proc,
    pub admin: SocketAddr,
    pub label: String,
}

impl Agent {
    /// Starts g6 on `admin G 127.0.0.1:* - <admin> ;` + `rules`, with `listeners` inherited.
    pub fn start(label: &str, rules: &str, listeners: &[&PreBound], extra: &[&str]) -> Agent {
        let a = PreBound::tcp("127.0.0.1:0");
        let conf = format!("admin G 127.0.0.1:* - {a} ;\n{rules}");
        let mut all = vec![&a];
        all.extend_from_slice(listeners);
        let g6 = G6Proc::start(&conf, &all, extra);
        Agent {
            g6,
            admin: a.addr(),
            label: label.to_string(),
        }
    }

    pub fn show(&self, what: &str) -> String {
        admin_cmd(self.admin, &format!("show {what}\n"))
    }

    /// Sum of `active=` in `show stats`, the admin rule's line excepted.
    pub fn active(&self) -> u64 {
        self.show("stats")
            .lines()
            .filter(|l| !l.starts_with("rule admin "))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("active="))?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    pub fn proxied_rows(&self) -> usize {
        self.show("sessions")
            .lines()
            .filter(|l| {
                let kind = l.split('|').next().unwrap_or("").trim();
                kind == "SERVER" || kind == "CLIENT"
            })
            .count()
    }

    /// Descriptors of every process of the agent, pipes excepted.
    pub fn fds_no_pipes(&self) -> usize {
        self.g6
            .pids()
            .iter()
            .flat_map(|p| fs::read_dir(format!("/proc/{p}/fd")).into_iter().flatten())
            .flatten()
            .filter(|e| {
                !fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
            })
            .count()
    }

    pub fn rest(&self) -> Rest {
        Rest {
            proxied_rows: self.proxied_rows(),
            active: self.active(),
            fds_no_pipes: self.fds_no_pipes(),
        }
    }

    /// Waits until the agent is at rest with at most the descriptors of `base` (a baseline
    /// taken just after start-up may still include a transient one); panics otherwise.
    pub fn expect_rest(&self, base: &Rest, timeout: Duration) -> Rest {
        let mut now = self.rest();
        let ok = wait_until(timeout, || {
            now = self.rest();
            now.proxied_rows == 0 && now.active == 0 && now.fds_no_pipes <= base.fds_no_pipes
        });
        assert!(
            ok,
            "[{}] not back at rest within {timeout:?}: before {base:?}, now {now:?}\n\
             --- show sessions ---\n{}--- show stats ---\n{}{}",
            self.label,
            self.show("sessions"),
            self.show("stats"),
            self.g6.diagnostics()
        );
        now
    }

    /// Resident memory of the agent's processes (kB).
    pub fn rss_kb(&self) -> u64 {
        self.g6.pids().iter().map(|p| status_kb(*p, "VmRSS")).sum()
    }

    /// Access lines (SPEC §10) so far.
    pub fn access_lines(&self) -> Vec<String> {
        self.g6
            .log_contents()
            .lines()
            .filter(|l| l.contains(" | session rule="))
            .map(String::from)
            .collect()
    }

    /// The access line of client `client` (its local address), waiting for it.
    pub fn access_of(&self, client: SocketAddr) -> String {
        let key = format!(" client={client} ");
        wait_for(WAIT_TIMEOUT, || {
            self.access_lines().into_iter().find(|l| l.contains(&key))
        })
        .unwrap_or_else(|| {
            panic!(
                "[{}] no access line for {client} {}",
                self.label,
                self.g6.diagnostics()
            )
        })
    }
}

/// Sets the soft RLIMIT_NOFILE of `pid`; returns the previous soft limit.
pub fn set_nofile_soft(pid: i32, soft: u64) -> u64 {
    use nix::sys::resource::Resource;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a null new limit only reads into `old`.
    let r = unsafe {
        libc::prlimit(
            pid,
            Resource::RLIMIT_NOFILE as _,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "prlimit get: {}", io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: valid pointers; changes only the soft limit of the agent we started.
    let r = unsafe {
        libc::prlimit(
            pid,
            Resource::RLIMIT_NOFILE as _,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit set: {}", io::Error::last_os_error());
    old.rlim_cur
}

/// `/proc/<pid>/status` field `key` in kB (0 if unreadable).
pub fn status_kb(pid: i32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Field `name=` of an access line.
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("access line without {name}=: {line}"))
}

/// Non-blocking writer of a fresh deterministic stream.
pub struct Pusher {
    g: DataGen,
    pub seed: u64,
    buf: Vec<u8>,
    off: usize,
    pub written: u64,
}

impl Default for Pusher {
    fn default() -> Self {
        Self::new()
    }
}

impl Pusher {
    pub fn new() -> Pusher {
        let seed = fresh_seed();
        Pusher {
            g: DataGen::new(seed),
            seed,
            buf: Vec::new(),
            off: 0,
            written: 0,
        }
    }

    /// Writes until the (non-blocking) socket would block or `cap` bytes in all.
    pub fn push(&mut self, mut s: &TcpStream, cap: u64) -> io::Result<u64> {
        while self.written < cap {
            if self.off == self.buf.len() {
                self.buf.resize(64 * 1024, 0);
                self.g.fill(&mut self.buf);
                self.off = 0;
            }
            let room = ((cap - self.written) as usize).min(self.buf.len() - self.off);
            match s.write(&self.buf[self.off..self.off + room]) {
                Ok(n) => {
                    self.off += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.written)
    }

    /// Pushes until the peer takes nothing for `quiet` (back-pressure); → bytes written, and
    /// the instant of the last progress. Panics if it never blocks within `cap` bytes.
    pub fn push_until_blocked(&mut self, s: &TcpStream, cap: u64, what: &str) -> (u64, Instant) {
        let quiet = Duration::from_millis(300);
        s.set_nonblocking(true).expect("O_NONBLOCK");
        let mut last = (u64::MAX, Instant::now());
        let n = wait_for(Duration::from_secs(30), || {
            let now = self
                .push(s, cap)
                .unwrap_or_else(|e| panic!("{what}: push after {} bytes: {e}", self.written));
            if now != last.0 {
                last = (now, Instant::now());
                None
            } else {
                (now > 0 && last.1.elapsed() >= quiet).then_some(now)
            }
        })
        .unwrap_or_else(|| panic!("{what}: the writer never got blocked"));
        s.set_nonblocking(false).expect("blocking again");
        assert!(n < cap, "{what}: no back-pressure after {n} bytes");
        (n, last.1)
    }

    /// True if `got` is a prefix of what was written.
    pub fn is_prefix(&self, got: Digest) -> bool {
        got.len <= self.written && got == digest_of_stream(self.seed, got.len)
    }
}
