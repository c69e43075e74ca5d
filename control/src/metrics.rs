//! The control plane's metrics in the Prometheus text format, served by
//! `hushgate control --metrics-listen` on an address of their own (never
//! the HTTPS API's).
//!
//! Requests are counted by route template (`/v1/admissions/{id}`, never
//! the id), method and status; logins by outcome; access requests by
//! result code, with their latency and, apart, the part spent waiting for
//! the gateway's acknowledgement; database transactions by latency. Live
//! admissions and connected gateways are read when scraped. Nothing is
//! labelled by user, key or address; live admissions are labelled by
//! server only when the operator allows it (`metrics_per_server`), since a
//! server name can say whose it is.

use crate::app::AppState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::time::Instant;

/// Buckets for latencies from a fraction of a millisecond (a SQLite
/// transaction) to tens of seconds (an access waiting out its ack timeout).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

/// What the control plane records as requests happen.
#[derive(Debug)]
pub struct ControlMetrics {
    registry: Registry,
    /// Requests by `route` (the route's template), `method` and `status`.
    pub requests: Family<Labels, Counter>,
    /// Logins by `outcome`: ok, failed, rate_limited.
    pub logins: Family<Labels, Counter>,
    /// Access requests by `result`: granted, or the error code sent.
    pub access: Family<Labels, Counter>,
    /// Whole access requests that were granted, request to answer.
    pub access_latency: Histogram,
    /// The part of each access spent waiting for the gateway to
    /// acknowledge the admission (granted or timed out).
    pub access_gateway_ack: Histogram,
    /// Label live admissions with the server's name.
    per_server: bool,
}

impl ControlMetrics {
    /// `db_latency`: the database's transaction histogram
    /// ([`crate::store::Db::latency`]).
    pub fn new(db_latency: Histogram, per_server: bool) -> ControlMetrics {
        let mut registry = Registry::with_prefix("hushgate_control");
        let requests = Family::<Labels, Counter>::default();
        let logins = Family::<Labels, Counter>::default();
        let access = Family::<Labels, Counter>::default();
        let access_latency = Histogram::new(LATENCY_BUCKETS);
        let access_gateway_ack = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "http_requests",
            "API requests by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "logins",
            "Logins by outcome (ok, failed, rate_limited)",
            logins.clone(),
        );
        registry.register(
            "access_requests",
            "Access requests by result (granted, or the error code answered)",
            access.clone(),
        );
        registry.register_with_unit(
            "access_latency",
            "Time from an access request to its granted answer, the gateway's acknowledgement included",
            Unit::Seconds,
            access_latency.clone(),
        );
        registry.register_with_unit(
            "access_gateway_ack",
            "The part of an access request spent waiting for the gateway's acknowledgement",
            Unit::Seconds,
            access_gateway_ack.clone(),
        );
        registry.register_with_unit(
            "database_transaction",
            "Time each database transaction took, commit included",
            Unit::Seconds,
            db_latency,
        );
        ControlMetrics {
            registry,
            requests,
            logins,
            access,
            access_latency,
            access_gateway_ack,
            per_server,
        }
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    pub fn access_result(&self, result: &str) {
        self.access
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }
}

/// Counts each request by its route's template and its status. The
/// template (`/v1/admissions/{id}`) keeps ids out of the labels; a path
/// that matched no route counts as `unmatched`.
pub async fn count_requests(
    axum::extract::State(st): axum::extract::State<std::sync::Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    st.metrics
        .requests
        .get_or_create(&vec![
            ("route", route),
            ("method", method),
            ("status", resp.status().as_u16().to_string()),
        ])
        .inc();
    resp
}

/// What a scrape reads from the database and the live feeds.
#[derive(Debug)]
struct Scrape {
    /// (server name, live admissions); the names are dropped unless the
    /// operator allows per-server labels.
    live: Vec<(String, u64)>,
    per_server: bool,
    gateways_connected: usize,
    gateways_known: usize,
    database_up: bool,
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

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let total: u64 = self.live.iter().map(|(_, n)| n).sum();
        let samples: Vec<(Labels, f64)> = if self.per_server {
            self.live
                .iter()
                .map(|(name, n)| (vec![("server", name.clone())], *n as f64))
                .collect()
        } else {
            vec![(Vec::new(), total as f64)]
        };
        if self.database_up {
            gauge(
                &mut enc,
                "live_admissions",
                "Admissions acknowledged by their gateway and not expired (per server where the operator allows it)",
                &samples,
            )?;
        }
        gauge(
            &mut enc,
            "gateways_connected",
            "Gateways holding a feed poll on this replica now (or within the last seconds)",
            &[(Vec::new(), self.gateways_connected as f64)],
        )?;
        gauge(
            &mut enc,
            "gateways_known",
            "Servers this replica has heard of since it started",
            &[(Vec::new(), self.gateways_known as f64)],
        )?;
        gauge(
            &mut enc,
            "database_up",
            "1 when the scrape's database query succeeded",
            &[(Vec::new(), if self.database_up { 1.0 } else { 0.0 })],
        )?;
        Ok(())
    }
}

/// One scrape: the recorded metrics and what the database and the live feeds
/// hold now.
pub async fn render(st: &AppState) -> String {
    let live = st
        .db
        .tx(|tx| crate::store::live_admissions_per_server(tx, time::OffsetDateTime::now_utc()))
        .await;
    let now = Instant::now();
    let known = st.live_feeds.known();
    let gateways_connected = known
        .iter()
        .filter_map(|id| st.live_feeds.get(*id))
        .filter(|s| s.connected(now))
        .count();
    let scrape = Scrape {
        database_up: live.is_ok(),
        live: live.unwrap_or_default(),
        per_server: st.metrics.per_server,
        gateways_connected,
        gateways_known: known.len(),
    };
    let mut now_reg = Registry::with_prefix("hushgate_control");
    now_reg.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &st.metrics.registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &now_reg);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}
