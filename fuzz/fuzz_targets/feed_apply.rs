//! Fuzz target: see `hushgate_fuzz::feed_apply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::feed_apply::run(data));
