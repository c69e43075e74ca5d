//! hushgate addition: per-connection counters and a snapshot of the
//! congestion state, in the spirit of Linux's `tcp_info`. They cost a few
//! integer increments per segment and let tests, benchmarks and operators
//! see *why* a connection is slow (timeouts, recoveries, probes) instead of
//! guessing from its throughput.

use crate::time::Duration;

/// Monotonic counters of one connection (reset when the socket is reused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Counters {
    pub data_segs_out: u64,
    pub data_bytes_out: u64,
    pub retrans_segs: u64,
    pub retrans_rto: u64,
    pub retrans_recovery: u64,
    pub retrans_tlp: u64,
    pub tlp_probes: u64,
    pub rto_events: u64,
    pub recoveries: u64,
    pub dup_acks_in: u64,
    pub spurious_rtos: u64,
    pub data_segs_in: u64,
    pub ooo_segs_in: u64,
    pub dropped_segs_in: u64,
    pub acks_out: u64,
}

/// A snapshot of one TCP connection: counters since it opened and its
/// current congestion state. See [`Socket::info`](super::Socket::info).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct TcpInfo {
    /// Data-carrying segments sent, retransmissions included.
    pub data_segs_out: u64,
    /// Payload bytes sent, retransmissions included.
    pub data_bytes_out: u64,
    /// Segments sent again (every cause).
    pub retrans_segs: u64,
    /// Segments sent again after a retransmission timeout.
    pub retrans_rto: u64,
    /// Segments sent again by loss recovery (duplicate ACKs, SACK, RACK).
    pub retrans_recovery: u64,
    /// Segments sent again as tail loss probes.
    pub retrans_tlp: u64,
    /// Tail loss probes sent (new data or a retransmission).
    pub tlp_probes: u64,
    /// Retransmission timeouts that fired.
    pub rto_events: u64,
    /// Loss recovery episodes entered (fast recovery).
    pub recoveries: u64,
    /// Duplicate ACKs received.
    pub dup_acks_in: u64,
    /// Timeouts found spurious afterwards (the original was delivered).
    pub spurious_rtos: u64,
    /// Data-carrying segments received.
    pub data_segs_in: u64,
    /// Segments received above a hole (out of order).
    pub ooo_segs_in: u64,
    /// In-window segments dropped because the reassembly map was full.
    pub dropped_segs_in: u64,
    /// Segments sent without data (pure ACKs, window updates).
    pub acks_out: u64,
    /// Congestion window, bytes.
    pub cwnd: usize,
    /// Pacing rate, bytes per second; 0 when the socket does not pace.
    pub pacing_rate: u64,
    /// Latest delivery rate estimate, bytes per second (0 if none).
    pub delivery_rate: u64,
    /// Smoothed round-trip time (zero before the first sample).
    pub srtt: Duration,
    /// Minimum round-trip time seen recently (zero before the first sample).
    pub min_rtt: Duration,
    /// Current retransmission timeout.
    pub rto: Duration,
    /// Bytes sent and not yet acknowledged (SACKed and lost bytes excluded
    /// where the sender tracks them).
    pub bytes_in_flight: usize,
    /// Bytes queued for sending and not yet acknowledged.
    pub send_queue: usize,
    /// Capacity of the send buffer, bytes.
    pub send_capacity: usize,
    /// Capacity of the receive buffer, bytes.
    pub recv_capacity: usize,
}

impl TcpInfo {
    pub(super) fn from_counters(c: &Counters) -> TcpInfo {
        TcpInfo {
            data_segs_out: c.data_segs_out,
            data_bytes_out: c.data_bytes_out,
            retrans_segs: c.retrans_segs,
            retrans_rto: c.retrans_rto,
            retrans_recovery: c.retrans_recovery,
            retrans_tlp: c.retrans_tlp,
            tlp_probes: c.tlp_probes,
            rto_events: c.rto_events,
            recoveries: c.recoveries,
            dup_acks_in: c.dup_acks_in,
            spurious_rtos: c.spurious_rtos,
            data_segs_in: c.data_segs_in,
            ooo_segs_in: c.ooo_segs_in,
            dropped_segs_in: c.dropped_segs_in,
            acks_out: c.acks_out,
            ..TcpInfo::default()
        }
    }
}
