//! Process model (SPEC.md §3): a single-threaded monitor that owns the listening sockets and
//! handles signals, and one worker process that does all networking. See LIFECYCLE.md.

pub mod control;
pub mod monitor;
pub mod threads;
pub mod worker;
