//! The protocol clients that carry out the machine's [`Request`]s.
//!
//! - PCP and NAT-PMP: `crab_nat` (pure Rust, tokio, both protocols,
//!   exposes the router's epoch and its result codes, takes the router's
//!   address and our client address as given).
//! - UPnP IGD: `igd-next` (tokio, SSDP discovery bound to a chosen local
//!   address, AddPortMapping / DeletePortMapping / GetExternalIPAddress /
//!   GetGenericPortMappingEntry).
//!
//! Written here by hand, because neither crate does it: listening for
//! the router's unsolicited announcements (PCP ANNOUNCE and NAT-PMP's
//! external-address notice, both multicast to 224.0.0.1:5350), which tell
//! of a restart or a new external address at once instead of at the next
//! periodic check.

use super::machine::{Grant, Lease, Outcome, PortSpec, Request, Transport};
use crab_nat::{natpmp, pcp, InternetProtocol, PortMapping, PortMappingOptions, TimeoutConfig};
use igd_next::aio::tokio::Tokio;
use igd_next::PortMappingProtocol;
use proto::reach::MappingProtocol;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

/// PCP and NAT-PMP retries: 250 ms, 500 ms, 1 s (1.75 s in all) instead
/// of the RFCs' 9 retries over minutes; a router that does not answer
/// three times in a row on its own LAN does not speak the protocol.
const TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_secs(1)),
};
/// UPnP discovery and each SOAP call.
const UPNP_SEARCH: Duration = Duration::from_secs(2);
const UPNP_CALL: Duration = Duration::from_secs(5);
const DESCRIPTION: &str = "hushgate";

/// The router and the state each protocol keeps between requests.
#[derive(Debug)]
pub struct Clients {
    router: IpAddr,
    local: IpAddr,
    /// PCP and NAT-PMP mappings held, per port (they carry the PCP nonce
    /// a renewal must repeat).
    held: Vec<PortMapping>,
    upnp: Option<igd_next::aio::Gateway<Tokio>>,
}

impl Clients {
    pub fn new(router: IpAddr, local: IpAddr) -> Clients {
        Clients {
            router,
            local,
            held: Vec::new(),
            upnp: None,
        }
    }

    pub async fn perform(&mut self, req: &Request) -> Outcome {
        match req {
            Request::Map {
                protocol: MappingProtocol::Upnp,
                ports,
                lifetime,
                refresh,
            } => self.upnp_map(ports, *lifetime, *refresh).await,
            Request::Map {
                protocol,
                ports,
                lifetime,
                refresh,
            } => self.pmp_map(*protocol, ports, *lifetime, *refresh).await,
            Request::Unmap {
                protocol: MappingProtocol::Upnp,
                leases,
            } => self.upnp_unmap(leases).await,
            Request::Unmap { .. } => self.pmp_unmap().await,
        }
    }

    async fn pmp_map(
        &mut self,
        protocol: MappingProtocol,
        ports: &[PortSpec],
        lifetime: Duration,
        refresh: bool,
    ) -> Outcome {
        let gateway = crab_nat::GatewayAddress::from(self.router);
        let mut leases = Vec::new();
        let mut epoch = None;
        let mut external_ip = None;
        let mut mappings: Vec<PortMapping> = Vec::new();
        for spec in ports {
            let Some(port) = NonZeroU16::new(spec.port) else {
                continue;
            };
            let held = refresh
                .then(|| {
                    self.held
                        .iter()
                        .find(|m| m.internal_port() == port && same(m.protocol(), spec.transport))
                })
                .flatten()
                .cloned();
            let options = PortMappingOptions {
                external_port: Some(held.as_ref().map_or(port, |m| m.external_port())),
                lifetime_seconds: Some(lifetime.as_secs().min(u64::from(u32::MAX)) as u32),
                timeout_config: Some(TIMEOUTS),
            };
            let result = match (protocol, held) {
                (MappingProtocol::Pcp, Some(mut m)) => {
                    m.timeout_config = TIMEOUTS;
                    m.renew().await.map(|()| m).map_err(|e| classify_any(&e))
                }
                (MappingProtocol::Pcp, None) => pcp::port_mapping(
                    pcp::BaseMapRequest::new(gateway, self.local, proto_of(spec.transport), port),
                    None,
                    None,
                    options,
                )
                .await
                .map_err(|e| classify_pcp(&e)),
                (_, _) => natpmp::port_mapping(gateway, proto_of(spec.transport), port, options)
                    .await
                    .map_err(|e| classify_natpmp(&e)),
            };
            let m = match result {
                Ok(m) => m,
                Err(outcome) => {
                    // What this round mapped before the refusal stays
                    // held, so that the next round renews it or the
                    // shutdown deletes it (not left forwarded for a lease).
                    for m in mappings {
                        let same_port = |h: &PortMapping| {
                            h.internal_port() == m.internal_port()
                                && matches!(
                                    (h.protocol(), m.protocol()),
                                    (InternetProtocol::Udp, InternetProtocol::Udp)
                                        | (InternetProtocol::Tcp, InternetProtocol::Tcp)
                                )
                        };
                        if !self.held.iter().any(same_port) {
                            self.held.push(m);
                        }
                    }
                    return outcome;
                }
            };
            epoch = Some(m.gateway_epoch());
            if let crab_nat::PortMappingType::Pcp {
                external_ip: ip, ..
            } = m.mapping_type()
            {
                external_ip = Some(ip.to_canonical());
            }
            leases.push(Lease {
                spec: *spec,
                external_port: m.external_port().get(),
                lifetime: Duration::from_secs(u64::from(m.lifetime())),
            });
            mappings.push(m);
        }
        if protocol == MappingProtocol::NatPmp {
            match natpmp::external_address(gateway, Some(TIMEOUTS)).await {
                Ok(ip) => external_ip = Some(IpAddr::V4(ip)),
                Err(e) => return classify_natpmp(&e),
            }
        }
        self.held = mappings;
        Outcome::Granted(Grant {
            external_ip: external_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            leases,
            epoch,
            recreated: false,
        })
    }

    async fn pmp_unmap(&mut self) -> Outcome {
        let mut outcome = Outcome::NoAnswer("nothing held".into());
        for m in std::mem::take(&mut self.held) {
            outcome = match m.try_drop().await {
                Ok(()) => Outcome::NoAnswer("deleted".into()),
                Err((e, _)) => classify_any(&e),
            };
        }
        outcome
    }

    async fn upnp_gateway(&mut self) -> Result<&igd_next::aio::Gateway<Tokio>, Outcome> {
        if self.upnp.is_none() {
            // The search goes to the router alone (SSDP's unicast
            // M-SEARCH), not to the LAN's multicast group, and only the
            // router's answer counts: any device on the LAN could answer
            // a multicast search and name an external address of its
            // choosing, which the gateway would report as its endpoint.
            let mut options = igd_next::SearchOptions::default();
            options.bind_addr = SocketAddr::new(self.local, 0);
            options.broadcast_address = SocketAddr::new(self.router, 1900);
            options.timeout = Some(UPNP_SEARCH);
            options.single_search_timeout = Some(UPNP_SEARCH);
            let found = igd_next::aio::tokio::search_gateway(options)
                .await
                .map_err(|e| Outcome::NoAnswer(format!("no UPnP gateway answered: {e}")))?;
            if found.addr.ip().to_canonical() != self.router.to_canonical() {
                return Err(Outcome::NoAnswer(format!(
                    "a UPnP device other than the router answered ({}); ignored",
                    found.addr.ip()
                )));
            }
            self.upnp = Some(found);
        }
        Ok(self.upnp.as_ref().expect("set above"))
    }

    async fn upnp_map(&mut self, ports: &[PortSpec], lifetime: Duration, refresh: bool) -> Outcome {
        let local = self.local;
        let gw = match self.upnp_gateway().await {
            Ok(gw) => gw,
            Err(o) => return o,
        };
        let call = |f| async move {
            tokio::time::timeout(UPNP_CALL, f)
                .await
                .unwrap_or_else(|_| Err(upnp_timeout()))
        };
        let mut recreated = false;
        if refresh {
            // Look our mappings up first: one missing means the router
            // forgot (restarted); adding it again below heals that.
            let mut found = Vec::new();
            for index in 0..128 {
                let entry =
                    tokio::time::timeout(UPNP_CALL, gw.get_generic_port_mapping_entry(index)).await;
                match entry {
                    Ok(Ok(e)) => found.push(e),
                    Ok(Err(_)) => break,
                    Err(_) => {
                        self.upnp = None;
                        return Outcome::NoAnswer("the UPnP gateway stopped answering".into());
                    }
                }
            }
            recreated = ports.iter().any(|spec| {
                !found.iter().any(|e| {
                    e.internal_port == spec.port
                        && e.protocol == upnp_proto(spec.transport)
                        && e.internal_client.parse::<IpAddr>().ok() == Some(local)
                })
            });
        }
        let lease_secs = lifetime.as_secs().min(u64::from(u32::MAX)) as u32;
        let mut leases = Vec::new();
        for spec in ports {
            let target = SocketAddr::new(local, spec.port);
            let proto = upnp_proto(spec.transport);
            let mut granted = lease_secs;
            let mut r = call(gw.add_port(proto, spec.port, target, granted, DESCRIPTION)).await;
            if matches!(r, Err(igd_next::AddPortError::OnlyPermanentLeasesSupported)) {
                // Old routers: a permanent mapping, deleted at shutdown
                // and renewed like any other.
                granted = 0;
                r = call(gw.add_port(proto, spec.port, target, 0, DESCRIPTION)).await;
            }
            match r {
                Ok(()) => leases.push(Lease {
                    spec: *spec,
                    external_port: spec.port,
                    lifetime: Duration::from_secs(u64::from(granted)),
                }),
                Err(igd_next::AddPortError::RequestError(e)) if is_transport(&e) => {
                    self.upnp = None;
                    return Outcome::NoAnswer(format!("the UPnP gateway stopped answering: {e}"));
                }
                Err(e) => return Outcome::Refused(format!("UPnP AddPortMapping: {e}")),
            }
        }
        let external_ip = match tokio::time::timeout(UPNP_CALL, gw.get_external_ip()).await {
            Ok(Ok(ip)) if !ip.is_unspecified() => ip,
            Ok(Ok(_)) | Ok(Err(_)) => {
                return Outcome::Refused("the router has no external address".into())
            }
            Err(_) => return Outcome::NoAnswer("GetExternalIPAddress timed out".into()),
        };
        Outcome::Granted(Grant {
            external_ip,
            leases,
            epoch: None,
            recreated,
        })
    }

    async fn upnp_unmap(&mut self, leases: &[Lease]) -> Outcome {
        let gw = match self.upnp_gateway().await {
            Ok(gw) => gw,
            Err(o) => return o,
        };
        let mut outcome = Outcome::NoAnswer("deleted".into());
        for l in leases {
            let r = tokio::time::timeout(
                UPNP_CALL,
                gw.remove_port(upnp_proto(l.spec.transport), l.external_port),
            )
            .await;
            if let Ok(Err(e)) = r {
                outcome = Outcome::Refused(format!("UPnP DeletePortMapping: {e}"));
            }
        }
        outcome
    }
}

fn upnp_timeout() -> igd_next::AddPortError {
    igd_next::AddPortError::RequestError(igd_next::RequestError::IoError(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer",
    )))
}

fn is_transport(e: &igd_next::RequestError) -> bool {
    !matches!(
        e,
        igd_next::RequestError::ErrorCode(..) | igd_next::RequestError::UnsupportedAction(_)
    )
}

fn same(p: InternetProtocol, t: Transport) -> bool {
    matches!(
        (p, t),
        (InternetProtocol::Udp, Transport::Udp) | (InternetProtocol::Tcp, Transport::Tcp)
    )
}

fn proto_of(t: Transport) -> InternetProtocol {
    match t {
        Transport::Udp => InternetProtocol::Udp,
        Transport::Tcp => InternetProtocol::Tcp,
    }
}

fn upnp_proto(t: Transport) -> PortMappingProtocol {
    match t {
        Transport::Udp => PortMappingProtocol::UDP,
        Transport::Tcp => PortMappingProtocol::TCP,
    }
}

fn classify_any(e: &crab_nat::MappingFailure) -> Outcome {
    match e {
        crab_nat::MappingFailure::Pcp(e) => classify_pcp(e),
        crab_nat::MappingFailure::NatPmp(e) => classify_natpmp(e),
    }
}

/// Silence, a protocol the router does not speak, or garbage: try the
/// next protocol. A result code: the router is there and said no.
fn classify_pcp(e: &pcp::Failure) -> Outcome {
    use pcp::Failure::*;
    match e {
        Socket(_)
        | Timeout
        | Nonce
        | InvalidResponse(_)
        | UnsupportedVersion(_)
        | UnsupportedOpcode
        | UnsupportedOption
        | MalformedOption
        | MalformedRequest
        | UnsupportedProtocol => Outcome::NoAnswer(format!("PCP: {e}")),
        _ => Outcome::Refused(format!("PCP: {e}")),
    }
}

fn classify_natpmp(e: &natpmp::Failure) -> Outcome {
    use natpmp::Failure::*;
    match e {
        Socket(_) | Timeout | InvalidResponse(_) | UnsupportedVersion(_) | UnsupportedOpcode => {
            Outcome::NoAnswer(format!("NAT-PMP: {e}"))
        }
        NotAuthorized | NetworkFailure | OutOfResources => {
            Outcome::Refused(format!("NAT-PMP: {e}"))
        }
    }
}

/// The multicast group and port of PCP and NAT-PMP announcements.
const ANNOUNCE_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
const ANNOUNCE_PORT: u16 = 5350;

/// Whether a datagram is a router's announcement: NAT-PMP version 0 or
/// PCP version 2, with the response bit set on opcode 0 (NAT-PMP's
/// external-address answer, PCP's ANNOUNCE), at least as long as the
/// shorter of the two (12 bytes, NAT-PMP's).
pub fn is_announcement(d: &[u8]) -> bool {
    d.len() >= 12 && matches!(d[0], 0 | 2) && d[1] == 0x80
}

/// Listens for the router's announcements; `None` when port 5350 cannot
/// be had (another client holds it without sharing): the periodic
/// checks still notice changes, later.
pub fn announcements(router: IpAddr, local: IpAddr) -> Option<tokio::net::UdpSocket> {
    let (IpAddr::V4(_), IpAddr::V4(local)) = (router, local) else {
        return None;
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).ok()?;
    s.set_reuse_address(true).ok()?;
    s.set_reuse_port(true).ok()?;
    s.set_nonblocking(true).ok()?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, ANNOUNCE_PORT)).into())
        .ok()?;
    s.join_multicast_v4(&ANNOUNCE_GROUP, &local).ok()?;
    tokio::net::UdpSocket::from_std(s.into()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_told_from_other_datagrams() {
        // NAT-PMP external address notice: version 0, opcode 128, result
        // 0, epoch, address.
        let natpmp = [0, 0x80, 0, 0, 0, 0, 0, 9, 203, 0, 113, 98];
        assert!(is_announcement(&natpmp));
        // PCP ANNOUNCE response: 24-byte header, version 2.
        let mut pcp = [0u8; 24];
        pcp[0] = 2;
        pcp[1] = 0x80;
        assert!(is_announcement(&pcp));
        // A MAP response (opcode 1) and a request (no R bit) are not.
        pcp[1] = 0x81;
        assert!(!is_announcement(&pcp));
        pcp[1] = 0x00;
        assert!(!is_announcement(&pcp));
        assert!(!is_announcement(&natpmp[..8]));
    }
}
