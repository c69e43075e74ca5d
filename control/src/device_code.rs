//! Sign-in by code: the OAuth 2.0 device authorization grant (RFC 8628)
//! in hushgate's words, for devices without a keyboard (a TV, a player
//! app).
//!
//! 1. The device asks for a code (`POST /v1/device-codes`, no account):
//!    it gets a secret `device_code` it keeps, and a short `user_code`
//!    (`XXXX-XXXX`) with a link, which it shows.
//! 2. The user opens the link on a phone, signs in (with two factors
//!    where the account has them) and approves the code
//!    ([`approve`], behind `POST /v1/device-codes/approve` and the
//!    console's `/device` page). The approval binds the device to *that*
//!    account.
//! 3. The device polls (`POST /v1/device-codes/token`) no faster than the
//!    interval; once approved, one poll gets what a password sign-in
//!    gets: a login token and a new device credential. The device keeps
//!    the credential (0600) and signs in with it alone later
//!    (`POST /v1/login/device`), as a device the account approved.
//!
//! Both codes are stored as SHA-256 hashes only. A code lives at most
//! [`MAX_TTL`], is decided once and hands out its credential once. Code
//! creation is charged to the source's login budget, and every approval
//! attempt to the source and the user, through the login limiter: a
//! wrong code counts as a failed login, so guessing codes is as slow as
//! guessing passwords (and the 20^8 codes make it hopeless anyway).
//!
//! The rules that need no database (the code alphabet, what a poll gets)
//! are plain functions of the stored row and the time, tested below; the
//! handlers around them only read and write.

use crate::app::{self, observed_source, principal, ApiResult, AppState, Principal, Shared};
use crate::auth::{self, SecretKind};
use crate::error::AppError;
use crate::limits::Limits;
use crate::store::{self, Audit, CodeState, DeviceCodeRow, NewDeviceCode};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use proto::api::*;
use rand::Rng;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The longest a code lives (RFC 8628 leaves it to the server; a few
/// minutes is enough to walk to a phone, and short enough that a code
/// photographed off a screen is soon worthless).
pub const MAX_TTL: Duration = Duration::from_secs(600);

/// The user code's letters: 20 consonants, no vowels (no words can be
/// spelt), none that reads as a digit (no O, I; no digits at all), so it
/// can be typed from a TV screen on a phone keyboard without doubt
/// (RFC 8628, section 6.1).
pub const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Letters in a user code: 20^8 ≈ 2.6·10^10 codes.
pub const USER_CODE_LEN: usize = 8;

/// What a device that polled too fast must add to its interval
/// (RFC 8628, section 3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// How much sooner than the interval a poll may arrive and still count
/// as on time: two polls sent exactly one interval apart can arrive
/// closer together when the first was held up on the way.
const POLL_TOLERANCE_MS: i64 = 500;

/// How long an expired code is remembered, so that a late poll hears
/// `expired_token` rather than "unknown".
const REMEMBER_EXPIRED: Duration = Duration::from_secs(3600);

/// The limiter's name for code creation: charged to the source only. A
/// space is in no user name, so no account shares its count.
const CREATE_KEY: &str = "device codes";
/// The limiter's name for sign-ins with a device credential alone.
const DEVICE_LOGIN_KEY: &str = "device login";

/// A fresh user code, `XXXX-XXXX`.
pub fn new_user_code(rng: &mut impl Rng) -> String {
    let letters: String = (0..USER_CODE_LEN)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// A typed user code in its one stored form (8 capitals, no dash), or
/// `None` if it cannot be one: case, spaces and dashes do not matter.
pub fn normalize_user_code(typed: &str) -> Option<String> {
    let letters: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (letters.len() == USER_CODE_LEN && letters.bytes().all(|b| ALPHABET.contains(&b)))
        .then_some(letters)
}

/// What is stored for a user code (its normalized form's hash, in a
/// namespace of its own).
fn user_code_hash(normalized: &str) -> [u8; 32] {
    auth::hash_secret(&format!("user-code:{normalized}"))
}

/// What a poll gets, decided from the stored code and the time alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollVerdict {
    /// Not decided yet; poll again after `interval_ms`.
    Pending { interval_ms: i64 },
    /// Too fast: the interval is now `interval_ms`.
    SlowDown { interval_ms: i64 },
    /// Denied by the user.
    Denied,
    /// Approved: hand out the credential (once).
    Issue,
    /// The code's time ran out before it was used.
    Expired,
    /// Used already (the credential went out, or the denial was told):
    /// answered like a code that never existed.
    Gone,
}

/// The rule of RFC 8628's section 3.5 for one poll at `now_ms`.
pub fn judge_poll(code: &DeviceCodeRow, now_ms: i64) -> PollVerdict {
    if code.state == CodeState::Used {
        return PollVerdict::Gone;
    }
    if now_ms >= code.expires_at_ms {
        return PollVerdict::Expired;
    }
    if let Some(last) = code.last_poll_ms {
        if now_ms.saturating_sub(last) + POLL_TOLERANCE_MS < code.interval_ms {
            let step = i64::try_from(SLOW_DOWN_STEP.as_millis()).unwrap_or(i64::MAX);
            return PollVerdict::SlowDown {
                interval_ms: code.interval_ms.saturating_add(step),
            };
        }
    }
    match code.state {
        CodeState::Pending => PollVerdict::Pending {
            interval_ms: code.interval_ms,
        },
        CodeState::Denied => PollVerdict::Denied,
        CodeState::Approved => PollVerdict::Issue,
        CodeState::Used => PollVerdict::Gone,
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The base of the link users open: the operator's public URL, or the
/// host this device reached (its own request's `Host`, which is only
/// ever echoed back to that device).
fn public_base(st: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(u) = &st.settings.public_url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .ok_or_else(|| {
            AppError::bad_request(
                "the request has no usable Host header to build the sign-in link from; the operator can set --public-url",
            )
        })?;
    Ok(format!("https://{host}"))
}

/// Takes one attempt from `source` (and `name`'s failures) in the login
/// limiter, or answers 429 with how long to wait.
pub(crate) async fn take_attempt(
    st: &Arc<AppState>,
    source: IpAddr,
    name: &str,
    what: &str,
) -> ApiResult<()> {
    let now = st.settings.clock.now_millis();
    let verdict = if st.db.shared() {
        let (s2, name) = (st.clone(), name.to_string());
        st.db
            .tx(move |tx| s2.limiter.check_in(tx, source, &name, now))
            .await?
    } else {
        st.limiter.check(source, name, now)
    };
    if let Err(wait) = verdict {
        tracing::debug!(%source, wait_secs = wait.as_secs(), "{what} refused: too many attempts");
        let mut e = AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many {what} attempts; wait {} seconds and try again",
                wait.as_secs()
            ),
        );
        e.retry_after = Some(wait.as_secs());
        return Err(e);
    }
    Ok(())
}

/// Charges a failure to `name` from `source` (a wrong code counts as a
/// wrong password).
pub(crate) async fn charge_failure(
    st: &Arc<AppState>,
    source: IpAddr,
    name: &str,
) -> ApiResult<()> {
    let now = st.settings.clock.now_millis();
    if st.db.shared() {
        let (s2, name) = (st.clone(), name.to_string());
        st.db
            .tx(move |tx| s2.limiter.failed_in(tx, source, &name, now))
            .await?;
    } else {
        st.limiter.failed(source, name, now);
    }
    Ok(())
}

/// The most codes the store keeps at once (live ones, and expired ones
/// remembered for late polls): creation is refused beyond it.
pub const MAX_STORED_CODES: i64 = 20_000;

/// `POST /v1/device-codes`: a device asks for a code.
pub(crate) async fn create(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<DeviceCodeRequest>, JsonRejection>,
) -> ApiResult<Json<DeviceCodeGrant>> {
    let Json(req) = body?;
    let source = observed_source(&st, peer, &headers)?;
    app::check_device_name(&req.device_name)?;
    take_attempt(&st, source, CREATE_KEY, "sign-in code").await?;
    let base = public_base(&st, &headers)?;
    let ttl = st.settings.device_code_ttl.min(MAX_TTL);
    let interval = st.settings.device_code_interval;
    let now_ms = st.settings.clock.now_millis();
    let (device_code, device_hash) = auth::new_secret(SecretKind::DeviceCode);
    let name = req.device_name.clone();
    let user_code = st
        .db
        .tx(move |tx| {
            store::sweep_device_codes(tx, now_ms - ms(REMEMBER_EXPIRED))?;
            // Asking needs no account: besides each address's budget, a
            // bound on what all of them together make the store keep.
            if store::count_device_codes(tx)? >= MAX_STORED_CODES {
                return Err(store::StoreError::Exhausted(
                    "too many sign-in codes are waiting; try again in a few minutes".into(),
                ));
            }
            // A user code still remembered may hold the one drawn; draw
            // again (with 20^8 codes, a second try is already rare).
            for _ in 0..8 {
                let code = new_user_code(&mut rand::rngs::OsRng);
                let normalized = normalize_user_code(&code).unwrap_or_default();
                let id = auth::random_id("dc_");
                let stored = store::insert_device_code(
                    tx,
                    &NewDeviceCode {
                        id: &id,
                        device_hash: &device_hash,
                        user_hash: &user_code_hash(&normalized),
                        device_name: &name,
                        source: &source.to_string(),
                        now_ms,
                        expires_at_ms: now_ms + ms(ttl),
                        interval_ms: ms(interval),
                    },
                )?;
                if stored {
                    return Ok(code);
                }
            }
            Err(store::StoreError::Exhausted(
                "no free sign-in code could be drawn; try again".into(),
            ))
        })
        .await?;
    tracing::info!(%source, device = %req.device_name, "sign-in code issued");
    let verification_uri = format!("{base}/device");
    Ok(Json(DeviceCodeGrant {
        device_code,
        verification_uri_complete: format!("{verification_uri}?code={user_code}"),
        user_code,
        verification_uri,
        expires_in: secs(ttl),
        interval: secs(interval),
    }))
}

fn poll_error(code: &'static str, message: &str) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, code, message)
}

/// What a poll's transaction found, answered after it commits (a slow
/// down's new interval must be stored even though the answer is an
/// error).
enum Polled {
    Verdict(PollVerdict),
    Unknown,
    Issued(LoginResponse),
}

/// `POST /v1/device-codes/token`: the device's poll.
pub(crate) async fn token(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<DeviceCodePoll>, JsonRejection>,
) -> ApiResult<Json<LoginResponse>> {
    let Json(req) = body?;
    let source = observed_source(&st, peer, &headers)?;
    let hash = auth::hash_secret(&req.device_code);
    let now_ms = st.settings.clock.now_millis();
    let token_ttl = st.settings.token_ttl;
    let limits = st.settings.limits;
    let polled = st
        .db
        .tx(move |tx| {
            let Some(code) = store::device_code_by_device_hash(tx, &hash)? else {
                return Ok(Polled::Unknown);
            };
            let verdict = judge_poll(&code, now_ms);
            match verdict {
                PollVerdict::Gone | PollVerdict::Expired => return Ok(Polled::Verdict(verdict)),
                PollVerdict::SlowDown { interval_ms } => {
                    store::record_device_code_poll(tx, &code.id, now_ms, interval_ms)?;
                    return Ok(Polled::Verdict(verdict));
                }
                _ => store::record_device_code_poll(tx, &code.id, now_ms, code.interval_ms)?,
            }
            match verdict {
                PollVerdict::Denied => {
                    store::finish_device_code(tx, &code.id, CodeState::Denied)?;
                    Ok(Polled::Verdict(verdict))
                }
                PollVerdict::Issue => {
                    // Only the poll that ends the code hands anything out.
                    if !store::finish_device_code(tx, &code.id, CodeState::Approved)? {
                        return Ok(Polled::Verdict(PollVerdict::Gone));
                    }
                    let Some(user_id) = code.user_id else {
                        return Ok(Polled::Verdict(PollVerdict::Gone));
                    };
                    issue(tx, &code, user_id, source, (token_ttl, &limits)).map(Polled::Issued)
                }
                other => Ok(Polled::Verdict(other)),
            }
        })
        .await?;
    match polled {
        Polled::Issued(r) => Ok(Json(r)),
        Polled::Unknown | Polled::Verdict(PollVerdict::Gone) => Err(poll_error(
            "invalid_grant",
            "this device code is not valid (mistyped, or used already); ask for a new code",
        )),
        Polled::Verdict(PollVerdict::Expired) => Err(poll_error(
            "expired_token",
            "the code expired before it was approved; ask for a new code",
        )),
        Polled::Verdict(PollVerdict::Denied) => Err(poll_error(
            "access_denied",
            "the code was denied by the user it was shown to",
        )),
        Polled::Verdict(PollVerdict::SlowDown { interval_ms }) => {
            let mut e = poll_error(
                "slow_down",
                &format!(
                    "polling too fast: wait at least {} seconds between polls",
                    interval_ms / 1000
                ),
            );
            e.retry_after = Some(u64::try_from(interval_ms / 1000).unwrap_or(0));
            Err(e)
        }
        Polled::Verdict(PollVerdict::Pending { .. }) => Err(poll_error(
            "authorization_pending",
            "the code has not been approved yet; keep polling",
        )),
        Polled::Verdict(PollVerdict::Issue) => Err(AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the approved code could not be handed out",
        )),
    }
}

/// The approved code's device, session and audit line, in the poll's
/// transaction.
fn issue(
    tx: &mut store::Tx,
    code: &DeviceCodeRow,
    user_id: i64,
    source: IpAddr,
    (token_ttl, limits): (Duration, &Limits),
) -> store::Result<LoginResponse> {
    let (credential, cred_hash) = auth::new_secret(SecretKind::Device);
    let device_id = auth::random_id("dev_");
    let now = app::now();
    crate::limits::add_device(
        tx,
        limits,
        (&device_id, &code.device_name, &cred_hash),
        user_id,
        now,
    )?;
    store::allow_device_sign_in(tx, &device_id, code.mfa)?;
    let (token, token_hash) = auth::new_secret(SecretKind::UserToken);
    let detail = format!(
        "new device {device_id} ('{}') by sign-in code",
        code.device_name
    );
    let expires_at = device_session(
        tx,
        DeviceSession {
            user_id,
            device_id: &device_id,
            mfa: code.mfa,
            token_hash: &token_hash,
            token_ttl,
            limits,
            source,
            detail,
        },
    )?;
    Ok(LoginResponse {
        token,
        expires_at,
        device_id: Some(device_id),
        device_credential: Some(credential),
    })
}

/// A new login session of a device (made by a code sign-in), with its
/// audit line.
struct DeviceSession<'a> {
    user_id: i64,
    device_id: &'a str,
    /// The session counts as a two-factor one.
    mfa: bool,
    token_hash: &'a [u8],
    token_ttl: Duration,
    /// The operator's limits (a new session may end the oldest).
    limits: &'a Limits,
    source: IpAddr,
    /// How the device signed in, for the audit.
    detail: String,
}

/// Stores the session and writes its `login` audit line; returns when
/// its token expires.
fn device_session(tx: &mut store::Tx, d: DeviceSession<'_>) -> store::Result<time::OffsetDateTime> {
    let now = app::now();
    let expires_at = now + d.token_ttl;
    let session = store::Session {
        mfa: d.mfa,
        device_id: Some(d.device_id.to_string()),
    };
    crate::limits::add_session(
        tx,
        d.limits,
        (d.token_hash, d.user_id),
        expires_at,
        &session,
        now,
    )?;
    let username: Option<String> = tx
        .query_opt(
            "SELECT username FROM users WHERE id = $1",
            crate::args![d.user_id],
        )?
        .map(|r| r.text(0))
        .transpose()?;
    store::audit(
        tx,
        now,
        Audit {
            event: "login",
            username: username.as_deref(),
            source: Some(d.source),
            detail: format!(
                "{}{}",
                d.detail,
                if d.mfa { ", with two factors" } else { "" }
            ),
            ..Default::default()
        },
    )?;
    Ok(expires_at)
}

/// A user's decision on the code a device shows: what the API's approve
/// and deny routes and the console's `/device` page call.
///
/// `user` and `session` are the signed-in caller (see
/// [`crate::app::principal`]); `source` is where the request came from
/// (charged by the limiter, written to the audit). Approving binds the
/// device to `user`; an account with two factors must approve from a
/// session that used them, and the device's sessions count as two-factor
/// ones only if the approving session was one (so a server's
/// two-factor policy holds for the device exactly as for its approver).
/// A code that is mistyped, expired, used or decided already gets one
/// answer (`404 unknown_code`) and counts as a failed login.
pub(crate) async fn approve(
    st: &Arc<AppState>,
    user: &store::User,
    session: &store::Session,
    user_code: &str,
    approve: bool,
    source: IpAddr,
) -> ApiResult<DeviceCodeDecided> {
    take_attempt(st, source, &user.username, "sign-in code").await?;
    let normalized = typed_code(user_code)?;
    if approve && user.totp && !session.mfa {
        return Err(AppError::forbidden(
            "two_factor_required",
            "your account signs in with two factors: sign in again with your authenticator code, then approve the device",
        ));
    }
    let hash = user_code_hash(&normalized);
    let (uid, uname, mfa) = (user.id, user.username.clone(), session.mfa);
    let now_ms = st.settings.clock.now_millis();
    let decided = st
        .db
        .tx(move |tx| {
            let Some(code) = store::device_code_by_user_hash(tx, &hash)? else {
                return Ok(None);
            };
            if !store::decide_device_code(tx, &code.id, approve, uid, mfa, now_ms)? {
                return Ok(None);
            }
            store::audit(
                tx,
                app::now(),
                Audit {
                    event: if approve {
                        "device_code_approved"
                    } else {
                        "device_code_denied"
                    },
                    username: Some(&uname),
                    source: Some(source),
                    detail: format!(
                        "device '{}' asking from {}{}",
                        code.device_name,
                        code.source,
                        if approve && mfa {
                            ", approved with two factors"
                        } else {
                            ""
                        }
                    ),
                    ..Default::default()
                },
            )?;
            Ok(Some(DeviceCodeDecided {
                device_name: code.device_name,
                source: code.source,
                approved: approve,
            }))
        })
        .await?;
    match decided {
        Some(d) => {
            tracing::info!(user = %user.username, %source, device = %d.device_name, approved = approve, "sign-in code decided");
            Ok(d)
        }
        None => {
            tracing::info!(user = %user.username, %source, "sign-in code not found");
            charge_failure(st, source, &user.username).await?;
            Err(unknown_code())
        }
    }
}

/// A code as a user typed it, or why it cannot be one.
fn typed_code(user_code: &str) -> ApiResult<String> {
    normalize_user_code(user_code).ok_or_else(|| {
        AppError::bad_request(
            "a sign-in code is 8 letters as the device shows them, e.g. BCDF-GHJK",
        )
    })
}

/// The one answer for a code that is not waiting (mistyped, expired,
/// decided or used): none of these is told apart.
fn unknown_code() -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "unknown_code",
        "no device is waiting with that code: it is mistyped, expired, or was used already; check the code on the device's screen or ask it for a new one",
    )
}

/// A code still waiting for a decision, as the console shows it before
/// the user decides: the device's name and the address it asked from.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub device_name: String,
    pub source: String,
}

/// Looks a code up for the console's confirmation step (nothing is
/// decided): the same budget and the same answer for a miss as
/// [`approve`], so looking up is no faster way to guess codes.
pub(crate) async fn waiting(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    peer: SocketAddr,
    user_code: &str,
) -> ApiResult<Waiting> {
    let (user, _) = signed_in_user(st, headers).await?;
    let source = observed_source(st, peer, headers)?;
    take_attempt(st, source, &user.username, "sign-in code").await?;
    let normalized = typed_code(user_code)?;
    let hash = user_code_hash(&normalized);
    let now_ms = st.settings.clock.now_millis();
    let found = st
        .db
        .tx(move |tx| store::device_code_by_user_hash(tx, &hash))
        .await?
        .filter(|c| c.state == CodeState::Pending && c.expires_at_ms > now_ms);
    match found {
        Some(c) => Ok(Waiting {
            device_name: c.device_name,
            source: c.source,
        }),
        None => {
            charge_failure(st, source, &user.username).await?;
            Err(unknown_code())
        }
    }
}

/// The signed-in user behind a request (the operator's token has no
/// account to bind a device to).
async fn signed_in_user(
    st: &AppState,
    headers: &HeaderMap,
) -> ApiResult<(store::User, store::Session)> {
    match principal(st, headers).await? {
        Principal::User(u, s) => Ok((u, s)),
        Principal::Admin => Err(AppError::forbidden(
            "account_required",
            "a device is bound to the account that approves it: sign in as that account (the admin token has none)",
        )),
    }
}

async fn decide_route(
    st: Arc<AppState>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Result<Json<DeviceCodeDecision>, JsonRejection>,
    yes: bool,
) -> ApiResult<Json<DeviceCodeDecided>> {
    let (user, session) = signed_in_user(&st, &headers).await?;
    let Json(req) = body?;
    let source = observed_source(&st, peer, &headers)?;
    approve(&st, &user, &session, &req.user_code, yes, source)
        .await
        .map(Json)
}

/// `POST /v1/device-codes/approve`.
pub(crate) async fn approve_route(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<DeviceCodeDecision>, JsonRejection>,
) -> ApiResult<Json<DeviceCodeDecided>> {
    decide_route(st, peer, headers, body, true).await
}

/// `POST /v1/device-codes/deny`.
pub(crate) async fn deny_route(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<DeviceCodeDecision>, JsonRejection>,
) -> ApiResult<Json<DeviceCodeDecided>> {
    decide_route(st, peer, headers, body, false).await
}

/// `POST /v1/login/device`: a device made by a code sign-in signs in
/// again with its credential alone.
pub(crate) async fn device_login(
    State(st): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<DeviceLogin>, JsonRejection>,
) -> ApiResult<Json<LoginResponse>> {
    let Json(req) = body?;
    let source = observed_source(&st, peer, &headers)?;
    take_attempt(&st, source, DEVICE_LOGIN_KEY, "device sign-in").await?;
    let hash = auth::hash_secret(&req.device_credential);
    let token_ttl = st.settings.token_ttl;
    let limits = st.settings.limits;
    let (token, token_hash) = auth::new_secret(SecretKind::UserToken);
    let found = st
        .db
        .tx(move |tx| {
            let Some((id, name, user_id, mfa)) = store::sign_in_device(tx, &hash)? else {
                return Ok(None);
            };
            store::touch_device(tx, &id, app::now())?;
            let expires_at = device_session(
                tx,
                DeviceSession {
                    user_id,
                    device_id: &id,
                    mfa,
                    token_hash: &token_hash,
                    token_ttl,
                    limits: &limits,
                    source,
                    detail: format!("device {id} ('{name}') by its credential"),
                },
            )?;
            Ok(Some((id, expires_at)))
        })
        .await?;
    let Some((device_id, expires_at)) = found else {
        charge_failure(&st, source, DEVICE_LOGIN_KEY).await?;
        return Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "device_unknown",
            "this device's credential is not known (the device was removed from its account, or never signed in by code); delete the device file and sign in by code again",
        ));
    };
    Ok(Json(LoginResponse {
        token,
        expires_at,
        device_id: Some(device_id),
        device_credential: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(state: CodeState, last_poll_ms: Option<i64>) -> DeviceCodeRow {
        DeviceCodeRow {
            id: "dc_1".into(),
            device_name: "tv".into(),
            source: "192.0.2.1".into(),
            expires_at_ms: 600_000,
            interval_ms: 5_000,
            last_poll_ms,
            state,
            user_id: None,
            mfa: false,
        }
    }

    #[test]
    fn user_codes_use_the_alphabet_and_normalize() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let c = new_user_code(&mut rng);
            assert_eq!(c.len(), 9);
            assert_eq!(&c[4..5], "-");
            let n = normalize_user_code(&c).unwrap();
            assert_eq!(n.len(), USER_CODE_LEN);
            assert_eq!(normalize_user_code(&c.to_lowercase()), Some(n.clone()));
            assert_eq!(normalize_user_code(&format!(" {} ", n)), Some(n));
        }
        assert_eq!(normalize_user_code("BCDF-GHJ"), None, "too short");
        assert_eq!(normalize_user_code("BCDF-GHJA"), None, "a vowel");
        assert_eq!(normalize_user_code("BCDF-GHJ0"), None, "a digit");
    }

    #[test]
    fn polls_follow_rfc_8628() {
        // Undecided: pending, and the poll time counts.
        assert_eq!(
            judge_poll(&code(CodeState::Pending, None), 1_000),
            PollVerdict::Pending { interval_ms: 5_000 }
        );
        // Too soon after the last poll: slow down by 5 s.
        assert_eq!(
            judge_poll(&code(CodeState::Pending, Some(1_000)), 3_000),
            PollVerdict::SlowDown {
                interval_ms: 10_000
            }
        );
        // On time (within the tolerance for arrival jitter).
        assert_eq!(
            judge_poll(&code(CodeState::Pending, Some(1_000)), 5_600),
            PollVerdict::Pending { interval_ms: 5_000 }
        );
        assert_eq!(
            judge_poll(&code(CodeState::Approved, Some(0)), 6_000),
            PollVerdict::Issue
        );
        assert_eq!(
            judge_poll(&code(CodeState::Denied, None), 6_000),
            PollVerdict::Denied
        );
        // Expiry wins over everything but "used".
        assert_eq!(
            judge_poll(&code(CodeState::Approved, None), 600_000),
            PollVerdict::Expired
        );
        assert_eq!(
            judge_poll(&code(CodeState::Used, None), 700_000),
            PollVerdict::Gone
        );
        assert_eq!(
            judge_poll(&code(CodeState::Used, None), 1_000),
            PollVerdict::Gone
        );
    }
}
