use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// How tightly an admission is bound to the client's source address.
///
/// The control plane sees the client's address on its HTTPS connection;
/// the gateway sees the address of its UDP datagrams. Behind some NATs the
/// two differ, so the server owner picks how strictly they must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BindingPolicy {
    /// The UDP source address must equal the observed address.
    #[default]
    Exact,
    /// The UDP source address must lie in the same prefix of this length
    /// (e.g. 24 for a CGNAT pool, 64 for an IPv6 home network).
    Prefix(u8),
    /// The first valid handshake within a short window after admission
    /// pins whatever address it came from; after that it is exact.
    FirstHandshake,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("unknown binding policy '{0}': use 'exact', 'prefix:N' (e.g. prefix:24) or 'first-handshake'")]
    Unknown(String),
    #[error("prefix length {0} is out of range: use 0-32 for IPv4 and 0-128 for IPv6 addresses")]
    BadPrefix(String),
}

impl BindingPolicy {
    /// Whether `candidate` satisfies this binding against the `observed`
    /// address. `FirstHandshake` always answers true here: pinning is the
    /// gateway's job, done on the first valid handshake.
    pub fn admits(&self, observed: IpAddr, candidate: IpAddr) -> bool {
        match *self {
            BindingPolicy::Exact => observed == candidate,
            BindingPolicy::FirstHandshake => true,
            BindingPolicy::Prefix(len) => match (observed, candidate) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    let len = u32::from(len.min(32));
                    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                    u32::from(a) & mask == u32::from(b) & mask
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    let len = u32::from(len.min(128));
                    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                    u128::from(a) & mask == u128::from(b) & mask
                }
                _ => false,
            },
        }
    }

    /// The network (`addr/len`) that this policy admits for `observed`.
    /// Exact and first-handshake give a host network (/32 or /128).
    pub fn network(&self, observed: IpAddr) -> ipnet::IpNet {
        let host = match observed {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let len = match *self {
            BindingPolicy::Prefix(len) => len.min(host),
            _ => host,
        };
        ipnet::IpNet::new(observed, len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| ipnet::IpNet::from(observed))
    }
}

impl fmt::Display for BindingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingPolicy::Exact => f.write_str("exact"),
            BindingPolicy::Prefix(n) => write!(f, "prefix:{n}"),
            BindingPolicy::FirstHandshake => f.write_str("first-handshake"),
        }
    }
}

impl FromStr for BindingPolicy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s {
            "exact" => Ok(BindingPolicy::Exact),
            "first-handshake" => Ok(BindingPolicy::FirstHandshake),
            _ => {
                let n = s
                    .strip_prefix("prefix:")
                    .ok_or_else(|| PolicyError::Unknown(s.to_string()))?;
                let len: u8 = n
                    .parse()
                    .map_err(|_| PolicyError::BadPrefix(n.to_string()))?;
                if len > 128 {
                    return Err(PolicyError::BadPrefix(n.to_string()));
                }
                Ok(BindingPolicy::Prefix(len))
            }
        }
    }
}

impl Serialize for BindingPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BindingPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        for s in ["exact", "prefix:24", "prefix:64", "first-handshake"] {
            assert_eq!(s.parse::<BindingPolicy>().unwrap().to_string(), s);
        }
        assert!("prefix:200".parse::<BindingPolicy>().is_err());
        assert!("loose".parse::<BindingPolicy>().is_err());
    }

    #[test]
    fn exact_and_prefix() {
        let o = ip("203.0.113.7");
        assert!(BindingPolicy::Exact.admits(o, o));
        assert!(!BindingPolicy::Exact.admits(o, ip("203.0.113.8")));
        assert!(BindingPolicy::Prefix(24).admits(o, ip("203.0.113.200")));
        assert!(!BindingPolicy::Prefix(24).admits(o, ip("203.0.114.7")));
        assert!(!BindingPolicy::Prefix(24).admits(o, ip("2001:db8::1")));
        let o6 = ip("2001:db8:1:2::5");
        assert!(BindingPolicy::Prefix(64).admits(o6, ip("2001:db8:1:2::99")));
        assert!(!BindingPolicy::Prefix(64).admits(o6, ip("2001:db8:1:3::5")));
        assert_eq!(
            BindingPolicy::Prefix(24).network(o).to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            BindingPolicy::Exact.network(o).to_string(),
            "203.0.113.7/32"
        );
    }
}
