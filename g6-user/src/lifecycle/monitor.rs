//! The monitor process (SPEC.md §3): single-threaded, it owns the listening sockets, acts on
//! every signal, runs one worker (forked, so it inherits the sockets) and restarts it if it
//! dies, hands the sockets to a USR2 successor, and validates HUP reloads before the worker
//! applies them. See LIFECYCLE.md.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::control::{self, Message};
use super::worker::{self, WorkerSetup};
use crate::config::{self, Config};
use crate::listeners::{self, LISTEN_FDS_ENV};

/// Signals the monitor handles; blocked in the monitor and read through a signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// What a worker needs besides config and sockets; kept for restarts.
pub struct Monitor {
    pub exe: PathBuf,
    pub argv: Vec<OsString>,
    pub conf_path: PathBuf,
    pub conf_text: Vec<u8>,
    pub cfg: Config,
    pub listeners: Vec<(SocketAddr, TcpListener)>,
    pub setup: WorkerSetup,
    pub pid_file: Option<PathBuf>,
    /// The XDP guard (holds the links; the worker shares its maps). None with `--xdp off`
    /// or when it could not be loaded.
    pub xdp: Option<crate::guard::Guard>,
}

/// The monitor's worker.
struct Running {
    pid: Pid,
    control: OwnedFd,
    report: Report,
}

/// Whether a worker has told the monitor that its accept loops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Awaited,
    Serving,
    /// Its end of the control channel closed without the report.
    Silent,
}

struct Successor {
    pid: Pid,
    ready: OwnedFd,
    status: Option<WaitStatus>,
}

/// Runs the monitor until the process should exit; returns the exit status. `ready` is the
/// `G6_READY_FD` pipe of a USR2 predecessor (or a supervisor): its byte is written once our
/// first worker reports serving, and never if that worker dies before (then we exit 1 and
/// the predecessor keeps serving).
pub fn run(mut m: Monitor, mut ready: Option<std::fs::File>) -> i32 {
    let signals = handled_signals();
    let sfd = match SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("monitor: signalfd: {e}");
            return 1;
        }
    };
    let mut worker = match spawn_worker(&m, &monitor_only(&sfd, &ready, &None)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("monitor: cannot start the worker: {e}");
            return 1;
        }
    };
    let mut announced = false;
    let mut restart_at: Option<Instant> = None;
    let mut successor: Option<Successor> = None;
    let mut draining = false;
    // 1 once a start that could not be announced is being wound down.
    let mut exit_code = 0;
    loop {
        let timeout = restart_at.map_or(PollTimeout::NONE, |t| {
            let ms = t.saturating_duration_since(Instant::now()).as_millis();
            PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::ZERO)
        });
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let successor_at = successor.as_ref().map(|s| {
            fds.push(PollFd::new(s.ready.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let report_at = worker
            .as_ref()
            .filter(|w| w.report == Report::Awaited)
            .map(|w| {
                fds.push(PollFd::new(w.control.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!("monitor: poll: {e}");
                return 1;
            }
        }
        let is_ready = |i: Option<usize>| i.and_then(|i| fds[i].any()).unwrap_or(false);
        let signal_ready = is_ready(Some(0));
        let successor_ready = is_ready(successor_at);
        let worker_reported = is_ready(report_at);
        drop(fds);

        if worker_reported
            && worker
                .as_mut()
                .is_some_and(|w| read_report(w) == Report::Serving)
            && !announced
        {
            announced = true;
            if !announce(&m, ready.take()) {
                // Nobody may count on this generation: finish what the worker took on, exit 1.
                draining = true;
                exit_code = 1;
                start_drain(&mut m, &worker);
            }
        }

        if successor_ready && let Some(s) = successor.take() {
            if successor_signalled(&s) {
                tracing::info!(
                    "USR2: successor {} is serving; this generation stops accepting and drains",
                    serving_pid(&m, &s)
                );
                draining = true;
                restart_at = None;
                // Between a worker's crash and its restart: nothing to drain.
                if !start_drain(&mut m, &worker) {
                    return 0;
                }
            } else {
                tracing::error!(
                    "USR2: successor {} failed before serving ({}); still serving",
                    s.pid,
                    describe_successor(&s)
                );
                // It may have swapped its program into our XDP links already.
                if let Some(g) = &m.xdp {
                    g.reclaim();
                }
            }
        }

        if restart_at.is_some_and(|t| Instant::now() >= t) && !draining {
            restart_at = None;
            match spawn_worker(&m, &monitor_only(&sfd, &ready, &successor)) {
                Ok(w) => {
                    tracing::info!("monitor: worker {} started", w.pid);
                    worker = Some(w);
                }
                Err(e) => {
                    tracing::error!("monitor: cannot restart the worker: {e}; retrying in 1 s");
                    restart_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }

        if !signal_ready {
            continue;
        }
        let Ok(Some(info)) = sfd.read_signal() else {
            continue;
        };
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        match sig {
            Signal::SIGTERM if draining => {
                tracing::info!("second TERM: stopping now");
                stop_worker(&worker);
                return exit_code;
            }
            Signal::SIGTERM => {
                tracing::info!("TERM: listeners closed; waiting for sessions to finish");
                notify(&[sd_notify::NotifyState::Stopping]);
                draining = true;
                restart_at = None;
                if !start_drain(&mut m, &worker) {
                    return 0;
                }
            }
            Signal::SIGINT => {
                tracing::info!("INT: stopping now");
                stop_worker(&worker);
                return exit_code;
            }
            Signal::SIGUSR1 => {
                if let Some(sink) = crate::logging::sink() {
                    sink.reopen();
                }
                tracing::info!("USR1: log file reopened");
                if let Some(w) = &worker {
                    let _ = control::send(w.control.as_raw_fd(), &Message::ReopenLog, &[]);
                }
            }
            Signal::SIGUSR2 if successor.is_some() || draining || ready.is_some() => {
                tracing::warn!("USR2 ignored: a restart or stop is already in progress");
            }
            Signal::SIGUSR2 => match spawn_successor(&m) {
                Ok(s) => {
                    tracing::info!("USR2: started successor {}", s.pid);
                    successor = Some(s);
                }
                Err(e) => tracing::error!("USR2: cannot start a successor: {e}; still serving"),
            },
            Signal::SIGHUP if draining => tracing::warn!("HUP ignored while stopping"),
            Signal::SIGHUP => {
                // systemd shows the unit reloading until READY=1 (the notify-reload protocol);
                // before the start is announced, READY=1 would announce it too early.
                if announced {
                    let mut reloading = vec![sd_notify::NotifyState::Reloading];
                    reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                    notify(&reloading);
                }
                // One line: a notification's fields are newline-separated.
                let status = reload(&mut m, &worker)
                    .unwrap_or_else(|e| e)
                    .replace('\n', " | ");
                let mut states = vec![sd_notify::NotifyState::Status(&status)];
                if announced {
                    states.push(sd_notify::NotifyState::Ready);
                }
                notify(&states);
            }
            Signal::SIGCHLD => {
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    let Some(pid) = status.pid() else { break };
                    if worker.as_ref().is_some_and(|w| w.pid == pid) {
                        worker = None;
                        if draining {
                            tracing::info!("worker {pid} finished; exiting");
                            return exit_code;
                        }
                        if ready.is_some() {
                            // Whoever started us gets no ready byte (the pipe closes as we
                            // exit) and keeps serving; a restart here would make two
                            // generations serve.
                            tracing::error!(
                                "worker {pid} failed before serving ({}); exiting without the G6_READY_FD byte",
                                describe(&status)
                            );
                            return 1;
                        }
                        tracing::error!(
                            "worker {pid} died ({}); restarting it in 1 s",
                            describe(&status)
                        );
                        restart_at = Some(Instant::now() + Duration::from_secs(1));
                    } else if let Some(s) = successor.as_mut().filter(|s| s.pid == pid) {
                        // A daemonising successor's launcher exits 0 at once; the ready pipe,
                        // not this status, says whether the successor serves.
                        s.status = Some(status);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Descriptors a worker must not keep: the signalfd, a starter's ready pipe, a successor's
/// ready pipe.
fn monitor_only(
    sfd: &SignalFd,
    ready: &Option<std::fs::File>,
    successor: &Option<Successor>,
) -> Vec<RawFd> {
    let mut fds = vec![sfd.as_raw_fd()];
    fds.extend(ready.as_ref().map(AsRawFd::as_raw_fd));
    fds.extend(successor.as_ref().map(|s| s.ready.as_raw_fd()));
    fds
}

/// Reads the worker's report if it has come (or its channel closed) and returns the state.
fn read_report(w: &mut Running) -> Report {
    if w.report != Report::Awaited {
        return w.report;
    }
    w.report = match control::recv(w.control.as_raw_fd()) {
        Ok(Some((Message::Serving, _))) => Report::Serving,
        Ok(Some((other, _))) => {
            tracing::warn!(
                "monitor: unexpected message from worker {}: {other:?}",
                w.pid
            );
            Report::Awaited
        }
        Ok(None) => Report::Silent,
        Err(e) => {
            tracing::error!("monitor: control channel of worker {}: {e}", w.pid);
            Report::Silent
        }
    };
    w.report
}

/// Announces a start whose first worker serves: the pid file, then the ready byte for whoever
/// started us, then systemd. False if the pid file cannot be written (`ready` is then closed
/// without its byte: the predecessor keeps serving).
fn announce(m: &Monitor, ready: Option<std::fs::File>) -> bool {
    if let Some(p) = &m.pid_file
        && let Err(e) = std::fs::write(p, format!("{}\n", std::process::id()))
    {
        tracing::error!("cannot write pid file {}: {e}; stopping", p.display());
        eprintln!("cannot write pid file {}: {e}", p.display());
        return false;
    }
    if let Some(mut f) = ready {
        use std::io::Write;
        if let Err(e) = f.write_all(b"1") {
            tracing::warn!("G6_READY_FD: {e}");
        }
    }
    // systemd (Type=notify, NotifyAccess=all): we serve, and after a USR2 hand-over the new
    // monitor is the service's main process.
    notify(&[
        sd_notify::NotifyState::MainPid(std::process::id()),
        sd_notify::NotifyState::Ready,
    ]);
    true
}

/// Tells the service manager, if there is one (NOTIFY_SOCKET); failures only get logged.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify: {e}");
    }
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if *core { ", core dumped" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// How a successor that sent no ready byte ended, as far as we can see. Its pipe closes as
/// it exits, a moment before its status is there: wait a little for it.
fn describe_successor(s: &Successor) -> String {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut status = s.status;
    while status.is_none() {
        match waitpid(s.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(st) => status = Some(st),
        }
    }
    match status {
        // Daemonising: our child was only its launcher; the monitor that failed is detached.
        Some(WaitStatus::Exited(_, 0)) => {
            "its launcher exited 0 when it daemonised; its own log says why it failed".into()
        }
        Some(WaitStatus::StillAlive) | None => "no status yet".into(),
        Some(st) => describe(&st),
    }
}

/// Closes our copies of the listeners and tells the worker to drain; false if there is no
/// worker (nothing to wait for).
fn start_drain(m: &mut Monitor, worker: &Option<Running>) -> bool {
    m.listeners.clear();
    match worker {
        Some(w) => {
            let _ = control::send(w.control.as_raw_fd(), &Message::Drain, &[]);
            true
        }
        None => false,
    }
}

fn stop_worker(worker: &Option<Running>) {
    if let Some(w) = worker {
        let _ = control::send(w.control.as_raw_fd(), &Message::Stop, &[]);
    }
}

/// The successor's monitor: a daemonising successor forks away from the launcher we started,
/// and has written its own pid into the pid file (if any) before its ready byte.
fn serving_pid(m: &Monitor, s: &Successor) -> Pid {
    m.pid_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|&p| p > 0 && p != std::process::id() as i32)
        .map_or(s.pid, Pid::from_raw)
}

/// True if the successor wrote its ready byte (EOF without it = failure).
fn successor_signalled(s: &Successor) -> bool {
    let mut b = [0u8; 1];
    matches!(nix::unistd::read(&s.ready, &mut b), Ok(1))
}

/// Forks the worker; `monitor_only` are descriptors the worker must not keep (the signalfd,
/// a predecessor's ready pipe, a successor's ready pipe).
fn spawn_worker(m: &Monitor, monitor_only: &[RawFd]) -> std::io::Result<Running> {
    let (mine, theirs) = control::pair()?;
    let fds: Vec<RawFd> = m.listeners.iter().map(|(_, l)| l.as_raw_fd()).collect();
    // SAFETY: the monitor is single-threaded (no runtime, no threads), so fork is safe; the
    // child only runs the worker and exits.
    match unsafe { fork() }.map_err(std::io::Error::from)? {
        ForkResult::Parent { child } => Ok(Running {
            pid: child,
            control: mine,
            report: Report::Awaited,
        }),
        ForkResult::Child => {
            drop(mine);
            for fd in monitor_only {
                // SAFETY: closing this process's copy of a monitor-only descriptor.
                unsafe { libc::close(*fd) };
            }
            let code = worker::run_child(&m.cfg, &m.conf_text, &fds, theirs, &m.setup);
            // Skip the monitor's destructors (its listeners, pid file) in this process.
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Starts the successor for USR2: the program file we started from, with the original argv,
/// the listening sockets in `G6_LISTEN_SOCKFDS` and a ready pipe in `G6_READY_FD`.
fn spawn_successor(m: &Monitor) -> std::io::Result<Successor> {
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let mut inherit: Vec<RawFd> = m.listeners.iter().map(|(_, l)| l.as_raw_fd()).collect();
    let list: String = inherit.iter().map(|fd| format!("{fd}|")).collect();
    let env_fds = format!("{}|{list}", inherit.len());
    inherit.push(ready_w.as_raw_fd());
    // The XDP links too: the successor swaps its program into them (no unguarded moment).
    let links = m.xdp.as_ref().map(|g| g.link_fds()).unwrap_or_default();
    let env_links: String = links.iter().map(|(i, fd)| format!("{i}:{fd}|")).collect();
    inherit.extend(links.iter().map(|(_, fd)| *fd));
    let exe = if m.exe.exists() {
        m.exe.clone()
    } else {
        PathBuf::from("/proc/self/exe")
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(&m.argv)
        .env(LISTEN_FDS_ENV, env_fds)
        .env("G6_READY_FD", ready_w.as_raw_fd().to_string())
        .env(crate::guard::LINKS_ENV, env_links);
    // SAFETY: only async-signal-safe calls (fcntl, sigprocmask) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &inherit {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(ready_w);
    Ok(Successor {
        pid: Pid::from_raw(child.id() as i32),
        ready: ready_r,
        status: None,
    })
}

/// HUP: validate the new config and bind its new listeners here, so a bad config or an
/// unbindable address changes nothing; then hand both to the worker. → what happened, as
/// logged (an error keeps the running config).
fn reload(m: &mut Monitor, worker: &Option<Running>) -> Result<String, String> {
    let label = m.conf_path.display().to_string();
    let text = match std::fs::read(&m.conf_path) {
        Ok(t) => t,
        Err(e) => {
            return Err(failed(format!(
                "HUP: {label}: error: cannot open: {e}; keeping the running config"
            )));
        }
    };
    let cfg = match config::parse(&label, &text) {
        Ok(c) => c,
        Err(e) => {
            return Err(failed(format!("HUP: {e}; keeping the running config")));
        }
    };
    let wanted: Vec<SocketAddr> = cfg.listeners().map(|(_, _, l)| l.addr).collect();
    let mut added = Vec::new();
    for addr in &wanted {
        if !m.listeners.iter().any(|(a, _)| a == addr) {
            match listeners::bind(*addr) {
                Ok(l) => added.push((*addr, l)),
                Err(e) => {
                    return Err(failed(format!(
                        "HUP: {label}: error: {e}; keeping the running config"
                    )));
                }
            }
        }
    }
    if let Some(w) = worker {
        let fds: Vec<RawFd> = added.iter().map(|(_, l)| l.as_raw_fd()).collect();
        if let Err(e) = control::send(w.control.as_raw_fd(), &Message::Reload(text.clone()), &fds) {
            return Err(failed(format!(
                "HUP: cannot reach the worker: {e}; keeping the running config"
            )));
        }
    }
    for w in &cfg.warnings {
        tracing::warn!("{}", config::format_warning(&label, w));
    }
    if let Some(g) = m.xdp.as_mut() {
        reload_xdp(g, &cfg, worker);
    }
    // Keep the sockets in config order; removed ones close here (the worker closes its copies).
    let mut old = std::mem::take(&mut m.listeners);
    old.extend(added);
    m.listeners = wanted
        .iter()
        .filter_map(|addr| {
            let i = old.iter().position(|(a, _)| a == addr)?;
            Some(old.swap_remove(i))
        })
        .collect();
    let status = format!(
        "HUP: reloaded {label}: {} rules, {} listen addresses",
        cfg.rules.len(),
        wanted.len()
    );
    tracing::info!("{status}");
    m.cfg = cfg;
    m.conf_text = text;
    Ok(status)
}

/// Logs a failed reload; → the message.
fn failed(message: String) -> String {
    tracing::error!("{message}");
    message
}

/// HUP: the guard's tables and interfaces for the new config; the worker learns the new
/// attachment for `show stats`. A failure leaves user-space filtering in charge (WARN).
fn reload_xdp(g: &mut crate::guard::Guard, cfg: &Config, worker: &Option<Running>) {
    match g.apply(cfg, &mut Vec::new()) {
        Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
        Err(e) => tracing::warn!("HUP: xdp guard: {e}; clients are filtered in user space"),
    }
    if let Some(w) = worker {
        let msg = Message::XdpStatus(g.status().encode());
        if let Err(e) = control::send(w.control.as_raw_fd(), &msg, &[]) {
            tracing::warn!("HUP: cannot tell the worker about the xdp guard: {e}");
        }
    }
}
