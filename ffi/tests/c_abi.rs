//! The C ABI used the way player apps use it, against the real hushgate
//! on loopback (control plane over HTTPS with SQLite, the gateway on UDP,
//! an upstream HTTP server: the shim's test world, `support`):
//!
//! - a C program (`tests/c/session.c`), compiled here with the system's
//!   `cc` and linked with `libhushgate_ffi.so`, signs in, downloads a file
//!   through the local address and checks its sha256, then sees the
//!   revocation this test makes through the admin API;
//! - the same program under valgrind's memcheck: start, stop, restart,
//!   a stop while connecting and a free of a running session, with no
//!   invalid access and no definite leak;
//! - the Python binding (`bindings/python`) does what the C program does;
//! - ffprobe and ffmpeg play a real MP4 through a session the C program
//!   holds: seeks (range requests), connections the media server drops
//!   mid-body, and a full decode identical frame for frame to the file
//!   read from disk;
//! - the documented example (`examples/player.c`), linked statically,
//!   serves a download;
//! - from Rust, through the same functions, what a C program cannot
//!   provoke here: the device's public address changes, and the session
//!   announces `HG_EVENT_READMITTED` with the same local address.
//!
//! Settings reach the programs through the environment (the password
//! never goes on a command line). The tools (`cc`, `valgrind`, `ffmpeg`,
//! `python3`) must be installed: `tests/run-all.sh` installs them; a test
//! that cannot find one fails and says which.
#![allow(unsafe_code)]

use testkit as support;

use control_client::ControlClient;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use support::{Options, World, PASSWORD, SERVER, USER};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a program may take for one step before the test calls it a
/// failure: generous, the machine may be busy (valgrind runs get more).
const PATIENCE: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where cargo put `libhushgate_ffi.so` and `.a` for this build: the
/// `deps` folder holding this test's executable (`cargo test` builds them
/// there with the rlib; only `cargo build` copies them one folder up, so
/// the copies there may be stale).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    for f in ["libhushgate_ffi.so", "libhushgate_ffi.a"] {
        assert!(
            dir.join(f).exists(),
            "{} has no {f}; cargo test -p hushgate-ffi builds it",
            dir.display()
        );
    }
    dir
}

/// Fails with a clear message when `tool` is not installed.
fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; this test needs it (Debian: apt-get install {package}; tests/run-all.sh installs it)"
    );
}

/// Compiles `source` (relative to the workspace) with the header, linked
/// with the shared library (or the static one), as an app would.
fn compile(source: &str, name: &str, statically: bool) -> PathBuf {
    require("cc", "build-essential");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let lib = lib_dir();
    let mut cc = std::process::Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg(workspace().join(source))
        .arg(format!("-I{}", workspace().join("ffi/include").display()));
    if statically {
        // What `rustc --print native-static-libs` lists for the archive.
        cc.arg(lib.join("libhushgate_ffi.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
        ]);
    } else {
        // DT_RPATH, not the newer DT_RUNPATH: the loader then takes this
        // build's library before anything on LD_LIBRARY_PATH, where cargo
        // puts target/debug, whose copy only `cargo build` refreshes.
        cc.arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-Wl,--disable-new-dtags")
            .args(["-lhushgate_ffi", "-lpthread"]);
    }
    let status = cc.arg("-o").arg(&out).status().expect("cc runs");
    assert!(status.success(), "{source} does not compile");
    out
}

/// The C test program, compiled once per test run.
fn c_program() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("ffi/tests/c/session.c", "hushgate-session-c", false))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The environment the C and Python programs read their settings from.
fn program_env(w: &World, path: &str, sha256: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HG_CONTROL_URL", w.control_url.clone()),
        ("HG_CA_FILE", w.ca.display().to_string()),
        ("HG_USER", USER.into()),
        ("HG_PASSWORD", PASSWORD.into()),
        ("HG_SERVER", SERVER.into()),
        ("HG_PATH", path.into()),
        ("HG_SHA256", sha256.into()),
    ]
}

/// A running program whose output is read line by line.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: tokio::task::JoinHandle<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(cmd: Command) -> Running {
        Self::spawn_approving(cmd, None)
    }

    /// Spawns `cmd`; with `approver` (a signed-in user's client), every
    /// sign-in code the program prints ("CODE XXXX-XXXX ...") is approved
    /// through the API as that user, as a person with a phone would.
    fn spawn_approving(mut cmd: Command, approver: Option<ControlClient>) -> Running {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the program starts");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut approved = std::collections::HashSet::new();
            while let Ok(Some(l)) = out.next_line().await {
                eprintln!("  | {l}");
                if let (Some(a), Some(code)) = (&approver, code_in(&l)) {
                    if approved.insert(code.clone()) {
                        let decided = a.decide_device_code(&code, true).await;
                        assert!(decided.is_ok(), "approving {code}: {decided:?}");
                    }
                }
                let _ = tx.send(l);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Running {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The first line starting with `prefix`, within `limit`.
    async fn line(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                    assert!(!l.starts_with("FAIL"), "the program failed: {l}");
                }
                Ok(None) => panic!(
                    "the program ended before printing '{prefix}'; output:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr_now().await
                ),
                Err(_) => panic!(
                    "no line '{prefix}' within {limit:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    async fn stderr_now(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        match tokio::time::timeout(Duration::from_secs(5), &mut self.stderr).await {
            Ok(Ok(s)) => s,
            _ => String::new(),
        }
    }

    /// Closes the program's standard input.
    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for the end: its status, its whole output and its stderr.
    async fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the program did not end within {limit:?}; output:\n{}",
                    self.seen.join("\n")
                )
            })
            .unwrap();
        while let Ok(Some(l)) =
            tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await
        {
            self.seen.push(l);
        }
        let stderr = self.stderr.await.unwrap_or_default();
        (status, self.seen.join("\n"), stderr)
    }
}

/// The user code of a "CODE XXXX-XXXX URI" line.
fn code_in(line: &str) -> Option<String> {
    line.strip_prefix("CODE ")?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// alice's client, signed in with her password: she approves codes.
async fn alice(w: &World) -> ControlClient {
    w.base.with_bearer(&w.token().await)
}

/// The names of alice's devices.
async fn alice_devices(w: &World) -> Vec<String> {
    let mut names: Vec<String> = alice(w)
        .await
        .my_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    names.sort();
    names
}

/// Downloads the test file's first MiB through `local` (a player's
/// range request) and checks it byte for byte.
async fn first_mib_intact(w: &World, local: std::net::SocketAddr, what: &str) {
    let range = Some((0, (1 << 20) - 1));
    let body = tokio::task::spawn_blocking(move || {
        support::get(local, "/file", range, support::Reading::Fast)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(body == w.upstream.file[..1 << 20], "{what}: bytes differ");
}

/// Revokes every admission of the test user through the admin API, as an
/// operator would; returns how many.
async fn revoke_all(w: &World) -> usize {
    let list = w.admin.list_admissions().await.unwrap();
    for a in &list {
        w.admin.revoke(&a.id).await.unwrap();
    }
    list.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_program_downloads_through_the_session_and_sees_its_revocation() {
    let w = World::start(Options::default()).await;
    c_download_revoke(&w, &[], None).await;
    w.stop().await;
}

/// `session download-revoke` with `env` added (and codes approved by
/// `approver`): the download's sha256, then the revocation this test
/// makes, seen everywhere; returns the output.
async fn c_download_revoke(
    w: &World,
    env: &[(&str, &str)],
    approver: Option<ControlClient>,
) -> String {
    let sha = hex(&support::sha256(&w.upstream.file));
    let mut cmd = Command::new(c_program());
    cmd.arg("download-revoke")
        .envs(program_env(w, "/file", &sha))
        .envs(env.iter().copied());
    let mut p = Running::spawn_approving(cmd, approver);
    let done = p.line("DOWNLOADED", PATIENCE).await;
    assert!(done.contains(&sha), "{done}");
    assert_eq!(revoke_all(w).await, 1, "one admission, the C program's");
    let (status, out, err) = p.finish(PATIENCE).await;
    assert!(
        status.success(),
        "the C program failed ({status}):\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("REVOKED seen by poll and callback"), "{out}");
    // Nothing is left at the control plane or the gateway.
    assert!(w.admin.list_admissions().await.unwrap().is_empty());
    out
}

/// The same program signing in by code: it shows the code (event and
/// callback), the test approves it through the API as alice, and the
/// device it becomes is hers; the download and the revocation follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_program_signs_in_by_code_downloads_and_sees_its_revocation() {
    let w = World::start(Options::default()).await;
    let out = c_download_revoke(&w, &[("HG_SIGN_IN", "code")], Some(alice(&w).await)).await;
    let code = out
        .lines()
        .find(|l| l.starts_with("CODE "))
        .unwrap_or_default();
    assert!(
        code.contains(&format!("{}/device?code=", w.control_url)),
        "{out}"
    );
    assert_eq!(alice_devices(&w).await, vec!["c-test player".to_string()]);
    w.stop().await;
}

/// Sign-in by code through the ABI from Rust, where a denial can be
/// made: the waiting event carries the code, the link and its expiry;
/// the denial ends the run with `HG_ERR_CODE_DENIED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_code_fails_the_session_with_its_own_code() {
    use hushgate_ffi::*;
    use std::ffi::{CStr, CString};

    let w = World::start(Options::default()).await;
    let url = CString::new(w.control_url.clone()).unwrap();
    let ca = CString::new(std::fs::read(&w.ca).unwrap()).unwrap();
    let server = CString::new(SERVER).unwrap();
    let name = CString::new("kitchen tablet").unwrap();
    struct Handle(*mut hg_session);
    // SAFETY: the ABI promises a handle is usable from any thread.
    unsafe impl Send for Handle {}
    impl Handle {
        fn ptr(&self) -> *mut hg_session {
            self.0
        }
    }
    let mut s = Handle(std::ptr::null_mut());
    // SAFETY: valid C strings and out-pointer, as the header asks.
    unsafe {
        assert_eq!(
            hg_session_new(url.as_ptr(), ca.as_ptr(), server.as_ptr(), &mut s.0),
            hg_status::HG_OK
        );
        assert_eq!(
            hg_session_set_credential(
                s.ptr(),
                hg_credential_kind::HG_CREDENTIAL_DEVICE_CODE as i32,
                name.as_ptr(),
                std::ptr::null()
            ),
            hg_status::HG_OK
        );
        assert_eq!(hg_session_start(s.ptr()), hg_status::HG_OK);
    }
    // The waiting event, taken with the poll function.
    let (s, code, uri, until) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            let mut ev = std::ptr::null_mut();
            // SAFETY: a live handle; the event is freed once, its strings
            // copied before.
            unsafe {
                assert_eq!(
                    hg_session_poll_event(s.ptr(), 1000, &mut ev),
                    hg_status::HG_OK
                );
                if ev.is_null() {
                    continue;
                }
                let e = &*ev;
                let got = if e.kind == hg_event_kind::HG_EVENT_WAITING_FOR_APPROVAL {
                    assert_eq!(e.state, hg_state::HG_STATE_WAITING_FOR_APPROVAL);
                    let text = |p: *const std::ffi::c_char| {
                        CStr::from_ptr(p).to_str().unwrap().to_string()
                    };
                    Some((text(e.user_code), text(e.verification_uri), e.expires_at))
                } else {
                    assert!(e.user_code.is_null() && e.verification_uri_complete.is_null());
                    None
                };
                hg_event_free(ev);
                if let Some((code, uri, until)) = got {
                    return (s, code, uri, until);
                }
            }
        }
        panic!("no code shown within {PATIENCE:?}");
    })
    .await
    .unwrap();
    assert_eq!(uri, format!("{}/device", w.control_url));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(until > now && until <= now + 600, "expires_at {until}");
    alice(&w)
        .await
        .decide_device_code(&code, false)
        .await
        .unwrap();
    let s = tokio::task::spawn_blocking(move || {
        // SAFETY: a live handle.
        let r = unsafe { hg_session_wait_ready(s.ptr(), 60_000) };
        assert_eq!(r, hg_status::HG_ERR_CODE_DENIED);
        s
    })
    .await
    .unwrap();
    let mut state = hg_state::HG_STATE_IDLE;
    // SAFETY: a live handle and a writable out-pointer; then freed once.
    unsafe {
        assert_eq!(hg_session_state(s.ptr(), &mut state), hg_status::HG_OK);
        assert_eq!(state, hg_state::HG_STATE_FAILED);
        hg_session_free(s.ptr());
    }
    assert!(
        alice_devices(&w).await.is_empty(),
        "a denied code registers nothing"
    );
    w.stop().await;
}

/// Start, stop, start again, stop while connecting, free while running:
/// memcheck finds no invalid read or write, no use of uninitialised
/// memory and no definite leak in the library or the program. One-time
/// globals that live until exit (std's thread-locals, the allocator's
/// arenas) are "still reachable", which is not an error; the one
/// suppression (`tests/valgrind.supp`) is a false report about ring's
/// AVX2 SHA-256, explained there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_under_valgrind_have_no_invalid_access_and_no_leak() {
    let w = World::start(Options::default()).await;
    cycles_under_valgrind(&w, &[], None).await;
    w.stop().await;
}

/// The same cycles signing in by code: the first start shows a code (the
/// test approves it) and keeps the device's credential in a 0600 file;
/// every later start, on the same handle or a new one, signs in with it
/// alone. No invalid access, no definite leak on either path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_sign_in_under_valgrind_has_no_invalid_access_and_no_leak() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::start(Options::default()).await;
    let file = w.dir.path().join("state/device-c-test");
    let file_env = file.display().to_string();
    let out = cycles_under_valgrind(
        &w,
        &[("HG_SIGN_IN", "code"), ("HG_DEVICE_FILE", &file_env)],
        Some(alice(&w).await),
    )
    .await;
    let codes: std::collections::HashSet<_> = out.lines().filter_map(code_in).collect();
    assert_eq!(codes.len(), 1, "one code, then the saved credential: {out}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the device file is private");
    assert_eq!(alice_devices(&w).await, vec!["c-test player".to_string()]);
    w.stop().await;
}

/// Start, stop, start again, stop while connecting, free while running
/// (`session cycles 2`) under memcheck, with `env` added (and codes
/// approved by `approver`); returns the program's output.
async fn cycles_under_valgrind(
    w: &World,
    env: &[(&str, &str)],
    approver: Option<ControlClient>,
) -> String {
    require("valgrind", "valgrind");
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "valgrind-{}-{}.log",
        std::process::id(),
        env.len()
    ));
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=memcheck",
        "--error-exitcode=99",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
        "--track-origins=yes",
        "--num-callers=40",
    ])
    .arg(format!(
        "--suppressions={}",
        workspace().join("ffi/tests/valgrind.supp").display()
    ))
    .arg(format!("--log-file={}", log.display()))
    .arg(c_program())
    .args(["cycles", "2"])
    .envs(program_env(w, "/file", ""))
    .envs(env.iter().copied());
    let p = Running::spawn_approving(cmd, approver);
    // Everything runs ten to fifty times slower under memcheck.
    let (status, out, _) = p.finish(PATIENCE * 8).await;
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success() && out.contains("CYCLES 2 ok"),
        "the program failed under valgrind ({status}):\n{out}\nvalgrind:\n{report}"
    );
    assert!(
        report.contains("ERROR SUMMARY: 0 errors"),
        "valgrind found errors:\n{report}"
    );
    assert!(
        report.contains("definitely lost: 0 bytes")
            || report.contains("All heap blocks were freed"),
        "valgrind found a definite leak:\n{report}"
    );
    let _ = std::fs::remove_file(&log);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_binding_downloads_and_sees_its_revocation() {
    let w = World::start(Options::default()).await;
    let out = python_session_check(&w, &[], None).await;
    assert!(out.contains("REVOKED"), "{out}");
    w.stop().await;
}

/// The Python binding signs in by code (approved here as alice), keeps
/// the device's credential in its file, and signs in with it alone when
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_binding_signs_in_by_code() {
    let w = World::start(Options::default()).await;
    let file = w.dir.path().join("state/device-python");
    let file_env = file.display().to_string();
    let out = python_session_check(
        &w,
        &[("HG_SIGN_IN", "code"), ("HG_DEVICE_FILE", &file_env)],
        Some(alice(&w).await),
    )
    .await;
    assert!(
        out.contains("CODE ") && out.contains("SIGNED IN AGAIN"),
        "{out}"
    );
    assert_eq!(alice_devices(&w).await, vec!["python player".to_string()]);
    w.stop().await;
}

/// Runs `bindings/python/tests/session_check.py` with `env` added: the
/// download, its revocation by this test; returns the output.
async fn python_session_check(
    w: &World,
    env: &[(&str, &str)],
    approver: Option<ControlClient>,
) -> String {
    require("python3", "python3");
    let sha = hex(&support::sha256(&w.upstream.file));
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("bindings/python/tests/session_check.py"))
        .env("PYTHONPATH", workspace().join("bindings/python"))
        .env("HUSHGATE_FFI_LIB", lib_dir().join("libhushgate_ffi.so"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(program_env(w, "/file", &sha))
        .envs(env.iter().copied());
    let mut p = Running::spawn_approving(cmd, approver);
    let done = p.line("DOWNLOADED", PATIENCE).await;
    assert!(done.contains(&sha), "{done}");
    assert_eq!(revoke_all(w).await, 1);
    let (status, out, err) = p.finish(PATIENCE).await;
    assert!(
        status.success(),
        "the Python check failed ({status}):\n{out}\nstderr:\n{err}"
    );
    out
}

/// Runs a tool to the end and returns its standard output.
async fn tool(program: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        PATIENCE * 2,
        Command::new(program).args(args).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} did not end"))
    .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Frame lines of a framemd5 listing (one per decoded frame, any stream).
fn frames(listing: &str) -> Vec<&str> {
    listing.lines().filter(|l| !l.starts_with('#')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_a_real_mp4_through_a_c_session_with_seeks_and_dropped_connections() {
    require("ffmpeg", "ffmpeg");
    require("ffprobe", "ffmpeg");
    let w = World::start(Options::default()).await;

    // A real MP4 made here: 6 s of video (25 fps, a keyframe a second)
    // and audio; the index (moov) at the end, as ffmpeg writes it by
    // default, so opening it already needs a range request.
    let dir = tempfile::tempdir().unwrap();
    let movie = dir.path().join("movie.mp4");
    let m = movie.to_str().unwrap();
    tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25:duration=6",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=6",
            "-c:v",
            "mpeg4",
            "-q:v",
            "3",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-y",
            m,
        ],
    )
    .await;
    let bytes = std::fs::read(&movie).unwrap();
    let size = bytes.len();
    w.upstream.add_file("/movie.mp4", bytes);

    let mut cmd = Command::new(c_program());
    cmd.arg("serve").envs(program_env(&w, "", ""));
    let mut p = Running::spawn(cmd);
    let ready = p.line("READY ", PATIENCE).await;
    let local = ready.trim_start_matches("READY ").trim().to_string();
    // Every answer is cut after 256 KiB: each read past that is a dropped
    // connection that ffmpeg resumes with a range request.
    let url = format!("http://{local}/movie.mp4?cut={}", 256 << 10);
    assert!(
        size > 3 * (256 << 10),
        "the movie is too small to be cut ({size} bytes)"
    );
    let net = ["-reconnect", "1", "-reconnect_on_network_error", "1"];

    // What the player learns of the file.
    let probe = |input: String| async move {
        tool(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type,codec_name,nb_frames:format=duration",
                "-of",
                "compact",
                &input,
            ],
        )
        .await
    };
    let direct = probe(m.to_string()).await;
    assert_eq!(probe(url.clone()).await, direct);
    assert!(
        direct.contains("codec_type=video") && direct.contains("codec_type=audio"),
        "{direct}"
    );

    // Seeks to several points: the same frames as from disk.
    for at in ["0.6", "2.2", "4.04", "5.5"] {
        let seek = |input: String, remote: bool| async move {
            let mut args: Vec<&str> = vec!["-v", "error"];
            if remote {
                args.extend(net);
            }
            args.extend([
                "-ss",
                at,
                "-i",
                &input,
                "-frames:v",
                "5",
                "-an",
                "-f",
                "framemd5",
                "-",
            ]);
            tool("ffmpeg", &args).await
        };
        let here = seek(m.to_string(), false).await;
        let there = seek(url.clone(), true).await;
        assert_eq!(frames(&there).len(), 5, "seek to {at}: {there}");
        assert_eq!(frames(&there), frames(&here), "seek to {at}");
    }

    // The whole file, every stream, decoded: identical frame for frame.
    let decode = |input: String, remote: bool| async move {
        let mut args: Vec<&str> = vec!["-v", "error"];
        if remote {
            args.extend(net);
        }
        args.extend(["-i", &input, "-map", "0", "-f", "framemd5", "-"]);
        tool("ffmpeg", &args).await
    };
    let here = decode(m.to_string(), false).await;
    let there = decode(url.clone(), true).await;
    let video = frames(&here).iter().filter(|l| l.starts_with("0,")).count();
    assert_eq!(video, 150, "6 s at 25 fps");
    assert_eq!(frames(&there).len(), frames(&here).len(), "frame count");
    assert_eq!(frames(&there), frames(&here), "decoded frames");

    let stats = &w.upstream.stats;
    let (ranged, cut) = (
        stats.ranged.load(std::sync::atomic::Ordering::Relaxed),
        stats.cut.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!("upstream: {ranged} range requests past byte 0, {cut} connections cut mid-body");
    assert!(ranged >= 5, "the player made {ranged} range requests");
    assert!(cut >= 3, "only {cut} connections were cut");

    p.close_stdin();
    let (status, out, err) = p.finish(PATIENCE).await;
    assert!(
        status.success() && out.contains("STOPPED"),
        "({status}):\n{out}\nstderr:\n{err}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_links_statically_and_serves_the_player() {
    let w = World::start(Options::default()).await;
    let mut cmd = Command::new(example_player());
    cmd.env("HUSHGATE_CONTROL", &w.control_url)
        .env("HUSHGATE_CA", &w.ca)
        .env("HUSHGATE_USER", USER)
        .env("HUSHGATE_PASSWORD", PASSWORD)
        .env("HUSHGATE_SERVER", SERVER);
    example_serves(&w, Running::spawn(cmd)).await;
    w.stop().await;
}

/// The documented example without a user name signs in by code: it shows
/// the code (approved here as alice), serves the player, and keeps the
/// device's credential for its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_signs_in_by_code() {
    let w = World::start(Options::default()).await;
    let file = w.dir.path().join("state/example-device");
    let mut cmd = Command::new(example_player());
    cmd.env("HUSHGATE_CONTROL", &w.control_url)
        .env("HUSHGATE_CA", &w.ca)
        .env("HUSHGATE_SERVER", SERVER)
        .env("HUSHGATE_DEVICE_FILE", &file);
    let mut p = Running::spawn(cmd);
    let shown = p.line("sign in: open ", PATIENCE).await;
    let code = shown.rsplit(' ').next().unwrap().to_string();
    assert!(
        shown.contains(&format!("{}/device", w.control_url)),
        "{shown}"
    );
    alice(&w)
        .await
        .decide_device_code(&code, true)
        .await
        .unwrap();
    example_serves(&w, p).await;
    assert!(file.exists(), "the device file is kept");
    assert_eq!(
        alice_devices(&w).await,
        vec!["hushgate example player".to_string()]
    );
    w.stop().await;
}

/// `ffi/examples/player.c`, linked statically, compiled once.
fn example_player() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("ffi/examples/player.c", "hushgate-example-player", true))
}

/// The example's run after sign-in: the URL it prints serves the file;
/// closing its input stops it, and stopping revokes the admission.
async fn example_serves(w: &World, mut p: Running) {
    let play = p.line("play http://", PATIENCE).await;
    let local: std::net::SocketAddr = play
        .trim_start_matches("play http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    first_mib_intact(w, local, "the player's download").await;
    p.close_stdin();
    let (status, out, err) = p.finish(PATIENCE).await;
    assert!(
        status.success() && out.contains("stopped"),
        "({status}):\n{out}\nstderr:\n{err}"
    );
    assert!(
        err.contains("ready: point the player at"),
        "the callback reported nothing: {err}"
    );
    assert!(w.admin.list_admissions().await.unwrap().is_empty());
}

/// The C functions called from Rust: a session behind the test NAT,
/// whose public address then changes. The session must announce the
/// loss, the re-admission (same local address, new admission) and work
/// again, all through the ABI's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_address_change_the_session_is_readmitted_on_the_same_local_address() {
    use hushgate_ffi::*;
    use std::ffi::{CStr, CString};

    let w = World::start(Options {
        nat: true,
        ..Default::default()
    })
    .await;
    let url = CString::new(w.nat.as_ref().unwrap().control_url()).unwrap();
    let ca = CString::new(std::fs::read(&w.ca).unwrap()).unwrap();
    let server = CString::new(SERVER).unwrap();
    let (user, password) = (CString::new(USER).unwrap(), CString::new(PASSWORD).unwrap());
    struct Handle(*mut hg_session);
    // SAFETY: the ABI promises a handle is usable from any thread.
    unsafe impl Send for Handle {}
    impl Handle {
        // Closures capture the whole handle through this (a field alone
        // would be captured as a bare pointer, which is not Send).
        fn ptr(&self) -> *mut hg_session {
            self.0
        }
    }
    let mut s = Handle(std::ptr::null_mut());
    // SAFETY: valid C strings and out-pointer, as the header asks.
    unsafe {
        assert_eq!(
            hg_session_new(url.as_ptr(), ca.as_ptr(), server.as_ptr(), &mut s.0),
            hg_status::HG_OK
        );
        assert_eq!(
            hg_session_set_credential(
                s.ptr(),
                hg_credential_kind::HG_CREDENTIAL_PASSWORD as i32,
                user.as_ptr(),
                password.as_ptr()
            ),
            hg_status::HG_OK
        );
        assert_eq!(hg_session_start(s.ptr()), hg_status::HG_OK);
    }
    // Blocking calls run off the test's runtime, as an app's thread would.
    let s = tokio::task::spawn_blocking(move || {
        // SAFETY: a live handle.
        assert_eq!(
            unsafe { hg_session_wait_ready(s.ptr(), 60_000) },
            hg_status::HG_OK
        );
        s
    })
    .await
    .unwrap();
    let local = {
        let mut p = std::ptr::null_mut();
        // SAFETY: a live handle; the string is ours to free.
        unsafe {
            assert_eq!(hg_session_local_addr(s.ptr(), &mut p), hg_status::HG_OK);
            let a: std::net::SocketAddr = CStr::from_ptr(p).to_str().unwrap().parse().unwrap();
            hg_string_free(p);
            a
        }
    };
    let first = w.admin.list_admissions().await.unwrap();
    assert_eq!(first.len(), 1);

    w.nat
        .as_ref()
        .unwrap()
        .change_address("127.0.0.2".parse().unwrap());
    // The player keeps playing: traffic into the tunnel is what reveals
    // that the gateway no longer answers (after WireGuard's 15 s). This
    // download may break.
    let during =
        std::thread::spawn(move || support::get(local, "/file", None, support::Reading::Fast));
    // The events until the re-admission, taken with the poll function.
    let (s, kinds, readmitted_at) = tokio::task::spawn_blocking(move || {
        let mut kinds = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            let mut ev = std::ptr::null_mut();
            // SAFETY: a live handle; each event is freed once.
            unsafe {
                assert_eq!(
                    hg_session_poll_event(s.ptr(), 1000, &mut ev),
                    hg_status::HG_OK
                );
                if ev.is_null() {
                    continue;
                }
                let (kind, addr) = ((*ev).kind, (*ev).local_addr);
                let addr =
                    (!addr.is_null()).then(|| CStr::from_ptr(addr).to_str().unwrap().to_string());
                hg_event_free(ev);
                kinds.push(kind);
                if kind == hg_event_kind::HG_EVENT_READMITTED {
                    return (s, kinds, addr);
                }
                assert!(
                    !matches!(
                        kind,
                        hg_event_kind::HG_EVENT_FAILED | hg_event_kind::HG_EVENT_REVOKED
                    ),
                    "the session ended: {kinds:?}"
                );
            }
        }
        panic!("no re-admission within 120 s; events {kinds:?}");
    })
    .await
    .unwrap();
    assert_eq!(
        readmitted_at,
        Some(local.to_string()),
        "the same local address"
    );
    assert!(kinds.contains(&hg_event_kind::HG_EVENT_LOST), "{kinds:?}");
    let mut state = hg_state::HG_STATE_IDLE;
    // SAFETY: a live handle and a writable out-pointer.
    assert_eq!(
        unsafe { hg_session_state(s.ptr(), &mut state) },
        hg_status::HG_OK
    );
    assert_eq!(state, hg_state::HG_STATE_READY);
    let _ = tokio::task::spawn_blocking(move || during.join()).await;
    // The session revokes the old admission right after the new one.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let now = loop {
        let now = w.admin.list_admissions().await.unwrap();
        if now.len() == 1 || tokio::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(now.len(), 1, "the old admission was revoked: {now:?}");
    assert_ne!(now[0].id, first[0].id);
    assert_eq!(now[0].source.to_string(), "127.0.0.2");
    first_mib_intact(&w, local, "a download after the re-admission").await;
    tokio::task::spawn_blocking(move || {
        // SAFETY: the live handle, freed once, used by no one else.
        unsafe { hg_session_free(s.ptr()) }
    })
    .await
    .unwrap();
    assert!(w.admin.list_admissions().await.unwrap().is_empty());
    w.stop().await;
}

/// One handle used from several threads at once, as an app's UI, player
/// and network threads would: readers (state, address, events) run all
/// along while another thread starts, waits for and stops the session
/// twice. Every call answers with a status of its own kind, and the
/// events polled meanwhile are each run's, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handle_is_usable_from_many_threads_at_once() {
    use hushgate_ffi::*;
    use std::ffi::CString;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let w = World::start(Options::default()).await;
    let url = CString::new(w.control_url.clone()).unwrap();
    let ca = CString::new(std::fs::read(&w.ca).unwrap()).unwrap();
    let server = CString::new(SERVER).unwrap();
    let (user, password) = (CString::new(USER).unwrap(), CString::new(PASSWORD).unwrap());
    #[derive(Clone, Copy)]
    struct Handle(*mut hg_session);
    // SAFETY: the ABI promises a handle is usable from any thread.
    unsafe impl Send for Handle {}
    // SAFETY: as above; every function takes the handle by pointer and
    // locks what it touches.
    unsafe impl Sync for Handle {}
    impl Handle {
        fn ptr(self) -> *mut hg_session {
            self.0
        }
    }
    let mut raw = std::ptr::null_mut();
    // SAFETY: valid C strings and out-pointers, as the header asks.
    unsafe {
        assert_eq!(
            hg_session_new(url.as_ptr(), ca.as_ptr(), server.as_ptr(), &mut raw),
            hg_status::HG_OK
        );
        assert_eq!(
            hg_session_set_credential(
                raw,
                hg_credential_kind::HG_CREDENTIAL_PASSWORD as i32,
                user.as_ptr(),
                password.as_ptr()
            ),
            hg_status::HG_OK
        );
    }
    let h = Handle(raw);
    let done = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (done, events) = (done.clone(), events.clone());
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !done.load(Ordering::Relaxed) {
                    // SAFETY: a live handle (freed only after the readers
                    // are joined), writable out-pointers, events freed once.
                    unsafe {
                        let mut st = hg_state::HG_STATE_IDLE;
                        assert_eq!(hg_session_state(h.ptr(), &mut st), hg_status::HG_OK);
                        let mut addr = std::ptr::null_mut();
                        match hg_session_local_addr(h.ptr(), &mut addr) {
                            hg_status::HG_OK => hg_string_free(addr),
                            other => assert_eq!(other, hg_status::HG_ERR_BAD_STATE),
                        }
                        // One poller, so that the order it records is the
                        // order it took the events in.
                        if i == 0 {
                            let mut ev = std::ptr::null_mut();
                            assert_eq!(
                                hg_session_poll_event(h.ptr(), 5, &mut ev),
                                hg_status::HG_OK
                            );
                            if !ev.is_null() {
                                events.lock().unwrap().push((*ev).kind);
                                hg_event_free(ev);
                            }
                        }
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let h2 = h;
    tokio::task::spawn_blocking(move || {
        for _ in 0..2 {
            // SAFETY: a live handle.
            unsafe {
                assert_eq!(hg_session_start(h2.ptr()), hg_status::HG_OK);
                assert_eq!(hg_session_wait_ready(h2.ptr(), 60_000), hg_status::HG_OK);
                assert_eq!(hg_session_stop(h2.ptr()), hg_status::HG_OK);
            }
        }
    })
    .await
    .unwrap();
    // Let the readers take what is left, then stop them.
    std::thread::sleep(Duration::from_millis(100));
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("a reader panicked") > 0);
    }
    // SAFETY: the readers are gone; the handle is freed once.
    unsafe { hg_session_free(h.ptr()) };
    use hg_event_kind::*;
    let got = events.lock().unwrap().clone();
    let run = [HG_EVENT_CONNECTING, HG_EVENT_READY, HG_EVENT_STOPPED];
    assert_eq!(
        got,
        [run, run].concat(),
        "events in order, none lost or doubled"
    );
    let left = w.admin.list_admissions().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    w.stop().await;
}
