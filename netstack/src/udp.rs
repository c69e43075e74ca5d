//! Batched UDP I/O for the tunnel's outer socket: [`UdpIo`].
//!
//! Receiving uses `recvmmsg` (up to [`quinn_udp::BATCH_SIZE`] buffers per
//! call) with UDP GRO enabled, so one buffer may hold many datagrams of one
//! size from one source; [`UdpIo::recv_batch`] splits them again. Sending
//! coalesces consecutive datagrams to one destination into one UDP GSO
//! `sendmsg` (the kernel cuts them into datagrams again).
//!
//! All system calls go through `quinn-udp`, which keeps this crate free of
//! `unsafe`. quinn-udp has no `sendmmsg`: it sends one `Transmit` (one GSO
//! batch, up to 64 datagrams to one destination) per `sendmsg`. Writing
//! `sendmmsg` here would need `unsafe` FFI, which this crate forbids; with
//! GSO a batch already carries up to ~64 KiB per call, which is where the
//! measured gain comes from, so the only cost is one call per destination
//! change in the queue.
//!
//! Sockets set up by quinn-udp also get (on Linux) `IP_MTU_DISCOVER =
//! IP_PMTUDISC_PROBE` / `IPV6_DONTFRAG`: a datagram larger than the
//! interface MTU fails with `EMSGSIZE` instead of being fragmented, and
//! [`UdpIo::flush`] drops and counts it.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

/// Receive and send buffer size asked of the kernel (`SO_RCVBUF`,
/// `SO_SNDBUF`; the `*FORCE` variants first, which work as root beyond
/// `net.core.rmem_max` / `wmem_max`).
pub const SOCKET_BUFFER_BYTES: usize = 16 << 20;

/// Largest UDP payload one IPv4 send can carry (65535 - 20 - 8); also the
/// cap on the total payload of one GSO batch, which the kernel builds as
/// one IP packet before segmenting it. IPv6 allows 20 bytes more; the
/// smaller figure is used for both.
pub const MAX_DATAGRAM: usize = 65_507;

/// One receive buffer: the largest GRO super-buffer the kernel builds with
/// its default limits (`gro_max_size` 64 KiB, so strictly less than this).
const RX_SLOT: usize = 1 << 16;

/// Default bound on what waits in the send queue, see [`UdpIo::set_queue_limit`].
pub const DEFAULT_QUEUE_LIMIT: usize = 8 << 20;

/// What each queued datagram costs against the queue limit beyond its
/// payload, so that empty datagrams are bounded too.
const DATAGRAM_OVERHEAD: usize = 64;

/// Counters since the socket was created. "Syscalls" are calls into
/// quinn-udp's `recv` / `try_send` (each is one `recvmmsg` / `sendmsg`,
/// apart from its internal retries on `EINTR` or a first `EINVAL`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams handed to `recv_batch`'s callback.
    pub rx_datagrams: u64,
    /// Payload bytes handed to `recv_batch`'s callback.
    pub rx_bytes: u64,
    /// `recvmmsg` calls, including the ones that found nothing.
    pub rx_syscalls: u64,
    /// Receive buffers that held more than one datagram (GRO).
    pub rx_gro_buffers: u64,
    /// Receive buffers that were completely full, so possibly cut short
    /// (only with `gro_max_size` raised above 64 KiB): their partial tail
    /// was dropped.
    pub rx_truncated: u64,
    /// Datagrams the kernel accepted.
    pub tx_datagrams: u64,
    /// Payload bytes the kernel accepted.
    pub tx_bytes: u64,
    /// `sendmsg` calls, including failed ones.
    pub tx_syscalls: u64,
    /// Sends that carried more than one datagram (GSO).
    pub tx_gso_batches: u64,
    /// Times `flush` stopped on `WouldBlock` with datagrams still queued.
    pub tx_would_block: u64,
    /// Datagrams dropped because the kernel refused them (`EMSGSIZE`,
    /// unreachable, wrong address family, ...) or `queue` rejected them.
    pub tx_dropped_error: u64,
    /// Datagrams dropped, oldest first, because the queue was over its limit.
    pub tx_dropped_overflow: u64,
    /// Errors reported on a send or receive call that belong to an earlier
    /// datagram (ICMP unreachable and the like; Linux reports them only on
    /// connected sockets or with [`UdpIo::enable_transport_errors`]).
    pub async_errors: u64,
    /// Entries read from the socket error queue (with transport errors on).
    pub icmp_errors: u64,
}

/// A run of queued datagrams to one destination, all `seg` bytes long but
/// the last, which may be shorter: sent with one `sendmsg`.
#[derive(Debug, Clone, Copy)]
struct Batch {
    dst: SocketAddr,
    /// Offset of the first byte in `tx_buf`.
    start: usize,
    /// Total payload bytes.
    len: usize,
    /// Segment size (the length of every datagram but the last).
    seg: usize,
    /// Datagrams in the batch.
    count: usize,
    /// More datagrams of `seg` bytes may join (the last one is not shorter).
    open: bool,
    /// Whether this batch was already retried after an asynchronous error.
    retried: bool,
}

impl Batch {
    /// Length of the datagram at `i` (only the last may be short).
    fn datagram_len(&self, i: usize) -> usize {
        if i + 1 < self.count {
            self.seg
        } else {
            self.len - self.seg * (self.count - 1)
        }
    }
}

/// A non-blocking UDP socket with batched receive (recvmmsg + GRO) and
/// batched send (GSO), meant to be owned by one mio loop.
///
/// The owner registers [`socket`](Self::socket) for `READABLE` (and
/// `WRITABLE` while [`has_pending`](Self::has_pending)), calls
/// [`recv_batch`](Self::recv_batch) when readable, [`queue`](Self::queue)s
/// what it has to send during a wake-up and [`flush`](Self::flush)es once at
/// its end (and again when writable).
pub struct UdpIo {
    socket: mio::net::UdpSocket,
    state: UdpSocketState,
    /// IPv4 socket, or IPv6 socket restricted to IPv6.
    family_v4: bool,
    v6_only: bool,
    transport_errors: bool,
    rx_buf: Vec<u8>,
    rx_meta: [RecvMeta; BATCH_SIZE],
    /// Payload of the queued datagrams, batch after batch; bytes before
    /// the first batch's `start` are already sent or dropped.
    tx_buf: Vec<u8>,
    batches: VecDeque<Batch>,
    /// Payload plus `DATAGRAM_OVERHEAD` per datagram, of what is queued.
    pending_cost: usize,
    queue_limit: usize,
    stats: UdpStats,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpIo")
            .field("socket", &self.socket)
            .field("max_gso_segments", &self.state.max_gso_segments())
            .field("gro_segments", &self.state.gro_segments())
            .field("queued_batches", &self.batches.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl UdpIo {
    /// Binds a non-blocking UDP socket to `addr` (an IPv6 address binds an
    /// IPv6-only socket), with 16 MiB kernel buffers and GRO where the
    /// kernel has it.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpIo> {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        UdpIo::from_std(sock.into())
    }

    /// Takes over a bound socket: makes it non-blocking, sets the 16 MiB
    /// buffers and enables GRO, like [`bind`](Self::bind). A dual-stack
    /// IPv6 socket is kept as it is (IPv4 destinations are then sent to as
    /// IPv4-mapped addresses).
    pub fn from_std(sock: std::net::UdpSocket) -> io::Result<UdpIo> {
        sock.set_nonblocking(true)?;
        set_buffers(&sock);
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        let local = sock.local_addr()?;
        let family_v4 = local.is_ipv4();
        let v6_only = !family_v4 && socket2::SockRef::from(&sock).only_v6()?;
        Ok(UdpIo {
            socket: mio::net::UdpSocket::from_std(sock),
            state,
            family_v4,
            v6_only,
            transport_errors: false,
            rx_buf: vec![0; BATCH_SIZE * RX_SLOT],
            rx_meta: [RecvMeta::default(); BATCH_SIZE],
            tx_buf: Vec::with_capacity(4 * MAX_DATAGRAM),
            batches: VecDeque::with_capacity(64),
            pending_cost: 0,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            stats: UdpStats::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket, for queries and socket options. To register it in a
    /// `mio::Poll`, register the `UdpIo` itself (it is a `mio::event::Source`).
    pub fn socket(&self) -> &mio::net::UdpSocket {
        &self.socket
    }

    /// Datagrams one GSO send may carry (1 without GSO, or after the kernel
    /// refused a GSO send with `EIO`/`EINVAL`, which quinn-udp takes as
    /// "this path cannot do GSO" for the rest of the socket's life).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Datagrams one GRO receive may carry (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Turns on ICMP error reporting for this unconnected socket
    /// (`IP_RECVERR` / `IPV6_RECVERR`). Without it Linux ignores ICMP errors
    /// for unconnected UDP sockets. With it, each ICMP error makes the next
    /// send or receive call fail once (`ECONNREFUSED` and the like): the
    /// send is retried once, and the error queue is drained and counted in
    /// [`UdpStats::icmp_errors`].
    pub fn enable_transport_errors(&mut self) -> io::Result<()> {
        self.state
            .enable_transport_errors(UdpSockRef::from(&self.socket))?;
        self.transport_errors = true;
        Ok(())
    }

    /// Bounds the send queue (payload bytes plus a small per-datagram
    /// overhead, at least 64 KiB). Beyond it [`queue`](Self::queue) drops
    /// the oldest datagrams and counts them in
    /// [`UdpStats::tx_dropped_overflow`].
    pub fn set_queue_limit(&mut self, bytes: usize) {
        self.queue_limit = bytes.max(1 << 16);
    }

    /// Counters since creation.
    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    /// Receives until the socket has nothing more or at least `max`
    /// datagrams were delivered, calling `f(source, datagram)` for each, in
    /// arrival order. GRO buffers are split back into their datagrams; a
    /// buffer is always delivered whole, so the count may exceed `max` by
    /// up to one buffer's worth ([`gro_segments`](Self::gro_segments) - 1).
    ///
    /// Returns the number delivered. Errors that belong to earlier sends
    /// (ICMP-reported) are counted and skipped; other errors are returned
    /// if nothing was delivered yet. Allocates nothing.
    ///
    /// It stops when `recvmmsg` returns fewer buffers than asked, which the
    /// kernel does only after finding the queue empty (so an edge-triggered
    /// registration is re-armed as with `WouldBlock`). When it stops at
    /// `max` instead, more may be waiting: call it again before sleeping.
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let mut delivered = 0;
        let mut skipped_errors = 0;
        while delivered < max {
            let slots = (max - delivered).min(BATCH_SIZE);
            self.stats.rx_syscalls += 1;
            let result = {
                let mut chunks = self.rx_buf.chunks_mut(RX_SLOT);
                let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                    IoSliceMut::new(chunks.next().expect("BATCH_SIZE slots"))
                });
                self.state.recv(
                    UdpSockRef::from(&self.socket),
                    &mut iovs[..slots],
                    &mut self.rx_meta[..slots],
                )
            };
            let n = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_async_error(&e) && skipped_errors < 16 => {
                    // A pending error of the socket (an ICMP report about an
                    // earlier send) took this call; the data is still there.
                    skipped_errors += 1;
                    self.note_async_error();
                    continue;
                }
                Err(_) if delivered > 0 => break,
                Err(e) => return Err(e),
            };
            for (i, meta) in self.rx_meta[..n].iter().enumerate() {
                let buf = &self.rx_buf[i * RX_SLOT..i * RX_SLOT + meta.len];
                if meta.len == 0 || meta.stride == 0 || meta.stride >= meta.len {
                    if meta.len == RX_SLOT {
                        // Cannot be a whole datagram (> MAX_DATAGRAM).
                        self.stats.rx_truncated += 1;
                        continue;
                    }
                    self.stats.rx_datagrams += 1;
                    self.stats.rx_bytes += meta.len as u64;
                    delivered += 1;
                    f(meta.addr, buf);
                    continue;
                }
                self.stats.rx_gro_buffers += 1;
                let whole = if meta.len == RX_SLOT {
                    // Full buffer: possibly cut short; keep whole strides.
                    self.stats.rx_truncated += 1;
                    meta.len - meta.len % meta.stride
                } else {
                    meta.len
                };
                for datagram in buf[..whole].chunks(meta.stride) {
                    self.stats.rx_datagrams += 1;
                    self.stats.rx_bytes += datagram.len() as u64;
                    delivered += 1;
                    f(meta.addr, datagram);
                }
            }
            if n < slots {
                break;
            }
        }
        Ok(delivered)
    }

    /// Queues one datagram for `dst`, copying it. It joins the last queued
    /// batch when that goes to the same destination, all its datagrams are
    /// this long or longer (this one may be shorter, and then closes the
    /// batch), and the batch is under [`max_gso_segments`](Self::max_gso_segments)
    /// and [`MAX_DATAGRAM`] bytes. Datagrams that cannot be sent from this
    /// socket (over [`MAX_DATAGRAM`], port 0, another address family) are
    /// dropped here and counted in [`UdpStats::tx_dropped_error`].
    pub fn queue(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let Some(dst) = self.normalize_destination(dst) else {
            self.stats.tx_dropped_error += 1;
            return;
        };
        if datagram.len() > MAX_DATAGRAM {
            self.stats.tx_dropped_error += 1;
            return;
        }
        let cost = datagram.len() + DATAGRAM_OVERHEAD;
        while self.pending_cost + cost > self.queue_limit && !self.batches.is_empty() {
            self.drop_oldest();
        }
        if self.batches.is_empty() {
            self.tx_buf.clear();
        } else {
            self.compact_if_wasteful();
        }
        let len = datagram.len();
        let start = self.tx_buf.len();
        self.tx_buf.extend_from_slice(datagram);
        self.pending_cost += cost;
        let max_segments = self.state.max_gso_segments();
        if let Some(b) = self.batches.back_mut() {
            if b.open
                && b.dst == dst
                && len > 0
                && len <= b.seg
                && b.count < max_segments
                && b.len + len <= MAX_DATAGRAM
            {
                debug_assert_eq!(b.start + b.len, start);
                b.len += len;
                b.count += 1;
                b.open = len == b.seg;
                return;
            }
        }
        self.batches.push_back(Batch {
            dst,
            start,
            len,
            seg: len,
            count: 1,
            open: len > 0,
            retried: false,
        });
    }

    /// Whether datagrams wait to be sent (register for `WRITABLE` then).
    pub fn has_pending(&self) -> bool {
        !self.batches.is_empty()
    }

    /// Sends everything queued, one `sendmsg` per batch. On `WouldBlock` the
    /// rest stays queued and `Ok` is returned: call again when writable.
    ///
    /// A failed send never blocks the queue: an error that belongs to an
    /// earlier datagram (ICMP-reported, e.g. `ECONNREFUSED`) costs one
    /// retry; a GSO batch that still fails is split and its datagrams sent
    /// one by one; a single datagram that still fails is dropped and
    /// counted in [`UdpStats::tx_dropped_error`].
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(&b) = self.batches.front() {
            let transmit = Transmit {
                destination: b.dst,
                ecn: None,
                contents: &self.tx_buf[b.start..b.start + b.len],
                segment_size: (b.count > 1).then_some(b.seg),
                src_ip: None,
            };
            self.stats.tx_syscalls += 1;
            match self
                .state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
            {
                Ok(()) => {
                    self.stats.tx_datagrams += b.count as u64;
                    self.stats.tx_bytes += b.len as u64;
                    if b.count > 1 {
                        self.stats.tx_gso_batches += 1;
                    }
                    self.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.tx_would_block += 1;
                    self.compact_if_wasteful();
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_async_error(&e) && !b.retried => {
                    self.note_async_error();
                    if let Some(front) = self.batches.front_mut() {
                        front.retried = true;
                    }
                }
                Err(_) if b.count > 1 => self.split_front(),
                Err(_) => {
                    self.stats.tx_dropped_error += 1;
                    self.pop_front();
                }
            }
        }
        self.tx_buf.clear();
        debug_assert_eq!(self.pending_cost, 0);
        Ok(())
    }

    /// IPv4-mapped IPv6 destinations become IPv4 on an IPv4 socket and IPv4
    /// ones become mapped on a dual-stack IPv6 socket. `None` for what this
    /// socket cannot send to. Catching these here matters beyond one lost
    /// datagram: quinn-udp takes a failed GSO send with `EINVAL` as the
    /// path lacking GSO and turns GSO off for good.
    fn normalize_destination(&self, dst: SocketAddr) -> Option<SocketAddr> {
        if dst.port() == 0 {
            return None;
        }
        match (dst.ip(), self.family_v4) {
            (IpAddr::V4(_), true) => Some(dst),
            (IpAddr::V6(ip), true) => ip
                .to_ipv4_mapped()
                .map(|v4| SocketAddr::new(IpAddr::V4(v4), dst.port())),
            (IpAddr::V6(_), false) => Some(dst),
            (IpAddr::V4(ip), false) if !self.v6_only => {
                Some(SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), dst.port()))
            }
            (IpAddr::V4(_), false) => None,
        }
    }

    fn note_async_error(&mut self) {
        self.stats.async_errors += 1;
        if self.transport_errors {
            // Bounded: the queue holds at most what arrived since the last drain.
            for _ in 0..256 {
                match self
                    .state
                    .recv_transport_error(UdpSockRef::from(&self.socket))
                {
                    Ok(Some(_)) => self.stats.icmp_errors += 1,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some(b) = self.batches.pop_front() {
            self.pending_cost -= b.len + b.count * DATAGRAM_OVERHEAD;
        }
    }

    /// Drops the oldest queued datagram.
    fn drop_oldest(&mut self) {
        let Some(b) = self.batches.front_mut() else {
            return;
        };
        let first = b.datagram_len(0);
        self.stats.tx_dropped_overflow += 1;
        self.pending_cost -= first + DATAGRAM_OVERHEAD;
        if b.count == 1 {
            self.batches.pop_front();
        } else {
            b.start += first;
            b.len -= first;
            b.count -= 1;
        }
    }

    /// Replaces the front batch by one batch per datagram.
    fn split_front(&mut self) {
        let Some(b) = self.batches.pop_front() else {
            return;
        };
        let mut end = b.start + b.len;
        for i in (0..b.count).rev() {
            let len = b.datagram_len(i);
            end -= len;
            self.batches.push_front(Batch {
                dst: b.dst,
                start: end,
                len,
                seg: len,
                count: 1,
                open: false,
                retried: b.retried,
            });
        }
        debug_assert_eq!(end, b.start);
    }

    /// Moves the queued bytes to the front of `tx_buf` when the sent or
    /// dropped prefix outweighs them, so the buffer stays bounded by about
    /// twice the queue limit even if the queue never empties.
    fn compact_if_wasteful(&mut self) {
        let Some(first) = self.batches.front().map(|b| b.start) else {
            self.tx_buf.clear();
            return;
        };
        if first < (1 << 16) || first < self.tx_buf.len() - first {
            return;
        }
        self.tx_buf.drain(..first);
        for b in &mut self.batches {
            b.start -= first;
        }
    }
}

/// Registering a `UdpIo` registers its socket (mio's `register` needs
/// `&mut`, which [`UdpIo::socket`] cannot give).
impl mio::event::Source for UdpIo {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.socket.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.socket.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.socket.deregister(registry)
    }
}

/// Errors that a send or receive call reports for an earlier datagram: the
/// conversions of ICMP errors (`icmp_err_convert`, `icmpv6_err_convert`).
/// The call that got one did not send its own datagram.
fn is_async_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::EACCES
                | libc::EMSGSIZE
                | libc::EOPNOTSUPP
        )
    )
}

/// 16 MiB kernel buffers: `SO_*BUFFORCE` (root) first, else the plain
/// options, which the kernel caps at `net.core.{r,w}mem_max`. Failures are
/// ignored: a smaller buffer still works.
fn set_buffers(sock: &std::net::UdpSocket) {
    let sref = socket2::SockRef::from(sock);
    #[cfg(target_os = "linux")]
    {
        use rustix::net::sockopt;
        if sockopt::set_socket_recv_buffer_size_force(sock, SOCKET_BUFFER_BYTES).is_err() {
            let _ = sref.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        }
        if sockopt::set_socket_send_buffer_size_force(sock, SOCKET_BUFFER_BYTES).is_err() {
            let _ = sref.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = sref.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = sref.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    }
}
