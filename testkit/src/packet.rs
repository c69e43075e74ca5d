//! IPv4/TCP packets built by hand, with correct checksums, so that test
//! and fuzz inputs get past a stack's checksum check and reach the TCP
//! state machine or the gateway's tunnel rule.

use std::net::Ipv4Addr;

pub use netstack::wire::{
    PROTO_TCP, TCP_ACK as ACK, TCP_FIN as FIN, TCP_PSH as PSH, TCP_RST as RST, TCP_SYN as SYN,
};

/// The Internet checksum over the concatenation of `parts` (each part of
/// even length, except possibly the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = if pair.len() == 2 {
                u16::from_be_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], 0])
            };
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One TCP segment's fields.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// TCP options, padded with zeros (end of options) to a multiple of 4
    /// and cut at 40 bytes.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

/// An IPv4 packet carrying `s`, with valid IP and TCP checksums.
pub fn ipv4_tcp(s: &Segment<'_>) -> Vec<u8> {
    let options = &s.options[..s.options.len().min(40)];
    let opt_len = options.len().div_ceil(4) * 4;
    let tcp_len = 20 + opt_len + s.payload.len();
    let total = (20 + tcp_len).min(usize::from(u16::MAX));
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = PROTO_TCP;
    p[12..16].copy_from_slice(&s.src.octets());
    p[16..20].copy_from_slice(&s.dst.octets());
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp_len = total - 20;
    {
        let tcp = &mut p[20..];
        tcp[0..2].copy_from_slice(&s.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&s.dst_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&s.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&s.ack.to_be_bytes());
        tcp[12] = (((20 + opt_len) / 4) as u8) << 4;
        tcp[13] = s.flags;
        tcp[14..16].copy_from_slice(&s.window.to_be_bytes());
        tcp[20..20 + options.len()].copy_from_slice(options);
        let room = tcp.len() - 20 - opt_len;
        tcp[20 + opt_len..].copy_from_slice(&s.payload[..room]);
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&s.src.octets());
    pseudo[4..8].copy_from_slice(&s.dst.octets());
    pseudo[9] = PROTO_TCP;
    pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    let tcp_sum = checksum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// The TCP fields of an IPv4 packet a stack emitted, checked: a packet
/// hushgate's stack sends must be well formed, checksums included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload_len: usize,
}

/// Parses an IPv4 TCP packet and verifies both checksums; `None` for
/// anything else.
pub fn parse_ipv4_tcp(p: &[u8]) -> Option<Parsed> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != PROTO_TCP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total != p.len() || checksum(&[&p[..20]]) != 0 {
        return None;
    }
    let tcp = &p[20..];
    let data_off = usize::from(tcp[12] >> 4) * 4;
    if data_off < 20 || data_off > tcp.len() {
        return None;
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&p[12..16]);
    pseudo[4..8].copy_from_slice(&p[16..20]);
    pseudo[9] = PROTO_TCP;
    pseudo[10..12].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
    if checksum(&[&pseudo, tcp]) != 0 {
        return None;
    }
    Some(Parsed {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        payload_len: tcp.len() - data_off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_parse_back() {
        let s = Segment {
            src: Ipv4Addr::new(100, 64, 0, 2),
            dst: Ipv4Addr::new(100, 64, 0, 1),
            src_port: 50000,
            dst_port: 32400,
            seq: 7,
            ack: 9,
            flags: SYN | ACK,
            window: 1000,
            options: &[2, 4, 5, 0xb4, 1],
            payload: b"hello",
        };
        let p = ipv4_tcp(&s);
        let back = parse_ipv4_tcp(&p).unwrap();
        assert_eq!((back.seq, back.ack, back.flags), (7, 9, SYN | ACK));
        assert_eq!(back.payload_len, 5);
        let mut bad = p.clone();
        bad[45] ^= 1;
        assert!(parse_ipv4_tcp(&bad).is_none());
    }
}
