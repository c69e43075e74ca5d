//! Reachability: what a gateway knows about its own network (its port
//! mapping on the home router, its IPv6 addresses), what the control
//! plane's check through the real path found, and the diagnosis in plain
//! words that both lead to.
//!
//! The gateway sends a [`NetworkReport`] with its [`GatewayReport`]
//! (`crate::feed::GatewayReport`); the control plane checks the endpoint
//! (a WireGuard handshake from its own address, see `control::reachability`)
//! and keeps the last [`Reachability`]. [`diagnose`] turns the two, and the
//! address the control plane sees the gateway come from, into a list of
//! [`Diagnosis`] lines, each saying what is wrong and what the owner can
//! do. It is a pure function so the control plane (admin view, access
//! answers) and the tests share one set of rules.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use time::OffsetDateTime;

/// The mapping protocols a gateway tries, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingProtocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device (WANIPConnection / WANPPPConnection).
    Upnp,
}

impl std::fmt::Display for MappingProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MappingProtocol::Pcp => "PCP",
            MappingProtocol::NatPmp => "NAT-PMP",
            MappingProtocol::Upnp => "UPnP IGD",
        })
    }
}

/// Where the gateway's automatic port mapping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingState {
    /// `--port-mapping off`.
    Off,
    /// Still asking the router (first attempt not finished).
    Pending,
    /// The router holds a mapping for the gateway's port.
    Mapped,
    /// A router answered a mapping protocol but refused the mapping.
    Refused,
    /// No mapping protocol answered.
    NoProtocol,
    /// The host has no IPv4 default router to ask.
    NoRouter,
}

/// The gateway's port mapping as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingReport {
    pub state: MappingState,
    /// The router asked (the IPv4 default router, or `--router`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<IpAddr>,
    /// The protocol that holds (or refused) the mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<MappingProtocol>,
    /// The router's own external address, as the router says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_external: Option<IpAddr>,
    /// The mapped external endpoint of the gateway's UDP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<SocketAddr>,
    /// Seconds the current lease was granted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
    /// What the router said when it refused, or what went wrong last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl MappingReport {
    pub fn off() -> MappingReport {
        MappingReport {
            state: MappingState::Off,
            router: None,
            protocol: None,
            router_external: None,
            external: None,
            lease_secs: None,
            error: None,
        }
    }
}

/// What a gateway tells the control plane about its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkReport {
    pub port_mapping: MappingReport,
    /// The host's global IPv6 addresses (no NAT to cross on them).
    #[serde(default)]
    pub ipv6: Vec<Ipv6Addr>,
    /// The control plane's addresses as the gateway reaches them (one per
    /// family at most). A reachability check is bound to the one of the
    /// endpoint's family: that is where the check's datagrams come from.
    #[serde(default)]
    pub control_addresses: Vec<IpAddr>,
}

/// Why a check did not reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreachableReason {
    /// The handshake got no answer from the endpoint.
    NoAnswer,
    /// The gateway did not install the check's one-off admission in time.
    GatewayDidNotConfirm,
    /// The control plane has no address of the endpoint's family to check
    /// from (e.g. an IPv6 endpoint and an IPv4-only control plane).
    NoProbeAddress,
    /// The check's datagram could not be sent.
    SendFailed,
}

impl UnreachableReason {
    pub fn words(self) -> &'static str {
        match self {
            UnreachableReason::NoAnswer => "a WireGuard handshake sent to it from the control plane got no answer",
            UnreachableReason::GatewayDidNotConfirm => "the gateway did not confirm the check's one-off admission in time (is it following its feed?)",
            UnreachableReason::NoProbeAddress => "the control plane has no address of the endpoint's family to check from",
            UnreachableReason::SendFailed => "the control plane could not send to the endpoint (no route)",
        }
    }
}

/// The last reachability check of a gateway's public endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    pub endpoint: SocketAddr,
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<UnreachableReason>,
    /// Where the check came from (what the one-off admission was bound to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<IpAddr>,
    /// How long the handshake took, when it was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
}

impl Reachability {
    /// One line: "reachable (12 ms)" or "NOT reachable: why".
    pub fn summary(&self) -> String {
        if self.reachable {
            match self.rtt_ms {
                Some(ms) => format!("reachable at {} ({ms} ms)", self.endpoint),
                None => format!("reachable at {}", self.endpoint),
            }
        } else {
            format!(
                "NOT reachable at {}: {}",
                self.endpoint,
                self.reason
                    .map(UnreachableReason::words)
                    .unwrap_or("unknown")
            )
        }
    }
}

/// What kind of trouble a [`Diagnosis`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosisCode {
    /// The router's external address is private, or is not the address
    /// the Internet sees: a second NAT is in front of it.
    DoubleNat,
    /// The router's external address is in 100.64.0.0/10, or the router
    /// refused to map for lack of a public address: the provider's NAT.
    CarrierGradeNat,
    /// No router answered PCP, NAT-PMP or UPnP.
    NoMappingProtocol,
    /// The port is mapped, but the check from the Internet got no answer.
    Firewalled,
    /// Not reachable, port mapping off: the port must be forwarded by hand.
    NotForwarded,
    /// The host has a global IPv6 address: no NAT to cross there.
    Ipv6Available,
}

/// One finding, in plain words, with what the owner can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub code: DiagnosisCode,
    /// What is wrong.
    pub problem: String,
    /// What the owner can do about it.
    pub advice: String,
}

/// The reachability a gateway and an admin see: the last check and what
/// it means.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachabilityView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Reachability>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnosis: Vec<Diagnosis>,
}

impl ReachabilityView {
    /// What a client (not the server's owner) is told: the check's result
    /// and the diagnoses, without what describes the owner's home network
    /// beyond the problem itself: not where the check came from, and not
    /// the host's global IPv6 address (a client could use it to try the
    /// media server directly).
    pub fn for_clients(mut self) -> ReachabilityView {
        if let Some(c) = &mut self.check {
            c.from = None;
        }
        self.diagnosis
            .retain(|d| d.code != DiagnosisCode::Ipv6Available);
        self
    }
}

/// Text that came from a router (an error message in a UPnP or PCP
/// answer) or from a gateway, made safe to store and print: control
/// characters (terminal escapes, new lines) become spaces, and it is cut
/// to `MAX_FOREIGN_TEXT` characters.
pub fn clean_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_FOREIGN_TEXT)
        .collect();
    if s.chars().count() > MAX_FOREIGN_TEXT {
        out.push('…');
    }
    out
}

/// See [`clean_text`].
pub const MAX_FOREIGN_TEXT: usize = 200;

/// Whether `ip` may be reported as the gateway's public address: not
/// private (RFC 1918, link-local, unique-local), not carrier-grade NAT
/// space, not unspecified, loopback, multicast or broadcast. A router
/// behind another NAT names such an address as its external one; the
/// address the control plane sees is the better guess then.
pub fn is_reportable_external(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let odd = match ip {
        IpAddr::V4(v4) => v4.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    !(odd
        || ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || is_private_address(ip)
        || is_shared_address(ip))
}

/// 100.64.0.0/10 (RFC 6598): carrier-grade NAT between a home and its
/// provider.
pub fn is_shared_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        IpAddr::V6(_) => false,
    }
}

/// A private address: RFC 1918, link-local, unique-local IPv6.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4 == Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The findings for a gateway: its network report, the address the
/// control plane sees it come from, and the last check. Nothing is said
/// when nothing is wrong; IPv6 is suggested only next to a problem.
pub fn diagnose(
    network: Option<&NetworkReport>,
    observed: Option<IpAddr>,
    check: Option<&Reachability>,
) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    // Only silence says something about the network; the other reasons
    // (the gateway did not confirm, nothing to send from) are told by the
    // check's own summary.
    let failed = check.is_some_and(|c| {
        !c.reachable && matches!(c.reason, None | Some(UnreachableReason::NoAnswer))
    });
    let reached = check.is_some_and(|c| c.reachable);
    let port = check.map(|c| c.endpoint.port());
    let port_words = port
        .map(|p| format!("UDP port {p}"))
        .unwrap_or_else(|| "the gateway's UDP port".into());
    if let Some(net) = network {
        let m = &net.port_mapping;
        let router = m
            .router
            .map(|r| format!("the router ({r})"))
            .unwrap_or_else(|| "the router".into());
        match m.state {
            MappingState::Mapped => {
                let ext = m.router_external.or(m.external.map(|e| e.ip()));
                match ext {
                    Some(ip) if is_shared_address(ip) => out.push(Diagnosis {
                        code: DiagnosisCode::CarrierGradeNat,
                        problem: format!("{router} mapped the port, but its external address {ip} is in 100.64.0.0/10: the Internet provider puts a carrier-grade NAT in front of it, and nothing can be opened there"),
                        advice: "ask the provider for a public IPv4 address (often called 'public IP' or 'port forwarding option'), or use IPv6 if the provider offers it".into(),
                    }),
                    Some(ip) if is_private_address(ip) => out.push(Diagnosis {
                        code: DiagnosisCode::DoubleNat,
                        problem: format!("{router} mapped the port, but its own external address {ip} is private: a second router (often the provider's modem) is in front of it, and that one was not opened"),
                        advice: format!("put the provider's modem in bridge mode so this router gets the public address, or forward {port_words} on the modem to this router's address {ip}"),
                    }),
                    Some(ip) if observed.is_some_and(|o| {
                        o.to_canonical().is_ipv4() == ip.to_canonical().is_ipv4()
                            && o.to_canonical() != ip.to_canonical()
                    }) => out.push(Diagnosis {
                        code: DiagnosisCode::DoubleNat,
                        problem: format!(
                            "{router} says its external address is {ip}, but the control plane sees this network come from {}: another NAT is between the router and the Internet",
                            observed.map(|o| o.to_string()).unwrap_or_default()
                        ),
                        advice: format!("put the device in front of the router in bridge mode, or forward {port_words} there to the router"),
                    }),
                    _ if failed => out.push(Diagnosis {
                        code: DiagnosisCode::Firewalled,
                        problem: format!(
                            "{router} mapped the port{}, but the check from the Internet got no answer: another firewall drops it (the host's own, a second router, or the provider)",
                            m.protocol.map(|p| format!(" with {p}")).unwrap_or_default()
                        ),
                        advice: format!("allow incoming {port_words} in the host's firewall and on any device between the router and the Internet"),
                    }),
                    _ => {}
                }
            }
            MappingState::Refused => out.push(Diagnosis {
                code: DiagnosisCode::CarrierGradeNat,
                problem: format!(
                    "{router} answered {} but refused to map the port{}: it has no public address of its own (the provider's carrier-grade NAT, or a second router in front of it) or mapping is disabled for this host",
                    m.protocol.map(|p| p.to_string()).unwrap_or_else(|| "a mapping request".into()),
                    m.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                ),
                advice: "check the router's status page: if its Internet (WAN) address starts with 100.64-100.127 ask the provider for a public IPv4 address; if it is private (10., 172.16-31., 192.168.) put the modem in front of it in bridge mode; or use IPv6".into(),
            }),
            MappingState::NoProtocol if !reached => out.push(Diagnosis {
                code: DiagnosisCode::NoMappingProtocol,
                problem: format!("{router} answers none of PCP, NAT-PMP and UPnP, so the gateway cannot open its port by itself"),
                advice: format!("switch on UPnP or NAT-PMP in the router's settings, or forward {port_words} by hand to this host"),
            }),
            MappingState::NoRouter if !reached => out.push(Diagnosis {
                code: DiagnosisCode::NoMappingProtocol,
                problem: "this host has no IPv4 default router, so there is no router to ask for a mapping".into(),
                advice: "give the router with --router ADDR, or forward the port by hand".into(),
            }),
            MappingState::Off if failed => out.push(Diagnosis {
                code: DiagnosisCode::NotForwarded,
                problem: "port mapping is off and the check from the Internet got no answer: the port is not forwarded, or a firewall drops it".into(),
                advice: format!("forward {port_words} on the router to this host by hand, or start the gateway with --port-mapping auto"),
            }),
            _ => {}
        }
        let v4_endpoint = check.is_none_or(|c| c.endpoint.is_ipv4());
        if !out.is_empty() && v4_endpoint {
            if let Some(v6) = net.ipv6.first() {
                out.push(Diagnosis {
                    code: DiagnosisCode::Ipv6Available,
                    problem: format!("this host has a global IPv6 address, {v6}: over IPv6 there is no NAT to cross"),
                    advice: format!(
                        "prefer it: listen with --listen-udp [::]:{p} and give --public-endpoint [{v6}]:{p}, and allow UDP {p} to this host in the router's IPv6 firewall; clients on IPv6 then connect directly",
                        p = port.unwrap_or(51820)
                    ),
                });
            }
        }
    } else if failed {
        out.push(Diagnosis {
            code: DiagnosisCode::NotForwarded,
            problem: "the check from the Internet got no answer".into(),
            advice: format!("forward {port_words} on the router to the gateway's host, or run a gateway that maps its port itself"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(state: MappingState, ext: Option<&str>) -> NetworkReport {
        NetworkReport {
            port_mapping: MappingReport {
                state,
                router: Some("192.0.2.1".parse().unwrap()),
                protocol: Some(MappingProtocol::Pcp),
                router_external: ext.map(|e| e.parse().unwrap()),
                external: ext.map(|e| SocketAddr::new(e.parse().unwrap(), 51820)),
                lease_secs: Some(7200),
                error: None,
            },
            ipv6: vec![],
            control_addresses: vec![],
        }
    }

    fn check(ok: bool) -> Reachability {
        Reachability {
            endpoint: "203.0.113.18:51820".parse().unwrap(),
            reachable: ok,
            reason: (!ok).then_some(UnreachableReason::NoAnswer),
            from: None,
            rtt_ms: None,
            checked_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn codes(d: &[Diagnosis]) -> Vec<DiagnosisCode> {
        d.iter().map(|d| d.code).collect()
    }

    #[test]
    fn router_text_is_cleaned_and_bounded() {
        assert_eq!(clean_text("refused"), "refused");
        assert_eq!(
            clean_text("bad\x1b[2J\nwhat to do: run this"),
            "bad [2J what to do: run this"
        );
        let long = "x".repeat(10_000);
        let c = clean_text(&long);
        assert_eq!(c.chars().count(), MAX_FOREIGN_TEXT + 1);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn only_addresses_clients_can_use_are_reported_as_external() {
        for ok in ["203.0.113.18", "198.51.100.7", "2001:db8::1"] {
            assert!(is_reportable_external(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "10.9.0.2",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.1.1",
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_reportable_external(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn clients_are_not_told_the_hosts_ipv6_address_or_the_checks_source() {
        let mut n = net(MappingState::NoProtocol, None);
        n.ipv6 = vec!["2001:db8:30::2".parse().unwrap()];
        let mut c = check(false);
        c.from = Some("203.0.113.2".parse().unwrap());
        let view = ReachabilityView {
            diagnosis: diagnose(Some(&n), None, Some(&c)),
            check: Some(c),
        };
        assert!(codes(&view.diagnosis).contains(&DiagnosisCode::Ipv6Available));
        let client = view.for_clients();
        assert_eq!(
            codes(&client.diagnosis),
            vec![DiagnosisCode::NoMappingProtocol]
        );
        assert_eq!(client.check.unwrap().from, None);
    }

    #[test]
    fn a_good_mapping_that_is_reached_says_nothing() {
        let n = net(MappingState::Mapped, Some("203.0.113.18"));
        let o = Some("203.0.113.18".parse().unwrap());
        assert!(diagnose(Some(&n), o, Some(&check(true))).is_empty());
    }

    #[test]
    fn only_silence_is_read_as_a_network_problem() {
        let o = Some("203.0.113.18".parse().unwrap());
        for n in [
            Some(net(MappingState::Mapped, Some("203.0.113.18"))),
            Some(net(MappingState::Off, None)),
            None,
        ] {
            for reason in [
                UnreachableReason::GatewayDidNotConfirm,
                UnreachableReason::NoProbeAddress,
            ] {
                let mut c = check(false);
                c.reason = Some(reason);
                assert!(
                    diagnose(n.as_ref(), o, Some(&c)).is_empty(),
                    "{n:?} {reason:?}"
                );
            }
            // The same network with a check that got no answer is diagnosed.
            assert!(
                !diagnose(n.as_ref(), o, Some(&check(false))).is_empty(),
                "{n:?}"
            );
        }
    }

    #[test]
    fn each_network_gets_its_diagnosis() {
        let o: Option<IpAddr> = Some("203.0.113.18".parse().unwrap());
        let cases = [
            (
                net(MappingState::Mapped, Some("10.9.0.2")),
                DiagnosisCode::DoubleNat,
            ),
            (
                net(MappingState::Mapped, Some("100.72.1.2")),
                DiagnosisCode::CarrierGradeNat,
            ),
            (
                net(MappingState::Mapped, Some("198.51.100.9")),
                DiagnosisCode::DoubleNat,
            ),
            (
                net(MappingState::Refused, None),
                DiagnosisCode::CarrierGradeNat,
            ),
            (
                net(MappingState::NoProtocol, None),
                DiagnosisCode::NoMappingProtocol,
            ),
            (
                net(MappingState::Mapped, Some("203.0.113.18")),
                DiagnosisCode::Firewalled,
            ),
            (net(MappingState::Off, None), DiagnosisCode::NotForwarded),
        ];
        for (n, code) in cases {
            let d = diagnose(Some(&n), o, Some(&check(false)));
            assert_eq!(codes(&d), vec![code], "{n:?}");
            assert!(!d[0].advice.is_empty());
        }
    }

    #[test]
    fn ipv6_is_suggested_next_to_a_problem_only() {
        let mut n = net(MappingState::NoProtocol, None);
        n.ipv6 = vec!["2001:db8:10::2".parse().unwrap()];
        let d = diagnose(Some(&n), None, Some(&check(false)));
        assert_eq!(
            codes(&d),
            vec![
                DiagnosisCode::NoMappingProtocol,
                DiagnosisCode::Ipv6Available
            ]
        );
        assert!(d[1].advice.contains("[2001:db8:10::2]:51820"));
        // Forwarded by hand and reached: nothing to say, not even IPv6.
        assert!(diagnose(Some(&n), None, Some(&check(true))).is_empty());
    }

    #[test]
    fn address_classes() {
        for p in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private_address(p.parse().unwrap()), "{p}");
        }
        for p in ["203.0.113.1", "100.64.0.1", "2001:db8::1"] {
            assert!(!is_private_address(p.parse().unwrap()), "{p}");
        }
        assert!(is_shared_address("100.127.255.1".parse().unwrap()));
        assert!(!is_shared_address("100.128.0.1".parse().unwrap()));
        assert!(!is_shared_address("100.63.0.1".parse().unwrap()));
    }

    #[test]
    fn reports_round_trip_as_json() {
        let mut n = net(MappingState::Mapped, Some("203.0.113.18"));
        n.control_addresses = vec!["203.0.113.2".parse().unwrap()];
        let text = serde_json::to_string(&n).unwrap();
        assert!(text.contains("\"state\":\"mapped\""), "{text}");
        assert!(text.contains("\"protocol\":\"pcp\""), "{text}");
        let back: NetworkReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, n);
        let c = check(false);
        let back: Reachability = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
