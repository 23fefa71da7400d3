//! Live sessions, oldest first, for `show sessions` (SPEC.md §9.4). A session registers when
//! admitted and is removed when its registration drops, whatever path ends it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::relay::{DataPath, Traffic};
use crate::runtime::lock;

/// A listening socket as `show sessions` lists it.
#[derive(Debug)]
pub struct ListenerInfo {
    pub rule_id: String,
    pub addr: SocketAddr,
    pub fd: i32,
    /// TCP_NODELAY is set on the listening socket, so accepted sockets have it already
    /// (Linux copies it to them), saving a setsockopt per client.
    pub nodelay_inherited: bool,
}

impl ListenerInfo {
    pub fn new(rule_id: &str, addr: SocketAddr, socket: &std::net::TcpListener) -> Self {
        ListenerInfo {
            rule_id: rule_id.to_string(),
            addr,
            fd: std::os::fd::AsRawFd::as_raw_fd(socket),
            nodelay_inherited: socket2::SockRef::from(socket).set_tcp_nodelay(true).is_ok(),
        }
    }
}

#[derive(Debug)]
pub struct ManagerInfo {
    pub listener: Arc<ListenerInfo>,
    pub peer: SocketAddr,
    pub fd: i32,
    pub start: Instant,
    last_ms: AtomicU64,
}

impl ManagerInfo {
    pub fn new(listener: Arc<ListenerInfo>, peer: SocketAddr, fd: i32) -> Self {
        ManagerInfo {
            listener,
            peer,
            fd,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    pub fn idle_ms(&self) -> u64 {
        (self.start.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(Relaxed))
    }
}

#[derive(Debug)]
pub struct ProxyInfo {
    pub listener: Arc<ListenerInfo>,
    pub client: SocketAddr,
    pub client_fd: i32,
    /// The server being connected to or connected, with its descriptor.
    pub server: Mutex<Option<(SocketAddr, i32)>>,
    pub connected: AtomicBool,
    path: Mutex<Option<DataPath>>,
    pub traffic: Traffic,
}

impl ProxyInfo {
    pub fn new(listener: Arc<ListenerInfo>, client: SocketAddr, client_fd: i32) -> Self {
        ProxyInfo {
            listener,
            client,
            client_fd,
            server: Mutex::new(None),
            connected: AtomicBool::new(false),
            path: Mutex::new(None),
            traffic: Traffic::new(Instant::now()),
        }
    }

    pub fn set_path(&self, path: DataPath) {
        *lock(&self.path) = Some(path);
    }

    pub fn path(&self) -> Option<DataPath> {
        *lock(&self.path)
    }
}

#[derive(Debug, Clone)]
pub enum Entry {
    Manager(Arc<ManagerInfo>),
    Proxy(Arc<ProxyInfo>),
}

#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    entries: Mutex<BTreeMap<u64, Entry>>,
    /// Woken whenever a session ends (TERM waits for the last proxied one).
    ended: tokio::sync::Notify,
}

/// Removes its entry from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.entries).remove(&self.id);
        self.registry.ended.notify_waiters();
    }
}

impl Registry {
    pub fn register(self: &Arc<Self>, entry: Entry) -> Registration {
        let id = self.next_id.fetch_add(1, Relaxed);
        lock(&self.entries).insert(id, entry);
        Registration {
            registry: self.clone(),
            id,
        }
    }

    /// Every live session, oldest first.
    pub fn snapshot(&self) -> Vec<Entry> {
        lock(&self.entries).values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Completes once no proxied session remains.
    pub async fn wait_no_proxied(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Register interest before checking, so an end in between is not missed.
            ended.as_mut().enable();
            if self.proxied() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Shuts both sockets of every proxied session down (both directions), so that each
    /// ends through its own relay's end of stream and logs its access line; → how many.
    /// A session may have closed a socket before leaving the registry (its entry goes last),
    /// and the number reused since: at worst another socket of a session being ended too, or
    /// a non-socket (ENOTSOCK). Only for a drain that has run out of time.
    pub fn shut_down_proxied(&self) -> usize {
        let entries = lock(&self.entries);
        let mut n = 0;
        for e in entries.values() {
            let Entry::Proxy(p) = e else { continue };
            let server = lock(&p.server).map(|(_, fd)| fd);
            for fd in std::iter::once(p.client_fd).chain(server) {
                // SAFETY: shutdown(2) on a descriptor number only changes socket state; see
                // above for a number that was closed or reused.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            n += 1;
        }
        n
    }

    /// Number of proxied (non-admin) sessions.
    pub fn proxied(&self) -> usize {
        lock(&self.entries)
            .values()
            .filter(|e| matches!(e, Entry::Proxy(_)))
            .count()
    }
}
