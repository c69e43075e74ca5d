//! How much one account may make the control plane keep (invariant 6:
//! no tenant can grow its state without bound). Each limit is an
//! operator setting (`hushgate control --limit NAME=N`, the config key
//! `limit`), checked in the transaction that would exceed it, which then
//! changes nothing and answers 409 `limit_reached` naming the limit and
//! its value.
//!
//! Logins are the one kind that is not refused: a user's new login ends
//! their oldest one instead (see [`Limits::sessions_per_user`]), because
//! a person locked out of their own account by their forgotten sessions
//! could do nothing about it.

use crate::store::{self, StoreError, Tx};
use time::OffsetDateTime;

/// The limits; see [`LIMITS`] for what each bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Servers one account registers (the operator's own servers are not
    /// counted: `hushgate admin server add`).
    pub servers_per_owner: u32,
    /// Shares (grants) of one server.
    pub shares_per_server: u32,
    /// Live invitation links of one server.
    pub invitations_per_server: u32,
    /// The operator's live invitations to create an account.
    pub account_invitations: u32,
    /// Devices registered by one account.
    pub devices_per_user: u32,
    /// Logins (tokens) of one account alive at once; the oldest ends when
    /// a new one would exceed it.
    pub sessions_per_user: u32,
    /// Devices waiting for an owner's approval on one server.
    pub pending_devices_per_server: u32,
    /// Live enrollment tokens of one server.
    pub enrollment_tokens_per_server: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            servers_per_owner: 20,
            shares_per_server: 200,
            invitations_per_server: 50,
            account_invitations: 200,
            devices_per_user: 20,
            sessions_per_user: 20,
            pending_devices_per_server: 20,
            enrollment_tokens_per_server: 10,
        }
    }
}

/// One limit: its name (for `--limit NAME=N`, the config key and the
/// error), what it bounds, and where it lives in [`Limits`].
pub type LimitSpec = (&'static str, &'static str, fn(&mut Limits) -> &mut u32);

/// Every limit.
pub const LIMITS: &[LimitSpec] = &[
    ("servers-per-owner", "servers one account registers", |l| {
        &mut l.servers_per_owner
    }),
    (
        "shares-per-server",
        "accounts one server is shared with",
        |l| &mut l.shares_per_server,
    ),
    (
        "invitations-per-server",
        "live invitation links of one server",
        |l| &mut l.invitations_per_server,
    ),
    (
        "account-invitations",
        "the operator's live invitations to create an account",
        |l| &mut l.account_invitations,
    ),
    ("devices-per-user", "devices one account registers", |l| {
        &mut l.devices_per_user
    }),
    (
        "sessions-per-user",
        "logins of one account alive at once (a new one ends the oldest)",
        |l| &mut l.sessions_per_user,
    ),
    (
        "pending-devices-per-server",
        "devices waiting for the owner's approval on one server",
        |l| &mut l.pending_devices_per_server,
    ),
    (
        "enrollment-tokens-per-server",
        "live enrollment tokens of one server",
        |l| &mut l.enrollment_tokens_per_server,
    ),
];

impl Limits {
    /// Applies `NAME=N` (N from 1 to 1,000,000).
    pub fn set(&mut self, setting: &str) -> Result<(), String> {
        let known = || {
            LIMITS
                .iter()
                .map(|(n, _, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(format!(
                "'{setting}' is not NAME=N; the limits are: {}",
                known()
            ));
        };
        let Some((_, _, field)) = LIMITS.iter().find(|(n, _, _)| *n == name.trim()) else {
            return Err(format!(
                "there is no limit '{}'; the limits are: {}",
                name.trim(),
                known()
            ));
        };
        let n: u32 = value
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| {
                format!(
                    "limit {}: '{}' is not a number from 1 to 1000000",
                    name.trim(),
                    value.trim()
                )
            })?;
        *field(self) = n;
        Ok(())
    }

    /// The value of the limit `name`.
    pub fn get(&self, name: &str) -> Option<u32> {
        let mut copy = *self;
        LIMITS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, field)| *field(&mut copy))
    }
}

/// Refuses a change that would take `count` (what exists now) past
/// `max`; `what` and `advice` make the sentence ("you have 20 devices;
/// remove one first").
pub fn check(
    name: &'static str,
    max: u32,
    count: i64,
    what: &str,
    advice: &str,
) -> Result<(), StoreError> {
    if count < i64::from(max) {
        return Ok(());
    }
    Err(StoreError::Limit {
        name,
        max: u64::from(max),
        message: format!("{what} reached this control plane's limit of {max} ({name}); {advice}"),
    })
}

/// Registers a device of `user_id` within `devices-per-user`: every way
/// of registering a device (a login, a sign-in by code) goes through here.
pub fn add_device(
    tx: &mut Tx,
    limits: &Limits,
    (id, name, cred_hash): (&str, &str, &[u8]),
    user_id: i64,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    store::lock_user(tx, user_id)?;
    check(
        "devices-per-user",
        limits.devices_per_user,
        store::count_devices(tx, user_id)?,
        "your registered devices",
        "remove one you no longer use first (hushgate account devices)",
    )?;
    store::insert_device(tx, id, user_id, name, cred_hash, now)
}

/// Stores a login of `user_id`, ending its oldest logins beyond
/// `sessions-per-user` (how many ended): every way of logging in goes
/// through here.
pub fn add_session(
    tx: &mut Tx,
    limits: &Limits,
    (token_hash, user_id): (&[u8], i64),
    expires_at: OffsetDateTime,
    session: &store::Session,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    store::lock_user(tx, user_id)?;
    let ended = store::make_room_for_session(tx, user_id, limits.sessions_per_user, now)?;
    store::insert_session_token(tx, token_hash, user_id, expires_at, session)?;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_set_by_name_and_bad_settings_say_why() {
        let mut l = Limits::default();
        l.set("devices-per-user=3").unwrap();
        assert_eq!(l.devices_per_user, 3);
        assert_eq!(l.get("devices-per-user"), Some(3));
        assert_eq!(l.get("servers-per-owner"), Some(20));
        let e = l.set("devices=3").unwrap_err();
        assert!(
            e.contains("no limit 'devices'") && e.contains("devices-per-user"),
            "{e}"
        );
        assert!(l.set("devices-per-user=0").unwrap_err().contains("1 to"));
        assert!(l.set("devices-per-user").unwrap_err().contains("NAME=N"));
        // Every limit has a name that sets it.
        for (name, _, _) in LIMITS {
            let mut l = Limits::default();
            l.set(&format!("{name}=7")).unwrap();
            assert_eq!(l.get(name), Some(7), "{name}");
        }
    }

    #[test]
    fn the_check_refuses_at_the_limit_and_names_it() {
        assert!(check("devices-per-user", 2, 1, "x", "y").is_ok());
        match check("devices-per-user", 2, 2, "your devices", "remove one") {
            Err(StoreError::Limit { name, max, message }) => {
                assert_eq!((name, max), ("devices-per-user", 2));
                assert!(
                    message.contains("limit of 2 (devices-per-user)"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
