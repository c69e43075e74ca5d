//! hushgate addition: the sender's record of every segment in flight, the
//! SACK scoreboard, and RACK loss detection (RFC 8985).
//!
//! Upstream smoltcp kept no per-segment state: it resent from the first
//! unacknowledged byte after a timeout (go-back-N) and resent one segment
//! on three duplicate ACKs, whatever SACK said. Here every transmitted
//! segment is a [`Segment`] in sequence order, flagged SACKed, lost and/or
//! retransmitted, so that
//! - SACK blocks mark exactly what the receiver holds (RFC 2018);
//! - RACK marks a segment lost when a segment sent sufficiently later has
//!   been delivered (time-based, so it needs neither three duplicate ACKs
//!   nor a full window behind the hole, and it detects lost
//!   retransmissions too);
//! - only lost segments are sent again, and the data in flight ("pipe",
//!   RFC 6675) counts neither what the receiver holds nor what was lost;
//! - each delivered segment feeds the delivery-rate estimator (`rate.rs`).
//!
//! The records live in a `VecDeque` that keeps its capacity, so a steady
//! connection allocates nothing per segment; its length is bounded by the
//! send buffer divided by the segment size.
//!
//! RACK's scan must not revisit the whole window on every ACK (in recovery
//! most of the window is SACKed). Segments sent once are scanned in
//! sequence order from a cursor that only moves forward (for them,
//! sequence order is sending order); retransmitted segments are scanned
//! from a FIFO in retransmission order. Both scans stop at the first
//! segment sent after the most recently delivered one, so the work per ACK
//! is proportional to what it delivers or finds lost.

use alloc::collections::VecDeque;

use super::rate::{Delivery, RateSample, TxStamp};
use crate::time::{Duration, Instant};
use crate::wire::TcpSeqNumber;

/// Receiver holds it (SACKed).
pub(super) const SACKED: u8 = 1;
/// Judged lost; counts in `lost` until delivered.
pub(super) const LOST: u8 = 2;
/// A retransmission of it is in flight (counts in `retrans`).
pub(super) const RETRANS: u8 = 4;
/// It was retransmitted at least once (RTT samples from it are ambiguous).
pub(super) const EVER_RETRANS: u8 = 8;

/// One transmitted segment (its data bytes; SYN and FIN are not recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Segment {
    pub start: TcpSeqNumber,
    pub len: u32,
    /// Time of the latest (re)transmission.
    pub sent: Instant,
    pub stamp: TxStamp,
    pub flags: u8,
}

impl Segment {
    pub fn end(&self) -> TcpSeqNumber {
        self.start + self.len as usize
    }
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    /// In flight: sent (or resent) and neither delivered nor given up.
    fn in_flight(&self) -> bool {
        !self.has(SACKED) && (!self.has(LOST) || self.has(RETRANS))
    }
}

/// What one ACK did to the scoreboard.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AckOutcome {
    /// Round-trip time measured from the most recently sent segment this
    /// ACK delivered that was never retransmitted (Karn's rule).
    pub rtt: Option<Duration>,
    /// Bytes SACKed for the first time by this ACK.
    pub newly_sacked: usize,
}

/// The RACK state: the most recently sent segment known delivered.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct Rack {
    sent: Instant,
    end: TcpSeqNumber,
    /// RTT of that segment.
    rtt: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Scoreboard {
    segs: VecDeque<Segment>,
    /// Bytes of SACKED segments.
    pub sacked: usize,
    /// Bytes of LOST segments (retransmitted or not).
    pub lost: usize,
    /// Bytes of segments with a retransmission in flight.
    pub retrans: usize,
    /// Number of SACKED segments (RFC 6675's DupThresh counts segments).
    pub sacked_segs: usize,
    /// Lost segments to resend, in the order they were found lost.
    /// Entries are validated when taken (the segment may have been
    /// delivered or resent since).
    lost_queue: VecDeque<TcpSeqNumber>,
    /// Retransmissions in the order they were sent: (start, time).
    rtx_fifo: VecDeque<(TcpSeqNumber, Instant)>,
    /// Segments below this were sent once and are no longer candidates of
    /// the in-order RACK scan (delivered, lost or retransmitted).
    scan_from: Option<TcpSeqNumber>,
    rack: Option<Rack>,
    /// End of the highest SACKed segment.
    highest_sacked: Option<TcpSeqNumber>,
    /// A segment sent once was delivered after a later one: the path
    /// reorders, so RACK waits a reordering window before judging.
    pub reordering_seen: bool,
    /// The SACK blocks of the previous ACK, already applied. A receiver
    /// repeats its blocks in every ACK while they grow by a segment or
    /// two at their right edge; only the parts not applied yet are walked
    /// (as Linux's `recv_sack_cache`), so an ACK costs what it adds, not
    /// the size of the blocks.
    sack_cache: [Option<(TcpSeqNumber, TcpSeqNumber)>; 3],
}

impl Scoreboard {
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// Forgets everything (connection reset, or a rewind).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.lost_queue.clear();
        self.rtx_fifo.clear();
        self.sacked = 0;
        self.lost = 0;
        self.retrans = 0;
        self.sacked_segs = 0;
        self.scan_from = None;
        self.rack = None;
        self.highest_sacked = None;
        self.sack_cache = [None; 3];
    }

    /// Sequence number right after the last recorded byte.
    pub fn end(&self) -> Option<TcpSeqNumber> {
        self.segs.back().map(|s| s.end())
    }

    pub fn first(&self) -> Option<&Segment> {
        self.segs.front()
    }

    pub fn last(&self) -> Option<&Segment> {
        self.segs.back()
    }

    /// Records a segment sent for the first time. It must follow the last
    /// recorded one.
    pub fn on_send(&mut self, start: TcpSeqNumber, len: usize, now: Instant, stamp: TxStamp) {
        debug_assert!(len > 0);
        debug_assert!(self.end().is_none_or(|e| e == start));
        self.segs.push_back(Segment {
            start,
            len: len as u32,
            sent: now,
            stamp,
            flags: 0,
        });
        if self.scan_from.is_none() {
            self.scan_from = Some(start);
        }
    }

    fn index_of(&self, seq: TcpSeqNumber) -> Option<usize> {
        // Segments are contiguous and in order: find the one holding seq
        // (the first one, most of the time).
        let i = self.first_at_or_after(seq);
        (i < self.segs.len() && self.segs[i].start <= seq).then_some(i)
    }

    /// Index of the first segment that ends after `seq`.
    fn first_at_or_after(&self, seq: TcpSeqNumber) -> usize {
        match self.segs.front() {
            Some(f) if f.end() > seq => 0,
            _ => self.segs.partition_point(|s| s.end() <= seq),
        }
    }

    /// Bytes in flight (RFC 6675's pipe): sent, minus SACKed, minus lost,
    /// plus retransmissions in flight. `outstanding` is snd.nxt - snd.una
    /// (it may include a FIN, which is not recorded).
    pub fn pipe(&self, outstanding: usize) -> usize {
        (outstanding + self.retrans).saturating_sub(self.sacked + self.lost)
    }

    /// The next lost segment to resend: (start, len).
    pub fn next_lost(&mut self) -> Option<(TcpSeqNumber, usize)> {
        while let Some(&seq) = self.lost_queue.front() {
            if let Some(i) = self.index_of(seq) {
                let s = &self.segs[i];
                if s.start == seq && s.has(LOST) && !s.has(RETRANS) && !s.has(SACKED) {
                    return Some((s.start, s.len as usize));
                }
            }
            self.lost_queue.pop_front();
        }
        None
    }

    pub fn has_lost(&mut self) -> bool {
        self.next_lost().is_some()
    }

    /// Like [`next_lost`](Self::next_lost) without dropping stale entries
    /// (for `&self` callers such as `poll_at`).
    pub fn peek_lost(&self) -> Option<(TcpSeqNumber, usize)> {
        self.lost_queue.iter().find_map(|&seq| {
            let s = &self.segs[self.index_of(seq)?];
            (s.start == seq && s.has(LOST) && !s.has(RETRANS) && !s.has(SACKED))
                .then_some((s.start, s.len as usize))
        })
    }

    /// Splits the segment holding `at` so that a new one starts there
    /// (when only part of a segment can be resent at once: the send buffer
    /// is a ring, and a contiguous slice may end at its wrap point). Both
    /// halves keep the flags; a lost remainder is queued to go next.
    pub fn split(&mut self, at: TcpSeqNumber) {
        let Some(i) = self.index_of(at) else {
            return;
        };
        let s = self.segs[i];
        if s.start == at {
            return;
        }
        let head = (at - s.start) as u32;
        self.segs[i].len = head;
        let tail = Segment {
            start: at,
            len: s.len - head,
            ..s
        };
        self.segs.insert(i + 1, tail);
        if tail.has(LOST) && !tail.has(RETRANS) {
            // Right after the head if the head is next, else next.
            let k = usize::from(self.lost_queue.front() == Some(&s.start));
            self.lost_queue.insert(k.min(self.lost_queue.len()), at);
        }
    }

    /// Records the retransmission of the segment starting at `start`.
    /// Returns false if there is no such segment.
    pub fn on_retransmit(&mut self, start: TcpSeqNumber, now: Instant, stamp: TxStamp) -> bool {
        let Some(i) = self.index_of(start) else {
            return false;
        };
        let s = &mut self.segs[i];
        if s.start != start || s.has(SACKED) {
            return false;
        }
        if !s.has(RETRANS) {
            self.retrans += s.len as usize;
        }
        s.flags |= RETRANS | EVER_RETRANS;
        s.sent = now;
        s.stamp = stamp;
        self.rtx_fifo.push_back((start, now));
        if self.lost_queue.front() == Some(&start) {
            self.lost_queue.pop_front();
        }
        true
    }

    fn mark_lost_at(&mut self, i: usize) -> usize {
        let s = &mut self.segs[i];
        if s.has(SACKED) {
            return 0;
        }
        // Newly lost: never judged lost before, or its retransmission was.
        let mut newly = 0;
        if s.has(RETRANS) {
            s.flags &= !RETRANS;
            self.retrans -= s.len as usize;
            newly = s.len as usize;
        }
        if !s.has(LOST) {
            s.flags |= LOST;
            self.lost += s.len as usize;
            newly = s.len as usize;
        }
        self.lost_queue.push_back(s.start);
        newly
    }

    /// Marks the first unacknowledged segment lost (three duplicate ACKs
    /// without SACK, or a partial ACK in NewReno recovery). Returns the
    /// bytes newly marked.
    pub fn mark_first_lost(&mut self) -> usize {
        match self.segs.front() {
            Some(s) if s.in_flight() => self.mark_lost_at(0),
            _ => 0,
        }
    }

    /// A retransmission timeout: every segment the receiver does not hold
    /// is lost and will be resent in sequence order (RFC 6298 5.4, and
    /// Linux's `tcp_enter_loss`). SACKed segments are kept: the receiver
    /// may renege on them in theory, but then a later timeout resends them
    /// after a rewind.
    pub fn mark_all_lost(&mut self) -> usize {
        self.lost_queue.clear();
        self.rtx_fifo.clear();
        let mut newly = 0;
        for i in 0..self.segs.len() {
            newly += self.mark_lost_at(i);
        }
        self.scan_from = self.segs.back().map(|s| s.end());
        newly
    }

    /// Applies a cumulative ACK up to `ack` (and the SACK blocks that came
    /// with it), accounting deliveries into `delivery`/`rs`.
    pub fn on_ack(
        &mut self,
        ack: TcpSeqNumber,
        sack: &[Option<(u32, u32)>; 3],
        now: Instant,
        delivery: &mut Delivery,
        rs: &mut RateSample,
    ) -> AckOutcome {
        let mut out = AckOutcome::default();
        let mut newest: Option<(Instant, TcpSeqNumber, bool)> = None;

        // Cumulatively acknowledged segments leave the scoreboard.
        while let Some(front) = self.segs.front_mut() {
            if front.start >= ack {
                break;
            }
            if front.end() > ack {
                // Partially acknowledged (the peer's MSS changed, or a
                // window probe): trim; its remainder stays in flight.
                let cut = ack - front.start;
                if !front.has(SACKED) {
                    delivery.on_delivered(now, cut, front.sent, &front.stamp, rs);
                    let seg = *front;
                    note_newest(&mut newest, &seg);
                }
                let front = self.segs.front_mut().expect("still there");
                front.start = ack;
                front.len -= cut as u32;
                if front.has(SACKED) {
                    self.sacked -= cut;
                }
                if front.has(LOST) {
                    self.lost -= cut;
                }
                if front.has(RETRANS) {
                    self.retrans -= cut;
                }
                break;
            }
            let s = self.segs.pop_front().expect("front exists");
            if s.has(SACKED) {
                self.sacked -= s.len as usize;
                self.sacked_segs -= 1;
            } else {
                delivery.on_delivered(now, s.len as usize, s.sent, &s.stamp, rs);
                self.note_reordering(&s);
                note_newest(&mut newest, &s);
            }
            if s.has(LOST) {
                self.lost -= s.len as usize;
            }
            if s.has(RETRANS) {
                self.retrans -= s.len as usize;
            }
        }
        if self.segs.is_empty() {
            self.scan_from = None;
            self.highest_sacked = None;
        } else if self.scan_from.is_some_and(|c| c < ack) {
            self.scan_from = Some(ack);
        }

        // SACK blocks: only those within what we sent and above the ACK
        // count (a malformed or stale block is ignored, never trusted).
        let mut cache: [Option<(TcpSeqNumber, TcpSeqNumber)>; 3] = [None; 3];
        for (k, &(left, right)) in sack.iter().flatten().enumerate() {
            let (l, r) = (TcpSeqNumber(left as i32), TcpSeqNumber(right as i32));
            let (Some(first), Some(end)) = (self.segs.front(), self.end()) else {
                break;
            };
            if !(l < r && l >= first.start && r <= end) {
                continue;
            }
            cache[k] = Some((l, r));
            // The part of the block the previous ACK's blocks did not cover.
            let (mut from, mut to) = (l, r);
            for (cl, cr) in self.sack_cache.iter().flatten().copied() {
                if cl <= from && from < cr {
                    from = cr.min(to);
                }
                if cl < to && to <= cr {
                    to = cl.max(from);
                }
            }
            if from < to {
                self.apply_sack(from, to, now, delivery, rs, &mut out, &mut newest);
            }
        }
        self.sack_cache = cache;

        if let Some((sent, end, ever_retrans)) = newest {
            let rtt = now - sent;
            if !ever_retrans {
                out.rtt = Some(rtt);
            }
            // A retransmitted segment that comes back faster than the path
            // allows was the original being delivered: it says nothing about
            // when the retransmission left (RFC 8985 6.2, step 2).
            let plausible = !ever_retrans || self.rack.is_none_or(|r| rtt >= r.rtt / 2);
            if plausible && self.rack.is_none_or(|r| after(sent, end, r.sent, r.end)) {
                self.rack = Some(Rack { sent, end, rtt });
            }
        }
        out
    }

    /// Marks every whole segment within `[l, r)` SACKed.
    #[allow(clippy::too_many_arguments)]
    fn apply_sack(
        &mut self,
        l: TcpSeqNumber,
        r: TcpSeqNumber,
        now: Instant,
        delivery: &mut Delivery,
        rs: &mut RateSample,
        out: &mut AckOutcome,
        newest: &mut Option<(Instant, TcpSeqNumber, bool)>,
    ) {
        let mut i = self.first_at_or_after(l);
        while i < self.segs.len() && self.segs[i].start < r {
            let s = self.segs[i];
            // Only whole segments: we resend exactly what we sent, so a
            // receiver's blocks fall on segment edges.
            if s.start >= l && s.end() <= r && !s.has(SACKED) {
                // Held by the receiver: no longer lost nor in flight (the
                // flags go, so a later cumulative ACK does not count them
                // out a second time).
                let seg = &mut self.segs[i];
                seg.flags = (seg.flags & !(LOST | RETRANS)) | SACKED;
                self.sacked += s.len as usize;
                self.sacked_segs += 1;
                out.newly_sacked += s.len as usize;
                if s.has(LOST) {
                    self.lost -= s.len as usize;
                }
                if s.has(RETRANS) {
                    self.retrans -= s.len as usize;
                }
                delivery.on_delivered(now, s.len as usize, s.sent, &s.stamp, rs);
                self.note_reordering(&s);
                note_newest(newest, &s);
                if self.highest_sacked.is_none_or(|h| s.end() > h) {
                    self.highest_sacked = Some(s.end());
                }
            }
            i += 1;
        }
    }

    fn note_reordering(&mut self, s: &Segment) {
        if !s.has(EVER_RETRANS) && self.highest_sacked.is_some_and(|h| s.end() < h) {
            self.reordering_seen = true;
        }
    }

    /// RACK loss detection (RFC 8985 6.2): a segment sent before the most
    /// recently delivered one and not delivered within `rtt + reo_wnd` of
    /// its sending is lost. Returns the bytes newly marked lost and when
    /// to look again (the reordering timer) if a candidate is still within
    /// its window.
    pub fn detect_losses(&mut self, now: Instant, reo_wnd: Duration) -> (usize, Option<Instant>) {
        let Some(rack) = self.rack else {
            return (0, None);
        };
        let mut newly = 0;
        let mut timer: Option<Instant> = None;
        let mut arm = |at: Instant| {
            timer = Some(timer.map_or(at, |t: Instant| t.min(at)));
        };

        // Segments sent once, in sequence (= sending) order.
        if let Some(from) = self.scan_from {
            let mut i = self.first_at_or_after(from);
            let mut advance = true;
            while i < self.segs.len() {
                let s = self.segs[i];
                if !s.in_flight() || s.has(EVER_RETRANS) {
                    if advance {
                        self.scan_from = Some(s.end());
                    }
                    i += 1;
                    continue;
                }
                if !after(rack.sent, rack.end, s.sent, s.end()) {
                    break;
                }
                let deadline = s.sent + rack.rtt + reo_wnd;
                if deadline <= now {
                    newly += self.mark_lost_at(i);
                    if advance {
                        self.scan_from = Some(s.end());
                    }
                } else {
                    arm(deadline);
                    advance = false;
                    break;
                }
                i += 1;
            }
            if advance && i >= self.segs.len() {
                self.scan_from = self.end();
            }
        }

        // Retransmissions, in the order they left.
        while let Some(&(start, sent)) = self.rtx_fifo.front() {
            let current = self.index_of(start).filter(|&i| {
                let s = &self.segs[i];
                s.start == start && s.sent == sent && s.has(RETRANS) && !s.has(SACKED)
            });
            let Some(i) = current else {
                // Delivered, acknowledged or resent again since: stale.
                self.rtx_fifo.pop_front();
                continue;
            };
            let end = self.segs[i].end();
            if !after(rack.sent, rack.end, sent, end) {
                break;
            }
            let deadline = sent + rack.rtt + reo_wnd;
            if deadline <= now {
                newly += self.mark_lost_at(i);
                self.rtx_fifo.pop_front();
            } else {
                arm(deadline);
                break;
            }
        }
        (newly, timer)
    }

    /// RTT of the most recently delivered segment (RACK.rtt).
    pub fn rack_rtt(&self) -> Option<Duration> {
        self.rack.map(|r| r.rtt)
    }

    /// Iterates the records (tests and invariants).
    #[cfg(test)]
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segs.iter()
    }
}

/// Sent (t1, e1) after (t2, e2): later in time, or at the same time with
/// a higher sequence number (RFC 8985's RACK_sent_after).
fn after(t1: Instant, e1: TcpSeqNumber, t2: Instant, e2: TcpSeqNumber) -> bool {
    t1 > t2 || (t1 == t2 && e1 > e2)
}

fn note_newest(newest: &mut Option<(Instant, TcpSeqNumber, bool)>, s: &Segment) {
    if newest.is_none_or(|(t, e, _)| after(s.sent, s.end(), t, e)) {
        *newest = Some((s.sent, s.end(), s.has(EVER_RETRANS)));
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const MSS: usize = 1000;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    fn seq(n: usize) -> TcpSeqNumber {
        TcpSeqNumber(1_000_000) + n
    }

    struct Sender {
        sb: Scoreboard,
        d: Delivery,
        nxt: usize,
    }

    impl Sender {
        fn new() -> Self {
            Sender {
                sb: Scoreboard::default(),
                d: Delivery::new(t(0)),
                nxt: 0,
            }
        }
        /// Sends `n` new segments at `now`.
        fn send(&mut self, n: usize, now: Instant) {
            for _ in 0..n {
                let in_flight = self.sb.pipe(self.nxt - self.una());
                let stamp = self.d.stamp(now, in_flight);
                self.sb.on_send(seq(self.nxt), MSS, now, stamp);
                self.nxt += MSS;
            }
        }
        fn una(&self) -> usize {
            self.sb.first().map_or(self.nxt, |s| s.start - seq(0))
        }
        fn ack(&mut self, ack: usize, sacks: &[(usize, usize)], now: Instant) -> AckOutcome {
            let mut blocks = [None; 3];
            for (k, &(l, r)) in sacks.iter().enumerate() {
                blocks[k] = Some(((seq(l)).0 as u32, (seq(r)).0 as u32));
            }
            let mut rs = RateSample::default();
            self.sb.on_ack(seq(ack), &blocks, now, &mut self.d, &mut rs)
        }
        fn check(&self) {
            let (mut sacked, mut lost, mut retrans) = (0, 0, 0);
            let mut prev: Option<TcpSeqNumber> = None;
            for s in self.sb.segments() {
                if let Some(p) = prev {
                    assert_eq!(p, s.start, "records are contiguous");
                }
                prev = Some(s.end());
                if s.has(SACKED) {
                    sacked += s.len as usize;
                }
                if s.has(LOST) {
                    lost += s.len as usize;
                }
                if s.has(RETRANS) {
                    retrans += s.len as usize;
                }
            }
            assert_eq!(
                (sacked, lost, retrans),
                (self.sb.sacked, self.sb.lost, self.sb.retrans)
            );
        }
    }

    #[test]
    fn cumulative_ack_pops_segments_and_measures_rtt() {
        let mut s = Sender::new();
        s.send(4, t(0));
        let out = s.ack(2 * MSS, &[], t(20));
        assert_eq!(out.rtt, Some(Duration::from_millis(20)));
        assert_eq!(s.sb.len(), 2);
        assert_eq!(s.sb.pipe(s.nxt - s.una()), 2 * MSS);
        s.check();
    }

    #[test]
    fn sack_marks_whole_segments_and_shrinks_the_pipe() {
        let mut s = Sender::new();
        s.send(10, t(0));
        // Segment 0 lost; the receiver holds 1..4.
        let out = s.ack(0, &[(MSS, 4 * MSS)], t(20));
        assert_eq!(out.newly_sacked, 3 * MSS);
        assert_eq!(s.sb.sacked_segs, 3);
        assert_eq!(s.sb.pipe(10 * MSS), 7 * MSS);
        // The same block again changes nothing.
        assert_eq!(s.ack(0, &[(MSS, 4 * MSS)], t(21)).newly_sacked, 0);
        s.check();
    }

    #[test]
    fn malformed_and_stale_sack_blocks_are_ignored() {
        let mut s = Sender::new();
        s.send(4, t(0));
        let wild = [
            (3 * MSS, MSS), // inverted
            (0, 100 * MSS), // beyond what was sent
            (MSS, MSS),     // empty
        ];
        for b in wild {
            assert_eq!(s.ack(0, &[b], t(10)).newly_sacked, 0, "{b:?}");
        }
        // Below the cumulative ACK.
        s.ack(2 * MSS, &[], t(11));
        assert_eq!(s.ack(2 * MSS, &[(0, MSS)], t(12)).newly_sacked, 0);
        // A block with wrapped, huge numbers.
        let mut rs = RateSample::default();
        let blocks = [Some((u32::MAX - 5, 3)), Some((0, u32::MAX)), None];
        let out = s.sb.on_ack(seq(2 * MSS), &blocks, t(13), &mut s.d, &mut rs);
        assert_eq!(out.newly_sacked, 0);
        s.check();
    }

    #[test]
    fn rack_marks_a_hole_lost_once_a_later_segment_is_delivered() {
        let mut s = Sender::new();
        s.send(10, t(0));
        // 3 and 4 lost; everything else delivered (SACK), ACK stays at 3.
        s.ack(3 * MSS, &[(5 * MSS, 10 * MSS)], t(20));
        let (lost, timer) = s.sb.detect_losses(t(20), Duration::ZERO);
        assert_eq!(lost, 2 * MSS);
        assert_eq!(timer, None);
        assert_eq!(s.sb.next_lost(), Some((seq(3 * MSS), MSS)));
        assert_eq!(s.sb.pipe(7 * MSS), 0);
        s.check();
        // Resend both: they are in flight again.
        let stamp = s.d.stamp(t(21), 0);
        assert!(s.sb.on_retransmit(seq(3 * MSS), t(21), stamp));
        assert_eq!(s.sb.next_lost(), Some((seq(4 * MSS), MSS)));
        assert!(s.sb.on_retransmit(seq(4 * MSS), t(21), stamp));
        assert_eq!(s.sb.next_lost(), None);
        assert_eq!(s.sb.pipe(7 * MSS), 2 * MSS);
        s.check();
        // Both arrive: the cumulative ACK jumps over everything.
        let out = s.ack(10 * MSS, &[], t(41));
        assert_eq!(out.rtt, None, "Karn: no sample from retransmissions");
        assert!(s.sb.is_empty());
        s.check();
    }

    #[test]
    fn rack_waits_for_the_reordering_window() {
        let mut s = Sender::new();
        s.send(3, t(0));
        s.send(1, t(5));
        // Segment 3 (sent at 5 ms) delivered first: 0..3 are suspects.
        s.ack(0, &[(3 * MSS, 4 * MSS)], t(25));
        // RACK.rtt = 20 ms; with a 10 ms window they are lost at 0+20+10.
        let reo = Duration::from_millis(10);
        assert_eq!(s.sb.detect_losses(t(25), reo), (0, Some(t(30))));
        assert_eq!(s.sb.detect_losses(t(29), reo), (0, Some(t(30))));
        assert_eq!(s.sb.detect_losses(t(30), reo), (3 * MSS, None));
        s.check();
    }

    #[test]
    fn a_late_original_reveals_reordering() {
        let mut s = Sender::new();
        s.send(4, t(0));
        s.ack(0, &[(2 * MSS, 4 * MSS)], t(20));
        assert!(!s.sb.reordering_seen);
        // Segment 1 arrives after 2 and 3, never having been resent.
        s.ack(0, &[(MSS, 4 * MSS)], t(21));
        assert!(s.sb.reordering_seen);
        s.check();
    }

    #[test]
    fn a_lost_retransmission_is_found_by_rack() {
        let mut s = Sender::new();
        s.send(4, t(0));
        s.ack(0, &[(MSS, 4 * MSS)], t(20));
        assert_eq!(s.sb.detect_losses(t(20), Duration::ZERO).0, MSS);
        let stamp = s.d.stamp(t(20), 0);
        s.sb.on_retransmit(seq(0), t(20), stamp);
        // New data sent after the retransmission is delivered; the
        // retransmission is not.
        s.send(1, t(25));
        s.ack(0, &[(MSS, 5 * MSS)], t(45));
        let (lost, _) = s.sb.detect_losses(t(45), Duration::ZERO);
        assert_eq!(lost, MSS, "the retransmission was lost too");
        assert_eq!(s.sb.next_lost(), Some((seq(0), MSS)));
        assert_eq!(s.sb.retrans, 0);
        s.check();
    }

    #[test]
    fn a_retransmission_sacked_then_acked_is_counted_out_once() {
        let mut s = Sender::new();
        s.send(5, t(0));
        s.ack(0, &[(MSS, 5 * MSS)], t(20));
        assert_eq!(s.sb.detect_losses(t(20), Duration::ZERO).0, MSS);
        let stamp = s.d.stamp(t(20), 0);
        s.sb.on_retransmit(seq(0), t(20), stamp);
        s.check();
        // The receiver reports the retransmission by SACK first (it
        // arrived while an older ACK was on its way), then by ACK.
        s.ack(0, &[(0, 5 * MSS)], t(40));
        s.check();
        s.ack(5 * MSS, &[], t(41));
        s.check();
        assert_eq!((s.sb.sacked, s.sb.lost, s.sb.retrans), (0, 0, 0));
    }

    #[test]
    fn timeout_marks_everything_not_sacked() {
        let mut s = Sender::new();
        s.send(6, t(0));
        s.ack(MSS, &[(3 * MSS, 4 * MSS)], t(20));
        let newly = s.sb.mark_all_lost();
        assert_eq!(newly, 4 * MSS);
        let mut order = Vec::new();
        while let Some((start, _)) = s.sb.next_lost() {
            order.push(start - seq(0));
            let stamp = s.d.stamp(t(30), 0);
            s.sb.on_retransmit(start, t(30), stamp);
        }
        assert_eq!(order, [MSS, 2 * MSS, 4 * MSS, 5 * MSS]);
        s.check();
    }

    #[test]
    fn a_split_segment_is_resent_in_two_parts() {
        let mut s = Sender::new();
        s.send(3, t(0));
        s.ack(0, &[(MSS, 3 * MSS)], t(20));
        assert_eq!(s.sb.detect_losses(t(20), Duration::ZERO).0, MSS);
        assert_eq!(s.sb.next_lost(), Some((seq(0), MSS)));
        // Only 400 bytes can go now.
        s.sb.split(seq(400));
        s.check();
        assert_eq!(s.sb.next_lost(), Some((seq(0), 400)));
        let stamp = s.d.stamp(t(21), 0);
        s.sb.on_retransmit(seq(0), t(21), stamp);
        assert_eq!(s.sb.next_lost(), Some((seq(400), 600)));
        s.sb.on_retransmit(seq(400), t(21), stamp);
        assert_eq!(s.sb.next_lost(), None);
        assert_eq!(s.sb.pipe(3 * MSS), MSS);
        s.check();
    }

    #[test]
    fn partial_ack_trims_the_first_segment() {
        let mut s = Sender::new();
        s.send(2, t(0));
        s.ack(MSS / 2, &[], t(10));
        assert_eq!(s.sb.first().unwrap().start, seq(MSS / 2));
        assert_eq!(s.sb.pipe(2 * MSS - MSS / 2), 2 * MSS - MSS / 2);
        s.check();
    }

    #[test]
    fn scans_do_not_revisit_delivered_segments() {
        // A big SACKed window with one hole: repeated ACKs keep the cursor
        // past what was already examined.
        let mut s = Sender::new();
        s.send(1000, t(0));
        s.ack(0, &[(MSS, 1000 * MSS)], t(20));
        s.sb.detect_losses(t(20), Duration::ZERO);
        assert_eq!(s.sb.scan_from, Some(seq(1000 * MSS)));
        s.check();
    }
}
