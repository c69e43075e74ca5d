//! The gateway feed: how a gateway enrolls, reports itself, and learns the
//! desired set of admissions for its server.
//!
//! The feed is level-triggered: every answer says which version of the
//! desired set it describes, so a lost answer or a gateway restart heals on
//! the next poll. An answer carries either the whole set ([`FeedState`], or
//! a [`FeedUpdate`] with `base: None`) or, when the gateway asked for diffs
//! and the control plane still remembers the versions in between, only the
//! changes since the version the gateway holds ([`FeedUpdate`] with
//! `base: Some(N)`). [`FeedMirror`] is a follower's copy of the set that
//! takes in both. The gateway acknowledges a version once it has applied
//! that set.

use crate::api::{AccessMode, ServiceInfo};
use crate::{BindingPolicy, WgKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use time::OffsetDateTime;

/// What a gateway tells the control plane about itself, at enrollment
/// and again each time it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayReport {
    pub public_key: WgKey,
    /// The address clients send their datagrams to. When absent the
    /// control plane uses the address it sees plus `listen_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<SocketAddr>,
    pub listen_port: u16,
    pub services: Vec<ServiceInfo>,
    /// Direct (firewall-only) services: name and public TCP port.
    #[serde(default)]
    pub direct_services: Vec<ServiceInfo>,
    /// The gateway's port mapping and addresses, for the reachability
    /// check and its diagnosis (absent from gateways before issue 17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::reach::NetworkReport>,
}

/// `POST /v1/gateway/enroll`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub enrollment_token: String,
    pub report: GatewayReport,
}

impl std::fmt::Debug for EnrollRequest {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("report", &self.report)
            .field("enrollment_token", &"<hidden>")
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub server: String,
    /// Long-lived bearer credential for the feed; shown once.
    pub credential: String,
}

impl std::fmt::Debug for EnrollResponse {
    // The secret never reaches logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("server", &self.server)
            .field("credential", &"<hidden>")
            .finish()
    }
}

/// `GET /v1/gateway/feed?after=N`: the desired state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedState {
    pub server: String,
    pub version: u64,
    /// The control plane's clock when it wrote this answer, so that the
    /// gateway turns `expires_at` into a local deadline without trusting
    /// the two clocks to agree.
    #[serde(with = "time::serde::rfc3339")]
    pub server_time: OffsetDateTime,
    /// The inner address of the gateway (services listen here).
    pub service_address: Ipv4Addr,
    pub admissions: Vec<FeedAdmission>,
}

/// `GET /v1/gateway/feed?diff=true[&after=N]`: the desired state, whole or
/// as the changes since version `base`.
///
/// With `base: None` it is the whole set, exactly as in [`FeedState`] (and
/// `removed` is empty). With `base: Some(N)` it holds only what changed from
/// version `N` to `version`: `admissions` are the admissions that were added
/// or changed (each in full, to replace what the follower holds under that
/// id) and `removed` the ids that left the set. An id appears in at most one
/// of the two lists. A follower that does not hold version `N` exactly must
/// ask again without `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedUpdate {
    pub server: String,
    pub version: u64,
    /// The control plane's clock when it wrote this answer; it applies to
    /// every admission of the set from now on (see [`FeedMirror::state`]).
    #[serde(with = "time::serde::rfc3339")]
    pub server_time: OffsetDateTime,
    pub service_address: Ipv4Addr,
    /// `None`: `admissions` is the whole set. `Some(N)`: a diff from
    /// version `N`.
    #[serde(default)]
    pub base: Option<u64>,
    pub admissions: Vec<FeedAdmission>,
    #[serde(default)]
    pub removed: Vec<String>,
    /// The last reachability check of the gateway's endpoint and its
    /// diagnosis, for `hushgate gateway status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability: Option<crate::reach::ReachabilityView>,
}

impl FeedUpdate {
    pub fn is_full(&self) -> bool {
        self.base.is_none()
    }
}

impl From<FeedState> for FeedUpdate {
    fn from(s: FeedState) -> FeedUpdate {
        FeedUpdate {
            server: s.server,
            version: s.version,
            server_time: s.server_time,
            service_address: s.service_address,
            base: None,
            admissions: s.admissions,
            removed: Vec::new(),
            reachability: None,
        }
    }
}

/// A diff that does not start at the version the follower holds; the
/// follower must fetch the whole set again (`after` omitted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the feed sent the changes since version {base}, but this follower holds {held}; fetching the whole set again", held = match .held { Some(v) => v.to_string(), None => "nothing yet".into() })]
pub struct DiffMismatch {
    pub base: u64,
    pub held: Option<u64>,
}

/// A follower's copy of the desired set (id → admission), kept current from
/// whole answers and diffs alike.
///
/// Time: the mirror keeps each admission's `expires_at` as the control
/// plane stated it, and the `server_time` of the latest answer. That is
/// exactly what a whole answer written at that moment would carry (the
/// control plane's `expires_at` values do not move unless a change says
/// so), so [`FeedMirror::state`] is what the control plane would have sent
/// in full, and a consumer that turns `expires_at - server_time` into a
/// local deadline gets the same deadlines as with whole answers.
#[derive(Debug, Clone, Default)]
pub struct FeedMirror {
    head: Option<Head>,
    /// Admissions in the order the follower first saw them (the control
    /// plane lists a whole set oldest first, and diffs add newer ones).
    by_seq: BTreeMap<u64, FeedAdmission>,
    seq_of: HashMap<String, u64>,
    next_seq: u64,
}

#[derive(Debug, Clone)]
struct Head {
    server: String,
    version: u64,
    server_time: OffsetDateTime,
    service_address: Ipv4Addr,
}

impl FeedMirror {
    pub fn new() -> FeedMirror {
        FeedMirror::default()
    }

    /// The version held, once a whole set has been taken in.
    pub fn version(&self) -> Option<u64> {
        self.head.as_ref().map(|h| h.version)
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&FeedAdmission> {
        self.seq_of.get(id).and_then(|s| self.by_seq.get(s))
    }

    /// Every admission held, in order (including any already past their
    /// expiry, which [`FeedMirror::state`] leaves out).
    pub fn admissions(&self) -> impl Iterator<Item = &FeedAdmission> {
        self.by_seq.values()
    }

    /// Takes in one answer. A whole set replaces everything; a diff must
    /// start at the version held, or nothing changes and the caller must
    /// fetch the whole set again.
    pub fn apply(&mut self, update: FeedUpdate) -> Result<(), DiffMismatch> {
        match update.base {
            None => {
                self.by_seq.clear();
                self.seq_of.clear();
                self.next_seq = 0;
            }
            Some(base) => {
                if self.version() != Some(base) {
                    return Err(DiffMismatch {
                        base,
                        held: self.version(),
                    });
                }
                for id in &update.removed {
                    if let Some(seq) = self.seq_of.remove(id) {
                        self.by_seq.remove(&seq);
                    }
                }
            }
        }
        for a in update.admissions {
            match self.seq_of.get(&a.id) {
                Some(&seq) => {
                    self.by_seq.insert(seq, a);
                }
                None => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.seq_of.insert(a.id.clone(), seq);
                    self.by_seq.insert(seq, a);
                }
            }
        }
        self.head = Some(Head {
            server: update.server,
            version: update.version,
            server_time: update.server_time,
            service_address: update.service_address,
        });
        Ok(())
    }

    /// The whole desired set as of the latest answer, as the control plane
    /// would send it in full at that answer's `server_time`: admissions
    /// whose `expires_at` is not after that time are left out, like the
    /// control plane leaves them out. `None` before the first whole set.
    pub fn state(&self) -> Option<FeedState> {
        let head = self.head.as_ref()?;
        Some(FeedState {
            server: head.server.clone(),
            version: head.version,
            server_time: head.server_time,
            service_address: head.service_address,
            admissions: self
                .by_seq
                .values()
                .filter(|a| a.expires_at > head.server_time)
                .cloned()
                .collect(),
        })
    }
}

/// One admission the gateway must enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedAdmission {
    pub id: String,
    pub mode: AccessMode,
    /// Tunnel mode only.
    pub client_public_key: Option<WgKey>,
    pub preshared_key: Option<WgKey>,
    /// The client address the control plane observed.
    pub source: IpAddr,
    pub binding: BindingPolicy,
    /// The client's inner address (tunnel mode only).
    pub client_address: Option<Ipv4Addr>,
    /// Names of the services the client may reach.
    pub services: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /v1/gateway/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedAck {
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_round_trips_real_json() {
        let json = r#"{
            "server": "living-room",
            "version": 7,
            "server_time": "2026-11-25T20:00:00Z",
            "service_address": "100.64.0.1",
            "admissions": [{
                "id": "adm_1",
                "mode": "tunnel",
                "client_public_key": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
                "preshared_key": null,
                "source": "203.0.113.7",
                "binding": "prefix:24",
                "client_address": "100.64.0.2",
                "services": ["plex"],
                "expires_at": "2026-11-25T21:00:00Z"
            }]
        }"#;
        let state: FeedState = serde_json::from_str(json).unwrap();
        // The short form of older control planes still reads.
        assert_eq!(
            state.admissions[0].binding,
            BindingPolicy::prefix(24, 64).unwrap()
        );
        let again: FeedState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(again.admissions, state.admissions);
        // The documented whole form is also a valid `FeedUpdate` (a whole
        // set: no `base`, nothing removed).
        let update: FeedUpdate = serde_json::from_str(json).unwrap();
        assert!(update.is_full());
        assert!(update.removed.is_empty());
        assert_eq!(update.admissions, state.admissions);
    }

    fn adm(id: &str, expires_min: i64) -> FeedAdmission {
        FeedAdmission {
            id: id.into(),
            mode: AccessMode::Tunnel,
            client_public_key: Some(WgKey([id.len() as u8; 32])),
            preshared_key: None,
            source: "203.0.113.7".parse().unwrap(),
            binding: BindingPolicy::Exact,
            client_address: Some(Ipv4Addr::new(100, 64, 0, 2)),
            services: vec!["plex".into()],
            expires_at: time::macros::datetime!(2026-11-25 20:00 UTC)
                + time::Duration::minutes(expires_min),
        }
    }

    fn update(version: u64, base: Option<u64>, minute: i64) -> FeedUpdate {
        FeedUpdate {
            server: "den".into(),
            version,
            server_time: time::macros::datetime!(2026-11-25 20:00 UTC)
                + time::Duration::minutes(minute),
            service_address: Ipv4Addr::new(100, 64, 0, 1),
            base,
            admissions: vec![],
            removed: vec![],
            reachability: None,
        }
    }

    #[test]
    fn diff_wire_form_round_trips() {
        let json = r#"{
            "server": "den", "version": 9, "server_time": "2026-11-25T20:00:00Z",
            "service_address": "100.64.0.1", "base": 7,
            "admissions": [], "removed": ["adm_1", "adm_2"]
        }"#;
        let u: FeedUpdate = serde_json::from_str(json).unwrap();
        assert_eq!(u.base, Some(7));
        assert_eq!(u.removed, ["adm_1", "adm_2"]);
        let v: serde_json::Value = serde_json::to_value(&u).unwrap();
        assert_eq!(v["base"], 7);
        let full: serde_json::Value = serde_json::to_value(FeedUpdate::from(FeedState {
            server: "den".into(),
            version: 1,
            server_time: u.server_time,
            service_address: u.service_address,
            admissions: vec![],
        }))
        .unwrap();
        assert!(full["base"].is_null());
        assert_eq!(full["removed"], serde_json::json!([]));
    }

    #[test]
    fn mirror_merges_diffs_and_refuses_a_wrong_base() {
        let mut m = FeedMirror::new();
        assert!(m.state().is_none());
        // A diff before any whole set does not fit.
        assert_eq!(
            m.apply(update(3, Some(2), 0)),
            Err(DiffMismatch {
                base: 2,
                held: None
            })
        );
        let mut full = update(3, None, 0);
        full.admissions = vec![adm("a", 60), adm("b", 60)];
        m.apply(full).unwrap();
        assert_eq!(m.version(), Some(3));

        let mut d = update(5, Some(3), 1);
        d.admissions = vec![adm("c", 60), adm("a", 120)];
        d.removed = vec!["b".into(), "never-held".into()];
        m.apply(d).unwrap();
        let st = m.state().unwrap();
        assert_eq!(st.version, 5);
        assert_eq!(st.server_time, update(0, None, 1).server_time);
        let ids: Vec<&str> = st.admissions.iter().map(|a| a.id.as_str()).collect();
        // "a" keeps its place and takes its new expiry.
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(st.admissions[0], adm("a", 120));

        // A diff from a version not held changes nothing.
        let mut stale = update(9, Some(4), 2);
        stale.removed = vec!["a".into()];
        assert!(m.apply(stale).is_err());
        assert_eq!(m.version(), Some(5));
        assert_eq!(m.len(), 2);

        // Admissions past their expiry at the latest server time are left
        // out of the state, as a whole answer would leave them out.
        m.apply(update(6, Some(5), 90)).unwrap();
        let st = m.state().unwrap();
        assert_eq!(st.admissions, vec![adm("a", 120)]);
        assert_eq!(m.len(), 2);

        // A whole set replaces everything.
        let mut full = update(7, None, 91);
        full.admissions = vec![adm("z", 200)];
        m.apply(full).unwrap();
        assert_eq!(
            m.admissions().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["z"]
        );
    }
}
