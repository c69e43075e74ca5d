//! Fuzz target: see `hushgate_fuzz::inner_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::inner_packet::run(data));
