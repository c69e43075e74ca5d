//! `hushgate connect --wg-config FILE --qr --qr-png PNG` against the real
//! control plane and gateway (the shim's test world): the PNG, read back
//! as a phone's camera would read it, holds the configuration written to
//! FILE (without its comment lines); both files are 0600; the terminal
//! drawing is printed; the password came from the environment.

extern crate client_shim as hushgate_client_shim;

use testkit as support;

use std::os::unix::fs::PermissionsExt;
use support::{Options, World, PASSWORD, SERVER, USER};

fn png_pixels(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wg_config_qr_png_decodes_to_the_written_configuration() {
    let w = World::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (conf, png) = (dir.path().join("phone.conf"), dir.path().join("phone.png"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hushgate"))
        .arg("connect")
        .args(["--control", &w.control_url, "--ca"])
        .arg(&w.ca)
        .args(["--user", USER, "--server", SERVER, "--wg-config"])
        .arg(&conf)
        .arg("--qr")
        .arg("--qr-png")
        .arg(&png)
        .env("HUSHGATE_PASSWORD", PASSWORD)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let config = std::fs::read_to_string(&conf).unwrap();
    assert!(config.contains("PrivateKey = "), "{config}");
    for f in [&conf, &png] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    let (width, height, pixels) = png_pixels(&std::fs::read(&png).unwrap());
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| pixels[y * width + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the PNG");
    let (_, read) = grids[0].decode().expect("the QR code decodes");
    let expected: String = config
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip_while(|l| l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(read, expected);

    // The terminal drawing: black on white half blocks, within 80 columns.
    let art: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("\x1b[30;47m"))
        .collect();
    assert!(art.len() > 10, "no QR code drawn:\n{stdout}");
    let cols = art[0]
        .trim_start_matches("\x1b[30;47m")
        .trim_end_matches("\x1b[0m")
        .chars()
        .count();
    assert!(cols <= 80, "{cols} columns");
    assert!(
        stdout.contains("scan it with the WireGuard app"),
        "{stdout}"
    );
    w.stop().await;
}
