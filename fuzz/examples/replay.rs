//! Runs one input of one target through its harness, outside libFuzzer
//! (with `HUSHGATE_FUZZ_TRACE=1` the structured harnesses print each step):
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example replay -- TARGET FILE...

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay TARGET FILE...");
    let (_, run) = hushgate_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    for path in args {
        let data = std::fs::read(&path).expect("a readable file");
        run(&data);
        println!("{path}: passes");
    }
}
