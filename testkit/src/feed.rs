//! Feed builders: the admissions, whole sets and diffs a control plane
//! would send, with the values every test shares (server `den`, service
//! `plex`, the service address 100.64.0.1) so that a test states only
//! what it is about, with struct update syntax:
//!
//! ```
//! use hushgate_testkit::feed;
//! use proto::{feed::FeedAdmission, BindingPolicy, WgKey};
//! let a = FeedAdmission {
//!     binding: BindingPolicy::prefix(24, 56).unwrap(),
//!     ..feed::tunnel("adm_1", WgKey([1; 32]), feed::ip("203.0.113.7"))
//! };
//! let whole = feed::state(1, vec![a]);
//! assert_eq!(whole.server, "den");
//! ```
//!
//! Only `proto` types: the gateway's unit tests use this module too, and
//! there only `proto`'s types are the same types as the kit's.

use proto::api::AccessMode;
use proto::feed::{FeedAdmission, FeedState, FeedUpdate};
use proto::{BindingPolicy, WgKey};
use std::net::{IpAddr, Ipv4Addr};
use time::OffsetDateTime;

/// The control plane's clock in answers built here (a fixed instant, so
/// that tests never depend on today's date).
pub const SERVER_TIME: OffsetDateTime = time::macros::datetime!(2026-11-25 20:00 UTC);

/// The gateway's inner address, where services listen.
pub const SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// The client's inner address in [`tunnel`] admissions.
pub const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// `s` as an address; panics on a typo in a test.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

/// A tunnel admission for `key` observed at `source`: exact binding,
/// inner address [`CLIENT_ADDRESS`], service `plex`, no preshared key,
/// expiring an hour after [`SERVER_TIME`].
pub fn tunnel(id: &str, key: WgKey, source: IpAddr) -> FeedAdmission {
    FeedAdmission {
        id: id.into(),
        mode: AccessMode::Tunnel,
        client_public_key: Some(key),
        preshared_key: None,
        source,
        binding: BindingPolicy::Exact,
        client_address: Some(CLIENT_ADDRESS),
        services: vec!["plex".into()],
        expires_at: SERVER_TIME + time::Duration::hours(1),
    }
}

/// A direct admission (no tunnel: no key, no inner address) from
/// `source`, otherwise as [`tunnel`].
pub fn direct(id: &str, source: IpAddr) -> FeedAdmission {
    FeedAdmission {
        mode: AccessMode::Direct,
        client_public_key: None,
        client_address: None,
        ..tunnel(id, WgKey([0; 32]), source)
    }
}

/// The whole set `admissions` at `version` of server `den`, written at
/// [`SERVER_TIME`].
pub fn state(version: u64, admissions: Vec<FeedAdmission>) -> FeedState {
    FeedState {
        server: "den".into(),
        version,
        server_time: SERVER_TIME,
        service_address: SERVICE_ADDRESS,
        admissions,
    }
}

/// An empty answer of the diff feed at `version`: a whole set when `base`
/// is `None`, else a diff from `base`; fill in `admissions` and `removed`.
pub fn update(version: u64, base: Option<u64>) -> FeedUpdate {
    FeedUpdate {
        server: "den".into(),
        version,
        server_time: SERVER_TIME,
        service_address: SERVICE_ADDRESS,
        base,
        admissions: vec![],
        removed: vec![],
        reachability: None,
    }
}
