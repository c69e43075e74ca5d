pub mod admin;
pub mod connect;
pub mod control;
pub mod demo;
pub mod gateway;
pub mod qr;

/// Reads a secret from an environment variable or, failing that, the first
/// line of standard input: never from the command line, where `ps` and
/// shell history would show it.
pub fn read_secret(env: &str, what: &str) -> anyhow::Result<String> {
    if let Ok(v) = std::env::var(env) {
        if !v.is_empty() {
            return Ok(v);
        }
    }
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{what}: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        anyhow::bail!("no {what} given: pipe it on standard input or set {env}");
    }
    Ok(line)
}

/// Writes `bytes` to a new file at `path`, mode 0600 from the start (it
/// holds a secret), replacing an older file there.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
