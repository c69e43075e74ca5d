//! Fuzz target: see `hushgate_fuzz::tcp_segments`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::tcp_segments::run(data));
