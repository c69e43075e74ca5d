//! Time to access, for the benchmark runner (`bench/run.sh`): from the
//! shim's access request (the user already logged in) to the first byte
//! from the upstream through the local port.
//!
//! ```sh
//! HUSHGATE_PASSWORD=... access_time --control URL --ca ca.pem --user alice \
//!     --server home --service plex --runs 100
//! ```
//!
//! Logs in once with the password, then `--runs` times: `Session::connect`
//! with that token (`Credentials::Token`: no password hashing), a TCP
//! connection to the local port, `GET /identity`, and the first byte of the
//! answer; then the session is closed (which revokes the admission) before
//! the next. Included in each figure: the control client's TLS handshake,
//! the access request (which returns once the gateway has applied and
//! acknowledged the admission), the WireGuard handshake, the player's TCP
//! connection to the shim and the request through the tunnel. Not
//! included: process start, login. Prints one line per run and a summary
//! line `access_ms p50 X p99 Y min Z max W connect_p50 A n N`.

use client_shim::{Credentials, Session, ShimConfig, Trust};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn pct(v: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let control = arg("--control").expect("--control");
    let ca = arg("--ca").expect("--ca");
    let user = arg("--user").expect("--user");
    let server = arg("--server").expect("--server");
    let service = arg("--service");
    let runs: usize = arg("--runs")
        .map(|v| v.parse().expect("--runs"))
        .unwrap_or(100);
    let warmup: usize = 3;
    let password = std::env::var("HUSHGATE_PASSWORD").expect("HUSHGATE_PASSWORD");
    let client = control_client::ControlClient::new(
        &control,
        Trust::from_ca_file(std::path::Path::new(&ca))?,
    )?;
    let token = client.login(&user, &password).await?.token;

    let mut total = Vec::new();
    let mut connect = Vec::new();
    for i in 0..runs + warmup {
        let t0 = Instant::now();
        let session = Session::connect(ShimConfig {
            control_url: control.clone(),
            trust: Trust::from_ca_file(std::path::Path::new(&ca))?,
            credentials: Credentials::Token(token.clone()),
            server: server.clone(),
            service: service.clone(),
            listen: "127.0.0.1:0".parse()?,
        })
        .await?;
        let t_connect = t0.elapsed();
        let local = session.local_addr();
        let first = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut s = std::net::TcpStream::connect(local)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_nodelay(true)?;
            s.write_all(b"GET /identity HTTP/1.1\r\nHost: media\r\nConnection: close\r\n\r\n")?;
            let mut b = [0u8; 1];
            if s.read(&mut b)? == 0 {
                return Err(std::io::Error::other("no byte from upstream"));
            }
            Ok(())
        })
        .await?;
        let t_first = t0.elapsed();
        first?;
        session.close().await;
        let ms = t_first.as_secs_f64() * 1e3;
        let cms = t_connect.as_secs_f64() * 1e3;
        if i >= warmup {
            println!(
                "run {} access_ms {:.2} connect_ms {:.2}",
                i - warmup,
                ms,
                cms
            );
            total.push(ms);
            connect.push(cms);
        }
    }
    total.sort_by(|a, b| a.total_cmp(b));
    connect.sort_by(|a, b| a.total_cmp(b));
    println!(
        "access_ms p50 {:.2} p99 {:.2} min {:.2} max {:.2} connect_p50 {:.2} n {}",
        pct(&total, 50.0),
        pct(&total, 99.0),
        total[0],
        total[total.len() - 1],
        pct(&connect, 50.0),
        total.len()
    );
    Ok(())
}
