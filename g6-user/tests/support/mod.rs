//! Shared support library for g6-user's integration tests.
//!
//! Every test file does `mod support;` and uses what it needs (hence the module-level
//! `allow`s). Rules this library follows, and that tests built on it should follow too:
//! real loopback sockets and real processes, port 0 or pre-bound sockets instead of fixed
//! ports, every blocking operation bounded by a timeout, and waiting only through
//! [`wait::wait_until`] / [`wait::wait_for`] (never a bare sleep).
//!
//! * [`data`]: deterministic byte streams and chunking-independent checksums.
//! * [`wait`]: `wait_until` / `wait_for` and the shared timeouts.
//! * [`backends`]: threaded test servers (identify, echo, sink, generator, speak-first,
//!   accept-no-read, close-on-accept) with per-connection records; [`controlled`]: a server
//!   driven by hand; [`dead_ends`]: `NeverAccept` and `RefusedAddr`.
//! * [`client`]: bounded connects, checked transfers, `expect_refused`, the admin client.
//! * [`g6proc`]: `PreBound` listen sockets and `G6Proc`, the running agent.
//! * [`netns`]: network namespaces and veth pairs (198.18.0.0/15) for multi-host tests.
#![allow(dead_code, unused_imports)]

pub mod backends;
pub mod client;
pub mod controlled;
pub mod data;
pub mod dead_ends;
pub mod g6proc;
mod net;
pub mod netns;
pub mod wait;

pub use backends::{Backend, Behaviour, ConnRecord};
pub use client::{
    AdminConn, admin_cmd, check_refused, connect, connect_identify, download_checked, echo_checked,
    echo_checked_on, expect_refused, identify, read_line, read_until_end, reset, try_connect,
    upload_checked,
};
pub use controlled::{Controlled, ControlledConn};
pub use data::{Checksum, DataGen, Digest};
pub use dead_ends::{NeverAccept, RefusedAddr};
pub use g6proc::{G6Proc, PreBound, data_paths};
pub use net::End;
pub use wait::{IO_TIMEOUT, WAIT_TIMEOUT, wait_for, wait_until};
