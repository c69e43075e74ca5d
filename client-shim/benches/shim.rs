//! The client shim against the real hushgate on loopback: the real
//! control plane (HTTPS, SQLite), the real gateway and an upstream HTTP
//! server, all in this process (see the test kit, `hushgate-testkit`).
//!
//! Reports
//! - single-connection throughput, player -> shim -> gateway -> upstream
//!   and back (a GET of 512 MiB; median of 3 runs, Mbit/s of body);
//! - the aggregate of 4 connections at once (4 x 128 MiB; median of 3);
//! - the time from `Session::connect` to the first byte from the upstream
//!   through the local port, over 100 sessions (each closed before the
//!   next, each with its own ephemeral key). The user logged in once
//!   before timing and every session uses that token
//!   (`Credentials::Token`), so password hashing is not in the figure;
//!   everything else is: the control client and its TLS handshake, the
//!   access request (which waits for the gateway to apply and acknowledge
//!   the admission), the WireGuard handshake, the player's connection and
//!   its request through the tunnel.
//!
//! Run: `cargo bench -p hushgate-client-shim --bench shim`.

use testkit as support;

use hushgate_client_shim::{Credentials, Session};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{get_count, Options, World};

const SINGLE: u64 = 512 << 20;
const PARALLEL: u64 = 128 << 20;
const RUNS: usize = 3;
const CONNECTS: usize = 100;
const WARMUP: usize = 3;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The value below which `p` percent of the sorted `v` lie (nearest rank).
fn percentile(v: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Downloads `n` bytes over each of `conns` connections at once; Mbit/s
/// of body over the whole transfer.
fn download(local: SocketAddr, conns: usize, n: u64) -> f64 {
    let t = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(local).expect("local connect");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                get_count(&mut s, n).expect("download").0
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, n * conns as u64);
    total as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e6
}

async fn run() {
    let w = World::start(Options::default()).await;
    let token = w.token().await;
    let config = || w.shim_config(Credentials::Token(token.clone()));

    // ---- throughput
    let session = Session::connect(config()).await.expect("connect");
    let local = session.local_addr();
    // Warm-up: caches, buffers, congestion windows of fresh stacks.
    tokio::task::spawn_blocking(move || download(local, 1, 32 << 20))
        .await
        .unwrap();
    let mut single = Vec::new();
    for i in 0..RUNS {
        let r = tokio::task::spawn_blocking(move || download(local, 1, SINGLE))
            .await
            .unwrap();
        println!("single connection, run {}: {r:.0} Mbit/s", i + 1);
        single.push(r);
    }
    let mut parallel = Vec::new();
    for i in 0..RUNS {
        let r = tokio::task::spawn_blocking(move || download(local, 4, PARALLEL))
            .await
            .unwrap();
        println!("4 connections, run {}: {r:.0} Mbit/s aggregate", i + 1);
        parallel.push(r);
    }
    session.close().await;

    // ---- connect to first byte
    let mut connect_ms = Vec::new();
    let mut first_ms = Vec::new();
    for i in 0..WARMUP + CONNECTS {
        let t = Instant::now();
        let s = Session::connect(config()).await.expect("connect");
        let connected = t.elapsed();
        let local = s.local_addr();
        let first = tokio::task::spawn_blocking(move || {
            let mut c = TcpStream::connect(local).expect("local connect");
            c.set_nodelay(true).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            get_count(&mut c, 1).expect("first byte").1
        })
        .await
        .unwrap();
        let first = first.duration_since(t);
        s.close().await;
        if i >= WARMUP {
            connect_ms.push(connected.as_secs_f64() * 1e3);
            first_ms.push(first.as_secs_f64() * 1e3);
        }
    }
    connect_ms.sort_by(|a, b| a.total_cmp(b));
    first_ms.sort_by(|a, b| a.total_cmp(b));
    w.stop().await;

    println!();
    println!("| measure | result |");
    println!("| --- | --- |");
    println!(
        "| 1 connection, {} MiB GET (median of {RUNS}) | {:.0} Mbit/s |",
        SINGLE >> 20,
        median(single)
    );
    println!(
        "| 4 connections, 4 x {} MiB GET, aggregate (median of {RUNS}) | {:.0} Mbit/s |",
        PARALLEL >> 20,
        median(parallel)
    );
    println!(
        "| `Session::connect` to first byte from upstream, {CONNECTS} sessions | p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms (min {:.1}, max {:.1}) |",
        percentile(&first_ms, 50.0),
        percentile(&first_ms, 90.0),
        percentile(&first_ms, 99.0),
        first_ms[0],
        first_ms[first_ms.len() - 1],
    );
    println!(
        "| of which `Session::connect` returning | p50 {:.1} ms, p99 {:.1} ms |",
        percentile(&connect_ms, 50.0),
        percentile(&connect_ms, 99.0),
    );
}
