//! The in-memory "network card" under the smoltcp interface, the reset it
//! answers a refused SYN with, and the port sets of the stack's filter.
//!
//! Packets live in `Vec<u8>` buffers that cycle between a free list and the
//! rx/tx queues, so after warm-up no packet causes an allocation: a buffer
//! keeps its capacity when it is cleared and reused.

use std::collections::VecDeque;

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl,
    TcpPacket, TcpRepr,
};

/// Two bounded packet queues plus free lists of spare buffers.
#[derive(Debug)]
pub(crate) struct QueueDevice {
    /// Inbound IP packets waiting for `poll_ingress_single`.
    pub(crate) rx: VecDeque<Vec<u8>>,
    /// Packets smoltcp emitted, waiting for the caller to take them.
    pub(crate) tx: VecDeque<Vec<u8>>,
    // Two free lists, not one, because smoltcp's `receive` hands out an rx
    // token and a tx token at the same time: each borrows its own list.
    rx_free: Vec<Vec<u8>>,
    tx_free: Vec<Vec<u8>>,
    mtu: usize,
    limit: usize,
}

impl QueueDevice {
    pub(crate) fn new(mtu: usize, limit: usize) -> Self {
        QueueDevice {
            rx: VecDeque::with_capacity(limit),
            tx: VecDeque::with_capacity(limit),
            rx_free: Vec::new(),
            tx_free: Vec::new(),
            mtu,
            limit,
        }
    }

    /// Copies `pkt` into a pooled buffer at the back of the rx queue.
    /// Returns false (packet dropped) when the queue is full: TCP treats
    /// that as loss, which is the right signal for an overloaded stack.
    pub(crate) fn push_rx(&mut self, pkt: &[u8]) -> bool {
        if self.rx.len() >= self.limit {
            return false;
        }
        let mut buf = self
            .rx_free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu));
        buf.clear();
        buf.extend_from_slice(pkt);
        self.rx.push_back(buf);
        true
    }

    /// Discards the packet at the front of the rx queue (keeping its buffer).
    pub(crate) fn drop_front_rx(&mut self) {
        if let Some(buf) = self.rx.pop_front() {
            recycle(&mut self.rx_free, buf, self.limit);
        }
    }

    /// Answers the SYN at the front of the rx queue with a reset, as a
    /// port that takes no more connections would, and discards the SYN.
    /// Like the replies smoltcp makes while receiving, the reset may take
    /// the tx queue one past `limit`.
    pub(crate) fn refuse_front_rx(&mut self) {
        let Some(syn) = self.rx.pop_front() else {
            return;
        };
        let mut buf = self
            .tx_free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu));
        if rst_for(&syn, &mut buf) {
            self.tx.push_back(buf);
        } else {
            recycle(&mut self.tx_free, buf, self.limit);
        }
        recycle(&mut self.rx_free, syn, self.limit);
    }

    pub(crate) fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    pub(crate) fn recycle_tx(&mut self, buf: Vec<u8>) {
        recycle(&mut self.tx_free, buf, self.limit);
    }
}

/// Returns a buffer to a free list, bounded so a burst does not pin memory.
fn recycle(free: &mut Vec<Vec<u8>>, buf: Vec<u8>, limit: usize) {
    if free.len() < limit {
        free.push(buf);
    }
}

pub(crate) struct RxToken<'a> {
    buf: Vec<u8>,
    free: &'a mut Vec<Vec<u8>>,
    limit: usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let RxToken { buf, free, limit } = self;
        let r = f(&buf);
        recycle(free, buf, limit);
        r
    }
}

pub(crate) struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    free: &'a mut Vec<Vec<u8>>,
    mtu: usize,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu));
        buf.clear();
        // Zero-filling `len` bytes costs far less than the checksum smoltcp
        // computes over the same bytes next, and keeps this crate free of
        // `unsafe` (no `set_len` on uninitialised memory).
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.queue.push_back(buf);
        r
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let buf = self.rx.pop_front()?;
        // The tx token handed out with a received packet may push the tx
        // queue one past `limit`: smoltcp cannot be told "no" at that point
        // and a single reply (an ACK or RST) is harmless.
        Some((
            RxToken {
                buf,
                free: &mut self.rx_free,
                limit: self.limit,
            },
            TxToken {
                queue: &mut self.tx,
                free: &mut self.tx_free,
                mtu: self.mtu,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        // A full tx queue makes smoltcp stop and retry at the next poll, so
        // a caller that does not drain cannot make us grow without bound.
        if self.tx.len() >= self.limit {
            return None;
        }
        Some(TxToken {
            queue: &mut self.tx,
            free: &mut self.tx_free,
            mtu: self.mtu,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// Writes into `out` the reset that answers the segment `pkt` (a SYN in
/// practice): RST|ACK acknowledging what it carried, sequence number zero,
/// from the address and port it was sent to. False if `pkt` is not a valid
/// TCP segment.
fn rst_for(pkt: &[u8], out: &mut Vec<u8>) -> bool {
    let caps = ChecksumCapabilities::default();
    let (src, dst, l4) = match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(p) = Ipv4Packet::new_checked(pkt) else {
                return false;
            };
            let Ok(ip) = Ipv4Repr::parse(&p, &caps) else {
                return false;
            };
            (
                IpAddress::Ipv4(ip.src_addr),
                IpAddress::Ipv4(ip.dst_addr),
                p.payload(),
            )
        }
        Some(6) => {
            let Ok(p) = Ipv6Packet::new_checked(pkt) else {
                return false;
            };
            let Ok(ip) = Ipv6Repr::parse(&p) else {
                return false;
            };
            (
                IpAddress::Ipv6(ip.src_addr),
                IpAddress::Ipv6(ip.dst_addr),
                p.payload(),
            )
        }
        _ => return false,
    };
    let Ok(seg) = TcpPacket::new_checked(l4) else {
        return false;
    };
    let Ok(seg) = TcpRepr::parse(&seg, &src, &dst, &caps) else {
        return false;
    };
    let rst = TcpRepr {
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        control: TcpControl::Rst,
        seq_number: seg.ack_number.unwrap_or_default(),
        ack_number: Some(seg.seq_number + seg.segment_len()),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = IpRepr::new(dst, src, IpProtocol::Tcp, rst.buffer_len(), 64);
    out.clear();
    out.resize(ip.buffer_len(), 0);
    ip.emit(&mut out[..ip.header_len()], &caps);
    rst.emit(
        &mut TcpPacket::new_unchecked(&mut out[ip.header_len()..]),
        &dst,
        &src,
        &caps,
    );
    true
}

/// A set of TCP ports as a 64 Kibit bitmap: constant-time membership on
/// every inbound packet, no hashing.
#[derive(Clone)]
pub(crate) struct PortSet(Box<[u64; 1024]>);

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((0..=u16::MAX).filter(|p| self.contains(*p)))
            .finish()
    }
}

impl PortSet {
    pub(crate) fn new() -> Self {
        PortSet(Box::new([0; 1024]))
    }
    pub(crate) fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }
    pub(crate) fn insert(&mut self, port: u16) {
        self.0[usize::from(port >> 6)] |= 1 << (port & 63);
    }
    pub(crate) fn remove(&mut self, port: u16) {
        self.0[usize::from(port >> 6)] &= !(1 << (port & 63));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::ipv4_tcp_packet as ipv4_tcp;
    use crate::wire::TCP_SYN;

    #[test]
    fn a_refused_syn_gets_a_reset_from_the_port_it_was_sent_to() {
        let mut syn = ipv4_tcp(TCP_SYN, 32400);
        syn[24..28].copy_from_slice(&1000u32.to_be_bytes()); // sequence number
        let caps = ChecksumCapabilities::default();
        let (s, d) = (IpAddress::v4(100, 64, 0, 2), IpAddress::v4(100, 64, 0, 1));
        // Valid checksums, as a real peer sends them.
        Ipv4Packet::new_unchecked(&mut syn[..]).fill_checksum();
        TcpPacket::new_unchecked(&mut syn[20..]).fill_checksum(&s, &d);
        let mut dev = QueueDevice::new(1420, 8);
        assert!(dev.push_rx(&syn));
        dev.refuse_front_rx();
        assert!(dev.rx.is_empty());
        let rst = dev.pop_tx().expect("a reset");
        let ip = Ipv4Repr::parse(&Ipv4Packet::new_checked(&rst[..]).unwrap(), &caps).unwrap();
        assert_eq!(
            (IpAddress::Ipv4(ip.src_addr), IpAddress::Ipv4(ip.dst_addr)),
            (d, s)
        );
        let t =
            TcpRepr::parse(&TcpPacket::new_checked(&rst[20..]).unwrap(), &d, &s, &caps).unwrap();
        assert_eq!(t.control, TcpControl::Rst);
        assert_eq!((t.src_port, t.dst_port), (32400, 50000));
        assert_eq!(t.ack_number, Some(smoltcp::wire::TcpSeqNumber(1001)));
    }

    #[test]
    fn port_set() {
        let mut s = PortSet::new();
        assert!(!s.contains(0));
        s.insert(65535);
        s.insert(64);
        assert!(s.contains(65535) && s.contains(64) && !s.contains(63));
        s.remove(64);
        assert!(!s.contains(64));
    }
}
