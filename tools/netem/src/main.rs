//! `hushgate-netem`: the driver around [`hushgate_netem::link::Link`].
//!
//! It creates two TUN devices (one per direction), prints `ready: ...`,
//! and then runs one thread per direction: sleep in `ppoll` until the
//! device is readable or the next packet is due, read everything readable
//! (whole GSO batches, split by tun-rs), offer each packet to the link,
//! write everything due (coalesced again by tun-rs's GRO). Packet buffers
//! come from a free list and are handed to the link by swapping, so the
//! receive path copies nothing and allocates only while the pool grows.
//!
//! Signals: SIGTERM/SIGINT stop it (the statistics file is written one
//! last time); SIGUSR1 starts the counters again (e.g. after a warm-up).
//! Routing traffic into the devices is the caller's job (see
//! tests/netns/lib.sh, `emu_*`).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hushgate_netem::link::{Link, LinkCounters, QueueWait};
use hushgate_netem::spec::LinkSpec;
use nix::poll::{PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use serde::Serialize;
use tun_rs::{DeviceBuilder, GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Emulates an Internet path between two sides of a router namespace.
///
/// SPEC is `key=value,...` with keys delay, jitter, loss, burst, ge,
/// reorder, gap, rate, queue (e.g. `delay=20ms,loss=1%` or
/// `rate=50mbit,queue=200ms`); --up and --down refine --both.
#[derive(Debug, Parser)]
#[command(name = "hushgate-netem", version)]
struct Args {
    /// TUN device for the client-to-server direction (created; must not exist).
    #[arg(long, default_value = "emu-up")]
    up_dev: String,
    /// TUN device for the server-to-client direction (the player's).
    #[arg(long, default_value = "emu-down")]
    down_dev: String,
    /// Conditions in both directions.
    #[arg(long, default_value = "", value_name = "SPEC")]
    both: String,
    /// Conditions client to server, on top of --both.
    #[arg(long, default_value = "", value_name = "SPEC")]
    up: String,
    /// Conditions server to client, on top of --both.
    #[arg(long, default_value = "", value_name = "SPEC")]
    down: String,
    /// Seed of the random fates (loss, jitter, reordering); each direction
    /// draws from its own stream derived from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write statistics (JSON) to this file every 250 ms and at exit.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Read and write one packet per syscall (no virtio-net header, no GSO/GRO).
    #[arg(long)]
    no_offload: bool,
    /// Packets held at most per direction (queued or in propagation); more
    /// are dropped and counted as `pool_drops`.
    #[arg(long, default_value_t = 65536)]
    max_packets: usize,
    /// MTU of the TUN devices (the links around them are 1500).
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
    /// Transmit queue of the TUN devices: packets the kernel holds for the
    /// emulator while it is busy (beyond it the kernel drops them, counted
    /// in `ip -s link` as TX drops of the device).
    #[arg(long, default_value_t = 10000)]
    txqueuelen: u32,
}

/// A buffer holds one packet up to the MTU.
const SLOT: usize = 2048;
/// Longest sleep, so that stop and reset flags are seen.
const MAX_IDLE: Duration = Duration::from_millis(50);
/// Reads per wake-up before the due packets are written.
const RECV_BUDGET: usize = 64;
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// What the driver adds to the link's own counters.
#[derive(Debug, Clone, Default, Serialize)]
struct DriverCounters {
    /// Reads from the device (one GSO batch or one packet each).
    reads: u64,
    /// Writes to the device (one coalesced batch or one packet each).
    writes: u64,
    /// Dropped because `max_packets` were already held.
    pool_drops: u64,
    recv_errors: u64,
    send_errors: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
struct DirectionStats {
    device: String,
    spec: String,
    /// Seconds since the start or the last reset.
    secs: f64,
    #[serde(flatten)]
    link: LinkCounters,
    queue_wait: QueueWait,
    in_flight: usize,
    buffers: usize,
    #[serde(flatten)]
    driver: DriverCounters,
}

#[derive(Debug, Serialize)]
struct Stats<'a> {
    seed: u64,
    offload: bool,
    up: &'a DirectionStats,
    down: &'a DirectionStats,
}

/// Shared between a direction's thread and the main thread: the latest
/// snapshot (copied every 200 ms, never per packet) and the flags.
#[derive(Debug, Default)]
struct Control {
    snapshot: Mutex<DirectionStats>,
    reset: AtomicBool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let both = LinkSpec::default().apply(&args.both).context("--both")?;
    let up = both.apply(&args.up).context("--up")?;
    let down = both.apply(&args.down).context("--down")?;
    if usize::from(args.mtu) + 64 > SLOT {
        bail!("--mtu {} is too large (at most {})", args.mtu, SLOT - 64);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let usr1 = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing a signal handler")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .context("installing a signal handler")?;

    let mut offload = !args.no_offload;
    let mut dirs = Vec::new();
    for (i, (name, spec, text)) in [
        (&args.up_dev, up, format!("{} | {}", args.both, args.up)),
        (
            &args.down_dev,
            down,
            format!("{} | {}", args.both, args.down),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let dev = DeviceBuilder::new()
            .name(name.as_str())
            .mtu(args.mtu)
            .tx_queue_len(args.txqueuelen)
            .offload(offload)
            .build_sync()
            .with_context(|| {
                format!("creating TUN device {name} (root, /dev/net/tun, a name not in use)")
            })?;
        // UDP offloads need Linux 6.2; without them GSO batches of the
        // tunnel's UDP are split by the kernel before the device.
        offload = offload && dev.udp_gso();
        dev.set_nonblocking(true).context("non-blocking TUN")?;
        let control = Arc::new(Control::default());
        let seed = args.seed.wrapping_mul(2).wrapping_add(i as u64);
        dirs.push((
            dev,
            Link::<Packet>::new(spec, seed),
            text,
            control,
            name.clone(),
        ));
    }
    println!(
        "ready: up={} down={} offload={offload} seed={}",
        args.up_dev, args.down_dev, args.seed
    );
    io::stdout().flush().ok();

    let mut threads = Vec::new();
    let mut controls = Vec::new();
    for (dev, link, text, control, name) in dirs {
        controls.push(Arc::clone(&control));
        let stop = Arc::clone(&stop);
        let max = args.max_packets;
        threads.push(
            thread::Builder::new()
                .name(format!("netem-{name}"))
                .spawn(move || run_direction(dev, link, name, text, max, &control, &stop))
                .context("starting a thread")?,
        );
    }

    let mut next_write = Instant::now();
    while !stop.load(Ordering::Relaxed) && threads.iter().all(|t| !t.is_finished()) {
        thread::sleep(Duration::from_millis(20));
        if usr1.swap(false, Ordering::Relaxed) {
            for c in &controls {
                c.reset.store(true, Ordering::Relaxed);
            }
        }
        if Instant::now() >= next_write {
            write_stats(&args, offload, &controls)?;
            next_write += Duration::from_millis(250);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some(anyhow::anyhow!("a direction's thread panicked")),
        }
    }
    write_stats(&args, offload, &controls)?;
    for c in &controls {
        let s = c.snapshot.lock().expect("stats lock");
        eprintln!(
            "{}: {} packets in, {} out, {} lost, {} queue drops, {} pool drops; queue wait p50 {} us p99 {} us",
            s.device,
            s.link.packets_in,
            s.link.packets_out,
            s.link.lost,
            s.link.queue_drops,
            s.driver.pool_drops,
            s.queue_wait.p50_us,
            s.queue_wait.p99_us
        );
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn write_stats(args: &Args, offload: bool, controls: &[Arc<Control>]) -> Result<()> {
    let Some(path) = &args.stats else {
        return Ok(());
    };
    let up = controls[0].snapshot.lock().expect("stats lock").clone();
    let down = controls[1].snapshot.lock().expect("stats lock").clone();
    let json = serde_json::to_vec_pretty(&Stats {
        seed: args.seed,
        offload,
        up: &up,
        down: &down,
    })?;
    // Replaced whole, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One direction: the device, its link, the buffers.
fn run_direction(
    dev: SyncDevice,
    mut link: Link<Packet>,
    device: String,
    spec: String,
    max_packets: usize,
    control: &Control,
    stop: &AtomicBool,
) -> Result<()> {
    // Receive side: the raw read (virtio header + up to 64 KiB of GSO
    // batch) and the split segments, one buffer each.
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + 65536];
    let mut staging: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE).map(|_| vec![0u8; SLOT]).collect();
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    // Buffers not held by the link; `buffers` counts all ever made.
    let mut free: Vec<Vec<u8>> = Vec::new();
    let mut buffers = IDEAL_BATCH_SIZE;
    // Send side: room for the virtio header, and for GRO to coalesce a
    // whole batch into the first packet of a flow.
    let mut out: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + 65536))
        .collect();
    let mut gro = GROTable::default();
    let mut driver = DriverCounters::default();
    let mut since = Instant::now();
    let mut next_publish = Instant::now();

    while !stop.load(Ordering::Relaxed) {
        if control.reset.swap(false, Ordering::Relaxed) {
            link.reset_counters();
            driver = DriverCounters::default();
            since = Instant::now();
        }
        let now = Instant::now();
        let wait = link
            .next_due()
            .map_or(MAX_IDLE, |d| d.saturating_duration_since(now))
            .min(MAX_IDLE);
        if !wait.is_zero() {
            let mut fds = [PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
            match nix::poll::ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("ppoll on the TUN device"),
            }
        }

        for _ in 0..RECV_BUDGET {
            let n = match dev.recv_multiple(&mut raw, &mut staging, &mut sizes, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // A malformed batch (e.g. a GSO type tun-rs cannot
                    // split) is dropped; the device stays usable.
                    driver.recv_errors += 1;
                    continue;
                }
            };
            driver.reads += 1;
            let now = Instant::now();
            for (buf, &len) in staging.iter_mut().zip(&sizes).take(n) {
                let fresh = match free.pop() {
                    Some(b) => b,
                    None if buffers < max_packets + IDEAL_BATCH_SIZE => {
                        buffers += 1;
                        vec![0u8; SLOT]
                    }
                    None => {
                        driver.pool_drops += 1;
                        continue;
                    }
                };
                let packet = Packet {
                    buf: std::mem::replace(buf, fresh),
                    len,
                };
                if let Err((packet, _cause)) = link.offer(now, len, packet) {
                    free.push(packet.buf);
                }
            }
        }

        let now = Instant::now();
        loop {
            let mut k = 0;
            while k < out.len() {
                let Some(packet) = link.pop_due(now) else {
                    break;
                };
                let o = &mut out[k];
                o.clear();
                o.resize(VIRTIO_NET_HDR_LEN, 0);
                o.extend_from_slice(&packet.buf[..packet.len]);
                free.push(packet.buf);
                k += 1;
            }
            if k == 0 {
                break;
            }
            driver.writes += 1;
            if dev
                .send_multiple(&mut gro, &mut out[..k], VIRTIO_NET_HDR_LEN)
                .is_err()
            {
                driver.send_errors += 1;
            }
            if k < out.len() {
                break;
            }
        }

        if now >= next_publish {
            publish(control, &device, &spec, &link, &driver, since, buffers);
            next_publish = now + PUBLISH_EVERY;
        }
    }
    publish(control, &device, &spec, &link, &driver, since, buffers);
    Ok(())
}

/// What the link holds: a whole slot and the length of the packet in it.
#[derive(Debug)]
struct Packet {
    buf: Vec<u8>,
    len: usize,
}

fn publish(
    control: &Control,
    device: &str,
    spec: &str,
    link: &Link<Packet>,
    driver: &DriverCounters,
    since: Instant,
    buffers: usize,
) {
    let mut s = control.snapshot.lock().expect("stats lock");
    *s = DirectionStats {
        device: device.to_string(),
        spec: spec.to_string(),
        secs: since.elapsed().as_secs_f64(),
        link: link.counters().clone(),
        queue_wait: link.queue_wait(),
        in_flight: link.in_flight(),
        buffers,
        driver: driver.clone(),
    };
}
