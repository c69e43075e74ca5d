//! Client profiles: `hushgate connect NAME` remembers the control plane's
//! URL, its CA and the user (never the password) so that the next run is
//! `hushgate connect NAME`; `hushgate status` lists them with the session
//! each runs now, `hushgate logout NAME` ends that session and forgets the
//! profile.
//!
//! A profile is `NAME.toml` (the keys of `hushgate connect --config`) in
//! the profile folder, `$HUSHGATE_PROFILES` or else
//! `$XDG_CONFIG_HOME/hushgate/profiles` (`~/.config/hushgate/profiles`),
//! made 0700; every file in it is 0600. The CA is copied in beside it
//! (`NAME.ca.pem`), so the profile keeps working when the file it came
//! from is gone. While a `connect` of the profile runs, `NAME.session`
//! says which process it is and where the player connects.

use super::config::ConnectFile;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The folder holding the profiles.
pub fn dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("HUSHGATE_PROFILES").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => bail!("cannot tell where to keep profiles: set HOME or HUSHGATE_PROFILES"),
        },
    };
    Ok(base.join("hushgate").join("profiles"))
}

/// A profile's name: a file name, nothing that walks out of the folder.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("'{name}' is not a profile name: use letters, digits, '-', '_' and '.' (at most 64)");
    }
    Ok(())
}

fn file(dir: &Path, name: &str, ext: &str) -> PathBuf {
    dir.join(format!("{name}.{ext}"))
}

/// The saved settings of profile `name`, if it exists.
pub fn load(dir: &Path, name: &str) -> anyhow::Result<Option<ConnectFile>> {
    check_name(name)?;
    let path = file(dir, name, "toml");
    if !path.exists() {
        return Ok(None);
    }
    super::config::read(&path).map(Some)
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    statelock::ensure_private_dir(dir)
        .with_context(|| format!("cannot create {} (private to its owner)", dir.display()))
}

/// Saves `settings` as profile `name` (0600), copying its CA file in
/// beside it; returns the profile's path.
pub fn save(dir: &Path, name: &str, mut settings: ConnectFile) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    ensure_dir(dir)?;
    let ca_copy = file(dir, name, "ca.pem");
    if let Some(ca) = settings.ca.clone() {
        if ca != ca_copy {
            let pem = std::fs::read(&ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
            super::write_private_file(&ca_copy, &pem)?;
        }
        settings.ca = Some(ca_copy);
    }
    let path = file(dir, name, "toml");
    let text = format!(
        "# hushgate connect profile '{name}' (hushgate connect {name}); no secret in it\n{}",
        toml::to_string(&settings).context("cannot write the profile")?
    );
    super::write_private_file(&path, text.as_bytes())?;
    Ok(path)
}

/// What a running `connect` of a profile tells `status` and `logout`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionNote {
    pub pid: u32,
    pub local: String,
    pub admission: String,
    pub expires: String,
}

/// Written while a session of the profile runs; removed when it ends.
#[derive(Debug)]
pub struct SessionFile(PathBuf);

impl SessionFile {
    pub fn write(dir: &Path, name: &str, note: &SessionNote) -> anyhow::Result<SessionFile> {
        let path = file(dir, name, "session");
        super::write_private_file(&path, toml::to_string(note)?.as_bytes())?;
        Ok(SessionFile(path))
    }
}

impl Drop for SessionFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The running session of a profile: its note, if its process still runs
/// (a note left by a killed process is ignored).
fn running(dir: &Path, name: &str) -> Option<SessionNote> {
    let text = std::fs::read_to_string(file(dir, name, "session")).ok()?;
    let note: SessionNote = toml::from_str(&text).ok()?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", note.pid)).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("hushgate")
        .then_some(note)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// `hushgate status [NAME]`.
pub fn status(only: Option<&str>) -> anyhow::Result<String> {
    let dir = dir()?;
    let list = match only {
        Some(n) => {
            check_name(n)?;
            if load(&dir, n)?.is_none() {
                bail!(
                    "no profile '{n}' in {}; `hushgate status` lists them",
                    dir.display()
                );
            }
            vec![n.to_string()]
        }
        None => names(&dir),
    };
    if list.is_empty() {
        return Ok(format!(
            "no profiles in {}; `hushgate connect NAME --control URL --user USER --server SERVER` makes one\n",
            dir.display()
        ));
    }
    let mut out = String::new();
    for name in list {
        let p = load(&dir, &name)?.unwrap_or_default();
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        out += &format!(
            "profile: {name}\n  control plane: {}\n  user: {}\n  server: {}\n",
            or(&p.control),
            or(&p.user),
            or(&p.server)
        );
        match running(&dir, &name) {
            Some(s) => {
                out += &format!(
                    "  session: running (pid {}), player at http://{}, admission {}, expires {}\n",
                    s.pid, s.local, s.admission, s.expires
                )
            }
            None => out += "  session: not running\n",
        }
    }
    Ok(out)
}

/// `hushgate logout NAME`: ends the profile's running session (the
/// `connect` revokes its admission as it closes) and forgets the profile.
pub async fn logout(name: &str) -> anyhow::Result<String> {
    let dir = dir()?;
    if load(&dir, name)?.is_none() {
        bail!(
            "no profile '{name}' in {}; `hushgate status` lists them",
            dir.display()
        );
    }
    let mut out = String::new();
    if let Some(s) = running(&dir, name) {
        let killed = std::process::Command::new("kill")
            .args(["-INT", &s.pid.to_string()])
            .status()
            .context("cannot run kill")?;
        if !killed.success() {
            bail!("cannot stop the session of '{name}' (pid {})", s.pid);
        }
        // It revokes its admission and removes its note as it closes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while running(&dir, name).is_some() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the session of '{name}' (pid {}) did not stop within 15 s",
                    s.pid
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        out += &format!(
            "ended the session of '{name}' (admission {} revoked)\n",
            s.admission
        );
    }
    for ext in ["toml", "ca.pem", "session"] {
        let _ = std::fs::remove_file(file(&dir, name, ext));
    }
    out += &format!("forgot profile '{name}'\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_private_and_keep_their_ca() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("profiles");
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let settings = ConnectFile {
            control: Some("https://control.example.net:8443".into()),
            ca: Some(ca.clone()),
            user: Some("alice".into()),
            server: Some("living-room".into()),
            ..Default::default()
        };
        let path = save(&dir, "living-room", settings).unwrap();
        std::fs::remove_file(&ca).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        let back = load(&dir, "living-room").unwrap().unwrap();
        assert_eq!(back.user.as_deref(), Some("alice"));
        let copy = back.ca.unwrap();
        assert_eq!(mode(&copy), 0o600);
        assert_eq!(
            std::fs::read_to_string(copy).unwrap(),
            "-----BEGIN CERTIFICATE-----\n"
        );
        assert!(load(&dir, "other").unwrap().is_none());
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(load(&dir, bad).is_err(), "{bad}");
        }
    }
}
