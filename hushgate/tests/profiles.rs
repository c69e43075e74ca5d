//! Client profiles and `connect --config`, as a user runs them against the
//! real control plane and gateway (the shim's test world): the first
//! `hushgate connect NAME --control ... --user ... --server ...` saves a
//! 0600 profile with a copy of the CA and no password; `hushgate status`
//! shows its running session; `hushgate logout NAME` ends it (the
//! admission is revoked at the control plane) and forgets the profile; a
//! profile brings a second run up with no flags at all; a config file
//! with a typo is refused naming the known keys.

extern crate client_shim as hushgate_client_shim;

use testkit as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{Options, World, PASSWORD, SERVER, USER};
use tokio::io::{AsyncBufReadExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(20);

fn hushgate(profiles: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_hushgate"));
    c.env("HUSHGATE_PROFILES", profiles)
        .env("HUSHGATE_PASSWORD", PASSWORD)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Starts `connect` and waits for its `ready:` line.
async fn connect_ready(cmd: &mut tokio::process::Command) -> tokio::process::Child {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(l)) = lines.next_line().await {
            let ready = l.starts_with("ready:");
            seen.push(l);
            if ready {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "no ready line; saw {seen:?}");
    // Keep reading so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn run(cmd: &mut tokio::process::Command) -> (bool, String) {
    let out = cmd.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_remembers_everything_but_the_password_and_logout_ends_its_session() {
    let w = World::start(Options::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let profiles = tmp.path().join("profiles");
    // The CA comes from a download folder that is later cleaned up.
    let ca = tmp.path().join("downloaded-ca.pem");
    std::fs::copy(&w.ca, &ca).unwrap();

    let mut first = connect_ready(
        hushgate(&profiles)
            .args([
                "connect",
                "living-room",
                "--control",
                &w.control_url,
                "--ca",
            ])
            .arg(&ca)
            .args([
                "--user",
                USER,
                "--server",
                SERVER,
                "--listen",
                "127.0.0.1:0",
            ]),
    )
    .await;
    let profile = profiles.join("living-room.toml");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&profiles), 0o700);
    assert_eq!(mode(&profile), 0o600);
    assert_eq!(mode(&profiles.join("living-room.ca.pem")), 0o600);
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(
        text.contains(&w.control_url) && text.contains(USER),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "the password is never saved");
    std::fs::remove_file(&ca).unwrap();

    let (ok, status) = run(hushgate(&profiles).arg("status")).await;
    assert!(ok, "{status}");
    assert!(status.contains("profile: living-room"), "{status}");
    assert!(
        status.contains(&format!("session: running (pid {})", first.id().unwrap())),
        "{status}"
    );
    assert_eq!(w.admin.list_admissions().await.unwrap().len(), 1);

    // Logout ends the session: the connect exits and its admission is gone.
    let (ok, out) = run(hushgate(&profiles).args(["logout", "living-room"])).await;
    assert!(ok, "{out}");
    assert!(out.contains("ended the session of 'living-room'"), "{out}");
    tokio::time::timeout(PATIENCE, first.wait())
        .await
        .expect("the connect ends")
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !w.admin.list_admissions().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the admission was not revoked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!profile.exists(), "logout forgets the profile");
    let (ok, out) = run(hushgate(&profiles).args(["connect", "living-room"])).await;
    assert!(!ok && out.contains("no profile 'living-room' yet"), "{out}");

    // Saved again, a profile alone is enough for the next run (the CA it
    // came from is gone: its copy is used).
    let cfg = tmp.path().join("connect.toml");
    std::fs::write(
        &cfg,
        format!(
            "control = \"{}\"\nca = \"{}\"\nuser = \"{USER}\"\nserver = \"{SERVER}\"\nlisten = \"127.0.0.1:0\"\n",
            w.control_url,
            w.ca.display()
        ),
    )
    .unwrap();
    let mut second = connect_ready(
        hushgate(&profiles)
            .args(["connect", "den", "--config"])
            .arg(&cfg),
    )
    .await;
    second.start_kill().unwrap();
    let _ = second.wait().await;
    std::fs::remove_file(&cfg).unwrap();
    let mut third = connect_ready(hushgate(&profiles).args(["connect", "den"])).await;
    third.start_kill().unwrap();
    let _ = third.wait().await;

    // A typo in a config file is refused with the keys it may hold.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "sever = \"den\"\n").unwrap();
    let (ok, out) = run(hushgate(&profiles).args(["connect", "--config"]).arg(&bad)).await;
    assert!(!ok, "{out}");
    assert!(out.contains("unknown field `sever`"), "{out}");
    assert!(
        out.contains("`server`") && out.contains("`listen`"),
        "{out}"
    );
    w.stop().await;
}
