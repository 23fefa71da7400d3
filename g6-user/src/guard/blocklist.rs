//! The block list the admin port manages (`block`, `unblock`, `show blocked`). User space is
//! the source of truth and enforces it at admission (so it works with `--xdp off`); when the
//! XDP guard runs, every change is mirrored into its maps so blocked SYNs never reach the TCP
//! stack. Deadlines are CLOCK_MONOTONIC nanoseconds, the clock of `bpf_ktime_get_ns`, so the
//! kernel expires entries on its own at the same instant user space does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use g6_common::XDP_MAX_BLOCKED;

use super::GuardError;
use super::maps::BlockMaps;
use crate::isolation::Now;

/// One blocked source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// CLOCK_MONOTONIC ns at which the block ends; 0 = until unblocked.
    pub mono_deadline_ns: u64,
    /// The same instant as wall-clock epoch seconds (truncated), 0 = none: what is shown.
    pub epoch_deadline: u64,
}

impl Block {
    fn active(&self, now_ns: u64) -> bool {
        self.mono_deadline_ns == 0 || now_ns < self.mono_deadline_ns
    }
}

/// CLOCK_MONOTONIC in ns.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Debug, Default)]
pub struct BlockList {
    entries: RwLock<BTreeMap<IpAddr, Block>>,
    mirror: RwLock<Option<Arc<BlockMaps>>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl BlockList {
    /// An empty list, mirrored into the guard's maps if this process (or the monitor that
    /// forked it) loaded the guard.
    pub fn for_worker() -> BlockList {
        let list = BlockList::default();
        if let Some(s) = super::state() {
            list.set_mirror(s.blocks.clone());
        }
        list
    }

    /// Mirrors the list into the guard's maps from now on; entries a previous worker left
    /// there are cleared first (runtime state restarts with the worker).
    pub fn set_mirror(&self, maps: Arc<BlockMaps>) {
        maps.clear();
        for (ip, b) in read(&self.entries).iter() {
            maps.set(*ip, b.mono_deadline_ns);
        }
        *write(&self.mirror) = Some(maps);
    }

    /// Blocks `ip` for `secs` seconds (`None` = until unblocked), replacing an earlier block.
    pub fn block(&self, ip: IpAddr, secs: Option<u32>, now: Now) -> Result<Block, GuardError> {
        self.block_at(ip, secs, now, mono_ns())
    }

    /// [`Self::block`] at CLOCK_MONOTONIC `now_ns` (the admin dispatcher's clock).
    pub fn block_at(
        &self,
        ip: IpAddr,
        secs: Option<u32>,
        now: Now,
        now_ns: u64,
    ) -> Result<Block, GuardError> {
        let block = match secs {
            None => Block {
                mono_deadline_ns: 0,
                epoch_deadline: 0,
            },
            Some(s) => Block {
                // Saturating: a simulated clock (fuzzing) may sit near the end of time.
                mono_deadline_ns: now_ns.saturating_add(u64::from(s) * 1_000_000_000),
                epoch_deadline: (now.epoch_ms / 1000).saturating_add(u64::from(s)),
            },
        };
        let mut entries = write(&self.entries);
        if !entries.contains_key(&ip) && entries.len() >= XDP_MAX_BLOCKED as usize {
            self.purge(&mut entries, now_ns);
            if entries.len() >= XDP_MAX_BLOCKED as usize {
                return Err(GuardError::Full(entries.len()));
            }
        }
        entries.insert(ip, block);
        if let Some(m) = read(&self.mirror).as_ref() {
            m.set(ip, block.mono_deadline_ns);
        }
        Ok(block)
    }

    /// Removes `ip`; false if it was not blocked (or its block had expired).
    pub fn unblock(&self, ip: IpAddr) -> bool {
        self.unblock_at(ip, mono_ns())
    }

    /// [`Self::unblock`] at CLOCK_MONOTONIC `now_ns`.
    pub fn unblock_at(&self, ip: IpAddr, now_ns: u64) -> bool {
        let removed = write(&self.entries).remove(&ip);
        if let Some(m) = read(&self.mirror).as_ref() {
            m.remove(ip);
        }
        removed.is_some_and(|b| b.active(now_ns))
    }

    /// Whether a client from `ip` is refused (admission).
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let entries = read(&self.entries);
        !entries.is_empty() && entries.get(&ip).is_some_and(|b| b.active(mono_ns()))
    }

    /// The blocks in force, by address; expired ones are dropped here.
    pub fn list(&self) -> Vec<(IpAddr, Block)> {
        self.list_at(mono_ns())
    }

    /// [`Self::list`] at CLOCK_MONOTONIC `now_ns`.
    pub fn list_at(&self, now_ns: u64) -> Vec<(IpAddr, Block)> {
        let mut entries = write(&self.entries);
        self.purge(&mut entries, now_ns);
        entries.iter().map(|(ip, b)| (*ip, *b)).collect()
    }

    fn purge(&self, entries: &mut BTreeMap<IpAddr, Block>, now_ns: u64) {
        let mirror = read(&self.mirror);
        entries.retain(|ip, b| {
            let keep = b.active(now_ns);
            if !keep && let Some(m) = mirror.as_ref() {
                m.remove(*ip);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_unblock_expire() {
        let l = BlockList::default();
        let a: IpAddr = "198.18.0.9".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let now = Now::now();
        assert!(!l.is_blocked(a));
        l.block(a, None, now).unwrap();
        let timed = l.block(b, Some(60), now).unwrap();
        assert_eq!(timed.epoch_deadline, now.epoch_ms / 1000 + 60);
        assert!(l.is_blocked(a) && l.is_blocked(b));
        assert_eq!(l.list().iter().map(|e| e.0).collect::<Vec<_>>(), vec![a, b]);
        assert!(l.unblock(a));
        assert!(!l.unblock(a), "already gone");
        assert!(!l.is_blocked(a));
        // A block that has ended is neither enforced nor listed.
        write(&l.entries).insert(
            a,
            Block {
                mono_deadline_ns: mono_ns() - 1,
                epoch_deadline: 1,
            },
        );
        assert!(!l.is_blocked(a));
        assert_eq!(l.list().len(), 1);
    }
}
