//! Runtime state built from a config snapshot: per rule its rotation pointer and counters, per
//! client entry and server entry their limit trackers, per server its isolation state, counters
//! and response time. Sessions hold the `Arc<Runtime>` they started with, so a reload never
//! changes the settings of a session in flight.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

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

#[derive(Debug)]
pub struct ServerRuntime {
    pub entry: ServerEntry,
    /// `ip:port` as `show rules` prints it (also the HS hash input).
    pub text: String,
    pub isolation: Mutex<Isolation>,
    pub limits: Arc<LimitTracker>,
    pub total: AtomicU64,
    pub failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    rt_us: Mutex<Option<u64>>,
}

impl ServerRuntime {
    fn new(entry: &ServerEntry) -> Self {
        ServerRuntime {
            text: fmt_addr(&entry.addr),
            isolation: Mutex::new(Isolation::loaded(entry.heartbeat)),
            limits: LimitTracker::new(entry.limits),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            rt_us: Mutex::new(None),
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
    pub selector: Mutex<Selector>,
    pub clients: Vec<Arc<LimitTracker>>,
    pub servers: Vec<Arc<ServerRuntime>>,
    pub server_texts: Vec<String>,
    pub counters: RuleCounters,
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
            selector: Mutex::new(Selector::new(rule.alg)),
            clients: rule
                .clients
                .iter()
                .map(|c| LimitTracker::new(c.limits))
                .collect(),
            server_texts: servers.iter().map(|s| s.text.clone()).collect(),
            servers,
            counters: RuleCounters::default(),
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
                if iso.advance(now) {
                    changed.push((rule.id.clone(), s.text.clone(), iso.state_name(now)));
                }
            }
        }
        changed
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
