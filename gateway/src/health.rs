//! Whether each service's upstream (the media server behind the gateway)
//! answers. A gateway whose upstream is down still admits clients, who
//! then meet a tunnel that leads nowhere; without a check nothing says so
//! until a user complains. The runtime connects to every upstream at
//! start and then periodically (a TCP connect with a short timeout, then
//! closed), records the outcome here, logs each change once (not every
//! round), and `hushgate gateway status` shows the result.
//!
//! [`UpstreamHealth`] is the record: no sockets, time passed in.

use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often upstreams are checked after the check at start.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How long one check may wait for the upstream to accept.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the last check of one upstream found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet.
    Unknown,
    /// It accepted a connection.
    Up,
    /// It refused, or did not answer in time: why.
    Down(String),
}

impl Health {
    fn word(&self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down(_) => "down",
        }
    }
}

/// One upstream's state, as `hushgate gateway status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceHealth {
    pub name: String,
    /// `tunnel` (a port inside the tunnel) or `direct` (a public TCP port).
    pub kind: &'static str,
    /// The port clients use: inside the tunnel, or the public direct port.
    pub port: u16,
    pub upstream: SocketAddr,
    /// `up`, `down` or `unknown`.
    pub health: &'static str,
    pub error: Option<String>,
    /// Seconds since the health last changed, and since the last check.
    pub since_secs: Option<u64>,
    pub checked_secs_ago: Option<u64>,
}

/// A change of one upstream's health, to be logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub kind: &'static str,
    pub upstream: SocketAddr,
    pub was: Health,
    pub now: Health,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: &'static str,
    port: u16,
    upstream: SocketAddr,
    health: Health,
    since: Option<Instant>,
    checked: Option<Instant>,
}

/// The health of every upstream the gateway forwards to.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHealth {
    entries: Vec<Entry>,
}

impl UpstreamHealth {
    /// Adds an upstream to watch (health unknown until its first check).
    pub fn watch(&mut self, name: &str, kind: &'static str, port: u16, upstream: SocketAddr) {
        self.entries.push(Entry {
            name: name.to_string(),
            kind,
            port,
            upstream,
            health: Health::Unknown,
            since: None,
            checked: None,
        });
    }

    /// The upstreams to check, by index for [`UpstreamHealth::record`].
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.entries.iter().map(|e| e.upstream).collect()
    }

    /// Records a check of upstream `i` at `now`. Returns the change when
    /// its health differs from the last check's, so that a down upstream
    /// is reported once, not every round.
    pub fn record(
        &mut self,
        i: usize,
        outcome: Result<(), String>,
        now: Instant,
    ) -> Option<Change> {
        let e = self.entries.get_mut(i)?;
        e.checked = Some(now);
        let health = match outcome {
            Ok(()) => Health::Up,
            Err(why) => Health::Down(why),
        };
        // A different error on a down upstream is not news.
        if health.word() == e.health.word() {
            e.health = health;
            return None;
        }
        let was = std::mem::replace(&mut e.health, health.clone());
        e.since = Some(now);
        Some(Change {
            name: e.name.clone(),
            kind: e.kind,
            upstream: e.upstream,
            was,
            now: health,
        })
    }

    pub fn snapshot(&self, now: Instant) -> Vec<ServiceHealth> {
        let ago = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_secs());
        self.entries
            .iter()
            .map(|e| ServiceHealth {
                name: e.name.clone(),
                kind: e.kind,
                port: e.port,
                upstream: e.upstream,
                health: e.health.word(),
                error: match &e.health {
                    Health::Down(why) => Some(why.clone()),
                    _ => None,
                },
                since_secs: ago(e.since),
                checked_secs_ago: ago(e.checked),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_and_shown_with_its_age() {
        let t0 = Instant::now();
        let mut h = UpstreamHealth::default();
        h.watch("plex", "tunnel", 32400, "127.0.0.1:32400".parse().unwrap());
        h.watch("tv", "direct", 32401, "127.0.0.1:32400".parse().unwrap());
        assert_eq!(h.snapshot(t0)[0].health, "unknown");

        let down = h.record(0, Err("connection refused".into()), t0).unwrap();
        assert_eq!(
            (down.was, down.now.clone()),
            (Health::Unknown, Health::Down("connection refused".into()))
        );
        // Still down a round later, even with another error: no news.
        let t1 = t0 + CHECK_INTERVAL;
        assert_eq!(h.record(0, Err("timed out".into()), t1), None);
        assert_eq!(h.record(1, Ok(()), t1).map(|c| c.now), Some(Health::Up));
        let s = h.snapshot(t1 + Duration::from_secs(5));
        assert_eq!(s[0].health, "down");
        assert_eq!(s[0].error.as_deref(), Some("timed out"));
        assert_eq!(s[0].since_secs, Some(35));
        assert_eq!(s[0].checked_secs_ago, Some(5));
        assert_eq!(
            (s[1].kind, s[1].health, s[1].error.clone()),
            ("direct", "up", None)
        );

        let back = h.record(0, Ok(()), t1 + CHECK_INTERVAL).unwrap();
        assert_eq!(back.now, Health::Up);
        assert_eq!(h.record(0, Ok(()), t1 + 2 * CHECK_INTERVAL), None);
    }
}
