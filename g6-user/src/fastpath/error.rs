//! Errors of the fast path. Every variant names who failed; aya's own `Display` omits the OS
//! error, so the whole source chain is rendered into the message.

use std::{error::Error, fmt::Write as _, io, os::fd::RawFd, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The build's reason comes from build.rs (`G6_EBPF_SKIP=1`, toolchain missing, ...).
    #[error("agent was built without the eBPF object ({})", env!("G6_EBPF_MISSING"))]
    NoObject,
    #[error("loading the eBPF object: {}", chain(.0))]
    Load(aya::EbpfError),
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    #[error("eBPF program {prog}: {}", chain(.err))]
    Program {
        prog: &'static str,
        err: aya::programs::ProgramError,
    },
    #[error("eBPF map {map}: {op} key {key}: {}", chain(.err))]
    Map {
        map: &'static str,
        op: &'static str,
        key: u64,
        err: aya::maps::MapError,
    },
    #[error("{op} on fd {fd}: {err}")]
    Socket {
        op: &'static str,
        fd: RawFd,
        err: io::Error,
    },
    #[error("socket {0} is not in the given pair")]
    NotInPair(u64),
    #[error("self-test failed: {0}")]
    SelfTest(String),
    #[error(
        "socket {src}: {backlog} redirected bytes not yet in fd {dst}'s send stream after {timeout:?}"
    )]
    DrainTimeout {
        src: u64,
        dst: RawFd,
        backlog: u64,
        timeout: Duration,
    },
}

impl FastPathError {
    /// True when the kernel refused for lack of privileges (needs CAP_BPF + CAP_NET_ADMIN).
    pub fn is_permission_denied(&self) -> bool {
        let src: &(dyn Error + 'static) = match self {
            FastPathError::Load(e) => e,
            FastPathError::Program { err, .. } => err,
            FastPathError::Map { err, .. } => err,
            FastPathError::Socket { err, .. } => err,
            _ => return false,
        };
        os_error(src) == Some(libc::EPERM)
    }

    pub(crate) fn socket(op: &'static str, fd: RawFd) -> impl FnOnce(io::Error) -> Self {
        move |err| FastPathError::Socket { op, fd, err }
    }
}

/// The first OS error code in an error's source chain.
fn os_error(mut e: &(dyn Error + 'static)) -> Option<i32> {
    loop {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        e = e.source()?;
    }
}

/// `outer: inner: ...`, plus a privilege hint on EPERM.
fn chain(e: &(dyn Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            let _ = write!(s, ": {text}");
        }
        cur = inner.source();
    }
    if os_error(e) == Some(libc::EPERM) {
        s.push_str(" (needs root, or CAP_BPF + CAP_NET_ADMIN)");
    }
    s
}
