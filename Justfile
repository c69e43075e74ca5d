# Everyday recipes. `just --list` shows them.

# The whole test suite (what CI runs).
test:
    tests/run-all.sh

# Fast loop: unit and integration tests only.
check:
    cargo test --workspace

# Format and lint.
lint:
    cargo fmt --all
    cargo clippy --workspace --all-targets -- -D warnings

# Control plane throughput and login latency.
bench-control:
    cargo bench -p hushgate-control --bench access

# A control plane on loopback with its state in ./state/control.
control:
    cargo run --release -p hushgate -- control --listen 127.0.0.1:8443 --state state/control

# Side by side, as root: hushgate vs wireguard-go vs plain TCP on the netns
# topology: issue 6 (throughput, tunnel and direct time to access, floods
# with and without the gateway's kernel pre-filter; about 11 minutes) and
# issue 12 (round trips x losses x paths, a bottleneck, 50 players, through
# the user-space Internet emulator; about 2.5 hours); writes its sections
# of docs/benchmarks.md. Knobs (SKIP, INET_*, ...): see bench/run.sh.
bench:
    cargo build --release -p hushgate --bin hushgate --example flood --example access_time -p hushgate-netem
    HUSHGATE_BIN="${CARGO_TARGET_DIR:-target}/release/hushgate" bench/run.sh
