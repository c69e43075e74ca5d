//! The control plane's API through its real router, over real HTTPS on
//! loopback, on both engines: every test runs once with a real SQLite
//! file in a temporary folder and once on a real PostgreSQL server (a
//! fresh database each; see `support::pg`).

mod support;

use control_client::{ClientError, ControlClient, Trust};
use proto::api::*;
use proto::feed::*;
use reqwest::StatusCode;
use std::time::Duration;
use support::control;
use support::*;

async fn login(c: &ControlClient, user: &str) -> ControlClient {
    let r = c.login(user, &format!("password-of-{user}")).await.unwrap();
    c.with_bearer(&r.token)
}

/// A control plane with alice, server "den" and a following gateway.
async fn world(store: &Store) -> (Running, FeedFollower, ControlClient) {
    let cp = Running::start(store, "127.0.0.1:0", fast_settings()).await;
    let token = seed(&cp.admin, "alice", "den", None).await;
    let gw = FeedFollower::enroll(&cp.client(), &token, key(200)).await;
    let alice = login(&cp.client(), "alice").await;
    (cp, gw, alice)
}

async fn access_is_answered_after_the_gateway_has_the_admission(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;

    let r = alice.access("den", key(1)).await.expect("access granted");
    assert_eq!(r.gateway_endpoint.to_string(), "198.51.100.10:51820");
    assert_eq!(r.gateway_public_key, key(200));
    assert_eq!(r.client_address.to_string(), "100.64.0.2");
    assert_eq!(r.service_address.to_string(), "100.64.0.1");
    assert_eq!(
        r.services,
        vec![ServiceInfo {
            name: "plex".into(),
            port: 32400
        }]
    );
    assert!(r.preshared_key.is_some());

    // The gateway acknowledged the version holding it before we heard back.
    let st = gw.state();
    let a = st
        .admissions
        .iter()
        .find(|a| a.id == r.admission_id)
        .expect("in the feed");
    assert_eq!(a.client_public_key, Some(key(1)));
    assert_eq!(a.source.to_string(), "127.0.0.1");
    assert_eq!(a.preshared_key, r.preshared_key);
    assert_eq!(
        a.client_address.map(|c| c.to_string()),
        Some("100.64.0.2".into())
    );

    let list = cp.admin.list_admissions().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, "active");

    // Revocation by the owner is pushed to the gateway (the promise is a
    // second; see PUSH_BOUND for the margin here).
    alice.revoke(&r.admission_id).await.unwrap();
    let took = gw
        .wait_until(|ids| ids.is_empty())
        .await
        .expect("the revocation reached the gateway");
    assert!(took < PUSH_BOUND, "the revocation took {took:?}");
    let audit = cp.admin.audit(100).await.unwrap();
    let events: Vec<_> = audit.iter().map(|e| e.event.as_str()).collect();
    for e in ["enrolled", "login", "access_granted", "revoked"] {
        assert!(events.contains(&e), "audit lacks {e}: {events:?}");
    }
    cp.stop().await;
}

async fn no_grant_and_unknown_server_look_the_same(engine: Engine) {
    let store = engine.store();
    let (cp, _gw, _alice) = world(&store).await;
    cp.admin
        .create_user(&CreateUser {
            username: "bob".into(),
            password: "password-of-bob".into(),
            admin: false,
        })
        .await
        .unwrap();
    let bob = login(&cp.client(), "bob").await;
    let e1 = bob.access("den", key(2)).await.unwrap_err();
    let e2 = bob.access("nowhere", key(2)).await.unwrap_err();
    assert_eq!(e1.status(), Some(403));
    assert_eq!(e2.status(), Some(403));
    assert_eq!(e1.code(), e2.code());
    assert!(e1.to_string().contains("no access to server 'den'"));
    assert!(cp.admin.list_admissions().await.unwrap().is_empty());
    let audit = cp.admin.audit(100).await.unwrap();
    assert_eq!(
        audit.iter().filter(|e| e.event == "access_denied").count(),
        2
    );
    cp.stop().await;
}

async fn offline_or_silent_gateway_gets_503_and_leaves_nothing(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let token = seed(&cp.admin, "alice", "den", None).await;
    let alice = login(&cp.client(), "alice").await;

    // Not enrolled at all.
    let e = alice.access("den", key(1)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(503), Some("gateway_offline")));
    assert!(e.to_string().contains("'den'"));

    // Enrolled, then gone: still offline after the grace period.
    let enrolled = cp
        .client()
        .enroll(&EnrollRequest {
            enrollment_token: token,
            report: report(key(200)),
        })
        .await
        .unwrap();
    let e = alice.access("den", key(1)).await.unwrap_err();
    assert_eq!(e.code(), Some("gateway_offline"), "{e}");

    // Connected but never acknowledging: 503 after the ack timeout, and
    // the admission is removed from the feed again.
    let gw = FeedFollower::follow(&cp.client(), &enrolled.credential, false).await;
    let e = alice.access("den", key(1)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(503), Some("gateway_timeout")));
    assert!(cp.admin.list_admissions().await.unwrap().is_empty());
    assert!(gw.wait_until(|ids| ids.is_empty()).await.is_some());
    cp.stop().await;
}

/// Login failures look the same whatever was wrong, each costs one full
/// argon2 verification (an unknown user too), and the limit holds. Time
/// comes from a manual clock, so the limit is asserted however slow the
/// machine is; the failures' equal cost in seconds is measured in
/// `cargo bench -p hushgate-control --bench access`.
async fn login_failures_are_uniform_and_rate_limited(engine: Engine) {
    use std::sync::atomic::Ordering::Relaxed;
    let store = engine.store();
    let limit = 10;
    let (clock, hands) = control::Clock::manual();
    let settings = control::Settings {
        login_per_minute: limit,
        clock,
        ..fast_settings()
    };
    let cp = Running::start(&store, "127.0.0.1:0", settings).await;
    seed(&cp.admin, "alice", "den", None).await;
    let c = cp.client();
    let checks = || cp.state.password_checks.load(Relaxed);

    let before = checks();
    let wrong = c.login("alice", "not-the-password").await.unwrap_err();
    assert_eq!(
        checks(),
        before + 1,
        "a wrong password runs one verification"
    );
    let unknown = c.login("mallory", "whatever-password").await.unwrap_err();
    assert_eq!(
        checks(),
        before + 2,
        "an unknown user runs one verification"
    );
    assert_eq!(wrong.status(), Some(401));
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert_eq!(wrong.code(), unknown.code());

    for i in 0..(limit - 2) {
        let e = if i % 2 == 0 {
            c.login("alice", "nope-nope-nope").await.unwrap_err()
        } else {
            c.login(&format!("ghost{i}"), "nope-nope-nope")
                .await
                .unwrap_err()
        };
        assert_eq!(e.status(), Some(401));
    }
    assert_eq!(checks(), before + u64::from(limit));

    // One attempt more than the limit from this address within a minute
    // is refused, even with the right password, and costs no verification.
    let e = c.login("alice", "password-of-alice").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(429), Some("rate_limited")));
    assert_eq!(checks(), before + u64::from(limit));

    // Seven seconds later one attempt is back (ten a minute), and only one.
    hands.advance(std::time::Duration::from_secs(7));
    c.login("alice", "password-of-alice")
        .await
        .expect("a token came back");
    let e = c.login("alice", "password-of-alice").await.unwrap_err();
    assert_eq!(e.status(), Some(429));
    cp.stop().await;
}

/// What, method, path, bearer, content type, body, expected status.
type BadCase<'a> = (
    &'a str,
    reqwest::Method,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
    u16,
);

async fn raw(
    c: &ControlClient,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut r = c
        .http()
        .request(method, format!("{}{path}", c.base_url()))
        .body(body);
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let v = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

async fn bad_input_gets_a_clear_4xx_and_changes_nothing(engine: Engine) {
    use reqwest::Method;
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    let c = cp.client();
    let token = alice
        .login("alice", "password-of-alice")
        .await
        .unwrap()
        .token;
    let json = Some("application/json");
    let version_before = gw.version();
    let audit_before = cp.admin.audit(1000).await.unwrap().len();
    let admin_token = std::fs::read_to_string(cp.dir.join("admin-token")).unwrap();

    let cases: Vec<BadCase> = vec![
        ("malformed JSON", Method::POST, "/v1/access", Some(&token), json, b"{\"server\": ".to_vec(), 400),
        ("oversized body", Method::POST, "/v1/access", Some(&token), json,
            format!("{{\"server\":\"{}\"}}", "x".repeat(100_000)).into_bytes(), 413),
        ("wrong content type", Method::POST, "/v1/access", Some(&token), Some("text/plain"),
            br#"{"server":"den","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}"#.to_vec(), 415),
        ("bad base64 key", Method::POST, "/v1/access", Some(&token), json,
            br#"{"server":"den","public_key":"!!!not-base64!!!"}"#.to_vec(), 400),
        ("key of wrong length", Method::POST, "/v1/access", Some(&token), json,
            br#"{"server":"den","public_key":"AQEBAQ=="}"#.to_vec(), 400),
        ("unknown field", Method::POST, "/v1/access", Some(&token), json,
            br#"{"server":"den","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","admin":true}"#.to_vec(), 400),
        ("missing key", Method::POST, "/v1/access", Some(&token), json, br#"{"server":"den"}"#.to_vec(), 400),
        ("forged token", Method::POST, "/v1/access", Some("hgu_forgedforgedforged"), json,
            br#"{"server":"den","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}"#.to_vec(), 401),
        ("no token", Method::POST, "/v1/access", None, json,
            br#"{"server":"den","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}"#.to_vec(), 401),
        ("user token as gateway credential", Method::GET, "/v1/gateway/feed", Some(&token), None, vec![], 401),
        ("gateway credential for another server", Method::GET, "/v1/gateway/feed?server=attic",
            Some(&gw.credential), None, vec![], 403),
        ("ack of a version never issued", Method::POST, "/v1/gateway/ack", Some(&gw.credential), json,
            br#"{"version": 999999}"#.to_vec(), 400),
        ("user token on the admin API", Method::GET, "/v1/admin/users", Some(&token), None, vec![], 403),
        ("unknown admission", Method::DELETE, "/v1/admissions/adm_nope", Some(&token), None, vec![], 404),
        ("unknown endpoint", Method::GET, "/v1/nothing", None, None, vec![], 404),
        ("bad binding policy", Method::POST, "/v1/admin/servers",
            Some(admin_token.trim()), json,
            br#"{"name":"attic","binding":"loose"}"#.to_vec(), 400),
        ("bad query", Method::GET, "/v1/gateway/feed?after=minus-one", Some(&gw.credential), None, vec![], 400),
    ];
    for (what, method, path, bearer, ct, body, want) in cases {
        let (status, v) = raw(&c, method, path, bearer, ct, body).await;
        assert_eq!(status.as_u16(), want, "{what}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.len() > 10, "{what}: no useful message in {v}");
        assert!(v["error"]["code"].is_string(), "{what}: no code in {v}");
    }

    // A replayed enrollment token is refused.
    let s = cp
        .admin
        .create_server(&CreateServer {
            name: "attic".into(),
            binding: Default::default(),
            admission_ttl_secs: None,
        })
        .await
        .unwrap();
    let req = EnrollRequest {
        enrollment_token: s.enrollment_token,
        report: report(key(201)),
    };
    c.enroll(&req).await.unwrap();
    let e = c.enroll(&req).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("already used"));

    // Nothing changed: no admission, no feed version bump for "den", and
    // the audit log only grew by the server creation and one enrollment.
    assert!(cp.admin.list_admissions().await.unwrap().is_empty());
    assert_eq!(gw.version(), version_before);
    let audit_after = cp.admin.audit(1000).await.unwrap();
    let new: Vec<_> = audit_after[audit_before..]
        .iter()
        .map(|e| e.event.clone())
        .collect();
    assert_eq!(
        new,
        vec!["server_created", "enrollment_token_created", "enrolled"]
    );
    cp.stop().await;
}

async fn admissions_survive_a_restart(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    let r = alice.access("den", key(1)).await.unwrap();
    let credential = gw.credential.clone();
    drop(gw);
    cp.stop().await;

    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let list = cp.admin.list_admissions().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, r.admission_id);
    assert_eq!(list[0].state, "active");
    // The gateway's credential still works and its feed still holds the
    // admission with the same keys and address.
    let gw = FeedFollower::follow(&cp.client(), &credential, true).await;
    let st = gw.state();
    assert_eq!(st.admissions.len(), 1);
    assert_eq!(st.admissions[0].preshared_key, r.preshared_key);
    assert_eq!(st.admissions[0].client_public_key, Some(key(1)));
    // The user can log in and keep working against the restarted plane.
    let alice = login(&cp.client(), "alice").await;
    alice.revoke(&r.admission_id).await.unwrap();
    cp.stop().await;
}

async fn expiry_and_grant_removal_reach_the_gateway(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let token = seed(&cp.admin, "alice", "den", Some(1)).await;
    let gw = FeedFollower::enroll(&cp.client(), &token, key(200)).await;
    let alice = login(&cp.client(), "alice").await;

    let r = alice.access("den", key(1)).await.unwrap();
    let id = r.admission_id.clone();
    assert!(gw.admission_ids().contains(&id));
    // ttl is 1 s: gone from the feed when it expires (not before; after,
    // within the push bound), not at the next long-poll.
    let left = r.expires_at - time::OffsetDateTime::now_utc();
    let took = gw
        .wait_until(|ids| !ids.contains(&id))
        .await
        .expect("expired admission left the feed");
    assert!(
        time::Duration::try_from(took).unwrap() >= left - time::Duration::milliseconds(50),
        "removed {took:?} after the request, before its expiry ({left} later)"
    );
    assert!(took < PUSH_BOUND, "took {took:?}");
    let audit = cp.admin.audit(100).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.event == "expired" && e.admission_id.as_deref() == Some(&id)));

    // Renewal pushes the deadline out.
    let r = alice.access("den", key(2)).await.unwrap();
    let renewed = alice.renew(&r.admission_id).await.unwrap();
    assert!(renewed.expires_at >= r.expires_at);

    // Removing the grant ends the admission at once.
    let r = alice.access("den", key(3)).await.unwrap();
    cp.admin.delete_grant("alice", "den").await.unwrap();
    assert!(gw
        .wait_until(|ids| !ids.contains(&r.admission_id))
        .await
        .is_some());
    let e = alice.access("den", key(4)).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    cp.stop().await;
}

async fn tunnel_addresses_never_collide_and_are_reused_after_release(engine: Engine) {
    let store = engine.store();
    let (cp, _gw, alice) = world(&store).await;
    let mut got = Vec::new();
    for i in 1..=4 {
        got.push(alice.access("den", key(i)).await.unwrap());
    }
    let addrs: Vec<String> = got.iter().map(|r| r.client_address.to_string()).collect();
    assert_eq!(
        addrs,
        ["100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.0.5"]
    );
    // One admission per ephemeral key: the same key again from the same
    // user (a retry whose answer was lost, or that went to another
    // replica) replaces the earlier admission; from another user it is
    // refused.
    let retry = alice.access("den", key(1)).await.unwrap();
    assert_ne!(retry.admission_id, got[0].admission_id);
    assert_eq!(retry.client_address, got[0].client_address);
    let list = cp.admin.list_admissions().await.unwrap();
    assert_eq!(list.len(), 4);
    assert!(!list.iter().any(|a| a.id == got[0].admission_id));
    add_user_with_grant(&cp.admin, "bob", "den").await;
    let bob = login(&cp.client(), "bob").await;
    let e = bob.access("den", key(1)).await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    alice.revoke(&got[1].admission_id).await.unwrap();
    let again = alice.access("den", key(9)).await.unwrap();
    assert_eq!(again.client_address.to_string(), "100.64.0.3");
    cp.stop().await;
}

async fn forwarded_for_is_believed_only_from_trusted_proxies(engine: Engine) {
    let json = "application/json";
    for trusted in [false, true] {
        let store = engine.store();
        let mut settings = fast_settings();
        if trusted {
            settings.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        }
        let cp = Running::start(&store, "127.0.0.1:0", settings).await;
        let token = seed(&cp.admin, "alice", "den", None).await;
        let gw = FeedFollower::enroll(&cp.client(), &token, key(200)).await;
        let t = cp
            .client()
            .login("alice", "password-of-alice")
            .await
            .unwrap()
            .token;
        let body =
            br#"{"server":"den","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}"#;
        let resp = cp
            .client()
            .http()
            .post(format!("{}/v1/access", cp.url))
            .bearer_auth(&t)
            .header("content-type", json)
            .header("x-forwarded-for", "2001:db8::7, 203.0.113.9")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let st = gw.state();
        let want = if trusted { "203.0.113.9" } else { "127.0.0.1" };
        assert_eq!(st.admissions[0].source.to_string(), want);
        cp.stop().await;
    }
}

/// A renewal says when it came from an address the admission does not
/// admit (the client's network changed), so the client re-admits at once.
async fn a_renewal_from_another_address_says_the_client_moved(engine: Engine) {
    let store = engine.store();
    let mut settings = fast_settings();
    settings.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let cp = Running::start(&store, "127.0.0.1:0", settings).await;
    let token = seed(&cp.admin, "alice", "den", None).await;
    let _gw = FeedFollower::enroll(&cp.client(), &token, key(200)).await;
    let http = cp.client().http().clone();
    let login = cp
        .client()
        .login("alice", "password-of-alice")
        .await
        .unwrap()
        .token;
    let body = br#"{"server":"den","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}"#;
    let access: AccessResponse = http
        .post(format!("{}/v1/access", cp.url))
        .bearer_auth(&login)
        .header("content-type", "application/json")
        .header("x-forwarded-for", "203.0.113.9")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let renew_from = |from: &'static str| {
        let (http, url, login, id) = (
            http.clone(),
            cp.url.clone(),
            login.clone(),
            access.admission_id.clone(),
        );
        async move {
            let r = http
                .post(format!("{url}/v1/admissions/{id}/renew"))
                .bearer_auth(&login)
                .header("x-forwarded-for", from)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<RenewResponse>().await.unwrap()
        }
    };
    assert_eq!(renew_from("203.0.113.9").await.moved, Some(false));
    assert_eq!(renew_from("203.0.113.10").await.moved, Some(true));
    // The answer changes nothing by itself: the admission stays as it was.
    assert_eq!(renew_from("203.0.113.9").await.moved, Some(false));
    cp.stop().await;
}

async fn ipv6_clients_are_observed_as_such(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "[::1]:0", fast_settings()).await;
    let token = seed(&cp.admin, "alice", "den", None).await;
    let gw = FeedFollower::enroll(&cp.client(), &token, key(200)).await;
    let alice = login(&cp.client(), "alice").await;
    alice.access("den", key(1)).await.unwrap();
    let st = gw.state();
    assert_eq!(st.admissions[0].source.to_string(), "::1");
    cp.stop().await;
}

async fn an_untrusted_certificate_is_refused_with_a_clear_error(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = ControlClient::new(&cp.url, Trust::PublicRoots).unwrap();
    let e = c.login("alice", "whatever-password").await.unwrap_err();
    assert!(
        matches!(e, ClientError::CertificateNotTrusted { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("--ca"));
    assert!(ControlClient::new("http://127.0.0.1:1", Trust::PublicRoots).is_err());
    cp.stop().await;
}

/// The feed of "den" as its gateway sees it, with diffs allowed.
async fn gateway_feed(cp: &Running, gw: &FeedFollower, after: Option<u64>) -> FeedUpdate {
    feed_update(
        &cp.client().with_bearer(&gw.credential),
        after,
        Duration::ZERO,
    )
    .await
    .unwrap()
}

async fn the_feed_sends_only_what_changed_since_the_version_held(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    let first = alice.access("den", key(1)).await.unwrap();
    let before = gw.version();

    // One access: the diff holds exactly that admission.
    let r = alice.access("den", key(2)).await.unwrap();
    let after_access = gw.version();
    assert_eq!(after_access, before + 1, "one access is one version");
    let d = gateway_feed(&cp, &gw, Some(before)).await;
    assert_eq!(d.base, Some(before));
    assert_eq!(d.version, after_access);
    assert!(d.removed.is_empty(), "{:?}", d.removed);
    assert_eq!(d.admissions.len(), 1, "{:?}", d.admissions);
    let a = &d.admissions[0];
    assert_eq!(a.id, r.admission_id);
    assert_eq!(a.client_public_key, Some(key(2)));
    assert_eq!(a.preshared_key, r.preshared_key);
    // The database keeps milliseconds.
    assert!((a.expires_at - r.expires_at).abs() < time::Duration::milliseconds(1));
    assert_eq!(
        a.client_address.map(|c| c.to_string()),
        Some(r.client_address.to_string())
    );

    // The version held: an empty diff (the long-poll would wait for a change).
    let same = gateway_feed(&cp, &gw, Some(after_access)).await;
    assert_eq!(same.base, Some(after_access));
    assert!(same.admissions.is_empty() && same.removed.is_empty());

    // A renewal is an upsert with the new expiry.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = alice.renew(&first.admission_id).await.unwrap();
    let d = gateway_feed(&cp, &gw, Some(after_access)).await;
    assert_eq!(d.base, Some(after_access));
    assert!(d.removed.is_empty());
    assert_eq!(d.admissions.len(), 1);
    assert_eq!(d.admissions[0].id, first.admission_id);
    assert!(
        (d.admissions[0].expires_at - renewed.expires_at).abs() < time::Duration::milliseconds(1)
    );
    assert!(d.admissions[0].expires_at > first.expires_at);
    let after_renew = d.version;

    // A revocation: the id is in `removed`, nothing else.
    alice.revoke(&r.admission_id).await.unwrap();
    let d = gateway_feed(&cp, &gw, Some(after_renew)).await;
    assert_eq!(d.base, Some(after_renew));
    assert_eq!(d.version, after_renew + 1);
    assert!(d.admissions.is_empty(), "{:?}", d.admissions);
    assert_eq!(d.removed, vec![r.admission_id.clone()]);

    // Across several versions each id is named once, with its latest
    // change: added then revoked is only "removed".
    let d = gateway_feed(&cp, &gw, Some(before)).await;
    assert_eq!(d.base, Some(before));
    assert_eq!(d.removed, vec![r.admission_id.clone()]);
    assert_eq!(d.admissions.len(), 1);
    assert_eq!(d.admissions[0].id, first.admission_id);

    // The follower, which took in diffs only, holds what a whole answer says.
    let whole = gateway_feed(&cp, &gw, None).await;
    assert!(whole.is_full());
    assert!(gw
        .wait_until(|_| gw.version() == whole.version)
        .await
        .is_some());
    assert_eq!(gw.state().admissions, whole.admissions);
    let (diffs, wholes) = gw.answer_counts();
    assert_eq!(wholes, 1, "only the first answer was a whole set");
    assert!(diffs >= 4, "{diffs} diffs");
    cp.stop().await;
}

async fn an_unknown_old_or_future_version_gets_the_whole_set_and_history_survives_a_restart(
    engine: Engine,
) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    let start = gw.version();
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(alice.access("den", key(i)).await.unwrap().admission_id);
    }
    let current = gw.version();
    assert_eq!(current, start + 3);

    // Before anything this control plane remembers, and ahead of it.
    for after in [0, current + 1, current + 1000] {
        let u = gateway_feed(&cp, &gw, Some(after)).await;
        assert_eq!(u.base, None, "after={after}");
        assert_eq!(u.version, current);
        let got: Vec<_> = u.admissions.iter().map(|a| a.id.clone()).collect();
        assert_eq!(got, ids, "after={after}");
        assert!(u.removed.is_empty());
    }
    // The documented form (no `diff=true`) is the whole set as before, with
    // neither `base` nor `removed`.
    let c = cp.client();
    let (status, v) = raw(
        &c,
        reqwest::Method::GET,
        &format!("/v1/gateway/feed?after={}&wait_ms=0", current - 1),
        Some(&gw.credential),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["admissions"].as_array().unwrap().len(), 3);
    assert!(v.get("base").is_none() && v.get("removed").is_none(), "{v}");
    let legacy = c
        .with_bearer(&gw.credential)
        .feed(Some(current - 1), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(legacy.admissions.len(), 3);

    // The history is in the database: a restarted control plane (or
    // another replica) still answers with only what changed.
    let credential = gw.credential.clone();
    drop(gw);
    cp.stop().await;
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let feed = cp.client().with_bearer(&credential);
    let u = feed_update(&feed, Some(current - 1), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((u.base, u.version), (Some(current - 1), current));
    let got: Vec<_> = u.admissions.iter().map(|a| a.id.clone()).collect();
    assert_eq!(got, ids[2..]);
    // The version the gateway holds is still the current one: nothing to send.
    let u = feed_update(&feed, Some(current), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(u.base, Some(current));
    assert!(u.admissions.is_empty() && u.removed.is_empty());

    let gw = FeedFollower::follow(&cp.client(), &credential, true).await;
    let alice = login(&cp.client(), "alice").await;
    alice.revoke(&ids[0]).await.unwrap();
    let u = feed_update(&feed, Some(current), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(u.base, Some(current));
    assert_eq!(u.removed, vec![ids[0].clone()]);
    assert!(gw.wait_until(|got| got == &ids[1..]).await.is_some());
    cp.stop().await;
}

async fn every_change_reaches_a_diff_following_gateway(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let token = seed(&cp.admin, "alice", "den", Some(2)).await;
    let gw = FeedFollower::enroll(&cp.client(), &token, key(200)).await;
    cp.admin
        .create_user(&CreateUser {
            username: "bob".into(),
            password: "password-of-bob".into(),
            admin: false,
        })
        .await
        .unwrap();
    cp.admin
        .create_grant(&CreateGrant {
            username: "bob".into(),
            server: "den".into(),
            services: None,
            direct: false,
        })
        .await
        .unwrap();
    let alice = login(&cp.client(), "alice").await;
    let bob = login(&cp.client(), "bob").await;
    let feed = cp.client().with_bearer(&gw.credential);
    // The follower reaches the current version and then holds what the
    // whole answer says (again at a newer version if one came meanwhile).
    let same = || async {
        loop {
            let whole = feed_update(&feed, None, Duration::ZERO).await.unwrap();
            assert!(gw
                .wait_until(|_| gw.version() >= whole.version)
                .await
                .is_some());
            let st = gw.state();
            if st.version != whole.version {
                continue;
            }
            let mut got = st.admissions;
            let mut want = whole.admissions;
            got.sort_by(|a, b| a.id.cmp(&b.id));
            want.sort_by(|a, b| a.id.cmp(&b.id));
            assert_eq!(got, want);
            return;
        }
    };

    let a1 = alice.access("den", key(1)).await.unwrap();
    let b1 = bob.access("den", key(2)).await.unwrap();
    let b2 = bob.access("den", key(3)).await.unwrap();
    same().await;

    // User deletion removes bob's admissions, one version each.
    cp.admin.delete_user("bob").await.unwrap();
    assert!(gw
        .wait_until(|ids| !ids.contains(&b1.admission_id) && !ids.contains(&b2.admission_id))
        .await
        .is_some());
    same().await;

    // Expiry (ttl 2 s) removes alice's, unless renewed.
    let a2 = alice.access("den", key(4)).await.unwrap();
    alice.renew(&a2.admission_id).await.unwrap();
    assert!(gw
        .wait_until(|ids| !ids.contains(&a1.admission_id))
        .await
        .is_some());
    same().await;

    // Grant removal.
    let a3 = alice.access("den", key(5)).await.unwrap();
    cp.admin.delete_grant("alice", "den").await.unwrap();
    assert!(gw
        .wait_until(|ids| !ids.contains(&a3.admission_id))
        .await
        .is_some());
    same().await;
    let (diffs, wholes) = gw.answer_counts();
    assert_eq!(wholes, 1, "{diffs} diffs, {wholes} whole sets");
    cp.stop().await;
}

async fn a_new_gateway_key_ends_every_admission_in_the_feed(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    alice.access("den", key(1)).await.unwrap();
    alice.access("den", key(2)).await.unwrap();
    let held = gw.version();
    let feed = cp.client().with_bearer(&gw.credential);
    feed.report(&report(key(201))).await.unwrap();
    // No diff can describe "everything went": the whole (empty) set.
    let u = feed_update(&feed, Some(held), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((u.base, u.version), (None, held + 1));
    assert!(u.admissions.is_empty());
    assert!(gw.wait_until(|ids| ids.is_empty()).await.is_some());
    cp.stop().await;
}

async fn users_cannot_touch_each_others_admissions_and_narrowed_grants_bite(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    cp.admin
        .create_user(&CreateUser {
            username: "bob".into(),
            password: "password-of-bob".into(),
            admin: false,
        })
        .await
        .unwrap();
    let bob = login(&cp.client(), "bob").await;
    let r = alice.access("den", key(1)).await.unwrap();
    // Bob sees no such admission: 404 for renew and revoke alike.
    assert_eq!(
        bob.renew(&r.admission_id).await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        bob.revoke(&r.admission_id).await.unwrap_err().status(),
        Some(404)
    );
    // A non-admin user is refused on every admin endpoint.
    for e in [
        bob.list_users().await.map(|_| ()).unwrap_err(),
        bob.list_servers().await.map(|_| ()).unwrap_err(),
        bob.list_grants().await.map(|_| ()).unwrap_err(),
        bob.list_admissions().await.map(|_| ()).unwrap_err(),
        bob.audit(10).await.map(|_| ()).unwrap_err(),
        bob.delete_grant("alice", "den").await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Some("admin_only"), "{e}");
    }
    assert!(alice.list_admissions().await.is_err());

    // Narrowing alice's grant to a service her admission does not hold
    // ends the admission at once, and it cannot be renewed back.
    let mut two = report(key(200));
    two.services.push(ServiceInfo {
        name: "jellyfin".into(),
        port: 8096,
    });
    cp.client()
        .with_bearer(&gw.credential)
        .report(&two)
        .await
        .unwrap();
    cp.admin
        .create_grant(&CreateGrant {
            username: "alice".into(),
            server: "den".into(),
            services: Some(vec!["jellyfin".into()]),
            direct: false,
        })
        .await
        .unwrap();
    assert!(gw
        .wait_until(|ids| !ids.contains(&r.admission_id))
        .await
        .is_some());
    assert_eq!(
        alice.renew(&r.admission_id).await.unwrap_err().status(),
        Some(404)
    );
    cp.stop().await;
}

async fn a_binding_prefix_too_short_to_mean_anything_is_refused(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    // The binding as text, as any client may send it.
    let create = async |name: &str, binding: &str| {
        let body = serde_json::json!({"name": name, "binding": binding});
        cp.admin
            .call::<_, CreatedServer>(
                reqwest::Method::POST,
                "/v1/admin/servers",
                Some(&body),
                Duration::from_secs(5),
            )
            .await
    };
    // Each family has its own minimum (IPv4 /16, IPv6 /48); one length
    // between the two is refused as ambiguous rather than guessed.
    for bad in [
        "prefix:0",
        "prefix:8",
        "prefix:40",
        "prefix:24,32",
        "prefix:8,64",
    ] {
        let e = create("wide", bad).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{bad}: {e}");
    }
    assert!(cp.admin.list_servers().await.unwrap().is_empty());
    // Accepted: both lengths, or the short form, which gives IPv6 a /64
    // instead of reusing the IPv4 length.
    for (name, given, stored) in [
        ("pool", "prefix:24,56", "prefix:24,56"),
        ("old", "prefix:24", "prefix:24,64"),
    ] {
        create(name, given).await.unwrap();
        let servers = cp.admin.list_servers().await.unwrap();
        let s = servers.iter().find(|s| s.name == name).unwrap();
        assert_eq!(s.binding.to_string(), stored);
    }
    cp.stop().await;
}

async fn state_files_holding_secrets_are_private(engine: Engine) {
    use std::os::unix::fs::PermissionsExt;
    let store = engine.store();
    let state = store.path().join("cp");
    let cp = Running::start_in(
        &state,
        store.database.clone(),
        "127.0.0.1:0",
        fast_settings(),
    )
    .await;
    let mode = |f: &str| {
        std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "state folder");
    let mut secret = vec!["admin-token", "ca-key.pem"];
    if engine == Engine::Sqlite {
        secret.push("control.sqlite");
    }
    for f in secret {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    cp.stop().await;
}

#[test]
fn debug_output_hides_secrets() {
    let login = LoginRequest {
        username: "alice".into(),
        password: "hunter2-secret".into(),
        totp: Some("123456".into()),
        device_credential: Some("hgd_device_secret".into()),
        device_name: Some("laptop".into()),
    };
    let enroll = EnrollRequest {
        enrollment_token: "hge_secret_token".into(),
        report: report(key(3)),
    };
    let created = CreateUser {
        username: "bob".into(),
        password: "another-secret".into(),
        admin: false,
    };
    let client = client_for_debug();
    for text in [
        format!("{login:?}"),
        format!("{enroll:?}"),
        format!("{created:?}"),
        format!("{client:?}"),
    ] {
        assert!(!text.contains("secret"), "{text}");
    }
}

fn client_for_debug() -> ControlClient {
    ControlClient::new("https://127.0.0.1:1", Trust::PublicRoots)
        .unwrap()
        .with_bearer("hgu_secret_bearer")
}

async fn direct_access_opens_a_port_to_the_source_only_where_the_grant_allows(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    // The gateway reports a direct service on TCP 32401.
    let mut r = report(key(200));
    r.direct_services = vec![ServiceInfo {
        name: "plex".into(),
        port: 32401,
    }];
    cp.client()
        .with_bearer(&gw.credential)
        .report(&r)
        .await
        .unwrap();

    // A grant without `direct`: refused, saying why, and nothing changes.
    let before = gw.version();
    let e = alice.access_direct("den").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some("direct_not_allowed"))
    );
    assert!(e.to_string().contains("does not allow direct"), "{e}");
    assert_eq!(gw.version(), before);

    // A key has no place in a direct request.
    let body = serde_json::json!({"server": "den", "mode": "direct", "public_key": key(9)});
    let e = alice
        .call::<_, serde_json::Value>(
            reqwest::Method::POST,
            "/v1/access",
            Some(&body),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));

    cp.admin
        .create_grant(&CreateGrant {
            username: "alice".into(),
            server: "den".into(),
            services: None,
            direct: true,
        })
        .await
        .unwrap();
    let d = alice.access_direct("den").await.unwrap();
    // The gateway's public address with the direct port.
    assert_eq!(d.direct_endpoint, "198.51.100.10:32401".parse().unwrap());
    assert_eq!(
        d.services,
        [ServiceInfo {
            name: "plex".into(),
            port: 32401
        }]
    );
    // Answered after the gateway had it: a direct admission of the
    // source, with no key and no tunnel address.
    let st = gw.state();
    let a = st
        .admissions
        .iter()
        .find(|a| a.id == d.admission_id)
        .expect("the gateway holds the direct admission");
    assert_eq!(a.mode, AccessMode::Direct);
    assert_eq!(a.source, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    assert!(a.client_public_key.is_none() && a.client_address.is_none());

    // Renew and revoke work as for the tunnel.
    let renewed = alice.renew(&d.admission_id).await.unwrap();
    assert!(renewed.expires_at >= d.expires_at);
    alice.revoke(&d.admission_id).await.unwrap();
    assert!(gw
        .wait_until(|ids| !ids.contains(&d.admission_id))
        .await
        .is_some());

    // A server that binds on the first handshake cannot offer direct mode.
    cp.admin
        .create_server(&CreateServer {
            name: "attic".into(),
            binding: proto::BindingPolicy::FirstHandshake,
            admission_ttl_secs: None,
        })
        .await
        .unwrap();
    cp.admin
        .create_grant(&CreateGrant {
            username: "alice".into(),
            server: "attic".into(),
            services: None,
            direct: true,
        })
        .await
        .unwrap();
    let e = alice.access_direct("attic").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some("direct_not_possible"))
    );
    cp.stop().await;
}

/// `POST /v1/login` with these forwarding header lines, as a proxy on
/// loopback would send it; (status, error code).
async fn login_via_proxy(
    cp: &Running,
    header: &str,
    lines: &[&str],
    user: &str,
    password: &str,
) -> (u16, String) {
    let mut r = cp
        .client()
        .http()
        .post(format!("{}/v1/login", cp.url))
        .json(&serde_json::json!({"username": user, "password": password}));
    for l in lines {
        r = r.header(header, *l);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// The source a login was recorded from, in the audit log.
async fn last_login_source(cp: &Running) -> String {
    let audit = cp.admin.audit(100).await.unwrap();
    audit
        .iter()
        .rev()
        .find(|e| e.event == "login" || e.event == "login_failed")
        .and_then(|e| e.source.clone())
        .unwrap()
}

/// A proxy that appends its own X-Forwarded-For line after the one the
/// client sent: only the right end of the whole list (the proxy's line)
/// is the client's real address. Reading only the first line let a
/// client choose the source its admission is bound to.
async fn forwarded_for_is_read_across_every_header_line(engine: Engine) {
    let store = engine.store();
    let settings = control::Settings {
        trusted_proxies: vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ],
        ..fast_settings()
    };
    let cp = Running::start(&store, "127.0.0.1:0", settings).await;
    seed(&cp.admin, "alice", "den", None).await;
    for (lines, want) in [
        // The client's own line first, the proxy's appended one last.
        (&["203.0.113.66", "198.51.100.7"][..], "198.51.100.7"),
        // A chain of trusted proxies on their own lines.
        (
            &["203.0.113.66, 198.51.100.8", "10.1.2.3", "10.9.9.9"][..],
            "198.51.100.8",
        ),
        // Ports and brackets as some proxies write them.
        (
            &["[2001:db8::5]:4711", "198.51.100.9:5000"][..],
            "198.51.100.9",
        ),
    ] {
        let (status, _) =
            login_via_proxy(&cp, "x-forwarded-for", lines, "alice", "password-of-alice").await;
        assert_eq!(status, 200);
        assert_eq!(last_login_source(&cp).await, want, "{lines:?}");
    }
    // With the RFC 7239 header configured, X-Forwarded-For is ignored and
    // Forwarded is read the same way.
    cp.stop().await;
    let settings = control::Settings {
        trusted_proxies: vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ],
        forwarded_header: control::app::ForwardedHeader::Forwarded,
        ..fast_settings()
    };
    let cp = Running::start(&store, "127.0.0.1:0", settings).await;
    for (header, lines, want) in [
        (
            "forwarded",
            &[
                r#"for=203.0.113.66"#,
                r#"for="[2001:db8::7]:4711";proto=https, for=10.0.0.2"#,
            ][..],
            "2001:db8::7",
        ),
        (
            "forwarded",
            &["For=198.51.100.20;by=10.0.0.1"][..],
            "198.51.100.20",
        ),
        // A client's own X-Forwarded-For means nothing here.
        ("x-forwarded-for", &["203.0.113.66"][..], "127.0.0.1"),
    ] {
        let (status, _) = login_via_proxy(&cp, header, lines, "alice", "password-of-alice").await;
        assert_eq!(status, 200);
        assert_eq!(last_login_source(&cp).await, want, "{header}: {lines:?}");
    }
    let (status, _) = login_via_proxy(&cp, "forwarded", &["for=unknown"], "alice", "x").await;
    assert_eq!(status, 400, "an obfuscated client cannot be bound to");
    cp.stop().await;
}

/// A guesser who fails alice's password over and over, from one address
/// or many, must not keep alice out: her right password from an address
/// that has not been guessing still logs her in. Time is a manual clock.
async fn a_guesser_cannot_lock_the_user_out(engine: Engine) {
    let store = engine.store();
    let (clock, hands) = control::Clock::manual();
    let settings = control::Settings {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        login_per_minute: 10,
        clock,
        ..fast_settings()
    };
    let cp = Running::start(&store, "127.0.0.1:0", settings).await;
    seed(&cp.admin, "alice", "den", None).await;
    let xff = "x-forwarded-for";

    // A guesser with two addresses, a wrong guess every second (faster
    // than the ten a minute that come back), for ten minutes.
    for i in 0..600 {
        let from = ["203.0.113.66", "203.0.113.67"][i % 2];
        let (status, _) = login_via_proxy(&cp, xff, &[from], "alice", "guess").await;
        assert!(status == 401 || status == 429, "{status}");
        hands.advance(Duration::from_secs(1));
    }
    let (status, _) =
        login_via_proxy(&cp, xff, &["198.51.100.7"], "alice", "password-of-alice").await;
    assert_eq!(status, 200, "alice is locked out by a guesser");

    // The guesser's own address is held to its limit meanwhile.
    let mut refused = 0;
    for _ in 0..11 {
        let (status, code) = login_via_proxy(&cp, xff, &["203.0.113.66"], "alice", "guess").await;
        if status == 429 {
            assert_eq!(code, "rate_limited");
            refused += 1;
        }
    }
    assert!(refused >= 1, "a guessing address is not limited");

    // Many addresses, one guess each: alice's failure budget is spent,
    // and every address that failed is refused for her...
    for i in 1..=30 {
        let (status, _) =
            login_via_proxy(&cp, xff, &[&format!("192.0.2.{i}")], "alice", "guess").await;
        assert!(status == 401 || status == 429, "{status}");
    }
    let (status, code) = login_via_proxy(&cp, xff, &["192.0.2.1"], "alice", "guess").await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // ...with the same answer whoever the name belongs to (the limiter
    // does not tell which accounts exist).
    for i in 1..=30 {
        login_via_proxy(&cp, xff, &[&format!("192.0.2.{i}")], "nobody", "guess").await;
    }
    let (status2, code2) = login_via_proxy(&cp, xff, &["192.0.2.1"], "nobody", "guess").await;
    assert_eq!((status2, code2), (status, code));
    // ...but alice herself, from home, gets in at once.
    let (status, _) =
        login_via_proxy(&cp, xff, &["198.51.100.7"], "alice", "password-of-alice").await;
    assert_eq!(status, 200, "alice is locked out by a spray of guesses");
    // An IPv6 guesser counts per /64: hopping addresses within it does not
    // earn more attempts.
    let mut v6_refused = 0;
    for i in 0..12 {
        let (status, _) =
            login_via_proxy(&cp, xff, &[&format!("2001:db8:0:1::{i:x}")], "bob", "guess").await;
        if status == 429 {
            v6_refused += 1;
        }
    }
    assert_eq!(v6_refused, 2, "ten attempts a minute per /64");
    cp.stop().await;
}

/// One user cannot take every tunnel address of a server: the ninth
/// admission (the default allows eight) gets a clear 409 that says what to
/// do, and the owner can change the limit per server.
async fn admissions_per_user_are_limited_per_server(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(alice.access("den", key(i + 1)).await.unwrap().admission_id);
    }
    let e = alice.access("den", key(9)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("admission_limit")));
    let text = e.to_string();
    assert!(
        text.contains("server 'den'")
            && text.contains("8 live admissions")
            && text.contains("owner"),
        "{text}"
    );
    assert_eq!(cp.admin.list_admissions().await.unwrap().len(), 8);
    let audit = cp.admin.audit(10).await.unwrap();
    assert_eq!(audit.last().unwrap().event, "access_denied");

    // Ending one makes room for one.
    alice.revoke(&ids[0]).await.unwrap();
    alice.access("den", key(10)).await.unwrap();
    assert!(alice.access("den", key(11)).await.is_err());

    // The owner raises the limit for this server.
    let s = cp
        .admin
        .update_server(
            "den",
            &UpdateServer {
                max_admissions_per_user: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.max_admissions_per_user, 10);
    alice.access("den", key(11)).await.unwrap();
    alice.access("den", key(12)).await.unwrap();
    assert_eq!(
        alice.access("den", key(13)).await.unwrap_err().code(),
        Some("admission_limit")
    );
    // Another user is not affected by alice's admissions.
    add_user_with_grant(&cp.admin, "bob", "den").await;
    login(&cp.client(), "bob")
        .await
        .access("den", key(14))
        .await
        .unwrap();
    // Set at creation too.
    let created = cp
        .admin
        .create_server_with(
            &CreateServer {
                name: "attic".into(),
                binding: Default::default(),
                admission_ttl_secs: None,
            },
            &ServerOptions {
                max_admissions_per_user: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(created.enrollment_token.starts_with("hge_"));
    let listed = cp.admin.list_servers().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|s| s.name == "attic")
            .unwrap()
            .max_admissions_per_user,
        2
    );
    drop(gw);
    cp.stop().await;
}

/// The follower's credential is refused now (a held poll included).
async fn credential_refused(cp: &Running, credential: &str) -> String {
    let e = feed_update(&cp.client().with_bearer(credential), None, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    e.to_string()
}

/// A stolen gateway credential can be revoked at once; a lost one does not
/// make the server unusable: a new one-time token re-enrolls it, and the
/// old credential stops working when the new one is issued.
async fn gateway_credentials_can_be_revoked_and_servers_reenrolled(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    let adm = alice.access("den", key(1)).await.unwrap();

    // A poll held with the credential ends as soon as it is revoked.
    let c = cp.client().with_bearer(&gw.credential);
    let version = gw.version();
    let held =
        tokio::spawn(async move { feed_update(&c, Some(version), Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    cp.admin.revoke_credential("den").await.unwrap();
    let e = tokio::time::timeout(PATIENCE, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(
        t.elapsed() < PUSH_BOUND,
        "the held poll lasted {:?}",
        t.elapsed()
    );
    let text = credential_refused(&cp, &gw.credential).await;
    assert!(text.contains("hushgate admin server reenroll"), "{text}");
    drop(gw);

    // Re-enrollment of the same server with a new token.
    let token = cp
        .admin
        .create_enrollment_token("den", &NewEnrollmentToken::default())
        .await
        .unwrap();
    assert!(token.token.starts_with("hge_"));
    let listed = cp.admin.list_enrollment_tokens().await.unwrap();
    assert!(listed.iter().any(|t| t.id == token.id && t.server == "den"));
    let gw2 = FeedFollower::enroll(&cp.client(), &token.token, key(200)).await;
    // Same gateway key: alice's admission is still there.
    assert!(gw2.admission_ids().contains(&adm.admission_id));
    assert!(cp.admin.list_enrollment_tokens().await.unwrap().is_empty());

    // A token issued without --revoke-now leaves the current credential
    // working until it is used; using it replaces the credential.
    let next = cp
        .admin
        .create_enrollment_token("den", &NewEnrollmentToken::default())
        .await
        .unwrap();
    alice.access("den", key(2)).await.expect("gw2 still serves");
    let gw3 = FeedFollower::enroll(&cp.client(), &next.token, key(200)).await;
    credential_refused(&cp, &gw2.credential).await;
    drop(gw2);
    alice.access("den", key(3)).await.expect("gw3 serves");

    // --revoke-now: the current credential stops at once.
    let third = cp
        .admin
        .create_enrollment_token(
            "den",
            &NewEnrollmentToken {
                revoke_credential: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    credential_refused(&cp, &gw3.credential).await;
    drop(gw3);

    // A revoked token cannot be used.
    cp.admin.revoke_enrollment_token(&third.id).await.unwrap();
    let e = cp
        .client()
        .enroll(&EnrollRequest {
            enrollment_token: third.token.clone(),
            report: report(key(200)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));

    // Tokens expire (a second here; a day by default).
    let short = cp
        .admin
        .create_enrollment_token(
            "den",
            &NewEnrollmentToken {
                ttl_secs: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = cp
        .client()
        .enroll(&EnrollRequest {
            enrollment_token: short.token.clone(),
            report: report(key(200)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("expired"), "{e}");

    let events: Vec<String> = cp
        .admin
        .audit(200)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    for want in [
        "credential_revoked",
        "enrollment_token_created",
        "enrollment_token_revoked",
        "enrolled",
    ] {
        assert!(events.iter().any(|e| e == want), "no {want} in {events:?}");
    }
    cp.stop().await;
}

/// Rename keeps everything; remove ends the admissions at the gateway
/// first, then frees the name, and a new server of that name starts clean.
async fn servers_can_be_renamed_and_removed(engine: Engine) {
    let store = engine.store();
    let (cp, gw, alice) = world(&store).await;
    let adm = alice.access("den", key(1)).await.unwrap();
    let s = cp
        .admin
        .update_server(
            "den",
            &UpdateServer {
                name: Some("living-room".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.name, "living-room");
    assert_eq!(
        alice.access("den", key(2)).await.unwrap_err().code(),
        Some("no_access")
    );
    alice.access("living-room", key(3)).await.unwrap();
    assert!(gw.admission_ids().contains(&adm.admission_id));
    assert_eq!(gw.state().server, "living-room");
    let grants = cp.admin.list_grants().await.unwrap();
    assert_eq!(grants[0].server, "living-room");

    let removed = cp.admin.remove_server("living-room").await.unwrap();
    assert_eq!(removed.admissions_ended, 2);
    assert!(removed.gateway_confirmed);
    assert!(gw.admission_ids().is_empty());
    credential_refused(&cp, &gw.credential).await;
    assert!(cp.admin.list_grants().await.unwrap().is_empty());
    assert!(cp.admin.list_admissions().await.unwrap().is_empty());
    drop(gw);

    // The name is free; the new server shares nothing with the old one
    // (an access is answered only after the new gateway acknowledged).
    let token = cp
        .admin
        .create_server(&CreateServer {
            name: "living-room".into(),
            binding: Default::default(),
            admission_ttl_secs: None,
        })
        .await
        .unwrap()
        .enrollment_token;
    cp.admin
        .create_grant(&CreateGrant {
            username: "alice".into(),
            server: "living-room".into(),
            services: None,
            direct: false,
        })
        .await
        .unwrap();
    let enrolled = cp
        .client()
        .enroll(&EnrollRequest {
            enrollment_token: token,
            report: report(key(201)),
        })
        .await
        .unwrap();
    let silent = FeedFollower::follow(&cp.client(), &enrolled.credential, false).await;
    let e = alice.access("living-room", key(4)).await.unwrap_err();
    assert_eq!(e.code(), Some("gateway_timeout"));
    drop(silent);
    let _gw = FeedFollower::follow(&cp.client(), &enrolled.credential, true).await;
    let r = alice.access("living-room", key(5)).await.unwrap();
    assert_eq!(r.client_address.to_string(), "100.64.0.2");
    let e = cp.admin.remove_server("nowhere").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    cp.stop().await;
}

/// A grant naming a service the gateway does not offer is refused when it
/// is made, naming what the gateway does offer; before the gateway has
/// reported, the grant is kept with a warning.
async fn grants_for_services_the_gateway_does_not_offer_are_refused(engine: Engine) {
    let store = engine.store();
    let (cp, _gw, _alice) = world(&store).await;
    let e = cp
        .admin
        .create_grant(&CreateGrant {
            username: "alice".into(),
            server: "den".into(),
            services: Some(vec!["emby".into()]),
            direct: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    let text = e.to_string();
    assert!(text.contains("'emby'") && text.contains("plex"), "{text}");
    assert_eq!(cp.admin.list_grants().await.unwrap()[0].services, None);

    cp.admin
        .create_server(&CreateServer {
            name: "attic".into(),
            binding: Default::default(),
            admission_ttl_secs: None,
        })
        .await
        .unwrap();
    let g = cp
        .admin
        .create_grant(&CreateGrant {
            username: "alice".into(),
            server: "attic".into(),
            services: Some(vec!["emby".into()]),
            direct: false,
        })
        .await
        .unwrap();
    assert_eq!(g.warnings.len(), 1);
    assert!(g.warnings[0].contains("not reported"), "{:?}", g.warnings);
    cp.stop().await;
}

async fn an_admin_sets_a_new_password_and_old_logins_end(engine: Engine) {
    let store = engine.store();
    let (cp, _gw, alice) = world(&store).await;
    cp.admin
        .set_password("alice", "a-new-long-password")
        .await
        .unwrap();
    assert_eq!(
        alice.access("den", key(1)).await.unwrap_err().status(),
        Some(401),
        "the old login still works"
    );
    let c = cp.client();
    assert_eq!(
        c.login("alice", "password-of-alice")
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    c.login("alice", "a-new-long-password").await.unwrap();
    assert_eq!(
        cp.admin
            .set_password("alice", "short")
            .await
            .unwrap_err()
            .status(),
        Some(400)
    );
    assert_eq!(
        cp.admin
            .set_password("nobody", "long-enough-password")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    cp.stop().await;
}

/// A client that reaches the control plane by a name its certificate
/// does not carry is told to add that name with --san (not to pass --ca,
/// which it already did).
async fn a_certificate_without_the_name_asks_for_san(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.2:0", fast_settings()).await;
    let e = cp
        .client()
        .login("alice", "whatever-password")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::CertificateWrongName { .. }), "{e}");
    assert!(e.to_string().contains("--san 127.0.0.2"), "{e}");
    cp.stop().await;
}

/// Issue 17, on both engines: a gateway's network report and the last
/// reachability check are stored with the server (and survive a
/// restart), and the check's one-off admission reaches a gateway that
/// follows the feed with diffs (bound exactly to the control plane's
/// address, no services, the reserved tunnel address) and leaves it when
/// the check ends.
async fn network_reports_and_reachability_checks_are_stored(engine: Engine) {
    use proto::reach::{MappingProtocol, MappingReport, MappingState, NetworkReport};
    let store = engine.store();
    let settings = || control::Settings {
        // The check waits for the follower's acknowledgement: generous,
        // since the machine may be busy.
        ack_timeout: Duration::from_secs(20),
        reachability_interval: None,
        ..fast_settings()
    };
    let cp = Running::start(&store, "127.0.0.1:0", settings()).await;
    let token = seed(&cp.admin, "alice", "den", None).await;
    let gw = FeedFollower::enroll(&cp.client(), &token, key(210)).await;
    // The gateway's UDP port: it hears the check's handshake and never
    // answers it.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let endpoint = udp.local_addr().unwrap();
    let mapping = MappingReport {
        state: MappingState::Mapped,
        router: Some("192.0.2.1".parse().unwrap()),
        protocol: Some(MappingProtocol::Pcp),
        router_external: Some(endpoint.ip()),
        external: Some(endpoint),
        lease_secs: Some(7200),
        error: None,
    };
    let mut r = report(key(210));
    r.public_endpoint = Some(endpoint);
    r.network = Some(NetworkReport {
        port_mapping: mapping.clone(),
        ipv6: Vec::new(),
        control_addresses: vec!["127.0.0.1".parse().unwrap()],
    });
    // A report with the network in it starts a check.
    cp.client()
        .with_bearer(&gw.credential)
        .report(&r)
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(PATIENCE, udp.recv_from(&mut buf))
        .await
        .expect("the check sends a handshake")
        .unwrap();
    // A handshake initiation (type 1, 148 bytes) from the address the
    // one-off admission binds; it is sent only once the gateway
    // acknowledged that admission, which it still holds while the check
    // waits for an answer.
    assert_eq!((n, buf[0]), (148, 1));
    assert_eq!(from.ip().to_string(), "127.0.0.1");
    let held = gw.state().admissions;
    let probe = held
        .iter()
        .find(|a| a.id.starts_with("probe_"))
        .unwrap_or_else(|| panic!("the follower holds the check's admission: {held:?}"));
    assert_eq!(probe.source.to_string(), "127.0.0.1");
    assert_eq!(probe.binding, proto::BindingPolicy::Exact);
    assert!(probe.services.is_empty());
    assert_eq!(
        probe.client_address,
        Some(control::reachability::PROBE_TUNNEL_ADDRESS)
    );
    // A check an admin asks for runs after that one, and says why the
    // endpoint did not answer.
    let view = cp.admin.check_server("den").await.unwrap();
    let check = view.check.clone().expect("a check result");
    assert!(!check.reachable);
    assert_eq!(
        check.reason,
        Some(proto::reach::UnreachableReason::NoAnswer)
    );
    assert_eq!(check.endpoint, endpoint);
    assert_eq!(
        check.from.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1")
    );
    // Its admission is gone from the gateway again.
    assert!(gw.wait_until(|ids| ids.is_empty()).await.is_some());
    // What the admin sees, also after a restart.
    let listed = |servers: Vec<ServerInfo>| {
        let den = servers.into_iter().find(|s| s.name == "den").unwrap();
        (den.port_mapping, den.reachability.check)
    };
    let want = (Some(mapping), Some(check));
    assert_eq!(listed(cp.admin.list_servers().await.unwrap()), want);
    drop(gw);
    cp.stop().await;
    let cp = Running::start(&store, "127.0.0.1:0", settings()).await;
    assert_eq!(listed(cp.admin.list_servers().await.unwrap()), want);
    cp.stop().await;
}

both_engines!(
    access_is_answered_after_the_gateway_has_the_admission,
    no_grant_and_unknown_server_look_the_same,
    offline_or_silent_gateway_gets_503_and_leaves_nothing,
    login_failures_are_uniform_and_rate_limited,
    bad_input_gets_a_clear_4xx_and_changes_nothing,
    admissions_survive_a_restart,
    expiry_and_grant_removal_reach_the_gateway,
    tunnel_addresses_never_collide_and_are_reused_after_release,
    forwarded_for_is_believed_only_from_trusted_proxies,
    a_renewal_from_another_address_says_the_client_moved,
    ipv6_clients_are_observed_as_such,
    an_untrusted_certificate_is_refused_with_a_clear_error,
    the_feed_sends_only_what_changed_since_the_version_held,
    an_unknown_old_or_future_version_gets_the_whole_set_and_history_survives_a_restart,
    every_change_reaches_a_diff_following_gateway,
    a_new_gateway_key_ends_every_admission_in_the_feed,
    users_cannot_touch_each_others_admissions_and_narrowed_grants_bite,
    a_binding_prefix_too_short_to_mean_anything_is_refused,
    state_files_holding_secrets_are_private,
    direct_access_opens_a_port_to_the_source_only_where_the_grant_allows,
    forwarded_for_is_read_across_every_header_line,
    a_guesser_cannot_lock_the_user_out,
    admissions_per_user_are_limited_per_server,
    gateway_credentials_can_be_revoked_and_servers_reenrolled,
    servers_can_be_renamed_and_removed,
    grants_for_services_the_gateway_does_not_offer_are_refused,
    an_admin_sets_a_new_password_and_old_logins_end,
    a_certificate_without_the_name_asks_for_san,
    network_reports_and_reachability_checks_are_stored,
);
