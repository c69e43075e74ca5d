//! The gateway's take-in of feed answers: `DesiredSet` (the `FeedMirror`
//! that follows whole sets and diffs) and the admission table's `apply`
//! with a diff.
//!
//! Input (structured, `arbitrary`): a sequence of feed answers, whole or
//! diffs, over a small space of ids, keys, tunnel addresses, sources and
//! bindings (so that collisions happen), with time passing in between and
//! first-handshake pinnings. Two tables follow the same answers: one is
//! given each diff as a diff (what the data path does), the other the
//! whole set the mirror holds after it. The documented promise is that
//! both end the same; the harness compares them after every step, as long
//! as the answers never asked for the impossible (two admissions with one
//! key or one tunnel address, or one id twice in an answer: the control
//! plane never sends those, and then which one wins depends on order).
//! Both tables must also stay internally consistent ([`check_table`]).

use arbitrary::{Arbitrary, Unstructured};
use gateway::feed::{DesiredSet, FeedChange};
use gateway::{AdmissionError, AdmissionTable, ApplyOutcome, Pinning, SourceStatus};
use proto::api::AccessMode;
use proto::feed::{FeedAdmission, FeedUpdate};
use proto::{BindingPolicy, OffsetDateTime, WgKey};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use testkit::feed;

const PINNING_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Arbitrary)]
enum Step {
    Answer(Answer),
    Advance { secs: u16 },
    Pin { id: u8, source: u8 },
}

#[derive(Debug, Arbitrary)]
struct Answer {
    whole: bool,
    /// A diff that does not start at the version held.
    wrong_base: bool,
    version_step: u8,
    server_advance_secs: u8,
    admissions: Vec<Spec>,
    removed: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Spec {
    id: u8,
    key: u8,
    address: u8,
    source: u8,
    binding: u8,
    lifetime_secs: i16,
    services: u8,
    psk: u8,
    direct: bool,
    no_key: bool,
    no_address: bool,
}

pub fn run(data: &[u8]) {
    let u = Unstructured::new(data);
    let Ok(steps) = u.arbitrary_take_rest_iter::<Step>() else {
        return;
    };
    let t0 = Instant::now();
    let server_t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
    let mut elapsed = Duration::ZERO;
    let mut desired = DesiredSet::new();
    let mut by_diff = AdmissionTable::new(PINNING_WINDOW);
    let mut by_whole = AdmissionTable::new(PINNING_WINDOW);
    // Whether the answers so far asked for the impossible (see above).
    let mut ambiguous = false;
    for step in steps.take(64) {
        let Ok(step) = step else { break };
        if crate::tracing() {
            eprintln!("{step:?}");
        }
        match step {
            Step::Advance { secs } => elapsed += Duration::from_secs(u64::from(secs)),
            Step::Pin { id, source } => {
                let now = t0 + elapsed;
                let id = id_of(id);
                let ip = crate::world::source(source);
                for table in [&mut by_diff, &mut by_whole] {
                    if let Some(peer) = table.by_id(&id).map(|a| a.peer()) {
                        table.pin(peer, ip, now);
                    }
                }
            }
            Step::Answer(a) => {
                elapsed += Duration::from_secs(u64::from(a.server_advance_secs));
                let now = t0 + elapsed;
                let server_time = server_t0 + elapsed;
                let held = desired.version();
                let version = held.unwrap_or(0) + u64::from(a.version_step % 4);
                let base = (!a.whole).then(|| held.unwrap_or(0) + u64::from(a.wrong_base));
                let update = FeedUpdate {
                    server: "fuzz".into(),
                    server_time,
                    removed: if a.whole {
                        Vec::new()
                    } else {
                        a.removed.iter().take(8).map(|&i| id_of(i)).collect()
                    },
                    admissions: a
                        .admissions
                        .iter()
                        .take(8)
                        .map(|s| admission(s, server_time))
                        .collect(),
                    ..feed::update(version, base)
                };
                // The feed's contract: an id at most once in an answer, in
                // one of its two lists.
                let mut ids: Vec<&str> = update
                    .admissions
                    .iter()
                    .map(|a| a.id.as_str())
                    .chain(update.removed.iter().map(String::as_str))
                    .collect();
                ids.sort_unstable();
                let repeats = ids.windows(2).any(|w| w[0] == w[1]);
                match desired.absorb_update(update, now) {
                    Ok(FeedChange::Whole(state)) => {
                        ambiguous |= repeats;
                        ambiguous |= collided(&by_diff.apply(&state, now));
                        ambiguous |= collided(&by_whole.apply(&state, now));
                    }
                    Ok(FeedChange::Diff {
                        header,
                        changed,
                        removed,
                    }) => {
                        ambiguous |= repeats;
                        ambiguous |= collided(&by_diff.apply(
                            gateway::FeedChangeRef::diff(&header, &changed, &removed),
                            now,
                        ));
                        let whole = desired
                            .mirror()
                            .state()
                            .expect("a mirror with a version has a state");
                        ambiguous |= collided(&by_whole.apply(&whole, now));
                    }
                    Err(_) => {
                        assert_eq!(
                            desired.next_after(now),
                            None,
                            "a refused diff asks for the whole set"
                        );
                    }
                }
            }
        }
        let now = t0 + elapsed;
        by_diff.expire(now);
        by_whole.expire(now);
        check_table(&by_diff);
        check_table(&by_whole);
        if crate::tracing() {
            eprintln!(
                "  diff:  {:?}\n  whole: {:?}",
                contents(&by_diff),
                contents(&by_whole)
            );
        }
        if !ambiguous {
            assert_eq!(
                contents(&by_diff),
                contents(&by_whole),
                "a diff applied as a diff differs from the whole set it leads to"
            );
            assert_eq!(by_diff.version(), by_whole.version());
            assert_eq!(by_diff.service_address(), by_whole.service_address());
        }
    }
}

fn collided(outcome: &ApplyOutcome) -> bool {
    outcome.rejected.iter().any(|e| {
        matches!(
            e,
            AdmissionError::DuplicateKey { .. }
                | AdmissionError::DuplicateClientAddress { .. }
                | AdmissionError::DuplicateId { .. }
        )
    })
}

fn id_of(i: u8) -> String {
    format!("adm_{}", i % 8)
}

fn binding_of(i: u8) -> BindingPolicy {
    match i % 7 {
        0 => BindingPolicy::Exact,
        1 => BindingPolicy::Prefix { v4: 24, v6: 56 },
        2 => BindingPolicy::Prefix { v4: 32, v6: 64 },
        3 => BindingPolicy::FirstHandshake,
        4 => BindingPolicy::Prefix { v4: 0, v6: 0 },
        5 => BindingPolicy::Prefix { v4: 32, v6: 128 },
        _ => BindingPolicy::Prefix {
            v4: i / 7 % 33,
            v6: i / 7 % 129,
        },
    }
}

fn admission(s: &Spec, server_time: OffsetDateTime) -> FeedAdmission {
    let services = ["plex", "jellyfin", "ghost"]
        .iter()
        .enumerate()
        .filter(|(i, _)| s.services & (1 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    FeedAdmission {
        mode: if s.direct {
            AccessMode::Direct
        } else {
            AccessMode::Tunnel
        },
        client_public_key: (!s.no_key).then_some(WgKey([s.key % 8; 32])),
        preshared_key: (!s.psk.is_multiple_of(3)).then_some(WgKey([s.psk % 3; 32])),
        binding: binding_of(s.binding),
        client_address: (!s.no_address).then_some(Ipv4Addr::new(100, 64, 0, 10 + s.address % 8)),
        services,
        expires_at: server_time + time::Duration::seconds(i64::from(s.lifetime_secs)),
        ..feed::tunnel(&id_of(s.id), WgKey([0; 32]), crate::world::source(s.source))
    }
}

/// What an admission is, apart from the peer id the table gave it.
type Contents = BTreeMap<String, (FeedFields, Instant, Pinning)>;
type FeedFields = (
    WgKey,
    Ipv4Addr,
    IpAddr,
    BindingPolicy,
    Vec<String>,
    Option<WgKey>,
);

fn contents(table: &AdmissionTable) -> Contents {
    table
        .iter()
        .map(|a| {
            (
                a.id().to_string(),
                (
                    (
                        *a.client_public_key(),
                        a.client_address(),
                        a.source(),
                        a.binding(),
                        a.services().to_vec(),
                        a.preshared_key().copied(),
                    ),
                    a.deadline(),
                    a.pinning(),
                ),
            )
        })
        .collect()
}

/// The table's indexes agree with its admissions: every lookup finds what
/// it should, nothing is found twice, and every bound source is bound.
pub fn check_table(table: &AdmissionTable) {
    let mut count = 0;
    let mut earliest: Option<Instant> = None;
    for a in table.iter() {
        count += 1;
        let peer = a.peer();
        assert!((peer.tunnel_index() as usize) < table.peer_capacity());
        assert_eq!(table.get(peer).map(|b| b.id()), Some(a.id()));
        assert_eq!(table.by_id(a.id()).map(|b| b.peer()), Some(peer));
        assert_eq!(
            table
                .by_key(a.client_public_key().as_bytes())
                .map(|b| b.peer()),
            Some(peer)
        );
        assert_eq!(
            table
                .by_client_address(a.client_address())
                .map(|b| b.peer()),
            Some(peer)
        );
        assert_eq!(a.source(), a.source().to_canonical());
        // Before its deadline an admission binds what it admits.
        let before = a.deadline() - std::time::Duration::from_nanos(1);
        match a.pinning() {
            Pinning::NotApplicable => assert!(table.binds_live(a.source(), before)),
            Pinning::Pinned(ip) => assert!(table.binds_live(ip, before)),
            Pinning::Open { .. } | Pinning::Closed => {}
        }
        match a.pinning() {
            Pinning::NotApplicable => {
                assert_ne!(a.binding(), BindingPolicy::FirstHandshake);
                assert_eq!(table.source_status(a.source()), SourceStatus::Bound);
            }
            Pinning::Pinned(ip) => {
                assert_eq!(a.binding(), BindingPolicy::FirstHandshake);
                assert_eq!(table.source_status(ip), SourceStatus::Bound);
            }
            Pinning::Open { .. } => {
                assert_ne!(table.source_status(a.source()), SourceStatus::Unknown);
            }
            Pinning::Closed => assert_eq!(a.binding(), BindingPolicy::FirstHandshake),
        }
        earliest = Some(earliest.map_or(a.deadline(), |e| e.min(a.deadline())));
    }
    assert_eq!(count, table.len());
    assert_eq!(count == 0, table.is_empty());
    if let Some(e) = earliest {
        let next = table.next_deadline().expect("admissions have deadlines");
        assert!(next <= e);
    }
}
