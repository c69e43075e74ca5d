//! The web console over real HTTPS with a real database: the headers
//! every page carries, the session cookie's flags, CSRF refusals, the
//! login throttle it shares with the API, two-step sign-in, and tenant
//! isolation of every server page and form (another owner's server is
//! the same 404 as one nobody has).

mod support;

use control::console::{CSP, PRESESSION_COOKIE, SESSION_COOKIE};
use control_client::ControlClient;
use proto::api::*;
use reqwest::header::{self, HeaderMap};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use support::*;

/// An answer: status, headers, body text.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The value a `Set-Cookie` gives `name`, with its attributes.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }
    /// The CSRF token the page's forms carry.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body))
            + 19;
        self.body[at..].split('"').next().unwrap().to_string()
    }
}

/// A form body (application/x-www-form-urlencoded).
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn call(
    c: &ControlClient,
    method: Method,
    path: &str,
    cookies: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    let mut r = c
        .http()
        .request(method, format!("{}{path}", c.base_url()))
        .timeout(Duration::from_secs(30));
    if !cookies.is_empty() {
        let text = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        r = r.header(header::COOKIE, text);
    }
    if let Some(b) = body {
        r = r
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(b);
    }
    let resp = r.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

/// The sign-in form posted with the pre-session cookie `pre`.
async fn post_signin(c: &ControlClient, pre: &str, fields: &[(&str, &str)]) -> Answer {
    call(
        c,
        Method::POST,
        "/signin",
        &[(PRESESSION_COOKIE, pre)],
        Some(form(fields)),
    )
    .await
}

/// `GET /v1/me` with `token` as the bearer.
async fn api_me(c: &ControlClient, token: &str) -> reqwest::Response {
    c.http()
        .get(format!("{}/v1/me", c.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

/// A browser's session: the session cookie's token and its CSRF token.
struct Browser {
    token: String,
    csrf: String,
}

impl Browser {
    fn cookies(&self) -> [(&str, &str); 1] {
        [(SESSION_COOKIE, self.token.as_str())]
    }
}

/// Signs in through the console's form, as a browser does.
async fn sign_in(c: &ControlClient, user: &str, password: &str) -> Browser {
    let page = call(c, Method::GET, "/signin", &[], None).await;
    let pre = cookie_value(&page.set_cookie(PRESESSION_COOKIE).unwrap());
    let done = post_signin(
        c,
        &pre,
        &[
            ("csrf", &page.csrf()),
            ("username", user),
            ("password", password),
        ],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let token = cookie_value(&done.set_cookie(SESSION_COOKIE).expect("a session cookie"));
    let servers = call(
        c,
        Method::GET,
        "/servers",
        &[(SESSION_COOKIE, &token)],
        None,
    )
    .await;
    assert_eq!(servers.status, 200, "{}", servers.body);
    Browser {
        csrf: servers.csrf(),
        token,
    }
}

fn assert_page_headers(a: &Answer, what: &str) {
    assert_eq!(a.header("content-security-policy"), CSP, "{what}");
    assert_eq!(a.header("x-frame-options"), "DENY", "{what}");
    assert_eq!(a.header("cache-control"), "no-store", "{what}");
    assert_eq!(a.header("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(a.header("x-content-type-options"), "nosniff", "{what}");
}

async fn signing_in_sets_a_strict_cookie_and_forms_need_their_csrf_token(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = cp.client();
    add_user(&cp.admin, "alice").await;

    // The sign-in page: the headers, and a pre-session cookie its form's
    // token is tied to.
    let page = call(&c, Method::GET, "/signin", &[], None).await;
    assert_eq!(page.status, 200);
    assert_page_headers(&page, "GET /signin");
    assert!(page.header("content-type").starts_with("text/html"));
    let pre_cookie = page.set_cookie(PRESESSION_COOKIE).unwrap();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(pre_cookie.contains(flag), "{pre_cookie}");
    }
    let pre = cookie_value(&pre_cookie);
    let csrf = page.csrf();
    let login = |csrf: &str| {
        Some(form(&[
            ("csrf", csrf),
            ("username", "alice"),
            ("password", "password-of-alice"),
        ]))
    };
    // The right password with a forged, missing or other browser's token
    // signs nobody in.
    for (cookies, token) in [
        (vec![(PRESESSION_COOKIE, pre.as_str())], "forged"),
        (vec![(PRESESSION_COOKIE, pre.as_str())], ""),
        (vec![], csrf.as_str()),
        (
            vec![(PRESESSION_COOKIE, "pre_another-browsers-cookie")],
            csrf.as_str(),
        ),
    ] {
        let a = call(&c, Method::POST, "/signin", &cookies, login(token)).await;
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.set_cookie(SESSION_COOKIE).is_none());
        assert_page_headers(&a, "refused POST /signin");
    }
    // A wrong password: the form again, with the API's words.
    let wrong = post_signin(
        &c,
        &pre,
        &[
            ("csrf", &csrf),
            ("username", "alice"),
            ("password", "nope-nope"),
        ],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("wrong user name or password"),
        "{}",
        wrong.body
    );
    assert!(wrong.set_cookie(SESSION_COOKIE).is_none());

    let done = call(
        &c,
        Method::POST,
        "/signin",
        &[(PRESESSION_COOKIE, &pre)],
        login(&csrf),
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.header("location"), "/servers");
    let session_cookie = done.set_cookie(SESSION_COOKIE).unwrap();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session_cookie.contains(flag), "{session_cookie}");
    }
    let token = cookie_value(&session_cookie);
    // The cookie holds a login token of the API's kind (stored hashed).
    assert!(token.starts_with("hgu_"), "{token}");
    let me: AccountInfo = api_me(&c, &token).await.json().await.unwrap();
    assert_eq!(me.username, "alice");
    let b = Browser {
        csrf: call(
            &c,
            Method::GET,
            "/servers",
            &[(SESSION_COOKIE, &token)],
            None,
        )
        .await
        .csrf(),
        token: token.clone(),
    };
    assert_ne!(b.csrf, csrf, "the session has its own CSRF token");

    // Every page of a signed-in account carries the headers.
    for p in ["/servers", "/account", "/shared"] {
        let a = call(&c, Method::GET, p, &b.cookies(), None).await;
        assert_eq!(a.status, 200, "{p}: {}", a.body);
        assert_page_headers(&a, p);
    }
    let css = call(&c, Method::GET, "/assets/console.css", &[], None).await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").starts_with("text/css"));
    // Without a session, pages send the browser to sign in.
    let anon = call(&c, Method::GET, "/servers", &[], None).await;
    assert_eq!((anon.status, anon.header("location")), (303, "/signin"));

    // A form posted without this session's token changes nothing.
    let register = |csrf: &str| Some(form(&[("csrf", csrf), ("name", "den")]));
    for bad in ["", "forged", csrf.as_str()] {
        let a = call(&c, Method::POST, "/servers", &b.cookies(), register(bad)).await;
        assert_eq!(a.status, 403, "{}", a.body);
    }
    let servers = cp
        .client()
        .http()
        .get(format!("{}/v1/servers", c.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(servers.json::<Vec<ServerInfo>>().await.unwrap().len(), 0);
    // With it, the server exists and its one-time token is on the page.
    let a = call(
        &c,
        Method::POST,
        "/servers",
        &b.cookies(),
        register(&b.csrf),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_page_headers(&a, "POST /servers");
    assert!(
        a.body.contains("id=\"enrollment-token\">hge_"),
        "{}",
        a.body
    );

    // Sessions: the account page lists this one; the API's password
    // change ends the others.
    let other = sign_in(&c, "alice", "password-of-alice").await;
    let account = call(&c, Method::GET, "/account", &b.cookies(), None).await;
    assert_eq!(
        account.body.matches("/revoke\"").count(),
        2,
        "{}",
        account.body
    );
    let changed = call(
        &c,
        Method::POST,
        "/account/password",
        &b.cookies(),
        Some(form(&[
            ("csrf", &b.csrf),
            ("current_password", "password-of-alice"),
            ("new_password", "a-brand-new-password"),
        ])),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert!(changed.body.contains("Password changed"));
    let gone = call(&c, Method::GET, "/account", &other.cookies(), None).await;
    assert_eq!((gone.status, gone.header("location")), (303, "/signin"));

    // Signing out ends the token itself, not just the cookie.
    let out = call(
        &c,
        Method::POST,
        "/signout",
        &b.cookies(),
        Some(form(&[("csrf", &b.csrf)])),
    )
    .await;
    assert_eq!(out.status, 303);
    assert!(out
        .set_cookie(SESSION_COOKIE)
        .unwrap()
        .contains("Max-Age=0"));
    let after = api_me(&c, &token).await;
    assert_eq!(after.status().as_u16(), 401);
    cp.stop().await;
}

/// The console's sign-in is the API's login: one throttle counts both,
/// and an account with TOTP signs in in two steps.
async fn console_and_api_share_the_login_throttle_and_the_second_factor(engine: Engine) {
    let store = engine.store();
    let (clock, _hands) = control::Clock::manual();
    let cp = Running::start(
        &store,
        "127.0.0.1:0",
        control::Settings {
            clock,
            login_per_minute: 4,
            ..fast_settings()
        },
    )
    .await;
    let c = cp.client();
    add_user(&cp.admin, "bob").await;
    let page = call(&c, Method::GET, "/signin", &[], None).await;
    let pre = cookie_value(&page.set_cookie(PRESESSION_COOKIE).unwrap());
    for _ in 0..4 {
        let a = post_signin(
            &c,
            &pre,
            &[
                ("csrf", &page.csrf()),
                ("username", "bob"),
                ("password", "guess-guess"),
            ],
        )
        .await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    // The API, from the same address, is refused now too.
    let api = c
        .http()
        .post(format!("{}/v1/login", c.base_url()))
        .json(&json!({"username": "bob", "password": "password-of-bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 429);
    let a = post_signin(
        &c,
        &pre,
        &[
            ("csrf", &page.csrf()),
            ("username", "bob"),
            ("password", "password-of-bob"),
        ],
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("too many login attempts"), "{}", a.body);
    cp.stop().await;

    // Two steps: the password, then a code from the app.
    let store = engine.store();
    let (clock, _hands) = control::Clock::manual();
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
    add_user(&cp.admin, "carol").await;
    let b = sign_in(&c, "carol", "password-of-carol").await;
    let begun = call(
        &c,
        Method::POST,
        "/account/totp",
        &b.cookies(),
        Some(form(&[("csrf", &b.csrf)])),
    )
    .await;
    assert_eq!(begun.status, 200, "{}", begun.body);
    assert!(begun.body.contains("<svg"), "the QR code is inline SVG");
    let at = begun.body.find("id=\"totp-secret\">").unwrap() + 17;
    let b32 = begun.body[at..].split('<').next().unwrap();
    let secret = control::totp::secret_from_base32(b32).unwrap();
    let now = || (cp.state.settings.clock.now_millis() / 1000) as u64;
    let confirmed = call(
        &c,
        Method::POST,
        "/account/totp/confirm",
        &b.cookies(),
        Some(form(&[
            ("csrf", &b.csrf),
            ("code", &control::totp::code_at(&secret, now())),
        ])),
    )
    .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    assert_eq!(
        confirmed.body.matches("<li><code>").count(),
        control::totp::RECOVERY_CODES
    );
    let again = call(&c, Method::GET, "/account", &b.cookies(), None).await;
    assert_eq!(
        again.body.matches("<li><code>").count(),
        0,
        "recovery codes are shown once"
    );

    let page = call(&c, Method::GET, "/signin", &[], None).await;
    let pre = cookie_value(&page.set_cookie(PRESESSION_COOKIE).unwrap());
    let step = post_signin(
        &c,
        &pre,
        &[
            ("csrf", &page.csrf()),
            ("username", "carol"),
            ("password", "password-of-carol"),
        ],
    )
    .await;
    assert_eq!(step.status, 200);
    assert!(
        step.set_cookie(SESSION_COOKIE).is_none(),
        "a password alone is not a session"
    );
    assert!(step.body.contains("id=\"totp\""), "{}", step.body);
    // The code of the next step (the one just used for enrolment cannot
    // be replayed).
    let code = control::totp::code_at(&secret, now() + control::totp::STEP);
    let done = post_signin(
        &c,
        &pre,
        &[
            ("csrf", &step.csrf()),
            ("username", "carol"),
            ("password", "password-of-carol"),
            ("totp", &code),
        ],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let token = cookie_value(&done.set_cookie(SESSION_COOKIE).unwrap());
    let me: AccountInfo = api_me(&c, &token).await.json().await.unwrap();
    assert!(me.totp && me.session_mfa);
    cp.stop().await;
}

/// Every console page and form about a server, called by a second owner
/// and by a plain user with the first owner's identifiers, answers
/// exactly as for identifiers nobody uses: 404, same words, nothing
/// changed.
async fn another_tenant_gets_the_same_404_on_every_server_page(engine: Engine) {
    let store = engine.store();
    let cp = Running::start(&store, "127.0.0.1:0", fast_settings()).await;
    let c = cp.client();
    for u in ["victim-owner", "victim-friend", "other-owner", "plain-user"] {
        add_user(&cp.admin, u).await;
    }
    let login = |name: &str, device: Option<&str>| {
        let (c, name, device) = (c.clone(), name.to_string(), device.map(str::to_string));
        async move {
            c.http()
                .post(format!("{}/v1/login", c.base_url()))
                .json(&json!({"username": name, "password": format!("password-of-{name}"), "device_name": device}))
                .send()
                .await
                .unwrap()
                .json::<LoginResponse>()
                .await
                .unwrap()
        }
    };
    let api = |token: String, method: Method, path: String, body: serde_json::Value| {
        let c = c.clone();
        async move {
            let r = c
                .http()
                .request(method, format!("{}{path}", c.base_url()))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<serde_json::Value>().await.unwrap_or_default()
        }
    };
    let owner = login("victim-owner", None).await.token;
    let created: CreatedServer = serde_json::from_value(
        api(
            owner.clone(),
            Method::POST,
            "/v1/servers".into(),
            json!({"name": "victim-den"}),
        )
        .await,
    )
    .unwrap();
    let gw = FeedFollower::enroll(&c, &created.enrollment_token, key(200)).await;
    api(
        owner.clone(),
        Method::POST,
        "/v1/servers/victim-den/shares".into(),
        json!({"username": "victim-friend"}),
    )
    .await;
    let friend = login("victim-friend", Some("friend-phone")).await;
    let adm: AccessResponse = serde_json::from_value(
        api(
            friend.token.clone(),
            Method::POST,
            "/v1/access".into(),
            json!({"server": "victim-den", "public_key": key(1).to_string()}),
        )
        .await,
    )
    .unwrap();
    let inv: IssuedInvitation = serde_json::from_value(
        api(
            owner.clone(),
            Method::POST,
            "/v1/servers/victim-den/invitations".into(),
            json!({}),
        )
        .await,
    )
    .unwrap();
    let device = friend.device_id.unwrap();
    let friend_session = api(
        friend.token.clone(),
        Method::GET,
        "/v1/me/sessions".into(),
        json!(null),
    )
    .await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    gw.wait_until(|ids| ids.contains(&adm.admission_id))
        .await
        .expect("the admission reaches the gateway");

    let victim = [
        ("{name}", "victim-den".to_string()),
        ("{user}", "victim-friend".to_string()),
        ("{id}", String::new()),
    ];
    let unknown = [
        ("{name}", "nobodys-den".to_string()),
        ("{user}", "nobody-at-all".to_string()),
        ("{id}", String::new()),
    ];
    let server_pages: Vec<_> = control::console::pages()
        .into_iter()
        .filter(|(_, p)| p.contains("{name}"))
        .collect();
    assert!(server_pages.len() >= 9, "{server_pages:?}");
    for attacker in ["other-owner", "plain-user"] {
        let b = sign_in(&c, attacker, &format!("password-of-{attacker}")).await;
        if attacker == "other-owner" {
            let a = call(
                &c,
                Method::POST,
                "/servers",
                &b.cookies(),
                Some(form(&[("csrf", &b.csrf), ("name", "other-den")])),
            )
            .await;
            assert_eq!(a.status, 200);
        }
        for (method, pattern) in &server_pages {
            // Each id a page can take: the victim's admission, device,
            // invitation (ids of things on victim-den).
            for id in [&adm.admission_id, &device, &inv.id] {
                let fill = |ids: &[(&str, String)], id: &str| {
                    let mut p = pattern.to_string();
                    for (k, v) in ids {
                        p = p.replace(k, if *k == "{id}" { id } else { v });
                    }
                    p
                };
                let body = Some(form(&[
                    ("csrf", &b.csrf),
                    ("binding", "exact"),
                    ("admission_ttl_secs", "60"),
                    ("max_admissions_per_user", "1"),
                    ("require_2fa", "on"),
                    ("uses", "5"),
                    ("days", "1"),
                    ("username", attacker),
                    ("decision", "deny"),
                    ("name", "stolen"),
                ]));
                let m = Method::from_bytes(method.as_bytes()).unwrap();
                let what = format!("{method} {pattern} as {attacker}");
                let body_for = |m: &Method| {
                    if *m == Method::POST {
                        body.clone()
                    } else {
                        None
                    }
                };
                let v = call(
                    &c,
                    m.clone(),
                    &fill(&victim, id),
                    &b.cookies(),
                    body_for(&m),
                )
                .await;
                let u = call(
                    &c,
                    m.clone(),
                    &fill(&unknown, "unknown-id"),
                    &b.cookies(),
                    body_for(&m),
                )
                .await;
                assert_eq!(v.status, 404, "{what}: {}", v.body);
                assert_eq!(u.status, 404, "{what} (unknown): {}", u.body);
                let plain = |a: &Answer, name: &str, id: &str| {
                    a.body.replace(name, "{name}").replace(id, "{id}")
                };
                assert_eq!(
                    plain(&v, "victim-den", id),
                    plain(&u, "nobodys-den", "unknown-id"),
                    "{what}: the victim's server is told apart from an unknown one"
                );
                assert_page_headers(&v, &what);
            }
        }
    }
    // The account pages that name a device or a session: another
    // account's are the same 404 as unknown ones.
    let account_pages: Vec<_> = control::console::pages()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/account/") && p.contains("{id}"))
        .collect();
    assert_eq!(account_pages.len(), 3, "{account_pages:?}");
    for attacker in ["other-owner", "plain-user"] {
        let b = sign_in(&c, attacker, &format!("password-of-{attacker}")).await;
        for (_, pattern) in &account_pages {
            for id in [&device, &friend_session] {
                let body = Some(form(&[("csrf", &b.csrf), ("name", "stolen")]));
                let v = call(
                    &c,
                    Method::POST,
                    &pattern.replace("{id}", id),
                    &b.cookies(),
                    body.clone(),
                )
                .await;
                let u = call(
                    &c,
                    Method::POST,
                    &pattern.replace("{id}", "unknown-id"),
                    &b.cookies(),
                    body,
                )
                .await;
                let what = format!("POST {pattern} as {attacker}");
                assert_eq!((v.status, u.status), (404, 404), "{what}: {}", v.body);
                assert_eq!(
                    v.body.replace(id.as_str(), "{id}"),
                    u.body.replace("unknown-id", "{id}"),
                    "{what}"
                );
            }
        }
    }
    // The friend's device and login are untouched.
    let devs = api(
        friend.token.clone(),
        Method::GET,
        "/v1/me/devices".into(),
        json!(null),
    )
    .await;
    assert_eq!(devs[0]["name"], "friend-phone");

    // Nothing of the victim's changed.
    let den: ServerInfo = serde_json::from_value(
        api(
            owner.clone(),
            Method::GET,
            "/v1/servers/victim-den".into(),
            json!(null),
        )
        .await,
    )
    .unwrap();
    assert!(!den.require_2fa && den.direct_mode && den.admission_ttl_secs != 60);
    let shares = api(
        owner.clone(),
        Method::GET,
        "/v1/servers/victim-den/shares".into(),
        json!(null),
    )
    .await;
    assert_eq!(shares.as_array().unwrap().len(), 1);
    let invs = api(
        owner.clone(),
        Method::GET,
        "/v1/servers/victim-den/invitations".into(),
        json!(null),
    )
    .await;
    assert_eq!(invs.as_array().unwrap().len(), 1);
    assert_eq!(gw.admission_ids(), vec![adm.admission_id.clone()]);
    cp.stop().await;
}

both_engines!(
    signing_in_sets_a_strict_cookie_and_forms_need_their_csrf_token,
    console_and_api_share_the_login_throttle_and_the_second_factor,
    another_tenant_gets_the_same_404_on_every_server_page,
);
