//! The XDP guard (`--xdp auto|off|generic|native` [ext]): an XDP program on the interfaces that
//! carry the listen addresses drops connection requests from blocked sources and from sources
//! that no client pattern of the listener's rule allows, before the TCP stack sees them.
//!
//! * [`compile`] and [`tables`]: client patterns → exact kernel tables (pure, tested against
//!   the glob matcher).
//! * [`blocklist`]: the admin port's block list, enforced in user space at admission and
//!   mirrored into the kernel.
//! * [`loader`]: load, write tables, attach (bpf_link), USR2 hand-over of the links.
//!
//! Who holds what: the monitor loads the program and holds the links; the worker it forks
//! shares the maps (block lists, counters) through inherited descriptors. A link is detached
//! by the kernel when its last descriptor closes: at exit of both processes (also when the
//! monitor is killed: the worker follows it), never while the monitor lives (a killed worker
//! leaves the guard in place). Nothing is pinned.

pub mod blocklist;
pub mod compile;
mod error;
pub mod ifaces;
pub mod loader;
pub mod maps;
mod sys;
pub mod tables;

use std::sync::{Arc, Mutex, OnceLock};

pub use blocklist::BlockList;
pub use error::GuardError;
/// Most blocks in force at once (the XDP block maps' size; README).
pub use g6_common::XDP_MAX_BLOCKED;
pub use loader::{AttachMode, Guard, InheritedLink, LINKS_ENV, inherited_links};
pub use maps::{BlockMaps, StatsMap};

use crate::admin::XdpStats;
use crate::config::Config;

/// What `show stats` reports about the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpStatus {
    /// `off`, or an [`AttachMode`]'s name.
    pub mode: &'static str,
    /// Guarded interfaces (`name`, or `name:generic` where native mode was unavailable).
    pub ifaces: Vec<String>,
}

impl XdpStatus {
    pub fn off() -> Self {
        XdpStatus {
            mode: "off",
            ifaces: Vec::new(),
        }
    }

    /// One-line form for the monitor → worker control message.
    pub fn encode(&self) -> String {
        format!("{} {}", self.mode, self.ifaces.join(","))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (mode, ifaces) = text.split_once(' ')?;
        let mode = std::iter::once("off")
            .chain(AttachMode::ALL.map(AttachMode::as_str))
            .find(|m| *m == mode)?;
        Some(XdpStatus {
            mode,
            ifaces: ifaces
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        })
    }
}

/// The guard state shared by the monitor and its worker.
#[derive(Debug)]
pub struct XdpState {
    pub blocks: Arc<BlockMaps>,
    pub stats: StatsMap,
    pub status: Mutex<XdpStatus>,
}

static STATE: OnceLock<Arc<XdpState>> = OnceLock::new();

/// Makes the guard's maps available to this process and the worker it forks later.
pub fn publish(state: Arc<XdpState>) {
    let _ = STATE.set(state);
}

/// The guard of this G6 generation, if one is loaded.
pub fn state() -> Option<&'static Arc<XdpState>> {
    STATE.get()
}

/// Worker side: the monitor re-attached after a reload.
pub fn set_status(status: XdpStatus) {
    if let Some(s) = state() {
        *crate::runtime::lock(&s.status) = status;
    }
}

/// The `xdp` line/key of `show stats`.
pub fn stats() -> XdpStats {
    match state() {
        None => XdpStats {
            mode: "off",
            ifaces: Vec::new(),
            dropped_blocked: 0,
            dropped_not_allowed: 0,
        },
        Some(s) => {
            let status = crate::runtime::lock(&s.status).clone();
            let (dropped_blocked, dropped_not_allowed) = s.stats.read();
            XdpStats {
                mode: status.mode,
                ifaces: status.ifaces,
                dropped_blocked,
                dropped_not_allowed,
            }
        }
    }
}

/// Start-up (monitor, before forking the worker): loads and attaches the guard unless `mode`
/// is `None` (`--xdp off`). Any failure leaves G6 serving with user-space checks only and
/// says why (WARN). `inherited`: links of a USR2 predecessor to take over.
pub fn start(
    mode: Option<AttachMode>,
    cfg: &Config,
    mut inherited: Vec<InheritedLink>,
) -> Option<Guard> {
    let mode = mode?;
    let mut guard = match Guard::load(mode) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!("xdp guard unavailable: {e}; clients are filtered in user space only");
            return None;
        }
    };
    match guard.apply(cfg, &mut inherited) {
        Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
        Err(e) => {
            tracing::warn!("xdp guard unavailable: {e}; clients are filtered in user space only");
            return None;
        }
    }
    let status = guard.status();
    tracing::info!(
        "xdp guard: {} mode on {}",
        status.mode,
        if status.ifaces.is_empty() {
            "no interface".to_string()
        } else {
            status.ifaces.join(",")
        }
    );
    publish(guard.state().clone());
    Some(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_survives_the_control_message_in_every_mode() {
        let modes = std::iter::once("off").chain(AttachMode::ALL.map(AttachMode::as_str));
        for mode in modes {
            for ifaces in [vec![], vec!["lo".to_string(), "eth0:generic".to_string()]] {
                let status = XdpStatus { mode, ifaces };
                assert_eq!(XdpStatus::decode(&status.encode()), Some(status));
            }
        }
        assert_eq!(XdpStatus::decode("bogus lo"), None);
    }
}
