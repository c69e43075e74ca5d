//! The gateway feed: how a gateway enrolls, reports itself, and learns the
//! full desired set of admissions for its server.
//!
//! The feed is level-triggered: every answer carries the whole set and a
//! version, so a lost answer or a gateway restart heals on the next poll.
//! The gateway acknowledges a version once it has applied that set.

use crate::api::{AccessMode, ServiceInfo};
use crate::{BindingPolicy, WgKey};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use time::OffsetDateTime;

/// What a gateway tells the control plane about itself, at enrollment
/// and again each time it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayReport {
    pub public_key: WgKey,
    /// The address clients send their datagrams to. When absent the
    /// control plane uses the address it sees plus `listen_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<SocketAddr>,
    pub listen_port: u16,
    pub services: Vec<ServiceInfo>,
    /// Direct (firewall-only) services: name and public TCP port.
    #[serde(default)]
    pub direct_services: Vec<ServiceInfo>,
}

/// `POST /v1/gateway/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub enrollment_token: String,
    pub report: GatewayReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub server: String,
    /// Long-lived bearer credential for the feed; shown once.
    pub credential: String,
}

/// `GET /v1/gateway/feed?after=N`: the desired state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedState {
    pub server: String,
    pub version: u64,
    /// The control plane's clock when it wrote this answer, so that the
    /// gateway turns `expires_at` into a local deadline without trusting
    /// the two clocks to agree.
    #[serde(with = "time::serde::rfc3339")]
    pub server_time: OffsetDateTime,
    /// The inner address of the gateway (services listen here).
    pub service_address: Ipv4Addr,
    pub admissions: Vec<FeedAdmission>,
}

/// One admission the gateway must enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedAdmission {
    pub id: String,
    pub mode: AccessMode,
    /// Tunnel mode only.
    pub client_public_key: Option<WgKey>,
    pub preshared_key: Option<WgKey>,
    /// The client address the control plane observed.
    pub source: IpAddr,
    pub binding: BindingPolicy,
    /// The client's inner address (tunnel mode only).
    pub client_address: Option<Ipv4Addr>,
    /// Names of the services the client may reach.
    pub services: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /v1/gateway/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedAck {
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_round_trips_real_json() {
        let json = r#"{
            "server": "living-room",
            "version": 7,
            "server_time": "2026-11-25T20:00:00Z",
            "service_address": "100.64.0.1",
            "admissions": [{
                "id": "adm_1",
                "mode": "tunnel",
                "client_public_key": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
                "preshared_key": null,
                "source": "203.0.113.7",
                "binding": "prefix:24",
                "client_address": "100.64.0.2",
                "services": ["plex"],
                "expires_at": "2026-11-25T21:00:00Z"
            }]
        }"#;
        let state: FeedState = serde_json::from_str(json).unwrap();
        assert_eq!(state.admissions[0].binding, BindingPolicy::Prefix(24));
        let again: FeedState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(again.admissions, state.admissions);
    }
}
