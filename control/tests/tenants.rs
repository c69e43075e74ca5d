//! Self-service tenancy through the real router over HTTPS, on both
//! engines: owners register and share their own servers, invitations,
//! two-factor sign-in, device approval, and, above all, isolation: every
//! route of the API is called by a second owner and by a plain user with
//! the first owner's identifiers, and must answer exactly as it does for
//! identifiers nobody uses (a route without a case here fails the test).

mod support;

use control_client::ControlClient;
use proto::api::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::control;
use support::*;

/// Logs in, optionally registering a device; returns (token, device id,
/// device credential).
async fn login_device(
    c: &ControlClient,
    name: &str,
    device: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    let v = ok(
        c,
        "",
        Method::POST,
        "/v1/login",
        Some(json!({"username": name, "password": format!("password-of-{name}"), "device_name": device})),
    )
    .await;
    let r: LoginResponse = serde_json::from_value(v).unwrap();
    (r.token, r.device_id, r.device_credential)
}

async fn token_of(c: &ControlClient, name: &str) -> String {
    login_device(c, name, None).await.0
}

/// alice (an owner with server `den` and its following gateway) sharing
/// it with bob; returns alice's token and the gateway.
async fn alice_shares_den_with_bob(cp: &Running) -> (String, FeedFollower) {
    let c = cp.client();
    add_user(&cp.admin, "alice").await;
    add_user(&cp.admin, "bob").await;
    let alice = token_of(&c, "alice").await;
    let gw = owned_server(cp, &alice, "den", 200).await;
    ok(
        &c,
        &alice,
        Method::POST,
        "/v1/servers/den/shares",
        Some(json!({"username": "bob"})),
    )
    .await;
    (alice, gw)
}

/// An owner's server with a following gateway; returns it.
async fn owned_server(cp: &Running, owner: &str, name: &str, gw_key: u8) -> FeedFollower {
    let v = ok(
        &cp.client(),
        owner,
        Method::POST,
        "/v1/servers",
        Some(json!({"name": name})),
    )
    .await;
    let created: CreatedServer = serde_json::from_value(v).unwrap();
    FeedFollower::enroll(&cp.client(), &created.enrollment_token, key(gw_key)).await
}

fn tunnel(server: &str, k: u8) -> Value {
    json!({"server": server, "public_key": key(k).to_string()})
}

async fn events(cp: &Running, token: &str, server: &str) -> Vec<String> {
    let v = ok(
        &cp.client(),
        token,
        Method::GET,
        &format!("/v1/servers/{server}/audit"),
        None,
    )
    .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

async fn an_owner_shares_by_invitation_and_by_name_and_unsharing_ends_access(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = cp.client();
    let admin = cp.admin.bearer().unwrap().to_string();

    // The operator invites alice to make an account (sign-up is
    // invite-only by default).
    let inv: IssuedInvitation = serde_json::from_value(
        ok(
            &c,
            &admin,
            Method::POST,
            "/v1/admin/invitations",
            Some(json!({})),
        )
        .await,
    )
    .unwrap();
    ok(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(
            json!({"username": "alice", "password": "password-of-alice", "invitation": inv.token}),
        ),
    )
    .await;
    let alice = token_of(&c, "alice").await;
    let gw = owned_server(&cp, &alice, "den", 200).await;
    let mine: Vec<ServerInfo> =
        serde_json::from_value(ok(&c, &alice, Method::GET, "/v1/servers", None).await).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].owner.as_deref(), Some("alice"));
    assert!(mine[0].enrolled);

    // A link for two friends; bob signs up with it and has the share.
    let link: IssuedInvitation = serde_json::from_value(
        ok(
            &c,
            &alice,
            Method::POST,
            "/v1/servers/den/invitations",
            Some(json!({"uses": 2})),
        )
        .await,
    )
    .unwrap();
    assert!(link.token.starts_with("hgi_"));
    ok(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(json!({"username": "bob", "password": "password-of-bob", "invitation": link.token})),
    )
    .await;
    let bob = token_of(&c, "bob").await;
    let shares: Vec<GrantInfo> =
        serde_json::from_value(ok(&c, &bob, Method::GET, "/v1/me/shares", None).await).unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].server, "den");

    // carol has an account already: she accepts the same link (its last
    // use); a third account cannot.
    add_user(&cp.admin, "carol").await;
    let carol = token_of(&c, "carol").await;
    ok(
        &c,
        &carol,
        Method::POST,
        "/v1/invitations/accept",
        Some(json!({"invitation": link.token})),
    )
    .await;
    add_user(&cp.admin, "dave").await;
    let dave = token_of(&c, "dave").await;
    let (s, v) = send(
        &c,
        &dave,
        Method::POST,
        "/v1/invitations/accept",
        Some(json!({"invitation": link.token})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("invitation_invalid"))
    );
    // Shared with dave by name instead.
    ok(
        &c,
        &alice,
        Method::POST,
        "/v1/servers/den/shares",
        Some(json!({"username": "dave"})),
    )
    .await;
    let shares: Vec<GrantInfo> =
        serde_json::from_value(ok(&c, &alice, Method::GET, "/v1/servers/den/shares", None).await)
            .unwrap();
    let names: Vec<&str> = shares.iter().map(|g| g.username.as_str()).collect();
    assert_eq!(names, ["bob", "carol", "dave"]);

    // bob connects; alice sees his admission live.
    let r: AccessResponse = serde_json::from_value(
        ok(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 1))).await,
    )
    .unwrap();
    assert!(gw.admission_ids().contains(&r.admission_id));
    let live: Vec<AdmissionInfo> = serde_json::from_value(
        ok(&c, &alice, Method::GET, "/v1/servers/den/admissions", None).await,
    )
    .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].username, "bob");

    // The owner revokes one admission by its id; the friend cannot
    // renew it afterwards, nor could the owner renew it for him.
    let r2: AccessResponse = serde_json::from_value(
        ok(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 3))).await,
    )
    .unwrap();
    let renew = format!("/v1/admissions/{}/renew", r2.admission_id);
    let (s, _) = send(&c, &alice, Method::POST, &renew, None).await;
    assert_eq!(s, 404, "only the holder renews");
    ok(
        &c,
        &alice,
        Method::DELETE,
        &format!("/v1/admissions/{}", r2.admission_id),
        None,
    )
    .await;
    assert!(gw
        .wait_until(|ids| !ids.contains(&r2.admission_id))
        .await
        .is_some());
    let (s, _) = send(&c, &bob, Method::POST, &renew, None).await;
    assert_eq!(s, 404);

    // Unsharing ends it at the gateway (within a second; see PUSH_BOUND).
    ok(
        &c,
        &alice,
        Method::DELETE,
        "/v1/servers/den/shares/bob",
        None,
    )
    .await;
    let took = gw
        .wait_until(|ids| !ids.contains(&r.admission_id))
        .await
        .expect("the removal reached the gateway");
    assert!(took < PUSH_BOUND, "took {took:?}");
    let (s, v) = send(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 2))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("no_access")));

    // The server's audit tells the story, in alice's view only.
    let ev = events(&cp, &alice, "den").await;
    for e in [
        "server_created",
        "enrolled",
        "invitation_created",
        "invitation_used",
        "grant_created",
        "access_granted",
        "revoked",
        "grant_removed",
    ] {
        assert!(ev.iter().any(|x| x == e), "den's audit lacks {e}: {ev:?}");
    }
    // Revoking the link leaves nothing to use.
    let link2: IssuedInvitation = serde_json::from_value(
        ok(
            &c,
            &alice,
            Method::POST,
            "/v1/servers/den/invitations",
            Some(json!({})),
        )
        .await,
    )
    .unwrap();
    ok(
        &c,
        &alice,
        Method::DELETE,
        &format!("/v1/servers/den/invitations/{}", link2.id),
        None,
    )
    .await;
    let (s, _) = send(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(
            json!({"username": "erin", "password": "password-of-erin", "invitation": link2.token}),
        ),
    )
    .await;
    assert_eq!(s, 403);
    assert!(cp
        .admin
        .list_users()
        .await
        .unwrap()
        .iter()
        .all(|u| u.username != "erin"));
    cp.stop().await;
}

async fn sign_up_follows_the_operators_setting(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = cp.client();
    let admin = cp.admin.bearer().unwrap().to_string();
    let signup = |name: &str, inv: Option<&str>| json!({"username": name, "password": format!("password-of-{name}"), "invitation": inv});
    let users = || async { cp.admin.list_users().await.unwrap().len() };

    // Invite-only (the default): no invitation, or a made-up one, is
    // refused and creates nothing.
    let v = ok(&c, &admin, Method::GET, "/v1/admin/signup", None).await;
    assert_eq!(v["mode"], "invite-only");
    let (s, v) = send(&c, "", Method::POST, "/v1/signup", Some(signup("u1", None))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("invitation_required"))
    );
    let (s, v) = send(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(signup("u1", Some("hgi_nope"))),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("invitation_invalid"))
    );
    assert_eq!(users().await, 0);

    // Open: anyone.
    ok(
        &c,
        &admin,
        Method::PUT,
        "/v1/admin/signup",
        Some(json!({"mode": "open"})),
    )
    .await;
    ok(&c, "", Method::POST, "/v1/signup", Some(signup("u1", None))).await;
    // A taken name is a conflict that uses up nothing.
    let inv: IssuedInvitation = serde_json::from_value(
        ok(
            &c,
            &admin,
            Method::POST,
            "/v1/admin/invitations",
            Some(json!({})),
        )
        .await,
    )
    .unwrap();
    let (s, _) = send(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(signup("u1", Some(&inv.token))),
    )
    .await;
    assert_eq!(s, 409);
    let left: Vec<InvitationInfo> =
        serde_json::from_value(ok(&c, &admin, Method::GET, "/v1/admin/invitations", None).await)
            .unwrap();
    assert_eq!(
        left.len(),
        1,
        "a failed sign-up must not use the invitation"
    );

    // Closed: nobody without the operator's invitation, and an owner's
    // server link no longer makes accounts.
    ok(
        &c,
        &admin,
        Method::PUT,
        "/v1/admin/signup",
        Some(json!({"mode": "closed"})),
    )
    .await;
    let (s, v) = send(&c, "", Method::POST, "/v1/signup", Some(signup("u2", None))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("signup_closed"))
    );
    let u1 = token_of(&c, "u1").await;
    ok(
        &c,
        &u1,
        Method::POST,
        "/v1/servers",
        Some(json!({"name": "u1-box"})),
    )
    .await;
    let link: IssuedInvitation = serde_json::from_value(
        ok(
            &c,
            &u1,
            Method::POST,
            "/v1/servers/u1-box/invitations",
            Some(json!({})),
        )
        .await,
    )
    .unwrap();
    let (s, _) = send(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(signup("u3", Some(&link.token))),
    )
    .await;
    assert_eq!(s, 403);
    ok(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(signup("u4", Some(&inv.token))),
    )
    .await;
    let (s, v) = send(
        &c,
        &admin,
        Method::PUT,
        "/v1/admin/signup",
        Some(json!({"mode": "maybe"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(users().await, 2);
    // An owner cannot be deleted while their servers stand.
    let (s, v) = send(&c, &admin, Method::DELETE, "/v1/admin/users/u1", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("u1-box"));
    cp.stop().await;
}

async fn two_factor_sign_in(engine: Engine) {
    let store = engine.store();
    let (clock, hands) = control::Clock::manual();
    let cp = Running::start(
        &store,
        "127.0.0.1:0",
        control::Settings {
            clock,
            ..fast_settings()
        },
    )
    .await;
    let c = cp.client();
    let (alice, _gw) = alice_shares_den_with_bob(&cp).await;
    ok(
        &c,
        &alice,
        Method::PATCH,
        "/v1/servers/den",
        Some(json!({"require_2fa": true})),
    )
    .await;

    // Without a second factor bob cannot reach den.
    let bob = token_of(&c, "bob").await;
    let (s, v) = send(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 1))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("two_factor_required"))
    );

    // Enrolment: a secret, its URI and QR code; nothing changes until a
    // right code is confirmed.
    let e: TotpEnrollment =
        serde_json::from_value(ok(&c, &bob, Method::POST, "/v1/me/totp", None).await).unwrap();
    assert!(e.otpauth_uri.starts_with("otpauth://totp/hushgate:bob?"));
    assert!(e.qr_svg.contains("<svg"));
    let secret = control::totp::secret_from_base32(&e.secret).unwrap();
    let now = || (cp.state.settings.clock.now_millis() / 1000) as u64;
    let wrong = if control::totp::code_at(&secret, now()) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let (s, _) = send(
        &c,
        &bob,
        Method::POST,
        "/v1/me/totp/confirm",
        Some(json!({"code": wrong})),
    )
    .await;
    assert_eq!(s, 400);
    token_of(&c, "bob").await; // still a one-factor account
    let codes: RecoveryCodes = serde_json::from_value(
        ok(
            &c,
            &bob,
            Method::POST,
            "/v1/me/totp/confirm",
            Some(json!({"code": control::totp::code_at(&secret, now())})),
        )
        .await,
    )
    .unwrap();
    assert_eq!(codes.codes.len(), control::totp::RECOVERY_CODES);

    // Now the password alone is not enough; a wrong code is a failure.
    let login = |code: Option<String>| json!({"username": "bob", "password": "password-of-bob", "totp": code});
    let (s, v) = send(&c, "", Method::POST, "/v1/login", Some(login(None))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("totp_required"))
    );
    let (s, v) = send(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(Some(wrong.into()))),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("totp_wrong")));
    // The code of the step used at confirmation cannot be replayed.
    let (s, _) = send(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(Some(control::totp::code_at(&secret, now())))),
    )
    .await;
    assert_eq!(s, 401, "a code is good once");
    hands.advance(Duration::from_secs(30));
    let v = ok(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(Some(control::totp::code_at(&secret, now())))),
    )
    .await;
    let strong = v["token"].as_str().unwrap().to_string();
    let me = ok(&c, &strong, Method::GET, "/v1/me", None).await;
    assert_eq!(
        (me["totp"].as_bool(), me["session_mfa"].as_bool()),
        (Some(true), Some(true))
    );
    ok(
        &c,
        &strong,
        Method::POST,
        "/v1/access",
        Some(tunnel("den", 2)),
    )
    .await;

    // A recovery code works once.
    let rc = codes.codes[0].clone();
    ok(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(Some(rc.clone()))),
    )
    .await;
    let (s, _) = send(&c, "", Method::POST, "/v1/login", Some(login(Some(rc)))).await;
    assert_eq!(s, 401);

    // The audit of bob's account has it, and no secret.
    let mine = ok(&c, &strong, Method::GET, "/v1/me/audit", None).await;
    let text = mine.to_string();
    assert!(text.contains("totp_enabled"), "{text}");
    assert!(!text.contains(&e.secret));
    assert!(!text.contains(&codes.codes[1]));
    cp.stop().await;
}

async fn new_devices_wait_for_the_owners_approval(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = cp.client();
    let (alice, gw) = alice_shares_den_with_bob(&cp).await;
    ok(
        &c,
        &alice,
        Method::PATCH,
        "/v1/servers/den",
        Some(json!({"approve_devices": true})),
    )
    .await;

    let (bob, device, cred) = login_device(&c, "bob", Some("bob's laptop")).await;
    let device = device.expect("a device id");
    let cred = cred.expect("a device credential, once");
    assert!(cred.starts_with("hgd_"));
    let (s, v) = send(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 1))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("waiting_for_approval"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("waiting for alice to approve"));
    assert_eq!(gw.admission_count(), 0, "nothing admitted while waiting");

    // The same device logging in again is the same device.
    let v = ok(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(json!({"username": "bob", "password": "password-of-bob", "device_credential": cred})),
    )
    .await;
    assert_eq!(v["device_id"].as_str(), Some(device.as_str()));
    assert!(v.get("device_credential").is_none());

    let reqs: Vec<DeviceRequestInfo> =
        serde_json::from_value(ok(&c, &alice, Method::GET, "/v1/servers/den/devices", None).await)
            .unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].username.as_str(), reqs[0].state.as_str()),
        ("bob", "pending")
    );
    assert_eq!(reqs[0].device_name, "bob's laptop");
    ok(
        &c,
        &alice,
        Method::PUT,
        &format!("/v1/servers/den/devices/{device}"),
        Some(json!({"approve": true})),
    )
    .await;
    let r: AccessResponse = serde_json::from_value(
        ok(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 2))).await,
    )
    .unwrap();
    assert!(gw.admission_ids().contains(&r.admission_id));

    // A denial ends what the device holds there.
    ok(
        &c,
        &alice,
        Method::PUT,
        &format!("/v1/servers/den/devices/{device}"),
        Some(json!({"approve": false})),
    )
    .await;
    assert!(gw.wait_until(|ids| ids.is_empty()).await.is_some());
    let (s, v) = send(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 3))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("device_denied"))
    );

    // Approved again, then bob removes the device: its admission ends
    // and its logins with it.
    ok(
        &c,
        &alice,
        Method::PUT,
        &format!("/v1/servers/den/devices/{device}"),
        Some(json!({"approve": true})),
    )
    .await;
    ok(&c, &bob, Method::POST, "/v1/access", Some(tunnel("den", 4))).await;
    assert_eq!(gw.admission_count(), 1);
    ok(
        &c,
        &bob,
        Method::DELETE,
        &format!("/v1/me/devices/{device}"),
        None,
    )
    .await;
    assert!(gw.wait_until(|ids| ids.is_empty()).await.is_some());
    let (s, _) = send(&c, &bob, Method::GET, "/v1/me", None).await;
    assert_eq!(s, 401, "the device's login ended with it");
    let ev = events(&cp, &alice, "den").await;
    for e in [
        "device_approval_requested",
        "device_approved",
        "device_denied",
    ] {
        assert!(ev.iter().any(|x| x == e), "den's audit lacks {e}: {ev:?}");
    }
    cp.stop().await;
}

// ---------- limits per account ----------

/// The `limit_reached` answer: 409 naming the limit and its value.
fn assert_limit(status: u16, v: &Value, name: &str, max: u64) {
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("limit_reached")),
        "{v}"
    );
    assert_eq!(v["error"]["limit"]["name"].as_str(), Some(name), "{v}");
    assert_eq!(v["error"]["limit"]["max"].as_u64(), Some(max), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("limit of {max} ({name})")),
        "{message}"
    );
}

/// POSTs of each of `oks` to `path` succeed, then one of `refused` gets
/// `limit_reached` (`name`, `max`); the first success's answer.
async fn oks_then_limit(
    c: &ControlClient,
    token: &str,
    path: &str,
    (oks, refused): (&[Value], Value),
    name: &str,
    max: u64,
) -> Value {
    let mut first = Value::Null;
    for body in oks {
        let v = ok(c, token, Method::POST, path, Some(body.clone())).await;
        if first.is_null() {
            first = v;
        }
    }
    let (s, v) = send(c, token, Method::POST, path, Some(refused)).await;
    assert_limit(s, &v, name, max);
    first
}

fn small_limits() -> control::Settings {
    let mut settings = fast_settings();
    for l in [
        "servers-per-owner=2",
        "enrollment-tokens-per-server=2",
        "invitations-per-server=2",
        "account-invitations=1",
        "shares-per-server=1",
        "devices-per-user=2",
        "sessions-per-user=2",
        "pending-devices-per-server=1",
    ] {
        settings.limits.set(l).unwrap();
    }
    settings
}

async fn one_account_cannot_grow_its_state_without_bound(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", small_limits()).await;
    let c = cp.client();
    add_user(&cp.admin, "alice").await;
    add_user(&cp.admin, "bob").await;
    add_user(&cp.admin, "carol").await;
    let alice = token_of(&c, "alice").await;

    // Servers per owner; the operator's own are not counted.
    let _gw = owned_server(&cp, &alice, "den", 200).await;
    let (attic, cellar) = (json!({"name": "attic"}), json!({"name": "cellar"}));
    oks_then_limit(
        &c,
        &alice,
        "/v1/servers",
        (&[attic], cellar),
        "servers-per-owner",
        2,
    )
    .await;
    let (s, _) = send(&c, &alice, Method::GET, "/v1/servers/cellar", None).await;
    assert_eq!(s, 404, "the refused server was not stored");
    let admin = cp.admin.bearer().unwrap().to_string();
    let (s, _) = send(
        &c,
        &admin,
        Method::POST,
        "/v1/admin/servers",
        Some(json!({"name": "operators"})),
    )
    .await;
    assert_eq!(s, 201, "the operator's servers are not counted");

    // Live enrollment tokens per server (registering attic made one).
    let tokens = "/v1/servers/attic/enrollment-tokens";
    let one = (&[json!({})][..], json!({}));
    oks_then_limit(
        &c,
        &alice,
        tokens,
        one.clone(),
        "enrollment-tokens-per-server",
        2,
    )
    .await;

    // Live invitation links per server; a revoked one makes room.
    let links = "/v1/servers/den/invitations";
    let two = (&[json!({}), json!({})][..], json!({}));
    let first = oks_then_limit(&c, &alice, links, two, "invitations-per-server", 2).await;
    let first: IssuedInvitation = serde_json::from_value(first).unwrap();
    ok(
        &c,
        &alice,
        Method::DELETE,
        &format!("{links}/{}", first.id),
        None,
    )
    .await;
    let link: IssuedInvitation =
        serde_json::from_value(ok(&c, &alice, Method::POST, links, Some(json!({}))).await).unwrap();

    // The operator's invitations to create an account.
    let account_links = "/v1/admin/invitations";
    oks_then_limit(&c, &admin, account_links, one, "account-invitations", 1).await;

    // Shares per server: a second account is refused, changing the
    // existing share is not; a sign-up through a link of the full server
    // creates no account and leaves the link as it was.
    let (bob, carol) = (json!({"username": "bob"}), json!({"username": "carol"}));
    let shares = "/v1/servers/den/shares";
    oks_then_limit(&c, &alice, shares, (&[bob], carol), "shares-per-server", 1).await;
    ok(
        &c,
        &alice,
        Method::POST,
        "/v1/servers/den/shares",
        Some(json!({"username": "bob", "direct": true})),
    )
    .await;
    let (s, v) = send(
        &c,
        "",
        Method::POST,
        "/v1/signup",
        Some(json!({"username": "dave", "password": "password-of-dave", "invitation": link.token})),
    )
    .await;
    assert_limit(s, &v, "shares-per-server", 1);
    let (s, _) = send(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(json!({"username": "dave", "password": "password-of-dave"})),
    )
    .await;
    assert_eq!(s, 401, "no account was made");
    let links: Vec<InvitationInfo> = serde_json::from_value(
        ok(&c, &alice, Method::GET, "/v1/servers/den/invitations", None).await,
    )
    .unwrap();
    assert!(
        links.iter().any(|l| l.id == link.id && l.uses_left == 1),
        "{links:?}"
    );

    // Devices per user; removing one makes room.
    let (_, phone, _) = login_device(&c, "bob", Some("phone")).await;
    let (_, _, tablet) = login_device(&c, "bob", Some("tablet")).await;
    let (s, v) = send(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(json!({"username": "bob", "password": "password-of-bob", "device_name": "tv"})),
    )
    .await;
    assert_limit(s, &v, "devices-per-user", 2);
    let bob = token_of(&c, "bob").await;
    let devices: Vec<DeviceInfo> =
        serde_json::from_value(ok(&c, &bob, Method::GET, "/v1/me/devices", None).await).unwrap();
    assert_eq!(devices.len(), 2, "the refused device was not stored");
    ok(
        &c,
        &bob,
        Method::DELETE,
        &format!("/v1/me/devices/{}", phone.unwrap()),
        None,
    )
    .await;
    let (_, _, tv) = login_device(&c, "bob", Some("tv")).await;

    // Sessions per user: never refused, the oldest login ends.
    let t1 = token_of(&c, "bob").await;
    let t2 = token_of(&c, "bob").await;
    let t3 = token_of(&c, "bob").await;
    assert_eq!(
        send(&c, &t1, Method::GET, "/v1/me", None).await.0,
        401,
        "the oldest login ended"
    );
    assert_eq!(send(&c, &t2, Method::GET, "/v1/me", None).await.0, 200);
    assert_eq!(send(&c, &t3, Method::GET, "/v1/me", None).await.0, 200);

    // Devices waiting for one server's owner: a second one is refused
    // until the owner decides on the first.
    ok(
        &c,
        &alice,
        Method::PATCH,
        "/v1/servers/den",
        Some(json!({"approve_devices": true})),
    )
    .await;
    let as_device = |cred: Option<String>| {
        let c = c.clone();
        async move {
            let v = ok(&c, "", Method::POST, "/v1/login", Some(json!({"username": "bob", "password": "password-of-bob", "device_credential": cred.unwrap()}))).await;
            v["token"].as_str().unwrap().to_string()
        }
    };
    let on_tablet = as_device(tablet).await;
    let (s, v) = send(
        &c,
        &on_tablet,
        Method::POST,
        "/v1/access",
        Some(tunnel("den", 1)),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("waiting_for_approval")),
        "{v}"
    );
    let on_tv = as_device(tv).await;
    let (s, v) = send(
        &c,
        &on_tv,
        Method::POST,
        "/v1/access",
        Some(tunnel("den", 2)),
    )
    .await;
    assert_limit(s, &v, "pending-devices-per-server", 1);
    cp.stop().await;
}

/// A device credential the control plane does not know (its database was
/// rebuilt) registers anew when the client names its device; one its
/// account removed is refused with its own code, so a client cannot undo
/// the removal by itself.
async fn a_forgotten_device_registers_anew_but_a_removed_one_does_not(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = cp.client();
    add_user(&cp.admin, "bob").await;
    let login = |cred: &str, name: Option<&str>| json!({"username": "bob", "password": "password-of-bob", "device_credential": cred, "device_name": name});
    let (_, laptop, cred) = login_device(&c, "bob", Some("laptop")).await;
    let (laptop, cred) = (laptop.unwrap(), cred.unwrap());
    // Known: the same device, no new credential, name or not.
    let v = ok(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(&cred, Some("laptop"))),
    )
    .await;
    assert_eq!(v["device_id"].as_str(), Some(laptop.as_str()));
    assert!(v.get("device_credential").is_none(), "{v}");

    // Forgotten (as after a rebuilt database): without a name, the old
    // answer; with it, a new device and a new credential.
    let forgotten = "hgd_0000000000000000000000000000000000000000000";
    let (s, v) = send(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(forgotten, None)),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("device_unknown")),
        "{v}"
    );
    let v = ok(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(forgotten, Some("laptop"))),
    )
    .await;
    let anew = v["device_id"].as_str().unwrap().to_string();
    assert_ne!(anew, laptop);
    let new_cred = v["device_credential"]
        .as_str()
        .expect("a new credential")
        .to_string();
    let v = ok(
        &c,
        "",
        Method::POST,
        "/v1/login",
        Some(login(&new_cred, Some("laptop"))),
    )
    .await;
    assert_eq!(
        v["device_id"].as_str(),
        Some(anew.as_str()),
        "the new credential is that device"
    );

    // Removed: refused as removed, name or not, and nothing registered.
    let bob = v["token"].as_str().unwrap().to_string();
    ok(
        &c,
        &bob,
        Method::DELETE,
        &format!("/v1/me/devices/{laptop}"),
        None,
    )
    .await;
    for name in [Some("laptop"), None] {
        let (s, v) = send(&c, "", Method::POST, "/v1/login", Some(login(&cred, name))).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("device_removed")),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("delete its device file"),
            "{v}"
        );
    }
    let bob = token_of(&c, "bob").await;
    let devices: Vec<DeviceInfo> =
        serde_json::from_value(ok(&c, &bob, Method::GET, "/v1/me/devices", None).await).unwrap();
    assert_eq!(
        devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec![anew.as_str()]
    );
    cp.stop().await;
}

// ---------- isolation ----------

/// What a route must answer to someone who is not the tenant.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Takes no tenant's identifier (public, or a gateway's credential):
    /// `status` for a user's token.
    Status(u16),
    /// Acts on the caller's own things: succeeds or fails, but its answer
    /// never names the victim's things.
    OwnOnly,
    /// Names a tenant's thing: the answer to the victim's identifiers is
    /// exactly the answer to unknown ones, with this status.
    SameAsUnknown(u16),
}

/// One route's case: its path with `{...}` filled from the victim's or
/// unknown identifiers, and a body that passes validation.
struct Case {
    method: Method,
    path: &'static str,
    expect: Expect,
    body: Option<Value>,
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let c = |method: Method, path: &'static str, expect: Expect, body: Option<Value>| Case {
        method,
        path,
        expect,
        body,
    };
    vec![
        c(Method::GET, "/v1/health", Status(200), None),
        // Logging in and signing up name no tenant's thing; a token is
        // not a password (400 for the empty body).
        c(Method::POST, "/v1/login", Status(415), None),
        c(Method::POST, "/v1/signup", Status(415), None),
        // Sign-in by code: asking for a code names nobody; a code the
        // victim's device used is answered like one nobody ever had,
        // whether polled for or approved (binding nothing to anyone).
        c(Method::POST, "/v1/device-codes", Status(415), None),
        c(
            Method::POST,
            "/v1/device-codes/token",
            SameAsUnknown(400),
            Some(json!({"device_code": "{devicecode}"})),
        ),
        c(
            Method::POST,
            "/v1/device-codes/approve",
            SameAsUnknown(404),
            Some(json!({"user_code": "{usercode}"})),
        ),
        c(
            Method::POST,
            "/v1/device-codes/deny",
            SameAsUnknown(404),
            Some(json!({"user_code": "{usercode}"})),
        ),
        c(Method::POST, "/v1/login/device", Status(415), None),
        c(
            Method::POST,
            "/v1/access",
            SameAsUnknown(403),
            Some(json!({"server": "{name}", "public_key": key(77).to_string()})),
        ),
        c(
            Method::DELETE,
            "/v1/admissions/{admission}",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::POST,
            "/v1/admissions/{admission}/renew",
            SameAsUnknown(404),
            None,
        ),
        // Gateways authenticate with their credential, never a login.
        c(Method::POST, "/v1/gateway/enroll", Status(415), None),
        c(Method::POST, "/v1/gateway/report", Status(401), None),
        c(Method::GET, "/v1/gateway/feed", Status(401), None),
        c(Method::POST, "/v1/gateway/ack", Status(401), None),
        c(Method::GET, "/v1/me", OwnOnly, None),
        c(Method::GET, "/v1/me/shares", OwnOnly, None),
        c(Method::GET, "/v1/me/admissions", OwnOnly, None),
        c(Method::GET, "/v1/me/audit", OwnOnly, None),
        c(Method::GET, "/v1/me/devices", OwnOnly, None),
        c(
            Method::PATCH,
            "/v1/me/devices/{device}",
            SameAsUnknown(404),
            Some(json!({"name": "mine now"})),
        ),
        c(
            Method::DELETE,
            "/v1/me/devices/{device}",
            SameAsUnknown(404),
            None,
        ),
        c(Method::GET, "/v1/me/sessions", OwnOnly, None),
        c(
            Method::DELETE,
            "/v1/me/sessions/{session}",
            SameAsUnknown(404),
            None,
        ),
        // The current password is checked before anything changes.
        c(
            Method::PUT,
            "/v1/me/password",
            OwnOnly,
            Some(json!({"current_password": "not-the-password", "new_password": "a-new-password"})),
        ),
        c(Method::POST, "/v1/me/totp", OwnOnly, None),
        c(
            Method::POST,
            "/v1/me/totp/confirm",
            OwnOnly,
            Some(json!({"code": "123456"})),
        ),
        c(
            Method::DELETE,
            "/v1/me/totp",
            OwnOnly,
            Some(json!({"code": "123456"})),
        ),
        // An invitation's id is not its secret.
        c(
            Method::POST,
            "/v1/invitations/accept",
            SameAsUnknown(403),
            Some(json!({"invitation": "{invitation}"})),
        ),
        c(
            Method::POST,
            "/v1/servers",
            OwnOnly,
            Some(json!({"name": "intruder-box"})),
        ),
        c(Method::GET, "/v1/servers", OwnOnly, None),
        c(Method::GET, "/v1/servers/{name}", SameAsUnknown(404), None),
        c(
            Method::PATCH,
            "/v1/servers/{name}",
            SameAsUnknown(404),
            Some(json!({"require_2fa": true, "direct_mode": false})),
        ),
        c(
            Method::DELETE,
            "/v1/servers/{name}",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::POST,
            "/v1/servers/{name}/enrollment-tokens",
            SameAsUnknown(404),
            Some(json!({"revoke_credential": true})),
        ),
        c(
            Method::DELETE,
            "/v1/servers/{name}/credential",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::GET,
            "/v1/servers/{name}/shares",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::POST,
            "/v1/servers/{name}/shares",
            SameAsUnknown(404),
            Some(json!({"username": "{attacker}"})),
        ),
        c(
            Method::DELETE,
            "/v1/servers/{name}/shares/{user}",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::GET,
            "/v1/servers/{name}/invitations",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::POST,
            "/v1/servers/{name}/invitations",
            SameAsUnknown(404),
            Some(json!({})),
        ),
        c(
            Method::DELETE,
            "/v1/servers/{name}/invitations/{invitation}",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::GET,
            "/v1/servers/{name}/admissions",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::GET,
            "/v1/servers/{name}/audit",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::GET,
            "/v1/servers/{name}/devices",
            SameAsUnknown(404),
            None,
        ),
        c(
            Method::PUT,
            "/v1/servers/{name}/devices/{device}",
            SameAsUnknown(404),
            Some(json!({"approve": true})),
        ),
        // The operator's routes refuse every account that is not one.
        c(Method::POST, "/v1/admin/users", Status(403), None),
        c(Method::GET, "/v1/admin/users", Status(403), None),
        c(Method::DELETE, "/v1/admin/users/{user}", Status(403), None),
        c(
            Method::PUT,
            "/v1/admin/users/{user}/password",
            Status(403),
            None,
        ),
        c(Method::POST, "/v1/admin/servers", Status(403), None),
        c(Method::GET, "/v1/admin/servers", Status(403), None),
        c(Method::PATCH, "/v1/admin/servers/{name}", Status(403), None),
        c(
            Method::DELETE,
            "/v1/admin/servers/{name}",
            Status(403),
            None,
        ),
        c(
            Method::POST,
            "/v1/admin/servers/{name}/enrollment-tokens",
            Status(403),
            None,
        ),
        c(
            Method::DELETE,
            "/v1/admin/servers/{name}/credential",
            Status(403),
            None,
        ),
        c(
            Method::POST,
            "/v1/admin/servers/{name}/check",
            Status(403),
            None,
        ),
        c(
            Method::GET,
            "/v1/admin/enrollment-tokens",
            Status(403),
            None,
        ),
        c(
            Method::DELETE,
            "/v1/admin/enrollment-tokens/{invitation}",
            Status(403),
            None,
        ),
        c(Method::POST, "/v1/admin/grants", Status(403), None),
        c(Method::GET, "/v1/admin/grants", Status(403), None),
        c(
            Method::DELETE,
            "/v1/admin/grants/{user}/{name}",
            Status(403),
            None,
        ),
        c(Method::GET, "/v1/admin/admissions", Status(403), None),
        c(Method::GET, "/v1/admin/audit", Status(403), None),
        c(Method::GET, "/v1/admin/signup", Status(403), None),
        c(Method::PUT, "/v1/admin/signup", Status(403), None),
        c(Method::POST, "/v1/admin/invitations", Status(403), None),
        c(Method::GET, "/v1/admin/invitations", Status(403), None),
        c(
            Method::DELETE,
            "/v1/admin/invitations/{invitation}",
            Status(403),
            None,
        ),
    ]
}

/// The route's path pattern with every `{param}` (axum's form) turned
/// into the placeholder the cases use.
fn pattern_matches(route: &str, case: &str) -> bool {
    let norm = |p: &str| -> String {
        p.split('/')
            .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    };
    norm(route) == norm(case)
}

#[test]
fn every_route_has_an_isolation_case() {
    let cases = cases();
    for (method, path) in control::app::routes() {
        assert!(
            cases
                .iter()
                .any(|c| c.method == method && pattern_matches(path, c.path)),
            "{method} {path} has no case in tenants.rs cases(): say what it must answer another tenant"
        );
    }
    assert_eq!(
        cases.len(),
        control::app::routes().len(),
        "a case for a route that does not exist"
    );
}

/// The victim's identifiers, and identifiers nobody uses, by placeholder.
struct Ids(Vec<(&'static str, String)>);

impl Ids {
    fn fill(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.0 {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }
    /// The answer's message with the identifiers put back as
    /// placeholders, to compare answers about different identifiers.
    fn unfill(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.0 {
            out = out.replace(v.as_str(), &format!("{{{k}}}"));
        }
        out
    }
}

async fn no_route_lets_another_tenant_see_or_touch_anything(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = cp.client();
    for u in ["victim-owner", "victim-friend", "other-owner", "plain-user"] {
        add_user(&cp.admin, u).await;
    }
    // The victim: an owner with a server, a friend on it holding an
    // admission from a registered device, a pending device request on a
    // second server, an invitation.
    let owner = token_of(&c, "victim-owner").await;
    let gw = owned_server(&cp, &owner, "victim-den", 200).await;
    ok(
        &c,
        &owner,
        Method::POST,
        "/v1/servers",
        Some(json!({"name": "victim-attic"})),
    )
    .await;
    for s in ["victim-den", "victim-attic"] {
        ok(
            &c,
            &owner,
            Method::POST,
            &format!("/v1/servers/{s}/shares"),
            Some(json!({"username": "victim-friend"})),
        )
        .await;
    }
    ok(
        &c,
        &owner,
        Method::PATCH,
        "/v1/servers/victim-attic",
        Some(json!({"approve_devices": true})),
    )
    .await;
    let (friend, device, _) = login_device(&c, "victim-friend", Some("friend-phone")).await;
    let device = device.unwrap();
    let adm: AccessResponse = serde_json::from_value(
        ok(
            &c,
            &friend,
            Method::POST,
            "/v1/access",
            Some(tunnel("victim-den", 1)),
        )
        .await,
    )
    .unwrap();
    let (s, _) = send(
        &c,
        &friend,
        Method::POST,
        "/v1/access",
        Some(tunnel("victim-attic", 2)),
    )
    .await;
    assert_eq!(s, 403, "the attic waits for approval");
    let inv: IssuedInvitation = serde_json::from_value(
        ok(
            &c,
            &owner,
            Method::POST,
            "/v1/servers/victim-den/invitations",
            Some(json!({})),
        )
        .await,
    )
    .unwrap();

    // The friend's TV signed in by code (the code is used up now).
    let grant = c.device_code("friend-tv").await.unwrap();
    c.with_bearer(&friend)
        .decide_device_code(&grant.user_code, true)
        .await
        .unwrap();
    let tv = c.poll_device_code(&grant.device_code).await.unwrap();

    let other = token_of(&c, "other-owner").await;
    let _other_gw = owned_server(&cp, &other, "other-den", 201).await;
    let plain = token_of(&c, "plain-user").await;
    let sessions = ok(&c, &owner, Method::GET, "/v1/me/sessions", None).await;
    let session = sessions[0]["id"].as_str().unwrap().to_string();

    let victim_names = [
        "victim-den".to_string(),
        "victim-attic".to_string(),
        "victim-friend".to_string(),
        "victim-owner".to_string(),
        adm.admission_id.clone(),
        device.clone(),
        inv.id.clone(),
        "friend-phone".to_string(),
        session.clone(),
        "friend-tv".to_string(),
        grant.user_code.clone(),
    ];
    for (attacker, token) in [("other-owner", &other), ("plain-user", &plain)] {
        let victim = Ids(vec![
            ("name", "victim-den".into()),
            ("user", "victim-friend".into()),
            ("admission", adm.admission_id.clone()),
            ("device", device.clone()),
            ("invitation", inv.id.clone()),
            ("session", session.clone()),
            ("usercode", grant.user_code.clone()),
            ("devicecode", grant.device_code.clone()),
            ("attacker", attacker.into()),
        ]);
        let unknown = Ids(vec![
            ("name", "nobodys-den".into()),
            ("user", "nobody-at-all".into()),
            ("admission", "adm_000000000000000000000000".into()),
            ("device", "dev_000000000000000000000000".into()),
            ("invitation", "inv_000000000000000000000000".into()),
            ("session", "ses_0000000000000000".into()),
            ("usercode", "BBBB-BBBB".into()),
            (
                "devicecode",
                "hgc_0000000000000000000000000000000000000000000".into(),
            ),
            ("attacker", attacker.into()),
        ]);
        for case in cases() {
            let call = |ids: &Ids| {
                let path = ids.fill(case.path);
                let body = case
                    .body
                    .as_ref()
                    .map(|b| serde_json::from_str(&ids.fill(&b.to_string())).unwrap());
                let (c, method) = (c.clone(), case.method.clone());
                async move { send(&c, token, method, &path, body).await }
            };
            let what = format!("{} {} as {attacker}", case.method, case.path);
            match case.expect {
                Expect::Status(want) => {
                    let (s, v) = call(&victim).await;
                    assert_eq!(s, want, "{what}: {v}");
                }
                Expect::OwnOnly => {
                    let (s, v) = call(&victim).await;
                    let text = v.to_string();
                    for n in &victim_names {
                        // The caller's own audit echoes the server name it
                        // asked for access to (and was refused).
                        if case.path == "/v1/me/audit" && n == "victim-den" {
                            continue;
                        }
                        assert!(!text.contains(n.as_str()), "{what} ({s}) shows {n}: {text}");
                    }
                }
                Expect::SameAsUnknown(want) => {
                    let (s1, v1) = call(&victim).await;
                    let (s2, v2) = call(&unknown).await;
                    assert_eq!(s1, want, "{what}: {v1}");
                    assert_eq!(s2, want, "{what} (unknown ids): {v2}");
                    assert_eq!(
                        victim.unfill(&v1.to_string()),
                        unknown.unfill(&v2.to_string()),
                        "{what}: the victim's ids and unknown ones are told apart"
                    );
                }
            }
        }
    }

    // Nothing of the victim's changed.
    let den: ServerInfo =
        serde_json::from_value(ok(&c, &owner, Method::GET, "/v1/servers/victim-den", None).await)
            .unwrap();
    assert!(!den.require_2fa && den.direct_mode && den.enrolled);
    let shares = ok(
        &c,
        &owner,
        Method::GET,
        "/v1/servers/victim-den/shares",
        None,
    )
    .await;
    assert_eq!(shares.as_array().unwrap().len(), 1);
    let invs = ok(
        &c,
        &owner,
        Method::GET,
        "/v1/servers/victim-den/invitations",
        None,
    )
    .await;
    assert_eq!(invs.as_array().unwrap().len(), 1);
    let reqs = ok(
        &c,
        &owner,
        Method::GET,
        "/v1/servers/victim-attic/devices",
        None,
    )
    .await;
    assert_eq!(reqs[0]["state"], "pending");
    let devs = ok(&c, &friend, Method::GET, "/v1/me/devices", None).await;
    let names: Vec<_> = devs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{devs}");
    assert!(
        names.contains(&"friend-phone".to_string()) && names.contains(&"friend-tv".to_string())
    );
    // The TV's credential still signs in, as the friend's device.
    let again = c
        .device_login(tv.device_credential.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(again.device_id, tv.device_id);
    let me = ok(&c, &again.token, Method::GET, "/v1/me", None).await;
    assert_eq!(me["username"], "victim-friend");
    assert_eq!(gw.admission_ids(), vec![adm.admission_id.clone()]);
    // The gateway's credential still works: a fresh admission reaches it.
    ok(
        &c,
        &friend,
        Method::POST,
        "/v1/access",
        Some(tunnel("victim-den", 3)),
    )
    .await;
    assert_eq!(gw.admission_count(), 2);
    // The victim's audit shows the attackers only where they asked for
    // access to the server (which its owner should see).
    let ev = ok(
        &c,
        &owner,
        Method::GET,
        "/v1/servers/victim-den/audit",
        None,
    )
    .await;
    for e in ev.as_array().unwrap() {
        if matches!(e["username"].as_str(), Some("other-owner" | "plain-user")) {
            assert_eq!(e["event"], "access_denied", "{e}");
        }
    }
    cp.stop().await;
}

both_engines!(
    an_owner_shares_by_invitation_and_by_name_and_unsharing_ends_access,
    sign_up_follows_the_operators_setting,
    two_factor_sign_in,
    new_devices_wait_for_the_owners_approval,
    no_route_lets_another_tenant_see_or_touch_anything,
    one_account_cannot_grow_its_state_without_bound,
    a_forgotten_device_registers_anew_but_a_removed_one_does_not,
);
