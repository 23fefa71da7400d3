//! One proxied client (SPEC.md §5.3–§5.5): select a server with fail-over, connect, relay,
//! log one access line. See LIFECYCLE.md for the states.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Shared;
use super::connect::{self, ConnectError};
use super::park::{self, FirstBytes, Resumed};
use super::registry::{ListenerInfo, ProxyInfo, Registration};
use super::relay::{self, CloseReason, DataPath, Outcome, SessionMeters};
use super::sockmap;
use crate::isolation::Now;
use crate::limits::{Permit, SlotPermit};
use crate::runtime::{Chosen, Runtime, lock};

/// Admission already granted for this client: its slot and client-entry permits.
pub struct Admitted {
    /// Listed in `show sessions` from admission on, so a drain never misses a session whose
    /// task has not run yet.
    pub registration: Registration,
    pub runtime: Arc<Runtime>,
    pub rule: usize,
    pub listen: usize,
    pub listener: Arc<ListenerInfo>,
    pub client: TcpStream,
    pub peer: SocketAddr,
    pub slot: SlotPermit,
    pub client_permit: Permit,
}

/// The access line of SPEC.md §10, for every client connection including refusals.
#[allow(clippy::too_many_arguments)]
pub fn access_log(
    rule_id: &str,
    client: SocketAddr,
    listen: SocketAddr,
    server: Option<SocketAddr>,
    path: Option<DataPath>,
    bytes: (u64, u64),
    start: Instant,
    close: CloseReason,
) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let server = server.map_or_else(|| "-".to_string(), |s| s.to_string());
    tracing::info!(
        "session rule={rule_id} client={client} listen={listen} server={server} path={} \
         bytes_in={} bytes_out={} duration_ms={} close={}",
        path.map_or("-", DataPath::as_str),
        bytes.0,
        bytes.1,
        start.elapsed().as_millis(),
        close.as_str()
    );
}

/// Completes if the client resets while we connect for it (a FIN or early data is fine:
/// the request may be complete already, or the server may speak first).
///
/// Fixed (tests/balance.rs `client_reset_during_connect_aborts_without_penalty`): this used
/// to act on the first `ready(READABLE)`, but readiness may be spurious — tokio reports a
/// freshly accepted socket readable at once — and a readiness that was neither an error nor
/// a closed read side made it wait forever, so a client reset during the connect was never
/// noticed. A reset sets the socket's error, which epoll reports as EPOLLERR: waiting for
/// error readiness sees exactly that, and costs no syscall (a `peek` cost one per client).
async fn client_reset(client: &TcpStream) {
    let _ = client.ready(Interest::ERROR).await;
}

/// Whether the client's first bytes are waiting in its socket (FIONREAD; tokio's readiness
/// cannot tell: it reports a freshly accepted socket readable).
fn client_bytes_waiting(client: &TcpStream) -> bool {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own; the descriptor is the client's, kept open.
    let r = unsafe { libc::ioctl(client.as_raw_fd(), libc::FIONREAD, &raw mut waiting) };
    r == 0 && waiting > 0
}

enum Attempt {
    Connected(TcpStream, Chosen),
    Failed(CloseReason),
}

async fn select_and_connect(shared: &Shared, a: &Admitted, info: &ProxyInfo) -> Attempt {
    let rule = &a.runtime.config.rules[a.rule];
    let rr = &a.runtime.rules[a.rule];
    let listen = &rule.listens[a.listen];
    let mut tried = vec![false; rr.servers.len()];
    loop {
        let Some(chosen) = rr.choose(a.peer.ip(), &tried, Now::now()) else {
            let reason = if tried.iter().any(|t| *t) {
                CloseReason::ConnectFailed
            } else {
                CloseReason::NoServer
            };
            return Attempt::Failed(reason);
        };
        tried[chosen.index] = true;
        let server = chosen.server.clone();
        let addr = server.entry.addr;
        let result = match connect::new_socket(addr) {
            Err(e) => Err(e),
            Ok(socket) => {
                *lock(&info.server) = Some((addr, socket.as_raw_fd()));
                let timeout = Duration::from_secs(server.entry.connect_timeout_via(listen).into());
                // Bytes the client sent already will go out as soon as the connect completes:
                // let the handshake's last ACK ride with them (not for sockmap, whose
                // hand-over of early bytes is its own).
                if shared.data_path != DataPath::Sockmap && client_bytes_waiting(&a.client) {
                    connect::delay_handshake_ack(&socket);
                }
                tokio::select! {
                    r = connect::connect(socket, addr, timeout) => r,
                    _ = client_reset(&a.client) => return Attempt::Failed(CloseReason::ClientReset),
                }
            }
        };
        // A drain that ran out of time shut the socket down (`--drain-timeout`): not the
        // server's failure, and no other server is tried.
        if shared.drain_expired.load(Acquire) {
            return Attempt::Failed(CloseReason::Shutdown);
        }
        match result {
            Ok(stream) => return Attempt::Connected(stream, chosen),
            Err(e @ ConnectError::Local(_)) => {
                tracing::error!(
                    "rule {}: local failure connecting to {}: {e}",
                    rule.id,
                    server.text
                );
            }
            Err(e) => {
                server.failures.fetch_add(1, Relaxed);
                let now = Now::now();
                let mut iso = lock(&server.isolation);
                iso.server_failure(shared.moratorium(), now);
                tracing::warn!(
                    "rule {}: server {} failed: {e}; now {}",
                    rule.id,
                    server.text,
                    iso.state_name(now)
                );
            }
        }
        drop(chosen);
        *lock(&info.server) = None;
    }
}

/// Relays a user-space session (copy, splice) to its end, parking it (park.rs) whenever
/// its relay has been at rest for `relay::PARK_AFTER`. Both sockets are closed on return.
/// A plain fn around an `async move` block: an `async fn` would keep a second copy of its
/// arguments in every parked session.
#[allow(clippy::manual_async_fn)] // On purpose: see above.
fn relay_parking<'a>(
    path: DataPath,
    mut client: TcpStream,
    mut server: TcpStream,
    peer: SocketAddr,
    meters: &'a SessionMeters<'a>,
    idle: Duration,
) -> impl Future<Output = CloseReason> + Send + 'a {
    async move {
        // The idle clock starts once the server connection is made (SPEC.md §5.5).
        meters.traffic.touch();
        let carry = relay::Carry::new(&client, &server, idle);
        // Boxed, as the relay below: neither is kept by a parked session.
        let seen = &carry.tcp_seen;
        let first = Box::pin(park::first_bytes(
            &client,
            &server,
            meters.traffic,
            idle,
            seen,
        ));
        let mut bytes_came = match first.await {
            FirstBytes::Came => true,
            FirstBytes::Park => false,
            FirstBytes::Idle => {
                relay::close_idle(&client, &server);
                return CloseReason::IdleTimeout;
            }
        };
        loop {
            if bytes_came {
                let relaying = Box::pin(relay::relay_or_park(
                    path, &client, &server, meters, idle, &carry,
                ));
                if let Outcome::Closed(reason) = relaying.await {
                    return reason;
                }
            }
            bytes_came = true;
            match park::park(client, server, peer, meters.traffic, idle, &carry.tcp_seen).await {
                Resumed::Relay(c, s) => (client, server) = (c, s),
                Resumed::Closed(reason) => return reason,
            }
        }
    }
}

/// Serves one admitted client to the end and logs its access line.
/// A plain fn around an `async move` block: an `async fn` would keep a second copy of its
/// arguments in every session's task.
#[allow(clippy::manual_async_fn)] // On purpose: see above.
pub fn run(
    shared: Arc<Shared>,
    a: Admitted,
    info: Arc<ProxyInfo>,
) -> impl Future<Output = ()> + Send {
    async move {
        let runtime = a.runtime.clone();
        let rule = &runtime.config.rules[a.rule];
        let rr = &runtime.rules[a.rule];
        rr.counters.active.fetch_add(1, Relaxed);
        rr.counters.total.fetch_add(1, Relaxed);
        let start = info.traffic.start;

        // Boxed: a session's task then holds only the state of the stage it is in — connecting,
        // or relaying on one data path — not the largest of them all (idle RSS per session).
        let attempt = Box::pin(select_and_connect(&shared, &a, &info)).await;
        // Taken out: a session that parks owns its client socket (park.rs).
        let mut client = Some(a.client);
        let (reason, server_addr, path) = match attempt {
            Attempt::Failed(reason) => {
                rr.counters.refused.fetch_add(1, Relaxed);
                (reason, None, None)
            }
            Attempt::Connected(server_stream, chosen) => {
                let path = shared.data_path;
                chosen.server.total.fetch_add(1, Relaxed);
                *lock(&info.server) = Some((chosen.server.entry.addr, server_stream.as_raw_fd()));
                info.set_path(path);
                info.connected.store(true, Relaxed);
                let idle = Duration::from_secs(rule.listens[a.listen].timeout.into());
                let meters = SessionMeters {
                    traffic: &info.traffic,
                    rule: rr,
                    server: &chosen.server,
                };
                let client = client.take().expect("the client socket is taken once");
                let relaying: Pin<Box<dyn Future<Output = CloseReason> + Send + '_>> =
                    match &shared.accelerator {
                        Some(acc) if path == DataPath::Sockmap => Box::pin(async move {
                            let (c, s) = (&client, &server_stream);
                            sockmap::relay(acc, DataPath::Splice, c, s, &meters, idle).await
                        }),
                        _ => Box::pin(relay_parking(
                            path,
                            client,
                            server_stream,
                            a.peer,
                            &meters,
                            idle,
                        )),
                    };
                let reason = relaying.await;
                (reason, Some(chosen.server.entry.addr), Some(path))
            }
        };
        // Ended because the drain ran out of time (the worker shut its sockets down).
        let reason = if shared.drain_expired.load(Acquire) {
            CloseReason::Shutdown
        } else {
            reason
        };
        let (peer, listen) = (a.peer, a.listener.addr);
        let Admitted {
            registration,
            slot,
            client_permit,
            ..
        } = a;
        end_served(
            (client, slot, client_permit),
            &rr.counters.active,
            || {
                let bytes = (
                    info.traffic.bytes_in.load(Relaxed),
                    info.traffic.bytes_out.load(Relaxed),
                );
                access_log(
                    &rule.id,
                    peer,
                    listen,
                    server_addr,
                    path,
                    bytes,
                    start,
                    reason,
                );
            },
            registration,
        );
    }
}

/// Ends a served client (proxied or admin) in the order that keeps limits exact. Fixed: its
/// socket closes and its slot and client-entry count (`released`) are freed BEFORE it is
/// reported ended (rule `active`, access line). Released after both, a client connecting
/// once `show stats` showed the session gone (or its access line was written) could still be
/// refused by `max_*` or `-s` (tests/limits.rs). The `show sessions` entry goes last.
pub fn end_served<R>(
    released: R,
    active: &std::sync::atomic::AtomicU64,
    log_access: impl FnOnce(),
    registration: Registration,
) {
    drop(released);
    active.fetch_sub(1, Relaxed);
    log_access();
    drop(registration);
}
