//! The port mapping's decisions as a plain state machine: which protocol
//! to ask next, when to renew, when to check that the router still holds
//! the mapping, when to give up and try again later. No sockets and no
//! clock: the driver (the task `PortMap` runs) passes in `now` and each answer,
//! performs the [`Request`]s that come out, and sleeps until
//! [`Mapper::poll_timeout`].
//!
//! Life of a mapping:
//! - probing: PCP, then NAT-PMP, then UPnP IGD, first answer wins. A
//!   protocol that does not answer, or refuses, hands over to the next.
//!   When all fail, the state says why (nothing answered, or a router
//!   answered and refused) and the round is tried again after a backoff
//!   (30 s, doubling to 10 minutes).
//! - mapped: renewed at half the granted lifetime, and checked every
//!   `check_interval` (and at once when the router announces a change).
//!   For PCP and NAT-PMP a check is the same idempotent request as a
//!   renewal; its epoch (seconds since the router's mapping table was
//!   last reset) going back means the router forgot its mappings (a
//!   reboot, a restarted daemon), and the request just made maps again.
//!   For UPnP the driver looks the mapping up and adds it again when it
//!   is missing. A changed external address is reported at once.
//! - a renewal that goes unanswered is retried (5 s, doubling) until the
//!   lease ends; then the mapping counts as lost and probing starts over.
//!   A router that answers a renewal with a refusal has lost it for sure.
//! - shutdown: the held mappings are deleted.

use proto::backoff::Backoff;
use proto::reach::{MappingProtocol, MappingReport, MappingState};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The order protocols are tried in: PCP is NAT-PMP's successor and can
/// say more (its refusals have reasons); UPnP is the most widespread but
/// the heaviest (multicast discovery, then SOAP over HTTP).
pub const PROTOCOLS: [MappingProtocol; 3] = [
    MappingProtocol::Pcp,
    MappingProtocol::NatPmp,
    MappingProtocol::Upnp,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One local port to map (the same external port is asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub transport: Transport,
    pub port: u16,
}

/// What the router granted for one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub spec: PortSpec,
    pub external_port: u16,
    pub lifetime: Duration,
}

/// A successful answer for every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The router's external address.
    pub external_ip: IpAddr,
    pub leases: Vec<Lease>,
    /// PCP and NAT-PMP: the router's epoch (seconds since its mapping
    /// table started).
    pub epoch: Option<u32>,
    /// UPnP refresh: the mapping was missing and was added again.
    pub recreated: bool,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Granted(Grant),
    /// Nothing (or nothing that speaks the protocol) answered.
    NoAnswer(String),
    /// A router answered and refused.
    Refused(String),
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Map every port with `protocol`. `refresh`: the mapping is held
    /// already (renewal or check): keep its external port and, for PCP,
    /// its nonce.
    Map {
        protocol: MappingProtocol,
        ports: Vec<PortSpec>,
        lifetime: Duration,
        refresh: bool,
    },
    /// Delete these mappings (clean shutdown).
    Unmap {
        protocol: MappingProtocol,
        leases: Vec<Lease>,
    },
}

/// Something the rest of the gateway should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Mapped (first time, or again after a loss).
    Mapped {
        protocol: MappingProtocol,
        external: SocketAddr,
    },
    /// The router's external address (or the granted port) changed.
    ExternalChanged { from: SocketAddr, to: SocketAddr },
    /// The router had forgotten the mapping (reboot); it is mapped again.
    RouterForgot { protocol: MappingProtocol },
    /// The lease ended without a renewal, or the router refused one.
    Lost { reason: String },
    /// No protocol could map the port this round.
    Unavailable { state: MappingState, detail: String },
}

/// The timing of the machine.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The lifetime asked for (routers may grant less).
    pub lifetime: Duration,
    /// How often a held mapping is checked.
    pub check_interval: Duration,
    /// The first wait after a round where no protocol mapped the port.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// The first wait after an unanswered renewal.
    pub renew_retry: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lifetime: Duration::from_secs(7200),
            check_interval: Duration::from_secs(60),
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(600),
            renew_retry: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
struct Holding {
    protocol: MappingProtocol,
    grant: Grant,
    expires_at: Instant,
    renew_at: Instant,
    check_at: Instant,
    /// The epoch and when it was read, to tell a reboot.
    epoch: Option<(u32, Instant)>,
    failures: u32,
}

impl Holding {
    fn external(&self) -> SocketAddr {
        let port = self
            .grant
            .leases
            .first()
            .map(|l| l.external_port)
            .unwrap_or(0);
        SocketAddr::new(self.grant.external_ip, port)
    }
    fn lease(&self) -> Duration {
        self.grant
            .leases
            .iter()
            .map(|l| l.lifetime)
            .min()
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
enum Phase {
    /// Next probing round at `until`.
    Waiting {
        until: Instant,
    },
    /// Asking `PROTOCOLS[next]`.
    Probing {
        next: usize,
    },
    Mapped(Holding),
    /// Shutting down: delete what is held, then stop.
    Unmapping(Holding),
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Probe(MappingProtocol),
    Refresh,
    Unmap,
}

/// The port mapping of one gateway (its UDP port first, then its direct
/// TCP ports).
#[derive(Debug)]
pub struct Mapper {
    ports: Vec<PortSpec>,
    timing: Timing,
    phase: Phase,
    in_flight: Option<InFlight>,
    /// Refusals seen in the current probing round.
    refusals: Vec<(MappingProtocol, String)>,
    /// Why the last round failed, for the status.
    last: Option<(MappingState, Option<MappingProtocol>, String)>,
    /// The wait between failed rounds: `retry_min` doubling to
    /// `retry_max`, exact (one gateway asks one router; nobody to fall
    /// into lockstep with).
    backoff: Backoff,
    events: VecDeque<Event>,
    /// When the last announcement was acted on (see `announcement`).
    last_announcement: Option<Instant>,
}

/// Announcements acted on at most this often: they are unauthenticated
/// datagrams that anyone on the LAN can send with the router's address,
/// and each one costs a round of requests to the router.
pub const ANNOUNCEMENT_SPACING: Duration = Duration::from_secs(10);

/// The shortest renewal period, whatever lease the router grants: a
/// router granting a second would otherwise be asked twice a second.
pub const MIN_RENEWAL: Duration = Duration::from_secs(5);

impl Mapper {
    /// `ports[0]` is the gateway's UDP port: its external port is the
    /// endpoint reported.
    pub fn new(ports: Vec<PortSpec>, timing: Timing, now: Instant) -> Mapper {
        Mapper {
            ports,
            timing,
            phase: Phase::Waiting { until: now },
            in_flight: None,
            refusals: Vec::new(),
            last: None,
            backoff: Backoff::new(timing.retry_min, timing.retry_max),
            events: VecDeque::new(),
            last_announcement: None,
        }
    }

    /// The next request to perform, if one is due. At most one is in
    /// flight: the next comes after [`Mapper::handle`].
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Phase::Waiting { until } = self.phase {
            if now < until {
                return None;
            }
            self.refusals.clear();
            self.phase = Phase::Probing { next: 0 };
        }
        match &self.phase {
            Phase::Probing { next } => {
                let protocol = PROTOCOLS[*next];
                self.in_flight = Some(InFlight::Probe(protocol));
                Some(self.map(protocol, false))
            }
            Phase::Mapped(h) if now >= h.renew_at.min(h.check_at) => {
                let protocol = h.protocol;
                self.in_flight = Some(InFlight::Refresh);
                Some(self.map(protocol, true))
            }
            Phase::Unmapping(h) => {
                let req = Request::Unmap {
                    protocol: h.protocol,
                    leases: h.grant.leases.clone(),
                };
                self.in_flight = Some(InFlight::Unmap);
                Some(req)
            }
            _ => None,
        }
    }

    fn map(&self, protocol: MappingProtocol, refresh: bool) -> Request {
        Request::Map {
            protocol,
            ports: self.ports.clone(),
            lifetime: self.timing.lifetime,
            refresh,
        }
    }

    /// The answer to the request in flight.
    pub fn handle(&mut self, outcome: Outcome, now: Instant) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        match flight {
            InFlight::Probe(protocol) => self.probed(protocol, outcome, now),
            InFlight::Refresh => self.refreshed(outcome, now),
            InFlight::Unmap => self.phase = Phase::Stopped,
        }
    }

    fn probed(&mut self, protocol: MappingProtocol, outcome: Outcome, now: Instant) {
        let Phase::Probing { next } = self.phase else {
            return;
        };
        match outcome {
            Outcome::Granted(grant) => {
                let h = self.holding(protocol, grant, now);
                self.events.push_back(Event::Mapped {
                    protocol,
                    external: h.external(),
                });
                self.backoff.reset();
                self.last = None;
                self.phase = Phase::Mapped(h);
            }
            failed => {
                if let Outcome::Refused(why) = &failed {
                    self.refusals.push((protocol, why.clone()));
                }
                if next + 1 < PROTOCOLS.len() {
                    self.phase = Phase::Probing { next: next + 1 };
                    return;
                }
                // A refusal says more than silence: a router is there and
                // cannot map (no public address of its own, or disabled).
                let (state, proto, detail) = match self.refusals.first() {
                    Some((p, why)) => (MappingState::Refused, Some(*p), why.clone()),
                    None => (
                        MappingState::NoProtocol,
                        None,
                        "no answer to PCP, NAT-PMP or UPnP".to_string(),
                    ),
                };
                self.events.push_back(Event::Unavailable {
                    state,
                    detail: detail.clone(),
                });
                self.last = Some((state, proto, detail));
                // Exact doubling: this machine keeps no randomness.
                let wait = self.backoff.next_exact();
                self.phase = Phase::Waiting { until: now + wait };
            }
        }
    }

    fn refreshed(&mut self, outcome: Outcome, now: Instant) {
        let Phase::Mapped(h) = &mut self.phase else {
            return;
        };
        match outcome {
            Outcome::Granted(grant) => {
                let protocol = h.protocol;
                let before = h.external();
                let forgot = grant.recreated
                    || match (h.epoch, grant.epoch) {
                        // RFC 6886 3.6 / RFC 6887 8.5: the router's epoch
                        // must advance at least 7/8 as fast as ours (less
                        // 2 s of slack); less means its table was reset.
                        (Some((e0, t0)), Some(e)) => {
                            let elapsed = now.saturating_duration_since(t0).as_secs();
                            u64::from(e) + 2 < u64::from(e0) + elapsed * 7 / 8
                        }
                        _ => false,
                    };
                let fresh = self.holding(protocol, grant, now);
                if forgot {
                    self.events.push_back(Event::RouterForgot { protocol });
                }
                if fresh.external() != before {
                    self.events.push_back(Event::ExternalChanged {
                        from: before,
                        to: fresh.external(),
                    });
                }
                self.phase = Phase::Mapped(fresh);
            }
            Outcome::Refused(why) => {
                self.events.push_back(Event::Lost {
                    reason: format!("the router refused to renew the mapping: {why}"),
                });
                self.phase = Phase::Probing { next: 0 };
                self.refusals.clear();
            }
            Outcome::NoAnswer(why) => {
                if now >= h.expires_at {
                    self.events.push_back(Event::Lost {
                        reason: format!(
                            "the lease ended and the router did not answer its renewal ({why})"
                        ),
                    });
                    self.phase = Phase::Probing { next: 0 };
                    self.refusals.clear();
                    return;
                }
                let wait = self
                    .timing
                    .renew_retry
                    .saturating_mul(1 << h.failures.min(6))
                    .min(self.timing.check_interval);
                h.failures += 1;
                let at = (now + wait).min(h.expires_at);
                h.renew_at = at;
                h.check_at = at;
            }
        }
    }

    fn holding(&self, protocol: MappingProtocol, grant: Grant, now: Instant) -> Holding {
        let lease = grant
            .leases
            .iter()
            .map(|l| l.lifetime)
            .min()
            .unwrap_or(self.timing.lifetime);
        // A router granting no lifetime (UPnP "permanent") is still
        // renewed as if it granted what was asked.
        let lease = if lease.is_zero() {
            self.timing.lifetime
        } else {
            lease
        };
        Holding {
            protocol,
            epoch: grant.epoch.map(|e| (e, now)),
            expires_at: now + lease,
            renew_at: now + (lease / 2).max(MIN_RENEWAL),
            check_at: now + self.timing.check_interval,
            grant,
            failures: 0,
        }
    }

    /// The router announced a change (PCP ANNOUNCE, NAT-PMP address
    /// notice): check at once, or probe at once if nothing is held.
    pub fn announcement(&mut self, now: Instant) {
        if self
            .last_announcement
            .is_some_and(|t| now.saturating_duration_since(t) < ANNOUNCEMENT_SPACING)
        {
            return;
        }
        self.last_announcement = Some(now);
        match &mut self.phase {
            Phase::Mapped(h) => h.check_at = now,
            Phase::Waiting { until } => *until = now,
            _ => {}
        }
    }

    /// Stops: the mapping held is deleted (a request in flight is
    /// abandoned by the driver). Nothing held: stopped at once.
    pub fn shutdown(&mut self) {
        self.in_flight = None;
        self.phase = match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Mapped(h) => Phase::Unmapping(h),
            _ => Phase::Stopped,
        };
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped)
    }

    /// When the machine next wants to act (nothing while a request is in
    /// flight: its answer comes first).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        match &self.phase {
            Phase::Waiting { until } => Some(*until),
            Phase::Mapped(h) => Some(h.renew_at.min(h.check_at)),
            Phase::Probing { .. } | Phase::Unmapping(_) | Phase::Stopped => None,
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The external endpoint of the gateway's UDP port, while mapped.
    pub fn external(&self) -> Option<SocketAddr> {
        match &self.phase {
            Phase::Mapped(h) => Some(h.external()),
            _ => None,
        }
    }

    /// The mapping as `hushgate gateway status` and the control plane see
    /// it (the driver adds the router's address).
    pub fn report(&self) -> MappingReport {
        let mut r = MappingReport::off();
        match &self.phase {
            Phase::Mapped(h) | Phase::Unmapping(h) => {
                r.state = MappingState::Mapped;
                r.protocol = Some(h.protocol);
                r.router_external = Some(h.grant.external_ip);
                r.external = Some(h.external());
                r.lease_secs = Some(h.lease().as_secs());
            }
            _ => match &self.last {
                Some((state, protocol, detail)) => {
                    r.state = *state;
                    r.protocol = *protocol;
                    r.error = Some(proto::reach::clean_text(detail));
                }
                None => r.state = MappingState::Pending,
            },
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: PortSpec = PortSpec {
        transport: Transport::Udp,
        port: 51820,
    };
    const TCP: PortSpec = PortSpec {
        transport: Transport::Tcp,
        port: 32401,
    };

    fn timing() -> Timing {
        Timing {
            lifetime: Duration::from_secs(600),
            check_interval: Duration::from_secs(60),
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(120),
            renew_retry: Duration::from_secs(5),
        }
    }

    fn grant(ip: &str, lifetime: u64, epoch: Option<u32>) -> Outcome {
        Outcome::Granted(Grant {
            external_ip: ip.parse().unwrap(),
            leases: [UDP, TCP]
                .into_iter()
                .map(|spec| Lease {
                    spec,
                    external_port: spec.port,
                    lifetime: Duration::from_secs(lifetime),
                })
                .collect(),
            epoch,
            recreated: false,
        })
    }

    fn protocol_of(r: &Request) -> (MappingProtocol, bool) {
        match r {
            Request::Map {
                protocol, refresh, ..
            } => (*protocol, *refresh),
            Request::Unmap { protocol, .. } => (*protocol, false),
        }
    }

    fn events(m: &mut Mapper) -> Vec<Event> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    /// A mapper that mapped with PCP at t0.
    fn mapped(t0: Instant) -> Mapper {
        let mut m = Mapper::new(vec![UDP, TCP], timing(), t0);
        m.poll_request(t0).unwrap();
        m.handle(grant("203.0.113.98", 600, Some(1000)), t0);
        events(&mut m);
        m
    }

    #[test]
    fn protocols_are_tried_in_order_and_the_first_answer_wins() {
        let t0 = Instant::now();
        let mut m = Mapper::new(vec![UDP, TCP], timing(), t0);
        assert_eq!(m.report().state, MappingState::Pending);
        let r = m.poll_request(t0).unwrap();
        assert_eq!(protocol_of(&r), (MappingProtocol::Pcp, false));
        assert_eq!(m.poll_request(t0), None, "one request at a time");
        m.handle(Outcome::NoAnswer("timeout".into()), t0);
        let r = m.poll_request(t0).unwrap();
        assert_eq!(protocol_of(&r), (MappingProtocol::NatPmp, false));
        m.handle(grant("203.0.113.98", 600, Some(5)), t0);
        assert_eq!(
            events(&mut m),
            vec![Event::Mapped {
                protocol: MappingProtocol::NatPmp,
                external: "203.0.113.98:51820".parse().unwrap()
            }]
        );
        let rep = m.report();
        assert_eq!(rep.state, MappingState::Mapped);
        assert_eq!(rep.protocol, Some(MappingProtocol::NatPmp));
        assert_eq!(rep.lease_secs, Some(600));
        assert_eq!(m.external(), Some("203.0.113.98:51820".parse().unwrap()));
    }

    #[test]
    fn renewed_at_half_the_lease_and_checked_in_between() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        // Checks every 60 s (the same request, a refresh), long before
        // the renewal at 300 s.
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(m.poll_request(t0 + Duration::from_secs(59)), None);
        let t1 = t0 + Duration::from_secs(60);
        let r = m.poll_request(t1).unwrap();
        assert_eq!(protocol_of(&r), (MappingProtocol::Pcp, true));
        m.handle(grant("203.0.113.98", 600, Some(1060)), t1);
        assert!(events(&mut m).is_empty(), "nothing changed");
        // The lease restarted from the refresh.
        assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(60)));
        // A router granting less than the check interval is renewed at
        // half its lease.
        let t2 = t1 + Duration::from_secs(60);
        m.poll_request(t2).unwrap();
        m.handle(grant("203.0.113.98", 40, Some(1120)), t2);
        assert_eq!(m.poll_timeout(), Some(t2 + Duration::from_secs(20)));
    }

    #[test]
    fn an_external_address_change_is_reported() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        m.announcement(t0 + Duration::from_secs(3));
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(m.poll_timeout(), Some(t1), "an announcement checks at once");
        m.poll_request(t1).unwrap();
        m.handle(grant("203.0.113.99", 600, Some(1003)), t1);
        assert_eq!(
            events(&mut m),
            vec![Event::ExternalChanged {
                from: "203.0.113.98:51820".parse().unwrap(),
                to: "203.0.113.99:51820".parse().unwrap()
            }]
        );
        assert_eq!(m.external(), Some("203.0.113.99:51820".parse().unwrap()));
    }

    #[test]
    fn announcements_are_acted_on_at_most_once_per_spacing() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        let t1 = t0 + Duration::from_secs(3);
        m.announcement(t1);
        assert_eq!(m.poll_timeout(), Some(t1));
        m.poll_request(t1).unwrap();
        m.handle(grant("203.0.113.98", 600, Some(1003)), t1);
        // A flood of (spoofable) announcements right after: ignored.
        for i in 1..100 {
            m.announcement(t1 + Duration::from_millis(i * 10));
        }
        assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(60)));
        // Once the spacing has passed, the next one counts again.
        let t2 = t1 + ANNOUNCEMENT_SPACING;
        m.announcement(t2);
        assert_eq!(m.poll_timeout(), Some(t2));
    }

    #[test]
    fn a_tiny_lease_is_not_renewed_more_often_than_the_minimum() {
        let t0 = Instant::now();
        let mut m = Mapper::new(vec![UDP, TCP], timing(), t0);
        m.poll_request(t0).unwrap();
        m.handle(grant("203.0.113.98", 1, Some(7)), t0);
        assert_eq!(m.poll_timeout(), Some(t0 + MIN_RENEWAL));
    }

    #[test]
    fn an_epoch_that_went_back_means_the_router_forgot() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        let t1 = t0 + Duration::from_secs(60);
        m.poll_request(t1).unwrap();
        // 60 s later its epoch says 3 s: it restarted; the refresh just
        // made mapped again.
        m.handle(grant("203.0.113.98", 600, Some(3)), t1);
        assert_eq!(
            events(&mut m),
            vec![Event::RouterForgot {
                protocol: MappingProtocol::Pcp
            }]
        );
        assert_eq!(m.report().state, MappingState::Mapped);
        // An epoch that advanced a little slower than our clock is fine.
        let t2 = t1 + Duration::from_secs(100);
        m.poll_request(t2).unwrap();
        m.handle(grant("203.0.113.98", 600, Some(3 + 90)), t2);
        assert!(events(&mut m).is_empty());
    }

    #[test]
    fn upnp_mappings_found_missing_count_as_forgotten() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        let t1 = t0 + Duration::from_secs(60);
        m.poll_request(t1).unwrap();
        let Outcome::Granted(mut g) = grant("203.0.113.98", 600, None) else {
            unreachable!()
        };
        g.recreated = true;
        m.handle(Outcome::Granted(g), t1);
        assert!(matches!(
            events(&mut m).as_slice(),
            [Event::RouterForgot { .. }]
        ));
    }

    #[test]
    fn nothing_answering_backs_off_and_tries_again() {
        let t0 = Instant::now();
        let mut m = Mapper::new(vec![UDP], timing(), t0);
        let mut at = t0;
        for round in 0..3 {
            for p in PROTOCOLS {
                let r = m.poll_request(at).unwrap();
                assert_eq!(protocol_of(&r), (p, false), "round {round}");
                m.handle(Outcome::NoAnswer("timeout".into()), at);
            }
            let rep = m.report();
            assert_eq!(rep.state, MappingState::NoProtocol);
            assert!(matches!(
                events(&mut m).as_slice(),
                [Event::Unavailable {
                    state: MappingState::NoProtocol,
                    ..
                }]
            ));
            let wait = [30, 60, 120][round];
            assert_eq!(m.poll_timeout(), Some(at + Duration::from_secs(wait)));
            assert_eq!(m.poll_request(at + Duration::from_secs(wait - 1)), None);
            at += Duration::from_secs(wait);
        }
        // Capped at retry_max.
        for _ in PROTOCOLS {
            m.poll_request(at).unwrap();
            m.handle(Outcome::NoAnswer("timeout".into()), at);
        }
        assert_eq!(m.poll_timeout(), Some(at + Duration::from_secs(120)));
        // A router that appears later is found at the next round, and the
        // backoff starts over.
        at += Duration::from_secs(120);
        m.poll_request(at).unwrap();
        m.handle(grant("203.0.113.98", 600, None), at);
        assert_eq!(m.report().state, MappingState::Mapped);
    }

    #[test]
    fn a_refusal_is_reported_as_such() {
        let t0 = Instant::now();
        let mut m = Mapper::new(vec![UDP], timing(), t0);
        m.poll_request(t0).unwrap();
        m.handle(Outcome::Refused("network failure".into()), t0);
        m.poll_request(t0).unwrap();
        m.handle(Outcome::NoAnswer("timeout".into()), t0);
        m.poll_request(t0).unwrap();
        m.handle(Outcome::Refused("error 729".into()), t0);
        let rep = m.report();
        assert_eq!(rep.state, MappingState::Refused);
        assert_eq!(rep.protocol, Some(MappingProtocol::Pcp));
        assert_eq!(rep.error.as_deref(), Some("network failure"));
    }

    #[test]
    fn unanswered_renewals_retry_until_the_lease_ends_then_probe_again() {
        let t0 = Instant::now();
        let mut m = Mapper::new(vec![UDP], timing(), t0);
        m.poll_request(t0).unwrap();
        m.handle(grant("203.0.113.98", 100, Some(10)), t0);
        events(&mut m);
        // Renewal at 50 s; no answer: retried after 5, 10, 20 s ... but
        // never past the end of the lease.
        let mut at = t0 + Duration::from_secs(50);
        assert_eq!(m.poll_timeout(), Some(at));
        let mut waits = vec![];
        while at < t0 + Duration::from_secs(100) {
            m.poll_request(at).expect("a renewal");
            m.handle(Outcome::NoAnswer("timeout".into()), at);
            let next = m.poll_timeout().unwrap();
            waits.push((next - at).as_secs());
            at = next;
        }
        assert_eq!(waits, vec![5, 10, 20, 15]);
        assert_eq!(m.report().state, MappingState::Mapped, "held until it ends");
        m.poll_request(at).unwrap();
        m.handle(Outcome::NoAnswer("timeout".into()), at);
        assert!(matches!(events(&mut m).as_slice(), [Event::Lost { .. }]));
        // Probing starts over, from PCP.
        let r = m.poll_request(at).unwrap();
        assert_eq!(protocol_of(&r), (MappingProtocol::Pcp, false));
    }

    #[test]
    fn a_refused_renewal_is_a_loss() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        let t1 = t0 + Duration::from_secs(60);
        m.poll_request(t1).unwrap();
        m.handle(Outcome::Refused("not authorized".into()), t1);
        assert!(matches!(events(&mut m).as_slice(), [Event::Lost { .. }]));
        assert_eq!(m.external(), None);
        assert!(m.poll_request(t1).is_some(), "probing again at once");
    }

    #[test]
    fn shutdown_deletes_what_is_held() {
        let t0 = Instant::now();
        let mut m = mapped(t0);
        m.shutdown();
        let r = m.poll_request(t0).unwrap();
        let Request::Unmap { protocol, leases } = r else {
            panic!("{r:?}")
        };
        assert_eq!(protocol, MappingProtocol::Pcp);
        assert_eq!(leases.len(), 2);
        assert!(!m.is_stopped());
        m.handle(Outcome::NoAnswer("gone".into()), t0);
        assert!(m.is_stopped());
        // Nothing held: stopped at once.
        let mut m = Mapper::new(vec![UDP], timing(), t0);
        m.poll_request(t0).unwrap();
        m.shutdown();
        assert!(m.is_stopped());
        assert_eq!(m.poll_request(t0), None);
    }
}
