//! The hushgate gateway's sans-IO core: a WireGuard endpoint that stays
//! silent to everyone the control plane has not just admitted.
//!
//! [`admission::AdmissionTable`] holds the desired set of tunnel admissions
//! (client key, bound source address, tunnel address, services, expiry)
//! as the control plane's feed states it, with O(1) lookups by source
//! address, client key, tunnel address and peer id. [`dispatch::Dispatcher`]
//! owns that table and one boringtun `Tunn` per connected peer: every
//! datagram from the UDP port goes through `handle_datagram`, which drops
//! anything from an unadmitted source after one hash lookup and before any
//! cryptography, routes handshakes by static key and everything else by
//! receiver index, enforces each admission's source binding, and checks
//! decrypted packets with [`tunnel_rule`] (IPv4 TCP from the client's own tunnel
//! address to an allowed service port only). Packets from the user-space
//! TCP stack go back out through `handle_outbound`. Nothing here opens a
//! socket or reads the clock: a driver passes in datagrams, feed states and
//! `now`, sends what lands in the [`dispatch::Outbox`], hands decrypted
//! packets to its TCP stack, closes connections on
//! [`dispatch::PeerEvent::Removed`], and sleeps until `poll_timeout`.
//!
//! That driver is `datapath`: one thread owning the UDP socket (batched
//! receive and GSO send through `netstack::udp`), the dispatcher, the
//! user-space TCP stack and every spliced upstream connection. [`Gateway`]
//! (`runtime`) puts the whole gateway together: it keeps the static key
//! and credential in the state folder ([`identity`]), enrolls or reports
//! to the control plane, follows the feed (apply on the data path, then
//! acknowledge; [`feed`] keeps the desired set current from diffs), and
//! answers `hushgate gateway status` on a Unix socket. One admitted client
//! cannot exhaust the TCP stack: [`limits`] gives each a share of its
//! sockets, handshake slots and buffer budget.
//!
//! [`config_file`] reads the TOML file `hushgate gateway --config` takes;
//! [`metrics`] renders what the gateway counts for Prometheus
//! (`Gateway::metrics_text`).
//!
//! In front of all of it, in the kernel, [`filter`] keeps an nftables
//! table that drops datagrams from sources without a live admission
//! before they wake the process, and [`direct`] serves direct
//! (firewall-only) admissions: a TCP port opened to admitted sources only.
//! Behind it, [`health`] records whether each service's upstream answers
//! (checked at start and periodically) for the status. [`portmap`] asks
//! the home router to forward the gateway's ports (PCP, NAT-PMP, UPnP
//! IGD) and re-reports the endpoint and the network to the control plane,
//! which checks that the endpoint is reachable and says why when not.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config_file;
mod datapath;
pub mod direct;
pub mod dispatch;
pub mod feed;
pub mod filter;
pub mod health;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod portmap;
mod runtime;
pub mod tunnel_rule;

pub use limits::{PeerLimits, PeerTcp, TcpStats};

pub use admission::{
    Admission, AdmissionError, AdmissionTable, ApplyOutcome, PeerId, Pinning, RemovalCause,
    SourceStatus,
};
pub use config_file::GatewayFile;
pub use dispatch::{
    Dispatcher, DispatcherConfig, DropCounters, DropReason, GatewayStats, Outbox, Output,
    PeerCounters, PeerEvent, PeerStats, ServiceTraffic, TrafficTotals, Verdict,
};
pub use filter::PrefilterMode;
pub use portmap::{PortMapConfig, PortMappingMode};
pub use runtime::{EnrollToken, Gateway, GatewayConfig, GatewayError, ServiceSpec, StatusReport};
