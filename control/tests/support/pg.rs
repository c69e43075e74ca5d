//! A real PostgreSQL server for tests and benchmarks, from the Debian
//! packages (`apt-get install postgresql`; tests/run-all.sh does it).
//!
//! One server per test binary, started on first use: `initdb` in a
//! temporary folder, listening only on a Unix socket in that folder (no
//! TCP port, so parallel test binaries and other people's servers never
//! clash), and a fresh database for each test ([`fresh_database`]).
//!
//! PostgreSQL refuses to run as root, and tests here run as root: then
//! the server runs as `nobody` (through `setpriv`), its folder owned by
//! `nobody`. As any other user it runs as that user.
//!
//! Stopping: the server is started by a small `sh` watchdog whose
//! standard input is a pipe this process holds open until it exits. When
//! this process ends, however it ends (tests done, a panic, `kill -9`),
//! the kernel closes the pipe, the watchdog reads end-of-file, stops the
//! server and removes its folder. Should the watchdog itself be killed,
//! the folder keeps `owner.pid` (this process) and the server's own
//! `postmaster.pid`: the next test binary that starts a server stops any
//! server whose owner is gone and removes its folder.
#![allow(dead_code)]

use hushgate_control::store::DatabaseUrl;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Where the servers' folders go, each `hushgate-pg-*`.
const PREFIX: &str = "hushgate-pg-";

pub struct PgServer {
    /// The folder with the data, the socket and the log.
    pub base: PathBuf,
    /// The Unix socket's folder.
    pub socket_dir: PathBuf,
    pub port: u16,
    /// PostgreSQL's own programs (initdb, pg_ctl, postgres, pg_dump...).
    pub bin: PathBuf,
    /// Keeps the watchdog's standard input open while this process lives.
    _watchdog_stdin: std::process::ChildStdin,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The test binary's server, started on first use; panics with what to
/// install if PostgreSQL is missing.
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(|| start(Options::for_tests())) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Write to disk before each commit returns (benchmarks); tests turn
    /// it off, since nothing here crashes the database itself.
    pub durable: bool,
}

impl Options {
    pub fn for_tests() -> Options {
        Options { durable: false }
    }
}

/// A fresh, empty database on the test binary's server.
pub fn fresh_database() -> DatabaseUrl {
    server().fresh_database()
}

/// The folder holding PostgreSQL's programs: the newest Debian one, or
/// wherever `pg_ctl` is on PATH.
fn find_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .ok_or_else(|| {
            "PostgreSQL is not installed, and the tests run the control plane on it too: \
             apt-get install postgresql (tests/run-all.sh installs it)"
                .to_string()
        })
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs a program as `nobody` (`setpriv` execs it in place, so its pid
/// is the program's own).
const AS_NOBODY: &str = "setpriv --reuid=nobody --regid=nogroup --clear-groups";

/// A command run as the server's user.
fn as_server_user(root: bool, program: &Path, base: &Path) -> Command {
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    c.current_dir(base);
    c
}

/// Stops servers left behind by test processes that are gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let base = e.path();
        let owner = std::fs::read_to_string(base.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(base.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .arg("-QUIT")
                .arg(pid.to_string())
                .status();
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}

/// Starts a server with `options` in a new temporary folder.
pub fn start(options: Options) -> Result<PgServer, String> {
    sweep_stale();
    let bin = find_bin()?;
    let root = is_root();
    let base = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .map_err(|e| format!("cannot make a folder for PostgreSQL: {e}"))?
        .keep();
    std::fs::write(base.join("owner.pid"), std::process::id().to_string())
        .map_err(|e| e.to_string())?;
    let data = base.join("data");
    let socket_dir = base.join("sock");
    for d in [&data, &socket_dir] {
        std::fs::create_dir(d).map_err(|e| e.to_string())?;
    }
    if root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let ok = Command::new("chown")
            .arg("nobody:nogroup")
            .arg(&data)
            .arg(&socket_dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("cannot hand the PostgreSQL folder to user nobody (chown)".into());
        }
    }
    let out = as_server_user(root, &bin.join("initdb"), &base)
        .arg("-D")
        .arg(&data)
        .args(["-U", "hushgate", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = 5432;
    let mut settings = vec![
        format!("-k {}", socket_dir.display()),
        "-c listen_addresses=".into(),
        format!("-p {port}"),
        "-c max_connections=300".into(),
        "-c shared_buffers=32MB".into(),
    ];
    if !options.durable {
        settings.push("-c fsync=off".into());
        settings.push("-c full_page_writes=off".into());
        settings.push("-c synchronous_commit=off".into());
    }
    let postgres = if root {
        format!(
            "{AS_NOBODY} '{}' -D '{}' {}",
            bin.join("postgres").display(),
            data.display(),
            settings.join(" ")
        )
    } else {
        format!(
            "'{}' -D '{}' {}",
            bin.join("postgres").display(),
            data.display(),
            settings.join(" ")
        )
    };
    // The watchdog: starts the server, waits for its standard input to
    // close (this process is gone), then stops the server (fast shutdown)
    // and removes the folder.
    let script = format!(
        "{postgres} >'{log}' 2>&1 &\npg=$!\ncat >/dev/null\nkill -INT $pg 2>/dev/null\nwait $pg\nrm -rf '{base}'\n",
        log = base.join("server.log").display(),
        base = base.display(),
    );
    let mut child = Command::new("sh")
        .current_dir(&base)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
    let stdin = child.stdin.take().expect("piped");
    let server = PgServer {
        base: base.clone(),
        socket_dir,
        port,
        bin,
        _watchdog_stdin: stdin,
    };
    // Ready when it accepts a connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(server.bin.join("pg_isready"))
            .arg("-h")
            .arg(&server.socket_dir)
            .arg("-p")
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(base.join("server.log")).unwrap_or_default();
            return Err(format!("PostgreSQL did not start within 60 s: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

impl PgServer {
    /// The connection string of database `name` on this server.
    pub fn url(&self, name: &str) -> DatabaseUrl {
        DatabaseUrl::parse(&self.url_text(name)).expect("a valid connection string")
    }

    /// The connection string of database `name`, as an operator gives it
    /// (`hushgate control --database`).
    pub fn url_text(&self, name: &str) -> String {
        format!(
            "host={} port={} user=hushgate dbname={name}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Runs one SQL command on the `postgres` database (as the superuser).
    pub fn admin_sql(&self, sql: &str) {
        self.sql("postgres", sql);
    }

    /// Runs one SQL command on database `db` (as the superuser).
    pub fn sql(&self, db: &str, sql: &str) {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "hushgate", "-d", db, "-v", "ON_ERROR_STOP=1", "-qc"])
            .arg(sql)
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new, empty database.
    pub fn fresh_database(&self) -> DatabaseUrl {
        self.url(&self.fresh_database_name())
    }

    /// A new, empty database; its name.
    pub fn fresh_database_name(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.admin_sql(&format!("CREATE DATABASE {name}"));
        name
    }
}
