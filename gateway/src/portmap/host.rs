//! What the host knows about its own network: its IPv4 default router
//! (`/proc/net/route`), the local address it uses towards it, its global
//! IPv6 addresses (`/proc/net/if_inet6`), and the control plane's
//! addresses. Parsing is separate from reading so it is tested on text.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The IPv4 default router in `/proc/net/route` text: the gateway of the
/// `0.0.0.0/0` route with the lowest metric. Fields are hexadecimal in
/// the host's byte order (little-endian on every Linux this runs on).
pub fn default_router_in(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let dest = u32::from_str_radix(f[1], 16).ok()?;
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            (dest == 0 && mask == 0 && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY)
                .then(|| (metric, Ipv4Addr::from(gw.to_le_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

/// The host's IPv4 default router.
pub fn default_router() -> Option<Ipv4Addr> {
    default_router_in(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// The local address the kernel picks towards `router` (a connected UDP
/// socket sends nothing).
pub fn local_address_towards(router: IpAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match router {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect((router, 5351))?;
    Ok(s.local_addr()?.ip())
}

/// Global IPv6 addresses in `/proc/net/if_inet6` text: scope global,
/// not unique-local, not temporary (privacy addresses change), not
/// tentative or deprecated.
pub fn global_ipv6_in(text: &str) -> Vec<Ipv6Addr> {
    const IFA_F_TEMPORARY: u32 = 0x01;
    const IFA_F_DEPRECATED: u32 = 0x20;
    const IFA_F_TENTATIVE: u32 = 0x40;
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[0].len() != 32 {
                return None;
            }
            let bits = u128::from_str_radix(f[0], 16).ok()?;
            let scope = u32::from_str_radix(f[3], 16).ok()?;
            let flags = u32::from_str_radix(f[4], 16).ok()?;
            let ip = Ipv6Addr::from(bits);
            let unique_local = (ip.segments()[0] & 0xfe00) == 0xfc00;
            (scope == 0
                && !unique_local
                && flags & (IFA_F_TEMPORARY | IFA_F_DEPRECATED | IFA_F_TENTATIVE) == 0)
                .then_some(ip)
        })
        .collect()
}

pub fn global_ipv6() -> Vec<Ipv6Addr> {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| global_ipv6_in(&t))
        .unwrap_or_default()
}

/// The host and port of an `https://HOST[:PORT]/...` URL.
pub fn url_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(443), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), 443)),
    }
}

/// The control plane's addresses as this host reaches them: the first of
/// each family its name resolves to. A reachability check comes from
/// there, so the check's one-off admission is bound to it.
pub async fn control_addresses(url: &str) -> Vec<IpAddr> {
    let Some((host, port)) = url_host_port(url) else {
        return Vec::new();
    };
    let found: Vec<IpAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addrs) => addrs.map(|a| a.ip().to_canonical()).collect(),
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    if let Some(v4) = found.iter().find(|a| a.is_ipv4()) {
        out.push(*v4);
    }
    if let Some(v6) = found.iter().find(|a| a.is_ipv6()) {
        out.push(*v6);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_router_is_the_cheapest_default_route() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
";
        assert_eq!(default_router_in(text), Some(Ipv4Addr::new(192, 0, 2, 1)));
        let none = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_router_in(none), None);
    }

    #[test]
    fn global_ipv6_addresses_only() {
        let text = "\
20010db8001000000000000000000002 02 40 00 80     eth0
fe800000000000000000000000000001 02 40 20 80     eth0
fd000000000000000000000000000001 02 40 00 80     eth0
20010db8001000000000000000000003 02 40 00 01     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8002000000000000000000002 03 40 00 80     eth1
";
        assert_eq!(
            global_ipv6_in(text),
            vec![
                "2001:db8:10::2".parse::<Ipv6Addr>().unwrap(),
                "2001:db8:20::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn control_urls() {
        assert_eq!(
            url_host_port("https://203.0.113.2:8443"),
            Some(("203.0.113.2".into(), 8443))
        );
        assert_eq!(
            url_host_port("https://[2001:db8:1::2]:8443/x"),
            Some(("2001:db8:1::2".into(), 8443))
        );
        assert_eq!(
            url_host_port("https://control.example.net"),
            Some(("control.example.net".into(), 443))
        );
        assert_eq!(url_host_port("http://x"), None);
    }
}
