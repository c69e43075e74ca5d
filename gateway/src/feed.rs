//! The gateway's copy of the desired set, kept current from the control
//! plane's feed with diffs.
//!
//! The feed follower asks `GET /v1/gateway/feed?diff=true&after=V` with the
//! version `V` it holds; the control plane answers with only the changes
//! since `V` when it still remembers them, otherwise with the whole set.
//! [`DesiredSet`] takes in both and hands out a [`FeedChange`]: a whole
//! answer is applied whole (each consumer converges to the complete
//! desired state), a diff that fits the version held is applied as a diff
//! ([`DesiredSet::absorb_update`]), so a change costs what it changes. A
//! diff that does not start at the version held, a failed request or
//! acknowledgement, or simply time (every
//! [`WHOLE_SET_INTERVAL`]) makes the next request ask for the whole set:
//! the feed stays level-triggered and heals itself.
//!
//! Expiry: every consumer turns each admission's `expires_at` into a local
//! deadline with `admission::admitted` (`received + (expires_at -
//! server_time)`, clamped), recomputed at every apply. The set handed over carries the `server_time` of the latest
//! answer for every admission, including those carried over from earlier
//! answers. That is exactly what a whole answer at that moment would carry
//! (`expires_at` is the control plane's absolute time and does not move
//! unless a change says so), so deadlines are the same as with whole
//! answers, and they are derived from the freshest clock reading rather
//! than from the answer each admission first came in. Admissions already
//! past their expiry at that `server_time` are left out, as the control
//! plane leaves them out of a whole answer.

use control_client::{ClientError, ControlClient};
use proto::api::AccessMode;
use proto::feed::{DiffMismatch, FeedAdmission, FeedMirror, FeedState, FeedUpdate};
use std::time::{Duration, Instant};

/// How often the follower asks for the whole set even though diffs keep
/// coming, so that its copy cannot drift from the control plane's for long.
pub const WHOLE_SET_INTERVAL: Duration = Duration::from_secs(600);

/// One feed request; the answer is a diff (`base` set) when the control
/// plane still remembers version `after`, otherwise the whole set.
pub async fn fetch(
    client: &ControlClient,
    after: Option<u64>,
    wait: Duration,
) -> Result<FeedUpdate, ClientError> {
    let path = match after {
        Some(v) => format!(
            "/v1/gateway/feed?diff=true&after={v}&wait_ms={}",
            wait.as_millis()
        ),
        None => "/v1/gateway/feed?diff=true".to_string(),
    };
    let get = "GET".parse().expect("GET is an HTTP method");
    client
        .call(get, &path, None::<&()>, wait + Duration::from_secs(15))
        .await
}

/// What one feed answer asks the gateway to apply: the whole desired set,
/// or the changes on top of the version held before. Every consumer (the
/// admission table, the kernel pre-filter, the direct proxy, the data
/// path) takes it through one `apply`, as a [`FeedChangeRef`].
#[derive(Debug, Clone)]
pub enum FeedChange {
    /// The whole desired set.
    Whole(FeedState),
    /// Changes on top of the version held before: `header` is the answer
    /// with no admissions (version, server time, service address).
    Diff {
        header: FeedState,
        changed: Vec<FeedAdmission>,
        removed: Vec<String>,
    },
}

impl FeedChange {
    pub fn as_ref(&self) -> FeedChangeRef<'_> {
        FeedChangeRef::from(self)
    }

    /// The same change with the tunnel admissions only (what the data
    /// path takes; direct admissions are the pre-filter's and the direct
    /// proxy's).
    pub fn tunnel_only(mut self) -> FeedChange {
        let tunnel = |a: &FeedAdmission| a.mode == AccessMode::Tunnel;
        match &mut self {
            FeedChange::Whole(state) => state.admissions.retain(tunnel),
            FeedChange::Diff { changed, .. } => changed.retain(tunnel),
        }
        self
    }
}

/// A feed change, borrowed: what each consumer's `apply` takes. A whole
/// `&FeedState` converts into one, so `apply(&state, now)` applies a whole
/// set.
#[derive(Debug, Clone, Copy)]
pub enum FeedChangeRef<'a> {
    Whole(&'a FeedState),
    Diff {
        header: &'a FeedState,
        changed: &'a [FeedAdmission],
        removed: &'a [String],
    },
}

impl<'a> FeedChangeRef<'a> {
    /// A diff: `changed` admissions and `removed` ids on top of what is
    /// held, with the answer's `header` (its admissions are not looked at).
    pub fn diff(
        header: &'a FeedState,
        changed: &'a [FeedAdmission],
        removed: &'a [String],
    ) -> FeedChangeRef<'a> {
        FeedChangeRef::Diff {
            header,
            changed,
            removed,
        }
    }

    /// The answer's version, server time and service address (for a whole
    /// set, the set itself).
    pub fn header(&self) -> &'a FeedState {
        match *self {
            FeedChangeRef::Whole(state) => state,
            FeedChangeRef::Diff { header, .. } => header,
        }
    }

    /// `whole` or `diff` (the metrics' label).
    pub fn kind(&self) -> &'static str {
        match self {
            FeedChangeRef::Whole(_) => "whole",
            FeedChangeRef::Diff { .. } => "diff",
        }
    }
}

impl<'a> From<&'a FeedState> for FeedChangeRef<'a> {
    fn from(state: &'a FeedState) -> Self {
        FeedChangeRef::Whole(state)
    }
}

impl<'a> From<&'a FeedChange> for FeedChangeRef<'a> {
    fn from(change: &'a FeedChange) -> Self {
        match change {
            FeedChange::Whole(state) => FeedChangeRef::Whole(state),
            FeedChange::Diff {
                header,
                changed,
                removed,
            } => FeedChangeRef::Diff {
                header,
                changed,
                removed,
            },
        }
    }
}

/// The desired set as the gateway holds it, and what to ask for next.
#[derive(Debug, Default)]
pub struct DesiredSet {
    mirror: FeedMirror,
    /// When the last whole set arrived.
    whole_at: Option<Instant>,
    /// The next request must ask for the whole set.
    want_whole: bool,
}

impl DesiredSet {
    pub fn new() -> DesiredSet {
        DesiredSet::default()
    }

    /// The `after` of the next request: the version held, or `None` to
    /// ask for the whole set (nothing held yet, after a failure, or when
    /// the last whole set is older than [`WHOLE_SET_INTERVAL`]).
    pub fn next_after(&self, now: Instant) -> Option<u64> {
        if self.want_whole {
            return None;
        }
        let fresh = self
            .whole_at
            .is_some_and(|t| now.saturating_duration_since(t) < WHOLE_SET_INTERVAL);
        self.mirror.version().filter(|_| fresh)
    }

    /// Asks for the whole set next time: the last answer may not have been
    /// applied or acknowledged, and a request with `after` equal to the
    /// current version would wait instead of answering at once.
    pub fn refetch(&mut self) {
        self.want_whole = true;
    }

    /// The version held, if any.
    pub fn version(&self) -> Option<u64> {
        self.mirror.version()
    }

    pub fn mirror(&self) -> &FeedMirror {
        &self.mirror
    }

    /// Takes in one answer. A whole set comes back whole; a diff that fits
    /// comes back as the diff (the answer's header, its changed admissions
    /// and removed ids), without building the whole set, so applying it
    /// costs what the change costs. A diff that does not fit changes
    /// nothing and asks for the whole set next.
    pub fn absorb_update(
        &mut self,
        update: FeedUpdate,
        now: Instant,
    ) -> Result<FeedChange, DiffMismatch> {
        let whole = update.is_full();
        let diff = (!whole).then(|| FeedChange::Diff {
            header: FeedState {
                server: update.server.clone(),
                version: update.version,
                server_time: update.server_time,
                service_address: update.service_address,
                admissions: Vec::new(),
            },
            changed: update.admissions.clone(),
            removed: update.removed.clone(),
        });
        if let Err(e) = self.mirror.apply(update) {
            self.want_whole = true;
            return Err(e);
        }
        if whole {
            self.whole_at = Some(now);
        }
        self.want_whole = false;
        Ok(match diff {
            Some(diff) => diff,
            None => FeedChange::Whole(self.held()),
        })
    }

    /// Takes in one answer and returns the whole desired set to apply (see
    /// [`DesiredSet::absorb_update`]).
    pub fn absorb(&mut self, update: FeedUpdate, now: Instant) -> Result<FeedState, DiffMismatch> {
        self.absorb_update(update, now)?;
        Ok(self.held())
    }

    /// The whole desired set held, once an answer has been taken in.
    fn held(&self) -> FeedState {
        self.mirror
            .state()
            .expect("a mirror that took in an answer has a state")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proto::feed::FeedAdmission;
    use proto::WgKey;
    use std::net::Ipv4Addr;
    use testkit::feed;
    use time::macros::datetime;

    pub(crate) fn adm(n: u8, minutes: i64) -> FeedAdmission {
        FeedAdmission {
            client_address: Some(Ipv4Addr::new(100, 64, 0, n)),
            expires_at: feed::SERVER_TIME + time::Duration::minutes(minutes),
            ..feed::tunnel(&format!("adm_{n}"), WgKey([n; 32]), feed::ip("203.0.113.7"))
        }
    }

    pub(crate) fn update(version: u64, base: Option<u64>, minute: i64) -> FeedUpdate {
        FeedUpdate {
            server_time: feed::SERVER_TIME + time::Duration::minutes(minute),
            ..feed::update(version, base)
        }
    }

    #[test]
    fn asks_for_the_whole_set_until_it_has_one_and_after_trouble() {
        let t0 = Instant::now();
        let mut d = DesiredSet::new();
        assert_eq!(d.next_after(t0), None);
        let mut whole = update(4, None, 0);
        whole.admissions = vec![adm(2, 60)];
        let st = d.absorb(whole, t0).unwrap();
        assert_eq!(st.admissions, vec![adm(2, 60)]);
        assert_eq!(d.next_after(t0), Some(4));

        // A diff from another version: refused, whole set next.
        let mut wrong = update(6, Some(5), 1);
        wrong.removed = vec!["adm_2".into()];
        assert!(d.absorb(wrong, t0).is_err());
        assert_eq!(d.next_after(t0), None);
        assert_eq!(d.version(), Some(4));
        assert_eq!(d.mirror().len(), 1);

        // A fitting diff is fine again.
        let mut diff = update(5, Some(4), 1);
        diff.admissions = vec![adm(3, 60)];
        let st = d.absorb(diff, t0).unwrap();
        assert_eq!(st.admissions, vec![adm(2, 60), adm(3, 60)]);
        assert_eq!(d.next_after(t0), Some(5));

        d.refetch();
        assert_eq!(d.next_after(t0), None);
        d.absorb(update(5, Some(5), 2), t0).unwrap();
        assert_eq!(d.next_after(t0), Some(5));

        // Long after the last whole set: ask for one again.
        assert_eq!(d.next_after(t0 + WHOLE_SET_INTERVAL), None);
    }

    #[test]
    fn carried_over_admissions_take_the_latest_server_time() {
        let t0 = Instant::now();
        let mut d = DesiredSet::new();
        let mut whole = update(1, None, 0);
        whole.admissions = vec![adm(2, 10), adm(3, 30)];
        d.absorb(whole, t0).unwrap();
        // 20 minutes later (control plane clock) a diff adds one; the
        // state handed to the data path says 20:20 for all of them, so
        // adm_2 (expired at 20:10) is gone and adm_3 has 10 minutes left.
        let mut diff = update(2, Some(1), 20);
        diff.admissions = vec![adm(4, 60)];
        let st = d.absorb(diff, t0).unwrap();
        assert_eq!(st.server_time, datetime!(2026-11-25 20:20 UTC));
        assert_eq!(st.admissions, vec![adm(3, 30), adm(4, 60)]);
        assert_eq!(
            st.admissions[0].expires_at - st.server_time,
            time::Duration::minutes(10)
        );
    }
}
