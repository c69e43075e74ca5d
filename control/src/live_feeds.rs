//! What the control plane knows about its gateways right now, in memory:
//! which feed version each server is at, which version its gateway has
//! acknowledged, and whether the gateway holds its feed open.
//!
//! The database holds the desired state; the live feeds only wake the
//! waiters (a gateway's long-poll, an access request waiting for an ack)
//! when that state or an acknowledgement moves. They learn of a move as an
//! [`Event`]: from this process's own transactions once they commit, and,
//! when several replicas share a PostgreSQL database, from the others
//! through `NOTIFY` (see `store::postgres`). Every update only moves
//! forward, so an event heard twice, or late, changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::watch;

/// How long after its last poll ended a gateway still counts as
/// connected: the gap between two long-polls is one round trip.
pub const CONNECTED_GRACE: Duration = Duration::from_secs(3);

/// Something every replica must hear of once it has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A server's desired state reached `version`.
    Version { server: i64, version: u64 },
    /// A server's gateway acknowledged `version`.
    Acked { server: i64, version: u64 },
    /// A server's gateway credential was revoked or replaced: held feed
    /// polls check theirs again.
    Credential { server: i64 },
    /// A server was removed.
    Removed { server: i64 },
}

impl Event {
    /// The text carried by a PostgreSQL notification.
    pub fn to_payload(self) -> String {
        match self {
            Event::Version { server, version } => format!("v {server} {version}"),
            Event::Acked { server, version } => format!("a {server} {version}"),
            Event::Credential { server } => format!("c {server}"),
            Event::Removed { server } => format!("r {server}"),
        }
    }

    pub fn from_payload(text: &str) -> Option<Event> {
        let mut f = text.split(' ');
        let kind = f.next()?;
        let server = f.next()?.parse().ok()?;
        let mut version = || f.next()?.parse::<u64>().ok();
        let e = match kind {
            "v" => Event::Version {
                server,
                version: version()?,
            },
            "a" => Event::Acked {
                server,
                version: version()?,
            },
            "c" => Event::Credential { server },
            "r" => Event::Removed { server },
            _ => return None,
        };
        Some(e)
    }
}

/// One server's feed as this replica knows it now, and who waits on it.
#[derive(Debug)]
pub struct LiveFeed {
    /// The latest desired-state version; the feed long-poll waits on it.
    pub version: watch::Sender<u64>,
    /// The highest version the gateway acknowledged.
    pub acked: watch::Sender<u64>,
    /// Moves when the server's gateway credential is revoked or replaced,
    /// or the server removed: a held feed poll answers at once (with 401).
    pub credential: watch::Sender<u64>,
    open_polls: AtomicUsize,
    last_seen: Mutex<Option<(Instant, OffsetDateTime)>>,
    /// When this replica last told the database that it holds a poll of
    /// this gateway, and until when that claim runs (shared databases
    /// only; see `app::PollPresence`).
    pub held_written: Mutex<Option<(Instant, Instant)>>,
}

impl LiveFeed {
    fn new(version: u64) -> Self {
        LiveFeed {
            version: watch::channel(version).0,
            acked: watch::channel(0).0,
            credential: watch::channel(0).0,
            open_polls: AtomicUsize::new(0),
            last_seen: Mutex::new(None),
            held_written: Mutex::new(None),
        }
    }

    /// Feed polls of this gateway open on this replica now.
    pub fn open_polls(&self) -> usize {
        self.open_polls.load(Ordering::SeqCst)
    }

    pub fn connected(&self, now: Instant) -> bool {
        if self.open_polls.load(Ordering::SeqCst) > 0 {
            return true;
        }
        matches!(*self.last_seen.lock().unwrap_or_else(|p| p.into_inner()),
            Some((at, _)) if now.duration_since(at) < CONNECTED_GRACE)
    }

    pub fn last_seen(&self) -> Option<OffsetDateTime> {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(_, t)| t)
    }

    fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), OffsetDateTime::now_utc()));
    }

    /// Marks a feed poll as open until the guard drops.
    pub fn poll_guard(self: &Arc<Self>) -> PollGuard {
        self.open_polls.fetch_add(1, Ordering::SeqCst);
        self.touch();
        PollGuard(self.clone())
    }

    pub fn publish(&self, version: u64) {
        raise(&self.version, version);
    }

    pub fn ack(&self, version: u64) {
        self.touch();
        raise(&self.acked, version);
    }

    /// Wakes held feed polls to check their credential again.
    pub fn credential_changed(&self) {
        self.credential.send_modify(|n| *n += 1);
    }

    /// Waits until the gateway acknowledged `version` (or a later one).
    pub async fn wait_ack(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.acked.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
}

/// Moves `to` forward (never back), waking its waiters only if it moved:
/// an event heard twice, or late, changes nothing.
fn raise(to: &watch::Sender<u64>, version: u64) {
    to.send_if_modified(|v| {
        if version > *v {
            *v = version;
            true
        } else {
            false
        }
    });
}

/// A feed poll held open (see [`LiveFeed::poll_guard`]).
#[derive(Debug)]
pub struct PollGuard(Arc<LiveFeed>);

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open_polls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every server's [`LiveFeed`] on this replica, made on first use.
#[derive(Debug, Default)]
pub struct LiveFeeds {
    servers: Mutex<HashMap<i64, Arc<LiveFeed>>>,
}

impl LiveFeeds {
    /// The live entry for a server, made on first use at `version`.
    pub fn server(&self, id: i64, version: u64) -> Arc<LiveFeed> {
        let mut m = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id)
            .or_insert_with(|| Arc::new(LiveFeed::new(version)))
            .clone()
    }

    pub fn get(&self, id: i64) -> Option<Arc<LiveFeed>> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Drops what is known about a removed server, after waking its held
    /// feed polls (which then find the credential gone).
    pub fn forget(&self, id: i64) {
        let gone = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(live) = gone {
            live.credential_changed();
        }
    }

    /// Announces a new desired-state version of a server.
    pub fn publish(&self, id: i64, version: u64) {
        self.server(id, version).publish(version);
    }

    /// Takes in one committed event (this replica's or another's).
    pub fn apply(&self, e: Event) {
        match e {
            Event::Version { server, version } => self.publish(server, version),
            Event::Acked { server, version } => {
                // The ack of a server this replica has not met yet starts
                // its entry at version 0; the next version read or heard
                // moves it on.
                raise(&self.server(server, 0).acked, version);
            }
            Event::Credential { server } => {
                if let Some(live) = self.get(server) {
                    live.credential_changed();
                }
            }
            Event::Removed { server } => self.forget(server),
        }
    }

    /// The ids of the servers this replica has met.
    pub fn known(&self) -> Vec<i64> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_notification_text() {
        for e in [
            Event::Version {
                server: 3,
                version: 17,
            },
            Event::Acked {
                server: 3,
                version: 16,
            },
            Event::Credential { server: 9 },
            Event::Removed { server: 12 },
        ] {
            assert_eq!(Event::from_payload(&e.to_payload()), Some(e));
        }
        for bad in ["", "v", "v 1", "x 1 2", "v a 2", "a 1 -2"] {
            assert_eq!(Event::from_payload(bad), None, "{bad}");
        }
    }

    #[test]
    fn events_only_move_forward() {
        let live_feeds = LiveFeeds::default();
        live_feeds.apply(Event::Version {
            server: 1,
            version: 5,
        });
        live_feeds.apply(Event::Version {
            server: 1,
            version: 4,
        });
        live_feeds.apply(Event::Acked {
            server: 1,
            version: 5,
        });
        live_feeds.apply(Event::Acked {
            server: 1,
            version: 3,
        });
        let live = live_feeds.get(1).unwrap();
        assert_eq!(*live.version.borrow(), 5);
        assert_eq!(*live.acked.borrow(), 5);
        live_feeds.apply(Event::Removed { server: 1 });
        assert!(live_feeds.get(1).is_none());
    }
}
