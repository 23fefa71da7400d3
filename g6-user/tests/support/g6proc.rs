//! Running the agent: `PreBound` listen sockets and `G6Proc`.
//!
//! ```ignore
//! let a = PreBound::tcp("127.0.0.1:0");
//! let l = PreBound::tcp("127.0.0.1:0");
//! let conf = format!("admin G 127.0.0.1:* - {} ;\nr1 RR *:* - {} > {} ;\n", a, l, s1.addr());
//! let g6 = G6Proc::start(&conf, &[&a, &l], &["--data-path", "copy"]);
//! ```
//! The harness binds every listen socket itself (race-free ports), writes the real address
//! into the config and passes the descriptors in `G6_LISTEN_SOCKFDS` (SPEC §3), which g6
//! adopts. `start` also passes `G6_READY_FD` and waits for g6's ready byte (SPEC §3: written
//! once its worker serves), so a g6 that dies during start-up fails the test at once with its
//! stderr and log.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use socket2::Socket;
use tempfile::TempDir;

use super::net::{bound_socket, local_addr, parse_loopback, poll_readable};
use super::wait::{wait_for, wait_until};

/// The agent binary cargo built for these tests.
pub const G6_BIN: &str = env!("CARGO_BIN_EXE_g6");
/// Bound for `G6Proc::start` to see the ready byte (debug build, eBPF loading…).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one-shot runs (`--check`, `-v`, usage errors).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The data paths to parametrise over: `G6_TEST_PATHS` (comma list) or all three.
pub fn data_paths() -> Vec<String> {
    match std::env::var("G6_TEST_PATHS") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        _ => ["copy", "splice", "sockmap"].map(String::from).to_vec(),
    }
}

/// A listening socket bound by the test (SO_REUSEADDR, backlog 1024, IPv6 v6-only) to be
/// handed to g6. Until then connects are queued by the kernel; once handed over, the test
/// process closes its copy so g6 alone decides the socket's fate (TERM → refused).
pub struct PreBound {
    addr: SocketAddr,
    sock: Mutex<Option<Socket>>,
}

impl PreBound {
    /// `addr` is "127.0.0.1:0", "[::1]:0", …
    pub fn tcp(addr: &str) -> PreBound {
        let a = parse_loopback(addr);
        let sock = bound_socket(a, true, None);
        sock.listen(1024)
            .unwrap_or_else(|e| panic!("listen on {a}: {e}"));
        PreBound {
            addr: local_addr(&sock),
            sock: Mutex::new(Some(sock)),
        }
    }

    /// The bound address (`Display` gives the same text, config syntax: `[::1]:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The test process's descriptor, or None once handed over.
    pub fn fd(&self) -> Option<RawFd> {
        self.sock.lock().unwrap().as_ref().map(|s| s.as_raw_fd())
    }

    pub fn is_handed_over(&self) -> bool {
        self.fd().is_none()
    }

    fn hand_over(&self) {
        self.sock.lock().unwrap().take();
    }
}

impl fmt::Display for PreBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// A running g6 (or any program launched the same way). Drop: SIGKILL to its process group
/// and to its PID, then reap — nothing is left behind. Set `G6_TEST_KEEP=1` to keep the
/// directory (config, log, stdout, stderr) for inspection.
pub struct G6Proc {
    pid: i32,
    child: Mutex<Child>,
    dir: Option<TempDir>,
    path: PathBuf,
}

impl G6Proc {
    /// The data paths to parametrise over: `G6_TEST_PATHS` (comma list) or all three.
    pub fn data_paths() -> Vec<String> {
        data_paths()
    }

    /// A fresh directory holding `g6.conf` = `conf`.
    pub fn conf_dir(conf: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix("g6test.")
            .tempdir()
            .expect("temp dir");
        fs::write(dir.path().join("g6.conf"), conf).expect("write g6.conf");
        dir
    }

    /// `-f <dir>/g6.conf --no-daemon --xdp off --log-filename <dir>/g6.log --log-level DEBUG
    /// <extra>`. The XDP guard is off unless `extra` turns it on (last flag wins): with it, a
    /// filtered client's SYN is dropped instead of accepted and closed (SPEC §5.1), and
    /// concurrent tests would race for the loopback interface's single XDP attachment.
    pub fn standard_args(dir: &Path, extra: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "-f".into(),
            dir.join("g6.conf").into(),
            "--no-daemon".into(),
            "--xdp".into(),
            "off".into(),
        ];
        v.extend([
            "--log-filename".into(),
            dir.join("g6.log").into(),
            "--log-level".into(),
            "DEBUG".into(),
        ]);
        v.extend(extra.iter().map(OsString::from));
        v
    }

    /// Starts g6 on `conf` with `listeners` inherited, and waits for its ready byte.
    /// Panics (with stderr and log) if it exits or is not ready within `START_TIMEOUT`.
    pub fn start(conf: &str, listeners: &[&PreBound], extra: &[&str]) -> G6Proc {
        let dir = Self::conf_dir(conf);
        let args = Self::standard_args(dir.path(), extra);
        Self::launch(Path::new(G6_BIN), &args, dir, listeners, true)
    }

    /// Like `start`, with g6 running inside network namespace `netns` (`ip netns exec`,
    /// which execs in place, so the PID is g6's). Listeners made inside that namespace
    /// (`NetNs::run(|| PreBound::tcp(..))`) are handed over as usual.
    pub fn start_in_netns(
        netns: &str,
        conf: &str,
        listeners: &[&PreBound],
        extra: &[&str],
    ) -> G6Proc {
        let dir = Self::conf_dir(conf);
        let mut args: Vec<OsString> = vec!["netns".into(), "exec".into(), netns.into()];
        args.push(G6_BIN.into());
        args.extend(Self::standard_args(dir.path(), extra));
        Self::launch(Path::new("ip"), &args, dir, listeners, true)
    }

    /// Like `start` but does not wait for readiness (for start-up failure tests).
    pub fn spawn(conf: &str, listeners: &[&PreBound], extra: &[&str]) -> G6Proc {
        let dir = Self::conf_dir(conf);
        let args = Self::standard_args(dir.path(), extra);
        Self::launch(Path::new(G6_BIN), &args, dir, listeners, false)
    }

    /// Launches `program args` in `dir` (stdin null, stdout/stderr to `dir`/stdout, stderr),
    /// in its own process group, with `listeners` in `G6_LISTEN_SOCKFDS` and, if
    /// `wait_ready`, a pipe in `G6_READY_FD` whose byte it waits for.
    /// The child gets PR_SET_PDEATHSIG(SIGKILL), which fires when the *thread* that
    /// launched it exits: keep a `G6Proc` on the thread that created it.
    pub fn launch(
        program: &Path,
        args: &[OsString],
        dir: TempDir,
        listeners: &[&PreBound],
        wait_ready: bool,
    ) -> G6Proc {
        let path = dir.path().to_path_buf();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(File::create(path.join("stdout")).expect("create stdout file"))
            .stderr(File::create(path.join("stderr")).expect("create stderr file"))
            .env_remove("G6_LISTEN_SOCKFDS")
            .env_remove("G6_READY_FD")
            .process_group(0);
        let mut inherit: Vec<RawFd> = listeners
            .iter()
            .map(|l| {
                l.fd()
                    .unwrap_or_else(|| panic!("PreBound {l} was already handed to a process"))
            })
            .collect();
        if !inherit.is_empty() {
            let list: String = inherit.iter().map(|fd| format!("{fd}|")).collect();
            cmd.env("G6_LISTEN_SOCKFDS", format!("{}|{list}", inherit.len()));
        }
        let ready = wait_ready.then(|| io::pipe().expect("ready pipe"));
        if let Some((_, w)) = &ready {
            cmd.env("G6_READY_FD", w.as_raw_fd().to_string());
            inherit.push(w.as_raw_fd());
        }
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: runs in the forked child before exec; only async-signal-safe calls, no
        // allocation (the Vec is only iterated).
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // If the spawning test thread dies, so does the child (never an orphan).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1
                    || libc::getppid() != parent
                {
                    return Err(io::Error::other("parent gone"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        // exec succeeded: the child has its copies now.
        for l in listeners {
            l.hand_over();
        }
        let g = G6Proc {
            pid: child.id() as i32,
            child: Mutex::new(child),
            dir: Some(dir),
            path,
        };
        if let Some((r, w)) = ready {
            drop(w);
            g.wait_ready(r);
        }
        g
    }

    fn wait_ready(&self, mut r: io::PipeReader) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if poll_readable(&[r.as_raw_fd()], Some(Duration::from_millis(20)))[0] {
                let mut b = [0u8; 1];
                match r.read(&mut b) {
                    Ok(1) => return,
                    _ => {
                        // Pipe closed without the byte: normally g6 has exited.
                        if let Some(st) = self.wait_exit(Duration::from_secs(2)) {
                            panic!("g6 exited during start-up ({st}) {}", self.diagnostics());
                        }
                        eprintln!(
                            "warning: g6 pid {} closed G6_READY_FD without a byte; assuming started",
                            self.pid
                        );
                        return;
                    }
                }
            }
            if let Some(st) = self.exit_status() {
                panic!("g6 exited during start-up ({st}) {}", self.diagnostics());
            }
            if Instant::now() >= deadline {
                panic!(
                    "g6 did not write its ready byte to G6_READY_FD within {START_TIMEOUT:?} (SPEC §3) {}",
                    self.diagnostics()
                );
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn conf_path(&self) -> PathBuf {
        self.path.join("g6.conf")
    }

    /// Rewrites the config file (e.g. before SIGHUP / SIGUSR2).
    pub fn write_conf(&self, conf: &str) {
        fs::write(self.conf_path(), conf).expect("rewrite g6.conf");
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("g6.log")
    }

    /// The log so far ("" if not created yet).
    pub fn log_contents(&self) -> String {
        read_lossy(&self.log_path())
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.path.join("stdout"))
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.path.join("stderr"))
    }

    /// Waits until `pred(log text)` holds.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        wait_until(timeout, || pred(&self.log_contents()))
    }

    /// Waits until `pred(log text)` holds; panics with the diagnostics otherwise.
    pub fn expect_log(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        if !self.wait_log(pred, timeout) {
            panic!(
                "g6 log: expected {what} within {timeout:?} {}",
                self.diagnostics()
            );
        }
    }

    /// Sends `sig` to the monitor (safe after exit: the PID stays ours until Drop reaps it).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// The exit status if the monitor has exited (it is not reaped until Drop).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        // SAFETY: zeroed siginfo_t is valid; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: valid pointer to a siginfo_t; the PID is our unreaped child.
        let r = unsafe { libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, flags) };
        assert_eq!(r, 0, "waitid({}): {}", self.pid, io::Error::last_os_error());
        // SAFETY: waitid filled `info` for a child state change (or left si_pid 0).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None;
        }
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        Some(ExitStatus::from_raw(raw))
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits for the monitor to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.exit_status())
    }

    /// The monitor's PID and all its live descendants (workers, successors it spawned).
    pub fn pids(&self) -> Vec<i32> {
        let mut all = vec![self.pid];
        let table = proc_ppids();
        let mut i = 0;
        while i < all.len() {
            let p = all[i];
            all.extend(table.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        all
    }

    /// Open descriptors of the monitor and its descendants (/proc/<pid>/fd).
    pub fn fd_count(&self) -> usize {
        self.pids().iter().map(|&p| fd_count_of(p)).sum()
    }

    /// stderr, stdout and the log tail, for panic messages.
    pub fn diagnostics(&self) -> String {
        let log = self.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        format!(
            "[g6 pid {} dir {}]\n--- stderr ---\n{}\n--- stdout ---\n{}\n--- log (last 80 lines) ---\n{tail}\n---",
            self.pid,
            self.path.display(),
            self.stderr(),
            self.stdout()
        )
    }

    /// Runs `g6 <args>` to completion (bounded by `RUN_TIMEOUT`): (exit code, stdout, stderr).
    /// Panics if it is killed by a signal or times out.
    pub fn run(args: &[&OsStr]) -> (i32, String, String) {
        let dir = tempfile::Builder::new()
            .prefix("g6run.")
            .tempdir()
            .expect("temp dir");
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let mut child = Command::new(G6_BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .env_remove("G6_LISTEN_SOCKFDS")
            .env_remove("G6_READY_FD")
            .process_group(0)
            .spawn()
            .expect("spawn g6");
        let status = wait_for(RUN_TIMEOUT, || child.try_wait().expect("try_wait"));
        let (stdout, stderr) = (read_lossy(&out), read_lossy(&err));
        let Some(status) = status else {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "g6 {args:?} did not exit within {RUN_TIMEOUT:?}\nstdout: {stdout}\nstderr: {stderr}"
            );
        };
        let code = status.code().unwrap_or_else(|| {
            panic!("g6 {args:?} died: {status}\nstdout: {stdout}\nstderr: {stderr}")
        });
        (code, stdout, stderr)
    }

    /// `g6 -f <tmp>/g6.conf --check`: (exit code, stdout, stderr).
    pub fn run_check(conf: &str) -> (i32, String, String) {
        let dir = Self::conf_dir(conf);
        let path = dir.path().join("g6.conf");
        Self::run(&[OsStr::new("-f"), path.as_os_str(), OsStr::new("--check")])
    }
}

impl Drop for G6Proc {
    fn drop(&mut self) {
        let descendants: Vec<i32> = self.pids().split_off(1);
        // The unreaped monitor keeps its PID (= our process group id) ours until wait().
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = self.child.lock().map(|mut c| c.wait());
        // Workers are reaped by init, not by us: wait until they have exited (their sockets
        // closed), so a next g6 can bind the same address at once.
        wait_until(Duration::from_secs(5), || {
            descendants.iter().all(|&p| has_exited(p))
        });
        if std::env::var_os("G6_TEST_KEEP").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("G6_TEST_KEEP: kept {}", d.keep().display());
        }
    }
}

/// Gone, or a zombie (which holds no descriptors any more).
fn has_exited(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn fd_count_of(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// (pid, ppid) of every process visible in /proc.
fn proc_ppids() -> Vec<(i32, i32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid …": comm may contain spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((pid, ppid))
    })
    .collect()
}
