//! The tunnel rule: what a client may send inside its tunnel, checked on
//! every decrypted packet before it reaches the TCP stack.
//!
//! WireGuard proves which key sent a packet; it says nothing about what the
//! packet claims inside. A client could forge another client's tunnel
//! address or aim at a port on the gateway it was never granted. These
//! checks close that: only IPv4 TCP from the client's own tunnel address to
//! one of its allowed service ports on the service address passes.

use netstack::wire::{self, Malformed};
use std::net::Ipv4Addr;

/// Why an inner packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InnerViolation {
    #[error("not an IPv4 packet; the tunnel carries IPv4 only")]
    NotIpv4,
    #[error("the IPv4 or TCP header is truncated or its lengths disagree")]
    Truncated,
    #[error("fragmented packet; the ports of a fragment cannot be checked")]
    Fragment,
    #[error("source {found} is not the client's tunnel address {expected}")]
    ForgedSource { found: Ipv4Addr, expected: Ipv4Addr },
    #[error("destination {found} is not the service address {expected}")]
    WrongDestination { found: Ipv4Addr, expected: Ipv4Addr },
    #[error("IP protocol {0} is not TCP")]
    NotTcp(u8),
    #[error("TCP port {0} is not one of the admission's services")]
    PortNotAllowed(u16),
}

impl From<Malformed> for InnerViolation {
    fn from(m: Malformed) -> Self {
        match m {
            Malformed::NotIpv4 => InnerViolation::NotIpv4,
            Malformed::Truncated => InnerViolation::Truncated,
            Malformed::Fragment => InnerViolation::Fragment,
            Malformed::NotTcp(p) => InnerViolation::NotTcp(p),
        }
    }
}

/// The fields of an IPv4 TCP packet the checks look at (read by
/// [`wire::ipv4_tcp`]).
pub type TcpHeaderView = wire::TcpHeaders<Ipv4Addr>;

/// Checks a packet a client sent into the tunnel.
pub fn check_from_client(
    packet: &[u8],
    client_address: Ipv4Addr,
    service_address: Ipv4Addr,
    allowed_ports: &[u16],
) -> Result<TcpHeaderView, InnerViolation> {
    let view = wire::ipv4_tcp(packet)?;
    if view.source != client_address {
        return Err(InnerViolation::ForgedSource {
            found: view.source,
            expected: client_address,
        });
    }
    if view.destination != service_address {
        return Err(InnerViolation::WrongDestination {
            found: view.destination,
            expected: service_address,
        });
    }
    if !allowed_ports.contains(&view.destination_port) {
        return Err(InnerViolation::PortNotAllowed(view.destination_port));
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const SERVICE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

    fn syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = wire::PROTO_TCP;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[20..22].copy_from_slice(&49152u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[32] = 0x50;
        p[33] = 0x02;
        p
    }

    #[test]
    fn allowed_packet_passes() {
        let view =
            check_from_client(&syn(CLIENT, SERVICE, 32400), CLIENT, SERVICE, &[32400]).unwrap();
        assert_eq!(view.destination_port, 32400);
        assert_eq!(view.source_port, 49152);
    }

    #[test]
    fn each_violation_is_named() {
        let ports = [32400];
        let check = |p: &[u8]| check_from_client(p, CLIENT, SERVICE, &ports);
        assert!(matches!(
            check(&syn(Ipv4Addr::new(100, 64, 0, 9), SERVICE, 32400)),
            Err(InnerViolation::ForgedSource { .. })
        ));
        assert!(matches!(
            check(&syn(CLIENT, Ipv4Addr::new(127, 0, 0, 1), 32400)),
            Err(InnerViolation::WrongDestination { .. })
        ));
        assert_eq!(
            check(&syn(CLIENT, SERVICE, 22)),
            Err(InnerViolation::PortNotAllowed(22))
        );
        let mut udp = syn(CLIENT, SERVICE, 32400);
        udp[9] = 17;
        assert_eq!(check(&udp), Err(InnerViolation::NotTcp(17)));
        let mut fragment = syn(CLIENT, SERVICE, 32400);
        fragment[6] = 0x20;
        assert_eq!(check(&fragment), Err(InnerViolation::Fragment));
        let mut v6 = syn(CLIENT, SERVICE, 32400);
        v6[0] = 0x60;
        assert_eq!(check(&v6), Err(InnerViolation::NotIpv4));
        assert_eq!(check(&[]), Err(InnerViolation::Truncated));
        assert_eq!(
            check(&syn(CLIENT, SERVICE, 32400)[..30]),
            Err(InnerViolation::Truncated)
        );
        let mut long_header = syn(CLIENT, SERVICE, 32400);
        long_header[0] = 0x4f;
        assert_eq!(check(&long_header), Err(InnerViolation::Truncated));
    }
}
