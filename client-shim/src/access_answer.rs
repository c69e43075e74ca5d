//! Turning the control plane's access answer into tunnel parameters.
//!
//! The answer comes from the network, so nothing in it is used before it
//! is checked here: the addresses must be what the gateway's data path can
//! carry (IPv4 unicast inside the tunnel), the wanted service must be on
//! offer, and the admission id must be safe to put into a URL path (renew
//! and revoke are `/v1/admissions/{id}/...`). Key lengths and base64 are
//! already enforced by `WgKey`'s decoding.

use proto::api::AccessResponse;
use proto::WgKey;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use time::OffsetDateTime;

/// What the data path needs from one admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelParams {
    /// The control plane's id of this admission (for renew and revoke).
    pub admission_id: String,
    /// Where the gateway listens for WireGuard datagrams.
    pub gateway_endpoint: SocketAddr,
    /// The gateway's static public key.
    pub gateway_public_key: WgKey,
    /// Optional preshared key mixed into the handshake.
    pub preshared_key: Option<WgKey>,
    /// Our address inside the tunnel: the source of every inner packet.
    pub client_address: Ipv4Addr,
    /// The gateway's address inside the tunnel.
    pub service_address: Ipv4Addr,
    /// The chosen service's name and port at `service_address`.
    pub service: String,
    pub service_port: u16,
    /// Every service the admission allows, for messages.
    pub offered: Vec<String>,
    pub expires_at: OffsetDateTime,
}

impl TunnelParams {
    /// `service_address:service_port`, where every local connection goes.
    pub fn service_socket(&self) -> SocketAddr {
        SocketAddr::from((self.service_address, self.service_port))
    }
}

/// What is wrong with an access answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("admission id '{0}' is empty, too long or holds characters other than letters, digits, '_' and '-'")]
    BadAdmissionId(String),
    #[error("the {what} {addr} is not an IPv4 unicast address (hushgate tunnels carry IPv4 only)")]
    NotIpv4Unicast { what: &'static str, addr: IpAddr },
    #[error("the client and service addresses are both {0}")]
    SameAddresses(Ipv4Addr),
    #[error("the gateway endpoint {0} is not a usable address and port")]
    BadEndpoint(SocketAddr),
    #[error("the gateway public key is all zeros")]
    ZeroKey,
    #[error("the admission allows no service at all; ask the server's owner to check the grant and the gateway's services")]
    NoServices,
    #[error("service '{name}' has port 0")]
    ZeroPort { name: String },
    #[error("service '{wanted}' is not offered to you; this admission allows: {}", offered.join(", "))]
    ServiceNotOffered {
        wanted: String,
        offered: Vec<String>,
    },
}

const MAX_ID_LEN: usize = 128;

/// Checks an access answer and picks the service: `wanted` by name, or
/// the first one listed.
pub fn validate_access(
    resp: &AccessResponse,
    wanted: Option<&str>,
) -> Result<TunnelParams, AnswerError> {
    let id = &resp.admission_id;
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(AnswerError::BadAdmissionId(id.chars().take(64).collect()));
    }
    let client_address = inner_v4("client address", resp.client_address)?;
    let service_address = inner_v4("service address", resp.service_address)?;
    if client_address == service_address {
        return Err(AnswerError::SameAddresses(client_address));
    }
    let ep = resp.gateway_endpoint;
    let ip = ep.ip().to_canonical();
    if ep.port() == 0 || ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip) {
        return Err(AnswerError::BadEndpoint(ep));
    }
    if resp.gateway_public_key.0 == [0; 32] {
        return Err(AnswerError::ZeroKey);
    }
    if resp.services.is_empty() {
        return Err(AnswerError::NoServices);
    }
    let offered: Vec<String> = resp.services.iter().map(|s| s.name.clone()).collect();
    let chosen = match wanted {
        Some(w) => resp.services.iter().find(|s| s.name == w).ok_or_else(|| {
            AnswerError::ServiceNotOffered {
                wanted: w.into(),
                offered: offered.clone(),
            }
        })?,
        None => &resp.services[0],
    };
    if chosen.port == 0 {
        return Err(AnswerError::ZeroPort {
            name: chosen.name.clone(),
        });
    }
    Ok(TunnelParams {
        admission_id: id.clone(),
        gateway_endpoint: ep,
        gateway_public_key: resp.gateway_public_key,
        preshared_key: resp.preshared_key,
        client_address,
        service_address,
        service: chosen.name.clone(),
        service_port: chosen.port,
        offered,
        expires_at: resp.expires_at,
    })
}

fn inner_v4(what: &'static str, addr: IpAddr) -> Result<Ipv4Addr, AnswerError> {
    match addr {
        IpAddr::V4(v4)
            if !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()) =>
        {
            Ok(v4)
        }
        _ => Err(AnswerError::NotIpv4Unicast { what, addr }),
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// What the control plane's answer says about the gateway's reachability,
/// as lines to show: present when its last check of the gateway's
/// endpoint failed (the tunnel will probably not come up), with each
/// problem and what the owner can do.
pub fn reachability_warnings(resp: &AccessResponse) -> Vec<String> {
    let Some(view) = &resp.gateway_reachability else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(c) = &view.check {
        out.push(format!(
            "the control plane could not reach this server's gateway: {}",
            c.summary()
        ));
    }
    for d in &view.diagnosis {
        out.push(format!(
            "{} (what the server's owner can do: {})",
            d.problem, d.advice
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::ServiceInfo;

    fn good() -> AccessResponse {
        serde_json_like()
    }

    /// The example answer of docs/api.md.
    fn serde_json_like() -> AccessResponse {
        AccessResponse {
            admission_id: "adm_3f1c".into(),
            gateway_endpoint: "198.51.100.10:51820".parse().unwrap(),
            gateway_public_key: WgKey([7; 32]),
            client_address: "100.64.0.2".parse().unwrap(),
            service_address: "100.64.0.1".parse().unwrap(),
            services: vec![
                ServiceInfo {
                    name: "plex".into(),
                    port: 32400,
                },
                ServiceInfo {
                    name: "jellyfin".into(),
                    port: 8096,
                },
            ],
            preshared_key: Some(WgKey([9; 32])),
            expires_at: time::macros::datetime!(2026-11-25 21:00 UTC),
            gateway_reachability: None,
        }
    }

    #[test]
    fn a_good_answer_picks_the_first_or_the_named_service() {
        let p = validate_access(&good(), None).unwrap();
        assert_eq!(p.service, "plex");
        assert_eq!(p.service_socket(), "100.64.0.1:32400".parse().unwrap());
        assert_eq!(p.client_address, Ipv4Addr::new(100, 64, 0, 2));
        let p = validate_access(&good(), Some("jellyfin")).unwrap();
        assert_eq!((p.service.as_str(), p.service_port), ("jellyfin", 8096));
        assert_eq!(p.offered, vec!["plex", "jellyfin"]);
    }

    #[test]
    fn a_service_not_on_offer_names_the_ones_that_are() {
        let e = validate_access(&good(), Some("emby")).unwrap_err();
        assert!(matches!(e, AnswerError::ServiceNotOffered { .. }));
        let text = e.to_string();
        assert!(
            text.contains("'emby'") && text.contains("plex, jellyfin"),
            "{text}"
        );
    }

    #[test]
    fn non_ipv4_or_odd_inner_addresses_are_refused() {
        for bad in [
            "fd00::2",
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            let mut r = good();
            r.client_address = bad.parse().unwrap();
            assert!(
                matches!(
                    validate_access(&r, None),
                    Err(AnswerError::NotIpv4Unicast {
                        what: "client address",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let mut r = good();
        r.service_address = "fd00::1".parse().unwrap();
        assert!(matches!(
            validate_access(&r, None),
            Err(AnswerError::NotIpv4Unicast {
                what: "service address",
                ..
            })
        ));
        let mut r = good();
        r.service_address = r.client_address;
        assert!(matches!(
            validate_access(&r, None),
            Err(AnswerError::SameAddresses(_))
        ));
    }

    #[test]
    fn zero_services_zero_ports_and_bad_endpoints_are_refused() {
        let mut r = good();
        r.services.clear();
        assert_eq!(validate_access(&r, None), Err(AnswerError::NoServices));
        let mut r = good();
        r.services[0].port = 0;
        assert!(matches!(
            validate_access(&r, None),
            Err(AnswerError::ZeroPort { .. })
        ));
        for ep in [
            "0.0.0.0:51820",
            "198.51.100.10:0",
            "224.1.1.1:51820",
            "[::]:1",
        ] {
            let mut r = good();
            r.gateway_endpoint = ep.parse().unwrap();
            assert!(
                matches!(validate_access(&r, None), Err(AnswerError::BadEndpoint(_))),
                "{ep}"
            );
        }
        let mut r = good();
        r.gateway_public_key = WgKey([0; 32]);
        assert_eq!(validate_access(&r, None), Err(AnswerError::ZeroKey));
    }

    #[test]
    fn admission_ids_that_could_escape_the_url_path_are_refused() {
        for bad in [
            "",
            "../admin/users",
            "adm 1",
            "adm%2f",
            "a/b",
            &"x".repeat(129),
        ] {
            let mut r = good();
            r.admission_id = bad.into();
            assert!(
                matches!(
                    validate_access(&r, None),
                    Err(AnswerError::BadAdmissionId(_))
                ),
                "{bad}"
            );
        }
    }
}
