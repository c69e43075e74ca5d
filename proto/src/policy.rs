use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The shortest IPv4 prefix a binding may use: a /16 is already 65,536
/// addresses of one provider's pool; shorter would mean "anyone".
pub const MIN_PREFIX_V4: u8 = 16;
/// The shortest IPv6 prefix a binding may use: a /48 is the largest
/// prefix a provider delegates to one site; shorter would span many
/// customers of one provider.
pub const MIN_PREFIX_V6: u8 = 48;
/// The IPv6 length `prefix:N` (one IPv4 length) gives IPv6 sources: one
/// home LAN, the narrowest that still covers a client whose HTTPS and UDP
/// leave from different temporary (privacy) addresses of its /64.
pub const DEFAULT_PREFIX_V6: u8 = 64;

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
    /// The UDP source address must lie in the same prefix as the observed
    /// address: `v4` bits long for IPv4 clients (e.g. 24 for a CGNAT
    /// pool), `v6` for IPv6 clients (e.g. 56 for a home's delegated
    /// prefix). One length for both families would be wrong for one of
    /// them: an IPv4 /24 is a neighbourhood, an IPv6 /24 a whole provider.
    /// Text form `prefix:V4,V6`; build it with [`BindingPolicy::prefix`],
    /// which enforces the minimums.
    Prefix { v4: u8, v6: u8 },
    /// The first valid handshake within a short window after admission
    /// pins whatever address it came from; after that it is exact.
    FirstHandshake,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("unknown binding policy '{0}': use 'exact', 'prefix:V4,V6' (e.g. prefix:24,56), 'prefix:N' or 'first-handshake'")]
    Unknown(String),
    #[error("'{0}' is not a prefix length: write prefix:V4,V6 with IPv4 {MIN_PREFIX_V4}-32 and IPv6 {MIN_PREFIX_V6}-128 bits (e.g. prefix:24,56)")]
    BadPrefix(String),
    #[error("an IPv4 binding prefix must be {MIN_PREFIX_V4}-32 bits long, not {0}: a shorter one admits a large part of the Internet")]
    V4OutOfRange(u8),
    #[error("an IPv6 binding prefix must be {MIN_PREFIX_V6}-128 bits long, not {0}: a shorter one admits a large part of a provider's customers")]
    V6OutOfRange(u8),
    #[error("prefix:{0} is ambiguous: {0} bits is too long for IPv4 and shorter than the IPv6 minimum of {MIN_PREFIX_V6}; write both lengths, e.g. prefix:24,56")]
    Ambiguous(u8),
}

impl BindingPolicy {
    /// A prefix binding with one length per address family, checked
    /// against the minimums ([`MIN_PREFIX_V4`], [`MIN_PREFIX_V6`]).
    pub fn prefix(v4: u8, v6: u8) -> Result<BindingPolicy, PolicyError> {
        if !(MIN_PREFIX_V4..=32).contains(&v4) {
            return Err(PolicyError::V4OutOfRange(v4));
        }
        if !(MIN_PREFIX_V6..=128).contains(&v6) {
            return Err(PolicyError::V6OutOfRange(v6));
        }
        Ok(BindingPolicy::Prefix { v4, v6 })
    }

    /// The prefix length this binding applies to sources of `ip`'s family:
    /// the host length for exact and first-handshake bindings.
    pub fn prefix_len(&self, ip: IpAddr) -> u8 {
        match (*self, ip) {
            (BindingPolicy::Prefix { v4, .. }, IpAddr::V4(_)) => v4.min(32),
            (BindingPolicy::Prefix { v6, .. }, IpAddr::V6(_)) => v6.min(128),
            (_, IpAddr::V4(_)) => 32,
            (_, IpAddr::V6(_)) => 128,
        }
    }

    /// Whether `candidate` satisfies this binding against the `observed`
    /// address. `FirstHandshake` always answers true here: pinning is the
    /// gateway's job, done on the first valid handshake.
    pub fn admits(&self, observed: IpAddr, candidate: IpAddr) -> bool {
        match *self {
            BindingPolicy::Exact => observed == candidate,
            BindingPolicy::FirstHandshake => true,
            BindingPolicy::Prefix { .. } => {
                observed.is_ipv4() == candidate.is_ipv4()
                    && self.network(observed).contains(&candidate)
            }
        }
    }

    /// The network (`addr/len`) that this policy admits for `observed`.
    /// Exact and first-handshake give a host network (/32 or /128).
    pub fn network(&self, observed: IpAddr) -> ipnet::IpNet {
        ipnet::IpNet::new(observed, self.prefix_len(observed))
            .map(|n| n.trunc())
            .unwrap_or_else(|_| ipnet::IpNet::from(observed))
    }
}

impl fmt::Display for BindingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingPolicy::Exact => f.write_str("exact"),
            BindingPolicy::Prefix { v4, v6 } => write!(f, "prefix:{v4},{v6}"),
            BindingPolicy::FirstHandshake => f.write_str("first-handshake"),
        }
    }
}

impl FromStr for BindingPolicy {
    type Err = PolicyError;
    /// `exact`, `first-handshake`, `prefix:V4,V6`, or the short (and
    /// older) `prefix:N`: an N of 16-32 is IPv4's length and IPv6 gets
    /// [`DEFAULT_PREFIX_V6`]; an N of 48-128 is IPv6's and IPv4 stays
    /// exact (/32), which is what an older `prefix:64` always did to IPv4.
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s {
            "exact" => Ok(BindingPolicy::Exact),
            "first-handshake" => Ok(BindingPolicy::FirstHandshake),
            _ => {
                let lengths = s
                    .strip_prefix("prefix:")
                    .ok_or_else(|| PolicyError::Unknown(s.to_string()))?;
                let len = |n: &str| {
                    n.trim()
                        .parse::<u8>()
                        .map_err(|_| PolicyError::BadPrefix(n.to_string()))
                };
                match lengths.split_once(',') {
                    Some((v4, v6)) => BindingPolicy::prefix(len(v4)?, len(v6)?),
                    None => match len(lengths)? {
                        n @ 0..=32 => BindingPolicy::prefix(n, DEFAULT_PREFIX_V6),
                        n @ 33..=47 => Err(PolicyError::Ambiguous(n)),
                        n => BindingPolicy::prefix(32, n),
                    },
                }
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

    fn prefix(v4: u8, v6: u8) -> BindingPolicy {
        BindingPolicy::prefix(v4, v6).unwrap()
    }

    #[test]
    fn parses_and_prints() {
        for s in ["exact", "prefix:24,56", "prefix:32,64", "first-handshake"] {
            assert_eq!(s.parse::<BindingPolicy>().unwrap().to_string(), s);
        }
        assert_eq!("prefix:24, 56".parse(), Ok(prefix(24, 56)));
        for bad in [
            "prefix:200",
            "prefix:",
            "prefix:24,",
            "prefix:x,56",
            "loose",
        ] {
            assert!(bad.parse::<BindingPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_short_form_gives_each_family_a_sane_length() {
        // The IPv4 length an operator meant for a carrier pool no longer
        // becomes an IPv6 /24 (a whole provider).
        assert_eq!("prefix:24".parse(), Ok(prefix(24, DEFAULT_PREFIX_V6)));
        // An older IPv6 prefix keeps meaning what it did for both families.
        assert_eq!("prefix:64".parse(), Ok(prefix(32, 64)));
        assert_eq!("prefix:56".parse(), Ok(prefix(32, 56)));
        assert_eq!(
            "prefix:40".parse::<BindingPolicy>(),
            Err(PolicyError::Ambiguous(40))
        );
    }

    #[test]
    fn each_family_has_a_minimum() {
        for bad in [
            "prefix:8",
            "prefix:0",
            "prefix:15,64",
            "prefix:24,47",
            "prefix:24,16",
        ] {
            let e = bad.parse::<BindingPolicy>().unwrap_err();
            assert!(
                matches!(
                    e,
                    PolicyError::V4OutOfRange(_) | PolicyError::V6OutOfRange(_)
                ),
                "{bad}: {e}"
            );
        }
        assert!(BindingPolicy::prefix(16, 48).is_ok());
        assert!(BindingPolicy::prefix(33, 64).is_err());
        assert!(BindingPolicy::prefix(24, 129).is_err());
        // The same checks hold for whatever arrives as JSON (API, feed).
        assert!(serde_json::from_str::<BindingPolicy>("\"prefix:24,32\"").is_err());
        assert_eq!(
            serde_json::from_str::<BindingPolicy>("\"prefix:24\"").unwrap(),
            prefix(24, 64)
        );
    }

    #[test]
    fn exact_and_prefix() {
        let o = ip("203.0.113.7");
        let p = prefix(24, 56);
        assert!(BindingPolicy::Exact.admits(o, o));
        assert!(!BindingPolicy::Exact.admits(o, ip("203.0.113.8")));
        assert!(p.admits(o, ip("203.0.113.200")));
        assert!(!p.admits(o, ip("203.0.114.7")));
        assert!(!p.admits(o, ip("2001:db8::1")));
        let o6 = ip("2001:db8:1:2::5");
        assert!(p.admits(o6, ip("2001:db8:1:ff::99")));
        assert!(!p.admits(o6, ip("2001:db8:1:100::5")));
        assert!(!p.admits(o6, ip("203.0.113.7")));
        assert_eq!(p.network(o).to_string(), "203.0.113.0/24");
        assert_eq!(p.network(o6).to_string(), "2001:db8:1::/56");
        assert_eq!(
            BindingPolicy::Exact.network(o).to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(p.prefix_len(o), 24);
        assert_eq!(p.prefix_len(o6), 56);
        assert_eq!(BindingPolicy::FirstHandshake.prefix_len(o6), 128);
    }
}
