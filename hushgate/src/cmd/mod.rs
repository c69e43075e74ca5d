pub mod account;
pub mod admin;
pub mod config;
pub mod connect;
pub mod control;
pub mod demo;
pub mod gateway;
pub mod metrics;
pub mod profile;
pub mod qr;

/// Reads a secret from an environment variable or, failing that, from
/// the terminal (not echoed) or the first line of standard input (for
/// scripts): never from the command line, where `ps` and shell history
/// would show it.
pub fn read_secret(env: &str, what: &str) -> anyhow::Result<String> {
    read(env, what, false)
}

/// Like [`read_secret`], for a secret being set: typed on a terminal, it
/// is asked for twice and both must match.
pub fn read_new_secret(env: &str, what: &str) -> anyhow::Result<String> {
    read(env, what, true)
}

fn read(env: &str, what: &str, confirm: bool) -> anyhow::Result<String> {
    if let Ok(v) = std::env::var(env) {
        if !v.is_empty() {
            return Ok(v);
        }
    }
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("{what}: "))?;
        if first.is_empty() {
            anyhow::bail!("no {what} given");
        }
        if confirm {
            let again = rpassword::prompt_password(format!("{what} again: "))?;
            if again != first {
                anyhow::bail!("the two {what}s typed differ; nothing was changed, try again");
            }
        }
        return Ok(first);
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        anyhow::bail!("no {what} given: type it when asked (on a terminal), pipe it on standard input, or set {env}");
    }
    Ok(line)
}

/// Writes `bytes` to `path`, mode 0600 from the start (it holds a
/// secret), replacing an older file there whole.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    statelock::write_private(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
