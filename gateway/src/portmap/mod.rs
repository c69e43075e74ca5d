//! Automatic port mapping on the home router, and the endpoint report
//! that follows it.
//!
//! The gateway asks its IPv4 default router (or `--router`) to forward
//! its UDP port, and each direct-mode TCP port, with PCP, then NAT-PMP,
//! then UPnP IGD. [`machine::Mapper`] decides (leases, renewals, retries,
//! a router that forgot the mapping, a changed external address, which
//! protocol next) with time passed in; [`client`] speaks the protocols;
//! [`host`] reads the host's routes and addresses. [`PortMap`] is the one
//! task that drives them, and re-reports the gateway to the control plane
//! whenever what it should say changes: the mapped external endpoint
//! (unless `--public-endpoint` was given), and a [`NetworkReport`] (the
//! mapping's state, the host's global IPv6 addresses, the control plane's
//! addresses as this host reaches them) from which the control plane
//! checks reachability and writes its diagnosis. On a clean shutdown the
//! mappings are deleted.

pub mod client;
pub mod host;
pub mod machine;

use control_client::ControlClient;
use machine::{Event, Mapper, PortSpec, Timing, Transport};
use proto::backoff::Backoff;
use proto::feed::GatewayReport;
use proto::reach::{MappingReport, MappingState, NetworkReport, ReachabilityView};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// `--port-mapping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortMappingMode {
    /// Map with PCP, NAT-PMP or UPnP when the router offers one.
    #[default]
    Auto,
    /// Leave the router alone (the port is forwarded by hand).
    Off,
}

impl FromStr for PortMappingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PortMappingMode::Auto),
            "off" => Ok(PortMappingMode::Off),
            _ => Err(format!("'{s}' is not a port mapping mode: use auto or off")),
        }
    }
}

/// How the gateway maps its ports.
#[derive(Debug, Clone)]
pub struct PortMapConfig {
    pub mode: PortMappingMode,
    /// The router to ask; default: the IPv4 default router.
    pub router: Option<IpAddr>,
    /// How often a held mapping is checked (a router that restarted or
    /// changed its address without announcing it is noticed then).
    pub check_interval: Duration,
}

impl Default for PortMapConfig {
    fn default() -> PortMapConfig {
        PortMapConfig {
            mode: PortMappingMode::Auto,
            router: None,
            check_interval: Timing::default().check_interval,
        }
    }
}

/// The running port mapping and endpoint reporter.
#[derive(Debug)]
pub struct PortMap {
    status: watch::Receiver<MappingReport>,
    stop: watch::Sender<bool>,
    mapper: Option<tokio::task::JoinHandle<()>>,
    reporter: tokio::task::JoinHandle<()>,
}

/// What the reporter needs to re-report the gateway.
#[derive(Debug)]
pub struct Reporting {
    /// With the gateway's credential.
    pub client: ControlClient,
    /// The report sent at start (key, port, services).
    pub base: GatewayReport,
    /// `--public-endpoint`: reported as it is, whatever the mapping.
    pub configured: Option<SocketAddr>,
    pub control_url: String,
}

impl PortMap {
    /// Starts mapping `udp_port` (and `tcp_ports`) and reporting.
    pub fn start(
        cfg: &PortMapConfig,
        udp_port: u16,
        tcp_ports: &[u16],
        reporting: Reporting,
    ) -> PortMap {
        let (stop, stop_rx) = watch::channel(false);
        let initial = match cfg.mode {
            PortMappingMode::Off => MappingReport::off(),
            PortMappingMode::Auto => MappingReport {
                state: MappingState::Pending,
                ..MappingReport::off()
            },
        };
        let (status_tx, status) = watch::channel(initial);
        let mapper = (cfg.mode == PortMappingMode::Auto).then(|| {
            let mut ports = vec![PortSpec {
                transport: Transport::Udp,
                port: udp_port,
            }];
            ports.extend(tcp_ports.iter().map(|&port| PortSpec {
                transport: Transport::Tcp,
                port,
            }));
            tokio::spawn(drive(cfg.clone(), ports, status_tx, stop_rx))
        });
        let reporter = tokio::spawn(report_changes(reporting, status.clone()));
        PortMap {
            status,
            stop,
            mapper,
            reporter,
        }
    }

    pub fn status(&self) -> watch::Receiver<MappingReport> {
        self.status.clone()
    }

    /// Deletes the mappings (waiting a few seconds at most for the
    /// router) and stops reporting.
    pub async fn shutdown(self) {
        self.reporter.abort();
        let _ = self.stop.send(true);
        if let Some(m) = self.mapper {
            if tokio::time::timeout(Duration::from_secs(5), m)
                .await
                .is_err()
            {
                tracing::warn!("the router did not confirm deleting the port mapping in time; it ends with its lease");
            }
        }
    }
}

/// The mapping task: the machine, the protocol clients, the router's
/// announcements, and `stop`.
async fn drive(
    cfg: PortMapConfig,
    ports: Vec<PortSpec>,
    status: watch::Sender<MappingReport>,
    mut stop: watch::Receiver<bool>,
) {
    let router = match cfg
        .router
        .or_else(|| host::default_router().map(IpAddr::V4))
    {
        Some(r) => r,
        None => {
            tracing::warn!("no IPv4 default router to ask for a port mapping; give one with --router, or forward the port by hand");
            status.send_replace(MappingReport {
                state: MappingState::NoRouter,
                ..MappingReport::off()
            });
            return;
        }
    };
    let local = match host::local_address_towards(router) {
        Ok(ip) => ip,
        Err(e) => {
            tracing::warn!(%router, error = %e, "cannot reach the router to ask for a port mapping");
            status.send_replace(MappingReport {
                state: MappingState::NoRouter,
                router: Some(router),
                error: Some(e.to_string()),
                ..MappingReport::off()
            });
            return;
        }
    };
    let timing = Timing {
        check_interval: cfg.check_interval,
        ..Timing::default()
    };
    let mut machine = Mapper::new(ports, timing, Instant::now().into_std());
    let mut clients = client::Clients::new(router, local);
    let announcements = client::announcements(router, local);
    if announcements.is_none() {
        tracing::debug!("cannot listen for router announcements on UDP 5350; changes are noticed by the periodic checks");
    }
    let mut buf = [0u8; 1100];
    let publish = |m: &Mapper| {
        let mut r = m.report();
        r.router = Some(router);
        status.send_if_modified(|old| {
            let changed = *old != r;
            *old = r;
            changed
        });
    };
    loop {
        while let Some(req) = machine.poll_request(Instant::now().into_std()) {
            let outcome = tokio::select! {
                o = clients.perform(&req) => Some(o),
                _ = stop.changed() => None,
            };
            match outcome {
                Some(o) => machine.handle(o, Instant::now().into_std()),
                // Abandon the request: shutting down deletes what is held.
                None => machine.shutdown(),
            }
        }
        while let Some(ev) = machine.poll_event() {
            log_event(&ev, router);
        }
        publish(&machine);
        if machine.is_stopped() {
            tracing::info!(%router, "port mapping deleted");
            return;
        }
        if *stop.borrow() {
            machine.shutdown();
            continue;
        }
        let wake = machine
            .poll_timeout()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => machine.shutdown(),
            got = async {
                match &announcements {
                    Some(s) => s.recv_from(&mut buf).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok((n, from)) = got {
                    if from.ip().to_canonical() == router && client::is_announcement(&buf[..n]) {
                        tracing::info!(%router, "the router announced a change; checking the port mapping");
                        machine.announcement(Instant::now().into_std());
                    }
                }
            }
        }
    }
}

fn log_event(ev: &Event, router: IpAddr) {
    match ev {
        Event::Mapped { protocol, external } => {
            tracing::info!(%router, %protocol, %external, "port mapped on the router")
        }
        Event::ExternalChanged { from, to } => {
            tracing::info!(%router, %from, %to, "the router's external address changed; reporting the new endpoint")
        }
        Event::RouterForgot { protocol } => {
            tracing::warn!(%router, %protocol, "the router had lost the port mapping (restarted?); mapped again")
        }
        Event::Lost { reason } => {
            tracing::warn!(%router, %reason, "port mapping lost; asking again")
        }
        Event::Unavailable { state, detail } => match state {
            MappingState::Refused => {
                tracing::warn!(%router, %detail, "the router refused to map the port: it probably has no public address of its own (carrier-grade NAT or a second router); clients cannot reach this gateway unless the port is opened in front of it")
            }
            _ => {
                tracing::warn!(%router, %detail, "no router answered PCP, NAT-PMP or UPnP: switch one on in the router, or forward the UDP port by hand")
            }
        },
    }
}

/// Re-reports the gateway whenever the endpoint or the network report
/// changes, retrying with backoff while the control plane is away.
async fn report_changes(r: Reporting, mut status: watch::Receiver<MappingReport>) {
    let control_addresses = host::control_addresses(&r.control_url).await;
    let mut sent: Option<GatewayReport> = None;
    // Exact doubling: one gateway reporting to its control plane.
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let mapping = status.borrow_and_update().clone();
        // The first round of probing takes a few seconds; reporting
        // "pending" would only make the control plane check too early.
        if mapping.state != MappingState::Pending {
            let mut report = r.base.clone();
            // A private or carrier-grade external address (a router behind
            // another NAT says so) is no endpoint: the control plane then
            // uses the address it sees, as without a mapping.
            report.public_endpoint = r.configured.or(match mapping.state {
                MappingState::Mapped => mapping
                    .external
                    .filter(|e| proto::reach::is_reportable_external(e.ip())),
                _ => None,
            });
            report.network = Some(NetworkReport {
                port_mapping: mapping,
                ipv6: host::global_ipv6(),
                control_addresses: control_addresses.clone(),
            });
            let same = sent.as_ref().is_some_and(|s| {
                s.public_endpoint == report.public_endpoint && s.network == report.network
            });
            if !same {
                match r.client.report(&report).await {
                    Ok(()) => {
                        tracing::info!(
                            endpoint = %report.public_endpoint.map(|e| e.to_string()).unwrap_or_else(|| "as the control plane sees it".into()),
                            "reported the gateway's endpoint and network to the control plane"
                        );
                        sent = Some(report);
                        backoff.reset();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not report the new endpoint to the control plane; retrying");
                        let wait = backoff.next_exact();
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
        }
        if status.changed().await.is_err() {
            // The mapper has stopped (off, or no router): one report of
            // its final state was made above; nothing more will change.
            std::future::pending::<()>().await;
        }
    }
}

/// Logs the control plane's reachability check when it changes.
pub fn log_reachability(view: &ReachabilityView) {
    if let Some(c) = &view.check {
        if c.reachable {
            tracing::info!("reachability check: {}", c.summary());
        } else {
            tracing::warn!("reachability check: {}", c.summary());
        }
    }
    for d in &view.diagnosis {
        tracing::warn!(advice = %d.advice, "{}", d.problem);
    }
}
