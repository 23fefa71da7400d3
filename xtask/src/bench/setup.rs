//! What the benchmark needs before it measures: Debian packages, the release `g6`, the
//! backends' files and every server's configuration, and free loopback ports.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::procs::{is_root, run_ok, run_timeout};
use super::{Kind, Target};

/// Debian packages the benchmark runs.
const PACKAGES: &[&str] = &["haproxy", "nginx", "libnginx-mod-stream", "wrk", "iperf3"];

/// nginx's dynamic stream module as Debian installs it.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Size of the small page (bytes) and of the file.
pub const PAGE_BYTES: usize = 600;
pub const FILE_BYTES: usize = 100 * 1024;

fn installed(pkg: &str) -> bool {
    run_timeout(
        Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]),
        Duration::from_secs(30),
    )
    .is_ok_and(|f| f.ok && f.stdout.contains("install ok installed"))
}

/// Installs the missing packages with apt-get (root only; otherwise names them and fails).
pub fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("    packages present: {}", PACKAGES.join(", "));
    } else if !is_root() {
        bail!(
            "missing Debian packages (run as root, or install them): {}",
            missing.join(" ")
        );
    } else {
        println!("    installing: {}", missing.join(" "));
        run_ok(
            Command::new("apt-get").args(["update", "-q"]),
            Duration::from_secs(300),
        )?;
        run_ok(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(900),
        )?;
    }
    if !Path::new(NGINX_STREAM_MODULE).exists() {
        bail!("{NGINX_STREAM_MODULE} missing (package libnginx-mod-stream)");
    }
    Ok(())
}

/// Builds g6 and the floor relay (release), then [`copy_built`]: private copies in the run
/// folder, so that a concurrent rebuild cannot change them during the run.
pub fn build_binaries(root: &Path, run_dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let f = run_timeout(
        Command::new(cargo)
            .args(["build", "--release", "-p", "g6-user", "-p", "xtask"])
            .args(["--bin", "g6", "--bin", FLOOR_RELAY])
            .current_dir(root),
        Duration::from_secs(45 * 60),
    )?;
    if !f.ok {
        let tail: Vec<&str> = f.stderr.lines().collect();
        bail!(
            "cargo build --release (g6, {FLOOR_RELAY}): {}\n{}",
            f.status,
            tail[tail.len().saturating_sub(20)..].join("\n")
        );
    }
    if let Some(last) = f.stderr.lines().last() {
        println!("    {}", last.trim());
    }
    copy_built(root, run_dir)
}

/// The relay of the `floor` target (`xtask/src/bin/floor-relay.rs`), beside g6 in the run dir.
pub const FLOOR_RELAY: &str = "floor-relay";

/// Copies the built g6 and floor relay into the run dir; returns g6's copy.
pub fn copy_built(root: &Path, run_dir: &Path) -> Result<PathBuf> {
    for name in [FLOOR_RELAY, "g6"] {
        let built = root.join("target/release").join(name);
        let copy = run_dir.join(name);
        fs::copy(&built, &copy).with_context(|| {
            format!(
                "copy {} to {} (build it with `cargo build --release --bin {name}`)",
                built.display(),
                copy.display()
            )
        })?;
    }
    Ok(run_dir.join("g6"))
}

/// Fails, naming the port, if one of `ports` cannot be bound on 127.0.0.1.
pub fn check_ports_free(ports: &[u16]) -> Result<()> {
    for &p in ports {
        if let Err(e) = TcpListener::bind(("127.0.0.1", p)) {
            bail!("127.0.0.1:{p} is not free ({e}); choose other ports with --base-port");
        }
    }
    Ok(())
}

/// The loopback ports of one run.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    pub backend1: u16,
    pub backend2: u16,
    pub iperf: u16,
    /// The G6 data-path probe (INFO log) listens here briefly.
    pub probe: u16,
    base: u16,
}

impl Ports {
    pub fn new(base: u16) -> Ports {
        Ports {
            backend1: base,
            backend2: base + 1,
            iperf: base + 2,
            probe: base + 3,
            base,
        }
    }
    /// (http, bulk) listen ports of the target with this index.
    pub fn target(&self, index: usize) -> (u16, u16) {
        let p = self.base + 10 + 2 * index as u16;
        (p, p + 1)
    }
    pub fn backends(&self) -> [u16; 2] {
        [self.backend1, self.backend2]
    }
}

/// A page of exactly `PAGE_BYTES` naming its site, so a proxy's rotation can be checked.
pub fn page(site: usize) -> String {
    let mut s = format!(
        "<!doctype html>\n<html><head><title>g6-bench site {site}</title></head><body>\n<h1>g6-bench site {site}</h1>\n<p>"
    );
    let tail = "</p>\n</body></html>\n";
    while s.len() + tail.len() < PAGE_BYTES {
        s.push_str("lorem ipsum ");
    }
    s.truncate(PAGE_BYTES - tail.len());
    s.push_str(tail);
    s
}

/// Deterministic incompressible-looking bytes (xorshift).
fn file_bytes(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..FILE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Think time (ms) of the `paced` figure: each wrk connection waits this long before its next
/// request. 32 connections then offer at most 32 × 1000 / 2 = 16 k req/s, and about 10 k once
/// the response time is added: under half of what any proxy here serves at saturation (about
/// 24 k req/s), so the client, not the proxy, sets the rate.
pub const PACED_THINK_MS: u32 = 2;

/// The backends' document roots, the wrk scripts and all server configurations.
pub struct Files {
    pub dir: PathBuf,
    pub backend_conf: PathBuf,
    /// wrk's report hook (closed loop: the next request leaves as soon as a response is in).
    pub lua: PathBuf,
    /// The report hook plus a think time of [`PACED_THINK_MS`] before each request.
    pub paced_lua: PathBuf,
}

/// Writes site files and the backend and wrk files; proxies' configs come from [`proxy_conf`].
pub fn write_files(dir: &Path, ports: &Ports, nofile: u64) -> Result<Files> {
    for site in 1..=2 {
        let root = dir.join(format!("www{site}"));
        fs::create_dir_all(&root)?;
        fs::write(root.join("index.html"), page(site))?;
        fs::write(root.join("100k.bin"), file_bytes(site as u64 * 7919))?;
    }
    let tmp = dir.join("nginx-tmp");
    fs::create_dir_all(&tmp)?;
    let t = tmp.display();
    let d = dir.display();
    let backend_conf = dir.join("backend-nginx.conf");
    fs::write(
        &backend_conf,
        format!(
            "# Backends: two sites, one nginx (2 workers), no access log, long keep-alive.\n\
             worker_processes 2;\n\
             worker_rlimit_nofile {nofile};\n\
             pid {d}/backend-nginx.pid;\n\
             error_log {d}/backend-nginx.error.log warn;\n\
             daemon off;\n\
             events {{ worker_connections {wc}; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   sendfile on;\n\
             \x20   tcp_nopush on;\n\
             \x20   keepalive_requests 100000000;\n\
             \x20   keepalive_timeout 300s;\n\
             \x20   client_header_timeout 300s;\n\
             \x20   types {{ text/html html; application/octet-stream bin; }}\n\
             \x20   client_body_temp_path {t}/body;\n\
             \x20   proxy_temp_path {t}/proxy;\n\
             \x20   fastcgi_temp_path {t}/fastcgi;\n\
             \x20   uwsgi_temp_path {t}/uwsgi;\n\
             \x20   scgi_temp_path {t}/scgi;\n\
             \x20   server {{ listen 127.0.0.1:{b1} backlog=4096; root {d}/www1; }}\n\
             \x20   server {{ listen 127.0.0.1:{b2} backlog=4096; root {d}/www2; }}\n\
             }}\n",
            wc = nofile.saturating_sub(100),
            b1 = ports.backend1,
            b2 = ports.backend2,
        ),
    )?;
    let lua = dir.join("report.lua");
    fs::write(&lua, WRK_LUA)?;
    let paced_lua = dir.join("paced.lua");
    fs::write(&paced_lua, paced_script(PACED_THINK_MS))?;
    Ok(Files {
        dir: dir.to_path_buf(),
        backend_conf,
        lua,
        paced_lua,
    })
}

/// [`WRK_LUA`] plus wrk's `delay` hook: every connection waits `think_ms` before each request
/// (wrk starts a request's latency clock when it writes it, so the wait is not in the latency).
fn paced_script(think_ms: u32) -> String {
    format!(
        "{WRK_LUA}\n-- g6-bench paced: think {think_ms} ms before each request.\n\
         delay = function() return {think_ms} end\n"
    )
}

/// wrk's `done` hook: one JSON line with exact counts and latency percentiles (µs).
const WRK_LUA: &str = r#"-- g6-bench: print wrk's summary as one JSON line.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "G6BENCH {\"requests\":%.0f,\"duration_us\":%.0f,\"bytes\":%.0f," ..
    "\"connect\":%.0f,\"read\":%.0f,\"write\":%.0f,\"status\":%.0f,\"timeout\":%.0f," ..
    "\"p50_us\":%.0f,\"p90_us\":%.0f,\"p99_us\":%.0f,\"p999_us\":%.0f,\"mean_us\":%.1f,\"max_us\":%.0f}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"#;

/// Writes the configuration of a proxy target; returns its path (None for `direct`).
/// Every proxy is sized for `sessions` concurrent sessions (2 descriptors each).
pub fn proxy_conf(
    files: &Files,
    t: &Target,
    ports: &Ports,
    threads: u32,
    nofile: u64,
    sessions: usize,
) -> Result<Option<PathBuf>> {
    let d = files.dir.display();
    let (b1, b2, ip) = (ports.backend1, ports.backend2, ports.iperf);
    let (http, bulk) = (t.http_port, t.bulk_port);
    let (path, text) = match t.kind {
        Kind::Direct => return Ok(None),
        Kind::Haproxy { splice } => {
            let maxconn = sessions;
            let mut s = format!(
                "# HAProxy: mode tcp, round robin, {threads} thread(s), no logging{}.\n\
                 global\n\
                 \x20   nbthread {threads}\n\
                 \x20   maxconn {maxconn}\n\
                 \x20   pidfile {d}/{name}.pid\n\
                 defaults\n\
                 \x20   mode tcp\n\
                 \x20   maxconn {maxconn}\n\
                 \x20   timeout connect 5s\n\
                 \x20   timeout client 300s\n\
                 \x20   timeout server 300s\n",
                if splice { ", kernel splicing" } else { "" },
                name = t.name,
            );
            if splice {
                // Pipes are needed only while bytes are in flight; the default (maxconn / 4)
                // would not fit in the descriptor limit.
                s = s.replacen("    maxconn", "    maxpipes 256\n    maxconn", 1);
                s.push_str("    option splice-auto\n");
            }
            write!(
                s,
                "frontend http\n\
                 \x20   bind 127.0.0.1:{http} backlog 4096\n\
                 \x20   default_backend web\n\
                 backend web\n\
                 \x20   balance roundrobin\n\
                 \x20   server s1 127.0.0.1:{b1}\n\
                 \x20   server s2 127.0.0.1:{b2}\n\
                 frontend bulk\n\
                 \x20   bind 127.0.0.1:{bulk} backlog 4096\n\
                 \x20   default_backend iperf\n\
                 backend iperf\n\
                 \x20   balance roundrobin\n\
                 \x20   server i1 127.0.0.1:{ip}\n"
            )?;
            (files.dir.join(format!("{}.cfg", t.name)), s)
        }
        Kind::Nginx => (
            files.dir.join(format!("{}.conf", t.name)),
            format!(
                "# nginx stream: round robin, {threads} worker process(es), no access log.\n\
                 load_module {NGINX_STREAM_MODULE};\n\
                 worker_processes {threads};\n\
                 worker_rlimit_nofile {nofile};\n\
                 pid {d}/{name}.pid;\n\
                 error_log {d}/{name}.error.log warn;\n\
                 daemon off;\n\
                 events {{ worker_connections {wc}; }}\n\
                 stream {{\n\
                 \x20   upstream web {{ server 127.0.0.1:{b1}; server 127.0.0.1:{b2}; }}\n\
                 \x20   upstream iperf {{ server 127.0.0.1:{ip}; }}\n\
                 \x20   server {{ listen 127.0.0.1:{http} backlog=4096; proxy_pass web; proxy_timeout 300s; }}\n\
                 \x20   server {{ listen 127.0.0.1:{bulk} backlog=4096; proxy_pass iperf; proxy_timeout 300s; }}\n\
                 }}\n",
                name = t.name,
                wc = 2 * sessions + 100,
            ),
        ),
        Kind::G6 { .. } => (
            files.dir.join(format!("{}.conf", t.name)),
            g6_conf(http, bulk, ports),
        ),
        Kind::Floor => (
            files.dir.join(format!("{}.routes", t.name)),
            format!(
                "# {FLOOR_RELAY}: LISTEN BACKEND… (round robin), one thread.\n\
                 127.0.0.1:{http} 127.0.0.1:{b1} 127.0.0.1:{b2}\n\
                 127.0.0.1:{bulk} 127.0.0.1:{ip}\n"
            ),
        ),
    };
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(Some(path))
}

/// G6's config: the same two round-robin rules.
pub fn g6_conf(http: u16, bulk: u16, ports: &Ports) -> String {
    format!(
        "// g6-bench: round robin over the two nginx sites, and to the iperf3 server.\n\
         bench_http RR *:* - 127.0.0.1:{http} > 127.0.0.1:{} 127.0.0.1:{} ;\n\
         bench_bulk RR *:* - 127.0.0.1:{bulk} > 127.0.0.1:{} ;\n",
        ports.backend1, ports.backend2, ports.iperf
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_the_size_and_names_its_site() {
        for site in 1..=2 {
            let p = page(site);
            assert_eq!(p.len(), PAGE_BYTES);
            assert!(p.contains(&format!("g6-bench site {site}")));
        }
    }

    #[test]
    fn paced_script_keeps_the_report_and_adds_the_think_time() {
        let s = paced_script(2);
        assert!(s.starts_with(WRK_LUA));
        assert!(s.contains("delay = function() return 2 end"));
    }

    #[test]
    fn file_has_the_size() {
        assert_eq!(file_bytes(3).len(), FILE_BYTES);
        assert_ne!(file_bytes(3), file_bytes(5));
    }
}
