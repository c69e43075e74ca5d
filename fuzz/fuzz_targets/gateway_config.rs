//! Fuzz target: see `hushgate_fuzz::gateway_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::gateway_config::run(data));
