//! Runtime state built from a config snapshot: per rule its rotation pointer and counters, per
//! client entry and server entry their limit trackers, per server its isolation state, counters
//! and response time. Sessions hold the `Arc<Runtime>` they started with, so a reload never
//! changes the settings of a session in flight.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::admin::{RuleStats, ServerStateView, ServerStats};
use crate::balance::{Candidate, Selector, rt_update};
use crate::config::{Config, Rule, ServerEntry, ServerTriple, fmt_addr};
use crate::isolation::{Isolation, Now};
use crate::limits::{LimitTracker, Permit};

/// Lock a mutex, ignoring poisoning: every critical section here leaves the data consistent.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default, Debug)]
pub struct RuleCounters {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// State of a server entry that survives reloads while the entry is kept (SPEC.md §3 HUP):
/// isolation, counters and response time. Sessions of every generation update the same one.
#[derive(Debug)]
pub struct ServerState {
    pub isolation: Mutex<Isolation>,
    pub total: AtomicU64,
    pub failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    rt_us: Mutex<Option<u64>>,
}

#[derive(Debug)]
pub struct ServerRuntime {
    pub entry: ServerEntry,
    /// `ip:port` as `show rules` prints it (also the HS hash input).
    pub text: String,
    pub limits: Arc<LimitTracker>,
    state: Arc<ServerState>,
}

impl std::ops::Deref for ServerRuntime {
    type Target = ServerState;
    fn deref(&self) -> &ServerState {
        &self.state
    }
}

impl ServerRuntime {
    fn new(entry: &ServerEntry) -> Self {
        ServerRuntime {
            text: fmt_addr(&entry.addr),
            limits: LimitTracker::new(entry.limits),
            state: Arc::new(ServerState {
                isolation: Mutex::new(Isolation::loaded(entry.heartbeat)),
                total: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                rt_us: Mutex::new(None),
            }),
            entry: entry.clone(),
        }
    }

    /// The entry in a reloaded config: same state; same limit counts if the limits are
    /// unchanged; a fresh isolation state if its heartbeat period changed.
    fn reloaded(old: &ServerRuntime, entry: &ServerEntry) -> Self {
        if old.entry.heartbeat != entry.heartbeat {
            *lock(&old.state.isolation) = Isolation::loaded(entry.heartbeat);
        }
        ServerRuntime {
            text: old.text.clone(),
            limits: if old.entry.limits == entry.limits {
                old.limits.clone()
            } else {
                LimitTracker::new(entry.limits)
            },
            state: old.state.clone(),
            entry: entry.clone(),
        }
    }

    pub fn rt_us(&self) -> Option<u64> {
        *lock(&self.rt_us)
    }

    pub fn record_rt_sample(&self, sample_us: u64) {
        let mut rt = lock(&self.rt_us);
        *rt = Some(rt_update(*rt, sample_us));
    }

    pub fn triple(&self, now: Now) -> ServerTriple {
        let (hb, unable, deadline) = lock(&self.isolation).triple(now);
        ServerTriple {
            hb,
            unable,
            deadline,
        }
    }

    /// `up full moratorium disabled no-heartbeat` (SPEC.md §9.5).
    pub fn state_name(&self, now: Now) -> &'static str {
        let name = lock(&self.isolation).state_name(now);
        let l = self.limits.limits();
        if name == "up" && l.max_connections > 0 && self.limits.active() >= l.max_connections {
            "full"
        } else {
            name
        }
    }
}

#[derive(Debug)]
pub struct RuleRuntime {
    pub index: usize,
    pub selector: Arc<Mutex<Selector>>,
    pub clients: Vec<Arc<LimitTracker>>,
    pub servers: Vec<Arc<ServerRuntime>>,
    pub server_texts: Vec<String>,
    pub counters: Arc<RuleCounters>,
}

/// A server chosen for one connect attempt, with its limit permit already held.
pub struct Chosen {
    pub index: usize,
    pub server: Arc<ServerRuntime>,
    pub permit: Permit,
}

impl RuleRuntime {
    fn new(index: usize, rule: &Rule) -> Self {
        let servers: Vec<_> = rule
            .servers
            .iter()
            .map(|s| Arc::new(ServerRuntime::new(s)))
            .collect();
        RuleRuntime {
            index,
            selector: Arc::new(Mutex::new(Selector::new(rule.alg))),
            clients: rule
                .clients
                .iter()
                .map(|c| LimitTracker::new(c.limits))
                .collect(),
            server_texts: servers.iter().map(|s| s.text.clone()).collect(),
            servers,
            counters: Arc::default(),
        }
    }

    /// The rule in a reloaded config, keeping what matches (SPEC.md §3 HUP): the rotation
    /// pointer and counters if the rule id is kept (and the algorithm too, for the pointer),
    /// server entries by address (n-th occurrence), client entries by pattern (n-th occurrence).
    fn reloaded(index: usize, old_rule: &Rule, old: &RuleRuntime, rule: &Rule) -> Self {
        let servers: Vec<_> = rule
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let nth = rule.servers[..i]
                    .iter()
                    .filter(|o| o.addr == s.addr)
                    .count();
                let kept = old_rule
                    .servers
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.addr == s.addr)
                    .nth(nth);
                Arc::new(match kept {
                    Some((oi, _)) => ServerRuntime::reloaded(&old.servers[oi], s),
                    None => ServerRuntime::new(s),
                })
            })
            .collect();
        let clients = rule
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let same = |o: &&crate::config::ClientEntry| o.pattern.text == c.pattern.text;
                let nth = rule.clients[..i].iter().filter(same).count();
                let kept = old_rule
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| same(o))
                    .nth(nth);
                match kept {
                    Some((oi, o)) if o.limits == c.limits => old.clients[oi].clone(),
                    _ => LimitTracker::new(c.limits),
                }
            })
            .collect();
        RuleRuntime {
            index,
            selector: if old_rule.alg == rule.alg {
                old.selector.clone()
            } else {
                Arc::new(Mutex::new(Selector::new(rule.alg)))
            },
            clients,
            server_texts: servers.iter().map(|s| s.text.clone()).collect(),
            servers,
            counters: old.counters.clone(),
        }
    }

    /// Picks the next server for `client_ip` among those not yet `tried` and takes its permit.
    /// Picking and acquiring happen under the selector lock, so limits are exact.
    pub fn choose(&self, client_ip: IpAddr, tried: &[bool], now: Now) -> Option<Chosen> {
        let mut selector = lock(&self.selector);
        let candidates: Vec<Candidate> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Candidate {
                available: lock(&s.isolation).is_available(now),
                full: s.limits.check(client_ip).is_err(),
                tried: tried.get(i).copied().unwrap_or(false),
                active: s.limits.active(),
                rt_us: s.rt_us(),
            })
            .collect();
        let index = selector.pick(&candidates, client_ip, &self.server_texts)?;
        let server = self.servers[index].clone();
        // Cannot fail: `check` passed under this same lock and releases only make room.
        let permit = server.limits.try_acquire(client_ip).ok()?;
        Some(Chosen {
            index,
            server,
            permit,
        })
    }
}

/// One generation of runtime state for one config snapshot.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub rules: Vec<RuleRuntime>,
    /// Listen address → (rule index, listen index).
    pub by_listen: HashMap<SocketAddr, (usize, usize)>,
}

impl Runtime {
    pub fn new(config: Arc<Config>) -> Self {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| RuleRuntime::new(i, r))
            .collect();
        Self::assemble(config, rules)
    }

    /// The runtime for a reloaded config, keeping the state of kept rules and entries.
    pub fn reloaded(old: &Runtime, config: Arc<Config>) -> Self {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(
                |(i, r)| match old.config.rules.iter().position(|o| o.id == r.id) {
                    Some(oi) => RuleRuntime::reloaded(i, &old.config.rules[oi], &old.rules[oi], r),
                    None => RuleRuntime::new(i, r),
                },
            )
            .collect();
        Self::assemble(config, rules)
    }

    fn assemble(config: Arc<Config>, rules: Vec<RuleRuntime>) -> Self {
        let by_listen = config
            .listeners()
            .map(|(ri, li, l)| (l.addr, (ri, li)))
            .collect();
        Runtime {
            config,
            rules,
            by_listen,
        }
    }

    /// Every server entry (rules then servers, config order) whose address is `ip:port`.
    pub fn servers_at(
        &self,
        ip: IpAddr,
        port: u16,
    ) -> impl Iterator<Item = (&Rule, &Arc<ServerRuntime>)> {
        self.config
            .rules
            .iter()
            .zip(&self.rules)
            .flat_map(|(rule, rr)| rr.servers.iter().map(move |s| (rule, s)))
            .filter(move |(_, s)| s.entry.addr.ip() == ip && s.entry.addr.port() == port)
    }

    /// Applies due isolation transitions and returns the (rule id, server, new state) that changed,
    /// so a timer can log them on time.
    pub fn advance_isolation(&self, now: Now) -> Vec<(String, String, &'static str)> {
        let mut changed = Vec::new();
        for (rule, rr) in self.config.rules.iter().zip(&self.rules) {
            for s in &rr.servers {
                let mut iso = lock(&s.isolation);
                iso.advance(now);
                // Fixed: also report a transition another reader applied first (see
                // `Isolation::take_unreported`); before, such transitions were never logged.
                if iso.take_unreported() {
                    changed.push((rule.id.clone(), s.text.clone(), iso.state_name(now)));
                }
            }
        }
        changed
    }

    /// Counters of every rule and server for `show stats` (SPEC.md §9.5).
    pub fn stats(&self, now: Now) -> Vec<RuleStats> {
        self.config
            .rules
            .iter()
            .zip(&self.rules)
            .map(|(rule, rr)| RuleStats {
                id: rule.id.clone(),
                alg: rule.alg.as_str(),
                active: rr.counters.active.load(Relaxed),
                total: rr.counters.total.load(Relaxed),
                refused: rr.counters.refused.load(Relaxed),
                bytes_in: rr.counters.bytes_in.load(Relaxed),
                bytes_out: rr.counters.bytes_out.load(Relaxed),
                servers: rr
                    .servers
                    .iter()
                    .map(|s| ServerStats {
                        addr: s.entry.addr,
                        state: s.state_name(now),
                        active: s.limits.active().into(),
                        total: s.total.load(Relaxed),
                        failures: s.failures.load(Relaxed),
                        bytes_in: s.bytes_in.load(Relaxed),
                        bytes_out: s.bytes_out.load(Relaxed),
                        rt_us: s.rt_us(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// State of server `si` of rule `ri` for `show rules json` (SPEC.md §9.6).
    pub fn server_state_view(&self, ri: usize, si: usize, now: Now) -> ServerStateView {
        let s = &self.rules[ri].servers[si];
        let t = s.triple(now);
        ServerStateView {
            hb: t.hb,
            unable: t.unable,
            deadline: t.deadline,
            state: s.state_name(now),
        }
    }

    /// The earliest pending isolation deadline, for the transition timer.
    pub fn next_isolation_deadline(&self) -> Option<std::time::Instant> {
        self.rules
            .iter()
            .flat_map(|r| r.servers.iter())
            .filter_map(|s| lock(&s.isolation).next_deadline())
            .min()
    }
}
