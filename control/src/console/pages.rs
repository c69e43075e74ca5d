//! The console's pages. Each handler turns a form into the API's request
//! type and calls the API's handler function with the visitor's session
//! as its credential (see the module documentation of `console`).

use super::{
    cookie, csrf_matches, csrf_of, render, set_cookie, visitor, Failure, Layout, Visitor,
    PRESESSION_COOKIE, SESSION_COOKIE,
};
use crate::app::{self as a, AppState};
use crate::error::AppError;
use crate::sessions as s;
use crate::tenants as t;
use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use proto::api::*;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use time::OffsetDateTime;

type St = State<Arc<AppState>>;
type Page = Result<Response, Failure>;

/// A date as a person reads it.
fn when(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// This control plane's address as the browser reached it, for the
/// links and command lines the pages show. Only a host name or address
/// (and port) passes; anything else shows a placeholder.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("CONTROL-PLANE-HOST");
    format!("https://{host}")
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---------- signing in and up ----------

/// The pre-session cookie's value: the request's, or a new one to set.
fn presession(headers: &HeaderMap) -> (String, Option<header::HeaderValue>) {
    match cookie(headers, PRESESSION_COOKIE) {
        Some(v) if v.len() >= 16 => (v.to_string(), None),
        _ => {
            let v = crate::auth::random_id("pre_");
            let set = set_cookie(PRESESSION_COOKIE, &v, 3600);
            (v, Some(set))
        }
    }
}

fn with_cookies(
    mut resp: Response,
    cookies: impl IntoIterator<Item = header::HeaderValue>,
) -> Response {
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Refuses a pre-sign-in form whose CSRF token is not its cookie's.
fn check_presession(headers: &HeaderMap, sent: &str) -> Result<(), Failure> {
    match cookie(headers, PRESESSION_COOKIE) {
        Some(pre) if csrf_matches(pre, sent) => Ok(()),
        _ => Err(super::csrf_refused()),
    }
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    l: Layout,
    /// The second step: the password was right, a code is needed.
    totp_step: bool,
    username: String,
    /// Carried to the second step in the form (no half-signed-in state
    /// is kept on the server; the page is never cached).
    password: String,
    /// A local path to go to once signed in (the sign-in code page).
    next: String,
    error: Option<String>,
}

pub(super) async fn home(State(st): St, headers: HeaderMap) -> Page {
    Ok(match visitor(&st, &headers).await? {
        Some(_) => see_other("/servers"),
        None => see_other("/signin"),
    })
}

/// Where to go after signing in: a path on this site only (never
/// another origin: `//host` or a backslash would leave it).
fn local_next(next: Option<&str>) -> Option<String> {
    let n = next?;
    let ok = n.starts_with('/')
        && !n.starts_with("//")
        && n.len() <= 200
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/?=&-_.%".contains(c));
    ok.then(|| n.to_string())
}

#[derive(Deserialize)]
pub(super) struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

pub(super) async fn signin_page(
    State(st): St,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Page {
    let next = local_next(q.next.as_deref());
    if visitor(&st, &headers).await?.is_some() {
        return Ok(see_other(next.as_deref().unwrap_or("/servers")));
    }
    let (pre, set) = presession(&headers);
    let page = SigninPage {
        l: Layout {
            title: "Sign in".into(),
            csrf: csrf_of(&pre),
            ..Layout::default()
        },
        totp_step: false,
        username: String::new(),
        password: String::new(),
        next: next.unwrap_or_default(),
        error: None,
    };
    Ok(with_cookies(render(StatusCode::OK, &page), set))
}

#[derive(Deserialize)]
pub(super) struct SigninForm {
    csrf: String,
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    next: Option<String>,
}

/// Signs in through the API's login (its throttle, its audit, its
/// second factor) and keeps the token in the session cookie.
async fn sign_in(
    st: &Arc<AppState>,
    peer: SocketAddr,
    headers: &HeaderMap,
    username: String,
    password: String,
    totp: Option<String>,
) -> Result<String, AppError> {
    let req = LoginRequest {
        username,
        password,
        totp: totp.filter(|c| !c.trim().is_empty()),
        device_credential: None,
        device_name: None,
    };
    let Json(resp) = a::login(
        State(st.clone()),
        ConnectInfo(peer),
        headers.clone(),
        Ok(Json(req)),
    )
    .await?;
    Ok(resp.token)
}

fn signed_in(st: &AppState, token: &str, to: &str) -> Response {
    with_cookies(
        see_other(to),
        [
            set_cookie(SESSION_COOKIE, token, st.settings.token_ttl.as_secs()),
            set_cookie(PRESESSION_COOKIE, "", 0),
        ],
    )
}

pub(super) async fn signin(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<SigninForm>,
) -> Page {
    check_presession(&headers, &f.csrf)?;
    let (username, password) = (f.username.clone(), f.password.clone());
    let next = local_next(f.next.as_deref());
    match sign_in(&st, peer, &headers, f.username, f.password, f.totp).await {
        Ok(token) => Ok(signed_in(
            &st,
            &token,
            next.as_deref().unwrap_or("/servers"),
        )),
        Err(e) => {
            let totp_step = matches!(e.code, "totp_required" | "totp_wrong");
            let page = SigninPage {
                l: Layout {
                    title: "Sign in".into(),
                    csrf: f.csrf,
                    ..Layout::default()
                },
                totp_step,
                username,
                password: if totp_step { password } else { String::new() },
                next: next.unwrap_or_default(),
                error: (e.code != "totp_required").then_some(e.message),
            };
            let status = if e.code == "totp_required" {
                StatusCode::OK
            } else {
                e.status
            };
            Ok(render(status, &page))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    csrf: String,
}

/// Ends this login (its token stops working) and forgets the cookie.
pub(super) async fn signout(State(st): St, v: Visitor, Form(f): Form<CsrfOnly>) -> Page {
    v.check_csrf(&f.csrf)?;
    let mine = s::my_sessions(State(st.clone()), v.api.clone()).await?.0;
    if let Some(me) = mine.into_iter().find(|x| x.current) {
        s::end_session(State(st), v.api.clone(), Ok(Path(me.id))).await?;
    }
    Ok(with_cookies(
        see_other("/signin"),
        [set_cookie(SESSION_COOKIE, "", 0)],
    ))
}

#[derive(Template)]
#[template(path = "signup.html")]
struct SignupPage {
    l: Layout,
    invitation: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct InvitationQuery {
    #[serde(default)]
    invitation: String,
}

pub(super) async fn signup_page(
    State(st): St,
    headers: HeaderMap,
    Query(q): Query<InvitationQuery>,
) -> Page {
    // Signed in already: the link adds the share to this account.
    if let Some(v) = visitor(&st, &headers).await? {
        let page = SignupPage {
            l: v.layout("Accept an invitation"),
            invitation: q.invitation,
            error: None,
        };
        return Ok(render(StatusCode::OK, &page));
    }
    let (pre, set) = presession(&headers);
    let page = SignupPage {
        l: Layout {
            title: "Sign up".into(),
            csrf: csrf_of(&pre),
            ..Layout::default()
        },
        invitation: q.invitation,
        error: None,
    };
    Ok(with_cookies(render(StatusCode::OK, &page), set))
}

#[derive(Deserialize)]
pub(super) struct SignupForm {
    csrf: String,
    username: String,
    password: String,
    #[serde(default)]
    invitation: String,
}

pub(super) async fn signup(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<SignupForm>,
) -> Page {
    check_presession(&headers, &f.csrf)?;
    let req = SignupRequest {
        username: f.username.clone(),
        password: f.password.clone(),
        invitation: Some(f.invitation.clone()).filter(|i| !i.trim().is_empty()),
    };
    if let Err(e) = t::signup(
        State(st.clone()),
        ConnectInfo(peer),
        headers.clone(),
        Ok(Json(req)),
    )
    .await
    {
        let page = SignupPage {
            l: Layout {
                title: "Sign up".into(),
                csrf: f.csrf,
                ..Layout::default()
            },
            invitation: f.invitation,
            error: Some(e.message),
        };
        return Ok(render(e.status, &page));
    }
    let token = sign_in(&st, peer, &headers, f.username, f.password, None).await?;
    Ok(signed_in(&st, &token, "/"))
}

#[derive(Deserialize)]
pub(super) struct InvitationForm {
    csrf: String,
    invitation: String,
}

pub(super) async fn accept_invitation(
    State(st): St,
    v: Visitor,
    Form(f): Form<InvitationForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let _ = t::accept_invitation(
        State(st),
        v.api.clone(),
        Ok(Json(AcceptInvitation {
            invitation: f.invitation,
        })),
    )
    .await?;
    Ok(see_other("/shared"))
}

// ---------- my account ----------

struct SessionRow {
    id: String,
    current: bool,
    mfa: bool,
    device: String,
    expires: String,
}

struct DeviceRow {
    id: String,
    name: String,
    created: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    l: Layout,
    me: AccountInfo,
    devices: Vec<DeviceRow>,
    sessions: Vec<SessionRow>,
    /// A TOTP enrolment just begun: the secret and its QR code.
    enrolment: Option<TotpEnrollment>,
    /// Recovery codes, shown this once.
    recovery: Vec<String>,
}

/// The account page, with what a POST just produced.
async fn account_page(
    st: &Arc<AppState>,
    v: &Visitor,
    notice: Option<String>,
    enrolment: Option<TotpEnrollment>,
    recovery: Vec<String>,
) -> Page {
    let me = t::me(State(st.clone()), v.api.clone()).await?.0;
    let devices = t::my_devices(State(st.clone()), v.api.clone()).await?.0;
    let sessions = s::my_sessions(State(st.clone()), v.api.clone()).await?.0;
    let device_name = |id: &Option<String>| {
        id.as_ref()
            .map(|id| {
                devices
                    .iter()
                    .find(|d| &d.id == id)
                    .map_or(id.clone(), |d| d.name.clone())
            })
            .unwrap_or_else(|| "web console or API".into())
    };
    let sessions = sessions
        .into_iter()
        .map(|x| SessionRow {
            device: device_name(&x.device_id),
            id: x.id,
            current: x.current,
            mfa: x.mfa,
            expires: when(x.expires_at),
        })
        .collect();
    let devices = devices
        .into_iter()
        .map(|d| DeviceRow {
            id: d.id,
            name: d.name,
            created: when(d.created_at),
            last_used: d.last_used.map(when).unwrap_or_else(|| "never".into()),
        })
        .collect();
    let mut l = v.layout("My account");
    l.notice = notice;
    Ok(render(
        StatusCode::OK,
        &AccountPage {
            l,
            me,
            devices,
            sessions,
            enrolment,
            recovery,
        },
    ))
}

pub(super) async fn account(State(st): St, v: Visitor) -> Page {
    account_page(&st, &v, None, None, Vec::new()).await
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    csrf: String,
    current_password: String,
    new_password: String,
}

pub(super) async fn change_password(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    v: Visitor,
    Form(f): Form<PasswordForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    s::change_password(
        State(st.clone()),
        ConnectInfo(peer),
        v.api.clone(),
        Ok(Json(ChangePassword {
            current_password: f.current_password,
            new_password: f.new_password,
        })),
    )
    .await?;
    let notice = "Password changed; your other sessions were signed out, and devices signed in by code must sign in again.".to_string();
    account_page(&st, &v, Some(notice), None, Vec::new()).await
}

pub(super) async fn totp_begin(State(st): St, v: Visitor, Form(f): Form<CsrfOnly>) -> Page {
    v.check_csrf(&f.csrf)?;
    let (_, Json(enrolment)) = t::totp_begin(State(st.clone()), v.api.clone()).await?;
    account_page(&st, &v, None, Some(enrolment), Vec::new()).await
}

#[derive(Deserialize)]
pub(super) struct CodeForm {
    csrf: String,
    code: String,
}

pub(super) async fn totp_confirm(State(st): St, v: Visitor, Form(f): Form<CodeForm>) -> Page {
    v.check_csrf(&f.csrf)?;
    let (_, Json(codes)) = t::totp_confirm(
        State(st.clone()),
        v.api.clone(),
        Ok(Json(TotpCode { code: f.code })),
    )
    .await?;
    let notice = "Two-factor sign-in is on. Keep the recovery codes below somewhere safe: they are shown only now.".to_string();
    account_page(&st, &v, Some(notice), None, codes.codes).await
}

pub(super) async fn totp_disable(State(st): St, v: Visitor, Form(f): Form<CodeForm>) -> Page {
    v.check_csrf(&f.csrf)?;
    t::totp_disable(
        State(st.clone()),
        v.api.clone(),
        Ok(Json(TotpCode { code: f.code })),
    )
    .await?;
    account_page(
        &st,
        &v,
        Some("Two-factor sign-in is off.".into()),
        None,
        Vec::new(),
    )
    .await
}

#[derive(Deserialize)]
pub(super) struct NameForm {
    csrf: String,
    name: String,
}

pub(super) async fn rename_device(
    State(st): St,
    v: Visitor,
    Path(id): Path<String>,
    Form(f): Form<NameForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let _ = t::rename_device(
        State(st),
        v.api.clone(),
        Ok(Path(id)),
        Ok(Json(RenameDevice { name: f.name })),
    )
    .await?;
    Ok(see_other("/account"))
}

pub(super) async fn remove_device(
    State(st): St,
    v: Visitor,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    t::remove_device(State(st), v.api.clone(), Ok(Path(id))).await?;
    Ok(see_other("/account"))
}

pub(super) async fn end_session(
    State(st): St,
    v: Visitor,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let mine = s::my_sessions(State(st.clone()), v.api.clone()).await?.0;
    let this_one = mine.iter().any(|x| x.current && x.id == id);
    s::end_session(State(st), v.api.clone(), Ok(Path(id))).await?;
    // Ending the session this page came from signs the browser out.
    Ok(if this_one {
        with_cookies(see_other("/signin"), [set_cookie(SESSION_COOKIE, "", 0)])
    } else {
        see_other("/account")
    })
}

// ---------- servers I own ----------

struct ServerRow {
    name: String,
    online: bool,
    enrolled: bool,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage {
    l: Layout,
    servers: Vec<ServerRow>,
    /// A server just registered and its one-time enrollment token.
    registered: Option<(String, String)>,
    control_url: String,
}

async fn servers_page(
    st: &Arc<AppState>,
    v: &Visitor,
    headers: &HeaderMap,
    registered: Option<(String, String)>,
) -> Page {
    let list = t::list_servers(State(st.clone()), v.api.clone()).await?.0;
    let servers = list
        .into_iter()
        .map(|s| ServerRow {
            online: s.gateway_connected,
            enrolled: s.enrolled,
            last_seen: s
                .gateway_last_seen
                .map(when)
                .unwrap_or_else(|| "never".into()),
            name: s.name,
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &ServersPage {
            l: v.layout("Servers I own"),
            servers,
            registered,
            control_url: origin(headers),
        },
    ))
}

pub(super) async fn servers(State(st): St, v: Visitor, headers: HeaderMap) -> Page {
    servers_page(&st, &v, &headers, None).await
}

pub(super) async fn register_server(
    State(st): St,
    v: Visitor,
    headers: HeaderMap,
    Form(f): Form<NameForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let body = serde_json::from_value(serde_json::json!({ "name": f.name.trim() }))
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    let (_, (_, Json(created))) =
        t::create_server(State(st.clone()), v.api.clone(), Ok(Json(body))).await?;
    servers_page(
        &st,
        &v,
        &headers,
        Some((created.name, created.enrollment_token)),
    )
    .await
}

struct AdmissionRow {
    id: String,
    username: String,
    device: String,
    source: String,
    mode: String,
    state: String,
    started: String,
    expires: String,
}

struct InvitationRow {
    id: String,
    uses_left: u32,
    direct: bool,
    expires: String,
}

struct RequestRow {
    device_id: String,
    device_name: String,
    username: String,
    state: String,
    requested: String,
}

struct AuditRow {
    at: String,
    event: String,
    username: String,
    source: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "server.html")]
struct ServerPage {
    l: Layout,
    s: ServerInfo,
    last_seen: String,
    shares: Vec<GrantInfo>,
    invitations: Vec<InvitationRow>,
    requests: Vec<RequestRow>,
    admissions: Vec<AdmissionRow>,
    audit: Vec<AuditRow>,
    /// A one-time secret just issued: (what it is, the text to copy).
    issued: Option<(String, String)>,
    control_url: String,
}

/// The server page of `name`: the API's 404 for anything not the
/// visitor's own.
async fn server_page(
    st: &Arc<AppState>,
    v: &Visitor,
    headers: &HeaderMap,
    name: String,
    issued: Option<(String, String)>,
) -> Page {
    let api = || (State(st.clone()), v.api.clone(), Ok(Path(name.clone())));
    let (a1, a2, a3) = api();
    let info = t::show_server(a1, a2, a3).await?.0;
    let (a1, a2, a3) = api();
    let shares = t::list_shares(a1, a2, a3).await?.0;
    let (a1, a2, a3) = api();
    let invitations = t::list_invitations(a1, a2, a3).await?.0;
    let (a1, a2, a3) = api();
    let requests = t::device_requests(a1, a2, a3).await?.0;
    let (a1, a2, a3) = api();
    let admissions = t::server_admissions(a1, a2, a3).await?.0;
    let (a1, a2, a3) = api();
    let audit = t::server_audit(a1, a2, a3, Ok(Query(a::AuditQuery { limit: Some(50) })))
        .await?
        .0;
    // Which device holds each admission: not in the API's admission
    // view, read for this owner's server (found above) only.
    let server = info.name.clone();
    let devices = st
        .db
        .tx(move |tx| crate::store::server_admission_devices(tx, &server))
        .await
        .map_err(AppError::from)?;
    let device_of = |id: &str| {
        devices
            .iter()
            .find(|(a, _)| a == id)
            .map_or_else(|| "-".to_string(), |(_, d)| d.clone())
    };
    let page = ServerPage {
        l: v.layout(format!("Server {}", info.name)),
        last_seen: info
            .gateway_last_seen
            .map(when)
            .unwrap_or_else(|| "never".into()),
        s: info,
        shares,
        invitations: invitations
            .into_iter()
            .map(|i| InvitationRow {
                id: i.id,
                uses_left: i.uses_left,
                direct: i.direct,
                expires: when(i.expires_at),
            })
            .collect(),
        requests: requests
            .into_iter()
            .map(|r| RequestRow {
                device_id: r.device_id,
                device_name: r.device_name,
                username: r.username,
                state: r.state,
                requested: when(r.requested_at),
            })
            .collect(),
        admissions: admissions
            .into_iter()
            .map(|x| AdmissionRow {
                device: device_of(&x.id),
                id: x.id,
                username: x.username,
                source: x.source.to_string(),
                mode: format!("{:?}", x.mode).to_lowercase(),
                state: x.state,
                started: when(x.created_at),
                expires: when(x.expires_at),
            })
            .collect(),
        audit: audit
            .into_iter()
            .map(|e| AuditRow {
                at: when(e.at),
                event: e.event,
                username: e.username.unwrap_or_default(),
                source: e.source.map(|s| s.to_string()).unwrap_or_default(),
                detail: e.detail,
            })
            .collect(),
        issued,
        control_url: origin(headers),
    };
    Ok(render(StatusCode::OK, &page))
}

pub(super) async fn server(
    State(st): St,
    v: Visitor,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Page {
    server_page(&st, &v, &headers, name, None).await
}

fn back_to(name: &str) -> Response {
    see_other(&format!("/servers/{}", path_segment(name)))
}

/// A name as one path segment (server names are plain, but a redirect
/// must never be steerable).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Deserialize)]
pub(super) struct PolicyForm {
    csrf: String,
    binding: String,
    admission_ttl_secs: u64,
    max_admissions_per_user: u32,
    /// HTML checkboxes are sent only when ticked.
    #[serde(default)]
    direct_mode: Option<String>,
    #[serde(default)]
    require_2fa: Option<String>,
    #[serde(default)]
    approve_devices: Option<String>,
}

pub(super) async fn server_policy(
    State(st): St,
    v: Visitor,
    Path(name): Path<String>,
    Form(f): Form<PolicyForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let binding = f
        .binding
        .trim()
        .parse()
        .map_err(|e: proto::PolicyError| AppError::bad_request(e.to_string()))?;
    let policy = ServerPolicy {
        name: None,
        binding: Some(binding),
        admission_ttl_secs: Some(f.admission_ttl_secs),
        max_admissions_per_user: Some(f.max_admissions_per_user),
        direct_mode: Some(f.direct_mode.is_some()),
        require_2fa: Some(f.require_2fa.is_some()),
        approve_devices: Some(f.approve_devices.is_some()),
    };
    let _ = t::update_server(
        State(st),
        v.api.clone(),
        Ok(Path(name.clone())),
        Ok(Json(policy)),
    )
    .await?;
    Ok(back_to(&name))
}

pub(super) async fn server_enrollment(
    State(st): St,
    v: Visitor,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let (_, (_, Json(issued))) = t::create_enrollment_token(
        State(st.clone()),
        v.api.clone(),
        Ok(Path(name.clone())),
        Ok(Json(NewEnrollmentToken::default())),
    )
    .await?;
    let what = "Enrollment token for the gateway (shown once)".to_string();
    server_page(&st, &v, &headers, name, Some((what, issued.token))).await
}

#[derive(Deserialize)]
pub(super) struct ShareForm {
    csrf: String,
    username: String,
    #[serde(default)]
    direct: Option<String>,
}

pub(super) async fn create_share(
    State(st): St,
    v: Visitor,
    Path(name): Path<String>,
    Form(f): Form<ShareForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let req = ShareRequest {
        username: f.username.trim().to_string(),
        services: None,
        direct: f.direct.is_some(),
    };
    let _ = t::create_share(
        State(st),
        v.api.clone(),
        Ok(Path(name.clone())),
        Ok(Json(req)),
    )
    .await?;
    Ok(back_to(&name))
}

pub(super) async fn remove_share(
    State(st): St,
    v: Visitor,
    Path((name, user)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    t::remove_share(State(st), v.api.clone(), Ok(Path((name.clone(), user)))).await?;
    Ok(back_to(&name))
}

#[derive(Deserialize)]
pub(super) struct InviteForm {
    csrf: String,
    uses: u32,
    days: u64,
    #[serde(default)]
    direct: Option<String>,
}

pub(super) async fn create_invitation(
    State(st): St,
    v: Visitor,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<InviteForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let req = NewInvitation {
        services: None,
        direct: f.direct.is_some(),
        ttl_secs: Some(f.days.saturating_mul(86_400)),
        uses: Some(f.uses),
    };
    let (_, (_, Json(issued))) = t::create_invitation(
        State(st.clone()),
        v.api.clone(),
        Ok(Path(name.clone())),
        Ok(Json(req)),
    )
    .await?;
    let link = format!("{}/signup?invitation={}", origin(&headers), issued.token);
    let what = "Invitation link (shown once; send it to your friend)".to_string();
    server_page(&st, &v, &headers, name, Some((what, link))).await
}

pub(super) async fn revoke_invitation(
    State(st): St,
    v: Visitor,
    Path((name, id)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    t::revoke_invitation(State(st), v.api.clone(), Ok(Path((name.clone(), id)))).await?;
    Ok(back_to(&name))
}

#[derive(Deserialize)]
pub(super) struct DecisionForm {
    csrf: String,
    /// "approve" or "deny".
    decision: String,
}

pub(super) async fn decide_device(
    State(st): St,
    v: Visitor,
    Path((name, id)): Path<(String, String)>,
    Form(f): Form<DecisionForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let approve = match f.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(AppError::bad_request("decide 'approve' or 'deny'").into()),
    };
    let _ = t::decide_device(
        State(st),
        v.api.clone(),
        Ok(Path((name.clone(), id))),
        Ok(Json(DeviceDecision { approve })),
    )
    .await?;
    Ok(back_to(&name))
}

/// Revokes an admission on this owner's server `name`: the server must
/// be the visitor's and the admission on it, or the answer is the API's
/// "not found".
pub(super) async fn revoke_admission(
    State(st): St,
    v: Visitor,
    Path((name, id)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let on_server = t::server_admissions(State(st.clone()), v.api.clone(), Ok(Path(name.clone())))
        .await?
        .0;
    if !on_server.iter().any(|x| x.id == id) {
        return Err(
            AppError::not_found("no such admission; it may have expired or been revoked").into(),
        );
    }
    a::revoke(State(st), v.api.clone(), Ok(Path(id))).await?;
    Ok(back_to(&name))
}

// ---------- servers shared with me ----------

struct SharedRow {
    server: String,
    direct: bool,
    services: String,
    connect: String,
}

#[derive(Template)]
#[template(path = "shared.html")]
struct SharedPage {
    l: Layout,
    shares: Vec<SharedRow>,
}

pub(super) async fn shared(State(st): St, v: Visitor, headers: HeaderMap) -> Page {
    let grants = t::my_shares(State(st), v.api.clone()).await?.0;
    let control = origin(&headers);
    let shares = grants
        .into_iter()
        .map(|g| SharedRow {
            connect: format!(
                "hushgate connect --control {control} --user {} --server {} --listen 127.0.0.1:8096",
                v.username, g.server
            ),
            services: g
                .services
                .map(|s| s.join(", "))
                .unwrap_or_else(|| "all".into()),
            direct: g.direct,
            server: g.server,
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &SharedPage {
            l: v.layout("Shared with me"),
            shares,
        },
    ))
}

#[derive(Template)]
#[template(path = "wireguard.html")]
struct WireguardPage {
    l: Layout,
    server: String,
}

/// The server `name` if it is shared with the visitor; otherwise the
/// same 404 page as a name nobody uses.
async fn shared_server(
    st: Arc<AppState>,
    v: &Visitor,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, Failure> {
    let Path(name) = name.map_err(AppError::from)?;
    let shares = t::my_shares(State(st), v.api.clone()).await?.0;
    match shares.into_iter().find(|g| g.server == name) {
        Some(share) => Ok(share.server),
        None => Err(AppError::not_found(format!("no server '{name}' is shared with you")).into()),
    }
}

/// A configuration for a stock WireGuard app: the page whose script
/// makes the key pair in the browser (the one page with a script, and
/// its own Content-Security-Policy allowing scripts from this origin).
pub(super) async fn wireguard_page(
    State(st): St,
    v: Visitor,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Page {
    let server = shared_server(st, &v, name).await?;
    let mut resp = render(
        StatusCode::OK,
        &WireguardPage {
            l: v.layout(format!("WireGuard app for {server}")),
            server,
        },
    );
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(super::CSP_WITH_SCRIPT),
    );
    Ok(resp)
}

#[derive(Deserialize)]
pub(super) struct WireguardForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    public_key: String,
}

/// The page's script asks for an admission of the public key it made:
/// the API's own access request (its checks, its binding to this
/// request's source address, its audit), answered as the API answers,
/// in JSON. A server not shared with the visitor is the page's 404.
pub(super) async fn wireguard_admit(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    v: Visitor,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    Form(f): Form<WireguardForm>,
) -> Page {
    let server = shared_server(st.clone(), &v, name).await?;
    let answer = async {
        if v.check_csrf(&f.csrf).is_err() {
            return Err(AppError::forbidden(
                "csrf",
                "this page is out of date or did not come from this console; reload it and try again",
            ));
        }
        let key: proto::WgKey = f
            .public_key
            .parse()
            .map_err(|e| AppError::bad_request(format!("public_key: {e}")))?;
        let req = AccessRequest {
            server,
            public_key: Some(key),
            mode: Default::default(),
        };
        a::access(State(st), ConnectInfo(peer), v.api.clone(), Ok(Json(req))).await
    }
    .await;
    Ok(answer.unwrap_or_else(IntoResponse::into_response))
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    l: Layout,
    code: String,
    /// The code's device, once looked up: the confirmation step.
    waiting: Option<WaitingRow>,
    decided: Option<String>,
    error: Option<String>,
}

struct WaitingRow {
    name: String,
    source: String,
    yours: String,
    /// It asked from another address than the approver's.
    elsewhere: bool,
}

#[derive(Deserialize)]
pub(super) struct CodeQuery {
    #[serde(default)]
    code: Option<String>,
}

/// Sign-in by code (docs/api.md, "Sign-in by code"): the page a TV's or
/// player's link opens. A signed-in account types (or finds filled in)
/// the code the device shows; the page then shows which device asks and
/// from where (a code someone else started and sent as a link is told
/// apart before anything is decided), and only then Approve or Deny. Not
/// signed in, it goes through the sign-in page and comes back with the
/// code.
pub(super) async fn device_page(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CodeQuery>,
) -> Page {
    let code: String = q
        .code
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(16)
        .collect();
    let Some(v) = visitor(&st, &headers).await? else {
        let back = if code.is_empty() {
            "/device".to_string()
        } else {
            format!("/device?code={code}")
        };
        let next = percent_encode(&back);
        return Ok(see_other(&format!("/signin?next={next}")));
    };
    let mut page = DevicePage {
        l: v.layout("Sign in a device"),
        code: code.clone(),
        waiting: None,
        decided: None,
        error: None,
    };
    let mut status = StatusCode::OK;
    if !code.is_empty() {
        match crate::device_code::waiting(&st, &v.api, peer, &code).await {
            Ok(w) => {
                let yours = a::observed_source(&st, peer, &headers)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                page.waiting = Some(WaitingRow {
                    elsewhere: w.source != yours,
                    name: w.device_name,
                    source: w.source,
                    yours,
                });
            }
            Err(e) => {
                status = e.status;
                page.error = Some(e.message);
            }
        }
    }
    Ok(render(status, &page))
}

/// `?` and `=` of a path carried in a query.
fn percent_encode(path: &str) -> String {
    path.replace('%', "%25")
        .replace('?', "%3F")
        .replace('=', "%3D")
        .replace('&', "%26")
}

#[derive(Deserialize)]
pub(super) struct DeviceForm {
    csrf: String,
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    decision: String,
}

/// Approves or denies the code through the API's own route (its
/// throttle, its two-factor rule, its audit). Only an explicit decision
/// counts: a form without one changes nothing.
pub(super) async fn device_decide(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    v: Visitor,
    Form(f): Form<DeviceForm>,
) -> Page {
    v.check_csrf(&f.csrf)?;
    let approve = match f.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(AppError::bad_request("say approve or deny").into()),
    };
    let body = Ok(Json(DeviceCodeDecision {
        user_code: f.user_code.clone(),
    }));
    let answer = if approve {
        crate::device_code::approve_route(State(st), ConnectInfo(peer), v.api.clone(), body).await
    } else {
        crate::device_code::deny_route(State(st), ConnectInfo(peer), v.api.clone(), body).await
    };
    let (status, decided, error, code) = match answer {
        Ok(Json(d)) if d.approved => (
            StatusCode::OK,
            Some(format!(
                "Approved: '{}' (asked from {}) is signed in as you and goes on by itself. Remove it on your account page when you no longer use it.",
                d.device_name, d.source
            )),
            None,
            String::new(),
        ),
        Ok(Json(d)) => (
            StatusCode::OK,
            Some(format!(
                "Denied: '{}' (asked from {}) is not signed in.",
                d.device_name, d.source
            )),
            None,
            String::new(),
        ),
        Err(e) => (e.status, None, Some(e.message), f.user_code),
    };
    Ok(render(
        status,
        &DevicePage {
            l: v.layout("Sign in a device"),
            code,
            waiting: None,
            decided,
            error,
        },
    ))
}
