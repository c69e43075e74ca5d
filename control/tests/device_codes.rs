//! Sign-in by code (RFC 8628's device authorization grant) through the
//! real router over HTTPS, on both engines, with the control plane's
//! clock in the test's hands: the polling rules, expiry, single use,
//! who may approve (and to whom the device then belongs), two factors,
//! and the limiter against guessing codes.

mod support;

use control_client::ControlClient;
use proto::api::*;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use support::control;
use support::*;

async fn token_of(c: &ControlClient, name: &str) -> String {
    c.login(name, &format!("password-of-{name}"))
        .await
        .unwrap()
        .token
}

/// A control plane whose clock moves only when the test says.
async fn start(
    engine: Engine,
    per_minute: u32,
) -> (Store, Running, std::sync::Arc<control::ManualClock>) {
    let store = engine.store();
    let (clock, hands) = control::Clock::manual();
    let cp = Running::start(
        &store,
        "127.0.0.1:0",
        control::Settings {
            clock,
            login_per_minute: per_minute,
            ..fast_settings()
        },
    )
    .await;
    (store, cp, hands)
}

/// The API error code of a failed call.
fn code_of<T: std::fmt::Debug>(r: Result<T, control_client::ClientError>) -> String {
    r.expect_err("the call must fail")
        .code()
        .unwrap_or("(no code)")
        .to_string()
}

async fn a_device_signs_in_by_code_approved_by_one_user(engine: Engine) {
    let (_store, cp, hands) = start(engine, 1000).await;
    let c = cp.client();
    add_user(&cp.admin, "alice").await;
    add_user(&cp.admin, "bob").await;
    let alice = c.with_bearer(&token_of(&c, "alice").await);
    let bob = c.with_bearer(&token_of(&c, "bob").await);

    let g = c.device_code("living-room TV").await.unwrap();
    assert!(g.device_code.starts_with("hgc_") && g.device_code.len() > 40);
    assert_eq!(g.user_code.len(), 9, "{}", g.user_code);
    assert_eq!(g.verification_uri, format!("{}/device", cp.url));
    assert_eq!(
        g.verification_uri_complete,
        format!("{}/device?code={}", cp.url, g.user_code)
    );
    assert!(g.expires_in > 0 && g.expires_in <= 600);
    assert_eq!(g.interval, 5);

    // Undecided: pending; polling again at once: slow down, and the
    // interval grows by 5 s (RFC 8628, 3.5).
    assert_eq!(
        code_of(c.poll_device_code(&g.device_code).await),
        "authorization_pending"
    );
    assert_eq!(
        code_of(c.poll_device_code(&g.device_code).await),
        "slow_down"
    );
    hands.advance(Duration::from_secs(6));
    assert_eq!(
        code_of(c.poll_device_code(&g.device_code).await),
        "slow_down",
        "6 s is too soon after a slow down to 10 s"
    );
    // That was another slow down: 15 s now.
    hands.advance(Duration::from_secs(16));
    assert_eq!(
        code_of(c.poll_device_code(&g.device_code).await),
        "authorization_pending"
    );

    // Nobody signed in cannot approve; the operator's token has no
    // account to bind the device to; a mistyped code binds nothing.
    let (s, v) = send(
        &c,
        "",
        Method::POST,
        "/v1/device-codes/approve",
        Some(json!({"user_code": g.user_code})),
    )
    .await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(
        code_of(cp.admin.decide_device_code(&g.user_code, true).await),
        "account_required"
    );
    assert_eq!(
        code_of(alice.decide_device_code("BBBB-BBBB", true).await),
        "unknown_code"
    );
    assert_eq!(
        code_of(alice.decide_device_code("not a code", true).await),
        "bad_request"
    );

    // alice approves (typed in lower case, without the dash).
    let typed = g.user_code.replace('-', "").to_lowercase();
    let d = alice.decide_device_code(&typed, true).await.unwrap();
    assert_eq!(d.device_name, "living-room TV");
    assert_eq!(d.source, "127.0.0.1");
    assert!(d.approved);
    // Decided once: neither alice again nor bob can decide it now.
    assert_eq!(
        code_of(alice.decide_device_code(&g.user_code, true).await),
        "unknown_code"
    );
    assert_eq!(
        code_of(bob.decide_device_code(&g.user_code, true).await),
        "unknown_code"
    );
    assert_eq!(
        code_of(bob.decide_device_code(&g.user_code, false).await),
        "unknown_code"
    );

    // The next poll gets alice's sign-in and a new device credential.
    hands.advance(Duration::from_secs(16));
    let r = c.poll_device_code(&g.device_code).await.unwrap();
    let cred = r.device_credential.clone().unwrap();
    assert!(cred.starts_with("hgd_"));
    let tv = c.with_bearer(&r.token);
    let me = ok(&c, &r.token, Method::GET, "/v1/me", None).await;
    assert_eq!(me["username"], "alice");
    assert_eq!(me["session_mfa"], false);
    // Used once: a second poll is refused like an unknown code.
    hands.advance(Duration::from_secs(16));
    assert_eq!(
        code_of(c.poll_device_code(&g.device_code).await),
        "invalid_grant"
    );
    assert_eq!(
        code_of(c.poll_device_code("hgc_nothing").await),
        "invalid_grant"
    );

    // The device is alice's, not bob's, and signs in alone later.
    let devs = ok(
        &c,
        alice.bearer().unwrap(),
        Method::GET,
        "/v1/me/devices",
        None,
    )
    .await;
    assert_eq!(devs.as_array().unwrap().len(), 1, "{devs}");
    assert_eq!(devs[0]["name"], "living-room TV");
    assert_eq!(devs[0]["id"].as_str(), r.device_id.as_deref());
    let bobs = ok(
        &c,
        bob.bearer().unwrap(),
        Method::GET,
        "/v1/me/devices",
        None,
    )
    .await;
    assert!(bobs.as_array().unwrap().is_empty(), "{bobs}");
    let again = c.device_login(&cred).await.unwrap();
    assert_eq!(again.device_id, r.device_id);
    assert!(again.device_credential.is_none());
    let me = ok(&c, &again.token, Method::GET, "/v1/me", None).await;
    assert_eq!(me["username"], "alice");
    drop(tv);

    // A device registered by a password login does not sign in alone
    // (its credential only names it); nor does a removed device.
    let pw = c
        .login_with(&LoginRequest {
            username: "bob".into(),
            password: "password-of-bob".into(),
            totp: None,
            device_credential: None,
            device_name: Some("bob's laptop".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        code_of(
            c.device_login(pw.device_credential.as_deref().unwrap())
                .await
        ),
        "device_unknown"
    );
    ok(
        &c,
        alice.bearer().unwrap(),
        Method::DELETE,
        &format!("/v1/me/devices/{}", r.device_id.as_deref().unwrap()),
        None,
    )
    .await;
    assert_eq!(code_of(c.device_login(&cred).await), "device_unknown");

    // alice's audit says who approved what from where; bob's does not.
    let mine = ok(
        &c,
        alice.bearer().unwrap(),
        Method::GET,
        "/v1/me/audit",
        None,
    )
    .await;
    let text = mine.to_string();
    assert!(text.contains("device_code_approved"), "{text}");
    assert!(text.contains("living-room TV"), "{text}");
    assert!(!text.contains(&g.device_code) && !text.contains(&cred));
    let bobs = ok(&c, bob.bearer().unwrap(), Method::GET, "/v1/me/audit", None).await;
    assert!(!bobs.to_string().contains("device_code"), "{bobs}");
    cp.stop().await;
}

async fn codes_expire_and_denials_are_told_once(engine: Engine) {
    let (_store, cp, hands) = start(engine, 1000).await;
    let c = cp.client();
    add_user(&cp.admin, "alice").await;
    let alice = c.with_bearer(&token_of(&c, "alice").await);

    // Not approved in time: approving fails, the poll says expired.
    let late = c.device_code("tv").await.unwrap();
    hands.advance(Duration::from_secs(late.expires_in));
    assert_eq!(
        code_of(alice.decide_device_code(&late.user_code, true).await),
        "unknown_code"
    );
    assert_eq!(
        code_of(c.poll_device_code(&late.device_code).await),
        "expired_token"
    );

    // Approved, but collected too late: expired all the same.
    let g = c.device_code("tv").await.unwrap();
    alice.decide_device_code(&g.user_code, true).await.unwrap();
    hands.advance(Duration::from_secs(g.expires_in + 1));
    assert_eq!(
        code_of(c.poll_device_code(&g.device_code).await),
        "expired_token"
    );

    // Denied: the device hears so once, then the code is gone; nothing
    // was registered.
    let d = c.device_code("unknown box").await.unwrap();
    let decided = alice.decide_device_code(&d.user_code, false).await.unwrap();
    assert!(!decided.approved);
    assert_eq!(
        code_of(c.poll_device_code(&d.device_code).await),
        "access_denied"
    );
    hands.advance(Duration::from_secs(6));
    assert_eq!(
        code_of(c.poll_device_code(&d.device_code).await),
        "invalid_grant"
    );
    assert_eq!(
        code_of(alice.decide_device_code(&d.user_code, true).await),
        "unknown_code"
    );
    let devs = ok(
        &c,
        alice.bearer().unwrap(),
        Method::GET,
        "/v1/me/devices",
        None,
    )
    .await;
    assert!(devs.as_array().unwrap().is_empty(), "{devs}");
    let audit = ok(
        &c,
        alice.bearer().unwrap(),
        Method::GET,
        "/v1/me/audit",
        None,
    )
    .await;
    assert!(audit.to_string().contains("device_code_denied"), "{audit}");

    // The lifetime is capped at ten minutes; the operator's public URL
    // makes the link.
    cp.stop().await;
    let store = Engine::Sqlite.store();
    let cp = Running::start(
        &store,
        "127.0.0.1:0",
        control::Settings {
            device_code_ttl: Duration::from_secs(3600),
            public_url: Some("https://hushgate.example.net/".into()),
            ..fast_settings()
        },
    )
    .await;
    let g = cp.client().device_code("tv").await.unwrap();
    assert_eq!(g.expires_in, 600);
    assert_eq!(g.verification_uri, "https://hushgate.example.net/device");
    cp.stop().await;
}

async fn two_factors_carry_over_to_the_device(engine: Engine) {
    let (_store, cp, hands) = start(engine, 1000).await;
    let c = cp.client();
    add_user(&cp.admin, "owner").await;
    add_user(&cp.admin, "bob").await;
    add_user(&cp.admin, "carol").await;
    let owner = token_of(&c, "owner").await;
    let created: CreatedServer = serde_json::from_value(
        ok(
            &c,
            &owner,
            Method::POST,
            "/v1/servers",
            Some(json!({"name": "den"})),
        )
        .await,
    )
    .unwrap();
    let _gw = FeedFollower::enroll(&c, &created.enrollment_token, key(200)).await;
    for u in ["bob", "carol"] {
        ok(
            &c,
            &owner,
            Method::POST,
            "/v1/servers/den/shares",
            Some(json!({"username": u})),
        )
        .await;
    }
    ok(
        &c,
        &owner,
        Method::PATCH,
        "/v1/servers/den",
        Some(json!({"require_2fa": true})),
    )
    .await;
    let access = |token: String, k: u8| {
        let c = c.clone();
        async move {
            send(
                &c,
                &token,
                Method::POST,
                "/v1/access",
                Some(json!({"server": "den", "public_key": key(k).to_string()})),
            )
            .await
        }
    };

    // bob turns two factors on; his older one-factor session may not
    // approve a device any more.
    let old = token_of(&c, "bob").await;
    let e: TotpEnrollment =
        serde_json::from_value(ok(&c, &old, Method::POST, "/v1/me/totp", None).await).unwrap();
    let secret = control::totp::secret_from_base32(&e.secret).unwrap();
    let now = || (cp.state.settings.clock.now_millis() / 1000) as u64;
    ok(
        &c,
        &old,
        Method::POST,
        "/v1/me/totp/confirm",
        Some(json!({"code": control::totp::code_at(&secret, now())})),
    )
    .await;
    let g = c.device_code("bob's TV").await.unwrap();
    assert_eq!(
        code_of(
            c.with_bearer(&old)
                .decide_device_code(&g.user_code, true)
                .await
        ),
        "two_factor_required"
    );
    // Signed in with both factors, he approves, and the TV's sessions
    // count as two-factor ones: den lets it in.
    hands.advance(Duration::from_secs(30));
    let strong = c
        .login_with(&LoginRequest {
            username: "bob".into(),
            password: "password-of-bob".into(),
            totp: Some(control::totp::code_at(&secret, now())),
            device_credential: None,
            device_name: None,
        })
        .await
        .unwrap();
    c.with_bearer(&strong.token)
        .decide_device_code(&g.user_code, true)
        .await
        .unwrap();
    let tv = c.poll_device_code(&g.device_code).await.unwrap();
    let me = ok(&c, &tv.token, Method::GET, "/v1/me", None).await;
    assert_eq!(me["session_mfa"], true);
    let (s, v) = access(tv.token.clone(), 1).await;
    assert_eq!(s, 200, "{v}");
    let again = c
        .device_login(tv.device_credential.as_deref().unwrap())
        .await
        .unwrap();
    let (s, v) = access(again.token, 2).await;
    assert_eq!(
        s, 200,
        "a later sign-in of the device keeps two factors: {v}"
    );

    // carol has no second factor: her TV is hers, but den's policy
    // refuses it as it refuses her.
    let carol = token_of(&c, "carol").await;
    let g = c.device_code("carol's TV").await.unwrap();
    c.with_bearer(&carol)
        .decide_device_code(&g.user_code, true)
        .await
        .unwrap();
    let tv = c.poll_device_code(&g.device_code).await.unwrap();
    let (s, v) = access(tv.token, 3).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("two_factor_required"))
    );
    cp.stop().await;
}

async fn guessing_codes_is_throttled(engine: Engine) {
    const PER_MINUTE: u32 = 6;
    let (_store, cp, hands) = start(engine, PER_MINUTE).await;
    let c = cp.client();
    add_user(&cp.admin, "mallory").await;
    let mallory = c.with_bearer(&token_of(&c, "mallory").await);
    // The login spent one of this address's attempts; start full.
    hands.advance(Duration::from_secs(61));

    let g = c.device_code("tv").await.unwrap();
    // One attempt went to asking for the code; the other five to wrong
    // guesses, each a failed sign-in of mallory's.
    let mut wrong = 0;
    for letters in ["BBBB", "CCCC", "DDDD", "FFFF", "GGGG", "HHHH"] {
        let guess = format!("{letters}-{letters}");
        if guess == g.user_code {
            continue;
        }
        if wrong == 5 {
            break;
        }
        assert_eq!(
            code_of(mallory.decide_device_code(&guess, true).await),
            "unknown_code"
        );
        wrong += 1;
    }
    // The budget is spent: even the right code waits now.
    let refused = mallory.decide_device_code(&g.user_code, true).await;
    assert_eq!(code_of(refused), "rate_limited");
    let (s, _) = send(
        &c,
        mallory.bearer().unwrap(),
        Method::POST,
        "/v1/device-codes/approve",
        Some(json!({"user_code": "JJJJ-JJJJ"})),
    )
    .await;
    assert_eq!(s, 429);
    // A minute later the right code goes through, the device signs in.
    hands.advance(Duration::from_secs(61));
    mallory
        .decide_device_code(&g.user_code, true)
        .await
        .unwrap();
    c.poll_device_code(&g.device_code).await.unwrap();

    // Asking for codes is charged to the address as well.
    for _ in 0..PER_MINUTE - 1 {
        c.device_code("tv").await.unwrap();
    }
    assert_eq!(code_of(c.device_code("tv").await), "rate_limited");
    cp.stop().await;
}

/// A new password locks out the devices that sign in alone: a device
/// someone was tricked into approving stops at the next sign-in (the
/// wrong current password changes nothing, and counts as a failure).
async fn a_password_change_ends_code_devices(engine: Engine) {
    let (_store, cp, hands) = start(engine, 1000).await;
    let c = cp.client();
    add_user(&cp.admin, "alice").await;
    let alice = token_of(&c, "alice").await;
    let g = c.device_code("someone's box").await.unwrap();
    c.with_bearer(&alice)
        .decide_device_code(&g.user_code, true)
        .await
        .unwrap();
    hands.advance(Duration::from_secs(5));
    let r = c.poll_device_code(&g.device_code).await.unwrap();
    let cred = r.device_credential.unwrap();
    c.device_login(&cred).await.unwrap();
    let (s, _) = send(
        &c,
        &alice,
        Method::PUT,
        "/v1/me/password",
        Some(json!({"current_password": "wrong", "new_password": "a-new-password-of-alice"})),
    )
    .await;
    assert_eq!(s, 403);
    c.device_login(&cred).await.unwrap();
    let (s, _) = send(
        &c,
        &alice,
        Method::PUT,
        "/v1/me/password",
        Some(json!({"current_password": "password-of-alice", "new_password": "a-new-password-of-alice"})),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(code_of(c.device_login(&cred).await), "device_unknown");
    cp.stop().await;
}

both_engines!(
    a_password_change_ends_code_devices,
    a_device_signs_in_by_code_approved_by_one_user,
    codes_expire_and_denials_are_told_once,
    two_factors_carry_over_to_the_device,
    guessing_codes_is_throttled,
);
