//! A home router in front of the client, for tests of a changing public
//! address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// The client's home router, reduced to what the far side sees: every
/// TCP connection and UDP flow from the client leaves from the router's
/// public address. [`Nat::change_address`] is what a new WAN address
/// looks like from outside: existing mappings die (open TCP connections
/// are cut, UDP flows get a new source) and everything new comes from the
/// new address. The client's own sockets notice nothing.
///
/// Inside, the client reaches the control plane at [`Nat::control_url`]
/// and the gateway at [`Nat::udp`] (the gateway announces that address as
/// its public endpoint).
#[derive(Debug)]
pub struct Nat {
    public: Arc<Mutex<IpAddr>>,
    epoch: watch::Sender<u64>,
    udp_epoch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Where the UDP relay sends: the gateway, once it runs.
    gateway: Arc<OnceLock<SocketAddr>>,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

impl Nat {
    /// A NAT toward `control` (TCP), starting with public address
    /// `public`. Its UDP side is bound at once (the gateway announces
    /// [`Nat::udp`]) and relays once [`Nat::forward_to`] names the
    /// gateway, so nobody has to guess a free port in between.
    pub async fn start(public: IpAddr, control: SocketAddr) -> Nat {
        let gateway: Arc<OnceLock<SocketAddr>> = Arc::default();
        let public = Arc::new(Mutex::new(public));
        let (epoch, _) = watch::channel(0u64);
        let udp_epoch = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));

        // TCP: each inside connection gets an outside one from the
        // current public address; a change of address cuts them all.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = l.local_addr().unwrap();
        let (p, e) = (public.clone(), epoch.clone());
        tokio::spawn(async move {
            while let Ok((mut inside, _)) = l.accept().await {
                let from = *p.lock().unwrap();
                let mut changed = e.subscribe();
                tokio::spawn(async move {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    if sock.bind(SocketAddr::new(from, 0)).is_err() {
                        return;
                    }
                    let Ok(mut outside) = sock.connect(control).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inside, &mut outside) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });

        // UDP: one outside socket per inside source, bound to the public
        // address of its epoch.
        let inside = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = inside.local_addr().unwrap();
        inside
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let (p, ue, st, gw) = (
            public.clone(),
            udp_epoch.clone(),
            stop.clone(),
            gateway.clone(),
        );
        std::thread::spawn(move || {
            let mut maps: HashMap<SocketAddr, (u64, UdpSocket)> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, src)) = inside.recv_from(&mut buf) else {
                    continue;
                };
                let Some(&gateway) = gw.get() else {
                    continue;
                };
                let now = ue.load(Ordering::SeqCst);
                let stale = maps.get(&src).is_none_or(|(e, _)| *e != now);
                if stale {
                    let from = *p.lock().unwrap();
                    let Ok(out) = UdpSocket::bind(SocketAddr::new(from, 0)) else {
                        continue;
                    };
                    out.set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                    let (back, o) = (inside.try_clone().unwrap(), out.try_clone().unwrap());
                    let (ue2, st2) = (ue.clone(), st.clone());
                    std::thread::spawn(move || {
                        let mut b = vec![0u8; 65_536];
                        while ue2.load(Ordering::SeqCst) == now && !st2.load(Ordering::Relaxed) {
                            if let Ok((n, from)) = o.recv_from(&mut b) {
                                if from == gateway {
                                    let _ = back.send_to(&b[..n], src);
                                }
                            }
                        }
                    });
                    maps.insert(src, (now, out));
                }
                let _ = maps[&src].1.send_to(&buf[..n], gateway);
            }
        });

        Nat {
            public,
            epoch,
            udp_epoch,
            stop,
            gateway,
            udp,
            tcp,
        }
    }

    /// From now on, UDP from inside goes to `gateway`.
    pub fn forward_to(&self, gateway: SocketAddr) {
        self.gateway
            .set(gateway)
            .expect("a NAT forwards to one gateway");
    }

    pub fn control_url(&self) -> String {
        format!("https://{}", self.tcp)
    }

    /// The router gets a new public address.
    pub fn change_address(&self, to: IpAddr) {
        *self.public.lock().unwrap() = to;
        self.udp_epoch.fetch_add(1, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
