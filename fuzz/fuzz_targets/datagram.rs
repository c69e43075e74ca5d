//! Fuzz target: see `hushgate_fuzz::datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::datagram::run(data));
