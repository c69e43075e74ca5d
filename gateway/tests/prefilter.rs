//! The kernel pre-filter against the real kernel: nftables and netlink in
//! a network namespace made for this test (and deleted after it), with
//! datagrams and TCP connections from addresses on its loopback device.
//!
//! Needs root (namespaces, nftables). As another user the test says so and
//! passes without checking anything; the test runner (`tests/run-all.sh`)
//! and CI run it as root.

use hushgate_gateway::filter::{self, Filter};
use proto::api::AccessMode;
use proto::feed::{FeedAdmission, FeedState};
use proto::{BindingPolicy, WgKey};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const INSIDE: &str = "HUSHGATE_PREFILTER_NETNS";

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs [`inside_a_namespace`] in a namespace of its own.
#[test]
fn kernel_prefilter_in_a_namespace() {
    if !is_root() {
        eprintln!("skipped: the kernel pre-filter test needs root (network namespaces, nftables)");
        return;
    }
    let ns = Namespace(format!("hgpf{}", std::process::id()));
    sh("ip", &["netns", "add", &ns.0]);
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args([
            "--exact",
            "inside_a_namespace",
            "--include-ignored",
            "--nocapture",
        ])
        .env(INSIDE, "1")
        .status()
        .unwrap();
    assert!(status.success(), "the test inside the namespace failed");
}

const GW4: &str = "192.0.2.1";
const GW6: &str = "2001:db8::1";

struct Probe {
    gw: UdpSocket,
    n: u32,
}

impl Probe {
    /// Whether a datagram from `source` reaches the gateway's socket.
    fn reaches(&mut self, source: &str) -> bool {
        let source: IpAddr = source.parse().unwrap();
        let dst: IpAddr = if source.is_ipv6() { GW6 } else { GW4 }.parse().unwrap();
        let port = self.gw.local_addr().unwrap().port();
        let s = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
        self.n += 1;
        let msg = format!("probe {}", self.n);
        s.send_to(msg.as_bytes(), SocketAddr::new(dst, port))
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            match self.gw.recv_from(&mut buf) {
                Ok((len, from)) if &buf[..len] == msg.as_bytes() => {
                    assert_eq!(from.ip().to_canonical(), source);
                    return true;
                }
                Ok(_) => continue, // an earlier probe, late
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// Whether a datagram from `source` to UDP `port` is answered with ICMP
/// port unreachable (seen as a refused connection on a connected socket).
fn refused(source: &str, port: u16) -> bool {
    let s = UdpSocket::bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    s.connect(SocketAddr::new(GW4.parse().unwrap(), port))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _ = s.send(b"probe");
    let mut buf = [0u8; 16];
    matches!(s.recv(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

/// Whether a TCP connection from `source` to the direct port opens; a
/// filtered one must time out (no reset, no ICMP).
fn connects(source: &str, port: u16) -> bool {
    let source: IpAddr = source.parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
    let dst = SocketAddr::new(GW4.parse().unwrap(), port);
    match sock.connect_timeout(&dst.into(), Duration::from_millis(400)) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("a filtered connection must time out, not fail with: {e}"),
    }
}

struct Feed {
    admissions: Vec<FeedAdmission>,
    version: u64,
}

impl Feed {
    fn add(&mut self, id: &str, mode: AccessMode, source: &str, binding: BindingPolicy, secs: i64) {
        self.admissions.retain(|a| a.id != id);
        self.admissions.push(FeedAdmission {
            id: id.into(),
            mode,
            client_public_key: (mode == AccessMode::Tunnel).then_some(WgKey([id.len() as u8; 32])),
            preshared_key: None,
            source: source.parse().unwrap(),
            binding,
            client_address: (mode == AccessMode::Tunnel).then_some(Ipv4Addr::new(100, 64, 0, 2)),
            services: vec!["plex".into()],
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(secs),
        });
    }

    fn remove(&mut self, id: &str) {
        self.admissions.retain(|a| a.id != id);
    }

    fn apply(&mut self, f: &mut Filter) {
        self.version += 1;
        let state = FeedState {
            server: "den".into(),
            version: self.version,
            server_time: OffsetDateTime::now_utc(),
            service_address: Ipv4Addr::new(100, 64, 0, 1),
            admissions: self.admissions.clone(),
        };
        let t = Instant::now();
        let errors = f
            .apply(&state, Instant::now())
            .expect("the kernel took the change");
        assert!(errors.is_empty(), "{errors:?}");
        eprintln!(
            "  version {}: {} admissions applied in {:?}",
            self.version,
            self.admissions.len(),
            t.elapsed()
        );
    }
}

#[test]
#[ignore = "runs inside the namespace that kernel_prefilter_in_a_namespace makes"]
fn inside_a_namespace() {
    assert!(
        std::env::var(INSIDE).is_ok(),
        "run through kernel_prefilter_in_a_namespace, not directly"
    );
    sh("ip", &["link", "set", "lo", "up"]);
    for a in [
        "192.0.2.1/32",
        "192.0.2.77/32",
        "198.51.100.7/32",
        "198.51.100.8/32",
        "203.0.113.9/32",
    ] {
        sh("ip", &["addr", "add", a, "dev", "lo"]);
    }
    for a in [
        "2001:db8::1/128",
        "2001:db8::7/128",
        "2001:db8::8/128",
        "2001:db8:1:ff::9/128",
        "2001:db8:1:100::9/128",
    ] {
        sh("ip", &["addr", "add", a, "dev", "lo", "nodad"]);
    }
    let gw = UdpSocket::bind("[::]:0").unwrap();
    gw.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let udp_port = gw.local_addr().unwrap().port();
    let mut probe = Probe { gw, n: 0 };
    let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in tcp.incoming() {});

    // Without the filter, anyone reaches the port (the probe works).
    assert!(probe.reaches("203.0.113.9"));
    assert!(connects("198.51.100.8", tcp_port));

    let mut f = Filter::install(
        udp_port,
        HashMap::from([("plex".to_string(), tcp_port)]),
        Duration::from_secs(30),
    )
    .expect("the filter installs as root");
    let table = filter::table_name(udp_port);
    assert!(filter::tables().unwrap().contains(&table));
    let mut feed = Feed {
        admissions: Vec::new(),
        version: 0,
    };

    // Empty: nobody, on either port.
    feed.apply(&mut f);
    assert!(!probe.reaches("198.51.100.7"));
    assert!(!probe.reaches("2001:db8::7"));
    assert!(!connects("198.51.100.7", tcp_port));

    // Exact, prefix and IPv6 admissions admit exactly their sources.
    feed.add(
        "a",
        AccessMode::Tunnel,
        "198.51.100.7",
        BindingPolicy::Exact,
        600,
    );
    feed.add(
        "b",
        AccessMode::Tunnel,
        "203.0.113.200",
        BindingPolicy::prefix(24, 56).unwrap(),
        600,
    );
    feed.add(
        "c",
        AccessMode::Tunnel,
        "2001:db8::7",
        BindingPolicy::Exact,
        600,
    );
    // One server's `prefix:24,56` for an IPv6 client: its /56, not a /24.
    feed.add(
        "v6p",
        AccessMode::Tunnel,
        "2001:db8:1:2::5",
        "prefix:24,56".parse().unwrap(),
        600,
    );
    feed.apply(&mut f);
    assert!(probe.reaches("198.51.100.7"));
    assert!(!probe.reaches("198.51.100.8"));
    assert!(probe.reaches("203.0.113.9"));
    assert!(probe.reaches("2001:db8::7"));
    assert!(!probe.reaches("2001:db8::8"));
    assert!(probe.reaches("2001:db8:1:ff::9"));
    assert!(
        !probe.reaches("2001:db8:1:100::9"),
        "an IPv6 source outside the client's /56 reached the port"
    );
    feed.remove("v6p");
    // Tunnel admissions do not open the direct port.
    assert!(!connects("198.51.100.7", tcp_port));

    // A revocation closes the source at once; a renewal (delete and
    // re-add in one transaction) never does.
    feed.remove("a");
    feed.add(
        "b",
        AccessMode::Tunnel,
        "203.0.113.200",
        BindingPolicy::prefix(24, 56).unwrap(),
        1200,
    );
    feed.apply(&mut f);
    assert!(!probe.reaches("198.51.100.7"));
    assert!(probe.reaches("203.0.113.9"));

    // Direct: the TCP port opens to the admitted source only; others time
    // out (no reset).
    feed.add(
        "d",
        AccessMode::Direct,
        "198.51.100.7",
        BindingPolicy::Exact,
        600,
    );
    feed.apply(&mut f);
    assert!(connects("198.51.100.7", tcp_port));
    assert!(!connects("198.51.100.8", tcp_port));
    assert!(
        !probe.reaches("198.51.100.7"),
        "a direct admission opens no tunnel"
    );

    // The kernel forgets an expired admission by itself.
    feed.add(
        "e",
        AccessMode::Tunnel,
        "198.51.100.8",
        BindingPolicy::Exact,
        2,
    );
    feed.apply(&mut f);
    assert!(probe.reaches("198.51.100.8"));
    std::thread::sleep(Duration::from_millis(2300));
    assert!(!probe.reaches("198.51.100.8"));
    feed.remove("e");
    feed.apply(&mut f);

    // First-handshake: open to everyone until pinned, then the pinned
    // source only.
    feed.add(
        "fh",
        AccessMode::Tunnel,
        "198.51.100.7",
        BindingPolicy::FirstHandshake,
        600,
    );
    feed.apply(&mut f);
    assert!(f.status().open);
    assert!(probe.reaches("192.0.2.77"));
    // ...but only while a socket is bound: a stopped gateway's port stays
    // dark even now (the kernel would answer a closed port with ICMP).
    let spare = UdpSocket::bind("0.0.0.0:0").unwrap();
    let closed_port = spare.local_addr().unwrap().port();
    drop(spare);
    assert!(
        refused("192.0.2.77", closed_port),
        "the ICMP check itself must see a closed port's answer"
    );
    let gw_port = probe.gw.local_addr().unwrap().port();
    let held = std::mem::replace(&mut probe.gw, UdpSocket::bind("0.0.0.0:0").unwrap());
    drop(held);
    assert!(
        !refused("192.0.2.77", gw_port),
        "the open port answered with the gateway stopped"
    );
    probe.gw = UdpSocket::bind(SocketAddr::from(([0u16; 8], gw_port))).unwrap();
    probe
        .gw
        .set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    assert!(probe.reaches("192.0.2.77"));
    assert!(f.pin("fh", "198.51.100.8".parse().unwrap()).unwrap());
    assert!(!f.pin("fh", "198.51.100.8".parse().unwrap()).unwrap());
    assert!(!f.status().open);
    assert!(!probe.reaches("192.0.2.77"));
    assert!(probe.reaches("198.51.100.8"));

    // Someone deletes an element behind the gateway's back: the next
    // change to it fails in the kernel, and the filter rebuilds its sets.
    sh(
        "nft",
        &[
            "delete",
            "element",
            "inet",
            &table,
            "t4_24",
            "{ 203.0.113.0 }",
        ],
    );
    assert!(!probe.reaches("203.0.113.9"));
    feed.add(
        "b",
        AccessMode::Tunnel,
        "203.0.113.200",
        BindingPolicy::prefix(24, 56).unwrap(),
        1800,
    );
    feed.apply(&mut f);
    assert!(probe.reaches("203.0.113.9"));
    assert!(probe.reaches("198.51.100.8"));
    assert!(probe.reaches("2001:db8::7"));
    assert!(f.status().last_error.is_none());

    // The table deleted under a running gateway (a firewall reload that
    // flushed the ruleset): the next change creates it again.
    sh("nft", &["delete", "table", "inet", &table]);
    assert!(probe.reaches("192.0.2.77"));
    feed.remove("e");
    feed.add(
        "g",
        AccessMode::Tunnel,
        "198.51.100.7",
        BindingPolicy::Exact,
        60,
    );
    let g = feed.admissions.last().unwrap().clone();
    f.apply_diff(&[g], &[], OffsetDateTime::now_utc(), Instant::now())
        .expect("the table is created again");
    assert!(!probe.reaches("192.0.2.77"));
    assert!(probe.reaches("198.51.100.7"));
    assert!(probe.reaches("203.0.113.9"));
    assert!(probe.reaches("2001:db8::7"));
    assert!(connects("198.51.100.7", tcp_port));
    feed.remove("g");
    feed.apply(&mut f);

    // The table outlives the filter (and the process); removing it by
    // hand opens the ports to the kernel's usual answers again.
    drop(f);
    assert!(!probe.reaches("192.0.2.77"));
    assert!(filter::remove_table(udp_port).unwrap());
    assert!(!filter::remove_table(udp_port).unwrap());
    assert!(probe.reaches("192.0.2.77"));

    // A restarted gateway starts from an empty table and rebuilds it.
    feed.remove("fh");
    let mut f = Filter::install(
        udp_port,
        HashMap::from([("plex".to_string(), tcp_port)]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!probe.reaches("198.51.100.8"));
    feed.apply(&mut f);
    assert!(probe.reaches("203.0.113.9"));
    assert!(probe.reaches("2001:db8::7"));
    assert!(connects("198.51.100.7", tcp_port));
    assert!(!probe.reaches("198.51.100.8"));

    // Many admissions at once (larger than one netlink batch), then one
    // more: the one change is small.
    for i in 0..3000u32 {
        let ip = Ipv4Addr::from(0xC633_0000 + i); // 198.51.0.0 + i
        feed.add(
            &format!("m{i}"),
            AccessMode::Tunnel,
            &ip.to_string(),
            BindingPolicy::Exact,
            600,
        );
    }
    feed.apply(&mut f);
    assert_eq!(f.status().elements, 3000 + 3);
    feed.add(
        "last",
        AccessMode::Tunnel,
        "198.51.100.7",
        BindingPolicy::Exact,
        600,
    );
    feed.apply(&mut f);
    assert!(probe.reaches("198.51.100.7"));
    filter::remove_table(udp_port).unwrap();
}
