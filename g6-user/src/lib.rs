//! G6 agent library: everything the `g6` binary runs, exposed for tests and fuzzers.
//!
//! Pure modules (`config`, `balance`, `isolation`, `limits`, `admin` parsing and rendering)
//! are unit- and property-tested; modules that own descriptors (`proxy`, `listeners`,
//! `fastpath`, `app`) are tested end to end in `tests/`.

pub mod admin;
pub mod app;
pub mod balance;
pub mod cli;
pub mod config;
pub mod fastpath;
pub mod guard;
pub mod isolation;
pub mod lifecycle;
pub mod limits;
pub mod listeners;
pub mod logging;
pub mod proxy;
pub mod runtime;
pub mod selftest;
