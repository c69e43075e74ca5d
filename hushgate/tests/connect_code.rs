//! `hushgate connect --code` as a user runs it against the real control
//! plane and gateway (the shim's test world): no password anywhere; it
//! prints a code and a link, the test approves the code through the API
//! as alice (as she would on her phone), and the local address then
//! serves the media server's bytes. The device file is 0600, and a second
//! run signs in with it alone, printing no code.

extern crate client_shim as hushgate_client_shim;

use testkit as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::{Options, World, SERVER};
use tokio::io::{AsyncBufReadExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(30);

fn connect(w: &World, device_file: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_hushgate"));
    c.args(["connect", "--code", "--control", &w.control_url, "--ca"])
        .arg(&w.ca)
        .args(["--server", SERVER, "--listen", "127.0.0.1:0"])
        .arg("--device-file")
        .arg(device_file)
        .args(["--device-name", "den TV box"])
        // No password: a code sign-in must not ask for one.
        .env_remove("HUSHGATE_PASSWORD")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs `connect --code` until its `ready:` line, approving any code it
/// prints; returns the process, the local address and the lines seen.
async fn until_ready(
    w: &World,
    device_file: &Path,
) -> (tokio::process::Child, std::net::SocketAddr, Vec<String>) {
    let alice = w.base.with_bearer(&w.token().await);
    let mut child = connect(w, device_file).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(l)) = lines.next_line().await {
            seen.push(l.clone());
            if let Some(rest) = l.strip_prefix("to sign in, open ") {
                let code = rest.split("enter the code ").nth(1).unwrap();
                let code = code.split_whitespace().next().unwrap();
                alice.decide_device_code(code, true).await.unwrap();
            }
            if let Some(rest) = l.strip_prefix("ready: http://") {
                return Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
        }
        None
    })
    .await;
    let Ok(Some(addr)) = ready else {
        panic!("no ready line; saw {seen:?}");
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_code_needs_no_password_and_remembers_the_device() {
    let w = World::start(Options::default()).await;
    let file = w.dir.path().join("state/device-code");

    let (mut first, addr, seen) = until_ready(&w, &file).await;
    let text = seen.join("\n");
    assert!(
        text.contains(&format!("open {}/device", w.control_url)),
        "{text}"
    );
    assert!(text.contains("approved; connecting"), "{text}");
    let body = tokio::task::spawn_blocking(move || {
        support::get(addr, "/file", Some((0, 65535)), support::Reading::Fast)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(body == w.upstream.file[..65536], "bytes differ");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let alice = w.base.with_bearer(&w.token().await);
    let devices = alice.my_devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].name, "den TV box");
    first.kill().await.unwrap();

    // The second run: the device file signs in, no code is shown.
    let (mut second, _, seen) = until_ready(&w, &file).await;
    assert!(
        !seen.iter().any(|l| l.starts_with("to sign in")),
        "{seen:?}"
    );
    second.kill().await.unwrap();
    assert_eq!(alice.my_devices().await.unwrap().len(), 1);
    w.stop().await;
}
