//! `admin_dispatch`: admin command lines run against the runtime state of a fixed config,
//! without sockets and on a simulated clock, checked against a model of SPEC.md §7 / §9.
//!
//! Every admin line runs through the server's own dispatcher, `g6::admin::execute` (what
//! `proxy::admin_conn` calls per line), over a `g6::runtime::Runtime` built from the config,
//! a real `guard::BlockList` (no XDP maps) and fixed `show sessions` rows and XDP counters,
//! with `admin::Clock` taken from the simulated clock.
//!
//! Input: admin lines (split by `LineSplitter`). Lines starting with `@` drive the harness:
//! * `@sleep MS`: the clock moves MS milliseconds (at most 2^42);
//! * `@tick`: the isolation timer runs (`Runtime::advance_isolation`);
//! * `@fail IP PORT`: a connect to that server failed (`server_failure` with the moratorium);
//! * `@rt IP PORT US`: a response-time sample for that server;
//! * `@reload`: HUP to the other fixed config (`Runtime::reloaded`).
//!
//! Every other line is an admin command; `quit` ends the input. After each line every server
//! entry's state equals the model's, and every reply is checked: `show rules` byte for byte,
//! JSON shapes and values, `show sessions`/`show stats` layouts, match lines of
//! `disable`/`enable`/`heartbeat`, and the invariants of the `(hb|unable|deadline)` triple.
//! [ext] `block`/`unblock`/`show blocked [json]` are checked against a block list model:
//! replies, expiry on the simulated clock, order by address, epoch deadlines, `?` with the
//! three extension lines, and the `xdp` line / key of `show stats`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use g6::admin::{
    self, AdminState, Clock, Command, Effect, LineSplitter, SessionRow, ShowWhat, VERB_DISABLE,
    VERB_ENABLE, VERB_HEARTBEAT, XdpStats, parse_command,
};
use g6::config::{self, Config};
use g6::guard::BlockList;
use g6::isolation::{Deadline, DownReason, Now, State};
use g6::runtime::{Runtime, lock};
use serde_json::Value;

use super::admin_command::{HELP_EXT, spec_fixed_reply};
use super::common::{admin_tokens, array, digits, json_document, keys_in_order};

/// Started config: a G rule with a server, repeated and IPv6 servers, heartbeats, moratorium.
const CONF_A: &str = "
(moratorium=3);
admin G 127.0.0.1:* [::1]:* - 127.0.0.1:8600 > 127.0.0.1:18701 (heartbeat=30) ;
r1 RR 127.0.0.*:* - 127.0.0.1:18601 [::1]:18601
   > 127.0.0.1:18701 127.0.0.1:18702 (heartbeat=2) 127.0.0.1:18701 [::1]:18703 ;
r2 MS (max_connections=10) 10.*:1* - 127.0.0.1:18603
   > (heartbeat=5) 127.0.0.1:18702 127.0.0.1:18704 (heartbeat=0, connect_timeout=1) ;
r3 HS *:* - 0.0.0.0:18604 > ;
";

/// The config `@reload` switches to (and back from): kept, moved, new and removed entries,
/// a changed heartbeat, an IPv4-mapped IPv6 server, no moratorium.
const CONF_B: &str = "
admin G 127.0.0.1:* - 127.0.0.1:8600 ;
r1 RR *:* - 127.0.0.1:18601
   > 127.0.0.1:18701 [::1]:18703 127.0.0.1:18701 127.0.0.1:18702 (heartbeat=2) 127.0.0.1:18705 ;
r2 LC 10.*:1* - 127.0.0.1:18603 > (heartbeat=7) 127.0.0.1:18702 127.0.0.1:18704 (heartbeat=0) ;
r4 RD [::1]:* - [::1]:18606 > [::ffff:127.0.0.1]:18701 (heartbeat=1h) 127.0.0.1:18701 (heartbeat=1) ;
";

/// Wall clock at the start of every run (with a millisecond part, to see truncation).
const EPOCH_MS: u64 = 1_795_235_153_437;
const MAX_SLEEP_MS: u64 = 1 << 42;
/// Simulated time stops here (~280 years), so that monotonic ns plus a block of `u32::MAX`
/// seconds stays far from `u64::MAX`.
const MAX_TIME_MS: u64 = 1 << 43;
/// At most this many blocks in force (README: 65 536, the XDP maps' size).
const MAX_BLOCKED: usize = g6::guard::XDP_MAX_BLOCKED as usize;
/// CLOCK_MONOTONIC (ns) at the start of a run: an agent up for 1000 s.
const BASE_MONO_NS: u64 = 1_000_000_000_000;

fn configs() -> &'static [Arc<Config>; 2] {
    static CONFIGS: OnceLock<[Arc<Config>; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let parse = |label, text: &str| {
            Arc::new(config::parse(label, text.as_bytes()).unwrap_or_else(|e| panic!("{e}")))
        };
        [parse("A", CONF_A), parse("B", CONF_B)]
    })
}

/// SPEC.md §7 states; deadlines in ms of simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Up,
    UpUntil(u64),
    DownUntil(u64, DownReason),
    Down(DownReason),
}

/// Model of one server entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    hb: u32,
    state: M,
    has_rt: bool,
    /// An automatic transition (expiry) happened that the isolation timer has not logged
    /// yet (SPEC.md §10: WARN on server state changes); an explicit change clears it.
    unreported: bool,
}

fn ms(secs: u32) -> u64 {
    u64::from(secs) * 1000
}

impl Entry {
    /// "loaded": hb = 0 UP, hb > 0 DOWN (awaiting the first heartbeat).
    fn loaded(hb: u32) -> Self {
        let state = if hb > 0 {
            M::Down(DownReason::NoHeartbeat)
        } else {
            M::Up
        };
        Self {
            hb,
            state,
            has_rt: false,
            unreported: false,
        }
    }

    /// Expiries up to `now`: DOWN until t → UP (hb = 0) or UP until t+hb; UP until t → DOWN.
    fn advance(&mut self, now: u64) {
        loop {
            self.state = match self.state {
                M::DownUntil(t, _) if now >= t => {
                    if self.hb == 0 {
                        M::Up
                    } else {
                        M::UpUntil(t + ms(self.hb))
                    }
                }
                M::UpUntil(t) if now >= t => M::Down(DownReason::NoHeartbeat),
                _ => return,
            };
            self.unreported = true;
        }
    }

    /// `(hb|unable|deadline)`, deadline in epoch seconds (truncated), 0 = none.
    fn triple(&self) -> (u32, u32, u64) {
        let epoch = |t: u64| (EPOCH_MS + t) / 1000;
        match self.state {
            M::Up => (self.hb, 0, 0),
            M::UpUntil(t) => (self.hb, 0, epoch(t)),
            M::DownUntil(t, _) => (self.hb, 1, epoch(t)),
            M::Down(_) => (self.hb, 1, 0),
        }
    }

    /// `show stats` state (nothing is connected here, so never `full`).
    fn state_name(&self) -> &'static str {
        match self.state {
            M::Up | M::UpUntil(_) => "up",
            M::DownUntil(_, r) | M::Down(r) => match r {
                DownReason::Moratorium => "moratorium",
                DownReason::Disabled => "disabled",
                DownReason::NoHeartbeat => "no-heartbeat",
            },
        }
    }

    /// The `isolation::State` this model state stands for.
    fn expected(&self, base: Now) -> State {
        let at = |t: u64| Deadline {
            at: base.mono + Duration::from_millis(t),
            epoch_ms: EPOCH_MS + t,
        };
        match self.state {
            M::Up => State::Up,
            M::UpUntil(t) => State::UpUntil(at(t)),
            M::DownUntil(t, r) => State::DownUntil(at(t), r),
            M::Down(r) => State::Down(r),
        }
    }
}

/// Model of one block: until when (simulated ms; `None` = until unblocked) and the epoch
/// deadline `show blocked` prints.
#[derive(Debug, Clone, Copy)]
struct Blocked {
    until_ms: Option<u64>,
    deadline: u64,
}

impl Blocked {
    fn active(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|t| now_ms < t)
    }
}

/// The XDP counters `show stats` reports (the guard is not loaded here).
fn xdp_stats() -> XdpStats {
    XdpStats {
        mode: "generic",
        ifaces: vec!["lo".into(), "g6x0".into()],
        dropped_blocked: 7,
        dropped_not_allowed: 1 << 32,
    }
}

struct Sim {
    base: Now,
    now_ms: u64,
    conf: usize,
    rt: Runtime,
    model: Vec<Vec<Entry>>,
    /// The real block list (no XDP maps behind it), on the simulated monotonic clock.
    blocks: BlockList,
    /// Its model, by address (the order of `show blocked`).
    blocked: BTreeMap<IpAddr, Blocked>,
}

pub fn check(data: &[u8]) {
    let mut lines = Vec::new();
    let mut sp = LineSplitter::new();
    if sp.push(data, &mut lines).is_ok() {
        lines.extend(sp.finish());
    }
    let mut sim = Sim::new();
    for line in &lines {
        let go_on = sim.line(line);
        sim.check_states(line);
        if !go_on {
            break;
        }
    }
}

/// One `disable`/`enable`/`heartbeat` match line as SPEC.md §9.2 writes it.
fn match_line(rule: &str, ip: IpAddr, port: u16, verb: &str) -> String {
    format!("{rule} {ip} {port} {verb}\n")
}

impl Sim {
    fn new() -> Self {
        let cfg = configs()[0].clone();
        let model = cfg
            .rules
            .iter()
            .map(|r| {
                r.servers
                    .iter()
                    .map(|s| Entry::loaded(s.heartbeat))
                    .collect()
            })
            .collect();
        Self {
            base: Now {
                mono: Instant::now(),
                epoch_ms: EPOCH_MS,
            },
            now_ms: 0,
            conf: 0,
            rt: Runtime::new(cfg),
            model,
            blocks: BlockList::default(),
            blocked: BTreeMap::new(),
        }
    }

    fn now(&self) -> Now {
        self.base.plus_ms(self.now_ms)
    }

    fn cfg(&self) -> &Config {
        &self.rt.config
    }

    fn advance_model(&mut self) {
        let now = self.now_ms;
        self.model.iter_mut().flatten().for_each(|e| e.advance(now));
    }

    /// (rule index, server index) of every entry at `ip:port`, rules then servers in order.
    fn matching(&self, ip: IpAddr, port: u16) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for (ri, r) in self.cfg().rules.iter().enumerate() {
            for (si, s) in r.servers.iter().enumerate() {
                if s.addr.ip() == ip && s.addr.port() == port {
                    v.push((ri, si));
                }
            }
        }
        v
    }

    /// Runs one input line; false once the connection would be closed (`quit`).
    fn line(&mut self, line: &[u8]) -> bool {
        let toks = admin_tokens(line);
        let ip_port = || {
            Some((
                admin::command::parse_ip(toks.get(1)?)?,
                admin::command::parse_port(toks.get(2)?)?,
            ))
        };
        match toks.first().copied() {
            Some(b"@sleep") => {
                if let Some(d) = toks.get(1).and_then(|t| digits(t)) {
                    self.now_ms = (self.now_ms + d.min(MAX_SLEEP_MS)).min(MAX_TIME_MS);
                }
            }
            Some(b"@tick") => self.tick(),
            Some(b"@fail") => {
                if let Some((ip, port)) = ip_port() {
                    self.fail(ip, port);
                }
            }
            Some(b"@rt") => {
                if let (Some((ip, port)), Some(us)) =
                    (ip_port(), toks.get(3).and_then(|t| digits(t)))
                {
                    for (_, s) in self.rt.servers_at(ip, port) {
                        s.record_rt_sample(us);
                    }
                    for (ri, si) in self.matching(ip, port) {
                        self.model[ri][si].has_rt = true;
                    }
                }
            }
            Some(b"@reload") => self.reload(),
            _ => return self.admin(line),
        }
        true
    }

    /// The isolation timer: it reports every automatic transition since the last report or
    /// explicit change of an entry, whoever applied it (a `show`, a pick or the timer), once.
    fn tick(&mut self) {
        let now = self.now();
        let changed = self.rt.advance_isolation(now);
        self.advance_model();
        let mut want = Vec::new();
        for (ri, r) in self.rt.config.rules.iter().enumerate() {
            for (si, s) in r.servers.iter().enumerate() {
                let e = &mut self.model[ri][si];
                if std::mem::take(&mut e.unreported) {
                    want.push((r.id.clone(), s.addr.to_string(), e.state_name()));
                }
            }
        }
        assert_eq!(
            changed, want,
            "advance_isolation (SPEC.md §10 WARN on state changes)"
        );
        assert!(
            self.rt.advance_isolation(now).is_empty(),
            "second tick reported again"
        );
        if let Some(next) = self.rt.next_isolation_deadline() {
            assert!(next > now.mono, "a due deadline survived the tick");
        }
    }

    /// A connect to `ip:port` failed: with moratorium M > 0 an available entry (or one in
    /// moratorium ending earlier) is DOWN until now+M (SPEC.md §7); M = 0 changes nothing.
    /// G6 leaves a disabled or heartbeat-less entry alone (a failure report may arrive after
    /// the admin `disable`).
    fn fail(&mut self, ip: IpAddr, port: u16) {
        let now = self.now();
        let m = self.cfg().moratorium;
        for (_, s) in self.rt.servers_at(ip, port) {
            lock(&s.isolation).server_failure(m, now);
        }
        self.advance_model();
        let until = self.now_ms + ms(m);
        for (ri, si) in self.matching(ip, port) {
            let e = &mut self.model[ri][si];
            // The caller logs the failure itself.
            e.unreported = false;
            if m == 0 {
                continue;
            }
            match e.state {
                M::Up | M::UpUntil(_) => {}
                M::DownUntil(t, DownReason::Moratorium) if t < until => {}
                _ => continue,
            }
            e.state = M::DownUntil(until, DownReason::Moratorium);
        }
    }

    /// HUP to the other config (SPEC.md §3): server entries match by (rule id, address,
    /// occurrence) and keep their state; G6 restarts the isolation of an entry whose
    /// heartbeat changed; new entries start at load time.
    fn reload(&mut self) {
        self.advance_model();
        let old_cfg = self.rt.config.clone();
        let next = 1 - self.conf;
        let new_cfg = configs()[next].clone();
        let model = new_cfg
            .rules
            .iter()
            .map(|r| {
                let old = old_cfg.rules.iter().position(|o| o.id == r.id);
                r.servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let nth = r.servers[..i].iter().filter(|o| o.addr == s.addr).count();
                        let kept = old.and_then(|oi| {
                            let same = old_cfg.rules[oi]
                                .servers
                                .iter()
                                .enumerate()
                                .filter(|(_, o)| o.addr == s.addr);
                            same.map(|(k, _)| self.model[oi][k]).nth(nth)
                        });
                        match kept {
                            Some(e) if e.hb == s.heartbeat => e,
                            Some(e) => Entry {
                                has_rt: e.has_rt,
                                ..Entry::loaded(s.heartbeat)
                            },
                            None => Entry::loaded(s.heartbeat),
                        }
                    })
                    .collect()
            })
            .collect();
        self.rt = Runtime::reloaded(&self.rt, new_cfg);
        self.model = model;
        self.conf = next;
    }

    /// One admin line through the server's own dispatcher (`g6::admin::execute`), the reply
    /// checked against the model; false on `quit`.
    fn admin(&mut self, line: &[u8]) -> bool {
        let cmd = parse_command(line);
        let clock = Clock {
            now: self.now(),
            mono_ns: BASE_MONO_NS + self.now_ms * 1_000_000,
        };
        let mut out = Vec::new();
        let effect = {
            let rows = || self.session_rows();
            let state = AdminState {
                runtime: &self.rt,
                blocklist: &self.blocks,
                sessions: &rows,
                xdp: &xdp_stats,
            };
            admin::execute(&state, &cmd, clock, &mut out)
        };
        assert_eq!(effect == Effect::Close, cmd == Command::Quit, "{cmd:?}");
        let spec = spec_fixed_reply(&cmd);
        assert_eq!(cmd.fixed_reply(), spec, "{cmd:?}");
        if let Some(mut want) = spec {
            if cmd == Command::Help {
                want.extend_from_slice(HELP_EXT.as_bytes());
            }
            assert_eq!(out, want, "{cmd:?}");
            return true;
        }
        let reply = String::from_utf8(out).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        self.advance_model();
        match cmd {
            Command::Quit => {
                assert_eq!(reply, "", "quit replies nothing");
                return false;
            }
            Command::Show { what, json } => self.check_show(what, json, &reply),
            Command::Disable { ip, port, secs } => {
                let state = match secs {
                    Some(t) => M::DownUntil(self.now_ms + ms(t), DownReason::Disabled),
                    None => M::Down(DownReason::Disabled),
                };
                self.expect_matches(&reply, ip, port, VERB_DISABLE, |_| Some(state));
            }
            Command::Enable { ip, port, secs } => {
                let until = secs.map(|t| self.now_ms + ms(t));
                self.expect_matches(&reply, ip, port, VERB_ENABLE, |e| {
                    Some(match until {
                        Some(t) if e.hb > 0 => M::UpUntil(t),
                        _ => M::Up,
                    })
                });
            }
            Command::Heartbeat { ip, port } => {
                let now_ms = self.now_ms;
                self.expect_matches(&reply, ip, port, VERB_HEARTBEAT, |e| {
                    (e.hb > 0).then(|| M::UpUntil(now_ms + ms(e.hb)))
                });
            }
            Command::Block { ip, secs } => self.block(&reply, ip, secs),
            Command::Unblock { ip } => {
                let was = self
                    .blocked
                    .remove(&ip)
                    .is_some_and(|b| b.active(self.now_ms));
                let want = if was {
                    format!("{ip} unblocked\n")
                } else {
                    String::new()
                };
                assert_eq!(reply, want, "unblock {ip}");
            }
            Command::ShowBlocked { json } => self.check_blocked(json, &reply),
            other => panic!("{other:?} has a fixed reply"),
        }
        true
    }

    /// README: `<ip> blocked`, replacing an earlier block; a source not yet blocked is
    /// refused once 65 536 blocks are in force (`not blocked: list full`).
    fn block(&mut self, reply: &str, ip: IpAddr, secs: Option<u32>) {
        let now = self.now_ms;
        let in_force = self.blocked.values().filter(|b| b.active(now)).count();
        let known = self.blocked.get(&ip).is_some_and(|b| b.active(now));
        if !known && in_force >= MAX_BLOCKED {
            assert_eq!(reply, format!("{ip} not blocked: list full\n"));
            return;
        }
        let b = match secs {
            None => Blocked {
                until_ms: None,
                deadline: 0,
            },
            Some(s) => Blocked {
                until_ms: Some(now + ms(s)),
                deadline: (EPOCH_MS + now) / 1000 + u64::from(s),
            },
        };
        self.blocked.insert(ip, b);
        assert_eq!(reply, format!("{ip} blocked\n"), "block {ip} {secs:?}");
    }

    /// `show blocked [json]`: the blocks in force, by address, with their epoch deadlines.
    fn check_blocked(&mut self, json: bool, reply: &str) {
        let now = self.now_ms;
        self.blocked.retain(|_, b| b.active(now));
        if json {
            let doc = json_document(reply);
            let top = keys_in_order(&doc, &["blocked"], "show blocked json");
            let items = array(&top["blocked"], "blocked");
            assert_eq!(items.len(), self.blocked.len(), "{reply}");
            for (js, (ip, b)) in items.iter().zip(&self.blocked) {
                let o = keys_in_order(js, &["ip", "deadline"], "blocked entry");
                assert_eq!(o["ip"], ip.to_string());
                assert_eq!(o["deadline"], b.deadline);
            }
        } else {
            let want: String = self
                .blocked
                .iter()
                .map(|(ip, b)| format!("{ip} {}\n", b.deadline))
                .collect();
            assert_eq!(reply, want, "show blocked");
        }
    }

    /// Applies `op` to the model entries at `ip:port` (`None`: ignored, no reply line) and
    /// checks the reply lines.
    fn expect_matches(
        &mut self,
        reply: &str,
        ip: IpAddr,
        port: u16,
        verb: &str,
        op: impl Fn(&Entry) -> Option<M>,
    ) {
        let mut want = String::new();
        for (ri, si) in self.matching(ip, port) {
            let e = &mut self.model[ri][si];
            if let Some(state) = op(e) {
                e.state = state;
                e.unreported = false;
                want.push_str(&match_line(&self.rt.config.rules[ri].id, ip, port, verb));
            }
        }
        assert_eq!(reply, want, "{verb} {ip} {port}");
    }

    fn check_show(&self, what: ShowWhat, json: bool, reply: &str) {
        match (what, json) {
            (ShowWhat::Rules, false) => {
                assert_eq!(
                    reply,
                    self.expected_rules_text(),
                    "show rules (SPEC.md §9.3)"
                );
            }
            (ShowWhat::Rules, true) => self.check_rules_json(reply),
            (ShowWhat::Sessions, json) => {
                let rows = self.session_rows();
                if json {
                    check_sessions_json(reply, &rows);
                } else {
                    assert_eq!(reply, expected_sessions_text(&rows), "SPEC.md §9.4");
                }
            }
            (ShowWhat::Stats, true) => self.check_stats_json(reply),
            (ShowWhat::Stats, false) => self.check_stats_text(reply),
        }
    }

    /// SPEC.md §9.3 from the model.
    fn expected_rules_text(&self) -> String {
        let mut out = String::new();
        for (ri, r) in self.cfg().rules.iter().enumerate() {
            out.push_str(&format!("{} | {} | ", r.id, r.alg.as_str()));
            for c in &r.clients {
                out.push_str(&format!("{} ", c.pattern.text));
            }
            out.push_str("- ");
            for l in &r.listens {
                out.push_str(&format!("{} ", l.addr));
            }
            if !r.servers.is_empty() {
                out.push_str("> ");
            }
            for (si, s) in r.servers.iter().enumerate() {
                let (hb, unable, deadline) = self.model[ri][si].triple();
                out.push_str(&format!("{}({hb}|{unable}|{deadline}) ", s.addr));
            }
            out.push('\n');
        }
        out
    }

    fn check_rules_json(&self, reply: &str) {
        let doc = json_document(reply);
        let top = keys_in_order(&doc, &["moratorium", "rules"], "show rules json");
        assert_eq!(top["moratorium"], u64::from(self.cfg().moratorium));
        let rules = array(&top["rules"], "rules");
        assert_eq!(rules.len(), self.cfg().rules.len());
        for (ri, (jr, r)) in rules.iter().zip(&self.cfg().rules).enumerate() {
            let o = keys_in_order(jr, &["id", "alg", "clients", "listens", "servers"], "rule");
            assert_eq!(o["id"], r.id.as_str());
            let servers = array(&o["servers"], "servers");
            assert_eq!(servers.len(), r.servers.len());
            for (si, (js, s)) in servers.iter().zip(&r.servers).enumerate() {
                let keys = [
                    "addr",
                    "heartbeat",
                    "unable",
                    "deadline",
                    "state",
                    "max_connections",
                    "max_ip",
                    "max_connections_per_ip",
                    "connect_timeout",
                ];
                let js = keys_in_order(js, &keys, "server");
                let e = &self.model[ri][si];
                let (hb, unable, deadline) = e.triple();
                assert_eq!(js["addr"], s.addr.to_string());
                assert_eq!(js["heartbeat"], u64::from(hb), "{js:?}");
                assert_eq!(js["unable"], u64::from(unable), "{js:?}");
                assert_eq!(js["deadline"], deadline, "{js:?}");
                assert_eq!(js["state"], e.state_name(), "{js:?}");
                assert!(js["connect_timeout"].is_null() || js["connect_timeout"].is_u64());
            }
        }
    }

    /// Fixed rows: the listeners of the current config, one admin connection, one proxied
    /// session connected and one connecting.
    fn session_rows(&self) -> Vec<SessionRow> {
        let mut rows: Vec<SessionRow> = self
            .cfg()
            .listeners()
            .enumerate()
            .map(|(k, (ri, _, l))| SessionRow::Listen {
                rule: self.cfg().rules[ri].id.clone(),
                listen: l.addr,
                listen_fd: 3 + k as i32,
            })
            .collect();
        let sa = |s: &str| -> SocketAddr { s.parse().expect("address") };
        rows.push(SessionRow::Manager {
            rule: "admin".into(),
            peer: sa("127.0.0.1:40000"),
            fd: 20,
            listen: sa("127.0.0.1:8600"),
            listen_fd: 3,
            age_ms: self.now_ms,
            idle_ms: 0,
        });
        for (connected, fd) in [(true, 21), (false, 23)] {
            rows.push(SessionRow::Proxy {
                connected,
                rule: "r1".into(),
                client: sa("[::1]:40001"),
                client_fd: fd,
                listen: sa("[::1]:18601"),
                listen_fd: 4,
                server: sa("[::1]:18703"),
                server_fd: fd + 1,
                data_path: Some("copy"),
                bytes_in: self.now_ms,
                bytes_out: u64::MAX,
                age_ms: self.now_ms,
                idle_ms: 1,
                client_eof: connected,
                server_eof: false,
            });
        }
        rows
    }

    /// SPEC.md §9.5: a rule line, then its server lines; nothing is connected here.
    fn check_stats_text(&self, reply: &str) {
        let mut lines = reply.split_terminator('\n');
        assert!(reply.is_empty() || reply.ends_with('\n'));
        for (ri, r) in self.cfg().rules.iter().enumerate() {
            let want = format!(
                "rule {} {} active=0 total=0 refused=0 bytes_in=0 bytes_out=0",
                r.id, r.alg
            );
            assert_eq!(lines.next(), Some(want.as_str()), "{reply}");
            for (si, s) in r.servers.iter().enumerate() {
                let e = &self.model[ri][si];
                let line = lines
                    .next()
                    .unwrap_or_else(|| panic!("missing server line: {reply}"));
                let head = format!(
                    "  server {} {} active=0 total=0 failures=0 bytes_in=0 bytes_out=0 rt_us=",
                    s.addr,
                    e.state_name()
                );
                let rt = line
                    .strip_prefix(&head)
                    .unwrap_or_else(|| panic!("{line:?} does not start with {head:?}"));
                if e.has_rt {
                    assert!(digits(rt.as_bytes()).is_some(), "rt_us {rt:?}");
                } else {
                    assert_eq!(rt, "-");
                }
            }
        }
        // README: the [ext] `xdp` line closes the reply.
        let xdp = "xdp generic lo,g6x0 dropped_blocked=7 dropped_not_allowed=4294967296";
        assert_eq!(lines.next(), Some(xdp), "{reply}");
        assert_eq!(lines.next(), None, "{reply}");
    }

    fn check_stats_json(&self, reply: &str) {
        let doc = json_document(reply);
        let top = keys_in_order(&doc, &["rules", "xdp"], "show stats json");
        let xdp = keys_in_order(
            &top["xdp"],
            &["mode", "ifaces", "dropped_blocked", "dropped_not_allowed"],
            "xdp",
        );
        assert_eq!(xdp["mode"], "generic");
        assert_eq!(xdp["ifaces"], serde_json::json!(["lo", "g6x0"]));
        assert_eq!(xdp["dropped_blocked"], 7);
        assert_eq!(xdp["dropped_not_allowed"], 1u64 << 32);
        let rules = array(&top["rules"], "rules");
        assert_eq!(rules.len(), self.cfg().rules.len());
        let rule_keys = [
            "id",
            "alg",
            "active",
            "total",
            "refused",
            "bytes_in",
            "bytes_out",
            "servers",
        ];
        let server_keys = [
            "addr",
            "state",
            "active",
            "total",
            "failures",
            "bytes_in",
            "bytes_out",
            "rt_us",
        ];
        for (ri, (jr, r)) in rules.iter().zip(&self.cfg().rules).enumerate() {
            let o = keys_in_order(jr, &rule_keys, "rule stats");
            assert_eq!(o["id"], r.id.as_str());
            assert_eq!(o["alg"], r.alg.as_str());
            let servers = array(&o["servers"], "servers");
            assert_eq!(servers.len(), r.servers.len());
            for (si, (js, s)) in servers.iter().zip(&r.servers).enumerate() {
                let js = keys_in_order(js, &server_keys, "server stats");
                let e = &self.model[ri][si];
                assert_eq!(js["addr"], s.addr.to_string());
                assert_eq!(js["state"], e.state_name());
                assert_eq!(js["rt_us"].is_u64(), e.has_rt, "{js:?}");
                assert_eq!(js["rt_us"].is_null(), !e.has_rt, "{js:?}");
            }
        }
    }

    /// Every entry's state equals the model's (without disturbing the runtime's lazy state),
    /// and its triple obeys SPEC.md §7.
    fn check_states(&self, line: &[u8]) {
        let now = self.now();
        let ctx = || String::from_utf8_lossy(line).into_owned();
        for (ri, rr) in self.rt.rules.iter().enumerate() {
            for (si, s) in rr.servers.iter().enumerate() {
                let mut e = self.model[ri][si];
                e.advance(self.now_ms);
                let mut iso = lock(&s.isolation).clone();
                assert_eq!(iso.hb(), s.entry.heartbeat);
                let available = iso.is_available(now);
                assert_eq!(
                    iso.state(),
                    e.expected(self.base),
                    "rule {} server {} after {:?}",
                    self.cfg().rules[ri].id,
                    s.text,
                    ctx()
                );
                let (hb, unable, deadline) = iso.triple(now);
                assert_eq!((hb, unable, deadline), e.triple());
                assert_eq!(
                    iso.take_unreported(),
                    e.unreported,
                    "unreported transition flag"
                );
                assert!(unable <= 1, "unable {unable}");
                let timed = matches!(iso.state(), State::UpUntil(_) | State::DownUntil(..));
                assert_eq!(
                    deadline != 0,
                    timed,
                    "deadline {deadline} vs {:?}",
                    iso.state()
                );
                assert_eq!(available, unable == 0);
                assert_eq!(iso.next_deadline().is_some(), timed);
                if let Some(at) = iso.next_deadline() {
                    assert!(at > now.mono, "an expired deadline is pending");
                }
                if hb == 0 {
                    assert!(
                        !matches!(iso.state(), State::UpUntil(_)),
                        "UP until without hb"
                    );
                }
            }
        }
    }
}

/// SPEC.md §9.4, from the rows.
fn expected_sessions_text(rows: &[SessionRow]) -> String {
    let head = |kind: &str, status: &str| format!("{kind:>8} | {status:>11} | ");
    let ep = |a: &SocketAddr, fd: i32| format!("{a}(#{fd}#)");
    let mut out = String::new();
    for row in rows {
        match row {
            SessionRow::Listen {
                listen, listen_fd, ..
            } => {
                out += &format!("{}- {}\n", head("LISTEN", "LISTEN"), ep(listen, *listen_fd));
            }
            SessionRow::Manager {
                peer,
                fd,
                listen,
                listen_fd,
                ..
            } => {
                out += &format!(
                    "{}{} - {}\n",
                    head("MANAGER", "COMMAND"),
                    ep(peer, *fd),
                    ep(listen, *listen_fd)
                );
            }
            SessionRow::Proxy {
                connected,
                client,
                client_fd,
                listen,
                listen_fd,
                server,
                server_fd,
                ..
            } => {
                let (s, c) = if *connected {
                    ("CONNECTED", "CONNECTED")
                } else {
                    ("READY", "CONNECTING")
                };
                let (cl, li, se) = (
                    ep(client, *client_fd),
                    ep(listen, *listen_fd),
                    ep(server, *server_fd),
                );
                out += &format!("{}{cl} - {li} > {se}\n", head("SERVER", s));
                out += &format!("{}{se} - {li} > {cl}\n", head("CLIENT", c));
            }
        }
    }
    out
}

fn check_sessions_json(reply: &str, rows: &[SessionRow]) {
    let doc = json_document(reply);
    let top = keys_in_order(&doc, &["sessions"], "show sessions json");
    let sessions = array(&top["sessions"], "sessions");
    assert_eq!(sessions.len(), rows.len());
    for (js, row) in sessions.iter().zip(rows) {
        match row {
            SessionRow::Listen { .. } => {
                keys_in_order(js, &["type", "rule", "listen", "listen_fd"], "LISTEN");
                assert_eq!(js["type"], "LISTEN");
            }
            SessionRow::Manager { .. } => {
                let keys = [
                    "type",
                    "rule",
                    "peer",
                    "fd",
                    "listen",
                    "listen_fd",
                    "age_ms",
                    "idle_ms",
                ];
                keys_in_order(js, &keys, "MANAGER");
                assert_eq!(js["type"], "MANAGER");
            }
            SessionRow::Proxy {
                connected,
                data_path,
                ..
            } => {
                let keys = [
                    "type",
                    "status",
                    "rule",
                    "client",
                    "client_fd",
                    "listen",
                    "listen_fd",
                    "server",
                    "server_fd",
                    "data_path",
                    "bytes_in",
                    "bytes_out",
                    "age_ms",
                    "idle_ms",
                    "client_eof",
                    "server_eof",
                ];
                keys_in_order(js, &keys, "PROXY");
                assert_eq!(js["type"], "PROXY");
                let (status, path) = if *connected {
                    ("CONNECTED", data_path.map_or(Value::Null, Value::from))
                } else {
                    ("CONNECTING", Value::Null)
                };
                assert_eq!(js["status"], status);
                assert_eq!(js["data_path"], path);
                assert_eq!(js["bytes_out"], u64::MAX);
            }
        }
    }
}
