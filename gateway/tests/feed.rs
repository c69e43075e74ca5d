//! The gateway's feed follower against a real control plane: after any
//! sequence of changes taken in as diffs, the desired set it holds (and
//! hands to the data path) equals the whole set the control plane sends.

use control_client::ControlClient;
use hushgate_gateway::feed::{fetch, DesiredSet};
use proto::feed::{EnrollRequest, FeedState};
use proto::WgKey;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::world::{grant, report};
use testkit::{Options, World};

/// The kit's world without its gateway, alice and bob granted `den`
/// (admissions live 4 s); the test follows the feed itself, as a gateway
/// enrolled with key [200; 32] would. Returns the world and the feed's
/// client.
async fn world() -> (World, ControlClient) {
    let w = World::start(Options {
        ttl_secs: Some(4),
        more_users: vec!["bob"],
        ack_timeout: Some(Duration::from_secs(3)),
        no_gateway: true,
        ..Default::default()
    })
    .await;
    let enrolled = w
        .base
        .enroll(&EnrollRequest {
            enrollment_token: w.enrollment_token.clone(),
            report: report(WgKey([200; 32])),
        })
        .await
        .unwrap();
    let feed = w.base.with_bearer(&enrolled.credential);
    (w, feed)
}

/// What the follower saw: each state it would hand to the data path, and
/// how many answers were diffs and whole sets.
#[derive(Default)]
struct Seen {
    states: Vec<FeedState>,
    diffs: usize,
    wholes: usize,
}

/// The gateway's loop without the data path: fetch, absorb, acknowledge.
fn follow(feed: ControlClient) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut desired = DesiredSet::new();
        loop {
            let after = desired.next_after(Instant::now());
            let Ok(update) = fetch(&feed, after, Duration::from_secs(20)).await else {
                desired.refetch();
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let whole = update.is_full();
            let Ok(state) = desired.absorb(update, Instant::now()) else {
                continue;
            };
            let version = state.version;
            {
                let mut s = s.lock().unwrap();
                if whole {
                    s.wholes += 1;
                } else {
                    s.diffs += 1;
                }
                s.states.push(state);
            }
            if feed.ack(version).await.is_err() {
                desired.refetch();
            }
        }
    });
    (seen, task)
}

fn sorted(mut s: FeedState) -> FeedState {
    s.admissions.sort_by(|a, b| a.id.cmp(&b.id));
    s
}

/// Waits until the follower holds the control plane's current version and
/// checks that what it holds then is the whole set the control plane sends
/// (the documented whole form, without diffs). If the version moved on
/// meanwhile (an expiry), it compares again at the newer one.
async fn converged(feed: &ControlClient, seen: &Mutex<Seen>) -> FeedState {
    let t = Instant::now();
    loop {
        let whole = feed.feed(None, Duration::ZERO).await.unwrap();
        let held = loop {
            let held = seen.lock().unwrap().states.last().cloned();
            if let Some(held) = held.filter(|h| h.version >= whole.version) {
                break held;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the follower never reached version {}",
                whole.version
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if held.version != whole.version {
            continue;
        }
        let (held, whole) = (sorted(held), sorted(whole));
        assert_eq!(held.admissions, whole.admissions);
        assert_eq!(held.service_address, whole.service_address);
        assert_eq!(held.server, whole.server);
        return held;
    }
}

#[tokio::test]
async fn the_merged_set_equals_the_whole_set_after_a_sequence_of_diffs() {
    let (w, feed) = world().await;
    let (seen, task) = follow(feed.clone());
    let alice = w.login("alice").await;
    let bob = w.login("bob").await;

    // Accesses, some at once (several changes may share one answer).
    let mut ids = Vec::new();
    for n in 1..=3u8 {
        ids.push(
            alice
                .access("den", WgKey([n; 32]))
                .await
                .unwrap()
                .admission_id,
        );
    }
    let parallel: Vec<_> = (10..16u8)
        .map(|n| {
            let c = if n % 2 == 0 {
                alice.clone()
            } else {
                bob.clone()
            };
            tokio::spawn(async move { (n, c.access("den", WgKey([n; 32])).await.unwrap()) })
        })
        .collect();
    let mut bobs = Vec::new();
    for p in parallel {
        let (n, r) = p.await.unwrap();
        if n % 2 == 1 {
            bobs.push(r.admission_id.clone());
        }
        ids.push(r.admission_id);
    }
    let st = converged(&feed, &seen).await;
    assert!(!st.admissions.is_empty());

    // A revocation and a renewal.
    alice.revoke(&ids[0]).await.unwrap();
    let renewed = alice.renew(&ids[1]).await.unwrap();
    let st = converged(&feed, &seen).await;
    assert!(st.admissions.iter().all(|a| a.id != ids[0]));
    let a = st.admissions.iter().find(|a| a.id == ids[1]).unwrap();
    assert!((a.expires_at - renewed.expires_at).abs() < time::Duration::milliseconds(1));

    // A user's deletion, then a grant's removal.
    w.admin.delete_user("bob").await.unwrap();
    let st = converged(&feed, &seen).await;
    assert!(st.admissions.iter().all(|a| !bobs.contains(&a.id)));
    w.admin.delete_grant("alice", "den").await.unwrap();
    let st = converged(&feed, &seen).await;
    assert!(st.admissions.is_empty());

    // Expiry (admissions live 4 s here).
    grant(&w.admin, "alice", "den").await;
    let short = alice.access("den", WgKey([30; 32])).await.unwrap();
    let st = converged(&feed, &seen).await;
    assert_eq!(st.admissions.len(), 1);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let st = converged(&feed, &seen).await;
    assert!(
        st.admissions.iter().all(|a| a.id != short.admission_id),
        "{:?}",
        st.admissions
    );

    {
        let s = seen.lock().unwrap();
        assert_eq!(s.wholes, 1, "only the first answer is a whole set");
        assert!(s.diffs >= 8, "{} diffs", s.diffs);
        // Every state handed on is a whole set with the answer's own clock.
        for st in &s.states {
            assert!(st.admissions.iter().all(|a| a.expires_at > st.server_time));
        }
    }
    task.abort();
    w.stop().await;
}
