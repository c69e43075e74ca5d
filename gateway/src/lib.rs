//! The hushgate gateway: a WireGuard endpoint that stays silent to
//! everyone the control plane has not just admitted.
//!
//! # The admission flow
//!
//! ```text
//! control plane feed (HTTPS long poll)
//!   -> feed::DesiredSet      the desired set, kept current from diffs
//!   -> follower::Follower    sans-IO: one version at a time, in order:
//!        1. filter           kernel pre-filter (nftables): sources admitted
//!                            before any datagram of theirs reaches us
//!        2. direct           direct (firewall-only) admissions' TCP port
//!        3. datapath         tunnel admissions -> dispatch::Dispatcher
//!                            -> admission::AdmissionTable
//!        4. acknowledge      only after 1-3, and only if the kernel took it
//!   <- pinnings              a first-handshake admission's first handshake
//!                            (dispatcher -> data path -> follower -> filter)
//! ```
//!
//! A version the kernel refuses is still applied in user space (removals
//! must take effect) but not acknowledged: the follower asks for the whole
//! set again after a backoff. Every consumer takes a feed answer as one
//! [`feed::FeedChange`] (the whole set, or a diff), and turns each
//! admission into a source network and a local deadline with the one
//! rule [`admission::admitted`].
//!
//! # Modules
//!
//! Sans IO (no sockets, no clock: time comes in as `now`):
//! - [`feed`]: the desired set ([`feed::DesiredSet`]) and the feed change
//!   every consumer applies; `feed::fetch` is the one HTTP request.
//! - [`follower`]: the feed follower's state machine (inputs in, actions
//!   out); its ordering and every refusal and backoff path are unit-tested
//!   with a fake clock.
//! - [`admission`]: the admission table with O(1) lookups by source, key,
//!   tunnel address and peer id, and the lifetime/source rule.
//! - [`dispatch`]: [`dispatch::Dispatcher`] owns the table and one
//!   boringtun `Tunn` per peer; every datagram goes through
//!   `handle_datagram`, which drops unadmitted sources after one hash
//!   lookup and before any cryptography, routes handshakes by static key
//!   and the rest by receiver index, and enforces the source binding.
//! - [`tunnel_rule`]: what a decrypted packet may be (IPv4 TCP from the client's
//!   own tunnel address to an allowed service port).
//! - [`limits`]: each client's share of the TCP stack.
//! - `filter::plan`: what the pre-filter should hold, and the fewest
//!   changes that get it there.
//! - [`health`]: the upstreams' health book; [`metrics`]: Prometheus text.
//!
//! IO:
//! - `shell`: [`Gateway`] put together and run ([`run`] on a socket the
//!   caller bound, until a shutdown signal; [`Gateway::start`] binds
//!   itself); it executes the follower's actions.
//! - [`config`]: what the gateway is told, and its checks;
//!   [`config_file`]: the TOML file. `enroll`: enrollment and reports.
//!   [`identity`]: the static key and credential in the state folder.
//! - `datapath`: the data-path thread (UDP socket with batched receive and
//!   GSO send, the dispatcher, the user-space TCP stack, spliced upstream
//!   connections), driven by commands.
//! - [`filter`]: the nftables table; [`direct`]: the direct proxy.
//! - `status`: `hushgate gateway status` over a Unix socket.
//! - [`portmap`]: asks the home router to forward the gateway's ports
//!   (PCP, NAT-PMP, UPnP IGD) and re-reports the endpoint.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod config_file;
mod datapath;
pub mod direct;
pub mod dispatch;
mod enroll;
pub mod feed;
pub mod filter;
pub mod follower;
pub mod health;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod portmap;
mod shell;
mod status;
pub mod tunnel_rule;

pub use limits::{PeerLimits, PeerTcp, TcpStats};

pub use admission::{
    Admission, AdmissionError, AdmissionTable, ApplyOutcome, PeerId, Pinning, RemovalCause,
    SourceStatus,
};
pub use config::{EnrollToken, GatewayConfig, GatewayError, ServiceSpec};
pub use config_file::GatewayFile;
pub use dispatch::{
    Dispatcher, DispatcherConfig, DropCounters, DropReason, GatewayStats, Outbox, Output,
    PeerCounters, PeerEvent, PeerStats, ServiceTraffic, TrafficTotals, Verdict,
};
pub use feed::{FeedChange, FeedChangeRef};
pub use filter::PrefilterMode;
pub use portmap::{PortMapConfig, PortMappingMode};
pub use shell::{run, Gateway};
pub use status::StatusReport;
