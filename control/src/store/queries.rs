//! Every query of the control plane, written once for both engines (see
//! the module docs of `store` for the SQL both accept and how to add one).

use super::{Engine, Result, Row, StoreError, Tx};
use crate::args;
use crate::live_feeds::Event;
use proto::api::{AccessMode, AuditEntry, ServiceInfo};
use proto::feed::FeedAdmission;
use proto::{BindingPolicy, WgKey};
use std::net::{IpAddr, Ipv4Addr};
use time::OffsetDateTime;

/// Inner addresses: the gateway is .0.1 of this /16, clients from .0.2 up.
pub const TUNNEL_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
pub const SERVICE_INDEX: u32 = 1;
pub const MAX_TUNNEL_INDEX: u32 = 65_534;
/// How many client tunnel addresses a server has (65,533).
pub const TUNNEL_ADDRESSES: u32 = MAX_TUNNEL_INDEX - SERVICE_INDEX;

/// Default for `servers.max_admissions_per_user`.
pub const DEFAULT_MAX_ADMISSIONS_PER_USER: u32 = 8;

/// How many versions of history the incremental feed keeps per server: a
/// gateway further behind than this gets the whole set.
pub const FEED_HISTORY: u64 = 4096;

pub fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// ---------- settings ----------

pub fn setting(tx: &mut Tx, key: &str) -> Result<Option<Vec<u8>>> {
    tx.query_opt("SELECT value FROM settings WHERE key = $1", args![key])?
        .map(|r| r.opt_bytes(0).map(Option::unwrap_or_default))
        .transpose()
}

pub fn set_setting(tx: &mut Tx, key: &str, value: &[u8]) -> Result<()> {
    tx.exec(
        "INSERT INTO settings(key, value) VALUES ($1, $2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        args![key, value],
    )?;
    Ok(())
}

/// Stores `value` under `key` unless the key holds something already;
/// returns what the key holds afterwards. Replicas starting at once agree
/// on the first value written.
pub fn setting_or_insert(tx: &mut Tx, key: &str, value: &[u8]) -> Result<Vec<u8>> {
    tx.exec(
        "INSERT INTO settings(key, value) VALUES ($1, $2) ON CONFLICT(key) DO NOTHING",
        args![key, value],
    )?;
    Ok(setting(tx, key)?.unwrap_or_default())
}

// ---------- users and tokens ----------

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub pw_hash: String,
    pub admin: bool,
    pub created_at: OffsetDateTime,
    /// A confirmed TOTP secret exists: login needs a code.
    pub totp: bool,
}

pub(super) fn user_row(r: &Row) -> Result<User> {
    Ok(User {
        id: r.i64(0)?,
        username: r.text(1)?,
        pw_hash: r.text(2)?,
        admin: r.bool(3)?,
        created_at: from_millis(r.i64(4)?),
        totp: r.bool(5)?,
    })
}

pub(super) const USER_COLS: &str =
    "u.id, u.username, u.pw_hash, u.admin, u.created_at, u.totp_secret IS NOT NULL";

pub fn create_user(
    tx: &mut Tx,
    username: &str,
    pw_hash: &str,
    admin: bool,
    now: OffsetDateTime,
) -> Result<User> {
    if user_by_name(tx, username)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a user named '{username}' already exists"
        )));
    }
    tx.exec(
        "INSERT INTO users(username, pw_hash, admin, created_at) VALUES ($1, $2, $3, $4)",
        args![username, pw_hash, admin, millis(now)],
    )?;
    user_by_name(tx, username)?.ok_or_else(|| StoreError::NotFound("user vanished".into()))
}

pub fn user_by_name(tx: &mut Tx, username: &str) -> Result<Option<User>> {
    tx.query_opt(
        &format!("SELECT {USER_COLS} FROM users u WHERE u.username = $1"),
        args![username],
    )?
    .map(|r| user_row(&r))
    .transpose()
}

pub fn list_users(tx: &mut Tx) -> Result<Vec<User>> {
    tx.query(
        &format!("SELECT {USER_COLS} FROM users u ORDER BY u.username"),
        args![],
    )?
    .iter()
    .map(user_row)
    .collect()
}

/// Deletes a user with their tokens and grants. End their admissions
/// first ([`delete_admission`]); any left are removed here too, their
/// tunnel addresses freed.
pub fn delete_user(tx: &mut Tx, user_id: i64) -> Result<()> {
    for a in user_server_admissions(tx, user_id, None)? {
        remove_admission_row(tx, &a)?;
    }
    super::forget_removed_devices(tx, user_id)?;
    tx.exec("DELETE FROM users WHERE id = $1", args![user_id])?;
    Ok(())
}

pub fn insert_token(tx: &mut Tx, hash: &[u8], user_id: i64, expires: OffsetDateTime) -> Result<()> {
    tx.exec(
        "INSERT INTO tokens(token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        args![hash, user_id, millis(expires)],
    )?;
    Ok(())
}

/// The user a bearer token belongs to, if the token exists and is live.
pub fn token_user(tx: &mut Tx, hash: &[u8], now: OffsetDateTime) -> Result<Option<User>> {
    tx.query_opt(
        &format!(
            "SELECT {USER_COLS} FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1 AND t.expires_at > $2"
        ),
        args![hash, millis(now)],
    )?
    .map(|r| user_row(&r))
    .transpose()
}

/// Forgets expired login and enrollment tokens.
pub fn purge_tokens(tx: &mut Tx, now: OffsetDateTime) -> Result<u64> {
    Ok(tx.exec(
        "DELETE FROM tokens WHERE expires_at <= $1",
        args![millis(now)],
    )? + tx.exec(
        "DELETE FROM enrollment_tokens WHERE expires_at <= $1",
        args![millis(now)],
    )?)
}

/// Ends every login of a user (after a password change).
pub fn delete_user_tokens(tx: &mut Tx, user_id: i64) -> Result<u64> {
    tx.exec("DELETE FROM tokens WHERE user_id = $1", args![user_id])
}

pub fn set_password_hash(tx: &mut Tx, user_id: i64, pw_hash: &str) -> Result<()> {
    tx.exec(
        "UPDATE users SET pw_hash = $1 WHERE id = $2",
        args![pw_hash, user_id],
    )?;
    Ok(())
}

// ---------- servers ----------

#[derive(Debug, Clone)]
pub struct Server {
    pub id: i64,
    pub name: String,
    pub binding: BindingPolicy,
    pub ttl_secs: u64,
    pub enrolled: bool,
    pub gateway_key: Option<WgKey>,
    pub endpoint: Option<std::net::SocketAddr>,
    pub services: Vec<ServiceInfo>,
    pub direct_services: Vec<ServiceInfo>,
    pub version: u64,
    /// Live admissions one user may hold on this server at once.
    pub max_admissions_per_user: u32,
    /// The gateway's last network report and where it came from (issue 17).
    pub network: Option<crate::reachability::StoredNetwork>,
    /// The last reachability check of its endpoint (issue 17).
    pub reachability: Option<proto::reach::Reachability>,
    /// The one-off admission of a reachability check in progress, on
    /// whichever replica runs it (issue 17; see `begin_probe`).
    pub probe: Option<FeedAdmission>,
    /// The account that registered it and shares it; `None` for a server
    /// the operator registered (`hushgate admin`), which only the
    /// operator manages.
    pub owner_id: Option<i64>,
    /// Whether the owner allows direct (firewall-only) admissions at all;
    /// a share's `direct` counts only when this is on.
    pub direct_mode: bool,
    /// Access needs a login that used a second factor (TOTP).
    pub require_2fa: bool,
    /// Each device's first access waits for the owner's approval.
    pub approve_devices: bool,
}

pub(super) const SERVER_COLS: &str =
    "id, name, binding, ttl_secs, cred_hash IS NOT NULL, gateway_key, endpoint, services, direct_services, version, max_admissions_per_user, network, reachability, probe, owner_id, direct_mode, require_2fa, approve_devices";
/// How many columns [`SERVER_COLS`] names (a query may select more after them).
pub(super) const SERVER_COLS_COUNT: usize = 18;

pub(super) fn server_row(r: &Row) -> Result<Server> {
    Ok(Server {
        id: r.i64(0)?,
        name: r.text(1)?,
        binding: r.text(2)?.parse().unwrap_or_default(),
        ttl_secs: count(r.i64(3)?),
        enrolled: r.bool(4)?,
        gateway_key: r.opt_text(5)?.and_then(|k| k.parse().ok()),
        endpoint: r.opt_text(6)?.and_then(|e| e.parse().ok()),
        services: serde_json::from_str(&r.text(7)?).unwrap_or_default(),
        direct_services: serde_json::from_str(&r.text(8)?).unwrap_or_default(),
        version: count(r.i64(9)?),
        max_admissions_per_user: r.i64(10)?.clamp(0, i64::from(u32::MAX)) as u32,
        network: r.opt_text(11)?.and_then(|t| serde_json::from_str(&t).ok()),
        reachability: r.opt_text(12)?.and_then(|t| serde_json::from_str(&t).ok()),
        probe: r.opt_text(13)?.and_then(|t| serde_json::from_str(&t).ok()),
        owner_id: r.opt_i64(14)?,
        direct_mode: r.bool(15)?,
        require_2fa: r.bool(16)?,
        approve_devices: r.bool(17)?,
    })
}

/// Registers a server; its gateway enrolls with a token from
/// [`insert_enrollment_token`].
pub fn create_server(
    tx: &mut Tx,
    name: &str,
    binding: BindingPolicy,
    ttl_secs: u64,
    max_admissions_per_user: u32,
    now: OffsetDateTime,
) -> Result<Server> {
    if server_by_name(tx, name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a server named '{name}' already exists"
        )));
    }
    // Ids are never reused: a removed server's live feed state (`live_feeds`)
    // must not become a new server's. PostgreSQL's identity column never
    // hands an id out twice; SQLite's rowid would, so it keeps a
    // high-water mark.
    let id = match tx.engine() {
        Engine::Postgres => None,
        Engine::Sqlite => {
            let high = setting(tx, "server_id_high")?
                .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            let max = tx
                .query_one("SELECT COALESCE(MAX(id), 0) FROM servers", args![])?
                .i64(0)?;
            Some(high.max(max) + 1)
        }
    };
    let sql = match id {
        Some(_) => {
            "INSERT INTO servers(name, binding, ttl_secs, max_admissions_per_user, created_at, next_tunnel_index, id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        }
        None => {
            "INSERT INTO servers(name, binding, ttl_secs, max_admissions_per_user, created_at, next_tunnel_index)
             VALUES ($1, $2, $3, $4, $5, $6)"
        }
    };
    let base = args![
        name,
        binding.to_string(),
        ttl_secs,
        max_admissions_per_user,
        millis(now),
        SERVICE_INDEX + 1,
    ];
    match id {
        Some(id) => {
            let mut all = base.to_vec();
            all.push(id.into());
            tx.exec(sql, &all)?
        }
        None => tx.exec(sql, base)?,
    };
    server_by_name(tx, name)?.ok_or_else(|| StoreError::NotFound("server vanished".into()))
}

pub fn server_by_name(tx: &mut Tx, name: &str) -> Result<Option<Server>> {
    tx.query_opt(
        &format!("SELECT {SERVER_COLS} FROM servers WHERE name = $1"),
        args![name],
    )?
    .map(|r| server_row(&r))
    .transpose()
}

/// The server named `name`, or a `NotFound` that says so.
pub fn server_named(tx: &mut Tx, name: &str) -> Result<Server> {
    server_by_name(tx, name)?
        .ok_or_else(|| StoreError::NotFound(format!("no server named '{name}'")))
}

pub fn server_by_id(tx: &mut Tx, id: i64) -> Result<Server> {
    server_row(&tx.query_one(
        &format!("SELECT {SERVER_COLS} FROM servers WHERE id = $1"),
        args![id],
    )?)
}

pub fn server_by_credential(tx: &mut Tx, hash: &[u8]) -> Result<Option<Server>> {
    tx.query_opt(
        &format!("SELECT {SERVER_COLS} FROM servers WHERE cred_hash = $1"),
        args![hash],
    )?
    .map(|r| server_row(&r))
    .transpose()
}

pub fn list_servers(tx: &mut Tx) -> Result<Vec<Server>> {
    tx.query(
        &format!("SELECT {SERVER_COLS} FROM servers ORDER BY name"),
        args![],
    )?
    .iter()
    .map(server_row)
    .collect()
}

/// Holds the server's row until the transaction ends, so that changes to
/// one server's admissions (the per-user count, the tunnel address, the
/// version) happen one transaction after another on every replica.
/// SQLite runs one writer at a time anyway.
pub fn lock_server(tx: &mut Tx, server_id: i64) -> Result<()> {
    if tx.engine() == Engine::Postgres {
        tx.query_opt(
            "SELECT id FROM servers WHERE id = $1 FOR UPDATE",
            args![server_id],
        )?;
    }
    Ok(())
}

/// Changes a server's admission lifetime and per-user admission limit
/// (for new admissions and renewals; live ones keep their expiry).
pub fn update_server_settings(
    tx: &mut Tx,
    server_id: i64,
    ttl_secs: Option<u64>,
    max_admissions_per_user: Option<u32>,
) -> Result<()> {
    if let Some(ttl) = ttl_secs {
        tx.exec(
            "UPDATE servers SET ttl_secs = $1 WHERE id = $2",
            args![ttl, server_id],
        )?;
    }
    if let Some(max) = max_admissions_per_user {
        tx.exec(
            "UPDATE servers SET max_admissions_per_user = $1 WHERE id = $2",
            args![max, server_id],
        )?;
    }
    Ok(())
}

pub fn rename_server(tx: &mut Tx, server_id: i64, new_name: &str) -> Result<()> {
    if server_by_name(tx, new_name)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a server named '{new_name}' already exists"
        )));
    }
    tx.exec(
        "UPDATE servers SET name = $1 WHERE id = $2",
        args![new_name, server_id],
    )?;
    Ok(())
}

/// Deletes a server with its grants, enrollment tokens, feed history and
/// tunnel address bookkeeping. End its admissions first
/// ([`delete_admission`]), so that each one is audited and reaches the
/// feed.
pub fn delete_server(tx: &mut Tx, server_id: i64) -> Result<()> {
    if tx.engine() == Engine::Sqlite {
        let high = setting(tx, "server_id_high")?
            .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        set_setting(
            tx,
            "server_id_high",
            high.max(server_id).to_string().as_bytes(),
        )?;
    }
    for a in server_admissions(tx, server_id)? {
        remove_admission_row(tx, &a)?;
    }
    tx.exec("DELETE FROM servers WHERE id = $1", args![server_id])?;
    tx.notify(Event::Removed { server: server_id });
    Ok(())
}

/// Makes the server's gateway credential stop working at once (held feed
/// polls on every replica answer 401). Returns whether there was one.
pub fn revoke_credential(tx: &mut Tx, server_id: i64) -> Result<bool> {
    let revoked = tx.exec(
        "UPDATE servers SET cred_hash = NULL WHERE id = $1 AND cred_hash IS NOT NULL",
        args![server_id],
    )? > 0;
    if revoked {
        tx.notify(Event::Credential { server: server_id });
    }
    Ok(revoked)
}

// ---------- enrollment tokens ----------

/// A one-time enrollment token as an admin sees it (never the secret).
#[derive(Debug, Clone)]
pub struct EnrollmentToken {
    pub id: String,
    pub server: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

pub fn insert_enrollment_token(
    tx: &mut Tx,
    id: &str,
    server_id: i64,
    hash: &[u8],
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<()> {
    tx.exec(
        "INSERT INTO enrollment_tokens(id, server_id, token_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
        args![id, server_id, hash, millis(now), millis(expires_at)],
    )?;
    Ok(())
}

/// Live enrollment tokens, oldest first.
pub fn list_enrollment_tokens(tx: &mut Tx, now: OffsetDateTime) -> Result<Vec<EnrollmentToken>> {
    tx.query(
        "SELECT e.id, s.name, e.created_at, e.expires_at FROM enrollment_tokens e
         JOIN servers s ON s.id = e.server_id WHERE e.expires_at > $1
         ORDER BY e.created_at, e.id",
        args![millis(now)],
    )?
    .iter()
    .map(|r| {
        Ok(EnrollmentToken {
            id: r.text(0)?,
            server: r.text(1)?,
            created_at: from_millis(r.i64(2)?),
            expires_at: from_millis(r.i64(3)?),
        })
    })
    .collect()
}

/// Deletes one enrollment token; returns its server's name if it existed.
pub fn delete_enrollment_token(tx: &mut Tx, id: &str) -> Result<Option<String>> {
    tx.query_opt(
        "DELETE FROM enrollment_tokens WHERE id = $1
         RETURNING (SELECT name FROM servers WHERE servers.id = enrollment_tokens.server_id)",
        args![id],
    )?
    .map(|r| r.text(0))
    .transpose()
}

/// What became of an enrollment attempt.
#[derive(Debug)]
pub enum Enrollment {
    /// The gateway holds the server's credential now; `replaced` when it
    /// took the place of an earlier one (re-enrollment).
    Enrolled { server: Box<Server>, replaced: bool },
    /// The token existed but its time was up (it is deleted now).
    Expired {
        server: String,
        expired_at: OffsetDateTime,
    },
    /// No such token: never issued, used, or revoked.
    Unknown,
}

/// Consumes a one-time enrollment token: its server gets the gateway's
/// new credential (replacing any earlier one) and the token can never be
/// used again, not even by a second replica at the same moment (the
/// token is taken with one `DELETE ... RETURNING`).
pub fn enroll(
    tx: &mut Tx,
    enroll_hash: &[u8],
    cred_hash: &[u8],
    now: OffsetDateTime,
) -> Result<Enrollment> {
    let Some(taken) = tx.query_opt(
        "DELETE FROM enrollment_tokens WHERE token_hash = $1 RETURNING server_id, expires_at",
        args![enroll_hash],
    )?
    else {
        return Ok(Enrollment::Unknown);
    };
    let (server_id, expires_at) = (taken.i64(0)?, taken.i64(1)?);
    let server = server_by_id(tx, server_id)?;
    if expires_at <= millis(now) {
        return Ok(Enrollment::Expired {
            server: server.name,
            expired_at: from_millis(expires_at),
        });
    }
    tx.exec(
        "UPDATE servers SET cred_hash = $1 WHERE id = $2",
        args![cred_hash, server_id],
    )?;
    if server.enrolled {
        // The gateway holding the old credential must hear at once
        // that it no longer works.
        tx.notify(Event::Credential { server: server_id });
    }
    Ok(Enrollment::Enrolled {
        replaced: server.enrolled,
        server: Box::new(server_by_id(tx, server_id)?),
    })
}

/// Records what the gateway reported about itself.
pub fn update_gateway(
    tx: &mut Tx,
    server_id: i64,
    key: &WgKey,
    endpoint: std::net::SocketAddr,
    services: &[ServiceInfo],
    direct: &[ServiceInfo],
) -> Result<()> {
    lock_server(tx, server_id)?;
    let old = server_by_id(tx, server_id)?;
    tx.exec(
        "UPDATE servers SET gateway_key = $1, endpoint = $2, services = $3, direct_services = $4
         WHERE id = $5",
        args![
            key.to_string(),
            endpoint.to_string(),
            serde_json::to_string(services).unwrap_or_default(),
            serde_json::to_string(direct).unwrap_or_default(),
            server_id,
        ],
    )?;
    // A new gateway key makes every admission's client config stale: the
    // clients pinned the old key. They must ask again.
    if old.gateway_key.is_some() && old.gateway_key.as_ref() != Some(key) {
        tx.exec(
            "DELETE FROM admissions WHERE server_id = $1",
            args![server_id],
        )?;
        reset_tunnel_indexes(tx, server_id)?;
        reset_feed(tx, server_id)?;
    }
    Ok(())
}

/// Records the gateway's network report (issue 17).
pub fn set_network(
    tx: &mut Tx,
    server_id: i64,
    network: &crate::reachability::StoredNetwork,
) -> Result<()> {
    set_server_json(tx, "network", server_id, network)
}

/// Records the last reachability check of a server's endpoint (issue 17).
pub fn set_reachability(
    tx: &mut Tx,
    server_id: i64,
    check: &proto::reach::Reachability,
) -> Result<()> {
    set_server_json(tx, "reachability", server_id, check)
}

/// Stores `value` as JSON in the servers column `column` (a name from
/// this file, never input).
fn set_server_json(
    tx: &mut Tx,
    column: &'static str,
    server_id: i64,
    value: &impl serde::Serialize,
) -> Result<()> {
    tx.exec(
        &format!("UPDATE servers SET {column} = $1 WHERE id = $2"),
        args![serde_json::to_string(value).unwrap_or_default(), server_id],
    )?;
    Ok(())
}

/// Starts a reachability check's one-off admission on a server: stored
/// with the server (so every replica's feed answers carry it, whichever
/// replica the gateway polls), with a new version whose history names
/// it. `None` when a check is already running there (on any replica)
/// and its admission has not ended: two checks would share the reserved
/// tunnel address, and the second would replace the first's key.
pub fn begin_probe(
    tx: &mut Tx,
    server_id: i64,
    probe: &FeedAdmission,
    now: OffsetDateTime,
) -> Result<Option<u64>> {
    let taken = tx.exec(
        "UPDATE servers SET probe = $1, probe_until = $2, probe_id = $3
         WHERE id = $4 AND (probe IS NULL OR probe_until IS NULL OR probe_until <= $5)",
        args![
            serde_json::to_string(probe).unwrap_or_default(),
            probe.expires_at.unix_timestamp(),
            probe.id.as_str(),
            server_id,
            now.unix_timestamp()
        ],
    )?;
    if taken == 0 {
        return Ok(None);
    }
    changed(tx, server_id, &[&probe.id]).map(Some)
}

/// Ends the check admission `probe_id` (if it is still the server's): a
/// new version whose history names it, which, having no row, a diff
/// reports removed.
pub fn end_probe(tx: &mut Tx, server_id: i64, probe_id: &str) -> Result<()> {
    // One statement: another replica may have replaced an admission past
    // its deadline with its own in the meantime, which must stay.
    let ended = tx.exec(
        "UPDATE servers SET probe = NULL, probe_until = NULL, probe_id = NULL
         WHERE id = $1 AND probe_id = $2",
        args![server_id, probe_id],
    )?;
    if ended == 1 {
        changed(tx, server_id, &[probe_id])?;
    }
    Ok(())
}

// ---------- feed versions and history ----------

/// Marks a change of the admissions `touched` in a server's desired state
/// and returns the new version. This is the only way a version moves:
/// the version row is updated in the caller's transaction (so versions
/// are gap-free and in commit order on every replica: the row stays
/// locked until commit), each touched admission's history row gets the
/// version (what the incremental feed reads), and every replica's live
/// feeds hear of the version once it commits.
pub fn changed(tx: &mut Tx, server_id: i64, touched: &[&str]) -> Result<u64> {
    let (v, rest) = match touched.split_first() {
        // On PostgreSQL the version and the first history row in one
        // statement: each statement there is a round trip.
        Some((first, rest)) if tx.engine() == Engine::Postgres => {
            let v = tx
                .query_one(
                    "WITH v AS (UPDATE servers SET version = version + 1 WHERE id = $1
                         RETURNING version)
                     INSERT INTO feed_touch(server_id, admission_id, version)
                     SELECT $1, $2, version FROM v
                     ON CONFLICT(server_id, admission_id) DO UPDATE SET version = excluded.version
                     RETURNING version",
                    args![server_id, *first],
                )?
                .i64(0)?;
            (count(v), rest)
        }
        _ => {
            let v = tx
                .query_one(
                    "UPDATE servers SET version = version + 1 WHERE id = $1 RETURNING version",
                    args![server_id],
                )?
                .i64(0)?;
            (count(v), touched)
        }
    };
    for id in rest {
        tx.exec(
            "INSERT INTO feed_touch(server_id, admission_id, version) VALUES ($1, $2, $3)
             ON CONFLICT(server_id, admission_id) DO UPDATE SET version = excluded.version",
            args![server_id, *id, v],
        )?;
    }
    // Forget what lies further back than any diff will reach, now and
    // then (each time costs one range delete on an index).
    if v.is_multiple_of(64) && v > FEED_HISTORY {
        let cut = v - FEED_HISTORY;
        tx.exec(
            "DELETE FROM feed_touch WHERE server_id = $1 AND version <= $2",
            args![server_id, cut],
        )?;
        tx.exec(
            "UPDATE servers SET feed_floor = $1 WHERE id = $2 AND feed_floor < $1",
            args![cut, server_id],
        )?;
    }
    tx.notify(Event::Version {
        server: server_id,
        version: v,
    });
    Ok(v)
}

/// A change the history cannot describe (everything went at once): a new
/// version, below which no diff reaches.
fn reset_feed(tx: &mut Tx, server_id: i64) -> Result<u64> {
    let v = changed(tx, server_id, &[])?;
    tx.exec(
        "DELETE FROM feed_touch WHERE server_id = $1",
        args![server_id],
    )?;
    tx.exec(
        "UPDATE servers SET feed_floor = $1 WHERE id = $2",
        args![v, server_id],
    )?;
    Ok(v)
}

/// What a feed answer is built from.
#[derive(Debug)]
pub enum FeedAnswer {
    /// Every admission of the server.
    Whole(Server, Vec<Admission>),
    /// What changed since `base`: each touched admission as it is now, and
    /// the ids of those gone, in the order they were last changed.
    Diff {
        server: Server,
        base: u64,
        upserts: Vec<Admission>,
        removed: Vec<String>,
    },
}

/// The server's desired state, as a diff from `after` when the history
/// reaches back that far, else whole. Every read is in one transaction,
/// so the answer is exactly the version it names, whichever replica made
/// the changes.
pub fn feed_since(tx: &mut Tx, server_id: i64, after: Option<u64>) -> Result<FeedAnswer> {
    let row = tx.query_one(
        &format!("SELECT {SERVER_COLS}, feed_floor FROM servers WHERE id = $1"),
        args![server_id],
    )?;
    let server = server_row(&row)?;
    let floor = count(row.i64(SERVER_COLS_COUNT)?);
    if let Some(after) = after {
        if after == server.version {
            return Ok(FeedAnswer::Diff {
                server,
                base: after,
                upserts: Vec::new(),
                removed: Vec::new(),
            });
        }
        if after >= floor && after < server.version {
            // Each touched admission in the order it was last changed,
            // with what it is now (none: it is gone), in one query.
            let (mut upserts, mut removed) = (Vec::new(), Vec::new());
            for r in tx.query(
                &format!(
                    "SELECT {ADMISSION_COLS}, t.admission_id FROM feed_touch t
                     LEFT JOIN admissions a ON a.id = t.admission_id AND a.server_id = t.server_id
                     LEFT JOIN users u ON u.id = a.user_id
                     LEFT JOIN servers s ON s.id = a.server_id
                     WHERE t.server_id = $1 AND t.version > $2
                     ORDER BY t.version, t.admission_id"
                ),
                args![server_id, after],
            )? {
                match r.opt_text(0)? {
                    Some(_) => upserts.push(admission_row(&r)?),
                    None => removed.push(r.text(15)?),
                }
            }
            return Ok(FeedAnswer::Diff {
                server,
                base: after,
                upserts,
                removed,
            });
        }
    }
    let admissions = server_admissions(tx, server_id)?;
    Ok(FeedAnswer::Whole(server, admissions))
}

/// (server id, feed version, version its gateway acknowledged) of every
/// server: what a replica reads to catch up on notifications it missed.
pub fn feed_positions(tx: &mut Tx) -> Result<Vec<(i64, u64, u64)>> {
    tx.query(
        "SELECT s.id, s.version, COALESCE(p.acked_version, 0)
         FROM servers s LEFT JOIN gateway_presence p ON p.server_id = s.id",
        args![],
    )?
    .iter()
    .map(|r| Ok((r.i64(0)?, count(r.i64(1)?), count(r.i64(2)?))))
    .collect()
}

// ---------- gateway presence (shared by replicas) ----------

/// What every replica knows of a server's gateway: the version it
/// acknowledged, when it was last heard from, and until when a feed poll
/// it holds open on some replica counts it as connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    pub acked_version: u64,
    pub last_seen: Option<i64>,
    pub held_until: Option<i64>,
}

pub fn presence(tx: &mut Tx, server_id: i64) -> Result<Presence> {
    Ok(tx
        .query_opt(
            "SELECT acked_version, last_seen, held_until FROM gateway_presence WHERE server_id = $1",
            args![server_id],
        )?
        .map(|r| -> Result<Presence> {
            Ok(Presence {
                acked_version: count(r.i64(0)?),
                last_seen: r.opt_i64(1)?,
                held_until: r.opt_i64(2)?,
            })
        })
        .transpose()?
        .unwrap_or_default())
}

/// Records the gateway's acknowledgement of `version` (versions only move
/// up) and tells every replica.
pub fn record_ack(tx: &mut Tx, server_id: i64, version: u64, now_ms: i64) -> Result<()> {
    tx.exec(
        "INSERT INTO gateway_presence(server_id, acked_version, last_seen) VALUES ($1, $2, $3)
         ON CONFLICT(server_id) DO UPDATE SET
             acked_version = CASE WHEN gateway_presence.acked_version > excluded.acked_version
                 THEN gateway_presence.acked_version ELSE excluded.acked_version END,
             last_seen = excluded.last_seen",
        args![server_id, version, now_ms],
    )?;
    tx.notify(Event::Acked {
        server: server_id,
        version,
    });
    Ok(())
}

/// A feed poll is held on replica `holder` until `held_until`.
pub fn presence_hold(
    tx: &mut Tx,
    server_id: i64,
    now_ms: i64,
    held_until: i64,
    holder: &str,
) -> Result<()> {
    tx.exec(
        "INSERT INTO gateway_presence(server_id, acked_version, last_seen, held_until, holder)
         VALUES ($1, 0, $2, $3, $4)
         ON CONFLICT(server_id) DO UPDATE SET last_seen = excluded.last_seen,
             held_until = excluded.held_until, holder = excluded.holder",
        args![server_id, now_ms, held_until, holder],
    )?;
    Ok(())
}

/// The polls `holder` held have ended: the gateway stays "connected" only
/// until `until` unless it polls again (on any replica, which then holds).
pub fn presence_release(
    tx: &mut Tx,
    server_id: i64,
    now_ms: i64,
    until: i64,
    holder: &str,
) -> Result<()> {
    tx.exec(
        "UPDATE gateway_presence SET last_seen = $1, held_until = $2
         WHERE server_id = $3 AND holder = $4",
        args![now_ms, until, server_id, holder],
    )?;
    Ok(())
}

// ---------- grants ----------

#[derive(Debug, Clone)]
pub struct Grant {
    pub username: String,
    pub server: String,
    pub services: Option<Vec<String>>,
    pub direct: bool,
}

pub fn upsert_grant(
    tx: &mut Tx,
    user_id: i64,
    server_id: i64,
    services: Option<&[String]>,
    direct: bool,
) -> Result<()> {
    let services = services.map(|s| serde_json::to_string(s).unwrap_or_default());
    tx.exec(
        "INSERT INTO grants(user_id, server_id, services, direct) VALUES ($1, $2, $3, $4)
         ON CONFLICT(user_id, server_id) DO UPDATE SET services = excluded.services, direct = excluded.direct",
        args![user_id, server_id, services, direct],
    )?;
    Ok(())
}

pub(super) const GRANT_SELECT: &str =
    "SELECT u.username, s.name, g.services, g.direct FROM grants g
     JOIN users u ON u.id = g.user_id JOIN servers s ON s.id = g.server_id";

pub fn grant_for(tx: &mut Tx, user_id: i64, server_id: i64) -> Result<Option<Grant>> {
    tx.query_opt(
        &format!("{GRANT_SELECT} WHERE g.user_id = $1 AND g.server_id = $2"),
        args![user_id, server_id],
    )?
    .map(|r| grant_row(&r))
    .transpose()
}

pub(super) fn grant_row(r: &Row) -> Result<Grant> {
    Ok(Grant {
        username: r.text(0)?,
        server: r.text(1)?,
        services: r.opt_text(2)?.and_then(|s| serde_json::from_str(&s).ok()),
        direct: r.bool(3)?,
    })
}

pub fn list_grants(tx: &mut Tx) -> Result<Vec<Grant>> {
    tx.query(
        &format!("{GRANT_SELECT} ORDER BY u.username, s.name"),
        args![],
    )?
    .iter()
    .map(grant_row)
    .collect()
}

pub fn delete_grant(tx: &mut Tx, user_id: i64, server_id: i64) -> Result<bool> {
    Ok(tx.exec(
        "DELETE FROM grants WHERE user_id = $1 AND server_id = $2",
        args![user_id, server_id],
    )? > 0)
}

// ---------- admissions ----------

#[derive(Debug, Clone)]
pub struct Admission {
    pub id: String,
    pub user_id: i64,
    pub username: String,
    pub server_id: i64,
    pub server: String,
    pub mode: AccessMode,
    pub client_key: Option<WgKey>,
    pub psk: Option<WgKey>,
    pub source: IpAddr,
    pub binding: BindingPolicy,
    pub tunnel_index: Option<u32>,
    pub services: Vec<String>,
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl Admission {
    pub fn client_address(&self) -> Option<Ipv4Addr> {
        self.tunnel_index.map(tunnel_address)
    }

    /// The admission as the gateway feed carries it.
    pub fn to_feed(&self) -> FeedAdmission {
        FeedAdmission {
            id: self.id.clone(),
            mode: self.mode,
            client_public_key: self.client_key,
            preshared_key: self.psk,
            source: self.source,
            binding: self.binding,
            client_address: self.client_address(),
            services: self.services.clone(),
            expires_at: self.expires_at,
        }
    }
}

pub fn tunnel_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(TUNNEL_BASE) + index)
}

const ADMISSION_COLS: &str = "a.id, a.user_id, u.username, a.server_id, s.name, a.mode, a.client_key, a.psk, a.source, a.binding, a.tunnel_index, a.services, a.state, a.created_at, a.expires_at";
const ADMISSION_FROM: &str =
    "FROM admissions a JOIN users u ON u.id = a.user_id JOIN servers s ON s.id = a.server_id";

fn admission_row(r: &Row) -> Result<Admission> {
    Ok(Admission {
        id: r.text(0)?,
        user_id: r.i64(1)?,
        username: r.text(2)?,
        server_id: r.i64(3)?,
        server: r.text(4)?,
        mode: if r.text(5)? == "direct" {
            AccessMode::Direct
        } else {
            AccessMode::Tunnel
        },
        client_key: r.opt_text(6)?.and_then(|k| k.parse().ok()),
        psk: r.opt_text(7)?.and_then(|k| k.parse().ok()),
        source: r
            .text(8)?
            .parse()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        binding: r.text(9)?.parse().unwrap_or_default(),
        tunnel_index: r.opt_i64(10)?.map(|i| i as u32),
        services: serde_json::from_str(&r.text(11)?).unwrap_or_default(),
        active: r.text(12)? == "active",
        created_at: from_millis(r.i64(13)?),
        expires_at: from_millis(r.i64(14)?),
    })
}

pub(super) fn admissions_where(
    tx: &mut Tx,
    tail: &str,
    args: &[super::Value],
) -> Result<Vec<Admission>> {
    tx.query(
        &format!("SELECT {ADMISSION_COLS} {ADMISSION_FROM} {tail}"),
        args,
    )?
    .iter()
    .map(admission_row)
    .collect()
}

/// What a new admission is made of; the store adds the tunnel address.
#[derive(Debug, Clone)]
pub struct NewAdmission {
    pub id: String,
    pub user_id: i64,
    pub server_id: i64,
    pub mode: AccessMode,
    pub client_key: Option<WgKey>,
    pub psk: Option<WgKey>,
    pub source: IpAddr,
    pub binding: BindingPolicy,
    pub services: Vec<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Until when the admission may stay pending: a replica that stopped
    /// before the gateway acknowledged leaves it to be swept by any other
    /// once this has passed.
    pub pending_until: OffsetDateTime,
}

/// Inserts a pending admission (allocating the lowest free tunnel address
/// for tunnel mode) and bumps the server's version. Returns the admission
/// and the version whose acknowledgement makes it live.
///
/// A key can hold one admission per server. When the same user asks again
/// with the same key (a retry after a replica stopped mid-request, or an
/// answer lost on the way), the earlier admission is replaced in the same
/// version: only the holder of the key's private half can use either.
pub fn insert_admission(tx: &mut Tx, new: &NewAdmission) -> Result<(Admission, u64)> {
    lock_server(tx, new.server_id)?;
    insert_admission_locked(tx, new)
}

/// [`insert_admission`] when the caller took [`lock_server`] already in
/// this transaction.
pub fn insert_admission_locked(tx: &mut Tx, new: &NewAdmission) -> Result<(Admission, u64)> {
    let mut replaced = None;
    if let Some(key) = &new.client_key {
        if let Some(old) = admissions_where(
            tx,
            "WHERE a.server_id = $1 AND a.client_key = $2",
            args![new.server_id, key.to_string()],
        )?
        .into_iter()
        .next()
        {
            if old.user_id != new.user_id {
                return Err(StoreError::Conflict(
                    "this public key already has an admission on this server; generate a fresh key for each session".into(),
                ));
            }
            remove_admission_row(tx, &old)?;
            replaced = Some(old.id);
        }
    }
    let index = match new.mode {
        AccessMode::Tunnel => Some(allocate_tunnel_index(tx, new.server_id)?),
        AccessMode::Direct => None,
    };
    const INSERT: &str =
        "INSERT INTO admissions(id, user_id, server_id, mode, client_key, psk, source, binding,
             tunnel_index, services, state, created_at, expires_at, pending_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, $12, $13)";
    let values = args![
        &new.id,
        new.user_id,
        new.server_id,
        match new.mode {
            AccessMode::Tunnel => "tunnel",
            AccessMode::Direct => "direct",
        },
        new.client_key.map(|k| k.to_string()),
        new.psk.map(|k| k.to_string()),
        new.source.to_string(),
        new.binding.to_string(),
        index,
        serde_json::to_string(&new.services).unwrap_or_default(),
        millis(new.created_at),
        millis(new.expires_at),
        millis(new.pending_until),
    ];
    // On PostgreSQL the row comes back as stored from the insert itself
    // (one round trip less); SQLite reads it after.
    let inserted = if tx.engine() == Engine::Postgres {
        let row = tx.query_one(
            &format!(
                "WITH a AS ({INSERT} RETURNING *) SELECT {ADMISSION_COLS} FROM a
                 JOIN users u ON u.id = a.user_id JOIN servers s ON s.id = a.server_id"
            ),
            values,
        )?;
        Some(admission_row(&row)?)
    } else {
        tx.exec(INSERT, values)?;
        None
    };
    let mut touched = vec![new.id.as_str()];
    if let Some(old) = &replaced {
        touched.push(old);
    }
    let version = changed(tx, new.server_id, &touched)?;
    let adm = match inserted {
        Some(a) => a,
        None => admission(tx, &new.id)?
            .ok_or_else(|| StoreError::NotFound("admission vanished".into()))?,
    };
    Ok((adm, version))
}

/// How many admissions (pending or active, not past their expiry) a
/// user holds on a server, and how many of those (0 or 1) hold `key`.
/// Call [`lock_server`] first when the answer decides whether to insert
/// one.
pub fn live_admissions_of(
    tx: &mut Tx,
    user_id: i64,
    server_id: i64,
    now: OffsetDateTime,
    key: Option<&WgKey>,
) -> Result<(u32, u32)> {
    let r = tx.query_one(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN client_key = $1 THEN 1 ELSE 0 END), 0)
         FROM admissions WHERE server_id = $2 AND user_id = $3 AND expires_at > $4",
        args![
            key.map(|k| k.to_string()).unwrap_or_default(),
            server_id,
            user_id,
            millis(now)
        ],
    )?;
    let n = |i| -> Result<u32> { Ok(r.i64(i)?.clamp(0, i64::from(u32::MAX)) as u32) };
    Ok((n(0)?, n(1)?.min(n(0)?)))
}

// Tunnel addresses. The free ones of a server are the indexes in
// `tunnel_free` (each released below the high-water mark) and every index
// from `servers.next_tunnel_index` up: the lowest free one is the first
// row of `tunnel_free` or else the mark, each found through an index, so
// taking or returning one costs O(log n) however many admissions exist.
// Every path that deletes an admission row returns its index here.
// Allocation happens under the server's row lock ([`lock_server`]).

/// The SQL that finds the lowest released index (see the query-plan test).
const LOWEST_RELEASED: &str =
    "SELECT tunnel_index FROM tunnel_free WHERE server_id = $1 ORDER BY tunnel_index LIMIT 1";

/// Takes the lowest free tunnel index of a server.
fn allocate_tunnel_index(tx: &mut Tx, server_id: i64) -> Result<u32> {
    if tx.engine() == Engine::Postgres {
        // Both steps in one statement (one round trip): the lowest
        // released index if there is one, else the mark, moved on.
        let i = tx
            .query_one(
                "WITH f AS (
                     DELETE FROM tunnel_free WHERE server_id = $1 AND tunnel_index =
                         (SELECT tunnel_index FROM tunnel_free WHERE server_id = $1
                          ORDER BY tunnel_index LIMIT 1)
                     RETURNING tunnel_index),
                 n AS (
                     UPDATE servers SET next_tunnel_index = next_tunnel_index + 1
                     WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM f)
                     RETURNING next_tunnel_index - 1 AS tunnel_index)
                 SELECT tunnel_index FROM f UNION ALL SELECT tunnel_index FROM n",
                args![server_id],
            )?
            .i64(0)?;
        return checked_index(i);
    }
    if let Some(r) = tx.query_opt(LOWEST_RELEASED, args![server_id])? {
        let i = r.i64(0)?;
        tx.exec(
            "DELETE FROM tunnel_free WHERE server_id = $1 AND tunnel_index = $2",
            args![server_id, i],
        )?;
        return Ok(i as u32);
    }
    // Taken and moved in one statement.
    let next = tx
        .query_one(
            "UPDATE servers SET next_tunnel_index = next_tunnel_index + 1 WHERE id = $1
             RETURNING next_tunnel_index - 1",
            args![server_id],
        )?
        .i64(0)?;
    checked_index(next)
}

/// An index just taken from the mark, refused past the last one (the
/// error rolls the move back with everything else).
fn checked_index(i: i64) -> Result<u32> {
    if i > i64::from(MAX_TUNNEL_INDEX) {
        return Err(StoreError::Exhausted(
            "this server has no free tunnel address left (65,533 live admissions)".into(),
        ));
    }
    Ok(i as u32)
}

/// Returns a tunnel index to its server's free list.
pub(crate) fn release_tunnel_index(tx: &mut Tx, server_id: i64, index: u32) -> Result<()> {
    tx.exec(
        "INSERT INTO tunnel_free(server_id, tunnel_index) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        args![server_id, index],
    )?;
    Ok(())
}

/// Every tunnel index of a server is free again (its admissions are gone).
fn reset_tunnel_indexes(tx: &mut Tx, server_id: i64) -> Result<()> {
    tx.exec(
        "DELETE FROM tunnel_free WHERE server_id = $1",
        args![server_id],
    )?;
    tx.exec(
        "UPDATE servers SET next_tunnel_index = $1 WHERE id = $2",
        args![SERVICE_INDEX + 1, server_id],
    )?;
    Ok(())
}

/// Deletes one admission row and frees its tunnel address. Returns
/// whether the row was still there: another request (or replica) may
/// have removed it since it was read.
fn remove_admission_row(tx: &mut Tx, adm: &Admission) -> Result<bool> {
    let gone = tx.exec("DELETE FROM admissions WHERE id = $1", args![&adm.id])? > 0;
    if gone {
        if let Some(i) = adm.tunnel_index {
            release_tunnel_index(tx, adm.server_id, i)?;
        }
    }
    Ok(gone)
}

pub fn admission(tx: &mut Tx, id: &str) -> Result<Option<Admission>> {
    Ok(admissions_where(tx, "WHERE a.id = $1", args![id])?
        .into_iter()
        .next())
}

/// Makes a pending admission active (its client is being told). Returns
/// false when it is no longer pending: revoked meanwhile, or swept after
/// its pending time ran out.
pub fn activate(tx: &mut Tx, id: &str) -> Result<bool> {
    Ok(tx.exec(
        "UPDATE admissions SET state = 'active', pending_until = NULL
         WHERE id = $1 AND state = 'pending'",
        args![id],
    )? > 0)
}

/// [`activate`], and when it did, [`audit`] (with the same tenant
/// columns): one statement on PostgreSQL.
pub fn activate_with_audit(
    tx: &mut Tx,
    id: &str,
    now: OffsetDateTime,
    a: Audit<'_>,
) -> Result<bool> {
    if tx.engine() == Engine::Postgres {
        let rows = tx.query(
            "WITH act AS (UPDATE admissions SET state = 'active', pending_until = NULL
                 WHERE id = $1 AND state = 'pending' RETURNING id)
             INSERT INTO audit(at, event, username, server, admission_id, source, detail,
                 owner_id, server_id, user_id)
             SELECT CAST($2 AS BIGINT), CAST($3 AS TEXT), CAST($4 AS TEXT), CAST($5 AS TEXT),
                 CAST($6 AS TEXT), CAST($7 AS TEXT), CAST($8 AS TEXT),
                 (SELECT owner_id FROM servers WHERE name = $5),
                 (SELECT id FROM servers WHERE name = $5),
                 (SELECT id FROM users WHERE username = $4)
             FROM act
             RETURNING id",
            args![
                id,
                millis(now),
                a.event,
                a.username,
                a.server,
                a.admission_id,
                a.source.map(|s| s.to_string()),
                a.detail,
            ],
        )?;
        return Ok(!rows.is_empty());
    }
    if !activate(tx, id)? {
        return Ok(false);
    }
    audit(tx, now, a)?;
    Ok(true)
}

/// Removes an admission; returns the server's new version, or `None` when
/// it was already gone (nothing changed).
pub fn delete_admission(tx: &mut Tx, adm: &Admission) -> Result<Option<u64>> {
    lock_server(tx, adm.server_id)?;
    if !remove_admission_row(tx, adm)? {
        return Ok(None);
    }
    Ok(Some(changed(tx, adm.server_id, &[&adm.id])?))
}

/// Moves an admission's expiry; returns the server's new version.
pub fn set_expiry(tx: &mut Tx, adm: &Admission, expires: OffsetDateTime) -> Result<u64> {
    tx.exec(
        "UPDATE admissions SET expires_at = $1 WHERE id = $2",
        args![millis(expires), &adm.id],
    )?;
    changed(tx, adm.server_id, &[&adm.id])
}

/// The admissions a gateway must enforce: pending and active alike, since
/// a pending one is exactly what the gateway must install to acknowledge.
pub fn server_admissions(tx: &mut Tx, server_id: i64) -> Result<Vec<Admission>> {
    admissions_where(
        tx,
        "WHERE a.server_id = $1 ORDER BY a.created_at, a.id",
        args![server_id],
    )
}

pub fn list_admissions(tx: &mut Tx) -> Result<Vec<Admission>> {
    admissions_where(tx, "ORDER BY a.created_at, a.id", args![])
}

pub fn user_server_admissions(
    tx: &mut Tx,
    user_id: i64,
    server_id: Option<i64>,
) -> Result<Vec<Admission>> {
    match server_id {
        Some(s) => admissions_where(
            tx,
            "WHERE a.user_id = $1 AND a.server_id = $2 ORDER BY a.created_at, a.id",
            args![user_id, s],
        ),
        None => admissions_where(
            tx,
            "WHERE a.user_id = $1 ORDER BY a.created_at, a.id",
            args![user_id],
        ),
    }
}

/// (server id, new feed version) of each server a change touched.
pub type ServerVersions = Vec<(i64, u64)>;

/// Why [`sweep`] removed an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swept {
    /// Past its expiry.
    Expired,
    /// Still pending after its pending time: the replica that made it
    /// stopped before its client was answered.
    Abandoned,
}

/// Removes every admission past its expiry, and every pending one whose
/// client can no longer be answered (its `pending_until` has passed, or
/// every pending one when `all_pending`: a control plane that owns its
/// database alone and just started), bumping the versions of the servers
/// concerned (once each). An admission another replica removed meanwhile
/// is skipped. Returns what was removed, and why.
pub fn sweep(
    tx: &mut Tx,
    now: OffsetDateTime,
    all_pending: bool,
) -> Result<(Vec<(Admission, Swept)>, ServerVersions)> {
    let now_ms = millis(now);
    let mut found: Vec<(Admission, Swept)> = admissions_where(
        tx,
        "WHERE a.expires_at <= $1 ORDER BY a.server_id",
        args![now_ms],
    )?
    .into_iter()
    .map(|a| (a, Swept::Expired))
    .collect();
    let pending = if all_pending {
        admissions_where(tx, "WHERE a.state = 'pending'", args![])?
    } else {
        admissions_where(
            tx,
            "WHERE a.state = 'pending' AND a.pending_until <= $1",
            args![now_ms],
        )?
    };
    for a in pending {
        if !found.iter().any(|(f, _)| f.id == a.id) {
            found.push((a, Swept::Abandoned));
        }
    }
    let mut servers: Vec<i64> = found.iter().map(|(a, _)| a.server_id).collect();
    servers.sort_unstable();
    servers.dedup();
    let mut gone = Vec::with_capacity(found.len());
    let mut versions = Vec::with_capacity(servers.len());
    for s in servers {
        lock_server(tx, s)?;
        let mut touched = Vec::new();
        for (a, why) in found.iter().filter(|(a, _)| a.server_id == s) {
            if remove_admission_row(tx, a)? {
                touched.push(a.id.clone());
                gone.push((a.clone(), *why));
            }
        }
        if !touched.is_empty() {
            let ids: Vec<&str> = touched.iter().map(String::as_str).collect();
            versions.push((s, changed(tx, s, &ids)?));
        }
    }
    Ok((gone, versions))
}

/// The next moment [`sweep`] has work: the earliest expiry or pending
/// deadline.
pub fn next_deadline(tx: &mut Tx) -> Result<Option<OffsetDateTime>> {
    let r = tx.query_one(
        "SELECT (SELECT MIN(expires_at) FROM admissions),
                (SELECT MIN(pending_until) FROM admissions WHERE state = 'pending')",
        args![],
    )?;
    Ok([r.opt_i64(0)?, r.opt_i64(1)?]
        .into_iter()
        .flatten()
        .min()
        .map(from_millis))
}

// ---------- audit ----------

/// One audit line; written in the same transaction as the change it
/// describes.
#[derive(Debug, Default, Clone)]
pub struct Audit<'a> {
    pub event: &'a str,
    pub username: Option<&'a str>,
    pub server: Option<&'a str>,
    pub admission_id: Option<&'a str>,
    pub source: Option<IpAddr>,
    pub detail: String,
}

/// Writes one audit line. The tenant it belongs to is looked up by name
/// in the same statement and kept with it: the server's owner (whose
/// audit shows it), the server and the user (whose own audit shows it),
/// so that a later rename or removal does not move a line to someone
/// else. Write a server's line before deleting the server.
pub fn audit(tx: &mut Tx, now: OffsetDateTime, a: Audit<'_>) -> Result<()> {
    tx.exec(
        "INSERT INTO audit(at, event, username, server, admission_id, source, detail,
             owner_id, server_id, user_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7,
             (SELECT owner_id FROM servers WHERE name = $4),
             (SELECT id FROM servers WHERE name = $4),
             (SELECT id FROM users WHERE username = $3))",
        args![
            millis(now),
            a.event,
            a.username,
            a.server,
            a.admission_id,
            a.source.map(|s| s.to_string()),
            a.detail,
        ],
    )?;
    Ok(())
}

pub fn list_audit(tx: &mut Tx, limit: u32) -> Result<Vec<AuditEntry>> {
    audit_where(tx, AuditScope::All, limit)
}

/// Whose audit lines a listing shows.
#[derive(Debug, Clone, Copy)]
pub enum AuditScope {
    /// Everything (the operator).
    All,
    /// The lines of every server this account owns.
    Owner(i64),
    /// The lines of one server.
    Server(i64),
    /// The lines about this account.
    User(i64),
}

/// The latest `limit` audit lines of `scope`, oldest first.
pub fn audit_where(tx: &mut Tx, scope: AuditScope, limit: u32) -> Result<Vec<AuditEntry>> {
    const COLS: &str =
        "SELECT id, at, event, username, server, admission_id, source, detail FROM audit";
    let rows = match scope {
        AuditScope::All => tx.query(&format!("{COLS} ORDER BY id DESC LIMIT $1"), args![limit])?,
        AuditScope::Owner(id) => tx.query(
            &format!("{COLS} WHERE owner_id = $1 ORDER BY id DESC LIMIT $2"),
            args![id, limit],
        )?,
        AuditScope::Server(id) => tx.query(
            &format!("{COLS} WHERE server_id = $1 ORDER BY id DESC LIMIT $2"),
            args![id, limit],
        )?,
        AuditScope::User(id) => tx.query(
            &format!("{COLS} WHERE user_id = $1 ORDER BY id DESC LIMIT $2"),
            args![id, limit],
        )?,
    };
    let mut rows: Vec<AuditEntry> = rows
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.i64(0)?,
                at: from_millis(r.i64(1)?),
                event: r.text(2)?,
                username: r.opt_text(3)?,
                server: r.opt_text(4)?,
                admission_id: r.opt_text(5)?,
                source: r.opt_text(6)?,
                detail: r.text(7)?,
            })
        })
        .collect::<Result<_>>()?;
    rows.reverse();
    Ok(rows)
}

// ---------- login limiter (shared by replicas) ----------

/// The login limiter's state in the database, for replicas that must
/// agree on it (see [`crate::auth::LimiterBook`]). Each check runs in one
/// transaction; on PostgreSQL it first takes a transaction lock on the
/// source and the user name, so two replicas cannot both spend the last
/// attempt.
impl crate::auth::LimiterBook for Tx<'_> {
    fn lock(&mut self, user: &str, source: &str) -> Result<()> {
        if self.engine() == Engine::Postgres {
            self.query_opt(
                "SELECT pg_advisory_xact_lock(hashtext($1)), pg_advisory_xact_lock(hashtext($2))",
                args![
                    format!("login user {user}"),
                    format!("login source {source}")
                ],
            )?;
        }
        Ok(())
    }

    fn bucket(&mut self, kind: &str, key: &str) -> Result<Option<(f64, i64)>> {
        self.query_opt(
            "SELECT tokens, at FROM login_buckets WHERE kind = $1 AND key = $2",
            args![kind, key],
        )?
        .map(|r| Ok((r.f64(0)?, r.i64(1)?)))
        .transpose()
    }

    fn set_bucket(&mut self, kind: &str, key: &str, tokens: f64, at: i64) -> Result<()> {
        self.exec(
            "INSERT INTO login_buckets(kind, key, tokens, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT(kind, key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at",
            args![kind, key, tokens, at],
        )?;
        Ok(())
    }

    fn suspect_since(&mut self, user: &str, source: &str) -> Result<Option<i64>> {
        self.query_opt(
            "SELECT at FROM login_suspects WHERE username = $1 AND source = $2",
            args![user, source],
        )?
        .map(|r| r.i64(0))
        .transpose()
    }

    fn set_suspect(&mut self, user: &str, source: &str, at: Option<i64>) -> Result<()> {
        match at {
            Some(at) => self.exec(
                "INSERT INTO login_suspects(username, source, at) VALUES ($1, $2, $3)
                 ON CONFLICT(username, source) DO UPDATE SET at = excluded.at",
                args![user, source, at],
            )?,
            None => self.exec(
                "DELETE FROM login_suspects WHERE username = $1 AND source = $2",
                args![user, source],
            )?,
        };
        Ok(())
    }
}

/// Forgets limiter rows that no longer limit anything: buckets untouched
/// for `full_after_ms` (full again) and suspects older than `suspect_ms`.
pub fn sweep_login_limits(
    tx: &mut Tx,
    now_ms: i64,
    full_after_ms: i64,
    suspect_ms: i64,
) -> Result<u64> {
    Ok(tx.exec(
        "DELETE FROM login_buckets WHERE at < $1",
        args![now_ms - full_after_ms],
    )? + tx.exec(
        "DELETE FROM login_suspects WHERE at < $1",
        args![now_ms - suspect_ms],
    )?)
}

/// Live (acknowledged, unexpired) admissions per server, every server
/// listed (zero included), for the metrics.
pub fn live_admissions_per_server(tx: &mut Tx, now: OffsetDateTime) -> Result<Vec<(String, u64)>> {
    tx.query(
        "SELECT s.name, COUNT(a.id) FROM servers s
         LEFT JOIN admissions a
           ON a.server_id = s.id AND a.state = 'active' AND a.expires_at > $1
         GROUP BY s.name ORDER BY s.name",
        args![millis(now)],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.i64(1)?.max(0) as u64)))
    .collect()
}
