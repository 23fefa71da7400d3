//! The loads: wrk (HTTP, keep-alive or a connection per request), iperf3 (bulk), idle
//! connections (memory per session), and a tiny HTTP client for readiness and rotation checks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::procs::{
    Proc, check_interrupted, established_to, pause, run_timeout, settled_memory_kb, show,
};

/// What one timed load did, as its client reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Load {
    pub command: String,
    pub client_cpu_s: f64,
    /// Anything that makes the sample untrustworthy; empty when the load fully succeeded.
    pub errors: Vec<String>,
    pub requests: f64,
    pub bytes: f64,
    pub seconds: f64,
    pub latency_us: Option<Latency>,
    /// The client's own report (wrk's summary line, iperf3's `end` object).
    pub report: serde_json::Value,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub mean: f64,
    pub max: f64,
}

/// The line printed by setup::WRK_LUA.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct WrkSummary {
    requests: f64,
    duration_us: f64,
    bytes: f64,
    connect: f64,
    read: f64,
    write: f64,
    status: f64,
    timeout: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    mean_us: f64,
    max_us: f64,
}

pub struct WrkParams<'a> {
    pub port: u16,
    pub path: &'a str,
    pub connections: u32,
    pub seconds: u32,
    /// `Connection: close`: a new connection per request.
    pub close: bool,
    /// The Lua script: setup's report hook, or its paced variant (think time before requests).
    pub lua: &'a Path,
    /// Smallest acceptable body; shorter average responses are an error.
    pub min_body: usize,
}

/// Least share of the offered ceiling (connections × 1000 / think ms) a paced load must reach.
/// A connection's cycle is its think time plus the time its request takes (response latency
/// and wrk's timer slack); at half the ceiling these two are equal. Below it, each connection
/// waits for the server longer than it thinks, so the server path, not the client's pacing,
/// sets the rate: the round is not the client-bound case the figure is for. Judged on `direct`
/// only: judging a proxy on its own rate would turn its misses into left-out rounds. (Direct
/// here: about 65 % of the ceiling.)
pub const PACED_MIN_SHARE: f64 = 0.5;

/// Why a paced load at `rate` req/s was not client-bound, if it was not.
pub fn not_client_bound(rate: f64, connections: u32, think_ms: u32) -> Option<String> {
    let ceiling = f64::from(connections) * 1000.0 / f64::from(think_ms.max(1));
    (rate < PACED_MIN_SHARE * ceiling).then(|| {
        format!(
            "not client-bound: {rate:.0} req/s is below {:.0} % of the offered ceiling \
             {ceiling:.0} req/s ({connections} connections, {think_ms} ms think time), so the \
             requests took longer than the think time",
            PACED_MIN_SHARE * 100.0
        )
    })
}

pub fn wrk_command(p: &WrkParams) -> Command {
    let mut c = Command::new("wrk");
    c.args(["-t1", "--latency", "--timeout", "2s"])
        .arg(format!("-c{}", p.connections))
        .arg(format!("-d{}s", p.seconds))
        .arg("-s")
        .arg(p.lua);
    if p.close {
        c.args(["-H", "Connection: close"]);
    }
    c.arg(format!("http://127.0.0.1:{}{}", p.port, p.path));
    c
}

pub fn wrk(p: &WrkParams) -> Result<Load> {
    let mut cmd = wrk_command(p);
    let command = show(&cmd);
    let f = run_timeout(&mut cmd, Duration::from_secs(u64::from(p.seconds) + 20))?;
    let mut load = Load {
        command,
        client_cpu_s: f.cpu_s,
        ..Load::default()
    };
    let line = f.stdout.lines().find_map(|l| l.strip_prefix("G6BENCH "));
    let summary: Option<WrkSummary> = line.and_then(|l| serde_json::from_str(l).ok());
    if !f.ok {
        load.errors
            .push(format!("wrk {}: {}", f.status, f.stderr.trim()));
    }
    let Some(s) = summary else {
        load.errors
            .push(format!("no wrk summary in its output: {}", f.stdout.trim()));
        return Ok(load);
    };
    let socket = s.connect + s.read + s.write + s.timeout;
    if socket > 0.0 {
        load.errors.push(format!(
            "socket errors: connect {}, read {}, write {}, timeout {}",
            s.connect, s.read, s.write, s.timeout
        ));
    }
    if s.status > 0.0 {
        load.errors
            .push(format!("{} non-2xx/3xx responses", s.status));
    }
    if s.requests < 1.0 {
        load.errors.push("no request completed".into());
    } else if s.bytes / s.requests < p.min_body as f64 {
        load.errors.push(format!(
            "short responses: {:.0} B on average, body is {} B",
            s.bytes / s.requests,
            p.min_body
        ));
    }
    load.requests = s.requests;
    load.bytes = s.bytes;
    load.seconds = s.duration_us / 1e6;
    load.latency_us = Some(Latency {
        p50: s.p50_us,
        p90: s.p90_us,
        p99: s.p99_us,
        p999: s.p999_us,
        mean: s.mean_us,
        max: s.max_us,
    });
    load.report = serde_json::to_value(&s)?;
    Ok(load)
}

pub fn iperf_command(port: u16, streams: u32, seconds: u32) -> Command {
    let mut c = Command::new("iperf3");
    c.args(["-c", "127.0.0.1", "-J", "--connect-timeout", "3000"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-P")
        .arg(streams.to_string())
        .arg("-t")
        .arg(seconds.to_string());
    c
}

/// iperf3 client upload; `restart` is called (to restart the server) after a failure, and a
/// "server is busy" answer is retried once.
pub fn iperf(
    port: u16,
    streams: u32,
    seconds: u32,
    restart: &mut dyn FnMut() -> Result<()>,
) -> Result<Load> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let load = iperf_once(port, streams, seconds)?;
        if load.errors.is_empty() {
            return Ok(load);
        }
        restart()?;
        let busy = load.errors.iter().any(|e| e.contains("busy"));
        if !(busy && attempt == 1) {
            return Ok(load);
        }
    }
}

fn iperf_once(port: u16, streams: u32, seconds: u32) -> Result<Load> {
    let mut cmd = iperf_command(port, streams, seconds);
    let command = show(&cmd);
    let f = run_timeout(&mut cmd, Duration::from_secs(u64::from(seconds) + 25))?;
    let mut load = Load {
        command,
        client_cpu_s: f.cpu_s,
        ..Load::default()
    };
    let json: Option<serde_json::Value> = serde_json::from_str(&f.stdout).ok();
    if let Some(e) = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(|e| e.as_str())
    {
        load.errors.push(format!("iperf3: {e}"));
    } else if !f.ok {
        load.errors.push(format!(
            "iperf3 {}: {}",
            f.status,
            f.stderr.trim().chars().take(300).collect::<String>()
        ));
    }
    let Some(end) = json.as_ref().and_then(|j| j.get("end")) else {
        if load.errors.is_empty() {
            load.errors.push("no iperf3 report".into());
        }
        return Ok(load);
    };
    let recv = &end["sum_received"];
    load.bytes = recv["bytes"].as_f64().unwrap_or(0.0);
    load.seconds = recv["seconds"].as_f64().unwrap_or(0.0);
    if load.bytes <= 0.0 || load.seconds <= 0.0 {
        load.errors.push("iperf3 received nothing".into());
    }
    load.report = serde_json::json!({
        "sum_received": recv,
        "sum_sent": end["sum_sent"],
        "cpu_utilization_percent": end["cpu_utilization_percent"],
    });
    Ok(load)
}

/// Memory per idle session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Idle {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    /// Upstream connections (to the backends) seen established at the peak.
    pub upstream: usize,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub pss_before_kb: u64,
    pub pss_after_kb: u64,
    pub seconds_to_open: f64,
    pub errors: Vec<String>,
}

/// Opens `n` connections that send nothing through the proxy on `port`, waits until the proxy
/// holds an upstream connection for each, reads the proxy's memory, closes them and waits until
/// the upstream connections are gone.
pub fn idle(port: u16, n: usize, backend_ports: &[u16], proxy: &Proc) -> Result<Idle> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut r = Idle {
        requested: n,
        ..Idle::default()
    };
    let base = established_to(backend_ports);
    let tree = proxy.tree();
    (r.rss_before_kb, r.pss_before_kb) = settled_memory_kb(&tree, Duration::from_secs(3))?;
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        if i % 256 == 0 {
            check_interrupted()?;
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => conns.push(s),
            Err(e) => {
                r.failed += 1;
                if r.failed == 1 {
                    r.errors.push(format!("connect #{i}: {e}"));
                }
                if r.failed >= 20 {
                    break;
                }
            }
        }
    }
    r.opened = conns.len();
    r.seconds_to_open = t0.elapsed().as_secs_f64();
    if r.failed > 0 {
        r.errors.push(format!("{} connects failed", r.failed));
    }
    // Every accepted client has its server connection once this many are established.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        r.upstream = established_to(backend_ports).saturating_sub(base);
        if r.upstream >= r.opened {
            break;
        }
        if Instant::now() >= deadline {
            r.errors.push(format!(
                "only {} of {} upstream connections after 30 s",
                r.upstream, r.opened
            ));
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    (r.rss_after_kb, r.pss_after_kb) = settled_memory_kb(&tree, Duration::from_secs(5))?;
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while established_to(backend_ports) > base {
        if Instant::now() >= deadline {
            r.errors
                .push("upstream connections still open 30 s after the clients closed".into());
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    Ok(r)
}

/// One `GET path` with `Connection: close`: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, Vec<u8>)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
    Ok((status, buf[split + 4..].to_vec()))
}

/// Polls `GET /index.html` until a 200 comes back (deadline), failing early if `who` ends.
pub fn wait_http(port: u16, limit: Duration, who: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        check_interrupted()?;
        let err = match http_get(port, "/index.html") {
            Ok((200, _)) => return Ok(()),
            Ok((st, _)) => format!("status {st}"),
            Err(e) => format!("{e:#}"),
        };
        if let Some(how) = who.ended() {
            bail!(
                "{} ended ({how}); log {}:\n{}",
                who.name,
                who.log.display(),
                who.log_tail(10)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "no HTTP 200 through port {port} ({}) after {limit:?}: {err}; log {}:\n{}",
                who.name,
                who.log.display(),
                who.log_tail(10)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Four requests through `port` return the right page and reach the sites in `expect_sites`.
pub fn check_rotation(port: u16, expect_sites: &[usize]) -> Result<()> {
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (st, body) = http_get(port, "/index.html")?;
        if st != 200 {
            bail!("status {st}");
        }
        let site = (1..=2)
            .find(|s| body == super::setup::page(*s).as_bytes())
            .with_context(|| format!("unexpected body ({} bytes)", body.len()))?;
        seen.push(site);
    }
    for s in expect_sites {
        if !seen.contains(s) {
            bail!("site {s} never reached in 4 requests (saw {seen:?})");
        }
    }
    let (st, body) = http_get(port, "/100k.bin")?;
    if st != 200 || body.len() != super::setup::FILE_BYTES {
        bail!("/100k.bin: status {st}, {} bytes", body.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_load_must_reach_half_the_offered_ceiling() {
        // 32 connections, 2 ms think: at most 16 000 req/s offered.
        assert_eq!(not_client_bound(10_400.0, 32, 2), None);
        assert_eq!(not_client_bound(8_000.0, 32, 2), None);
        let e = not_client_bound(7_999.0, 32, 2).expect("below half the ceiling");
        assert!(e.contains("16000 req/s"), "{e}");
    }
}
