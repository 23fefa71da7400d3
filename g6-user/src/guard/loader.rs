//! Loading the XDP guard, writing its tables, attaching it to interfaces (bpf_link, never
//! pinned: the attachment lasts exactly while a process of this G6 holds the link descriptor)
//! and handing the links to a USR2 successor.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use g6_common::{
    MAP_XDP_BLOCK4, MAP_XDP_BLOCK6, MAP_XDP_LISTEN4, MAP_XDP_LISTEN6, MAP_XDP_PATTERNS,
    MAP_XDP_PORTS, MAP_XDP_STATS, PROG_XDP_GUARD, XDP_MAX_PATTERNS, XDP_MAX_PORT_SETS,
    XDP_PORT_WORDS, XDP_PORTS_ANY, XdpListen4, XdpListen6, XdpListener, XdpPattern,
};

use super::ifaces::{self, Iface};
use super::maps::{BlockMaps, StatsMap};
use super::sys;
use super::tables::{self, Tables};
use super::{GuardError, XdpState, XdpStatus};
use crate::config::Config;

/// How to attach: generic (SKB) mode; native (driver) mode where the driver supports it, else
/// generic; or (auto) native mode where the driver supports it and nothing elsewhere.
///
/// Why auto leaves generic-only interfaces alone: generic XDP runs on socket buffers, and the
/// kernel copies every cloned or paged one (every TCP data segment on `lo`, every GRO'd
/// segment on a NIC) into a fresh linear buffer before the program sees it, for all traffic
/// of the host on that interface. On `lo` that copy also defeats splice's zero copy
/// (measured: one proxied stream 9.9 -> 6.6 Gbit/s, the agent's CPU per GB 0.5 -> 0.9 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Auto,
    Generic,
    Native,
}

impl AttachMode {
    pub const ALL: [AttachMode; 3] = [AttachMode::Auto, AttachMode::Generic, AttachMode::Native];

    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Generic => "generic",
            AttachMode::Native => "native",
        }
    }
}

/// A link inherited from a USR2 predecessor (`G6_XDP_LINKS`).
#[derive(Debug)]
pub struct InheritedLink {
    pub ifindex: u32,
    pub fd: OwnedFd,
}

#[derive(Debug)]
struct Attached {
    iface: Iface,
    native: bool,
    link: OwnedFd,
}

/// The loaded guard. Owned by the monitor; its worker shares the maps (see [`XdpState`]).
pub struct Guard {
    ebpf: Ebpf,
    listen4: HashMap<MapData, XdpListen4, XdpListener>,
    listen6: HashMap<MapData, XdpListen6, XdpListener>,
    patterns: Array<MapData, XdpPattern>,
    ports: Array<MapData, u64>,
    state: Arc<XdpState>,
    mode: AttachMode,
    links: Vec<Attached>,
    /// Interfaces `auto` left unguarded (no native hook), already said in the log.
    skipped: std::collections::HashSet<u32>,
    /// Which half of the pattern and port arrays the listeners use now; a reload writes the
    /// other half before switching, so no packet ever sees a half-written table.
    region: u32,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("mode", &self.mode)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(aya::maps::MapError) -> GuardError {
    move |e| GuardError::Map {
        map,
        op,
        err: GuardError::chain(&e),
    }
}

fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, GuardError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(GuardError::Missing(name))?;
    M::try_from(map).map_err(map_err(name, "open"))
}

impl Guard {
    /// Loads the object and the XDP program (the verifier runs here); attaches nothing.
    pub fn load(mode: AttachMode) -> Result<Guard, GuardError> {
        if !crate::fastpath::object_embedded() {
            return Err(GuardError::NoObject);
        }
        let mut ebpf =
            crate::fastpath::load_object().map_err(|e| GuardError::Load(GuardError::chain(&e)))?;
        let state = Arc::new(XdpState {
            blocks: Arc::new(BlockMaps {
                v4: Mutex::new(take(&mut ebpf, MAP_XDP_BLOCK4)?),
                v6: Mutex::new(take(&mut ebpf, MAP_XDP_BLOCK6)?),
            }),
            stats: StatsMap(Mutex::new(take(&mut ebpf, MAP_XDP_STATS)?)),
            status: Mutex::new(XdpStatus::off()),
        });
        let listen4 = take(&mut ebpf, MAP_XDP_LISTEN4)?;
        let listen6 = take(&mut ebpf, MAP_XDP_LISTEN6)?;
        let patterns = take(&mut ebpf, MAP_XDP_PATTERNS)?;
        let ports = take(&mut ebpf, MAP_XDP_PORTS)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_XDP_GUARD)
            .ok_or(GuardError::Missing("program g6_xdp_guard"))?
            .try_into()
            .map_err(|e| GuardError::Program(GuardError::chain(&e)))?;
        prog.load()
            .map_err(|e| GuardError::Program(GuardError::chain(&e)))?;
        Ok(Guard {
            ebpf,
            listen4,
            listen6,
            patterns,
            ports,
            state,
            mode,
            links: Vec::new(),
            skipped: Default::default(),
            region: 1,
        })
    }

    fn prog(&self) -> Result<&Xdp, GuardError> {
        let p: &Xdp = self
            .ebpf
            .program(PROG_XDP_GUARD)
            .ok_or(GuardError::Missing("program g6_xdp_guard"))?
            .try_into()
            .map_err(|e| GuardError::Program(GuardError::chain(&e)))?;
        Ok(p)
    }

    fn prog_fd(&self) -> Result<BorrowedFd<'_>, GuardError> {
        let fd = self
            .prog()?
            .fd()
            .map_err(|e| GuardError::Program(GuardError::chain(&e)))?;
        Ok(fd.as_fd())
    }

    pub fn state(&self) -> &Arc<XdpState> {
        &self.state
    }

    /// Writes the tables for `cfg`; returns the listen addresses left unfiltered.
    pub fn set_tables(&mut self, cfg: &Config) -> Result<Vec<SocketAddr>, GuardError> {
        let region = 1 - self.region;
        let half_patterns = XDP_MAX_PATTERNS / 2;
        let half_sets = XDP_MAX_PORT_SETS / 2;
        let (pattern_base, set_base) = (region * half_patterns, region * half_sets);
        let t: Tables = tables::build(cfg, half_patterns as usize, half_sets as usize);
        for (i, bits) in t.port_sets.iter().enumerate() {
            let first = (set_base + i as u32) * XDP_PORT_WORDS;
            for (w, word) in bits.iter().enumerate() {
                self.ports
                    .set(first + w as u32, word, 0)
                    .map_err(map_err(MAP_XDP_PORTS, "update"))?;
            }
        }
        for (i, p) in t.patterns.iter().enumerate() {
            let mut p = *p;
            if p.port_set != XDP_PORTS_ANY {
                p.port_set += set_base;
            }
            self.patterns
                .set(pattern_base + i as u32, p, 0)
                .map_err(map_err(MAP_XDP_PATTERNS, "update"))?;
        }
        let rebase = |mut l: XdpListener| {
            l.first += pattern_base;
            l
        };
        for (k, l) in &t.listen4 {
            self.listen4
                .insert(k, rebase(*l), 0)
                .map_err(map_err(MAP_XDP_LISTEN4, "update"))?;
        }
        for (k, l) in &t.listen6 {
            self.listen6
                .insert(k, rebase(*l), 0)
                .map_err(map_err(MAP_XDP_LISTEN6, "update"))?;
        }
        let stale4: Vec<XdpListen4> = self
            .listen4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !t.listen4.iter().any(|(n, _)| n == k))
            .collect();
        for k in stale4 {
            self.listen4
                .remove(&k)
                .map_err(map_err(MAP_XDP_LISTEN4, "delete"))?;
        }
        let stale6: Vec<XdpListen6> = self
            .listen6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !t.listen6.iter().any(|(n, _)| n == k))
            .collect();
        for k in stale6 {
            self.listen6
                .remove(&k)
                .map_err(map_err(MAP_XDP_LISTEN6, "delete"))?;
        }
        self.region = region;
        Ok(t.unfiltered)
    }

    /// Tables for `cfg`, then attachment to the interfaces carrying its listen addresses
    /// (taking over `inherited` links where they match). Returns warnings for the log.
    pub fn apply(
        &mut self,
        cfg: &Config,
        inherited: &mut Vec<InheritedLink>,
    ) -> Result<Vec<String>, GuardError> {
        let mut warnings = Vec::new();
        for a in self.set_tables(cfg)? {
            warnings.push(format!(
                "xdp: the client patterns of {a} cannot be checked exactly in the kernel; \
                 its clients are filtered in user space only"
            ));
        }
        let addrs: Vec<SocketAddr> = cfg.listeners().map(|(_, _, l)| l.addr).collect();
        let wanted = ifaces::for_listeners(&addrs).map_err(GuardError::Interfaces)?;
        warnings.extend(self.attach(&wanted, inherited));
        self.publish_status();
        Ok(warnings)
    }

    fn attach(&mut self, wanted: &[Iface], inherited: &mut Vec<InheritedLink>) -> Vec<String> {
        let mut warnings = Vec::new();
        // Interfaces no longer wanted: dropping the link detaches (if no one else holds it).
        self.links
            .retain(|a| wanted.iter().any(|w| w.index == a.iface.index));
        for iface in wanted {
            if self.links.iter().any(|a| a.iface.index == iface.index) {
                continue;
            }
            match self.attach_one(iface, inherited) {
                Ok(Some(a)) => self.links.push(a),
                Ok(None) => {
                    // Said once per interface, not at every HUP.
                    if self.skipped.insert(iface.index) {
                        tracing::info!(
                            "xdp: {} has no native XDP hook; not guarded (generic XDP would \
                             copy every segment it receives; --xdp generic forces it)",
                            iface.name
                        );
                    }
                }
                Err(e) => warnings.push(format!("xdp: {e}; that interface is not guarded")),
            }
        }
        warnings
    }

    fn attach_one(
        &self,
        iface: &Iface,
        inherited: &mut Vec<InheritedLink>,
    ) -> Result<Option<Attached>, GuardError> {
        let err = |err| GuardError::Attach {
            iface: iface.name.clone(),
            err,
        };
        let prog = self.prog_fd()?;
        if let Some(i) = inherited.iter().position(|l| l.ifindex == iface.index) {
            let link = inherited.swap_remove(i).fd;
            // The predecessor's link keeps its mode; swapping the program is atomic.
            sys::link_update(link.as_fd(), prog).map_err(err)?;
            return Ok(Some(Attached {
                iface: iface.clone(),
                native: self.mode != AttachMode::Generic,
                link,
            }));
        }
        if self.mode != AttachMode::Generic {
            match sys::xdp_link_create(prog, iface.index, sys::XDP_FLAGS_DRV_MODE) {
                Ok(link) => {
                    return Ok(Some(Attached {
                        iface: iface.clone(),
                        native: true,
                        link,
                    }));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(err(e)),
                // Only "this driver has no native hook" means skip; anything else (another
                // program, MTU too large for XDP, no memory) is a failure to say at WARN.
                Err(e) if self.mode == AttachMode::Auto => {
                    let no_hook = e.raw_os_error() == Some(libc::EOPNOTSUPP);
                    return if no_hook { Ok(None) } else { Err(err(e)) };
                }
                Err(e) => tracing::warn!(
                    "xdp: native mode on {} unavailable ({e}); using generic mode there",
                    iface.name
                ),
            }
        }
        let link = sys::xdp_link_create(prog, iface.index, sys::XDP_FLAGS_SKB_MODE).map_err(err)?;
        Ok(Some(Attached {
            iface: iface.clone(),
            native: false,
            link,
        }))
    }

    /// After a failed USR2 successor that may already have swapped its program into our
    /// links: put ours back.
    pub fn reclaim(&self) {
        let Ok(prog) = self.prog_fd() else { return };
        for a in &self.links {
            if let Err(e) = sys::link_update(a.link.as_fd(), prog) {
                tracing::error!("xdp: cannot restore the program on {}: {e}", a.iface.name);
            }
        }
    }

    /// `(ifindex, fd)` of every link, for a USR2 successor to inherit.
    pub fn link_fds(&self) -> Vec<(u32, RawFd)> {
        self.links
            .iter()
            .map(|a| (a.iface.index, a.link.as_raw_fd()))
            .collect()
    }

    pub fn status(&self) -> XdpStatus {
        XdpStatus {
            mode: self.mode.as_str(),
            ifaces: self
                .links
                .iter()
                .map(|a| {
                    if a.native || self.mode == AttachMode::Generic {
                        a.iface.name.clone()
                    } else {
                        format!("{}:generic", a.iface.name)
                    }
                })
                .collect(),
        }
    }

    fn publish_status(&self) {
        *crate::runtime::lock(&self.state.status) = self.status();
    }

    /// Runs the program once on `packet` (BPF_PROG_TEST_RUN); returns the XDP action.
    pub fn test_run(&self, packet: &[u8]) -> Result<u32, GuardError> {
        let opts = TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::default()
        };
        self.prog()?
            .test_run(opts)
            .map(|r| r.return_value)
            .map_err(|e| GuardError::Program(GuardError::chain(&e)))
    }
}

/// Parses `G6_XDP_LINKS` (`<ifindex>:<fd>|…`), keeping only descriptors that are XDP links on
/// the interface they claim. Returns the links and warnings for the log.
pub fn inherited_links(text: &str) -> (Vec<InheritedLink>, Vec<String>) {
    use std::os::fd::FromRawFd;
    let mut links = Vec::new();
    let mut warnings = Vec::new();
    for entry in text.split('|').filter(|e| !e.is_empty()) {
        let parsed = entry
            .split_once(':')
            .and_then(|(i, f)| Some((i.parse::<u32>().ok()?, f.parse::<RawFd>().ok()?)));
        let Some((ifindex, fd)) = parsed.filter(|&(_, fd)| fd > 2) else {
            warnings.push(format!("{LINKS_ENV}: ignoring invalid entry '{entry}'"));
            continue;
        };
        // SAFETY: F_GETFD only checks that the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            warnings.push(format!("{LINKS_ENV}: fd {fd} is not open; ignored"));
            continue;
        }
        // SAFETY: open, and handed to us by the predecessor for this purpose.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match sys::xdp_link_ifindex(borrowed) {
            Ok(i) if i == ifindex => {
                // SAFETY: as above; from now on this process owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: fcntl on a descriptor we own.
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
                links.push(InheritedLink { ifindex, fd });
            }
            Ok(i) => warnings.push(format!(
                "{LINKS_ENV}: fd {fd} is an XDP link on interface {i}, not {ifindex}; ignored"
            )),
            Err(e) => warnings.push(format!("{LINKS_ENV}: fd {fd}: {e}; ignored")),
        }
    }
    (links, warnings)
}

/// Environment variable carrying the XDP links to a USR2 successor.
pub const LINKS_ENV: &str = "G6_XDP_LINKS";
