//! Aggregation (medians, min–max, per-round ratios to `direct` and to the best peer) and the
//! outputs: results.json (everything, raw samples included), results.md and chart.svg.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::load::PACED_MIN_SHARE;
use super::setup::PACED_THINK_MS;
use super::{DataPath, Kind, Meta, Sample, Target};

/// A figure: which test produces it, its key in `Sample::metrics`, and which way is better.
pub struct Metric {
    pub test: &'static str,
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub higher_better: bool,
}

const fn m(
    test: &'static str,
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_better: bool,
) -> Metric {
    Metric {
        test,
        key,
        label,
        unit,
        higher_better,
    }
}

pub const METRICS: &[Metric] = &[
    m("conn", "rate", "new connections per second", "conn/s", true),
    m(
        "conn",
        "cpu_machine_s_per_10k",
        "CPU per 10k connections, machine",
        "s",
        false,
    ),
    m(
        "conn",
        "cpu_attr_s_per_10k",
        "CPU per 10k connections, attributed",
        "s",
        false,
    ),
    m(
        "conn",
        "cpu_proxy_s_per_10k",
        "CPU per 10k connections, proxy + kthreads",
        "s",
        false,
    ),
    m(
        "conn",
        "p50_us",
        "connection + request latency p50",
        "µs",
        false,
    ),
    m(
        "conn",
        "p99_us",
        "connection + request latency p99",
        "µs",
        false,
    ),
    m(
        "keepalive",
        "rate",
        "keep-alive requests per second",
        "req/s",
        true,
    ),
    m("keepalive", "p50_us", "keep-alive latency p50", "µs", false),
    m("keepalive", "p99_us", "keep-alive latency p99", "µs", false),
    m(
        "keepalive",
        "cpu_machine_us_per_req",
        "CPU per keep-alive request, machine",
        "µs",
        false,
    ),
    m(
        "keepalive",
        "cpu_attr_us_per_req",
        "CPU per keep-alive request, attributed",
        "µs",
        false,
    ),
    m(
        "keepalive",
        "cpu_proxy_us_per_req",
        "CPU per keep-alive request, proxy + kthreads",
        "µs",
        false,
    ),
    m(
        "paced",
        "rate",
        "paced keep-alive requests per second (client-bound)",
        "req/s",
        true,
    ),
    m(
        "paced",
        "p50_us",
        "paced keep-alive latency p50",
        "µs",
        false,
    ),
    m(
        "paced",
        "p99_us",
        "paced keep-alive latency p99",
        "µs",
        false,
    ),
    m(
        "paced",
        "cpu_machine_us_per_req",
        "CPU per paced request, machine",
        "µs",
        false,
    ),
    m(
        "paced",
        "cpu_attr_us_per_req",
        "CPU per paced request, attributed",
        "µs",
        false,
    ),
    m(
        "paced",
        "cpu_proxy_us_per_req",
        "CPU per paced request, proxy + kthreads",
        "µs",
        false,
    ),
    m(
        "file",
        "rate",
        "100 KiB responses per second",
        "resp/s",
        true,
    ),
    m(
        "file",
        "gbit_s",
        "100 KiB responses, throughput",
        "Gbit/s",
        true,
    ),
    m(
        "file",
        "p99_us",
        "100 KiB response latency p99",
        "µs",
        false,
    ),
    m(
        "file",
        "cpu_machine_s_per_gb",
        "CPU per GB of 100 KiB responses, machine",
        "s",
        false,
    ),
    m(
        "file",
        "cpu_attr_s_per_gb",
        "CPU per GB of 100 KiB responses, attributed",
        "s",
        false,
    ),
    m(
        "file",
        "cpu_proxy_s_per_gb",
        "CPU per GB of 100 KiB responses, proxy + kthreads",
        "s",
        false,
    ),
    m(
        "bulk1",
        "gbit_s",
        "bulk throughput, 1 stream",
        "Gbit/s",
        true,
    ),
    m(
        "bulk1",
        "cpu_machine_s_per_gb",
        "CPU per GB bulk ×1, machine",
        "s",
        false,
    ),
    m(
        "bulk1",
        "cpu_attr_s_per_gb",
        "CPU per GB bulk ×1, attributed",
        "s",
        false,
    ),
    m(
        "bulk1",
        "cpu_proxy_s_per_gb",
        "CPU per GB bulk ×1, proxy + kthreads",
        "s",
        false,
    ),
    m(
        "bulk8",
        "gbit_s",
        "bulk throughput, 8 streams",
        "Gbit/s",
        true,
    ),
    m(
        "bulk8",
        "cpu_machine_s_per_gb",
        "CPU per GB bulk ×8, machine",
        "s",
        false,
    ),
    m(
        "bulk8",
        "cpu_attr_s_per_gb",
        "CPU per GB bulk ×8, attributed",
        "s",
        false,
    ),
    m(
        "bulk8",
        "cpu_proxy_s_per_gb",
        "CPU per GB bulk ×8, proxy + kthreads",
        "s",
        false,
    ),
    m(
        "idle",
        "rss_b_per_conn",
        "RSS growth per idle connection",
        "B",
        false,
    ),
    m(
        "idle",
        "pss_b_per_conn",
        "PSS growth per idle connection",
        "B",
        false,
    ),
    m(
        "start",
        "rss_mb",
        "RSS after start (all processes)",
        "MB",
        false,
    ),
    m(
        "start",
        "pss_mb",
        "PSS after start (all processes)",
        "MB",
        false,
    ),
];

fn metric(test: &str, key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.test == test && m.key == key)
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

fn stat(mut v: Vec<f64>) -> Option<Stat> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub target: String,
    pub test: String,
    pub metric: String,
    pub label: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// Over the rounds whose sample had no error.
    pub value: Option<Stat>,
    /// Per round: value / direct's value in that round.
    pub vs_direct: Option<Stat>,
    /// Per round: value / the best peer's value (HAProxy or nginx) in that round.
    pub vs_best_peer: Option<Stat>,
    pub rounds: usize,
    /// Rounds whose sample failed, not counting those left out for steal.
    pub rounds_with_errors: usize,
    /// Rounds left out because the hypervisor disturbed a load of the figure.
    #[serde(default)]
    pub rounds_disturbed: usize,
}

#[derive(Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub targets: Vec<Target>,
    /// Recomputed from the samples when read back.
    #[serde(skip_deserializing)]
    pub summary: Vec<Row>,
    pub samples: Vec<Sample>,
}

/// A load during which the hypervisor took more than this share of the vCPUs' time (steal)
/// measured the host more than the proxy: on 2 vCPUs shared by client, backends and proxy,
/// a quarter stolen is half a CPU gone.
pub const STEAL_LIMIT: f64 = 0.25;
/// How a sample left out for steal starts its error.
pub const DISTURBED: &str = "round disturbed";

/// Leaves out of a round every target's sample of a figure if the hypervisor disturbed any
/// of their loads (ratios are taken within the round: a stalled peer, or G6, would skew them
/// either way). Applied whenever results are summarised, so re-rendering an older run
/// applies the current limit.
fn apply_steal_limit(mut samples: Vec<Sample>) -> Vec<Sample> {
    for s in &mut samples {
        s.errors.retain(|e| !e.starts_with(DISTURBED));
        s.ok = s.errors.is_empty();
    }
    let mut groups: std::collections::BTreeMap<(String, u32), Vec<usize>> = Default::default();
    for (i, s) in samples.iter().enumerate() {
        if s.test != "idle" && s.test != "start" {
            groups.entry((s.test.clone(), s.round)).or_default().push(i);
        }
    }
    for group in groups.values() {
        let worst = group
            .iter()
            .filter_map(|&i| Some((samples[i].metrics.get("steal_share").copied()?, i)))
            .filter(|(share, _)| *share > STEAL_LIMIT)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((share, worst)) = worst else {
            continue;
        };
        let why = format!(
            "{DISTURBED}: the hypervisor took {:.0} % of the vCPUs' time during {}'s load \
             (steal; limit {:.0} %)",
            share * 100.0,
            samples[worst].target,
            STEAL_LIMIT * 100.0
        );
        for &i in group {
            samples[i].ok = false;
            samples[i].errors.push(why.clone());
        }
    }
    samples
}

/// Left out for steal only (no error of its own).
fn disturbed(s: &Sample) -> bool {
    !s.errors.is_empty() && s.errors.iter().all(|e| e.starts_with(DISTURBED))
}

impl Results {
    pub fn new(meta: Meta, targets: Vec<Target>, samples: Vec<Sample>) -> Results {
        let samples = apply_steal_limit(samples);
        let summary = summarize(&targets, &samples);
        Results {
            meta,
            targets,
            summary,
            samples,
        }
    }

    /// Reads a results.json written by [`write`] (to render it again).
    pub fn read(path: &Path) -> Result<Results> {
        let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let r: Results =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        Ok(Results::new(r.meta, r.targets, r.samples))
    }

    /// Paths under the workspace root are shown relative to it.
    pub fn relative_to(mut self, root: &Path) -> Results {
        let prefix = format!("{}/", root.display());
        let rel = |s: &mut String| *s = s.replace(&prefix, "");
        for t in &mut self.targets {
            rel(&mut t.command);
            rel(&mut t.config);
        }
        for c in self.meta.commands.values_mut() {
            rel(c);
        }
        for s in &mut self.samples {
            if let Some(l) = &mut s.load {
                rel(&mut l.command);
            }
        }
        self
    }

    fn row(&self, target: &str, test: &str, key: &str) -> Option<&Row> {
        self.summary
            .iter()
            .find(|r| r.target == target && r.test == test && r.metric == key)
    }

    fn kind(&self, target: &str) -> Option<Kind> {
        self.targets
            .iter()
            .find(|t| t.name == target)
            .map(|t| t.kind)
    }
}

fn summarize(targets: &[Target], samples: &[Sample]) -> Vec<Row> {
    let kind_of = |name: &str| targets.iter().find(|t| t.name == name).map(|t| t.kind);
    // (test, round, target) -> ok sample
    let ok = |test: &str, round: u32, target: &str| {
        samples
            .iter()
            .find(|s| s.ok && s.test == test && s.round == round && s.target == target)
    };
    let mut rows = Vec::new();
    for t in targets {
        for mt in METRICS {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.target == t.name && s.test == mt.test)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let value = |s: &Sample| s.metrics.get(mt.key).copied();
            let mut values = Vec::new();
            let mut vs_direct = Vec::new();
            let mut vs_peer = Vec::new();
            for s in mine.iter().filter(|s| s.ok) {
                let Some(v) = value(s) else { continue };
                values.push(v);
                if let Some(d) = ok(mt.test, s.round, "direct").and_then(value) {
                    vs_direct.push(v / d);
                }
                let peers: Vec<f64> = targets
                    .iter()
                    .filter(|p| kind_of(&p.name).is_some_and(Kind::is_peer))
                    .filter_map(|p| ok(mt.test, s.round, &p.name).and_then(value))
                    .filter(|x| x.is_finite())
                    .collect();
                let best = if mt.higher_better {
                    peers.iter().copied().reduce(f64::max)
                } else {
                    peers.iter().copied().reduce(f64::min)
                };
                if let Some(b) = best {
                    vs_peer.push(v / b);
                }
            }
            rows.push(Row {
                target: t.name.clone(),
                test: mt.test.into(),
                metric: mt.key.into(),
                label: mt.label.into(),
                unit: mt.unit.into(),
                higher_is_better: mt.higher_better,
                value: stat(values),
                vs_direct: stat(vs_direct),
                vs_best_peer: stat(vs_peer),
                rounds: mine.len(),
                rounds_with_errors: mine.iter().filter(|s| !s.ok && !disturbed(s)).count(),
                rounds_disturbed: mine.iter().filter(|s| disturbed(s)).count(),
            });
        }
    }
    rows
}

/// A number with about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "—".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        "—".into()
    }
}

fn stat_cell(s: &Stat, f: fn(f64) -> String) -> String {
    if s.n > 1 {
        format!("{} [{}–{}]", f(s.median), f(s.min), f(s.max))
    } else {
        f(s.median)
    }
}

/// The cell of a figure: median [min–max]; flagged when a round had errors.
fn cell(r: &Results, target: &str, test: &str, key: &str, which: Which) -> String {
    let Some(row) = r.row(target, test, key) else {
        return "—".into();
    };
    let s = match which {
        Which::Value => row.value,
        Which::Direct => row.vs_direct,
        Which::Peer => row.vs_best_peer,
    };
    let f = if matches!(which, Which::Value) {
        num
    } else {
        ratio
    };
    let mut c = match s {
        Some(s) => stat_cell(&s, f),
        None if row.rounds_with_errors > 0 => "⚠ failed".into(),
        None if row.rounds_disturbed > 0 => "— (every round disturbed)".into(),
        None => "—".into(),
    };
    if row.rounds_with_errors > 0 && s.is_some() {
        c = format!(
            "⚠ {c} ({}/{} rounds had errors)",
            row.rounds_with_errors, row.rounds
        );
    }
    c
}

#[derive(Clone, Copy)]
enum Which {
    Value,
    Direct,
    Peer,
}

fn label(r: &Results, t: &Target) -> String {
    match t.kind {
        Kind::G6 { path } if t.data_path != path.as_str() => {
            format!("{} (runs {})", t.name, t.data_path)
        }
        _ => t.name.clone(),
    }
    .replace('|', "/")
    .to_string()
        + match r.kind(&t.name) {
            Some(Kind::Direct) => " (no proxy)",
            Some(Kind::Floor) => " (minimal relay)",
            _ => "",
        }
}

/// A column of a table: its heading and the figure (test, metric key) it shows.
type Col = (String, &'static str, String);

fn col(head: &str, test: &'static str, key: &str) -> Col {
    (head.to_string(), test, key.to_string())
}

/// One row per target (`direct` left out with `skip_direct`), one cell per column.
fn table(out: &mut String, r: &Results, cols: &[Col], which: Which, skip_direct: bool) {
    let heads: Vec<&str> = cols.iter().map(|(h, _, _)| h.as_str()).collect();
    let _ = writeln!(out, "| target | {} |", heads.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(cols.len()));
    for t in &r.targets {
        if skip_direct && t.kind == Kind::Direct {
            continue;
        }
        let cells: Vec<String> = cols
            .iter()
            .map(|(_, test, key)| cell(r, &t.name, test, key, which))
            .collect();
        let _ = writeln!(out, "| {} | {} |", label(r, t), cells.join(" | "));
    }
    out.push('\n');
}

/// The CPU-per-unit-of-work columns for one accounting (`attr`, `proxy` or `machine`), each
/// heading prefixed with `prefix`.
fn cpu_cols(variant: &str, prefix: &str) -> Vec<Col> {
    [
        ("CPU s / 10k conn", "conn", "s_per_10k"),
        ("CPU µs / keep-alive req", "keepalive", "us_per_req"),
        ("CPU µs / paced req", "paced", "us_per_req"),
        ("CPU s / GB (100 KiB resp)", "file", "s_per_gb"),
        ("CPU s / GB bulk ×1", "bulk1", "s_per_gb"),
        ("CPU s / GB bulk ×8", "bulk8", "s_per_gb"),
    ]
    .into_iter()
    .map(|(head, test, unit)| {
        col(
            &format!("{prefix}{head}"),
            test,
            &format!("cpu_{variant}_{unit}"),
        )
    })
    .collect()
}

/// A table of results.md.
struct Table {
    heading: Option<&'static str>,
    /// Text before the table.
    intro: &'static str,
    cols: Vec<Col>,
    /// What the cells show.
    which: Which,
    /// `direct` gets no row (its ratios are 1, its memory is nobody's).
    skip_direct: bool,
}

/// The tables of results.md, in order.
fn tables() -> Vec<Table> {
    let values = |cols: &[(&str, &'static str, &str)]| -> Vec<Col> {
        cols.iter().map(|(h, t, k)| col(h, t, k)).collect()
    };
    vec![
        Table {
            heading: Some("Throughput and latency"),
            intro: "",
            cols: values(&[
                ("new conn/s", "conn", "rate"),
                ("keep-alive req/s", "keepalive", "rate"),
                ("keep-alive p50 µs", "keepalive", "p50_us"),
                ("keep-alive p99 µs", "keepalive", "p99_us"),
                ("paced req/s", "paced", "rate"),
                ("paced p99 µs", "paced", "p99_us"),
                ("100 KiB resp/s", "file", "rate"),
                ("bulk ×1 Gbit/s", "bulk1", "gbit_s"),
                ("bulk ×8 Gbit/s", "bulk8", "gbit_s"),
            ]),
            which: Which::Value,
            skip_direct: false,
        },
        Table {
            heading: Some("CPU per unit of work"),
            intro: "CPU time (user + system, so also the softirq network work done in their context) \
             of every process taking part — load generator, backends, proxy (all its processes \
             and threads) — plus every kernel thread (kworker, ksoftirqd…), over the load, \
             divided by the connections, requests or GB received. The load generator and \
             backends do the same work for every target, so differences come from the proxy.",
            cols: cpu_cols("attr", ""),
            which: Which::Value,
            skip_direct: false,
        },
        Table {
            heading: None,
            intro: "The proxy's share: its own processes plus kernel threads (for `direct`: kernel \
             threads only):",
            cols: cpu_cols("proxy", "proxy "),
            which: Which::Value,
            skip_direct: false,
        },
        Table {
            heading: None,
            intro: "Whole machine: busy jiffies of /proc/stat (user + nice + system + irq + softirq) \
             over the load per unit of work. On this shared machine other jobs keep both vCPUs \
             busy (see the share above), so this figure is close to (2 CPUs × duration) / work, \
             i.e. the inverse of throughput, rather than a cost; it is shown for completeness.",
            cols: cpu_cols("machine", "machine "),
            which: Which::Value,
            skip_direct: false,
        },
        Table {
            heading: Some("Memory"),
            intro: "",
            cols: values(&[
                ("RSS after start MB", "start", "rss_mb"),
                ("PSS after start MB", "start", "pss_mb"),
                ("RSS growth B / idle conn", "idle", "rss_b_per_conn"),
                ("PSS growth B / idle conn", "idle", "pss_b_per_conn"),
            ]),
            which: Which::Value,
            skip_direct: true,
        },
        Table {
            heading: Some("Ratios to the best peer"),
            intro: "Best of HAProxy, HAProxy splice-auto and nginx in the same round. Above 1 is better \
             for rates, below 1 is better for CPU (as above: processes taking part + kernel \
             threads), latency and memory.",
            cols: values(&[
                ("new conn/s", "conn", "rate"),
                ("CPU / 10k conn", "conn", "cpu_attr_s_per_10k"),
                ("keep-alive req/s", "keepalive", "rate"),
                ("CPU / req", "keepalive", "cpu_attr_us_per_req"),
                ("p99", "keepalive", "p99_us"),
                ("bulk ×1 Gbit/s", "bulk1", "gbit_s"),
                ("bulk ×8 Gbit/s", "bulk8", "gbit_s"),
                ("CPU / GB bulk ×1", "bulk1", "cpu_attr_s_per_gb"),
                ("CPU / GB bulk ×8", "bulk8", "cpu_attr_s_per_gb"),
                ("RSS / idle conn", "idle", "rss_b_per_conn"),
                ("RSS after start", "start", "rss_mb"),
            ]),
            which: Which::Peer,
            skip_direct: true,
        },
        Table {
            heading: Some("Ratios to the direct connection (the physical limit)"),
            intro: "",
            cols: values(&[
                ("new conn/s", "conn", "rate"),
                ("keep-alive req/s", "keepalive", "rate"),
                ("keep-alive p99", "keepalive", "p99_us"),
                ("paced req/s", "paced", "rate"),
                ("100 KiB resp/s", "file", "rate"),
                ("bulk ×1 Gbit/s", "bulk1", "gbit_s"),
                ("bulk ×8 Gbit/s", "bulk8", "gbit_s"),
                ("CPU / GB bulk ×8", "bulk8", "cpu_attr_s_per_gb"),
            ]),
            which: Which::Direct,
            skip_direct: true,
        },
    ]
}

/// What a goal's threshold applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// The per-round ratio to the best peer (HAProxy or nginx).
    Peer,
    /// The per-round ratio to `direct` (no proxy).
    Direct,
    /// The value itself.
    Value,
}

/// G6's goals: a figure, and a threshold on its median per-round ratio or on its value.
struct Goal {
    test: &'static str,
    key: &'static str,
    /// The whole-machine variant of a CPU figure, shown beside it (with the proxy-only one).
    machine_key: Option<&'static str>,
    text: &'static str,
    threshold: f64,
    basis: Basis,
    at_least: bool,
}

const fn goal(
    test: &'static str,
    key: &'static str,
    machine_key: Option<&'static str>,
    text: &'static str,
    threshold: f64,
    basis: Basis,
    at_least: bool,
) -> Goal {
    Goal {
        test,
        key,
        machine_key,
        text,
        threshold,
        basis,
        at_least,
    }
}

const GOALS: &[Goal] = &[
    goal(
        "conn",
        "rate",
        None,
        "new connections/s ≥ 1.15× best peer",
        1.15,
        Basis::Peer,
        true,
    ),
    goal(
        "conn",
        "cpu_attr_s_per_10k",
        Some("cpu_machine_s_per_10k"),
        "CPU per 10k connections ≤ 0.8× best peer",
        0.8,
        Basis::Peer,
        false,
    ),
    goal(
        "keepalive",
        "cpu_attr_us_per_req",
        Some("cpu_machine_us_per_req"),
        "keep-alive CPU per request ≤ 0.8× best peer",
        0.8,
        Basis::Peer,
        false,
    ),
    goal(
        "keepalive",
        "p99_us",
        None,
        "keep-alive p99 ≤ best peer",
        1.0,
        Basis::Peer,
        false,
    ),
    goal(
        "paced",
        "rate",
        None,
        "keep-alive rate ≥ 0.95× direct where the client is the bottleneck (paced)",
        0.95,
        Basis::Direct,
        true,
    ),
    goal(
        "bulk1",
        "gbit_s",
        None,
        "bulk throughput, 1 stream ≥ 1.3× best peer",
        1.3,
        Basis::Peer,
        true,
    ),
    goal(
        "bulk8",
        "gbit_s",
        None,
        "bulk throughput, 8 streams ≥ 1.3× best peer",
        1.3,
        Basis::Peer,
        true,
    ),
    goal(
        "bulk1",
        "cpu_attr_s_per_gb",
        Some("cpu_machine_s_per_gb"),
        "bulk CPU per GB, 1 stream ≤ 0.6× best peer",
        0.6,
        Basis::Peer,
        false,
    ),
    goal(
        "bulk8",
        "cpu_attr_s_per_gb",
        Some("cpu_machine_s_per_gb"),
        "bulk CPU per GB, 8 streams ≤ 0.6× best peer",
        0.6,
        Basis::Peer,
        false,
    ),
    goal(
        "idle",
        "rss_b_per_conn",
        None,
        "RSS growth ≤ 2 kB (2000 B) per idle connection",
        2000.0,
        Basis::Value,
        false,
    ),
    goal(
        "start",
        "rss_mb",
        None,
        "RSS after start ≤ 10 MB",
        10.0,
        Basis::Value,
        false,
    ),
];

fn goal_cell(r: &Results, target: &str, g: &Goal) -> String {
    // Runs without the figure (e.g. results.json written before it existed) judge nothing.
    let Some(row) = r.row(target, g.test, g.key) else {
        return "not measured".into();
    };
    if g.basis == Basis::Direct && r.kind("direct") != Some(Kind::Direct) {
        return "not measured (no `direct` in this run)".into();
    }
    let s = match g.basis {
        Basis::Peer => row.vs_best_peer,
        Basis::Direct => row.vs_direct,
        Basis::Value => row.value,
    };
    let Some(s) = s else {
        return if row.rounds_with_errors > 0 {
            "⚠ failed".into()
        } else {
            "—".into()
        };
    };
    let mut shown = match g.basis {
        Basis::Peer | Basis::Direct => stat_cell(&s, ratio),
        Basis::Value => format!("{} {}", stat_cell(&s, num), row.unit),
    };
    if let Some(mk) = g.machine_key {
        let other = |key: &str| {
            r.row(target, g.test, key)
                .and_then(|m| m.vs_best_peer)
                .map_or("—".into(), |m| ratio(m.median))
        };
        let proxy_key = g.key.replace("_attr_", "_proxy_");
        shown.push_str(&format!(
            " (proxy only {}, machine {})",
            other(&proxy_key),
            other(mk)
        ));
    }
    let met = if g.at_least {
        s.median >= g.threshold
    } else {
        s.median <= g.threshold
    };
    let flag = if row.rounds_with_errors > 0 {
        " ⚠"
    } else {
        ""
    };
    format!(
        "{} {shown}{flag}",
        if met { "✅ met:" } else { "❌ missed:" }
    )
}

fn version<'a>(m: &'a Meta, k: &str) -> &'a str {
    m.versions.get(k).map_or("?", String::as_str)
}

pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    let m = &r.meta;
    let st = &m.settings;
    let share_text = |key: &str| {
        stat(
            r.samples
                .iter()
                .filter_map(|s| s.metrics.get(key).copied())
                .collect(),
        )
        .map_or("—".into(), |s| {
            format!(
                "{:.0} % [{:.0}–{:.0} %]",
                s.median * 100.0,
                s.min * 100.0,
                s.max * 100.0
            )
        })
    };
    let bg_text = share_text("background_share");
    let steal_text = share_text("steal_share");
    let _ = writeln!(
        o,
        "# G6 benchmark: side by side with HAProxy and nginx (loopback)\n"
    );
    let _ = writeln!(
        o,
        "Generated by `cargo xtask bench{}` on {} ({:.0} s). {} round(s) of {} s loads; in each \
         round every figure is measured for every target in turn (order rotated per round). \
         Cells: median [min–max] over the rounds; ratios are taken within a round, then \
         summarised the same way. ⚠ marks a figure where a round had errors (such rounds are \
         left out and listed under *Errors*). Every proxy runs {} thread(s) (g6 `-t`, HAProxy \
         `nbthread`, nginx `worker_processes`).\n",
        if st.quick { " --quick" } else { "" },
        m.started_utc,
        m.elapsed_s,
        st.rounds,
        st.duration_s,
        st.threads
    );
    let _ = writeln!(
        o,
        "Machine: {} vCPU ({}), {} GiB, Linux {}, **shared with other jobs**: load average {} at \
         start; other jobs used {} of the machine's busy CPU time during the loads, and the \
         hypervisor took {} of the vCPUs' time (steal; a figure whose load in a round lost \
         over {:.0} % is left out of that round for every target). All traffic \
         on 127.0.0.1. {} (git {}); {}; {}; {}; {}.\n",
        m.cpus,
        m.cpu_model,
        m.mem_total_kb / (1024 * 1024),
        m.kernel,
        m.loadavg_start
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        bg_text,
        steal_text,
        STEAL_LIMIT * 100.0,
        version(m, "g6"),
        m.git,
        version(m, "haproxy"),
        version(m, "nginx"),
        version(m, "wrk"),
        version(m, "iperf3"),
    );

    for t in tables() {
        if let Some(h) = t.heading {
            let _ = writeln!(o, "## {h}\n");
        }
        if !t.intro.is_empty() {
            let _ = writeln!(o, "{}\n", t.intro);
        }
        table(&mut o, r, &t.cols, t.which, t.skip_direct);
    }

    let g6: Vec<&Target> = r.targets.iter().filter(|t| t.kind.is_g6()).collect();
    if !g6.is_empty() {
        // The floor relay is judged by the same rules: where it misses a goal too, no
        // user-space relay design can meet it on this machine.
        let g6: Vec<&Target> = g6
            .into_iter()
            .chain(r.targets.iter().filter(|t| t.kind == Kind::Floor))
            .collect();
        let _ = writeln!(
            o,
            "## G6 against its goals\n\n\
             Median [min–max] of the per-round ratios to the best peer (or to `direct`, or the \
             value). CPU goals \
             are judged on the CPU of the processes taking part + kernel threads; in parentheses \
             the ratio of the proxy's own CPU (+ kernel threads) and of the whole machine's. \
             `floor` (if measured) is judged the same way: the least a user-space relay can \
             do (one thread, recv/send, no features); a goal it misses too is out of reach for \
             any user-space relay on this machine.\n"
        );
        let heads: Vec<String> = g6.iter().map(|t| label(r, t)).collect();
        let _ = writeln!(o, "| goal | {} |", heads.join(" | "));
        let _ = writeln!(o, "|---|{}", "---|".repeat(heads.len()));
        for g in GOALS {
            let cells: Vec<String> = g6.iter().map(|t| goal_cell(r, &t.name, g)).collect();
            let _ = writeln!(o, "| {} | {} |", g.text, cells.join(" | "));
        }
        o.push('\n');
    }

    let _ = writeln!(o, "## Data paths and commands\n");
    let _ = writeln!(o, "| target | relay in use | processes | command |");
    let _ = writeln!(o, "|---|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            t.name,
            t.data_path,
            if t.kind == Kind::Direct {
                "—".into()
            } else {
                t.processes.to_string()
            },
            if t.command.is_empty() {
                "—".into()
            } else {
                format!("`{}`", t.command)
            }
        );
    }
    o.push('\n');
    for t in r.targets.iter().filter(|t| !t.data_path_log.is_empty()) {
        let _ = writeln!(o, "* {} log:", t.name);
        for l in &t.data_path_log {
            let _ = writeln!(o, "  `{}`", l.trim());
        }
    }
    if r.targets.iter().any(|t| {
        matches!(
            t.kind,
            Kind::G6 {
                path: DataPath::Sockmap
            }
        ) && t.data_path != "sockmap"
    }) {
        let _ = writeln!(
            o,
            "\n**Note:** `--data-path sockmap` currently falls back to `splice` inside g6 (the \
             fast-path session driver is not enabled yet: the log lines above), so the \
             `g6-sockmap` row measures the splice relay; it is reported as measured."
        );
    }
    o.push('\n');

    let bad: Vec<&Sample> = r.samples.iter().filter(|s| !s.ok).collect();
    let _ = writeln!(o, "## Errors\n");
    if bad.is_empty() {
        let _ = writeln!(
            o,
            "None: every load completed without socket errors, non-2xx responses, short \
             bodies, a `direct` `paced` load that was not client-bound, iperf3 errors or failed \
             connects.\n"
        );
    } else {
        let mut said_disturbed = Vec::new();
        for s in bad {
            let errors: Vec<&str> = s
                .errors
                .iter()
                .map(String::as_str)
                .filter(|e| !e.starts_with(DISTURBED))
                .collect();
            if !errors.is_empty() {
                let _ = writeln!(
                    o,
                    "* round {} `{}` {}: {}",
                    s.round,
                    s.test,
                    s.target,
                    errors.join("; ")
                );
            }
            // One line per figure and round left out for steal, not one per target.
            if let Some(d) = s.errors.iter().find(|e| e.starts_with(DISTURBED))
                && !said_disturbed.contains(&(s.round, &s.test))
            {
                said_disturbed.push((s.round, &s.test));
                let _ = writeln!(o, "* round {} `{}`, every target: {d}", s.round, s.test);
            }
        }
        o.push('\n');
    }

    let _ = writeln!(o, "## How each figure is measured\n");
    let _ = writeln!(
        o,
        "* Backends: one nginx (2 worker processes, no access log, long keep-alive) serving two \
         sites on 127.0.0.1:{b1} and :{b2} (a 600 B page `/index.html` naming its site and a \
         100 KiB file `/100k.bin`), and `iperf3 -s` on :{ip}. Every proxy has two listeners: \
         HTTP (round robin over the two sites; checked at start: 4 requests reach both sites \
         with the right bytes) and bulk (to iperf3). `direct` is wrk to site 1 and iperf3 to \
         its server, without a proxy.",
        b1 = st.ports.backend1,
        b2 = st.ports.backend2,
        ip = st.ports.iperf
    );
    let _ = writeln!(
        o,
        "* Fairness: every proxy gets {th} thread(s) (g6 `-t {th}`, its default on 2 CPUs; \
         HAProxy `nbthread {th}`; nginx `worker_processes {th}`), the same descriptor limit \
         ({nf}) and capacity ({se} sessions: HAProxy `maxconn`, nginx `worker_connections`), \
         and no per-connection logging (g6 `--log-level {lvl}`, HAProxy without `log`, nginx \
         stream without `access_log`). HAProxy runs twice: defaults (recv/send) and `option \
         splice-auto`. The g6 binary is a private copy of the release build. Configurations: \
         `results.json` → `targets[].config`.\n\
         * `floor`: `floor-relay` (`xtask/src/bin/floor-relay.rs`), the least a user-space L4 \
         relay does: one thread, one edge-triggered epoll set, accept, non-blocking connect \
         (round robin), recv/send through one shared 64 KiB buffer, half-close passed on; no \
         limits, timeouts, logs, admin port, health checks or splice. It is a bound, not a \
         peer (never the \"best peer\"): what it costs above `direct` is the kernel's share \
         of any proxy (a second TCP connection, two more transmissions and wake-ups per \
         request), and what G6 costs above it is G6's own.",
        th = st.threads,
        nf = st.nofile,
        se = st.sessions,
        lvl = st.g6_log_level
    );
    let think = PACED_THINK_MS;
    let paced = format!(
        "keep-alive requests per second where the client is the bottleneck: the same requests \
         as `keepalive`, but each connection waits {think} ms before each request (wrk's `delay` \
         hook in `paced.lua`; the wait is not in the latency), so {c} connections offer at most \
         {c} × 1000 / {think} = {ceiling:.0} req/s, less once the response time is added: well \
         under what any proxy serves at saturation (`keepalive`). The client's pacing sets the \
         rate, and a proxy costs only the time it adds to each request. A `direct` load below \
         {share:.0} % of that ceiling (requests took longer than the think time, so it was not \
         client-bound) is an error, and its round is left out for every target; a proxy's own \
         rate is never a reason to leave a round out",
        c = st.connections,
        ceiling = f64::from(st.connections) * 1000.0 / f64::from(think),
        share = PACED_MIN_SHARE * 100.0,
    );
    for (test, what) in [
        (
            "conn",
            "new connections per second: one connection per request (`Connection: close`); \
             its latency includes the connect",
        ),
        (
            "keepalive",
            "keep-alive requests per second and latency p50/p99 (wrk's own histogram, exact µs \
             through a Lua `done` hook); closed loop, so the latency is taken at saturation",
        ),
        ("paced", paced.as_str()),
        ("file", "100 KiB responses over keep-alive connections"),
        (
            "bulk1",
            "bulk upload through the proxy, 1 stream (bytes received by the server)",
        ),
        ("bulk8", "the same with 8 parallel streams"),
    ] {
        if let Some(c) = m.commands.get(test) {
            let _ = writeln!(o, "* `{test}`, {what}:  \n  `{c}`");
        }
    }
    let _ = writeln!(
        o,
        "* `idle` (once, first in round 1: a second opening reuses the heap the first one grew): \
         {n} TCP connections to the proxy that send nothing, opened one after another; once the \
         proxy holds an upstream connection for each (counted in /proc/net/tcp), the growth of \
         the proxy's memory (VmRSS summed over its processes, and Pss) divided by {n}; then they \
         are closed and their upstream connections must go away (bounded waits).{cap}",
        n = st.idle_conns,
        cap = if st.idle_conns < st.idle_conns_requested {
            format!(
                " The descriptor hard limit here is {} and a proxy holds 2 per session, hence \
                 {} rather than {}.",
                st.nofile, st.idle_conns, st.idle_conns_requested
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        o,
        "* RSS after start: VmRSS summed over the proxy's processes (g6: monitor + worker; \
         nginx: master + worker) once it serves (after the rotation check), settled to ±16 kB. \
         Pss splits the pages a parent shares with its forked children."
    );
    let _ = writeln!(
        o,
        "* CPU: utime + stime from /proc/PID/stat (all threads) of the proxy's and the \
         backends' processes and of every kernel thread (children of kthreadd), and the load \
         generator's from wait4's rusage, between just before and just after the load; \
         whole-machine CPU from the first line of /proc/stat. The kernel here uses tick-based \
         accounting without IRQ time accounting, so softirq work is charged to the task it \
         interrupted (the processes above, or ksoftirqd)."
    );
    let _ = writeln!(
        o,
        "* Robustness: every server is awaited by polling (LISTEN in /proc/net/tcp, then an \
         HTTP 200 through it) with a deadline; each load runs under a timeout; wrk socket \
         errors, non-2xx responses, short bodies, a `direct` `paced` load that was not \
         client-bound and \
         iperf3 errors flag the sample; before each \
         load the harness waits until no connection of the previous one is left; before every round \
         it checks that no XDP program is attached to `lo` (generic XDP copies \
         every loopback segment first, which changes every figure) and stops otherwise; all \
         processes are stopped by PID at the end (also on error or Ctrl-C)."
    );
    let _ = writeln!(
        o,
        "\nRaw samples (with the CPU split per process group), commands and configurations: \
         `results.json`."
    );
    o
}

/// One line per sample while the run goes.
pub fn sample_line(s: &Sample) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (k, v) in &s.metrics {
        if k == "background_share" || k == "steal_share" || k.contains("attr") {
            continue;
        }
        let unit = metric(&s.test, k).map_or("", |m| m.unit);
        parts.push(format!("{k} {} {unit}", num(*v)).trim_end().to_string());
    }
    let mut line = format!(
        "r{} {:<9} {:<15} {}",
        s.round,
        s.test,
        s.target,
        parts.join(", ")
    );
    if !s.ok {
        line.push_str(&format!("  ⚠ {}", s.errors.join("; ")));
    }
    line
}

/// The key rows for the terminal.
pub fn console_table(r: &Results) -> String {
    let md = markdown(r);
    // The first two tables and the goals.
    let mut out = String::new();
    let mut keep = false;
    for line in md.lines() {
        if line.starts_with("## ") {
            keep = line.starts_with("## Throughput")
                || line.starts_with("## Cost")
                || line.starts_with("## Ratios to the best")
                || line.starts_with("## G6 against");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn color(t: &Target) -> &'static str {
    match t.kind {
        Kind::Direct => "#9e9e9e",
        Kind::Haproxy { splice: false } => "#1f77b4",
        Kind::Haproxy { splice: true } => "#6baed6",
        Kind::Nginx => "#2ca02c",
        Kind::G6 {
            path: DataPath::Sockmap,
        } => "#d62728",
        Kind::G6 {
            path: DataPath::Splice,
        } => "#ff7f0e",
        Kind::G6 { .. } => "#e7ba52",
        Kind::Floor => "#7f7f7f",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Small multiples: one horizontal bar chart per key figure, median with a min–max whisker.
pub fn svg(r: &Results) -> String {
    let panels: &[(&str, &str, &str)] = &[
        ("conn", "rate", "New connections / s"),
        ("conn", "cpu_attr_s_per_10k", "CPU s per 10k connections"),
        ("keepalive", "rate", "Keep-alive requests / s"),
        (
            "keepalive",
            "cpu_attr_us_per_req",
            "CPU µs per keep-alive request",
        ),
        ("keepalive", "p99_us", "Keep-alive latency p99, µs"),
        ("paced", "rate", "Paced keep-alive req/s"),
        ("file", "rate", "100 KiB responses / s"),
        ("bulk1", "gbit_s", "Bulk, 1 stream, Gbit/s"),
        ("bulk8", "gbit_s", "Bulk, 8 streams, Gbit/s"),
        ("bulk8", "cpu_attr_s_per_gb", "CPU s per GB, bulk 8 streams"),
        (
            "bulk8",
            "cpu_proxy_s_per_gb",
            "Proxy + kthreads CPU s per GB, bulk 8 streams",
        ),
        ("idle", "rss_b_per_conn", "RSS per idle connection, B"),
        ("start", "rss_mb", "RSS after start, MB"),
    ];
    let panels: Vec<_> = panels
        .iter()
        .filter(|(test, key, _)| {
            r.summary
                .iter()
                .any(|row| row.test == *test && row.metric == *key && row.value.is_some())
        })
        .collect();
    let n = r.targets.len();
    let (pw, label_w, bar_w, row_h, title_h) = (490.0, 150.0, 250.0, 18.0, 26.0);
    let ph = title_h + row_h * n as f64 + 12.0;
    let cols = 2;
    let rows = panels.len().div_ceil(cols);
    let top = 64.0;
    let width = pw * cols as f64 + 20.0;
    let height = top + ph * rows as f64 + 30.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">"##
    );
    let _ = writeln!(o, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let m = &r.meta;
    let _ = writeln!(
        o,
        r##"<text x="10" y="22" font-size="16" font-weight="bold">G6 vs HAProxy vs nginx stream — loopback, {} thread(s) per proxy</text>"##,
        m.settings.threads
    );
    let _ = writeln!(
        o,
        r##"<text x="10" y="40" fill="#444">{} · {} round(s), median and min–max · {} vCPU shared machine · Linux {} · {}</text>"##,
        esc(&m.started_utc),
        m.settings.rounds,
        m.cpus,
        esc(&m.kernel),
        esc(&m.git)
    );
    let _ = writeln!(
        o,
        r##"<text x="10" y="55" fill="#444">⚠ = a round had errors · CPU = client + backends + proxy processes + kernel threads, per unit of work</text>"##
    );
    for (i, (test, key, title)) in panels.iter().enumerate() {
        let x0 = 10.0 + pw * (i % cols) as f64;
        let y0 = top + ph * (i / cols) as f64;
        let mt = metric(test, key);
        let hb = mt.is_some_and(|m| m.higher_better);
        // G6's absolute goals, and those relative to `direct` (at direct's median), as a
        // dashed line: (position, caption).
        let goal = GOALS
            .iter()
            .find(|g| g.test == *test && g.key == *key)
            .and_then(|g| match g.basis {
                Basis::Value => Some((g.threshold, num(g.threshold))),
                Basis::Direct => r
                    .row("direct", test, key)
                    .and_then(|d| d.value)
                    .map(|d| (g.threshold * d.median, format!("{}× direct", g.threshold))),
                Basis::Peer => None,
            });
        let _ = writeln!(
            o,
            r##"<text x="{x0:.0}" y="{:.0}" font-size="12" font-weight="bold">{} <tspan font-weight="normal" fill="#666">({} is better{})</tspan></text>"##,
            y0 + 16.0,
            esc(title),
            if hb { "higher" } else { "lower" },
            goal.as_ref()
                .map_or(String::new(), |(_, g)| format!("; dashed: G6 goal {g}"))
        );
        let rows: Vec<(&Target, Option<&Row>)> = r
            .targets
            .iter()
            .map(|t| (t, r.row(&t.name, test, key)))
            .collect();
        // Scale on the medians (an outlier round must not flatten every bar); whiskers past
        // the panel are clipped with an arrow.
        let vmax = rows
            .iter()
            .filter_map(|(_, row)| row.and_then(|row| row.value).map(|s| s.median))
            .fold(0.0f64, f64::max)
            .max(1e-12)
            * 1.1;
        let goal = goal.map(|(g, _)| g);
        let vmax = goal.map_or(vmax, |g| vmax.max(g * 1.1));
        let clip = bar_w * 1.12;
        let xv = |v: f64| x0 + label_w + (bar_w * v / vmax).min(clip);
        if let Some(g) = goal {
            let x = xv(g);
            let _ = writeln!(
                o,
                r##"<path d="M{x:.1} {:.1}V{:.1}" stroke="#d62728" stroke-dasharray="4 3" fill="none"/>"##,
                y0 + title_h,
                y0 + title_h + row_h * n as f64,
            );
        }
        for (j, (t, row)) in rows.iter().enumerate() {
            let y = y0 + title_h + row_h * j as f64;
            let _ = writeln!(
                o,
                r##"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"##,
                x0 + label_w - 6.0,
                y + 12.0,
                esc(&label(r, t))
            );
            let Some(row) = row else {
                let _ = writeln!(
                    o,
                    r##"<text x="{:.0}" y="{:.0}" fill="#888">n/a</text>"##,
                    x0 + label_w,
                    y + 12.0
                );
                continue;
            };
            let Some(s) = row.value else {
                let txt = if row.rounds_with_errors > 0 {
                    "⚠ failed"
                } else {
                    "—"
                };
                let _ = writeln!(
                    o,
                    r##"<text x="{:.0}" y="{:.0}" fill="#b00">{txt}</text>"##,
                    x0 + label_w,
                    y + 12.0
                );
                continue;
            };
            let w = xv(s.median) - x0 - label_w;
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"##,
                x0 + label_w,
                y + 3.0,
                w.max(0.5),
                row_h - 6.0,
                color(t)
            );
            if s.n > 1 {
                let (a, b) = (xv(s.min), xv(s.max));
                let yc = y + row_h / 2.0;
                let end = if bar_w * s.max / vmax > clip {
                    // Clipped: an arrow head instead of the end tick.
                    format!(
                        "M{:.1} {:.1}L{b:.1} {yc:.1}L{:.1} {:.1}",
                        b - 5.0,
                        yc - 4.0,
                        b - 5.0,
                        yc + 4.0
                    )
                } else {
                    format!("M{b:.1} {:.1}V{:.1}", yc - 4.0, yc + 4.0)
                };
                let _ = writeln!(
                    o,
                    r##"<path d="M{a:.1} {yc:.1}H{b:.1}M{a:.1} {:.1}V{:.1}{end}" stroke="#222" stroke-width="1" fill="none"/>"##,
                    yc - 4.0,
                    yc + 4.0,
                );
            }
            let flag = if row.rounds_with_errors > 0 {
                " ⚠"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.0}">{}{flag}</text>"##,
                xv(s.max.max(s.median)) + 5.0,
                y + 12.0,
                num(s.median)
            );
        }
    }
    let _ = writeln!(
        o,
        r##"<text x="10" y="{:.0}" fill="#666">Generated by cargo xtask bench; figures and commands: docs/bench/results.md</text>"##,
        height - 10.0
    );
    o.push_str("</svg>\n");
    o
}

/// Writes results.json, results.md and chart.svg into `dir`; returns their paths.
pub fn write(r: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let json = dir.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(r)? + "\n")?;
    let md = dir.join("results.md");
    fs::write(&md, markdown(r))?;
    let chart = dir.join("chart.svg");
    fs::write(&chart, svg(r))?;
    Ok(vec![md, json, chart])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = stat(vec![3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = stat(vec![4.0, 1.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(stat(vec![]).is_none());
    }

    use std::collections::BTreeMap;

    use super::super::setup::Ports;
    use super::super::{Meta, Settings};

    const SPLICE: Kind = Kind::G6 {
        path: DataPath::Splice,
    };
    const COPY: Kind = Kind::G6 {
        path: DataPath::Copy,
    };

    fn target(name: &str, kind: Kind) -> Target {
        Target {
            name: name.into(),
            kind,
            http_port: 0,
            bulk_port: 0,
            data_path: match kind {
                Kind::G6 { path } => path.as_str().into(),
                _ => "—".into(),
            },
            data_path_log: Vec::new(),
            command: String::new(),
            config: String::new(),
            rss_start_kb: 0,
            pss_start_kb: 0,
            processes: 1,
            proc_index: None,
        }
    }

    fn sample(round: u32, target: &str, test: &str, metrics: &[(&str, f64)]) -> Sample {
        Sample {
            round,
            seq: 0,
            target: target.into(),
            test: test.into(),
            ok: true,
            errors: Vec::new(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            at_s: 0.0,
            cpu: None,
            load: None,
            idle: None,
        }
    }

    /// `rates[i]` is the target's `paced` rate in round i + 1.
    fn paced(target: &str, rates: &[f64]) -> Vec<Sample> {
        (1..)
            .zip(rates)
            .map(|(round, &r)| sample(round, target, "paced", &[("rate", r)]))
            .collect()
    }

    fn results(targets: &[(&str, Kind)], samples: Vec<Sample>) -> Results {
        let settings = Settings {
            quick: false,
            rounds: 3,
            duration_s: 3,
            threads: 1,
            connections: 32,
            idle_conns_requested: 10,
            idle_conns: 10,
            nofile: 1024,
            sessions: 12,
            tests: TESTS_OF_OLD_RUNS.iter().map(|t| t.to_string()).collect(),
            targets: targets.iter().map(|(n, _)| n.to_string()).collect(),
            g6_log_level: "WARN".into(),
            ports: Ports::new(19_400),
        };
        let meta = Meta {
            started_utc: "2026-11-21 00:00:00 UTC".into(),
            elapsed_s: 1.0,
            kernel: "6.18".into(),
            cpus: 2,
            cpu_model: "test".into(),
            mem_total_kb: 1 << 20,
            loadavg_start: "0 0 0".into(),
            loadavg_end: String::new(),
            git: "test".into(),
            versions: BTreeMap::new(),
            commands: BTreeMap::new(),
            settings,
        };
        let targets = targets.iter().map(|(n, k)| target(n, *k)).collect();
        Results::new(meta, targets, samples)
    }

    /// The figures of runs made before `paced` existed.
    const TESTS_OF_OLD_RUNS: &[&str] = &["conn", "keepalive", "file", "bulk1", "bulk8", "idle"];

    fn paced_goal() -> &'static Goal {
        GOALS
            .iter()
            .find(|g| g.test == "paced" && g.key == "rate")
            .expect("the paced goal")
    }

    #[test]
    fn paced_goal_is_judged_on_the_median_per_round_ratio_to_direct() {
        // Direct is slower in round 3. Per-round ratios: splice 0.96, 0.90, 1.00 (median 0.96:
        // met, although its median rate is only 0.90× direct's); copy 0.93, 0.94, 0.92 (missed).
        let mut samples = paced("direct", &[10_000.0, 10_000.0, 6_000.0]);
        samples.extend(paced("g6-splice", &[9_600.0, 9_000.0, 6_000.0]));
        samples.extend(paced("g6-copy", &[9_300.0, 9_400.0, 5_520.0]));
        let r = results(
            &[
                ("direct", Kind::Direct),
                ("g6-splice", SPLICE),
                ("g6-copy", COPY),
            ],
            samples,
        );
        let g = paced_goal();
        let splice = goal_cell(&r, "g6-splice", g);
        assert!(
            splice.starts_with("✅ met: 0.96× [0.90×–1.00×]"),
            "{splice}"
        );
        let copy = goal_cell(&r, "g6-copy", g);
        assert!(copy.starts_with("❌ missed: 0.93× [0.92×–0.94×]"), "{copy}");
        let md = markdown(&r);
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", g.text)))
            .expect("the goal's row in results.md");
        assert!(
            line.contains("✅ met") && line.contains("❌ missed"),
            "{line}"
        );
    }

    #[test]
    fn paced_goal_leaves_out_rounds_where_direct_failed() {
        let mut samples = paced("direct", &[10_000.0, 10_000.0, 10_000.0]);
        // Round 2's direct load was not client-bound: its 5 000 req/s must not be a reference.
        samples[1].metrics.insert("rate".into(), 5_000.0);
        samples[1].ok = false;
        samples[1].errors.push("not client-bound".into());
        // Ratios 0.90 and 0.96 (median 0.93: missed); with round 2's 2.0 it would be met.
        samples.extend(paced("g6-splice", &[9_000.0, 9_990.0, 9_600.0]));
        let r = results(&[("direct", Kind::Direct), ("g6-splice", SPLICE)], samples);
        let cell = goal_cell(&r, "g6-splice", paced_goal());
        assert!(cell.starts_with("❌ missed: 0.93× [0.90×–0.96×]"), "{cell}");
    }

    #[test]
    fn paced_goal_needs_direct_in_the_run() {
        let r = results(&[("g6-splice", SPLICE)], paced("g6-splice", &[9_900.0]));
        let cell = goal_cell(&r, "g6-splice", paced_goal());
        assert!(cell.starts_with("not measured"), "{cell}");
    }

    #[test]
    fn results_without_paced_render_with_the_goal_not_measured() {
        let mut samples = Vec::new();
        for (name, ka) in [
            ("direct", 30_000.0),
            ("haproxy", 24_000.0),
            ("g6-splice", 24_500.0),
        ] {
            for round in 1..=2 {
                samples.push(sample(
                    round,
                    name,
                    "keepalive",
                    &[
                        ("rate", ka),
                        ("p99_us", 2_000.0),
                        ("cpu_attr_us_per_req", 60.0),
                    ],
                ));
            }
        }
        let r = results(
            &[
                ("direct", Kind::Direct),
                ("haproxy", Kind::Haproxy { splice: false }),
                ("g6-splice", SPLICE),
            ],
            samples,
        );
        let md = markdown(&r);
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", paced_goal().text)))
            .expect("the goal's row in results.md");
        assert!(line.contains("not measured"), "{line}");
        // The other figures are still rendered.
        assert!(md.contains("keep-alive req/s"));
        assert!(svg(&r).contains("Keep-alive requests / s"));
        assert!(!svg(&r).contains("Paced"));
        assert!(!console_table(&r).is_empty());
    }

    #[test]
    fn floor_is_judged_beside_g6_and_is_never_the_best_peer() {
        let samples = [
            ("haproxy", 20_000.0),
            ("g6-splice", 21_000.0),
            ("floor", 30_000.0),
        ]
        .map(|(name, rate)| sample(1, name, "keepalive", &[("rate", rate)]));
        let r = results(
            &[
                ("haproxy", Kind::Haproxy { splice: false }),
                ("g6-splice", SPLICE),
                ("floor", Kind::Floor),
            ],
            samples.into(),
        );
        // Ratios are to HAProxy alone: a faster floor would otherwise be the reference.
        let g6 = r.row("g6-splice", "keepalive", "rate").unwrap();
        assert_eq!(g6.vs_best_peer.unwrap().median, 1.05);
        let floor = r.row("floor", "keepalive", "rate").unwrap();
        assert_eq!(floor.vs_best_peer.unwrap().median, 1.5);
        let md = markdown(&r);
        let head = md
            .lines()
            .find(|l| l.starts_with("| goal |"))
            .expect("the goals table");
        assert_eq!(head, "| goal | g6-splice | floor (minimal relay) |");
        assert!(md.contains("| floor (minimal relay) |"));
    }

    fn with_steal(round: u32, target: &str, share: f64) -> Sample {
        let mut s = sample(round, target, "keepalive", &[("rate", 10_000.0)]);
        s.metrics.insert("steal_share".into(), share);
        s
    }

    #[test]
    fn a_load_the_hypervisor_disturbed_leaves_the_figure_out_of_that_round_for_all() {
        let samples = vec![
            with_steal(1, "haproxy", 0.01),
            with_steal(1, "g6-splice", 0.40),
            with_steal(2, "haproxy", 0.02),
            with_steal(2, "g6-splice", STEAL_LIMIT),
        ];
        let r = results(
            &[
                ("haproxy", Kind::Haproxy { splice: false }),
                ("g6-splice", SPLICE),
            ],
            samples,
        );
        let why = "round disturbed: the hypervisor took 40 % of the vCPUs' time during \
                   g6-splice's load (steal; limit 25 %)";
        for s in r.samples.iter().filter(|s| s.round == 1) {
            assert!(!s.ok);
            assert_eq!(s.errors, [why]);
        }
        assert!(r.samples.iter().filter(|s| s.round == 2).all(|s| s.ok));
        let row = r.row("g6-splice", "keepalive", "rate").unwrap();
        assert_eq!(
            (row.rounds, row.rounds_with_errors, row.rounds_disturbed),
            (2, 0, 1)
        );
        let md = markdown(&r);
        assert_eq!(md.matches(why).count(), 1, "said once per figure and round");
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| g6-splice"))
            .collect();
        assert!(!rows.is_empty());
        for l in rows {
            assert!(!l.contains('⚠'), "a disturbed round is not an error: {l}");
        }
        // Summarising again (a re-render) neither doubles the mark nor keeps a stale one.
        let again = Results::new(r.meta.clone(), r.targets.clone(), r.samples.clone());
        assert_eq!(again.samples[0].errors, [why]);
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.012345), "0.012");
    }
}
