//! The web console end to end in a real headless Chromium (Debian's
//! `chromium`, driven over WebDriver by `chromedriver` from
//! `chromium-driver`, which this test starts on a free loopback port):
//!
//! the operator invites an owner by API; the owner signs up in the
//! browser and registers a server; a real gateway enrolls with the token
//! read from the page; the owner turns on device approval and makes an
//! invitation link; a friend opens it in a second browser, signs up,
//! copies the `hushgate connect` line from the page and runs it (the
//! real binary), which waits for approval; the friend enrols TOTP (the
//! test plays the authenticator app with the secret shown on the page);
//! the owner approves the device in the page; a download through the
//! tunnel from a stand-in media server succeeds; the owner sees the live
//! admission and revokes it; the download in progress stops.
//!
//! `hushgate connect` signs in with a password only (it has no way to
//! send a TOTP code yet), so the friend runs it before enrolling TOTP;
//! its login stays valid and its requests continue after enrolment.
//!
//! The browser trusts the control plane's private CA by its key (the
//! CA's SPKI pinned with `--ignore-certificate-errors-spki-list`), not by
//! turning verification off, and every other address goes to a dead
//! proxy so nothing leaves the machine. With `HUSHGATE_SCREENSHOTS=1`
//! the main pages are saved as PNG in docs/screenshots/.

extern crate client_shim as hushgate_client_shim;

use testkit as support;

use base64::Engine;
use control_client::{ControlClient, Trust};
use fantoccini::{Client, ClientBuilder, Locator};
use gateway::{Gateway, GatewayConfig, ServiceSpec};
use proto::api::IssuedInvitation;
use sha2::Digest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{get, paced_download, Reading, Upstream, FILE_LEN};
use tokio::io::{AsyncBufReadExt, BufReader};

const PATIENCE: Duration = Duration::from_secs(30);

/// `chromedriver` on a free loopback port; killed when dropped.
struct Chromedriver {
    _child: tokio::process::Child,
    url: String,
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        // A missing browser is a failure, not a skip: tests/run-all.sh
        // installs both packages.
        let driver = which("chromedriver").unwrap_or_else(|| {
            panic!("chromedriver is not installed: apt-get install chromium chromium-driver (tests/run-all.sh does)")
        });
        assert!(
            which("chromium").is_some(),
            "chromium is not installed: apt-get install chromium chromium-driver (tests/run-all.sh does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let t = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                t.elapsed() < PATIENCE,
                "chromedriver never listened on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Chromedriver {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A browser of its own (profile folder, cookies) for one person.
    async fn browser(&self, profile: &Path, spki: &str) -> Browser {
        let args = serde_json::json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
            format!("--user-data-dir={}", profile.display()),
            format!("--ignore-certificate-errors-spki-list={spki}"),
            // Loopback goes direct; anything else to a port nobody serves.
            "--proxy-server=http://127.0.0.1:9",
        ]);
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": args, "binary": which("chromium").unwrap()}),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("chromedriver opens a Chromium session");
        Browser { c }
    }
}

struct Browser {
    c: Client,
}

impl Browser {
    async fn goto(&self, url: &str) {
        self.c.goto(url).await.unwrap();
    }
    /// Waits for an element (pages load after a form is sent).
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.c
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }
    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }
    async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }
    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }
    /// Sends a form with its submit button, as a person does.
    async fn submit(&self, form: &str) {
        self.click(&format!("{form} button[type=submit]")).await;
    }
    async fn path(&self) -> String {
        self.c.current_url().await.unwrap().path().to_string()
    }
    async fn source(&self) -> String {
        self.c.source().await.unwrap()
    }
    /// Opens `url` again until its page satisfies `cond` (what a form
    /// sent changed on the server, whenever the browser's navigation
    /// after the click finished).
    async fn until(&self, url: &str, what: &str, cond: impl Fn(&str) -> bool) {
        let t = Instant::now();
        loop {
            self.goto(url).await;
            if cond(&self.source().await) {
                return;
            }
            assert!(t.elapsed() < PATIENCE, "{url} never showed {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    async fn screenshot(&self, name: &str) {
        if std::env::var_os("HUSHGATE_SCREENSHOTS").is_none() {
            return;
        }
        let png = self.c.screenshot().await.unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the control plane's CA, the
/// form Chromium's SPKI list takes.
fn spki_pin(ca_key: &Path) -> String {
    let pem = std::fs::read_to_string(ca_key).expect("the control plane's CA key");
    let key = rcgen::KeyPair::from_pem(&pem).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki))
}

/// Waits for a line of `hushgate connect` containing `what`.
async fn line_with(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    what: &str,
) -> String {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(l) = lines.recv().await {
            seen.push(l.clone());
            if l.contains(what) {
                return Some(l);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(l)) => l,
        _ => panic!("hushgate connect printed no line with {what:?}; it printed {seen:?}"),
    }
}

/// Waits for `hushgate connect`'s `ready:` line, then downloads the
/// stand-in server's file through its local address and checks it.
async fn ready_and_intact(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    file: &Arc<Vec<u8>>,
) -> SocketAddr {
    let ready = line_with(lines, seen, "ready: http://").await;
    let local: SocketAddr = ready["ready: http://".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let body = tokio::task::spawn_blocking(move || get(local, "/file", None, Reading::Fast))
        .await
        .unwrap()
        .expect("a download through the tunnel");
    assert!(body == **file, "the file arrived intact");
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_shares_a_server_from_the_console_and_cuts_a_friend_off() {
    let driver = Chromedriver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let serving = control::ControlPlane::spawn_on_loopback(
        dir.path().join("control"),
        control::Settings {
            login_per_minute: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    let url = serving.url.clone();
    let den = format!("{url}/servers/den");
    let ca = serving.ca_file.clone().unwrap();
    let spki = spki_pin(&ca.with_file_name("ca-key.pem"));
    let base = ControlClient::new(&url, Trust::from_ca_file(&ca).unwrap()).unwrap();

    // The operator invites an owner (the API, as `hushgate admin` would).
    let inv: IssuedInvitation = base
        .http()
        .post(format!("{url}/v1/admin/invitations"))
        .bearer_auth(serving.admin_token().unwrap())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // The owner signs up from the link and registers a server.
    let owner = driver
        .browser(&dir.path().join("owner-browser"), &spki)
        .await;
    owner.goto(&format!("{url}/signin")).await;
    owner.find("#signin").await;
    owner.screenshot("signin.png").await;
    owner
        .goto(&format!("{url}/signup?invitation={}", inv.token))
        .await;
    owner.fill("#username", "olga").await;
    owner.fill("#password", "olga-s-password").await;
    owner.submit("#signup").await;
    owner.find("#register").await;
    assert_eq!(owner.path().await, "/servers");
    owner.fill("#server-name", "den").await;
    owner.submit("#register").await;
    let enrollment = owner.text("#enrollment-token").await;
    assert!(enrollment.starts_with("hge_"), "{enrollment}");

    // A real gateway enrolls with the token from the page.
    let upstream = Upstream::start();
    let gw = Gateway::start(GatewayConfig {
        services: vec![ServiceSpec {
            name: "jellyfin".into(),
            port: 8096,
            upstream: upstream.addr,
        }],
        enroll_token: Some(enrollment.into()),
        ..support::world::gateway_config(&url, &ca, &dir.path().join("gateway"), upstream.addr)
    })
    .await
    .expect("the gateway enrolls with the token from the page");
    assert!(gw.wait_synced(PATIENCE).await);
    let t = Instant::now();
    loop {
        owner.goto(&den).await;
        if owner.text("#gateway-status").await.contains("online") {
            break;
        }
        assert!(
            t.elapsed() < PATIENCE,
            "the page never showed the gateway online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // New devices need the owner's approval; an invitation link.
    owner.click("#approve-devices").await;
    owner.submit("#policy").await;
    owner
        .until(&den, "device approval on", |p| {
            p.contains("name=\"approve_devices\" id=\"approve-devices\" checked")
        })
        .await;
    owner.submit("#invite").await;
    let link = owner.text("#issued-secret").await;
    assert!(
        link.starts_with(&format!("{url}/signup?invitation=hgi_")),
        "{link}"
    );

    // The friend opens it in another browser and signs up.
    let friend = driver
        .browser(&dir.path().join("friend-browser"), &spki)
        .await;
    friend.goto(&link).await;
    friend.fill("#username", "fred").await;
    friend.fill("#password", "fred-s-password").await;
    friend.submit("#signup").await;
    friend.find("header nav").await;
    friend.goto(&format!("{url}/shared")).await;
    let line = friend.text("pre.connect").await;
    assert_eq!(
        line,
        format!(
            "hushgate connect --control {url} --user fred --server den --listen 127.0.0.1:8096"
        )
    );

    // The friend runs exactly that line (on a free port, with the
    // private CA); the device waits for the owner.
    let mut args: Vec<String> = line.split_whitespace().skip(1).map(String::from).collect();
    let listen = args.iter().position(|a| a == "--listen").unwrap() + 1;
    args[listen] = "127.0.0.1:0".into();
    let mut connect = tokio::process::Command::new(env!("CARGO_BIN_EXE_hushgate"))
        .args(&args)
        .arg("--ca")
        .arg(&ca)
        .arg("--device-file")
        .arg(dir.path().join("fred-device"))
        .args(["--device-name", "fred's laptop"])
        .env("HUSHGATE_PASSWORD", "fred-s-password")
        .env("HUSHGATE_PROFILES", dir.path().join("profiles"))
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its standard output and error, as one stream of lines.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let mut out = BufReader::new(connect.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(connect.stderr.take().unwrap()).lines();
    let tx2 = tx.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = out.next_line().await {
            let _ = tx.send(l);
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(l)) = err.next_line().await {
            let _ = tx2.send(l);
        }
    });
    let mut seen = Vec::new();
    line_with(
        &mut lines,
        &mut seen,
        "waiting for olga to approve this device",
    )
    .await;

    // Meanwhile the friend turns on two-factor sign-in: the test reads
    // the secret from the page and computes the code, as a phone would.
    friend.goto(&format!("{url}/account")).await;
    friend.submit("#totp-begin").await;
    friend.find("#totp-qr svg").await;
    friend.screenshot("account-totp.png").await;
    let secret = control::totp::secret_from_base32(&friend.text("#totp-secret").await)
        .expect("a base32 secret on the page");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    friend
        .fill("#totp-code", &control::totp::code_at(&secret, now))
        .await;
    friend.submit("#totp-confirm").await;
    let codes = friend.find("#recovery-codes").await;
    assert_eq!(
        codes.find_all(Locator::Css("li")).await.unwrap().len(),
        control::totp::RECOVERY_CODES
    );
    assert!(friend.source().await.contains("Two-factor sign-in is on"));

    // The owner approves the device in the page.
    owner
        .until(&den, "fred's device request", |p| {
            p.contains("id=\"device-requests\"")
        })
        .await;
    assert!(owner
        .text("#device-requests")
        .await
        .contains("fred's laptop"));
    owner.click("#device-requests button[value=approve]").await;
    owner
        .until(&den, "the device approved", |p| {
            p.contains("<td>approved</td>")
        })
        .await;

    // The friend's connect gets through; a download succeeds.
    let local = ready_and_intact(&mut lines, &mut seen, &upstream.file).await;

    // A long download runs; the owner sees the live admission and
    // revokes it; the download stops.
    // 64 KiB every 100 ms: the whole file would take ~13 s.
    let (progress, ended) = paced_download(local, 100);
    let t = Instant::now();
    while progress.load(Ordering::Relaxed) < 256 << 10 {
        assert!(t.elapsed() < PATIENCE, "the paced download never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    owner.goto(&den).await;
    let live = owner.text("#admissions").await;
    assert!(
        live.contains("fred") && live.contains("fred's laptop") && live.contains("127.0.0.1"),
        "{live}"
    );
    owner.screenshot("server.png").await;
    owner.goto(&format!("{url}/servers")).await;
    owner.find("#servers").await;
    owner.screenshot("servers.png").await;
    owner.goto(&den).await;
    owner.click("#admissions button[type=submit]").await;
    owner
        .until(&den, "no live admission after the revoke", |p| {
            !p.contains("id=\"admissions\"")
        })
        .await;
    let outcome = tokio::task::spawn_blocking(move || ended.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("the download stops after the revoke");
    let got = progress.load(Ordering::Relaxed);
    assert!(
        got < FILE_LEN,
        "the download went on to the end ({got} bytes, {outcome:?})"
    );
    // The friend's connect learns of it and says so.
    line_with(
        &mut lines,
        &mut seen,
        "your admission to server 'den' is gone",
    )
    .await;
    let status = tokio::time::timeout(PATIENCE, connect.wait())
        .await
        .expect("hushgate connect ends after the revoke")
        .unwrap();
    assert!(!status.success());

    let _ = owner.c.close().await;
    let _ = friend.c.close().await;
    let _ = connect.start_kill();
    gw.shutdown().await;
    let _ = serving.stop().await;
}

/// A friend makes a configuration for a stock WireGuard app in the
/// console: the page's script makes the key pair in the browser, the
/// control plane admits the public half (bound to the browser's address)
/// and the page shows the configuration, its download and a QR code. The
/// private key in the configuration is the one whose public half the
/// control plane admitted, and the control plane never saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_makes_a_wireguard_app_configuration_in_the_console() {
    let driver = Chromedriver::start().await;
    let w = support::World::start(support::Options::default()).await;
    let url = w.control_url.clone();
    let spki = spki_pin(&w.ca.with_file_name("ca-key.pem"));
    let friend = driver
        .browser(&w.dir.path().join("friend-browser"), &spki)
        .await;
    friend.goto(&format!("{url}/signin")).await;
    friend.fill("#username", support::USER).await;
    friend.fill("#password", support::PASSWORD).await;
    friend.submit("#signin").await;
    friend.find("header nav").await;
    friend.goto(&format!("{url}/shared")).await;
    friend.click(&format!("#wg-{}", support::SERVER)).await;
    friend.submit("#wg-make").await;
    let t = Instant::now();
    let config = loop {
        let text = friend.find("#wg-config").await.text().await.unwrap();
        if !text.is_empty() {
            break text;
        }
        let error = friend.find("#wg-error").await.text().await.unwrap();
        assert!(error.is_empty(), "the page says: {error}");
        assert!(t.elapsed() < PATIENCE, "no configuration on the page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    friend.screenshot("wireguard.png").await;
    let field = |name: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("no {name} in {config}"))
            .to_string()
    };
    let private: proto::WgKey = field("PrivateKey").parse().unwrap();
    let public = proto::WgKey(
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private.0)).to_bytes(),
    );
    let admission_id = config
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# hushgate admission "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the admission on the first line")
        .to_string();
    let admissions = w.admin.list_admissions().await.unwrap();
    let adm = admissions
        .iter()
        .find(|a| a.id == admission_id)
        .expect("the control plane lists the configuration's admission");
    assert_eq!(
        adm.client_public_key,
        Some(public),
        "the admitted key is the public half of the configuration's private key"
    );
    assert_eq!(field("Endpoint"), w.gateway().udp_addr().to_string());
    assert_eq!(
        field("Address"),
        format!("{}/32", adm.client_address.unwrap())
    );
    let qr = friend
        .find("#wg-qr")
        .await
        .attr("src")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(qr.starts_with("data:image/gif;base64,"), "{qr}");
    let download = friend
        .find("#wg-download")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(download.starts_with("blob:"), "{download}");
    // The private key appears nowhere the control plane keeps.
    let private_b64 = private.to_string();
    for entry in std::fs::read_dir(w.dir.path().join("control")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&private_b64), "{} holds it", path.display());
        }
    }
    let _ = friend.c.close().await;
    w.stop().await;
}

/// Sign-in by code from the console: `hushgate connect --code` (a TV
/// box, say) prints a link and a code; the friend opens the link in a
/// browser that is not signed in, signs in, lands back on the code page,
/// which names the device and where it asked from, and approves it; the box's session comes up
/// and a download through it is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tv_box_signs_in_by_code_approved_in_the_console() {
    let driver = Chromedriver::start().await;
    let w = support::World::start(support::Options::default()).await;
    let url = w.control_url.clone();
    let spki = spki_pin(&w.ca.with_file_name("ca-key.pem"));
    let mut connect = tokio::process::Command::new(env!("CARGO_BIN_EXE_hushgate"))
        .args(["connect", "--code", "--control", &url, "--ca"])
        .arg(&w.ca)
        .args(["--server", support::SERVER, "--listen", "127.0.0.1:0"])
        .arg("--device-file")
        .arg(w.dir.path().join("tv-device"))
        .args(["--device-name", "living-room TV box"])
        .env_remove("HUSHGATE_PASSWORD")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let mut out = BufReader::new(connect.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = out.next_line().await {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let shown = line_with(&mut lines, &mut seen, "to sign in, open ").await;
    let rest = shown.strip_prefix("to sign in, open ").unwrap();
    let uri = rest.split_whitespace().next().unwrap().to_string();
    assert_eq!(uri, format!("{url}/device"));
    let code = rest
        .split("enter the code ")
        .nth(1)
        .and_then(|c| c.split_whitespace().next())
        .unwrap()
        .to_string();

    let friend = driver
        .browser(&w.dir.path().join("friend-browser"), &spki)
        .await;
    friend.goto(&format!("{uri}?code={code}")).await;
    assert_eq!(
        friend.path().await,
        "/signin",
        "not signed in: sign in first"
    );
    friend.fill("#username", support::USER).await;
    friend.fill("#password", support::PASSWORD).await;
    friend.submit("#signin").await;
    // Back on the code page, which shows which device asks and from
    // where before anything is decided.
    assert_eq!(
        friend.text("#device-name").await,
        "living-room TV box",
        "back on the code page with the device to confirm"
    );
    assert_eq!(friend.path().await, "/device");
    assert_eq!(friend.text("#device-source").await, "127.0.0.1");
    friend.screenshot("device.png").await;
    friend.submit("#device-code").await;
    let decided = friend.text("#device-decided").await;
    assert!(
        decided.contains("Approved") && decided.contains("living-room TV box"),
        "{decided}"
    );

    ready_and_intact(&mut lines, &mut seen, &w.upstream.file).await;
    // The code was used: its link now says so and offers no approval.
    friend.goto(&format!("{uri}?code={code}")).await;
    assert!(friend.text("#error").await.contains("no device is waiting"));
    assert!(!friend.source().await.contains("id=\"device-code\""));

    let _ = friend.c.close().await;
    let _ = connect.start_kill();
    w.stop().await;
}
