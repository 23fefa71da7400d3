//! Exact connection counters (SPEC.md §5.2) and the process-wide session-slot pool (`-s N`,
//! SPEC.md §2), both handed out as RAII permits.
//!
//! A count is taken only by a successful `try_acquire` and given back only by dropping the
//! permit it returned, so no error path can leak or double-release a count (the pingora
//! `Inflight` guard shape, made exact). Permits are `Send + Sync`: a connection may be
//! admitted on one thread and torn down on another.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::config::Limits;

/// Which limit refused a connection (checked in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum LimitExceeded {
    #[error("max_connections reached")]
    MaxConnections,
    #[error("max_ip reached")]
    MaxIp,
    #[error("max_connections_per_ip reached")]
    MaxConnectionsPerIp,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    /// Only IPs with at least one connection: `len()` is the distinct-IP count for `max_ip`.
    per_ip: HashMap<IpAddr, u32>,
}

/// The counters of one client or server entry.
#[derive(Debug)]
pub struct LimitTracker {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// 0 means unlimited; mapping it to the type's maximum also keeps every `+= 1` below from
/// overflowing, because a full counter is refused like any other limit.
fn cap(limit: u32) -> u32 {
    if limit == 0 { u32::MAX } else { limit }
}

impl LimitTracker {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The critical sections cannot panic, but if a panic ever poisoned the lock the counts are
    /// still consistent (each update is a few plain stores), and `Permit::drop` must not panic.
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether connections are counted per IP: only a per-IP limit needs it, and without
    /// one an entry's connections cost no hashing of the client's address.
    fn counts_ips(&self) -> bool {
        self.limits.max_ip != 0 || self.limits.max_connections_per_ip != 0
    }

    /// `ips`: distinct IPs counted; `current`: connections counted for the client's IP.
    fn admit(&self, total: u32, ips: usize, current: u32) -> Result<(), LimitExceeded> {
        if total >= cap(self.limits.max_connections) {
            return Err(LimitExceeded::MaxConnections);
        }
        if current == 0 && ips >= cap(self.limits.max_ip) as usize {
            return Err(LimitExceeded::MaxIp);
        }
        if current >= cap(self.limits.max_connections_per_ip) {
            return Err(LimitExceeded::MaxConnectionsPerIp);
        }
        Ok(())
    }

    /// Would a new connection from `ip` be admitted now? (Servers use this to decide "full"
    /// without taking a count; the answer may be stale by the time of `try_acquire`.)
    pub fn check(&self, ip: IpAddr) -> Result<(), LimitExceeded> {
        let counts = self.lock();
        let current = counts.per_ip.get(&ip).copied().unwrap_or(0);
        self.admit(counts.total, counts.per_ip.len(), current)
    }

    /// Check and count atomically; the count is held until the permit is dropped. The IP
    /// is hashed once (this runs for every connection): the checks of `admit` on its entry.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, LimitExceeded> {
        let mut guard = self.lock();
        let Counts { total, per_ip } = &mut *guard;
        if self.counts_ips() {
            let ips = per_ip.len();
            let entry = per_ip.entry(ip);
            let current = match &entry {
                Entry::Occupied(n) => *n.get(),
                Entry::Vacant(_) => 0,
            };
            self.admit(*total, ips, current)?;
            *entry.or_insert(0) += 1;
        } else {
            self.admit(*total, 0, 0)?;
        }
        *total += 1;
        Ok(Permit {
            tracker: Arc::clone(self),
            ip,
        })
    }

    /// Current connections of the entry.
    pub fn active(&self) -> u32 {
        self.lock().total
    }

    /// Distinct client IPs with at least one connection (counted only under a per-IP limit).
    pub fn distinct_ips(&self) -> u32 {
        // Bounded by `total`, a u32.
        u32::try_from(self.lock().per_ip.len()).unwrap_or(u32::MAX)
    }

    /// Connections from `ip` (counted only under a per-IP limit).
    pub fn active_for(&self, ip: IpAddr) -> u32 {
        self.lock().per_ip.get(&ip).copied().unwrap_or(0)
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.lock();
        // A permit exists only for a counted connection, so both counts are >= 1 here.
        counts.total = counts.total.saturating_sub(1);
        if !self.counts_ips() {
            return;
        }
        if let Entry::Occupied(mut n) = counts.per_ip.entry(ip) {
            *n.get_mut() = n.get().saturating_sub(1);
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

/// One counted connection; dropping it releases the count exactly once.
#[derive(Debug)]
#[must_use = "dropping the permit releases the connection count at once"]
pub struct Permit {
    tracker: Arc<LimitTracker>,
    ip: IpAddr,
}

impl Permit {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn tracker(&self) -> &Arc<LimitTracker> {
        &self.tracker
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.tracker.release(self.ip);
    }
}

/// Process-wide session slots: listener 1, admin connection 1, proxied connection 2.
#[derive(Debug)]
pub struct SlotPool {
    /// `None` = unlimited (no `-s`); slots are still counted for statistics.
    capacity: Option<u64>,
    in_use: AtomicU64,
}

impl SlotPool {
    pub fn new(capacity: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            in_use: AtomicU64::new(0),
        })
    }

    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// Take `n` slots at once, or none (no partial grant).
    pub fn try_acquire(self: &Arc<Self>, n: u64) -> Option<SlotPermit> {
        let limit = self.capacity.unwrap_or(u64::MAX);
        // Relaxed is enough: the counter guards no other memory, and read-modify-write
        // operations on one atomic are totally ordered, which is all exactness needs.
        self.in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&next| next <= limit)
            })
            .ok()
            .map(|_| SlotPermit {
                pool: Arc::clone(self),
                n,
            })
    }

    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// `n` session slots; dropping it returns them exactly once.
#[derive(Debug)]
#[must_use = "dropping the permit frees the slots at once"]
pub struct SlotPermit {
    pool: Arc<SlotPool>,
    n: u64,
}

impl SlotPermit {
    pub fn slots(&self) -> u64 {
        self.n
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(self.n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::thread;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn limits(c: u32, i: u32, p: u32) -> Limits {
        Limits {
            max_connections: c,
            max_ip: i,
            max_connections_per_ip: p,
        }
    }

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = {
        assert_send_sync::<Permit>();
        assert_send_sync::<SlotPermit>();
    };

    #[test]
    fn unlimited_admits_and_counts() {
        let t = LimitTracker::new(Limits::default());
        let permits: Vec<_> = (0..100)
            .map(|i| t.try_acquire(ip(i % 7)).unwrap())
            .collect();
        // No per-IP limit: only the total is counted, no address is hashed.
        assert_eq!(
            (t.active(), t.distinct_ips(), t.active_for(ip(0))),
            (100, 0, 0)
        );
        drop(permits);
        assert_eq!(
            (t.active(), t.distinct_ips(), t.active_for(ip(0))),
            (0, 0, 0)
        );
    }

    #[test]
    fn max_connections_and_release() {
        let t = LimitTracker::new(limits(2, 0, 0));
        let a = t.try_acquire(ip(1)).unwrap();
        let _b = t.try_acquire(ip(2)).unwrap();
        assert_eq!(
            t.try_acquire(ip(3)).unwrap_err(),
            LimitExceeded::MaxConnections
        );
        assert_eq!(t.check(ip(1)), Err(LimitExceeded::MaxConnections));
        drop(a);
        assert_eq!(t.check(ip(3)), Ok(()));
        let _c = t.try_acquire(ip(3)).unwrap();
        assert_eq!(t.active(), 2);
    }

    #[test]
    fn max_ip_only_for_new_ips() {
        let t = LimitTracker::new(limits(0, 2, 0));
        let a = t.try_acquire(ip(1)).unwrap();
        let _b = t.try_acquire(ip(2)).unwrap();
        assert_eq!(t.try_acquire(ip(3)).unwrap_err(), LimitExceeded::MaxIp);
        // Known IPs are still admitted.
        let a2 = t.try_acquire(ip(1)).unwrap();
        drop(a);
        assert_eq!(
            t.check(ip(3)),
            Err(LimitExceeded::MaxIp),
            "ip 1 still has a connection"
        );
        drop(a2);
        assert_eq!(t.distinct_ips(), 1);
        let _c = t.try_acquire(ip(3)).unwrap();
    }

    #[test]
    fn max_connections_per_ip_and_release() {
        let t = LimitTracker::new(limits(0, 0, 2));
        let a = t.try_acquire(ip(1)).unwrap();
        let _b = t.try_acquire(ip(1)).unwrap();
        assert_eq!(
            t.try_acquire(ip(1)).unwrap_err(),
            LimitExceeded::MaxConnectionsPerIp
        );
        let _other = t.try_acquire(ip(2)).unwrap();
        drop(a);
        let _c = t.try_acquire(ip(1)).unwrap();
        assert_eq!(t.active_for(ip(1)), 2);
    }

    #[test]
    fn check_order_is_total_then_ip_then_per_ip() {
        let t = LimitTracker::new(limits(2, 1, 1));
        let _a = t.try_acquire(ip(1)).unwrap();
        assert_eq!(t.check(ip(2)), Err(LimitExceeded::MaxIp));
        assert_eq!(t.check(ip(1)), Err(LimitExceeded::MaxConnectionsPerIp));
        let t = LimitTracker::new(limits(1, 1, 1));
        let _a = t.try_acquire(ip(1)).unwrap();
        assert_eq!(t.check(ip(2)), Err(LimitExceeded::MaxConnections));
        assert_eq!(t.check(ip(1)), Err(LimitExceeded::MaxConnections));
    }

    #[test]
    fn ipv4_and_ipv6_are_distinct() {
        let t = LimitTracker::new(limits(0, 0, 1));
        let _a = t.try_acquire(ip(1)).unwrap();
        let v6 = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let _b = t.try_acquire(v6).unwrap();
        let _c = t.try_acquire(IpAddr::V6(Ipv6Addr::LOCALHOST)).unwrap();
        assert_eq!(t.distinct_ips(), 3);
    }

    #[test]
    fn permit_moved_across_threads() {
        let t = LimitTracker::new(limits(1, 0, 0));
        let p = t.try_acquire(ip(1)).unwrap();
        assert_eq!(p.ip(), ip(1));
        let t2 = Arc::clone(p.tracker());
        thread::spawn(move || {
            assert_eq!(t2.active(), 1);
            drop(p);
        })
        .join()
        .unwrap();
        assert_eq!(t.active(), 0);
        assert!(t.try_acquire(ip(2)).is_ok());
    }

    #[test]
    fn threads_hammering_stay_exact() {
        let t = LimitTracker::new(limits(50, 6, 10));
        let pool = SlotPool::new(Some(64));
        thread::scope(|s| {
            for th in 0..8u8 {
                let (t, pool) = (&t, &pool);
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..5000u32 {
                        let addr = ip(((u32::from(th) * 3 + i) % 9) as u8);
                        if let Ok(p) = t.try_acquire(addr) {
                            held.push((p, pool.try_acquire(2)));
                        }
                        // Limits are never exceeded, whatever the interleaving.
                        assert!(t.active() <= 50 && t.distinct_ips() <= 6);
                        assert!(t.active_for(addr) <= 10 && pool.in_use() <= 64);
                        if !held.is_empty() && (i % 3 == 0 || held.len() > 12) {
                            drop(held.swap_remove(i as usize % held.len()));
                        }
                    }
                });
            }
        });
        assert_eq!((t.active(), t.distinct_ips(), pool.in_use()), (0, 0, 0));
    }

    #[test]
    fn slot_pool_capacity_and_release() {
        let pool = SlotPool::new(Some(3));
        let listener = pool.try_acquire(1).unwrap();
        let session = pool.try_acquire(2).unwrap();
        assert_eq!((pool.in_use(), session.slots()), (3, 2));
        assert!(pool.try_acquire(1).is_none());
        drop(listener);
        assert!(pool.try_acquire(2).is_none(), "no partial grant");
        let admin = pool.try_acquire(1).unwrap();
        drop((session, admin));
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn slot_pool_unlimited() {
        let pool = SlotPool::new(None);
        let permits: Vec<_> = (0..1000).map(|_| pool.try_acquire(2).unwrap()).collect();
        assert_eq!((pool.in_use(), pool.capacity()), (2000, None));
        drop(permits);
        assert_eq!(pool.in_use(), 0);
        assert!(pool.try_acquire(u64::MAX).is_some(), "released at once");
        let _one = pool.try_acquire(1).unwrap();
        assert!(pool.try_acquire(u64::MAX).is_none(), "no overflow");
    }

    proptest! {
        /// Any acquire/release sequence matches a naive model and ends at zero.
        #[test]
        fn matches_model(
            lim in (0u32..4, 0u32..4, 0u32..4),
            ops in prop::collection::vec(
                (any::<bool>(), 0u8..5, any::<prop::sample::Index>()),
                0..200,
            ),
        ) {
            let t = LimitTracker::new(limits(lim.0, lim.1, lim.2));
            let mut held: Vec<Permit> = Vec::new();
            for (acquire, who, pick) in ops {
                if acquire || held.is_empty() {
                    let n = held.iter().filter(|p| p.ip() == ip(who)).count() as u32;
                    let distinct: std::collections::HashSet<_> =
                        held.iter().map(|p| p.ip()).collect();
                    let expect = if lim.0 != 0 && held.len() as u32 >= lim.0 {
                        Err(LimitExceeded::MaxConnections)
                    } else if lim.1 != 0 && n == 0 && distinct.len() as u32 >= lim.1 {
                        Err(LimitExceeded::MaxIp)
                    } else if lim.2 != 0 && n >= lim.2 {
                        Err(LimitExceeded::MaxConnectionsPerIp)
                    } else {
                        Ok(())
                    };
                    prop_assert_eq!(t.check(ip(who)), expect);
                    match t.try_acquire(ip(who)) {
                        Ok(p) => { prop_assert!(expect.is_ok()); held.push(p) }
                        Err(e) => prop_assert_eq!(Err(e), expect),
                    }
                } else {
                    drop(held.swap_remove(pick.index(held.len())));
                }
                prop_assert_eq!(t.active() as usize, held.len());
                let distinct: std::collections::HashSet<_> = held.iter().map(|p| p.ip()).collect();
                let counted = if lim.1 != 0 || lim.2 != 0 { distinct.len() } else { 0 };
                prop_assert_eq!(t.distinct_ips() as usize, counted);
            }
            drop(held);
            prop_assert_eq!((t.active(), t.distinct_ips()), (0, 0));
        }
    }
}
