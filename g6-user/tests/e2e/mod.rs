//! Helpers shared by the end-to-end test files (`balance`, `isolation`, `limits`, `admin`,
//! `cli`), on top of `support`: clients bound to a chosen loopback source address, admin
//! queries parsed into values, and `/proc` look-ups of g6's descriptors.
//!
//! Each of those files does `mod support; mod e2e;`.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use crate::support::{IO_TIMEOUT, WAIT_TIMEOUT, admin_cmd, read_line, wait_for};

/// Every file uses the copy data path unless a behaviour depends on the path.
pub const COPY: &[&str] = &["--data-path", "copy"];

/// A socket bound to `src` (e.g. "127.0.0.2:0") and not yet connected.
pub fn bound_client(src: &str) -> Socket {
    let src: SocketAddr = src.parse().expect("source address");
    let s = Socket::new(Domain::for_address(src), Type::STREAM, None).expect("socket");
    s.bind(&src.into())
        .unwrap_or_else(|e| panic!("bind client to {src}: {e}"));
    s
}

/// Connects `sock` to `to` (bounded) and returns a stream with I/O timeouts.
pub fn connect_socket(sock: Socket, to: SocketAddr) -> TcpStream {
    sock.connect_timeout(&to.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Connects to `to` from source IP `ip` (any port).
pub fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let src = if ip.contains(':') {
        format!("[{ip}]:0")
    } else {
        format!("{ip}:0")
    };
    connect_socket(bound_client(&src), to)
}

/// The name an `Identify` backend announces through `to`, connecting from `ip`; the stream
/// stays open.
pub fn identify_from(ip: &str, to: SocketAddr) -> (String, TcpStream) {
    let mut s = connect_from(ip, to);
    let name = read_line(&mut s);
    (name, s)
}

/// Ok if `s` is closed by the peer without data (refused, SPEC §5.1).
pub fn check_stream_refused(mut s: TcpStream) -> Result<(), String> {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut buf = [0u8; 256];
    loop {
        return match s.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "{peer}: expected EOF without data (refused), got {:?}",
                String::from_utf8_lossy(&buf[..n])
            )),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("{peer}: expected EOF (refused), got {e}")),
        };
    }
}

/// Panics unless `to` refuses a client connecting from `ip`.
pub fn expect_refused_from(ip: &str, to: SocketAddr) {
    check_stream_refused(connect_from(ip, to)).unwrap_or_else(|e| panic!("from {ip}: {e}"));
}

/// Wall clock in ms since the epoch.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `show <what>` on a fresh admin connection.
pub fn show(admin: SocketAddr, what: &str) -> String {
    admin_cmd(admin, &format!("show {what}\n"))
}

/// The `(hb|unable|deadline)` triple of `server` in rule `rule` of `show rules`.
pub fn triple(admin: SocketAddr, rule: &str, server: SocketAddr) -> (u32, u32, u64) {
    let rules = show(admin, "rules");
    let prefix = format!("{rule} | ");
    let line = rules
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no rule {rule} in show rules:\n{rules}"));
    let key = format!(" {server}(");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no server {server} in {line:?}"));
    let rest = &line[at + key.len()..];
    let inner = &rest[..rest.find(')').expect("closing parenthesis")];
    let parts: Vec<&str> = inner.split('|').collect();
    assert_eq!(parts.len(), 3, "{line:?}");
    (
        parts[0].parse().unwrap(),
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    )
}

/// Waits until `server`'s triple satisfies `pred`; returns it (panics with the last one).
pub fn wait_triple(
    admin: SocketAddr,
    rule: &str,
    server: SocketAddr,
    timeout: Duration,
    pred: impl Fn((u32, u32, u64)) -> bool,
) -> (u32, u32, u64) {
    wait_for(timeout, || {
        Some(triple(admin, rule, server)).filter(|t| pred(*t))
    })
    .unwrap_or_else(|| {
        panic!(
            "{rule} {server}: triple never matched within {timeout:?}; last {:?}",
            triple(admin, rule, server)
        )
    })
}

/// `show <what> json`, parsed.
pub fn show_json(admin: SocketAddr, what: &str) -> Value {
    let text = admin_cmd(admin, &format!("show {what} json\n"));
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "one line: {text:?}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("show {what} json: {e}: {text}"))
}

/// The `show stats json` object of rule `rule`.
pub fn rule_stats(admin: SocketAddr, rule: &str) -> Value {
    let doc = show_json(admin, "stats");
    doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in {doc}"))
        .clone()
}

/// The `show stats json` object of `server` in rule `rule`.
pub fn server_stats(admin: SocketAddr, rule: &str, server: SocketAddr) -> Value {
    let r = rule_stats(admin, rule);
    r["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == server.to_string())
        .unwrap_or_else(|| panic!("no server {server} in {r}"))
        .clone()
}

/// Waits until `pred(stats of server)` holds; panics with the last stats otherwise.
pub fn wait_server_stats(
    admin: SocketAddr,
    rule: &str,
    server: SocketAddr,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(WAIT_TIMEOUT, || {
        Some(server_stats(admin, rule, server)).filter(|s| pred(s))
    })
    .unwrap_or_else(|| {
        panic!(
            "{rule} {server}: stats never showed {what}; last {}",
            server_stats(admin, rule, server)
        )
    })
}

/// Waits until rule `rule` has `n` active sessions.
pub fn wait_rule_active(admin: SocketAddr, rule: &str, n: u64) {
    if wait_for(WAIT_TIMEOUT, || {
        (rule_stats(admin, rule)["active"] == n).then_some(())
    })
    .is_none()
    {
        panic!(
            "rule {rule}: active never became {n}: {}",
            rule_stats(admin, rule)
        );
    }
}

/// Sends `line` to the admin port and returns the complete reply (connection closed after).
pub fn admin(admin_addr: SocketAddr, line: &str) -> String {
    admin_cmd(admin_addr, &format!("{line}\n"))
}

/// The access-log lines (SPEC §10) of client `client`.
pub fn access_lines(log: &str, client: SocketAddr) -> Vec<String> {
    let key = format!(" client={client} ");
    log.lines()
        .filter(|l| l.contains("| session rule=") && l.contains(&key))
        .map(String::from)
        .collect()
}

/// Checks an access line against SPEC §10 and returns its message fields after `duration_ms`
/// removed, e.g. `session rule=r1 client=… listen=… server=- path=- bytes_in=0 bytes_out=0
/// close=filter`.
pub fn access_fields(line: &str) -> String {
    // `YYYY-MM-DD hh:mm:ss.uuuuuu | INFO  | pid:tid | message`
    let parts: Vec<&str> = line.splitn(4, " | ").collect();
    assert_eq!(parts.len(), 4, "access line layout: {line:?}");
    assert_eq!(parts[1], "INFO ", "access lines are INFO: {line:?}");
    let msg = parts[3];
    let fields: Vec<&str> = msg
        .split(' ')
        .filter(|f| !f.starts_with("duration_ms="))
        .collect();
    let dur = msg
        .split(' ')
        .find_map(|f| f.strip_prefix("duration_ms="))
        .unwrap_or_else(|| panic!("no duration_ms in {line:?}"));
    assert!(
        dur.parse::<u64>().is_ok(),
        "duration_ms is a number: {line:?}"
    );
    fields.join(" ")
}

/// Waits for the access line of `client` and returns it without `duration_ms` (see
/// `access_fields`).
pub fn wait_access(g6: &crate::support::G6Proc, client: SocketAddr) -> String {
    let line = wait_for(WAIT_TIMEOUT, || {
        access_lines(&g6.log_contents(), client).pop()
    })
    .unwrap_or_else(|| panic!("no access line for {client} {}", g6.diagnostics()));
    access_fields(&line)
}

/// The process doing the networking: the worker (SPEC §3), or the monitor itself if it has
/// no child.
pub fn worker_pid(g6: &crate::support::G6Proc) -> i32 {
    let pids = g6.pids();
    match pids[1..] {
        [] => pids[0],
        [worker] => worker,
        _ => panic!("expected one worker process, found {pids:?}"),
    }
}

/// `socket:[inode]` of descriptor `fd` of process `pid`.
pub fn fd_inode(pid: i32, fd: i32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn parse_proc_addr(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes()),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::from(b)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every TCP socket of the host: (local, remote, inode), from /proc/net/tcp and tcp6.
pub fn tcp_sockets() -> Vec<(SocketAddr, SocketAddr, u64)> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            if let (Some(l), Some(r), Ok(inode)) = (
                parse_proc_addr(cols[1]),
                parse_proc_addr(cols[2]),
                cols[9].parse::<u64>(),
            ) {
                out.push((l, r, inode));
            }
        }
    }
    out
}

/// Whether descriptor `fd` of `pid` is the TCP socket with these local and remote addresses
/// (`None` = any).
pub fn fd_is_socket(
    pid: i32,
    fd: i32,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
) -> bool {
    let Some(inode) = fd_inode(pid, fd) else {
        return false;
    };
    tcp_sockets().iter().any(|(l, r, i)| {
        *i == inode && local.is_none_or(|a| a == *l) && remote.is_none_or(|a| a == *r)
    })
}

/// Writes `data` and panics on failure.
pub fn send(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data)
        .unwrap_or_else(|e| panic!("send {} bytes: {e}", data.len()));
}

/// Sets the soft RLIMIT_NOFILE of `pid`; returns the previous soft limit.
pub fn set_nofile_soft(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a null new limit only reads into `old`.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit get: {}", io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: valid pointers; changes only the soft limit of our own child.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit set: {}", io::Error::last_os_error());
    old.rlim_cur
}

/// The descriptor number `pid` would get next (the lowest one not open): a soft
/// RLIMIT_NOFILE equal to it leaves no descriptor for a new socket.
pub fn lowest_free_fd(pid: i32) -> u64 {
    let mut open: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    open.sort_unstable();
    (0u64..).find(|n| open.binary_search(n).is_err()).unwrap()
}
