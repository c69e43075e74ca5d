//! Time to access, for the benchmark runner (`bench/run.sh`): from the
//! access request (the user already logged in) to the first byte of the
//! upstream's HTTP answer.
//!
//! ```sh
//! HUSHGATE_PASSWORD=... access_time --control URL --ca ca.pem --user alice \
//!     --server home --service plex --runs 100            # tunnel (default)
//! HUSHGATE_PASSWORD=... access_time --control URL --ca ca.pem --user alice \
//!     --server home --service plex --runs 100 --direct   # direct (firewall-only)
//! ```
//!
//! Both modes log in once with the password, then time `--runs` accesses
//! (after 3 untimed warm-up runs) with that token (no password hashing),
//! each ending with `GET /identity` and the first byte of the answer.
//!
//! Tunnel mode (default): `Session::connect` with `Credentials::Token`, a
//! TCP connection to the shim's local port, the request through the
//! tunnel; then the session is closed (which revokes the admission) before
//! the next run. Included in each figure: the control client's TLS
//! handshake, the access request (which returns once the gateway has
//! applied and acknowledged the admission), the WireGuard handshake, the
//! player's TCP connection to the shim and the request through the tunnel.
//! Summary line: `access_ms p50 X p99 Y min Z max W connect_p50 A n N`.
//!
//! Direct mode (`--direct`): a fresh control client (so, as in tunnel mode,
//! a new TLS connection per run), `ControlClient::access_direct` (which
//! returns once the gateway has confirmed the pre-filter's element for
//! this source address), then a plain TCP connection to the answer's
//! `direct_endpoint` (or, with `--service`, that direct service's port)
//! and the request; then `ControlClient::revoke` (not timed) before the
//! next run, so every run opens the port anew. Summary line:
//! `direct_ms p50 X p99 Y min Z max W access_p50 A n N`, where `access_p50`
//! is the median time until `access_direct` returned.
//!
//! Not included in either: process start, login. One line per run is
//! printed before the summary.

use anyhow::Context;
use client_shim::{Credentials, Session, ShimConfig, Trust};
use control_client::ControlClient;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Untimed runs first: the first connections pay for lazy set-up (page
/// faults, first TLS session, the gateway's first nftables set) that a
/// user would pay once, not per access.
const WARMUP: usize = 3;

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn required(name: &str) -> anyhow::Result<String> {
    arg(name).with_context(|| {
        format!(
            "{name} is missing; usage: access_time --control URL --ca FILE --user NAME \
             --server NAME [--service NAME] [--runs N] [--direct] (password in HUSHGATE_PASSWORD)"
        )
    })
}

fn pct(v: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// What a run measured, in milliseconds: until the first byte, and until
/// the access request returned (tunnel: `Session::connect`, which includes
/// the WireGuard handshake; direct: `access_direct`).
struct Run {
    first_ms: f64,
    access_ms: f64,
}

/// Connects to `addr` as a player would, asks for a small resource and
/// waits for the first byte of the answer. Blocking: the caller runs it on
/// a blocking thread so that the measured path has no scheduler hop in it.
fn first_byte(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    s.write_all(b"GET /identity HTTP/1.1\r\nHost: media\r\nConnection: close\r\n\r\n")?;
    let mut b = [0u8; 1];
    if s.read(&mut b)? == 0 {
        return Err(std::io::Error::other(format!(
            "{addr} closed the connection without answering; is the upstream running?"
        )));
    }
    Ok(())
}

async fn first_byte_from(addr: SocketAddr) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || first_byte(addr))
        .await?
        .with_context(|| format!("no answer from the upstream through {addr}"))
}

struct Target {
    control: String,
    ca: String,
    token: String,
    server: String,
    service: Option<String>,
}

async fn tunnel_run(t: &Target) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    let session = Session::connect(ShimConfig {
        control_url: t.control.clone(),
        trust: Trust::from_ca_file(Path::new(&t.ca))?,
        credentials: Credentials::Token(t.token.clone()),
        server: t.server.clone(),
        service: t.service.clone(),
        listen: "127.0.0.1:0".parse()?,
        device: None,
        on_waiting: None,
    })
    .await?;
    let t_connect = t0.elapsed();
    let got = first_byte_from(session.local_addr()).await;
    let t_first = t0.elapsed();
    session.close().await;
    got?;
    Ok(Run {
        first_ms: t_first.as_secs_f64() * 1e3,
        access_ms: t_connect.as_secs_f64() * 1e3,
    })
}

async fn direct_run(t: &Target) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    // A new client per run, like `Session::connect` makes: the TLS
    // handshake with the control plane is part of each access.
    let client = ControlClient::new(&t.control, Trust::from_ca_file(Path::new(&t.ca))?)?
        .with_bearer(&t.token);
    let access = client.access_direct(&t.server).await.with_context(|| {
        format!(
            "direct access to server '{}' was refused: the grant must allow it \
             (hushgate admin grant add USER {} --direct), the server's binding must be \
             exact or prefix:N, and its gateway must run with --direct and the pre-filter",
            t.server, t.server
        )
    })?;
    let t_access = t0.elapsed();
    let endpoint = match &t.service {
        None => access.direct_endpoint,
        Some(name) => match access.services.iter().find(|s| &s.name == name) {
            Some(s) => SocketAddr::new(access.direct_endpoint.ip(), s.port),
            None => {
                let offered: Vec<&str> = access.services.iter().map(|s| s.name.as_str()).collect();
                // Do not leave the port open behind us on the way out.
                let _ = client.revoke(&access.admission_id).await;
                anyhow::bail!(
                    "server '{}' offers no direct service '{name}'; it offers: {} (pass one of them with --service)",
                    t.server,
                    offered.join(", ")
                );
            }
        },
    };
    let got = first_byte_from(endpoint).await;
    let t_first = t0.elapsed();
    // Revoked before the next run (and also after a failure), so that each
    // run's access adds the pre-filter element anew instead of finding it.
    client
        .revoke(&access.admission_id)
        .await
        .with_context(|| format!("revoking direct admission {}", access.admission_id))?;
    got?;
    Ok(Run {
        first_ms: t_first.as_secs_f64() * 1e3,
        access_ms: t_access.as_secs_f64() * 1e3,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let control = required("--control")?;
    let ca = required("--ca")?;
    let user = required("--user")?;
    let server = required("--server")?;
    let service = arg("--service");
    let direct = std::env::args().any(|a| a == "--direct");
    let runs: usize = match arg("--runs") {
        Some(v) => v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--runs must be a positive number, not '{v}'"))?,
        None => 100,
    };
    let password = std::env::var("HUSHGATE_PASSWORD")
        .context("set HUSHGATE_PASSWORD to the user's password (it is used once, to log in)")?;
    let client = ControlClient::new(&control, Trust::from_ca_file(Path::new(&ca))?)?;
    let token = client.login(&user, &password).await?.token;
    let target = Target {
        control,
        ca,
        token,
        server,
        service,
    };

    let mut first = Vec::new();
    let mut access = Vec::new();
    for i in 0..runs + WARMUP {
        let run = if direct {
            direct_run(&target).await
        } else {
            tunnel_run(&target).await
        }
        .with_context(|| format!("run {i} (counting {WARMUP} warm-up runs)"))?;
        if i >= WARMUP {
            if direct {
                println!(
                    "run {} direct_ms {:.2} access_ms {:.2}",
                    i - WARMUP,
                    run.first_ms,
                    run.access_ms
                );
            } else {
                println!(
                    "run {} access_ms {:.2} connect_ms {:.2}",
                    i - WARMUP,
                    run.first_ms,
                    run.access_ms
                );
            }
            first.push(run.first_ms);
            access.push(run.access_ms);
        }
    }
    first.sort_by(|a, b| a.total_cmp(b));
    access.sort_by(|a, b| a.total_cmp(b));
    // The tunnel line keeps its historical names (bench/run.sh parses them).
    let (name, part) = if direct {
        ("direct_ms", "access_p50")
    } else {
        ("access_ms", "connect_p50")
    };
    println!(
        "{name} p50 {:.2} p99 {:.2} min {:.2} max {:.2} {part} {:.2} n {}",
        pct(&first, 50.0),
        pct(&first, 99.0),
        first[0],
        first[first.len() - 1],
        pct(&access, 50.0),
        first.len()
    );
    Ok(())
}
