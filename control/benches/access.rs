//! Control plane throughput: access requests per second with a gateway
//! that follows the real feed and acknowledges, login latency, and the
//! cost of a failed login (wrong password against unknown user).
//!
//! Run: `cargo bench -p hushgate-control --bench access`
//! (env: ACCESS_REQUESTS, default 3000; CONCURRENCY, default 64).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let requests = env("ACCESS_REQUESTS", 3000);
    let concurrency = env("CONCURRENCY", 64);
    let store = Engine::Sqlite.store();
    let settings = control::Settings {
        login_per_minute: 100_000,
        ack_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let cp = Running::start(&store, "127.0.0.1:0", settings).await;
    let token = seed(&cp.admin, "alice", "den", None).await;
    // One user makes every access request here: lift the per-user limit.
    cp.admin
        .update_server(
            "den",
            &proto::api::UpdateServer {
                max_admissions_per_user: Some(65_533),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let gw = FeedFollower::enroll(&cp.client(), &token, key(200)).await;

    // Login latency (argon2id verification dominates).
    let mut lat = Vec::new();
    let mut bearer = String::new();
    for _ in 0..30 {
        let t = Instant::now();
        bearer = cp
            .client()
            .login("alice", "password-of-alice")
            .await
            .unwrap()
            .token;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "login latency over {} logins: p50 {:.1} ms, p99 {:.1} ms",
        lat.len(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );

    // A failed login costs the same whatever was wrong (an unknown user
    // verifies against a dummy hash): the medians of wrong passwords and
    // unknown users should be within a few percent of each other.
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        let _ = cp.client().login("alice", "not-her-password").await;
        wrong.push(t.elapsed());
        let t = Instant::now();
        let _ = cp
            .client()
            .login(&format!("ghost{i}"), "not-a-password")
            .await;
        unknown.push(t.elapsed());
    }
    wrong.sort();
    unknown.sort();
    let (w, u) = (pct(&wrong, 0.5), pct(&unknown, 0.5));
    println!(
        "failed login p50: wrong password {:.1} ms, unknown user {:.1} ms (ratio {:.2})",
        w.as_secs_f64() * 1e3,
        u.as_secs_f64() * 1e3,
        w.as_secs_f64() / u.as_secs_f64()
    );

    // Access requests from `concurrency` clients at once, each with its
    // own connection and a fresh key per request.
    let alice = cp.client().with_bearer(&bearer);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let c = alice.clone();
        let n = requests / concurrency + usize::from(w < requests % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let mut done = Vec::with_capacity(n);
            for i in 0..n {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&(w as u32).to_le_bytes());
                k[4..8].copy_from_slice(&(i as u32).to_le_bytes());
                let s = Instant::now();
                c.access("den", proto::WgKey(k))
                    .await
                    .expect("access granted");
                lat.push(s.elapsed());
                done.push(Instant::now());
            }
            (lat, done)
        }));
    }
    let mut lat = Vec::new();
    let mut done = Vec::new();
    for t in tasks {
        let (l, d) = t.await.unwrap();
        lat.extend(l);
        done.extend(d);
    }
    done.sort();
    let elapsed = t.elapsed();
    lat.sort();
    println!(
        "access: {} requests, {} concurrent clients, {:.2} s: {:.0} requests/s; latency p50 {:.1} ms, p99 {:.1} ms",
        lat.len(),
        concurrency,
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
    );
    // The rate as the number of live admissions grows: each tenth of the
    // run, by completion time (the last one is the rate near `requests`
    // live admissions).
    let tenth = done.len() / 10;
    if tenth > 1 {
        let rates: Vec<String> = (0..10)
            .map(|k| {
                let (a, b) = (done[k * tenth], done[(k + 1) * tenth - 1]);
                let secs = (b - a).as_secs_f64().max(1e-9);
                format!("{:.0}", (tenth - 1) as f64 / secs)
            })
            .collect();
        println!(
            "access rate by tenth of the run (live admissions 0 -> {}): {} requests/s",
            requests,
            rates.join(", ")
        );
    }
    let (diffs, wholes) = gw.answer_counts();
    println!("feed answers: {diffs} diffs, {wholes} whole sets");
    assert_eq!(gw.admission_count(), requests);
    cp.stop().await;
}
