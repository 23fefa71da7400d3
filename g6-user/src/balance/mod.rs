//! Server selection (SPEC.md §6), pure: the caller snapshots the rule's servers for one client
//! (`Candidate`s), `Selector::pick` chooses one and moves the rule's rotation pointer. The
//! failover loop of §5.3 (mark `tried`, pick again; HS refuses instead) stays with the caller.
//!
//! Layout: `scan.rs` holds the pointer-driven algorithms (MS, RR, LC, RT), `hash.rs` the
//! rendezvous hash (HS); RD is the few lines below.

mod hash;
mod scan;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::Algorithm;

pub use hash::hash_score;

/// One server entry of the rule as seen by one client at pick time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Candidate {
    /// Available per the isolation state (SPEC.md §7).
    pub available: bool,
    /// At one of its limits for this client (SPEC.md §5.2): skipped, no state change.
    pub full: bool,
    /// Already failed for this client (SPEC.md §5.3).
    pub tried: bool,
    /// Established + connecting connections of the entry (LC).
    pub active: u32,
    /// Smoothed response time in µs; `None` = no sample yet (RT).
    pub rt_us: Option<u64>,
}

impl Candidate {
    pub fn eligible(&self) -> bool {
        self.available && !self.full && !self.tried
    }
}

/// Per-rule selection state: the algorithm, the rotation pointer `p` and RD's PRNG.
#[derive(Debug, Clone)]
pub struct Selector {
    alg: Algorithm,
    p: usize,
    rng: SmallRng,
}

impl Selector {
    /// RD draws from an OS-seeded PRNG (SPEC.md §6).
    pub fn new(alg: Algorithm) -> Self {
        Self {
            alg,
            p: 0,
            rng: SmallRng::from_os_rng(),
        }
    }

    /// Reproducible RD sequence (tests).
    pub fn with_seed(alg: Algorithm, seed: u64) -> Self {
        Self {
            alg,
            p: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The rotation pointer (an index into the server list; RD and HS never use it).
    pub fn pointer(&self) -> usize {
        self.p
    }

    /// Choose a server index for this client, updating `p`; `None` = refuse the client.
    ///
    /// `server_texts[i]` is server `i` as `show rules` prints it (`ip:port`, `[ip6]:port`);
    /// only HS reads it, and HS refuses if its length differs from `candidates`.
    pub fn pick(
        &mut self,
        candidates: &[Candidate],
        client_ip: IpAddr,
        server_texts: &[String],
    ) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        // A reload may shrink the list under a kept pointer; scanning from `p mod n` keeps
        // the rotation going instead of restarting it.
        let start = self.p % candidates.len();
        let (chosen, p) = match self.alg {
            Algorithm::Admin => return None,
            Algorithm::MasterStandby => scan::master_standby(candidates, start)?,
            Algorithm::RoundRobin => scan::round_robin(candidates, start)?,
            Algorithm::LeastConnections => scan::least_connections(candidates, start)?,
            Algorithm::ResponseTime => scan::response_time(candidates, start)?,
            Algorithm::Random => return self.random(candidates),
            Algorithm::Hash => return hash::target(candidates, client_ip, server_texts),
        };
        self.p = p;
        Some(chosen)
    }

    /// Uniform among eligible servers; the list is never reordered.
    fn random(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let eligible = candidates.iter().filter(|c| c.eligible()).count();
        if eligible == 0 {
            return None;
        }
        let k = self.rng.random_range(0..eligible);
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eligible())
            .nth(k)
            .map(|(i, _)| i)
    }
}

/// Response-time smoothing of SPEC.md §6: the first sample sets it, then
/// `rt += (sample − rt) / 4` with signed arithmetic (division truncates toward zero), written
/// as two unsigned branches so nothing can overflow.
pub fn rt_update(old: Option<u64>, sample_us: u64) -> u64 {
    match old {
        None => sample_us,
        Some(rt) if sample_us >= rt => rt + (sample_us - rt) / 4,
        Some(rt) => rt - (rt - sample_us) / 4,
    }
}
