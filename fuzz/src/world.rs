//! The small world the gateway harnesses share: one gateway key, three
//! clients with fixed keys, preshared keys and tunnel addresses, and a
//! handful of source addresses chosen so that exact, prefix, IPv6 and
//! IPv4-mapped bindings all meet each other.

use boringtun::x25519::{PublicKey, StaticSecret};
use proto::WgKey;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

/// The gateway's inner address: services listen here.
pub const SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub const CLIENTS: usize = 3;
/// The services the gateway offers (name, port); admissions may also name
/// "ghost", which it does not offer.
pub const SERVICES: [(&str, u16); 2] = [("plex", 32400), ("jellyfin", 8096)];
pub const SERVICE_NAMES: [&str; 3] = ["plex", "jellyfin", "ghost"];

/// Sources datagrams come from. 0 and 1 share a /24, 0 and 3 are the same
/// host (3 as a dual-stack socket reports it), 4 and 5 share a /64.
pub const SOURCES: [&str; 8] = [
    "203.0.113.7",
    "203.0.113.99",
    "198.51.100.20",
    "::ffff:203.0.113.7",
    "2001:db8::7",
    "2001:db8::99",
    "2001:db8:1::7",
    "192.0.2.66",
];

pub fn source(i: u8) -> IpAddr {
    SOURCES[usize::from(i) % SOURCES.len()]
        .parse()
        .expect("a valid address")
}

pub fn source_socket(i: u8, port: u8) -> SocketAddr {
    SocketAddr::new(source(i), 40000 + u16::from(port % 4))
}

pub fn gateway_secret() -> StaticSecret {
    StaticSecret::from([0x11; 32])
}

pub fn client_secret(i: usize) -> StaticSecret {
    StaticSecret::from([0x20 + i as u8; 32])
}

pub fn client_psk(i: usize) -> [u8; 32] {
    [0x40 + i as u8; 32]
}

pub fn client_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 10 + i as u8)
}

/// Public keys are a scalar multiplication each: computed once.
pub struct Keys {
    pub gateway: PublicKey,
    pub clients: [WgKey; CLIENTS],
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        gateway: PublicKey::from(&gateway_secret()),
        clients: std::array::from_fn(|i| WgKey(PublicKey::from(&client_secret(i)).to_bytes())),
    })
}
