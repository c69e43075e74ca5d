//! Direct (firewall-only) services: the media server's TCP port opened on
//! the gateway host to the source addresses of direct admissions only.
//!
//! The kernel pre-filter decides who reaches the port at all (every other
//! source gets no SYN-ACK and no reset); this module accepts what it lets
//! through, checks the source against the admissions once more, and
//! splices each connection to the upstream media server. Connections are
//! tracked by source, so that when an admission is revoked or expires the
//! connections it covered are reset at once, while the pre-filter drops
//! anything further from that source.
//!
//! Direct mode admits by address alone: every device behind the same NAT
//! (or in the same prefix, under `prefix:V4,V6`) is admitted too. The tunnel
//! admits by key and address.

use crate::admission::{admitted, Admitted};
use crate::config::ServiceSpec;
use crate::feed::FeedChangeRef;
use proto::api::AccessMode;
use proto::feed::FeedAdmission;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long a connection to the upstream may take to open.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(5);

/// One admitted source for one public port, until `deadline`.
#[derive(Debug, Clone)]
struct Allowed {
    net: ipnet::IpNet,
    port: u16,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    /// What each direct admission allows, by admission id.
    allowed: HashMap<String, Vec<Allowed>>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    accepted: u64,
    refused: u64,
    reset: u64,
}

#[derive(Debug)]
struct Conn {
    source: IpAddr,
    port: u16,
    stop: Option<oneshot::Sender<()>>,
}

impl Shared {
    fn covers(&self, source: IpAddr, port: u16, now: Instant) -> bool {
        self.allowed
            .values()
            .flatten()
            .any(|a| a.port == port && a.deadline > now && a.net.contains(&source))
    }

    /// Resets every connection no admission covers any more.
    fn sweep(&mut self, now: Instant) -> usize {
        let dead: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !self.covers(c.source, c.port, now))
            .map(|(&id, _)| id)
            .collect();
        for id in &dead {
            if let Some(mut c) = self.conns.remove(id) {
                if let Some(stop) = c.stop.take() {
                    let _ = stop.send(());
                }
            }
        }
        self.reset += dead.len() as u64;
        dead.len()
    }
}

/// Counters for `hushgate gateway status`.
#[derive(Debug, Clone, Serialize)]
pub struct DirectStatus {
    pub services: Vec<String>,
    pub admitted_sources: usize,
    pub connections: usize,
    pub accepted: u64,
    /// Connections from sources no admission covered (the pre-filter
    /// should have dropped them; non-zero means it is not in place).
    pub refused: u64,
    /// Connections reset because their admission ended.
    pub reset: u64,
}

/// The running direct services.
#[derive(Debug)]
pub struct DirectProxy {
    shared: Arc<Mutex<Shared>>,
    ports: HashMap<String, u16>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DirectProxy {
    /// Listens on every service's public port (all addresses, IPv4 and
    /// IPv6) and starts the expiry sweep.
    pub async fn start(services: &[ServiceSpec]) -> std::io::Result<DirectProxy> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut tasks = Vec::new();
        let mut ports = HashMap::new();
        for s in services {
            let listener = bind_any(s.port).await?;
            ports.insert(s.name.clone(), s.port);
            tasks.push(tokio::spawn(serve(
                listener,
                s.port,
                s.upstream,
                shared.clone(),
            )));
        }
        let sweeper = shared.clone();
        tasks.push(tokio::spawn(async move {
            // Admissions that expire without a feed answer (control plane
            // unreachable) end here; revocations end at `apply`.
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let n = lock(&sweeper).sweep(Instant::now());
                if n > 0 {
                    tracing::info!(reset = n, "direct connections of expired admissions reset");
                }
            }
        }));
        Ok(DirectProxy {
            shared,
            ports,
            tasks,
        })
    }

    /// What admission `a` allows (nothing unless it is a direct one).
    fn allowance(
        &self,
        a: &FeedAdmission,
        server_time: time::OffsetDateTime,
        received: Instant,
    ) -> Vec<Allowed> {
        if a.mode != AccessMode::Direct {
            return Vec::new();
        }
        // No network: first-handshake, which the control plane refuses for
        // direct mode; a feed that says otherwise opens nothing.
        let Some(Admitted {
            network: Some(net),
            deadline,
        }) = admitted(a, server_time, received)
        else {
            return Vec::new();
        };
        a.services
            .iter()
            .filter_map(|s| self.ports.get(s))
            .map(|&port| Allowed {
                net,
                port,
                deadline,
            })
            .collect()
    }

    /// Takes in a feed change received at `received` (a whole set replaces
    /// what is held; a diff changes and removes on top of it), keeping the
    /// direct admissions, and resets the connections none of them covers
    /// any more.
    pub fn apply<'a>(&self, change: impl Into<FeedChangeRef<'a>>, received: Instant) {
        let change = change.into();
        let server_time = change.header().server_time;
        let mut sh = lock(&self.shared);
        match change {
            FeedChangeRef::Whole(state) => {
                sh.allowed = state
                    .admissions
                    .iter()
                    .map(|a| (a.id.clone(), self.allowance(a, server_time, received)))
                    .filter(|(_, v)| !v.is_empty())
                    .collect();
            }
            FeedChangeRef::Diff {
                changed, removed, ..
            } => {
                for id in removed {
                    sh.allowed.remove(id);
                }
                for a in changed {
                    let v = self.allowance(a, server_time, received);
                    if v.is_empty() {
                        sh.allowed.remove(&a.id);
                    } else {
                        sh.allowed.insert(a.id.clone(), v);
                    }
                }
            }
        }
        Self::settle(&mut sh);
    }

    fn settle(sh: &mut Shared) {
        let n = sh.sweep(Instant::now());
        if n > 0 {
            tracing::info!(reset = n, "direct connections of ended admissions reset");
        }
    }

    pub fn status(&self) -> DirectStatus {
        let sh = lock(&self.shared);
        let mut services: Vec<String> =
            self.ports.iter().map(|(n, p)| format!("{n}={p}")).collect();
        services.sort();
        DirectStatus {
            services,
            admitted_sources: sh.allowed.values().map(Vec::len).sum(),
            connections: sh.conns.len(),
            accepted: sh.accepted,
            refused: sh.refused,
            reset: sh.reset,
        }
    }

    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut sh = lock(&self.shared);
        sh.allowed.clear();
        sh.sweep(Instant::now());
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A listener on `[::]:port` that takes IPv4 too, or on `0.0.0.0:port`
/// where the host has no IPv6.
async fn bind_any(port: u16) -> std::io::Result<TcpListener> {
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let sock =
        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).and_then(|s| {
            s.set_only_v6(false)?;
            s.set_reuse_address(true)?;
            s.set_nonblocking(true)?;
            s.bind(&v6.into())?;
            s.listen(1024)?;
            Ok(s)
        });
    match sock {
        Ok(s) => TcpListener::from_std(s.into()),
        Err(_) => TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await,
    }
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on TCP port {port} for a direct service: {e}"),
        )
    })
}

async fn serve(listener: TcpListener, port: u16, upstream: SocketAddr, shared: Arc<Mutex<Shared>>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(port, error = %e, "direct accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = peer.ip().to_canonical();
        let (stop_tx, stop_rx) = oneshot::channel();
        let id = {
            let mut sh = lock(&shared);
            if !sh.covers(source, port, Instant::now()) {
                sh.refused += 1;
                drop(sh);
                tracing::warn!(%source, port, "direct connection from a source with no admission closed; is the pre-filter in place?");
                reset_on_close(&client);
                continue;
            }
            sh.accepted += 1;
            let id = sh.next_conn;
            sh.next_conn += 1;
            sh.conns.insert(
                id,
                Conn {
                    source,
                    port,
                    stop: Some(stop_tx),
                },
            );
            id
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            splice(client, upstream, stop_rx).await;
            lock(&shared).conns.remove(&id);
        });
    }
}

/// Copies both ways until either side closes, or resets the client when
/// its admission ends.
async fn splice(mut client: TcpStream, upstream: SocketAddr, stop: oneshot::Receiver<()>) {
    let _ = client.set_nodelay(true);
    let connect = tokio::time::timeout(UPSTREAM_CONNECT, TcpStream::connect(upstream)).await;
    let mut up = match connect {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            tracing::warn!(%upstream, error = %e, "direct service upstream refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%upstream, "direct service upstream did not answer");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut up) => {}
        _ = stop => {
            // A reset, not a FIN: the player learns at once that the
            // stream is over, and no buffered data goes out after it.
            reset_on_close(&client);
        }
    }
}

/// Makes closing `s` send a reset instead of a FIN (SO_LINGER of zero,
/// which does not block).
fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::feed;

    fn proxy() -> DirectProxy {
        DirectProxy {
            shared: Arc::new(Mutex::new(Shared::default())),
            ports: HashMap::from([("plex".to_string(), 32401)]),
            tasks: Vec::new(),
        }
    }

    fn direct(id: &str, source: &str, binding: &str) -> FeedAdmission {
        FeedAdmission {
            binding: binding.parse().unwrap(),
            ..feed::direct(id, feed::ip(source))
        }
    }

    #[test]
    fn each_family_is_opened_to_its_own_prefix_length() {
        let p = proxy();
        let now = Instant::now();
        p.apply(
            &feed::state(
                1,
                vec![
                    direct("tv4", "203.0.113.7", "prefix:24,56"),
                    direct("tv6", "2001:db8:1:2::5", "prefix:24,56"),
                ],
            ),
            now,
        );
        let sh = lock(&p.shared);
        let covers = |ip: &str| sh.covers(ip.parse().unwrap(), 32401, now);
        assert!(covers("203.0.113.200"));
        assert!(!covers("203.0.114.7"));
        assert!(covers("2001:db8:1:ff::1"));
        // Outside the client's /56 but inside the IPv4 length's /24: the
        // TV's port must not open to a large part of a provider.
        assert!(!covers("2001:db8:1:100::1"));
        assert!(!covers("2001:db8:ff::1"));
        assert!(!sh.covers("2001:db8:1:2::5".parse().unwrap(), 32400, now));
    }
}
