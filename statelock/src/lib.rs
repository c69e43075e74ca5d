//! The state folder: one process holds it, and its files are written
//! whole.
//!
//! A gateway's folder holds its key and credential, a control plane's its
//! SQLite database and CA. Two processes started on one folder (a second
//! unit, a test run beside the service, a forgotten shell) would both
//! "work": two gateways fight over the feed and the pre-filter, two
//! control planes answer from one SQLite database, each waking only its
//! own waiters (`control::live_feeds`). So each takes [`StateLock`] first: an exclusive `flock` on `DIR/lock`,
//! which the kernel releases when the process ends however it ends (no
//! stale lock after a crash or SIGKILL). The file keeps the holder's pid
//! and role, so the one refused can say who holds the folder.
//!
//! The files inside (keys, credentials, certificates) are written through
//! [`write_private`] and its siblings: a temporary file with the final
//! mode, synced and renamed over the old one, so a crash leaves the old
//! file or the new one and a secret is never readable by others.
//!
//! Written here rather than taken from a crate: std's `File::try_lock`
//! is newer than the workspace's minimum Rust, and the lock is one
//! `flock` call (rustix, already in the build) plus a clear message.
#![forbid(unsafe_code)]

mod write;

pub use write::{ensure_private_dir, write_private, write_private_new, write_public};

use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state folder.
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state folder {} is in use by {holder}; stop that process first, or give this one a state folder of its own", dir.display())]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock the state folder {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// An exclusive hold on a state folder, released when dropped (or when
/// the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    dir: PathBuf,
}

impl StateLock {
    /// Takes the folder `dir` (created 0700 if missing) for this process,
    /// described as `role` (e.g. "hushgate gateway") to whoever is refused
    /// later; refuses at once if another process holds it.
    pub fn acquire(dir: &Path, role: &str) -> Result<StateLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process".to_string()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        // Ours now: say who holds it.
        let note = format!("{role} (pid {})\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(note.as_bytes()))
            .map_err(io)?;
        Ok(StateLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name_until_it_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let first = StateLock::acquire(&dir, "hushgate gateway").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let e = StateLock::acquire(&dir, "hushgate gateway").unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("hushgate gateway (pid {})", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = StateLock::acquire(&dir, "hushgate control").unwrap();
        assert_eq!(again.dir(), dir);
        let note = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(
            note,
            format!("hushgate control (pid {})\n", std::process::id())
        );
    }
}
