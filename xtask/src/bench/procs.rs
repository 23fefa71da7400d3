//! External processes and /proc readings for the benchmark.
//!
//! * [`Proc`]: a server or proxy kept for the whole run, in its own process group, with a
//!   parent-death signal; stopped by PID on drop (its signal, then SIGKILL to it and to the
//!   descendants it had).
//! * [`run_timeout`]: a one-shot command (wrk, iperf3, apt-get, cargo…) with a deadline; its
//!   CPU time comes from `wait4`'s rusage.
//! * CPU jiffies of the whole machine (`/proc/stat`) and of every process, VmRSS/Pss, and the
//!   TCP sockets of `/proc/net/tcp`.
//! * Ctrl-C / TERM only set a flag: every wait polls it, so errors unwind through the guards.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag that every wait checks ([`check_interrupted`]).
pub fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in small steps, failing early on Ctrl-C.
pub fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// `prog arg…` for messages and the report.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Own process group (a terminal's Ctrl-C reaches only us, and we stop the children by PID)
/// and a parent-death signal (nothing outlives a killed benchmark).
fn detach(cmd: &mut Command, death_signal: i32) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong);
            Ok(())
        });
    }
}

/// Non-blocking wait: Some(status) once the child has ended (and is reaped), with its rusage.
fn try_reap(pid: i32) -> Option<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    if r == pid {
        Some((status, ru))
    } else if r < 0 {
        // ECHILD: already reaped elsewhere; report as ended.
        Some((0, ru))
    } else {
        None
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}

pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// A long-running server or proxy, stopped by PID when dropped.
pub struct Proc {
    pub name: String,
    pub pid: i32,
    stop_signal: i32,
    ended: Option<String>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout/stderr appended to `log`; `stop_signal` stops it (and is its
    /// parent-death signal).
    pub fn spawn(name: &str, cmd: &mut Command, stop_signal: i32, log: &Path) -> Result<Proc> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        detach(cmd, stop_signal);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {}", show(cmd)))?;
        Ok(Proc {
            name: name.to_string(),
            pid: child.id() as i32,
            stop_signal,
            ended: None,
            log: log.to_path_buf(),
        })
    }

    /// None while it runs, else how it ended.
    pub fn ended(&mut self) -> Option<String> {
        if self.ended.is_none()
            && let Some((status, _)) = try_reap(self.pid)
        {
            self.ended = Some(describe_status(status));
        }
        self.ended.clone()
    }

    /// The process and all its descendants (nginx workers, the g6 worker).
    pub fn tree(&self) -> Vec<i32> {
        tree_of(self.pid, &scan_procs())
    }

    /// Last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stop signal, up to 5 s, then SIGKILL; descendants still alive then get SIGKILL too.
    pub fn stop(&mut self) {
        if self.ended().is_some() {
            return;
        }
        let descendants: Vec<(i32, String)> = {
            let procs = scan_procs();
            tree_of(self.pid, &procs)
                .into_iter()
                .filter(|&p| p != self.pid)
                .filter_map(|p| procs.get(&p).map(|s| (p, s.comm.clone())))
                .collect()
        };
        kill(self.pid, self.stop_signal);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ended().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.ended().is_none() {
            eprintln!("    {} (pid {}) did not stop: SIGKILL", self.name, self.pid);
            kill(self.pid, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.ended().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Descendants: give them a moment to follow their parent, then SIGKILL by PID if the
        // same program still runs under that PID.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let alive: Vec<&(i32, String)> = descendants
                .iter()
                .filter(|(p, comm)| proc_comm(*p).as_deref() == Some(comm.as_str()))
                .collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for (p, _) in alive {
                    kill(*p, libc::SIGKILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Processes started for the run; dropped (stopped) in reverse order of start.
#[derive(Default)]
pub struct Procs(Vec<Proc>);

impl Procs {
    pub fn add(&mut self, p: Proc) -> usize {
        self.0.push(p);
        self.0.len() - 1
    }
    pub fn get(&self, i: usize) -> &Proc {
        &self.0[i]
    }
    pub fn get_mut(&mut self, i: usize) -> &mut Proc {
        &mut self.0[i]
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some(mut p) = self.0.pop() {
            p.stop();
        }
    }
}

/// What a one-shot command left.
pub struct Finished {
    pub ok: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    /// User + system CPU of the command (wait4 rusage).
    pub cpu_s: f64,
}

fn tv_s(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Runs `cmd` to completion, killing it after `timeout` (or on Ctrl-C, which is an error).
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    detach(cmd, libc::SIGKILL);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    let pid = child.id() as i32;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let mut interrupted = false;
    let (status, ru) = loop {
        if let Some(r) = try_reap(pid) {
            break r;
        }
        if !timed_out && !interrupted {
            if INTERRUPTED.load(Ordering::SeqCst) {
                interrupted = true;
                kill(pid, libc::SIGKILL);
            } else if Instant::now() >= deadline {
                timed_out = true;
                kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if interrupted {
        bail!("interrupted");
    }
    let ok = !timed_out && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok(Finished {
        ok,
        status: if timed_out {
            format!("timed out after {timeout:?}")
        } else {
            describe_status(status)
        },
        stdout,
        stderr,
        cpu_s: tv_s(ru.ru_utime) + tv_s(ru.ru_stime),
    })
}

/// Like [`run_timeout`] but a failure is an error carrying the output's tail.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let shown = show(cmd);
    let f = run_timeout(cmd, timeout)?;
    if !f.ok {
        let tail: Vec<&str> = f.stderr.lines().chain(f.stdout.lines()).collect();
        bail!(
            "{shown}: {}\n{}",
            f.status,
            tail[tail.len().saturating_sub(15)..].join("\n")
        );
    }
    Ok(f)
}

/// One line of `/proc/<pid>/stat`.
#[derive(Clone, Debug)]
pub struct ProcStat {
    pub ppid: i32,
    pub comm: String,
    /// utime + stime, clock ticks (all threads, live and ended).
    pub ticks: u64,
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // f[0] = state (field 3), so field n is f[n - 3].
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ProcStat {
        ppid,
        comm,
        ticks: utime + stime,
    })
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn proc_comm(pid: i32) -> Option<String> {
    proc_stat(pid).map(|s| s.comm)
}

/// Every process of the machine.
pub fn scan_procs() -> HashMap<i32, ProcStat> {
    let mut m = HashMap::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(s) = proc_stat(pid) {
                m.insert(pid, s);
            }
        }
    }
    m
}

/// `root` and its descendants.
pub fn tree_of(root: i32, procs: &HashMap<i32, ProcStat>) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        let mut kids: Vec<i32> = procs
            .iter()
            .filter(|(_, s)| s.ppid == parent)
            .map(|(p, _)| *p)
            .collect();
        kids.sort_unstable();
        out.extend(kids);
        i += 1;
    }
    out
}

pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (busy, steal) jiffies of the whole machine. Busy: user + nice + system + irq + softirq
/// (guest time is inside user; idle, iowait and steal are not busy). Steal: time the
/// hypervisor ran someone else while our vCPUs wanted to run; a load measured meanwhile
/// measures the host.
pub fn machine_ticks() -> Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() < 8 {
        bail!("short /proc/stat line: {line}");
    }
    Ok((v[0] + v[1] + v[2] + v[5] + v[6], v[7]))
}

/// A CPU snapshot: the machine's busy ticks and every process's ticks.
pub struct CpuSnap {
    busy: u64,
    steal: u64,
    pub procs: HashMap<i32, ProcStat>,
    at: Instant,
}

pub fn cpu_snap() -> Result<CpuSnap> {
    // Processes first, then the machine: both well within one tick of each other.
    let procs = scan_procs();
    let (busy, steal) = machine_ticks()?;
    Ok(CpuSnap {
        busy,
        steal,
        procs,
        at: Instant::now(),
    })
}

/// Kernel threads (children of kthreadd): kworkers, ksoftirqd, where deferred network work
/// (and sockmap's redirect backlog) runs.
fn is_kthread(pid: i32, s: &ProcStat) -> bool {
    pid == 2 || s.ppid == 2
}

/// CPU seconds between two snapshots.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CpuUse {
    pub wall_s: f64,
    /// Whole machine, from /proc/stat (everything: also other users of the machine).
    pub machine_s: f64,
    /// The proxy's processes (all threads; for G6 monitor + worker).
    pub proxy_s: f64,
    /// Kernel threads (kworker, ksoftirqd…).
    pub kthreads_s: f64,
    /// Backends (nginx master + workers, iperf3 server).
    pub backends_s: f64,
    /// The load generator (wrk, iperf3 client), from wait4.
    pub client_s: f64,
    /// proxy + kthreads + backends + client.
    pub attributed_s: f64,
    /// machine − attributed: CPU used by everything else (the background load).
    pub other_s: f64,
    /// CPU time the hypervisor took from our vCPUs (/proc/stat steal), summed over CPUs.
    #[serde(default)]
    pub steal_s: f64,
}

pub fn cpu_use(a: &CpuSnap, b: &CpuSnap, proxy: &[i32], backends: &[i32], client_s: f64) -> CpuUse {
    let hz = clock_ticks_per_s();
    let delta = |pid: &i32| -> u64 {
        match (a.procs.get(pid), b.procs.get(pid)) {
            (Some(x), Some(y)) => y.ticks.saturating_sub(x.ticks),
            _ => 0,
        }
    };
    let sum = |pids: &[i32]| -> f64 {
        let set: HashSet<&i32> = pids.iter().collect();
        set.into_iter().map(delta).sum::<u64>() as f64 / hz
    };
    let kthreads: u64 = b
        .procs
        .iter()
        .filter(|(p, s)| is_kthread(**p, s))
        .map(|(p, s)| match a.procs.get(p) {
            Some(x) => s.ticks.saturating_sub(x.ticks),
            None => s.ticks,
        })
        .sum();
    let machine_s = b.busy.saturating_sub(a.busy) as f64 / hz;
    let proxy_s = sum(proxy);
    let backends_s = sum(backends);
    let kthreads_s = kthreads as f64 / hz;
    let attributed_s = proxy_s + backends_s + kthreads_s + client_s;
    CpuUse {
        wall_s: b.at.duration_since(a.at).as_secs_f64(),
        machine_s,
        proxy_s,
        kthreads_s,
        backends_s,
        client_s,
        attributed_s,
        other_s: (machine_s - attributed_s).max(0.0),
        steal_s: b.steal.saturating_sub(a.steal) as f64 / hz,
    }
}

fn status_kb(pid: i32, key: &str, file: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident memory of a set of processes, kB: (sum of VmRSS, sum of Pss). RSS counts pages
/// shared between a parent and its forked children once per process; Pss splits them.
pub fn memory_kb(pids: &[i32]) -> (u64, u64) {
    let mut rss = 0;
    let mut pss = 0;
    for &p in pids {
        rss += status_kb(p, "VmRSS:", "status").unwrap_or(0);
        pss += status_kb(p, "Pss:", "smaps_rollup").unwrap_or(0);
    }
    (rss, pss)
}

/// Memory once it stops moving: read every 100 ms until two readings agree within 16 kB,
/// at most `limit`.
pub fn settled_memory_kb(pids: &[i32], limit: Duration) -> Result<(u64, u64)> {
    let deadline = Instant::now() + limit;
    let mut last = memory_kb(pids);
    loop {
        pause(Duration::from_millis(100))?;
        let now = memory_kb(pids);
        if now.0.abs_diff(last.0) <= 16 || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// TCP sockets (IPv4) as (local port, remote port, state) from /proc/net/tcp.
fn tcp_sockets() -> Vec<(u16, u16, u8)> {
    let mut out = Vec::new();
    let Ok(mut f) = File::open("/proc/net/tcp") else {
        return out;
    };
    let mut text = String::new();
    if f.read_to_string(&mut text).is_err() {
        return out;
    }
    for line in text.lines().skip(1) {
        let mut it = line.split_whitespace();
        let (Some(_), Some(local), Some(remote), Some(state)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let port = |a: &str| {
            a.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        if let (Some(l), Some(r), Ok(s)) =
            (port(local), port(remote), u8::from_str_radix(state, 16))
        {
            out.push((l, r, s));
        }
    }
    out
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

/// Established connections whose remote port is one of `ports` (a proxy's upstream sockets).
pub fn established_to(ports: &[u16]) -> usize {
    tcp_sockets()
        .iter()
        .filter(|(_, r, s)| *s == TCP_ESTABLISHED && ports.contains(r))
        .count()
}

pub fn is_listening(port: u16) -> bool {
    tcp_sockets()
        .iter()
        .any(|(l, _, s)| *s == TCP_LISTEN && *l == port)
}

/// Polls until `port` is in LISTEN state (no connection made: safe for iperf3's port).
pub fn wait_listening(port: u16, limit: Duration, who: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        check_interrupted()?;
        if is_listening(port) {
            return Ok(());
        }
        if let Some(how) = who.ended() {
            bail!(
                "{} ended ({how}) before listening on port {port}; log {}:\n{}",
                who.name,
                who.log.display(),
                who.log_tail(10)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not listening on port {port} after {limit:?}; log {}:\n{}",
                who.name,
                who.log.display(),
                who.log_tail(10)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard one (children inherit it); returns it.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

pub fn is_root() -> bool {
    // SAFETY: plain libc call.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_comm() {
        let s = parse_stat("42 (a b) c) S 7 1 1 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5 0 0").unwrap();
        assert_eq!(s.ppid, 7);
        assert_eq!(s.comm, "a b) c");
        assert_eq!(s.ticks, 33);
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id() as i32;
        assert!(proc_stat(me).is_some());
        let (rss, _) = memory_kb(&[me]);
        assert!(rss > 0);
    }
}
