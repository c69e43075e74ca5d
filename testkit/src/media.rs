//! The stand-in media server and a player-like HTTP client: an HTTP/1.1
//! upstream on 127.0.0.1 serving known bytes ([`test_file`]), with
//! `Range` support, optional pacing and dropped connections, and the
//! [`get`] family that reads what a player would.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The test file the upstream serves at `/file`.
pub const FILE_LEN: usize = 8 << 20;

/// The bytes of `/file`: deterministic, not compressible, not periodic.
pub fn test_file() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(FILE_LEN);
    while v.len() < FILE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(FILE_LEN);
    v
}

/// A media server stand-in: HTTP/1.1 with keep-alive, one thread per
/// connection.
///
/// - `GET /file[?pace_ms=P&chunk=C]` serves [`test_file`] (a `Range:
///   bytes=A-B` or `bytes=A-` header gives 206 with `Content-Range` and
///   that slice); with `pace_ms` it writes `chunk` bytes (default 64 KiB)
///   every `P` ms, like a slow disk or a transcoder.
/// - `GET /PATH` serves a file added with [`Upstream::add_file`], the
///   same way (e.g. a real MP4 for a real player).
/// - `?cut=N` on either: the server closes the connection after N bytes
///   of the body, as a media server that drops a connection mid-body.
/// - `GET /bytes/N` streams N bytes as fast as the socket takes them.
/// - `GET /stream/SEED/LEN[?pace_ms=P]` serves LEN bytes of
///   [`pattern`]`(SEED, ..)`, 64 KiB every P ms when paced.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub file: Arc<Vec<u8>>,
    files: Files,
    pub stats: Arc<UpstreamStats>,
}

type Files = Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>;

/// What the upstream served, for tests that must show a player used
/// ranges and lived through dropped connections.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Answers to a `Range` request that did not start at byte 0.
    pub ranged: AtomicU64,
    /// Connections closed mid-body (`cut`).
    pub cut: AtomicU64,
}

impl Upstream {
    pub fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let file = Arc::new(test_file());
        let files: Files = Arc::new(Mutex::new(HashMap::from([(
            "/file".to_string(),
            file.clone(),
        )])));
        let stats = Arc::new(UpstreamStats::default());
        let (f, st) = (files.clone(), stats.clone());
        std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                for c in l.incoming() {
                    let Ok(c) = c else { continue };
                    let (f, st) = (f.clone(), st.clone());
                    std::thread::spawn(move || {
                        let _ = serve_http(c, &f, &st);
                    });
                }
            })
            .unwrap();
        Upstream {
            addr,
            file,
            files,
            stats,
        }
    }

    /// Serves `bytes` at `path` (e.g. "/movie.mp4") from now on.
    pub fn add_file(&self, path: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(bytes));
    }
}

fn serve_http(mut c: TcpStream, files: &Files, stats: &UpstreamStats) -> io::Result<()> {
    c.set_nodelay(true)?;
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 3) as u8).collect();
    let mut buf = Vec::with_capacity(4096);
    loop {
        // One request head (no bodies: GETs only).
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 16 << 10 {
                return Ok(());
            }
            let mut tmp = [0u8; 2048];
            let n = c.read(&mut tmp)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_string();
        let range = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
            .map(|(_, v)| v.trim().to_string());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let q: HashMap<&str, u64> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let file = files.lock().unwrap().get(path).cloned();
        if let Some(file) = file {
            let range = range.and_then(|r| parse_range(&r, file.len()));
            let (status, body, content_range) = match range {
                Some((a, b)) => {
                    if a > 0 {
                        stats.ranged.fetch_add(1, Ordering::Relaxed);
                    }
                    (
                        "206 Partial Content",
                        &file[a..=b],
                        format!("Content-Range: bytes {a}-{b}/{}\r\n", file.len()),
                    )
                }
                None => ("200 OK", &file[..], String::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: video/mp4\r\nAccept-Ranges: bytes\r\n{content_range}Content-Length: {}\r\n\r\n",
                body.len()
            );
            c.write_all(head.as_bytes())?;
            let pace = q.get("pace_ms").copied().unwrap_or(0);
            let chunk = q.get("chunk").copied().unwrap_or(64 << 10).max(1) as usize;
            if let Some(&cut) = q.get("cut").filter(|&&n| (n as usize) < body.len()) {
                c.write_all(&body[..cut as usize])?;
                stats.cut.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if pace == 0 {
                c.write_all(body)?;
            } else {
                for part in body.chunks(chunk) {
                    c.write_all(part)?;
                    std::thread::sleep(Duration::from_millis(pace));
                }
            }
        } else if let Some((seed, len)) = path
            .strip_prefix("/stream/")
            .and_then(|r| r.split_once('/'))
            .and_then(|(s, n)| Some((s.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
        {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            c.write_all(head.as_bytes())?;
            let pace = q.get("pace_ms").copied().unwrap_or(0);
            let mut part = vec![0u8; 64 << 10];
            let mut off = 0;
            while off < len {
                let n = (len - off).min(part.len() as u64) as usize;
                for (k, x) in part[..n].iter_mut().enumerate() {
                    *x = pattern(seed, off + k as u64);
                }
                c.write_all(&part[..n])?;
                off += n as u64;
                if pace > 0 {
                    std::thread::sleep(Duration::from_millis(pace));
                }
            }
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            let n: u64 = n.parse().unwrap_or(0);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            c.write_all(head.as_bytes())?;
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                c.write_all(&block[..k])?;
                left -= k as u64;
            }
        } else {
            c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
    }
}

/// Byte `i` of `/stream/SEED/LEN`: depends on the position and on the
/// stream, so bytes of one connection showing up in another are caught.
pub fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i as u8)
}

fn parse_range(v: &str, len: usize) -> Option<(usize, usize)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        len - 1
    } else {
        b.parse().ok()?
    };
    (a <= b && b < len).then_some((a, b))
}

// ------------------------------------------------------------ player

/// How the player reads the body.
#[derive(Debug, Clone, Copy)]
pub enum Reading {
    /// As fast as it arrives.
    Fast,
    /// At most `chunk` bytes, then a pause of `every` (a player that
    /// buffers only a little ahead).
    Paced { chunk: usize, every: Duration },
}

/// A player-like HTTP GET through `addr`: request, head, then exactly
/// Content-Length bytes of body. `range` is inclusive, as in HTTP.
pub fn get(
    addr: SocketAddr,
    target: &str,
    range: Option<(usize, usize)>,
    reading: Reading,
) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    get_on(&mut s, target, range, reading)
}

/// [`get`] on an open connection (keep-alive).
pub fn get_on(
    s: &mut TcpStream,
    target: &str,
    range: Option<(usize, usize)>,
    reading: Reading,
) -> io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    let range = range
        .map(|(a, b)| format!("Range: bytes={a}-{b}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: media\r\nUser-Agent: test-player\r\n{range}\r\n"
    )?;
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 256 << 10];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" && status != "206" {
        return Err(io::Error::other(format!("HTTP status {status}")));
    }
    let len: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Content-Length"))?;
    let mut body = buf.split_off(end);
    body.reserve(len.saturating_sub(body.len()));
    while body.len() < len {
        let want = match reading {
            Reading::Fast => tmp.len(),
            Reading::Paced { chunk, .. } => chunk.min(tmp.len()),
        };
        let n = s.read(&mut tmp[..want.min(len - body.len())])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} of {len} bytes", body.len()),
            ));
        }
        body.extend_from_slice(&tmp[..n]);
        if let Reading::Paced { every, .. } = reading {
            std::thread::sleep(every);
        }
    }
    Ok(body)
}

/// A player downloading the test file slowly (64 KiB every `pace_ms`)
/// through `local`, on a thread of its own. Returns its progress in bytes,
/// updated as it reads, and a channel that receives how the download
/// ended (bytes, or the error) and when.
#[allow(clippy::type_complexity)]
pub fn paced_download(
    local: SocketAddr,
    pace_ms: u64,
) -> (
    Arc<AtomicUsize>,
    std::sync::mpsc::Receiver<(io::Result<usize>, Instant)>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    std::thread::spawn(move || {
        let r = (|| -> io::Result<usize> {
            let mut s = TcpStream::connect(local)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let req =
                format!("GET /file?pace_ms={pace_ms}&chunk=65536 HTTP/1.1\r\nHost: media\r\n\r\n");
            s.write_all(req.as_bytes())?;
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(got);
                }
                got += n;
                p.store(got, Ordering::Relaxed);
            }
        })();
        let _ = tx.send((r, Instant::now()));
    });
    (progress, rx)
}

/// Like [`get`] for `/bytes/N`, counting instead of keeping: returns the
/// body length and when its first byte arrived.
pub fn get_count(s: &mut TcpStream, n: u64) -> io::Result<(u64, Instant)> {
    write!(s, "GET /bytes/{n} HTTP/1.1\r\nHost: media\r\n\r\n")?;
    let mut tmp = vec![0u8; 256 << 10];
    let mut head = Vec::new();
    let mut first = None;
    let (mut body, end) = loop {
        let k = s.read(&mut tmp)?;
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        first.get_or_insert_with(Instant::now);
        head.extend_from_slice(&tmp[..k]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break ((head.len() - p - 4) as u64, p);
        }
    };
    if !head[..end].starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::other("not 200"));
    }
    while body < n {
        let k = s.read(&mut tmp)?;
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body += k as u64;
    }
    Ok((body, first.unwrap_or_else(Instant::now)))
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}
