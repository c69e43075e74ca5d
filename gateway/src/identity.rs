//! What the gateway keeps in its state folder: its static WireGuard key
//! and the credential it got at enrollment. Both are secrets, written
//! 0600 and atomically; neither is ever logged.

use boringtun::x25519::{PublicKey, StaticSecret};
use proto::WgKey;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot use the state folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({why}); restore it, or remove it and enroll the gateway again")]
    Damaged { path: PathBuf, why: String },
}

/// The gateway's long-lived identity.
pub struct Identity {
    pub secret: StaticSecret,
    pub public: WgKey,
    /// Present once enrolled.
    pub credential: Option<String>,
    dir: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .field("enrolled", &self.credential.is_some())
            .finish_non_exhaustive()
    }
}

const KEY_FILE: &str = "gateway.key";
const CREDENTIAL_FILE: &str = "credential";

impl Identity {
    /// Loads the identity from `dir`, creating the key on first use.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        statelock::ensure_private_dir(dir).map_err(io(dir))?;
        let key_path = dir.join(KEY_FILE);
        let secret = if key_path.exists() {
            let text = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key: WgKey = text.trim().parse().map_err(|e| IdentityError::Damaged {
                path: key_path.clone(),
                why: format!("{e}"),
            })?;
            StaticSecret::from(key.0)
        } else {
            let secret = StaticSecret::random_from_rng(rand_core::OsRng);
            let text = format!("{}\n", WgKey(secret.to_bytes()));
            statelock::write_private(&key_path, text.as_bytes()).map_err(io(&key_path))?;
            secret
        };
        let public = WgKey(PublicKey::from(&secret).to_bytes());
        let cred_path = dir.join(CREDENTIAL_FILE);
        let credential = if cred_path.exists() {
            let c = std::fs::read_to_string(&cred_path).map_err(io(&cred_path))?;
            Some(c.trim().to_string()).filter(|c| !c.is_empty())
        } else {
            None
        };
        Ok(Identity {
            secret,
            public,
            credential,
            dir: dir.to_path_buf(),
        })
    }

    /// Stores the credential from enrollment before it is used, so a
    /// crash right after enrolling does not waste the one-time token.
    pub fn save_credential(&mut self, credential: &str) -> Result<(), IdentityError> {
        let path = self.dir.join(CREDENTIAL_FILE);
        statelock::write_private(&path, format!("{credential}\n").as_bytes()).map_err(
            |source| IdentityError::Io {
                path: path.clone(),
                source,
            },
        )?;
        self.credential = Some(credential.to_string());
        Ok(())
    }

    pub fn credential_path(&self) -> PathBuf {
        self.dir.join(CREDENTIAL_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_persists_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Identity::load_or_create(dir.path()).unwrap();
        assert!(a.credential.is_none());
        a.save_credential("hgg_example").unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public, b.public);
        assert_eq!(b.credential.as_deref(), Some("hgg_example"));
        for f in [KEY_FILE, CREDENTIAL_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn damaged_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        let e = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
