//! End to end over real kernel sockets on loopback:
//! player (std TcpStream) -> local listener -> client stack -> (memory) ->
//! gateway stack -> upstream TcpStream -> upstream server, all stacks and
//! splices driven by one mio loop on one thread.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use hushgate_netstack::driver::{self, Driver, Flow, Handler, Wake};
use hushgate_netstack::{Splice, Stack};
use mio::event::Event;
use mio::{Interest, Registry, Token};

const SERVICE_PORT: u16 = 32400;
/// Token 0 is the driver's waker.
const LISTENER: Token = Token(1);
const CLIENT_TOKENS: usize = 1000;
const GATEWAY_TOKENS: usize = 5000;

// ----- upstream "media server" ----------------------------------------------

/// Bytes the upstream has written per `GET` seed, to observe backpressure.
type Written = Arc<[AtomicU64; 16]>;

/// Serves, per connection, one request line:
/// `GET seed n` -> n pattern bytes then FIN; `ECHO` -> echo until EOF then
/// FIN; `RESET` -> close with RST.
fn upstream() -> (SocketAddr, Written) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let written: Written = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
    let w = written.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let w = w.clone();
            thread::spawn(move || serve(s, &w));
        }
    });
    (addr, written)
}

fn serve(s: TcpStream, written: &Written) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut s = s;
    match words.as_slice() {
        ["GET", seed, n] => {
            let (seed, n): (u64, u64) = (seed.parse().unwrap(), n.parse().unwrap());
            let mut buf = vec![0u8; 64 << 10];
            let mut off = 0;
            while off < n {
                let k = buf.len().min((n - off) as usize);
                fill(seed, off, &mut buf[..k]);
                if s.write_all(&buf[..k]).is_err() {
                    return;
                }
                off += k as u64;
                written[seed as usize % 16].store(off, Ordering::SeqCst);
            }
        }
        ["ECHO"] => {
            // Whatever BufReader already pulled in comes first.
            let pending = r.buffer().to_vec();
            if s.write_all(&pending).is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match r.get_mut().read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        if s.write_all(&buf[..k]).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
        ["RESET"] => {
            // No shutdown: closing with linger 0 sends RST and nothing else.
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            return;
        }
        _ => {}
    }
    let _ = s.shutdown(Shutdown::Write);
}

// ----- the data path under test ---------------------------------------------

enum Cmd {
    CloseAllFor(IpAddr, mpsc::Sender<usize>),
}

/// The client shim and the gateway on one mio loop.
struct Rig {
    local: SocketAddr,
    cmds: Option<driver::Sender<Cmd>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Rig {
    fn start(upstream: SocketAddr) -> Rig {
        let (mut driver, cmds) = Driver::new().unwrap();
        let registry = driver.registry().try_clone().unwrap();
        let mut listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = listener.local_addr().unwrap();
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .unwrap();
        let thread = thread::spawn(move || {
            let mut path = DataPath::new(registry, listener, upstream);
            driver.run(&mut path).unwrap();
            path.shim.close_all(&mut path.client, &path.registry);
            path.gw.close_all(&mut path.gateway, &path.registry);
        });
        Rig {
            local,
            cmds: Some(cmds),
            thread: Some(thread),
        }
    }

    fn close_all_for(&self, peer: IpAddr) -> usize {
        let (tx, rx) = mpsc::channel();
        assert!(self.cmds.as_ref().unwrap().send(Cmd::CloseAllFor(peer, tx)));
        rx.recv_timeout(Duration::from_secs(10)).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Dropping the last sender tells the loop to stop.
        self.cmds = None;
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Both sides' stacks and splices, as the loop's per-batch work.
struct DataPath {
    registry: Registry,
    listener: mio::net::TcpListener,
    upstream: SocketAddr,
    service: SocketAddr,
    client: Stack,
    gateway: Stack,
    shim: Splice,
    gw: Splice,
}

impl DataPath {
    fn new(registry: Registry, listener: mio::net::TcpListener, upstream: SocketAddr) -> DataPath {
        let mut gateway = Stack::new(config(SERVER_IP));
        gateway.listen(SERVICE_PORT).unwrap();
        DataPath {
            registry,
            listener,
            upstream,
            service: SocketAddr::new(SERVER_IP, SERVICE_PORT),
            client: Stack::new(config(CLIENT_IP)),
            gateway,
            shim: Splice::new(CLIENT_TOKENS, 256),
            gw: Splice::new(GATEWAY_TOKENS, 256),
        }
    }
}

impl Handler for DataPath {
    type Command = Cmd;

    fn wake(&mut self, now: Instant) -> Wake {
        Wake::IDLE
            .after(self.client.poll_delay(now))
            .after(self.gateway.poll_delay(now))
    }

    fn ready(&mut self, ev: &Event) {
        if ev.token() == LISTENER {
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => {
                        let id = self.client.connect(self.service).unwrap();
                        self.shim
                            .attach(&self.registry, &self.client, id, stream)
                            .unwrap();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("accept: {e}"),
                }
            }
        } else {
            let _ = self.shim.on_event(ev) || self.gw.on_event(ev);
        }
    }

    fn command(&mut self, cmd: Cmd, _now: Instant) -> io::Result<Flow> {
        match cmd {
            Cmd::CloseAllFor(peer, done) => {
                let n = self
                    .gw
                    .close_all_for(&mut self.gateway, &self.registry, peer);
                let _ = done.send(n);
            }
        }
        Ok(Flow::Continue)
    }

    fn batch(&mut self, now: Instant) -> io::Result<()> {
        let DataPath {
            registry,
            upstream,
            client,
            gateway,
            shim,
            gw,
            ..
        } = self;
        // Client shim side.
        client.poll_ingress(now);
        shim.pump(client, registry);
        client.poll_egress(now);
        client.drain_outbound(|p| {
            gateway.push_inbound(p);
        });
        // Gateway side.
        gateway.poll_ingress(now);
        while let Some(id) = gateway.accept() {
            let up = mio::net::TcpStream::connect(*upstream).unwrap();
            gw.attach(registry, gateway, id, up).unwrap();
        }
        gw.pump(gateway, registry);
        gateway.poll_egress(now);
        gateway.drain_outbound(|p| {
            client.push_inbound(p);
        });
        Ok(())
    }
}

// ----- players ----------------------------------------------------------------

fn player(rig: &Rig) -> TcpStream {
    let s = TcpStream::connect(rig.local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Reads to EOF, verifying the pattern; returns the byte count.
fn read_pattern(s: &mut TcpStream, seed: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        check(seed, got, &buf[..n]);
        got += n as u64;
    }
}

#[test]
fn download_through_both_stacks_is_intact() {
    let (up, _) = upstream();
    let rig = Rig::start(up);
    let mut s = player(&rig);
    let size = 12u64 << 20;
    s.write_all(format!("GET 1 {size}\n").as_bytes()).unwrap();
    let t = Instant::now();
    assert_eq!(read_pattern(&mut s, 1).unwrap(), size);
    eprintln!(
        "12 MiB through two stacks ({}): {:.0} ms",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        t.elapsed().as_secs_f64() * 1e3
    );
}

#[test]
fn half_close_propagates_both_ways() {
    let (up, _) = upstream();
    let rig = Rig::start(up);
    let mut s = player(&rig);
    let size = 3u64 << 20;
    let mut r = s.try_clone().unwrap();
    // The request line is consumed, not echoed.
    let reader = thread::spawn(move || read_pattern(&mut r, 3).unwrap());
    s.write_all(b"ECHO\n").unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0;
    while off < size {
        let k = buf.len().min((size - off) as usize);
        fill(3, off, &mut buf[..k]);
        s.write_all(&buf[..k]).unwrap();
        off += k as u64;
    }
    // Our FIN must travel to the upstream (which then finishes echoing and
    // sends its own FIN back to us).
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(reader.join().unwrap(), size);
}

#[test]
fn slow_reader_does_not_stall_another_connection() {
    let (up, written) = upstream();
    let rig = Rig::start(up);
    let big = 64u64 << 20;
    let mut slow = player(&rig);
    slow.write_all(format!("GET 2 {big}\n").as_bytes()).unwrap();
    // Let the slow connection fill every buffer on its path.
    let t = Instant::now();
    let mut last = 0;
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = written[2].load(Ordering::SeqCst);
        if now > 0 && now == last {
            break;
        }
        last = now;
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "upstream never blocked"
        );
    }

    let mut fast = player(&rig);
    let size = 8u64 << 20;
    fast.write_all(format!("GET 4 {size}\n").as_bytes())
        .unwrap();
    assert_eq!(read_pattern(&mut fast, 4).unwrap(), size);

    // Backpressure reached the upstream: it could not write everything
    // while nobody read, so nothing on the path buffered without bound.
    let stalled_at = written[2].load(Ordering::SeqCst);
    assert!(
        stalled_at < big / 2,
        "upstream wrote {stalled_at} bytes to a reader that reads nothing"
    );
    // And the slow connection is intact once it reads.
    assert_eq!(read_pattern(&mut slow, 2).unwrap(), big);
}

#[test]
fn upstream_reset_reaches_the_player() {
    let (up, _) = upstream();
    let rig = Rig::start(up);
    let mut s = player(&rig);
    s.write_all(b"RESET\n").unwrap();
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).expect_err("a reset, not EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn unreachable_upstream_resets_the_player() {
    // Bind then drop: nothing listens on this port.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let rig = Rig::start(dead);
    let mut s = player(&rig);
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).expect_err("a reset, not EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn revoking_a_peer_cuts_its_connections() {
    let (up, _) = upstream();
    let rig = Rig::start(up);
    let mut a = player(&rig);
    let mut b = player(&rig);
    a.write_all(b"GET 5 1000000000\n").unwrap();
    b.write_all(b"GET 6 1000000000\n").unwrap();
    // Both flowing.
    let mut buf = vec![0u8; 1 << 16];
    a.read_exact(&mut buf).unwrap();
    b.read_exact(&mut buf).unwrap();
    assert_eq!(rig.close_all_for(CLIENT_IP), 2);
    for s in [&mut a, &mut b] {
        let r = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(0),
                Ok(_) => continue, // data already in flight before the cut
                Err(e) => break Err(e),
            }
        };
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }
}
