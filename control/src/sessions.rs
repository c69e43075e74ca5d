//! An account's own logins and password (see docs/api.md, "My
//! account"): list the live logins, end one (a lost laptop's), change
//! the password. The web console's account page calls these same
//! handlers.

use crate::app::{bearer, check_password, now, ApiResult, Shared};
use crate::auth;
use crate::error::AppError;
use crate::store::{self, Audit};
use crate::tenants::account;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use proto::api::{ChangePassword, SessionInfo};
use sha2::{Digest, Sha256};

/// The public name of a login: part of a hash of its stored hash, so
/// neither the token nor what the database keeps can be derived from it.
pub(crate) fn session_id(token_hash: &[u8]) -> String {
    let h = Sha256::digest(token_hash);
    let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ses_{hex}")
}

/// The stored hash of the token this request carries.
fn own_hash(headers: &HeaderMap) -> [u8; 32] {
    auth::hash_secret(bearer(headers).unwrap_or_default())
}

pub(crate) async fn my_sessions(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    let (user, _) = account(&st, &headers).await?;
    let mine = own_hash(&headers);
    let list = st
        .db
        .tx(move |tx| store::user_sessions(tx, user.id, now()))
        .await?;
    Ok(Json(
        list.into_iter()
            .map(|s| SessionInfo {
                id: session_id(&s.token_hash),
                current: s.token_hash == mine,
                mfa: s.mfa,
                device_id: s.device_id,
                expires_at: s.expires_at,
            })
            .collect(),
    ))
}

/// Ends one of the caller's logins (its token stops working at once).
/// Another account's login is "not found", like one that never existed.
pub(crate) async fn end_session(
    axum::extract::State(st): Shared,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (user, _) = account(&st, &headers).await?;
    let Path(id) = id?;
    st.db
        .tx(move |tx| {
            let found = store::user_sessions(tx, user.id, now())?
                .into_iter()
                .find(|s| session_id(&s.token_hash) == id);
            let Some(s) = found else {
                return Err(store::StoreError::NotFound(format!(
                    "no login '{id}'; it may have ended already"
                )));
            };
            store::delete_user_token(tx, user.id, &s.token_hash)?;
            store::audit(
                tx,
                now(),
                Audit {
                    event: "logout",
                    username: Some(&user.username),
                    detail: format!("login {id} ended by its account"),
                    ..Default::default()
                },
            )
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The account changes its own password: the current one must be right
/// (a stolen login alone cannot take the account over); every other
/// login of the account ends.
pub(crate) async fn change_password(
    axum::extract::State(st): Shared,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<ChangePassword>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let (user, session) = account(&st, &headers).await?;
    let Json(req) = body?;
    // The current password is checked like a login's: the same budget
    // per address and per account (a stolen session cannot guess it
    // online, nor keep the hashing threads busy for everyone).
    let source = crate::app::observed_source(&st, peer, &headers)?;
    crate::device_code::take_attempt(&st, source, &user.username, "password change").await?;
    check_password(&req.new_password)?;
    if req.current_password.len() > 1024 {
        return Err(AppError::bad_request("passwords are at most 1024 bytes"));
    }
    // The same bound as logins on concurrent argon2 runs.
    let _slot = st
        .argon_slots
        .acquire()
        .await
        .map_err(|_| AppError::unavailable("shutting_down", "the control plane is stopping"))?;
    let (current, stored, new) = (req.current_password, user.pw_hash.clone(), req.new_password);
    // On the control plane's own hashing threads, which reuse their
    // argon2 memory (tokio's blocking threads would each keep a malloc
    // arena of it: auth::PasswordPool).
    let hash = if st.passwords.verify(current, stored).await {
        Some(st.passwords.hash(new).await.ok_or_else(|| {
            AppError::unavailable("shutting_down", "the control plane is stopping")
        })?)
    } else {
        None
    };
    st.password_checks
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(hash) = hash else {
        crate::device_code::charge_failure(&st, source, &user.username).await?;
        return Err(AppError::forbidden(
            "wrong_password",
            "the current password is wrong; nothing was changed",
        ));
    };
    let mine = own_hash(&headers);
    let name = user.username.clone();
    st.db
        .tx(move |tx| {
            store::set_password_hash(tx, user.id, &hash)?;
            // Devices that sign in alone (a code sign-in's) stop doing so,
            // except this session's own: a new password locks out a
            // device someone was tricked into approving.
            store::end_device_sign_ins(tx, user.id, session.device_id.as_deref())?;
            let mut ended = 0;
            for s in store::user_sessions(tx, user.id, now())? {
                if s.token_hash != mine {
                    ended += u64::from(store::delete_user_token(tx, user.id, &s.token_hash)?);
                }
            }
            store::audit(
                tx,
                now(),
                Audit {
                    event: "password_changed",
                    username: Some(&user.username),
                    detail: format!("by the account itself, {ended} other logins ended"),
                    ..Default::default()
                },
            )
        })
        .await?;
    tracing::info!(user = %name, "password changed by its account");
    Ok(StatusCode::NO_CONTENT)
}
