//! The checked-in C header is what cbindgen makes of the source today.
//! A change to the ABI without `HUSHGATE_BLESS=1 cargo test -p
//! hushgate-ffi --test header` (which rewrites the header) fails here.

use std::path::Path;

#[test]
fn the_checked_in_header_matches_the_source() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml reads");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = crate_dir.join("include/hushgate.h");
    if std::env::var_os("HUSHGATE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != generated {
        let first = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "ffi/include/hushgate.h is out of date (first difference at line {}); \
             regenerate it with HUSHGATE_BLESS=1 cargo test -p hushgate-ffi --test header \
             and commit it",
            first + 1
        );
    }
    // The functions the guide promises are all declared.
    for f in [
        "hg_session_new",
        "hg_session_set_credential",
        "hg_session_start",
        "hg_session_wait_ready",
        "hg_session_poll_event",
        "hg_session_stop",
        "hg_session_free",
        "hg_last_error_message",
    ] {
        assert!(
            generated.contains(&format!("{f}(")),
            "{f} is not in the header"
        );
    }
}
