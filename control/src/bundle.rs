//! The identity that control plane replicas share, so that gateways and
//! clients can talk to any of them without noticing which:
//!
//! - `ca.pem`: the private CA every gateway and client pins (public);
//! - `server.pem` + `server-key.pem`: one server certificate naming every
//!   replica's address (the key is secret, 0600);
//! - `admin-token`: the token `hushgate admin` uses (secret, 0600);
//! - `ca-key.pem`: the CA's key, needed only to issue a certificate again
//!   (a new name, or a renewal within its 397 days). It may stay on the
//!   machine that ran `init` instead of going to the replicas.
//!
//! `hushgate control init --state BUNDLE --san NAME...` writes them
//! ([`init`]); each replica starts from a copy of the folder as its own
//! state folder (a process holds its folder's lock, see `statelock`, so
//! two replicas on one host need two folders; docs/operating.md). With a `--database`, `init` also records the CA and
//! the admin token's hash in it, and every replica checks at start that
//! its copy matches what the database holds: a replica started from
//! another folder by mistake refuses to start instead of presenting a
//! certificate nobody trusts.

use crate::store::{self, Db};
use crate::{auth, tls};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// What [`init`] wrote.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Names the server certificate carries besides localhost.
    pub sans: Vec<String>,
    pub certificate_expires: time::OffsetDateTime,
    /// Whether an existing admin token was kept (or a new one made).
    pub kept_admin_token: bool,
    /// The database the CA and admin token were recorded in, if any.
    pub database: Option<String>,
}

/// Writes (or renews) the shared identity in `dir`: the CA if missing, a
/// server certificate for `sans`, the admin token if missing; records the
/// CA and token in `database` when given.
pub fn init(
    dir: &Path,
    sans: &[String],
    database: Option<&store::DatabaseUrl>,
) -> anyhow::Result<Bundle> {
    statelock::ensure_private_dir(dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    let certificate_expires = tls::write_server_certificate(dir, sans)?;
    let token_file = dir.join("admin-token");
    let kept_admin_token = read_token(&token_file).is_some();
    if !kept_admin_token {
        let (token, _) = auth::new_secret(auth::SecretKind::Admin);
        statelock::write_private(&token_file, format!("{token}\n").as_bytes())
            .with_context(|| format!("cannot write {}", token_file.display()))?;
    }
    let mut recorded = None;
    if let Some(url) = database {
        let db = Db::open(
            &store::Database::Postgres(Box::new(url.clone())),
            std::sync::Arc::default(),
        )
        .with_context(|| format!("cannot open the {}", url.describe()))?;
        check_shared_ca(&db, dir)?;
        register_ca(&db, dir)?;
        admin_token(&db, dir)?;
        recorded = Some(db.describe());
    }
    Ok(Bundle {
        dir: dir.to_path_buf(),
        sans: sans.to_vec(),
        certificate_expires,
        kept_admin_token,
        database: recorded,
    })
}

fn read_token(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Before a replica makes or loads its TLS identity: refuses a state
/// folder without `ca.pem` when the replicas sharing `db` already have a
/// CA (it would make a CA of its own that no gateway trusts).
pub(crate) fn check_shared_ca(db: &Db, dir: &Path) -> anyhow::Result<()> {
    let stored = db.tx_blocking(|tx| store::setting(tx, "ca_pem"))?;
    if stored.is_some() && !dir.join("ca.pem").exists() {
        bail!(
            "{} has no ca.pem, but the replicas sharing this database already use a CA: start this replica from a copy of the bundle made by 'hushgate control init' (ca.pem, server.pem, server-key.pem, admin-token), so that gateways and clients trust it",
            dir.display()
        );
    }
    Ok(())
}

/// After a replica loaded its TLS identity from its state folder: its CA
/// must be the one the database knows (the first replica's becomes it).
pub(crate) fn register_ca(db: &Db, dir: &Path) -> anyhow::Result<()> {
    let ca_file = dir.join("ca.pem");
    let local =
        std::fs::read(&ca_file).with_context(|| format!("cannot read {}", ca_file.display()))?;
    let l = local.clone();
    let stored = db.tx_blocking(|tx| store::setting_or_insert(tx, "ca_pem", &l))?;
    if stored != local {
        bail!(
            "{} is not the CA the other replicas sharing this database use: start every replica from a copy of the same bundle ('hushgate control init'), or gateways and clients would refuse this one",
            ca_file.display()
        );
    }
    Ok(())
}

/// Makes sure the state folder's admin token is the one the database
/// knows; returns its file. A control plane on SQLite makes a new token
/// when its file is missing (as it always did). Replicas sharing a
/// database never do: a missing or different token file is an error,
/// since a new token would lock the other replicas' admins out.
pub(crate) fn admin_token(db: &Db, dir: &Path) -> anyhow::Result<PathBuf> {
    let file = dir.join("admin-token");
    let local = read_token(&file).map(|t| auth::hash_secret(&t).to_vec());
    let stored = db.tx_blocking(|tx| store::setting(tx, "admin_token_hash"))?;
    match (local, stored, db.shared()) {
        (Some(l), Some(s), _) if l == s => Ok(file),
        (Some(_), Some(_), false) => Ok(file),
        (Some(_), Some(_), true) => bail!(
            "{} is not the admin token the other replicas sharing this database use: copy admin-token from the bundle ('hushgate control init') or from another replica's state folder",
            file.display()
        ),
        (None, Some(_), true) => bail!(
            "{} is missing, and the replicas sharing this database already have an admin token: copy admin-token from the bundle ('hushgate control init') or from another replica's state folder",
            file.display()
        ),
        (Some(l), None, _) => {
            let got = db.tx_blocking(|tx| store::setting_or_insert(tx, "admin_token_hash", &l))?;
            if got != l {
                bail!(
                    "another replica registered a different admin token at the same moment; copy its admin-token to {}",
                    file.display()
                );
            }
            Ok(file)
        }
        (None, _, shared) => {
            let (token, hash) = auth::new_secret(auth::SecretKind::Admin);
            statelock::write_private(&file, format!("{token}\n").as_bytes())
                .with_context(|| format!("cannot write {}", file.display()))?;
            if shared {
                let got =
                    db.tx_blocking(|tx| store::setting_or_insert(tx, "admin_token_hash", &hash))?;
                if got != hash {
                    let _ = std::fs::remove_file(&file);
                    bail!(
                        "another replica registered an admin token at the same moment; copy its admin-token to {}",
                        file.display()
                    );
                }
            } else {
                db.tx_blocking(|tx| store::set_setting(tx, "admin_token_hash", &hash))?;
            }
            Ok(file)
        }
    }
}
