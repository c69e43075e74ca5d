//! Files in a state folder written whole or not at all.
//!
//! Every file hushgate keeps (keys, credentials, tokens, certificates, a
//! device file) is written the same way: a temporary file beside it,
//! created with its final mode (0600 for anything secret, so it is never
//! readable by others, not even for a moment), filled, synced, renamed
//! over the old one, and the folder synced so the rename itself survives
//! a power cut. A crash at any point leaves the old file or the new one,
//! never half of one.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Creates `dir` (and its parents) if missing and makes it the owner's
/// only (0700), also when it was already there.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path`, replacing what is there, readable and
/// writable by the owner only (0600) from the temporary file's creation.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_whole(path, 0o600, Commit::Replace, |f| f.write_all(bytes))
}

/// [`write_private`] for a file others may read (a certificate, the
/// control plane's address): mode 0644, less the process's umask.
pub fn write_public(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_whole(path, 0o644, Commit::Replace, |f| f.write_all(bytes))
}

/// [`write_private`] for a file that must not replace one already there:
/// when two processes race to create it, the first keeps its file and the
/// second gets [`io::ErrorKind::AlreadyExists`].
pub fn write_private_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_whole(path, 0o600, Commit::IfAbsent, |f| f.write_all(bytes))
}

#[derive(Debug, Clone, Copy)]
enum Commit {
    /// rename(2): atomic replace.
    Replace,
    /// link(2): atomic create that fails if the name exists (rename would
    /// silently replace it).
    IfAbsent,
}

fn write_whole(
    path: &Path,
    mode: u32,
    commit: Commit,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_beside(path)?;
    // Left by a crashed process that had this pid; ours is created anew.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        match commit {
            Commit::Replace => std::fs::rename(&tmp, path),
            Commit::IfAbsent => std::fs::hard_link(&tmp, path),
        }
    })();
    match (written, commit) {
        (Err(e), _) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // The file is in place under its own name; the temporary name
        // is only a second link to it.
        (Ok(()), Commit::IfAbsent) => {
            let _ = std::fs::remove_file(&tmp);
        }
        (Ok(()), Commit::Replace) => {}
    }
    // The rename (or link) reaches the disk with the folder's entry.
    File::open(folder_of(path))?.sync_all()
}

/// A name in the same folder (a rename across file systems is no rename)
/// that no other writer uses: two processes, or two threads, writing the
/// same file at once each fill their own temporary file.
fn temp_beside(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_private_file_is_0600_even_over_a_readable_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"hgg_secret\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hgg_secret\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            names_in(dir.path()),
            ["credential"],
            "no temporary file left"
        );
        write_private(&path, b"hgg_again\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hgg_again\n");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_private_folder_is_0700_new_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        ensure_private_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
    }

    #[test]
    fn a_public_file_is_readable_by_others_unless_the_umask_says_no() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        write_public(&path, b"cert").unwrap();
        let m = mode(&path);
        assert_eq!(m & 0o600, 0o600, "{m:o}");
        assert_eq!(m & !0o644, 0, "{m:o}");
        assert_eq!(std::fs::read(&path).unwrap(), b"cert");
    }

    #[test]
    fn a_new_file_never_replaces_one_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device");
        write_private_new(&path, b"hgd_first\n").unwrap();
        assert_eq!(mode(&path), 0o600);
        let e = write_private_new(&path, b"hgd_second\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"hgd_first\n");
        assert_eq!(names_in(dir.path()), ["device"], "no temporary file left");
    }

    #[test]
    fn a_write_that_fails_midway_leaves_the_old_file_and_no_litter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.key");
        write_private(&path, b"old key\n").unwrap();
        let e = write_whole(&path, 0o600, Commit::Replace, |f| {
            f.write_all(b"half a ne")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old key\n");
        assert_eq!(names_in(dir.path()), ["gateway.key"]);
    }

    #[test]
    fn a_path_naming_no_file_is_refused_and_a_bare_name_syncs_the_current_folder() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_private(Path::new("/"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(folder_of(Path::new("token")), Path::new("."));
        assert_eq!(folder_of(&dir.path().join("token")), dir.path());
    }

    /// The file the crash test's writer fills: this many copies of one
    /// letter, a different letter each time.
    const CRASH_SIZE: usize = 256 * 1024;
    const CRASH_ENV: &str = "HUSHGATE_STATELOCK_CRASH_FILE";

    /// The writer the crash test kills: runs only when the test below
    /// starts it as a child process.
    #[test]
    #[ignore = "started by a_process_killed_while_writing_leaves_a_whole_file"]
    fn crash_test_writer() {
        let Some(path) = std::env::var_os(CRASH_ENV) else {
            return;
        };
        let path = PathBuf::from(path);
        // Bounded, in case the parent is gone: it kills us long before.
        for i in 0..100_000u32 {
            let letter = b'a' + (i % 26) as u8;
            write_private(&path, &vec![letter; CRASH_SIZE]).unwrap();
        }
    }

    #[test]
    fn a_process_killed_while_writing_leaves_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        write_private(&path, &vec![b'-'; CRASH_SIZE]).unwrap();
        let whole =
            |bytes: &[u8]| bytes.len() == CRASH_SIZE && bytes.iter().all(|b| *b == bytes[0]);
        for round in 0..3 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "write::tests::crash_test_writer", "--ignored"])
                .env(CRASH_ENV, &path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Let it replace the file a few times, then kill it wherever
            // it is (most of its time goes to writing and syncing).
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut seen = std::collections::HashSet::new();
            while seen.len() < 3 {
                assert!(Instant::now() < deadline, "the writer never wrote");
                assert!(child.try_wait().unwrap().is_none(), "the writer ended");
                let bytes = std::fs::read(&path).unwrap();
                assert!(whole(&bytes), "round {round}: a torn file was visible");
                seen.insert(bytes[0]);
                std::thread::sleep(Duration::from_millis(1));
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert!(whole(&bytes), "round {round}: the kill left a torn file");
            assert_eq!(mode(&path), 0o600);
        }
    }
}
