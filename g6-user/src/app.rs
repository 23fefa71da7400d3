//! Start-up and the serving loop (SPEC.md §2, §3): flags → RLIMIT_NOFILE → config → log →
//! listeners → daemonise → pid file → serve; signals TERM, INT, USR1.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cli::{self, DataPathChoice, EXIT_CONFIG, EXIT_USAGE, Invocation, Options};
use crate::config::{self, Config};
use crate::isolation::Now;
use crate::limits::SlotPool;
use crate::listeners::{self, LISTEN_FDS_ENV};
use crate::logging::{self, LogSink};
use crate::proxy::registry::ListenerInfo;
use crate::proxy::relay::DataPath;
use crate::proxy::{self, Shared};
use crate::runtime::Runtime;
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

/// Raises the soft descriptor limit to the hard limit [ext]; returns the new soft limit.
fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    Some(hard.max(soft))
}

fn run(opts: Options) -> i32 {
    let nofile = raise_nofile();
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
/// order sockmap → splice → copy (SPEC.md §5.6).
fn choose_data_path(choice: DataPathChoice) -> DataPath {
    let order: &[DataPath] = match choice {
        DataPathChoice::Auto | DataPathChoice::Sockmap => {
            &[DataPath::Sockmap, DataPath::Splice, DataPath::Copy]
        }
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

fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}

fn remove_pid_file_if_ours(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path)
        && text.trim() == std::process::id().to_string()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// Pins relay thread i to allowed CPU i+1 (wrapping) and other threads to the first allowed CPU.
fn pin_current_thread(index: Option<usize>) {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let Ok(allowed) = sched_getaffinity(Pid::from_raw(0)) else {
        return;
    };
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
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
    let wanted: Vec<SocketAddr> = cfg.listeners().map(|(_, _, l)| l.addr).collect();
    let inherited = std::env::var(LISTEN_FDS_ENV).ok();
    let ready_fd = ready_fd_from_env();
    let (sockets, warnings) = listeners::open_all(&wanted, inherited.as_deref())?;
    // SAFETY: single-threaded still; nothing else reads the environment concurrently.
    unsafe {
        std::env::remove_var(LISTEN_FDS_ENV);
        std::env::remove_var("G6_READY_FD");
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let (Some(s), Some(n)) = (opts.sessions, nofile)
        && s + 64 > n
    {
        tracing::warn!("-s {s} may exceed the descriptor limit {n}");
    }
    let data_path = choose_data_path(opts.data_path);
    if !opts.no_daemon {
        daemonize()?;
    }
    if let Some(p) = &opts.pid_file {
        write_pid_file(p)?;
    }
    let threads = opts.threads.unwrap_or_else(default_threads);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(threads)
        .enable_all()
        .thread_name("g6-relay");
    if opts.set_cpu_affinity {
        let next = Arc::new(AtomicUsize::new(0));
        builder.on_thread_start(move || {
            pin_current_thread(Some(next.fetch_add(1, Ordering::Relaxed)));
        });
        pin_current_thread(None);
    }
    let rt = builder.build().context("cannot start the runtime")?;
    tracing::info!(
        "G6 v{} started: pid {}, {} rules, {} listen addresses, {} relay threads, data path {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        cfg.rules.len(),
        wanted.len(),
        threads,
        data_path.as_str()
    );
    let result = rt.block_on(serve_async(cfg, sockets, data_path, opts.sessions, ready_fd));
    if let Some(p) = &opts.pid_file {
        remove_pid_file_if_ours(p);
    }
    // Sessions still running at exit (INT) are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve_async(
    cfg: Config,
    sockets: Vec<std::net::TcpListener>,
    data_path: DataPath,
    sessions: Option<u64>,
    ready_fd: Option<std::fs::File>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let slots = SlotPool::new(sessions);
    let mut listener_slots = Vec::new();
    let shared = Shared::new(Runtime::new(cfg.clone()), slots.clone(), data_path);
    let (stop_tx, stop_rx) = watch::channel(false);
    for ((ri, _, entry), socket) in cfg.listeners().zip(sockets) {
        match slots.try_acquire(1) {
            Some(p) => listener_slots.push(p),
            None => tracing::warn!("-s leaves no slot for listener {}", entry.addr),
        }
        let info = Arc::new(ListenerInfo {
            rule_id: cfg.rules[ri].id.clone(),
            addr: entry.addr,
            fd: std::os::fd::AsRawFd::as_raw_fd(&socket),
        });
        shared.add_listener(info.clone());
        let listener = tokio::net::TcpListener::from_std(socket)
            .with_context(|| format!("cannot listen on {}", entry.addr))?;
        tokio::spawn(proxy::accept_loop(
            shared.clone(),
            listener,
            info,
            stop_rx.clone(),
        ));
    }
    tokio::spawn(isolation_timer(shared.clone()));
    signal_ready(ready_fd);
    wait_for_stop(&shared, stop_tx).await
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

/// Tells whoever started us that we serve: one byte, then close (SPEC.md §3).
fn signal_ready(ready: Option<std::fs::File>) {
    if let Some(mut f) = ready {
        use std::io::Write;
        if let Err(e) = f.write_all(b"1") {
            tracing::warn!("G6_READY_FD: {e}");
        }
    }
}

/// Logs server state transitions when they happen (availability itself is computed exactly
/// on every decision; this only makes the log timely).
async fn isolation_timer(shared: Arc<Shared>) {
    loop {
        let rt = shared.runtime();
        for (rule, server, state) in rt.advance_isolation(Now::now()) {
            tracing::warn!("rule {rule}: server {server} is now {state}");
        }
        let next = rt
            .next_isolation_deadline()
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(1));
        let cap = std::time::Instant::now() + Duration::from_millis(100);
        tokio::time::sleep_until(next.min(cap).into()).await;
    }
}

async fn wait_for_stop(shared: &Shared, stop_tx: watch::Sender<bool>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut draining = false;
    loop {
        tokio::select! {
            _ = term.recv() => {
                if draining {
                    tracing::info!("second TERM: stopping now");
                    return Ok(());
                }
                tracing::info!("TERM: listeners closed, waiting for {} sessions", shared.registry.proxied());
                draining = true;
                let _ = stop_tx.send(true);
            }
            _ = int.recv() => {
                tracing::info!("INT: stopping now");
                return Ok(());
            }
            _ = usr1.recv() => {
                if let Some(sink) = logging::sink() {
                    sink.reopen();
                }
                tracing::info!("USR1: log file reopened");
            }
            _ = usr2.recv() => tracing::warn!("USR2: seamless restart is not available in this build; ignored"),
            _ = hup.recv() => tracing::warn!("HUP: reload is not available in this build; ignored"),
            _ = shared.registry.wait_no_proxied(), if draining => {
                tracing::info!("TERM: all sessions done, exiting");
                return Ok(());
            }
        }
    }
}
