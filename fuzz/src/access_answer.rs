//! The control plane's answer to an access request, as the client shim
//! checks it before anything uses it (`client_shim::access_answer::validate_access`).
//!
//! Input: 1 byte choosing the wanted service (none, "plex", "jellyfin", or
//! the first one offered), then the JSON body. An answer that passes must
//! hold what the data path relies on: IPv4 unicast tunnel addresses that
//! differ, an admission id that is safe in a URL path, a usable gateway
//! endpoint and key, and a chosen service that was offered with a port.

use client_shim::access_answer::validate_access;
use proto::api::AccessResponse;
use std::net::IpAddr;

pub fn run(data: &[u8]) {
    let Some((&choice, json)) = data.split_first() else {
        return;
    };
    let Ok(resp) = serde_json::from_slice::<AccessResponse>(json) else {
        return;
    };
    let first = resp.services.first().map(|s| s.name.clone());
    let wanted = match choice % 4 {
        0 => None,
        1 => Some("plex".to_string()),
        2 => Some("jellyfin".to_string()),
        _ => first,
    };
    match validate_access(&resp, wanted.as_deref()) {
        Ok(p) => {
            let id = &p.admission_id;
            assert!(!id.is_empty() && id.len() <= 128);
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            for a in [p.client_address, p.service_address] {
                assert!(
                    !(a.is_unspecified()
                        || a.is_loopback()
                        || a.is_multicast()
                        || a.is_broadcast())
                );
            }
            assert_ne!(p.client_address, p.service_address);
            assert_eq!(IpAddr::V4(p.client_address), resp.client_address);
            assert_eq!(IpAddr::V4(p.service_address), resp.service_address);
            assert_ne!(p.gateway_endpoint.port(), 0);
            assert!(!p.gateway_endpoint.ip().to_canonical().is_unspecified());
            assert_ne!(p.gateway_public_key.0, [0; 32]);
            assert_ne!(p.service_port, 0);
            assert!(resp
                .services
                .iter()
                .any(|s| s.name == p.service && s.port == p.service_port));
            if let Some(w) = &wanted {
                assert_eq!(&p.service, w);
            }
            assert_eq!(p.offered.len(), resp.services.len());
        }
        Err(e) => {
            // Every refusal says what was wrong, in bounded length: an
            // answer with a huge admission id must not make a huge message.
            let text = e.to_string();
            assert!(!text.is_empty());
        }
    }
}
