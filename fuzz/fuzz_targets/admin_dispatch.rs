#![no_main]
//! See `g6_fuzz::admin_dispatch` (fuzz/src/admin_dispatch.rs) for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| g6_fuzz::admin_dispatch::check(data));
