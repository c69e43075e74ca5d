//! Control plane throughput: access requests per second with a gateway
//! that follows the real feed and acknowledges, login latency, and the
//! cost of a failed login (wrong password against unknown user).
//!
//! Run: `cargo bench -p hushgate-control --bench access`
//! (env: ACCESS_REQUESTS, default 3000; CONCURRENCY, default 64;
//! ENGINE, `sqlite` (default) or `postgres`; REPLICAS, with postgres, how
//! many control planes share the database, default 1;
//! PROPAGATION_SAMPLES, with 2 replicas or more, default 300).
//!
//! With several replicas the gateway follows the feed on the first one
//! and the clients are spread over all of them, so that most access
//! requests wait for an acknowledgement that arrives at another replica.
//! PostgreSQL is a real server started here (durable: fsync on), on a
//! Unix socket. With several replicas it then measures how long a change
//! made on one replica takes to reach a feed poll held on another
//! ([`propagation`]). CPU per request counts this process (every replica, the
//! clients and the gateway) and the PostgreSQL server's processes.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

/// CPU seconds used so far by this process.
fn own_cpu() -> f64 {
    proc_cpu(std::process::id())
}

/// CPU seconds (user + system) of process `pid`, from /proc.
fn proc_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in brackets.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of the PostgreSQL server (the postmaster whose data
/// folder is `data` and its children: the connections, the writers).
fn pg_cpu(data: &std::path::Path) -> f64 {
    let Some(master) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return 0.0;
    };
    let mut total = proc_cpu(master);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if ppid == Some(master) {
            total += proc_cpu(pid);
        }
    }
    total
}

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
    let postgres = std::env::var("ENGINE").is_ok_and(|e| e == "postgres");
    let replicas = if postgres {
        env("REPLICAS", 1).max(1)
    } else {
        1
    };
    let settings = || control::Settings {
        login_per_minute: 100_000,
        ack_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    // A durable server of its own, as in production (the tests' servers
    // skip fsync).
    let pg = postgres.then(|| pg::start(pg::Options { durable: true }).unwrap());
    let database = pg.as_ref().map(|s| s.url(&s.fresh_database_name()));
    let mut cps = Vec::new();
    if let Some(url) = &database {
        // The replicas' shared identity, as `hushgate control init` makes it.
        let bundle = dir.path().join("bundle");
        control::bundle::init(&bundle, &["bench.test".into()], Some(url)).unwrap();
        for i in 0..replicas {
            let state = dir.path().join(format!("r{i}"));
            std::fs::create_dir(&state).unwrap();
            for f in ["ca.pem", "server.pem", "server-key.pem", "admin-token"] {
                std::fs::copy(bundle.join(f), state.join(f)).unwrap();
            }
            cps.push(Running::start_in(&state, Some(url.clone()), "127.0.0.1:0", settings()).await);
        }
    } else {
        cps.push(Running::start_in(dir.path(), None, "127.0.0.1:0", settings()).await);
    }
    println!(
        "engine: {}, {} control plane{}",
        if postgres { "PostgreSQL" } else { "SQLite" },
        cps.len(),
        if cps.len() == 1 { "" } else { "s (replicas)" }
    );
    let cp = &cps[0];
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
    let clients: Vec<_> = cps
        .iter()
        .map(|r| r.client().with_bearer(&bearer))
        .collect();
    let pg_cpu_now = || pg.as_ref().map_or(0.0, |s| pg_cpu(&s.base.join("data")));
    let (own_before, pg_before) = (own_cpu(), pg_cpu_now());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        // Spread over the replicas; the gateway's feed is on the first.
        let c = clients[w % clients.len()].clone();
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
    // Latency of requests whose client is on the gateway's replica, and
    // on another one (the change and the acknowledgement cross replicas).
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for (w, t) in tasks.into_iter().enumerate() {
        let (l, d) = t.await.unwrap();
        if w % clients.len() == 0 {
            same.extend(l.iter().copied());
        } else {
            other.extend(l.iter().copied());
        }
        lat.extend(l);
        done.extend(d);
    }
    done.sort();
    let elapsed = t.elapsed();
    let (own, pg_used) = (own_cpu() - own_before, pg_cpu_now() - pg_before);
    let cpu = own + pg_used;
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
    if !other.is_empty() {
        same.sort();
        other.sort();
        println!(
            "access latency, client on the gateway's replica: p50 {:.1} ms, p99 {:.1} ms; on another replica: p50 {:.1} ms, p99 {:.1} ms",
            pct(&same, 0.5).as_secs_f64() * 1e3,
            pct(&same, 0.99).as_secs_f64() * 1e3,
            pct(&other, 0.5).as_secs_f64() * 1e3,
            pct(&other, 0.99).as_secs_f64() * 1e3,
        );
    }
    println!(
        "access CPU: {:.2} s in all ({:.0}% of one core), {:.2} ms per request: {:.2} ms in this process (control planes, clients, gateway), {:.2} ms in the PostgreSQL server",
        cpu,
        100.0 * cpu / elapsed.as_secs_f64(),
        1e3 * cpu / lat.len() as f64,
        1e3 * own / lat.len() as f64,
        1e3 * pg_used / lat.len() as f64
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
    if cps.len() >= 2 {
        propagation(&cps, &gw, env("PROPAGATION_SAMPLES", 300)).await;
    }
    drop(gw);
    for cp in cps {
        cp.stop().await;
    }
}

/// Time from a change on replica 1 to the feed answer on replica 2: a
/// feed poll (the gateway's credential, diffs) is held on replica 2 while
/// an admission is revoked on replica 1, one at a time. Measured from
/// just before the revocation is sent (so it includes that request's own
/// handling up to its commit; its whole time is printed too) to the
/// poll's answer naming the new version.
async fn propagation(cps: &[Running], gw: &FeedFollower, samples: usize) {
    // Each revocation is exactly one version on from the current one.
    let ids = gw.admission_ids();
    let watcher = cps[1].client().with_bearer(&gw.credential);
    let mut version = feed_update(&watcher, Some(gw.version()), Duration::ZERO)
        .await
        .expect("feed answer")
        .version;
    let (mut to_answer, mut revoke_took) = (Vec::new(), Vec::new());
    for id in ids.iter().take(samples) {
        let w = watcher.clone();
        let poll = tokio::spawn(async move {
            let u = feed_update(&w, Some(version), Duration::from_secs(10))
                .await
                .expect("feed answer");
            (Instant::now(), u.version)
        });
        // Long enough for the poll to be held (it answers at once if the
        // version moved before; then this sample is the answer's own
        // time).
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        cps[0].admin.revoke(id).await.expect("revoked");
        revoke_took.push(t0.elapsed());
        let (t2, v) = poll.await.unwrap();
        assert_eq!(v, version + 1, "one revocation, one version");
        to_answer.push(t2 - t0);
        version = v;
    }
    to_answer.sort();
    revoke_took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "change on replica 1 -> feed answer on replica 2, {} samples: p50 {:.1} ms, p99 {:.1} ms (the revocation request itself: p50 {:.1} ms, p99 {:.1} ms)",
        to_answer.len(),
        ms(pct(&to_answer, 0.5)),
        ms(pct(&to_answer, 0.99)),
        ms(pct(&revoke_took, 0.5)),
        ms(pct(&revoke_took, 0.99)),
    );
}
