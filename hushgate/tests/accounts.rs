//! What users and owners do with their own credentials, through the real
//! `hushgate` binary against the real control plane and gateway (the
//! shim's test world):
//!
//! - a device file outlives a rebuilt control plane (`connect` registers
//!   the device anew and replaces the file, 0600), but not the device's
//!   removal by its account (refused, the file untouched);
//! - `connect` takes the two-factor code from HUSHGATE_TOTP or
//!   `--totp-stdin` (the control plane computes and checks real codes),
//!   and without a terminal says how to give one;
//! - `hushgate servers` and `hushgate account`: an owner approves a
//!   friend's waiting device, sees and revokes the friend's admission
//!   (the friend's `connect` ends), shares, invites, reads the audit; the
//!   friend lists devices and turns two-factor sign-in on.

extern crate client_shim as hushgate_client_shim;

use testkit as support;

use proto::api::*;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use support::{Options, Reading, World, OWNER, PASSWORD, SERVER, USER};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(20);

fn hushgate(w: &World) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_hushgate"));
    c.env("HUSHGATE_PASSWORD", PASSWORD)
        .env("HUSHGATE_PROFILES", w.dir.path().join("profiles"))
        .env_remove("HUSHGATE_TOTP")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// `hushgate connect` for alice to den, with her device in `device_file`.
fn connect(w: &World, device_file: &Path) -> tokio::process::Command {
    let mut c = hushgate(w);
    c.args(["connect", "--control", &w.control_url, "--ca"])
        .arg(&w.ca)
        .args([
            "--user",
            USER,
            "--server",
            SERVER,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--device-name", "alice's laptop", "--device-file"])
        .arg(device_file);
    c
}

/// `hushgate servers|account ...` as `user`.
fn cli(w: &World, user: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = hushgate(w);
    c.args(args)
        .args(["--control", &w.control_url, "--ca"])
        .arg(&w.ca)
        .args(["--user", user]);
    c
}

async fn run(cmd: &mut tokio::process::Command) -> (bool, String) {
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("the command ends")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn ok(cmd: &mut tokio::process::Command) -> String {
    let (ok, out) = run(cmd).await;
    assert!(ok, "{cmd:?} failed: {out}");
    out
}

/// A running `connect`: its output lines come through `lines`.
struct Connect {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Connect {
    fn start(cmd: &mut tokio::process::Command) -> Connect {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        let err = BufReader::new(child.stderr.take().unwrap()).lines();
        for mut l in [
            Box::new(out) as Box<dyn LinesOf>,
            Box::new(err) as Box<dyn LinesOf>,
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(line) = l.next().await {
                    let _ = tx.send(line);
                }
            });
        }
        Connect { child, lines }
    }

    /// Waits for a line containing `what`; all lines seen on failure.
    async fn wait_for(&mut self, what: &str) -> String {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(l) = self.lines.recv().await {
                let hit = l.contains(what);
                seen.push(l.clone());
                if hit {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(l)) => l,
            _ => panic!("no line with '{what}'; saw {seen:?}"),
        }
    }

    /// The local address of its `ready:` line.
    async fn ready(&mut self) -> SocketAddr {
        let l = self.wait_for("ready: http://").await;
        l["ready: http://".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Lines of stdout or stderr, boxed alike.
trait LinesOf: Send {
    fn next(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>>;
}

impl<R: tokio::io::AsyncBufRead + Unpin + Send> LinesOf for tokio::io::Lines<R> {
    fn next(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move { self.next_line().await.ok().flatten() })
    }
}

/// The whole test file through the tunnel, checked byte for byte.
async fn download(w: &World, addr: SocketAddr) {
    let want = w.upstream.file.clone();
    let got = tokio::task::spawn_blocking(move || {
        support::get(addr, "/file", None, Reading::Fast).unwrap()
    })
    .await
    .unwrap();
    assert!(got == *want, "the download differs from the file");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn devices_of(user: &control_client::ControlClient) -> Vec<DeviceInfo> {
    user.call::<(), _>(
        control_client::Method::GET,
        "/v1/me/devices",
        None,
        PATIENCE,
    )
    .await
    .unwrap()
}

async fn as_user(w: &World, user: &str) -> control_client::ControlClient {
    let t = w.base.login(user, PASSWORD).await.unwrap().token;
    w.base.with_bearer(&t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_file_outlives_a_rebuilt_control_plane_but_not_the_devices_removal() {
    let keep = tempfile::tempdir().unwrap();
    let device_file = keep.path().join("state/hushgate/device-alice");

    // First control plane: the device registers and its file is made.
    let first = World::start(Options::default()).await;
    let mut c = Connect::start(&mut connect(&first, &device_file));
    let addr = c.ready().await;
    download(&first, addr).await;
    c.stop().await;
    assert_eq!(mode(&device_file), 0o600);
    let old = std::fs::read_to_string(&device_file).unwrap();
    first.stop().await;

    // A rebuilt control plane (a new database: the same account, made
    // again by its operator) never heard of the device: connect registers
    // it anew by itself and replaces the file.
    let w = World::start(Options::default()).await;
    let mut c = Connect::start(&mut connect(&w, &device_file));
    let addr = c.ready().await;
    download(&w, addr).await;
    c.stop().await;
    let new = std::fs::read_to_string(&device_file).unwrap();
    assert_ne!(new, old, "the file holds the new credential");
    assert!(new.trim().starts_with("hgd_"), "{new}");
    assert_eq!(mode(&device_file), 0o600);
    let left: Vec<_> = std::fs::read_dir(device_file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temporary file left beside it: {left:?}");
    let alice = as_user(&w, USER).await;
    let devices = devices_of(&alice).await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].name, "alice's laptop");

    // Removed by its account: connect is refused and does not register
    // again; the file stays as it was.
    alice
        .call::<(), ()>(
            control_client::Method::DELETE,
            &format!("/v1/me/devices/{}", devices[0].id),
            None,
            PATIENCE,
        )
        .await
        .unwrap();
    let (ok, out) = run(&mut connect(&w, &device_file)).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("this device was removed from your account")
            && out.contains("delete its device file"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&device_file).unwrap(), new);
    let devices = devices_of(&alice).await;
    assert!(devices.is_empty(), "nothing registered: {devices:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_the_two_factor_code_from_the_environment_or_stdin_never_argv() {
    let w = World::start(Options::default()).await;
    let device_file = w.dir.path().join("device");
    // Alice turns two-factor sign-in on (a code from her new secret).
    let alice = as_user(&w, USER).await;
    let e: TotpEnrollment = alice
        .call::<(), _>(control_client::Method::POST, "/v1/me/totp", None, PATIENCE)
        .await
        .unwrap();
    let secret = control::totp::secret_from_base32(&e.secret).unwrap();
    let t0 = unix_now();
    let codes: RecoveryCodes = alice
        .call(
            control_client::Method::POST,
            "/v1/me/totp/confirm",
            Some(&TotpCode {
                code: control::totp::code_at(&secret, t0),
            }),
            PATIENCE,
        )
        .await
        .unwrap();

    // No terminal and no code: refused, saying how to give one.
    let (ok, out) = run(&mut connect(&w, &device_file)).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("two factors")
            && out.contains("HUSHGATE_TOTP")
            && out.contains("--totp-stdin"),
        "{out}"
    );
    // The next step's code (the last one was used to confirm) in the
    // environment.
    let mut c = Connect::start(
        connect(&w, &device_file).env("HUSHGATE_TOTP", control::totp::code_at(&secret, t0 + 30)),
    );
    let addr = c.ready().await;
    download(&w, addr).await;
    c.stop().await;
    // A recovery code on standard input, after the password.
    let mut cmd = connect(&w, &device_file);
    cmd.env_remove("HUSHGATE_PASSWORD")
        .arg("--totp-stdin")
        .stdin(Stdio::piped());
    let mut c = Connect::start(&mut cmd);
    let mut stdin = c.child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n{}\n", codes.codes[0]).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    c.ready().await;
    c.stop().await;
    // A used code is refused as a failed login, clearly.
    let (ok, out) = run(connect(&w, &device_file).env("HUSHGATE_TOTP", &codes.codes[0])).await;
    assert!(!ok, "{out}");
    assert!(out.contains("code"), "{out}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_and_a_friend_do_everything_from_the_command_line() {
    // den belongs to olga, shared with alice, new devices need approval.
    let w = World::start(Options {
        owned: true,
        ..Default::default()
    })
    .await;
    let device_file = w.dir.path().join("device");
    let olga = |args: &[&str]| cli(&w, OWNER, args);

    let out = ok(&mut olga(&["servers", "list"])).await;
    assert!(out.contains("den") && out.contains("online"), "{out}");
    let out = ok(&mut olga(&["servers", "add", "attic"])).await;
    assert!(
        out.contains("server 'attic' registered") && out.contains("hge_"),
        "{out}"
    );
    let out = ok(&mut olga(&["servers", "show", "attic"])).await;
    assert!(
        out.contains("offline") && out.contains("gateway last seen: never"),
        "{out}"
    );
    let out = ok(&mut olga(&[
        "servers",
        "set",
        "attic",
        "--require-2fa",
        "on",
        "--direct",
        "off",
    ]))
    .await;
    assert!(
        out.contains("two-factor on") && out.contains("direct off"),
        "{out}"
    );

    // Sharing by name and by link.
    ok(&mut olga(&["servers", "share", "attic", USER])).await;
    let out = ok(&mut olga(&["servers", "shares", "attic"])).await;
    assert!(out.contains(USER), "{out}");
    let out = ok(&mut olga(&["servers", "invite", "attic", "--uses", "2"])).await;
    assert!(out.contains("hgi_"), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let out_invite = out;
    let out = ok(&mut olga(&["servers", "invitations", "attic"])).await;
    assert!(out.contains(&id), "{out}");
    // A friend without an account signs up with the link's token (from
    // the environment, never an argument) and has the share.
    let link = out_invite
        .lines()
        .find(|l| l.starts_with("hgi_"))
        .unwrap()
        .to_string();
    let out = ok(cli(&w, "erin", &["account", "signup"]).env("HUSHGATE_INVITATION", &link)).await;
    assert!(out.contains("account 'erin' created"), "{out}");
    let out = ok(&mut cli(&w, "erin", &["account", "shares"])).await;
    assert!(out.contains("attic"), "{out}");
    let out = ok(&mut olga(&["servers", "invitations", "attic"])).await;
    assert!(out.contains(&id), "one use left: {out}");
    ok(&mut olga(&["servers", "uninvite", "attic", &id])).await;
    let out = ok(&mut olga(&["servers", "invitations", "attic"])).await;
    assert!(!out.contains(&id), "{out}");
    ok(&mut olga(&["servers", "unshare", "attic", USER])).await;

    // Alice's connect waits for olga, who approves her device.
    let mut c = Connect::start(&mut connect(&w, &device_file));
    c.wait_for("waiting for olga to approve this device").await;
    let out = ok(&mut olga(&["servers", "devices", SERVER])).await;
    assert!(
        out.contains("pending") && out.contains("alice's laptop"),
        "{out}"
    );
    let device = out
        .lines()
        .find(|l| l.contains("pending"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = ok(&mut olga(&["servers", "approve", SERVER, &device])).await;
    assert!(out.contains("approved"), "{out}");
    let addr = c.ready().await;
    download(&w, addr).await;

    // Olga sees the admission and ends it: alice's connect ends saying so.
    let out = ok(&mut olga(&["servers", "admissions", SERVER])).await;
    let adm = out
        .lines()
        .find(|l| l.contains(USER))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admission of alice: {out}"))
        .to_string();
    ok(&mut olga(&["servers", "revoke", &adm])).await;
    let out = ok(&mut olga(&["servers", "admissions", SERVER])).await;
    assert!(!out.contains(&adm), "{out}");
    // A player asking for more makes the idle shim notice at once.
    let _ =
        tokio::task::spawn_blocking(move || support::get(addr, "/file", None, Reading::Fast)).await;
    c.wait_for("revoked").await;
    let out = ok(&mut olga(&["servers", "audit", SERVER])).await;
    for e in ["device_approved", "access_granted", "revoked"] {
        assert!(out.contains(e), "the audit lacks {e}: {out}");
    }
    // Another owner's view of den is "no such server".
    let (ok_, out) = run(&mut cli(&w, USER, &["servers", "admissions", SERVER])).await;
    assert!(!ok_ && out.contains("no server named 'den'"), "{out}");

    // Alice: her device, then two-factor sign-in.
    let out = ok(&mut cli(&w, USER, &["account", "devices", "list"])).await;
    assert!(out.contains("alice's laptop"), "{out}");
    let out = ok(&mut cli(&w, USER, &["account", "totp", "enrol"])).await;
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret: {out}"));
    let secret = control::totp::secret_from_base32(secret.trim()).unwrap();
    let t0 = unix_now();
    let out = ok(cli(&w, USER, &["account", "totp", "confirm"])
        .env("HUSHGATE_TOTP_CONFIRM", control::totp::code_at(&secret, t0)))
    .await;
    assert!(out.contains("two-factor sign-in is on"), "{out}");
    let (ok_, out) = run(&mut cli(&w, USER, &["account", "show"])).await;
    assert!(!ok_ && out.contains("HUSHGATE_TOTP"), "{out}");
    let out = ok(cli(&w, USER, &["account", "show"])
        .env("HUSHGATE_TOTP", control::totp::code_at(&secret, t0 + 30)))
    .await;
    assert!(out.contains("on (10 recovery codes left)"), "{out}");
    c.stop().await;
    w.stop().await;
}
