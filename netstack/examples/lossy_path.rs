//! One TCP stream through the tunnel's two user-space stacks (gateway as
//! sender, client shim as receiver) over an emulated Internet path, in
//! virtual time (see `tests/sim/mod.rs`): deterministic, no network, no
//! sleeping. Prints a markdown table.
//!
//! ```text
//! cargo run --release -p hushgate-netstack --example lossy_path -- [options]
//!   (no scenario option)   the grid: RTT 0/20/80/200 ms x loss 0/0.1/1/3 %,
//!                          then a 50 Mbit/s bottleneck with a shallow and a
//!                          deep queue, and bursty loss
//!   --rtt MS --loss PCT    one scenario (1 Gbit/s path, loss both ways)
//!   --bottleneck MBIT --queue KIB
//!                          one scenario with that bottleneck (no loss unless
//!                          --loss is given)
//!   --csv                  with one scenario: the sender's time series
//!   --sample MS            period of the time series (default 100 ms)
//!   --verbose              with one scenario: both sockets' counters and
//!                          the path's
//!   --secs N               virtual seconds per run (default 10)
//!   --seed N               random seed (default 1)
//!   --cc bbr|cubic|reno|none   congestion controller of both stacks
//!   --coalesce US          the receiver handles arrivals in batches this
//!                          many microseconds apart (a loaded machine, GRO)
//!   --ack-every N          StackConfig::ack_every of both stacks
//!   --no-pacing            StackConfig::pacing off
//! ```

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use hushgate_netstack::Congestion;
use sim::{GilbertElliott, Report, Scenario};

#[derive(Default)]
struct Args {
    rtt: Option<u64>,
    loss: Option<f64>,
    bottleneck: Option<u64>,
    queue: Option<usize>,
    csv: bool,
    sample: Option<u64>,
    verbose: bool,
    secs: Option<u64>,
    seed: Option<u64>,
    cc: Option<Congestion>,
    coalesce: Option<u64>,
    ack_every: Option<u8>,
    no_pacing: bool,
}

fn parse() -> Args {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--rtt" => a.rtt = Some(v().parse().expect("--rtt MS")),
            "--loss" => a.loss = Some(v().parse().expect("--loss PCT")),
            "--bottleneck" => a.bottleneck = Some(v().parse().expect("--bottleneck MBIT")),
            "--queue" => a.queue = Some(v().parse().expect("--queue KIB")),
            "--csv" => a.csv = true,
            "--sample" => a.sample = Some(v().parse().expect("--sample MS")),
            "--no-pacing" => a.no_pacing = true,
            "--coalesce" => a.coalesce = Some(v().parse().expect("--coalesce US")),
            "--ack-every" => a.ack_every = Some(v().parse().expect("--ack-every N")),
            "--verbose" => a.verbose = true,
            "--secs" => a.secs = Some(v().parse().expect("--secs N")),
            "--seed" => a.seed = Some(v().parse().expect("--seed N")),
            "--cc" => {
                a.cc = Some(match v().as_str() {
                    "cubic" => Congestion::Cubic,
                    "reno" => Congestion::Reno,
                    "none" => Congestion::None,
                    "bbr" => Congestion::Bbr,
                    other => panic!("unknown congestion controller {other}"),
                })
            }
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn apply(a: &Args, mut s: Scenario) -> Scenario {
    if let Some(secs) = a.secs {
        s.duration = Duration::from_secs(secs);
    }
    if let Some(seed) = a.seed {
        s.seed = seed;
    }
    if let Some(us) = a.coalesce {
        s.receiver_coalesce = Duration::from_micros(us);
    }
    if let Some(n) = a.ack_every {
        s.sender.ack_every = n;
        s.receiver.ack_every = n;
    }
    if let Some(ms) = a.sample {
        s.sample_every = Duration::from_millis(ms);
    }
    if a.no_pacing {
        s.sender.pacing = false;
        s.receiver.pacing = false;
    }
    if let Some(cc) = a.cc {
        s.sender.congestion = cc;
        s.receiver.congestion = cc;
    }
    s
}

fn header() {
    println!(
        "| path | Mbit/s | after 2 s | retrans (rto/recovery/tlp) | RTOs | stalls (total, longest) | queue delay p50/p95 after 2 s | wall ms |"
    );
    println!("| --- | ---: | ---: | --- | ---: | --- | --- | ---: |");
}

fn row(name: &str, s: &Scenario) -> Report {
    let t = Instant::now();
    let r = sim::run(s);
    let wall = t.elapsed();
    let i = &r.sender;
    println!(
        "| {name} | {:.1} | {:.1} | {} ({}/{}/{}) | {} | {} ({:.2} s, {:.2} s) | {:.1}/{:.1} ms | {} |",
        r.goodput_mbps(),
        r.steady_mbps(),
        i.retrans_segs,
        i.retrans_rto,
        i.retrans_recovery,
        i.retrans_tlp,
        i.rto_events,
        r.stalls,
        r.stalled.as_secs_f64(),
        r.longest_stall.as_secs_f64(),
        r.forward.queue_delay(50.0).as_secs_f64() * 1e3,
        r.forward.queue_delay(95.0).as_secs_f64() * 1e3,
        wall.as_millis()
    );
    r
}

fn main() {
    let a = parse();
    let one = a.rtt.is_some() || a.loss.is_some() || a.bottleneck.is_some();
    if one {
        let rtt = Duration::from_millis(a.rtt.unwrap_or(20));
        let loss = a.loss.unwrap_or(0.0) / 100.0;
        let mut s = Scenario::internet(rtt, loss);
        if let Some(mbit) = a.bottleneck {
            s.forward.rate = Some(mbit * 1_000_000);
            s.forward.queue = a.queue.unwrap_or(256) << 10;
        }
        let s = apply(&a, s);
        header();
        let r = row(&format!("{} ms, {} %", rtt.as_millis(), loss * 100.0), &s);
        if a.verbose {
            println!("\nsender (gateway): {:#?}", r.sender);
            println!("receiver (shim): {:#?}", r.receiver);
            let mut f = r.forward.clone();
            f.queue_delays_us.clear();
            let mut b = r.reverse.clone();
            b.queue_delays_us.clear();
            println!("data direction: {f:?}\nack direction: {b:?}");
            println!(
                "wire retransmissions {}, wake-ups {:?} (idle {}), handshake {:?}",
                r.wire_retransmissions, r.wakeups, r.idle_wakeups, r.handshake
            );
        }
        if a.csv {
            println!();
            println!("t_ms,delivered,cwnd,pacing_Bps,delivery_Bps,srtt_ms,min_rtt_ms,inflight,queue,retrans,rtos");
            for p in &r.samples {
                println!(
                    "{},{},{},{},{},{:.1},{:.1},{},{},{},{}",
                    p.t.as_millis(),
                    p.delivered,
                    p.cwnd,
                    p.pacing_rate,
                    p.delivery_rate,
                    p.srtt.as_secs_f64() * 1e3,
                    p.min_rtt.as_secs_f64() * 1e3,
                    p.bytes_in_flight,
                    p.queue,
                    p.retrans_segs,
                    p.rto_events
                );
            }
        }
        return;
    }
    header();
    for rtt in [0u64, 20, 80, 200] {
        for loss in [0.0, 0.1, 1.0, 3.0] {
            let s = apply(
                &a,
                Scenario::internet(Duration::from_millis(rtt), loss / 100.0),
            );
            row(&format!("{rtt} ms, {loss} %"), &s);
        }
    }
    for (rtt, queue, what) in [
        (20u64, 32usize << 10, "shallow 32 KiB"),
        (20, 1250 << 10, "deep 1.25 MiB"),
        (80, 64 << 10, "shallow 64 KiB"),
        (80, 1250 << 10, "deep 1.25 MiB"),
    ] {
        let s = apply(
            &a,
            Scenario::bottleneck(Duration::from_millis(rtt), 50_000_000, queue),
        );
        row(&format!("{rtt} ms, 50 Mbit/s, {what}"), &s);
    }
    let mut s = Scenario::internet(Duration::from_millis(40), 0.0);
    s.forward.bursts = Some(GilbertElliott::bursts(0.01, 3.0));
    row("40 ms, 1 % in bursts of 3", &apply(&a, s));
}
