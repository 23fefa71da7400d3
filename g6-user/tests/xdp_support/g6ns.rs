//! A g6 inside a server namespace of a [`Segment`], and clients in the client namespace.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use socket2::{Domain, Socket, Type};

use super::netns::{CLIENT_IPS, SERVER_IP, Segment};
use crate::support::{Backend, G6Proc, WAIT_TIMEOUT, wait_until};

pub const ADMIN_PORT: u16 = 8600;
pub const WEB_PORT: u16 = 8080;

/// Root and an eBPF object, else SKIP (or fail under G6_EBPF_STRICT=1).
pub fn available() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        super::skip_or_fail("not root (namespaces and XDP need it)");
        return false;
    }
    if !g6::fastpath::object_embedded() {
        super::skip_or_fail("built without the eBPF object");
        return false;
    }
    true
}

/// The config: admin and `web` for .2, `web` also for .4 (.3 is allowed nowhere).
/// Fixed ports are fine here: the namespace is ours alone.
pub fn conf(server: SocketAddr, extra_web_pattern: &str) -> String {
    let [a, _, c] = CLIENT_IPS;
    format!(
        "admin G {a}:* - {SERVER_IP}:{ADMIN_PORT} ;\n\
         web RR {a}:* {c}:* {extra_web_pattern} - {SERVER_IP}:{WEB_PORT} > {server} ;\n"
    )
}

/// g6 started inside the server namespace (`ip netns exec`, which execs g6 itself).
pub fn start(seg: &Segment, conf: &str, extra: &[&str]) -> G6Proc {
    G6Proc::start_in_netns(seg.server.name(), conf, &[], extra)
}

/// Connects from `src` (a client address) to the server's `port`, within `timeout`; on
/// success returns the first line the server sends (the backend's name for `web`).
pub fn connect_from(
    seg: &Segment,
    src: &str,
    port: u16,
    timeout: Duration,
) -> std::io::Result<String> {
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    let dst: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    seg.client.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&src.into())?;
        s.connect_timeout(&dst.into(), timeout)?;
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    })
}

/// Runs admin `commands` from the allowed client (then `quit`); the whole reply.
pub fn admin(seg: &Segment, commands: &str) -> String {
    let src: SocketAddr = format!("{}:0", CLIENT_IPS[0]).parse().unwrap();
    let dst: SocketAddr = format!("{SERVER_IP}:{ADMIN_PORT}").parse().unwrap();
    let input = format!("{commands}quit\n");
    seg.client.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&src.into()).unwrap();
        s.connect_timeout(&dst.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("admin connect: {e}"));
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(input.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

/// Runs admin `commands` (then `quit`) inside the server's namespace against
/// 127.0.0.1:`port`, for a console that listens on loopback only; the whole reply.
pub fn admin_on_loopback(seg: &Segment, port: u16, commands: &str) -> String {
    let input = format!("{commands}quit\n");
    seg.server.run(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("admin connect to 127.0.0.1:{port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(input.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

/// `(dropped_blocked, dropped_not_allowed)` from the `xdp` line of `show stats`.
pub fn drops(seg: &Segment) -> (u64, u64) {
    let stats = admin(seg, "show stats\n");
    let line = stats
        .lines()
        .find(|l| l.starts_with("xdp "))
        .unwrap_or_else(|| panic!("no xdp line in {stats:?}"));
    let field = |k: &str| -> u64 {
        line.split(' ')
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line:?}"))
    };
    (field("dropped_blocked="), field("dropped_not_allowed="))
}

pub fn backend(seg: &Segment) -> Backend {
    seg.server.run(|| Backend::identify("s1"))
}

/// The access lines g6 logged for clients from `ip`.
pub fn accesses_from(g6: &G6Proc, ip: &str) -> usize {
    let tag = format!("client={ip}:");
    g6.log_contents()
        .lines()
        .filter(|l| l.contains("session rule=") && l.contains(&tag))
        .count()
}

pub const DROPPED: Duration = Duration::from_millis(700);

pub fn signal_pid(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
}

pub fn wait_no_xdp(seg: &Segment) -> bool {
    wait_until(WAIT_TIMEOUT, || !seg.server_has_xdp())
}
