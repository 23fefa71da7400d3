//! One admin connection (SPEC.md §9): every complete line is executed in order, whatever the
//! segmentation; replies keep that order; a final unterminated line runs at EOF; an overlong
//! line closes the connection. The work is small and in-memory, so it never blocks relaying.
//! Commands run in `admin::dispatch` (no socket); this layer reads, writes and closes.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Shared;
use super::registry::{Entry, ManagerInfo};
use super::relay::CloseReason;
use super::session::{Admitted, access_log, end_served};
use crate::admin::{self, AdminState, Clock, Effect, LineSplitter, SessionRow};
use crate::runtime::lock;

fn session_rows(shared: &Shared) -> Vec<SessionRow> {
    let mut rows: Vec<SessionRow> = shared
        .listeners()
        .iter()
        .map(|l| SessionRow::Listen {
            rule: l.rule_id.clone(),
            listen: l.addr,
            listen_fd: l.fd,
        })
        .collect();
    for entry in shared.registry.snapshot() {
        rows.push(match entry {
            Entry::Manager(m) => SessionRow::Manager {
                rule: m.listener.rule_id.clone(),
                peer: m.peer,
                fd: m.fd,
                listen: m.listener.addr,
                listen_fd: m.listener.fd,
                age_ms: m.start.elapsed().as_millis() as u64,
                idle_ms: m.idle_ms(),
            },
            Entry::Proxy(p) => {
                let (server, server_fd) = lock(&p.server).unwrap_or((p.client, -1));
                let t = &p.traffic;
                SessionRow::Proxy {
                    connected: p.connected.load(Relaxed),
                    rule: p.listener.rule_id.clone(),
                    client: p.client,
                    client_fd: p.client_fd,
                    listen: p.listener.addr,
                    listen_fd: p.listener.fd,
                    server,
                    server_fd,
                    data_path: p.path().map(|d| d.as_str()),
                    bytes_in: t.bytes_in.load(Relaxed),
                    bytes_out: t.bytes_out.load(Relaxed),
                    age_ms: t.start.elapsed().as_millis() as u64,
                    idle_ms: t.idle_ms(),
                    client_eof: t.client_eof.load(Relaxed),
                    server_eof: t.server_eof.load(Relaxed),
                }
            }
        });
    }
    rows
}

/// Runs one line through the socket-free dispatcher with this worker's state.
fn execute(shared: &Shared, line: &[u8], out: &mut Vec<u8>) -> Effect {
    let rt = shared.runtime();
    let state = AdminState {
        runtime: &rt,
        blocklist: &shared.blocklist,
        sessions: &|| session_rows(shared),
        xdp: &crate::guard::stats,
    };
    admin::execute_line(&state, line, Clock::read(), out)
}

async fn write_all(stream: &tokio::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves one admin client until `quit`, EOF, an overlong line or an error.
pub async fn run(shared: Arc<Shared>, a: Admitted, info: Arc<ManagerInfo>) {
    let rt = a.runtime.clone();
    let rr = &rt.rules[a.rule];
    rr.counters.active.fetch_add(1, Relaxed);
    rr.counters.total.fetch_add(1, Relaxed);
    let start = info.start;
    let (mut received, mut sent) = (0u64, 0u64);
    let mut splitter = LineSplitter::new();
    let mut buf = vec![0u8; 4096];
    let mut lines = Vec::new();
    let mut out = Vec::new();
    let reason = 'conn: loop {
        if a.client.readable().await.is_err() {
            break CloseReason::ClientReset;
        }
        let n = match a.client.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break CloseReason::ClientReset,
        };
        info.touch();
        received += n as u64;
        let at_eof = n == 0;
        let too_long = splitter.push(&buf[..n], &mut lines).is_err();
        if at_eof {
            lines.extend(std::mem::take(&mut splitter).finish());
        }
        let mut close = too_long || at_eof;
        for line in lines.drain(..) {
            if let Effect::Close = execute(&shared, &line, &mut out) {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            if write_all(&a.client, &out).await.is_err() {
                break 'conn CloseReason::ClientReset;
            }
            sent += out.len() as u64;
            out.clear();
        }
        if close {
            break CloseReason::ClientClose;
        }
    };
    let (rule, peer, listen) = (a.rule, a.peer, a.listener.addr);
    let Admitted {
        registration,
        client,
        slot,
        client_permit,
        ..
    } = a;
    end_served(
        (client, slot, client_permit),
        &rr.counters.active,
        || {
            let id = &rt.config.rules[rule].id;
            access_log(
                id,
                peer,
                listen,
                None,
                None,
                (received, sent),
                start,
                reason,
            );
        },
        registration,
    );
}
