#![no_main]
//! See `g6_fuzz::config_parse` (fuzz/src/config_parse.rs) for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| g6_fuzz::config_parse::check(data));
