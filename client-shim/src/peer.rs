//! [`GatewayPeer`]: the one WireGuard peer of a session (boringtun's
//! `Tunn`) plus the bookkeeping around it: where the gateway is, when its
//! timers are due, and whether it still answers ([`PathMonitor`]).
//!
//! boringtun reads the clock inside `update_timers`; everything this type
//! decides itself takes `now` as an argument.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use netstack::wire::wireguard::{
    KEEPALIVE_LEN, MSG_DATA, MSG_HANDSHAKE_INIT, MSG_HANDSHAKE_RESPONSE, TIMER_INTERVAL,
};
use std::net::SocketAddr;
use std::time::Instant;

use crate::access_answer::TunnelParams;
use crate::path_monitor::{PathMonitor, PathTimeouts, PathVerdict};

/// What a datagram from the gateway turned into.
#[derive(Debug)]
pub(crate) enum Decap<'a> {
    /// Send this back to the gateway (handshake keepalive, cookie, ...).
    Network(&'a [u8]),
    /// A decrypted IPv4 packet for the TCP stack.
    Packet(&'a [u8]),
    /// Authenticated but nothing to do (keepalive, cookie stored).
    Nothing,
    /// Failed authentication or otherwise refused: ignored.
    Refused,
}

/// The gateway as a WireGuard peer.
pub(crate) struct GatewayPeer {
    tunn: Tunn,
    endpoint: SocketAddr,
    monitor: PathMonitor,
    next_timer: Instant,
    handshake_done: bool,
}

impl std::fmt::Debug for GatewayPeer {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPeer")
            .field("endpoint", &self.endpoint)
            .field("handshake_done", &self.handshake_done)
            .finish_non_exhaustive()
    }
}

impl GatewayPeer {
    pub(crate) fn new(
        secret: StaticSecret,
        params: &TunnelParams,
        timeouts: PathTimeouts,
        index: u32,
        now: Instant,
    ) -> GatewayPeer {
        let tunn = Tunn::new(
            secret,
            PublicKey::from(params.gateway_public_key.0),
            params.preshared_key.map(|k| k.0),
            None,
            // boringtun shifts this left by 8 bits for session indices.
            index & 0x00ff_ffff,
            None,
        );
        GatewayPeer {
            tunn,
            endpoint: params.gateway_endpoint,
            monitor: PathMonitor::new(timeouts),
            next_timer: now + TIMER_INTERVAL,
            handshake_done: false,
        }
    }

    pub(crate) fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// True if `src` is the gateway (comparing canonical addresses, so an
    /// IPv4-mapped IPv6 source matches too).
    pub(crate) fn is_gateway(&self, src: SocketAddr) -> bool {
        src.port() == self.endpoint.port()
            && src.ip().to_canonical() == self.endpoint.ip().to_canonical()
    }

    /// The first handshake initiation, sent before any data so that the
    /// tunnel is up by the time the player connects.
    pub(crate) fn initiate<'a>(&mut self, now: Instant, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        let r = self.tunn.format_handshake_initiation(buf, false);
        self.outgoing(r, now)
    }

    /// A new handshake now, even if one is in flight. Sent when the gateway
    /// has gone quiet: if it restarted it lost our session and drops our
    /// data silently, and waiting for WireGuard's own rekey would take 15 s.
    pub(crate) fn rehandshake<'a>(&mut self, now: Instant, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        let r = self.tunn.format_handshake_initiation(buf, true);
        self.outgoing(r, now)
    }

    /// Encrypts one inner packet (or, without a session, queues it and
    /// returns a handshake initiation, or nothing if one is in flight).
    pub(crate) fn encapsulate<'a>(
        &mut self,
        packet: &[u8],
        now: Instant,
        buf: &'a mut [u8],
    ) -> Option<&'a [u8]> {
        let r = self.tunn.encapsulate(packet, buf);
        self.outgoing(r, now)
    }

    /// Releases packets boringtun queued while it had no session; call
    /// until `None` after a handshake completed.
    pub(crate) fn flush_queued<'a>(&mut self, now: Instant, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        let r = self.tunn.decapsulate(None, &[], buf);
        self.outgoing(r, now)
    }

    /// Runs boringtun's timers if they are due.
    pub(crate) fn timers<'a>(&mut self, now: Instant, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        if now < self.next_timer {
            return None;
        }
        self.next_timer = now + TIMER_INTERVAL;
        let r = self.tunn.update_timers(buf);
        self.outgoing(r, now)
    }

    fn outgoing<'a>(&mut self, r: TunnResult<'a>, now: Instant) -> Option<&'a [u8]> {
        match r {
            TunnResult::WriteToNetwork(b) => {
                if expects_answer(b) {
                    self.monitor.on_sent(now);
                }
                Some(b)
            }
            _ => None,
        }
    }

    /// Processes one datagram that came from the gateway's endpoint.
    /// The second value is true when this completed a handshake.
    pub(crate) fn decapsulate<'a>(
        &mut self,
        datagram: &[u8],
        buf: &'a mut [u8],
    ) -> (Decap<'a>, Recv) {
        let kind = datagram.first().copied();
        let r = self.tunn.decapsulate(None, datagram, buf);
        if let TunnResult::Err(_) = r {
            return (Decap::Refused, Recv::default());
        }
        let recovered = self.monitor.on_received();
        let handshake = kind == Some(MSG_HANDSHAKE_RESPONSE);
        let first_handshake = handshake && !self.handshake_done;
        if handshake {
            self.handshake_done = true;
        }
        let info = Recv {
            handshake,
            first_handshake,
            recovered,
        };
        let d = match r {
            TunnResult::WriteToNetwork(b) => Decap::Network(b),
            TunnResult::WriteToTunnelV4(b, _) => Decap::Packet(b),
            // The gateway only carries IPv4.
            TunnResult::WriteToTunnelV6(..) => Decap::Refused,
            TunnResult::Done | TunnResult::Err(_) => Decap::Nothing,
        };
        (d, info)
    }

    /// Whether the gateway still answers.
    pub(crate) fn check_path(&mut self, now: Instant) -> PathVerdict {
        self.monitor.check(now)
    }

    /// The next moment this peer needs attention without new input.
    pub(crate) fn next_wakeup(&self) -> Instant {
        match self.monitor.deadline() {
            Some(d) => d.min(self.next_timer),
            None => self.next_timer,
        }
    }
}

/// Side facts of one received datagram.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Recv {
    /// A handshake response: boringtun may now release queued packets.
    pub(crate) handshake: bool,
    /// The first handshake of this peer: the tunnel is up.
    pub(crate) first_handshake: bool,
    /// The path had been reported lost and answers again.
    pub(crate) recovered: bool,
}

/// Handshake initiations and data with a payload must be answered by a
/// live gateway; keepalives and cookie replies need not be.
fn expects_answer(datagram: &[u8]) -> bool {
    match datagram.first() {
        Some(&MSG_HANDSHAKE_INIT) => true,
        Some(&MSG_DATA) => datagram.len() > KEEPALIVE_LEN,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_initiations_and_data_wait_for_an_answer() {
        assert!(expects_answer(&[1; 148]));
        assert!(expects_answer(&[4; 80]));
        assert!(!expects_answer(&[4; 32]), "keepalive");
        assert!(!expects_answer(&[2; 92]));
        assert!(!expects_answer(&[3; 64]));
        assert!(!expects_answer(&[]));
    }
}
