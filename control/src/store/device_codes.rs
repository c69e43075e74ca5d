//! The queries of sign-in by code (see `crate::device_code`): pending
//! codes, their decision, their single use. Both codes are stored as
//! SHA-256 hashes only; times are the control plane's clock in
//! milliseconds, so tests move them.
//!
//! Every change of a code's state is one conditional `UPDATE ... WHERE
//! state = ...`: two approvals, or two polls after an approval, racing on
//! either engine, change it once; the loser sees zero rows changed.

use super::{Result, Tx};
use crate::args;

/// Where a code is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    /// Shown on the device, not decided yet.
    Pending,
    /// A user approved it; the next poll gets the credential.
    Approved,
    /// A user denied it; the next poll hears so.
    Denied,
    /// Over: the credential was handed out, or the denial told.
    Used,
}

impl CodeState {
    fn as_str(self) -> &'static str {
        match self {
            CodeState::Pending => "pending",
            CodeState::Approved => "approved",
            CodeState::Denied => "denied",
            CodeState::Used => "used",
        }
    }

    fn parse(s: &str) -> CodeState {
        match s {
            "pending" => CodeState::Pending,
            "approved" => CodeState::Approved,
            "denied" => CodeState::Denied,
            // Anything unknown is treated as over: never hands anything out.
            _ => CodeState::Used,
        }
    }
}

/// One device code as stored.
#[derive(Debug, Clone)]
pub struct DeviceCodeRow {
    pub id: String,
    pub device_name: String,
    /// Where the device asked from (shown to the approving user).
    pub source: String,
    pub expires_at_ms: i64,
    pub interval_ms: i64,
    pub last_poll_ms: Option<i64>,
    pub state: CodeState,
    /// Who decided it.
    pub user_id: Option<i64>,
    /// The approving session used a second factor.
    pub mfa: bool,
}

const COLS: &str =
    "id, device_name, source, expires_at, interval_ms, last_poll, state, user_id, mfa";

fn row(r: &super::Row) -> Result<DeviceCodeRow> {
    Ok(DeviceCodeRow {
        id: r.text(0)?,
        device_name: r.text(1)?,
        source: r.text(2)?,
        expires_at_ms: r.i64(3)?,
        interval_ms: r.i64(4)?,
        last_poll_ms: r.opt_i64(5)?,
        state: CodeState::parse(&r.text(6)?),
        user_id: r.opt_i64(7)?,
        mfa: r.bool(8)?,
    })
}

/// What a new code is stored with.
#[derive(Debug)]
pub struct NewDeviceCode<'a> {
    pub id: &'a str,
    pub device_hash: &'a [u8],
    pub user_hash: &'a [u8],
    pub device_name: &'a str,
    pub source: &'a str,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    pub interval_ms: i64,
}

/// Stores a new pending code. `false` if its user code's hash is taken
/// (a code still remembered has it): the caller draws another.
pub fn insert_device_code(tx: &mut Tx, c: &NewDeviceCode<'_>) -> Result<bool> {
    let n = tx.exec(
        "INSERT INTO device_codes(id, device_hash, user_hash, device_name, source, created_at, expires_at, interval_ms, state, mfa)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)
         ON CONFLICT DO NOTHING",
        args![
            c.id,
            c.device_hash,
            c.user_hash,
            c.device_name,
            c.source,
            c.now_ms,
            c.expires_at_ms,
            c.interval_ms,
            false
        ],
    )?;
    Ok(n == 1)
}

/// How many codes the store holds (live, or expired and still remembered).
pub fn count_device_codes(tx: &mut Tx) -> Result<i64> {
    match tx.query_opt("SELECT COUNT(*) FROM device_codes", args![])? {
        Some(r) => r.i64(0),
        None => Ok(0),
    }
}

/// Forgets codes that expired before `before_ms` (kept a while after
/// expiry so a late poll hears `expired_token` rather than "unknown").
pub fn sweep_device_codes(tx: &mut Tx, before_ms: i64) -> Result<u64> {
    tx.exec(
        "DELETE FROM device_codes WHERE expires_at < $1",
        args![before_ms],
    )
}

pub fn device_code_by_device_hash(tx: &mut Tx, hash: &[u8]) -> Result<Option<DeviceCodeRow>> {
    tx.query_opt(
        &format!("SELECT {COLS} FROM device_codes WHERE device_hash = $1"),
        args![hash],
    )?
    .map(|r| row(&r))
    .transpose()
}

pub fn device_code_by_user_hash(tx: &mut Tx, hash: &[u8]) -> Result<Option<DeviceCodeRow>> {
    tx.query_opt(
        &format!("SELECT {COLS} FROM device_codes WHERE user_hash = $1"),
        args![hash],
    )?
    .map(|r| row(&r))
    .transpose()
}

/// Records a poll at `now_ms` and the interval the device must keep from
/// now on.
pub fn record_device_code_poll(tx: &mut Tx, id: &str, now_ms: i64, interval_ms: i64) -> Result<()> {
    tx.exec(
        "UPDATE device_codes SET last_poll = $1, interval_ms = $2 WHERE id = $3",
        args![now_ms, interval_ms, id],
    )?;
    Ok(())
}

/// Decides a pending, unexpired code for `user_id`; `false` if it was not
/// pending any more (decided, used, or expired meanwhile).
pub fn decide_device_code(
    tx: &mut Tx,
    id: &str,
    approve: bool,
    user_id: i64,
    mfa: bool,
    now_ms: i64,
) -> Result<bool> {
    let to = if approve {
        CodeState::Approved
    } else {
        CodeState::Denied
    };
    let n = tx.exec(
        "UPDATE device_codes SET state = $1, user_id = $2, mfa = $3, decided_at = $4
         WHERE id = $5 AND state = 'pending' AND expires_at > $4",
        args![to.as_str(), user_id, mfa, now_ms, id],
    )?;
    Ok(n == 1)
}

/// Ends a code that was `from`: `false` if another request ended it
/// first (a second poll racing the first one after the approval).
pub fn finish_device_code(tx: &mut Tx, id: &str, from: CodeState) -> Result<bool> {
    let n = tx.exec(
        "UPDATE device_codes SET state = 'used' WHERE id = $1 AND state = $2",
        args![id, from.as_str()],
    )?;
    Ok(n == 1)
}

/// Marks a device (made by a code sign-in) as one whose credential signs
/// in alone, with the approving session's second factor.
pub fn allow_device_sign_in(tx: &mut Tx, device_id: &str, mfa: bool) -> Result<()> {
    tx.exec(
        "UPDATE devices SET sign_in = $1, sign_in_mfa = $2 WHERE id = $3",
        args![true, mfa, device_id],
    )?;
    Ok(())
}

/// The account's devices sign in alone no more (a password change), but
/// `keep` (the device of the session that changed it).
pub fn end_device_sign_ins(tx: &mut Tx, user_id: i64, keep: Option<&str>) -> Result<u64> {
    tx.exec(
        "UPDATE devices SET sign_in = $1 WHERE user_id = $2 AND id <> $3",
        args![false, user_id, keep.unwrap_or("")],
    )
}

/// The device whose credential hashes to `hash`, if it may sign in alone:
/// (device id, name, its user's id, whether its sessions count as two
/// factors).
pub fn sign_in_device(tx: &mut Tx, hash: &[u8]) -> Result<Option<(String, String, i64, bool)>> {
    tx.query_opt(
        "SELECT id, name, user_id, sign_in_mfa FROM devices WHERE cred_hash = $1 AND sign_in = $2",
        args![hash, true],
    )?
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.i64(2)?, r.bool(3)?)))
    .transpose()
}
