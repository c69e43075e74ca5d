//! What the kernel pre-filter should hold, and the fewest changes that get
//! it there. No kernel here: [`Desired::from_state`] turns the feed's
//! desired set into set elements, and [`Reconciler::plan`] compares them
//! with what was installed last and answers with [`Changes`], which the
//! kernel side (`filter::nft`) sends as one transaction.
//!
//! The table holds one set per kind (tunnel or direct), address family and
//! prefix length in use, because a lookup compares the masked source
//! address with the set (`ip saddr & 255.255.255.0 @t4_24`). Exact
//! bindings land in the /32 and /128 sets; `prefix:V4,V6` in the /V4 set
//! for IPv4 sources and the /V6 set for IPv6 ones.

use crate::admission::{admitted, source_network, Admitted};
use proto::api::AccessMode;
use proto::feed::{FeedAdmission, FeedState};
use proto::BindingPolicy;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Which traffic a set admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Datagrams to the gateway's UDP port (key: source network).
    Tunnel,
    /// TCP to a direct service's public port (key: source network, port).
    Direct,
}

/// One set of the filter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetId {
    pub kind: Kind,
    pub v6: bool,
    pub prefix: u8,
}

impl SetId {
    /// The set's name in the table, e.g. `t4_32` or `d6_64`.
    pub fn name(&self) -> String {
        format!(
            "{}{}_{}",
            match self.kind {
                Kind::Tunnel => 't',
                Kind::Direct => 'd',
            },
            if self.v6 { 6 } else { 4 },
            self.prefix
        )
    }

    /// The nft key type of the set.
    pub fn key_type(&self) -> &'static str {
        match (self.kind, self.v6) {
            (Kind::Tunnel, false) => "ipv4_addr",
            (Kind::Tunnel, true) => "ipv6_addr",
            (Kind::Direct, false) => "ipv4_addr . inet_service",
            (Kind::Direct, true) => "ipv6_addr . inet_service",
        }
    }

    /// The match that looks packets up in the set, in nft syntax.
    pub fn lookup(&self) -> String {
        let host = if self.v6 { 128 } else { 32 };
        let source = if self.v6 { "ip6 saddr" } else { "ip saddr" };
        let masked = if self.prefix >= host {
            source.to_string()
        } else {
            let net = ipnet::IpNet::new(
                if self.v6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                },
                self.prefix,
            )
            .expect("prefix lengths are checked before a set is made");
            format!("{source} & {}", net.netmask())
        };
        match self.kind {
            Kind::Tunnel => format!("{masked} @{}", self.name()),
            Kind::Direct => format!("{masked} . tcp dport @{}", self.name()),
        }
    }
}

/// One element: a masked source network, and for direct sets the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub set: SetId,
    /// The network address (already masked to `set.prefix`).
    pub net: IpAddr,
    /// The public TCP port (direct sets); 0 for tunnel sets.
    pub port: u16,
}

impl Element {
    /// The key as the kernel stores it: the address in network order, and
    /// for direct sets the port, big-endian, padded to 4 bytes (fields of
    /// a concatenated key each take whole 32-bit registers).
    pub fn key(&self) -> Vec<u8> {
        let mut key = match self.net {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        if self.set.kind == Kind::Direct {
            key.extend_from_slice(&self.port.to_be_bytes());
            key.extend_from_slice(&[0, 0]);
        }
        key
    }
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.set.prefix)?;
        if self.set.kind == Kind::Direct {
            write!(f, " port {}", self.port)?;
        }
        Ok(())
    }
}

/// The elements the kernel should hold now, each with the instant it
/// stops admitting, and until when the UDP port must stay open to every
/// source (see [`Desired::open_until`]).
///
/// It is kept current admission by admission: [`Desired::from_state`]
/// builds it from a whole feed state, and [`Desired::apply_diff`] takes in
/// only what a feed diff changed, returning the elements it touched, so a
/// change costs the same with ten admissions or ten thousand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Each element with the latest deadline of the admissions holding it.
    pub elements: HashMap<Element, Instant>,
    /// While a first-handshake admission waits for its handshake its
    /// source is not known yet, so the UDP port is open to everyone (the
    /// user-space filter alone then guards it) until the earliest of its
    /// expiry and the end of its pinning window.
    pub open_until: Option<Instant>,
    /// First-handshake admissions still waiting for their handshake: id
    /// to (expiry, end of the open port for it).
    pub waiting: HashMap<String, (Instant, Instant)>,
    /// What each admission holds: its elements and its deadline.
    by_id: HashMap<String, (Vec<Element>, Instant)>,
    /// The deadlines of the admissions holding each element (usually one;
    /// several for players behind one NAT).
    holders: HashMap<Element, Vec<Instant>>,
    /// The gateway is stopping ([`Desired::close_open`]): the port stays
    /// closed to everyone whatever comes after.
    closed: bool,
}

/// What the pre-filter must know besides the feed: where first-handshake
/// admissions were pinned, and when it first saw each of them.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    pinned: HashMap<String, IpAddr>,
    first_seen: HashMap<String, Instant>,
}

impl Pins {
    /// The data path pinned admission `id` to `source`.
    pub fn pin(&mut self, id: &str, source: IpAddr) {
        self.pinned.insert(id.to_string(), source);
    }

    fn forget(&mut self, id: &str) {
        self.pinned.remove(id);
        self.first_seen.remove(id);
    }

    /// Forgets admissions that left the desired set.
    fn retain(&mut self, live: &BTreeSet<&str>) {
        if self.pinned.is_empty() && self.first_seen.is_empty() {
            return;
        }
        self.pinned.retain(|id, _| live.contains(id.as_str()));
        self.first_seen.retain(|id, _| live.contains(id.as_str()));
    }
}

/// A reason the pre-filter cannot represent an admission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("admission {id} is for direct service '{service}', which this gateway does not offer")]
    UnknownDirectService { id: String, service: String },
}

/// What turns feed admissions into elements besides the admissions.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Each direct service's public TCP port, by name.
    pub direct_ports: &'a HashMap<String, u16>,
    /// The data path's first-handshake pinning window.
    pub pinning_window: Duration,
}

impl Desired {
    /// The elements for `state` as of `now` (the instant the state was
    /// received).
    ///
    /// Admissions the pre-filter cannot represent are returned as errors
    /// and left out, like the data path leaves out what it rejects.
    pub fn from_state(
        state: &FeedState,
        now: Instant,
        cx: Context<'_>,
        pins: &mut Pins,
    ) -> (Desired, Vec<PlanError>) {
        let mut desired = Desired::default();
        let mut errors = Vec::new();
        let live: BTreeSet<&str> = state.admissions.iter().map(|a| a.id.as_str()).collect();
        pins.retain(&live);
        let mut touched = Vec::new();
        for a in &state.admissions {
            desired.upsert(
                a,
                state.server_time,
                now,
                cx,
                pins,
                &mut errors,
                &mut touched,
            );
        }
        desired.reopen();
        (desired, errors)
    }

    /// Takes in a feed diff received at `now`: `changed` admissions (new,
    /// or replacing what is held under their id) and `removed` ids.
    /// Returns the elements whose deadline changed, appeared or went.
    pub fn apply_diff(
        &mut self,
        changed: &[FeedAdmission],
        removed: &[String],
        server_time: OffsetDateTime,
        now: Instant,
        cx: Context<'_>,
        pins: &mut Pins,
    ) -> (Vec<Element>, Vec<PlanError>) {
        let mut touched = Vec::new();
        let mut errors = Vec::new();
        for id in removed {
            self.remove(id, &mut touched);
            pins.forget(id);
        }
        for a in changed {
            self.upsert(a, server_time, now, cx, pins, &mut errors, &mut touched);
        }
        self.reopen();
        (touched, errors)
    }

    /// Closes the port to everyone for good (the gateway is stopping): no
    /// first-handshake admission waits any more, and none will, whatever
    /// is applied or pinned afterwards. An update already under way when
    /// the gateway stops could otherwise open the port again after it was
    /// closed, and with no gateway listening the kernel would answer
    /// unadmitted sources with ICMP port-unreachable.
    pub fn close_open(&mut self) {
        self.closed = true;
        self.reopen();
    }

    /// Replaces what is desired with `next` (built by
    /// [`Desired::from_state`]), keeping the port closed if it was closed
    /// for good.
    pub fn replace(&mut self, next: Desired) {
        let closed = self.closed;
        *self = next;
        if closed {
            self.close_open();
        }
    }

    /// The data path pinned the waiting first-handshake admission `id` to
    /// `source`: admit that source exactly, and close the port if nothing
    /// else waits. Returns the element it added, or `None` if `id` was not
    /// waiting.
    pub fn pin(&mut self, id: &str, source: IpAddr) -> Option<Element> {
        let (deadline, _) = self.waiting.remove(id)?;
        let e = pinned(source);
        self.hold(e, deadline);
        self.by_id.insert(id.to_string(), (vec![e], deadline));
        self.reopen();
        Some(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn upsert(
        &mut self,
        a: &FeedAdmission,
        server_time: OffsetDateTime,
        now: Instant,
        cx: Context<'_>,
        pins: &mut Pins,
        errors: &mut Vec<PlanError>,
        touched: &mut Vec<Element>,
    ) {
        self.remove(&a.id, touched);
        let Some(Admitted { network, deadline }) = admitted(a, server_time, now) else {
            return;
        };
        let mut held = Vec::new();
        match (a.mode, network) {
            (AccessMode::Tunnel, None) => match pins.pinned.get(&a.id) {
                Some(&source) => held.push(pinned(source)),
                None => {
                    let seen = *pins.first_seen.entry(a.id.clone()).or_insert(now);
                    let until = deadline.min(seen + cx.pinning_window);
                    if until > now {
                        self.waiting.insert(a.id.clone(), (deadline, until));
                    }
                }
            },
            (AccessMode::Tunnel, Some(net)) => {
                held.push(element(Kind::Tunnel, net, 0));
            }
            // The control plane refuses direct mode under first-handshake;
            // a feed that says otherwise is not trusted to open anything.
            (AccessMode::Direct, None) => {}
            (AccessMode::Direct, Some(net)) => {
                for service in &a.services {
                    match cx.direct_ports.get(service) {
                        Some(&port) => held.push(element(Kind::Direct, net, port)),
                        None => errors.push(PlanError::UnknownDirectService {
                            id: a.id.clone(),
                            service: service.clone(),
                        }),
                    }
                }
            }
        }
        for &e in &held {
            self.hold(e, deadline);
            touched.push(e);
        }
        if !held.is_empty() {
            self.by_id.insert(a.id.clone(), (held, deadline));
        }
    }

    fn remove(&mut self, id: &str, touched: &mut Vec<Element>) {
        self.waiting.remove(id);
        let Some((held, deadline)) = self.by_id.remove(id) else {
            return;
        };
        for e in held {
            touched.push(e);
            let Some(deadlines) = self.holders.get_mut(&e) else {
                continue;
            };
            if let Some(i) = deadlines.iter().position(|&d| d == deadline) {
                deadlines.swap_remove(i);
            }
            match deadlines.iter().max() {
                Some(&latest) => {
                    self.elements.insert(e, latest);
                }
                None => {
                    self.holders.remove(&e);
                    self.elements.remove(&e);
                }
            }
        }
    }

    fn hold(&mut self, e: Element, deadline: Instant) {
        self.holders.entry(e).or_default().push(deadline);
        let d = self.elements.entry(e).or_insert(deadline);
        *d = (*d).max(deadline);
    }

    fn reopen(&mut self) {
        if self.closed {
            self.waiting.clear();
        }
        self.open_until = self.waiting.values().map(|&(_, until)| until).max();
    }
}

/// The element for source network `net` ([`source_network`]: an IPv4
/// client written as ::ffff:a.b.c.d is in the IPv4 sets).
fn element(kind: Kind, net: ipnet::IpNet, port: u16) -> Element {
    Element {
        set: SetId {
            kind,
            v6: net.network().is_ipv6(),
            prefix: net.prefix_len(),
        },
        net: net.network(),
        port,
    }
}

/// The tunnel element of a first-handshake admission pinned to `source`.
fn pinned(source: IpAddr) -> Element {
    element(
        Kind::Tunnel,
        source_network(BindingPolicy::Exact, source),
        0,
    )
}

/// One transaction for the kernel. Applied in this order: create the new
/// sets (with their lookup rules), flush the listed sets, delete, add, then
/// set or clear the open port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub new_sets: Vec<SetId>,
    /// Sets to empty first (a rebuild after start or after an error).
    pub flush: Vec<SetId>,
    pub delete: Vec<Element>,
    /// Elements to add, each with its timeout from now.
    pub add: Vec<(Element, Duration)>,
    pub open: OpenChange,
    /// The elements compared (`None`: all of them).
    pub touched: Option<Vec<Element>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OpenChange {
    #[default]
    Keep,
    /// Open the UDP port to everyone for this long.
    Open(Duration),
    Close,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.new_sets.is_empty()
            && self.flush.is_empty()
            && self.delete.is_empty()
            && self.add.is_empty()
            && self.open == OpenChange::Keep
    }
}

/// Deadlines that differ by less than this are the same: each feed answer
/// recomputes them from its own clock reading, so they wobble by a few
/// milliseconds, while a renewal moves them by seconds at least.
const SLACK: Duration = Duration::from_millis(500);

fn near(a: Instant, b: Instant) -> bool {
    a.max(b) - a.min(b) < SLACK
}

/// What the kernel holds, as far as this gateway knows; it plans the
/// minimal changes to reach a desired state.
#[derive(Debug, Clone, Default)]
pub struct Reconciler {
    installed: HashMap<Element, Instant>,
    sets: BTreeSet<SetId>,
    open_until: Option<Instant>,
    /// Whether the kernel state is unknown (start, or a failed
    /// transaction): the next plan flushes every set and adds everything.
    dirty: bool,
}

impl Reconciler {
    /// A reconciler for a table that was just created empty.
    pub fn new() -> Reconciler {
        Reconciler::default()
    }

    /// The sets that exist in the table.
    pub fn sets(&self) -> &BTreeSet<SetId> {
        &self.sets
    }

    /// How many elements the kernel holds (as far as is known).
    pub fn len(&self) -> usize {
        self.installed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }

    /// Whether the UDP port is open to everyone at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|u| u > now)
    }

    /// The changes that turn what is installed into `desired` at `now`,
    /// comparing every element.
    pub fn plan(&self, desired: &Desired, now: Instant) -> Changes {
        self.plan_scoped(desired, None, now)
    }

    /// Like [`Reconciler::plan`], comparing only the `touched` elements (a
    /// feed diff's, from [`Desired::apply_diff`]); everything else is
    /// known to be as installed. After a failure it compares everything.
    pub fn plan_touched(&self, desired: &Desired, touched: &[Element], now: Instant) -> Changes {
        self.plan_scoped(desired, Some(touched), now)
    }

    fn plan_scoped(&self, desired: &Desired, touched: Option<&[Element]>, now: Instant) -> Changes {
        let touched: Option<BTreeSet<Element>> = match touched {
            Some(t) if !self.dirty => Some(t.iter().copied().collect()),
            _ => None,
        };
        let mut ch = Changes::default();
        let wanted_sets: BTreeSet<SetId> = match &touched {
            None => desired.elements.keys().map(|e| e.set).collect(),
            Some(t) => t
                .iter()
                .filter(|e| desired.elements.contains_key(e))
                .map(|e| e.set)
                .collect(),
        };
        ch.new_sets = wanted_sets.difference(&self.sets).copied().collect();
        if self.dirty {
            ch.flush = self.sets.iter().copied().collect();
        }
        let timeout = |d: Instant| d.saturating_duration_since(now);
        let mut add: Vec<(Element, Duration)> = Vec::new();
        let candidates: Box<dyn Iterator<Item = (Element, Instant)> + '_> = match &touched {
            None => Box::new(desired.elements.iter().map(|(&e, &d)| (e, d))),
            Some(t) => Box::new(
                t.iter()
                    .filter_map(|e| desired.elements.get(e).map(|&d| (*e, d))),
            ),
        };
        for (e, deadline) in candidates {
            if deadline <= now {
                continue;
            }
            match self.installed.get(&e) {
                _ if self.dirty => add.push((e, timeout(deadline))),
                None => add.push((e, timeout(deadline))),
                Some(&held) if near(held, deadline) => {}
                Some(&held) => {
                    // A renewal (or a shortening): replace the element so
                    // that it carries the new timeout (re-adding an
                    // existing element does not move its timeout on every
                    // kernel). One the kernel has just timed out makes the
                    // delete fail, and the retry rebuilds every set.
                    if held > now {
                        ch.delete.push(e);
                    }
                    add.push((e, timeout(deadline)));
                }
            }
        }
        if !self.dirty {
            // Revoked or expired: deleted at once, unless its timeout has
            // passed (the kernel has dropped it already).
            let gone = |e: &Element, held: Instant| !desired.elements.contains_key(e) && held > now;
            match &touched {
                None => ch.delete.extend(
                    self.installed
                        .iter()
                        .filter(|(e, &held)| gone(e, held))
                        .map(|(&e, _)| e),
                ),
                Some(t) => ch.delete.extend(
                    t.iter()
                        .filter(|e| self.installed.get(e).is_some_and(|&held| gone(e, held))),
                ),
            }
        }
        add.sort();
        ch.add = add;
        ch.delete.sort();
        let want_open = desired.open_until.filter(|&u| u > now);
        ch.open = match (want_open, self.open_until.filter(|&u| u > now)) {
            (Some(w), Some(h)) if !self.dirty && near(w, h) => OpenChange::Keep,
            (Some(w), _) => OpenChange::Open(timeout(w)),
            (None, Some(_)) => OpenChange::Close,
            (None, None) if self.dirty => OpenChange::Close,
            (None, None) => OpenChange::Keep,
        };
        ch.touched = touched.map(|t| t.into_iter().collect());
        ch
    }

    /// Records that `changes` (planned for `desired`) reached the kernel;
    /// also to be called when the plan was empty, so that elements left to
    /// time out are forgotten.
    pub fn committed(&mut self, desired: &Desired, changes: &Changes, now: Instant) {
        self.sets.extend(changes.new_sets.iter().copied());
        match &changes.touched {
            None => {
                self.installed
                    .retain(|e, _| desired.elements.contains_key(e));
                for (&e, &d) in &desired.elements {
                    self.record(e, Some(d), now);
                }
            }
            Some(touched) => {
                for e in touched {
                    self.record(*e, desired.elements.get(e).copied(), now);
                }
            }
        }
        self.open_until = desired.open_until.filter(|&u| u > now);
        self.dirty = false;
    }

    /// Records what the kernel holds for `e` after a commit: nothing, or
    /// an element timing out at `deadline`. Within the slack the kernel
    /// kept the timeout it had, and so does the book.
    fn record(&mut self, e: Element, deadline: Option<Instant>, now: Instant) {
        match deadline {
            Some(d) if d > now => {
                let held = self.installed.entry(e).or_insert(d);
                if !near(*held, d) {
                    *held = d;
                }
            }
            _ => {
                self.installed.remove(&e);
            }
        }
    }

    /// Sets that `nft` created, recorded at once: a transaction that then
    /// fails does not remove them.
    pub fn sets_created(&mut self, sets: &[SetId]) {
        self.sets.extend(sets.iter().copied());
    }

    /// The table was created again, empty, with these sets: nothing is
    /// installed, nothing is open.
    pub fn reset(&mut self, sets: BTreeSet<SetId>) {
        self.installed.clear();
        self.sets = sets;
        self.open_until = None;
        self.dirty = false;
    }

    /// The kernel refused a transaction, so nothing of it happened and
    /// what the kernel holds is no longer known for sure: the next plan
    /// flushes every set and adds everything again.
    pub fn failed(&mut self) {
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::feed::FeedAdmission;
    use proto::WgKey;
    use testkit::feed;
    use time::macros::datetime;

    const WINDOW: Duration = Duration::from_secs(30);

    fn adm(id: &str, source: &str, binding: BindingPolicy, minutes: i64) -> FeedAdmission {
        FeedAdmission {
            binding,
            expires_at: feed::SERVER_TIME + time::Duration::minutes(minutes),
            ..feed::tunnel(id, WgKey([id.len() as u8; 32]), feed::ip(source))
        }
    }

    fn direct(id: &str, source: &str, binding: BindingPolicy, services: &[&str]) -> FeedAdmission {
        FeedAdmission {
            binding,
            services: services.iter().map(|s| s.to_string()).collect(),
            ..feed::direct(id, feed::ip(source))
        }
    }

    fn state(admissions: Vec<FeedAdmission>) -> FeedState {
        feed::state(1, admissions)
    }

    fn ports() -> HashMap<String, u16> {
        HashMap::from([("plex".to_string(), 32400), ("jf".to_string(), 8096)])
    }

    fn cx(ports: &HashMap<String, u16>) -> Context<'_> {
        Context {
            direct_ports: ports,
            pinning_window: WINDOW,
        }
    }

    fn desired(s: &FeedState, now: Instant, pins: &mut Pins) -> Desired {
        let ports = ports();
        let (d, errors) = Desired::from_state(s, now, cx(&ports), pins);
        assert!(errors.is_empty(), "{errors:?}");
        d
    }

    /// A reconciler that has installed `admissions` at `now`, with the
    /// desired state it installed.
    fn installed(admissions: Vec<FeedAdmission>, now: Instant) -> (Reconciler, Desired) {
        let mut r = Reconciler::new();
        let d = desired(&state(admissions), now, &mut Pins::default());
        let ch = r.plan(&d, now);
        r.committed(&d, &ch, now);
        (r, d)
    }

    fn names(elements: impl IntoIterator<Item = Element>) -> Vec<String> {
        let mut v: Vec<String> = elements.into_iter().map(|e| e.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn bindings_become_masked_elements_in_per_length_sets() {
        let now = Instant::now();
        let s = state(vec![
            adm("a", "203.0.113.7", BindingPolicy::Exact, 60),
            adm(
                "b",
                "198.51.100.77",
                BindingPolicy::prefix(24, 56).unwrap(),
                60,
            ),
            adm(
                "c",
                "2001:db8:1:2:3::9",
                BindingPolicy::prefix(32, 64).unwrap(),
                60,
            ),
            // One server's `prefix:24,56`: each family gets its own length.
            adm(
                "e",
                "2001:db8:7:8::1",
                BindingPolicy::prefix(24, 56).unwrap(),
                60,
            ),
            direct("d", "192.0.2.44", BindingPolicy::Exact, &["plex", "jf"]),
            direct(
                "f",
                "2001:db8:9:a::1",
                BindingPolicy::prefix(24, 56).unwrap(),
                &["plex"],
            ),
        ]);
        let d = desired(&s, now, &mut Pins::default());
        assert_eq!(
            names(d.elements.keys().copied()),
            [
                "192.0.2.44/32 port 32400",
                "192.0.2.44/32 port 8096",
                "198.51.100.0/24",
                "2001:db8:1:2::/64",
                "2001:db8:7::/56",
                "2001:db8:9::/56 port 32400",
                "203.0.113.7/32"
            ]
        );
        let sets: BTreeSet<String> = d.elements.keys().map(|e| e.set.name()).collect();
        assert_eq!(
            sets.into_iter().collect::<Vec<_>>(),
            ["d4_32", "d6_56", "t4_24", "t4_32", "t6_56", "t6_64"]
        );
        for deadline in d.elements.values() {
            assert_eq!(*deadline, now + Duration::from_secs(3600));
        }
        assert_eq!(d.open_until, None);
    }

    #[test]
    fn keys_are_laid_out_as_the_kernel_compares_them() {
        let now = Instant::now();
        let s = state(vec![
            adm("a", "203.0.113.7", BindingPolicy::Exact, 60),
            direct("d", "2001:db8::5", BindingPolicy::Exact, &["plex"]),
        ]);
        let d = desired(&s, now, &mut Pins::default());
        let mut keys: Vec<Vec<u8>> = d.elements.keys().map(|e| e.key()).collect();
        keys.sort_by_key(|k| k.len());
        assert_eq!(keys[0], [203, 0, 113, 7]);
        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend([0; 11]);
        v6.push(5);
        v6.extend([0x7e, 0x90, 0, 0]);
        assert_eq!(keys[1], v6);
    }

    #[test]
    fn lookups_mask_the_source_like_the_binding() {
        let set = |kind, v6, prefix| SetId { kind, v6, prefix };
        assert_eq!(set(Kind::Tunnel, false, 32).lookup(), "ip saddr @t4_32");
        assert_eq!(
            set(Kind::Tunnel, false, 24).lookup(),
            "ip saddr & 255.255.255.0 @t4_24"
        );
        assert_eq!(
            set(Kind::Tunnel, true, 64).lookup(),
            "ip6 saddr & ffff:ffff:ffff:ffff:: @t6_64"
        );
        assert_eq!(
            set(Kind::Direct, false, 32).lookup(),
            "ip saddr . tcp dport @d4_32"
        );
        assert_eq!(
            set(Kind::Direct, true, 128).key_type(),
            "ipv6_addr . inet_service"
        );
    }

    #[test]
    fn the_first_plan_adds_everything_and_then_nothing_changes() {
        let now = Instant::now();
        let mut r = Reconciler::new();
        let s = state(vec![
            adm("a", "203.0.113.7", BindingPolicy::Exact, 60),
            adm("b", "203.0.113.8", BindingPolicy::Exact, 60),
        ]);
        let d = desired(&s, now, &mut Pins::default());
        let ch = r.plan(&d, now);
        assert_eq!(ch.new_sets.len(), 1);
        assert_eq!(ch.add.len(), 2);
        assert!(ch.delete.is_empty() && ch.flush.is_empty());
        assert_eq!(ch.open, OpenChange::Keep);
        r.committed(&d, &ch, now);
        // The same state a little later (deadlines recomputed from a new
        // clock reading) needs nothing.
        let later = now + Duration::from_millis(40);
        let mut s2 = s.clone();
        s2.server_time += time::Duration::milliseconds(40);
        let d2 = desired(&s2, later, &mut Pins::default());
        assert!(r.plan(&d2, later).is_empty());
    }

    #[test]
    fn one_new_admission_is_one_add_and_a_revocation_one_delete() {
        let now = Instant::now();
        let mut r = Reconciler::new();
        let mut pins = Pins::default();
        let many: Vec<FeedAdmission> = (0..200)
            .map(|i| {
                adm(
                    &format!("a{i}"),
                    &format!("198.51.100.{i}"),
                    BindingPolicy::Exact,
                    60,
                )
            })
            .collect();
        let d = desired(&state(many.clone()), now, &mut pins);
        let ch = r.plan(&d, now);
        r.committed(&d, &ch, now);

        let mut more = many.clone();
        more.push(adm("new", "203.0.113.9", BindingPolicy::Exact, 60));
        let d = desired(&state(more.clone()), now, &mut pins);
        let ch = r.plan(&d, now);
        assert_eq!(names(ch.add.iter().map(|(e, _)| *e)), ["203.0.113.9/32"]);
        assert!(ch.delete.is_empty() && ch.new_sets.is_empty());
        r.committed(&d, &ch, now);

        more.retain(|a| a.id != "a7");
        let d = desired(&state(more), now, &mut pins);
        let ch = r.plan(&d, now);
        assert_eq!(names(ch.delete.iter().copied()), ["198.51.100.7/32"]);
        assert!(ch.add.is_empty());
    }

    #[test]
    fn a_renewal_replaces_the_element_with_the_new_timeout() {
        let now = Instant::now();
        let (r, _) = installed(vec![adm("a", "203.0.113.7", BindingPolicy::Exact, 10)], now);
        let d = desired(
            &state(vec![adm("a", "203.0.113.7", BindingPolicy::Exact, 20)]),
            now,
            &mut Pins::default(),
        );
        let ch = r.plan(&d, now);
        assert_eq!(ch.delete.len(), 1);
        assert_eq!(ch.add, vec![(ch.delete[0], Duration::from_secs(1200))]);
    }

    #[test]
    fn shared_sources_are_one_element_that_lives_as_long_as_the_longest() {
        let now = Instant::now();
        let mut r = Reconciler::new();
        let mut pins = Pins::default();
        // Two clients behind one NAT, and a prefix admission covering a
        // third: the /24 and the /32 are different elements.
        let two = vec![
            adm("a", "203.0.113.7", BindingPolicy::Exact, 10),
            adm("b", "203.0.113.7", BindingPolicy::Exact, 30),
            adm(
                "c",
                "203.0.113.99",
                BindingPolicy::prefix(24, 56).unwrap(),
                30,
            ),
        ];
        let d = desired(&state(two.clone()), now, &mut pins);
        assert_eq!(d.elements.len(), 2);
        let ch = r.plan(&d, now);
        let timeouts: Vec<Duration> = ch.add.iter().map(|(_, t)| *t).collect();
        assert_eq!(
            timeouts,
            [Duration::from_secs(1800), Duration::from_secs(1800)]
        );
        r.committed(&d, &ch, now);
        // Revoking one of the two keeps the shared element as it is.
        let d = desired(&state(two[1..].to_vec()), now, &mut pins);
        assert!(r.plan(&d, now).is_empty());
    }

    #[test]
    fn elements_past_their_timeout_are_left_to_the_kernel() {
        let now = Instant::now();
        let (mut r, _) = installed(vec![adm("a", "203.0.113.7", BindingPolicy::Exact, 1)], now);
        // Revoked just before its timeout: still deleted.
        let ch = r.plan(&Desired::default(), now + Duration::from_millis(59_500));
        assert_eq!(ch.delete.len(), 1);
        // Past its timeout the kernel has dropped it: nothing to delete,
        // and the book forgets it.
        let after = now + Duration::from_millis(60_500);
        let ch = r.plan(&Desired::default(), after);
        assert!(ch.is_empty(), "{ch:?}");
        r.committed(&Desired::default(), &ch, after);
        assert!(r.is_empty());
        // A renewal of an element still held replaces it.
        let (r, _) = installed(vec![adm("a", "203.0.113.7", BindingPolicy::Exact, 1)], now);
        let renewed = desired(
            &state(vec![adm("a", "203.0.113.7", BindingPolicy::Exact, 2)]),
            now,
            &mut Pins::default(),
        );
        let ch = r.plan(&renewed, now + Duration::from_millis(59_900));
        assert_eq!((ch.delete.len(), ch.add.len()), (1, 1));
    }

    #[test]
    fn after_a_failure_the_next_plan_rebuilds_every_set() {
        let now = Instant::now();
        let (mut r, d) = installed(vec![adm("a", "203.0.113.7", BindingPolicy::Exact, 10)], now);
        r.failed();
        let ch = r.plan(&d, now);
        assert_eq!(ch.flush.len(), 1);
        assert_eq!(ch.add.len(), 1);
        assert!(ch.delete.is_empty() && ch.new_sets.is_empty());
        assert_eq!(ch.open, OpenChange::Close);
        r.committed(&d, &ch, now);
        assert!(r.plan(&d, now).is_empty());
    }

    #[test]
    fn first_handshake_opens_the_port_until_pinned_or_the_window_ends() {
        let now = Instant::now();
        let mut r = Reconciler::new();
        let mut pins = Pins::default();
        let s = state(vec![adm(
            "fh",
            "203.0.113.7",
            BindingPolicy::FirstHandshake,
            60,
        )]);
        let d = desired(&s, now, &mut pins);
        assert!(d.elements.is_empty());
        assert_eq!(d.open_until, Some(now + WINDOW));
        let ch = r.plan(&d, now);
        assert_eq!(ch.open, OpenChange::Open(WINDOW));
        r.committed(&d, &ch, now);
        assert!(r.is_open(now));

        // The window counts from when the admission was first seen, not
        // from each feed answer.
        let later = now + Duration::from_secs(10);
        let d = desired(&s, later, &mut pins);
        assert_eq!(d.open_until, Some(now + WINDOW));
        assert!(r.plan(&d, later).is_empty());

        // Pinned: the pinned source becomes an exact element, and the
        // port closes; pinning the computed state gives the same as
        // computing it again.
        let mut pinned_in_place = d.clone();
        assert!(pinned_in_place
            .pin("fh", "192.0.2.50".parse().unwrap())
            .is_some());
        assert!(pinned_in_place
            .pin("fh", "192.0.2.50".parse().unwrap())
            .is_none());
        pins.pin("fh", "192.0.2.50".parse().unwrap());
        let d = desired(&s, later, &mut pins);
        assert_eq!(d, pinned_in_place);
        let ch = r.plan(&d, later);
        assert_eq!(names(ch.add.iter().map(|(e, _)| *e)), ["192.0.2.50/32"]);
        assert_eq!(ch.open, OpenChange::Close);

        // Never pinned: after the window the port is closed again.
        let mut unpinned = Pins::default();
        let d = desired(&s, now, &mut unpinned);
        let d_after = desired(&s, now + WINDOW + Duration::from_secs(1), &mut unpinned);
        assert!(d.open_until.is_some());
        assert_eq!(d_after.open_until, None);
    }

    #[test]
    fn once_closed_for_good_nothing_opens_the_port_again() {
        let now = Instant::now();
        let ports = ports();
        let fh = |id| adm(id, "203.0.113.7", BindingPolicy::FirstHandshake, 60);
        let exact = adm("x", "192.0.2.9", BindingPolicy::Exact, 60);
        let mut pins = Pins::default();
        let add_fh3 = |d: &mut Desired, pins: &mut Pins| {
            let server_time = datetime!(2026-11-25 20:00 UTC);
            d.apply_diff(&[fh("fh3")], &[], server_time, now, cx(&ports), pins);
        };
        let (open, _) = Desired::from_state(&state(vec![fh("fh1")]), now, cx(&ports), &mut pins);
        assert_eq!(open.open_until, Some(now + WINDOW));
        let (mut r, _) = installed(vec![fh("fh1")], now);
        assert!(r.is_open(now));

        let mut d = open.clone();
        d.close_open();
        assert!(d.waiting.is_empty());
        assert_eq!(d.open_until, None);
        let ch = r.plan(&d, now);
        assert_eq!(ch.open, OpenChange::Close);
        r.committed(&d, &ch, now);

        // A whole set that arrives afterwards, with a first-handshake
        // admission waiting: its other admissions still go in, the port
        // stays closed.
        let (next, _) = Desired::from_state(
            &state(vec![fh("fh2"), exact.clone()]),
            now,
            cx(&ports),
            &mut pins,
        );
        assert!(next.open_until.is_some(), "it would open");
        d.replace(next);
        assert_eq!(d.open_until, None);
        assert!(d.waiting.is_empty());
        assert_eq!(d.elements.len(), 1, "the exact admission is there");
        let ch = r.plan(&d, now);
        assert_eq!(ch.open, OpenChange::Keep);
        assert_eq!(ch.add.len(), 1);

        // A diff that adds one.
        add_fh3(&mut d, &mut pins);
        assert_eq!(d.open_until, None);
        assert!(d.waiting.is_empty());

        // A pin of an admission that was waiting before the close adds
        // nothing and opens nothing.
        assert_eq!(d.pin("fh1", "192.0.2.50".parse().unwrap()), None);
        assert_eq!(d.open_until, None);
        assert_eq!(r.plan(&d, now).open, OpenChange::Keep);

        // Without the close, the same diff opens the port: the test above
        // is not vacuous.
        let (mut control, _) =
            Desired::from_state(&state(vec![exact]), now, cx(&ports), &mut Pins::default());
        assert_eq!(control.open_until, None);
        add_fh3(&mut control, &mut Pins::default());
        assert!(control.open_until.is_some());
    }

    #[test]
    fn direct_admissions_need_a_known_service_and_never_first_handshake() {
        let now = Instant::now();
        let s = state(vec![
            direct(
                "d1",
                "192.0.2.9",
                BindingPolicy::prefix(24, 56).unwrap(),
                &["nope"],
            ),
            direct("d2", "192.0.2.9", BindingPolicy::FirstHandshake, &["plex"]),
        ]);
        let ports = ports();
        let (d, errors) = Desired::from_state(&s, now, cx(&ports), &mut Pins::default());
        assert!(d.elements.is_empty());
        assert_eq!(d.open_until, None);
        assert_eq!(
            errors,
            [PlanError::UnknownDirectService {
                id: "d1".into(),
                service: "nope".into()
            }]
        );
    }

    #[test]
    fn expired_admissions_are_left_out() {
        let now = Instant::now();
        let s = state(vec![adm("old", "203.0.113.7", BindingPolicy::Exact, 0)]);
        let d = desired(&s, now, &mut Pins::default());
        assert!(d.elements.is_empty());
    }

    /// Applies `diff` on top of `before` both ways: incrementally, and as
    /// the whole resulting state; both must agree, and so must a plan over
    /// the touched elements and a plan over everything.
    fn diff_agrees(
        before: Vec<FeedAdmission>,
        changed: Vec<FeedAdmission>,
        removed: &[&str],
    ) -> (Desired, Changes) {
        let now = Instant::now();
        let ports = ports();
        let mut pins = Pins::default();
        let (mut inc, _) = Desired::from_state(&state(before.clone()), now, cx(&ports), &mut pins);
        let mut r = Reconciler::new();
        let ch = r.plan(&inc, now);
        r.committed(&inc, &ch, now);

        let removed: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
        let (touched, errors) = inc.apply_diff(
            &changed,
            &removed,
            datetime!(2026-11-25 20:00 UTC),
            now,
            cx(&ports),
            &mut pins,
        );
        assert!(errors.is_empty());
        let mut after: Vec<FeedAdmission> = before
            .into_iter()
            .filter(|a| !removed.contains(&a.id) && !changed.iter().any(|c| c.id == a.id))
            .collect();
        after.extend(changed);
        let (whole, _) = Desired::from_state(&state(after), now, cx(&ports), &mut Pins::default());
        assert_eq!(inc.elements, whole.elements);
        assert_eq!(inc.open_until, whole.open_until);
        let scoped = r.plan_touched(&inc, &touched, now);
        let full = r.plan(&inc, now);
        assert_eq!(
            (&scoped.new_sets, &scoped.delete, &scoped.add, scoped.open),
            (&full.new_sets, &full.delete, &full.add, full.open)
        );
        r.committed(&inc, &scoped, now);
        assert!(r.plan(&inc, now).is_empty(), "the scoped commit left work");
        (inc, scoped)
    }

    #[test]
    fn a_diff_touches_only_what_it_changes_and_agrees_with_the_whole_state() {
        let many: Vec<FeedAdmission> = (0..500)
            .map(|i| {
                adm(
                    &format!("a{i}"),
                    &format!("198.51.100.{}", i % 250),
                    BindingPolicy::Exact,
                    60,
                )
            })
            .collect();
        // One new admission: one add.
        let (_, ch) = diff_agrees(
            many.clone(),
            vec![adm(
                "new",
                "203.0.113.9",
                BindingPolicy::prefix(24, 56).unwrap(),
                60,
            )],
            &[],
        );
        assert_eq!(names(ch.add.iter().map(|(e, _)| *e)), ["203.0.113.0/24"]);
        assert_eq!(ch.new_sets.len(), 1);
        assert_eq!(ch.touched.as_ref().map(Vec::len), Some(1));
        // A revocation of one of two admissions sharing a source keeps the
        // element; of the other too, deletes it.
        let (_, ch) = diff_agrees(many.clone(), vec![], &["a3"]);
        assert!(ch.is_empty(), "{ch:?}");
        let (_, ch) = diff_agrees(many.clone(), vec![], &["a3", "a253"]);
        assert_eq!(names(ch.delete.iter().copied()), ["198.51.100.3/32"]);
        // A renewal of one of the two sharing a source moves the element.
        let (_, ch) = diff_agrees(
            many.clone(),
            vec![adm("a7", "198.51.100.7", BindingPolicy::Exact, 120)],
            &[],
        );
        assert_eq!(ch.delete.len(), 1);
        assert_eq!(ch.add, vec![(ch.delete[0], Duration::from_secs(7200))]);
        // A moved source: one delete, one add.
        let (_, ch) = diff_agrees(
            many.clone(),
            vec![adm("a100", "192.0.2.100", BindingPolicy::Exact, 60)],
            &["a200"],
        );
        assert_eq!(names(ch.add.iter().map(|(e, _)| *e)), ["192.0.2.100/32"]);
        // 198.51.100.100 was held by a100 and a350; a200 held .200 with a450.
        assert!(ch.delete.is_empty());
        // Direct and first-handshake admissions through a diff.
        let (d, ch) = diff_agrees(
            many,
            vec![
                direct("d", "192.0.2.44", BindingPolicy::Exact, &["plex"]),
                adm("fh", "203.0.113.7", BindingPolicy::FirstHandshake, 60),
            ],
            &[],
        );
        assert_eq!(ch.open, OpenChange::Open(WINDOW));
        assert_eq!(
            names(ch.add.iter().map(|(e, _)| *e)),
            ["192.0.2.44/32 port 32400"]
        );
        assert!(d.waiting.contains_key("fh"));
    }
}
