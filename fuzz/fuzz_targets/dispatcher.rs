//! Fuzz target: see `hushgate_fuzz::dispatcher`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::dispatcher::run(data));
