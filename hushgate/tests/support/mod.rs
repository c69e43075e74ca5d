//! The `hushgate` binary as real processes, for tests that run it as a
//! service manager or an operator would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long to wait for something that should happen (it normally takes
/// well under a second; the machine may be busy).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// `hushgate`, without the environment that would change what it reads
/// (secrets and the database come only from what a test gives it).
pub fn hushgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hushgate"));
    c.env_remove("HUSHGATE_ENROLL_TOKEN")
        .env_remove("HUSHGATE_DATABASE")
        .env_remove("HUSHGATE_DATABASE_PASSWORD")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "error");
    c
}

/// A running `hushgate` process whose standard output is read line by
/// line; killed when dropped.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an output line containing `what`.
    pub fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {what:?}; saw {:?}", self.seen),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it as a service manager does (SIGTERM) and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Ends it as `kill -9` does: no shutdown of any kind.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `hushgate` to its end, bounded: a refusal must come at once, not
/// hang.
pub fn run_to_end(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("hushgate did not finish");
        }
    }
}

/// Writes a secret file with `mode`.
pub fn write_file_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
