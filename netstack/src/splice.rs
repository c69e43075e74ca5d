//! [`Splice`]: joins smoltcp connections of a [`Stack`] to kernel TCP
//! streams registered with the caller's mio `Poll`.
//!
//! Bytes move directly between smoltcp's ring buffers and the kernel
//! socket (`read` into the send ring, `write` from the receive ring): no
//! intermediate buffer, so nothing here can grow without bound. A full ring
//! or a kernel `WouldBlock` simply stops that direction of that connection
//! until ACKs arrive (next pump) or mio reports readiness; other
//! connections are unaffected.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use smoltcp::socket::tcp;

use crate::stack::{ConnId, Error, Stack};

/// One spliced connection.
#[derive(Debug)]
struct Pipe {
    conn: ConnId,
    stream: TcpStream,
    /// Tunnel-side peer address, for [`Splice::close_all_for`].
    peer: Option<IpAddr>,
    /// The kernel stream's non-blocking connect has not completed yet.
    connecting: bool,
    /// mio is edge-triggered: these stay true until an operation returns
    /// `WouldBlock`, and an event sets them again.
    readable: bool,
    writable: bool,
    /// Kernel peer sent FIN (read returned 0); FIN queued in the tunnel.
    kernel_eof: bool,
    /// Tunnel peer's FIN and all data before it were written to the kernel
    /// stream, and its write side was shut down.
    kernel_shut: bool,
    /// The caller's class of this connection (the gateway: its service),
    /// an index into [`Splice::tag_totals`].
    tag: usize,
}

/// What the connections of one tag (see [`Splice::attach_tagged`]) did
/// since the splice was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagTotals {
    /// Connections attached, and those still live.
    pub attached: u64,
    pub live: u64,
    /// Bytes written from the tunnel to kernel streams, and read from
    /// kernel streams into the tunnel.
    pub to_kernel: u64,
    pub to_tunnel: u64,
}

/// Why a pipe ends.
enum End {
    /// Both directions finished with FIN.
    Done,
    /// The tunnel side was reset or timed out: reset the kernel side too.
    TunnelReset,
    /// The kernel side failed: abort the tunnel side.
    KernelFailed,
}

/// Byte counters of one [`Splice::pump`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PumpStats {
    /// Bytes written from the tunnel to kernel streams.
    pub to_kernel: u64,
    /// Bytes read from kernel streams into the tunnel.
    pub to_tunnel: u64,
    /// Pipes that ended during this call.
    pub ended: usize,
}

/// The set of spliced connections of one [`Stack`], driven from a mio loop
/// the caller owns. Tokens `token_base .. token_base + capacity` belong to
/// the splice.
#[derive(Debug)]
pub struct Splice {
    token_base: usize,
    slots: Vec<Option<Pipe>>,
    free: Vec<usize>,
    /// Indices of the live slots, so a pump visits only live pipes rather
    /// than every slot (the gateway keeps thousands of slots).
    live: Vec<usize>,
    /// For each slot, its position in `live` (meaningless when free).
    live_pos: Vec<usize>,
    /// Totals per tag, kept as the pumps go: reading them costs nothing
    /// per packet (a few additions per pipe and pump).
    tags: Vec<TagTotals>,
}

impl Splice {
    /// A splice that will use mio tokens `token_base .. token_base +
    /// capacity` (reserve that range in your loop).
    pub fn new(token_base: usize, capacity: usize) -> Splice {
        Splice {
            token_base,
            slots: (0..capacity).map(|_| None).collect(),
            // Reversed so the lowest tokens are handed out first.
            free: (0..capacity).rev().collect(),
            live: Vec::with_capacity(capacity),
            live_pos: vec![0; capacity],
            tags: Vec::new(),
        }
    }

    /// Connections and bytes per tag since the splice was made, indexed
    /// by tag (tags never attached read as zero or are absent).
    pub fn tag_totals(&self) -> &[TagTotals] {
        &self.tags
    }

    /// Number of live pipes.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True if no pipe is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if `token` is in this splice's range.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < self.slots.len()
    }

    /// Joins connection `conn` of `stack` with `stream` and registers the
    /// stream (readable + writable, edge-triggered) under a token of this
    /// splice, which is returned. `stream` may still be connecting (a fresh
    /// `TcpStream::connect`): the splice waits for it. On error the stream
    /// is dropped and the caller should abort or release `conn`.
    pub fn attach(
        &mut self,
        registry: &Registry,
        stack: &Stack,
        conn: ConnId,
        stream: TcpStream,
    ) -> Result<Token, Error> {
        self.attach_tagged(registry, stack, conn, stream, 0)
    }

    /// [`attach`](Self::attach), counting the connection and its bytes
    /// under `tag` (a small index: the tag table grows to hold it).
    pub fn attach_tagged(
        &mut self,
        registry: &Registry,
        stack: &Stack,
        conn: ConnId,
        mut stream: TcpStream,
        tag: usize,
    ) -> Result<Token, Error> {
        let peer = stack.remote_endpoint(conn).map(|e| e.ip());
        if stack.socket(conn).is_none() {
            return Err(Error::UnknownConnection(conn));
        }
        let Some(i) = self.free.pop() else {
            return Err(Error::SpliceFull);
        };
        let token = Token(self.token_base + i);
        if let Err(e) =
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.free.push(i);
            return Err(Error::Register(e.kind()));
        }
        // Both streams we get are fine for small writes; latency matters
        // more than coalescing for request/response traffic.
        let _ = stream.set_nodelay(true);
        let connecting =
            matches!(stream.peer_addr(), Err(e) if e.kind() == io::ErrorKind::NotConnected);
        self.live_pos[i] = self.live.len();
        self.live.push(i);
        self.slots[i] = Some(Pipe {
            conn,
            stream,
            peer,
            connecting,
            readable: true,
            writable: true,
            kernel_eof: false,
            kernel_shut: false,
            tag,
        });
        if self.tags.len() <= tag {
            self.tags.resize(tag + 1, TagTotals::default());
        }
        self.tags[tag].attached += 1;
        self.tags[tag].live += 1;
        Ok(token)
    }

    /// Records readiness reported by mio for `token`. Returns false if the
    /// token is not a live pipe of this splice. The I/O itself happens in
    /// the next [`pump`](Self::pump).
    pub fn on_ready(&mut self, token: Token, readable: bool, writable: bool) -> bool {
        if !self.owns(token) {
            return false;
        }
        match self.slots[token.0 - self.token_base].as_mut() {
            Some(p) => {
                p.readable |= readable;
                p.writable |= writable;
                true
            }
            None => false,
        }
    }

    /// [`on_ready`](Self::on_ready) from a mio event. Errors and hang-ups
    /// count as both readable and writable: the next read or write then
    /// reports the condition.
    pub fn on_event(&mut self, event: &mio::event::Event) -> bool {
        let trouble = event.is_error() || event.is_read_closed() || event.is_write_closed();
        self.on_ready(
            event.token(),
            event.is_readable() || trouble,
            event.is_writable() || trouble,
        )
    }

    /// Moves bytes both ways for every pipe and ends pipes whose both
    /// directions are finished or that failed. Call it after
    /// [`Stack::poll_ingress`] and before [`Stack::poll_egress`].
    pub fn pump(&mut self, stack: &mut Stack, registry: &Registry) -> PumpStats {
        let mut stats = PumpStats::default();
        let mut j = 0;
        while j < self.live.len() {
            let i = self.live[j];
            let Some(pipe) = self.slots[i].as_mut() else {
                j += 1;
                continue;
            };
            let before = stats;
            let end = pump_one(pipe, stack, &mut stats);
            if let Some(t) = self.tags.get_mut(pipe.tag) {
                t.to_kernel += stats.to_kernel - before.to_kernel;
                t.to_tunnel += stats.to_tunnel - before.to_tunnel;
            }
            if let Some(end) = end {
                // `vacate` moves the last live slot into position j.
                let pipe = self.vacate(i);
                stats.ended += 1;
                finish(pipe, end, stack, registry);
            } else {
                j += 1;
            }
        }
        stats
    }

    /// Cuts every pipe whose tunnel peer is `peer` (RST inside the tunnel,
    /// RST to the kernel side) and aborts that peer's other connections
    /// and handshakes in `stack`. Returns the number of pipes cut. The
    /// RSTs leave at the next [`Stack::poll_egress`].
    pub fn close_all_for(&mut self, stack: &mut Stack, registry: &Registry, peer: IpAddr) -> usize {
        let mut n = 0;
        let mut j = 0;
        while j < self.live.len() {
            let i = self.live[j];
            if self.slots[i].as_ref().is_some_and(|p| p.peer == Some(peer)) {
                let pipe = self.vacate(i);
                n += 1;
                finish(pipe, End::KernelFailed, stack, registry);
            } else {
                j += 1;
            }
        }
        stack.abort_peer(peer);
        n
    }

    /// Ends every pipe abruptly (both sides reset), e.g. at shutdown.
    pub fn close_all(&mut self, stack: &mut Stack, registry: &Registry) {
        while let Some(&i) = self.live.last() {
            let pipe = self.vacate(i);
            finish(pipe, End::KernelFailed, stack, registry);
        }
    }

    /// Takes the pipe out of live slot `i` and frees the slot.
    fn vacate(&mut self, i: usize) -> Pipe {
        let pos = self.live_pos[i];
        self.live.swap_remove(pos);
        if let Some(&moved) = self.live.get(pos) {
            self.live_pos[moved] = pos;
        }
        self.free.push(i);
        let pipe = self.slots[i].take().expect("a live slot holds a pipe");
        if let Some(t) = self.tags.get_mut(pipe.tag) {
            t.live -= 1;
        }
        pipe
    }
}

/// Releases both halves of a finished pipe.
fn finish(mut pipe: Pipe, end: End, stack: &mut Stack, registry: &Registry) {
    let _ = registry.deregister(&mut pipe.stream);
    match end {
        End::Done => {}
        End::TunnelReset => reset_kernel(&pipe.stream),
        End::KernelFailed => {
            let _ = stack.abort(pipe.conn);
            reset_kernel(&pipe.stream);
        }
    }
    // For `Done` the stack finishes the close handshake in the background;
    // an aborted socket lingers only until its RST is sent.
    stack.release(pipe.conn);
    // Dropping the stream closes the descriptor.
}

/// Makes the coming close of `stream` send RST instead of FIN, so the
/// kernel-side peer learns the transfer was cut rather than complete.
fn reset_kernel(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Outcome of one kernel I/O call made from inside smoltcp's buffer
/// closure (the closure must report bytes consumed, so errors travel out
/// as values).
enum Io {
    Moved(usize),
    Eof,
    Blocked,
    /// EINTR: try again at once.
    Retry,
    /// smoltcp offered an empty buffer: nothing can move now.
    NoRoom,
    Failed,
}

fn classify(r: io::Result<usize>) -> Io {
    match r {
        Ok(0) => Io::Eof,
        Ok(n) => Io::Moved(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::Blocked,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Io::Retry,
        Err(_) => Io::Failed,
    }
}

/// True once the tunnel peer's FIN has been received.
fn fin_received(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

fn pump_one(p: &mut Pipe, stack: &mut Stack, stats: &mut PumpStats) -> Option<End> {
    let Some(sock) = stack.socket_mut(p.conn) else {
        return Some(End::TunnelReset);
    };
    if p.connecting {
        if !(p.readable || p.writable) {
            return tunnel_gone(sock.state(), p);
        }
        // mio's recipe for a non-blocking connect: an error is reported by
        // SO_ERROR; success by peer_addr; NotConnected means "not yet".
        match p.stream.take_error() {
            Ok(Some(_)) | Err(_) => return Some(End::KernelFailed),
            Ok(None) => {}
        }
        match p.stream.peer_addr() {
            Ok(_) => p.connecting = false,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                p.readable = false;
                p.writable = false;
                return tunnel_gone(sock.state(), p);
            }
            Err(_) => return Some(End::KernelFailed),
        }
    }

    // Tunnel -> kernel: write straight out of smoltcp's receive ring.
    while p.writable && !p.kernel_shut && sock.recv_queue() > 0 {
        let stream = &mut p.stream;
        let r = sock.recv(|buf| match classify(stream.write(buf)) {
            Io::Moved(n) => (n, Io::Moved(n)),
            other => (0, other),
        });
        match r {
            Ok(Io::Moved(n)) => stats.to_kernel += n as u64,
            Ok(Io::Retry) => {}
            Ok(Io::NoRoom) => break,
            Ok(Io::Blocked) => p.writable = false,
            // write() returning 0 for a non-empty buffer means the stream
            // cannot take data any more.
            Ok(Io::Eof) | Ok(Io::Failed) => return Some(End::KernelFailed),
            Err(_) => break,
        }
    }
    if !p.kernel_shut && fin_received(sock.state()) && sock.recv_queue() == 0 {
        // Everything the tunnel peer sent before its FIN is in the kernel:
        // pass the half-close on.
        if p.stream.shutdown(Shutdown::Write).is_err() {
            return Some(End::KernelFailed);
        }
        p.kernel_shut = true;
    }

    // Kernel -> tunnel: read straight into smoltcp's send ring. Only once
    // established (may_send), so nothing is read that could not be sent.
    while p.readable && !p.kernel_eof && sock.can_send() {
        let stream = &mut p.stream;
        let r = sock.send(|buf| {
            if buf.is_empty() {
                // A zero-length read would look like EOF.
                return (0, Io::NoRoom);
            }
            match classify(stream.read(buf)) {
                Io::Moved(n) => (n, Io::Moved(n)),
                other => (0, other),
            }
        });
        match r {
            Ok(Io::Moved(n)) => stats.to_tunnel += n as u64,
            Ok(Io::Retry) => {}
            Ok(Io::NoRoom) => break,
            Ok(Io::Blocked) => p.readable = false,
            Ok(Io::Eof) => {
                p.kernel_eof = true;
                // FIN goes out after the data already queued.
                sock.close();
            }
            Ok(Io::Failed) => return Some(End::KernelFailed),
            Err(_) => break,
        }
    }

    if p.kernel_eof && p.kernel_shut {
        return Some(End::Done);
    }
    tunnel_gone(sock.state(), p)
}

/// A tunnel socket that reached CLOSED while this pipe still had a
/// direction open was reset (or timed out): an orderly close always passes
/// through a FIN that the pipe has seen.
fn tunnel_gone(state: tcp::State, p: &Pipe) -> Option<End> {
    if state == tcp::State::Closed && !(p.kernel_eof && p.kernel_shut) {
        Some(End::TunnelReset)
    } else {
        None
    }
}
