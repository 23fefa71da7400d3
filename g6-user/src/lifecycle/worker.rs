//! The worker process: all networking. It ignores the signals the monitor handles and obeys
//! the monitor's control messages instead; it exits at once if the monitor disappears.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};

use super::control::{self, Message};
use super::threads::RelayThreads;
use crate::config::{self, Config};
use crate::isolation::Now;
use crate::limits::{SlotPermit, SlotPool};
use crate::proxy::registry::ListenerInfo;
use crate::proxy::relay::DataPath;
use crate::proxy::{self, Shared};
use crate::runtime::Runtime;

/// Settings a worker is started with (fixed for the monitor's life).
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    pub conf_label: String,
    pub threads: usize,
    pub set_cpu_affinity: bool,
    pub data_path: DataPath,
    pub sessions: Option<u64>,
    /// How long a drain may last before the sessions left are closed; `None`: no limit.
    pub drain_timeout: Option<Duration>,
}

/// Entry point in the forked child; returns the exit status.
pub fn run_child(
    cfg: &Config,
    _conf_text: &[u8],
    listener_fds: &[RawFd],
    control_fd: OwnedFd,
    setup: &WorkerSetup,
) -> i32 {
    // SAFETY: prctl/getppid/signal are plain syscalls in a single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The monitor may have died between fork and prctl.
        if libc::getppid() == 1 {
            return 1;
        }
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGHUP,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    // The copies fork gave us are the worker's own: closing them (TERM, reload) must leave
    // no other reference in this process, or the kernel would keep the socket listening.
    let sockets: Vec<TcpListener> = listener_fds
        .iter()
        // SAFETY: inherited through fork; the monitor's copy of its struct is never dropped
        // here (the child ends with _exit), so each descriptor has exactly one owner.
        .map(|fd| unsafe { TcpListener::from_raw_fd(*fd) })
        .collect();
    let cpus = setup.set_cpu_affinity.then(crate::app::allowed_cpus);
    if let Some(cpus) = &cpus {
        crate::app::pin_current_thread(cpus, None);
    }
    // The main thread only obeys the control channel and logs isolation changes.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("worker: cannot start the runtime: {e}");
            return 1;
        }
    };
    let relays = match RelayThreads::start(setup.threads.max(1), cpus.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("worker: cannot start the relay threads: {e}");
            return 1;
        }
    };
    let code = rt.block_on(serve(
        cfg.clone(),
        sockets,
        control_fd,
        setup.clone(),
        &relays,
    ));
    drop(relays);
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

/// An accept loop per relay thread for one listener, and their common stop switch.
struct Accepting {
    stop: watch::Sender<bool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

/// The worker's listeners by address.
struct Listeners<'a> {
    shared: Arc<Shared>,
    relays: &'a RelayThreads,
    stops: HashMap<SocketAddr, Accepting>,
    slots: Vec<SlotPermit>,
}

impl Listeners<'_> {
    /// Every relay thread accepts on the listener: thread 0 on the socket itself (whose
    /// descriptor `show sessions` lists), the others on duplicates. All of them close when
    /// the listener is stopped, so the worker keeps no copy. The receivers complete once
    /// each loop runs on its thread.
    fn start(
        &mut self,
        rule_id: &str,
        addr: SocketAddr,
        socket: TcpListener,
    ) -> Vec<oneshot::Receiver<()>> {
        match self.shared.slots.try_acquire(1) {
            Some(p) => self.slots.push(p),
            None => tracing::warn!("-s leaves no slot for listener {addr}"),
        }
        let info = Arc::new(ListenerInfo::new(rule_id, addr, &socket));
        let mut sockets = Vec::with_capacity(self.relays.handles().len());
        for _ in 1..self.relays.handles().len() {
            match socket.try_clone() {
                Ok(s) => sockets.push(s),
                Err(e) => {
                    tracing::error!("listener {addr}: not shared with every relay thread: {e}")
                }
            }
        }
        sockets.insert(0, socket);
        let (stop, rx) = watch::channel(false);
        self.shared.add_listener(info.clone());
        let mut running = Vec::with_capacity(sockets.len());
        let loops = self
            .relays
            .handles()
            .iter()
            .zip(sockets)
            .map(|(thread, socket)| {
                let (started, started_rx) = oneshot::channel();
                running.push(started_rx);
                let accept =
                    proxy::accept_loop(self.shared.clone(), socket, info.clone(), rx.clone());
                thread.spawn(async move {
                    let _ = started.send(());
                    accept.await
                })
            })
            .collect();
        self.stops.insert(addr, Accepting { stop, loops });
        running
    }

    /// Tells the accept loops to close their sockets; the returned tasks end once they have.
    fn stop(&mut self, addr: &SocketAddr) -> Vec<tokio::task::JoinHandle<()>> {
        self.shared.remove_listener(*addr);
        let Some(a) = self.stops.remove(addr) else {
            return Vec::new();
        };
        let _ = a.stop.send(true);
        a.loops
    }

    /// Closes every listener and waits until no accept loop can admit anyone any more, so
    /// that counting sessions afterwards cannot miss one being admitted.
    async fn stop_all(&mut self) {
        let addrs: Vec<SocketAddr> = self.stops.keys().copied().collect();
        let tasks: Vec<_> = addrs.iter().flat_map(|a| self.stop(a)).collect();
        for t in tasks {
            let _ = t.await;
        }
        self.slots.clear();
    }
}

async fn serve(
    cfg: Config,
    sockets: Vec<TcpListener>,
    control_fd: OwnedFd,
    setup: WorkerSetup,
    relays: &RelayThreads,
) -> i32 {
    let cfg = Arc::new(cfg);
    let (data_path, accelerator) = load_fast_path(setup.data_path);
    let shared = Shared::new(
        Runtime::new(cfg.clone()),
        SlotPool::new(setup.sessions),
        data_path,
        accelerator,
    );
    let mut listeners = Listeners {
        shared: shared.clone(),
        relays,
        stops: HashMap::new(),
        slots: Vec::new(),
    };
    let listen_addresses = sockets.len();
    let mut running = Vec::new();
    for ((ri, _, entry), socket) in cfg.listeners().zip(sockets) {
        running.extend(listeners.start(&cfg.rules[ri].id, entry.addr, socket));
    }
    tokio::spawn(isolation_timer(shared.clone()));
    if let Err(e) = nix::fcntl::fcntl(
        &control_fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    ) {
        tracing::error!("worker: control channel: {e}");
        return 1;
    }
    // SAFETY: we own control_fd and it stays open for as long as the AsyncFd lives.
    let control = match unsafe { AsyncFd::register(control_fd) } {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("worker: control channel: {e}");
            return 1;
        }
    };
    for started in running {
        if started.await.is_err() {
            tracing::error!("worker: a relay thread stopped before accepting");
            return 1;
        }
    }
    tracing::info!(
        "worker {} serving: {} rules, {listen_addresses} listen addresses, {} relay threads, data path {}",
        std::process::id(),
        cfg.rules.len(),
        relays.handles().len(),
        shared.data_path.as_str()
    );
    // The monitor announces the start (USR2 predecessor, pid file, systemd) only now.
    if let Err(e) = control::send(control.as_raw_fd(), &Message::Serving, &[]) {
        tracing::error!("worker: cannot report serving to the monitor: {e}");
        return 1;
    }
    let mut draining = false;
    // `--drain-timeout`: when the drain must end, then when the sessions closed at that
    // point must have ended (the worker exits anyway).
    let (mut drain_deadline, mut closed_deadline) = (None, None);
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        tokio::select! {
            r = control.readable() => {
                let Ok(mut guard) = r else { return 1 };
                let msg = match guard.try_io(|fd| control::recv(fd.as_raw_fd())) {
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) => {
                        tracing::error!("worker: the monitor is gone; exiting");
                        return 1;
                    }
                    Ok(Err(e)) => {
                        tracing::error!("worker: control channel: {e}");
                        continue;
                    }
                    Err(_would_block) => continue,
                };
                match msg {
                    (Message::Stop, _) => return 0,
                    (Message::Drain, _) => {
                        listeners.stop_all().await;
                        if !draining {
                            // A limit too far to represent is no limit.
                            drain_deadline = setup
                                .drain_timeout
                                .and_then(|t| tokio::time::Instant::now().checked_add(t));
                        }
                        draining = true;
                        tracing::info!(
                            "worker: listeners closed; {} sessions to finish",
                            shared.registry.proxied()
                        );
                    }
                    (Message::ReopenLog, _) => {
                        if let Some(sink) = crate::logging::sink() {
                            sink.reopen();
                        }
                    }
                    (Message::Reload(text), fds) => {
                        apply_reload(&shared, &mut listeners, &setup.conf_label, &text, fds);
                    }
                    (Message::XdpStatus(text), _) => {
                        if let Some(status) = crate::guard::XdpStatus::decode(&text) {
                            crate::guard::set_status(status);
                        }
                    }
                    (Message::Serving, _) => {}
                }
            }
            _ = shared.registry.wait_no_proxied(), if draining => {
                tracing::info!("worker: all sessions done");
                return 0;
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(far)), if drain_deadline.is_some() => {
                drain_deadline = None;
                shared.drain_expired.store(true, std::sync::atomic::Ordering::Release);
                let n = shared.registry.shut_down_proxied();
                tracing::warn!(
                    "worker: drain timeout ({} s): closing the {n} sessions left",
                    setup.drain_timeout.unwrap_or_default().as_secs()
                );
                closed_deadline = Some(tokio::time::Instant::now() + CLOSED_SESSIONS_GRACE);
            }
            _ = tokio::time::sleep_until(closed_deadline.unwrap_or_else(far)), if closed_deadline.is_some() => {
                tracing::warn!(
                    "worker: {} closed sessions still running after {CLOSED_SESSIONS_GRACE:?}; exiting",
                    shared.registry.proxied()
                );
                return 0;
            }
        }
    }
}

/// After a drain timeout, how long the sessions whose sockets were shut down may take to end
/// (a spliced one may wait for bytes the kernel still holds) before the worker exits anyway.
const CLOSED_SESSIONS_GRACE: Duration = Duration::from_secs(2);

/// Each worker loads its own maps (a crashed worker's entries die with it). The monitor's
/// self-test already passed; a failure here still falls back, with the reason logged.
fn load_fast_path(path: DataPath) -> (DataPath, Option<crate::proxy::sockmap::Accelerator>) {
    if path != DataPath::Sockmap {
        return (path, None);
    }
    match crate::fastpath::FastPath::load() {
        Ok(fp) => (path, Some(crate::proxy::sockmap::Accelerator::new(fp))),
        Err(e) => {
            tracing::warn!("worker: sockmap unavailable ({e}); using splice");
            (DataPath::Splice, None)
        }
    }
}

/// Applies a config the monitor validated; `fds` are the listeners it adds, in config order.
fn apply_reload(
    shared: &Arc<Shared>,
    listeners: &mut Listeners<'_>,
    label: &str,
    text: &[u8],
    fds: Vec<OwnedFd>,
) {
    let cfg = match config::parse(label, text) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("worker: reload: {e}");
            return;
        }
    };
    let old = shared.runtime();
    shared.replace_runtime(Runtime::reloaded(&old, cfg.clone()));
    let wanted: Vec<(String, SocketAddr)> = cfg
        .listeners()
        .map(|(ri, _, l)| (cfg.rules[ri].id.clone(), l.addr))
        .collect();
    let removed: Vec<SocketAddr> = listeners
        .stops
        .keys()
        .filter(|a| !wanted.iter().any(|(_, w)| w == *a))
        .copied()
        .collect();
    for a in removed {
        // The loop closes its listener on its own; nothing waits on it during a reload.
        drop(listeners.stop(&a));
    }
    let mut new_fds = fds.into_iter();
    for (rule_id, addr) in wanted {
        if listeners.stops.contains_key(&addr) {
            continue;
        }
        match new_fds.next() {
            // Nothing waits for these loops: the worker already serves.
            Some(fd) => drop(listeners.start(&rule_id, addr, TcpListener::from(fd))),
            None => tracing::error!("worker: reload: no socket received for {addr}"),
        }
    }
    shared.reorder_listeners(&cfg);
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
