//! The guard maps a worker uses (block lists, drop counters), shared with the monitor that
//! loaded them: the worker is forked after loading, so it holds the same kernel maps.

use std::net::IpAddr;
use std::sync::Mutex;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use g6_common::{XDP_STAT_BLOCKED, XDP_STAT_NOT_ALLOWED};

use crate::runtime::lock;

/// `G6_XDP_BLOCK4` / `G6_XDP_BLOCK6`. Failures are logged, not returned: user space enforces
/// the block list anyway, the maps only make it cheaper.
pub struct BlockMaps {
    pub(super) v4: Mutex<HashMap<MapData, [u8; 4], u64>>,
    pub(super) v6: Mutex<HashMap<MapData, [u8; 16], u64>>,
}

impl std::fmt::Debug for BlockMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockMaps").finish_non_exhaustive()
    }
}

fn missing_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

impl BlockMaps {
    pub fn set(&self, ip: IpAddr, deadline_ns: u64) {
        let r = match ip {
            IpAddr::V4(a) => lock(&self.v4).insert(a.octets(), deadline_ns, 0),
            IpAddr::V6(a) => lock(&self.v6).insert(a.octets(), deadline_ns, 0),
        };
        if let Err(e) = r {
            tracing::warn!(
                "xdp: cannot block {ip} in the kernel ({e}); blocked in user space only"
            );
        }
    }

    pub fn remove(&self, ip: IpAddr) {
        let r = match ip {
            IpAddr::V4(a) => lock(&self.v4).remove(&a.octets()),
            IpAddr::V6(a) => lock(&self.v6).remove(&a.octets()),
        };
        if let Err(e) = missing_ok(r) {
            tracing::warn!("xdp: cannot unblock {ip} in the kernel: {e}");
        }
    }

    pub fn clear(&self) {
        let mut v4 = lock(&self.v4);
        let keys: Vec<[u8; 4]> = v4.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = missing_ok(v4.remove(&k));
        }
        drop(v4);
        let mut v6 = lock(&self.v6);
        let keys: Vec<[u8; 16]> = v6.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = missing_ok(v6.remove(&k));
        }
    }

    /// Number of entries in the kernel maps (tests, diagnostics).
    pub fn kernel_len(&self) -> usize {
        lock(&self.v4).keys().count() + lock(&self.v6).keys().count()
    }
}

/// `G6_XDP_STATS`, summed over CPUs.
pub struct StatsMap(pub(super) Mutex<PerCpuArray<MapData, u64>>);

impl std::fmt::Debug for StatsMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsMap").finish_non_exhaustive()
    }
}

impl StatsMap {
    fn sum(&self, index: u32) -> u64 {
        match lock(&self.0).get(&index, 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(e) => {
                tracing::debug!(
                    "xdp: reading {} counter {index}: {e}",
                    g6_common::MAP_XDP_STATS
                );
                0
            }
        }
    }

    /// (dropped_blocked, dropped_not_allowed).
    pub fn read(&self) -> (u64, u64) {
        (self.sum(XDP_STAT_BLOCKED), self.sum(XDP_STAT_NOT_ALLOWED))
    }
}
