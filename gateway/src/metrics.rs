//! The gateway's metrics in the Prometheus text format.
//!
//! Nothing here touches the packet path. The data-path thread already
//! counts everything in plain integers it owns (datagrams, drops by
//! reason, each peer's traffic, each service's connections and bytes); a
//! scrape asks it for a snapshot through the same channel `hushgate
//! gateway status` uses, between two batches, so a scrape costs the data
//! path one message and no packet pays for an atomic or a lock. What
//! happens off the data path (feed versions, acknowledgement latency) is
//! recorded in prometheus-client's own counters and histograms as it
//! happens. The kernel pre-filter's drop counters are read with one `nft`
//! listing per scrape. The port mapping's state comes with the status.
//!
//! No sample is ever labelled by user, key or address (unbounded, and
//! private): only by drop reason, service name, chain and the like, whose
//! values the operator's configuration bounds.

use crate::filter::DropCount;
use crate::status::StatusReport;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// What the gateway records as it happens (off the data path).
#[derive(Debug)]
pub struct FeedMetrics {
    registry: Registry,
    /// Seconds from a feed answer's arrival to the control plane taking
    /// its acknowledgement: pre-filter, data path and the ack round trip.
    pub ack_latency: Histogram,
    /// Feed answers taken in, by `kind` (`whole` or `diff`).
    pub updates: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Feed requests that failed (the control plane unreachable or
    /// refusing).
    pub errors: Counter,
}

impl Default for FeedMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hushgate_gateway");
        // 0.5 ms to ~30 s: loopback acknowledgements take a millisecond,
        // a gateway behind a slow link or a busy pre-filter seconds.
        let ack_latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]);
        let updates = Family::default();
        let errors = Counter::default();
        registry.register_with_unit(
            "feed_ack_latency",
            "Time from a feed answer's arrival to the control plane taking its acknowledgement (pre-filter, data path, ack round trip)",
            Unit::Seconds,
            ack_latency.clone(),
        );
        registry.register(
            "feed_updates",
            "Feed answers applied, by kind (whole set or diff)",
            updates.clone(),
        );
        registry.register(
            "feed_errors",
            "Feed requests that failed (control plane unreachable or refusing)",
            errors.clone(),
        );
        FeedMetrics {
            registry,
            ack_latency,
            updates,
            errors,
        }
    }
}

/// One scrape's view of what the data path and the rest of the gateway
/// hold.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub report: StatusReport,
    /// The pre-filter's drop counters (None: no pre-filter, or `nft`
    /// could not be read).
    pub prefilter_drops: Option<Vec<DropCount>>,
    /// Seconds since the last feed answer was acknowledged (None: never).
    pub feed_lag_secs: Option<f64>,
    /// Tunnel service port -> name.
    pub service_names: Vec<(u16, String)>,
}

/// The text Prometheus reads: the recorded metrics, then the scrape's.
pub(crate) fn render(feed: &FeedMetrics, scrape: Scrape) -> String {
    let mut out = String::new();
    let mut now = Registry::with_prefix("hushgate_gateway");
    now.register_collector(Box::new(scrape));
    // Writing to a String cannot fail; an encoding error would be a bug in
    // a metric's own encoder, and a scrape then gets what was written.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &feed.registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &now);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(d.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(d.encode_family(labels)?)?;
    }
    Ok(())
}

fn one<T>(v: T) -> [(Labels, T); 1] {
    [(Vec::new(), v)]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.report;
        let g = &r.gateway;
        gauge(
            &mut enc,
            "build_info",
            "The gateway's version (always 1)",
            &[(vec![("version", r.version.clone())], 1.0)],
        )?;
        gauge(
            &mut enc,
            "uptime_seconds",
            "Seconds since the gateway started",
            &one(r.uptime_secs as f64),
        )?;
        counter(
            &mut enc,
            "datagrams_received",
            "Datagrams the gateway process received on its UDP port (with the pre-filter, only admitted sources' reach it)",
            &one(g.datagrams),
        )?;
        let drops: Vec<(Labels, u64)> = crate::DropReason::ALL
            .iter()
            .map(|&reason| {
                (
                    vec![("reason", reason.as_str().to_string())],
                    g.drops.get(reason),
                )
            })
            .collect();
        counter(
            &mut enc,
            "datagrams_dropped",
            "Datagrams (or decrypted packets) the gateway dropped, by reason; nothing is ever answered to them",
            &drops,
        )?;
        if let Some(counts) = &self.prefilter_drops {
            let packets: Vec<(Labels, u64)> = counts
                .iter()
                .map(|c| (vec![("chain", c.chain.clone())], c.packets))
                .collect();
            let bytes: Vec<(Labels, u64)> = counts
                .iter()
                .map(|c| (vec![("chain", c.chain.clone())], c.bytes))
                .collect();
            counter(
                &mut enc,
                "prefilter_dropped_packets",
                "Packets the kernel pre-filter (nftables) dropped before they reached the gateway, by chain (tunnel: the UDP port; direct: the direct TCP ports)",
                &packets,
            )?;
            counter(
                &mut enc,
                "prefilter_dropped_bytes",
                "Bytes of the packets the kernel pre-filter dropped, by chain",
                &bytes,
            )?;
        }
        if let Some(f) = &r.prefilter {
            gauge(
                &mut enc,
                "prefilter_elements",
                "Admitted sources held in the kernel pre-filter's sets",
                &one(f.elements as f64),
            )?;
            counter(
                &mut enc,
                "prefilter_transactions",
                "Changes written to the kernel pre-filter",
                &one(f.transactions),
            )?;
            gauge(
                &mut enc,
                "prefilter_failing",
                "1 when the last change to the kernel pre-filter failed",
                &one(if f.last_error.is_some() { 1.0 } else { 0.0 }),
            )?;
        }
        gauge(
            &mut enc,
            "prefilter_active",
            "1 when the kernel pre-filter is in place",
            &one(if r.prefilter.is_some() { 1.0 } else { 0.0 }),
        )?;
        let t = &g.totals;
        counter(
            &mut enc,
            "handshakes",
            "WireGuard handshakes completed with admitted clients",
            &one(t.handshakes),
        )?;
        counter(
            &mut enc,
            "tunnel_received_bytes",
            "Bytes of authenticated datagrams received from admitted clients",
            &one(t.rx_bytes),
        )?;
        counter(
            &mut enc,
            "tunnel_sent_bytes",
            "Bytes of datagrams sent to admitted clients",
            &one(t.tx_bytes),
        )?;
        counter(
            &mut enc,
            "admissions_installed",
            "Admissions installed from the control plane's feed",
            &one(t.admissions_installed),
        )?;
        counter(
            &mut enc,
            "admissions_removed",
            "Admissions removed (revoked, expired, replaced)",
            &one(t.admissions_removed),
        )?;
        gauge(
            &mut enc,
            "peers",
            "Admissions held now",
            &one(g.peers.len() as f64),
        )?;
        gauge(
            &mut enc,
            "peers_with_handshake",
            "Admissions held now whose client has completed a handshake",
            &one(g
                .peers
                .iter()
                .filter(|p| p.last_handshake_secs_ago.is_some())
                .count() as f64),
        )?;
        gauge(
            &mut enc,
            "feed_version",
            "The feed version last applied and acknowledged",
            &one(r.acked_version as f64),
        )?;
        gauge(
            &mut enc,
            "control_connected",
            "1 when the last feed request to the control plane succeeded",
            &one(if r.control_connected { 1.0 } else { 0.0 }),
        )?;
        if let Some(lag) = self.feed_lag_secs {
            gauge(
                &mut enc,
                "feed_lag_seconds",
                "Seconds since the gateway last acknowledged a feed answer (long-polls answer at least every 25 s; more means the feed is stuck)",
                &one(lag),
            )?;
        }
        let name_of = |port: u16| {
            self.service_names
                .iter()
                .find(|(p, _)| *p == port)
                .map_or_else(|| port.to_string(), |(_, n)| n.clone())
        };
        let svc = |f: fn(&crate::ServiceTraffic) -> u64| -> Vec<(Labels, u64)> {
            g.services
                .iter()
                .map(|s| (vec![("service", name_of(s.port))], f(s)))
                .collect()
        };
        counter(
            &mut enc,
            "service_connections",
            "Tunnelled connections spliced to each service's upstream",
            &svc(|s| s.connections),
        )?;
        gauge(
            &mut enc,
            "service_open_connections",
            "Tunnelled connections open now, per service",
            &svc(|s| s.open)
                .into_iter()
                .map(|(l, v)| (l, v as f64))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut enc,
            "service_upstream_connect_errors",
            "Upstream connects that failed at once, per service",
            &svc(|s| s.upstream_failures),
        )?;
        let mut bytes = svc(|s| s.bytes_to_upstream);
        for l in &mut bytes {
            l.0.push(("direction", "to_upstream".into()));
        }
        for (mut l, v) in svc(|s| s.bytes_from_upstream) {
            l.push(("direction", "from_upstream".into()));
            bytes.push((l, v));
        }
        counter(
            &mut enc,
            "service_bytes",
            "Bytes spliced between clients and each service's upstream, by direction",
            &bytes,
        )?;
        let health: Vec<(Labels, f64)> = r
            .services
            .iter()
            .map(|s| {
                (
                    vec![("service", s.name.clone()), ("kind", s.kind.to_string())],
                    match s.health {
                        "up" => 1.0,
                        "down" => 0.0,
                        _ => -1.0,
                    },
                )
            })
            .collect();
        gauge(
            &mut enc,
            "upstream_up",
            "1 when the service's upstream answered the last check, 0 when it did not, -1 before the first check",
            &health,
        )?;
        {
            use proto::reach::MappingState as M;
            let now = &r.port_mapping.state;
            let states: Vec<(Labels, f64)> = [
                (M::Off, "off"),
                (M::Pending, "pending"),
                (M::Mapped, "mapped"),
                (M::Refused, "refused"),
                (M::NoProtocol, "no_protocol"),
                (M::NoRouter, "no_router"),
            ]
            .into_iter()
            .map(|(s, name)| {
                (
                    vec![("state", name.to_string())],
                    if &s == now { 1.0 } else { 0.0 },
                )
            })
            .collect();
            gauge(
                &mut enc,
                "port_mapping_state",
                "The port mapping on the home router: 1 for the state it is in (off, pending, mapped, refused, no_protocol, no_router)",
                &states,
            )?;
            gauge(
                &mut enc,
                "port_mapping_lease_seconds",
                "Seconds the router granted the current mapping for (0: no mapping held)",
                &one(r.port_mapping.lease_secs.unwrap_or(0) as f64),
            )?;
        }
        if let Some(tcp) = &g.tcp {
            gauge(
                &mut enc,
                "tcp_sockets",
                "Sockets in the user-space TCP stack",
                &one(tcp.sockets as f64),
            )?;
            counter(
                &mut enc,
                "tcp_refused_connections",
                "Connections refused because their client held its connection limit",
                &one(tcp.refused_connections),
            )?;
            counter(
                &mut enc,
                "tcp_dropped_syns",
                "SYNs dropped because their client had its limit of handshakes in progress",
                &one(tcp.dropped_syns),
            )?;
        }
        if let Some(d) = &r.direct {
            counter(
                &mut enc,
                "direct_accepted",
                "Direct (firewall-only) connections accepted",
                &one(d.accepted),
            )?;
            counter(
                &mut enc,
                "direct_refused",
                "Direct connections refused (no admission covered the source)",
                &one(d.refused),
            )?;
            gauge(
                &mut enc,
                "direct_connections",
                "Direct connections open now",
                &one(d.connections as f64),
            )?;
        }
        Ok(())
    }
}
