//! Fuzz target: see `hushgate_fuzz::access_answer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::access_answer::run(data));
