//! The kernel pre-filter's cost per change: how long `Filter::apply` takes
//! with a whole feed state and with a feed diff (what the gateway applies
//! on each change), planning plus one netlink
//! transaction answered by the kernel, to add, renew or remove one
//! admission with 10, 1,000 and 10,000 admissions already in the table;
//! and the one-time cost of a whole set.
//!
//! Run as root: `cargo bench -p hushgate-gateway --bench prefilter`. It
//! makes a network namespace of its own, runs itself inside it, and
//! deletes it at the end. Knob: OPS (changes measured per size, 200).

use hushgate_gateway::filter::Filter;
use hushgate_gateway::FeedChangeRef;
use proto::feed::{FeedAdmission, FeedState};
use proto::WgKey;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::feed;
use time::OffsetDateTime;

const INSIDE: &str = "HUSHGATE_PREFILTER_BENCH_NETNS";

fn main() {
    if std::env::var(INSIDE).is_err() {
        outside();
    } else {
        inside();
    }
}

fn outside() {
    let ns = format!("hgpfb{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &ns]).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!(
            "prefilter bench: needs root (it makes a network namespace and an nftables table)"
        );
        std::process::exit(2);
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().unwrap())
        .env(INSIDE, "1")
        .status();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    if !status.is_ok_and(|s| s.success()) {
        std::process::exit(1);
    }
}

fn admission(i: u32, secs: i64) -> FeedAdmission {
    FeedAdmission {
        expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(secs),
        // Documentation addresses (2001:db8::/32), enough for every size;
        // they are set elements only, no traffic is sent.
        ..feed::tunnel(
            &format!("adm_{i:08}"),
            WgKey([(i % 251) as u8; 32]),
            std::net::Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i))
                .into(),
        )
    }
}

fn state(admissions: &[FeedAdmission], version: u64) -> FeedState {
    FeedState {
        server_time: OffsetDateTime::now_utc(),
        ..feed::state(version, admissions.to_vec())
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn inside() {
    let ops: u32 = std::env::var("OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut f = Filter::install(51999, HashMap::new(), Duration::from_secs(30))
        .expect("the pre-filter installs (root, nft)");
    println!("size | op | p50 | p99 | elements after");
    println!("---: | --- | ---: | ---: | ---:");
    let mut version = 0;
    for size in [10u32, 1_000, 10_000] {
        let mut set: Vec<FeedAdmission> = (0..size).map(|i| admission(i, 3600)).collect();
        version += 1;
        let st = state(&set, version);
        let t = Instant::now();
        f.apply(&st, Instant::now()).unwrap();
        let whole = t.elapsed();
        println!(
            "{size} | whole set | {whole:.2?} | | {}",
            f.status().elements
        );
        // Add one, renew it, remove it: three feed versions each, applied
        // as whole states (every element compared) and as diffs (only the
        // touched ones, what the gateway does with the feed's diffs). Each
        // is timed from the data in hand to the kernel's answer; building
        // the state is the feed follower's work, not timed.
        let mut times: HashMap<String, Vec<Duration>> = HashMap::new();
        for k in 0..ops {
            let extra = size + 1 + k;
            for (op, secs) in [("add one", 3600), ("renew one", 7200), ("remove one", 0)] {
                let whole = k % 2 == 0;
                let (changed, removed) = if secs == 0 {
                    (vec![], vec![set.pop().unwrap().id])
                } else {
                    let a = admission(extra, secs);
                    if op == "add one" {
                        set.push(a.clone());
                    } else {
                        *set.last_mut().unwrap() = a.clone();
                    }
                    (vec![a], vec![])
                };
                version += 1;
                let st = state(&set, version);
                let t = Instant::now();
                if whole {
                    f.apply(&st, Instant::now()).unwrap();
                } else {
                    f.apply(FeedChangeRef::diff(&st, &changed, &removed), Instant::now())
                        .unwrap();
                }
                let how = if whole { "whole state" } else { "diff" };
                times
                    .entry(format!("{op}, as a {how}"))
                    .or_default()
                    .push(t.elapsed());
            }
        }
        let mut ops_seen: Vec<&String> = times.keys().collect();
        ops_seen.sort();
        for op in ops_seen.into_iter().cloned().collect::<Vec<_>>() {
            let v = times.get_mut(&op).unwrap();
            println!(
                "{size} | {op} | {:.1?} | {:.1?} | {}",
                pct(v, 50.0),
                pct(v, 99.0),
                f.status().elements
            );
        }
    }
    hushgate_gateway::filter::remove_table(51999).unwrap();
}
