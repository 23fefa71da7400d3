//! Host-side stub: this crate is a build-dependency of `g6-user` only so that edits to it
//! re-run `g6-user/build.rs`. The programs live in the `g6` binary (bpfel-unknown-none).
#![no_std]
