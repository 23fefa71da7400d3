#![no_main]
//! See `g6_fuzz::admin_command` (fuzz/src/admin_command.rs) for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| g6_fuzz::admin_command::check(data));
