//! The HTTP API (see docs/api.md): one function builds the whole router,
//! so tests and the server use the same thing.

use crate::auth::{self, SecretKind};
use crate::error::AppError;
use crate::live_feeds::{LiveFeed, LiveFeeds};
use crate::store::{self, Audit, Db, NewAdmission, Tx};
use crate::Settings;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::{Json, Router};
use proto::api::*;
use proto::feed::*;
use proto::{BindingPolicy, WgKey};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    pub db: Db,
    /// What this replica knows live; the database's events reach it.
    pub live_feeds: Arc<LiveFeeds>,
    /// This process among the replicas sharing a database (for the
    /// gateway presence it records).
    pub replica: String,
    pub settings: Settings,
    pub limiter: auth::LoginLimiter,
    /// A real argon2 hash of a random password: login for an unknown user
    /// verifies against it, so it takes as long as a wrong password.
    pub dummy_hash: String,
    /// Wakes the expiry task when an admission with an earlier deadline
    /// appears.
    pub expiry_wake: Notify,
    /// Password hashes allowed to wait or run at once (see `login`).
    pub argon_slots: tokio::sync::Semaphore,
    /// Where they run: as many threads as slots, each reusing one argon2
    /// memory (see [`auth::PasswordPool`]).
    pub passwords: auth::PasswordPool,
    /// Full argon2 verifications run so far, whatever their outcome: a
    /// login for an unknown user must cost one, like a wrong password.
    pub password_checks: std::sync::atomic::AtomicU64,
    /// What `--metrics-listen` serves (see [`crate::metrics`]).
    pub metrics: crate::metrics::ControlMetrics,
    /// Reachability checks in progress (issue 17).
    pub prober: crate::reachability::Prober,
}

pub(crate) type Shared = State<Arc<AppState>>;
pub(crate) type ApiResult<T> = Result<T, AppError>;

/// Every route of the API: (method, path, handler). The router is built
/// from this list and [`routes`] lists it, so the isolation tests cover
/// each route (a route added here without a test fails them).
fn table() -> Vec<(Method, &'static str, MethodRouter<Arc<AppState>>)> {
    use crate::device_code as dc;
    use crate::tenants as t;
    vec![
        (Method::GET, "/v1/health", get(health)),
        (Method::POST, "/v1/login", post(login)),
        (Method::POST, "/v1/signup", post(t::signup)),
        // Sign-in by code (RFC 8628): a device asks, a user approves.
        (Method::POST, "/v1/device-codes", post(dc::create)),
        (Method::POST, "/v1/device-codes/token", post(dc::token)),
        (
            Method::POST,
            "/v1/device-codes/approve",
            post(dc::approve_route),
        ),
        (Method::POST, "/v1/device-codes/deny", post(dc::deny_route)),
        (Method::POST, "/v1/login/device", post(dc::device_login)),
        (Method::POST, "/v1/access", post(access)),
        (Method::DELETE, "/v1/admissions/{id}", delete(revoke)),
        (Method::POST, "/v1/admissions/{id}/renew", post(renew)),
        (Method::POST, "/v1/gateway/enroll", post(enroll)),
        (Method::POST, "/v1/gateway/report", post(report)),
        (Method::GET, "/v1/gateway/feed", get(feed)),
        (Method::POST, "/v1/gateway/ack", post(ack)),
        // An account's own things.
        (Method::GET, "/v1/me", get(t::me)),
        (Method::GET, "/v1/me/shares", get(t::my_shares)),
        (Method::GET, "/v1/me/admissions", get(t::my_admissions)),
        (Method::GET, "/v1/me/audit", get(t::my_audit)),
        (Method::GET, "/v1/me/devices", get(t::my_devices)),
        (
            Method::PATCH,
            "/v1/me/devices/{id}",
            patch(t::rename_device),
        ),
        (
            Method::DELETE,
            "/v1/me/devices/{id}",
            delete(t::remove_device),
        ),
        (
            Method::GET,
            "/v1/me/sessions",
            get(crate::sessions::my_sessions),
        ),
        (
            Method::DELETE,
            "/v1/me/sessions/{id}",
            delete(crate::sessions::end_session),
        ),
        (
            Method::PUT,
            "/v1/me/password",
            put(crate::sessions::change_password),
        ),
        (Method::POST, "/v1/me/totp", post(t::totp_begin)),
        (Method::POST, "/v1/me/totp/confirm", post(t::totp_confirm)),
        (Method::DELETE, "/v1/me/totp", delete(t::totp_disable)),
        (
            Method::POST,
            "/v1/invitations/accept",
            post(t::accept_invitation),
        ),
        // An owner's servers.
        (Method::POST, "/v1/servers", post(t::create_server)),
        (Method::GET, "/v1/servers", get(t::list_servers)),
        (Method::GET, "/v1/servers/{name}", get(t::show_server)),
        (Method::PATCH, "/v1/servers/{name}", patch(t::update_server)),
        (
            Method::DELETE,
            "/v1/servers/{name}",
            delete(t::remove_server),
        ),
        (
            Method::POST,
            "/v1/servers/{name}/enrollment-tokens",
            post(t::create_enrollment_token),
        ),
        (
            Method::DELETE,
            "/v1/servers/{name}/credential",
            delete(t::revoke_credential),
        ),
        (
            Method::GET,
            "/v1/servers/{name}/shares",
            get(t::list_shares),
        ),
        (
            Method::POST,
            "/v1/servers/{name}/shares",
            post(t::create_share),
        ),
        (
            Method::DELETE,
            "/v1/servers/{name}/shares/{user}",
            delete(t::remove_share),
        ),
        (
            Method::GET,
            "/v1/servers/{name}/invitations",
            get(t::list_invitations),
        ),
        (
            Method::POST,
            "/v1/servers/{name}/invitations",
            post(t::create_invitation),
        ),
        (
            Method::DELETE,
            "/v1/servers/{name}/invitations/{id}",
            delete(t::revoke_invitation),
        ),
        (
            Method::GET,
            "/v1/servers/{name}/admissions",
            get(t::server_admissions),
        ),
        (
            Method::GET,
            "/v1/servers/{name}/audit",
            get(t::server_audit),
        ),
        (
            Method::GET,
            "/v1/servers/{name}/devices",
            get(t::device_requests),
        ),
        (
            Method::PUT,
            "/v1/servers/{name}/devices/{id}",
            put(t::decide_device),
        ),
        // The operator's.
        (Method::POST, "/v1/admin/users", post(create_user)),
        (Method::GET, "/v1/admin/users", get(list_users)),
        (
            Method::DELETE,
            "/v1/admin/users/{name}",
            delete(delete_user),
        ),
        (
            Method::PUT,
            "/v1/admin/users/{name}/password",
            put(set_password),
        ),
        (Method::POST, "/v1/admin/servers", post(create_server)),
        (Method::GET, "/v1/admin/servers", get(list_servers)),
        (
            Method::PATCH,
            "/v1/admin/servers/{name}",
            patch(update_server),
        ),
        (
            Method::DELETE,
            "/v1/admin/servers/{name}",
            delete(remove_server),
        ),
        (
            Method::POST,
            "/v1/admin/servers/{name}/enrollment-tokens",
            post(create_enrollment_token),
        ),
        (
            Method::DELETE,
            "/v1/admin/servers/{name}/credential",
            delete(revoke_credential),
        ),
        (
            Method::POST,
            "/v1/admin/servers/{name}/check",
            post(check_server),
        ),
        (
            Method::GET,
            "/v1/admin/enrollment-tokens",
            get(list_enrollment_tokens),
        ),
        (
            Method::DELETE,
            "/v1/admin/enrollment-tokens/{id}",
            delete(revoke_enrollment_token),
        ),
        (Method::POST, "/v1/admin/grants", post(create_grant)),
        (Method::GET, "/v1/admin/grants", get(list_grants)),
        (
            Method::DELETE,
            "/v1/admin/grants/{user}/{server}",
            delete(delete_grant),
        ),
        (Method::GET, "/v1/admin/admissions", get(list_admissions)),
        (Method::GET, "/v1/admin/audit", get(audit_log)),
        (Method::GET, "/v1/admin/signup", get(t::signup_setting)),
        (Method::PUT, "/v1/admin/signup", put(t::set_signup_setting)),
        (
            Method::POST,
            "/v1/admin/invitations",
            post(t::create_account_invitation),
        ),
        (
            Method::GET,
            "/v1/admin/invitations",
            get(t::list_account_invitations),
        ),
        (
            Method::DELETE,
            "/v1/admin/invitations/{id}",
            delete(t::revoke_account_invitation),
        ),
    ]
}

/// (method, path) of every route, for tests and docs.
pub fn routes() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

pub fn router(state: Arc<AppState>) -> Router {
    table()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
        // The web console's pages (not API routes: see crate::console).
        .merge(crate::console::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_requests,
        ))
        .fallback(|| async { AppError::not_found("no such endpoint; see docs/api.md for the API") })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

// ---------- who is calling ----------

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub(crate) enum Principal {
    /// An account's login, with what that login proved.
    User(store::User, store::Session),
    /// The operator's admin token.
    Admin,
}

impl Principal {
    pub(crate) fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin) || matches!(self, Principal::User(u, _) if u.admin)
    }
    pub(crate) fn name(&self) -> &str {
        match self {
            Principal::User(u, _) => &u.username,
            Principal::Admin => "admin",
        }
    }
}

pub(crate) async fn principal(st: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let Some(token) = bearer(headers) else {
        return Err(AppError::unauthorized(
            "log in first and send 'Authorization: Bearer TOKEN'",
        ));
    };
    let hash = auth::hash_secret(token);
    let found = st
        .db
        .tx(move |tx| {
            // Users' tokens first: they make most requests.
            if let Some((user, session)) = store::token_session(tx, &hash, now())? {
                return Ok(Some(Principal::User(user, session)));
            }
            let admin = store::setting(tx, "admin_token_hash")?.as_deref() == Some(&hash[..]);
            Ok(admin.then_some(Principal::Admin))
        })
        .await?;
    found.ok_or_else(|| {
        AppError::unauthorized("the token is not valid or has expired; log in again")
    })
}

pub(crate) async fn admin(st: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let p = principal(st, headers).await?;
    if !p.is_admin() {
        return Err(AppError::forbidden(
            "admin_only",
            "this needs an admin: use the admin token (hushgate admin) or an admin user",
        ));
    }
    Ok(p)
}

async fn gateway(st: &AppState, headers: &HeaderMap) -> ApiResult<store::Server> {
    let Some(token) = bearer(headers) else {
        return Err(AppError::unauthorized(
            "a gateway must send its credential as 'Authorization: Bearer ...'",
        ));
    };
    let hash = auth::hash_secret(token);
    st.db
        .tx(move |tx| store::server_by_credential(tx, &hash))
        .await?
        .ok_or_else(|| {
            AppError::unauthorized(
                "this gateway credential is not valid: it was revoked or replaced, or its server was removed; on the control plane run 'hushgate admin server reenroll NAME' and start the gateway with the new enrollment token",
            )
        })
}

/// The header in which trusted proxies name the client they forward for.
/// Only that one is read: a client may send either header itself, and a
/// proxy that appends to one passes the other through untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the common one).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            _ => Err(format!(
                "'{s}' is not a forwarding header hushgate reads: use 'x-forwarded-for' or 'forwarded'"
            )),
        }
    }
}

/// The client's address as the control plane sees it: the TCP peer, or,
/// when the peer is a configured trusted proxy, the nearest address in the
/// forwarding header that is not itself a trusted proxy. Every line of the
/// header counts, in order: a proxy may append its own line after the one
/// the client sent, and only the right end of the whole list was written
/// by proxies we trust.
pub(crate) fn observed_source(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> ApiResult<IpAddr> {
    let peer_ip = peer.ip().to_canonical();
    let trusted = |ip: &IpAddr| st.settings.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer_ip) {
        return Ok(peer_ip);
    }
    let header = st.settings.forwarded_header;
    let name = match header {
        ForwardedHeader::XForwardedFor => "X-Forwarded-For",
        ForwardedHeader::Forwarded => "Forwarded",
    };
    let mut hops = Vec::new();
    for line in headers.get_all(name) {
        let line = line
            .to_str()
            .map_err(|_| AppError::bad_request(format!("{name} is not readable text")))?;
        for element in line.split(',') {
            let hop = match header {
                ForwardedHeader::XForwardedFor => Some(element.trim()),
                ForwardedHeader::Forwarded => forwarded_for(element),
            };
            hops.push(hop);
        }
    }
    let mut chosen = peer_ip;
    for hop in hops.into_iter().rev() {
        let Some(text) = hop else {
            return Err(AppError::bad_request(format!(
                "an entry of {name} names no client ('for=' missing); the proxy must name the address it forwards for"
            )));
        };
        chosen = parse_hop(text).ok_or_else(|| {
            AppError::bad_request(format!(
                "{name} holds '{text}', which is not an IP address; the proxy must name the address it forwards for"
            ))
        })?;
        if !trusted(&chosen) {
            break;
        }
    }
    Ok(chosen)
}

/// The `for=` value of one RFC 7239 element, unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address in a forwarding header: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

// ---------- login ----------

pub(crate) async fn login(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<Json<LoginResponse>> {
    let Json(req) = body?;
    let source = observed_source(&st, peer, &headers)?;
    // No real account has such names or passwords; refusing them early
    // keeps junk out of the limiter and the audit log.
    if req.username.is_empty() || req.username.len() > 64 || req.password.len() > 1024 {
        return Err(AppError::bad_request(
            "user names are 1-64 characters and passwords at most 1024 bytes",
        ));
    }
    let verdict = if st.db.shared() {
        let (s2, name) = (st.clone(), req.username.clone());
        let now = st.settings.clock.now_millis();
        st.db
            .tx(move |tx| s2.limiter.check_in(tx, source, &name, now))
            .await?
    } else {
        st.limiter
            .check(source, &req.username, st.settings.clock.now_millis())
    };
    if let Err(wait) = verdict {
        // Debug, not info: refusals cost nothing and come as fast as a
        // guesser sends them; the failures they follow are at info.
        tracing::debug!(user = %req.username, %source, wait_secs = wait.as_secs(), "login refused: too many attempts");
        st.metrics.login("rate_limited");
        let mut e = AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many login attempts; wait {} seconds and try again",
                wait.as_secs()
            ),
        );
        e.retry_after = Some(wait.as_secs());
        return Err(e);
    }
    let name = req.username.clone();
    let user = st.db.tx(move |tx| store::user_by_name(tx, &name)).await?;
    let stored = user
        .as_ref()
        .map(|u| u.pw_hash.clone())
        .unwrap_or_else(|| st.dummy_hash.clone());
    let password = req.password;
    // Each verification holds 19 MiB for ~20 ms; bound how many run at
    // once so a burst of logins cannot exhaust memory or the thread pool.
    let _slot = st
        .argon_slots
        .acquire()
        .await
        .map_err(|_| AppError::unavailable("shutting_down", "the control plane is stopping"))?;
    let ok = st.passwords.verify(password, stored).await;
    st.password_checks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(user = %req.username, %source, "login failed: wrong user name or password");
        return Err(login_failure(&st, source, req.username, false).await);
    };
    // The second factor, when the account has one.
    let mut session = store::Session::default();
    if user.totp {
        let Some(code) = req.totp.clone() else {
            return Err(AppError::new(
                StatusCode::UNAUTHORIZED,
                "totp_required",
                "this account signs in with two factors: send the current code from your authenticator app (or one of your recovery codes) as well",
            ));
        };
        let (uid, t) = (user.id, st.settings.clock.now_millis() / 1000);
        let passed = st
            .db
            .tx(move |tx| crate::totp::check_second_factor(tx, uid, &code, t))
            .await?;
        if !passed {
            tracing::info!(user = %user.username, %source, "login failed: wrong two-factor code");
            return Err(login_failure(&st, source, user.username, true).await);
        }
        session.mfa = true;
    }
    if let Some(name) = &req.device_name {
        check_device_name(name)?;
    }
    if !st.db.shared() {
        st.limiter.succeeded(source, &user.username);
    }
    tracing::info!(user = %user.username, %source, mfa = session.mfa, "login");
    st.metrics.login("ok");
    let (token, hash) = auth::new_secret(SecretKind::UserToken);
    let expires_at = now() + st.settings.token_ttl;
    let s2 = st.clone();
    let device_hash = req.device_credential.as_deref().map(auth::hash_secret);
    // A new device's credential goes back to the client once; only its
    // hash enters the transaction. A client that names its device along
    // with its credential registers anew if the credential is unknown
    // (not removed: see below) in this same login, so a second factor's
    // one-time code is not spent on a login that fails.
    let (new_device, new_credential) = match &req.device_name {
        Some(name) => {
            let (cred, hash) = auth::new_secret(SecretKind::Device);
            (
                Some((auth::random_id("dev_"), name.clone(), hash)),
                Some(cred),
            )
        }
        None => (None, None),
    };
    let limits = st.settings.limits;
    let device = st
        .db
        .tx(move |tx| {
            if s2.db.shared() {
                s2.limiter.succeeded_in(tx, source, &user.username)?;
            }
            store::lock_user(tx, user.id)?;
            let mut session = session.clone();
            let mut detail = String::new();
            let known = match &device_hash {
                Some(h) => match store::device_by_credential(tx, user.id, h)? {
                    Some(d) => Some(d),
                    None if store::device_was_removed(tx, user.id, h)? => {
                        return Ok(Err(true));
                    }
                    None if new_device.is_none() => return Ok(Err(false)),
                    None => {
                        detail = "device credential unknown (forgotten by this control plane), registered anew: ".into();
                        None
                    }
                },
                None => None,
            };
            let mut registered = false;
            if let Some(d) = known {
                store::touch_device(tx, &d.id, now())?;
                detail = format!("device {} ('{}')", d.id, d.name);
                session.device_id = Some(d.id);
            } else if let Some((id, name, hash)) = &new_device {
                registered = true;
                crate::limits::add_device(tx, &limits, (id, name, hash), user.id, now())?;
                detail = format!("{detail}new device {id} ('{name}')");
                session.device_id = Some(id.clone());
            }
            if session.mfa {
                detail = format!(
                    "{detail}{}with two factors",
                    if detail.is_empty() { "" } else { ", " }
                );
            }
            let ended = crate::limits::add_session(
                tx,
                &limits,
                (&hash, user.id),
                expires_at,
                &session,
                now(),
            )?;
            if ended > 0 {
                detail = format!(
                    "{detail}{}{ended} oldest login(s) ended (sessions-per-user {})",
                    if detail.is_empty() { "" } else { ", " },
                    limits.sessions_per_user
                );
            }
            store::audit(
                tx,
                now(),
                Audit {
                    event: "login",
                    username: Some(&user.username),
                    source: Some(source),
                    detail,
                    ..Default::default()
                },
            )?;
            Ok(Ok((session.device_id, registered)))
        })
        .await?;
    let (device_id, device_credential) = match device {
        Ok((id, registered)) => (id, new_credential.filter(|_| registered)),
        // Removed on purpose: the client must not undo that by itself.
        Err(true) => {
            return Err(AppError::new(
                StatusCode::UNAUTHORIZED,
                "device_removed",
                "this device was removed from your account; to use it again, delete its device file (hushgate connect names it) and log in, which registers it as a new device (servers that approve devices ask their owner again)",
            ))
        }
        // Forgotten (a control plane whose database was rebuilt): the
        // client registers itself again with a login without the credential.
        Err(false) => {
            return Err(AppError::new(
                StatusCode::UNAUTHORIZED,
                "device_unknown",
                "this device's credential is not known to the control plane (its database may have been rebuilt); log in with the device's name as well to register it anew",
            ))
        }
    };
    Ok(Json(LoginResponse {
        token,
        expires_at,
        device_id,
        device_credential,
    }))
}

/// Device names: what a person would call a machine.
pub(crate) fn check_device_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "a device name is 1-64 characters without control characters",
        ));
    }
    Ok(())
}

/// Records a failed login (the limiter, the audit) and returns the error
/// to send; the same words whatever was wrong with the password.
async fn login_failure(
    st: &Arc<AppState>,
    source: IpAddr,
    name: String,
    second_factor: bool,
) -> AppError {
    st.metrics.login("failed");
    let why = if second_factor {
        "wrong two-factor code"
    } else {
        "wrong user name or password"
    };
    let (s2, now_ms) = (st.clone(), st.settings.clock.now_millis());
    if !st.db.shared() {
        st.limiter.failed(source, &name, now_ms);
    }
    let written = st
        .db
        .tx(move |tx| {
            if s2.db.shared() {
                s2.limiter.failed_in(tx, source, &name, now_ms)?;
            }
            store::audit(
                tx,
                now(),
                Audit {
                    event: "login_failed",
                    username: Some(&name),
                    source: Some(source),
                    detail: why.into(),
                    ..Default::default()
                },
            )
        })
        .await;
    if let Err(e) = written {
        return e.into();
    }
    if second_factor {
        AppError::new(
            StatusCode::UNAUTHORIZED,
            "totp_wrong",
            "the two-factor code is wrong or was used already; wait for the next code and try again",
        )
    } else {
        AppError::unauthorized(why)
    }
}

// ---------- access ----------

/// Writes an `access_denied` audit line and returns the error to send.
async fn deny(st: &AppState, user: &str, server: &str, source: IpAddr, err: AppError) -> AppError {
    tracing::info!(%user, %server, %source, code = err.code, reason = %err.message, "access denied");
    let (user, server, detail) = (user.to_string(), server.to_string(), err.message.clone());
    let written = st
        .db
        .tx(move |tx| {
            store::audit(
                tx,
                now(),
                Audit {
                    event: "access_denied",
                    username: Some(&user),
                    server: Some(&server),
                    source: Some(source),
                    detail: detail.clone(),
                    ..Default::default()
                },
            )
        })
        .await;
    if let Err(e) = written {
        return e.into();
    }
    err
}

fn no_access(server: &str) -> AppError {
    // The same answer for "no grant" and "no such server", so that server
    // names cannot be probed.
    AppError::forbidden(
        "no_access",
        format!("you have no access to server '{server}'; ask its owner for a grant"),
    )
}

/// An access request, counted by result and timed for the metrics.
pub(crate) async fn access(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<AccessRequest>, JsonRejection>,
) -> ApiResult<axum::response::Response> {
    let started = Instant::now();
    let answer = grant_access(st.clone(), peer, headers, body).await;
    match &answer {
        Ok(_) => {
            st.metrics.access_result("granted");
            st.metrics
                .access_latency
                .observe(started.elapsed().as_secs_f64());
        }
        Err(e) => st.metrics.access_result(e.code),
    }
    answer
}

async fn grant_access(
    st: Arc<AppState>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Result<Json<AccessRequest>, JsonRejection>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let Json(req) = body?;
    let source = observed_source(&st, peer, &headers)?;
    let Principal::User(user, session) = principal(&st, &headers).await? else {
        return Err(AppError::forbidden(
            "not_a_user",
            "the admin token cannot request access; log in as a user",
        ));
    };
    match (req.mode, req.public_key) {
        (AccessMode::Tunnel, None) => return Err(AppError::bad_request(
            "public_key is required for tunnel access: the client's ephemeral WireGuard public key",
        )),
        (AccessMode::Direct, Some(_)) => {
            return Err(AppError::bad_request(
                "direct access takes no public_key; leave it out or use mode 'tunnel'",
            ))
        }
        _ => {}
    }
    let server_name = req.server.clone();
    let uid = user.id;
    let found = st
        .db
        .tx(move |tx| {
            let Some(server) = store::server_by_name(tx, &server_name)? else {
                return Ok(None);
            };
            let grant = store::grant_for(tx, uid, server.id)?;
            Ok(grant.map(|g| (server, g)))
        })
        .await?;
    let Some((server, grant)) = found else {
        return Err(deny(
            &st,
            &user.username,
            &req.server,
            source,
            no_access(&req.server),
        )
        .await);
    };
    if let Some(e) = policy_refusal(&st, &user, &session, &server, req.mode, source).await? {
        return Err(e);
    }
    if req.mode == AccessMode::Direct {
        if !grant.direct {
            let e = AppError::forbidden(
                "direct_not_allowed",
                format!("your grant on server '{}' does not allow direct (firewall-only) access; use the tunnel", server.name),
            );
            return Err(deny(&st, &user.username, &server.name, source, e).await);
        }
        if server.binding == BindingPolicy::FirstHandshake {
            let e = AppError::forbidden(
                "direct_not_possible",
                format!("server '{}' binds admissions on the first handshake, which direct mode does not have; its owner must use 'exact' or 'prefix:N'", server.name),
            );
            return Err(deny(&st, &user.username, &server.name, source, e).await);
        }
    }
    let (Some(gateway_key), Some(endpoint)) = (server.gateway_key, server.endpoint) else {
        let e = AppError::unavailable(
            "gateway_offline",
            format!("server '{}' has no gateway enrolled yet; its owner must start 'hushgate gateway' with the enrollment token", server.name),
        );
        return Err(deny(&st, &user.username, &server.name, source, e).await);
    };
    let live = st.live_feeds.server(server.id, server.version);
    let (connected, last_seen) = gateway_presence(&st, server.id, &live).await?;
    if !connected {
        let since = last_seen
            .map(|t| {
                format!(
                    "since {}",
                    t.format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "since the control plane started".into());
        let e = AppError::unavailable(
            "gateway_offline",
            format!("the gateway of server '{}' has not connected to the control plane {since}; is it running?", server.name),
        );
        return Err(deny(&st, &user.username, &server.name, source, e).await);
    }
    let offered: &[ServiceInfo] = match req.mode {
        AccessMode::Tunnel => &server.services,
        AccessMode::Direct => &server.direct_services,
    };
    let services: Vec<ServiceInfo> = offered
        .iter()
        .filter(|s| grant.services.as_ref().is_none_or(|g| g.contains(&s.name)))
        .cloned()
        .collect();
    if services.is_empty() {
        let e = AppError::forbidden(
            "no_services",
            format!(
                "server '{}' offers none of the services your grant allows{}",
                server.name,
                if req.mode == AccessMode::Direct {
                    " in direct mode"
                } else {
                    ""
                }
            ),
        );
        return Err(deny(&st, &user.username, &server.name, source, e).await);
    }

    let created = now();
    let new = NewAdmission {
        id: auth::random_id("adm_"),
        user_id: user.id,
        server_id: server.id,
        mode: req.mode,
        client_key: req.public_key,
        psk: (req.mode == AccessMode::Tunnel).then(|| WgKey(auth::random_key())),
        source,
        binding: server.binding,
        services: services.iter().map(|s| s.name.clone()).collect(),
        created_at: created,
        expires_at: created + Duration::from_secs(server.ttl_secs),
        pending_until: created + st.settings.ack_timeout + st.settings.pending_grace,
    };
    let limit = server.max_admissions_per_user;
    let server_name = server.name.clone();
    let device = session.device_id.clone();
    let inserted = st
        .db
        .tx(move |tx| {
            // Under the server's lock: two replicas cannot both see room
            // for one more.
            store::lock_server(tx, new.server_id)?;
            // A retry with the same key replaces its earlier admission,
            // which then does not count.
            let (held, same_key) = store::live_admissions_of(
                tx,
                new.user_id,
                new.server_id,
                new.created_at,
                new.client_key.as_ref(),
            )?;
            let held = held - same_key;
            if held >= limit {
                return Err(store::StoreError::AdmissionLimit(format!(
                    "you already hold {held} live admissions on server '{server_name}', as many as it allows one user; \
                     end a session you no longer use (stop its 'hushgate connect', or revoke it), or ask the server's owner to raise the limit"
                )));
            }
            let (adm, version) = store::insert_admission_locked(tx, &new)?;
            if let Some(d) = &device {
                store::set_admission_device(tx, &adm.id, d)?;
            }
            Ok((adm, version))
        })
        .await;
    let (adm, version) = match inserted {
        Ok(x) => x,
        Err(e @ store::StoreError::AdmissionLimit(_)) => {
            return Err(deny(&st, &user.username, &server.name, source, e.into()).await)
        }
        Err(e) => return Err(e.into()),
    };
    st.expiry_wake.notify_one();

    let waited = Instant::now();
    let acked = live.wait_ack(version, st.settings.ack_timeout).await;
    st.metrics
        .access_gateway_ack
        .observe(waited.elapsed().as_secs_f64());
    if !acked {
        // Undo: the client will never hear of this admission, so the
        // gateway must not keep it either.
        let a = adm.clone();
        st.db
            .tx(move |tx| match store::admission(tx, &a.id)? {
                Some(a) => store::delete_admission(tx, &a),
                None => Ok(None),
            })
            .await?;
        let e = AppError::unavailable(
            "gateway_timeout",
            format!(
                "the gateway of server '{}' did not confirm the admission within {} s; try again, and if it persists check that the gateway is running",
                server.name,
                st.settings.ack_timeout.as_secs_f32()
            ),
        );
        return Err(deny(&st, &user.username, &server.name, source, e).await);
    }
    let a = adm.clone();
    let still_there = st
        .db
        .tx(move |tx| {
            store::activate_with_audit(
                tx,
                &a.id,
                now(),
                Audit {
                    event: "access_granted",
                    username: Some(&a.username),
                    server: Some(&a.server),
                    admission_id: Some(&a.id),
                    source: Some(a.source),
                    detail: format!(
                        "{} admission, binding {}, services {}",
                        match a.mode {
                            AccessMode::Tunnel => "tunnel",
                            AccessMode::Direct => "direct",
                        },
                        a.binding,
                        a.services.join(",")
                    ),
                },
            )
        })
        .await?;
    if !still_there {
        return Err(AppError::forbidden(
            "revoked",
            format!(
                "your admission to server '{}' was revoked while it was being set up",
                server.name
            ),
        ));
    }
    tracing::info!(user = %user.username, server = %server.name, %source, admission = %adm.id, "access granted");
    match req.mode {
        AccessMode::Tunnel => Ok(Json(AccessResponse {
            admission_id: adm.id.clone(),
            gateway_endpoint: endpoint,
            gateway_public_key: gateway_key,
            client_address: IpAddr::V4(adm.client_address().unwrap_or(store::TUNNEL_BASE)),
            service_address: IpAddr::V4(store::tunnel_address(store::SERVICE_INDEX)),
            services,
            preshared_key: adm.psk,
            expires_at: adm.expires_at,
            // issue 17: the tunnel will probably not come up; say why.
            gateway_reachability: server
                .reachability
                .as_ref()
                .filter(|c| !c.reachable)
                .map(|_| crate::reachability::view(&server).for_clients()),
        })
        .into_response()),
        AccessMode::Direct => Ok(Json(DirectAccessResponse {
            admission_id: adm.id.clone(),
            direct_endpoint: SocketAddr::new(endpoint.ip(), services[0].port),
            services,
            expires_at: adm.expires_at,
        })
        .into_response()),
    }
}

/// What the server's policy says against this request before anything
/// is admitted: direct mode off, a login without the second factor the
/// server requires, a device its owner has not approved (yet). A device's
/// first request is recorded for the owner to decide, and audited once;
/// its later requests while waiting are not (clients ask again every few
/// seconds).
async fn policy_refusal(
    st: &AppState,
    user: &store::User,
    session: &store::Session,
    server: &store::Server,
    mode: AccessMode,
    source: IpAddr,
) -> ApiResult<Option<AppError>> {
    if mode == AccessMode::Direct && !server.direct_mode {
        let e = AppError::forbidden(
            "direct_not_allowed",
            format!("the owner of server '{}' does not allow direct (firewall-only) access; use the tunnel", server.name),
        );
        return Ok(Some(
            deny(st, &user.username, &server.name, source, e).await,
        ));
    }
    if server.require_2fa && !session.mfa {
        let e = AppError::forbidden(
            "two_factor_required",
            format!("server '{}' requires two-factor sign-in: turn on TOTP for your account (the console's account page) and log in again with a code", server.name),
        );
        return Ok(Some(
            deny(st, &user.username, &server.name, source, e).await,
        ));
    }
    if !server.approve_devices || server.owner_id == Some(user.id) {
        return Ok(None);
    }
    let Some(device) = session.device_id.clone() else {
        let e = AppError::forbidden(
            "device_required",
            format!("the owner of server '{}' approves each device: log in from a hushgate that registers this device (hushgate connect does), then ask again", server.name),
        );
        return Ok(Some(
            deny(st, &user.username, &server.name, source, e).await,
        ));
    };
    let (sid, sname, uname, owner) = (
        server.id,
        server.name.clone(),
        user.username.clone(),
        server.owner_id,
    );
    let max_pending = st.settings.limits.pending_devices_per_server;
    let (state, owner_name) = st
        .db
        .tx(move |tx| {
            let (state, first) = store::request_approval(tx, &device, sid, now(), max_pending)?;
            if first {
                store::audit(
                    tx,
                    now(),
                    Audit {
                        event: "device_approval_requested",
                        username: Some(&uname),
                        server: Some(&sname),
                        source: Some(source),
                        detail: format!("device {device}"),
                        ..Default::default()
                    },
                )?;
            }
            let owner_name = match owner {
                Some(id) => store::username_of(tx, id)?,
                None => None,
            };
            Ok((state, owner_name.unwrap_or_else(|| "the owner".into())))
        })
        .await?;
    Ok(match state {
        store::Approval::Approved => None,
        store::Approval::Pending => {
            let mut e = AppError::forbidden(
                "waiting_for_approval",
                format!(
                    "waiting for {owner_name} to approve this device for server '{}'",
                    server.name
                ),
            );
            e.retry_after = Some(APPROVAL_RETRY_SECS);
            Some(e)
        }
        store::Approval::Denied => {
            let e = AppError::forbidden(
                "device_denied",
                format!(
                    "{owner_name} did not approve this device for server '{}'; ask them if this is a mistake",
                    server.name
                ),
            );
            Some(deny(st, &user.username, &server.name, source, e).await)
        }
    })
}

/// How often a client waiting for a device approval asks again.
pub const APPROVAL_RETRY_SECS: u64 = 3;

/// Who may act on an admission besides its holder and the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlsoAllowed {
    Nobody,
    /// The owner of the admission's server (to revoke it).
    ServerOwner,
}

/// Loads an admission the caller may act on: its holder, the operator,
/// and, if `also` says so, its server's owner. Anyone else gets the same
/// answer as for an id that does not exist.
async fn owned_admission(
    st: &AppState,
    who: &Principal,
    id: String,
    also: AlsoAllowed,
) -> ApiResult<store::Admission> {
    let caller = match who {
        Principal::User(u, _) => Some(u.id),
        Principal::Admin => None,
    };
    let found = st
        .db
        .tx(move |tx| {
            let Some(a) = store::admission(tx, &id)? else {
                return Ok(None);
            };
            let server_owner = store::server_by_id(tx, a.server_id)?.owner_id;
            Ok(Some((a, server_owner)))
        })
        .await?;
    match found {
        Some((a, _)) if who.is_admin() || caller == Some(a.user_id) => Ok(a),
        Some((a, owner))
            if also == AlsoAllowed::ServerOwner && caller.is_some() && owner == caller =>
        {
            Ok(a)
        }
        _ => Err(AppError::not_found(
            "no such admission; it may have expired or been revoked",
        )),
    }
}

async fn renew(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RenewResponse>> {
    let Path(id) = id?;
    let source = observed_source(&st, peer, &headers)?;
    let who = principal(&st, &headers).await?;
    let adm = owned_admission(&st, &who, id, AlsoAllowed::Nobody).await?;
    let mfa = match &who {
        Principal::User(_, s) => s.mfa,
        Principal::Admin => true,
    };
    let a = adm.clone();
    let renewed = st
        .db
        .tx(move |tx| {
            let server = store::server_by_id(tx, a.server_id)?;
            let Some(grant) = store::grant_for(tx, a.user_id, a.server_id)? else {
                return Ok(None);
            };
            // The grant may have been narrowed since; an expired admission
            // the expiry task has not swept yet may not come back either.
            if !grant_covers(&grant, &a) || a.expires_at <= now() {
                return Ok(None);
            }
            // So may the server's policy: direct mode turned off, or two
            // factors required of a login that used one.
            if (a.mode == AccessMode::Direct && !server.direct_mode) || (server.require_2fa && !mfa)
            {
                return Ok(None);
            }
            let expires = now() + Duration::from_secs(server.ttl_secs);
            let v = store::set_expiry(tx, &a, expires)?;
            Ok(Some((expires, v, server.binding)))
        })
        .await?;
    let Some((expires_at, version, binding)) = renewed else {
        // The caller owns this admission, so the server's existence is no
        // secret here: say what happened rather than "no access".
        return Err(AppError::forbidden(
            "no_access",
            format!(
                "your access to server '{}' has ended: its owner removed or narrowed your grant, or the admission expired; ask the owner if this is unexpected",
                adm.server
            ),
        ));
    };
    let live = st.live_feeds.server(adm.server_id, version);
    if !live.wait_ack(version, st.settings.ack_timeout).await {
        return Err(AppError::unavailable(
            "gateway_timeout",
            format!(
                "the renewal is recorded, but the gateway of server '{}' did not confirm it in time; try again, and if it persists check that the gateway is running",
                adm.server
            ),
        ));
    }
    Ok(Json(RenewResponse {
        expires_at,
        moved: moved(binding, &adm, source),
    }))
}

/// Whether a renewal from `source` says the client has left the address
/// its admission is bound to. Unknown (`None`) under first-handshake
/// binding: the gateway pins the address of the first handshake, which
/// the control plane does not see, and the address of an HTTPS request
/// may differ from it for harmless reasons (IPv6 privacy addresses,
/// happy eyeballs, a provider's NAT that maps each connection anew).
fn moved(binding: BindingPolicy, a: &store::Admission, source: IpAddr) -> Option<bool> {
    let (bound, source) = (a.source.to_canonical(), source.to_canonical());
    match binding {
        BindingPolicy::FirstHandshake => None,
        b => Some(!b.admits(bound, source)),
    }
}

/// Whether a grant still allows everything an admission was given.
pub(crate) fn grant_covers(grant: &store::Grant, a: &store::Admission) -> bool {
    let services_ok = grant
        .services
        .as_ref()
        .is_none_or(|allowed| a.services.iter().all(|s| allowed.contains(s)));
    services_ok && (a.mode != AccessMode::Direct || grant.direct)
}

/// Removes an admission and writes its `revoked` audit line, in the
/// caller's transaction; returns the server's new feed version (`None`
/// when another request removed it first: nothing to audit).
pub(crate) fn end_admission(
    tx: &mut Tx,
    a: &store::Admission,
    detail: String,
) -> store::Result<Option<u64>> {
    let Some(v) = store::delete_admission(tx, a)? else {
        return Ok(None);
    };
    tracing::info!(user = %a.username, server = %a.server, admission = %a.id, %detail, "admission revoked");
    store::audit(
        tx,
        now(),
        Audit {
            event: "revoked",
            username: Some(&a.username),
            server: Some(&a.server),
            admission_id: Some(&a.id),
            source: Some(a.source),
            detail,
        },
    )?;
    Ok(Some(v))
}

pub(crate) async fn revoke(
    State(st): Shared,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = id?;
    let who = principal(&st, &headers).await?;
    let adm = owned_admission(&st, &who, id, AlsoAllowed::ServerOwner).await?;
    let by = who.name().to_string();
    let a = adm.clone();
    st.db
        .tx(move |tx| end_admission(tx, &a, format!("revoked by {by}")))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- gateway ----------

fn gateway_endpoint(report: &GatewayReport, peer: IpAddr) -> SocketAddr {
    report
        .public_endpoint
        .unwrap_or_else(|| SocketAddr::new(peer, report.listen_port))
}

/// Checks a gateway's report and makes what it says safe to store, print
/// and send to: the router's words are cleaned (a gateway, or a device on
/// its LAN answering as its router, chooses them), and an endpoint no
/// client could use (multicast, broadcast, unspecified) is refused, so the
/// reachability check never sends there.
fn check_report(report: &mut GatewayReport) -> ApiResult<()> {
    if report.listen_port == 0 {
        return Err(AppError::bad_request("listen_port must not be 0"));
    }
    if let Some(e) = report.public_endpoint {
        let ip = e.ip().to_canonical();
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_unspecified() || ip.is_multicast() || broadcast || e.port() == 0 {
            return Err(AppError::bad_request(format!(
                "public_endpoint {e} is not an address clients can send to"
            )));
        }
        report.public_endpoint = Some(SocketAddr::new(ip, e.port()));
    }
    if let Some(n) = &mut report.network {
        let m = &mut n.port_mapping;
        m.error = m.error.as_deref().map(proto::reach::clean_text);
        if n.ipv6.len() > 16 || n.control_addresses.len() > 4 {
            return Err(AppError::bad_request(
                "a network report names at most 16 IPv6 addresses and 4 control plane addresses",
            ));
        }
    }
    for s in report.services.iter().chain(&report.direct_services) {
        // Names reach clients' WireGuard configurations (a comment line)
        // and pages: no newline or other character could make a line of
        // its own there (`PostUp = ...` would run on the client).
        check_name("service name", &s.name)?;
        if s.port == 0 {
            return Err(AppError::bad_request(format!(
                "service '{}' needs a port other than 0",
                s.name
            )));
        }
    }
    Ok(())
}

async fn enroll(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> ApiResult<Json<EnrollResponse>> {
    let Json(mut req) = body?;
    check_report(&mut req.report)?;
    let source = observed_source(&st, peer, &headers)?;
    let enroll_hash = auth::hash_secret(&req.enrollment_token);
    let (credential, cred_hash) = auth::new_secret(SecretKind::GatewayCredential);
    let endpoint = gateway_endpoint(&req.report, source);
    // Gateways that report their network (issue 17) are checked; older
    // ones (and the tests' stand-ins) are left alone.
    let check = req.report.network.is_some();
    let report = req.report;
    let outcome = st
        .db
        .tx(move |tx| {
            let outcome = store::enroll(tx, &enroll_hash, &cred_hash, now())?;
            let store::Enrollment::Enrolled { server, replaced } = &outcome else {
                return Ok(outcome);
            };
            store::update_gateway(
                tx,
                server.id,
                &report.public_key,
                endpoint,
                &report.services,
                &report.direct_services,
            )?;
            if let Some(network) = &report.network {
                store::set_network(
                    tx,
                    server.id,
                    &crate::reachability::StoredNetwork {
                        report: network.clone(),
                        observed: source,
                    },
                )?;
            }
            store::audit(
                tx,
                now(),
                Audit {
                    event: "enrolled",
                    server: Some(&server.name),
                    source: Some(source),
                    detail: format!(
                        "gateway key {}, endpoint {endpoint}{}",
                        report.public_key.fingerprint(),
                        if *replaced {
                            "; the earlier gateway credential no longer works"
                        } else {
                            ""
                        }
                    ),
                    ..Default::default()
                },
            )?;
            Ok(outcome)
        })
        .await?;
    match outcome {
        store::Enrollment::Enrolled { server, replaced } => {
            tracing::info!(server = %server.name, %source, replaced, "gateway enrolled");
            if check {
                crate::reachability::request(&st, server.id);
            }
            Ok(Json(EnrollResponse {
                server: server.name,
                credential,
            }))
        }
        store::Enrollment::Expired { server, expired_at } => {
            tracing::info!(%server, %source, "enrollment refused: the token has expired");
            Err(AppError::unauthorized(format!(
                "this enrollment token for server '{server}' expired at {}; create a new one with 'hushgate admin server reenroll {server}'",
                rfc3339(expired_at)
            )))
        }
        store::Enrollment::Unknown => {
            tracing::info!(%source, "enrollment refused: unknown token");
            Err(AppError::unauthorized(
                "this enrollment token is not valid: it was already used, revoked or never issued; create a new one with 'hushgate admin server reenroll NAME'",
            ))
        }
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn report(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<GatewayReport>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let server = gateway(&st, &headers).await?;
    let Json(mut report) = body?;
    check_report(&mut report)?;
    let source = observed_source(&st, peer, &headers)?;
    let endpoint = gateway_endpoint(&report, source);
    let check = report.network.is_some();
    let id = server.id;
    let version = st
        .db
        .tx(move |tx| {
            store::update_gateway(
                tx,
                id,
                &report.public_key,
                endpoint,
                &report.services,
                &report.direct_services,
            )?;
            if let Some(network) = &report.network {
                store::set_network(
                    tx,
                    id,
                    &crate::reachability::StoredNetwork {
                        report: network.clone(),
                        observed: source,
                    },
                )?;
            }
            Ok(store::server_by_id(tx, id)?.version)
        })
        .await?;
    st.live_feeds.server(id, version).publish(version);
    if server.endpoint != Some(endpoint) {
        tracing::info!(server = %server.name, %endpoint, "gateway endpoint changed; new admissions use it");
    }
    // issue 17: check the endpoint as reported now, for a gateway that
    // reports its network (older gateways are not checked).
    if check {
        crate::reachability::request(&st, id);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
    server: Option<String>,
    /// The caller understands `FeedUpdate` and wants only the changes
    /// since `after` when the control plane still has them.
    diff: Option<bool>,
}

async fn feed(
    State(st): Shared,
    headers: HeaderMap,
    q: Result<Query<FeedQuery>, QueryRejection>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let Query(q) = q?;
    let server = gateway(&st, &headers).await?;
    if let Some(name) = &q.server {
        if name != &server.name {
            return Err(AppError::forbidden(
                "wrong_server",
                format!(
                    "this gateway credential belongs to server '{}', not '{name}'",
                    server.name
                ),
            ));
        }
    }
    let live = st.live_feeds.server(server.id, server.version);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(25_000)).min(st.settings.max_feed_wait);
    let _held = HeldPoll::start(&st, &live, server.id, wait).await?;
    if let Some(after) = q.after {
        if after == server.version {
            let mut rx = live.version.subscribe();
            let mut cred = live.credential.subscribe();
            cred.mark_unchanged();
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    _ = rx.wait_for(|v| *v != after) => {}
                    _ = cred.changed() => {}
                }
            })
            .await;
            // The credential may have been revoked or replaced, or the
            // server removed, while the poll was held.
            gateway(&st, &headers).await?;
        }
    }
    let id = server.id;
    let diff_from = q.after.filter(|_| q.diff == Some(true));
    let answer = st
        .db
        .tx(move |tx| store::feed_since(tx, id, diff_from))
        .await?;
    let t = now();
    let service_address = store::tunnel_address(store::SERVICE_INDEX);
    let update = match answer {
        store::FeedAnswer::Whole(server, admissions) => FeedUpdate {
            reachability: Some(crate::reachability::view(&server)),
            version: server.version,
            server_time: t,
            service_address,
            base: None,
            admissions: admissions
                .iter()
                .filter(|a| a.expires_at > t)
                .map(store::Admission::to_feed)
                // A reachability check's one-off admission, while it runs.
                .chain(server.probe.clone().filter(|p| p.expires_at > t))
                .collect(),
            removed: Vec::new(),
            server: server.name,
        },
        store::FeedAnswer::Diff {
            server,
            base,
            upserts,
            mut removed,
        } => {
            // A reachability check's one-off admission is not a stored
            // admission: the history names its id (store::begin_probe),
            // and the diff, finding no row, calls it removed. While the
            // check runs it is the admission itself.
            let mut admissions: Vec<FeedAdmission> =
                upserts.iter().map(store::Admission::to_feed).collect();
            if let Some(p) = server.probe.clone().filter(|p| p.expires_at > t) {
                if let Some(i) = removed.iter().position(|r| *r == p.id) {
                    removed.remove(i);
                    admissions.push(p);
                }
            }
            FeedUpdate {
                reachability: Some(crate::reachability::view(&server)),
                server: server.name,
                version: server.version,
                server_time: t,
                service_address,
                base: Some(base),
                admissions,
                removed,
            }
        }
    };
    if q.diff == Some(true) {
        return Ok(Json(update).into_response());
    }
    // The original form: always the whole set, without `base`/`removed`.
    Ok(Json(FeedState {
        server: update.server,
        version: update.version,
        server_time: update.server_time,
        service_address: update.service_address,
        admissions: update.admissions,
    })
    .into_response())
}

async fn ack(
    State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<FeedAck>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let server = gateway(&st, &headers).await?;
    let Json(a) = body?;
    if a.version > server.version {
        return Err(AppError::bad_request(format!(
            "version {} was never issued (the latest is {})",
            a.version, server.version
        )));
    }
    if st.db.shared() {
        // The access request waiting for this may be on another replica:
        // the database tells it (and remembers, for one that missed it).
        let (id, version, now_ms) = (server.id, a.version, store::millis(now()));
        st.db
            .tx_relaxed(move |tx| store::record_ack(tx, id, version, now_ms))
            .await?;
    }
    st.live_feeds
        .server(server.id, server.version)
        .ack(a.version);
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a server's gateway counts as connected now, and when it was
/// last heard from. Its feed poll may be held by another replica: with a
/// shared database, what this replica does not see itself it reads from
/// the gateway's presence there.
async fn gateway_presence(
    st: &AppState,
    server_id: i64,
    live: &LiveFeed,
) -> ApiResult<(bool, Option<OffsetDateTime>)> {
    if live.connected(Instant::now()) || !st.db.shared() {
        return Ok((live.connected(Instant::now()), live.last_seen()));
    }
    let p = st.db.tx(move |tx| store::presence(tx, server_id)).await?;
    Ok(presence_verdict(&p, live))
}

fn presence_verdict(p: &store::Presence, live: &LiveFeed) -> (bool, Option<OffsetDateTime>) {
    let now_ms = store::millis(now());
    let grace = crate::live_feeds::CONNECTED_GRACE.as_millis() as i64;
    let connected =
        p.held_until.is_some_and(|h| h > now_ms) || p.last_seen.is_some_and(|l| now_ms - l < grace);
    let seen = match (p.last_seen.map(store::from_millis), live.last_seen()) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    (connected || live.connected(Instant::now()), seen)
}

/// A feed poll held open on this replica. With a shared database, the
/// other replicas learn of it from the gateway's presence row: written
/// when a poll starts (at most once per half poll, however often the
/// gateway polls), and shortened to the connected grace once this
/// replica has held no poll of the gateway for a second (the gateway
/// left, or moved to another replica, which then holds).
struct HeldPoll {
    st: Arc<AppState>,
    live: Arc<LiveFeed>,
    server: i64,
    _guard: crate::live_feeds::PollGuard,
}

impl HeldPoll {
    async fn start(
        st: &Arc<AppState>,
        live: &Arc<LiveFeed>,
        server: i64,
        wait: Duration,
    ) -> ApiResult<HeldPoll> {
        let guard = live.poll_guard();
        if st.db.shared() {
            let at = Instant::now();
            let claim = at + wait + crate::live_feeds::CONNECTED_GRACE;
            let stale = live
                .held_written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|(_, until)| {
                    until < at + wait / 2 + crate::live_feeds::CONNECTED_GRACE
                });
            if stale {
                let now_ms = store::millis(now());
                let until = now_ms + (claim - at).as_millis() as i64;
                let holder = st.replica.clone();
                st.db
                    .tx_relaxed(move |tx| store::presence_hold(tx, server, now_ms, until, &holder))
                    .await?;
                *live.held_written.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, claim));
            }
        }
        Ok(HeldPoll {
            st: st.clone(),
            live: live.clone(),
            server,
            _guard: guard,
        })
    }
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        if !self.st.db.shared() {
            return;
        }
        let (st, live, server) = (self.st.clone(), self.live.clone(), self.server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if live.open_polls() > 0 {
                return;
            }
            *live.held_written.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let now_ms = store::millis(now());
            let until = now_ms + crate::live_feeds::CONNECTED_GRACE.as_millis() as i64;
            let holder = st.replica.clone();
            let released = st
                .db
                .tx_relaxed(move |tx| store::presence_release(tx, server, now_ms, until, &holder))
                .await;
            if let Err(e) = released {
                tracing::debug!(error = %e, "cannot record the end of a feed poll");
            }
        });
    }
}

// ---------- admin ----------

pub(crate) fn check_name(what: &str, name: &str) -> ApiResult<()> {
    if !proto::is_name(name) {
        return Err(AppError::bad_request(format!(
            "{what} '{name}' must be 1-64 characters of letters, digits, '-', '_', '.' or '@'"
        )));
    }
    Ok(())
}

async fn create_user(
    State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<CreateUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<UserInfo>)> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Json(req) = body?;
    check_name("user name", &req.username)?;
    check_password(&req.password)?;
    let hash = hash_new_password(&st, req.password.clone()).await?;
    let user = st
        .db
        .tx(move |tx| {
            let u = store::create_user(tx, &req.username, &hash, req.admin, now())?;
            store::audit(
                tx,
                now(),
                Audit {
                    event: "user_created",
                    username: Some(&u.username),
                    detail: format!("by {by}{}", if u.admin { ", as admin" } else { "" }),
                    ..Default::default()
                },
            )?;
            Ok(u)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserInfo {
            username: user.username,
            admin: user.admin,
            created_at: user.created_at,
        }),
    ))
}

async fn set_password(
    State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<SetPassword>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path(name) = name?;
    let Json(req) = body?;
    check_password(&req.password)?;
    let hash = hash_new_password(&st, req.password).await?;
    let n = name.clone();
    st.db
        .tx(move |tx| {
            let user = store::user_by_name(tx, &n)?
                .ok_or_else(|| store::StoreError::NotFound(format!("no user named '{n}'")))?;
            store::set_password_hash(tx, user.id, &hash)?;
            // Whoever logged in with the old password must log in again.
            let ended = store::delete_user_tokens(tx, user.id)?;
            store::audit(
                tx,
                now(),
                Audit {
                    event: "password_changed",
                    username: Some(&user.username),
                    detail: format!("{ended} logins ended, by {by}"),
                    ..Default::default()
                },
            )
        })
        .await?;
    tracing::info!(user = %name, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// Hashes a new password on the password pool, waiting for a slot like
/// a login does.
pub(crate) async fn hash_new_password(st: &AppState, password: String) -> ApiResult<String> {
    let _slot = st
        .argon_slots
        .acquire()
        .await
        .map_err(|_| AppError::unavailable("shutting_down", "the control plane is stopping"))?;
    st.passwords.hash(password).await.ok_or_else(|| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the password could not be hashed; try again",
        )
    })
}

pub(crate) fn check_password(password: &str) -> ApiResult<()> {
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(AppError::bad_request(
            "the password must have at least 8 characters (and at most 1024 bytes)",
        ));
    }
    Ok(())
}

async fn list_users(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<Vec<UserInfo>>> {
    admin(&st, &headers).await?;
    let users = st.db.tx(store::list_users).await?;
    Ok(Json(
        users
            .into_iter()
            .map(|u| UserInfo {
                username: u.username,
                admin: u.admin,
                created_at: u.created_at,
            })
            .collect(),
    ))
}

async fn delete_user(
    State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path(name) = name?;
    st.db
        .tx(move |tx| {
            let user = store::user_by_name(tx, &name)?
                .ok_or_else(|| store::StoreError::NotFound(format!("no user named '{name}'")))?;
            let owned = store::owned_server_names(tx, user.id)?;
            if !owned.is_empty() {
                // Their servers' admissions must end through the feed
                // first; a cascade in the database would skip it.
                return Err(store::StoreError::Conflict(format!(
                    "user '{name}' owns servers ({}); remove those first (hushgate admin server remove NAME)",
                    owned.join(", ")
                )));
            }
            for a in &store::user_server_admissions(tx, user.id, None)? {
                end_admission(tx, a, format!("user deleted by {by}"))?;
            }
            store::delete_user(tx, user.id)?;
            store::audit(
                tx,
                now(),
                Audit {
                    event: "user_deleted",
                    username: Some(&user.username),
                    detail: format!("by {by}"),
                    ..Default::default()
                },
            )
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /v1/admin/servers`: [`CreateServer`] and
/// [`ServerOptions`] in one object.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateServerBody {
    name: String,
    #[serde(default)]
    binding: BindingPolicy,
    admission_ttl_secs: Option<u64>,
    max_admissions_per_user: Option<u32>,
    enrollment_ttl_secs: Option<u64>,
}

fn check_ttl(ttl: u64) -> ApiResult<()> {
    if !(1..=7 * 86_400).contains(&ttl) {
        return Err(AppError::bad_request(
            "admission_ttl_secs must be between 1 second and 7 days",
        ));
    }
    Ok(())
}

fn check_max_admissions(n: u32) -> ApiResult<()> {
    if !(1..=MAX_ADMISSIONS_PER_USER_CAP).contains(&n) {
        return Err(AppError::bad_request(format!(
            "max_admissions_per_user must be between 1 and {MAX_ADMISSIONS_PER_USER_CAP}"
        )));
    }
    Ok(())
}

/// The most a server may allow one user: every tunnel address it has
/// (benchmarks admit thousands of keys for one user).
const MAX_ADMISSIONS_PER_USER_CAP: u32 = store::TUNNEL_ADDRESSES;

/// The validity of a new enrollment token: asked for, or the default.
fn enrollment_ttl(st: &AppState, asked: Option<u64>) -> ApiResult<Duration> {
    match asked {
        None => Ok(st.settings.enrollment_ttl),
        Some(s) if (1..=30 * 86_400).contains(&s) => Ok(Duration::from_secs(s)),
        Some(_) => Err(AppError::bad_request(
            "an enrollment token's validity must be between 1 second and 30 days",
        )),
    }
}

/// Issues an enrollment token for a server, in the caller's transaction.
fn issue_enrollment_token(
    tx: &mut Tx,
    server: &store::Server,
    ttl: Duration,
    by: &str,
    limits: crate::limits::Limits,
) -> store::Result<(IssuedEnrollmentToken, [u8; 32])> {
    let created = now();
    store::lock_server(tx, server.id)?;
    crate::limits::check(
        "enrollment-tokens-per-server",
        limits.enrollment_tokens_per_server,
        store::count_live_enrollment_tokens(tx, server.id, created)?,
        &format!("the live enrollment tokens of server '{}'", server.name),
        "revoke an unused one or let it expire first",
    )?;
    let (token, hash) = auth::new_secret(SecretKind::Enrollment);
    let id = auth::random_id("enr_");
    let expires_at = created + ttl;
    store::insert_enrollment_token(tx, &id, server.id, &hash, created, expires_at)?;
    store::audit(
        tx,
        created,
        Audit {
            event: "enrollment_token_created",
            server: Some(&server.name),
            detail: format!("token {id}, valid until {}, by {by}", rfc3339(expires_at)),
            ..Default::default()
        },
    )?;
    Ok((
        IssuedEnrollmentToken {
            id,
            server: server.name.clone(),
            token,
            expires_at,
        },
        hash,
    ))
}

/// Whose servers a request may see and change: the operator's reach
/// everything, an owner's only the servers that account owns (anything
/// else is "not found", exactly like a name nobody uses).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    Operator,
    Owner(i64),
}

impl Scope {
    pub(crate) fn server(self, tx: &mut Tx, name: &str) -> store::Result<store::Server> {
        match self {
            Scope::Operator => store::server_named(tx, name),
            Scope::Owner(id) => store::owned_server(tx, id, name),
        }
    }
}

async fn create_server(
    State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<CreateServerBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedServer>)> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Json(req) = body?;
    register_server(&st, None, by, req).await
}

/// Registers a server (owned by `owner`, or the operator's) and issues
/// its first enrollment token, shown once.
pub(crate) async fn register_server(
    st: &AppState,
    owner: Option<i64>,
    by: String,
    req: CreateServerBody,
) -> ApiResult<(StatusCode, Json<CreatedServer>)> {
    check_name("server name", &req.name)?;
    let ttl = req
        .admission_ttl_secs
        .unwrap_or(st.settings.default_admission_ttl.as_secs());
    check_ttl(ttl)?;
    let max = req
        .max_admissions_per_user
        .unwrap_or(store::DEFAULT_MAX_ADMISSIONS_PER_USER);
    check_max_admissions(max)?;
    let token_ttl = enrollment_ttl(st, req.enrollment_ttl_secs)?;
    check_binding(req.binding)?;
    let name = req.name.clone();
    let limits = st.settings.limits;
    let issued = st
        .db
        .tx(move |tx| {
            // The operator's own servers are not counted.
            if let Some(owner) = owner {
                store::lock_user(tx, owner)?;
                crate::limits::check(
                    "servers-per-owner",
                    limits.servers_per_owner,
                    store::count_owned_servers(tx, owner)?,
                    "the servers you registered",
                    "remove one you no longer use first (hushgate servers remove NAME)",
                )?;
            }
            let server = store::create_server(tx, &name, req.binding, ttl, max, now())?;
            store::set_server_owner(tx, server.id, owner)?;
            store::audit(
                tx,
                now(),
                Audit {
                    event: "server_created",
                    server: Some(&name),
                    detail: format!(
                        "binding {}, admission ttl {ttl} s, at most {max} admissions per user, by {by}",
                        req.binding
                    ),
                    ..Default::default()
                },
            )?;
            Ok(issue_enrollment_token(tx, &server, token_ttl, &by, limits)?.0)
        })
        .await?;
    tracing::info!(server = %req.name, "server created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedServer {
            name: req.name,
            enrollment_token: issued.token,
            enrollment_token_id: issued.id,
            enrollment_expires_at: Some(issued.expires_at),
        }),
    ))
}

fn check_binding(binding: BindingPolicy) -> ApiResult<()> {
    if let BindingPolicy::Prefix { v4, v6 } = binding {
        // A very short prefix admits most of the Internet: the source
        // check would mean nothing and admission would be key-only. Each
        // family has its own length and minimum; reading the JSON checked
        // them already, this keeps any other path from storing one.
        BindingPolicy::prefix(v4, v6).map_err(|e| AppError::bad_request(e.to_string()))?;
    }
    Ok(())
}

async fn update_server(
    State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ServerPolicy>, JsonRejection>,
) -> ApiResult<Json<ServerInfo>> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path(name) = name?;
    let Json(req) = body?;
    change_server(&st, Scope::Operator, by, name, req).await
}

/// Changes a server's name and policy; everything is checked before
/// anything changes.
pub(crate) async fn change_server(
    st: &AppState,
    scope: Scope,
    by: String,
    name: String,
    req: ServerPolicy,
) -> ApiResult<Json<ServerInfo>> {
    if req.name.is_none()
        && req.binding.is_none()
        && req.admission_ttl_secs.is_none()
        && req.max_admissions_per_user.is_none()
        && req.direct_mode.is_none()
        && req.require_2fa.is_none()
        && req.approve_devices.is_none()
    {
        return Err(AppError::bad_request(
            "say what to change: name, binding, admission_ttl_secs, max_admissions_per_user, direct_mode, require_2fa and/or approve_devices",
        ));
    }
    if let Some(n) = &req.name {
        check_name("server name", n)?;
    }
    if let Some(t) = req.admission_ttl_secs {
        check_ttl(t)?;
    }
    if let Some(m) = req.max_admissions_per_user {
        check_max_admissions(m)?;
    }
    if let Some(b) = req.binding {
        check_binding(b)?;
    }
    let server = st
        .db
        .tx(move |tx| {
            let server = scope.server(tx, &name)?;
            if req.approve_devices == Some(true) && server.owner_id.is_none() {
                return Err(store::StoreError::Invalid(format!(
                    "server '{name}' has no owner to approve devices; only a server an account registered can ask for device approval"
                )));
            }
            store::update_server_settings(
                tx,
                server.id,
                req.admission_ttl_secs,
                req.max_admissions_per_user,
            )?;
            store::update_server_policy(
                tx,
                server.id,
                &store::PolicyChange {
                    binding: req.binding,
                    direct_mode: req.direct_mode,
                    require_2fa: req.require_2fa,
                    approve_devices: req.approve_devices,
                },
            )?;
            let mut changes = Vec::new();
            if let Some(b) = req.binding {
                changes.push(format!("binding {b} (for new admissions)"));
            }
            if let Some(t) = req.admission_ttl_secs {
                changes.push(format!("admission ttl {t} s"));
            }
            if let Some(m) = req.max_admissions_per_user {
                changes.push(format!("at most {m} admissions per user"));
            }
            if let Some(d) = req.direct_mode {
                changes.push(format!("direct mode {}", on_off(d)));
            }
            if let Some(d) = req.require_2fa {
                changes.push(format!("two-factor required {}", on_off(d)));
            }
            if let Some(d) = req.approve_devices {
                changes.push(format!("device approval {}", on_off(d)));
            }
            if let Some(new) = req.name.as_deref().filter(|n| *n != name) {
                store::rename_server(tx, server.id, new)?;
                changes.push(format!("renamed from '{name}' to '{new}'"));
            }
            // Direct admissions end when the owner turns direct mode off.
            if req.direct_mode == Some(false) {
                for a in store::server_admissions(tx, server.id)? {
                    if a.mode == AccessMode::Direct {
                        end_admission(tx, &a, format!("direct mode turned off by {by}"))?;
                    }
                }
            }
            let server = store::server_by_id(tx, server.id)?;
            store::audit(
                tx,
                now(),
                Audit {
                    event: "server_changed",
                    server: Some(&server.name),
                    detail: format!("{}, by {by}", changes.join(", ")),
                    ..Default::default()
                },
            )?;
            Ok(server)
        })
        .await?;
    tracing::info!(server = %server.name, "server changed");
    let owner = owner_name(st, server.owner_id).await?;
    Ok(Json(server_info(st, server, None, Instant::now(), owner)))
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

async fn owner_name(st: &AppState, owner: Option<i64>) -> ApiResult<Option<String>> {
    let Some(id) = owner else {
        return Ok(None);
    };
    Ok(st.db.tx(move |tx| store::username_of(tx, id)).await?)
}

async fn remove_server(
    State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RemovedServer>> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path(name) = name?;
    drop_server(&st, Scope::Operator, by, name).await
}

/// Ends a server's admissions like any revocation, so the gateway drops
/// them while its credential still works; then removes the server.
pub(crate) async fn drop_server(
    st: &AppState,
    scope: Scope,
    by: String,
    name: String,
) -> ApiResult<Json<RemovedServer>> {
    let n = name.clone();
    let who = by.clone();
    let (server, ended, version) = st
        .db
        .tx(move |tx| {
            let server = scope.server(tx, &n)?;
            let adms = store::server_admissions(tx, server.id)?;
            let mut version = None;
            for a in &adms {
                if let Some(v) = end_admission(tx, a, format!("server removed by {who}"))? {
                    version = Some(v);
                }
            }
            Ok((server, adms.len(), version))
        })
        .await?;
    let mut confirmed = true;
    if let Some(v) = version {
        let live = st.live_feeds.server(server.id, v);
        confirmed = gateway_presence(st, server.id, &live).await?.0
            && live.wait_ack(v, st.settings.ack_timeout).await;
    }
    let id = server.id;
    let n = name.clone();
    st.db
        .tx(move |tx| {
            // The line first: it finds its owner through the server.
            store::audit(
                tx,
                now(),
                Audit {
                    event: "server_removed",
                    server: Some(&n),
                    detail: format!(
                        "{ended} admissions ended{}, by {by}",
                        if confirmed {
                            ""
                        } else {
                            " (the gateway did not confirm; it keeps them at most until they expire)"
                        }
                    ),
                    ..Default::default()
                },
            )?;
            store::delete_server(tx, id)
        })
        .await?;
    tracing::info!(server = %name, admissions_ended = ended, gateway_confirmed = confirmed, "server removed");
    Ok(Json(RemovedServer {
        name,
        admissions_ended: ended,
        gateway_confirmed: confirmed,
    }))
}

/// A new enrollment token for an existing server: for a gateway that lost
/// its state, a credential to rotate, or a first token that expired.
async fn create_enrollment_token(
    State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<NewEnrollmentToken>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<IssuedEnrollmentToken>)> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path(name) = name?;
    let Json(req) = body?;
    new_enrollment_token(&st, Scope::Operator, by, name, req).await
}

pub(crate) async fn new_enrollment_token(
    st: &AppState,
    scope: Scope,
    by: String,
    name: String,
    req: NewEnrollmentToken,
) -> ApiResult<(StatusCode, Json<IssuedEnrollmentToken>)> {
    let ttl = enrollment_ttl(st, req.ttl_secs)?;
    let limits = st.settings.limits;
    let (issued, revoked) = st
        .db
        .tx(move |tx| {
            let server = scope.server(tx, &name)?;
            let revoked = req.revoke_credential && store::revoke_credential(tx, server.id)?;
            if revoked {
                credential_revoked_audit(tx, &server.name, &by)?;
            }
            let (issued, _) = issue_enrollment_token(tx, &server, ttl, &by, limits)?;
            Ok((issued, revoked))
        })
        .await?;
    tracing::info!(server = %issued.server, token = %issued.id, credential_revoked = revoked, "enrollment token created");
    Ok((StatusCode::CREATED, Json(issued)))
}

fn credential_revoked_audit(tx: &mut Tx, server: &str, by: &str) -> store::Result<()> {
    store::audit(
        tx,
        now(),
        Audit {
            event: "credential_revoked",
            server: Some(server),
            detail: format!("the gateway credential no longer works, by {by}"),
            ..Default::default()
        },
    )
}

async fn revoke_credential(
    State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path(name) = name?;
    revoke_gateway_credential(&st, Scope::Operator, by, name).await
}

pub(crate) async fn revoke_gateway_credential(
    st: &AppState,
    scope: Scope,
    by: String,
    name: String,
) -> ApiResult<StatusCode> {
    let server = st
        .db
        .tx(move |tx| {
            let server = scope.server(tx, &name)?;
            if !store::revoke_credential(tx, server.id)? {
                return Err(store::StoreError::NotFound(format!(
                    "server '{name}' has no gateway credential to revoke (no gateway is enrolled)"
                )));
            }
            credential_revoked_audit(tx, &server.name, &by)?;
            Ok(server)
        })
        .await?;
    tracing::info!(server = %server.name, "gateway credential revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_enrollment_tokens(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<EnrollmentTokenInfo>>> {
    admin(&st, &headers).await?;
    let tokens = st
        .db
        .tx(|tx| store::list_enrollment_tokens(tx, now()))
        .await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| EnrollmentTokenInfo {
                id: t.id,
                server: t.server,
                created_at: t.created_at,
                expires_at: t.expires_at,
            })
            .collect(),
    ))
}

async fn revoke_enrollment_token(
    State(st): Shared,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path(id) = id?;
    let token = id.clone();
    st.db
        .tx(move |tx| {
            let Some(server) = store::delete_enrollment_token(tx, &token)? else {
                return Err(store::StoreError::NotFound(format!(
                    "no enrollment token '{token}'; it may have been used or have expired"
                )));
            };
            store::audit(
                tx,
                now(),
                Audit {
                    event: "enrollment_token_revoked",
                    server: Some(&server),
                    detail: format!("token {token}, by {by}"),
                    ..Default::default()
                },
            )
        })
        .await?;
    tracing::info!(token = %id, "enrollment token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// A server as the admin API shows it. `presence` is what the database
/// knows of its gateway (shared databases only: another replica may hold
/// its feed).
pub(crate) fn server_info(
    st: &AppState,
    s: store::Server,
    presence: Option<store::Presence>,
    at: Instant,
    owner: Option<String>,
) -> ServerInfo {
    let live = st.live_feeds.get(s.id);
    let reachability = crate::reachability::view(&s);
    let here = (
        live.as_ref().is_some_and(|l| l.connected(at)),
        live.as_ref().and_then(|l| l.last_seen()),
        live.as_ref().map(|l| *l.acked.borrow()).unwrap_or(0),
    );
    let (connected, last_seen, acked) = match (&presence, &live) {
        (Some(p), Some(l)) => {
            let (c, seen) = presence_verdict(p, l);
            (c, seen, here.2.max(p.acked_version))
        }
        (Some(p), None) => {
            let grace = crate::live_feeds::CONNECTED_GRACE.as_millis() as i64;
            let now_ms = store::millis(now());
            (
                p.held_until.is_some_and(|h| h > now_ms)
                    || p.last_seen.is_some_and(|l| now_ms - l < grace),
                p.last_seen.map(store::from_millis),
                p.acked_version,
            )
        }
        (None, _) => here,
    };
    ServerInfo {
        gateway_connected: connected,
        gateway_last_seen: last_seen,
        acked_version: acked,
        name: s.name,
        binding: s.binding,
        admission_ttl_secs: s.ttl_secs,
        enrolled: s.enrolled,
        gateway_public_key: s.gateway_key,
        gateway_endpoint: s.endpoint,
        services: s.services,
        feed_version: s.version,
        max_admissions_per_user: s.max_admissions_per_user,
        port_mapping: s.network.as_ref().map(|n| n.report.port_mapping.clone()),
        reachability,
        owner,
        direct_mode: s.direct_mode,
        require_2fa: s.require_2fa,
        approve_devices: s.approve_devices,
    }
}

/// `POST /v1/admin/servers/{name}/check`: checks the gateway's endpoint
/// now (a WireGuard handshake from the control plane through the real
/// path) and answers with the result and its diagnosis.
async fn check_server(
    State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<proto::reach::ReachabilityView>> {
    admin(&st, &headers).await?;
    let Path(name) = name?;
    let n = name.clone();
    let server = st.db.tx(move |tx| store::server_named(tx, &n)).await?;
    if crate::reachability::check(&st, server.id).await?.is_none() {
        return Err(AppError::unavailable(
            "gateway_offline",
            format!("server '{name}' has no gateway with an endpoint yet; start its gateway first"),
        ));
    }
    let id = server.id;
    let server = st.db.tx(move |tx| store::server_by_id(tx, id)).await?;
    Ok(Json(crate::reachability::view(&server)))
}

async fn list_servers(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<Vec<ServerInfo>>> {
    admin(&st, &headers).await?;
    servers_info(&st, Scope::Operator).await
}

/// The servers of a scope as the API shows them.
pub(crate) async fn servers_info(st: &AppState, scope: Scope) -> ApiResult<Json<Vec<ServerInfo>>> {
    let shared = st.db.shared();
    let servers = st
        .db
        .tx(move |tx| {
            let list = match scope {
                Scope::Operator => store::list_servers(tx)?,
                Scope::Owner(id) => store::servers_of_owner(tx, id)?,
            };
            let mut out = Vec::new();
            for s in list {
                let p = if shared {
                    Some(store::presence(tx, s.id)?)
                } else {
                    None
                };
                let owner = match s.owner_id {
                    Some(id) => store::username_of(tx, id)?,
                    None => None,
                };
                out.push((s, p, owner));
            }
            Ok(out)
        })
        .await?;
    let at = Instant::now();
    Ok(Json(
        servers
            .into_iter()
            .map(|(s, p, o)| server_info(st, s, p, at, o))
            .collect(),
    ))
}

async fn create_grant(
    State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<CreateGrant>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<GrantInfo>)> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Json(req) = body?;
    let r = req.clone();
    let limits = st.settings.limits;
    let warnings = st
        .db
        .tx(move |tx| {
            let user = store::user_by_name(tx, &r.username)?.ok_or_else(|| {
                store::StoreError::NotFound(format!("no user named '{}'", r.username))
            })?;
            let server = store::server_by_name(tx, &r.server)?.ok_or_else(|| {
                store::StoreError::NotFound(format!("no server named '{}'", r.server))
            })?;
            share(
                tx,
                &user,
                &server,
                r.services.as_deref(),
                r.direct,
                &by,
                limits,
            )
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GrantInfo {
            username: req.username,
            server: req.server,
            services: req.services,
            direct: req.direct,
            warnings,
        }),
    ))
}

/// Shares `server` with `user` (creates or changes the grant), in the
/// caller's transaction: a narrowed share ends the admissions it no
/// longer covers. Returns warnings for the caller.
pub(crate) fn share(
    tx: &mut Tx,
    user: &store::User,
    server: &store::Server,
    services: Option<&[String]>,
    direct: bool,
    by: &str,
    limits: crate::limits::Limits,
) -> store::Result<Vec<String>> {
    let warnings = check_granted_services(server, services)?;
    if store::grant_for(tx, user.id, server.id)?.is_none() {
        store::lock_server(tx, server.id)?;
        crate::limits::check(
            "shares-per-server",
            limits.shares_per_server,
            store::count_grants(tx, server.id)?,
            &format!("the shares of server '{}'", server.name),
            "remove a share first",
        )?;
    }
    store::upsert_grant(tx, user.id, server.id, services, direct)?;
    let grant = store::grant_for(tx, user.id, server.id)?
        .ok_or_else(|| store::StoreError::NotFound("grant vanished".into()))?;
    for a in store::user_server_admissions(tx, user.id, Some(server.id))? {
        if !grant_covers(&grant, &a) {
            end_admission(tx, &a, format!("grant narrowed by {by}"))?;
        }
    }
    store::audit(
        tx,
        now(),
        Audit {
            event: "grant_created",
            username: Some(&user.username),
            server: Some(&server.name),
            detail: format!(
                "services {}, direct {direct}, by {by}",
                services
                    .map(|s| s.join(","))
                    .unwrap_or_else(|| "all".into()),
            ),
            ..Default::default()
        },
    )?;
    Ok(warnings)
}

/// Ends a share: its admissions end (and reach the gateway) in the same
/// transaction. `Ok(false)` when there was none.
pub(crate) fn unshare(
    tx: &mut Tx,
    user: &store::User,
    server: &store::Server,
    by: &str,
) -> store::Result<bool> {
    if !store::delete_grant(tx, user.id, server.id)? {
        return Ok(false);
    }
    for a in store::user_server_admissions(tx, user.id, Some(server.id))? {
        end_admission(tx, &a, format!("grant removed by {by}"))?;
    }
    store::audit(
        tx,
        now(),
        Audit {
            event: "grant_removed",
            username: Some(&user.username),
            server: Some(&server.name),
            detail: format!("by {by}"),
            ..Default::default()
        },
    )?;
    Ok(true)
}

/// Refuses a grant naming a service the server's gateway does not offer
/// (it would fail later, at access time, far from its cause). A gateway
/// that has not reported yet cannot be checked: that is a warning.
pub(crate) fn check_granted_services(
    server: &store::Server,
    services: Option<&[String]>,
) -> store::Result<Vec<String>> {
    let Some(services) = services else {
        return Ok(Vec::new());
    };
    if server.gateway_key.is_none() {
        return Ok(vec![format!(
            "the gateway of server '{}' has not reported its services yet, so '{}' could not be checked; the grant gives nothing until the gateway offers a service by that name",
            server.name,
            services.join("', '")
        )]);
    }
    let offered: Vec<&str> = server
        .services
        .iter()
        .chain(&server.direct_services)
        .map(|s| s.name.as_str())
        .collect();
    let unknown: Vec<&str> = services
        .iter()
        .map(String::as_str)
        .filter(|s| !offered.contains(s))
        .collect();
    if !unknown.is_empty() {
        return Err(store::StoreError::Invalid(format!(
            "the gateway of server '{}' offers no service named '{}' (it offers: {}); grant one of those, or add the service to the gateway (--service NAME=...) first",
            server.name,
            unknown.join("', '"),
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(", ")
            }
        )));
    }
    Ok(Vec::new())
}

async fn list_grants(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<Vec<GrantInfo>>> {
    admin(&st, &headers).await?;
    let grants = st.db.tx(store::list_grants).await?;
    Ok(Json(
        grants
            .into_iter()
            .map(|g| GrantInfo {
                username: g.username,
                server: g.server,
                services: g.services,
                direct: g.direct,
                warnings: Vec::new(),
            })
            .collect(),
    ))
}

async fn delete_grant(
    State(st): Shared,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let by = admin(&st, &headers).await?.name().to_string();
    let Path((user, server)) = p?;
    st.db
        .tx(move |tx| {
            let u = store::user_by_name(tx, &user)?;
            let s = store::server_by_name(tx, &server)?;
            let gone = match (u, s) {
                (Some(u), Some(s)) => unshare(tx, &u, &s, &by)?,
                _ => false,
            };
            if !gone {
                return Err(store::StoreError::NotFound(format!(
                    "no grant for user '{user}' on server '{server}'"
                )));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_admissions(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<AdmissionInfo>>> {
    admin(&st, &headers).await?;
    let adms = st.db.tx(store::list_admissions).await?;
    Ok(Json(admission_infos(adms)))
}

/// Admissions as the API shows them.
pub(crate) fn admission_infos(adms: Vec<store::Admission>) -> Vec<AdmissionInfo> {
    adms.into_iter()
        .map(|a| AdmissionInfo {
            client_address: a.client_address().map(IpAddr::V4),
            id: a.id,
            username: a.username,
            server: a.server,
            mode: a.mode,
            client_public_key: a.client_key,
            source: a.source,
            binding: a.binding,
            services: a.services,
            state: if a.active { "active" } else { "pending" }.into(),
            created_at: a.created_at,
            expires_at: a.expires_at,
        })
        .collect()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    pub(crate) limit: Option<u32>,
}

async fn audit_log(
    State(st): Shared,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    admin(&st, &headers).await?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(
        st.db.tx(move |tx| store::list_audit(tx, limit)).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(service: &str) -> GatewayReport {
        GatewayReport {
            public_key: proto::WgKey([7; 32]),
            public_endpoint: None,
            listen_port: 51820,
            services: vec![proto::api::ServiceInfo {
                name: service.into(),
                port: 32400,
            }],
            direct_services: Vec::new(),
            network: None,
        }
    }

    /// A service name reaches clients' WireGuard configurations as part
    /// of a comment line: a gateway (or whoever holds its credential)
    /// must not be able to add a line of its own (`PostUp = ...` runs on
    /// the client).
    #[test]
    fn a_gateway_cannot_report_a_service_name_that_breaks_a_line() {
        assert!(check_report(&mut report("plex")).is_ok());
        for bad in ["x\nPostUp = sh", "x\rPostUp", "a b", "", "é"] {
            let e = check_report(&mut report(bad)).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
