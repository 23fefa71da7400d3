//! Serving (SPEC.md §5): accept loops, admission (slots → client filter → client limits),
//! then an admin session or a proxied session per client.

pub mod admin_conn;
pub mod connect;
pub mod park;
pub mod pool;
pub mod registry;
pub mod relay;
pub mod session;
pub mod sockmap;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::limits::SlotPool;
use crate::runtime::{Runtime, lock};
use registry::{ListenerInfo, Registry};
use relay::{CloseReason, DataPath};

/// State shared by every task of the worker.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    pub registry: Arc<Registry>,
    pub slots: Arc<SlotPool>,
    pub data_path: DataPath,
    /// Clients refused because descriptors ran out (accepted through the reserve fd).
    pub accept_refused: AtomicU64,
    /// Held open so that, when descriptors run out, one can be freed to accept and refuse.
    reserve_fd: Mutex<Option<File>>,
    listeners: Mutex<Vec<Arc<ListenerInfo>>>,
    /// The loaded eBPF fast path when the data path is `sockmap`.
    pub accelerator: Option<sockmap::Accelerator>,
    /// Sources refused at admission (admin `block`); mirrored into the XDP guard if loaded.
    pub blocklist: crate::guard::BlockList,
    /// A drain ran out of time (`--drain-timeout`): sessions end with `close=shutdown`.
    pub drain_expired: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(
        runtime: Runtime,
        slots: Arc<SlotPool>,
        data_path: DataPath,
        accelerator: Option<sockmap::Accelerator>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            accelerator,
            blocklist: crate::guard::BlockList::for_worker(),
            runtime: ArcSwap::from_pointee(runtime),
            registry: Arc::new(Registry::default()),
            slots,
            data_path,
            accept_refused: AtomicU64::new(0),
            drain_expired: std::sync::atomic::AtomicBool::new(false),
            reserve_fd: Mutex::new(File::open("/dev/null").ok()),
            listeners: Mutex::new(Vec::new()),
        })
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn moratorium(&self) -> u32 {
        self.runtime.load().config.moratorium
    }

    pub fn listeners(&self) -> Vec<Arc<ListenerInfo>> {
        lock(&self.listeners).clone()
    }

    pub fn add_listener(&self, info: Arc<ListenerInfo>) {
        lock(&self.listeners).push(info);
    }

    pub fn remove_listener(&self, addr: SocketAddr) {
        lock(&self.listeners).retain(|l| l.addr != addr);
    }

    /// Installs a reloaded runtime; sessions in flight keep the one they started with.
    pub fn replace_runtime(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// Lists listeners in config order again after a reload (for `show sessions`).
    pub fn reorder_listeners(&self, cfg: &crate::config::Config) {
        let mut ls = lock(&self.listeners);
        ls.sort_by_key(|l| {
            cfg.listeners()
                .position(|(_, _, e)| e.addr == l.addr)
                .unwrap_or(usize::MAX)
        });
    }
}

/// Refuses a client without data, logging the access line (SPEC.md §5.1).
fn refuse(rt: &Runtime, rule: usize, listen: SocketAddr, peer: SocketAddr, reason: CloseReason) {
    rt.rules[rule].counters.refused.fetch_add(1, Relaxed);
    session::access_log(
        &rt.config.rules[rule].id,
        peer,
        listen,
        None,
        None,
        (0, 0),
        Instant::now(),
        reason,
    );
}

/// Admission in SPEC order; spawns the session task when granted.
fn admit(shared: &Arc<Shared>, client: TcpStream, peer: SocketAddr, listener: &Arc<ListenerInfo>) {
    let rt = shared.runtime();
    // A listener removed by a reload may still hand out a queued client: refuse it.
    let Some(&(ri, li)) = rt.by_listen.get(&listener.addr) else {
        return;
    };
    let rule = &rt.config.rules[ri];
    if !listener.nodelay_inherited {
        let _ = client.set_nodelay(true);
    }
    if shared.blocklist.is_blocked(peer.ip()) {
        return refuse(&rt, ri, listener.addr, peer, CloseReason::Blocked);
    }
    let weight = if rule.is_admin() { 1 } else { 2 };
    let Some(slot) = shared.slots.try_acquire(weight) else {
        return refuse(&rt, ri, listener.addr, peer, CloseReason::Slots);
    };
    let Some(ci) = rule.match_client(peer) else {
        return refuse(&rt, ri, listener.addr, peer, CloseReason::Filter);
    };
    let Ok(client_permit) = rt.rules[ri].clients[ci].try_acquire(peer.ip()) else {
        return refuse(&rt, ri, listener.addr, peer, CloseReason::ClientLimit);
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
    let entry = if rule.is_admin() {
        registry::Entry::Manager(Arc::new(registry::ManagerInfo::new(
            listener.clone(),
            peer,
            fd,
        )))
    } else {
        registry::Entry::Proxy(Arc::new(registry::ProxyInfo::new(
            listener.clone(),
            peer,
            fd,
        )))
    };
    let admitted = session::Admitted {
        registration: shared.registry.register(entry.clone()),
        runtime: rt.clone(),
        rule: ri,
        listen: li,
        listener: listener.clone(),
        client,
        peer,
        slot,
        client_permit,
    };
    match entry {
        registry::Entry::Proxy(p) => drop(tokio::spawn(session::run(shared.clone(), admitted, p))),
        registry::Entry::Manager(m) => {
            drop(tokio::spawn(admin_conn::run(shared.clone(), admitted, m)))
        }
    }
}

/// What a failed accept means for the accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptFailure {
    /// Out of descriptors: refuse through the reserve, back off if that cannot help.
    Descriptors,
    /// Out of kernel memory: the listener stays readable, so retrying at once would spin
    /// while the pressure lasts; back off.
    Memory,
    /// One client's trouble (`ECONNABORTED`, `EPROTO`, a firewall's `EPERM`…): go on.
    OneClient,
}

fn classify_accept_error(e: &io::Error) -> AcceptFailure {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => AcceptFailure::Descriptors,
        Some(libc::ENOBUFS | libc::ENOMEM) => AcceptFailure::Memory,
        _ => AcceptFailure::OneClient,
    }
}

/// Out of descriptors: free the reserve, accept one client and close it (refused), take the
/// reserve back. Returns false if the reserve could not help (back off then).
///
/// Fixed (tests/balance.rs `local_failure_is_not_blamed_on_the_server`): the accept is one
/// non-blocking syscall made right after freeing the reserve, with no `.await` in between.
/// The former 1-ms async accept let other tasks take the freed descriptor (e.g. for a server
/// socket); the reserve could then not be reopened, and from then on clients were left in the
/// backlog instead of being refused (SPEC.md §5.1).
fn refuse_via_reserve(shared: &Shared, listener: &TcpListener, info: &ListenerInfo) -> bool {
    let mut reserve = lock(&shared.reserve_fd);
    let accepted = if reserve.take().is_some() {
        // The accepted socket is dropped (closed) at once: refused.
        socket2::SockRef::from(listener).accept().ok()
    } else {
        None
    };
    let peer = accepted.and_then(|(socket, addr)| {
        drop(socket);
        addr.as_socket()
    });
    *reserve = File::open("/dev/null").ok();
    drop(reserve);
    let Some(peer) = peer else {
        return false;
    };
    shared.accept_refused.fetch_add(1, Relaxed);
    // Refusals get their access line too (SPEC.md §10); out of descriptors is a local error.
    let rt = shared.runtime();
    if let Some(&(ri, _)) = rt.by_listen.get(&info.addr) {
        refuse(&rt, ri, info.addr, peer, CloseReason::Error);
    }
    true
}

/// Accepts on the calling relay thread until `stop` flips to true; then the listener is
/// dropped (closed at once). Admitted clients are served on this thread.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    info: Arc<ListenerInfo>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", info.addr);
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => continue,
            r = listener.accept() => match r {
                Ok((client, peer)) => {
                    backoff = Duration::from_millis(5);
                    admit(&shared, client, peer, &info);
                }
                Err(e) => match classify_accept_error(&e) {
                    AcceptFailure::Descriptors => {
                        tracing::error!("accept on {}: {e}; refusing clients until descriptors free up", info.addr);
                        if !refuse_via_reserve(&shared, &listener, &info) {
                            back_off(&mut backoff, &mut stop).await;
                        }
                    }
                    AcceptFailure::Memory => {
                        tracing::warn!("accept on {}: {e}; retrying in {backoff:?}", info.addr);
                        back_off(&mut backoff, &mut stop).await;
                    }
                    AcceptFailure::OneClient => tracing::debug!("accept on {}: {e}", info.addr),
                },
            }
        }
    }
    shared.remove_listener(info.addr);
}

/// Never spin on an accept that keeps failing: waits `backoff` (a stop ends the wait, so
/// the listener still closes at once), then doubles it, up to 1 s.
async fn back_off(backoff: &mut Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = stop.changed() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_classified_so_that_the_loop_never_spins() {
        let class = |errno| classify_accept_error(&io::Error::from_raw_os_error(errno));
        for errno in [libc::EMFILE, libc::ENFILE] {
            assert_eq!(class(errno), AcceptFailure::Descriptors, "errno {errno}");
        }
        // The listener stays readable under memory pressure: these must back off.
        for errno in [libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(class(errno), AcceptFailure::Memory, "errno {errno}");
        }
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM, libc::EINTR] {
            assert_eq!(class(errno), AcceptFailure::OneClient, "errno {errno}");
        }
    }
}
