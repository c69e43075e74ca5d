//! Replays the committed corpus of every target through its harness, on
//! whatever toolchain runs `cargo test` (stable included): every seed and
//! every input that once found a bug (fuzz/corpus/<target>/, and the
//! crash inputs kept under fuzz/regressions/<target>/) must pass the
//! harness's checks.

use std::path::Path;

#[test]
fn every_committed_input_passes_its_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for (name, run) in hushgate_fuzz::TARGETS {
        let mut count = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            let mut paths: Vec<_> = entries
                .map(|e| e.expect("a directory entry").path())
                .collect();
            paths.sort();
            for path in paths {
                let data = std::fs::read(&path).expect("a readable input");
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{} fails its harness", path.display());
                count += 1;
            }
        }
        assert!(count > 0, "target {name} has no committed corpus");
        total += count;
    }
    eprintln!("{total} inputs replayed");
}
