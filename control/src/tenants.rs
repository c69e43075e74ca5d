//! The self-service API (see docs/api.md): accounts sign up (with an
//! invitation unless sign-up is open), register and run their own
//! servers, share them by name or by invitation link, approve their
//! friends' devices, and turn on two-factor sign-in.
//!
//! Tenancy is enforced in one place per kind of thing: every server an
//! owner names is looked up through [`Scope::Owner`] (the store's
//! `owned_server`), every device through the account's id. Something of
//! another tenant is therefore not found, with the same answer as a name
//! nobody uses; the isolation tests in control/tests/tenants.rs call
//! every route of [`crate::app::routes`] as a second owner and as a plain
//! user to keep it so.

use crate::app::{
    admission_infos, change_server, check_granted_services, check_name, check_password,
    drop_server, end_admission, new_enrollment_token, now, principal, register_server,
    revoke_gateway_credential, rfc3339, server_info, servers_info, share, unshare, ApiResult,
    AuditQuery, CreateServerBody, Principal, Scope, Shared,
};
use crate::auth::{self, SecretKind};
use crate::error::AppError;
use crate::store::{self, Audit, AuditScope, SignupMode};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use proto::api::*;
use std::time::{Duration, Instant};

/// Responses that carry a secret are never cached.
type NoStore<T> = ([(header::HeaderName, &'static str); 1], T);

fn no_store<T>(body: T) -> NoStore<T> {
    ([(header::CACHE_CONTROL, "no-store")], body)
}

/// The signed-in account (the admin token has none).
pub(crate) async fn account(
    st: &crate::app::AppState,
    headers: &HeaderMap,
) -> ApiResult<(store::User, store::Session)> {
    match principal(st, headers).await? {
        Principal::User(u, s) => Ok((u, s)),
        Principal::Admin => Err(AppError::forbidden(
            "not_a_user",
            "the admin token belongs to no account; log in as a user for this",
        )),
    }
}

/// Runs `f` in one transaction on the caller's own server `name` (any
/// other is "not found"): the shape of every owner's read.
async fn on_owned_server<T, F>(
    st: &crate::app::AppState,
    headers: &HeaderMap,
    name: Result<Path<String>, PathRejection>,
    mut f: F,
) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnMut(&mut store::Tx, &store::Server) -> store::Result<T> + Send + 'static,
{
    let (owner, _) = account(st, headers).await?;
    let Path(name) = name?;
    Ok(st
        .db
        .tx(move |tx| {
            let s = store::owned_server(tx, owner.id, &name)?;
            f(tx, &s)
        })
        .await?)
}

async fn operator(st: &crate::app::AppState, headers: &HeaderMap) -> ApiResult<String> {
    Ok(crate::app::admin(st, headers).await?.name().to_string())
}

fn audit_line(
    tx: &mut store::Tx,
    event: &str,
    username: Option<&str>,
    server: Option<&str>,
    detail: String,
) -> store::Result<()> {
    store::audit(
        tx,
        now(),
        Audit {
            event,
            username,
            server,
            detail,
            ..Default::default()
        },
    )
}

fn grant_info(g: store::Grant) -> GrantInfo {
    GrantInfo {
        username: g.username,
        server: g.server,
        services: g.services,
        direct: g.direct,
        warnings: Vec::new(),
    }
}

fn invitation_refused(code: &'static str) -> AppError {
    let message = match code {
        "signup_closed" => "sign-up is closed on this control plane: ask its operator for an account",
        "invitation_required" => "sign-up needs an invitation link: ask the owner of the server you want to use for one",
        "not_a_share" => "this invitation is for creating an account, not for a server; use it when you sign up",
        _ => "this invitation link is not valid: it expired, was used up or revoked; ask for a new one",
    };
    AppError::forbidden(code, message)
}

// ---------- sign-up and invitations ----------

/// Whether a sign-up may go ahead: the operator's setting and the
/// invitation (if any), before anything is hashed or changed.
fn signup_gate(
    tx: &mut store::Tx,
    inv_hash: Option<&[u8]>,
) -> store::Result<Result<Option<store::Invitation>, &'static str>> {
    let mode = store::signup_mode(tx)?;
    let inv = match inv_hash {
        Some(h) => match store::invitation_by_hash(tx, h, now())? {
            Some(i) => Some(i),
            None => return Ok(Err("invitation_invalid")),
        },
        None => None,
    };
    Ok(match (mode, &inv) {
        (SignupMode::Closed, None) => Err("signup_closed"),
        (SignupMode::Closed, Some(i)) if i.server_id.is_some() => Err("signup_closed"),
        (SignupMode::InviteOnly, None) => Err("invitation_required"),
        _ => Ok(inv),
    })
}

pub(crate) async fn signup(
    axum::extract::State(st): Shared,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<SignupRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<UserInfo>)> {
    let Json(req) = body?;
    check_name("user name", &req.username)?;
    check_password(&req.password)?;
    let inv_hash = req.invitation.as_deref().map(auth::hash_secret);
    // Refused sign-ups cost nothing: the setting and the link are checked
    // before any argon2 run, and each sign-up takes one attempt of the
    // address's login budget (a stranger cannot keep the hashing threads
    // busy for everyone's logins).
    let h = inv_hash;
    st.db
        .tx(move |tx| signup_gate(tx, h.as_ref().map(|h| &h[..])))
        .await?
        .map_err(invitation_refused)?;
    let source = crate::app::observed_source(&st, peer, &headers)?;
    crate::device_code::take_attempt(&st, source, &req.username, "sign-up").await?;
    // The same bound as logins: a burst of sign-ups must not exhaust
    // memory with argon2 runs.
    let pw_hash = crate::app::hash_new_password(&st, req.password.clone()).await?;
    let username = req.username.clone();
    let limits = st.settings.limits;
    let outcome = st
        .db
        .tx(move |tx| {
            let inv = match signup_gate(tx, inv_hash.as_ref().map(|h| &h[..]))? {
                Ok(inv) => inv,
                Err(code) => return Ok(Err(code)),
            };
            if let Some(i) = &inv {
                if !store::use_invitation(tx, &i.id)? {
                    return Ok(Err("invitation_invalid"));
                }
            }
            let user = store::create_user(tx, &username, &pw_hash, false, now())?;
            let how = match &inv {
                Some(i) => format!("with invitation {}", i.id),
                None => "open sign-up".to_string(),
            };
            audit_line(tx, "signup", Some(&user.username), None, how)?;
            if let Some(i) = &inv {
                take_share(tx, &user, i, limits)?;
            }
            Ok(Ok(user))
        })
        .await?;
    let user = outcome.map_err(invitation_refused)?;
    tracing::info!(user = %user.username, "account signed up");
    Ok((
        StatusCode::CREATED,
        Json(UserInfo {
            username: user.username,
            admin: false,
            created_at: user.created_at,
        }),
    ))
}

/// The share an invitation to a server gives, in the caller's
/// transaction (its owner taking their own link gains nothing).
fn take_share(
    tx: &mut store::Tx,
    user: &store::User,
    inv: &store::Invitation,
    limits: crate::limits::Limits,
) -> store::Result<Option<store::Grant>> {
    let Some(sid) = inv.server_id else {
        return Ok(None);
    };
    let server = store::server_by_id(tx, sid)?;
    audit_line(
        tx,
        "invitation_used",
        Some(&user.username),
        Some(&server.name),
        format!("invitation {}", inv.id),
    )?;
    if server.owner_id == Some(user.id) {
        return Ok(None);
    }
    share(
        tx,
        user,
        &server,
        inv.services.as_deref(),
        inv.direct,
        &format!("invitation {}", inv.id),
        limits,
    )?;
    store::grant_for(tx, user.id, sid)
}

pub(crate) async fn accept_invitation(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<AcceptInvitation>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<GrantInfo>)> {
    let (user, _) = account(&st, &headers).await?;
    let Json(req) = body?;
    let hash = auth::hash_secret(&req.invitation);
    let limits = st.settings.limits;
    let outcome = st
        .db
        .tx(move |tx| {
            let Some(inv) = store::invitation_by_hash(tx, &hash, now())? else {
                return Ok(Err("invitation_invalid"));
            };
            if inv.server_id.is_none() {
                return Ok(Err("not_a_share"));
            }
            if !store::use_invitation(tx, &inv.id)? {
                return Ok(Err("invitation_invalid"));
            }
            Ok(Ok(take_share(tx, &user, &inv, limits)?))
        })
        .await?;
    match outcome.map_err(invitation_refused)? {
        Some(g) => Ok((StatusCode::CREATED, Json(grant_info(g)))),
        None => Err(AppError::bad_request(
            "this is an invitation to your own server; send it to the person you want to share it with",
        )),
    }
}

// ---------- my account ----------

pub(crate) async fn me(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<AccountInfo>> {
    let (user, session) = account(&st, &headers).await?;
    let uid = user.id;
    let (owns, left) = st
        .db
        .tx(move |tx| {
            Ok((
                store::owned_server_names(tx, uid)?,
                store::recovery_codes_left(tx, uid)?,
            ))
        })
        .await?;
    Ok(Json(AccountInfo {
        username: user.username,
        operator: user.admin,
        owns,
        totp: user.totp,
        recovery_codes_left: left,
        session_mfa: session.mfa,
    }))
}

pub(crate) async fn my_shares(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<GrantInfo>>> {
    let (user, _) = account(&st, &headers).await?;
    let grants = st.db.tx(move |tx| store::user_grants(tx, user.id)).await?;
    Ok(Json(grants.into_iter().map(grant_info).collect()))
}

pub(crate) async fn my_admissions(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<AdmissionInfo>>> {
    let (user, _) = account(&st, &headers).await?;
    let adms = st
        .db
        .tx(move |tx| store::user_server_admissions(tx, user.id, None))
        .await?;
    Ok(Json(admission_infos(adms)))
}

fn audit_limit(q: Result<Query<AuditQuery>, QueryRejection>) -> ApiResult<u32> {
    let Query(q) = q?;
    Ok(q.limit.unwrap_or(100).min(10_000))
}

pub(crate) async fn my_audit(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let (user, _) = account(&st, &headers).await?;
    let limit = audit_limit(q)?;
    Ok(Json(
        st.db
            .tx(move |tx| store::audit_where(tx, AuditScope::User(user.id), limit))
            .await?,
    ))
}

fn device_info(d: store::Device) -> DeviceInfo {
    DeviceInfo {
        id: d.id,
        name: d.name,
        created_at: d.created_at,
        last_used: d.last_used,
    }
}

fn no_device(id: &str) -> store::StoreError {
    store::StoreError::NotFound(format!("no device '{id}'"))
}

pub(crate) async fn my_devices(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<DeviceInfo>>> {
    let (user, _) = account(&st, &headers).await?;
    let devices = st.db.tx(move |tx| store::user_devices(tx, user.id)).await?;
    Ok(Json(devices.into_iter().map(device_info).collect()))
}

pub(crate) async fn rename_device(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<RenameDevice>, JsonRejection>,
) -> ApiResult<Json<DeviceInfo>> {
    let (user, _) = account(&st, &headers).await?;
    let Path(id) = id?;
    let Json(req) = body?;
    crate::app::check_device_name(&req.name)?;
    let d = st
        .db
        .tx(move |tx| {
            let d = store::user_device(tx, user.id, &id)?.ok_or_else(|| no_device(&id))?;
            store::rename_device(tx, &d.id, &req.name)?;
            audit_line(
                tx,
                "device_renamed",
                Some(&user.username),
                None,
                format!("device {} from '{}' to '{}'", d.id, d.name, req.name),
            )?;
            store::user_device(tx, user.id, &id)?.ok_or_else(|| no_device(&id))
        })
        .await?;
    Ok(Json(device_info(d)))
}

/// Removes a device: its logins end, its admissions end (and reach the
/// gateways) in the same transaction.
pub(crate) async fn remove_device(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (user, _) = account(&st, &headers).await?;
    let Path(id) = id?;
    st.db
        .tx(move |tx| {
            let d = store::user_device(tx, user.id, &id)?.ok_or_else(|| no_device(&id))?;
            if let Some(h) = store::device_credential_hash(tx, user.id, &d.id)? {
                store::remember_removed_device(tx, user.id, &h)?;
            }
            for a in store::device_admissions(tx, &d.id)? {
                end_admission(
                    tx,
                    &a,
                    format!("device {} removed by {}", d.id, user.username),
                )?;
            }
            store::delete_device(tx, &d.id)?;
            audit_line(
                tx,
                "device_removed",
                Some(&user.username),
                None,
                format!("device {} ('{}')", d.id, d.name),
            )
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- two-factor sign-in ----------

fn unix_secs(st: &crate::app::AppState) -> i64 {
    st.settings.clock.now_millis() / 1000
}

pub(crate) async fn totp_begin(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<NoStore<Json<TotpEnrollment>>> {
    let (user, _) = account(&st, &headers).await?;
    if user.totp {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "conflict",
            "two-factor sign-in is on already; turn it off first (with a current code) to enrol a new authenticator",
        ));
    }
    let secret = crate::totp::new_secret();
    let (b32, uri, svg) =
        crate::totp::enrolment(&secret, &user.username).map_err(AppError::bad_request)?;
    st.db
        .tx(move |tx| store::set_totp_pending(tx, user.id, &secret))
        .await?;
    Ok(no_store(Json(TotpEnrollment {
        secret: b32,
        otpauth_uri: uri,
        qr_svg: svg,
    })))
}

pub(crate) async fn totp_confirm(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<TotpCode>, JsonRejection>,
) -> ApiResult<NoStore<Json<RecoveryCodes>>> {
    let (user, _) = account(&st, &headers).await?;
    let Json(req) = body?;
    let t = unix_secs(&st);
    let (codes, hashes) = crate::totp::new_recovery_codes();
    let name = user.username.clone();
    let confirmed = st
        .db
        .tx(move |tx| {
            let Some(pending) = store::totp_state(tx, user.id)?.pending else {
                return Ok(Err("start the enrolment first (POST /v1/me/totp)"));
            };
            let Some(step) = crate::totp::matching_step(&pending, &req.code, t.max(0) as u64)
            else {
                return Ok(Err("the code does not match the new secret; check the authenticator app's time and try the next code (nothing was changed)"));
            };
            store::confirm_totp(tx, user.id, step, &hashes)?;
            audit_line(
                tx,
                "totp_enabled",
                Some(&user.username),
                None,
                format!("{} recovery codes issued", hashes.len()),
            )?;
            Ok(Ok(()))
        })
        .await?;
    confirmed.map_err(AppError::bad_request)?;
    tracing::info!(user = %name, "two-factor sign-in enabled");
    Ok(no_store(Json(RecoveryCodes { codes })))
}

pub(crate) async fn totp_disable(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<TotpCode>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let (user, _) = account(&st, &headers).await?;
    let Json(req) = body?;
    if !user.totp {
        return Err(AppError::bad_request("two-factor sign-in is not on"));
    }
    let t = unix_secs(&st);
    let done = st
        .db
        .tx(move |tx| {
            if !crate::totp::check_second_factor(tx, user.id, &req.code, t)? {
                return Ok(false);
            }
            store::disable_totp(tx, user.id)?;
            audit_line(
                tx,
                "totp_disabled",
                Some(&user.username),
                None,
                String::new(),
            )?;
            Ok(true)
        })
        .await?;
    if !done {
        return Err(AppError::forbidden(
            "totp_wrong",
            "the code is wrong or was used already; two-factor sign-in stays on",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------- an owner's servers ----------

pub(crate) async fn create_server(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<CreateServerBody>, JsonRejection>,
) -> ApiResult<NoStore<(StatusCode, Json<CreatedServer>)>> {
    let (user, _) = account(&st, &headers).await?;
    let Json(req) = body?;
    Ok(no_store(
        register_server(&st, Some(user.id), user.username, req).await?,
    ))
}

pub(crate) async fn list_servers(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<ServerInfo>>> {
    let (user, _) = account(&st, &headers).await?;
    servers_info(&st, Scope::Owner(user.id)).await
}

pub(crate) async fn show_server(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ServerInfo>> {
    let (user, _) = account(&st, &headers).await?;
    let Path(name) = name?;
    let shared = st.db.shared();
    let (server, presence) = st
        .db
        .tx(move |tx| {
            let s = store::owned_server(tx, user.id, &name)?;
            let p = if shared {
                Some(store::presence(tx, s.id)?)
            } else {
                None
            };
            Ok((s, p))
        })
        .await?;
    Ok(Json(server_info(
        &st,
        server,
        presence,
        Instant::now(),
        Some(user.username),
    )))
}

pub(crate) async fn update_server(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ServerPolicy>, JsonRejection>,
) -> ApiResult<Json<ServerInfo>> {
    let (user, _) = account(&st, &headers).await?;
    let Path(name) = name?;
    let Json(req) = body?;
    change_server(&st, Scope::Owner(user.id), user.username, name, req).await
}

pub(crate) async fn remove_server(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RemovedServer>> {
    let (user, _) = account(&st, &headers).await?;
    let Path(name) = name?;
    drop_server(&st, Scope::Owner(user.id), user.username, name).await
}

pub(crate) async fn create_enrollment_token(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<NewEnrollmentToken>, JsonRejection>,
) -> ApiResult<NoStore<(StatusCode, Json<IssuedEnrollmentToken>)>> {
    let (user, _) = account(&st, &headers).await?;
    let Path(name) = name?;
    let Json(req) = body?;
    Ok(no_store(
        new_enrollment_token(&st, Scope::Owner(user.id), user.username, name, req).await?,
    ))
}

pub(crate) async fn revoke_credential(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (user, _) = account(&st, &headers).await?;
    let Path(name) = name?;
    revoke_gateway_credential(&st, Scope::Owner(user.id), user.username, name).await
}

pub(crate) async fn list_shares(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<GrantInfo>>> {
    let grants =
        on_owned_server(&st, &headers, name, |tx, s| store::server_grants(tx, s.id)).await?;
    Ok(Json(grants.into_iter().map(grant_info).collect()))
}

pub(crate) async fn create_share(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ShareRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<GrantInfo>)> {
    let (owner, _) = account(&st, &headers).await?;
    let Path(name) = name?;
    let Json(req) = body?;
    let r = req.clone();
    let limits = st.settings.limits;
    let (server, warnings) = st
        .db
        .tx(move |tx| {
            let s = store::owned_server(tx, owner.id, &name)?;
            let u = store::user_by_name(tx, &r.username)?.ok_or_else(|| {
                store::StoreError::NotFound(format!("no user named '{}'", r.username))
            })?;
            if u.id == owner.id {
                return Err(store::StoreError::Invalid(
                    "you own this server; share it with someone else".into(),
                ));
            }
            let w = share(
                tx,
                &u,
                &s,
                r.services.as_deref(),
                r.direct,
                &owner.username,
                limits,
            )?;
            Ok((s.name, w))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GrantInfo {
            username: req.username,
            server,
            services: req.services,
            direct: req.direct,
            warnings,
        }),
    ))
}

/// Ends a share; the user's admissions on the server end at once (the
/// gateway hears of it through its feed, like any revocation).
pub(crate) async fn remove_share(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (owner, _) = account(&st, &headers).await?;
    let Path((name, username)) = p?;
    st.db
        .tx(move |tx| {
            let s = store::owned_server(tx, owner.id, &name)?;
            let gone = match store::user_by_name(tx, &username)? {
                Some(u) => unshare(tx, &u, &s, &owner.username)?,
                None => false,
            };
            if !gone {
                return Err(store::StoreError::NotFound(format!(
                    "server '{name}' is not shared with '{username}'"
                )));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn invitation_info(i: store::Invitation) -> InvitationInfo {
    InvitationInfo {
        id: i.id,
        server: i.server,
        services: i.services,
        direct: i.direct,
        uses_left: i.uses_left,
        created_at: i.created_at,
        expires_at: i.expires_at,
    }
}

/// Default and longest validity of an invitation link.
const INVITATION_TTL: Duration = Duration::from_secs(7 * 86_400);
const INVITATION_TTL_MAX: u64 = 30 * 86_400;
/// The most accounts one link may make.
const INVITATION_USES_MAX: u32 = 1000;

fn invitation_terms(req: &NewInvitation) -> ApiResult<(Duration, u32)> {
    let ttl = match req.ttl_secs {
        None => INVITATION_TTL,
        Some(s) if (60..=INVITATION_TTL_MAX).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return Err(AppError::bad_request(
                "an invitation's validity (ttl_secs) must be between a minute and 30 days",
            ))
        }
    };
    let uses = req.uses.unwrap_or(1);
    if !(1..=INVITATION_USES_MAX).contains(&uses) {
        return Err(AppError::bad_request(format!(
            "an invitation can be used 1 to {INVITATION_USES_MAX} times"
        )));
    }
    Ok((ttl, uses))
}

/// Issues an invitation (of a server, or the operator's for an account)
/// in the caller's transaction; its secret is returned once.
fn issue_invitation(
    tx: &mut store::Tx,
    server: Option<&store::Server>,
    created_by: Option<i64>,
    by: &str,
    req: &NewInvitation,
    (ttl, uses): (Duration, u32),
    limits: crate::limits::Limits,
) -> store::Result<IssuedInvitation> {
    if let Some(s) = server {
        check_granted_services(s, req.services.as_deref())?;
        store::lock_server(tx, s.id)?;
        crate::limits::check(
            "invitations-per-server",
            limits.invitations_per_server,
            store::live_invitations(tx, Some(s.id), now())?,
            &format!("the live invitation links of server '{}'", s.name),
            "revoke one you no longer need first",
        )?;
    } else {
        crate::limits::check(
            "account-invitations",
            limits.account_invitations,
            store::live_invitations(tx, None, now())?,
            "the live invitations to create an account",
            "revoke one you no longer need first",
        )?;
    }
    let (token, hash) = auth::new_secret(SecretKind::Invitation);
    let id = auth::random_id("inv_");
    let created = now();
    let expires_at = created + ttl;
    store::insert_invitation(
        tx,
        &store::NewInvitation {
            id: &id,
            server_id: server.map(|s| s.id),
            created_by,
            hash: &hash,
            services: req.services.as_deref(),
            direct: req.direct,
            uses,
            now: created,
            expires_at,
        },
    )?;
    audit_line(
        tx,
        "invitation_created",
        None,
        server.map(|s| s.name.as_str()),
        format!(
            "invitation {id}, {uses} use(s), valid until {}, by {by}",
            rfc3339(expires_at)
        ),
    )?;
    Ok(IssuedInvitation {
        id,
        server: server.map(|s| s.name.clone()),
        token,
        uses,
        expires_at,
    })
}

pub(crate) async fn create_invitation(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<NewInvitation>, JsonRejection>,
) -> ApiResult<NoStore<(StatusCode, Json<IssuedInvitation>)>> {
    let (owner, _) = account(&st, &headers).await?;
    let Path(name) = name?;
    let Json(req) = body?;
    let (ttl, uses) = invitation_terms(&req)?;
    let limits = st.settings.limits;
    let issued = st
        .db
        .tx(move |tx| {
            let s = store::owned_server(tx, owner.id, &name)?;
            issue_invitation(
                tx,
                Some(&s),
                Some(owner.id),
                &owner.username,
                &req,
                (ttl, uses),
                limits,
            )
        })
        .await?;
    Ok(no_store((StatusCode::CREATED, Json(issued))))
}

pub(crate) async fn list_invitations(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<InvitationInfo>>> {
    let list = on_owned_server(&st, &headers, name, |tx, s| {
        store::list_invitations(tx, Some(s.id), now())
    })
    .await?;
    Ok(Json(list.into_iter().map(invitation_info).collect()))
}

fn no_invitation(id: &str) -> store::StoreError {
    store::StoreError::NotFound(format!(
        "no invitation '{id}'; it may have been used up, have expired or been revoked"
    ))
}

pub(crate) async fn revoke_invitation(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (owner, _) = account(&st, &headers).await?;
    let Path((name, id)) = p?;
    st.db
        .tx(move |tx| {
            let s = store::owned_server(tx, owner.id, &name)?;
            if !store::delete_invitation(tx, Some(s.id), &id)? {
                return Err(no_invitation(&id));
            }
            audit_line(
                tx,
                "invitation_revoked",
                None,
                Some(&s.name),
                format!("invitation {id}, by {}", owner.username),
            )
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn server_admissions(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<AdmissionInfo>>> {
    let adms = on_owned_server(&st, &headers, name, |tx, s| {
        store::server_admissions(tx, s.id)
    })
    .await?;
    Ok(Json(admission_infos(adms)))
}

pub(crate) async fn server_audit(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let limit = audit_limit(q)?;
    Ok(Json(
        on_owned_server(&st, &headers, name, move |tx, s| {
            store::audit_where(tx, AuditScope::Server(s.id), limit)
        })
        .await?,
    ))
}

fn device_request_info(r: store::DeviceRequest) -> DeviceRequestInfo {
    DeviceRequestInfo {
        device_id: r.device_id,
        device_name: r.device_name,
        username: r.username,
        state: r.state.as_str().into(),
        requested_at: r.requested_at,
        decided_at: r.decided_at,
    }
}

pub(crate) async fn device_requests(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<DeviceRequestInfo>>> {
    let list = on_owned_server(&st, &headers, name, |tx, s| {
        store::server_device_requests(tx, s.id)
    })
    .await?;
    Ok(Json(list.into_iter().map(device_request_info).collect()))
}

/// The owner approves or denies a device that asked for their server. A
/// denial ends whatever that device holds there.
pub(crate) async fn decide_device(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<DeviceDecision>, JsonRejection>,
) -> ApiResult<Json<DeviceRequestInfo>> {
    let (owner, _) = account(&st, &headers).await?;
    let Path((name, id)) = p?;
    let Json(req) = body?;
    let decided = st
        .db
        .tx(move |tx| {
            let s = store::owned_server(tx, owner.id, &name)?;
            let Some(mut r) = store::decide_approval(tx, s.id, &id, req.approve, now())? else {
                return Err(store::StoreError::NotFound(format!(
                    "no device '{id}' has asked for server '{name}'"
                )));
            };
            if !req.approve {
                for a in store::device_admissions(tx, &id)? {
                    if a.server_id == s.id {
                        end_admission(tx, &a, format!("device denied by {}", owner.username))?;
                    }
                }
            }
            audit_line(
                tx,
                if req.approve {
                    "device_approved"
                } else {
                    "device_denied"
                },
                Some(&r.username),
                Some(&s.name),
                format!(
                    "device {} ('{}'), by {}",
                    r.device_id, r.device_name, owner.username
                ),
            )?;
            r.state = if req.approve {
                store::Approval::Approved
            } else {
                store::Approval::Denied
            };
            r.decided_at = Some(now());
            Ok(r)
        })
        .await?;
    Ok(Json(device_request_info(decided)))
}

// ---------- the operator's ----------

pub(crate) async fn signup_setting(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<SignupSetting>> {
    operator(&st, &headers).await?;
    let mode = st.db.tx(store::signup_mode).await?;
    Ok(Json(SignupSetting {
        mode: mode.as_str().into(),
    }))
}

pub(crate) async fn set_signup_setting(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<SignupSetting>, JsonRejection>,
) -> ApiResult<Json<SignupSetting>> {
    let by = operator(&st, &headers).await?;
    let Json(req) = body?;
    let mode: SignupMode = req.mode.parse().map_err(AppError::bad_request)?;
    st.db
        .tx(move |tx| {
            store::set_signup_mode(tx, mode)?;
            audit_line(
                tx,
                "signup_mode_changed",
                None,
                None,
                format!("{}, by {by}", mode.as_str()),
            )
        })
        .await?;
    Ok(Json(SignupSetting {
        mode: mode.as_str().into(),
    }))
}

pub(crate) async fn create_account_invitation(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    body: Result<Json<NewInvitation>, JsonRejection>,
) -> ApiResult<NoStore<(StatusCode, Json<IssuedInvitation>)>> {
    let by = operator(&st, &headers).await?;
    let Json(req) = body?;
    if req.services.is_some() || req.direct {
        return Err(AppError::bad_request(
            "an invitation to create an account shares no server: leave out services and direct (owners invite to their servers themselves)",
        ));
    }
    let (ttl, uses) = invitation_terms(&req)?;
    let limits = st.settings.limits;
    let issued = st
        .db
        .tx(move |tx| issue_invitation(tx, None, None, &by, &req, (ttl, uses), limits))
        .await?;
    Ok(no_store((StatusCode::CREATED, Json(issued))))
}

pub(crate) async fn list_account_invitations(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<InvitationInfo>>> {
    operator(&st, &headers).await?;
    let list = st
        .db
        .tx(|tx| store::list_invitations(tx, None, now()))
        .await?;
    Ok(Json(list.into_iter().map(invitation_info).collect()))
}

pub(crate) async fn revoke_account_invitation(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let by = operator(&st, &headers).await?;
    let Path(id) = id?;
    st.db
        .tx(move |tx| {
            if !store::delete_invitation(tx, None, &id)? {
                return Err(no_invitation(&id));
            }
            audit_line(
                tx,
                "invitation_revoked",
                None,
                None,
                format!("invitation {id}, by {by}"),
            )
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
