//! `cargo xtask bench`: G6 side by side with HAProxy, nginx `stream` and a direct connection,
//! all on loopback, in one run.
//!
//! * Backends: one nginx (2 workers) serving two sites (a 600 B page and a 100 KiB file) on two
//!   ports, and an iperf3 server.
//! * Targets, each on its own pair of ports (HTTP rule: round robin over the two sites; bulk
//!   rule: to iperf3), all started once and stopped by PID at the end (guards): `direct` (no
//!   proxy), `haproxy` (mode tcp), `haproxy-splice` (same with `option splice-auto`), `nginx`
//!   (stream), `g6-sockmap`, `g6-splice`, `g6-copy`, and `floor` (`floor-relay`: the least a
//!   user-space relay can do, a bound for every proxy). Every proxy gets the same number of
//!   threads/worker processes (`--threads`, default 1 = g6's default on 2 CPUs; the floor
//!   relay has one) and no access log.
//! * Figures (`--tests`): `conn` (a connection per request), `keepalive` (request rate and
//!   latency at saturation), `paced` (the same requests with a think time per connection, so
//!   the client, not the proxy, sets the rate), `file` (100 KiB responses, keep-alive), `bulk1`/`bulk8` (iperf3 upload, 1 and 8
//!   streams), `idle` (memory per idle session); RSS after start is always taken. CPU is the
//!   whole machine's busy time from /proc/stat over each load (so kernel threads count), and
//!   also split per process group (proxy, kernel threads, backends, client).
//! * Rounds: within a round each figure is measured for every target in turn, the order rotated
//!   per round; ratios are taken within a round, then the median and min–max over rounds.
//! * Output: target/bench/results.{json,md} and chart.svg; `--publish` copies them into
//!   docs/bench/.

mod load;
mod procs;
mod report;
mod setup;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use load::{Idle, Load, WrkParams};
use procs::{CpuUse, Proc, Procs, check_interrupted, pause, run_timeout, show};
use setup::{Files, Ports};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Development run: 1 round, 2-second loads, 1 000 idle connections (about 2 minutes).
    #[arg(long)]
    pub quick: bool,
    /// CI-sized check that the benchmark works: every target and figure once, 1-second loads,
    /// 200 idle connections; fails unless every load completed without errors.
    #[arg(long)]
    pub smoke: bool,
    /// Rounds; each round measures every figure for every target [default: 5; quick: 1].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds per timed load (wrk, iperf3) [default: 3; quick: 2].
    #[arg(long)]
    pub duration: Option<u32>,
    /// Targets, comma-separated: direct, haproxy, haproxy-splice, nginx, g6-sockmap, g6-splice,
    /// g6-copy, floor, or `peers` / `g6` for groups [default: all].
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Figures, comma-separated: conn, keepalive, paced, file, bulk1, bulk8, idle [default: all].
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// Idle connections for the memory-per-session figure [default: 10000; quick: 1000];
    /// capped by the descriptor limit (a proxy needs two per session).
    #[arg(long)]
    pub idle_conns: Option<usize>,
    /// Threads of every proxy: g6 `-t`, HAProxy `nbthread`, nginx `worker_processes`.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Concurrent wrk connections.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// First of the loopback ports used (base..base+3 backends, base+10.. targets).
    #[arg(long, default_value_t = 18400)]
    pub base_port: u16,
    /// g6 log level while measured (WARN: no access line per connection, as the peers log
    /// nothing per connection either).
    #[arg(long, default_value = "WARN")]
    pub g6_log_level: String,
    /// Neither install packages nor build g6 (use target/release/g6 as it is).
    #[arg(long)]
    pub no_setup: bool,
    /// Also copy results.md, results.json and chart.svg into docs/bench/.
    #[arg(long)]
    pub publish: bool,
    /// Measure nothing: render results.md and chart.svg again from this results.json.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub render: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Haproxy {
        splice: bool,
    },
    Nginx,
    G6 {
        path: DataPath,
    },
    /// The least a user-space relay can do (`floor-relay`): a bound, not a competitor.
    Floor,
}

/// A G6 `--data-path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPath {
    Sockmap,
    Splice,
    Copy,
}

impl DataPath {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Sockmap => "sockmap",
            DataPath::Splice => "splice",
            DataPath::Copy => "copy",
        }
    }
}

impl Kind {
    pub fn is_peer(self) -> bool {
        matches!(self, Kind::Haproxy { .. } | Kind::Nginx)
    }
    pub fn is_g6(self) -> bool {
        matches!(self, Kind::G6 { .. })
    }
}

const ALL_TARGETS: &[(&str, Kind)] = &[
    ("direct", Kind::Direct),
    ("haproxy", Kind::Haproxy { splice: false }),
    ("haproxy-splice", Kind::Haproxy { splice: true }),
    ("nginx", Kind::Nginx),
    (
        "g6-sockmap",
        Kind::G6 {
            path: DataPath::Sockmap,
        },
    ),
    (
        "g6-splice",
        Kind::G6 {
            path: DataPath::Splice,
        },
    ),
    (
        "g6-copy",
        Kind::G6 {
            path: DataPath::Copy,
        },
    ),
    ("floor", Kind::Floor),
];

pub const TESTS: &[&str] = &[
    "conn",
    "keepalive",
    "paced",
    "file",
    "bulk1",
    "bulk8",
    "idle",
];

/// A target and what was learnt when it started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    #[serde(flatten)]
    pub kind: Kind,
    pub http_port: u16,
    pub bulk_port: u16,
    /// Relay implementation: for G6 the data path it logged, else how the peer relays.
    pub data_path: String,
    /// G6's log lines about the data path (probe at INFO + the measured instance).
    pub data_path_log: Vec<String>,
    pub command: String,
    pub config: String,
    pub rss_start_kb: u64,
    pub pss_start_kb: u64,
    pub processes: usize,
    #[serde(skip)]
    proc_index: Option<usize>,
}

/// One measurement of one figure for one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub round: u32,
    pub seq: u32,
    pub target: String,
    pub test: String,
    pub ok: bool,
    pub errors: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
    pub at_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: u32,
    pub duration_s: u32,
    pub threads: u32,
    pub connections: u32,
    pub idle_conns_requested: usize,
    pub idle_conns: usize,
    pub nofile: u64,
    /// Concurrent sessions every proxy is configured for.
    pub sessions: usize,
    pub tests: Vec<String>,
    pub targets: Vec<String>,
    pub g6_log_level: String,
    pub ports: Ports,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub started_utc: String,
    pub elapsed_s: f64,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_total_kb: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub git: String,
    pub versions: BTreeMap<String, String>,
    pub commands: BTreeMap<String, String>,
    pub settings: Settings,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let t0 = Instant::now();
    procs::install_interrupt_handler();
    let root = workspace_root();
    if let Some(json) = &args.render {
        // Only render again (e.g. after a change of the report's layout); nothing is measured.
        let results = report::Results::read(json)?;
        return emit(&results, &root, args.publish);
    }
    let out_dir = root.join("target/bench");
    let run_dir = out_dir.join("run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).with_context(|| format!("remove {}", run_dir.display()))?;
    }
    fs::create_dir_all(&run_dir)?;

    let mut settings = resolve(args)?;
    println!(
        "g6-bench: targets {}; figures {}; {} round(s) of {} s loads",
        settings.targets.join(","),
        settings.tests.join(","),
        settings.rounds,
        settings.duration_s
    );

    let g6_bin = if args.no_setup {
        setup::copy_built(&root, &run_dir)?
    } else {
        step("install Debian packages if missing", setup::ensure_packages)?;
        step("cargo build --release (g6, floor-relay)", || {
            setup::build_binaries(&root, &run_dir)
        })?
    };

    settings.nofile = procs::raise_nofile();
    // A proxy holds 2 descriptors per session (HAProxy splice: + its pipes); keep 1000 spare.
    settings.sessions = (settings.nofile as usize).saturating_sub(1000) / 2;
    settings.idle_conns = settings
        .idle_conns_requested
        .min(settings.sessions.saturating_sub(100));
    if settings.idle_conns < settings.idle_conns_requested {
        println!(
            "    idle connections: {} (descriptor limit {}; a proxy holds 2 per session)",
            settings.idle_conns, settings.nofile
        );
    }

    let ports = settings.ports;
    let mut targets: Vec<Target> = settings
        .targets
        .iter()
        .map(|name| {
            let index = ALL_TARGETS.iter().position(|(n, _)| n == name).unwrap_or(0);
            let (http, bulk) = match ALL_TARGETS[index].1 {
                Kind::Direct => (ports.backend1, ports.iperf),
                _ => ports.target(index),
            };
            Target {
                name: name.clone(),
                kind: ALL_TARGETS[index].1,
                http_port: http,
                bulk_port: bulk,
                data_path: String::new(),
                data_path_log: Vec::new(),
                command: String::new(),
                config: String::new(),
                rss_start_kb: 0,
                pss_start_kb: 0,
                processes: 0,
                proc_index: None,
            }
        })
        .collect();
    let mut all_ports = vec![ports.backend1, ports.backend2, ports.iperf, ports.probe];
    for t in targets.iter().filter(|t| t.kind != Kind::Direct) {
        all_ports.extend([t.http_port, t.bulk_port]);
    }
    setup::check_ports_free(&all_ports)?;
    let files = setup::write_files(&run_dir, &ports, settings.nofile)?;

    let mut meta = collect_meta(&root, &g6_bin, &settings, &files)?;
    let mut procs = Procs::default();
    let mut samples = Vec::new();
    let result = (|| -> Result<()> {
        let backends = step("start backends (nginx sites, iperf3 server)", || {
            start_backends(&mut procs, &files, &ports)
        })?;
        step("start proxies", || {
            start_targets(
                &mut procs,
                &mut targets,
                &files,
                &ports,
                &settings,
                &g6_bin,
                &mut samples,
            )
        })?;
        let mut bench = Bench {
            procs: &mut procs,
            backends,
            targets: &targets,
            files: &files,
            settings: &settings,
            ports,
            t0,
            seq: 0,
            cpus: meta.cpus.max(1) as f64,
        };
        for round in 1..=settings.rounds {
            // Before every round: something may attach to `lo` while the bench runs.
            check_no_xdp_on_lo()?;
            step(&format!("round {round}/{}", settings.rounds), || {
                bench.round(round, &mut samples)
            })?;
        }
        Ok(())
    })();
    drop(procs);
    meta.loadavg_end = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    meta.elapsed_s = t0.elapsed().as_secs_f64();
    let results = report::Results::new(meta, targets, samples).relative_to(&root);
    match &result {
        Ok(()) => {
            emit(&results, &root, args.publish)?;
            if args.smoke {
                smoke_verdict(&results.samples)?;
                println!("g6-bench --smoke: every target measured every figure without errors");
            }
        }
        Err(_) => {
            let partial = out_dir.join("results.partial.json");
            fs::write(&partial, serde_json::to_string_pretty(&results)?)?;
            eprintln!("partial results: {}", partial.display());
        }
    }
    result
}

/// `--smoke` passes when every load completed without errors. A `paced` load of `direct`
/// that was not client-bound, or a round the hypervisor disturbed, is a verdict on the
/// machine, not a breakage.
fn smoke_verdict(samples: &[Sample]) -> Result<()> {
    let bad: Vec<String> = samples
        .iter()
        .filter(|s| !s.ok)
        .filter(|s| {
            !s.errors.iter().all(|e| {
                e.starts_with(report::DISTURBED)
                    || (s.test == "paced" && e.contains("client-bound"))
            })
        })
        .map(|s| format!("{} {}: {}", s.target, s.test, s.errors.join("; ")))
        .collect();
    if samples.is_empty() {
        bail!("no load was measured");
    }
    if !bad.is_empty() {
        bail!("{} load(s) failed:\n  {}", bad.len(), bad.join("\n  "));
    }
    Ok(())
}

/// Writes results.{json,md} and chart.svg into target/bench (and docs/bench with `publish`).
fn emit(results: &report::Results, root: &Path, publish: bool) -> Result<()> {
    let out_dir = root.join("target/bench");
    let paths = report::write(results, &out_dir)?;
    if publish {
        let docs = root.join("docs/bench");
        fs::create_dir_all(&docs)?;
        for p in &paths {
            let name = p.file_name().context("file name")?;
            fs::copy(p, docs.join(name))?;
        }
        println!("published into {}", docs.display());
    }
    println!(
        "\n{}\nresults: {}",
        report::console_table(results),
        out_dir.join("results.md").display()
    );
    Ok(())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let t = Instant::now();
    let r = f().with_context(|| format!("step `{name}` failed after {:.1?}", t.elapsed()))?;
    println!("<== {name}: ok ({:.1?})", t.elapsed());
    Ok(r)
}

fn resolve(args: &BenchArgs) -> Result<Settings> {
    let mut targets: Vec<String> = Vec::new();
    if args.only.is_empty() {
        targets = ALL_TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    } else {
        for want in &args.only {
            let want = want.trim();
            let names: Vec<&str> = match want {
                "peers" => ALL_TARGETS
                    .iter()
                    .filter(|(_, k)| k.is_peer())
                    .map(|(n, _)| *n)
                    .collect(),
                "g6" => ALL_TARGETS
                    .iter()
                    .filter(|(_, k)| k.is_g6())
                    .map(|(n, _)| *n)
                    .collect(),
                n if ALL_TARGETS.iter().any(|(a, _)| *a == n) => vec![n],
                n => bail!(
                    "unknown target `{n}` (known: {}, peers, g6)",
                    ALL_TARGETS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            for n in names {
                if !targets.iter().any(|t| t == n) {
                    targets.push(n.to_string());
                }
            }
        }
        // Keep the canonical order (the rotation then starts from it).
        targets.sort_by_key(|t| ALL_TARGETS.iter().position(|(n, _)| n == t));
    }
    let tests: Vec<String> = if args.tests.is_empty() {
        TESTS.iter().map(|s| s.to_string()).collect()
    } else {
        let mut v = Vec::new();
        for t in &args.tests {
            let t = t.trim();
            if !TESTS.contains(&t) {
                bail!("unknown figure `{t}` (known: {})", TESTS.join(", "));
            }
            if !v.iter().any(|x| x == t) {
                v.push(t.to_string());
            }
        }
        v.sort_by_key(|t| TESTS.iter().position(|x| x == t));
        v
    };
    if args.threads == 0 || args.connections == 0 {
        bail!("--threads and --connections must be at least 1");
    }
    let quick = args.quick || args.smoke;
    let rounds = args.rounds.unwrap_or(if quick { 1 } else { 5 }).max(1);
    let duration_s = args
        .duration
        .unwrap_or(match (args.smoke, args.quick) {
            (true, _) => 1,
            (_, true) => 2,
            _ => 3,
        })
        .max(1);
    let idle = args.idle_conns.unwrap_or(match (args.smoke, args.quick) {
        (true, _) => 200,
        (_, true) => 1000,
        _ => 10_000,
    });
    if u32::from(args.base_port) + 10 + 2 * ALL_TARGETS.len() as u32 > 32_000 {
        bail!("--base-port too high (keep the ports below the ephemeral range)");
    }
    Ok(Settings {
        quick,
        rounds,
        duration_s,
        threads: args.threads,
        connections: args.connections,
        idle_conns_requested: idle,
        idle_conns: idle,
        nofile: 0,
        sessions: 0,
        tests,
        targets,
        g6_log_level: args.g6_log_level.clone(),
        ports: Ports::new(args.base_port),
    })
}

/// PIDs of the backends (for CPU accounting) and how to restart the iperf3 server.
struct Backends {
    nginx: usize,
    iperf: usize,
}

fn iperf_server_cmd(ports: &Ports) -> Command {
    let mut c = Command::new("iperf3");
    c.args(["-s", "-B", "127.0.0.1", "-p"])
        .arg(ports.iperf.to_string());
    c
}

fn start_backends(procs: &mut Procs, files: &Files, ports: &Ports) -> Result<Backends> {
    let mut nginx = Command::new("nginx");
    nginx
        .arg("-p")
        .arg(&files.dir)
        .arg("-e")
        .arg(files.dir.join("backend-nginx.error.log"))
        .arg("-c")
        .arg(&files.backend_conf);
    let log = files.dir.join("backend-nginx.out");
    let nginx = procs.add(Proc::spawn(
        "backend nginx",
        &mut nginx,
        libc::SIGTERM,
        &log,
    )?);
    let iperf = procs.add(Proc::spawn(
        "iperf3 server",
        &mut iperf_server_cmd(ports),
        libc::SIGTERM,
        &files.dir.join("iperf3-server.log"),
    )?);
    for port in ports.backends() {
        load::wait_http(port, Duration::from_secs(15), procs.get_mut(nginx))?;
    }
    procs::wait_listening(ports.iperf, Duration::from_secs(15), procs.get_mut(iperf))?;
    for (site, port) in ports.backends().into_iter().enumerate() {
        load::check_rotation(port, &[site + 1])
            .with_context(|| format!("backend site {} on port {port}", site + 1))?;
    }
    println!(
        "    nginx sites on 127.0.0.1:{} and :{}, iperf3 on :{}",
        ports.backend1, ports.backend2, ports.iperf
    );
    Ok(Backends { nginx, iperf })
}

fn g6_command(
    bin: &Path,
    conf: &Path,
    path: &str,
    threads: u32,
    level: &str,
    log: &Path,
) -> Command {
    let mut c = Command::new(bin);
    c.arg("-f")
        .arg(conf)
        .arg("--no-daemon")
        .arg("-t")
        .arg(threads.to_string())
        .arg("--data-path")
        .arg(path)
        .arg("--log-level")
        .arg(level)
        .arg("--log-filename")
        .arg(log);
    c
}

fn data_path_lines(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("data path"))
        .map(|l| l.to_string())
        .collect()
}

/// Starts g6 briefly at INFO on the probe port to read the data path it uses (the measured
/// instances log at WARN, where only a fallback shows).
fn probe_g6(
    bin: &Path,
    files: &Files,
    ports: &Ports,
    path: &str,
    threads: u32,
) -> Result<(String, Vec<String>)> {
    let conf = files.dir.join(format!("g6-probe-{path}.conf"));
    fs::write(
        &conf,
        format!(
            "probe RR *:* - 127.0.0.1:{} > 127.0.0.1:{} ;\n",
            ports.probe, ports.backend1
        ),
    )?;
    let log = files.dir.join(format!("g6-probe-{path}.log"));
    let mut cmd = g6_command(bin, &conf, path, threads, "INFO", &log);
    let mut p = Proc::spawn(
        &format!("g6 probe ({path})"),
        &mut cmd,
        libc::SIGINT,
        &files.dir.join(format!("g6-probe-{path}.out")),
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let in_use = loop {
        check_interrupted()?;
        let lines = data_path_lines(&log);
        if let Some(word) = lines
            .iter()
            .find(|l| l.contains("serving"))
            .and_then(|l| l.rsplit("data path ").next())
        {
            break word.trim().to_string();
        }
        if let Some(how) = p.ended() {
            bail!("g6 probe ({path}) ended ({how}):\n{}", p.log_tail(10));
        }
        if Instant::now() >= deadline {
            bail!("g6 probe ({path}) logged no serving line in 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    p.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs::is_listening(ports.probe) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((in_use, data_path_lines(&log)))
}

#[allow(clippy::too_many_arguments)]
fn start_targets(
    procs: &mut Procs,
    targets: &mut [Target],
    files: &Files,
    ports: &Ports,
    settings: &Settings,
    g6_bin: &Path,
    samples: &mut Vec<Sample>,
) -> Result<()> {
    for t in targets.iter_mut() {
        check_interrupted()?;
        let Some(conf) = setup::proxy_conf(
            files,
            t,
            ports,
            settings.threads,
            settings.nofile,
            settings.sessions,
        )?
        else {
            t.data_path = "—".into();
            continue;
        };
        t.config = fs::read_to_string(&conf)?;
        let out = files.dir.join(format!("{}.out", t.name));
        let (mut cmd, stop_signal) = match t.kind {
            Kind::Direct => unreachable!("no config for direct"),
            Kind::Haproxy { splice } => {
                t.data_path = if splice { "splice-auto" } else { "recv/send" }.into();
                let mut c = Command::new("haproxy");
                c.arg("-f").arg(&conf).arg("-db");
                (c, libc::SIGTERM)
            }
            Kind::Nginx => {
                t.data_path = "recv/send".into();
                let mut c = Command::new("nginx");
                c.arg("-p")
                    .arg(&files.dir)
                    .arg("-e")
                    .arg(files.dir.join(format!("{}.error.log", t.name)))
                    .arg("-c")
                    .arg(&conf);
                (c, libc::SIGTERM)
            }
            Kind::Floor => {
                t.data_path = "recv/send".into();
                let mut c = Command::new(files.dir.join(setup::FLOOR_RELAY));
                c.arg(&conf);
                (c, libc::SIGTERM)
            }
            Kind::G6 { path } => {
                let path = path.as_str();
                let (in_use, lines) = probe_g6(g6_bin, files, ports, path, settings.threads)?;
                t.data_path = in_use;
                t.data_path_log = lines;
                let log = files.dir.join(format!("{}.log", t.name));
                let c = g6_command(
                    g6_bin,
                    &conf,
                    path,
                    settings.threads,
                    &settings.g6_log_level,
                    &log,
                );
                (c, libc::SIGINT)
            }
        };
        t.command = show(&cmd);
        let i = procs.add(Proc::spawn(&t.name, &mut cmd, stop_signal, &out)?);
        t.proc_index = Some(i);
        let p = procs.get_mut(i);
        procs::wait_listening(t.http_port, Duration::from_secs(15), p)?;
        procs::wait_listening(t.bulk_port, Duration::from_secs(15), p)?;
        load::wait_http(t.http_port, Duration::from_secs(15), p)?;
        load::check_rotation(t.http_port, &[1, 2])
            .with_context(|| format!("{}: round robin over both sites", t.name))?;
        let tree = p.tree();
        t.processes = tree.len();
        (t.rss_start_kb, t.pss_start_kb) = procs::settled_memory_kb(&tree, Duration::from_secs(3))?;
        if let Kind::G6 { .. } = t.kind {
            let measured_log = files.dir.join(format!("{}.log", t.name));
            let warn = data_path_lines(&measured_log);
            // The measured instance logs a fallback at WARN: it must agree with the probe.
            if let Some(l) = warn.iter().find(|l| l.contains("in use instead")) {
                let word = l
                    .split("data path ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("?");
                if word != t.data_path {
                    t.data_path = word.to_string();
                }
            }
            t.data_path_log
                .extend(warn.into_iter().map(|l| format!("(measured) {l}")));
        }
        let mut metrics = BTreeMap::new();
        metrics.insert("rss_mb".into(), t.rss_start_kb as f64 * 1024.0 / 1e6);
        metrics.insert("pss_mb".into(), t.pss_start_kb as f64 * 1024.0 / 1e6);
        samples.push(Sample {
            round: 0,
            seq: 0,
            target: t.name.clone(),
            test: "start".into(),
            ok: true,
            errors: Vec::new(),
            metrics,
            at_s: 0.0,
            cpu: None,
            load: None,
            idle: None,
        });
        println!(
            "    {:<15} :{} :{}  {:<11} {} process(es), RSS {:.1} MB (PSS {:.1} MB)",
            t.name,
            t.http_port,
            t.bulk_port,
            t.data_path,
            t.processes,
            t.rss_start_kb as f64 * 1024.0 / 1e6,
            t.pss_start_kb as f64 * 1024.0 / 1e6
        );
    }
    Ok(())
}

struct Bench<'a> {
    procs: &'a mut Procs,
    backends: Backends,
    targets: &'a [Target],
    files: &'a Files,
    settings: &'a Settings,
    ports: Ports,
    t0: Instant,
    seq: u32,
    /// vCPUs, for the steal share.
    cpus: f64,
}

impl Bench<'_> {
    fn round(&mut self, round: u32, samples: &mut Vec<Sample>) -> Result<()> {
        let n = self.targets.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.rotate_left((round as usize - 1) % n.max(1));
        // Memory per idle session is taken once, first in round 1: a second opening reuses the
        // heap the first one grew (RSS hardly moves), and memory is not sensitive to noise.
        let mut tests: Vec<String> = self.settings.tests.clone();
        if let Some(i) = tests.iter().position(|t| t == "idle") {
            let idle = tests.remove(i);
            if round == 1 {
                tests.insert(0, idle);
            }
        }
        for test in &tests {
            for &ti in &order {
                check_interrupted()?;
                let t = &self.targets[ti];
                if test == "idle" && t.kind == Kind::Direct {
                    continue;
                }
                self.seq += 1;
                let s = self.measure(round, ti, test)?;
                println!("    {}", report::sample_line(&s));
                samples.push(s);
            }
        }
        Ok(())
    }

    /// Waits (bounded) until no connection from an earlier load is left to the backends.
    fn quiesce(&self) -> Result<()> {
        let ports = [self.ports.backend1, self.ports.backend2, self.ports.iperf];
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs::established_to(&ports) > 0 && Instant::now() < deadline {
            pause(Duration::from_millis(50))?;
        }
        Ok(())
    }

    fn measure(&mut self, round: u32, ti: usize, test: &str) -> Result<Sample> {
        let t = &self.targets[ti];
        let mut s = Sample {
            round,
            seq: self.seq,
            target: t.name.clone(),
            test: test.to_string(),
            ok: false,
            errors: Vec::new(),
            metrics: BTreeMap::new(),
            at_s: self.t0.elapsed().as_secs_f64(),
            cpu: None,
            load: None,
            idle: None,
        };
        for i in [self.backends.nginx, self.backends.iperf]
            .into_iter()
            .chain(t.proc_index)
        {
            let p = self.procs.get_mut(i);
            if let Some(how) = p.ended() {
                s.errors.push(format!("{} ended ({how})", p.name));
            }
        }
        if !s.errors.is_empty() {
            return Ok(s);
        }
        self.quiesce()?;
        let proxy_pid = t.proc_index.map(|i| self.procs.get(i).pid);
        let d = self.settings.duration_s;
        if test == "idle" {
            let Some(i) = t.proc_index else {
                bail!("idle figure for a target without a proxy");
            };
            let r = load::idle(
                t.http_port,
                self.settings.idle_conns,
                &self.ports.backends(),
                self.procs.get(i),
            )?;
            let n = r.opened.max(1) as f64;
            s.metrics.insert(
                "rss_b_per_conn".into(),
                (r.rss_after_kb as f64 - r.rss_before_kb as f64) * 1024.0 / n,
            );
            s.metrics.insert(
                "pss_b_per_conn".into(),
                (r.pss_after_kb as f64 - r.pss_before_kb as f64) * 1024.0 / n,
            );
            s.metrics.insert("conns".into(), r.opened as f64);
            s.errors.extend(r.errors.iter().cloned());
            s.idle = Some(r);
            s.ok = s.errors.is_empty();
            return Ok(s);
        }
        let before = procs::cpu_snap()?;
        let proxy_tree = proxy_pid
            .map(|p| procs::tree_of(p, &before.procs))
            .unwrap_or_default();
        let mut backend_tree =
            procs::tree_of(self.procs.get(self.backends.nginx).pid, &before.procs);
        backend_tree.push(self.procs.get(self.backends.iperf).pid);
        let files = self.files;
        let wrk = |path: &str, close: bool, min_body: usize, paced: bool| {
            load::wrk(&WrkParams {
                port: t.http_port,
                path,
                connections: self.settings.connections,
                seconds: d,
                close,
                lua: if paced { &files.paced_lua } else { &files.lua },
                min_body,
            })
        };
        let page = setup::PAGE_BYTES;
        let mut l = match test {
            "conn" => wrk("/index.html", true, page, false)?,
            "keepalive" => wrk("/index.html", false, page, false)?,
            "paced" => wrk("/index.html", false, page, true)?,
            "file" => wrk("/100k.bin", false, setup::FILE_BYTES, false)?,
            "bulk1" | "bulk8" => {
                let streams = if test == "bulk1" { 1 } else { 8 };
                let iperf = self.backends.iperf;
                let ports = self.ports;
                let procs = &mut *self.procs;
                let mut restart = || -> Result<()> {
                    let p = procs.get_mut(iperf);
                    p.stop();
                    *p = Proc::spawn(
                        "iperf3 server",
                        &mut iperf_server_cmd(&ports),
                        libc::SIGTERM,
                        &files.dir.join("iperf3-server.log"),
                    )?;
                    procs::wait_listening(ports.iperf, Duration::from_secs(10), p)
                };
                load::iperf(t.bulk_port, streams, d, &mut restart)?
            }
            other => bail!("unknown figure {other}"),
        };
        // A round where `direct` was not client-bound is left out for every target (the
        // goal's ratios need it); a proxy's own slow rate is its miss, not an error.
        if test == "paced" && t.kind == Kind::Direct && l.requests >= 1.0 {
            let rate = l.requests / l.seconds.max(1e-9);
            let think = setup::PACED_THINK_MS;
            l.errors.extend(load::not_client_bound(
                rate,
                self.settings.connections,
                think,
            ));
        }
        let after = procs::cpu_snap()?;
        let cpu = procs::cpu_use(&before, &after, &proxy_tree, &backend_tree, l.client_cpu_s);
        let secs = l.seconds.max(1e-9);
        let per = |x: f64, units: f64| if units > 0.0 { x / units } else { f64::NAN };
        let proxy_k = cpu.proxy_s + cpu.kthreads_s;
        let m = &mut s.metrics;
        match test {
            "conn" | "keepalive" | "paced" | "file" => {
                m.insert("rate".into(), l.requests / secs);
                if let Some(lat) = &l.latency_us {
                    m.insert("p50_us".into(), lat.p50);
                    m.insert("p99_us".into(), lat.p99);
                }
            }
            _ => {}
        }
        match test {
            "conn" => {
                let k = l.requests / 1e4;
                m.insert("cpu_machine_s_per_10k".into(), per(cpu.machine_s, k));
                m.insert("cpu_attr_s_per_10k".into(), per(cpu.attributed_s, k));
                m.insert("cpu_proxy_s_per_10k".into(), per(proxy_k, k));
            }
            "keepalive" | "paced" => {
                let r = l.requests / 1e6;
                m.insert("cpu_machine_us_per_req".into(), per(cpu.machine_s, r));
                m.insert("cpu_attr_us_per_req".into(), per(cpu.attributed_s, r));
                m.insert("cpu_proxy_us_per_req".into(), per(proxy_k, r));
            }
            _ => {
                let gb = l.bytes / 1e9;
                m.insert("gbit_s".into(), l.bytes * 8.0 / secs / 1e9);
                m.insert("cpu_machine_s_per_gb".into(), per(cpu.machine_s, gb));
                m.insert("cpu_attr_s_per_gb".into(), per(cpu.attributed_s, gb));
                m.insert("cpu_proxy_s_per_gb".into(), per(proxy_k, gb));
            }
        }
        m.insert(
            "background_share".into(),
            per(cpu.other_s, cpu.machine_s.max(1e-9)),
        );
        m.insert(
            "steal_share".into(),
            per(cpu.steal_s, self.cpus * cpu.wall_s.max(1e-9)),
        );
        s.errors.extend(l.errors.iter().cloned());
        s.cpu = Some(cpu);
        s.load = Some(l);
        if let Some(i) = t.proc_index {
            let p = self.procs.get_mut(i);
            if let Some(how) = p.ended() {
                s.errors
                    .push(format!("{} ended during the load ({how})", p.name));
            }
        }
        s.ok = s.errors.is_empty();
        Ok(s)
    }
}

/// Every target runs on `lo`: an XDP program there (generic mode, the only one `lo` has)
/// makes the kernel copy every loopback segment into a linear buffer first, which slows
/// splice and speeds up plain copies, so no figure would be comparable with another run.
fn check_no_xdp_on_lo() -> Result<()> {
    let out = run_timeout(
        Command::new("ip").args(["-d", "link", "show", "dev", "lo"]),
        Duration::from_secs(10),
    )?;
    if out.stdout.contains("xdp") {
        bail!(
            "an XDP program is attached to lo (`ip -d link show dev lo`: {}); stop whatever \
             attached it (a g6 run with --xdp generic or native?) or `ip link set dev lo xdp off`",
            out.stdout.trim()
        );
    }
    Ok(())
}

fn first_line(cmd: &mut Command) -> String {
    match run_timeout(cmd, Duration::from_secs(20)) {
        Ok(f) => format!("{}\n{}", f.stdout, f.stderr)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("?")
            .to_string(),
        Err(e) => format!("? ({e})"),
    }
}

fn collect_meta(root: &Path, g6_bin: &Path, settings: &Settings, files: &Files) -> Result<Meta> {
    let mut versions = BTreeMap::new();
    // Short forms: "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://…" → up to " - ",
    // "wrk debian/4.1.0-3+b2 [epoll] Copyright …" → up to " [".
    let short = |s: String| -> String {
        let s = s.split(" - ").next().unwrap_or_default();
        s.split(" [").next().unwrap_or_default().trim().to_string()
    };
    versions.insert("g6".into(), first_line(Command::new(g6_bin).arg("-v")));
    versions.insert(
        "haproxy".into(),
        short(first_line(Command::new("haproxy").arg("-v"))),
    );
    versions.insert("nginx".into(), first_line(Command::new("nginx").arg("-v")));
    versions.insert(
        "wrk".into(),
        short(first_line(Command::new("wrk").arg("-v"))),
    );
    versions.insert(
        "iperf3".into(),
        first_line(Command::new("iperf3").arg("--version")),
    );
    let git = {
        let head = first_line(
            Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(root),
        );
        let dirty = run_timeout(
            Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .current_dir(root),
            Duration::from_secs(20),
        )
        .map(|f| !f.stdout.trim().is_empty())
        .unwrap_or(false);
        if dirty {
            format!("{head} (with uncommitted changes)")
        } else {
            head
        }
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem_total_kb = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let d = settings.duration_s;
    let c = settings.connections;
    let p = WrkParams {
        port: 0,
        path: "/index.html",
        connections: c,
        seconds: d,
        close: true,
        lua: &files.lua,
        min_body: 0,
    };
    let mut commands = BTreeMap::new();
    commands.insert(
        "conn".into(),
        show(&load::wrk_command(&p)).replace(":0/", ":PORT/"),
    );
    let p = WrkParams { close: false, ..p };
    commands.insert(
        "keepalive".into(),
        show(&load::wrk_command(&p)).replace(":0/", ":PORT/"),
    );
    let paced = WrkParams {
        lua: &files.paced_lua,
        ..p
    };
    commands.insert(
        "paced".into(),
        show(&load::wrk_command(&paced)).replace(":0/", ":PORT/"),
    );
    let p = WrkParams {
        path: "/100k.bin",
        ..p
    };
    commands.insert(
        "file".into(),
        show(&load::wrk_command(&p)).replace(":0/", ":PORT/"),
    );
    commands.insert(
        "bulk1".into(),
        show(&load::iperf_command(0, 1, d)).replace("-p 0", "-p PORT"),
    );
    commands.insert(
        "bulk8".into(),
        show(&load::iperf_command(0, 8, d)).replace("-p 0", "-p PORT"),
    );
    commands.insert(
        "idle".into(),
        format!(
            "{} TCP connects to 127.0.0.1:PORT that send nothing; VmRSS/Pss of the proxy's processes before and after (once every upstream connection is established)",
            settings.idle_conns
        ),
    );
    let started_utc = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]));
    Ok(Meta {
        started_utc,
        elapsed_s: 0.0,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        mem_total_kb,
        loadavg_start: fs::read_to_string("/proc/loadavg").unwrap_or_default(),
        loadavg_end: String::new(),
        git,
        versions,
        commands,
        settings: settings.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: &str, test: &str, errors: &[&str]) -> Sample {
        Sample {
            round: 1,
            seq: 0,
            target: target.into(),
            test: test.into(),
            ok: errors.is_empty(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
            metrics: BTreeMap::new(),
            at_s: 0.0,
            cpu: None,
            load: None,
            idle: None,
        }
    }

    #[test]
    fn smoke_fails_on_a_broken_load_and_names_it() {
        let samples = vec![
            sample("haproxy", "conn", &[]),
            sample("floor", "bulk1", &["iperf3: connection refused"]),
        ];
        let e = smoke_verdict(&samples).unwrap_err().to_string();
        assert!(e.contains("floor bulk1: iperf3: connection refused"), "{e}");
        assert!(smoke_verdict(&[]).is_err());
    }

    #[test]
    fn smoke_tolerates_a_paced_direct_load_that_was_not_client_bound() {
        let why = load::not_client_bound(1_000.0, 32, setup::PACED_THINK_MS).unwrap();
        let samples = vec![
            sample("direct", "paced", &[&why]),
            sample("g6-splice", "paced", &[]),
        ];
        smoke_verdict(&samples).unwrap();
        // Nor does a round the hypervisor disturbed (the machine's weather, not a breakage).
        let disturbed = "round disturbed: the hypervisor took 40 % of the vCPUs' time";
        smoke_verdict(&[sample("haproxy", "conn", &[disturbed])]).unwrap();
        // Any other error of a paced load still fails.
        let samples = vec![sample("direct", "paced", &[&why, "wrk: 3 socket errors"])];
        assert!(smoke_verdict(&samples).is_err());
    }
}
