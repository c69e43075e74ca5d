//! Fuzz target: see `hushgate_fuzz::key_policy_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hushgate_fuzz::key_policy_text::run(data));
