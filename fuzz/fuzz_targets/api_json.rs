//! Fuzz target: see `hushgate_fuzz::api_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::api_json::run(data));
