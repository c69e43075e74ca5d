//! The queries of self-service tenancy: servers owned by accounts and
//! their policy, shares and invitation links, the sign-up setting, TOTP
//! and recovery codes, devices and their approval per server.
//!
//! Every lookup an owner or user makes on behalf of a request is scoped
//! here by the account's id, so a handler cannot forget the check: a
//! thing of another tenant is simply not found, exactly like a thing that
//! does not exist.

use super::queries::{
    admissions_where, from_millis, grant_row, millis, server_row, Admission, Grant, Server,
    GRANT_SELECT, SERVER_COLS,
};
use super::{Result, StoreError, Tx};
use crate::args;
use time::OffsetDateTime;

// ---------- sign-up ----------

/// Who may create an account by themselves (an operator setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignupMode {
    /// Anyone who can reach the control plane.
    Open,
    /// Only with an invitation link (from the operator, or an owner's
    /// link for one of their servers).
    #[default]
    InviteOnly,
    /// Nobody: the operator creates accounts (`hushgate admin user add`);
    /// only the operator's own invitations still work.
    Closed,
}

impl SignupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignupMode::Open => "open",
            SignupMode::InviteOnly => "invite-only",
            SignupMode::Closed => "closed",
        }
    }
}

impl std::str::FromStr for SignupMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "open" => Ok(SignupMode::Open),
            "invite-only" => Ok(SignupMode::InviteOnly),
            "closed" => Ok(SignupMode::Closed),
            _ => Err(format!(
                "'{s}' is not a sign-up mode: use 'open', 'invite-only' or 'closed'"
            )),
        }
    }
}

const SIGNUP_KEY: &str = "signup_mode";

pub fn signup_mode(tx: &mut Tx) -> Result<SignupMode> {
    Ok(super::setting(tx, SIGNUP_KEY)?
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or_default())
}

pub fn set_signup_mode(tx: &mut Tx, mode: SignupMode) -> Result<()> {
    super::set_setting(tx, SIGNUP_KEY, mode.as_str().as_bytes())
}

// ---------- owned servers ----------

pub fn set_server_owner(tx: &mut Tx, server_id: i64, owner_id: Option<i64>) -> Result<()> {
    tx.exec(
        "UPDATE servers SET owner_id = $1 WHERE id = $2",
        args![owner_id, server_id],
    )?;
    Ok(())
}

/// The error for a server the caller may not see: the same words as for
/// one that does not exist.
pub fn no_server(name: &str) -> StoreError {
    StoreError::NotFound(format!("no server named '{name}'"))
}

/// The server `name` if `owner_id` owns it; otherwise the same
/// `NotFound` as for a name nobody uses.
pub fn owned_server(tx: &mut Tx, owner_id: i64, name: &str) -> Result<Server> {
    tx.query_opt(
        &format!("SELECT {SERVER_COLS} FROM servers WHERE name = $1 AND owner_id = $2"),
        args![name, owner_id],
    )?
    .map(|r| server_row(&r))
    .transpose()?
    .ok_or_else(|| no_server(name))
}

pub fn servers_of_owner(tx: &mut Tx, owner_id: i64) -> Result<Vec<Server>> {
    tx.query(
        &format!("SELECT {SERVER_COLS} FROM servers WHERE owner_id = $1 ORDER BY name"),
        args![owner_id],
    )?
    .iter()
    .map(server_row)
    .collect()
}

/// A server's sharing policy; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct PolicyChange {
    pub binding: Option<proto::BindingPolicy>,
    pub direct_mode: Option<bool>,
    pub require_2fa: Option<bool>,
    pub approve_devices: Option<bool>,
}

pub fn update_server_policy(tx: &mut Tx, server_id: i64, p: &PolicyChange) -> Result<()> {
    if let Some(b) = p.binding {
        tx.exec(
            "UPDATE servers SET binding = $1 WHERE id = $2",
            args![b.to_string(), server_id],
        )?;
    }
    for (col, v) in [
        ("direct_mode", p.direct_mode),
        ("require_2fa", p.require_2fa),
        ("approve_devices", p.approve_devices),
    ] {
        if let Some(v) = v {
            tx.exec(
                &format!("UPDATE servers SET {col} = $1 WHERE id = $2"),
                args![v, server_id],
            )?;
        }
    }
    Ok(())
}

// ---------- shares ----------

/// The shares (grants) of one server.
pub fn server_grants(tx: &mut Tx, server_id: i64) -> Result<Vec<Grant>> {
    tx.query(
        &format!("{GRANT_SELECT} WHERE g.server_id = $1 ORDER BY u.username"),
        args![server_id],
    )?
    .iter()
    .map(grant_row)
    .collect()
}

/// The servers shared with one account.
pub fn user_grants(tx: &mut Tx, user_id: i64) -> Result<Vec<Grant>> {
    tx.query(
        &format!("{GRANT_SELECT} WHERE g.user_id = $1 ORDER BY s.name"),
        args![user_id],
    )?
    .iter()
    .map(grant_row)
    .collect()
}

/// Every admission on the servers one account owns.
pub fn owner_admissions(tx: &mut Tx, owner_id: i64) -> Result<Vec<Admission>> {
    admissions_where(
        tx,
        "WHERE s.owner_id = $1 ORDER BY a.created_at, a.id",
        args![owner_id],
    )
}

// ---------- invitations ----------

/// An invitation link as its creator sees it (never the secret).
#[derive(Debug, Clone)]
pub struct Invitation {
    pub id: String,
    /// The server the link shares; `None` for the operator's invitation
    /// to create an account.
    pub server_id: Option<i64>,
    pub server: Option<String>,
    pub services: Option<Vec<String>>,
    pub direct: bool,
    pub uses_left: u32,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

const INVITATION_SELECT: &str = "SELECT i.id, i.server_id, s.name, i.services, i.direct, i.uses_left, i.created_at, i.expires_at
     FROM invitations i LEFT JOIN servers s ON s.id = i.server_id";

fn invitation_row(r: &super::Row) -> Result<Invitation> {
    Ok(Invitation {
        id: r.text(0)?,
        server_id: r.opt_i64(1)?,
        server: r.opt_text(2)?,
        services: r.opt_text(3)?.and_then(|s| serde_json::from_str(&s).ok()),
        direct: r.bool(4)?,
        uses_left: r.i64(5)?.clamp(0, i64::from(u32::MAX)) as u32,
        created_at: from_millis(r.i64(6)?),
        expires_at: from_millis(r.i64(7)?),
    })
}

#[derive(Debug, Clone)]
pub struct NewInvitation<'a> {
    pub id: &'a str,
    pub server_id: Option<i64>,
    pub created_by: Option<i64>,
    pub hash: &'a [u8],
    pub services: Option<&'a [String]>,
    pub direct: bool,
    pub uses: u32,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

pub fn insert_invitation(tx: &mut Tx, n: &NewInvitation<'_>) -> Result<()> {
    let services = n
        .services
        .map(|s| serde_json::to_string(s).unwrap_or_default());
    tx.exec(
        "INSERT INTO invitations(id, server_id, created_by, token_hash, services, direct, uses_left, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        args![
            n.id,
            n.server_id,
            n.created_by,
            n.hash,
            services,
            n.direct,
            n.uses,
            millis(n.now),
            millis(n.expires_at)
        ],
    )?;
    Ok(())
}

/// The live invitations of one server (`None`: the operator's account
/// invitations).
pub fn list_invitations(
    tx: &mut Tx,
    server_id: Option<i64>,
    now: OffsetDateTime,
) -> Result<Vec<Invitation>> {
    let rows = match server_id {
        Some(id) => tx.query(
            &format!("{INVITATION_SELECT} WHERE i.server_id = $1 AND i.expires_at > $2 ORDER BY i.created_at, i.id"),
            args![id, millis(now)],
        )?,
        None => tx.query(
            &format!("{INVITATION_SELECT} WHERE i.server_id IS NULL AND i.expires_at > $1 ORDER BY i.created_at, i.id"),
            args![millis(now)],
        )?,
    };
    rows.iter().map(invitation_row).collect()
}

/// Revokes an invitation of one server (`None`: an operator's one);
/// whether it existed there.
pub fn delete_invitation(tx: &mut Tx, server_id: Option<i64>, id: &str) -> Result<bool> {
    Ok(match server_id {
        Some(s) => tx.exec(
            "DELETE FROM invitations WHERE id = $1 AND server_id = $2",
            args![id, s],
        )?,
        None => tx.exec(
            "DELETE FROM invitations WHERE id = $1 AND server_id IS NULL",
            args![id],
        )?,
    } > 0)
}

/// The live invitation whose secret hashes to `hash`, without using it.
pub fn invitation_by_hash(
    tx: &mut Tx,
    hash: &[u8],
    now: OffsetDateTime,
) -> Result<Option<Invitation>> {
    tx.query_opt(
        &format!(
            "{INVITATION_SELECT} WHERE i.token_hash = $1 AND i.expires_at > $2 AND i.uses_left > 0"
        ),
        args![hash, millis(now)],
    )?
    .map(|r| invitation_row(&r))
    .transpose()
}

/// Uses one of an invitation's uses (the last one removes it); whether
/// one was left. Two requests racing for the last use: one wins.
pub fn use_invitation(tx: &mut Tx, id: &str) -> Result<bool> {
    let used = tx.exec(
        "UPDATE invitations SET uses_left = uses_left - 1 WHERE id = $1 AND uses_left > 0",
        args![id],
    )? > 0;
    tx.exec(
        "DELETE FROM invitations WHERE id = $1 AND uses_left <= 0",
        args![id],
    )?;
    Ok(used)
}

// ---------- login tokens with what the login proved ----------

/// What a login token stands for beyond its user.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The login used a second factor (TOTP or a recovery code).
    pub mfa: bool,
    /// The device the login came from, if the client named one.
    pub device_id: Option<String>,
}

pub fn insert_session_token(
    tx: &mut Tx,
    hash: &[u8],
    user_id: i64,
    expires: OffsetDateTime,
    session: &Session,
) -> Result<()> {
    tx.exec(
        "INSERT INTO tokens(token_hash, user_id, expires_at, mfa, device_id) VALUES ($1, $2, $3, $4, $5)",
        args![hash, user_id, millis(expires), session.mfa, session.device_id.as_deref()],
    )?;
    Ok(())
}

/// The user and session of a live login token.
pub fn token_session(
    tx: &mut Tx,
    hash: &[u8],
    now: OffsetDateTime,
) -> Result<Option<(super::User, Session)>> {
    tx.query_opt(
        &format!(
            "SELECT {}, t.mfa, t.device_id FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1 AND t.expires_at > $2",
            super::queries::USER_COLS
        ),
        args![hash, millis(now)],
    )?
    .map(|r| {
        Ok((
            super::queries::user_row(&r)?,
            Session {
                mfa: r.bool(6)?,
                device_id: r.opt_text(7)?,
            },
        ))
    })
    .transpose()
}

// ---------- TOTP ----------

/// Keeps a TOTP secret that takes effect only once a code from it has
/// been checked ([`confirm_totp`]).
pub fn set_totp_pending(tx: &mut Tx, user_id: i64, secret: &[u8]) -> Result<()> {
    tx.exec(
        "UPDATE users SET totp_pending = $1 WHERE id = $2",
        args![secret, user_id],
    )?;
    Ok(())
}

/// An account's TOTP secrets.
#[derive(Debug, Clone, Default)]
pub struct TotpState {
    /// The secret in effect (login needs its codes).
    pub secret: Option<Vec<u8>>,
    /// A secret enrolled but not confirmed yet.
    pub pending: Option<Vec<u8>>,
}

pub fn totp_state(tx: &mut Tx, user_id: i64) -> Result<TotpState> {
    let r = tx.query_one(
        "SELECT totp_secret, totp_pending FROM users WHERE id = $1",
        args![user_id],
    )?;
    Ok(TotpState {
        secret: r.opt_bytes(0)?,
        pending: r.opt_bytes(1)?,
    })
}

/// Makes the pending secret the account's, with fresh recovery codes
/// (their hashes), replacing any earlier ones.
pub fn confirm_totp(tx: &mut Tx, user_id: i64, step: i64, code_hashes: &[[u8; 32]]) -> Result<()> {
    tx.exec(
        "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_last_step = $1 WHERE id = $2",
        args![step, user_id],
    )?;
    tx.exec(
        "DELETE FROM recovery_codes WHERE user_id = $1",
        args![user_id],
    )?;
    for h in code_hashes {
        tx.exec(
            "INSERT INTO recovery_codes(user_id, code_hash) VALUES ($1, $2)",
            args![user_id, h],
        )?;
    }
    Ok(())
}

/// Records the time step of a code just accepted, so it cannot be
/// replayed; false when that step (or a later one) was used already.
pub fn use_totp_step(tx: &mut Tx, user_id: i64, step: i64) -> Result<bool> {
    Ok(tx.exec(
        "UPDATE users SET totp_last_step = $1 WHERE id = $2
         AND (totp_last_step IS NULL OR totp_last_step < $1)",
        args![step, user_id],
    )? > 0)
}

/// Uses a recovery code (each works once); whether it was one.
pub fn use_recovery_code(tx: &mut Tx, user_id: i64, hash: &[u8]) -> Result<bool> {
    Ok(tx.exec(
        "DELETE FROM recovery_codes WHERE user_id = $1 AND code_hash = $2",
        args![user_id, hash],
    )? > 0)
}

pub fn recovery_codes_left(tx: &mut Tx, user_id: i64) -> Result<u64> {
    Ok(tx
        .query_one(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1",
            args![user_id],
        )?
        .i64(0)?
        .max(0) as u64)
}

pub fn disable_totp(tx: &mut Tx, user_id: i64) -> Result<()> {
    tx.exec(
        "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_last_step = NULL WHERE id = $1",
        args![user_id],
    )?;
    tx.exec(
        "DELETE FROM recovery_codes WHERE user_id = $1",
        args![user_id],
    )?;
    Ok(())
}

// ---------- devices and approvals ----------

#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub user_id: i64,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_used: Option<OffsetDateTime>,
}

const DEVICE_COLS: &str = "d.id, d.user_id, d.name, d.created_at, d.last_used";

fn device_row(r: &super::Row) -> Result<Device> {
    Ok(Device {
        id: r.text(0)?,
        user_id: r.i64(1)?,
        name: r.text(2)?,
        created_at: from_millis(r.i64(3)?),
        last_used: r.opt_i64(4)?.map(from_millis),
    })
}

pub fn insert_device(
    tx: &mut Tx,
    id: &str,
    user_id: i64,
    name: &str,
    cred_hash: &[u8],
    now: OffsetDateTime,
) -> Result<()> {
    tx.exec(
        "INSERT INTO devices(id, user_id, name, cred_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        args![id, user_id, name, cred_hash, millis(now)],
    )?;
    Ok(())
}

/// The device of `user_id` whose credential hashes to `hash`.
pub fn device_by_credential(tx: &mut Tx, user_id: i64, hash: &[u8]) -> Result<Option<Device>> {
    tx.query_opt(
        &format!("SELECT {DEVICE_COLS} FROM devices d WHERE d.cred_hash = $1 AND d.user_id = $2"),
        args![hash, user_id],
    )?
    .map(|r| device_row(&r))
    .transpose()
}

pub fn touch_device(tx: &mut Tx, id: &str, now: OffsetDateTime) -> Result<()> {
    tx.exec(
        "UPDATE devices SET last_used = $1 WHERE id = $2",
        args![millis(now), id],
    )?;
    Ok(())
}

/// One of `user_id`'s devices; another account's device is not found.
pub fn user_device(tx: &mut Tx, user_id: i64, id: &str) -> Result<Option<Device>> {
    tx.query_opt(
        &format!("SELECT {DEVICE_COLS} FROM devices d WHERE d.id = $1 AND d.user_id = $2"),
        args![id, user_id],
    )?
    .map(|r| device_row(&r))
    .transpose()
}

pub fn user_devices(tx: &mut Tx, user_id: i64) -> Result<Vec<Device>> {
    tx.query(
        &format!(
            "SELECT {DEVICE_COLS} FROM devices d WHERE d.user_id = $1 ORDER BY d.created_at, d.id"
        ),
        args![user_id],
    )?
    .iter()
    .map(device_row)
    .collect()
}

pub fn rename_device(tx: &mut Tx, id: &str, name: &str) -> Result<()> {
    tx.exec(
        "UPDATE devices SET name = $1 WHERE id = $2",
        args![name, id],
    )?;
    Ok(())
}

/// Deletes a device with its approvals and logins. End its admissions
/// first ([`device_admissions`]).
pub fn delete_device(tx: &mut Tx, id: &str) -> Result<()> {
    tx.exec("DELETE FROM tokens WHERE device_id = $1", args![id])?;
    tx.exec("DELETE FROM devices WHERE id = $1", args![id])?;
    Ok(())
}

pub fn set_admission_device(tx: &mut Tx, admission_id: &str, device_id: &str) -> Result<()> {
    tx.exec(
        "UPDATE admissions SET device_id = $1 WHERE id = $2",
        args![device_id, admission_id],
    )?;
    Ok(())
}

pub fn device_admissions(tx: &mut Tx, device_id: &str) -> Result<Vec<Admission>> {
    admissions_where(
        tx,
        "WHERE a.device_id = $1 ORDER BY a.created_at, a.id",
        args![device_id],
    )
}

/// Where a device stands with a server that approves new devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    Pending,
    Approved,
    Denied,
}

impl Approval {
    fn parse(s: &str) -> Approval {
        match s {
            "approved" => Approval::Approved,
            "denied" => Approval::Denied,
            _ => Approval::Pending,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::Pending => "pending",
            Approval::Approved => "approved",
            Approval::Denied => "denied",
        }
    }
}

/// The device's standing with the server; a first request records it as
/// pending (returns `(Pending, true)` then), unless `max_pending` devices
/// wait for that server's owner already.
pub fn request_approval(
    tx: &mut Tx,
    device_id: &str,
    server_id: i64,
    now: OffsetDateTime,
    max_pending: u32,
) -> Result<(Approval, bool)> {
    let state_of = |tx: &mut Tx| -> Result<Option<Approval>> {
        tx.query_opt(
            "SELECT state FROM device_approvals WHERE device_id = $1 AND server_id = $2",
            args![device_id, server_id],
        )?
        .map(|r| r.text(0).map(|s| Approval::parse(&s)))
        .transpose()
    };
    if let Some(state) = state_of(tx)? {
        return Ok((state, false));
    }
    super::lock_server(tx, server_id)?;
    crate::limits::check(
        "pending-devices-per-server",
        max_pending,
        count_pending_approvals(tx, server_id)?,
        "the devices waiting for this server's owner",
        "ask the owner to approve or deny the waiting ones, then try again",
    )?;
    let inserted = tx.exec(
        "INSERT INTO device_approvals(device_id, server_id, state, requested_at)
         VALUES ($1, $2, 'pending', $3) ON CONFLICT(device_id, server_id) DO NOTHING",
        args![device_id, server_id, millis(now)],
    )? > 0;
    let state = state_of(tx)?.unwrap_or(Approval::Pending);
    Ok((state, inserted))
}

/// A device waiting for (or decided by) a server's owner.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    pub device_id: String,
    pub device_name: String,
    pub username: String,
    pub user_id: i64,
    pub state: Approval,
    pub requested_at: OffsetDateTime,
    pub decided_at: Option<OffsetDateTime>,
}

fn device_request_row(r: &super::Row) -> Result<DeviceRequest> {
    Ok(DeviceRequest {
        device_id: r.text(0)?,
        device_name: r.text(1)?,
        username: r.text(2)?,
        user_id: r.i64(3)?,
        state: Approval::parse(&r.text(4)?),
        requested_at: from_millis(r.i64(5)?),
        decided_at: r.opt_i64(6)?.map(from_millis),
    })
}

const DEVICE_REQUEST_SELECT: &str =
    "SELECT d.id, d.name, u.username, u.id, p.state, p.requested_at, p.decided_at
     FROM device_approvals p JOIN devices d ON d.id = p.device_id JOIN users u ON u.id = d.user_id";

pub fn server_device_requests(tx: &mut Tx, server_id: i64) -> Result<Vec<DeviceRequest>> {
    tx.query(
        &format!("{DEVICE_REQUEST_SELECT} WHERE p.server_id = $1 ORDER BY p.requested_at, d.id"),
        args![server_id],
    )?
    .iter()
    .map(device_request_row)
    .collect()
}

/// Records the owner's decision on a device that asked for the server;
/// the request as it was, or `None` if that device never asked there.
pub fn decide_approval(
    tx: &mut Tx,
    server_id: i64,
    device_id: &str,
    approve: bool,
    now: OffsetDateTime,
) -> Result<Option<DeviceRequest>> {
    let Some(req) = tx
        .query_opt(
            &format!("{DEVICE_REQUEST_SELECT} WHERE p.server_id = $1 AND p.device_id = $2"),
            args![server_id, device_id],
        )?
        .map(|r| device_request_row(&r))
        .transpose()?
    else {
        return Ok(None);
    };
    tx.exec(
        "UPDATE device_approvals SET state = $1, decided_at = $2 WHERE server_id = $3 AND device_id = $4",
        args![
            if approve { "approved" } else { "denied" },
            millis(now),
            server_id,
            device_id
        ],
    )?;
    Ok(Some(req))
}

/// The names of the servers an account owns.
pub fn owned_server_names(tx: &mut Tx, owner_id: i64) -> Result<Vec<String>> {
    tx.query(
        "SELECT name FROM servers WHERE owner_id = $1 ORDER BY name",
        args![owner_id],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

/// The account's name, for messages ("waiting for alice to approve").
pub fn username_of(tx: &mut Tx, user_id: i64) -> Result<Option<String>> {
    tx.query_opt("SELECT username FROM users WHERE id = $1", args![user_id])?
        .map(|r| r.text(0))
        .transpose()
}

// ---------- an account's logins (sessions) ----------

/// A live login of an account. Tokens have no id of their own: the
/// first bytes of the stored hash name one (a hash of a hash reveals
/// nothing of the token).
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub token_hash: Vec<u8>,
    pub expires_at: OffsetDateTime,
    pub mfa: bool,
    pub device_id: Option<String>,
}

pub fn user_sessions(tx: &mut Tx, user_id: i64, now: OffsetDateTime) -> Result<Vec<LiveSession>> {
    tx.query(
        "SELECT token_hash, expires_at, mfa, device_id FROM tokens
         WHERE user_id = $1 AND expires_at > $2 ORDER BY expires_at DESC",
        args![user_id, millis(now)],
    )?
    .iter()
    .map(|r| {
        Ok(LiveSession {
            token_hash: r.opt_bytes(0)?.unwrap_or_default(),
            expires_at: from_millis(r.i64(1)?),
            mfa: r.bool(2)?,
            device_id: r.opt_text(3)?,
        })
    })
    .collect()
}

/// Ends one login of an account; false if it had no such login.
pub fn delete_user_token(tx: &mut Tx, user_id: i64, hash: &[u8]) -> Result<bool> {
    Ok(tx.exec(
        "DELETE FROM tokens WHERE user_id = $1 AND token_hash = $2",
        args![user_id, hash],
    )? > 0)
}

/// (admission id, device name) of a server's admissions that came from
/// a registered device (the owner's console shows who watches on what).
pub fn server_admission_devices(tx: &mut Tx, server: &str) -> Result<Vec<(String, String)>> {
    tx.query(
        "SELECT a.id, d.name FROM admissions a
         JOIN devices d ON d.id = a.device_id
         JOIN servers s ON s.id = a.server_id
         WHERE s.name = $1",
        args![server],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?)))
    .collect()
}

// ---------- what the operator's limits count ----------

/// Serializes changes to one account's counted things across replicas
/// (PostgreSQL runs at READ COMMITTED: two logins counting the same
/// devices at once would both see room). SQLite has one writer anyway.
pub fn lock_user(tx: &mut Tx, user_id: i64) -> Result<()> {
    if tx.engine() == super::Engine::Postgres {
        tx.query_opt(
            "SELECT id FROM users WHERE id = $1 FOR UPDATE",
            args![user_id],
        )?;
    }
    Ok(())
}

fn count(tx: &mut Tx, sql: &str, args: &[super::Value<'_>]) -> Result<i64> {
    tx.query_one(sql, args)?.i64(0)
}

pub fn count_owned_servers(tx: &mut Tx, owner_id: i64) -> Result<i64> {
    count(
        tx,
        "SELECT COUNT(*) FROM servers WHERE owner_id = $1",
        args![owner_id],
    )
}

pub fn count_grants(tx: &mut Tx, server_id: i64) -> Result<i64> {
    count(
        tx,
        "SELECT COUNT(*) FROM grants WHERE server_id = $1",
        args![server_id],
    )
}

/// Forgets the expired invitations of one server (`None`: the
/// operator's) and counts the live ones. Expired links are otherwise
/// kept until the expiry task's next sweep, and must not count against the
/// limit.
pub fn live_invitations(tx: &mut Tx, server_id: Option<i64>, now: OffsetDateTime) -> Result<i64> {
    match server_id {
        Some(id) => {
            tx.exec(
                "DELETE FROM invitations WHERE server_id = $1 AND expires_at <= $2",
                args![id, millis(now)],
            )?;
            count(
                tx,
                "SELECT COUNT(*) FROM invitations WHERE server_id = $1",
                args![id],
            )
        }
        None => {
            tx.exec(
                "DELETE FROM invitations WHERE server_id IS NULL AND expires_at <= $1",
                args![millis(now)],
            )?;
            count(
                tx,
                "SELECT COUNT(*) FROM invitations WHERE server_id IS NULL",
                args![],
            )
        }
    }
}

/// Forgets every expired invitation link (the periodic sweep).
pub fn purge_invitations(tx: &mut Tx, now: OffsetDateTime) -> Result<u64> {
    tx.exec(
        "DELETE FROM invitations WHERE expires_at <= $1",
        args![millis(now)],
    )
}

pub fn count_devices(tx: &mut Tx, user_id: i64) -> Result<i64> {
    count(
        tx,
        "SELECT COUNT(*) FROM devices WHERE user_id = $1",
        args![user_id],
    )
}

pub fn count_pending_approvals(tx: &mut Tx, server_id: i64) -> Result<i64> {
    count(
        tx,
        "SELECT COUNT(*) FROM device_approvals WHERE server_id = $1 AND state = 'pending'",
        args![server_id],
    )
}

pub fn count_live_enrollment_tokens(
    tx: &mut Tx,
    server_id: i64,
    now: OffsetDateTime,
) -> Result<i64> {
    count(
        tx,
        "SELECT COUNT(*) FROM enrollment_tokens WHERE server_id = $1 AND expires_at > $2",
        args![server_id, millis(now)],
    )
}

/// Makes room for one more login of `user_id` under `max`: its expired
/// logins are forgotten, then its oldest live ones end (how many ended).
pub fn make_room_for_session(
    tx: &mut Tx,
    user_id: i64,
    max: u32,
    now: OffsetDateTime,
) -> Result<u64> {
    tx.exec(
        "DELETE FROM tokens WHERE user_id = $1 AND expires_at <= $2",
        args![user_id, millis(now)],
    )?;
    let live = count(
        tx,
        "SELECT COUNT(*) FROM tokens WHERE user_id = $1",
        args![user_id],
    )?;
    let excess = live - i64::from(max) + 1;
    if excess <= 0 {
        return Ok(0);
    }
    // Every login lives as long (the token ttl), so the soonest to
    // expire is the oldest.
    tx.exec(
        "DELETE FROM tokens WHERE token_hash IN (
            SELECT token_hash FROM tokens WHERE user_id = $1
            ORDER BY expires_at, token_hash LIMIT $2)",
        args![user_id, excess],
    )
}

// ---------- removed devices ----------

/// How many removed devices of one account are remembered.
const REMOVED_DEVICES_KEPT: usize = 64;

fn removed_devices_key(user_id: i64) -> String {
    format!("removed_devices:{user_id}")
}

/// The credential hash of one of `user_id`'s devices.
pub fn device_credential_hash(tx: &mut Tx, user_id: i64, id: &str) -> Result<Option<Vec<u8>>> {
    tx.query_opt(
        "SELECT cred_hash FROM devices WHERE id = $1 AND user_id = $2",
        args![id, user_id],
    )?
    .map(|r| r.opt_bytes(0).map(Option::unwrap_or_default))
    .transpose()
}

/// Remembers that the device whose credential hashes to `hash` was
/// removed, so that its client is told so (`device_removed`) instead of
/// registering itself again: re-registration is for a control plane that
/// forgot a device, not for undoing its owner's removal. The last
/// [`REMOVED_DEVICES_KEPT`] per account are kept, in the settings table
/// (a list per account, not a table of its own: no schema change for a
/// bounded list).
pub fn remember_removed_device(tx: &mut Tx, user_id: i64, hash: &[u8]) -> Result<()> {
    let key = removed_devices_key(user_id);
    let mut list = super::setting(tx, &key)?.unwrap_or_default();
    list.extend_from_slice(hash);
    let keep = REMOVED_DEVICES_KEPT * 32;
    if list.len() > keep {
        list.drain(..list.len() - keep);
    }
    super::set_setting(tx, &key, &list)
}

/// Whether `user_id` removed the device whose credential hashes to `hash`.
pub fn device_was_removed(tx: &mut Tx, user_id: i64, hash: &[u8]) -> Result<bool> {
    Ok(super::setting(tx, &removed_devices_key(user_id))?
        .unwrap_or_default()
        .chunks(32)
        .any(|h| h == hash))
}

/// Forgets an account's removed devices (with the account).
pub fn forget_removed_devices(tx: &mut Tx, user_id: i64) -> Result<()> {
    tx.exec(
        "DELETE FROM settings WHERE key = $1",
        args![removed_devices_key(user_id)],
    )?;
    Ok(())
}
