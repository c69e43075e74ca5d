//! The kernel pre-filter against the real kernel: nftables and netlink in
//! a network namespace made for this test (and deleted after it), with
//! datagrams and TCP connections from addresses on its loopback device.
//!
//! Needs root (namespaces, nftables). As another user the test says so and
//! passes without checking anything; the test runner (`tests/run-all.sh`)
//! and CI run it as root.

use hushgate_gateway::filter::{self, Filter};
use hushgate_gateway::FeedChangeRef;
use proto::api::AccessMode;
use proto::feed::{FeedAdmission, FeedState};
use proto::{BindingPolicy, WgKey};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::feed;
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
        let source = feed::ip(source);
        let admission = match mode {
            AccessMode::Tunnel => feed::tunnel(id, WgKey([id.len() as u8; 32]), source),
            AccessMode::Direct => feed::direct(id, source),
        };
        self.admissions.push(FeedAdmission {
            binding,
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(secs),
            ..admission
        });
    }

    fn remove(&mut self, id: &str) {
        self.admissions.retain(|a| a.id != id);
    }

    fn apply(&mut self, f: &mut Filter) {
        self.version += 1;
        let state = FeedState {
            server_time: OffsetDateTime::now_utc(),
            ..feed::state(self.version, self.admissions.clone())
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
    let header = FeedState {
        server: "den".into(),
        version: feed.version + 1,
        server_time: OffsetDateTime::now_utc(),
        service_address: Ipv4Addr::new(100, 64, 0, 1),
        admissions: vec![],
    };
    f.apply(FeedChangeRef::diff(&header, &[g], &[]), Instant::now())
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

    // A stopping gateway closes the open port for good: a feed change or
    // a pin still under way takes the lock after the close and must not
    // open it again (with no gateway listening, the kernel would answer
    // with ICMP port-unreachable).
    feed.add(
        "fh2",
        AccessMode::Tunnel,
        "198.51.100.9",
        BindingPolicy::FirstHandshake,
        600,
    );
    feed.apply(&mut f);
    assert!(f.status().open);
    assert!(probe.reaches("192.0.2.77"));
    f.close_open().unwrap();
    assert!(!f.status().open);
    assert!(!probe.reaches("192.0.2.77"));
    feed.add(
        "fh3",
        AccessMode::Tunnel,
        "198.51.100.10",
        BindingPolicy::FirstHandshake,
        600,
    );
    feed.apply(&mut f);
    assert!(!f.pin("fh2", "198.51.100.9".parse().unwrap()).unwrap());
    assert!(!f.status().open);
    assert!(!probe.reaches("192.0.2.77"));
    filter::remove_table(udp_port).unwrap();
}

// ------------------------------------------------------------ fragments

const FRAGMENTS_INSIDE: &str = "HUSHGATE_FRAGMENTS_NETNS";
const FRAGMENT_PROBE: &str = "HUSHGATE_FRAGMENT_PROBE";
const GW_FRAG4: &str = "192.0.2.1";
const GW_FRAG6: &str = "2001:db8::1";
const STRANGER4: &str = "192.0.2.66";
const STRANGER6: &str = "2001:db8::66";

/// Lone IP fragments where connection tracking is loaded (Docker, ufw and
/// firewalld load it): the kernel reassembles before the pre-filter's
/// usual hook, and a first fragment that never completes is answered
/// with ICMP "fragment reassembly time exceeded". Two namespaces joined by
/// a veth link (the fragments must arrive from outside: on loopback the
/// sender's own output path would reassemble them), conntrack active in
/// the gateway's, reassembly timeouts lowered to a second there.
#[test]
fn lone_fragments_in_namespaces() {
    if !is_root() {
        eprintln!("skipped: the fragment test needs root (network namespaces, nftables)");
        return;
    }
    let gw = Namespace(format!("hgfg{}", std::process::id()));
    let stranger = Namespace(format!("hgfs{}", std::process::id()));
    for n in [&gw, &stranger] {
        sh("ip", &["netns", "add", &n.0]);
    }
    let (a, b) = (format!("{}a", gw.0), format!("{}b", gw.0));
    sh(
        "ip",
        &["link", "add", &a, "type", "veth", "peer", "name", &b],
    );
    sh("ip", &["link", "set", &a, "netns", &gw.0]);
    sh("ip", &["link", "set", &b, "netns", &stranger.0]);
    for (n, dev, v4, v6) in [
        (&gw, &a, GW_FRAG4, GW_FRAG6),
        (&stranger, &b, STRANGER4, STRANGER6),
    ] {
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &n.0];
            all.extend_from_slice(args);
            sh("ip", &all);
        };
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ]);
        inside(&["ip", "link", "set", dev, "up"]);
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &gw.0])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fragments_inside_a_namespace",
            "--include-ignored",
            "--nocapture",
        ])
        .env(FRAGMENTS_INSIDE, &stranger.0)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the fragment test inside the namespace failed"
    );
}

/// What the stranger's namespace saw after sending fragments.
#[derive(Debug, Default, PartialEq, Eq)]
struct ProbeSaw {
    /// Any ICMP from the gateway's address (neighbour discovery aside).
    icmp: u32,
    /// Of which "fragment reassembly time exceeded".
    time_exceeded: u32,
}

/// Sends fragments to the gateway's UDP `port` from the stranger's
/// namespace (through this test binary, see [`fragment_probe`]) and
/// listens there for `listen`.
fn probe_fragments(
    stranger_ns: &str,
    v6: bool,
    kind: &str,
    port: u16,
    listen: Duration,
) -> ProbeSaw {
    let out = Command::new("ip")
        .args(["netns", "exec", stranger_ns])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fragment_probe",
            "--include-ignored",
            "--nocapture",
        ])
        .env(
            FRAGMENT_PROBE,
            format!(
                "{} {kind} {port} {}",
                if v6 { 6 } else { 4 },
                listen.as_millis()
            ),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the probe failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("probe saw: "))
        .unwrap_or_else(|| panic!("no answer from the probe: {text}"));
    let mut nums = line.split_whitespace().map(|n| n.parse::<u32>().unwrap());
    ProbeSaw {
        icmp: nums.next().unwrap(),
        time_exceeded: nums.next().unwrap(),
    }
}

#[test]
#[ignore = "runs inside the namespace that lone_fragments_in_namespaces makes"]
fn fragments_inside_a_namespace() {
    let stranger_ns = std::env::var(FRAGMENTS_INSIDE)
        .expect("run through lone_fragments_in_namespaces, not directly");
    // Connection tracking, as a host firewall would load it: any rule
    // that looks at conntrack state registers it (and its
    // defragmentation at priority -400) in this namespace.
    run_nft_script(
        "table inet hg_conntrack {\n\
           chain input { type filter hook input priority filter; policy accept; ct state invalid counter; }\n\
         }\n",
    );
    // Reassembly gives up after a second instead of 30 (IPv4) or 60
    // (IPv6 with conntrack), so the test waits seconds, not minutes.
    for knob in [
        "net.ipv4.ipfrag_time=1",
        "net.ipv6.ip6frag_time=1",
        "net.netfilter.nf_conntrack_frag6_timeout=1",
    ] {
        sh("sysctl", &["-qw", knob]);
    }
    let gw = UdpSocket::bind("[::]:0").unwrap();
    gw.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let port = gw.local_addr().unwrap().port();
    let quiet = Duration::from_secs(4);

    // Control: without the pre-filter, a lone first fragment to the port
    // draws ICMP time exceeded once reassembly gives up, for both
    // families: the probe and its listener work.
    for v6 in [false, true] {
        let saw = probe_fragments(&stranger_ns, v6, "first", port, quiet);
        assert!(
            saw.time_exceeded >= 1,
            "IPv{}: without the pre-filter the kernel should answer a lone first fragment: {saw:?}",
            if v6 { 6 } else { 4 }
        );
    }

    let mut f = Filter::install(port, HashMap::new(), Duration::from_secs(30)).unwrap();
    let mut feed = Feed {
        admissions: Vec::new(),
        version: 0,
    };
    feed.apply(&mut f);
    // With it: a stranger's lone first fragment, or lone later fragment,
    // gets nothing back, ever.
    for v6 in [false, true] {
        for kind in ["first", "rest"] {
            let saw = probe_fragments(&stranger_ns, v6, kind, port, quiet);
            assert_eq!(
                saw,
                ProbeSaw::default(),
                "IPv{}, a lone {kind} fragment from a stranger was answered",
                if v6 { 6 } else { 4 }
            );
        }
    }
    // Also while a first-handshake admission holds the port open to
    // everyone: its initiations are never fragmented, and a fragment
    // must not be let through to time out.
    feed.add(
        "fh",
        AccessMode::Tunnel,
        "198.51.100.7",
        BindingPolicy::FirstHandshake,
        600,
    );
    feed.apply(&mut f);
    assert!(f.status().open);
    for v6 in [false, true] {
        let saw = probe_fragments(&stranger_ns, v6, "first", port, quiet);
        assert_eq!(
            saw,
            ProbeSaw::default(),
            "IPv{} under an open port",
            if v6 { 6 } else { 4 }
        );
    }
    feed.remove("fh");

    // An admitted source's fragmented datagram is reassembled and arrives.
    feed.add(
        "s4",
        AccessMode::Tunnel,
        STRANGER4,
        BindingPolicy::Exact,
        600,
    );
    feed.add(
        "s6",
        AccessMode::Tunnel,
        STRANGER6,
        BindingPolicy::Exact,
        600,
    );
    feed.apply(&mut f);
    for (v6, from) in [(false, STRANGER4), (true, STRANGER6)] {
        let saw = probe_fragments(&stranger_ns, v6, "whole", port, Duration::from_millis(200));
        assert_eq!(saw, ProbeSaw::default());
        let mut buf = [0u8; 256];
        let (len, src) = gw
            .recv_from(&mut buf)
            .expect("the admitted fragmented datagram arrives");
        assert_eq!(src.ip().to_canonical(), from.parse::<IpAddr>().unwrap());
        assert_eq!(&buf[..len], &fragment_payload()[..], "reassembled intact");
    }
    drop(f);
    filter::remove_table(port).unwrap();
}

fn run_nft_script(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft refused: {script}");
}

/// The UDP payload of the fragmented datagram: 40 bytes, so that the
/// first fragment carries the UDP header and 24 bytes, the second 16.
fn fragment_payload() -> Vec<u8> {
    (0..40u8).map(|i| b'a' + i % 26).collect()
}

fn checksum16(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u32::from);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One UDP datagram from `src` to `dst:port`, cut into two fragments at
/// byte 32 of the IP payload: (first, rest) as raw IP packets.
fn fragments(src: IpAddr, dst: IpAddr, port: u16, id: u32) -> (Vec<u8>, Vec<u8>) {
    let payload = fragment_payload();
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    let cut = 32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            let sum = checksum16(&[&pseudo, &udp]);
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            let packet = |offset: usize, more: bool, body: &[u8]| {
                let mut p = vec![0x45, 0];
                p.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
                p.extend_from_slice(&(id as u16).to_be_bytes());
                let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
                p.extend_from_slice(&frag.to_be_bytes());
                p.extend_from_slice(&[64, 17, 0, 0]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                let sum = checksum16(&[&p]);
                p[10..12].copy_from_slice(&sum.to_be_bytes());
                p.extend_from_slice(body);
                p
            };
            (
                packet(0, true, &udp[..cut]),
                packet(cut, false, &udp[cut..]),
            )
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            let sum = checksum16(&[&pseudo, &udp]);
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            let packet = |offset: usize, more: bool, body: &[u8]| {
                let mut p = vec![0x60, 0, 0, 0];
                p.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
                p.extend_from_slice(&[44, 64]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                // Fragment header: next header UDP, offset, M flag, id.
                p.extend_from_slice(&[17, 0]);
                p.extend_from_slice(&((offset as u16) | u16::from(more)).to_be_bytes());
                p.extend_from_slice(&id.to_be_bytes());
                p.extend_from_slice(body);
                p
            };
            (
                packet(0, true, &udp[..cut]),
                packet(cut, false, &udp[cut..]),
            )
        }
        _ => unreachable!("one family"),
    }
}

/// The stranger's side: sends the fragments it is told to (`first`: the
/// first alone, `rest`: the last alone, `whole`: both) from a raw socket,
/// then counts the ICMP that comes back from the gateway's address.
#[test]
#[ignore = "runs in the stranger's namespace, started by fragments_inside_a_namespace"]
fn fragment_probe() {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let spec = std::env::var(FRAGMENT_PROBE).expect("started by fragments_inside_a_namespace");
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let v6 = parts[0] == "6";
    let kind = parts[1];
    let port: u16 = parts[2].parse().unwrap();
    let listen = Duration::from_millis(parts[3].parse().unwrap());
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (STRANGER6.parse().unwrap(), GW_FRAG6.parse().unwrap())
    } else {
        (STRANGER4.parse().unwrap(), GW_FRAG4.parse().unwrap())
    };
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    // A raw ICMP socket read like any datagram socket (std's `recv_from`
    // works on it and needs no unsafe, unlike socket2's uninit buffers).
    let icmp: UdpSocket = Socket::new(
        domain,
        Type::RAW,
        Some(if v6 {
            Protocol::ICMPV6
        } else {
            Protocol::ICMPV4
        }),
    )
    .unwrap()
    .into();
    // IPPROTO_RAW: the packets are sent as written, header included.
    let raw = Socket::new(domain, Type::RAW, Some(Protocol::from(255))).unwrap();
    let id = std::process::id() ^ (u32::from(port) << 16) ^ kind.len() as u32;
    let (first, rest) = fragments(src, dst, port, id);
    let to = SockAddr::from(SocketAddr::new(dst, 0));
    let send: Vec<&[u8]> = match kind {
        "first" => vec![&first],
        "rest" => vec![&rest],
        "whole" => vec![&first, &rest],
        other => panic!("unknown fragment kind {other}"),
    };
    for p in send {
        raw.send_to(p, &to).unwrap();
    }
    let mut saw = ProbeSaw::default();
    let end = Instant::now() + listen;
    let mut buf = [0u8; 2048];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        icmp.set_read_timeout(Some(left)).unwrap();
        let (len, from) = match icmp.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("{e}"),
        };
        let bytes = &buf[..len];
        if from.ip() != dst || bytes.len() < 2 {
            continue;
        }
        // IPv4 raw sockets see the IP header; IPv6 ones start at ICMPv6.
        let (kind_byte, code) = if v6 {
            (bytes[0], bytes[1])
        } else {
            let ihl = usize::from(bytes[0] & 0x0f) * 4;
            (bytes[ihl], bytes[ihl + 1])
        };
        // Neighbour discovery (IPv6's ARP) is not an answer to the probe.
        if v6 && (133..=137).contains(&kind_byte) {
            continue;
        }
        saw.icmp += 1;
        let time_exceeded = if v6 { kind_byte == 3 } else { kind_byte == 11 };
        if time_exceeded && code == 1 {
            saw.time_exceeded += 1;
        }
    }
    println!("probe saw: {} {}", saw.icmp, saw.time_exceeded);
}
