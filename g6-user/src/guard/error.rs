//! Errors of the XDP guard; each names what failed.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("agent was built without the eBPF object")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(String),
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    #[error("XDP program: {0}")]
    Program(String),
    #[error("eBPF map {map}: {op}: {err}")]
    Map {
        map: &'static str,
        op: &'static str,
        err: String,
    },
    #[error("attaching XDP to {iface}: {err}")]
    Attach { iface: String, err: io::Error },
    #[error("listing interfaces: {0}")]
    Interfaces(io::Error),
    #[error("block list full ({0} entries)")]
    Full(usize),
}

impl GuardError {
    /// Renders an error with its source chain (aya's Display omits the OS error).
    pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(inner) = cur {
            let text = inner.to_string();
            if !s.contains(&text) {
                s.push_str(": ");
                s.push_str(&text);
            }
            cur = inner.source();
        }
        s
    }
}
