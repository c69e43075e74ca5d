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
