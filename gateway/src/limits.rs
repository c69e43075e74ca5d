//! What one admitted client may hold in the gateway's user-space TCP stack,
//! and how much of it each holds now (shown by `hushgate gateway status`).
//!
//! The stack has `max_sockets` sockets and one buffer budget for all
//! clients; without a per-client share, one client could hold every
//! socket (or handshake slot) and take the whole budget, and every other
//! client would be refused. The limits are keyed by the tunnel address of
//! the client, which the dispatcher has already checked is the address its
//! admission was given (see [`crate::inner`]), so a client cannot spread
//! its connections over other addresses. See "Limits" in
//! docs/operating.md for the defaults and the memory bound they give.

use netstack::{PeerUsage, Stack, StackConfig};
use serde::Serialize;

/// Per-client limits of the gateway's TCP stack (settings
/// `max_connections_per_client`, `max_pending_per_client`,
/// `buffer_growth_per_client_mib`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeerLimits {
    /// Connections a client may hold at once (open, opening or closing); a
    /// connection beyond it is refused with a TCP reset inside the tunnel.
    pub max_connections: usize,
    /// Handshakes a client may have in progress; SYNs beyond it are
    /// dropped (its TCP retries a second later).
    pub max_pending: usize,
    /// Bytes the buffers of one client's connections may grow by together,
    /// out of the stack's budget.
    pub buffer_growth: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        let d = StackConfig::new([0, 0, 0, 0].into());
        PeerLimits {
            max_connections: d.max_connections_per_peer,
            max_pending: d.max_pending_per_peer,
            buffer_growth: d.tcp_buffer_budget_per_peer,
        }
    }
}

impl PeerLimits {
    /// Puts these limits into a stack's configuration.
    pub fn apply(&self, cfg: &mut StackConfig) {
        cfg.max_connections_per_peer = self.max_connections;
        cfg.max_pending_per_peer = self.max_pending;
        cfg.tcp_buffer_budget_per_peer = self.buffer_growth;
    }

    /// Refuses limits that would make the service unusable or the
    /// per-client share meaningless.
    pub fn check(&self, cfg: &StackConfig) -> Result<(), String> {
        if self.max_connections == 0 || self.max_pending == 0 {
            return Err(
                "max_connections_per_client and max_pending_per_client must be at least 1".into(),
            );
        }
        if self.max_connections > cfg.max_sockets {
            return Err(format!(
                "max_connections_per_client {} is more than the stack's {} sockets",
                self.max_connections, cfg.max_sockets
            ));
        }
        if self.buffer_growth > cfg.tcp_buffer_budget {
            return Err(format!(
                "buffer_growth_per_client_mib {} is more than the stack's budget of {} MiB",
                self.buffer_growth >> 20,
                cfg.tcp_buffer_budget >> 20
            ));
        }
        Ok(())
    }
}

/// One client's share of the TCP stack now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PeerTcp {
    /// Connections held (open, opening or closing).
    pub connections: usize,
    /// Handshakes in progress.
    pub pending: usize,
    /// Bytes its buffers have grown by beyond their initial sizes.
    pub buffer_growth: usize,
}

impl From<PeerUsage> for PeerTcp {
    fn from(u: PeerUsage) -> Self {
        PeerTcp {
            connections: u.connections,
            pending: u.pending,
            buffer_growth: u.buffer_growth,
        }
    }
}

/// The TCP stack as a whole: its use, its limits, and what they refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpStats {
    /// Sockets of every kind (listeners included) and the most there may be.
    pub sockets: usize,
    pub max_sockets: usize,
    /// Connections accepted and not yet closed.
    pub connections: usize,
    /// The buffer growth budget of all clients together, and what is left.
    pub buffer_budget: usize,
    pub buffer_budget_available: usize,
    pub limits_per_client: PeerLimits,
    /// Connections refused with a reset: their client held
    /// `max_connections_per_client`.
    pub refused_connections: u64,
    /// SYNs dropped: their client had `max_pending_per_client` handshakes
    /// in progress.
    pub dropped_syns: u64,
}

impl TcpStats {
    pub fn of(stack: &Stack) -> TcpStats {
        let cfg = stack.config();
        let stats = stack.stats();
        TcpStats {
            sockets: stack.socket_count(),
            max_sockets: cfg.max_sockets,
            connections: stack.connection_count(),
            buffer_budget: cfg.tcp_buffer_budget,
            buffer_budget_available: stack.buffer_budget_available(),
            limits_per_client: PeerLimits {
                max_connections: cfg.max_connections_per_peer,
                max_pending: cfg.max_pending_per_peer,
                buffer_growth: cfg.tcp_buffer_budget_per_peer,
            },
            refused_connections: stats.syn_over_connection_limit,
            dropped_syns: stats.syn_over_pending_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_would_make_the_share_meaningless_are_refused() {
        let cfg = StackConfig::new([100, 64, 0, 1].into());
        let ok = PeerLimits::default();
        assert_eq!(ok.check(&cfg), Ok(()));
        let bad = [
            PeerLimits {
                max_connections: 0,
                ..ok
            },
            PeerLimits {
                max_pending: 0,
                ..ok
            },
            PeerLimits {
                max_connections: cfg.max_sockets + 1,
                ..ok
            },
            PeerLimits {
                buffer_growth: cfg.tcp_buffer_budget + 1,
                ..ok
            },
        ];
        for l in bad {
            assert!(l.check(&cfg).is_err(), "{l:?}");
        }
        let mut applied = StackConfig::new([100, 64, 0, 1].into());
        PeerLimits {
            max_connections: 3,
            max_pending: 2,
            buffer_growth: 1,
        }
        .apply(&mut applied);
        assert_eq!(
            (
                applied.max_connections_per_peer,
                applied.max_pending_per_peer,
                applied.tcp_buffer_budget_per_peer
            ),
            (3, 2, 1)
        );
    }
}
