//! The kernel side of the pre-filter: the table's rules through the `nft`
//! tool (once at start, and once per new prefix length), and set elements
//! through nf_tables netlink messages, batched into one transaction per
//! feed version.
//!
//! Why element messages are written by hand here: the Rust crates for
//! nf_tables either link the C libraries (`nftnl`, which needs libnftnl and
//! libmnl at build and run time), are GPL-licensed and need libclang to
//! build (`rustables`), or spawn `nft` for every call (`nftables`), which
//! costs milliseconds per change. Adding and deleting set elements needs
//! only two message types, so they are encoded below (about a hundred
//! lines) and sent over a `netlink-sys` socket. Rules, which are much more
//! involved to encode, are left to `nft`, which runs only when the table
//! is created or a set for a new prefix length is added.

use super::plan::{Changes, Element, OpenChange, SetId};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NlAddr};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// Elements per netlink message. A batch (one transaction) is sent with
/// one `send`, which must fit the socket's send buffer: the gateway asks
/// for a large one, and the kernel grants up to twice `net.core.wmem_max`
/// (about 416 KiB by default, some 10,000 elements). A larger change is
/// split into several transactions.
const ELEMENTS_PER_MESSAGE: usize = 256;
const SEND_BUFFER: usize = 8 << 20;
/// What the kernel keeps of the send buffer for itself, and a margin.
const SEND_BUFFER_RESERVE: usize = 4096;

/// The set that opens the UDP port to every source for a while.
pub const OPEN_SET: &str = "open";

/// The gate chain's priority: below NF_IP_PRI_CONNTRACK_DEFRAG (-400), so
/// packets are judged before the kernel reassembles fragments; the value
/// the kernel calls NF_IP_PRI_RAW_BEFORE_DEFRAG.
pub const GATE_PRIORITY: i32 = -450;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the 'nft' tool is not installed (Debian: apt install nftables)")]
    NoTool,
    #[error("not permitted to change nftables: the gateway needs CAP_NET_ADMIN (run it as root or grant the capability)")]
    NotPermitted,
    #[error("not permitted to read nftables: listing the kernel's tables needs CAP_NET_ADMIN too (run this as root, e.g. with sudo)")]
    NotPermittedToRead,
    #[error("nft refused the table: {0}")]
    Refused(String),
    #[error("nf_tables netlink: {0}")]
    Netlink(std::io::Error),
    #[error("the kernel refused a set change: {0}")]
    Kernel(std::io::Error),
}

/// Runs `nft -f -` with `script` as one transaction.
pub fn run_nft(script: &str) -> Result<String, NftError> {
    let mut child = Command::new(nft_path())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NftError::Refused(e.to_string()))?;
    }
    outcome(child.wait_with_output().map_err(spawn_error), false)
}

/// Runs `nft ARGS...` (listing, deleting). A refusal of `list` says that
/// reading was refused: `hushgate gateway filter show` changes nothing.
pub fn nft(args: &[&str]) -> Result<String, NftError> {
    outcome(
        Command::new(nft_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(spawn_error),
        args.first() == Some(&"list"),
    )
}

/// The `nft` tool: where Debian installs it, not wherever PATH points (a
/// user's PATH often lacks /usr/sbin, and the gateway may hold
/// CAP_NET_ADMIN, which the tool inherits).
fn nft_path() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

fn spawn_error(e: std::io::Error) -> NftError {
    match e.kind() {
        std::io::ErrorKind::NotFound => NftError::NoTool,
        _ => NftError::Refused(e.to_string()),
    }
}

/// What `nft` said: its output, or the error it printed (`reading`: the
/// command only lists).
fn outcome(out: Result<std::process::Output, NftError>, reading: bool) -> Result<String, NftError> {
    let out = out?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if err.contains("Operation not permitted") {
        return Err(if reading {
            NftError::NotPermittedToRead
        } else {
            NftError::NotPermitted
        });
    }
    Err(NftError::Refused(err))
}

/// The script that (re)creates the table in one transaction: it replaces
/// any table of the same name atomically, so the drop rules never lapse.
///
/// Packets are judged in `prerouting` at priority -450, before connection
/// tracking and before its defragmentation (-400): junk costs no conntrack
/// entry, and a stopped gateway's port stays dark (no ICMP port
/// unreachable, no TCP reset). Being ahead of defragmentation matters
/// where conntrack is loaded (Docker, ufw, firewalld): there, a first
/// fragment that never completes draws ICMP "reassembly time exceeded"
/// when the kernel gives up on it. Here a fragment is seen as it arrives:
/// the first one carries the UDP or TCP header, so it meets the same
/// rules as a whole datagram and a stranger's is dropped; later ones
/// carry no ports, match nothing and pass, but a reassembly that never
/// saw its first fragment expires without a word (Linux answers only
/// when fragment zero arrived), and the pieces never reach a socket.
///
/// The `open` set (a first-handshake admission waiting) lets everyone
/// through only while a socket is bound to the port (`socket transparent
/// 0`), so even then a stopped gateway's port stays dark; and it lets no
/// fragment through, since a handshake initiation (148 bytes) never is
/// one, so a stranger's first fragment cannot time out into an answer.
pub fn table_script(table: &str, udp_port: u16, direct_ports: &[u16]) -> String {
    let mut s = format!(
        "add table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tcomment \"hushgate gateway pre-filter; remove with: hushgate gateway filter remove --port {udp_port}\"\n\
         \tset {OPEN_SET} {{ type inet_service; flags timeout; }}\n\
         \tchain gate {{\n\
         \t\ttype filter hook prerouting priority {GATE_PRIORITY}; policy accept;\n\
         \t\tudp dport {udp_port} fib daddr type local jump tunnel\n"
    );
    if !direct_ports.is_empty() {
        let ports: Vec<String> = direct_ports.iter().map(u16::to_string).collect();
        s += &format!(
            "\t\ttcp dport {{ {} }} fib daddr type local jump direct\n",
            ports.join(", ")
        );
    }
    s += "\t}\n\
          \tchain tunnel {\n\
          \t\tip frag-off & 0x3fff == 0 udp dport @open socket transparent 0 accept\n\
          \t\texthdr frag missing udp dport @open socket transparent 0 accept\n\
          \t\tcounter drop comment \"not admitted\"\n\
          \t}\n\
          \tchain direct {\n\
          \t\tcounter drop comment \"not admitted\"\n\
          \t}\n\
          }\n";
    s
}

/// The script that adds sets (and their lookup rules, ahead of the drop).
pub fn sets_script(table: &str, sets: &[SetId]) -> String {
    let mut s = String::new();
    for set in sets {
        let chain = match set.kind {
            super::plan::Kind::Tunnel => "tunnel",
            super::plan::Kind::Direct => "direct",
        };
        s += &format!(
            "add set inet {table} {} {{ type {}; flags timeout; }}\n\
             insert rule inet {table} {chain} {} accept\n",
            set.name(),
            set.key_type(),
            set.lookup()
        );
    }
    s
}

/// A netlink socket for nf_tables set elements.
#[derive(Debug)]
pub struct Elements {
    socket: Socket,
    table: String,
    seq: u32,
    /// The largest batch one `send` takes.
    batch_bytes: usize,
}

impl Elements {
    pub fn open(table: &str) -> Result<Elements, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Netlink)?;
        socket.bind_auto().map_err(NftError::Netlink)?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(NftError::Netlink)?;
        let sock = socket2::SockRef::from(&socket);
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(NftError::Netlink)?;
        // As large as the kernel allows; what it granted sets the batch
        // size (a smaller grant only means more transactions).
        let _ = sock.set_send_buffer_size(SEND_BUFFER);
        let granted = sock.send_buffer_size().unwrap_or(0);
        // Errors answer with the header only, not the whole message back.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_rx_buf_sz(1 << 20);
        Ok(Elements {
            socket,
            table: table.to_string(),
            seq: rand::random::<u32>() >> 1,
            batch_bytes: granted.saturating_sub(SEND_BUFFER_RESERVE).max(64 * 1024),
        })
    }

    /// Sends `changes` (all but `new_sets`, which `nft` made) as few
    /// transactions as fit, and waits for the kernel's answer to each.
    pub fn apply(&mut self, ch: &Changes) -> Result<(), NftError> {
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        for set in &ch.flush {
            msgs.push(self.elem_msg(NFT_MSG_DELSETELEM, &set.name(), &[]));
        }
        // Deletions first: a renewal deletes and re-adds the same key.
        let deletes = by_set(ch.delete.iter().map(|e| (e, None)));
        let adds = by_set(ch.add.iter().map(|(e, t)| (e, Some(*t))));
        for (kind, groups) in [(NFT_MSG_DELSETELEM, deletes), (NFT_MSG_NEWSETELEM, adds)] {
            for (set, elems) in groups {
                for chunk in elems.chunks(ELEMENTS_PER_MESSAGE) {
                    msgs.push(self.elem_msg(kind, &set.name(), chunk));
                }
            }
        }
        match ch.open {
            OpenChange::Keep => {}
            OpenChange::Close => msgs.push(self.elem_msg(NFT_MSG_DELSETELEM, OPEN_SET, &[])),
            OpenChange::Open(t) => {
                msgs.push(self.elem_msg(NFT_MSG_DELSETELEM, OPEN_SET, &[]));
                let port = self.udp_port_key();
                msgs.push(self.elem_msg(NFT_MSG_NEWSETELEM, OPEN_SET, &[(port, Some(t))]));
            }
        }
        // Pack the messages into batches that fit one send each.
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        for m in msgs {
            if size + m.len() > self.batch_bytes && !batch.is_empty() {
                self.transact(std::mem::take(&mut batch))?;
                size = 0;
            }
            size += m.len();
            batch.push(m);
        }
        if !batch.is_empty() {
            self.transact(batch)?;
        }
        Ok(())
    }

    fn udp_port_key(&self) -> Vec<u8> {
        // The table is named after the port: hushgate_PORT.
        let port: u16 = self
            .table
            .rsplit('_')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        port.to_be_bytes().to_vec()
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// One NEWSETELEM / DELSETELEM message; with no elements, a
    /// DELSETELEM flushes the set.
    fn elem_msg(&mut self, kind: u16, set: &str, elems: &[(Vec<u8>, Option<Duration>)]) -> Vec<u8> {
        let mut flags = NLM_F_REQUEST | NLM_F_ACK;
        if kind == NFT_MSG_NEWSETELEM {
            flags |= NLM_F_CREATE;
        }
        let seq = self.next_seq();
        let mut m = header(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            NFPROTO_INET,
            0,
        );
        attr_str(&mut m, NFTA_SET_ELEM_LIST_TABLE, &self.table);
        attr_str(&mut m, NFTA_SET_ELEM_LIST_SET, set);
        if !elems.is_empty() {
            let list = nest_start(&mut m, NFTA_SET_ELEM_LIST_ELEMENTS);
            for (key, timeout) in elems {
                let el = nest_start(&mut m, NFTA_LIST_ELEM);
                let k = nest_start(&mut m, NFTA_SET_ELEM_KEY);
                attr(&mut m, NFTA_DATA_VALUE, key);
                nest_end(&mut m, k);
                if let Some(t) = timeout {
                    // Milliseconds, rounded up, at least one.
                    let ms = (t.as_micros().div_ceil(1000) as u64).max(1);
                    attr(&mut m, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
                }
                nest_end(&mut m, el);
            }
            nest_end(&mut m, list);
        }
        finish(&mut m);
        m
    }

    /// Sends one batch (BEGIN, messages, END) and reads one answer per
    /// message; the kernel applies all of it or none.
    fn transact(&mut self, msgs: Vec<Vec<u8>>) -> Result<(), NftError> {
        let first = self.next_seq();
        let mut buf = header(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(&mut buf);
        let mut seqs = std::collections::HashSet::new();
        for m in &msgs {
            seqs.insert(u32::from_ne_bytes(m[8..12].try_into().expect("header")));
            buf.extend_from_slice(m);
        }
        let end_seq = self.next_seq();
        let mut end = header(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        finish(&mut end);
        buf.extend_from_slice(&end);
        self.socket.send(&buf, 0).map_err(NftError::Netlink)?;

        // One answer per message (each asks for an ack). An error about
        // the batch as a whole (no permission, or the commit itself
        // failing) carries the sequence number of BATCH_BEGIN or END
        // instead, and may come before or after the messages' answers, so
        // those are watched for too, and the socket is drained without
        // waiting once every message has been answered: the kernel has
        // queued everything by the time `send` returned.
        let batch = [first, end_seq];
        let mut first_error: Option<std::io::Error> = None;
        let mut rx = Vec::with_capacity(64 * 1024);
        loop {
            let waiting = !seqs.is_empty() && first_error.is_none();
            rx.clear();
            let flags = if waiting { 0 } else { libc::MSG_DONTWAIT };
            let n = match self.socket.recv(&mut rx, flags) {
                Ok(n) => n,
                Err(e) if !waiting && e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(NftError::Netlink(e)),
            };
            let error = read_answers(&rx[..n.min(rx.len())], &mut seqs, batch);
            if first_error.is_none() {
                first_error = error;
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) if e.raw_os_error() == Some(libc::EPERM) => Err(NftError::NotPermitted),
            Some(e) => Err(NftError::Kernel(e)),
        }
    }
}

/// Reads the kernel's answers in one netlink receive buffer. Every
/// NLMSG_ERROR message (an acknowledgement when its code is 0) whose
/// sequence number is in `pending` is taken off it; one carrying a
/// sequence number of the batch's own BEGIN or END (`batch`) concerns the
/// whole transaction. Returns the first non-zero code among them as an
/// error. Anything malformed ends the reading of this buffer.
pub fn read_answers(
    rx: &[u8],
    pending: &mut std::collections::HashSet<u32>,
    batch: [u32; 2],
) -> Option<std::io::Error> {
    let n = rx.len();
    let mut first_error = None;
    let mut at = 0;
    while at + 16 <= n {
        let len = u32::from_ne_bytes(rx[at..at + 4].try_into().expect("len")) as usize;
        let kind = u16::from_ne_bytes(rx[at + 4..at + 6].try_into().expect("type"));
        let seq = u32::from_ne_bytes(rx[at + 8..at + 12].try_into().expect("seq"));
        if len < 16 || at + len > n {
            break;
        }
        if kind == NLMSG_ERROR && len >= 20 && (pending.remove(&seq) || batch.contains(&seq)) {
            let code = i32::from_ne_bytes(rx[at + 16..at + 20].try_into().expect("errno"));
            if code != 0 && first_error.is_none() {
                // The kernel sends -errno. A code with no negation
                // (i32::MIN) is reported too, not a panic.
                first_error = Some(std::io::Error::from_raw_os_error(code.saturating_neg()));
            }
        }
        at += (len + 3) & !3;
    }
    first_error
}

type Keyed = Vec<(Vec<u8>, Option<Duration>)>;

/// Groups elements by set, keeping their order.
fn by_set<'a>(items: impl Iterator<Item = (&'a Element, Option<Duration>)>) -> Vec<(SetId, Keyed)> {
    let mut groups: Vec<(SetId, Keyed)> = Vec::new();
    for (e, t) in items {
        match groups.iter_mut().find(|(s, _)| *s == e.set) {
            Some((_, v)) => v.push((e.key(), t)),
            None => groups.push((e.set, vec![(e.key(), t)])),
        }
    }
    groups
}

fn header(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
                                              // nfgenmsg: family, version, resource id (big-endian).
    m.push(family);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m
}

fn finish(m: &mut [u8]) {
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
}

fn pad(m: &mut Vec<u8>) {
    while !m.len().is_multiple_of(4) {
        m.push(0);
    }
}

fn attr(m: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    m.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(payload);
    pad(m);
}

fn attr_str(m: &mut Vec<u8>, kind: u16, s: &str) {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    attr(m, kind, &v);
}

fn nest_start(m: &mut Vec<u8>, kind: u16) -> usize {
    let at = m.len();
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(m: &mut [u8], at: usize) {
    let len = (m.len() - at) as u16;
    m[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::plan::{Kind, SetId};

    #[test]
    fn an_element_message_is_laid_out_as_nf_tables_expects() {
        let mut e = Elements {
            socket: Socket::new(NETLINK_NETFILTER).unwrap(),
            table: "hushgate_51820".into(),
            seq: 6,
            batch_bytes: 64 * 1024,
        };
        let m = e.elem_msg(
            NFT_MSG_NEWSETELEM,
            "t4_32",
            &[(vec![203, 0, 113, 7], Some(Duration::from_millis(1500)))],
        );
        let len = u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, m.len());
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0a0c);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(m[16], NFPROTO_INET);
        // Table and set names are NUL-terminated strings.
        let body = &m[20..];
        assert_eq!(&body[4..19], b"hushgate_51820\0");
        // The key and the timeout (1500 ms, big-endian u64) are there.
        let hay = m.windows(4).position(|w| w == [203, 0, 113, 7]).unwrap();
        assert_eq!(
            u16::from_ne_bytes(m[hay - 2..hay].try_into().unwrap()),
            NFTA_DATA_VALUE
        );
        assert!(m.windows(8).any(|w| w == 1500u64.to_be_bytes()));
        assert_eq!(m.len() % 4, 0);
    }

    /// An NLMSG_ERROR answer (an ack when `code` is 0) to message `seq`.
    fn answer(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        // The header of the message answered (capped acks carry only it).
        m.extend_from_slice(&[0u8; 16]);
        m
    }

    #[test]
    fn answers_are_matched_to_their_messages() {
        let mut pending: std::collections::HashSet<u32> = [7, 8, 9].into();
        let mut rx = answer(7, 0);
        rx.extend(answer(8, -libc::ENOENT));
        // An answer to something else is ignored, whatever it says.
        rx.extend(answer(100, -libc::EPERM));
        let error = read_answers(&rx, &mut pending, [6, 10]).unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(pending, [9].into());
        // An error about the whole batch (its BEGIN's sequence number).
        let error = read_answers(&answer(6, -libc::EPERM), &mut pending, [6, 10]).unwrap();
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        // A truncated answer ends the reading; nothing is taken off.
        let cut = answer(9, 0);
        assert!(read_answers(&cut[..30], &mut pending, [6, 10]).is_none());
        assert_eq!(pending, [9].into());
        assert!(read_answers(&cut, &mut pending, [6, 10]).is_none());
        assert!(pending.is_empty());
    }

    #[test]
    fn any_error_code_is_reported_without_a_panic() {
        // Found by the netlink_answers fuzz target: negating i32::MIN
        // overflowed.
        let mut pending: std::collections::HashSet<u32> = [5].into();
        let error = read_answers(&answer(5, i32::MIN), &mut pending, [4, 6]).unwrap();
        assert_eq!(error.raw_os_error(), Some(i32::MAX));
        assert!(pending.is_empty());
    }

    #[test]
    fn a_refused_listing_does_not_claim_a_change() {
        use std::os::unix::process::ExitStatusExt;
        let refused = || {
            Ok(std::process::Output {
                status: std::process::ExitStatus::from_raw(1 << 8),
                stdout: Vec::new(),
                stderr: b"Error: Could not process rule: Operation not permitted".to_vec(),
            })
        };
        let e = outcome(refused(), true).unwrap_err().to_string();
        assert!(e.contains("not permitted to read"), "{e}");
        assert!(!e.contains("change"), "{e}");
        let e = outcome(refused(), false).unwrap_err().to_string();
        assert!(e.contains("not permitted to change"), "{e}");
    }

    #[test]
    fn scripts_name_every_set_and_rule() {
        let s = table_script("hushgate_51820", 51820, &[8096]);
        assert!(s.starts_with("add table inet hushgate_51820\ndelete table inet hushgate_51820\n"));
        assert!(s.contains("udp dport 51820 fib daddr type local jump tunnel"));
        // Before defragmentation, and no fragment through the open port.
        assert!(s.contains("hook prerouting priority -450;"));
        assert!(s.contains("ip frag-off & 0x3fff == 0 udp dport @open"));
        assert!(s.contains("exthdr frag missing udp dport @open"));
        assert!(s.contains("tcp dport { 8096 } fib daddr type local jump direct"));
        let s = table_script("hushgate_51820", 51820, &[]);
        assert!(!s.contains("jump direct"));
        let set = SetId {
            kind: Kind::Direct,
            v6: false,
            prefix: 24,
        };
        assert_eq!(
            sets_script("t", &[set]),
            "add set inet t d4_24 { type ipv4_addr . inet_service; flags timeout; }\n\
             insert rule inet t direct ip saddr & 255.255.255.0 . tcp dport @d4_24 accept\n"
        );
    }
}
