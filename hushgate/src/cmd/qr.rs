//! A stock WireGuard configuration as a QR code, for the official phone
//! apps ("add a tunnel", "scan from QR code"): drawn in the terminal with
//! half-block characters, or written as a PNG file.
//!
//! The code holds the configuration without its comment lines (the apps
//! drop comments on import anyway, and they would make the code too big
//! for an 80-column terminal): private key included, so the PNG is
//! written like the configuration itself, mode 0600, a new file.

use anyhow::Context;
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, EcLevel, QrCode};
use std::path::Path;

/// Pixels per module in the PNG: large enough for a phone's camera
/// pointed at a screen.
const PNG_MODULE: usize = 8;
/// Light modules around the code, as the standard asks.
const QUIET_ZONE: usize = 4;

/// What the code holds: `config` without its comment lines.
pub fn payload(config: &str) -> String {
    config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .skip_while(|l| l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The code for `config`. Level L (7 % recovery), as `qrencode` uses by
/// default for WireGuard configurations: a screen is a clean source, and
/// the lowest level keeps the code small enough for an 80-column terminal.
fn encode(config: &str) -> anyhow::Result<QrCode> {
    QrCode::with_error_correction_level(payload(config).as_bytes(), EcLevel::L)
        .context("the configuration does not fit in a QR code")
}

/// The code as text for a terminal: two modules per character cell, dark
/// on light whatever the terminal's colours (each line sets black on
/// white and resets after itself), with the quiet zone.
pub fn terminal(text: &str) -> anyhow::Result<String> {
    let art = encode(text)?
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Dark)
        .light_color(Dense1x2::Light)
        .quiet_zone(true)
        .build();
    Ok(art
        .lines()
        .map(|l| format!("\x1b[30;47m{l}\x1b[0m\n"))
        .collect())
}

/// The code as a greyscale PNG (black modules on white).
pub fn png(text: &str) -> anyhow::Result<Vec<u8>> {
    let code = encode(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_MODULE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_MODULE..(my + 1) * PNG_MODULE {
            pixels[y * side + mx * PNG_MODULE..y * side + (mx + 1) * PNG_MODULE].fill(0);
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&pixels)?;
    w.finish()?;
    Ok(out)
}

/// Writes the PNG of `text` to `path`: a new file, mode 0600 (it holds
/// the private key), replacing an older one.
pub fn write_png(text: &str, path: &Path) -> anyhow::Result<()> {
    super::write_private_file(path, &png(text)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reads the QR code in a greyscale image, as a phone's camera app
    /// would (rqrr: detection, then decoding with error correction).
    pub(crate) fn read_code(width: usize, height: usize, pixels: &[u8]) -> String {
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
            pixels[y * width + x]
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the image");
        grids[0].decode().expect("the code decodes").1
    }

    /// Decodes a PNG file's bytes to greyscale pixels.
    pub(crate) fn png_pixels(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
        let info = reader.next_frame(&mut buf).expect("a frame");
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        buf.truncate(info.buffer_size());
        (info.width as usize, info.height as usize, buf)
    }

    /// A configuration of the size `connect --wg-config` writes.
    fn config() -> String {
        "# hushgate admission adm_0123456789abcdef0123456789abcdef for server 'living-room', expires 2026-12-05T22:57:00Z\n\
         # Services: plex at 10.77.0.1:32400\n\
         [Interface]\nPrivateKey = ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=\nAddress = 10.77.0.12/32\n\n\
         [Peer]\nPublicKey = /+7dzLuqmYh3ZlVEMyIRAP/u3cy7qpmId2ZVRDMiEQA=\n\
         PresharedKey = qrvM3e7/ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJk=\n\
         Endpoint = 198.51.100.10:51820\nAllowedIPs = 10.77.0.1/32\nPersistentKeepalive = 25\n"
            .to_string()
    }

    #[test]
    fn the_png_decodes_back_to_the_configuration() {
        let text = config();
        let (w, h, pixels) = png_pixels(&png(&text).unwrap());
        assert_eq!(w, h);
        let read = read_code(w, h, &pixels);
        assert_eq!(read, payload(&text));
        // Everything but the comments is there, in order.
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(read.lines().collect::<Vec<_>>(), kept);
        assert!(read.contains("PrivateKey = ") && read.contains("Endpoint = "));
    }

    /// The terminal drawing is scannable too: turned back into modules
    /// (each character is two, top and bottom) it decodes to the same
    /// text, and it fits an 80-column terminal.
    #[test]
    fn the_terminal_drawing_decodes_back_to_the_configuration() {
        let text = config();
        let art = terminal(&text).unwrap();
        let rows: Vec<Vec<char>> = art
            .lines()
            .map(|l| {
                l.trim_start_matches("\x1b[30;47m")
                    .trim_end_matches("\x1b[0m")
                    .chars()
                    .collect()
            })
            .collect();
        let width = rows[0].len();
        assert!(width <= 80, "{width} columns");
        assert!(rows.iter().all(|r| r.len() == width));
        let (scale, height) = (4, rows.len() * 2);
        let mut pixels = vec![255u8; width * scale * height * scale];
        for (y2, row) in rows.iter().enumerate() {
            for (x, ch) in row.iter().enumerate() {
                let (top, bottom) = match ch {
                    '\u{2588}' => (true, true),
                    '\u{2580}' => (true, false),
                    '\u{2584}' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected character {other:?}"),
                };
                for (half, dark) in [(0, top), (1, bottom)] {
                    if !dark {
                        continue;
                    }
                    let y = y2 * 2 + half;
                    for py in y * scale..(y + 1) * scale {
                        let row = py * width * scale;
                        pixels[row + x * scale..row + (x + 1) * scale].fill(0);
                    }
                }
            }
        }
        assert_eq!(
            read_code(width * scale, height * scale, &pixels),
            payload(&text)
        );
    }

    #[test]
    fn the_png_file_is_private_and_replaces_an_older_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.png");
        std::fs::write(&path, b"old").unwrap();
        write_png(&config(), &path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let (w, h, pixels) = png_pixels(&std::fs::read(&path).unwrap());
        assert_eq!(read_code(w, h, &pixels), payload(&config()));
    }
}
