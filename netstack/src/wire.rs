//! The wire formats hushgate's data paths read by hand: the few IPv4, IPv6
//! and TCP header fields looked at before smoltcp or boringtun see a
//! packet, and WireGuard's message types, sizes and timer period
//! ([`wireguard`]).
//!
//! Hand-written rather than smoltcp's `wire` types: these run on every
//! packet, need a handful of fixed offsets and no checksum, and must not
//! allocate. Checksums and everything else stay with smoltcp and
//! boringtun.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// An IPv4 header without options.
pub const IPV4_MIN_HEADER: usize = 20;
/// The fixed IPv6 header.
pub const IPV6_HEADER: usize = 40;
/// A TCP header without options.
pub const TCP_MIN_HEADER: usize = 20;
/// More-fragments flag and fragment offset of the IPv4 flags field.
const IPV4_FRAGMENT_BITS: u16 = 0x3fff;

/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Why a packet is not a complete, unfragmented IPv4 TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not IP version 4.
    NotIpv4,
    /// A header is cut short, or the IP lengths disagree with the buffer.
    Truncated,
    /// A fragment: its ports cannot be read.
    Fragment,
    /// Not TCP; the IP protocol number.
    NotTcp(u8),
}

/// The addresses, ports and flags of an IP packet carrying a TCP segment.
/// `A` is [`Ipv4Addr`], [`Ipv6Addr`] or [`IpAddr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeaders<A> {
    pub source: A,
    pub destination: A,
    pub source_port: u16,
    pub destination_port: u16,
    /// The TCP flags byte ([`TCP_SYN`], [`TCP_ACK`], ...).
    pub flags: u8,
}

impl<A> TcpHeaders<A> {
    pub fn syn(&self) -> bool {
        self.flags & TCP_SYN != 0
    }
    pub fn ack(&self) -> bool {
        self.flags & TCP_ACK != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & TCP_RST != 0
    }
}

/// Reads an IPv4 TCP packet that fills `packet` exactly (total length
/// equal to the buffer), unfragmented, with a whole TCP header: what a
/// decrypted tunnel packet must be.
pub fn ipv4_tcp(packet: &[u8]) -> Result<TcpHeaders<Ipv4Addr>, Malformed> {
    ipv4_tcp_in(packet, true)
}

/// Reads the TCP segment of an IPv4 or IPv6 packet, as the user-space
/// stack's filter does before smoltcp sees it. `None` for anything that is
/// not a complete, unfragmented TCP segment (IPv6 with extension headers
/// included). Bytes after the IP total length are ignored, as smoltcp
/// ignores them.
pub fn tcp(packet: &[u8]) -> Option<TcpHeaders<IpAddr>> {
    match packet.first()? >> 4 {
        4 => ipv4_tcp_in(packet, false).ok().map(|h| TcpHeaders {
            source: IpAddr::V4(h.source),
            destination: IpAddr::V4(h.destination),
            source_port: h.source_port,
            destination_port: h.destination_port,
            flags: h.flags,
        }),
        6 => {
            if packet.len() < IPV6_HEADER || packet[6] != PROTO_TCP {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let l4 = packet.get(IPV6_HEADER..IPV6_HEADER + payload)?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&packet[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&packet[24..40]);
            tcp_fields(
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                l4,
            )
            .ok()
        }
        _ => None,
    }
}

/// [`ipv4_tcp`], with the total length either equal to the buffer
/// (`exact`) or at most the buffer.
fn ipv4_tcp_in(packet: &[u8], exact: bool) -> Result<TcpHeaders<Ipv4Addr>, Malformed> {
    let first = *packet.first().ok_or(Malformed::Truncated)?;
    if first >> 4 != 4 {
        return Err(Malformed::NotIpv4);
    }
    if packet.len() < IPV4_MIN_HEADER {
        return Err(Malformed::Truncated);
    }
    let header_len = usize::from(first & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let length_ok = if exact {
        total_len == packet.len()
    } else {
        total_len <= packet.len()
    };
    if header_len < IPV4_MIN_HEADER || !length_ok || header_len > total_len {
        return Err(Malformed::Truncated);
    }
    // More-fragments flag or a non-zero offset: smoltcp is built without
    // reassembly, and a fragment carries no usable ports.
    if u16::from_be_bytes([packet[6], packet[7]]) & IPV4_FRAGMENT_BITS != 0 {
        return Err(Malformed::Fragment);
    }
    if packet[9] != PROTO_TCP {
        return Err(Malformed::NotTcp(packet[9]));
    }
    tcp_fields(
        Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        &packet[header_len..total_len],
    )
}

fn tcp_fields<A>(source: A, destination: A, tcp: &[u8]) -> Result<TcpHeaders<A>, Malformed> {
    if tcp.len() < TCP_MIN_HEADER {
        return Err(Malformed::Truncated);
    }
    Ok(TcpHeaders {
        source,
        destination,
        source_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        destination_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        flags: tcp[13],
    })
}

/// The destination of an IPv4 packet (only the header's version and
/// length are checked): where a packet our own stack emitted goes.
pub fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    let b = ipv4_header(packet)?;
    Some(Ipv4Addr::new(b[16], b[17], b[18], b[19]))
}

/// The source of an IPv4 packet (only the header's version and length are
/// checked).
pub fn ipv4_source(packet: &[u8]) -> Option<Ipv4Addr> {
    let b = ipv4_header(packet)?;
    Some(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
}

fn ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    (packet.len() >= IPV4_MIN_HEADER && packet[0] >> 4 == 4).then_some(packet)
}

/// Whether an IPv4 packet carries a TCP segment with RST set. Lenient on
/// purpose (the lengths are not checked beyond the flags byte): it only
/// decides whether to tell the session that the far side reset something.
pub fn is_tcp_reset(packet: &[u8]) -> bool {
    if packet.len() < IPV4_MIN_HEADER || packet[9] != PROTO_TCP {
        return false;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    ihl >= IPV4_MIN_HEADER && packet.get(ihl + 13).is_some_and(|f| f & TCP_RST != 0)
}

/// WireGuard's message format (the parts hushgate reads without boringtun)
/// and the period at which boringtun's timers are run.
pub mod wireguard {
    use std::time::Duration;

    /// Message types (the first byte; the next three are zero).
    pub const MSG_HANDSHAKE_INIT: u8 = 1;
    pub const MSG_HANDSHAKE_RESPONSE: u8 = 2;
    pub const MSG_COOKIE_REPLY: u8 = 3;
    pub const MSG_DATA: u8 = 4;

    /// A handshake initiation is always exactly this long (and the largest
    /// handshake message).
    pub const HANDSHAKE_INIT_LEN: usize = 148;
    /// Bytes of an initiation its mac1 covers, mac1 included.
    pub const HANDSHAKE_INIT_MAC1_END: usize = 132;
    /// A cookie reply is always exactly this long.
    pub const COOKIE_REPLY_LEN: usize = 64;
    /// A data message's header (16) plus its AEAD tag (16): what
    /// encryption adds to an inner packet.
    pub const DATA_OVERHEAD: usize = 32;
    /// A data message with an empty payload (a keepalive) is exactly this
    /// long.
    pub const KEEPALIVE_LEN: usize = DATA_OVERHEAD;

    /// How often boringtun's per-session timers (handshake retries,
    /// keepalives, rekeying, expiry) are run. WireGuard's timers are
    /// specified in whole seconds; a quarter second keeps retries prompt
    /// without a busy tick.
    pub const TIMER_INTERVAL: Duration = Duration::from_millis(250);

    /// Whether a datagram is shaped like a handshake initiation: exactly
    /// its size, its type and three zero bytes.
    pub fn looks_like_initiation(datagram: &[u8]) -> bool {
        datagram.len() == HANDSHAKE_INIT_LEN && datagram[..4] == [MSG_HANDSHAKE_INIT, 0, 0, 0]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 40-byte IPv4 TCP segment from 100.64.0.2:50000 to 100.64.0.1.
    pub(crate) fn ipv4_tcp_packet(flags: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[100, 64, 0, 2]);
        p[16..20].copy_from_slice(&[100, 64, 0, 1]);
        p[20..22].copy_from_slice(&50000u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[32] = 0x50;
        p[33] = flags;
        p
    }

    #[test]
    fn parses_ipv4_syn() {
        let m = tcp(&ipv4_tcp_packet(TCP_SYN, 32400)).unwrap();
        assert_eq!(m.source, IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)));
        assert_eq!(m.destination, IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(
            (m.source_port, m.destination_port, m.syn(), m.ack()),
            (50000, 32400, true, false)
        );
    }

    #[test]
    fn rejects_fragments_truncation_and_other_protocols() {
        let mut frag = ipv4_tcp_packet(TCP_SYN, 80);
        frag[6] = 0x20; // more fragments
        assert!(tcp(&frag).is_none());
        assert_eq!(ipv4_tcp(&frag), Err(Malformed::Fragment));
        let mut udp = ipv4_tcp_packet(0, 80);
        udp[9] = 17;
        assert!(tcp(&udp).is_none());
        assert_eq!(ipv4_tcp(&udp), Err(Malformed::NotTcp(17)));
        assert!(tcp(&ipv4_tcp_packet(0, 80)[..30]).is_none());
        assert!(tcp(&[]).is_none());
        assert!(tcp(&[0x75; 60]).is_none());
    }

    #[test]
    fn only_the_stack_filter_ignores_bytes_past_the_total_length() {
        let mut padded = ipv4_tcp_packet(TCP_SYN, 80);
        padded.extend_from_slice(&[0; 4]);
        assert!(tcp(&padded).is_some());
        assert_eq!(ipv4_tcp(&padded), Err(Malformed::Truncated));
    }

    #[test]
    fn ipv6_tcp_is_read_too() {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&20u16.to_be_bytes());
        p[6] = PROTO_TCP;
        p[23] = 2;
        p[39] = 1;
        p[42..44].copy_from_slice(&443u16.to_be_bytes());
        p[53] = TCP_SYN | TCP_ACK;
        let m = tcp(&p).unwrap();
        assert_eq!(m.destination, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((m.destination_port, m.syn(), m.ack()), (443, true, true));
        p[6] = 0; // hop-by-hop extension header
        assert!(tcp(&p).is_none());
    }

    #[test]
    fn addresses_are_read_from_ipv4_headers_only() {
        let p = ipv4_tcp_packet(0, 1);
        assert_eq!(ipv4_source(&p), Some(Ipv4Addr::new(100, 64, 0, 2)));
        assert_eq!(ipv4_destination(&p), Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(ipv4_destination(&[0x45; 10]), None);
        assert_eq!(ipv4_source(&[0x65; 40]), None);
    }

    #[test]
    fn resets_are_told_from_other_segments() {
        // IPv4 (IHL 5) + TCP with flags RST|ACK, then ACK only.
        let mut p = [0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[33] = 0x14;
        assert!(is_tcp_reset(&p));
        p[33] = 0x10;
        assert!(!is_tcp_reset(&p));
        // UDP, or cut short: never.
        p[33] = 0x14;
        p[9] = 17;
        assert!(!is_tcp_reset(&p));
        p[9] = 6;
        assert!(!is_tcp_reset(&p[..33]));
        assert!(!is_tcp_reset(&[]));
        // Options in the IP header move the TCP header.
        let mut q = [0u8; 44];
        q[0] = 0x46;
        q[9] = 6;
        q[37] = 0x04;
        assert!(is_tcp_reset(&q));
    }

    #[test]
    fn initiations_are_recognised_by_shape() {
        let mut d = [0u8; wireguard::HANDSHAKE_INIT_LEN];
        d[0] = wireguard::MSG_HANDSHAKE_INIT;
        assert!(wireguard::looks_like_initiation(&d));
        d[1] = 1;
        assert!(!wireguard::looks_like_initiation(&d));
        assert!(!wireguard::looks_like_initiation(&[1, 0, 0, 0]));
    }
}
