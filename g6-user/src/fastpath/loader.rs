//! Loading the embedded eBPF object and attaching the verdict to the sockhash.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockHash},
    programs::SkSkb,
};
use g6_common::{ConnState, MAP_BUDGET, MAP_CONNS, MAP_PEERS, MAP_SOCKS, PROG_VERDICT};

use super::FastPathError;

/// The loaded fast path: the verdict program attached to `G6_SOCKS`, and the maps the agent
/// drives. Nothing is pinned: everything lives as long as this value (sockets still in the map
/// when it is dropped simply revert to plain TCP). `Send + Sync`; map updates are serialised
/// by locks because aya needs `&mut` for them.
pub struct FastPath {
    pub(super) socks: Mutex<SockHash<MapData, u64>>,
    pub(super) peers: RwLock<HashMap<MapData, u64, u64>>,
    pub(super) budget: RwLock<HashMap<MapData, u64, u64>>,
    pub(super) conns: RwLock<HashMap<MapData, u64, ConnState>>,
    /// Owns the program and its attachment to `socks`; dropped last.
    _ebpf: Mutex<Ebpf>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath").finish_non_exhaustive()
    }
}

impl FastPath {
    /// Raises RLIMIT_MEMLOCK (kernels before 5.11 charge maps to it), loads the embedded
    /// object, attaches `g6_verdict` to `G6_SOCKS`. The error says why it is unavailable
    /// (no object, EPERM, verifier log, ...).
    pub fn load() -> Result<FastPath, FastPathError> {
        if !super::object_embedded() {
            return Err(FastPathError::NoObject);
        }
        raise_memlock();
        let mut ebpf = super::load_object().map_err(FastPathError::Load)?;

        let socks: SockHash<MapData, u64> = take(&mut ebpf, MAP_SOCKS)?;
        let peers: HashMap<MapData, u64, u64> = take(&mut ebpf, MAP_PEERS)?;
        let budget: HashMap<MapData, u64, u64> = take(&mut ebpf, MAP_BUDGET)?;
        let conns: HashMap<MapData, u64, ConnState> = take(&mut ebpf, MAP_CONNS)?;

        let prog_err = |err| FastPathError::Program {
            prog: PROG_VERDICT,
            err,
        };
        let prog: &mut SkSkb = ebpf
            .program_mut(PROG_VERDICT)
            .ok_or(FastPathError::Missing("program g6_verdict"))?
            .try_into()
            .map_err(prog_err)?;
        prog.load().map_err(prog_err)?;
        prog.attach(socks.fd()).map_err(prog_err)?;

        Ok(FastPath {
            socks: Mutex::new(socks),
            peers: RwLock::new(peers),
            budget: RwLock::new(budget),
            conns: RwLock::new(conns),
            _ebpf: Mutex::new(ebpf),
        })
    }

    // Lock helpers: a panic while holding a lock cannot leave a map half-updated (each update
    // is one syscall), so poisoning is ignored rather than propagated as a panic.
    pub(super) fn socks(&self) -> MutexGuard<'_, SockHash<MapData, u64>> {
        self.socks.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn peers_mut(&self) -> RwLockWriteGuard<'_, HashMap<MapData, u64, u64>> {
        self.peers.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn budget_mut(&self) -> RwLockWriteGuard<'_, HashMap<MapData, u64, u64>> {
        self.budget.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn conns(&self) -> RwLockReadGuard<'_, HashMap<MapData, u64, ConnState>> {
        self.conns.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn conns_mut(&self) -> RwLockWriteGuard<'_, HashMap<MapData, u64, ConnState>> {
        self.conns.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, FastPathError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(FastPathError::Missing(name))?;
    M::try_from(map).map_err(|err| FastPathError::Map {
        map: name,
        op: "open",
        key: 0,
        err,
    })
}

/// Best effort: on 5.11+ maps are charged to the memory cgroup and the limit is irrelevant.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid resource and pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "fastpath: cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
