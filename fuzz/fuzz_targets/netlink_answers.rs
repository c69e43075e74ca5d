//! Fuzz target: see `hushgate_fuzz::netlink_answers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::netlink_answers::run(data));
