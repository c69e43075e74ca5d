//! The admission table: the set of tunnel admissions the gateway enforces
//! right now, and the indexes the packet path needs to ask "is this source
//! admitted?", "whose key is this?" and "which peer owns this inner
//! address?" in one hash lookup each.
//!
//! The table is level-triggered: [`AdmissionTable::apply`] takes a feed
//! change, either the whole desired state (it converges to it, so a lost
//! feed answer or a gateway restart heals on the next one) or a diff on
//! top of what it holds (the cost follows the change). It has no clock:
//! every call that depends on time takes `now`.
//!
//! [`admitted`] is the one rule that turns a feed admission into a source
//! network and a local deadline; the table, the kernel pre-filter's plan
//! and the direct proxy all use it, so they cannot disagree on who is
//! admitted until when.

use crate::feed::FeedChangeRef;
use proto::api::AccessMode;
use proto::feed::{FeedAdmission, FeedState};
use proto::{BindingPolicy, OffsetDateTime, WgKey};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// How long a `first-handshake` admission admits any source address while
/// it waits for its first valid handshake to pin one.
pub const DEFAULT_PINNING_WINDOW: Duration = Duration::from_secs(30);

/// boringtun keeps the low 8 bits of a session index for its own session
/// counter and gives us the upper 24 bits, so that is how many peers a
/// gateway can hold at once.
const MAX_PEERS: usize = 1 << 24;

/// A freed peer slot is only reused once this many are waiting, so that a
/// late datagram for a removed peer's session index is very unlikely to
/// reach the peer that took its place (it would fail authentication there
/// anyway; this just keeps counters and logs honest).
const SLOT_REUSE_DELAY: usize = 1024;

/// Admissions longer than this are clamped, so that a nonsense expiry in the
/// feed cannot overflow `Instant` arithmetic.
pub const MAX_ADMISSION_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What one feed admission admits, in this gateway's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The source network, per the binding policy ([`source_network`]);
    /// `None` under `first-handshake`, whose source is known only once a
    /// handshake pins it.
    pub network: Option<ipnet::IpNet>,
    /// The local moment the admission ends: the time left on the control
    /// plane's clock (`expires_at - server_time`) counted from `received`,
    /// clamped to [`MAX_ADMISSION_LIFETIME`], so that the two machines'
    /// clocks need not agree and a nonsense expiry cannot overflow.
    pub deadline: Instant,
}

/// The one rule "feed admission -> source network and local deadline",
/// for an answer stamped `server_time` by the control plane and received
/// here at `received`. `None` when the admission has no time left at
/// `server_time`.
pub fn admitted(
    a: &FeedAdmission,
    server_time: OffsetDateTime,
    received: Instant,
) -> Option<Admitted> {
    let remaining = Duration::try_from(a.expires_at - server_time)
        .ok()
        .filter(|d| !d.is_zero())?;
    Some(Admitted {
        network: match a.binding {
            BindingPolicy::FirstHandshake => None,
            binding => Some(source_network(binding, a.source)),
        },
        deadline: received + remaining.min(MAX_ADMISSION_LIFETIME),
    })
}

/// The network `binding` admits for a client seen at `source`: the
/// binding's prefix length for the source's family (an IPv4 client of a
/// `prefix:24,56` server is admitted by its /24, an IPv6 one by its /56),
/// a host network for `exact` (and for a pinned `first-handshake`). An
/// IPv4 client written as `::ffff:a.b.c.d` counts as IPv4.
pub fn source_network(binding: BindingPolicy, source: IpAddr) -> ipnet::IpNet {
    binding.network(source.to_canonical())
}

/// The gateway's handle for one admitted peer. It is also the upper 24 bits
/// of every WireGuard session index the gateway hands that peer, which is
/// how a data packet finds its peer without a hash lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PeerId(u32);

impl PeerId {
    /// The peer a WireGuard receiver index belongs to.
    pub fn from_receiver_index(index: u32) -> PeerId {
        PeerId(index >> 8)
    }

    /// The value boringtun's `Tunn::new` takes as its `index`.
    pub fn tunnel_index(self) -> u32 {
        self.0
    }

    fn slot(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// Where a `first-handshake` admission stands with its source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// The binding is `exact` or `prefix`: nothing to pin.
    NotApplicable,
    /// Any source may complete the first handshake until this moment.
    Open { until: Instant },
    /// The first valid handshake came from this address; only it is
    /// admitted from now on.
    Pinned(IpAddr),
    /// The window passed without a valid handshake: no source is admitted.
    /// The client must ask the control plane for a new admission.
    Closed,
}

/// How a source address relates to the live admissions, as far as one hash
/// lookup (plus one per distinct prefix length) can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Some admission's exact, prefix or pinned binding covers it.
    Bound,
    /// No binding covers it, but a `first-handshake` admission is waiting
    /// for its first handshake, so a handshake initiation from here may be
    /// legitimate. Nothing else from this source is.
    PinningWindowOpen,
    /// Nothing admits it: drop without a reply.
    Unknown,
}

/// One installed tunnel admission.
#[derive(Debug, Clone)]
pub struct Admission {
    peer: PeerId,
    /// The admission exactly as the feed last stated it; kept to tell a
    /// changed admission from an unchanged one on the next apply.
    feed: FeedAdmission,
    client_public_key: WgKey,
    client_address: Ipv4Addr,
    /// `feed.source` with IPv4-mapped IPv6 turned into IPv4, so that a
    /// dual-stack socket's `::ffff:a.b.c.d` matches an admission for
    /// `a.b.c.d`.
    source: IpAddr,
    /// The local moment the admission ends (the feed's expiry measured on
    /// the control plane's clock, moved onto ours).
    deadline: Instant,
    pinning: Pinning,
}

impl Admission {
    pub fn peer(&self) -> PeerId {
        self.peer
    }
    pub fn id(&self) -> &str {
        &self.feed.id
    }
    pub fn client_public_key(&self) -> &WgKey {
        &self.client_public_key
    }
    pub fn preshared_key(&self) -> Option<&WgKey> {
        self.feed.preshared_key.as_ref()
    }
    pub fn source(&self) -> IpAddr {
        self.source
    }
    pub fn binding(&self) -> BindingPolicy {
        self.feed.binding
    }
    pub fn client_address(&self) -> Ipv4Addr {
        self.client_address
    }
    pub fn services(&self) -> &[String] {
        &self.feed.services
    }
    pub fn expires_at(&self) -> OffsetDateTime {
        self.feed.expires_at
    }
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
    pub fn pinning(&self) -> Pinning {
        self.pinning
    }
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Whether a handshake initiation from `ip` may proceed for this
    /// admission. For `first-handshake` this is any address while the
    /// window is open, then only the pinned one.
    pub fn admits_handshake(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        match self.pinning {
            Pinning::NotApplicable => self.feed.binding.admits(self.source, ip),
            Pinning::Open { until } => now < until,
            Pinning::Pinned(pinned) => pinned == ip,
            Pinning::Closed => false,
        }
    }

    /// Whether a packet of an established session may come from `ip`.
    /// Unlike [`Admission::admits_handshake`] an open pinning window admits
    /// nothing here: a session exists only after a handshake, and that
    /// handshake pinned the address.
    pub fn admits_session_packet(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self.pinning {
            Pinning::NotApplicable => self.feed.binding.admits(self.source, ip),
            Pinning::Pinned(pinned) => pinned == ip,
            Pinning::Open { .. } | Pinning::Closed => false,
        }
    }

    /// The source index entry this admission contributes, derived from its
    /// current state so that indexing and unindexing always agree.
    fn source_key(&self) -> SourceKey {
        match self.pinning {
            Pinning::NotApplicable => {
                let net = source_network(self.feed.binding, self.source);
                if net.prefix_len() < host_bits(self.source) {
                    SourceKey::Prefix {
                        len: net.prefix_len(),
                        network: net.network(),
                    }
                } else {
                    SourceKey::Exact(self.source)
                }
            }
            Pinning::Open { .. } => SourceKey::Pinning,
            Pinning::Pinned(ip) => SourceKey::Exact(ip),
            Pinning::Closed => SourceKey::None,
        }
    }

    /// Fields that are baked into the peer's WireGuard state or routing:
    /// if any of them changes, the peer must be rebuilt, not edited.
    fn same_tunnel_identity(&self, feed: &FeedAdmission) -> bool {
        feed.client_public_key.as_ref() == Some(&self.client_public_key)
            && feed.preshared_key == self.feed.preshared_key
            && feed.client_address == Some(self.client_address)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKey {
    Exact(IpAddr),
    Prefix { len: u8, network: IpAddr },
    Pinning,
    None,
}

/// Why an admission in the feed was not installed. The rest of the feed is
/// applied regardless; the control plane learns of these from the gateway's
/// log and status, and the next feed version gets another chance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("admission '{id}' is for direct (firewall-only) access, which the tunnel endpoint does not handle")]
    NotTunnelMode { id: String },
    #[error("admission '{id}' has no client public key; a tunnel admission needs one")]
    MissingPublicKey { id: String },
    #[error("admission '{id}' has no client tunnel address; a tunnel admission needs one")]
    MissingClientAddress { id: String },
    #[error("admission '{id}' expired before it arrived (expiry {expires_at}, control plane time {server_time})")]
    AlreadyExpired {
        id: String,
        expires_at: OffsetDateTime,
        server_time: OffsetDateTime,
    },
    #[error("admission id '{id}' appears more than once in feed version {version}; only the first is used")]
    DuplicateId { id: String, version: u64 },
    #[error("admission '{id}' uses the same client public key as admission '{holder}'; a key can be admitted only once")]
    DuplicateKey { id: String, holder: String },
    #[error(
        "admission '{id}' uses tunnel address {address}, which admission '{holder}' already holds"
    )]
    DuplicateClientAddress {
        id: String,
        address: Ipv4Addr,
        holder: String,
    },
    #[error("admission '{id}' does not fit: the gateway already holds the maximum of {max} peers")]
    TableFull { id: String, max: usize },
}

impl AdmissionError {
    /// The admission concerned, for the log line's `admission` field.
    pub fn admission_id(&self) -> &str {
        match self {
            AdmissionError::NotTunnelMode { id }
            | AdmissionError::MissingPublicKey { id }
            | AdmissionError::MissingClientAddress { id }
            | AdmissionError::AlreadyExpired { id, .. }
            | AdmissionError::DuplicateId { id, .. }
            | AdmissionError::DuplicateKey { id, .. }
            | AdmissionError::DuplicateClientAddress { id, .. }
            | AdmissionError::TableFull { id, .. } => id,
        }
    }
}

/// Why an admission left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalCause {
    /// It is no longer in the control plane's desired state (revocation,
    /// logout, or replaced by a renewal under a new id).
    Revoked,
    /// Its expiry passed.
    Expired,
    /// Its key, preshared key or tunnel address changed; it was installed
    /// again as a new peer.
    Replaced,
    /// The feed still lists it but it can no longer be installed (see the
    /// matching entry in [`ApplyOutcome::rejected`]).
    Rejected,
}

/// An admission that left the table, with why.
#[derive(Debug, Clone)]
pub struct Removed {
    pub admission: Admission,
    pub cause: RemovalCause,
}

/// An admission that was installed or edited in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub peer: PeerId,
    pub id: String,
}

/// What one [`AdmissionTable::apply`] did.
#[derive(Debug, Clone, Default)]
pub struct ApplyOutcome {
    pub version: u64,
    /// Newly installed, including the new half of a replacement.
    pub added: Vec<Installed>,
    /// Edited in place (expiry, services, source or binding changed); the
    /// peer and its sessions are kept.
    pub changed: Vec<Installed>,
    /// Gone, including the old half of a replacement. Their spliced
    /// connections must be closed.
    pub removed: Vec<Removed>,
    /// Listed in the feed but not installed.
    pub rejected: Vec<AdmissionError>,
}

/// One index of prefix-bound sources, for one address family and length.
#[derive(Debug)]
struct PrefixSources {
    v6: bool,
    len: u8,
    /// Masked network address to the number of admissions bound to it.
    networks: HashMap<IpAddr, u32>,
}

/// The admissions the gateway enforces, with O(1) lookups by source
/// address, client key, inner client address and peer id.
#[derive(Debug)]
pub struct AdmissionTable {
    pinning_window: Duration,
    /// Indexed by `PeerId`; `None` marks a free slot.
    slots: Vec<Option<Admission>>,
    free: VecDeque<u32>,
    live: usize,
    by_id: HashMap<String, PeerId>,
    by_key: HashMap<[u8; 32], PeerId>,
    by_client_address: HashMap<Ipv4Addr, PeerId>,
    /// Reference counts, because several admissions may share one source
    /// (two devices behind one NAT).
    exact_sources: HashMap<IpAddr, u32>,
    /// One entry per distinct (family, prefix length) in use; a lookup costs
    /// one hash probe per entry of the candidate's family.
    prefix_sources: Vec<PrefixSources>,
    /// `first-handshake` admissions still waiting, by window end.
    pinning: BTreeSet<(Instant, PeerId)>,
    /// Every admission, by local deadline.
    deadlines: BTreeSet<(Instant, PeerId)>,
    version: Option<u64>,
    service_address: Option<Ipv4Addr>,
}

impl Default for AdmissionTable {
    fn default() -> Self {
        AdmissionTable::new(DEFAULT_PINNING_WINDOW)
    }
}

impl AdmissionTable {
    pub fn new(pinning_window: Duration) -> Self {
        AdmissionTable {
            pinning_window,
            slots: Vec::new(),
            free: VecDeque::new(),
            live: 0,
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            by_client_address: HashMap::new(),
            exact_sources: HashMap::new(),
            prefix_sources: Vec::new(),
            pinning: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            version: None,
            service_address: None,
        }
    }

    /// The feed version last applied.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The gateway's inner address, as the last applied feed stated it.
    pub fn service_address(&self) -> Option<Ipv4Addr> {
        self.service_address
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// One more than the highest peer id ever handed out: the size a
    /// per-peer array indexed by [`PeerId`] needs.
    pub fn peer_capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Admission> {
        self.slots.iter().flatten()
    }

    pub fn get(&self, peer: PeerId) -> Option<&Admission> {
        self.slots.get(peer.slot()).and_then(Option::as_ref)
    }

    pub fn by_id(&self, id: &str) -> Option<&Admission> {
        self.by_id.get(id).and_then(|&peer| self.get(peer))
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Admission> {
        self.by_key.get(key).and_then(|&peer| self.get(peer))
    }

    pub fn by_client_address(&self, address: Ipv4Addr) -> Option<&Admission> {
        self.by_client_address
            .get(&address)
            .and_then(|&peer| self.get(peer))
    }

    /// Whether any live admission could accept traffic from `ip`. This is
    /// the first check on every datagram, so it is one hash probe for exact
    /// and pinned bindings plus one per distinct prefix length in use.
    pub fn source_status(&self, ip: IpAddr) -> SourceStatus {
        let ip = ip.to_canonical();
        if self.exact_sources.contains_key(&ip) {
            return SourceStatus::Bound;
        }
        let v6 = ip.is_ipv6();
        for prefix in &self.prefix_sources {
            if prefix.v6 == v6 && prefix.networks.contains_key(&mask(ip, prefix.len)) {
                return SourceStatus::Bound;
            }
        }
        if self.pinning.is_empty() {
            SourceStatus::Unknown
        } else {
            SourceStatus::PinningWindowOpen
        }
    }

    /// Whether an admission whose deadline has not passed binds `ip` (as
    /// [`Admission::admits_session_packet`] says). [`Self::source_status`]
    /// also counts admissions past their deadline that
    /// [`Self::expire`] has not removed yet; this does not. As cheap as
    /// `source_status` while none is past its deadline (the usual case);
    /// otherwise the expired ones that bind `ip` are counted against all
    /// that do.
    pub fn binds_live(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        let mut binders = self.exact_sources.get(&ip).copied().unwrap_or(0);
        let v6 = ip.is_ipv6();
        for prefix in &self.prefix_sources {
            if prefix.v6 == v6 {
                binders += prefix
                    .networks
                    .get(&mask(ip, prefix.len))
                    .copied()
                    .unwrap_or(0);
            }
        }
        if binders == 0 {
            return false;
        }
        let expired = self
            .expiring(now)
            .filter(|a| a.admits_session_packet(ip))
            .count();
        (expired as u64) < u64::from(binders)
    }

    /// Pins a `first-handshake` admission to `ip` after its first valid
    /// handshake. Returns false (and changes nothing) if the admission is
    /// not waiting to be pinned.
    pub fn pin(&mut self, peer: PeerId, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        let Some(admission) = self.slots.get(peer.slot()).and_then(Option::as_ref) else {
            return false;
        };
        let Pinning::Open { until } = admission.pinning else {
            return false;
        };
        if now >= until {
            return false;
        }
        let old_key = admission.source_key();
        self.set_pinning(peer, old_key, Pinning::Pinned(ip));
        true
    }

    /// The earliest moment at which [`AdmissionTable::expire`] has work:
    /// an admission's deadline or the end of a pinning window.
    pub fn next_deadline(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|&(t, _)| t);
        let window = self.pinning.first().map(|&(t, _)| t);
        match (deadline, window) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The admissions whose deadline has passed at `now` (the next
    /// [`AdmissionTable::expire`] removes them), soonest first.
    pub fn expiring(&self, now: Instant) -> impl Iterator<Item = &Admission> + '_ {
        self.deadlines
            .iter()
            .take_while(move |&&(deadline, _)| deadline <= now)
            .filter_map(|&(_, peer)| self.get(peer))
    }

    /// Removes every admission whose deadline has passed and closes pinning
    /// windows that ended without a handshake. Returns what was removed.
    pub fn expire(&mut self, now: Instant) -> Vec<Admission> {
        while let Some(&(until, peer)) = self.pinning.first() {
            if until > now {
                break;
            }
            self.set_pinning(peer, SourceKey::Pinning, Pinning::Closed);
        }
        let mut removed = Vec::new();
        while let Some(&(deadline, peer)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            match self.remove(peer) {
                Some(admission) => removed.push(admission),
                // An index entry without its slot would loop forever; the
                // invariants say it cannot happen, so drop the entry.
                None => {
                    self.deadlines.remove(&(deadline, peer));
                }
            }
        }
        removed
    }

    /// Takes in a feed change: a whole desired set (converged to: what it
    /// does not list is removed) or a diff (`changed` admissions, new or
    /// replacing what is held under their id, and `removed` ids, on top of
    /// what the table holds; the cost follows the change, and the result
    /// is what the whole set the diff leads to gives). Deadlines come from
    /// [`admitted`], measured from `now`.
    pub fn apply<'a>(
        &mut self,
        change: impl Into<FeedChangeRef<'a>>,
        now: Instant,
    ) -> ApplyOutcome {
        let change = change.into();
        let header = change.header();
        let mut outcome = ApplyOutcome {
            version: header.version,
            ..ApplyOutcome::default()
        };
        self.version = Some(header.version);
        self.service_address = Some(header.service_address);
        let (changed, removed): (&[FeedAdmission], Option<&[String]>) = match change {
            FeedChangeRef::Whole(state) => (&state.admissions, None),
            FeedChangeRef::Diff {
                changed, removed, ..
            } => (changed, Some(removed)),
        };

        // First occurrence of each id wins; later ones are reported.
        let mut wanted: HashSet<&str> = HashSet::with_capacity(changed.len());
        let mut unique: Vec<&FeedAdmission> = Vec::with_capacity(changed.len());
        for feed in changed {
            if wanted.insert(feed.id.as_str()) {
                unique.push(feed);
            } else {
                outcome.rejected.push(AdmissionError::DuplicateId {
                    id: feed.id.clone(),
                    version: header.version,
                });
            }
        }

        // Removals first, so that a key or tunnel address freed by a revoked
        // admission can be taken by a new one in the same version: a whole
        // set removes what it does not list, a diff what it names.
        let gone: Vec<PeerId> = match removed {
            None => self
                .by_id
                .iter()
                .filter(|(id, _)| !wanted.contains(id.as_str()))
                .map(|(_, &peer)| peer)
                .collect(),
            Some(removed) => removed
                .iter()
                .filter_map(|id| self.by_id.get(id).copied())
                .collect(),
        };
        for peer in gone {
            if let Some(admission) = self.remove(peer) {
                outcome.removed.push(Removed {
                    admission,
                    cause: RemovalCause::Revoked,
                });
            }
        }

        for feed in unique {
            self.upsert(feed, header, now, &mut outcome);
        }
        outcome
    }

    /// Installs `feed`, or updates or replaces what is held under its id.
    fn upsert(
        &mut self,
        feed: &FeedAdmission,
        state: &FeedState,
        now: Instant,
        outcome: &mut ApplyOutcome,
    ) {
        let validated = match validate(feed, state, now) {
            Ok(v) => v,
            Err(error) => {
                if let Some(&peer) = self.by_id.get(&feed.id) {
                    if let Some(admission) = self.remove(peer) {
                        let cause = match error {
                            AdmissionError::AlreadyExpired { .. } => RemovalCause::Expired,
                            _ => RemovalCause::Rejected,
                        };
                        outcome.removed.push(Removed { admission, cause });
                    }
                }
                outcome.rejected.push(error);
                return;
            }
        };

        if let Some(&peer) = self.by_id.get(&feed.id) {
            let Some(existing) = self.get(peer) else {
                return;
            };
            if existing.same_tunnel_identity(feed) {
                let edited = existing.feed != *feed;
                self.update_in_place(peer, feed, validated);
                if edited {
                    outcome.changed.push(Installed {
                        peer,
                        id: feed.id.clone(),
                    });
                }
                return;
            }
            if let Some(admission) = self.remove(peer) {
                outcome.removed.push(Removed {
                    admission,
                    cause: RemovalCause::Replaced,
                });
            }
        }

        match self.insert(feed, validated, now) {
            Ok(peer) => outcome.added.push(Installed {
                peer,
                id: feed.id.clone(),
            }),
            Err(error) => outcome.rejected.push(error),
        }
    }

    fn insert(
        &mut self,
        feed: &FeedAdmission,
        v: Validated,
        now: Instant,
    ) -> Result<PeerId, AdmissionError> {
        if let Some(holder) = self.by_key(v.key.as_bytes()) {
            return Err(AdmissionError::DuplicateKey {
                id: feed.id.clone(),
                holder: holder.id().to_string(),
            });
        }
        if let Some(holder) = self.by_client_address(v.client_address) {
            return Err(AdmissionError::DuplicateClientAddress {
                id: feed.id.clone(),
                address: v.client_address,
                holder: holder.id().to_string(),
            });
        }
        let peer = self
            .allocate_slot()
            .ok_or_else(|| AdmissionError::TableFull {
                id: feed.id.clone(),
                max: MAX_PEERS,
            })?;
        let pinning = match feed.binding {
            BindingPolicy::FirstHandshake => Pinning::Open {
                until: now + self.pinning_window,
            },
            _ => Pinning::NotApplicable,
        };
        let admission = Admission {
            peer,
            feed: feed.clone(),
            client_public_key: v.key,
            client_address: v.client_address,
            source: v.source,
            deadline: v.deadline,
            pinning,
        };
        self.index(&admission);
        self.slots[peer.slot()] = Some(admission);
        self.live += 1;
        Ok(peer)
    }

    fn update_in_place(&mut self, peer: PeerId, feed: &FeedAdmission, v: Validated) {
        let Some(mut admission) = self.slots.get_mut(peer.slot()).and_then(Option::take) else {
            return;
        };
        self.unindex(&admission);
        // Pinning survives a renewal; it restarts only if the binding
        // becomes first-handshake, and ends if it stops being that.
        admission.pinning = match (feed.binding, admission.pinning) {
            (BindingPolicy::FirstHandshake, Pinning::NotApplicable) => Pinning::Open {
                until: v.now + self.pinning_window,
            },
            (BindingPolicy::FirstHandshake, kept) => kept,
            _ => Pinning::NotApplicable,
        };
        admission.feed = feed.clone();
        admission.source = v.source;
        admission.deadline = v.deadline;
        self.index(&admission);
        self.slots[peer.slot()] = Some(admission);
    }

    fn remove(&mut self, peer: PeerId) -> Option<Admission> {
        let admission = self.slots.get_mut(peer.slot()).and_then(Option::take)?;
        self.unindex(&admission);
        self.live -= 1;
        self.free.push_back(peer.0);
        Some(admission)
    }

    fn allocate_slot(&mut self) -> Option<PeerId> {
        if self.free.len() > SLOT_REUSE_DELAY || self.slots.len() >= MAX_PEERS {
            let slot = self.free.pop_front()?;
            return Some(PeerId(slot));
        }
        let slot = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(None);
        Some(PeerId(slot))
    }

    fn set_pinning(&mut self, peer: PeerId, old_key: SourceKey, pinning: Pinning) {
        let Some(admission) = self.slots.get_mut(peer.slot()).and_then(Option::as_mut) else {
            return;
        };
        let old_pinning = admission.pinning;
        admission.pinning = pinning;
        let new_key = admission.source_key();
        if let Pinning::Open { until } = old_pinning {
            self.pinning.remove(&(until, peer));
        }
        self.unindex_source(old_key);
        self.index_source(new_key, peer, pinning);
    }

    fn index(&mut self, admission: &Admission) {
        self.by_id.insert(admission.feed.id.clone(), admission.peer);
        self.by_key
            .insert(*admission.client_public_key.as_bytes(), admission.peer);
        self.by_client_address
            .insert(admission.client_address, admission.peer);
        self.deadlines.insert((admission.deadline, admission.peer));
        self.index_source(admission.source_key(), admission.peer, admission.pinning);
    }

    fn unindex(&mut self, admission: &Admission) {
        self.by_id.remove(&admission.feed.id);
        self.by_key.remove(admission.client_public_key.as_bytes());
        self.by_client_address.remove(&admission.client_address);
        self.deadlines.remove(&(admission.deadline, admission.peer));
        if let Pinning::Open { until } = admission.pinning {
            self.pinning.remove(&(until, admission.peer));
        }
        self.unindex_source(admission.source_key());
    }

    fn index_source(&mut self, key: SourceKey, peer: PeerId, pinning: Pinning) {
        match key {
            SourceKey::Exact(ip) => *self.exact_sources.entry(ip).or_insert(0) += 1,
            SourceKey::Prefix { len, network } => {
                let v6 = network.is_ipv6();
                let position = self
                    .prefix_sources
                    .iter()
                    .position(|p| p.v6 == v6 && p.len == len);
                let table = match position {
                    Some(i) => &mut self.prefix_sources[i],
                    None => {
                        self.prefix_sources.push(PrefixSources {
                            v6,
                            len,
                            networks: HashMap::new(),
                        });
                        let last = self.prefix_sources.len() - 1;
                        &mut self.prefix_sources[last]
                    }
                };
                *table.networks.entry(network).or_insert(0) += 1;
            }
            SourceKey::Pinning => {
                if let Pinning::Open { until } = pinning {
                    self.pinning.insert((until, peer));
                }
            }
            SourceKey::None => {}
        }
    }

    /// Pinning-set entries are removed by the callers, which know the
    /// window end; this handles the reference-counted indexes.
    fn unindex_source(&mut self, key: SourceKey) {
        match key {
            SourceKey::Exact(ip) => release(&mut self.exact_sources, ip),
            SourceKey::Prefix { len, network } => {
                let v6 = network.is_ipv6();
                if let Some(i) = self
                    .prefix_sources
                    .iter()
                    .position(|p| p.v6 == v6 && p.len == len)
                {
                    release(&mut self.prefix_sources[i].networks, network);
                    if self.prefix_sources[i].networks.is_empty() {
                        self.prefix_sources.swap_remove(i);
                    }
                }
            }
            SourceKey::Pinning | SourceKey::None => {}
        }
    }
}

fn release(counts: &mut HashMap<IpAddr, u32>, ip: IpAddr) {
    if let Some(count) = counts.get_mut(&ip) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&ip);
        }
    }
}

/// The parts of a feed admission the table needs, checked.
#[derive(Debug, Clone, Copy)]
struct Validated {
    key: WgKey,
    client_address: Ipv4Addr,
    source: IpAddr,
    deadline: Instant,
    now: Instant,
}

fn validate(
    feed: &FeedAdmission,
    state: &FeedState,
    now: Instant,
) -> Result<Validated, AdmissionError> {
    if feed.mode != AccessMode::Tunnel {
        return Err(AdmissionError::NotTunnelMode {
            id: feed.id.clone(),
        });
    }
    let key = feed
        .client_public_key
        .ok_or_else(|| AdmissionError::MissingPublicKey {
            id: feed.id.clone(),
        })?;
    let client_address =
        feed.client_address
            .ok_or_else(|| AdmissionError::MissingClientAddress {
                id: feed.id.clone(),
            })?;
    let admitted =
        admitted(feed, state.server_time, now).ok_or_else(|| AdmissionError::AlreadyExpired {
            id: feed.id.clone(),
            expires_at: feed.expires_at,
            server_time: state.server_time,
        })?;
    Ok(Validated {
        key,
        client_address,
        source: feed.source.to_canonical(),
        deadline: admitted.deadline,
        now,
    })
}

fn host_bits(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with all but its first `len` bits cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::feed;
    use testkit::feed::ip;
    use time::macros::datetime;

    fn admission(n: u32, source: &str, binding: BindingPolicy) -> FeedAdmission {
        FeedAdmission {
            binding,
            client_address: Some(Ipv4Addr::from(0x6440_0000 + n)),
            ..feed::tunnel(&format!("adm_{n}"), WgKey(key(n)), ip(source))
        }
    }

    fn state(version: u64, admissions: Vec<FeedAdmission>) -> FeedState {
        feed::state(version, admissions)
    }

    fn key(n: u32) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        key
    }

    #[test]
    fn deadline_is_measured_on_the_control_planes_clock() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        let outcome = table.apply(
            &state(1, vec![admission(1, "203.0.113.7", BindingPolicy::Exact)]),
            now,
        );
        assert_eq!(outcome.added.len(), 1);
        let adm = table.by_id("adm_1").unwrap();
        assert_eq!(adm.deadline(), now + Duration::from_secs(3600));
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(3600)));
    }

    #[test]
    fn lookups_by_source_key_and_inner_address() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        table.apply(
            &state(
                1,
                vec![
                    admission(1, "203.0.113.7", BindingPolicy::Exact),
                    admission(2, "198.51.100.9", BindingPolicy::prefix(24, 56).unwrap()),
                    admission(3, "2001:db8:1:2::5", BindingPolicy::prefix(24, 56).unwrap()),
                ],
            ),
            now,
        );
        assert_eq!(table.source_status(ip("203.0.113.7")), SourceStatus::Bound);
        assert_eq!(
            table.source_status(ip("::ffff:203.0.113.7")),
            SourceStatus::Bound
        );
        assert_eq!(
            table.source_status(ip("203.0.113.8")),
            SourceStatus::Unknown
        );
        assert_eq!(
            table.source_status(ip("198.51.100.200")),
            SourceStatus::Bound
        );
        assert_eq!(
            table.source_status(ip("198.51.101.9")),
            SourceStatus::Unknown
        );
        // `prefix:24,56`: an IPv6 source is bound by its /56, not by the
        // IPv4 length (an IPv6 /24 would be a whole provider).
        for inside in ["2001:db8:1:2::99", "2001:db8:1:ff::5"] {
            assert_eq!(table.source_status(ip(inside)), SourceStatus::Bound);
        }
        for outside in ["2001:db8:1:100::5", "2001:db8:ff::1", "2001:dff::1"] {
            assert_eq!(table.source_status(ip(outside)), SourceStatus::Unknown);
        }
        assert_eq!(table.by_key(&key(2)).unwrap().id(), "adm_2");
        assert!(table.by_key(&key(9)).is_none());
        assert_eq!(
            table
                .by_client_address(Ipv4Addr::new(100, 64, 0, 3))
                .unwrap()
                .id(),
            "adm_3"
        );
    }

    #[test]
    fn shared_source_stays_admitted_until_its_last_admission_goes() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        let a = admission(1, "203.0.113.7", BindingPolicy::Exact);
        let b = admission(2, "203.0.113.7", BindingPolicy::Exact);
        table.apply(&state(1, vec![a.clone(), b]), now);
        let outcome = table.apply(&state(2, vec![a]), now);
        assert_eq!(outcome.removed.len(), 1);
        assert_eq!(outcome.removed[0].cause, RemovalCause::Revoked);
        assert_eq!(table.source_status(ip("203.0.113.7")), SourceStatus::Bound);
        table.apply(&state(3, vec![]), now);
        assert_eq!(
            table.source_status(ip("203.0.113.7")),
            SourceStatus::Unknown
        );
        assert!(table.is_empty());
        assert!(table.prefix_sources.is_empty());
    }

    #[test]
    fn reapplying_the_same_state_changes_nothing() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        let s = state(1, vec![admission(1, "203.0.113.7", BindingPolicy::Exact)]);
        table.apply(&s, now);
        let outcome = table.apply(&s, now);
        assert!(outcome.added.is_empty() && outcome.changed.is_empty());
        assert!(outcome.removed.is_empty() && outcome.rejected.is_empty());
    }

    #[test]
    fn renewal_edits_in_place_and_key_change_replaces() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        let mut a = admission(1, "203.0.113.7", BindingPolicy::Exact);
        table.apply(&state(1, vec![a.clone()]), now);
        let peer = table.by_id("adm_1").unwrap().peer();

        a.expires_at = datetime!(2026-11-25 22:00 UTC);
        a.services.push("jellyfin".into());
        let outcome = table.apply(&state(2, vec![a.clone()]), now);
        assert_eq!(
            outcome.changed,
            vec![Installed {
                peer,
                id: "adm_1".into()
            }]
        );
        assert_eq!(
            table.by_id("adm_1").unwrap().deadline(),
            now + Duration::from_secs(7200)
        );

        a.client_public_key = Some(WgKey(key(77)));
        let outcome = table.apply(&state(3, vec![a]), now);
        assert_eq!(outcome.removed.len(), 1);
        assert_eq!(outcome.removed[0].cause, RemovalCause::Replaced);
        assert_eq!(outcome.added.len(), 1);
        assert!(table.by_key(&key(1)).is_none());
        assert_eq!(table.by_key(&key(77)).unwrap().id(), "adm_1");
    }

    #[test]
    fn conflicting_and_unusable_admissions_are_rejected_not_installed() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        let mut same_key = admission(2, "203.0.113.8", BindingPolicy::Exact);
        same_key.client_public_key = Some(WgKey(key(1)));
        let mut same_address = admission(3, "203.0.113.9", BindingPolicy::Exact);
        same_address.client_address = Some(Ipv4Addr::from(0x6440_0001));
        let mut direct = admission(4, "203.0.113.10", BindingPolicy::Exact);
        direct.mode = AccessMode::Direct;
        let mut expired = admission(5, "203.0.113.11", BindingPolicy::Exact);
        expired.expires_at = datetime!(2026-11-25 19:00 UTC);
        let mut no_address = admission(6, "203.0.113.12", BindingPolicy::Exact);
        no_address.client_address = None;
        let duplicate_id = admission(1, "203.0.113.13", BindingPolicy::Exact);
        let outcome = table.apply(
            &state(
                1,
                vec![
                    admission(1, "203.0.113.7", BindingPolicy::Exact),
                    same_key,
                    same_address,
                    direct,
                    expired,
                    no_address,
                    duplicate_id,
                ],
            ),
            now,
        );
        assert_eq!(table.len(), 1);
        assert_eq!(outcome.rejected.len(), 6, "{:?}", outcome.rejected);
        assert!(matches!(
            outcome.rejected[0],
            AdmissionError::DuplicateId { .. }
        ));
        assert_eq!(
            table.source_status(ip("203.0.113.8")),
            SourceStatus::Unknown
        );
        assert_eq!(
            table.source_status(ip("203.0.113.13")),
            SourceStatus::Unknown
        );
    }

    #[test]
    fn revoked_key_can_be_reused_in_the_same_version() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        table.apply(
            &state(1, vec![admission(1, "203.0.113.7", BindingPolicy::Exact)]),
            now,
        );
        let mut renewed = admission(1, "203.0.113.7", BindingPolicy::Exact);
        renewed.id = "adm_1_renewed".into();
        let outcome = table.apply(&state(2, vec![renewed]), now);
        assert_eq!(outcome.removed.len(), 1);
        assert_eq!(outcome.added.len(), 1);
        assert!(outcome.rejected.is_empty());
    }

    #[test]
    fn first_handshake_window_pins_or_closes() {
        let now = Instant::now();
        let mut table = AdmissionTable::new(Duration::from_secs(30));
        table.apply(
            &state(
                1,
                vec![
                    admission(1, "203.0.113.7", BindingPolicy::FirstHandshake),
                    admission(2, "203.0.113.7", BindingPolicy::FirstHandshake),
                ],
            ),
            now,
        );
        let a = table.by_id("adm_1").unwrap().peer();
        let b = table.by_id("adm_2").unwrap().peer();
        assert_eq!(
            table.source_status(ip("192.0.2.1")),
            SourceStatus::PinningWindowOpen
        );
        assert!(table.get(a).unwrap().admits_handshake(ip("192.0.2.1"), now));
        assert!(!table.get(a).unwrap().admits_session_packet(ip("192.0.2.1")));

        assert!(table.pin(a, ip("192.0.2.1"), now));
        assert!(!table.pin(a, ip("192.0.2.2"), now), "pins only once");
        assert_eq!(table.source_status(ip("192.0.2.1")), SourceStatus::Bound);
        let pinned = table.get(a).unwrap();
        assert_eq!(pinned.pinning(), Pinning::Pinned(ip("192.0.2.1")));
        assert!(!pinned.admits_handshake(ip("192.0.2.2"), now));
        assert!(pinned.admits_session_packet(ip("192.0.2.1")));

        let later = now + Duration::from_secs(31);
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(30)));
        assert!(table.expire(later).is_empty());
        assert_eq!(table.get(b).unwrap().pinning(), Pinning::Closed);
        assert_eq!(table.source_status(ip("192.0.2.9")), SourceStatus::Unknown);
        assert!(!table.pin(b, ip("192.0.2.9"), later));
        // The pinned one keeps working after the window.
        assert_eq!(table.source_status(ip("192.0.2.1")), SourceStatus::Bound);
    }

    #[test]
    fn expiry_removes_and_unindexes() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        let mut short = admission(1, "203.0.113.7", BindingPolicy::prefix(24, 56).unwrap());
        short.expires_at = datetime!(2026-11-25 20:01 UTC);
        table.apply(
            &state(
                1,
                vec![short, admission(2, "198.51.100.1", BindingPolicy::Exact)],
            ),
            now,
        );
        assert!(table.expire(now + Duration::from_secs(59)).is_empty());
        let gone = table.expire(now + Duration::from_secs(60));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id(), "adm_1");
        assert_eq!(
            table.source_status(ip("203.0.113.7")),
            SourceStatus::Unknown
        );
        assert!(table.by_key(&key(1)).is_none());
        assert!(table
            .by_client_address(Ipv4Addr::from(0x6440_0001))
            .is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn ten_thousand_admissions_all_found() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        let admissions: Vec<FeedAdmission> = (1..=10_000u32)
            .map(|n| {
                let source = Ipv4Addr::from(0xcb00_0000 + n).to_string();
                let binding = if n % 2 == 0 {
                    BindingPolicy::Exact
                } else {
                    BindingPolicy::prefix(24, 56).unwrap()
                };
                admission(n, &source, binding)
            })
            .collect();
        let outcome = table.apply(&state(1, admissions), now);
        assert_eq!(outcome.added.len(), 10_000);
        assert!(outcome.rejected.is_empty());
        assert_eq!(table.prefix_sources.len(), 1);
        for n in 1..=10_000u32 {
            let source = IpAddr::V4(Ipv4Addr::from(0xcb00_0000 + n));
            assert_eq!(table.source_status(source), SourceStatus::Bound);
            let adm = table.by_key(&key(n)).unwrap();
            assert_eq!(adm.id(), format!("adm_{n}"));
            assert_eq!(
                table
                    .by_client_address(Ipv4Addr::from(0x6440_0000 + n))
                    .unwrap()
                    .peer(),
                adm.peer()
            );
            assert_eq!(table.get(adm.peer()).unwrap().id(), adm.id());
        }
        assert_eq!(table.source_status(ip("203.1.0.1")), SourceStatus::Unknown);
    }

    #[test]
    fn slots_are_not_reused_at_once() {
        let now = Instant::now();
        let mut table = AdmissionTable::default();
        table.apply(
            &state(1, vec![admission(1, "203.0.113.7", BindingPolicy::Exact)]),
            now,
        );
        let first = table.by_id("adm_1").unwrap().peer();
        table.apply(
            &state(2, vec![admission(2, "203.0.113.7", BindingPolicy::Exact)]),
            now,
        );
        assert_ne!(table.by_id("adm_2").unwrap().peer(), first);
    }

    #[test]
    fn receiver_index_maps_back_to_peer() {
        let peer = PeerId(0x00ab_cdef);
        let session_index = (peer.tunnel_index() << 8) | 0x42;
        assert_eq!(PeerId::from_receiver_index(session_index), peer);
    }

    /// Whether two tables hold the same admissions (ids, keys, sources,
    /// tunnel addresses, deadlines).
    fn same_tables(a: &AdmissionTable, b: &AdmissionTable) {
        let view = |t: &AdmissionTable| {
            let mut v: Vec<(String, IpAddr, Ipv4Addr, Instant, [u8; 32])> = t
                .iter()
                .map(|x| {
                    (
                        x.id().to_string(),
                        x.source(),
                        x.client_address(),
                        x.deadline(),
                        *x.client_public_key().as_bytes(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(view(a), view(b));
        assert_eq!(a.len(), b.len());
        assert_eq!(a.version(), b.version());
    }

    #[test]
    fn a_diff_gives_what_the_whole_set_gives() {
        let now = Instant::now();
        let many: Vec<FeedAdmission> = (1..=50)
            .map(|n| admission(n, "203.0.113.7", BindingPolicy::Exact))
            .collect();
        let mut inc = AdmissionTable::default();
        inc.apply(&state(1, many.clone()), now);

        // Version 2: one revoked, one renewed, one replaced by a new key
        // under the same id, one new.
        let mut renewed = admission(2, "203.0.113.7", BindingPolicy::Exact);
        renewed.expires_at += time::Duration::minutes(30);
        let mut replaced = admission(3, "203.0.113.7", BindingPolicy::Exact);
        replaced.client_public_key = Some(WgKey(key(999)));
        let new = admission(60, "198.51.100.9", BindingPolicy::prefix(24, 56).unwrap());
        let changed = vec![renewed.clone(), replaced.clone(), new.clone()];
        let removed = vec!["adm_1".to_string()];
        let header = state(2, vec![]);
        let outcome = inc.apply(FeedChangeRef::diff(&header, &changed, &removed), now);
        assert_eq!(outcome.added.len(), 2, "{outcome:?}");
        assert_eq!(outcome.changed.len(), 1);
        assert_eq!(outcome.removed.len(), 2);

        let mut whole_set: Vec<FeedAdmission> = many
            .into_iter()
            .filter(|a| a.id != "adm_1" && a.id != "adm_2" && a.id != "adm_3")
            .collect();
        whole_set.extend(changed);
        let mut whole = AdmissionTable::default();
        whole.apply(&state(2, whole_set), now);
        same_tables(&inc, &whole);
        assert!(inc.by_id("adm_1").is_none());
        assert_eq!(inc.by_key(&key(999)).map(|a| a.id()), Some("adm_3"));

        // A key taken by a removal in the same diff is free for a new one.
        let mut heir = admission(70, "203.0.113.7", BindingPolicy::Exact);
        heir.client_public_key = Some(WgKey(key(4)));
        let outcome = inc.apply(
            FeedChangeRef::diff(&state(3, vec![]), &[heir], &["adm_4".to_string()]),
            now,
        );
        assert_eq!(outcome.added.len(), 1, "{outcome:?}");
        assert!(outcome.rejected.is_empty());
    }
}
