//! The HTTPS listener: TLS, HTTP/1.1, and the limits that keep a flood of
//! idle or half-sent connections from starving everyone else.
//!
//! Without them, a host that completes TLS and sends half a request line
//! is kept forever, and about a thousand such sockets use up the process's
//! open files: no login, access request or `hushgate admin` call gets in.
//! So every connection must finish its TLS handshake and then each
//! request head within `header_timeout` (the same bound closes a kept-alive
//! connection that sits idle between requests), a whole request must be
//! answered within `request_timeout`, and connections are capped:
//!
//! - in total, below what the process's open-file limit allows;
//! - per source (an IPv4 address or an IPv6 /64), so one host cannot hold
//!   more than its share;
//! - with a reserve that only admin sources (loopback by default, where
//!   `hushgate admin --state DIR` connects from) may use, so the owner can
//!   still manage and revoke while strangers fill the rest.
//!
//! A connection over a cap is closed at once, before any TLS work.
//! [`ConnectionTable`] holds the accounting and decides; [`serve`] is the
//! thin loop around it.

use crate::auth::source_key;
use crate::error::AppError;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Open files the process needs besides client connections: the
/// database and its journal, the listener, standard streams, the runtime's
/// own descriptors, and a connection accepted just to be closed.
const FD_HEADROOM: u64 = 64;

/// The caps of a [`ConnectionTable`].
#[derive(Debug, Clone)]
pub struct ConnectionCaps {
    /// Connections open at once, all sources together.
    pub total: usize,
    /// Connections open at once from one source (IPv4 address or IPv6
    /// /64), except admin sources and trusted proxies.
    pub per_source: usize,
    /// Of `total`, how many only admin sources may use.
    pub admin_reserve: usize,
    /// Where the reserve may be used from, with no per-source cap.
    pub admin_sources: Vec<IpNet>,
    /// Proxies whose connections carry many clients: no per-source cap.
    pub trusted_proxies: Vec<IpNet>,
}

impl ConnectionCaps {
    /// Lowers `total` to what the open-file limit `nofile` allows, keeping
    /// the admin reserve within it.
    pub fn fit_open_files(mut self, nofile: u64) -> Self {
        let budget = nofile.saturating_sub(FD_HEADROOM).max(16);
        self.total = self
            .total
            .min(usize::try_from(budget).unwrap_or(usize::MAX));
        self.admin_reserve = self.admin_reserve.min(self.total / 2);
        self
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every connection the process may hold (outside the admin reserve)
    /// is in use.
    Full,
    /// This source holds as many as one source may.
    SourceFull,
}

/// Counts open connections and decides whether another may open.
#[derive(Debug)]
pub struct ConnectionTable {
    caps: ConnectionCaps,
    state: Mutex<TableState>,
}

#[derive(Debug, Default)]
struct TableState {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One open connection's place in the table; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    table: Arc<ConnectionTable>,
    /// The per-source entry charged, if any.
    source: Option<IpAddr>,
}

impl ConnectionTable {
    pub fn new(caps: ConnectionCaps) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable {
            caps,
            state: Mutex::new(TableState::default()),
        })
    }

    pub fn caps(&self) -> &ConnectionCaps {
        &self.caps
    }

    /// Connections open now.
    pub fn open_count(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Takes a place for a connection from `peer`, or says why not.
    pub fn open(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, Refused> {
        let peer = peer.to_canonical();
        let admin = self.caps.admin_sources.iter().any(|n| n.contains(&peer));
        let proxy = self.caps.trusted_proxies.iter().any(|n| n.contains(&peer));
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if admin {
            self.caps.total
        } else {
            self.caps.total - self.caps.admin_reserve
        };
        if st.total >= limit {
            return Err(Refused::Full);
        }
        let source = (!admin && !proxy).then(|| source_key(peer));
        if let Some(s) = source {
            let n = st.per_source.entry(s).or_insert(0);
            if *n >= self.caps.per_source {
                return Err(Refused::SourceFull);
            }
            *n += 1;
        }
        st.total += 1;
        Ok(ConnectionSlot {
            table: self.clone(),
            source,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut st = self.table.state.lock().unwrap_or_else(|p| p.into_inner());
        st.total -= 1;
        if let Some(s) = self.source {
            if let Some(n) = st.per_source.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    st.per_source.remove(&s);
                }
            }
        }
    }
}

/// The time bounds of each connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the TLS handshake, and for each request head (counted from the
    /// moment the server waits for it, so also the idle time allowed
    /// between two requests on a kept-alive connection).
    pub header: Duration,
    /// For a whole request, body and answer (a feed long-poll included).
    pub request: Duration,
}

/// Serves `router` over HTTPS on `listener` until `shutdown` completes,
/// then lets open requests finish for up to two seconds.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    table: Arc<ConnectionTable>,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .keep_alive(true);
    let mut refusals = RefusalLog::default();
    // Connection tasks belong to this future: if it is dropped (its task
    // aborted), they end with it, and nothing of this server runs on.
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // it was taken: try again shortly rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match table.open(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                drop(tcp);
                refusals.note(why, &table);
                continue;
            }
        };
        // Answers are small and latency-bound (an access request is a few
        // round trips); Nagle's algorithm would hold the last segment of
        // an answer for an ACK, about 40 ms.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        conns.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(timeouts.header, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper::service::service_fn(move |mut req| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let answer = tokio::time::timeout(timeouts.request, router.oneshot(req)).await;
                    Ok::<_, std::convert::Infallible>(match answer {
                        Ok(Ok(resp)) => resp,
                        Ok(Err(never)) => match never {},
                        Err(_) => AppError::new(
                            axum::http::StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            "the request took too long to arrive or to answer; send it again",
                        )
                        .into_response(),
                    })
                }
            });
            let conn = http.serve_connection(TokioIo::new(tls), service);
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
}

/// Refused connections are logged as a count every ten seconds at most:
/// a flood must not become a flood of log lines.
#[derive(Debug, Default)]
struct RefusalLog {
    since: Option<Instant>,
    full: u64,
    source_full: u64,
}

impl RefusalLog {
    fn note(&mut self, why: Refused, table: &ConnectionTable) {
        match why {
            Refused::Full => self.full += 1,
            Refused::SourceFull => self.source_full += 1,
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if self.full + self.source_full == 1 || now.duration_since(since) >= Duration::from_secs(10)
        {
            let caps = table.caps();
            tracing::warn!(
                refused_all_in_use = self.full,
                refused_source_over_cap = self.source_full,
                open = table.open_count(),
                total_cap = caps.total,
                per_source_cap = caps.per_source,
                "refusing connections over the caps (see docs/operating.md, 'Limits')"
            );
            *self = RefusalLog {
                since: Some(now),
                ..Default::default()
            };
        }
    }
}

/// The soft limit on open files after raising it to the hard limit.
/// Raising is best effort: a process that may not raise it keeps what it
/// has, and the connection caps fit that.
pub fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
            open_files_limit()
        }
    }
}

/// The soft limit on open files now.
pub fn open_files_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> ConnectionCaps {
        ConnectionCaps {
            total: 10,
            per_source: 3,
            admin_reserve: 2,
            admin_sources: vec!["127.0.0.1/32".parse().unwrap()],
            trusted_proxies: vec!["10.0.0.1/32".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_share_and_no_more() {
        let t = ConnectionTable::new(caps());
        let held: Vec<_> = (0..3).map(|_| t.open(ip("192.0.2.1")).unwrap()).collect();
        assert_eq!(t.open(ip("192.0.2.1")).unwrap_err(), Refused::SourceFull);
        // An IPv6 /64 is one source.
        let _a = t.open(ip("2001:db8::1")).unwrap();
        let _b = t.open(ip("2001:db8::2")).unwrap();
        let _c = t.open(ip("2001:db8::3")).unwrap();
        assert_eq!(t.open(ip("2001:db8::4")).unwrap_err(), Refused::SourceFull);
        assert!(t.open(ip("2001:db8:0:1::4")).is_ok());
        drop(held);
        assert!(t.open(ip("192.0.2.1")).is_ok(), "closing frees the places");
    }

    #[test]
    fn the_reserve_is_for_admin_sources_only() {
        let t = ConnectionTable::new(caps());
        // 8 of 10 for everyone (2 reserved).
        let held: Vec<_> = (0..8)
            .map(|i| t.open(ip(&format!("192.0.2.{i}"))).unwrap())
            .collect();
        assert_eq!(t.open(ip("198.51.100.1")).unwrap_err(), Refused::Full);
        let a1 = t.open(ip("127.0.0.1")).unwrap();
        let _a2 = t.open(ip("127.0.0.1")).unwrap();
        assert_eq!(t.open(ip("127.0.0.1")).unwrap_err(), Refused::Full);
        assert_eq!(t.open_count(), 10);
        drop(a1);
        assert_eq!(t.open(ip("198.51.100.1")).unwrap_err(), Refused::Full);
        drop(held);
        assert_eq!(t.open_count(), 1);
    }

    #[test]
    fn trusted_proxies_have_no_per_source_cap() {
        let t = ConnectionTable::new(caps());
        let held: Vec<_> = (0..8).map(|_| t.open(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(held.len(), 8);
        assert_eq!(t.open(ip("10.0.0.1")).unwrap_err(), Refused::Full);
    }

    #[test]
    fn the_total_fits_the_open_files_limit() {
        let c = ConnectionCaps {
            total: 4096,
            admin_reserve: 32,
            ..caps()
        };
        let fitted = c.clone().fit_open_files(1024);
        assert_eq!(fitted.total, 960);
        assert_eq!(fitted.admin_reserve, 32);
        assert_eq!(c.clone().fit_open_files(1 << 20).total, 4096);
        let tiny = c.fit_open_files(70);
        assert_eq!((tiny.total, tiny.admin_reserve), (16, 8));
    }
}
