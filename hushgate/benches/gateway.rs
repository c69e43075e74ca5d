//! Gateway benchmark against real processes: junk datagrams dropped per
//! second from an unknown source, admissions (peers installed) per second
//! end to end, and the gateway's resident memory with 0 / 1,000 / 10,000
//! peers.
//!
//! Run: `cargo bench -p hushgate --bench gateway`
//!
//! It starts `hushgate control`, sets up a user, server and grant with
//! `hushgate admin`, enrolls and starts `hushgate gateway`, all on loopback
//! with temporary state folders, and kills every child at the end (also on
//! panic). The gateway runs with `--prefilter off`: the floods here measure
//! the user-space filter. Floods: 148 B and 32 B junk in GSO batches, 148 B one datagram
//! per send, then a drain of separate datagrams from a full socket (the
//! gateway is SIGSTOPped while they are queued). Environment knobs:
//! FLOOD_SECS (default 3), FLOOD_MAX (default 30,000,000 datagrams per
//! flood), DRAIN_BATCH (default 10,000 per round), ADMISSIONS (default
//! 10,000), CONCURRENCY (default 16). Figures and their meaning:
//! docs/benchmarks.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_client::{ControlClient, Trust};
use netstack::udp::UdpIo;
use rand::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_hushgate");
const PASSWORD: &str = "a long benchmark password";
const SERVER: &str = "den";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kills and reaps every child it holds when dropped, including while a
/// panic unwinds.
struct Children {
    procs: Vec<(String, Child)>,
    logs: PathBuf,
}

impl Children {
    fn spawn(&mut self, name: &str, cmd: &mut Command) -> u32 {
        let out = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id();
        self.procs.push((name.to_string(), child));
        pid
    }

    /// Panics with the child's log if it has exited.
    fn check_alive(&mut self) {
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.logs.join(format!("{name}.log")))
                    .unwrap_or_default();
                panic!("{name} exited early ({status}); its output:\n{log}");
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in self.procs.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn wait_until(what: &str, limit: Duration, kids: &mut Children, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        kids.check_alive();
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `hushgate admin --state DIR ARGS`, returning its standard output.
fn admin(state: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--state")
        .arg(state)
        .args(args)
        .env("HUSHGATE_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hushgate admin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `hushgate gateway status --state DIR --json`, parsed; `None` until it answers.
fn gateway_status(state: &Path) -> Option<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["gateway", "status", "--json", "--state"])
        .arg(state)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    (!v.is_null() && v["gateway"].is_object()).then_some(v)
}

fn unknown_source(state: &Path) -> u64 {
    gateway_status(state).expect("gateway status")["gateway"]["drops"]["unknown_source"]
        .as_u64()
        .expect("drops.unknown_source in the status")
}

/// utime + stime in clock ticks from a /proc/.../stat file.
fn cpu_ticks(stat_path: &Path) -> u64 {
    let s = std::fs::read_to_string(stat_path).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clk_tck() -> (f64, bool) {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(|t| (t, true))
        .unwrap_or((100.0, false))
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The data path thread's id. Linux keeps only 15 bytes of a thread name,
/// so its `comm` reads "hushgate-datapa".
fn datapath_tid(pid: u32) -> Option<u32> {
    let name = &"hushgate-datapath"[..15];
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// The kernel's drop counter of the UDP socket bound to 127.0.0.1:`port`
/// (last column of /proc/net/udp): datagrams that found its receive buffer
/// full.
fn socket_drops(port: u16) -> u64 {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

/// Udp InDatagrams from /proc/net/snmp (system wide): skbs handed to
/// receive calls, so a GRO buffer counts once.
fn udp_in_datagrams() -> u64 {
    let s = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "InDatagrams")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

struct FloodResult {
    size: usize,
    gso: bool,
    secs: f64,
    sent: u64,
    send_calls: u64,
    flooder_cpu: f64,
    counted: u64,
    kernel_drops: u64,
    left_unread: u64,
    udp_in: u64,
    datapath_cpu: f64,
    gateway_cpu: f64,
}

/// Sends `size`-byte junk (first byte 1, like a handshake initiation when
/// size is 148) from 127.0.0.2 to `dst` for `secs` or `max` datagrams.
/// With `gso`, bursts of 4 GSO batches per flush (on loopback the kernel
/// hands each batch to the gateway's GRO socket as one buffer); without,
/// one datagram per `sendmsg`, so every datagram is its own buffer, as
/// from many sources on a real network.
fn flood(size: usize, gso: bool, dst: SocketAddr, secs: f64, max: u64) -> (u64, u64, f64, f64) {
    let mut io = UdpIo::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))
        .expect("bind 127.0.0.2");
    let mut rng = rand::thread_rng();
    let pool: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let mut d = vec![0u8; size];
            rng.fill(&mut d[..]);
            d[0] = 1;
            d
        })
        .collect();
    let burst = if gso {
        io.max_gso_segments().max(1) * 4
    } else {
        1
    };
    let self_stat = PathBuf::from("/proc/thread-self/stat");
    let cpu0 = cpu_ticks(&self_stat);
    let limit = Duration::from_secs_f64(secs);
    let t = Instant::now();
    let mut next = 0usize;
    let mut queued = 0u64;
    while t.elapsed() < limit && queued < max {
        let n = (burst as u64).min(max - queued) as usize;
        for _ in 0..n {
            io.queue(dst, &pool[next % pool.len()]);
            next += 1;
        }
        queued += n as u64;
        io.flush().expect("flood send");
        while io.has_pending() && t.elapsed() < limit + Duration::from_secs(1) {
            std::thread::yield_now();
            io.flush().expect("flood send");
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(&self_stat) - cpu0) as f64;
    let st = io.stats();
    (st.tx_datagrams, st.tx_syscalls, secs, cpu)
}

fn run_flood(
    size: usize,
    gso: bool,
    dst: SocketAddr,
    gw_pid: u32,
    dp_tid: u32,
    gw_state: &Path,
    tck: f64,
) -> FloodResult {
    let secs = env_usize("FLOOD_SECS", 3) as f64;
    let max = env_usize("FLOOD_MAX", 30_000_000) as u64;
    let dp_stat = PathBuf::from(format!("/proc/{gw_pid}/task/{dp_tid}/stat"));
    let gw_stat = PathBuf::from(format!("/proc/{gw_pid}/stat"));
    let before = unknown_source(gw_state);
    let drops0 = socket_drops(dst.port());
    let in0 = udp_in_datagrams();
    let dp0 = cpu_ticks(&dp_stat);
    let gw0 = cpu_ticks(&gw_stat);
    let (sent, send_calls, secs, flooder_ticks) = std::thread::Builder::new()
        .name("bench-flooder".into())
        .spawn(move || flood(size, gso, dst, secs, max))
        .unwrap()
        .join()
        .expect("flooder");
    // Let the gateway drain its socket buffer: until it counted everything
    // that was not dropped by the kernel, or its counter stops moving
    // (the data path answers a status request before it reads the socket
    // in the same wake-up, so one reading can lag behind; on this busy
    // 2-core machine the thread may also wait for a CPU a while).
    // First wait (bounded) for the gateway's socket queue to empty; if it
    // does not, the data path left datagrams unread with nothing more
    // arriving (reported as "left unread").
    let q = Instant::now();
    while socket_rx_queue(dst.port()) > 0 && q.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let left_unread = socket_rx_queue(dst.port());
    let mut after = unknown_source(gw_state);
    for _ in 0..50 {
        if after - before >= sent.saturating_sub(socket_drops(dst.port()) - drops0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let now = unknown_source(gw_state);
        if now == after {
            break;
        }
        after = now;
    }
    let dp1 = cpu_ticks(&dp_stat);
    let gw1 = cpu_ticks(&gw_stat);
    let in1 = udp_in_datagrams();
    let drops1 = socket_drops(dst.port());
    FloodResult {
        size,
        gso,
        secs,
        sent,
        send_calls,
        flooder_cpu: flooder_ticks / tck,
        counted: after - before,
        kernel_drops: drops1 - drops0,
        left_unread,
        udp_in: in1 - in0,
        datapath_cpu: (dp1 - dp0) as f64 / tck,
        gateway_cpu: (gw1 - gw0) as f64 / tck,
    }
}

struct Block {
    from: usize,
    to: usize,
    r: AdmitResult,
    rss: u64,
    control_cpu: f64,
    gateway_cpu: f64,
}

/// The receive queue of the UDP socket bound to 127.0.0.1:`port`, in
/// bytes (rx_queue in /proc/net/udp).
fn socket_rx_queue(port: u16) -> u64 {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .and_then(|l| {
            let q = l.split_whitespace().nth(4)?;
            u64::from_str_radix(q.split(':').nth(1)?, 16).ok()
        })
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

struct DrainResult {
    sent: u64,
    counted: u64,
    kernel_drops: u64,
    rounds: u32,
    drain_secs: f64,
    datapath_cpu: f64,
}

/// The data path draining a full socket of separate (not GRO-coalesced)
/// datagrams: a sender on this 2-core machine cannot outrun it, so the
/// gateway is stopped (SIGSTOP) while `per_round` 148-byte junk
/// datagrams are queued one `sendmsg` each, then continued (SIGCONT)
/// and timed until its socket is empty. The data path thread's CPU is
/// then spent only on full `recvmmsg` batches.
fn burst_drain(
    dst: SocketAddr,
    gw_pid: u32,
    dp_tid: u32,
    gw_state: &Path,
    tck: f64,
    per_round: usize,
    secs: f64,
) -> DrainResult {
    let mut io = UdpIo::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))
        .expect("bind 127.0.0.2");
    let mut rng = rand::thread_rng();
    let pool: Vec<[u8; 148]> = (0..4096)
        .map(|_| {
            let mut d = [0u8; 148];
            rng.fill(&mut d[..]);
            d[0] = 1;
            d
        })
        .collect();
    let dp_stat = PathBuf::from(format!("/proc/{gw_pid}/task/{dp_tid}/stat"));
    let before = unknown_source(gw_state);
    let drops0 = socket_drops(dst.port());
    let dp0 = cpu_ticks(&dp_stat);
    let t = Instant::now();
    let (mut sent, mut rounds, mut drain) = (0u64, 0u32, Duration::ZERO);
    while t.elapsed().as_secs_f64() < secs && rounds < 1000 {
        signal(gw_pid, "-STOP");
        for i in 0..per_round {
            io.queue(dst, &pool[i % pool.len()]);
            io.flush().expect("send");
            while io.has_pending() {
                std::thread::yield_now();
                io.flush().expect("send");
            }
        }
        sent += per_round as u64;
        rounds += 1;
        let d = Instant::now();
        signal(gw_pid, "-CONT");
        while socket_rx_queue(dst.port()) > 0 && d.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(100));
        }
        drain += d.elapsed();
    }
    let mut counted = unknown_source(gw_state) - before;
    for _ in 0..20 {
        if counted >= sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        counted = unknown_source(gw_state) - before;
    }
    DrainResult {
        sent,
        counted,
        kernel_drops: socket_drops(dst.port()) - drops0,
        rounds,
        drain_secs: drain.as_secs_f64(),
        datapath_cpu: (cpu_ticks(&dp_stat) - dp0) as f64 / tck,
    }
}

struct AdmitResult {
    done: usize,
    failed: usize,
    secs: f64,
}

/// Admits keys `from..to` through the control plane with `concurrency`
/// tasks sharing one login; each access answers after the gateway acked.
async fn admit(
    client: &ControlClient,
    prefix: u64,
    from: usize,
    to: usize,
    concurrency: usize,
) -> AdmitResult {
    let next = Arc::new(AtomicUsize::new(from));
    let failed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(600);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, next, failed) = (client.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to || Instant::now() > deadline {
                    break;
                }
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&prefix.to_le_bytes());
                k[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                if let Err(e) = c.access(SERVER, proto::WgKey(k)).await {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("access {i} failed: {e}");
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    let done = next.load(Ordering::Relaxed).min(to) - from - failed;
    AdmitResult { done, failed, secs }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let admissions = env_usize("ADMISSIONS", 10_000).max(1_000);
    let concurrency = env_usize("CONCURRENCY", 16).max(1);
    let (tck, tck_known) = clk_tck();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let tmp = tempfile::tempdir().unwrap();
    let cp_dir = tmp.path().join("control");
    let gw_dir = tmp.path().join("gateway");
    let mut kids = Children {
        procs: Vec::new(),
        logs: tmp.path().to_path_buf(),
    };

    // Control plane.
    let cp_port = free_tcp_port();
    let cp_pid = kids.spawn(
        "control",
        Command::new(BIN)
            .args(["control", "--listen", &format!("127.0.0.1:{cp_port}")])
            .arg("--state")
            .arg(&cp_dir)
            .args(["--login-rate", "1000"]),
    );
    wait_until(
        "the control plane",
        Duration::from_secs(60),
        &mut kids,
        || {
            cp_dir.join("control-url").exists()
                && cp_dir.join("admin-token").exists()
                && TcpStream::connect(("127.0.0.1", cp_port)).is_ok()
        },
    );
    let url = format!("https://127.0.0.1:{cp_port}");
    let ca = cp_dir.join("ca.pem");

    admin(&cp_dir, &["user", "add", "alice"]);
    // One user holds every admission here: lift the per-user limit.
    let out = admin(
        &cp_dir,
        &[
            "server",
            "add",
            SERVER,
            "--max-admissions-per-user",
            "65533",
        ],
    );
    let token = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("enrollment token")
        .trim()
        .to_string();
    admin(&cp_dir, &["grant", "add", "alice", SERVER]);

    // Gateway.
    let udp_port = free_udp_port();
    let gw_pid = kids.spawn(
        "gateway",
        Command::new(BIN)
            .args(["gateway", "--control", &url, "--ca"])
            .arg(&ca)
            .arg("--state")
            .arg(&gw_dir)
            .args(["--listen-udp", &format!("127.0.0.1:{udp_port}")])
            .args(["--service", "plex=32400:127.0.0.1:9"])
            // This bench measures the user-space filter: junk from an
            // unknown source must reach the process. (bench/run.sh
            // measures the kernel pre-filter, in namespaces of its own.)
            .args(["--prefilter", "off"])
            .env("HUSHGATE_ENROLL_TOKEN", &token),
    );
    wait_until(
        "the gateway's status",
        Duration::from_secs(60),
        &mut kids,
        || gateway_status(&gw_dir).is_some_and(|s| s["control_connected"] == true),
    );
    let dp_tid = datapath_tid(gw_pid).expect("a thread named hushgate-datapath in the gateway");
    let dst = SocketAddr::from(([127, 0, 0, 1], udp_port));
    println!("control plane {url}, gateway pid {gw_pid} (data path tid {dp_tid}), udp {dst}");

    // 1. Junk floods from an unknown source.
    let rss_start = rss_kib(gw_pid);
    let mut floods = Vec::new();
    for (size, gso) in [(148, true), (32, true), (148, false)] {
        let r = run_flood(size, gso, dst, gw_pid, dp_tid, &gw_dir, tck);
        println!(
            "flood {size} B (gso {gso}): sent {} in {:.2} s ({} sendmsg), gateway counted {} unknown_source, kernel socket drops {}, left unread {} B, data path CPU {:.2} s",
            r.sent, r.secs, r.send_calls, r.counted, r.kernel_drops, r.left_unread, r.datapath_cpu
        );
        floods.push(r);
        kids.check_alive();
    }

    let per_round = env_usize("DRAIN_BATCH", 10_000);
    let drain = burst_drain(dst, gw_pid, dp_tid, &gw_dir, tck, per_round, 3.0);
    kids.check_alive();
    println!(
        "burst drain: {} rounds of {per_round}, sent {}, counted {}, kernel drops {}, drain {:.3} s, data path CPU {:.2} s",
        drain.rounds, drain.sent, drain.counted, drain.kernel_drops, drain.drain_secs, drain.datapath_cpu
    );

    // 2. Admissions through the real control plane and gateway, in blocks
    // of 1,000, with the CPU each process spent and the feed versions the
    // gateway acknowledged per block.
    let rss0 = rss_kib(gw_pid);
    let cp_stat = PathBuf::from(format!("/proc/{cp_pid}/stat"));
    let gw_stat = PathBuf::from(format!("/proc/{gw_pid}/stat"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix: u64 = rand::thread_rng().gen();
    let mut blocks: Vec<Block> = Vec::new();
    let mut rss1k = 0;
    rt.block_on(async {
        let client = ControlClient::new(&url, Trust::from_ca_file(&ca).unwrap()).unwrap();
        let login = client.login("alice", PASSWORD).await.expect("login");
        let alice = client.with_bearer(&login.token);
        let mut from = 0;
        while from < admissions {
            let to = (from + 1_000).min(admissions);
            let (cp0, gw0) = (cpu_ticks(&cp_stat), cpu_ticks(&gw_stat));
            let r = admit(&alice, prefix, from, to, concurrency).await;
            let rss = rss_kib(gw_pid);
            let b = Block {
                from,
                to,
                r,
                rss,
                control_cpu: (cpu_ticks(&cp_stat) - cp0) as f64 / tck,
                gateway_cpu: (cpu_ticks(&gw_stat) - gw0) as f64 / tck,
            };
            if from == 0 {
                rss1k = rss;
            }
            println!(
                "admissions {from}..{to}: {} in {:.2} s ({:.0}/s), control CPU {:.2} s, gateway CPU {:.2} s, RSS {:.1} MiB",
                b.r.done,
                b.r.secs,
                b.r.done as f64 / b.r.secs,
                b.control_cpu,
                b.gateway_cpu,
                mib(rss)
            );
            blocks.push(b);
            from = to;
        }
    });
    drop(rt);
    let admitted: usize = blocks.iter().map(|b| b.r.done).sum();
    let failed: usize = blocks.iter().map(|b| b.r.failed).sum();
    let rss_n = rss_kib(gw_pid);
    let status = gateway_status(&gw_dir).expect("gateway status");
    let peers = status["gateway"]["peers"].as_array().map_or(0, |p| p.len());
    let rss_after_status = rss_kib(gw_pid);
    kids.check_alive();

    // Report.
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!();
    println!("== hushgate gateway benchmark ==");
    println!("command: cargo bench -p hushgate --bench gateway");
    println!(
        "machine: {nproc} CPUs, {}, Linux {}; load average at start: {}",
        cpu_model(),
        kernel.trim(),
        loadavg.trim()
    );
    println!(
        "CPU times from /proc (utime+stime) at {tck} ticks/s{}",
        if tck_known {
            " (getconf CLK_TCK)"
        } else {
            " (getconf failed: assumed)"
        }
    );
    println!();
    println!("Junk from an unknown source (127.0.0.2 -> gateway udp):");
    println!(
        "| junk | sends | sent | counted unknown_source | kernel socket drops | bytes left unread 2 s after | secs | drops/s | data-path CPU s | CPU s per 1M drops | drops/s per full core | gateway CPU s (all threads) | recv buffers (UDP InDatagrams) | flooder CPU s |"
    );
    println!(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &floods {
        let per_m = if r.counted > 0 {
            r.datapath_cpu / (r.counted as f64 / 1e6)
        } else {
            f64::NAN
        };
        let per_core = if r.datapath_cpu > 0.0 {
            r.counted as f64 / r.datapath_cpu
        } else {
            f64::NAN
        };
        println!(
            "| {} B | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.3} | {:.0} | {:.2} | {} | {:.2} |",
            r.size,
            if r.gso {
                "GSO, 64 per sendmsg"
            } else {
                "1 per sendmsg"
            },
            r.sent,
            r.counted,
            r.kernel_drops,
            r.left_unread,
            r.secs,
            r.counted as f64 / r.secs,
            r.datapath_cpu,
            per_m,
            per_core,
            r.gateway_cpu,
            r.udp_in,
            r.flooder_cpu,
        );
    }
    for r in floods.iter().filter(|r| r.left_unread > 0) {
        println!(
            "WARNING: after the {} B flood ({}) the gateway left {} bytes unread in its socket for 2 s with nothing more arriving: its data path stopped reading (later rows measure a stuck gateway).",
            r.size,
            if r.gso { "GSO" } else { "1 per sendmsg" },
            r.left_unread
        );
    }
    println!();
    println!(
        "Separate 148 B datagrams drained from a full socket (gateway SIGSTOPped while {per_round} are queued, then SIGCONTinued, {} rounds):",
        drain.rounds
    );
    println!("| sent | counted unknown_source | kernel socket drops | drain wall s | drops/s while draining | data-path CPU s | CPU s per 1M drops | drops/s per full core |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {} | {} | {:.3} | {:.0} | {:.2} | {:.3} | {:.0} |",
        drain.sent,
        drain.counted,
        drain.kernel_drops,
        drain.drain_secs,
        drain.counted as f64 / drain.drain_secs,
        drain.datapath_cpu,
        drain.datapath_cpu / (drain.counted.max(1) as f64 / 1e6),
        drain.counted as f64 / drain.datapath_cpu
    );
    println!();
    println!(
        "Admissions through the control plane ({concurrency} concurrent tasks, one login, access answers after the gateway acked):"
    );
    println!(
        "| admissions | admitted | failed | secs | admissions/s | control CPU s | gateway CPU s | gateway RSS MiB after |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let all = |f: fn(&Block) -> f64| blocks.iter().map(f).sum::<f64>();
    let total_secs = all(|b| b.r.secs);
    for b in &blocks {
        println!(
            "| {} -> {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} |",
            b.from,
            b.to,
            b.r.done,
            b.r.failed,
            b.r.secs,
            b.r.done as f64 / b.r.secs,
            b.control_cpu,
            b.gateway_cpu,
            mib(b.rss)
        );
    }
    println!(
        "| all | {admitted} | {failed} | {total_secs:.2} | {:.0} | {:.2} | {:.2} | |",
        admitted as f64 / total_secs,
        all(|b| b.control_cpu),
        all(|b| b.gateway_cpu)
    );
    println!();
    println!("Gateway resident memory (VmRSS):");
    println!("| peers | RSS MiB | bytes per admission beyond 0 |");
    println!("| ---: | ---: | ---: |");
    println!("| 0 (at start) | {:.1} | |", mib(rss_start));
    println!("| 0 (after floods) | {:.1} | |", mib(rss0));
    let first = blocks.first().map_or(0, |b| b.r.done);
    for (n, rss) in [(first, rss1k), (admitted, rss_n)] {
        println!(
            "| {n} | {:.1} | {:.0} |",
            mib(rss),
            (rss as f64 - rss0 as f64) * 1024.0 / n.max(1) as f64
        );
    }
    println!(
        "peers listed by gateway status: {peers}; RSS after building that status: {:.1} MiB",
        mib(rss_after_status)
    );
    drop(kids);
}
