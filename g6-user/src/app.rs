//! Start-up and the serving loop (SPEC.md §2, §3): flags → RLIMIT_NOFILE → config → log →
//! listeners → daemonise → worker serves → pid file, ready byte; signals TERM, INT, USR1.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{self, DataPathChoice, EXIT_CONFIG, EXIT_USAGE, Invocation, Options, XdpChoice};
use crate::config::{self, Config};
use crate::guard::{self, AttachMode};
use crate::lifecycle::monitor::{self, Monitor};
use crate::lifecycle::worker::WorkerSetup;
use crate::listeners::{self, LISTEN_FDS_ENV};
use crate::logging::{self, LogSink};
use crate::proxy::relay::DataPath;
use crate::selftest;

/// Runs `g6` with argv (without the program name); returns the exit status.
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    let no_args = args.is_empty();
    match cli::parse(args) {
        Ok(Invocation::Version) => {
            print!("{}", cli::version_text());
            0
        }
        Ok(Invocation::Run(opts)) => run(*opts),
        Err(e) => {
            if no_args {
                print!("{}", cli::version_text());
            }
            if !e.message.is_empty() {
                eprintln!("{}", e.message);
            }
            println!("{}", cli::USAGE);
            EXIT_USAGE
        }
    }
}

/// Raises the soft descriptor limit to the hard limit [ext]. Returns the limit in force and,
/// if it could not be raised, why (logged once the log is open).
fn raise_nofile() -> (Option<u64>, Option<String>) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => return (None, Some(format!("cannot read RLIMIT_NOFILE: {e}"))),
    };
    if soft >= hard {
        return (Some(soft), None);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => (Some(hard), None),
        Err(e) => (
            Some(soft),
            Some(format!(
                "cannot raise the descriptor limit from {soft} to {hard}: {e}; \
                 at most about {} sessions can be served",
                soft / 2
            )),
        ),
    }
}

fn run(opts: Options) -> i32 {
    let (nofile, nofile_problem) = raise_nofile();
    let label = opts.config.display().to_string();
    let cfg = match config::load_file(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    for w in &cfg.warnings {
        eprintln!("{}", config::format_warning(&label, w));
    }
    if opts.check {
        println!("{}", config::check_summary(&label, &cfg));
        return 0;
    }
    let log_path = opts
        .log_filename
        .clone()
        .unwrap_or_else(logging::default_log_path);
    logging::init(opts.log_level, LogSink::open(log_path, opts.close_log));
    for w in &cfg.warnings {
        tracing::warn!("{}", config::format_warning(&label, w));
    }
    if let Some(problem) = nofile_problem {
        tracing::warn!("{problem}");
    }
    match serve(opts, cfg, nofile) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e:#}");
            tracing::error!("{e:#}");
            EXIT_CONFIG
        }
    }
}

/// Default relay threads: CPUs of the affinity mask minus one, at least one.
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).max(1))
        .unwrap_or(1)
}

/// Chooses the data path: the requested one if its self-test passes, else the next in the
/// order sockmap → splice → copy (SPEC.md §5.6). `auto` starts at splice: measured side by
/// side (`cargo xtask bench`, README "Data paths"), sockmap was slower than splice on
/// connections/s, keep-alive requests/s and latency, 1-stream bulk throughput and CPU per
/// unit of work on this kernel (SPEC allows the order to change on recorded evidence). Ask
/// for `sockmap` explicitly to use it.
fn choose_data_path(choice: DataPathChoice) -> DataPath {
    let order: &[DataPath] = match choice {
        DataPathChoice::Sockmap => &[DataPath::Sockmap, DataPath::Splice, DataPath::Copy],
        DataPathChoice::Auto => &[DataPath::Splice, DataPath::Copy],
        DataPathChoice::Splice => &[DataPath::Splice, DataPath::Copy],
        DataPathChoice::Copy => &[DataPath::Copy],
    };
    for (i, path) in order.iter().enumerate() {
        match selftest::check(*path) {
            Ok(()) => {
                if i > 0 && choice != DataPathChoice::Auto {
                    tracing::warn!(
                        "data path {} in use instead of the requested one",
                        path.as_str()
                    );
                }
                return *path;
            }
            Err(reason) => tracing::warn!("data path {} unavailable: {reason}", path.as_str()),
        }
    }
    DataPath::Copy
}

fn daemonize() -> anyhow::Result<()> {
    use nix::unistd::{ForkResult, fork, setsid};
    // SAFETY: called before any thread or runtime exists; the child only continues.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().context("setsid")?;
    // SAFETY: as above, still single-threaded.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which we own.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
            return Err(std::io::Error::last_os_error()).context("dup2");
        }
    }
    Ok(())
}

fn remove_pid_file_if_ours(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path)
        && text.trim() == std::process::id().to_string()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// CPUs this process may run on, read once before any thread is pinned (pinned threads
/// would otherwise hand their narrowed mask to the threads they spawn).
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(allowed) => (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread: relay thread `Some(i)` to allowed CPU i+1 (wrapping), any other
/// thread to the first allowed CPU (SPEC.md §2 `--set-cpu-affinity`).
pub fn pin_current_thread(cpus: &[usize], index: Option<usize>) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    if cpus.is_empty() {
        return;
    }
    let cpu = match index {
        Some(i) => cpus[(i + 1) % cpus.len()],
        None => cpus[0],
    };
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
}

fn serve(opts: Options, cfg: Config, nofile: Option<u64>) -> anyhow::Result<()> {
    // The program file we run from, resolved now so that USR2 picks up an in-place upgrade.
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "/proc/self/exe".into());
    let conf_text = std::fs::read(&opts.config)
        .with_context(|| format!("{}: error: cannot open", opts.config.display()))?;
    let wanted: Vec<SocketAddr> = cfg.listeners().map(|(_, _, l)| l.addr).collect();
    let inherited = std::env::var(LISTEN_FDS_ENV).ok();
    let ready_fd = ready_fd_from_env();
    let (sockets, warnings) = listeners::open_all(&wanted, inherited.as_deref())?;
    let (xdp_links, xdp_warnings) = std::env::var(guard::LINKS_ENV)
        .map(|t| guard::inherited_links(&t))
        .unwrap_or_default();
    // SAFETY: single-threaded still; nothing else reads the environment concurrently.
    unsafe {
        std::env::remove_var(LISTEN_FDS_ENV);
        std::env::remove_var("G6_READY_FD");
        std::env::remove_var(guard::LINKS_ENV);
    }
    for w in warnings.into_iter().chain(xdp_warnings) {
        tracing::warn!("{w}");
    }
    // Before forking anything: the worker shares the guard's maps through inherited fds.
    let xdp_mode = match opts.xdp {
        XdpChoice::Off => None,
        XdpChoice::Auto => Some(AttachMode::Auto),
        XdpChoice::Generic => Some(AttachMode::Generic),
        XdpChoice::Native => Some(AttachMode::Native),
    };
    let xdp = guard::start(xdp_mode, &cfg, xdp_links);
    // A session slot is one descriptor (a proxied session takes two slots, two sockets).
    if let (Some(s), Some(n)) = (opts.sessions, nofile)
        && s + 64 > n
    {
        tracing::warn!("-s {s} may exceed the descriptor limit {n}; clients beyond it are refused");
    }
    let data_path = choose_data_path(opts.data_path);
    if !opts.no_daemon {
        daemonize()?;
    }
    // Signals are blocked before the worker exists, so none is lost in between; the monitor
    // reads them through a signalfd, the worker unblocks and ignores them.
    monitor::handled_signals()
        .thread_block()
        .context("cannot block signals")?;
    // SIGPIPE is ignored everywhere: a peer gone mid-write is an error return, not a death.
    // SAFETY: setting a disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let threads = opts.threads.unwrap_or_else(default_threads);
    tracing::info!(
        "G6 v{} started: monitor pid {}, {} rules, {} listen addresses, {} relay threads, data path {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        cfg.rules.len(),
        wanted.len(),
        threads,
        data_path.as_str()
    );
    let m = Monitor {
        exe,
        argv: std::env::args_os().skip(1).collect(),
        conf_path: opts.config.clone(),
        conf_text,
        listeners: wanted.iter().copied().zip(sockets).collect(),
        cfg,
        setup: WorkerSetup {
            conf_label: opts.config.display().to_string(),
            threads,
            set_cpu_affinity: opts.set_cpu_affinity,
            data_path,
            sessions: opts.sessions,
            drain_timeout: opts.drain_timeout.map(Duration::from_secs),
        },
        pid_file: opts.pid_file.clone(),
        xdp,
    };
    let code = monitor::run(m, ready_fd);
    if let Some(p) = &opts.pid_file {
        remove_pid_file_if_ours(p);
    }
    if code == 0 {
        Ok(())
    } else {
        Err(anyhow::anyhow!("stopped with status {code}"))
    }
}

/// `G6_READY_FD`: the write end of a pipe from whoever started us (a USR2 predecessor, or a
/// supervisor); taken before anything else can open descriptors.
fn ready_fd_from_env() -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var("G6_READY_FD").ok()?.trim().parse().ok()?;
    // SAFETY: F_GETFD only checks that the descriptor is open.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the variable hands this descriptor to us; nothing else in this process uses it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    // Do not leak it into anything we execute later.
    // SAFETY: fcntl on a descriptor we now own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(file)
}
