//! hushgate addition: which SACK blocks a receiver reports (RFC 2018 4).
//!
//! An ACK carries at most three blocks (the options space left next to
//! timestamps), while the reassembly map may hold many. RFC 2018 asks for
//! the block holding the segment that triggered the ACK first, then the
//! most recently reported other blocks, so that every block is reported
//! in several consecutive ACKs and a lost ACK costs no information.
//! Upstream reported only one block (the triggering one or the lowest),
//! so with several holes the sender never learned most of what had
//! arrived.
//!
//! This keeps one sequence number inside each of the three most recently
//! updated blocks, newest first; the blocks themselves always come from
//! the assembler at the time of the ACK, so a reported block is never
//! stale or wider than what is held.

use crate::storage::Assembler;
use crate::wire::TcpSeqNumber;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct RecentBlocks {
    seqs: [Option<TcpSeqNumber>; 3],
}

impl RecentBlocks {
    pub fn clear(&mut self) {
        self.seqs = [None; 3];
    }

    /// A segment starting at `seq` was added out of order.
    pub fn on_segment(&mut self, seq: TcpSeqNumber) {
        if self.seqs[0] == Some(seq) {
            return;
        }
        self.seqs = [Some(seq), self.seqs[0], self.seqs[1]];
    }

    /// The blocks to report in an ACK of `ack`, where the assembler's
    /// offsets count from `ack`: the recently updated blocks first (newest
    /// first, each at most once), then the lowest others.
    pub fn blocks(&self, assembler: &Assembler, ack: TcpSeqNumber) -> [Option<(u32, u32)>; 3] {
        let mut out: [Option<(u32, u32)>; 3] = [None; 3];
        if assembler.is_empty() {
            return out;
        }
        let mut n = 0;
        let mut push = |l: TcpSeqNumber, r: TcpSeqNumber, out: &mut [Option<(u32, u32)>; 3]| {
            let b = Some((l.0 as u32, r.0 as u32));
            if n < 3 && !out.contains(&b) {
                out[n] = b;
                n += 1;
            }
        };
        for seq in self.seqs.iter().flatten() {
            if *seq < ack {
                continue;
            }
            let found = assembler
                .iter_data()
                .map(|(l, r)| (ack + l, ack + r))
                .find(|&(l, r)| l <= *seq && *seq < r);
            if let Some((l, r)) = found {
                push(l, r, &mut out);
            }
        }
        for (l, r) in assembler.iter_data() {
            push(ack + l, ack + r, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn asm(blocks: &[(usize, usize)]) -> Assembler {
        let mut a = Assembler::new();
        for &(off, len) in blocks {
            a.add(off, len).unwrap();
        }
        a
    }

    const ACK: TcpSeqNumber = TcpSeqNumber(1000);

    fn b(l: usize, r: usize) -> Option<(u32, u32)> {
        Some(((ACK + l).0 as u32, (ACK + r).0 as u32))
    }

    #[test]
    fn newest_block_first_then_recent_ones() {
        // Holes at 0, 200, 400, 600: blocks 100..200, 300..400, 500..600,
        // 700..800 arrived in the order 300, 700, 100.
        let a = asm(&[(100, 100), (300, 100), (500, 100), (700, 100)]);
        let mut r = RecentBlocks::default();
        r.on_segment(ACK + 300);
        r.on_segment(ACK + 700);
        r.on_segment(ACK + 100);
        assert_eq!(r.blocks(&a, ACK), [b(100, 200), b(700, 800), b(300, 400)]);
    }

    #[test]
    fn fills_with_the_lowest_blocks_without_repeats() {
        let a = asm(&[(100, 100), (300, 100), (500, 100)]);
        let mut r = RecentBlocks::default();
        r.on_segment(ACK + 500);
        r.on_segment(ACK + 550);
        assert_eq!(r.blocks(&a, ACK), [b(500, 600), b(100, 200), b(300, 400)]);
    }

    #[test]
    fn forgets_blocks_below_the_ack() {
        let a = asm(&[(100, 100)]);
        let mut r = RecentBlocks::default();
        r.on_segment(ACK - 50);
        r.on_segment(ACK + 150);
        assert_eq!(r.blocks(&a, ACK), [b(100, 200), None, None]);
        assert_eq!(r.blocks(&Assembler::new(), ACK), [None, None, None]);
    }
}
