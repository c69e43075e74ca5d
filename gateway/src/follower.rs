//! The feed follower, sans IO: what the gateway does with the control
//! plane's feed, as a state machine with no sockets, tasks or clock.
//!
//! The IO shell (`shell`) feeds it [`Input`]s (a feed answer or a failed
//! request, the pre-filter's, direct proxy's and data path's "applied",
//! the acknowledgement's result, a pinning from the data path, a pin's
//! result) with the `now` they happened at, and executes the [`Action`]s
//! it polls out. One feed version goes through these steps, one at a
//! time, each started only when the one before reported back:
//!
//! 1. [`Action::Fetch`]: ask the feed (`after` the version held, or the
//!    whole set), not before `at`.
//! 2. [`Action::ApplyFilter`]: the kernel pre-filter first, so that a
//!    version is acknowledged only once its sources (tunnel and direct)
//!    are admitted there. It gets the answer as a diff only while it holds
//!    the version before; after a refusal, the whole set.
//! 3. [`Action::ApplyDirect`]: the direct proxy.
//! 4. [`Action::ApplyDataPath`]: the data path, with the tunnel admissions
//!    only. Removals must take effect even when the kernel refused the
//!    version, so user space applies every version.
//! 5. [`Action::Ack`]: only after all three, and only if the kernel took
//!    the version; a refusal instead asks for the whole set again after a
//!    backoff, unacknowledged.
//!
//! Failed requests, kernel refusals and failed acknowledgements back off
//! (100 ms doubling to [`FEED_RETRY_MAX`], each delay ×0.5–1.5); only an
//! acknowledged version starts the backoff again from its base, so a
//! pre-filter that keeps refusing is not asked again every 100 ms.
//! Meanwhile the data path keeps enforcing what it has until each
//! admission expires (fail-static) and nothing new can be admitted
//! (fail-closed). A diff that does not fit asks for the whole set at once.
//!
//! Pinnings (a first-handshake admission's first handshake, from the data
//! path) become [`Action::Pin`]: the pre-filter must admit that source
//! before the open window closes. A failed pin is tried again,
//! [`PIN_ATTEMPTS`] (5) attempts in all, 200 ms × attempt apart, one
//! pinning at a time.

use crate::feed::{DesiredSet, FeedChange};
use crate::filter::plan::PlanError;
use proto::backoff::Backoff;
use proto::feed::FeedUpdate;
use proto::reach::ReachabilityView;
use rand::RngCore;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first wait after a failed feed request (before jitter).
pub const FEED_RETRY_BASE: Duration = Duration::from_millis(100);

/// The longest wait between two attempts to reach the control plane's
/// feed (before jitter of 0.5x to 1.5x). While the gateway is away from
/// the feed nobody can be admitted (the control plane answers "gateway
/// offline"), so after a control plane restart every client waiting for
/// an admission waits for this retry too; one request every couple of
/// seconds from one gateway costs the control plane nothing.
pub const FEED_RETRY_MAX: Duration = Duration::from_secs(2);

/// How each feed delay is scattered: ×(1 ± this).
const FEED_JITTER: f64 = 0.5;

/// How many times the pre-filter is asked to admit one pinned source.
pub const PIN_ATTEMPTS: u32 = 5;

/// The wait after a failed pin is this times the attempt's number.
pub const PIN_RETRY_STEP: Duration = Duration::from_millis(200);

/// What happened, for the follower to take in.
#[derive(Debug)]
pub enum Input {
    /// The feed answered, or the request failed.
    Fetched(Result<FeedUpdate, FetchError>),
    /// The kernel pre-filter took the change (with the admissions it
    /// could not represent), or refused it.
    FilterApplied(Result<Vec<PlanError>, String>),
    /// The direct proxy took the change.
    DirectApplied,
    /// The data path took the change (false: it has stopped).
    DataPathApplied(bool),
    /// The control plane took the acknowledgement, or it failed.
    Acked(Result<(), String>),
    /// The data path pinned first-handshake admission `admission` to
    /// `source`.
    Pinned { admission: String, source: IpAddr },
    /// The pre-filter admitted the pinned source (true), had nothing to
    /// do (false), or failed.
    PinApplied(Result<bool, String>),
}

/// A failed feed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// The HTTP status of the control plane's refusal, if it answered.
    pub status: Option<u16>,
    pub message: String,
}

/// What the follower asks the shell to do.
#[derive(Debug)]
pub enum Action {
    /// Ask the feed for what changed after version `after` (`None`: the
    /// whole set), not before `at`; answer with [`Input::Fetched`].
    Fetch { after: Option<u64>, at: Instant },
    /// Apply `change` (received at `received`) to the kernel pre-filter;
    /// answer with [`Input::FilterApplied`].
    ApplyFilter {
        change: Arc<FeedChange>,
        received: Instant,
    },
    /// Apply `change` to the direct proxy; answer with
    /// [`Input::DirectApplied`].
    ApplyDirect {
        change: Arc<FeedChange>,
        received: Instant,
    },
    /// Apply `change` (tunnel admissions only, received at `received`:
    /// admission deadlines count from there, as in the pre-filter and the
    /// direct proxy) on the data path; answer with
    /// [`Input::DataPathApplied`].
    ApplyDataPath {
        change: FeedChange,
        received: Instant,
    },
    /// Acknowledge `version` to the control plane; answer with
    /// [`Input::Acked`].
    Ack { version: u64 },
    /// Admit `source` for first-handshake admission `admission` in the
    /// pre-filter, not before `at`; answer with [`Input::PinApplied`].
    Pin {
        admission: String,
        source: IpAddr,
        at: Instant,
    },
    /// Health and metrics, as plain data.
    Report(Report),
    /// The data path has stopped: the feed stops too.
    Stop,
}

/// What the status and the metrics learn from the follower.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A feed answer was taken in (`kind`: `whole` or `diff`).
    Took { kind: &'static str },
    /// `version` is applied everywhere and acknowledged; it arrived at
    /// `received`.
    Acked {
        version: u64,
        server: String,
        reachability: Option<ReachabilityView>,
        received: Instant,
    },
    /// A feed request failed.
    Lost { error: String },
}

/// Where the follower stands in one version's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fetching,
    Filter,
    Direct,
    DataPath,
    Acking,
    Stopped,
}

/// The version going through the steps.
#[derive(Debug)]
struct Applying {
    change: Option<Arc<FeedChange>>,
    version: u64,
    server: String,
    reachability: Option<ReachabilityView>,
    received: Instant,
    /// Whether the kernel pre-filter took it (true without one).
    kernel_ok: bool,
}

/// The feed follower. `R` scatters the backoff (any [`RngCore`]; tests
/// pass a seeded one).
#[derive(Debug)]
pub struct Follower<R> {
    desired: DesiredSet,
    filter: bool,
    direct: bool,
    /// Whether the pre-filter holds the version the mirror holds, so that
    /// the next diff can be applied to it as a diff.
    filter_synced: bool,
    backoff: Backoff,
    rng: R,
    step: Step,
    applying: Option<Applying>,
    /// The last feed request and acknowledgement went through.
    connected: bool,
    /// A feed request failed since the last acknowledgement.
    failing: bool,
    /// Pinnings waiting for the pre-filter, the first one in progress.
    pins: VecDeque<(String, IpAddr)>,
    /// The attempt in progress for the first pinning (0: none).
    pin_attempt: u32,
    actions: VecDeque<Action>,
}

impl<R: RngCore> Follower<R> {
    /// A follower for a gateway with (`filter`) or without the kernel
    /// pre-filter, and with (`direct`) or without direct services. Its
    /// first action asks for the whole set at `now`.
    pub fn new(filter: bool, direct: bool, rng: R, now: Instant) -> Follower<R> {
        let mut f = Follower {
            desired: DesiredSet::new(),
            filter,
            direct,
            filter_synced: false,
            backoff: Backoff::new(FEED_RETRY_BASE, FEED_RETRY_MAX).with_jitter(FEED_JITTER),
            rng,
            step: Step::Fetching,
            applying: None,
            connected: false,
            failing: false,
            pins: VecDeque::new(),
            pin_attempt: 0,
            actions: VecDeque::new(),
        };
        f.fetch(now);
        f
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes in what happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Fetched(result) if self.step == Step::Fetching => self.fetched(result, now),
            Input::FilterApplied(result) if self.step == Step::Filter => {
                self.filter_applied(result, now)
            }
            Input::DirectApplied if self.step == Step::Direct => self.apply_data_path(now),
            Input::DataPathApplied(applied) if self.step == Step::DataPath => {
                self.data_path_applied(applied, now)
            }
            Input::Acked(result) if self.step == Step::Acking => self.acked(result, now),
            Input::Pinned { admission, source } => self.pinned(admission, source, now),
            Input::PinApplied(result) if self.pin_attempt > 0 => self.pin_applied(result, now),
            other => {
                tracing::debug!(input = ?other, step = ?self.step, "feed follower: input out of turn, ignored")
            }
        }
    }

    /// Asks the feed again at `at` (for the whole set after trouble).
    fn fetch(&mut self, at: Instant) {
        self.step = Step::Fetching;
        self.applying = None;
        self.actions.push_back(Action::Fetch {
            after: self.desired.next_after(at),
            at,
        });
    }

    /// Asks for the whole set again after the next backoff delay.
    fn retry(&mut self, now: Instant) {
        self.desired.refetch();
        let delay = self.backoff.next_delay(&mut self.rng);
        self.fetch(now + delay);
    }

    /// A step found no version (or no change) in progress, which the
    /// step guards in `handle` rule out. Returning quietly would leave
    /// nothing in flight and the feed stalled for ever: say so, and start
    /// again from the whole set.
    fn impossible(&mut self, what: &str, now: Instant) {
        tracing::error!(step = ?self.step, "feed follower bug: {what} with no version in progress; asking for the whole set again");
        self.retry(now);
    }

    fn fetched(&mut self, result: Result<FeedUpdate, FetchError>, now: Instant) {
        let update = match result {
            Ok(update) => update,
            Err(e) => {
                self.lost(e);
                self.retry(now);
                return;
            }
        };
        // No backoff reset here: an answer the kernel then refuses is
        // no success (only an acknowledgement is, see `acked`).
        let received = now;
        // issue 17: the control plane's reachability check, for the status.
        let reachability = update.reachability.clone();
        // A diff goes to the pre-filter, the direct proxy and the data
        // path as a diff: applying it then costs what the change costs,
        // not what the whole set does.
        let change = match self.desired.absorb_update(update, received) {
            Ok(change) => change,
            Err(e) => {
                tracing::info!(error = %e, "feed diff does not fit");
                self.fetch(now);
                return;
            }
        };
        let header = change.as_ref().header();
        let (version, server) = (header.version, header.server.clone());
        self.actions.push_back(Action::Report(Report::Took {
            kind: change.as_ref().kind(),
        }));
        let change = Arc::new(change);
        self.applying = Some(Applying {
            change: Some(change.clone()),
            version,
            server,
            reachability,
            received,
            kernel_ok: true,
        });
        if !self.filter {
            return self.apply_direct(now);
        }
        // A pre-filter that missed a version takes the whole set, never a
        // diff.
        let for_filter = match change.as_ref() {
            FeedChange::Diff { .. } if !self.filter_synced => Arc::new(FeedChange::Whole(
                self.desired
                    .mirror()
                    .state()
                    .expect("a mirror that took a diff has a state"),
            )),
            _ => change,
        };
        self.step = Step::Filter;
        self.actions.push_back(Action::ApplyFilter {
            change: for_filter,
            received,
        });
    }

    fn lost(&mut self, e: FetchError) {
        if self.connected || !self.failing {
            if e.status == Some(401) {
                tracing::error!(error = %e.message, "the control plane no longer accepts this gateway's credential (revoked, replaced, or the server removed); existing admissions stay until they expire; re-enroll: run 'hushgate admin server reenroll NAME' on the control plane and restart the gateway with the new token");
            } else {
                tracing::warn!(error = %e.message, "lost the control plane feed; existing admissions stay until they expire, retrying");
            }
        }
        self.connected = false;
        self.failing = true;
        self.actions
            .push_back(Action::Report(Report::Lost { error: e.message }));
    }

    fn filter_applied(&mut self, result: Result<Vec<PlanError>, String>, now: Instant) {
        self.filter_synced = result.is_ok();
        let Some(applying) = self.applying.as_mut() else {
            return self.impossible("the pre-filter applied", now);
        };
        match result {
            Ok(unrepresentable) => {
                for e in unrepresentable {
                    let PlanError::UnknownDirectService { id, .. } = &e;
                    tracing::warn!(admission = %id, error = %e, "admission left out of the pre-filter");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the pre-filter could not take feed version {}; applying it in user space but not acknowledging it, retrying", applying.version);
                applying.kernel_ok = false;
            }
        }
        self.apply_direct(now);
    }

    fn apply_direct(&mut self, now: Instant) {
        if !self.direct {
            return self.apply_data_path(now);
        }
        let Some(applying) = self.applying.as_ref() else {
            return self.impossible("the direct proxy's turn", now);
        };
        let Some(change) = applying.change.clone() else {
            return self.impossible("the direct proxy's turn", now);
        };
        self.step = Step::Direct;
        self.actions.push_back(Action::ApplyDirect {
            change,
            received: applying.received,
        });
    }

    fn apply_data_path(&mut self, now: Instant) {
        let Some((change, received)) = self
            .applying
            .as_mut()
            .and_then(|a| Some((a.change.take()?, a.received)))
        else {
            return self.impossible("the data path's turn", now);
        };
        // The pre-filter and the direct proxy are done with it by now, so
        // this is the only reference and nothing is copied.
        let change = Arc::unwrap_or_clone(change).tunnel_only();
        self.step = Step::DataPath;
        self.actions
            .push_back(Action::ApplyDataPath { change, received });
    }

    fn data_path_applied(&mut self, applied: bool, now: Instant) {
        if !applied {
            tracing::error!("the data path has stopped; the feed stops too");
            self.step = Step::Stopped;
            self.applying = None;
            self.actions.push_back(Action::Stop);
            return;
        }
        let Some(applying) = self.applying.as_ref() else {
            return self.impossible("the data path applied", now);
        };
        if !applying.kernel_ok {
            return self.retry(now);
        }
        self.step = Step::Acking;
        self.actions.push_back(Action::Ack {
            version: applying.version,
        });
    }

    fn acked(&mut self, result: Result<(), String>, now: Instant) {
        let Some(applying) = self.applying.take() else {
            return self.impossible("the acknowledgement's result", now);
        };
        match result {
            Ok(()) => {
                self.backoff.reset();
                self.connected = true;
                self.failing = false;
                self.actions.push_back(Action::Report(Report::Acked {
                    version: applying.version,
                    server: applying.server,
                    reachability: applying.reachability,
                    received: applying.received,
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "acknowledging feed version {} failed; fetching the whole set again after a backoff", applying.version);
                return self.retry(now);
            }
        }
        self.fetch(now);
    }

    fn pinned(&mut self, admission: String, source: IpAddr, now: Instant) {
        if !self.filter {
            return;
        }
        // The data path may report the same pinning again (a repeated
        // first handshake): one entry per pair keeps the queue bounded by
        // the admissions there are, and the pre-filter asked once.
        if self
            .pins
            .iter()
            .any(|(a, s)| *a == admission && *s == source)
        {
            tracing::debug!(%admission, %source, "pinning already queued");
            return;
        }
        self.pins.push_back((admission, source));
        if self.pin_attempt == 0 {
            self.pin_next(now);
        }
    }

    /// Starts on the first pinning waiting, if any.
    fn pin_next(&mut self, now: Instant) {
        self.pin_attempt = 0;
        if let Some((admission, source)) = self.pins.front() {
            self.pin_attempt = 1;
            self.actions.push_back(Action::Pin {
                admission: admission.clone(),
                source: *source,
                at: now,
            });
        }
    }

    fn pin_applied(&mut self, result: Result<bool, String>, now: Instant) {
        let Some((admission, source)) = self.pins.front().cloned() else {
            return;
        };
        let attempt = self.pin_attempt;
        match result {
            Ok(true) => {
                tracing::info!(%admission, %source, "pre-filter admits the pinned source")
            }
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%admission, %source, attempt, %error, "pre-filter could not admit the pinned source");
                if attempt < PIN_ATTEMPTS {
                    // A pinned client must be admitted before its open
                    // window closes: try again soon rather than waiting for
                    // the next feed answer.
                    self.pin_attempt += 1;
                    self.actions.push_back(Action::Pin {
                        admission,
                        source,
                        at: now + PIN_RETRY_STEP * attempt,
                    });
                    return;
                }
            }
        }
        self.pins.pop_front();
        self.pin_next(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::tests as feed_tests;
    use proto::api::AccessMode;
    use proto::feed::FeedAdmission;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn adm(n: u8, mode: AccessMode) -> FeedAdmission {
        FeedAdmission {
            mode,
            ..feed_tests::adm(n, 60)
        }
    }

    fn update(version: u64, base: Option<u64>, admissions: Vec<FeedAdmission>) -> FeedUpdate {
        FeedUpdate {
            admissions,
            ..feed_tests::update(version, base, 0)
        }
    }

    fn follower(filter: bool, direct: bool, t0: Instant) -> Follower<StdRng> {
        Follower::new(filter, direct, StdRng::seed_from_u64(7), t0)
    }

    fn drain(f: &mut Follower<StdRng>) -> Vec<Action> {
        std::iter::from_fn(|| f.poll_action()).collect()
    }

    fn fetch_of(actions: &[Action]) -> Option<(Option<u64>, Instant)> {
        actions.iter().find_map(|a| match a {
            Action::Fetch { after, at } => Some((*after, *at)),
            _ => None,
        })
    }

    fn is_whole(change: &FeedChange) -> bool {
        matches!(change, FeedChange::Whole(_))
    }

    /// Hands `f` a feed answer; returns what it gives the pre-filter.
    fn to_filter(f: &mut Follower<StdRng>, answer: FeedUpdate, now: Instant) -> Arc<FeedChange> {
        f.handle(Input::Fetched(Ok(answer)), now);
        let acts = drain(f);
        match &acts[..] {
            [Action::Report(Report::Took { .. }), Action::ApplyFilter { change, .. }] => {
                change.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    /// Takes `f` (fresh, with a filter, without direct services) through
    /// version 1 as a whole set, acknowledged.
    fn synced(f: &mut Follower<StdRng>, t: Instant) {
        drain(f);
        let v1 = update(1, None, vec![adm(1, AccessMode::Tunnel)]);
        f.handle(Input::Fetched(Ok(v1)), t);
        f.handle(Input::FilterApplied(Ok(vec![])), t);
        f.handle(Input::DataPathApplied(true), t);
        f.handle(Input::Acked(Ok(())), t);
        drain(f);
    }

    #[test]
    fn a_version_goes_filter_direct_data_path_and_only_then_is_acknowledged() {
        let t0 = Instant::now();
        let mut f = follower(true, true, t0);
        assert_eq!(fetch_of(&drain(&mut f)), Some((None, t0)));

        let t1 = t0 + Duration::from_millis(5);
        let v1 = update(
            1,
            None,
            vec![adm(1, AccessMode::Tunnel), adm(2, AccessMode::Direct)],
        );
        f.handle(Input::Fetched(Ok(v1)), t1);
        let acts = drain(&mut f);
        assert!(matches!(
            &acts[0],
            Action::Report(Report::Took { kind: "whole" })
        ));
        let [_, Action::ApplyFilter { change, received }] = &acts[..] else {
            panic!("{acts:?}");
        };
        assert!(is_whole(change));
        assert_eq!(*received, t1);

        // Completions out of turn change nothing: no ack, no data path.
        f.handle(Input::DataPathApplied(true), t1);
        f.handle(Input::Acked(Ok(())), t1);
        f.handle(Input::DirectApplied, t1);
        assert!(drain(&mut f).is_empty());

        f.handle(Input::FilterApplied(Ok(vec![])), t1);
        let acts = drain(&mut f);
        let [Action::ApplyDirect { change, .. }] = &acts[..] else {
            panic!("{acts:?}");
        };
        let FeedChange::Whole(state) = change.as_ref() else {
            panic!("{change:?}");
        };
        assert_eq!(state.admissions.len(), 2, "the direct proxy sees both");
        drop(acts);

        f.handle(Input::DirectApplied, t1);
        let acts = drain(&mut f);
        let [Action::ApplyDataPath {
            change: FeedChange::Whole(state),
            received,
        }] = &acts[..]
        else {
            panic!("{acts:?}");
        };
        assert_eq!(*received, t1, "deadlines count from the answer");
        assert_eq!(
            state
                .admissions
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>(),
            ["adm_1"],
            "the data path takes tunnel admissions only"
        );
        f.handle(Input::Acked(Ok(())), t1);
        assert!(drain(&mut f).is_empty(), "no ack before the data path");

        f.handle(Input::DataPathApplied(true), t1);
        let acts = drain(&mut f);
        assert!(matches!(acts[..], [Action::Ack { version: 1 }]), "{acts:?}");

        let t2 = t1 + Duration::from_millis(30);
        f.handle(Input::Acked(Ok(())), t2);
        let acts = drain(&mut f);
        assert!(
            matches!(&acts[0], Action::Report(Report::Acked { version: 1, received, .. }) if *received == t1),
            "{acts:?}"
        );
        assert_eq!(fetch_of(&acts), Some((Some(1), t2)));
    }

    #[test]
    fn without_a_filter_or_direct_services_the_data_path_comes_first() {
        let t0 = Instant::now();
        let mut f = follower(false, false, t0);
        drain(&mut f);
        f.handle(
            Input::Fetched(Ok(update(1, None, vec![adm(1, AccessMode::Tunnel)]))),
            t0,
        );
        let acts = drain(&mut f);
        assert!(
            matches!(acts[..], [Action::Report(_), Action::ApplyDataPath { .. }]),
            "{acts:?}"
        );
        f.handle(Input::DataPathApplied(true), t0);
        assert!(matches!(drain(&mut f)[..], [Action::Ack { version: 1 }]));
        // Pinnings have no pre-filter to go to.
        f.handle(
            Input::Pinned {
                admission: "adm_1".into(),
                source: "192.0.2.1".parse().unwrap(),
            },
            t0,
        );
        assert!(drain(&mut f).is_empty());
    }

    #[test]
    fn the_filter_takes_a_diff_only_while_it_holds_the_version_before() {
        let t0 = Instant::now();
        let mut f = follower(true, false, t0);
        synced(&mut f, t0);

        // In step: the diff goes to the filter as a diff.
        let change = to_filter(
            &mut f,
            update(2, Some(1), vec![adm(2, AccessMode::Tunnel)]),
            t0,
        );
        assert!(!is_whole(&change));
        drop(change);

        // The kernel refuses it: user space still applies it, nothing is
        // acknowledged, and the whole set is asked for after a backoff.
        let t1 = t0 + Duration::from_secs(1);
        f.handle(Input::FilterApplied(Err("refused".into())), t1);
        let acts = drain(&mut f);
        let [Action::ApplyDataPath { change, .. }] = &acts[..] else {
            panic!("{acts:?}");
        };
        assert!(!is_whole(change), "the data path held version 1: a diff");
        drop(acts);
        f.handle(Input::DataPathApplied(true), t1);
        let acts = drain(&mut f);
        assert!(!acts.iter().any(|a| matches!(a, Action::Ack { .. })));
        let (after, at) = fetch_of(&acts).expect("fetches again");
        assert_eq!(after, None, "the whole set");
        let delay = at - t1;
        assert!(
            delay >= FEED_RETRY_BASE / 2 && delay <= FEED_RETRY_BASE * 3 / 2,
            "{delay:?}"
        );

        // The next answer is a diff that fits the mirror, but the filter
        // missed version 2: it gets the whole set.
        let change = to_filter(
            &mut f,
            update(3, Some(2), vec![adm(3, AccessMode::Tunnel)]),
            at,
        );
        let FeedChange::Whole(state) = change.as_ref() else {
            panic!("{change:?}");
        };
        assert_eq!((state.version, state.admissions.len()), (3, 3));
        drop(change);
        f.handle(Input::FilterApplied(Ok(vec![])), at);
        let acts = drain(&mut f);
        assert!(
            matches!(&acts[..], [Action::ApplyDataPath { change: c, .. }] if !is_whole(c)),
            "the data path held version 2: {acts:?}"
        );
        f.handle(Input::DataPathApplied(true), at);
        assert!(matches!(drain(&mut f)[..], [Action::Ack { version: 3 }]));
        f.handle(Input::Acked(Ok(())), at);
        drain(&mut f);

        // In step again: diffs go as diffs.
        assert!(!is_whole(&to_filter(
            &mut f,
            update(4, Some(3), vec![]),
            at
        )));
    }

    #[test]
    fn failed_requests_back_off_doubling_to_the_maximum_with_jitter() {
        let t0 = Instant::now();
        let mut f = follower(true, false, t0);
        synced(&mut f, t0);
        let mut now = t0;
        let mut base = FEED_RETRY_BASE;
        for round in 0..8 {
            let status = if round % 2 == 0 { Some(401) } else { None };
            f.handle(
                Input::Fetched(Err(FetchError {
                    status,
                    message: format!("failure {round}"),
                })),
                now,
            );
            let acts = drain(&mut f);
            assert!(
                matches!(&acts[0], Action::Report(Report::Lost { error }) if *error == format!("failure {round}")),
                "{acts:?}"
            );
            let (after, at) = fetch_of(&acts).expect("retries");
            assert_eq!(after, None, "after trouble: the whole set");
            let delay = at - now;
            assert!(
                delay >= base / 2 && delay <= base * 3 / 2,
                "round {round}: {delay:?} for {base:?}"
            );
            base = (base * 2).min(FEED_RETRY_MAX);
            now = at;
        }
        assert_eq!(base, FEED_RETRY_MAX);

        // An answer the kernel refuses is no success: the backoff stays
        // at its maximum.
        f.handle(Input::Fetched(Ok(update(1, None, vec![]))), now);
        f.handle(Input::FilterApplied(Err("refused".into())), now);
        f.handle(Input::DataPathApplied(true), now);
        let (_, at) = fetch_of(&drain(&mut f)).expect("retries");
        assert!(at - now >= FEED_RETRY_MAX / 2, "{:?}", at - now);
        now = at;

        // An acknowledged version starts the backoff again from its base.
        f.handle(Input::Fetched(Ok(update(1, None, vec![]))), now);
        f.handle(Input::FilterApplied(Ok(vec![])), now);
        f.handle(Input::DataPathApplied(true), now);
        f.handle(Input::Acked(Ok(())), now);
        assert_eq!(fetch_of(&drain(&mut f)), Some((Some(1), now)));
        f.handle(
            Input::Fetched(Err(FetchError {
                status: None,
                message: "down".into(),
            })),
            now,
        );
        let (_, at) = fetch_of(&drain(&mut f)).expect("retries");
        assert!(at - now <= FEED_RETRY_BASE * 3 / 2, "{:?}", at - now);
    }

    /// Takes `f` (with a filter, without direct services, fetching) through
    /// one answer of version `version` whose kernel pre-filter answers
    /// `filter` and, if the kernel took it, whose acknowledgement answers
    /// `ack`; returns the delay before the next fetch and its `at`.
    fn round(
        f: &mut Follower<StdRng>,
        version: u64,
        filter: Result<Vec<PlanError>, String>,
        ack: Result<(), String>,
        now: Instant,
    ) -> (Duration, Instant) {
        let kernel_ok = filter.is_ok();
        f.handle(Input::Fetched(Ok(update(version, None, vec![]))), now);
        f.handle(Input::FilterApplied(filter), now);
        f.handle(Input::DataPathApplied(true), now);
        if kernel_ok {
            assert!(matches!(
                drain(f)[..],
                [.., Action::Ack { version: v }] if v == version
            ));
            f.handle(Input::Acked(ack), now);
        }
        let acts = drain(f);
        assert!(!acts.iter().any(|a| matches!(a, Action::Ack { .. })));
        let (after, at) = fetch_of(&acts).expect("fetches again");
        assert_eq!(after, None, "after trouble: the whole set");
        (at - now, at)
    }

    #[test]
    fn kernel_refusals_and_failed_acks_in_a_row_back_off_growing() {
        let t0 = Instant::now();
        let mut f = follower(true, false, t0);
        synced(&mut f, t0);
        let mut now = t0;
        let mut base = FEED_RETRY_BASE;
        let mut delays = vec![];
        for n in 0..3 {
            let (delay, at) = round(&mut f, 2 + n, Err("refused".into()), Ok(()), now);
            assert!(
                delay >= base / 2 && delay <= base * 3 / 2,
                "refusal {n}: {delay:?} for {base:?}"
            );
            delays.push(delay);
            base *= 2;
            now = at;
        }
        // Jitter may swap two neighbours, never the first and the third.
        assert!(delays[2] > delays[0], "{delays:?}");

        // Failed acknowledgements keep growing the same backoff.
        for n in 0..2 {
            let (delay, at) = round(&mut f, 5 + n, Ok(vec![]), Err("reset".into()), now);
            assert!(
                delay >= base / 2 && delay <= base * 3 / 2,
                "failed ack {n}: {delay:?} for {base:?}"
            );
            base = (base * 2).min(FEED_RETRY_MAX);
            now = at;
        }
    }

    #[test]
    fn a_diff_that_does_not_fit_asks_for_the_whole_set_at_once_a_failed_ack_after_a_backoff() {
        let t0 = Instant::now();
        let mut f = follower(true, false, t0);
        synced(&mut f, t0);
        let t1 = t0 + Duration::from_secs(3);
        f.handle(Input::Fetched(Ok(update(7, Some(5), vec![]))), t1);
        let acts = drain(&mut f);
        assert!(
            matches!(acts[..], [Action::Fetch { after: None, at }] if at == t1),
            "{acts:?}"
        );

        f.handle(
            Input::Fetched(Ok(update(2, None, vec![adm(1, AccessMode::Tunnel)]))),
            t1,
        );
        f.handle(Input::FilterApplied(Ok(vec![])), t1);
        f.handle(Input::DataPathApplied(true), t1);
        assert!(matches!(
            drain(&mut f)[..],
            [.., Action::Ack { version: 2 }]
        ));
        f.handle(Input::Acked(Err("connection reset".into())), t1);
        let acts = drain(&mut f);
        assert!(
            matches!(acts[..], [Action::Fetch { after: None, at }]
                if at >= t1 + FEED_RETRY_BASE / 2 && at <= t1 + FEED_RETRY_BASE * 3 / 2),
            "{acts:?}"
        );
    }

    #[test]
    fn a_step_with_no_version_in_progress_backs_off_and_fetches_the_whole_set() {
        let t0 = Instant::now();
        // Each completion, reached with its version lost (which `handle`'s
        // step guards rule out, so the state is forced here).
        let cases: [(bool, Step, Input); 5] = [
            (true, Step::Filter, Input::FilterApplied(Ok(vec![]))),
            (
                true,
                Step::Filter,
                Input::FilterApplied(Err("refused".into())),
            ),
            (false, Step::Direct, Input::DirectApplied),
            (false, Step::DataPath, Input::DataPathApplied(true)),
            (false, Step::Acking, Input::Acked(Ok(()))),
        ];
        for (direct, step, input) in cases {
            let label = format!("{step:?} {input:?}");
            let mut f = follower(true, direct, t0);
            synced(&mut f, t0);
            f.step = step;
            f.applying = None;
            f.handle(input, t0);
            let acts = drain(&mut f);
            assert!(
                matches!(acts[..], [Action::Fetch { after: None, at }]
                    if at >= t0 + FEED_RETRY_BASE / 2 && at <= t0 + FEED_RETRY_BASE * 3 / 2),
                "{label}: {acts:?}"
            );
            assert_eq!(f.step, Step::Fetching, "{label}");
        }

        // A version whose change is gone at the direct proxy's turn.
        let mut f = follower(true, true, t0);
        drain(&mut f);
        f.handle(Input::Fetched(Ok(update(1, None, vec![]))), t0);
        drain(&mut f);
        f.applying.as_mut().unwrap().change = None;
        f.handle(Input::FilterApplied(Ok(vec![])), t0);
        assert!(
            matches!(drain(&mut f)[..], [Action::Fetch { after: None, at }] if at > t0),
            "the direct proxy's turn"
        );
    }

    #[test]
    fn a_stopped_data_path_stops_the_feed() {
        let t0 = Instant::now();
        let mut f = follower(true, false, t0);
        drain(&mut f);
        f.handle(Input::Fetched(Ok(update(1, None, vec![]))), t0);
        f.handle(Input::FilterApplied(Ok(vec![])), t0);
        f.handle(Input::DataPathApplied(false), t0);
        assert!(matches!(drain(&mut f)[..], [_, _, _, Action::Stop]));
        f.handle(Input::Acked(Ok(())), t0);
        f.handle(Input::Fetched(Ok(update(2, None, vec![]))), t0);
        assert!(drain(&mut f).is_empty());
    }

    #[test]
    fn a_failed_pin_is_tried_again_a_bounded_number_of_times_then_the_next() {
        let t0 = Instant::now();
        let mut f = follower(true, false, t0);
        drain(&mut f);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        f.handle(
            Input::Pinned {
                admission: "adm_a".into(),
                source: a,
            },
            t0,
        );
        f.handle(
            Input::Pinned {
                admission: "adm_b".into(),
                source: b,
            },
            t0,
        );
        let pin = |acts: &[Action]| match acts {
            [Action::Pin {
                admission,
                source,
                at,
            }] => (admission.clone(), *source, *at),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            pin(&drain(&mut f)),
            ("adm_a".into(), a, t0),
            "one at a time"
        );
        let mut now = t0;
        for attempt in 1..PIN_ATTEMPTS {
            f.handle(Input::PinApplied(Err("busy".into())), now);
            let (id, _, at) = pin(&drain(&mut f));
            assert_eq!(id, "adm_a");
            assert_eq!(at, now + PIN_RETRY_STEP * attempt);
            now = at;
        }
        // The last attempt fails too: on to the next pinning.
        f.handle(Input::PinApplied(Err("busy".into())), now);
        assert_eq!(pin(&drain(&mut f)), ("adm_b".into(), b, now));
        f.handle(Input::PinApplied(Ok(true)), now);
        assert!(drain(&mut f).is_empty());
        // A stray result changes nothing.
        f.handle(Input::PinApplied(Ok(false)), now);
        assert!(drain(&mut f).is_empty());
    }

    #[test]
    fn a_pinning_already_queued_is_not_queued_again() {
        let t0 = Instant::now();
        let mut f = follower(true, false, t0);
        drain(&mut f);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let pinned = |f: &mut Follower<StdRng>, admission: &str, source| {
            f.handle(
                Input::Pinned {
                    admission: admission.into(),
                    source,
                },
                t0,
            )
        };
        // The one in progress, and one waiting, each reported three times;
        // the same admission from another source is another pinning.
        for _ in 0..3 {
            pinned(&mut f, "adm_a", a);
            pinned(&mut f, "adm_b", b);
        }
        pinned(&mut f, "adm_a", b);
        let pins = |f: &mut Follower<StdRng>| {
            drain(f)
                .into_iter()
                .map(|act| match act {
                    Action::Pin {
                        admission, source, ..
                    } => (admission, source),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(pins(&mut f), [("adm_a".to_string(), a)]);
        let mut done = vec![];
        for _ in 0..4 {
            f.handle(Input::PinApplied(Ok(true)), t0);
            done.extend(pins(&mut f));
        }
        assert_eq!(
            done,
            [("adm_b".to_string(), b), ("adm_a".to_string(), b)],
            "each pinning once, in order"
        );
        // Once done, the same pinning may be queued again.
        pinned(&mut f, "adm_a", a);
        assert_eq!(pins(&mut f), [("adm_a".to_string(), a)]);
    }
}
