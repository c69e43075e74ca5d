//! A bounded UDP junk flooder for the benchmark runner (`bench/run.sh`).
//!
//! ```sh
//! cargo build --release -p hushgate --example flood
//! flood --dst 203.0.113.18:51820 --kind wg --secs 5 --max 50000000
//! ```
//!
//! Kinds:
//! - `random`: random bytes; each GSO batch has its own random size
//!   (1..=1400 bytes), so sizes vary along the flood;
//! - `wg`: WireGuard-shaped: alternately 148-byte handshake initiations
//!   (type 1, random body) and 96-byte transport data (type 4), in batches;
//! - `pool`: datagrams read from `--pool FILE` (each record: 2-byte
//!   little-endian length, then the datagram), sent round-robin; the bench
//!   uses this for handshake initiations with a valid mac1 computed in
//!   Python (BLAKE2s needs no crate here).
//!
//! It sends with `netstack::udp::UdpIo` (UDP GSO: up to 64 equal datagrams
//! per `sendmsg`; `--gso 1` sends one datagram per `sendmsg`). It stops at
//! `--secs` or `--max` datagrams, whichever comes first, and refuses any
//! destination outside the documentation ranges the harness uses
//! (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and loopback.
//! It prints one line: `sent N secs S sendmsg C cpu_s U dropped_overflow D
//! bytes B`, where B is the payload bytes the kernel accepted: with GSO, a
//! kernel counter on the path (nftables `counter`) counts one packet per
//! batch, so the bench converts its byte count into datagrams with B / N.

use netstack::udp::UdpIo;
use rand::Rng;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: flood --dst IP:PORT --kind random|wg|pool [--pool FILE] [--secs S] [--max N] [--gso SEGMENTS]"
    );
    std::process::exit(2)
}

fn allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || (o[0], o[1], o[2]) == (192, 0, 2)
                || (o[0], o[1], o[2]) == (198, 51, 100)
                || (o[0], o[1], o[2]) == (203, 0, 113)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback() || (s[0], s[1]) == (0x2001, 0x0db8)
        }
    }
}

fn cpu_secs() -> f64 {
    // utime + stime of this process, in ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() {
    let mut dst: Option<SocketAddr> = None;
    let mut kind = String::from("random");
    let mut pool_file: Option<String> = None;
    let mut secs = 5.0f64;
    let mut max = 10_000_000u64;
    let mut gso = 64usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--dst" => dst = Some(v().parse().unwrap_or_else(|_| usage())),
            "--kind" => kind = v(),
            "--pool" => pool_file = Some(v()),
            "--secs" => secs = v().parse().unwrap_or_else(|_| usage()),
            "--max" => max = v().parse().unwrap_or_else(|_| usage()),
            "--gso" => gso = v().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let dst = dst.unwrap_or_else(|| usage());
    if !allowed(dst.ip()) {
        eprintln!("flood: refusing {dst}: only documentation ranges and loopback");
        std::process::exit(2);
    }
    if !(0.0..=60.0).contains(&secs) || max > 1_000_000_000 {
        eprintln!("flood: bounded to 60 s and 1e9 datagrams");
        std::process::exit(2);
    }
    let mut rng = rand::thread_rng();
    // A pool of prepared datagrams, grouped in batches of equal size.
    let pool: Vec<Vec<u8>> = match kind.as_str() {
        "random" => (0..4096)
            .map(|i| {
                // Equal sizes within each run of `gso` datagrams.
                let mut r = rand::rngs::StdRng::seed_from_u64_compat((i / gso.max(1)) as u64);
                let len = r.gen_range(1..=1400);
                let mut d = vec![0u8; len];
                rng.fill(&mut d[..]);
                d
            })
            .collect(),
        "wg" => (0..4096)
            .map(|i| {
                let init = (i / gso.max(1)).is_multiple_of(2);
                let mut d = vec![0u8; if init { 148 } else { 96 }];
                rng.fill(&mut d[..]);
                d[..4].copy_from_slice(&(if init { 1u32 } else { 4u32 }).to_le_bytes());
                d
            })
            .collect(),
        "pool" => {
            let path = pool_file.unwrap_or_else(|| usage());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                eprintln!("flood: {path}: {e}");
                std::process::exit(2)
            });
            let mut out = Vec::new();
            let mut i = 0;
            while i + 2 <= bytes.len() {
                let n = u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
                i += 2;
                if i + n > bytes.len() {
                    break;
                }
                out.push(bytes[i..i + n].to_vec());
                i += n;
            }
            if out.is_empty() {
                usage();
            }
            out
        }
        _ => usage(),
    };
    let bind = match dst.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => "[::]:0".parse().expect("v6 any"),
    };
    let mut io = UdpIo::bind(bind).expect("bind");
    let burst = gso.clamp(1, io.max_gso_segments().max(1)) * 4;
    let cpu0 = cpu_secs();
    let limit = Duration::from_secs_f64(secs);
    let t = Instant::now();
    let mut next = 0usize;
    let mut queued = 0u64;
    while t.elapsed() < limit && queued < max {
        let n = (burst as u64).min(max - queued) as usize;
        for _ in 0..n {
            io.queue(dst, &pool[next % pool.len()]);
            next += 1;
            if gso == 1 {
                // One datagram per sendmsg.
                let _ = io.flush();
            }
        }
        queued += n as u64;
        let _ = io.flush();
        while io.has_pending() && t.elapsed() < limit {
            std::thread::yield_now();
            let _ = io.flush();
        }
    }
    let wall = t.elapsed().as_secs_f64();
    let st = io.stats();
    println!(
        "sent {} secs {:.3} sendmsg {} cpu_s {:.2} dropped_overflow {} bytes {}",
        st.tx_datagrams,
        wall,
        st.tx_syscalls,
        cpu_secs() - cpu0,
        st.tx_dropped_overflow + st.tx_dropped_error,
        st.tx_bytes
    );
}

/// `StdRng::seed_from_u64` without importing `SeedableRng` at every call.
trait SeedCompat {
    fn seed_from_u64_compat(seed: u64) -> Self;
}
impl SeedCompat for rand::rngs::StdRng {
    fn seed_from_u64_compat(seed: u64) -> Self {
        <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed)
    }
}
