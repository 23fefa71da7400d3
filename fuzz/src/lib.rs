//! Property code of the G6 fuzz targets (one module per target, `check(&[u8])` each).
//!
//! `g6-user/tests/fuzz_regressions.rs` includes these same files (`#[path]`) and runs every
//! saved seed and regression input through them under `cargo test`, so the modules use only
//! `g6`, `serde_json` and `std`, and refer to each other as `super::…`.

pub mod admin_command;
pub mod admin_dispatch;
pub mod common;
pub mod config_parse;
