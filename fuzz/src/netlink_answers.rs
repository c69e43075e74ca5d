//! The pre-filter's reading of the kernel's nf_tables answers
//! (`gateway::filter::nft::read_answers`).
//!
//! Input: two sequence numbers of the batch's BEGIN and END (4 bytes each,
//! native order), the first of eight consecutive sequence numbers waiting
//! for an answer (4 bytes), then the receive buffer. Only numbers that
//! were waiting may be taken off the waiting set.

use gateway::filter::nft::read_answers;
use std::collections::HashSet;

pub fn run(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let word = |i: usize| u32::from_ne_bytes(data[i..i + 4].try_into().expect("4 bytes"));
    let batch = [word(0), word(4)];
    let first = word(8);
    let waiting: HashSet<u32> = (0..8).map(|i| first.wrapping_add(i)).collect();
    let mut pending = waiting.clone();
    let error = read_answers(&data[12..], &mut pending, batch);
    assert!(pending.is_subset(&waiting));
    if let Some(e) = error {
        // A kernel error is reported as the errno it carries.
        assert!(e.raw_os_error().is_some());
        let _ = e.to_string();
    }
}
